//! History past the retention: terminated nodes with their events,
//! expired tokens and finished launch jobs, deleted in one transaction
//! ([`Store::prune`]).

use rusqlite::params;

use super::{query, Store, StoreError};

/// What [`Store::prune`] deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// The terminated nodes deleted (their events went with them), by id.
    pub nodes: Vec<i64>,
    /// Expired tokens deleted.
    pub tokens: usize,
    /// Finished launch jobs deleted.
    pub jobs: usize,
}

impl Store {
    /// Deletes the history older than `before` (unix ms): nodes terminated
    /// before it, with their events; tokens that expired before it; launch
    /// jobs finished before it. One transaction.
    pub fn prune(&self, before: i64) -> Result<Pruned, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(query("starting a prune"))?;
        let nodes = {
            let mut statement = tx
                .prepare(
                    "DELETE FROM nodes WHERE state = 'terminated' AND updated_at < ?1 RETURNING id",
                )
                .map_err(query("pruning terminated nodes"))?;
            let ids = statement
                .query_map(params![before], |row| row.get(0))
                .map_err(query("pruning terminated nodes"))?;
            ids.collect::<Result<Vec<i64>, _>>()
                .map_err(query("pruning terminated nodes"))?
        };
        let tokens = tx
            .execute(
                "DELETE FROM cluster_tokens WHERE expires_at IS NOT NULL AND expires_at < ?1",
                params![before],
            )
            .map_err(query("pruning expired tokens"))?;
        let jobs = tx
            .execute(
                "DELETE FROM launch_jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
                params![before],
            )
            .map_err(query("pruning finished launch jobs"))?;
        tx.commit().map_err(query("committing a prune"))?;
        Ok(Pruned {
            nodes,
            tokens,
            jobs,
        })
    }
}
