//! `muster-coordinator serve` settings: flags and `MUSTER_*` environment
//! variables (clap) over the `[serve]` table of the TOML file over defaults,
//! validated once into [`Settings`]. A bad value is reported as
//! `NAME="value" is not valid: why` ([`Invalid`]) and the process exits 64.
//!
//! A crate of its own, re-exported as `muster_coordinator::config`, so that
//! the decoding of the config file builds without the AWS SDK: the fuzz
//! target `coordinator_config` feeds [`Settings::from_toml`] arbitrary
//! bytes. Files the settings name are read with a size cap, so naming
//! `/dev/zero` is an error, not a hang.
//!
//! # Layout
//! - `sources.rs`: [`ServeArgs`] and the file's `[serve]` table, merged
//!   flag over file before anything is checked.
//! - `endpoints.rs`: the API and DNS addresses, the zone, the data dir, the
//!   public URL and the operator's certificate.
//! - `store.rs`: [`StoreLocation`], SQLite's file or a PostgreSQL URL.
//! - `timing.rs`: heartbeat interval, grace, sweeps, launch timeout.
//! - `dns.rs`: the DNS provider ([`DnsProvider`]) and its settings.
//! - `trust.rs`: [`Trust`], who may speak for a node beyond its credentials.
//! - `limits.rs`: [`Limits`], what no single client may exhaust: API
//!   connections and their timeouts, DNS answers a second.
//! - [`agent_files`]: the agent binary and package the coordinator serves.
//! - `identity_certs.rs`: [`IdentityCerts`], AWS's certificates for
//!   instance identity signatures.
//!
//! Each setting is checked where its concern lives, one concern after the
//! other (endpoints, timing, DNS, trust, limits, agent files), always in
//! the same order, so the first bad value is the one reported.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_proto::settings::{self, Invalid};

pub mod agent_files;
mod dns;
mod endpoints;
mod identity_certs;
mod limits;
mod sources;
mod store;
mod timing;
mod trust;

pub use dns::{
    validate_owner_id, DnsProvider, Rfc2136Settings, Route53Settings, Route53Zone, TsigAlgorithm,
};
pub use identity_certs::IdentityCerts;
pub use limits::Limits;
pub use sources::ServeArgs;
pub use store::{
    redact, Lease, StoreLocation, DEFAULT_STORE_CONNECTIONS, STORE_FILE, STORE_KEY_FILE,
};
pub use trust::Trust;

use sources::{FileServe, Given};

/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/muster/coordinator.toml";
/// Default API address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
/// Default DNS address.
pub const DEFAULT_DNS_LISTEN: &str = "0.0.0.0:53";
/// Default zone.
pub const DEFAULT_ZONE: &str = "muster.internal";
/// Default data dir.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/muster";
/// Default heartbeat interval handed to agents.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Default DNS TTL in seconds.
pub const DEFAULT_DNS_TTL: u32 = 30;
/// Default silence after which a node becomes unreachable.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default time between EC2 sweeps.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Default sweeps in a row an instance must be unknown before it counts as terminated.
pub const DEFAULT_UNKNOWN_SWEEPS: u32 = 3;
/// Default time a launched node's agent has to register.
pub const DEFAULT_LAUNCH_TIMEOUT: Duration = Duration::from_secs(600);
/// Default time history is kept: a week (Consul reaps failed nodes after
/// 72 hours).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default DNS provider.
pub const DEFAULT_DNS_PROVIDER: &str = "embedded";
/// Default TSIG algorithm.
pub const DEFAULT_TSIG_ALGORITHM: &str = "hmac-sha256";
/// Default agent requests per second from one source address.
pub const DEFAULT_AGENT_RATE_LIMIT: u32 = 20;
/// Default time between full DNS reconciles.
pub const DEFAULT_DNS_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);
/// Default cap on open API connections. Each holds a file descriptor and a
/// few tens of KiB; a fleet of agents keeps one each. The cap is lowered
/// at start to fit the file descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16_384;
/// Default cap on open API connections from one source address (Consul's
/// `http_max_conns_per_client`). Agents behind one NAT share one source:
/// raise it, or 0 turns it off.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: u32 = 200;
/// Default time a TLS handshake may take (Go's and axum-server's 10 s).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a request's headers may take to arrive.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may idle between requests: nginx's
/// `keepalive_timeout`, far above a heartbeat's 10 s plus jitter.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default DNS answers a second over UDP to one source network (Knot's
/// `rate-limit`).
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 20;

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTPS API address.
    pub listen: SocketAddr,
    /// DNS address.
    pub dns_listen: SocketAddr,
    /// Zone, lowercase, no trailing dot.
    pub zone: String,
    /// Data dir.
    pub data_dir: PathBuf,
    /// Where the store lives: SQLite's file in the data dir by default.
    pub store: StoreLocation,
    /// On a shared store, the file holding the key that seals the CA and
    /// the admin token in it: `store-key` in the data dir by default.
    pub store_key_file: PathBuf,
    /// On PostgreSQL, the most connections the store's calls use at once.
    pub store_connections: u32,
    /// The leader's lease, when the store is shared (PostgreSQL).
    pub lease: Lease,
    /// URL agents use.
    pub public_url: String,
    /// Host part of `public_url`.
    pub public_host: String,
    /// On a shared store, the URL the other coordinators reach this one
    /// by: where a standby passes admin changes on to the leader.
    pub advertise_url: String,
    /// Host part of `advertise_url`.
    pub advertise_host: String,
    /// Operator-provided certificate and key, if any.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// DNS TTL.
    pub dns_ttl: u32,
    /// Silence after which a deployed node becomes unreachable.
    pub grace: Duration,
    /// Time between EC2 sweeps.
    pub sweep_interval: Duration,
    /// Time between listings of the EC2 cache; `None`: no cache, every
    /// claim asks EC2.
    pub ec2_cache_refresh: Option<Duration>,
    /// Sweeps in a row an instance must be unknown before it counts as terminated.
    pub unknown_sweeps: u32,
    /// Time a launched node's agent has to register before the node fails.
    pub launch_timeout: Duration,
    /// How long terminated nodes, expired tokens and finished launch jobs
    /// are kept.
    pub retention: Duration,
    /// Where the records go.
    pub dns_provider: DnsProvider,
    /// Time between full reconciles with an external DNS provider.
    pub dns_reconcile_interval: Duration,
    /// The owner id given with `--dns-owner-id`; `None` means the one kept
    /// in the data dir.
    pub dns_owner_id: Option<String>,
    /// Who may speak for a node.
    pub trust: Trust,
    /// What no single client may exhaust.
    pub limits: Limits,
    /// The agent served to booting nodes: a binary per architecture, and
    /// the package if any (of the first binary's architecture); `None` when
    /// there is none (the image must carry it).
    pub agent: Option<agent_files::AgentFiles>,
}

impl Settings {
    /// Merges flags, environment and the file, then validates.
    pub fn load(args: &ServeArgs) -> Result<Settings, Invalid> {
        let file = match &args.config {
            Some(path) => sources::read_file(path, true)?,
            None => sources::read_file(Path::new(DEFAULT_CONFIG), false)?,
        };
        Settings::resolve(args, file.serve)
    }

    /// The settings from `args` over the config file's text `toml` (as if
    /// `--config` named a file holding it).
    pub fn from_toml(args: &ServeArgs, toml: &str) -> Result<Settings, Invalid> {
        Settings::resolve(args, sources::parse_file(toml)?.serve)
    }

    fn resolve(args: &ServeArgs, file: FileServe) -> Result<Settings, Invalid> {
        let given = Given::merge(args, file);
        let endpoints = endpoints::resolve(&given)?;
        let store = store::resolve(given.store.as_deref(), &endpoints.data_dir)?;
        let store_key_file = given
            .store_key_file
            .clone()
            .unwrap_or_else(|| endpoints.data_dir.join(STORE_KEY_FILE));
        let store_connections = number(
            "store_connections",
            given.store_connections.clone(),
            store::DEFAULT_STORE_CONNECTIONS,
            1..=100,
            "must be between 1 and 100 connections",
        )?;
        let lease = store::resolve_lease(&given)?;
        let timing = timing::resolve(&given)?;
        let dns = dns::resolve(&given, &endpoints.zone)?;
        let trust = trust::resolve(&given)?;
        let limits = limits::resolve(&given, timing.heartbeat_interval)?;
        let agent = agent_files::resolve(given.agent_binary, given.agent_deb)?;
        Ok(Settings {
            listen: endpoints.listen,
            dns_listen: endpoints.dns_listen,
            zone: endpoints.zone,
            data_dir: endpoints.data_dir,
            store,
            store_key_file,
            store_connections,
            lease,
            public_url: endpoints.public_url,
            advertise_url: endpoints.advertise_url,
            advertise_host: endpoints.advertise_host,
            public_host: endpoints.public_host,
            tls: endpoints.tls,
            heartbeat_interval: timing.heartbeat_interval,
            dns_ttl: dns.ttl,
            grace: timing.grace,
            sweep_interval: timing.sweep_interval,
            ec2_cache_refresh: timing.ec2_cache_refresh,
            unknown_sweeps: timing.unknown_sweeps,
            launch_timeout: timing.launch_timeout,
            retention: timing.retention,
            dns_provider: dns.provider,
            dns_reconcile_interval: dns.reconcile_interval,
            dns_owner_id: dns.owner_id,
            trust,
            limits,
            agent,
        })
    }

    /// The names the self-made server certificate covers.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            self.public_host.clone(),
            self.advertise_host.clone(),
        ];
        if !self.listen.ip().is_unspecified() {
            names.push(self.listen.ip().to_string());
        }
        names.sort();
        names.dedup();
        names
    }
}

/// A humantime duration within `bounds`, or `default` when unset.
fn duration(
    name: &'static str,
    text: Option<String>,
    default: Duration,
    bounds: (Duration, Duration),
) -> Result<Duration, Invalid> {
    let Some(text) = text else {
        return Ok(default);
    };
    settings::duration_within(&text, bounds.0, bounds.1).map_err(|e| Invalid::whole(name, &text, e))
}

/// A whole number within `range` (`why` says which), or `default` when
/// unset.
fn number(
    name: &'static str,
    text: Option<String>,
    default: u32,
    range: RangeInclusive<u32>,
    why: &str,
) -> Result<u32, Invalid> {
    let text = text.unwrap_or_else(|| default.to_string());
    let value: u32 = text.parse().map_err(|e| Invalid::whole(name, &text, e))?;
    if !range.contains(&value) {
        return Err(Invalid::whole(name, &text, why));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
