//! The monitoring that ships in `packaging/monitoring/` works with what
//! the coordinator exports.
//!
//! - `promtool` (Debian's `prometheus` package) checks the alert rules and
//!   runs their unit tests, and parses every dashboard query, each turned
//!   into a recording rule.
//! - A real coordinator, with a real agent's node and the Route53 provider
//!   on moto, exports every `muster_*` metric the rules and the dashboard
//!   name, and every metric it exports has HELP, a unit where it has one,
//!   and labels that never carry an instance id or an address.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use muster_proto::NodeState;
use muster_tests::route53 as r53;
use muster_tests::{ec2, Agent, Coordinator, Imds, Moto, EVENTUALLY, ZONE};

const CLUSTER: &str = "mon";

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring")
}

/// Runs `promtool ARGS`; its output, or a failure that says why.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running promtool: {e} (scripts/setup installs prometheus)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The alert rules are valid, and their unit tests pass: each alert fires
/// on the series meant to fire it and not on the close case beside it.
#[test]
fn alert_rules_pass_promtool() {
    let dir = monitoring_dir();
    let rules = dir.join("muster-alerts.yml");
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tests = dir.join("muster-alerts.test.yml");
    let tested = promtool(&["test", "rules", tests.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every query of the dashboard, its template variables filled in as
/// Grafana would, parses: each becomes a recording rule for `promtool
/// check rules`.
#[test]
fn dashboard_queries_parse() {
    let exprs = dashboard_queries();
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$cluster", ".*")
            .replace("$instance", ".*");
        assert!(!expr.contains('$'), "a variable left unfilled: {expr}");
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rules).unwrap();
    let checked = promtool(&["check", "rules", file.path().to_str().unwrap()]);
    assert!(
        checked.contains(&format!("{} rules found", exprs.len())),
        "{checked}"
    );
}

/// Every target's `expr` in the dashboard.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring_dir().join("muster-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(targets) = map.get("targets").and_then(|t| t.as_array()) {
                    out.extend(
                        targets
                            .iter()
                            .filter_map(|t| t.get("expr")?.as_str().map(str::to_owned)),
                    );
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    exprs
}

/// The `muster_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("muster_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let before = rest[..at].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// Metric families in an exposition: name to (type, has HELP).
fn families(exposition: &str) -> BTreeMap<String, (String, bool)> {
    let mut families: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.to_owned()).or_default().0 = kind.to_owned();
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_owned()).or_default().1 = !help.trim().is_empty();
        }
    }
    families
}

/// A coordinator with the Route53 provider and one real node exports every
/// metric the rules and the dashboard use; every metric it exports has HELP
/// and a type, counters end in `_total`, durations are in seconds, and no
/// label carries an instance id or an address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_used_is_exported_and_explains_itself() {
    let moto = Moto::start().await;
    let route53 = r53::client(&moto.endpoint()).await;
    let zone_id = r53::create_zone(&route53, ZONE).await;
    let coordinator = Coordinator::start_with(
        &moto,
        &["--dns-provider", "route53", "--route53-zone", &zone_id],
    )
    .await;
    let join_token = coordinator.create_cluster(CLUSTER).await.join_token;
    let sdk = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &id).await;
    let agent = Agent::start(&coordinator, &imds, CLUSTER, &join_token);
    let node = coordinator
        .wait_for_node(CLUSTER, &id, NodeState::Deployed, EVENTUALLY)
        .await;
    assert_eq!(node.state, NodeState::Deployed, "{}", agent.logs());

    let exposition = coordinator.metrics().await;
    let exported = families(&exposition);

    // What the rules and the dashboard use is there.
    let dir = monitoring_dir();
    let mut used = BTreeSet::new();
    for file in ["muster-alerts.yml", "muster-dashboard.json"] {
        used.extend(metric_names(
            &std::fs::read_to_string(dir.join(file)).unwrap(),
        ));
    }
    assert!(used.len() >= 20, "only {used:?}");
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| {
            let histogram_part = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                exported.get(base).filter(|(kind, _)| kind == "histogram")
            });
            !exported.contains_key(name.as_str()) && histogram_part.is_none()
        })
        .collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}");

    // Every family explains itself.
    for (name, (kind, help)) in &exported {
        assert!(*help, "{name} has no HELP");
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind.as_str()),
            "{name} has type {kind:?}"
        );
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}: counters, and only they, end in _total"
        );
        let words: Vec<&str> = name.split('_').collect();
        if ["duration", "age", "timestamp", "time"]
            .iter()
            .any(|w| words.contains(w))
        {
            assert!(
                name.ends_with("_seconds") || name.ends_with("_seconds_total"),
                "{name} names a time without its unit"
            );
        }
    }

    // Labels stay bounded: the node's instance id and addresses appear in
    // no sample.
    let described = ec2::describe(&sdk, &id).await;
    let mut secrets = vec![id.clone()];
    secrets.extend(described.public_ipv4.map(|ip| ip.to_string()));
    secrets.extend(described.private_ipv4.map(|ip| ip.to_string()));
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "{secret} in a sample: {line}"
            );
        }
    }

    // The samples the dashboard leans on carry what happened.
    assert_eq!(
        coordinator
            .metric(&format!(
                "muster_cluster_nodes{{cluster=\"{CLUSTER}\",state=\"deployed\"}}"
            ))
            .await,
        1
    );
    assert!(
        coordinator
            .metric("muster_node_transitions_total{from=\"none\",to=\"deployed\"}")
            .await
            >= 1
    );
    assert!(
        exposition.contains("muster_aws_request_duration_seconds_count{service=\"ec2\",operation=\"DescribeInstances\"}"),
        "the EC2 claim check was timed"
    );
    assert_eq!(coordinator.metric("muster_leader").await, 1);
}

/// The scanner finds names in prose and queries, and not inside longer
/// words.
#[test]
fn metric_names_are_found() {
    let names = metric_names(
        "rate(muster_heartbeats_total[5m]) / muster_nodes{state=\"x\"} see muster-coordinator, \
         xmuster_not_this",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["muster_heartbeats_total", "muster_nodes"]
    );
}
