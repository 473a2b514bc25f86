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
//!   the big zone's size. (`--only p2` runs P3 and P2 alone: P2 uses P3's
//!   last agent; `--only p5` runs P5 alone.)
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
//! memory. The agent phases wait for the binary at `--agent-release` if it
//! is not there yet. P7's rounds, P3 and P2 run alone. stderr says when P4
//! and P8's big runs are done.
//!
//! Figures are medians and percentiles; the machine is shared and noisy, so
//! read them with the coordinator's CPU use printed beside them. It prints
//! Markdown rows for BENCHMARKS.md (measure, figure, the command that made
//! it); `scripts/bench` runs it.

#![forbid(unsafe_code)]

mod agents;
mod fleet;
mod p7;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use muster_tests::{ec2, Coordinator, Moto};

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
    only: Option<Only>,
    p7_nodes: usize,
}

/// What `--only` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    /// P7.
    P7,
    /// P3 and P2.
    P2,
    /// P5.
    P5,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        trials: 30,
        idle: Duration::from_secs(60),
        agent_release: None,
        only: None,
        p7_nodes: p7::P7_NODES,
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
                parsed.only = Some(match value.to_ascii_lowercase().as_str() {
                    "p7" => Only::P7,
                    "p2" => Only::P2,
                    "p5" => Only::P5,
                    _ => anyhow::bail!("--only takes p7, p2 or p5"),
                });
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let began = Instant::now();
    // P7's set-up and P8's big runs start first and run beside the phases
    // whose figures are counts, timers, the agent's own CPU time or memory
    // (P6, P5, P4). P7's rounds, P3 and P2 run alone.
    if let Some(only @ (Only::P2 | Only::P5)) = args.only {
        return agents_alone(&args, only).await;
    }
    let p7_big = tokio::spawn(p7::p7_setup(args.p7_nodes, p7::P7Start::Seeded));
    if args.only == Some(Only::P7) {
        for row in p7::p7(p7_big, "").await? {
            println!("{row}");
        }
        return Ok(());
    }
    // P8 at 10k and 100k nodes: the memory of a coordinator, whatever
    // else runs beside it.
    let p8 = tokio::spawn(fleet::p8_big());
    // The last cell of this program's own rows.
    let command = format!(
        "`muster-bench --trials {} --idle-secs {}`",
        args.trials,
        args.idle.as_secs()
    );
    let moto = Moto::start().await;
    let mut rows = fleet::p6(&moto, &command).await?;

    agents::wait_for_agent().await?;
    // The resolver asks every 10 ms from 127.0.0.1: DNS rate limiting,
    // meant for one network's share, would measure itself.
    let coordinator = Coordinator::start_with(&moto, &["--dns-rate-limit", "0"]).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let client = ec2::client(&moto.endpoint()).await;
    let resolver = coordinator.resolver();
    let scene = agents::Scene {
        client: &client,
        coordinator: &coordinator,
        resolver: &resolver,
        token: &token,
    };

    // P4's runs, at once and beside P5: each stalls a coordinator of its
    // own.
    let mut p4 = tokio::task::JoinSet::new();
    for _ in 0..P4_RUNS {
        p4.spawn(agents::p4_run(moto.endpoint(), client.clone()));
    }
    rows.push(agents::p5(&scene, &args, &command).await?);
    let p4_runs = p4
        .join_all()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    rows.push(agents::p4_row(&p4_runs, &command));
    eprintln!(
        "muster-bench: P4 done after {:.0} s",
        began.elapsed().as_secs_f64()
    );

    rows.extend(p8.await??);
    eprintln!(
        "muster-bench: P8's big runs done after {:.0} s",
        began.elapsed().as_secs_f64()
    );
    rows.extend(p7::p7(p7_big, " (beside P6, P5, P4 and P8 at 10k and 100k nodes)").await?);

    // P3 then P2: the last of P3's agents goes on for P2.
    let (starts, last) = agents::p3(&scene).await?;
    rows.push(agents::p2(&scene, &last, args.trials, &command).await?);
    rows.push(agents::p3_row(&starts, &command));
    for row in rows {
        println!("{row}");
    }
    drop(last);
    drop(coordinator);
    drop(moto);
    Ok(())
}

/// `--only p2` (P3 then P2) or `--only p5`, alone, on a coordinator of
/// their own.
async fn agents_alone(args: &Args, only: Only) -> anyhow::Result<()> {
    let command = match only {
        Only::P5 => format!(
            "`muster-bench --only p5 --idle-secs {}`",
            args.idle.as_secs()
        ),
        _ => format!("`muster-bench --only p2 --trials {}`", args.trials),
    };
    let moto = Moto::start().await;
    agents::wait_for_agent().await?;
    let coordinator = Coordinator::start_with(&moto, &["--dns-rate-limit", "0"]).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let client = ec2::client(&moto.endpoint()).await;
    let resolver = coordinator.resolver();
    let scene = agents::Scene {
        client: &client,
        coordinator: &coordinator,
        resolver: &resolver,
        token: &token,
    };
    if only == Only::P5 {
        println!("{}", agents::p5(&scene, args, &command).await?);
        return Ok(());
    }
    let (starts, last) = agents::p3(&scene).await?;
    println!(
        "{}",
        agents::p2(&scene, &last, args.trials, &command).await?
    );
    println!("{}", agents::p3_row(&starts, &command));
    Ok(())
}
