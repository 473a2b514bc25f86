//! What this coordinator owns in a region, read back from EC2 by its
//! `muster:coordinator` tag: instances (with their cluster and launch
//! job), security groups and key pairs. The registry compares them with
//! the store after a restart and on every sweep
//! (`crate::registry`'s strays); this module only reads and deletes.
//!
//! The tag, not `muster:managed`, decides: another coordinator in the same
//! account tags its own with its own id, and nothing of it is ever listed
//! here.

use std::time::Duration;

use aws_sdk_ec2::types::Filter;

use super::{LaunchError, Launcher};
use crate::ec2::TAG_COORDINATOR;
use crate::ec2::{
    facts_of, filter, for_each_instance, tag_value, InstanceFacts, TAG_CLUSTER, TAG_LAUNCH,
};
use crate::store::LaunchedInstance;

/// An instance this coordinator launched, as EC2 lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedInstance {
    /// Where it runs, as a launch would have stored it.
    pub instance: LaunchedInstance,
    /// EC2's view of it.
    pub facts: InstanceFacts,
    /// The launch job that launched it (`muster:launch`).
    pub job: Option<String>,
}

/// A security group or key pair this coordinator made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedResource {
    /// A security group, by id.
    SecurityGroup {
        /// `sg-…`.
        id: String,
        /// Its `muster:cluster` tag.
        cluster: Option<String>,
    },
    /// A key pair, by name.
    KeyPair {
        /// Its name.
        name: String,
        /// Its `muster:cluster` tag.
        cluster: Option<String>,
    },
}

impl OwnedResource {
    /// The cluster it was made for.
    pub fn cluster(&self) -> Option<&str> {
        match self {
            OwnedResource::SecurityGroup { cluster, .. }
            | OwnedResource::KeyPair { cluster, .. } => cluster.as_deref(),
        }
    }
}

impl std::fmt::Display for OwnedResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnedResource::SecurityGroup { id, .. } => write!(f, "security group {id}"),
            OwnedResource::KeyPair { name, .. } => write!(f, "key pair {name}"),
        }
    }
}

impl Launcher {
    /// This coordinator's id, as tagged on all it makes.
    pub fn coordinator(&self) -> &str {
        &self.coordinator
    }

    fn owned_filter(&self) -> Filter {
        filter(&format!("tag:{TAG_COORDINATOR}"), &self.coordinator)
    }

    /// Every instance of `region` this coordinator launched that is not on
    /// its way out (`pending`, `running`, `stopping`, `stopped`).
    pub async fn owned_instances(&self, region: &str) -> Result<Vec<OwnedInstance>, LaunchError> {
        let states = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(
                ["pending", "running", "stopping", "stopped"]
                    .map(str::to_owned)
                    .to_vec(),
            ))
            .build();
        let mut owned = Vec::new();
        let listed = for_each_instance(
            &self.clients.client(region),
            vec![self.owned_filter(), states],
            |i| {
                let Some(instance_id) = i.instance_id() else {
                    return;
                };
                let facts = facts_of(i);
                owned.push(OwnedInstance {
                    instance: LaunchedInstance {
                        instance_id: instance_id.to_owned(),
                        subnet_id: i.subnet_id().unwrap_or_default().to_owned(),
                        availability_zone: facts.availability_zone.clone().unwrap_or_default(),
                        private_ipv4: facts.private_ipv4,
                    },
                    job: tag_value(i.tags(), TAG_LAUNCH).map(str::to_owned),
                    facts,
                });
            },
        )
        .await;
        listed.map_err(|message| LaunchError::Ec2 {
            operation: "listing the instances this coordinator launched".to_owned(),
            region: region.to_owned(),
            code: None,
            message,
        })?;
        Ok(owned)
    }

    /// Every security group and key pair of `region` this coordinator made.
    pub async fn owned_resources(&self, region: &str) -> Result<Vec<OwnedResource>, LaunchError> {
        let client = self.clients.client(region);
        let mut owned = Vec::new();
        let mut pages = client
            .describe_security_groups()
            .filters(self.owned_filter())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                Self::ec2_error(
                    "listing the security groups this coordinator made",
                    region,
                    &e,
                )
            })?;
            for group in page.security_groups() {
                let cluster = tag_value(group.tags(), TAG_CLUSTER).map(str::to_owned);
                if let Some(id) = group.group_id() {
                    owned.push(OwnedResource::SecurityGroup {
                        id: id.to_owned(),
                        cluster,
                    });
                }
            }
        }
        let keys = client
            .describe_key_pairs()
            .filters(self.owned_filter())
            .send()
            .await
            .map_err(|e| {
                Self::ec2_error("listing the key pairs this coordinator made", region, &e)
            })?;
        for key in keys.key_pairs() {
            let cluster = tag_value(key.tags(), TAG_CLUSTER).map(str::to_owned);
            if let Some(name) = key.key_name() {
                owned.push(OwnedResource::KeyPair {
                    name: name.to_owned(),
                    cluster,
                });
            }
        }
        Ok(owned)
    }

    /// Deletes a leftover security group (once: one still in use waits for
    /// the next try) or key pair, with its key file.
    pub async fn delete_owned(
        &self,
        region: &str,
        resource: &OwnedResource,
    ) -> Result<(), LaunchError> {
        match resource {
            OwnedResource::SecurityGroup { id, .. } => {
                self.delete_security_group(region, id, Duration::ZERO).await
            }
            OwnedResource::KeyPair { name, .. } => {
                self.clients
                    .client(region)
                    .delete_key_pair()
                    .key_name(name)
                    .send()
                    .await
                    .map_err(|e| {
                        Self::ec2_error(format!("deleting key pair {name}"), region, &e)
                    })?;
                self.remove_key_file(&self.keys_dir.join(format!("{name}.pem")));
                Ok(())
            }
        }
    }
}
