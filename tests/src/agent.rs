//! A real `muster-agent run` for one emulated instance: it reads the IMDS
//! emulator and talks to a test coordinator, keeping its state in a
//! temporary state dir that survives restarts of the agent.

use std::path::{Path, PathBuf};
use std::process::Command;

use muster_proto::token::{TokenKind, SECRET_BYTES};
use tempfile::TempDir;

use crate::coordinator::Coordinator;
use crate::imds::Imds;
use crate::procs::{bin_path, tail, Process};

/// How often the test agent polls IMDS for address changes.
pub const IMDS_POLL_INTERVAL: &str = "200ms";

/// A test agent: its settings, its state dir and, while it runs, its process.
#[derive(Debug)]
pub struct Agent {
    process: Option<Process>,
    earlier_logs: String,
    state_dir: TempDir,
    coordinator_url: String,
    ca_file: Option<PathBuf>,
    dns_server: String,
    imds_endpoint: String,
    cluster: String,
    join_token: String,
    imds_poll_interval: String,
    /// More `run` flags (bring-your-own mode).
    extra_args: Vec<String>,
    /// The network namespace it runs in, if not the host's.
    netns: Option<String>,
    /// More environment (`SSL_CERT_FILE`, say).
    extra_env: Vec<(String, String)>,
}

impl Agent {
    /// Starts an agent that joins `cluster` of `coordinator` with
    /// `join_token`, reading instance metadata from `imds`.
    pub fn start(coordinator: &Coordinator, imds: &Imds, cluster: &str, join_token: &str) -> Agent {
        Agent::start_with_poll(coordinator, imds, cluster, join_token, IMDS_POLL_INTERVAL)
    }

    /// Like [`Agent::start`], polling IMDS every `imds_poll_interval`
    /// (benchmarks use the agent's default, `1s`).
    pub fn start_with_poll(
        coordinator: &Coordinator,
        imds: &Imds,
        cluster: &str,
        join_token: &str,
        imds_poll_interval: &str,
    ) -> Agent {
        let mut agent = Agent::new(coordinator, imds.endpoint(), cluster, join_token);
        agent.imds_poll_interval = imds_poll_interval.to_owned();
        agent.spawn();
        agent
    }

    /// Starts an agent in bring-your-own mode: no IMDS (its endpoint points
    /// at a port nobody listens on), the machine id `machine_id` written to
    /// a file in its state dir, named `hostname`, at `private_ipv4`.
    pub fn start_byon(
        coordinator: &Coordinator,
        cluster: &str,
        byon_token: &str,
        machine_id: &str,
        hostname: &str,
        private_ipv4: std::net::Ipv4Addr,
    ) -> Agent {
        let nobody = format!("http://127.0.0.1:{}", crate::procs::free_tcp_port());
        let mut agent = Agent::new(coordinator, nobody, cluster, byon_token);
        let machine_id_file = agent.state_dir.path().join("machine-id");
        std::fs::write(&machine_id_file, format!("{machine_id}\n"))
            .expect("writing the machine id");
        agent.extra_args = vec![
            "--byon".into(),
            "--machine-id-file".into(),
            machine_id_file.display().to_string(),
            "--hostname".into(),
            hostname.into(),
            "--private-ipv4".into(),
            private_ipv4.to_string(),
        ];
        agent.spawn();
        agent
    }

    /// An agent not started yet, with a fresh state dir.
    fn new(coordinator: &Coordinator, imds_endpoint: String, cluster: &str, token: &str) -> Agent {
        let state_dir = tempfile::Builder::new()
            .prefix("muster-agent-state-")
            .tempdir()
            .expect("creating a state dir");
        Agent {
            process: None,
            earlier_logs: String::new(),
            state_dir,
            coordinator_url: coordinator.url(),
            ca_file: Some(coordinator.ca_file()),
            dns_server: coordinator.dns_addr().to_string(),
            imds_endpoint,
            cluster: cluster.to_owned(),
            join_token: token.to_owned(),
            imds_poll_interval: IMDS_POLL_INTERVAL.to_owned(),
            extra_args: Vec::new(),
            netns: None,
            extra_env: Vec::new(),
        }
    }

    /// Points the next (re)start at another IMDS: the same state dir on
    /// another instance, as an image baked with state would be.
    pub fn move_to(&mut self, imds: &Imds) {
        self.imds_endpoint = imds.endpoint();
    }

    /// Stops the agent (SIGTERM by pid, then SIGKILL). The state dir stays.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            self.earlier_logs.push_str(&process.finish());
            self.earlier_logs.push('\n');
        }
    }

    /// Stops the agent if it runs and starts it again on the same state dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Empties the state dir, as if the disk holding it had been replaced.
    /// Only while the agent is stopped.
    pub fn wipe_state(&mut self) {
        assert!(
            self.process.is_none(),
            "stop the agent before wiping its state"
        );
        for entry in std::fs::read_dir(self.state_dir()).expect("listing the state dir") {
            let path = entry.expect("reading the state dir").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .unwrap_or_else(|e| panic!("removing {}: {e}", path.display()));
        }
    }

    /// The pid of the running agent.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("the agent is running").pid()
    }

    /// Whether the agent process has exited on its own.
    pub fn has_exited(&mut self) -> bool {
        self.process.as_mut().is_none_or(|p| p.try_exit().is_some())
    }

    /// Everything every run of this agent printed.
    pub fn logs(&self) -> String {
        let current = self.process.as_ref().map(Process::logs).unwrap_or_default();
        format!("{}{current}", self.earlier_logs)
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// The local status socket.
    pub fn socket(&self) -> PathBuf {
        self.state_dir().join("agent.sock")
    }

    /// The node credential the agent keeps in its state dir, found by its
    /// shape (`mnode_` and 64 hex digits) in whichever file holds it.
    pub fn node_credential(&self) -> Option<String> {
        find_secret(self.state_dir(), TokenKind::Node)
    }

    /// Runs `muster-agent status --json` against this agent's socket and
    /// state dir. Returns the exit code and the printed JSON (or, if it did
    /// not print JSON, the raw text as a JSON string).
    pub async fn status_json(&self) -> (i32, serde_json::Value) {
        let output = tokio::process::Command::new(bin_path("muster-agent"))
            .arg("status")
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--json")
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running muster-agent status: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
            serde_json::Value::String(format!(
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            ))
        });
        (output.status.code().unwrap_or(-1), value)
    }

    /// Pins `ca_file` from the next start on, or, with `None`, gives no
    /// `--ca-file` (the agent then trusts the system's roots).
    pub fn set_ca_file(&mut self, ca_file: Option<PathBuf>) {
        self.ca_file = ca_file;
    }

    /// Gives the agent a settings file holding `toml` (health checks,
    /// `drain_on_notice`) from its next start on; the flags the harness
    /// passes still win over the file.
    pub fn set_config(&mut self, toml: &str) {
        let path = self.state_dir.path().join("agent.toml");
        std::fs::write(&path, toml).expect("writing the agent's settings file");
        self.extra_args
            .extend(["--config".to_owned(), path.display().to_string()]);
    }

    /// Sends `signal` to the running agent, by pid.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling the agent");
    }

    /// Sets an environment variable for the next start.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.extra_env.push((name.to_owned(), value.to_owned()));
    }

    /// Runs the agent inside network namespace `name` (`ip netns exec`),
    /// from its next start on, so its requests come from the namespace's
    /// addresses.
    pub fn in_netns(&mut self, name: &str) {
        self.netns = Some(name.to_owned());
    }

    /// An agent for `imds` that is not started yet: set it up, then
    /// [`Agent::restart`] starts it.
    pub fn prepared(
        coordinator: &Coordinator,
        imds: &Imds,
        cluster: &str,
        join_token: &str,
    ) -> Agent {
        Agent::new(coordinator, imds.endpoint(), cluster, join_token)
    }

    fn spawn(&mut self) {
        let binary = bin_path("muster-agent");
        let mut command = match &self.netns {
            Some(name) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name]).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .arg("run")
            .args(["--coordinator-url", &self.coordinator_url])
            .args(["--cluster", &self.cluster])
            .args(["--join-token", &self.join_token])
            .arg("--state-dir")
            .arg(self.state_dir.path())
            .arg("--socket")
            .arg(self.state_dir.path().join("agent.sock"))
            .args(["--dns-server", &self.dns_server])
            .args(["--imds-poll-interval", &self.imds_poll_interval])
            .args(&self.extra_args)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds_endpoint)
            .env("RUST_LOG", "info")
            // Stops at once unless a test sets a drain wait (set_env).
            .env("MUSTER_AGENT_DRAIN_WAIT", "0s")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        if let Some(ca) = &self.ca_file {
            command.arg("--ca-file").arg(ca);
        }
        self.process = Some(Process::spawn("muster-agent", command));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.earlier_logs.is_empty() {
            eprintln!(
                "--- muster-agent, earlier runs ---\n{}",
                tail(&self.earlier_logs, 64 * 1024)
            );
        }
    }
}

/// The first secret of `kind` found in any file under `dir`.
fn find_secret(dir: &Path, kind: TokenKind) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            find_secret(&path, kind)
        } else {
            std::fs::read(&path)
                .ok()
                .and_then(|bytes| secret_in(&String::from_utf8_lossy(&bytes), kind))
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The first secret of `kind` in `text`.
fn secret_in(text: &str, kind: TokenKind) -> Option<String> {
    let length = kind.prefix().len() + SECRET_BYTES * 2;
    text.match_indices(kind.prefix()).find_map(|(start, _)| {
        let candidate = text.get(start..start + length)?;
        (TokenKind::of(candidate) == Some(kind)).then(|| candidate.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential is found inside whatever format the state file uses.
    #[test]
    fn finds_a_credential_in_any_text() {
        let credential = format!("mnode_{}", "ab".repeat(SECRET_BYTES));
        let toml = format!("node = \"i-0123\"\ncredential = \"{credential}\"\n");
        assert_eq!(secret_in(&toml, TokenKind::Node), Some(credential.clone()));
        assert_eq!(secret_in("mnode_short", TokenKind::Node), None);
        assert_eq!(secret_in(&toml, TokenKind::Join), None);
    }
}
