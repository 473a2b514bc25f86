//! Who heard which node, when several coordinators share the store.
//!
//! Heartbeats may reach any replica, and they move memory only. So that
//! the leader does not take a node whose heartbeats go elsewhere for a
//! silent one, every replica that does not lead publishes, every few
//! seconds, one row in `muster_heard`: the nodes it heard lately, each with
//! how long ago. The leader reads the rows when a node looks silent to it
//! ([`crate::registry`]'s liveness), and so does a register that would
//! take over a node that looks silent. One statement per replica per
//! period, whatever the fleet's size: far fewer writes than heartbeats.
//!
//! Times are ages, not instants: the row's own age is read by the
//! database's clock, so the coordinators' clocks need not agree.

use std::time::Duration;

use super::lease::DB_NOW;
use super::sql::args;
use super::{query, Store, StoreError};

/// A node another replica heard: its row id and how long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeardElsewhere {
    /// The node's row id.
    pub node_id: i64,
    /// How long ago the replica heard it, counted to this read.
    pub silent_for: Duration,
}

impl Store {
    /// Replaces what `replica` says it heard: each node's id and how long
    /// ago, in milliseconds. Nothing on SQLite, where one coordinator
    /// hears everything.
    pub fn publish_heard(&self, replica: &str, heard: &[(i64, u64)]) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        let mut text = String::with_capacity(heard.len() * 16);
        for (id, ago) in heard {
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(&format!("{id}:{ago}"));
        }
        let upsert = format!(
            "INSERT INTO muster_heard (replica, published_at, heard) VALUES (?1, {DB_NOW}, ?2) \
             ON CONFLICT (replica) DO UPDATE SET published_at = excluded.published_at, \
             heard = excluded.heard"
        );
        self.with(|db| {
            db.execute(&upsert, args![replica, text])
                .map(|_| ())
                .map_err(query("publishing the nodes this coordinator heard"))
        })
    }

    /// What the replicas other than `replica` published within `within`:
    /// every node they heard, as often as they heard it. Empty on SQLite.
    pub fn heard_elsewhere(
        &self,
        replica: &str,
        within: Duration,
    ) -> Result<Vec<HeardElsewhere>, StoreError> {
        if !self.is_postgres() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {DB_NOW} - published_at, heard FROM muster_heard \
             WHERE replica <> ?1 AND published_at >= {DB_NOW} - ?2"
        );
        let within_ms = i64::try_from(within.as_millis()).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String)> = self.with(|db| {
            db.query(&sql, args![replica, within_ms], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(query("reading the nodes other coordinators heard"))
        })?;
        let mut heard = Vec::new();
        for (age, text) in rows {
            let age = u64::try_from(age).unwrap_or(0);
            for entry in text.split(',').filter(|e| !e.is_empty()) {
                let parsed = entry
                    .split_once(':')
                    .and_then(|(id, ago)| Some((id.parse().ok()?, ago.parse::<u64>().ok()?)));
                let Some((node_id, ago)) = parsed else {
                    return Err(StoreError::Corrupt {
                        field: "muster_heard.heard",
                        value: entry.chars().take(64).collect(),
                    });
                };
                heard.push(HeardElsewhere {
                    node_id,
                    silent_for: Duration::from_millis(age.saturating_add(ago)),
                });
            }
        }
        Ok(heard)
    }
}
