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
    // The four reads that failed for good are counted as throttled; the
    // two the register rode out are not failures.
    let throttled = "muster_aws_request_errors_total{service=\"ec2\",\
                     operation=\"DescribeInstances\",kind=\"throttled\"}";
    let counted = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric(throttled),
        |n| *n >= 4,
    )
    .await;
    assert_eq!(counted, 4);
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
    let refused = "muster_agent_refusals_total{endpoint=\"register\",code=\"instance_not_found\"}";
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

/// Waits until the proxy has held a call.
async fn one_held(proxy: &Ec2Proxy) {
    let held = wait_until(
        EVENTUALLY,
        POLL,
        || std::future::ready(proxy.held()),
        |n| *n > 0,
    )
    .await;
    assert!(held > 0, "no call was held");
}

/// A register whose EC2 check is parked (EC2 answered "running", the
/// answer held back) while `node rm` runs: when the answer arrives, the
/// register is refused (409 `conflict`: the node changed while it was
/// decided) and the node stays on its way out; it is never `deployed`
/// again and has no name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rm_wins_over_a_parked_register() {
    let (moto, proxy, coordinator, token) = scene(&[]).await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&sdk, CLUSTER).await;
    let request = ec2::register_request(&sdk, &id, CLUSTER).await;
    let (status, body) = coordinator.register_raw(&token, &request).await;
    assert_eq!(status, 200, "{body}");

    proxy.hold(Some(Hold {
        action: "DescribeInstances".into(),
        after: 0,
        reaches_ec2: true,
    }));
    let register = coordinator.register_raw(&token, &request);
    let remove = async {
        one_held(&proxy).await;
        // Only the register's read is parked; node rm's own go through.
        proxy.hold(None);
        let removed = coordinator.admin(&["node", "rm", CLUSTER, &id]).await;
        assert!(
            removed.status.success(),
            "{}",
            String::from_utf8_lossy(&removed.stderr)
        );
        proxy.release();
    };
    let ((status, body), ()) = tokio::join!(register, remove);
    // Decided from a node that was live, written to one on its way out:
    // the store's compare-and-set refuses it.
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("\"conflict\"") && body.contains("terminating"),
        "{body}"
    );

    let node = coordinator.node(CLUSTER, &id).await.node;
    assert!(
        matches!(node.state, NodeState::Terminating | NodeState::Terminated),
        "{node:?}"
    );
    let name = muster_proto::node_dns_name(&id, CLUSTER, muster_tests::ZONE);
    let answer = coordinator.resolver().a(&name).await.unwrap();
    assert!(answer.is_nxdomain(), "{name}: {answer:?}");
}

/// A sweep's read of EC2 (taken while the node had its first public
/// address) arrives late, after a heartbeat brought a newer Elastic IP:
/// the older read does not write its address back, and DNS ends on the
/// newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sweep_never_writes_an_older_address() {
    let (moto, proxy, coordinator, token) = scene(&["--sweep-interval", "1s"]).await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &id).await;
    let agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    deployed(&coordinator, &agent).await;
    let first = ec2::describe(&sdk, &id)
        .await
        .public_ipv4
        .expect("a public address");
    let name = muster_proto::node_dns_name(&id, CLUSTER, muster_tests::ZONE);
    let resolver = coordinator.resolver();
    assert_eq!(
        resolver
            .a_until(&name, EVENTUALLY, |a| a.a == [first])
            .await
            .a,
        [first]
    );

    // The next sweep reads EC2 now (the first address) and is held.
    proxy.hold(Some(Hold {
        action: "DescribeInstances".into(),
        after: 0,
        reaches_ec2: true,
    }));
    one_held(&proxy).await;
    proxy.hold(None);
    let eip = ec2::associate_new_eip(&sdk, &id).await;
    assert_ne!(eip, first);
    let moved = resolver.a_until(&name, EVENTUALLY, |a| a.a == [eip]).await;
    assert_eq!(
        moved.a,
        [eip],
        "the heartbeat brings the Elastic IP:\n{}",
        agent.logs()
    );

    // The stale read arrives; later sweeps read the truth again.
    proxy.release();
    grown(&coordinator, "muster_sweeps_total", 2).await;
    let answer = resolver.a(&name).await.unwrap();
    assert_eq!(answer.a, [eip], "{name} stays on the newer address");
    let node = coordinator.node(CLUSTER, &id).await.node;
    assert_eq!(node.public_ipv4, Some(eip));
}
