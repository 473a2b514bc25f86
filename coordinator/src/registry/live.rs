//! The live view: every node in memory, with what heartbeats bring that is
//! never written to disk, and the index from credential to node.
//!
//! It mirrors the store: every write to the store is followed by the same
//! change here, under the registry's write lock. It holds the nodes that
//! may still speak or be answered for: a node terminated for good leaves
//! it (and so the zone and the sweep) at once, and stays in the store
//! until `--retention` prunes it; one terminated only because EC2 did not
//! know it ([`Node::unseen`]) stays, as it may come back. So memory, zone
//! rebuilds and sweeps cost O(live nodes), not O(every node ever).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use muster_proto::{CheckReport, Ec2Notice, HostFacts, NodeState};

use crate::dns::NodeRecordSource;
use crate::secrets::{stored_digest, SecretDigest};
use crate::store::Node;

/// A node as kept in memory: the stored fields the hot paths need, plus
/// what heartbeats bring (never written to disk).
#[derive(Debug, Clone)]
pub(super) struct LiveNode {
    /// Shared by every node of the cluster ([`Live::intern`]).
    pub(super) cluster: Arc<str>,
    pub(super) name: String,
    pub(super) instance_id: String,
    /// Shared by every node of the region.
    pub(super) region: Arc<str>,
    /// A bring-your-own node: EC2 is never asked about it.
    pub(super) byon: bool,
    /// Terminated only because EC2 did not know it ([`Node::unseen`]).
    pub(super) unseen: bool,
    pub(super) state: NodeState,
    pub(super) private_ipv4: Option<Ipv4Addr>,
    pub(super) public_ipv4: Option<Ipv4Addr>,
    pub(super) ipv6: Option<Ipv6Addr>,
    /// The credential's SHA-256, as the index keys it.
    pub(super) credential_hash: Option<SecretDigest>,
    pub(super) last_seen: Option<SystemTime>,
    /// When the agent was last heard, or when this coordinator started:
    /// every node gets one full grace after a restart.
    pub(super) last_heard: Instant,
    /// When its addresses were last written (a register, a heartbeat's
    /// move, a sweep): a sweep's older EC2 read never overwrites them.
    pub(super) addresses_at: Instant,
    /// Sweeps in a row that EC2 did not know the instance.
    pub(super) unknown_sweeps: u32,
    /// Shared, so that a heartbeat's copy of the node does not copy them.
    pub(super) facts: Option<Arc<HostFacts>>,
    /// An operator drained it ([`Node::drained`]).
    pub(super) drained: bool,
    /// What the latest heartbeat said of its checks, EC2's warnings and
    /// whether it is leaving.
    pub(super) report: Option<Arc<AgentReport>>,
}

/// What a heartbeat says of the node beyond its addresses and facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct AgentReport {
    pub(super) checks: Vec<CheckReport>,
    pub(super) notices: Vec<Ec2Notice>,
    pub(super) leaving: Option<String>,
    pub(super) agent_version: Option<String>,
}

/// The in-memory view: every node by row id, and the credential index.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) nodes: HashMap<i64, LiveNode>,
    pub(super) by_credential: HashMap<SecretDigest, i64>,
    /// Cluster and region names, each held once.
    pub(super) interned: HashSet<Arc<str>>,
}

impl Live {
    /// `text`, shared with every other holder of the same text.
    pub(super) fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.interned.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.interned.insert(shared.clone());
        shared
    }

    /// Takes `node` as stored now; a node terminated for good is
    /// forgotten instead.
    pub(super) fn upsert(&mut self, node: &Node) {
        if node.state == NodeState::Terminated && !node.unseen {
            self.remove(node.id);
            return;
        }
        let previous = self.nodes.remove(&node.id);
        if let Some(old_hash) = previous.as_ref().and_then(|p| p.credential_hash.as_ref()) {
            self.by_credential.remove(old_hash);
        }
        let credential_hash = node.credential_hash.as_deref().and_then(stored_digest);
        if let Some(hash) = credential_hash {
            self.by_credential.insert(hash, node.id);
        }
        let (cluster, region) = (self.intern(&node.cluster), self.intern(&node.region));
        self.nodes.insert(
            node.id,
            LiveNode {
                cluster,
                name: node.name.clone(),
                instance_id: node.instance_id.clone(),
                region,
                byon: node.byon,
                unseen: node.unseen,
                state: node.state,
                private_ipv4: node.private_ipv4,
                public_ipv4: node.public_ipv4,
                ipv6: node.ipv6,
                credential_hash,
                last_seen: previous.as_ref().and_then(|p| p.last_seen),
                last_heard: previous
                    .as_ref()
                    .map_or_else(Instant::now, |p| p.last_heard),
                addresses_at: previous
                    .as_ref()
                    .filter(|p| {
                        p.private_ipv4 == node.private_ipv4
                            && p.public_ipv4 == node.public_ipv4
                            && p.ipv6 == node.ipv6
                    })
                    .map_or_else(Instant::now, |p| p.addresses_at),
                unknown_sweeps: previous.as_ref().map_or(0, |p| p.unknown_sweeps),
                drained: node.drained,
                report: previous.as_ref().and_then(|p| p.report.clone()),
                facts: previous.and_then(|p| p.facts),
            },
        );
    }

    /// Forgets node `id` and its credential.
    pub(super) fn remove(&mut self, id: i64) {
        if let Some(node) = self.nodes.remove(&id) {
            if let Some(hash) = node.credential_hash {
                self.by_credential.remove(&hash);
            }
        }
    }

    pub(super) fn record_sources(&self) -> Vec<NodeRecordSource> {
        self.nodes
            .values()
            .map(|n| NodeRecordSource {
                cluster: n.cluster.to_string(),
                name: n.name.clone(),
                state: n.state,
                private_ipv4: n.private_ipv4,
                public_ipv4: n.public_ipv4,
                ipv6: n.ipv6,
            })
            .collect()
    }
}
