//! The IMDS client against a small IMDSv2 server on loopback.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::Router;

use super::*;

/// What the fake IMDS holds and has seen.
#[derive(Debug, Default)]
struct Fake {
    /// Items under `/latest/`.
    items: HashMap<String, String>,
    /// Tokens it would accept.
    valid: Vec<String>,
    /// Tokens issued so far.
    issued: u32,
    /// Reads refused for lack of a valid token.
    refused: u32,
    /// Answer this many token requests with 503 first.
    token_failures: u32,
}

type Shared = Arc<Mutex<Fake>>;

async fn issue_token(State(fake): State<Shared>, headers: HeaderMap) -> (StatusCode, String) {
    let mut fake = fake.lock().unwrap();
    if headers
        .get("X-aws-ec2-metadata-token-ttl-seconds")
        .is_none()
    {
        return (StatusCode::BAD_REQUEST, String::new());
    }
    if fake.token_failures > 0 {
        fake.token_failures -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    fake.issued += 1;
    let token = format!("token-{}", fake.issued);
    fake.valid.push(token.clone());
    (StatusCode::OK, token)
}

async fn read_item(
    State(fake): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let mut fake = fake.lock().unwrap();
    let token = headers
        .get("X-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !fake.valid.iter().any(|t| t == token) {
        fake.refused += 1;
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    match fake.items.get(&path) {
        Some(value) => (StatusCode::OK, value.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// Starts the fake on 127.0.0.1:0 and returns its state and endpoint.
async fn start(items: &[(&str, &str)]) -> (Shared, String) {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        items: items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Fake::default()
    }));
    let app = Router::new()
        .route("/latest/api/token", put(issue_token))
        .route("/latest/{*path}", get(read_item))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}"))
}

const INSTANCE: [(&str, &str); 4] = [
    (paths::INSTANCE_ID, "i-0123456789abcdef0"),
    (paths::AVAILABILITY_ZONE, "us-east-1a"),
    (paths::REGION, "us-east-1"),
    (paths::LOCAL_IPV4, "10.0.0.5"),
];

/// Reads carry a token; the token is fetched once and then reused.
#[tokio::test]
async fn token_is_fetched_once_and_reused() {
    let (fake, endpoint) = start(&INSTANCE).await;
    let imds = ImdsClient::new(&endpoint).unwrap();
    let identity = imds.identity().await.unwrap();
    assert_eq!(identity.instance_id, "i-0123456789abcdef0");
    assert_eq!(identity.availability_zone, "us-east-1a");
    assert_eq!(identity.region, "us-east-1");
    assert_eq!(
        identity.addresses.private_ipv4,
        Some(Ipv4Addr::new(10, 0, 0, 5))
    );
    imds.addresses().await.unwrap();
    let fake = fake.lock().unwrap();
    assert_eq!(fake.issued, 1);
    assert_eq!(fake.refused, 0);
}

/// A read without a token is refused by the server, so the client never
/// reads without one: its first request is the token PUT.
#[tokio::test]
async fn reads_without_token_are_refused() {
    let (fake, endpoint) = start(&INSTANCE).await;
    let plain = reqwest::get(format!("{endpoint}/latest/{}", paths::INSTANCE_ID))
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::UNAUTHORIZED);
    let imds = ImdsClient::new(&endpoint).unwrap();
    assert_eq!(
        imds.get(paths::INSTANCE_ID).await.unwrap().as_deref(),
        Some("i-0123456789abcdef0")
    );
    assert_eq!(
        fake.lock().unwrap().refused,
        1,
        "only the plain read was refused"
    );
}

/// When IMDS stops accepting the cached token (401), the client drops it,
/// fetches a new one and retries the read.
#[tokio::test]
async fn unauthorized_refreshes_the_token() {
    let (fake, endpoint) = start(&INSTANCE).await;
    let imds = ImdsClient::new(&endpoint).unwrap();
    imds.get(paths::INSTANCE_ID).await.unwrap();
    fake.lock().unwrap().valid.clear();
    let value = imds.get(paths::LOCAL_IPV4).await.unwrap();
    assert_eq!(value.as_deref(), Some("10.0.0.5"));
    let fake = fake.lock().unwrap();
    assert_eq!(fake.issued, 2);
    assert_eq!(fake.refused, 1);
}

/// 404 means absent: no public IPv4 reads as `None`, not an error; a
/// public IPv4 that appears is then seen.
#[tokio::test]
async fn not_found_is_absent() {
    let (fake, endpoint) = start(&INSTANCE).await;
    let imds = ImdsClient::new(&endpoint).unwrap();
    assert_eq!(imds.get(paths::PUBLIC_IPV4).await.unwrap(), None);
    assert_eq!(imds.addresses().await.unwrap().public_ipv4, None);
    fake.lock()
        .unwrap()
        .items
        .insert(paths::PUBLIC_IPV4.to_owned(), "54.1.2.3".to_owned());
    assert_eq!(
        imds.addresses().await.unwrap().public_ipv4,
        Some(Ipv4Addr::new(54, 1, 2, 3))
    );
}

/// Something every instance has, when absent, is an error naming it.
#[tokio::test]
async fn missing_required_item_is_an_error() {
    let (_fake, endpoint) = start(&INSTANCE[..3]).await;
    let imds = ImdsClient::new(&endpoint).unwrap();
    let err = imds.identity().await.unwrap_err();
    assert!(
        matches!(err, ImdsError::Missing { path } if path == paths::LOCAL_IPV4),
        "{err:?}"
    );
}

/// A transient failure of the token endpoint is retried within the bound.
#[tokio::test]
async fn transient_token_failures_are_retried() {
    let (fake, endpoint) = start(&INSTANCE).await;
    fake.lock().unwrap().token_failures = 2;
    let imds = ImdsClient::new(&endpoint).unwrap();
    assert!(imds.get(paths::INSTANCE_ID).await.unwrap().is_some());
    fake.lock().unwrap().token_failures = 10;
    fake.lock().unwrap().valid.clear();
    let err = imds.get(paths::INSTANCE_ID).await.unwrap_err();
    assert!(
        matches!(err, ImdsError::TokenRefused { status, .. } if status == StatusCode::SERVICE_UNAVAILABLE)
    );
}

/// Values that are not what EC2 gives are refused.
#[tokio::test]
async fn bad_values_are_refused() {
    let (_fake, endpoint) = start(&[
        (paths::INSTANCE_ID, "i-0123456789abcdef0"),
        (paths::AVAILABILITY_ZONE, "us-east-1a"),
        (paths::REGION, "us-east-1"),
        (paths::LOCAL_IPV4, "10.0.0.5"),
        (paths::PUBLIC_IPV4, "not-an-ip"),
    ])
    .await;
    let imds = ImdsClient::new(&endpoint).unwrap();
    let err = imds.addresses().await.unwrap_err();
    assert!(matches!(err, ImdsError::Invalid { path, .. } if path == paths::PUBLIC_IPV4));
}

/// The identity document is passed on byte for byte (the signature covers
/// its bytes, trailing newline included) with its signature; with either
/// missing, neither is sent; a signature that is not base64 is refused.
#[tokio::test]
async fn signed_identity_is_read_exactly() {
    async fn identity(items: &[(&str, &str)]) -> Result<Identity, ImdsError> {
        let (_fake, endpoint) = start(items).await;
        ImdsClient::new(&endpoint).unwrap().identity().await
    }
    let document = "{\n  \"instanceId\" : \"i-0123456789abcdef0\"\n}\n";
    let signature = "MIAGCSqGSIb3DQEHAqCAMIACAQEx\nDzANBglghkgBZQMEAgEFADCABgkq";
    let mut items = INSTANCE.to_vec();
    items.push((paths::IDENTITY_DOCUMENT, document));
    let read = identity(&items).await.unwrap();
    assert_eq!(read.signed, None, "a document without a signature");

    let served = format!("{signature}\n");
    items.push((paths::IDENTITY_PKCS7, &served));
    let signed = identity(&items)
        .await
        .unwrap()
        .signed
        .expect("both are served");
    assert_eq!(signed.document, document);
    assert_eq!(signed.pkcs7, signature);

    items.pop();
    items.push((paths::IDENTITY_PKCS7, "-----BEGIN PKCS7-----"));
    let err = identity(&items).await.unwrap_err();
    assert!(matches!(err, ImdsError::Invalid { path, .. } if path == paths::IDENTITY_PKCS7));
}

/// The first IPv6 address of the primary interface is read through its MAC
/// (which must be one before it goes into a path); none without a MAC or
/// a list, and an address that is not global unicast is refused.
#[tokio::test]
async fn ipv6_is_read_through_the_mac() {
    let mac = "02:ab:cd:ef:01:23";
    let listed = paths::ipv6s(mac);
    let mut items = INSTANCE.to_vec();
    items.push((paths::MAC, mac));
    items.push((&listed, "2600:1f18:4f2:e100::5\n2600:1f18:4f2:e100::6\n"));
    let (_fake, endpoint) = start(&items).await;
    let imds = ImdsClient::new(&endpoint).unwrap();
    let expected: std::net::Ipv6Addr = "2600:1f18:4f2:e100::5".parse().unwrap();
    assert_eq!(
        imds.identity().await.unwrap().addresses.ipv6,
        Some(expected)
    );
    assert_eq!(imds.addresses().await.unwrap().ipv6, Some(expected));

    let (_fake, endpoint) = start(&INSTANCE).await;
    let imds = ImdsClient::new(&endpoint).unwrap();
    assert_eq!(
        imds.addresses().await.unwrap().ipv6,
        None,
        "no MAC, no IPv6"
    );

    let mut items = INSTANCE.to_vec();
    items.push((paths::MAC, "../../user-data"));
    let (_fake, endpoint) = start(&items).await;
    let err = ImdsClient::new(&endpoint)
        .unwrap()
        .ipv6()
        .await
        .unwrap_err();
    assert!(matches!(err, ImdsError::Invalid { path, .. } if path == paths::MAC));

    assert_eq!(parse_ipv6s(None).unwrap(), None);
    assert!(parse_ipv6s(Some("fe80::1")).is_err(), "link-local");
    assert!(parse_ipv6s(Some("not an address")).is_err());
}
