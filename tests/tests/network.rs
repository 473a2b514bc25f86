//! The launch network on moto: what `ensure_network` leaves in EC2, read
//! back with the SDK rather than taken from its answer. A fresh region gets
//! one tagged VPC, gateway, route table and a subnet per AZ, and looks up
//! nothing it has just made; a second call creates nothing; given subnets and VPCs are used as they are; a subnet
//! whose dry run EC2 refuses is left out.
//!
//! moto accepts every dry run, so the refusal story puts the harness's
//! [`Ec2Proxy`] in front of it, answering dry runs in one subnet the way EC2
//! does when an AZ does not offer the instance type.
//!
//! # What moto does (moto 5.2)
//! - RunInstances with `DryRun=true` always answers `DryRunOperation`,
//!   whatever the subnet (even one that does not exist), instance type or
//!   image, so under moto no subnet is ever excluded.
//! - DescribeAvailabilityZones answers a fixed list: us-east-1 has six AZs,
//!   `us-east-1a` to `us-east-1f`, all `available`, of zone type
//!   `availability-zone`. A fresh `muster-vpc` there gets six `/19`
//!   subnets, leaving two `/19` blocks free.
//! - A new subnet has MapPublicIpOnLaunch `false`; ModifySubnetAttribute
//!   sets it and DescribeSubnets then answers `true`, as EC2 does.
//! - Every region starts with a default VPC (`172.31.0.0/16`, one default
//!   subnet per AZ, a main route table) but, unlike EC2's, no internet
//!   gateway.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use muster_coordinator::launcher::network::{
    ensure_network, Network, NetworkError, NetworkRequest,
};
use muster_tests::ec2proxy::{Ec2Proxy, Refusal};
use muster_tests::{ec2, Moto};

/// The request a cluster of t3.micro nodes from the test AMI makes.
fn request() -> NetworkRequest {
    NetworkRequest {
        vpc_id: None,
        subnet_ids: Vec::new(),
        instance_type: "t3.micro".to_owned(),
        image_id: ec2::TEST_AMI.to_owned(),
    }
}

async fn ensure(client: &Client, request: &NetworkRequest) -> Network {
    ensure_network(client, request)
        .await
        .unwrap_or_else(|e| panic!("ensure_network: {e}"))
}

/// Every id of the kinds of resources `ensure_network` may create.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inventory {
    vpcs: BTreeSet<String>,
    gateways: BTreeSet<String>,
    route_tables: BTreeSet<String>,
    subnets: BTreeSet<String>,
    associations: BTreeSet<String>,
}

impl Inventory {
    async fn read(client: &Client) -> Inventory {
        let vpcs = client.describe_vpcs().send().await.expect("DescribeVpcs");
        let gateways = client
            .describe_internet_gateways()
            .send()
            .await
            .expect("DescribeInternetGateways");
        let tables = client
            .describe_route_tables()
            .send()
            .await
            .expect("DescribeRouteTables");
        let subnets = client
            .describe_subnets()
            .send()
            .await
            .expect("DescribeSubnets");
        Inventory {
            vpcs: ids(vpcs.vpcs().iter().map(|v| v.vpc_id())),
            gateways: ids(gateways
                .internet_gateways()
                .iter()
                .map(|g| g.internet_gateway_id())),
            route_tables: ids(tables.route_tables().iter().map(|t| t.route_table_id())),
            subnets: ids(subnets.subnets().iter().map(|s| s.subnet_id())),
            associations: ids(tables
                .route_tables()
                .iter()
                .flat_map(|t| t.associations())
                .map(|a| a.route_table_association_id())),
        }
    }

    /// Every id here that `before` does not have.
    fn new_since(&self, before: &Inventory) -> BTreeSet<String> {
        let pairs = [
            (&self.vpcs, &before.vpcs),
            (&self.gateways, &before.gateways),
            (&self.route_tables, &before.route_tables),
            (&self.subnets, &before.subnets),
            (&self.associations, &before.associations),
        ];
        pairs
            .into_iter()
            .flat_map(|(now, then)| now.difference(then).cloned())
            .collect()
    }
}

fn ids<'a>(ids: impl Iterator<Item = Option<&'a str>>) -> BTreeSet<String> {
    ids.map(|id| id.expect("EC2 listed a resource without an id").to_owned())
        .collect()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn named(tags: &[Tag], name: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some("Name") && t.value() == Some(name))
}

fn name_tag(resource: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

/// An IPv4 CIDR as its first address and its size, parsed here rather than
/// by the code under test.
fn range(cidr: &str) -> (u64, u64) {
    let (address, prefix) = cidr.split_once('/').expect("a CIDR has a /");
    let address: std::net::Ipv4Addr = address.parse().expect("an IPv4 address");
    let prefix: u32 = prefix.parse().expect("a prefix length");
    let size = 1u64 << (32 - prefix);
    let start = u64::from(u32::from(address));
    assert_eq!(start % size, 0, "{cidr} has host bits set");
    (start, size)
}

fn inside(inner: &str, outer: &str) -> bool {
    let (a, a_size) = range(inner);
    let (b, b_size) = range(outer);
    a >= b && a + a_size <= b + b_size
}

fn disjoint(cidrs: &[String]) -> bool {
    cidrs.iter().enumerate().all(|(i, a)| {
        cidrs[i + 1..].iter().all(|b| {
            let (a, a_size) = range(a);
            let (b, b_size) = range(b);
            a + a_size <= b || b + b_size <= a
        })
    })
}

/// The region's available AZ names, sorted.
async fn zones(client: &Client) -> Vec<String> {
    let answer = client
        .describe_availability_zones()
        .filters(filter("state", "available"))
        .send()
        .await
        .expect("DescribeAvailabilityZones");
    let mut names: Vec<String> = answer
        .availability_zones()
        .iter()
        .filter_map(|z| z.zone_name().map(str::to_owned))
        .collect();
    names.sort();
    names
}

async fn subnets_of(client: &Client, vpc_id: &str) -> Vec<aws_sdk_ec2::types::Subnet> {
    let mut subnets = client
        .describe_subnets()
        .filters(filter("vpc-id", vpc_id))
        .send()
        .await
        .expect("DescribeSubnets")
        .subnets()
        .to_vec();
    subnets.sort_by(|a, b| a.availability_zone().cmp(&b.availability_zone()));
    subnets
}

async fn vpcs_named(client: &Client, name: &str) -> Vec<aws_sdk_ec2::types::Vpc> {
    client
        .describe_vpcs()
        .filters(filter("tag:Name", name))
        .send()
        .await
        .expect("DescribeVpcs")
        .vpcs()
        .to_vec()
}

async fn create_vpc(client: &Client, cidr: &str, name: Option<&str>) -> String {
    client
        .create_vpc()
        .cidr_block(cidr)
        .set_tag_specifications(name.map(|n| vec![name_tag(ResourceType::Vpc, n)]))
        .send()
        .await
        .expect("CreateVpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("CreateVpc answered an id")
        .to_owned()
}

/// Checks that `vpc_id` holds one `muster-subnet` per available AZ, each
/// mapping public IPv4s, inside `vpc_cidr`, disjoint, of the size the
/// split gives; returns their ids by AZ.
async fn assert_subnet_per_zone(client: &Client, vpc_id: &str, vpc_cidr: &str) -> Vec<String> {
    let zones = zones(client).await;
    assert!(!zones.is_empty(), "moto lists AZs");
    let subnets = subnets_of(client, vpc_id).await;
    let subnet_zones: Vec<&str> = subnets
        .iter()
        .map(|s| s.availability_zone().unwrap_or_default())
        .collect();
    assert_eq!(subnet_zones, zones, "one subnet per AZ");
    let cidrs: Vec<String> = subnets
        .iter()
        .map(|s| s.cidr_block().expect("a subnet has a CIDR").to_owned())
        .collect();
    // The fewest power-of-two blocks that number at least #AZs + 1.
    let blocks = (zones.len() as u64 + 1).next_power_of_two();
    let (_, vpc_size) = range(vpc_cidr);
    for (subnet, cidr) in subnets.iter().zip(&cidrs) {
        let id = subnet.subnet_id().unwrap_or_default();
        assert!(named(subnet.tags(), "muster-subnet"), "{id} is not tagged");
        assert_eq!(subnet.map_public_ip_on_launch(), Some(true), "{id}");
        assert!(inside(cidr, vpc_cidr), "{cidr} is outside {vpc_cidr}");
        assert_eq!(
            range(cidr).1,
            vpc_size / blocks,
            "{cidr} is not 1/{blocks} of the VPC"
        );
    }
    assert!(disjoint(&cidrs), "{cidrs:?} overlap");
    subnets
        .iter()
        .map(|s| s.subnet_id().unwrap_or_default().to_owned())
        .collect()
}

/// A fresh region gets exactly one VPC, gateway and route table, tagged and
/// wired, and a public subnet per AZ associated with the route table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_region_gets_one_tagged_network() {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let before = Inventory::read(&client).await;
    assert!(vpcs_named(&client, "muster-vpc").await.is_empty());

    // Through the counting proxy: what a fresh region costs in calls.
    let proxy = Ec2Proxy::start(moto.endpoint(), Vec::new()).await;
    let counted = ec2::client(&proxy.endpoint()).await;
    let network = ensure(&counted, &request()).await;
    let after = Inventory::read(&client).await;
    let calls = proxy.calls();
    // Nothing made just now is looked up again: one look for the tagged
    // VPC, one for the spare gateway, one for the AZs, none for the new
    // VPC's gateway, route tables or subnets.
    for (action, expected) in [
        ("DescribeVpcs", 1),
        ("DescribeInternetGateways", 1),
        ("DescribeRouteTables", 0),
        ("DescribeSubnets", 0),
        ("DescribeAvailabilityZones", 1),
        ("CreateSubnet", 6),
        ("AssociateRouteTable", 6),
    ] {
        assert_eq!(
            calls.get(action).copied().unwrap_or(0),
            expected,
            "{action}: {calls:?}"
        );
    }

    let vpcs = vpcs_named(&client, "muster-vpc").await;
    assert_eq!(vpcs.len(), 1, "{vpcs:?}");
    let vpc_id = vpcs[0].vpc_id().unwrap_or_default().to_owned();
    assert_eq!(vpcs[0].cidr_block(), Some("10.77.0.0/16"));
    assert_eq!(network.vpc_id, vpc_id);
    assert_eq!(after.vpcs.difference(&before.vpcs).count(), 1);

    let gateways = client
        .describe_internet_gateways()
        .filters(filter("tag:Name", "muster-gateway"))
        .send()
        .await
        .expect("DescribeInternetGateways")
        .internet_gateways()
        .to_vec();
    assert_eq!(gateways.len(), 1, "{gateways:?}");
    let gateway_id = gateways[0].internet_gateway_id().unwrap_or_default();
    let attached: Vec<_> = gateways[0]
        .attachments()
        .iter()
        .map(|a| a.vpc_id().unwrap_or_default())
        .collect();
    assert_eq!(attached, [vpc_id.as_str()]);
    assert_eq!(after.gateways.difference(&before.gateways).count(), 1);

    let tables = client
        .describe_route_tables()
        .filters(filter("tag:Name", "muster-route-table"))
        .send()
        .await
        .expect("DescribeRouteTables")
        .route_tables()
        .to_vec();
    assert_eq!(tables.len(), 1, "{tables:?}");
    let table = &tables[0];
    assert_eq!(table.vpc_id(), Some(vpc_id.as_str()));
    let default_route = table
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
        .expect("a default route");
    assert_eq!(default_route.gateway_id(), Some(gateway_id));

    let subnet_ids = assert_subnet_per_zone(&client, &vpc_id, "10.77.0.0/16").await;
    assert_eq!(subnet_ids.len(), 6, "moto's us-east-1 has six AZs");
    let associated: BTreeSet<&str> = table
        .associations()
        .iter()
        .filter_map(|a| a.subnet_id())
        .collect();
    assert_eq!(
        associated,
        subnet_ids
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        "every subnet routes through muster-route-table"
    );

    assert_eq!(network.subnet_ids(), subnet_ids, "all usable, by AZ");
    assert!(network.excluded.is_empty(), "{:?}", network.excluded);
    let created: BTreeSet<String> = network.created.iter().cloned().collect();
    assert_eq!(created.len(), network.created.len(), "no id twice");
    // CreateVpc makes the VPC's main route table and its association too.
    let main = client
        .describe_route_tables()
        .filters(filter("vpc-id", &vpc_id))
        .filters(filter("association.main", "true"))
        .send()
        .await
        .expect("DescribeRouteTables")
        .route_tables()
        .to_vec();
    assert_eq!(main.len(), 1, "{main:?}");
    let mut expected = after.new_since(&before);
    expected.remove(main[0].route_table_id().unwrap_or_default());
    for association in main[0].associations() {
        expected.remove(association.route_table_association_id().unwrap_or_default());
    }
    assert_eq!(created, expected, "created lists what is new");
    assert_eq!(network.created.first(), Some(&vpc_id), "the VPC first");
}

/// A second call finds everything and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_call_creates_nothing() {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let first = ensure(&client, &request()).await;
    assert!(!first.created.is_empty());
    let between = Inventory::read(&client).await;

    let second = ensure(&client, &request()).await;
    assert_eq!(Inventory::read(&client).await, between);
    assert!(second.created.is_empty(), "{:?}", second.created);
    assert_eq!(second.vpc_id, first.vpc_id);
    assert_eq!(second.subnets, first.subnets);
}

/// Given subnets, exactly those are used, in the order given; subnets that
/// do not exist or lie elsewhere are refused, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_subnets_are_the_only_ones_used() {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let all = ensure(&client, &request()).await.subnet_ids();
    let chosen = vec![all[4].clone(), all[1].clone()];
    let before = Inventory::read(&client).await;

    let without_vpc = ensure(
        &client,
        &NetworkRequest {
            subnet_ids: vec![chosen[0].clone(), chosen[1].clone(), chosen[0].clone()],
            ..request()
        },
    )
    .await;
    assert_eq!(without_vpc.subnet_ids(), chosen);
    let vpc_id = without_vpc.vpc_id.clone();
    assert_eq!(
        vpcs_named(&client, "muster-vpc").await[0].vpc_id(),
        Some(vpc_id.as_str())
    );

    let with_vpc = ensure(
        &client,
        &NetworkRequest {
            vpc_id: Some(vpc_id.clone()),
            subnet_ids: chosen.clone(),
            ..request()
        },
    )
    .await;
    assert_eq!(with_vpc.subnet_ids(), chosen);
    for network in [&without_vpc, &with_vpc] {
        assert!(network.created.is_empty(), "{:?}", network.created);
        for subnet in &network.subnets {
            let read = subnets_of(&client, &vpc_id).await;
            let actual = read
                .iter()
                .find(|s| s.subnet_id() == Some(subnet.id.as_str()))
                .expect("the subnet is in the VPC");
            assert_eq!(
                actual.availability_zone(),
                Some(subnet.availability_zone.as_str())
            );
            assert_eq!(actual.cidr_block(), Some(subnet.cidr.to_string().as_str()));
        }
    }

    let default_vpc = client
        .describe_vpcs()
        .filters(filter("is-default", "true"))
        .send()
        .await
        .expect("DescribeVpcs")
        .vpcs()[0]
        .vpc_id()
        .unwrap_or_default()
        .to_owned();
    let foreign = subnets_of(&client, &default_vpc).await[0]
        .subnet_id()
        .unwrap_or_default()
        .to_owned();

    let error = ensure_network(
        &client,
        &NetworkRequest {
            vpc_id: Some(vpc_id.clone()),
            subnet_ids: vec![chosen[0].clone(), foreign.clone()],
            ..request()
        },
    )
    .await
    .expect_err("a subnet of another VPC");
    assert!(
        matches!(&error, NetworkError::SubnetOutsideVpc { subnet_id, .. } if *subnet_id == foreign),
        "{error}"
    );

    let error = ensure_network(
        &client,
        &NetworkRequest {
            subnet_ids: vec![chosen[0].clone(), foreign.clone()],
            ..request()
        },
    )
    .await
    .expect_err("subnets of two VPCs");
    assert!(
        matches!(error, NetworkError::SubnetsInManyVpcs { ref vpc_ids } if vpc_ids.len() == 2),
        "{error}"
    );

    let missing = "subnet-0123456789abcdef0".to_owned();
    let error = ensure_network(
        &client,
        &NetworkRequest {
            vpc_id: Some(vpc_id.clone()),
            subnet_ids: vec![chosen[0].clone(), missing.clone()],
            ..request()
        },
    )
    .await
    .expect_err("a subnet that does not exist");
    assert!(
        matches!(&error, NetworkError::NoSuchSubnets { subnet_ids, .. } if *subnet_ids == [missing.clone()]),
        "{error}"
    );

    assert_eq!(Inventory::read(&client).await, before, "nothing created");
}

/// A user's VPC is used as it is: subnets are added if it has none, but no
/// `muster-vpc`, gateway or route table; one with only untagged subnets,
/// or one that does not exist, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_vpc_is_honoured() {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let vpc_id = create_vpc(&client, "10.20.0.0/16", None).await;
    let before = Inventory::read(&client).await;

    let network = ensure(
        &client,
        &NetworkRequest {
            vpc_id: Some(vpc_id.clone()),
            ..request()
        },
    )
    .await;
    let after = Inventory::read(&client).await;
    assert_eq!(network.vpc_id, vpc_id);
    assert!(vpcs_named(&client, "muster-vpc").await.is_empty());
    assert_eq!(after.vpcs, before.vpcs);
    assert_eq!(after.gateways, before.gateways, "no gateway added");
    assert_eq!(
        after.route_tables, before.route_tables,
        "no route table added"
    );
    assert_eq!(after.associations, before.associations);

    let subnet_ids = assert_subnet_per_zone(&client, &vpc_id, "10.20.0.0/16").await;
    assert_eq!(network.subnet_ids(), subnet_ids);
    assert_eq!(
        network.created.iter().cloned().collect::<BTreeSet<_>>(),
        subnet_ids.iter().cloned().collect::<BTreeSet<_>>(),
        "only the subnets are new"
    );

    let again = ensure(
        &client,
        &NetworkRequest {
            vpc_id: Some(vpc_id.clone()),
            ..request()
        },
    )
    .await;
    assert!(again.created.is_empty(), "{:?}", again.created);
    assert_eq!(Inventory::read(&client).await, after);

    let crowded = create_vpc(&client, "10.30.0.0/16", None).await;
    client
        .create_subnet()
        .vpc_id(&crowded)
        .cidr_block("10.30.0.0/24")
        .availability_zone("us-east-1a")
        .send()
        .await
        .expect("CreateSubnet");
    let before = Inventory::read(&client).await;
    let error = ensure_network(
        &client,
        &NetworkRequest {
            vpc_id: Some(crowded.clone()),
            ..request()
        },
    )
    .await
    .expect_err("a VPC with only untagged subnets");
    assert!(
        matches!(&error, NetworkError::UnnamedSubnets { vpc_id } if *vpc_id == crowded),
        "{error}"
    );

    let error = ensure_network(
        &client,
        &NetworkRequest {
            vpc_id: Some("vpc-0123456789abcdef0".to_owned()),
            ..request()
        },
    )
    .await
    .expect_err("a VPC that does not exist");
    assert!(matches!(error, NetworkError::NoSuchVpc { .. }), "{error}");
    assert_eq!(Inventory::read(&client).await, before, "nothing created");
}

/// A VPC the user tagged `muster-vpc` is adopted with its own CIDR, and a
/// detached `muster-gateway` left by an interrupted call is attached
/// rather than a second one made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_vpc_and_spare_gateway_are_adopted() {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let vpc_id = create_vpc(&client, "10.50.0.0/16", Some("muster-vpc")).await;
    let gateway_id = client
        .create_internet_gateway()
        .tag_specifications(name_tag(ResourceType::InternetGateway, "muster-gateway"))
        .send()
        .await
        .expect("CreateInternetGateway")
        .internet_gateway()
        .and_then(|g| g.internet_gateway_id())
        .expect("an id")
        .to_owned();
    let before = Inventory::read(&client).await;

    let network = ensure(&client, &request()).await;
    let after = Inventory::read(&client).await;
    assert_eq!(network.vpc_id, vpc_id);
    assert_eq!(after.vpcs, before.vpcs, "no second VPC");
    assert_eq!(after.gateways, before.gateways, "no second gateway");
    let attached = client
        .describe_internet_gateways()
        .filters(filter("attachment.vpc-id", &vpc_id))
        .send()
        .await
        .expect("DescribeInternetGateways");
    assert_eq!(
        ids(attached
            .internet_gateways()
            .iter()
            .map(|g| g.internet_gateway_id())),
        BTreeSet::from([gateway_id])
    );
    assert_subnet_per_zone(&client, &vpc_id, "10.50.0.0/16").await;
    assert!(!network.created.contains(&vpc_id));
    assert_eq!(
        network.created.iter().cloned().collect::<BTreeSet<_>>(),
        after.new_since(&before)
    );
}

/// A subnet whose dry run EC2 refuses is left out, with EC2's reason; the
/// others stay usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_dry_run_excludes_the_subnet() {
    let moto = Moto::start().await;
    let direct = ec2::client(&moto.endpoint()).await;
    let all = ensure(&direct, &request()).await.subnets;
    let refused = all
        .iter()
        .find(|s| s.availability_zone == "us-east-1c")
        .expect("a subnet in us-east-1c")
        .id
        .clone();

    let proxy = Ec2Proxy::start(
        moto.endpoint(),
        vec![Refusal {
            action: "RunInstances".to_owned(),
            subnet_id: Some(refused.clone()),
            dry_run: true,
            code: "Unsupported".to_owned(),
            message: "Your requested instance type (t3.micro) is not supported in your \
                      requested Availability Zone (us-east-1c). Please retry your request by \
                      not specifying an Availability Zone or choosing us-east-1a, us-east-1b, \
                      us-east-1d, us-east-1e, us-east-1f."
                .to_owned(),
        }],
    )
    .await;
    let through = ec2::client(&proxy.endpoint()).await;
    let network = ensure(&through, &request()).await;

    assert_eq!(network.excluded.len(), 1, "{:?}", network.excluded);
    let (id, reason) = &network.excluded[0];
    assert_eq!(id, &refused);
    assert!(reason.starts_with("Unsupported: "), "{reason}");
    assert!(reason.contains("us-east-1c"), "{reason}");
    let expected: Vec<String> = all
        .iter()
        .map(|s| s.id.clone())
        .filter(|id| *id != refused)
        .collect();
    assert_eq!(network.subnet_ids(), expected);
    assert!(
        proxy.refused().get(&refused).is_some_and(|n| *n >= 1),
        "the proxy refused the dry run"
    );
    assert!(network.created.is_empty());
}
