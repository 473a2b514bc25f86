//! Settings of `muster-agent run`.
//!
//! Three sources, the later winning: the TOML file (`--config`, default
//! `/etc/muster/agent.toml`, written by cloud-init), the `MUSTER_AGENT_*`
//! environment variables, and the flags. They are validated once, at start,
//! into one [`Settings`]; a bad value is reported as
//! `NAME="value" is not valid: why`, naming the flag, variable or file key it
//! came from, and the agent exits 64.
//!
//! The file's keys are the flags' names with `_`, and the node's health
//! checks, which only the file sets, are `[[check]]` tables after them:
//!
//! ```toml
//! coordinator_url = "https://muster.example.com:7443"
//! ca_file = "/etc/muster/ca.pem"
//! cluster = "web"
//! join_token_file = "/etc/muster/join-token"   # or join_token = "mjoin_…"
//! state_dir = "/var/lib/muster-agent"
//! socket = "/run/muster-agent/agent.sock"
//! imds_poll_interval = "1s"
//! dns_server = "10.0.0.2:53"
//! drain_wait = "30s"                      # on SIGTERM, out of the round robin, then wait this
//! drain_on_notice = false                 # also drain on a rebalance recommendation or maintenance
//!
//! [[check]]                               # one table per check, at most 32
//! name = "web"                            # a DNS label, unique among them
//! http = "http://127.0.0.1:8080/healthz"  # or tcp, or command
//! expect_body = "ok"                      # http only: the body must hold it
//! interval = "10s"                        # 1s to 1h (default 10s)
//! timeout = "2s"                          # 100ms to 60s, at most the interval (default 2s)
//! failures = 3                            # failed runs in a row to fail (default 3)
//! successes = 1                           # successful runs in a row to pass (default 1)
//! ```
//!
//! The IMDS endpoint follows the AWS convention instead:
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, default `http://169.254.169.254`.
//!
//! A check does exactly one of `http` (a GET that must answer 2xx or 3xx),
//! `tcp` (a connect to `"host:port"`) and `command` (a program by its
//! absolute path, then its arguments, run without a shell, that must exit
//! 0: `command = ["/usr/local/bin/check-disk", "--min", "10%"]`).
//! [`crate::checks`] runs them.
//!
//! A bring-your-own node, where there is no IMDS, sets `--byon`
//! (`MUSTER_AGENT_BYON=true`, `byon = true`); IMDS is then never asked, and
//! the node is named from the machine ([`crate::byon`]):
//!
//! ```toml
//! byon = true
//! machine_id_file = "/etc/machine-id"   # the default
//! hostname = "build-7"                  # default: the system hostname's first label
//! private_ipv4 = "192.168.1.20"         # default: the primary address, watched
//! public_ipv4 = "203.0.113.7"           # default: none
//! ```
//!
//! The machine id and the hostname are read and checked here, so a machine
//! that cannot name itself stops at once with exit 64. The IMDS poll
//! interval is then the interval at which the local addresses are read.
//!
//! `settings/sources.rs` knows what each setting is called in each source
//! and which one a value came from; `settings/machine.rs` reads a
//! bring-your-own node's own settings; `settings/checks.rs` reads the
//! `[[check]]` tables.

mod checks;
mod machine;
mod sources;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ArgMatches;
use muster_proto::settings::{duration_within, DurationError, Invalid};
use muster_proto::token::TokenKind;
use serde::Deserialize;

use crate::byon::ByonNode;
use crate::checks::Check;
pub use checks::FileCheck;
use sources::{
    Sources, CA_FILE, CLUSTER, COORDINATOR_URL, DNS_SERVER, DRAIN_ON_NOTICE, DRAIN_WAIT,
    IMDS_POLL_INTERVAL, JOIN_TOKEN, JOIN_TOKEN_FILE, SOCKET, STATE_DIR,
};

/// Where the settings file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/muster/agent.toml";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/muster-agent";
/// Default path of the status socket.
pub const DEFAULT_SOCKET: &str = "/run/muster-agent/agent.sock";
/// How often IMDS is asked for the addresses by default.
pub const DEFAULT_IMDS_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest IMDS poll interval accepted (IMDS throttles eager callers).
pub const MIN_IMDS_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest IMDS poll interval accepted (a longer one hides moves).
pub const MAX_IMDS_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// How long a stopping agent waits by default: the coordinator's default
/// record TTL.
pub const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(30);
/// The longest drain wait accepted.
pub const MAX_DRAIN_WAIT: Duration = Duration::from_secs(300);
/// The AWS variable that points IMDS clients elsewhere.
pub const IMDS_ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// The IMDS endpoint on EC2.
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// Where the machine id of a bring-your-own node is read by default.
pub const DEFAULT_MACHINE_ID_FILE: &str = "/etc/machine-id";
/// Longest path a unix socket may have (108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The flags of `muster-agent run`. Every one can also be set by its
/// variable or in the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Settings file (TOML; keys as the flags, with `_`).
    /// [default: /etc/muster/agent.toml, if present]
    #[arg(long, env = "MUSTER_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The coordinator's base URL (https).
    #[arg(long, env = "MUSTER_AGENT_COORDINATOR_URL", value_name = "URL")]
    pub coordinator_url: Option<String>,
    /// PEM file with the CA the coordinator's certificate must chain to;
    /// nothing else is then trusted. Without it, the system's roots are
    /// (for a coordinator serving an operator's certificate).
    #[arg(long, env = "MUSTER_AGENT_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The cluster to join (a DNS label).
    #[arg(long, env = "MUSTER_AGENT_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,
    /// The cluster's join token (`mjoin_…`). Needed until a node credential
    /// is stored.
    #[arg(
        long,
        env = "MUSTER_AGENT_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// A file holding the join token (or the bring-your-own token), which
    /// only its owner may read: keeps the token off the command line and
    /// out of the settings file. The user data launched nodes boot with
    /// writes it, 0600.
    #[arg(
        long,
        env = "MUSTER_AGENT_JOIN_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "join_token"
    )]
    pub join_token_file: Option<PathBuf>,
    /// Where the node credential and identity are kept.
    /// [default: /var/lib/muster-agent]
    #[arg(long, env = "MUSTER_AGENT_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The local status socket. [default: /run/muster-agent/agent.sock]
    #[arg(long, env = "MUSTER_AGENT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// How often to ask IMDS (with --byon: the machine) for the addresses,
    /// 100ms to 60s. [default: 1s]
    #[arg(long, env = "MUSTER_AGENT_IMDS_POLL_INTERVAL", value_name = "DURATION")]
    pub imds_poll_interval: Option<String>,
    /// DNS server (IP:PORT) the status check asks instead of the system
    /// resolver.
    #[arg(long, env = "MUSTER_AGENT_DNS_SERVER", value_name = "IP:PORT")]
    pub dns_server: Option<String>,
    /// Run as a bring-your-own node, where there is no IMDS: never ask it,
    /// and name the node from the machine (machine id, hostname, own
    /// addresses). The --join-token is then the cluster's bring-your-own
    /// token. The variable takes true/false, yes/no, on/off or 1/0.
    #[arg(
        long,
        env = "MUSTER_AGENT_BYON",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub byon: bool,
    /// How long to wait, once SIGTERM has taken the node out of its
    /// cluster's round robin, before exiting, so resolvers stop sending
    /// traffic while the node still serves: the records' TTL, 0s to 5m.
    /// The unit's TimeoutStopSec must cover it. [default: 30s]
    #[arg(long, env = "MUSTER_AGENT_DRAIN_WAIT", value_name = "DURATION")]
    pub drain_wait: Option<String>,
    /// Drain the node on a rebalance recommendation or scheduled
    /// maintenance from EC2 too, not only on a Spot interruption or an
    /// Auto Scaling termination. The variable takes true/false, yes/no,
    /// on/off or 1/0.
    #[arg(
        long,
        env = "MUSTER_AGENT_DRAIN_ON_NOTICE",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub drain_on_notice: bool,
    /// With --byon: the file holding the machine id, which makes the node
    /// the same across restarts. [default: /etc/machine-id]
    #[arg(long, env = "MUSTER_AGENT_MACHINE_ID_FILE", value_name = "FILE")]
    pub machine_id_file: Option<PathBuf>,
    /// With --byon: the node name, a DNS label.
    /// [default: the system hostname's first label, lowercased]
    #[arg(long, env = "MUSTER_AGENT_HOSTNAME", value_name = "NAME")]
    pub hostname: Option<String>,
    /// With --byon: the private IPv4 to register, fixed.
    /// [default: the address the default route leaves from, watched]
    #[arg(long, env = "MUSTER_AGENT_PRIVATE_IPV4", value_name = "IPV4")]
    pub private_ipv4: Option<String>,
    /// With --byon: the public IPv4 to register. [default: none]
    #[arg(long, env = "MUSTER_AGENT_PUBLIC_IPV4", value_name = "IPV4")]
    pub public_ipv4: Option<String>,
}

/// The settings file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// See [`RunArgs::coordinator_url`].
    pub coordinator_url: Option<String>,
    /// See [`RunArgs::ca_file`].
    pub ca_file: Option<PathBuf>,
    /// See [`RunArgs::cluster`].
    pub cluster: Option<String>,
    /// See [`RunArgs::join_token`].
    pub join_token: Option<String>,
    /// See [`RunArgs::join_token_file`].
    pub join_token_file: Option<PathBuf>,
    /// See [`RunArgs::state_dir`].
    pub state_dir: Option<PathBuf>,
    /// See [`RunArgs::socket`].
    pub socket: Option<PathBuf>,
    /// See [`RunArgs::imds_poll_interval`].
    pub imds_poll_interval: Option<String>,
    /// See [`RunArgs::dns_server`].
    pub dns_server: Option<String>,
    /// See [`RunArgs::drain_wait`].
    pub drain_wait: Option<String>,
    /// See [`RunArgs::drain_on_notice`].
    pub drain_on_notice: Option<bool>,
    /// See [`RunArgs::byon`].
    pub byon: Option<bool>,
    /// See [`RunArgs::machine_id_file`].
    pub machine_id_file: Option<PathBuf>,
    /// See [`RunArgs::hostname`].
    pub hostname: Option<String>,
    /// See [`RunArgs::private_ipv4`].
    pub private_ipv4: Option<String>,
    /// See [`RunArgs::public_ipv4`].
    pub public_ipv4: Option<String>,
    /// The node's health checks, one `[[check]]` table each; only the file
    /// sets them.
    #[serde(default)]
    pub check: Vec<FileCheck>,
}

impl FileSettings {
    /// Reads the settings file: `explicit` if given (then it must exist),
    /// else [`DEFAULT_CONFIG`] if it exists. Returns the file read, if any.
    pub fn read(
        explicit: Option<&Path>,
        name: &str,
    ) -> Result<(FileSettings, Option<PathBuf>), Invalid> {
        let (path, must_exist) = match explicit {
            Some(path) => (path.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok((FileSettings::default(), None));
            }
            Err(e) => {
                return Err(Invalid::new(
                    name,
                    &path.display().to_string(),
                    format!("cannot read it: {e}"),
                ))
            }
        };
        let file = FileSettings::parse(&text).map_err(|why| {
            Invalid::new(
                name,
                &path.display().to_string(),
                format!("is not a valid settings file: {why}"),
            )
        })?;
        Ok((file, Some(path)))
    }

    /// Parses the text of a settings file (unknown keys are refused).
    pub fn parse(text: &str) -> Result<FileSettings, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// The settings of a running agent, all validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The coordinator's base URL, https, without a trailing `/`.
    pub coordinator_url: String,
    /// The CA file the coordinator is pinned to, and its PEM contents
    /// (at least one certificate); `None` trusts the system's roots.
    pub ca: Option<(PathBuf, Vec<u8>)>,
    /// The cluster to join.
    pub cluster: String,
    /// The join token, if one is configured.
    pub join_token: Option<Secret>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The status socket.
    pub socket: PathBuf,
    /// How often IMDS (or, for a bring-your-own node, the machine) is
    /// asked for the addresses.
    pub imds_poll_interval: Duration,
    /// The DNS server the status check asks, if not the system resolver.
    pub dns_server: Option<SocketAddr>,
    /// The IMDS base URL, without a trailing `/`; not used by a
    /// bring-your-own node.
    pub imds_endpoint: String,
    /// Set for a bring-your-own node: who it is, from the machine. IMDS is
    /// then never asked.
    pub byon: Option<ByonNode>,
    /// The settings file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// How long a stopping agent waits once its node is out of the round
    /// robin.
    pub drain_wait: Duration,
    /// Whether a rebalance recommendation or scheduled maintenance drains
    /// the node too.
    pub drain_on_notice: bool,
    /// The node's health checks, in the order of the settings file.
    pub checks: Vec<Check>,
}

/// Shows the kind of a secret but not the secret: `mjoin_…`.
fn redact(secret: &str) -> String {
    let prefix: String = secret.chars().take_while(|c| *c != '_').take(8).collect();
    if secret.len() > prefix.len() && secret[prefix.len()..].starts_with('_') {
        format!("{prefix}_…")
    } else {
        "…".to_owned()
    }
}

impl Settings {
    /// Validates the settings of `muster-agent run` from its flags (with
    /// `matches`, to tell flags from variables), the settings file and the
    /// environment.
    pub fn load(args: &RunArgs, matches: Option<&ArgMatches>) -> Result<Settings, Invalid> {
        let imds_env = std::env::var(IMDS_ENDPOINT_ENV).ok();
        Settings::load_with(args, matches, imds_env)
    }

    /// [`Settings::load`] with the IMDS endpoint variable given. The
    /// settings are checked one after the other, always in the same order;
    /// the first bad one is the one reported.
    pub fn load_with(
        args: &RunArgs,
        matches: Option<&ArgMatches>,
        imds_env: Option<String>,
    ) -> Result<Settings, Invalid> {
        let src = Sources::read(args, matches)?;
        let coordinator_url = coordinator_url(&src)?;
        let ca = ca(&src)?;
        let cluster = cluster(&src)?;
        let state_dir = state_dir(&src)?;
        let join_token = join_token(&src, &state_dir)?;
        let socket = socket(&src)?;
        let imds_poll_interval = imds_poll_interval(&src)?;
        let dns_server = dns_server(&src)?;
        let drain_wait = drain_wait(&src)?;
        let drain_on_notice = src.switch(
            &DRAIN_ON_NOTICE,
            src.args.drain_on_notice,
            src.file.drain_on_notice,
        );
        let byon = machine::resolve(&src)?;
        // A bring-your-own node never asks IMDS, so the variable is not
        // its business.
        let imds_endpoint = match imds_env {
            Some(text) if byon.is_none() && !text.trim().is_empty() => {
                parse_base_url(&text, &["http", "https"])
                    .map_err(|why| Invalid::new(IMDS_ENDPOINT_ENV, &text, why))?
            }
            _ => DEFAULT_IMDS_ENDPOINT.to_owned(),
        };
        let checks = checks::resolve(&src)?;
        Ok(Settings {
            coordinator_url,
            ca,
            cluster,
            join_token,
            state_dir,
            socket,
            imds_poll_interval,
            dns_server,
            imds_endpoint,
            byon,
            config_file: src.config_file,
            drain_wait,
            drain_on_notice,
            checks,
        })
    }
}

/// The coordinator's URL: required, https.
fn coordinator_url(src: &Sources<'_>) -> Result<String, Invalid> {
    let (url, origin) = src
        .pick(
            &COORDINATOR_URL,
            &src.args.coordinator_url,
            &src.file.coordinator_url,
        )
        .ok_or_else(|| COORDINATOR_URL.missing("is required"))?;
    parse_base_url(&url, &["https"]).map_err(|why| COORDINATOR_URL.invalid(origin, &url, why))
}

/// The CA file, if one is given, and its certificates.
fn ca(src: &Sources<'_>) -> Result<Option<(PathBuf, Vec<u8>)>, Invalid> {
    let Some((ca_file, origin)) = src.pick(&CA_FILE, &src.args.ca_file, &src.file.ca_file) else {
        return Ok(None);
    };
    let pem = read_ca(&ca_file)
        .map_err(|why| CA_FILE.invalid(origin, &ca_file.display().to_string(), why))?;
    Ok(Some((ca_file, pem)))
}

/// The cluster: required, a DNS label.
fn cluster(src: &Sources<'_>) -> Result<String, Invalid> {
    let (cluster, origin) = src
        .pick(&CLUSTER, &src.args.cluster, &src.file.cluster)
        .ok_or_else(|| CLUSTER.missing("is required"))?;
    muster_proto::validate::dns_label("cluster", &cluster)
        .map_err(|e| CLUSTER.invalid(origin, &cluster, e.reason))?;
    Ok(cluster)
}

/// The state dir: not empty.
fn state_dir(src: &Sources<'_>) -> Result<PathBuf, Invalid> {
    match src.pick(&STATE_DIR, &src.args.state_dir, &src.file.state_dir) {
        Some((dir, origin)) if dir.as_os_str().is_empty() => {
            Err(STATE_DIR.invalid(origin, "", "must not be empty"))
        }
        Some((dir, _)) => Ok(dir),
        None => Ok(PathBuf::from(DEFAULT_STATE_DIR)),
    }
}

/// The join token, which must be one, given itself or as a file that
/// holds it; without it a node credential must be stored in `state_dir`,
/// or the agent could never register.
fn join_token(src: &Sources<'_>, state_dir: &Path) -> Result<Option<Secret>, Invalid> {
    let given = src.pick(&JOIN_TOKEN, &src.args.join_token, &src.file.join_token);
    let file = src.pick(
        &JOIN_TOKEN_FILE,
        &src.args.join_token_file,
        &src.file.join_token_file,
    );
    let (token, key, origin) = match (given, file) {
        (Some((_, origin)), Some(_)) => {
            return Err(JOIN_TOKEN.invalid(
                origin,
                "…",
                "is given twice: set either join_token or join_token_file",
            ))
        }
        (Some((token, origin)), None) => (token, &JOIN_TOKEN, origin),
        (None, Some((path, origin))) => {
            let token = read_token_file(&path)
                .map_err(|why| JOIN_TOKEN_FILE.invalid(origin, &path.display().to_string(), why))?;
            (token, &JOIN_TOKEN_FILE, origin)
        }
        (None, None) => {
            if !crate::state::has_credential(state_dir) {
                return Err(JOIN_TOKEN.missing(&format!(
                    "is required (or a join_token_file) until a node credential is stored in {}",
                    crate::state::state_file(state_dir).display()
                )));
            }
            return Ok(None);
        }
    };
    let token = token.trim().to_owned();
    match TokenKind::of(&token) {
        Some(TokenKind::Join) => Ok(Some(Secret::new(token))),
        Some(other) => Err(key.invalid(
            origin,
            &redact(&token),
            format!("is a {other}, not a join token"),
        )),
        None => Err(key.invalid(
            origin,
            &redact(&token),
            "must be a join token: \"mjoin_\" and 64 lowercase hex digits",
        )),
    }
}

/// The token a join token file holds: a regular file of at most a few
/// hundred bytes that no one but its owner may read or write.
fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    const MAX_BYTES: u64 = 512;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".to_owned());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "has mode {mode:04o}: its group or others may read the token; chmod 600 it"
        ));
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it as text: {e}"))?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!("is over {MAX_BYTES} bytes: not a token"));
    }
    Ok(text)
}

/// The status socket: a path a unix socket can have.
fn socket(src: &Sources<'_>) -> Result<PathBuf, Invalid> {
    let Some((socket, origin)) = src.pick(&SOCKET, &src.args.socket, &src.file.socket) else {
        return Ok(PathBuf::from(DEFAULT_SOCKET));
    };
    let shown = socket.display().to_string();
    if socket.as_os_str().is_empty() {
        return Err(SOCKET.invalid(origin, "", "must not be empty"));
    }
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(SOCKET.invalid(
            origin,
            &shown,
            format!("is longer than the {MAX_SOCKET_PATH} bytes a unix socket path may have"),
        ));
    }
    if socket.file_name().is_none() {
        return Err(SOCKET.invalid(origin, &shown, "must name a file"));
    }
    Ok(socket)
}

/// The IMDS poll interval, 100ms to 60s.
fn imds_poll_interval(src: &Sources<'_>) -> Result<Duration, Invalid> {
    let given = src.pick(
        &IMDS_POLL_INTERVAL,
        &src.args.imds_poll_interval,
        &src.file.imds_poll_interval,
    );
    let Some((text, origin)) = given else {
        return Ok(DEFAULT_IMDS_POLL_INTERVAL);
    };
    duration_within(text.trim(), MIN_IMDS_POLL_INTERVAL, MAX_IMDS_POLL_INTERVAL).map_err(|e| {
        let why = match e {
            DurationError::NotADuration(why) => {
                format!("is not a duration such as \"1s\" or \"500ms\": {why}")
            }
            DurationError::OutOfRange { .. } => "must be between 100ms and 60s".to_owned(),
        };
        IMDS_POLL_INTERVAL.invalid(origin, &text, why)
    })
}

/// The drain wait, 0s to 5m.
fn drain_wait(src: &Sources<'_>) -> Result<Duration, Invalid> {
    let Some((text, origin)) = src.pick(&DRAIN_WAIT, &src.args.drain_wait, &src.file.drain_wait)
    else {
        return Ok(DEFAULT_DRAIN_WAIT);
    };
    duration_within(text.trim(), Duration::ZERO, MAX_DRAIN_WAIT).map_err(|e| {
        let why = match e {
            DurationError::NotADuration(why) => {
                format!("is not a duration such as \"30s\" or \"0s\": {why}")
            }
            DurationError::OutOfRange { .. } => "must be between 0s and 5m".to_owned(),
        };
        DRAIN_WAIT.invalid(origin, &text, why)
    })
}

/// The DNS server of the status check, if one is given: an IP and port.
fn dns_server(src: &Sources<'_>) -> Result<Option<SocketAddr>, Invalid> {
    let Some((text, origin)) = src.pick(&DNS_SERVER, &src.args.dns_server, &src.file.dns_server)
    else {
        return Ok(None);
    };
    let addr = text.trim().parse::<SocketAddr>().map_err(|_| {
        DNS_SERVER.invalid(
            origin,
            &text,
            "must be an IP address and port, e.g. 10.0.0.2:53 or [fd00::2]:53",
        )
    })?;
    Ok(Some(addr))
}

/// Checks a base URL and returns it without a trailing `/`.
fn parse_base_url(text: &str, schemes: &[&str]) -> Result<String, String> {
    let text = text.trim();
    let url = reqwest::Url::parse(text).map_err(|e| format!("is not a URL: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("must be an {} URL", schemes.join(" or ")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".to_owned());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Reads a PEM file and checks it holds at least one certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        format!(
            "is not a PEM certificate bundle: {}",
            crate::error_chain(&e)
        )
    })?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    Ok(pem)
}

#[cfg(test)]
mod tests;
