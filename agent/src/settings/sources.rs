//! Where each setting of `muster-agent run` comes from, and what it is
//! called there: a flag (`--cluster`), its variable
//! (`MUSTER_AGENT_CLUSTER`) or a key of the settings file (`cluster`). A
//! bad value is reported under the name the operator used, with the file
//! it was set in.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;
use muster_proto::settings::Invalid;

use super::{FileSettings, RunArgs};

/// Where a value came from, to name it in an error.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin<'a> {
    Flag,
    Env,
    File(&'a Path),
    Default,
}

impl Origin<'_> {
    /// The error for `value` of the setting called `name` where it came
    /// from; one set in the file says which file.
    pub fn invalid(
        self,
        name: impl Into<String>,
        value: &str,
        reason: impl Into<String>,
    ) -> Invalid {
        let mut reason = reason.into();
        if let Origin::File(path) = self {
            reason.push_str(&format!(" (set in {})", path.display()));
        }
        Invalid::new(name, value, reason)
    }
}

/// One setting's names in each source.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    /// The clap id and file key.
    pub id: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
}

impl Key {
    const fn new(id: &'static str, flag: &'static str, env: &'static str) -> Key {
        Key { id, flag, env }
    }

    fn name(&self, origin: Origin<'_>) -> String {
        match origin {
            Origin::Flag => self.flag.to_owned(),
            Origin::Env => self.env.to_owned(),
            Origin::File(_) | Origin::Default => self.id.to_owned(),
        }
    }

    /// The error for a value of this setting.
    pub fn invalid(&self, origin: Origin<'_>, value: &str, reason: impl Into<String>) -> Invalid {
        origin.invalid(self.name(origin), value, reason)
    }

    /// The error for a required setting that nobody set.
    pub fn missing(&self, why: &str) -> Invalid {
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

pub(super) const COORDINATOR_URL: Key = Key::new(
    "coordinator_url",
    "--coordinator-url",
    "MUSTER_AGENT_COORDINATOR_URL",
);
pub(super) const CA_FILE: Key = Key::new("ca_file", "--ca-file", "MUSTER_AGENT_CA_FILE");
pub(super) const CLUSTER: Key = Key::new("cluster", "--cluster", "MUSTER_AGENT_CLUSTER");
pub(super) const JOIN_TOKEN: Key =
    Key::new("join_token", "--join-token", "MUSTER_AGENT_JOIN_TOKEN");
pub(super) const JOIN_TOKEN_FILE: Key = Key::new(
    "join_token_file",
    "--join-token-file",
    "MUSTER_AGENT_JOIN_TOKEN_FILE",
);
pub(super) const STATE_DIR: Key = Key::new("state_dir", "--state-dir", "MUSTER_AGENT_STATE_DIR");
pub(super) const SOCKET: Key = Key::new("socket", "--socket", "MUSTER_AGENT_SOCKET");
pub(super) const IMDS_POLL_INTERVAL: Key = Key::new(
    "imds_poll_interval",
    "--imds-poll-interval",
    "MUSTER_AGENT_IMDS_POLL_INTERVAL",
);
pub(super) const DNS_SERVER: Key =
    Key::new("dns_server", "--dns-server", "MUSTER_AGENT_DNS_SERVER");
pub(super) const BYON: Key = Key::new("byon", "--byon", "MUSTER_AGENT_BYON");
pub(super) const DRAIN_WAIT: Key =
    Key::new("drain_wait", "--drain-wait", "MUSTER_AGENT_DRAIN_WAIT");
pub(super) const DRAIN_ON_NOTICE: Key = Key::new(
    "drain_on_notice",
    "--drain-on-notice",
    "MUSTER_AGENT_DRAIN_ON_NOTICE",
);
pub(super) const MACHINE_ID_FILE: Key = Key::new(
    "machine_id_file",
    "--machine-id-file",
    "MUSTER_AGENT_MACHINE_ID_FILE",
);
pub(super) const HOSTNAME: Key = Key::new("hostname", "--hostname", "MUSTER_AGENT_HOSTNAME");
pub(super) const PRIVATE_IPV4: Key = Key::new(
    "private_ipv4",
    "--private-ipv4",
    "MUSTER_AGENT_PRIVATE_IPV4",
);
pub(super) const PUBLIC_IPV4: Key =
    Key::new("public_ipv4", "--public-ipv4", "MUSTER_AGENT_PUBLIC_IPV4");
const CONFIG: Key = Key::new("config", "--config", "MUSTER_AGENT_CONFIG");

/// The flags (with their matches, to tell a flag from its variable) and
/// the settings file they name.
#[derive(Debug)]
pub(super) struct Sources<'a> {
    pub args: &'a RunArgs,
    matches: Option<&'a ArgMatches>,
    pub file: FileSettings,
    /// The settings file that was read, if any.
    pub config_file: Option<PathBuf>,
}

impl<'a> Sources<'a> {
    /// Reads the settings file the flags name (or the default one).
    pub fn read(args: &'a RunArgs, matches: Option<&'a ArgMatches>) -> Result<Self, Invalid> {
        let mut sources = Sources {
            args,
            matches,
            file: FileSettings::default(),
            config_file: None,
        };
        let config_name = CONFIG.name(sources.arg_origin(&CONFIG));
        (sources.file, sources.config_file) =
            FileSettings::read(args.config.as_deref(), &config_name)?;
        Ok(sources)
    }

    /// Where the flag value of `key` came from: the command line or its
    /// variable.
    fn arg_origin(&self, key: &Key) -> Origin<'static> {
        match self.matches.and_then(|m| m.value_source(key.id)) {
            Some(ValueSource::EnvVariable) => Origin::Env,
            Some(ValueSource::DefaultValue) => Origin::Default,
            _ => Origin::Flag,
        }
    }

    /// The value of `key`, and where it came from: the flag (or its
    /// variable) `arg` wins over the file's `file`.
    pub fn pick<T: Clone>(
        &self,
        key: &Key,
        arg: &Option<T>,
        file: &Option<T>,
    ) -> Option<(T, Origin<'_>)> {
        match (arg, file) {
            (Some(value), _) => Some((value.clone(), self.arg_origin(key))),
            (None, Some(value)) => Some((value.clone(), self.file_origin())),
            (None, None) => None,
        }
    }

    /// Where a value of the settings file came from.
    pub fn file_origin(&self) -> Origin<'_> {
        match &self.config_file {
            Some(path) => Origin::File(path),
            None => Origin::Default,
        }
    }

    /// Whether the node is a bring-your-own one ([`Sources::switch`]).
    pub fn byon(&self) -> bool {
        self.switch(&BYON, self.args.byon, self.file.byon)
    }

    /// An on/off setting: a flag or variable that says true or false
    /// (`arg`) wins over the file's value; off when neither says.
    pub fn switch(&self, key: &Key, arg: bool, file: Option<bool>) -> bool {
        let given = match self.matches.and_then(|m| m.value_source(key.id)) {
            Some(ValueSource::CommandLine | ValueSource::EnvVariable) => true,
            Some(_) => false,
            None => arg,
        };
        if given {
            arg
        } else {
            file.unwrap_or(false)
        }
    }
}
