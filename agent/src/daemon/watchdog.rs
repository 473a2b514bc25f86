//! The systemd watchdog: pinged from the daemon's main loop whenever it
//! waits, so that a loop stuck in a step stops pinging and systemd restarts
//! the agent.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::{Interval, MissedTickBehavior};
use tracing::info;

use super::notify;

/// Pings the systemd watchdog, if systemd asked for it, at most every half
/// interval. Only the main loop holds it, and pings only while it waits.
#[derive(Debug)]
pub(super) struct Watchdog {
    pings: Option<Interval>,
}

impl Watchdog {
    /// The watchdog systemd asked for with `WATCHDOG_USEC` and
    /// `WATCHDOG_PID` (this process), or one that never pings.
    pub fn from_env() -> Self {
        let mut usec = 0;
        let every = if sd_notify::watchdog_enabled(false, &mut usec) {
            ping_interval(usec)
        } else {
            None
        };
        if let Some(every) = every {
            info!(?every, "the systemd watchdog is on; pinging it");
        }
        Watchdog::every(every)
    }

    /// A watchdog that pings every `every` (at once the first time), or
    /// never.
    fn every(every: Option<Duration>) -> Self {
        let pings = every.map(|every| {
            let mut pings = tokio::time::interval(every);
            pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
            pings
        });
        Watchdog { pings }
    }

    /// Waits for `wait`, pinging systemd whenever a ping is due meanwhile.
    pub async fn idle<F: Future>(&mut self, wait: F) -> F::Output {
        let Some(pings) = self.pings.as_mut() else {
            return wait.await;
        };
        tokio::pin!(wait);
        loop {
            tokio::select! {
                biased;
                _ = pings.tick() => notify(&[NotifyState::Watchdog]),
                output = &mut wait => return output,
            }
        }
    }
}

/// How often to ping a watchdog of `usec` microseconds: half of it, as
/// sd_watchdog_enabled(3) advises; never for zero.
fn ping_interval(usec: u64) -> Option<Duration> {
    (usec > 0).then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::sleep;

    /// The watchdog is pinged at half its interval, never for zero, and
    /// never in a busy loop for a tiny one.
    #[test]
    fn watchdog_pings_at_half_the_interval() {
        assert_eq!(ping_interval(0), None);
        assert_eq!(ping_interval(30_000_000), Some(Duration::from_secs(15)));
        assert_eq!(ping_interval(1), Some(Duration::from_millis(1)));
    }

    /// Without a watchdog, waiting is just waiting.
    #[tokio::test]
    async fn idle_without_watchdog_passes_the_output() {
        let mut watchdog = Watchdog::every(None);
        assert_eq!(watchdog.idle(async { 7 }).await, 7);
        let mut watchdog = Watchdog::every(Some(Duration::from_millis(1)));
        assert_eq!(
            watchdog
                .idle(async {
                    sleep(Duration::from_millis(5)).await;
                    8
                })
                .await,
            8
        );
    }
}
