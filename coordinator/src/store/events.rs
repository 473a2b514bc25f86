//! Node events: every transition and address change, with its time, its
//! reason and who caused it; read back newest first or paged in order.

use muster_proto::{EventSource, NodeState};

use super::sql::{args, Db};
use super::{parse_state, query, Store, StoreError};

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Row id: increases with time.
    pub seq: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// State before.
    pub from: Option<NodeState>,
    /// State after.
    pub to: NodeState,
    /// Why.
    pub reason: String,
    /// Who or what caused it.
    pub source: EventSource,
}

/// Appends one event inside the caller's transaction.
pub(super) fn record_event(
    tx: &mut Db<'_>,
    node_id: i64,
    at: i64,
    from: Option<&str>,
    to: &str,
    reason: &str,
    source: EventSource,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO node_events (node_id, at, from_state, to_state, reason, source) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        args![node_id, at, from, to, reason, source.as_str()],
    )
    .map(|_| ())
    .map_err(query("recording an event"))
}

impl Store {
    /// Every event of a node, oldest first.
    pub fn events(&self, node_id: i64) -> Result<Vec<Event>, StoreError> {
        self.events_after(node_id, 0, usize::MAX)
    }

    /// How many events a node has.
    pub fn events_total(&self, node_id: i64) -> Result<u64, StoreError> {
        self.with(|db| {
            db.query_one(
                "SELECT COUNT(*) FROM node_events WHERE node_id = ?1",
                args![node_id],
                |row| row.get(0),
            )
            .map_err(query("counting events"))
        })
    }

    /// The latest `limit` events of a node, oldest first.
    pub fn latest_events(&self, node_id: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let total = self.events_total(node_id)? as usize;
        let skip = total.saturating_sub(limit);
        let after: i64 = if skip == 0 {
            0
        } else {
            self.with(|db| {
                db.query_one(
                    "SELECT id FROM node_events WHERE node_id = ?1 ORDER BY id LIMIT 1 OFFSET ?2",
                    args![node_id, (skip - 1) as i64],
                    |row| row.get(0),
                )
                .map_err(query("finding the latest events"))
            })?
        };
        self.events_after(node_id, after, limit)
    }

    /// Up to `limit` events of a node with a sequence number above `after`,
    /// oldest first.
    pub fn events_after(
        &self,
        node_id: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.with(|db| {
            db.query(
                "SELECT id, at, from_state, to_state, reason, source FROM node_events \
                 WHERE node_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                args![node_id, after, limit],
                |row| {
                    Ok((
                        row.get::<i64>(0)?,
                        row.get::<i64>(1)?,
                        row.get::<Option<String>>(2)?,
                        row.get::<String>(3)?,
                        row.get::<String>(4)?,
                        row.get::<String>(5)?,
                    ))
                },
            )
            .map_err(query("listing events"))
        })?;
        let mut events = Vec::with_capacity(rows.len());
        for (seq, at, from, to, reason, source) in rows {
            events.push(Event {
                seq,
                at,
                from: from.as_deref().map(parse_state).transpose()?,
                to: parse_state(&to)?,
                reason,
                source: source.parse().map_err(|_| StoreError::Corrupt {
                    field: "node_events.source",
                    value: source.clone(),
                })?,
            });
        }
        Ok(events)
    }
}
