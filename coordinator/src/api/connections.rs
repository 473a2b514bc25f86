//! The API's connections, bounded and kept: no single client can exhaust
//! the coordinator, and agents keep one connection across heartbeats.
//!
//! - **Admission.** Each TCP connection is counted from its accept to its
//!   close, per source address and in total, before any TLS. Past a cap it
//!   is closed at once (a reset): `--max-connections-per-source` from one
//!   address, `--max-connections` in all. The last tenth of the total
//!   ([`RESERVED_PERCENT`]) is kept for known sources: addresses that were
//!   served an agent request or an admin call within [`KNOWN_FOR`]. So a
//!   crowd of strangers cannot shut out the fleet or its operators.
//! - **Time.** The TLS handshake has `--tls-handshake-timeout`. Then a
//!   connection's first request must have its headers in within
//!   `--header-timeout`; a later request within that of its first byte
//!   (HTTP/1); a connection with no request in flight is closed after
//!   `--idle-timeout` (HTTP/1 and HTTP/2 alike); and one whose client stops
//!   reading an answer is closed once a write has waited that long.
//!   [`deadline`] holds these rules.
//! - **Counts.** Handshakes, refusals and closes by reason, read by
//!   `/metrics`.
//!
//! [`accept`] holds the pieces around TLS: an acceptor under it that
//! admits, one over it that watches, and a service wrapper that tells the
//! watcher when requests are in flight. [`server`] accepts and serves,
//! parking each HTTP/1.1 connection between its exchanges.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `AsyncWrite` methods of a stream that writes straight through to
/// its `$field`: the wrappers here change how a connection reads, or what
/// it holds, not how it writes.
macro_rules! write_through {
    ($field:ident) => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.$field).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.$field).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.$field).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.$field.is_write_vectored()
        }
    };
}

pub mod accept;
mod deadline;
pub mod server;

pub use accept::acceptor;

/// How long a source stays known after it was last served an agent
/// request or an admin call.
pub const KNOWN_FOR: Duration = Duration::from_secs(3600);

/// The share of `--max-connections`, in percent, that only known sources
/// may use.
pub const RESERVED_PERCENT: usize = 10;

/// The bounds on connections, as serve worked them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_total: usize,
    /// Open connections from one address at most; 0 is no limit.
    pub per_source: usize,
    /// Time a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Time a request's headers may take.
    pub header_timeout: Duration,
    /// Time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
}

impl ConnectionLimits {
    /// How many of the `max_total` only known sources may use.
    pub fn reserved(&self) -> usize {
        (self.max_total * RESERVED_PERCENT / 100).max(1)
    }
}

/// Why a connection was refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source holds `per_source` connections already.
    PerSource,
    /// Only the reserve is left, and its source is not known.
    Reserved,
    /// `max_total` connections are open.
    Total,
}

/// Why a connection was closed by the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No first request within the header timeout.
    FirstRequest,
    /// A later request's headers took longer than the header timeout.
    Header,
    /// No request in flight for the idle timeout.
    Idle,
    /// An answer's write waited the idle timeout for the client to read.
    Stalled,
}

/// Counts of what happened to connections, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Completed TLS handshakes.
    pub handshakes: AtomicU64,
    /// Of those, the ones that resumed a session from a ticket.
    pub handshakes_resumed: AtomicU64,
    /// HTTP/1.1 exchanges after which the connection was parked.
    pub parked: AtomicU64,
    /// Handshakes that failed (a bad hello, a client that left).
    pub handshake_failures: AtomicU64,
    /// Handshakes that took longer than the timeout.
    pub handshake_timeouts: AtomicU64,
    /// Refusals, by [`Refusal`] (per source, reserved, total).
    pub refused: [AtomicU64; 3],
    /// Closes, by [`Closed`] (first request, header, idle, stalled).
    pub closed: [AtomicU64; 4],
}

impl ConnectionCounters {
    pub(crate) fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, why: Closed) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The open connections and the known sources.
#[derive(Debug)]
pub struct Connections {
    limits: ConnectionLimits,
    table: Mutex<Table>,
    /// What happened to connections.
    pub counters: ConnectionCounters,
}

#[derive(Debug, Default)]
struct Table {
    open: usize,
    by_source: HashMap<IpAddr, usize>,
    /// When each known source was last served.
    known: HashMap<IpAddr, Instant>,
}

/// One admitted connection; dropping it releases its place.
#[derive(Debug)]
pub struct Admission {
    connections: Arc<Connections>,
    source: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.connections.release(self.source);
    }
}

impl Connections {
    /// No connection open yet, within `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            table: Mutex::new(Table::default()),
            counters: ConnectionCounters::default(),
        })
    }

    /// The bounds.
    pub fn limits(&self) -> ConnectionLimits {
        self.limits
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Sources known now.
    pub fn known(&self) -> usize {
        self.lock().known.len()
    }

    /// Admits a connection from `source`, or says why not.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admission, Refusal> {
        let source = source.to_canonical();
        let limits = self.limits;
        let mut table = self.lock();
        let from_source = table.by_source.get(&source).copied().unwrap_or(0);
        let refusal = if limits.per_source > 0 && from_source >= limits.per_source {
            Some(Refusal::PerSource)
        } else if table.open >= limits.max_total {
            Some(Refusal::Total)
        } else if table.open >= limits.max_total.saturating_sub(limits.reserved())
            && !table.is_known(source, Instant::now())
        {
            Some(Refusal::Reserved)
        } else {
            None
        };
        if let Some(why) = refusal {
            drop(table);
            self.counters.refused(why);
            return Err(why);
        }
        table.open += 1;
        *table.by_source.entry(source).or_default() += 1;
        Ok(Admission {
            connections: self.clone(),
            source,
        })
    }

    /// Notes that `source` was served an agent request or an admin call:
    /// it may use the reserve for [`KNOWN_FOR`]. The table holds at most
    /// `max_total` sources; when full, stale ones go first, and a new
    /// source waits for room.
    pub fn remember(&self, source: IpAddr) {
        let source = source.to_canonical();
        let now = Instant::now();
        let mut table = self.lock();
        if let Some(seen) = table.known.get_mut(&source) {
            *seen = now;
            return;
        }
        if table.known.len() >= self.limits.max_total {
            table.forget_stale(now);
        }
        if table.known.len() < self.limits.max_total {
            table.known.insert(source, now);
        }
    }

    /// Forgets sources not served within [`KNOWN_FOR`].
    pub fn forget_stale(&self) {
        let mut table = self.lock();
        table.forget_stale(Instant::now());
        table.known.shrink_to_fit();
        table.by_source.shrink_to_fit();
    }

    fn release(&self, source: IpAddr) {
        let mut table = self.lock();
        table.open = table.open.saturating_sub(1);
        if let Some(n) = table.by_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                table.by_source.remove(&source);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Table {
    fn is_known(&self, source: IpAddr, now: Instant) -> bool {
        self.known
            .get(&source)
            .is_some_and(|seen| now.duration_since(*seen) < KNOWN_FOR)
    }

    fn forget_stale(&mut self, now: Instant) {
        self.known
            .retain(|_, seen| now.duration_since(*seen) < KNOWN_FOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_total: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            per_source,
            tls_handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// One source gets its share and no more; a closed connection gives
    /// its place back.
    #[test]
    fn per_source_cap() {
        let connections = Connections::new(limits(100, 3));
        let held: Vec<_> = (0..3)
            .map(|_| connections.admit(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(
            connections.admit(ip("10.0.0.1")).unwrap_err(),
            Refusal::PerSource
        );
        // IPv4-mapped IPv6 is the same source.
        assert_eq!(
            connections.admit(ip("::ffff:10.0.0.1")).unwrap_err(),
            Refusal::PerSource
        );
        let other = connections.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(connections.open(), 4);
        drop(held);
        drop(other);
        assert_eq!(connections.open(), 0);
        assert!(connections.admit(ip("10.0.0.1")).is_ok());
    }

    /// Past the total less the reserve only known sources get in; past
    /// the total, no one.
    #[test]
    fn reserve_for_known_sources() {
        let connections = Connections::new(limits(20, 0));
        assert_eq!(connections.limits().reserved(), 2);
        connections.remember(ip("10.0.0.9"));
        let mut held: Vec<_> = (0..18)
            .map(|i| connections.admit(ip(&format!("10.1.0.{i}"))).unwrap())
            .collect();
        assert_eq!(
            connections.admit(ip("10.2.0.1")).unwrap_err(),
            Refusal::Reserved
        );
        held.push(connections.admit(ip("10.0.0.9")).unwrap());
        held.push(connections.admit(ip("10.0.0.9")).unwrap());
        assert_eq!(
            connections.admit(ip("10.0.0.9")).unwrap_err(),
            Refusal::Total
        );
        let counters = &connections.counters;
        assert_eq!(
            counters.refused[Refusal::Reserved as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            counters.refused[Refusal::Total as usize].load(Ordering::Relaxed),
            1
        );
    }

    /// The table of known sources never grows past the total.
    #[test]
    fn known_sources_are_bounded() {
        let connections = Connections::new(limits(16, 0));
        for i in 0..100 {
            connections.remember(ip(&format!("10.3.0.{i}")));
        }
        assert_eq!(connections.known(), 16);
    }
}
