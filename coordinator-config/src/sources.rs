//! Where the settings of `serve` come from: its flags and `MUSTER_*`
//! variables ([`ServeArgs`], through clap) and the `[serve]` table of the
//! TOML file, read with a size cap, merged into one [`Given`] with the flag
//! (or variable) winning over the file.
//!
//! Nothing is checked here but the file's shape (unknown keys are
//! refused); what the values mean is checked by the modules that resolve
//! them.

use std::path::{Path, PathBuf};

use muster_proto::settings::Invalid;
use serde::Deserialize;

/// Flags of `serve`. Every one may also come from the environment or the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with a [serve] table [default: /etc/muster/coordinator.toml]
    #[arg(long, env = "MUSTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTPS API address [default: 0.0.0.0:7443]
    #[arg(long, env = "MUSTER_LISTEN")]
    pub listen: Option<String>,
    /// Embedded DNS address, UDP and TCP [default: 0.0.0.0:53]
    #[arg(long, env = "MUSTER_DNS_LISTEN")]
    pub dns_listen: Option<String>,
    /// DNS zone the coordinator answers for [default: muster.internal]
    #[arg(long, env = "MUSTER_ZONE")]
    pub zone: Option<String>,
    /// Where the store, CA and admin token live [default: /var/lib/muster]
    #[arg(long, env = "MUSTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where the store lives: sqlite:///PATH, or postgres://USER@HOST/DATABASE
    /// (libpq's URL; `sslrootcert=FILE` for TLS) [default: muster.db in the data dir]
    #[arg(long, env = "MUSTER_STORE")]
    pub store: Option<String>,
    /// On a shared store, the key the CA and admin token are sealed with
    /// there; the same file on every coordinator [default: store-key in the data dir]
    #[arg(long, env = "MUSTER_STORE_KEY_FILE")]
    pub store_key_file: Option<PathBuf>,
    /// On PostgreSQL: the most connections this coordinator opens for the
    /// store's calls, opened as they are needed [default: 4]
    #[arg(long, env = "MUSTER_STORE_CONNECTIONS")]
    pub store_connections: Option<String>,
    /// URL agents use to reach this coordinator [default: https://<hostname>:<port>]
    #[arg(long, env = "MUSTER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// On a shared store, the URL the other coordinators reach this one by
    /// (to pass admin changes to the leader) [default: https://<hostname>:<port>]
    #[arg(long, env = "MUSTER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// PEM certificate chain to serve instead of the self-made one (needs --tls-key)
    #[arg(long, env = "MUSTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert
    #[arg(long, env = "MUSTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Heartbeat interval handed to agents, e.g. "10s" [default: 10s]
    #[arg(long, env = "MUSTER_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// TTL of every DNS record, in seconds [default: 30]
    #[arg(long, env = "MUSTER_DNS_TTL")]
    pub dns_ttl: Option<String>,
    /// Silence after which a deployed node becomes unreachable [default: 30s]
    #[arg(long, env = "MUSTER_GRACE")]
    pub grace: Option<String>,
    /// Time between EC2 sweeps [default: 30s]
    #[arg(long, env = "MUSTER_SWEEP_INTERVAL")]
    pub sweep_interval: Option<String>,
    /// On PostgreSQL: how long the leader's lease lasts unrenewed; a standby takes over
    /// once it runs out [default: 15s]
    #[arg(long, env = "MUSTER_LEASE_TIME")]
    pub lease_time: Option<String>,
    /// On PostgreSQL: how often the leader renews its lease [default: 5s]
    #[arg(long, env = "MUSTER_LEASE_RENEW_INTERVAL")]
    pub lease_renew_interval: Option<String>,
    /// On PostgreSQL: how often a standby tries to take the lease [default: 2s]
    #[arg(long, env = "MUSTER_LEASE_RETRY_INTERVAL")]
    pub lease_retry_interval: Option<String>,
    /// List the cluster members of each region this often and accept the claims that
    /// listing confirms without asking EC2 (see the README), e.g. "60s" [default: off]
    #[arg(long, env = "MUSTER_EC2_CACHE_REFRESH")]
    pub ec2_cache_refresh: Option<String>,
    /// Sweeps in a row EC2 must not know an instance before its node is terminated [default: 3]
    #[arg(long, env = "MUSTER_UNKNOWN_SWEEPS")]
    pub unknown_sweeps: Option<String>,
    /// Time a launched node's agent has to register before the node is failed [default: 10m]
    #[arg(long, env = "MUSTER_LAUNCH_TIMEOUT")]
    pub launch_timeout: Option<String>,
    /// How long terminated nodes (with their events), expired tokens and finished launch jobs are kept [default: 7d]
    #[arg(long, env = "MUSTER_RETENTION")]
    pub retention: Option<String>,
    /// Where the records go: embedded, rfc2136 or route53 [default: embedded]
    #[arg(long, env = "MUSTER_DNS_PROVIDER")]
    pub dns_provider: Option<String>,
    /// rfc2136, route53: the id written into ownership records [default: the random id in <data dir>/dns-owner-id]
    #[arg(long, env = "MUSTER_DNS_OWNER_ID")]
    pub dns_owner_id: Option<String>,
    /// Route53: the hosted zone, by id (Z…) or by name [default: --zone]
    #[arg(long = "route53-zone", env = "MUSTER_ROUTE53_ZONE")]
    pub route53_zone: Option<String>,
    /// RFC 2136: the primary server taking updates, HOST:PORT
    #[arg(long = "rfc2136-server", env = "MUSTER_RFC2136_SERVER")]
    pub rfc2136_server: Option<String>,
    /// RFC 2136: the zone updated on that server [default: --zone]
    #[arg(long = "rfc2136-zone", env = "MUSTER_RFC2136_ZONE")]
    pub rfc2136_zone: Option<String>,
    /// RFC 2136: the TSIG key's name, as the server knows it
    #[arg(long, env = "MUSTER_TSIG_KEY_NAME")]
    pub tsig_key_name: Option<String>,
    /// RFC 2136: hmac-sha256, hmac-sha384 or hmac-sha512 [default: hmac-sha256]
    #[arg(long, env = "MUSTER_TSIG_ALGORITHM")]
    pub tsig_algorithm: Option<String>,
    /// RFC 2136: file holding the base64 TSIG secret (or a BIND key file); mode 0600
    #[arg(long, env = "MUSTER_TSIG_SECRET_FILE")]
    pub tsig_secret_file: Option<PathBuf>,
    /// Time between full DNS reconciles, which repair drift [default: 5m]
    #[arg(long, env = "MUSTER_DNS_RECONCILE_INTERVAL")]
    pub dns_reconcile_interval: Option<String>,
    /// Refuse agent requests whose source address is not one of the node's [default: false]
    #[arg(long, env = "MUSTER_VERIFY_SOURCE", num_args = 0..=1, default_missing_value = "true")]
    pub verify_source: Option<String>,
    /// Proxies (IPv4 CIDRs, comma separated) whose X-Forwarded-For is believed [default: none]
    #[arg(long, env = "MUSTER_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Reserved ranges (IPv4 CIDRs, comma separated) accepted as public addresses anyway [default: none]
    #[arg(long = "public-ipv4-allow", env = "MUSTER_PUBLIC_IPV4_ALLOW")]
    pub public_ipv4_allow: Option<String>,
    /// Agent requests per second allowed from one source address, 0 for no limit [default: 20]
    #[arg(long, env = "MUSTER_AGENT_RATE_LIMIT")]
    pub agent_rate_limit: Option<String>,
    /// Open API connections at most; lowered at start to fit the file descriptor limit [default: 16384]
    #[arg(long, env = "MUSTER_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
    /// Open API connections from one source address at most, 0 for no limit [default: 200]
    #[arg(long, env = "MUSTER_MAX_CONNECTIONS_PER_SOURCE")]
    pub max_connections_per_source: Option<String>,
    /// Time a TLS handshake may take [default: 10s]
    #[arg(long, env = "MUSTER_TLS_HANDSHAKE_TIMEOUT")]
    pub tls_handshake_timeout: Option<String>,
    /// Time a request's headers may take to arrive [default: 10s]
    #[arg(long, env = "MUSTER_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// Time an API connection may idle between requests; at least twice the heartbeat
    /// interval [default: 75s, or twice the heartbeat interval if longer]
    #[arg(long, env = "MUSTER_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// DNS answers per second over UDP to one source network (IPv4 /24, IPv6 /56), 0 for no
    /// limit [default: 20]
    #[arg(long, env = "MUSTER_DNS_RATE_LIMIT")]
    pub dns_rate_limit: Option<String>,
    /// More certificates for instance identity signatures (PEM), added to AWS's commercial
    /// ones that ship with muster: for GovCloud, China, a newer region or an emulator
    /// [default: none]
    #[arg(long, env = "MUSTER_IDENTITY_CERTS")]
    pub identity_certs: Option<PathBuf>,
    /// INSECURE: accept EC2 registers without a signed instance identity document, so any
    /// holder of a join token may claim any instance of the cluster [default: false]
    #[arg(
        long,
        env = "MUSTER_INSECURE_NO_IDENTITY_DOCUMENT",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub insecure_no_identity_document: Option<String>,
    /// The muster-agent binary served to booting nodes and installed by
    /// their user data; repeat it (or separate with commas) for one binary
    /// per architecture, each read from its ELF header [default:
    /// muster-agent next to this executable, if there]
    #[arg(long, env = "MUSTER_AGENT_BINARY", value_delimiter = ',')]
    pub agent_binary: Vec<PathBuf>,
    /// The agent's Debian package, served beside the binary (needs an agent binary)
    #[arg(long, env = "MUSTER_AGENT_DEB")]
    pub agent_deb: Option<PathBuf>,
}

/// The `[serve]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileServe {
    listen: Option<String>,
    dns_listen: Option<String>,
    zone: Option<String>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    store_key_file: Option<PathBuf>,
    store_connections: Option<String>,
    public_url: Option<String>,
    advertise_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    heartbeat_interval: Option<String>,
    dns_ttl: Option<toml::Value>,
    grace: Option<String>,
    sweep_interval: Option<String>,
    lease_time: Option<String>,
    lease_renew_interval: Option<String>,
    lease_retry_interval: Option<String>,
    ec2_cache_refresh: Option<String>,
    unknown_sweeps: Option<toml::Value>,
    launch_timeout: Option<String>,
    retention: Option<String>,
    dns_provider: Option<String>,
    dns_owner_id: Option<String>,
    route53_zone: Option<String>,
    rfc2136_server: Option<String>,
    rfc2136_zone: Option<String>,
    tsig_key_name: Option<String>,
    tsig_algorithm: Option<String>,
    tsig_secret_file: Option<PathBuf>,
    dns_reconcile_interval: Option<String>,
    verify_source: Option<bool>,
    trusted_proxies: Option<Vec<String>>,
    public_ipv4_allow: Option<Vec<String>>,
    agent_rate_limit: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    max_connections_per_source: Option<toml::Value>,
    tls_handshake_timeout: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    dns_rate_limit: Option<toml::Value>,
    identity_certs: Option<PathBuf>,
    insecure_no_identity_document: Option<bool>,
    agent_binary: Option<OneOrMany>,
    agent_deb: Option<PathBuf>,
}

/// A file key that takes one path or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub(crate) serve: FileServe,
}

/// Each setting as given, the flag (or its variable) over the file; not
/// yet checked. A number or a boolean in the file is taken as its text, a
/// list of CIDRs as its items joined with commas, as a flag would give it.
#[derive(Debug, Default)]
pub(crate) struct Given {
    pub listen: Option<String>,
    pub dns_listen: Option<String>,
    pub zone: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    pub store_key_file: Option<PathBuf>,
    pub store_connections: Option<String>,
    pub public_url: Option<String>,
    pub advertise_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub heartbeat_interval: Option<String>,
    pub dns_ttl: Option<String>,
    pub grace: Option<String>,
    pub sweep_interval: Option<String>,
    pub lease_time: Option<String>,
    pub lease_renew_interval: Option<String>,
    pub lease_retry_interval: Option<String>,
    pub ec2_cache_refresh: Option<String>,
    pub unknown_sweeps: Option<String>,
    pub launch_timeout: Option<String>,
    pub retention: Option<String>,
    pub dns_provider: Option<String>,
    pub dns_owner_id: Option<String>,
    pub route53_zone: Option<String>,
    pub rfc2136_server: Option<String>,
    pub rfc2136_zone: Option<String>,
    pub tsig_key_name: Option<String>,
    pub tsig_algorithm: Option<String>,
    pub tsig_secret_file: Option<PathBuf>,
    pub dns_reconcile_interval: Option<String>,
    pub verify_source: Option<String>,
    pub trusted_proxies: Option<String>,
    pub public_ipv4_allow: Option<String>,
    pub agent_rate_limit: Option<String>,
    pub max_connections: Option<String>,
    pub max_connections_per_source: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub dns_rate_limit: Option<String>,
    pub identity_certs: Option<PathBuf>,
    pub insecure_no_identity_document: Option<String>,
    pub agent_binary: Vec<PathBuf>,
    pub agent_deb: Option<PathBuf>,
}

impl Given {
    /// `args` over `file`.
    pub fn merge(args: &ServeArgs, file: FileServe) -> Given {
        let number = |value: Option<toml::Value>| value.map(toml_text);
        let list = |items: Option<Vec<String>>| items.map(|v| v.join(","));
        let a = args.clone();
        Given {
            listen: a.listen.or(file.listen),
            dns_listen: a.dns_listen.or(file.dns_listen),
            zone: a.zone.or(file.zone),
            data_dir: a.data_dir.or(file.data_dir),
            store: a.store.or(file.store),
            store_key_file: a.store_key_file.or(file.store_key_file),
            store_connections: a.store_connections.or(file.store_connections),
            public_url: a.public_url.or(file.public_url),
            advertise_url: a.advertise_url.or(file.advertise_url),
            tls_cert: a.tls_cert.or(file.tls_cert),
            tls_key: a.tls_key.or(file.tls_key),
            heartbeat_interval: a.heartbeat_interval.or(file.heartbeat_interval),
            dns_ttl: a.dns_ttl.or(number(file.dns_ttl)),
            grace: a.grace.or(file.grace),
            sweep_interval: a.sweep_interval.or(file.sweep_interval),
            lease_time: a.lease_time.or(file.lease_time),
            lease_renew_interval: a.lease_renew_interval.or(file.lease_renew_interval),
            lease_retry_interval: a.lease_retry_interval.or(file.lease_retry_interval),
            ec2_cache_refresh: a.ec2_cache_refresh.or(file.ec2_cache_refresh),
            unknown_sweeps: a.unknown_sweeps.or(number(file.unknown_sweeps)),
            launch_timeout: a.launch_timeout.or(file.launch_timeout),
            retention: a.retention.or(file.retention),
            dns_provider: a.dns_provider.or(file.dns_provider),
            dns_owner_id: a.dns_owner_id.or(file.dns_owner_id),
            route53_zone: a.route53_zone.or(file.route53_zone),
            rfc2136_server: a.rfc2136_server.or(file.rfc2136_server),
            rfc2136_zone: a.rfc2136_zone.or(file.rfc2136_zone),
            tsig_key_name: a.tsig_key_name.or(file.tsig_key_name),
            tsig_algorithm: a.tsig_algorithm.or(file.tsig_algorithm),
            tsig_secret_file: a.tsig_secret_file.or(file.tsig_secret_file),
            dns_reconcile_interval: a.dns_reconcile_interval.or(file.dns_reconcile_interval),
            verify_source: a
                .verify_source
                .or(file.verify_source.map(|b| b.to_string())),
            trusted_proxies: a.trusted_proxies.or(list(file.trusted_proxies)),
            public_ipv4_allow: a.public_ipv4_allow.or(list(file.public_ipv4_allow)),
            agent_rate_limit: a.agent_rate_limit.or(number(file.agent_rate_limit)),
            max_connections: a.max_connections.or(number(file.max_connections)),
            max_connections_per_source: a
                .max_connections_per_source
                .or(number(file.max_connections_per_source)),
            tls_handshake_timeout: a.tls_handshake_timeout.or(file.tls_handshake_timeout),
            header_timeout: a.header_timeout.or(file.header_timeout),
            idle_timeout: a.idle_timeout.or(file.idle_timeout),
            dns_rate_limit: a.dns_rate_limit.or(number(file.dns_rate_limit)),
            identity_certs: a.identity_certs.or(file.identity_certs),
            insecure_no_identity_document: a
                .insecure_no_identity_document
                .or(file.insecure_no_identity_document.map(|b| b.to_string())),
            agent_binary: if a.agent_binary.is_empty() {
                match file.agent_binary {
                    Some(OneOrMany::One(path)) => vec![path],
                    Some(OneOrMany::Many(paths)) => paths,
                    None => Vec::new(),
                }
            } else {
                a.agent_binary
            },
            agent_deb: a.agent_deb.or(file.agent_deb),
        }
    }
}

/// A number in the file may be written bare or quoted.
fn toml_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Largest config or secret file read, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads `path`, refusing one over `max` bytes.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("is larger than {max} bytes"));
    }
    Ok(bytes)
}

/// [`read_capped`] for text, up to 1 MiB.
pub(crate) fn read_text(path: &Path) -> Result<String, String> {
    String::from_utf8(read_capped(path, MAX_FILE_BYTES)?).map_err(|_| "is not UTF-8".into())
}

/// Reads the config file at `path`; a missing one is empty unless it is
/// `required`.
pub(crate) fn read_file(path: &Path, required: bool) -> Result<File, Invalid> {
    let text = match read_text(path) {
        Ok(text) => text,
        Err(_) if !path.exists() && !required => return Ok(File::default()),
        Err(e) => return Err(Invalid::whole("config", path.display().to_string(), e)),
    };
    toml::from_str(&text)
        .map_err(|e| Invalid::whole("config", path.display().to_string(), e.message()))
}

/// The config file's text, as if `--config` named a file holding it.
pub(crate) fn parse_file(toml: &str) -> Result<File, Invalid> {
    toml::from_str(toml).map_err(|e| Invalid::whole("config", "(text)", e.message()))
}
