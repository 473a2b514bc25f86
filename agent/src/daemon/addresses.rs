//! Following the node's addresses while the daemon runs: a poll of the
//! identity source, and local address events from the kernel that make it
//! read again at once; what changes is published to the heartbeat loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use super::show;
use crate::error_chain;
use crate::identity::Source;
use crate::imds::Addresses;
use crate::netwatch::{AddressEvent, AddressWatch};
use crate::status::Live;

/// Forwards local address events to [`watch_addresses`] as nudges. A nudge
/// already waiting covers the events after it. Ends, leaving the poll on
/// its own, if the socket fails. `what` names what a nudge makes the
/// watcher read, for the log.
pub(super) async fn forward_address_events(
    mut events: AddressWatch,
    nudge: mpsc::Sender<()>,
    what: &'static str,
) {
    loop {
        match events.next().await {
            Ok(event) => {
                match &event {
                    AddressEvent::Added(a) => info!(
                        address = %a.address,
                        prefix_len = a.prefix_len,
                        interface = a.label.as_deref().unwrap_or_default(),
                        interface_index = a.interface_index,
                        "a local IPv4 address was added; reading {what} now"
                    ),
                    AddressEvent::Removed(a) => info!(
                        address = %a.address,
                        prefix_len = a.prefix_len,
                        interface = a.label.as_deref().unwrap_or_default(),
                        interface_index = a.interface_index,
                        "a local IPv4 address was removed; reading {what} now"
                    ),
                    AddressEvent::Missed => {
                        debug!("local address events were missed; reading {what} now")
                    }
                }
                match nudge.try_send(()) {
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    Err(TrySendError::Closed(())) => return,
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read local address events any more; relying on the poll of {what}");
                return;
            }
        }
    }
}

/// How often the poll reads every address. The polls between read only
/// the public IPv4, the one address that changes (an Elastic IP associated
/// or released) without a local address event: the private IPv4 and the
/// IPv6 address are the interface's own, so a change of either is read at
/// once on the kernel's event, or at the next full read. At the default
/// 1 s poll that is one IMDS request a second instead of three.
const FULL_READ_EVERY: Duration = Duration::from_secs(10);

/// Asks `source` for the addresses every `every`, and at once on a nudge (a
/// local address event), and publishes changes: every address on a nudge,
/// after a failure and every [`FULL_READ_EVERY`], the public IPv4 alone on
/// the polls between.
///
/// A failed poll keeps the last known addresses; it is logged once when it
/// starts failing and once when it recovers, not every tick.
pub(super) async fn watch_addresses(
    source: Arc<Source>,
    every: Duration,
    tx: watch::Sender<Addresses>,
    live: Live,
    mut nudges: mpsc::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut failing = false;
    // The caller read every address just before.
    let mut read_whole = Instant::now();
    // Whether nudges may still come.
    let mut listening = true;
    loop {
        let nudged = tokio::select! {
            _ = ticker.tick() => false,
            nudge = nudges.recv(), if listening => {
                if nudge.is_none() {
                    listening = false;
                    continue;
                }
                // The next poll counts from this read.
                ticker.reset();
                true
            }
        };
        let what = source.what();
        let whole = nudged || failing || read_whole.elapsed() >= FULL_READ_EVERY;
        let read = if whole {
            read_whole = Instant::now();
            source.addresses().await
        } else {
            let known = *tx.borrow();
            source.public_ipv4(known).await
        };
        match read {
            Ok(addresses) => {
                if failing {
                    info!("{what} can be read again");
                    failing = false;
                }
                if *tx.borrow() != addresses {
                    debug!(
                        private_ipv4 = %show(addresses.private_ipv4),
                        public_ipv4 = %show(addresses.public_ipv4),
                        "{what} show new addresses"
                    );
                    live.set_addresses(addresses);
                    tx.send_replace(addresses);
                }
            }
            Err(e) => {
                if !failing {
                    warn!(error = %error_chain(&e), "cannot read {what}; keeping the last known addresses");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::AbortOnDrop;
    use crate::imds::loopback::LoopbackImds;
    use crate::imds::paths::{LOCAL_IPV4, PUBLIC_IPV4};
    use std::net::Ipv4Addr;

    /// An IMDS serving a private address alone, read once, and a watcher
    /// polling it `every`: the IMDS, the addresses published, the nudges'
    /// sender, the node's status, and the watcher.
    async fn watched(
        every: Duration,
    ) -> (
        LoopbackImds,
        watch::Receiver<Addresses>,
        mpsc::Sender<()>,
        Live,
        AbortOnDrop,
    ) {
        let imds = LoopbackImds::start(&[(LOCAL_IPV4, "10.0.0.5")]).await;
        let source = Arc::new(Source::Imds(imds.client()));
        let first = source.addresses().await.unwrap();
        let (tx, rx) = watch::channel(first);
        let (nudge, nudges) = mpsc::channel(1);
        let live = Live::new("web", "https://c.example.com");
        let watcher = AbortOnDrop(tokio::spawn(watch_addresses(
            source,
            every,
            tx,
            live.clone(),
            nudges,
        )));
        (imds, rx, nudge, live, watcher)
    }

    /// A nudge (a local address event) makes the watcher read IMDS at once,
    /// not at the next poll a minute later, and publish what changed; when
    /// the nudges end, the poll goes on.
    #[tokio::test]
    async fn a_nudge_reads_imds_at_once() {
        let (imds, mut rx, nudge, live, watcher) = watched(Duration::from_secs(60)).await;
        imds.set(PUBLIC_IPV4, Some("54.1.2.3"));
        nudge.send(()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), rx.changed())
            .await
            .expect("no IMDS read after the nudge")
            .unwrap();
        assert_eq!(rx.borrow().public_ipv4, Some(Ipv4Addr::new(54, 1, 2, 3)));
        assert_eq!(
            live.snapshot().public_ipv4,
            Some(Ipv4Addr::new(54, 1, 2, 3))
        );
        assert_eq!(imds.reads(LOCAL_IPV4), 2, "the nudge read every address");

        drop(nudge);
        tokio::task::yield_now().await;
        assert!(!watcher.0.is_finished(), "the poll goes on without nudges");
    }

    /// Between full reads the poll asks IMDS for the public IPv4 alone: an
    /// Elastic IP associated shows at the next poll, and the private
    /// address is not read again.
    #[tokio::test]
    async fn the_poll_reads_the_public_address_alone() {
        let (imds, mut rx, _nudge, _live, _watcher) = watched(Duration::from_millis(50)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        imds.set(PUBLIC_IPV4, Some("54.1.2.3"));
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("the poll did not see the public address")
            .unwrap();
        let seen = *rx.borrow();
        assert_eq!(seen.public_ipv4, Some(Ipv4Addr::new(54, 1, 2, 3)));
        assert_eq!(seen.private_ipv4, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(
            imds.reads(LOCAL_IPV4),
            1,
            "only the first read asked for the private address"
        );
        assert!(imds.reads(PUBLIC_IPV4) > 2, "the poll read the public one");
    }
}
