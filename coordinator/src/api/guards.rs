//! The guards in front of the handlers: the admin and viewer bearer
//! tokens and console sessions, the per-source rate limit on agent
//! requests, the client's address behind trusted proxies, JSON bodies that
//! are bounded in size and time, and the note of which sources are agents,
//! admins or viewers (they may use the connections kept in reserve).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

use muster_proto::status::Role;
use muster_proto::ErrorCode;

use super::{ApiError, AppState, BODY_TIMEOUT};
use crate::config::Trust;

/// Agent requests per source address, over time.
pub type SourceLimiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// The limiter for `per_second` agent requests from one source (bursts of
/// twice that), or none for 0.
pub fn source_limiter(per_second: u32) -> Option<Arc<SourceLimiter>> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
    Some(Arc::new(governor::RateLimiter::keyed(
        governor::Quota::per_second(rate).allow_burst(burst),
    )))
}

/// The client's address: the TCP peer, or, behind trusted proxies, the
/// last `X-Forwarded-For` hop that is not one of them.
pub fn client_addr(trust: &Trust, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: IpAddr| match ip.to_canonical() {
        IpAddr::V4(v4) => trust
            .trusted_proxies
            .iter()
            .any(|net| net.contains_addr(v4)),
        IpAddr::V6(_) => false,
    };
    let mut addr = peer.to_canonical();
    if !trusted(addr) {
        return addr;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                addr = ip.to_canonical();
                if !trusted(addr) {
                    return addr;
                }
            }
            // A hop that is no address: stop at the last one believed.
            Err(_) => return addr,
        }
    }
    addr
}

/// The rate limit on agent requests, keyed by client address.
pub(super) async fn limit_agents(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &state.limiter {
        let source = client_addr(&state.trust, peer.ip(), req.headers());
        if let Err(not_until) = limiter.check_key(&source) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let mut response = ApiError::new(
                ErrorCode::RateLimited,
                format!("too many agent requests from {source}; try again shortly"),
            )
            .into_response();
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(value) = header::HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
    }
    next.run(req).await
}

/// Notes the TCP peer of an agent request or an admin call that succeeded
/// as a known source, which may use the connections kept in reserve.
pub(super) async fn remember_served(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let agent = matches!(
        req.uri().path(),
        muster_proto::paths::AGENT_REGISTER | muster_proto::paths::AGENT_HEARTBEAT
    );
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    let response = next.run(req).await;
    if response.status().is_success() {
        let admin = || {
            let mut headers = HeaderMap::new();
            if let Some(value) = authorization {
                headers.insert(header::AUTHORIZATION, value);
            }
            authorize(&state, &headers).is_ok()
        };
        if agent || admin() {
            state.connections.remember(peer.ip());
        }
    }
    response
}

/// `Json` whose rejections are our JSON errors.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let read = Json::<T>::from_request(req, state);
        let Json(value) = tokio::time::timeout(BODY_TIMEOUT, read)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
                )
            })??;
        Ok(Body(value))
    }
}

pub(super) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing \"Authorization: Bearer <token>\" header",
            )
        })
}

/// The admin routes' first step, before any extractor reads the path, the
/// query or the body: who is asking ([`authorize`]), and, for anyone but
/// the admin, only reads (GET and HEAD). A coordinator that stands by
/// passes changes on to the leader ([`super::forward`]), or refuses them
/// ([`not_leader`]) when it cannot. The role rides in the request's
/// extensions for the handlers that show it.
pub(super) async fn admin_only(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let role = match authorize(&state, req.headers()) {
        Ok(role) => role,
        Err(refused) => return refused.into_response(),
    };
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if role != Role::Admin && !reads {
        return ApiError::new(
            ErrorCode::Forbidden,
            "the viewer token and console sessions read and nothing more; this needs the admin token",
        )
        .into_response();
    }
    if !reads && state.leadership.stands_by() {
        if state.leader_client.is_none() || super::forward::was_forwarded(&req) {
            return not_leader(&state).into_response();
        }
        return super::forward::to_leader(&state, req).await;
    }
    req.extensions_mut().insert(role);
    next.run(req).await
}

/// The refusal of an admin change a coordinator that stands by cannot
/// pass on: it came passed on already (the lease moved while it was on its
/// way), or the coordinators serve the operator's certificate. Changes
/// (which may launch, terminate or remove) are the leader's, so a removal
/// or a launch runs once, and a change is passed on once at most.
fn not_leader(state: &AppState) -> ApiError {
    let leader = match state.leadership.leader() {
        Some(leader) => match leader.url {
            Some(url) => format!("{} at {url}", leader.name),
            None => leader.name,
        },
        None => "another coordinator (not known yet)".to_owned(),
    };
    let here = state.leadership.name().unwrap_or_default();
    ApiError::new(
        ErrorCode::NotLeader,
        format!(
            "this coordinator ({here}) stands by; admin changes are made by the leader, {leader}: \
             send this there. Reads and agents are served here"
        ),
    )
}

/// Who a request comes from: the admin token or the viewer token in
/// `Authorization: Bearer`, else a console session's cookie (which only
/// ever reads, whichever token opened it: a cookie rides along on requests
/// the user did not mean).
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<Role, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return token_role(state, bearer(headers)?).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the token is neither the admin token nor the viewer token",
            )
        });
    }
    let session = state
        .sessions
        .role(headers, &state.credentials)
        .map_err(|e| ApiError::from(crate::registry::RegistryError::from(e)))?;
    if session.is_some() {
        return Ok(Role::Viewer);
    }
    Err(ApiError::new(
        ErrorCode::Unauthorized,
        "missing \"Authorization: Bearer <token>\" header",
    ))
}

/// The role `token` gives: admin, viewer, or none.
pub(super) fn token_role(state: &AppState, token: &str) -> Option<Role> {
    state.credentials.role(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(hops: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for hop in hops {
            headers.append("x-forwarded-for", hop.parse().unwrap());
        }
        headers
    }

    /// X-Forwarded-For is believed only from trusted proxies, and only up
    /// to the first hop that is not one.
    #[test]
    fn client_address_behind_trusted_proxies() {
        let trust = Trust {
            trusted_proxies: vec!["10.9.0.0/16".parse().unwrap()],
            ..Trust::default()
        };
        let proxy: IpAddr = "10.9.0.5".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let client: IpAddr = "54.1.2.3".parse().unwrap();
        // A stranger's header is ignored.
        assert_eq!(
            client_addr(&trust, stranger, &forwarded(&["54.1.2.3"])),
            stranger
        );
        // Through the proxy: the last hop that is not a proxy, whatever
        // the client itself wrote in front of it.
        assert_eq!(
            client_addr(&trust, proxy, &forwarded(&["6.6.6.6, 54.1.2.3, 10.9.0.7"])),
            client
        );
        assert_eq!(
            client_addr(&trust, proxy, &forwarded(&["6.6.6.6", "54.1.2.3"])),
            client
        );
        // No header, or garbage: the proxy itself, which matches no node.
        assert_eq!(client_addr(&trust, proxy, &HeaderMap::new()), proxy);
        assert_eq!(
            client_addr(&trust, proxy, &forwarded(&["not-an-ip"])),
            proxy
        );
        // IPv4-mapped IPv6 peers are their IPv4 selves.
        let mapped: IpAddr = "::ffff:10.9.0.5".parse().unwrap();
        assert_eq!(
            client_addr(&trust, mapped, &forwarded(&["54.1.2.3"])),
            client
        );
    }

    /// The limiter lets a burst of twice the rate through, then refuses.
    #[test]
    fn source_limiter_bursts_then_refuses() {
        assert!(source_limiter(0).is_none());
        let limiter = source_limiter(3).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let allowed = (0..20).filter(|_| limiter.check_key(&a).is_ok()).count();
        assert_eq!(allowed, 6);
        assert!(
            limiter.check_key(&b).is_ok(),
            "another source has its own bucket"
        );
    }
}
