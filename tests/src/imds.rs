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
//! Knobs for tests: [`Imds::set_public_ipv4_override`] makes it lie about the
//! public address, [`Imds::expire_tokens`] kills every token, and
//! [`Imds::requests`] counts what it was asked.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;

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
    requests: AtomicU64,
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
            requests: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/latest/api/token", put(issue_token))
            .route("/latest/{*path}", get(metadata))
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

    /// Forgets every token issued so far, as if they had all expired.
    pub fn expire_tokens(&self) {
        lock(&self.shared.tokens).clear();
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
    Path(path): Path<String>,
    headers: HeaderMap,
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
    match answer(&shared, &path).await {
        Ok(Some(body)) => body,
        Ok(None) => not_found_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the EC2 emulator did not answer: {error:#}\n"),
        )
            .into_response(),
    }
}

/// The value at `path` (below `/latest/`), `None` when the instance has none.
async fn answer(shared: &Shared, path: &str) -> anyhow::Result<Option<Response>> {
    let view = || try_describe(&shared.ec2, &shared.instance_id);
    let text = |value: String| Some(value.into_response());
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
        "dynamic/instance-identity/document" => {
            Some(identity_document(&shared.instance_id, &view().await?).into_response())
        }
        _ => None,
    })
}

fn identity_document(instance_id: &str, view: &InstanceView) -> String {
    let document = serde_json::json!({
        "accountId": "123456789012",
        "architecture": "x86_64",
        "availabilityZone": view.availability_zone,
        "imageId": view.image_id,
        "instanceId": instance_id,
        "instanceType": view.instance_type,
        "privateIp": view.private_ipv4.map(|ip| ip.to_string()),
        "region": region_of(&view.availability_zone),
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
