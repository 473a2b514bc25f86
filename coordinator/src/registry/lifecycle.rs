//! The node state machine (docs/architecture.md, "Node states"): one pure
//! function, and the one place that applies its answers.
//!
//! [`next`] says what a node in some state becomes when something is
//! observed, and why; [`Registry::apply`] applies the answer (store,
//! event, memory, DNS together): the one writer of transitions.
//! Keeping it pure lets a property test walk every sequence of inputs.
//!
//! The rules that users of earlier systems were burned by:
//! - Silence is never death. A node that stops heartbeating becomes
//!   `unreachable` and stays a node; only EC2 can make it `terminated`
//!   (the instance is `shutting-down`/`terminated`, or EC2 has not known its
//!   id for several sweeps in a row, which rides out eventual consistency).
//! - Being heard again (register or heartbeat, both checked against EC2
//!   where addresses are concerned) brings any live state back to `deployed`,
//!   or to `unhealthy` or `draining` when the agent says its checks fail or
//!   the node is leaving ([`Condition`]). Both leave the round robin at
//!   once and keep their own names; silent, either becomes `unreachable`
//!   like a deployed node (an operator's drain is kept apart, in the store,
//!   and applies again when the agent is heard).
//! - `terminating` and `terminated` are final as far as agents go: only
//!   EC2's word moves `terminating` on. The one way back from
//!   `terminated` is for a node terminated only because EC2 did not know
//!   its instance, once EC2 confirms it runs ([`Input::Reappeared`]).

use muster_proto::{EventSource, NodeState};

use super::{Registry, RegistryError};

/// What the agent says about the node when it is heard, as the registry
/// reads it: an operator's drain first, then the agent leaving, then its
/// health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Nothing against it: in the round robin.
    Ready,
    /// Its health checks fail: why.
    Unhealthy(String),
    /// It is leaving, or an operator drained it: why.
    Leaving(String),
}

/// What was observed about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The agent registered or heartbeated, and the claim passed its checks.
    Heard(Condition),
    /// An operator drained the node (`node drain`).
    OperatorDrain,
    /// An operator undrained the node (`node undrain`): `Some` with what
    /// its agent said last if it was heard within the grace, else `None`.
    OperatorUndrain(Option<Condition>),
    /// No heartbeat within the grace period.
    Silent,
    /// The sweep found the instance `pending` or `running`.
    Ec2Running,
    /// The sweep found the instance `stopped`.
    Ec2Stopped,
    /// The sweep found the instance `shutting-down` or `terminated`.
    Ec2Gone,
    /// The sweep did not find the instance; `sweeps` in a row so far.
    Ec2Unknown {
        /// Consecutive sweeps that did not find it, this one included.
        sweeps: u32,
    },
    /// An operator asked to remove the node (`node rm`, `cluster rm`,
    /// `cluster scale` down).
    OperatorRemove,
    /// The node's cluster reached the end of its lifetime
    /// (`cluster create --expires-in`).
    ClusterExpired,
    /// The agent of a node terminated only because EC2 did not know its
    /// instance is heard again, and EC2 confirms the instance runs with
    /// the addresses it claims.
    Reappeared,
    /// A launched node's agent has not registered within the launch
    /// timeout, `after_secs` seconds.
    LaunchTimedOut {
        /// The timeout.
        after_secs: u64,
    },
}

/// Where a heard node in `state` goes for `condition`, and why.
fn heard(state: NodeState, condition: &Condition) -> Option<(NodeState, String)> {
    use NodeState::*;
    match (condition, state) {
        (Condition::Ready, Deployed) => None,
        (Condition::Ready, Unhealthy) => Some((Deployed, "its health checks pass".to_owned())),
        (Condition::Ready, Draining) => Some((Deployed, "agent heard; not leaving".to_owned())),
        (Condition::Ready, _) => Some((Deployed, "agent heard".to_owned())),
        (Condition::Unhealthy(_), Unhealthy) => None,
        (Condition::Unhealthy(why), _) => Some((Unhealthy, why.clone())),
        (Condition::Leaving(_), Draining) => None,
        (Condition::Leaving(why), _) => Some((Draining, why.clone())),
    }
}

/// The state `state` moves to on `input`, with the reason to record, or
/// `None` if it stays. `unknown_limit` is how many sweeps in a row an
/// instance must be unknown to EC2 before its node counts as terminated.
pub fn next(state: NodeState, input: &Input, unknown_limit: u32) -> Option<(NodeState, String)> {
    use NodeState::*;
    let to = match (input, state) {
        (Input::Reappeared, Terminated) => (
            Deployed,
            "back: EC2 reports the instance running again, after it was terminated for \
             not being found, and its agent is heard"
                .to_owned(),
        ),
        (Input::Reappeared, _) => return None,
        (_, Terminated) => return None,
        (Input::Heard(_), Terminating) => return None,
        (Input::Heard(condition), _) => return heard(state, condition),
        (Input::OperatorDrain, Deployed | Unhealthy) => (
            Draining,
            "an operator drained the node (node drain)".to_owned(),
        ),
        (Input::OperatorDrain, _) => return None,
        (Input::OperatorUndrain(Some(condition)), Draining) => {
            let (to, why) = heard(state, condition)?;
            (
                to,
                format!("an operator undrained the node (node undrain); {why}"),
            )
        }
        (Input::OperatorUndrain(None), Draining) => (
            Unreachable,
            "an operator undrained the node (node undrain); its agent is not heard".to_owned(),
        ),
        (Input::OperatorUndrain(_), _) => return None,
        (Input::Silent, Deployed | Unhealthy | Draining) => (
            Unreachable,
            "no heartbeat within the grace period".to_owned(),
        ),
        (Input::Silent, _) => return None,
        (Input::Ec2Running, Stopped) => (
            Unreachable,
            "EC2 says running again; agent not heard yet".to_owned(),
        ),
        (Input::Ec2Running, _) => return None,
        (Input::Ec2Stopped, Stopped | Terminating) => return None,
        (Input::Ec2Stopped, _) => (Stopped, "EC2 says stopped".to_owned()),
        (Input::Ec2Gone, _) => (Terminated, "EC2 says the instance is terminated".to_owned()),
        (&Input::Ec2Unknown { sweeps }, _) if sweeps >= unknown_limit => (
            Terminated,
            format!("EC2 has not known the instance for {sweeps} sweeps in a row"),
        ),
        (Input::Ec2Unknown { .. }, _) => return None,
        (&Input::LaunchTimedOut { after_secs }, Launching) => (
            Failed,
            format!("the agent did not register within the launch timeout of {after_secs}s"),
        ),
        (Input::LaunchTimedOut { .. }, _) => return None,
        (Input::OperatorRemove | Input::ClusterExpired, Terminating) => return None,
        (Input::OperatorRemove, _) => (Terminating, "operator asked to remove the node".to_owned()),
        (Input::ClusterExpired, _) => (
            Terminating,
            "the cluster's lifetime ended (cluster create --expires-in)".to_owned(),
        ),
    };
    Some(to)
}

impl Registry {
    /// Applies `input` to node `id` through the state machine: on a
    /// transition the store, the event, memory and DNS move together.
    /// Returns the node's state afterwards.
    pub(super) async fn apply(
        &self,
        id: i64,
        input: Input,
        source: EventSource,
    ) -> Result<NodeState, RegistryError> {
        let _write = self.write.lock().await;
        let Some(node) = self.live().nodes.get(&id).cloned() else {
            // A node terminated for good has left memory (live.rs), perhaps
            // since the caller read it (a sweep racing a removal): there is
            // nothing more to do to it.
            return match self.store.node_state(id)? {
                Some(NodeState::Terminated) => Ok(NodeState::Terminated),
                _ => Err(RegistryError::NotFound(format!("no node with id {id}"))),
            };
        };
        // A heartbeat may have landed since the liveness check looked.
        if input == Input::Silent && node.last_heard.elapsed() <= self.timing.grace {
            return Ok(node.state);
        }
        if matches!(input, Input::LaunchTimedOut { .. })
            && node.last_heard.elapsed() <= self.timing.launch_timeout
        {
            return Ok(node.state);
        }
        let Some((to, reason)) = next(node.state, &input, self.timing.unknown_sweeps) else {
            return Ok(node.state);
        };
        // A node terminated for not being found may come back
        // (ec2_view); one EC2 said is terminated may not.
        let unseen = to == NodeState::Terminated && matches!(input, Input::Ec2Unknown { .. });
        if !self
            .store
            .transition(id, (node.state, to), &reason, source, unseen)?
        {
            // The store disagrees with memory: reload this node from it.
            if let Some(stored) = self.store.node(&node.cluster, &node.name)? {
                self.live().upsert(&stored);
                return Ok(stored.state);
            }
            return Ok(node.state);
        }
        self.counters.transitioned(Some(node.state), to);
        {
            let mut live = self.live();
            if to == NodeState::Terminated && !unseen {
                // Terminated for good: out of memory at once (live.rs).
                live.remove(id);
            } else if let Some(entry) = live.nodes.get_mut(&id) {
                entry.state = to;
                entry.unseen = unseen;
            }
        }
        self.publish();
        tracing::info!(
            cluster = %node.cluster,
            node = %node.name,
            from = %node.state,
            to = %to,
            %source,
            %reason,
            "node state changed"
        );
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u32 = 3;

    /// The three burns: silence makes `unreachable`, not dead; hearing the
    /// agent again brings it back; only EC2 terminates.
    #[test]
    pub(super) fn silence_is_not_death() {
        let (s, _) = next(NodeState::Deployed, &Input::Silent, LIMIT).unwrap();
        assert_eq!(s, NodeState::Unreachable);
        assert_eq!(next(s, &Input::Silent, LIMIT), None);
        let (s, _) = next(s, &Input::Heard(Condition::Ready), LIMIT).unwrap();
        assert_eq!(s, NodeState::Deployed);
        assert_eq!(next(s, &Input::Ec2Unknown { sweeps: 2 }, LIMIT), None);
        let (s, reason) = next(s, &Input::Ec2Unknown { sweeps: 3 }, LIMIT).unwrap();
        assert_eq!(s, NodeState::Terminated);
        assert!(reason.contains("3 sweeps"), "{reason}");
    }

    /// Stop and start: stopped, then unreachable until the agent speaks.
    #[test]
    pub(super) fn stop_and_start() {
        let (s, _) = next(NodeState::Deployed, &Input::Ec2Stopped, LIMIT).unwrap();
        assert_eq!(s, NodeState::Stopped);
        let (s, _) = next(s, &Input::Ec2Running, LIMIT).unwrap();
        assert_eq!(s, NodeState::Unreachable);
        assert_eq!(
            next(s, &Input::Heard(Condition::Ready), LIMIT).unwrap().0,
            NodeState::Deployed
        );
    }

    /// A launch that never registers fails, and registering later heals it.
    #[test]
    pub(super) fn launch_timeout() {
        let timeout = Input::LaunchTimedOut { after_secs: 600 };
        let (s, reason) = next(NodeState::Launching, &timeout, LIMIT).unwrap();
        assert_eq!(s, NodeState::Failed);
        assert!(reason.contains("600s"), "{reason}");
        assert_eq!(next(NodeState::Deployed, &timeout, LIMIT), None);
        assert_eq!(next(s, &timeout, LIMIT), None);
        assert_eq!(
            next(s, &Input::Heard(Condition::Ready), LIMIT).unwrap().0,
            NodeState::Deployed
        );
    }

    /// A removal waits for EC2; agents cannot undo it.
    #[test]
    pub(super) fn removal_waits_for_ec2() {
        let (s, _) = next(NodeState::Deployed, &Input::OperatorRemove, LIMIT).unwrap();
        assert_eq!(s, NodeState::Terminating);
        assert_eq!(next(s, &Input::Heard(Condition::Ready), LIMIT), None);
        assert_eq!(next(s, &Input::Silent, LIMIT), None);
        assert_eq!(
            next(s, &Input::Ec2Gone, LIMIT).unwrap().0,
            NodeState::Terminated
        );
    }

    /// Failing checks and leaving take a heard node out of the round robin;
    /// passing checks bring it back; silence makes either unreachable, and
    /// an undrain follows what the agent said last.
    #[test]
    fn unhealthy_and_draining() {
        let failing = Input::Heard(Condition::Unhealthy("web: HTTP 500".to_owned()));
        let (s, reason) = next(NodeState::Deployed, &failing, LIMIT).unwrap();
        assert_eq!(
            (s, reason.as_str()),
            (NodeState::Unhealthy, "web: HTTP 500")
        );
        assert_eq!(next(s, &failing, LIMIT), None);
        let (s, _) = next(s, &Input::Silent, LIMIT).unwrap();
        assert_eq!(s, NodeState::Unreachable);
        let ready = Input::Heard(Condition::Ready);
        let (s, _) = next(NodeState::Unhealthy, &ready, LIMIT).unwrap();
        assert_eq!(s, NodeState::Deployed);

        let leaving = Input::Heard(Condition::Leaving("agent stopping".to_owned()));
        let (s, _) = next(NodeState::Unhealthy, &leaving, LIMIT).unwrap();
        assert_eq!(s, NodeState::Draining);
        assert_eq!(next(s, &ready, LIMIT).unwrap().0, NodeState::Deployed);
        assert_eq!(
            next(s, &Input::Silent, LIMIT).unwrap().0,
            NodeState::Unreachable
        );
        assert_eq!(
            next(s, &Input::Ec2Stopped, LIMIT).unwrap().0,
            NodeState::Stopped
        );

        let (s, _) = next(NodeState::Deployed, &Input::OperatorDrain, LIMIT).unwrap();
        assert_eq!(s, NodeState::Draining);
        assert_eq!(
            next(NodeState::Unreachable, &Input::OperatorDrain, LIMIT),
            None
        );
        let back = Input::OperatorUndrain(Some(Condition::Unhealthy("db down".to_owned())));
        assert_eq!(next(s, &back, LIMIT).unwrap().0, NodeState::Unhealthy);
        let gone = next(s, &Input::OperatorUndrain(None), LIMIT).unwrap();
        assert_eq!(gone.0, NodeState::Unreachable);
        assert_eq!(
            next(NodeState::Deployed, &Input::OperatorUndrain(None), LIMIT),
            None
        );
        assert_eq!(next(NodeState::Terminating, &leaving, LIMIT), None);
    }

    /// Only `Reappeared` leads back from `terminated` (the registry sends
    /// it only for a node terminated for not being found, once EC2
    /// confirms it); anything else leaves `terminated` alone.
    #[test]
    fn absence_is_reversible() {
        let (s, reason) = next(NodeState::Terminated, &Input::Reappeared, LIMIT).unwrap();
        assert_eq!(s, NodeState::Deployed);
        assert!(reason.contains("not being found"), "{reason}");
        assert_eq!(
            next(
                NodeState::Terminated,
                &Input::Heard(Condition::Ready),
                LIMIT
            ),
            None
        );
        assert_eq!(next(NodeState::Deployed, &Input::Reappeared, LIMIT), None);
        assert_eq!(
            next(NodeState::Terminating, &Input::Reappeared, LIMIT),
            None
        );
    }

    pub(super) fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            Just(Input::Heard(Condition::Ready)),
            Just(Input::Heard(Condition::Unhealthy("checks fail".to_owned()))),
            Just(Input::Heard(Condition::Leaving(
                "agent stopping".to_owned()
            ))),
            Just(Input::OperatorDrain),
            Just(Input::OperatorUndrain(None)),
            Just(Input::OperatorUndrain(Some(Condition::Ready))),
            Just(Input::Silent),
            Just(Input::Ec2Running),
            Just(Input::Ec2Stopped),
            Just(Input::Ec2Gone),
            (0u32..6).prop_map(|sweeps| Input::Ec2Unknown { sweeps }),
            Just(Input::OperatorRemove),
            Just(Input::ClusterExpired),
            Just(Input::LaunchTimedOut { after_secs: 600 }),
        ]
    }

    pub(super) fn state() -> impl Strategy<Value = NodeState> {
        prop::sample::select(
            NodeState::ALL
                .into_iter()
                .filter(|s| *s != NodeState::Terminated)
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        /// No sequence of heartbeats, silences, sweeps and operator actions
        /// reaches `terminated` unless EC2 said so, every change comes with a
        /// reason, and `terminated` is final.
        #[test]
        fn only_ec2_terminates(start in state(), inputs in prop::collection::vec(input(), 0..40)) {
            let mut current = start;
            let mut ec2_said_gone = false;
            for input in inputs {
                if matches!(input, Input::Ec2Gone)
                    || matches!(input, Input::Ec2Unknown { sweeps } if sweeps >= LIMIT)
                {
                    ec2_said_gone = true;
                }
                let was = current;
                if let Some((to, reason)) = next(current, &input, LIMIT) {
                    prop_assert_ne!(to, was, "a transition changes the state");
                    prop_assert!(!reason.is_empty());
                    current = to;
                }
                if current == NodeState::Terminated {
                    prop_assert!(ec2_said_gone, "terminated without EC2 saying so");
                }
                if was == NodeState::Terminated {
                    prop_assert_eq!(current, NodeState::Terminated);
                }
            }
        }
    }
}
