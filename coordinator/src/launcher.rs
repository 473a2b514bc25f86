//! Launching and removing a cluster's instances on EC2: the network, the
//! security group and key pair, RunInstances, and the release of what was
//! made once the instances are gone.
//!
//! # Layout
//! This file prepares, launches and releases. Beneath it: [`network`]
//! (the VPC, gateway, route table and subnets), [`placement`] (which
//! subnet each node goes to), `access` (the security group and key pair),
//! [`userdata`] (the `#cloud-config` nodes boot with), [`agent_dist`] (the
//! agent served to booting nodes), [`credentials`] (`check-credentials`)
//! and [`owned`] (what this coordinator made, read back by its tag).
//!
//! # What a launch does
//! [`Launcher::prepare`] gets a cluster ready to launch into:
//! 1. the network, found or created by [`network::ensure_network`]
//!    (and dry-run per subnet);
//! 2. a security group `muster-NAME` in that VPC, unless security groups
//!    were given: all TCP between its members, and 22/tcp from the
//!    `admin_cidr` if one was given (no SSH rule otherwise). One left
//!    behind by an earlier create that failed, tagged for this cluster, is
//!    used again; one of that name not tagged so is an error;
//! 3. a key pair `muster-NAME-<8 hex>`, unless `key_name` was given, whose
//!    private key is written 0600 to `<data dir>/keys/<key name>.pem`.
//!
//! If a step fails, what the earlier steps of this call made for the
//! cluster (security group, key pair) is deleted again; the shared network
//! stays.
//!
//! [`Launcher::launch`] places nodes with [`placement::place`] and
//! makes one RunInstances per subnet per wave, MinCount = MaxCount = the
//! subnet's share (all or nothing: EC2 refuses the call rather than launch
//! part of it), each instance with a gp2 data volume at `/dev/sdf`
//! (DeleteOnTermination), the cluster's security groups, key pair and
//! instance profile, and the user data. Instance and volume are tagged
//! `Name=muster-NAME`, `muster:cluster=NAME` and `muster:managed=true` as
//! they are created. A subnet that answers `InsufficientInstanceCapacity`,
//! `Unsupported` or `InsufficientFreeAddressesInSubnet`, or launches fewer
//! than asked, is dropped and the rest are placed again over the others.
//! Any other error ends the launch: if nothing was launched it is the
//! answer, otherwise what was launched is kept and the error reported.
//!
//! No call is made per node. A node's name is its instance id, so the
//! console's instance id column already names it, and its DNS name is
//! `<instance id>.<cluster>.<zone>`; the `Name` tag names the cluster, as
//! RunInstances' tags are the same for every instance of a call. Tagging
//! each instance with its own name would take one CreateTags per node and
//! make a launch's EC2 calls grow with the count (BENCHMARKS.md, P6) rather
//! than with the subnets.
//!
//! Every RunInstances carries a fresh ClientToken, so a retry of a call
//! whose answer was lost launches nothing twice.
//!
//! [`Launcher::release`] undoes `prepare` once the instances are gone: it
//! deletes the security group (retrying while EC2 says it is still in use,
//! as it does until the instances' network interfaces are gone) and the key
//! pair muster made, with its key file.

mod access;
pub mod agent_dist;
pub mod credentials;
pub mod network;
pub mod owned;
pub mod placement;
pub mod userdata;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, IamInstanceProfileSpecification, InstanceType,
    ResourceType, Tag, TagSpecification, VolumeType,
};
use aws_sdk_ec2::Client;
use base64::Engine as _;
use muster_proto::cidr::Ipv4Cidr;
use muster_proto::launch::{LaunchSpec, LaunchView, SubnetProblem};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::ec2::{
    describe_error, sdk_message, Ec2Clients, TAG_CLUSTER, TAG_COORDINATOR, TAG_LAUNCH, TAG_MANAGED,
};
use crate::store::LaunchedInstance;
use network::{ensure_network, NetworkRequest, DEFAULT_VPC_CIDR};
use placement::place;

/// The device name of every node's data volume.
pub const DATA_DEVICE: &str = "/dev/sdf";

/// EC2 answers that say a subnet cannot take (more) instances now; the
/// launch moves on to the other subnets.
const SUBNET_REFUSALS: &[&str] = &[
    "InsufficientInstanceCapacity",
    "Unsupported",
    "InsufficientFreeAddressesInSubnet",
];

/// How long [`Launcher::release`] keeps trying to delete a security group
/// EC2 says is still in use.
const RELEASE_PATIENCE: Duration = Duration::from_secs(300);

/// What a launched cluster launches with: the spec it was created with
/// (its count kept up to date by scaling) and what `prepare` found or
/// made. Stored as JSON with the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLaunch {
    /// The spec; `count` is the size the cluster is meant to have.
    pub spec: LaunchSpec,
    /// The VPC.
    pub vpc_id: String,
    /// The subnets to launch in, in order of preference.
    pub subnets: Vec<String>,
    /// Subnets left out by the dry run, with EC2's answer.
    pub excluded: Vec<SubnetProblem>,
    /// The security groups instances launch with.
    pub security_groups: Vec<String>,
    /// The security group muster made, to delete with the cluster.
    pub created_security_group: Option<String>,
    /// The key pair instances launch with.
    pub key_name: String,
    /// Whether muster made the key pair (and so deletes it).
    pub created_key_pair: bool,
    /// Where the private key of a key pair muster made is.
    pub key_path: Option<PathBuf>,
}

impl ClusterLaunch {
    /// What `cluster show` shows of it.
    pub fn view(&self) -> LaunchView {
        LaunchView {
            region: self.spec.region.clone(),
            instance_type: self.spec.instance_type.clone(),
            count: self.spec.count,
            disk_gb: self.spec.disk_gb,
            ami: self.spec.ami.clone(),
            vpc_id: self.vpc_id.clone(),
            subnets: self.subnets.clone(),
            excluded_subnets: self.excluded.clone(),
            security_groups: self.security_groups.clone(),
            instance_profile: self.spec.instance_profile().map(str::to_owned),
            key_name: self.key_name.clone(),
            key_path: self.key_path.as_ref().map(|p| p.display().to_string()),
        }
    }
}

/// What one launch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wave {
    /// The instances launched.
    pub launched: Vec<LaunchedInstance>,
    /// Subnets that refused part of it, and why.
    pub refused: Vec<SubnetProblem>,
    /// Nodes that could not be launched anywhere.
    pub short: u32,
}

/// Errors launching or releasing.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The network could not be found or made.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// Every subnet failed its dry run.
    #[error("no subnet in {region} can launch {instance_type} from {ami}: {reasons}")]
    NoUsableSubnet {
        /// The region.
        region: String,
        /// The instance type.
        instance_type: String,
        /// The image.
        ami: String,
        /// Each subnet with EC2's answer.
        reasons: String,
    },
    /// A network nodes would launch in overlaps `--trusted-proxies`: a
    /// node there could name any source in `X-Forwarded-For`.
    #[error(
        "{network} ({cidr}) overlaps --trusted-proxies {proxies}: a node launched there could \
         forge X-Forwarded-For and speak from any address; keep the proxies' range apart from \
         the nodes' subnets"
    )]
    TrustedProxyOverlap {
        /// The subnet or VPC, e.g. `subnet subnet-… of vpc-…`.
        network: String,
        /// Its block.
        cidr: Ipv4Cidr,
        /// The trusted proxy range it overlaps.
        proxies: Ipv4Cidr,
    },
    /// A security group of our name exists but is not ours.
    #[error(
        "security group {name} exists in {vpc_id} but is not tagged {TAG_CLUSTER}={cluster}; \
         remove it or name security groups to use"
    )]
    SecurityGroupTaken {
        /// Its name.
        name: String,
        /// The VPC.
        vpc_id: String,
        /// The cluster.
        cluster: String,
    },
    /// An EC2 call failed.
    #[error("{operation} in {region}: {message}")]
    Ec2 {
        /// The call, with what it was about.
        operation: String,
        /// The region.
        region: String,
        /// EC2's error code, if it answered with one.
        code: Option<String>,
        /// The SDK error with its causes.
        message: String,
    },
    /// The private key could not be written.
    #[error("writing the private key to {path}: {message}")]
    KeyFile {
        /// The file.
        path: String,
        /// The cause.
        message: String,
    },
}

impl LaunchError {
    /// No subnet could take `spec`'s instances, each for its reason.
    pub fn no_usable_subnet(spec: &LaunchSpec, problems: &[SubnetProblem]) -> LaunchError {
        LaunchError::NoUsableSubnet {
            region: spec.region.clone(),
            instance_type: spec.instance_type.clone(),
            ami: spec.ami.clone(),
            reasons: if problems.is_empty() {
                "the VPC has no subnet to use".to_owned()
            } else {
                problems
                    .iter()
                    .map(|p| format!("{}: {}", p.subnet, p.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        }
    }

    /// Whether the request, not EC2 or muster, is at fault: EC2 found
    /// something in it invalid (an image or profile that does not exist, a
    /// VPC of the wrong shape), so asking again unchanged will not help.
    pub fn is_bad_request(&self) -> bool {
        use network::NetworkError as N;
        match self {
            LaunchError::Network(error) => matches!(
                error,
                N::NoSuchVpc { .. }
                    | N::NoSuchSubnets { .. }
                    | N::SubnetOutsideVpc { .. }
                    | N::SubnetsInManyVpcs { .. }
                    | N::UnnamedSubnets { .. }
            ),
            LaunchError::NoUsableSubnet { .. }
            | LaunchError::SecurityGroupTaken { .. }
            | LaunchError::TrustedProxyOverlap { .. } => true,
            LaunchError::Ec2 { code, .. } => code.as_deref().is_some_and(|c| {
                c.starts_with("Invalid") || c.starts_with("Missing") || c == "Unsupported"
            }),
            LaunchError::KeyFile { .. } => false,
        }
    }
}

/// Launches and removes instances; one per coordinator.
#[derive(Debug, Clone)]
pub struct Launcher {
    clients: Ec2Clients,
    keys_dir: PathBuf,
    /// This coordinator's id, tagged on all it makes.
    coordinator: String,
    /// `--trusted-proxies`, which no subnet nodes launch in may overlap.
    trusted_proxies: Vec<Ipv4Cidr>,
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

impl Launcher {
    /// The tags of everything made for `cluster`: `Name`, the cluster,
    /// `muster:managed` and this coordinator's id.
    fn cluster_tags(&self, resource: ResourceType, name: &str, cluster: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(resource)
            .tags(tag("Name", name))
            .tags(tag(TAG_CLUSTER, cluster))
            .tags(tag(TAG_MANAGED, "true"))
            .tags(tag(TAG_COORDINATOR, &self.coordinator))
            .build()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut random = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut random);
    hex::encode(random)
}

impl Launcher {
    /// A launcher asking EC2 through `clients`, keeping private keys under
    /// `data_dir/keys`, tagging what it makes as coordinator `coordinator`'s.
    pub fn new(clients: Ec2Clients, data_dir: &Path, coordinator: &str) -> Launcher {
        Launcher {
            clients,
            keys_dir: data_dir.join("keys"),
            coordinator: coordinator.to_owned(),
            trusted_proxies: Vec::new(),
        }
    }

    /// Refuses launches into subnets that overlap `proxies`.
    pub fn keeping_apart_from(mut self, proxies: &[Ipv4Cidr]) -> Launcher {
        self.trusted_proxies = proxies.to_vec();
        self
    }

    /// Refuses `network` when it overlaps a trusted proxy range.
    fn apart_from_proxies(&self, network: String, cidr: Ipv4Cidr) -> Result<(), LaunchError> {
        match self.trusted_proxies.iter().find(|p| p.overlaps(&cidr)) {
            Some(proxies) => Err(LaunchError::TrustedProxyOverlap {
                network,
                cidr,
                proxies: *proxies,
            }),
            None => Ok(()),
        }
    }

    fn ec2_error(
        operation: impl Into<String>,
        region: &str,
        error: &(impl std::error::Error + ProvideErrorMetadata),
    ) -> LaunchError {
        LaunchError::Ec2 {
            operation: operation.into(),
            region: region.to_owned(),
            code: error.code().map(str::to_owned),
            message: sdk_message(error),
        }
    }

    /// Finds or makes the network, the security group and the key pair of
    /// cluster `cluster`, as the module doc says.
    pub async fn prepare(
        &self,
        cluster: &str,
        spec: &LaunchSpec,
    ) -> Result<ClusterLaunch, LaunchError> {
        let region = spec.region.as_str();
        let client = self.clients.client(region);
        if spec.vpc_id().is_none() && spec.subnets().is_empty() {
            // Checked before the VPC muster makes is made.
            self.apart_from_proxies("the VPC muster makes".to_owned(), DEFAULT_VPC_CIDR)?;
        }
        let network = ensure_network(
            &client,
            &NetworkRequest {
                vpc_id: spec.vpc_id().map(str::to_owned),
                subnet_ids: spec.subnets().to_vec(),
                instance_type: spec.instance_type.clone(),
                image_id: spec.ami.clone(),
            },
        )
        .await?;
        let excluded: Vec<SubnetProblem> = network
            .excluded
            .iter()
            .map(|(subnet, reason)| SubnetProblem {
                subnet: subnet.clone(),
                reason: reason.clone(),
            })
            .collect();
        if network.subnets.is_empty() {
            return Err(LaunchError::no_usable_subnet(spec, &excluded));
        }
        for subnet in &network.subnets {
            let what = format!("subnet {} of {}", subnet.id, network.vpc_id);
            self.apart_from_proxies(what, subnet.cidr)?;
        }

        let (security_groups, created_security_group) = if spec.security_groups().is_empty() {
            let id = self
                .ensure_security_group(&client, region, &network.vpc_id, cluster, spec)
                .await?;
            (vec![id.clone()], Some(id))
        } else {
            (spec.security_groups().to_vec(), None)
        };

        let mut launch = ClusterLaunch {
            spec: spec.clone(),
            vpc_id: network.vpc_id.clone(),
            subnets: network.subnet_ids(),
            excluded,
            security_groups,
            created_security_group,
            key_name: String::new(),
            created_key_pair: false,
            key_path: None,
        };
        match &spec.key_name {
            Some(name) => launch.key_name = name.clone(),
            None => match self.create_key_pair(&client, region, cluster).await {
                Ok((name, path)) => {
                    launch.key_name = name;
                    launch.created_key_pair = true;
                    launch.key_path = Some(path);
                }
                Err(error) => {
                    self.release(&launch).await.ok();
                    return Err(error);
                }
            },
        }
        Ok(launch)
    }

    /// Launches `count` instances of `cluster` over its subnets, given how
    /// many it has in each already, with `user_data`. See the module doc.
    pub async fn launch(
        &self,
        (cluster, job): (&str, &str),
        launch: &ClusterLaunch,
        existing: &BTreeMap<String, usize>,
        count: u32,
        user_data: &[u8],
    ) -> Result<Wave, LaunchError> {
        let region = launch.spec.region.as_str();
        let client = self.clients.client(region);
        let user_data = base64::engine::general_purpose::STANDARD.encode(user_data);
        let mut existing = existing.clone();
        let mut usable = launch.subnets.clone();
        let mut wave = Wave::default();
        let mut remaining = count as usize;
        while remaining > 0 && !usable.is_empty() {
            let share = place(&existing, &usable, remaining);
            let mut refused = Vec::new();
            for subnet in usable.clone() {
                let Some(&asked) = share.get(&subnet) else {
                    continue;
                };
                match self
                    .run(&client, (cluster, job), launch, &subnet, asked, &user_data)
                    .await
                {
                    Ok(instances) => {
                        let got = instances.len();
                        *existing.entry(subnet.clone()).or_default() += got;
                        remaining = remaining.saturating_sub(got);
                        wave.launched.extend(instances);
                        if got < asked {
                            refused.push(SubnetProblem {
                                subnet,
                                reason: format!("EC2 launched {got} of {asked}"),
                            });
                        }
                    }
                    Err(error)
                        if error
                            .code()
                            .is_some_and(|code| SUBNET_REFUSALS.contains(&code)) =>
                    {
                        let reason = describe_error(&error);
                        tracing::warn!(%region, %subnet, %reason, "subnet refused the launch; placing elsewhere");
                        refused.push(SubnetProblem { subnet, reason });
                    }
                    Err(error) => {
                        let error =
                            Self::ec2_error(format!("launching in {subnet}"), region, &error);
                        if wave.launched.is_empty() {
                            return Err(error);
                        }
                        tracing::error!(%error, "launch stopped partway");
                        wave.refused.push(SubnetProblem {
                            subnet,
                            reason: error.to_string(),
                        });
                        wave.short = remaining as u32;
                        return Ok(wave);
                    }
                }
            }
            usable.retain(|s| !refused.iter().any(|r| &r.subnet == s));
            wave.refused.extend(refused);
        }
        wave.short = remaining as u32;
        Ok(wave)
    }

    /// One RunInstances: `count` instances in `subnet`. Returns them.
    async fn run(
        &self,
        client: &Client,
        (cluster, job): (&str, &str),
        launch: &ClusterLaunch,
        subnet: &str,
        count: usize,
        user_data: &str,
    ) -> Result<
        Vec<LaunchedInstance>,
        aws_sdk_ec2::error::SdkError<aws_sdk_ec2::operation::run_instances::RunInstancesError>,
    > {
        let spec = &launch.spec;
        let name = format!("muster-{cluster}");
        let mut call = client
            .run_instances()
            .image_id(&spec.ami)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(i32::try_from(count).unwrap_or(i32::MAX))
            .max_count(i32::try_from(count).unwrap_or(i32::MAX))
            .subnet_id(subnet)
            .set_security_group_ids(Some(launch.security_groups.clone()))
            .key_name(&launch.key_name)
            .user_data(user_data)
            .client_token(random_hex(16))
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(DATA_DEVICE)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(i32::try_from(spec.disk_gb).unwrap_or(i32::MAX))
                            .volume_type(VolumeType::Gp2)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(self.instance_tags(&name, (cluster, job)))
            .tag_specifications(self.cluster_tags(ResourceType::Volume, &name, cluster));
        if let Some(profile) = spec.instance_profile() {
            call = call.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build(),
            );
        }
        let output = call.send().await?;
        let launched: Vec<LaunchedInstance> = output
            .instances()
            .iter()
            .filter_map(|i| {
                Some(LaunchedInstance {
                    instance_id: i.instance_id()?.to_owned(),
                    subnet_id: i.subnet_id().unwrap_or(subnet).to_owned(),
                    availability_zone: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .unwrap_or_default()
                        .to_owned(),
                    private_ipv4: i
                        .private_ip_address()
                        .and_then(|ip| ip.parse::<Ipv4Addr>().ok()),
                })
            })
            .collect();
        tracing::info!(
            region = %spec.region,
            %subnet,
            asked = count,
            launched = launched.len(),
            "instances launched"
        );
        Ok(launched)
    }

    /// An instance's tags: the cluster's, and the launch job's.
    fn instance_tags(&self, name: &str, (cluster, job): (&str, &str)) -> TagSpecification {
        let tags = self.cluster_tags(ResourceType::Instance, name, cluster);
        TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(tags.tags().to_vec()))
            .tags(tag(TAG_LAUNCH, job))
            .build()
    }

    /// Deletes what [`Launcher::prepare`] made: the security group and the
    /// key pair with its file. Keeps trying the security group for a while
    /// as long as EC2 says something still uses it.
    pub async fn release(&self, launch: &ClusterLaunch) -> Result<(), LaunchError> {
        let region = launch.spec.region.as_str();
        if let Some(group) = &launch.created_security_group {
            self.delete_security_group(region, group, RELEASE_PATIENCE)
                .await?;
        }
        if launch.created_key_pair {
            self.clients
                .client(region)
                .delete_key_pair()
                .key_name(&launch.key_name)
                .send()
                .await
                .map_err(|e| {
                    Self::ec2_error(format!("deleting key pair {}", launch.key_name), region, &e)
                })?;
            if let Some(path) = &launch.key_path {
                self.remove_key_file(path);
            }
        }
        Ok(())
    }

    /// Deletes a private key's file; one already gone is fine.
    fn remove_key_file(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not delete the key file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_round_trips_as_json() {
        let launch = ClusterLaunch {
            spec: LaunchSpec {
                region: "us-east-1".into(),
                instance_type: "t3.micro".into(),
                count: 2,
                disk_gb: 30,
                ami: "ami-0123abcd".into(),
                provider_options: Default::default(),
                key_name: None,
                admin_cidr: Some("198.51.100.0/24".into()),
                allow_ssh_from_anywhere: false,
            },
            vpc_id: "vpc-0123abcd".into(),
            subnets: vec!["subnet-0123abcd".into()],
            excluded: vec![],
            security_groups: vec!["sg-0123abcd".into()],
            created_security_group: Some("sg-0123abcd".into()),
            key_name: "muster-web-0a1b2c3d".into(),
            created_key_pair: true,
            key_path: Some("/var/lib/muster/keys/muster-web-0a1b2c3d.pem".into()),
        };
        let json = serde_json::to_string(&launch).unwrap();
        assert_eq!(
            serde_json::from_str::<ClusterLaunch>(&json).unwrap(),
            launch
        );
        let view = launch.view();
        assert_eq!(
            view.key_path.as_deref(),
            Some("/var/lib/muster/keys/muster-web-0a1b2c3d.pem")
        );
        assert_eq!(view.count, 2);
    }
}
