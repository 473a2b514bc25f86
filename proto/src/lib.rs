//! The muster wire protocol: what the agent and the coordinator say to each
//! other, and what the admin CLI reads back.
//!
//! This is the only crate both sides link. It does no network I/O and has
//! no runtime (no tokio): plain serde types, the API paths and protocol
//! version as constants, and the validation of everything that comes off the
//! wire, so that both ends refuse the same inputs for the same reasons.
//!
//! One helper touches the file system, on purpose: [`fsutil::write_durably`],
//! plain `std`, because both binaries write files that must survive a crash
//! whole and this is the one crate they share.
//!
//! # Layout
//! - [`paths`]: the HTTP API paths and the protocol version.
//! - [`validate`]: instance ids, IPv4 addresses, DNS labels (RFC 1123), sizes.
//! - [`cidr`]: IPv4 CIDR blocks ([`cidr::Ipv4Cidr`]), the one type for them.
//! - [`fsutil`]: [`fsutil::write_durably`], the one durable file write.
//! - [`settings`]: what both binaries' settings share: the
//!   `NAME="value" is not valid: why` error, its exit code, durations.
//! - [`token`]: the prefixed secrets (join token, node credential, admin token).
//! - [`launch`]: launching nodes on EC2: the launch spec, provider options,
//!   scale and launch reports.
//! - the wire types at the crate root: register, heartbeat, node and cluster
//!   views, the rendered user data and the agent download it pins, and the
//!   JSON error body with [`ErrorCode`], every code the coordinator sends and
//!   its HTTP status.

#![forbid(unsafe_code)]

pub mod cidr;
mod error;
pub mod fsutil;
pub mod launch;
pub mod paths;
pub mod settings;
pub mod token;
pub mod validate;

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use validate::ValidationError;

/// The protocol version this build speaks. A register carries it; the
/// coordinator refuses versions it does not know.
pub const PROTOCOL_VERSION: u32 = 1;

/// The name of [`ErrorCode::IdentityUnproven`], kept for the coordinator
/// until it names the code by the enum.
pub const IDENTITY_UNPROVEN: &str = "identity_unproven";

/// Largest request body either API accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Most disks one heartbeat may report.
pub const MAX_DISKS: usize = 16;

/// Longest free-text field (OS name, kernel, mount path, agent version).
pub const MAX_TEXT_LEN: usize = 256;

/// The life of a node, as DESIGN.md §3 draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Instance requested, agent not heard yet.
    Launching,
    /// Agent registered and DNS set.
    Deployed,
    /// Heartbeats missed beyond the grace.
    Unreachable,
    /// EC2 says stopped.
    Stopped,
    /// Asked to terminate; waiting for EC2 to say so.
    Terminating,
    /// EC2 says terminated; DNS removed.
    Terminated,
    /// Never registered within the launch timeout, or the launch failed.
    Failed,
}

impl NodeState {
    /// Every state, in lifecycle order.
    pub const ALL: [NodeState; 7] = [
        NodeState::Launching,
        NodeState::Deployed,
        NodeState::Unreachable,
        NodeState::Stopped,
        NodeState::Terminating,
        NodeState::Terminated,
        NodeState::Failed,
    ];

    /// The lowercase name used on the wire, in the store and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Launching => "launching",
            NodeState::Deployed => "deployed",
            NodeState::Unreachable => "unreachable",
            NodeState::Stopped => "stopped",
            NodeState::Terminating => "terminating",
            NodeState::Terminated => "terminated",
            NodeState::Failed => "failed",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ValidationError::new("state", s, "is not a node state"))
    }
}

/// `POST /v1/agent/register`: an agent says who it is and where it can be
/// reached. Authorised by `Authorization: Bearer <join token | node credential>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub protocol: u32,
    /// The cluster the agent was told to join.
    pub cluster: String,
    /// EC2 instance id from IMDS; for a bring-your-own node, `m-` and its
    /// machine id ([`byon_node_id`]).
    pub instance_id: String,
    /// Availability zone from IMDS; empty for a bring-your-own node.
    pub availability_zone: String,
    /// Region from IMDS; empty for a bring-your-own node.
    pub region: String,
    /// Primary private IPv4 from IMDS.
    pub private_ipv4: Ipv4Addr,
    /// Public IPv4 from IMDS, if the instance has one.
    pub public_ipv4: Option<Ipv4Addr>,
    /// Agent build version, for the operator's eyes.
    pub agent_version: String,
    /// Present when the agent runs where there is no IMDS: a machine that
    /// joins with a bring-your-own token and names itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byon: Option<ByonIdentity>,
    /// The instance identity document and its PKCS7 signature, as IMDS
    /// gives them; absent on a bring-your-own node. A coordinator
    /// configured with AWS's certificates requires and checks them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_identity: Option<SignedIdentity>,
}

/// Largest instance identity document or PKCS7 signature accepted, in
/// bytes (EC2's are under 2 KiB).
pub const MAX_IDENTITY_BYTES: usize = 4096;

/// EC2's instance identity document, as IMDS serves it at
/// `dynamic/instance-identity/document`, with the signature it serves at
/// `dynamic/instance-identity/pkcs7`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedIdentity {
    /// The JSON document, byte for byte as IMDS gave it: the signature
    /// covers these bytes.
    pub document: String,
    /// The PKCS7 signature: base64 of its DER, without PEM armour.
    pub pkcs7: String,
}

impl SignedIdentity {
    /// Checks sizes and that the signature is base64 text.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.document.is_empty() || self.document.len() > MAX_IDENTITY_BYTES {
            return Err(ValidationError::new(
                "signed_identity.document",
                &self.document,
                "must be 1 to 4096 bytes",
            ));
        }
        let base64 =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r');
        if self.pkcs7.is_empty()
            || self.pkcs7.len() > MAX_IDENTITY_BYTES
            || !self.pkcs7.bytes().all(base64)
        {
            return Err(ValidationError::new(
                "signed_identity.pkcs7",
                &self.pkcs7,
                "must be 1 to 4096 bytes of base64",
            ));
        }
        Ok(())
    }
}

/// How a bring-your-own node names itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByonIdentity {
    /// The node name: the first label of the machine's hostname, lowercase.
    pub hostname: String,
    /// `/etc/machine-id`: what makes it the same node across restarts.
    pub machine_id: String,
}

/// The node id of a bring-your-own node with `machine_id`.
pub fn byon_node_id(machine_id: &str) -> String {
    format!("{}{machine_id}", validate::BYON_ID_PREFIX)
}

impl RegisterRequest {
    /// Checks every field as the coordinator will.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.protocol != PROTOCOL_VERSION {
            return Err(ValidationError::new(
                "protocol",
                &self.protocol.to_string(),
                "is not a protocol version this coordinator speaks",
            ));
        }
        validate::dns_label("cluster", &self.cluster)?;
        match &self.byon {
            None => {
                validate::instance_id(&self.instance_id)?;
                validate::availability_zone(&self.availability_zone)?;
                validate::region(&self.region)?;
                if let Some(signed) = &self.signed_identity {
                    signed.validate()?;
                }
            }
            Some(byon) => {
                if self.signed_identity.is_some() {
                    return Err(ValidationError::new(
                        "signed_identity",
                        "present",
                        "must be absent for a bring-your-own node",
                    ));
                }
                validate::dns_label("hostname", &byon.hostname)?;
                validate::machine_id(&byon.machine_id)?;
                if self.instance_id != byon_node_id(&byon.machine_id) {
                    return Err(ValidationError::new(
                        "instance_id",
                        &self.instance_id,
                        "must be \"m-\" and the machine id for a bring-your-own node",
                    ));
                }
                for (field, value) in [
                    ("availability_zone", &self.availability_zone),
                    ("region", &self.region),
                ] {
                    if !value.is_empty() {
                        return Err(ValidationError::new(
                            field,
                            value,
                            "must be empty for a bring-your-own node",
                        ));
                    }
                }
            }
        }
        validate::private_ipv4("private_ipv4", self.private_ipv4)?;
        if let Some(public) = self.public_ipv4 {
            validate::host_ipv4("public_ipv4", public)?;
        }
        validate::text("agent_version", &self.agent_version)?;
        Ok(())
    }
}

/// What the coordinator answers to a successful register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterResponse {
    /// The node this instance is, now and for its whole life.
    pub node: NodeView,
    /// The node credential to present from now on. Each register rotates it.
    pub credential: String,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Up to this many milliseconds of random delay to add to each interval.
    pub heartbeat_jitter_ms: u64,
}

/// `POST /v1/agent/heartbeat`: the agent is alive, here is where it is and
/// how the host is doing. Authorised by `Authorization: Bearer <node credential>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// EC2 instance id (or a bring-your-own node's `m-…` id); must be the
    /// one the credential is bound to.
    pub instance_id: String,
    /// Current primary private IPv4.
    pub private_ipv4: Ipv4Addr,
    /// Current public IPv4, if any.
    pub public_ipv4: Option<Ipv4Addr>,
    /// Host facts gathered by the agent.
    pub facts: HostFacts,
}

impl HeartbeatRequest {
    /// Checks every field as the coordinator will.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::node_id(&self.instance_id)?;
        validate::private_ipv4("private_ipv4", self.private_ipv4)?;
        if let Some(public) = self.public_ipv4 {
            validate::host_ipv4("public_ipv4", public)?;
        }
        self.facts.validate()
    }
}

/// What the coordinator answers to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatResponse {
    /// The node's state after this heartbeat.
    pub state: NodeState,
    /// How often to heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Up to this many milliseconds of random delay to add to each interval.
    pub heartbeat_jitter_ms: u64,
}

/// Facts about the host, from the agent's view of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFacts {
    /// Logical CPUs.
    pub cpus: u32,
    /// Load averages over 1, 5 and 15 minutes.
    pub load_average: [f64; 3],
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// Used memory in bytes.
    pub memory_used_bytes: u64,
    /// Disk usage of `/` and of the data volume mount, if present.
    pub disks: Vec<DiskUsage>,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// OS name and version, e.g. "Debian GNU/Linux 12".
    pub os: String,
    /// Kernel release.
    pub kernel: String,
}

impl HostFacts {
    /// Bounds every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.cpus > 4096 {
            return Err(ValidationError::new(
                "facts.cpus",
                &self.cpus.to_string(),
                "is more than 4096",
            ));
        }
        for load in self.load_average {
            if !load.is_finite() || !(0.0..=1e6).contains(&load) {
                return Err(ValidationError::new(
                    "facts.load_average",
                    &load.to_string(),
                    "must be a finite number between 0 and 1e6",
                ));
            }
        }
        if self.memory_used_bytes > self.memory_total_bytes {
            return Err(ValidationError::new(
                "facts.memory_used_bytes",
                &self.memory_used_bytes.to_string(),
                "is more than memory_total_bytes",
            ));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ValidationError::new(
                "facts.disks",
                &self.disks.len().to_string(),
                "lists more than 16 disks",
            ));
        }
        for disk in &self.disks {
            validate::text("facts.disks.mount", &disk.mount)?;
            if disk.used_bytes > disk.total_bytes {
                return Err(ValidationError::new(
                    "facts.disks.used_bytes",
                    &disk.used_bytes.to_string(),
                    "is more than total_bytes",
                ));
            }
        }
        validate::text("facts.os", &self.os)?;
        validate::text("facts.kernel", &self.kernel)?;
        Ok(())
    }
}

/// Usage of one mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUsage {
    /// Mount point, e.g. `/` or `/var/lib/muster-data`.
    pub mount: String,
    /// Size in bytes.
    pub total_bytes: u64,
    /// Used bytes.
    pub used_bytes: u64,
}

/// A node as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    /// Node name: a DNS label, unique within its cluster.
    pub name: String,
    /// Cluster the node belongs to.
    pub cluster: String,
    /// EC2 instance id, one instance being one node; `m-<machine id>` for
    /// a bring-your-own node.
    pub instance_id: String,
    /// Whether it joined with a bring-your-own token: no EC2 checks, no
    /// sweep; `node rm` deletes it.
    #[serde(default)]
    pub byon: bool,
    /// Current state.
    pub state: NodeState,
    /// Availability zone.
    pub availability_zone: String,
    /// Region.
    pub region: String,
    /// Primary private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4, if any.
    pub public_ipv4: Option<Ipv4Addr>,
    /// `name.cluster.zone`.
    pub dns_name: String,
    /// `name.cluster.internal.zone`.
    pub internal_dns_name: String,
    /// When the node was first recorded, RFC 3339.
    pub created_at: String,
    /// When the node last changed state or address, RFC 3339.
    pub updated_at: String,
    /// When the coordinator last heard the agent since it started, RFC 3339.
    pub last_seen_at: Option<String>,
    /// Host facts from the latest heartbeat since the coordinator started.
    pub facts: Option<HostFacts>,
}

/// Who or what caused a node event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// The agent: a register, a heartbeat, an address change it pushed.
    Agent,
    /// The coordinator's liveness check: heartbeats missed.
    Liveness,
    /// The coordinator's EC2 sweep.
    Sweep,
    /// An operator, through the admin API.
    Operator,
}

impl EventSource {
    /// Every source.
    pub const ALL: [EventSource; 4] = [
        EventSource::Agent,
        EventSource::Liveness,
        EventSource::Sweep,
        EventSource::Operator,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Agent => "agent",
            EventSource::Liveness => "liveness",
            EventSource::Sweep => "sweep",
            EventSource::Operator => "operator",
        }
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventSource {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventSource::ALL
            .into_iter()
            .find(|source| source.as_str() == s)
            .ok_or_else(|| ValidationError::new("source", s, "is not an event source"))
    }
}

/// One recorded transition or address change of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEvent {
    /// Sequence number, increasing with time; pages start after one.
    pub seq: i64,
    /// When, RFC 3339.
    pub at: String,
    /// State before, if any.
    pub from: Option<NodeState>,
    /// State after.
    pub to: NodeState,
    /// Why, in words.
    pub reason: String,
    /// Who or what caused it.
    pub source: EventSource,
}

/// Most events one page holds.
pub const MAX_EVENTS_PER_PAGE: usize = 1000;

/// Events `GET /v1/nodes/{cluster}/{name}` shows: the latest ones.
pub const EVENTS_IN_DETAIL: usize = 100;

/// `GET /v1/nodes/{cluster}/{name}/events?after=SEQ&limit=N`: one page of a
/// node's events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<NodeEvent>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// `GET /v1/nodes/{cluster}/{name}`: a node with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDetail {
    /// The node.
    pub node: NodeView,
    /// Its latest events (at most [`EVENTS_IN_DETAIL`]), oldest first; the
    /// events path pages through all of them.
    pub events: Vec<NodeEvent>,
    /// How many events the node has in all.
    pub events_total: u64,
}

/// A cluster as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterView {
    /// Cluster name: a DNS label.
    pub name: String,
    /// `cluster.zone`, the round-robin name of its deployed nodes.
    pub dns_name: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// Nodes in any state.
    pub nodes: u64,
    /// Nodes in `deployed`.
    pub deployed: u64,
    /// `active`, or on its way out.
    pub state: ClusterState,
    /// How its nodes are launched; absent for a cluster agents join on
    /// their own.
    pub launch: Option<launch::LaunchView>,
}

/// The life of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// In use.
    Active,
    /// `cluster rm` is terminating its instances and releasing what was
    /// made for it.
    Removing,
    /// Everything made for it is gone; its nodes are `terminated`. The name
    /// may be used again.
    Removed,
}

impl ClusterState {
    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Active => "active",
            ClusterState::Removing => "removing",
            ClusterState::Removed => "removed",
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClusterState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ClusterState::Active,
            ClusterState::Removing,
            ClusterState::Removed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| ValidationError::new("state", s, "is not a cluster state"))
    }
}

/// `POST /v1/clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterRequest {
    /// Cluster name: a DNS label (RFC 1123), lowercase.
    pub name: String,
    /// Nodes for muster to launch; absent for a cluster agents join on
    /// their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<launch::LaunchSpec>,
    /// Also mint a bring-your-own token.
    #[serde(default)]
    pub byon: bool,
}

impl CreateClusterRequest {
    /// Checks the name and the launch spec.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::dns_label("name", &self.name)?;
        if let Some(spec) = &self.launch {
            spec.validate()?;
        }
        Ok(())
    }
}

/// What `POST /v1/clusters` answers: the cluster and its join token, shown
/// this once (only a hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterResponse {
    /// The new cluster.
    pub cluster: ClusterView,
    /// The join token agents present to register.
    pub join_token: String,
    /// What was launched, for a launched cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<launch::LaunchReport>,
    /// The bring-your-own token, when asked for (shown this once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byon_token: Option<String>,
}

/// What `POST /v1/clusters/{name}/byon-token` answers: a fresh
/// bring-your-own token (shown this once; earlier ones stay valid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByonTokenResponse {
    /// The cluster.
    pub cluster: String,
    /// The token a machine without IMDS joins with.
    pub byon_token: String,
}

/// The longest a join token may be given to live: ten years.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// What `POST /v1/clusters/{name}/rotate-token` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenRequest {
    /// Seconds the new join token is valid for (1 to ten years); absent,
    /// it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl RotateTokenRequest {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        token_lifetime(self.expires_in_secs)
    }
}

/// Checks a join token's lifetime: absent, or 1 second to ten years.
fn token_lifetime(expires_in_secs: Option<u64>) -> Result<(), ValidationError> {
    match expires_in_secs {
        Some(secs) if !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&secs) => Err(ValidationError::new(
            "expires_in_secs",
            &secs.to_string(),
            "must be between 1 second and ten years",
        )),
        _ => Ok(()),
    }
}

/// What `POST /v1/clusters/{name}/userdata` takes (`{}` for the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDataRequest {
    /// Seconds the join token minted for the user data is valid for (1 to
    /// ten years); absent, it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl UserDataRequest {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        token_lifetime(self.expires_in_secs)
    }
}

/// What `POST /v1/clusters/{name}/rotate-token` answers: the cluster's new
/// join token (shown this once). The old one stops working at once, and
/// so do join tokens minted for user data; launch and bring-your-own
/// tokens are not touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenResponse {
    /// The cluster.
    pub cluster: String,
    /// The new join token.
    pub join_token: String,
    /// When it stops working (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// What `POST /v1/admin/rotate-token` answers: the new admin token (also
/// written to the coordinator's `D/admin-token`); the old one stops
/// working at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenResponse {
    /// The new admin token.
    pub admin_token: String,
}

/// `POST /v1/clusters/{name}/userdata`: the `#cloud-config` the launcher
/// would pass to RunInstances, with a join token minted for it (shown this
/// once; it registers any instance EC2 confirms, like the cluster's join
/// token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDataResponse {
    /// The cluster.
    pub cluster: String,
    /// The join token the user data carries.
    pub join_token: String,
    /// When that token stops working (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether the user data is gzipped (it did not fit EC2's 16 KiB as text).
    pub gzip: bool,
    /// Its size in bytes, as EC2 counts it (before base64).
    pub size_bytes: usize,
    /// The user data, base64: what RunInstances takes.
    pub user_data_base64: String,
    /// The user data as text, when it is not gzipped.
    pub user_data: Option<String>,
    /// The agent the user data installs, if the coordinator serves one.
    pub agent: Option<AgentDownload>,
}

/// An agent binary the coordinator serves to booting nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDownload {
    /// Where nodes fetch it.
    pub url: String,
    /// Its architecture, as `uname -m` prints it.
    pub arch: String,
    /// Its SHA-256, hex; nodes install it only if this matches.
    pub sha256: String,
}

/// The fully qualified names of a node, without the trailing dot.
pub fn node_dns_name(node: &str, cluster: &str, zone: &str) -> String {
    format!("{node}.{cluster}.{zone}")
}

/// The internal (private address) name of a node, without the trailing dot.
pub fn node_internal_dns_name(node: &str, cluster: &str, zone: &str) -> String {
    format!("{node}.{cluster}.internal.{zone}")
}

/// The round-robin name of a cluster, without the trailing dot.
pub fn cluster_dns_name(cluster: &str, zone: &str) -> String {
    format!("{cluster}.{zone}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register() -> RegisterRequest {
        RegisterRequest {
            protocol: PROTOCOL_VERSION,
            cluster: "web".into(),
            instance_id: "i-0123456789abcdef0".into(),
            availability_zone: "us-east-1a".into(),
            region: "us-east-1".into(),
            private_ipv4: Ipv4Addr::new(10, 0, 0, 5),
            public_ipv4: Some(Ipv4Addr::new(54, 1, 2, 3)),
            agent_version: "0.1.0".into(),
            byon: None,
            signed_identity: None,
        }
    }

    /// A register request survives JSON both ways and validates.
    #[test]
    fn register_round_trips() {
        let req = register();
        let json = serde_json::to_string(&req).unwrap();
        let back: RegisterRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
        back.validate().unwrap();
    }

    /// Unknown JSON fields are refused, not ignored.
    #[test]
    fn unknown_fields_are_refused() {
        let mut value = serde_json::to_value(register()).unwrap();
        value["admin"] = serde_json::Value::Bool(true);
        let err = serde_json::from_value::<RegisterRequest>(value).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    /// A protocol version from the future is refused by name.
    #[test]
    fn wrong_protocol_is_refused() {
        let mut req = register();
        req.protocol = 99;
        let err = req.validate().unwrap_err();
        assert_eq!(err.field, "protocol");
    }

    /// Each bad field of a register names itself.
    #[test]
    fn bad_register_fields_name_themselves() {
        type Case = (&'static str, fn(&mut RegisterRequest));
        let cases: Vec<Case> = vec![
            ("cluster", |r| r.cluster = "Web_1".into()),
            ("instance_id", |r| r.instance_id = "i-xyz".into()),
            ("availability_zone", |r| {
                r.availability_zone = "nowhere".into()
            }),
            ("region", |r| r.region = "US East".into()),
            ("private_ipv4", |r| r.private_ipv4 = Ipv4Addr::UNSPECIFIED),
            ("public_ipv4", |r| {
                r.public_ipv4 = Some(Ipv4Addr::new(224, 0, 0, 1))
            }),
        ];
        for (field, mutate) in cases {
            let mut req = register();
            mutate(&mut req);
            let err = req.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    /// Facts with impossible numbers are refused.
    #[test]
    fn bad_facts_are_refused() {
        let mut facts = HostFacts {
            memory_total_bytes: 10,
            memory_used_bytes: 11,
            ..HostFacts::default()
        };
        assert!(facts.validate().is_err());
        facts.memory_used_bytes = 5;
        facts.validate().unwrap();
        facts.load_average = [f64::NAN, 0.0, 0.0];
        assert!(facts.validate().is_err());
        facts.load_average = [0.0; 3];
        facts.disks = vec![
            DiskUsage {
                mount: "/".into(),
                total_bytes: 1,
                used_bytes: 0
            };
            MAX_DISKS + 1
        ];
        assert!(facts.validate().is_err());
    }

    /// Node states parse back from their wire names.
    #[test]
    fn states_round_trip() {
        for state in NodeState::ALL {
            assert_eq!(state.as_str().parse::<NodeState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!("dead".parse::<NodeState>().is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    fn facts() -> impl Strategy<Value = HostFacts> {
        (
            0u32..512,
            // Loads as multiples of 1/64: exact in binary and in short
            // decimal, so the JSON round trip is exact without relying on
            // the float parser's last-bit rounding.
            prop::array::uniform3((0u32..6400).prop_map(|n| f64::from(n) / 64.0)),
            0u64..(1 << 40),
            prop::collection::vec(("/[a-z]{0,12}", 0u64..(1 << 40)), 0..4),
            any::<u64>(),
            "[ -~]{0,40}",
            "[ -~]{0,40}",
        )
            .prop_map(|(cpus, load, mem, disks, uptime, os, kernel)| HostFacts {
                cpus,
                load_average: load,
                memory_total_bytes: mem,
                memory_used_bytes: mem / 2,
                disks: disks
                    .into_iter()
                    .map(|(mount, total)| DiskUsage {
                        mount,
                        total_bytes: total,
                        used_bytes: total / 3,
                    })
                    .collect(),
                uptime_secs: uptime,
                os,
                kernel,
            })
    }

    proptest! {
        /// Any heartbeat survives JSON both ways unchanged.
        #[test]
        fn heartbeat_round_trips(
            hex in "[0-9a-f]{17}",
            private in ipv4(),
            public in proptest::option::of(ipv4()),
            facts in facts(),
        ) {
            let req = HeartbeatRequest {
                instance_id: format!("i-{hex}"),
                private_ipv4: private,
                public_ipv4: public,
                facts,
            };
            let json = serde_json::to_vec(&req).unwrap();
            let back: HeartbeatRequest = serde_json::from_slice(&json).unwrap();
            prop_assert_eq!(back, req);
        }

        /// Arbitrary bytes never panic the decoder or the validator.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(req) = serde_json::from_slice::<RegisterRequest>(&bytes) {
                let _ = req.validate();
            }
            if let Ok(req) = serde_json::from_slice::<HeartbeatRequest>(&bytes) {
                let _ = req.validate();
            }
        }
    }
}
