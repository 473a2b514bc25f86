//! What the coordinator says of itself and of the fleet as a whole: its
//! status (`GET /v1/status`), the fleet's last hour as it sampled it in
//! memory (`GET /v1/fleet/history`), and what a node's names answer now
//! (`GET /v1/nodes/{cluster}/{name}/dns`). The console draws its pages
//! from these and the node and cluster views.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeState;

/// Who is asking: the admin token writes, a viewer token or a console
/// session only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The admin token.
    Admin,
    /// A viewer token, or a console session.
    Viewer,
}

/// `GET /v1/status`: the coordinator's own health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorStatus {
    /// The coordinator's version.
    pub version: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// The DNS zone it serves, e.g. `muster.internal`.
    pub zone: String,
    /// The store's kind: `sqlite` or `postgres`.
    pub store: String,
    /// Whether this coordinator runs what must run once (the sweep,
    /// liveness, launches, removals, the DNS provider's loop). Always so
    /// with one coordinator.
    pub leader: bool,
    /// The leader's lease, when several coordinators share a PostgreSQL
    /// store; `None` on SQLite.
    pub lease: Option<LeaseStatus>,
    /// Whether EC2 is trusted now.
    pub ec2: Ec2Standing,
    /// The API's connections.
    pub connections: ConnectionCounts,
    /// Who asked.
    pub role: Role,
}

/// The leader's lease on a shared store, as the leader last renewed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseStatus {
    /// Who holds it: this coordinator's name.
    pub holder: String,
    /// Its term, raised by one on every takeover.
    pub term: i64,
    /// When it runs out unless renewed, RFC 3339 (by the database's clock).
    pub expires_at: String,
    /// How long it lasts after each renewal, in seconds.
    pub lease_secs: u64,
    /// Whether the last renewal is recent enough that this coordinator
    /// still knows it holds the lease (false while the database is away).
    pub confirmed: bool,
    /// The coordinators seen on the store within three lease times, by
    /// name, the leader among them.
    pub replicas: Vec<ReplicaStatus>,
}

/// A coordinator seen on the shared store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaStatus {
    /// Its name: `HOST/ID`, the id kept in its data dir.
    pub name: String,
    /// The URL it serves on once it leads.
    pub url: String,
    /// `leader` or `standby`.
    pub role: String,
    /// When it was last seen, RFC 3339 (by the database's clock).
    pub seen_at: String,
}

/// Whether the coordinator believes EC2's answers now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Standing {
    /// True while EC2 answers for the account the nodes are in.
    pub trusted: bool,
    /// Why not, when it is not.
    pub why: Option<String>,
}

/// Open API connections against the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCounts {
    /// Open now, handshaking ones included.
    pub open: u64,
    /// Allowed at most.
    pub max: u64,
}

/// `GET /v1/fleet/history`: the fleet over the last hour, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetHistory {
    /// Seconds between samples.
    pub interval_secs: u64,
    /// The samples, oldest first; at most an hour of them.
    pub samples: Vec<FleetSample>,
}

/// The fleet at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSample {
    /// When, in Unix seconds.
    pub at_unix: u64,
    /// Nodes by state; states with none are left out.
    pub states: BTreeMap<NodeState, u64>,
    /// Heartbeats accepted per second since the sample before.
    pub heartbeats_per_second: f64,
}

/// `GET /v1/nodes/{cluster}/{name}/dns`: what the node's names answer on
/// the embedded DNS server now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeNames {
    /// One entry per name and record type that answers; a name that does
    /// not resolve has one entry with no answers.
    pub names: Vec<NameAnswer>,
}

/// One name's answer of one type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameAnswer {
    /// The name asked, fully qualified without the trailing dot.
    pub name: String,
    /// `A`, `AAAA` or `CNAME`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The addresses, or the CNAME's target; empty when it does not
    /// resolve.
    pub answers: Vec<String>,
}

/// `POST /v1/admin/viewer-token`: the new viewer token, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewerTokenResponse {
    /// The secret (`mview_…`); only its hash is kept.
    pub viewer_token: String,
}
