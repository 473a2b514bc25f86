//! Every token is listed and revocable, a bring-your-own token is capped,
//! and a removed bring-your-own machine stays removed.
//!
//! - A launched cluster with a bring-your-own token and a user data token
//!   lists four tokens (`join`, `launch`, `byon`, `userdata`) with their
//!   uses and never a secret; each admits a register, and once revoked is
//!   refused at once.
//! - A bring-your-own token capped at two nodes: two real agents join, a
//!   third is refused; `node rm` of one while its agent runs keeps it out
//!   (banned), and `cluster admit` lets it back.

use std::net::Ipv4Addr;

use muster_proto::{
    byon_node_id, CreateClusterResponse, NodeState, RegisterRequest, TokenView, UserDataResponse,
};
use muster_tests::ec2;
use muster_tests::{wait_until, Agent, Coordinator, Moto, EVENTUALLY, POLL};
use reqwest::StatusCode;

const CLUSTER: &str = "web";

/// `cluster tokens web --json`, with the text printed beside it.
async fn tokens(coordinator: &Coordinator) -> (Vec<TokenView>, String) {
    let output = coordinator
        .admin(&["cluster", "tokens", CLUSTER, "--json"])
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let parsed = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (parsed, text)
}

/// The listed token of `kind`.
fn of_kind<'a>(tokens: &'a [TokenView], kind: &str) -> &'a TokenView {
    tokens
        .iter()
        .find(|t| t.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} token in {tokens:?}"))
}

/// A bring-your-own register for machine `machine` named `name`.
fn byon_request(machine: &str, name: &str) -> RegisterRequest {
    let private = Ipv4Addr::new(198, 51, 100, 30);
    muster_tests::byon_register(CLUSTER, machine, name, private, None)
}

/// Every kind of token is listed without its secret, counts its uses,
/// and is refused at once once revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_is_listed_and_revocable() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let created = coordinator
        .launch_cluster(CLUSTER, 1, 30, &["--byon"])
        .await;
    let launched = created.launch.expect("a launch").launched[0].clone();
    let (_, settings) = ec2::cloud_config(&sdk, &launched).await;
    let launch_token = settings["join_token"]
        .as_str()
        .expect("a launch token")
        .to_owned();
    let byon_token = created.byon_token.expect("a bring-your-own token");
    let user_data: UserDataResponse = coordinator.admin_json(&["userdata", CLUSTER]).await;

    let (listed, text) = tokens(&coordinator).await;
    let mut kinds: Vec<&str> = listed.iter().map(|t| t.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["byon", "join", "launch", "userdata"], "{text}");
    assert!(!text.contains("mjoin_"), "a secret is listed: {text}");
    assert_eq!(of_kind(&listed, "join").id, "join");
    assert_eq!(
        of_kind(&listed, "byon").max_nodes,
        Some(10),
        "the default cap"
    );

    // Each admits a register.
    let joined = ec2::launch_instance(&sdk, CLUSTER).await;
    let by_userdata = ec2::launch_instance(&sdk, CLUSTER).await;
    let uses = [
        (
            created.join_token.clone(),
            ec2::register_request(&sdk, &joined, CLUSTER).await,
        ),
        (
            user_data.join_token.clone(),
            ec2::register_request(&sdk, &by_userdata, CLUSTER).await,
        ),
        (
            launch_token.clone(),
            ec2::register_request(&sdk, &launched, CLUSTER).await,
        ),
        (
            byon_token.clone(),
            byon_request("00000000000000000000000000000001", "rack1"),
        ),
    ];
    for (token, req) in &uses {
        let (status, body) = coordinator.register_raw(token, req).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", req.instance_id);
    }
    let (listed, text) = tokens(&coordinator).await;
    assert!(listed.iter().all(|t| t.uses == 1), "{text}");
    assert_eq!(of_kind(&listed, "byon").nodes, Some(1), "{text}");

    // Revoked, each is refused at once, for a machine it never admitted.
    let fresh = [
        ec2::register_request(&sdk, &ec2::launch_instance(&sdk, CLUSTER).await, CLUSTER).await,
        ec2::register_request(&sdk, &ec2::launch_instance(&sdk, CLUSTER).await, CLUSTER).await,
        ec2::register_request(&sdk, &launched, CLUSTER).await,
        byon_request("00000000000000000000000000000002", "rack2"),
    ];
    for ((token, _), (kind, req)) in uses.iter().zip(
        ["join", "userdata", "launch", "byon"]
            .into_iter()
            .zip(fresh),
    ) {
        let id = of_kind(&listed, kind).id.clone();
        let revoked: TokenView = coordinator
            .admin_json(&["cluster", "revoke-token", CLUSTER, &id])
            .await;
        assert_eq!(revoked.kind, kind);
        let (status, body) = coordinator.register_raw(token, &req).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{kind} after revoking: {body}"
        );
    }
    let (listed, text) = tokens(&coordinator).await;
    assert_eq!(
        listed.len(),
        1,
        "only the expired join token is left: {text}"
    );
    assert!(listed[0].expires_at.is_some(), "{text}");
    let output = coordinator
        .admin(&["cluster", "revoke-token", CLUSTER, "t99"])
        .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not_found"));
}

/// Waits until `agent`'s log says `needle`; the log.
async fn logged(agent: &Agent, needle: &str) -> String {
    let logs = wait_until(
        EVENTUALLY,
        POLL,
        || std::future::ready(agent.logs()),
        |l| l.contains(needle),
    )
    .await;
    assert!(logs.contains(needle), "no {needle:?} in:\n{logs}");
    logs
}

/// Whether node `name` is deployed, waiting for it to be.
async fn deployed(coordinator: &Coordinator, name: &str) -> bool {
    wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |nodes| {
            nodes
                .iter()
                .any(|n| n.name == name && n.state == NodeState::Deployed)
        },
    )
    .await
    .iter()
    .any(|n| n.name == name && n.state == NodeState::Deployed)
}

/// A bring-your-own token capped at two: a third machine is refused; a
/// machine removed while its agent runs stays out until admitted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byon_token_is_capped_and_a_removed_machine_stays_out() {
    let moto = Moto::start().await;
    let coordinator = Coordinator::start(&moto).await;
    let created: CreateClusterResponse = coordinator
        .admin_json(&[
            "cluster",
            "create",
            CLUSTER,
            "--byon",
            "--byon-max-nodes",
            "2",
        ])
        .await;
    let token = created.byon_token.expect("a bring-your-own token");
    let machine = |n: u8| format!("{n:032x}");
    let byon = |n: u8| {
        Agent::start_byon(
            &coordinator,
            CLUSTER,
            &token,
            &machine(n),
            &format!("rack{n}"),
            Ipv4Addr::new(198, 51, 100, n),
        )
    };
    let a = byon(1);
    let b = byon(2);
    assert!(deployed(&coordinator, "rack1").await, "{}", a.logs());
    assert!(deployed(&coordinator, "rack2").await, "{}", b.logs());
    let mut c = byon(3);
    logged(&c, "has created the 2 nodes it may").await;
    c.stop();
    let (listed, text) = tokens(&coordinator).await;
    let capped = of_kind(&listed, "byon");
    assert_eq!(
        (capped.nodes, capped.max_nodes),
        (Some(2), Some(2)),
        "{text}"
    );
    assert_eq!(coordinator.nodes(CLUSTER).await.len(), 2);

    // Removed while its agent runs: it stays removed.
    let output = coordinator.admin(&["node", "rm", CLUSTER, "rack1"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    logged(&a, "was removed from cluster").await;
    assert!(
        coordinator
            .nodes(CLUSTER)
            .await
            .iter()
            .all(|n| n.name != "rack1"),
        "the removed machine came back"
    );

    // Admitted again, it joins by itself.
    let id = byon_node_id(&machine(1));
    let output = coordinator.admin(&["cluster", "admit", CLUSTER, &id]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(deployed(&coordinator, "rack1").await, "{}", a.logs());
}
