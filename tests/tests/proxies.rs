//! `--trusted-proxies` is kept apart from the nodes: a proxy range that
//! holds a node's address could let that node forge `X-Forwarded-For` and
//! speak from any address, so `serve` refuses to start beside such a node,
//! and a launch into subnets that overlap the range is refused before any
//! instance is made.

use muster_proto::NodeState;
use muster_tests::ec2;
use muster_tests::{wait_until, Agent, Coordinator, Imds, Moto, EVENTUALLY, POLL};

const CLUSTER: &str = "web";

/// A coordinator restarted with a trusted proxy range holding a node's
/// private address does not start, and says which node and range; with a
/// range apart from every node it starts and still has the node. A launch
/// into the VPC muster makes (10.77.0.0/16) while a range inside it is
/// trusted is refused with `launch_refused`, and EC2 holds no instance of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_are_kept_apart_from_nodes() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let mut coordinator = Coordinator::start(&moto).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let id = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &id).await;
    let mut agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| n.len() == 1 && n[0].state == NodeState::Deployed,
    )
    .await;
    assert_eq!(nodes.len(), 1, "{}", agent.logs());
    agent.stop();
    let private = ec2::describe(&sdk, &id).await.private_ipv4.unwrap();
    // moto draws an instance's private address at random from 10/8, so
    // both ranges are chosen around the address it drew.
    let [a, b, c, _] = private.octets();
    let covering = format!("{a}.{b}.{c}.0/24");
    // Inside the VPC muster makes (10.77.0.0/16), so a launch there
    // overlaps it, but apart from the node.
    let apart = if (a, b, c) == (10, 77, 255) {
        "10.77.254.0/24"
    } else {
        "10.77.255.0/24"
    };

    let why = coordinator
        .try_restart_with(&["--trusted-proxies", &covering])
        .await
        .expect_err("a proxy range over a node is refused");
    assert!(
        why.contains("exited") && why.contains(&covering) && why.contains(&id),
        "{why}"
    );

    coordinator
        .try_restart_with(&["--trusted-proxies", apart])
        .await
        .unwrap_or_else(|why| panic!("a range apart from every node is fine: {why}"));
    assert_eq!(coordinator.nodes(CLUSTER).await.len(), 1);

    let mut args = vec!["cluster", "create", "db"];
    let launch = ec2::launch_args(1, 30);
    args.extend(launch.iter().map(String::as_str));
    let refused = coordinator.admin(&args).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("launch_refused") && stderr.contains("trusted-proxies"),
        "{stderr}"
    );
    assert!(ec2::instances_of_cluster(&sdk, "db").await.is_empty());
}
