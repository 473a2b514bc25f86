//! The `[[check]]` tables of the settings file, read into the
//! [`Check`]s the agent runs ([`crate::checks`]). Checks come only from the
//! file. A bad value stops the agent at start and is named after its check
//! and key: `check "web": interval="0s" is not valid: …`, or by position,
//! `check #2: name="Web" …`, while the check has no usable name.

use std::net::SocketAddr;
use std::time::Duration;

use muster_proto::condition::MAX_CHECKS;
use muster_proto::settings::{duration_within, DurationError, Invalid};
use serde::Deserialize;

use super::sources::{Origin, Sources};
use crate::checks::{
    Check, Probe, DEFAULT_FAILURES, DEFAULT_INTERVAL, DEFAULT_SUCCESSES, DEFAULT_TIMEOUT,
    MAX_INTERVAL, MAX_READ, MAX_THRESHOLD, MAX_TIMEOUT, MIN_INTERVAL, MIN_TIMEOUT,
};

/// One `[[check]]` table of the settings file, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCheck {
    /// The check's name: a DNS label, unique among the checks. Required.
    pub name: Option<String>,
    /// The URL to GET (http or https); 2xx and 3xx pass.
    pub http: Option<String>,
    /// `host:port` or `ip:port` to connect to.
    pub tcp: Option<String>,
    /// The program (an absolute path) and its arguments, run without a
    /// shell; exit 0 passes.
    pub command: Option<Vec<String>>,
    /// For an http check: text the body must hold.
    pub expect_body: Option<String>,
    /// How often it runs, 1s to 1h. [default: 10s]
    pub interval: Option<String>,
    /// How long a run may take, 100ms to 60s and at most the interval.
    /// [default: 2s, or the interval if that is shorter]
    pub timeout: Option<String>,
    /// Failed runs in a row that make it fail, 1 to 100. [default: 3]
    pub failures: Option<i64>,
    /// Successful runs in a row that make it pass, 1 to 100. [default: 1]
    pub successes: Option<i64>,
}

/// The checks of the settings file, in its order, each checked.
pub(super) fn resolve(src: &Sources<'_>) -> Result<Vec<Check>, Invalid> {
    let tables = &src.file.check;
    let origin = src.file_origin();
    if tables.len() > MAX_CHECKS {
        return Err(origin.invalid(
            "check",
            &format!("{} tables", tables.len()),
            format!("a node may have at most {MAX_CHECKS} checks"),
        ));
    }
    let mut checks: Vec<Check> = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let check = resolve_one(table, i + 1, &checks, origin)?;
        checks.push(check);
    }
    Ok(checks)
}

/// The `number`th check (from 1), which must not reuse a name of the
/// `earlier` ones.
fn resolve_one(
    table: &FileCheck,
    number: usize,
    earlier: &[Check],
    origin: Origin<'_>,
) -> Result<Check, Invalid> {
    let at_name = format!("check #{number}: name");
    let name = table.name.as_deref().ok_or_else(|| {
        origin.invalid(
            &at_name,
            "",
            "is required: a DNS label, unique among the checks",
        )
    })?;
    muster_proto::validate::dns_label("name", name)
        .map_err(|e| origin.invalid(&at_name, name, e.reason))?;
    if let Some(other) = earlier.iter().position(|check| check.name == name) {
        return Err(origin.invalid(
            &at_name,
            name,
            format!(
                "is the name of check #{} too; each check needs a name of its own",
                other + 1
            ),
        ));
    }
    let table_at = Table { name, origin };

    let probe = probe(table, &table_at)?;
    let interval = match &table.interval {
        Some(text) => table_at.duration("interval", text, MIN_INTERVAL, MAX_INTERVAL)?,
        None => DEFAULT_INTERVAL,
    };
    let timeout = match &table.timeout {
        Some(text) => {
            let timeout = table_at.duration("timeout", text, MIN_TIMEOUT, MAX_TIMEOUT)?;
            if timeout > interval {
                return Err(table_at.invalid(
                    "timeout",
                    text,
                    format!(
                        "must not be longer than the interval, {}",
                        humantime::format_duration(interval)
                    ),
                ));
            }
            timeout
        }
        // A short interval shortens the default timeout with it.
        None => DEFAULT_TIMEOUT.min(interval),
    };
    let failures = table_at.threshold("failures", table.failures, DEFAULT_FAILURES)?;
    let successes = table_at.threshold("successes", table.successes, DEFAULT_SUCCESSES)?;
    Ok(Check {
        name: name.to_owned(),
        probe,
        interval,
        timeout,
        failures,
        successes,
    })
}

/// A check with a good name, to name its bad values after.
#[derive(Debug, Clone, Copy)]
struct Table<'a> {
    /// The check's name.
    name: &'a str,
    /// The settings file it is in.
    origin: Origin<'a>,
}

impl Table<'_> {
    /// The error for `value` of this check's `key`.
    fn invalid(&self, key: &str, value: &str, reason: impl Into<String>) -> Invalid {
        self.origin
            .invalid(format!("check {:?}: {key}", self.name), value, reason)
    }

    /// The duration `key` holds, between `min` and `max`.
    fn duration(
        &self,
        key: &str,
        text: &str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, Invalid> {
        duration_within(text.trim(), min, max).map_err(|e| {
            let why = match e {
                DurationError::NotADuration(why) => {
                    format!("is not a duration such as \"10s\" or \"500ms\": {why}")
                }
                DurationError::OutOfRange { .. } => e.to_string(),
            };
            self.invalid(key, text, why)
        })
    }

    /// The threshold `key` holds, 1 to [`MAX_THRESHOLD`], or `default`.
    fn threshold(&self, key: &str, given: Option<i64>, default: u32) -> Result<u32, Invalid> {
        let Some(given) = given else {
            return Ok(default);
        };
        u32::try_from(given)
            .ok()
            .filter(|n| (1..=MAX_THRESHOLD).contains(n))
            .ok_or_else(|| {
                self.invalid(
                    key,
                    &given.to_string(),
                    format!("must be a count of runs in a row, 1 to {MAX_THRESHOLD}"),
                )
            })
    }
}

/// What the check does: exactly one of `http`, `tcp` and `command`, and
/// `expect_body` only with `http`.
fn probe(table: &FileCheck, at: &Table<'_>) -> Result<Probe, Invalid> {
    let given: Vec<(&str, String)> = [
        ("http", table.http.clone()),
        ("tcp", table.tcp.clone()),
        ("command", table.command.as_ref().map(|argv| argv.join(" "))),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|value| (key, value)))
    .collect();
    match given.as_slice() {
        [] => return Err(at.invalid("http", "", "a check needs one of http, tcp or command")),
        [_] => {}
        [(first, _), (second, value), ..] => {
            return Err(at.invalid(
                second,
                value,
                format!(
                    "is given beside {first}; a check does exactly one of http, tcp or command"
                ),
            ))
        }
    }
    if let (Some(wanted), None) = (&table.expect_body, &table.http) {
        return Err(at.invalid("expect_body", wanted, "applies only to an http check"));
    }
    if let Some(url) = &table.http {
        let url = http_url(url).map_err(|why| at.invalid("http", url, why))?;
        let expect_body = match &table.expect_body {
            Some(wanted) if wanted.is_empty() => {
                return Err(at.invalid(
                    "expect_body",
                    wanted,
                    "must not be empty; leave it out to accept any body",
                ))
            }
            Some(wanted) if wanted.len() > MAX_READ => {
                return Err(at.invalid(
                    "expect_body",
                    wanted,
                    "is longer than the 64 KiB of the body that is read",
                ))
            }
            other => other.clone(),
        };
        return Ok(Probe::Http { url, expect_body });
    }
    if let Some(target) = &table.tcp {
        let (host, port) = tcp_target(target).map_err(|why| at.invalid("tcp", target, why))?;
        return Ok(Probe::Tcp { host, port });
    }
    let argv = table.command.clone().unwrap_or_default();
    let Some(program) = argv.first() else {
        return Err(at.invalid(
            "command",
            "[]",
            "must name a program (an absolute path), then its arguments",
        ));
    };
    if !program.starts_with('/') {
        return Err(at.invalid(
            "command[0]",
            program,
            "must be an absolute path, such as /usr/local/bin/check-disk: \
             the command runs without a shell or a PATH search",
        ));
    }
    if let Some(i) = argv.iter().position(|arg| arg.contains('\0')) {
        return Err(at.invalid(
            &format!("command[{i}]"),
            &argv[i],
            "holds a NUL byte, which no argument can",
        ));
    }
    Ok(Probe::Command { argv })
}

/// Checks the URL of an http check: http or https, with a host, and no
/// user name or password (they would show wherever the settings do).
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".to_owned());
    }
    Ok(url)
}

/// Checks the target of a tcp check, `host:port` or `ip:port` (an IPv6
/// address in brackets), and splits it.
fn tcp_target(text: &str) -> Result<(String, u16), String> {
    const SHAPE: &str = "must be host:port or ip:port, such as 127.0.0.1:5432, \
                         db.internal:5432 or [::1]:5432";
    let text = text.trim();
    let (host, port) = match text.parse::<SocketAddr>() {
        Ok(addr) => (addr.ip().to_string(), addr.port()),
        Err(_) => {
            let (host, port) = text.rsplit_once(':').ok_or(SHAPE)?;
            let port = port.parse::<u16>().map_err(|_| SHAPE)?;
            if !is_host_name(host) {
                return Err(SHAPE.to_owned());
            }
            (host.to_owned(), port)
        }
    };
    if port == 0 {
        return Err("must name a port other than 0".to_owned());
    }
    Ok((host, port))
}

/// Whether `host` can be a DNS name: dot-separated labels of letters,
/// digits, `-` and `_`, each 1 to 63 characters, at most 253 in all (a
/// final dot allowed).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
