//! Route53's limits, kept: how big one request may be (and packing
//! changes into as few requests as that allows), how fast calls may go (a
//! token bucket), and which answers mean "slow down".

use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_route53::config::http::HttpResponse;
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::ChangeAction;
use tokio::time::Instant;

/// Most `ResourceRecord` elements in one request, an UPSERT's counted twice.
pub const MAX_RECORDS: usize = 1000;

/// Most characters of values in one request, an UPSERT's counted twice.
pub const MAX_VALUE_CHARS: usize = 32_000;

/// Most changes in one request.
pub const MAX_CHANGES: usize = 1000;

/// Route53 calls per second, steadily.
pub const REQUESTS_PER_SECOND: f64 = 10.0;

/// Route53 calls that may go at once after a quiet spell.
pub const BURST: u32 = 5;

/// Keeps calls to `rate` per second with bursts of `burst`. Callers take a
/// token each; when none is left they are told how long to wait, in the
/// order they asked (the tokens may go below zero: those are waits
/// promised).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket {
            rate,
            burst: f64::from(burst),
            state: Mutex::new((f64::from(burst), Instant::now())),
        }
    }

    /// Takes a token at `now`; returns how long to wait before using it.
    pub fn reserve(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let refilled = if now > last {
            (tokens + (now - last).as_secs_f64() * self.rate).min(self.burst)
        } else {
            tokens
        };
        let left = refilled - 1.0;
        *state = (left, now.max(last));
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.rate)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What Route53 counts of one change: `ResourceRecord` elements and
/// characters of values, an UPSERT's twice.
pub fn change_cost(action: &ChangeAction, values: &[String]) -> (usize, usize) {
    let times = if *action == ChangeAction::Upsert {
        2
    } else {
        1
    };
    (
        values.len() * times,
        values.iter().map(String::len).sum::<usize>() * times,
    )
}

/// Splits groups of changes, each with its cost, into requests within
/// Route53's limits, keeping each group whole and the order unchanged.
/// Returns, per request, the indices of its groups. A group that alone
/// exceeds a limit goes alone, for Route53 to judge.
pub fn pack(groups: &[(usize, usize, usize)]) -> Vec<Vec<usize>> {
    let mut requests: Vec<Vec<usize>> = Vec::new();
    let (mut changes, mut records, mut chars) = (0, 0, 0);
    for (index, &(c, r, v)) in groups.iter().enumerate() {
        let fits = changes + c <= MAX_CHANGES
            && records + r <= MAX_RECORDS
            && chars + v <= MAX_VALUE_CHARS;
        match requests.last_mut() {
            Some(request) if fits => request.push(index),
            _ => {
                requests.push(vec![index]);
                (changes, records, chars) = (0, 0, 0);
            }
        }
        changes += c;
        records += r;
        chars += v;
    }
    requests
}

/// Whether Route53 asked to slow down or was briefly unavailable.
pub(super) fn slow_down<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    slow_down_answer(
        error.code(),
        error.raw_response().map(|r| r.status().as_u16()),
    )
}

/// Whether an answer with error `code` and HTTP `status` asks to slow down
/// (or says the service is briefly unavailable).
pub(super) fn slow_down_answer(code: Option<&str>, status: Option<u16>) -> bool {
    matches!(
        code,
        Some(
            "Throttling"
                | "ThrottlingException"
                | "ThrottledException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException"
                | "PriorRequestNotComplete"
                | "ServiceUnavailable"
        )
    ) || matches!(status, Some(429 | 503))
}
