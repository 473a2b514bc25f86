//! `muster-coordinator serve` settings: flags and `MUSTER_*` environment
//! variables (clap) over the `[serve]` table of the TOML file over defaults,
//! validated once into [`Settings`]. A bad value is reported as
//! `NAME="value" is not valid: why` and the process exits 64.
//!
//! A crate of its own, re-exported as `muster_coordinator::config`, so that
//! the decoding of the config file builds without the AWS SDK: the fuzz
//! target `coordinator_config` feeds [`Settings::from_toml`] arbitrary
//! bytes. Files the settings name are read with a size cap, so naming
//! `/dev/zero` is an error, not a hang.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_proto::cidr::{InvalidCidr, Ipv4Cidr};
use muster_proto::settings::{self, Invalid};
use serde::Deserialize;

pub mod agent_files;
mod identity_certs;

pub use identity_certs::IdentityCerts;

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
/// Default DNS provider.
pub const DEFAULT_DNS_PROVIDER: &str = "embedded";
/// Default TSIG algorithm.
pub const DEFAULT_TSIG_ALGORITHM: &str = "hmac-sha256";
/// Default agent requests per second from one source address.
pub const DEFAULT_AGENT_RATE_LIMIT: u32 = 20;
/// Default time between full DNS reconciles.
pub const DEFAULT_DNS_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);

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
    /// URL agents use to reach this coordinator [default: https://<hostname>:<port>]
    #[arg(long, env = "MUSTER_PUBLIC_URL")]
    pub public_url: Option<String>,
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
    /// AWS's certificates for instance identity signatures (PEM); when set, every EC2 register
    /// must carry its identity document signed by one of them [default: none]
    #[arg(long, env = "MUSTER_IDENTITY_CERTS")]
    pub identity_certs: Option<PathBuf>,
    /// The muster-agent binary served to booting nodes and installed by
    /// their user data [default: muster-agent next to this executable, if there]
    #[arg(long, env = "MUSTER_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,
    /// The agent's Debian package, served beside the binary (needs an agent binary)
    #[arg(long, env = "MUSTER_AGENT_DEB")]
    pub agent_deb: Option<PathBuf>,
}

/// The `[serve]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServe {
    listen: Option<String>,
    dns_listen: Option<String>,
    zone: Option<String>,
    data_dir: Option<PathBuf>,
    public_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    heartbeat_interval: Option<String>,
    dns_ttl: Option<toml::Value>,
    grace: Option<String>,
    sweep_interval: Option<String>,
    ec2_cache_refresh: Option<String>,
    unknown_sweeps: Option<toml::Value>,
    launch_timeout: Option<String>,
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
    identity_certs: Option<PathBuf>,
    agent_binary: Option<PathBuf>,
    agent_deb: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    serve: FileServe,
}

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
    /// URL agents use.
    pub public_url: String,
    /// Host part of `public_url`.
    pub public_host: String,
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
    /// Where the records go.
    pub dns_provider: DnsProvider,
    /// Time between full reconciles with an external DNS provider.
    pub dns_reconcile_interval: Duration,
    /// The owner id given with `--dns-owner-id`; `None` means the one kept
    /// in the data dir.
    pub dns_owner_id: Option<String>,
    /// Who may speak for a node.
    pub trust: Trust,
    /// The agent served to booting nodes: binary, and package if any;
    /// `None` when there is none (the image must carry it).
    pub agent: Option<(PathBuf, Option<PathBuf>)>,
}

/// Who may speak for a node, beyond its credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Refuse agent requests from a source address that is not one of the
    /// node's (after [`Trust::trusted_proxies`]).
    pub verify_source: bool,
    /// Peers whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<Ipv4Cidr>,
    /// Reserved ranges accepted as public addresses anyway.
    pub public_ipv4_allow: Vec<Ipv4Cidr>,
    /// Agent requests per second from one source; 0 is no limit.
    pub agent_rate_limit: u32,
    /// Signers of instance identity documents; when set, every EC2
    /// register must carry one they signed.
    pub identity_certs: Option<IdentityCerts>,
}

/// Which server holds the zone's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsProvider {
    /// The coordinator's own authoritative server.
    Embedded,
    /// RFC 2136 updates, signed with TSIG, to an existing primary.
    Rfc2136(Rfc2136Settings),
    /// An Amazon Route53 hosted zone.
    Route53(Route53Settings),
}

impl DnsProvider {
    /// `embedded`, `rfc2136` or `route53`.
    pub fn kind(&self) -> &'static str {
        match self {
            DnsProvider::Embedded => "embedded",
            DnsProvider::Rfc2136(_) => "rfc2136",
            DnsProvider::Route53(_) => "route53",
        }
    }
}

/// Settings of the Route53 provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route53Settings {
    /// The hosted zone.
    pub zone: Route53Zone,
}

/// A hosted zone as the operator named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route53Zone {
    /// By id (`Z…`, without `/hostedzone/`); its name is checked at start.
    Id(String),
    /// By name (lowercase, no trailing dot): the coordinator's zone or a
    /// parent of it; it must name exactly one hosted zone.
    Name(String),
}

impl std::fmt::Display for Route53Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route53Zone::Id(id) => write!(f, "hosted zone {id}"),
            Route53Zone::Name(name) => write!(f, "hosted zone {name}"),
        }
    }
}

impl Route53Zone {
    /// Reads `--route53-zone`: an id (upper-case letters and digits, with or
    /// without `/hostedzone/`), else a DNS name that must be `zone` or a
    /// parent of it.
    fn parse(text: &str, zone: &str) -> Result<Route53Zone, Invalid> {
        let trimmed = text.trim();
        let id = trimmed.strip_prefix("/hostedzone/").unwrap_or(trimmed);
        if !id.is_empty()
            && id.len() <= 32
            && id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return Ok(Route53Zone::Id(id.to_owned()));
        }
        let name = trimmed.trim_end_matches('.').to_ascii_lowercase();
        muster_proto::validate::dns_name("route53_zone", &name).map_err(|e| {
            Invalid::whole(
                "route53_zone",
                text,
                format!(
                    "is neither a hosted zone id (Z…) nor a DNS name: {}",
                    e.reason
                ),
            )
        })?;
        if zone != name && !zone.ends_with(&format!(".{name}")) {
            return Err(Invalid::whole(
                "route53_zone",
                text,
                format!("must be the coordinator's zone ({zone}) or a parent of it"),
            ));
        }
        Ok(Route53Zone::Name(name))
    }
}

/// Checks an owner id: 1 to 64 of `a-z A-Z 0-9 - _ .`, so that it reads the
/// same inside the ownership TXT (`heritage=muster,muster/owner=<id>`).
pub fn validate_owner_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters long");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// Settings of the RFC 2136 provider.
#[derive(Clone, PartialEq, Eq)]
pub struct Rfc2136Settings {
    /// `HOST:PORT` of the primary.
    pub server: String,
    /// The zone on that server, lowercase, no trailing dot; the
    /// coordinator's zone is this one or beneath it.
    pub zone: String,
    /// The TSIG key's name.
    pub key_name: String,
    /// The TSIG algorithm.
    pub algorithm: TsigAlgorithm,
    /// The TSIG secret, decoded.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Rfc2136Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Settings")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The TSIG algorithms muster signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    /// hmac-sha256
    HmacSha256,
    /// hmac-sha384
    HmacSha384,
    /// hmac-sha512
    HmacSha512,
}

impl TsigAlgorithm {
    /// The name BIND and `--tsig-algorithm` use.
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

impl std::str::FromStr for TsigAlgorithm {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            _ => Err("must be hmac-sha256, hmac-sha384 or hmac-sha512"),
        }
    }
}

impl Settings {
    /// Merges flags, environment and the file, then validates.
    pub fn load(args: &ServeArgs) -> Result<Settings, Invalid> {
        let file = match &args.config {
            Some(path) => read_file(path, true)?,
            None => read_file(Path::new(DEFAULT_CONFIG), false)?,
        };
        Settings::resolve(args, file.serve)
    }

    /// The settings from `args` over the config file's text `toml` (as if
    /// `--config` named a file holding it).
    pub fn from_toml(args: &ServeArgs, toml: &str) -> Result<Settings, Invalid> {
        let file: File =
            toml::from_str(toml).map_err(|e| Invalid::whole("config", "(text)", e.message()))?;
        Settings::resolve(args, file.serve)
    }

    fn resolve(args: &ServeArgs, file: FileServe) -> Result<Settings, Invalid> {
        let pick = |flag: &Option<String>, file: Option<String>, default: &str| {
            flag.clone().or(file).unwrap_or_else(|| default.to_owned())
        };

        let listen_text = pick(&args.listen, file.listen, DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| Invalid::whole("listen", &listen_text, e))?;
        let dns_text = pick(&args.dns_listen, file.dns_listen, DEFAULT_DNS_LISTEN);
        let dns_listen: SocketAddr = dns_text
            .parse()
            .map_err(|e| Invalid::whole("dns_listen", &dns_text, e))?;

        let zone_text = pick(&args.zone, file.zone, DEFAULT_ZONE);
        let zone = zone_text.trim_end_matches('.').to_ascii_lowercase();
        muster_proto::validate::dns_name("zone", &zone)
            .map_err(|e| Invalid::whole("zone", &zone_text, e.reason))?;

        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(Invalid::whole("data_dir", "", "must not be empty"));
        }

        let public_url = args
            .public_url
            .clone()
            .or(file.public_url)
            .unwrap_or_else(|| format!("https://{}:{}", hostname(), listen.port()));
        let public_host = url_host(&public_url)
            .map_err(|reason| Invalid::whole("public_url", &public_url, reason))?;

        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                for (name, path) in [("tls_cert", &cert), ("tls_key", &key)] {
                    if !path.is_file() {
                        return Err(Invalid::whole(
                            name,
                            path.display().to_string(),
                            "is not a readable file",
                        ));
                    }
                }
                Some((cert, key))
            }
            (Some(cert), None) => {
                return Err(Invalid::whole(
                    "tls_key",
                    "",
                    format!("is needed with tls_cert={}", cert.display()),
                ))
            }
            (None, Some(key)) => {
                return Err(Invalid::whole(
                    "tls_cert",
                    "",
                    format!("is needed with tls_key={}", key.display()),
                ))
            }
        };

        let heartbeat_interval = duration(
            "heartbeat_interval",
            args.heartbeat_interval.clone().or(file.heartbeat_interval),
            DEFAULT_HEARTBEAT_INTERVAL,
            (Duration::from_secs(1), Duration::from_secs(300)),
        )?;
        let grace_text = args.grace.clone().or(file.grace);
        let grace = duration(
            "grace",
            grace_text.clone(),
            DEFAULT_GRACE,
            (Duration::from_secs(1), Duration::from_secs(3600)),
        )?;
        // Agents wait up to interval + 10 % jitter between heartbeats.
        let longest_wait = heartbeat_interval + heartbeat_interval / 10;
        if grace <= longest_wait {
            return Err(Invalid::whole(
                "grace",
                grace_text.unwrap_or_else(|| humantime::format_duration(grace).to_string()),
                format!(
                    "must be longer than the heartbeat interval plus its jitter ({})",
                    humantime::format_duration(longest_wait)
                ),
            ));
        }
        let sweep_interval = duration(
            "sweep_interval",
            args.sweep_interval.clone().or(file.sweep_interval),
            DEFAULT_SWEEP_INTERVAL,
            (Duration::from_secs(1), Duration::from_secs(3600)),
        )?;
        let ec2_cache_refresh = match args.ec2_cache_refresh.clone().or(file.ec2_cache_refresh) {
            Some(text) if text == "off" => None,
            text @ Some(_) => Some(duration(
                "ec2_cache_refresh",
                text,
                Duration::ZERO,
                (Duration::from_secs(5), Duration::from_secs(3600)),
            )?),
            None => None,
        };
        let unknown_text = args
            .unknown_sweeps
            .clone()
            .or(file.unknown_sweeps.map(toml_text))
            .unwrap_or_else(|| DEFAULT_UNKNOWN_SWEEPS.to_string());
        let unknown_sweeps: u32 = unknown_text
            .parse()
            .map_err(|e| Invalid::whole("unknown_sweeps", &unknown_text, e))?;
        if !(1..=100).contains(&unknown_sweeps) {
            return Err(Invalid::whole(
                "unknown_sweeps",
                &unknown_text,
                "must be between 1 and 100",
            ));
        }

        let launch_timeout = duration(
            "launch_timeout",
            args.launch_timeout.clone().or(file.launch_timeout),
            DEFAULT_LAUNCH_TIMEOUT,
            (Duration::from_secs(1), Duration::from_secs(24 * 3600)),
        )?;

        let ttl_text = args
            .dns_ttl
            .clone()
            .or(file.dns_ttl.map(toml_text))
            .unwrap_or_else(|| DEFAULT_DNS_TTL.to_string());
        let dns_ttl: u32 = ttl_text
            .parse()
            .map_err(|e| Invalid::whole("dns_ttl", &ttl_text, e))?;
        if !(1..=86_400).contains(&dns_ttl) {
            return Err(Invalid::whole(
                "dns_ttl",
                &ttl_text,
                "must be between 1 and 86400 seconds",
            ));
        }

        let rfc2136 = Rfc2136Args {
            server: args.rfc2136_server.clone().or(file.rfc2136_server),
            zone: args.rfc2136_zone.clone().or(file.rfc2136_zone),
            key_name: args.tsig_key_name.clone().or(file.tsig_key_name),
            algorithm: args.tsig_algorithm.clone().or(file.tsig_algorithm),
            secret_file: args.tsig_secret_file.clone().or(file.tsig_secret_file),
        };
        let route53_zone = args.route53_zone.clone().or(file.route53_zone);
        let rfc2136_given = rfc2136.first_set();
        let provider_text = pick(&args.dns_provider, file.dns_provider, DEFAULT_DNS_PROVIDER);
        let dns_provider = match provider_text.as_str() {
            "embedded" => DnsProvider::Embedded,
            "rfc2136" => DnsProvider::Rfc2136(rfc2136.validate(&zone)?),
            "route53" => DnsProvider::Route53(Route53Settings {
                zone: Route53Zone::parse(route53_zone.as_deref().unwrap_or(&zone), &zone)?,
            }),
            _ => {
                return Err(Invalid::whole(
                    "dns_provider",
                    &provider_text,
                    "must be embedded, rfc2136 or route53",
                ))
            }
        };
        if !matches!(dns_provider, DnsProvider::Rfc2136(_)) {
            if let Some((name, value)) = rfc2136_given {
                return Err(Invalid::whole(
                    name,
                    value,
                    "is only used with dns_provider=rfc2136",
                ));
            }
        }
        if let (Some(value), false) = (
            &route53_zone,
            matches!(dns_provider, DnsProvider::Route53(_)),
        ) {
            return Err(Invalid::whole(
                "route53_zone",
                value,
                "is only used with dns_provider=route53",
            ));
        }
        let dns_owner_id = args.dns_owner_id.clone().or(file.dns_owner_id);
        if let Some(id) = &dns_owner_id {
            if dns_provider == DnsProvider::Embedded {
                return Err(Invalid::whole(
                    "dns_owner_id",
                    id,
                    "is only used with dns_provider=rfc2136 or route53",
                ));
            }
            validate_owner_id(id).map_err(|reason| Invalid::whole("dns_owner_id", id, reason))?;
        }
        let dns_reconcile_interval = duration(
            "dns_reconcile_interval",
            args.dns_reconcile_interval
                .clone()
                .or(file.dns_reconcile_interval),
            DEFAULT_DNS_RECONCILE_INTERVAL,
            (Duration::from_secs(1), Duration::from_secs(86_400)),
        )?;

        let verify_text = args
            .verify_source
            .clone()
            .or(file.verify_source.map(|b| b.to_string()))
            .unwrap_or_else(|| "false".into());
        let verify_source = match verify_text.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => true,
            "false" | "no" | "0" => false,
            _ => {
                return Err(Invalid::whole(
                    "verify_source",
                    &verify_text,
                    "must be true or false",
                ))
            }
        };
        let trusted_proxies = cidrs(
            "trusted_proxies",
            args.trusted_proxies
                .clone()
                .or(file.trusted_proxies.map(|v| v.join(","))),
        )?;
        let public_ipv4_allow = cidrs(
            "public_ipv4_allow",
            args.public_ipv4_allow
                .clone()
                .or(file.public_ipv4_allow.map(|v| v.join(","))),
        )?;
        let rate_text = args
            .agent_rate_limit
            .clone()
            .or(file.agent_rate_limit.map(toml_text))
            .unwrap_or_else(|| DEFAULT_AGENT_RATE_LIMIT.to_string());
        let agent_rate_limit: u32 = rate_text
            .parse()
            .map_err(|e| Invalid::whole("agent_rate_limit", &rate_text, e))?;
        if agent_rate_limit > 1_000_000 {
            return Err(Invalid::whole(
                "agent_rate_limit",
                &rate_text,
                "must be between 0 (no limit) and 1000000 requests per second",
            ));
        }
        let identity_certs = match args.identity_certs.clone().or(file.identity_certs) {
            Some(path) => Some(IdentityCerts::load(&path).map_err(|reason| {
                Invalid::whole("identity_certs", path.display().to_string(), reason)
            })?),
            None => None,
        };
        let agent = agent_files(
            args.agent_binary.clone().or(file.agent_binary),
            args.agent_deb.clone().or(file.agent_deb),
        )?;

        Ok(Settings {
            listen,
            dns_listen,
            zone,
            data_dir,
            public_url,
            public_host,
            tls,
            heartbeat_interval,
            dns_ttl,
            grace,
            sweep_interval,
            ec2_cache_refresh,
            unknown_sweeps,
            launch_timeout,
            dns_provider,
            dns_reconcile_interval,
            dns_owner_id,
            trust: Trust {
                verify_source,
                trusted_proxies,
                public_ipv4_allow,
                agent_rate_limit,
                identity_certs,
            },
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
        ];
        if !self.listen.ip().is_unspecified() {
            names.push(self.listen.ip().to_string());
        }
        names.sort();
        names.dedup();
        names
    }
}

/// The RFC 2136 settings as given, before validation.
struct Rfc2136Args {
    server: Option<String>,
    zone: Option<String>,
    key_name: Option<String>,
    algorithm: Option<String>,
    secret_file: Option<PathBuf>,
}

impl Rfc2136Args {
    /// The first one that is set, for refusing them with another provider.
    fn first_set(&self) -> Option<(&'static str, String)> {
        [
            ("rfc2136_server", self.server.clone()),
            ("rfc2136_zone", self.zone.clone()),
            ("tsig_key_name", self.key_name.clone()),
            ("tsig_algorithm", self.algorithm.clone()),
            (
                "tsig_secret_file",
                self.secret_file.as_ref().map(|p| p.display().to_string()),
            ),
        ]
        .into_iter()
        .find_map(|(name, value)| value.map(|v| (name, v)))
    }

    /// Validates against the coordinator's `zone`. A TSIG key is required:
    /// muster does not send unsigned updates.
    fn validate(self, zone: &str) -> Result<Rfc2136Settings, Invalid> {
        let needed =
            |name: &'static str| Invalid::whole(name, "", "is needed with dns_provider=rfc2136");
        let server = self.server.ok_or_else(|| needed("rfc2136_server"))?;
        host_port(&server).map_err(|reason| Invalid::whole("rfc2136_server", &server, reason))?;

        let zone_text = self.zone.unwrap_or_else(|| zone.to_owned());
        let update_zone = zone_text.trim_end_matches('.').to_ascii_lowercase();
        muster_proto::validate::dns_name("rfc2136_zone", &update_zone)
            .map_err(|e| Invalid::whole("rfc2136_zone", &zone_text, e.reason))?;
        if zone != update_zone && !zone.ends_with(&format!(".{update_zone}")) {
            return Err(Invalid::whole(
                "rfc2136_zone",
                &zone_text,
                format!("must be the coordinator's zone ({zone}) or a parent of it"),
            ));
        }

        let key_text = self.key_name.ok_or_else(|| needed("tsig_key_name"))?;
        let key_name = key_text.trim_end_matches('.').to_ascii_lowercase();
        muster_proto::validate::dns_name("tsig_key_name", &key_name)
            .map_err(|e| Invalid::whole("tsig_key_name", &key_text, e.reason))?;

        let algorithm_text = self
            .algorithm
            .unwrap_or_else(|| DEFAULT_TSIG_ALGORITHM.to_owned());
        let algorithm: TsigAlgorithm = algorithm_text
            .parse()
            .map_err(|reason| Invalid::whole("tsig_algorithm", &algorithm_text, reason))?;

        let path = self.secret_file.ok_or_else(|| needed("tsig_secret_file"))?;
        let secret = read_secret(&path).map_err(|reason| {
            Invalid::whole("tsig_secret_file", path.display().to_string(), reason)
        })?;
        Ok(Rfc2136Settings {
            server,
            zone: update_zone,
            key_name,
            algorithm,
            secret,
        })
    }
}

/// The agent files to serve: the binary given (an ELF executable of an EC2
/// architecture), else `muster-agent` next to this executable if it is
/// one; the package only beside a binary.
fn agent_files(
    binary: Option<PathBuf>,
    deb: Option<PathBuf>,
) -> Result<Option<(PathBuf, Option<PathBuf>)>, Invalid> {
    let binary = match binary {
        Some(path) => {
            agent_files::elf_arch(&path).map_err(|e| {
                Invalid::whole("agent_binary", path.display().to_string(), reason_of(&e))
            })?;
            Some(path)
        }
        None => {
            agent_files::beside_this_executable().filter(|path| agent_files::elf_arch(path).is_ok())
        }
    };
    if let Some(deb) = &deb {
        if binary.is_none() {
            return Err(Invalid::whole(
                "agent_deb",
                deb.display().to_string(),
                "is served only beside an agent binary: set agent_binary too",
            ));
        }
        agent_files::check_deb(deb)
            .map_err(|e| Invalid::whole("agent_deb", deb.display().to_string(), reason_of(&e)))?;
    }
    Ok(binary.map(|b| (b, deb)))
}

/// What is wrong with an agent file, without repeating its path.
fn reason_of(error: &agent_files::AgentFileError) -> String {
    match error {
        agent_files::AgentFileError::Read { source, .. } => source.to_string(),
        agent_files::AgentFileError::NotAgent { reason, .. } => (*reason).to_owned(),
    }
}

/// Checks `HOST:PORT` (`[v6]:PORT` for IPv6), port above zero.
fn host_port(text: &str) -> Result<(), &'static str> {
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or("must be HOST:PORT, e.g. 192.0.2.53:53")?;
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("has a port that is not between 1 and 65535"),
        Ok(_) => {}
    }
    if host.parse::<std::net::Ipv4Addr>().is_err()
        && muster_proto::validate::dns_name("host", &host.to_ascii_lowercase()).is_err()
    {
        return Err("has a host that is neither an IP address nor a DNS name");
    }
    Ok(())
}

/// Reads a TSIG secret: the file must not be readable by group or others,
/// and holds either the bare base64 secret or a BIND key file (as
/// `tsig-keygen` writes) whose `secret "…";` is taken.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;

    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a file".into());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "is readable by group or others (mode {mode:o}); chmod 600 it"
        ));
    }
    let text = read_text(path)?;
    let encoded = match text.find("secret") {
        Some(at) => text[at + "secret".len()..]
            .split('"')
            .nth(1)
            .ok_or("has a `secret` without a quoted value")?,
        None => text.trim(),
    };
    let secret = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("does not hold a base64 secret: {e}"))?;
    if secret.is_empty() {
        return Err("holds an empty secret".into());
    }
    Ok(secret)
}

/// A comma-separated list of IPv4 CIDRs; empty when not set.
fn cidrs(name: &'static str, text: Option<String>) -> Result<Vec<Ipv4Cidr>, Invalid> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse()
                .map_err(|e: InvalidCidr| Invalid::whole(name, &text, e.reason()))
        })
        .collect()
}

/// A number in the file may be written bare or quoted.
fn toml_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        other => other.to_string(),
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

/// Largest config or secret file read, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads `path`, refusing one over `max` bytes.
fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
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

/// [`read_capped`] for text.
fn read_text(path: &Path) -> Result<String, String> {
    String::from_utf8(read_capped(path, MAX_FILE_BYTES)?).map_err(|_| "is not UTF-8".into())
}

fn read_file(path: &Path, required: bool) -> Result<File, Invalid> {
    let text = match read_text(path) {
        Ok(text) => text,
        Err(_) if !path.exists() && !required => return Ok(File::default()),
        Err(e) => return Err(Invalid::whole("config", path.display().to_string(), e)),
    };
    toml::from_str(&text)
        .map_err(|e| Invalid::whole("config", path.display().to_string(), e.message()))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host of an `https://host[:port][/path]` URL.
fn url_host(url: &str) -> Result<String, &'static str> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("must start with https://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not carry user information");
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default().to_owned()
    } else {
        let mut parts = authority.rsplitn(2, ':');
        let last = parts.next().unwrap_or_default();
        match parts.next() {
            Some(host) => {
                last.parse::<u16>()
                    .map_err(|_| "has a port that is not a number")?;
                host.to_owned()
            }
            None => last.to_owned(),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if host.parse::<std::net::IpAddr>().is_err() {
        muster_proto::validate::dns_name("public_url", &host.to_ascii_lowercase())
            .map_err(|_| "has a host that is neither an IP address nor a DNS name")?;
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            config: Some(PathBuf::from("/dev/null")),
            ..ServeArgs::default()
        }
    }

    /// With nothing set, the documented defaults apply.
    #[test]
    fn defaults() {
        let s = Settings::load(&args()).unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.dns_listen, DEFAULT_DNS_LISTEN.parse().unwrap());
        assert_eq!(s.zone, "muster.internal");
        assert_eq!(s.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(s.dns_ttl, 30);
        assert_eq!(s.grace, Duration::from_secs(30));
        assert_eq!(s.sweep_interval, Duration::from_secs(30));
        assert_eq!(s.ec2_cache_refresh, None);
        assert_eq!(s.unknown_sweeps, 3);
        assert!(s.public_url.ends_with(":7443"));
    }

    /// The EC2 cache is off unless asked for; `off` turns a file's cache off.
    #[test]
    fn ec2_cache_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[serve]\nec2_cache_refresh = \"2m\"\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        let s = Settings::load(&a).unwrap();
        assert_eq!(s.ec2_cache_refresh, Some(Duration::from_secs(120)));
        a.ec2_cache_refresh = Some("off".into());
        assert_eq!(Settings::load(&a).unwrap().ec2_cache_refresh, None);
    }

    /// Flags win over the file; the file wins over defaults.
    #[test]
    fn precedence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[serve]\nzone = \"file.example\"\ndns_ttl = 60\nlisten = \"127.0.0.1:9\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        a.zone = Some("Flag.Example.".into());
        let s = Settings::load(&a).unwrap();
        assert_eq!(s.zone, "flag.example");
        assert_eq!(s.dns_ttl, 60);
        assert_eq!(s.listen, "127.0.0.1:9".parse().unwrap());
    }

    /// Each bad value names itself.
    #[test]
    fn bad_values_name_themselves() {
        type Case = (&'static str, fn(&mut ServeArgs));
        let cases: Vec<Case> = vec![
            ("listen", |a| a.listen = Some("nowhere".into())),
            ("dns_listen", |a| a.dns_listen = Some("1.2.3.4".into())),
            ("zone", |a| a.zone = Some("bad_zone".into())),
            ("public_url", |a| a.public_url = Some("http://x".into())),
            ("public_url", |a| {
                a.public_url = Some("https://x:port".into())
            }),
            ("heartbeat_interval", |a| {
                a.heartbeat_interval = Some("0s".into())
            }),
            ("heartbeat_interval", |a| {
                a.heartbeat_interval = Some("soon".into())
            }),
            ("dns_ttl", |a| a.dns_ttl = Some("0".into())),
            ("grace", |a| a.grace = Some("10s".into())),
            ("grace", |a| a.grace = Some("2h".into())),
            ("sweep_interval", |a| a.sweep_interval = Some("0s".into())),
            ("ec2_cache_refresh", |a| {
                a.ec2_cache_refresh = Some("1s".into())
            }),
            ("ec2_cache_refresh", |a| {
                a.ec2_cache_refresh = Some("on".into())
            }),
            ("unknown_sweeps", |a| a.unknown_sweeps = Some("0".into())),
            ("launch_timeout", |a| a.launch_timeout = Some("0s".into())),
            ("launch_timeout", |a| a.launch_timeout = Some("2d".into())),
            ("tls_key", |a| a.tls_cert = Some("/etc/hostname".into())),
            ("config", |a| a.config = Some("/nonexistent/c.toml".into())),
            ("verify_source", |a| a.verify_source = Some("maybe".into())),
            ("trusted_proxies", |a| {
                a.trusted_proxies = Some("10.0.0.0/8,10.0.0.1/8".into())
            }),
            ("public_ipv4_allow", |a| {
                a.public_ipv4_allow = Some("127.0.0.0/33".into())
            }),
            ("agent_rate_limit", |a| {
                a.agent_rate_limit = Some("-1".into())
            }),
            ("agent_rate_limit", |a| {
                a.agent_rate_limit = Some("2000000".into())
            }),
            ("identity_certs", |a| {
                a.identity_certs = Some("/etc/hostname".into())
            }),
            ("identity_certs", |a| {
                a.identity_certs = Some("/nonexistent/aws.pem".into())
            }),
            ("agent_binary", |a| {
                a.agent_binary = Some("/nonexistent/muster-agent".into())
            }),
            ("agent_binary", |a| {
                a.agent_binary = Some("/etc/hostname".into())
            }),
            ("agent_deb", |a| {
                a.agent_binary = Some(std::env::current_exe().unwrap());
                a.agent_deb = Some("/etc/hostname".into())
            }),
        ];
        for (name, mutate) in cases {
            let mut a = args();
            mutate(&mut a);
            let err = Settings::load(&a).unwrap_err();
            assert_eq!(err.name, name, "{err}");
            assert!(err.to_string().starts_with(&format!("{name}=")), "{err}");
        }
    }

    /// The trust settings: off by default; lists from flags or the file.
    #[test]
    fn trust_settings() {
        let s = Settings::load(&args()).unwrap();
        assert_eq!(
            s.trust,
            Trust {
                agent_rate_limit: DEFAULT_AGENT_RATE_LIMIT,
                ..Trust::default()
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[serve]\nverify_source = true\ntrusted_proxies = [\"10.1.0.0/16\", \"192.168.0.10/32\"]\n\
             agent_rate_limit = 0\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        a.public_ipv4_allow = Some("127.0.0.0/8".into());
        let s = Settings::load(&a).unwrap();
        assert!(s.trust.verify_source);
        let block = |a, b, c, d, prefix| {
            Ipv4Cidr::new(std::net::Ipv4Addr::new(a, b, c, d), prefix).unwrap()
        };
        assert_eq!(
            s.trust.trusted_proxies,
            vec![block(10, 1, 0, 0, 16), block(192, 168, 0, 10, 32)]
        );
        assert_eq!(s.trust.public_ipv4_allow, vec![block(127, 0, 0, 0, 8)]);
        assert_eq!(s.trust.agent_rate_limit, 0);
        a.verify_source = Some("false".into());
        assert!(!Settings::load(&a).unwrap().trust.verify_source);
    }

    /// An agent binary given is served; a package is only served beside a
    /// binary.
    #[test]
    fn agent_files_are_checked() {
        let exe = std::env::current_exe().unwrap();
        let mut a = args();
        a.agent_binary = Some(exe.clone());
        assert_eq!(Settings::load(&a).unwrap().agent, Some((exe, None)));
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("muster-agent.deb");
        std::fs::write(&deb, b"!<arch>\ndebian-binary   1\n").unwrap();
        let mut a = args();
        a.agent_deb = Some(deb);
        if agent_files::beside_this_executable().is_none() {
            assert_eq!(Settings::load(&a).unwrap_err().name, "agent_deb");
        }
    }

    /// Unknown keys in the file are refused, not ignored.
    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[serve]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        let err = Settings::load(&a).unwrap_err();
        assert_eq!(err.name, "config");
        assert!(err.reason.contains("unknown field"), "{err}");
    }

    /// A secret file with mode 0600 holding `text`.
    fn secret_file(dir: &Path, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("tsig.key");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn rfc2136_args(secret: PathBuf) -> ServeArgs {
        ServeArgs {
            dns_provider: Some("rfc2136".into()),
            rfc2136_server: Some("127.0.0.1:5353".into()),
            tsig_key_name: Some("Muster-Key.".into()),
            tsig_secret_file: Some(secret),
            zone: Some("nodes.example.com".into()),
            ..args()
        }
    }

    /// The RFC 2136 settings load with their defaults; a BIND key file and
    /// a bare base64 secret both work.
    #[test]
    fn rfc2136_settings() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load(&rfc2136_args(secret_file(dir.path(), "c2VjcmV0\n"))).unwrap();
        assert_eq!(s.dns_reconcile_interval, Duration::from_secs(300));
        let DnsProvider::Rfc2136(r) = s.dns_provider else {
            panic!("rfc2136 expected");
        };
        assert_eq!(r.server, "127.0.0.1:5353");
        assert_eq!(r.zone, "nodes.example.com");
        assert_eq!(r.key_name, "muster-key");
        assert_eq!(r.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(r.secret, b"secret");
        assert!(
            !format!("{r:?}").contains("secret: ["),
            "the secret is not logged"
        );

        let bind_file = secret_file(
            dir.path(),
            "key \"muster-key\" {\n\talgorithm hmac-sha512;\n\tsecret \"c2VjcmV0\";\n};\n",
        );
        let mut a = rfc2136_args(bind_file);
        a.tsig_algorithm = Some("HMAC-SHA512".into());
        a.rfc2136_zone = Some("example.com".into());
        a.dns_reconcile_interval = Some("30s".into());
        let s = Settings::load(&a).unwrap();
        assert_eq!(s.dns_reconcile_interval, Duration::from_secs(30));
        let DnsProvider::Rfc2136(r) = s.dns_provider else {
            panic!("rfc2136 expected");
        };
        assert_eq!(r.zone, "example.com");
        assert_eq!(r.algorithm, TsigAlgorithm::HmacSha512);
        assert_eq!(r.secret, b"secret");
        assert_eq!(
            Settings::load(&args()).unwrap().dns_provider,
            DnsProvider::Embedded
        );
    }

    /// Each bad RFC 2136 value names itself.
    #[test]
    fn rfc2136_bad_values_name_themselves() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let good = secret_file(dir.path(), "c2VjcmV0");
        let open = dir.path().join("open.key");
        std::fs::write(&open, "c2VjcmV0").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let not_base64 = dir.path().join("junk.key");
        std::fs::write(&not_base64, "not base64!").unwrap();
        std::fs::set_permissions(&not_base64, std::fs::Permissions::from_mode(0o600)).unwrap();

        type Case = (&'static str, &'static str, Box<dyn Fn(&mut ServeArgs)>);
        let cases: Vec<Case> = vec![
            (
                "dns_provider",
                "must be",
                Box::new(|a| a.dns_provider = Some("route66".into())),
            ),
            (
                "rfc2136_server",
                "is needed",
                Box::new(|a| a.rfc2136_server = None),
            ),
            (
                "rfc2136_server",
                "HOST:PORT",
                Box::new(|a| a.rfc2136_server = Some("ns1".into())),
            ),
            (
                "rfc2136_server",
                "port",
                Box::new(|a| a.rfc2136_server = Some("ns1:0".into())),
            ),
            (
                "rfc2136_server",
                "host",
                Box::new(|a| a.rfc2136_server = Some("bad_host:53".into())),
            ),
            (
                "rfc2136_zone",
                "parent",
                Box::new(|a| a.rfc2136_zone = Some("other.example".into())),
            ),
            (
                "rfc2136_zone",
                "label",
                Box::new(|a| a.rfc2136_zone = Some("bad_zone".into())),
            ),
            (
                "tsig_key_name",
                "is needed",
                Box::new(|a| a.tsig_key_name = None),
            ),
            (
                "tsig_algorithm",
                "hmac-sha256",
                Box::new(|a| a.tsig_algorithm = Some("hmac-md5".into())),
            ),
            (
                "tsig_secret_file",
                "is needed",
                Box::new(|a| a.tsig_secret_file = None),
            ),
            ("tsig_secret_file", "chmod 600", {
                let open = open.clone();
                Box::new(move |a| a.tsig_secret_file = Some(open.clone()))
            }),
            ("tsig_secret_file", "base64", {
                let junk = not_base64.clone();
                Box::new(move |a| a.tsig_secret_file = Some(junk.clone()))
            }),
            (
                "tsig_secret_file",
                "No such file",
                Box::new(|a| a.tsig_secret_file = Some("/nonexistent/k".into())),
            ),
            (
                "dns_reconcile_interval",
                "between",
                Box::new(|a| a.dns_reconcile_interval = Some("0s".into())),
            ),
            (
                "rfc2136_server",
                "only used with",
                Box::new(|a| a.dns_provider = None),
            ),
        ];
        for (name, reason, mutate) in cases {
            let mut a = rfc2136_args(good.clone());
            mutate(&mut a);
            let err = Settings::load(&a).unwrap_err();
            assert_eq!(err.name, name, "{err}");
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    /// Route53 takes a hosted zone by id or by name (default: `--zone`), and
    /// an owner id override with any external provider.
    #[test]
    fn route53_settings() {
        let route53 = |zone: Option<&str>| {
            let mut a = args();
            a.zone = Some("nodes.example.com".into());
            a.dns_provider = Some("route53".into());
            a.route53_zone = zone.map(str::to_owned);
            Settings::load(&a)
        };
        let zone_of = |s: Settings| match s.dns_provider {
            DnsProvider::Route53(r) => r.zone,
            other => panic!("route53 expected, got {other:?}"),
        };
        assert_eq!(
            zone_of(route53(None).unwrap()),
            Route53Zone::Name("nodes.example.com".into())
        );
        assert_eq!(
            zone_of(route53(Some("Example.COM.")).unwrap()),
            Route53Zone::Name("example.com".into())
        );
        assert_eq!(
            zone_of(route53(Some("/hostedzone/Z0123456789ABC")).unwrap()),
            Route53Zone::Id("Z0123456789ABC".into())
        );
        assert_eq!(
            zone_of(route53(Some("Z0123456789ABC")).unwrap()),
            Route53Zone::Id("Z0123456789ABC".into())
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[serve]\nzone = \"nodes.example.com\"\ndns_provider = \"route53\"\n\
             route53_zone = \"example.com\"\ndns_owner_id = \"coord-a\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        let s = Settings::load(&a).unwrap();
        assert_eq!(s.dns_owner_id.as_deref(), Some("coord-a"));
        assert_eq!(s.dns_provider.kind(), "route53");
        assert_eq!(zone_of(s), Route53Zone::Name("example.com".into()));
    }

    /// Each bad Route53 or owner id value names itself.
    #[test]
    fn route53_bad_values_name_themselves() {
        type Case = (&'static str, &'static str, fn(&mut ServeArgs));
        let cases: Vec<Case> = vec![
            ("route53_zone", "parent", |a| {
                a.route53_zone = Some("other.example".into())
            }),
            ("route53_zone", "neither", |a| {
                a.route53_zone = Some("bad_zone".into())
            }),
            ("route53_zone", "only used with", |a| a.dns_provider = None),
            ("dns_owner_id", "only letters", |a| {
                a.dns_owner_id = Some("a,b=c".into())
            }),
            ("dns_owner_id", "1 to 64", |a| {
                a.dns_owner_id = Some(String::new())
            }),
            ("dns_owner_id", "1 to 64", |a| {
                a.dns_owner_id = Some("x".repeat(65))
            }),
            ("dns_owner_id", "only used with", |a| {
                a.dns_provider = Some("embedded".into());
                a.route53_zone = None;
                a.dns_owner_id = Some("ok".into());
            }),
            ("rfc2136_server", "only used with", |a| {
                a.rfc2136_server = Some("127.0.0.1:53".into())
            }),
            ("dns_provider", "route53", |a| {
                a.dns_provider = Some("route66".into())
            }),
        ];
        for (name, reason, mutate) in cases {
            let mut a = args();
            a.zone = Some("nodes.example.com".into());
            a.dns_provider = Some("route53".into());
            a.route53_zone = Some("example.com".into());
            mutate(&mut a);
            let err = Settings::load(&a).unwrap_err();
            assert_eq!(err.name, name, "{err}");
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    /// URL hosts are extracted for the certificate.
    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://coord.example:7443/x").unwrap(),
            "coord.example"
        );
        assert_eq!(url_host("https://10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(url_host("https://[::1]:7443").unwrap(), "::1");
        assert!(url_host("https://").is_err());
        assert!(url_host("https://u@h").is_err());
    }
}
