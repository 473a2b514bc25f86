//! The API's accept loop, and each connection served: HTTP/2 by hyper for
//! its whole life; HTTP/1.1 by hyper while an exchange is under way, and
//! parked between exchanges.
//!
//! A kept-alive HTTP/1.1 connection in hyper holds a read buffer (8 KiB,
//! grown to 16 KiB once a request has been parsed off it) and a header
//! buffer (8 KiB) for as long as it is open, though an agent speaks on it
//! once in ten seconds: 24 of the 35 KiB each connected agent cost. So
//! once an exchange is over ([`ConnState::exchange_over`]: no request in
//! flight, the last body read to its end, the answer flushed, and a read
//! that found nothing of a next request), the connection leaves hyper. It
//! waits for the next request's first byte in a one-byte read, holding
//! its TLS session and nothing more, and a new hyper connection serves
//! what comes, that byte first. Bytes hyper had read past its last
//! request go first too, so pipelined requests are served in order.
//! Parked or not, the connection is the same [`Watched`] stream, and its
//! deadlines run on.
//!
//! [`Drain`] ends it all: the listener closes, an exchange under way is
//! finished (hyper's graceful shutdown), and parked connections are closed
//! with a TLS close_notify.
//!
//! [`ConnState::exchange_over`]: super::deadline::ConnState::exchange_over

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::Router;
use axum_server::accept::Accept;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::accept::Watch;

/// How long a closing connection may take to send its close_notify.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// Stops the API and waits for its connections.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    stop: CancellationToken,
    connections: TaskTracker,
}

impl Drain {
    /// A drain not yet started.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Stops accepting, finishes each exchange under way and closes every
    /// connection; [`serve`] returns once all are closed.
    pub fn start(&self) {
        self.stop.cancel();
    }
}

/// Serves `app` on `listener` through `acceptor` until `drain` starts and
/// every connection is closed.
pub async fn serve(
    listener: TcpListener,
    acceptor: Watch,
    app: Router,
    drain: Drain,
) -> io::Result<()> {
    let mut make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = drain.stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of files or memory for a moment: the listener
                    // stays, and the next accept may succeed.
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = connect_info(&mut make_service, peer).await;
        let (acceptor, stop) = (acceptor.clone(), drain.stop.clone());
        drain.connections.spawn(async move {
            if let Ok((stream, service)) = acceptor.accept(tcp, service).await {
                connection(stream, service, stop).await;
            }
        });
    }
    // Refuse new connections at once rather than leave them queued.
    drop(listener);
    drain.connections.close();
    drain.connections.wait().await;
    Ok(())
}

type AppService =
    <IntoMakeServiceWithConnectInfo<Router, SocketAddr> as Service<SocketAddr>>::Response;

/// The app's service for a connection from `peer`, which handlers read as
/// `ConnectInfo`.
async fn connect_info(
    make_service: &mut IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
    peer: SocketAddr,
) -> AppService {
    match make_service.call(peer).await {
        Ok(service) => service,
        Err(never) => match never {},
    }
}

type Stream = <Watch as Accept<TcpStream, AppService>>::Stream;
type Tracked = <Watch as Accept<TcpStream, AppService>>::Service;
type HyperService = TowerToHyperService<Tracked>;

/// Serves one connection past its handshake until it closes or `stop`.
async fn connection(stream: Stream, service: Tracked, stop: CancellationToken) {
    let service = TowerToHyperService::new(service);
    if !stream.state().http1 {
        return http2(stream, service, stop).await;
    }
    let state = stream.state().clone();
    let mut io = Rewound {
        first: Bytes::new(),
        stream,
    };
    let mut service = service;
    loop {
        if io.first.is_empty() {
            // Parked: a one-byte read waits for the next request, and the
            // stream's idle deadline runs.
            let mut byte = [0u8; 1];
            let read = tokio::select! {
                biased;
                () = stop.cancelled() => return close(io).await,
                read = io.stream.read(&mut byte) => read,
            };
            match read {
                Ok(1) => io.first = Bytes::copy_from_slice(&byte),
                // The client closed, or a deadline passed (counted there).
                _ => return close(io).await,
            }
        }
        // Boxed, so that a parked connection's task holds none of it.
        let mut conn = Box::new(http1().serve_connection(TokioIo::new(io), service));
        let answered = state.answered();
        let (mut parked, mut stopping) = (false, false);
        let mut cancelled = std::pin::pin!(stop.cancelled());
        let served = std::future::poll_fn(|cx| {
            if !stopping && cancelled.as_mut().poll(cx).is_ready() {
                stopping = true;
                Pin::new(conn.as_mut()).graceful_shutdown();
            }
            let polled = conn.poll_without_shutdown(cx);
            if polled.is_pending() && !stopping && !parked && state.exchange_over(answered) {
                // hyper is idle: shutting it down gracefully ends it at
                // once, leaving the stream open.
                parked = true;
                Pin::new(conn.as_mut()).graceful_shutdown();
                return conn.poll_without_shutdown(cx);
            }
            polled
        })
        .await;
        // An error has been answered (a 400) or the stream has failed:
        // either way the connection is done.
        if let Err(error) = served {
            tracing::debug!(%error, "connection ended");
            return;
        }
        let parts = (*conn).into_parts();
        io = parts.io.into_inner();
        if !parts.read_buf.is_empty() {
            io.first = if io.first.is_empty() {
                parts.read_buf
            } else {
                [io.first.as_ref(), parts.read_buf.as_ref()].concat().into()
            };
        }
        service = parts.service;
        // Ended by the client (`Connection: close`, or its end of file),
        // or by the drain.
        if !parked || stopping {
            return close(io).await;
        }
        let counters = &io.stream.connections().counters;
        counters.parked.fetch_add(1, Ordering::Relaxed);
    }
}

/// The HTTP/1.1 side of hyper, as the API runs it.
fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's own header timeout would also close an idle keep-alive
    // connection (it runs while waiting for the next request): the
    // connection guards time headers and idling apart instead.
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    builder
}

/// Serves an HTTP/2 connection until it closes, or `stop` ends it
/// gracefully (a GOAWAY, then the streams under way finish).
async fn http2(stream: Stream, service: HyperService, stop: CancellationToken) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        biased;
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        _ = conn.as_mut() => {}
    }
}

/// Sends the TLS close_notify and closes, within [`CLOSE_WITHIN`].
async fn close(mut io: Rewound) {
    let _ = tokio::time::timeout(CLOSE_WITHIN, io.stream.shutdown()).await;
}

/// The connection's stream, with bytes already read from it put back in
/// front: a parked connection's first byte, and what hyper read past its
/// last request.
struct Rewound {
    first: Bytes,
    stream: Stream,
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.first.is_empty() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    write_through!(stream);
}
