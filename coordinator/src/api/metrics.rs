//! `/metrics`: the registry's counters, node counts, the API's connections,
//! the embedded DNS server's limits, the EC2 cache, AWS call timings, the
//! DNS provider's progress and the coordinator's own facts (version, start,
//! leadership, certificate expiry), in the Prometheus text format.
//!
//! Every metric has HELP and TYPE lines even before its first sample, a
//! unit in its name where it has one (`_seconds`, `_bytes`), `_total` on
//! counters, and labels of bounded cardinality: states, codes, reasons,
//! regions, cluster names, AWS operation names. Never an instance id, a
//! node name or an address. docs/operations.md lists them all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use muster_proto::ErrorCode;

use super::connections::Connections;
use super::AppState;
use crate::dns::status::ProviderStatus;
use crate::dns::zone::ServerCounters;
use crate::ec2::CacheStatus;
use crate::registry::Registry;

pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = Exposition::default();
    coordinator_metrics(&mut out, &state);
    registry_metrics(&mut out, &state.registry);
    dns_server_metrics(&mut out, state.registry.zone().server_counters());
    connection_metrics(&mut out, &state.connections);
    ec2_cache_metrics(&mut out, &state.registry.ec2_cache_status());
    aws_metrics(&mut out);
    if let Some(dns) = state.dns_status.get() {
        dns_metrics(&mut out, &dns);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.text,
    )
}

/// The text being written: one section (HELP, TYPE, samples) per metric.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Metric `name` of `kind` with its `help`, and its sample `lines`.
    fn section(&mut self, name: &str, kind: &str, help: &str, lines: Vec<String>) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for line in lines {
            let _ = writeln!(self.text, "{line}");
        }
    }

    /// Metric `name` with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.section(name, kind, help, vec![format!("{name} {value}")]);
    }
}

/// The registry's counters, refusals by code, nodes by state, and the
/// embedded server's queries.
fn registry_metrics(out: &mut Exposition, registry: &Registry) {
    let counters = &registry.counters;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.single(
        "muster_registrations_total",
        "counter",
        "Successful agent registers.",
        load(&counters.registrations),
    );
    out.single(
        "muster_heartbeats_total",
        "counter",
        "Accepted agent heartbeats.",
        load(&counters.heartbeats),
    );
    out.single(
        "muster_address_changes_total",
        "counter",
        "Address changes accepted after the EC2 check.",
        load(&counters.address_changes),
    );
    out.single(
        "muster_sweeps_total",
        "counter",
        "EC2 sweeps completed (every region read or given up on).",
        load(&counters.sweeps),
    );
    let by_code = |name: &str, map: &Mutex<BTreeMap<ErrorCode, u64>>| {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(code, n)| format!("{name}{{code=\"{code}\"}} {n}"))
            .collect::<Vec<_>>()
    };
    out.section(
        "muster_agent_refusals_total",
        "counter",
        "Agent requests refused, by endpoint (register or heartbeat) and error code.",
        counters
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((endpoint, code), n)| {
                format!(
                    "muster_agent_refusals_total{{endpoint=\"{endpoint}\",code=\"{code}\"}} {n}"
                )
            })
            .collect(),
    );
    out.section(
        "muster_node_transitions_total",
        "counter",
        "Node state changes, by the state left (none for a node's first) and the state entered.",
        counters
            .transitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((from, to), n)| {
                let from = from.map_or("none", |s| s.as_str());
                format!("muster_node_transitions_total{{from=\"{from}\",to=\"{to}\"}} {n}")
            })
            .collect(),
    );
    out.section(
        "muster_security_events_total",
        "counter",
        "Agent requests refused as someone speaking for a node they may not be, by error code.",
        by_code("muster_security_events_total", &counters.security_events),
    );
    out.section(
        "muster_nodes",
        "gauge",
        "Nodes by state, as kept in memory: terminated counts only those terminated because EC2 did not know them (they may come back); nodes terminated for good are history, kept in the store until --retention.",
        registry
            .nodes_by_state()
            .iter()
            .map(|(state, n)| format!("muster_nodes{{state=\"{state}\"}} {n}"))
            .collect(),
    );
    out.section(
        "muster_cluster_nodes",
        "gauge",
        "Nodes by cluster and state, as kept in memory (see muster_nodes).",
        registry
            .nodes_by_cluster_state()
            .iter()
            .map(|((cluster, state), n)| {
                format!("muster_cluster_nodes{{cluster=\"{cluster}\",state=\"{state}\"}} {n}")
            })
            .collect(),
    );
    out.section(
        "muster_node_ec2_notices",
        "gauge",
        "Nodes whose latest heartbeat carried an EC2 warning from IMDS, by kind: spot_interruption and autoscaling_termination drain the node; rebalance_recommendation and scheduled_maintenance drain it only where its agent is set to.",
        registry
            .nodes_by_notice()
            .iter()
            .map(|(kind, n)| format!("muster_node_ec2_notices{{kind=\"{kind}\"}} {n}"))
            .collect(),
    );
    out.single(
        "muster_ec2_trusted",
        "gauge",
        "1 while EC2 answers for the AWS account the coordinator's nodes are in; 0 while it does not, or the account is not known yet (no sweeps, launches or removals then).",
        u8::from(registry.ec2_account().untrusted_because().is_none()),
    );
    out.single(
        "muster_ec2_untrusted_reads_total",
        "counter",
        "Regions' EC2 answers a sweep did not believe: they knew none, or implausibly few, of the tracked instances.",
        load(&counters.untrusted_reads),
    );
    out.single(
        "muster_strays_adopted_total",
        "counter",
        "Instances this coordinator launched but never recorded (a launch cut short), adopted as nodes.",
        load(&counters.strays_adopted),
    );
    out.single(
        "muster_strays_terminated_total",
        "counter",
        "Instances this coordinator launched for a cluster that is gone or being removed, terminated.",
        load(&counters.strays_terminated),
    );
    out.single(
        "muster_leftovers_deleted_total",
        "counter",
        "Security groups and key pairs of gone clusters deleted.",
        load(&counters.leftovers_deleted),
    );
    out.single(
        "muster_dns_queries_total",
        "counter",
        "DNS queries answered by the embedded server.",
        registry.zone().queries(),
    );
}

/// The coordinator's own facts: version, start time, leadership, and when
/// its certificates expire.
fn coordinator_metrics(out: &mut Exposition, state: &AppState) {
    out.section(
        "muster_build_info",
        "gauge",
        "Always 1; the coordinator's version is in the label.",
        vec![format!(
            "muster_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )],
    );
    out.single(
        "muster_start_time_seconds",
        "gauge",
        "Unix time the coordinator started.",
        state
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    out.single(
        "muster_leader",
        "gauge",
        "1 while this coordinator runs what must run once (the sweep, liveness, launches, removals, the DNS provider's loop): on a shared store, while its lease is confirmed. A coordinator on SQLite is always the one.",
        u64::from(state.leadership.is_current()),
    );
    if let Some((term, left)) = state.leadership.lease_gauges() {
        out.single(
            "muster_lease_term",
            "gauge",
            "The term of the leader's lease this coordinator holds (raised by one on every takeover).",
            term,
        );
        out.single(
            "muster_lease_remaining_seconds",
            "gauge",
            "Seconds until this leader's lease runs out unless renewed, by its own count from its last renewal (negative once past).",
            format!("{left:.3}"),
        );
    }
    out.section(
        "muster_certificate_expiry_timestamp_seconds",
        "gauge",
        "Unix time each certificate the API serves with expires: ca (the CA agents pin, when the coordinator made it) and server.",
        state
            .certificates
            .iter()
            .map(|(which, at)| {
                format!("muster_certificate_expiry_timestamp_seconds{{certificate=\"{which}\"}} {at}")
            })
            .collect(),
    );
}

/// AWS calls: how long they took and which failed.
fn aws_metrics(out: &mut Exposition) {
    let calls = crate::telemetry::aws_calls();
    out.section(
        "muster_aws_request_duration_seconds",
        "histogram",
        "Time each AWS call took (EC2, Route53, STS), from its first attempt to its final answer, by service and operation.",
        calls.duration_samples("muster_aws_request_duration_seconds"),
    );
    out.section(
        "muster_aws_request_errors_total",
        "counter",
        "AWS calls that failed, by service, operation and kind: throttled (AWS asked to slow down) or other.",
        calls.error_samples("muster_aws_request_errors_total"),
    );
    out.section(
        "muster_dns_provider_request_duration_seconds",
        "histogram",
        "Time the external DNS provider took to apply one batch of changes, by provider.",
        crate::telemetry::dns_provider_calls()
            .samples("muster_dns_provider_request_duration_seconds"),
    );
}

/// What the embedded DNS server cut short or held back.
fn dns_server_metrics(out: &mut Exposition, counters: &ServerCounters) {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.single(
        "muster_dns_truncated_total",
        "counter",
        "UDP answers too big for the client's buffer (at most 1232 bytes), sent with TC set.",
        load(&counters.truncated),
    );
    out.single(
        "muster_dns_tcp_refused_total",
        "counter",
        &format!(
            "DNS TCP connections closed at once: past {} from one address or {} in all.",
            crate::dns::tcp::MAX_TCP_PER_SOURCE,
            crate::dns::tcp::MAX_TCP_CONNECTIONS
        ),
        load(&counters.tcp_refused),
    );
    out.section(
        "muster_dns_rate_limited_total",
        "counter",
        "UDP answers over the per-network rate limit, by what was done: slip (short, TC set) or drop.",
        vec![
            format!(
                "muster_dns_rate_limited_total{{action=\"slip\"}} {}",
                load(&counters.slipped)
            ),
            format!(
                "muster_dns_rate_limited_total{{action=\"drop\"}} {}",
                load(&counters.dropped)
            ),
        ],
    );
}

/// The API's connections: open, handshakes, refusals and closes.
fn connection_metrics(out: &mut Exposition, connections: &Connections) {
    let counters = &connections.counters;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.single(
        "muster_connections_open",
        "gauge",
        "Open API connections, handshaking ones included.",
        connections.open(),
    );
    out.single(
        "muster_connections_max",
        "gauge",
        "Open API connections allowed (--max-connections, lowered to fit the open files limit).",
        connections.limits().max_total,
    );
    out.single(
        "muster_tls_handshakes_total",
        "counter",
        "Completed TLS handshakes on the API.",
        load(&counters.handshakes),
    );
    out.single(
        "muster_tls_handshakes_resumed_total",
        "counter",
        "Completed TLS handshakes on the API that resumed a session from a ticket (no certificate, no signature).",
        load(&counters.handshakes_resumed),
    );
    out.single(
        "muster_connections_parked_total",
        "counter",
        "HTTP/1.1 exchanges after which the connection was parked: kept open with its TLS session alone until the next request.",
        load(&counters.parked),
    );
    out.section(
        "muster_tls_handshake_failures_total",
        "counter",
        "TLS handshakes on the API that failed, by reason: timeout or error.",
        vec![
            format!(
                "muster_tls_handshake_failures_total{{reason=\"timeout\"}} {}",
                load(&counters.handshake_timeouts)
            ),
            format!(
                "muster_tls_handshake_failures_total{{reason=\"error\"}} {}",
                load(&counters.handshake_failures)
            ),
        ],
    );
    let refused = ["per_source", "reserved", "total"];
    out.section(
        "muster_connections_refused_total",
        "counter",
        "API connections reset at once, by the cap reached: per_source, reserved (only known \
         sources may use the rest) or total.",
        refused
            .iter()
            .zip(&counters.refused)
            .map(|(why, n)| {
                format!(
                    "muster_connections_refused_total{{reason=\"{why}\"}} {}",
                    load(n)
                )
            })
            .collect(),
    );
    let closed = ["first_request", "header", "idle", "stalled"];
    out.section(
        "muster_connections_closed_total",
        "counter",
        "API connections closed by the coordinator, by reason: no first request within the \
         header timeout, headers too slow, idle, or a client that stopped reading.",
        closed
            .iter()
            .zip(&counters.closed)
            .map(|(why, n)| {
                format!(
                    "muster_connections_closed_total{{reason=\"{why}\"}} {}",
                    load(n)
                )
            })
            .collect(),
    );
}

/// What the EC2 cache holds, by region (no samples when it is off).
fn ec2_cache_metrics(out: &mut Exposition, caches: &[CacheStatus]) {
    out.section(
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
    out.section(
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
    out.section(
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

/// The external DNS provider's progress, labelled with its kind.
fn dns_metrics(out: &mut Exposition, status: &ProviderStatus) {
    let label = format!("provider=\"{}\"", status.provider);
    let mut labelled = |name: &str, kind: &str, help: &str, value: String| {
        out.section(name, kind, help, vec![format!("{name}{{{label}}} {value}")]);
    };
    labelled(
        "muster_dns_pending_changes",
        "gauge",
        "DNS names whose change is not applied at the provider yet.",
        status.pending_changes.to_string(),
    );
    labelled(
        "muster_dns_conflicts",
        "gauge",
        "DNS names muster wants but does not own, left alone.",
        status.conflicts.len().to_string(),
    );
    labelled(
        "muster_dns_applied_names",
        "gauge",
        "DNS names applied at the provider.",
        status.applied_names.to_string(),
    );
    labelled(
        "muster_dns_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last DNS pass that reached the provider without error (0: never).",
        status.last_success_unix.unwrap_or_default().to_string(),
    );
    labelled(
        "muster_dns_update_failures_total",
        "counter",
        "DNS passes that failed.",
        status.failures_total.to_string(),
    );
    labelled(
        "muster_dns_throttled_total",
        "counter",
        "Answers from the DNS provider that told muster to slow down (each retried).",
        status.throttled_total.to_string(),
    );
    labelled(
        "muster_dns_changes_applied_total",
        "counter",
        "DNS changes applied at the provider.",
        status.applied_total.to_string(),
    );
}
