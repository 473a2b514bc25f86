//! IPv6: an instance in a dual-stack subnet (moto gives it an address
//! from the subnet's /64) gets AAAA records beside its A records, in the
//! embedded server and in BIND over RFC 2136, checked against EC2 like its
//! IPv4 addresses: an IPv6 address EC2 does not report is refused, and DNS
//! keeps the true one.
//!
//! The agent reads its address from the strict IMDS
//! (`network/interfaces/macs/<mac>/ipv6s`, as EC2 serves it); what landed
//! is read with our own resolver from each server, and node state from the
//! admin CLI.

use std::net::Ipv6Addr;

use aws_sdk_ec2::Client;
use muster_proto::{cluster_dns_name, node_dns_name, NodeState};
use muster_tests::bind::Bind;
use muster_tests::{ec2, wait_until, Agent, Coordinator, Imds, Moto, EVENTUALLY, POLL, ZONE};

const CLUSTER: &str = "web";

/// A coordinator on its own moto with `args`, and cluster [`CLUSTER`]'s
/// join token.
async fn scene(args: &[&str]) -> (Moto, Client, Coordinator, String) {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start_with(&moto, args).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    (moto, sdk, coordinator, token)
}

/// A dual-stack node, deployed: its instance id, IPv6 address, IMDS and
/// agent.
struct Node {
    id: String,
    ipv6: Ipv6Addr,
    imds: Imds,
    agent: Agent,
}

async fn dual_stack_node(ec2: &Client, coordinator: &Coordinator, token: &str) -> Node {
    node_with_ipv6(ec2, coordinator, token, None).await
}

/// A node launched into a new dual-stack subnet (or, with `ipv6_only`
/// naming moto's endpoint, an IPv6-only one), deployed.
async fn node_with_ipv6(
    ec2: &Client,
    coordinator: &Coordinator,
    token: &str,
    ipv6_only: Option<&str>,
) -> Node {
    let id = ec2::launch_with_ipv6(ec2, CLUSTER, ipv6_only).await;
    let view = ec2::describe(ec2, &id).await;
    let ipv6 = *view
        .ipv6
        .first()
        .expect("moto gives an instance in a dual-stack subnet an IPv6 address");
    let imds = Imds::start(ec2.clone(), &id).await;
    let agent = Agent::start(coordinator, &imds, CLUSTER, token);
    let node = coordinator
        .wait_for_node(CLUSTER, &id, NodeState::Deployed, EVENTUALLY)
        .await;
    assert_eq!(node.ipv6, Some(ipv6), "{node:#?}");
    Node {
        id,
        ipv6,
        imds,
        agent,
    }
}

/// The embedded server answers AAAA for the node's name, its wildcard and
/// its cluster's round robin, A beside it; a heartbeat naming an IPv6
/// address EC2 does not report is refused (`address_mismatch`) and DNS
/// keeps the true one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_node_gets_aaaa_records() {
    let (_moto, sdk, coordinator, token) = scene(&[]).await;
    let node = dual_stack_node(&sdk, &coordinator, &token).await;
    let resolver = coordinator.resolver();

    let own = node_dns_name(&node.id, CLUSTER, ZONE);
    let answer = resolver
        .aaaa_until(&own, EVENTUALLY, |a| a.aaaa == vec![node.ipv6])
        .await;
    assert_eq!(answer.aaaa, vec![node.ipv6], "{answer:?}");
    let wildcard = resolver.aaaa(&format!("app.{own}")).await.unwrap();
    assert_eq!(wildcard.aaaa, vec![node.ipv6], "{wildcard:?}");
    let round_robin = resolver
        .aaaa(&cluster_dns_name(CLUSTER, ZONE))
        .await
        .unwrap();
    assert_eq!(round_robin.aaaa, vec![node.ipv6]);
    let a = resolver.a(&own).await.unwrap();
    assert!(a.aaaa.is_empty() && a.a.len() == 1, "A beside it: {a:?}");

    // IMDS now names an address the instance does not have.
    let forged: Ipv6Addr = "2600:1f18:dead:beef::1".parse().unwrap();
    let mac = ec2::describe(&sdk, &node.id)
        .await
        .mac
        .expect("moto names the interface's MAC");
    node.imds.set_served(
        &format!("meta-data/network/interfaces/macs/{mac}/ipv6s"),
        Some(&forged.to_string()),
    );
    let refused = wait_until(
        EVENTUALLY,
        POLL,
        || {
            coordinator.metric(
                "muster_agent_refusals_total{endpoint=\"heartbeat\",code=\"address_mismatch\"}",
            )
        },
        |n| *n >= 1,
    )
    .await;
    assert!(refused >= 1, "{}", node.agent.logs());
    let logs = coordinator.logs();
    assert!(logs.contains(&forged.to_string()), "the refusal names it");
    let detail = coordinator.node(CLUSTER, &node.id).await.node;
    assert_eq!(detail.ipv6, Some(node.ipv6), "the store keeps the true one");
    let answer = resolver.aaaa(&own).await.unwrap();
    assert_eq!(answer.aaaa, vec![node.ipv6], "and DNS too");

    node.imds.set_served(
        &format!("meta-data/network/interfaces/macs/{mac}/ipv6s"),
        None,
    );
}

/// An IPv6-only instance (no IPv4 address at all; IMDS has no
/// `local-ipv4`) joins with its IPv6 address, checked against EC2: its name
/// and its cluster's round robin answer AAAA, A finds no data, and it has
/// no internal name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_only_node_is_answered_by_aaaa_alone() {
    let (moto, sdk, coordinator, token) = scene(&[]).await;
    let node = node_with_ipv6(&sdk, &coordinator, &token, Some(&moto.endpoint())).await;
    let view = coordinator.node(CLUSTER, &node.id).await.node;
    assert_eq!((view.private_ipv4, view.public_ipv4), (None, None));

    let resolver = coordinator.resolver();
    let own = node_dns_name(&node.id, CLUSTER, ZONE);
    let answer = resolver
        .aaaa_until(&own, EVENTUALLY, |a| a.aaaa == vec![node.ipv6])
        .await;
    assert_eq!(answer.aaaa, vec![node.ipv6], "{answer:?}");
    let a = resolver.a(&own).await.unwrap();
    assert!(a.a.is_empty() && !a.is_nxdomain(), "NODATA for A: {a:?}");
    let internal = resolver
        .a(&muster_proto::node_internal_dns_name(
            &node.id, CLUSTER, ZONE,
        ))
        .await
        .unwrap();
    assert!(internal.is_nxdomain(), "no internal name: {internal:?}");
    let round_robin = resolver
        .aaaa(&cluster_dns_name(CLUSTER, ZONE))
        .await
        .unwrap();
    assert_eq!(round_robin.aaaa, vec![node.ipv6]);
    let (_, status) = node.agent.status_json().await;
    assert_eq!(status["ipv6"], node.ipv6.to_string(), "{status:#}");
    assert!(status["private_ipv4"].is_null(), "{status:#}");
}

/// Over RFC 2136, BIND holds the node's AAAA beside its A, and the round
/// robin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aaaa_records_reach_bind() {
    let bind = Bind::start(ZONE).await;
    let secrets = tempfile::tempdir().expect("a directory for the TSIG secret");
    let args = bind.coordinator_args(secrets.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (_moto, sdk, coordinator, token) = scene(&args).await;
    let node = dual_stack_node(&sdk, &coordinator, &token).await;

    let resolver = bind.resolver();
    let own = node_dns_name(&node.id, CLUSTER, ZONE);
    let answer = resolver
        .aaaa_until(&own, EVENTUALLY, |a| a.aaaa == vec![node.ipv6])
        .await;
    assert_eq!(answer.aaaa, vec![node.ipv6], "{}", bind.logs());
    let round_robin = resolver
        .aaaa_until(&cluster_dns_name(CLUSTER, ZONE), EVENTUALLY, |a| {
            a.aaaa == vec![node.ipv6]
        })
        .await;
    assert_eq!(round_robin.aaaa, vec![node.ipv6]);
    let a = resolver.a(&own).await.unwrap();
    assert_eq!(a.a.len(), 1, "the A record stays beside it: {a:?}");
    drop(node.agent);
}
