//! A read that cannot be trusted changes nothing. A coordinator restarted
//! against an EC2 that knows none of its instances (a second, empty moto:
//! a leftover `AWS_ENDPOINT_URL`), or one answering for another AWS
//! account (a moto with another `MOTO_ACCOUNT_ID`: an `AWS_PROFILE` swap),
//! keeps every node through many sweeps, and carries on once pointed back.
//!
//! Node states come from the admin CLI, what EC2 holds from the SDK, what
//! DNS answers from our own resolver, and what the coordinator concluded
//! from its `/metrics` and `/healthz`.

use std::net::Ipv4Addr;
use std::time::Duration;

use muster_proto::{node_dns_name, NodeState};
use muster_tests::{ec2, wait_until, Agent, Coordinator, Imds, Moto, POLL, ZONE};

const CLUSTER: &str = "web";

const FAST: &[&str] = muster_tests::FAST_LIVENESS;

/// Long enough for a dozen sweeps several times over.
const PATIENCE: Duration = Duration::from_secs(60);

/// A coordinator on `moto` with one deployed node, its instance's IMDS and
/// agent; returns them with the instance id and its public address.
async fn deployed(moto: &Moto) -> (Coordinator, String, Imds, Agent, Ipv4Addr) {
    let client = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start_with(moto, FAST).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let id = ec2::launch_instance(&client, CLUSTER).await;
    let public = ec2::describe(&client, &id)
        .await
        .public_ipv4
        .expect("moto gives launched instances a public IPv4");
    let imds = Imds::start(client, &id).await;
    let agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    let state = wait_for(&coordinator, &id, NodeState::Deployed).await;
    assert_eq!(state, Some(NodeState::Deployed), "{}", agent.logs());
    (coordinator, id, imds, agent, public)
}

/// Polls `node ls` until instance `id`'s node is in `state`; returns the
/// state it was last seen in.
async fn wait_for(coordinator: &Coordinator, id: &str, state: NodeState) -> Option<NodeState> {
    let nodes = wait_until(
        PATIENCE,
        POLL,
        || coordinator.nodes(CLUSTER),
        |nodes| {
            nodes
                .iter()
                .any(|n| n.instance_id == id && n.state == state)
        },
    )
    .await;
    nodes.iter().find(|n| n.instance_id == id).map(|n| n.state)
}

/// Waits until the `/metrics` sample `name` reaches `at_least`; returns it.
async fn metric_reaching(coordinator: &Coordinator, name: &str, at_least: u64) -> u64 {
    wait_until(
        PATIENCE,
        POLL,
        || async { coordinator.metric(name).await },
        |value| *value >= at_least,
    )
    .await
}

/// What the node's own name answers, and the node's state.
async fn node_now(coordinator: &Coordinator, id: &str) -> (Vec<Ipv4Addr>, Option<NodeState>) {
    let name = node_dns_name(id, CLUSTER, ZONE);
    let answer = coordinator
        .resolver()
        .a(&name)
        .await
        .map(|a| a.a)
        .unwrap_or_default();
    let state = coordinator
        .nodes(CLUSTER)
        .await
        .iter()
        .find(|n| n.instance_id == id)
        .map(|n| n.state);
    (answer, state)
}

/// `/healthz`'s text, insisting on a 200.
async fn healthz(coordinator: &Coordinator) -> String {
    let answer = coordinator
        .https_client()
        .get(format!("{}/healthz", coordinator.url()))
        .send()
        .await
        .expect("GET /healthz");
    assert!(answer.status().is_success(), "{}", answer.status());
    answer.text().await.expect("healthz is text")
}

/// Restarted against an EC2 that knows none of its instances, the
/// coordinator believes none of a dozen sweeps: the node stays deployed
/// and in DNS. Pointed back, its sweeps believe EC2 again.
#[tokio::test]
async fn an_ec2_that_knows_nothing_moves_nothing() {
    let moto = Moto::start().await;
    let (mut coordinator, id, _imds, agent, public) = deployed(&moto).await;
    let empty = Moto::start().await;
    coordinator.restart_at(&empty.endpoint()).await;
    let untrusted = metric_reaching(&coordinator, "muster_ec2_untrusted_reads_total", 12).await;
    assert!(untrusted >= 12, "{}", coordinator.logs());
    assert_eq!(coordinator.metric("muster_ec2_trusted").await, 1);
    assert_eq!(healthz(&coordinator).await, "ok\n");
    assert_eq!(
        node_now(&coordinator, &id).await,
        (vec![public], Some(NodeState::Deployed)),
        "{}",
        coordinator.logs()
    );
    assert!(
        ec2::instances_of_cluster(&ec2::client(&empty.endpoint()).await, CLUSTER)
            .await
            .is_empty(),
        "the empty EC2 really knows nothing"
    );

    coordinator.restart_at(&moto.endpoint()).await;
    let sweeps = metric_reaching(&coordinator, "muster_sweeps_total", 3).await;
    assert!(sweeps >= 3, "{}", coordinator.logs());
    assert_eq!(
        coordinator.metric("muster_ec2_untrusted_reads_total").await,
        0
    );
    assert_eq!(
        node_now(&coordinator, &id).await,
        (vec![public], Some(NodeState::Deployed)),
        "{}",
        agent.logs()
    );
}

/// Restarted with credentials of another AWS account, the coordinator
/// says so on `/healthz` and in `/metrics`, refuses to launch with
/// `ec2_untrusted`, sweeps nothing, and keeps its node; back in its own
/// account it sweeps again.
#[tokio::test]
async fn another_account_is_not_trusted() {
    let moto = Moto::start().await;
    let (mut coordinator, id, _imds, _agent, public) = deployed(&moto).await;
    let foreign = Moto::start_in_account("999999999999").await;
    coordinator.restart_at(&foreign.endpoint()).await;

    let health = wait_until(
        PATIENCE,
        POLL,
        || healthz(&coordinator),
        |text| text.contains("999999999999"),
    )
    .await;
    assert!(
        health.contains("not trusted") && health.contains("999999999999"),
        "{health}"
    );
    assert_eq!(coordinator.metric("muster_ec2_trusted").await, 0);

    let refused = coordinator
        .admin(
            &ec2::create_args("more", 1, 30, &[])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("ec2_untrusted"), "{stderr}");
    assert!(
        ec2::instances_of_cluster(&ec2::client(&foreign.endpoint()).await, "more")
            .await
            .is_empty(),
        "nothing was launched in the foreign account"
    );

    // The agent heartbeats all along: a dozen sweep intervals later the
    // node is still there, and no sweep ran.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(coordinator.metric("muster_sweeps_total").await, 0);
    assert_eq!(
        node_now(&coordinator, &id).await,
        (vec![public], Some(NodeState::Deployed))
    );

    coordinator.restart_at(&moto.endpoint()).await;
    let sweeps = metric_reaching(&coordinator, "muster_sweeps_total", 3).await;
    assert!(sweeps >= 3, "{}", coordinator.logs());
    assert_eq!(coordinator.metric("muster_ec2_trusted").await, 1);
    assert_eq!(
        node_now(&coordinator, &id).await,
        (vec![public], Some(NodeState::Deployed))
    );
}
