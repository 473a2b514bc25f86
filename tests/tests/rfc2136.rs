//! RFC 2136 stories: the real coordinator writes its records to a real BIND
//! with TSIG-signed dynamic updates. What landed is read back from BIND
//! itself with the harness's resolver, never from the coordinator; edits
//! "by hand" are made with nsupdate, as an operator would.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_ec2::Client;
use muster_proto::{cluster_dns_name, node_dns_name, node_internal_dns_name, NodeState};
use muster_tests::bind::{self, Bind};
use muster_tests::ec2;
use muster_tests::procs::{bin_path, free_tcp_port, free_udp_tcp_port, loopback};
use muster_tests::{wait_until, Agent, Coordinator, Imds, Moto, EVENTUALLY, POLL, ZONE};
use tempfile::TempDir;

/// The cluster every story uses.
const CLUSTER: &str = "web";

/// How long a story waits for BIND to catch up after an outage: the retry
/// backoff may be waiting up to 10 s when BIND comes back.
const AFTER_OUTAGE: Duration = Duration::from_secs(60);

/// An address from TEST-NET-2 (RFC 5737) that EC2 never gives out.
const HAND_MADE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A coordinator on its own moto, writing to its own BIND.
struct Scene {
    // Dropped in this order: agents, coordinator, BIND, moto.
    agents: Vec<(Agent, Imds)>,
    coordinator: Coordinator,
    bind: Bind,
    ec2: Client,
    join_token: String,
    _secrets: TempDir,
    _moto: Moto,
}

impl Scene {
    /// BIND is started (and `before` run against it) before the coordinator.
    async fn new(extra_args: &[&str], before: impl AsyncFnOnce(&Bind)) -> Scene {
        let moto = Moto::start().await;
        let ec2 = ec2::client(&moto.endpoint()).await;
        let bind = Bind::start(ZONE).await;
        before(&bind).await;
        let secrets = tempfile::tempdir().expect("a directory for the TSIG secret");
        let mut args = bind.coordinator_args(secrets.path());
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let coordinator = Coordinator::start_with(&moto, &args).await;
        let created = coordinator.create_cluster(CLUSTER).await;
        Scene {
            agents: Vec::new(),
            coordinator,
            bind,
            ec2,
            join_token: created.join_token,
            _secrets: secrets,
            _moto: moto,
        }
    }

    /// Launches an instance, serves its metadata and starts its agent;
    /// returns the instance id.
    async fn add_node(&mut self) -> String {
        let id = ec2::launch_instance(&self.ec2, CLUSTER).await;
        let imds = Imds::start(self.ec2.clone(), &id).await;
        let agent = Agent::start(&self.coordinator, &imds, CLUSTER, &self.join_token);
        self.agents.push((agent, imds));
        id
    }

    /// `GET /v1/dns/status` with the admin token.
    async fn dns_status(&self) -> serde_json::Value {
        let response = self
            .coordinator
            .https_client()
            .get(format!("{}/v1/dns/status", self.coordinator.url()))
            .bearer_auth(self.coordinator.admin_token())
            .send()
            .await
            .expect("GET /v1/dns/status");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("the status is JSON")
    }

    /// Polls the DNS status until `accept` likes it; returns the last one.
    async fn dns_status_until(
        &self,
        accept: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(EVENTUALLY, POLL, || self.dns_status(), accept).await
    }

    /// `GET /metrics`.
    async fn metrics(&self) -> String {
        self.coordinator.metrics().await
    }
}

/// Registered nodes' A, internal, wildcard and round-robin records land in
/// BIND; a muster record deleted there by hand comes back with the next
/// full reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_in_bind_and_drift_is_repaired() {
    let mut scene = Scene::new(&["--dns-reconcile-interval", "2s"], async |_| {}).await;
    let first = scene.add_node().await;
    let second = scene.add_node().await;
    let bind = scene.bind.resolver();
    let mut publics = Vec::new();
    for id in [&first, &second] {
        let view = ec2::describe(&scene.ec2, id).await;
        let public = view.public_ipv4.expect("moto maps a public address");
        let private = view.private_ipv4.expect("moto gives a private address");
        publics.push(public);

        let name = node_dns_name(id, CLUSTER, ZONE);
        let answer = bind.a_until(&name, EVENTUALLY, |a| a.a == [public]).await;
        assert_eq!(answer.a, [public], "{name} at BIND is the public address");
        assert!(answer.authoritative);

        let internal = node_internal_dns_name(id, CLUSTER, ZONE);
        let answer = bind
            .a_until(&internal, EVENTUALLY, |a| a.a == [private])
            .await;
        assert_eq!(
            answer.a,
            [private],
            "{internal} at BIND is the private address"
        );

        let app = format!("app.{name}");
        let answer = bind.a_until(&app, EVENTUALLY, |a| !a.a.is_empty()).await;
        assert_eq!(answer.cnames, [format!("{name}.")], "{app} is a CNAME");
        assert_eq!(answer.a, [public], "{app} leads to the node");
    }
    publics.sort();
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    let answer = bind
        .a_until(&round_robin, EVENTUALLY, |a| a.a == publics)
        .await;
    assert_eq!(answer.a, publics, "{round_robin} holds both deployed nodes");

    let owner = scene
        .bind
        .resolver()
        .query(
            &format!("_muster.{round_robin}"),
            hickory_proto::rr::RecordType::TXT,
        )
        .await
        .expect("asking for the ownership record");
    assert_eq!(
        owner.types,
        [hickory_proto::rr::RecordType::TXT],
        "{round_robin} carries muster's ownership record: {owner:?}"
    );

    let status = scene
        .dns_status_until(|s| s["pending_changes"] == 0 && s["last_success_unix"].is_u64())
        .await;
    assert_eq!(status["provider"], "rfc2136", "{status}");
    assert_eq!(status["pending_changes"], 0, "{status}");
    assert_eq!(status["conflicts"], serde_json::json!({}), "{status}");

    // Drift: the node's record is deleted at BIND by hand.
    let name = node_dns_name(&first, CLUSTER, ZONE);
    scene
        .bind
        .nsupdate(&[&format!("update delete {name}. A")])
        .await;
    let expected = ec2::describe(&scene.ec2, &first)
        .await
        .public_ipv4
        .expect("moto maps a public address");
    let answer = bind.a_until(&name, EVENTUALLY, |a| a.a == [expected]).await;
    assert_eq!(
        answer.a,
        [expected],
        "{name} is restored by the full reconcile"
    );
}

/// A name put in the zone by hand, without muster's ownership record, is
/// left as it is and reported as a conflict; the other names are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_made_record_is_left_alone() {
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    let mut scene = Scene::new(&["--dns-reconcile-interval", "2s"], async |bind: &Bind| {
        bind.nsupdate(&[&format!("update add {round_robin}. 300 A {HAND_MADE}")])
            .await;
    })
    .await;
    let id = scene.add_node().await;
    let public = ec2::describe(&scene.ec2, &id)
        .await
        .public_ipv4
        .expect("moto maps a public address");
    let bind = scene.bind.resolver();
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let answer = bind.a_until(&name, EVENTUALLY, |a| a.a == [public]).await;
    assert_eq!(answer.a, [public], "muster's own names are written");

    let status = scene
        .dns_status_until(|s| s["conflicts"].get(format!("{round_robin}.")).is_some())
        .await;
    let why = status["conflicts"][format!("{round_robin}.")]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("ownership"), "the conflict says why: {status}");
    let metrics = scene.metrics().await;
    assert!(
        metrics.contains("muster_dns_conflicts{provider=\"rfc2136\"} 1"),
        "{metrics}"
    );

    // Several full reconciles later, the hand-made record is unchanged.
    let passes = wait_until(
        EVENTUALLY,
        POLL,
        || scene.dns_status(),
        |s| {
            s["last_full_reconcile_unix"]
                .as_u64()
                .zip(status["last_success_unix"].as_u64())
                .is_some_and(|(full, first)| full > first + 2)
        },
    )
    .await;
    assert!(passes["last_full_reconcile_unix"].is_u64(), "{passes}");
    let answer = bind.a(&round_robin).await.expect("asking BIND");
    assert_eq!(
        answer.a,
        [HAND_MADE],
        "{round_robin} is left as it was made"
    );
}

/// A coordinator told to use rfc2136 without a TSIG key refuses to start and
/// says which setting is missing; one with the wrong secret starts, writes
/// nothing, and says the server refused its signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_wrong_key_fails_clearly() {
    let moto = Moto::start().await;
    let bind = Bind::start(ZONE).await;

    let data_dir = tempfile::tempdir().expect("a data dir");
    let api = loopback(free_tcp_port()).to_string();
    let dns = loopback(free_udp_tcp_port()).to_string();
    let server = bind.addr().to_string();
    let child = tokio::process::Command::new(bin_path("muster-coordinator"))
        .args([
            "serve",
            "--listen",
            &api,
            "--dns-listen",
            &dns,
            "--zone",
            ZONE,
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--dns-provider", "rfc2136", "--rfc2136-server", &server])
        .env("AWS_ENDPOINT_URL", moto.endpoint())
        .env("MUSTER_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(EVENTUALLY, child)
        .await
        .expect("an unsigned setup exits at once")
        .expect("running muster-coordinator");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("tsig_key_name") && stderr.contains("is needed"),
        "the error names the missing key: {stderr}"
    );

    let secrets = tempfile::tempdir().expect("a directory for the TSIG secret");
    let wrong = Bind::write_secret_file(secrets.path(), &bind::random_secret());
    let mut args = bind.coordinator_args(secrets.path());
    let at = args
        .iter()
        .position(|a| a == "--tsig-secret-file")
        .expect("the flags name a secret file");
    args[at + 1] = wrong.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let coordinator = Coordinator::start_with(&moto, &args).await;
    let created = coordinator.create_cluster(CLUSTER).await;
    let ec2 = ec2::client(&moto.endpoint()).await;
    let id = ec2::launch_instance(&ec2, CLUSTER).await;
    let imds = Imds::start(ec2.clone(), &id).await;
    let _agent = Agent::start(&coordinator, &imds, CLUSTER, &created.join_token);
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| n.len() == 1 && n[0].state == NodeState::Deployed,
    )
    .await;
    assert_eq!(nodes.len(), 1, "{nodes:#?}");

    let client = coordinator.https_client();
    let status: serde_json::Value = wait_until(
        EVENTUALLY,
        POLL,
        || async {
            client
                .get(format!("{}/v1/dns/status", coordinator.url()))
                .bearer_auth(coordinator.admin_token())
                .send()
                .await
                .expect("GET /v1/dns/status")
                .json::<serde_json::Value>()
                .await
                .expect("the status is JSON")
        },
        |s| s["last_error"].is_string(),
    )
    .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("refused the TSIG signature") && error.contains(bind::KEY_NAME),
        "the error says the key was refused: {status}"
    );
    assert!(status["pending_changes"].as_u64() > Some(0), "{status}");
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let answer = bind.resolver().a(&name).await.expect("asking BIND");
    assert!(answer.is_nxdomain(), "nothing was written: {answer:?}");
}

/// BIND goes down; three nodes change address; the changes wait, visible on
/// the status page and in the metrics; BIND comes back and all three answer
/// their new addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_loses_nothing() {
    let mut scene = Scene::new(&[], async |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(scene.add_node().await);
    }
    let bind = scene.bind.resolver();
    for id in &ids {
        let public = ec2::describe(&scene.ec2, id).await.public_ipv4;
        let name = node_dns_name(id, CLUSTER, ZONE);
        let answer = bind
            .a_until(&name, EVENTUALLY, |a| {
                Some(a.a.as_slice()) == public.as_ref().map(std::slice::from_ref)
            })
            .await;
        assert_eq!(
            Some(answer.a.as_slice()),
            public.as_ref().map(std::slice::from_ref),
            "{name}"
        );
    }

    scene.bind.stop();
    let mut moved = Vec::new();
    for id in &ids {
        moved.push(ec2::associate_new_eip(&scene.ec2, id).await);
    }
    for (id, eip) in ids.iter().zip(&moved) {
        let detail = wait_until(
            EVENTUALLY,
            POLL,
            || scene.coordinator.node(CLUSTER, id),
            |d| d.node.public_ipv4 == Some(*eip),
        )
        .await;
        assert_eq!(
            detail.node.public_ipv4,
            Some(*eip),
            "the coordinator saw {id} move"
        );
    }
    let status = scene
        .dns_status_until(|s| {
            s["pending_changes"].as_u64() >= Some(3) && s["last_error"].is_string()
        })
        .await;
    assert!(
        status["pending_changes"].as_u64() >= Some(3),
        "the moves wait while BIND is down: {status}"
    );
    assert!(status["last_error"].is_string(), "{status}");
    let metrics = scene.metrics().await;
    let pending_line = metrics
        .lines()
        .find(|l| l.starts_with("muster_dns_pending_changes{"))
        .unwrap_or_default();
    assert!(
        pending_line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            >= Some(3),
        "the backlog is in the metrics: {metrics}"
    );

    scene.bind.start_again().await;
    for (id, eip) in ids.iter().zip(&moved) {
        let name = node_dns_name(id, CLUSTER, ZONE);
        let answer = bind.a_until(&name, AFTER_OUTAGE, |a| a.a == [*eip]).await;
        assert_eq!(answer.a, [*eip], "{name} answers its new address");
    }
    let mut expected = moved.clone();
    expected.sort();
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    let answer = bind
        .a_until(&round_robin, AFTER_OUTAGE, |a| a.a == expected)
        .await;
    assert_eq!(answer.a, expected, "{round_robin} holds the new addresses");
    let status = scene
        .dns_status_until(|s| s["pending_changes"] == 0 && s["last_error"].is_null())
        .await;
    assert_eq!(status["pending_changes"], 0, "{status}");
}

/// The coordinator killed (SIGKILL) while its changes hang on a BIND that
/// accepts and does not answer (frozen with SIGSTOP): started again, with
/// BIND back, it finishes the reconcile, and the zone ends exactly as
/// desired: every node at its new address, the round robins whole, every
/// internal name in place, nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_reconcile_is_finished_after_restart() {
    let mut scene = Scene::new(&[], async |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(scene.add_node().await);
    }
    let bind = scene.bind.resolver();
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    // Per node its name, wildcard and internal name; the two round robins.
    let status = scene
        .dns_status_until(|s| s["pending_changes"] == 0 && s["applied_names"] == 11)
        .await;
    assert_eq!(status["applied_names"], 11, "{status}");

    scene.bind.pause();
    let mut moved = Vec::new();
    for id in &ids {
        moved.push(ec2::associate_new_eip(&scene.ec2, id).await);
    }
    let status = scene
        .dns_status_until(|s| s["pending_changes"].as_u64() >= Some(1))
        .await;
    assert!(status["pending_changes"].as_u64() >= Some(1), "{status}");
    scene.coordinator.kill();
    scene.bind.resume();
    scene.coordinator.restart().await;

    for (id, eip) in ids.iter().zip(&moved) {
        let name = node_dns_name(id, CLUSTER, ZONE);
        let answer = bind.a_until(&name, AFTER_OUTAGE, |a| a.a == [*eip]).await;
        assert_eq!(answer.a, [*eip], "{name}");
        let app = format!("app.{name}");
        let answer = bind.a(&app).await.unwrap();
        assert_eq!(answer.a, [*eip], "{app} follows its node");
        let private = ec2::describe(&scene.ec2, id).await.private_ipv4.unwrap();
        let internal = node_internal_dns_name(id, CLUSTER, ZONE);
        assert_eq!(bind.a(&internal).await.unwrap().a, [private], "{internal}");
    }
    let mut expected = moved.clone();
    expected.sort();
    let answer = bind
        .a_until(&round_robin, AFTER_OUTAGE, |a| a.a == expected)
        .await;
    assert_eq!(answer.a, expected, "{round_robin}");
    let status = scene
        .dns_status_until(|s| s["pending_changes"] == 0 && s["last_error"].is_null())
        .await;
    assert_eq!(status["pending_changes"], 0, "{status}");
    assert_eq!(status["conflicts"], serde_json::json!({}), "{status}");
}

/// How many operations BIND's log says each name's updates carried out
/// (`updating zone '…': adding an RR at 'NAME' …`, `deleting rrset at …`).
fn bind_updates(logs: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in logs.lines().filter(|l| l.contains("updating zone")) {
        if let Some(name) = line
            .split(" at '")
            .nth(1)
            .and_then(|r| r.split('\'').next())
        {
            *counts.entry(name.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// A coordinator stopped and started again on the same data dir sends BIND
/// only the difference: a node that moved while it was down gets its new
/// address (found by the EC2 sweep), and BIND's own log shows that no other
/// name was touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_applies_only_the_difference() {
    let mut scene = Scene::new(&["--sweep-interval", "1s"], async |_| {}).await;
    let moving = scene.add_node().await;
    let staying = scene.add_node().await;
    let bind = scene.bind.resolver();
    let mut publics = Vec::new();
    for id in [&moving, &staying] {
        let public = ec2::describe(&scene.ec2, id)
            .await
            .public_ipv4
            .expect("moto maps a public address");
        publics.push(public);
        let name = node_dns_name(id, CLUSTER, ZONE);
        let answer = bind.a_until(&name, EVENTUALLY, |a| a.a == [public]).await;
        assert_eq!(answer.a, [public], "{name}");
    }
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    publics.sort();
    let answer = bind
        .a_until(&round_robin, EVENTUALLY, |a| a.a == publics)
        .await;
    assert_eq!(answer.a, publics, "{round_robin}");
    // Per node its name, wildcard and internal name; the cluster's public
    // and internal round robins.
    let status = scene
        .dns_status_until(|s| s["pending_changes"] == 0 && s["applied_names"] == 8)
        .await;
    assert_eq!(status["applied_names"], 8, "{status}");

    scene.coordinator.stop();
    let before = bind_updates(&scene.bind.logs());
    let eip = ec2::associate_new_eip(&scene.ec2, &moving).await;
    scene.coordinator.restart().await;

    let name = node_dns_name(&moving, CLUSTER, ZONE);
    let answer = bind.a_until(&name, EVENTUALLY, |a| a.a == [eip]).await;
    assert_eq!(answer.a, [eip], "{name} follows the move made while down");
    let staying_public = ec2::describe(&scene.ec2, &staying).await.public_ipv4;
    let mut expected: Vec<Ipv4Addr> = [Some(eip), staying_public].into_iter().flatten().collect();
    expected.sort();
    let answer = bind
        .a_until(&round_robin, EVENTUALLY, |a| a.a == expected)
        .await;
    assert_eq!(answer.a, expected, "{round_robin}");
    let status = scene
        .dns_status_until(|s| s["pending_changes"] == 0 && s["applied_total"] == 2)
        .await;
    assert_eq!(
        status["applied_total"], 2,
        "the restarted coordinator applied two changes: {status}"
    );

    let after = bind_updates(&scene.bind.logs());
    let touched: Vec<&String> = after
        .iter()
        .filter(|(name, count)| before.get(*name) != Some(count))
        .map(|(name, _)| name)
        .collect();
    let mut expected = vec![&round_robin, &name];
    expected.sort();
    assert_eq!(
        touched, expected,
        "BIND updated only the moved name and the round robin after the restart"
    );
}

/// A node's name whose ownership record was deleted by hand is not deleted
/// when the node goes: it is reported as a conflict, and the node's other
/// names go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_unowned_name_is_a_conflict() {
    let mut scene = Scene::new(&["--sweep-interval", "1s"], async |_| {}).await;
    let id = scene.add_node().await;
    let public = ec2::describe(&scene.ec2, &id)
        .await
        .public_ipv4
        .expect("moto maps a public address");
    let bind = scene.bind.resolver();
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let internal = node_internal_dns_name(&id, CLUSTER, ZONE);
    let answer = bind.a_until(&name, EVENTUALLY, |a| a.a == [public]).await;
    assert_eq!(answer.a, [public], "{name}");
    let answer = bind
        .a_until(&internal, EVENTUALLY, |a| !a.a.is_empty())
        .await;
    assert!(!answer.a.is_empty(), "{internal}");

    // An operator takes the name over: its ownership record goes.
    scene
        .bind
        .nsupdate(&[&format!("update delete _muster.{name}. TXT")])
        .await;
    let output = scene.coordinator.admin(&["node", "rm", CLUSTER, &id]).await;
    assert!(
        output.status.success(),
        "node rm: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = scene
        .dns_status_until(|s| s["conflicts"].get(format!("{name}.")).is_some())
        .await;
    let why = status["conflicts"][format!("{name}.")]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("deleted") && why.contains("ownership"),
        "the refused delete is a conflict: {status}"
    );
    let answer = bind
        .a_until(&internal, EVENTUALLY, |a| a.is_nxdomain())
        .await;
    assert!(
        answer.is_nxdomain(),
        "the node's other names go: {answer:?}"
    );
    let answer = bind.a(&name).await.expect("asking BIND");
    assert_eq!(answer.a, [public], "{name} is left as the operator has it");
}
