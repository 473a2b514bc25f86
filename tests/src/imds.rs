//! A strict IMDSv2 emulator for one emulated EC2 instance.
//!
//! It runs in the test process on `127.0.0.1:0` and answers from the
//! emulator's live view: every request calls DescribeInstances (and
//! DescribeInstanceAttribute for user data) on moto, so an Elastic IP
//! associated or a stop/start done in moto is what the agent reads next.
//!
//! Strict as the real service is with `HttpTokens=required`:
//! - `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds`
//!   between 1 and 21600 (400 otherwise) and answers a fresh token, echoing
//!   the TTL header; a token dies after its TTL.
//! - every `GET /latest/...` needs a live `X-aws-ec2-metadata-token`
//!   (401 otherwise); there is no IMDSv1 fallback.
//! - a value the instance does not have (public IPv4, user data) and any
//!   unknown path is 404.
//!
//! The identity document (`dynamic/instance-identity/document`) is built
//! from the live instance and signed (`…/pkcs7`, PKCS7 over its exact
//! bytes, base64 without armour, as EC2 serves it) by
//! [`IdentitySigner::shared`]: a key and self-signed certificate made once
//! per test process, standing in for AWS's. A coordinator given
//! [`IdentitySigner::certificate_pem`] as `--identity-certs` accepts it.
//!
//! Every version cloud-init asks for (`/2021-03-23/…`, `/2009-04-04/…`) is
//! served as `latest` is, and the rest of the metadata tree, with its
//! directory listings, comes from [`crate::imds_tree`], so cloud-init's
//! Ec2 datasource can crawl it as it crawls EC2's. [`Imds::log`] keeps
//! every request with its answer's status.
//!
//! Knobs for tests: [`Imds::set_public_ipv4_override`] makes it lie about the
//! public address, [`Imds::set_served`] serves EC2's warnings (a Spot
//! interruption, a rebalance recommendation), [`Imds::set_identity_signer`] and
//! [`Imds::set_identity_of`] about the identity document,
//! [`Imds::expire_tokens`] kills every token, and [`Imds::requests`] counts
//! what it was asked.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use base64::Engine as _;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::X509;

use crate::ec2::{try_describe, try_user_data, InstanceView};

/// The header a token request names its lifetime in, in seconds.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

/// The header every metadata request carries its token in.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// Longest token lifetime IMDS grants: six hours.
pub const MAX_TTL_SECS: u64 = 21_600;

/// A running IMDSv2 emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Imds {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    ec2: Client,
    instance_id: String,
    tokens: Mutex<HashMap<String, Instant>>,
    public_ipv4_override: Mutex<Option<Ipv4Addr>>,
    /// Who signs the identity document; `None` serves neither it nor a
    /// signature.
    signer: Mutex<Option<Arc<IdentitySigner>>>,
    /// Whose identity document to serve, if not this instance's.
    identity_of: Mutex<Option<String>>,
    /// Items a test set (EC2's warnings), by path below `/latest/`.
    served: Mutex<HashMap<String, String>>,
    requests: AtomicU64,
    /// `METHOD /path STATUS` of every request, in order.
    log: Mutex<Vec<String>>,
}

/// A key and self-signed certificate that sign identity documents, as
/// AWS's do for real instances.
pub struct IdentitySigner {
    cert: X509,
    key: PKey<Private>,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("subject", &self.cert.subject_name())
            .finish_non_exhaustive()
    }
}

impl IdentitySigner {
    /// A fresh key and certificate.
    pub fn generate() -> IdentitySigner {
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let params = rcgen::CertificateParams::new(vec!["ec2.amazonaws.com".to_owned()])
            .expect("valid certificate parameters");
        let cert = params.self_signed(&key).expect("a self-signed certificate");
        IdentitySigner {
            cert: X509::from_pem(cert.pem().as_bytes()).expect("rcgen writes PEM"),
            key: PKey::private_key_from_pem(key.serialize_pem().as_bytes())
                .expect("rcgen writes PEM"),
        }
    }

    /// The signer every emulator uses unless told otherwise: one per
    /// test process.
    pub fn shared() -> Arc<IdentitySigner> {
        static SHARED: OnceLock<Arc<IdentitySigner>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(IdentitySigner::generate()))
            .clone()
    }

    /// The certificate, PEM: what `--identity-certs` names.
    pub fn certificate_pem(&self) -> String {
        String::from_utf8(self.cert.to_pem().expect("a certificate writes as PEM"))
            .expect("PEM is ASCII")
    }

    /// The certificate in a PEM file kept for the life of the test
    /// process: what the harness's coordinators add with
    /// `--identity-certs`.
    pub fn shared_certificate_file() -> &'static std::path::Path {
        static FILE: OnceLock<tempfile::TempPath> = OnceLock::new();
        FILE.get_or_init(|| {
            let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
            std::io::Write::write_all(
                &mut file,
                IdentitySigner::shared().certificate_pem().as_bytes(),
            )
            .expect("writing the signer's certificate");
            file.into_temp_path()
        })
    }

    /// The identity document IMDS would serve an honest agent on the
    /// instance `req` claims (with `req`'s zone and private address), and
    /// its signature: what the agent puts in its register.
    pub fn identity_for(
        &self,
        req: &muster_proto::RegisterRequest,
    ) -> muster_proto::SignedIdentity {
        let document = identity_document(
            &req.instance_id,
            &req.availability_zone,
            req.private_ipv4,
            None,
        );
        muster_proto::SignedIdentity {
            pkcs7: self.sign(&document),
            document,
        }
    }

    /// The PKCS7 signature of `document`'s exact bytes, carrying the
    /// document and no certificate, base64 in lines of 64 as EC2 serves it.
    pub fn sign(&self, document: &str) -> String {
        let pkcs7 = Pkcs7::sign(
            &self.cert,
            &self.key,
            &Stack::new().expect("an empty stack"),
            document.as_bytes(),
            Pkcs7Flags::BINARY | Pkcs7Flags::NOCERTS,
        )
        .expect("signing with a matching key and certificate");
        let text = base64::engine::general_purpose::STANDARD
            .encode(pkcs7.to_der().expect("a signature writes as DER"));
        text.as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Imds {
    /// Serves instance `instance_id` of the emulator `ec2` talks to.
    pub async fn start(ec2: Client, instance_id: &str) -> Imds {
        Imds::start_on(ec2, instance_id, Ipv4Addr::LOCALHOST).await
    }

    /// Like [`Imds::start`], listening on `ip` (an address of a network
    /// namespace's veth, so an agent inside the namespace reaches it).
    pub async fn start_on(ec2: Client, instance_id: &str, ip: Ipv4Addr) -> Imds {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|e| panic!("binding the IMDS emulator to {ip}:0: {e}"));
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            ec2,
            instance_id: instance_id.to_owned(),
            tokens: Mutex::new(HashMap::new()),
            public_ipv4_override: Mutex::new(None),
            signer: Mutex::new(Some(IdentitySigner::shared())),
            identity_of: Mutex::new(None),
            served: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/latest/api/token", put(issue_token))
            .route("/{version}/{*path}", get(metadata))
            .fallback(not_found)
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                eprintln!("IMDS emulator on {addr} stopped: {error}");
            }
        });
        Imds {
            addr,
            shared,
            server,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The instance this emulator speaks for.
    pub fn instance_id(&self) -> &str {
        &self.shared.instance_id
    }

    /// Makes `meta-data/public-ipv4` answer `address` instead of what EC2
    /// says; `None` goes back to the truth.
    pub fn set_public_ipv4_override(&self, address: Option<Ipv4Addr>) {
        *lock(&self.shared.public_ipv4_override) = address;
    }

    /// Signs identity documents with `signer` from now on; `None` serves
    /// no document and no signature.
    pub fn set_identity_signer(&self, signer: Option<Arc<IdentitySigner>>) {
        *lock(&self.shared.signer) = signer;
    }

    /// Serves the identity document of `instance_id` (really signed) in
    /// place of this instance's; `None` goes back to the truth.
    pub fn set_identity_of(&self, instance_id: Option<&str>) {
        *lock(&self.shared.identity_of) = instance_id.map(str::to_owned);
    }

    /// Serves `value` at `path` (below `/latest/`, e.g.
    /// `meta-data/spot/instance-action`), as EC2 does when it warns an
    /// instance; `None` takes it away (404 again).
    pub fn set_served(&self, path: &str, value: Option<&str>) {
        let mut served = lock(&self.shared.served);
        match value {
            Some(value) => served.insert(path.to_owned(), value.to_owned()),
            None => served.remove(path),
        };
    }

    /// Forgets every token issued so far, as if they had all expired.
    pub fn expire_tokens(&self) {
        lock(&self.shared.tokens).clear();
    }

    /// Every request so far, `METHOD /path STATUS`, in order.
    pub fn log(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// How many requests of any kind were answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn issue_token(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let response = token_response(&shared, &headers);
    record(&shared, "PUT /latest/api/token", &response);
    response
}

/// Notes a request and its answer's status in the log.
fn record(shared: &Shared, request: &str, response: &Response) {
    lock(&shared.log).push(format!("{request} {}", response.status().as_u16()));
}

fn token_response(shared: &Shared, headers: &HeaderMap) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TTL_SECS).contains(ttl));
    let Some(ttl) = ttl else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{TTL_HEADER} must be an integer between 1 and {MAX_TTL_SECS}\n"),
        )
            .into_response();
    };
    let token: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let expires = Instant::now() + Duration::from_secs(ttl);
    {
        let mut tokens = lock(&shared.tokens);
        let now = Instant::now();
        tokens.retain(|_, expiry| *expiry > now);
        tokens.insert(token.clone(), expires);
    }
    let mut response = token.into_response();
    response
        .headers_mut()
        .insert(TTL_HEADER, HeaderValue::from(ttl));
    response
}

async fn metadata(
    State(shared): State<Arc<Shared>>,
    Path((version, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let response = metadata_response(&shared, &version, &path, &headers).await;
    record(&shared, &format!("GET /{version}/{path}"), &response);
    response
}

/// `latest`, or a dated version such as `2021-03-23`.
fn is_version(version: &str) -> bool {
    version == "latest"
        || (version.len() == 10
            && version.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            }))
}

async fn metadata_response(
    shared: &Shared,
    version: &str,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let token_ok = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|token| lock(&shared.tokens).get(token).copied())
        .is_some_and(|expiry| expiry > Instant::now());
    if !token_ok {
        return (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    }
    if !is_version(version) {
        return not_found_response();
    }
    match answer(shared, path).await {
        Ok(Some(body)) => body,
        Ok(None) => not_found_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the EC2 emulator did not answer: {error:#}\n"),
        )
            .into_response(),
    }
}

/// Where EC2's warnings live, below `/latest/`.
const WARNINGS: [&str; 3] = [
    "meta-data/spot/",
    "meta-data/events/",
    "meta-data/autoscaling/",
];

/// The value at `path` (below `/latest/`), `None` when the instance has none.
async fn answer(shared: &Shared, path: &str) -> anyhow::Result<Option<Response>> {
    let view = || try_describe(&shared.ec2, &shared.instance_id);
    let text = |value: String| Some(value.into_response());
    if let Some(value) = lock(&shared.served).get(path) {
        return Ok(text(value.clone()));
    }
    // EC2's warnings are absent until a test sets them, as on an instance
    // EC2 has nothing to say about; they are read every two seconds, so
    // they are answered without asking the emulator.
    if WARNINGS.iter().any(|prefix| path.starts_with(prefix)) {
        return Ok(None);
    }
    // The agent reads its MAC once and its IPv6 addresses at every poll:
    // answered from the one DescribeInstances, not the whole tree.
    if path == "meta-data/mac" {
        return Ok(view().await?.mac.map(|mac| mac.into_response()));
    }
    if let Some(mac) = path
        .strip_prefix("meta-data/network/interfaces/macs/")
        .and_then(|rest| rest.strip_suffix("/ipv6s"))
    {
        let view = view().await?;
        if view.mac.as_deref() != Some(mac) || view.ipv6.is_empty() {
            return Ok(None);
        }
        let listed: Vec<String> = view.ipv6.iter().map(|ip| ip.to_string()).collect();
        return Ok(text(listed.join("\n")));
    }
    Ok(match path {
        "meta-data/instance-id" => text(shared.instance_id.clone()),
        "meta-data/placement/availability-zone" => text(view().await?.availability_zone),
        "meta-data/placement/region" => text(region_of(&view().await?.availability_zone)),
        "meta-data/local-ipv4" => view()
            .await?
            .private_ipv4
            .and_then(|ip| text(ip.to_string())),
        "meta-data/public-ipv4" => {
            let lie = *lock(&shared.public_ipv4_override);
            match lie {
                Some(ip) => text(ip.to_string()),
                None => view()
                    .await?
                    .public_ipv4
                    .and_then(|ip| text(ip.to_string())),
            }
        }
        "user-data" => try_user_data(&shared.ec2, &shared.instance_id)
            .await?
            .map(IntoResponse::into_response),
        "dynamic/instance-identity/document" | "dynamic/instance-identity/pkcs7" => {
            let Some(signer) = lock(&shared.signer).clone() else {
                return Ok(None);
            };
            let whose = lock(&shared.identity_of)
                .clone()
                .unwrap_or_else(|| shared.instance_id.clone());
            let view = try_describe(&shared.ec2, &whose).await?;
            let document = identity_document(
                &whose,
                &view.availability_zone,
                view.private_ipv4,
                Some(&view),
            );
            if path.ends_with("pkcs7") {
                text(signer.sign(&document))
            } else {
                text(document)
            }
        }
        "dynamic/instance-identity" | "dynamic/instance-identity/" => lock(&shared.signer)
            .is_some()
            .then(|| "document\npkcs7".to_owned().into_response()),
        _ => match path.strip_prefix("meta-data") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                let tree = crate::imds_tree::tree(&shared.ec2, &shared.instance_id).await?;
                crate::imds_tree::lookup(&tree, rest.trim_start_matches('/')).map(|found| {
                    match found {
                        crate::imds_tree::Found::Leaf(value)
                        | crate::imds_tree::Found::Listing(value) => value.into_response(),
                    }
                })
            }
            _ => None,
        },
    })
}

/// The document EC2 writes for `instance_id` in `availability_zone`; the
/// image and type come from `view` when there is one.
fn identity_document(
    instance_id: &str,
    availability_zone: &str,
    private_ipv4: Option<Ipv4Addr>,
    view: Option<&InstanceView>,
) -> String {
    let document = serde_json::json!({
        "accountId": "123456789012",
        "architecture": "x86_64",
        "availabilityZone": availability_zone,
        "imageId": view.map(|v| v.image_id.as_str()),
        "instanceId": instance_id,
        "instanceType": view.map(|v| v.instance_type.as_str()),
        "privateIp": private_ipv4.map(|ip| ip.to_string()),
        "region": region_of(availability_zone),
        "version": "2017-09-30",
    });
    serde_json::to_string_pretty(&document).expect("a JSON value serialises")
}

/// `us-east-1a` → `us-east-1`.
fn region_of(availability_zone: &str) -> String {
    availability_zone
        .trim_end_matches(|c: char| c.is_ascii_lowercase())
        .to_owned()
}

async fn not_found(State(shared): State<Arc<Shared>>) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    not_found_response()
}

fn not_found_response() -> Response {
    (StatusCode::NOT_FOUND, "Not Found\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::region_of;

    /// Regions come from zones by dropping the zone letter.
    #[test]
    fn region_from_zone() {
        assert_eq!(region_of("us-east-1a"), "us-east-1");
        assert_eq!(region_of("eu-central-2c"), "eu-central-2");
    }
}
