//! Every replica of a shared store takes in the rows the others write.
//!
//! Several coordinators on one PostgreSQL store all serve agents, so any
//! of them may write a node's row: a register, an address change, a
//! transition. A trigger announces each written row's id on
//! [`crate::store::lease::NODES_CHANNEL`] when its transaction commits;
//! each replica listens on a connection of its own, waits [`COALESCE`]
//! for the rest of a burst, then reads those rows and takes them into
//! memory and DNS ([`Registry::take_in`]). Its own writes, announced by
//! the server process of its store's connection, are in its memory
//! already and are left out. A replica's memory, its answers and
//! its DNS thus trail another's write by the coalescing wait and one read
//! of the rows written.
//!
//! The same connection hears writes to the store's `meta` on
//! [`crate::store::lease::META_CHANNEL`], with their key: the follower
//! hands each key to its caller, which reads again the tokens another
//! replica changed ([`crate::credentials::Credentials::reload`]).
//!
//! A lost connection is opened again every [`RECONNECT`]; once it is,
//! every node is read, and every meta key is handed on as if written, as
//! announcements made meanwhile were not heard.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use crate::registry::Registry;
use crate::store::lease::META_CHANNEL;

/// How long a replica waits after an announcement for the rest of a burst.
pub const COALESCE: Duration = Duration::from_millis(50);

/// How often a replica tries again to reach the store it lost.
const RECONNECT: Duration = Duration::from_secs(1);

/// How often the listening thread looks whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// A replica taking the others' writes into `registry`, until dropped.
#[derive(Debug)]
pub struct Follower {
    stop: Arc<AtomicBool>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Follower {
    /// Follows the writes announced on `registry`'s store (on SQLite
    /// nobody else writes, and the thread ends at once), on a thread of
    /// its own that enters the runtime of `runtime`.
    /// `on_meta` hears the key of each write to the store's meta (`None`
    /// when writes may have been missed).
    pub fn start(
        registry: Arc<Registry>,
        runtime: tokio::runtime::Handle,
        on_meta: impl Fn(Option<&str>) + Send + 'static,
    ) -> std::io::Result<Follower> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("muster-replica".into())
            .spawn(move || follow(&registry, &runtime, &on_meta, &stopped))?;
        Ok(Follower { stop })
    }
}

/// Listens for the others' writes until `stop`, taking in each burst.
fn follow(
    registry: &Registry,
    runtime: &tokio::runtime::Handle,
    on_meta: &dyn Fn(Option<&str>),
    stop: &AtomicBool,
) {
    let take_in = |ids: Option<&[i64]>| match runtime.block_on(registry.take_in(ids)) {
        Ok(nodes) => tracing::debug!(nodes, "took in the nodes other coordinators wrote"),
        Err(error) => tracing::warn!(%error, "could not read the nodes other coordinators wrote"),
    };
    while !stop.load(Ordering::Relaxed) {
        let mut client = match registry.listen_for_writes() {
            Ok(Some(client)) => client,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for the other coordinators' writes");
                std::thread::sleep(RECONNECT);
                continue;
            }
        };
        // Whatever was written while nobody listened.
        take_in(None);
        on_meta(None);
        while !stop.load(Ordering::Relaxed) {
            let mut written = BTreeSet::new();
            // Rows this replica wrote are in its memory already: only the
            // others' are read.
            let mut note = |notice: &postgres::Notification| {
                if notice.channel() == META_CHANNEL {
                    on_meta(Some(notice.payload()));
                } else if !registry
                    .own_sessions()
                    .contains(&(notice.process_id() as u32))
                {
                    written.insert(notice.payload().to_owned());
                }
            };
            let heard = {
                let mut notices = client.notifications();
                let mut waiting = notices.timeout_iter(STOP_CHECK);
                match waiting.next() {
                    Ok(Some(notice)) => {
                        note(&notice);
                        true
                    }
                    Ok(None) => false,
                    Err(error) => {
                        tracing::warn!(%error, "lost the store; listening again");
                        break;
                    }
                }
            };
            if !heard {
                continue;
            }
            std::thread::sleep(COALESCE);
            let mut queued = client.notifications();
            let mut rest = queued.iter();
            while let Ok(Some(notice)) = rest.next() {
                note(&notice);
            }
            if written.is_empty() {
                continue;
            }
            let ids: Option<Vec<i64>> = written.iter().map(|id| id.parse().ok()).collect();
            // An announcement without a row id (an older trigger): read all.
            take_in(ids.as_deref());
        }
    }
}
