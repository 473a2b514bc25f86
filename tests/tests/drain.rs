//! Nodes leave their cluster's round robin before they go: a failing
//! health check, a stopping agent, EC2's warnings and an operator's drain
//! each take the node out of `c.<zone>` at once while its own name still
//! answers, and each way back works.
//!
//! Real binaries throughout: the agent runs its checks against an HTTP
//! server the test runs, reads EC2's warnings from the strict IMDS, and is
//! stopped with real signals. What DNS answers is read with our own
//! resolver from the embedded server; states and events from the admin
//! CLI; what the agent shows from `muster-agent status`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::Client;
use muster_proto::{cluster_dns_name, node_dns_name, NodeState, NodeView, NoticeKind};
use muster_tests::{ec2, wait_until, Agent, Coordinator, DnsAnswer, Imds, Moto, POLL, ZONE};
use nix::sys::signal::Signal;

const CLUSTER: &str = "web";

/// Heartbeats every second and a 3 s grace, so a silent node is noticed.
const FAST: &[&str] = &["--heartbeat-interval", "1s", "--grace", "3s"];

/// Long enough for any of the above to happen several times over.
const PATIENCE: Duration = Duration::from_secs(30);

struct Scene {
    coordinator: Coordinator,
    ec2: Client,
    join_token: String,
    _moto: Moto,
}

/// One node: its instance, IMDS, agent and public address.
struct Node {
    id: String,
    imds: Imds,
    agent: Agent,
    public: Ipv4Addr,
}

impl Scene {
    async fn new() -> Scene {
        let moto = Moto::start().await;
        let ec2 = ec2::client(&moto.endpoint()).await;
        let coordinator = Coordinator::start_with(&moto, FAST).await;
        let join_token = coordinator.create_cluster(CLUSTER).await.join_token;
        Scene {
            coordinator,
            ec2,
            join_token,
            _moto: moto,
        }
    }

    /// Launches an instance and starts its agent, set up by `prepare`
    /// before it starts; waits until the node is deployed and in the round
    /// robin.
    async fn node(&self, prepare: impl FnOnce(&mut Agent)) -> Node {
        let id = ec2::launch_instance(&self.ec2, CLUSTER).await;
        let imds = Imds::start(self.ec2.clone(), &id).await;
        let mut agent = Agent::prepared(&self.coordinator, &imds, CLUSTER, &self.join_token);
        prepare(&mut agent);
        agent.restart();
        let public = ec2::describe(&self.ec2, &id)
            .await
            .public_ipv4
            .expect("moto gives launched instances a public IPv4");
        let node = self.wait_for(&id, NodeState::Deployed).await;
        assert_eq!(node.state, NodeState::Deployed, "{}", agent.logs());
        let rr = self.round_robin_until(|a| a.a.contains(&public)).await;
        assert!(rr.a.contains(&public), "{rr:?}");
        Node {
            id,
            imds,
            agent,
            public,
        }
    }

    /// Polls `node ls` until instance `id`'s node is in `state`; returns it.
    async fn wait_for(&self, id: &str, state: NodeState) -> NodeView {
        self.coordinator
            .wait_for_node(CLUSTER, id, state, PATIENCE)
            .await
    }

    /// Asks the cluster's round robin until `accept` likes the answer.
    async fn round_robin_until(&self, accept: impl Fn(&DnsAnswer) -> bool) -> DnsAnswer {
        self.coordinator
            .resolver()
            .a_until(&cluster_dns_name(CLUSTER, ZONE), PATIENCE, accept)
            .await
    }

    /// The node's own name still answers its public address.
    async fn assert_own_name(&self, node: &Node) {
        let own = node_dns_name(&node.id, CLUSTER, ZONE);
        let answer = self.coordinator.resolver().a(&own).await.unwrap();
        assert_eq!(answer.a, vec![node.public], "{own} keeps answering");
    }

    /// The reasons of the node's events, oldest first.
    async fn reasons(&self, id: &str) -> Vec<(NodeState, String)> {
        let detail = self.coordinator.node(CLUSTER, id).await;
        detail
            .events
            .into_iter()
            .map(|e| (e.to, e.reason))
            .collect()
    }
}

/// An HTTP server answering every request with a status the test sets.
struct Health {
    status: Arc<AtomicU16>,
    url: String,
    _server: tokio::task::JoinHandle<()>,
}

impl Health {
    async fn start() -> Health {
        let status = Arc::new(AtomicU16::new(200));
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        let shared = status.clone();
        let app = axum::Router::new().fallback(move || {
            let code = shared.load(Ordering::Relaxed);
            async move {
                let code = axum::http::StatusCode::from_u16(code).unwrap();
                (code, format!("status {}\n", code.as_u16()))
            }
        });
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Health {
            status,
            url,
            _server: server,
        }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }
}

/// A node whose HTTP check fails leaves the round robin within the check's
/// interval times its failure threshold (plus a heartbeat), keeps its own
/// name, shows the check on `node show` and `muster-agent status`, and is
/// back once the server recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_check_takes_the_node_out_of_the_round_robin() {
    let scene = Scene::new().await;
    let health = Health::start().await;
    let config = format!(
        "[[check]]\nname = \"web\"\nhttp = \"{}\"\ninterval = \"1s\"\ntimeout = \"1s\"\nfailures = 2\n",
        health.url
    );
    let node = scene.node(|agent| agent.set_config(&config)).await;

    health.answer(500);
    let unhealthy = scene.wait_for(&node.id, NodeState::Unhealthy).await;
    let check = &unhealthy.checks[0];
    assert!(
        check.name == "web" && !check.passing && check.output.contains("500"),
        "{check:?}"
    );
    let rr = scene
        .round_robin_until(|a| !a.a.contains(&node.public))
        .await;
    assert!(
        !rr.a.contains(&node.public),
        "out of the round robin: {rr:?}"
    );
    scene.assert_own_name(&node).await;
    let (_, status) = node.agent.status_json().await;
    assert_eq!(status["checks"][0]["passing"], false, "{status:#}");
    let reasons = scene.reasons(&node.id).await;
    assert!(
        reasons.iter().any(|(to, why)| *to == NodeState::Unhealthy
            && why.starts_with("health checks failing: web (HTTP 500")),
        "{reasons:#?}"
    );

    health.answer(200);
    scene.wait_for(&node.id, NodeState::Deployed).await;
    let rr = scene
        .round_robin_until(|a| a.a.contains(&node.public))
        .await;
    assert!(
        rr.a.contains(&node.public),
        "back in the round robin: {rr:?}"
    );
    let reasons = scene.reasons(&node.id).await;
    assert_eq!(
        reasons.last().map(|(to, why)| (*to, why.as_str())),
        Some((NodeState::Deployed, "its health checks pass"))
    );
}

/// SIGTERM: the node is out of the round robin while the agent still
/// runs (it waits its drain time), a second SIGTERM ends the wait, and a
/// restarted agent brings the node back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_agent_leaves_the_round_robin_first() {
    let scene = Scene::new().await;
    let mut node = scene
        .node(|agent| agent.set_env("MUSTER_AGENT_DRAIN_WAIT", "60s"))
        .await;

    node.agent.signal(Signal::SIGTERM);
    let draining = scene.wait_for(&node.id, NodeState::Draining).await;
    assert_eq!(draining.state, NodeState::Draining);
    let rr = scene
        .round_robin_until(|a| !a.a.contains(&node.public))
        .await;
    assert!(!rr.a.contains(&node.public), "{rr:?}");
    assert!(
        !node.agent.has_exited(),
        "the agent still runs once its node is out of the round robin:\n{}",
        node.agent.logs()
    );
    scene.assert_own_name(&node).await;

    node.agent.signal(Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !node.agent.has_exited() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    assert!(
        node.agent.has_exited(),
        "a second SIGTERM ends the wait:\n{}",
        node.agent.logs()
    );
    let reasons = scene.reasons(&node.id).await;
    assert!(
        reasons
            .iter()
            .any(|(to, why)| *to == NodeState::Draining && why == "leaving: the agent is stopping"),
        "{reasons:#?}"
    );
    // Silent now: unreachable once the grace has passed, like any node.
    scene.wait_for(&node.id, NodeState::Unreachable).await;

    node.agent.restart();
    scene.wait_for(&node.id, NodeState::Deployed).await;
    let rr = scene
        .round_robin_until(|a| a.a.contains(&node.public))
        .await;
    assert!(rr.a.contains(&node.public), "back after a restart: {rr:?}");
}

/// EC2's warnings through IMDS: a rebalance recommendation shows on the
/// node and in `/metrics` and leaves it in the round robin; a Spot
/// interruption drains it at once, the event naming EC2's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_interruption_drains_the_node() {
    let scene = Scene::new().await;
    let node = scene.node(|_| {}).await;

    node.imds.set_served(
        "meta-data/events/recommendations/rebalance",
        Some(r#"{"noticeTime": "2026-12-07T08:17:00Z"}"#),
    );
    let shown = wait_until(
        PATIENCE,
        POLL,
        || scene.coordinator.node(CLUSTER, &node.id),
        |d| !d.node.notices.is_empty(),
    )
    .await;
    let notice = &shown.node.notices[0];
    assert_eq!(notice.kind, NoticeKind::RebalanceRecommendation);
    assert_eq!(notice.time.as_deref(), Some("2026-12-07T08:17:00Z"));
    assert_eq!(shown.node.state, NodeState::Deployed, "only shown");
    let sample = "muster_node_ec2_notices{kind=\"rebalance_recommendation\"}";
    assert_eq!(scene.coordinator.metric(sample).await, 1);
    let shown = scene
        .coordinator
        .admin(&["node", "show", CLUSTER, &node.id])
        .await;
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("rebalance_recommendation at 2026-12-07T08:17:00Z"),
        "{text}"
    );

    node.imds.set_served(
        "meta-data/spot/instance-action",
        Some(r#"{"action": "terminate", "time": "2026-12-07T08:22:00Z"}"#),
    );
    scene.wait_for(&node.id, NodeState::Draining).await;
    let rr = scene
        .round_robin_until(|a| !a.a.contains(&node.public))
        .await;
    assert!(!rr.a.contains(&node.public), "{rr:?}");
    scene.assert_own_name(&node).await;
    let reasons = scene.reasons(&node.id).await;
    assert!(
        reasons.iter().any(|(to, why)| *to == NodeState::Draining
            && why.contains("spot interruption")
            && why.contains("2026-12-07T08:22:00Z")),
        "{reasons:#?}"
    );
}

/// `node drain` holds a node out of the round robin across its agent's
/// restarts; `node undrain` brings it back; a removed node cannot be
/// drained, and a node that does not exist is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drain_outlasts_restarts() {
    let scene = Scene::new().await;
    let mut node = scene.node(|_| {}).await;

    let drained: NodeView = scene
        .coordinator
        .admin_json(&["node", "drain", CLUSTER, &node.id])
        .await;
    assert_eq!(
        (drained.state, drained.drained),
        (NodeState::Draining, true)
    );
    let rr = scene
        .round_robin_until(|a| !a.a.contains(&node.public))
        .await;
    assert!(!rr.a.contains(&node.public), "{rr:?}");
    scene.assert_own_name(&node).await;

    node.agent.restart();
    // The agent registered again (a new run) and heartbeats: still drained.
    wait_until(
        PATIENCE,
        POLL,
        || node.agent.status_json(),
        |(_, s)| s["node_state"] == "draining",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    scene.wait_for(&node.id, NodeState::Draining).await;

    let undrained: NodeView = scene
        .coordinator
        .admin_json(&["node", "undrain", CLUSTER, &node.id])
        .await;
    assert_eq!(
        (undrained.state, undrained.drained),
        (NodeState::Deployed, false)
    );
    let rr = scene
        .round_robin_until(|a| a.a.contains(&node.public))
        .await;
    assert!(rr.a.contains(&node.public), "{rr:?}");

    let missing = scene
        .coordinator
        .admin(&["node", "drain", CLUSTER, "i-00000000000000000"])
        .await;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("not_found"),
        "{stderr}"
    );
    let removed = scene
        .coordinator
        .admin(&["node", "rm", CLUSTER, &node.id])
        .await;
    assert!(removed.status.success());
    let refused = scene
        .coordinator
        .admin(&["node", "drain", CLUSTER, &node.id])
        .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("node_terminated"),
        "{stderr}"
    );
}
