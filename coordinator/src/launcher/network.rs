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

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_sdk_ec2::Client;
use muster_proto::cidr::Ipv4Cidr;

use crate::ec2::{filter, sdk_message};

mod subnets;
mod vpc;

/// The `Name` tag of the VPC muster creates and looks for.
pub const VPC_NAME: &str = "muster-vpc";
/// The `Name` tag of the internet gateway of a `muster-vpc`.
pub const GATEWAY_NAME: &str = "muster-gateway";
/// The `Name` tag of the route table of a `muster-vpc`.
pub const ROUTE_TABLE_NAME: &str = "muster-route-table";
/// The `Name` tag of the subnets muster creates and uses.
pub const SUBNET_NAME: &str = "muster-subnet";

/// The CIDR of a VPC muster creates.
pub const DEFAULT_VPC_CIDR: Ipv4Cidr = match Ipv4Cidr::new(Ipv4Addr::new(10, 77, 0, 0), 16) {
    Some(cidr) => cidr,
    None => panic!("10.77.0.0/16 is a CIDR"),
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
    /// [`crate::launcher::placement::place`].
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
    /// An EC2 call failed.
    #[error("{call} {target} in {region}: {message}")]
    Ec2 {
        /// The EC2 action, e.g. `CreateSubnet`.
        call: &'static str,
        /// What it was about, e.g. `10.77.0.0/19 in us-east-1a of vpc-…`.
        target: String,
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
    /// A dry run got no answer from EC2 (network, timeout, unreadable
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

/// The blocks a VPC's CIDR is split into to give `zones` AZs a subnet
/// each and leave room for the user's own: the fewest equal power-of-two
/// blocks that number at least `zones + 1`, all of them, in address order.
/// `None` if they would be smaller than EC2's smallest subnet, a `/28`.
///
/// `10.77.0.0/16` for six AZs is eight `/19`s: six subnets, two blocks free.
pub fn subnet_blocks(vpc: Ipv4Cidr, zones: usize) -> Option<Vec<Ipv4Cidr>> {
    let count = zones.checked_add(1)?.checked_next_power_of_two()?;
    let prefix = u32::from(vpc.prefix()) + count.trailing_zeros();
    if prefix > u32::from(SMALLEST_SUBNET_PREFIX) {
        return None;
    }
    let prefix = u8::try_from(prefix).ok()?;
    let step = 1u64 << (32 - u32::from(prefix));
    let base = u64::from(vpc.network().to_bits());
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

    /// The error of EC2 call `call` about `target` that failed with `error`.
    fn failed(
        &self,
        call: &'static str,
        target: String,
        error: &(impl std::error::Error + ?Sized),
    ) -> NetworkError {
        NetworkError::Ec2 {
            call,
            target,
            region: self.region.clone(),
            message: sdk_message(error),
        }
    }

    fn answer(&self, operation: &'static str, field: &'static str) -> NetworkError {
        NetworkError::Answer {
            operation,
            field,
            region: self.region.clone(),
        }
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
mod tests;
