//! The API's connections under attack: one host cannot lock out the fleet,
//! and a steady fleet keeps its connections.
//!
//! - 1,100 idle connections from one source (TCP and nothing more, a TLS
//!   handshake and nothing more, an HTTP/2 preface only, half an HTTP/1
//!   request), against a coordinator under the shipped unit's
//!   `LimitNOFILE` with a soft limit of 1024 (as `prlimit` sets them): the
//!   running agent keeps heartbeating, a new agent registers and admin
//!   calls are served; past the per-source cap the attacker is reset at
//!   once; every idle connection is closed within the documented bounds
//!   (the TLS handshake and header timeouts, 10 s each).
//! - Strangers from many addresses fill `--max-connections`: the reserve
//!   still serves the known admin, and one more stranger is refused.
//! - An agent heartbeating every 2 s, with a header timeout of 1 s, keeps
//!   one TLS connection: the handshakes counted at the server stay put.
//! - An HTTP/1.1 connection is parked between exchanges and served again
//!   when the next request comes: requests after a pause, pipelined
//!   requests and a request whose body no handler read are all answered,
//!   in order, on the one connection.
//! - A client that reconnects resumes its TLS session from the ticket the
//!   coordinator sent; after a restart the old ticket no longer opens, and
//!   the client falls back to a full handshake.
//!
//! The attackers are plain clients (tokio-rustls over sockets bound to
//! 127.0.0.2 and up), so their source differs from the agents' and the
//! test's own (127.0.0.1).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use muster_proto::NodeState;
use muster_tests::{ec2, wait_until, Agent, Coordinator, Imds, Moto, EVENTUALLY, POLL};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

const CLUSTER: &str = "web";

/// The handshake and header timeouts of the attacked coordinator: longer
/// than the defaults (10 s), so that every attacking connection is set up
/// before the first is closed, even on a loaded machine.
const ATTACK_TIMEOUT: &str = "30s";

/// How long the test waits for every idle connection to be closed: well
/// past the bounds the coordinator is given ([`ATTACK_TIMEOUT`] for the
/// handshake and for the first request's headers).
const CLOSED_WITHIN: Duration = Duration::from_secs(120);

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What one hostile connection does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// Nothing: not even a TLS ClientHello.
    Tcp,
    /// A TLS handshake, then nothing.
    Handshake,
    /// A TLS handshake (ALPN h2), the HTTP/2 preface, then nothing.
    H2Preface,
    /// A TLS handshake and half an HTTP/1 request's headers.
    HalfRequest,
}

const KINDS: [Idle; 4] = [
    Idle::Tcp,
    Idle::Handshake,
    Idle::H2Preface,
    Idle::HalfRequest,
];

/// How a hostile connection ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    kind: Idle,
    /// It got through its TLS handshake and said its piece (never for
    /// [`Idle::Tcp`], where a refusal and an admission look alike).
    held: bool,
    /// The server closed it within [`CLOSED_WITHIN`].
    closed: bool,
}

/// The `LimitNOFILE=` of the shipped coordinator unit.
fn unit_nofile() -> u64 {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd/muster-coordinator.service");
    let text = std::fs::read_to_string(&unit).expect("reading the coordinator's unit");
    text.lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE")
        .trim()
        .parse()
        .expect("LimitNOFILE is a number")
}

/// A TLS client trusting only the coordinator's CA, offering `alpn`.
fn tls_connector(coordinator: &Coordinator, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(coordinator.ca_file()).expect("reading the CA") {
        roots.add(cert.expect("a CA certificate")).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TCP connection to `server` from `source`.
async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    tokio::time::timeout(Duration::from_secs(30), socket.connect(server))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// A TLS connection to the coordinator from `source`.
async fn tls_from(
    connector: &tokio_rustls::TlsConnector,
    source: IpAddr,
    server: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = connect_from(source, server).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(Duration::from_secs(30), connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Waits until the server closes `stream` (end of file or an error), up
/// to [`CLOSED_WITHIN`]; whether it did.
async fn closed_by_server(mut stream: impl tokio::io::AsyncRead + Unpin) -> bool {
    let mut buf = [0u8; 4096];
    let read_until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSED_WITHIN, read_until_closed)
        .await
        .is_ok()
}

/// One hostile connection of `kind` from `source`: what it got, and
/// whether the server closed it.
async fn idle_connection(
    kind: Idle,
    source: IpAddr,
    server: SocketAddr,
    h1: tokio_rustls::TlsConnector,
    h2: tokio_rustls::TlsConnector,
) -> Outcome {
    let refused = Outcome {
        kind,
        held: false,
        closed: true,
    };
    if kind == Idle::Tcp {
        let Ok(tcp) = connect_from(source, server).await else {
            return refused;
        };
        // Refused connections are reset at once; held ones closed after
        // the handshake timeout. Either way the server ends it.
        let closed = closed_by_server(tcp).await;
        return Outcome {
            kind,
            held: false,
            closed,
        };
    }
    let connector = if kind == Idle::H2Preface { h2 } else { h1 };
    let Ok(mut tls) = tls_from(&connector, source, server).await else {
        return refused;
    };
    let said = match kind {
        Idle::H2Preface => tls.write_all(H2_PREFACE).await,
        Idle::HalfRequest => {
            tls.write_all(b"POST /v1/agent/heartbeat HTTP/1.1\r\nHost: x\r\n")
                .await
        }
        _ => Ok(()),
    };
    let _ = tls.flush().await;
    Outcome {
        kind,
        held: said.is_ok(),
        closed: closed_by_server(tls).await,
    }
}

/// 1,100 idle connections from one source, of every kind, at once; the
/// tasks end when the server has closed each (or gave up waiting).
fn attack(
    coordinator: &Coordinator,
    source: IpAddr,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    let server = coordinator.api_addr();
    let h1 = tls_connector(coordinator, b"http/1.1");
    let h2 = tls_connector(coordinator, b"h2");
    (0..count)
        .map(|i| {
            let (h1, h2) = (h1.clone(), h2.clone());
            tokio::spawn(idle_connection(
                KINDS[i % KINDS.len()],
                source,
                server,
                h1,
                h2,
            ))
        })
        .collect()
}

/// `node ls` until `n` nodes are deployed.
async fn deployed(coordinator: &Coordinator, n: usize) -> usize {
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |nodes| {
            nodes
                .iter()
                .filter(|node| node.state == NodeState::Deployed)
                .count()
                >= n
        },
    )
    .await;
    nodes
        .iter()
        .filter(|node| node.state == NodeState::Deployed)
        .count()
}

/// The running `agent` keeps heartbeating, a new agent registers, and an
/// admin call is served; returns the new agent, to keep it running.
async fn fleet_is_served(
    coordinator: &Coordinator,
    sdk: &aws_sdk_ec2::Client,
    token: &str,
    agent: &Agent,
) -> (Imds, Agent) {
    let beats = coordinator.metric("muster_heartbeats_total").await;
    let later = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric("muster_heartbeats_total"),
        |n| *n >= beats + 3,
    )
    .await;
    assert!(later >= beats + 3, "heartbeats stalled: {}", agent.logs());
    let b = ec2::launch_instance(sdk, CLUSTER).await;
    let imds_b = Imds::start(sdk.clone(), &b).await;
    let agent_b = Agent::start(coordinator, &imds_b, CLUSTER, token);
    assert_eq!(deployed(coordinator, 2).await, 2, "{}", agent_b.logs());
    assert_eq!(coordinator.clusters().await.len(), 1);
    (imds_b, agent_b)
}

/// 1,100 idle connections from one host (TCP only, handshake only, an
/// HTTP/2 preface only, half a request) under the unit's LimitNOFILE: the
/// agent keeps heartbeating, a new agent registers, admin calls are
/// served, the host holds no more than its per-source share, and every
/// idle connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cannot_lock_out_the_fleet() {
    // The unit's limit, unless this process may not grant it.
    let hard = unit_nofile().min(muster_tests::procs::raise_nofile());
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let timeouts = [
        "--tls-handshake-timeout",
        ATTACK_TIMEOUT,
        "--header-timeout",
        ATTACK_TIMEOUT,
    ];
    let args = [&["--heartbeat-interval", "1s"][..], &timeouts].concat();
    let coordinator = Coordinator::start_with_nofile(&moto, (1024, hard), &args).await;
    let logs = coordinator.logs();
    assert!(
        logs.lines().any(|l| l.contains("open files limit")
            && l.contains("was=1024")
            && l.contains(&format!("soft={hard}"))),
        "serve did not log raising its open files limit to {hard}:\n{logs}"
    );
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds_a = Imds::start(sdk.clone(), &a).await;
    let agent_a = Agent::start(&coordinator, &imds_a, CLUSTER, &token);
    assert_eq!(deployed(&coordinator, 1).await, 1, "{}", agent_a.logs());

    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let tasks = attack(&coordinator, attacker, 1_100);
    // While the attack holds its connections: the attacker is refused
    // past its share...
    let per_source = "muster_connections_refused_total{reason=\"per_source\"}";
    let refused = wait_until(
        CLOSED_WITHIN,
        POLL,
        || coordinator.metric(per_source),
        |n| *n >= 800,
    )
    .await;
    assert!(refused >= 800, "only {refused} of 1,100 were refused");
    // ...while the fleet and its admin are served.
    let _agent_b = fleet_is_served(&coordinator, &sdk, &token, &agent_a).await;

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("an attacking task"));
    }
    // Past its 200, every TLS connection of the attacker was reset.
    let held = outcomes.iter().filter(|o| o.held).count();
    let open: Vec<_> = outcomes.iter().filter(|o| !o.closed).collect();
    assert!(
        open.is_empty(),
        "still open after {CLOSED_WITHIN:?}: {open:?}"
    );
    assert!(held <= 200, "one source held {held} connections at once");
    for kind in KINDS {
        assert!(
            outcomes.iter().any(|o| o.kind == kind),
            "no connection of kind {kind:?}"
        );
    }
    let first_request = "muster_connections_closed_total{reason=\"first_request\"}";
    assert!(coordinator.metric(first_request).await >= 1);
    let open_now = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric("muster_connections_open"),
        |n| *n <= 10,
    )
    .await;
    assert!(open_now <= 10, "{open_now} connections still open");
}

/// Strangers from many addresses fill --max-connections: the last tenth is
/// kept for known sources, so the admin (known by its earlier calls) is
/// served and one more stranger is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reserve_serves_known_sources() {
    muster_tests::procs::raise_nofile();
    let moto = Moto::start().await;
    // A long header timeout keeps the strangers' idle connections open
    // for the whole story.
    let coordinator = Coordinator::start_with(
        &moto,
        &[
            "--max-connections",
            "40",
            "--max-connections-per-source",
            "0",
            "--header-timeout",
            "60s",
        ],
    )
    .await;
    // The admin is known from here on.
    coordinator.create_cluster(CLUSTER).await;
    let server = coordinator.api_addr();
    let connector = tls_connector(&coordinator, b"http/1.1");
    let mut strangers = Vec::new();
    for i in 0..60u8 {
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + i));
        if let Ok(tls) = tls_from(&connector, source, server).await {
            // A refused one is reset just after its handshake seemed to
            // start; keep only those the server answers.
            strangers.push(tls);
        }
    }
    let reserved = "muster_connections_refused_total{reason=\"reserved\"}";
    assert!(
        coordinator.metric(reserved).await >= 1,
        "{} strangers were all let in",
        strangers.len()
    );
    assert!(strangers.len() <= 36, "{} strangers held", strangers.len());
    // The known admin is served from the reserve.
    assert_eq!(coordinator.clusters().await.len(), 1);
    // One more stranger is refused at once.
    let late = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1));
    assert!(tls_from(&connector, late, server).await.is_err());
    drop(strangers);
}

/// An agent heartbeating every 2 s, past a 1 s header timeout, keeps its
/// one TLS connection: the handshakes the coordinator counts do not grow
/// while it heartbeats several times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_their_connection() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start_with(
        &moto,
        &["--heartbeat-interval", "2s", "--header-timeout", "1s"],
    )
    .await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &a).await;
    let agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    assert_eq!(deployed(&coordinator, 1).await, 1, "{}", agent.logs());

    // One client for every read of /metrics: it keeps its connection too.
    let reader = coordinator.https_client();
    let beats = |min: u64| {
        let reader = reader.clone();
        let coordinator = &coordinator;
        async move {
            wait_until(
                EVENTUALLY,
                POLL,
                || coordinator.metric_with(&reader, "muster_heartbeats_total"),
                |n| *n >= min,
            )
            .await
        }
    };
    let first = beats(2).await;
    let handshakes = coordinator
        .metric_with(&reader, "muster_tls_handshakes_total")
        .await;
    let last = beats(first + 5).await;
    assert!(last >= first + 5, "the agent stopped: {}", agent.logs());
    let after = coordinator
        .metric_with(&reader, "muster_tls_handshakes_total")
        .await;
    assert!(
        after <= handshakes + 1,
        "{} TLS handshakes over {} heartbeats",
        after - handshakes,
        last - first
    );
    let idle = "muster_connections_closed_total{reason=\"idle\"}";
    assert_eq!(coordinator.metric_with(&reader, idle).await, 0);
}

/// One request for `/healthz` over a new TLS connection from `connector`,
/// read to the end (the session ticket arrives after the handshake);
/// whether the handshake was resumed.
async fn healthz_over_new_connection(
    connector: &tokio_rustls::TlsConnector,
    server: SocketAddr,
) -> rustls::HandshakeKind {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut tls = tls_from(connector, localhost, server)
        .await
        .expect("a TLS connection to the coordinator");
    let kind = tls
        .get_ref()
        .1
        .handshake_kind()
        .expect("a completed handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    kind
}

/// Clients that connect between a client's two connections: more than
/// rustls' server-side session cache holds (256).
const CROWD: usize = 300;

/// A reconnecting client resumes its session: no certificate, no
/// signature, counted apart, however many clients came between. A fresh
/// client makes a full handshake, and so does the old client once a
/// restart has drawn a new ticket key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_its_session() {
    use rustls::HandshakeKind::{Full, Resumed};
    let moto = Moto::start().await;
    let mut coordinator = Coordinator::start_with(&moto, &[]).await;
    let server = coordinator.api_addr();
    let resumed = "muster_tls_handshakes_resumed_total";
    let reader = coordinator.https_client();
    let before = coordinator.metric_with(&reader, resumed).await;

    let client = tls_connector(&coordinator, b"http/1.1");
    assert_eq!(healthz_over_new_connection(&client, server).await, Full);
    assert_eq!(healthz_over_new_connection(&client, server).await, Resumed);
    // More clients than a server-side session cache holds (rustls keeps
    // 256): the tickets keep no state, so the first client still resumes.
    for _ in 0..CROWD {
        let stranger = tls_connector(&coordinator, b"http/1.1");
        assert_eq!(healthz_over_new_connection(&stranger, server).await, Full);
    }
    assert_eq!(healthz_over_new_connection(&client, server).await, Resumed);
    assert_eq!(coordinator.metric_with(&reader, resumed).await, before + 2);

    coordinator.stop();
    coordinator.restart().await;
    assert_eq!(healthz_over_new_connection(&client, server).await, Full);
    assert_eq!(healthz_over_new_connection(&client, server).await, Resumed);
}

/// Reads one HTTP/1.1 answer from `tls`: its status line and its body (of
/// `Content-Length` bytes).
async fn read_answer(tls: &mut TlsStream<TcpStream>) -> (String, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tls.read(&mut byte).await.expect("reading an answer");
        assert_eq!(
            n,
            1,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).await.unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One HTTP/1.1 connection, parked between its exchanges: a request
/// after a pause is answered (and the pause counted), a request whose
/// body no handler reads leaves no stray bytes for the next, and
/// pipelined requests are answered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_parked_and_served_again() {
    let moto = Moto::start().await;
    let coordinator = Coordinator::start_with(&moto, &[]).await;
    // The reader speaks HTTP/2, which is never parked.
    let reader = coordinator.https_client();
    let parked = "muster_connections_parked_total";
    let before = coordinator.metric_with(&reader, parked).await;

    let connector = tls_connector(&coordinator, b"http/1.1");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut tls = tls_from(&connector, localhost, coordinator.api_addr())
        .await
        .unwrap();
    let get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    tls.write_all(get).await.unwrap();
    let (status, _) = read_answer(&mut tls).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let count = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric_with(&reader, parked),
        |n| *n > before,
    )
    .await;
    assert!(count > before, "the connection was never parked");

    // Woken by the next request's first byte, sent on its own.
    tls.write_all(&get[..1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls.write_all(&get[1..]).await.unwrap();
    let (status, _) = read_answer(&mut tls).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // A body nobody reads (GET's handler takes none), then a request.
    let unread = b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 23\r\n\r\nGET /nothing HTTP/1.1\r\n";
    tls.write_all(unread).await.unwrap();
    let (status, _) = read_answer(&mut tls).await;
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    tls.write_all(get).await.unwrap();
    let (status, _) = read_answer(&mut tls).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Pipelined: both in one write, answered in order, then closed.
    let pipelined = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    tls.write_all(pipelined).await.unwrap();
    let (first, _) = read_answer(&mut tls).await;
    let (second, _) = read_answer(&mut tls).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(second.starts_with("HTTP/1.1 404"), "{second}");
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(coordinator.metric_with(&reader, parked).await > count);
}
