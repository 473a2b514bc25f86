//! The registry: what happens when an agent registers or heartbeats, and
//! what the admin API reads back.
//!
//! - Every claim is checked against EC2 before anything is written: the
//!   instance exists, is `pending` or `running`, carries the `muster:cluster`
//!   tag of the cluster it joins, sits in the claimed zone and really has
//!   the claimed addresses. Before EC2 is asked, a public address in a
//!   range that is never public is refused (unless the operator allowed
//!   the range), and, with `verify_source`, so is a request whose source is
//!   none of the claimed addresses. A refused claim changes nothing; one
//!   that may be someone speaking for a node it is not is a security event
//!   ([`RegistryError::is_security_event`]).
//!   Bring-your-own nodes (a register carrying `byon`, admitted only by a
//!   cluster's bring-your-own token) are the exception: EC2 knows nothing of
//!   them, so it is never asked, and the sweep leaves them alone.
//! - One instance id is one node, for its whole life: a second register of
//!   the same instance reuses the node and rotates its credential (the old one
//!   stops working at once).
//! - Heartbeats update memory only ([`Live`]); the store is written on
//!   registers and address changes, each with its event.
//! - After every write the DNS zone is rebuilt from the in-memory view, which
//!   mirrors the store: at once, or, once [`Registry::run_publisher`] runs
//!   (it does under `serve`), by that task, which folds the writes that land
//!   during a rebuild into one more, and rests after each rebuild as long as
//!   it took.
//!
//! Secrets are 256-bit random values ([`muster_proto::token`]); only their
//! SHA-256 is kept, and join tokens are compared in constant time. A
//! cluster's join token can be rotated and given an expiry
//! ([`Registry::rotate_token`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use muster_proto::token::TokenKind;
use muster_proto::{
    validate, ClusterView, EventPage, EventSource, HeartbeatRequest, HeartbeatResponse, HostFacts,
    NodeDetail, NodeEvent, NodeState, NodeView, RegisterRequest, RegisterResponse, ValidationError,
};

use crate::config::Trust;
use crate::dns::{NodeRecordSource, Zone};
use crate::ec2::{Ec2Error, InstanceFacts, InstanceLookup};
use crate::launcher::{ClusterLaunch, LaunchError, Launcher};
use crate::lifecycle::{self, Input};
use crate::secrets::{
    digest_secret, hash_secret, new_secret, secret_matches, stored_digest, SecretDigest,
};
use crate::store::{Cluster, Node, NodeRegistration, Store, StoreError, TokenPurpose};

mod clusters;

/// Why a request was refused. Each variant maps to one HTTP status and one
/// stable error code in [`crate::api`].
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A field failed validation.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The bearer secret is missing, malformed or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// A node credential was presented for another instance.
    #[error("the node credential belongs to instance {bound}, not {claimed}")]
    CredentialMismatch {
        /// The instance the credential is bound to.
        bound: String,
        /// The instance claimed.
        claimed: String,
    },
    /// EC2 does not know the instance.
    #[error("EC2 knows no instance {instance_id} in {region}")]
    InstanceNotFound {
        /// The instance.
        instance_id: String,
        /// The region asked.
        region: String,
    },
    /// The instance does not carry the `muster:cluster` tag of the cluster
    /// it claims to join.
    #[error(
        "instance {instance_id} is tagged muster:cluster={}, so it may not join cluster {cluster}",
        tag.as_deref().unwrap_or("(no tag)")
    )]
    ClusterTagMismatch {
        /// The instance.
        instance_id: String,
        /// The cluster claimed.
        cluster: String,
        /// Its tag's value, if it has the tag.
        tag: Option<String>,
    },
    /// The signed identity document is missing, not signed by a configured
    /// certificate, or names something else than the register.
    #[error("instance {instance_id}: {source}")]
    IdentityUnproven {
        /// The instance claimed.
        instance_id: String,
        /// What is wrong.
        source: crate::identity_document::IdentityError,
    },
    /// The instance is not pending or running.
    #[error("instance {instance_id} is {state} in EC2, not running")]
    InstanceNotRunning {
        /// The instance.
        instance_id: String,
        /// Its EC2 state.
        state: String,
    },
    /// With `verify_source`, the request came from an address that is not
    /// one of the node's.
    #[error(
        "the request came from {source_addr}, which is not an address of {instance_id} ({claimed})"
    )]
    SourceMismatch {
        /// The instance.
        instance_id: String,
        /// Where the request came from.
        source_addr: IpAddr,
        /// The node's addresses.
        claimed: String,
    },
    /// A claimed address or zone is not what EC2 reports.
    #[error("{field} claimed {claimed} but EC2 reports {actual} for instance {instance_id}")]
    AddressMismatch {
        /// The instance.
        instance_id: String,
        /// Which claim.
        field: &'static str,
        /// What the agent said.
        claimed: String,
        /// What EC2 said.
        actual: String,
    },
    /// The instance is already a node of another cluster.
    #[error("instance {instance_id} is already node {node} of cluster {cluster}")]
    InstanceInOtherCluster {
        /// The instance.
        instance_id: String,
        /// Its cluster.
        cluster: String,
        /// Its node name.
        node: String,
    },
    /// The node is being or has been terminated; agents cannot revive it.
    #[error("node {node} of cluster {cluster} is {state}")]
    NodeTerminated {
        /// Its cluster.
        cluster: String,
        /// The node.
        node: String,
        /// `terminating` or `terminated`.
        state: NodeState,
    },
    /// A cluster of that name exists.
    #[error("cluster {0:?} exists already")]
    ClusterExists(String),
    /// A bring-your-own machine names itself as another node is named.
    #[error("cluster {cluster} has a node {name} already, on another machine ({instance_id})")]
    NameTaken {
        /// The cluster.
        cluster: String,
        /// The name.
        name: String,
        /// The node that has it.
        instance_id: String,
    },
    /// The cluster is being removed, or was.
    #[error("cluster {name:?} is {state}")]
    ClusterNotActive {
        /// The cluster.
        name: String,
        /// Its state.
        state: muster_proto::ClusterState,
    },
    /// Launching, scaling or releasing failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// No such cluster or node.
    #[error("{0}")]
    NotFound(String),
    /// EC2 could not be asked.
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The agent binary to install could not be read.
    #[error(transparent)]
    Agent(#[from] crate::launcher::agent_dist::AgentDistError),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::ClusterExists(name) => RegistryError::ClusterExists(name),
            other => RegistryError::Store(other),
        }
    }
}

impl RegistryError {
    /// Whether this refusal may be someone speaking for a node they are
    /// not: logged as a security event (target `muster::security`) with
    /// the claimed and actual values, and counted.
    pub fn is_security_event(&self) -> bool {
        matches!(
            self,
            RegistryError::Unauthorized(_)
                | RegistryError::CredentialMismatch { .. }
                | RegistryError::InstanceNotFound { .. }
                | RegistryError::InstanceNotRunning { .. }
                | RegistryError::ClusterTagMismatch { .. }
                | RegistryError::IdentityUnproven { .. }
                | RegistryError::SourceMismatch { .. }
                | RegistryError::AddressMismatch { .. }
                | RegistryError::InstanceInOtherCluster { .. }
                | RegistryError::NodeTerminated { .. }
                | RegistryError::NameTaken { .. }
        )
    }

    /// The stable, snake_case code scripts may match on.
    pub fn code(&self) -> &'static str {
        match self {
            RegistryError::Invalid(_) => "invalid_request",
            RegistryError::Unauthorized(_) => "unauthorized",
            RegistryError::CredentialMismatch { .. } => "credential_mismatch",
            RegistryError::InstanceNotFound { .. } => "instance_not_found",
            RegistryError::InstanceNotRunning { .. } => "instance_not_running",
            RegistryError::ClusterTagMismatch { .. } => "cluster_tag_mismatch",
            RegistryError::IdentityUnproven { .. } => muster_proto::IDENTITY_UNPROVEN,
            RegistryError::SourceMismatch { .. } => "source_mismatch",
            RegistryError::AddressMismatch { .. } => "address_mismatch",
            RegistryError::InstanceInOtherCluster { .. } => "instance_in_other_cluster",
            RegistryError::NodeTerminated { .. } => "node_terminated",
            RegistryError::ClusterExists(_) => "cluster_exists",
            RegistryError::ClusterNotActive { .. } => "cluster_not_active",
            RegistryError::NameTaken { .. } => "name_taken",
            RegistryError::Launch(error) if error.is_bad_request() => "launch_refused",
            RegistryError::Launch(_) => "launch_failed",
            RegistryError::NotFound(_) => "not_found",
            RegistryError::Ec2(_) => "ec2_unavailable",
            RegistryError::Store(_) => "internal",
            RegistryError::Agent(_) => "agent_unavailable",
        }
    }
}

/// Heartbeat pacing handed to agents.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Base interval.
    pub heartbeat_interval: Duration,
    /// Random extra delay, up to this much.
    pub heartbeat_jitter: Duration,
    /// Silence after which a deployed node becomes unreachable.
    pub grace: Duration,
    /// Sweeps in a row EC2 must not know an instance before its node is
    /// terminated.
    pub unknown_sweeps: u32,
    /// How long a launched node's agent has to register before the node
    /// is `failed`.
    pub launch_timeout: Duration,
}

/// What launching nodes needs beyond looking instances up.
#[derive(Debug, Clone)]
pub struct LaunchContext {
    /// Launches and releases on EC2.
    pub launcher: Launcher,
    /// The coordinator's URL as agents reach it, for the user data.
    pub coordinator_url: String,
    /// The CA agents pin, PEM; `None` with an operator certificate.
    pub ca_pem: Option<String>,
    /// The agent served to booting nodes; `None` when images carry it.
    pub agent: Option<Arc<crate::launcher::agent_dist::AgentDist>>,
}

/// A node as kept in memory: the stored fields the hot paths need, plus
/// what heartbeats bring (never written to disk).
#[derive(Debug, Clone)]
struct LiveNode {
    /// Shared by every node of the cluster ([`Live::intern`]).
    cluster: Arc<str>,
    name: String,
    instance_id: String,
    /// Shared by every node of the region.
    region: Arc<str>,
    /// A bring-your-own node: EC2 is never asked about it.
    byon: bool,
    state: NodeState,
    private_ipv4: Option<Ipv4Addr>,
    public_ipv4: Option<Ipv4Addr>,
    /// The credential's SHA-256, as the index keys it.
    credential_hash: Option<SecretDigest>,
    last_seen: Option<SystemTime>,
    /// When the agent was last heard, or when this coordinator started:
    /// every node gets one full grace after a restart.
    last_heard: Instant,
    /// Sweeps in a row that EC2 did not know the instance.
    unknown_sweeps: u32,
    /// Shared, so that a heartbeat's copy of the node does not copy them.
    facts: Option<Arc<HostFacts>>,
}

/// The in-memory view: every node by row id, and the credential index.
#[derive(Debug, Default)]
struct Live {
    nodes: HashMap<i64, LiveNode>,
    by_credential: HashMap<SecretDigest, i64>,
    /// Cluster and region names, each held once.
    interned: std::collections::HashSet<Arc<str>>,
}

impl Live {
    /// `text`, shared with every other holder of the same text.
    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.interned.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.interned.insert(shared.clone());
        shared
    }

    fn upsert(&mut self, node: &Node) {
        let previous = self.nodes.remove(&node.id);
        if let Some(old_hash) = previous.as_ref().and_then(|p| p.credential_hash.as_ref()) {
            self.by_credential.remove(old_hash);
        }
        let credential_hash = node.credential_hash.as_deref().and_then(stored_digest);
        if let Some(hash) = credential_hash {
            self.by_credential.insert(hash, node.id);
        }
        let (cluster, region) = (self.intern(&node.cluster), self.intern(&node.region));
        self.nodes.insert(
            node.id,
            LiveNode {
                cluster,
                name: node.name.clone(),
                instance_id: node.instance_id.clone(),
                region,
                byon: node.byon,
                state: node.state,
                private_ipv4: node.private_ipv4,
                public_ipv4: node.public_ipv4,
                credential_hash,
                last_seen: previous.as_ref().and_then(|p| p.last_seen),
                last_heard: previous
                    .as_ref()
                    .map_or_else(Instant::now, |p| p.last_heard),
                unknown_sweeps: previous.as_ref().map_or(0, |p| p.unknown_sweeps),
                facts: previous.and_then(|p| p.facts),
            },
        );
    }

    /// Forgets node `id` and its credential.
    fn remove(&mut self, id: i64) {
        if let Some(node) = self.nodes.remove(&id) {
            if let Some(hash) = node.credential_hash {
                self.by_credential.remove(&hash);
            }
        }
    }

    fn record_sources(&self) -> Vec<NodeRecordSource> {
        self.nodes
            .values()
            .map(|n| NodeRecordSource {
                cluster: n.cluster.to_string(),
                name: n.name.clone(),
                state: n.state,
                private_ipv4: n.private_ipv4,
                public_ipv4: n.public_ipv4,
            })
            .collect()
    }
}

/// What an agent says of its instance, to be checked against EC2.
#[derive(Debug, Clone, Copy)]
struct Claim<'a> {
    cluster: &'a str,
    region: &'a str,
    instance_id: &'a str,
    availability_zone: Option<&'a str>,
    private_ipv4: Ipv4Addr,
    public_ipv4: Option<Ipv4Addr>,
}

impl Claim<'_> {
    /// Whether EC2's `facts` bear the claim out.
    fn judge(&self, facts: InstanceFacts) -> Result<(), RegistryError> {
        let instance_id = self.instance_id;
        if facts.state != "running" && facts.state != "pending" {
            return Err(RegistryError::InstanceNotRunning {
                instance_id: instance_id.to_owned(),
                state: facts.state,
            });
        }
        if facts.cluster_tag.as_deref() != Some(self.cluster) {
            return Err(RegistryError::ClusterTagMismatch {
                instance_id: instance_id.to_owned(),
                cluster: self.cluster.to_owned(),
                tag: facts.cluster_tag,
            });
        }
        let mismatch = |field, claimed: String, actual: String| RegistryError::AddressMismatch {
            instance_id: instance_id.to_owned(),
            field,
            claimed,
            actual,
        };
        if let Some(zone) = self.availability_zone {
            if facts.availability_zone.as_deref() != Some(zone) {
                return Err(mismatch(
                    "availability_zone",
                    zone.to_owned(),
                    facts.availability_zone.unwrap_or_else(|| "none".into()),
                ));
            }
        }
        if facts.private_ipv4 != Some(self.private_ipv4) {
            return Err(mismatch(
                "private_ipv4",
                self.private_ipv4.to_string(),
                show_ip(facts.private_ipv4),
            ));
        }
        if facts.public_ipv4 != self.public_ipv4 {
            return Err(mismatch(
                "public_ipv4",
                show_ip(self.public_ipv4),
                show_ip(facts.public_ipv4),
            ));
        }
        Ok(())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Successful registers.
    pub registrations: AtomicU64,
    /// Successful heartbeats.
    pub heartbeats: AtomicU64,
    /// Address changes accepted.
    pub address_changes: AtomicU64,
    /// Sweeps completed.
    pub sweeps: AtomicU64,
    /// Refusals by error code.
    pub refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Security events by error code.
    pub security_events: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn refused(&self, error: &RegistryError) {
        let count = |map: &Mutex<BTreeMap<&'static str, u64>>| {
            *map.lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(error.code())
                .or_default() += 1;
        };
        count(&self.refusals);
        if error.is_security_event() {
            count(&self.security_events);
        }
    }
}

/// What one sweep saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Instances EC2 returned.
    pub seen: usize,
    /// Regions whose read failed.
    pub failed_regions: usize,
}

/// The registry. Shared by the API handlers.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    ec2: Arc<dyn InstanceLookup>,
    zone: Arc<Zone>,
    zone_name: String,
    timing: Timing,
    live: Mutex<Live>,
    /// Serialises writes so that the store, memory and DNS move together.
    write: tokio::sync::Mutex<()>,
    /// Launching, for a coordinator that launches nodes.
    launch: Option<LaunchContext>,
    /// Serialises cluster creates, scales and removals: each reads the
    /// cluster's nodes, asks EC2, and writes what came of it.
    clusters: tokio::sync::Mutex<()>,
    /// Wakes [`Registry::run_publisher`] when the records changed.
    publish_wanted: tokio::sync::Notify,
    /// Whether a publisher runs; until one does, every write publishes
    /// before it returns.
    coalesce: std::sync::atomic::AtomicBool,
    /// Source checks and address rules.
    trust: Trust,
    /// Counters for `/metrics`.
    pub counters: Counters,
}

fn show_ip(ip: Option<Ipv4Addr>) -> String {
    ip.map_or_else(|| "none".to_owned(), |ip| ip.to_string())
}

/// "address changed: public 1.2.3.4 -> 5.6.7.8", naming only what changed.
fn address_change_reason(
    before: (Option<Ipv4Addr>, Option<Ipv4Addr>),
    after: (Option<Ipv4Addr>, Option<Ipv4Addr>),
) -> String {
    let mut parts = Vec::new();
    for (label, old, new) in [
        ("private", before.0, after.0),
        ("public", before.1, after.1),
    ] {
        if old != new {
            parts.push(format!("{label} {} -> {}", show_ip(old), show_ip(new)));
        }
    }
    format!("address changed: {}", parts.join(", "))
}

/// The launch a cluster was stored with, if it launches nodes.
fn cluster_launch(cluster: &Cluster) -> Result<Option<ClusterLaunch>, StoreError> {
    cluster
        .launch
        .as_deref()
        .map(|json| {
            serde_json::from_str(json).map_err(|_| StoreError::Corrupt {
                field: "clusters.launch",
                value: json.chars().take(64).collect(),
            })
        })
        .transpose()
}

/// A cluster's launch as the store keeps it: the inverse of
/// [`cluster_launch`].
fn launch_json(launch: &ClusterLaunch) -> Result<String, RegistryError> {
    serde_json::to_string(launch).map_err(|e| {
        RegistryError::Store(StoreError::Corrupt {
            field: "clusters.launch",
            value: e.to_string(),
        })
    })
}

fn event_view(e: crate::store::Event) -> NodeEvent {
    NodeEvent {
        seq: e.seq,
        at: rfc3339_ms(e.at),
        from: e.from,
        to: e.to,
        reason: e.reason,
        source: e.source,
    }
}

fn rfc3339_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

impl Registry {
    /// Loads every node from the store into memory and publishes DNS.
    pub fn new(
        store: Store,
        ec2: Arc<dyn InstanceLookup>,
        zone: Arc<Zone>,
        zone_name: String,
        timing: Timing,
    ) -> Result<Registry, RegistryError> {
        let mut live = Live::default();
        for node in store.nodes(None)? {
            live.upsert(&node);
        }
        zone.publish(&live.record_sources());
        Ok(Registry {
            store,
            ec2,
            zone,
            zone_name,
            timing,
            live: Mutex::new(live),
            write: tokio::sync::Mutex::new(()),
            launch: None,
            clusters: tokio::sync::Mutex::new(()),
            publish_wanted: tokio::sync::Notify::new(),
            coalesce: std::sync::atomic::AtomicBool::new(false),
            trust: Trust::default(),
            counters: Counters::default(),
        })
    }

    /// Sets the source checks and address rules (default: none).
    pub fn with_trust(mut self, trust: Trust) -> Registry {
        self.trust = trust;
        self
    }

    /// Refuses addresses that cannot be the node's: a public address in a
    /// reserved range the operator did not allow, and, with
    /// `verify_source`, a request from an address that is none of them.
    fn check_addresses(
        &self,
        instance_id: &str,
        source: Option<IpAddr>,
        private_ipv4: Ipv4Addr,
        public_ipv4: Option<Ipv4Addr>,
    ) -> Result<(), RegistryError> {
        if let Some(public) = public_ipv4 {
            muster_proto::validate::public_ipv4(
                "public_ipv4",
                public,
                &self.trust.public_ipv4_allow,
            )?;
        }
        if !self.trust.verify_source {
            return Ok(());
        }
        let ok = match source.map(|s| s.to_canonical()) {
            Some(IpAddr::V4(from)) => from == private_ipv4 || Some(from) == public_ipv4,
            _ => false,
        };
        if ok {
            return Ok(());
        }
        Err(RegistryError::SourceMismatch {
            instance_id: instance_id.to_owned(),
            source_addr: source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            claimed: format!("private {private_ipv4}, public {}", show_ip(public_ipv4)),
        })
    }

    /// Lets this registry launch nodes.
    pub fn with_launcher(mut self, launch: LaunchContext) -> Registry {
        self.launch = Some(launch);
        self
    }

    /// Publishes the records after a write: at once, or, with a publisher
    /// running, by waking it (see [`Registry::run_publisher`]).
    fn publish(&self) {
        if self.coalesce.load(Ordering::Acquire) {
            self.publish_wanted.notify_one();
        } else {
            self.publish_now();
        }
    }

    /// Rebuilds the zone from memory and swaps it in.
    pub fn publish_now(&self) {
        let sources = self.live().record_sources();
        self.zone.publish(&sources);
    }

    /// Publishes the records whenever a write asks, coalescing the asks that
    /// come while a rebuild runs into one more rebuild. A rebuild reads
    /// every node, so publishing after each of a thousand registers in a
    /// row would cost a thousand full rebuilds; this costs a handful, and
    /// the last write is always published. Runs until the task is dropped.
    ///
    /// After each rebuild it rests as long as the rebuild took, so that
    /// rebuilding takes at most half of one core: with 100k nodes, writes
    /// coming without pause would otherwise keep one core rebuilding and
    /// starve the registers that cause them. A change then reaches the
    /// zone within three rebuilds' time: the one running when it came,
    /// the rest after it, and its own.
    pub async fn run_publisher(self: Arc<Self>) {
        self.coalesce.store(true, Ordering::Release);
        // A write that came before the flag was set published inline.
        loop {
            self.publish_wanted.notified().await;
            let registry = Arc::clone(&self);
            let started = std::time::Instant::now();
            if tokio::task::spawn_blocking(move || registry.publish_now())
                .await
                .is_err()
            {
                tracing::error!("publishing the zone failed; trying at the next change");
            }
            tokio::time::sleep(started.elapsed()).await;
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cluster_view(&self, cluster: &Cluster, nodes: &[Node]) -> ClusterView {
        let mine = || nodes.iter().filter(|n| n.cluster == cluster.name);
        ClusterView {
            name: cluster.name.clone(),
            dns_name: muster_proto::cluster_dns_name(&cluster.name, &self.zone_name),
            created_at: rfc3339_ms(cluster.created_at),
            nodes: mine().count() as u64,
            deployed: mine().filter(|n| n.state == NodeState::Deployed).count() as u64,
            state: cluster.state,
            launch: match cluster_launch(cluster) {
                Ok(launch) => launch.map(|l| l.view()),
                Err(error) => {
                    tracing::error!(cluster = %cluster.name, %error, "stored launch unreadable");
                    None
                }
            },
        }
    }

    /// Every cluster.
    pub fn clusters(&self) -> Result<Vec<ClusterView>, RegistryError> {
        let nodes = self.store.nodes(None)?;
        Ok(self
            .store
            .clusters()?
            .iter()
            .map(|c| self.cluster_view(c, &nodes))
            .collect())
    }

    /// One cluster.
    pub fn cluster(&self, name: &str) -> Result<ClusterView, RegistryError> {
        validate::dns_label("cluster", name)?;
        let cluster = self
            .store
            .cluster(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("no cluster {name:?}")))?;
        let nodes = self.store.nodes(Some(name))?;
        Ok(self.cluster_view(&cluster, &nodes))
    }

    fn node_view(&self, node: &Node) -> NodeView {
        let live = self.live();
        let extra = live.nodes.get(&node.id);
        NodeView {
            name: node.name.clone(),
            cluster: node.cluster.clone(),
            instance_id: node.instance_id.clone(),
            byon: node.byon,
            state: node.state,
            availability_zone: node.availability_zone.clone(),
            region: node.region.clone(),
            private_ipv4: node.private_ipv4,
            public_ipv4: node.public_ipv4,
            dns_name: muster_proto::node_dns_name(&node.name, &node.cluster, &self.zone_name),
            internal_dns_name: muster_proto::node_internal_dns_name(
                &node.name,
                &node.cluster,
                &self.zone_name,
            ),
            created_at: rfc3339_ms(node.created_at),
            updated_at: rfc3339_ms(node.updated_at),
            last_seen_at: extra
                .and_then(|e| e.last_seen)
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            facts: extra.and_then(|e| e.facts.as_deref().cloned()),
        }
    }

    /// Every node, optionally of one cluster.
    pub fn nodes(&self, cluster: Option<&str>) -> Result<Vec<NodeView>, RegistryError> {
        if let Some(cluster) = cluster {
            validate::dns_label("cluster", cluster)?;
            if self.store.cluster(cluster)?.is_none() {
                return Err(RegistryError::NotFound(format!("no cluster {cluster:?}")));
            }
        }
        Ok(self
            .store
            .nodes(cluster)?
            .iter()
            .map(|n| self.node_view(n))
            .collect())
    }

    /// One node with its events.
    pub fn node(&self, cluster: &str, name: &str) -> Result<NodeDetail, RegistryError> {
        let node = self.stored_node(cluster, name)?;
        let events = self
            .store
            .latest_events(node.id, muster_proto::EVENTS_IN_DETAIL)?
            .into_iter()
            .map(event_view)
            .collect();
        Ok(NodeDetail {
            node: self.node_view(&node),
            events,
            events_total: self.store.events_total(node.id)?,
        })
    }

    /// One page of a node's events: up to `limit` after sequence `after`.
    pub fn node_events(
        &self,
        cluster: &str,
        name: &str,
        after: i64,
        limit: usize,
    ) -> Result<EventPage, RegistryError> {
        if after < 0 {
            return Err(
                ValidationError::new("after", &after.to_string(), "must not be negative").into(),
            );
        }
        if !(1..=muster_proto::MAX_EVENTS_PER_PAGE).contains(&limit) {
            return Err(ValidationError::new(
                "limit",
                &limit.to_string(),
                "must be between 1 and 1000",
            )
            .into());
        }
        let node = self.stored_node(cluster, name)?;
        // One more than asked tells whether another page follows.
        let mut events = self.store.events_after(node.id, after, limit + 1)?;
        let more = events.len() > limit;
        events.truncate(limit);
        let next_after = if more {
            events.last().map(|e| e.seq)
        } else {
            None
        };
        Ok(EventPage {
            events: events.into_iter().map(event_view).collect(),
            next_after,
        })
    }

    fn stored_node(&self, cluster: &str, name: &str) -> Result<Node, RegistryError> {
        validate::dns_label("cluster", cluster)?;
        validate::dns_label("node", name)?;
        self.store.node(cluster, name)?.ok_or_else(|| {
            RegistryError::NotFound(format!("no node {name:?} in cluster {cluster:?}"))
        })
    }

    /// Checks a claim against EC2: the instance exists, runs, carries the
    /// cluster's `muster:cluster` tag, and has the claimed zone and
    /// addresses. A claim the EC2 cache confirms needs no call; anything
    /// else, a refusal above all, rests on a fresh DescribeInstances.
    async fn check_claim(&self, claim: Claim<'_>) -> Result<(), RegistryError> {
        if let Some(facts) = self.ec2.cached(claim.region, claim.instance_id) {
            if claim.judge(facts).is_ok() {
                return Ok(());
            }
        }
        let facts = self
            .ec2
            .describe(claim.region, claim.instance_id)
            .await?
            .ok_or_else(|| RegistryError::InstanceNotFound {
                instance_id: claim.instance_id.to_owned(),
                region: claim.region.to_owned(),
            })?;
        claim.judge(facts)
    }

    /// Logs and counts a refusal, then hands it back.
    fn refuse(
        &self,
        operation: &'static str,
        instance_id: &str,
        error: RegistryError,
        source: Option<IpAddr>,
    ) -> RegistryError {
        self.counters.refused(&error);
        let source = source.map(|s| s.to_string()).unwrap_or_default();
        if error.is_security_event() {
            tracing::warn!(
                target: "muster::security",
                operation,
                instance_id,
                %source,
                code = error.code(),
                %error,
                "security event: agent request refused"
            );
        } else {
            tracing::warn!(operation, instance_id, %source, code = error.code(), %error, "agent request refused");
        }
        error
    }

    /// An agent registers with a join token or its node credential.
    pub async fn register(
        &self,
        bearer: &str,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, RegistryError> {
        self.register_from(bearer, req, None).await
    }

    /// [`Registry::register`] from `source`, the client's address, which
    /// `verify_source` checks.
    pub async fn register_from(
        &self,
        bearer: &str,
        req: RegisterRequest,
        source: Option<IpAddr>,
    ) -> Result<RegisterResponse, RegistryError> {
        let instance_id = req.instance_id.clone();
        self.register_checked(bearer, req, source)
            .await
            .map_err(|e| self.refuse("register", &instance_id, e, source))
    }

    async fn register_checked(
        &self,
        bearer: &str,
        req: RegisterRequest,
        source: Option<IpAddr>,
    ) -> Result<RegisterResponse, RegistryError> {
        req.validate()?;
        self.check_addresses(&req.instance_id, source, req.private_ipv4, req.public_ipv4)?;
        let cluster = self.store.cluster(&req.cluster)?;
        let how = match TokenKind::of(bearer) {
            Some(TokenKind::Join) => {
                let refused = || {
                    RegistryError::Unauthorized(format!(
                        "the join token is not one of cluster {:?}",
                        req.cluster
                    ))
                };
                let Some(c) = cluster.as_ref() else {
                    return Err(refused());
                };
                if c.state != muster_proto::ClusterState::Active {
                    return Err(RegistryError::ClusterNotActive {
                        name: c.name.clone(),
                        state: c.state,
                    });
                }
                let expired = |expires_at: Option<i64>, what: &str, renew: &str| match expires_at
                    .filter(|at| *at <= crate::store::now_ms())
                {
                    Some(at) => Err(RegistryError::Unauthorized(format!(
                        "the {what} of cluster {:?} expired at {}; {renew}",
                        c.name,
                        rfc3339_ms(at)
                    ))),
                    None => Ok(()),
                };
                if secret_matches(bearer, &c.join_token_hash) {
                    expired(
                        c.join_token_expires_at,
                        "join token",
                        "rotate it (cluster rotate-token)",
                    )?;
                    if req.byon.is_some() {
                        return Err(RegistryError::Unauthorized(format!(
                            "a machine without IMDS joins cluster {:?} with a bring-your-own \
                             token (cluster byon-token), not the join token",
                            c.name
                        )));
                    }
                    "registered with the join token"
                } else {
                    let token = self
                        .store
                        .cluster_token(&hash_secret(bearer))?
                        .filter(|t| t.cluster_id == c.id);
                    match token.map(|t| (t.purpose, t.expires_at)) {
                        Some((TokenPurpose::Byon, _)) => {
                            if req.byon.is_none() {
                                return Err(RegistryError::Unauthorized(
                                    "a bring-your-own token is for machines that name \
                                     themselves (muster-agent run --byon); EC2 instances join \
                                     with the join token"
                                        .into(),
                                ));
                            }
                            "registered with a bring-your-own token"
                        }
                        Some((TokenPurpose::Join, expires_at)) => {
                            expired(
                                expires_at,
                                "join token minted for user data",
                                "render new user data (userdata CLUSTER)",
                            )?;
                            if req.byon.is_some() {
                                return Err(RegistryError::Unauthorized(format!(
                                    "a machine without IMDS joins cluster {:?} with a \
                                     bring-your-own token (cluster byon-token), not a join token",
                                    c.name
                                )));
                            }
                            "registered with a join token minted for user data"
                        }
                        Some((TokenPurpose::Launch, _)) => {
                            // A launch token speaks only for instances muster
                            // launched into this cluster.
                            let launched = self
                                .store
                                .node_by_instance(&req.instance_id)?
                                .is_some_and(|n| n.cluster == c.name && n.subnet_id.is_some());
                            if !launched {
                                return Err(RegistryError::Unauthorized(format!(
                                    "a launch token registers only instances launched into \
                                     cluster {:?}, and {} is not one",
                                    c.name, req.instance_id
                                )));
                            }
                            "registered with its launch token"
                        }
                        _ => return Err(refused()),
                    }
                }
            }
            Some(TokenKind::Node) => {
                let live = self.live();
                let node = live
                    .by_credential
                    .get(&digest_secret(bearer))
                    .and_then(|id| live.nodes.get(id))
                    .ok_or_else(|| {
                        RegistryError::Unauthorized("the node credential is not valid".into())
                    })?;
                if node.instance_id != req.instance_id {
                    return Err(RegistryError::CredentialMismatch {
                        bound: node.instance_id.clone(),
                        claimed: req.instance_id.clone(),
                    });
                }
                if *node.cluster != *req.cluster {
                    return Err(RegistryError::Unauthorized(format!(
                        "the node credential belongs to cluster {:?}, not {:?}",
                        node.cluster, req.cluster
                    )));
                }
                if node.byon != req.byon.is_some() {
                    return Err(RegistryError::Unauthorized(
                        "the node credential belongs to a node of the other kind \
                         (bring-your-own or EC2)"
                            .into(),
                    ));
                }
                "re-registered with its node credential"
            }
            Some(TokenKind::Admin) => {
                return Err(RegistryError::Unauthorized(
                    "an admin token cannot register a node".into(),
                ))
            }
            None => return Err(RegistryError::Unauthorized(
                "the Authorization header must carry \"Bearer <join token or node credential>\""
                    .into(),
            )),
        };
        let cluster =
            cluster.ok_or_else(|| RegistryError::Unauthorized("no such cluster".into()))?;
        if let Some(existing) = self.store.node_by_instance(&req.instance_id)? {
            if matches!(
                existing.state,
                NodeState::Terminating | NodeState::Terminated
            ) {
                return Err(RegistryError::NodeTerminated {
                    cluster: existing.cluster,
                    node: existing.name,
                    state: existing.state,
                });
            }
            if existing.cluster != cluster.name {
                return Err(RegistryError::InstanceInOtherCluster {
                    instance_id: req.instance_id.clone(),
                    cluster: existing.cluster,
                    node: existing.name,
                });
            }
        }
        let name = match &req.byon {
            // EC2 knows nothing of a machine that names itself; its token
            // is the only check.
            Some(byon) => {
                if let Some(holder) = self.store.node(&cluster.name, &byon.hostname)? {
                    if holder.instance_id != req.instance_id
                        && holder.state != NodeState::Terminated
                    {
                        return Err(RegistryError::NameTaken {
                            cluster: cluster.name.clone(),
                            name: byon.hostname.clone(),
                            instance_id: holder.instance_id,
                        });
                    }
                }
                byon.hostname.clone()
            }
            None => {
                if let Some(certs) = &self.trust.identity_certs {
                    crate::identity_document::check(
                        certs,
                        req.signed_identity.as_ref(),
                        crate::identity_document::Claim {
                            instance_id: &req.instance_id,
                            region: &req.region,
                            availability_zone: &req.availability_zone,
                            private_ipv4: req.private_ipv4,
                        },
                    )
                    .map_err(|source| RegistryError::IdentityUnproven {
                        instance_id: req.instance_id.clone(),
                        source,
                    })?;
                }
                self.check_claim(Claim {
                    cluster: &cluster.name,
                    region: &req.region,
                    instance_id: &req.instance_id,
                    availability_zone: Some(&req.availability_zone),
                    private_ipv4: req.private_ipv4,
                    public_ipv4: req.public_ipv4,
                })
                .await?;
                req.instance_id.clone()
            }
        };

        let credential = new_secret(TokenKind::Node);
        let credential_hash = hash_secret(&credential);
        let _write = self.write.lock().await;
        let reason = format!(
            "{how}: private {} public {}",
            req.private_ipv4,
            show_ip(req.public_ipv4)
        );
        let node = self.store.register_node(
            &NodeRegistration {
                cluster_id: cluster.id,
                name: &name,
                instance_id: &req.instance_id,
                availability_zone: &req.availability_zone,
                region: &req.region,
                private_ipv4: req.private_ipv4,
                public_ipv4: req.public_ipv4,
                credential_hash: &credential_hash,
                byon: req.byon.is_some(),
            },
            &reason,
        )?;
        {
            let mut live = self.live();
            live.upsert(&node);
            if let Some(entry) = live.nodes.get_mut(&node.id) {
                entry.last_seen = Some(SystemTime::now());
                entry.last_heard = Instant::now();
                entry.unknown_sweeps = 0;
            }
        }
        self.publish();
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            cluster = %node.cluster,
            node = %node.name,
            private = ?node.private_ipv4,
            public = ?node.public_ipv4,
            how,
            "node registered"
        );
        Ok(RegisterResponse {
            node: self.node_view(&node),
            credential,
            heartbeat_interval_ms: self.timing.heartbeat_interval.as_millis() as u64,
            heartbeat_jitter_ms: self.timing.heartbeat_jitter.as_millis() as u64,
        })
    }

    /// An agent heartbeats with its node credential. New addresses are
    /// checked against EC2, stored and published; everything else stays in
    /// memory.
    pub async fn heartbeat(
        &self,
        bearer: &str,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, RegistryError> {
        self.heartbeat_from(bearer, req, None).await
    }

    /// [`Registry::heartbeat`] from `source`, the client's address, which
    /// `verify_source` checks.
    pub async fn heartbeat_from(
        &self,
        bearer: &str,
        req: HeartbeatRequest,
        source: Option<IpAddr>,
    ) -> Result<HeartbeatResponse, RegistryError> {
        let instance_id = req.instance_id.clone();
        self.heartbeat_checked(bearer, req, source)
            .await
            .map_err(|e| self.refuse("heartbeat", &instance_id, e, source))
    }

    async fn heartbeat_checked(
        &self,
        bearer: &str,
        req: HeartbeatRequest,
        source: Option<IpAddr>,
    ) -> Result<HeartbeatResponse, RegistryError> {
        req.validate()?;
        self.check_addresses(&req.instance_id, source, req.private_ipv4, req.public_ipv4)?;
        if TokenKind::of(bearer) != Some(TokenKind::Node) {
            return Err(RegistryError::Unauthorized(
                "a heartbeat needs \"Authorization: Bearer <node credential>\"".into(),
            ));
        }
        let hash = digest_secret(bearer);
        let lookup = |live: &Live| -> Result<(i64, LiveNode), RegistryError> {
            let id = *live.by_credential.get(&hash).ok_or_else(|| {
                RegistryError::Unauthorized("the node credential is not valid".into())
            })?;
            let node = live.nodes.get(&id).ok_or_else(|| {
                RegistryError::Unauthorized("the node credential is not valid".into())
            })?;
            if node.instance_id != req.instance_id {
                return Err(RegistryError::CredentialMismatch {
                    bound: node.instance_id.clone(),
                    claimed: req.instance_id.clone(),
                });
            }
            Ok((id, node.clone()))
        };
        let (id, node) = lookup(&self.live())?;
        if matches!(node.state, NodeState::Terminating | NodeState::Terminated) {
            return Err(RegistryError::NodeTerminated {
                cluster: node.cluster.to_string(),
                node: node.name,
                state: node.state,
            });
        }
        let moved =
            node.private_ipv4 != Some(req.private_ipv4) || node.public_ipv4 != req.public_ipv4;
        // A node EC2 last saw stopped (or that never ran) counts as deployed
        // again only once EC2 confirms the instance runs with these addresses.
        let confirm = !matches!(node.state, NodeState::Deployed | NodeState::Unreachable);
        if (moved || confirm) && !node.byon {
            self.check_claim(Claim {
                cluster: &node.cluster,
                region: &node.region,
                instance_id: &node.instance_id,
                availability_zone: None,
                private_ipv4: req.private_ipv4,
                public_ipv4: req.public_ipv4,
            })
            .await?;
        }
        if moved {
            self.set_addresses(id, req.private_ipv4, req.public_ipv4, EventSource::Agent)
                .await?;
        }
        // Read the state after last_heard moves: a liveness check that comes
        // later sees the fresh time and leaves the node alone.
        let current = {
            let mut live = self.live();
            live.nodes.get_mut(&id).map(|entry| {
                entry.last_seen = Some(SystemTime::now());
                entry.last_heard = Instant::now();
                entry.facts = Some(Arc::new(req.facts));
                entry.state
            })
        };
        // The common case, a deployed node, takes no write lock.
        let state = match current {
            Some(NodeState::Deployed) => NodeState::Deployed,
            _ => self.apply(id, Input::Heard, EventSource::Agent).await?,
        };
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(HeartbeatResponse {
            state,
            heartbeat_interval_ms: self.timing.heartbeat_interval.as_millis() as u64,
            heartbeat_jitter_ms: self.timing.heartbeat_jitter.as_millis() as u64,
        })
    }

    /// Stores and publishes new addresses of node `id`, already checked
    /// against EC2, with an event naming what changed.
    async fn set_addresses(
        &self,
        id: i64,
        private_ipv4: Ipv4Addr,
        public_ipv4: Option<Ipv4Addr>,
        source: EventSource,
    ) -> Result<(), RegistryError> {
        let _write = self.write.lock().await;
        let Some(node) = self.live().nodes.get(&id).cloned() else {
            return Ok(());
        };
        if node.private_ipv4 == Some(private_ipv4) && node.public_ipv4 == public_ipv4 {
            return Ok(());
        }
        let reason = address_change_reason(
            (node.private_ipv4, node.public_ipv4),
            (Some(private_ipv4), public_ipv4),
        );
        self.store
            .update_addresses(id, node.state, private_ipv4, public_ipv4, &reason, source)?;
        {
            let mut live = self.live();
            if let Some(entry) = live.nodes.get_mut(&id) {
                entry.private_ipv4 = Some(private_ipv4);
                entry.public_ipv4 = public_ipv4;
            }
        }
        self.publish();
        self.counters
            .address_changes
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %node.cluster, node = %node.name, %source, %reason, "node address changed");
        Ok(())
    }

    /// Applies `input` to node `id` through the state machine: on a
    /// transition the store, the event, memory and DNS move together.
    /// Returns the node's state afterwards.
    async fn apply(
        &self,
        id: i64,
        input: Input,
        source: EventSource,
    ) -> Result<NodeState, RegistryError> {
        let _write = self.write.lock().await;
        let Some(node) = self.live().nodes.get(&id).cloned() else {
            return Err(RegistryError::NotFound(format!("no node with id {id}")));
        };
        // A heartbeat may have landed since the liveness check looked.
        if input == Input::Silent && node.last_heard.elapsed() <= self.timing.grace {
            return Ok(node.state);
        }
        if matches!(input, Input::LaunchTimedOut { .. })
            && node.last_heard.elapsed() <= self.timing.launch_timeout
        {
            return Ok(node.state);
        }
        let Some((to, reason)) = lifecycle::next(node.state, input, self.timing.unknown_sweeps)
        else {
            return Ok(node.state);
        };
        if !self.store.transition(id, node.state, to, &reason, source)? {
            // The store disagrees with memory: reload this node from it.
            if let Some(stored) = self.store.node(&node.cluster, &node.name)? {
                self.live().upsert(&stored);
                return Ok(stored.state);
            }
            return Ok(node.state);
        }
        {
            let mut live = self.live();
            if let Some(entry) = live.nodes.get_mut(&id) {
                entry.state = to;
            }
        }
        self.publish();
        tracing::info!(
            cluster = %node.cluster,
            node = %node.name,
            from = %node.state,
            to = %to,
            %source,
            %reason,
            "node state changed"
        );
        Ok(to)
    }

    /// Marks every deployed node silent for longer than the grace period
    /// `unreachable`. Returns how many it marked.
    pub async fn check_liveness(&self) -> usize {
        let grace = self.timing.grace;
        let launch_timeout = self.timing.launch_timeout;
        let (silent, overdue): (Vec<i64>, Vec<i64>) = {
            let live = self.live();
            (
                live.nodes
                    .iter()
                    .filter(|(_, n)| {
                        n.state == NodeState::Deployed && n.last_heard.elapsed() > grace
                    })
                    .map(|(id, _)| *id)
                    .collect(),
                live.nodes
                    .iter()
                    .filter(|(_, n)| {
                        n.state == NodeState::Launching && n.last_heard.elapsed() > launch_timeout
                    })
                    .map(|(id, _)| *id)
                    .collect(),
            )
        };
        let timed_out = Input::LaunchTimedOut {
            after_secs: launch_timeout.as_secs(),
        };
        for id in overdue {
            if let Err(error) = self.apply(id, timed_out, EventSource::Liveness).await {
                tracing::error!(%error, "liveness check could not fail a launch");
            }
        }
        let mut marked = 0;
        for id in silent {
            match self.apply(id, Input::Silent, EventSource::Liveness).await {
                Ok(NodeState::Unreachable) => marked += 1,
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "liveness check could not mark a node"),
            }
        }
        marked
    }

    /// Reads every tracked instance from EC2 and applies what EC2 says:
    /// stopped, terminated, unknown for too long, or running at another
    /// address than stored (DNS follows even if the agent is silent).
    pub async fn sweep(&self) -> SweepReport {
        let mut by_region: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for (id, node) in self.live().nodes.iter() {
            if node.state != NodeState::Terminated && !node.byon {
                by_region
                    .entry(node.region.to_string())
                    .or_default()
                    .push((*id, node.instance_id.clone()));
            }
        }
        let mut report = SweepReport::default();
        for (region, nodes) in by_region {
            let ids: Vec<String> = nodes.iter().map(|(_, i)| i.clone()).collect();
            let found = match self.ec2.describe_many(&region, &ids).await {
                Ok(found) => found,
                Err(error) => {
                    // Nothing is concluded from a failed read.
                    tracing::warn!(%error, %region, "sweep could not read EC2; trying again next time");
                    report.failed_regions += 1;
                    continue;
                }
            };
            report.seen += found.len();
            for (id, instance_id) in nodes {
                if let Err(error) = self.sweep_one(id, found.get(&instance_id)).await {
                    tracing::error!(%error, %instance_id, "sweep could not apply EC2's view");
                }
            }
        }
        self.counters.sweeps.fetch_add(1, Ordering::Relaxed);
        report
    }

    async fn sweep_one(&self, id: i64, facts: Option<&InstanceFacts>) -> Result<(), RegistryError> {
        let Some(facts) = facts else {
            let sweeps = {
                let mut live = self.live();
                let Some(entry) = live.nodes.get_mut(&id) else {
                    return Ok(());
                };
                entry.unknown_sweeps += 1;
                entry.unknown_sweeps
            };
            self.apply(id, Input::Ec2Unknown { sweeps }, EventSource::Sweep)
                .await?;
            return Ok(());
        };
        let state = {
            let mut live = self.live();
            let Some(entry) = live.nodes.get_mut(&id) else {
                return Ok(());
            };
            entry.unknown_sweeps = 0;
            entry.state
        };
        let input = match facts.state.as_str() {
            "pending" | "running" => Input::Ec2Running,
            "stopped" => Input::Ec2Stopped,
            "shutting-down" | "terminated" => Input::Ec2Gone,
            // "stopping": wait for where it lands.
            _ => return Ok(()),
        };
        if input == Input::Ec2Running
            && matches!(state, NodeState::Deployed | NodeState::Unreachable)
        {
            if let Some(private) = facts.private_ipv4 {
                self.set_addresses(id, private, facts.public_ipv4, EventSource::Sweep)
                    .await?;
            }
        }
        self.apply(id, input, EventSource::Sweep).await?;
        Ok(())
    }

    /// `node rm`: asks EC2 to terminate the instance and marks the node
    /// `terminating`; the sweep makes it `terminated` once EC2 says so.
    pub async fn remove_node(&self, cluster: &str, name: &str) -> Result<NodeView, RegistryError> {
        validate::dns_label("cluster", cluster)?;
        validate::dns_label("node", name)?;
        let node = self.store.node(cluster, name)?.ok_or_else(|| {
            RegistryError::NotFound(format!("no node {name:?} in cluster {cluster:?}"))
        })?;
        if node.state == NodeState::Terminated {
            return Err(RegistryError::NodeTerminated {
                cluster: node.cluster,
                node: node.name,
                state: node.state,
            });
        }
        if node.byon {
            let view = self.node_view(&node);
            self.forget_node(node.id).await?;
            tracing::info!(cluster = %node.cluster, node = %node.name, "bring-your-own node removed");
            return Ok(view);
        }
        self.ec2.terminate(&node.region, &node.instance_id).await?;
        self.apply(node.id, Input::OperatorRemove, EventSource::Operator)
            .await?;
        let node = self.store.node(cluster, name)?.ok_or_else(|| {
            RegistryError::NotFound(format!("no node {name:?} in cluster {cluster:?}"))
        })?;
        Ok(self.node_view(&node))
    }

    /// Deletes a bring-your-own node from the store and memory; its DNS
    /// records go with it.
    async fn forget_node(&self, id: i64) -> Result<(), RegistryError> {
        let _write = self.write.lock().await;
        self.store.delete_node(id)?;
        {
            self.live().remove(id);
        }
        self.publish();
        Ok(())
    }

    /// What the EC2 cache holds, by region, for `/metrics`; empty without
    /// one.
    pub fn ec2_cache_status(&self) -> Vec<crate::ec2::CacheStatus> {
        self.ec2.cache_status()
    }

    /// Node counts by state, for `/metrics`.
    pub fn nodes_by_state(&self) -> BTreeMap<NodeState, u64> {
        let mut counts: BTreeMap<NodeState, u64> = NodeState::ALL.iter().map(|s| (*s, 0)).collect();
        for node in self.live().nodes.values() {
            *counts.entry(node.state).or_default() += 1;
        }
        counts
    }

    /// The DNS zone this registry publishes to.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::InstanceFacts;
    use hickory_proto::rr::{LowerName, RecordType};
    use muster_proto::CreateClusterRequest;
    use std::str::FromStr;

    const ID: &str = "i-0123456789abcdef0";

    /// Stands in for EC2 in these unit tests only: a fixed table of
    /// instances, a cache's listing (empty unless a test fills it), and
    /// the count of describes.
    #[derive(Debug, Default)]
    struct Table(
        Mutex<HashMap<String, InstanceFacts>>,
        Mutex<HashMap<String, InstanceFacts>>,
        AtomicU64,
    );

    #[async_trait::async_trait]
    impl InstanceLookup for Table {
        async fn describe(&self, _: &str, id: &str) -> Result<Option<InstanceFacts>, Ec2Error> {
            self.2.fetch_add(1, Ordering::Relaxed);
            Ok(self.0.lock().unwrap().get(id).cloned())
        }

        fn cached(&self, _: &str, id: &str) -> Option<InstanceFacts> {
            self.1.lock().unwrap().get(id).cloned()
        }

        async fn describe_many(
            &self,
            _: &str,
            ids: &[String],
        ) -> Result<HashMap<String, InstanceFacts>, Ec2Error> {
            let table = self.0.lock().unwrap();
            Ok(ids
                .iter()
                .filter_map(|id| table.get(id).map(|f| (id.clone(), f.clone())))
                .collect())
        }

        async fn terminate(&self, _: &str, id: &str) -> Result<(), Ec2Error> {
            if let Some(facts) = self.0.lock().unwrap().get_mut(id) {
                facts.state = "shutting-down".into();
            }
            Ok(())
        }
    }

    fn running(public: Option<Ipv4Addr>) -> InstanceFacts {
        InstanceFacts {
            state: "running".into(),
            private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
            public_ipv4: public,
            availability_zone: Some("us-east-1a".into()),
            cluster_tag: Some("web".into()),
        }
    }

    fn setup() -> (Registry, Arc<Table>, String) {
        let table = Arc::new(Table::default());
        table
            .0
            .lock()
            .unwrap()
            .insert(ID.into(), running(Some(Ipv4Addr::new(54, 0, 0, 1))));
        let zone = Arc::new(Zone::new("muster.test", 30).unwrap());
        let store = Store::open_in_memory().unwrap();
        let token = new_secret(TokenKind::Join);
        store
            .create_cluster("web", &hash_secret(&token), None)
            .unwrap();
        let registry = Registry::new(
            store,
            table.clone(),
            zone,
            "muster.test".into(),
            Timing {
                heartbeat_interval: Duration::from_secs(10),
                heartbeat_jitter: Duration::from_secs(1),
                grace: Duration::from_secs(30),
                unknown_sweeps: 3,
                launch_timeout: Duration::from_secs(600),
            },
        )
        .unwrap();
        (registry, table, token)
    }

    fn register_req(public: Option<Ipv4Addr>) -> RegisterRequest {
        RegisterRequest {
            protocol: muster_proto::PROTOCOL_VERSION,
            cluster: "web".into(),
            instance_id: ID.into(),
            availability_zone: "us-east-1a".into(),
            region: "us-east-1".into(),
            private_ipv4: Ipv4Addr::new(10, 0, 0, 5),
            public_ipv4: public,
            agent_version: "test".into(),
            byon: None,
            signed_identity: None,
        }
    }

    fn heartbeat_req(public: Option<Ipv4Addr>) -> HeartbeatRequest {
        HeartbeatRequest {
            instance_id: ID.into(),
            private_ipv4: Ipv4Addr::new(10, 0, 0, 5),
            public_ipv4: public,
            facts: HostFacts::default(),
        }
    }

    fn answer(registry: &Registry, name: &str) -> Vec<Ipv4Addr> {
        registry
            .zone()
            .snapshot()
            .lookup(&LowerName::from_str(name).unwrap(), RecordType::A)
            .answers
            .iter()
            .filter_map(|r| match r.data() {
                hickory_proto::rr::RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    /// A good register stores a deployed node, records an event and answers in DNS.
    #[tokio::test]
    async fn register_deploys_and_publishes() {
        let (registry, _, token) = setup();
        let ip = Ipv4Addr::new(54, 0, 0, 1);
        let resp = registry
            .register(&token, register_req(Some(ip)))
            .await
            .unwrap();
        assert_eq!(resp.node.state, NodeState::Deployed);
        assert_eq!(TokenKind::of(&resp.credential), Some(TokenKind::Node));
        assert_eq!(
            answer(&registry, &format!("{ID}.web.muster.test.")),
            vec![ip]
        );
        assert_eq!(registry.node("web", ID).unwrap().events.len(), 1);
    }

    /// A claim the cache confirms asks EC2 nothing; one it does not confirm
    /// is decided by EC2 alone, whether EC2 then agrees or refuses.
    #[tokio::test]
    async fn the_cache_confirms_and_ec2_decides_the_rest() {
        let (registry, table, token) = setup();
        let old = Some(Ipv4Addr::new(54, 0, 0, 1));
        let eip = Ipv4Addr::new(54, 0, 0, 2);
        let new = Some(eip);
        let describes = || table.2.load(Ordering::Relaxed);
        table.1.lock().unwrap().insert(ID.into(), running(old));
        let credential = registry
            .register(&token, register_req(old))
            .await
            .unwrap()
            .credential;
        assert_eq!(describes(), 0, "the listing confirmed the register");

        // An Elastic IP the listing does not know yet: EC2 confirms it.
        table.0.lock().unwrap().insert(ID.into(), running(new));
        registry
            .heartbeat(&credential, heartbeat_req(new))
            .await
            .unwrap();
        assert_eq!(describes(), 1);
        assert_eq!(
            answer(&registry, &format!("{ID}.web.muster.test.")),
            vec![eip]
        );

        // The listing does not bear the claim out (the instance carries
        // another cluster's tag): EC2 is asked, and its refusal stands.
        let mut other = running(new);
        other.cluster_tag = Some("db".into());
        table.1.lock().unwrap().insert(ID.into(), other.clone());
        table.0.lock().unwrap().insert(ID.into(), other);
        let err = registry
            .register(&token, register_req(new))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "cluster_tag_mismatch");
        assert_eq!(describes(), 2);
    }

    /// Every kind of bad claim is refused with its own code and stores nothing.
    #[tokio::test]
    async fn bad_claims_change_nothing() {
        let (registry, table, token) = setup();
        let wrong_token = new_secret(TokenKind::Join);
        let good = Some(Ipv4Addr::new(54, 0, 0, 1));
        let err = registry
            .register(&wrong_token, register_req(good))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "unauthorized");
        let err = registry
            .register(&token, register_req(Some(Ipv4Addr::new(54, 9, 9, 9))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "address_mismatch");
        assert!(err.to_string().contains("54.9.9.9"), "{err}");
        let mut other_zone = register_req(good);
        other_zone.availability_zone = "us-east-1b".into();
        let err = registry.register(&token, other_zone).await.unwrap_err();
        assert_eq!(err.code(), "address_mismatch");
        let mut unknown = register_req(good);
        unknown.instance_id = "i-00000000".into();
        let err = registry.register(&token, unknown).await.unwrap_err();
        assert_eq!(err.code(), "instance_not_found");
        table.0.lock().unwrap().get_mut(ID).unwrap().state = "stopped".into();
        let err = registry
            .register(&token, register_req(good))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "instance_not_running");
        table.0.lock().unwrap().get_mut(ID).unwrap().state = "running".into();
        for tag in [None, Some("api")] {
            table.0.lock().unwrap().get_mut(ID).unwrap().cluster_tag = tag.map(Into::into);
            let err = registry
                .register(&token, register_req(good))
                .await
                .unwrap_err();
            assert_eq!(err.code(), "cluster_tag_mismatch", "{tag:?}");
        }
        assert!(registry.nodes(None).unwrap().is_empty());
        assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
    }

    /// Registering twice keeps one node and revokes the first credential.
    #[tokio::test]
    async fn second_register_rotates_the_credential() {
        let (registry, _, token) = setup();
        let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
        let first = registry.register(&token, register_req(ip)).await.unwrap();
        let second = registry.register(&token, register_req(ip)).await.unwrap();
        assert_ne!(first.credential, second.credential);
        assert_eq!(registry.nodes(None).unwrap().len(), 1);
        let err = registry
            .heartbeat(&first.credential, heartbeat_req(ip))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "unauthorized");
        registry
            .heartbeat(&second.credential, heartbeat_req(ip))
            .await
            .unwrap();
        // Re-register with the credential itself rotates it again.
        let third = registry
            .register(&second.credential, register_req(ip))
            .await
            .unwrap();
        assert!(registry
            .heartbeat(&second.credential, heartbeat_req(ip))
            .await
            .is_err());
        registry
            .heartbeat(&third.credential, heartbeat_req(ip))
            .await
            .unwrap();
    }

    /// A heartbeat with a new address moves DNS only once EC2 agrees.
    #[tokio::test]
    async fn heartbeat_moves_dns_after_ec2_agrees() {
        let (registry, table, token) = setup();
        let old = Ipv4Addr::new(54, 0, 0, 1);
        let new = Ipv4Addr::new(54, 0, 0, 2);
        let resp = registry
            .register(&token, register_req(Some(old)))
            .await
            .unwrap();
        let err = registry
            .heartbeat(&resp.credential, heartbeat_req(Some(new)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "address_mismatch");
        assert_eq!(
            answer(&registry, &format!("{ID}.web.muster.test.")),
            vec![old]
        );
        table
            .0
            .lock()
            .unwrap()
            .insert(ID.into(), running(Some(new)));
        registry
            .heartbeat(&resp.credential, heartbeat_req(Some(new)))
            .await
            .unwrap();
        assert_eq!(
            answer(&registry, &format!("{ID}.web.muster.test.")),
            vec![new]
        );
        let events = registry.node("web", ID).unwrap().events;
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[1].reason,
            "address changed: public 54.0.0.1 -> 54.0.0.2"
        );
    }

    fn state_of(registry: &Registry) -> NodeState {
        registry.node("web", ID).unwrap().node.state
    }

    /// Silence past the grace makes a node unreachable and drops it from the
    /// round robin but not from its own name; a heartbeat brings it back.
    #[tokio::test]
    async fn silence_makes_unreachable_and_a_heartbeat_heals() {
        let (registry, _, token) = setup();
        let public = Ipv4Addr::new(54, 0, 0, 1);
        let ip = Some(public);
        let resp = registry.register(&token, register_req(ip)).await.unwrap();
        assert_eq!(registry.check_liveness().await, 0, "fresh nodes are alive");
        // Silence past the grace, without sleeping through it.
        for node in registry.live().nodes.values_mut() {
            node.last_heard = Instant::now() - Duration::from_secs(31);
        }
        assert_eq!(registry.check_liveness().await, 1);
        assert_eq!(state_of(&registry), NodeState::Unreachable);
        assert!(answer(&registry, "web.muster.test.").is_empty());
        assert_eq!(
            answer(&registry, &format!("{ID}.web.muster.test.")),
            vec![public]
        );
        let beat = registry
            .heartbeat(&resp.credential, heartbeat_req(ip))
            .await
            .unwrap();
        assert_eq!(beat.state, NodeState::Deployed);
        assert_eq!(answer(&registry, "web.muster.test."), vec![public]);
        let events = registry.node("web", ID).unwrap().events;
        let sources: Vec<_> = events.iter().map(|e| (e.to, e.source)).collect();
        assert_eq!(
            sources,
            vec![
                (NodeState::Deployed, EventSource::Agent),
                (NodeState::Unreachable, EventSource::Liveness),
                (NodeState::Deployed, EventSource::Agent),
            ]
        );
    }

    fn byon_req(hostname: &str, machine_id: &str) -> RegisterRequest {
        RegisterRequest {
            instance_id: muster_proto::byon_node_id(machine_id),
            availability_zone: String::new(),
            region: String::new(),
            private_ipv4: Ipv4Addr::new(192, 168, 7, 10),
            public_ipv4: None,
            byon: Some(muster_proto::ByonIdentity {
                hostname: hostname.into(),
                machine_id: machine_id.into(),
            }),
            ..register_req(None)
        }
    }

    /// A machine without IMDS joins with a bring-your-own token and no EC2
    /// check, under its hostname; it goes unreachable when silent and stays
    /// so through sweeps; `node rm` deletes it and its names.
    #[tokio::test]
    async fn bring_your_own_nodes() {
        let (registry, _, join_token) = setup();
        let byon_token = registry.byon_token("web").await.unwrap();
        let machine = "0123456789abcdef0123456789abcdef";

        // Each token is for its own kind of machine.
        let err = registry
            .register(&join_token, byon_req("rack1", machine))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "unauthorized", "{err}");
        let err = registry
            .register(&byon_token, register_req(None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "unauthorized", "{err}");

        let resp = registry
            .register(&byon_token, byon_req("rack1", machine))
            .await
            .unwrap();
        assert_eq!(resp.node.name, "rack1");
        assert!(resp.node.byon);
        assert_eq!(resp.node.state, NodeState::Deployed);
        assert_eq!(
            answer(&registry, "rack1.web.muster.test."),
            vec![Ipv4Addr::new(192, 168, 7, 10)]
        );

        // Another machine may not take the name.
        let err = registry
            .register(
                &byon_token,
                byon_req("rack1", "fedcba9876543210fedcba9876543210"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "name_taken", "{err}");

        // Its own address change needs no EC2 word.
        let moved = HeartbeatRequest {
            instance_id: muster_proto::byon_node_id(machine),
            private_ipv4: Ipv4Addr::new(192, 168, 7, 11),
            public_ipv4: None,
            facts: HostFacts::default(),
        };
        registry.heartbeat(&resp.credential, moved).await.unwrap();
        assert_eq!(
            answer(&registry, "rack1.web.muster.test."),
            vec![Ipv4Addr::new(192, 168, 7, 11)]
        );

        // Silent: unreachable, and sweeps (EC2 knows nothing of it) leave it.
        for node in registry.live().nodes.values_mut() {
            node.last_heard = Instant::now() - Duration::from_secs(31);
        }
        assert_eq!(registry.check_liveness().await, 1);
        for _ in 0..5 {
            registry.sweep().await;
        }
        let node = registry.node("web", "rack1").unwrap().node;
        assert_eq!(node.state, NodeState::Unreachable);

        registry.remove_node("web", "rack1").await.unwrap();
        assert!(registry.node("web", "rack1").is_err());
        assert!(answer(&registry, "rack1.web.muster.test.").is_empty());
        assert!(registry
            .heartbeat(
                &resp.credential,
                HeartbeatRequest {
                    instance_id: muster_proto::byon_node_id(machine),
                    private_ipv4: Ipv4Addr::new(192, 168, 7, 11),
                    public_ipv4: None,
                    facts: HostFacts::default(),
                }
            )
            .await
            .is_err());
    }

    /// The sweep follows EC2: stopped, an address moved while the agent is
    /// silent, unknown for too long, and terminated; DNS follows each.
    #[tokio::test]
    async fn sweep_follows_ec2() {
        let (registry, table, token) = setup();
        let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
        registry.register(&token, register_req(ip)).await.unwrap();
        let moved = Ipv4Addr::new(54, 0, 0, 9);
        table
            .0
            .lock()
            .unwrap()
            .insert(ID.into(), running(Some(moved)));
        registry.sweep().await;
        assert_eq!(
            answer(&registry, &format!("{ID}.web.muster.test.")),
            vec![moved]
        );
        table.0.lock().unwrap().get_mut(ID).unwrap().state = "stopped".into();
        registry.sweep().await;
        assert_eq!(state_of(&registry), NodeState::Stopped);
        assert!(answer(&registry, "web.muster.test.").is_empty());
        table.0.lock().unwrap().remove(ID);
        registry.sweep().await;
        registry.sweep().await;
        assert_eq!(
            state_of(&registry),
            NodeState::Stopped,
            "two unknown sweeps are not enough"
        );
        registry.sweep().await;
        assert_eq!(state_of(&registry), NodeState::Terminated);
        assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
        assert!(answer(&registry, &format!("{ID}.web.internal.muster.test.")).is_empty());
    }

    /// `node rm` terminates through EC2: terminating at once, terminated
    /// after the sweep sees it, and the agent can no longer revive it.
    #[tokio::test]
    async fn remove_terminates_through_ec2() {
        let (registry, _, token) = setup();
        let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
        let resp = registry.register(&token, register_req(ip)).await.unwrap();
        let view = registry.remove_node("web", ID).await.unwrap();
        assert_eq!(view.state, NodeState::Terminating);
        let err = registry
            .heartbeat(&resp.credential, heartbeat_req(ip))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "node_terminated");
        registry.sweep().await;
        assert_eq!(state_of(&registry), NodeState::Terminated);
        assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
        let err = registry.remove_node("web", ID).await.unwrap_err();
        assert_eq!(err.code(), "node_terminated");
    }

    /// Event pages chain through `next_after` and bad bounds are refused.
    #[tokio::test]
    async fn events_are_paged() {
        let (registry, _, token) = setup();
        let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
        for _ in 0..5 {
            registry.register(&token, register_req(ip)).await.unwrap();
        }
        let first = registry.node_events("web", ID, 0, 2).unwrap();
        assert_eq!(first.events.len(), 2);
        let second = registry
            .node_events("web", ID, first.next_after.unwrap(), 2)
            .unwrap();
        let third = registry
            .node_events("web", ID, second.next_after.unwrap(), 2)
            .unwrap();
        assert_eq!(third.events.len(), 1);
        assert_eq!(third.next_after, None);
        assert_eq!(registry.node("web", ID).unwrap().events_total, 5);
        assert!(registry.node_events("web", ID, 0, 0).is_err());
        assert!(registry.node_events("web", ID, -1, 5).is_err());
        assert!(registry.node_events("web", ID, 0, 1001).is_err());
    }

    /// Reserved and over-long cluster names are refused.
    #[tokio::test]
    async fn cluster_names_are_checked() {
        let (registry, _, _) = setup();
        for bad in ["internal", "Web", "", &"a".repeat(64)] {
            let req = CreateClusterRequest {
                name: bad.into(),
                launch: None,
                byon: false,
            };
            assert!(registry.create_cluster(&req).await.is_err());
        }
        let req = CreateClusterRequest {
            name: "web".into(),
            launch: None,
            byon: false,
        };
        let err = registry.create_cluster(&req).await.unwrap_err();
        assert_eq!(err.code(), "cluster_exists");
        let created = registry
            .create_cluster(&CreateClusterRequest {
                name: "db".into(),
                launch: None,
                byon: true,
            })
            .await
            .unwrap();
        assert_eq!(created.cluster.state, muster_proto::ClusterState::Active);
        assert!(created.cluster.launch.is_none() && created.launch.is_none());
        assert_eq!(TokenKind::of(&created.join_token), Some(TokenKind::Join));
        let byon = created.byon_token.expect("a bring-your-own token");
        assert_eq!(TokenKind::of(&byon), Some(TokenKind::Join));
        assert_ne!(byon, created.join_token);
    }

    /// Without a launcher, a launch is refused and nothing is stored.
    #[tokio::test]
    async fn launch_needs_a_launcher() {
        let (registry, _, _) = setup();
        let req: CreateClusterRequest = serde_json::from_str(
            r#"{"name": "api", "launch": {"region": "us-east-1", "instance_type": "t3.micro",
                "count": 1, "disk_gb": 30, "ami": "ami-0123abcd"}}"#,
        )
        .unwrap();
        let err = registry.create_cluster(&req).await.unwrap_err();
        assert_eq!(err.code(), "invalid_request", "{err}");
        assert!(registry.cluster("api").is_err());
    }
}
