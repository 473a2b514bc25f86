//! The coordinator's durable state: one SQLite file in the data dir, in WAL
//! mode, holding clusters, nodes and node events.
//!
//! Only transitions and address changes are written here; heartbeats live in
//! memory ([`crate::registry`]). Calls are short and synchronous: each one
//! takes the connection lock, runs one statement or one transaction, and
//! returns. Every write that touches more than one row is a transaction, so a
//! failed request leaves nothing half-written.
//!
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] lists
//! every step from an empty file, and [`Store::open`] applies the missing ones.
//!
//! # Layout
//! This file opens the store and migrates it; [`clusters`] (clusters and
//! their tokens), [`nodes`], [`events`] and [`launches`] (launch jobs) hold
//! the statements of each table; [`history`] prunes what is past the
//! retention.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use muster_proto::NodeState;
use rusqlite::{Connection, OptionalExtension};

pub mod clusters;
pub mod events;
pub mod history;
pub mod launches;
pub mod nodes;

pub use clusters::{Cluster, ClusterToken, TokenPurpose, TokenRecord};
pub use events::Event;
pub use history::Pruned;
pub use launches::LaunchJob;
pub use nodes::{AdmittedBy, LaunchedInstance, Node, NodeRegistration};

/// The store's file in the data dir.
pub const STORE_FILE: &str = "muster.db";

/// Schema steps, applied in order. Step `i` brings `user_version` to `i + 1`.
/// Never edit a step that has shipped; add a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: clusters, nodes, node events.
    "CREATE TABLE clusters (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        join_token_hash TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY,
        cluster_id INTEGER NOT NULL REFERENCES clusters(id),
        name TEXT NOT NULL,
        instance_id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        availability_zone TEXT NOT NULL,
        region TEXT NOT NULL,
        private_ipv4 TEXT,
        public_ipv4 TEXT,
        credential_hash TEXT UNIQUE,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        UNIQUE (cluster_id, name)
    );
    CREATE TABLE node_events (
        id INTEGER PRIMARY KEY,
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        at INTEGER NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX node_events_by_node ON node_events(node_id, id);",
    // 2: who or what caused each event.
    "ALTER TABLE node_events ADD COLUMN source TEXT NOT NULL DEFAULT 'agent';",
    // 3: launched clusters: their state, launch spec and resources (JSON),
    // the subnet of each launched node, and further join tokens (hashed).
    "ALTER TABLE clusters ADD COLUMN state TEXT NOT NULL DEFAULT 'active';
    ALTER TABLE clusters ADD COLUMN launch TEXT;
    ALTER TABLE nodes ADD COLUMN subnet_id TEXT;
    CREATE TABLE cluster_tokens (
        id INTEGER PRIMARY KEY,
        cluster_id INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );",
    // 4: bring-your-own nodes, which EC2 is never asked about.
    "ALTER TABLE nodes ADD COLUMN byon INTEGER NOT NULL DEFAULT 0;",
    // 5: join tokens that expire (unix ms; NULL never).
    "ALTER TABLE clusters ADD COLUMN join_token_expires_at INTEGER;",
    // 6: further join tokens that expire too (unix ms; NULL never).
    "ALTER TABLE cluster_tokens ADD COLUMN expires_at INTEGER;",
    // 7: what the coordinator knows of itself (the AWS account it acts
    // in), and nodes terminated only because EC2 did not know them, which
    // a later register EC2 confirms brings back.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    ALTER TABLE nodes ADD COLUMN unseen INTEGER NOT NULL DEFAULT 0;",
    // 8: launches as jobs recorded before their first RunInstances, and
    // the job that launched each node.
    "CREATE TABLE launch_jobs (
        id TEXT PRIMARY KEY,
        cluster_id INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
        count INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        touched_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    ALTER TABLE nodes ADD COLUMN launch_job TEXT;",
    // 9: tokens counted and capped, and bring-your-own machines an
    // operator removed, which may not join again until admitted.
    "ALTER TABLE cluster_tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cluster_tokens ADD COLUMN max_nodes INTEGER;
    ALTER TABLE cluster_tokens ADD COLUMN created INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE clusters ADD COLUMN join_token_uses INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE nodes ADD COLUMN token_id INTEGER;
    CREATE TABLE banned_machines (
        cluster_id INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
        machine TEXT NOT NULL,
        banned_at INTEGER NOT NULL,
        PRIMARY KEY (cluster_id, machine)
    );",
    // 10: clusters with a lifetime, removed when it ends.
    "ALTER TABLE clusters ADD COLUMN expires_at INTEGER;",
    // 11: nodes an operator drained (`node drain`), which stay out of
    // their cluster's round robin, whatever their agents say, until
    // undrained.
    "ALTER TABLE nodes ADD COLUMN drained INTEGER NOT NULL DEFAULT 0;",
    // 12: a node's IPv6 address, answered as AAAA beside its A records.
    "ALTER TABLE nodes ADD COLUMN ipv6 TEXT;",
];

/// Errors of the store, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or configured.
    #[error("opening the store at {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A schema migration failed.
    #[error("migrating the store to schema version {version}: {source}")]
    Migrate {
        /// The version being applied.
        version: usize,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The file holds a schema newer than this build knows.
    #[error("the store has schema version {found}, newer than this build's {known}")]
    TooNew {
        /// The file's version.
        found: i64,
        /// The newest this build knows.
        known: usize,
    },
    /// A query failed.
    #[error("{operation}: {source}")]
    Query {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A cluster with that name exists already.
    #[error("cluster {0:?} exists already")]
    ClusterExists(String),
    /// A write decided from a state that changed meanwhile (a register
    /// that met `node rm`, or a cluster being removed): nothing written.
    #[error("{what} changed while this request was decided: {now}")]
    Changed {
        /// What changed.
        what: String,
        /// What it is now.
        now: String,
    },
    /// Another write took the same unique name or instance at the same
    /// time; nothing written.
    #[error("{0} was taken by another request at the same time; try again")]
    Taken(String),
    /// A bring-your-own token has created all the nodes it may; nothing
    /// written.
    #[error("the bring-your-own token has created the {0} nodes it may; mint another (cluster byon-token --max-nodes N)")]
    TokenSpent(u32),
    /// A backup could not be restored; nothing was written.
    #[error("restoring {path}: {why}")]
    Restore {
        /// The backup or the store.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A stored value could not be read back.
    #[error("stored {field} {value:?} is not valid")]
    Corrupt {
        /// The column.
        field: &'static str,
        /// The value found.
        value: String,
    },
}

fn query(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}

/// The SQLite store.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    /// An in-memory store, for unit tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: ":memory:".into(),
            source,
        })?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(query("enabling foreign keys"))?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent
        // (the transaction rolls back on drop), so the poison is ignored.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let current: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(query("reading the schema version"))?;
        if current as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                found: current,
                known: MIGRATIONS.len(),
            });
        }
        for (index, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = index + 1;
            let tx = conn
                .transaction()
                .map_err(|source| StoreError::Migrate { version, source })?;
            tx.execute_batch(step)
                .and_then(|()| tx.pragma_update(None, "user_version", version as i64))
                .and_then(|()| tx.commit())
                .map_err(|source| StoreError::Migrate { version, source })?;
            tracing::info!(version, "store schema migrated");
        }
        Ok(())
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.lock()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(query("reading the schema version"))
    }
}

impl Store {
    /// Writes an online, consistent copy of the store to `path` (a new
    /// file) with SQLite's backup API. Writes wait while it runs: it holds
    /// the connection.
    pub fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        self.lock()
            .backup(rusqlite::DatabaseName::Main, path, None)
            .map_err(query("copying the store"))
    }

    /// Brings a copy made by [`Store::backup_to`] back as the store at
    /// `store_path`, which must not exist yet: a restore never overwrites
    /// a store. The copy must be a store this build can read; it is
    /// migrated to this build's schema.
    pub fn restore(backup: &Path, store_path: &Path) -> Result<Store, StoreError> {
        if store_path.exists() {
            return Err(StoreError::Restore {
                path: store_path.display().to_string(),
                why: "a store is there already; restore into a data dir without one".to_owned(),
            });
        }
        let source =
            Connection::open_with_flags(backup, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|source| StoreError::Open {
                    path: backup.display().to_string(),
                    source,
                })?;
        let not_a_store = |why: String| StoreError::Restore {
            path: backup.display().to_string(),
            why,
        };
        let version: i64 = source
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| not_a_store(format!("not a SQLite file: {e}")))?;
        if version < 1 {
            return Err(not_a_store("not a muster store (no schema)".to_owned()));
        }
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        source
            .query_row("SELECT count(*) FROM clusters", [], |row| {
                row.get::<_, i64>(0)
            })
            .map_err(|e| not_a_store(format!("not a muster store: {e}")))?;
        drop(source);
        let mut target = Connection::open(store_path).map_err(|source| StoreError::Open {
            path: store_path.display().to_string(),
            source,
        })?;
        target
            .restore(
                rusqlite::DatabaseName::Main,
                backup,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .map_err(query("restoring the store"))?;
        drop(target);
        Store::open(store_path)
    }
}

/// The key of the AWS account the coordinator acts in, in `meta`.
pub const META_ACCOUNT: &str = "aws_account";

/// The key of the coordinator's own id, in `meta`: minted once, tagged on
/// everything it launches or makes in EC2 (`muster:coordinator`), so that
/// it only ever adopts or cleans up what is its own, beside other
/// coordinators in the same account.
pub const META_COORDINATOR: &str = "coordinator_id";

/// The key of the regions launches were ever prepared in, in `meta`
/// (a JSON list): where leftovers are looked for.
pub const META_LAUNCH_REGIONS: &str = "launch_regions";

impl Store {
    /// A value the coordinator keeps about itself; `None` if never set.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.lock()
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                rusqlite::params![key],
                |row| row.get(0),
            )
            .optional()
            .map_err(query("reading the coordinator's own facts"))
    }

    /// Sets a value the coordinator keeps about itself.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                rusqlite::params![key, value],
            )
            .map(|_| ())
            .map_err(query("writing the coordinator's own facts"))
    }

    /// This coordinator's id ([`META_COORDINATOR`]), minted on first use.
    /// A restored backup keeps it.
    pub fn coordinator_id(&self, mint: impl FnOnce() -> String) -> Result<String, StoreError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            rusqlite::params![META_COORDINATOR, mint()],
        )
        .map_err(query("minting the coordinator's id"))?;
        conn.query_row(
            "SELECT value FROM meta WHERE key = ?1",
            rusqlite::params![META_COORDINATOR],
            |row| row.get(0),
        )
        .map_err(query("reading the coordinator's id"))
    }

    /// The regions launches were ever prepared in.
    pub fn launch_regions(&self) -> Result<Vec<String>, StoreError> {
        let Some(json) = self.meta(META_LAUNCH_REGIONS)? else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&json).map_err(|_| StoreError::Corrupt {
            field: "meta.launch_regions",
            value: json,
        })
    }

    /// Adds `region` to [`Store::launch_regions`].
    pub fn add_launch_region(&self, region: &str) -> Result<(), StoreError> {
        let mut regions = self.launch_regions()?;
        if !regions.iter().any(|r| r == region) {
            regions.push(region.to_owned());
            regions.sort();
            let json = serde_json::to_string(&regions).unwrap_or_default();
            self.set_meta(META_LAUNCH_REGIONS, &json)?;
        }
        Ok(())
    }
}

/// A node state as stored; a value no state has means the file is corrupt.
fn parse_state(value: &str) -> Result<NodeState, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        field: "state",
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests;
