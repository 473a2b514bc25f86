//! The instance metadata tree as a crawler sees it: every leaf under
//! `meta-data/` that cloud-init's Ec2 datasource reads (host names, the
//! MAC and its `network/interfaces/macs/<mac>/` entries, the block device
//! mapping, services), built from moto's live view of one instance, and
//! the directory listings that lead to them.
//!
//! cloud-init walks the tree from `meta-data/`, fetching each listing and
//! each leaf it names, and renders the guest's network from the MAC's
//! entries, so they must agree with the NIC the guest really has. The
//! [`crate::imds`] emulator answers the leaves the agent reads itself and
//! falls back to this tree for the rest.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::Instance;
use aws_sdk_ec2::Client;

/// Leaves under `meta-data/`, by path, with their values.
pub type Tree = BTreeMap<String, String>;

/// What one lookup in the tree found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A leaf's value.
    Leaf(String),
    /// A directory's listing: one name a line, directories ending in `/`.
    Listing(String),
}

/// The instance's primary network interface, as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// Its MAC address, lower case.
    pub mac: String,
    /// The subnet's CIDR block, e.g. `10.77.1.0/24`.
    pub subnet_cidr: String,
}

/// DescribeInstances for one instance, the SDK's own shape.
async fn instance(ec2: &Client, instance_id: &str) -> anyhow::Result<(Instance, String)> {
    let answer = ec2
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
    answer
        .reservations()
        .iter()
        .find_map(|r| {
            r.instances()
                .iter()
                .find(|i| i.instance_id() == Some(instance_id))
                .map(|i| (i.clone(), r.reservation_id().unwrap_or_default().to_owned()))
        })
        .with_context(|| format!("DescribeInstances did not list {instance_id}"))
}

/// The CIDR block of `subnet_id`.
async fn subnet_cidr(ec2: &Client, subnet_id: &str) -> anyhow::Result<String> {
    let answer = ec2
        .describe_subnets()
        .subnet_ids(subnet_id)
        .send()
        .await
        .map_err(|e| anyhow!("DescribeSubnets {subnet_id}: {}", DisplayErrorContext(&e)))?;
    answer
        .subnets()
        .first()
        .and_then(|s| s.cidr_block())
        .map(str::to_owned)
        .with_context(|| format!("DescribeSubnets did not list {subnet_id}"))
}

/// The primary NIC of the instance: what the guest's NIC and user-mode
/// network must look like for cloud-init to configure it.
pub async fn nic(ec2: &Client, instance_id: &str) -> anyhow::Result<Nic> {
    let (instance, _) = instance(ec2, instance_id).await?;
    let eni = instance
        .network_interfaces()
        .first()
        .with_context(|| format!("{instance_id} has no network interface"))?;
    Ok(Nic {
        mac: eni.mac_address().unwrap_or_default().to_lowercase(),
        subnet_cidr: subnet_cidr(ec2, eni.subnet_id().unwrap_or_default()).await?,
    })
}

/// `ip-10-77-1-4.ec2.internal`, as EC2 names a private address in us-east-1.
fn private_name(ip: &str) -> String {
    format!("ip-{}.ec2.internal", ip.replace('.', "-"))
}

/// The whole tree under `meta-data/` for the instance now.
pub async fn tree(ec2: &Client, instance_id: &str) -> anyhow::Result<Tree> {
    let (instance, reservation) = instance(ec2, instance_id).await?;
    let mut tree = Tree::new();
    let mut put = |path: &str, value: &str| {
        tree.insert(path.to_owned(), value.to_owned());
    };
    let private = instance.private_ip_address().unwrap_or_default();
    let zone = instance
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default();
    put("ami-id", instance.image_id().unwrap_or_default());
    put("ami-launch-index", "0");
    put("instance-id", instance_id);
    put(
        "instance-type",
        instance
            .instance_type()
            .map(|t| t.as_str())
            .unwrap_or_default(),
    );
    put("instance-action", "none");
    put("reservation-id", &reservation);
    put("hostname", &private_name(private));
    put("local-hostname", &private_name(private));
    put("local-ipv4", private);
    put("placement/availability-zone", zone);
    put(
        "placement/region",
        zone.trim_end_matches(|c: char| c.is_ascii_lowercase()),
    );
    put("services/domain", "amazonaws.com");
    put("services/partition", "aws");
    let groups: Vec<&str> = instance
        .security_groups()
        .iter()
        .filter_map(|g| g.group_name())
        .collect();
    put("security-groups", &groups.join("\n"));
    put("block-device-mapping/ami", "/dev/sda1");
    put("block-device-mapping/root", "/dev/sda1");
    for (n, mapping) in instance.block_device_mappings().iter().enumerate() {
        let device = mapping.device_name().unwrap_or_default();
        put(
            &format!("block-device-mapping/ebs{}", n + 1),
            device.trim_start_matches("/dev/"),
        );
    }
    if let Some(public) = instance.public_ip_address() {
        put("public-ipv4", public);
        put(
            "public-hostname",
            &format!("ec2-{}.compute-1.amazonaws.com", public.replace('.', "-")),
        );
    }
    if let Some(eni) = instance.network_interfaces().first() {
        let mac = eni.mac_address().unwrap_or_default().to_lowercase();
        let subnet = eni.subnet_id().unwrap_or_default();
        let cidr = subnet_cidr(ec2, subnet).await?;
        put("mac", &mac);
        let at = |leaf: &str| format!("network/interfaces/macs/{mac}/{leaf}");
        let mut put_nic = |leaf: &str, value: &str| {
            tree.insert(at(leaf), value.to_owned());
        };
        put_nic("device-number", "0");
        put_nic(
            "interface-id",
            eni.network_interface_id().unwrap_or_default(),
        );
        put_nic("local-hostname", &private_name(private));
        put_nic("local-ipv4s", private);
        put_nic("mac", &mac);
        put_nic("owner-id", "123456789012");
        put_nic("subnet-id", subnet);
        put_nic("subnet-ipv4-cidr-block", &cidr);
        put_nic("vpc-id", eni.vpc_id().unwrap_or_default());
        let ids: Vec<&str> = eni.groups().iter().filter_map(|g| g.group_id()).collect();
        put_nic("security-group-ids", &ids.join("\n"));
        if let Some(public) = instance.public_ip_address() {
            put_nic("public-ipv4s", public);
        }
        let ipv6s: Vec<&str> = eni
            .ipv6_addresses()
            .iter()
            .filter_map(|a| a.ipv6_address())
            .collect();
        if !ipv6s.is_empty() {
            put_nic("ipv6s", &ipv6s.join("\n"));
        }
    }
    Ok(tree)
}

/// What `path` (below `meta-data/`, with or without a trailing slash; empty
/// for `meta-data/` itself) names in `tree`: a leaf, a listing, or nothing.
pub fn lookup(tree: &Tree, path: &str) -> Option<Found> {
    let path = path.trim_end_matches('/');
    if let Some(value) = tree.get(path) {
        return Some(Found::Leaf(value.clone()));
    }
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut names: Vec<String> = Vec::new();
    for key in tree.keys() {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let name = match rest.split_once('/') {
            Some((dir, _)) => format!("{dir}/"),
            None => rest.to_owned(),
        };
        if names.last() != Some(&name) && !names.contains(&name) {
            names.push(name);
        }
    }
    (!names.is_empty()).then(|| Found::Listing(names.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listings name leaves and directories (with a slash) once each;
    /// leaves answer their value; unknown paths nothing.
    #[test]
    fn listings_and_leaves() {
        let mut tree = Tree::new();
        tree.insert("instance-id".into(), "i-1".into());
        tree.insert("placement/availability-zone".into(), "us-east-1a".into());
        tree.insert("placement/region".into(), "us-east-1".into());
        tree.insert("network/interfaces/macs/02:00/mac".into(), "02:00".into());
        assert_eq!(
            lookup(&tree, ""),
            Some(Found::Listing("instance-id\nnetwork/\nplacement/".into()))
        );
        assert_eq!(
            lookup(&tree, "placement/"),
            Some(Found::Listing("availability-zone\nregion".into()))
        );
        assert_eq!(
            lookup(&tree, "network/interfaces/macs"),
            Some(Found::Listing("02:00/".into()))
        );
        assert_eq!(
            lookup(&tree, "instance-id"),
            Some(Found::Leaf("i-1".into()))
        );
        assert_eq!(lookup(&tree, "nope"), None);
        assert_eq!(lookup(&tree, "instance-id/x"), None);
    }
}
