//! `/metrics`: the registry's counters, node counts, the EC2 cache and the
//! DNS provider's progress, in the Prometheus text format.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let registry = &state.registry;
    let counters = &registry.counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::new();
    let mut section = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    };
    section(
        "muster_registrations_total",
        "counter",
        "Successful agent registers.",
        vec![format!(
            "muster_registrations_total {}",
            load(&counters.registrations)
        )],
    );
    section(
        "muster_heartbeats_total",
        "counter",
        "Accepted agent heartbeats.",
        vec![format!(
            "muster_heartbeats_total {}",
            load(&counters.heartbeats)
        )],
    );
    section(
        "muster_address_changes_total",
        "counter",
        "Address changes accepted after the EC2 check.",
        vec![format!(
            "muster_address_changes_total {}",
            load(&counters.address_changes)
        )],
    );
    section(
        "muster_sweeps_total",
        "counter",
        "EC2 sweeps completed (every region read or given up on).",
        vec![format!("muster_sweeps_total {}", load(&counters.sweeps))],
    );
    let by_code =
        |name: &str,
         map: &std::sync::Mutex<std::collections::BTreeMap<muster_proto::ErrorCode, u64>>| {
            map.lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(code, n)| format!("{name}{{code=\"{code}\"}} {n}"))
                .collect::<Vec<_>>()
        };
    section(
        "muster_agent_refusals_total",
        "counter",
        "Agent requests refused, by error code.",
        by_code("muster_agent_refusals_total", &counters.refusals),
    );
    section(
        "muster_security_events_total",
        "counter",
        "Agent requests refused as someone speaking for a node they may not be, by error code.",
        by_code("muster_security_events_total", &counters.security_events),
    );
    section(
        "muster_nodes",
        "gauge",
        "Nodes by state.",
        registry
            .nodes_by_state()
            .iter()
            .map(|(state, n)| format!("muster_nodes{{state=\"{state}\"}} {n}"))
            .collect(),
    );
    section(
        "muster_dns_queries_total",
        "counter",
        "DNS queries answered by the embedded server.",
        vec![format!(
            "muster_dns_queries_total {}",
            registry.zone().queries()
        )],
    );
    let caches = registry.ec2_cache_status();
    if !caches.is_empty() {
        section(
            "muster_ec2_cache_instances",
            "gauge",
            "Cluster members the EC2 cache's last listing of a region held.",
            caches
                .iter()
                .map(|c| {
                    format!(
                        "muster_ec2_cache_instances{{region=\"{}\"}} {}",
                        c.region, c.instances
                    )
                })
                .collect(),
        );
        section(
            "muster_ec2_cache_age_seconds",
            "gauge",
            "Age of the EC2 cache's last listing of a region (absent before the first).",
            caches
                .iter()
                .filter_map(|c| {
                    let age = c.age?.as_secs_f64();
                    Some(format!(
                        "muster_ec2_cache_age_seconds{{region=\"{}\"}} {age:.3}",
                        c.region
                    ))
                })
                .collect(),
        );
        section(
            "muster_ec2_cache_lookups_total",
            "counter",
            "Claims looked up in the EC2 cache, by whether the listing held the instance.",
            caches
                .iter()
                .flat_map(|c| {
                    [("hit", c.hits), ("miss", c.misses)].map(|(result, n)| {
                        format!(
                            "muster_ec2_cache_lookups_total{{region=\"{}\",result=\"{result}\"}} {n}",
                            c.region
                        )
                    })
                })
                .collect(),
        );
    }
    if let Some(dns) = state.dns_status.get() {
        write_dns_metrics(&dns, &mut section);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// Writes the provider's metrics through `section(name, kind, help, lines)`.
pub(super) fn write_dns_metrics(
    status: &crate::dns::status::ProviderStatus,
    section: &mut impl FnMut(&str, &str, &str, Vec<String>),
) {
    let label = format!("provider=\"{}\"", status.provider);
    let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
        section(name, kind, help, vec![format!("{name}{{{label}}} {value}")]);
    };
    gauge(
        "muster_dns_pending_changes",
        "gauge",
        "DNS names whose change is not applied at the provider yet.",
        status.pending_changes.to_string(),
    );
    gauge(
        "muster_dns_conflicts",
        "gauge",
        "DNS names muster wants but does not own, left alone.",
        status.conflicts.len().to_string(),
    );
    gauge(
        "muster_dns_applied_names",
        "gauge",
        "DNS names applied at the provider.",
        status.applied_names.to_string(),
    );
    gauge(
        "muster_dns_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last DNS pass that reached the provider without error (0: never).",
        status.last_success_unix.unwrap_or_default().to_string(),
    );
    gauge(
        "muster_dns_update_failures_total",
        "counter",
        "DNS passes that failed.",
        status.failures_total.to_string(),
    );
    gauge(
        "muster_dns_throttled_total",
        "counter",
        "Answers from the DNS provider that told muster to slow down (each retried).",
        status.throttled_total.to_string(),
    );
    gauge(
        "muster_dns_changes_applied_total",
        "counter",
        "DNS changes applied at the provider.",
        status.applied_total.to_string(),
    );
}
