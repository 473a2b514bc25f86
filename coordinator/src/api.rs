//! The HTTPS API (axum): the agent endpoints, the admin endpoints, health and
//! Prometheus metrics.
//!
//! - Agent endpoints authenticate with the bearer secret in the body's stead
//!   (join token or node credential); the registry checks it.
//! - Admin endpoints need `Authorization: Bearer <admin token>`.
//! - The agent download (`/v1/agent/linux/{arch}/muster-agent`, `…/.deb`)
//!   needs nothing: see [`crate::agent_dist`] for why. It is streamed from
//!   the file, never held in memory.
//! - Every error is JSON `{"error": {"code", "message"}}`. Bad input is a 4xx;
//!   a 5xx means our own fault or EC2 being unavailable.
//! - Bodies are capped at [`muster_proto::MAX_BODY_BYTES`] and must arrive
//!   within [`BODY_TIMEOUT`]; unknown JSON fields are refused. (Headers must
//!   arrive within [`HEADER_TIMEOUT`] and the TLS handshake within 10 s: the
//!   server enforces those, see [`crate::serve`].)
//! - The agent endpoints are rate limited per source address
//!   (`--agent-rate-limit` requests per second, bursts of twice that);
//!   beyond it the answer is 429 `rate_limited` with `Retry-After`.
//! - The source address is the TCP peer, or, when the peer is one of
//!   `--trusted-proxies`, the last address in `X-Forwarded-For` that is not
//!   a trusted proxy. `--verify-source` checks it against the node's
//!   addresses.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_proto::{paths, CreateClusterRequest, CreateClusterResponse, ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;

use crate::config::Trust;
use crate::registry::{Registry, RegistryError};
use crate::secrets::secret_matches;

/// How long a request body may take to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request's headers may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Agent requests per source address, over time.
pub type SourceLimiter = governor::DefaultKeyedRateLimiter<IpAddr>;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// SHA-256 of the admin token; replaced when it is rotated.
    pub admin_token_hash: Arc<std::sync::RwLock<String>>,
    /// Where the admin token file lives.
    pub data_dir: Arc<std::path::PathBuf>,
    /// Proxies to believe, and whether sources are checked.
    pub trust: Arc<Trust>,
    /// The per-source limit on agent requests, if there is one.
    pub limiter: Option<Arc<SourceLimiter>>,
    /// The agent served to booting nodes, if any.
    pub agent: Option<Arc<crate::launcher::agent_dist::AgentDist>>,
    /// How far the external DNS provider has got.
    pub dns_status: Arc<crate::dns::status::StatusBoard>,
}

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
            .any(|&net| muster_proto::validate::in_cidr(v4, net)),
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
async fn limit_agents(
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
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
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

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let status = match &error {
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RegistryError::CredentialMismatch { .. }
            | RegistryError::InstanceNotFound { .. }
            | RegistryError::ClusterTagMismatch { .. }
            | RegistryError::IdentityUnproven { .. } => StatusCode::FORBIDDEN,
            RegistryError::SourceMismatch { .. } => StatusCode::FORBIDDEN,
            RegistryError::InstanceNotRunning { .. }
            | RegistryError::AddressMismatch { .. }
            | RegistryError::InstanceInOtherCluster { .. }
            | RegistryError::NodeTerminated { .. }
            | RegistryError::ClusterExists(_)
            | RegistryError::NameTaken { .. }
            | RegistryError::ClusterNotActive { .. } => StatusCode::CONFLICT,
            RegistryError::Launch(e) if e.is_bad_request() => StatusCode::UNPROCESSABLE_ENTITY,
            RegistryError::Launch(_) => StatusCode::BAD_GATEWAY,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Ec2(_) => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RegistryError::Agent(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_server_error() {
            tracing::error!(%error, "request failed on our side");
        }
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match &rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(b) if b.body_text().contains("length limit") => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid_json", rejection.body_text())
    }
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
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
                )
            })??;
        Ok(Body(value))
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing \"Authorization: Bearer <token>\" header",
            )
        })
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let token = bearer(headers)?;
    let hash = state
        .admin_token_hash
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if secret_matches(token, &hash) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the admin token is not valid",
        ))
    }
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let agent = Router::new()
        .route(paths::AGENT_REGISTER, post(register))
        .route(paths::AGENT_HEARTBEAT, post(heartbeat))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_agents,
        ));
    Router::new()
        .merge(agent)
        .route(paths::CLUSTERS, get(list_clusters).post(create_cluster))
        .route(paths::CLUSTER, get(show_cluster).delete(remove_cluster))
        .route(paths::CLUSTER_SCALE, post(scale_cluster))
        .route(paths::CLUSTER_BYON_TOKEN, post(byon_token))
        .route(paths::CLUSTER_ROTATE_TOKEN, post(rotate_token))
        .route(paths::ADMIN_ROTATE_TOKEN, post(rotate_admin_token))
        .route(paths::CLUSTER_USERDATA, post(user_data))
        .route(paths::AGENT_DOWNLOAD, get(agent_download))
        .route(paths::NODES, get(list_nodes))
        .route(paths::NODE, get(show_node).delete(remove_node))
        .route(paths::NODE_EVENTS, get(node_events))
        .route(paths::HEALTHZ, get(|| async { "ok\n" }))
        .route(paths::METRICS, get(metrics))
        .route(DNS_STATUS, get(dns_status))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API path")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(muster_proto::MAX_BODY_BYTES))
        .with_state(state)
}

async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<muster_proto::RegisterRequest>,
) -> Result<Json<muster_proto::RegisterResponse>, ApiError> {
    let token = bearer(&headers)?;
    let source = client_addr(&state.trust, peer.ip(), &headers);
    Ok(Json(
        state
            .registry
            .register_from(token, req, Some(source))
            .await?,
    ))
}

async fn heartbeat(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<muster_proto::HeartbeatRequest>,
) -> Result<Json<muster_proto::HeartbeatResponse>, ApiError> {
    let token = bearer(&headers)?;
    let source = client_addr(&state.trust, peer.ip(), &headers);
    Ok(Json(
        state
            .registry
            .heartbeat_from(token, req, Some(source))
            .await?,
    ))
}

async fn list_clusters(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Vec<muster_proto::ClusterView>>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.registry.clusters()?))
}

async fn create_cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<CreateClusterRequest>,
) -> Result<(StatusCode, Json<CreateClusterResponse>), ApiError> {
    require_admin(&state, &headers)?;
    let created = state.registry.create_cluster(&req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn byon_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<muster_proto::ByonTokenResponse>), ApiError> {
    require_admin(&state, &headers)?;
    let byon_token = state.registry.byon_token(&name).await?;
    Ok((
        StatusCode::CREATED,
        Json(muster_proto::ByonTokenResponse {
            cluster: name,
            byon_token,
        }),
    ))
}

async fn rotate_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::RotateTokenRequest>,
) -> Result<Json<muster_proto::RotateTokenResponse>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.registry.rotate_token(&name, &req).await?))
}

async fn rotate_admin_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<muster_proto::AdminTokenResponse>, ApiError> {
    require_admin(&state, &headers)?;
    // The file first: if it cannot be written, the old token stays valid
    // everywhere.
    let mut hash = state
        .admin_token_hash
        .write()
        .unwrap_or_else(|p| p.into_inner());
    let token = crate::pki::rotate_admin_token(&state.data_dir).map_err(|e| {
        tracing::error!(error = %e, "could not write the new admin token");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("could not write the new admin token: {e}"),
        )
    })?;
    *hash = crate::secrets::hash_secret(&token);
    Ok(Json(muster_proto::AdminTokenResponse {
        admin_token: token,
    }))
}

async fn user_data(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::UserDataRequest>,
) -> Result<(StatusCode, Json<muster_proto::UserDataResponse>), ApiError> {
    require_admin(&state, &headers)?;
    let rendered = state.registry.user_data(&name, &req).await?;
    Ok((StatusCode::CREATED, Json(rendered)))
}

async fn agent_download(
    State(state): State<AppState>,
    Path((os, arch, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let Some(dist) = &state.agent else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this coordinator serves no agent (--agent-binary)",
        ));
    };
    let agent_file = dist
        .file(&os, &arch, &file)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", dist.describe()))?;
    let unavailable = |e: std::io::Error| {
        tracing::error!(path = %agent_file.path().display(), error = %e, "cannot serve the agent");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "agent_unavailable",
            format!("the agent file cannot be read: {e}"),
        )
    };
    let opened = tokio::fs::File::open(agent_file.path())
        .await
        .map_err(unavailable)?;
    let len = opened.metadata().await.map_err(unavailable)?.len();
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(opened));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

async fn scale_cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::launch::ScaleClusterRequest>,
) -> Result<Json<muster_proto::launch::ScaleClusterResponse>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.registry.scale_cluster(&name, &req).await?))
}

async fn remove_cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<muster_proto::ClusterView>), ApiError> {
    require_admin(&state, &headers)?;
    let cluster = state.registry.remove_cluster(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(cluster)))
}

async fn show_cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<muster_proto::ClusterView>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.registry.cluster(&name)?))
}

async fn list_nodes(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<muster_proto::NodeView>>, ApiError> {
    require_admin(&state, &headers)?;
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "cluster") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("unknown query parameter {unknown:?}; only \"cluster\" is known"),
        ));
    }
    Ok(Json(
        state
            .registry
            .nodes(query.get("cluster").map(String::as_str))?,
    ))
}

async fn show_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cluster, name)): Path<(String, String)>,
) -> Result<Json<muster_proto::NodeDetail>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.registry.node(&cluster, &name)?))
}

async fn node_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cluster, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<muster_proto::EventPage>, ApiError> {
    require_admin(&state, &headers)?;
    let mut after = 0i64;
    let mut limit = 100usize;
    for (key, value) in &query {
        let bad = |why: &str| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{key}={value:?} is not valid: {why}"),
            )
        };
        match key.as_str() {
            "after" => {
                after = value
                    .parse()
                    .map_err(|_| bad("must be a sequence number"))?
            }
            "limit" => limit = value.parse().map_err(|_| bad("must be a number"))?,
            _ => {
                return Err(bad(
                    "unknown query parameter; \"after\" and \"limit\" are known",
                ))
            }
        }
    }
    Ok(Json(
        state.registry.node_events(&cluster, &name, after, limit)?,
    ))
}

async fn remove_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((cluster, name)): Path<(String, String)>,
) -> Result<Json<muster_proto::NodeView>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(state.registry.remove_node(&cluster, &name).await?))
}

/// `GET /v1/dns/status` (admin): how far the DNS provider has got.
pub const DNS_STATUS: &str = "/v1/dns/status";

async fn dns_status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require_admin(&state, &headers)?;
    Ok(Json(match state.dns_status.get() {
        Some(status) => serde_json::json!(status),
        None => serde_json::json!({ "provider": "embedded", "pending_changes": 0 }),
    }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let registry = &state.registry;
    let counters = &registry.counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::new();
    let mut section = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    };
    section(
        "muster_registrations_total",
        "counter",
        "Successful agent registers.",
        vec![format!(
            "muster_registrations_total {}",
            load(&counters.registrations)
        )],
    );
    section(
        "muster_heartbeats_total",
        "counter",
        "Accepted agent heartbeats.",
        vec![format!(
            "muster_heartbeats_total {}",
            load(&counters.heartbeats)
        )],
    );
    section(
        "muster_address_changes_total",
        "counter",
        "Address changes accepted after the EC2 check.",
        vec![format!(
            "muster_address_changes_total {}",
            load(&counters.address_changes)
        )],
    );
    section(
        "muster_sweeps_total",
        "counter",
        "EC2 sweeps completed (every region read or given up on).",
        vec![format!("muster_sweeps_total {}", load(&counters.sweeps))],
    );
    let by_code = |name: &str, map: &std::sync::Mutex<std::collections::BTreeMap<&str, u64>>| {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(code, n)| format!("{name}{{code=\"{code}\"}} {n}"))
            .collect::<Vec<_>>()
    };
    section(
        "muster_agent_refusals_total",
        "counter",
        "Agent requests refused, by error code.",
        by_code("muster_agent_refusals_total", &counters.refusals),
    );
    section(
        "muster_security_events_total",
        "counter",
        "Agent requests refused as someone speaking for a node they may not be, by error code.",
        by_code("muster_security_events_total", &counters.security_events),
    );
    section(
        "muster_nodes",
        "gauge",
        "Nodes by state.",
        registry
            .nodes_by_state()
            .iter()
            .map(|(state, n)| format!("muster_nodes{{state=\"{state}\"}} {n}"))
            .collect(),
    );
    section(
        "muster_dns_queries_total",
        "counter",
        "DNS queries answered by the embedded server.",
        vec![format!(
            "muster_dns_queries_total {}",
            registry.zone().queries()
        )],
    );
    let caches = registry.ec2_cache_status();
    if !caches.is_empty() {
        section(
            "muster_ec2_cache_instances",
            "gauge",
            "Cluster members the EC2 cache's last listing of a region held.",
            caches
                .iter()
                .map(|c| {
                    format!(
                        "muster_ec2_cache_instances{{region=\"{}\"}} {}",
                        c.region, c.instances
                    )
                })
                .collect(),
        );
        section(
            "muster_ec2_cache_age_seconds",
            "gauge",
            "Age of the EC2 cache's last listing of a region (absent before the first).",
            caches
                .iter()
                .filter_map(|c| {
                    let age = c.age?.as_secs_f64();
                    Some(format!(
                        "muster_ec2_cache_age_seconds{{region=\"{}\"}} {age:.3}",
                        c.region
                    ))
                })
                .collect(),
        );
        section(
            "muster_ec2_cache_lookups_total",
            "counter",
            "Claims looked up in the EC2 cache, by whether the listing held the instance.",
            caches
                .iter()
                .flat_map(|c| {
                    [("hit", c.hits), ("miss", c.misses)].map(|(result, n)| {
                        format!(
                            "muster_ec2_cache_lookups_total{{region=\"{}\",result=\"{result}\"}} {n}",
                            c.region
                        )
                    })
                })
                .collect(),
        );
    }
    if let Some(dns) = state.dns_status.get() {
        write_dns_metrics(&dns, &mut section);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// Writes the provider's metrics through `section(name, kind, help, lines)`.
fn write_dns_metrics(
    status: &crate::dns::status::ProviderStatus,
    section: &mut impl FnMut(&str, &str, &str, Vec<String>),
) {
    let label = format!("provider=\"{}\"", status.provider);
    let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
        section(name, kind, help, vec![format!("{name}{{{label}}} {value}")]);
    };
    gauge(
        "muster_dns_pending_changes",
        "gauge",
        "DNS names whose change is not applied at the provider yet.",
        status.pending_changes.to_string(),
    );
    gauge(
        "muster_dns_conflicts",
        "gauge",
        "DNS names muster wants but does not own, left alone.",
        status.conflicts.len().to_string(),
    );
    gauge(
        "muster_dns_applied_names",
        "gauge",
        "DNS names applied at the provider.",
        status.applied_names.to_string(),
    );
    gauge(
        "muster_dns_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last DNS pass that reached the provider without error (0: never).",
        status.last_success_unix.unwrap_or_default().to_string(),
    );
    gauge(
        "muster_dns_update_failures_total",
        "counter",
        "DNS passes that failed.",
        status.failures_total.to_string(),
    );
    gauge(
        "muster_dns_throttled_total",
        "counter",
        "Answers from the DNS provider that told muster to slow down (each retried).",
        status.throttled_total.to_string(),
    );
    gauge(
        "muster_dns_changes_applied_total",
        "counter",
        "DNS changes applied at the provider.",
        status.applied_total.to_string(),
    );
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
            trusted_proxies: vec![("10.9.0.0".parse().unwrap(), 16)],
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
