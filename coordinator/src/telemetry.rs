//! Timings the coordinator keeps for `/metrics`: how long each call to AWS
//! took (EC2, Route53, STS), which of them failed or were throttled, and
//! how long the DNS provider took to apply a batch of changes.
//!
//! AWS calls are timed by one SDK interceptor ([`AwsCallTimer`]) that
//! every client the coordinator builds carries, so no call site can forget
//! it. The figures live in process-wide tables ([`aws_calls`],
//! [`dns_provider_calls`]), as a Prometheus client library's default
//! registry would: the interceptor is built by the SDK's config builders,
//! far from any state a handler could hand it.
//!
//! Labels stay bounded: a service, an operation name from the SDK's own
//! model, a provider kind. No instance id, name or address is ever a
//! label.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// Upper bounds of the duration buckets, in seconds: 5 ms to 30 s, the
/// range of an AWS call from a fast answer to a timed-out one.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A histogram of durations over [`DURATION_BUCKETS`]: counts per bucket
/// (not cumulative; the exposition adds them up), their sum and count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    /// Microseconds, summed.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus samples of `name` with `labels` (`a="b",c="d"`, or
    /// empty): cumulative buckets, `+Inf`, sum and count.
    pub fn samples(&self, name: &str, labels: &str) -> Vec<String> {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        let mut lines: Vec<String> = DURATION_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(le, n)| {
                cumulative += n.load(Ordering::Relaxed);
                format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}")
            })
            .collect();
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        lines.push(format!("{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}"));
        lines.push(format!("{name}_sum{} {sum:.6}", braces(labels)));
        lines.push(format!("{name}_count{} {count}", braces(labels)));
        lines
    }
}

/// AWS calls by service and operation: how long they took, and how many
/// failed, throttled or otherwise.
#[derive(Debug, Default)]
pub struct AwsCalls {
    by_operation: Mutex<BTreeMap<(String, String), Histogram>>,
    errors: Mutex<BTreeMap<(String, String, ErrorKind), u64>>,
}

/// How an AWS call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// AWS asked to slow down (RequestLimitExceeded, Throttling, 429…).
    Throttled,
    /// Any other failure: an error answer, a timeout, no connection.
    Other,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Other => "other",
        }
    }
}

impl AwsCalls {
    /// Counts one call of `operation` on `service` that took `took`, and
    /// its failure if it failed.
    pub fn record(&self, service: &str, operation: &str, took: Duration, error: Option<ErrorKind>) {
        let key = (service.to_ascii_lowercase(), operation.to_owned());
        if let Some(kind) = error {
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            *errors
                .entry((key.0.clone(), key.1.clone(), kind))
                .or_default() += 1;
        }
        let mut by_operation = self.by_operation.lock().unwrap_or_else(|p| p.into_inner());
        by_operation.entry(key).or_default().observe(took);
    }

    /// The duration histogram's samples, every series.
    pub fn duration_samples(&self, name: &str) -> Vec<String> {
        let by_operation = self.by_operation.lock().unwrap_or_else(|p| p.into_inner());
        by_operation
            .iter()
            .flat_map(|((service, operation), histogram)| {
                histogram.samples(
                    name,
                    &format!("service=\"{service}\",operation=\"{operation}\""),
                )
            })
            .collect()
    }

    /// The error counter's samples.
    pub fn error_samples(&self, name: &str) -> Vec<String> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors
            .iter()
            .map(|((service, operation, kind), n)| {
                format!(
                    "{name}{{service=\"{service}\",operation=\"{operation}\",kind=\"{}\"}} {n}",
                    kind.as_str()
                )
            })
            .collect()
    }
}

/// The process's AWS call figures.
pub fn aws_calls() -> &'static AwsCalls {
    static CALLS: LazyLock<AwsCalls> = LazyLock::new(AwsCalls::default);
    &CALLS
}

/// How long the DNS provider took per batch, by provider kind.
#[derive(Debug, Default)]
pub struct ProviderCalls {
    by_provider: Mutex<BTreeMap<String, Histogram>>,
}

impl ProviderCalls {
    /// Counts one batch applied by `provider` in `took`.
    pub fn record(&self, provider: &str, took: Duration) {
        let mut by_provider = self.by_provider.lock().unwrap_or_else(|p| p.into_inner());
        by_provider
            .entry(provider.to_owned())
            .or_default()
            .observe(took);
    }

    /// The histogram's samples, every provider.
    pub fn samples(&self, name: &str) -> Vec<String> {
        let by_provider = self.by_provider.lock().unwrap_or_else(|p| p.into_inner());
        by_provider
            .iter()
            .flat_map(|(provider, h)| h.samples(name, &format!("provider=\"{provider}\"")))
            .collect()
    }
}

/// The process's DNS provider figures.
pub fn dns_provider_calls() -> &'static ProviderCalls {
    static CALLS: LazyLock<ProviderCalls> = LazyLock::new(ProviderCalls::default);
    &CALLS
}

/// When the call began, kept in the call's config bag.
#[derive(Debug, Clone, Copy)]
struct CallStarted(Instant);

impl Storable for CallStarted {
    type Storer = StoreReplace<Self>;
}

/// The SDK interceptor that times every AWS call into [`aws_calls`]: from
/// before its request is built to its final answer, retries included.
#[derive(Debug, Clone, Copy, Default)]
pub struct AwsCallTimer;

impl Intercept for AwsCallTimer {
    fn name(&self) -> &'static str {
        "muster call timer"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(CallStarted(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(CallStarted(started)) = cfg.load::<CallStarted>().copied() else {
            return Ok(());
        };
        let (service, operation) = cfg
            .load::<Metadata>()
            .map(|m| (m.service().to_owned(), m.name().to_owned()))
            .unwrap_or_else(|| ("unknown".to_owned(), "unknown".to_owned()));
        let failed = matches!(context.output_or_error(), Some(Err(_)) | None);
        let error = failed.then(|| {
            let response = context.response();
            let status = response.map(|r| r.status().as_u16());
            let body = response
                .and_then(|r| r.body().bytes())
                .map(String::from_utf8_lossy);
            throttled(status, body.as_deref())
        });
        aws_calls().record(&service, &operation, started.elapsed(), error);
        Ok(())
    }
}

/// Whether an AWS error answer (its status and body, when they were read)
/// asked to slow down. EC2 says `RequestLimitExceeded` with a 503,
/// Route53 `Throttling` or `PriorRequestNotComplete` with a 400, STS
/// `Throttling`; a plain 429 is throttling too.
fn throttled(status: Option<u16>, body: Option<&str>) -> ErrorKind {
    const CODES: [&str; 5] = [
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "PriorRequestNotComplete",
        "TooManyRequests",
    ];
    let named = body.is_some_and(|b| CODES.iter().any(|code| b.contains(code)));
    if status == Some(429) || named {
        ErrorKind::Throttled
    } else {
        ErrorKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets are cumulative in the exposition, `+Inf` equals the count,
    /// and the sum is in seconds.
    #[test]
    fn histogram_samples_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(60));
        let lines = h.samples("x_seconds", "a=\"b\"");
        assert!(lines.contains(&"x_seconds_bucket{a=\"b\",le=\"0.005\"} 1".to_owned()));
        assert!(lines.contains(&"x_seconds_bucket{a=\"b\",le=\"0.05\"} 2".to_owned()));
        assert!(lines.contains(&"x_seconds_bucket{a=\"b\",le=\"30\"} 2".to_owned()));
        assert!(lines.contains(&"x_seconds_bucket{a=\"b\",le=\"+Inf\"} 3".to_owned()));
        assert!(lines.contains(&"x_seconds_sum{a=\"b\"} 60.043000".to_owned()));
        assert!(lines.contains(&"x_seconds_count{a=\"b\"} 3".to_owned()));
    }

    /// Each service's way of saying "slow down" is throttling; other
    /// failures are not.
    #[test]
    fn throttling_is_told_apart() {
        let ec2 = "<Response><Errors><Error><Code>RequestLimitExceeded</Code>";
        assert_eq!(throttled(Some(503), Some(ec2)), ErrorKind::Throttled);
        let r53 = "<ErrorResponse><Error><Code>PriorRequestNotComplete</Code>";
        assert_eq!(throttled(Some(400), Some(r53)), ErrorKind::Throttled);
        assert_eq!(throttled(Some(429), None), ErrorKind::Throttled);
        let denied = "<Response><Errors><Error><Code>UnauthorizedOperation</Code>";
        assert_eq!(throttled(Some(403), Some(denied)), ErrorKind::Other);
        assert_eq!(throttled(None, None), ErrorKind::Other);
    }

    /// Calls are kept by lower-case service and operation; errors by kind.
    #[test]
    fn calls_are_labelled_by_service_and_operation() {
        let calls = AwsCalls::default();
        calls.record("EC2", "DescribeInstances", Duration::from_millis(20), None);
        calls.record(
            "EC2",
            "DescribeInstances",
            Duration::from_millis(20),
            Some(ErrorKind::Throttled),
        );
        let durations = calls.duration_samples("d_seconds");
        assert!(durations.contains(
            &"d_seconds_count{service=\"ec2\",operation=\"DescribeInstances\"} 2".to_owned()
        ));
        assert_eq!(
            calls.error_samples("e_total"),
            vec![
                "e_total{service=\"ec2\",operation=\"DescribeInstances\",kind=\"throttled\"} 1"
                    .to_owned()
            ]
        );
    }
}
