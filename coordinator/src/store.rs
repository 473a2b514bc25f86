//! The coordinator's durable state: clusters, nodes, node events and
//! launch jobs. By default one SQLite file in the data dir, in WAL mode;
//! with `--store postgres://…`, a PostgreSQL database ([`sql`] runs the
//! same statements on both).
//!
//! Only transitions and address changes are written here; heartbeats live in
//! memory ([`crate::registry`]). Calls are short and synchronous: each one
//! takes a connection, runs one statement or one transaction, and
//! returns. Every write that touches more than one row is a transaction, so a
//! failed request leaves nothing half-written.
//!
//! The schema is versioned (SQLite's `PRAGMA user_version`, PostgreSQL's
//! `muster_schema` table); [`MIGRATIONS`] lists every step from an empty
//! database, and opening the store applies the missing ones.
//!
//! # Layout
//! This file opens the store and migrates it; [`sql`] is the interface to
//! both databases; [`clusters`] (clusters and their tokens), [`nodes`],
//! [`events`] and [`launches`] (launch jobs) hold the statements of each
//! table; [`history`] prunes what is past the retention; [`lease`] holds
//! the leader's lease when several coordinators share PostgreSQL, and
//! [`sessions`] their web console's sessions.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use muster_proto::NodeState;
use rusqlite::Connection;

use sql::{args, Database, Db, DbError};

pub mod clusters;
pub mod events;
pub mod heard;
pub mod history;
pub mod launches;
pub mod lease;
pub mod nodes;
pub mod sessions;
pub mod sql;

pub use clusters::{Cluster, ClusterToken, TokenPurpose, TokenRecord};
pub use events::Event;
pub use history::Pruned;
pub use launches::LaunchJob;
pub use nodes::{AdmittedBy, LaunchedInstance, Node, NodeRegistration};

pub use muster_coordinator_config::{StoreLocation, STORE_FILE};

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
    // 13: the web console's sessions when several coordinators share the
    // store, by the digest of their id, with the role and generation of
    // the token that opened them.
    "CREATE TABLE console_sessions (
        digest TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        generation TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    );",
];

/// Errors of the store, named after the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or configured.
    #[error("opening the store at {path}: {source}")]
    Open {
        /// The file or URL (without its password).
        path: String,
        /// The cause.
        source: DbError,
    },
    /// A schema migration failed.
    #[error("migrating the store to schema version {version}: {source}")]
    Migrate {
        /// The version being applied.
        version: usize,
        /// The cause.
        source: DbError,
    },
    /// The database holds a schema newer than this build knows.
    #[error("the store has schema version {found}, newer than this build's {known}")]
    TooNew {
        /// The database's version.
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
        source: DbError,
    },
    /// The database cannot be reached now (PostgreSQL restarting, the
    /// network away): nothing is known to be written; try again later.
    #[error("{operation}: the store is unavailable: {source}")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        source: DbError,
    },
    /// What was asked is SQLite's only (a backup, a restore).
    #[error("{0}")]
    NotHere(String),
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

impl From<DbError> for StoreError {
    fn from(source: DbError) -> Self {
        query("using the store")(source)
    }
}

impl StoreError {
    /// The database could not be reached: the caller may try again later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Names a database error after the operation it failed.
fn query(operation: &'static str) -> impl FnOnce(DbError) -> StoreError {
    move |source| {
        if source.is_unavailable() {
            StoreError::Unavailable { operation, source }
        } else {
            StoreError::Query { operation, source }
        }
    }
}

/// The store: clusters, nodes, events and launch jobs, in SQLite or
/// PostgreSQL.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

/// Unix milliseconds `ms` as RFC 3339, to the millisecond (before 1970
/// reads as 1970).
pub fn rfc3339_ms(ms: i64) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `location` and migrates it.
    /// On PostgreSQL its calls use up to `connections` connections at
    /// once.
    pub fn open_at(location: &StoreLocation, connections: u32) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Sqlite(path) => Store::open(path),
            StoreLocation::Postgres(url) => Store::open_postgres_with(url, connections),
        }
    }

    /// Opens (creating if needed) the SQLite store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: source.into(),
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
        conn.set_prepared_statement_cache_capacity(64);
        let store = Store {
            db: Database::Sqlite(Mutex::new(conn)),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens the PostgreSQL store at `url` (`postgres://…`), creating its
    /// tables if needed, and migrates it. Several coordinators may open
    /// one database; only the leader writes ([`lease`]).
    pub fn open_postgres(url: &str) -> Result<Store, StoreError> {
        Store::open_postgres_with(url, muster_coordinator_config::DEFAULT_STORE_CONNECTIONS)
    }

    /// [`Store::open_postgres`], with up to `connections` connections.
    pub fn open_postgres_with(url: &str, connections: u32) -> Result<Store, StoreError> {
        let pg = sql::Postgres::new(url, connections as usize).map_err(StoreError::NotHere)?;
        let shown = pg.shown().to_owned();
        let store = Store {
            db: Database::Postgres(Box::new(pg)),
        };
        store
            .db
            .with(|db| db.execute("SELECT 1", &[]).map(|_| ()))
            .map_err(|source| StoreError::Open {
                path: shown,
                source,
            })?;
        store.migrate()?;
        Ok(store)
    }

    /// An in-memory SQLite store, for unit tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: ":memory:".into(),
            source: source.into(),
        })?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| query("enabling foreign keys")(e.into()))?;
        conn.set_prepared_statement_cache_capacity(64);
        let store = Store {
            db: Database::Sqlite(Mutex::new(conn)),
        };
        store.migrate()?;
        Ok(store)
    }

    /// Runs `work` on the store's connection.
    fn with<R: Send>(
        &self,
        work: impl FnOnce(&mut Db<'_>) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        self.db.with(work)
    }

    /// Runs `work` in one transaction: all of it lands, or none.
    fn transaction<R: Send>(
        &self,
        work: impl FnOnce(&mut Db<'_>) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        self.db.with(|db| db.transaction(work))
    }

    /// Fences every write from now on by the lease `fence` holds: once
    /// another coordinator takes the lease over, they fail and write
    /// nothing. SQLite's store has one coordinator and no fence.
    pub fn fence_by(&self, fence: sql::Fence) {
        if let Database::Postgres(pg) = &self.db {
            pg.set_fence(fence);
        }
    }

    /// A connection of its own listening on `channels`, for a PostgreSQL
    /// store; `None` on SQLite, where nobody else writes.
    pub fn listen(&self, channels: &[&str]) -> Result<Option<postgres::Client>, StoreError> {
        match &self.db {
            Database::Sqlite(_) => Ok(None),
            Database::Postgres(pg) => {
                let listen = || {
                    let mut client = pg.open_client()?;
                    for channel in channels {
                        client.batch_execute(&format!("LISTEN {channel}"))?;
                    }
                    Ok::<_, DbError>(client)
                };
                sql::off_runtime(listen)
                    .map(Some)
                    .map_err(query("listening for the leader's writes"))
            }
        }
    }

    /// On PostgreSQL, the server processes of the store's connections:
    /// the `process_id` of the notifications its own writes cause.
    pub fn own_sessions(&self) -> std::collections::BTreeSet<u32> {
        match &self.db {
            Database::Sqlite(_) => Default::default(),
            Database::Postgres(pg) => pg.sessions(),
        }
    }

    /// Whether the store is PostgreSQL's.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Database::Postgres(_))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let migrate =
            |version: usize| move |source: DbError| StoreError::Migrate { version, source };
        self.transaction(|db| {
            if db.is_postgres() {
                // Two coordinators starting at once on an empty database
                // take turns here: the second finds the schema made.
                db.execute("SELECT pg_advisory_xact_lock(?1)", args![sql::MIGRATE_LOCK])
                    .map_err(migrate(0))?;
                // "relation already exists, skipping" at every start is
                // not worth a line in the log.
                db.batch("SET LOCAL client_min_messages = warning")
                    .map_err(migrate(0))?;
                db.batch("CREATE TABLE IF NOT EXISTS muster_schema (version INTEGER NOT NULL)")
                    .map_err(migrate(0))?;
                db.batch(lease::TABLES).map_err(migrate(0))?;
            }
            let current = read_version(db).map_err(migrate(0))?;
            if current as usize > MIGRATIONS.len() {
                return Err(StoreError::TooNew {
                    found: current,
                    known: MIGRATIONS.len(),
                });
            }
            for (index, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
                let version = index + 1;
                db.batch(step).map_err(migrate(version))?;
                write_version(db, version as i64).map_err(migrate(version))?;
                tracing::info!(version, "store schema migrated");
            }
            if db.is_postgres() {
                db.batch(lease::NODES_TRIGGER)
                    .and_then(|()| db.batch(lease::META_TRIGGER))
                    .map_err(migrate(MIGRATIONS.len()))?;
            }
            Ok(())
        })
    }

    /// The schema version of the open store.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|db| read_version(db).map_err(query("reading the schema version")))
    }
}

/// The schema version: SQLite's `user_version`, or PostgreSQL's
/// `muster_schema` row (0 before the first step).
fn read_version(db: &mut Db<'_>) -> Result<i64, DbError> {
    if db.is_postgres() {
        Ok(db
            .query_opt("SELECT version FROM muster_schema", &[], |row| row.get(0))?
            .unwrap_or(0))
    } else {
        db.query_one("PRAGMA user_version", &[], |row| row.get(0))
    }
}

fn write_version(db: &mut Db<'_>, version: i64) -> Result<(), DbError> {
    if db.is_postgres() {
        if db.execute("UPDATE muster_schema SET version = ?1", args![version])? == 0 {
            db.execute(
                "INSERT INTO muster_schema (version) VALUES (?1)",
                args![version],
            )?;
        }
        Ok(())
    } else {
        // PRAGMA takes no parameters; the version is a number we made.
        db.batch(&format!("PRAGMA user_version = {version}"))
    }
}

impl Store {
    /// Writes an online, consistent copy of the store to `path` (a new
    /// file) with SQLite's backup API. Writes wait while it runs: it holds
    /// the connection. A PostgreSQL store is backed up by PostgreSQL's own
    /// means.
    pub fn backup_to(&self, path: &Path) -> Result<(), StoreError> {
        match &self.db {
            Database::Sqlite(conn) => conn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .backup(rusqlite::DatabaseName::Main, path, None)
                .map_err(|e| query("copying the store")(e.into())),
            Database::Postgres(_) => Err(StoreError::NotHere(
                "the store is PostgreSQL's: back it up with pg_dump or the database's \
                 snapshots"
                    .to_owned(),
            )),
        }
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
                    source: source.into(),
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
            source: source.into(),
        })?;
        target
            .restore(
                rusqlite::DatabaseName::Main,
                backup,
                None::<fn(rusqlite::backup::Progress)>,
            )
            .map_err(|e| query("restoring the store")(e.into()))?;
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
        self.with(|db| {
            db.query_opt("SELECT value FROM meta WHERE key = ?1", args![key], |row| {
                row.get(0)
            })
            .map_err(query("reading the coordinator's own facts"))
        })
    }

    /// Sets a value the coordinator keeps about itself.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                args![key, value],
            )
            .map(|_| ())
            .map_err(query("writing the coordinator's own facts"))
        })
    }

    /// This coordinator's id ([`META_COORDINATOR`]), minted on first use.
    /// A restored backup keeps it.
    pub fn coordinator_id(&self, mint: impl FnOnce() -> String) -> Result<String, StoreError> {
        self.meta_first(META_COORDINATOR, &mint())
    }

    /// The value of `key`, set to `value` if it had none: the first writer
    /// wins, and every later caller reads what it wrote.
    pub fn meta_first(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                args![key, value],
            )
            .map_err(query("writing the coordinator's own facts"))?;
            db.query_one("SELECT value FROM meta WHERE key = ?1", args![key], |row| {
                row.get(0)
            })
            .map_err(query("reading the coordinator's own facts"))
        })
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

/// The PostgreSQL server the tests start, shared with the end-to-end
/// harness (one file, compiled into both).
#[cfg(test)]
#[path = "../../tests/src/postgres.rs"]
mod pg_server;
