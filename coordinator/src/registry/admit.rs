//! Admission: who is speaking. A register carries a bearer secret; this
//! decides which secret it is (the cluster's join token, a token minted for
//! user data, a launch or bring-your-own machines, or a node credential)
//! and whether that secret may ask for what the register asks.
//!
//! It says nothing about whether the claim is true: that is [`super::claim`].

use muster_proto::token::TokenKind;
use muster_proto::{ClusterState, RegisterRequest};

use super::live::{Live, LiveNode};
use super::{rfc3339_ms, Registry, RegistryError};
use crate::secrets::{digest_secret, hash_secret, secret_matches};
use crate::store::{now_ms, AdmittedBy, Cluster, TokenPurpose};

impl Registry {
    /// Admits the speaker of register `req`, holding `bearer`, into
    /// `cluster` (the cluster `req` names, if it exists). Returns how it was
    /// admitted, for the node's event, and by which token, for the store
    /// to count.
    pub(super) fn admit(
        &self,
        bearer: &str,
        req: &RegisterRequest,
        cluster: Option<&Cluster>,
    ) -> Result<(&'static str, AdmittedBy), RegistryError> {
        match TokenKind::of(bearer) {
            Some(TokenKind::Join) => self.admit_cluster_token(bearer, req, cluster),
            Some(TokenKind::Node) => self
                .admit_node_credential(bearer, req)
                .map(|how| (how, AdmittedBy::Credential)),
            Some(kind @ (TokenKind::Admin | TokenKind::Viewer)) => Err(
                RegistryError::Unauthorized(format!("an {kind} cannot register a node")),
            ),
            None => Err(RegistryError::Unauthorized(
                "the Authorization header must carry \"Bearer <join token or node credential>\""
                    .into(),
            )),
        }
    }

    /// A join-kind token: the cluster's join token, or one the cluster
    /// minted for user data, a launch, or bring-your-own machines.
    pub(super) fn admit_cluster_token(
        &self,
        bearer: &str,
        req: &RegisterRequest,
        cluster: Option<&Cluster>,
    ) -> Result<(&'static str, AdmittedBy), RegistryError> {
        let refused = || {
            RegistryError::Unauthorized(format!(
                "the join token is not one of cluster {:?}",
                req.cluster
            ))
        };
        let Some(c) = cluster else {
            return Err(refused());
        };
        if c.state != ClusterState::Active {
            return Err(RegistryError::ClusterNotActive {
                name: c.name.clone(),
                state: c.state,
            });
        }
        if secret_matches(bearer, &c.join_token_hash) {
            unexpired(
                c,
                c.join_token_expires_at,
                "join token",
                "rotate it (cluster rotate-token)",
            )?;
            if req.byon.is_some() {
                return Err(byon_needs_its_token(c, "the join token"));
            }
            return Ok(("registered with the join token", AdmittedBy::ClusterToken));
        }
        let token = self
            .store
            .cluster_token(&hash_secret(bearer))?
            .filter(|t| t.cluster_id == c.id);
        let Some(token) = token else {
            return Err(refused());
        };
        let by = AdmittedBy::Token {
            id: token.id,
            max_nodes: token.max_nodes,
        };
        match (token.purpose, token.expires_at) {
            (TokenPurpose::Byon, _) => {
                if req.byon.is_none() {
                    return Err(RegistryError::Unauthorized(
                        "a bring-your-own token is for machines that name themselves \
                         (muster-agent run --byon); EC2 instances join with the join token"
                            .into(),
                    ));
                }
                if let Some(at) = self.store.machine_banned_at(c.id, &req.instance_id)? {
                    return Err(RegistryError::Unauthorized(format!(
                        "machine {} was removed from cluster {:?} by an operator at {} (node rm); \
                         `cluster admit {} {}` lets it join again",
                        req.instance_id,
                        c.name,
                        rfc3339_ms(at),
                        c.name,
                        req.instance_id
                    )));
                }
                Ok(("registered with a bring-your-own token", by))
            }
            (TokenPurpose::Join, expires_at) => {
                unexpired(
                    c,
                    expires_at,
                    "join token minted for user data",
                    "render new user data (userdata CLUSTER)",
                )?;
                if req.byon.is_some() {
                    return Err(byon_needs_its_token(c, "a join token"));
                }
                Ok(("registered with a join token minted for user data", by))
            }
            (TokenPurpose::Launch, _) => {
                // A launch token speaks only for instances muster launched
                // into this cluster.
                let launched = self
                    .store
                    .node_by_instance(&req.instance_id)?
                    .is_some_and(|n| n.cluster == c.name && n.subnet_id.is_some());
                if !launched {
                    return Err(RegistryError::Unauthorized(format!(
                        "a launch token registers only instances launched into cluster {:?}, \
                         and {} is not one",
                        c.name, req.instance_id
                    )));
                }
                Ok(("registered with its launch token", by))
            }
        }
    }

    /// A node credential: it speaks only for its own instance, in its own
    /// cluster, as the kind of node it was issued to.
    pub(super) fn admit_node_credential(
        &self,
        bearer: &str,
        req: &RegisterRequest,
    ) -> Result<&'static str, RegistryError> {
        let (_, node) = credential_holder(&self.live(), bearer, &req.instance_id)?;
        if *node.cluster != *req.cluster {
            return Err(RegistryError::Unauthorized(format!(
                "the node credential belongs to cluster {:?}, not {:?}",
                node.cluster, req.cluster
            )));
        }
        if node.byon != req.byon.is_some() {
            return Err(RegistryError::Unauthorized(
                "the node credential belongs to a node of the other kind \
                 (bring-your-own or EC2)"
                    .into(),
            ));
        }
        Ok("re-registered with its node credential")
    }
}

/// Refuses a token of `cluster` that expired at `expires_at` (if it has
/// an expiry), saying what it was and how to get a new one.
fn unexpired(
    cluster: &Cluster,
    expires_at: Option<i64>,
    what: &str,
    renew: &str,
) -> Result<(), RegistryError> {
    match expires_at.filter(|at| *at <= now_ms()) {
        Some(at) => Err(RegistryError::Unauthorized(format!(
            "the {what} of cluster {:?} expired at {}; {renew}",
            cluster.name,
            rfc3339_ms(at)
        ))),
        None => Ok(()),
    }
}

/// The refusal of a bring-your-own register that came with `which` join
/// token instead of a bring-your-own token.
fn byon_needs_its_token(cluster: &Cluster, which: &str) -> RegistryError {
    RegistryError::Unauthorized(format!(
        "a machine without IMDS joins cluster {:?} with a bring-your-own token \
         (cluster byon-token), not {which}",
        cluster.name
    ))
}

/// The node (row id and live entry) node credential `bearer` was issued
/// to, which must be that of `instance_id`: a credential speaks for its
/// own instance only.
pub(super) fn credential_holder(
    live: &Live,
    bearer: &str,
    instance_id: &str,
) -> Result<(i64, LiveNode), RegistryError> {
    let not_valid = || RegistryError::Unauthorized("the node credential is not valid".into());
    let id = *live
        .by_credential
        .get(&digest_secret(bearer))
        .ok_or_else(not_valid)?;
    let node = live.nodes.get(&id).ok_or_else(not_valid)?;
    if node.instance_id != instance_id {
        return Err(RegistryError::CredentialMismatch {
            bound: node.instance_id.clone(),
            claimed: instance_id.to_owned(),
        });
    }
    Ok((id, node.clone()))
}
