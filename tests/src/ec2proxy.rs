//! An EC2 endpoint in front of moto: it passes every call through, counts
//! the calls by `Action`, and answers the calls a [`Refusal`] matches with
//! EC2's error XML instead, the way EC2 answers when an AZ lacks capacity
//! or does not offer an instance type. moto never refuses for those
//! reasons, so this is how stories reach those paths, and how the
//! benchmark counts the calls a launch makes.
//!
//! It also counts, by instance id, the DescribeInstances calls that name
//! an instance in `InstanceId.N` (a claim's check; the sweep and listings
//! use filters instead).
//!
//! It can fail a burst of calls ([`Ec2Proxy::fail_next`]: the next N
//! calls of an action answered with an error code, e.g.
//! `RequestLimitExceeded` or `InvalidInstanceID.NotFound`), and [`Hold`]
//! calls: let a number of one action through, then
//! keep every later one waiting for good, either before it reaches moto or
//! after moto did the work (the answer never comes back). That is how a
//! story stops a coordinator at one step of a launch, to kill it there.
//!
//! Point a client (or the coordinator's `AWS_ENDPOINT_URL`) at
//! [`Ec2Proxy::endpoint`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// Calls to refuse: `Action=action`, in `subnet_id` if given, dry runs or
/// real calls as `dry_run` says, answered with `code` and `message`.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The EC2 action, e.g. `RunInstances`.
    pub action: String,
    /// Only calls with this `SubnetId`.
    pub subnet_id: Option<String>,
    /// Only dry runs (`true`) or only real calls (`false`).
    pub dry_run: bool,
    /// EC2's error code, e.g. `InsufficientInstanceCapacity`.
    pub code: String,
    /// EC2's message.
    pub message: String,
}

/// Calls to hold: after `after` real calls (dry runs do not count, nor are
/// they held) of `action` went through since the hold was set, every later
/// one waits, for good unless [`Ec2Proxy::release`] lets it go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The EC2 action, e.g. `RunInstances`.
    pub action: String,
    /// How many calls go through first.
    pub after: usize,
    /// Whether a held call reaches moto first (the work is done, the
    /// answer lost) or not at all.
    pub reaches_ec2: bool,
}

/// A burst of failures: (action, code, calls left).
type Bursts = Arc<Mutex<Vec<(String, String, usize)>>>;

/// The hold in force, with the matching calls seen since it was set, and
/// how many were held in all.
#[derive(Debug, Default)]
struct Holding {
    hold: Option<Hold>,
    seen: usize,
    held: usize,
}

#[derive(Clone)]
struct Shared {
    hold: Arc<Mutex<Holding>>,
    /// How many times the held calls were released.
    released: Arc<tokio::sync::watch::Sender<u64>>,
    bursts: Bursts,
    moto: String,
    http: reqwest::Client,
    refusals: Arc<Vec<Refusal>>,
    calls: Arc<Mutex<BTreeMap<String, usize>>>,
    refused: Arc<Mutex<BTreeMap<String, usize>>>,
    described: Arc<Mutex<BTreeMap<String, usize>>>,
}

/// The running proxy; stops when dropped.
#[derive(Debug)]
pub struct Ec2Proxy {
    port: u16,
    hold: Arc<Mutex<Holding>>,
    released: Arc<tokio::sync::watch::Sender<u64>>,
    bursts: Bursts,
    calls: Arc<Mutex<BTreeMap<String, usize>>>,
    refused: Arc<Mutex<BTreeMap<String, usize>>>,
    described: Arc<Mutex<BTreeMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Ec2Proxy {
    /// Starts a proxy to the moto server at `moto` on a free loopback port.
    pub async fn start(moto: String, refusals: Vec<Refusal>) -> Ec2Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the EC2 proxy");
        let port = listener
            .local_addr()
            .expect("the EC2 proxy's address")
            .port();
        let calls = Arc::new(Mutex::new(BTreeMap::new()));
        let refused = Arc::new(Mutex::new(BTreeMap::new()));
        let described = Arc::new(Mutex::new(BTreeMap::new()));
        let hold = Arc::new(Mutex::new(Holding::default()));
        let released = Arc::new(tokio::sync::watch::Sender::new(0));
        let bursts = Bursts::default();
        let shared = Shared {
            hold: hold.clone(),
            released: released.clone(),
            bursts: bursts.clone(),
            moto,
            http: reqwest::Client::new(),
            refusals: Arc::new(refusals),
            calls: calls.clone(),
            refused: refused.clone(),
            described: described.clone(),
        };
        let router = Router::new().fallback(forward).with_state(shared);
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the EC2 proxy runs");
        });
        Ec2Proxy {
            port,
            hold,
            released,
            bursts,
            calls,
            refused,
            described,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Calls seen so far, by action (refused ones included).
    pub fn calls(&self) -> BTreeMap<String, usize> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// Calls refused so far: by subnet (`-` for none) for [`Refusal`]s, by
    /// error code for bursts ([`Ec2Proxy::fail_next`]).
    pub fn refused(&self) -> BTreeMap<String, usize> {
        self.refused.lock().expect("refused lock").clone()
    }

    /// DescribeInstances calls so far that named `instance_id` in
    /// `InstanceId.N`.
    pub fn described(&self, instance_id: &str) -> usize {
        self.described
            .lock()
            .expect("described lock")
            .get(instance_id)
            .copied()
            .unwrap_or(0)
    }

    /// Holds calls from now on as `hold` says; `None` lets every later
    /// call through (calls held already stay held).
    pub fn hold(&self, hold: Option<Hold>) {
        let mut holding = self.hold.lock().expect("hold lock");
        holding.hold = hold;
        holding.seen = 0;
    }

    /// Lets every call held so far go on: one that had not reached moto
    /// goes there now, one that had gets its answer now, however stale.
    pub fn release(&self) {
        self.released.send_modify(|n| *n += 1);
    }

    /// Calls held so far, in all.
    pub fn held(&self) -> usize {
        self.hold.lock().expect("hold lock").held
    }

    /// Answers the next `count` calls of `action` with EC2's error `code`
    /// (503 for throttling and unavailability, 400 otherwise), counted as
    /// refused.
    pub fn fail_next(&self, action: &str, code: &str, count: usize) {
        self.bursts
            .lock()
            .expect("bursts lock")
            .push((action.to_owned(), code.to_owned(), count));
    }

    /// Forgets the counts.
    pub fn reset_counts(&self) {
        self.calls.lock().expect("calls lock").clear();
        self.refused.lock().expect("refused lock").clear();
        self.described.lock().expect("described lock").clear();
    }
}

impl Drop for Ec2Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The form parameters of an EC2 query-protocol body.
fn params(body: &[u8]) -> BTreeMap<String, String> {
    let form = String::from_utf8_lossy(body);
    form.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// Percent-decodes one form value (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The code of the burst `action` is in, if any; one call of it spent.
fn burst(bursts: &Bursts, action: &str) -> Option<String> {
    let mut bursts = bursts.lock().expect("bursts lock");
    let (_, code, left) = bursts
        .iter_mut()
        .find(|(a, _, left)| a == action && *left > 0)?;
    *left -= 1;
    Some(code.clone())
}

/// EC2's error answer.
fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
         <Code>{code}</Code><Message>{message}</Message></Error></Errors>\
         <RequestID>d1c1e5c3-0000-0000-0000-000000000000</RequestID></Response>"
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        xml,
    )
        .into_response()
}

async fn forward(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = params(&body);
    let action = params.get("Action").cloned().unwrap_or_default();
    *shared
        .calls
        .lock()
        .expect("calls lock")
        .entry(action.clone())
        .or_default() += 1;
    let dry_run = params.get("DryRun").map(String::as_str) == Some("true");
    let releases = *shared.released.borrow();
    let parked = || async {
        // Until the next release; never, if none comes.
        let mut released = shared.released.subscribe();
        let _ = released.wait_for(|n| *n > releases).await;
    };
    let held = {
        let mut holding = shared.hold.lock().expect("hold lock");
        match holding.hold.clone() {
            Some(hold) if hold.action == action && !dry_run => {
                holding.seen += 1;
                let held = holding.seen > hold.after;
                holding.held += usize::from(held);
                held.then_some(hold)
            }
            _ => None,
        }
    };
    if action == "DescribeInstances" {
        let mut described = shared.described.lock().expect("described lock");
        for (_, id) in params.iter().filter(|(k, _)| k.starts_with("InstanceId.")) {
            *described.entry(id.clone()).or_default() += 1;
        }
    }
    let subnet = params.get("SubnetId");
    if let Some(refusal) = shared.refusals.iter().find(|r| {
        r.action == action
            && r.dry_run == dry_run
            && r.subnet_id.as_ref().is_none_or(|s| Some(s) == subnet)
    }) {
        *shared
            .refused
            .lock()
            .expect("refused lock")
            .entry(subnet.cloned().unwrap_or_else(|| "-".to_owned()))
            .or_default() += 1;
        return ec2_error(StatusCode::BAD_REQUEST, &refusal.code, &refusal.message);
    }

    if held.as_ref().is_some_and(|h| !h.reaches_ec2) {
        parked().await;
    }
    if let Some(code) = burst(&shared.bursts, &action) {
        *shared
            .refused
            .lock()
            .expect("refused lock")
            .entry(code.clone())
            .or_default() += 1;
        let status = if code.contains("LimitExceeded") || code.contains("Unavailable") {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        return ec2_error(status, &code, "refused by the test proxy");
    }
    let mut request = shared.http.post(format!("{}{}", shared.moto, uri));
    for (name, value) in &headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    match request.body(body).send().await {
        Ok(answer) => {
            let status = answer.status();
            let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
            let body = answer.bytes().await.unwrap_or_default();
            if held.is_some() {
                // EC2 answered; the caller hears it only on release.
                parked().await;
            }
            let mut response = (status, body).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_params_decode() {
        let p =
            params(b"Action=RunInstances&SubnetId=subnet-1&TagSpecification.1.Tag.1.Value=a%3Ab+c");
        assert_eq!(p["Action"], "RunInstances");
        assert_eq!(p["SubnetId"], "subnet-1");
        assert_eq!(p["TagSpecification.1.Tag.1.Value"], "a:b c");
        assert_eq!(decode("100%"), "100%");
    }
}
