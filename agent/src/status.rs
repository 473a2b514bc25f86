//! The status document, and the local socket the running agent serves it on.
//!
//! The agent keeps a [`Live`] view of itself, updated as it registers and
//! heartbeats. Besides the last contact it tracks since when the agent has
//! been cut off from the coordinator: the first failed exchange (no answer,
//! or a 5xx) after the last one the coordinator answered. The document shows
//! it as `cut_off_since` (RFC 3339) and `cut_off_secs`, both null while the
//! coordinator answers. It listens on a unix socket (default
//! `/run/muster-agent/agent.sock`, mode 0600): every connection gets one
//! JSON document, [`AgentStatus`], and is closed; nothing is read from the
//! client.
//!
//! The DNS check behind `dns_resolves` runs in the agent, each time the
//! document is asked for, so it uses the agent's `--dns-server` (or the
//! system resolver) and sees what the node's neighbours see right now. It
//! asks for the A records of `dns_name` and says whether they hold the
//! node's public IPv4; a node with no public IPv4 is checked under
//! `internal` (private addresses are answered only there), by
//! `internal_dns_name` and its private IPv4; an IPv6-only node, by the
//! AAAA records of `dns_name` and its IPv6 address.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, Resolver, TokioResolver};
use muster_proto::{CheckReport, Ec2Notice, NodeState, NodeView};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::imds::Addresses;
use crate::state::StoredState;

/// How long one DNS query may take.
const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the whole DNS check may take.
const DNS_CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client gets to take its document.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the agent is doing, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Reading who the instance is.
    Starting,
    /// Registering with the coordinator, no failure yet.
    Registering,
    /// Registered, the last exchange with the coordinator went fine, and it
    /// reports the node deployed.
    Deployed,
    /// Something is wrong: see `last_error`.
    Degraded,
}

impl AgentState {
    /// The lowercase name used in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Registering => "registering",
            AgentState::Deployed => "deployed",
            AgentState::Degraded => "degraded",
        }
    }
}

/// The document `muster-agent status` reads from the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Always true: the agent answered. (The document printed when no
    /// agent answers has `false`.)
    pub running: bool,
    /// How the agent is doing.
    pub state: AgentState,
    /// The node's state as the coordinator last reported it.
    pub node_state: Option<NodeState>,
    /// The node's name.
    pub node: Option<String>,
    /// The cluster.
    pub cluster: String,
    /// The node's public DNS name.
    pub dns_name: Option<String>,
    /// The node's internal DNS name.
    pub internal_dns_name: Option<String>,
    /// The node id: the EC2 instance id, or `m-` and the machine id for a
    /// bring-your-own node.
    pub instance_id: Option<String>,
    /// Whether this is a bring-your-own node (named from the machine, not
    /// from IMDS).
    #[serde(default)]
    pub byon: bool,
    /// The current private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// The current public IPv4.
    pub public_ipv4: Option<Ipv4Addr>,
    /// The current IPv6 address.
    #[serde(default)]
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// The coordinator.
    pub coordinator_url: String,
    /// When the coordinator last answered a register or heartbeat, RFC 3339.
    pub last_contact_at: Option<String>,
    /// Since when the agent has been cut off from the coordinator (no
    /// answer, or a 5xx, since then), RFC 3339; null while it answers.
    #[serde(default)]
    pub cut_off_since: Option<String>,
    /// How long the agent has been cut off from the coordinator, in whole
    /// seconds; null while it answers.
    #[serde(default)]
    pub cut_off_secs: Option<u64>,
    /// What went wrong last, if the agent is not fine now.
    pub last_error: Option<String>,
    /// Whether `dns_name` resolves to the node's address; null if it could
    /// not be checked.
    pub dns_resolves: Option<bool>,
    /// The A records `dns_name` resolved to.
    #[serde(default)]
    pub dns_answer: Vec<IpAddr>,
    /// Why the DNS check did not say yes, if it did not.
    #[serde(default)]
    pub dns_error: Option<String>,
    /// The agent's version.
    #[serde(default)]
    pub agent_version: String,
    /// The node's health checks, each with its last output.
    #[serde(default)]
    pub checks: Vec<CheckReport>,
    /// The warnings EC2 gives the instance.
    #[serde(default)]
    pub notices: Vec<Ec2Notice>,
    /// Why the node is leaving, if it is.
    #[serde(default)]
    pub leaving: Option<String>,
}

impl AgentStatus {
    /// Healthy: deployed, and the last exchange with the coordinator went
    /// fine.
    pub fn is_healthy(&self) -> bool {
        self.state == AgentState::Deployed && self.last_error.is_none()
    }
}

/// The agent's view of itself, shared by the daemon and the socket.
#[derive(Debug, Clone)]
pub struct Live {
    inner: Arc<Mutex<LiveInner>>,
}

#[derive(Debug)]
struct LiveInner {
    state: AgentState,
    node_state: Option<NodeState>,
    node: Option<String>,
    cluster: String,
    dns_name: Option<String>,
    internal_dns_name: Option<String>,
    instance_id: Option<String>,
    byon: bool,
    addresses: Option<Addresses>,
    coordinator_url: String,
    last_contact: Option<SystemTime>,
    /// When the current run of failed exchanges with the coordinator began:
    /// wall clock for the document, monotonic clock for the length.
    cut_off: Option<(SystemTime, Instant)>,
    last_error: Option<String>,
    /// Set while the latest credential could not be written to disk.
    unsaved: Option<String>,
    checks: Vec<CheckReport>,
    notices: Vec<Ec2Notice>,
    leaving: Option<String>,
}

impl Live {
    /// A fresh view: starting, nothing known but the settings.
    pub fn new(cluster: &str, coordinator_url: &str) -> Self {
        Live {
            inner: Arc::new(Mutex::new(LiveInner {
                state: AgentState::Starting,
                node_state: None,
                node: None,
                cluster: cluster.to_owned(),
                dns_name: None,
                internal_dns_name: None,
                instance_id: None,
                byon: false,
                addresses: None,
                coordinator_url: coordinator_url.to_owned(),
                last_contact: None,
                cut_off: None,
                last_error: None,
                unsaved: None,
                checks: Vec::new(),
                notices: Vec::new(),
                leaving: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node is known: its id, whether it is a bring-your-own node, and
    /// its addresses.
    pub fn set_identity(&self, node_id: &str, byon: bool, addresses: Addresses) {
        let mut inner = self.lock();
        inner.instance_id = Some(node_id.to_owned());
        inner.byon = byon;
        inner.addresses = Some(addresses);
    }

    /// The addresses changed.
    pub fn set_addresses(&self, addresses: Addresses) {
        self.lock().addresses = Some(addresses);
    }

    /// The state file names the node, until the coordinator says otherwise.
    pub fn remember(&self, stored: &StoredState) {
        let mut inner = self.lock();
        inner.node = Some(stored.node.clone());
        inner.dns_name = Some(stored.dns_name.clone());
        inner.internal_dns_name = Some(stored.internal_dns_name.clone());
    }

    /// A register attempt is starting.
    pub fn registering(&self) {
        let mut inner = self.lock();
        if inner.state != AgentState::Degraded {
            inner.state = AgentState::Registering;
        }
    }

    /// The coordinator accepted the register.
    pub fn registered(&self, node: &NodeView) {
        {
            let mut inner = self.lock();
            inner.node = Some(node.name.clone());
            inner.dns_name = Some(node.dns_name.clone());
            inner.internal_dns_name = Some(node.internal_dns_name.clone());
        }
        self.contact(node.state);
    }

    /// The coordinator answered fine and reports the node in `node_state`.
    pub fn contact(&self, node_state: NodeState) {
        let mut inner = self.lock();
        inner.last_contact = Some(SystemTime::now());
        inner.cut_off = None;
        inner.node_state = Some(node_state);
        inner.last_error = None;
        inner.state = if node_state == NodeState::Deployed {
            AgentState::Deployed
        } else {
            AgentState::Degraded
        };
    }

    /// Something went wrong; `error` says what.
    pub fn failed(&self, error: String) {
        let mut inner = self.lock();
        inner.state = AgentState::Degraded;
        inner.last_error = Some(error);
    }

    /// An exchange with the coordinator failed without an answer from it
    /// (or with a 5xx); `error` says what. Starts the cut-off clock unless
    /// it is already running.
    pub fn unreachable(&self, error: String) {
        let mut inner = self.lock();
        inner.state = AgentState::Degraded;
        inner.last_error = Some(error);
        inner
            .cut_off
            .get_or_insert_with(|| (SystemTime::now(), Instant::now()));
    }

    /// The coordinator answered, but refused; `error` says what. It is
    /// reachable, so the cut-off clock stops.
    pub fn refused(&self, error: String) {
        let mut inner = self.lock();
        inner.state = AgentState::Degraded;
        inner.last_error = Some(error);
        inner.cut_off = None;
    }

    /// What the latest heartbeat says of the node: its checks, EC2's
    /// warnings, and why it is leaving, if it is.
    pub fn set_report(&self, checks: &[CheckReport], notices: &[Ec2Notice], leaving: Option<&str>) {
        let mut inner = self.lock();
        inner.checks = checks.to_vec();
        inner.notices = notices.to_vec();
        inner.leaving = leaving.map(str::to_owned);
    }

    /// The state file could not be written (`Some`), or was written (`None`).
    pub fn set_unsaved(&self, error: Option<String>) {
        self.lock().unsaved = error;
    }

    /// The document as of now, without the DNS check.
    pub fn snapshot(&self) -> AgentStatus {
        let inner = self.lock();
        let mut state = inner.state;
        let mut last_error = inner.last_error.clone();
        if let Some(unsaved) = &inner.unsaved {
            state = AgentState::Degraded;
            last_error.get_or_insert_with(|| unsaved.clone());
        }
        AgentStatus {
            running: true,
            state,
            node_state: inner.node_state,
            node: inner.node.clone(),
            cluster: inner.cluster.clone(),
            dns_name: inner.dns_name.clone(),
            internal_dns_name: inner.internal_dns_name.clone(),
            instance_id: inner.instance_id.clone(),
            byon: inner.byon,
            private_ipv4: inner.addresses.and_then(|a| a.private_ipv4),
            public_ipv4: inner.addresses.and_then(|a| a.public_ipv4),
            ipv6: inner.addresses.and_then(|a| a.ipv6),
            coordinator_url: inner.coordinator_url.clone(),
            last_contact_at: inner
                .last_contact
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            cut_off_since: inner
                .cut_off
                .map(|(t, _)| humantime::format_rfc3339_seconds(t).to_string()),
            cut_off_secs: inner.cut_off.map(|(_, t)| t.elapsed().as_secs()),
            last_error,
            dns_resolves: None,
            dns_answer: Vec::new(),
            dns_error: None,
            agent_version: crate::AGENT_VERSION.to_owned(),
            checks: inner.checks.clone(),
            notices: inner.notices.clone(),
            leaving: inner.leaving.clone(),
        }
    }
}

/// Failures setting up the status socket.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The socket's directory could not be created.
    #[error("cannot create the socket directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another agent answers on the socket.
    #[error("another muster-agent is already listening on {path}")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket could not be removed.
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The socket could not be restricted to its owner.
    #[error("cannot restrict {path} to its owner")]
    Restrict {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The socket file; removed when dropped.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.path) {
            Ok(()) => debug!(path = %self.path.display(), "removed the status socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot remove the status socket")
            }
        }
    }
}

/// Listens on `path`: creates its directory if needed, replaces a stale
/// socket (one nobody answers on), and restricts the socket to its owner.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), StatusError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|source| StatusError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    if let Ok(meta) = fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(StatusError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StatusError::InUse {
                path: path.to_path_buf(),
            });
        }
        fs::remove_file(path).map_err(|source| StatusError::RemoveStale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| StatusError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SocketFile {
        path: path.to_path_buf(),
    };
    fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(|source| {
        StatusError::Restrict {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok((listener, file))
}

/// Answers every connection with the current document, for ever.
///
/// A failed accept (e.g. out of file descriptors) is retried with backoff
/// ceilings of 0.1 s, 0.2 s, 0.4 s, … capped at 5 s, each wait drawn
/// between zero and its ceiling; the schedule starts over after an accept
/// succeeds.
pub async fn serve(listener: UnixListener, live: Live, dns_server: Option<SocketAddr>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
        .expect("constant bounds are valid");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff.reset();
                let live = live.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &live, dns_server).await {
                        debug!(error = %e, "status client went away");
                    }
                });
            }
            Err(e) => {
                let wait = backoff.next_delay();
                warn!(error = %e, ?wait, "cannot accept a status connection");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Builds the document, DNS check included.
pub async fn document(live: &Live, dns_server: Option<SocketAddr>) -> AgentStatus {
    let mut status = live.snapshot();
    // The address its public name answers first; a node without a public
    // one is checked under `internal`; an IPv6-only node, by its AAAA.
    let checked = match (status.public_ipv4, status.private_ipv4, status.ipv6) {
        (Some(public), _, _) => status.dns_name.clone().map(|n| (n, IpAddr::V4(public))),
        (None, Some(private), _) => status
            .internal_dns_name
            .clone()
            .map(|n| (n, IpAddr::V4(private))),
        (None, None, Some(ipv6)) => status.dns_name.clone().map(|n| (n, IpAddr::V6(ipv6))),
        (None, None, None) => None,
    };
    if let Some((name, expected)) = checked {
        let check = check_dns(&name, expected, dns_server).await;
        status.dns_resolves = check.resolves;
        status.dns_answer = check.answer;
        status.dns_error = check.error;
    }
    status
}

async fn answer(
    mut stream: UnixStream,
    live: &Live,
    dns_server: Option<SocketAddr>,
) -> io::Result<()> {
    let status = document(live, dns_server).await;
    let mut json = serde_json::to_vec_pretty(&status).map_err(io::Error::other)?;
    json.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&json).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client did not read"))?
}

/// What the DNS check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCheck {
    /// Whether the answer holds the expected address; `None` if the check
    /// could not be made (no resolver, no answer in time).
    pub resolves: Option<bool>,
    /// The addresses in the answer, sorted.
    pub answer: Vec<IpAddr>,
    /// Why the check did not say yes.
    pub error: Option<String>,
}

/// Resolves the A records of `name` (the AAAA records, for an IPv6
/// `expected`) with `server` (or the system resolver) and checks that they
/// hold `expected`. Nothing is cached between checks.
pub async fn check_dns(name: &str, expected: IpAddr, server: Option<SocketAddr>) -> DnsCheck {
    let unknown = |error: String| DnsCheck {
        resolves: None,
        answer: Vec::new(),
        error: Some(error),
    };
    let resolver = match resolver(server) {
        Ok(resolver) => resolver,
        Err(e) => return unknown(format!("cannot set up a resolver: {e}")),
    };
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let kind = if expected.is_ipv6() { "AAAA" } else { "A" };
    let lookup = async {
        match expected {
            IpAddr::V4(_) => resolver
                .ipv4_lookup(fqdn)
                .await
                .map(|l| l.iter().map(|a| IpAddr::V4(a.0)).collect::<Vec<_>>()),
            IpAddr::V6(_) => resolver
                .ipv6_lookup(fqdn)
                .await
                .map(|l| l.iter().map(|a| IpAddr::V6(a.0)).collect::<Vec<_>>()),
        }
    };
    let lookup = match tokio::time::timeout(DNS_CHECK_TIMEOUT, lookup).await {
        Ok(lookup) => lookup,
        Err(_) => {
            return unknown(format!(
                "no DNS answer for {name} within {DNS_CHECK_TIMEOUT:?}"
            ))
        }
    };
    match lookup {
        Ok(mut answer) => {
            answer.sort();
            answer.dedup();
            let resolves = answer.contains(&expected);
            let error = (!resolves).then(|| format!("{name} does not resolve to {expected}"));
            DnsCheck {
                resolves: Some(resolves),
                answer,
                error,
            }
        }
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => DnsCheck {
            resolves: Some(false),
            answer: Vec::new(),
            error: Some(format!("{name} has no {kind} record")),
        },
        Err(e) => unknown(format!("cannot resolve {name}: {e}")),
    }
}

fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, ResolveError> {
    let mut builder = match server {
        Some(addr) => {
            let mut config = ResolverConfig::new();
            config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            Resolver::builder_with_config(config, TokioConnectionProvider::default())
        }
        None => Resolver::builder_tokio()?,
    };
    let options = builder.options_mut();
    options.timeout = DNS_QUERY_TIMEOUT;
    options.attempts = 2;
    if server.is_some() {
        // The named server is the one to ask, not /etc/hosts.
        options.use_hosts_file = ResolveHosts::Never;
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn addresses() -> Addresses {
        Addresses {
            private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
            public_ipv4: Some(Ipv4Addr::new(54, 1, 2, 3)),
            ipv6: None,
        }
    }

    /// The view moves through the states as the daemon reports progress,
    /// and an unsaved credential keeps it degraded.
    #[test]
    fn live_states() {
        let live = Live::new("web", "https://c.example.com");
        assert_eq!(live.snapshot().state, AgentState::Starting);
        live.set_identity("i-0123456789abcdef0", false, addresses());
        live.registering();
        assert_eq!(live.snapshot().state, AgentState::Registering);
        live.failed("cannot reach the coordinator".into());
        live.registering();
        let status = live.snapshot();
        assert_eq!(status.state, AgentState::Degraded);
        assert!(!status.is_healthy());
        live.contact(NodeState::Deployed);
        let status = live.snapshot();
        assert_eq!(status.state, AgentState::Deployed);
        assert!(status.is_healthy());
        assert!(status.last_contact_at.is_some());
        assert_eq!(status.public_ipv4, Some(Ipv4Addr::new(54, 1, 2, 3)));
        live.set_unsaved(Some("cannot write state.json".into()));
        assert_eq!(live.snapshot().state, AgentState::Degraded);
        live.set_unsaved(None);
        live.contact(NodeState::Unreachable);
        assert_eq!(live.snapshot().state, AgentState::Degraded);
    }

    /// The cut-off clock starts at the first failure without an answer,
    /// keeps its start through further ones, and stops as soon as the
    /// coordinator answers, even with a refusal.
    #[test]
    fn cut_off_clock() {
        let live = Live::new("web", "https://c.example.com");
        let status = live.snapshot();
        assert_eq!((&status.cut_off_since, status.cut_off_secs), (&None, None));

        live.unreachable("cannot reach the coordinator".into());
        let first = live.snapshot();
        let since = first.cut_off_since.clone().expect("cut off");
        assert!(humantime::parse_rfc3339(&since).is_ok(), "{since}");
        assert_eq!(first.cut_off_secs, Some(0));
        assert_eq!(first.state, AgentState::Degraded);

        // Backdate the start: a later failure keeps it, and the length
        // counts from it.
        let start = SystemTime::now() - Duration::from_secs(90);
        live.lock().cut_off = Some((start, Instant::now() - Duration::from_secs(90)));
        live.unreachable("cannot reach the coordinator".into());
        let later = live.snapshot();
        assert_eq!(
            later.cut_off_since.as_deref(),
            Some(
                humantime::format_rfc3339_seconds(start)
                    .to_string()
                    .as_str()
            )
        );
        assert!(later.cut_off_secs >= Some(90), "{:?}", later.cut_off_secs);

        live.refused("the coordinator refused the register".into());
        let status = live.snapshot();
        assert_eq!((&status.cut_off_since, status.cut_off_secs), (&None, None));
        assert_eq!(status.state, AgentState::Degraded);

        live.unreachable("cannot reach the coordinator".into());
        assert!(live.snapshot().cut_off_since.is_some());
        live.contact(NodeState::Deployed);
        let status = live.snapshot();
        assert_eq!((&status.cut_off_since, status.cut_off_secs), (&None, None));
        assert!(status.is_healthy());
    }

    /// The document's JSON has the field names scripts rely on.
    #[test]
    fn document_field_names() {
        let live = Live::new("web", "https://c.example.com");
        live.set_identity("i-0123456789abcdef0", false, addresses());
        live.contact(NodeState::Deployed);
        let json = serde_json::to_value(live.snapshot()).unwrap();
        for field in [
            "running",
            "state",
            "node_state",
            "node",
            "cluster",
            "dns_name",
            "internal_dns_name",
            "instance_id",
            "private_ipv4",
            "public_ipv4",
            "coordinator_url",
            "last_contact_at",
            "cut_off_since",
            "cut_off_secs",
            "last_error",
            "dns_resolves",
            "dns_answer",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["state"], "deployed");
        assert_eq!(json["node_state"], "deployed");
        assert_eq!(json["private_ipv4"], "10.0.0.5");
        assert_eq!(json["cut_off_since"], serde_json::Value::Null);
        assert_eq!(json["cut_off_secs"], serde_json::Value::Null);
    }

    /// The socket is owner-only, answers with one document, replaces a stale
    /// socket, refuses to start twice, and goes away when dropped.
    #[tokio::test]
    async fn socket_serves_one_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("agent.sock");
        let live = Live::new("web", "https://c.example.com");
        let (listener, file) = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(bind(&path), Err(StatusError::InUse { .. })));
        let server = tokio::spawn(serve(listener, live, None));

        let path2 = path.clone();
        let text = tokio::task::spawn_blocking(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(&path2).unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .await
        .unwrap();
        let status: AgentStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(status.state, AgentState::Starting);
        assert_eq!(status.dns_resolves, None);

        server.abort();
        let _ = server.await;
        // The listener is gone but the file stays: a stale socket.
        let (_listener, file2) = bind(&path).unwrap();
        std::mem::forget(file);
        drop(file2);
        assert!(!path.exists());
    }

    /// Something other than a socket at the path is left alone.
    #[tokio::test]
    async fn refuses_to_replace_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        fs::write(&path, "keep me").unwrap();
        assert!(matches!(bind(&path), Err(StatusError::NotASocket { .. })));
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
    }

    /// A DNS server that does not answer gives "unknown", not "no".
    #[tokio::test]
    async fn silent_dns_server_is_unknown() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let check = check_dns(
            "n1.web.muster.internal",
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
            Some(addr),
        )
        .await;
        assert_eq!(check.resolves, None);
        assert!(check.error.is_some());
    }
}
