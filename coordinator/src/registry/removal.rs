//! Removal: `node rm` and `cluster rm`, and the removals a restart picks
//! up again.
//!
//! A removed EC2 node is terminated through EC2 and marked `terminating`;
//! the sweep makes it `terminated` once EC2 says so. A bring-your-own node
//! has no instance to terminate: it is deleted from the store at once, and
//! its machine banned from the cluster until `cluster admit` (see
//! [`super::tokens`]). A
//! cluster's removal runs as a task (see [`super::clusters`]).
//!
//! History goes last: [`Registry::prune_history`] deletes terminated nodes
//! (with their events), expired tokens and finished launch jobs once they
//! are older than the retention (`--retention`, default 7 days), so the
//! store, memory, zone rebuilds and `/metrics` grow with the live fleet and
//! that window, not with every node ever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use muster_proto::{
    validate, ClusterState, ClusterView, EventSource, NodeState, NodeView, ValidationError,
};

use super::lifecycle::Input;
use super::{cluster_launch, Registry, RegistryError};

/// How long a removal waits for EC2 to say every instance is terminated
/// before it gives up until the next coordinator start.
const REMOVAL_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// Waits between EC2 reads while a removal waits: 1 s, doubling to 10 s.
const REMOVAL_POLL_MAX: Duration = Duration::from_secs(10);

impl Registry {
    /// `cluster rm`: marks the cluster `removing` and starts the removal
    /// (see the module doc). Asking again while it runs changes nothing.
    pub async fn remove_cluster(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<ClusterView, RegistryError> {
        validate::dns_label("cluster", name)?;
        let _clusters = self.clusters.lock().await;
        let cluster = self
            .store
            .cluster(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("no cluster {name:?}")))?;
        match cluster.state {
            ClusterState::Removed => {
                return Err(RegistryError::ClusterNotActive {
                    name: cluster.name,
                    state: cluster.state,
                })
            }
            ClusterState::Removing => {}
            ClusterState::Active => {
                self.store
                    .set_cluster_state(cluster.id, ClusterState::Removing)?;
                tracing::info!(cluster = %name, "cluster removal started");
                self.spawn_removal(name.to_owned());
            }
        }
        self.cluster(name)
    }

    /// Starts the removal of every cluster left `removing` by an earlier
    /// run.
    pub fn resume_removals(self: &Arc<Self>) -> Result<(), RegistryError> {
        for cluster in self.store.clusters()? {
            if cluster.state == ClusterState::Removing {
                tracing::info!(cluster = %cluster.name, "resuming cluster removal");
                self.spawn_removal(cluster.name);
            }
        }
        Ok(())
    }

    pub(super) fn spawn_removal(self: &Arc<Self>, name: String) {
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            match tokio::time::timeout(REMOVAL_PATIENCE, registry.finish_removal(&name)).await {
                Ok(Ok(())) => tracing::info!(cluster = %name, "cluster removed"),
                Ok(Err(error)) => {
                    tracing::error!(cluster = %name, %error, "cluster removal failed; it resumes at the next start")
                }
                Err(_) => tracing::error!(
                    cluster = %name,
                    "EC2 has not terminated every instance in time; the removal resumes at the next start"
                ),
            }
        });
    }

    pub(super) async fn finish_removal(&self, name: &str) -> Result<(), RegistryError> {
        let Some(cluster) = self.store.cluster(name)? else {
            return Ok(());
        };
        let (byon, nodes): (Vec<_>, Vec<_>) = self
            .store
            .nodes(Some(name))?
            .into_iter()
            .filter(|n| n.state != NodeState::Terminated)
            .partition(|n| n.byon);
        for node in &byon {
            self.forget_node(node.id).await?;
        }
        if !nodes.is_empty() || cluster.launch.is_some() {
            // Terminating, and reading back what EC2 says of it, needs an
            // EC2 answering for the nodes' account.
            self.ec2_trusted()?;
        }
        let mut by_region: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for node in &nodes {
            by_region
                .entry(node.region.clone())
                .or_default()
                .push((node.id, node.instance_id.clone()));
        }
        // Each node is `terminating`, with why, before its instance is
        // asked to go: once it is, a sweep may see it gone first. A
        // removal the cluster's lifetime started says so in the nodes'
        // events (after a restart too: the end is stored). The cluster is
        // `removing`, so a removal cut short here resumes at the next
        // start and terminates what is left.
        let input = if cluster
            .expires_at
            .is_some_and(|t| t <= crate::store::now_ms())
        {
            Input::ClusterExpired
        } else {
            Input::OperatorRemove
        };
        for node in &nodes {
            self.apply(node.id, input.clone(), EventSource::Operator)
                .await?;
        }
        for (region, ids) in &by_region {
            let instance_ids: Vec<String> = ids.iter().map(|(_, i)| i.clone()).collect();
            self.ec2.terminate_many(region, &instance_ids).await?;
        }
        let not_yet_terminated = |id: &i64| {
            self.live()
                .nodes
                .get(id)
                .is_some_and(|n| n.state != NodeState::Terminated)
        };
        let mut wait = Duration::from_secs(1);
        loop {
            let mut left = 0;
            for (region, ids) in &by_region {
                let pending: Vec<(i64, String)> = ids
                    .iter()
                    .filter(|(id, _)| not_yet_terminated(id))
                    .cloned()
                    .collect();
                if pending.is_empty() {
                    continue;
                }
                let instance_ids: Vec<String> = pending.iter().map(|(_, i)| i.clone()).collect();
                let read_at = std::time::Instant::now();
                match self.ec2.describe_many(region, &instance_ids).await {
                    Ok(found) => {
                        for (id, instance_id) in &pending {
                            self.sweep_one(*id, found.get(instance_id), read_at).await?;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, %region, "removal could not read EC2; trying again")
                    }
                }
                left += pending
                    .iter()
                    .filter(|(id, _)| not_yet_terminated(id))
                    .count();
            }
            if left == 0 {
                break;
            }
            tracing::debug!(cluster = %name, left, "waiting for EC2 to terminate instances");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REMOVAL_POLL_MAX);
        }
        if let Some(launch) = cluster_launch(&cluster)? {
            let context = self.launch.as_ref().ok_or_else(|| {
                ValidationError::new(
                    "cluster",
                    name,
                    "was launched, but this coordinator has no EC2 launcher to release it",
                )
            })?;
            context.launcher.release(&launch).await?;
        }
        self.store
            .set_cluster_state(cluster.id, ClusterState::Removed)?;
        Ok(())
    }

    /// Drops from memory the nodes of a removed cluster whose name was just
    /// taken again (the store forgot them in the same transaction).
    pub(super) fn forget_removed(&self, cluster: &str) {
        let mut live = self.live();
        let gone: Vec<i64> = live
            .nodes
            .iter()
            .filter(|(_, n)| *n.cluster == *cluster)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            live.remove(id);
        }
    }

    /// `node rm`: asks EC2 to terminate the instance and marks the node
    /// `terminating`; the sweep makes it `terminated` once EC2 says so.
    pub async fn remove_node(&self, cluster: &str, name: &str) -> Result<NodeView, RegistryError> {
        validate::dns_label("cluster", cluster)?;
        validate::dns_label("node", name)?;
        let node = self.store.node(cluster, name)?.ok_or_else(|| {
            RegistryError::NotFound(format!("no node {name:?} in cluster {cluster:?}"))
        })?;
        if node.state == NodeState::Terminated {
            return Err(RegistryError::NodeTerminated {
                cluster: node.cluster,
                node: node.name,
                state: node.state,
            });
        }
        if node.byon {
            // Banned first: its agent, still running, would join again
            // with its token.
            if let Some(owner) = self.store.cluster(&node.cluster)? {
                self.store.ban_machine(owner.id, &node.instance_id)?;
            }
            let view = self.node_view(&node);
            self.forget_node(node.id).await?;
            tracing::info!(cluster = %node.cluster, node = %node.name, machine = %node.instance_id, "bring-your-own node removed; its machine may not join again until admitted (cluster admit)");
            return Ok(view);
        }
        self.ec2_trusted()?;
        self.ec2.terminate(&node.region, &node.instance_id).await?;
        self.apply(node.id, Input::OperatorRemove, EventSource::Operator)
            .await?;
        let node = self.store.node(cluster, name)?.ok_or_else(|| {
            RegistryError::NotFound(format!("no node {name:?} in cluster {cluster:?}"))
        })?;
        Ok(self.node_view(&node))
    }

    /// Deletes a bring-your-own node from the store and memory; its DNS
    /// records go with it.
    pub(super) async fn forget_node(&self, id: i64) -> Result<(), RegistryError> {
        let _write = self.write.lock().await;
        self.store.delete_node(id)?;
        {
            self.live().remove(id);
        }
        self.publish();
        Ok(())
    }
}

impl Registry {
    /// Deletes the history older than `retention` ([`crate::store::Store::prune`]):
    /// terminated nodes leave the store and memory with their events, and
    /// expired tokens and finished launch jobs go.
    pub async fn prune_history(
        &self,
        retention: Duration,
    ) -> Result<crate::store::Pruned, RegistryError> {
        let before = crate::store::now_ms()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let _write = self.write.lock().await;
        let pruned = self.store.prune(before)?;
        if !pruned.nodes.is_empty() {
            let mut live = self.live();
            for id in &pruned.nodes {
                live.remove(*id);
            }
        }
        if pruned != crate::store::Pruned::default() {
            tracing::info!(
                nodes = pruned.nodes.len(),
                tokens = pruned.tokens,
                launch_jobs = pruned.jobs,
                retention = %humantime::format_duration(retention),
                "history past the retention pruned"
            );
        }
        Ok(pruned)
    }
}
