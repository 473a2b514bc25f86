//! The leader's lease, when several coordinators share one PostgreSQL
//! store: a row in `muster_lease` naming the holder, the term and when the
//! lease runs out, and a row per coordinator in `muster_replicas` saying
//! when it was last seen and where it serves.
//!
//! # Why a row, not an advisory lock
//! A session advisory lock is held as long as the leader's connection
//! lives, and a leader that is paused (SIGSTOP, a frozen VM) keeps its
//! connection alive through the kernel: nobody could take over, and there
//! is no term to fence its writes with. A row with an expiry is taken over
//! once its holder stops renewing, whatever the holder's connection does,
//! and its term, raised on every takeover, is what the leader's writes are
//! fenced by ([`super::sql::Fence`]).
//!
//! # Whose clock
//! Every time here is the database's (`clock_timestamp()`), so the
//! coordinators' clocks need not agree. The holder counts its own lease
//! from when it *sent* a renewal, by its monotonic clock, which ends no
//! later than the database's expiry ([`crate::leader`]).
//!
//! The lease runs on a connection of its own, so a renewal never waits
//! behind the store's calls.
//!
//! Every write to a row of `nodes` is announced on [`NODES_CHANNEL`] by a
//! trigger, so every replica takes in the rows the others wrote as soon as
//! their transactions commit ([`crate::replica`]).

use std::time::Duration;

use super::sql::{args, Database, Postgres};
use super::{query, StoreError};

/// The lease and replica tables, and the nodes each replica heard
/// ([`super::heard`]), made at open beside `muster_schema`.
pub const TABLES: &str = "CREATE TABLE IF NOT EXISTS muster_lease (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        term BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        since BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS muster_replicas (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        seen_at BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS muster_heard (
        replica TEXT PRIMARY KEY,
        published_at BIGINT NOT NULL,
        heard TEXT NOT NULL
    );";

/// The channel every write to a row of `nodes` is announced on, with the
/// row's id, when its transaction commits: each replica takes the rows
/// the others wrote into its memory ([`crate::replica`]).
pub const NODES_CHANNEL: &str = "muster_nodes";

/// The trigger announcing writes to `nodes` on [`NODES_CHANNEL`]; made
/// at open, once the schema has the table (PostgreSQL 14 or later).
/// PostgreSQL folds the same id announced twice in one transaction.
pub const NODES_TRIGGER: &str = "CREATE OR REPLACE FUNCTION muster_nodes_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('muster_nodes', OLD.id::text);
            ELSE
                PERFORM pg_notify('muster_nodes', NEW.id::text);
            END IF;
            RETURN NULL;
        END $$;
    CREATE OR REPLACE TRIGGER muster_nodes_changed
        AFTER INSERT OR UPDATE OR DELETE ON nodes
        FOR EACH ROW EXECUTE FUNCTION muster_nodes_changed();";

/// The channel every write to a row of `meta` is announced on, with its
/// key: a replica reads the tokens again when another changed them
/// ([`crate::credentials::Credentials::reload`]).
pub const META_CHANNEL: &str = "muster_meta";

/// The trigger announcing writes to `meta` on [`META_CHANNEL`].
pub const META_TRIGGER: &str = "CREATE OR REPLACE FUNCTION muster_meta_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN
            PERFORM pg_notify('muster_meta', NEW.key);
            RETURN NULL;
        END $$;
    CREATE OR REPLACE TRIGGER muster_meta_changed
        AFTER INSERT OR UPDATE ON meta
        FOR EACH ROW EXECUTE FUNCTION muster_meta_changed();";

/// The database's clock, in Unix milliseconds.
pub(super) const DB_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

/// The lease as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    /// Who holds it (or held it last).
    pub holder: String,
    /// Its term: raised by one on every takeover.
    pub term: i64,
    /// When it runs out, in Unix milliseconds by the database's clock.
    pub expires_at: i64,
    /// When its holder took it.
    pub since: i64,
    /// The database's clock when this was read.
    pub now: i64,
}

/// A coordinator seen lately on the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    /// Its name (the lease's holder, when it leads).
    pub name: String,
    /// The URL it serves on.
    pub url: String,
    /// When it started, in Unix milliseconds.
    pub started_at: i64,
    /// When it was last seen, by the database's clock.
    pub seen_at: i64,
}

/// The lease's own connection to the shared store.
#[derive(Debug)]
pub struct LeaseStore {
    db: Database,
}

impl LeaseStore {
    /// A connection of its own to the PostgreSQL store at `url`, whose
    /// tables [`super::Store::open_postgres`] has made.
    pub fn open(url: &str) -> Result<LeaseStore, StoreError> {
        let pg = Postgres::new(url, 1).map_err(StoreError::NotHere)?;
        Ok(LeaseStore {
            db: Database::Postgres(Box::new(pg)),
        })
    }

    /// Takes the lease for `holder` for `time` if nobody holds it, its
    /// holder let it run out, or it is `holder`'s own (held by this
    /// coordinator before a restart); returns the new term, or `None`
    /// while another holds it.
    pub fn try_acquire(&self, holder: &str, time: Duration) -> Result<Option<i64>, StoreError> {
        let sql = format!(
            "INSERT INTO muster_lease (name, holder, term, expires_at, since) \
             VALUES ('leader', ?1, 1, {DB_NOW} + ?2, {DB_NOW}) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
             term = muster_lease.term + 1, expires_at = excluded.expires_at, \
             since = excluded.since \
             WHERE muster_lease.expires_at <= {DB_NOW} OR muster_lease.holder = excluded.holder \
             RETURNING term"
        );
        self.db.with(|db| {
            db.query_opt(&sql, args![holder, millis(time)], |row| row.get(0))
                .map_err(query("taking the leader's lease"))
        })
    }

    /// Extends `holder`'s lease of `term` by `time` from now; `false` when
    /// another has taken it over meanwhile.
    pub fn renew(&self, holder: &str, term: i64, time: Duration) -> Result<bool, StoreError> {
        let sql = format!(
            "UPDATE muster_lease SET expires_at = {DB_NOW} + ?3 \
             WHERE name = 'leader' AND holder = ?1 AND term = ?2"
        );
        self.db.with(|db| {
            db.execute(&sql, args![holder, term, millis(time)])
                .map(|changed| changed == 1)
                .map_err(query("renewing the leader's lease"))
        })
    }

    /// Ends `holder`'s lease of `term` now, so a standby takes over at
    /// once instead of waiting for it to run out.
    pub fn release(&self, holder: &str, term: i64) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE muster_lease SET expires_at = {DB_NOW} \
             WHERE name = 'leader' AND holder = ?1 AND term = ?2"
        );
        self.db.with(|db| {
            db.execute(&sql, args![holder, term])
                .map(|_| ())
                .map_err(query("releasing the leader's lease"))
        })
    }

    /// The lease, if any coordinator ever took it.
    pub fn read(&self) -> Result<Option<LeaseRow>, StoreError> {
        let sql = format!(
            "SELECT holder, term, expires_at, since, {DB_NOW} FROM muster_lease \
             WHERE name = 'leader'"
        );
        self.db.with(|db| {
            db.query_opt(&sql, &[], |row| {
                Ok(LeaseRow {
                    holder: row.get(0)?,
                    term: row.get(1)?,
                    expires_at: row.get(2)?,
                    since: row.get(3)?,
                    now: row.get(4)?,
                })
            })
            .map_err(query("reading the leader's lease"))
        })
    }

    /// Says `name` (serving at `url`, started at `started_at`) is alive.
    pub fn seen(&self, name: &str, url: &str, started_at: i64) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO muster_replicas (name, url, started_at, seen_at) \
             VALUES (?1, ?2, ?3, {DB_NOW}) \
             ON CONFLICT (name) DO UPDATE SET url = excluded.url, seen_at = excluded.seen_at"
        );
        self.db.with(|db| {
            db.execute(&sql, args![name, url, started_at])
                .map(|_| ())
                .map_err(query("saying this coordinator is alive"))
        })
    }

    /// The coordinators seen within `within`, by name; those not seen for
    /// a day are forgotten.
    pub fn replicas(&self, within: Duration) -> Result<Vec<ReplicaRow>, StoreError> {
        let forget = format!("DELETE FROM muster_replicas WHERE seen_at < {DB_NOW} - 86400000");
        let list = format!(
            "SELECT name, url, started_at, seen_at FROM muster_replicas \
             WHERE seen_at >= {DB_NOW} - ?1 ORDER BY name"
        );
        self.db.with(|db| {
            db.execute(&forget, &[])
                .map_err(query("forgetting coordinators long gone"))?;
            db.query(&list, args![millis(within)], |row| {
                Ok(ReplicaRow {
                    name: row.get(0)?,
                    url: row.get(1)?,
                    started_at: row.get(2)?,
                    seen_at: row.get(3)?,
                })
            })
            .map_err(query("listing the coordinators"))
        })
    }
}

fn millis(time: Duration) -> i64 {
    i64::try_from(time.as_millis()).unwrap_or(i64::MAX)
}
