//! The real `muster-agent` binary against a small IMDSv2, a small HTTPS
//! coordinator and a small DNS server, all on loopback. Each test is a short
//! story: start the fakes, start the agent, watch what it does through
//! `muster-agent status` and what the fakes saw, stop it.
//!
//! Where a story needs addresses to come and go, the fakes and the agent
//! run in a network namespace of the test's own (see `netns`); without
//! root such a test says it skips.
//!
//! A bring-your-own node (`--byon`) is told as the same kind of story, with
//! IMDS pointed at a port where nothing listens.

mod netns;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
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
use netns::Netns;
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

/// A TCP listener on loopback, in `ns` if given.
fn bind_tcp(ns: Option<&Netns>) -> std::net::TcpListener {
    let bind = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        listener
    };
    match ns {
        Some(ns) => ns.enter(bind),
        None => bind(),
    }
}

/// A UDP socket on loopback, in `ns` if given.
fn bind_udp(ns: Option<&Netns>) -> std::net::UdpSocket {
    let bind = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
    };
    match ns {
        Some(ns) => ns.enter(bind),
        None => bind(),
    }
}

async fn start_imds(ns: Option<&Netns>) -> (Imds, String) {
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
    let listener = tokio::net::TcpListener::from_std(bind_tcp(ns)).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (items, format!("http://{addr}"))
}

// --------------------------------------------------------- coordinator

#[derive(Debug, Default)]
struct Coordinator {
    /// Bearer secrets presented to register, in order.
    register_bearers: Vec<String>,
    /// Register requests received, in order.
    registers: Vec<RegisterRequest>,
    /// The heartbeat interval it asks for, if not ten minutes.
    heartbeat_interval_ms: Option<u64>,
    /// Heartbeats received.
    heartbeats: Vec<HeartbeatRequest>,
    /// Node credentials it accepts.
    credentials: Vec<String>,
    /// Credentials issued so far.
    issued: u32,
    /// While set, every request is answered 503, as by a proxy in front of
    /// a coordinator that is down.
    down: bool,
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

fn unavailable() -> (StatusCode, Json<Value>) {
    (StatusCode::SERVICE_UNAVAILABLE, Json(Value::Null))
}

async fn register(
    State(coord): State<Shared>,
    headers: HeaderMap,
    Json(request): Json<RegisterRequest>,
) -> (StatusCode, Json<Value>) {
    let mut coord = coord.lock().unwrap();
    if coord.down {
        return unavailable();
    }
    let bearer = bearer(&headers);
    coord.register_bearers.push(bearer.clone());
    coord.registers.push(request.clone());
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
            byon: request.byon.is_some(),
            state: NodeState::Deployed,
            availability_zone: request.availability_zone.clone(),
            region: request.region.clone(),
            private_ipv4: request.private_ipv4,
            public_ipv4: request.public_ipv4,
            dns_name: DNS_NAME.into(),
            internal_dns_name: "web-1.web.internal.muster.test".into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:00:00Z".into(),
            last_seen_at: None,
            facts: None,
            checks: Vec::new(),
            notices: Vec::new(),
            drained: false,
            ipv6: None,
            agent_version: None,
        },
        credential,
        // Long enough that any heartbeat seen in a test was pushed by a
        // change, not by the timer, unless the test asks otherwise.
        heartbeat_interval_ms: coord.heartbeat_interval_ms.unwrap_or(600_000),
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
    if coord.down {
        return unavailable();
    }
    if !coord.credentials.contains(&bearer(&headers)) {
        return unauthorized();
    }
    assert!(request.validate().is_ok(), "{request:?}");
    coord.heartbeats.push(request);
    let response = HeartbeatResponse {
        state: NodeState::Deployed,
        heartbeat_interval_ms: coord.heartbeat_interval_ms.unwrap_or(600_000),
        heartbeat_jitter_ms: 0,
    };
    (
        StatusCode::OK,
        Json(serde_json::to_value(response).unwrap()),
    )
}

/// Starts the coordinator on HTTPS with a fresh CA; returns its state, URL
/// and the CA's PEM.
async fn start_coordinator(ns: Option<&Netns>) -> (Shared, String, String) {
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
    let listener = bind_tcp(ns);
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
async fn start_dns(ns: Option<&Netns>) -> (Arc<Mutex<Ipv4Addr>>, SocketAddr) {
    let answer = Arc::new(Mutex::new(Ipv4Addr::new(10, 0, 0, 5)));
    let socket = tokio::net::UdpSocket::from_std(bind_udp(ns)).unwrap();
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
        World::start_in(None).await
    }

    /// Starts the fakes listening in `ns` (on its loopback), if given.
    async fn start_in(ns: Option<&Netns>) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (imds, imds_url) = start_imds(ns).await;
        let (coord, coord_url, ca_pem) = start_coordinator(ns).await;
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.path().join("agent.toml"), "").unwrap();
        let (dns, dns_addr) = start_dns(ns).await;
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
        let mut command = Command::new(BIN);
        command.args(self.run_args(coord_url, "100ms"));
        self.spawn(command)
    }

    /// The arguments of `muster-agent run` against this world.
    fn run_args(&self, coord_url: &str, imds_poll_interval: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["run", "--config"].map(OsString::from).to_vec();
        args.push(self.path("agent.toml").into());
        args.extend(["--coordinator-url", coord_url, "--ca-file"].map(OsString::from));
        args.push(self.path("ca.pem").into());
        args.extend(
            [
                "--cluster",
                "web",
                "--join-token",
                JOIN_TOKEN,
                "--state-dir",
            ]
            .map(OsString::from),
        );
        args.push(self.path("state").into());
        args.push("--socket".into());
        args.push(self.path("agent.sock").into());
        args.extend(["--dns-server".into(), self.dns_addr.to_string().into()]);
        args.extend(["--imds-poll-interval", imds_poll_interval].map(OsString::from));
        // Stop at once on SIGTERM, unless a test asks for a drain.
        args.extend(["--drain-wait", "0s"].map(OsString::from));
        args
    }

    /// Starts `command` (the agent, perhaps wrapped) with the environment
    /// of an agent against this world, outside systemd unless `command`
    /// says otherwise, logging to `agent.log`.
    fn spawn(&self, mut command: Command) -> Agent {
        let log = self.path("agent.log");
        // Whatever the test runner runs under, the agent is not under
        // systemd unless the test says so.
        for name in [
            "JOURNAL_STREAM",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ] {
            if command.get_envs().all(|(key, _)| key != name) {
                command.env_remove(name);
            }
        }
        // A test may point IMDS elsewhere (where nothing answers).
        if command
            .get_envs()
            .all(|(key, _)| key != "AWS_EC2_METADATA_SERVICE_ENDPOINT")
        {
            command.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds_url);
        }
        let child = command
            .env("RUST_LOG", "muster_agent=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    /// Starts the agent as systemd would with `WatchdogSec=`: a notify
    /// socket, `WATCHDOG_USEC`, and `WATCHDOG_PID` set to the agent's own
    /// pid unless `watchdog_pid` names another.
    fn start_agent_under_systemd(
        &self,
        notify_socket: &Path,
        watchdog_usec: u64,
        watchdog_pid: Option<u32>,
    ) -> Agent {
        // The shell learns its pid and execs the agent, which keeps it.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"WATCHDOG_PID="${WATCHDOG_PID:-$$}"; export WATCHDOG_PID; exec "$0" "$@""#)
            .arg(BIN)
            .args(self.run_args(&self.coord_url, "100ms"))
            .env("NOTIFY_SOCKET", notify_socket)
            .env("WATCHDOG_USEC", watchdog_usec.to_string());
        if let Some(pid) = watchdog_pid {
            command.env("WATCHDOG_PID", pid.to_string());
        }
        self.spawn(command)
    }

    /// `muster-agent status` (the table): exit code and text.
    async fn status_table(&self) -> (i32, String) {
        let socket = self.path("agent.sock");
        let state = self.path("state");
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .arg("status")
                .arg("--socket")
                .arg(&socket)
                .arg("--state-dir")
                .arg(&state)
                .output()
                .unwrap();
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
        .await
        .unwrap()
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

/// Writes a state file of another instance into the world's state dir,
/// with permission bits `mode`.
fn write_foreign_state(world: &World, mode: u32) {
    write_state_of(world, "i-0fedcba9876543210", mode);
}

/// A state file of instance `instance_id` with mode `mode`.
fn write_state_of(world: &World, instance_id: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let foreign = format!("mnode_{}", "ee".repeat(32));
    std::fs::create_dir(world.path("state")).unwrap();
    let file = world.path("state").join("state.json");
    std::fs::write(
        &file,
        serde_json::json!({
            "instance_id": instance_id,
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
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A state file of its own others may read: the agent refuses to start,
/// says why, and sends nothing to the coordinator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_to_start_on_a_state_file_others_may_read() {
    let world = World::start().await;
    write_state_of(&world, INSTANCE_ID, 0o644);
    let mut agent = world.start_agent();
    let code = tokio::task::spawn_blocking(move || {
        let code = agent.child.wait().unwrap().code();
        (code, agent)
    })
    .await
    .unwrap();
    let (code, agent) = code;
    assert_ne!(code, Some(0), "{}", agent.log());
    assert!(agent.log().contains("chmod 600"), "{}", agent.log());
    assert!(world.coord.lock().unwrap().register_bearers.is_empty());
}

/// Waits until `ok` holds, for things that outlive the agent.
async fn wait_for(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < DEADLINE, "{what}");
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
    assert_eq!(json["cut_off_since"], Value::Null);
    assert_eq!(json["cut_off_secs"], Value::Null);
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

/// A state file from another instance is discarded, even one others may
/// read (baked into an image, modes lost): the agent joins with the join
/// token instead of presenting a credential that is not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discards_state_from_another_instance() {
    let world = World::start().await;
    write_foreign_state(&world, 0o644);
    let agent = world.start_agent();
    world
        .wait_for_status(&agent, "never deployed", |code, _| code == 0)
        .await;
    assert_eq!(world.coord.lock().unwrap().register_bearers, [JOIN_TOKEN]);
    assert_eq!(state_file(&world.path("state"))["instance_id"], INSTANCE_ID);
    assert_eq!(agent.stop().await, 0);
}

/// With the coordinator unreachable the agent keeps trying and reports
/// itself degraded (exit 1), saying why and since when it has been cut off,
/// in the JSON and in the table.
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
    let since = json["cut_off_since"].as_str().expect("cut_off_since");
    assert!(humantime::parse_rfc3339(since).is_ok(), "{since}");
    assert!(json["cut_off_secs"].is_u64(), "{json:#}");

    // The clock keeps its start and counts on while the agent retries.
    let json = world
        .wait_for_status(&agent, "the cut-off time never grew", |code, json| {
            code == 1 && json["cut_off_secs"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(json["cut_off_since"], since);
    let (code, table) = world.status_table().await;
    assert_eq!(code, 1);
    let row = table
        .lines()
        .find(|line| line.trim_start().starts_with("cut off"))
        .unwrap_or_else(|| panic!("no cut off row:\n{table}"));
    assert!(row.contains(&format!("since {since} (")), "{row}");
    assert_eq!(agent.stop().await, 0);
}

/// Through a coordinator outage (every answer a 503) the agent keeps
/// running and says it is cut off; when the coordinator is back, the
/// change made meanwhile gets through and the cut-off clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rides_out_a_coordinator_outage() {
    let world = World::start().await;
    let mut agent = world.start_agent();
    world
        .wait_for_status(&agent, "never deployed", |code, _| code == 0)
        .await;

    world.coord.lock().unwrap().down = true;
    world
        .imds
        .lock()
        .unwrap()
        .insert("meta-data/public-ipv4".into(), "54.1.2.3".into());
    let json = world
        .wait_for_status(&agent, "never said it was cut off", |code, json| {
            code == 1 && json["cut_off_since"].is_string()
        })
        .await;
    assert_eq!(json["state"], "degraded");
    assert!(
        json["last_contact_at"].is_string(),
        "the last contact stays"
    );
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "the agent exited"
    );

    world.coord.lock().unwrap().down = false;
    let json = world
        .wait_for_status(&agent, "never recovered", |code, json| {
            code == 0 && json["cut_off_since"].is_null()
        })
        .await;
    assert_eq!(json["cut_off_secs"], Value::Null);
    assert_eq!(json["public_ipv4"], "54.1.2.3");
    let public = Ipv4Addr::new(54, 1, 2, 3);
    assert!(world
        .coord
        .lock()
        .unwrap()
        .heartbeats
        .iter()
        .any(|h| h.public_ipv4 == Some(public)));
    assert_eq!(agent.stop().await, 0);
}

/// A notify socket as systemd hands one out: every line the agent sends is
/// kept, in order.
struct NotifySocket {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    /// Listens at `path`; reading stops when the value is dropped.
    fn bind(path: PathBuf) -> NotifySocket {
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&lines);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let received = socket.recv(&mut buf);
                let Some(lines) = sink.upgrade() else {
                    return;
                };
                match received {
                    Ok(n) => lines.lock().unwrap().extend(
                        String::from_utf8_lossy(&buf[..n])
                            .lines()
                            .map(str::to_owned),
                    ),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("cannot read the notify socket: {e}"),
                }
            }
        });
        NotifySocket { path, lines }
    }

    /// How many times `line` was sent.
    fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Under systemd the agent says READY=1 once registered, pings the
/// watchdog (WATCHDOG=1) again and again while it runs, and says
/// STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tells_systemd_ready_watchdog_and_stopping() {
    let world = World::start().await;
    let notify = NotifySocket::bind(world.path("notify.sock"));
    // A watchdog of 2 s: a ping every second.
    let agent = world.start_agent_under_systemd(&notify.path, 2_000_000, None);

    wait_until("READY=1 never came", &agent, || {
        notify.count("READY=1") == 1
    })
    .await;
    assert_eq!(
        world.coord.lock().unwrap().register_bearers,
        [JOIN_TOKEN],
        "READY before the first register"
    );
    wait_until("WATCHDOG=1 never came twice", &agent, || {
        notify.count("WATCHDOG=1") >= 2
    })
    .await;
    assert!(
        agent.log().contains("the systemd watchdog is on"),
        "{}",
        agent.log()
    );

    assert_eq!(agent.stop().await, 0);
    wait_for("STOPPING=1 never came", || notify.count("STOPPING=1") == 1).await;
    assert_eq!(notify.count("READY=1"), 1, "{:?}", notify.lines());
}

/// A watchdog meant for another process (WATCHDOG_PID is not the agent's)
/// is left alone: no WATCHDOG=1, though READY=1 and STOPPING=1 still come.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaves_the_watchdog_of_another_process_alone() {
    let world = World::start().await;
    let notify = NotifySocket::bind(world.path("notify.sock"));
    let agent = world.start_agent_under_systemd(&notify.path, 200_000, Some(1));
    wait_until("READY=1 never came", &agent, || {
        notify.count("READY=1") == 1
    })
    .await;

    // Make the main loop go round (wait, push a change, wait again): it
    // would have pinged by then.
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
    assert_eq!(agent.stop().await, 0);
    wait_for("STOPPING=1 never came", || notify.count("STOPPING=1") == 1).await;
    assert_eq!(notify.count("WATCHDOG=1"), 0, "{:?}", notify.lines());
}

/// In a network namespace of its own, with IMDS polled only once a
/// minute, an address added on the node makes the agent read IMDS at once
/// and push the Elastic IP it finds there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_address_event_reads_imds_at_once() {
    let Some(ns) = Netns::create("local_address_event_reads_imds_at_once") else {
        return;
    };
    let world = World::start_in(Some(&ns)).await;
    let mut command = ns.command(BIN);
    command.args(world.run_args(&world.coord_url, "60s"));
    let agent = world.spawn(command);
    world
        .wait_for_status(&agent, "never deployed", |code, _| code == 0)
        .await;
    assert!(
        agent.log().contains("listening for local address events"),
        "{}",
        agent.log()
    );

    // The Elastic IP shows in IMDS; the next poll is a minute away.
    world
        .imds
        .lock()
        .unwrap()
        .insert("meta-data/public-ipv4".into(), "54.1.2.3".into());
    ns.ip(&["addr", "add", "192.0.2.10/32", "dev", "lo"]);
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
    let log = agent.log();
    assert!(
        log.contains("a local IPv4 address was added; reading IMDS now")
            && log.contains("192.0.2.10"),
        "{log}"
    );
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

// ------------------------------------------------------ bring-your-own

const MACHINE_ID: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A URL where nothing listens: an IMDS that is not there.
fn nowhere() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    url
}

impl World {
    /// `muster-agent run --byon` with the machine id in `machine-id`, the
    /// given extra flags, and IMDS pointed where nothing listens.
    fn byon_command(&self, ns: Option<&Netns>, poll: &str, extra: &[&str]) -> Command {
        let mut command = match ns {
            Some(ns) => ns.command(BIN),
            None => Command::new(BIN),
        };
        command
            .args(self.run_args(&self.coord_url, poll))
            .arg("--byon")
            .arg("--machine-id-file")
            .arg(self.path("machine-id"))
            .args(extra)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", nowhere());
        command
    }

    fn start_byon_agent(&self, extra: &[&str]) -> Agent {
        self.spawn(self.byon_command(None, "100ms", extra))
    }
}

/// A bring-your-own node with no IMDS registers as `m-<machine id>`, named
/// by its hostname, with no zone or region and the address it was given,
/// then heartbeats with the same id. Its state is bound to that id: copied
/// to a machine with another machine id it is discarded, and once wiped the
/// node joins again with the join token as the same node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byon_node_registers_without_imds() {
    let world = World::start().await;
    world.coord.lock().unwrap().heartbeat_interval_ms = Some(1_000);
    std::fs::write(world.path("machine-id"), format!("{MACHINE_ID}\n")).unwrap();
    let node_id = format!("m-{MACHINE_ID}");
    let flags = ["--hostname", "build-7", "--private-ipv4", "192.168.1.20"];
    let agent = world.start_byon_agent(&flags);

    let json = world
        .wait_for_status(&agent, "the BYON agent never deployed", |code, json| {
            code == 0 && json["state"] == "deployed"
        })
        .await;
    assert_eq!(json["instance_id"], node_id.as_str());
    assert_eq!(json["byon"], true);
    assert_eq!(json["private_ipv4"], "192.168.1.20");
    assert_eq!(json["public_ipv4"], Value::Null);
    {
        let coord = world.coord.lock().unwrap();
        assert_eq!(coord.register_bearers, [JOIN_TOKEN]);
        let request = &coord.registers[0];
        request.validate().expect("the register passes validation");
        let byon = request.byon.as_ref().expect("the register carries byon");
        assert_eq!(byon.hostname, "build-7");
        assert_eq!(byon.machine_id, MACHINE_ID);
        assert_eq!(request.instance_id, node_id);
        assert_eq!(request.availability_zone, "");
        assert_eq!(request.region, "");
        assert_eq!(request.private_ipv4, Some(Ipv4Addr::new(192, 168, 1, 20)));
        assert_eq!(request.public_ipv4, None);
    }
    wait_until("the BYON agent never heartbeat", &agent, || {
        !world.coord.lock().unwrap().heartbeats.is_empty()
    })
    .await;
    {
        let coord = world.coord.lock().unwrap();
        let beat = &coord.heartbeats[0];
        assert_eq!(beat.instance_id, node_id);
        assert_eq!(beat.private_ipv4, Some(Ipv4Addr::new(192, 168, 1, 20)));
    }
    assert!(
        !agent.log().contains("IMDS"),
        "IMDS was mentioned:\n{}",
        agent.log()
    );
    assert_eq!(agent.stop().await, 0);
    assert_eq!(
        state_file(&world.path("state"))["instance_id"],
        node_id.as_str()
    );
    let (code, table) = world.status_table().await;
    assert_eq!(code, 3);
    assert!(table.contains("(bring-your-own)"), "{table}");

    // The state dir is copied to another machine: its credential is not
    // presented; the other machine joins as its own node.
    let other = "1f1e2d3c4b5a69788796a5b4c3d2e1f0";
    std::fs::write(world.path("machine-id"), other).unwrap();
    let agent = world.start_byon_agent(&flags);
    world
        .wait_for_status(&agent, "the copied agent never deployed", |code, _| {
            code == 0
        })
        .await;
    assert!(
        agent
            .log()
            .contains("the state file belongs to another node"),
        "{}",
        agent.log()
    );
    assert_eq!(agent.stop().await, 0);
    {
        let coord = world.coord.lock().unwrap();
        assert_eq!(coord.register_bearers, [JOIN_TOKEN, JOIN_TOKEN]);
        assert_eq!(coord.registers[1].instance_id, format!("m-{other}"));
    }
    assert_eq!(
        state_file(&world.path("state"))["instance_id"],
        format!("m-{other}").as_str()
    );

    // Back on the first machine with the state wiped: it joins again with
    // the join token, as the same node.
    std::fs::write(world.path("machine-id"), MACHINE_ID).unwrap();
    std::fs::remove_dir_all(world.path("state")).unwrap();
    let agent = world.start_byon_agent(&flags);
    world
        .wait_for_status(&agent, "the wiped agent never deployed", |code, _| {
            code == 0
        })
        .await;
    assert_eq!(agent.stop().await, 0);
    let coord = world.coord.lock().unwrap();
    assert_eq!(coord.register_bearers[2], JOIN_TOKEN);
    assert_eq!(coord.registers[2].instance_id, node_id);
    assert_eq!(coord.registers[2].byon, coord.registers[0].byon);
}

/// A BYON agent that cannot name itself (a machine-id file that is not a
/// machine id, a hostname that is not a DNS label) stops at once with 64
/// and says which setting and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byon_bad_identity_exits_64() {
    let world = World::start().await;
    std::fs::write(world.path("machine-id"), "uninitialized\n").unwrap();
    let run = |extra: &[&str]| {
        let out = world
            .byon_command(None, "100ms", extra)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&["--hostname", "build-7"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--machine-id-file={:?} is not valid: holds \"uninitialized\", which must be 32 lowercase hex digits",
            world.path("machine-id").to_str().unwrap()
        )),
        "{stderr}"
    );

    std::fs::write(world.path("machine-id"), MACHINE_ID).unwrap();
    let (code, stderr) = run(&["--hostname", "Build_7"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "--hostname=\"Build_7\" is not valid: may hold only lowercase letters, digits and '-'"
        ),
        "{stderr}"
    );
    assert!(
        world.coord.lock().unwrap().registers.is_empty(),
        "a bad agent registered"
    );
}

/// In a network namespace of its own, a BYON agent without
/// `--private-ipv4` finds its address from the default route: with none it
/// says to pass `--private-ipv4` and keeps trying; once the machine has a
/// route it registers from that address, and when the route's source
/// address changes, the next local address event pushes the new one at
/// once (the poll is a minute away).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byon_follows_the_primary_address() {
    let Some(ns) = Netns::create("byon_follows_the_primary_address") else {
        return;
    };
    let world = World::start_in(Some(&ns)).await;
    std::fs::write(world.path("machine-id"), MACHINE_ID).unwrap();
    let agent = world.spawn(world.byon_command(Some(&ns), "60s", &["--hostname", "build-7"]));
    let json = world
        .wait_for_status(&agent, "never said it has no address", |code, json| {
            code == 1
                && json["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("pass --private-ipv4"))
        })
        .await;
    assert_eq!(json["state"], "degraded");
    assert!(world.coord.lock().unwrap().registers.is_empty());

    // (On the namespace's loopback: the addresses need no device of their
    // own; only the route's source address matters.)
    ns.ip(&["addr", "add", "10.9.0.5/24", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.9.0.6/24", "dev", "lo"]);
    ns.ip(&["route", "add", "default", "dev", "lo", "src", "10.9.0.5"]);
    let json = world
        .wait_for_status(&agent, "never deployed once routed", |code, _| code == 0)
        .await;
    assert_eq!(json["private_ipv4"], "10.9.0.5");
    assert_eq!(
        world.coord.lock().unwrap().registers[0].private_ipv4,
        Some(Ipv4Addr::new(10, 9, 0, 5))
    );

    // The default route now leaves from .6; a local address event follows.
    ns.ip(&[
        "route", "replace", "default", "dev", "lo", "src", "10.9.0.6",
    ]);
    ns.ip(&["addr", "add", "192.0.2.10/32", "dev", "lo"]);
    let moved = Ipv4Addr::new(10, 9, 0, 6);
    wait_until("the new address was never pushed", &agent, || {
        world
            .coord
            .lock()
            .unwrap()
            .heartbeats
            .iter()
            .any(|h| h.private_ipv4 == Some(moved) && h.instance_id == format!("m-{MACHINE_ID}"))
    })
    .await;
    assert!(
        agent
            .log()
            .contains("a local IPv4 address was added; reading the local addresses now"),
        "{}",
        agent.log()
    );
    assert_eq!(
        world.coord.lock().unwrap().registers.len(),
        1,
        "no re-register"
    );
    assert_eq!(agent.stop().await, 0);
}
