//! The tests' own view of EC2: an SDK client for a moto server and the few
//! calls the stories need (launch, look, Elastic IP, stop, start).
//!
//! This is the independent read of what landed in EC2: tests compare the
//! coordinator's and the agent's word against it.
//!
//! # What moto does with public addresses (moto 5.2)
//! - Launch: moto puts the instance in the default VPC, whose default
//!   subnets have `MapPublicIpOnLaunch=true`, so a plain RunInstances gets a
//!   random public IPv4 (`54.214.x.y`) and a private IPv4 (`10.x.y.z`, not
//!   from the subnet's CIDR).
//! - Elastic IP: AllocateAddress hands out addresses like `127.x.y.z`;
//!   AssociateAddress makes DescribeInstances report it as the public IP.
//! - Stop: DescribeInstances drops the public IP at once (state `stopped`,
//!   no pending `stopping`); the private IP stays.
//! - Start: the instance is `running` at once with a freshly drawn random
//!   public IP, even when an Elastic IP was associated (which real EC2 would
//!   keep; moto still lists the association in DescribeAddresses).
//!
//! These are just strings to moto: no traffic is ever sent to them.

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context};
use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{
    DomainType, InstanceAttributeName, InstanceType, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use base64::Engine;

use crate::{wait_until, EVENTUALLY, POLL};

/// An AMI id; moto does not check that it exists.
pub const TEST_AMI: &str = "ami-12c6146b";

/// The region every test uses.
pub const TEST_REGION: &str = "us-east-1";

/// The SDK configuration every test client uses: the emulator at
/// `endpoint`, static test credentials and region `us-east-1`.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(TEST_REGION))
        .credentials_provider(Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "muster-tests",
        ))
        .endpoint_url(endpoint)
        .load()
        .await
}

/// An SDK client for the EC2 emulator at `endpoint` ([`sdk_config`]).
pub async fn client(endpoint: &str) -> Client {
    Client::new(&sdk_config(endpoint).await)
}

/// What DescribeInstances says about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    /// `pending`, `running`, `stopping`, `stopped`, …
    pub state: String,
    /// Primary private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4, if any.
    pub public_ipv4: Option<Ipv4Addr>,
    /// Availability zone.
    pub availability_zone: String,
    /// Instance type, e.g. `t3.micro`.
    pub instance_type: String,
    /// AMI id.
    pub image_id: String,
    /// The primary network interface's MAC address, lower case.
    pub mac: Option<String>,
    /// The primary network interface's IPv6 addresses.
    pub ipv6: Vec<std::net::Ipv6Addr>,
}

/// The tags an operator puts on an instance that joins `cluster`:
/// `muster:cluster=cluster`, which the coordinator checks on every register.
pub fn member_tags(cluster: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key("muster:cluster").value(cluster).build())
        .build()
}

/// Launches one t3.micro from [`TEST_AMI`] tagged as a member of `cluster`,
/// with no user data; returns its id.
pub async fn launch_instance(client: &Client, cluster: &str) -> String {
    launch_instance_with_user_data(client, Some(cluster), None).await
}

/// Launches one t3.micro from [`TEST_AMI`], tagged as a member of `cluster`
/// if given, with `user_data` if given (plain text; base64 encoded here as
/// RunInstances wants).
pub async fn launch_instance_with_user_data(
    client: &Client,
    cluster: Option<&str>,
    user_data: Option<&str>,
) -> String {
    run_one(client, |run| {
        run.set_tag_specifications(cluster.map(|c| vec![member_tags(c)]))
            .set_user_data(
                user_data.map(|text| base64::engine::general_purpose::STANDARD.encode(text)),
            )
    })
    .await
}

/// A VPC with an Amazon-provided IPv6 block and one subnet holding its
/// first /64: dual stack (10.99.1.0/24 beside it, public IPv4 addresses on
/// launch) or, with `ipv6_only` (moto's endpoint), IPv6 only. Returns the
/// subnet's id.
async fn ipv6_subnet(client: &Client, ipv6_only: Option<&str>) -> String {
    let vpc = client
        .create_vpc()
        .cidr_block("10.99.0.0/16")
        .amazon_provided_ipv6_cidr_block(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateVpc: {}", DisplayErrorContext(&e)));
    let vpc_id = vpc
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("CreateVpc answers the VPC")
        .to_owned();
    let described = client
        .describe_vpcs()
        .vpc_ids(&vpc_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeVpcs: {}", DisplayErrorContext(&e)));
    let block = described
        .vpcs()
        .first()
        .and_then(|v| v.ipv6_cidr_block_association_set().first())
        .and_then(|a| a.ipv6_cidr_block())
        .expect("the VPC has an IPv6 block")
        .to_owned();
    // The /56 EC2 gives a VPC; its first /64 for the subnet.
    let subnet_block = block.replace("/56", "/64");
    if let Some(endpoint) = ipv6_only {
        return ipv6_native_subnet(endpoint, &vpc_id, &subnet_block).await;
    }
    let subnet = client
        .create_subnet()
        .vpc_id(&vpc_id)
        .ipv6_cidr_block(&subnet_block)
        .cidr_block("10.99.1.0/24")
        .availability_zone(format!("{TEST_REGION}a"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateSubnet: {}", DisplayErrorContext(&e)));
    let subnet_id = subnet
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("a subnet id")
        .to_owned();
    {
        // A public IPv4 too, so the node's name has both.
        client
            .modify_subnet_attribute()
            .subnet_id(&subnet_id)
            .map_public_ip_on_launch(
                aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(true)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("ModifySubnetAttribute: {}", DisplayErrorContext(&e)));
    }
    subnet_id
}

/// CreateSubnet of an IPv6-only subnet (`Ipv6Native`) in `vpc_id`, sent
/// to moto at `endpoint` as a plain query: moto answers it with an
/// `availableIpAddressCount` of 2^64 - 5, which the SDK cannot read.
/// Returns the subnet's id.
async fn ipv6_native_subnet(endpoint: &str, vpc_id: &str, block: &str) -> String {
    let form = [
        ("Action", "CreateSubnet"),
        ("Version", "2016-11-15"),
        ("VpcId", vpc_id),
        ("Ipv6CidrBlock", block),
        ("Ipv6Native", "true"),
        ("AvailabilityZone", &format!("{TEST_REGION}a")),
    ];
    // moto routes a request by the service and region its credential
    // scope names; the signature itself it does not check.
    let scope = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{TEST_REGION}/ec2/aws4_request, \
         SignedHeaders=host, Signature=0"
    );
    let body = reqwest::Client::new()
        .post(format!("{}/", endpoint.trim_end_matches('/')))
        .header("authorization", scope)
        .form(&form)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("CreateSubnet")
        .text()
        .await
        .expect("CreateSubnet's answer");
    body.split("<subnetId>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no subnet id in {body}"))
        .to_owned()
}

/// Launches one t3.micro tagged as a member of `cluster` into a new
/// dual-stack subnet (or, with `ipv6_only` naming moto's endpoint, an
/// IPv6-only one), with one IPv6 address; returns its id.
pub async fn launch_with_ipv6(client: &Client, cluster: &str, ipv6_only: Option<&str>) -> String {
    let subnet_id = ipv6_subnet(client, ipv6_only).await;
    run_one(client, |run| {
        run.subnet_id(subnet_id)
            .ipv6_address_count(1)
            .tag_specifications(member_tags(cluster))
    })
    .await
}

/// RunInstances of one t3.micro from [`TEST_AMI`], with what `more` adds
/// to the request; returns its id, and panics on a failed call.
async fn run_one(
    client: &Client,
    more: impl FnOnce(
        aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder,
    ) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder,
) -> String {
    let run = client
        .run_instances()
        .image_id(TEST_AMI)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(1);
    more(run)
        .send()
        .await
        .unwrap_or_else(|e| panic!("RunInstances: {}", DisplayErrorContext(&e)))
        .instances()
        .first()
        .and_then(|instance| instance.instance_id())
        .expect("RunInstances answered an instance id")
        .to_owned()
}

/// DescribeInstances for one instance.
pub async fn try_describe(client: &Client, instance_id: &str) -> anyhow::Result<InstanceView> {
    let answer = client
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "DescribeInstances {instance_id}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    let instance = answer
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id))
        .with_context(|| format!("DescribeInstances did not list {instance_id}"))?;
    let primary = instance.network_interfaces().iter().min_by_key(|n| {
        n.attachment()
            .and_then(|a| a.device_index())
            .unwrap_or(i32::MAX)
    });
    let ip = |text: Option<&str>| -> anyhow::Result<Option<Ipv4Addr>> {
        match text {
            None => Ok(None),
            // moto puts an IPv6 address there for an IPv6-only instance,
            // which has no IPv4 address at all.
            Some(t) if t.parse::<std::net::Ipv6Addr>().is_ok() => Ok(None),
            Some(t) => t
                .parse()
                .map(Some)
                .with_context(|| format!("{t:?} is not an IPv4 address")),
        }
    };
    Ok(InstanceView {
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        private_ipv4: ip(instance.private_ip_address())?,
        public_ipv4: ip(instance.public_ip_address())?,
        availability_zone: instance
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_owned(),
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        image_id: instance.image_id().unwrap_or_default().to_owned(),
        mac: primary.and_then(|n| n.mac_address()).map(str::to_lowercase),
        ipv6: primary
            .map(|n| n.ipv6_addresses())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.ipv6_address()?.parse().ok())
            .collect(),
    })
}

/// The launch flags of `cluster create`: `count` t3.micro instances from
/// [`TEST_AMI`] in [`TEST_REGION`], each with a `disk_gb` GiB data volume.
pub fn launch_args(count: u32, disk_gb: u32) -> Vec<String> {
    [
        "--region",
        TEST_REGION,
        "--instance-type",
        "t3.micro",
        "--count",
        &count.to_string(),
        "--disk-gb",
        &disk_gb.to_string(),
        "--ami",
        TEST_AMI,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `cluster create NAME` with the launch of [`launch_args`], then
/// `extra`: the admin CLI's arguments.
pub fn create_args(name: &str, count: u32, disk_gb: u32, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["cluster".to_owned(), "create".to_owned(), name.to_owned()];
    args.extend(launch_args(count, disk_gb));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// A public address, in AWS's own space, that the emulator never gives
/// an instance: what a lying register claims. (The documentation ranges
/// of RFC 5737 are refused as not public before EC2 is asked.)
pub const NOT_OURS: Ipv4Addr = Ipv4Addr::new(52, 94, 1, 7);

/// The register an honest agent on `instance_id` would send to join
/// `cluster`: its id, zone and addresses as EC2 describes them, and its
/// identity document signed as the strict IMDS signs it.
pub async fn register_request(
    client: &Client,
    instance_id: &str,
    cluster: &str,
) -> muster_proto::RegisterRequest {
    let view = describe(client, instance_id).await;
    signed(muster_proto::RegisterRequest {
        protocol: muster_proto::PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        instance_id: instance_id.to_owned(),
        availability_zone: view.availability_zone,
        region: TEST_REGION.to_owned(),
        private_ipv4: Some(view.private_ipv4.expect("moto gives a private address")),
        public_ipv4: view.public_ipv4,
        agent_version: "0.0.0-test".to_owned(),
        byon: None,
        signed_identity: None,
        ipv6: None,
    })
}

/// `req` carrying the identity document of the instance it claims, signed
/// by [`IdentitySigner::shared`](crate::imds::IdentitySigner::shared), as
/// the agent on that instance would send it.
pub fn signed(req: muster_proto::RegisterRequest) -> muster_proto::RegisterRequest {
    muster_proto::RegisterRequest {
        signed_identity: Some(crate::imds::IdentitySigner::shared().identity_for(&req)),
        ..req
    }
}

/// DescribeInstances for one instance; panics on failure.
pub async fn describe(client: &Client, instance_id: &str) -> InstanceView {
    try_describe(client, instance_id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The instance's user data, decoded, via DescribeInstanceAttribute; `None`
/// when it has none.
pub async fn try_user_data(client: &Client, instance_id: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let answer = client
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "DescribeInstanceAttribute userData {instance_id}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    match answer.user_data().and_then(|v| v.value()) {
        None | Some("") => Ok(None),
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Some)
            .context("user data is not base64"),
    }
}

/// Allocates a VPC Elastic IP and associates it with the instance; returns
/// the address.
pub async fn associate_new_eip(client: &Client, instance_id: &str) -> Ipv4Addr {
    let allocation = client
        .allocate_address()
        .domain(DomainType::Vpc)
        .send()
        .await
        .unwrap_or_else(|e| panic!("AllocateAddress: {}", DisplayErrorContext(&e)));
    let allocation_id = allocation
        .allocation_id()
        .expect("AllocateAddress answered an allocation id");
    client
        .associate_address()
        .instance_id(instance_id)
        .allocation_id(allocation_id)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "AssociateAddress {instance_id}: {}",
                DisplayErrorContext(&e)
            )
        });
    allocation
        .public_ip()
        .expect("AllocateAddress answered an address")
        .parse()
        .expect("the Elastic IP is an IPv4 address")
}

/// Stops the instance and waits until EC2 says `stopped`.
pub async fn stop(client: &Client, instance_id: &str) -> InstanceView {
    client
        .stop_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("StopInstances {instance_id}: {}", DisplayErrorContext(&e)));
    wait_for_state(client, instance_id, "stopped").await
}

/// Starts the instance and waits until EC2 says `running`.
pub async fn start(client: &Client, instance_id: &str) -> InstanceView {
    client
        .start_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("StartInstances {instance_id}: {}", DisplayErrorContext(&e)));
    wait_for_state(client, instance_id, "running").await
}

/// Terminates the instance, as an operator would from the console, and
/// waits until EC2 says `terminated`.
pub async fn terminate(client: &Client, instance_id: &str) -> InstanceView {
    client
        .terminate_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "TerminateInstances {instance_id}: {}",
                DisplayErrorContext(&e)
            )
        });
    wait_for_state(client, instance_id, "terminated").await
}

async fn wait_for_state(client: &Client, instance_id: &str, state: &str) -> InstanceView {
    let view = wait_until(
        EVENTUALLY,
        POLL,
        || describe(client, instance_id),
        |view| view.state == state,
    )
    .await;
    assert_eq!(view.state, state, "{instance_id} never became {state}");
    view
}

/// Every instance tagged `muster:cluster=cluster`, in any state, read with
/// DescribeInstances (all pages).
pub async fn instances_of_cluster(
    client: &Client,
    cluster: &str,
) -> Vec<aws_sdk_ec2::types::Instance> {
    let mut pages = client
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:muster:cluster")
                .values(cluster)
                .build(),
        )
        .into_paginator()
        .send();
    let mut instances = Vec::new();
    while let Some(page) = pages.next().await {
        let page =
            page.unwrap_or_else(|e| panic!("DescribeInstances: {}", DisplayErrorContext(&e)));
        instances.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .cloned(),
        );
    }
    instances
}

/// The instances of `cluster` EC2 lists as pending or running.
pub async fn live_instances_of_cluster(
    client: &Client,
    cluster: &str,
) -> Vec<aws_sdk_ec2::types::Instance> {
    instances_of_cluster(client, cluster)
        .await
        .into_iter()
        .filter(|i| {
            matches!(
                i.state().and_then(|s| s.name()).map(|n| n.as_str()),
                Some("pending" | "running")
            )
        })
        .collect()
}

/// The value of tag `key` on a resource's tags.
pub fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Creates an IAM instance profile in moto, which RunInstances insists
/// exists. A plain query-protocol call: moto reads the service from the
/// credential scope and checks no signature.
pub async fn create_instance_profile(endpoint: &str, name: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .form(&[
            ("Action", "CreateInstanceProfile"),
            ("InstanceProfileName", name),
            ("Version", "2010-05-08"),
        ])
        .send()
        .await
        .expect("CreateInstanceProfile reaches moto");
    assert!(
        answer.status().is_success(),
        "CreateInstanceProfile {name}: {}",
        answer.text().await.unwrap_or_default()
    );
}

/// What a launched instance's user data tells its agent (gzipped or not): the `#cloud-config`
/// body (JSON, which is YAML) and the `/etc/muster/agent.toml` it writes, with `join_token` set
/// to what the private token file that settings file names holds.
/// Panics if the user data is missing or not what the launcher writes.
pub async fn cloud_config(client: &Client, instance_id: &str) -> (serde_json::Value, toml::Table) {
    let bytes = try_user_data(client, instance_id)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
        .unwrap_or_else(|| panic!("{instance_id} has no user data"));
    // cloud-init unpacks gzipped user data; so do we.
    let doc = crate::cloudinit::document(&crate::cloudinit::unpack(&bytes));
    let file = |path: &str| {
        doc["write_files"]
            .as_array()
            .expect("write_files")
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("{path} is not written"))
            .clone()
    };
    let mut settings: toml::Table = file("/etc/muster/agent.toml")["content"]
        .as_str()
        .expect("content")
        .parse()
        .expect("agent.toml parses");
    assert!(
        settings.get("join_token").is_none(),
        "the token is in no settings file"
    );
    let token_path = settings["join_token_file"]
        .as_str()
        .expect("the settings name the token file")
        .to_owned();
    let token = file(&token_path);
    assert_eq!(
        token["permissions"], "0600",
        "the join token file is private"
    );
    let token = token["content"]
        .as_str()
        .expect("content")
        .trim()
        .to_owned();
    settings.insert("join_token".into(), token.into());
    (doc, settings)
}
