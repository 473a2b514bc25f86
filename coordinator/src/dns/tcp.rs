//! DNS over TCP for the embedded server, bounded so that no client can
//! hold the coordinator's file descriptors (which its API connections
//! share): at most [`MAX_TCP_CONNECTIONS`] at once and
//! [`MAX_TCP_PER_SOURCE`] from one address, a connection past either
//! closed at once (and counted in the zone's server counters); each
//! closed after [`TCP_IDLE`] without a whole query (RFC 7766 leaves the
//! idle time to the server; BIND's default is 30 s, Knot's 10 s). Queries
//! are answered by the handler the embedded server answers UDP with
//! ([`super::server`] starts this), one at a time per connection, in
//! order.
//!
//! hickory's own TCP listener accepts without bound, so the accept loop is
//! ours; the framing (RFC 1035's two-byte length) and the writes are
//! hickory's `TcpStream`. A message that does not parse as a query closes
//! its connection: the stream cannot be trusted past it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use hickory_proto::op::MessageType;
use hickory_proto::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder};
use hickory_proto::xfer::Protocol;
use hickory_server::authority::MessageRequest;
use hickory_server::server::{Request, RequestHandler, ResponseHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Zone;

/// TCP connections served at once, from all sources; within the open
/// files headroom `serve` keeps beside its API connections
/// ([`crate::fdlimit::FD_HEADROOM`]).
pub const MAX_TCP_CONNECTIONS: usize = 128;

/// TCP connections served at once from one address.
pub const MAX_TCP_PER_SOURCE: usize = 8;

/// How long a TCP connection may go without a whole query.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Open connections by source address; a [`Slot`] gives its place back
/// when dropped.
#[derive(Debug, Default)]
struct Sources {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`Sources`] and in the total.
struct Slot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Sources {
    /// A place for a connection from `ip`, unless the total or `ip`'s
    /// share is taken.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = open.values().sum();
        let mine = open.entry(ip).or_default();
        if total >= MAX_TCP_CONNECTIONS || *mine >= MAX_TCP_PER_SOURCE {
            if *mine == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        Some(Slot {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts on `listener` and answers with `handler` until `shutdown`,
/// counting refusals in `zone`'s server counters.
pub(super) async fn serve<H: RequestHandler + Clone>(
    listener: TcpListener,
    handler: H,
    zone: Arc<Zone>,
    shutdown: CancellationToken,
) {
    let sources = Arc::new(Sources::default());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (stream, src) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: give the others a
                // moment to close rather than spin.
                tracing::debug!(%error, "dns tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = sources.take(src.ip().to_canonical()) else {
            zone.server_counters()
                .tcp_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            answer_connection(stream, src, &handler, &shutdown).await;
        });
    }
}

/// Answers the queries on one connection, in order, until it closes, goes
/// idle for [`TCP_IDLE`], sends what is not a query, or `shutdown`.
async fn answer_connection<H: RequestHandler>(
    stream: tokio::net::TcpStream,
    src: SocketAddr,
    handler: &H,
    shutdown: &CancellationToken,
) {
    let (mut messages, replies) =
        hickory_proto::tcp::TcpStream::from_stream(AsyncIoTokioAsStd(stream), src);
    loop {
        // Polling the stream also writes the replies queued on `replies`.
        let next = tokio::select! {
            next = tokio::time::timeout(TCP_IDLE, messages.next()) => next,
            () = shutdown.cancelled() => return,
        };
        let message = match next {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, %src, "dns tcp read failed");
                return;
            }
            Ok(None) | Err(_) => return,
        };
        let mut decoder = BinDecoder::new(message.bytes());
        let request = match MessageRequest::read(&mut decoder) {
            Ok(request) if request.message_type() == MessageType::Query => request,
            _ => return,
        };
        let request = Request::new(request, src, Protocol::Tcp);
        let reply = ResponseHandle::new(src, replies.clone(), Protocol::Tcp);
        handler.handle_request(&request, reply).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source gets at most its share, all sources at most the total, and
    /// a place closed is free again.
    #[test]
    fn places_are_bounded_per_source_and_in_total() {
        let sources = Arc::new(Sources::default());
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let mut held: Vec<Slot> = (0..MAX_TCP_PER_SOURCE)
            .map(|_| sources.take(one).expect("within the share"))
            .collect();
        assert!(sources.take(one).is_none(), "past the share");
        held.pop();
        held.push(sources.take(one).expect("a closed place is free again"));

        let mut n = 0u32;
        while held.len() < MAX_TCP_CONNECTIONS {
            let ip = IpAddr::from([198, 51, 100, (n / 8) as u8]);
            n += 1;
            if let Some(slot) = sources.take(ip) {
                held.push(slot);
            }
        }
        assert!(
            sources.take("203.0.113.9".parse().unwrap()).is_none(),
            "past the total"
        );
        drop(held);
        assert!(
            sources.open.lock().unwrap().is_empty(),
            "every place given back"
        );
    }
}
