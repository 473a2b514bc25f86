//! Response-rate limiting (RRL) for the embedded server's UDP answers, so
//! that a spoofed flood cannot turn it on someone else.
//!
//! A token bucket per source network (IPv4 /24, IPv6 /56, as BIND and Knot
//! group them): `--dns-rate-limit` answers a second, bursts of twice that.
//! Over the limit, one answer in [`SLIP`] is sent as a short truncated
//! answer (TC set, no records: no bigger than the query), so a real
//! resolver behind that network retries over TCP and is answered; the
//! others are dropped. TCP is never limited: its handshake proves the
//! source.
//!
//! The table holds at most [`MAX_NETWORKS`] networks. When it is full, the
//! networks whose bucket has filled up again are forgotten (a full bucket
//! is the same as none); if it is still full, a new network is answered as
//! if over its limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// One answer in this many over the limit is a short truncated one; the
/// rest are dropped (BIND's default `slip`).
pub const SLIP: u32 = 2;

/// The most source networks tracked at once (about 40 bytes each).
pub const MAX_NETWORKS: usize = 100_000;

/// What to do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit: answer.
    Answer,
    /// Over it: a short answer with TC set.
    Slip,
    /// Over it: no answer.
    Drop,
}

/// The buckets, by source network.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    table: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Answers over the limit so far, for the slip.
    over: u32,
}

impl RateLimiter {
    /// `per_second` answers a second to a network, bursts of twice that;
    /// `None` for 0 (no limit).
    pub fn new(per_second: u32) -> Option<RateLimiter> {
        if per_second == 0 {
            return None;
        }
        let per_second = f64::from(per_second);
        Some(RateLimiter {
            per_second,
            burst: 2.0 * per_second,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// Whether an answer to `source` goes out, now.
    pub fn check(&self, source: IpAddr) -> Verdict {
        self.check_at(source, Instant::now())
    }

    fn check_at(&self, source: IpAddr, now: Instant) -> Verdict {
        let network = network_of(source);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&network) && table.len() >= MAX_NETWORKS {
            table.retain(|_, bucket| !self.refilled(bucket, now));
            if table.len() >= MAX_NETWORKS {
                return Verdict::Slip;
            }
        }
        let bucket = table.entry(network).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            over: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Answer;
        }
        bucket.over = bucket.over.wrapping_add(1);
        if bucket.over % SLIP == 1 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }

    /// Networks tracked now.
    pub fn networks(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens + elapsed * self.per_second >= self.burst
    }
}

/// The network `source` is counted in: its /24 (IPv4, IPv4-mapped IPv6
/// too) or its /56 (IPv6).
pub fn network_of(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 72) - 1)).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// Sources are grouped by /24 and /56.
    #[test]
    fn networks() {
        assert_eq!(network_of(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(network_of(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(
            network_of(ip("2001:db8:aa:bbcc:1:2:3:4")),
            ip("2001:db8:aa:bb00::")
        );
    }

    /// A burst of twice the rate is answered, then one in SLIP is a short
    /// answer and the rest are dropped; another network is answered
    /// meanwhile, and the bucket refills with time.
    #[test]
    fn limits_then_slips_and_refills() {
        let limiter = RateLimiter::new(10).unwrap();
        assert!(RateLimiter::new(0).is_none());
        let now = Instant::now();
        let flood: Vec<Verdict> = (0..40)
            .map(|_| limiter.check_at(ip("10.0.0.1"), now))
            .collect();
        assert!(flood[..20].iter().all(|v| *v == Verdict::Answer));
        let slipped = flood.iter().filter(|v| **v == Verdict::Slip).count();
        let dropped = flood.iter().filter(|v| **v == Verdict::Drop).count();
        assert_eq!((slipped, dropped), (10, 10));
        assert_eq!(limiter.check_at(ip("10.0.0.200"), now), Verdict::Slip);
        assert_eq!(limiter.check_at(ip("10.0.1.1"), now), Verdict::Answer);
        let later = now + Duration::from_secs(1);
        assert_eq!(limiter.check_at(ip("10.0.0.1"), later), Verdict::Answer);
    }

    /// The table stays within MAX_NETWORKS: refilled buckets make room.
    #[test]
    fn table_is_bounded() {
        let limiter = RateLimiter::new(1000).unwrap();
        let now = Instant::now();
        for i in 0..MAX_NETWORKS as u32 {
            limiter.check_at(IpAddr::V4((i << 8).into()), now);
        }
        assert_eq!(limiter.networks(), MAX_NETWORKS);
        // Full, and every bucket still spent: a new network is over.
        assert_eq!(limiter.check_at(ip("255.255.255.1"), now), Verdict::Slip);
        let later = now + Duration::from_secs(5);
        assert_eq!(
            limiter.check_at(ip("255.255.255.1"), later),
            Verdict::Answer
        );
        assert_eq!(limiter.networks(), 1);
    }
}
