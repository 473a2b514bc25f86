//! The muster node agent.
//!
//! One agent runs on every node. It reads who and where the instance is from
//! IMDSv2, registers with the coordinator (first with the cluster's join
//! token, then with the node credential the coordinator hands back), and from
//! then on heartbeats with host facts. It watches its own addresses: when an
//! Elastic IP is associated or moved, the coordinator hears it at once, with
//! no restart; a local address added or removed makes it read IMDS again at
//! once. It keeps going through coordinator outages, retrying with backoff.
//! A local unix socket answers `muster-agent status`, which also says since
//! when the agent has been cut off from the coordinator. Under systemd it
//! reports READY and STOPPING, and pings the watchdog.
//!
//! A bring-your-own node (`--byon`), a machine muster did not launch, may
//! have no IMDS: the agent never asks it, names the node `m-<machine id>`
//! with the machine's hostname, and reports its own addresses (the given
//! ones, or the source address of its default route, read again on local
//! address events). Registering, heartbeats and the state file work the
//! same for both kinds of node.
//!
//! # Layout
//! - [`settings`]: the TOML file, `MUSTER_AGENT_*` variables and flags,
//!   validated once at start into [`settings::Settings`].
//! - [`identity`]: where the node's identity and addresses come from, IMDS
//!   or the machine itself, behind one [`identity::Source`] the daemon uses.
//! - [`imds`]: the IMDSv2 client (token cached, refreshed on 401, 404 means
//!   absent).
//! - [`byon`]: a bring-your-own node from the machine: the machine id, the
//!   hostname, the primary IPv4 from the default route.
//! - [`coordinator`]: the HTTPS client for the coordinator's agent API,
//!   pinned to the configured CA.
//! - [`state`]: `state.json` in the state dir: the node credential and who
//!   this node is (bound to its node id), written atomically, 0600.
//! - [`facts`]: host facts (CPUs, load, memory, disks, uptime, OS) from
//!   sysinfo.
//! - [`netwatch`]: local IPv4 address events from the kernel (rtnetlink),
//!   so that IMDS (or the machine's own addresses) is read again at once
//!   rather than at the next poll.
//! - [`checks`]: the node's own health checks (an HTTP GET, a TCP connect
//!   or a command), each run on its interval, their standing ready for the
//!   heartbeat.
//! - [`notices`]: EC2's warnings about the instance (a Spot interruption,
//!   a rebalance recommendation, an Auto Scaling termination, scheduled
//!   maintenance), read from IMDS every two seconds.
//! - [`backoff`]: bounded exponential backoff with full jitter, capped at
//!   60 s, used by every retry.
//! - [`daemon`]: `muster-agent run`: register, heartbeat, push address
//!   changes, ping the systemd watchdog, stop cleanly on SIGTERM.
//! - [`status`]: the status document (with how long the agent has been cut
//!   off from the coordinator), the local socket that serves it, and the DNS
//!   check behind `dns_resolves`.
//! - [`query`]: `muster-agent status`: asks the socket, prints a table or
//!   JSON, and picks the exit code.
//! - [`logging`]: tracing to stderr, without timestamps under journald.
//! - [`volume`]: `muster-agent prepare-volume`: finds the data volume,
//!   makes a filesystem only on a blank one, mounts it, adds it to fstab.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod byon;
pub mod checks;
pub mod coordinator;
pub mod daemon;
pub mod facts;
pub mod identity;
pub mod imds;
pub mod logging;
pub mod netwatch;
pub mod notices;
pub mod query;
pub mod settings;
pub mod state;
pub mod status;
pub mod volume;

use std::error::Error;

use clap::{Parser, Subcommand};

pub use daemon::{run, shutdown_signal, RunError};

/// The version of this build, sent to the coordinator on register.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `muster-agent`: the node daemon and its status command.
#[derive(Debug, Parser)]
#[command(name = "muster-agent", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: register with the coordinator, heartbeat, and push
    /// address changes as they happen.
    Run(Box<settings::RunArgs>),
    /// Ask the running agent how it is.
    ///
    /// Exit codes: 0 healthy (deployed, last contact with the coordinator
    /// fine), 1 degraded (starting, registering, refused, or the coordinator
    /// unreachable), 3 not running, 4 could not ask (e.g. permission denied
    /// on the socket). Whether DNS resolves is shown, not counted.
    Status(query::StatusArgs),
    /// Prepare the data volume, once, from cloud-init: find it, make a
    /// filesystem if (and only if) it holds none, mount it, add it to
    /// fstab with nofail. Running it again changes nothing.
    ///
    /// Exit codes: 0 ready, 1 failed or refused, 64 bad flags.
    PrepareVolume(volume::PrepareArgs),
}

/// Formats an error and its causes on one line, cause by cause:
/// `outer: inner: innermost`.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some libraries repeat their cause in their own message; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Cuts `text` to at most `max` bytes on a character boundary and replaces
/// control characters, so that a peer's words can be logged safely.
pub(crate) fn cut_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// Reads a response body, refusing to hold more than `limit` bytes of it.
/// Returns the body, cut at the limit if it was longer.
pub(crate) async fn read_body_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// Aborts a background task when dropped, so that it ends with whatever
/// owns it, even when that is a future cancelled by a shutdown.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Installs ring as the process-wide rustls crypto provider. Installing it
/// twice is harmless: the second attempt is ignored.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    /// The chain shows every cause once, outermost first.
    #[test]
    fn error_chain_lists_causes() {
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&err), "outer: inner");
    }

    /// Cutting keeps whole characters, marks the cut, and blanks control
    /// characters.
    #[test]
    fn cut_text_is_safe() {
        assert_eq!(cut_text("abc", 10), "abc");
        assert_eq!(cut_text("a\nb", 10), "a b");
        assert_eq!(cut_text("ééé", 3), "é…");
    }

    /// The command line parses both subcommands with their flags.
    #[test]
    fn cli_parses() {
        let cli = Cli::try_parse_from([
            "muster-agent",
            "status",
            "--socket",
            "/tmp/a.sock",
            "--json",
        ])
        .unwrap();
        match cli.command {
            Command::Status(args) => {
                assert!(args.json);
                assert_eq!(
                    args.socket.as_deref(),
                    Some(std::path::Path::new("/tmp/a.sock"))
                );
            }
            Command::Run(_) | Command::PrepareVolume(_) => panic!("parsed as another command"),
        }
    }
}
