//! The HTTPS API (axum): the agent endpoints, the admin endpoints, health and
//! Prometheus metrics.
//!
//! - Agent endpoints authenticate with the bearer secret in the body's stead
//!   (join token or node credential); the registry checks it.
//! - Admin endpoints need `Authorization: Bearer <admin token>`; the
//!   viewer token, or a console session's cookie, may read them (GET) and
//!   nothing more (403 `forbidden`). On a shared store a standby passes
//!   changes on to the leader ([`forward`]).
//! - The console ([`console`]) lives under `/ui/`.
//! - The agent download (`/v1/agent/linux/{arch}/muster-agent`, `…/.deb`)
//!   needs nothing: see [`crate::launcher::agent_dist`] for why. It is streamed from
//!   the file, never held in memory.
//! - Every error is JSON `{"error": {"code", "message"}}`. Bad input is a 4xx;
//!   a 5xx means our own fault or EC2 being unavailable.
//! - Bodies are capped at [`muster_proto::MAX_BODY_BYTES`] and must arrive
//!   within [`BODY_TIMEOUT`]; unknown JSON fields are refused. Connections
//!   are bounded beneath the router ([`connections`]): caps per source and
//!   in total, and timeouts for the TLS handshake, the headers and idling.
//! - The agent endpoints are rate limited per source address
//!   (`--agent-rate-limit` requests per second, bursts of twice that);
//!   beyond it the answer is 429 `rate_limited` with `Retry-After`.
//! - The source address is the TCP peer, or, when the peer is one of
//!   `--trusted-proxies`, the last address in `X-Forwarded-For` that is not
//!   a trusted proxy. `--verify-source` checks it against the node's
//!   addresses.
//!
//! # Layout
//! - [`guards`]: the admin and viewer tokens and console sessions, the
//!   agent rate limit, the client address, bounded JSON bodies.
//! - [`console`]: the web console's pages, sign-in and sessions.
//! - [`fleet`]: the fleet's last hour, sampled in memory for the console.
//! - [`errors`]: the JSON error answers and their statuses.
//! - [`agents`] and [`admin`]: the handlers.
//! - [`forward`]: a standby's changes, passed on to the leader.
//! - [`metrics`]: the Prometheus text at `/metrics`.
//! - [`connections`]: the connection guards under the router.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use muster_proto::{paths, ErrorCode};

use crate::config::Trust;
use crate::registry::Registry;

mod admin;
mod agents;
pub mod connections;
pub mod console;
mod errors;
pub mod fleet;
pub mod forward;
mod guards;
mod metrics;

pub use errors::ApiError;
pub use guards::{client_addr, source_limiter, SourceLimiter};

/// How long a request body may take to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

use admin::{
    admit_machine, backup, byon_token, create_cluster, dns_status, drain_node, extend_cluster,
    list_clusters, list_nodes, list_tokens, node_events, remove_cluster, remove_node, revoke_token,
    rotate_admin_token, rotate_token, scale_cluster, show_cluster, show_node, undrain_node,
    user_data,
};
use admin::{fleet_history, node_names, status, viewer_token};
use agents::{agent_download, heartbeat, register};
use guards::{limit_agents, remember_served};
use metrics::metrics;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The admin and viewer tokens, and where they are kept.
    pub credentials: Arc<crate::credentials::Credentials>,
    /// On a shared store, the client a standby passes admin changes on to
    /// the leader with ([`forward`]).
    pub leader_client: Option<reqwest::Client>,
    /// The data dir, where backups are made.
    pub data_dir: Arc<std::path::PathBuf>,
    /// Proxies to believe, and whether sources are checked.
    pub trust: Arc<Trust>,
    /// The per-source limit on agent requests, if there is one.
    pub limiter: Option<Arc<SourceLimiter>>,
    /// The agent served to booting nodes, if any.
    pub agent: Option<Arc<crate::launcher::agent_dist::AgentDist>>,
    /// How far the external DNS provider has got.
    pub dns_status: Arc<crate::dns::status::StatusBoard>,
    /// The open connections, and the sources known to be agents or admins.
    pub connections: Arc<connections::Connections>,
    /// Who is signed in to the console.
    pub sessions: Arc<console::Sessions>,
    /// The fleet's last hour.
    pub fleet: Arc<fleet::FleetRecorder>,
    /// When the coordinator started.
    pub started: std::time::SystemTime,
    /// When each certificate the API serves with expires (`ca`, `server`),
    /// in Unix seconds.
    pub certificates: Arc<Vec<(&'static str, i64)>>,
    /// Who leads, and the lease on a shared store.
    pub leadership: Arc<crate::leader::Leadership>,
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
    let admin = Router::new()
        .route(paths::CLUSTERS, get(list_clusters).post(create_cluster))
        .route(paths::CLUSTER, get(show_cluster).delete(remove_cluster))
        .route(paths::CLUSTER_SCALE, post(scale_cluster))
        .route(paths::CLUSTER_BYON_TOKEN, post(byon_token))
        .route(paths::CLUSTER_ROTATE_TOKEN, post(rotate_token))
        .route(paths::CLUSTER_EXTEND, post(extend_cluster))
        .route(paths::CLUSTER_TOKENS, get(list_tokens))
        .route(paths::CLUSTER_TOKEN, axum::routing::delete(revoke_token))
        .route(paths::CLUSTER_BAN, axum::routing::delete(admit_machine))
        .route(paths::ADMIN_ROTATE_TOKEN, post(rotate_admin_token))
        .route(paths::ADMIN_VIEWER_TOKEN, post(viewer_token))
        .route(paths::STATUS, get(status))
        .route(paths::FLEET_HISTORY, get(fleet_history))
        .route(paths::NODE_DNS, get(node_names))
        .route(paths::CLUSTER_USERDATA, post(user_data))
        .route(paths::NODES, get(list_nodes))
        .route(paths::NODE, get(show_node).delete(remove_node))
        .route(paths::NODE_EVENTS, get(node_events))
        .route(paths::NODE_DRAIN, post(drain_node))
        .route(paths::NODE_UNDRAIN, post(undrain_node))
        .route(paths::DNS_STATUS, get(dns_status))
        .route(paths::BACKUP, post(backup))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guards::admin_only,
        ));
    Router::new()
        .merge(agent)
        .merge(admin)
        .merge(console::router(state.clone()))
        .route(paths::AGENT_DOWNLOAD, get(agent_download))
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::METRICS, get(metrics))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such API path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this path does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(muster_proto::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            remember_served,
        ))
        .with_state(state)
}

/// `/healthz`: 200 while the API serves. A line says why when EC2 is not
/// trusted (nothing is swept, launched or removed meanwhile).
///
/// 503 on a standby whose nodes heard could not reach the store for a
/// publishing period or more: the leader would take its agents' nodes for
/// silent, so a load balancer should send them to another coordinator.
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, String) {
    let registry = &state.registry;
    let cut_off = registry
        .heard_unpublished_for()
        .filter(|failing| *failing >= registry.heard_publish_interval());
    if let Some(failing) = cut_off {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "unhealthy\nstore: the nodes heard here have not reached it for {}s; the leader \
                 would take them for silent: send agents to another coordinator\n",
                failing.as_secs()
            ),
        );
    }
    let body = match registry.ec2_account().untrusted_because() {
        None => "ok\n".to_owned(),
        Some(why) => format!("ok\nec2: not trusted: {why}\n"),
    };
    (axum::http::StatusCode::OK, body)
}
