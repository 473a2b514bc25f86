//! `muster-bench`: the measures of BENCHMARKS.md that the features built so
//! far allow, on the emulators, with the agent at its default settings.
//!
//! - P2: an Elastic IP associated in moto → the coordinator's DNS answers it
//!   (our own resolver, asking every 10 ms), over `--trials` trials.
//! - P3: agent process start → registered and its DNS name answering
//!   (the median of five runs, each a fresh instance).
//! - P5: agent steady RSS and CPU over an idle window, and the size of the
//!   stripped release binary (given with `--agent-release`).
//! - P6: the EC2 calls `cluster create --count N` makes in a fresh region
//!   (N = 60 and 100), counted by a proxy in front of moto, by action.
//! - P4: agent killed at a random phase of its heartbeat → its node
//!   `unreachable` at the default grace, and the false `unreachable`s a 5 s
//!   coordinator stall (SIGSTOP, SIGCONT) causes; the median of three runs
//!   at once, each on a coordinator of its own (the stall stops it).
//! - P7: Route53 convergence when 10,000 A records change at once (5,000
//!   nodes' public and internal names move), written by the real
//!   reconcile loop and Route53 provider in this process into moto's
//!   Route53 behind a counting proxy; timed until every record reads back
//!   through the SDK, as moto answers (it never throttles); then a zone of
//!   500 nodes once more, with `Throttling` injected by the proxy, to show
//!   the retries. `--only p7` runs just this one, `--p7-nodes N` changes
//!   the big zone's size.
//! - P8 at 10k and 100k nodes: `muster-load` with bring-your-own nodes,
//!   its memory rows (P1 and P8 at 2000 nodes are `scripts/bench`'s own
//!   `muster-load` run, alone).
//!
//! The big zone starts with its records already in place: they are
//! seeded through a CloudFormation stack, in the order the provider writes
//! them, and the provider takes the zone over (it lists the zone and
//! finds every name its own; the set-up fails if it writes anything). The
//! provider writing them itself took moto 344 s of one core alone, and
//! 550–660 s beside the other phases: moto checks every CREATE against
//! the zone's whole change journal. The small zone's set-up still goes
//! through the provider's CREATEs.
//!
//! The set-up and P8's big runs start first and run beside P6, P5 and P4,
//! whose figures are call counts, timers and the agent's own CPU time and
//! memory, and beside the agent's release build: `scripts/bench` builds
//! the agent meanwhile and puts it in `MUSTER_BIN_DIR` when done, and the
//! agent phases wait for it. P7's rounds, P3 and P2 run alone. stderr says
//! when P4 and P8's big runs are done.
//!
//! Figures are medians and percentiles; the machine is shared and noisy, so
//! read them with the coordinator's CPU use printed beside them. It prints
//! Markdown rows for BENCHMARKS.md (measure, figure, the command that made
//! it); `scripts/bench` runs it.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_coordinator::config::Route53Zone;
use muster_coordinator::dns::provider::DnsProvider;
use muster_coordinator::dns::reconcile::Reconciler;
use muster_coordinator::dns::route53::Route53;
use muster_coordinator::dns::status::{ProviderStatus, StatusBoard};
use muster_coordinator::dns::{NodeRecordSource, Zone};
use muster_tests::procs::{cpu_time, percentile, rss_kib};
use muster_tests::{
    ec2, route53, wait_until, Agent, Coordinator, Ec2Proxy, Imds, Moto, Route53Proxy, POLL,
};

const CLUSTER: &str = "bench";
const PATIENCE: Duration = Duration::from_secs(30);
/// The agent's default IMDS poll interval: P2 is measured at defaults.
const DEFAULT_POLL: &str = "1s";
/// Runs of P3, each a fresh instance and agent.
const P3_RUNS: usize = 5;
/// Runs of P4.
const P4_RUNS: usize = 3;

struct Args {
    trials: usize,
    idle: Duration,
    agent_release: Option<PathBuf>,
    only_p7: bool,
    p7_nodes: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        trials: 30,
        idle: Duration::from_secs(60),
        agent_release: None,
        only_p7: false,
        p7_nodes: P7_NODES,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--trials" => {
                parsed.trials = value.parse()?;
                anyhow::ensure!(
                    (1..=1000).contains(&parsed.trials),
                    "--trials must be 1..=1000"
                );
            }
            "--idle-secs" => parsed.idle = Duration::from_secs(value.parse()?),
            "--agent-release" => parsed.agent_release = Some(PathBuf::from(value)),
            "--only" => {
                anyhow::ensure!(value.eq_ignore_ascii_case("p7"), "--only takes p7");
                parsed.only_p7 = true;
            }
            "--p7-nodes" => {
                parsed.p7_nodes = value.parse()?;
                anyhow::ensure!(
                    (1..=50_000).contains(&parsed.p7_nodes),
                    "--p7-nodes must be 1..=50000"
                );
            }
            other => {
                anyhow::bail!(
                    "unknown flag {other}; known: --trials, --idle-secs, --agent-release, --only, --p7-nodes"
                )
            }
        }
    }
    Ok(parsed)
}

/// P6: counts the EC2 calls of `cluster create --count n` in `region`,
/// fresh, through a counting proxy. Returns the total and the calls by
/// action.
async fn launch_calls(
    moto: &Moto,
    region: &str,
    n: u32,
) -> anyhow::Result<(usize, std::collections::BTreeMap<String, usize>)> {
    let proxy = Ec2Proxy::start(moto.endpoint(), Vec::new()).await;
    let coordinator = Coordinator::start_at(&proxy.endpoint(), &[]).await;
    proxy.reset_counts();
    let count = n.to_string();
    let name = format!("p6-{n}");
    let created: muster_proto::CreateClusterResponse = coordinator
        .admin_json(&[
            "cluster",
            "create",
            &name,
            "--region",
            region,
            "--instance-type",
            "t3.micro",
            "--count",
            &count,
            "--disk-gb",
            "30",
            "--ami",
            ec2::TEST_AMI,
        ])
        .await;
    let launched = created.launch.map_or(0, |l| l.launched.len());
    anyhow::ensure!(launched == n as usize, "launched {launched} of {n}");
    let calls = proxy.calls();
    Ok((calls.values().sum(), calls))
}

/// Nodes of P7's big zone, unless `--p7-nodes` says otherwise.
const P7_NODES: usize = 5000;

/// Nodes per cluster in P7 (each cluster has a round-robin name).
const P7_CLUSTER_SIZE: usize = 100;

/// How long P7 waits for any one step.
const P7_PATIENCE: Duration = Duration::from_secs(900);

/// P7's node `i` in round `round`: public and private addresses that
/// differ from round to round.
fn p7_node(i: usize, round: u8) -> NodeRecordSource {
    let (hi, lo) = ((i / 250) as u8, (i % 250 + 1) as u8);
    NodeRecordSource {
        cluster: format!("c{}", i / P7_CLUSTER_SIZE),
        name: format!("n{i}"),
        state: muster_proto::NodeState::Deployed,
        private_ipv4: Some(Ipv4Addr::new(10, round, hi, lo)),
        public_ipv4: Some(Ipv4Addr::new(100, 64 + round, hi, lo)),
    }
}

/// The provider's status once `done` holds.
async fn p7_status(
    board: &StatusBoard,
    done: impl Fn(&ProviderStatus) -> bool,
) -> anyhow::Result<ProviderStatus> {
    let status = wait_until(
        P7_PATIENCE,
        Duration::from_millis(20),
        || std::future::ready(board.get().unwrap_or_default()),
        |s| done(s),
    )
    .await;
    anyhow::ensure!(
        done(&status),
        "the reconciler did not get there: {status:?}"
    );
    Ok(status)
}

/// Reads the zone through the SDK until every node's public and internal
/// names hold round `round`'s addresses; returns when that first held.
async fn p7_read_back(
    client: &aws_sdk_route53::Client,
    zone_id: &str,
    nodes: usize,
    round: u8,
) -> anyhow::Result<Instant> {
    let zone = muster_tests::ZONE;
    let deadline = Instant::now() + P7_PATIENCE;
    loop {
        let records = route53::records_paged(client, zone_id, 300).await;
        let wrong = (0..nodes)
            .filter(|&i| {
                let node = p7_node(i, round);
                let value = |name: String| {
                    records
                        .get(&(name, "A".to_owned()))
                        .map(|set| set.values.clone())
                        .unwrap_or_default()
                };
                value(format!("n{i}.{}.{zone}.", node.cluster))
                    != [node
                        .public_ipv4
                        .unwrap_or(Ipv4Addr::UNSPECIFIED)
                        .to_string()]
                    || value(format!("n{i}.{}.internal.{zone}.", node.cluster))
                        != [node
                            .private_ipv4
                            .unwrap_or(Ipv4Addr::UNSPECIFIED)
                            .to_string()]
            })
            .count();
        if wrong == 0 {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{wrong} nodes never read back with their round {round} addresses"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// P7: one storm of `2 × nodes` A records changing at once (plus the round
/// robins); returns its Markdown rows.
/// A Route53 zone in moto, written by the real reconcile loop and
/// provider, every name of `nodes` nodes in it (round 0).
struct P7Scene {
    nodes: usize,
    clusters: usize,
    names: usize,
    client: aws_sdk_route53::Client,
    zone_id: String,
    zone: Arc<Zone>,
    board: Arc<StatusBoard>,
    provider: Arc<Route53>,
    task: tokio::task::JoinHandle<()>,
    setup: Duration,
    /// How long seeding the zone took, if it was seeded.
    seeding: Option<Duration>,
    /// From the provider's start until it had every name.
    taking_over: Duration,
    // Dropped last: the proxy and moto the rest talk to.
    _dir: tempfile::TempDir,
    proxy: Route53Proxy,
    _moto: Moto,
}

impl Drop for P7Scene {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How P7's zone gets its first records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum P7Start {
    /// The provider writes them (CREATE, with ownership TXTs), as on a
    /// coordinator's first start.
    Written,
    /// They are put in the zone beforehand, in the order the provider
    /// writes them, through a CloudFormation stack ([`route53::seed`]);
    /// the provider then takes the zone over: it lists it and finds every
    /// name its own, as on a restart with a fresh data dir.
    Seeded,
}

/// The record sets the provider writes for `nodes` (round 0) under
/// `zone`, in its order: each name's ownership TXT, then the name.
fn p7_seed(
    zone: &hickory_proto::rr::Name,
    nodes: &[NodeRecordSource],
) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
    use muster_coordinator::dns::ownership::{owner_value, ownership_name};
    use muster_coordinator::dns::RecordData;
    let owner = vec![format!("\"{}\"", owner_value(P7_OWNER))];
    let mut sets = Vec::new();
    for (name, data) in muster_coordinator::dns::desired_records(zone, nodes)? {
        sets.push((
            ownership_name(&name)?.to_ascii(),
            "TXT".into(),
            owner.clone(),
        ));
        let (kind, values) = match data {
            RecordData::A(ips) => ("A", ips.iter().map(Ipv4Addr::to_string).collect()),
            RecordData::Cname(target) => ("CNAME", vec![target]),
        };
        sets.push((name.to_ascii(), kind.into(), values));
    }
    Ok(sets)
}

/// The owner id of P7's provider.
const P7_OWNER: &str = "bench";

/// P7's record TTL, seconds.
const P7_TTL: u32 = 30;

/// Starts moto, the proxy, the provider and the reconcile loop, and has
/// every name of `nodes` nodes in the zone (as `start` says): the set-up,
/// timed.
async fn p7_setup(nodes: usize, start: P7Start) -> anyhow::Result<P7Scene> {
    let moto = Moto::start().await;
    let proxy = Route53Proxy::start(moto.endpoint(), 0).await;
    let client = route53::client(&moto.endpoint()).await;
    let zone_id = route53::create_zone(&client, muster_tests::ZONE).await;
    let zone = Arc::new(Zone::new(muster_tests::ZONE, P7_TTL)?);
    let sources: Vec<_> = (0..nodes).map(|i| p7_node(i, 0)).collect();
    let started = Instant::now();
    let mut seeding = None;
    if start == P7Start::Seeded {
        let sets = p7_seed(zone.name(), &sources)?;
        route53::seed(&moto.endpoint(), &zone_id, P7_TTL, &sets).await;
        seeding = Some(started.elapsed());
    }
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_route53::config::Region::new(ec2::TEST_REGION))
        .credentials_provider(aws_sdk_route53::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "muster-bench",
        ))
        .endpoint_url(proxy.endpoint())
        .load()
        .await;
    let provider = Arc::new(Route53::new(
        Route53::client_from(&base),
        Route53Zone::Id(zone_id.clone()),
        muster_tests::ZONE,
        P7_OWNER,
        P7_TTL,
        Duration::from_secs(3600),
    )?);
    let dir = tempfile::tempdir()?;
    let board = Arc::new(StatusBoard::default());
    let task = tokio::spawn(
        Reconciler::new(
            zone.clone(),
            provider.clone(),
            board.clone(),
            P7_OWNER.into(),
            dir.path(),
            Duration::from_secs(3600),
        )
        .run(),
    );
    let clusters = nodes.div_ceil(P7_CLUSTER_SIZE);
    let names = 3 * nodes + clusters;
    let taking_over = Instant::now();
    zone.publish(&sources);
    let status = p7_status(&board, |s| {
        s.applied_names == names && s.pending_changes == 0
    })
    .await?;
    if start == P7Start::Seeded {
        // Taking the zone over writes nothing.
        anyhow::ensure!(
            status.last_change.is_none() && !proxy.calls().contains_key("ChangeResourceRecordSets"),
            "the provider changed the seeded zone: {status:?}"
        );
    }
    Ok(P7Scene {
        nodes,
        clusters,
        names,
        client,
        zone_id,
        zone,
        board,
        provider,
        task,
        setup: started.elapsed(),
        seeding,
        taking_over: taking_over.elapsed(),
        _dir: dir,
        proxy,
        _moto: moto,
    })
}

/// Moves every address of `scene` at once (round `round`), the first
/// `throttle` ChangeResourceRecordSets answered `Throttling`, and times
/// the convergence: a Markdown row.
async fn p7_round(
    scene: &P7Scene,
    round: u8,
    throttle: usize,
    command: &str,
) -> anyhow::Result<String> {
    let (nodes, clusters, proxy, provider) =
        (scene.nodes, scene.clusters, &scene.proxy, &scene.provider);
    proxy.reset();
    proxy.throttle_next(throttle);
    let before = scene.board.get().unwrap_or_default();
    let throttled_before = provider.throttled_total();
    let requests_before = provider.requests_total();
    let changed = 2 * nodes + clusters;
    let t0 = Instant::now();
    scene
        .zone
        .publish(&(0..nodes).map(|i| p7_node(i, round)).collect::<Vec<_>>());
    let status = p7_status(&scene.board, |s| {
        s.applied_total >= before.applied_total + changed as u64 && s.pending_changes == 0
    })
    .await?;
    let accepted = t0.elapsed();
    let read = p7_read_back(&scene.client, &scene.zone_id, nodes, round).await? - t0;
    let calls = proxy.calls();
    let changes = calls.get("ChangeResourceRecordSets").copied().unwrap_or(0);
    let moto_time = proxy
        .upstream_time()
        .get("ChangeResourceRecordSets")
        .copied()
        .unwrap_or_default();
    let largest = proxy
        .change_costs()
        .iter()
        .map(|c| c.records)
        .max()
        .unwrap_or(0);
    let retries = provider.throttled_total() - throttled_before;
    let other_calls = provider.requests_total() - requests_before - changes as u64;
    let what = if throttle == 0 {
        "as moto answers".to_owned()
    } else {
        format!(
            "with the first {throttle} ChangeResourceRecordSets answered `Throttling` by the proxy"
        )
    };
    Ok(format!(
        "| P7 | Route53 convergence: {changed} A records ({} nodes' public and internal names, {clusters} round robins) changing at once, {what}; real reconcile loop and provider, moto {} record sets, 10 requests/s | every record read back through the SDK {:.1} s after the change (all accepted by Route53 after {:.1} s: {changes} ChangeResourceRecordSets of at most {largest} counted records, moto's own processing {:.1} s; {other_calls} other Route53 calls); {retries} throttling answers seen and retried; last change {} | {command} |",
        nodes,
        2 * scene.names,
        read.as_secs_f64(),
        accepted.as_secs_f64(),
        moto_time.as_secs_f64(),
        status
            .last_change
            .as_ref()
            .map(|c| c.status.as_str())
            .unwrap_or("none"),
    ))
}

/// P7: the big zone's set-up (already started, perhaps beside other
/// phases: `beside` says which), its round as moto answers, then a small
/// zone's round with throttling injected. The rows.
async fn p7(
    big: tokio::task::JoinHandle<anyhow::Result<P7Scene>>,
    beside: &str,
) -> anyhow::Result<Vec<String>> {
    let scene = big.await??;
    let command = if scene.nodes == P7_NODES {
        "`muster-bench --only p7`".to_owned()
    } else {
        format!("`muster-bench --only p7 --p7-nodes {}`", scene.nodes)
    };
    let mut rows = vec![p7_round(&scene, 1, 0, &command).await?];
    rows.push(p7_setup_row(&scene, beside, &command));
    drop(scene);
    // The retries need no big zone: a small one keeps the run short. Its
    // set-up goes through the provider's CREATE path.
    let small = p7_setup(P7_THROTTLED_NODES, P7Start::Written).await?;
    rows.push(p7_round(&small, 1, P7_THROTTLED, &command).await?);
    Ok(rows)
}

/// The Markdown row of `scene`'s set-up, which ran `beside` other phases
/// (or with `beside` empty, alone).
fn p7_setup_row(scene: &P7Scene, beside: &str, command: &str) -> String {
    let what = match scene.seeding {
        Some(seeding) => format!(
            "seeded through a CloudFormation stack in {:.1} s, then taken over by the provider (it listed the zone and found every name its own, writing nothing) in {:.1} s",
            seeding.as_secs_f64(),
            scene.taking_over.as_secs_f64()
        ),
        None => "written into an empty hosted zone by the provider".to_owned(),
    };
    format!(
        "| P7 | Route53 set-up for the above: {} names and their ownership TXTs, {what}{beside} | {:.1} s in all | {command} |",
        scene.names,
        scene.setup.as_secs_f64()
    )
}

/// Nodes in P7's throttled round, and the calls answered `Throttling`.
const P7_THROTTLED_NODES: usize = 500;
const P7_THROTTLED: usize = 5;

/// Waits for the agent under test: `scripts/bench` builds the release
/// agent while the first phases run, and puts it at its path when done
/// (or `<path>.failed` if the build failed).
async fn wait_for_agent() -> anyhow::Result<()> {
    let Some(dir) = std::env::var_os("MUSTER_BIN_DIR") else {
        // The binaries of this build: there already, or a clear panic.
        muster_tests::procs::bin_path("muster-agent");
        return Ok(());
    };
    let path = PathBuf::from(dir).join("muster-agent");
    let failed = path.with_extension("failed");
    let started = Instant::now();
    while !path.exists() {
        anyhow::ensure!(
            !failed.exists(),
            "the agent's build failed ({})",
            failed.display()
        );
        anyhow::ensure!(
            started.elapsed() < AGENT_PATIENCE,
            "no agent at {} after {AGENT_PATIENCE:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// Node counts of P8's big runs.
const P8_NODES: [usize; 2] = [10_000, 100_000];

/// P8 at [`P8_NODES`]: one `muster-load` run each, with bring-your-own
/// nodes (moto cannot hold 100k instances; see its module doc), its own
/// moto and coordinator, and a short flood; their P8 rows, each with its
/// command. The flood's rate is not reported: it shares the machine.
async fn p8_big() -> anyhow::Result<Vec<String>> {
    use tokio::io::AsyncReadExt;
    let mut rows = Vec::new();
    for nodes in P8_NODES {
        let nodes = nodes.to_string();
        let args = [
            "--nodes",
            nodes.as_str(),
            "--seconds",
            "1",
            "--concurrency",
            "64",
            "--byon",
            "yes",
            "--fleet",
            "no",
        ];
        let mut run = LoadRun(
            tokio::process::Command::new(muster_tests::procs::bin_path("muster-load"))
                .args(args)
                .stdout(std::process::Stdio::piped())
                .spawn()?,
        );
        let mut out = String::new();
        if let Some(mut stdout) = run.0.stdout.take() {
            stdout.read_to_string(&mut out).await?;
        }
        let status = run.0.wait().await?;
        anyhow::ensure!(status.success(), "muster-load {}: {status}", args.join(" "));
        // muster-load's rows end with its command; where it ran follows.
        let found = out
            .lines()
            .filter(|l| l.starts_with("| P8 |"))
            .map(|l| {
                format!(
                    "{} (run by `muster-bench`, beside its first phases and the agent's release build) |",
                    l.trim_end().trim_end_matches('|').trim_end()
                )
            })
            .collect::<Vec<_>>();
        anyhow::ensure!(!found.is_empty(), "no P8 row from muster-load:\n{out}");
        rows.extend(found);
    }
    Ok(rows)
}

/// A `muster-load` run, sent SIGTERM if dropped while it runs: it then
/// stops its moto and coordinator.
struct LoadRun(tokio::process::Child);

impl Drop for LoadRun {
    fn drop(&mut self) {
        if let (Ok(None), Some(pid)) = (self.0.try_wait(), self.0.id()) {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
}

/// One run of P4 on a coordinator of its own, which it stalls, with the
/// default 10 s heartbeat and 30 s grace: a 5 s coordinator stall while a
/// fresh agent runs, then the agent killed at a random phase of its
/// heartbeat (a fixed one would land every run at the same point of the
/// cycle). Returns the time from the kill to `unreachable`, and the
/// `unreachable`s the stall caused.
async fn p4_run(
    endpoint: String,
    client: aws_sdk_ec2::Client,
) -> anyhow::Result<(Duration, usize)> {
    let coordinator = Coordinator::start_at(&endpoint, &[]).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let resolver = coordinator.resolver();
    let Started {
        id,
        mut agent,
        imds,
        ..
    } = start_agent(&client, &coordinator, &resolver, &token).await?;
    let unreachable_events = || async {
        coordinator
            .node(CLUSTER, &id)
            .await
            .events
            .iter()
            .filter(|e| e.to == muster_proto::NodeState::Unreachable)
            .count()
    };
    let before = unreachable_events().await;
    let pid = nix::unistd::Pid::from_raw(coordinator.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let false_unreachable = unreachable_events().await - before;
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 10_000)).await;
    agent.stop();
    let stopped = Instant::now();
    let unreachable = |nodes: &Vec<muster_proto::NodeView>| {
        nodes
            .iter()
            .any(|n| n.instance_id == id && n.state == muster_proto::NodeState::Unreachable)
    };
    let nodes = wait_until(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || coordinator.nodes(CLUSTER),
        unreachable,
    )
    .await;
    let kill = stopped.elapsed();
    anyhow::ensure!(unreachable(&nodes), "the node never became unreachable");
    drop(agent);
    drop(imds);
    Ok((kill, false_unreachable))
}

/// How long [`wait_for_agent`] waits.
const AGENT_PATIENCE: Duration = Duration::from_secs(1800);

/// One fresh instance with its IMDS and an agent at defaults, timed from
/// the agent's start until its DNS name answers its public address.
struct Started {
    id: String,
    name: String,
    agent: Agent,
    imds: Imds,
    took: Duration,
}

async fn start_agent(
    client: &aws_sdk_ec2::Client,
    coordinator: &Coordinator,
    resolver: &muster_tests::Resolver,
    token: &str,
) -> anyhow::Result<Started> {
    let id = ec2::launch_instance(client, CLUSTER).await;
    let public = ec2::describe(client, &id).await.public_ipv4;
    let imds = Imds::start(client.clone(), &id).await;
    let started = Instant::now();
    let agent = Agent::start_with_poll(coordinator, &imds, CLUSTER, token, DEFAULT_POLL);
    let name = muster_proto::node_dns_name(&id, CLUSTER, muster_tests::ZONE);
    let answer = wait_until(
        PATIENCE,
        Duration::from_millis(5),
        || resolver.a(&name),
        |a| {
            a.as_ref()
                .is_ok_and(|a| public.is_some_and(|ip| a.a == vec![ip]))
        },
    )
    .await?;
    let took = started.elapsed();
    anyhow::ensure!(
        public.is_some_and(|ip| answer.a == vec![ip]),
        "the agent never registered:\n{}",
        agent.logs()
    );
    Ok(Started {
        id,
        name,
        agent,
        imds,
        took,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let began = Instant::now();
    // P7's set-up and P8's big runs start first and run beside the phases
    // whose figures are counts, timers, the agent's own CPU time or memory
    // (P6, P5, P4), and beside the agent's release build, which
    // `scripts/bench` runs meanwhile. P7's rounds, P3 and P2 run alone.
    let p7_big = tokio::spawn(p7_setup(args.p7_nodes, P7Start::Seeded));
    if args.only_p7 {
        for row in p7(p7_big, "").await? {
            println!("{row}");
        }
        return Ok(());
    }
    // P8 at 10k and 100k nodes: the memory of a coordinator, whatever
    // else runs beside it.
    let p8 = tokio::spawn(p8_big());
    let mut rows = Vec::new();
    // The last cell of this program's own rows.
    let command = format!(
        "`muster-bench --trials {} --idle-secs {}`",
        args.trials,
        args.idle.as_secs()
    );
    let moto = Moto::start().await;

    for (region, n) in [("us-west-2", 60), ("eu-west-1", 100)] {
        let (total, by_action) = launch_calls(&moto, region, n).await?;
        let breakdown: Vec<String> = by_action
            .iter()
            .map(|(action, calls)| format!("{action} {calls}"))
            .collect();
        rows.push(format!(
            "| P6 | EC2 calls of `cluster create --count {n}` in a fresh region (counted by a proxy in front of moto) | {total} calls: {} | {command} |",
            breakdown.join(", ")
        ));
    }

    wait_for_agent().await?;
    let coordinator = Coordinator::start(&moto).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let client = ec2::client(&moto.endpoint()).await;
    let resolver = coordinator.resolver();

    // P4's runs, at once and beside P5: each stalls a coordinator of its
    // own.
    let mut p4 = tokio::task::JoinSet::new();
    for _ in 0..P4_RUNS {
        p4.spawn(p4_run(moto.endpoint(), client.clone()));
    }

    // P5: an agent idle (heartbeats and IMDS polls only).
    let Started { agent, imds, .. } = start_agent(&client, &coordinator, &resolver, &token).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu0 = cpu_time(agent.pid());
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < args.idle {
        rss.push(rss_kib(agent.pid()));
        tokio::time::sleep(POLL * 10).await;
    }
    let agent_cpu =
        (cpu_time(agent.pid()) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    rss.sort_unstable();
    let rss_median = rss.get(rss.len() / 2).copied().unwrap_or(0);
    let size = args
        .agent_release
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| {
            format!(
                "{:.1} MiB stripped release binary",
                m.len() as f64 / 1048576.0
            )
        })
        .unwrap_or_else(|| "binary size not measured (no --agent-release)".into());
    rows.push(format!(
        "| P5 | agent idle over {} s (the binary under test; heartbeats every 10 s, IMDS polled every 1 s) | RSS median {:.1} MiB, CPU {:.2} % of a core; {size} | {command} |",
        args.idle.as_secs(),
        rss_median as f64 / 1024.0,
        agent_cpu
    ));
    drop(agent);
    drop(imds);
    let p4_runs = p4
        .join_all()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let false_unreachable: usize = p4_runs
        .iter()
        .map(|(_, false_unreachable)| false_unreachable)
        .sum();
    let mut kills: Vec<Duration> = p4_runs.iter().map(|(kill, _)| *kill).collect();
    kills.sort();
    rows.push(format!(
        "| P4 | agent killed at a random phase of its heartbeat → node unreachable (defaults: 10 s heartbeats, 30 s grace), and false unreachable during a 5 s coordinator stall ({} runs at once, each a fresh instance on a coordinator of its own) | median {:.1} s after the kill (min {:.1} s, max {:.1} s); {false_unreachable} false in {} stalls | {command} |",
        kills.len(),
        percentile(&kills, 50.0).as_secs_f64(),
        kills.first().copied().unwrap_or_default().as_secs_f64(),
        kills.last().copied().unwrap_or_default().as_secs_f64(),
        kills.len(),
    ));
    eprintln!(
        "muster-bench: P4 done after {:.0} s",
        began.elapsed().as_secs_f64()
    );

    rows.extend(p8.await??);
    eprintln!(
        "muster-bench: P8's big runs done after {:.0} s",
        began.elapsed().as_secs_f64()
    );
    rows.extend(
        p7(
            p7_big,
            " (beside P6, P5, P4 and P8 at 10k and 100k nodes, and the agent's release build)",
        )
        .await?,
    );

    // P3: agent start → registered and DNS answering, each run a fresh
    // instance; the last run's agent goes on for P2.
    let mut starts = Vec::with_capacity(P3_RUNS);
    let mut last = None;
    for _ in 0..P3_RUNS {
        // The run before stops first: its agent, then its IMDS.
        drop(last.take());
        let started = start_agent(&client, &coordinator, &resolver, &token).await?;
        starts.push(started.took);
        last = Some(started);
    }
    starts.sort();
    let Started {
        id,
        name,
        agent,
        imds,
        ..
    } = last.expect("P3_RUNS is at least 1");

    // P2: Elastic IP → DNS, agent at defaults, nothing restarted.
    let coordinator_cpu_before = cpu_time(coordinator.pid());
    let wall_before = Instant::now();
    let mut trials = Vec::with_capacity(args.trials);
    for _ in 0..args.trials {
        // A random phase against the agent's poll: associating right after
        // the last change was seen would always land at the same point of
        // the poll cycle and skew every trial the same way.
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 1000)).await;
        let eip = ec2::associate_new_eip(&client, &id).await;
        let t0 = Instant::now();
        let answer = wait_until(
            PATIENCE,
            Duration::from_millis(10),
            || resolver.a(&name),
            |a| a.as_ref().is_ok_and(|a| a.a == vec![eip]),
        )
        .await?;
        anyhow::ensure!(
            answer.a == vec![eip],
            "DNS never answered {eip}:\n{}",
            agent.logs()
        );
        trials.push(t0.elapsed());
    }
    let coordinator_cpu = (cpu_time(coordinator.pid()) - coordinator_cpu_before).as_secs_f64()
        / wall_before.elapsed().as_secs_f64()
        * 100.0;
    trials.sort();

    rows.push(format!(
        "| P2 | Elastic IP associated in moto → embedded DNS answers it ({} trials at random phases, agent defaults: 1 s IMDS poll) | p50 {} ms, p99 {} ms, max {} ms; coordinator CPU {:.1} % of a core during the trials | {command} |",
        trials.len(),
        percentile(&trials, 50.0).as_millis(),
        percentile(&trials, 99.0).as_millis(),
        trials.last().copied().unwrap_or_default().as_millis(),
        coordinator_cpu
    ));
    rows.push(format!(
        "| P3 | agent process start → registered and its DNS name answering ({} runs, each a fresh instance) | median {} ms (min {} ms, max {} ms) | {command} |",
        starts.len(),
        percentile(&starts, 50.0).as_millis(),
        starts.first().copied().unwrap_or_default().as_millis(),
        starts.last().copied().unwrap_or_default().as_millis(),
    ));
    for row in rows {
        println!("{row}");
    }
    drop(agent);
    drop(imds);
    drop(coordinator);
    drop(moto);
    Ok(())
}
