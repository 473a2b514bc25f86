//! The registry beside other replicas of a shared store: the rows they
//! write taken into memory, and the nodes each one heard shared with the
//! leader ([`crate::store::heard`]).
//!
//! Every replica serves agents, so a node's row may be written by any of
//! them: [`Registry::take_in`] reloads the rows another wrote (announced by
//! the store, [`crate::replica`]) without losing what heartbeats put in
//! memory here. A node heard only by another replica looks silent here;
//! before liveness marks it, or a register takes it over, the registry
//! reads what the others heard ([`Registry::merge_heard`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{Registry, RegistryError};

impl Registry {
    /// Names this registry among the replicas of a shared store, so it
    /// publishes and reads who heard which node.
    pub fn as_replica(mut self, name: &str) -> Registry {
        self.replica = Some(name.to_owned());
        self
    }

    /// Fences every write of this registry from now on by the lease
    /// `fence` holds (see [`crate::store::Store::fence_by`]).
    pub fn fence_by(&self, fence: crate::store::sql::Fence) {
        self.store.fence_by(fence);
    }

    /// A connection of its own listening for the rows written to the
    /// store's nodes and meta ([`crate::store::lease::NODES_CHANNEL`],
    /// [`crate::store::lease::META_CHANNEL`]); `None` on SQLite, where
    /// nobody else writes.
    pub fn listen_for_writes(&self) -> Result<Option<postgres::Client>, RegistryError> {
        use crate::store::lease::{META_CHANNEL, NODES_CHANNEL};
        Ok(self.store.listen(&[NODES_CHANNEL, META_CHANNEL])?)
    }

    /// The server processes of the store's connections, which name the
    /// notifications this registry's own writes cause (memory has those
    /// already).
    pub fn own_sessions(&self) -> std::collections::BTreeSet<u32> {
        self.store.own_sessions()
    }

    /// Takes the nodes `ids` as the store holds them now (every node, with
    /// `None`): rows another replica wrote. What heartbeats brought here
    /// stays; a node no longer stored is forgotten. Returns how many rows
    /// it read.
    pub async fn take_in(&self, ids: Option<&[i64]>) -> Result<usize, RegistryError> {
        let _write = self.write.lock().await;
        let nodes = match ids {
            None => self.store.nodes(None)?,
            Some(ids) => self.store.nodes_by_id(ids)?,
        };
        {
            let mut live = self.live();
            let stored: HashSet<i64> = nodes.iter().map(|n| n.id).collect();
            let gone: Vec<i64> = match ids {
                None => live
                    .nodes
                    .keys()
                    .filter(|id| !stored.contains(id))
                    .copied()
                    .collect(),
                Some(ids) => ids
                    .iter()
                    .filter(|id| !stored.contains(id))
                    .copied()
                    .collect(),
            };
            for id in gone {
                live.remove(id);
            }
            for node in &nodes {
                live.upsert(node);
            }
        }
        self.publish();
        Ok(nodes.len())
    }

    /// Gives every node a full grace from now, as a restart does: what a
    /// replica that starts to lead owes the nodes whose heartbeats went to
    /// the leader before it.
    pub fn fresh_grace(&self) {
        let now = Instant::now();
        for node in self.live().nodes.values_mut() {
            node.last_heard = now;
        }
    }

    /// The nodes this replica heard within twice the grace, each with how
    /// long ago in milliseconds.
    pub fn heard_here(&self) -> Vec<(i64, u64)> {
        let within = self.timing.grace * 2;
        self.live()
            .nodes
            .iter()
            .filter(|(_, node)| node.last_seen.is_some())
            .filter_map(|(id, node)| {
                let ago = node.last_heard.elapsed();
                (ago < within).then(|| (*id, u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)))
            })
            .collect()
    }

    /// Publishes `heard` ([`Registry::heard_here`]) as what this replica
    /// heard; nothing without a shared store.
    pub fn publish_heard(&self, heard: &[(i64, u64)]) -> Result<(), RegistryError> {
        let Some(replica) = &self.replica else {
            return Ok(());
        };
        Ok(self.store.publish_heard(replica, heard)?)
    }

    /// Notes whether the nodes heard here reached the store (or there were
    /// none to publish, so none are at risk).
    pub fn note_heard_published(&self, published: bool) {
        let mut since = self
            .heard_unpublished
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match (published, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(std::time::Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// How long the nodes heard here have not reached the store, while
    /// they do not: the leader takes those nodes for silent, and marks
    /// them `unreachable` once the grace runs out.
    pub fn heard_unpublished_for(&self) -> Option<Duration> {
        let since = *self
            .heard_unpublished
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        since.map(|at| at.elapsed())
    }

    /// Takes in what the other replicas heard lately: a node heard
    /// elsewhere more recently than here counts as heard then. Returns how
    /// many nodes it moved; nothing without a shared store.
    pub fn merge_heard(&self) -> Result<usize, RegistryError> {
        let Some(replica) = &self.replica else {
            return Ok(0);
        };
        let heard = self.store.heard_elsewhere(replica, self.timing.grace * 2)?;
        let now = Instant::now();
        let mut live = self.live();
        let mut moved = 0;
        for entry in heard {
            let Some(node) = live.nodes.get_mut(&entry.node_id) else {
                continue;
            };
            let at = now.checked_sub(entry.silent_for).unwrap_or(now);
            if at > node.last_heard {
                node.last_heard = at;
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// How often a replica that does not lead publishes what it heard: a
    /// fifth of the grace, between 200 ms and 5 s, so a node heard
    /// elsewhere is published well before the leader would take it for
    /// silent.
    pub fn heard_publish_interval(&self) -> Duration {
        (self.timing.grace / 5).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }
}
