//! Nodes as the admin API shows them: their states (docs/architecture.md), the
//! node view, and the events that record each transition.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{CheckReport, Ec2Notice, HostFacts, ValidationError};

/// The life of a node, as docs/architecture.md draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Instance requested, agent not heard yet.
    Launching,
    /// Agent registered and DNS set.
    Deployed,
    /// Heard, but the node's own health checks fail: out of the cluster's
    /// round robin, its own names kept.
    Unhealthy,
    /// Leaving (its agent stopping, a Spot interruption, an operator's
    /// drain): out of the cluster's round robin, its own names kept.
    Draining,
    /// Heartbeats missed beyond the grace.
    Unreachable,
    /// EC2 says stopped.
    Stopped,
    /// Asked to terminate; waiting for EC2 to say so.
    Terminating,
    /// EC2 says terminated; DNS removed.
    Terminated,
    /// Never registered within the launch timeout, or the launch failed.
    Failed,
}

impl NodeState {
    /// Every state, in lifecycle order.
    pub const ALL: [NodeState; 9] = [
        NodeState::Launching,
        NodeState::Deployed,
        NodeState::Unhealthy,
        NodeState::Draining,
        NodeState::Unreachable,
        NodeState::Stopped,
        NodeState::Terminating,
        NodeState::Terminated,
        NodeState::Failed,
    ];

    /// Whether the agent is heard in this state: `deployed`, or one of
    /// the two states a heard node leaves the round robin in.
    pub fn is_heard(self) -> bool {
        matches!(
            self,
            NodeState::Deployed | NodeState::Unhealthy | NodeState::Draining
        )
    }

    /// The lowercase name used on the wire, in the store and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Launching => "launching",
            NodeState::Deployed => "deployed",
            NodeState::Unhealthy => "unhealthy",
            NodeState::Draining => "draining",
            NodeState::Unreachable => "unreachable",
            NodeState::Stopped => "stopped",
            NodeState::Terminating => "terminating",
            NodeState::Terminated => "terminated",
            NodeState::Failed => "failed",
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ValidationError::new("state", s, "is not a node state"))
    }
}

/// A node as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    /// Node name: a DNS label, unique within its cluster.
    pub name: String,
    /// Cluster the node belongs to.
    pub cluster: String,
    /// EC2 instance id, one instance being one node; `m-<machine id>` for
    /// a bring-your-own node.
    pub instance_id: String,
    /// Whether it joined with a bring-your-own token: no EC2 checks, no
    /// sweep; `node rm` deletes it.
    #[serde(default)]
    pub byon: bool,
    /// Current state.
    pub state: NodeState,
    /// Availability zone.
    pub availability_zone: String,
    /// Region.
    pub region: String,
    /// Primary private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4, if any.
    pub public_ipv4: Option<Ipv4Addr>,
    /// IPv6 address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// `name.cluster.zone`.
    pub dns_name: String,
    /// `name.cluster.internal.zone`.
    pub internal_dns_name: String,
    /// When the node was first recorded, RFC 3339.
    pub created_at: String,
    /// When the node last changed state or address, RFC 3339.
    pub updated_at: String,
    /// When the coordinator last heard the agent since it started, RFC 3339.
    pub last_seen_at: Option<String>,
    /// Host facts from the latest heartbeat since the coordinator started.
    pub facts: Option<HostFacts>,
    /// The node's health checks, from the latest heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckReport>,
    /// The warnings EC2 gives the instance, from the latest heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<Ec2Notice>,
    /// Whether an operator drained the node (`node drain`): it stays
    /// `draining`, whatever its agent says, until `node undrain`.
    #[serde(default)]
    pub drained: bool,
    /// The agent's version, from its latest heartbeat since the
    /// coordinator started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// Who or what caused a node event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// The agent: a register, a heartbeat, an address change it pushed.
    Agent,
    /// The coordinator's liveness check: heartbeats missed.
    Liveness,
    /// The coordinator's EC2 sweep.
    Sweep,
    /// An operator, through the admin API.
    Operator,
}

impl EventSource {
    /// Every source.
    pub const ALL: [EventSource; 4] = [
        EventSource::Agent,
        EventSource::Liveness,
        EventSource::Sweep,
        EventSource::Operator,
    ];

    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            EventSource::Agent => "agent",
            EventSource::Liveness => "liveness",
            EventSource::Sweep => "sweep",
            EventSource::Operator => "operator",
        }
    }
}

impl fmt::Display for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventSource {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventSource::ALL
            .into_iter()
            .find(|source| source.as_str() == s)
            .ok_or_else(|| ValidationError::new("source", s, "is not an event source"))
    }
}

/// One recorded transition or address change of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEvent {
    /// Sequence number, increasing with time; pages start after one.
    pub seq: i64,
    /// When, RFC 3339.
    pub at: String,
    /// State before, if any.
    pub from: Option<NodeState>,
    /// State after.
    pub to: NodeState,
    /// Why, in words.
    pub reason: String,
    /// Who or what caused it.
    pub source: EventSource,
}

/// Most events one page holds.
pub const MAX_EVENTS_PER_PAGE: usize = 1000;

/// Events `GET /v1/nodes/{cluster}/{name}` shows: the latest ones.
pub const EVENTS_IN_DETAIL: usize = 100;

/// `GET /v1/nodes/{cluster}/{name}/events?after=SEQ&limit=N`: one page of a
/// node's events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<NodeEvent>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// `GET /v1/nodes/{cluster}/{name}`: a node with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDetail {
    /// The node.
    pub node: NodeView,
    /// Its latest events (at most [`EVENTS_IN_DETAIL`]), oldest first; the
    /// events path pages through all of them.
    pub events: Vec<NodeEvent>,
    /// How many events the node has in all.
    pub events_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node states parse back from their wire names.
    #[test]
    fn states_round_trip() {
        for state in NodeState::ALL {
            assert_eq!(state.as_str().parse::<NodeState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        assert!("dead".parse::<NodeState>().is_err());
    }
}
