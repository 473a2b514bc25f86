//! A launch cut short by SIGKILL leaves nothing behind: the coordinator is
//! killed at a step of a multi-subnet `cluster create` (the EC2 proxy holds
//! the next call, so the step is known), started again on the same data
//! dir, and what landed in moto is read back through the SDK.
//!
//! - Killed after the first RunInstances (the second held before it
//!   reaches EC2): the instances launched are adopted, the launch job is
//!   resumed, and the cluster ends with exactly the count asked for, every
//!   instance a node.
//! - Killed after the last RunInstances, before the store write (EC2 did
//!   the work, the answer never came back): every instance is adopted and
//!   nothing more is launched.
//! - Killed while preparing (after the security group, before the key
//!   pair and the cluster row): the security group is deleted, and the
//!   name can be created again.
//! - Instances tagged as another coordinator's are never touched.
//! - Killed during `cluster rm` (TerminateInstances held before it reaches
//!   EC2): started again, the coordinator finishes the removal.
//! - A leader killed after the first RunInstances with a standby beside it
//!   on PostgreSQL: the standby takes over and finishes the launch.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use muster_proto::NodeState;
use muster_tests::ec2;
use muster_tests::postgres::Postgres;
use muster_tests::{wait_until, Coordinator, Ec2Proxy, Hold, Moto, POLL};

const CLUSTER: &str = "web";

/// Nodes asked for: one per subnet of moto's region, so one RunInstances
/// per subnet.
const COUNT: usize = 6;

/// How long a resumed launch may take: the coordinator waits 30 s after a
/// job's last start before resuming it (EC2's listings may lag), then one
/// sweep.
const RESUMED_WITHIN: Duration = Duration::from_secs(120);

/// The coordinator's flags: a sweep every second.
const FLAGS: &[&str] = &["--sweep-interval", "1s"];

/// `cluster create web --count 6 …` as the CLI sends it.
fn create_args() -> Vec<String> {
    ec2::create_args(CLUSTER, COUNT as u32, 30, &["--json"])
}

/// Runs `cluster create` and, once the proxy holds a call of
/// `hold.action` and `after` is done, kills the coordinator with SIGKILL;
/// asserts the create did not succeed, then starts the coordinator again
/// with every call let through.
async fn kill_during_create(
    coordinator: &mut Coordinator,
    proxy: &Ec2Proxy,
    hold: Hold,
    after: impl std::future::Future<Output = ()>,
) {
    interrupt_create(coordinator, proxy, hold, after).await;
    coordinator.restart().await;
}

/// [`kill_during_create`] without the restart: the coordinator stays
/// dead, and the proxy lets every call through.
async fn interrupt_create(
    coordinator: &mut Coordinator,
    proxy: &Ec2Proxy,
    hold: Hold,
    after: impl std::future::Future<Output = ()>,
) {
    let action = hold.action.clone();
    let held_before = proxy.held();
    proxy.hold(Some(hold));
    let args = create_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let killer = async {
        let held = wait_until(
            Duration::from_secs(60),
            POLL,
            || std::future::ready(proxy.held()),
            |n| *n > held_before,
        )
        .await;
        assert!(held > held_before, "no {action} call was held");
        after.await;
        coordinator.kill();
    };
    let (output, ()) = tokio::join!(coordinator.admin(&args), killer);
    assert!(
        !output.status.success(),
        "the create finished before the kill: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    proxy.hold(None);
}

/// Instances of the cluster EC2 lists as pending or running, by id.
async fn live_instances(sdk: &Client) -> BTreeSet<String> {
    ec2::live_instances_of_cluster(sdk, CLUSTER)
        .await
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

/// The cluster's nodes not on their way out, by instance id.
async fn tracked(coordinator: &Coordinator) -> BTreeSet<String> {
    coordinator
        .nodes(CLUSTER)
        .await
        .into_iter()
        .filter(|n| !matches!(n.state, NodeState::Terminating | NodeState::Terminated))
        .map(|n| n.instance_id)
        .collect()
}

/// Waits until every live instance of the cluster is a node and there are
/// `COUNT` of them; returns (instances, nodes).
async fn settled(coordinator: &Coordinator, sdk: &Client) -> (BTreeSet<String>, BTreeSet<String>) {
    wait_until(
        RESUMED_WITHIN,
        POLL * 5,
        || async { (live_instances(sdk).await, tracked(coordinator).await) },
        |(live, nodes)| live.len() == COUNT && live == nodes,
    )
    .await
}

/// The events of node `name`, as reasons.
async fn reasons(coordinator: &Coordinator, name: &str) -> Vec<String> {
    coordinator
        .node(CLUSTER, name)
        .await
        .events
        .into_iter()
        .map(|e| e.reason)
        .collect()
}

/// Killed after the first of six RunInstances: the instance launched is
/// adopted, the job resumed, and the cluster ends with six instances, each
/// a node: none launched twice, none missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_first_run_instances() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let proxy = Ec2Proxy::start(moto.endpoint(), vec![]).await;
    let mut coordinator = Coordinator::start_at(&proxy.endpoint(), FLAGS).await;
    let hold = Hold {
        action: "RunInstances".into(),
        after: 1,
        reaches_ec2: false,
    };
    kill_during_create(&mut coordinator, &proxy, hold, async {}).await;
    let before = live_instances(&sdk).await;
    assert!(
        !before.is_empty() && before.len() < COUNT,
        "the first RunInstances launched {} of {COUNT}",
        before.len()
    );

    let (live, nodes) = settled(&coordinator, &sdk).await;
    assert_eq!(
        live.len(),
        COUNT,
        "instances after the resume: {live:?}\n{}",
        coordinator.logs()
    );
    assert_eq!(live, nodes, "every instance is a node");
    let adopted = before.iter().next().expect("one instance");
    let why = reasons(&coordinator, adopted).await;
    assert!(
        why.iter().any(|r| r.starts_with("adopted:")),
        "{adopted}'s events: {why:?}"
    );
    assert_eq!(
        coordinator.metric("muster_strays_adopted_total").await,
        before.len() as u64
    );
    // Sweeps later, still six: the job is finished, not resumed again.
    let sweeps = coordinator.metric("muster_sweeps_total").await;
    wait_until(
        Duration::from_secs(30),
        POLL,
        || coordinator.metric("muster_sweeps_total"),
        |n| *n >= sweeps + 3,
    )
    .await;
    assert_eq!(live_instances(&sdk).await.len(), COUNT);
}

/// A leader killed after the first of six RunInstances, a standby beside
/// it on a shared PostgreSQL store: the standby takes the lease (term 2)
/// and finishes the launch the leader began, six instances, each a node,
/// none launched twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_finishes_the_launch_a_killed_leader_began() {
    let db = Postgres::start();
    db.create_database("muster");
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let proxy = Ec2Proxy::start(moto.endpoint(), vec![]).await;
    let url = db.url("muster");
    let mut flags = FLAGS.to_vec();
    flags.extend(muster_tests::FAST_LEASE);
    flags.extend(["--store", url.as_str()]);
    let mut leader = Coordinator::start_at(&proxy.endpoint(), &flags).await;
    let mut standby = leader.start_standby(false).await;
    let hold = Hold {
        action: "RunInstances".into(),
        after: 1,
        reaches_ec2: false,
    };
    interrupt_create(&mut leader, &proxy, hold, async {}).await;
    let before = live_instances(&sdk).await;
    assert!(!before.is_empty() && before.len() < COUNT, "{before:?}");

    standby.wait_leading().await;
    assert!(
        db.psql("muster", "SELECT term FROM muster_lease") == "2",
        "the standby took the lease over"
    );
    let (live, nodes) = settled(&standby, &sdk).await;
    assert_eq!(
        live.len(),
        COUNT,
        "instances after the takeover: {live:?}\n{}",
        standby.logs()
    );
    assert_eq!(live, nodes, "every instance is a node");
    assert_eq!(
        db.psql(
            "muster",
            "SELECT count(*) FROM launch_jobs WHERE finished_at IS NULL"
        ),
        "0",
        "the job is finished"
    );
}

/// Killed after the last RunInstances reached EC2 but before its answer
/// came back (so before the store write): all six are adopted and nothing
/// more is launched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_the_store_write() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let proxy = Ec2Proxy::start(moto.endpoint(), vec![]).await;
    let mut coordinator = Coordinator::start_at(&proxy.endpoint(), FLAGS).await;
    let hold = Hold {
        action: "RunInstances".into(),
        after: COUNT - 1,
        reaches_ec2: true,
    };
    let sdk_for_wait = sdk.clone();
    let all_launched = async move {
        wait_until(
            Duration::from_secs(30),
            POLL,
            || live_instances(&sdk_for_wait),
            |live| live.len() == COUNT,
        )
        .await;
    };
    kill_during_create(&mut coordinator, &proxy, hold, all_launched).await;
    assert_eq!(live_instances(&sdk).await.len(), COUNT);
    let runs_before = proxy.calls().get("RunInstances").copied().unwrap_or(0);

    let (live, nodes) = settled(&coordinator, &sdk).await;
    assert_eq!(live, nodes, "every instance is a node");
    assert_eq!(
        coordinator.metric("muster_strays_adopted_total").await,
        COUNT as u64
    );
    // Past the resume delay, the finished job launched nothing more.
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(
        proxy.calls().get("RunInstances").copied().unwrap_or(0),
        runs_before,
        "RunInstances after the restart"
    );
    assert_eq!(live_instances(&sdk).await.len(), COUNT);
}

/// Security groups tagged for the cluster.
async fn cluster_groups(sdk: &Client) -> Vec<String> {
    sdk.describe_security_groups()
        .filters(
            Filter::builder()
                .name("tag:muster:cluster")
                .values(CLUSTER)
                .build(),
        )
        .send()
        .await
        .expect("DescribeSecurityGroups")
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_owned))
        .collect()
}

/// Killed while preparing the cluster (its security group made, the key
/// pair held): no cluster was stored, the security group is deleted, an
/// instance another coordinator launched with the same cluster tag is left
/// alone, and the name can be created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_preparing() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let proxy = Ec2Proxy::start(moto.endpoint(), vec![]).await;
    let mut coordinator = Coordinator::start_at(&proxy.endpoint(), FLAGS).await;
    // Another coordinator's node of a cluster of the same name.
    let theirs = ec2::launch_instance(&sdk, CLUSTER).await;
    sdk.create_tags()
        .resources(&theirs)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("muster:coordinator")
                .value("someone-else")
                .build(),
        )
        .send()
        .await
        .expect("CreateTags");
    let hold = Hold {
        action: "CreateKeyPair".into(),
        after: 0,
        reaches_ec2: false,
    };
    kill_during_create(&mut coordinator, &proxy, hold, async {}).await;
    assert!(coordinator.clusters().await.is_empty());

    let groups = wait_until(
        Duration::from_secs(30),
        POLL,
        || cluster_groups(&sdk),
        |groups| groups.is_empty(),
    )
    .await;
    assert!(
        groups.is_empty(),
        "left behind: {groups:?}\n{}",
        coordinator.logs()
    );
    assert_eq!(
        coordinator.metric("muster_leftovers_deleted_total").await,
        1
    );
    assert_eq!(
        coordinator.metric("muster_strays_terminated_total").await,
        0
    );
    assert_eq!(
        live_instances(&sdk).await,
        BTreeSet::from([theirs.clone()]),
        "another coordinator's instance is left alone"
    );

    let args = create_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let created: muster_proto::CreateClusterResponse = {
        let output = coordinator.admin(&args).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("the create's JSON")
    };
    assert_eq!(created.launch.expect("a launch").launched.len(), COUNT);
    assert_eq!(cluster_groups(&sdk).await.len(), 1);
}

/// Killed while `cluster rm` waits on its TerminateInstances (held before
/// it reaches EC2): started again, the coordinator finishes the removal on
/// its own: every instance of the cluster terminated in EC2, its security
/// group and key pair deleted, the cluster `removed`, its names gone from
/// DNS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_cluster_rm() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let proxy = Ec2Proxy::start(moto.endpoint(), vec![]).await;
    let mut coordinator = Coordinator::start_at(&proxy.endpoint(), FLAGS).await;
    let created = coordinator.launch_cluster(CLUSTER, 3, 30, &[]).await;
    let key_name = created.cluster.launch.expect("launch settings").key_name;
    let launched = created.launch.expect("a launch").launched;
    assert_eq!(launched.len(), 3);
    assert_eq!(cluster_groups(&sdk).await.len(), 1);

    proxy.hold(Some(Hold {
        action: "TerminateInstances".into(),
        after: 0,
        reaches_ec2: false,
    }));
    let killer = async {
        let held = wait_until(
            Duration::from_secs(60),
            POLL,
            || std::future::ready(proxy.held()),
            |n| *n > 0,
        )
        .await;
        assert!(held > 0, "no TerminateInstances was held");
        coordinator.kill();
    };
    let (output, ()) = tokio::join!(coordinator.admin(&["cluster", "rm", CLUSTER]), killer);
    assert!(
        !output.status.success(),
        "the removal finished before the kill: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(
        live_instances(&sdk).await.len(),
        3,
        "nothing terminated yet"
    );
    proxy.hold(None);
    coordinator.restart().await;

    let gone = wait_until(
        RESUMED_WITHIN,
        POLL,
        || async {
            (
                live_instances(&sdk).await.len(),
                coordinator
                    .clusters()
                    .await
                    .iter()
                    .filter(|c| c.state != muster_proto::ClusterState::Removed)
                    .count(),
                cluster_groups(&sdk).await.len(),
            )
        },
        |counts| *counts == (0, 0, 0),
    )
    .await;
    assert_eq!(
        gone,
        (0, 0, 0),
        "instances, clusters, security groups left:\n{}",
        coordinator.logs()
    );
    let keys = sdk
        .describe_key_pairs()
        .send()
        .await
        .expect("DescribeKeyPairs");
    assert!(
        !keys
            .key_pairs()
            .iter()
            .any(|k| k.key_name() == Some(key_name.as_str())),
        "the key pair {key_name} is left"
    );
    for id in &launched {
        let name = muster_proto::node_dns_name(id, CLUSTER, muster_tests::ZONE);
        let answer = coordinator.resolver().a(&name).await.unwrap();
        assert!(answer.is_nxdomain(), "{name}: {answer:?}");
    }
}
