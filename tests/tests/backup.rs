//! Backup and restore: `muster-coordinator backup FILE` copies the store
//! of a running coordinator while its agents heartbeat, and a coordinator
//! restored from that copy into a new data dir knows the same clusters,
//! nodes and tokens, and terminates nothing that still runs.
//!
//! What the restored coordinator knows comes from its admin CLI; that a
//! token survived is shown by using it; what EC2 holds from the SDK.

use std::time::Duration;

use muster_proto::NodeState;
use muster_tests::{ec2, wait_until, Agent, Coordinator, Imds, Moto, POLL};

const CLUSTER: &str = "web";

/// Heartbeats every second and EC2 read every second: a restore that
/// lost or misread anything would show within the stories' waits.
const FAST: &[&str] = &[
    "--heartbeat-interval",
    "1s",
    "--grace",
    "30s",
    "--sweep-interval",
    "1s",
    "--unknown-sweeps",
    "2",
];

const PATIENCE: Duration = Duration::from_secs(60);

/// A backup taken while three agents heartbeat every second restores, in
/// a new data dir, to the same clusters and nodes; the join token and the
/// bring-your-own token minted before the backup still work, and a dozen
/// sweeps later no node is on its way out.
#[tokio::test]
async fn a_backup_under_load_restores_everything_and_terminates_nothing() {
    let moto = Moto::start().await;
    let client = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start_with(&moto, FAST).await;
    let created = coordinator.create_cluster(CLUSTER).await;
    let byon: muster_proto::ByonTokenResponse = coordinator
        .admin_json(&["cluster", "byon-token", CLUSTER])
        .await;
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let id = ec2::launch_instance(&client, CLUSTER).await;
        let imds = Imds::start(client.clone(), &id).await;
        let agent = Agent::start(&coordinator, &imds, CLUSTER, &created.join_token);
        fleet.push((id, imds, agent));
    }
    let deployed = wait_until(
        PATIENCE,
        POLL,
        || coordinator.nodes(CLUSTER),
        |nodes| nodes.len() == 3 && nodes.iter().all(|n| n.state == NodeState::Deployed),
    )
    .await;
    assert_eq!(deployed.len(), 3, "{}", coordinator.logs());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.backup");
    let out = coordinator.admin(&["backup", file.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A second backup of the same store into an existing store's place is
    // refused and changes nothing.
    let refused = std::process::Command::new(muster_tests::procs::bin_path("muster-coordinator"))
        .arg("restore")
        .arg(&file)
        .arg("--data-dir")
        .arg(coordinator.data_dir())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("a store is there already"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let restored = Coordinator::start_restored(&moto, &coordinator, &file, FAST).await;
    assert_eq!(
        restored
            .clusters()
            .await
            .iter()
            .map(|c| &c.name)
            .collect::<Vec<_>>(),
        coordinator
            .clusters()
            .await
            .iter()
            .map(|c| &c.name)
            .collect::<Vec<_>>()
    );
    let mut before: Vec<_> = deployed.iter().map(|n| n.instance_id.clone()).collect();
    before.sort();
    let nodes = restored.nodes(CLUSTER).await;
    let mut after: Vec<_> = nodes.iter().map(|n| n.instance_id.clone()).collect();
    after.sort();
    assert_eq!(after, before);

    // The join token minted before the backup registers a new instance.
    let id = ec2::launch_instance(&client, CLUSTER).await;
    let imds = Imds::start(client.clone(), &id).await;
    let agent = Agent::start(&restored, &imds, CLUSTER, &created.join_token);
    let joined = wait_until(
        PATIENCE,
        POLL,
        || restored.nodes(CLUSTER),
        |nodes| {
            nodes
                .iter()
                .any(|n| n.instance_id == id && n.state == NodeState::Deployed)
        },
    )
    .await;
    assert!(
        joined.iter().any(|n| n.instance_id == id),
        "{}",
        agent.logs()
    );
    // And so does the bring-your-own token.
    let machine = Agent::start_byon(
        &restored,
        CLUSTER,
        &byon.byon_token,
        "0123456789abcdef0123456789abcdef",
        "rack1",
        std::net::Ipv4Addr::new(192, 168, 7, 10),
    );
    let joined = wait_until(
        PATIENCE,
        POLL,
        || restored.nodes(CLUSTER),
        |nodes| {
            nodes
                .iter()
                .any(|n| n.name == "rack1" && n.state == NodeState::Deployed)
        },
    )
    .await;
    assert!(
        joined.iter().any(|n| n.name == "rack1"),
        "{}",
        machine.logs()
    );

    // A dozen sweeps of the same EC2 later, nothing was terminated.
    let sweeps = wait_until(
        PATIENCE,
        POLL,
        || async { restored.metric("muster_sweeps_total").await },
        |n| *n >= 12,
    )
    .await;
    assert!(sweeps >= 12, "{}", restored.logs());
    let nodes = restored.nodes(CLUSTER).await;
    assert_eq!(nodes.len(), 5);
    assert!(
        nodes
            .iter()
            .all(|n| n.state != NodeState::Terminated && n.state != NodeState::Terminating),
        "{nodes:?}"
    );
    drop(fleet);
}
