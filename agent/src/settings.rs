//! Settings of `muster-agent run`.
//!
//! Three sources, the later winning: the TOML file (`--config`, default
//! `/etc/muster/agent.toml`, written by cloud-init), the `MUSTER_AGENT_*`
//! environment variables, and the flags. They are validated once, at start,
//! into one [`Settings`]; a bad value is reported as
//! `NAME="value" is not valid: why`, naming the flag, variable or file key it
//! came from, and the agent exits 64.
//!
//! The file's keys are the flags' names with `_`:
//!
//! ```toml
//! coordinator_url = "https://muster.example.com:7443"
//! ca_file = "/etc/muster/ca.pem"
//! cluster = "web"
//! join_token = "mjoin_…"
//! state_dir = "/var/lib/muster-agent"
//! socket = "/run/muster-agent/agent.sock"
//! imds_poll_interval = "1s"
//! dns_server = "10.0.0.2:53"
//! ```
//!
//! The IMDS endpoint follows the AWS convention instead:
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, default `http://169.254.169.254`.
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

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;
use muster_proto::settings::{duration_within, DurationError, Invalid};
use muster_proto::token::TokenKind;
use serde::Deserialize;

use crate::byon::{self, ByonError, ByonNode};

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
    /// See [`RunArgs::state_dir`].
    pub state_dir: Option<PathBuf>,
    /// See [`RunArgs::socket`].
    pub socket: Option<PathBuf>,
    /// See [`RunArgs::imds_poll_interval`].
    pub imds_poll_interval: Option<String>,
    /// See [`RunArgs::dns_server`].
    pub dns_server: Option<String>,
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
}

/// Where a value came from, to name it in an error.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    Flag,
    Env,
    File(&'a Path),
    Default,
}

/// One setting's names in each source.
#[derive(Debug, Clone, Copy)]
struct Key {
    /// The clap id and file key.
    id: &'static str,
    flag: &'static str,
    env: &'static str,
}

const COORDINATOR_URL: Key = Key {
    id: "coordinator_url",
    flag: "--coordinator-url",
    env: "MUSTER_AGENT_COORDINATOR_URL",
};
const CA_FILE: Key = Key {
    id: "ca_file",
    flag: "--ca-file",
    env: "MUSTER_AGENT_CA_FILE",
};
const CLUSTER: Key = Key {
    id: "cluster",
    flag: "--cluster",
    env: "MUSTER_AGENT_CLUSTER",
};
const JOIN_TOKEN: Key = Key {
    id: "join_token",
    flag: "--join-token",
    env: "MUSTER_AGENT_JOIN_TOKEN",
};
const STATE_DIR: Key = Key {
    id: "state_dir",
    flag: "--state-dir",
    env: "MUSTER_AGENT_STATE_DIR",
};
const SOCKET: Key = Key {
    id: "socket",
    flag: "--socket",
    env: "MUSTER_AGENT_SOCKET",
};
const IMDS_POLL_INTERVAL: Key = Key {
    id: "imds_poll_interval",
    flag: "--imds-poll-interval",
    env: "MUSTER_AGENT_IMDS_POLL_INTERVAL",
};
const DNS_SERVER: Key = Key {
    id: "dns_server",
    flag: "--dns-server",
    env: "MUSTER_AGENT_DNS_SERVER",
};
const BYON: Key = Key {
    id: "byon",
    flag: "--byon",
    env: "MUSTER_AGENT_BYON",
};
const MACHINE_ID_FILE: Key = Key {
    id: "machine_id_file",
    flag: "--machine-id-file",
    env: "MUSTER_AGENT_MACHINE_ID_FILE",
};
const HOSTNAME: Key = Key {
    id: "hostname",
    flag: "--hostname",
    env: "MUSTER_AGENT_HOSTNAME",
};
const PRIVATE_IPV4: Key = Key {
    id: "private_ipv4",
    flag: "--private-ipv4",
    env: "MUSTER_AGENT_PRIVATE_IPV4",
};
const PUBLIC_IPV4: Key = Key {
    id: "public_ipv4",
    flag: "--public-ipv4",
    env: "MUSTER_AGENT_PUBLIC_IPV4",
};
const CONFIG: Key = Key {
    id: "config",
    flag: "--config",
    env: "MUSTER_AGENT_CONFIG",
};

impl Key {
    fn name(&self, origin: Origin<'_>) -> String {
        match origin {
            Origin::Flag => self.flag.to_owned(),
            Origin::Env => self.env.to_owned(),
            Origin::File(_) | Origin::Default => self.id.to_owned(),
        }
    }

    /// The error for a value of this setting.
    fn invalid(&self, origin: Origin<'_>, value: &str, reason: impl Into<String>) -> Invalid {
        let mut reason = reason.into();
        if let Origin::File(path) = origin {
            reason.push_str(&format!(" (set in {})", path.display()));
        }
        Invalid::new(self.name(origin), value, reason)
    }

    /// The error for a required setting that nobody set.
    fn missing(&self, why: &str) -> Invalid {
        Invalid::new(
            self.id,
            "",
            format!(
                "{why}; set {}, {} or {} in the settings file",
                self.flag, self.env, self.id
            ),
        )
    }
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

    /// [`Settings::load`] with the IMDS endpoint variable given.
    pub fn load_with(
        args: &RunArgs,
        matches: Option<&ArgMatches>,
        imds_env: Option<String>,
    ) -> Result<Settings, Invalid> {
        let arg_origin = |key: &Key| match matches.and_then(|m| m.value_source(key.id)) {
            Some(ValueSource::EnvVariable) => Origin::Env,
            Some(ValueSource::DefaultValue) => Origin::Default,
            _ => Origin::Flag,
        };
        let config_name = CONFIG.name(arg_origin(&CONFIG));
        let (file, config_file) = FileSettings::read(args.config.as_deref(), &config_name)?;
        let file_origin = match &config_file {
            Some(path) => Origin::File(path),
            None => Origin::Default,
        };
        // The flag (or its variable) wins over the file.
        fn pick<'a, T: Clone>(
            arg: &Option<T>,
            arg_origin: Origin<'a>,
            file: &Option<T>,
            file_origin: Origin<'a>,
        ) -> Option<(T, Origin<'a>)> {
            match (arg, file) {
                (Some(value), _) => Some((value.clone(), arg_origin)),
                (None, Some(value)) => Some((value.clone(), file_origin)),
                (None, None) => None,
            }
        }

        let (url, origin) = pick(
            &args.coordinator_url,
            arg_origin(&COORDINATOR_URL),
            &file.coordinator_url,
            file_origin,
        )
        .ok_or_else(|| COORDINATOR_URL.missing("is required"))?;
        let coordinator_url = parse_base_url(&url, &["https"])
            .map_err(|why| COORDINATOR_URL.invalid(origin, &url, why))?;

        let ca = match pick(
            &args.ca_file,
            arg_origin(&CA_FILE),
            &file.ca_file,
            file_origin,
        ) {
            Some((ca_file, origin)) => {
                let pem = read_ca(&ca_file)
                    .map_err(|why| CA_FILE.invalid(origin, &ca_file.display().to_string(), why))?;
                Some((ca_file, pem))
            }
            None => None,
        };

        let (cluster, origin) = pick(
            &args.cluster,
            arg_origin(&CLUSTER),
            &file.cluster,
            file_origin,
        )
        .ok_or_else(|| CLUSTER.missing("is required"))?;
        muster_proto::validate::dns_label("cluster", &cluster)
            .map_err(|e| CLUSTER.invalid(origin, &cluster, e.reason))?;

        let state_dir = match pick(
            &args.state_dir,
            arg_origin(&STATE_DIR),
            &file.state_dir,
            file_origin,
        ) {
            Some((dir, origin)) => {
                if dir.as_os_str().is_empty() {
                    return Err(STATE_DIR.invalid(origin, "", "must not be empty"));
                }
                dir
            }
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };

        let join_token = match pick(
            &args.join_token,
            arg_origin(&JOIN_TOKEN),
            &file.join_token,
            file_origin,
        ) {
            Some((token, origin)) => {
                let token = token.trim().to_owned();
                match TokenKind::of(&token) {
                    Some(TokenKind::Join) => Some(Secret::new(token)),
                    Some(other) => {
                        return Err(JOIN_TOKEN.invalid(
                            origin,
                            &redact(&token),
                            format!("is a {other}, not a join token"),
                        ))
                    }
                    None => {
                        return Err(JOIN_TOKEN.invalid(
                            origin,
                            &redact(&token),
                            "must be a join token: \"mjoin_\" and 64 lowercase hex digits",
                        ))
                    }
                }
            }
            None => None,
        };
        if join_token.is_none() && !crate::state::has_credential(&state_dir) {
            return Err(JOIN_TOKEN.missing(&format!(
                "is required until a node credential is stored in {}",
                crate::state::state_file(&state_dir).display()
            )));
        }

        let socket = match pick(&args.socket, arg_origin(&SOCKET), &file.socket, file_origin) {
            Some((socket, origin)) => {
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
                socket
            }
            None => PathBuf::from(DEFAULT_SOCKET),
        };

        let imds_poll_interval = match pick(
            &args.imds_poll_interval,
            arg_origin(&IMDS_POLL_INTERVAL),
            &file.imds_poll_interval,
            file_origin,
        ) {
            Some((text, origin)) => {
                duration_within(text.trim(), MIN_IMDS_POLL_INTERVAL, MAX_IMDS_POLL_INTERVAL)
                    .map_err(|e| {
                        let why = match e {
                            DurationError::NotADuration(why) => {
                                format!("is not a duration such as \"1s\" or \"500ms\": {why}")
                            }
                            DurationError::OutOfRange { .. } => {
                                "must be between 100ms and 60s".to_owned()
                            }
                        };
                        IMDS_POLL_INTERVAL.invalid(origin, &text, why)
                    })?
            }
            None => DEFAULT_IMDS_POLL_INTERVAL,
        };

        let dns_server = match pick(
            &args.dns_server,
            arg_origin(&DNS_SERVER),
            &file.dns_server,
            file_origin,
        ) {
            Some((text, origin)) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
                DNS_SERVER.invalid(
                    origin,
                    &text,
                    "must be an IP address and port, e.g. 10.0.0.2:53 or [fd00::2]:53",
                )
            })?),
            None => None,
        };

        // A flag or variable that says true or false wins over the file.
        let byon_given = match matches.and_then(|m| m.value_source(BYON.id)) {
            Some(ValueSource::CommandLine | ValueSource::EnvVariable) => true,
            Some(_) => false,
            None => args.byon,
        };
        let byon_on = if byon_given {
            args.byon
        } else {
            file.byon.unwrap_or(false)
        };
        let machine_id_file = pick(
            &args.machine_id_file,
            arg_origin(&MACHINE_ID_FILE),
            &file.machine_id_file,
            file_origin,
        );
        let hostname = pick(
            &args.hostname,
            arg_origin(&HOSTNAME),
            &file.hostname,
            file_origin,
        );
        let private_ipv4 = pick(
            &args.private_ipv4,
            arg_origin(&PRIVATE_IPV4),
            &file.private_ipv4,
            file_origin,
        );
        let public_ipv4 = pick(
            &args.public_ipv4,
            arg_origin(&PUBLIC_IPV4),
            &file.public_ipv4,
            file_origin,
        );
        let byon = if byon_on {
            Some(ByonNode {
                machine_id: machine_id(machine_id_file)?,
                hostname: node_hostname(hostname, byon::system_hostname)?,
                private_ipv4: private_ipv4
                    .map(|(text, origin)| parse_ipv4(&PRIVATE_IPV4, origin, &text))
                    .transpose()?,
                public_ipv4: public_ipv4
                    .map(|(text, origin)| parse_ipv4(&PUBLIC_IPV4, origin, &text))
                    .transpose()?,
            })
        } else {
            // Naming the machine means nothing on EC2, where IMDS names it:
            // say so rather than ignore it.
            let stray = [
                machine_id_file.map(|(p, o)| (MACHINE_ID_FILE, o, p.display().to_string())),
                hostname.map(|(v, o)| (HOSTNAME, o, v)),
                private_ipv4.map(|(v, o)| (PRIVATE_IPV4, o, v)),
                public_ipv4.map(|(v, o)| (PUBLIC_IPV4, o, v)),
            ];
            if let Some((key, origin, value)) = stray.into_iter().flatten().next() {
                return Err(key.invalid(
                    origin,
                    &value,
                    format!(
                        "applies only to a bring-your-own node; set {}, {} or {} = true in the settings file",
                        BYON.flag, BYON.env, BYON.id
                    ),
                ));
            }
            None
        };

        // A bring-your-own node never asks IMDS, so the variable is not
        // its business.
        let imds_endpoint = match imds_env {
            Some(text) if byon.is_none() && !text.trim().is_empty() => {
                parse_base_url(&text, &["http", "https"])
                    .map_err(|why| Invalid::new(IMDS_ENDPOINT_ENV, &text, why))?
            }
            _ => DEFAULT_IMDS_ENDPOINT.to_owned(),
        };

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
            config_file,
        })
    }
}

/// Reads and checks the machine id of a bring-your-own node from the file
/// given, or from [`DEFAULT_MACHINE_ID_FILE`].
fn machine_id(given: Option<(PathBuf, Origin<'_>)>) -> Result<String, Invalid> {
    let (path, origin) =
        given.unwrap_or_else(|| (PathBuf::from(DEFAULT_MACHINE_ID_FILE), Origin::Default));
    let shown = path.display().to_string();
    byon::read_machine_id(&path).map_err(|e| {
        let why = match &e {
            ByonError::ReadMachineId { source, .. } => format!("cannot read it: {source}"),
            ByonError::InvalidMachineId { source, .. } => {
                format!("holds {:?}, which {}", source.value, source.reason)
            }
            other => crate::error_chain(other),
        };
        MACHINE_ID_FILE.invalid(origin, &shown, why)
    })
}

/// The node name of a bring-your-own node: the one given, which must be a
/// DNS label as it is, else the first label of the system hostname
/// (`system`), lowercased, which must then be one.
fn node_hostname(
    given: Option<(String, Origin<'_>)>,
    system: impl FnOnce() -> Result<String, ByonError>,
) -> Result<String, Invalid> {
    if let Some((name, origin)) = given {
        let name = name.trim().to_owned();
        muster_proto::validate::dns_label(HOSTNAME.id, &name)
            .map_err(|e| HOSTNAME.invalid(origin, &name, e.reason))?;
        return Ok(name);
    }
    let fix = format!(
        "; set {}, {} or {} in the settings file",
        HOSTNAME.flag, HOSTNAME.env, HOSTNAME.id
    );
    let full = system()
        .map_err(|e| HOSTNAME.invalid(Origin::Default, "", crate::error_chain(&e) + &fix))?;
    let name = byon::node_name(&full);
    muster_proto::validate::dns_label(HOSTNAME.id, &name).map_err(|e| {
        HOSTNAME.invalid(
            Origin::Default,
            &name,
            format!(
                "is the system hostname {full:?} made a node name, which {}{fix}",
                e.reason
            ),
        )
    })?;
    Ok(name)
}

/// Parses an IPv4 a node can be reached at (not loopback, unspecified,
/// broadcast or multicast).
fn parse_ipv4(key: &Key, origin: Origin<'_>, text: &str) -> Result<Ipv4Addr, Invalid> {
    let addr: Ipv4Addr = text
        .trim()
        .parse()
        .map_err(|_| key.invalid(origin, text, "is not an IPv4 address, e.g. 192.168.1.20"))?;
    if addr.is_loopback() {
        return Err(key.invalid(
            origin,
            text,
            "is a loopback address, which neighbours cannot reach",
        ));
    }
    muster_proto::validate::host_ipv4(key.id, addr)
        .map_err(|e| key.invalid(origin, text, e.reason))?;
    Ok(addr)
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
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    const JOIN: &str = "mjoin_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: RunArgs,
    }

    fn ca_file(dir: &Path) -> PathBuf {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, cert.cert.pem()).unwrap();
        path
    }

    fn load(argv: &[&str]) -> Result<Settings, Invalid> {
        let matches = Wrapper::command().try_get_matches_from(argv).unwrap();
        let wrapper = Wrapper::from_arg_matches(&matches).unwrap();
        Settings::load_with(&wrapper.args, Some(&matches), None)
    }

    fn error_text(result: Result<Settings, Invalid>) -> String {
        result.unwrap_err().to_string()
    }

    /// Flags alone make complete settings, with the documented defaults.
    #[test]
    fn flags_make_settings() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let config = dir.path().join("none.toml");
        std::fs::write(&config, "").unwrap();
        let settings = load(&[
            "x",
            "--config",
            config.to_str().unwrap(),
            "--coordinator-url",
            "https://127.0.0.1:7443/",
            "--ca-file",
            ca.to_str().unwrap(),
            "--cluster",
            "web",
            "--join-token",
            JOIN,
            "--dns-server",
            "127.0.0.1:5353",
        ])
        .unwrap();
        assert_eq!(settings.coordinator_url, "https://127.0.0.1:7443");
        assert_eq!(settings.cluster, "web");
        assert_eq!(settings.join_token.as_ref().map(Secret::expose), Some(JOIN));
        assert_eq!(settings.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(settings.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(settings.imds_poll_interval, DEFAULT_IMDS_POLL_INTERVAL);
        assert_eq!(settings.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(settings.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
        assert!(
            !format!("{settings:?}").contains(JOIN),
            "the token leaked into Debug"
        );
    }

    /// The file fills what the flags leave out, and a flag wins over it.
    #[test]
    fn file_and_flags_merge() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "coordinator_url = \"https://coord.example.com\"\nca_file = {:?}\ncluster = \"db\"\n\
                 join_token = \"{JOIN}\"\nimds_poll_interval = \"250ms\"\nstate_dir = \"/tmp/x\"\n",
                ca.to_str().unwrap()
            ),
        )
        .unwrap();
        let settings = load(&[
            "x",
            "--config",
            config.to_str().unwrap(),
            "--cluster",
            "web",
        ])
        .unwrap();
        assert_eq!(settings.coordinator_url, "https://coord.example.com");
        assert_eq!(settings.cluster, "web");
        assert_eq!(settings.imds_poll_interval, Duration::from_millis(250));
        assert_eq!(settings.state_dir, Path::new("/tmp/x"));
        assert_eq!(settings.config_file.as_deref(), Some(config.as_path()));
    }

    /// Bad values are named after their flag or file key and say why.
    #[test]
    fn bad_values_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let ca = ca.to_str().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, "cluster = \"Web\"\n").unwrap();
        let config = config.to_str().unwrap();
        let base = |extra: &[&'static str]| -> Vec<String> {
            let mut argv: Vec<String> = [
                "x",
                "--config",
                config,
                "--coordinator-url",
                "https://c.example.com",
                "--ca-file",
                ca,
                "--join-token",
                JOIN,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            argv.extend(extra.iter().map(|s| s.to_string()));
            argv
        };
        let run = |extra: &[&'static str]| {
            let argv = base(extra);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            error_text(load(&argv))
        };

        let text = run(&[]);
        assert!(
            text.starts_with("cluster=\"Web\" is not valid: may hold only lowercase"),
            "{text}"
        );
        assert!(text.contains(config), "{text}");

        let text = run(&["--cluster", "web", "--imds-poll-interval", "10ms"]);
        assert_eq!(
            text,
            "--imds-poll-interval=\"10ms\" is not valid: must be between 100ms and 60s"
        );
        let text = run(&["--cluster", "web", "--dns-server", "localhost"]);
        assert!(
            text.starts_with("--dns-server=\"localhost\" is not valid"),
            "{text}"
        );
    }

    /// A plain-http or malformed coordinator URL is refused.
    #[test]
    fn coordinator_url_must_be_https() {
        assert!(parse_base_url("http://c.example.com", &["https"]).is_err());
        assert!(parse_base_url("c.example.com", &["https"]).is_err());
        assert!(parse_base_url("https://u:p@c.example.com", &["https"]).is_err());
        assert_eq!(
            parse_base_url("https://c.example.com:7443/", &["https"]).unwrap(),
            "https://c.example.com:7443"
        );
    }

    /// A wrong kind of secret is refused without echoing it.
    #[test]
    fn join_token_shape_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let node = JOIN.replace("mjoin_", "mnode_");
        let text = error_text(load(&[
            "x",
            "--config",
            config.to_str().unwrap(),
            "--coordinator-url",
            "https://c.example.com",
            "--ca-file",
            ca.to_str().unwrap(),
            "--cluster",
            "web",
            "--join-token",
            &node,
        ]));
        assert_eq!(
            text,
            "--join-token=\"mnode_…\" is not valid: is a node credential, not a join token"
        );
    }

    /// Without a join token and without a stored credential the agent could
    /// never register, so the settings are refused.
    #[test]
    fn join_token_needed_without_credential() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let state = dir.path().join("state");
        let text = error_text(load(&[
            "x",
            "--config",
            config.to_str().unwrap(),
            "--coordinator-url",
            "https://c.example.com",
            "--ca-file",
            ca.to_str().unwrap(),
            "--cluster",
            "web",
            "--state-dir",
            state.to_str().unwrap(),
        ]));
        assert!(
            text.starts_with("join_token=\"\" is not valid: is required"),
            "{text}"
        );
    }

    /// A given settings file must exist; a CA file must hold a certificate.
    #[test]
    fn files_must_be_usable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let text = error_text(load(&["x", "--config", missing.to_str().unwrap()]));
        assert!(text.starts_with("--config="), "{text}");
        assert!(text.contains("cannot read it"), "{text}");

        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let text = error_text(load(&[
            "x",
            "--config",
            config.to_str().unwrap(),
            "--coordinator-url",
            "https://c.example.com",
            "--ca-file",
            not_pem.to_str().unwrap(),
        ]));
        assert!(text.starts_with("--ca-file="), "{text}");
        assert!(text.ends_with("holds no PEM certificate"), "{text}");
    }

    /// Unknown keys in the file are refused, so typos do not pass silently.
    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, "coordinator = \"https://x\"\n").unwrap();
        let text = error_text(load(&["x", "--config", config.to_str().unwrap()]));
        assert!(text.contains("unknown field"), "{text}");
    }

    const MACHINE_ID: &str = "0123456789abcdef0123456789abcdef";

    /// Flags for a complete bring-your-own agent in `dir` (with a good
    /// machine-id file unless `extra` names one), then `extra`.
    fn byon_argv(dir: &Path, extra: &[&str]) -> Vec<String> {
        let ca = ca_file(dir);
        let config = dir.join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let machine_id = dir.join("machine-id");
        if !machine_id.exists() {
            std::fs::write(&machine_id, format!("{MACHINE_ID}\n")).unwrap();
        }
        let mut argv: Vec<String> = [
            "x",
            "--config",
            config.to_str().unwrap(),
            "--coordinator-url",
            "https://c.example.com",
            "--ca-file",
            ca.to_str().unwrap(),
            "--cluster",
            "web",
            "--join-token",
            JOIN,
            "--byon",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.contains(&"--machine-id-file") {
            argv.extend([
                "--machine-id-file".to_owned(),
                machine_id.display().to_string(),
            ]);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    fn load_byon(dir: &Path, extra: &[&str]) -> Result<Settings, Invalid> {
        let argv = byon_argv(dir, extra);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        load(&argv)
    }

    /// `--byon` reads the machine id (trimmed) and takes the given hostname
    /// and addresses; a bad IMDS variable is none of its business.
    #[test]
    fn byon_flags_make_settings() {
        let dir = tempfile::tempdir().unwrap();
        let argv = byon_argv(
            dir.path(),
            &[
                "--hostname",
                "build-7",
                "--private-ipv4",
                "192.168.1.20",
                "--public-ipv4",
                "203.0.113.7",
            ],
        );
        let matches = Wrapper::command().try_get_matches_from(&argv).unwrap();
        let wrapper = Wrapper::from_arg_matches(&matches).unwrap();
        let settings =
            Settings::load_with(&wrapper.args, Some(&matches), Some("not a url".into())).unwrap();
        let node = settings.byon.expect("bring-your-own");
        assert_eq!(node.machine_id, MACHINE_ID);
        assert_eq!(node.node_id(), format!("m-{MACHINE_ID}"));
        assert_eq!(node.hostname, "build-7");
        assert_eq!(node.private_ipv4, Some(Ipv4Addr::new(192, 168, 1, 20)));
        assert_eq!(node.public_ipv4, Some(Ipv4Addr::new(203, 0, 113, 7)));

        // Without --private-ipv4 the address is read from the machine as
        // the agent runs.
        let settings = load_byon(dir.path(), &["--hostname", "build-7"]).unwrap();
        assert_eq!(settings.byon.unwrap().private_ipv4, None);
    }

    /// `byon = true` in the file turns the mode on, with its keys; without
    /// it the agent is an EC2 agent.
    #[test]
    fn byon_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let machine_id = dir.path().join("machine-id");
        std::fs::write(&machine_id, MACHINE_ID).unwrap();
        let config = dir.path().join("agent.toml");
        let common = format!(
            "coordinator_url = \"https://c.example.com\"\nca_file = {:?}\ncluster = \"web\"\n\
             join_token = \"{JOIN}\"\nmachine_id_file = {:?}\nhostname = \"db-2\"\n",
            ca.to_str().unwrap(),
            machine_id.to_str().unwrap()
        );
        std::fs::write(&config, format!("{common}byon = true\n")).unwrap();
        let settings = load(&["x", "--config", config.to_str().unwrap()]).unwrap();
        assert_eq!(settings.byon.unwrap().hostname, "db-2");

        // The keys alone, without byon = true, are refused by name.
        std::fs::write(&config, &common).unwrap();
        let text = error_text(load(&["x", "--config", config.to_str().unwrap()]));
        assert!(
            text.starts_with("machine_id_file=") && text.contains("only to a bring-your-own node"),
            "{text}"
        );
        assert!(text.contains(config.to_str().unwrap()), "{text}");
    }

    /// Every bring-your-own value is checked and named: an unreadable or
    /// malformed machine-id file, a hostname that is not a DNS label,
    /// addresses that are not usable IPv4s.
    #[test]
    fn bad_byon_values_name_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let text = error_text(load_byon(
            dir.path(),
            &[
                "--hostname",
                "h",
                "--machine-id-file",
                missing.to_str().unwrap(),
            ],
        ));
        assert!(
            text.starts_with(&format!(
                "--machine-id-file={:?} is not valid: cannot read it:",
                missing.to_str().unwrap()
            )),
            "{text}"
        );

        let bad = dir.path().join("bad-id");
        std::fs::write(&bad, "not-a-machine-id\n").unwrap();
        let text = error_text(load_byon(
            dir.path(),
            &[
                "--hostname",
                "h",
                "--machine-id-file",
                bad.to_str().unwrap(),
            ],
        ));
        assert_eq!(
            text,
            format!(
                "--machine-id-file={:?} is not valid: holds \"not-a-machine-id\", which must be \
                 32 lowercase hex digits, not all zero (/etc/machine-id)",
                bad.to_str().unwrap()
            )
        );

        let cases: [(&[&str], &str); 5] = [
            (
                &["--hostname", "Build_7"],
                "--hostname=\"Build_7\" is not valid: may hold only lowercase letters, digits and '-'",
            ),
            (
                &["--hostname", "a.b"],
                "--hostname=\"a.b\" is not valid: may hold only lowercase letters, digits and '-'",
            ),
            (
                &["--hostname", "h", "--private-ipv4", "10.0.0"],
                "--private-ipv4=\"10.0.0\" is not valid: is not an IPv4 address, e.g. 192.168.1.20",
            ),
            (
                &["--hostname", "h", "--private-ipv4", "127.0.0.1"],
                "--private-ipv4=\"127.0.0.1\" is not valid: is a loopback address, which neighbours cannot reach",
            ),
            (
                &["--hostname", "h", "--public-ipv4", "0.0.0.0"],
                "--public-ipv4=\"0.0.0.0\" is not valid: must not be the unspecified address",
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(error_text(load_byon(dir.path(), extra)), want, "{extra:?}");
        }
    }

    /// Without `--byon`, a flag that only a bring-your-own node uses is
    /// refused rather than ignored.
    #[test]
    fn byon_flags_need_byon() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let config = dir.path().join("empty.toml");
        std::fs::write(&config, "").unwrap();
        let text = error_text(load(&[
            "x",
            "--config",
            config.to_str().unwrap(),
            "--coordinator-url",
            "https://c.example.com",
            "--ca-file",
            ca.to_str().unwrap(),
            "--cluster",
            "web",
            "--join-token",
            JOIN,
            "--private-ipv4",
            "10.1.2.3",
        ]));
        assert_eq!(
            text,
            "--private-ipv4=\"10.1.2.3\" is not valid: applies only to a bring-your-own node; \
             set --byon, MUSTER_AGENT_BYON or byon = true in the settings file"
        );
    }

    /// The default node name is the system hostname's first label,
    /// lowercased; one that cannot be a DNS label is refused, asking for
    /// --hostname.
    #[test]
    fn hostname_defaults_to_the_system_one() {
        let name = node_hostname(None, || Ok("Build-7.corp.example.com".into())).unwrap();
        assert_eq!(name, "build-7");
        let text = node_hostname(None, || Ok("my_box.lan".into()))
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with(
                "hostname=\"my_box\" is not valid: is the system hostname \"my_box.lan\""
            ),
            "{text}"
        );
        assert!(text.contains("set --hostname"), "{text}");
        let text = node_hostname(None, || Ok(String::new()))
            .unwrap_err()
            .to_string();
        assert!(text.contains("must not be empty"), "{text}");
    }

    /// The IMDS endpoint variable is checked like any other setting.
    #[test]
    fn imds_endpoint_is_checked() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:1338/", &["http", "https"]).unwrap(),
            "http://127.0.0.1:1338"
        );
        assert!(parse_base_url("ftp://127.0.0.1", &["http", "https"]).is_err());
    }
}
