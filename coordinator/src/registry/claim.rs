//! Claims: is what an agent says of its instance true? Address ranges and
//! the request's source first, then the signed identity document, then
//! EC2 (the cache may confirm, only a fresh read refuses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use muster_proto::cidr::Ipv4Cidr;
use muster_proto::{NodeState, RegisterRequest};

use super::identity_document;
use super::{show_ip, Registry, RegistryError};
use crate::ec2::InstanceFacts;

/// A node whose address lies inside `--trusted-proxies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInside {
    /// The node's cluster.
    pub cluster: String,
    /// The node.
    pub node: String,
    /// Its address inside the range.
    pub address: Ipv4Addr,
    /// The range.
    pub proxies: Ipv4Cidr,
}

/// What an agent says of its instance, to be checked against EC2.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim<'a> {
    pub cluster: &'a str,
    pub region: &'a str,
    pub instance_id: &'a str,
    pub availability_zone: Option<&'a str>,
    pub private_ipv4: Option<Ipv4Addr>,
    pub public_ipv4: Option<Ipv4Addr>,
    /// An IPv6 address the agent names must be one of the instance's; an
    /// agent that names none claims nothing.
    pub ipv6: Option<Ipv6Addr>,
}

impl Claim<'_> {
    /// Whether EC2's `facts` bear the claim out.
    pub(super) fn judge(&self, facts: InstanceFacts) -> Result<(), RegistryError> {
        let instance_id = self.instance_id;
        if facts.state != "running" && facts.state != "pending" {
            return Err(RegistryError::InstanceNotRunning {
                instance_id: instance_id.to_owned(),
                state: facts.state,
            });
        }
        if facts.cluster_tag.as_deref() != Some(self.cluster) {
            return Err(RegistryError::ClusterTagMismatch {
                instance_id: instance_id.to_owned(),
                cluster: self.cluster.to_owned(),
                tag: facts.cluster_tag,
            });
        }
        let mismatch = |field, claimed: String, actual: String| RegistryError::AddressMismatch {
            instance_id: instance_id.to_owned(),
            field,
            claimed,
            actual,
        };
        if let Some(zone) = self.availability_zone {
            if facts.availability_zone.as_deref() != Some(zone) {
                return Err(mismatch(
                    "availability_zone",
                    zone.to_owned(),
                    facts.availability_zone.unwrap_or_else(|| "none".into()),
                ));
            }
        }
        if facts.private_ipv4 != self.private_ipv4 {
            return Err(mismatch(
                "private_ipv4",
                show_ip(self.private_ipv4),
                show_ip(facts.private_ipv4),
            ));
        }
        if facts.public_ipv4 != self.public_ipv4 {
            return Err(mismatch(
                "public_ipv4",
                show_ip(self.public_ipv4),
                show_ip(facts.public_ipv4),
            ));
        }
        if let Some(ipv6) = self.ipv6 {
            if !facts.ipv6.contains(&ipv6) {
                let actual: Vec<String> = facts.ipv6.iter().map(|ip| ip.to_string()).collect();
                return Err(mismatch(
                    "ipv6",
                    ipv6.to_string(),
                    if actual.is_empty() {
                        "none".to_owned()
                    } else {
                        actual.join(", ")
                    },
                ));
            }
        }
        Ok(())
    }
}

impl Registry {
    /// Refuses addresses that cannot be the node's: a public address in a
    /// reserved range the operator did not allow, and, with
    /// `verify_source`, a request from an address that is none of them.
    pub(super) fn check_addresses(
        &self,
        instance_id: &str,
        source: Option<IpAddr>,
        private_ipv4: Option<Ipv4Addr>,
        public_ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<(), RegistryError> {
        if let Some(public) = public_ipv4 {
            muster_proto::validate::public_ipv4(
                "public_ipv4",
                public,
                &self.trust.public_ipv4_allow,
            )?;
        }
        if !self.trust.verify_source {
            return Ok(());
        }
        let ok = match source.map(|s| s.to_canonical()) {
            Some(IpAddr::V4(from)) => Some(from) == private_ipv4 || Some(from) == public_ipv4,
            Some(IpAddr::V6(from)) => Some(from) == ipv6,
            None => false,
        };
        if ok {
            return Ok(());
        }
        Err(RegistryError::SourceMismatch {
            instance_id: instance_id.to_owned(),
            source_addr: source.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            claimed: format!(
                "private {}, public {}, ipv6 {}",
                show_ip(private_ipv4),
                show_ip(public_ipv4),
                show_ip(ipv6)
            ),
        })
    }

    /// Checks a claim against EC2: the instance exists, runs, carries the
    /// cluster's `muster:cluster` tag, and has the claimed zone and
    /// addresses. A claim the EC2 cache confirms needs no call; anything
    /// else, a refusal above all, rests on a fresh DescribeInstances.
    pub(super) async fn check_claim(&self, claim: Claim<'_>) -> Result<(), RegistryError> {
        if let Some(facts) = self.ec2.cached(claim.region, claim.instance_id) {
            if claim.judge(facts).is_ok() {
                return Ok(());
            }
        }
        let facts = self
            .ec2
            .describe(claim.region, claim.instance_id)
            .await?
            .ok_or_else(|| RegistryError::InstanceNotFound {
                instance_id: claim.instance_id.to_owned(),
                region: claim.region.to_owned(),
            })?;
        claim.judge(facts)
    }

    /// An EC2 register must carry an identity document signed by AWS (or
    /// a signer `--identity-certs` adds) that names the claimed instance,
    /// region, zone and private address; only
    /// `--insecure-no-identity-document` lets one in without.
    pub(super) fn check_identity_document(
        &self,
        req: &RegisterRequest,
    ) -> Result<(), RegistryError> {
        let Some(certs) = &self.trust.identity_certs else {
            return Ok(());
        };
        identity_document::check(
            certs,
            req.signed_identity.as_ref(),
            identity_document::Claim {
                instance_id: &req.instance_id,
                region: &req.region,
                availability_zone: &req.availability_zone,
                private_ipv4: req.private_ipv4,
            },
        )
        .map_err(|source| RegistryError::IdentityUnproven {
            instance_id: req.instance_id.clone(),
            source,
        })?;
        Ok(())
    }

    /// The first node, not terminated, with an address inside one of
    /// `proxies`: such a node could forge `X-Forwarded-For`, so `serve`
    /// refuses to start beside it (a launch refuses such subnets too).
    pub fn node_inside(&self, proxies: &[Ipv4Cidr]) -> Result<Option<NodeInside>, RegistryError> {
        if proxies.is_empty() {
            return Ok(None);
        }
        for node in self.store.nodes(None)? {
            if node.state == NodeState::Terminated {
                continue;
            }
            for address in [node.private_ipv4, node.public_ipv4].into_iter().flatten() {
                if let Some(range) = proxies.iter().find(|p| p.contains_addr(address)) {
                    return Ok(Some(NodeInside {
                        cluster: node.cluster,
                        node: node.name,
                        address,
                        proxies: *range,
                    }));
                }
            }
        }
        Ok(None)
    }
}
