//! The register flow: an agent says who it is and where it can be
//! reached, and gets a node credential back. [`Registry::register_from`]
//! is the sequence; admission ([`super::admit`]) and the claim's checks
//! ([`super::claim`]) are its steps.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use muster_proto::token::TokenKind;
use muster_proto::{NodeState, RegisterRequest, RegisterResponse};

use super::claim::Claim;
use super::{show_ip, Registry, RegistryError};
use crate::secrets::{hash_secret, new_secret};
use crate::store::{AdmittedBy, Cluster, Node, NodeRegistration};

impl Registry {
    /// An agent registers with a join token or its node credential.
    pub async fn register(
        &self,
        bearer: &str,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, RegistryError> {
        self.register_from(bearer, req, None).await
    }

    /// [`Registry::register`] from `source`, the client's address, which
    /// `verify_source` checks.
    pub async fn register_from(
        &self,
        bearer: &str,
        req: RegisterRequest,
        source: Option<IpAddr>,
    ) -> Result<RegisterResponse, RegistryError> {
        let instance_id = req.instance_id.clone();
        self.register_checked(bearer, req, source)
            .await
            .map_err(|e| self.refuse("register", &instance_id, e, source))
    }

    /// Register's steps: the request is well formed and its addresses are
    /// possible; the speaker is admitted; the instance is free to be this
    /// node; the claim is proven (bring-your-own machines name themselves;
    /// EC2 instances are checked); a live node is not taken over; then the
    /// node is stored and published.
    pub(super) async fn register_checked(
        &self,
        bearer: &str,
        req: RegisterRequest,
        source: Option<IpAddr>,
    ) -> Result<RegisterResponse, RegistryError> {
        req.validate()?;
        self.check_addresses(
            &req.instance_id,
            source,
            req.private_ipv4,
            req.public_ipv4,
            req.ipv6,
        )?;
        let cluster = self.store.cluster(&req.cluster)?;
        let (how, admitted_by) = self.admit(bearer, &req, cluster.as_ref())?;
        let cluster =
            cluster.ok_or_else(|| RegistryError::Unauthorized("no such cluster".into()))?;
        let reappearing = self.check_instance_free(&req, &cluster)?;
        let name = match &req.byon {
            // EC2 knows nothing of a machine that names itself; its token
            // is the only check.
            Some(byon) => self.check_name_free(&cluster, &byon.hostname, &req.instance_id)?,
            None => {
                self.check_identity_document(&req)?;
                self.check_claim(Claim {
                    cluster: &cluster.name,
                    region: &req.region,
                    instance_id: &req.instance_id,
                    availability_zone: Some(&req.availability_zone),
                    private_ipv4: req.private_ipv4,
                    public_ipv4: req.public_ipv4,
                    ipv6: req.ipv6,
                })
                .await?;
                req.instance_id.clone()
            }
        };
        // A false claim is refused for what is false; a true one may still
        // not take a live node over.
        self.check_not_taken_over(bearer, &req)?;
        let how = if reappearing {
            "back: EC2 reports the instance running again, after it was terminated for not \
             being found, and it registered"
        } else {
            how
        };
        let (node, credential) = self
            .store_registration(&cluster, &name, &req, (how, admitted_by))
            .await?;
        self.counters.registrations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            cluster = %node.cluster,
            node = %node.name,
            private = ?node.private_ipv4,
            public = ?node.public_ipv4,
            how,
            "node registered"
        );
        Ok(RegisterResponse {
            node: self.node_view(&node),
            credential,
            heartbeat_interval_ms: self.timing.heartbeat_interval.as_millis() as u64,
            heartbeat_jitter_ms: self.timing.heartbeat_jitter.as_millis() as u64,
        })
    }

    /// One instance is one node: an instance whose node is on its way out
    /// cannot come back (unless it was terminated only for not being
    /// found: then EC2's check decides), and one that is a node of
    /// another cluster cannot join this one. Returns whether the node
    /// comes back from such a termination.
    pub(super) fn check_instance_free(
        &self,
        req: &RegisterRequest,
        cluster: &Cluster,
    ) -> Result<bool, RegistryError> {
        let Some(existing) = self.store.node_by_instance(&req.instance_id)? else {
            return Ok(false);
        };
        let reappearing =
            existing.state == NodeState::Terminated && existing.unseen && req.byon.is_none();
        if matches!(
            existing.state,
            NodeState::Terminating | NodeState::Terminated
        ) && !reappearing
        {
            return Err(RegistryError::NodeTerminated {
                cluster: existing.cluster,
                node: existing.name,
                state: existing.state,
            });
        }
        if existing.cluster != cluster.name {
            return Err(RegistryError::InstanceInOtherCluster {
                instance_id: req.instance_id.clone(),
                cluster: existing.cluster,
                node: existing.name,
            });
        }
        Ok(reappearing)
    }

    /// No member can take over another: a register for an instance whose
    /// node is live (deployed and heard within the grace) must come with
    /// its own node credential, or with proof that it is that instance
    /// (its signed identity document, required unless the operator turned
    /// that off with `--insecure-no-identity-document`, or its source
    /// checked with `--verify-source`). A join token alone,
    /// which every node's user data holds, is refused with `node_live`, a
    /// security event, until the node has been silent for the grace: so a
    /// node whose state was wiped gets back in on its own, a grace later.
    pub(super) fn check_not_taken_over(
        &self,
        bearer: &str,
        req: &RegisterRequest,
    ) -> Result<(), RegistryError> {
        let proven =
            req.byon.is_none() && (self.trust.identity_certs.is_some() || self.trust.verify_source);
        if proven || TokenKind::of(bearer) == Some(TokenKind::Node) {
            // A node credential was matched to this instance by admission.
            return Ok(());
        }
        let Some(node) = self.store.node_by_instance(&req.instance_id)? else {
            return Ok(());
        };
        let heard = || {
            let live = self.live();
            live.nodes
                .get(&node.id)
                .filter(|n| n.state.is_heard())
                .map(|n| n.last_heard.elapsed())
        };
        let mut heard_here = heard();
        // Silent here, it may be heard by another replica.
        if self.replica.is_some() && heard_here.is_none_or(|ago| ago >= self.timing.grace) {
            self.merge_heard()?;
            // A node another replica has just written and this one has not
            // taken in yet counts as heard now.
            heard_here = heard().or_else(|| node.state.is_heard().then_some(Duration::ZERO));
        }
        match heard_here {
            Some(ago) if ago < self.timing.grace => Err(RegistryError::NodeLive {
                instance_id: req.instance_id.clone(),
                cluster: node.cluster,
                node: node.name,
                heard_secs_ago: ago.as_secs(),
                grace_secs: self.timing.grace.as_secs(),
            }),
            _ => Ok(()),
        }
    }

    /// The name a bring-your-own machine gives itself, unless another
    /// machine's live node has it.
    pub(super) fn check_name_free(
        &self,
        cluster: &Cluster,
        name: &str,
        instance_id: &str,
    ) -> Result<String, RegistryError> {
        if let Some(holder) = self.store.node(&cluster.name, name)? {
            if holder.instance_id != instance_id && holder.state != NodeState::Terminated {
                return Err(RegistryError::NameTaken {
                    cluster: cluster.name.clone(),
                    name: name.to_owned(),
                    instance_id: holder.instance_id,
                });
            }
        }
        Ok(name.to_owned())
    }

    /// Stores the node with a fresh credential, its event saying `how` it
    /// was admitted, mirrors it in memory as just heard, and publishes DNS.
    /// Returns the node and its credential.
    pub(super) async fn store_registration(
        &self,
        cluster: &Cluster,
        name: &str,
        req: &RegisterRequest,
        (how, admitted_by): (&str, AdmittedBy),
    ) -> Result<(Node, String), RegistryError> {
        let credential = new_secret(TokenKind::Node);
        let credential_hash = hash_secret(&credential);
        let _write = self.write.lock().await;
        let mut reason = format!(
            "{how}: private {} public {}",
            show_ip(req.private_ipv4),
            show_ip(req.public_ipv4)
        );
        if let Some(ipv6) = req.ipv6 {
            reason.push_str(&format!(" ipv6 {ipv6}"));
        }
        let node = self.store.register_node(
            &NodeRegistration {
                cluster_id: cluster.id,
                name,
                instance_id: &req.instance_id,
                availability_zone: &req.availability_zone,
                region: &req.region,
                private_ipv4: req.private_ipv4,
                public_ipv4: req.public_ipv4,
                ipv6: req.ipv6,
                credential_hash: &credential_hash,
                byon: req.byon.is_some(),
                admitted_by,
            },
            &reason,
        )?;
        {
            let mut live = self.live();
            let before = live.nodes.get(&node.id).map(|n| n.state);
            self.counters.transitioned(before, node.state);
            live.upsert(&node);
            if let Some(entry) = live.nodes.get_mut(&node.id) {
                entry.last_seen = Some(SystemTime::now());
                entry.last_heard = Instant::now();
                entry.unknown_sweeps = 0;
            }
        }
        self.publish();
        Ok((node, credential))
    }
}
