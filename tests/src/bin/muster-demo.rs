//! `muster-demo`: the whole loop on the emulators, told step by step.
//!
//! It starts moto's EC2 emulator and a real `muster-coordinator serve`,
//! which launches a cluster of three nodes in moto (network, security
//! group, key pair, gp2 volumes, user data). Each instance gets its own
//! IMDSv2 emulator and a real `muster-agent run` configured from what its
//! user data says, as cloud-init would. It shows the nodes and what the
//! coordinator's DNS answers (asked with our own resolver, not the
//! coordinator's word). Then it associates an Elastic IP with one instance
//! in moto and shows DNS follow while every process keeps running, and
//! finally removes the cluster. Every process is stopped by pid at the end.
//! `scripts/demo` builds and runs it.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use muster_tests::{ec2, wait_until, Agent, Coordinator, Imds, Moto, POLL};

const CLUSTER: &str = "demo";
const NODES: usize = 3;
const PATIENCE: Duration = Duration::from_secs(30);

fn step(text: &str) {
    println!("\n==> {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    step("starting moto (EC2 emulator) and muster-coordinator serve");
    let moto = Moto::start().await;
    let coordinator = Coordinator::start(&moto).await;
    println!(
        "    moto at {}, coordinator API at {}, DNS at {}",
        moto.endpoint(),
        coordinator.url(),
        coordinator.dns_addr()
    );
    create_cluster(&coordinator).await?;
    let client = ec2::client(&moto.endpoint()).await;
    let fleet = boot(&coordinator, &client).await?;
    let nodes = deployed(&coordinator).await?;
    show_dns(&coordinator, &nodes).await?;
    let (id, _imds, agent) = &fleet[0];
    move_elastic_ip(&coordinator, &client, &nodes, id, agent).await?;
    status_and_removal(&coordinator, &client, id, agent).await;

    step("cleaning up: every process is stopped by pid");
    drop(fleet);
    drop(coordinator);
    drop(moto);
    println!("    done");
    Ok(())
}

/// `cluster create`, then `cluster show` and `node ls`.
async fn create_cluster(coordinator: &Coordinator) -> anyhow::Result<()> {
    let create = ec2::create_args(
        CLUSTER,
        NODES as u32,
        30,
        &["--admin-cidr", "198.51.100.0/24"],
    );
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    step(&format!("muster-coordinator {}", create.join(" ")));
    let out = coordinator.admin(&create).await;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        anyhow::bail!(
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = coordinator.admin(&["cluster", "show", CLUSTER]).await;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let out = coordinator.admin(&["node", "ls"]).await;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// Boots each instance as cloud-init would: its user data's agent
/// settings, an IMDS of its own. Returns each instance's id, IMDS and agent.
async fn boot(
    coordinator: &Coordinator,
    client: &aws_sdk_ec2::Client,
) -> anyhow::Result<Vec<(String, Imds, Agent)>> {
    step("booting each instance as cloud-init would: its user data configures a muster-agent, and an IMDSv2 emulator serves its metadata");
    let mut fleet = Vec::new();
    for node in coordinator.nodes(CLUSTER).await {
        let id = node.instance_id;
        let (_, settings) = ec2::cloud_config(client, &id).await;
        let token = settings["join_token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no join token in the user data of {id}"))?;
        let imds = Imds::start(client.clone(), &id).await;
        let agent = Agent::start(coordinator, &imds, CLUSTER, token);
        println!(
            "    {id}: user data names {} and cluster {}; agent pid {}",
            settings["coordinator_url"],
            settings["cluster"],
            agent.pid()
        );
        fleet.push((id, imds, agent));
    }
    Ok(fleet)
}

/// Waits until every node is deployed; returns them.
async fn deployed(coordinator: &Coordinator) -> anyhow::Result<Vec<muster_proto::NodeView>> {
    step("waiting until every node is deployed");
    let nodes = wait_until(
        PATIENCE,
        POLL,
        || coordinator.nodes(CLUSTER),
        |nodes| nodes.len() == NODES && nodes.iter().all(|n| n.state.as_str() == "deployed"),
    )
    .await;
    if nodes.len() != NODES {
        anyhow::bail!("only {} of {NODES} nodes registered", nodes.len());
    }
    let out = coordinator.admin(&["node", "ls"]).await;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(nodes)
}

/// What the coordinator's DNS answers for every node and the cluster.
async fn show_dns(
    coordinator: &Coordinator,
    nodes: &[muster_proto::NodeView],
) -> anyhow::Result<()> {
    step("what the coordinator's DNS answers (asked directly, UDP)");
    let resolver = coordinator.resolver();
    for node in nodes {
        for name in [
            node.dns_name.clone(),
            node.internal_dns_name.clone(),
            format!("app.{}", node.dns_name),
        ] {
            let answer = resolver.a(&name).await?;
            let cname = answer
                .cnames
                .first()
                .map(|c| format!(" (CNAME {c})"))
                .unwrap_or_default();
            println!("    {name:<60} A {:?}{cname}", answer.a);
        }
    }
    let cluster_name = format!("{CLUSTER}.{}", muster_tests::ZONE);
    println!(
        "    {cluster_name:<60} A {:?}",
        resolver.a(&cluster_name).await?.a
    );
    Ok(())
}

/// A new Elastic IP for instance `id`, and DNS following it with nothing
/// restarted.
async fn move_elastic_ip(
    coordinator: &Coordinator,
    client: &aws_sdk_ec2::Client,
    nodes: &[muster_proto::NodeView],
    id: &str,
    agent: &Agent,
) -> anyhow::Result<()> {
    let resolver = coordinator.resolver();
    let name = nodes
        .iter()
        .find(|n| n.instance_id == id)
        .map(|n| n.dns_name.clone())
        .ok_or_else(|| anyhow::anyhow!("node of {id} not listed"))?;
    step(&format!(
        "associating a new Elastic IP with {id} in moto; nothing is restarted"
    ));
    let before = resolver.a(&name).await?.a;
    let eip = ec2::associate_new_eip(client, id).await;
    let started = Instant::now();
    println!("    EC2 now says {id} has {eip}; DNS said {before:?}");
    let answer = wait_until(
        PATIENCE,
        Duration::from_millis(20),
        || resolver.a(&name),
        |a| a.as_ref().is_ok_and(|a| a.a == vec![eip]),
    )
    .await?;
    if answer.a != vec![eip] {
        anyhow::bail!("DNS still answers {:?} for {name}", answer.a);
    }
    println!(
        "    DNS answers {:?} for {name} after {:.2?} (agent pid {} unchanged)",
        answer.a,
        started.elapsed(),
        agent.pid()
    );
    Ok(())
}

/// `muster-agent status` on the node, `node show`, then `cluster rm`.
async fn status_and_removal(
    coordinator: &Coordinator,
    client: &aws_sdk_ec2::Client,
    id: &str,
    agent: &Agent,
) {
    step("muster-agent status on that node");
    let (code, status) = agent.status_json().await;
    println!(
        "    exit {code}: state {} node {} dns_resolves {} public {}",
        status["state"], status["node"], status["dns_resolves"], status["public_ipv4"]
    );

    step(&format!("muster-coordinator node show {CLUSTER} {id}"));
    let out = coordinator.admin(&["node", "show", CLUSTER, id]).await;
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step(&format!("muster-coordinator cluster rm {CLUSTER}"));
    let out = coordinator.admin(&["cluster", "rm", CLUSTER]).await;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let running = ec2::instances_of_cluster(client, CLUSTER)
        .await
        .iter()
        .filter(|i| i.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some("running"))
        .count();
    println!("    instances of {CLUSTER} still running in EC2: {running}");
}
