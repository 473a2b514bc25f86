//! Liveness and the sweep: silent nodes become `unreachable`, launches
//! that never registered `failed`, and EC2's view of every tracked
//! instance is read and applied (after the strays are settled:
//! [`super::strays`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use muster_proto::{EventSource, NodeState};

use super::ec2_view::implausible;
use super::lifecycle::Input;
use super::{Registry, RegistryError, SweepReport};
use crate::ec2::InstanceFacts;

impl Registry {
    /// Marks every heard node (deployed, unhealthy or draining) silent for
    /// longer than the grace period `unreachable`. Returns how many it marked.
    pub async fn check_liveness(&self) -> usize {
        let grace = self.timing.grace;
        let launch_timeout = self.timing.launch_timeout;
        let silent = || -> Vec<i64> {
            self.live()
                .nodes
                .iter()
                .filter(|(_, n)| n.state.is_heard() && n.last_heard.elapsed() > grace)
                .map(|(id, _)| *id)
                .collect()
        };
        let mut silent_here = silent();
        // Silent here may be heard by another replica: asked only then.
        if !silent_here.is_empty() && self.replica.is_some() {
            match self.merge_heard() {
                Ok(_) => silent_here = silent(),
                Err(error) => {
                    tracing::warn!(%error, "cannot read what the other coordinators heard: nobody is marked silent until it can");
                    silent_here.clear();
                }
            }
        }
        let overdue: Vec<i64> = {
            let live = self.live();
            live.nodes
                .iter()
                .filter(|(_, n)| {
                    n.state == NodeState::Launching && n.last_heard.elapsed() > launch_timeout
                })
                .map(|(id, _)| *id)
                .collect()
        };
        let timed_out = Input::LaunchTimedOut {
            after_secs: launch_timeout.as_secs(),
        };
        for id in overdue {
            if let Err(error) = self
                .apply(id, timed_out.clone(), EventSource::Liveness)
                .await
            {
                tracing::error!(%error, "liveness check could not fail a launch");
            }
        }
        let mut marked = 0;
        for id in silent_here {
            match self.apply(id, Input::Silent, EventSource::Liveness).await {
                Ok(NodeState::Unreachable) => marked += 1,
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "liveness check could not mark a node"),
            }
        }
        marked
    }

    /// Reads every tracked instance from EC2 and applies what EC2 says:
    /// stopped, terminated, unknown for too long, or running at another
    /// address than stored (DNS follows even if the agent is silent).
    /// Nothing moves while EC2 is not trusted, nor in a region whose answer
    /// is implausible ([`super::ec2_view`]).
    pub async fn sweep(&self) -> SweepReport {
        let mut report = SweepReport::default();
        if let Err(error) = self.ec2_trusted() {
            tracing::warn!(%error, "no sweep: EC2 is not trusted");
            report.failed_regions += 1;
            return report;
        }
        report.strays = self.settle_strays().await;
        let mut by_region: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for (id, node) in self.live().nodes.iter() {
            if node.state != NodeState::Terminated && !node.byon {
                by_region
                    .entry(node.region.to_string())
                    .or_default()
                    .push((*id, node.instance_id.clone()));
            }
        }
        for (region, nodes) in by_region {
            let ids: Vec<String> = nodes.iter().map(|(_, i)| i.clone()).collect();
            let read_at = Instant::now();
            let found = match self.ec2.describe_many(&region, &ids).await {
                Ok(found) => found,
                Err(error) => {
                    // Nothing is concluded from a failed read.
                    tracing::warn!(%error, %region, "sweep could not read EC2; trying again next time");
                    report.failed_regions += 1;
                    continue;
                }
            };
            report.seen += found.len();
            if implausible(nodes.len(), found.len()) {
                // A wrong endpoint or account, or an EC2 in trouble: not
                // a fleet that vanished (see ec2_view).
                tracing::warn!(
                    %region,
                    tracked = nodes.len(),
                    known = found.len(),
                    "EC2 knows implausibly few of the region's instances; \
                     this read is not believed and nothing moves"
                );
                self.counters
                    .untrusted_reads
                    .fetch_add(1, Ordering::Relaxed);
                report.failed_regions += 1;
                continue;
            }
            for (id, instance_id) in nodes {
                if let Err(error) = self.sweep_one(id, found.get(&instance_id), read_at).await {
                    tracing::error!(%error, %instance_id, "sweep could not apply EC2's view");
                }
            }
        }
        self.counters.sweeps.fetch_add(1, Ordering::Relaxed);
        report
    }

    /// Applies EC2's view of node `id`'s instance, read at `read_at`.
    pub(super) async fn sweep_one(
        &self,
        id: i64,
        facts: Option<&InstanceFacts>,
        read_at: Instant,
    ) -> Result<(), RegistryError> {
        let Some(facts) = facts else {
            let sweeps = {
                let mut live = self.live();
                let Some(entry) = live.nodes.get_mut(&id) else {
                    return Ok(());
                };
                entry.unknown_sweeps += 1;
                entry.unknown_sweeps
            };
            self.apply(id, Input::Ec2Unknown { sweeps }, EventSource::Sweep)
                .await?;
            return Ok(());
        };
        let (state, ipv6) = {
            let mut live = self.live();
            let Some(entry) = live.nodes.get_mut(&id) else {
                return Ok(());
            };
            entry.unknown_sweeps = 0;
            (entry.state, entry.ipv6)
        };
        let input = match facts.state.as_str() {
            "pending" | "running" => Input::Ec2Running,
            "stopped" => Input::Ec2Stopped,
            "shutting-down" | "terminated" => Input::Ec2Gone,
            // "stopping": wait for where it lands.
            _ => return Ok(()),
        };
        if input == Input::Ec2Running && (state.is_heard() || state == NodeState::Unreachable) {
            // The node's IPv6 address stands while the instance still has
            // it; one it lost moves to the instance's first, if any.
            // (One whose agent names none gets none from the sweep either.)
            let ipv6 = match ipv6 {
                Some(v6) if facts.ipv6.contains(&v6) => Some(v6),
                Some(_) => facts.ipv6.first().copied(),
                None => None,
            };
            if facts.private_ipv4.is_some() || ipv6.is_some() {
                self.set_addresses(
                    id,
                    (facts.private_ipv4, facts.public_ipv4, ipv6),
                    EventSource::Sweep,
                    Some(read_at),
                )
                .await?;
            }
        }
        self.apply(id, input, EventSource::Sweep).await?;
        Ok(())
    }
}
