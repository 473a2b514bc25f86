//! The network launched nodes live in: a VPC, an internet gateway, a route
//! table and subnets, found by name or created, the way Tutum did it.
//!
//! [`ensure_network`] is idempotent: called again, it finds what it made
//! and creates nothing. For one region it goes:
//!
//! 1. **VPC.** A `vpc_id` in the request is used. Without one but with
//!    `subnet_ids`, the VPC those subnets are in is used. With neither, the
//!    VPC tagged `Name=muster-vpc` is used (users may tag their own VPC so),
//!    or one is created with CIDR [`DEFAULT_VPC_CIDR`] and tagged.
//! 2. **Gateway and routes**, only in a VPC tagged `muster-vpc`: the
//!    internet gateway attached to it, else a detached one tagged
//!    `muster-gateway`, else a new one, attached; a route table tagged
//!    `muster-route-table` with `0.0.0.0/0` to that gateway. Any other VPC
//!    is the user's, and so is its routing: nothing is added to it but the
//!    subnets of step 3.
//! 3. **Subnets.** Given `subnet_ids`, exactly those, which must exist and
//!    be in the VPC. Otherwise the VPC's subnets tagged `muster-subnet`. If
//!    the VPC has no subnets at all, one `muster-subnet` per available AZ is
//!    created: the VPC's CIDR is split into the fewest equal power-of-two
//!    blocks that number at least #AZs + 1 ([`subnet_blocks`]), the AZs in
//!    name order take the first blocks, and the rest is left free for the
//!    user's own subnets. New subnets map a public IPv4 on launch and, in a
//!    `muster-vpc`, are associated with `muster-route-table`; later calls
//!    repair both for the `muster-subnet`s of a `muster-vpc`. A VPC that has
//!    subnets but none tagged `muster-subnet` is an error: which of them
//!    nodes may use is the user's call.
//! 4. **Dry runs.** One RunInstances per subnet with `DryRun=true`, the
//!    requested instance type and image, MinCount = MaxCount = 1. EC2's
//!    `DryRunOperation` answer means the launch would have succeeded; any
//!    other answer (the type is not offered in that AZ, the image is not
//!    there, no permission) excludes the subnet, with that answer as the
//!    reason. This is also the cheapest check that the credentials may
//!    launch at all.
//!
//! Everything is tagged as it is created (TagSpecifications), so a call
//! that dies midway leaves named resources the next call finds. EC2 is
//! eventually consistent: a call naming a resource created moments ago may
//! be told it does not exist, so such calls are retried briefly.
//!
//! When several resources carry the same name (two coordinators racing in
//! a fresh region), the one with the lowest id is used, with a warning.
//! A call that dies between creating two subnets leaves fewer subnets than
//! AZs; later calls use those and create no more.
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
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    AttachmentStatus, AttributeBooleanValue, Filter, InstanceType, ResourceType, Tag,
    TagSpecification,
};
use aws_sdk_ec2::Client;

use crate::ec2::{filter, sdk_message, settled};

/// The `Name` tag of the VPC muster creates and looks for.
pub const VPC_NAME: &str = "muster-vpc";
/// The `Name` tag of the internet gateway of a `muster-vpc`.
pub const GATEWAY_NAME: &str = "muster-gateway";
/// The `Name` tag of the route table of a `muster-vpc`.
pub const ROUTE_TABLE_NAME: &str = "muster-route-table";
/// The `Name` tag of the subnets muster creates and uses.
pub const SUBNET_NAME: &str = "muster-subnet";

/// The CIDR of a VPC muster creates.
pub const DEFAULT_VPC_CIDR: Ipv4Cidr = Ipv4Cidr {
    network: Ipv4Addr::new(10, 77, 0, 0),
    prefix: 16,
};

/// EC2's smallest subnet is a `/28`.
pub const SMALLEST_SUBNET_PREFIX: u8 = 28;

/// The destination of the route to the internet.
const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// Most values one EC2 filter takes.
const VALUES_PER_FILTER: usize = 200;

/// What a cluster launch needs of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRequest {
    /// The user's VPC; `None` for the `muster-vpc` (or the VPC of
    /// `subnet_ids`, if given).
    pub vpc_id: Option<String>,
    /// The subnets to use, in order of preference; empty to let muster
    /// choose (the VPC's `muster-subnet`s, created if the VPC has none).
    pub subnet_ids: Vec<String>,
    /// The instance type nodes launch as, e.g. `t3.micro`.
    pub instance_type: String,
    /// The AMI nodes launch from.
    pub image_id: String,
}

/// The network found or made for a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The VPC.
    pub vpc_id: String,
    /// The ids of what this call created (`vpc-…`, `igw-…`, `rtb-…`,
    /// `subnet-…`, `rtbassoc-…`), in creation order; empty when everything
    /// was there already.
    pub created: Vec<String>,
    /// The subnets nodes may launch in: the given ones in the order given,
    /// otherwise by AZ name. Those whose dry run failed are not here.
    pub subnets: Vec<Subnet>,
    /// The subnets whose dry run failed, each with EC2's answer.
    pub excluded: Vec<(String, String)>,
}

impl Network {
    /// The ids of [`Network::subnets`], in order: the `usable` list for
    /// [`crate::placement::place`].
    pub fn subnet_ids(&self) -> Vec<String> {
        self.subnets.iter().map(|s| s.id.clone()).collect()
    }
}

/// One subnet nodes may launch in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// `subnet-…`.
    pub id: String,
    /// E.g. `us-east-1a`.
    pub availability_zone: String,
    /// Its IPv4 block.
    pub cidr: Ipv4Cidr,
}

/// Errors finding or making the network. Each names the call that failed
/// and what it was about; EC2's answers are kept with all their causes.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// DescribeVpcs failed.
    #[error("describing VPC {vpc} in {region}: {message}")]
    DescribeVpcs {
        /// A VPC id, or the tag looked for.
        vpc: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// The VPC asked for does not exist.
    #[error("VPC {vpc_id} does not exist in {region}")]
    NoSuchVpc {
        /// The VPC.
        vpc_id: String,
        /// The region.
        region: String,
    },
    /// CreateVpc failed.
    #[error("creating VPC {cidr} in {region}: {message}")]
    CreateVpc {
        /// The CIDR asked for.
        cidr: Ipv4Cidr,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// DescribeInternetGateways failed.
    #[error("describing internet gateways for {vpc_id} in {region}: {message}")]
    DescribeGateways {
        /// The VPC the gateway is for.
        vpc_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// CreateInternetGateway failed.
    #[error("creating an internet gateway for {vpc_id} in {region}: {message}")]
    CreateGateway {
        /// The VPC it was for.
        vpc_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// AttachInternetGateway failed.
    #[error("attaching internet gateway {gateway_id} to {vpc_id} in {region}: {message}")]
    AttachGateway {
        /// The gateway.
        gateway_id: String,
        /// The VPC.
        vpc_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// DescribeRouteTables failed.
    #[error("describing route tables of {vpc_id} in {region}: {message}")]
    DescribeRouteTables {
        /// The VPC.
        vpc_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// CreateRouteTable failed.
    #[error("creating a route table in {vpc_id} ({region}): {message}")]
    CreateRouteTable {
        /// The VPC.
        vpc_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// CreateRoute or ReplaceRoute of `0.0.0.0/0` failed.
    #[error(
        "routing 0.0.0.0/0 to {gateway_id} in route table {route_table_id} ({region}): {message}"
    )]
    DefaultRoute {
        /// The route table.
        route_table_id: String,
        /// The internet gateway.
        gateway_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// AssociateRouteTable failed.
    #[error("associating route table {route_table_id} with {subnet_id} ({region}): {message}")]
    AssociateRouteTable {
        /// The route table.
        route_table_id: String,
        /// The subnet.
        subnet_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// DescribeSubnets failed.
    #[error("describing subnets {subnets} in {region}: {message}")]
    DescribeSubnets {
        /// `of vpc-…`, or the ids asked about.
        subnets: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// Some of the subnets asked for do not exist.
    #[error("subnets not found in {region}: {}", subnet_ids.join(", "))]
    NoSuchSubnets {
        /// The ones not found.
        subnet_ids: Vec<String>,
        /// The region.
        region: String,
    },
    /// A subnet asked for is in another VPC than the one asked for.
    #[error("subnet {subnet_id} is in {subnet_vpc_id}, not in {vpc_id}")]
    SubnetOutsideVpc {
        /// The subnet.
        subnet_id: String,
        /// The VPC it is in.
        subnet_vpc_id: String,
        /// The VPC asked for.
        vpc_id: String,
    },
    /// The subnets asked for, with no VPC, are in several VPCs.
    #[error("the subnets asked for are in more than one VPC: {}", vpc_ids.join(", "))]
    SubnetsInManyVpcs {
        /// The VPCs.
        vpc_ids: Vec<String>,
    },
    /// The VPC has subnets, none tagged `muster-subnet`, and none were named.
    #[error(
        "{vpc_id} has subnets but none tagged Name={}: name the subnets to use, or tag them",
        SUBNET_NAME
    )]
    UnnamedSubnets {
        /// The VPC.
        vpc_id: String,
    },
    /// DescribeAvailabilityZones failed.
    #[error("describing the availability zones of {region}: {message}")]
    DescribeAvailabilityZones {
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// The region has no available AZ.
    #[error("{region} has no available availability zone")]
    NoAvailabilityZones {
        /// The region.
        region: String,
    },
    /// EC2 gave a VPC or subnet a CIDR that is not IPv4.
    #[error("{resource} has CIDR {cidr:?}, which is not an IPv4 CIDR")]
    Cidr {
        /// The VPC or subnet.
        resource: String,
        /// What EC2 said.
        cidr: String,
    },
    /// The VPC cannot hold a subnet per AZ and room for one more.
    #[error(
        "{vpc_id} ({cidr}) is too small for {blocks} subnets of at least /{}",
        SMALLEST_SUBNET_PREFIX
    )]
    VpcTooSmall {
        /// The VPC.
        vpc_id: String,
        /// Its CIDR.
        cidr: Ipv4Cidr,
        /// How many blocks it would need.
        blocks: usize,
    },
    /// CreateSubnet failed.
    #[error("creating subnet {cidr} in {availability_zone} of {vpc_id} ({region}): {message}")]
    CreateSubnet {
        /// The block asked for.
        cidr: Ipv4Cidr,
        /// The AZ.
        availability_zone: String,
        /// The VPC.
        vpc_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// ModifySubnetAttribute MapPublicIpOnLaunch failed.
    #[error("turning on MapPublicIpOnLaunch for {subnet_id} ({region}): {message}")]
    MapPublicIp {
        /// The subnet.
        subnet_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// A dry run got no answer from EC2 (network, timeout, unreadable
    /// answer), which says nothing about the subnet.
    #[error("dry-running {instance_type} in {subnet_id} ({region}): {message}")]
    DryRun {
        /// The subnet.
        subnet_id: String,
        /// The instance type.
        instance_type: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// The endpoint ignored `DryRun=true` and launched instances.
    #[error("a dry run in {subnet_id} ({region}) launched instances: {}", instance_ids.join(", "))]
    DryRunLaunched {
        /// The subnet.
        subnet_id: String,
        /// The instances launched.
        instance_ids: Vec<String>,
        /// The region.
        region: String,
    },
    /// EC2 answered a call without a field it always sends.
    #[error("{operation} in {region} answered without {field}")]
    Answer {
        /// The call.
        operation: &'static str,
        /// The missing field.
        field: &'static str,
        /// The region.
        region: String,
    },
}

/// An IPv4 block: a network address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The block of `prefix` bits that holds `address`; `None` if `prefix`
    /// is over 32.
    pub fn new(address: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        (prefix <= 32).then(|| Ipv4Cidr {
            network: Ipv4Addr::from_bits(address.to_bits() & mask(prefix)),
            prefix,
        })
    }

    /// The first address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses the block holds.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// Whether `other` lies wholly inside this block.
    pub fn contains(&self, other: &Ipv4Cidr) -> bool {
        other.prefix >= self.prefix
            && other.network.to_bits() & mask(self.prefix) == self.network.to_bits()
    }

    /// Whether the two blocks share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Text that is not `a.b.c.d/n` with host bits zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 CIDR (a.b.c.d/n, host bits zero)")]
pub struct InvalidCidr(pub String);

impl FromStr for Ipv4Cidr {
    type Err = InvalidCidr;

    fn from_str(text: &str) -> Result<Ipv4Cidr, InvalidCidr> {
        let invalid = || InvalidCidr(text.to_owned());
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let cidr = Ipv4Cidr::new(address, prefix).ok_or_else(invalid)?;
        if cidr.network != address {
            return Err(invalid());
        }
        Ok(cidr)
    }
}

/// The blocks a VPC's CIDR is split into to give `zones` AZs a subnet
/// each and leave room for the user's own: the fewest equal power-of-two
/// blocks that number at least `zones + 1`, all of them, in address order.
/// `None` if they would be smaller than EC2's smallest subnet, a `/28`.
///
/// `10.77.0.0/16` for six AZs is eight `/19`s: six subnets, two blocks free.
pub fn subnet_blocks(vpc: Ipv4Cidr, zones: usize) -> Option<Vec<Ipv4Cidr>> {
    let count = zones.checked_add(1)?.checked_next_power_of_two()?;
    let prefix = u32::from(vpc.prefix) + count.trailing_zeros();
    if prefix > u32::from(SMALLEST_SUBNET_PREFIX) {
        return None;
    }
    let prefix = u8::try_from(prefix).ok()?;
    let step = 1u64 << (32 - u32::from(prefix));
    let base = u64::from(vpc.network.to_bits());
    (0..count as u64)
        .map(|i| {
            let start = u32::try_from(base + i * step).ok()?;
            Ipv4Cidr::new(Ipv4Addr::from_bits(start), prefix)
        })
        .collect()
}

/// Finds or makes the network for a launch, as the module doc says, and
/// dry-runs the request in every subnet.
pub async fn ensure_network(
    client: &Client,
    request: &NetworkRequest,
) -> Result<Network, NetworkError> {
    let ec2 = Ec2::new(client);
    let mut created = Vec::new();

    let mut given = Vec::new();
    for id in &request.subnet_ids {
        if !given.contains(id) {
            given.push(id.clone());
        }
    }
    let given = if given.is_empty() {
        None
    } else {
        Some(ec2.subnets_by_id(&given).await?)
    };

    let (vpc, managed) = match (&request.vpc_id, &given) {
        (Some(vpc_id), _) => {
            let vpc = ec2.vpc_by_id(vpc_id).await?;
            let managed = has_name(vpc.tags(), VPC_NAME);
            (vpc, managed)
        }
        (None, Some(subnets)) => {
            let vpc = ec2.vpc_by_id(&one_vpc(subnets)?).await?;
            let managed = has_name(vpc.tags(), VPC_NAME);
            (vpc, managed)
        }
        (None, None) => (ec2.ensure_muster_vpc(&mut created).await?, true),
    };
    let vpc_id = vpc
        .vpc_id()
        .ok_or_else(|| ec2.answer("DescribeVpcs", "VpcId"))?
        .to_owned();

    let route_table_id = if managed {
        let gateway_id = ec2.ensure_gateway(&vpc_id, &mut created).await?;
        Some(
            ec2.ensure_route_table(&vpc_id, &gateway_id, &mut created)
                .await?,
        )
    } else {
        None
    };

    let candidates = match given {
        Some(subnets) => {
            for subnet in &subnets {
                let subnet_vpc_id = subnet.vpc_id().unwrap_or_default();
                if subnet_vpc_id != vpc_id {
                    return Err(NetworkError::SubnetOutsideVpc {
                        subnet_id: subnet.subnet_id().unwrap_or_default().to_owned(),
                        subnet_vpc_id: subnet_vpc_id.to_owned(),
                        vpc_id,
                    });
                }
            }
            subnets
                .iter()
                .map(|s| ec2.subnet_of(s))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => {
            ec2.muster_subnets(&vpc, route_table_id.as_deref(), &mut created)
                .await?
        }
    };

    let (subnets, excluded) = ec2.dry_run(candidates, request).await?;
    Ok(Network {
        vpc_id,
        created,
        subnets,
        excluded,
    })
}

/// The one VPC the given subnets are in.
fn one_vpc(subnets: &[aws_sdk_ec2::types::Subnet]) -> Result<String, NetworkError> {
    let vpc_ids: BTreeSet<&str> = subnets.iter().filter_map(|s| s.vpc_id()).collect();
    let mut ids = vpc_ids.iter();
    match (ids.next(), ids.next()) {
        (Some(only), None) => Ok((*only).to_owned()),
        _ => Err(NetworkError::SubnetsInManyVpcs {
            vpc_ids: vpc_ids.iter().map(|s| (*s).to_owned()).collect(),
        }),
    }
}

/// Whether the tags hold `Name=name`.
fn has_name(tags: &[Tag], name: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some("Name") && t.value() == Some(name))
}

/// The filter for resources tagged `Name=name`.
fn name_filter(name: &str) -> Filter {
    filter("tag:Name", name)
}

/// Tags a resource `Name=name` as it is created.
fn name_tag(resource: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

/// One region's EC2, for the steps of [`ensure_network`].
struct Ec2<'a> {
    client: &'a Client,
    region: String,
}

impl<'a> Ec2<'a> {
    fn new(client: &'a Client) -> Ec2<'a> {
        let region = client
            .config()
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "(no region)".to_owned());
        Ec2 { client, region }
    }

    fn answer(&self, operation: &'static str, field: &'static str) -> NetworkError {
        NetworkError::Answer {
            operation,
            field,
            region: self.region.clone(),
        }
    }

    async fn describe_vpcs(
        &self,
        vpc: &str,
        filter: Filter,
    ) -> Result<Vec<aws_sdk_ec2::types::Vpc>, NetworkError> {
        let mut vpcs: Vec<_> = self
            .client
            .describe_vpcs()
            .filters(filter)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| NetworkError::DescribeVpcs {
                vpc: vpc.to_owned(),
                region: self.region.clone(),
                message: sdk_message(&error),
            })?;
        vpcs.sort_by(|a, b| a.vpc_id().cmp(&b.vpc_id()));
        Ok(vpcs)
    }

    async fn vpc_by_id(&self, vpc_id: &str) -> Result<aws_sdk_ec2::types::Vpc, NetworkError> {
        // As a filter, an unknown id is simply absent rather than an error.
        self.describe_vpcs(vpc_id, filter("vpc-id", vpc_id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| NetworkError::NoSuchVpc {
                vpc_id: vpc_id.to_owned(),
                region: self.region.clone(),
            })
    }

    /// The VPC tagged `muster-vpc`, created if there is none.
    async fn ensure_muster_vpc(
        &self,
        created: &mut Vec<String>,
    ) -> Result<aws_sdk_ec2::types::Vpc, NetworkError> {
        let vpcs = self
            .describe_vpcs(&format!("Name={VPC_NAME}"), name_filter(VPC_NAME))
            .await?;
        if let Some(vpc) = vpcs.first() {
            if vpcs.len() > 1 {
                tracing::warn!(
                    region = %self.region,
                    count = vpcs.len(),
                    using = vpc.vpc_id().unwrap_or_default(),
                    "several VPCs are tagged {VPC_NAME}; using the lowest id"
                );
            }
            return Ok(vpc.clone());
        }
        let cidr = DEFAULT_VPC_CIDR;
        let vpc = self
            .client
            .create_vpc()
            .cidr_block(cidr.to_string())
            .tag_specifications(name_tag(ResourceType::Vpc, VPC_NAME))
            .send()
            .await
            .map_err(|error| NetworkError::CreateVpc {
                cidr,
                region: self.region.clone(),
                message: sdk_message(&error),
            })?
            .vpc
            .ok_or_else(|| self.answer("CreateVpc", "Vpc"))?;
        let vpc_id = vpc
            .vpc_id()
            .ok_or_else(|| self.answer("CreateVpc", "VpcId"))?;
        tracing::info!(region = %self.region, %vpc_id, %cidr, "created VPC {VPC_NAME}");
        created.push(vpc_id.to_owned());
        Ok(vpc)
    }

    async fn describe_gateways(
        &self,
        vpc_id: &str,
        filter: Filter,
    ) -> Result<Vec<aws_sdk_ec2::types::InternetGateway>, NetworkError> {
        let mut gateways: Vec<_> = self
            .client
            .describe_internet_gateways()
            .filters(filter)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| NetworkError::DescribeGateways {
                vpc_id: vpc_id.to_owned(),
                region: self.region.clone(),
                message: sdk_message(&error),
            })?;
        gateways.sort_by(|a, b| a.internet_gateway_id().cmp(&b.internet_gateway_id()));
        Ok(gateways)
    }

    /// The internet gateway attached to the VPC: the one already there,
    /// else a detached `muster-gateway`, else a new one.
    async fn ensure_gateway(
        &self,
        vpc_id: &str,
        created: &mut Vec<String>,
    ) -> Result<String, NetworkError> {
        // A VPC has at most one internet gateway; whatever its name, it is
        // the one to route through. A VPC created just now has none.
        if !made_here(created, vpc_id) {
            let attached = self
                .describe_gateways(vpc_id, filter("attachment.vpc-id", vpc_id))
                .await?;
            if let Some(id) = attached.first().and_then(|g| g.internet_gateway_id()) {
                return Ok(id.to_owned());
            }
        }

        let named = self
            .describe_gateways(vpc_id, name_filter(GATEWAY_NAME))
            .await?;
        let spare = named.iter().find(|g| {
            g.attachments()
                .iter()
                .all(|a| a.state() == Some(&AttachmentStatus::Detached))
        });
        let gateway_id = match spare.and_then(|g| g.internet_gateway_id()) {
            Some(id) => id.to_owned(),
            None => {
                let gateway = self
                    .client
                    .create_internet_gateway()
                    .tag_specifications(name_tag(ResourceType::InternetGateway, GATEWAY_NAME))
                    .send()
                    .await
                    .map_err(|error| NetworkError::CreateGateway {
                        vpc_id: vpc_id.to_owned(),
                        region: self.region.clone(),
                        message: sdk_message(&error),
                    })?;
                let id = gateway
                    .internet_gateway()
                    .and_then(|g| g.internet_gateway_id())
                    .ok_or_else(|| self.answer("CreateInternetGateway", "InternetGatewayId"))?
                    .to_owned();
                tracing::info!(region = %self.region, gateway_id = %id, "created internet gateway {GATEWAY_NAME}");
                created.push(id.clone());
                id
            }
        };
        settled(|| {
            self.client
                .attach_internet_gateway()
                .internet_gateway_id(&gateway_id)
                .vpc_id(vpc_id)
                .send()
        })
        .await
        .map_err(|error| NetworkError::AttachGateway {
            gateway_id: gateway_id.clone(),
            vpc_id: vpc_id.to_owned(),
            region: self.region.clone(),
            message: sdk_message(&error),
        })?;
        tracing::info!(region = %self.region, %gateway_id, %vpc_id, "attached internet gateway");
        Ok(gateway_id)
    }

    async fn describe_route_tables(
        &self,
        vpc_id: &str,
        filters: Vec<Filter>,
    ) -> Result<Vec<aws_sdk_ec2::types::RouteTable>, NetworkError> {
        let mut tables: Vec<_> = self
            .client
            .describe_route_tables()
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| NetworkError::DescribeRouteTables {
                vpc_id: vpc_id.to_owned(),
                region: self.region.clone(),
                message: sdk_message(&error),
            })?;
        tables.sort_by(|a, b| a.route_table_id().cmp(&b.route_table_id()));
        Ok(tables)
    }

    /// The VPC's `muster-route-table`, created if missing, with its
    /// `0.0.0.0/0` route to `gateway_id`.
    async fn ensure_route_table(
        &self,
        vpc_id: &str,
        gateway_id: &str,
        created: &mut Vec<String>,
    ) -> Result<String, NetworkError> {
        // A VPC created just now has only its main table.
        let tables = if made_here(created, vpc_id) {
            Vec::new()
        } else {
            self.describe_route_tables(
                vpc_id,
                vec![filter("vpc-id", vpc_id), name_filter(ROUTE_TABLE_NAME)],
            )
            .await?
        };
        let table = match tables.into_iter().next() {
            Some(table) => table,
            None => {
                let table = settled(|| {
                    self.client
                        .create_route_table()
                        .vpc_id(vpc_id)
                        .tag_specifications(name_tag(ResourceType::RouteTable, ROUTE_TABLE_NAME))
                        .send()
                })
                .await
                .map_err(|error| NetworkError::CreateRouteTable {
                    vpc_id: vpc_id.to_owned(),
                    region: self.region.clone(),
                    message: sdk_message(&error),
                })?
                .route_table
                .ok_or_else(|| self.answer("CreateRouteTable", "RouteTable"))?;
                let id = table
                    .route_table_id()
                    .ok_or_else(|| self.answer("CreateRouteTable", "RouteTableId"))?;
                tracing::info!(region = %self.region, route_table_id = %id, %vpc_id, "created route table {ROUTE_TABLE_NAME}");
                created.push(id.to_owned());
                table
            }
        };
        let route_table_id = table
            .route_table_id()
            .ok_or_else(|| self.answer("DescribeRouteTables", "RouteTableId"))?
            .to_owned();

        let route = table
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some(DEFAULT_ROUTE));
        let default_route_error = |error: &dyn std::error::Error| NetworkError::DefaultRoute {
            route_table_id: route_table_id.clone(),
            gateway_id: gateway_id.to_owned(),
            region: self.region.clone(),
            message: sdk_message(error),
        };
        match route {
            Some(r) if r.gateway_id() == Some(gateway_id) => {}
            Some(r) => {
                tracing::info!(
                    region = %self.region,
                    %route_table_id,
                    from = r.gateway_id().unwrap_or("another target"),
                    to = %gateway_id,
                    "pointing the default route at the gateway"
                );
                settled(|| {
                    self.client
                        .replace_route()
                        .route_table_id(&route_table_id)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .gateway_id(gateway_id)
                        .send()
                })
                .await
                .map_err(|e| default_route_error(&e))?;
            }
            None => {
                settled(|| {
                    self.client
                        .create_route()
                        .route_table_id(&route_table_id)
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .gateway_id(gateway_id)
                        .send()
                })
                .await
                .map_err(|e| default_route_error(&e))?;
                tracing::info!(region = %self.region, %route_table_id, %gateway_id, "added the default route");
            }
        }
        Ok(route_table_id)
    }

    async fn describe_subnets(
        &self,
        subnets: &str,
        filter: Filter,
    ) -> Result<Vec<aws_sdk_ec2::types::Subnet>, NetworkError> {
        self.client
            .describe_subnets()
            .filters(filter)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|error| NetworkError::DescribeSubnets {
                subnets: subnets.to_owned(),
                region: self.region.clone(),
                message: sdk_message(&error),
            })
    }

    /// The subnets `ids`, in that order; all must exist.
    async fn subnets_by_id(
        &self,
        ids: &[String],
    ) -> Result<Vec<aws_sdk_ec2::types::Subnet>, NetworkError> {
        let mut found = Vec::new();
        // As a filter, an unknown id is simply absent rather than an error,
        // so every missing one can be named.
        for chunk in ids.chunks(VALUES_PER_FILTER) {
            let filter = Filter::builder()
                .name("subnet-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            found.extend(self.describe_subnets(&chunk.join(", "), filter).await?);
        }
        let mut ordered = Vec::new();
        let mut missing = Vec::new();
        for id in ids {
            match found.iter().find(|s| s.subnet_id() == Some(id)) {
                Some(subnet) => ordered.push(subnet.clone()),
                None => missing.push(id.clone()),
            }
        }
        if missing.is_empty() {
            Ok(ordered)
        } else {
            Err(NetworkError::NoSuchSubnets {
                subnet_ids: missing,
                region: self.region.clone(),
            })
        }
    }

    fn subnet_of(&self, subnet: &aws_sdk_ec2::types::Subnet) -> Result<Subnet, NetworkError> {
        let id = subnet
            .subnet_id()
            .ok_or_else(|| self.answer("DescribeSubnets", "SubnetId"))?;
        let cidr = subnet.cidr_block().unwrap_or_default();
        Ok(Subnet {
            id: id.to_owned(),
            availability_zone: subnet
                .availability_zone()
                .ok_or_else(|| self.answer("DescribeSubnets", "AvailabilityZone"))?
                .to_owned(),
            cidr: cidr.parse().map_err(|_| NetworkError::Cidr {
                resource: id.to_owned(),
                cidr: cidr.to_owned(),
            })?,
        })
    }

    /// The VPC's `muster-subnet`s by AZ name, created if the VPC has no
    /// subnets at all, each mapping public IPv4s and (in a `muster-vpc`,
    /// where `route_table_id` is given) associated with the route table.
    async fn muster_subnets(
        &self,
        vpc: &aws_sdk_ec2::types::Vpc,
        route_table_id: Option<&str>,
        created: &mut Vec<String>,
    ) -> Result<Vec<Subnet>, NetworkError> {
        let vpc_id = vpc.vpc_id().unwrap_or_default();
        // A VPC created just now has no subnets.
        let all = if made_here(created, vpc_id) {
            Vec::new()
        } else {
            self.describe_subnets(&format!("of {vpc_id}"), filter("vpc-id", vpc_id))
                .await?
        };
        let mut subnets: Vec<_> = all
            .iter()
            .filter(|s| has_name(s.tags(), SUBNET_NAME))
            .cloned()
            .collect();
        if subnets.is_empty() {
            if !all.is_empty() {
                return Err(NetworkError::UnnamedSubnets {
                    vpc_id: vpc_id.to_owned(),
                });
            }
            subnets = self.create_subnets(vpc, created).await?;
        }

        let managed = route_table_id.is_some();
        for subnet in &subnets {
            let id = subnet.subnet_id().unwrap_or_default();
            let ours = made_here(created, id);
            if (ours || managed) && subnet.map_public_ip_on_launch() != Some(true) {
                settled(|| {
                    self.client
                        .modify_subnet_attribute()
                        .subnet_id(id)
                        .map_public_ip_on_launch(
                            AttributeBooleanValue::builder().value(true).build(),
                        )
                        .send()
                })
                .await
                .map_err(|error| NetworkError::MapPublicIp {
                    subnet_id: id.to_owned(),
                    region: self.region.clone(),
                    message: sdk_message(&error),
                })?;
                tracing::info!(region = %self.region, subnet_id = %id, "subnet maps public IPv4s on launch");
            }
        }

        if let Some(route_table_id) = route_table_id {
            // A subnet has at most one explicit association; one the user
            // made to another table is theirs to keep. Subnets created just
            // now have none yet, so only found ones need the look.
            let all_new = subnets
                .iter()
                .all(|s| made_here(created, s.subnet_id().unwrap_or_default()));
            let associated: BTreeSet<String> = if all_new {
                BTreeSet::new()
            } else {
                self.describe_route_tables(vpc_id, vec![filter("vpc-id", vpc_id)])
                    .await?
                    .iter()
                    .flat_map(|t| t.associations())
                    .filter_map(|a| a.subnet_id())
                    .map(str::to_owned)
                    .collect()
            };
            for subnet in &subnets {
                let id = subnet.subnet_id().unwrap_or_default();
                if associated.contains(id) {
                    continue;
                }
                let association = settled(|| {
                    self.client
                        .associate_route_table()
                        .route_table_id(route_table_id)
                        .subnet_id(id)
                        .send()
                })
                .await
                .map_err(|error| NetworkError::AssociateRouteTable {
                    route_table_id: route_table_id.to_owned(),
                    subnet_id: id.to_owned(),
                    region: self.region.clone(),
                    message: sdk_message(&error),
                })?;
                let association_id = association
                    .association_id()
                    .ok_or_else(|| self.answer("AssociateRouteTable", "AssociationId"))?;
                tracing::info!(region = %self.region, %route_table_id, subnet_id = %id, "associated route table");
                created.push(association_id.to_owned());
            }
        }

        let mut subnets = subnets
            .iter()
            .map(|s| self.subnet_of(s))
            .collect::<Result<Vec<_>, _>>()?;
        subnets.sort_by(|a, b| (&a.availability_zone, &a.id).cmp(&(&b.availability_zone, &b.id)));
        Ok(subnets)
    }

    /// The region's available AZs, by name.
    async fn availability_zones(&self) -> Result<Vec<String>, NetworkError> {
        let answer = self
            .client
            .describe_availability_zones()
            .filters(filter("state", "available"))
            // Local and Wavelength Zones are listed once opted in; a subnet
            // per AZ means the region's own AZs.
            .filters(filter("zone-type", "availability-zone"))
            .send()
            .await
            .map_err(|error| NetworkError::DescribeAvailabilityZones {
                region: self.region.clone(),
                message: sdk_message(&error),
            })?;
        let mut zones: Vec<String> = answer
            .availability_zones()
            .iter()
            .filter_map(|z| z.zone_name())
            .map(str::to_owned)
            .collect();
        zones.sort();
        zones.dedup();
        Ok(zones)
    }

    /// One `muster-subnet` per available AZ, in the VPC's first blocks.
    async fn create_subnets(
        &self,
        vpc: &aws_sdk_ec2::types::Vpc,
        created: &mut Vec<String>,
    ) -> Result<Vec<aws_sdk_ec2::types::Subnet>, NetworkError> {
        let vpc_id = vpc.vpc_id().unwrap_or_default();
        let text = vpc.cidr_block().unwrap_or_default();
        let vpc_cidr: Ipv4Cidr = text.parse().map_err(|_| NetworkError::Cidr {
            resource: vpc_id.to_owned(),
            cidr: text.to_owned(),
        })?;
        let zones = self.availability_zones().await?;
        if zones.is_empty() {
            return Err(NetworkError::NoAvailabilityZones {
                region: self.region.clone(),
            });
        }
        let blocks =
            subnet_blocks(vpc_cidr, zones.len()).ok_or_else(|| NetworkError::VpcTooSmall {
                vpc_id: vpc_id.to_owned(),
                cidr: vpc_cidr,
                blocks: zones.len() + 1,
            })?;

        let mut subnets = Vec::new();
        for (zone, block) in zones.iter().zip(&blocks) {
            let subnet = settled(|| {
                self.client
                    .create_subnet()
                    .vpc_id(vpc_id)
                    .cidr_block(block.to_string())
                    .availability_zone(zone)
                    .tag_specifications(name_tag(ResourceType::Subnet, SUBNET_NAME))
                    .send()
            })
            .await
            .map_err(|error| NetworkError::CreateSubnet {
                cidr: *block,
                availability_zone: zone.clone(),
                vpc_id: vpc_id.to_owned(),
                region: self.region.clone(),
                message: sdk_message(&error),
            })?
            .subnet
            .ok_or_else(|| self.answer("CreateSubnet", "Subnet"))?;
            let id = subnet
                .subnet_id()
                .ok_or_else(|| self.answer("CreateSubnet", "SubnetId"))?;
            tracing::info!(region = %self.region, subnet_id = %id, %vpc_id, availability_zone = %zone, cidr = %block, "created subnet {SUBNET_NAME}");
            created.push(id.to_owned());
            subnets.push(subnet);
        }
        let free: Vec<String> = blocks[zones.len()..]
            .iter()
            .map(|b| b.to_string())
            .collect();
        tracing::info!(region = %self.region, %vpc_id, free = %free.join(" "), "blocks left for other subnets");
        Ok(subnets)
    }

    /// Dry-runs the request in each subnet: the ones it would launch in,
    /// and the others with EC2's reason.
    async fn dry_run(
        &self,
        candidates: Vec<Subnet>,
        request: &NetworkRequest,
    ) -> Result<(Vec<Subnet>, Vec<(String, String)>), NetworkError> {
        let mut usable = Vec::new();
        let mut excluded = Vec::new();
        for subnet in candidates {
            let answer = settled(|| {
                self.client
                    .run_instances()
                    .dry_run(true)
                    .image_id(&request.image_id)
                    .instance_type(InstanceType::from(request.instance_type.as_str()))
                    .subnet_id(&subnet.id)
                    .min_count(1)
                    .max_count(1)
                    .send()
            })
            .await;
            match answer {
                Err(error) if error.code() == Some("DryRunOperation") => usable.push(subnet),
                Err(error) => match error.code() {
                    Some(code) => {
                        let reason = format!("{code}: {}", error.message().unwrap_or("no message"));
                        tracing::warn!(
                            region = %self.region,
                            subnet_id = %subnet.id,
                            availability_zone = %subnet.availability_zone,
                            %reason,
                            "subnet excluded: the dry run failed"
                        );
                        excluded.push((subnet.id, reason));
                    }
                    None => {
                        return Err(NetworkError::DryRun {
                            subnet_id: subnet.id,
                            instance_type: request.instance_type.clone(),
                            region: self.region.clone(),
                            message: sdk_message(&error),
                        })
                    }
                },
                Ok(launched) => {
                    return Err(NetworkError::DryRunLaunched {
                        subnet_id: subnet.id,
                        instance_ids: launched
                            .instances()
                            .iter()
                            .filter_map(|i| i.instance_id())
                            .map(str::to_owned)
                            .collect(),
                        region: self.region.clone(),
                    })
                }
            }
        }
        Ok((usable, excluded))
    }
}

/// Whether `id` names a resource this call created. Such a resource is
/// known without a look: a VPC created just now has no gateway, no table
/// but its main one, no subnets; a new subnet has no table association.
/// Skipping those looks keeps a launch in a fresh region to a few calls
/// per AZ.
fn made_here(created: &[String], id: &str) -> bool {
    !id.is_empty() && created.iter().any(|c| c == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(text: &str) -> Ipv4Cidr {
        text.parse().unwrap()
    }

    fn texts(blocks: &[Ipv4Cidr]) -> Vec<String> {
        blocks.iter().map(|b| b.to_string()).collect()
    }

    /// The default VPC over six AZs: eight /19s, in address order.
    #[test]
    fn six_zones_get_eight_nineteens() {
        let blocks = subnet_blocks(DEFAULT_VPC_CIDR, 6).unwrap();
        assert_eq!(
            texts(&blocks),
            [
                "10.77.0.0/19",
                "10.77.32.0/19",
                "10.77.64.0/19",
                "10.77.96.0/19",
                "10.77.128.0/19",
                "10.77.160.0/19",
                "10.77.192.0/19",
                "10.77.224.0/19",
            ]
        );
    }

    /// The block count is the power of two at or above #AZs + 1.
    #[test]
    fn block_count_rounds_zones_plus_one_up() {
        let vpc = cidr("10.0.0.0/16");
        let count = |zones| subnet_blocks(vpc, zones).unwrap().len();
        assert_eq!(count(0), 1);
        assert_eq!(count(1), 2);
        assert_eq!(count(2), 4);
        assert_eq!(count(3), 4);
        assert_eq!(count(4), 8);
        assert_eq!(count(7), 8);
        assert_eq!(count(8), 16);
        assert_eq!(subnet_blocks(vpc, 3).unwrap()[3], cidr("10.0.192.0/18"));
    }

    /// Blocks never go below /28, EC2's smallest subnet.
    #[test]
    fn small_vpcs_run_out_at_slash_28() {
        assert_eq!(
            texts(&subnet_blocks(cidr("10.0.0.0/26"), 3).unwrap()),
            [
                "10.0.0.0/28",
                "10.0.0.16/28",
                "10.0.0.32/28",
                "10.0.0.48/28"
            ]
        );
        assert_eq!(subnet_blocks(cidr("10.0.0.0/26"), 4), None);
        assert_eq!(subnet_blocks(cidr("10.0.0.0/28"), 1), None);
        assert_eq!(subnet_blocks(cidr("10.0.0.0/16"), usize::MAX), None);
    }

    /// CIDRs parse strictly and print back the same.
    #[test]
    fn cidr_text_round_trips_and_rejects_junk() {
        for text in ["10.77.0.0/16", "0.0.0.0/0", "10.1.2.3/32", "192.168.4.0/22"] {
            assert_eq!(cidr(text).to_string(), text);
        }
        for bad in [
            "10.77.0.1/16",
            "10.77.0.0/33",
            "10.77.0.0",
            "10.77.0.0/",
            "10.77.0.0/+8",
            "x/16",
            "10.77.0/16",
            " 10.77.0.0/16",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            Ipv4Cidr::new(Ipv4Addr::new(10, 77, 9, 9), 16),
            Some(DEFAULT_VPC_CIDR)
        );
        assert_eq!(Ipv4Cidr::new(Ipv4Addr::new(10, 77, 9, 9), 33), None);
    }

    /// Containment and overlap compare whole blocks.
    #[test]
    fn containment() {
        let vpc = DEFAULT_VPC_CIDR;
        assert!(vpc.contains(&cidr("10.77.32.0/19")));
        assert!(vpc.contains(&vpc));
        assert!(!vpc.contains(&cidr("10.78.0.0/19")));
        assert!(!vpc.contains(&cidr("10.0.0.0/8")));
        assert!(vpc.overlaps(&cidr("10.0.0.0/8")));
        assert!(!cidr("10.77.0.0/19").overlaps(&cidr("10.77.32.0/19")));
        assert!(cidr("0.0.0.0/0").contains(&vpc));
        assert_eq!(vpc.size(), 65536);
        assert_eq!(cidr("0.0.0.0/0").size(), 1 << 32);
    }

    /// Subnets named without a VPC must share one.
    #[test]
    fn given_subnets_name_one_vpc() {
        let subnet = |id: &str, vpc: &str| {
            aws_sdk_ec2::types::Subnet::builder()
                .subnet_id(id)
                .vpc_id(vpc)
                .build()
        };
        assert_eq!(
            one_vpc(&[subnet("subnet-a", "vpc-1"), subnet("subnet-b", "vpc-1")]).unwrap(),
            "vpc-1"
        );
        let error = one_vpc(&[subnet("subnet-a", "vpc-1"), subnet("subnet-b", "vpc-2")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("vpc-1, vpc-2"), "{error}");
    }

    /// Only `Name` tags with the exact value count.
    #[test]
    fn names_are_exact() {
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        assert!(has_name(
            &[tag("env", "x"), tag("Name", "muster-vpc")],
            VPC_NAME
        ));
        assert!(!has_name(&[tag("Name", "muster-vpc-2")], VPC_NAME));
        assert!(!has_name(&[tag("name", "muster-vpc")], VPC_NAME));
    }

    proptest! {
        /// The blocks are at least #AZs + 1, as few as can be, equal,
        /// disjoint, inside the VPC and together the whole of it.
        #[test]
        fn blocks_tile_the_vpc(
            address in any::<u32>(),
            prefix in 8u8..=28,
            zones in 0usize..100,
        ) {
            let vpc = Ipv4Cidr::new(Ipv4Addr::from_bits(address), prefix).unwrap();
            match subnet_blocks(vpc, zones) {
                None => {
                    let needed = (zones + 1).next_power_of_two().trailing_zeros();
                    prop_assert!(u32::from(prefix) + needed > u32::from(SMALLEST_SUBNET_PREFIX));
                }
                Some(blocks) => {
                    prop_assert!(blocks.len() > zones);
                    prop_assert!(blocks.len().is_power_of_two());
                    prop_assert!(blocks.len() / 2 < zones + 1, "not the fewest");
                    prop_assert!(blocks[0].prefix() <= SMALLEST_SUBNET_PREFIX);
                    for block in &blocks {
                        prop_assert!(vpc.contains(block));
                        prop_assert_eq!(block.prefix(), blocks[0].prefix());
                    }
                    for (i, a) in blocks.iter().enumerate() {
                        for b in &blocks[i + 1..] {
                            prop_assert!(!a.overlaps(b), "{} overlaps {}", a, b);
                        }
                    }
                    for pair in blocks.windows(2) {
                        prop_assert_eq!(
                            u64::from(pair[0].network().to_bits()) + pair[0].size(),
                            u64::from(pair[1].network().to_bits())
                        );
                    }
                    let total: u64 = blocks.iter().map(Ipv4Cidr::size).sum();
                    prop_assert_eq!(total, vpc.size());
                }
            }
        }

        /// Any block prints as text that parses back to it.
        #[test]
        fn cidr_display_parses_back(address in any::<u32>(), prefix in 0u8..=32) {
            let block = Ipv4Cidr::new(Ipv4Addr::from_bits(address), prefix).unwrap();
            prop_assert_eq!(block.to_string().parse::<Ipv4Cidr>(), Ok(block));
        }
    }
}
