//! The heartbeat flow: an agent with its node credential says it is alive,
//! where it can be reached and how the node is (its checks, EC2's
//! warnings, whether it is leaving); new addresses are checked and stored,
//! the node's condition moves its state ([`condition`]), everything else
//! stays in memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use muster_proto::token::TokenKind;
use muster_proto::{EventSource, HeartbeatRequest, HeartbeatResponse, NodeState};

use super::admit::credential_holder;
use super::claim::Claim;
use super::lifecycle::{Condition, Input};
use super::live::AgentReport;
use super::{show_ip, Registry, RegistryError};

/// A node's addresses: private IPv4, public IPv4, IPv6 (an IPv6-only
/// node has no IPv4 address).
pub(super) type Addresses = (Option<Ipv4Addr>, Option<Ipv4Addr>, Option<Ipv6Addr>);

/// "address changed: public 1.2.3.4 -> 5.6.7.8", naming only what changed.
fn address_change_reason(before: Addresses, after: Addresses) -> String {
    let mut parts = Vec::new();
    for (label, old, new) in [
        ("private", before.0, after.0),
        ("public", before.1, after.1),
    ] {
        if old != new {
            parts.push(format!("{label} {} -> {}", show_ip(old), show_ip(new)));
        }
    }
    if before.2 != after.2 {
        parts.push(format!(
            "ipv6 {} -> {}",
            show_ip(before.2),
            show_ip(after.2)
        ));
    }
    format!("address changed: {}", parts.join(", "))
}

/// What a heard node's state should say, from what its agent reports:
/// an operator's drain first, then the agent leaving, then its checks.
pub(super) fn condition(drained: bool, report: &AgentReport) -> Condition {
    if drained {
        return Condition::Leaving("an operator drained the node (node drain)".to_owned());
    }
    if let Some(why) = &report.leaving {
        return Condition::Leaving(format!("leaving: {why}"));
    }
    let failing: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.passing)
        .map(|c| {
            let first = c.output.lines().next().unwrap_or("");
            format!("{} ({})", c.name, first)
        })
        .collect();
    if failing.is_empty() {
        Condition::Ready
    } else {
        Condition::Unhealthy(format!("health checks failing: {}", failing.join(", ")))
    }
}

impl Registry {
    /// An agent heartbeats with its node credential. New addresses are
    /// checked against EC2, stored and published; everything else stays in
    /// memory.
    pub async fn heartbeat(
        &self,
        bearer: &str,
        req: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, RegistryError> {
        self.heartbeat_from(bearer, req, None).await
    }

    /// [`Registry::heartbeat`] from `source`, the client's address, which
    /// `verify_source` checks.
    pub async fn heartbeat_from(
        &self,
        bearer: &str,
        req: HeartbeatRequest,
        source: Option<IpAddr>,
    ) -> Result<HeartbeatResponse, RegistryError> {
        let instance_id = req.instance_id.clone();
        self.heartbeat_checked(bearer, req, source)
            .await
            .map_err(|e| self.refuse("heartbeat", &instance_id, e, source))
    }

    pub(super) async fn heartbeat_checked(
        &self,
        bearer: &str,
        req: HeartbeatRequest,
        source: Option<IpAddr>,
    ) -> Result<HeartbeatResponse, RegistryError> {
        req.validate()?;
        self.check_addresses(
            &req.instance_id,
            source,
            req.private_ipv4,
            req.public_ipv4,
            req.ipv6,
        )?;
        if TokenKind::of(bearer) != Some(TokenKind::Node) {
            return Err(RegistryError::Unauthorized(
                "a heartbeat needs \"Authorization: Bearer <node credential>\"".into(),
            ));
        }
        let (id, node) = credential_holder(&self.live(), bearer, &req.instance_id)?;
        // A node terminated only because EC2 did not know it may come
        // back, once EC2 confirms the instance (ec2_view).
        let reappearing = node.state == NodeState::Terminated && node.unseen && !node.byon;
        if matches!(node.state, NodeState::Terminating | NodeState::Terminated) && !reappearing {
            return Err(RegistryError::NodeTerminated {
                cluster: node.cluster.to_string(),
                node: node.name,
                state: node.state,
            });
        }
        let moved = node.private_ipv4 != req.private_ipv4
            || node.public_ipv4 != req.public_ipv4
            || node.ipv6 != req.ipv6;
        // A node EC2 last saw stopped (or that never ran) counts as deployed
        // again only once EC2 confirms the instance runs with these addresses.
        let confirm = !(node.state.is_heard() || node.state == NodeState::Unreachable);
        if (moved || confirm) && !node.byon {
            self.check_claim(Claim {
                cluster: &node.cluster,
                region: &node.region,
                instance_id: &node.instance_id,
                availability_zone: None,
                private_ipv4: req.private_ipv4,
                public_ipv4: req.public_ipv4,
                ipv6: req.ipv6,
            })
            .await?;
        }
        if moved {
            self.set_addresses(
                id,
                (req.private_ipv4, req.public_ipv4, req.ipv6),
                EventSource::Agent,
                None,
            )
            .await?;
        }
        let report = AgentReport {
            checks: req.checks,
            notices: req.notices,
            leaving: req.leaving,
            agent_version: req.agent_version,
        };
        // Read the state after last_heard moves: a liveness check that comes
        // later sees the fresh time and leaves the node alone.
        let current = {
            let mut live = self.live();
            live.nodes.get_mut(&id).map(|entry| {
                entry.last_seen = Some(SystemTime::now());
                entry.last_heard = Instant::now();
                entry.facts = Some(Arc::new(req.facts));
                if entry.report.as_deref() != Some(&report) {
                    entry.report = Some(Arc::new(report));
                }
                (entry.state, entry.drained, entry.report.clone())
            })
        };
        let Some((current, drained, report)) = current else {
            return Err(RegistryError::NotFound(format!("no node with id {id}")));
        };
        let condition = condition(
            drained,
            report.as_deref().unwrap_or(&AgentReport::default()),
        );
        // The common case, a deployed node with nothing against it, takes
        // no write lock.
        let state = match (current, reappearing, &condition) {
            (NodeState::Deployed, false, Condition::Ready) => NodeState::Deployed,
            (_, true, _) => {
                self.apply(id, Input::Reappeared, EventSource::Agent)
                    .await?
            }
            _ => {
                self.apply(id, Input::Heard(condition), EventSource::Agent)
                    .await?
            }
        };
        self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(HeartbeatResponse {
            state,
            heartbeat_interval_ms: self.timing.heartbeat_interval.as_millis() as u64,
            heartbeat_jitter_ms: self.timing.heartbeat_jitter.as_millis() as u64,
        })
    }

    /// Stores and publishes new addresses of node `id`, already checked
    /// against EC2, with an event naming what changed. Addresses from an
    /// EC2 read made at `read_at` (the sweep's) are dropped if the node's
    /// were written since: the last write is the newest truth.
    pub(super) async fn set_addresses(
        &self,
        id: i64,
        (private_ipv4, public_ipv4, ipv6): Addresses,
        source: EventSource,
        read_at: Option<Instant>,
    ) -> Result<(), RegistryError> {
        let _write = self.write.lock().await;
        let Some(node) = self.live().nodes.get(&id).cloned() else {
            return Ok(());
        };
        if node.private_ipv4 == private_ipv4 && node.public_ipv4 == public_ipv4 && node.ipv6 == ipv6
        {
            return Ok(());
        }
        if read_at.is_some_and(|read| node.addresses_at > read) {
            tracing::debug!(cluster = %node.cluster, node = %node.name, "an older EC2 read leaves newer addresses alone");
            return Ok(());
        }
        let reason = address_change_reason(
            (node.private_ipv4, node.public_ipv4, node.ipv6),
            (private_ipv4, public_ipv4, ipv6),
        );
        self.store.update_addresses(
            id,
            node.state,
            (private_ipv4, public_ipv4, ipv6),
            &reason,
            source,
        )?;
        {
            let mut live = self.live();
            if let Some(entry) = live.nodes.get_mut(&id) {
                entry.private_ipv4 = private_ipv4;
                entry.public_ipv4 = public_ipv4;
                entry.ipv6 = ipv6;
                entry.addresses_at = Instant::now();
            }
        }
        self.publish();
        self.counters
            .address_changes
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(cluster = %node.cluster, node = %node.name, %source, %reason, "node address changed");
        Ok(())
    }
}
