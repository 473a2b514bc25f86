//! The store on PostgreSQL, under the faults an operator's database has
//! (stopped and killed while agents heartbeat), and shared by a leader and
//! a standby, the leader killed or paused past its lease. A real
//! PostgreSQL of the test's own, real coordinators and agents on moto;
//! what landed is read with `psql`.
//!
//! The rest of the stories run on PostgreSQL too, with
//! `MUSTER_TEST_STORE=postgres` (scripts/test does it for the stories
//! that touch the store).

use std::process::Command;
use std::time::Duration;

use muster_proto::status::CoordinatorStatus;
use muster_proto::{paths, ErrorBody, ErrorCode, NodeState};
use muster_tests::ec2;
use muster_tests::postgres::Postgres;
use muster_tests::procs::{bin_path, free_tcp_port, free_udp_tcp_port};
use muster_tests::{wait_until, Agent, Coordinator, Imds, Moto, POLL, ZONE};
use nix::sys::signal::Signal;

const CLUSTER: &str = "web";

const FAST: &[&str] = muster_tests::FAST_LIVENESS;

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

/// `count` instances launched in moto, each with its IMDS and a real agent
/// registered with `join_token`; returns once every node is deployed.
async fn start_agents(
    coordinator: &Coordinator,
    ec2: &aws_sdk_ec2::Client,
    join_token: &str,
    count: usize,
) -> (Vec<String>, Vec<(Imds, Agent)>) {
    let mut ids = Vec::new();
    let mut running = Vec::new();
    for _ in 0..count {
        let id = ec2::launch_instance(ec2, CLUSTER).await;
        let imds = Imds::start(ec2.clone(), &id).await;
        let agent = Agent::start(coordinator, &imds, CLUSTER, join_token);
        ids.push(id);
        running.push((imds, agent));
    }
    for id in &ids {
        coordinator
            .wait_for_node(CLUSTER, id, NodeState::Deployed, PATIENCE)
            .await;
    }
    (ids, running)
}

/// A PostgreSQL server with the database `muster`, moto, and a
/// coordinator on that store with [`FAST`] and `extra` flags, its cluster
/// made.
struct Shared {
    db: Postgres,
    moto: Moto,
    ec2: aws_sdk_ec2::Client,
    leader: Coordinator,
    join_token: String,
}

impl Shared {
    async fn start(extra: &[&str]) -> Shared {
        let db = Postgres::start();
        db.create_database("muster");
        let moto = Moto::start().await;
        let ec2 = ec2::client(&moto.endpoint()).await;
        let url = db.url("muster");
        let mut flags = FAST.to_vec();
        flags.extend(extra);
        flags.extend(["--store", url.as_str()]);
        let leader = Coordinator::start_with(&moto, &flags).await;
        let join_token = leader.create_cluster(CLUSTER).await.join_token;
        Shared {
            db,
            moto,
            ec2,
            leader,
            join_token,
        }
    }
}

/// Asserts node `id` is deployed and never was anything else.
async fn assert_never_down(coordinator: &Coordinator, id: &str) {
    let detail = coordinator.node(CLUSTER, id).await;
    assert_eq!(detail.node.state, NodeState::Deployed, "{detail:#?}");
    let downs: Vec<_> = detail
        .events
        .iter()
        .filter(|e| e.to != NodeState::Deployed)
        .collect();
    assert!(downs.is_empty(), "nothing marked down: {downs:#?}");
}

/// PostgreSQL stopped for three graces while two agents heartbeat, then
/// killed outright: the API answers 503 `store_unavailable` while it is
/// away and writes nothing; DNS keeps answering; no node is marked down;
/// and every write acknowledged before or after is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing_and_marks_nothing_down() {
    let Shared {
        db,
        moto: _moto,
        ec2,
        leader: coordinator,
        join_token,
    } = Shared::start(&[]).await;
    let status: muster_proto::status::CoordinatorStatus = coordinator.admin_json(&["status"]).await;
    assert_eq!(status.store, "postgres");

    let (ids, running) = start_agents(&coordinator, &ec2, &join_token, 2).await;
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
        assert_never_down(&coordinator, id).await;
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
    list_clusters_as(coordinator, &coordinator.admin_token()).await
}

/// `GET /v1/clusters` with `token`: the status and the body.
async fn list_clusters_as(coordinator: &Coordinator, token: &str) -> (u16, String) {
    let response = coordinator
        .https_client()
        .get(format!("{}{}", coordinator.url(), paths::CLUSTERS))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/clusters");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Waits until `coordinator` answers `GET /v1/clusters` with `token` by
/// `status`; panics if it does not within [`PATIENCE`].
async fn wait_answers_token(coordinator: &Coordinator, token: &str, status: u16) {
    let (code, body) = wait_until(
        PATIENCE,
        POLL,
        || list_clusters_as(coordinator, token),
        |(code, _)| *code == status,
    )
    .await;
    assert_eq!(code, status, "{body}");
}

/// A new token of `path` (the admin or the viewer token) from
/// `coordinator`, as its JSON answer's `field` gives it.
async fn new_token(coordinator: &Coordinator, path: &str, field: &str) -> String {
    let response = coordinator
        .https_client()
        .post(format!("{}{path}", coordinator.url()))
        .bearer_auth(coordinator.admin_token())
        .send()
        .await
        .expect("POST a new token");
    assert_eq!(response.status(), 200, "{path}");
    let body: serde_json::Value = response.json().await.expect("a JSON answer");
    body[field].as_str().expect("the token").to_owned()
}

/// A file of a coordinator's data dir.
fn data_file(coordinator: &Coordinator, name: &str) -> String {
    std::fs::read_to_string(coordinator.data_dir().join(name))
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

const LEASE: &[&str] = muster_tests::FAST_LEASE;

/// The lease row: holder and term.
fn lease_row(db: &Postgres) -> String {
    db.psql("muster", "SELECT holder, term FROM muster_lease")
}

/// A standby beside the leader, on the same API port, under heartbeat
/// load: agents reach either; the standby answers DNS as the leader does,
/// a node registered after it started included; the leader is SIGKILLed.
/// The standby takes the lease (a higher term), and answers the same names;
/// the agents carry on; no node is marked down; what the old leader
/// acknowledged is there, and the new one writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader() {
    let Shared {
        db,
        moto: _moto,
        ec2,
        leader,
        join_token,
    } = Shared::start(LEASE).await;
    let (mut ids, mut running) = start_agents(&leader, &ec2, &join_token, 2).await;
    // Alone on its port, the leader says it leads.
    let alone: CoordinatorStatus = leader.admin_json(&["status"]).await;
    assert!(alone.leader, "{alone:#?}");
    let leader_name = alone.lease.expect("a lease on a shared store").holder;
    let metrics = leader.metrics().await;
    assert!(metrics.contains("muster_lease_term 1"), "{metrics}");
    assert!(metrics.contains("muster_leader 1"), "{metrics}");

    // The standby shares the port: agents' connections, registers and
    // heartbeats, now reach either. It answers DNS as the leader does: the
    // nodes it loaded, and one registered after it started.
    let mut standby = leader.start_standby(true).await;
    let (more_ids, more_running) = start_agents(&leader, &ec2, &join_token, 1).await;
    ids.extend(more_ids);
    running.extend(more_running);
    let name = |id: &str| muster_proto::node_dns_name(id, CLUSTER, ZONE);
    let (leader_dns, standby_dns) = (leader.resolver(), standby.resolver());
    for id in &ids {
        let expected = leader_dns
            .a_until(&name(id), PATIENCE, |a| !a.a.is_empty())
            .await
            .a;
        let answer = standby_dns
            .a_until(&name(id), PATIENCE, |a| a.a == expected)
            .await;
        assert_eq!(
            answer.a, expected,
            "the standby answers {id} as the leader does"
        );
    }
    // Either may answer on the shared port: both tell the same lease.
    let status = wait_for_replicas(&leader, 2).await;
    let lease = status.lease.expect("a lease on a shared store");
    assert_eq!(lease.term, 1, "{lease:#?}");
    assert_eq!(lease.holder, leader_name, "{lease:#?}");
    let roles: Vec<&str> = lease.replicas.iter().map(|r| r.role.as_str()).collect();
    assert!(
        roles.contains(&"leader") && roles.contains(&"standby"),
        "{lease:#?}"
    );
    assert_eq!(lease_row(&db), format!("{}|1", lease.holder));

    leader.kill();
    standby.wait_leading().await;
    let status: CoordinatorStatus = standby.admin_json(&["status"]).await;
    let taken = status.lease.expect("a lease");
    assert_eq!(taken.term, 2, "{taken:#?}");
    assert_ne!(taken.holder, lease.holder);
    assert_eq!(lease_row(&db), format!("{}|2", taken.holder));

    // The agents carry on against the new leader, at the same address,
    // for three graces; nothing is marked down, and every name answers.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for id in &ids {
        assert_never_down(&standby, id).await;
        let answer = standby
            .resolver()
            .a_until(&name(id), PATIENCE, |a| !a.a.is_empty())
            .await;
        assert!(!answer.a.is_empty(), "{id} answers from the new leader");
    }
    assert_eq!(
        db.psql(
            "muster",
            "SELECT count(*) FROM node_events WHERE to_state <> 'deployed'"
        ),
        "0"
    );
    let (status, body) = create_cluster_raw(&standby, "db").await;
    assert_eq!(status, 201, "the new leader writes: {body}");
    assert_eq!(
        db.psql("muster", "SELECT name FROM clusters ORDER BY name"),
        "db\nweb"
    );
    drop(running);
}

/// Three coordinators, each on its own port; agents registered through a
/// standby: the leader lists them, and the leader and the third answer
/// their names as the standby does; they heartbeat to the standby only for
/// three graces, and the leader, which never hears them, marks none down
/// (the standby publishes whom it heard). The standby serves reads, and
/// refuses an admin change with `421 not_leader`, naming the leader, and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_agents_and_the_leader_hears_of_them() {
    let Shared {
        db,
        moto: _moto,
        ec2,
        leader,
        join_token,
    } = Shared::start(LEASE).await;
    let standby = leader.start_standby(false).await;
    let third = leader.start_standby(false).await;

    let (ids, running) = start_agents(&standby, &ec2, &join_token, 2).await;
    let name = |id: &str| muster_proto::node_dns_name(id, CLUSTER, ZONE);
    for id in &ids {
        leader
            .wait_for_node(CLUSTER, id, NodeState::Deployed, PATIENCE)
            .await;
        let expected = standby
            .resolver()
            .a_until(&name(id), PATIENCE, |a| !a.a.is_empty())
            .await
            .a;
        for (which, other) in [("the leader", &leader), ("the third", &third)] {
            let answer = other
                .resolver()
                .a_until(&name(id), PATIENCE, |a| a.a == expected)
                .await;
            assert_eq!(
                answer.a, expected,
                "{which} answers {id} as the standby does"
            );
        }
    }
    let status = wait_for_replicas(&leader, 3).await;
    let roles: Vec<&str> = status
        .lease
        .iter()
        .flat_map(|l| &l.replicas)
        .map(|r| r.role.as_str())
        .collect();
    assert_eq!(roles.len(), 3, "{status:#?}");
    assert_eq!(
        roles.iter().filter(|r| **r == "leader").count(),
        1,
        "{status:#?}"
    );

    tokio::time::sleep(Duration::from_secs(9)).await;
    for id in &ids {
        assert_never_down(&leader, id).await;
        assert_never_down(&standby, id).await;
    }
    let leader_heard = leader.metric("muster_heartbeats_total").await;
    assert_eq!(leader_heard, 0, "every heartbeat went to the standby");
    assert_eq!(
        db.psql("muster", "SELECT count(*) FROM muster_heard"),
        "1",
        "the standby publishes whom it heard"
    );

    let status: CoordinatorStatus = standby.admin_json(&["status"]).await;
    assert!(!status.leader, "{status:#?}");
    let leader_name = status.lease.expect("a lease").holder;
    let (code, body) = list_clusters_raw(&standby).await;
    assert_eq!(code, 200, "the standby serves reads: {body}");
    let (code, body) = create_cluster_raw(&standby, "db").await;
    assert_eq!(code, 201, "the standby passes the change on: {body}");
    assert!(
        body.contains("\"join_token\""),
        "the leader's answer: {body}"
    );
    assert_eq!(
        db.psql("muster", "SELECT name FROM clusters ORDER BY name"),
        "db\nweb",
        "the leader made it"
    );

    // Passed on once at most: a change that comes passed on already, to
    // a coordinator standing by, is refused and names the leader.
    let response = standby
        .https_client()
        .post(format!("{}{}", standby.url(), paths::CLUSTERS))
        .bearer_auth(standby.admin_token())
        .header("muster-forwarded-by", "another")
        .json(&serde_json::json!({ "name": "cache" }))
        .send()
        .await
        .expect("POST /v1/clusters");
    assert_eq!(response.status(), 421);
    let error: ErrorBody = response.json().await.expect("the error shape");
    assert_eq!(error.error.code, ErrorCode::NotLeader);
    assert!(error.error.message.contains(&leader_name), "{error:?}");
    assert!(
        !error.error.message.contains("  "),
        "one sentence: {error:?}"
    );

    // The leader gone, and its lease not yet run out: a change cannot be
    // passed on, is answered 503, and nothing is written.
    leader.kill();
    let (code, body) = create_cluster_raw(&standby, "cache").await;
    assert_eq!(code, 503, "{body}");
    let error: ErrorBody = serde_json::from_str(&body).expect("the error shape");
    assert_eq!(error.error.code, ErrorCode::LeaderUnavailable, "{body}");
    assert_eq!(
        db.psql("muster", "SELECT name FROM clusters ORDER BY name"),
        "db\nweb",
        "nothing was written"
    );
    drop(running);
}

/// A standby cut off from PostgreSQL while the leader is not (its
/// database user may no longer log in, its sessions ended) cannot
/// publish whom it heard: its `/healthz` says so with 503, so a load
/// balancer sends its agents elsewhere, while the leader's stays 200.
/// Let back in, it is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_cut_off_from_the_store_says_it_is_unhealthy() {
    let Shared {
        db,
        moto: _moto,
        ec2,
        leader,
        join_token,
    } = Shared::start(LEASE).await;
    db.psql("muster", "CREATE ROLE standby LOGIN SUPERUSER");
    let url = db.url("muster").replacen("://muster@", "://standby@", 1);
    assert!(url.contains("standby@"), "{url}");
    let standby = leader.start_standby_at(false, Some(&url)).await;
    let (_ids, running) = start_agents(&standby, &ec2, &join_token, 1).await;
    assert_eq!(healthz(&standby).await.0, 200);

    db.psql(
        "muster",
        "ALTER ROLE standby NOLOGIN; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'standby'",
    );
    let (code, body) = wait_until(
        PATIENCE,
        POLL,
        || healthz(&standby),
        |(code, _)| *code == 503,
    )
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("send agents to another coordinator"),
        "{body}"
    );
    assert_eq!(healthz(&leader).await.0, 200, "the leader keeps the store");

    db.psql("muster", "ALTER ROLE standby LOGIN");
    let (code, body) = wait_until(
        PATIENCE,
        POLL,
        || healthz(&standby),
        |(code, _)| *code == 200,
    )
    .await;
    assert_eq!(code, 200, "healthy again: {body}");
    drop(running);
}

/// `GET /healthz`: the status and the body.
async fn healthz(coordinator: &Coordinator) -> (u16, String) {
    let response = coordinator
        .https_client()
        .get(format!("{}{}", coordinator.url(), paths::HEALTHZ))
        .send()
        .await
        .expect("GET /healthz");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Replicas started with nothing but a copy of the store key take the CA
/// and the admin token from the store, sealed there (neither is in the
/// database in the clear), and issue their own server certificates from
/// that CA. A token rotated on the leader is taken by the others: the new
/// one works there and the old one no longer does, and their data dirs'
/// copies follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_ca_and_tokens_through_the_store() {
    let Shared {
        db,
        moto: _moto,
        leader,
        ..
    } = Shared::start(LEASE).await;
    let standby = leader.start_standby(false).await;

    for file in ["ca.pem", "ca-key.pem", "admin-token"] {
        assert_eq!(
            data_file(&standby, file),
            data_file(&leader, file),
            "the standby took {file} from the store"
        );
    }
    assert_ne!(
        data_file(&standby, "server.pem"),
        data_file(&leader, "server.pem"),
        "each replica issues its own server certificate"
    );
    let stored = db.psql("muster", "SELECT string_agg(value, ' ') FROM meta");
    let ca_key = data_file(&leader, "ca-key.pem");
    let key_line = ca_key.lines().nth(1).expect("a PEM body");
    assert!(!stored.contains(key_line), "the CA key is sealed: {stored}");
    assert!(
        !stored.contains(&leader.admin_token()),
        "the admin token is sealed"
    );
    assert_eq!(
        db.psql(
            "muster",
            "SELECT count(*) FROM meta WHERE key IN ('shared_ca', 'shared_admin_token') \
             AND value LIKE 'v1:%'"
        ),
        "2"
    );

    let old = leader.admin_token();
    let new = new_token(&leader, paths::ADMIN_ROTATE_TOKEN, "admin_token").await;
    wait_answers_token(&standby, &new, 200).await;
    wait_answers_token(&standby, &old, 401).await;
    assert_eq!(data_file(&standby, "admin-token").trim(), new);
    assert_eq!(data_file(&leader, "admin-token").trim(), new);

    let viewer = new_token(&leader, paths::ADMIN_VIEWER_TOKEN, "viewer_token").await;
    wait_answers_token(&standby, &viewer, 200).await;
    let (code, body) = create_cluster_raw(&standby, "db").await;
    assert_eq!(
        code, 201,
        "the standby's token is the new admin token: {body}"
    );
}

/// The console as a browser on `coordinator` sees it: a client that
/// follows no redirect, so a sign-in's cookie and a page's redirect show.
fn browser(coordinator: &Coordinator) -> reqwest::Client {
    let ca = std::fs::read(coordinator.ca_file()).expect("the CA");
    muster_tests::coordinator::https_client_builder(&ca)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in to `coordinator`'s console with `token`: the session's cookie.
async fn sign_in(coordinator: &Coordinator, token: &str) -> String {
    let response = browser(coordinator)
        .post(format!("{}/ui/login", coordinator.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .expect("POST /ui/login");
    assert_eq!(response.status(), 303, "signed in");
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// `method path` on `coordinator` with the session `cookie`: the status.
async fn with_session(
    coordinator: &Coordinator,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
) -> u16 {
    browser(coordinator)
        .request(method, format!("{}{path}", coordinator.url()))
        .header("cookie", cookie)
        .send()
        .await
        .expect("a console request")
        .status()
        .as_u16()
}

/// A console session opened on one replica is served by the other, and
/// kept in the store by its digest only; signing out on the other ends it
/// on both; a new admin token ends the sessions the old one opened, on
/// every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_is_served_by_every_replica() {
    use reqwest::Method;
    let Shared {
        db,
        moto: _moto,
        leader,
        ..
    } = Shared::start(LEASE).await;
    let standby = leader.start_standby(false).await;

    let cookie = sign_in(&leader, &leader.admin_token()).await;
    assert_eq!(
        with_session(&standby, Method::GET, "/ui/", &cookie).await,
        200
    );
    assert_eq!(
        with_session(&standby, Method::GET, paths::CLUSTERS, &cookie).await,
        200,
        "the standby reads for the session"
    );
    let id = cookie.split_once('=').unwrap().1;
    assert_eq!(
        db.psql("muster", "SELECT count(*) FROM console_sessions"),
        "1"
    );
    let stored = db.psql("muster", "SELECT digest FROM console_sessions");
    assert!(!stored.contains(id), "only the id's digest is kept");

    assert_eq!(
        with_session(&standby, Method::POST, "/ui/logout", &cookie).await,
        303
    );
    assert_eq!(
        with_session(&leader, Method::GET, "/ui/", &cookie).await,
        303,
        "signed out on the leader too"
    );
    assert_eq!(
        db.psql("muster", "SELECT count(*) FROM console_sessions"),
        "0"
    );

    let cookie = sign_in(&standby, &leader.admin_token()).await;
    assert_eq!(
        with_session(&leader, Method::GET, "/ui/", &cookie).await,
        200
    );
    new_token(&leader, paths::ADMIN_ROTATE_TOKEN, "admin_token").await;
    assert_eq!(
        with_session(&leader, Method::GET, "/ui/", &cookie).await,
        303,
        "the new token ends the session on the leader at once"
    );
    let status = wait_until(
        PATIENCE,
        POLL,
        || with_session(&standby, Method::GET, "/ui/", &cookie),
        |status| *status == 303,
    )
    .await;
    assert_eq!(
        status, 303,
        "and on the standby once it reads the new token"
    );
}

/// Two coordinators started at once on an empty database, with the same
/// store key (made as the recipe says, `openssl rand -hex 32`): one
/// schema, one CA and one admin token, which both serve with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_starting_at_once_share_one_ca_and_token() {
    let db = Postgres::start();
    db.create_database("muster");
    let moto = Moto::start().await;
    let url = db.url("muster");
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("store-key");
    let made = Command::new("openssl")
        .args(["rand", "-hex", "-out"])
        .arg(&key_file)
        .arg("32")
        .status()
        .expect("running openssl");
    assert!(made.success());
    let key = key_file.to_str().unwrap();
    let flags = ["--store", url.as_str(), "--store-key-file", key];
    let (a, b) = tokio::join!(
        Coordinator::start_with(&moto, &flags),
        Coordinator::start_with(&moto, &flags)
    );
    for file in ["ca.pem", "admin-token"] {
        assert_eq!(data_file(&a, file), data_file(&b, file), "one {file}");
    }
    assert_eq!(
        db.psql(
            "muster",
            "SELECT count(*) FROM meta WHERE key LIKE 'shared_%'"
        ),
        "3",
        "one CA, its fingerprint and one admin token"
    );
    let (code, body) = list_clusters_as(&a, &b.admin_token()).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = list_clusters_as(&b, &a.admin_token()).await;
    assert_eq!(code, 200, "{body}");
}

/// A leader paused (SIGSTOP) past its lease: a standby takes over; the
/// old leader, resumed, writes nothing (a write sent to it while paused
/// is refused or never answered, never acknowledged), and steps down,
/// exiting with an error that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_and_steps_down() {
    let Shared {
        db,
        moto: _moto,
        mut leader,
        ..
    } = Shared::start(LEASE).await;
    let mut standby = leader.start_standby(false).await;
    let old_row = lease_row(&db);
    assert!(old_row.ends_with("|1"), "{old_row}");

    leader.signal(Signal::SIGSTOP);
    standby.wait_leading().await;
    assert!(lease_row(&db).ends_with("|2"), "{}", lease_row(&db));
    assert_ne!(lease_row(&db), old_row.replace("|1", "|2"));

    // A write reaches the paused leader's socket; it is read only once
    // the leader runs again, after the takeover.
    let late = {
        let client = leader.https_client();
        let request = client
            .post(format!("{}{}", leader.url(), paths::CLUSTERS))
            .bearer_auth(leader.admin_token())
            .json(&serde_json::json!({ "name": "late" }));
        tokio::spawn(async move {
            match request.send().await {
                Ok(response) => Some(response.status().as_u16()),
                Err(_) => None,
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    leader.signal(Signal::SIGCONT);
    let exit = leader.wait_exit(PATIENCE).await;
    assert!(!exit.success(), "it steps down with an error: {exit}");
    assert!(
        leader
            .logs()
            .contains("another coordinator took over the lease"),
        "it says why\n{}",
        leader.logs()
    );
    let answered = late.await.unwrap();
    assert!(
        matches!(answered, None | Some(503)),
        "never acknowledged: {answered:?}"
    );
    assert_eq!(
        db.psql("muster", "SELECT name FROM clusters ORDER BY name"),
        CLUSTER,
        "the old leader wrote nothing after the takeover"
    );
    let (status, body) = create_cluster_raw(&standby, "db").await;
    assert_eq!(status, 201, "the new leader writes: {body}");
}

/// A second coordinator started on the shared store is refused at start,
/// saying why and what to do, and changes nothing, when it lacks the key
/// the store's credentials are sealed with, and when its data dir holds a
/// CA of its own (which no agent pins); the first serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_without_the_key_or_with_another_ca_is_refused() {
    let db = Postgres::start();
    db.create_database("muster");
    let moto = Moto::start().await;
    let url = db.url("muster");
    let first = Coordinator::start_with(&moto, &["--store", &url]).await;
    first.create_cluster(CLUSTER).await;
    let before = db.psql("muster", "SELECT holder, term FROM muster_lease");
    let meta = db.psql(
        "muster",
        "SELECT string_agg(key || value, ' ' ORDER BY key) FROM meta",
    );

    let refused = |data_dir: &std::path::Path, says: &[&str]| {
        let output = Command::new(bin_path("muster-coordinator"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", free_tcp_port())])
            .args([
                "--dns-listen",
                &format!("127.0.0.1:{}", free_udp_tcp_port()),
            ])
            .args(["--zone", ZONE])
            .arg("--data-dir")
            .arg(data_dir)
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
        for words in says {
            assert!(stderr.contains(words), "it says {words:?}: {stderr}");
        }
    };
    let data_dir = tempfile::tempdir().unwrap();
    refused(
        data_dir.path(),
        &["sealed with a key", "copy the store key"],
    );
    assert!(
        !data_dir.path().join("ca.pem").exists(),
        "it took nothing it could not open"
    );

    std::fs::copy(
        first.data_dir().join("store-key"),
        data_dir.path().join("store-key"),
    )
    .unwrap();
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=another"])
        .arg("-keyout")
        .arg(data_dir.path().join("ca-key.pem"))
        .arg("-out")
        .arg(data_dir.path().join("ca.pem"))
        .output()
        .expect("running openssl");
    assert!(made.status.success(), "{made:?}");
    refused(
        data_dir.path(),
        &["holds a CA ca.pem", "agents pin the store's"],
    );

    assert_eq!(
        db.psql("muster", "SELECT holder, term FROM muster_lease"),
        before,
        "it never stood by or led"
    );
    assert_eq!(
        db.psql("muster", "SELECT count(*) FROM muster_replicas"),
        "1"
    );
    assert_eq!(
        db.psql(
            "muster",
            "SELECT string_agg(key || value, ' ' ORDER BY key) FROM meta"
        ),
        meta,
        "the store's credentials are unchanged"
    );
    assert_eq!(first.clusters().await.len(), 1, "the first serves on");
}

/// The leader's status once it has seen `count` coordinators.
async fn wait_for_replicas(leader: &Coordinator, count: usize) -> CoordinatorStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let status: CoordinatorStatus = leader.admin_json(&["status"]).await;
        let seen = status.lease.as_ref().map_or(0, |l| l.replicas.len());
        if seen >= count {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} replicas not seen: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
