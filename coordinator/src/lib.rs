//! The muster coordinator: it keeps node state, answers for the nodes in
//! DNS, and serves the HTTPS API that agents and operators talk to.
//!
//! `muster-coordinator serve` runs it; the other subcommands are clients of
//! a running one. All logic lives in this library so tests can call it; the
//! binary is a thin `main.rs`.
//!
//! # Layout
//! - [`config`]: `serve` settings from flags, environment and TOML, validated
//!   (the `muster-coordinator-config` crate, kept apart so the config
//!   decoder builds without the AWS SDK).
//! - [`pki`]: the self-made CA, the server certificate and the admin token.
//! - [`store`]: SQLite (WAL) with migrations: clusters, nodes, node events.
//! - [`ec2`]: what EC2 says about an instance (aws-sdk-ec2).
//! - [`identity_document`]: the optional check of an instance's PKCS7-signed
//!   identity document against the operator's AWS certificates.
//! - [`launcher`]: security group, key pair and RunInstances for launched
//!   clusters, and releasing them; `check-credentials`.
//! - [`userdata`]: the `#cloud-config` launched nodes boot with (install
//!   the agent, prepare the data volume, start the agent), gzipped when big.
//! - [`agent_dist`]: the agent binary (and package) served to booting nodes
//!   at `/v1/agent/linux/{arch}/…`, and its SHA-256 for their user data.
//! - [`lifecycle`]: the node state machine, one pure function.
//! - [`registry`]: register and heartbeat, checked against EC2; memory for
//!   heartbeats, the store for transitions; the liveness check and the EC2
//!   sweep; cluster create, scale and remove (`registry::clusters`).
//! - [`dns`]: the embedded authoritative DNS server and the record model.
//! - [`dns_reconcile`]: the `DnsProvider` trait and the loop that keeps an
//!   external DNS server at the desired records.
//! - [`rfc2136`]: the RFC 2136 provider (dynamic updates signed with TSIG).
//! - [`route53`]: the Route53 provider (ChangeResourceRecordSets, paced and
//!   batched within Route53's limits).
//! - [`network`]: the VPC, gateway, route table and subnets launched nodes
//!   use, found or created.
//! - [`placement`]: which subnet each launched node goes to.
//! - [`api`]: the axum routes, JSON errors, `/healthz`, `/metrics`.
//! - [`cli`]: the admin client behind `cluster …` and `node …`.
//! - [`serve`]: wires it all together and runs until told to stop.

#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub use muster_coordinator_config as config;
pub mod dns;
pub mod dns_reconcile;
pub mod ec2;
pub mod identity_document;
pub mod launcher;
pub mod lifecycle;
pub mod pki;
pub mod registry;
pub mod rfc2136;
pub mod route53;
pub mod secrets;
pub mod store;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Settings;
use crate::registry::{LaunchContext, Registry, Timing};

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
    AgentDist(#[from] launcher::agent_dist::AgentDistError),
    /// TLS or the admin token could not be set up.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The registry could not load.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// DNS could not start.
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    /// The DNS reconciler could not start.
    #[error(transparent)]
    DnsReconcile(#[from] dns_reconcile::ReconcileError),
    /// The RFC 2136 provider could not be set up.
    #[error(transparent)]
    Rfc2136(#[from] rfc2136::Rfc2136Error),
    /// The Route53 provider could not be set up.
    #[error(transparent)]
    Route53(#[from] route53::Route53Error),
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
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| ServeError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;

    let files = match &settings.tls {
        Some((cert, key)) => pki::TlsFiles {
            ca: None,
            cert: cert.clone(),
            key: key.clone(),
        },
        None => pki::ensure_self_signed(data_dir, &settings.certificate_names())?,
    };
    let tls = pki::server_config(&files)?;
    let admin_token = pki::ensure_admin_token(data_dir)?;
    tracing::info!(
        admin_token = %data_dir.join(pki::ADMIN_TOKEN_FILE).display(),
        ca = ?files.ca.as_ref().map(|p| p.display().to_string()),
        "credentials ready"
    );

    let store_path = data_dir.join("muster.db");
    let store = store::Store::open(&store_path)?;
    tracing::info!(path = %store_path.display(), "store open");

    let clients = ec2::Ec2Clients::from_env().await;
    let ec2: Arc<dyn ec2::InstanceLookup> = match settings.ec2_cache_refresh {
        Some(every) => {
            tracing::info!(refresh = %humantime::format_duration(every), "ec2 cache on");
            Arc::new(ec2::CachedInstances::new(clients.clone(), every))
        }
        None => Arc::new(ec2::Ec2Instances::new(clients.clone())),
    };
    let ca_pem =
        launcher::userdata::read_ca(files.ca.as_deref()).map_err(|source| ServeError::Ca {
            path: files
                .ca
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source,
        })?;
    let agent = match &settings.agent {
        Some((binary, deb)) => {
            let dist = launcher::agent_dist::AgentDist::new(binary, deb.as_deref())?;
            tracing::info!(
                binary = %binary.display(),
                deb = ?deb.as_ref().map(|d| d.display().to_string()),
                arch = dist.arch(),
                "serving the agent to booting nodes"
            );
            Some(Arc::new(dist))
        }
        None => {
            tracing::warn!(
                "no muster-agent binary to serve (--agent-binary); launched nodes must \
                 carry the agent on their image"
            );
            None
        }
    };
    let zone = Arc::new(dns::Zone::new(&settings.zone, settings.dns_ttl)?);
    let registry = Arc::new(
        Registry::new(
            store,
            ec2,
            zone.clone(),
            settings.zone.clone(),
            Timing {
                heartbeat_interval: settings.heartbeat_interval,
                heartbeat_jitter: settings.heartbeat_interval / 10,
                grace: settings.grace,
                unknown_sweeps: settings.unknown_sweeps,
                launch_timeout: settings.launch_timeout,
            },
        )?
        .with_trust(settings.trust.clone())
        .with_launcher(LaunchContext {
            launcher: launcher::Launcher::new(clients, data_dir),
            coordinator_url: settings.public_url.clone(),
            ca_pem,
            agent: agent.clone(),
        }),
    );
    registry.resume_removals()?;
    let loops = [
        tokio::spawn(registry.clone().run_publisher()),
        tokio::spawn(liveness_loop(registry.clone(), settings.grace)),
        tokio::spawn(sweep_loop(registry.clone(), settings.sweep_interval)),
    ];
    let mut dns_loops = Vec::new();
    let owner = || match &settings.dns_owner_id {
        Some(id) => Ok(id.clone()),
        None => dns_reconcile::ensure_owner_id(data_dir),
    };
    let provider: Option<(Arc<dyn dns_reconcile::DnsProvider>, String)> =
        match &settings.dns_provider {
            config::DnsProvider::Embedded => None,
            config::DnsProvider::Rfc2136(rfc2136) => {
                let owner = owner()?;
                tracing::info!(
                    server = %rfc2136.server,
                    zone = %rfc2136.zone,
                    key = %rfc2136.key_name,
                    %owner,
                    "dns updates go to an rfc2136 server"
                );
                let provider = rfc2136::Rfc2136::new(rfc2136, &owner, settings.dns_ttl)?;
                Some((Arc::new(provider), owner))
            }
            config::DnsProvider::Route53(route53) => {
                let owner = owner()?;
                let provider = route53::Route53::new(
                    route53::Route53::client_from_env().await,
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
                Some((Arc::new(provider), owner))
            }
        };
    if let Some((provider, owner)) = provider {
        let reconciler = dns_reconcile::Reconciler::new(
            zone.clone(),
            provider.clone(),
            owner,
            data_dir,
            settings.dns_reconcile_interval,
        );
        dns_loops.push(tokio::spawn(reconciler.run()));
        dns_loops.push(tokio::spawn(dns_reconcile::watch_last_change(
            zone.clone(),
            provider,
        )));
    }

    let (mut dns_server, dns_addr) = dns::serve(zone, settings.dns_listen).await?;
    tracing::info!(addr = %dns_addr, zone = %settings.zone, "dns listening (udp, tcp)");

    let limiter = api::source_limiter(settings.trust.agent_rate_limit);
    if let Some(limiter) = limiter.clone() {
        // Forget sources not heard from lately, so the table stays small.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        });
    }
    let app = api::router(api::AppState {
        registry,
        admin_token_hash: Arc::new(std::sync::RwLock::new(secrets::hash_secret(&admin_token))),
        data_dir: Arc::new(settings.data_dir.clone()),
        trust: Arc::new(settings.trust.clone()),
        limiter,
        agent,
    });
    let handle = axum_server::Handle::new();
    let listen = settings.listen;
    let mut server = axum_server::bind_rustls(
        listen,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )
    .handle(handle.clone());
    // A client that dribbles its headers is cut off (the TLS handshake has
    // its own 10 s limit, and bodies have theirs in the API).
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(api::HEADER_TIMEOUT);
    let server = server.serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>());
    let mut api_task = tokio::spawn(server);
    let api_addr = tokio::select! {
        addr = handle.listening() => addr,
        result = &mut api_task => {
            let source = match result {
                Ok(Err(e)) => e,
                Ok(Ok(())) => std::io::Error::other("the API server stopped at once"),
                Err(e) => std::io::Error::other(e),
            };
            return Err(ServeError::Api { addr: listen, source });
        }
    };
    tracing::info!(addr = ?api_addr, public_url = %settings.public_url, "api listening (https)");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    tokio::select! {
        () = shutdown => tracing::info!("shutting down"),
        result = &mut api_task => {
            let source = match result {
                Ok(Err(e)) => e,
                Ok(Ok(())) => std::io::Error::other("the API server stopped"),
                Err(e) => std::io::Error::other(e),
            };
            return Err(ServeError::Api { addr: listen, source });
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    for task in loops.into_iter().chain(dns_loops) {
        task.abort();
    }
    handle.graceful_shutdown(Some(DRAIN_DEADLINE));
    let _ = tokio::time::timeout(DRAIN_DEADLINE + Duration::from_secs(1), api_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), dns_server.shutdown_gracefully()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Marks silent nodes unreachable, checking often enough that a node is
/// marked within a tenth of the grace after it runs out.
async fn liveness_loop(registry: Arc<Registry>, grace: Duration) {
    let period = (grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        registry.check_liveness().await;
    }
}

/// Reads EC2's view of every tracked instance every `period`.
async fn sweep_loop(registry: Arc<Registry>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let report = registry.sweep().await;
        tracing::debug!(
            seen = report.seen,
            failed_regions = report.failed_regions,
            "sweep done"
        );
    }
}
