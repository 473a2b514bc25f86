//! What a standby serves while it waits for the lease: the embedded DNS,
//! with the records of the nodes the leader writes.
//!
//! A standby on a shared PostgreSQL store loads every node at start and
//! publishes their records, then listens on the channel every write to
//! `nodes` is announced on ([`crate::store::lease::NODES_CHANNEL`], by a
//! trigger, when the leader's transaction commits). On an announcement it
//! waits [`COALESCE`] for the rest of a burst, then loads the nodes again
//! and publishes: its answers trail the leader's by one load of the
//! nodes. A lost connection is opened again every [`RECONNECT`]; the
//! records published last are answered meanwhile.
//!
//! When the standby takes the lease, [`Follower`] is dropped, the thread
//! stops, and the registry the new leader loads publishes into the same
//! zone: DNS goes on answering through the takeover.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use muster_coordinator_config::StoreLocation;
use postgres::fallible_iterator::FallibleIterator;

use crate::dns::Zone;
use crate::registry::publish_from_store;
use crate::store::lease::NODES_CHANNEL;
use crate::store::{Store, StoreError};

/// How long a standby waits after an announcement for the rest of a burst.
pub const COALESCE: Duration = Duration::from_millis(50);

/// How often a standby tries again to reach the store it lost.
const RECONNECT: Duration = Duration::from_secs(1);

/// How often the listening thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// A standby following the leader's writes into `zone`, until
/// [`Follower::stop`] (or, without waiting, until dropped).
#[derive(Debug)]
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Follower {
    /// Loads the nodes of the store at `location` into `zone` once, then
    /// follows the leader's writes on a thread of its own.
    pub fn start(location: &StoreLocation, zone: Arc<Zone>) -> Result<Follower, StoreError> {
        let store = Store::open_at(location)?;
        let loaded = crate::store::sql::off_runtime(|| publish_from_store(&store, &zone));
        match loaded {
            Ok(nodes) => tracing::info!(nodes, "standby: answering dns for the leader's nodes"),
            Err(error) => tracing::warn!(%error, "standby: could not load the nodes yet"),
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("muster-standby".into())
            .spawn(move || follow(&store, &zone, &stopped))
            .map_err(|e| StoreError::NotHere(format!("starting the standby's thread: {e}")))?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops following and waits for the thread to end, so no load it
    /// began publishes after the registry that replaces it.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            crate::store::sql::off_runtime(|| {
                let _ = thread.join();
            });
        }
    }
}

/// Listens for the leader's writes until `stop`, reloading on each burst.
fn follow(store: &Store, zone: &Zone, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut client = match store.listen(NODES_CHANNEL) {
            Ok(Some(client)) => client,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "standby: cannot listen for the leader's writes");
                std::thread::sleep(RECONNECT);
                continue;
            }
        };
        // Whatever was written while the connection was away.
        reload(store, zone);
        while !stop.load(Ordering::Relaxed) {
            let heard = {
                let mut notices = client.notifications();
                let mut waiting = notices.timeout_iter(STOP_CHECK);
                match waiting.next() {
                    Ok(Some(_)) => true,
                    Ok(None) => false,
                    Err(error) => {
                        tracing::warn!(error = %error, "standby: lost the store; listening again");
                        break;
                    }
                }
            };
            if heard {
                std::thread::sleep(COALESCE);
                // Drop what queued during the pause: one load covers it.
                let _ = client.notifications().iter().count();
                reload(store, zone);
            }
        }
    }
}

fn reload(store: &Store, zone: &Zone) {
    match publish_from_store(store, zone) {
        Ok(nodes) => tracing::debug!(nodes, "standby: dns follows the leader's writes"),
        Err(error) => tracing::warn!(%error, "standby: could not load the nodes"),
    }
}
