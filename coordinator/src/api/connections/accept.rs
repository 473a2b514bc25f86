//! The connection guards as axum-server sees them: [`Admit`] counts a TCP
//! connection in (or resets it) before TLS, axum-server's rustls acceptor
//! does the handshake within its timeout, and [`Watch`] counts the
//! handshake, wraps the stream in [`Watched`] and the service in
//! [`Tracked`], which marks each request in flight until its answer's body
//! is sent or dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{Request, Response};
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::deadline::{ConnState, InFlight, Watched};
use super::{Admission, Connections};

/// The acceptor of the API: admit, handshake (within the TLS handshake
/// timeout), watch.
pub fn acceptor(tls: Arc<rustls::ServerConfig>, connections: Arc<Connections>) -> Watch {
    let admit = Admit {
        connections: connections.clone(),
    };
    let tls = RustlsAcceptor::new(RustlsConfig::from_config(tls))
        .handshake_timeout(connections.limits().tls_handshake_timeout)
        .acceptor(admit);
    Watch { tls, connections }
}

/// Counts a TCP connection in, or resets it at once past a cap.
#[derive(Debug, Clone)]
pub struct Admit {
    connections: Arc<Connections>,
}

/// A TCP stream holding its place among the open connections.
#[derive(Debug)]
pub struct Admitted {
    stream: TcpStream,
    _admission: Admission,
}

impl<S> Accept<TcpStream, S> for Admit {
    type Stream = Admitted;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Admitted, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let source = match stream.peer_addr() {
            Ok(peer) => peer.ip(),
            Err(e) => return std::future::ready(Err(e)),
        };
        match self.connections.admit(source) {
            Ok(admission) => std::future::ready(Ok((
                Admitted {
                    stream,
                    _admission: admission,
                },
                service,
            ))),
            Err(why) => {
                tracing::debug!(%source, ?why, "connection refused");
                // A reset, not a FIN: the client learns at once, and the
                // socket leaves no TIME_WAIT behind.
                let _ = stream.set_zero_linger();
                std::future::ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("connection from {source} refused: {why:?}"),
                )))
            }
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    write_through!(stream);
}

/// Counts handshakes and puts each connection under watch.
#[derive(Clone)]
pub struct Watch {
    tls: RustlsAcceptor<Admit>,
    connections: Arc<Connections>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

type Accepted<S> = (Watched<TlsStream<Admitted>>, Tracked<S>);

impl<S: Send + 'static> Accept<TcpStream, S> for Watch {
    type Stream = Watched<TlsStream<Admitted>>;
    type Service = Tracked<S>;
    type Future = Pin<Box<dyn Future<Output = io::Result<Accepted<S>>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let handshake = self.tls.accept(stream, service);
        let connections = self.connections.clone();
        Box::pin(async move {
            let counters = &connections.counters;
            let (tls, service) = match handshake.await {
                Ok(done) => done,
                Err(e) => {
                    match e.kind() {
                        // Refused before any TLS: counted as a refusal.
                        io::ErrorKind::ConnectionRefused => {}
                        io::ErrorKind::TimedOut => {
                            counters.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            counters.handshake_failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    return Err(e);
                }
            };
            counters.handshakes.fetch_add(1, Ordering::Relaxed);
            let session = tls.get_ref().1;
            if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                counters.handshakes_resumed.fetch_add(1, Ordering::Relaxed);
            }
            let http1 = session.alpn_protocol() != Some(b"h2");
            let state = ConnState::new(connections.limits(), http1);
            let service = Tracked {
                inner: service,
                state: state.clone(),
            };
            Ok((Watched::new(tls, state, connections), service))
        })
    }
}

/// A connection's service, marking each request in flight.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S, B> tower_service::Service<Request<B>> for Tracked<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let read = request.body().is_end_stream();
        let in_flight = self.state.begin(read);
        let state = self.state.clone();
        let request = request.map(|body| Body::new(Reading { body, state }));
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| {
                Body::new(Sending {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

/// A request's body, telling the connection once it is read to its end.
#[derive(Debug)]
struct Reading<B> {
    body: B,
    state: Arc<ConnState>,
}

impl<B> http_body::Body for Reading<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.body.is_end_stream() {
            self.state.body_read();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An answer's body, keeping its request in flight until it is sent or
/// dropped.
#[derive(Debug)]
struct Sending {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
