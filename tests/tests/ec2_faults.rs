//! EC2 misbehaving, caused through the EC2 proxy in front of moto: a burst
//! of throttling, an instance EC2 does not know yet right after launch
//! (its eventual consistency), and an endpoint that accepts and never
//! answers. What must hold: nothing moves on a failed read, every call is
//! bounded, and everything converges once EC2 behaves again.

use std::time::Duration;

use muster_proto::NodeState;
use muster_tests::{
    ec2, wait_until, Agent, Coordinator, Ec2Proxy, Hold, Imds, Moto, EVENTUALLY, POLL,
};

const CLUSTER: &str = "web";

/// Starts moto, the proxy, a coordinator asking EC2 through it with
/// `flags`, and a cluster; the join token.
async fn scene(flags: &[&str]) -> (Moto, Ec2Proxy, Coordinator, String) {
    let moto = Moto::start().await;
    let proxy = Ec2Proxy::start(moto.endpoint(), vec![]).await;
    let coordinator = Coordinator::start_at(&proxy.endpoint(), flags).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    (moto, proxy, coordinator, token)
}

/// Waits until the cluster's one node is deployed; its events' reasons.
async fn deployed(coordinator: &Coordinator, agent: &Agent) -> Vec<String> {
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| n.len() == 1 && n[0].state == NodeState::Deployed,
    )
    .await;
    assert!(
        nodes.len() == 1 && nodes[0].state == NodeState::Deployed,
        "{nodes:?}\n{}",
        agent.logs()
    );
    coordinator
        .node(CLUSTER, &nodes[0].name)
        .await
        .events
        .into_iter()
        .map(|e| format!("{} {}", e.to, e.reason))
        .collect()
}

/// Waits until the counter `metric` has grown by `by`; its value.
async fn grown(coordinator: &Coordinator, metric: &str, by: u64) -> u64 {
    let start = coordinator.metric(metric).await;
    let now = wait_until(
        Duration::from_secs(90),
        POLL,
        || coordinator.metric(metric),
        |n| *n >= start + by,
    )
    .await;
    assert!(now >= start + by, "{metric} stayed at {now} (from {start})");
    now
}

/// A burst of `RequestLimitExceeded`: a register rides out two on the
/// SDK's retries; a longer burst fails the sweeps' reads, which move
/// nothing (not even with `--unknown-sweeps 1`), and the sweeps after it
/// read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_ridden_out() {
    let flags = ["--sweep-interval", "1s", "--unknown-sweeps", "1"];
    let (moto, proxy, coordinator, token) = scene(&flags).await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &id).await;
    proxy.fail_next("DescribeInstances", "RequestLimitExceeded", 2);
    let agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    deployed(&coordinator, &agent).await;
    assert_eq!(proxy.refused().get("RequestLimitExceeded"), Some(&2));
    assert_eq!(
        coordinator.metric("muster_registrations_total").await,
        1,
        "the register was not refused: {}",
        agent.logs()
    );

    // Twelve in a row: four sweeps' reads fail, three attempts each.
    proxy.fail_next("DescribeInstances", "RequestLimitExceeded", 12);
    wait_until(
        Duration::from_secs(90),
        POLL,
        || std::future::ready(proxy.refused().get("RequestLimitExceeded").copied()),
        |n| *n == Some(14),
    )
    .await;
    assert_eq!(proxy.refused().get("RequestLimitExceeded"), Some(&14));
    grown(&coordinator, "muster_sweeps_total", 3).await;
    let events = deployed(&coordinator, &agent).await;
    assert!(
        events.iter().all(|e| !e.starts_with("terminated")),
        "a failed read moved the node: {events:?}"
    );
}

/// EC2 answers `InvalidInstanceID.NotFound` for a fresh instance for a
/// while: its first registers are refused `instance_not_found`, its agent
/// keeps trying, and the node deploys; nothing is terminated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_not_visible_yet_deploys_later() {
    let (moto, proxy, coordinator, token) = scene(&["--sweep-interval", "1s"]).await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &id).await;
    proxy.fail_next("DescribeInstances", "InvalidInstanceID.NotFound", 3);
    let agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    let events = deployed(&coordinator, &agent).await;
    assert_eq!(proxy.refused().get("InvalidInstanceID.NotFound"), Some(&3));
    let refused = "muster_agent_refusals_total{code=\"instance_not_found\"}";
    assert_eq!(coordinator.metric(refused).await, 3, "{}", agent.logs());
    assert!(
        events
            .iter()
            .all(|e| !e.starts_with("terminated") && !e.starts_with("failed")),
        "{events:?}"
    );
}

/// An EC2 endpoint that accepts DescribeInstances and never answers: the
/// sweep waits at most the SDK's timeouts, heartbeats and the admin API
/// are served meanwhile, the node stays deployed, and once EC2 answers
/// again the sweeps carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_endpoint_costs_a_timeout_not_a_stuck_loop() {
    let (moto, proxy, coordinator, token) = scene(&["--sweep-interval", "1s"]).await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &id).await;
    let agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    deployed(&coordinator, &agent).await;
    grown(&coordinator, "muster_sweeps_total", 1).await;

    proxy.hold(Some(Hold {
        action: "DescribeInstances".into(),
        after: 0,
        reaches_ec2: false,
    }));
    let held = wait_until(
        EVENTUALLY,
        POLL,
        || std::future::ready(proxy.held()),
        |n| *n > 0,
    )
    .await;
    assert!(held > 0, "no DescribeInstances was held");
    // A sweep is parked in its read; the rest goes on.
    grown(&coordinator, "muster_heartbeats_total", 3).await;
    deployed(&coordinator, &agent).await;

    proxy.hold(None);
    // The parked attempt times out (20 s), the retry is answered, and
    // sweeps follow one another again.
    grown(&coordinator, "muster_sweeps_total", 3).await;
    deployed(&coordinator, &agent).await;
}
