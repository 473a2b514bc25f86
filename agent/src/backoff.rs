//! Bounded exponential backoff with full jitter, used by every retry.
//!
//! Wait number `n` (counting from 0) has a ceiling of `base * 2^n`, capped
//! at `cap`; the actual wait is drawn uniformly between zero and that
//! ceiling ("full jitter"):
//!
//! ```text
//! sleep(n) = random(0, min(cap, base * 2^n))
//! ```
//!
//! Full jitter spreads a fleet that lost its coordinator at the same moment
//! over the whole window, so the agents do not come back in step, and every
//! wait stays within a known bound. No backoff may have a cap above
//! [`MAX_CAP`] (60 s): an agent that has been cut off for a long time still
//! tries at least once a minute. A success calls [`Backoff::reset`], and the
//! schedule starts over.

use std::time::Duration;

use rand::Rng;

/// The longest cap a backoff may have: no retry waits more than a minute.
pub const MAX_CAP: Duration = Duration::from_secs(60);

/// A backoff that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    /// The first ceiling must be longer than zero, or the ceilings would
    /// never grow.
    #[error("the base of a backoff must be more than zero")]
    ZeroBase,
    /// The first ceiling must not exceed the cap.
    #[error("the base of a backoff ({base:?}) is longer than its cap ({cap:?})")]
    BaseAboveCap {
        /// The first ceiling asked for.
        base: Duration,
        /// The cap asked for.
        cap: Duration,
    },
    /// The cap must not exceed [`MAX_CAP`].
    #[error("the cap of a backoff ({cap:?}) is longer than {MAX_CAP:?}")]
    CapTooLong {
        /// The cap asked for.
        cap: Duration,
    },
}

/// The state of one run of retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose ceilings start at `base`, double with every wait, and
    /// stop growing at `cap`. Refuses a zero `base`, a `base` above `cap`,
    /// and a `cap` above [`MAX_CAP`].
    pub fn new(base: Duration, cap: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() {
            return Err(BackoffError::ZeroBase);
        }
        if base > cap {
            return Err(BackoffError::BaseAboveCap { base, cap });
        }
        if cap > MAX_CAP {
            return Err(BackoffError::CapTooLong { cap });
        }
        Ok(Backoff {
            base,
            cap,
            attempt: 0,
        })
    }

    /// The schedule for talking to the coordinator (and for reading the
    /// identity at start): ceilings of 0.5 s, 1 s, 2 s, 4 s, 8 s, 16 s,
    /// 32 s, then 60 s for ever; each wait is drawn between zero and its
    /// ceiling.
    pub fn coordinator() -> Self {
        Backoff::new(Duration::from_millis(500), MAX_CAP).expect("constant bounds are valid")
    }

    /// The ceiling of wait number `attempt` (from 0): `base * 2^attempt`,
    /// capped at `cap`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The cap: no wait is longer.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The next wait, and counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    /// The next wait drawn with `rng`, and counts the attempt.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        full_jitter(ceiling, rng)
    }

    /// Starts over from the shortest ceiling, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many waits were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// A wait drawn uniformly between zero and `ceiling`, both included.
fn full_jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let spread = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(rng.gen_range(0..=spread))
}

/// `base` plus a random extra of up to `jitter`, e.g. a heartbeat interval
/// and the coordinator's allowance for spreading the fleet out. (Not a
/// retry: the interval is the coordinator's to choose.)
pub fn with_jitter(base: Duration, jitter: Duration) -> Duration {
    let spread = jitter.as_nanos().min(u128::from(u64::MAX)) as u64;
    base + Duration::from_nanos(rand::thread_rng().gen_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The coordinator schedule is the one written in its doc comment.
    #[test]
    fn coordinator_schedule() {
        let backoff = Backoff::coordinator();
        let ceilings: Vec<u64> = (0..10)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000]
        );
        assert_eq!(backoff.cap(), MAX_CAP);
    }

    /// A backoff that could never grow, whose base exceeds its cap, or whose
    /// cap exceeds a minute cannot be built.
    #[test]
    fn bad_bounds_are_refused() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::from_secs(1)).unwrap_err(),
            BackoffError::ZeroBase
        );
        assert_eq!(
            Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err(),
            BackoffError::BaseAboveCap {
                base: Duration::from_secs(2),
                cap: Duration::from_secs(1)
            }
        );
        assert_eq!(
            Backoff::new(Duration::from_secs(1), Duration::from_secs(61)).unwrap_err(),
            BackoffError::CapTooLong {
                cap: Duration::from_secs(61)
            }
        );
        assert!(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).is_ok());
        assert!(Backoff::new(Duration::from_secs(60), MAX_CAP).is_ok());
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

    /// The jitter is full: over many draws, waits land both in the lower
    /// and in the upper half of the ceiling (equal jitter would never go
    /// below half).
    #[test]
    fn jitter_reaches_down_to_zero() {
        let mut rng = StdRng::seed_from_u64(7);
        let ceiling = Duration::from_secs(1);
        let waits: Vec<Duration> = (0..200).map(|_| full_jitter(ceiling, &mut rng)).collect();
        assert!(waits.iter().any(|w| *w < ceiling / 4), "{waits:?}");
        assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= ceiling));
    }

    proptest! {
        /// Every wait lies between zero and its ceiling, and so within
        /// [0, cap], however many attempts are made.
        #[test]
        fn waits_stay_within_the_cap(
            base_ms in 1u64..10_000,
            extra_ms in 0u64..50_000,
            attempts in 0u32..80,
            seed in any::<u64>(),
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = (base + Duration::from_millis(extra_ms)).min(MAX_CAP);
            let mut backoff = Backoff::new(base, cap).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            for n in 0..attempts {
                let ceiling = backoff.ceiling(n);
                let wait = backoff.next_delay_with(&mut rng);
                prop_assert!(wait <= ceiling, "wait {n}: {wait:?} > {ceiling:?}");
                prop_assert!(wait <= cap, "wait {n}: {wait:?} > {cap:?}");
            }
        }

        /// The ceiling starts at the base, doubles with every attempt until
        /// it reaches the cap, and then stays at the cap.
        #[test]
        fn ceiling_grows_then_stays_at_the_cap(
            base_ms in 1u64..10_000,
            extra_ms in 0u64..50_000,
            attempts in 1u32..200,
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = (base + Duration::from_millis(extra_ms)).min(MAX_CAP);
            let backoff = Backoff::new(base, cap).unwrap();
            prop_assert_eq!(backoff.ceiling(0), base);
            let mut reached = false;
            for n in 1..attempts {
                let before = backoff.ceiling(n - 1);
                let now = backoff.ceiling(n);
                prop_assert!(now <= cap);
                if reached {
                    prop_assert_eq!(now, cap, "fell from the cap at {}", n);
                } else {
                    prop_assert_eq!(now, (before * 2).min(cap), "did not double at {}", n);
                }
                reached = now == cap;
            }
            // The cap is reached within log2(cap / base) + 1 doublings.
            let needed = (cap.as_nanos() / base.as_nanos()).ilog2() + 1;
            prop_assert_eq!(backoff.ceiling(needed), cap);
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
