//! What the admin commands print when not asked for JSON: tables and
//! short texts a person reads.

use std::fmt::Write as _;

use muster_proto::launch::LaunchReport;
use muster_proto::{ClusterView, NodeDetail, NodeView};

/// Lays out rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{:<width$}  ", cell, width = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn ip(ip: Option<std::net::Ipv4Addr>) -> String {
    ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string())
}

/// `cluster ls` as a table.
pub fn clusters_table(clusters: &[ClusterView]) -> String {
    let rows: Vec<Vec<String>> = clusters
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.state.to_string(),
                c.deployed.to_string(),
                c.nodes.to_string(),
                c.launch
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |l| l.count.to_string()),
                c.dns_name.clone(),
                c.created_at.clone(),
                c.expires_at.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "STATE", "DEPLOYED", "NODES", "TARGET", "DNS", "CREATED", "EXPIRES",
        ],
        &rows,
    )
}

/// `cluster show` as text: the table line, then how nodes are launched.
pub fn cluster_text(cluster: &ClusterView) -> String {
    let mut out = clusters_table(std::slice::from_ref(cluster));
    let Some(l) = &cluster.launch else {
        out.push_str("\nnodes join on their own (no launch)\n");
        return out;
    };
    let none = || "-".to_owned();
    let _ = writeln!(out);
    for (key, value) in [
        ("region", l.region.clone()),
        ("instance type", l.instance_type.clone()),
        ("target count", l.count.to_string()),
        ("data volume", format!("{} GiB gp2", l.disk_gb)),
        ("image", l.ami.clone()),
        ("vpc", l.vpc_id.clone()),
        ("subnets", l.subnets.join(", ")),
        ("security groups", l.security_groups.join(", ")),
        (
            "instance profile",
            l.instance_profile.clone().unwrap_or_else(none),
        ),
        ("key pair", l.key_name.clone()),
        ("private key", l.key_path.clone().unwrap_or_else(none)),
    ] {
        let _ = writeln!(out, "{key:<17} {value}");
    }
    for problem in &l.excluded_subnets {
        let _ = writeln!(
            out,
            "{:<17} {}: {}",
            "left out", problem.subnet, problem.reason
        );
    }
    out
}

/// What a launch did, in words.
pub fn launch_text(report: &LaunchReport) -> String {
    let mut out = format!("launched {} instances", report.launched.len());
    if report.short > 0 {
        let _ = write!(out, "; {} could not be launched anywhere", report.short);
    }
    out.push('\n');
    for refused in &report.refused {
        let _ = writeln!(out, "  {} refused: {}", refused.subnet, refused.reason);
    }
    out
}

/// `node ls` as a table.
/// `cluster tokens`: one row per token.
pub fn tokens_table(tokens: &[muster_proto::TokenView]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.kind.clone(),
                t.created_at.clone(),
                t.expires_at.clone().unwrap_or_else(|| "never".to_owned()),
                t.uses.to_string(),
                match (t.nodes, t.max_nodes) {
                    (Some(n), Some(max)) => format!("{n}/{max}"),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    table(
        &["ID", "KIND", "CREATED", "EXPIRES", "USES", "NODES"],
        &rows,
    )
}

pub fn nodes_table(nodes: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.cluster.clone(),
                n.name.clone(),
                n.state.to_string(),
                ip(n.public_ipv4),
                ip(n.private_ipv4),
                n.availability_zone.clone(),
                n.dns_name.clone(),
            ]
        })
        .collect();
    table(
        &[
            "CLUSTER", "NAME", "STATE", "PUBLIC", "PRIVATE", "ZONE", "DNS",
        ],
        &rows,
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `node show` as text.
pub fn node_text(detail: &NodeDetail) -> String {
    let n = &detail.node;
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<14}{v}");
    };
    field("Name:", n.name.clone());
    field("Cluster:", n.cluster.clone());
    field(
        "State:",
        if n.drained {
            format!(
                "{} (drained by an operator; node undrain lifts it)",
                n.state
            )
        } else {
            n.state.to_string()
        },
    );
    field("Instance:", n.instance_id.clone());
    field("Zone:", format!("{} ({})", n.availability_zone, n.region));
    field("Public IPv4:", ip(n.public_ipv4));
    field("Private IPv4:", ip(n.private_ipv4));
    if let Some(ipv6) = n.ipv6 {
        field("IPv6:", ipv6.to_string());
    }
    field("DNS:", n.dns_name.clone());
    field("Internal DNS:", n.internal_dns_name.clone());
    field("Created:", n.created_at.clone());
    field("Updated:", n.updated_at.clone());
    field(
        "Last seen:",
        n.last_seen_at.clone().unwrap_or_else(|| "-".into()),
    );
    if let Some(f) = &n.facts {
        field("OS:", format!("{} (kernel {})", f.os, f.kernel));
        field("CPUs:", f.cpus.to_string());
        field(
            "Load:",
            format!(
                "{:.2} {:.2} {:.2}",
                f.load_average[0], f.load_average[1], f.load_average[2]
            ),
        );
        field(
            "Memory:",
            format!(
                "{} used of {}",
                bytes(f.memory_used_bytes),
                bytes(f.memory_total_bytes)
            ),
        );
        for d in &f.disks {
            field(
                "Disk:",
                format!(
                    "{} {} used of {}",
                    d.mount,
                    bytes(d.used_bytes),
                    bytes(d.total_bytes)
                ),
            );
        }
        field(
            "Uptime:",
            humantime::format_duration(std::time::Duration::from_secs(f.uptime_secs)).to_string(),
        );
    }
    for check in &n.checks {
        let status = if check.passing { "passing" } else { "failing" };
        let first = check.output.lines().next().unwrap_or("");
        field(
            "Check:",
            format!("{} ({}) {status}: {first}", check.name, check.kind.as_str()),
        );
    }
    for notice in &n.notices {
        let time = notice
            .time
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default();
        field("EC2 notice:", format!("{}{time}", notice.kind.as_str()));
    }
    if detail.events_total > detail.events.len() as u64 {
        let _ = writeln!(
            out,
            "\nEvents (the latest {} of {}; the events API pages through all):",
            detail.events.len(),
            detail.events_total
        );
    } else {
        out.push_str("\nEvents:\n");
    }
    let rows: Vec<Vec<String>> = detail
        .events
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.from.map_or_else(|| "-".into(), |s| s.to_string()),
                e.to.to_string(),
                e.source.to_string(),
                e.reason.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["AT", "FROM", "TO", "SOURCE", "REASON"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns line up under their headers.
    #[test]
    fn table_pads_columns() {
        let text = table(
            &["A", "LONG"],
            &[
                vec!["xxxx".into(), "y".into()],
                vec!["z".into(), "w".into()],
            ],
        );
        assert_eq!(text, "A     LONG\nxxxx  y\nz     w\n");
    }

    /// Sizes read as people write them.
    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(512), "512.0 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
