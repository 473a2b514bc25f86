//! An IMDSv2 client: just what the agent reads about its instance.
//!
//! IMDSv2 only, with no IMDSv1 fallback: a missing token endpoint is a
//! misconfiguration to report, not to work around. The IMDSv2 token comes
//! from `PUT /latest/api/token` (TTL six hours), is cached, renewed a minute
//! before it expires, and dropped and fetched again when IMDS answers 401.
//! A 404 means the item is absent (e.g. `public-ipv4` with no public IP) and
//! reads as `Ok(None)`.
//!
//! The endpoint is `AWS_EC2_METADATA_SERVICE_ENDPOINT` (see
//! [`crate::settings`]), default `http://169.254.169.254`. Proxies are never
//! used for it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use muster_proto::{validate, SignedIdentity};
use reqwest::StatusCode;
use tokio::sync::Mutex;
use tracing::debug;

use crate::backoff::Backoff;

#[cfg(test)]
pub(crate) mod loopback;
#[cfg(test)]
mod tests;

/// How long an IMDSv2 token lives, in seconds (the IMDS maximum).
pub const TOKEN_TTL_SECS: u64 = 21_600;
/// A token is renewed this long before it would expire.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(60);
/// Each request to IMDS gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per read, the first included.
const ATTEMPTS: u32 = 4;
/// IMDS values are short; anything longer than this is cut.
const MAX_VALUE_BYTES: usize = 4096;

/// Paths under `/latest/`.
pub mod paths {
    /// The instance id.
    pub const INSTANCE_ID: &str = "meta-data/instance-id";
    /// The availability zone.
    pub const AVAILABILITY_ZONE: &str = "meta-data/placement/availability-zone";
    /// The region.
    pub const REGION: &str = "meta-data/placement/region";
    /// The primary private IPv4.
    pub const LOCAL_IPV4: &str = "meta-data/local-ipv4";
    /// The public IPv4 (404 when there is none).
    pub const PUBLIC_IPV4: &str = "meta-data/public-ipv4";
    /// The MAC address of the primary network interface.
    pub const MAC: &str = "meta-data/mac";

    /// The IPv6 addresses of the interface with MAC address `mac`, one per
    /// line (404 when there are none).
    pub fn ipv6s(mac: &str) -> String {
        format!("meta-data/network/interfaces/macs/{mac}/ipv6s")
    }
    /// The instance identity document (JSON).
    pub const IDENTITY_DOCUMENT: &str = "dynamic/instance-identity/document";
    /// The identity document's PKCS7 signature (base64).
    pub const IDENTITY_PKCS7: &str = "dynamic/instance-identity/pkcs7";
}

/// Failures talking to IMDS.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    /// The HTTP client could not be built.
    #[error("cannot build the IMDS client")]
    BuildClient(#[source] reqwest::Error),
    /// `PUT /latest/api/token` failed to complete.
    #[error("cannot get an IMDSv2 token from {url}")]
    FetchToken {
        /// The token URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// `PUT /latest/api/token` was answered with an error.
    #[error("IMDS refused a token at {url} with {status}")]
    TokenRefused {
        /// The token URL.
        url: String,
        /// The answer.
        status: StatusCode,
    },
    /// A read failed to complete.
    #[error("cannot read {url}")]
    Read {
        /// What was read.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// A read was answered with an error.
    #[error("IMDS answered {status} for {url}")]
    ReadRefused {
        /// What was read.
        url: String,
        /// The answer.
        status: StatusCode,
    },
    /// Something every instance has is absent.
    #[error("IMDS has no {path}")]
    Missing {
        /// What was read.
        path: &'static str,
    },
    /// A value is not what EC2 gives.
    #[error("IMDS gave a bad {path}")]
    Invalid {
        /// What was read.
        path: &'static str,
        /// What is wrong with it.
        #[source]
        source: validate::ValidationError,
    },
}

impl ImdsError {
    /// Whether trying again may help: the request did not complete, or IMDS
    /// was busy or failing.
    fn is_transient(&self) -> bool {
        match self {
            ImdsError::FetchToken { .. } | ImdsError::Read { .. } => true,
            ImdsError::TokenRefused { status, .. } | ImdsError::ReadRefused { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// Where the instance can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// Primary private IPv4; none on an IPv6-only instance.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4, if any.
    pub public_ipv4: Option<Ipv4Addr>,
    /// The first IPv6 address of the primary interface, if any.
    pub ipv6: Option<Ipv6Addr>,
}

/// Who and where the instance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The instance id.
    pub instance_id: String,
    /// The availability zone.
    pub availability_zone: String,
    /// The region.
    pub region: String,
    /// The current addresses.
    pub addresses: Addresses,
    /// The identity document and its signature, when IMDS serves both.
    pub signed: Option<SignedIdentity>,
}

struct Token {
    value: String,
    renew_at: Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

/// An IMDSv2 client with a cached token.
#[derive(Debug)]
pub struct ImdsClient {
    http: reqwest::Client,
    endpoint: String,
    token: Mutex<Option<Token>>,
    /// The primary interface's MAC address, once read.
    mac: tokio::sync::OnceCell<String>,
}

impl ImdsClient {
    /// A client for the IMDS at `endpoint` (e.g. `http://169.254.169.254`).
    pub fn new(endpoint: &str) -> Result<Self, ImdsError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ImdsError::BuildClient)?;
        Ok(ImdsClient {
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            token: Mutex::new(None),
            mac: tokio::sync::OnceCell::new(),
        })
    }

    /// Reads `/latest/<path>`, trimmed: `Ok(None)` if IMDS says it is absent (404).
    ///
    /// Transient failures (no answer, 5xx, 429) are retried: up to four
    /// tries, with backoff ceilings of 0.1 s, 0.2 s, then 0.4 s between them
    /// (each wait drawn between zero and its ceiling), so a read gives up
    /// after about ten seconds at worst with the 2 s request timeout.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        Ok(self.get_exact(path).await?.map(|v| v.trim().to_owned()))
    }

    /// Like [`ImdsClient::get`], without trimming: for what is signed
    /// byte for byte, like the identity document.
    pub async fn get_exact(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400))
            .expect("constant bounds are valid");
        let mut attempt = 1;
        loop {
            match self.get_once(path).await {
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    let wait = backoff.next_delay();
                    debug!(path, attempt, ?wait, error = %crate::error_chain(&e), "IMDS read failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One read, with one retry on 401 with a fresh token.
    async fn get_once(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let url = format!("{}/latest/{}", self.endpoint, path.trim_start_matches('/'));
        let mut refreshed = false;
        loop {
            let token = self.token().await?;
            let response = self
                .http
                .get(&url)
                .header("X-aws-ec2-metadata-token", &token)
                .send()
                .await
                .map_err(|source| ImdsError::Read {
                    url: url.clone(),
                    source,
                })?;
            match response.status() {
                StatusCode::OK => {
                    let body = crate::read_body_capped(response, MAX_VALUE_BYTES)
                        .await
                        .map_err(|source| ImdsError::Read {
                            url: url.clone(),
                            source,
                        })?;
                    return Ok(Some(String::from_utf8_lossy(&body).into_owned()));
                }
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::UNAUTHORIZED if !refreshed => {
                    debug!(%url, "IMDS refused the token; fetching a new one");
                    self.drop_token(&token).await;
                    refreshed = true;
                }
                status => return Err(ImdsError::ReadRefused { url, status }),
            }
        }
    }

    /// The cached token, or a new one if there is none or it is about to
    /// expire.
    async fn token(&self) -> Result<String, ImdsError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.renew_at {
                return Ok(token.value.clone());
            }
        }
        let url = format!("{}/latest/api/token", self.endpoint);
        let asked_at = Instant::now();
        let response = self
            .http
            .put(&url)
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL_SECS.to_string(),
            )
            .send()
            .await
            .map_err(|source| ImdsError::FetchToken {
                url: url.clone(),
                source,
            })?;
        if response.status() != StatusCode::OK {
            return Err(ImdsError::TokenRefused {
                url,
                status: response.status(),
            });
        }
        let body = crate::read_body_capped(response, MAX_VALUE_BYTES)
            .await
            .map_err(|source| ImdsError::FetchToken {
                url: url.clone(),
                source,
            })?;
        let value = String::from_utf8_lossy(&body).trim().to_owned();
        *cached = Some(Token {
            value: value.clone(),
            renew_at: asked_at + Duration::from_secs(TOKEN_TTL_SECS) - TOKEN_RENEW_MARGIN,
        });
        Ok(value)
    }

    /// Forgets `stale` if it is still the cached token.
    async fn drop_token(&self, stale: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == stale) {
            *cached = None;
        }
    }

    /// Reads something every instance has.
    async fn require(&self, path: &'static str) -> Result<String, ImdsError> {
        self.get(path).await?.ok_or(ImdsError::Missing { path })
    }

    /// Reads who and where the instance is.
    pub async fn identity(&self) -> Result<Identity, ImdsError> {
        let (instance_id, availability_zone, region, signed, addresses) = tokio::try_join!(
            self.require(paths::INSTANCE_ID),
            self.require(paths::AVAILABILITY_ZONE),
            self.require(paths::REGION),
            self.signed_identity(),
            self.addresses(),
        )?;
        let mut identity = parse_identity(instance_id, availability_zone, region, addresses)?;
        identity.signed = signed;
        Ok(identity)
    }

    /// Reads the identity document and its signature
    /// ([`parse_signed_identity`]).
    pub async fn signed_identity(&self) -> Result<Option<SignedIdentity>, ImdsError> {
        let (document, pkcs7) = tokio::try_join!(
            self.get_exact(paths::IDENTITY_DOCUMENT),
            self.get(paths::IDENTITY_PKCS7),
        )?;
        parse_signed_identity(document, pkcs7)
    }

    /// Reads the current addresses: the private IPv4 (which only an
    /// IPv6-only instance may lack), the public IPv4 and the IPv6 address.
    pub async fn addresses(&self) -> Result<Addresses, ImdsError> {
        let (private, public, ipv6) = tokio::try_join!(
            self.get(paths::LOCAL_IPV4),
            self.get(paths::PUBLIC_IPV4),
            self.ipv6(),
        )?;
        parse_addresses(private.as_deref(), public.as_deref(), ipv6)
    }

    /// Reads the public IPv4 alone: `None` when the instance has none.
    pub async fn public_ipv4(&self) -> Result<Option<Ipv4Addr>, ImdsError> {
        let public = self.get(paths::PUBLIC_IPV4).await?;
        parse_public_ipv4(public.as_deref())
    }

    /// Reads the first IPv6 address of the primary interface, if it has
    /// one ([`parse_ipv6s`]). The interface's MAC address is read once and
    /// kept: an instance's primary interface is its for life. An IMDS that
    /// names no MAC address gives no IPv6 address.
    pub async fn ipv6(&self) -> Result<Option<Ipv6Addr>, ImdsError> {
        let mac = match self.mac.get() {
            Some(mac) => mac.clone(),
            None => {
                let Some(mac) = self.get(paths::MAC).await? else {
                    return Ok(None);
                };
                validate_mac(&mac)?;
                self.mac.get_or_init(|| async { mac }).await.clone()
            }
        };
        let listed = self.get(&paths::ipv6s(&mac)).await?;
        parse_ipv6s(listed.as_deref())
    }
}

/// Checks IMDS's answers for the identity: instance id, zone and region,
/// beside the addresses ([`parse_addresses`]). Every byte of them is
/// untrusted.
pub fn parse_identity(
    instance_id: String,
    availability_zone: String,
    region: String,
    addresses: Addresses,
) -> Result<Identity, ImdsError> {
    let invalid = |path| move |source| ImdsError::Invalid { path, source };
    validate::instance_id(&instance_id).map_err(invalid(paths::INSTANCE_ID))?;
    validate::availability_zone(&availability_zone).map_err(invalid(paths::AVAILABILITY_ZONE))?;
    validate::region(&region).map_err(invalid(paths::REGION))?;
    Ok(Identity {
        instance_id,
        availability_zone,
        region,
        addresses,
        signed: None,
    })
}

/// Checks IMDS's identity document and signature: both or neither (an
/// IMDS that serves one without the other gives neither to send), each
/// within [`SignedIdentity::validate`]'s bounds. The agent only carries
/// them; the coordinator checks the signature.
pub fn parse_signed_identity(
    document: Option<String>,
    pkcs7: Option<String>,
) -> Result<Option<SignedIdentity>, ImdsError> {
    let (Some(document), Some(pkcs7)) = (document, pkcs7) else {
        return Ok(None);
    };
    let signed = SignedIdentity { document, pkcs7 };
    signed.validate().map_err(|source| ImdsError::Invalid {
        path: paths::IDENTITY_PKCS7,
        source,
    })?;
    Ok(Some(signed))
}

/// Checks IMDS's answers for the addresses: `local-ipv4` must be a host
/// address, and may be absent only beside an IPv6 address (an IPv6-only
/// instance); `public-ipv4` absent or empty means none.
pub fn parse_addresses(
    local_ipv4: Option<&str>,
    public_ipv4: Option<&str>,
    ipv6: Option<Ipv6Addr>,
) -> Result<Addresses, ImdsError> {
    let private_ipv4 = match local_ipv4 {
        Some(text) => Some(parse_ipv4(paths::LOCAL_IPV4, "private_ipv4", text)?),
        // An IPv6-only instance has none; any other must.
        None if ipv6.is_some() => None,
        None => {
            return Err(ImdsError::Missing {
                path: paths::LOCAL_IPV4,
            })
        }
    };
    Ok(Addresses {
        private_ipv4,
        public_ipv4: parse_public_ipv4(public_ipv4)?,
        ipv6,
    })
}

/// Checks IMDS's answer for the public IPv4: none, or one address.
fn parse_public_ipv4(public_ipv4: Option<&str>) -> Result<Option<Ipv4Addr>, ImdsError> {
    match public_ipv4 {
        // An empty answer is how some IMDS emulations say "none".
        None | Some("") => Ok(None),
        Some(text) => parse_ipv4(paths::PUBLIC_IPV4, "public_ipv4", text).map(Some),
    }
}

/// Checks a MAC address from IMDS before it goes into a path: six pairs
/// of hex digits, separated by colons.
fn validate_mac(mac: &str) -> Result<(), ImdsError> {
    let ok = mac.len() == 17
        && mac.split(':').count() == 6
        && mac
            .split(':')
            .all(|pair| pair.len() == 2 && pair.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ImdsError::Invalid {
            path: paths::MAC,
            source: validate::ValidationError::new("mac", mac, "is not a MAC address"),
        })
    }
}

/// Checks IMDS's list of an interface's IPv6 addresses (absent: none) and
/// gives the first: it must be a global unicast address
/// ([`validate::host_ipv6`]).
pub fn parse_ipv6s(listed: Option<&str>) -> Result<Option<Ipv6Addr>, ImdsError> {
    let Some(first) = listed.and_then(|text| text.lines().map(str::trim).find(|l| !l.is_empty()))
    else {
        return Ok(None);
    };
    let invalid = |source| ImdsError::Invalid {
        path: "meta-data/network/interfaces/macs/<mac>/ipv6s",
        source,
    };
    let addr: Ipv6Addr = first.parse().map_err(|_| {
        invalid(validate::ValidationError::new(
            "ipv6",
            first,
            "is not an IPv6 address",
        ))
    })?;
    validate::host_ipv6("ipv6", addr).map_err(invalid)?;
    Ok(Some(addr))
}

fn parse_ipv4(path: &'static str, field: &str, text: &str) -> Result<Ipv4Addr, ImdsError> {
    let invalid = |source| ImdsError::Invalid { path, source };
    let addr: Ipv4Addr = text.parse().map_err(|_| {
        invalid(validate::ValidationError::new(
            field,
            text,
            "is not an IPv4 address",
        ))
    })?;
    validate::host_ipv4(field, addr).map_err(invalid)?;
    Ok(addr)
}
