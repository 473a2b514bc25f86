//! The agents the measures start: each on a fresh moto instance with a
//! strict IMDS of its own, waited for until its DNS name answers; and the
//! measures of one agent: P5 (idle), P4 (killed), P3 (start), P2 (an
//! Elastic IP moved).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use muster_tests::procs::{cpu_time, percentile, rss_kib};
use muster_tests::{ec2, wait_until, Agent, Coordinator, Imds, Resolver, POLL};

use super::{Args, CLUSTER, DEFAULT_POLL, P3_RUNS, PATIENCE};

/// What every agent of these measures shares: the EC2 it launches into,
/// the coordinator it joins, a resolver of the coordinator's DNS, and the
/// cluster's join token.
pub(super) struct Scene<'a> {
    pub client: &'a aws_sdk_ec2::Client,
    pub coordinator: &'a Coordinator,
    pub resolver: &'a Resolver,
    pub token: &'a str,
}

/// Waits for the agent under test: `scripts/bench` builds the release
/// agent while the first phases run, and puts it at its path when done
/// (or `<path>.failed` if the build failed).
pub(super) async fn wait_for_agent() -> anyhow::Result<()> {
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

/// How long [`wait_for_agent`] waits.
const AGENT_PATIENCE: Duration = Duration::from_secs(1800);

/// One fresh instance with its IMDS and an agent at defaults, timed from
/// the agent's start until its DNS name answers its public address.
pub(super) struct Started {
    id: String,
    name: String,
    agent: Agent,
    imds: Imds,
    took: Duration,
}

async fn start_agent(scene: &Scene<'_>) -> anyhow::Result<Started> {
    let Scene {
        client,
        coordinator,
        resolver,
        token,
    } = *scene;
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

/// One run of P4 on a coordinator of its own, which it stalls, with the
/// default 10 s heartbeat and 30 s grace: a 5 s coordinator stall while a
/// fresh agent runs, then the agent killed at a random phase of its
/// heartbeat (a fixed one would land every run at the same point of the
/// cycle). Returns the time from the kill to `unreachable`, and the
/// `unreachable`s the stall caused.
pub(super) async fn p4_run(
    endpoint: String,
    client: aws_sdk_ec2::Client,
) -> anyhow::Result<(Duration, usize)> {
    // Its resolver asks every 10 ms from 127.0.0.1: no DNS rate limit.
    let coordinator = Coordinator::start_at(&endpoint, &["--dns-rate-limit", "0"]).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let resolver = coordinator.resolver();
    let Started {
        id,
        mut agent,
        imds,
        ..
    } = start_agent(&Scene {
        client: &client,
        coordinator: &coordinator,
        resolver: &resolver,
        token: &token,
    })
    .await?;
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

/// P5: an agent idle (heartbeats and IMDS polls only) over `args.idle`:
/// its RSS and CPU, and the size of the release binary.
pub(super) async fn p5(scene: &Scene<'_>, args: &Args, command: &str) -> anyhow::Result<String> {
    let Started { agent, imds, .. } = start_agent(scene).await?;
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
    drop(agent);
    drop(imds);
    Ok(format!(
        "| P5 | agent idle over {} s (the binary under test; heartbeats every 10 s, IMDS polled every 1 s) | RSS median {:.1} MiB, CPU {:.2} % of a core; {size} | {command} |",
        args.idle.as_secs(),
        rss_median as f64 / 1024.0,
        agent_cpu
    ))
}

/// P4's row from its runs' (time to unreachable, false unreachables).
pub(super) fn p4_row(runs: &[(Duration, usize)], command: &str) -> String {
    let false_unreachable: usize = runs
        .iter()
        .map(|(_, false_unreachable)| false_unreachable)
        .sum();
    let mut kills: Vec<Duration> = runs.iter().map(|(kill, _)| *kill).collect();
    kills.sort();
    format!(
        "| P4 | agent killed at a random phase of its heartbeat → node unreachable (defaults: 10 s heartbeats, 30 s grace), and false unreachable during a 5 s coordinator stall ({} runs at once, each a fresh instance on a coordinator of its own) | median {:.1} s after the kill (min {:.1} s, max {:.1} s); {false_unreachable} false in {} stalls | {command} |",
        kills.len(),
        percentile(&kills, 50.0).as_secs_f64(),
        kills.first().copied().unwrap_or_default().as_secs_f64(),
        kills.last().copied().unwrap_or_default().as_secs_f64(),
        kills.len(),
    )
}

/// P3: agent start → registered and DNS answering, each run a fresh
/// instance. Returns the times, sorted, and the last run's agent, which
/// goes on for P2.
pub(super) async fn p3(scene: &Scene<'_>) -> anyhow::Result<(Vec<Duration>, Started)> {
    let mut starts = Vec::with_capacity(P3_RUNS);
    let mut last = None;
    for _ in 0..P3_RUNS {
        // The run before stops first: its agent, then its IMDS.
        drop(last.take());
        let started = start_agent(scene).await?;
        starts.push(started.took);
        last = Some(started);
    }
    starts.sort();
    Ok((starts, last.expect("P3_RUNS is at least 1")))
}

/// P3's row from its sorted times.
pub(super) fn p3_row(starts: &[Duration], command: &str) -> String {
    format!(
        "| P3 | agent process start → registered and its DNS name answering ({} runs, each a fresh instance) | median {} ms (min {} ms, max {} ms) | {command} |",
        starts.len(),
        percentile(starts, 50.0).as_millis(),
        starts.first().copied().unwrap_or_default().as_millis(),
        starts.last().copied().unwrap_or_default().as_millis(),
    )
}

/// P2: an Elastic IP associated in moto → the coordinator's DNS answers
/// it, `trials` times, with `started`'s agent at its defaults and nothing
/// restarted.
pub(super) async fn p2(
    scene: &Scene<'_>,
    started: &Started,
    trials: usize,
    command: &str,
) -> anyhow::Result<String> {
    let coordinator_cpu_before = cpu_time(scene.coordinator.pid());
    let wall_before = Instant::now();
    let mut times = Vec::with_capacity(trials);
    for _ in 0..trials {
        // A random phase against the agent's poll: associating right after
        // the last change was seen would always land at the same point of
        // the poll cycle and skew every trial the same way.
        tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 1000)).await;
        let eip = ec2::associate_new_eip(scene.client, &started.id).await;
        let t0 = Instant::now();
        let answer = wait_until(
            PATIENCE,
            Duration::from_millis(10),
            || scene.resolver.a(&started.name),
            |a| a.as_ref().is_ok_and(|a| a.a == vec![eip]),
        )
        .await?;
        anyhow::ensure!(
            answer.a == vec![eip],
            "DNS never answered {eip}:\n{}",
            started.agent.logs()
        );
        times.push(t0.elapsed());
    }
    let coordinator_cpu = (cpu_time(scene.coordinator.pid()) - coordinator_cpu_before)
        .as_secs_f64()
        / wall_before.elapsed().as_secs_f64()
        * 100.0;
    times.sort();
    Ok(format!(
        "| P2 | Elastic IP associated in moto → embedded DNS answers it ({} trials at random phases, agent defaults: 1 s IMDS poll) | p50 {} ms, p99 {} ms, max {} ms; coordinator CPU {:.1} % of a core during the trials | {command} |",
        times.len(),
        percentile(&times, 50.0).as_millis(),
        percentile(&times, 99.0).as_millis(),
        times.last().copied().unwrap_or_default().as_millis(),
        coordinator_cpu
    ))
}
