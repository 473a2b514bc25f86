//! P6 and P8 at 10k and 100k nodes: the EC2 calls of a launch, and the
//! memory of a coordinator holding a big bring-your-own fleet.

use muster_tests::{ec2, Coordinator, Ec2Proxy, Moto};

/// P6's rows: the EC2 calls of `cluster create --count N` in a fresh
/// region, for N = 60 and 100.
pub(super) async fn p6(moto: &Moto, command: &str) -> anyhow::Result<Vec<String>> {
    let mut rows = Vec::new();
    for (region, n) in [("us-west-2", 60), ("eu-west-1", 100)] {
        let (total, by_action) = launch_calls(moto, region, n).await?;
        let breakdown: Vec<String> = by_action
            .iter()
            .map(|(action, calls)| format!("{action} {calls}"))
            .collect();
        rows.push(format!(
            "| P6 | EC2 calls of `cluster create --count {n}` in a fresh region (counted by a proxy in front of moto) | {total} calls: {} | {command} |",
            breakdown.join(", ")
        ));
    }
    Ok(rows)
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

/// Node counts of P8's big runs.
const P8_NODES: [usize; 2] = [10_000, 100_000];

/// P8 at [`P8_NODES`]: one `muster-load` run each, with bring-your-own
/// nodes (moto cannot hold 100k instances; see its module doc), its own
/// moto and coordinator, and a short flood; their P8 rows, each with its
/// command. The flood's rate is not reported: it shares the machine.
pub(super) async fn p8_big() -> anyhow::Result<Vec<String>> {
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
                    "{} (run by `muster-bench`, beside its first phases) |",
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
