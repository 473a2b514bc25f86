//! The rows `muster-load` prints: P1 (heartbeats per second, and their
//! latencies), P8 (the coordinator's memory per node) and, with the store
//! on PostgreSQL, P11 (the database's writes while the fleet heartbeats).

use super::{fleet_source, Args, Node, Phase, Registered, Steady};

/// The median of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// The median of `values`, with the lowest and highest beside it when
/// there is more than one, to `digits` decimals.
fn spread(values: Vec<f64>, digits: usize, unit: &str) -> String {
    let mid = median(values.clone());
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() > 1 {
        format!("{mid:.digits$}{unit} ({low:.digits$}–{high:.digits$})")
    } else {
        format!("{mid:.digits$}{unit}")
    }
}

/// The figures of one phase's `runs`: each figure the median of the runs
/// (the upper one of an even count), with the lowest and highest beside
/// it when there is more than one run; errors summed.
fn figures(runs: &[Phase]) -> String {
    let median = |figure: &dyn Fn(&Phase) -> f64, digits: usize, unit: &str| {
        spread(runs.iter().map(figure).collect(), digits, unit)
    };
    let what = if runs.len() > 1 {
        format!("median of {} runs (lowest–highest): ", runs.len())
    } else {
        String::new()
    };
    format!(
        "{what}{}, p50 {}, p99 {}, {} errors; coordinator CPU {} of a core",
        median(&Phase::rate, 0, "/s"),
        median(&|p| p.ms(50.0), 1, " ms"),
        median(&|p| p.ms(99.0), 1, " ms"),
        runs.iter().map(|p| p.errors).sum::<u64>(),
        median(&|p| p.cpu, 0, " %"),
    )
}

/// The coordinator's memory (KiB) before the registers and after the
/// floods.
pub(super) struct Memory {
    pub(super) rss_before: u64,
    pub(super) anon_before: u64,
    pub(super) rss_after: u64,
    pub(super) anon_after: u64,
}

/// The build profile of the coordinator measured: the name of the
/// directory its binary is in once links are followed (`debug`,
/// `release`, `bench`).
pub(super) fn profile() -> String {
    let binary = muster_tests::procs::bin_path("muster-coordinator");
    std::fs::canonicalize(&binary)
        .ok()
        .and_then(|path| Some(path.parent()?.file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The machine: its cores and CPU model.
pub(super) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "an unknown CPU".to_owned());
    format!("{cores} cores, {model}")
}

/// P1's rows: the paced fleet's (if it ran) and the flood's.
pub(super) fn print_p1(
    args: &Args,
    nodes: &[Node],
    registered: &Registered,
    floods: &[Phase],
    fleets: &[Phase],
    command: &str,
) {
    if !fleets.is_empty() {
        let offered = nodes.len() as f64 / (nodes[0].interval + nodes[0].jitter / 2).as_secs_f64();
        println!(
            "| P1 | heartbeats/s of a paced fleet: {} simulated agents, each on its own HTTPS connection, every {} s plus up to {} ms of jitter (about {offered:.0}/s offered) for {} s, generator on the same 2 cores; latencies from the second interval on, once every agent has opened its connection | {} | {command} |",
            nodes.len(),
            nodes[0].interval.as_secs_f64(),
            nodes[0].jitter.as_millis(),
            args.seconds,
            figures(fleets),
        );
    }
    if floods.is_empty() {
        return;
    }
    let checked = match (&args.ec2_cache_refresh, args.byon) {
        (_, true) => "bring-your-own machines, which EC2 is never asked about".to_owned(),
        (Some(refresh), false) => {
            format!("each confirmed by the EC2 cache's listing, refreshed every {refresh}")
        }
        (None, false) => "each checked against moto".to_owned(),
    };
    println!(
        "| P1 | heartbeats/s one coordinator answers: {} registered nodes, {} HTTPS workers back to back for {} s, generator on the same 2 cores | {} (registers beforehand: {:.0}/s, {checked}) | {command} |",
        nodes.len(),
        args.concurrency,
        args.seconds,
        figures(floods),
        registered.rate,
    );
}

/// P8's rows: memory per node, and with every agent connected (if the
/// paced fleet ran).
pub(super) fn print_p8(
    args: &Args,
    nodes: &[Node],
    registered: &Registered,
    memory: &Memory,
    fleets: &[Phase],
    command: &str,
) {
    let floods = match args.runs {
        _ if !args.flood => "registers".to_owned(),
        1 => "flood".to_owned(),
        n => format!("{n} floods"),
    };
    let per_node =
        |after: u64, before: u64| after.saturating_sub(before) as f64 / nodes.len() as f64;
    let listed = match registered.listing {
        Some((took, anon)) => format!(
            "; the EC2 cache's listing of all {} instances, read {:.0} s after the first register, took {:.1} → {:.1} MiB before the registers",
            nodes.len(),
            took.as_secs_f64(),
            memory.anon_before as f64 / 1024.0,
            anon as f64 / 1024.0,
        ),
        None => String::new(),
    };
    println!(
        "| P8 | coordinator memory per node: {} {}nodes registered, each with host facts in memory (the growth of anonymous RSS, the heap and stacks, not the executable's pages) | marginal {:.2} KiB per node (the second {} registers: {:.1} → {:.1} MiB); on average {:.2} KiB per node from before the first register to after the {floods} ({:.1} → {:.1} MiB, {} connections open; all RSS, with the executable's pages: {:.2} KiB per node){listed} | {command} |",
        nodes.len(),
        if args.byon { "bring-your-own " } else { "" },
        registered.marginal,
        registered.added,
        registered.anon_half as f64 / 1024.0,
        registered.anon_full as f64 / 1024.0,
        per_node(memory.anon_after, memory.anon_before),
        memory.anon_before as f64 / 1024.0,
        memory.anon_after as f64 / 1024.0,
        args.concurrency,
        per_node(memory.rss_after, memory.rss_before),
    );
    if let Some(peak) = fleets.iter().map(|f| f.peak_anon_kib).max() {
        println!(
            "| P8 | coordinator memory per node with every node's agent connected ({} nodes, each on its own HTTPS connection: the fleet phases' peak) | {:.2} KiB anonymous RSS per node ({:.1} MiB at the peak) | {command} |",
            nodes.len(),
            per_node(peak, memory.anon_before),
            peak as f64 / 1024.0,
        );
    }
}

/// P15: the fleet at rest, in its steady state: the coordinator's CPU,
/// its memory per agent with every agent connected, and the handshakes it
/// made; then the same scaled to 100,000 agents.
pub(super) fn print_at_rest(
    args: &Args,
    nodes: &[Node],
    memory: &Memory,
    fleets: &[Phase],
    command: &str,
) {
    let runs: Vec<Steady> = fleets.iter().filter_map(|f| f.steady).collect();
    let (Some(first), Some(node)) = (runs.first(), nodes.first()) else {
        return;
    };
    let agents = nodes.len() as f64;
    let figure = |f: &dyn Fn(&Steady) -> f64, digits, unit| {
        spread(runs.iter().map(f).collect(), digits, unit)
    };
    let per_agent = |s: &Steady| s.anon_kib as f64 / agents;
    let connection = |s: &Steady| s.anon_kib.saturating_sub(memory.anon_after) as f64 / agents;
    let scale = 100_000.0 / agents;
    let sources = nodes.len().div_ceil(super::AGENTS_PER_SOURCE);
    println!(
        "| P15 | the fleet at rest: {} simulated agents, each keeping one HTTPS connection (from {sources} loopback source address{}, {} to {}) and heartbeating every {} s plus up to {} ms of jitter, as the agent does; measured over the last {:.0} s of {} s, once every agent had connected | coordinator CPU {} of a core for {} heartbeats; anonymous RSS {} per agent, connections included ({:.1} MiB in all; each connection {}); TLS handshakes {}, of which resumed {}; scaled to 100,000 agents: {:.0} % of a core and {:.0} MiB | {command} |",
        nodes.len(),
        if sources == 1 { "" } else { "es" },
        fleet_source(0),
        fleet_source(nodes.len().saturating_sub(1)),
        node.interval.as_secs_f64(),
        node.jitter.as_millis(),
        first.seconds,
        args.seconds,
        figure(&|s| s.cpu, 1, " %"),
        figure(&|s| s.heartbeats, 0, "/s"),
        figure(&per_agent, 2, " KiB"),
        median(runs.iter().map(|s| s.anon_kib as f64).collect()) / 1024.0,
        figure(&connection, 2, " KiB"),
        figure(&|s| s.handshakes, 2, "/s"),
        figure(&|s| s.resumed, 2, "/s"),
        median(runs.iter().map(|s| s.cpu).collect()) * scale,
        median(runs.iter().map(per_agent).collect()) * 100_000.0 / 1024.0,
    );
}

/// The database the coordinator's store is in, with `--store postgres`.
pub(super) const DATABASE: &str = "muster";

/// What PostgreSQL counted of the store's database: committed
/// transactions and rows written. (psql's own reads add a transaction or
/// two; they write no row.)
#[derive(Debug, Clone, Copy)]
pub(super) struct StoreWrites {
    /// Commits a second.
    pub(super) commits: f64,
    /// Rows inserted, updated or deleted a second.
    pub(super) rows: f64,
    /// Heartbeats answered a second.
    pub(super) heartbeats: f64,
}

impl StoreWrites {
    /// The counts now, from `pg_stat_database` (flushed by the server at
    /// most a second late).
    pub(super) fn read(database: &muster_tests::postgres::Postgres) -> StoreWrites {
        // Let the server publish what its sessions counted so far.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let row = database.psql(
            "postgres",
            &format!(
                "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted \
                 FROM pg_stat_database WHERE datname = '{DATABASE}'"
            ),
        );
        let mut cells = row
            .split('|')
            .map(|c| c.trim().parse::<f64>().unwrap_or(0.0));
        StoreWrites {
            commits: cells.next().unwrap_or(0.0),
            rows: cells.next().unwrap_or(0.0),
            heartbeats: 0.0,
        }
    }

    /// What was written during `phase`, a second each, beside its
    /// heartbeats a second.
    pub(super) fn since(&self, before: &StoreWrites, phase: &Phase) -> StoreWrites {
        StoreWrites {
            commits: (self.commits - before.commits) / phase.wall,
            rows: (self.rows - before.rows) / phase.wall,
            heartbeats: phase.rate(),
        }
    }
}

/// P11: the store's writes on PostgreSQL while every node heartbeats on
/// its own connection, against the heartbeats; the median run's.
pub(super) fn print_store_writes(args: &Args, nodes: &[Node], runs: &[StoreWrites], command: &str) {
    let mut runs = runs.to_vec();
    runs.sort_by(|a, b| a.commits.total_cmp(&b.commits));
    let Some(median) = runs.get(runs.len() / 2) else {
        return;
    };
    let per_heartbeat = median.commits / median.heartbeats.max(1.0);
    println!(
        "| P11 | the store's writes on PostgreSQL while {} agents heartbeat every {} s, each on its own connection, {} s | {:.1} commits/s and {:.1} rows written/s against {:.0} heartbeats/s: {:.4} commits per heartbeat | {command} |",
        nodes.len(),
        args.interval,
        args.seconds,
        median.commits,
        median.rows,
        median.heartbeats,
        per_heartbeat,
    );
}
