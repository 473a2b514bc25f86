//! Where the zone's records go: the embedded server, RFC 2136 updates to
//! an existing primary (with a TSIG key), or a Route53 hosted zone; and
//! the DNS settings beside the provider (the TTL, the owner id written into
//! ownership records, the reconcile interval).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_proto::settings::Invalid;

use crate::sources::{read_text, Given};
use crate::{duration, number};
use crate::{
    DEFAULT_DNS_PROVIDER, DEFAULT_DNS_RECONCILE_INTERVAL, DEFAULT_DNS_TTL, DEFAULT_TSIG_ALGORITHM,
};

/// The settings of this concern, checked.
#[derive(Debug)]
pub(crate) struct Dns {
    pub ttl: u32,
    pub provider: DnsProvider,
    pub reconcile_interval: Duration,
    pub owner_id: Option<String>,
}

/// Checks the TTL, the provider and its settings (against the
/// coordinator's `zone`), the owner id and the reconcile interval, in that
/// order.
pub(crate) fn resolve(given: &Given, zone: &str) -> Result<Dns, Invalid> {
    let ttl = number(
        "dns_ttl",
        given.dns_ttl.clone(),
        DEFAULT_DNS_TTL,
        1..=86_400,
        "must be between 1 and 86400 seconds",
    )?;
    let provider = provider(given, zone)?;
    let owner_id = given.dns_owner_id.clone();
    if let Some(id) = &owner_id {
        if provider == DnsProvider::Embedded {
            return Err(Invalid::whole(
                "dns_owner_id",
                id,
                "is only used with dns_provider=rfc2136 or route53",
            ));
        }
        validate_owner_id(id).map_err(|reason| Invalid::whole("dns_owner_id", id, reason))?;
    }
    let reconcile_interval = duration(
        "dns_reconcile_interval",
        given.dns_reconcile_interval.clone(),
        DEFAULT_DNS_RECONCILE_INTERVAL,
        (Duration::from_secs(1), Duration::from_secs(86_400)),
    )?;
    Ok(Dns {
        ttl,
        provider,
        reconcile_interval,
        owner_id,
    })
}

/// The provider asked for, with its own settings; a setting of another
/// provider is refused rather than ignored.
fn provider(given: &Given, zone: &str) -> Result<DnsProvider, Invalid> {
    let rfc2136 = Rfc2136Args {
        server: given.rfc2136_server.clone(),
        zone: given.rfc2136_zone.clone(),
        key_name: given.tsig_key_name.clone(),
        algorithm: given.tsig_algorithm.clone(),
        secret_file: given.tsig_secret_file.clone(),
    };
    let route53_zone = given.route53_zone.clone();
    let rfc2136_given = rfc2136.first_set();
    let provider_text = given
        .dns_provider
        .clone()
        .unwrap_or_else(|| DEFAULT_DNS_PROVIDER.to_owned());
    let provider = match provider_text.as_str() {
        "embedded" => DnsProvider::Embedded,
        "rfc2136" => DnsProvider::Rfc2136(rfc2136.validate(zone)?),
        "route53" => DnsProvider::Route53(Route53Settings {
            zone: Route53Zone::parse(route53_zone.as_deref().unwrap_or(zone), zone)?,
        }),
        _ => {
            return Err(Invalid::whole(
                "dns_provider",
                &provider_text,
                "must be embedded, rfc2136 or route53",
            ))
        }
    };
    if !matches!(provider, DnsProvider::Rfc2136(_)) {
        if let Some((name, value)) = rfc2136_given {
            return Err(Invalid::whole(
                name,
                value,
                "is only used with dns_provider=rfc2136",
            ));
        }
    }
    if let (Some(value), false) = (&route53_zone, matches!(provider, DnsProvider::Route53(_))) {
        return Err(Invalid::whole(
            "route53_zone",
            value,
            "is only used with dns_provider=route53",
        ));
    }
    Ok(provider)
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
