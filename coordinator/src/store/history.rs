//! History past the retention: terminated nodes with their events,
//! expired tokens and finished launch jobs, deleted in one transaction
//! ([`Store::prune`]).

use super::sql::args;
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
        self.transaction(|tx| {
            let nodes = tx
                .query(
                    "DELETE FROM nodes WHERE state = 'terminated' AND updated_at < ?1 RETURNING id",
                    args![before],
                    |row| row.get(0),
                )
                .map_err(query("pruning terminated nodes"))?;
            let tokens = tx
                .execute(
                    "DELETE FROM cluster_tokens WHERE expires_at IS NOT NULL AND expires_at < ?1",
                    args![before],
                )
                .map_err(query("pruning expired tokens"))? as usize;
            let jobs = tx
                .execute(
                    "DELETE FROM launch_jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
                    args![before],
                )
                .map_err(query("pruning finished launch jobs"))? as usize;
            Ok(Pruned {
                nodes,
                tokens,
                jobs,
            })
        })
    }
}
