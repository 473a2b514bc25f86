//! The heartbeat loop (step 4 of the daemon) and the last heartbeat on the
//! way out (step 5): what each heartbeat says, what makes one go at once,
//! and the drain on SIGTERM.

use std::time::Duration;

use muster_proto::{
    CheckReport, Ec2Notice, ErrorCode, HeartbeatRequest, NoticeKind, RegisterResponse,
};
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, error, info, warn};

use super::{show, shutdown_signal, Agent};
use crate::backoff::{self, Backoff};
use crate::coordinator::CoordinatorError;
use crate::error_chain;
use crate::identity::Identity;
use crate::imds::Addresses;
use crate::notices;

/// Heartbeat intervals from the coordinator are kept within these bounds, so
/// a zero cannot make the agent spin and a typo cannot silence it.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3600);
/// How long the last heartbeat on shutdown may take.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a heartbeat says that must reach the coordinator at once when it
/// changes: the addresses, each check's standing, which warnings EC2
/// gives, and whether the node is leaving.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Urgent {
    addresses: Addresses,
    checks: Vec<(String, bool)>,
    notices: Vec<NoticeKind>,
    leaving: Option<String>,
}

impl Urgent {
    fn of(request: &HeartbeatRequest) -> Urgent {
        Urgent {
            addresses: Addresses {
                private_ipv4: request.private_ipv4,
                public_ipv4: request.public_ipv4,
                ipv6: request.ipv6,
            },
            checks: request
                .checks
                .iter()
                .map(|c| (c.name.clone(), c.passing))
                .collect(),
            notices: request.notices.iter().map(|n| n.kind).collect(),
            leaving: request.leaving.clone(),
        }
    }
}

/// Completes on the next SIGTERM or SIGINT; never, if they cannot be
/// listened for.
async fn second_signal() {
    match shutdown_signal() {
        Ok(signal) => signal.await,
        Err(e) => {
            debug!(error = %e, "cannot listen for signals");
            std::future::pending().await
        }
    }
}

impl Agent<'_> {
    /// The heartbeat to send now: the current addresses, host facts, the
    /// checks' standing, EC2's warnings, and whether the node is leaving
    /// on them.
    async fn request(&mut self, node_id: &str, addresses: Addresses) -> HeartbeatRequest {
        let (checks, notices, leaving) = self.condition();
        let request = HeartbeatRequest {
            instance_id: node_id.to_owned(),
            private_ipv4: addresses.private_ipv4,
            public_ipv4: addresses.public_ipv4,
            ipv6: addresses.ipv6,
            facts: self.facts.collect().await,
            checks,
            notices,
            leaving,
            agent_version: Some(crate::AGENT_VERSION.to_owned()),
        };
        self.live.set_report(
            &request.checks,
            &request.notices,
            request.leaving.as_deref(),
        );
        self.last_request = Some(request.clone());
        request
    }

    /// The checks' reports, EC2's warnings and whether the node leaves on
    /// them, as they stand now; shown in the status at once.
    fn condition(&self) -> (Vec<CheckReport>, Vec<Ec2Notice>, Option<String>) {
        let checks = self.checks.reports().borrow().clone();
        let notices = self.notices.borrow().clone();
        let leaving = notices::leaving(&notices, self.settings.drain_on_notice);
        self.live.set_report(&checks, &notices, leaving.as_deref());
        (checks, notices, leaving)
    }

    /// What must reach the coordinator at once, as it stands with
    /// `addresses`: read without collecting host facts.
    fn urgent(&self, addresses: Addresses) -> Urgent {
        let (checks, notices, leaving) = self.condition();
        Urgent {
            addresses,
            checks: checks.iter().map(|c| (c.name.clone(), c.passing)).collect(),
            notices: notices.iter().map(|n| n.kind).collect(),
            leaving,
        }
    }

    /// Heartbeats until the coordinator no longer knows the credential.
    pub(super) async fn heartbeat(
        &mut self,
        identity: &Identity,
        registered: RegisterResponse,
        addresses: &mut watch::Receiver<Addresses>,
    ) {
        let Some(credential) = self.credential.clone() else {
            return;
        };
        let mut interval = heartbeat_interval(
            registered.heartbeat_interval_ms,
            registered.heartbeat_jitter_ms,
        );
        let mut backoff = Backoff::coordinator();
        // What the coordinator last accepted; a change is sent at once. The
        // register carried the addresses and nothing else, so a node with
        // checks or warnings heartbeats at once.
        let current = *addresses.borrow_and_update();
        let first = self.urgent(current);
        let mut sent = Urgent {
            addresses: current,
            checks: Vec::new(),
            notices: Vec::new(),
            leaving: None,
        };
        let mut next = if first == sent {
            Instant::now() + backoff::with_jitter(interval.0, interval.1)
        } else {
            Instant::now()
        };
        loop {
            if self.next_beat(next, &sent, addresses).await {
                backoff.reset();
            }
            let current = *addresses.borrow_and_update();
            let request = self.request(&identity.node_id, current).await;
            let urgent = Urgent::of(&request);
            match self.api.heartbeat(credential.expose(), &request).await {
                Ok(response) => {
                    if current != sent.addresses {
                        info!(
                            private_ipv4 = %show(current.private_ipv4),
                            public_ipv4 = %show(current.public_ipv4),
                            ipv6 = %show(current.ipv6),
                            "the coordinator accepted the new addresses"
                        );
                    }
                    debug!(state = %response.state, "heartbeat answered");
                    sent = urgent;
                    self.live.contact(response.state);
                    self.retry_save();
                    backoff.reset();
                    interval = heartbeat_interval(
                        response.heartbeat_interval_ms,
                        response.heartbeat_jitter_ms,
                    );
                    next = Instant::now() + backoff::with_jitter(interval.0, interval.1);
                }
                Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                    warn!(
                        code = e.code().map_or("", ErrorCode::as_str),
                        "the coordinator no longer accepts the node credential; registering again"
                    );
                    self.live.refused(error_chain(&e));
                    self.credential_refused = true;
                    return;
                }
                Err(e) => {
                    // No later than the next beat would have been (the
                    // module doc of `daemon` says why).
                    let retry = backoff.next_delay().min(interval.0);
                    let wait = crate::coordinator::pause(retry, &e);
                    self.heartbeat_failed(&e, wait);
                    next = Instant::now() + wait;
                }
            }
        }
    }

    /// Waits until `next`, or until what must be told at once differs from
    /// `sent` (new addresses, a check that flipped, a warning from EC2):
    /// then says so and returns true, for a heartbeat at once.
    async fn next_beat(
        &mut self,
        next: Instant,
        sent: &Urgent,
        addresses: &mut watch::Receiver<Addresses>,
    ) -> bool {
        let mut reports = self.checks.reports();
        let mut notices = self.notices.clone();
        loop {
            let changed = self
                .watchdog
                .idle(async {
                    tokio::select! {
                        () = sleep_until(next) => false,
                        // (If a watcher is gone, the others and the timer
                        // are left.)
                        Ok(()) = addresses.changed() => true,
                        Ok(()) = reports.changed() => true,
                        Ok(()) = notices.changed() => true,
                    }
                })
                .await;
            if !changed {
                return false;
            }
            let now = *addresses.borrow_and_update();
            reports.borrow_and_update();
            notices.borrow_and_update();
            let urgent = self.urgent(now);
            if urgent == *sent {
                continue;
            }
            if now != sent.addresses {
                info!(
                    private_ipv4 = %show(now.private_ipv4),
                    public_ipv4 = %show(now.public_ipv4),
                    ipv6 = %show(now.ipv6),
                    "addresses changed; telling the coordinator now"
                );
            } else {
                info!(
                    leaving = urgent.leaving.as_deref().unwrap_or(""),
                    "the node's checks or EC2's warnings changed; telling the coordinator now"
                );
            }
            return true;
        }
    }

    /// Step 5: says the node is leaving in one last heartbeat, then waits
    /// `drain_wait` so resolvers stop sending traffic to it, or until a
    /// second SIGTERM or SIGINT. Does nothing for a node that never
    /// registered, and does not wait if the coordinator did not hear it.
    pub(super) async fn leave(&mut self) {
        let (Some(credential), Some(mut request)) =
            (self.credential.clone(), self.last_request.clone())
        else {
            return;
        };
        if self.credential_refused {
            return;
        }
        request.leaving = Some(match request.leaving.take() {
            Some(why) => format!("the agent is stopping ({why})"),
            None => "the agent is stopping".to_owned(),
        });
        let told = tokio::time::timeout(
            LEAVE_TIMEOUT,
            self.api.heartbeat(credential.expose(), &request),
        )
        .await;
        match told {
            Ok(Ok(response)) => {
                self.live.contact(response.state);
                let wait = self.settings.drain_wait;
                info!(state = %response.state, ?wait, "the coordinator took the node out of its round robin; waiting for resolvers to forget it");
                let again = second_signal();
                tokio::select! {
                    () = self.watchdog.idle(sleep(wait)) => {}
                    () = again => info!("stopping without waiting any longer"),
                }
            }
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "cannot tell the coordinator the node is leaving; stopping anyway")
            }
            Err(_) => warn!(
                timeout = ?LEAVE_TIMEOUT,
                "the coordinator did not answer that the node is leaving; stopping anyway"
            ),
        }
    }

    /// Logs and records a heartbeat that failed; the next try is `wait`
    /// away.
    fn heartbeat_failed(&self, e: &CoordinatorError, wait: Duration) {
        match e {
            CoordinatorError::Refused {
                status,
                code,
                message,
                ..
            } if *status == StatusCode::CONFLICT => {
                warn!(
                    code = code.as_str(),
                    message,
                    ?wait,
                    "the coordinator does not agree with the addresses yet; retrying"
                );
            }
            CoordinatorError::Refused {
                status,
                code,
                message,
                ..
            } => {
                error!(
                    status = status.as_u16(),
                    code = code.as_str(),
                    message,
                    ?wait,
                    "heartbeat refused"
                );
            }
            _ => warn!(
                error = %error_chain(e),
                ?wait,
                "heartbeat failed; the coordinator is unreachable"
            ),
        }
        self.exchange_failed(e);
    }
}

/// The heartbeat interval and jitter the coordinator asked for, within
/// bounds: the interval between 1 s and 1 h, the jitter at most the interval.
fn heartbeat_interval(interval_ms: u64, jitter_ms: u64) -> (Duration, Duration) {
    let interval =
        Duration::from_millis(interval_ms).clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL);
    let jitter = Duration::from_millis(jitter_ms).min(interval);
    (interval, jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Intervals from the coordinator are kept within bounds.
    #[test]
    fn heartbeat_interval_is_bounded() {
        assert_eq!(
            heartbeat_interval(0, 5_000),
            (MIN_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL)
        );
        assert_eq!(
            heartbeat_interval(10_000, 2_000),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        assert_eq!(heartbeat_interval(u64::MAX, 0).0, MAX_HEARTBEAT_INTERVAL);
    }
}
