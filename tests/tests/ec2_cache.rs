//! The EC2 cache (`--ec2-cache-refresh`): a register its listing confirms
//! costs no DescribeInstances of that instance, while an address change and
//! a refusal still rest on EC2. A proxy in front of moto counts the
//! DescribeInstances calls that name each instance; DNS is read through a
//! resolver.

use muster_proto::{node_dns_name, paths, RegisterRequest, PROTOCOL_VERSION};
use muster_tests::ec2;
use muster_tests::{wait_until, Agent, Coordinator, Ec2Proxy, Imds, Moto, EVENTUALLY, POLL, ZONE};

const CLUSTER: &str = "web";

/// A sample of the cache's metrics for the test region.
fn sample(name: &str, labels: &str) -> String {
    format!("{name}{{region=\"{}\"{labels}}}", ec2::TEST_REGION)
}

/// Waits until the coordinator's listing of the test region holds `n`
/// instances.
async fn wait_listed(coordinator: &Coordinator, n: u64) {
    let listed = sample("muster_ec2_cache_instances", "");
    let listed = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric(&listed),
        |&listed| listed >= n,
    )
    .await;
    assert!(listed >= n, "the listing holds {listed} instances, not {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_spares_ec2_yet_never_refuses_on_old_facts() {
    let moto = Moto::start().await;
    let proxy = Ec2Proxy::start(moto.endpoint(), Vec::new()).await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator =
        Coordinator::start_at(&proxy.endpoint(), &["--ec2-cache-refresh", "5s"]).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;

    // The first claim of the region is checked against EC2 itself, and
    // the instance EC2 confirms starts the region's listing.
    let first = ec2::launch_instance(&sdk, CLUSTER).await;
    let first_imds = Imds::start(sdk.clone(), &first).await;
    let _first_agent = Agent::start(&coordinator, &first_imds, CLUSTER, &token);
    let resolver = coordinator.resolver();
    let first_public = ec2::describe(&sdk, &first).await.public_ipv4;
    let answer = resolver
        .a_until(&node_dns_name(&first, CLUSTER, ZONE), EVENTUALLY, |a| {
            a.a.len() == 1
        })
        .await;
    assert_eq!(answer.a, Vec::from_iter(first_public));
    assert!(proxy.described(&first) >= 1, "{first} was asked about");

    // An instance launched before a listing registers on the listing's word.
    let second = ec2::launch_instance(&sdk, CLUSTER).await;
    wait_listed(&coordinator, 2).await;
    let second_imds = Imds::start(sdk.clone(), &second).await;
    let _second_agent = Agent::start(&coordinator, &second_imds, CLUSTER, &token);
    let second_name = node_dns_name(&second, CLUSTER, ZONE);
    let second_public = ec2::describe(&sdk, &second).await.public_ipv4;
    let answer = resolver
        .a_until(&second_name, EVENTUALLY, |a| a.a.len() == 1)
        .await;
    assert_eq!(answer.a, Vec::from_iter(second_public));
    assert_eq!(
        proxy.described(&second),
        0,
        "{second} registered without a DescribeInstances of its own"
    );
    let hits = coordinator
        .metric(&sample("muster_ec2_cache_lookups_total", ",result=\"hit\""))
        .await;
    assert!(hits >= 1, "the cache answered at least one lookup");

    // An Elastic IP associated since: DNS follows, whether the next
    // listing or EC2 itself confirms the new address.
    let eip = ec2::associate_new_eip(&sdk, &second).await;
    let answer = resolver
        .a_until(&second_name, EVENTUALLY, |a| a.a == [eip])
        .await;
    assert_eq!(answer.a, [eip], "{second_name} follows the Elastic IP");

    // An instance of another cluster is listed (it carries a cluster tag)
    // but its facts do not bear the claim out: EC2 is asked, and refuses.
    let stranger = ec2::launch_instance(&sdk, "db").await;
    wait_listed(&coordinator, 3).await;
    let view = ec2::describe(&sdk, &stranger).await;
    let body = ec2::signed(RegisterRequest {
        protocol: PROTOCOL_VERSION,
        cluster: CLUSTER.to_owned(),
        instance_id: stranger.clone(),
        availability_zone: view.availability_zone,
        region: ec2::TEST_REGION.to_owned(),
        private_ipv4: Some(view.private_ipv4.expect("moto gives a private address")),
        public_ipv4: view.public_ipv4,
        agent_version: "0.0.0-test".to_owned(),
        byon: None,
        signed_identity: None,
        ipv6: None,
    });
    let answer = coordinator
        .https_client()
        .post(format!("{}{}", coordinator.url(), paths::AGENT_REGISTER))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .expect("POST register");
    assert_eq!(answer.status(), reqwest::StatusCode::FORBIDDEN);
    let text = answer.text().await.unwrap_or_default();
    assert!(text.contains("cluster_tag_mismatch"), "{text}");
    assert_eq!(proxy.described(&stranger), 1, "the refusal asked EC2");
    assert_eq!(coordinator.nodes(CLUSTER).await.len(), 2, "nothing stored");
}
