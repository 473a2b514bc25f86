//! `muster-agent status`: asks the running agent over its socket.
//!
//! Prints a readable table, or with `--json` the agent's document as is
//! ([`AgentStatus`]). When no agent answers, says so and shows what the
//! state dir remembers (with `--json`: `{"running": false, …}`).
//!
//! Exit codes: [`EXIT_HEALTHY`] (0), [`EXIT_DEGRADED`] (1),
//! [`EXIT_NOT_RUNNING`] (3), [`EXIT_UNKNOWN`] (4: the socket is there but
//! could not be asked, e.g. permission denied).

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::settings::{FileSettings, DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use crate::state;
use crate::status::AgentStatus;

/// Deployed, and the last exchange with the coordinator went fine.
pub const EXIT_HEALTHY: u8 = 0;
/// Running, but not healthy: starting, registering, refused, or the
/// coordinator unreachable.
pub const EXIT_DEGRADED: u8 = 1;
/// No agent answers on the socket.
pub const EXIT_NOT_RUNNING: u8 = 3;
/// The agent could not be asked.
pub const EXIT_UNKNOWN: u8 = 4;
/// A flag or the settings file is not usable.
pub const EXIT_USAGE: u8 = 64;

/// How long the agent gets to answer (its DNS check takes up to 5 s).
const ASK_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read.
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// The flags of `muster-agent status`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StatusArgs {
    /// The agent's status socket.
    /// [default: `socket` in the settings file, else /run/muster-agent/agent.sock]
    #[arg(long, env = "MUSTER_AGENT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The agent's state dir, read when the agent is not running.
    /// [default: `state_dir` in the settings file, else /var/lib/muster-agent]
    #[arg(long, env = "MUSTER_AGENT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The agent's settings file, for the two paths above.
    /// [default: /etc/muster/agent.toml, if readable]
    #[arg(long, env = "MUSTER_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Failures asking the agent.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nobody could be reached on the socket.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The answer could not be read.
    #[error("cannot read the agent's answer on {path}")]
    Read {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The answer is not a status document.
    #[error("cannot understand the agent's answer on {path}")]
    Decode {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl QueryError {
    /// Whether the failure means no agent runs: no socket, or nobody
    /// listening on it.
    pub fn means_not_running(&self) -> bool {
        matches!(
            self,
            QueryError::Connect { source, .. }
                if matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused)
        )
    }
}

/// Asks the agent listening on `socket` for its document.
pub fn ask(socket: &Path) -> Result<AgentStatus, QueryError> {
    let stream = UnixStream::connect(socket).map_err(|source| QueryError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let read_error = |source| QueryError::Read {
        path: socket.to_path_buf(),
        source,
    };
    stream
        .set_read_timeout(Some(ASK_TIMEOUT))
        .map_err(read_error)?;
    let mut bytes = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    serde_json::from_slice(&bytes).map_err(|source| QueryError::Decode {
        path: socket.to_path_buf(),
        source,
    })
}

/// What is printed when no agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotRunning {
    /// Always false.
    pub running: bool,
    /// The socket nobody answers on.
    pub socket: String,
    /// The state dir read.
    pub state_dir: String,
    /// The node's name, as remembered.
    pub node: Option<String>,
    /// The cluster, as remembered.
    pub cluster: Option<String>,
    /// The node id (EC2 instance id, or `m-…` for a bring-your-own node),
    /// as remembered.
    pub instance_id: Option<String>,
    /// Whether the remembered node is a bring-your-own node.
    pub byon: bool,
    /// The node's public DNS name, as remembered.
    pub dns_name: Option<String>,
    /// The node's internal DNS name, as remembered.
    pub internal_dns_name: Option<String>,
    /// The coordinator, as remembered.
    pub coordinator_url: Option<String>,
    /// Why the state dir could not be read, if it could not.
    pub state_error: Option<String>,
}

impl NotRunning {
    /// Reads what `state_dir` remembers (never the credential).
    pub fn remembered(socket: &Path, state_dir: &Path) -> Self {
        let mut out = NotRunning {
            running: false,
            socket: socket.display().to_string(),
            state_dir: state_dir.display().to_string(),
            node: None,
            cluster: None,
            instance_id: None,
            byon: false,
            dns_name: None,
            internal_dns_name: None,
            coordinator_url: None,
            state_error: None,
        };
        match state::load(state_dir) {
            Ok(Some(stored)) => {
                out.node = Some(stored.node);
                out.cluster = Some(stored.cluster);
                out.byon = is_byon_id(&stored.instance_id);
                out.instance_id = Some(stored.instance_id);
                out.dns_name = Some(stored.dns_name);
                out.internal_dns_name = Some(stored.internal_dns_name);
                out.coordinator_url = Some(stored.coordinator_url);
            }
            Ok(None) => {}
            Err(e) => out.state_error = Some(crate::error_chain(&e)),
        }
        out
    }
}

/// Whether `node_id` names a bring-your-own node (`m-…`).
fn is_byon_id(node_id: &str) -> bool {
    node_id.starts_with(muster_proto::validate::BYON_ID_PREFIX)
}

/// The row naming the node: `instance id` on EC2; `node id`, marked
/// bring-your-own, for a machine that named itself.
fn id_row(node_id: Option<&str>, byon: bool) -> (&'static str, String) {
    match (node_id, byon) {
        (Some(id), true) => ("node id", format!("{id} (bring-your-own)")),
        (id, _) => ("instance id", or_dash(id)),
    }
}

/// The exit code for a document.
pub fn exit_code(status: &AgentStatus) -> u8 {
    if status.is_healthy() {
        EXIT_HEALTHY
    } else {
        EXIT_DEGRADED
    }
}

/// Runs `muster-agent status`: prints to `out` (errors to `err`) and
/// returns the exit code.
pub fn status_command(args: &StatusArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let file = match args.config.as_deref() {
        Some(path) => match FileSettings::read(Some(path), "--config") {
            Ok((file, _)) => file,
            Err(e) => {
                let _ = writeln!(err, "{e}");
                return EXIT_USAGE;
            }
        },
        // The default file is optional here, and may be unreadable to a
        // user who still may ask the socket.
        None => FileSettings::read(None, "config")
            .map(|(file, _)| file)
            .unwrap_or_default(),
    };
    let socket = args
        .socket
        .clone()
        .or(file.socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let state_dir = args
        .state_dir
        .clone()
        .or(file.state_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));

    let written = match ask(&socket) {
        Ok(status) => {
            let code = exit_code(&status);
            let written = if args.json {
                print_json(out, &status)
            } else {
                out.write_all(render_status(&status).as_bytes())
            };
            written.map(|()| code)
        }
        Err(e) if e.means_not_running() => {
            let remembered = NotRunning::remembered(&socket, &state_dir);
            let written = if args.json {
                print_json(out, &remembered)
            } else {
                out.write_all(render_not_running(&remembered).as_bytes())
            };
            written.map(|()| EXIT_NOT_RUNNING)
        }
        Err(e) => {
            let error = crate::error_chain(&e);
            let _ = writeln!(err, "muster-agent status: {error}");
            let written = if args.json {
                print_json(out, &serde_json::json!({ "running": null, "error": error }))
            } else {
                Ok(())
            };
            written.map(|()| EXIT_UNKNOWN)
        }
    };
    written.unwrap_or_else(|e| {
        let _ = writeln!(err, "muster-agent status: cannot write the answer: {e}");
        EXIT_UNKNOWN
    })
}

fn print_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    text.push('\n');
    out.write_all(text.as_bytes())
}

/// Rows of a two-column table, aligned.
fn table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        let _ = writeln!(out, "  {key:<width$}  {value}");
    }
    out
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// The table for a running agent.
pub fn render_status(status: &AgentStatus) -> String {
    let node = match (&status.node, status.node_state) {
        (Some(node), Some(state)) => format!("{node} ({state})"),
        (Some(node), None) => node.clone(),
        (None, _) => "-".to_owned(),
    };
    let dns = match (status.dns_resolves, &status.dns_name) {
        (_, None) => "not checked: no name yet".to_owned(),
        (Some(true), _) => format!("resolves to {}", join_ips(&status.dns_answer)),
        (Some(false), _) => format!(
            "does not resolve to the node (answer: {})",
            if status.dns_answer.is_empty() {
                "none".to_owned()
            } else {
                join_ips(&status.dns_answer)
            }
        ),
        (None, _) => format!(
            "not checked: {}",
            status.dns_error.as_deref().unwrap_or("unknown")
        ),
    };
    let mut rows = vec![
        ("node", node),
        ("cluster", status.cluster.clone()),
        id_row(status.instance_id.as_deref(), status.byon),
        ("dns name", or_dash(status.dns_name.as_deref())),
        (
            "internal dns name",
            or_dash(status.internal_dns_name.as_deref()),
        ),
        (
            "private ipv4",
            or_dash(status.private_ipv4.map(|a| a.to_string()).as_deref()),
        ),
        (
            "public ipv4",
            or_dash(status.public_ipv4.map(|a| a.to_string()).as_deref()),
        ),
        (
            "ipv6",
            or_dash(status.ipv6.map(|a| a.to_string()).as_deref()),
        ),
        ("coordinator", status.coordinator_url.clone()),
        ("last contact", or_dash(status.last_contact_at.as_deref())),
        ("cut off", cut_off(status)),
        ("last error", or_dash(status.last_error.as_deref())),
        ("dns", dns),
        ("agent version", status.agent_version.clone()),
    ];
    if let Some(why) = &status.leaving {
        rows.push(("leaving", why.clone()));
    }
    for check in &status.checks {
        let standing = if check.passing { "passing" } else { "failing" };
        rows.push((
            "check",
            format!(
                "{} ({}) {standing}: {}",
                check.name,
                check.kind.as_str(),
                check.output.replace('\n', " | ")
            ),
        ));
    }
    for notice in &status.notices {
        let at = notice
            .time
            .as_deref()
            .map(|t| format!(" for {t}"))
            .unwrap_or_default();
        rows.push((
            "ec2 notice",
            format!("{}{at}: {}", notice.kind.as_str(), notice.detail),
        ));
    }
    format!(
        "muster-agent is running: {}\n{}",
        status.state.as_str(),
        table(&rows)
    )
}

/// The text for an agent that does not answer.
pub fn render_not_running(remembered: &NotRunning) -> String {
    let mut out = format!(
        "muster-agent is not running (nothing answers on {})\n",
        remembered.socket
    );
    if let Some(error) = &remembered.state_error {
        let _ = writeln!(
            out,
            "cannot tell what {} remembers: {error}",
            remembered.state_dir
        );
    } else if remembered.instance_id.is_none() {
        let _ = writeln!(out, "{} remembers no node", remembered.state_dir);
    } else {
        let _ = writeln!(out, "{} remembers:", remembered.state_dir);
        out.push_str(&table(&[
            ("node", or_dash(remembered.node.as_deref())),
            ("cluster", or_dash(remembered.cluster.as_deref())),
            id_row(remembered.instance_id.as_deref(), remembered.byon),
            ("dns name", or_dash(remembered.dns_name.as_deref())),
            (
                "internal dns name",
                or_dash(remembered.internal_dns_name.as_deref()),
            ),
            (
                "coordinator",
                or_dash(remembered.coordinator_url.as_deref()),
            ),
        ]));
    }
    out
}

/// Since when and for how long the agent has been cut off from the
/// coordinator, e.g. `since 2025-01-01T00:00:00Z (2m 13s)`, or `-`.
fn cut_off(status: &AgentStatus) -> String {
    match (&status.cut_off_since, status.cut_off_secs) {
        (Some(since), Some(secs)) => format!(
            "since {since} ({})",
            humantime::format_duration(Duration::from_secs(secs))
        ),
        (Some(since), None) => format!("since {since}"),
        (None, _) => "-".to_owned(),
    }
}

fn join_ips(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StoredState;
    use crate::status::Live;
    use muster_proto::NodeState;

    fn args(socket: &Path, state_dir: &Path, json: bool) -> StatusArgs {
        let config = socket.with_file_name("agent.toml");
        std::fs::write(&config, "").unwrap();
        StatusArgs {
            socket: Some(socket.to_path_buf()),
            state_dir: Some(state_dir.to_path_buf()),
            config: Some(config),
            json,
        }
    }

    fn run(args: &StatusArgs) -> (u8, String) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = status_command(args, &mut out, &mut err);
        (code, String::from_utf8(out).unwrap())
    }

    /// With no agent, the command exits 3 and shows what the state dir
    /// remembers, never the credential.
    #[test]
    fn not_running_shows_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let state_dir = dir.path().join("state");
        let credential = format!("mnode_{}", "ab".repeat(32));
        state::save(
            &state_dir,
            &StoredState {
                instance_id: "i-0123456789abcdef0".into(),
                cluster: "web".into(),
                node: "web-1".into(),
                dns_name: "web-1.web.muster.internal".into(),
                internal_dns_name: "web-1.web.internal.muster.internal".into(),
                credential: credential.clone(),
                coordinator_url: "https://127.0.0.1:7443".into(),
            },
        )
        .unwrap();

        let (code, text) = run(&args(&socket, &state_dir, false));
        assert_eq!(code, EXIT_NOT_RUNNING);
        assert!(text.starts_with("muster-agent is not running"), "{text}");
        assert!(
            text.contains("i-0123456789abcdef0") && text.contains("web-1"),
            "{text}"
        );

        let (code, text) = run(&args(&socket, &state_dir, true));
        assert_eq!(code, EXIT_NOT_RUNNING);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["running"], false);
        assert_eq!(json["node"], "web-1");
        assert!(!text.contains(&credential));
    }

    /// A bring-your-own node is shown by its `m-…` id and said to be one,
    /// running or not.
    #[test]
    fn byon_node_is_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let state_dir = dir.path().join("state");
        let id = format!("m-{}", "0123456789abcdef".repeat(2));
        state::save(
            &state_dir,
            &StoredState {
                instance_id: id.clone(),
                cluster: "web".into(),
                node: "build-7".into(),
                dns_name: "build-7.web.muster.internal".into(),
                internal_dns_name: "build-7.web.internal.muster.internal".into(),
                credential: format!("mnode_{}", "ab".repeat(32)),
                coordinator_url: "https://127.0.0.1:7443".into(),
            },
        )
        .unwrap();
        let (code, text) = run(&args(&socket, &state_dir, false));
        assert_eq!(code, EXIT_NOT_RUNNING);
        let row = |text: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with("node id"))
                .map(|l| l.trim_start()["node id".len()..].trim().to_owned())
        };
        assert_eq!(row(&text), Some(format!("{id} (bring-your-own)")), "{text}");
        let (_, text) = run(&args(&socket, &state_dir, true));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["byon"], true);
        assert_eq!(json["instance_id"], id.as_str());

        let live = Live::new("web", "https://c.example.com");
        live.set_identity(
            &id,
            true,
            crate::imds::Addresses {
                private_ipv4: Some(std::net::Ipv4Addr::new(10, 1, 2, 3)),
                public_ipv4: None,
                ipv6: None,
            },
        );
        let status = live.snapshot();
        assert!(status.byon);
        let text = render_status(&status);
        assert_eq!(row(&text), Some(format!("{id} (bring-your-own)")), "{text}");
    }

    /// A stale socket file with nobody behind it also means not running.
    #[test]
    fn stale_socket_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let (code, text) = run(&args(&socket, &dir.path().join("state"), false));
        assert_eq!(code, EXIT_NOT_RUNNING);
        assert!(text.contains("remembers no node"), "{text}");
    }

    /// A running agent's document is printed as is with `--json`, and the
    /// exit code follows its health.
    #[tokio::test]
    async fn running_agent_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let live = Live::new("web", "https://c.example.com");
        let (listener, _file) = crate::status::bind(&socket).unwrap();
        tokio::spawn(crate::status::serve(listener, live.clone(), None));

        let ask_args = args(&socket, dir.path(), true);
        let asked = ask_args.clone();
        let (code, text) = tokio::task::spawn_blocking(move || run(&asked))
            .await
            .unwrap();
        assert_eq!(code, EXIT_DEGRADED, "a starting agent is not healthy");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["state"], "starting");

        live.contact(NodeState::Deployed);
        let asked = ask_args.clone();
        let (code, _) = tokio::task::spawn_blocking(move || run(&asked))
            .await
            .unwrap();
        assert_eq!(code, EXIT_HEALTHY);

        let table_args = StatusArgs {
            json: false,
            ..ask_args
        };
        let (_, text) = tokio::task::spawn_blocking(move || run(&table_args))
            .await
            .unwrap();
        assert!(
            text.starts_with("muster-agent is running: deployed"),
            "{text}"
        );
        assert!(text.contains("coordinator"), "{text}");
    }

    /// The table says since when and for how long the agent has been cut
    /// off, and shows a dash while the coordinator answers.
    #[test]
    fn table_shows_the_cut_off() {
        let live = Live::new("web", "https://c.example.com");
        let mut status = live.snapshot();
        let row = |text: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with("cut off"))
                .map(|l| l.trim_start()["cut off".len()..].trim().to_owned())
        };
        assert_eq!(row(&render_status(&status)).as_deref(), Some("-"));
        status.cut_off_since = Some("2025-01-01T00:00:00Z".into());
        status.cut_off_secs = Some(133);
        assert_eq!(
            row(&render_status(&status)).as_deref(),
            Some("since 2025-01-01T00:00:00Z (2m 13s)")
        );
    }
}
