//! The HTTPS client for the coordinator's agent API.
//!
//! TLS is rustls (TLS 1.2 and 1.3). With a CA file, only that CA is
//! trusted: the built-in roots are off, so a certificate from anywhere else
//! is refused even if a public CA signed it. Without one (a coordinator
//! serving an operator's certificate), the system's roots are trusted
//! (`rustls-native-certs`, which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`). Errors come back as `{"error": {"code", "message"}}`
//! ([`ErrorBody`]); they are kept as [`CoordinatorError::Refused`] with the
//! status, code and message so that callers can act on the code and log it.

use std::time::Duration;

use muster_proto::{
    paths, ErrorBody, ErrorCode, HeartbeatRequest, HeartbeatResponse, RegisterRequest,
    RegisterResponse, MAX_BODY_BYTES,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Connecting gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// An error message from the coordinator is cut to this many bytes.
const MAX_LOGGED_BODY: usize = 1024;

/// Failures talking to the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The CA file's PEM did not give a certificate.
    #[error("cannot use the CA certificates from {path}")]
    LoadCa {
        /// The CA file.
        path: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the coordinator client")]
    BuildClient(#[source] reqwest::Error),
    /// The request did not complete: no route, refused, TLS, timeout.
    #[error("cannot reach the coordinator at {url}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The coordinator answered with an error.
    #[error("the coordinator refused {url} with {status}: {message} ({code})")]
    Refused {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// The error code (`unauthorized`, `address_mismatch`, …); for an
        /// answer not in the error shape, `http_<status>`.
        code: ErrorCode,
        /// What went wrong, in words, cut short.
        message: String,
        /// How long the coordinator asked to be left alone (`Retry-After`,
        /// in seconds, at most [`MAX_RETRY_AFTER`]).
        retry_after: Option<Duration>,
    },
    /// The coordinator answered 200 with something this agent cannot read.
    #[error("cannot understand the coordinator's answer to {url}")]
    Decode {
        /// The URL asked.
        url: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl CoordinatorError {
    /// The HTTP status, if the coordinator answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            CoordinatorError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the coordinator asked to wait before the next try, if it
    /// did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CoordinatorError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error code, if the coordinator answered with an error.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            CoordinatorError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the coordinator could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CoordinatorError::Unreachable { .. })
    }

    /// Whether the failure cuts the agent off from the coordinator: no
    /// answer at all, or a server error (5xx, e.g. from a proxy in front of
    /// a coordinator that is down). Any other answer means the coordinator
    /// is there, even if it refused.
    pub fn is_outage(&self) -> bool {
        match self {
            CoordinatorError::Unreachable { .. } => true,
            CoordinatorError::Refused { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

/// A client for one coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    http: reqwest::Client,
    base: String,
}

impl CoordinatorClient {
    /// A client for the coordinator at `base` (https, no trailing `/`),
    /// trusting only the certificates in `ca` (PEM, and the file it was
    /// read from), or the system's roots without one.
    pub fn new(base: &str, ca: Option<(&[u8], &str)>) -> Result<Self, CoordinatorError> {
        let certs = match ca {
            Some((pem, path)) => reqwest::Certificate::from_pem_bundle(pem).map_err(|source| {
                CoordinatorError::LoadCa {
                    path: path.to_owned(),
                    source,
                }
            })?,
            None => Vec::new(),
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(ca.is_none())
            .https_only(true)
            // One small request every few seconds gains nothing from
            // HTTP/2's streams, and each HTTP/2 connection costs the
            // coordinator more CPU per request and tens of KiB of codec
            // buffers; BENCHMARKS.md has the figures.
            .http1_only()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("muster-agent/", env!("CARGO_PKG_VERSION")));
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(CoordinatorError::BuildClient)?;
        Ok(CoordinatorClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// The coordinator's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/agent/register` with the join token or node credential.
    pub async fn register(
        &self,
        bearer: &str,
        request: &RegisterRequest,
    ) -> Result<RegisterResponse, CoordinatorError> {
        self.post(paths::AGENT_REGISTER, bearer, request).await
    }

    /// `POST /v1/agent/heartbeat` with the node credential.
    pub async fn heartbeat(
        &self,
        credential: &str,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, CoordinatorError> {
        self.post(paths::AGENT_HEARTBEAT, credential, request).await
    }

    async fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        bearer: &str,
        body: &Q,
    ) -> Result<A, CoordinatorError> {
        let url = format!("{}{}", self.base, path);
        let unreachable = |source| CoordinatorError::Unreachable {
            url: url.clone(),
            source,
        };
        let response = self
            .http
            .post(&url)
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = crate::read_body_capped(response, MAX_BODY_BYTES + 1)
            .await
            .map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|source| CoordinatorError::Decode {
                url: url.clone(),
                source,
            });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (
                match body.error.code {
                    ErrorCode::Other(code) => ErrorCode::Other(crate::cut_text(&code, 64)),
                    known => known,
                },
                crate::cut_text(&body.error.message, MAX_LOGGED_BODY),
            ),
            // Not our error shape (a proxy in the way?): keep what it said.
            Err(_) => (
                ErrorCode::Other(format!("http_{}", status.as_u16())),
                crate::cut_text(&String::from_utf8_lossy(&bytes), MAX_LOGGED_BODY),
            ),
        };
        Err(CoordinatorError::Refused {
            url,
            status,
            code,
            message,
            retry_after,
        })
    }
}

/// The longest `Retry-After` the agent honours: a coordinator (or a proxy)
/// asking for more is waited on for this long, then asked again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A `Retry-After` given in seconds (the form the coordinator sends; an
/// HTTP date is ignored), capped at [`MAX_RETRY_AFTER`].
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// The pause before the next try: the backoff's, or longer if the
/// coordinator asked for longer.
pub fn pause(backoff: Duration, error: &CoordinatorError) -> Duration {
    error
        .retry_after()
        .map_or(backoff, |asked| asked.max(backoff))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: StatusCode) -> CoordinatorError {
        CoordinatorError::Refused {
            url: "https://c.example.com/v1/agent/heartbeat".into(),
            status,
            code: ErrorCode::Other("x".into()),
            message: "x".into(),
            retry_after: None,
        }
    }

    /// A server error counts as an outage; a refusal with a 4xx does not,
    /// nor does an answer that cannot be read.
    #[test]
    fn outages_are_no_answer_or_5xx() {
        assert!(refused(StatusCode::SERVICE_UNAVAILABLE).is_outage());
        assert!(refused(StatusCode::BAD_GATEWAY).is_outage());
        assert!(!refused(StatusCode::UNAUTHORIZED).is_outage());
        assert!(!refused(StatusCode::CONFLICT).is_outage());
        let decode = CoordinatorError::Decode {
            url: "https://c.example.com/v1/agent/heartbeat".into(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        assert!(!decode.is_outage());
    }

    /// `Retry-After` in seconds is honoured, capped; a date or garbage is
    /// ignored; the pause is the longer of the backoff's and the one asked.
    #[test]
    fn retry_after_lengthens_the_pause() {
        let header = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers)
        };
        assert_eq!(header("7"), Some(Duration::from_secs(7)));
        assert_eq!(header("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(header("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(header("-1"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new()), None);
        let asked = CoordinatorError::Refused {
            url: "https://c.example.com/v1/agent/heartbeat".into(),
            status: StatusCode::TOO_MANY_REQUESTS,
            code: ErrorCode::RateLimited,
            message: "x".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            pause(Duration::from_secs(1), &asked),
            Duration::from_secs(7)
        );
        assert_eq!(
            pause(Duration::from_secs(9), &asked),
            Duration::from_secs(9)
        );
        let plain = refused(StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            pause(Duration::from_secs(1), &plain),
            Duration::from_secs(1)
        );
    }

    /// One heartbeat to `url`, trusting a CA of its own.
    async fn heartbeat_to(url: &str) -> Result<HeartbeatResponse, CoordinatorError> {
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let client =
            CoordinatorClient::new(url, Some((ca.cert.pem().as_bytes(), "ca.pem"))).unwrap();
        let request = HeartbeatRequest {
            instance_id: "i-0123456789abcdef0".into(),
            private_ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, 5)),
            public_ipv4: None,
            facts: Default::default(),
            checks: Vec::new(),
            notices: Vec::new(),
            leaving: None,
            agent_version: None,
            ipv6: None,
        };
        client.heartbeat("x", &request).await
    }

    /// The agent offers HTTP/1.1 alone in its TLS handshake: the
    /// coordinator never speaks HTTP/2 to it.
    #[tokio::test]
    async fn offers_only_http1() {
        crate::install_crypto_provider();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let hello = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut acceptor = rustls::server::Acceptor::default();
            loop {
                let read = acceptor.read_tls(&mut socket).unwrap();
                assert_ne!(read, 0, "the agent hung up before its hello");
                if let Some(accepted) = acceptor.accept().map_err(|(e, _)| e).unwrap() {
                    let alpn: Option<Vec<Vec<u8>>> = accepted
                        .client_hello()
                        .alpn()
                        .map(|protocols| protocols.map(<[u8]>::to_vec).collect());
                    return alpn;
                }
            }
        });
        // The listener hangs up after the hello: the heartbeat fails.
        assert!(heartbeat_to(&url).await.is_err());
        assert_eq!(hello.join().unwrap(), Some(vec![b"http/1.1".to_vec()]));
    }

    /// A coordinator nobody listens for is an outage.
    #[tokio::test]
    async fn connection_refused_is_an_outage() {
        crate::install_crypto_provider();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", closed.local_addr().unwrap());
        drop(closed);
        let e = heartbeat_to(&url).await.unwrap_err();
        assert!(e.is_unreachable() && e.is_outage(), "{e}");
    }
}
