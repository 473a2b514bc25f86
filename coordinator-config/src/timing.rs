//! How often the coordinator acts and how long it waits: the heartbeat
//! interval handed to agents, the grace before a silent node is
//! unreachable, the EC2 sweep and its cache, the launch timeout, and how
//! long history is kept.

use std::time::Duration;

use muster_proto::settings::Invalid;

use crate::sources::Given;
use crate::{duration, number};
use crate::{
    DEFAULT_GRACE, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LAUNCH_TIMEOUT, DEFAULT_RETENTION,
    DEFAULT_SWEEP_INTERVAL, DEFAULT_UNKNOWN_SWEEPS,
};

/// The settings of this concern, checked.
#[derive(Debug)]
pub(crate) struct Timing {
    pub heartbeat_interval: Duration,
    pub grace: Duration,
    pub sweep_interval: Duration,
    pub ec2_cache_refresh: Option<Duration>,
    pub unknown_sweeps: u32,
    pub launch_timeout: Duration,
    pub retention: Duration,
}

/// Checks each within its bounds, and that the grace outlasts the
/// longest wait between two heartbeats.
pub(crate) fn resolve(given: &Given) -> Result<Timing, Invalid> {
    let heartbeat_interval = duration(
        "heartbeat_interval",
        given.heartbeat_interval.clone(),
        DEFAULT_HEARTBEAT_INTERVAL,
        (Duration::from_secs(1), Duration::from_secs(300)),
    )?;
    let grace = grace(given.grace.clone(), heartbeat_interval)?;
    let sweep_interval = duration(
        "sweep_interval",
        given.sweep_interval.clone(),
        DEFAULT_SWEEP_INTERVAL,
        (Duration::from_secs(1), Duration::from_secs(3600)),
    )?;
    let ec2_cache_refresh = match given.ec2_cache_refresh.clone() {
        Some(text) if text == "off" => None,
        text @ Some(_) => Some(duration(
            "ec2_cache_refresh",
            text,
            Duration::ZERO,
            (Duration::from_secs(5), Duration::from_secs(3600)),
        )?),
        None => None,
    };
    let unknown_sweeps = number(
        "unknown_sweeps",
        given.unknown_sweeps.clone(),
        DEFAULT_UNKNOWN_SWEEPS,
        1..=100,
        "must be between 1 and 100",
    )?;
    let launch_timeout = duration(
        "launch_timeout",
        given.launch_timeout.clone(),
        DEFAULT_LAUNCH_TIMEOUT,
        (Duration::from_secs(1), Duration::from_secs(24 * 3600)),
    )?;
    let retention = duration(
        "retention",
        given.retention.clone(),
        DEFAULT_RETENTION,
        (
            Duration::from_secs(60),
            Duration::from_secs(3650 * 24 * 3600),
        ),
    )?;
    Ok(Timing {
        retention,
        heartbeat_interval,
        grace,
        sweep_interval,
        ec2_cache_refresh,
        unknown_sweeps,
        launch_timeout,
    })
}

/// The grace: within bounds, and longer than agents may wait between two
/// heartbeats.
fn grace(text: Option<String>, heartbeat_interval: Duration) -> Result<Duration, Invalid> {
    let grace = duration(
        "grace",
        text.clone(),
        DEFAULT_GRACE,
        (Duration::from_secs(1), Duration::from_secs(3600)),
    )?;
    // Agents wait up to interval + 10 % jitter between heartbeats.
    let longest_wait = heartbeat_interval + heartbeat_interval / 10;
    if grace <= longest_wait {
        return Err(Invalid::whole(
            "grace",
            text.unwrap_or_else(|| humantime::format_duration(grace).to_string()),
            format!(
                "must be longer than the heartbeat interval plus its jitter ({})",
                humantime::format_duration(longest_wait)
            ),
        ));
    }
    Ok(grace)
}
