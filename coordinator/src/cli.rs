//! The admin subcommands: a client of a running coordinator's API, Nomad and
//! Vault style. `MUSTER_ADDR` (default `https://127.0.0.1:7443`),
//! `MUSTER_TOKEN` and `MUSTER_CACERT` say where and how; on the coordinator's
//! own host the token and CA default to the files in `/var/lib/muster`.
//!
//! Output is a readable table by default and the API's JSON with `--json`.
//!
//! # Layout
//! This file is the client; [`commands`] are the admin commands built on
//! it, and [`output`] the tables they print.

use std::path::PathBuf;

use std::time::Duration;

use muster_proto::launch::{ScaleClusterRequest, ScaleClusterResponse};
use muster_proto::{
    paths, ByonTokenResponse, ClusterState, ClusterView, CreateClusterRequest,
    CreateClusterResponse, ErrorBody, NodeDetail, NodeState, NodeView, UserDataResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use muster_proto::settings::Invalid;

use crate::config::DEFAULT_DATA_DIR;
use crate::pki::{ADMIN_TOKEN_FILE, CA_FILE};

pub mod commands;
pub mod output;

/// Default API address of the admin client.
pub const DEFAULT_ADDR: &str = "https://127.0.0.1:7443";

/// Errors of the admin client.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A setting or an argument is missing or bad.
    #[error(transparent)]
    Setting(#[from] Invalid),
    /// The request did not reach the coordinator.
    #[error("{method} {url}: {source}")]
    Request {
        /// Method.
        method: &'static str,
        /// URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The coordinator refused.
    #[error("{method} {url}: {status}: {body}")]
    Api {
        /// Method.
        method: &'static str,
        /// URL.
        url: String,
        /// Status.
        status: reqwest::StatusCode,
        /// The error body.
        body: ErrorBody,
    },
    /// Something waited for did not happen in time.
    #[error("gave up waiting for {what} after {}", humantime::format_duration(*after))]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The answer was not what the API promises.
    #[error("{method} {url}: unexpected answer ({status}): {text}")]
    Unexpected {
        /// Method.
        method: &'static str,
        /// URL.
        url: String,
        /// Status.
        status: reqwest::StatusCode,
        /// The body, cut short.
        text: String,
    },
}

/// A client of the admin API.
#[derive(Debug)]
pub struct AdminClient {
    http: reqwest::Client,
    addr: String,
    token: String,
}

fn setting(name: &'static str, value: impl Into<String>, reason: impl ToString) -> CliError {
    CliError::Setting(Invalid::whole(name, value, reason))
}

impl AdminClient {
    /// Builds the client from `MUSTER_ADDR`, `MUSTER_TOKEN`, `MUSTER_CACERT`.
    pub fn from_env() -> Result<AdminClient, CliError> {
        let addr = std::env::var("MUSTER_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_owned());
        let addr = addr.trim_end_matches('/').to_owned();
        if !addr.starts_with("https://") {
            return Err(setting("MUSTER_ADDR", addr, "must start with https://"));
        }
        let token = match std::env::var("MUSTER_TOKEN") {
            Ok(token) => token.trim().to_owned(),
            Err(_) => {
                let path = PathBuf::from(DEFAULT_DATA_DIR).join(ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| {
                        setting(
                            "MUSTER_TOKEN",
                            "",
                            format!("is not set, and {} cannot be read: {e}", path.display()),
                        )
                    })?
            }
        };
        use muster_proto::token::TokenKind;
        if !matches!(
            TokenKind::of(&token),
            Some(TokenKind::Admin | TokenKind::Viewer)
        ) {
            return Err(setting(
                "MUSTER_TOKEN",
                "<hidden>",
                "is neither an admin token (madmin_ followed by 64 hex digits) nor a viewer token (mview_…)",
            ));
        }
        let ca_path = std::env::var_os("MUSTER_CACERT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR).join(CA_FILE));
        let ca_pem = std::fs::read(&ca_path)
            .map_err(|e| setting("MUSTER_CACERT", ca_path.display().to_string(), e))?;
        let ca = reqwest::Certificate::from_pem(&ca_pem)
            .map_err(|e| setting("MUSTER_CACERT", ca_path.display().to_string(), e))?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| setting("MUSTER_CACERT", ca_path.display().to_string(), e))?;
        Ok(AdminClient { http, addr, token })
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        let (url, status, bytes) = self.exchange(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|_| CliError::Unexpected {
            method,
            url,
            status,
            text: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
        })
    }

    /// Sends one request; returns the URL, the status and the body of a
    /// success, or the error the coordinator answered.
    async fn exchange(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<(String, reqwest::StatusCode, Vec<u8>), CliError> {
        let url = format!("{}{}", self.addr, path);
        let mut request = match method {
            "POST" => self.http.post(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.get(&url),
        }
        .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| CliError::Request {
            method,
            url: url.clone(),
            source,
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| CliError::Request {
            method,
            url: url.clone(),
            source,
        })?;
        if status.is_success() {
            return Ok((url, status, bytes.to_vec()));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(CliError::Api {
                method,
                url,
                status,
                body,
            }),
            Err(_) => Err(CliError::Unexpected {
                method,
                url,
                status,
                text: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
            }),
        }
    }

    /// `POST /v1/backup`: an online, consistent copy of the store, as a
    /// SQLite file.
    pub async fn backup(&self) -> Result<Vec<u8>, CliError> {
        let (_, _, bytes) = self.exchange("POST", paths::BACKUP, None::<&()>).await?;
        Ok(bytes)
    }

    /// `POST /v1/clusters`.
    pub async fn create_cluster(
        &self,
        req: &CreateClusterRequest,
    ) -> Result<CreateClusterResponse, CliError> {
        req.validate().map_err(|e| {
            setting(
                "argument",
                e.value.clone(),
                format!("{}: {}", e.field, e.reason),
            )
        })?;
        self.send("POST", paths::CLUSTERS, Some(req)).await
    }

    /// `POST /v1/clusters/{name}/rotate-token`.
    pub async fn rotate_token(
        &self,
        name: &str,
        expires_in: Option<std::time::Duration>,
    ) -> Result<muster_proto::RotateTokenResponse, CliError> {
        check_cluster_arg(name)?;
        let req = muster_proto::RotateTokenRequest {
            expires_in_secs: expires_in.map(|d| d.as_secs()),
        };
        req.validate()
            .map_err(|e| setting("--expires-in", &e.value, e.reason))?;
        self.send("POST", &paths::cluster_rotate_token(name), Some(&req))
            .await
    }

    /// `POST /v1/clusters/{name}/extend`.
    pub async fn extend_cluster(
        &self,
        name: &str,
        by: std::time::Duration,
    ) -> Result<muster_proto::ClusterView, CliError> {
        check_cluster_arg(name)?;
        let req = muster_proto::ExtendClusterRequest {
            by_secs: by.as_secs(),
        };
        req.validate()
            .map_err(|e| setting("BY", &e.value, e.reason))?;
        self.send("POST", &paths::cluster_extend(name), Some(&req))
            .await
    }

    /// `POST /v1/admin/rotate-token`.
    pub async fn rotate_admin_token(&self) -> Result<muster_proto::AdminTokenResponse, CliError> {
        self.send("POST", paths::ADMIN_ROTATE_TOKEN, None::<&()>)
            .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<muster_proto::status::CoordinatorStatus, CliError> {
        self.send("GET", paths::STATUS, None::<&()>).await
    }

    /// `GET /v1/dns/status`.
    pub async fn dns_status(&self) -> Result<serde_json::Value, CliError> {
        self.send("GET", paths::DNS_STATUS, None::<&()>).await
    }

    /// `POST /v1/admin/viewer-token`.
    pub async fn viewer_token(
        &self,
    ) -> Result<muster_proto::status::ViewerTokenResponse, CliError> {
        self.send("POST", paths::ADMIN_VIEWER_TOKEN, None::<&()>)
            .await
    }

    /// `POST /v1/clusters/{name}/byon-token`.
    pub async fn byon_token(
        &self,
        name: &str,
        max_nodes: Option<u32>,
    ) -> Result<ByonTokenResponse, CliError> {
        check_cluster_arg(name)?;
        let req = muster_proto::ByonTokenRequest { max_nodes };
        req.validate()
            .map_err(|e| setting("--max-nodes", &e.value, e.reason))?;
        self.send("POST", &paths::cluster_byon_token(name), Some(&req))
            .await
    }

    /// `GET /v1/clusters/{name}/tokens`.
    pub async fn tokens(&self, name: &str) -> Result<Vec<muster_proto::TokenView>, CliError> {
        check_cluster_arg(name)?;
        self.send("GET", &paths::cluster_tokens(name), None::<&()>)
            .await
    }

    /// `DELETE /v1/clusters/{name}/tokens/{id}`.
    pub async fn revoke_token(
        &self,
        name: &str,
        id: &str,
    ) -> Result<muster_proto::TokenView, CliError> {
        check_cluster_arg(name)?;
        muster_proto::validate::dns_label("id", id)
            .map_err(|e| setting("argument", &e.value, format!("ID {}", e.reason)))?;
        self.send("DELETE", &paths::cluster_token(name, id), None::<&()>)
            .await
    }

    /// `DELETE /v1/clusters/{name}/bans/{machine}`: the machine may join
    /// again.
    pub async fn admit_machine(&self, name: &str, machine: &str) -> Result<(), CliError> {
        check_cluster_arg(name)?;
        muster_proto::validate::dns_label("machine", machine)
            .map_err(|e| setting("argument", &e.value, format!("MACHINE {}", e.reason)))?;
        self.exchange("DELETE", &paths::cluster_ban(name, machine), None::<&()>)
            .await?;
        Ok(())
    }

    /// `POST /v1/clusters/{name}/userdata`.
    pub async fn user_data(
        &self,
        name: &str,
        expires_in: Option<std::time::Duration>,
    ) -> Result<UserDataResponse, CliError> {
        check_cluster_arg(name)?;
        let req = muster_proto::UserDataRequest {
            expires_in_secs: expires_in.map(|d| d.as_secs()),
        };
        req.validate()
            .map_err(|e| setting("--expires-in", &e.value, e.reason))?;
        self.send("POST", &paths::cluster_userdata(name), Some(&req))
            .await
    }

    /// `POST /v1/clusters/{name}/scale`.
    pub async fn scale_cluster(
        &self,
        name: &str,
        count: u32,
    ) -> Result<ScaleClusterResponse, CliError> {
        check_cluster_arg(name)?;
        let req = ScaleClusterRequest { count };
        req.validate()
            .map_err(|e| setting("argument", e.value.clone(), format!("COUNT {}", e.reason)))?;
        self.send("POST", &paths::cluster_scale(name), Some(&req))
            .await
    }

    /// `DELETE /v1/clusters/{name}`.
    pub async fn remove_cluster(&self, name: &str) -> Result<ClusterView, CliError> {
        check_cluster_arg(name)?;
        self.send("DELETE", &paths::cluster(name), None::<&()>)
            .await
    }

    /// Polls until every launched node of `cluster` that is not on its way
    /// out is `deployed` or `failed`, drawing a progress bar on stderr.
    /// Returns the nodes as they ended.
    pub async fn wait_deployed(
        &self,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Vec<NodeView>, CliError> {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} settled {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("#>-"),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let nodes: Vec<NodeView> = self
                .nodes(Some(cluster))
                .await?
                .into_iter()
                .filter(|n| !matches!(n.state, NodeState::Terminating | NodeState::Terminated))
                .collect();
            let count = |state: NodeState| nodes.iter().filter(|n| n.state == state).count();
            let (deployed, failed) = (count(NodeState::Deployed), count(NodeState::Failed));
            // A node whose agent is heard has settled, healthy or not.
            let settled = |n: &NodeView| n.state.is_heard() || n.state == NodeState::Failed;
            let others = nodes.iter().filter(|n| settled(n)).count() - deployed - failed;
            bar.set_length(nodes.len() as u64);
            bar.set_position((deployed + failed + others) as u64);
            bar.set_message(format!(
                "{deployed} deployed, {others} unhealthy or draining, {failed} failed"
            ));
            if nodes.iter().all(settled) {
                bar.finish();
                return Ok(nodes);
            }
            if tokio::time::Instant::now() >= deadline {
                bar.abandon();
                return Err(CliError::Timeout {
                    what: format!("nodes of cluster {cluster} to settle"),
                    after: timeout,
                });
            }
            bar.tick();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Polls until cluster `name` is `removed`.
    pub async fn wait_removed(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<ClusterView, CliError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let spinner = indicatif::ProgressBar::new_spinner();
        loop {
            let cluster = self.cluster(name).await?;
            let nodes = self.nodes(Some(name)).await?;
            let left = nodes
                .iter()
                .filter(|n| n.state != NodeState::Terminated)
                .count();
            spinner.set_message(format!(
                "{}: {left} instances not terminated yet",
                cluster.state
            ));
            if cluster.state == ClusterState::Removed {
                spinner.finish_and_clear();
                return Ok(cluster);
            }
            if tokio::time::Instant::now() >= deadline {
                spinner.abandon();
                return Err(CliError::Timeout {
                    what: format!("cluster {name} to be removed"),
                    after: timeout,
                });
            }
            spinner.tick();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `GET /v1/clusters`.
    pub async fn clusters(&self) -> Result<Vec<ClusterView>, CliError> {
        self.send("GET", paths::CLUSTERS, None::<&()>).await
    }

    /// `GET /v1/clusters/{name}`.
    pub async fn cluster(&self, name: &str) -> Result<ClusterView, CliError> {
        self.send("GET", &paths::cluster(name), None::<&()>).await
    }

    /// `GET /v1/nodes[?cluster=]`.
    pub async fn nodes(&self, cluster: Option<&str>) -> Result<Vec<NodeView>, CliError> {
        let path = match cluster {
            Some(c) => format!("{}?cluster={}", paths::NODES, c),
            None => paths::NODES.to_owned(),
        };
        if let Some(c) = cluster {
            muster_proto::validate::dns_label("cluster", c)
                .map_err(|e| setting("--cluster", c, e.reason))?;
        }
        self.send("GET", &path, None::<&()>).await
    }

    /// `DELETE /v1/nodes/{cluster}/{name}`.
    pub async fn remove_node(&self, cluster: &str, name: &str) -> Result<NodeView, CliError> {
        check_node_args(cluster, name)?;
        self.send("DELETE", &paths::node(cluster, name), None::<&()>)
            .await
    }

    /// `POST /v1/nodes/{cluster}/{name}/drain`, or `/undrain` when
    /// `drained` is false.
    pub async fn drain_node(
        &self,
        cluster: &str,
        name: &str,
        drained: bool,
    ) -> Result<NodeView, CliError> {
        check_node_args(cluster, name)?;
        let what = if drained { "drain" } else { "undrain" };
        let path = format!("{}/{what}", paths::node(cluster, name));
        self.send("POST", &path, None::<&()>).await
    }

    /// `GET /v1/nodes/{cluster}/{name}`.
    pub async fn node(&self, cluster: &str, name: &str) -> Result<NodeDetail, CliError> {
        check_node_args(cluster, name)?;
        self.send("GET", &paths::node(cluster, name), None::<&()>)
            .await
    }
}

fn check_cluster_arg(name: &str) -> Result<(), CliError> {
    muster_proto::validate::dns_label("CLUSTER", name)
        .map_err(|e| setting("argument", name, format!("CLUSTER {}", e.reason)))
}

fn check_node_args(cluster: &str, name: &str) -> Result<(), CliError> {
    for (field, value) in [("CLUSTER", cluster), ("NODE", name)] {
        muster_proto::validate::dns_label(field, value)
            .map_err(|e| setting("argument", value, format!("{field} {}", e.reason)))?;
    }
    Ok(())
}
