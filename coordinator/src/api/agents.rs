//! The agent endpoints: register, heartbeat, and the agent download that
//! booting nodes fetch.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::guards::{bearer, client_addr, Body};
use muster_proto::ErrorCode;

use super::{ApiError, AppState};

pub(super) async fn register(
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

pub(super) async fn heartbeat(
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

pub(super) async fn agent_download(
    State(state): State<AppState>,
    Path((os, arch, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let Some(dist) = &state.agent else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "this coordinator serves no agent (--agent-binary)",
        ));
    };
    let agent_file = dist
        .file(&os, &arch, &file)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, dist.describe()))?;
    let unavailable = |e: std::io::Error| {
        tracing::error!(path = %agent_file.path().display(), error = %e, "cannot serve the agent");
        ApiError::new(
            ErrorCode::AgentUnavailable,
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
