//! The loops `serve` starts beside the API: what runs once, on the
//! leader only (liveness, the sweep, pruning, cluster lifetimes, the
//! removals an earlier run left), and what every replica of a shared
//! store runs (the account check, the nodes heard here published).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ec2::Ec2Clients;
use crate::leader::Leadership;
use crate::registry::ec2_view::ACCOUNT_RETRY;
use crate::registry::Registry;

/// What a coordinator does as it starts to lead, before the leader-only
/// loops take their first turn: on a shared store, it fences its writes
/// by the lease's term, reads every node afresh (the last writes of the
/// leader before it included) and gives every node a full grace (their
/// heartbeats went to others until now); then it resumes the removals an
/// earlier leader left unfinished.
pub(super) async fn start_leading(
    registry: Arc<Registry>,
    fence: Option<crate::store::sql::Fence>,
    removals: Arc<Removals>,
) {
    if let Some(fence) = fence {
        registry.fence_by(fence);
        if let Err(error) = registry.take_in(None).await {
            tracing::error!(%error, "could not read the nodes afresh as this coordinator leads");
        }
        registry.fresh_grace();
    }
    removals.resume_once(&registry);
}

/// The removals an earlier run left unfinished, resumed once: by the
/// leader, in the coordinator's own account.
#[derive(Debug, Default)]
pub(super) struct Removals(AtomicBool);

impl Removals {
    /// Resumes them, unless EC2 is not trusted yet or they were resumed.
    pub(super) fn resume_once(&self, registry: &Arc<Registry>) {
        if registry.ec2_account().untrusted_because().is_some()
            || self.0.swap(true, Ordering::AcqRel)
        {
            return;
        }
        if let Err(error) = registry.resume_removals() {
            tracing::error!(%error, "could not resume the unfinished removals");
        }
    }
}

/// Asks STS which account EC2 answers for every [`ACCOUNT_RETRY`] until
/// it answers (if `unknown` holds the clients to ask); then, once this
/// coordinator leads, resumes the removals an earlier run left unfinished.
pub(super) async fn account_loop(
    registry: Arc<Registry>,
    leadership: Arc<Leadership>,
    removals: Arc<Removals>,
    unknown: Option<Ec2Clients>,
) {
    if let Some(clients) = unknown {
        loop {
            tokio::time::sleep(ACCOUNT_RETRY).await;
            match registry.check_account(&clients).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "could not record the AWS account"),
            }
        }
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while !leadership.is_current() {
        ticker.tick().await;
    }
    removals.resume_once(&registry);
}

/// On a shared store, publishes the nodes this coordinator heard while it
/// stands by, so the leader takes none of them for silent
/// ([`crate::store::heard`]).
pub(super) async fn heard_loop(registry: Arc<Registry>, leadership: Arc<Leadership>) {
    if leadership.name().is_none() {
        return;
    }
    let mut ticker = tokio::time::interval(registry.heard_publish_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A replica that has heard nobody, and said so, writes nothing more.
    let mut said_none = true;
    loop {
        ticker.tick().await;
        if !leadership.stands_by() {
            // The leader's own memory is what liveness reads.
            registry.note_heard_published(true);
            continue;
        }
        let heard = registry.heard_here();
        if heard.is_empty() && said_none {
            registry.note_heard_published(true);
            continue;
        }
        let empty = heard.is_empty();
        let published = {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || registry.publish_heard(&heard)).await
        };
        match published {
            Ok(Ok(())) => {
                said_none = empty;
                registry.note_heard_published(true);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not publish the nodes heard here");
                registry.note_heard_published(false);
            }
            Err(error) => {
                tracing::error!(%error, "publishing the nodes heard here failed");
                registry.note_heard_published(false);
            }
        }
    }
}

/// Marks silent nodes unreachable, checking often enough that a node is
/// marked within a tenth of the grace after it runs out.
pub(super) async fn liveness_loop(
    registry: Arc<Registry>,
    leadership: Arc<Leadership>,
    grace: Duration,
) {
    let period = (grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !leadership.is_current() {
            continue;
        }
        registry.check_liveness().await;
    }
}

/// Removes the clusters whose lifetime has ended, looking every second
/// (only while EC2 is trusted: a removal terminates instances).
pub(super) async fn expiry_loop(registry: Arc<Registry>, leadership: Arc<Leadership>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !leadership.is_current() || registry.ec2_account().untrusted_because().is_some() {
            continue;
        }
        if let Err(error) = registry.remove_expired_clusters().await {
            tracing::error!(%error, "could not remove the clusters whose lifetime ended");
        }
    }
}

/// How often history past the retention is pruned (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes the history past `retention` at start, then every
/// [`PRUNE_EVERY`] (or half the retention, if shorter).
pub(super) async fn prune_loop(
    registry: Arc<Registry>,
    leadership: Arc<Leadership>,
    retention: Duration,
) {
    let mut ticker = tokio::time::interval(PRUNE_EVERY.min(retention / 2));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !leadership.is_current() {
            continue;
        }
        if let Err(error) = registry.prune_history(retention).await {
            tracing::error!(%error, "could not prune the history past the retention");
        }
    }
}

/// Reads EC2's view of every tracked instance every `period`.
pub(super) async fn sweep_loop(
    registry: Arc<Registry>,
    leadership: Arc<Leadership>,
    period: Duration,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !leadership.is_current() {
            continue;
        }
        let report = registry.sweep().await;
        tracing::debug!(
            seen = report.seen,
            failed_regions = report.failed_regions,
            "sweep done"
        );
    }
}
