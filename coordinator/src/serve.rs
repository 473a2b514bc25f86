//! `muster-coordinator serve`: the wiring. It opens what the coordinator
//! keeps, starts its loops and servers, and stops them on shutdown; the
//! work itself lives in the modules it wires.
//!
//! Start-up goes: the open files limit, raised ([`crate::fdlimit`]); the
//! data dir; the store, and on a shared store the CA and DNS owner id
//! shared through it ([`crate::credentials`]); TLS ([`crate::pki`]) and
//! the tokens; who leads ([`crate::leader`]: this coordinator alone on
//! SQLite; on a shared store, a replica that stands by until it takes the
//! lease); EC2 ([`crate::ec2`]) and the account it answers for; the agent
//! to serve and the launcher; the registry and its loops (publisher,
//! liveness, sweep, pruning, cluster lifetimes, and on a shared store the
//! others' writes taken in ([`crate::replica`]) and the nodes heard here
//! published); the DNS provider and its loops, if one is configured; the
//! embedded DNS server; the HTTPS API behind its connection guards
//! ([`crate::api::connections`]). systemd hears READY once the API
//! listens, and STOPPING when shutdown begins; in-flight requests then
//! get [`DRAIN_DEADLINE`], and a leader then releases its lease.
//!
//! Every replica serves from the start; what must run once (liveness,
//! the sweep, pruning, cluster lifetimes, removals, the DNS provider's
//! loop) runs only while [`Leadership::is_current`]. A leader whose lease
//! was taken over stops with [`ServeError::LeaseLost`].

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::api;
use crate::api::connections::{ConnectionLimits, Connections};
use crate::config::{self, Settings};
use crate::credentials::{Credentials, CredentialsError, Shared};
use crate::dns::provider::DnsProvider;
use crate::dns::reconcile::{watch_last_change, Reconciler};
use crate::dns::rfc2136::{Rfc2136, Rfc2136Error};
use crate::dns::route53::{Route53, Route53Error};
use crate::dns::status::StatusBoard;
use crate::dns::{self, DnsError, Zone};
use crate::ec2::{CachedInstances, Ec2Clients, Ec2Instances, InstanceLookup};
use crate::fdlimit::{self, FdLimit};
use crate::launcher::agent_dist::{AgentDist, AgentDistError};
use crate::launcher::{userdata, Launcher};
use crate::leader::{Leadership, LeaseLost};
use crate::pki::{self, PkiError};
use crate::registry::ec2_view::ACCOUNT_FIRST_WAIT;
use crate::registry::{LaunchContext, Registry, RegistryError, Timing};
use crate::store::{Store, StoreError};

mod loops;

use loops::{
    account_loop, expiry_loop, heard_loop, liveness_loop, prune_loop, start_leading, sweep_loop,
    Removals,
};

/// How long in-flight requests get to finish on shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Errors starting or running the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data dir could not be made.
    #[error("creating the data dir {path}: {source}")]
    DataDir {
        /// The dir.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA for launched nodes' user data could not be read.
    #[error("reading the CA {path}: {source}")]
    Ca {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent binary to serve could not be read.
    #[error(transparent)]
    AgentDist(#[from] AgentDistError),
    /// TLS or the admin token could not be set up.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry could not load.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// DNS could not start.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// The DNS owner id could not be read or made.
    #[error(transparent)]
    DnsOwner(#[from] dns::ownership::OwnerIdError),
    /// The RFC 2136 provider could not be set up.
    #[error(transparent)]
    Rfc2136(#[from] Rfc2136Error),
    /// The Route53 provider could not be set up.
    #[error(transparent)]
    Route53(#[from] Route53Error),
    /// A node's address is inside `--trusted-proxies`.
    #[error(
        "--trusted-proxies {} holds {}, the address of node {} of cluster {}: a node there could \
         forge X-Forwarded-For and speak from any address; keep the proxies' range apart from \
         the nodes' networks",
        .0.proxies, .0.address, .0.node, .0.cluster
    )]
    TrustedProxyOverlap(crate::registry::NodeInside),
    /// Another coordinator took over the lease: this one steps down.
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
    /// The CA, the tokens or the DNS owner id could not be read, made or
    /// shared.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The client passing admin changes on to the leader could not be made.
    #[error("the client that passes admin changes on to the leader: {0}")]
    LeaderClient(reqwest::Error),
    /// The thread taking in the other coordinators' writes could not start.
    #[error("starting the thread that takes in the other coordinators' writes: {0}")]
    Follow(std::io::Error),
    /// The API could not bind or failed.
    #[error("serving the API on {addr}: {source}")]
    Api {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Installs ring as the process-wide rustls provider. Both binaries and the
/// tests call this once at start; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the coordinator until `shutdown` completes, then drains.
pub async fn serve(
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    install_crypto_provider();
    tokio::pin!(shutdown);
    let fds = fdlimit::raise_nofile();
    make_data_dir(&settings.data_dir)?;
    let store = Arc::new(Store::open_at(&settings.store, settings.store_connections)?);
    let shared = share_credentials(&settings, &store)?;
    let (files, tls) = tls_files(&settings)?;
    let credentials = Arc::new(Credentials::open(&settings.data_dir, shared)?);
    let certificates = certificate_expiries(&files);
    tracing::info!(
        admin_token = %settings.data_dir.join(pki::ADMIN_TOKEN_FILE).display(),
        ca = ?files.ca.as_ref().map(|p| p.display().to_string()),
        "credentials ready"
    );
    log_identity_check(&settings);
    let agent = agent_dist(&settings)?;
    let zone = Arc::new(Zone::new(&settings.zone, settings.dns_ttl)?);
    let leadership = Arc::new(leadership(&settings)?);
    let (registry, account_unknown) = open_registry(
        &settings,
        store.clone(),
        &files,
        agent.clone(),
        zone.clone(),
        leadership.name(),
    )
    .await?;
    if let Some(overlap) = registry.node_inside(&settings.trust.trusted_proxies)? {
        return Err(ServeError::TrustedProxyOverlap(overlap));
    }
    // On a shared store the console's sessions are kept there, so that
    // any replica serves them.
    let sessions = Arc::new(api::console::Sessions::new(
        store.is_postgres().then(|| store.clone()),
    ));
    // On a shared store, the rows the others write are taken in, and the
    // tokens they change read again.
    let _follower = match leadership.name() {
        Some(_) => Some(
            crate::replica::Follower::start(
                registry.clone(),
                tokio::runtime::Handle::current(),
                reload_tokens(credentials.clone()),
            )
            .map_err(ServeError::Follow)?,
        ),
        None => None,
    };
    let removals = Arc::new(Removals::default());
    let connections = Connections::new(connection_limits(&settings, fds));
    let fleet = Arc::new(api::fleet::FleetRecorder::default());
    let loops = [
        tokio::spawn(registry.clone().run_publisher()),
        tokio::spawn(liveness_loop(
            registry.clone(),
            leadership.clone(),
            settings.grace,
        )),
        tokio::spawn(sweep_loop(
            registry.clone(),
            leadership.clone(),
            settings.sweep_interval,
        )),
        tokio::spawn(prune_loop(
            registry.clone(),
            leadership.clone(),
            settings.retention,
        )),
        tokio::spawn(expiry_loop(registry.clone(), leadership.clone())),
        tokio::spawn(heard_loop(registry.clone(), leadership.clone())),
        tokio::spawn(account_loop(
            registry.clone(),
            leadership.clone(),
            removals.clone(),
            account_unknown,
        )),
        tokio::spawn(forget_loop(connections.clone())),
        tokio::spawn(fleet.clone().run(registry.clone())),
    ];
    let dns_status = Arc::new(StatusBoard::default());
    let dns_loops = start_dns_provider(&settings, &zone, &dns_status, &leadership).await?;
    let dns_rate_limit = settings.limits.dns_rate_limit;
    let (mut dns_server, dns_addr) = dns::serve(zone, settings.dns_listen, dns_rate_limit).await?;
    tracing::info!(
        addr = %dns_addr,
        zone = %settings.zone,
        rate_limit = dns_rate_limit,
        "dns listening (udp, tcp)"
    );

    let app = api::router(api::AppState {
        registry: registry.clone(),
        credentials,
        leader_client: leader_client(&settings, &files)?,
        data_dir: Arc::new(settings.data_dir.clone()),
        trust: Arc::new(settings.trust.clone()),
        limiter: source_limiter(settings.trust.agent_rate_limit),
        agent,
        dns_status,
        connections: connections.clone(),
        sessions,
        fleet,
        started: std::time::SystemTime::now(),
        certificates: Arc::new(certificates),
        leadership: leadership.clone(),
    });
    let drain = api::connections::server::Drain::new();
    let shared_port = leadership.name().is_some();
    let (api_addr, mut api_task) = start_api(
        settings.listen,
        shared_port,
        tls,
        app,
        drain.clone(),
        connections,
    )
    .map_err(|source| ServeError::Api {
        addr: settings.listen,
        source,
    })?;
    tracing::info!(addr = %api_addr, public_url = %settings.public_url, "api listening (https)");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    // Leads at once alone on the store, or once it takes the lease; then,
    // fenced and with every node read afresh, it runs what must run once.
    // Renewals block on the database: on a task of their own, they never
    // hold up the shutdown.
    let mut hold = tokio::spawn({
        let (leadership, registry) = (leadership.clone(), registry.clone());
        async move {
            let on_lead = |fence| start_leading(registry, fence, removals);
            leadership.hold(on_lead).await
        }
    });
    let lost = tokio::select! {
        () = &mut shutdown => {
            tracing::info!("shutting down");
            hold.abort();
            None
        }
        Ok(lost) = &mut hold => {
            tracing::error!(error = %lost, "stepping down");
            Some(lost)
        }
        result = &mut api_task => return Err(api_stopped(settings.listen, result, "")),
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for task in loops.into_iter().chain(dns_loops) {
        task.abort();
    }
    drain.start();
    let _ = tokio::time::timeout(DRAIN_DEADLINE, api_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), dns_server.shutdown_gracefully()).await;
    if let Some(lost) = lost {
        return Err(lost.into());
    }
    leadership.release();
    tracing::info!("stopped");
    Ok(())
}

/// On a shared store, what the replicas share through it, as this one
/// will use it: the store key, the CA (unless the operator's certificate
/// is served) and the DNS owner id (with an external provider) in the
/// data dir. `None` alone on SQLite.
fn share_credentials(
    settings: &Settings,
    store: &Arc<Store>,
) -> Result<Option<Shared>, ServeError> {
    if !store.is_postgres() {
        return Ok(None);
    }
    let shared = Shared::open(store.clone(), &settings.store_key_file)?;
    if settings.tls.is_none() {
        shared.share_ca(&settings.data_dir)?;
    }
    if !matches!(settings.dns_provider, config::DnsProvider::Embedded) {
        shared.share_dns_owner(&settings.data_dir, settings.dns_owner_id.as_deref())?;
    }
    Ok(Some(shared))
}

/// What a replica does when the store's meta key `key` was written
/// (`None`: any may have been): reads the tokens again if it names one.
/// The console sessions a replaced token opened end with it (they record
/// its generation).
fn reload_tokens(credentials: Arc<Credentials>) -> impl Fn(Option<&str>) + Send + 'static {
    move |key| {
        if key.is_some_and(|key| !Credentials::is_token_slot(key)) {
            return;
        }
        match credentials.reload() {
            Ok(changed) => {
                if changed.admin {
                    tracing::info!("took the admin token another coordinator rotated");
                }
                if changed.viewer {
                    tracing::info!("took the viewer token another coordinator issued");
                }
            }
            Err(error) => tracing::warn!(%error, "could not read the tokens again"),
        }
    }
}

/// On a shared store, the client a standby passes admin changes on to the
/// leader with, trusting the CA the replicas share; `None` alone on
/// SQLite, or with the operator's certificate ([`api::forward`] says why).
fn leader_client(
    settings: &Settings,
    files: &pki::TlsFiles,
) -> Result<Option<reqwest::Client>, ServeError> {
    let (config::StoreLocation::Postgres(_), Some(roots)) = (&settings.store, &files.ca) else {
        return Ok(None);
    };
    let pem = std::fs::read(roots).map_err(|source| ServeError::Ca {
        path: roots.display().to_string(),
        source,
    })?;
    api::forward::leader_client(&pem)
        .map(Some)
        .map_err(ServeError::LeaderClient)
}

/// Who leads: the sole coordinator of a SQLite store, or one replica of
/// a shared store, standing by until it takes the lease.
fn leadership(settings: &Settings) -> Result<Leadership, ServeError> {
    match &settings.store {
        config::StoreLocation::Sqlite(_) => Ok(Leadership::sole()),
        config::StoreLocation::Postgres(url) => Ok(Leadership::replica(
            url,
            settings.lease,
            &settings.advertise_url,
            &settings.data_dir,
        )?),
    }
}

/// Makes the data dir, readable by its owner only.
fn make_data_dir(data_dir: &Path) -> Result<(), ServeError> {
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| ServeError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })
}

/// The operator's certificate, or the coordinator's own CA and server
/// certificate (made on first start), and the TLS config serving it.
fn tls_files(
    settings: &Settings,
) -> Result<(pki::TlsFiles, Arc<rustls::ServerConfig>), ServeError> {
    let files = match &settings.tls {
        Some((cert, key)) => pki::TlsFiles {
            ca: None,
            cert: cert.clone(),
            key: key.clone(),
        },
        None => pki::ensure_self_signed(&settings.data_dir, &settings.certificate_names())?,
    };
    let tls = pki::server_config(&files)?;
    Ok((files, tls))
}

/// When the CA (if the coordinator made it) and the server certificate
/// expire, for `/metrics`; one that cannot be read is logged and left out.
fn certificate_expiries(files: &pki::TlsFiles) -> Vec<(&'static str, i64)> {
    let which = files
        .ca
        .iter()
        .map(|ca| ("ca", ca))
        .chain([("server", &files.cert)]);
    which
        .filter_map(|(name, path)| match pki::certificate_expiry(path) {
            Ok(at) => Some((name, at)),
            Err(error) => {
                tracing::warn!(%error, "cannot tell when a certificate expires");
                None
            }
        })
        .collect()
}

/// Says whose signatures an EC2 register's identity document must carry,
/// or warns that the check is off.
fn log_identity_check(settings: &Settings) {
    match &settings.trust.identity_certs {
        Some(certs) => tracing::info!(
            certificates = certs.certificates().len(),
            added = ?certs.added().map(|p| p.display().to_string()),
            "ec2 registers must carry an identity document signed by aws"
        ),
        None => tracing::warn!(
            "INSECURE: --insecure-no-identity-document is set: ec2 registers need no signed \
             identity document, so any holder of a join token can claim any instance of its \
             cluster that EC2 knows"
        ),
    }
}

/// The agent binary (and package) served to booting nodes, if one is given.
fn agent_dist(settings: &Settings) -> Result<Option<Arc<AgentDist>>, ServeError> {
    let Some((binaries, deb)) = &settings.agent else {
        tracing::warn!(
            "no muster-agent binary to serve (--agent-binary); launched nodes must \
             carry the agent on their image"
        );
        return Ok(None);
    };
    let dist = AgentDist::new(binaries, deb.as_deref())?;
    tracing::info!(
        binaries = ?binaries.iter().map(|b| b.display().to_string()).collect::<Vec<_>>(),
        deb = ?deb.as_ref().map(|d| d.display().to_string()),
        arches = ?dist.arches(),
        "serving the agent to booting nodes"
    );
    Ok(Some(Arc::new(dist)))
}

/// Opens EC2, and loads the registry from it and `store` (as the replica
/// `replica` of a shared store). Returns it, and EC2's clients if STS has
/// not said yet which account they answer for.
async fn open_registry(
    settings: &Settings,
    store: Arc<Store>,
    files: &pki::TlsFiles,
    agent: Option<Arc<AgentDist>>,
    zone: Arc<Zone>,
    replica: Option<&str>,
) -> Result<(Arc<Registry>, Option<Ec2Clients>), ServeError> {
    let coordinator_id = store.coordinator_id(|| hex::encode(rand::random::<[u8; 8]>()))?;
    tracing::info!(store = %settings.store, coordinator = %coordinator_id, "store open");

    let clients = Ec2Clients::from_env().await;
    let ec2: Arc<dyn InstanceLookup> = match settings.ec2_cache_refresh {
        Some(every) => {
            tracing::info!(refresh = %humantime::format_duration(every), "ec2 cache on");
            Arc::new(CachedInstances::new(clients.clone(), every))
        }
        None => Arc::new(Ec2Instances::new(clients.clone())),
    };
    let ca_pem = userdata::read_ca(files.ca.as_deref()).map_err(|source| ServeError::Ca {
        path: files
            .ca
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        source,
    })?;
    let timing = Timing {
        heartbeat_interval: settings.heartbeat_interval,
        heartbeat_jitter: settings.heartbeat_interval / 10,
        grace: settings.grace,
        unknown_sweeps: settings.unknown_sweeps,
        launch_timeout: settings.launch_timeout,
    };
    let mut registry = Registry::new(store, ec2, zone, settings.zone.clone(), timing)?;
    if let Some(name) = replica {
        registry = registry.as_replica(name);
    }
    let registry = Arc::new(
        registry
            .with_trust(settings.trust.clone())
            .with_launcher(LaunchContext {
                launcher: Launcher::new(clients.clone(), &settings.data_dir, &coordinator_id)
                    .keeping_apart_from(&settings.trust.trusted_proxies),
                coordinator_url: settings.public_url.clone(),
                ca_pem,
                agent,
            }),
    );
    // EC2 is not trusted until STS says which account it answers for.
    // STS answers at once when it can: waiting for it here keeps a launch
    // asked for just after start from being refused. An STS out of reach
    // is asked again later ([`account_loop`]).
    registry.await_account();
    let answered = tokio::time::timeout(ACCOUNT_FIRST_WAIT, registry.check_account(&clients))
        .await
        .unwrap_or(Ok(false))?;
    Ok((registry, (!answered).then_some(clients)))
}

/// Starts the reconcile loop of the configured external DNS provider, if
/// there is one: the one place that knows every provider and picks one.
async fn start_dns_provider(
    settings: &Settings,
    zone: &Arc<Zone>,
    board: &Arc<StatusBoard>,
    leadership: &Arc<Leadership>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ServeError> {
    let owner = || match &settings.dns_owner_id {
        Some(id) => Ok(id.clone()),
        None => dns::ownership::ensure_owner_id(&settings.data_dir),
    };
    let (provider, owner): (Arc<dyn DnsProvider>, String) = match &settings.dns_provider {
        config::DnsProvider::Embedded => return Ok(Vec::new()),
        config::DnsProvider::Rfc2136(rfc2136) => {
            let owner = owner()?;
            tracing::info!(
                server = %rfc2136.server,
                zone = %rfc2136.zone,
                key = %rfc2136.key_name,
                %owner,
                "dns updates go to an rfc2136 server"
            );
            let provider = Rfc2136::new(rfc2136, &owner, settings.dns_ttl)?;
            (Arc::new(provider), owner)
        }
        config::DnsProvider::Route53(route53) => {
            let owner = owner()?;
            let provider = Route53::new(
                Route53::client_from_env().await,
                route53.zone.clone(),
                &settings.zone,
                &owner,
                settings.dns_ttl,
                settings.dns_reconcile_interval,
            )?;
            // A zone that does not exist is a setup error; Route53 out
            // of reach is not: the loop keeps trying.
            match provider.resolve_zone().await {
                Ok(id) => tracing::info!(zone_id = %id, %owner, "dns updates go to route53"),
                Err(error) if error.is_definitive() => return Err(error.into()),
                Err(error) => tracing::warn!(%error, "route53 not reachable yet; will retry"),
            }
            (Arc::new(provider), owner)
        }
    };
    let reconciler = Reconciler::new(
        zone.clone(),
        provider.clone(),
        board.clone(),
        owner,
        &settings.data_dir,
        settings.dns_reconcile_interval,
    )
    .led_by(leadership.clone());
    Ok(vec![
        tokio::spawn(reconciler.run()),
        tokio::spawn(watch_last_change(board.clone(), provider)),
    ])
}

/// The per-source limit on agent requests, with a task that forgets
/// sources not heard from lately so the table stays small.
fn source_limiter(per_second: u32) -> Option<Arc<api::SourceLimiter>> {
    let limiter = api::source_limiter(per_second)?;
    let kept = limiter.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            kept.retain_recent();
            kept.shrink_to_fit();
        }
    });
    Some(limiter)
}

/// The connection bounds of `settings`, the total lowered to fit the open
/// files limit `fds`.
fn connection_limits(settings: &Settings, fds: FdLimit) -> ConnectionLimits {
    let limits = &settings.limits;
    let asked = u64::from(limits.max_connections);
    let max_total = asked.min(fds.connections());
    if max_total < asked {
        tracing::warn!(
            max_connections = asked,
            allowed = max_total,
            soft = fds.soft,
            "the open files limit allows fewer API connections than --max-connections; \
             raise LimitNOFILE"
        );
    }
    let bounds = ConnectionLimits {
        max_total: usize::try_from(max_total).unwrap_or(usize::MAX),
        per_source: limits.max_connections_per_source as usize,
        tls_handshake_timeout: limits.tls_handshake_timeout,
        header_timeout: limits.header_timeout,
        idle_timeout: limits.idle_timeout,
    };
    tracing::info!(
        max_connections = bounds.max_total,
        reserved_for_known = bounds.reserved(),
        per_source = bounds.per_source,
        tls_handshake_timeout = %humantime::format_duration(bounds.tls_handshake_timeout),
        header_timeout = %humantime::format_duration(bounds.header_timeout),
        idle_timeout = %humantime::format_duration(bounds.idle_timeout),
        "api connection limits"
    );
    bounds
}

/// Listens on `listen` and serves `app` over HTTPS until `drain` starts,
/// each connection admitted and watched by `connections`; with
/// `shared_port`, beside other replicas of a shared store on the same host
/// and port. Returns the address listened on, and the serving task.
fn start_api(
    listen: std::net::SocketAddr,
    shared_port: bool,
    tls: Arc<rustls::ServerConfig>,
    app: axum::Router,
    drain: api::connections::server::Drain,
    connections: Arc<Connections>,
) -> std::io::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listener = api_listener(listen, shared_port)?;
    let addr = listener.local_addr()?;
    let acceptor = api::connections::acceptor(tls, connections);
    let server = api::connections::server::serve(listener, acceptor, app, drain);
    Ok((addr, tokio::spawn(server)))
}

/// Connections the kernel may complete before the API accepts them (the
/// kernel caps it at `net.core.somaxconn`, 4096 by default). tokio's 1024
/// is too few under a flood: past it the kernel drops handshakes, agents'
/// included, and a client whose last ACK was dropped believes itself
/// connected to a server that never heard of it. The connection guards
/// then refuse what they must at once.
const API_BACKLOG: u32 = 4096;

/// The API's listening socket on `listen`, with [`API_BACKLOG`]. With
/// `shared_port` (replicas of a shared store) it sets `SO_REUSEPORT`:
/// coordinators of one user on one host may then listen on the same port,
/// and the kernel spreads new connections over them. A coordinator alone
/// on its store keeps the port to itself, so a second one started by
/// mistake fails at once.
fn api_listener(
    listen: std::net::SocketAddr,
    shared_port: bool,
) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if shared_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(listen)?;
    socket.listen(API_BACKLOG)
}

/// Forgets, every minute, the sources not served lately.
async fn forget_loop(connections: Arc<Connections>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        connections.forget_stale();
    }
}

/// The error of an API server task that ended (`when`: "at once" before it
/// listened).
fn api_stopped(
    addr: std::net::SocketAddr,
    result: Result<std::io::Result<()>, tokio::task::JoinError>,
    when: &str,
) -> ServeError {
    let source = match result {
        Ok(Err(e)) => e,
        Ok(Ok(())) if when.is_empty() => std::io::Error::other("the API server stopped"),
        Ok(Ok(())) => std::io::Error::other(format!("the API server stopped {when}")),
        Err(e) => std::io::Error::other(e),
    };
    ServeError::Api { addr, source }
}
