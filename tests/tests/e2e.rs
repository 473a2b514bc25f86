//! End-to-end stories: the real coordinator and agent against moto and the
//! IMDS emulator. What landed is read back independently: EC2 through the
//! SDK, DNS through a resolver that asks the coordinator's DNS server, and
//! the CLI as an operator would use it.

use std::net::Ipv4Addr;

use aws_sdk_ec2::Client;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use muster_proto::token::{format_secret, TokenKind, SECRET_BYTES};
use muster_proto::{
    cluster_dns_name, node_dns_name, node_internal_dns_name, paths, ErrorBody, HeartbeatRequest,
    NodeState, NodeView, RegisterRequest, RegisterResponse, PROTOCOL_VERSION,
};
use muster_tests::ec2::{self, InstanceView, NOT_OURS};
use muster_tests::{wait_until, Agent, Coordinator, DnsAnswer, Imds, Moto, EVENTUALLY, POLL, ZONE};
use reqwest::StatusCode;

/// The cluster every story uses.
const CLUSTER: &str = "web";

/// A coordinator on its own moto with cluster `web` created.
struct Scene {
    // Dropped in this order: coordinator before moto.
    coordinator: Coordinator,
    ec2: Client,
    join_token: String,
    _moto: Moto,
}

impl Scene {
    async fn new() -> Scene {
        Scene::with_flags(&[]).await
    }

    /// A scene whose coordinator runs with `flags`.
    async fn with_flags(flags: &[&str]) -> Scene {
        let moto = Moto::start().await;
        let ec2 = ec2::client(&moto.endpoint()).await;
        let coordinator = Coordinator::start_with(&moto, flags).await;
        let created = coordinator.create_cluster(CLUSTER).await;
        assert_eq!(created.cluster.name, CLUSTER);
        assert_eq!(created.cluster.dns_name, cluster_dns_name(CLUSTER, ZONE));
        assert_eq!(
            TokenKind::of(&created.join_token),
            Some(TokenKind::Join),
            "join token {:?} has the join token shape",
            created.join_token
        );
        Scene {
            coordinator,
            ec2,
            join_token: created.join_token,
            _moto: moto,
        }
    }

    /// Launches an instance in moto and serves its metadata.
    async fn launch(&self) -> (String, Imds) {
        let id = ec2::launch_instance(&self.ec2, CLUSTER).await;
        let imds = Imds::start(self.ec2.clone(), &id).await;
        (id, imds)
    }

    async fn describe(&self, id: &str) -> InstanceView {
        ec2::describe(&self.ec2, id).await
    }

    fn agent(&self, imds: &Imds, join_token: &str) -> Agent {
        Agent::start(&self.coordinator, imds, CLUSTER, join_token)
    }

    /// `node ls --cluster web`, polled until it shows exactly one node that
    /// `accept` likes; returns the last listing either way.
    async fn wait_for_node(&self, accept: impl Fn(&NodeView) -> bool) -> Vec<NodeView> {
        wait_until(
            EVENTUALLY,
            POLL,
            || self.coordinator.nodes(CLUSTER),
            |nodes| nodes.len() == 1 && accept(&nodes[0]),
        )
        .await
    }

    /// Asks the coordinator's DNS for `name`'s A records until `accept`
    /// likes the answer; returns the last answer either way.
    async fn resolve_until(&self, name: &str, accept: impl Fn(&DnsAnswer) -> bool) -> DnsAnswer {
        self.coordinator
            .resolver()
            .a_until(name, EVENTUALLY, accept)
            .await
    }

    /// A register body for instance `id` claiming `public`, with the
    /// instance's signed identity document.
    async fn register_body(&self, id: &str, public: Option<Ipv4Addr>) -> RegisterRequest {
        let view = self.describe(id).await;
        ec2::signed(RegisterRequest {
            protocol: PROTOCOL_VERSION,
            cluster: CLUSTER.to_owned(),
            instance_id: id.to_owned(),
            availability_zone: view.availability_zone,
            region: ec2::TEST_REGION.to_owned(),
            private_ipv4: Some(view.private_ipv4.expect("moto gives a private address")),
            public_ipv4: public,
            agent_version: "0.0.0-test".to_owned(),
            byon: None,
            signed_identity: None,
            ipv6: None,
        })
    }

    /// `POST /v1/agent/register` straight to the API with `bearer`.
    async fn post_register(&self, bearer: &str, body: &RegisterRequest) -> (StatusCode, String) {
        self.post(paths::AGENT_REGISTER, bearer, body).await
    }

    /// `POST /v1/agent/heartbeat` for instance `id` straight to the API with
    /// `bearer`, claiming the addresses EC2 has.
    async fn post_heartbeat(&self, bearer: &str, id: &str) -> (StatusCode, String) {
        let view = self.describe(id).await;
        let body = HeartbeatRequest {
            instance_id: id.to_owned(),
            private_ipv4: Some(view.private_ipv4.expect("moto gives a private address")),
            public_ipv4: view.public_ipv4,
            facts: muster_tests::host_facts(),
            checks: Vec::new(),
            notices: Vec::new(),
            leaving: None,
            agent_version: None,
            ipv6: None,
        };
        self.post(paths::AGENT_HEARTBEAT, bearer, &body).await
    }

    async fn post(
        &self,
        path: &str,
        bearer: &str,
        body: &impl serde::Serialize,
    ) -> (StatusCode, String) {
        let url = format!("{}{path}", self.coordinator.url());
        let response = self
            .coordinator
            .https_client()
            .post(&url)
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        (status, response.text().await.unwrap_or_default())
    }
}

/// Parses an error answer, insisting on the `{"error": {"code", "message"}}` shape.
fn error_body(body: &str) -> ErrorBody {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
}

/// A well-formed join token that no coordinator issued.
fn stranger_join_token() -> String {
    format_secret(TokenKind::Join, &rand::random::<[u8; SECRET_BYTES]>())
}

/// What the agent said about itself: its logs and its status output.
async fn agent_words(agent: &Agent) -> String {
    let (code, status) = agent.status_json().await;
    format!("{}\nstatus exit {code}: {status}", agent.logs())
}

/// An agent on a launched instance registers: the node is `deployed` and DNS
/// answers EC2's addresses under every name the design promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_publishes_the_node_in_dns() {
    let scene = Scene::new().await;
    let (id, imds) = scene.launch().await;
    let view = scene.describe(&id).await;
    let public = view
        .public_ipv4
        .expect("moto maps a public address on launch");
    let private = view.private_ipv4.expect("moto gives a private address");
    let _agent = scene.agent(&imds, &scene.join_token);

    let nodes = scene
        .wait_for_node(|n| n.state == NodeState::Deployed)
        .await;
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    let node = &nodes[0];
    assert_eq!(node.state, NodeState::Deployed);
    assert_eq!(node.name, id, "the node is named after its instance");
    assert_eq!(node.instance_id, id);
    assert_eq!(node.cluster, CLUSTER);
    assert_eq!(node.availability_zone, view.availability_zone);
    assert_eq!(node.public_ipv4, Some(public));
    assert_eq!(node.private_ipv4, Some(private));
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let internal = node_internal_dns_name(&id, CLUSTER, ZONE);
    assert_eq!(node.dns_name, name);
    assert_eq!(node.internal_dns_name, internal);

    let answer = scene.resolve_until(&name, |a| a.a == [public]).await;
    assert_eq!(answer.rcode, ResponseCode::NoError);
    assert_eq!(answer.a, [public], "{name} is the public address");
    assert!(answer.authoritative, "the coordinator answers for its zone");

    let answer = scene.resolve_until(&internal, |a| a.a == [private]).await;
    assert_eq!(answer.a, [private], "{internal} is the private address");

    let app = format!("anything.{name}");
    let answer = scene.resolve_until(&app, |a| !a.a.is_empty()).await;
    assert_eq!(
        answer.cnames,
        [format!("{name}.")],
        "{app} is a CNAME to the node"
    );
    assert_eq!(answer.a, [public], "{app} leads to the public address");

    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    let answer = scene.resolve_until(&round_robin, |a| !a.a.is_empty()).await;
    assert_eq!(answer.a, [public], "{round_robin} holds the deployed node");

    let resolver = scene.coordinator.resolver();
    let soa = resolver.query(ZONE, RecordType::SOA).await.unwrap();
    assert_eq!(soa.rcode, ResponseCode::NoError);
    assert!(
        soa.types.contains(&RecordType::SOA),
        "SOA at the apex: {soa:?}"
    );
    let ns = resolver.query(ZONE, RecordType::NS).await.unwrap();
    assert!(ns.types.contains(&RecordType::NS), "NS at the apex: {ns:?}");
    for unknown in [
        format!("nobody.{CLUSTER}.{ZONE}"),
        node_dns_name("i-0123456789abcdef0", CLUSTER, ZONE),
        format!("{id}.elsewhere.{ZONE}"),
    ] {
        let answer = resolver.a(&unknown).await.unwrap();
        assert!(answer.is_nxdomain(), "{unknown}: {answer:?}");
    }

    let clusters = scene.coordinator.clusters().await;
    assert_eq!(clusters.len(), 1, "{clusters:#?}");
    assert_eq!((clusters[0].nodes, clusters[0].deployed), (1, 1));

    let detail = scene.coordinator.node(CLUSTER, &id).await;
    assert_eq!(detail.node.name, id);
    assert_eq!(
        detail.events.last().map(|e| e.to),
        Some(NodeState::Deployed),
        "the registration is recorded: {:#?}",
        detail.events
    );
    assert!(imds.requests() > 0, "the agent read the IMDS emulator");
}

/// An Elastic IP associated while the agent runs reaches DNS with no restart
/// of anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elastic_ip_reaches_dns_without_restart() {
    let scene = Scene::new().await;
    let (id, imds) = scene.launch().await;
    let first = scene
        .describe(&id)
        .await
        .public_ipv4
        .expect("a public address on launch");
    let agent = scene.agent(&imds, &scene.join_token);
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let answer = scene.resolve_until(&name, |a| a.a == [first]).await;
    assert_eq!(answer.a, [first]);
    let (agent_pid, coordinator_pid) = (agent.pid(), scene.coordinator.pid());

    let eip = ec2::associate_new_eip(&scene.ec2, &id).await;
    assert_eq!(
        scene.describe(&id).await.public_ipv4,
        Some(eip),
        "EC2 has the Elastic IP"
    );

    let answer = scene.resolve_until(&name, |a| a.a == [eip]).await;
    assert_eq!(answer.a, [eip], "{name} follows the Elastic IP");
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    let answer = scene.resolve_until(&round_robin, |a| a.a == [eip]).await;
    assert_eq!(answer.a, [eip], "{round_robin} follows the Elastic IP");

    assert_eq!(agent.pid(), agent_pid, "the agent was not restarted");
    assert_eq!(
        scene.coordinator.pid(),
        coordinator_pid,
        "the coordinator was not restarted"
    );
    let nodes = scene.wait_for_node(|n| n.public_ipv4 == Some(eip)).await;
    assert_eq!(nodes.len(), 1, "still one node: {nodes:#?}");
    assert_eq!(nodes[0].name, id);
    assert_eq!(nodes[0].public_ipv4, Some(eip));
    assert_eq!(nodes[0].state, NodeState::Deployed);
}

/// A stop/start (moto draws a new public address) with the agent restarted on
/// its state dir keeps the same node and moves DNS to the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_keeps_the_node_and_moves_dns() {
    let scene = Scene::new().await;
    let (id, imds) = scene.launch().await;
    let before = scene.describe(&id).await;
    let first = before.public_ipv4.expect("a public address on launch");
    let mut agent = scene.agent(&imds, &scene.join_token);
    let name = node_dns_name(&id, CLUSTER, ZONE);
    assert_eq!(
        scene.resolve_until(&name, |a| a.a == [first]).await.a,
        [first]
    );

    agent.stop();
    ec2::stop(&scene.ec2, &id).await;
    let after = ec2::start(&scene.ec2, &id).await;
    let second = after.public_ipv4.expect("start maps a public address");
    assert_ne!(second, first, "moto draws a fresh public address on start");
    assert_eq!(after.private_ipv4, before.private_ipv4);
    agent.restart();

    let answer = scene.resolve_until(&name, |a| a.a == [second]).await;
    assert_eq!(answer.a, [second], "{name} moved to the new public address");
    let nodes = scene
        .wait_for_node(|n| n.state == NodeState::Deployed && n.public_ipv4 == Some(second))
        .await;
    assert_eq!(nodes.len(), 1, "still one node: {nodes:#?}");
    assert_eq!(nodes[0].name, id, "the same node");
    assert_eq!(nodes[0].state, NodeState::Deployed);
    assert_eq!(nodes[0].public_ipv4, Some(second));
    let internal = node_internal_dns_name(&id, CLUSTER, ZONE);
    let private = after.private_ipv4.expect("a private address");
    assert_eq!(
        scene.resolve_until(&internal, |a| a.a == [private]).await.a,
        [private]
    );
}

/// A join token the coordinator never issued gets 401 with a JSON error, and
/// an agent holding it never becomes a node and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_join_token_is_refused() {
    let scene = Scene::new().await;
    let (id, imds) = scene.launch().await;
    let wrong = stranger_join_token();
    assert_ne!(wrong, scene.join_token);
    let public = scene.describe(&id).await.public_ipv4;

    let body = scene.register_body(&id, public).await;
    let (status, text) = scene.post_register(&wrong, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    let refusal = error_body(&text);
    assert_eq!(refusal.error.code, "unauthorized", "{text}");

    let agent = scene.agent(&imds, &wrong);
    let words = wait_until(
        EVENTUALLY,
        POLL,
        || agent_words(&agent),
        |words| words.contains("unauthorized") || words.contains(&refusal.error.message),
    )
    .await;
    assert!(
        words.contains("unauthorized") || words.contains(&refusal.error.message),
        "the agent tells it was refused: {words}"
    );
    let nodes = scene.coordinator.nodes(CLUSTER).await;
    assert!(nodes.is_empty(), "no node from a refused join: {nodes:#?}");
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let answer = scene.coordinator.resolver().a(&name).await.unwrap();
    assert!(answer.is_nxdomain(), "{name}: {answer:?}");
}

/// A claim of a public address EC2 does not back is refused with
/// `address_mismatch` and changes nothing; the same claim with EC2's address
/// is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_claim_not_backed_by_ec2_is_refused() {
    let scene = Scene::new().await;
    let (id, _imds) = scene.launch().await;
    let truth = scene
        .describe(&id)
        .await
        .public_ipv4
        .expect("a public address");
    assert_ne!(truth, NOT_OURS);

    let lie = scene.register_body(&id, Some(NOT_OURS)).await;
    let (status, text) = scene.post_register(&scene.join_token, &lie).await;
    assert!(
        status == StatusCode::CONFLICT || status == StatusCode::UNPROCESSABLE_ENTITY,
        "a mismatch is 409 or 422, got {status}: {text}"
    );
    assert_eq!(error_body(&text).error.code, "address_mismatch", "{text}");
    let nodes = scene.coordinator.nodes(CLUSTER).await;
    assert!(
        nodes.is_empty(),
        "a refused claim stores nothing: {nodes:#?}"
    );
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let answer = scene.coordinator.resolver().a(&name).await.unwrap();
    assert!(answer.is_nxdomain(), "{name}: {answer:?}");

    // The same request with the address EC2 has is fine: only the lie was wrong.
    let honest = RegisterRequest {
        public_ipv4: Some(truth),
        ..lie
    };
    let (status, text) = scene.post_register(&scene.join_token, &honest).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let registered: RegisterResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(registered.node.name, id);
    assert_eq!(TokenKind::of(&registered.credential), Some(TokenKind::Node));
    let answer = scene.resolve_until(&name, |a| a.a == [truth]).await;
    assert_eq!(answer.a, [truth]);
}

/// An agent whose IMDS lies about the public address is refused with
/// `address_mismatch` and never becomes a node; once IMDS tells the truth
/// again, the same agent registers on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_lying_imds_is_refused() {
    let scene = Scene::new().await;
    let (id, imds) = scene.launch().await;
    imds.set_public_ipv4_override(Some(NOT_OURS));
    let agent = scene.agent(&imds, &scene.join_token);

    let words = wait_until(
        EVENTUALLY,
        POLL,
        || agent_words(&agent),
        |words| words.contains("address_mismatch"),
    )
    .await;
    assert!(
        words.contains("address_mismatch"),
        "the agent tells the coordinator refused its addresses: {words}"
    );
    let nodes = scene.coordinator.nodes(CLUSTER).await;
    assert!(nodes.is_empty(), "no node from a refused claim: {nodes:#?}");
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let answer = scene.coordinator.resolver().a(&name).await.unwrap();
    assert!(answer.is_nxdomain(), "{name}: {answer:?}");

    imds.set_public_ipv4_override(None);
    let truth = scene.describe(&id).await.public_ipv4;
    let nodes = scene
        .wait_for_node(|n| n.state == NodeState::Deployed && n.public_ipv4 == truth)
        .await;
    assert_eq!(nodes.len(), 1, "{nodes:#?}\n{}", agent.logs());
    assert_eq!(nodes[0].public_ipv4, truth);
    let answer = scene
        .resolve_until(&name, |a| truth.is_some_and(|ip| a.a == vec![ip]))
        .await;
    assert_eq!(
        Some(answer.a.clone()),
        truth.map(|ip| vec![ip]),
        "{name}: {answer:?}"
    );
}

/// `muster-agent status --json` reports a healthy deployed agent (exit 0) and
/// a stopped one as not running (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_deployed_then_not_running() {
    let scene = Scene::new().await;
    let (id, imds) = scene.launch().await;
    let mut agent = scene.agent(&imds, &scene.join_token);

    let (code, status) = wait_until(
        EVENTUALLY,
        POLL,
        || agent.status_json(),
        |(code, status)| {
            *code == 0 && status["state"] == "deployed" && status["dns_resolves"] == true
        },
    )
    .await;
    assert_eq!(code, 0, "healthy: {status}");
    assert_eq!(status["state"], "deployed", "{status}");
    assert_eq!(status["dns_resolves"], true, "{status}");
    assert_eq!(status["instance_id"], id.as_str(), "{status}");

    agent.stop();
    let (code, status) = agent.status_json().await;
    assert_eq!(code, 3, "a stopped agent is not running: {status}");
}

/// An instance that joins again after losing its state dir gets back in on
/// its own and at once: its signed identity document proves it is that
/// instance, so the live node is not held against it (no `node_live`). It
/// is admitted as the same node, and the credential it held before stops
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_after_state_loss_keeps_one_node_and_revokes_the_old_credential() {
    let scene = Scene::with_flags(&["--heartbeat-interval", "1s", "--grace", "10s"]).await;
    let (id, imds) = scene.launch().await;
    let mut agent = scene.agent(&imds, &scene.join_token);
    let nodes = scene
        .wait_for_node(|n| n.state == NodeState::Deployed)
        .await;
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    let old = wait_until(
        EVENTUALLY,
        POLL,
        || async { agent.node_credential() },
        Option::is_some,
    )
    .await
    .unwrap_or_else(|| panic!("no node credential in {}", agent.state_dir().display()));
    let (status, text) = scene.post_heartbeat(&old, &id).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the first credential works at first: {text}"
    );

    agent.stop();
    agent.wipe_state();
    agent.restart();

    let new = wait_until(
        EVENTUALLY,
        POLL,
        || async { agent.node_credential() },
        |c| c.as_ref().is_some_and(|c| *c != old),
    )
    .await;
    let new = new.unwrap_or_else(|| panic!("the agent kept no credential after joining again"));
    assert_ne!(new, old, "joining again hands out a new credential");
    let nodes = scene
        .wait_for_node(|n| n.state == NodeState::Deployed)
        .await;
    assert_eq!(nodes.len(), 1, "one instance is one node: {nodes:#?}");
    assert_eq!(nodes[0].name, id, "the same node");
    assert_eq!(nodes[0].state, NodeState::Deployed);

    let (status, text) = scene.post_heartbeat(&old, &id).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old credential is dead: {text}"
    );
    assert_eq!(error_body(&text).error.code, "unauthorized", "{text}");
    let (status, text) = scene.post_heartbeat(&new, &id).await;
    assert_eq!(status, StatusCode::OK, "the new credential works: {text}");
    let live = "muster_security_events_total{code=\"node_live\"}";
    assert_eq!(
        scene.coordinator.metric(live).await,
        0,
        "proof needs no wait"
    );
}

/// A coordinator restarted on its data dir still knows the node and answers
/// its name, and the running agent's next address change still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_keeps_nodes_and_dns() {
    let mut scene = Scene::new().await;
    let (id, imds) = scene.launch().await;
    let first = scene
        .describe(&id)
        .await
        .public_ipv4
        .expect("a public address on launch");
    let agent = scene.agent(&imds, &scene.join_token);
    let name = node_dns_name(&id, CLUSTER, ZONE);
    assert_eq!(
        scene.resolve_until(&name, |a| a.a == [first]).await.a,
        [first]
    );
    let (agent_pid, coordinator_pid) = (agent.pid(), scene.coordinator.pid());

    scene.coordinator.restart().await;
    assert_ne!(
        scene.coordinator.pid(),
        coordinator_pid,
        "a new coordinator process"
    );

    let answer = scene.resolve_until(&name, |a| a.a == [first]).await;
    assert_eq!(answer.a, [first], "{name} survives the restart");
    let nodes = scene
        .wait_for_node(|n| n.state == NodeState::Deployed)
        .await;
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    assert_eq!(nodes[0].name, id);

    let eip = ec2::associate_new_eip(&scene.ec2, &id).await;
    let answer = scene.resolve_until(&name, |a| a.a == [eip]).await;
    assert_eq!(
        answer.a,
        [eip],
        "the agent's change reaches the restarted coordinator"
    );
    assert_eq!(agent.pid(), agent_pid, "the agent was not restarted");
}

/// A state dir baked into an image (its file left readable by others, as
/// image builds often leave it) and booted on another instance: the agent
/// sees the instance id differ, discards the file rather than refusing its
/// mode, starts fresh with the join token, and the new instance becomes
/// its own node; the first node is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_from_another_instance_starts_a_fresh_node() {
    let scene = Scene::new().await;
    let (first, first_imds) = scene.launch().await;
    let mut agent = scene.agent(&first_imds, &scene.join_token);
    scene
        .wait_for_node(|n| n.instance_id == first && n.state == NodeState::Deployed)
        .await;
    let first_credential = wait_until(
        EVENTUALLY,
        POLL,
        || async { agent.node_credential() },
        Option::is_some,
    )
    .await
    .expect("the first agent kept a credential");

    agent.stop();
    std::fs::set_permissions(
        agent.state_dir().join("state.json"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("loosening the baked state file");
    let (second, second_imds) = scene.launch().await;
    agent.move_to(&second_imds);
    agent.restart();

    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || scene.coordinator.nodes(CLUSTER),
        |nodes| {
            nodes.len() == 2
                && nodes
                    .iter()
                    .any(|n| n.instance_id == second && n.state == NodeState::Deployed)
        },
    )
    .await;
    assert_eq!(
        nodes.len(),
        2,
        "two instances, two nodes: {nodes:#?}\n{}",
        agent.logs()
    );
    let second_node = nodes.iter().find(|n| n.instance_id == second).unwrap();
    assert_eq!(second_node.state, NodeState::Deployed);
    assert_eq!(second_node.name, second, "named after its own instance");
    let new_credential = agent
        .node_credential()
        .expect("a credential for the new node");
    assert_ne!(
        new_credential, first_credential,
        "the baked credential was not reused"
    );
    // The first node's credential is still its own, bound to the first instance.
    let (status, text) = scene.post_heartbeat(&first_credential, &first).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let name = node_dns_name(&second, CLUSTER, ZONE);
    let public = scene.describe(&second).await.public_ipv4;
    let answer = scene
        .resolve_until(&name, |a| public.is_some_and(|ip| a.a == vec![ip]))
        .await;
    assert_eq!(Some(answer.a), public.map(|ip| vec![ip]));
}
