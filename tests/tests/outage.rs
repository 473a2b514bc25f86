//! The coordinator down for several heartbeat intervals while nodes stop,
//! start and move Elastic IPs (intervals scaled down to a second): when it
//! returns, every node converges on what EC2 says, nobody registers again
//! (credentials outlive the outage), and while it was down the agents
//! backed off with jitter instead of retrying in step.

use std::time::Duration;

use muster_proto::{node_dns_name, NodeState};
use muster_tests::ec2;
use muster_tests::{wait_until, Agent, Coordinator, Imds, Moto, EVENTUALLY, POLL, ZONE};

const CLUSTER: &str = "web";

/// Agents in the fleet.
const AGENTS: usize = 4;

/// How long the coordinator stays down: several heartbeat intervals.
const OUTAGE: Duration = Duration::from_secs(8);

/// The waits an agent logged between failed heartbeats (`wait=…`).
fn logged_waits(logs: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains("the coordinator is unreachable"))
        .filter_map(|l| {
            let at = l.find("wait=")? + "wait=".len();
            l[at..].split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_converges_without_a_herd() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let flags = [
        "--heartbeat-interval",
        "1s",
        "--grace",
        "5s",
        "--sweep-interval",
        "1s",
    ];
    let mut coordinator = Coordinator::start_with(&moto, &flags).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let mut fleet: Vec<(String, Imds, Agent)> = Vec::new();
    for _ in 0..AGENTS {
        let id = ec2::launch_instance(&sdk, CLUSTER).await;
        let imds = Imds::start(sdk.clone(), &id).await;
        let agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
        fleet.push((id, imds, agent));
    }
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| n.len() == AGENTS && n.iter().all(|n| n.state == NodeState::Deployed),
    )
    .await;
    assert_eq!(nodes.len(), AGENTS, "{nodes:?}");

    coordinator.stop();
    // While it is down: one node stops and starts (a new public address),
    // another gets an Elastic IP.
    ec2::stop(&sdk, &fleet[0].0).await;
    ec2::start(&sdk, &fleet[0].0).await;
    ec2::associate_new_eip(&sdk, &fleet[1].0).await;
    tokio::time::sleep(OUTAGE).await;
    coordinator.restart().await;

    let resolver = coordinator.resolver();
    for (id, _, agent) in &fleet {
        let truth = ec2::describe(&sdk, id).await;
        let public = truth.public_ipv4.expect("moto gives a public address");
        let detail = wait_until(
            EVENTUALLY,
            POLL,
            || coordinator.node(CLUSTER, id),
            |d| d.node.state == NodeState::Deployed && d.node.public_ipv4 == Some(public),
        )
        .await;
        assert_eq!(
            (detail.node.state, detail.node.public_ipv4),
            (NodeState::Deployed, Some(public)),
            "{id}:\n{}",
            agent.logs()
        );
        let name = node_dns_name(id, CLUSTER, ZONE);
        let answer = resolver
            .a_until(&name, EVENTUALLY, |a| a.a == [public])
            .await;
        assert_eq!(answer.a, [public], "{name}");
    }
    // Credentials outlive the outage: the fleet heartbeats again, and
    // nobody registers again.
    let beats = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric("muster_heartbeats_total"),
        |n| *n >= 2 * AGENTS as u64,
    )
    .await;
    assert!(
        beats >= 2 * AGENTS as u64,
        "{beats} heartbeats since the return"
    );
    assert_eq!(coordinator.metric("muster_registrations_total").await, 0);

    // Each agent backed off on its own draw: several waits each, and no two
    // agents waited the same.
    let waits: Vec<Vec<String>> = fleet
        .iter()
        .map(|(_, _, a)| logged_waits(&a.logs()))
        .collect();
    for (agent_waits, (id, _, agent)) in waits.iter().zip(&fleet) {
        assert!(
            agent_waits.len() >= 2,
            "{id} retried {} times:\n{}",
            agent_waits.len(),
            agent.logs()
        );
    }
    for (i, a) in waits.iter().enumerate() {
        for b in &waits[i + 1..] {
            assert_ne!(a, b, "two agents retried in step: {waits:?}");
        }
    }
}
