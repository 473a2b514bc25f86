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
//! # Layout
//! - [`register`] and [`heartbeat`]: the two agent flows, each a short
//!   sequence of the steps below.
//! - [`admit`]: who is speaking: which token, of which kind and purpose,
//!   may ask for what.
//! - [`claim`]: whether what is said is true: address ranges, the request's
//!   source, the signed identity document ([`identity_document`]), EC2.
//! - [`live`]: the in-memory view, which mirrors the store and adds what
//!   heartbeats bring.
//! - [`lifecycle`]: the node state machine, and the one place that applies
//!   a transition.
//! - [`liveness`]: silence and the EC2 sweep.
//! - [`views`]: what the admin API reads back.
//! - [`clusters`] and [`removal`]: cluster create, scale and tokens; node
//!   and cluster removal. [`drain`]: an operator's drain and undrain. [`lifetimes`]: clusters removed when their
//!   lifetime ends, and extended.
//! - [`tokens`]: a cluster's tokens listed, capped and revoked, and the
//!   bring-your-own machines `node rm` banned.
//! - [`replicas`]: beside other coordinators of a shared store: the rows
//!   they wrote taken in, and the nodes they heard.
//! - [`strays`]: what this coordinator launched or made but does not
//!   track (a launch or removal cut short): adopted, terminated, deleted,
//!   and unfinished launch jobs resumed.
//!
//! Secrets are 256-bit random values ([`crate::secrets`]); only their
//! SHA-256 is kept, and join tokens are compared in constant time. A
//! cluster's join token can be rotated and given an expiry
//! ([`Registry::rotate_token`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::{ErrorCode, NodeState, ValidationError};

use crate::config::Trust;
use crate::dns::Zone;
use crate::ec2::{Ec2Error, InstanceLookup};
use crate::launcher::{ClusterLaunch, LaunchError, Launcher};
use crate::store::{rfc3339_ms, Cluster, Store, StoreError};

mod admit;
mod claim;
mod clusters;
mod drain;
pub mod ec2_view;
mod heartbeat;
pub mod identity_document;
pub mod lifecycle;
mod lifetimes;
mod live;
mod liveness;
mod register;
mod removal;
mod replicas;
pub mod strays;
pub mod tokens;
mod views;

pub use claim::NodeInside;

use ec2_view::Ec2Account;
use live::Live;

/// Why a request was refused. Each variant has one stable error code
/// ([`RegistryError::code`]), which decides its HTTP status.
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
        source: identity_document::IdentityError,
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
    /// A register for the instance of a live node proves nothing more
    /// than a join token (see [`Registry::check_not_taken_over`]).
    #[error(
        "instance {instance_id} is node {node} of cluster {cluster}, heard {heard_secs_ago}s ago; \
         a register with a join token is accepted once the node has been silent for {grace_secs}s, \
         or at once with proof it is that instance (its signed identity document, or its source with --verify-source)"
    )]
    NodeLive {
        /// The instance.
        instance_id: String,
        /// Its cluster.
        cluster: String,
        /// Its node.
        node: String,
        /// When its credential was last heard.
        heard_secs_ago: u64,
        /// The grace.
        grace_secs: u64,
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
    /// EC2 cannot be trusted now (another account, or not known yet), so
    /// nothing is launched, swept or removed.
    #[error("{0}")]
    Ec2Untrusted(String),
    /// Another request changed or took what this one was decided from;
    /// nothing was written.
    #[error("{0}")]
    Conflict(String),
}

impl From<StoreError> for RegistryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::ClusterExists(name) => RegistryError::ClusterExists(name),
            error @ StoreError::TokenSpent(_) => RegistryError::Unauthorized(error.to_string()),
            error @ (StoreError::Changed { .. } | StoreError::Taken(_)) => {
                RegistryError::Conflict(error.to_string())
            }
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
                | RegistryError::NodeLive { .. }
        )
    }

    /// The stable code scripts may match on; it decides the HTTP status.
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistryError::Invalid(_) => ErrorCode::InvalidRequest,
            RegistryError::Unauthorized(_) => ErrorCode::Unauthorized,
            RegistryError::CredentialMismatch { .. } => ErrorCode::CredentialMismatch,
            RegistryError::InstanceNotFound { .. } => ErrorCode::InstanceNotFound,
            RegistryError::InstanceNotRunning { .. } => ErrorCode::InstanceNotRunning,
            RegistryError::ClusterTagMismatch { .. } => ErrorCode::ClusterTagMismatch,
            RegistryError::IdentityUnproven { .. } => ErrorCode::IdentityUnproven,
            RegistryError::SourceMismatch { .. } => ErrorCode::SourceMismatch,
            RegistryError::AddressMismatch { .. } => ErrorCode::AddressMismatch,
            RegistryError::InstanceInOtherCluster { .. } => ErrorCode::InstanceInOtherCluster,
            RegistryError::NodeTerminated { .. } => ErrorCode::NodeTerminated,
            RegistryError::ClusterExists(_) => ErrorCode::ClusterExists,
            RegistryError::ClusterNotActive { .. } => ErrorCode::ClusterNotActive,
            RegistryError::NameTaken { .. } => ErrorCode::NameTaken,
            RegistryError::NodeLive { .. } => ErrorCode::NodeLive,
            RegistryError::Launch(error) if error.is_bad_request() => ErrorCode::LaunchRefused,
            RegistryError::Launch(_) => ErrorCode::LaunchFailed,
            RegistryError::NotFound(_) => ErrorCode::NotFound,
            RegistryError::Ec2(_) => ErrorCode::Ec2Unavailable,
            RegistryError::Store(error) if error.is_unavailable() => ErrorCode::StoreUnavailable,
            RegistryError::Store(StoreError::NotHere(_)) => ErrorCode::Conflict,
            RegistryError::Store(_) => ErrorCode::Internal,
            RegistryError::Agent(_) => ErrorCode::AgentUnavailable,
            RegistryError::Ec2Untrusted(_) => ErrorCode::Ec2Untrusted,
            RegistryError::Conflict(_) => ErrorCode::Conflict,
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
    /// Regions' answers a sweep did not believe (see [`ec2_view`]).
    pub untrusted_reads: AtomicU64,
    /// Stray instances adopted as nodes (see [`strays`]).
    pub strays_adopted: AtomicU64,
    /// Stray instances terminated.
    pub strays_terminated: AtomicU64,
    /// Leftover security groups and key pairs deleted.
    pub leftovers_deleted: AtomicU64,
    /// Refusals by endpoint (`register`, `heartbeat`) and error code.
    pub refusals: Mutex<BTreeMap<(&'static str, ErrorCode), u64>>,
    /// Security events by error code.
    pub security_events: Mutex<BTreeMap<ErrorCode, u64>>,
    /// State changes by from (none for a node's first) and to.
    pub transitions: Mutex<BTreeMap<(Option<NodeState>, NodeState), u64>>,
}

impl Counters {
    fn refused(&self, endpoint: &'static str, error: &RegistryError) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((endpoint, error.code()))
            .or_default() += 1;
        if error.is_security_event() {
            *self
                .security_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(error.code())
                .or_default() += 1;
        }
    }

    /// Counts a node moving from `from` to `to`; a node that stays where
    /// it was is no transition.
    pub(crate) fn transitioned(&self, from: Option<NodeState>, to: NodeState) {
        if from != Some(to) {
            *self
                .transitions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((from, to))
                .or_default() += 1;
        }
    }
}

/// What one sweep saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    /// Instances EC2 returned.
    pub seen: usize,
    /// Regions whose read failed, or was not believed.
    pub failed_regions: usize,
    /// What was done with the strays.
    pub strays: strays::StrayReport,
}

/// The registry. Shared by the API handlers.
#[derive(Debug)]
pub struct Registry {
    store: Arc<Store>,
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
    /// Whether EC2 answers for the coordinator's account ([`ec2_view`]).
    account: std::sync::RwLock<Ec2Account>,
    /// This coordinator's name among the replicas of a shared store
    /// ([`replicas`]); `None` alone on its store.
    replica: Option<String>,
    /// Since when the nodes heard here could not be published to the
    /// store, while they could not ([`replicas`]).
    heard_unpublished: std::sync::Mutex<Option<std::time::Instant>>,
    /// Counters for `/metrics`.
    pub counters: Counters,
}

fn show_ip(ip: Option<impl std::fmt::Display>) -> String {
    ip.map_or_else(|| "none".to_owned(), |ip| ip.to_string())
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

impl Registry {
    /// Loads every node from the store into memory and publishes DNS.
    pub fn new(
        store: impl Into<Arc<Store>>,
        ec2: Arc<dyn InstanceLookup>,
        zone: Arc<Zone>,
        zone_name: String,
        timing: Timing,
    ) -> Result<Registry, RegistryError> {
        let store = store.into();
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
            account: std::sync::RwLock::new(Ec2Account::Unchecked),
            replica: None,
            heard_unpublished: std::sync::Mutex::new(None),
            counters: Counters::default(),
        })
    }

    /// Sets the source checks and address rules (default: none).
    pub fn with_trust(mut self, trust: Trust) -> Registry {
        self.trust = trust;
        self
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

    /// Logs and counts a refusal, then hands it back.
    fn refuse(
        &self,
        operation: &'static str,
        instance_id: &str,
        error: RegistryError,
        source: Option<IpAddr>,
    ) -> RegistryError {
        self.counters.refused(operation, &error);
        let source = source.map(|s| s.to_string()).unwrap_or_default();
        if error.is_security_event() {
            tracing::warn!(
                target: "muster::security",
                operation,
                instance_id,
                %source,
                code = %error.code(),
                %error,
                "security event: agent request refused"
            );
        } else {
            tracing::warn!(operation, instance_id, %source, code = %error.code(), %error, "agent request refused");
        }
        error
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

    /// Node counts by cluster and state, for `/metrics`: every state of
    /// every cluster that has a node in memory, zeros included.
    pub fn nodes_by_cluster_state(&self) -> BTreeMap<(Arc<str>, NodeState), u64> {
        let mut by_cluster: std::collections::HashMap<Arc<str>, [u64; NodeState::ALL.len()]> =
            std::collections::HashMap::new();
        for node in self.live().nodes.values() {
            let counts = by_cluster.entry(node.cluster.clone()).or_default();
            if let Some(i) = NodeState::ALL.iter().position(|s| *s == node.state) {
                counts[i] += 1;
            }
        }
        by_cluster
            .into_iter()
            .flat_map(|(cluster, counts)| {
                NodeState::ALL
                    .iter()
                    .zip(counts)
                    .map(move |(state, n)| ((cluster.clone(), *state), n))
            })
            .collect()
    }

    /// Nodes whose latest heartbeat carried each of EC2's warnings, every
    /// kind present (zero where none has it).
    pub fn nodes_by_notice(&self) -> BTreeMap<&'static str, u64> {
        let mut counts: BTreeMap<&'static str, u64> = muster_proto::NoticeKind::ALL
            .iter()
            .map(|k| (k.as_str(), 0))
            .collect();
        for node in self.live().nodes.values() {
            for notice in node.report.iter().flat_map(|r| &r.notices) {
                *counts.entry(notice.kind.as_str()).or_default() += 1;
            }
        }
        counts
    }

    /// Writes an online, consistent copy of the store to `path` (see
    /// [`Store::backup_to`]).
    pub fn backup_store(&self, path: &std::path::Path) -> Result<(), RegistryError> {
        Ok(self.store.backup_to(path)?)
    }

    /// The store's kind: `sqlite` or `postgres`.
    pub fn store_kind(&self) -> &'static str {
        if self.store.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// The zone's name, e.g. `muster.internal`.
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// The DNS zone this registry publishes to.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }
}

#[cfg(test)]
mod tests;
