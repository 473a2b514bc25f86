//! Node lifecycle stories: silence makes a node unreachable (never dead),
//! EC2 alone decides stopped and terminated, a coordinator restart marks no
//! node down, and `node rm` terminates through EC2. Short intervals come from
//! the coordinator's flags, not from sleeping through the defaults.
//!
//! What EC2 holds is read with the SDK, what DNS answers with our own
//! resolver; node states come from the admin CLI, the only place they live.

use std::net::Ipv4Addr;
use std::time::Duration;

use aws_sdk_ec2::Client;
use muster_proto::{cluster_dns_name, node_dns_name, node_internal_dns_name, NodeState, NodeView};
use muster_tests::{ec2, wait_until, Agent, Coordinator, DnsAnswer, Imds, Moto, POLL, ZONE};

const CLUSTER: &str = "web";

const FAST: &[&str] = muster_tests::FAST_LIVENESS;

/// Long enough for any of the above to happen several times over.
const PATIENCE: Duration = Duration::from_secs(30);

struct Scene {
    coordinator: Coordinator,
    ec2: Client,
    join_token: String,
    _moto: Moto,
}

impl Scene {
    async fn new(flags: &[&str]) -> Scene {
        let moto = Moto::start().await;
        let ec2 = ec2::client(&moto.endpoint()).await;
        let coordinator = Coordinator::start_with(&moto, flags).await;
        let join_token = coordinator.create_cluster(CLUSTER).await.join_token;
        Scene {
            coordinator,
            ec2,
            join_token,
            _moto: moto,
        }
    }

    /// Launches an instance with its IMDS and agent, and waits until it is
    /// deployed; returns the instance id, IMDS, agent and EC2's public IPv4.
    async fn deployed_node(&self) -> (String, Imds, Agent, Ipv4Addr) {
        let id = ec2::launch_instance(&self.ec2, CLUSTER).await;
        let imds = Imds::start(self.ec2.clone(), &id).await;
        let agent = Agent::start(&self.coordinator, &imds, CLUSTER, &self.join_token);
        let public = ec2::describe(&self.ec2, &id)
            .await
            .public_ipv4
            .expect("moto gives launched instances a public IPv4");
        let node = self.wait_for_state(&id, NodeState::Deployed).await;
        assert_eq!(node.state, NodeState::Deployed, "{}", agent.logs());
        (id, imds, agent, public)
    }

    /// Polls `node ls` until instance `id`'s node is in `state`; returns it.
    async fn wait_for_state(&self, id: &str, state: NodeState) -> NodeView {
        self.coordinator
            .wait_for_node(CLUSTER, id, state, PATIENCE)
            .await
    }

    /// Asks DNS for `name` until `accept` likes the answer; returns it.
    async fn resolve_until(&self, name: &str, accept: impl Fn(&DnsAnswer) -> bool) -> DnsAnswer {
        self.coordinator
            .resolver()
            .a_until(name, PATIENCE, accept)
            .await
    }
}

/// A killed agent makes its node unreachable: it leaves the round robin but
/// keeps its own name; restarted, it is deployed and back in the round robin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_is_unreachable_not_dead() {
    let scene = Scene::new(FAST).await;
    let (id, _imds, mut agent, public) = scene.deployed_node().await;
    let own = node_dns_name(&id, CLUSTER, ZONE);
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    scene
        .resolve_until(&round_robin, |a| a.a == vec![public])
        .await;

    agent.stop();
    scene.wait_for_state(&id, NodeState::Unreachable).await;
    let rr = scene.resolve_until(&round_robin, |a| a.a.is_empty()).await;
    assert!(
        rr.a.is_empty(),
        "an unreachable node leaves the round robin: {rr:?}"
    );
    let mine = scene.coordinator.resolver().a(&own).await.unwrap();
    assert_eq!(mine.a, vec![public], "but keeps its own name");

    // Sweeps keep running and EC2 says running: still only unreachable.
    tokio::time::sleep(Duration::from_secs(3)).await;
    scene.wait_for_state(&id, NodeState::Unreachable).await;

    agent.restart();
    scene.wait_for_state(&id, NodeState::Deployed).await;
    let rr = scene
        .resolve_until(&round_robin, |a| a.a == vec![public])
        .await;
    assert_eq!(rr.a, vec![public], "back in the round robin");
    let events = scene.coordinator.node(CLUSTER, &id).await.events;
    let path: Vec<NodeState> = events.iter().map(|e| e.to).collect();
    assert!(
        path.ends_with(&[NodeState::Unreachable, NodeState::Deployed]),
        "every transition is recorded: {events:#?}"
    );
}

/// EC2 stopping the instance makes the node stopped; started again with a
/// new public address and its agent restarted, it is deployed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_start_follow_ec2() {
    let scene = Scene::new(FAST).await;
    let (id, _imds, mut agent, public) = scene.deployed_node().await;
    agent.stop();
    ec2::stop(&scene.ec2, &id).await;
    scene.wait_for_state(&id, NodeState::Stopped).await;
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    let rr = scene.resolve_until(&round_robin, |a| a.a.is_empty()).await;
    assert!(
        rr.a.is_empty(),
        "a stopped node leaves the round robin: {rr:?}"
    );

    let started = ec2::start(&scene.ec2, &id).await;
    let new_public = started
        .public_ipv4
        .expect("moto draws a new public IPv4 on start");
    assert_ne!(new_public, public);
    agent.restart();
    scene.wait_for_state(&id, NodeState::Deployed).await;
    let own = node_dns_name(&id, CLUSTER, ZONE);
    let answer = scene.resolve_until(&own, |a| a.a == vec![new_public]).await;
    assert_eq!(answer.a, vec![new_public]);
    assert_eq!(
        scene.coordinator.nodes(CLUSTER).await.len(),
        1,
        "still one node"
    );
}

/// An instance terminated behind muster's back (the console) makes its
/// node terminated within a sweep, and every one of its records goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_termination_removes_the_node_from_dns() {
    let scene = Scene::new(FAST).await;
    let (id, _imds, mut agent, _) = scene.deployed_node().await;
    agent.stop();
    ec2::terminate(&scene.ec2, &id).await;
    scene.wait_for_state(&id, NodeState::Terminated).await;
    for name in [
        node_dns_name(&id, CLUSTER, ZONE),
        node_internal_dns_name(&id, CLUSTER, ZONE),
        format!("app.{}", node_dns_name(&id, CLUSTER, ZONE)),
    ] {
        let answer = scene.resolve_until(&name, |a| a.is_nxdomain()).await;
        assert!(answer.is_nxdomain(), "{name}: {answer:?}");
    }
}

/// A coordinator restart gives every node a full grace: agents that are
/// quiet across the restart are not marked unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_marks_no_node_down() {
    // Heartbeats every 4 s and a 10 s grace: agents are quiet for seconds
    // at a time, and the coordinator is away for 3 s of that.
    let flags = [
        "--heartbeat-interval",
        "4s",
        "--grace",
        "10s",
        "--sweep-interval",
        "1s",
    ];
    let mut scene = Scene::new(&flags).await;
    let (id, _imds, agent, public) = scene.deployed_node().await;
    scene.coordinator.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    scene.coordinator.restart().await;
    // Long enough for a restart that forgot when agents were last heard to
    // mark them, short of a real grace without heartbeats.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let events = scene.coordinator.node(CLUSTER, &id).await.events;
    assert!(
        events.iter().all(|e| e.to != NodeState::Unreachable),
        "no node marked down by the restart: {events:#?}\n{}",
        agent.logs()
    );
    let rr = scene
        .coordinator
        .resolver()
        .a(&cluster_dns_name(CLUSTER, ZONE))
        .await
        .unwrap();
    assert_eq!(rr.a, vec![public]);
}

/// `node rm` terminates the instance in EC2 (read back with the SDK), the
/// node goes terminating then terminated, and its DNS records go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rm_terminates_through_ec2() {
    let scene = Scene::new(FAST).await;
    let (id, _imds, _agent, _) = scene.deployed_node().await;
    let removed: NodeView = scene
        .coordinator
        .admin_json(&["node", "rm", CLUSTER, &id])
        .await;
    assert!(
        matches!(
            removed.state,
            NodeState::Terminating | NodeState::Terminated
        ),
        "{removed:#?}"
    );
    let view = wait_until(
        PATIENCE,
        POLL,
        || ec2::describe(&scene.ec2, &id),
        |v| v.state == "terminated",
    )
    .await;
    assert_eq!(view.state, "terminated", "EC2 terminated the instance");
    scene.wait_for_state(&id, NodeState::Terminated).await;
    let own = node_dns_name(&id, CLUSTER, ZONE);
    let answer = scene.resolve_until(&own, |a| a.is_nxdomain()).await;
    assert!(answer.is_nxdomain(), "{own}: {answer:?}");
    let again = scene.coordinator.admin(&["node", "rm", CLUSTER, &id]).await;
    assert!(
        !again.status.success(),
        "a terminated node cannot be removed twice"
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("node_terminated"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

/// A bring-your-own machine joins without IMDS under its hostname and with
/// no EC2 check, goes unreachable when its agent stops and stays so through
/// many sweeps (EC2 knows nothing of it), and `node rm` deletes it and its
/// DNS names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bring_your_own_node() {
    let scene = Scene::new(FAST).await;
    let minted: muster_proto::ByonTokenResponse = scene
        .coordinator
        .admin_json(&["cluster", "byon-token", CLUSTER])
        .await;
    let address = Ipv4Addr::new(198, 51, 100, 20);
    let mut agent = Agent::start_byon(
        &scene.coordinator,
        CLUSTER,
        &minted.byon_token,
        "0123456789abcdef0123456789abcdef",
        "rack7",
        address,
    );
    let nodes = wait_until(
        PATIENCE,
        POLL,
        || scene.coordinator.nodes(CLUSTER),
        |nodes: &Vec<NodeView>| {
            nodes
                .iter()
                .any(|n| n.name == "rack7" && n.state == NodeState::Deployed)
        },
    )
    .await;
    assert!(
        nodes
            .iter()
            .any(|n| n.name == "rack7" && n.state == NodeState::Deployed),
        "{nodes:?}\n{}",
        agent.logs()
    );
    let node = scene.coordinator.node(CLUSTER, "rack7").await;
    assert!(node.node.byon);
    assert_eq!(node.node.instance_id, "m-0123456789abcdef0123456789abcdef");
    let resolver = scene.coordinator.resolver();
    // Its address is a private one: it is named under internal only.
    let name = node_internal_dns_name("rack7", CLUSTER, ZONE);
    let public_name = node_dns_name("rack7", CLUSTER, ZONE);
    let answer = resolver
        .a_until(&name, PATIENCE, |a| a.a == [address])
        .await;
    assert_eq!(answer.a, [address]);
    assert!(resolver.a(&public_name).await.unwrap().is_nxdomain());

    // The join token meant for EC2 instances does not let it in.
    let mut stranger = Agent::start_byon(
        &scene.coordinator,
        CLUSTER,
        &scene.join_token,
        "fedcba9876543210fedcba9876543210",
        "rack8",
        Ipv4Addr::new(198, 51, 100, 21),
    );
    let logs = wait_until(
        PATIENCE,
        POLL,
        || std::future::ready(stranger.logs()),
        |l| l.contains("bring-your-own token"),
    )
    .await;
    assert!(logs.contains("bring-your-own token"), "{logs}");
    stranger.stop();

    // Silent: unreachable, and still so after many sweeps.
    agent.stop();
    let node = wait_until(
        PATIENCE,
        POLL,
        || scene.coordinator.node(CLUSTER, "rack7"),
        |d| d.node.state == NodeState::Unreachable,
    )
    .await;
    assert_eq!(node.node.state, NodeState::Unreachable);
    let sweeps_before = sweep_count(&scene.coordinator).await;
    wait_until(
        PATIENCE,
        POLL,
        || sweep_count(&scene.coordinator),
        |n| *n >= sweeps_before + 4,
    )
    .await;
    let node = scene.coordinator.node(CLUSTER, "rack7").await;
    assert_eq!(node.node.state, NodeState::Unreachable, "{:?}", node.events);
    assert!(node
        .events
        .iter()
        .all(|e| e.source != muster_proto::EventSource::Sweep));
    // It keeps its own name while unreachable.
    assert_eq!(resolver.a(&name).await.unwrap().a, [address]);

    // node rm deletes it, and its names go.
    let output = scene
        .coordinator
        .admin(&["node", "rm", CLUSTER, "rack7"])
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(scene
        .coordinator
        .nodes(CLUSTER)
        .await
        .iter()
        .all(|n| n.name != "rack7"));
    let gone = resolver
        .a_until(&name, PATIENCE, DnsAnswer::is_nxdomain)
        .await;
    assert!(gone.is_nxdomain(), "{gone:?}");
}

/// How many sweeps the coordinator has run, from `/metrics`.
async fn sweep_count(coordinator: &Coordinator) -> u64 {
    coordinator.metric("muster_sweeps_total").await
}
