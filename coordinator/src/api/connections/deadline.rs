//! When a connection past its handshake must close, and the stream that
//! closes it then.
//!
//! [`ConnState`] knows whether requests are in flight (the service wrapper
//! says so) and since when the connection has idled; [`ConnState::deadline`]
//! turns that into one instant and a reason:
//!
//! | state | closes at |
//! |---|---|
//! | no request yet | handshake + header timeout |
//! | idle after a request | last request's end + idle timeout |
//! | HTTP/1, a new request's first bytes in | those bytes + header timeout (if sooner) |
//! | a request in flight | never, unless a write has waited the idle timeout |
//!
//! [`Watched`] checks it whenever the connection would wait (a read or a
//! write pending) and fails the I/O once it has passed, which makes hyper
//! drop the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{Closed, ConnectionLimits, Connections};

/// What one connection is doing, shared by its stream and its service.
#[derive(Debug)]
pub(crate) struct ConnState {
    phase: Mutex<Phase>,
    limits: ConnectionLimits,
    /// HTTP/1: a request's headers are timed from their first byte.
    pub(crate) http1: bool,
}

#[derive(Debug)]
struct Phase {
    in_flight: u32,
    /// Whether a request has been in flight yet.
    served: bool,
    /// Since when no request has been in flight (the handshake's end at
    /// first).
    idle_since: Instant,
    /// When the first bytes came in while idle.
    read_while_idle: Option<Instant>,
    /// Since when a write has waited for the client.
    write_blocked_since: Option<Instant>,
    /// Requests answered: their answers' bodies sent or dropped.
    answered: u64,
    /// Whether the last request's body has been read to its end.
    body_read: bool,
    /// Whether bytes have been written, or a write tried, since the
    /// stream was last flushed.
    unflushed: bool,
    /// Whether the last read found nothing to read.
    read_waits: bool,
}

/// A request in flight, until its answer has been sent or dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut phase = self.0.lock();
        phase.in_flight = phase.in_flight.saturating_sub(1);
        phase.answered += 1;
        if phase.in_flight == 0 {
            phase.idle_since = Instant::now();
            phase.write_blocked_since = None;
        }
    }
}

impl ConnState {
    /// A connection whose handshake ended now; `http1` unless it speaks
    /// HTTP/2.
    pub(crate) fn new(limits: ConnectionLimits, http1: bool) -> Arc<ConnState> {
        Arc::new(ConnState {
            phase: Mutex::new(Phase {
                in_flight: 0,
                served: false,
                idle_since: Instant::now(),
                read_while_idle: None,
                write_blocked_since: None,
                answered: 0,
                body_read: true,
                unflushed: false,
                read_waits: false,
            }),
            limits,
            http1,
        })
    }

    /// A request starts, its body read to the end already or not; it is
    /// in flight until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>, body_read: bool) -> InFlight {
        let mut phase = self.lock();
        phase.in_flight += 1;
        phase.served = true;
        phase.read_while_idle = None;
        phase.body_read = body_read;
        drop(phase);
        InFlight(self.clone())
    }

    /// The request's body has been read to its end.
    pub(crate) fn body_read(&self) {
        self.lock().body_read = true;
    }

    /// Requests answered so far.
    pub(crate) fn answered(&self) -> u64 {
        self.lock().answered
    }

    /// Whether an HTTP/1 exchange is over since `answered` requests had
    /// been: a request answered since, none in flight, its body read to
    /// the end, every byte of the answer flushed, and the last read found
    /// nothing of a next request. The connection may then leave hyper
    /// ([`super::server`]).
    pub(crate) fn exchange_over(&self, answered: u64) -> bool {
        let phase = self.lock();
        phase.answered > answered
            && phase.in_flight == 0
            && phase.body_read
            && !phase.unflushed
            && phase.read_waits
    }

    /// When the connection must close, and why; `None` while it may wait.
    pub(crate) fn deadline(&self) -> Option<(Instant, Closed)> {
        let limits = &self.limits;
        let phase = self.lock();
        if phase.in_flight > 0 {
            return phase
                .write_blocked_since
                .map(|since| (since + limits.idle_timeout, Closed::Stalled));
        }
        if !phase.served {
            return Some((
                phase.idle_since + limits.header_timeout,
                Closed::FirstRequest,
            ));
        }
        let idle = (phase.idle_since + limits.idle_timeout, Closed::Idle);
        match phase.read_while_idle {
            Some(first) if self.http1 && first + limits.header_timeout < idle.0 => {
                Some((first + limits.header_timeout, Closed::Header))
            }
            _ => Some(idle),
        }
    }

    fn read_some(&self) {
        let mut phase = self.lock();
        phase.read_waits = false;
        if phase.in_flight == 0 && phase.read_while_idle.is_none() {
            phase.read_while_idle = Some(Instant::now());
        }
    }

    fn read_waits(&self) {
        self.lock().read_waits = true;
    }

    fn flushed(&self, flushed: bool) {
        self.lock().unflushed = !flushed;
    }

    fn write_waits(&self, waits: bool) {
        let mut phase = self.lock();
        match (waits, phase.write_blocked_since) {
            (true, None) => phase.write_blocked_since = Some(Instant::now()),
            (false, Some(_)) => phase.write_blocked_since = None,
            _ => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stream that fails its I/O once its connection's deadline has passed.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
    connections: Arc<Connections>,
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
    closed: Option<Closed>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, state: Arc<ConnState>, connections: Arc<Connections>) -> Self {
        Watched {
            inner,
            state,
            connections,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed_for: None,
            closed: None,
        }
    }

    /// The state of the connection it carries.
    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.state
    }

    /// The connections it is counted among.
    pub(crate) fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// Called when the I/O would wait: an error once the deadline has
    /// passed, else the timer armed to wake the task at the deadline.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(why) = self.closed {
            return Err(timed_out(why));
        }
        loop {
            let Some((at, why)) = self.state.deadline() else {
                return Ok(());
            };
            if Instant::now() >= at {
                self.closed = Some(why);
                self.connections.counters.closed(why);
                tracing::debug!(?why, "closing a connection");
                return Err(timed_out(why));
            }
            if self.armed_for != Some(at) {
                self.timer.as_mut().reset(at);
                self.armed_for = Some(at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
        }
    }
}

fn timed_out(why: Closed) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connection closed: {why:?}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(why) = this.closed {
            return Poll::Ready(Err(timed_out(why)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.read_some();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                this.state.read_waits();
                match this.check(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(why) = this.closed {
            return Poll::Ready(Err(timed_out(why)));
        }
        this.state.flushed(false);
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => {
                this.state.write_waits(true);
                match this.check(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
            ready => {
                this.state.write_waits(false);
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                this.state.write_waits(true);
                match this.check(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
            ready => {
                this.state.write_waits(false);
                if matches!(ready, Poll::Ready(Ok(()))) {
                    this.state.flushed(true);
                }
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(why) = this.closed {
            return Poll::Ready(Err(timed_out(why)));
        }
        this.state.flushed(false);
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => {
                this.state.write_waits(true);
                match this.check(cx) {
                    Ok(()) => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
            ready => {
                this.state.write_waits(false);
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_total: 100,
            per_source: 0,
            tls_handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
        }
    }

    /// A fresh connection has the header timeout for its first request;
    /// after one it idles for the idle timeout; a request in flight has
    /// no deadline; HTTP/1 bytes while idle start the header timeout.
    #[test]
    fn deadlines_follow_the_connection() {
        let state = ConnState::new(limits(), true);
        let (at, why) = state.deadline().unwrap();
        assert_eq!(why, Closed::FirstRequest);
        assert!(at <= Instant::now() + Duration::from_secs(10));

        let request = state.begin(true);
        assert_eq!(state.deadline(), None);
        state.write_waits(true);
        assert_eq!(state.deadline().unwrap().1, Closed::Stalled);
        drop(request);
        let (at, why) = state.deadline().unwrap();
        assert_eq!(why, Closed::Idle);
        assert!(at > Instant::now() + Duration::from_secs(60));

        state.read_some();
        assert_eq!(state.deadline().unwrap().1, Closed::Header);
        drop(state.begin(true));
        assert_eq!(state.deadline().unwrap().1, Closed::Idle);

        // HTTP/2 frames while idle (a ping, settings) do not shorten it.
        let h2 = ConnState::new(limits(), false);
        drop(h2.begin(true));
        h2.read_some();
        assert_eq!(h2.deadline().unwrap().1, Closed::Idle);
    }
}
