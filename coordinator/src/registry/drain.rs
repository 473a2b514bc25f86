//! An operator's drain: `node drain` takes a node out of its cluster's
//! round robin and keeps it out, whatever its agent says and across its
//! restarts, until `node undrain`. The node keeps its own names. Draining
//! a node that is not heard (unreachable, stopped) marks it, so it comes
//! back `draining` when its agent is heard again.

use muster_proto::{EventSource, NodeState, NodeView};

use super::heartbeat::condition;
use super::lifecycle::Input;
use super::live::AgentReport;
use super::{Registry, RegistryError};

impl Registry {
    /// `node drain`: marks the node drained and takes it out of the round
    /// robin at once. Draining a drained node changes nothing.
    pub async fn drain_node(&self, cluster: &str, name: &str) -> Result<NodeView, RegistryError> {
        let node = self.drainable(cluster, name)?;
        if !node.drained {
            self.mark_drained(node.id, true).await?;
            tracing::info!(cluster = %node.cluster, node = %node.name, "node drained by an operator");
        }
        self.apply(node.id, Input::OperatorDrain, EventSource::Operator)
            .await?;
        Ok(self.node_view(&self.stored_node(cluster, name)?))
    }

    /// `node undrain`: lifts an operator's drain. A heard node goes where
    /// its agent's report says (`deployed`, `unhealthy`, or still
    /// `draining` if the agent itself is leaving); one not heard within the
    /// grace becomes `unreachable`.
    pub async fn undrain_node(&self, cluster: &str, name: &str) -> Result<NodeView, RegistryError> {
        let node = self.drainable(cluster, name)?;
        if node.drained {
            self.mark_drained(node.id, false).await?;
            tracing::info!(cluster = %node.cluster, node = %node.name, "node undrained by an operator");
        }
        let heard = {
            let live = self.live();
            live.nodes
                .get(&node.id)
                .filter(|n| n.last_heard.elapsed() <= self.timing.grace)
                .map(|n| {
                    let report = n
                        .report
                        .as_deref()
                        .cloned()
                        .unwrap_or_else(AgentReport::default);
                    condition(false, &report)
                })
        };
        self.apply(
            node.id,
            Input::OperatorUndrain(heard),
            EventSource::Operator,
        )
        .await?;
        Ok(self.node_view(&self.stored_node(cluster, name)?))
    }

    /// The node, unless it is on its way out.
    fn drainable(&self, cluster: &str, name: &str) -> Result<crate::store::Node, RegistryError> {
        let node = self.stored_node(cluster, name)?;
        if matches!(node.state, NodeState::Terminating | NodeState::Terminated) {
            return Err(RegistryError::NodeTerminated {
                cluster: node.cluster,
                node: node.name,
                state: node.state,
            });
        }
        Ok(node)
    }

    /// Writes the drained mark, in the store and in memory together.
    async fn mark_drained(&self, id: i64, drained: bool) -> Result<(), RegistryError> {
        let _write = self.write.lock().await;
        if !self.store.set_drained(id, drained)? {
            return Err(RegistryError::NotFound(format!("no node with id {id}")));
        }
        if let Some(entry) = self.live().nodes.get_mut(&id) {
            entry.drained = drained;
        }
        Ok(())
    }
}
