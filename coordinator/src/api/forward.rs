//! A standby passes admin changes on to the leader.
//!
//! On a shared store every coordinator serves the admin API's reads, but
//! changes (which may launch, terminate or remove) are made by the leader
//! alone, so each runs once. A standby asked for a change sends the
//! request on as it came (method, path and query, body, the caller's
//! token) to the leader's `--advertise-url`, which the leader recorded with
//! its lease, and answers with the leader's answer: status, type and body.
//! A caller may thus send anything to any coordinator behind one name.
//!
//! - The request carries [`FORWARDED_BY`]. A coordinator that receives one
//!   while it stands by (the lease moved meanwhile) answers `421
//!   not_leader`, naming the leader, rather than pass it on again: a change
//!   makes one hop at most.
//! - No leader known, or one that cannot be reached, gives `503
//!   leader_unavailable`, and nothing was written. A leader that does not
//!   answer within [`FORWARD_TIMEOUT`] gives the same, but, as with any
//!   request that timed out, it may have made the change.
//! - The standby reaches the leader over HTTPS, trusting only the CA the
//!   replicas share, whose key is sealed in the store: a leader URL
//!   written into the database by someone else cannot draw the caller's
//!   token to a server of theirs. Coordinators that serve the operator's
//!   certificate (`--tls-cert`) have no such CA: their standbys do not
//!   pass changes on, and answer `421 not_leader`, naming the leader.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use muster_proto::ErrorCode;

use super::errors::ApiError;
use super::{AppState, BODY_TIMEOUT};

/// The header a change passed on by a standby carries: the standby's name.
pub const FORWARDED_BY: HeaderName = HeaderName::from_static("muster-forwarded-by");

/// How long a standby waits for the leader's answer to a change.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// The headers of the caller's request the leader is given.
const PASSED_ON: [HeaderName; 3] = [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT];

/// The HTTPS client a standby reaches the leader with, trusting the PEM
/// certificates `roots` (the shared CA) alone.
pub fn leader_client(roots: &[u8]) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(FORWARD_TIMEOUT)
        .connect_timeout(Duration::from_secs(5));
    for root in reqwest::Certificate::from_pem_bundle(roots)? {
        builder = builder.add_root_certificate(root);
    }
    builder.build()
}

/// Whether `req` was passed on by a standby already.
pub(super) fn was_forwarded(req: &Request) -> bool {
    req.headers().contains_key(FORWARDED_BY)
}

/// Sends `req` to the leader and answers with its answer; see the module.
pub(super) async fn to_leader(state: &AppState, req: Request) -> Response {
    let here = state.leadership.name().unwrap_or_default();
    let (Some(client), Some(leader)) = (&state.leader_client, state.leadership.leader()) else {
        return unavailable(here, "no coordinator leads right now").into_response();
    };
    let Some(base) = leader.url else {
        return unavailable(here, &format!("the leader {} gave no URL", leader.name))
            .into_response();
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, muster_proto::MAX_BODY_BYTES);
    let body = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(_)) => {
            return ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the request body could not be read whole (at most {} bytes)",
                    muster_proto::MAX_BODY_BYTES
                ),
            )
            .into_response()
        }
        Err(_) => {
            return ApiError::new(
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            )
            .into_response()
        }
    };
    let mut forward = client.request(parts.method.clone(), &url).body(body);
    for name in PASSED_ON {
        if let Some(value) = parts.headers.get(&name) {
            forward = forward.header(&name, value);
        }
    }
    if let Ok(value) = HeaderValue::from_str(here) {
        forward = forward.header(FORWARDED_BY, value);
    }
    let answer = match forward.send().await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(%error, leader = %leader.name, %url, "could not pass a change on to the leader");
            let why = if error.is_timeout() {
                format!(
                    "the leader {} did not answer within {FORWARD_TIMEOUT:?} (it may have made the change)",
                    leader.name
                )
            } else {
                format!("the leader {} at {base} could not be reached", leader.name)
            };
            return unavailable(here, &why).into_response();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let kind = answer.headers().get(header::CONTENT_TYPE).cloned();
    let body: Bytes = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => {
            return unavailable(
                here,
                &format!("the leader {}'s answer was cut off: {error}", leader.name),
            )
            .into_response()
        }
    };
    tracing::debug!(leader = %leader.name, %url, %status, "passed a change on to the leader");
    let mut response = (status, body).into_response();
    if let Some(kind) = kind {
        response.headers_mut().insert(header::CONTENT_TYPE, kind);
    }
    response
}

/// The answer when a change could not be passed on to the leader.
fn unavailable(here: &str, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::LeaderUnavailable,
        format!(
            "this coordinator ({here}) stands by, and admin changes are made by the leader: {why}; \
             nothing was written here, try again"
        ),
    )
}
