//! Bounded exponential backoff with jitter.
//!
//! The n-th wait (counting from 0) has a ceiling of `min * 2^n`, capped at
//! `max`; the actual wait is drawn uniformly between half the ceiling and the
//! ceiling ("equal jitter"), so a fleet restarted at once does not retry in
//! step while every wait stays within a known bound.

use std::time::Duration;

use rand::Rng;

/// A backoff that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    /// The first wait must be longer than zero.
    #[error("the shortest backoff must be more than zero")]
    ZeroMin,
    /// The first wait must not exceed the cap.
    #[error("the shortest backoff ({min:?}) is longer than the longest ({max:?})")]
    MinAboveMax {
        /// The first wait asked for.
        min: Duration,
        /// The cap asked for.
        max: Duration,
    },
}

/// The state of one run of retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose waits start near `min` and never exceed `max`.
    pub fn new(min: Duration, max: Duration) -> Result<Self, BackoffError> {
        if min.is_zero() {
            return Err(BackoffError::ZeroMin);
        }
        if min > max {
            return Err(BackoffError::MinAboveMax { min, max });
        }
        Ok(Backoff {
            min,
            max,
            attempt: 0,
        })
    }

    /// The schedule for talking to the coordinator: ceilings of 0.5 s, 1 s,
    /// 2 s, 4 s, 8 s, 16 s, then 30 s for ever.
    pub fn coordinator() -> Self {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
            attempt: 0,
        }
    }

    /// The ceiling of wait number `attempt` (from 0): `min * 2^attempt`,
    /// capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next wait, and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        equal_jitter(ceiling)
    }

    /// Starts over from the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many waits were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A wait drawn uniformly between half of `ceiling` and `ceiling`.
fn equal_jitter(ceiling: Duration) -> Duration {
    let half = ceiling / 2;
    let spread = (ceiling - half).as_nanos().min(u128::from(u64::MAX)) as u64;
    half + Duration::from_nanos(rand::thread_rng().gen_range(0..=spread))
}

/// `base` plus a random extra of up to `jitter`, e.g. a heartbeat interval
/// and the coordinator's allowance for spreading the fleet out.
pub fn with_jitter(base: Duration, jitter: Duration) -> Duration {
    let spread = jitter.as_nanos().min(u128::from(u64::MAX)) as u64;
    base + Duration::from_nanos(rand::thread_rng().gen_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The coordinator schedule is the one written in its doc comment.
    #[test]
    fn coordinator_schedule() {
        let backoff = Backoff::coordinator();
        let ceilings: Vec<u64> = (0..9)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
    }

    /// A backoff that could never wait, or whose minimum exceeds its maximum,
    /// cannot be built.
    #[test]
    fn bad_bounds_are_refused() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::from_secs(1)).unwrap_err(),
            BackoffError::ZeroMin
        );
        assert!(matches!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)),
            Err(BackoffError::MinAboveMax { .. })
        ));
    }

    /// Reset starts the schedule over.
    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).unwrap();
        for _ in 0..5 {
            backoff.next_delay();
        }
        assert_eq!(backoff.attempts(), 5);
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }

    proptest! {
        /// Every wait lies between half the minimum and the maximum, and the
        /// ceilings never shrink, however many attempts are made.
        #[test]
        fn waits_stay_bounded(
            min_ms in 1u64..10_000,
            extra_ms in 0u64..100_000,
            attempts in 0usize..80,
        ) {
            let min = Duration::from_millis(min_ms);
            let max = min + Duration::from_millis(extra_ms);
            let mut backoff = Backoff::new(min, max).unwrap();
            let mut last_ceiling = Duration::ZERO;
            for n in 0..attempts {
                let ceiling = backoff.ceiling(n as u32);
                prop_assert!(ceiling >= last_ceiling);
                prop_assert!(ceiling <= max);
                last_ceiling = ceiling;
                let wait = backoff.next_delay();
                prop_assert!(wait >= min / 2, "{wait:?} < {min:?} / 2");
                prop_assert!(wait <= max, "{wait:?} > {max:?}");
            }
        }

        /// A jittered interval is never shorter than its base nor longer
        /// than base plus jitter.
        #[test]
        fn jitter_stays_in_range(base_ms in 0u64..100_000, jitter_ms in 0u64..100_000) {
            let base = Duration::from_millis(base_ms);
            let jitter = Duration::from_millis(jitter_ms);
            let wait = with_jitter(base, jitter);
            prop_assert!(wait >= base && wait <= base + jitter);
        }
    }
}
