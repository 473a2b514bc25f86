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
//! - Bodies are capped at [`muster_proto::MAX_BODY_BYTES`]; unknown JSON
//!   fields are refused.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use muster_proto::{paths, CreateClusterRequest, CreateClusterResponse, ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;

use crate::registry::{secret_matches, Registry, RegistryError};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// SHA-256 of the admin token.
    pub admin_token_hash: Arc<String>,
    /// The agent served to booting nodes, if any.
    pub agent: Option<Arc<crate::agent_dist::AgentDist>>,
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
            RegistryError::CredentialMismatch { .. } | RegistryError::InstanceNotFound { .. } => {
                StatusCode::FORBIDDEN
            }
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
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
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
        let Json(value) = Json::<T>::from_request(req, state).await?;
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
    if secret_matches(token, &state.admin_token_hash) {
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
    Router::new()
        .route(paths::AGENT_REGISTER, post(register))
        .route(paths::AGENT_HEARTBEAT, post(heartbeat))
        .route(paths::CLUSTERS, get(list_clusters).post(create_cluster))
        .route(paths::CLUSTER, get(show_cluster).delete(remove_cluster))
        .route(paths::CLUSTER_SCALE, post(scale_cluster))
        .route(paths::CLUSTER_BYON_TOKEN, post(byon_token))
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
    headers: HeaderMap,
    Body(req): Body<muster_proto::RegisterRequest>,
) -> Result<Json<muster_proto::RegisterResponse>, ApiError> {
    let token = bearer(&headers)?;
    Ok(Json(state.registry.register(token, req).await?))
}

async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<muster_proto::HeartbeatRequest>,
) -> Result<Json<muster_proto::HeartbeatResponse>, ApiError> {
    let token = bearer(&headers)?;
    Ok(Json(state.registry.heartbeat(token, req).await?))
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

async fn user_data(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<muster_proto::UserDataResponse>), ApiError> {
    require_admin(&state, &headers)?;
    let rendered = state.registry.user_data(&name).await?;
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
    Ok(Json(match state.registry.zone().provider_status() {
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
    let refusals = counters
        .refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(code, n)| format!("muster_agent_refusals_total{{code=\"{code}\"}} {n}"))
        .collect();
    section(
        "muster_agent_refusals_total",
        "counter",
        "Agent requests refused, by error code.",
        refusals,
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
    if let Some(dns) = registry.zone().provider_status() {
        crate::dns_reconcile::write_metrics(&dns, &mut section);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
