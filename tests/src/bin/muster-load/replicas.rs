//! P12 and P13: a standby beside the coordinator on its PostgreSQL
//! store. P12 times how soon it answers every name and how far its DNS
//! trails the leader's registers. P13 measures the two serving together:
//! the flood sent to both at once (one generator, two targets) against
//! the flood to the coordinator alone, and the store's writes while every
//! simulated agent heartbeats to the standby only, which publishes whom it
//! heard for the leader's liveness. P14 then SIGKILLs the leader under
//! that load and times the standby's takeover.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_proto::{paths, NodeState, RegisterResponse};
use muster_tests::postgres::Postgres;
use muster_tests::procs::percentile;
use muster_tests::Coordinator;

use super::report::StoreWrites;
use super::{agent_client, answered_within, fleet, flood, name_sample, Args, Node, CLUSTER};

/// Registers measured one at a time for P12's lag.
const LAG_SAMPLES: usize = 50;

/// How long P14's fleet heartbeats before the leader is killed, and how
/// long after the standby leads.
const FAILOVER_SETTLE: Duration = Duration::from_secs(5);

/// How often P14 asks whether the standby leads, and tries its change.
const FAILOVER_POLL: Duration = Duration::from_millis(50);

/// P12, then P13 with the standby P12 started, then P14, which kills the
/// leader.
pub(super) async fn measured(
    coordinator: &Coordinator,
    http: &reqwest::Client,
    nodes: &Arc<Vec<Node>>,
    alone: &[f64],
    database: &Postgres,
    args: &Args,
    command: &str,
) -> anyhow::Result<()> {
    let standby = standby_measured(coordinator, http, command).await?;
    both_measured(coordinator, &standby, nodes, alone, database, args, command).await?;
    failover_measured(coordinator, &standby, nodes, args, command).await
}

/// P12: starts a standby beside `coordinator` on its store and times how
/// soon it stands by and its DNS answers every name of a sample; then
/// registers [`LAG_SAMPLES`] bring-your-own machines through the leader,
/// one at a time, and times from each register's answer until the
/// leader's and the standby's DNS answer its name. Returns the standby.
async fn standby_measured(
    coordinator: &Coordinator,
    http: &reqwest::Client,
    command: &str,
) -> anyhow::Result<Coordinator> {
    let views = coordinator.nodes(CLUSTER).await;
    let (sample, _) = name_sample(&views);
    let started = Instant::now();
    let standby = coordinator.start_standby(false).await;
    let standing = started.elapsed();
    let standby_dns = standby.resolver();
    for name in &sample {
        answered_within(&standby_dns, name, Duration::from_secs(300)).await?;
    }
    let answering = started.elapsed();

    let minted: muster_proto::ByonTokenResponse = coordinator
        .admin_json(&["cluster", "byon-token", CLUSTER, "--max-nodes", "1000"])
        .await;
    let leader_dns = coordinator.resolver();
    let (mut on_leader, mut on_standby) = (Vec::new(), Vec::new());
    for i in 0..LAG_SAMPLES {
        let machine_id = format!("{:032x}", rand::random::<u128>());
        let body = muster_tests::byon_register(
            CLUSTER,
            &machine_id,
            &format!("lag-{i}"),
            Ipv4Addr::new(10, 255, 0, i as u8),
            Some(Ipv4Addr::new(52, 255, 0, i as u8)),
        );
        let answer = http
            .post(format!("{}{}", coordinator.url(), paths::AGENT_REGISTER))
            .bearer_auth(&minted.byon_token)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        let registered: RegisterResponse = answer.json().await?;
        let at = Instant::now();
        let name = registered.node.dns_name;
        answered_within(&leader_dns, &name, Duration::from_secs(30)).await?;
        on_leader.push(at.elapsed());
        answered_within(&standby_dns, &name, Duration::from_secs(30)).await?;
        on_standby.push(at.elapsed());
    }
    on_leader.sort();
    on_standby.sort();
    let ms = |sorted: &[Duration], p: f64| percentile(sorted, p).as_secs_f64() * 1000.0;
    println!(
        "| P12 | a standby started beside the leader on its PostgreSQL store with {} nodes: standing by, then every sampled name answered by its DNS ({} names); then {LAG_SAMPLES} registers on the leader, one at a time, each name asked of both DNS servers until answered | standing by after {:.2} s; every name answered after {:.2} s; a register in the leader's DNS after p50 {:.1} ms (p99 {:.1} ms), in the standby's after p50 {:.1} ms (p99 {:.1} ms) | {command} |",
        views.len(),
        sample.len(),
        standing.as_secs_f64(),
        answering.as_secs_f64(),
        ms(&on_leader, 50.0),
        ms(&on_leader, 99.0),
        ms(&on_standby, 50.0),
        ms(&on_standby, 99.0),
    );
    Ok(standby)
}

/// P13: floods `leader` and `standby` at once, each with `--concurrency`
/// workers walking every node (one generator, two targets), against the
/// coordinator's flood alone (`alone`, heartbeats/s of each run); then
/// runs the paced fleet with every agent on the standby, counting the
/// store's writes, and the nodes the leader holds in another state than
/// `deployed` afterwards.
async fn both_measured(
    leader: &Coordinator,
    standby: &Coordinator,
    nodes: &Arc<Vec<Node>>,
    alone: &[f64],
    database: &Postgres,
    args: &Args,
    command: &str,
) -> anyhow::Result<()> {
    let (to_leader, to_standby) = (agent_client(leader)?, agent_client(standby)?);
    let (on_leader, on_standby) = tokio::join!(
        flood(leader, &to_leader, nodes, args),
        flood(standby, &to_standby, nodes, args),
    );
    let (on_leader, on_standby) = (on_leader?, on_standby?);
    let both = on_leader.rate() + on_standby.rate();
    let mut alone = alone.to_vec();
    alone.sort_by(f64::total_cmp);
    let alone = alone.get(alone.len() / 2).copied().unwrap_or(0.0);

    let before = StoreWrites::read(database);
    let phase = fleet(standby, nodes, args.seconds).await?;
    let writes = StoreWrites::read(database).since(&before, &phase);
    let down = leader
        .nodes(CLUSTER)
        .await
        .iter()
        .filter(|n| n.state != NodeState::Deployed)
        .count();
    println!(
        "| P13 | two coordinators on one PostgreSQL store with {} nodes: {} HTTPS workers flooding each at once for {} s (one generator, two targets, the same 2 cores); then {} simulated agents on their own connections heartbeating every {} s to the standby only, for {} s | both: {:.0}/s (leader {:.0}/s, standby {:.0}/s; errors {}), {:.2} of the coordinator's flood alone ({:.0}/s); store writes with every agent on the standby: {:.1} commits/s and {:.1} rows/s against {:.0} heartbeats/s ({:.4} commits per heartbeat); nodes the leader holds not deployed: {down} | {command} |",
        nodes.len(),
        args.concurrency,
        args.seconds,
        nodes.len(),
        args.interval,
        args.seconds,
        both,
        on_leader.rate(),
        on_standby.rate(),
        on_leader.errors + on_standby.errors,
        both / alone.max(1.0),
        alone,
        writes.commits,
        writes.rows,
        writes.heartbeats,
        writes.commits / writes.heartbeats.max(1.0),
    );
    Ok(())
}

/// P14: SIGKILLs `leader` while every simulated agent heartbeats
/// `standby`, and times from the kill until the standby says it leads and
/// until an admin change sent to it is made (before, it answers
/// `503 leader_unavailable`); counts the heartbeats that failed, and the
/// nodes the new leader holds in another state than `deployed` once its
/// fleet has run a full [`FAILOVER_SETTLE`] past the takeover.
async fn failover_measured(
    leader: &Coordinator,
    standby: &Coordinator,
    nodes: &Arc<Vec<Node>>,
    args: &Args,
    command: &str,
) -> anyhow::Result<()> {
    // The coordinators run with the default lease.
    let lease = muster_coordinator::config::Lease::default();
    let worst = lease.time + lease.retry_interval;
    let seconds = (FAILOVER_SETTLE * 2 + worst).as_secs() + args.interval;
    let admin = standby.https_client();
    let token = standby.admin_token();
    let url = format!("{}{}", standby.url(), paths::CLUSTERS);
    let takeover = async {
        tokio::time::sleep(FAILOVER_SETTLE).await;
        leader.kill();
        let killed = Instant::now();
        let mut leading = None;
        let mut refused = std::collections::BTreeMap::<u16, u64>::new();
        let mut attempt = 0u64;
        let changed = loop {
            if leading.is_none() && standby.logs().contains("took the leader's lease: leading") {
                leading = Some(killed.elapsed());
            }
            attempt += 1;
            let answer = admin
                .post(&url)
                .bearer_auth(&token)
                .json(&serde_json::json!({ "name": format!("failover-{attempt}") }))
                .send()
                .await?;
            match answer.status() {
                reqwest::StatusCode::CREATED => break killed.elapsed(),
                status => *refused.entry(status.as_u16()).or_default() += 1,
            }
            anyhow::ensure!(
                killed.elapsed() < worst * 4,
                "no change was made {:?} after the leader was killed",
                worst * 4
            );
            tokio::time::sleep(FAILOVER_POLL).await;
        };
        let leading = leading.unwrap_or(changed);
        Ok::<_, anyhow::Error>((leading, changed, refused))
    };
    let (phase, taken) = tokio::join!(fleet(standby, nodes, seconds), takeover);
    let (phase, (leading, changed, refused)) = (phase?, taken?);
    let down = standby
        .nodes(CLUSTER)
        .await
        .iter()
        .filter(|n| n.state != NodeState::Deployed)
        .count();
    let refused = refused
        .iter()
        .map(|(status, n)| format!("{n} × {status}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "| P14 | the leader SIGKILLed while {} simulated agents heartbeat the standby every {} s (lease {} s, renewed every {} s, taken over by a standby trying every {} s); an admin change (cluster create) sent to the standby every {} ms until made | the standby led {:.2} s after the kill; the change was made after {:.2} s ({}); heartbeats answered {} of {} ({} failed); nodes not deployed afterwards: {down} | {command} |",
        nodes.len(),
        args.interval,
        lease.time.as_secs(),
        lease.renew_interval.as_secs(),
        lease.retry_interval.as_secs(),
        FAILOVER_POLL.as_millis(),
        leading.as_secs_f64(),
        changed.as_secs_f64(),
        if refused.is_empty() { "none refused".to_owned() } else { format!("refused before: {refused}") },
        phase.answered,
        phase.answered + phase.errors,
        phase.errors,
    );
    Ok(())
}
