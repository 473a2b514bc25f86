//! Who may reach a cluster's nodes: its security group (every port from
//! the cluster's own nodes, SSH from the operator's `admin_cidr` if one was
//! given) and the key pair made for it, whose private key is kept in the
//! data dir.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};
use aws_sdk_ec2::Client;
use muster_proto::fsutil::write_durably;
use muster_proto::launch::LaunchSpec;

use super::{random_hex, LaunchError, Launcher};
use crate::ec2::{filter, settled, tag_value, TAG_CLUSTER};

impl Launcher {
    /// The cluster's security group `muster-CLUSTER` in `vpc_id`, found
    /// (it must carry the cluster's tag) or created, with its rules.
    pub(super) async fn ensure_security_group(
        &self,
        client: &Client,
        region: &str,
        vpc_id: &str,
        cluster: &str,
        spec: &LaunchSpec,
    ) -> Result<String, LaunchError> {
        let name = format!("muster-{cluster}");
        let id = self
            .find_or_create_security_group(client, region, vpc_id, cluster, &name)
            .await?;
        for rule in ingress_rules(&id, spec.admin_cidr.as_deref()) {
            let answer = settled(|| {
                client
                    .authorize_security_group_ingress()
                    .group_id(&id)
                    .ip_permissions(rule.clone())
                    .send()
            })
            .await;
            match answer {
                Ok(_) => {}
                // Set by an earlier create of this cluster.
                Err(e) if e.code() == Some("InvalidPermission.Duplicate") => {}
                Err(e) => {
                    let error =
                        Self::ec2_error(format!("adding rules to security group {id}"), region, &e);
                    self.delete_security_group(region, &id, Duration::ZERO)
                        .await
                        .ok();
                    return Err(error);
                }
            }
        }
        tracing::info!(%region, %vpc_id, security_group = %id, %name, "security group ready");
        Ok(id)
    }

    /// The id of group `name` in `vpc_id`: an existing one must carry
    /// `cluster`'s tag (else it is someone else's); a missing one is made.
    async fn find_or_create_security_group(
        &self,
        client: &Client,
        region: &str,
        vpc_id: &str,
        cluster: &str,
        name: &str,
    ) -> Result<String, LaunchError> {
        let found = client
            .describe_security_groups()
            .filters(filter("vpc-id", vpc_id))
            .filters(filter("group-name", name))
            .send()
            .await
            .map_err(|e| {
                Self::ec2_error(format!("describing security group {name}"), region, &e)
            })?;
        if let Some(group) = found.security_groups().first() {
            let ours = tag_value(group.tags(), TAG_CLUSTER) == Some(cluster);
            if !ours {
                return Err(LaunchError::SecurityGroupTaken {
                    name: name.to_owned(),
                    vpc_id: vpc_id.to_owned(),
                    cluster: cluster.to_owned(),
                });
            }
            return Ok(group.group_id().unwrap_or_default().to_owned());
        }
        Ok(client
            .create_security_group()
            .group_name(name)
            .description(format!("muster cluster {cluster}"))
            .vpc_id(vpc_id)
            .tag_specifications(self.cluster_tags(ResourceType::SecurityGroup, name, cluster))
            .send()
            .await
            .map_err(|e| Self::ec2_error(format!("creating security group {name}"), region, &e))?
            .group_id()
            .unwrap_or_default()
            .to_owned())
    }

    pub(super) async fn delete_security_group(
        &self,
        region: &str,
        group_id: &str,
        patience: Duration,
    ) -> Result<(), LaunchError> {
        let client = self.clients.client(region);
        let deadline = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_secs(1);
        loop {
            match client
                .delete_security_group()
                .group_id(group_id)
                .send()
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Some("InvalidGroup.NotFound") => return Ok(()),
                Err(e)
                    if e.code() == Some("DependencyViolation")
                        && tokio::time::Instant::now() + wait < deadline =>
                {
                    tracing::debug!(%region, %group_id, "security group still in use; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(15));
                }
                Err(e) => {
                    return Err(Self::ec2_error(
                        format!("deleting security group {group_id}"),
                        region,
                        &e,
                    ))
                }
            }
        }
    }

    pub(super) async fn create_key_pair(
        &self,
        client: &Client,
        region: &str,
        cluster: &str,
    ) -> Result<(String, PathBuf), LaunchError> {
        let name = format!("muster-{cluster}-{}", random_hex(4));
        let created = client
            .create_key_pair()
            .key_name(&name)
            .tag_specifications(self.cluster_tags(ResourceType::KeyPair, &name, cluster))
            .send()
            .await
            .map_err(|e| Self::ec2_error(format!("creating key pair {name}"), region, &e))?;
        let path = self.keys_dir.join(format!("{name}.pem"));
        let written = std::fs::create_dir_all(&self.keys_dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                write_durably(
                    &path,
                    created.key_material().unwrap_or_default().as_bytes(),
                    0o600,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(message) = written {
            client.delete_key_pair().key_name(&name).send().await.ok();
            return Err(LaunchError::KeyFile {
                path: path.display().to_string(),
                message,
            });
        }
        tracing::info!(%region, key_pair = %name, path = %path.display(), "key pair made");
        Ok((name, path))
    }
}

/// The group's rules: every TCP port from the cluster's own nodes, and SSH
/// from `admin_cidr` if one was given.
fn ingress_rules(group_id: &str, admin_cidr: Option<&str>) -> Vec<IpPermission> {
    let mut rules = vec![IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(0)
        .to_port(65535)
        .user_id_group_pairs(
            UserIdGroupPair::builder()
                .group_id(group_id)
                .description("muster: nodes of the cluster")
                .build(),
        )
        .build()];
    if let Some(cidr) = admin_cidr {
        rules.push(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(
                    IpRange::builder()
                        .cidr_ip(cidr)
                        .description("muster: admin SSH")
                        .build(),
                )
                .build(),
        );
    }
    rules
}
