//! The real `muster-agent` binary against a small IMDSv2, a small HTTPS
//! coordinator and a small DNS server, all on loopback. Each test is a short
//! story: start the fakes, start the agent, watch what it does through
//! `muster-agent status` and what the fakes saw, stop it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hickory_resolver::proto::op::{Message, MessageType, OpCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record};
use muster_proto::{
    ErrorBody, ErrorDetail, HeartbeatRequest, HeartbeatResponse, NodeState, NodeView,
    RegisterRequest, RegisterResponse,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_muster-agent");
const JOIN_TOKEN: &str = "mjoin_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const INSTANCE_ID: &str = "i-0123456789abcdef0";
const DNS_NAME: &str = "web-1.web.muster.test";
/// How long any awaited event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- IMDS

type Imds = Arc<Mutex<HashMap<String, String>>>;

async fn imds_token(headers: HeaderMap) -> (StatusCode, String) {
    if headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
        (StatusCode::OK, "imds-token".into())
    } else {
        (StatusCode::BAD_REQUEST, String::new())
    }
}

async fn imds_read(
    State(items): State<Imds>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    if headers
        .get("x-aws-ec2-metadata-token")
        .map(|v| v.as_bytes())
        != Some(b"imds-token")
    {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    match items.lock().unwrap().get(&path) {
        Some(value) => (StatusCode::OK, value.clone()),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

async fn start_imds() -> (Imds, String) {
    let items: Imds = Arc::new(Mutex::new(
        [
            ("meta-data/instance-id", INSTANCE_ID),
            ("meta-data/placement/availability-zone", "us-east-1a"),
            ("meta-data/placement/region", "us-east-1"),
            ("meta-data/local-ipv4", "10.0.0.5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    ));
    let app = Router::new()
        .route("/latest/api/token", put(imds_token))
        .route("/latest/{*path}", get(imds_read))
        .with_state(items.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (items, format!("http://{addr}"))
}

// --------------------------------------------------------- coordinator

#[derive(Debug, Default)]
struct Coordinator {
    /// Bearer secrets presented to register, in order.
    register_bearers: Vec<String>,
    /// Heartbeats received.
    heartbeats: Vec<HeartbeatRequest>,
    /// Node credentials it accepts.
    credentials: Vec<String>,
    /// Credentials issued so far.
    issued: u32,
}

type Shared = Arc<Mutex<Coordinator>>;

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn unauthorized() -> (StatusCode, Json<Value>) {
    let body = ErrorBody {
        error: ErrorDetail {
            code: "unauthorized".into(),
            message: "unknown token".into(),
        },
    };
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::to_value(body).unwrap()),
    )
}

async fn register(
    State(coord): State<Shared>,
    headers: HeaderMap,
    Json(request): Json<RegisterRequest>,
) -> (StatusCode, Json<Value>) {
    let mut coord = coord.lock().unwrap();
    let bearer = bearer(&headers);
    coord.register_bearers.push(bearer.clone());
    if request.validate().is_err() {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(Value::Null));
    }
    if bearer != JOIN_TOKEN && !coord.credentials.contains(&bearer) {
        return unauthorized();
    }
    coord.issued += 1;
    let credential = format!("mnode_{:064x}", coord.issued);
    coord.credentials = vec![credential.clone()];
    let response = RegisterResponse {
        node: NodeView {
            name: "web-1".into(),
            cluster: request.cluster.clone(),
            instance_id: request.instance_id.clone(),
            state: NodeState::Deployed,
            availability_zone: request.availability_zone.clone(),
            region: request.region.clone(),
            private_ipv4: Some(request.private_ipv4),
            public_ipv4: request.public_ipv4,
            dns_name: DNS_NAME.into(),
            internal_dns_name: "web-1.web.internal.muster.test".into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:00:00Z".into(),
            last_seen_at: None,
            facts: None,
        },
        credential,
        // Long enough that any heartbeat seen in a test was pushed by a
        // change, not by the timer.
        heartbeat_interval_ms: 600_000,
        heartbeat_jitter_ms: 0,
    };
    (
        StatusCode::OK,
        Json(serde_json::to_value(response).unwrap()),
    )
}

async fn heartbeat(
    State(coord): State<Shared>,
    headers: HeaderMap,
    Json(request): Json<HeartbeatRequest>,
) -> (StatusCode, Json<Value>) {
    let mut coord = coord.lock().unwrap();
    if !coord.credentials.contains(&bearer(&headers)) {
        return unauthorized();
    }
    assert!(request.validate().is_ok(), "{request:?}");
    coord.heartbeats.push(request);
    let response = HeartbeatResponse {
        state: NodeState::Deployed,
        heartbeat_interval_ms: 600_000,
        heartbeat_jitter_ms: 0,
    };
    (
        StatusCode::OK,
        Json(serde_json::to_value(response).unwrap()),
    )
}

/// Starts the coordinator on HTTPS with a fresh CA; returns its state, URL
/// and the CA's PEM.
async fn start_coordinator() -> (Shared, String, String) {
    muster_agent::install_crypto_provider();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
    )
    .await
    .unwrap();

    let coord = Shared::default();
    let app = Router::new()
        .route(muster_proto::paths::AGENT_REGISTER, post(register))
        .route(muster_proto::paths::AGENT_HEARTBEAT, post(heartbeat))
        .with_state(coord.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, tls)
            .serve(app.into_make_service())
            .await
            .unwrap()
    });
    (coord, format!("https://{addr}"), ca.pem())
}

// ----------------------------------------------------------------- DNS

/// Answers every A question with the address held in the returned cell.
async fn start_dns() -> (Arc<Mutex<Ipv4Addr>>, SocketAddr) {
    let answer = Arc::new(Mutex::new(Ipv4Addr::new(10, 0, 0, 5)));
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let cell = answer.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let (n, peer) = socket.recv_from(&mut buf).await.unwrap();
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut reply = Message::new();
            reply
                .set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(query.recursion_desired())
                .set_recursion_available(true)
                .add_queries(query.queries().to_vec());
            if let Some(question) = query.queries().first() {
                let ip = *cell.lock().unwrap();
                reply.add_answer(Record::from_rdata(
                    question.name().clone(),
                    5,
                    RData::A(A(ip)),
                ));
            }
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer).await;
        }
    });
    (answer, addr)
}

// ---------------------------------------------------------------- agent

struct World {
    dir: tempfile::TempDir,
    imds: Imds,
    imds_url: String,
    coord: Shared,
    coord_url: String,
    dns: Arc<Mutex<Ipv4Addr>>,
    dns_addr: SocketAddr,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let (imds, imds_url) = start_imds().await;
        let (coord, coord_url, ca_pem) = start_coordinator().await;
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.path().join("agent.toml"), "").unwrap();
        let (dns, dns_addr) = start_dns().await;
        World {
            dir,
            imds,
            imds_url,
            coord,
            coord_url,
            dns,
            dns_addr,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_agent(&self) -> Agent {
        self.start_agent_with(&self.coord_url)
    }

    fn start_agent_with(&self, coord_url: &str) -> Agent {
        let log = self.path("agent.log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.path("agent.toml"))
            .args(["--coordinator-url", coord_url, "--ca-file"])
            .arg(self.path("ca.pem"))
            .args([
                "--cluster",
                "web",
                "--join-token",
                JOIN_TOKEN,
                "--state-dir",
            ])
            .arg(self.path("state"))
            .arg("--socket")
            .arg(self.path("agent.sock"))
            .args(["--dns-server", &self.dns_addr.to_string()])
            .args(["--imds-poll-interval", "100ms"])
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds_url)
            .env("RUST_LOG", "muster_agent=debug")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    /// `muster-agent status --json`: exit code and document.
    async fn status(&self) -> (i32, Value) {
        let socket = self.path("agent.sock");
        let state = self.path("state");
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .arg("status")
                .arg("--socket")
                .arg(&socket)
                .arg("--state-dir")
                .arg(&state)
                .arg("--json")
                .output()
                .unwrap();
            let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            (out.status.code().unwrap_or(-1), json)
        })
        .await
        .unwrap()
    }

    async fn wait_for_status(
        &self,
        agent: &Agent,
        what: &str,
        ok: impl Fn(i32, &Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let (code, json) = self.status().await;
            if ok(code, &json) {
                return json;
            }
            if start.elapsed() > DEADLINE {
                panic!("{what}: last status {code} {json:#}\n{}", agent.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and returns the exit code.
    async fn stop(mut self) -> i32 {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        tokio::task::spawn_blocking(move || self.child.wait().unwrap().code().unwrap_or(-1))
            .await
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until(what: &str, agent: &Agent, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > DEADLINE {
            panic!("{what}\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_file(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

/// The agent joins with the join token, stores its credential, reports
/// itself deployed with DNS resolving, pushes a new public address at once,
/// and on SIGTERM exits 0, after which `status` says it is not running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_reports_and_follows_an_address_change() {
    let world = World::start().await;
    let agent = world.start_agent();

    let json = world
        .wait_for_status(&agent, "agent never deployed", |code, json| {
            code == 0 && json["state"] == "deployed"
        })
        .await;
    assert_eq!(json["node"], "web-1");
    assert_eq!(json["cluster"], "web");
    assert_eq!(json["instance_id"], INSTANCE_ID);
    assert_eq!(json["private_ipv4"], "10.0.0.5");
    assert_eq!(json["public_ipv4"], Value::Null);
    assert_eq!(json["dns_name"], DNS_NAME);
    assert_eq!(json["dns_resolves"], true, "{json:#}");
    assert_eq!(json["dns_answer"], serde_json::json!(["10.0.0.5"]));
    assert!(json["last_contact_at"].is_string());
    assert_eq!(world.coord.lock().unwrap().register_bearers, [JOIN_TOKEN]);

    let stored = state_file(&world.path("state"));
    assert_eq!(stored["instance_id"], INSTANCE_ID);
    assert_eq!(
        stored["credential"],
        world.coord.lock().unwrap().credentials[0]
    );

    // An Elastic IP is associated: IMDS shows it, DNS does not yet.
    world
        .imds
        .lock()
        .unwrap()
        .insert("meta-data/public-ipv4".into(), "54.1.2.3".into());
    let public = Ipv4Addr::new(54, 1, 2, 3);
    wait_until("the new address was never pushed", &agent, || {
        world
            .coord
            .lock()
            .unwrap()
            .heartbeats
            .iter()
            .any(|h| h.public_ipv4 == Some(public))
    })
    .await;
    let json = world
        .wait_for_status(&agent, "status never showed the new address", |_, json| {
            json["public_ipv4"] == "54.1.2.3"
        })
        .await;
    assert_eq!(json["dns_resolves"], false, "DNS still has the old address");
    *world.dns.lock().unwrap() = public;
    let (code, json) = world.status().await;
    assert_eq!(code, 0);
    assert_eq!(json["dns_resolves"], true);
    assert_eq!(
        world.coord.lock().unwrap().register_bearers.len(),
        1,
        "no re-register"
    );

    assert_eq!(agent.stop().await, 0);
    assert!(!world.path("agent.sock").exists(), "socket left behind");
    let (code, json) = world.status().await;
    assert_eq!(code, 3);
    assert_eq!(json["running"], false);
    assert_eq!(json["node"], "web-1");
    assert_eq!(json["instance_id"], INSTANCE_ID);
}

/// A restarted agent registers with its stored credential; when the
/// coordinator no longer knows it, the agent falls back to the join token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarts_with_the_stored_credential_and_falls_back() {
    let world = World::start().await;
    let agent = world.start_agent();
    world
        .wait_for_status(&agent, "first run never deployed", |code, _| code == 0)
        .await;
    assert_eq!(agent.stop().await, 0);
    let first = world.coord.lock().unwrap().credentials[0].clone();

    let agent = world.start_agent();
    world
        .wait_for_status(&agent, "second run never deployed", |code, _| code == 0)
        .await;
    assert_eq!(
        world.coord.lock().unwrap().register_bearers,
        [JOIN_TOKEN, first.as_str()]
    );
    assert_eq!(agent.stop().await, 0);

    // The coordinator forgets every credential.
    world.coord.lock().unwrap().credentials.clear();
    let stored = state_file(&world.path("state"))["credential"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = world.start_agent();
    world
        .wait_for_status(&agent, "third run never deployed", |code, _| code == 0)
        .await;
    let bearers = world.coord.lock().unwrap().register_bearers.clone();
    assert_eq!(bearers[2..], [stored.as_str(), JOIN_TOKEN]);
    assert_ne!(state_file(&world.path("state"))["credential"], stored);
    assert_eq!(agent.stop().await, 0);
}

/// A state file from another instance is discarded: the agent joins with
/// the join token instead of presenting a credential that is not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discards_state_from_another_instance() {
    let world = World::start().await;
    let foreign = format!("mnode_{}", "ee".repeat(32));
    std::fs::create_dir(world.path("state")).unwrap();
    std::fs::write(
        world.path("state").join("state.json"),
        serde_json::json!({
            "instance_id": "i-0fedcba9876543210",
            "cluster": "web",
            "node": "web-9",
            "dns_name": "web-9.web.muster.test",
            "internal_dns_name": "web-9.web.internal.muster.test",
            "credential": foreign,
            "coordinator_url": world.coord_url,
        })
        .to_string(),
    )
    .unwrap();
    let agent = world.start_agent();
    world
        .wait_for_status(&agent, "never deployed", |code, _| code == 0)
        .await;
    assert_eq!(world.coord.lock().unwrap().register_bearers, [JOIN_TOKEN]);
    assert_eq!(state_file(&world.path("state"))["instance_id"], INSTANCE_ID);
    assert_eq!(agent.stop().await, 0);
}

/// With the coordinator unreachable the agent keeps trying and reports
/// itself degraded (exit 1), saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_coordinator_is_degraded() {
    let world = World::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let agent = world.start_agent_with(&url);
    let json = world
        .wait_for_status(&agent, "never reported degraded", |code, json| {
            code == 1 && json["state"] == "degraded"
        })
        .await;
    let error = json["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot reach the coordinator"), "{error}");
    assert_eq!(json["last_contact_at"], Value::Null);
    assert_eq!(json["instance_id"], INSTANCE_ID);
    assert_eq!(agent.stop().await, 0);
}

/// A bad setting names itself and exits 64.
#[test]
fn bad_setting_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.toml"), "").unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .args(["--coordinator-url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--coordinator-url=\"http://127.0.0.1:1\" is not valid: must be an https URL"
        ),
        "{stderr}"
    );
}
