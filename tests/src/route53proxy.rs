//! An AWS endpoint in front of moto for Route53 stories: it passes every
//! request through (Route53's REST paths and EC2's query calls alike, so a
//! coordinator can use it as its one `AWS_ENDPOINT_URL`), counts the calls
//! by operation, keeps the body of every ChangeResourceRecordSets so a
//! story can check each request against Route53's limits, adds up the time
//! moto took per operation, and answers the first K
//! ChangeResourceRecordSets with Route53's throttling error, as a busy
//! account sees. moto never throttles, so this is how stories and the
//! benchmark reach the retry path.
//!
//! Sibling of [`crate::ec2proxy`], which refuses EC2 calls instead.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// The operation name of ChangeResourceRecordSets.
pub const CHANGE: &str = "ChangeResourceRecordSets";

/// Route53's answer to a caller over its rate.
const THROTTLING: &str = "<?xml version=\"1.0\"?>\n<ErrorResponse \
    xmlns=\"https://route53.amazonaws.com/doc/2013-04-01/\"><Error><Type>Sender</Type>\
    <Code>Throttling</Code><Message>Rate exceeded</Message></Error>\
    <RequestId>5c4e6ad1-0000-0000-0000-000000000000</RequestId></ErrorResponse>";

#[derive(Debug, Default)]
struct Seen {
    calls: BTreeMap<String, usize>,
    upstream: BTreeMap<String, Duration>,
    change_bodies: Vec<String>,
    throttled: usize,
}

#[derive(Clone)]
struct Shared {
    moto: String,
    http: reqwest::Client,
    throttle_left: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
}

/// The running proxy; stops when dropped.
#[derive(Debug)]
pub struct Route53Proxy {
    port: u16,
    throttle_left: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// What Route53 counts of one ChangeResourceRecordSets request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchCost {
    /// `Change` elements.
    pub changes: usize,
    /// `ResourceRecord` elements, an UPSERT's counted twice.
    pub records: usize,
    /// Characters of values, an UPSERT's counted twice.
    pub chars: usize,
}

impl Route53Proxy {
    /// Starts a proxy to the moto server at `moto` on a free loopback port,
    /// answering the first `throttle` ChangeResourceRecordSets with
    /// `Throttling`.
    pub async fn start(moto: String, throttle: usize) -> Route53Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the Route53 proxy");
        let port = listener
            .local_addr()
            .expect("the Route53 proxy's address")
            .port();
        let throttle_left = Arc::new(AtomicUsize::new(throttle));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Shared {
            moto,
            http: reqwest::Client::new(),
            throttle_left: throttle_left.clone(),
            seen: seen.clone(),
        };
        let router = Router::new().fallback(forward).with_state(shared);
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the Route53 proxy runs");
        });
        Route53Proxy {
            port,
            throttle_left,
            seen,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers the next `k` ChangeResourceRecordSets with `Throttling`.
    pub fn throttle_next(&self, k: usize) {
        self.throttle_left.store(k, Ordering::SeqCst);
    }

    /// Calls seen so far, by operation (throttled ones included).
    pub fn calls(&self) -> BTreeMap<String, usize> {
        self.seen.lock().expect("proxy lock").calls.clone()
    }

    /// Time moto took so far, by operation.
    pub fn upstream_time(&self) -> BTreeMap<String, Duration> {
        self.seen.lock().expect("proxy lock").upstream.clone()
    }

    /// ChangeResourceRecordSets answered with `Throttling` so far.
    pub fn throttled(&self) -> usize {
        self.seen.lock().expect("proxy lock").throttled
    }

    /// What each ChangeResourceRecordSets passed to moto counted.
    pub fn change_costs(&self) -> Vec<BatchCost> {
        self.seen
            .lock()
            .expect("proxy lock")
            .change_bodies
            .iter()
            .map(|body| batch_cost(body))
            .collect()
    }

    /// Forgets everything seen.
    pub fn reset(&self) {
        *self.seen.lock().expect("proxy lock") = Seen::default();
    }
}

impl Drop for Route53Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operation a request is, from its method and path (Route53's REST
/// API) or its `Action` (EC2's query API).
fn operation(method: &Method, path: &str, body: &[u8]) -> String {
    if let Some(rest) = path.strip_prefix("/2013-04-01/") {
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let name = match (method.as_str(), parts.as_slice()) {
            ("POST", ["hostedzone", _, "rrset"]) => CHANGE,
            ("GET", ["hostedzone", _, "rrset"]) => "ListResourceRecordSets",
            ("GET", ["hostedzone", _]) => "GetHostedZone",
            ("POST", ["hostedzone"]) => "CreateHostedZone",
            ("GET", ["hostedzone"]) => "ListHostedZones",
            ("GET", ["hostedzonesbyname"]) => "ListHostedZonesByName",
            ("GET", ["change", _]) => "GetChange",
            _ => "Route53Other",
        };
        return name.to_owned();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .map(str::to_owned)
        .unwrap_or_else(|| "Other".to_owned())
}

/// Counts a ChangeResourceRecordSets body the way Route53 does.
pub fn batch_cost(xml: &str) -> BatchCost {
    let mut cost = BatchCost {
        changes: 0,
        records: 0,
        chars: 0,
    };
    for change in xml.split("<Change>").skip(1) {
        cost.changes += 1;
        let times = if change.contains("<Action>UPSERT</Action>") {
            2
        } else {
            1
        };
        for value in change.split("<Value>").skip(1) {
            let text = value.split("</Value>").next().unwrap_or_default();
            cost.records += times;
            cost.chars += unescape(text).chars().count() * times;
        }
    }
    cost
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn forward(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let operation = operation(&method, uri.path(), &body);
    {
        let mut seen = shared.seen.lock().expect("proxy lock");
        *seen.calls.entry(operation.clone()).or_default() += 1;
    }
    if operation == CHANGE
        && shared
            .throttle_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
            .is_ok()
    {
        shared.seen.lock().expect("proxy lock").throttled += 1;
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/xml")],
            THROTTLING,
        )
            .into_response();
    }

    let mut request = shared
        .http
        .request(method, format!("{}{}", shared.moto, uri));
    for (name, value) in &headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    let started = Instant::now();
    let answer = request.body(body.clone()).send().await;
    let response = match answer {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = answer.bytes().await.unwrap_or_default();
            if operation == CHANGE && status.is_success() {
                shared
                    .seen
                    .lock()
                    .expect("proxy lock")
                    .change_bodies
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let mut response = (status, bytes).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    *shared
        .seen
        .lock()
        .expect("proxy lock")
        .upstream
        .entry(operation)
        .or_default() += started.elapsed();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Route53's REST paths and EC2's actions are told apart.
    #[test]
    fn operations_are_named() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            operation(&post, "/2013-04-01/hostedzone/Z1/rrset/", b""),
            CHANGE
        );
        assert_eq!(
            operation(&get, "/2013-04-01/hostedzone/Z1/rrset", b""),
            "ListResourceRecordSets"
        );
        assert_eq!(operation(&get, "/2013-04-01/change/C1", b""), "GetChange");
        assert_eq!(
            operation(&post, "/", b"Action=DescribeInstances&Version=2016-11-15"),
            "DescribeInstances"
        );
    }

    /// A body is counted as AWS documents: UPSERT values twice, escapes
    /// as the characters they stand for.
    #[test]
    fn batches_are_counted() {
        let xml = "<ChangeBatch><Changes>\
            <Change><Action>UPSERT</Action><ResourceRecordSet><ResourceRecords>\
            <ResourceRecord><Value>192.0.2.1</Value></ResourceRecord>\
            </ResourceRecords></ResourceRecordSet></Change>\
            <Change><Action>CREATE</Action><ResourceRecordSet><ResourceRecords>\
            <ResourceRecord><Value>&quot;a&quot;</Value></ResourceRecord>\
            </ResourceRecords></ResourceRecordSet></Change>\
            </Changes></ChangeBatch>";
        assert_eq!(
            batch_cost(xml),
            BatchCost {
                changes: 2,
                records: 3,
                chars: 9 * 2 + 3
            }
        );
    }
}
