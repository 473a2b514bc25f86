//! The wire types of launching nodes on EC2: what `cluster create` asks
//! for, the provider options (shaped like Tutum's `provider_options`), and
//! what a launch, a scale or a credentials check reports back.
//!
//! A cluster created without a [`LaunchSpec`] launches nothing: agents that
//! someone else installed join it with its join token.

use serde::{Deserialize, Serialize};

use crate::cidr::{InvalidCidr, Ipv4Cidr};
use crate::validate::{self, ValidationError};

/// Most nodes one cluster may be asked to hold.
pub const MAX_NODES_PER_CLUSTER: u32 = 1000;

/// Largest gp2 volume EC2 makes, in GiB.
pub const MAX_DISK_GB: u32 = 16_384;

/// Most subnets or security groups one launch may name.
pub const MAX_PROVIDER_IDS: usize = 16;

/// What a cluster's nodes are launched as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchSpec {
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// The instance type, e.g. `t3.micro`.
    pub instance_type: String,
    /// How many nodes to keep launched.
    pub count: u32,
    /// Size of each node's gp2 data volume, GiB.
    pub disk_gb: u32,
    /// The image nodes boot from.
    pub ami: String,
    /// Where nodes go and what they may do.
    #[serde(default)]
    pub provider_options: ProviderOptions,
    /// An existing key pair to launch with; without one a key pair
    /// `muster-NAME-<id>` is made and its private key kept in the data dir.
    #[serde(default)]
    pub key_name: Option<String>,
    /// Who may reach port 22 through the security group muster makes; no
    /// SSH rule without it.
    #[serde(default)]
    pub admin_cidr: Option<String>,
    /// Must be true for `admin_cidr` to be `0.0.0.0/0`.
    #[serde(default)]
    pub allow_ssh_from_anywhere: bool,
}

/// Tutum's `provider_options`: `{vpc: {id, subnets, security_groups}, iam:
/// {instance_profile_name}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderOptions {
    /// The network to use instead of the `muster-vpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<VpcOptions>,
    /// The IAM role nodes run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<IamOptions>,
}

/// A user's own VPC, subnets and security groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcOptions {
    /// `vpc-…`.
    #[serde(default)]
    pub id: Option<String>,
    /// `subnet-…`, only these are used, in this order.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// `sg-…`; given, muster makes no security group of its own.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// The instance profile nodes launch with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamOptions {
    /// The instance profile's name.
    pub instance_profile_name: String,
}

impl LaunchSpec {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::region(&self.region)?;
        validate::instance_type(&self.instance_type)?;
        if self.count > MAX_NODES_PER_CLUSTER {
            return Err(ValidationError::new(
                "count",
                &self.count.to_string(),
                &format!("must be at most {MAX_NODES_PER_CLUSTER}"),
            ));
        }
        if !(1..=MAX_DISK_GB).contains(&self.disk_gb) {
            return Err(ValidationError::new(
                "disk_gb",
                &self.disk_gb.to_string(),
                &format!("must be 1 to {MAX_DISK_GB} (GiB, the gp2 range)"),
            ));
        }
        validate::resource_id("ami", "ami", &self.ami)?;
        if let Some(vpc) = &self.provider_options.vpc {
            if let Some(id) = &vpc.id {
                validate::resource_id("provider_options.vpc.id", "vpc", id)?;
            }
            for (field, prefix, ids) in [
                ("provider_options.vpc.subnets", "subnet", &vpc.subnets),
                (
                    "provider_options.vpc.security_groups",
                    "sg",
                    &vpc.security_groups,
                ),
            ] {
                if ids.len() > MAX_PROVIDER_IDS {
                    return Err(ValidationError::new(
                        field,
                        &ids.join(","),
                        &format!("may name at most {MAX_PROVIDER_IDS}"),
                    ));
                }
                for id in ids {
                    validate::resource_id(field, prefix, id)?;
                }
            }
        }
        if let Some(iam) = &self.provider_options.iam {
            validate::instance_profile_name(&iam.instance_profile_name)?;
        }
        if let Some(key) = &self.key_name {
            validate::key_name(key)?;
        }
        if let Some(cidr) = &self.admin_cidr {
            if !self.security_groups().is_empty() {
                return Err(ValidationError::new(
                    "admin_cidr",
                    cidr,
                    "applies to the security group muster makes, and none is made when \
                     security groups are given",
                ));
            }
            let block: Ipv4Cidr = cidr
                .parse()
                .map_err(|e: InvalidCidr| ValidationError::new("admin_cidr", cidr, &e.reason()))?;
            if block.prefix() == 0 && !self.allow_ssh_from_anywhere {
                return Err(ValidationError::new(
                    "admin_cidr",
                    cidr,
                    "opens SSH to the whole internet; say so with allow_ssh_from_anywhere \
                     (--allow-ssh-from-anywhere) if that is meant",
                ));
            }
        }
        Ok(())
    }

    /// The VPC asked for, if any.
    pub fn vpc_id(&self) -> Option<&str> {
        self.provider_options.vpc.as_ref()?.id.as_deref()
    }

    /// The subnets asked for; empty to let muster choose.
    pub fn subnets(&self) -> &[String] {
        self.provider_options
            .vpc
            .as_ref()
            .map_or(&[], |v| v.subnets.as_slice())
    }

    /// The security groups asked for; empty to have muster make one.
    pub fn security_groups(&self) -> &[String] {
        self.provider_options
            .vpc
            .as_ref()
            .map_or(&[], |v| v.security_groups.as_slice())
    }

    /// The instance profile asked for.
    pub fn instance_profile(&self) -> Option<&str> {
        Some(
            self.provider_options
                .iam
                .as_ref()?
                .instance_profile_name
                .as_str(),
        )
    }
}

/// How a launched cluster's nodes are launched, as `cluster show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchView {
    /// The region.
    pub region: String,
    /// The instance type.
    pub instance_type: String,
    /// How many nodes the cluster is meant to hold.
    pub count: u32,
    /// Data volume size, GiB.
    pub disk_gb: u32,
    /// The image.
    pub ami: String,
    /// The VPC nodes launch in.
    pub vpc_id: String,
    /// The subnets nodes launch in, in order of preference.
    pub subnets: Vec<String>,
    /// Subnets left out, each with EC2's answer to the dry run.
    pub excluded_subnets: Vec<SubnetProblem>,
    /// The security groups nodes launch with.
    pub security_groups: Vec<String>,
    /// The instance profile, if any.
    pub instance_profile: Option<String>,
    /// The key pair nodes launch with.
    pub key_name: String,
    /// Where the private key of a key pair muster made is kept.
    pub key_path: Option<String>,
}

/// A subnet that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetProblem {
    /// `subnet-…`.
    pub subnet: String,
    /// EC2's answer.
    pub reason: String,
}

/// What one launch (cluster create or scale up) did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchReport {
    /// Instances launched, now nodes in `launching`.
    pub launched: Vec<String>,
    /// Subnets that refused part of the launch; what they refused went
    /// elsewhere when another subnet could take it.
    pub refused: Vec<SubnetProblem>,
    /// Nodes asked for that could not be launched anywhere.
    pub short: u32,
}

/// `POST /v1/clusters/{name}/scale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleClusterRequest {
    /// How many nodes the cluster should hold.
    pub count: u32,
}

impl ScaleClusterRequest {
    /// Checks the count.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.count > MAX_NODES_PER_CLUSTER {
            return Err(ValidationError::new(
                "count",
                &self.count.to_string(),
                &format!("must be at most {MAX_NODES_PER_CLUSTER}"),
            ));
        }
        Ok(())
    }
}

/// What `POST /v1/clusters/{name}/scale` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleClusterResponse {
    /// The cluster afterwards.
    pub cluster: crate::ClusterView,
    /// What was launched, when it grew.
    pub launch: LaunchReport,
    /// Nodes being terminated, when it shrank.
    pub removing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            region: "us-east-1".into(),
            instance_type: "t3.micro".into(),
            count: 3,
            disk_gb: 30,
            ami: "ami-0123abcd".into(),
            provider_options: ProviderOptions::default(),
            key_name: None,
            admin_cidr: None,
            allow_ssh_from_anywhere: false,
        }
    }

    #[test]
    fn a_plain_spec_passes() {
        spec().validate().unwrap();
    }

    #[test]
    fn bounds_and_ids_are_checked() {
        let mut s = spec();
        s.count = MAX_NODES_PER_CLUSTER + 1;
        assert_eq!(s.validate().unwrap_err().field, "count");
        let mut s = spec();
        s.disk_gb = 0;
        assert_eq!(s.validate().unwrap_err().field, "disk_gb");
        let mut s = spec();
        s.ami = "i-0123abcd".into();
        assert_eq!(s.validate().unwrap_err().field, "ami");
        let mut s = spec();
        s.provider_options.vpc = Some(VpcOptions {
            id: None,
            subnets: vec!["sg-0123abcd".into()],
            security_groups: vec![],
        });
        assert_eq!(
            s.validate().unwrap_err().field,
            "provider_options.vpc.subnets"
        );
    }

    #[test]
    fn ssh_from_anywhere_must_be_asked_for() {
        let mut s = spec();
        s.admin_cidr = Some("0.0.0.0/0".into());
        let e = s.validate().unwrap_err();
        assert!(e.reason.contains("allow_ssh_from_anywhere"), "{e}");
        s.allow_ssh_from_anywhere = true;
        s.validate().unwrap();
        s.admin_cidr = Some("198.51.100.0/24".into());
        s.allow_ssh_from_anywhere = false;
        s.validate().unwrap();
    }

    #[test]
    fn admin_cidr_needs_our_security_group() {
        let mut s = spec();
        s.admin_cidr = Some("198.51.100.0/24".into());
        s.provider_options.vpc = Some(VpcOptions {
            id: None,
            subnets: vec![],
            security_groups: vec!["sg-0123abcd".into()],
        });
        assert_eq!(s.validate().unwrap_err().field, "admin_cidr");
    }

    #[test]
    fn tutum_shaped_json_parses() {
        let s: LaunchSpec = serde_json::from_str(
            r#"{"region": "us-east-1", "instance_type": "t3.micro", "count": 2,
                "disk_gb": 30, "ami": "ami-0123abcd",
                "provider_options": {"vpc": {"id": "vpc-0123abcd",
                    "subnets": ["subnet-0123abcd"], "security_groups": ["sg-0123abcd"]},
                    "iam": {"instance_profile_name": "nodes"}}}"#,
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.vpc_id(), Some("vpc-0123abcd"));
        assert_eq!(s.instance_profile(), Some("nodes"));
        assert!(serde_json::from_str::<LaunchSpec>(
            r#"{"region": "us-east-1", "instance_type": "t3.micro", "count": 2,
                "disk_gb": 30, "ami": "ami-0123abcd", "colour": "red"}"#
        )
        .is_err());
    }
}
