//! What no single client may exhaust: the API's connections (in total and
//! per source address), how long a connection may take over its TLS
//! handshake, over a request's headers and idle between requests; and how
//! many DNS answers one network may get a second.
//!
//! The idle timeout must outlast the wait between two heartbeats by far,
//! or every heartbeat pays a new TLS handshake: unset, it is the larger of
//! [`DEFAULT_IDLE_TIMEOUT`] and twice the heartbeat interval, and set, it
//! must be at least twice the heartbeat interval.

use std::time::Duration;

use muster_proto::settings::Invalid;

use crate::sources::Given;
use crate::{duration, number};
use crate::{
    DEFAULT_DNS_RATE_LIMIT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
};

/// The bounds on what one client may hold or ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open API connections at most, handshaking ones included.
    pub max_connections: u32,
    /// Open API connections from one source address at most; 0 is no
    /// limit.
    pub max_connections_per_source: u32,
    /// Time a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Time a request's headers may take to arrive: the first request's
    /// counted from the end of the handshake, a later one's from its first
    /// byte.
    pub header_timeout: Duration,
    /// Time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// DNS answers a second to one source network (IPv4 /24, IPv6 /56)
    /// over UDP; 0 is no limit.
    pub dns_rate_limit: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            dns_rate_limit: DEFAULT_DNS_RATE_LIMIT,
        }
    }
}

/// Checks each, in the order of the fields; the idle timeout against the
/// `heartbeat_interval`.
pub(crate) fn resolve(given: &Given, heartbeat_interval: Duration) -> Result<Limits, Invalid> {
    let max_connections = number(
        "max_connections",
        given.max_connections.clone(),
        DEFAULT_MAX_CONNECTIONS,
        16..=1_000_000,
        "must be between 16 and 1000000 connections",
    )?;
    let max_connections_per_source = number(
        "max_connections_per_source",
        given.max_connections_per_source.clone(),
        DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        0..=1_000_000,
        "must be between 0 (no limit) and 1000000 connections",
    )?;
    let tls_handshake_timeout = duration(
        "tls_handshake_timeout",
        given.tls_handshake_timeout.clone(),
        DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        (Duration::from_secs(1), Duration::from_secs(60)),
    )?;
    let header_timeout = duration(
        "header_timeout",
        given.header_timeout.clone(),
        DEFAULT_HEADER_TIMEOUT,
        (Duration::from_secs(1), Duration::from_secs(60)),
    )?;
    let idle_timeout = idle_timeout(given.idle_timeout.clone(), heartbeat_interval)?;
    let dns_rate_limit = number(
        "dns_rate_limit",
        given.dns_rate_limit.clone(),
        DEFAULT_DNS_RATE_LIMIT,
        0..=1_000_000,
        "must be between 0 (no limit) and 1000000 answers per second",
    )?;
    Ok(Limits {
        max_connections,
        max_connections_per_source,
        tls_handshake_timeout,
        header_timeout,
        idle_timeout,
        dns_rate_limit,
    })
}

/// The idle timeout: unset, the default or twice the heartbeat interval,
/// whichever is longer; set, within bounds and at least twice the
/// heartbeat interval, so that an agent's connection outlives the wait
/// between two heartbeats (the interval plus 10 % jitter) with room to
/// spare.
fn idle_timeout(text: Option<String>, heartbeat_interval: Duration) -> Result<Duration, Invalid> {
    let shortest = 2 * heartbeat_interval;
    let Some(text) = text else {
        return Ok(DEFAULT_IDLE_TIMEOUT.max(shortest));
    };
    let idle = duration(
        "idle_timeout",
        Some(text.clone()),
        DEFAULT_IDLE_TIMEOUT,
        (Duration::from_secs(1), Duration::from_secs(3600)),
    )?;
    if idle < shortest {
        return Err(Invalid::whole(
            "idle_timeout",
            text,
            format!(
                "must be at least twice the heartbeat interval ({}), or agents \
                 reconnect for every heartbeat",
                humantime::format_duration(shortest)
            ),
        ));
    }
    Ok(idle)
}
