//! Nodes: launched and registered, read back, moved between states and
//! addresses, deleted. Every write records its event in the same
//! transaction, and every transition is conditional on the state it was
//! decided from.

use std::net::{Ipv4Addr, Ipv6Addr};

use muster_proto::{EventSource, NodeState};

use super::events::record_event;
use super::sql::{args, Db, DbError, Row};
use super::{now_ms, parse_state, query, Store, StoreError};

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
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
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
    /// Terminated only because EC2 did not know the instance for several
    /// sweeps: a later register that EC2 confirms brings it back.
    pub unseen: bool,
    /// An operator drained it (`node drain`): it is `draining` whenever
    /// its agent is heard, until undrained.
    pub drained: bool,
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
    /// Private IPv4 (none on an IPv6-only instance).
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4.
    pub public_ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Hash of the fresh credential.
    pub credential_hash: &'a str,
    /// A bring-your-own node.
    pub byon: bool,
    /// The token that admitted it, counted in the same transaction.
    pub admitted_by: AdmittedBy,
}

/// What admitted a register, as the store counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmittedBy {
    /// The cluster's own join token.
    ClusterToken,
    /// A further token, by row id, with the most nodes it may create.
    Token {
        /// `cluster_tokens.id`.
        id: i64,
        /// Its cap, for a bring-your-own token.
        max_nodes: Option<u32>,
    },
    /// The node's own credential: nothing to count.
    Credential,
}

const NODE_COLUMNS: &str = "n.id, c.name, n.name, n.instance_id, n.state, n.availability_zone, \
     n.region, n.private_ipv4, n.public_ipv4, n.credential_hash, n.created_at, n.updated_at, \
     n.subnet_id, n.byon, n.unseen, n.drained, n.ipv6";

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
    unseen: bool,
    drained: bool,
    ipv6: Option<String>,
}

fn node_row(row: &Row<'_>) -> Result<RawNode, DbError> {
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
        unseen: row.get(14)?,
        drained: row.get(15)?,
        ipv6: row.get(16)?,
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
            ipv6: parse_ip("nodes.ipv6", self.ipv6)?,
            credential_hash: self.credential_hash,
            created_at: self.created_at,
            updated_at: self.updated_at,
            subnet_id: self.subnet_id,
            byon: self.byon,
            unseen: self.unseen,
            drained: self.drained,
        })
    }
}

fn parse_ip<T: std::str::FromStr>(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<T>, StoreError> {
    value
        .map(|text| {
            text.parse().map_err(|_| StoreError::Corrupt {
                field,
                value: text.clone(),
            })
        })
        .transpose()
}

impl Store {
    /// Stores freshly launched instances as `launching` nodes named after
    /// their instance ids, launched by launch job `job` (if known), each with its
    /// event, in one transaction.
    pub fn insert_launched(
        &self,
        cluster_id: i64,
        region: &str,
        instances: &[LaunchedInstance],
        job: Option<&str>,
        (reason, source): (&str, EventSource),
    ) -> Result<Vec<Node>, StoreError> {
        let now = now_ms();
        let launching = NodeState::Launching.as_str();
        self.transaction(|tx| {
            for instance in instances {
                let node_id: i64 = tx
                    .query_one(
                        "INSERT INTO nodes (cluster_id, name, instance_id, state, \
                         availability_zone, region, private_ipv4, public_ipv4, credential_hash, \
                         created_at, updated_at, subnet_id, launch_job) \
                         VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, NULL, NULL, ?7, ?7, ?8, ?9) \
                         RETURNING id",
                        args![
                            cluster_id,
                            instance.instance_id.as_str(),
                            launching,
                            instance.availability_zone.as_str(),
                            region,
                            instance.private_ipv4.map(|ip| ip.to_string()),
                            now,
                            instance.subnet_id.as_str(),
                            job
                        ],
                        |row| row.get(0),
                    )
                    .map_err(query("inserting a launched node"))?;
                record_event(tx, node_id, now, None, launching, reason, source)?;
            }
            Ok(())
        })?;
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

    /// Every node, optionally of one cluster, by cluster and name (sorted
    /// here, byte by byte: the databases' collations differ).
    pub fn nodes(&self, cluster: Option<&str>) -> Result<Vec<Node>, StoreError> {
        let sql = match cluster {
            Some(_) => format!(
                "SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
                 WHERE c.name = ?1"
            ),
            None => {
                format!("SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id")
            }
        };
        let raw = self.with(|db| {
            let args = match cluster {
                Some(name) => vec![name.into()],
                None => Vec::new(),
            };
            db.query(&sql, &args, node_row)
                .map_err(query("listing nodes"))
        })?;
        let mut nodes = raw
            .into_iter()
            .map(RawNode::parse)
            .collect::<Result<Vec<_>, _>>()?;
        nodes.sort_by(|a, b| (&a.cluster, &a.name).cmp(&(&b.cluster, &b.name)));
        Ok(nodes)
    }

    /// The nodes among `ids` that exist, in no order.
    pub fn nodes_by_id(&self, ids: &[i64]) -> Result<Vec<Node>, StoreError> {
        let mut nodes = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            // Integers only: written into the statement, they cannot
            // inject anything.
            let list = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
                 WHERE n.id IN ({list})"
            );
            let raw = self.with(|db| {
                db.query(&sql, &[], node_row)
                    .map_err(query("reading nodes by id"))
            })?;
            for row in raw {
                nodes.push(RawNode::parse(row)?);
            }
        }
        Ok(nodes)
    }

    /// One node by cluster and name.
    pub fn node(&self, cluster: &str, name: &str) -> Result<Option<Node>, StoreError> {
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
             WHERE c.name = ?1 AND n.name = ?2"
        );
        self.with(|db| {
            db.query_opt(&sql, args![cluster, name], node_row)
                .map_err(query("reading a node"))
        })?
        .map(RawNode::parse)
        .transpose()
    }

    /// The state of node `id`, if it exists.
    pub fn node_state(&self, node_id: i64) -> Result<Option<NodeState>, StoreError> {
        let state: Option<String> = self.with(|db| {
            db.query_opt(
                "SELECT state FROM nodes WHERE id = ?1",
                args![node_id],
                |row| row.get(0),
            )
            .map_err(query("reading a node's state"))
        })?;
        state.map(|s| parse_state(&s)).transpose()
    }

    /// One node by instance id.
    pub fn node_by_instance(&self, instance_id: &str) -> Result<Option<Node>, StoreError> {
        let sql = format!(
            "SELECT {NODE_COLUMNS} FROM nodes n JOIN clusters c ON c.id = n.cluster_id \
             WHERE n.instance_id = ?1"
        );
        self.with(|db| {
            db.query_opt(&sql, args![instance_id], node_row)
                .map_err(query("reading a node by instance"))
        })?
        .map(RawNode::parse)
        .transpose()
    }

    /// Records a register: creates the node for this instance, or brings the
    /// existing one to `deployed` with the new addresses and credential. One
    /// transaction: the node row and its event land together or not at all.
    pub fn register_node(
        &self,
        reg: &NodeRegistration<'_>,
        reason: &str,
    ) -> Result<Node, StoreError> {
        let now = now_ms();
        self.transaction(|tx| {
            // A register is decided from a cluster that was active and a
            // node that was not on its way out: if either changed since
            // (cluster rm, node rm), it writes nothing. On PostgreSQL
            // another coordinator may be changing them this moment: the
            // rows are read locked, so a change in flight is waited for and
            // then seen, and one that comes later waits for this register
            // (SQLite's store has one writer).
            let postgres = tx.is_postgres();
            let lock = |sql: &str, how: &str| match postgres {
                true => format!("{sql} {how}"),
                false => sql.to_owned(),
            };
            let cluster_state: String = tx
                .query_one(
                    &lock("SELECT state FROM clusters WHERE id = ?1", "FOR SHARE"),
                    args![reg.cluster_id],
                    |row| row.get(0),
                )
                .map_err(query("reading the cluster of a register"))?;
            if cluster_state != muster_proto::ClusterState::Active.as_str() {
                return Err(StoreError::Changed {
                    what: "the cluster".to_owned(),
                    now: cluster_state,
                });
            }
            // Registers come in thousands at a fleet's start: their
            // statements are prepared once and kept with the connection.
            let existing: Option<(i64, String, bool, bool)> = tx
                .query_opt(
                    &lock(
                        "SELECT id, state, unseen, drained FROM nodes WHERE instance_id = ?1",
                        "FOR UPDATE",
                    ),
                    args![reg.instance_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .map_err(query("reading the node of an instance"))?;
            // An operator's drain outlasts the agent's restarts.
            let drained = existing.as_ref().is_some_and(|e| e.3);
            let to = if drained {
                NodeState::Draining
            } else {
                NodeState::Deployed
            };
            let (node_id, from) = match existing {
                Some((_, state, unseen, _))
                    if state == NodeState::Terminating.as_str()
                        || (state == NodeState::Terminated.as_str() && !unseen) =>
                {
                    return Err(StoreError::Changed {
                        what: format!("the node of {}", reg.instance_id),
                        now: state,
                    });
                }
                Some((id, state, _, _)) => {
                    update_registered(tx, id, to, reg, now)?;
                    (id, Some(state))
                }
                None => {
                    check_token_cap(tx, reg.admitted_by)?;
                    (insert_registered(tx, reg, now)?, None)
                }
            };
            count_token_use(tx, reg.cluster_id, reg.admitted_by)?;
            let reason = if drained {
                format!("{reason}; still drained by an operator (node undrain)")
            } else {
                reason.to_owned()
            };
            record_event(
                tx,
                node_id,
                now,
                from.as_deref(),
                to.as_str(),
                &reason,
                EventSource::Agent,
            )
        })?;
        self.node_by_instance(reg.instance_id)?
            .ok_or(StoreError::Corrupt {
                field: "nodes.instance_id",
                value: reg.instance_id.to_owned(),
            })
    }

    /// Forgets a node, its events with it: `node rm` of a bring-your-own
    /// node. The token that created it gets its place back. Returns
    /// whether it existed.
    pub fn delete_node(&self, node_id: i64) -> Result<bool, StoreError> {
        self.transaction(|tx| {
            tx.execute(
                "UPDATE cluster_tokens SET created = created - 1 \
                 WHERE created > 0 AND id = (SELECT token_id FROM nodes WHERE id = ?1)",
                args![node_id],
            )
            .map_err(query("giving a token its place back"))?;
            let deleted = tx
                .execute("DELETE FROM nodes WHERE id = ?1", args![node_id])
                .map_err(query("deleting a node"))?;
            Ok(deleted > 0)
        })
    }

    /// Records an address change of a node, with its event.
    pub fn update_addresses(
        &self,
        node_id: i64,
        state: NodeState,
        (private_ipv4, public_ipv4, ipv6): (Option<Ipv4Addr>, Option<Ipv4Addr>, Option<Ipv6Addr>),
        reason: &str,
        source: EventSource,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.transaction(|tx| {
            tx.execute(
                "UPDATE nodes SET private_ipv4 = ?2, public_ipv4 = ?3, updated_at = ?4, \
                 ipv6 = ?5 WHERE id = ?1",
                args![
                    node_id,
                    private_ipv4.map(|ip| ip.to_string()),
                    public_ipv4.map(|ip| ip.to_string()),
                    now,
                    ipv6.map(|ip| ip.to_string())
                ],
            )
            .map_err(query("updating node addresses"))?;
            record_event(
                tx,
                node_id,
                now,
                Some(state.as_str()),
                state.as_str(),
                reason,
                source,
            )
        })
    }

    /// Marks node `id` drained by an operator, or not. Returns whether
    /// the node exists.
    pub fn set_drained(&self, node_id: i64, drained: bool) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE nodes SET drained = ?2 WHERE id = ?1",
                args![node_id, drained],
            )
            .map(|changed| changed > 0)
            .map_err(query("marking a node drained"))
        })
    }

    /// Moves a node from `from` to `to` and records the event, in one
    /// transaction; `unseen` marks a node terminated only because EC2 did
    /// not know it (see [`Node::unseen`]). Returns false, writing nothing,
    /// if the node is no longer in `from` (someone else moved it first).
    pub fn transition(
        &self,
        node_id: i64,
        (from, to): (NodeState, NodeState),
        reason: &str,
        source: EventSource,
        unseen: bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        self.transaction(|tx| {
            let changed = tx
                .execute(
                    "UPDATE nodes SET state = ?3, updated_at = ?4, unseen = ?5 \
                     WHERE id = ?1 AND state = ?2",
                    args![node_id, from.as_str(), to.as_str(), now, unseen],
                )
                .map_err(query("updating a node's state"))?;
            if changed == 0 {
                return Ok(false);
            }
            record_event(
                tx,
                node_id,
                now,
                Some(from.as_str()),
                to.as_str(),
                reason,
                source,
            )?;
            Ok(true)
        })
    }
}

/// A register of a known instance: the node is `state` (`deployed`, or
/// `draining` if an operator drained it) again with the claimed zone,
/// addresses and a new credential.
fn update_registered(
    tx: &mut Db<'_>,
    id: i64,
    state: NodeState,
    reg: &NodeRegistration<'_>,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE nodes SET state = ?2, availability_zone = ?3, region = ?4, \
         private_ipv4 = ?5, public_ipv4 = ?6, credential_hash = ?7, updated_at = ?8, \
         unseen = 0, ipv6 = ?9 WHERE id = ?1",
        args![
            id,
            state.as_str(),
            reg.availability_zone,
            reg.region,
            reg.private_ipv4.map(|ip| ip.to_string()),
            reg.public_ipv4.map(|ip| ip.to_string()),
            reg.credential_hash,
            now,
            reg.ipv6.map(|ip| ip.to_string())
        ],
    )
    .map_err(query("updating a registered node"))?;
    Ok(())
}

/// A register of a new instance: a `deployed` node. Returns its row id.
/// Counts a new node against its token, refusing it past the token's cap
/// (a counter on the token's row: no count over the nodes per register).
fn check_token_cap(tx: &mut Db<'_>, by: AdmittedBy) -> Result<(), StoreError> {
    let AdmittedBy::Token { id, max_nodes } = by else {
        return Ok(());
    };
    let counted = tx
        .execute(
            "UPDATE cluster_tokens SET created = created + 1 \
             WHERE id = ?1 AND (max_nodes IS NULL OR created < max_nodes)",
            args![id],
        )
        .map_err(query("counting a token's nodes"))?;
    match max_nodes {
        Some(max) if counted == 0 => Err(StoreError::TokenSpent(max)),
        _ => Ok(()),
    }
}

/// Counts a register against the token that admitted it.
fn count_token_use(tx: &mut Db<'_>, cluster_id: i64, by: AdmittedBy) -> Result<(), StoreError> {
    let counted = match by {
        AdmittedBy::ClusterToken => tx.execute(
            "UPDATE clusters SET join_token_uses = join_token_uses + 1 WHERE id = ?1",
            args![cluster_id],
        ),
        AdmittedBy::Token { id, .. } => tx.execute(
            "UPDATE cluster_tokens SET uses = uses + 1 WHERE id = ?1",
            args![id],
        ),
        AdmittedBy::Credential => Ok(0),
    };
    counted.map(|_| ()).map_err(query("counting a token's use"))
}

fn insert_registered(
    tx: &mut Db<'_>,
    reg: &NodeRegistration<'_>,
    now: i64,
) -> Result<i64, StoreError> {
    let token_id = match reg.admitted_by {
        AdmittedBy::Token { id, .. } => Some(id),
        _ => None,
    };
    tx.query_one(
        "INSERT INTO nodes (cluster_id, name, instance_id, state, availability_zone, \
         region, private_ipv4, public_ipv4, credential_hash, created_at, updated_at, \
         byon, token_id, ipv6) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13) RETURNING id",
        args![
            reg.cluster_id,
            reg.name,
            reg.instance_id,
            NodeState::Deployed.as_str(),
            reg.availability_zone,
            reg.region,
            reg.private_ipv4.map(|ip| ip.to_string()),
            reg.public_ipv4.map(|ip| ip.to_string()),
            reg.credential_hash,
            now,
            reg.byon,
            token_id,
            reg.ipv6.map(|ip| ip.to_string())
        ],
        |row| row.get(0),
    )
    .map_err(|source| match source.unique_violation() {
        // SQLite names the column (`nodes.cluster_id, nodes.name`),
        // PostgreSQL the constraint (`nodes_cluster_id_name_key`).
        Some(what) if what.contains("name") => {
            StoreError::Taken(format!("the name {} in this cluster", reg.name))
        }
        Some(_) => StoreError::Taken(format!("instance {}", reg.instance_id)),
        None => query("inserting a node")(source),
    })
}
