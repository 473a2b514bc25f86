//! Where the coordinator listens and how it is reached: the API and DNS
//! addresses, its zone, its data dir, the URL agents are told, the URL the
//! other coordinators of a shared store reach it by, and the operator's
//! certificate if it serves one.

use std::net::SocketAddr;
use std::path::PathBuf;

use muster_proto::settings::Invalid;

use crate::sources::Given;
use crate::{DEFAULT_DATA_DIR, DEFAULT_DNS_LISTEN, DEFAULT_LISTEN, DEFAULT_ZONE};

/// The settings of this concern, checked.
#[derive(Debug)]
pub(crate) struct Endpoints {
    pub listen: SocketAddr,
    pub dns_listen: SocketAddr,
    pub zone: String,
    pub data_dir: PathBuf,
    pub public_url: String,
    pub public_host: String,
    pub advertise_url: String,
    pub advertise_host: String,
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Checks the addresses, the zone, the data dir, the public URL and the
/// certificate files, in that order.
pub(crate) fn resolve(given: &Given) -> Result<Endpoints, Invalid> {
    let or =
        |value: &Option<String>, default: &str| value.clone().unwrap_or_else(|| default.to_owned());
    let listen_text = or(&given.listen, DEFAULT_LISTEN);
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|e| Invalid::whole("listen", &listen_text, e))?;
    let dns_text = or(&given.dns_listen, DEFAULT_DNS_LISTEN);
    let dns_listen: SocketAddr = dns_text
        .parse()
        .map_err(|e| Invalid::whole("dns_listen", &dns_text, e))?;

    let zone_text = or(&given.zone, DEFAULT_ZONE);
    let zone = zone_text.trim_end_matches('.').to_ascii_lowercase();
    muster_proto::validate::dns_name("zone", &zone)
        .map_err(|e| Invalid::whole("zone", &zone_text, e.reason))?;

    let data_dir = given
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    if data_dir.as_os_str().is_empty() {
        return Err(Invalid::whole("data_dir", "", "must not be empty"));
    }

    let public_url = given
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{}:{}", hostname(), listen.port()));
    let public_host = url_host(&public_url)
        .map_err(|reason| Invalid::whole("public_url", &public_url, reason))?;
    let advertise_url = given
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("https://{}:{}", hostname(), listen.port()));
    let advertise_host = url_host(&advertise_url)
        .map_err(|reason| Invalid::whole("advertise_url", &advertise_url, reason))?;

    Ok(Endpoints {
        listen,
        dns_listen,
        zone,
        data_dir,
        public_url,
        public_host,
        advertise_url,
        advertise_host,
        tls: tls_files(given.tls_cert.clone(), given.tls_key.clone())?,
    })
}

/// The operator's certificate and key: both or neither, both files.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>, Invalid> {
    match (cert, key) {
        (None, None) => Ok(None),
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
            Ok(Some((cert, key)))
        }
        (Some(cert), None) => Err(Invalid::whole(
            "tls_key",
            "",
            format!("is needed with tls_cert={}", cert.display()),
        )),
        (None, Some(key)) => Err(Invalid::whole(
            "tls_cert",
            "",
            format!("is needed with tls_key={}", key.display()),
        )),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The host of an `https://host[:port][/path]` URL.
pub(crate) fn url_host(url: &str) -> Result<String, &'static str> {
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
