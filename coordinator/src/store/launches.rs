//! Launch jobs: a launch is recorded before its first RunInstances and
//! marked finished once what it launched is stored, so a coordinator that
//! died in between finds it unfinished and resumes it
//! ([`crate::registry`]'s strays). Each node keeps the job that launched
//! it, which is how a resumed job knows how many it still owes.

use super::sql::args;
use super::{now_ms, query, Store, StoreError};

/// An unfinished launch job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchJob {
    /// The id, tagged `muster:launch` on every instance it launches.
    pub id: String,
    /// The cluster's row id.
    pub cluster_id: i64,
    /// The cluster's name.
    pub cluster: String,
    /// How many nodes the job launches in all.
    pub count: u32,
    /// How many stored nodes it launched so far.
    pub launched: u32,
    /// When it was started or last resumed (unix ms).
    pub touched_at: i64,
}

impl Store {
    /// Records a job launching `count` nodes into cluster `cluster_id`.
    pub fn begin_launch_job(
        &self,
        id: &str,
        cluster_id: i64,
        count: u32,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.with(|db| {
            db.execute(
                "INSERT INTO launch_jobs (id, cluster_id, count, created_at, touched_at) \
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                args![id, cluster_id, count, now],
            )
            .map(|_| ())
            .map_err(query("recording a launch job"))
        })
    }

    /// Marks job `id` as being worked on now.
    pub fn touch_launch_job(&self, id: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE launch_jobs SET touched_at = ?2 WHERE id = ?1",
                args![id, now_ms()],
            )
            .map(|_| ())
            .map_err(query("resuming a launch job"))
        })
    }

    /// Marks job `id` finished: nothing more is launched for it.
    pub fn finish_launch_job(&self, id: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE launch_jobs SET finished_at = ?2 WHERE id = ?1 AND finished_at IS NULL",
                args![id, now_ms()],
            )
            .map(|_| ())
            .map_err(query("finishing a launch job"))
        })
    }

    /// Every unfinished job, oldest first, with how many nodes it has
    /// launched so far.
    pub fn unfinished_launch_jobs(&self) -> Result<Vec<LaunchJob>, StoreError> {
        self.with(|db| {
            db.query(
                "SELECT j.id, j.cluster_id, c.name, j.count, \
                 (SELECT COUNT(*) FROM nodes n WHERE n.launch_job = j.id), j.touched_at \
                 FROM launch_jobs j JOIN clusters c ON c.id = j.cluster_id \
                 WHERE j.finished_at IS NULL ORDER BY j.created_at, j.id",
                &[],
                |row| {
                    Ok(LaunchJob {
                        id: row.get(0)?,
                        cluster_id: row.get(1)?,
                        cluster: row.get(2)?,
                        count: row.get(3)?,
                        launched: row.get(4)?,
                        touched_at: row.get(5)?,
                    })
                },
            )
            .map_err(query("listing unfinished launch jobs"))
        })
    }
}
