//! P7: Route53 convergence when thousands of records change at once,
//! through the real reconcile loop and Route53 provider, into moto's
//! Route53 behind a counting proxy.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_coordinator::config::Route53Zone;
use muster_coordinator::dns::provider::DnsProvider;
use muster_coordinator::dns::reconcile::Reconciler;
use muster_coordinator::dns::route53::Route53;
use muster_coordinator::dns::status::{ProviderStatus, StatusBoard};
use muster_coordinator::dns::{NodeRecordSource, Zone};
use muster_tests::{ec2, route53, wait_until, Moto, Route53Proxy};

/// Nodes of P7's big zone, unless `--p7-nodes` says otherwise.
pub(super) const P7_NODES: usize = 5000;

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
        ipv6: None,
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
pub(super) struct P7Scene {
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
pub(super) enum P7Start {
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
            // The nodes here have IPv4 addresses alone.
            RecordData::Addresses(ips) => ("A", ips.iter().map(ToString::to_string).collect()),
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
pub(super) async fn p7_setup(nodes: usize, start: P7Start) -> anyhow::Result<P7Scene> {
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
    // Each node's public, internal and wildcard names; each cluster's
    // public and internal round robins.
    let names = 3 * nodes + 2 * clusters;
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
    let changed = 2 * nodes + 2 * clusters;
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
        "| P7 | Route53 convergence: {changed} A records ({} nodes' public and internal names, {clusters} clusters' public and internal round robins) changing at once, {what}; real reconcile loop and provider, moto {} record sets, 10 requests/s | every record read back through the SDK {:.1} s after the change (all accepted by Route53 after {:.1} s: {changes} ChangeResourceRecordSets of at most {largest} counted records, moto's own processing {:.1} s; {other_calls} other Route53 calls); {retries} throttling answers seen and retried; last change {} | {command} |",
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
pub(super) async fn p7(
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
