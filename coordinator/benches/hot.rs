//! Criterion benches of the coordinator's pure hot paths: a heartbeat of a
//! deployed node (the steady state of a fleet), a DNS lookup in a zone of
//! a thousand nodes, rendering a node's user data, and a zone rebuild (what
//! every write publishes) with and without thousands of terminated nodes
//! kept in the store until `--retention` prunes them.
//!
//! `cargo bench -p muster-coordinator --bench hot` (or `scripts/bench`,
//! which reports the medians in BENCHMARKS.md).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use hickory_proto::rr::{LowerName, Name, RecordType};
use muster_coordinator::dns::{NodeRecordSource, Zone, ZoneData};
use muster_coordinator::ec2::{Ec2Error, InstanceFacts, InstanceLookup};
use muster_coordinator::launcher::userdata::{render, AgentBootstrap};
use muster_coordinator::registry::{Registry, Timing};
use muster_coordinator::secrets::{hash_secret, new_secret};
use muster_coordinator::store::{AdmittedBy, NodeRegistration, Store};
use muster_proto::token::TokenKind;
use muster_proto::{
    EventSource, HeartbeatRequest, HostFacts, NodeState, RegisterRequest, PROTOCOL_VERSION,
};

const NODES: usize = 1000;

/// EC2 as a fixed table: the registers of the set-up are checked against
/// it; heartbeats of unchanged addresses never ask.
#[derive(Debug)]
struct Fixed(HashMap<String, InstanceFacts>);

#[async_trait::async_trait]
impl InstanceLookup for Fixed {
    async fn describe(&self, _: &str, id: &str) -> Result<Option<InstanceFacts>, Ec2Error> {
        Ok(self.0.get(id).cloned())
    }

    async fn describe_many(
        &self,
        _: &str,
        ids: &[String],
    ) -> Result<HashMap<String, InstanceFacts>, Ec2Error> {
        Ok(ids
            .iter()
            .filter_map(|id| self.0.get(id).map(|f| (id.clone(), f.clone())))
            .collect())
    }

    async fn terminate(&self, _: &str, _: &str) -> Result<(), Ec2Error> {
        Ok(())
    }
}

fn instance(i: usize) -> (String, Ipv4Addr, Ipv4Addr) {
    let [_, _, a, b] = (i as u32).to_be_bytes();
    (
        format!("i-{i:017x}"),
        Ipv4Addr::new(10, 0, a, b),
        Ipv4Addr::new(54, 0, a, b),
    )
}

fn facts() -> HostFacts {
    HostFacts {
        cpus: 2,
        load_average: [0.1, 0.2, 0.3],
        memory_total_bytes: 4 << 30,
        memory_used_bytes: 1 << 30,
        disks: Vec::new(),
        uptime_secs: 3600,
        os: "Debian GNU/Linux 12".to_owned(),
        kernel: "6.1.0".to_owned(),
    }
}

/// The default timing.
fn timing() -> Timing {
    Timing {
        heartbeat_interval: Duration::from_secs(10),
        heartbeat_jitter: Duration::from_secs(1),
        grace: Duration::from_secs(30),
        unknown_sweeps: 3,
        launch_timeout: Duration::from_secs(600),
    }
}

fn heartbeat(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let table: HashMap<String, InstanceFacts> = (0..NODES)
        .map(|i| {
            let (id, private, public) = instance(i);
            let facts = InstanceFacts {
                state: "running".into(),
                private_ipv4: Some(private),
                public_ipv4: Some(public),
                availability_zone: Some("us-east-1a".into()),
                cluster_tag: Some("web".into()),
                ipv6: Vec::new(),
            };
            (id, facts)
        })
        .collect();
    let store = Store::open_in_memory().expect("a store");
    let token = new_secret(TokenKind::Join);
    store
        .create_cluster("web", &hash_secret(&token), None)
        .expect("a cluster");
    let registry = Registry::new(
        store,
        Arc::new(Fixed(table)),
        Arc::new(Zone::new("muster.test", 30).expect("a zone")),
        "muster.test".into(),
        timing(),
    )
    .expect("a registry");
    let credentials: Vec<(String, HeartbeatRequest)> = rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..NODES {
            let (id, private, public) = instance(i);
            let registered = registry
                .register(
                    &token,
                    RegisterRequest {
                        protocol: PROTOCOL_VERSION,
                        cluster: "web".into(),
                        instance_id: id.clone(),
                        availability_zone: "us-east-1a".into(),
                        region: "us-east-1".into(),
                        private_ipv4: Some(private),
                        public_ipv4: Some(public),
                        agent_version: "bench".into(),
                        byon: None,
                        signed_identity: None,
                        ipv6: None,
                    },
                )
                .await
                .expect("a register");
            out.push((
                registered.credential,
                HeartbeatRequest {
                    instance_id: id,
                    private_ipv4: Some(private),
                    public_ipv4: Some(public),
                    facts: facts(),
                    checks: Vec::new(),
                    notices: Vec::new(),
                    leaving: None,
                    agent_version: None,
                    ipv6: None,
                },
            ));
        }
        out
    });
    let mut next = 0;
    c.bench_function("heartbeat of a deployed node (1000 registered)", |b| {
        b.to_async(&rt).iter(|| {
            let (credential, request) = &credentials[next % NODES];
            next += 1;
            let request = request.clone();
            let registry = &registry;
            async move {
                let answer = registry
                    .heartbeat(credential, request)
                    .await
                    .expect("a heartbeat");
                assert_eq!(answer.state, NodeState::Deployed);
            }
        })
    });
}

fn dns_lookup(c: &mut Criterion) {
    let nodes: Vec<NodeRecordSource> = (0..NODES)
        .map(|i| {
            let (id, private, public) = instance(i);
            NodeRecordSource {
                cluster: format!("c{}", i % 10),
                name: id,
                state: NodeState::Deployed,
                private_ipv4: Some(private),
                public_ipv4: Some(public),
                ipv6: None,
            }
        })
        .collect();
    let zone = Name::from_str("muster.test.").expect("a zone name");
    let data = ZoneData::build(&zone, 1, 30, &nodes).expect("zone data");
    let (id, _, _) = instance(NODES / 2);
    let cluster = format!("c{}", (NODES / 2) % 10);
    let node = LowerName::from_str(&format!("{id}.{cluster}.muster.test.")).expect("a name");
    let wildcard =
        LowerName::from_str(&format!("app.{id}.{cluster}.muster.test.")).expect("a name");
    let round_robin = LowerName::from_str(&format!("{cluster}.muster.test.")).expect("a name");
    c.bench_function("DNS A lookup of a node (1000 nodes)", |b| {
        b.iter(|| data.lookup(&node, RecordType::A))
    });
    c.bench_function("DNS A lookup under a node (wildcard CNAME)", |b| {
        b.iter(|| data.lookup(&wildcard, RecordType::A))
    });
    c.bench_function("DNS A lookup of a cluster (100 addresses)", |b| {
        b.iter(|| data.lookup(&round_robin, RecordType::A))
    });
}

/// A zone rebuild from a registry of [`NODES`] live nodes, whose store
/// holds `terminated` more nodes terminated for good: they left memory at
/// once, so the rebuild costs the same with or without them.
fn rebuild(c: &mut Criterion) {
    for terminated in [0, 5 * NODES] {
        let store = Store::open_in_memory().expect("a store");
        let cluster = store
            .create_cluster("web", &hash_secret(&new_secret(TokenKind::Join)), None)
            .expect("a cluster");
        for i in 0..NODES + terminated {
            let (id, private, public) = instance(i);
            let node = store
                .register_node(
                    &NodeRegistration {
                        cluster_id: cluster.id,
                        name: &id,
                        instance_id: &id,
                        availability_zone: "us-east-1a",
                        region: "us-east-1",
                        private_ipv4: Some(private),
                        public_ipv4: Some(public),
                        credential_hash: &hash_secret(&new_secret(TokenKind::Node)),
                        byon: false,
                        admitted_by: AdmittedBy::ClusterToken,
                        ipv6: None,
                    },
                    "bench",
                )
                .expect("a node");
            if i >= NODES {
                let gone = (node.state, NodeState::Terminated);
                store
                    .transition(node.id, gone, "bench", EventSource::Sweep, false)
                    .expect("a transition");
            }
        }
        let registry = Registry::new(
            store,
            Arc::new(Fixed(HashMap::new())),
            Arc::new(Zone::new("muster.test", 30).expect("a zone")),
            "muster.test".into(),
            timing(),
        )
        .expect("a registry");
        c.bench_function(
            &format!("zone rebuild, {NODES} live nodes, {terminated} terminated in the store"),
            |b| b.iter(|| registry.publish_now()),
        );
    }
}

fn user_data(c: &mut Criterion) {
    let ca = "-----BEGIN CERTIFICATE-----\n".to_owned()
        + &"MIIBszCCAVmgAwIBAgIUZ3l0ZXN0Y2VydGlmaWNhdGU=\n".repeat(12)
        + "-----END CERTIFICATE-----\n";
    let token = new_secret(TokenKind::Join);
    let agent = muster_proto::AgentDownload {
        url: "https://muster.example.com:7443/v1/agent/linux/x86_64/muster-agent".into(),
        arch: "x86_64".into(),
        sha256: "ab".repeat(32),
    };
    c.bench_function("user data rendering", |b| {
        b.iter(|| {
            render(&AgentBootstrap {
                coordinator_url: "https://muster.example.com:7443",
                ca_pem: Some(&ca),
                cluster: "web",
                join_token: &token,
                agents: std::slice::from_ref(&agent),
                drain_wait_secs: 30,
            })
            .expect("user data")
        })
    });
}

criterion_group!(hot, heartbeat, dns_lookup, user_data, rebuild);
criterion_main!(hot);
