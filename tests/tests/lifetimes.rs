//! Cluster lifetimes: a cluster created with `--expires-in` is removed, as
//! by `cluster rm`, once its lifetime ends: its instances terminated in
//! EC2 (read back with the SDK), its nodes' events saying why. One whose
//! end `cluster extend` moved stays. `cluster ls` shows when each ends; a
//! bad lifetime is refused and creates nothing.

use muster_proto::{ClusterState, ClusterView};
use muster_tests::ec2;
use muster_tests::{wait_until, Coordinator, Moto, EVENTUALLY, POLL};

/// When `view`'s lifetime ends.
fn ends(view: &ClusterView) -> std::time::SystemTime {
    humantime::parse_rfc3339(view.expires_at.as_deref().expect("a lifetime")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_lifetime_ends_unless_extended() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start_with(&moto, &["--sweep-interval", "1s"]).await;

    let kept = coordinator
        .launch_cluster("kept", 1, 30, &["--expires-in", "2m"])
        .await;
    let extended: ClusterView = coordinator
        .admin_json(&["cluster", "extend", "kept", "1h"])
        .await;
    assert_eq!(
        ends(&extended).duration_since(ends(&kept.cluster)).unwrap(),
        std::time::Duration::from_secs(3600)
    );
    let brief = coordinator
        .launch_cluster("brief", 1, 30, &["--expires-in", "2s"])
        .await;
    assert!(brief.cluster.expires_at.is_some());
    let id = brief.launch.expect("a launch").launched[0].clone();

    let clusters = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.clusters(),
        |c| {
            c.iter()
                .any(|c| c.name == "brief" && c.state == ClusterState::Removed)
        },
    )
    .await;
    let state = |name: &str| clusters.iter().find(|c| c.name == name).map(|c| c.state);
    assert_eq!(state("brief"), Some(ClusterState::Removed), "{clusters:?}");
    assert_eq!(state("kept"), Some(ClusterState::Active), "{clusters:?}");
    assert!(ec2::live_instances_of_cluster(&sdk, "brief")
        .await
        .is_empty());
    assert_eq!(ec2::live_instances_of_cluster(&sdk, "kept").await.len(), 1);
    let events = coordinator.node("brief", &id).await.events;
    assert!(
        events.iter().any(|e| e.reason.contains("lifetime ended")),
        "{events:?}"
    );

    // A bad lifetime creates nothing; a cluster without one has none to
    // extend.
    let refused = coordinator
        .admin(&["cluster", "create", "bad", "--expires-in", "0s"])
        .await;
    assert!(!refused.status.success());
    assert!(!coordinator.clusters().await.iter().any(|c| c.name == "bad"));
    coordinator.create_cluster("plain").await;
    let refused = coordinator
        .admin(&["cluster", "extend", "plain", "1h"])
        .await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no lifetime"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let listed = coordinator.clusters().await;
    let plain = listed.iter().find(|c| c.name == "plain").unwrap();
    assert_eq!(plain.expires_at, None);
}
