//! The admin commands: each asks a running coordinator through the
//! [`AdminClient`] and prints the answer, a table by default and the API's
//! JSON with `json`. `main.rs` parses the command line and calls one of
//! these.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use muster_proto::settings::Invalid;
use muster_proto::{CreateClusterRequest, UserDataResponse, ValidationError};
use serde::Serialize;

use super::output::{
    cluster_text, clusters_table, launch_text, node_text, nodes_table, table, tokens_table,
};
use super::{AdminClient, CliError};
use crate::ec2::Ec2Clients;
use crate::launcher::credentials::{check_credentials, DEFAULT_CHECK_REGIONS};

/// What `check-credentials` says when no region accepted the dry run.
const INVALID_CREDENTIALS: &str = "invalid AWS credentials or insufficient EC2 permissions";

/// Prints `value` as pretty JSON.
pub fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: encoding JSON: {e}"),
    }
}

/// `cluster create`: creates the cluster, prints it with its tokens (shown
/// once), and waits up to `wait` for its nodes to be deployed.
pub async fn cluster_create(
    client: &AdminClient,
    req: &CreateClusterRequest,
    wait: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let created = client.create_cluster(req).await?;
    if !json {
        print!("{}", clusters_table(std::slice::from_ref(&created.cluster)));
        if let Some(report) = &created.launch {
            print!("{}", launch_text(report));
        }
        println!("\njoin token (shown once): {}", created.join_token);
        if let Some(token) = &created.byon_token {
            println!("bring-your-own token (shown once): {token}");
        }
    }
    finish_launch(client, &req.name, wait, json, "created", &created).await
}

/// `cluster scale`: launches or removes nodes to reach `count`, and waits
/// up to `wait` for them to settle.
pub async fn cluster_scale(
    client: &AdminClient,
    name: &str,
    count: u32,
    wait: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let scaled = client.scale_cluster(name, count).await?;
    if !json {
        print!("{}", launch_text(&scaled.launch));
        if !scaled.removing.is_empty() {
            println!("removing: {}", scaled.removing.join(", "));
        }
    }
    finish_launch(client, name, wait, json, "scaled", &scaled).await
}

/// After a create or scale: waits for the nodes to settle if asked
/// (`wait`), then prints. With --json that is `answer` alone, or, having
/// waited, `{key: answer, "nodes": [...]}`; otherwise the nodes' table.
async fn finish_launch(
    client: &AdminClient,
    cluster: &str,
    wait: Option<Duration>,
    json: bool,
    key: &str,
    answer: &impl Serialize,
) -> Result<(), CliError> {
    let nodes = match wait {
        Some(timeout) => Some(client.wait_deployed(cluster, timeout).await?),
        None => None,
    };
    match (json, nodes) {
        (true, None) => print_json(answer),
        (true, Some(nodes)) => print_json(&serde_json::json!({ key: answer, "nodes": nodes })),
        (false, Some(nodes)) => print!("{}", nodes_table(&nodes)),
        (false, None) => {}
    }
    Ok(())
}

/// `cluster extend`: a later end of the cluster's lifetime.
pub async fn cluster_extend(
    client: &AdminClient,
    name: &str,
    by: Duration,
    json: bool,
) -> Result<(), CliError> {
    let cluster = client.extend_cluster(name, by).await?;
    if json {
        print_json(&cluster);
    } else {
        print!("{}", clusters_table(std::slice::from_ref(&cluster)));
    }
    Ok(())
}

/// `cluster rotate-token`: a new join token, shown once.
pub async fn cluster_rotate_token(
    client: &AdminClient,
    name: &str,
    expires_in: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let rotated = client.rotate_token(name, expires_in).await?;
    if json {
        print_json(&rotated);
        return Ok(());
    }
    println!(
        "new join token for {} (shown once): {}",
        rotated.cluster, rotated.join_token
    );
    if let Some(at) = &rotated.expires_at {
        println!("it expires at {at}");
    }
    Ok(())
}

/// `cluster byon-token`: a bring-your-own token, shown once.
pub async fn cluster_byon_token(
    client: &AdminClient,
    name: &str,
    max_nodes: Option<u32>,
    json: bool,
) -> Result<(), CliError> {
    let minted = client.byon_token(name, max_nodes).await?;
    if json {
        print_json(&minted);
    } else {
        println!(
            "bring-your-own token for {} (shown once): {}",
            minted.cluster, minted.byon_token
        );
    }
    Ok(())
}

/// `cluster tokens`: every token of the cluster, never a secret.
pub async fn cluster_tokens(client: &AdminClient, name: &str, json: bool) -> Result<(), CliError> {
    let tokens = client.tokens(name).await?;
    if json {
        print_json(&tokens);
    } else {
        print!("{}", tokens_table(&tokens));
    }
    Ok(())
}

/// `cluster revoke-token`: one token retired at once.
pub async fn cluster_revoke_token(
    client: &AdminClient,
    name: &str,
    id: &str,
    json: bool,
) -> Result<(), CliError> {
    let revoked = client.revoke_token(name, id).await?;
    if json {
        print_json(&revoked);
    } else {
        println!("{} token {} of {name} revoked", revoked.kind, revoked.id);
    }
    Ok(())
}

/// `cluster admit`: a removed bring-your-own machine may join again.
pub async fn cluster_admit(
    client: &AdminClient,
    name: &str,
    machine: &str,
    json: bool,
) -> Result<(), CliError> {
    client.admit_machine(name, machine).await?;
    if json {
        print_json(&serde_json::json!({ "cluster": name, "admitted": machine }));
    } else {
        println!("{machine} may join {name} again");
    }
    Ok(())
}

/// `cluster rm`: starts the removal, and waits up to `wait` for it to end.
pub async fn cluster_rm(
    client: &AdminClient,
    name: &str,
    wait: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let mut cluster = client.remove_cluster(name).await?;
    if let Some(timeout) = wait {
        cluster = client.wait_removed(name, timeout).await?;
    }
    if json {
        print_json(&cluster);
    } else {
        print!("{}", clusters_table(std::slice::from_ref(&cluster)));
    }
    Ok(())
}

/// `cluster ls`.
pub async fn cluster_ls(client: &AdminClient, json: bool) -> Result<(), CliError> {
    let clusters = client.clusters().await?;
    if json {
        print_json(&clusters);
    } else {
        print!("{}", clusters_table(&clusters));
    }
    Ok(())
}

/// `cluster show`.
pub async fn cluster_show(client: &AdminClient, name: &str, json: bool) -> Result<(), CliError> {
    let cluster = client.cluster(name).await?;
    if json {
        print_json(&cluster);
    } else {
        print!("{}", cluster_text(&cluster));
    }
    Ok(())
}

/// `admin rotate-token`: a new admin token, shown once.
pub async fn admin_rotate_token(client: &AdminClient, json: bool) -> Result<(), CliError> {
    let rotated = client.rotate_admin_token().await?;
    if json {
        print_json(&rotated);
    } else {
        println!(
            "new admin token (shown once; also written to the coordinator's data dir): {}",
            rotated.admin_token
        );
    }
    Ok(())
}

/// `admin viewer-token`: a new viewer token, shown once.
pub async fn admin_viewer_token(client: &AdminClient, json: bool) -> Result<(), CliError> {
    let issued = client.viewer_token().await?;
    if json {
        print_json(&issued);
    } else {
        println!(
            "new viewer token (shown once; it reads and signs in to /ui/, and changes nothing): {}",
            issued.viewer_token
        );
    }
    Ok(())
}

/// `status`: the coordinator's own health.
pub async fn status(client: &AdminClient, json: bool) -> Result<(), CliError> {
    let status = client.status().await?;
    if json {
        print_json(&status);
        return Ok(());
    }
    let ec2 = match &status.ec2.why {
        None => "trusted".to_owned(),
        Some(why) => format!("not trusted: {why}"),
    };
    let rows = [
        ("version", status.version.clone()),
        ("started", status.started_at.clone()),
        (
            "uptime",
            humantime::format_duration(std::time::Duration::from_secs(status.uptime_secs))
                .to_string(),
        ),
        ("zone", status.zone.clone()),
        ("store", status.store.clone()),
        (
            "leader",
            if status.leader { "yes" } else { "no" }.to_owned(),
        ),
        ("ec2", ec2),
        (
            "connections",
            format!(
                "{} open of {}",
                status.connections.open, status.connections.max
            ),
        ),
    ];
    for (key, value) in rows {
        println!("{key:<12} {value}");
    }
    if let Some(lease) = &status.lease {
        let confirmed = if lease.confirmed {
            ""
        } else {
            ", not confirmed"
        };
        println!(
            "{:<12} term {} held by {} until {}{confirmed}",
            "lease", lease.term, lease.holder, lease.expires_at
        );
        for replica in &lease.replicas {
            println!(
                "{:<12} {} {} ({}, seen {})",
                "replica", replica.role, replica.name, replica.url, replica.seen_at
            );
        }
    }
    Ok(())
}

/// `dns status`: how far the DNS provider has got.
pub async fn dns_status(client: &AdminClient, json: bool) -> Result<(), CliError> {
    let status = client.dns_status().await?;
    if json {
        print_json(&status);
        return Ok(());
    }
    let field = |key: &str| match status.get(key) {
        None | Some(serde_json::Value::Null) => "-".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let when = |key: &str| {
        status
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .map(|secs| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                )
                .to_string()
            })
            .unwrap_or_else(|| "never".to_owned())
    };
    println!("{:<14} {}", "provider", field("provider"));
    if status.get("target").is_some() {
        println!("{:<14} {}", "target", field("target"));
        println!("{:<14} {}", "pending", field("pending_changes"));
        println!("{:<14} {}", "applied names", field("applied_names"));
        println!("{:<14} {}", "last success", when("last_success_unix"));
        println!("{:<14} {}", "last error", field("last_error"));
        if let Some(conflicts) = status.get("conflicts").and_then(|c| c.as_object()) {
            for (name, why) in conflicts {
                println!(
                    "{:<14} {name}: {}",
                    "conflict",
                    why.as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// `node ls`, of one cluster or all.
pub async fn node_ls(
    client: &AdminClient,
    cluster: Option<&str>,
    json: bool,
) -> Result<(), CliError> {
    let nodes = client.nodes(cluster).await?;
    if json {
        print_json(&nodes);
    } else {
        print!("{}", nodes_table(&nodes));
    }
    Ok(())
}

/// `node rm`.
pub async fn node_rm(
    client: &AdminClient,
    cluster: &str,
    name: &str,
    json: bool,
) -> Result<(), CliError> {
    let node = client.remove_node(cluster, name).await?;
    if json {
        print_json(&node);
    } else {
        print!("{}", nodes_table(std::slice::from_ref(&node)));
    }
    Ok(())
}

/// `node drain` (`drained` true) and `node undrain`.
pub async fn node_drain(
    client: &AdminClient,
    cluster: &str,
    name: &str,
    drained: bool,
    json: bool,
) -> Result<(), CliError> {
    let node = client.drain_node(cluster, name, drained).await?;
    if json {
        print_json(&node);
    } else {
        print!("{}", nodes_table(std::slice::from_ref(&node)));
    }
    Ok(())
}

/// `node show`: the node with its latest events.
pub async fn node_show(
    client: &AdminClient,
    cluster: &str,
    name: &str,
    json: bool,
) -> Result<(), CliError> {
    let detail = client.node(cluster, name).await?;
    if json {
        print_json(&detail);
    } else {
        print!("{}", node_text(&detail));
    }
    Ok(())
}

/// `userdata`: renders the cluster's user data and writes it to stdout or
/// `output`.
pub async fn userdata(
    client: &AdminClient,
    cluster: &str,
    output: Option<&Path>,
    expires_in: Option<Duration>,
    json: bool,
) -> Result<(), CliError> {
    let rendered = client.user_data(cluster, expires_in).await?;
    write_user_data(&rendered, output, json)
}

/// Prints what `userdata` got: JSON, or the bytes to stdout or `output`
/// with a note on stderr.
fn write_user_data(
    rendered: &UserDataResponse,
    output: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    if json && output.is_none() {
        print_json(rendered);
        return Ok(());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&rendered.user_data_base64)
        .map_err(|e| {
            Invalid::whole(
                "user_data_base64",
                "",
                format!("the coordinator sent what is not base64: {e}"),
            )
        })?;
    let failed = |name: &'static str, value: String, e: std::io::Error| {
        CliError::Setting(Invalid::whole(name, value, e))
    };
    match output {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(&bytes))
                .map_err(|e| failed("--output", path.display().to_string(), e))?;
            if json {
                print_json(rendered);
                return Ok(());
            }
        }
        None => std::io::stdout()
            .write_all(&bytes)
            .map_err(|e| failed("stdout", String::new(), e))?,
    }
    eprintln!(
        "user data for cluster {}: {} bytes{}; join token (shown once): {}",
        rendered.cluster,
        rendered.size_bytes,
        if rendered.gzip { ", gzipped" } else { "" },
        rendered.join_token
    );
    for agent in &rendered.agents {
        eprintln!(
            "it installs {} ({}, sha256 {})",
            agent.url, agent.arch, agent.sha256
        );
    }
    Ok(())
}

/// `check-credentials`: dry-runs a launch in every region (the commercial
/// ones when `regions` is empty); returns whether one succeeded.
pub async fn credentials(
    regions: Vec<String>,
    ami: Option<String>,
    instance_type: String,
    json: bool,
) -> Result<bool, CliError> {
    let regions = if regions.is_empty() {
        DEFAULT_CHECK_REGIONS
            .iter()
            .map(|r| (*r).to_owned())
            .collect()
    } else {
        regions
    };
    fn bad(name: &'static str, value: &str) -> impl FnOnce(ValidationError) -> CliError {
        let value = value.to_owned();
        move |e| CliError::Setting(Invalid::whole(name, value, e.reason))
    }
    for region in &regions {
        muster_proto::validate::region(region).map_err(bad("--regions", region))?;
    }
    if let Some(ami) = &ami {
        muster_proto::validate::resource_id("ami", "ami", ami).map_err(bad("--ami", ami))?;
    }
    muster_proto::validate::instance_type(&instance_type)
        .map_err(bad("--instance-type", &instance_type))?;
    let clients = Ec2Clients::from_env().await;
    let checks = check_credentials(&clients, &regions, ami.as_deref(), &instance_type).await;
    let valid = checks.iter().any(|c| c.ok);
    if json {
        print_json(&serde_json::json!({ "valid": valid, "regions": checks }));
    } else {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                vec![
                    c.region.clone(),
                    if c.ok { "ok" } else { "failed" }.to_owned(),
                    c.detail.clone(),
                ]
            })
            .collect();
        print!("{}", table(&["REGION", "RESULT", "DETAIL"], &rows));
        if valid {
            println!("credentials are valid");
        }
    }
    if !valid {
        eprintln!("error: {INVALID_CREDENTIALS}");
        for check in &checks {
            eprintln!("  {}: {}", check.region, check.detail);
        }
    }
    Ok(valid)
}

/// `backup FILE`: an online, consistent copy of the running coordinator's
/// store, written to `path` (0600).
pub async fn backup(client: &AdminClient, path: &Path, json: bool) -> Result<(), CliError> {
    let bytes = client.backup().await?;
    muster_proto::fsutil::write_durably(path, &bytes, 0o600)
        .map_err(|e| CliError::Setting(Invalid::whole("FILE", path.display().to_string(), e)))?;
    if json {
        print_json(&serde_json::json!({ "file": path, "bytes": bytes.len() }));
    } else {
        println!(
            "store copied to {} ({} bytes); bring it back with \
             `muster-coordinator restore {} --data-dir DIR`",
            path.display(),
            bytes.len(),
            path.display()
        );
    }
    Ok(())
}

/// `restore FILE`: brings a backup back as the store of `data_dir`, which
/// must have none yet (the coordinator stopped, or a new data dir).
pub fn restore(backup: &Path, data_dir: &Path) -> Result<(), crate::store::StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|e| crate::store::StoreError::Restore {
        path: data_dir.display().to_string(),
        why: e.to_string(),
    })?;
    let store = data_dir.join(crate::store::STORE_FILE);
    let restored = crate::store::Store::restore(backup, &store)?;
    let (clusters, nodes) = (restored.clusters()?.len(), restored.nodes(None)?.len());
    println!(
        "restored {} into {}: {clusters} clusters, {nodes} nodes",
        backup.display(),
        store.display()
    );
    Ok(())
}
