//! `muster-load`: the load generator behind BENCHMARKS.md's P1 and P8.
//!
//! It starts moto and a real coordinator, launches `--nodes` instances in
//! moto, registers every one of them through the agent API (each register
//! checked against moto, as in production), then floods the coordinator
//! with heartbeats from `--concurrency` workers for `--seconds`, each
//! heartbeat a real HTTPS request with host facts and unchanged addresses,
//! the steady state of a fleet. It prints Markdown rows:
//!
//! - P1: heartbeats per second the coordinator answered with 200, their
//!   latency p50/p99, errors, and the coordinator's CPU during the flood.
//! - P8: the coordinator's RSS growth per node, from before the registers
//!   to after the flood (every node then holds its facts in memory).
//!
//! The generator runs on the same machine as the coordinator, sharing its
//! cores: the figures are a floor for what one coordinator sustains.
//! `scripts/bench` runs it.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_proto::{paths, HeartbeatRequest, RegisterRequest, RegisterResponse, PROTOCOL_VERSION};
use muster_tests::procs::{cpu_time, percentile, rss_kib};
use muster_tests::{ec2, Coordinator, Moto};

const CLUSTER: &str = "load";

struct Args {
    nodes: usize,
    seconds: u64,
    concurrency: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        nodes: 2000,
        seconds: 20,
        concurrency: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nodes" => parsed.nodes = value.parse()?,
            "--seconds" => parsed.seconds = value.parse()?,
            "--concurrency" => parsed.concurrency = value.parse()?,
            other => {
                anyhow::bail!("unknown flag {other}; known: --nodes, --seconds, --concurrency")
            }
        }
    }
    anyhow::ensure!(
        (1..=100_000).contains(&parsed.nodes),
        "--nodes must be 1..=100000"
    );
    anyhow::ensure!(
        (1..=3600).contains(&parsed.seconds),
        "--seconds must be 1..=3600"
    );
    anyhow::ensure!(
        (1..=1024).contains(&parsed.concurrency),
        "--concurrency must be 1..=1024"
    );
    Ok(parsed)
}

/// One registered node, as the generator keeps it.
struct Node {
    id: String,
    private: Ipv4Addr,
    public: Option<Ipv4Addr>,
    credential: String,
}

/// Launches `n` instances in moto, 500 per call; returns (id, private,
/// public, zone) of each.
async fn launch(
    client: &aws_sdk_ec2::Client,
    n: usize,
) -> anyhow::Result<Vec<(String, Ipv4Addr, Option<Ipv4Addr>, String)>> {
    let mut left = n;
    while left > 0 {
        let batch = left.min(500) as i32;
        client
            .run_instances()
            .image_id(ec2::TEST_AMI)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(batch)
            .max_count(batch)
            .tag_specifications(ec2::member_tags(CLUSTER))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "RunInstances: {}",
                    aws_sdk_ec2::error::DisplayErrorContext(&e)
                )
            })?;
        left -= batch as usize;
    }
    let mut found = Vec::with_capacity(n);
    let mut pages = client.describe_instances().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow::anyhow!(
                "DescribeInstances: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            )
        })?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let (Some(id), Some(private)) = (i.instance_id(), i.private_ip_address()) else {
                continue;
            };
            found.push((
                id.to_owned(),
                private.parse()?,
                i.public_ip_address().map(str::parse).transpose()?,
                i.placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    anyhow::ensure!(
        found.len() == n,
        "moto lists {} of {n} instances",
        found.len()
    );
    Ok(found)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let moto = Moto::start().await;
    // Heartbeats come from the generator, not on a schedule: a long
    // interval and grace keep liveness out of the measure.
    let coordinator =
        // Every simulated agent speaks from 127.0.0.1, so the per-source
        // limit, meant for one node per address, is off.
        Coordinator::start_with(
            &moto,
            &[
                "--heartbeat-interval",
                "300s",
                "--grace",
                "1h",
                "--agent-rate-limit",
                "0",
            ],
        )
        .await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let client = ec2::client(&moto.endpoint()).await;
    let instances = launch(&client, args.nodes).await?;

    let http = coordinator.https_client();
    let url = coordinator.url();
    let rss_before = rss_kib(coordinator.pid());

    // Registers, 16 at a time (each waits on moto's DescribeInstances).
    let started = Instant::now();
    let mut registered = Vec::with_capacity(instances.len());
    let mut pending = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for (id, private, public, zone) in instances {
        let (http, url, token, limit) = (http.clone(), url.clone(), token.clone(), limit.clone());
        pending.spawn(async move {
            let _permit = limit.acquire().await?;
            let body = RegisterRequest {
                protocol: PROTOCOL_VERSION,
                cluster: CLUSTER.to_owned(),
                instance_id: id.clone(),
                availability_zone: zone,
                region: ec2::TEST_REGION.to_owned(),
                private_ipv4: private,
                public_ipv4: public,
                agent_version: "load".to_owned(),
                byon: None,
                signed_identity: None,
            };
            let answer = http
                .post(format!("{url}{}", paths::AGENT_REGISTER))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(
                answer.status().is_success(),
                "register {id}: {}",
                answer.status()
            );
            let registered: RegisterResponse = answer.json().await?;
            Ok(Node {
                id,
                private,
                public,
                credential: registered.credential,
            })
        });
    }
    while let Some(joined) = pending.join_next().await {
        registered.push(joined??);
    }
    let register_rate = registered.len() as f64 / started.elapsed().as_secs_f64();

    // The flood: each worker walks its share of the nodes round and round.
    let nodes = Arc::new(registered);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let cpu_before = cpu_time(coordinator.pid());
    let flood_started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let (http, url, nodes) = (http.clone(), url.clone(), nodes.clone());
        let step = args.concurrency;
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut index = worker;
            while Instant::now() < deadline {
                let node = &nodes[index % nodes.len()];
                index += step;
                let body = HeartbeatRequest {
                    instance_id: node.id.clone(),
                    private_ipv4: node.private,
                    public_ipv4: node.public,
                    facts: muster_tests::host_facts(),
                };
                let sent = Instant::now();
                let answer = http
                    .post(format!("{url}{}", paths::AGENT_HEARTBEAT))
                    .bearer_auth(&node.credential)
                    .json(&body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    while let Some(joined) = workers.join_next().await {
        let (l, e) = joined?;
        latencies.extend(l);
        errors += e;
    }
    let wall = flood_started.elapsed().as_secs_f64();
    let cpu = (cpu_time(coordinator.pid()) - cpu_before).as_secs_f64() / wall * 100.0;
    latencies.sort();
    let rss_after = rss_kib(coordinator.pid());

    println!(
        "| P1 | heartbeats/s one coordinator answers: {} registered nodes, {} HTTPS workers for {} s, generator on the same 2 cores | {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, {errors} errors; coordinator CPU {cpu:.0} % of a core (registers beforehand: {register_rate:.0}/s, each checked against moto) |",
        nodes.len(),
        args.concurrency,
        args.seconds,
        latencies.len() as f64 / wall,
        percentile(&latencies, 50.0).as_secs_f64() * 1000.0,
        percentile(&latencies, 99.0).as_secs_f64() * 1000.0,
    );
    println!(
        "| P8 | coordinator RSS per node ({} nodes registered, each with host facts in memory) | {:.2} KiB per node ({:.1} MiB before the registers, {:.1} MiB after the flood) |",
        nodes.len(),
        rss_after.saturating_sub(rss_before) as f64 / nodes.len() as f64,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
    );
    drop(coordinator);
    drop(moto);
    Ok(())
}
