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
//!    connection, is left out of the latencies. The agents connect from
//!    127.0.1.1, 127.0.1.2 and so on, 10,000 to an address, so that
//!    ephemeral ports do not run out, and each holds its connection to the
//!    end of the phase, as a running agent does.
//!
//! It prints Markdown rows (measure, figure, and the command that made
//! them):
//!
//! - P1: for each phase, heartbeats per second the coordinator answered
//!   with 200, their latency p50/p99, errors, and the coordinator's CPU.
//!   With `--runs N` each phase runs N times in turn (floods, then
//!   fleets, each fleet opening its connections anew), and each figure is
//!   the median of the runs, the lowest and highest beside it.
//! - P8: the coordinator's anonymous RSS (heap and stacks; not the
//!   executable's pages, which the first registers touch once) per node:
//!   the marginal cost, the growth over the second half of the registers
//!   (each node heartbeats once after its register, to hold its facts);
//!   the average, from before the registers to after the flood(s); and the
//!   peak of the fleet phase, with every node on its own connection, as
//!   in a real fleet.
//! - P15: the fleet at rest, from two intervals in (every agent connected)
//!   to the phase's end: the coordinator's CPU, its anonymous RSS per
//!   agent (connections included) and per connection, and the TLS
//!   handshakes it made, full and resumed, a second; then the CPU and
//!   memory scaled to 100,000 agents. One connection per agent needs as
//!   many open files in the generator and in the coordinator: past the
//!   hard limit the run stops at once and says so.
//!
//! Every request goes out as the agent's do: HTTP/1.1 over TLS.
//!
//! Options for large fleets:
//!
//! - `--ec2-cache-refresh D` turns on the coordinator's EC2 cache, the
//!   operator setting the README describes: the generator registers one
//!   node, waits until the coordinator's listing holds every instance
//!   (`/metrics`), then registers the rest, each claim confirmed by that
//!   listing instead of one DescribeInstances each.
//! - `--byon yes` registers bring-your-own machines instead of moto's
//!   instances, with a cluster's bring-your-own token: EC2 is never asked
//!   about them, by design, and each is the same stored node, in-memory
//!   node and pair of DNS names as an EC2 node. This is how P8 reaches
//!   100k nodes: moto takes tens of milliseconds to create each instance,
//!   more as it holds more, and longer than a minute to list 10k of them.
//! - `--sweep-interval D` is handed to the coordinator as is; `--fleet no`
//!   skips the fleet phase, and `--flood no` the flood: P15's fleet at
//!   rest is `--interval 10 --flood no`, the agent's own pacing.
//! - `--versus-nginx yes` then sends the same heartbeats with `wrk` to the
//!   coordinator and to nginx answering a fixed 200, kept alive and one
//!   connection per request, and prints the ratio per core of server CPU
//!   ([`reference`]). `--versus-knot yes` asks the embedded DNS server
//!   and Knot DNS serving the same records the same queries with
//!   dnsperf (P9).
//! - `--restart yes` then stops the coordinator and starts it again on its
//!   store, and prints P10: seconds until it serves the API and until its
//!   DNS answers a sample of every node's name, and the nodes it holds in
//!   another state than `deployed` afterwards.
//! - `--store postgres` keeps the coordinator's store in a PostgreSQL
//!   server of the run's own (initdb, on a loopback port) and prints P11:
//!   the transactions and rows it wrote while the fleet heartbeated,
//!   against the heartbeats (heartbeats are meant to write nothing).
//! - `--standby yes` (with `--store postgres`) then starts a standby beside
//!   the coordinator and prints P12 and P13 ([`replicas`]): how soon it
//!   answers every node's name and trails the leader's registers, and the
//!   two serving heartbeats together.
//!
//! `muster-load --help` lists every option. Each row's last cell names the
//! command, the coordinator's build profile and the machine.
//!
//! The generator runs on the same machine as the coordinator, sharing its
//! cores: the figures are a floor for what one coordinator sustains.
//! `scripts/bench` runs it, and `muster-bench` runs it for P8 at 10k and
//! 100k nodes. SIGTERM stops a run, and moto and the coordinator with it.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_proto::{paths, HeartbeatRequest, RegisterRequest, RegisterResponse, PROTOCOL_VERSION};
use muster_tests::postgres::Postgres;
use muster_tests::procs::{cpu_time, percentile, rss_anon_kib, rss_kib};
use muster_tests::{ec2, Coordinator, Moto};

mod reference;
mod replicas;
mod report;

use report::{print_p1, print_p8, Memory};

const CLUSTER: &str = "load";

/// How long the coordinator is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(2);

/// How long the EC2 cache may take to list every instance.
const LISTING_PATIENCE: Duration = Duration::from_secs(1800);

/// The load generator behind BENCHMARKS.md's P1 and P8: a real coordinator
/// on moto, its nodes registered through the agent API, then heartbeats
/// back to back (the flood) and from a paced fleet of simulated agents.
/// Prints Markdown rows: measure, figures, and the command, the
/// coordinator's build profile and the machine that made them.
#[derive(Debug, clap::Parser)]
#[command(name = "muster-load", version)]
struct Args {
    /// Nodes to register.
    #[arg(long, default_value_t = 2000, value_parser = ranged(100_000))]
    nodes: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Workers sending heartbeats back to back in the flood.
    #[arg(long, default_value_t = 64, value_parser = ranged(1024))]
    concurrency: usize,
    /// Seconds between a simulated agent's heartbeats (handed to the
    /// coordinator as --heartbeat-interval).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=300))]
    interval: u64,
    /// Turn on the coordinator's EC2 cache with this refresh, e.g. 30s.
    #[arg(long, value_name = "DURATION")]
    ec2_cache_refresh: Option<String>,
    /// Handed to the coordinator as --sweep-interval, e.g. 1m.
    #[arg(long, value_name = "DURATION")]
    sweep_interval: Option<String>,
    /// Run the flood phase (workers sending heartbeats back to back).
    #[arg(long, default_value = "yes", value_parser = yes_no, value_name = "yes|no", action = clap::ArgAction::Set)]
    flood: bool,
    /// Run the paced fleet phase (every node on its own connection).
    #[arg(long, default_value = "yes", value_parser = yes_no, value_name = "yes|no", action = clap::ArgAction::Set)]
    fleet: bool,
    /// Register bring-your-own machines instead of moto's instances.
    #[arg(long, default_value = "no", value_parser = yes_no, value_name = "yes|no", action = clap::ArgAction::Set)]
    byon: bool,
    /// After the phases, send the same heartbeats with wrk to the
    /// coordinator and to nginx answering a fixed 200, and print the
    /// ratio per core of server CPU (needs wrk and nginx).
    #[arg(long, default_value = "no", value_parser = yes_no, value_name = "yes|no", action = clap::ArgAction::Set)]
    versus_nginx: bool,
    /// After the phases, ask the coordinator's embedded DNS and Knot DNS
    /// serving the same records the same queries with dnsperf, and print
    /// the ratio per core of server CPU (P9; needs dnsperf and knotd).
    /// The coordinator then runs without its DNS rate limit.
    #[arg(long, default_value = "no", value_parser = yes_no, value_name = "yes|no", action = clap::ArgAction::Set)]
    versus_knot: bool,
    /// Runs of each phase; each figure is their median.
    #[arg(long, default_value_t = 1, value_parser = ranged(9))]
    runs: usize,
    /// After the phases, stop the coordinator and start it again on its
    /// store, and print P10: how soon it serves the API and answers
    /// every node's name, and whether it marked any node down.
    #[arg(long, default_value = "no", value_parser = yes_no, value_name = "yes|no", action = clap::ArgAction::Set)]
    restart: bool,
    /// Where the coordinator keeps its store: SQLite's file, or a
    /// PostgreSQL server of the run's own, whose writes during the fleet
    /// phase are then counted (from `pg_stat_database`).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    store: String,
    /// After the phases, start a standby beside the coordinator on its
    /// PostgreSQL store (needs `--store postgres`), and print P12: how soon
    /// it answers every node's name, and how long a register on the
    /// leader takes to show in the standby's DNS; P13: heartbeats both
    /// answer together, and the store's writes while every agent
    /// heartbeats to the standby; and P14: the leader SIGKILLed under that
    /// load, how soon the standby leads and makes an admin change.
    #[arg(long, default_value = "no", value_parser = yes_no, value_name = "yes|no", action = clap::ArgAction::Set)]
    standby: bool,
}

/// The parsed arguments, checked together.
fn args() -> Args {
    let parsed = <Args as clap::Parser>::parse();
    if parsed.standby && parsed.store != "postgres" {
        <Args as clap::CommandFactory>::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--standby yes needs --store postgres: a standby shares the leader's store",
            )
            .exit();
    }
    if parsed.byon && parsed.ec2_cache_refresh.is_some() {
        <Args as clap::CommandFactory>::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--byon registers no instance, so --ec2-cache-refresh has nothing to list",
            )
            .exit();
    }
    parsed
}

/// A whole number from 1 to `max`.
fn ranged(max: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=max)
}

fn yes_no(value: &str) -> Result<bool, String> {
    match value {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("takes yes or no, not {value:?}")),
    }
}

/// One registered node, as the generator keeps it.
#[derive(Clone)]
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
    agent_client_from(coordinator, IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// [`agent_client`], its connections from `source`.
fn agent_client_from(coordinator: &Coordinator, source: IpAddr) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(coordinator.ca_file())?;
    Ok(muster_tests::coordinator::https_client_builder(&ca)
        .http1_only()
        .local_address(source)
        .build()?)
}

/// Simulated agents that share one loopback source address in the fleet:
/// one (source, destination) pair has some 28,000 ephemeral ports.
const AGENTS_PER_SOURCE: usize = 10_000;

/// The loopback source address of the fleet's agent `index`: 127.0.1.1
/// for the first [`AGENTS_PER_SOURCE`], then 127.0.1.2, and so on.
fn fleet_source(index: usize) -> IpAddr {
    let n = u8::try_from(1 + index / AGENTS_PER_SOURCE).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, n))
}

/// The heartbeat `node`'s agent sends when nothing changed.
fn heartbeat_body(node: &Node) -> HeartbeatRequest {
    HeartbeatRequest {
        instance_id: node.id.clone(),
        private_ipv4: Some(node.private),
        public_ipv4: node.public,
        facts: muster_tests::host_facts(),
        checks: Vec::new(),
        notices: Vec::new(),
        leaving: None,
        agent_version: None,
        ipv6: None,
    }
}

/// One heartbeat for `node` over `http`: its latency if answered 200.
async fn beat(http: &reqwest::Client, url: &str, node: &Node) -> Option<Duration> {
    let body = heartbeat_body(node);
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
    /// The fleet's steady state, if the phase had a window for it.
    steady: Option<Steady>,
}

/// A fleet phase's steady state: from the moment every agent has had time
/// to connect to just before the phase's end, every agent connected.
#[derive(Debug, Clone, Copy)]
struct Steady {
    /// The window's length.
    seconds: f64,
    /// The coordinator's CPU over the window, % of a core.
    cpu: f64,
    /// Heartbeats, TLS handshakes and resumed handshakes the coordinator
    /// counted, a second each.
    heartbeats: f64,
    handshakes: f64,
    resumed: f64,
    /// The coordinator's anonymous RSS at the window's end, KiB.
    anon_kib: u64,
}

/// What the coordinator had counted at one instant.
struct Counted {
    at: Instant,
    cpu: Duration,
    heartbeats: u64,
    handshakes: u64,
    resumed: u64,
}

impl Counted {
    /// The counts now, read over `reader`'s one kept connection (whose
    /// own handshake precedes the first count).
    async fn now(coordinator: &Coordinator, reader: &reqwest::Client) -> Counted {
        let metric = |name| coordinator.metric_with(reader, name);
        Counted {
            at: Instant::now(),
            cpu: cpu_time(coordinator.pid()),
            heartbeats: metric("muster_heartbeats_total").await,
            handshakes: metric("muster_tls_handshakes_total").await,
            resumed: metric("muster_tls_handshakes_resumed_total").await,
        }
    }

    /// The window from `self` to `end`, with the RSS at its end.
    fn until(&self, end: &Counted, anon_kib: u64) -> Steady {
        let seconds = (end.at - self.at).as_secs_f64();
        let rate = |from: u64, to: u64| to.saturating_sub(from) as f64 / seconds;
        Steady {
            seconds,
            cpu: (end.cpu - self.cpu).as_secs_f64() / seconds * 100.0,
            heartbeats: rate(self.heartbeats, end.heartbeats),
            handshakes: rate(self.handshakes, end.handshakes),
            resumed: rate(self.resumed, end.resumed),
            anon_kib,
        }
    }
}

impl Phase {
    /// Runs `workers` (each giving its latencies and errors) while timing
    /// the coordinator's CPU; over `window`, if given, the steady state.
    async fn measure(
        coordinator: &Coordinator,
        mut workers: tokio::task::JoinSet<Tally>,
        window: Option<(Instant, Instant)>,
    ) -> anyhow::Result<Phase> {
        let cpu_before = cpu_time(coordinator.pid());
        let started = Instant::now();
        let mut latencies = Vec::new();
        let (mut answered, mut errors) = (0, 0);
        let mut sample = tokio::time::interval(Duration::from_millis(250));
        let mut peak_anon_kib = 0;
        let (mut opened, mut steady) = (None, None);
        let reader = coordinator.https_client();
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
                    let anon = rss_anon_kib(coordinator.pid());
                    peak_anon_kib = peak_anon_kib.max(anon);
                    let Some((from, to)) = window else { continue };
                    let now = Instant::now();
                    if opened.is_none() && now >= from {
                        opened = Some(Counted::now(coordinator, &reader).await);
                    } else if let (Some(first), None, true) = (&opened, &steady, now >= to) {
                        let end = Counted::now(coordinator, &reader).await;
                        steady = Some(first.until(&end, anon));
                    }
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
            steady,
        })
    }

    /// Answered heartbeats per second.
    fn rate(&self) -> f64 {
        self.answered as f64 / self.wall
    }

    /// Latency at percentile `p`, milliseconds.
    fn ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).as_secs_f64() * 1000.0
    }
}

/// A machine to register: an instance in moto, or a bring-your-own
/// machine.
struct Machine {
    id: String,
    private: Ipv4Addr,
    public: Option<Ipv4Addr>,
    zone: String,
    byon: Option<muster_proto::ByonIdentity>,
}

/// `n` bring-your-own machines: hostnames `load-<i>`, random machine ids,
/// private addresses in 10/8 and public ones in 52/8, distinct by `i`
/// (DNS data only: nothing is sent to them).
fn byon_machines(n: usize) -> Vec<Machine> {
    (0..n)
        .map(|i| {
            let machine_id = format!("{:032x}", rand::random::<u128>());
            let [_, a, b, c] = (i as u32).to_be_bytes();
            Machine {
                id: muster_proto::byon_node_id(&machine_id),
                private: Ipv4Addr::new(10, a, b, c),
                public: Some(Ipv4Addr::new(52, a, b, c)),
                zone: String::new(),
                byon: Some(muster_proto::ByonIdentity {
                    hostname: format!("load-{i}"),
                    machine_id,
                }),
            }
        })
        .collect()
}

/// Launches `n` instances in moto, 500 per call.
async fn launch(client: &aws_sdk_ec2::Client, n: usize) -> anyhow::Result<Vec<Machine>> {
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
            found.push(Machine {
                id: id.to_owned(),
                private: private.parse()?,
                public: i.public_ip_address().map(str::parse).transpose()?,
                zone: i
                    .placement()
                    .and_then(|p| p.availability_zone())
                    .unwrap_or_default()
                    .to_owned(),
                byon: None,
            });
        }
    }
    anyhow::ensure!(
        found.len() == n,
        "moto lists {} of {n} instances",
        found.len()
    );
    Ok(found)
}

/// Registers `machines` with `token`, 16 at a time (each may wait on
/// moto's DescribeInstances).
async fn register(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    machines: Vec<Machine>,
) -> anyhow::Result<Vec<Node>> {
    let mut pending = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    for machine in machines {
        let (http, url, token, limit) = (
            http.clone(),
            url.to_owned(),
            token.to_owned(),
            limit.clone(),
        );
        pending.spawn(async move {
            let _permit = limit.acquire().await?;
            let Machine {
                id,
                private,
                public,
                zone,
                byon,
            } = machine;
            let body = RegisterRequest {
                protocol: PROTOCOL_VERSION,
                cluster: CLUSTER.to_owned(),
                instance_id: id.clone(),
                availability_zone: zone,
                // A bring-your-own machine names no region.
                region: if byon.is_some() {
                    String::new()
                } else {
                    ec2::TEST_REGION.to_owned()
                },
                private_ipv4: Some(private),
                public_ipv4: public,
                agent_version: "load".to_owned(),
                byon,
                signed_identity: None,
                ipv6: None,
            };
            // An instance proves itself with its signed identity document,
            // as the agent does; a bring-your-own machine has none.
            let body = if body.byon.is_none() {
                ec2::signed(body)
            } else {
                body
            };
            let answer = http
                .post(format!("{url}{}", paths::AGENT_REGISTER))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await?;
            let status = answer.status();
            if !status.is_success() {
                let text = answer.text().await.unwrap_or_default();
                anyhow::bail!("register {id}: {status}: {text}");
            }
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

/// One heartbeat from each of `nodes`, `concurrency` at a time; fails
/// unless all are answered.
async fn beat_each(
    http: &reqwest::Client,
    url: &str,
    nodes: &[Node],
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut workers = tokio::task::JoinSet::new();
    for share in nodes.chunks(nodes.len().div_ceil(concurrency).max(1)) {
        let (http, url, share) = (http.clone(), url.to_owned(), share.to_vec());
        workers.spawn(async move {
            let mut answered = 0;
            for node in &share {
                answered += usize::from(beat(&http, &url, node).await.is_some());
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(joined) = workers.join_next().await {
        answered += joined?;
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
    let args = args();
    // SIGTERM (`muster-bench` stopping a run it no longer needs) drops the
    // run, and with it moto and the coordinator, each stopped by its pid.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        done = run(args) => done,
        _ = terminate.recv() => anyhow::bail!("terminated"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.fleet {
        fleet_fits(&args)?;
    }
    // Each row's last cell: the command that made it, the coordinator's
    // build profile and the machine.
    let command = format!(
        "`muster-load {}` ({} coordinator; {})",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        report::profile(),
        report::machine(),
    );
    let moto = Moto::start().await;
    let database = (args.store == "postgres").then(|| {
        let database = Postgres::start();
        database.create_database(report::DATABASE);
        database
    });
    let (mut coordinator, token, instances) = start(&moto, &args, database.as_ref()).await?;
    let http = agent_client(&coordinator)?;
    let rss_before = rss_kib(coordinator.pid());
    let anon_before = rss_anon_kib(coordinator.pid());
    let mut registered = register_measured(&coordinator, &http, &token, instances, &args).await?;
    let nodes = Arc::new(std::mem::take(&mut registered.nodes));

    let mut floods = Vec::with_capacity(args.runs);
    for _ in 0..args.runs * usize::from(args.flood) {
        floods.push(flood(&coordinator, &http, &nodes, &args).await?);
    }
    // Every node now holds its facts; no connection but the shared pool's.
    let memory = Memory {
        rss_before,
        anon_before,
        rss_after: rss_kib(coordinator.pid()),
        anon_after: rss_anon_kib(coordinator.pid()),
    };

    let mut fleets = Vec::new();
    let mut writes = Vec::new();
    if args.fleet {
        for _ in 0..args.runs {
            let before = database.as_ref().map(report::StoreWrites::read);
            let phase = fleet(&coordinator, &nodes, args.seconds).await?;
            if let (Some(before), Some(database)) = (before, &database) {
                writes.push(report::StoreWrites::read(database).since(&before, &phase));
            }
            fleets.push(phase);
        }
    }
    print_p1(&args, &nodes, &registered, &floods, &fleets, &command);
    print_p8(&args, &nodes, &registered, &memory, &fleets, &command);
    report::print_at_rest(&args, &nodes, &memory, &fleets, &command);
    report::print_store_writes(&args, &nodes, &writes, &command);
    if let (true, Some(database)) = (args.standby, &database) {
        let alone = floods.iter().map(Phase::rate).collect::<Vec<_>>();
        replicas::measured(
            &coordinator,
            &http,
            &nodes,
            &alone,
            database,
            &args,
            &command,
        )
        .await?;
    }
    if args.restart {
        restart_measured(&mut coordinator, &args, &command).await?;
    }
    if args.versus_nginx {
        // wrk and nginx are processes of their own; their run blocks.
        tokio::task::block_in_place(|| {
            reference::versus_nginx(&coordinator, &nodes, args.seconds, &command)
        })?;
    }
    if args.versus_knot {
        let views = coordinator.nodes(CLUSTER).await;
        tokio::task::block_in_place(|| {
            reference::versus_knot(&coordinator, &views, args.seconds, &command)
        })?;
    }
    drop(coordinator);
    drop(database);
    drop(moto);
    Ok(())
}

/// The DNS names of at most 1000 of `views`, spread evenly, and the step
/// between them.
fn name_sample(views: &[muster_proto::NodeView]) -> (Vec<&str>, usize) {
    let step = views.len().div_ceil(1000).max(1);
    let sample = views
        .iter()
        .step_by(step)
        .map(|v| v.dns_name.as_str())
        .collect();
    (sample, step)
}

/// Asks `resolver` for `name` until it answers an address, for at most
/// `patience`.
async fn answered_within(
    resolver: &muster_tests::Resolver,
    name: &str,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let answered = resolver
            .a(name)
            .await
            .is_ok_and(|a| a.rcode == hickory_proto::op::ResponseCode::NoError && !a.a.is_empty());
        if answered {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} unanswered after {patience:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// P10: stops the coordinator and starts it again on its store, then
/// times how soon `/healthz` answers and how soon the embedded DNS answers
/// every name of a sample spread over all nodes (every node's name up to
/// 1000 nodes), and counts the nodes it holds in another state than
/// `deployed` afterwards.
async fn restart_measured(
    coordinator: &mut Coordinator,
    args: &Args,
    command: &str,
) -> anyhow::Result<()> {
    let views = coordinator.nodes(CLUSTER).await;
    let (sample, step) = name_sample(&views);
    coordinator.stop();
    let started = Instant::now();
    coordinator.restart().await;
    let healthy = started.elapsed();
    let resolver = coordinator.resolver();
    let mut waiting: Vec<&str> = sample.clone();
    while !waiting.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "{} names still unanswered 300 s after the restart",
            waiting.len()
        );
        let mut still = Vec::new();
        for name in waiting {
            let answered = resolver.a(name).await.is_ok_and(|a| {
                a.rcode == hickory_proto::op::ResponseCode::NoError && !a.a.is_empty()
            });
            if !answered {
                still.push(name);
            }
        }
        waiting = still;
    }
    let answering = started.elapsed();
    let metrics = coordinator.metrics().await;
    let not_deployed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("muster_cluster_nodes{") && !l.contains("state=\"deployed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!(
        "| P10 | a coordinator stopped and started again with {} nodes in its store ({}): the API healthy, then every sampled name answered by the embedded DNS ({} names, one node in {step}), from the start of the process | healthy after {:.2} s; every name answered after {:.2} s; {not_deployed} nodes in another state than deployed afterwards | {command} |",
        views.len(),
        args.store,
        sample.len(),
        healthy.as_secs_f64(),
        answering.as_secs_f64(),
    );
    Ok(())
}

/// Starts the coordinator (heartbeats every `--interval`, liveness and the
/// per-source limit out of the way) and a cluster, and makes the nodes to
/// register: bring-your-own machines, or instances launched in moto.
/// Returns the coordinator, the token they register with, and the nodes.
async fn start(
    moto: &Moto,
    args: &Args,
    database: Option<&Postgres>,
) -> anyhow::Result<(Coordinator, String, Vec<Machine>)> {
    // A long grace keeps liveness out of the measure: registering takes
    // a while, and nodes registered first wait silent for the rest.
    let mut serve = vec![
        "--heartbeat-interval".to_owned(),
        format!("{}s", args.interval),
        "--grace".to_owned(),
        "1h".to_owned(),
        // Every simulated agent speaks from 127.0.0.1, so the per-source
        // limits, meant for one node per address, are off.
        "--agent-rate-limit".to_owned(),
        "0".to_owned(),
        "--max-connections-per-source".to_owned(),
        "0".to_owned(),
        "--max-connections".to_owned(),
        max_connections(args).to_string(),
    ];
    if let Some(refresh) = &args.ec2_cache_refresh {
        serve.extend(["--ec2-cache-refresh".to_owned(), refresh.clone()]);
    }
    if args.versus_knot || args.restart || args.standby {
        // dnsperf, and P10's and P12's checks of every name, ask from one
        // address as fast as they can: the per-network rate limit would
        // measure itself.
        serve.extend(["--dns-rate-limit".to_owned(), "0".to_owned()]);
    }
    if let Some(sweep) = &args.sweep_interval {
        serve.extend(["--sweep-interval".to_owned(), sweep.clone()]);
    }
    if let Some(database) = database {
        serve.extend(["--store".to_owned(), database.url(report::DATABASE)]);
    }
    let serve: Vec<&str> = serve.iter().map(String::as_str).collect();
    let coordinator = Coordinator::start_with(moto, &serve).await;
    let created = coordinator.create_cluster(CLUSTER).await;
    if args.byon {
        let cap = args.nodes.to_string();
        let minted: muster_proto::ByonTokenResponse = coordinator
            .admin_json(&["cluster", "byon-token", CLUSTER, "--max-nodes", &cap])
            .await;
        return Ok((coordinator, minted.byon_token, byon_machines(args.nodes)));
    }
    let client = ec2::client(&moto.endpoint()).await;
    let instances = launch(&client, args.nodes).await?;
    Ok((coordinator, created.join_token, instances))
}

/// Open files beside the fleet's connections, in the generator (its
/// flood workers' pool, moto's clients) and in the coordinator (its
/// store, DNS sockets and the headroom it keeps).
const FILES_BESIDE_THE_FLEET: u64 = 1024;

/// Whether this process may keep one connection per node open, and so the
/// coordinator, which raises its soft limit to the same hard limit: a
/// clear error before anything starts if not.
fn fleet_fits(args: &Args) -> anyhow::Result<()> {
    let hard = muster_tests::procs::raise_nofile();
    let needed = args.nodes as u64 + args.concurrency as u64 + FILES_BESIDE_THE_FLEET;
    anyhow::ensure!(
        needed <= hard,
        "the fleet keeps one connection per node: {} nodes need about {needed} open files, \
         in this process and in the coordinator, and the hard limit here is {hard} \
         (raise it, or run fewer nodes or --fleet no)",
        args.nodes
    );
    Ok(())
}

/// `--max-connections` for the coordinator: every simulated agent and
/// flood worker under the nine tenths open to sources not yet known (the
/// fleet's sources become known with their first heartbeat).
fn max_connections(args: &Args) -> u64 {
    ((args.nodes + args.concurrency) as u64 + 64) * 10 / 9 + 1
}

/// What registering every node showed.
struct Registered {
    nodes: Vec<Node>,
    /// Registers per second, over the time spent registering.
    rate: f64,
    /// Anonymous RSS (KiB) with half the nodes registered, and with all.
    anon_half: u64,
    anon_full: u64,
    /// KiB per node the second half added, and how many it was.
    marginal: f64,
    added: usize,
    /// With the EC2 cache: how long its listing took, and the anonymous
    /// RSS once it held every instance.
    listing: Option<(Duration, u64)>,
}

/// Registers every node, each then heartbeating once so that it holds its
/// facts, and measures the memory the second half adds.
async fn register_measured(
    coordinator: &Coordinator,
    http: &reqwest::Client,
    token: &str,
    mut instances: Vec<Machine>,
    args: &Args,
) -> anyhow::Result<Registered> {
    let url = coordinator.url();
    // With the EC2 cache, the first register starts the region's listing;
    // the rest wait for it to hold every instance.
    let mut registered = Vec::new();
    let mut registering = Duration::ZERO;
    let mut listing = None;
    if args.ec2_cache_refresh.is_some() {
        let rest = instances.split_off(1);
        let started = Instant::now();
        registered = register(http, &url, token, std::mem::replace(&mut instances, rest)).await?;
        registering += started.elapsed();
        listing = Some(await_listing(coordinator, args.nodes as u64).await?);
    }

    // Registers in two halves: the memory the second half adds is the
    // marginal cost of a node, free of what the first registers load once
    // (the SDK's clients, code paths first taken).
    let second = instances.split_off((args.nodes / 2).saturating_sub(registered.len()));
    let started = Instant::now();
    registered.extend(register(http, &url, token, instances).await?);
    registering += started.elapsed();
    beat_each(http, &url, &registered, args.concurrency).await?;
    // The zone is rebuilt after the last register: let that settle, so
    // that neither sample catches two zones alive at once.
    tokio::time::sleep(SETTLE).await;
    let anon_half = rss_anon_kib(coordinator.pid());
    let started = Instant::now();
    let added = register(http, &url, token, second).await?;
    registering += started.elapsed();
    beat_each(http, &url, &added, args.concurrency).await?;
    tokio::time::sleep(SETTLE).await;
    let anon_full = rss_anon_kib(coordinator.pid());
    let marginal = anon_full.saturating_sub(anon_half) as f64 / added.len() as f64;
    let added_count = added.len();
    registered.extend(added);
    Ok(Registered {
        rate: registered.len() as f64 / registering.as_secs_f64(),
        nodes: registered,
        anon_half,
        anon_full,
        marginal,
        added: added_count,
        listing,
    })
}

/// Waits until the EC2 cache's listing holds `want` instances. Returns
/// how long that took, and the anonymous RSS then.
async fn await_listing(coordinator: &Coordinator, want: u64) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let sample = format!(
        "muster_ec2_cache_instances{{region=\"{}\"}}",
        ec2::TEST_REGION
    );
    while coordinator.metric(&sample).await < want {
        anyhow::ensure!(
            started.elapsed() < LISTING_PATIENCE,
            "the EC2 cache did not list {want} instances in {LISTING_PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    Ok((took, rss_anon_kib(coordinator.pid())))
}

/// The flood: `--concurrency` workers, each walking its share of the
/// nodes round and round, for `--seconds`.
async fn flood(
    coordinator: &Coordinator,
    http: &reqwest::Client,
    nodes: &Arc<Vec<Node>>,
    args: &Args,
) -> anyhow::Result<Phase> {
    let url = coordinator.url();
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
    Phase::measure(coordinator, workers, None).await
}

/// The fleet: one simulated agent per node, on its own connection from
/// one of the loopback sources ([`fleet_source`]), for `seconds`; its
/// steady state measured from two intervals in (every agent connected)
/// to just before the end, when every agent still holds its connection.
async fn fleet(
    coordinator: &Coordinator,
    nodes: &Arc<Vec<Node>>,
    seconds: u64,
) -> anyhow::Result<Phase> {
    let url = coordinator.url();
    let clients = (0..nodes.len())
        .map(|index| agent_client_from(coordinator, fleet_source(index)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let window = nodes.first().and_then(|node| {
        let from = started + (node.interval + node.jitter) * 2;
        let to = deadline.checked_sub(Duration::from_secs(1))?;
        (from < to).then_some((from, to))
    });
    let mut agents = tokio::task::JoinSet::new();
    for (index, http) in clients.into_iter().enumerate() {
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
            // The connection is held to the end, as a running agent's is.
            tokio::time::sleep_until(deadline.into()).await;
            (latencies, answered, errors)
        });
    }
    Phase::measure(coordinator, agents, window).await
}
