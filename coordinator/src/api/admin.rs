//! The admin endpoints: clusters, nodes, tokens, user data, backups and
//! the DNS provider's status. Each needs the admin token, which the router
//! checks ([`super::guards::admin_only`]) before a handler reads a path,
//! a query or a body: without it, nothing says whether a cluster exists
//! or a body is well formed.
//!
//! Creates and scales run in a task of their own, which the request awaits:
//! a client that goes away, or a request cut off by its timeout, leaves the
//! launch to finish (its nodes are stored, its job finished) rather than
//! cancelling it half way.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use muster_proto::{CreateClusterRequest, CreateClusterResponse, ErrorCode};

use super::guards::Body;
use super::{ApiError, AppState};

/// Runs `work` in a task of its own, so that dropping the request does not
/// cancel it; its answer, or a 500 if it panicked.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, crate::registry::RegistryError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(answer) => Ok(answer?),
        Err(error) => {
            tracing::error!(%error, "a cluster operation panicked");
            Err(ApiError::new(
                ErrorCode::Internal,
                "the cluster operation failed; see the coordinator's log".to_owned(),
            ))
        }
    }
}

pub(super) async fn list_clusters(
    State(state): State<AppState>,
) -> Result<Json<Vec<muster_proto::ClusterView>>, ApiError> {
    Ok(Json(state.registry.clusters()?))
}

pub(super) async fn create_cluster(
    State(state): State<AppState>,
    Body(req): Body<CreateClusterRequest>,
) -> Result<(StatusCode, Json<CreateClusterResponse>), ApiError> {
    let registry = state.registry.clone();
    let created = detached(async move { registry.create_cluster(&req).await }).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn byon_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::ByonTokenRequest>,
) -> Result<(StatusCode, Json<muster_proto::ByonTokenResponse>), ApiError> {
    let byon_token = state.registry.byon_token(&name, &req).await?;
    Ok((
        StatusCode::CREATED,
        Json(muster_proto::ByonTokenResponse {
            cluster: name,
            byon_token,
        }),
    ))
}

pub(super) async fn list_tokens(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<muster_proto::TokenView>>, ApiError> {
    Ok(Json(state.registry.tokens(&name)?))
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<muster_proto::TokenView>, ApiError> {
    Ok(Json(state.registry.revoke_token(&name, &id).await?))
}

pub(super) async fn admit_machine(
    State(state): State<AppState>,
    Path((name, machine)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.registry.admit_machine(&name, &machine).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn rotate_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::RotateTokenRequest>,
) -> Result<Json<muster_proto::RotateTokenResponse>, ApiError> {
    Ok(Json(state.registry.rotate_token(&name, &req).await?))
}

pub(super) async fn extend_cluster(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::ExtendClusterRequest>,
) -> Result<Json<muster_proto::ClusterView>, ApiError> {
    Ok(Json(state.registry.extend_cluster(&name, &req).await?))
}

pub(super) async fn rotate_admin_token(
    State(state): State<AppState>,
) -> Result<Json<muster_proto::AdminTokenResponse>, ApiError> {
    let token = state
        .credentials
        .rotate_admin_token()
        .map_err(|e| token_not_changed("admin token", &e))?;
    Ok(Json(muster_proto::AdminTokenResponse {
        admin_token: token,
    }))
}

/// `POST /v1/admin/viewer-token`: a new viewer token, shown once; the one
/// before it, and the console sessions it opened, stop working at once.
pub(super) async fn viewer_token(
    State(state): State<AppState>,
) -> Result<Json<muster_proto::status::ViewerTokenResponse>, ApiError> {
    let token = state
        .credentials
        .issue_viewer_token()
        .map_err(|e| token_not_changed("viewer token", &e))?;
    Ok(Json(muster_proto::status::ViewerTokenResponse {
        viewer_token: token,
    }))
}

/// The answer when a new `what` could not be kept: the old one stays.
fn token_not_changed(what: &str, error: &crate::credentials::CredentialsError) -> ApiError {
    let code = if error.is_unavailable() {
        ErrorCode::StoreUnavailable
    } else {
        tracing::error!(%error, "could not keep a new {what}");
        ErrorCode::Internal
    };
    ApiError::new(
        code,
        format!("could not keep the new {what}, and the old one stays: {error}"),
    )
}

/// `GET /v1/status`: the coordinator's own health, and who asked.
pub(super) async fn status(
    State(state): State<AppState>,
    role: Option<axum::Extension<muster_proto::status::Role>>,
) -> Json<muster_proto::status::CoordinatorStatus> {
    use muster_proto::status::{ConnectionCounts, CoordinatorStatus, Ec2Standing, Role};
    let why = state.registry.ec2_account().untrusted_because();
    Json(CoordinatorStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: humantime::format_rfc3339_seconds(state.started).to_string(),
        uptime_secs: state.started.elapsed().map_or(0, |d| d.as_secs()),
        zone: state.registry.zone_name().to_owned(),
        store: state.registry.store_kind().to_owned(),
        leader: state.leadership.is_current(),
        lease: state.leadership.status(),
        ec2: Ec2Standing {
            trusted: why.is_none(),
            why,
        },
        connections: ConnectionCounts {
            open: state.connections.open() as u64,
            max: state.connections.limits().max_total as u64,
        },
        role: role.map_or(Role::Viewer, |r| r.0),
    })
}

/// `GET /v1/fleet/history`: the fleet's last hour, as sampled in memory.
pub(super) async fn fleet_history(
    State(state): State<AppState>,
) -> Json<muster_proto::status::FleetHistory> {
    Json(state.fleet.history())
}

/// `GET /v1/nodes/{cluster}/{name}/dns`: what the node's names answer now.
pub(super) async fn node_names(
    State(state): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
) -> Result<Json<muster_proto::status::NodeNames>, ApiError> {
    Ok(Json(state.registry.node_names(&cluster, &name)?))
}

pub(super) async fn user_data(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::UserDataRequest>,
) -> Result<(StatusCode, Json<muster_proto::UserDataResponse>), ApiError> {
    let rendered = state.registry.user_data(&name, &req).await?;
    Ok((StatusCode::CREATED, Json(rendered)))
}

pub(super) async fn scale_cluster(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<muster_proto::launch::ScaleClusterRequest>,
) -> Result<Json<muster_proto::launch::ScaleClusterResponse>, ApiError> {
    let registry = state.registry.clone();
    Ok(Json(
        detached(async move { registry.scale_cluster(&name, &req).await }).await?,
    ))
}

pub(super) async fn remove_cluster(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<muster_proto::ClusterView>), ApiError> {
    let cluster = state.registry.remove_cluster(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(cluster)))
}

pub(super) async fn show_cluster(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<muster_proto::ClusterView>, ApiError> {
    Ok(Json(state.registry.cluster(&name)?))
}

pub(super) async fn list_nodes(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Vec<muster_proto::NodeView>>, ApiError> {
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "cluster") {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("unknown query parameter {unknown:?}; only \"cluster\" is known"),
        ));
    }
    Ok(Json(
        state
            .registry
            .nodes(query.get("cluster").map(String::as_str))?,
    ))
}

pub(super) async fn show_node(
    State(state): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
) -> Result<Json<muster_proto::NodeDetail>, ApiError> {
    Ok(Json(state.registry.node(&cluster, &name)?))
}

pub(super) async fn node_events(
    State(state): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<muster_proto::EventPage>, ApiError> {
    let mut after = 0i64;
    let mut limit = 100usize;
    for (key, value) in &query {
        let bad = |why: &str| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                muster_proto::ValidationError::new(key, value, why).to_string(),
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

pub(super) async fn remove_node(
    State(state): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
) -> Result<Json<muster_proto::NodeView>, ApiError> {
    Ok(Json(state.registry.remove_node(&cluster, &name).await?))
}

pub(super) async fn drain_node(
    State(state): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
) -> Result<Json<muster_proto::NodeView>, ApiError> {
    Ok(Json(state.registry.drain_node(&cluster, &name).await?))
}

pub(super) async fn undrain_node(
    State(state): State<AppState>,
    Path((cluster, name)): Path<(String, String)>,
) -> Result<Json<muster_proto::NodeView>, ApiError> {
    Ok(Json(state.registry.undrain_node(&cluster, &name).await?))
}

pub(super) async fn dns_status(
    State(state): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(match state.dns_status.get() {
        Some(status) => serde_json::json!(status),
        None => serde_json::json!({ "provider": "embedded", "pending_changes": 0 }),
    }))
}

/// `POST /v1/backup` (admin): an online, consistent copy of the store, as
/// a SQLite file. It is made in the data dir (the store's own filesystem,
/// readable by the coordinator only) and removed once read.
pub(super) async fn backup(
    State(state): State<AppState>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let path = state
        .data_dir
        .join(format!(".backup-{:016x}.db", rand::random::<u64>()));
    let registry = state.registry.clone();
    let target = path.clone();
    let made = tokio::task::spawn_blocking(move || registry.backup_store(&target))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the backup stopped: {e}")));
    let read = match made {
        Ok(Ok(())) => tokio::fs::read(&path)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading the backup: {e}"))),
        Ok(Err(error)) => Err(ApiError::from(error)),
        Err(error) => Err(error),
    };
    let _ = tokio::fs::remove_file(&path).await;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/vnd.sqlite3")],
        read?,
    )
        .into_response())
}
