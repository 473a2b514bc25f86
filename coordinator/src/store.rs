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

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use muster_proto::{ClusterState, EventSource, NodeState};
use rusqlite::{params, Connection, OptionalExtension, Row};

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

/// A stored cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Row id.
    pub id: i64,
    /// Name (a DNS label).
    pub name: String,
    /// Hex SHA-256 of the join token.
    pub join_token_hash: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Active, removing or removed.
    pub state: ClusterState,
    /// What its nodes are launched as and with, as JSON
    /// ([`crate::launcher::ClusterLaunch`]); `None` if muster launches none.
    pub launch: Option<String>,
    /// When the join token stops working (unix ms); `None` never.
    pub join_token_expires_at: Option<i64>,
}

/// A join token beyond the cluster's own, by what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Carried in the user data of one launch: it registers only instances
    /// muster launched into the cluster.
    Launch,
    /// Given to machines without IMDS, which name themselves: no EC2 check.
    Byon,
    /// Carried in user data rendered on request (`userdata CLUSTER`): like
    /// the cluster's join token, it registers any instance EC2 confirms.
    Join,
}

/// A join token beyond the cluster's own, as stored (by its hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterToken {
    /// The cluster it joins.
    pub cluster_id: i64,
    /// What it is for.
    pub purpose: TokenPurpose,
    /// When it stops working (unix ms); `None` never.
    pub expires_at: Option<i64>,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::Launch => "launch",
            TokenPurpose::Byon => "byon",
            TokenPurpose::Join => "join",
        }
    }
}

/// An instance just launched, about to be stored as a `launching` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchedInstance {
    /// `i-…`.
    pub instance_id: String,
    /// The subnet it went to.
    pub subnet_id: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// Its private IPv4, if EC2 gave it already.
    pub private_ipv4: Option<Ipv4Addr>,
}

/// A stored node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Row id.
    pub id: i64,
    /// Cluster name.
    pub cluster: String,
    /// Node name (a DNS label).
    pub name: String,
    /// EC2 instance id.
    pub instance_id: String,
    /// Current state.
    pub state: NodeState,
    /// Availability zone.
    pub availability_zone: String,
    /// Region.
    pub region: String,
    /// Primary private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4.
    pub public_ipv4: Option<Ipv4Addr>,
    /// Hex SHA-256 of the current node credential.
    pub credential_hash: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// The subnet muster launched it into; `None` for a node that joined on
    /// its own.
    pub subnet_id: Option<String>,
    /// A bring-your-own node: EC2 is never asked about it.
    pub byon: bool,
}

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

/// What a register writes: the node as it should be afterwards.
#[derive(Debug, Clone)]
pub struct NodeRegistration<'a> {
    /// Cluster row id.
    pub cluster_id: i64,
    /// Node name for a new node.
    pub name: &'a str,
    /// EC2 instance id.
    pub instance_id: &'a str,
    /// Availability zone.
    pub availability_zone: &'a str,
    /// Region.
    pub region: &'a str,
    /// Private IPv4.
    pub private_ipv4: Ipv4Addr,
    /// Public IPv4.
    pub public_ipv4: Option<Ipv4Addr>,
    /// Hash of the fresh credential.
    pub credential_hash: &'a str,
    /// A bring-your-own node.
    pub byon: bool,
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

const NODE_COLUMNS: &str = "n.id, c.name, n.name, n.instance_id, n.state, n.availability_zone, \
     n.region, n.private_ipv4, n.public_ipv4, n.credential_hash, n.created_at, n.updated_at, \
     n.subnet_id, n.byon";

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

    /// Records a new cluster, with its launch spec and resources as JSON
    /// for a launched one. A cluster of that name that was removed is
    /// forgotten first, nodes, events and all, in the same transaction.
    pub fn create_cluster(
        &self,
        name: &str,
        join_token_hash: &str,
        launch: Option<&str>,
    ) -> Result<Cluster, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(query("starting a cluster create"))?;
        let created_at = now_ms();
        let removed: Option<i64> = tx
            .query_row(
                "SELECT id FROM clusters WHERE name = ?1 AND state = ?2",
                params![name, ClusterState::Removed.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(query("reading a removed cluster"))?;
        if let Some(id) = removed {
            tx.execute("DELETE FROM nodes WHERE cluster_id = ?1", params![id])
                .map_err(query("forgetting the nodes of a removed cluster"))?;
            tx.execute("DELETE FROM clusters WHERE id = ?1", params![id])
                .map_err(query("forgetting a removed cluster"))?;
        }
        let inserted = tx.execute(
            "INSERT INTO clusters (name, join_token_hash, created_at, state, launch) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                name,
                join_token_hash,
                created_at,
                ClusterState::Active.as_str(),
                launch
            ],
        );
        match inserted {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::ClusterExists(name.to_owned()))
            }
            Err(source) => {
                return Err(StoreError::Query {
                    operation: "inserting a cluster",
                    source,
                })
            }
        }
        let id = tx.last_insert_rowid();
        tx.commit().map_err(query("committing a cluster create"))?;
        Ok(Cluster {
            id,
            name: name.to_owned(),
            join_token_hash: join_token_hash.to_owned(),
            created_at,
            state: ClusterState::Active,
            launch: launch.map(str::to_owned),
            join_token_expires_at: None,
        })
    }

    /// Replaces a cluster's join token (its hash) and expiry, and retires
    /// the further join tokens minted for user data (`userdata CLUSTER`),
    /// which admit any instance as the join token does; launch and
    /// bring-your-own tokens stay. One transaction.
    pub fn rotate_join_token(
        &self,
        cluster_id: i64,
        join_token_hash: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(query("starting a join token rotation"))?;
        tx.execute(
            "UPDATE clusters SET join_token_hash = ?2, join_token_expires_at = ?3 WHERE id = ?1",
            params![cluster_id, join_token_hash, expires_at],
        )
        .map_err(query("rotating a join token"))?;
        tx.execute(
            "DELETE FROM cluster_tokens WHERE cluster_id = ?1 AND kind = ?2",
            params![cluster_id, TokenPurpose::Join.as_str()],
        )
        .map_err(query("retiring user data join tokens"))?;
        tx.commit()
            .map_err(query("committing a join token rotation"))
    }

    /// Deletes a cluster that has no nodes: undoes a create whose launch
    /// failed. Returns whether it was deleted.
    pub fn delete_empty_cluster(&self, id: i64) -> Result<bool, StoreError> {
        self.lock()
            .execute(
                "DELETE FROM clusters WHERE id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM nodes WHERE cluster_id = ?1)",
                params![id],
            )
            .map(|n| n > 0)
            .map_err(query("deleting an empty cluster"))
    }

    /// Replaces a cluster's launch JSON.
    pub fn set_cluster_launch(&self, id: i64, launch: &str) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE clusters SET launch = ?2 WHERE id = ?1",
                params![id, launch],
            )
            .map(|_| ())
            .map_err(query("updating a cluster's launch"))
    }

    /// Moves a cluster to `state`.
    pub fn set_cluster_state(&self, id: i64, state: ClusterState) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "UPDATE clusters SET state = ?2 WHERE id = ?1",
                params![id, state.as_str()],
            )
            .map(|_| ())
            .map_err(query("updating a cluster's state"))
    }

    /// Keeps the hash of a further join token of a cluster, valid until
    /// `expires_at` (unix ms) if given.
    pub fn add_cluster_token(
        &self,
        cluster_id: i64,
        purpose: TokenPurpose,
        token_hash: &str,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.lock()
            .execute(
                "INSERT INTO cluster_tokens (cluster_id, kind, token_hash, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![cluster_id, purpose.as_str(), token_hash, now_ms(), expires_at],
            )
            .map(|_| ())
            .map_err(query("storing a cluster token"))
    }

    /// The further join token with this hash, if there is one.
    pub fn cluster_token(&self, token_hash: &str) -> Result<Option<ClusterToken>, StoreError> {
        let found: Option<(i64, String, Option<i64>)> = self
            .lock()
            .query_row(
                "SELECT cluster_id, kind, expires_at FROM cluster_tokens WHERE token_hash = ?1",
                params![token_hash],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()
            .map_err(query("reading a cluster token"))?;
        found
            .map(|(cluster_id, kind, expires_at)| {
                let purpose = match kind.as_str() {
                    "launch" => TokenPurpose::Launch,
                    "byon" => TokenPurpose::Byon,
                    "join" => TokenPurpose::Join,
                    _ => {
                        return Err(StoreError::Corrupt {
                            field: "cluster_tokens.kind",
                            value: kind,
                        })
                    }
                };
                Ok(ClusterToken {
                    cluster_id,
                    purpose,
                    expires_at,
                })
            })
            .transpose()
    }

    /// Stores freshly launched instances as `launching` nodes named after
    /// their instance ids, each with its event, in one transaction.
    pub fn insert_launched(
        &self,
        cluster_id: i64,
        region: &str,
        instances: &[LaunchedInstance],
        reason: &str,
    ) -> Result<Vec<Node>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(query("starting a launch"))?;
        let now = now_ms();
        let launching = NodeState::Launching.as_str();
        for instance in instances {
            tx.execute(
                "INSERT INTO nodes (cluster_id, name, instance_id, state, availability_zone, \
                 region, private_ipv4, public_ipv4, credential_hash, created_at, updated_at, \
                 subnet_id) VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, NULL, NULL, ?7, ?7, ?8)",
                params![
                    cluster_id,
                    instance.instance_id,
                    launching,
                    instance.availability_zone,
                    region,
                    instance.private_ipv4.map(|ip| ip.to_string()),
                    now,
                    instance.subnet_id
                ],
            )
            .map_err(query("inserting a launched node"))?;
            let node_id = tx.last_insert_rowid();
            record_event(
                &tx,
                node_id,
                now,
                None,
                launching,
                reason,
                EventSource::Operator,
            )?;
        }
        tx.commit().map_err(query("committing a launch"))?;
        drop(conn);
        instances
            .iter()
            .map(|i| {
                self.node_by_instance(&i.instance_id)?
                    .ok_or(StoreError::Corrupt {
                        field: "nodes.instance_id",
                        value: i.instance_id.clone(),
                    })
            })
            .collect()
    }

    /// One cluster by name.
    pub fn cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        self.lock()
            .query_row(
                &format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE name = ?1"),
                params![name],
                cluster_from_row,
            )
            .optional()
            .map_err(query("reading a cluster"))
    }

    /// Every cluster, by name.
    pub fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {CLUSTER_COLUMNS} FROM clusters ORDER BY name"
            ))
            .map_err(query("listing clusters"))?;
        let rows = stmt
            .query_map([], cluster_from_row)
            .map_err(query("listing clusters"))?;
        rows.collect::<Result<_, _>>()
            .map_err(query("listing clusters"))
    }

    /// Every node, optionally of one cluster, by cluster and name.
    pub fn nodes(&self, cluster: Option<&str>) -> Result<Vec<Node>, StoreError> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
             WHERE (?1 IS NULL OR c.name = ?1) ORDER BY c.name, n.name"
        );
        let mut stmt = conn.prepare(&sql).map_err(query("listing nodes"))?;
        let rows = stmt
            .query_map(params![cluster], node_row)
            .map_err(query("listing nodes"))?;
        let raw: Vec<RawNode> = rows
            .collect::<Result<_, _>>()
            .map_err(query("listing nodes"))?;
        raw.into_iter().map(RawNode::parse).collect()
    }

    /// One node by cluster and name.
    pub fn node(&self, cluster: &str, name: &str) -> Result<Option<Node>, StoreError> {
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
             WHERE c.name = ?1 AND n.name = ?2"
        );
        self.lock()
            .query_row(&sql, params![cluster, name], node_row)
            .optional()
            .map_err(query("reading a node"))?
            .map(RawNode::parse)
            .transpose()
    }

    /// One node by instance id.
    pub fn node_by_instance(&self, instance_id: &str) -> Result<Option<Node>, StoreError> {
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
             WHERE n.instance_id = ?1"
        );
        self.lock()
            .prepare_cached(&sql)
            .and_then(|mut stmt| stmt.query_row(params![instance_id], node_row).optional())
            .map_err(query("reading a node by instance"))?
            .map(RawNode::parse)
            .transpose()
    }

    /// Every event of a node, oldest first.
    pub fn events(&self, node_id: i64) -> Result<Vec<Event>, StoreError> {
        self.events_after(node_id, 0, usize::MAX)
    }

    /// How many events a node has.
    pub fn events_total(&self, node_id: i64) -> Result<u64, StoreError> {
        self.lock()
            .query_row(
                "SELECT COUNT(*) FROM node_events WHERE node_id = ?1",
                params![node_id],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(query("counting events"))
    }

    /// The latest `limit` events of a node, oldest first.
    pub fn latest_events(&self, node_id: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let total = self.events_total(node_id)? as usize;
        let skip = total.saturating_sub(limit);
        let after: i64 = if skip == 0 {
            0
        } else {
            self.lock()
                .query_row(
                    "SELECT id FROM node_events WHERE node_id = ?1 ORDER BY id LIMIT 1 OFFSET ?2",
                    params![node_id, (skip - 1) as i64],
                    |row| row.get(0),
                )
                .map_err(query("finding the latest events"))?
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
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT id, at, from_state, to_state, reason, source FROM node_events \
                 WHERE node_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(query("listing events"))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![node_id, after, limit], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })
            .map_err(query("listing events"))?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, at, from, to, reason, source) = row.map_err(query("listing events"))?;
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

    /// Records a register: creates the node for this instance, or brings the
    /// existing one to `deployed` with the new addresses and credential. One
    /// transaction: the node row and its event land together or not at all.
    pub fn register_node(
        &self,
        reg: &NodeRegistration<'_>,
        reason: &str,
    ) -> Result<Node, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(query("starting a register"))?;
        let now = now_ms();
        // Registers come in thousands at a fleet's start: their statements
        // are prepared once and kept in the connection's cache.
        let existing: Option<(i64, String)> = tx
            .prepare_cached("SELECT id, state FROM nodes WHERE instance_id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![reg.instance_id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
            })
            .map_err(query("reading the node of an instance"))?;
        let deployed = NodeState::Deployed.as_str();
        let (node_id, from) = match existing {
            Some((id, state)) => {
                tx.prepare_cached(
                    "UPDATE nodes SET state = ?2, availability_zone = ?3, region = ?4, \
                     private_ipv4 = ?5, public_ipv4 = ?6, credential_hash = ?7, updated_at = ?8 \
                     WHERE id = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        id,
                        deployed,
                        reg.availability_zone,
                        reg.region,
                        reg.private_ipv4.to_string(),
                        reg.public_ipv4.map(|ip| ip.to_string()),
                        reg.credential_hash,
                        now
                    ])
                })
                .map_err(query("updating a registered node"))?;
                (id, Some(state))
            }
            None => {
                tx.prepare_cached(
                    "INSERT INTO nodes (cluster_id, name, instance_id, state, availability_zone, \
                     region, private_ipv4, public_ipv4, credential_hash, created_at, updated_at, \
                     byon) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        reg.cluster_id,
                        reg.name,
                        reg.instance_id,
                        deployed,
                        reg.availability_zone,
                        reg.region,
                        reg.private_ipv4.to_string(),
                        reg.public_ipv4.map(|ip| ip.to_string()),
                        reg.credential_hash,
                        now,
                        reg.byon
                    ])
                })
                .map_err(query("inserting a node"))?;
                (tx.last_insert_rowid(), None)
            }
        };
        record_event(
            &tx,
            node_id,
            now,
            from.as_deref(),
            deployed,
            reason,
            EventSource::Agent,
        )?;
        tx.commit().map_err(query("committing a register"))?;
        drop(conn);
        self.node_by_instance(reg.instance_id)?
            .ok_or(StoreError::Corrupt {
                field: "nodes.instance_id",
                value: reg.instance_id.to_owned(),
            })
    }

    /// Forgets a node, its events with it: `node rm` of a bring-your-own
    /// node. Returns whether it existed.
    pub fn delete_node(&self, node_id: i64) -> Result<bool, StoreError> {
        self.lock()
            .execute("DELETE FROM nodes WHERE id = ?1", params![node_id])
            .map(|n| n > 0)
            .map_err(query("deleting a node"))
    }

    /// Records an address change of a node, with its event.
    pub fn update_addresses(
        &self,
        node_id: i64,
        state: NodeState,
        private_ipv4: Ipv4Addr,
        public_ipv4: Option<Ipv4Addr>,
        reason: &str,
        source: EventSource,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction()
            .map_err(query("starting an address change"))?;
        let now = now_ms();
        tx.execute(
            "UPDATE nodes SET private_ipv4 = ?2, public_ipv4 = ?3, updated_at = ?4 WHERE id = ?1",
            params![
                node_id,
                private_ipv4.to_string(),
                public_ipv4.map(|ip| ip.to_string()),
                now
            ],
        )
        .map_err(query("updating node addresses"))?;
        record_event(
            &tx,
            node_id,
            now,
            Some(state.as_str()),
            state.as_str(),
            reason,
            source,
        )?;
        tx.commit().map_err(query("committing an address change"))
    }

    /// Moves a node from `from` to `to` and records the event, in one
    /// transaction. Returns false, writing nothing, if the node is no longer
    /// in `from` (someone else moved it first).
    pub fn transition(
        &self,
        node_id: i64,
        from: NodeState,
        to: NodeState,
        reason: &str,
        source: EventSource,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(query("starting a transition"))?;
        let now = now_ms();
        let changed = tx
            .execute(
                "UPDATE nodes SET state = ?3, updated_at = ?4 WHERE id = ?1 AND state = ?2",
                params![node_id, from.as_str(), to.as_str(), now],
            )
            .map_err(query("updating a node's state"))?;
        if changed == 0 {
            return Ok(false);
        }
        record_event(
            &tx,
            node_id,
            now,
            Some(from.as_str()),
            to.as_str(),
            reason,
            source,
        )?;
        tx.commit().map_err(query("committing a transition"))?;
        Ok(true)
    }
}

/// Appends one event inside the caller's transaction.
fn record_event(
    tx: &rusqlite::Transaction<'_>,
    node_id: i64,
    at: i64,
    from: Option<&str>,
    to: &str,
    reason: &str,
    source: EventSource,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO node_events (node_id, at, from_state, to_state, reason, source) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut stmt| stmt.execute(params![node_id, at, from, to, reason, source.as_str()]))
    .map(|_| ())
    .map_err(query("recording an event"))
}

const CLUSTER_COLUMNS: &str =
    "id, name, join_token_hash, created_at, state, launch, join_token_expires_at";

fn cluster_from_row(row: &Row<'_>) -> rusqlite::Result<Cluster> {
    let state: String = row.get(4)?;
    Ok(Cluster {
        id: row.get(0)?,
        name: row.get(1)?,
        join_token_hash: row.get(2)?,
        created_at: row.get(3)?,
        state: state.parse().map_err(|e: muster_proto::ValidationError| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?,
        launch: row.get(5)?,
        join_token_expires_at: row.get(6)?,
    })
}

/// A node row before its text columns are parsed.
struct RawNode {
    id: i64,
    cluster: String,
    name: String,
    instance_id: String,
    state: String,
    availability_zone: String,
    region: String,
    private_ipv4: Option<String>,
    public_ipv4: Option<String>,
    credential_hash: Option<String>,
    created_at: i64,
    updated_at: i64,
    subnet_id: Option<String>,
    byon: bool,
}

fn node_row(row: &Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        id: row.get(0)?,
        cluster: row.get(1)?,
        name: row.get(2)?,
        instance_id: row.get(3)?,
        state: row.get(4)?,
        availability_zone: row.get(5)?,
        region: row.get(6)?,
        private_ipv4: row.get(7)?,
        public_ipv4: row.get(8)?,
        credential_hash: row.get(9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
        subnet_id: row.get(12)?,
        byon: row.get(13)?,
    })
}

impl RawNode {
    fn parse(self) -> Result<Node, StoreError> {
        Ok(Node {
            id: self.id,
            cluster: self.cluster,
            name: self.name,
            instance_id: self.instance_id,
            state: parse_state(&self.state)?,
            availability_zone: self.availability_zone,
            region: self.region,
            private_ipv4: parse_ip("nodes.private_ipv4", self.private_ipv4)?,
            public_ipv4: parse_ip("nodes.public_ipv4", self.public_ipv4)?,
            credential_hash: self.credential_hash,
            created_at: self.created_at,
            updated_at: self.updated_at,
            subnet_id: self.subnet_id,
            byon: self.byon,
        })
    }
}

fn parse_state(value: &str) -> Result<NodeState, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        field: "state",
        value: value.to_owned(),
    })
}

fn parse_ip(field: &'static str, value: Option<String>) -> Result<Option<Ipv4Addr>, StoreError> {
    value
        .map(|text| {
            text.parse().map_err(|_| StoreError::Corrupt {
                field,
                value: text.clone(),
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotating the join token sets its hash and expiry and retires the
    /// user data join tokens, keeping launch and bring-your-own ones.
    #[test]
    fn rotation_retires_user_data_tokens() {
        let store = Store::open_in_memory().unwrap();
        let cluster = store.create_cluster("web", "old", None).unwrap();
        for (purpose, hash) in [
            (TokenPurpose::Join, "j"),
            (TokenPurpose::Launch, "l"),
            (TokenPurpose::Byon, "b"),
        ] {
            store
                .add_cluster_token(cluster.id, purpose, hash, Some(7))
                .unwrap();
        }
        store
            .rotate_join_token(cluster.id, "new", Some(42))
            .unwrap();
        let rotated = store.cluster("web").unwrap().unwrap();
        assert_eq!(rotated.join_token_hash, "new");
        assert_eq!(rotated.join_token_expires_at, Some(42));
        assert_eq!(store.cluster_token("j").unwrap(), None);
        assert_eq!(
            store.cluster_token("l").unwrap(),
            Some(ClusterToken {
                cluster_id: cluster.id,
                purpose: TokenPurpose::Launch,
                expires_at: Some(7)
            })
        );
        assert_eq!(
            store.cluster_token("b").unwrap().map(|t| t.purpose),
            Some(TokenPurpose::Byon)
        );
    }

    fn registration<'a>(cluster_id: i64, credential_hash: &'a str) -> NodeRegistration<'a> {
        NodeRegistration {
            cluster_id,
            name: "i-0123456789abcdef0",
            instance_id: "i-0123456789abcdef0",
            availability_zone: "us-east-1a",
            region: "us-east-1",
            private_ipv4: Ipv4Addr::new(10, 0, 0, 5),
            public_ipv4: Some(Ipv4Addr::new(54, 0, 0, 5)),
            credential_hash,
            byon: false,
        }
    }

    /// A fresh file is migrated to the newest schema, and reopening it is a no-op.
    #[test]
    fn migrations_apply_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        store.create_cluster("web", "h", None).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.clusters().unwrap().len(), 1);
    }

    /// A file from a newer build is refused rather than misread.
    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    /// Cluster names are unique.
    #[test]
    fn duplicate_cluster_is_refused() {
        let store = Store::open_in_memory().unwrap();
        store.create_cluster("web", "h", None).unwrap();
        assert!(matches!(
            store.create_cluster("web", "h2", None),
            Err(StoreError::ClusterExists(_))
        ));
        assert_eq!(store.clusters().unwrap().len(), 1);
    }

    /// A second register of the same instance updates the same node and
    /// rotates its credential; both registers are recorded as events.
    #[test]
    fn register_twice_is_one_node() {
        let store = Store::open_in_memory().unwrap();
        let cluster = store.create_cluster("web", "h", None).unwrap();
        let first = store
            .register_node(&registration(cluster.id, "c1"), "registered")
            .unwrap();
        let mut again = registration(cluster.id, "c2");
        again.public_ipv4 = Some(Ipv4Addr::new(54, 0, 0, 6));
        let second = store.register_node(&again, "re-registered").unwrap();
        assert_eq!(first.id, second.id);
        assert_eq!(second.credential_hash.as_deref(), Some("c2"));
        assert_eq!(second.public_ipv4, Some(Ipv4Addr::new(54, 0, 0, 6)));
        assert_eq!(store.nodes(None).unwrap().len(), 1);
        let events = store.events(first.id).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].from, None);
        assert_eq!(events[1].from, Some(NodeState::Deployed));
    }

    /// A register that breaks a constraint leaves no node and no event behind.
    #[test]
    fn failed_register_writes_nothing() {
        let store = Store::open_in_memory().unwrap();
        let cluster = store.create_cluster("web", "h", None).unwrap();
        store
            .register_node(&registration(cluster.id, "c1"), "registered")
            .unwrap();
        // Another instance with the same credential hash violates UNIQUE.
        let mut other = registration(cluster.id, "c1");
        other.instance_id = "i-0123456789abcdef1";
        other.name = "i-0123456789abcdef1";
        assert!(store.register_node(&other, "registered").is_err());
        assert_eq!(store.nodes(None).unwrap().len(), 1);
        assert!(store
            .node_by_instance("i-0123456789abcdef1")
            .unwrap()
            .is_none());
    }

    /// A transition from the state the node is in lands with its event; one
    /// from a state it has left already writes nothing.
    #[test]
    fn transitions_are_conditional() {
        let store = Store::open_in_memory().unwrap();
        let cluster = store.create_cluster("web", "h", None).unwrap();
        let node = store
            .register_node(&registration(cluster.id, "c1"), "registered")
            .unwrap();
        assert!(store
            .transition(
                node.id,
                NodeState::Deployed,
                NodeState::Unreachable,
                "silent",
                EventSource::Liveness
            )
            .unwrap());
        assert!(!store
            .transition(
                node.id,
                NodeState::Deployed,
                NodeState::Stopped,
                "stale",
                EventSource::Sweep
            )
            .unwrap());
        let node = store.node("web", &node.name).unwrap().unwrap();
        assert_eq!(node.state, NodeState::Unreachable);
        let events = store.events(node.id).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].source, EventSource::Liveness);
        assert_eq!(events[1].to, NodeState::Unreachable);
    }

    /// Events page by sequence number, and the latest ones come oldest first.
    #[test]
    fn events_page() {
        let store = Store::open_in_memory().unwrap();
        let cluster = store.create_cluster("web", "h", None).unwrap();
        let node = store
            .register_node(&registration(cluster.id, "c1"), "registered")
            .unwrap();
        for i in 0..9 {
            store
                .update_addresses(
                    node.id,
                    NodeState::Deployed,
                    Ipv4Addr::new(10, 0, 0, 5),
                    Some(Ipv4Addr::new(3, 3, 3, i)),
                    &format!("change {i}"),
                    EventSource::Agent,
                )
                .unwrap();
        }
        assert_eq!(store.events_total(node.id).unwrap(), 10);
        let first = store.events_after(node.id, 0, 4).unwrap();
        assert_eq!(first.len(), 4);
        let second = store.events_after(node.id, first[3].seq, 4).unwrap();
        assert_eq!(second[0].reason, "change 3");
        assert!(second.iter().all(|e| e.seq > first[3].seq));
        let latest = store.latest_events(node.id, 3).unwrap();
        let reasons: Vec<_> = latest.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, vec!["change 6", "change 7", "change 8"]);
        assert_eq!(store.latest_events(node.id, 100).unwrap().len(), 10);
    }

    /// Address changes are stored and leave an event.
    #[test]
    fn address_change_is_recorded() {
        let store = Store::open_in_memory().unwrap();
        let cluster = store.create_cluster("web", "h", None).unwrap();
        let node = store
            .register_node(&registration(cluster.id, "c1"), "registered")
            .unwrap();
        store
            .update_addresses(
                node.id,
                NodeState::Deployed,
                Ipv4Addr::new(10, 0, 0, 5),
                Some(Ipv4Addr::new(3, 3, 3, 3)),
                "public address changed",
                EventSource::Agent,
            )
            .unwrap();
        let node = store.node("web", &node.name).unwrap().unwrap();
        assert_eq!(node.public_ipv4, Some(Ipv4Addr::new(3, 3, 3, 3)));
        assert_eq!(store.events(node.id).unwrap().len(), 2);
        assert_eq!(store.nodes(Some("other")).unwrap().len(), 0);
    }
}
