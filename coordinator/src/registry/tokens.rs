//! A cluster's tokens as an operator sees them: minted (bring-your-own,
//! with a cap on the nodes each creates), rotated, listed and revoked;
//! and the bring-your-own machines `node rm` banned, admitted again.
//!
//! - `cluster tokens NAME` lists every token (kind, id, created, expiry,
//!   uses, and for bring-your-own tokens the nodes created out of the
//!   most allowed), never a secret: only hashes are kept.
//! - `cluster revoke-token NAME ID` retires one at once: a further token's
//!   row goes, so the next register holding it is refused as a stranger;
//!   the cluster's own join token (`join`) expires now, and `rotate-token`
//!   makes a new one.
//! - A bring-your-own token holds at most its `max_nodes` nodes at a time
//!   (default [`muster_proto::DEFAULT_BYON_MAX_NODES`]), counted on the
//!   token's row as each is created and given back by `node rm`; a machine
//!   re-joining as the node it already is does not count again.
//! - `node rm` of a bring-your-own node bans its machine id from the
//!   cluster, so that its agent, still running, cannot join again with the
//!   token; `cluster admit NAME MACHINE` lifts the ban.
//!
//! A launch token stays valid for every instance of its launch, joining
//! again included: a node whose disk was wiped has nothing else to come
//! back with, and a live node cannot be taken over whatever the token
//! ([`super::register`]).

use muster_proto::token::TokenKind;
use muster_proto::{validate, TokenView, DEFAULT_BYON_MAX_NODES};

use super::{rfc3339_ms, Registry, RegistryError};
use crate::secrets::{hash_secret, new_secret};
use crate::store::{TokenPurpose, TokenRecord};

/// The id `cluster tokens` shows for the cluster's own join token.
pub const CLUSTER_JOIN_TOKEN_ID: &str = "join";

/// The id `cluster tokens` shows for the further token of row `id`.
fn token_id(id: i64) -> String {
    format!("t{id}")
}

impl Registry {
    /// `cluster byon-token NAME`: a fresh bring-your-own token for an
    /// active cluster, creating at most `max_nodes` nodes; earlier ones
    /// stay valid.
    pub async fn byon_token(
        &self,
        name: &str,
        req: &muster_proto::ByonTokenRequest,
    ) -> Result<String, RegistryError> {
        validate::dns_label("cluster", name)?;
        req.validate()?;
        let _clusters = self.clusters.lock().await;
        self.mint_byon_token(name, req.max_nodes)
    }

    pub(super) fn mint_byon_token(
        &self,
        name: &str,
        max_nodes: Option<u32>,
    ) -> Result<String, RegistryError> {
        let cluster = self.active_cluster(name)?;
        let token = new_secret(TokenKind::Join);
        let max_nodes = max_nodes.unwrap_or(DEFAULT_BYON_MAX_NODES);
        self.store.add_cluster_token(
            cluster.id,
            TokenPurpose::Byon,
            &hash_secret(&token),
            (None, Some(max_nodes)),
        )?;
        tracing::info!(cluster = %name, max_nodes, "bring-your-own token minted");
        Ok(token)
    }

    /// `cluster rotate-token`: a new join token replaces the cluster's,
    /// valid for `expires_in` if given. The old one stops working at once,
    /// and so do the join tokens minted for user data (`userdata CLUSTER`);
    /// nodes keep their credentials, and launch and bring-your-own tokens
    /// are untouched.
    pub async fn rotate_token(
        &self,
        name: &str,
        req: &muster_proto::RotateTokenRequest,
    ) -> Result<muster_proto::RotateTokenResponse, RegistryError> {
        validate::dns_label("cluster", name)?;
        req.validate()?;
        let _clusters = self.clusters.lock().await;
        let cluster = self.active_cluster(name)?;
        let token = new_secret(TokenKind::Join);
        let expires_at = super::clusters::expiry(req.expires_in_secs);
        self.store
            .rotate_join_token(cluster.id, &hash_secret(&token), expires_at)?;
        tracing::info!(cluster = %name, ?expires_at, "join token rotated");
        Ok(muster_proto::RotateTokenResponse {
            cluster: cluster.name,
            join_token: token,
            expires_at: expires_at.map(rfc3339_ms),
        })
    }

    /// `cluster tokens NAME`: every token of the cluster, never a secret.
    pub fn tokens(&self, name: &str) -> Result<Vec<TokenView>, RegistryError> {
        validate::dns_label("cluster", name)?;
        let cluster = self.existing_cluster(name)?;
        Ok(self
            .store
            .cluster_tokens(&cluster)?
            .iter()
            .map(token_view)
            .collect())
    }

    /// `cluster revoke-token NAME ID`: the token stops working at once.
    pub async fn revoke_token(&self, name: &str, id: &str) -> Result<TokenView, RegistryError> {
        validate::dns_label("cluster", name)?;
        let _clusters = self.clusters.lock().await;
        let cluster = self.existing_cluster(name)?;
        let tokens = self.store.cluster_tokens(&cluster)?;
        let found = tokens
            .iter()
            .find(|t| token_view(t).id == id)
            .ok_or_else(|| {
                RegistryError::NotFound(format!("cluster {name:?} has no token {id:?}"))
            })?;
        match found.id {
            Some(row) => {
                self.store.revoke_cluster_token(cluster.id, row)?;
            }
            None => self.store.expire_join_token(cluster.id)?,
        }
        tracing::warn!(cluster = %name, token = %id, "token revoked");
        let mut view = token_view(found);
        if found.id.is_none() {
            view.expires_at = Some(rfc3339_ms(crate::store::now_ms()));
        }
        Ok(view)
    }

    /// `cluster admit NAME MACHINE`: a bring-your-own machine `node rm`
    /// banned may join again.
    pub async fn admit_machine(&self, name: &str, machine: &str) -> Result<(), RegistryError> {
        validate::dns_label("cluster", name)?;
        validate::node_id(machine)?;
        let cluster = self.existing_cluster(name)?;
        if !self.store.unban_machine(cluster.id, machine)? {
            return Err(RegistryError::NotFound(format!(
                "machine {machine:?} is not banned from cluster {name:?}"
            )));
        }
        tracing::info!(cluster = %name, %machine, "machine admitted again");
        Ok(())
    }

    /// The cluster `name`, in any state.
    fn existing_cluster(&self, name: &str) -> Result<crate::store::Cluster, RegistryError> {
        self.store
            .cluster(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("no cluster {name:?}")))
    }
}

/// How `cluster tokens` shows a stored token.
fn token_view(token: &TokenRecord) -> TokenView {
    let (id, kind) = match (token.id, token.purpose) {
        (Some(row), Some(purpose)) => (
            token_id(row),
            match purpose {
                TokenPurpose::Join => "userdata",
                other => other.as_str(),
            },
        ),
        _ => (CLUSTER_JOIN_TOKEN_ID.to_owned(), "join"),
    };
    let byon = token.purpose == Some(TokenPurpose::Byon);
    TokenView {
        id,
        kind: kind.to_owned(),
        created_at: rfc3339_ms(token.created_at),
        expires_at: token.expires_at.map(rfc3339_ms),
        uses: token.uses,
        nodes: byon.then_some(token.nodes),
        max_nodes: if byon { token.max_nodes } else { None },
    }
}
