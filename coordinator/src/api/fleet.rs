//! The fleet's last hour, kept in memory for the console's chart: every
//! [`SAMPLE_INTERVAL`] the nodes by state and the heartbeats per second
//! since the sample before, [`KEPT`] samples at most. Nothing of it is
//! stored: a restart starts the hour again, and Prometheus keeps the
//! long view.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use muster_proto::status::{FleetHistory, FleetSample};

use crate::registry::Registry;

/// Time between samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: an hour's worth.
pub const KEPT: usize = 360;

/// The samples, and the heartbeat count the next rate starts from.
#[derive(Debug, Default)]
pub struct FleetRecorder {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    samples: VecDeque<FleetSample>,
    /// The heartbeat counter at the last sample, and when.
    last: Option<(u64, Instant)>,
}

impl FleetRecorder {
    /// Takes one sample of `registry` now.
    pub fn sample(&self, registry: &Registry) {
        let heartbeats = registry.counters.heartbeats.load(Ordering::Relaxed);
        let states: BTreeMap<_, _> = registry
            .nodes_by_state()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        let now = Instant::now();
        let at_unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let heartbeats_per_second = match inner.last {
            Some((before, then)) if now > then => {
                heartbeats.saturating_sub(before) as f64 / (now - then).as_secs_f64()
            }
            _ => 0.0,
        };
        inner.last = Some((heartbeats, now));
        if inner.samples.len() == KEPT {
            inner.samples.pop_front();
        }
        inner.samples.push_back(FleetSample {
            at_unix,
            states,
            heartbeats_per_second: (heartbeats_per_second * 100.0).round() / 100.0,
        });
    }

    /// The samples so far, oldest first.
    pub fn history(&self) -> FleetHistory {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        FleetHistory {
            interval_secs: SAMPLE_INTERVAL.as_secs(),
            samples: inner.samples.iter().cloned().collect(),
        }
    }

    /// Samples `registry` every [`SAMPLE_INTERVAL`], the first at once,
    /// until the task is dropped.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>) {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample(&registry);
        }
    }
}
