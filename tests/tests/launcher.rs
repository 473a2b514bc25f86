//! Launching clusters on moto: `cluster create`, `scale` and `rm` through
//! the real CLI and coordinator, with what landed in EC2 read back through
//! the SDK: instances spread over the AZs, gp2 data volumes, tags, the
//! security group and key pair, the user data, provider options, the
//! network made once per region, and nothing of ours left after `rm`.
//! The end-to-end story boots an agent for each launched instance from what
//! its user data says.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use aws_sdk_ec2::types::{Filter, Instance};
use aws_sdk_ec2::Client;
use muster_proto::launch::ScaleClusterResponse;
use muster_proto::{
    cluster_dns_name, node_dns_name, ClusterState, ClusterView, CreateClusterResponse, NodeState,
    NodeView,
};
use muster_tests::ec2::{self, tag, TEST_AMI};
use muster_tests::{
    wait_until, Agent, Coordinator, Ec2Proxy, Imds, Moto, Refusal, EVENTUALLY, POLL, ZONE,
};

async fn create(
    coordinator: &Coordinator,
    name: &str,
    count: u32,
    extra: &[&str],
) -> CreateClusterResponse {
    let mut args: Vec<String> = vec!["cluster".into(), "create".into(), name.into()];
    args.extend(ec2::launch_args(count, 30));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    coordinator.admin_json(&args).await
}

/// How many of `instances` each subnet holds.
fn per_subnet(instances: &[Instance]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in instances {
        *counts
            .entry(i.subnet_id().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    counts
}

fn sorted_counts(counts: &BTreeMap<String, usize>) -> Vec<usize> {
    let mut v: Vec<usize> = counts.values().copied().collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

async fn security_groups_named(
    client: &Client,
    name: &str,
) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
    client
        .describe_security_groups()
        .filters(Filter::builder().name("group-name").values(name).build())
        .send()
        .await
        .expect("DescribeSecurityGroups")
        .security_groups()
        .to_vec()
}

async fn key_pairs(client: &Client) -> Vec<String> {
    client
        .describe_key_pairs()
        .send()
        .await
        .expect("DescribeKeyPairs")
        .key_pairs()
        .iter()
        .filter_map(|k| k.key_name().map(str::to_owned))
        .collect()
}

async fn muster_vpcs(client: &Client) -> Vec<String> {
    client
        .describe_vpcs()
        .filters(
            Filter::builder()
                .name("tag:Name")
                .values("muster-vpc")
                .build(),
        )
        .send()
        .await
        .expect("DescribeVpcs")
        .vpcs()
        .iter()
        .filter_map(|v| v.vpc_id().map(str::to_owned))
        .collect()
}

/// A fresh region: seven nodes over six AZs land 2/1/1/1/1/1, each with a
/// 30 GiB gp2 volume at /dev/sdf deleted on termination and the four tags on
/// instance and volume; a security group and key pair are made; the user
/// data names the coordinator and a join token; a second cluster adds no
/// network; scale 7→3 takes from the fullest subnet; rm leaves nothing of
/// ours but the shared VPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_and_remove_a_cluster() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;

    let created = create(&coordinator, "web", 7, &["--admin-cidr", "198.51.100.0/24"]).await;
    let report = created.launch.as_ref().expect("a launch report");
    assert_eq!(report.launched.len(), 7, "{report:?}");
    assert_eq!(report.short, 0);
    assert!(report.refused.is_empty(), "{report:?}");

    // EC2, read independently.
    let instances = ec2::live_instances_of_cluster(&sdk, "web").await;
    assert_eq!(instances.len(), 7);
    let spread = per_subnet(&instances);
    assert_eq!(sorted_counts(&spread), vec![2, 1, 1, 1, 1, 1], "{spread:?}");
    let zones: std::collections::BTreeSet<&str> = instances
        .iter()
        .filter_map(|i| i.placement().and_then(|p| p.availability_zone()))
        .collect();
    assert_eq!(zones.len(), 6, "one subnet per AZ: {zones:?}");

    let volumes = sdk
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("tag:muster:cluster")
                .values("web")
                .build(),
        )
        .send()
        .await
        .expect("DescribeVolumes")
        .volumes()
        .to_vec();
    for instance in &instances {
        let id = instance.instance_id().unwrap();
        let tags = instance.tags();
        // Tagged as launched, by RunInstances: no call per node.
        assert_eq!(tag(tags, "muster:cluster"), Some("web"), "{id}");
        assert_eq!(tag(tags, "muster:managed"), Some("true"));
        assert_eq!(tag(tags, "Name"), Some("muster-web"));
        let data = instance
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some("/dev/sdf"))
            .unwrap_or_else(|| panic!("{id} has a volume at /dev/sdf"));
        let ebs = data.ebs().expect("an EBS volume");
        assert_eq!(ebs.delete_on_termination(), Some(true), "{id}");
        let volume_id = ebs.volume_id().expect("a volume id");
        let volume = volumes
            .iter()
            .find(|v| v.volume_id() == Some(volume_id))
            .unwrap_or_else(|| panic!("volume {volume_id} is tagged for the cluster"));
        assert_eq!(volume.size(), Some(30));
        assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp2"));
        assert_eq!(tag(volume.tags(), "muster:managed"), Some("true"));
        assert_eq!(tag(volume.tags(), "Name"), Some("muster-web"));
        assert!(report.launched.iter().any(|l| l == id));
    }

    // The security group: SSH from the admin CIDR only, all TCP within.
    let groups = security_groups_named(&sdk, "muster-web").await;
    assert_eq!(groups.len(), 1);
    let group = &groups[0];
    let group_id = group.group_id().unwrap();
    let ssh: Vec<&str> = group
        .ip_permissions()
        .iter()
        .filter(|p| p.from_port() == Some(22))
        .flat_map(|p| p.ip_ranges())
        .filter_map(|r| r.cidr_ip())
        .collect();
    assert_eq!(ssh, vec!["198.51.100.0/24"]);
    assert!(group.ip_permissions().iter().any(|p| {
        p.from_port() == Some(0)
            && p.to_port() == Some(65535)
            && p.user_id_group_pairs()
                .iter()
                .any(|g| g.group_id() == Some(group_id))
    }));
    for instance in &instances {
        let ids: Vec<&str> = instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(ids, vec![group_id]);
    }

    // The key pair, with its private key kept 0600 where show says.
    let shown: ClusterView = coordinator.admin_json(&["cluster", "show", "web"]).await;
    let launch = shown.launch.as_ref().expect("a launched cluster");
    assert_eq!(launch.count, 7);
    assert!(
        launch.key_name.starts_with("muster-web-"),
        "{}",
        launch.key_name
    );
    assert!(key_pairs(&sdk).await.contains(&launch.key_name));
    let key_path = launch.key_path.clone().expect("the key file");
    let meta = std::fs::metadata(&key_path).expect("the key file exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key_path)
        .unwrap()
        .contains("PRIVATE KEY"));
    for instance in &instances {
        assert_eq!(instance.key_name(), Some(launch.key_name.as_str()));
    }

    // The user data names this coordinator, the cluster and a join token.
    let first = instances[0].instance_id().unwrap();
    let (doc, settings) = ec2::cloud_config(&sdk, first).await;
    assert_eq!(
        settings["coordinator_url"].as_str(),
        Some(coordinator.url().as_str())
    );
    assert_eq!(settings["cluster"].as_str(), Some("web"));
    assert!(settings["join_token"]
        .as_str()
        .is_some_and(|t| t.starts_with("mjoin_")));
    let ca = doc["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/muster/ca.pem")
        .expect("the CA is written");
    assert_eq!(
        ca["content"].as_str(),
        Some(
            std::fs::read_to_string(coordinator.ca_file())
                .unwrap()
                .as_str()
        )
    );

    // Every launched instance is a node, launching, before any agent.
    let nodes = coordinator.nodes("web").await;
    assert_eq!(nodes.len(), 7);
    assert!(
        nodes.iter().all(|n| n.state == NodeState::Launching),
        "{nodes:?}"
    );

    // A second cluster in the region adds no network.
    let vpcs = muster_vpcs(&sdk).await;
    assert_eq!(vpcs.len(), 1);
    let subnets_before = sdk.describe_subnets().send().await.unwrap().subnets().len();
    let gateways_before = sdk
        .describe_internet_gateways()
        .send()
        .await
        .unwrap()
        .internet_gateways()
        .len();
    create(&coordinator, "db", 1, &[]).await;
    assert_eq!(muster_vpcs(&sdk).await, vpcs);
    assert_eq!(
        sdk.describe_subnets().send().await.unwrap().subnets().len(),
        subnets_before
    );
    assert_eq!(
        sdk.describe_internet_gateways()
            .send()
            .await
            .unwrap()
            .internet_gateways()
            .len(),
        gateways_before
    );

    // Scale 7 → 3: four go, first from the subnet holding two.
    let fullest = spread
        .iter()
        .find(|(_, n)| **n == 2)
        .map(|(s, _)| s.clone())
        .unwrap();
    let scaled: ScaleClusterResponse = coordinator
        .admin_json(&["cluster", "scale", "web", "3"])
        .await;
    assert_eq!(scaled.removing.len(), 4, "{scaled:?}");
    let left = ec2::live_instances_of_cluster(&sdk, "web").await;
    assert_eq!(left.len(), 3);
    let left_spread = per_subnet(&left);
    assert_eq!(
        sorted_counts(&left_spread),
        vec![1, 1, 1],
        "{left_spread:?}"
    );
    assert!(left_spread.get(&fullest).copied().unwrap_or(0) <= 1);
    let shown: ClusterView = coordinator.admin_json(&["cluster", "show", "web"]).await;
    assert_eq!(shown.launch.unwrap().count, 3);

    // rm: nothing of ours is left running, the group and key are gone, the
    // VPC stays.
    let removed: ClusterView = coordinator.admin_json(&["cluster", "rm", "web"]).await;
    assert_eq!(removed.state, ClusterState::Removed);
    assert!(ec2::live_instances_of_cluster(&sdk, "web").await.is_empty());
    assert!(security_groups_named(&sdk, "muster-web").await.is_empty());
    assert!(!key_pairs(&sdk).await.contains(&launch.key_name));
    assert!(!std::path::Path::new(&key_path).exists());
    assert_eq!(muster_vpcs(&sdk).await, vpcs);
    let nodes: Vec<NodeView> = coordinator.nodes("web").await;
    assert!(
        nodes.iter().all(|n| n.state == NodeState::Terminated),
        "{nodes:?}"
    );
    // The other cluster is untouched.
    assert_eq!(ec2::live_instances_of_cluster(&sdk, "db").await.len(), 1);
}

/// Provider options are honoured: the user's VPC, two subnets (nodes
/// alternate), a security group, a key pair and an instance profile, and
/// muster makes none of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_options_are_honoured() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let vpc = sdk
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_owned();
    let mut subnets = Vec::new();
    for (cidr, zone) in [("10.9.1.0/24", "us-east-1a"), ("10.9.2.0/24", "us-east-1b")] {
        subnets.push(
            sdk.create_subnet()
                .vpc_id(&vpc)
                .cidr_block(cidr)
                .availability_zone(zone)
                .send()
                .await
                .unwrap()
                .subnet()
                .unwrap()
                .subnet_id()
                .unwrap()
                .to_owned(),
        );
    }
    let group = sdk
        .create_security_group()
        .group_name("their-nodes")
        .description("theirs")
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_owned();
    sdk.create_key_pair()
        .key_name("theirs")
        .send()
        .await
        .unwrap();
    ec2::create_instance_profile(&moto.endpoint(), "muster-nodes").await;
    let keys_before = key_pairs(&sdk).await;

    let coordinator = Coordinator::start(&moto).await;
    let created = create(
        &coordinator,
        "api",
        4,
        &[
            "--vpc-id",
            &vpc,
            "--subnet",
            &subnets[0],
            "--subnet",
            &subnets[1],
            "--security-group",
            &group,
            "--key-name",
            "theirs",
            "--instance-profile",
            "muster-nodes",
        ],
    )
    .await;
    assert_eq!(created.launch.as_ref().unwrap().launched.len(), 4);

    let instances = ec2::live_instances_of_cluster(&sdk, "api").await;
    assert_eq!(instances.len(), 4);
    let spread = per_subnet(&instances);
    assert_eq!(spread.get(&subnets[0]), Some(&2), "{spread:?}");
    assert_eq!(spread.get(&subnets[1]), Some(&2), "{spread:?}");
    for instance in &instances {
        assert_eq!(instance.vpc_id(), Some(vpc.as_str()));
        assert_eq!(instance.key_name(), Some("theirs"));
        let groups: Vec<&str> = instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .collect();
        assert_eq!(groups, vec![group.as_str()]);
    }
    // moto associates the profile with the first instance of each
    // RunInstances only (one call per subnet here); EC2 gives it to all.
    let profiles: Vec<&str> = instances
        .iter()
        .filter_map(|i| i.iam_instance_profile().and_then(|p| p.arn()))
        .collect();
    assert_eq!(profiles.len(), 2, "{profiles:?}");
    assert!(
        profiles
            .iter()
            .all(|arn| arn.ends_with("instance-profile/muster-nodes")),
        "{profiles:?}"
    );
    assert!(security_groups_named(&sdk, "muster-api").await.is_empty());
    assert_eq!(key_pairs(&sdk).await, keys_before, "no key pair was made");
    assert!(muster_vpcs(&sdk).await.is_empty(), "no muster-vpc was made");

    // rm leaves the user's group and key pair alone.
    let removed: ClusterView = coordinator.admin_json(&["cluster", "rm", "api"]).await;
    assert_eq!(removed.state, ClusterState::Removed);
    assert!(ec2::live_instances_of_cluster(&sdk, "api").await.is_empty());
    assert_eq!(security_groups_named(&sdk, "their-nodes").await.len(), 1);
    assert_eq!(key_pairs(&sdk).await, keys_before);
}

/// A subnet that answers InsufficientInstanceCapacity is skipped and its
/// share goes to the others; the report says which and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_subnet_is_skipped() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    // Make the network first so the full subnet's id is known.
    let network = muster_coordinator::launcher::network::ensure_network(
        &sdk,
        &muster_coordinator::launcher::network::NetworkRequest {
            vpc_id: None,
            subnet_ids: vec![],
            instance_type: "t3.micro".into(),
            image_id: TEST_AMI.into(),
        },
    )
    .await
    .expect("the network");
    let full = network.subnets[0].id.clone();
    let proxy = Ec2Proxy::start(
        moto.endpoint(),
        vec![Refusal {
            action: "RunInstances".into(),
            subnet_id: Some(full.clone()),
            dry_run: false,
            code: "InsufficientInstanceCapacity".into(),
            message: "We currently do not have sufficient t3.micro capacity in the \
                      Availability Zone you requested (us-east-1a)."
                .into(),
        }],
    )
    .await;
    let coordinator = Coordinator::start_at(&proxy.endpoint(), &[]).await;
    let created = create(&coordinator, "web", 7, &[]).await;
    let report = created.launch.unwrap();
    assert_eq!(report.launched.len(), 7, "{report:?}");
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].subnet, full);
    assert!(report.refused[0]
        .reason
        .starts_with("InsufficientInstanceCapacity"));
    let instances = ec2::live_instances_of_cluster(&sdk, "web").await;
    let spread = per_subnet(&instances);
    assert!(!spread.contains_key(&full), "{spread:?}");
    assert_eq!(sorted_counts(&spread), vec![2, 2, 1, 1, 1], "{spread:?}");
    assert_eq!(proxy.refused().get(&full), Some(&1));
}

/// Bad input is refused before anything reaches EC2: SSH from anywhere
/// without saying so, a malformed image id, an incomplete launch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_launch_input_changes_nothing() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let vpcs_before = sdk.describe_vpcs().send().await.unwrap().vpcs().len();

    let mut anywhere: Vec<String> = vec!["cluster".into(), "create".into(), "web".into()];
    anywhere.extend(ec2::launch_args(1, 30));
    anywhere.extend(["--admin-cidr".into(), "0.0.0.0/0".into()]);
    let mut bad_ami: Vec<String> = vec!["cluster".into(), "create".into(), "web".into()];
    bad_ami.extend(ec2::launch_args(1, 30));
    let at = bad_ami.iter().position(|a| a == TEST_AMI).unwrap();
    bad_ami[at] = "i-0123abcd".into();
    let incomplete: Vec<String> = ["cluster", "create", "web", "--region", "us-east-1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (args, says) in [
        (&anywhere, "allow-ssh-from-anywhere"),
        (&bad_ami, "ami"),
        (&incomplete, "--instance-type"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = coordinator.admin(&args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(coordinator.clusters().await.is_empty());
    assert_eq!(
        sdk.describe_vpcs().send().await.unwrap().vpcs().len(),
        vpcs_before,
        "no VPC was made"
    );
    assert!(ec2::instances_of_cluster(&sdk, "web").await.is_empty());
    assert!(security_groups_named(&sdk, "muster-web").await.is_empty());
}

/// check-credentials succeeds against moto and, against an endpoint
/// nobody answers, fails with the message users know from Tutum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_credentials_reports_per_region() {
    let moto = Moto::start().await;
    let check = |endpoint: String, json: bool| async move {
        let mut args = vec!["check-credentials", "--regions", "us-east-1,eu-west-1"];
        if json {
            args.push("--json");
        }
        tokio::process::Command::new(muster_tests::procs::bin_path("muster-coordinator"))
            .args(args)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_PROFILE")
            .output()
            .await
            .expect("running check-credentials")
    };
    let output = check(moto.endpoint(), true).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["valid"], true);
    let regions = answer["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2);
    assert!(regions.iter().all(|r| r["ok"] == true), "{answer}");

    let closed = muster_tests::procs::free_tcp_port();
    let output = check(format!("http://127.0.0.1:{closed}"), false).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("invalid AWS credentials or insufficient EC2 permissions"),
        "{stderr}"
    );
    assert!(
        stderr.contains("us-east-1") && stderr.contains("eu-west-1"),
        "{stderr}"
    );
}

/// The whole loop: `cluster create --count 2`, an agent on each launched
/// instance configured from its own user data, both nodes deployed and
/// answering in DNS. A launch whose agent never comes fails after the
/// launch timeout, and deploys when its agent turns up after all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_nodes_deploy_from_their_user_data() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start_with(&moto, &["--launch-timeout", "3s"]).await;
    let created = create(&coordinator, "web", 3, &[]).await;
    let ids = created.launch.unwrap().launched;
    assert_eq!(ids.len(), 3);

    let mut imds = Vec::new();
    let mut agents = Vec::new();
    for id in &ids[..2] {
        let (_, settings) = ec2::cloud_config(&sdk, id).await;
        assert_eq!(
            settings["coordinator_url"].as_str(),
            Some(coordinator.url().as_str())
        );
        let server = Imds::start(sdk.clone(), id).await;
        agents.push(Agent::start(
            &coordinator,
            &server,
            settings["cluster"].as_str().unwrap(),
            settings["join_token"].as_str().unwrap(),
        ));
        imds.push(server);
    }
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes("web"),
        |nodes: &Vec<NodeView>| {
            nodes
                .iter()
                .filter(|n| ids[..2].contains(&n.instance_id))
                .all(|n| n.state == NodeState::Deployed)
        },
    )
    .await;
    let resolver = coordinator.resolver();
    for id in &ids[..2] {
        let node = nodes.iter().find(|n| &n.instance_id == id).unwrap();
        assert_eq!(node.state, NodeState::Deployed, "{nodes:?}");
        let want: Vec<_> = ec2::describe(&sdk, id)
            .await
            .public_ipv4
            .into_iter()
            .collect();
        let answer = resolver
            .a_until(&node_dns_name(id, "web", ZONE), EVENTUALLY, |a| a.a == want)
            .await;
        assert_eq!(answer.a, want);
    }
    let round_robin = resolver
        .a_until(&cluster_dns_name("web", ZONE), EVENTUALLY, |a| {
            a.a.len() == 2
        })
        .await;
    assert_eq!(round_robin.a.len(), 2, "{round_robin:?}");

    // The third never hears from an agent: failed after the timeout, with
    // the reason recorded.
    let third = &ids[2];
    let failed = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.node("web", third),
        |d| d.node.state == NodeState::Failed,
    )
    .await;
    assert_eq!(failed.node.state, NodeState::Failed);
    let event = failed.events.last().unwrap();
    assert!(event.reason.contains("launch timeout"), "{event:?}");

    // Its agent turns up late: deployed after all.
    let (_, settings) = ec2::cloud_config(&sdk, third).await;
    let server = Imds::start(sdk.clone(), third).await;
    let _late = Agent::start(
        &coordinator,
        &server,
        "web",
        settings["join_token"].as_str().unwrap(),
    );
    let healed = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.node("web", third),
        |d| d.node.state == NodeState::Deployed,
    )
    .await;
    assert_eq!(healed.node.state, NodeState::Deployed);

    // A launch token speaks only for instances launched into the cluster.
    let stranger = ec2::launch_instance(&sdk, "web").await;
    let stranger_imds = Imds::start(sdk.clone(), &stranger).await;
    let mut outsider = Agent::start(
        &coordinator,
        &stranger_imds,
        "web",
        settings["join_token"].as_str().unwrap(),
    );
    let logs = wait_until(
        EVENTUALLY,
        POLL,
        || std::future::ready(outsider.logs()),
        |logs| logs.contains("launch token"),
    )
    .await;
    assert!(logs.contains("launch token"), "{logs}");
    assert!(
        coordinator
            .nodes("web")
            .await
            .iter()
            .all(|n| n.instance_id != stranger),
        "an instance muster did not launch joined with a launch token"
    );
    outsider.stop();
}

/// `--wait` returns once every node has settled: here no agent comes, so
/// both launches fail at the (short) launch timeout, and the JSON carries
/// the nodes as they ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_when_every_node_settles() {
    let moto = Moto::start().await;
    let coordinator = Coordinator::start_with(&moto, &["--launch-timeout", "2s"]).await;
    let mut args: Vec<String> = vec!["cluster".into(), "create".into(), "web".into()];
    args.extend(ec2::launch_args(2, 30));
    args.extend(["--wait".into(), "--wait-timeout".into(), "60s".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let answer: serde_json::Value = coordinator.admin_json(&args).await;
    let launched = answer["created"]["launch"]["launched"].as_array().unwrap();
    assert_eq!(launched.len(), 2, "{answer}");
    let nodes: Vec<NodeView> = serde_json::from_value(answer["nodes"].clone()).unwrap();
    assert_eq!(nodes.len(), 2, "{answer}");
    assert!(
        nodes.iter().all(|n| n.state == NodeState::Failed),
        "{nodes:?}"
    );

    // Scaling a cluster that launches nothing is refused, and so is a
    // cluster that does not exist.
    coordinator.create_cluster("byo").await;
    let output = coordinator.admin(&["cluster", "scale", "byo", "3"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("launches no nodes"));
    let output = coordinator.admin(&["cluster", "scale", "nope", "3"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no cluster"));
}
