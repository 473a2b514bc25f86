//! Trust stories: only a real instance speaks for itself, and hostile input
//! changes nothing.
//!
//! - Spoofed claims (another instance's id, another cluster's instance, a
//!   terminated one, an address it does not have, a stolen credential) are
//!   refused with their own code, each is a security event in the logs and
//!   in `/metrics`, and the store and DNS are as they were.
//! - With default flags, the join token and a live sibling's true claim
//!   without the sibling's signed identity document do not take the
//!   sibling over (`identity_unproven`); with the document, a wiped node
//!   gets back in. With the check turned off, the takeover rule holds
//!   (`node_live`) until the sibling has been silent for the grace.
//! - With `--verify-source`, agents run in network namespaces of the test's
//!   own, so that source addresses are real: the true instance joins, and a
//!   join token replayed for it from another address is refused.
//! - By default a register must carry its instance identity document
//!   signed by AWS (here: the emulator's key, added with `--identity-certs`
//!   as the harness does for every coordinator): one signed by another
//!   key, one naming another instance, a tampered one and none at all are
//!   refused.
//! - The agent pins the coordinator's CA and fails closed on another; a
//!   coordinator serving an operator's certificate works with an agent on
//!   the system's roots.
//! - Hostile HTTP gets a 4xx or a closed connection, never a 5xx, and the
//!   coordinator keeps serving others meanwhile.
//! - Admin requests without the admin token learn nothing: the same 401
//!   whatever the body, and whether the cluster exists or not.

#[path = "../../agent/tests/netns/mod.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use muster_proto::{
    node_dns_name, node_internal_dns_name, paths, ErrorBody, HeartbeatRequest, NodeState, NodeView,
    RegisterRequest, MAX_BODY_BYTES, PROTOCOL_VERSION,
};
use muster_tests::ec2::{self, NOT_OURS};
use muster_tests::{
    wait_until, Agent, Coordinator, IdentitySigner, Imds, Moto, EVENTUALLY, POLL, ZONE,
};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const CLUSTER: &str = "web";

/// `node ls` of the cluster, polled until it shows one deployed node;
/// the last listing either way.
async fn one_deployed(coordinator: &Coordinator) -> Vec<NodeView> {
    wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| n.len() == 1 && n[0].state == NodeState::Deployed,
    )
    .await
}

/// The node credential `agent` keeps, once it has written it (the node
/// shows as deployed as soon as the coordinator stored it, a moment
/// before the agent has saved the answer).
async fn kept_credential(agent: &Agent) -> String {
    wait_until(
        EVENTUALLY,
        POLL,
        || async { agent.node_credential() },
        Option::is_some,
    )
    .await
    .unwrap_or_else(|| panic!("the agent kept no credential:\n{}", agent.logs()))
}

/// A register body for `id` as EC2 describes it, with `public` (and
/// `private`, when given) claimed, carrying an identity document signed
/// for exactly what it claims: as if its sender held the signing key, so
/// that what EC2 says must refuse a lie on its own.
async fn register_body(
    sdk: &aws_sdk_ec2::Client,
    id: &str,
    private: Option<Ipv4Addr>,
    public: Option<Ipv4Addr>,
) -> RegisterRequest {
    let view = ec2::describe(sdk, id).await;
    ec2::signed(RegisterRequest {
        protocol: PROTOCOL_VERSION,
        cluster: CLUSTER.to_owned(),
        instance_id: id.to_owned(),
        availability_zone: view.availability_zone,
        region: ec2::TEST_REGION.to_owned(),
        private_ipv4: Some(
            private
                .or(view.private_ipv4)
                .expect("moto gives a private address"),
        ),
        public_ipv4: public,
        agent_version: "0.0.0-test".to_owned(),
        byon: None,
        signed_identity: None,
        ipv6: None,
    })
}

fn heartbeat_body(id: &str, private: Ipv4Addr, public: Option<Ipv4Addr>) -> HeartbeatRequest {
    HeartbeatRequest {
        instance_id: id.to_owned(),
        private_ipv4: Some(private),
        public_ipv4: public,
        facts: muster_tests::host_facts(),
        checks: Vec::new(),
        notices: Vec::new(),
        leaving: None,
        agent_version: None,
        ipv6: None,
    }
}

/// POSTs `body` (raw bytes) to `path` with `bearer`; status and body text.
async fn post_raw(
    coordinator: &Coordinator,
    path: &str,
    bearer: &str,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let url = format!("{}{path}", coordinator.url());
    let response = coordinator
        .https_client()
        .post(&url)
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

async fn post_json(
    coordinator: &Coordinator,
    path: &str,
    bearer: &str,
    body: &impl serde::Serialize,
) -> (StatusCode, String) {
    post_raw(coordinator, path, bearer, serde_json::to_vec(body).unwrap()).await
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).expect("a request body is JSON")
}

/// The error code of an answer, insisting on the JSON error shape.
fn code_of(body: &str) -> String {
    let parsed: ErrorBody =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error body ({e}): {body}"));
    parsed.error.code.to_string()
}

/// What must not move: every node's identity, state and addresses (not
/// its last-heard time), and DNS's answers for the names involved.
async fn snapshot(coordinator: &Coordinator, names: &[String]) -> String {
    let nodes: Vec<NodeView> = coordinator.admin_json(&["node", "ls"]).await;
    let mut out: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "{} {} {} {} {:?} {:?}",
                n.cluster, n.name, n.instance_id, n.state, n.private_ipv4, n.public_ipv4
            )
        })
        .collect();
    let resolver = coordinator.resolver();
    for name in names {
        let answer = resolver
            .a(name)
            .await
            .expect("the coordinator's DNS answers");
        out.push(format!("{name} {answer:?}"));
    }
    out.join("\n")
}

/// Spoofed claims are refused with their own code, counted and logged as
/// security events with the claimed and actual values, and change neither
/// the store nor DNS. Each carries a document signed for what it claims
/// ([`register_body`]): the EC2 check refuses them even past the identity
/// check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_claims_are_refused_and_change_nothing() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    coordinator.create_cluster("api").await;

    // A: a member registered by its own agent.
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &a).await;
    let mut agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    let nodes = one_deployed(&coordinator).await;
    assert_eq!(nodes[0].state, NodeState::Deployed, "{nodes:#?}");
    let credential = kept_credential(&agent).await;
    // Its agent stops, so that nothing but the attacks talks to the
    // coordinator from here on.
    agent.stop();
    let a_view = ec2::describe(&sdk, &a).await;
    let a_private = a_view.private_ipv4.unwrap();
    let a_public = a_view.public_ipv4.expect("moto maps a public address");

    // B: a member that has not joined; C: another cluster's; D: terminated.
    let b = ec2::launch_instance(&sdk, CLUSTER).await;
    let c = ec2::launch_instance(&sdk, "api").await;
    let d = ec2::launch_instance(&sdk, CLUSTER).await;
    ec2::terminate(&sdk, &d).await;
    let b_view = ec2::describe(&sdk, &b).await;

    let mut names = Vec::new();
    for id in [&a, &b, &c, &d] {
        names.push(node_dns_name(id, CLUSTER, ZONE));
        names.push(node_internal_dns_name(id, CLUSTER, ZONE));
    }
    let before = snapshot(&coordinator, &names).await;
    assert!(before.contains(&a_public.to_string()), "{before}");

    struct Case {
        what: &'static str,
        path: &'static str,
        bearer: String,
        body: serde_json::Value,
        code: &'static str,
        /// What the security event must name: claimed and actual values.
        logged: Vec<String>,
    }
    let cases = vec![
        Case {
            what: "another member's id, claiming this machine's addresses",
            path: paths::AGENT_REGISTER,
            bearer: token.clone(),
            body: json(&register_body(&sdk, &b, Some(a_private), Some(a_public)).await),
            code: "address_mismatch",
            logged: vec![
                a_private.to_string(),
                b_view.private_ipv4.unwrap().to_string(),
            ],
        },
        Case {
            what: "an instance of another cluster",
            path: paths::AGENT_REGISTER,
            bearer: token.clone(),
            body: json(
                &register_body(&sdk, &c, None, ec2::describe(&sdk, &c).await.public_ipv4).await,
            ),
            code: "cluster_tag_mismatch",
            logged: vec![c.clone(), "muster:cluster=api".into()],
        },
        Case {
            what: "a terminated instance",
            path: paths::AGENT_REGISTER,
            bearer: token.clone(),
            body: json(&register_body(&sdk, &d, None, None).await),
            code: "instance_not_running",
            logged: vec![d.clone(), "terminated".into()],
        },
        Case {
            what: "an address the instance does not have",
            path: paths::AGENT_REGISTER,
            bearer: token.clone(),
            body: json(&register_body(&sdk, &a, None, Some(NOT_OURS)).await),
            code: "address_mismatch",
            logged: vec![NOT_OURS.to_string(), a_public.to_string()],
        },
        Case {
            what: "an instance EC2 does not know",
            path: paths::AGENT_REGISTER,
            bearer: token.clone(),
            body: json(&{
                let mut body = register_body(&sdk, &a, None, Some(a_public)).await;
                body.instance_id = "i-0fedcba9876543210".into();
                ec2::signed(body)
            }),
            code: "instance_not_found",
            logged: vec!["i-0fedcba9876543210".into()],
        },
        Case {
            what: "a stolen node credential registering another instance",
            path: paths::AGENT_REGISTER,
            bearer: credential.clone(),
            body: json(&register_body(&sdk, &b, None, b_view.public_ipv4).await),
            code: "credential_mismatch",
            logged: vec![a.clone(), b.clone()],
        },
        Case {
            what: "a stolen node credential heartbeating for another instance",
            path: paths::AGENT_HEARTBEAT,
            bearer: credential.clone(),
            body: json(&heartbeat_body(
                &b,
                b_view.private_ipv4.unwrap(),
                b_view.public_ipv4,
            )),
            code: "credential_mismatch",
            logged: vec![a.clone(), b.clone()],
        },
    ];

    let events_before = coordinator.metrics().await;
    for case in &cases {
        let (status, body) = post_json(&coordinator, case.path, &case.bearer, &case.body).await;
        assert!(
            status.is_client_error(),
            "{}: {status} is not a 4xx: {body}",
            case.what
        );
        assert_eq!(code_of(&body), case.code, "{}: {body}", case.what);
    }
    // A private range claimed as public is bad input, not a lie EC2 must
    // judge: refused before EC2 is asked.
    let private_as_public =
        register_body(&sdk, &a, None, Some(Ipv4Addr::new(10, 20, 30, 40))).await;
    let (status, body) = post_json(
        &coordinator,
        paths::AGENT_REGISTER,
        &token,
        &private_as_public,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("not a public range"), "{body}");

    // Every spoof is a security event: counted by code, and logged with
    // what was claimed and what is true.
    let mut expected = std::collections::BTreeMap::<&str, u64>::new();
    for case in &cases {
        *expected.entry(case.code).or_default() += 1;
    }
    for (code, n) in expected {
        let sample = format!("muster_security_events_total{{code=\"{code}\"}}");
        let was = events_before
            .lines()
            .find_map(|l| l.strip_prefix(sample.as_str())?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert_eq!(coordinator.metric(&sample).await, was + n, "{sample}");
    }
    let logs = coordinator.logs();
    let events: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("security event"))
        .collect();
    for case in &cases {
        assert!(
            events.iter().any(|line| line.contains(case.code)
                && case.logged.iter().all(|v| line.contains(v.as_str()))),
            "{}: no security event naming {:?} with {}:\n{}",
            case.what,
            case.logged,
            case.code,
            events.join("\n")
        );
    }

    // Nothing moved.
    let after = snapshot(&coordinator, &names).await;
    assert_eq!(before, after);
}

/// By default, only a register carrying its own identity document, signed
/// by a trusted certificate (AWS's, and here the emulator's the harness
/// adds), gets in. Agents whose IMDS
/// signs with another key, serves another instance's document or serves
/// none are refused with `identity_unproven`, each a security event naming
/// what was claimed and what was signed; so is a document edited after
/// signing. None of it changes the store or DNS, and an agent whose IMDS
/// starts serving the signed document joins on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_documents_are_required_and_checked() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;

    // A: an honest member, whose IMDS signs as AWS does here.
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let a_imds = Imds::start(sdk.clone(), &a).await;
    let mut a_agent = Agent::start(&coordinator, &a_imds, CLUSTER, &token);
    let nodes = one_deployed(&coordinator).await;
    assert_eq!(nodes[0].instance_id, a, "{}", a_agent.logs());
    kept_credential(&a_agent).await;
    a_agent.stop();

    // B signs with a key of its own, C serves A's (really signed)
    // document, D serves none.
    let b = ec2::launch_instance(&sdk, CLUSTER).await;
    let c = ec2::launch_instance(&sdk, CLUSTER).await;
    let d = ec2::launch_instance(&sdk, CLUSTER).await;
    let mut names = Vec::new();
    for id in [&a, &b, &c, &d] {
        names.push(node_dns_name(id, CLUSTER, ZONE));
        names.push(node_internal_dns_name(id, CLUSTER, ZONE));
    }
    let before = snapshot(&coordinator, &names).await;
    let b_imds = Imds::start(sdk.clone(), &b).await;
    b_imds.set_identity_signer(Some(Arc::new(IdentitySigner::generate())));
    let c_imds = Imds::start(sdk.clone(), &c).await;
    c_imds.set_identity_of(Some(&a));
    let d_imds = Imds::start(sdk.clone(), &d).await;
    d_imds.set_identity_signer(None);
    let attackers = [
        ("signed by another key", &b, &b_imds, "does not verify"),
        ("another instance's document", &c, &c_imds, "instanceId"),
        ("no document", &d, &d_imds, "no signed identity document"),
    ];
    let mut agents = Vec::new();
    for (what, id, imds, reason) in attackers {
        let agent = Agent::start(&coordinator, imds, CLUSTER, &token);
        let status = status_until(&agent, "identity_unproven").await;
        assert!(
            status.contains("identity_unproven") && status.contains(reason),
            "{what}: {status}\n{}",
            agent.logs()
        );
        agents.push((what, id, agent));
    }

    // A's document, edited after signing to name B's address.
    let b_private = ec2::describe(&sdk, &b).await.private_ipv4.unwrap();
    let a_private = ec2::describe(&sdk, &a).await.private_ipv4.unwrap();
    let signer = IdentitySigner::shared();
    let a_document = {
        let body = register_body(&sdk, &a, None, None).await;
        serde_json::to_string_pretty(&serde_json::json!({
            "availabilityZone": body.availability_zone,
            "instanceId": a,
            "privateIp": a_private.to_string(),
            "region": body.region,
        }))
        .unwrap()
    };
    let mut tampered = register_body(&sdk, &b, None, None).await;
    tampered.signed_identity = Some(muster_proto::SignedIdentity {
        pkcs7: signer.sign(&a_document),
        document: a_document
            .replace(&a, &b)
            .replace(&a_private.to_string(), &b_private.to_string()),
    });
    let (status, body) = post_json(&coordinator, paths::AGENT_REGISTER, &token, &tampered).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code_of(&body), "identity_unproven", "{body}");
    assert!(body.contains("does not verify"), "{body}");

    // Each is a security event naming what was claimed and what was signed.
    assert!(
        coordinator
            .metric("muster_security_events_total{code=\"identity_unproven\"}")
            .await
            >= 4
    );
    let logs = coordinator.logs();
    let events: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("security event") && l.contains("identity_unproven"))
        .collect();
    for (what, id, _) in &agents {
        assert!(
            events.iter().any(|l| l.contains(id.as_str())),
            "{what}: no security event names {id}:\n{}",
            events.join("\n")
        );
    }
    assert!(
        events.iter().any(|l| l.contains(&c) && l.contains(&a)),
        "the event for C names the instance it claimed and the one signed:\n{}",
        events.join("\n")
    );
    assert_eq!(before, snapshot(&coordinator, &names).await);

    // D's IMDS starts serving its signed document: D joins on its own.
    d_imds.set_identity_signer(Some(IdentitySigner::shared()));
    let joined = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| {
            n.iter()
                .any(|n| n.instance_id == d && n.state == NodeState::Deployed)
        },
    )
    .await;
    assert!(
        joined.iter().any(|n| n.instance_id == d),
        "{joined:#?}\n{}",
        agents[2].2.logs()
    );
    assert!(!joined
        .iter()
        .any(|n| n.instance_id == b || n.instance_id == c));
}

/// The host side of the namespaces' links: one address, on every veth.
const HOST_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 77, 1);

/// Links `ns` to the host with a veth pair: the namespace's end holds
/// `address` (the instance's private address, so its requests really come
/// from there), the host's end [`HOST_SIDE`]; each side routes to the
/// other.
fn link(ns: &netns::Netns, index: usize, address: Ipv4Addr) -> HostLink {
    let host_end = format!("mtv{}h{index}", std::process::id() % 100_000);
    let ns_end = format!("mtv{}n{index}", std::process::id() % 100_000);
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
    ]);
    let link = HostLink {
        name: host_end.clone(),
    };
    ip(&["link", "set", &ns_end, "netns", ns.name()]);
    ip(&["addr", "add", &format!("{HOST_SIDE}/32"), "dev", &host_end]);
    ip(&["link", "set", &host_end, "up"]);
    ip(&["route", "add", &format!("{address}/32"), "dev", &host_end]);
    ns.ip(&["addr", "add", &format!("{address}/32"), "dev", &ns_end]);
    ns.ip(&["link", "set", &ns_end, "up"]);
    ns.ip(&["route", "add", &format!("{HOST_SIDE}/32"), "dev", &ns_end]);
    link
}

/// The host's end of a veth pair; deleting it deletes both ends and the
/// routes through it.
struct HostLink {
    name: String,
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// With `--verify-source`, an agent in a namespace holding its instance's
/// address joins; the same join token replayed for that instance from
/// another instance's address is refused as `source_mismatch`, and the node
/// keeps its credential and addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_source_refuses_a_replayed_join_token() {
    let Some(ns_a) = netns::Netns::create("verify_source_refuses_a_replayed_join_token") else {
        return;
    };
    let Some(ns_b) = netns::Netns::create("verify_source_refuses_a_replayed_join_token") else {
        return;
    };
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let b = ec2::launch_instance(&sdk, CLUSTER).await;
    let a_private = ec2::describe(&sdk, &a).await.private_ipv4.unwrap();
    let b_private = ec2::describe(&sdk, &b).await.private_ipv4.unwrap();
    let _link_a = link(&ns_a, 0, a_private);
    let _link_b = link(&ns_b, 1, b_private);

    let coordinator =
        Coordinator::start_on(&moto.endpoint(), HOST_SIDE, &["--verify-source"]).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;

    // The true instance, from its own address.
    let imds_a = Imds::start_on(sdk.clone(), &a, HOST_SIDE).await;
    let mut agent_a = Agent::prepared(&coordinator, &imds_a, CLUSTER, &token);
    agent_a.in_netns(ns_a.name());
    agent_a.restart();
    let nodes = one_deployed(&coordinator).await;
    assert_eq!(nodes[0].state, NodeState::Deployed, "{}", agent_a.logs());
    assert_eq!(nodes[0].instance_id, a);
    let credential = kept_credential(&agent_a).await;

    // B's machine replays the join token for A: its metadata (served to
    // it as A's) is all true, but its requests come from B's address.
    let imds_replay = Imds::start_on(sdk.clone(), &a, HOST_SIDE).await;
    let mut replay = Agent::prepared(&coordinator, &imds_replay, CLUSTER, &token);
    replay.in_netns(ns_b.name());
    replay.restart();
    let sample = "muster_security_events_total{code=\"source_mismatch\"}";
    let refused = wait_until(EVENTUALLY, POLL, || coordinator.metric(sample), |n| *n >= 1).await;
    assert!(refused >= 1, "{}", replay.logs());
    replay.stop();
    let logs = coordinator.logs();
    assert!(
        logs.lines().any(|l| l.contains("security event")
            && l.contains("source_mismatch")
            && l.contains(&b_private.to_string())
            && l.contains(&a)),
        "{logs}"
    );

    // A is still A: same credential (the replay revoked nothing), same
    // addresses, and its agent keeps heartbeating.
    assert_eq!(agent_a.node_credential(), Some(credential.clone()));
    let beats = coordinator.metric("muster_heartbeats_total").await;
    let after = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric("muster_heartbeats_total"),
        |n| *n > beats,
    )
    .await;
    assert!(after > beats, "{}", agent_a.logs());
    let node = coordinator.node(CLUSTER, &a).await;
    assert_eq!(node.node.state, NodeState::Deployed);
    assert_eq!(node.node.private_ipv4, Some(a_private));
}

/// A TLS connection to the coordinator made by hand, for what no HTTP
/// client will do: dribble bytes.
fn raw_tls(coordinator: &Coordinator) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(coordinator.ca_file()).expect("reading the CA") {
        roots.add(cert.expect("a CA certificate")).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = coordinator.url();
    let authority = host.trim_start_matches("https://");
    let tcp = TcpStream::connect(authority).expect("connecting to the API");
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap())
            .unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// Hostile HTTP: oversized, malformed, truncated, unknown fields, wrong
/// types, huge numbers and bad labels get a 4xx JSON error; a client that
/// dribbles its headers or its body is cut off; too many agent requests
/// from one source get 429. Never a 5xx, and others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_gets_4xx_and_others_are_served() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let good = serde_json::to_value(register_body(&sdk, &a, None, None).await).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut body = good.clone();
        body[key] = value;
        serde_json::to_vec(&body).unwrap()
    };
    let admin = coordinator.admin_token();

    let cases: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        (
            "oversized",
            paths::AGENT_REGISTER,
            &token,
            vec![b' '; MAX_BODY_BYTES + 1],
        ),
        ("malformed", paths::AGENT_REGISTER, &token, b"{\"protocol\": }".to_vec()),
        ("truncated", paths::AGENT_REGISTER, &token, {
            let full = serde_json::to_vec(&good).unwrap();
            full[..full.len() / 2].to_vec()
        }),
        ("unknown field", paths::AGENT_REGISTER, &token, with("extra", 1.into())),
        ("wrong type", paths::AGENT_REGISTER, &token, with("protocol", "one".into())),
        (
            "huge number",
            paths::AGENT_REGISTER,
            &token,
            br#"{"protocol": 1e400}"#.to_vec(),
        ),
        (
            "huge integer",
            paths::AGENT_REGISTER,
            &token,
            with("protocol", serde_json::json!(u64::MAX)),
        ),
        ("cluster with a dot", paths::AGENT_REGISTER, &token, with("cluster", "a.b".into())),
        ("cluster star", paths::AGENT_REGISTER, &token, with("cluster", "*".into())),
        ("cluster unicode", paths::AGENT_REGISTER, &token, with("cluster", "wéb".into())),
        (
            "instance id with a dot",
            paths::AGENT_REGISTER,
            &token,
            with("instance_id", "i-0123.example.com".into()),
        ),
        (
            "loopback private address",
            paths::AGENT_REGISTER,
            &token,
            with("private_ipv4", "127.0.0.1".into()),
        ),
        (
            "multicast public address",
            paths::AGENT_REGISTER,
            &token,
            with("public_ipv4", "224.0.0.1".into()),
        ),
        (
            "new cluster with a dot",
            paths::CLUSTERS,
            &admin,
            br#"{"name": "evil.example.com"}"#.to_vec(),
        ),
        ("new cluster star", paths::CLUSTERS, &admin, br#"{"name": "*"}"#.to_vec()),
        ("new cluster unicode", paths::CLUSTERS, &admin, "{\"name\": \"ünï\"}".into()),
        (
            "new cluster huge count",
            paths::CLUSTERS,
            &admin,
            br#"{"name": "big", "launch": {"region": "us-east-1", "instance_type": "t3.micro", "count": 99999999999, "disk_gb": 30, "ami": "ami-12c6146b"}}"#.to_vec(),
        ),
    ];
    for (what, path, bearer, body) in cases {
        let (status, text) = post_raw(&coordinator, path, bearer, body).await;
        assert!(status.is_client_error(), "{what}: {status}: {text}");
        code_of(&text);
    }
    // None of it became a node or a cluster.
    assert!(coordinator.nodes(CLUSTER).await.is_empty());
    let clusters = coordinator.clusters().await;
    assert_eq!(clusters.len(), 1, "{clusters:#?}");

    // A slow client dribbles its headers; others are served meanwhile, and
    // the slow one is cut off.
    let mut slow = raw_tls(&coordinator);
    let dribbler = std::thread::spawn(move || {
        let request =
            b"POST /v1/agent/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
        for byte in request.iter().cycle() {
            if slow
                .write_all(&[*byte])
                .and_then(|()| slow.flush())
                .is_err()
            {
                return "cut off while writing";
            }
            std::thread::sleep(Duration::from_millis(200));
            // A closed connection shows on read too; poll it without
            // blocking for long.
            slow.sock
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            let mut buf = [0u8; 512];
            match slow.read(&mut buf) {
                Ok(0) => return "closed by the server",
                Ok(_) => return "answered",
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return "cut off while reading",
            }
        }
        unreachable!("the request is cycled for ever")
    });
    for _ in 0..3 {
        let healthy = coordinator
            .https_client()
            .get(format!("{}{}", coordinator.url(), paths::HEALTHZ))
            .send()
            .await
            .expect("healthz while a slow client dribbles");
        assert_eq!(healthy.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ending = tokio::task::spawn_blocking(move || dribbler.join().unwrap())
        .await
        .unwrap();
    assert_ne!(ending, "answered", "a dribbling client got an answer");

    // A body promised but dribbled: 408, not a hung handler.
    let mut slow_body = raw_tls(&coordinator);
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{{",
        paths::AGENT_REGISTER
    );
    let answer = tokio::task::spawn_blocking(move || {
        slow_body.write_all(head.as_bytes()).unwrap();
        slow_body.flush().unwrap();
        let mut answer = String::new();
        let _ = slow_body.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // Too many agent requests from one source: 429 with Retry-After, never
    // a 5xx; the admin API is not limited. A coordinator allowing one a
    // second (bursts of two), so that even a slow machine goes over.
    let strict = Coordinator::start_with(&moto, &["--agent-rate-limit", "1"]).await;
    let strict_token = strict.create_cluster(CLUSTER).await.join_token;
    let mut limited = None;
    for _ in 0..20 {
        let response = strict
            .https_client()
            .post(format!("{}{}", strict.url(), paths::AGENT_HEARTBEAT))
            .bearer_auth(&strict_token)
            .json(&good)
            .send()
            .await
            .expect("POST heartbeat");
        let status = response.status();
        assert!(status.is_client_error(), "{status}");
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("20 agent requests at once were never limited");
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(code_of(&limited.text().await.unwrap()), "rate_limited");
    assert!(strict.metrics().await.contains("muster_nodes"));
}

/// A CA of the test's own, and a server certificate it signs for
/// 127.0.0.1, written as `ca.pem`, `cert.pem`, `key.pem` under `dir`.
fn operator_pki(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "operator test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// Waits until `agent`'s status mentions `needle`; returns the last status.
async fn status_until(agent: &Agent, needle: &str) -> String {
    wait_until(
        EVENTUALLY,
        POLL,
        || async { agent.status_json().await.1.to_string() },
        |status| status.contains(needle),
    )
    .await
}

/// An agent pinned to another CA never talks to the coordinator: the
/// connection is refused, nothing registers, and `status` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pinned_to_another_ca_fails_closed() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &a).await;
    let pki = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = operator_pki(pki.path());
    let mut agent = Agent::prepared(&coordinator, &imds, CLUSTER, &token);
    agent.set_ca_file(Some(other_ca));
    agent.restart();
    let status = status_until(&agent, "UnknownIssuer").await;
    assert!(
        status.contains("UnknownIssuer"),
        "{status}\n{}",
        agent.logs()
    );
    assert_eq!(coordinator.metric("muster_registrations_total").await, 0);
    assert!(coordinator.nodes(CLUSTER).await.is_empty());
}

/// No member takes over another, with default flags: a register with the
/// join token (which every node's user data holds) claiming a live
/// sibling's instance and its exact addresses, without the sibling's signed
/// identity document, is refused with `identity_unproven`, a security
/// event, and changes nothing: the sibling keeps its credential and its
/// agent never sees a 401. Silence does not change that; the signed
/// document (what a wiped node has) gets the claim in at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_sibling_cannot_be_taken_over() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let flags = ["--heartbeat-interval", "1s", "--grace", "5s"];
    let coordinator = Coordinator::start_with(&moto, &flags).await;
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let sibling = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &sibling).await;
    let mut agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    one_deployed(&coordinator).await;
    let credential = kept_credential(&agent).await;
    let name = node_dns_name(&sibling, CLUSTER, ZONE);
    let before = snapshot(&coordinator, std::slice::from_ref(&name)).await;
    let public = ec2::describe(&sdk, &sibling).await.public_ipv4;
    let proven = register_body(&sdk, &sibling, None, public).await;
    let claim = RegisterRequest {
        signed_identity: None,
        ..proven.clone()
    };

    let (status, body) = post_json(&coordinator, paths::AGENT_REGISTER, &token, &claim).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(code_of(&body), "identity_unproven", "{body}");
    assert_eq!(
        snapshot(&coordinator, std::slice::from_ref(&name)).await,
        before
    );
    let unproven = "muster_security_events_total{code=\"identity_unproven\"}";
    assert_eq!(coordinator.metric(unproven).await, 1);
    sibling_heartbeats_on(&coordinator, &agent, &credential).await;

    // Its agent gone and the grace passed, the claim is still no proof...
    agent.stop();
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| n.len() == 1 && n[0].state == NodeState::Unreachable,
    )
    .await;
    assert_eq!(nodes[0].state, NodeState::Unreachable);
    let (status, body) = post_json(&coordinator, paths::AGENT_REGISTER, &token, &claim).await;
    assert_eq!(code_of(&body), "identity_unproven", "{status}: {body}");
    // ...and the instance's own signed document is.
    let (status, body) = post_json(&coordinator, paths::AGENT_REGISTER, &token, &proven).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let nodes = one_deployed(&coordinator).await;
    assert_eq!(nodes[0].instance_id, sibling);
}

/// The sibling `agent` keeps heartbeating with the `credential` it had,
/// and never hears a 401.
async fn sibling_heartbeats_on(coordinator: &Coordinator, agent: &Agent, credential: &str) {
    let beats = coordinator.metric("muster_heartbeats_total").await;
    let later = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.metric("muster_heartbeats_total"),
        |n| *n >= beats + 3,
    )
    .await;
    assert!(
        later >= beats + 3,
        "the sibling stopped heartbeating:\n{}",
        agent.logs()
    );
    assert_eq!(agent.node_credential().as_deref(), Some(credential));
    assert!(
        !agent
            .logs()
            .contains("no longer accepts the node credential"),
        "the sibling's agent saw a 401:\n{}",
        agent.logs()
    );
}

/// With the identity check turned off (`--insecure-no-identity-document`),
/// the takeover rule still holds: a register with the join token claiming
/// a live sibling's instance and exact addresses is refused with
/// `node_live`, a security event, and changes nothing; once the sibling's
/// agent is gone the claim is still refused until the grace has passed,
/// then admitted (how a wiped node gets back in without proof).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_identity_check_a_live_sibling_is_kept_by_its_grace() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let flags = [
        "--heartbeat-interval",
        "1s",
        "--grace",
        "5s",
        "--insecure-no-identity-document",
    ];
    let coordinator = Coordinator::start_with(&moto, &flags).await;
    assert!(
        coordinator.logs().contains("INSECURE"),
        "serve warns while the check is off:\n{}",
        coordinator.logs()
    );
    let token = coordinator.create_cluster(CLUSTER).await.join_token;
    let sibling = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &sibling).await;
    let mut agent = Agent::start(&coordinator, &imds, CLUSTER, &token);
    one_deployed(&coordinator).await;
    let credential = kept_credential(&agent).await;
    let name = node_dns_name(&sibling, CLUSTER, ZONE);
    let before = snapshot(&coordinator, std::slice::from_ref(&name)).await;
    let public = ec2::describe(&sdk, &sibling).await.public_ipv4;
    let claim = RegisterRequest {
        signed_identity: None,
        ..register_body(&sdk, &sibling, None, public).await
    };

    let (status, body) = post_json(&coordinator, paths::AGENT_REGISTER, &token, &claim).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(code_of(&body), "node_live", "{body}");
    assert_eq!(
        snapshot(&coordinator, std::slice::from_ref(&name)).await,
        before
    );
    let live = "muster_security_events_total{code=\"node_live\"}";
    assert_eq!(coordinator.metric(live).await, 1);
    sibling_heartbeats_on(&coordinator, &agent, &credential).await;

    // Its agent gone, the sibling is still live until the grace passes...
    agent.stop();
    let (status, body) = post_json(&coordinator, paths::AGENT_REGISTER, &token, &claim).await;
    assert_eq!(code_of(&body), "node_live", "{status}: {body}");
    // ...then it is unreachable, and the claim is admitted as that node.
    let nodes = wait_until(
        EVENTUALLY,
        POLL,
        || coordinator.nodes(CLUSTER),
        |n| n.len() == 1 && n[0].state == NodeState::Unreachable,
    )
    .await;
    assert_eq!(nodes[0].state, NodeState::Unreachable);
    let (status, body) = post_json(&coordinator, paths::AGENT_REGISTER, &token, &claim).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let nodes = one_deployed(&coordinator).await;
    assert_eq!(nodes[0].instance_id, sibling);
}

/// The admin token is checked before anything else of an admin request:
/// without it (or with a wrong one), a malformed body, a cluster that
/// does not exist and one that does all get the same 401, and nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_show_nothing_without_the_token() {
    let moto = Moto::start().await;
    let coordinator = Coordinator::start(&moto).await;
    coordinator.create_cluster(CLUSTER).await;
    let client = coordinator.https_client();
    let wrong = format!("madmin_{}", "00".repeat(32));
    let requests = [
        (reqwest::Method::POST, "/v1/clusters/web/scale", "{not json"),
        (
            reqwest::Method::POST,
            "/v1/clusters/nope/scale",
            "{\"count\": 1}",
        ),
        (reqwest::Method::GET, "/v1/clusters/web", ""),
        (reqwest::Method::GET, "/v1/clusters/nope", ""),
        (reqwest::Method::GET, "/v1/clusters/web/tokens", ""),
        (reqwest::Method::DELETE, "/v1/clusters/web/tokens/join", ""),
        (reqwest::Method::DELETE, "/v1/clusters/nope", ""),
    ];
    let mut answers = std::collections::BTreeSet::new();
    for bearer in [None, Some(wrong.as_str())] {
        for (method, path, body) in &requests {
            let mut request = client
                .request(method.clone(), format!("{}{path}", coordinator.url()))
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(token) = bearer {
                request = request.bearer_auth(token);
            }
            let answer = request.send().await.expect("the coordinator answers");
            let status = answer.status();
            let text = answer.text().await.unwrap_or_default();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
            assert_eq!(code_of(&text), "unauthorized", "{method} {path}: {text}");
            answers.insert((bearer.is_some(), text));
        }
    }
    assert_eq!(
        answers.len(),
        2,
        "one answer per kind of bearer: {answers:?}"
    );
    let tokens: Vec<muster_proto::TokenView> = coordinator
        .admin_json(&["cluster", "tokens", CLUSTER])
        .await;
    assert_eq!(tokens[0].id, "join");
    assert_eq!(tokens[0].expires_at, None, "the join token was not revoked");
}

/// A coordinator serving an operator's certificate: an agent given no CA
/// file trusts the system's roots and registers (`SSL_CERT_FILE` names the
/// operator's CA as the system's store); with the real system roots, which
/// do not know that CA, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_certificate_with_system_roots() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = operator_pki(pki.path());
    let coordinator = Coordinator::start_with_certificate(&moto, &cert, &key, &ca).await;
    assert!(
        !coordinator.data_dir().join("ca.pem").exists(),
        "a coordinator with an operator certificate makes no CA"
    );
    let token = coordinator.create_cluster(CLUSTER).await.join_token;

    let stranger = ec2::launch_instance(&sdk, CLUSTER).await;
    let stranger_imds = Imds::start(sdk.clone(), &stranger).await;
    let mut untrusting = Agent::prepared(&coordinator, &stranger_imds, CLUSTER, &token);
    untrusting.set_ca_file(None);
    untrusting.set_env("SSL_CERT_FILE", "/nonexistent/no-roots.pem");
    untrusting.set_env("SSL_CERT_DIR", "/nonexistent");
    untrusting.restart();
    let status = status_until(&untrusting, "certificate").await;
    assert!(
        status.contains("certificate"),
        "{status}\n{}",
        untrusting.logs()
    );
    untrusting.stop();

    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let imds = Imds::start(sdk.clone(), &a).await;
    let mut agent = Agent::prepared(&coordinator, &imds, CLUSTER, &token);
    agent.set_ca_file(None);
    agent.set_env("SSL_CERT_FILE", &ca.display().to_string());
    agent.restart();
    let nodes = one_deployed(&coordinator).await;
    assert_eq!(nodes.len(), 1, "{}", agent.logs());
    assert_eq!(nodes[0].instance_id, a);
    assert_eq!(nodes[0].state, NodeState::Deployed);
}

/// Registers `body` with `token` until the coordinator answers 401 because
/// the token expired; the answer's text.
async fn refused_once_expired(
    coordinator: &Coordinator,
    token: &str,
    body: &RegisterRequest,
) -> String {
    let (status, text) = wait_until(
        EVENTUALLY,
        POLL,
        || post_json(coordinator, paths::AGENT_REGISTER, token, body),
        |(status, _)| *status == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    assert!(text.contains("expired"), "{text}");
    text
}

/// `cluster rotate-token`: the old join token stops working at once, the
/// new one works, and one given an expiry stops working after it; nodes
/// keep their credentials. `userdata --expires-in` does the same for the
/// join token it mints. `admin rotate-token`: the old admin token is
/// refused, the new one works and is what the data dir holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_and_expire() {
    let moto = Moto::start().await;
    let sdk = ec2::client(&moto.endpoint()).await;
    let coordinator = Coordinator::start(&moto).await;
    let first = coordinator.create_cluster(CLUSTER).await.join_token;
    let a = ec2::launch_instance(&sdk, CLUSTER).await;
    let a_public = ec2::describe(&sdk, &a).await.public_ipv4;
    let body = register_body(&sdk, &a, None, a_public).await;
    let (status, text) = post_json(&coordinator, paths::AGENT_REGISTER, &first, &body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let credential = serde_json::from_str::<serde_json::Value>(&text).unwrap()["credential"]
        .as_str()
        .unwrap()
        .to_owned();

    let rotated: muster_proto::RotateTokenResponse = coordinator
        .admin_json(&["cluster", "rotate-token", CLUSTER])
        .await;
    assert_ne!(rotated.join_token, first);
    assert_eq!(rotated.expires_at, None);
    let (status, text) = post_json(&coordinator, paths::AGENT_REGISTER, &first, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    // The new token admits a new instance; the node registered before the
    // rotation keeps its credential.
    let b = ec2::launch_instance(&sdk, CLUSTER).await;
    let b_body = register_body(&sdk, &b, None, ec2::describe(&sdk, &b).await.public_ipv4).await;
    let (status, text) = post_json(
        &coordinator,
        paths::AGENT_REGISTER,
        &rotated.join_token,
        &b_body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let view = ec2::describe(&sdk, &a).await;
    let beat = heartbeat_body(&a, view.private_ipv4.unwrap(), view.public_ipv4);
    let (status, text) = post_json(&coordinator, paths::AGENT_HEARTBEAT, &credential, &beat).await;
    assert_eq!(status, StatusCode::OK, "{text}");

    // A token with an expiry works until it, and not after.
    let brief: muster_proto::RotateTokenResponse = coordinator
        .admin_json(&["cluster", "rotate-token", CLUSTER, "--expires-in", "2s"])
        .await;
    assert!(brief.expires_at.is_some());
    let expired = refused_once_expired(&coordinator, &brief.join_token, &body).await;
    assert!(expired.contains("rotate-token"), "{expired}");
    // Bad expiries change nothing: the expired token stays the cluster's.
    for bad in ["0s", "11000d", "soon"] {
        let out = coordinator
            .admin(&["cluster", "rotate-token", CLUSTER, "--expires-in", bad])
            .await;
        assert!(!out.status.success(), "--expires-in {bad}");
    }
    let (status, _) = post_json(
        &coordinator,
        paths::AGENT_REGISTER,
        &brief.join_token,
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Join tokens minted for user data expire the same way; one without an
    // expiry keeps working, and bad expiries mint nothing.
    let lasting: muster_proto::UserDataResponse =
        coordinator.admin_json(&["userdata", CLUSTER]).await;
    assert_eq!(lasting.expires_at, None);
    let brief: muster_proto::UserDataResponse = coordinator
        .admin_json(&["userdata", CLUSTER, "--expires-in", "2s"])
        .await;
    assert!(brief.expires_at.is_some());
    let expired = refused_once_expired(&coordinator, &brief.join_token, &body).await;
    assert!(expired.contains("userdata"), "{expired}");
    let c = ec2::launch_instance(&sdk, CLUSTER).await;
    let c_body = register_body(&sdk, &c, None, ec2::describe(&sdk, &c).await.public_ipv4).await;
    let (status, text) = post_json(
        &coordinator,
        paths::AGENT_REGISTER,
        &lasting.join_token,
        &c_body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    for bad in ["0s", "11000d", "soon"] {
        let out = coordinator
            .admin(&["userdata", CLUSTER, "--expires-in", bad])
            .await;
        assert!(!out.status.success(), "--expires-in {bad}");
    }

    // The admin token.
    let old_admin = coordinator.admin_token();
    let rotated: muster_proto::AdminTokenResponse =
        coordinator.admin_json(&["admin", "rotate-token"]).await;
    assert_ne!(rotated.admin_token, old_admin);
    assert_eq!(coordinator.admin_token(), rotated.admin_token);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(coordinator.data_dir().join("admin-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let list = |token: String| {
        let client = coordinator.https_client();
        let url = format!("{}{}", coordinator.url(), paths::CLUSTERS);
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(list(old_admin).await, StatusCode::UNAUTHORIZED);
    assert_eq!(list(rotated.admin_token).await, StatusCode::OK);
}
