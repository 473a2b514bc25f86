//! Cluster lifetimes: a cluster created with `--expires-in` is removed as
//! by `cluster rm` once its lifetime ends, unless `cluster extend` moved
//! the end. The expiry loop in `serve` asks every second; the end is kept
//! in the store, so a restart neither forgets nor resets it, and a
//! removal that a restart interrupted resumes as any other does. Its
//! nodes' events say the cluster's lifetime ended.

use std::sync::Arc;

use muster_proto::{validate, ClusterState, ClusterView, ExtendClusterRequest, ValidationError};

use super::{Registry, RegistryError};
use crate::store::now_ms;

impl Registry {
    /// `cluster extend NAME BY`: adds `by_secs` to the lifetime of an
    /// active cluster that has one.
    pub async fn extend_cluster(
        &self,
        name: &str,
        req: &ExtendClusterRequest,
    ) -> Result<ClusterView, RegistryError> {
        validate::dns_label("cluster", name)?;
        req.validate()?;
        let _clusters = self.clusters.lock().await;
        let cluster = self.active_cluster(name)?;
        let Some(ends) = cluster.expires_at else {
            return Err(ValidationError::new(
                "cluster",
                name,
                "has no lifetime to extend: it lives until cluster rm",
            )
            .into());
        };
        let by = i64::try_from(req.by_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        let now_ends = ends.max(now_ms()).saturating_add(by);
        if !self.store.set_cluster_expiry(cluster.id, now_ends)? {
            // Its removal began since it was read: say where it is now.
            let state = self
                .store
                .cluster(name)?
                .map_or(ClusterState::Removed, |now| now.state);
            return Err(RegistryError::ClusterNotActive {
                name: cluster.name,
                state,
            });
        }
        tracing::info!(
            cluster = %name,
            expires_at = %super::rfc3339_ms(now_ends),
            "cluster lifetime extended"
        );
        self.cluster(name)
    }

    /// Starts the removal of every active cluster whose lifetime has
    /// ended; how many.
    pub async fn remove_expired_clusters(self: &Arc<Self>) -> Result<usize, RegistryError> {
        let now = now_ms();
        let ended: Vec<(String, i64)> = self
            .store
            .clusters()?
            .into_iter()
            .filter(|c| c.state == ClusterState::Active)
            .filter_map(|c| c.expires_at.filter(|t| *t <= now).map(|t| (c.name, t)))
            .collect();
        for (name, ends) in &ended {
            tracing::info!(
                cluster = %name,
                expired_at = %super::rfc3339_ms(*ends),
                "cluster lifetime ended; removing it"
            );
            self.remove_cluster(name).await?;
        }
        Ok(ended.len())
    }
}
