//! The store on PostgreSQL, under the faults an operator's database has:
//! stopped and killed while agents heartbeat, and shared by mistake with a
//! second coordinator. A real PostgreSQL of the test's own, real
//! coordinators and agents on moto; what landed is read with `psql`.
//!
//! The rest of the stories run on PostgreSQL too, with
//! `MUSTER_TEST_STORE=postgres` (scripts/test does it for the stories
//! that touch the store).

use std::process::Command;
use std::time::Duration;

use muster_proto::{paths, ErrorBody, ErrorCode, NodeState};
use muster_tests::ec2;
use muster_tests::postgres::Postgres;
use muster_tests::procs::{bin_path, free_tcp_port, free_udp_tcp_port};
use muster_tests::{Agent, Coordinator, Imds, Moto, ZONE};

const CLUSTER: &str = "web";

/// Heartbeats every second, unreachable after 3 s of silence, EC2 read
/// every second.
const FAST: &[&str] = &[
    "--heartbeat-interval",
    "1s",
    "--grace",
    "3s",
    "--sweep-interval",
    "1s",
];

const PATIENCE: Duration = Duration::from_secs(30);

/// `POST /v1/clusters` with the admin token: the status and the body.
async fn create_cluster_raw(coordinator: &Coordinator, name: &str) -> (u16, String) {
    let response = coordinator
        .https_client()
        .post(format!("{}{}", coordinator.url(), paths::CLUSTERS))
        .bearer_auth(coordinator.admin_token())
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .expect("POST /v1/clusters");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// PostgreSQL stopped for three graces while two agents heartbeat, then
/// killed outright: the API answers 503 `store_unavailable` while it is
/// away and writes nothing; DNS keeps answering; no node is marked down;
/// and every write acknowledged before or after is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing_and_marks_nothing_down() {
    let db = Postgres::start();
    db.create_database("muster");
    let moto = Moto::start().await;
    let ec2 = ec2::client(&moto.endpoint()).await;
    let url = db.url("muster");
    let mut flags = FAST.to_vec();
    flags.extend(["--store", url.as_str()]);
    let coordinator = Coordinator::start_with(&moto, &flags).await;
    let join_token = coordinator.create_cluster(CLUSTER).await.join_token;
    let status: muster_proto::status::CoordinatorStatus = coordinator.admin_json(&["status"]).await;
    assert_eq!(status.store, "postgres");

    let mut ids = Vec::new();
    let mut running = Vec::new();
    for _ in 0..2 {
        let id = ec2::launch_instance(&ec2, CLUSTER).await;
        let imds = Imds::start(ec2.clone(), &id).await;
        let agent = Agent::start(&coordinator, &imds, CLUSTER, &join_token);
        ids.push(id);
        running.push((imds, agent));
    }
    for id in &ids {
        coordinator
            .wait_for_node(CLUSTER, id, NodeState::Deployed, PATIENCE)
            .await;
    }
    let name = |id: &str| muster_proto::node_dns_name(id, CLUSTER, ZONE);
    let resolver = coordinator.resolver();
    for id in &ids {
        let answer = resolver
            .a_until(&name(id), PATIENCE, |a| !a.a.is_empty())
            .await;
        assert!(!answer.a.is_empty(), "{id} answers before the outage");
    }

    db.stop();
    let (status, body) = create_cluster_raw(&coordinator, "db").await;
    assert_eq!(status, 503, "{body}");
    let error: ErrorBody = serde_json::from_str(&body).expect("the error shape");
    assert_eq!(error.error.code, ErrorCode::StoreUnavailable, "{body}");
    // Three graces without the database; the agents go on heartbeating.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for id in &ids {
        let answer = resolver
            .query(&name(id), hickory_proto::rr::RecordType::A)
            .await;
        let answer = answer.expect("the embedded DNS answers without the database");
        assert!(!answer.a.is_empty(), "{id} still answers: {answer:?}");
    }

    db.start_again();
    let (status, body) = create_cluster_raw(&coordinator, "db").await;
    assert_eq!(status, 201, "the database is back: {body}");
    for id in &ids {
        let detail = coordinator.node(CLUSTER, id).await;
        assert_eq!(detail.node.state, NodeState::Deployed, "{detail:#?}");
        let downs: Vec<_> = detail
            .events
            .iter()
            .filter(|e| e.to != NodeState::Deployed)
            .collect();
        assert!(downs.is_empty(), "nothing marked down: {downs:#?}");
    }
    assert_eq!(
        db.psql("muster", "SELECT name FROM clusters ORDER BY name"),
        "db\nweb",
        "the refused create wrote nothing; the later one landed once"
    );

    // Killed: what was acknowledged survives the crash. The coordinator's
    // connection died with the server: a call that meets it first may be
    // answered 503, and the next opens a new one.
    db.kill();
    db.start_again();
    assert_eq!(
        db.psql(
            "muster",
            "SELECT count(*) FROM nodes WHERE state = 'deployed'"
        ),
        "2"
    );
    let mut refusals = 0;
    let listed = loop {
        let (status, body) = list_clusters_raw(&coordinator).await;
        if status == 200 {
            break body;
        }
        assert_eq!(
            status, 503,
            "only unavailable, never a wrong answer: {body}"
        );
        assert!(body.contains("store_unavailable"), "{body}");
        refusals += 1;
        assert!(refusals < 3, "the coordinator did not reconnect: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let clusters: Vec<muster_proto::ClusterView> = serde_json::from_str(&listed).unwrap();
    assert_eq!(clusters.len(), 2, "{clusters:#?}");
    drop(running);
}

/// `GET /v1/clusters` with the admin token: the status and the body.
async fn list_clusters_raw(coordinator: &Coordinator) -> (u16, String) {
    let response = coordinator
        .https_client()
        .get(format!("{}{}", coordinator.url(), paths::CLUSTERS))
        .bearer_auth(coordinator.admin_token())
        .send()
        .await
        .expect("GET /v1/clusters");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A second coordinator pointed at a database another one serves from
/// exits at once, saying why, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_the_same_database_is_refused() {
    let db = Postgres::start();
    db.create_database("muster");
    let moto = Moto::start().await;
    let url = db.url("muster");
    let first = Coordinator::start_with(&moto, &["--store", &url]).await;
    first.create_cluster(CLUSTER).await;
    let before = db.psql(
        "muster",
        "SELECT count(*), max(version) FROM clusters, muster_schema",
    );

    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin_path("muster-coordinator"))
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{}", free_tcp_port())])
        .args([
            "--dns-listen",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
        ])
        .args(["--zone", ZONE])
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--public-url", "https://127.0.0.1:1"])
        .args(["--store", &url])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("AWS_REGION", ec2::TEST_REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("running a second coordinator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it must not serve: {stderr}");
    assert!(
        stderr.contains("another coordinator serves"),
        "it says why: {stderr}"
    );
    assert_eq!(
        db.psql(
            "muster",
            "SELECT count(*), max(version) FROM clusters, muster_schema"
        ),
        before
    );
    // The first one serves on.
    assert_eq!(first.clusters().await.len(), 1);
}
