//! `muster-load`: the load generator behind BENCHMARKS.md's P1 and P8.
//!
//! It starts moto and a real coordinator, launches `--nodes` instances in
//! moto, registers every one of them through the agent API (each register
//! checked against moto, as in production), then runs two phases of
//! `--seconds` each, every heartbeat a real HTTPS request with host facts
//! and unchanged addresses, the steady state of a fleet:
//!
//! 1. The flood: `--concurrency` workers send heartbeats back to back,
//!    walking the nodes round and round: what one coordinator sustains.
//! 2. The fleet: every node is a simulated agent with its own HTTPS
//!    connection, heartbeating on the interval the register answered
//!    (`--interval`, handed to the coordinator) plus a random jitter up to
//!    the answered jitter, from a random start, as real agents do. With the
//!    defaults, 2000 nodes every 4 s offer 500/s: Kubernetes' 5,000 nodes
//!    at 10 s. The first interval, in which every agent opens its
//!    connection, is left out of the latencies.
//!
//! It prints Markdown rows:
//!
//! - P1: for each phase, heartbeats per second the coordinator answered
//!   with 200, their latency p50/p99, errors, and the coordinator's CPU.
//! - P8: the coordinator's anonymous RSS (heap and stacks; not the
//!   executable's pages, which the first registers touch once) per node:
//!   the marginal cost, the growth over the second half of the registers
//!   (each node heartbeats once after its register, to hold its facts);
//!   the average, from before the registers to after the flood; and the
//!   peak of the fleet phase, with every node on its own connection, as
//!   in a real fleet.
//!
//! Every request goes out as the agent's do: HTTP/1.1 over TLS.
//!
//! The generator runs on the same machine as the coordinator, sharing its
//! cores: the figures are a floor for what one coordinator sustains.
//! `scripts/bench` runs it.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_proto::{paths, HeartbeatRequest, RegisterRequest, RegisterResponse, PROTOCOL_VERSION};
use muster_tests::procs::{cpu_time, percentile, rss_anon_kib, rss_kib};
use muster_tests::{ec2, Coordinator, Moto};

const CLUSTER: &str = "load";

/// How long the coordinator is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

struct Args {
    nodes: usize,
    seconds: u64,
    concurrency: usize,
    interval: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        nodes: 2000,
        seconds: 20,
        concurrency: 64,
        interval: 4,
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
            "--interval" => parsed.interval = value.parse()?,
            other => {
                anyhow::bail!(
                    "unknown flag {other}; known: --nodes, --seconds, --concurrency, --interval"
                )
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
    anyhow::ensure!(
        (1..=300).contains(&parsed.interval),
        "--interval must be 1..=300 seconds"
    );
    Ok(parsed)
}

/// One registered node, as the generator keeps it.
struct Node {
    id: String,
    private: Ipv4Addr,
    public: Option<Ipv4Addr>,
    credential: String,
    /// The pacing the register answered.
    interval: Duration,
    jitter: Duration,
}

/// An HTTPS client that speaks to `coordinator` as the agent does:
/// HTTP/1.1 only, trusting the coordinator's CA.
fn agent_client(coordinator: &Coordinator) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(coordinator.ca_file())?;
    Ok(muster_tests::coordinator::https_client_builder(&ca)
        .http1_only()
        .build()?)
}

/// One heartbeat for `node` over `http`: its latency if answered 200.
async fn beat(http: &reqwest::Client, url: &str, node: &Node) -> Option<Duration> {
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
            Some(sent.elapsed())
        }
        _ => None,
    }
}

/// What one worker or agent of a phase saw: latencies of the steady
/// state, and counts of heartbeats answered (all of them) and failed.
type Tally = (Vec<Duration>, u64, u64);

/// What a phase measured.
struct Phase {
    latencies: Vec<Duration>,
    answered: u64,
    errors: u64,
    wall: f64,
    cpu: f64,
    /// The coordinator's largest anonymous RSS seen during the phase, KiB.
    peak_anon_kib: u64,
}

impl Phase {
    /// Runs `workers` (each giving its latencies and errors) while timing
    /// the coordinator's CPU.
    async fn measure(
        coordinator: &Coordinator,
        mut workers: tokio::task::JoinSet<Tally>,
    ) -> anyhow::Result<Phase> {
        let cpu_before = cpu_time(coordinator.pid());
        let started = Instant::now();
        let mut latencies = Vec::new();
        let (mut answered, mut errors) = (0, 0);
        let mut sample = tokio::time::interval(Duration::from_millis(250));
        let mut peak_anon_kib = 0;
        loop {
            tokio::select! {
                joined = workers.join_next() => {
                    let Some(joined) = joined else { break };
                    let (l, a, e) = joined?;
                    latencies.extend(l);
                    answered += a;
                    errors += e;
                }
                _ = sample.tick() => {
                    peak_anon_kib = peak_anon_kib.max(rss_anon_kib(coordinator.pid()));
                }
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = (cpu_time(coordinator.pid()) - cpu_before).as_secs_f64() / wall * 100.0;
        latencies.sort();
        Ok(Phase {
            latencies,
            answered,
            errors,
            wall,
            cpu,
            peak_anon_kib,
        })
    }

    fn figures(&self) -> String {
        format!(
            "{:.0}/s, p50 {:.1} ms, p99 {:.1} ms, {} errors; coordinator CPU {:.0} % of a core",
            self.answered as f64 / self.wall,
            percentile(&self.latencies, 50.0).as_secs_f64() * 1000.0,
            percentile(&self.latencies, 99.0).as_secs_f64() * 1000.0,
            self.errors,
            self.cpu,
        )
    }
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

/// Registers `instances` with `token`, 16 at a time (each waits on moto's
/// DescribeInstances).
async fn register(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    instances: Vec<(String, Ipv4Addr, Option<Ipv4Addr>, String)>,
) -> anyhow::Result<Vec<Node>> {
    let mut pending = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for (id, private, public, zone) in instances {
        let (http, url, token, limit) = (
            http.clone(),
            url.to_owned(),
            token.to_owned(),
            limit.clone(),
        );
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
                interval: Duration::from_millis(registered.heartbeat_interval_ms),
                jitter: Duration::from_millis(registered.heartbeat_jitter_ms),
            })
        });
    }
    let mut registered = Vec::new();
    while let Some(joined) = pending.join_next().await {
        registered.push(joined??);
    }
    Ok(registered)
}

/// One heartbeat from each of `nodes`, in turn; fails unless all are
/// answered.
async fn beat_each(http: &reqwest::Client, url: &str, nodes: &[Node]) -> anyhow::Result<()> {
    let mut answered = 0;
    for node in nodes {
        answered += usize::from(beat(http, url, node).await.is_some());
    }
    anyhow::ensure!(
        answered == nodes.len(),
        "{answered} of {} first heartbeats answered",
        nodes.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let moto = Moto::start().await;
    // A long grace keeps liveness out of the measure: registering takes
    // a while, and nodes registered first wait silent for the rest.
    let interval = format!("{}s", args.interval);
    let coordinator =
        // Every simulated agent speaks from 127.0.0.1, so the per-source
        // limit, meant for one node per address, is off.
        Coordinator::start_with(
            &moto,
            &[
                "--heartbeat-interval",
                &interval,
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

    let http = agent_client(&coordinator)?;
    let url = coordinator.url();
    let rss_before = rss_kib(coordinator.pid());
    let anon_before = rss_anon_kib(coordinator.pid());

    // Registers in two halves, each node then heartbeating once so that
    // it holds its facts: the memory the second half adds is the marginal
    // cost of a node, free of what the first registers load once (the
    // SDK's clients, code paths first taken).
    let mut first = instances;
    let second = first.split_off(first.len() / 2);
    let started = Instant::now();
    let mut registered = register(&http, &url, &token, first).await?;
    let mut registering = started.elapsed();
    beat_each(&http, &url, &registered).await?;
    // The zone is rebuilt after the last register: let that settle, so
    // that neither sample catches two zones alive at once.
    tokio::time::sleep(SETTLE).await;
    let anon_half = rss_anon_kib(coordinator.pid());
    let started = Instant::now();
    let added = register(&http, &url, &token, second).await?;
    registering += started.elapsed();
    beat_each(&http, &url, &added).await?;
    tokio::time::sleep(SETTLE).await;
    let anon_full = rss_anon_kib(coordinator.pid());
    let marginal = anon_full.saturating_sub(anon_half) as f64 / added.len() as f64;
    registered.extend(added);
    let register_rate = registered.len() as f64 / registering.as_secs_f64();

    let nodes = Arc::new(registered);

    // The flood: each worker walks its share of the nodes round and round.
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
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
                match beat(&http, &url, node).await {
                    Some(latency) => latencies.push(latency),
                    None => errors += 1,
                }
            }
            let answered = latencies.len() as u64;
            (latencies, answered, errors)
        });
    }
    let flood = Phase::measure(&coordinator, workers).await?;
    // Every node now holds its facts; no connection but the shared pool's.
    let rss_after = rss_kib(coordinator.pid());
    let anon_after = rss_anon_kib(coordinator.pid());

    // The fleet: one simulated agent per node, on its own connection.
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut agents = tokio::task::JoinSet::new();
    for index in 0..nodes.len() {
        let http = agent_client(&coordinator)?;
        let (url, nodes) = (url.clone(), nodes.clone());
        agents.spawn(async move {
            let node = &nodes[index];
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            // Agents started at different times: a random phase.
            let start = Instant::now();
            let mut next = start + node.interval.mul_f64(rand::random::<f64>());
            // Every agent opens its connection (a TLS handshake) within the
            // first interval; the latencies are those of the steady state
            // after it.
            let steady = start + node.interval + node.jitter;
            let mut answered = 0u64;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                match beat(&http, &url, node).await {
                    Some(latency) => {
                        if next >= steady {
                            latencies.push(latency);
                        }
                        answered += 1;
                    }
                    None => errors += 1,
                }
                next += node.interval + node.jitter.mul_f64(rand::random::<f64>());
            }
            (latencies, answered, errors)
        });
    }
    let fleet = Phase::measure(&coordinator, agents).await?;

    let offered = nodes.len() as f64 / (nodes[0].interval + nodes[0].jitter / 2).as_secs_f64();
    println!(
        "| P1 | heartbeats/s of a paced fleet: {} simulated agents, each on its own HTTPS connection, every {} s plus up to {} ms of jitter (about {offered:.0}/s offered) for {} s, generator on the same 2 cores; latencies from the second interval on, once every agent has opened its connection | {} |",
        nodes.len(),
        nodes[0].interval.as_secs_f64(),
        nodes[0].jitter.as_millis(),
        args.seconds,
        fleet.figures(),
    );
    println!(
        "| P1 | heartbeats/s one coordinator answers: {} registered nodes, {} HTTPS workers back to back for {} s, generator on the same 2 cores | {} (registers beforehand: {register_rate:.0}/s, each checked against moto) |",
        nodes.len(),
        args.concurrency,
        args.seconds,
        flood.figures(),
    );
    let per_node =
        |after: u64, before: u64| after.saturating_sub(before) as f64 / nodes.len() as f64;
    println!(
        "| P8 | coordinator memory per node: {} nodes registered, each with host facts in memory (the growth of anonymous RSS, the heap and stacks, not the executable's pages) | marginal {marginal:.2} KiB per node (the second {} registers: {:.1} → {:.1} MiB); on average {:.2} KiB per node from before the first register to after the flood ({:.1} → {:.1} MiB, {} connections open; all RSS, with the executable's pages: {:.2} KiB per node) |",
        nodes.len(),
        nodes.len() - nodes.len() / 2,
        anon_half as f64 / 1024.0,
        anon_full as f64 / 1024.0,
        per_node(anon_after, anon_before),
        anon_before as f64 / 1024.0,
        anon_after as f64 / 1024.0,
        args.concurrency,
        per_node(rss_after, rss_before),
    );
    println!(
        "| P8 | coordinator memory per node with every node's agent connected ({} nodes, each on its own HTTPS connection: the fleet phase's peak) | {:.2} KiB anonymous RSS per node ({:.1} MiB at the peak) |",
        nodes.len(),
        per_node(fleet.peak_anon_kib, anon_before),
        fleet.peak_anon_kib as f64 / 1024.0,
    );
    drop(coordinator);
    drop(moto);
    Ok(())
}
