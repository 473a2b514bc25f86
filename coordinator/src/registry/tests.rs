//! The registry's flows against a table of instances standing in for EC2.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Instant;

use hickory_proto::rr::{LowerName, RecordType};
use muster_proto::token::TokenKind;
use muster_proto::{
    CreateClusterRequest, ErrorCode, EventSource, HeartbeatRequest, HostFacts, RegisterRequest,
};

use super::*;
use crate::ec2::InstanceFacts;
use crate::secrets::{hash_secret, new_secret};

const ID: &str = "i-0123456789abcdef0";

/// Stands in for EC2 in these unit tests only: a fixed table of
/// instances, a cache's listing (empty unless a test fills it), the count
/// of describes, and gates that hold an answer, once read, until a test
/// opens them (describe, describe_many).
#[derive(Debug, Default)]
struct Table(
    Mutex<HashMap<String, InstanceFacts>>,
    Mutex<HashMap<String, InstanceFacts>>,
    AtomicU64,
    Gate,
    Gate,
);

/// Holds answers while closed: each read waits for [`Gate::open`].
#[derive(Debug, Default)]
struct Gate(Mutex<Option<Arc<tokio::sync::Semaphore>>>, AtomicU64);

impl Gate {
    /// From now on, answers wait.
    fn close(&self) {
        *self.0.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// Lets every waiting answer (and later ones) through.
    fn open(&self) {
        if let Some(gate) = self.0.lock().unwrap().take() {
            gate.add_permits(1 << 20);
        }
    }

    /// Answers that reached the gate since start.
    fn reached(&self) -> u64 {
        self.1.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        let gate = self.0.lock().unwrap().clone();
        self.1.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = gate {
            let _ = gate.acquire().await;
        }
    }
}

/// Waits until `gate` holds `n` answers in all.
async fn held(gate: &Gate, n: u64) {
    for _ in 0..1000 {
        if gate.reached() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the gate never held {n} answers");
}

#[async_trait::async_trait]
impl InstanceLookup for Table {
    async fn describe(&self, _: &str, id: &str) -> Result<Option<InstanceFacts>, Ec2Error> {
        self.2.fetch_add(1, Ordering::Relaxed);
        let answer = self.0.lock().unwrap().get(id).cloned();
        self.3.pass().await;
        Ok(answer)
    }

    fn cached(&self, _: &str, id: &str) -> Option<InstanceFacts> {
        self.1.lock().unwrap().get(id).cloned()
    }

    async fn describe_many(
        &self,
        _: &str,
        ids: &[String],
    ) -> Result<HashMap<String, InstanceFacts>, Ec2Error> {
        let answer = {
            let table = self.0.lock().unwrap();
            ids.iter()
                .filter_map(|id| table.get(id).map(|f| (id.clone(), f.clone())))
                .collect()
        };
        self.4.pass().await;
        Ok(answer)
    }

    async fn terminate(&self, _: &str, id: &str) -> Result<(), Ec2Error> {
        if let Some(facts) = self.0.lock().unwrap().get_mut(id) {
            facts.state = "shutting-down".into();
        }
        Ok(())
    }
}

fn running(public: Option<Ipv4Addr>) -> InstanceFacts {
    InstanceFacts {
        state: "running".into(),
        private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
        public_ipv4: public,
        ipv6: Vec::new(),
        availability_zone: Some("us-east-1a".into()),
        cluster_tag: Some("web".into()),
    }
}

fn setup() -> (Registry, Arc<Table>, String) {
    setup_with_grace(Duration::from_secs(30))
}

/// [`setup`], with `grace` before a silent node may be spoken for again.
fn setup_with_grace(grace: Duration) -> (Registry, Arc<Table>, String) {
    let table = Arc::new(Table::default());
    table
        .0
        .lock()
        .unwrap()
        .insert(ID.into(), running(Some(Ipv4Addr::new(54, 0, 0, 1))));
    let zone = Arc::new(Zone::new("muster.test", 30).unwrap());
    let store = Store::open_in_memory().unwrap();
    let token = new_secret(TokenKind::Join);
    store
        .create_cluster("web", &hash_secret(&token), None)
        .unwrap();
    let registry = Registry::new(
        store,
        table.clone(),
        zone,
        "muster.test".into(),
        Timing {
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_jitter: Duration::from_secs(1),
            grace,
            unknown_sweeps: 3,
            launch_timeout: Duration::from_secs(600),
        },
    )
    .unwrap();
    (registry, table, token)
}

fn register_req(public: Option<Ipv4Addr>) -> RegisterRequest {
    RegisterRequest {
        protocol: muster_proto::PROTOCOL_VERSION,
        cluster: "web".into(),
        instance_id: ID.into(),
        availability_zone: "us-east-1a".into(),
        region: "us-east-1".into(),
        private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
        public_ipv4: public,
        agent_version: "test".into(),
        byon: None,
        signed_identity: None,
        ipv6: None,
    }
}

fn heartbeat_req(public: Option<Ipv4Addr>) -> HeartbeatRequest {
    HeartbeatRequest {
        instance_id: ID.into(),
        private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
        public_ipv4: public,
        facts: HostFacts::default(),
        checks: Vec::new(),
        notices: Vec::new(),
        leaving: None,
        agent_version: None,
        ipv6: None,
    }
}

fn answer(registry: &Registry, name: &str) -> Vec<Ipv4Addr> {
    registry
        .zone()
        .snapshot()
        .lookup(&LowerName::from_str(name).unwrap(), RecordType::A)
        .answers
        .iter()
        .filter_map(|r| match r.data() {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// A good register stores a deployed node, records an event and answers in DNS.
#[tokio::test]
async fn register_deploys_and_publishes() {
    let (registry, _, token) = setup();
    let ip = Ipv4Addr::new(54, 0, 0, 1);
    let resp = registry
        .register(&token, register_req(Some(ip)))
        .await
        .unwrap();
    assert_eq!(resp.node.state, NodeState::Deployed);
    assert_eq!(TokenKind::of(&resp.credential), Some(TokenKind::Node));
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![ip]
    );
    assert_eq!(registry.node("web", ID).unwrap().events.len(), 1);
}

/// A claim the cache confirms asks EC2 nothing; one it does not confirm
/// is decided by EC2 alone, whether EC2 then agrees or refuses.
#[tokio::test]
async fn the_cache_confirms_and_ec2_decides_the_rest() {
    let (registry, table, token) = setup();
    let old = Some(Ipv4Addr::new(54, 0, 0, 1));
    let eip = Ipv4Addr::new(54, 0, 0, 2);
    let new = Some(eip);
    let describes = || table.2.load(Ordering::Relaxed);
    table.1.lock().unwrap().insert(ID.into(), running(old));
    let credential = registry
        .register(&token, register_req(old))
        .await
        .unwrap()
        .credential;
    assert_eq!(describes(), 0, "the listing confirmed the register");

    // An Elastic IP the listing does not know yet: EC2 confirms it.
    table.0.lock().unwrap().insert(ID.into(), running(new));
    registry
        .heartbeat(&credential, heartbeat_req(new))
        .await
        .unwrap();
    assert_eq!(describes(), 1);
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![eip]
    );

    // The listing does not bear the claim out (the instance carries
    // another cluster's tag): EC2 is asked, and its refusal stands.
    let mut other = running(new);
    other.cluster_tag = Some("db".into());
    table.1.lock().unwrap().insert(ID.into(), other.clone());
    table.0.lock().unwrap().insert(ID.into(), other);
    let err = registry
        .register(&token, register_req(new))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cluster_tag_mismatch");
    assert_eq!(describes(), 2);
}

/// Every kind of bad claim is refused with its own code and stores nothing.
#[tokio::test]
async fn bad_claims_change_nothing() {
    let (registry, table, token) = setup();
    let wrong_token = new_secret(TokenKind::Join);
    let good = Some(Ipv4Addr::new(54, 0, 0, 1));
    let err = registry
        .register(&wrong_token, register_req(good))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized");
    let err = registry
        .register(&token, register_req(Some(Ipv4Addr::new(54, 9, 9, 9))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "address_mismatch");
    assert!(err.to_string().contains("54.9.9.9"), "{err}");
    let mut other_zone = register_req(good);
    other_zone.availability_zone = "us-east-1b".into();
    let err = registry.register(&token, other_zone).await.unwrap_err();
    assert_eq!(err.code(), "address_mismatch");
    let mut unknown = register_req(good);
    unknown.instance_id = "i-00000000".into();
    let err = registry.register(&token, unknown).await.unwrap_err();
    assert_eq!(err.code(), "instance_not_found");
    table.0.lock().unwrap().get_mut(ID).unwrap().state = "stopped".into();
    let err = registry
        .register(&token, register_req(good))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "instance_not_running");
    table.0.lock().unwrap().get_mut(ID).unwrap().state = "running".into();
    for tag in [None, Some("api")] {
        table.0.lock().unwrap().get_mut(ID).unwrap().cluster_tag = tag.map(Into::into);
        let err = registry
            .register(&token, register_req(good))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "cluster_tag_mismatch", "{tag:?}");
    }
    assert!(registry.nodes(None).unwrap().is_empty());
    assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
}

/// A join token does not take a live node over: refused `node_live`, a
/// security event, and the node keeps its credential.
#[tokio::test]
async fn a_live_node_is_not_taken_over_by_a_join_token() {
    let (registry, _, token) = setup();
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    let first = registry.register(&token, register_req(ip)).await.unwrap();
    let err = registry
        .register(&token, register_req(ip))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "node_live");
    assert!(err.is_security_event());
    registry
        .heartbeat(&first.credential, heartbeat_req(ip))
        .await
        .unwrap();
}

/// Registering twice keeps one node and revokes the first credential: with
/// the join token once the node has been silent for the grace, or at any
/// time with the node's own credential.
#[tokio::test]
async fn second_register_rotates_the_credential() {
    let (registry, _, token) = setup_with_grace(Duration::from_millis(200));
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    let first = registry.register(&token, register_req(ip)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = registry.register(&token, register_req(ip)).await.unwrap();
    assert_ne!(first.credential, second.credential);
    assert_eq!(registry.nodes(None).unwrap().len(), 1);
    let err = registry
        .heartbeat(&first.credential, heartbeat_req(ip))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized");
    registry
        .heartbeat(&second.credential, heartbeat_req(ip))
        .await
        .unwrap();
    // Re-register with the credential itself rotates it again.
    let third = registry
        .register(&second.credential, register_req(ip))
        .await
        .unwrap();
    assert!(registry
        .heartbeat(&second.credential, heartbeat_req(ip))
        .await
        .is_err());
    registry
        .heartbeat(&third.credential, heartbeat_req(ip))
        .await
        .unwrap();
}

/// A heartbeat with a new address moves DNS only once EC2 agrees.
#[tokio::test]
async fn heartbeat_moves_dns_after_ec2_agrees() {
    let (registry, table, token) = setup();
    let old = Ipv4Addr::new(54, 0, 0, 1);
    let new = Ipv4Addr::new(54, 0, 0, 2);
    let resp = registry
        .register(&token, register_req(Some(old)))
        .await
        .unwrap();
    let err = registry
        .heartbeat(&resp.credential, heartbeat_req(Some(new)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "address_mismatch");
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![old]
    );
    table
        .0
        .lock()
        .unwrap()
        .insert(ID.into(), running(Some(new)));
    registry
        .heartbeat(&resp.credential, heartbeat_req(Some(new)))
        .await
        .unwrap();
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![new]
    );
    let events = registry.node("web", ID).unwrap().events;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1].reason,
        "address changed: public 54.0.0.1 -> 54.0.0.2"
    );
}

fn state_of(registry: &Registry) -> NodeState {
    registry.node("web", ID).unwrap().node.state
}

/// Silence past the grace makes a node unreachable and drops it from the
/// round robin but not from its own name; a heartbeat brings it back.
#[tokio::test]
async fn silence_makes_unreachable_and_a_heartbeat_heals() {
    let (registry, _, token) = setup();
    let public = Ipv4Addr::new(54, 0, 0, 1);
    let ip = Some(public);
    let resp = registry.register(&token, register_req(ip)).await.unwrap();
    assert_eq!(registry.check_liveness().await, 0, "fresh nodes are alive");
    // Silence past the grace, without sleeping through it.
    for node in registry.live().nodes.values_mut() {
        node.last_heard = Instant::now() - Duration::from_secs(31);
    }
    assert_eq!(registry.check_liveness().await, 1);
    assert_eq!(state_of(&registry), NodeState::Unreachable);
    assert!(answer(&registry, "web.muster.test.").is_empty());
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![public]
    );
    let beat = registry
        .heartbeat(&resp.credential, heartbeat_req(ip))
        .await
        .unwrap();
    assert_eq!(beat.state, NodeState::Deployed);
    assert_eq!(answer(&registry, "web.muster.test."), vec![public]);
    let events = registry.node("web", ID).unwrap().events;
    let sources: Vec<_> = events.iter().map(|e| (e.to, e.source)).collect();
    assert_eq!(
        sources,
        vec![
            (NodeState::Deployed, EventSource::Agent),
            (NodeState::Unreachable, EventSource::Liveness),
            (NodeState::Deployed, EventSource::Agent),
        ]
    );
}

fn byon_req(hostname: &str, machine_id: &str) -> RegisterRequest {
    RegisterRequest {
        instance_id: muster_proto::byon_node_id(machine_id),
        availability_zone: String::new(),
        region: String::new(),
        private_ipv4: Some(Ipv4Addr::new(192, 168, 7, 10)),
        public_ipv4: None,
        byon: Some(muster_proto::ByonIdentity {
            hostname: hostname.into(),
            machine_id: machine_id.into(),
        }),
        ..register_req(None)
    }
}

/// A machine without IMDS joins with a bring-your-own token and no EC2
/// check, under its hostname; it goes unreachable when silent and stays
/// so through sweeps; `node rm` deletes it and its names.
#[tokio::test]
async fn bring_your_own_nodes() {
    let (registry, _, join_token) = setup();
    let byon_token = registry
        .byon_token("web", &Default::default())
        .await
        .unwrap();
    let machine = "0123456789abcdef0123456789abcdef";

    // Each token is for its own kind of machine.
    let err = registry
        .register(&join_token, byon_req("rack1", machine))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized", "{err}");
    let err = registry
        .register(&byon_token, register_req(None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unauthorized", "{err}");

    let resp = registry
        .register(&byon_token, byon_req("rack1", machine))
        .await
        .unwrap();
    assert_eq!(resp.node.name, "rack1");
    assert!(resp.node.byon);
    assert_eq!(resp.node.state, NodeState::Deployed);
    // No public address: named under internal only.
    assert_eq!(
        answer(&registry, "rack1.web.internal.muster.test."),
        vec![Ipv4Addr::new(192, 168, 7, 10)]
    );
    assert!(answer(&registry, "rack1.web.muster.test.").is_empty());

    // Another machine may not take the name.
    let err = registry
        .register(
            &byon_token,
            byon_req("rack1", "fedcba9876543210fedcba9876543210"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "name_taken", "{err}");

    // Its own address change needs no EC2 word.
    let moved = HeartbeatRequest {
        instance_id: muster_proto::byon_node_id(machine),
        private_ipv4: Some(Ipv4Addr::new(192, 168, 7, 11)),
        public_ipv4: None,
        facts: HostFacts::default(),
        checks: Vec::new(),
        notices: Vec::new(),
        leaving: None,
        agent_version: None,
        ipv6: None,
    };
    registry.heartbeat(&resp.credential, moved).await.unwrap();
    assert_eq!(
        answer(&registry, "rack1.web.internal.muster.test."),
        vec![Ipv4Addr::new(192, 168, 7, 11)]
    );

    // Silent: unreachable, and sweeps (EC2 knows nothing of it) leave it.
    for node in registry.live().nodes.values_mut() {
        node.last_heard = Instant::now() - Duration::from_secs(31);
    }
    assert_eq!(registry.check_liveness().await, 1);
    for _ in 0..5 {
        registry.sweep().await;
    }
    let node = registry.node("web", "rack1").unwrap().node;
    assert_eq!(node.state, NodeState::Unreachable);

    registry.remove_node("web", "rack1").await.unwrap();
    assert!(registry.node("web", "rack1").is_err());
    assert!(answer(&registry, "rack1.web.internal.muster.test.").is_empty());
    assert!(registry
        .heartbeat(
            &resp.credential,
            HeartbeatRequest {
                instance_id: muster_proto::byon_node_id(machine),
                private_ipv4: Some(Ipv4Addr::new(192, 168, 7, 11)),
                public_ipv4: None,
                facts: HostFacts::default(),
                checks: Vec::new(),
                notices: Vec::new(),
                leaving: None,
                agent_version: None,
                ipv6: None,
            }
        )
        .await
        .is_err());
}

/// The sweep follows EC2: stopped, an address moved while the agent is
/// silent, unknown for too long, and terminated; DNS follows each.
#[tokio::test]
async fn sweep_follows_ec2() {
    let (registry, table, token) = setup();
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    registry.register(&token, register_req(ip)).await.unwrap();
    // A neighbour EC2 keeps knowing, so that its answers stay plausible
    // when it no longer knows the first.
    register_neighbour(&registry, &table, &token).await;
    let moved = Ipv4Addr::new(54, 0, 0, 9);
    table
        .0
        .lock()
        .unwrap()
        .insert(ID.into(), running(Some(moved)));
    registry.sweep().await;
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![moved]
    );
    table.0.lock().unwrap().get_mut(ID).unwrap().state = "stopped".into();
    registry.sweep().await;
    assert_eq!(state_of(&registry), NodeState::Stopped);
    assert!(!answer(&registry, "web.muster.test.").contains(&moved));
    table.0.lock().unwrap().remove(ID);
    registry.sweep().await;
    registry.sweep().await;
    assert_eq!(
        state_of(&registry),
        NodeState::Stopped,
        "two unknown sweeps are not enough"
    );
    registry.sweep().await;
    assert_eq!(state_of(&registry), NodeState::Terminated);
    assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
    assert!(answer(&registry, &format!("{ID}.web.internal.muster.test.")).is_empty());
}

/// A second instance of the region, registered and known to EC2.
async fn register_neighbour(registry: &Registry, table: &Table, token: &str) {
    const NEIGHBOUR: &str = "i-0fedcba9876543210";
    let mut facts = running(Some(Ipv4Addr::new(54, 0, 0, 2)));
    facts.private_ipv4 = Some(Ipv4Addr::new(10, 0, 0, 6));
    table.0.lock().unwrap().insert(NEIGHBOUR.into(), facts);
    let mut req = register_req(Some(Ipv4Addr::new(54, 0, 0, 2)));
    req.instance_id = NEIGHBOUR.into();
    req.private_ipv4 = Some(Ipv4Addr::new(10, 0, 0, 6));
    registry.register(token, req).await.unwrap();
}

/// A region where EC2 knows none of the tracked instances is a read not
/// believed: however many sweeps, nothing moves, and it is counted.
#[tokio::test]
async fn a_sweep_knowing_none_changes_nothing() {
    let (registry, table, token) = setup();
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    registry.register(&token, register_req(ip)).await.unwrap();
    table.0.lock().unwrap().clear();
    for _ in 0..12 {
        let report = registry.sweep().await;
        assert_eq!(report.failed_regions, 1);
    }
    assert_eq!(state_of(&registry), NodeState::Deployed);
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![Ipv4Addr::new(54, 0, 0, 1)]
    );
    assert_eq!(
        registry.counters.untrusted_reads.load(Ordering::Relaxed),
        12
    );
}

/// A node terminated only because EC2 did not know its instance comes
/// back when its agent is heard and EC2 confirms it, with an event saying
/// so; one EC2 said is terminated does not.
#[tokio::test]
async fn a_node_terminated_for_absence_comes_back() {
    let (registry, table, token) = setup();
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    let registered = registry.register(&token, register_req(ip)).await.unwrap();
    register_neighbour(&registry, &table, &token).await;
    let facts = table.0.lock().unwrap().remove(ID).unwrap();
    for _ in 0..3 {
        registry.sweep().await;
    }
    assert_eq!(state_of(&registry), NodeState::Terminated);
    assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
    // While EC2 still does not know it, the agent cannot bring it back.
    let refused = registry
        .heartbeat(&registered.credential, heartbeat_req(ip))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InstanceNotFound);
    assert_eq!(state_of(&registry), NodeState::Terminated);
    table.0.lock().unwrap().insert(ID.into(), facts);
    let back = registry
        .heartbeat(&registered.credential, heartbeat_req(ip))
        .await
        .unwrap();
    assert_eq!(back.state, NodeState::Deployed);
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![Ipv4Addr::new(54, 0, 0, 1)]
    );
    let detail = registry.node("web", ID).unwrap();
    let last = detail.events.last().unwrap();
    assert_eq!(last.to, NodeState::Deployed);
    assert!(last.reason.contains("not being found"), "{}", last.reason);

    // EC2's own word that it is terminated is final.
    table.0.lock().unwrap().get_mut(ID).unwrap().state = "terminated".into();
    registry.sweep().await;
    assert_eq!(state_of(&registry), NodeState::Terminated);
    table.0.lock().unwrap().get_mut(ID).unwrap().state = "running".into();
    let refused = registry
        .register(&registered.credential, register_req(ip))
        .await;
    assert!(refused.is_err());
    // Terminated for good, the node has left memory with its credential:
    // a heartbeat is not recognised, and the register its agent then
    // tries with the join token is told the node is terminated.
    let refused = registry
        .heartbeat(&registered.credential, heartbeat_req(ip))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Unauthorized);
    assert!(!registry.live().nodes.values().any(|n| n.instance_id == ID));
    let refused = registry
        .register(&token, register_req(ip))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::NodeTerminated);
}

/// A register whose EC2 check is held while `node rm` runs writes
/// nothing: the node stays on its way out, and the register is told so.
#[tokio::test]
async fn node_rm_wins_over_a_register_in_flight() {
    let (registry, table, token) = setup();
    let registry = Arc::new(registry);
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    let registered = registry.register(&token, register_req(ip)).await.unwrap();
    table.3.close();
    let again = {
        let registry = registry.clone();
        let credential = registered.credential.clone();
        tokio::spawn(async move { registry.register(&credential, register_req(ip)).await })
    };
    held(&table.3, 2).await;
    registry.remove_node("web", ID).await.unwrap();
    table.3.open();
    let refused = again.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Conflict, "{refused}");
    assert_eq!(state_of(&registry), NodeState::Terminating);
    assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
}

/// A sweep's EC2 read held past a heartbeat that moved the node to a
/// newer Elastic IP does not write the older address back.
#[tokio::test]
async fn a_stale_sweep_never_writes_an_older_address() {
    let (registry, table, token) = setup();
    let registry = Arc::new(registry);
    let old = Some(Ipv4Addr::new(54, 0, 0, 1));
    let registered = registry.register(&token, register_req(old)).await.unwrap();
    register_neighbour(&registry, &table, &token).await;
    // EC2 says the node moved to `middle`; the sweep reads that, then is
    // held.
    let middle = Some(Ipv4Addr::new(54, 0, 0, 7));
    table.0.lock().unwrap().insert(ID.into(), running(middle));
    table.4.close();
    let sweep = {
        let registry = registry.clone();
        tokio::spawn(async move { registry.sweep().await })
    };
    held(&table.4, 1).await;
    // Meanwhile the node moves on to `newest`, and its agent says so.
    let newest_ip = Ipv4Addr::new(54, 0, 0, 9);
    let newest = Some(newest_ip);
    table.0.lock().unwrap().insert(ID.into(), running(newest));
    registry
        .heartbeat(&registered.credential, heartbeat_req(newest))
        .await
        .unwrap();
    table.4.open();
    sweep.await.unwrap();
    assert_eq!(
        answer(&registry, &format!("{ID}.web.muster.test.")),
        vec![newest_ip]
    );
}

/// Two machines taking one name at the same moment: one node, and the
/// other told 409 `conflict`, not a 500.
#[tokio::test]
async fn two_machines_racing_for_a_name_get_a_conflict() {
    let (registry, _, _) = setup();
    let registry = Arc::new(registry);
    let byon_token = registry
        .byon_token("web", &Default::default())
        .await
        .unwrap();
    // Both pass the name check before either writes.
    let write = registry.write.lock().await;
    let racers: Vec<_> = [
        "0123456789abcdef0123456789abcde1",
        "0123456789abcdef0123456789abcde2",
    ]
    .into_iter()
    .map(|machine| {
        let registry = registry.clone();
        let token = byon_token.clone();
        tokio::spawn(async move { registry.register(&token, byon_req("db", machine)).await })
    })
    .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(write);
    let mut answers = Vec::new();
    for racer in racers {
        answers.push(racer.await.unwrap());
    }
    assert_eq!(
        answers.iter().filter(|a| a.is_ok()).count(),
        1,
        "{answers:?}"
    );
    let refused = answers.into_iter().find_map(Result::err).unwrap();
    assert_eq!(refused.code(), ErrorCode::Conflict, "{refused}");
    assert_eq!(registry.nodes(Some("web")).unwrap().len(), 1);
}

/// `node rm` terminates through EC2: terminating at once, terminated
/// after the sweep sees it, and the agent can no longer revive it.
#[tokio::test]
async fn remove_terminates_through_ec2() {
    let (registry, _, token) = setup();
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    let resp = registry.register(&token, register_req(ip)).await.unwrap();
    let view = registry.remove_node("web", ID).await.unwrap();
    assert_eq!(view.state, NodeState::Terminating);
    let err = registry
        .heartbeat(&resp.credential, heartbeat_req(ip))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "node_terminated");
    registry.sweep().await;
    assert_eq!(state_of(&registry), NodeState::Terminated);
    assert!(answer(&registry, &format!("{ID}.web.muster.test.")).is_empty());
    let err = registry.remove_node("web", ID).await.unwrap_err();
    assert_eq!(err.code(), "node_terminated");
}

/// Event pages chain through `next_after` and bad bounds are refused.
#[tokio::test]
async fn events_are_paged() {
    let (registry, _, token) = setup();
    let ip = Some(Ipv4Addr::new(54, 0, 0, 1));
    let mut bearer = token;
    for _ in 0..5 {
        bearer = registry
            .register(&bearer, register_req(ip))
            .await
            .unwrap()
            .credential;
    }
    let first = registry.node_events("web", ID, 0, 2).unwrap();
    assert_eq!(first.events.len(), 2);
    let second = registry
        .node_events("web", ID, first.next_after.unwrap(), 2)
        .unwrap();
    let third = registry
        .node_events("web", ID, second.next_after.unwrap(), 2)
        .unwrap();
    assert_eq!(third.events.len(), 1);
    assert_eq!(third.next_after, None);
    assert_eq!(registry.node("web", ID).unwrap().events_total, 5);
    assert!(registry.node_events("web", ID, 0, 0).is_err());
    assert!(registry.node_events("web", ID, -1, 5).is_err());
    assert!(registry.node_events("web", ID, 0, 1001).is_err());
}

/// Reserved and over-long cluster names are refused.
#[tokio::test]
async fn cluster_names_are_checked() {
    let (registry, _, _) = setup();
    for bad in ["internal", "Web", "", &"a".repeat(64)] {
        let req = CreateClusterRequest {
            name: bad.into(),
            launch: None,
            byon: false,
            byon_max_nodes: None,
            expires_in_secs: None,
        };
        assert!(registry.create_cluster(&req).await.is_err());
    }
    let req = CreateClusterRequest {
        name: "web".into(),
        launch: None,
        byon: false,
        byon_max_nodes: None,
        expires_in_secs: None,
    };
    let err = registry.create_cluster(&req).await.unwrap_err();
    assert_eq!(err.code(), "cluster_exists");
    let created = registry
        .create_cluster(&CreateClusterRequest {
            name: "db".into(),
            launch: None,
            byon: true,
            byon_max_nodes: None,
            expires_in_secs: None,
        })
        .await
        .unwrap();
    assert_eq!(created.cluster.state, muster_proto::ClusterState::Active);
    assert!(created.cluster.launch.is_none() && created.launch.is_none());
    assert_eq!(TokenKind::of(&created.join_token), Some(TokenKind::Join));
    let byon = created.byon_token.expect("a bring-your-own token");
    assert_eq!(TokenKind::of(&byon), Some(TokenKind::Join));
    assert_ne!(byon, created.join_token);
}

/// Without a launcher, a launch is refused and nothing is stored.
#[tokio::test]
async fn launch_needs_a_launcher() {
    let (registry, _, _) = setup();
    let req: CreateClusterRequest = serde_json::from_str(
        r#"{"name": "api", "launch": {"region": "us-east-1", "instance_type": "t3.micro",
            "count": 1, "disk_gb": 30, "ami": "ami-0123abcd"}}"#,
    )
    .unwrap();
    let err = registry.create_cluster(&req).await.unwrap_err();
    assert_eq!(err.code(), "invalid_request", "{err}");
    assert!(registry.cluster("api").is_err());
}

/// A cluster's lifetime: shown, extended from its end, refused for a
/// cluster without one, and once it has ended the cluster is removed.
#[tokio::test]
async fn a_cluster_lifetime_ends_in_its_removal() {
    let (registry, _, _) = setup();
    let registry = Arc::new(registry);
    let create = |name: &str, expires_in_secs| CreateClusterRequest {
        name: name.into(),
        launch: None,
        byon: false,
        byon_max_nodes: None,
        expires_in_secs,
    };
    let brief = registry
        .create_cluster(&create("brief", Some(3600)))
        .await
        .unwrap()
        .cluster;
    let ends = |view: &muster_proto::ClusterView| {
        humantime::parse_rfc3339(view.expires_at.as_deref().expect("an end")).unwrap()
    };
    let extended = registry
        .extend_cluster("brief", &muster_proto::ExtendClusterRequest { by_secs: 60 })
        .await
        .unwrap();
    assert_eq!(
        ends(&extended).duration_since(ends(&brief)).unwrap(),
        Duration::from_secs(60)
    );
    let err = registry
        .extend_cluster("web", &muster_proto::ExtendClusterRequest { by_secs: 60 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_request", "{err}");
    let err = registry
        .create_cluster(&create("never", Some(0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_request", "{err}");

    assert_eq!(registry.remove_expired_clusters().await.unwrap(), 0);
    let id = registry.store.cluster("brief").unwrap().unwrap().id;
    assert!(registry
        .store
        .set_cluster_expiry(id, crate::store::now_ms() - 1)
        .unwrap());
    assert_eq!(registry.remove_expired_clusters().await.unwrap(), 1);
    let state = registry.store.cluster("brief").unwrap().unwrap().state;
    assert_ne!(state, muster_proto::ClusterState::Active);
    assert_eq!(
        registry.store.cluster("web").unwrap().unwrap().state,
        muster_proto::ClusterState::Active
    );
}

/// A node terminated for good leaves memory at once; an input for it that
/// was decided before (a removal racing the sweep that saw the instance
/// gone) finds nothing left to do, while an unknown id is still refused.
#[tokio::test]
async fn an_input_racing_a_termination_is_a_no_op() {
    let (registry, _table, token) = setup();
    registry
        .register(&token, register_req(Some(Ipv4Addr::new(54, 0, 0, 1))))
        .await
        .unwrap();
    let id = registry.store.node_by_instance(ID).unwrap().unwrap().id;
    let gone = registry
        .apply(id, lifecycle::Input::Ec2Gone, EventSource::Sweep)
        .await
        .unwrap();
    assert_eq!(gone, NodeState::Terminated);
    assert!(!registry.live().nodes.contains_key(&id), "out of memory");
    let late = registry
        .apply(id, lifecycle::Input::OperatorRemove, EventSource::Operator)
        .await
        .unwrap();
    assert_eq!(late, NodeState::Terminated);
    assert!(matches!(
        registry
            .apply(
                id + 1000,
                lifecycle::Input::OperatorRemove,
                EventSource::Operator
            )
            .await,
        Err(RegistryError::NotFound(_))
    ));
}
