//! The admin subcommands: a client of a running coordinator's API, Nomad and
//! Vault style. `MUSTER_ADDR` (default `https://127.0.0.1:7443`),
//! `MUSTER_TOKEN` and `MUSTER_CACERT` say where and how; on the coordinator's
//! own host the token and CA default to the files in `/var/lib/muster`.
//!
//! Output is a readable table by default and the API's JSON with `--json`.

use std::fmt::Write as _;
use std::path::PathBuf;

use std::time::Duration;

use muster_proto::launch::{LaunchReport, ScaleClusterRequest, ScaleClusterResponse};
use muster_proto::{
    paths, ByonTokenResponse, ClusterState, ClusterView, CreateClusterRequest,
    CreateClusterResponse, ErrorBody, NodeDetail, NodeState, NodeView, UserDataResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::DEFAULT_DATA_DIR;
use crate::pki::{ADMIN_TOKEN_FILE, CA_FILE};

/// Default API address of the admin client.
pub const DEFAULT_ADDR: &str = "https://127.0.0.1:7443";

/// Errors of the admin client.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A setting is missing or bad.
    #[error("{name}={value:?} is not valid: {reason}")]
    Setting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
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
    CliError::Setting {
        name,
        value: value.into(),
        reason: reason.to_string(),
    }
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
        if muster_proto::token::TokenKind::of(&token) != Some(muster_proto::token::TokenKind::Admin)
        {
            return Err(setting(
                "MUSTER_TOKEN",
                "<hidden>",
                "is not an admin token (madmin_ followed by 64 hex digits)",
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
            if let Ok(value) = serde_json::from_slice(&bytes) {
                return Ok(value);
            }
        } else if let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes) {
            return Err(CliError::Api {
                method,
                url,
                status,
                body,
            });
        }
        Err(CliError::Unexpected {
            method,
            url,
            status,
            text: String::from_utf8_lossy(&bytes).chars().take(512).collect(),
        })
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

    /// `POST /v1/admin/rotate-token`.
    pub async fn rotate_admin_token(&self) -> Result<muster_proto::AdminTokenResponse, CliError> {
        self.send("POST", paths::ADMIN_ROTATE_TOKEN, None::<&()>)
            .await
    }

    /// `POST /v1/clusters/{name}/byon-token`.
    pub async fn byon_token(&self, name: &str) -> Result<ByonTokenResponse, CliError> {
        check_cluster_arg(name)?;
        self.send("POST", &paths::cluster_byon_token(name), None::<&()>)
            .await
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
            bar.set_length(nodes.len() as u64);
            bar.set_position((deployed + failed) as u64);
            bar.set_message(format!("{deployed} deployed, {failed} failed"));
            if nodes
                .iter()
                .all(|n| matches!(n.state, NodeState::Deployed | NodeState::Failed))
            {
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

/// Lays out rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{:<width$}  ", cell, width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn ip(ip: Option<std::net::Ipv4Addr>) -> String {
    ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string())
}

/// `cluster ls` as a table.
pub fn clusters_table(clusters: &[ClusterView]) -> String {
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.state.to_string(),
                c.deployed.to_string(),
                c.nodes.to_string(),
                c.launch
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |l| l.count.to_string()),
                c.dns_name.clone(),
                c.created_at.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "STATE", "DEPLOYED", "NODES", "TARGET", "DNS", "CREATED",
        ],
        &rows,
    )
}

/// `cluster show` as text: the table line, then how nodes are launched.
pub fn cluster_text(cluster: &ClusterView) -> String {
    let mut out = clusters_table(std::slice::from_ref(cluster));
    let Some(l) = &cluster.launch else {
        out.push_str("\nnodes join on their own (no launch)\n");
        return out;
    };
    let none = || "-".to_owned();
    let _ = writeln!(out);
    for (key, value) in [
        ("region", l.region.clone()),
        ("instance type", l.instance_type.clone()),
        ("target count", l.count.to_string()),
        ("data volume", format!("{} GiB gp2", l.disk_gb)),
        ("image", l.ami.clone()),
        ("vpc", l.vpc_id.clone()),
        ("subnets", l.subnets.join(", ")),
        ("security groups", l.security_groups.join(", ")),
        (
            "instance profile",
            l.instance_profile.clone().unwrap_or_else(none),
        ),
        ("key pair", l.key_name.clone()),
        ("private key", l.key_path.clone().unwrap_or_else(none)),
    ] {
        let _ = writeln!(out, "{key:<17} {value}");
    }
    for problem in &l.excluded_subnets {
        let _ = writeln!(
            out,
            "{:<17} {}: {}",
            "left out", problem.subnet, problem.reason
        );
    }
    out
}

/// What a launch did, in words.
pub fn launch_text(report: &LaunchReport) -> String {
    let mut out = format!("launched {} instances", report.launched.len());
    if report.short > 0 {
        let _ = write!(out, "; {} could not be launched anywhere", report.short);
    }
    out.push('\n');
    for refused in &report.refused {
        let _ = writeln!(out, "  {} refused: {}", refused.subnet, refused.reason);
    }
    out
}

/// `node ls` as a table.
pub fn nodes_table(nodes: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.cluster.clone(),
                n.name.clone(),
                n.state.to_string(),
                ip(n.public_ipv4),
                ip(n.private_ipv4),
                n.availability_zone.clone(),
                n.dns_name.clone(),
            ]
        })
        .collect();
    table(
        &[
            "CLUSTER", "NAME", "STATE", "PUBLIC", "PRIVATE", "ZONE", "DNS",
        ],
        &rows,
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `node show` as text.
pub fn node_text(detail: &NodeDetail) -> String {
    let n = &detail.node;
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<14}{v}");
    };
    field("Name:", n.name.clone());
    field("Cluster:", n.cluster.clone());
    field("State:", n.state.to_string());
    field("Instance:", n.instance_id.clone());
    field("Zone:", format!("{} ({})", n.availability_zone, n.region));
    field("Public IPv4:", ip(n.public_ipv4));
    field("Private IPv4:", ip(n.private_ipv4));
    field("DNS:", n.dns_name.clone());
    field("Internal DNS:", n.internal_dns_name.clone());
    field("Created:", n.created_at.clone());
    field("Updated:", n.updated_at.clone());
    field(
        "Last seen:",
        n.last_seen_at.clone().unwrap_or_else(|| "-".into()),
    );
    if let Some(f) = &n.facts {
        field("OS:", format!("{} (kernel {})", f.os, f.kernel));
        field("CPUs:", f.cpus.to_string());
        field(
            "Load:",
            format!(
                "{:.2} {:.2} {:.2}",
                f.load_average[0], f.load_average[1], f.load_average[2]
            ),
        );
        field(
            "Memory:",
            format!(
                "{} used of {}",
                bytes(f.memory_used_bytes),
                bytes(f.memory_total_bytes)
            ),
        );
        for d in &f.disks {
            field(
                "Disk:",
                format!(
                    "{} {} used of {}",
                    d.mount,
                    bytes(d.used_bytes),
                    bytes(d.total_bytes)
                ),
            );
        }
        field(
            "Uptime:",
            humantime::format_duration(std::time::Duration::from_secs(f.uptime_secs)).to_string(),
        );
    }
    if detail.events_total > detail.events.len() as u64 {
        let _ = writeln!(
            out,
            "\nEvents (the latest {} of {}; the events API pages through all):",
            detail.events.len(),
            detail.events_total
        );
    } else {
        out.push_str("\nEvents:\n");
    }
    let rows: Vec<Vec<String>> = detail
        .events
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.from.map_or_else(|| "-".into(), |s| s.to_string()),
                e.to.to_string(),
                e.source.to_string(),
                e.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["AT", "FROM", "TO", "SOURCE", "REASON"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns line up under their headers.
    #[test]
    fn table_pads_columns() {
        let text = table(
            &["A", "LONG"],
            &[
                vec!["xxxx".into(), "y".into()],
                vec!["z".into(), "w".into()],
            ],
        );
        assert_eq!(text, "A     LONG\nxxxx  y\nz     w\n");
    }

    /// Sizes read as people write them.
    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(512), "512.0 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
