//! Clusters and their tokens: create, rotate the join token, mark removing,
//! delete once empty; the extra tokens minted for user data, launches and
//! bring-your-own machines, listed and revoked; the bring-your-own
//! machines an operator removed, banned until admitted again.

use muster_proto::ClusterState;

use super::sql::{args, DbError, Row};
use super::{now_ms, query, Store, StoreError};

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
    /// When the cluster's lifetime ends and it is removed (unix ms);
    /// `None` never.
    pub expires_at: Option<i64>,
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
    /// Row id.
    pub id: i64,
    /// The cluster it joins.
    pub cluster_id: i64,
    /// What it is for.
    pub purpose: TokenPurpose,
    /// When it stops working (unix ms); `None` never.
    pub expires_at: Option<i64>,
    /// A bring-your-own token's cap on the nodes it creates.
    pub max_nodes: Option<u32>,
}

/// A cluster's token as `cluster tokens` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Row id; `None` for the cluster's own join token.
    pub id: Option<i64>,
    /// What it is for; `None` for the cluster's own join token.
    pub purpose: Option<TokenPurpose>,
    /// When it was minted (unix ms).
    pub created_at: i64,
    /// When it stops working (unix ms).
    pub expires_at: Option<i64>,
    /// Registers it admitted.
    pub uses: u64,
    /// Nodes it created (bring-your-own tokens).
    pub nodes: u64,
    /// Its cap on them.
    pub max_nodes: Option<u32>,
}

impl TokenPurpose {
    /// The name stored, and listed (`join` as `userdata`, the cluster's own
    /// being `join`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::Launch => "launch",
            TokenPurpose::Byon => "byon",
            TokenPurpose::Join => "join",
        }
    }
}

/// A stored token kind.
fn parse_purpose(kind: String) -> Result<TokenPurpose, StoreError> {
    match kind.as_str() {
        "launch" => Ok(TokenPurpose::Launch),
        "byon" => Ok(TokenPurpose::Byon),
        "join" => Ok(TokenPurpose::Join),
        _ => Err(StoreError::Corrupt {
            field: "cluster_tokens.kind",
            value: kind,
        }),
    }
}

const CLUSTER_COLUMNS: &str =
    "id, name, join_token_hash, created_at, state, launch, join_token_expires_at, expires_at";

fn cluster_from_row(row: &Row<'_>) -> Result<Cluster, DbError> {
    let state: String = row.get(4)?;
    Ok(Cluster {
        id: row.get(0)?,
        name: row.get(1)?,
        join_token_hash: row.get(2)?,
        created_at: row.get(3)?,
        state: state
            .parse()
            .map_err(|e: muster_proto::ValidationError| DbError::Column {
                index: 4,
                why: e.to_string(),
            })?,
        launch: row.get(5)?,
        join_token_expires_at: row.get(6)?,
        expires_at: row.get(7)?,
    })
}

impl Store {
    /// Records a new cluster, with its launch spec and resources as JSON
    /// for a launched one. A cluster of that name that was removed is
    /// forgotten first, nodes, events and all, in the same transaction.
    pub fn create_cluster(
        &self,
        name: &str,
        join_token_hash: &str,
        launch: Option<&str>,
    ) -> Result<Cluster, StoreError> {
        self.create_cluster_expiring(name, join_token_hash, launch, None)
    }

    /// [`Store::create_cluster`], with the cluster removed at `expires_at`
    /// (unix ms) if given.
    pub fn create_cluster_expiring(
        &self,
        name: &str,
        join_token_hash: &str,
        launch: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<Cluster, StoreError> {
        let created_at = now_ms();
        let id = self.transaction(|tx| {
            let removed: Option<i64> = tx
                .query_opt(
                    "SELECT id FROM clusters WHERE name = ?1 AND state = ?2",
                    args![name, ClusterState::Removed.as_str()],
                    |row| row.get(0),
                )
                .map_err(query("reading a removed cluster"))?;
            if let Some(id) = removed {
                tx.execute("DELETE FROM nodes WHERE cluster_id = ?1", args![id])
                    .map_err(query("forgetting the nodes of a removed cluster"))?;
                tx.execute("DELETE FROM clusters WHERE id = ?1", args![id])
                    .map_err(query("forgetting a removed cluster"))?;
            }
            tx.query_one(
                "INSERT INTO clusters (name, join_token_hash, created_at, state, launch, \
                 expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                args![
                    name,
                    join_token_hash,
                    created_at,
                    ClusterState::Active.as_str(),
                    launch,
                    expires_at
                ],
                |row| row.get(0),
            )
            .map_err(|source| match source.unique_violation() {
                Some(_) => StoreError::ClusterExists(name.to_owned()),
                None => query("inserting a cluster")(source),
            })
        })?;
        Ok(Cluster {
            id,
            name: name.to_owned(),
            join_token_hash: join_token_hash.to_owned(),
            created_at,
            state: ClusterState::Active,
            launch: launch.map(str::to_owned),
            join_token_expires_at: None,
            expires_at,
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
        self.transaction(|tx| {
            tx.execute(
                "UPDATE clusters SET join_token_hash = ?2, join_token_expires_at = ?3 \
                 WHERE id = ?1",
                args![cluster_id, join_token_hash, expires_at],
            )
            .map_err(query("rotating a join token"))?;
            tx.execute(
                "DELETE FROM cluster_tokens WHERE cluster_id = ?1 AND kind = ?2",
                args![cluster_id, TokenPurpose::Join.as_str()],
            )
            .map_err(query("retiring user data join tokens"))?;
            Ok(())
        })
    }

    /// Deletes a cluster that has no nodes: undoes a create whose launch
    /// failed. Returns whether it was deleted.
    pub fn delete_empty_cluster(&self, id: i64) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM clusters WHERE id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM nodes WHERE cluster_id = ?1)",
                args![id],
            )
            .map(|n| n > 0)
            .map_err(query("deleting an empty cluster"))
        })
    }

    /// Replaces a cluster's launch JSON.
    pub fn set_cluster_launch(&self, id: i64, launch: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE clusters SET launch = ?2 WHERE id = ?1",
                args![id, launch],
            )
            .map(|_| ())
            .map_err(query("updating a cluster's launch"))
        })
    }

    /// Moves a cluster to `state`.
    pub fn set_cluster_state(&self, id: i64, state: ClusterState) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE clusters SET state = ?2 WHERE id = ?1",
                args![id, state.as_str()],
            )
            .map(|_| ())
            .map_err(query("updating a cluster's state"))
        })
    }

    /// Moves the end of an active cluster's lifetime to `expires_at` (unix
    /// ms); false, writing nothing, when the cluster is no longer active.
    pub fn set_cluster_expiry(&self, id: i64, expires_at: i64) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE clusters SET expires_at = ?2 WHERE id = ?1 AND state = ?3",
                args![id, expires_at, ClusterState::Active.as_str()],
            )
            .map(|changed| changed == 1)
            .map_err(query("moving a cluster's expiry"))
        })
    }

    /// Keeps the hash of a further join token of a cluster, valid until
    /// `expires_at` (unix ms) if given, creating at most `max_nodes` nodes
    /// if given. Returns its row id.
    pub fn add_cluster_token(
        &self,
        cluster_id: i64,
        purpose: TokenPurpose,
        token_hash: &str,
        (expires_at, max_nodes): (Option<i64>, Option<u32>),
    ) -> Result<i64, StoreError> {
        self.with(|db| {
            db.query_one(
                "INSERT INTO cluster_tokens (cluster_id, kind, token_hash, created_at, \
                 expires_at, max_nodes) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                args![
                    cluster_id,
                    purpose.as_str(),
                    token_hash,
                    now_ms(),
                    expires_at,
                    max_nodes
                ],
                |row| row.get(0),
            )
            .map_err(query("storing a cluster token"))
        })
    }

    /// The further join token with this hash, if there is one.
    pub fn cluster_token(&self, token_hash: &str) -> Result<Option<ClusterToken>, StoreError> {
        let found = self.with(|db| {
            db.query_opt(
                "SELECT id, cluster_id, kind, expires_at, max_nodes FROM cluster_tokens \
                 WHERE token_hash = ?1",
                args![token_hash],
                |row| {
                    let kind: String = row.get(2)?;
                    let token = ClusterToken {
                        id: row.get(0)?,
                        cluster_id: row.get(1)?,
                        purpose: TokenPurpose::Join,
                        expires_at: row.get(3)?,
                        max_nodes: row.get(4)?,
                    };
                    Ok((kind, token))
                },
            )
            .map_err(query("reading a cluster token"))
        })?;
        found
            .map(|(kind, token)| {
                Ok(ClusterToken {
                    purpose: parse_purpose(kind)?,
                    ..token
                })
            })
            .transpose()
    }

    /// Every token of a cluster: its own join token first, then the
    /// others by age, with their uses and the nodes they created.
    pub fn cluster_tokens(&self, cluster: &Cluster) -> Result<Vec<TokenRecord>, StoreError> {
        let (uses, rows) = self.with(|db| {
            let uses: u64 = db
                .query_one(
                    "SELECT join_token_uses FROM clusters WHERE id = ?1",
                    args![cluster.id],
                    |row| row.get(0),
                )
                .map_err(query("reading a cluster's join token uses"))?;
            let rows = db
                .query(
                    "SELECT t.id, t.kind, t.created_at, t.expires_at, t.uses, t.max_nodes, \
                     t.created FROM cluster_tokens t WHERE t.cluster_id = ?1 ORDER BY t.id",
                    args![cluster.id],
                    |row| {
                        Ok((
                            row.get::<i64>(0)?,
                            row.get::<String>(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                            row.get(6)?,
                        ))
                    },
                )
                .map_err(query("listing a cluster's tokens"))?;
            Ok((uses, rows))
        })?;
        let mut tokens = vec![TokenRecord {
            id: None,
            purpose: None,
            created_at: cluster.created_at,
            expires_at: cluster.join_token_expires_at,
            uses,
            nodes: 0,
            max_nodes: None,
        }];
        for (id, kind, created_at, expires_at, uses, max_nodes, nodes) in rows {
            tokens.push(TokenRecord {
                id: Some(id),
                purpose: Some(parse_purpose(kind)?),
                created_at,
                expires_at,
                uses,
                nodes,
                max_nodes,
            });
        }
        Ok(tokens)
    }

    /// Deletes further token `id` of cluster `cluster_id`: it stops
    /// working at once. Returns whether there was one.
    pub fn revoke_cluster_token(&self, cluster_id: i64, id: i64) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM cluster_tokens WHERE id = ?1 AND cluster_id = ?2",
                args![id, cluster_id],
            )
            .map(|n| n > 0)
            .map_err(query("revoking a cluster token"))
        })
    }

    /// Makes a cluster's own join token expire now.
    pub fn expire_join_token(&self, cluster_id: i64) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE clusters SET join_token_expires_at = ?2 WHERE id = ?1",
                args![cluster_id, now_ms()],
            )
            .map(|_| ())
            .map_err(query("expiring a join token"))
        })
    }

    /// Bans bring-your-own machine `machine` (its node id) from a cluster.
    pub fn ban_machine(&self, cluster_id: i64, machine: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO banned_machines (cluster_id, machine, banned_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                args![cluster_id, machine, now_ms()],
            )
            .map(|_| ())
            .map_err(query("banning a machine"))
        })
    }

    /// Lifts a ban; returns whether there was one.
    pub fn unban_machine(&self, cluster_id: i64, machine: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM banned_machines WHERE cluster_id = ?1 AND machine = ?2",
                args![cluster_id, machine],
            )
            .map(|n| n > 0)
            .map_err(query("admitting a machine again"))
        })
    }

    /// When `machine` was banned from a cluster (unix ms), if it is.
    pub fn machine_banned_at(
        &self,
        cluster_id: i64,
        machine: &str,
    ) -> Result<Option<i64>, StoreError> {
        self.with(|db| {
            db.query_opt(
                "SELECT banned_at FROM banned_machines WHERE cluster_id = ?1 AND machine = ?2",
                args![cluster_id, machine],
                |row| row.get(0),
            )
            .map_err(query("reading a machine's ban"))
        })
    }

    /// One cluster by name.
    pub fn cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        self.with(|db| {
            db.query_opt(
                &format!("SELECT {CLUSTER_COLUMNS} FROM clusters WHERE name = ?1"),
                args![name],
                cluster_from_row,
            )
            .map_err(query("reading a cluster"))
        })
    }

    /// Every cluster, by name (sorted here, byte by byte: the databases'
    /// collations differ).
    pub fn clusters(&self) -> Result<Vec<Cluster>, StoreError> {
        let mut clusters = self.with(|db| {
            db.query(
                &format!("SELECT {CLUSTER_COLUMNS} FROM clusters"),
                &[],
                cluster_from_row,
            )
            .map_err(query("listing clusters"))
        })?;
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(clusters)
    }
}
