//! The record model and the snapshot's answers.

use super::*;

fn node(cluster: &str, name: &str, state: NodeState, public: Option<[u8; 4]>) -> NodeRecordSource {
    NodeRecordSource {
        cluster: cluster.into(),
        name: name.into(),
        state,
        private_ipv4: Some(Ipv4Addr::new(10, 0, 0, name.len() as u8)),
        public_ipv4: public.map(Ipv4Addr::from),
        ipv6: None,
    }
}

fn zone(nodes: &[NodeRecordSource]) -> ZoneData {
    ZoneData::build(&Name::from_str("muster.test.").unwrap(), 7, 30, nodes).unwrap()
}

fn q(name: &str) -> LowerName {
    LowerName::from_str(name).unwrap()
}

fn a_of(answer: &Answer) -> Vec<Ipv4Addr> {
    answer
        .answers
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The key orders names as `Name` does, and collecting keeps the last
/// record of a name, as inserting in turn does.
#[test]
fn records_collect_in_name_order() {
    let names = [
        "z.",
        "A.z.",
        "a.z.",
        "b.z.",
        "a-b.z.",
        "ab.z.",
        "*.a.z.",
        "x.a.z.",
        "x.a-b.z.",
        "n10.c1.z.",
        "n9.c1.z.",
        "n1.c10.z.",
        "internal.z.",
        "n1.c1.internal.z.",
        "\\.z.",
        "a\\.b.z.",
        "_muster.a.z.",
        "y.",
    ];
    let names: Vec<Name> = names.iter().map(|n| Name::from_str(n).unwrap()).collect();
    for a in &names {
        for b in &names {
            assert_eq!(canonical_key(a).cmp(&canonical_key(b)), a.cmp(b), "{a} {b}");
        }
    }
    let records: Vec<(Name, RecordData)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), RecordData::Cname(i.to_string())))
        .collect();
    let mut inserted = DesiredRecords::new();
    for (name, data) in records.clone() {
        inserted.insert(name, data);
    }
    let collected = collect_records(records);
    assert_eq!(collected, inserted);
    assert_eq!(
        collected.get(&Name::from_str("a.z.").unwrap()),
        Some(&RecordData::Cname("2".into())),
        "the later of A.z. and a.z. wins"
    );
}

/// The record kinds of docs/dns.md answer as specified: private
/// addresses only under `internal`.
#[test]
fn node_records() {
    let data = zone(&[
        node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 1])),
        node("web", "n22", NodeState::Deployed, None),
    ]);
    let public = data.lookup(&q("n1.web.muster.test."), RecordType::A);
    assert_eq!(a_of(&public), vec![Ipv4Addr::new(54, 0, 0, 1)]);
    let private_only = data.lookup(&q("n22.web.muster.test."), RecordType::A);
    assert_eq!(private_only.code, ResponseCode::NXDomain, "no public name");
    let internal = data.lookup(&q("n22.web.internal.muster.test."), RecordType::A);
    assert_eq!(a_of(&internal), vec![Ipv4Addr::new(10, 0, 0, 3)]);
    let internal = data.lookup(&q("n1.web.internal.muster.test."), RecordType::A);
    assert_eq!(a_of(&internal), vec![Ipv4Addr::new(10, 0, 0, 2)]);
    let round_robin = data.lookup(&q("web.muster.test."), RecordType::A);
    assert_eq!(a_of(&round_robin), vec![Ipv4Addr::new(54, 0, 0, 1)]);
    let internal_round_robin = data.lookup(&q("web.internal.muster.test."), RecordType::A);
    assert_eq!(
        a_of(&internal_round_robin),
        vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
    );
    let wildcard = data.lookup(&q("app.n1.web.muster.test."), RecordType::A);
    assert_eq!(wildcard.code, ResponseCode::NoError);
    assert!(
        matches!(wildcard.answers[0].data(), RData::CNAME(c) if c.0 == Name::from_str("n1.web.muster.test.").unwrap())
    );
    assert_eq!(a_of(&wildcard), vec![Ipv4Addr::new(54, 0, 0, 1)]);
    let deep = data.lookup(&q("a.b.n1.web.muster.test."), RecordType::CNAME);
    assert_eq!(deep.answers.len(), 1);
}

fn aaaa_of(answer: &Answer) -> Vec<Ipv6Addr> {
    answer
        .answers
        .iter()
        .filter_map(|r| match r.data() {
            RData::AAAA(aaaa) => Some(aaaa.0),
            _ => None,
        })
        .collect()
}

/// IPv6 is answered as AAAA beside A at a node's own name and in its
/// cluster's round robin (never under `internal`); an IPv6-only node's
/// name has AAAA alone; each type asked gets only its own records, and a
/// wildcard name leads to both.
#[test]
fn ipv6_is_answered_as_aaaa() {
    let dual: Ipv6Addr = "2600:1f18:4f2:e100::5".parse().unwrap();
    let only: Ipv6Addr = "2600:1f18:4f2:e100::6".parse().unwrap();
    let data = zone(&[
        NodeRecordSource {
            ipv6: Some(dual),
            ..node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 1]))
        },
        NodeRecordSource {
            ipv6: Some(only),
            private_ipv4: None,
            ..node("web", "v6", NodeState::Deployed, None)
        },
        NodeRecordSource {
            ipv6: Some("2600:1f18:4f2:e100::7".parse().unwrap()),
            ..node("web", "ill", NodeState::Unhealthy, Some([54, 0, 0, 7]))
        },
    ]);
    let own = data.lookup(&q("n1.web.muster.test."), RecordType::AAAA);
    assert_eq!((aaaa_of(&own), a_of(&own)), (vec![dual], vec![]));
    let own = data.lookup(&q("n1.web.muster.test."), RecordType::A);
    assert_eq!(
        (aaaa_of(&own), a_of(&own)),
        (vec![], vec![Ipv4Addr::new(54, 0, 0, 1)])
    );
    let any = data.lookup(&q("n1.web.muster.test."), RecordType::ANY);
    assert_eq!(any.answers.len(), 2);
    let v6_only = data.lookup(&q("v6.web.muster.test."), RecordType::AAAA);
    assert_eq!(aaaa_of(&v6_only), vec![only]);
    let no_a = data.lookup(&q("v6.web.muster.test."), RecordType::A);
    assert_eq!(
        (no_a.code, no_a.answers.len()),
        (ResponseCode::NoError, 0),
        "NODATA"
    );
    let internal = data.lookup(&q("n1.web.internal.muster.test."), RecordType::AAAA);
    assert!(internal.answers.is_empty(), "{internal:?}");
    let round_robin = data.lookup(&q("web.muster.test."), RecordType::AAAA);
    assert_eq!(
        aaaa_of(&round_robin),
        vec![dual, only],
        "the unhealthy one is out"
    );
    let wildcard = data.lookup(&q("app.v6.web.muster.test."), RecordType::AAAA);
    assert_eq!(aaaa_of(&wildcard), vec![only]);
}

/// Building straight from the nodes gives the snapshot the model's
/// record set gives, name for name, including the names that exist
/// without records and a cluster named like the internal label.
#[test]
fn build_matches_the_model() {
    let zone = Name::from_str("muster.test.").unwrap();
    let mut nodes = vec![
        node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 1])),
        node("web", "n22", NodeState::Deployed, None),
        node("web", "n333", NodeState::Unreachable, Some([54, 0, 0, 1])),
        node("db", "d1", NodeState::Stopped, Some([54, 0, 0, 9])),
        node("db", "d22", NodeState::Terminating, Some([54, 0, 0, 8])),
        node("db", "d333", NodeState::Deployed, Some([54, 0, 0, 7])),
        node("internal", "i1", NodeState::Deployed, Some([54, 0, 0, 6])),
        // The same node twice: the later wins in both.
        node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 5])),
    ];
    nodes.push(NodeRecordSource {
        private_ipv4: None,
        ..node("db", "d4444", NodeState::Deployed, Some([54, 0, 0, 4]))
    });
    nodes.push(NodeRecordSource {
        private_ipv4: None,
        ..node("db", "d55555", NodeState::Deployed, None)
    });
    nodes.push(NodeRecordSource {
        ipv6: Some("2600:1f18::8".parse().unwrap()),
        ..node("web", "dual", NodeState::Deployed, Some([54, 0, 0, 8]))
    });
    nodes.push(NodeRecordSource {
        ipv6: Some("2600:1f18::9".parse().unwrap()),
        private_ipv4: None,
        ..node("web", "only6", NodeState::Deployed, None)
    });
    // A cluster whose only node has no address has no names at all.
    nodes.push(NodeRecordSource {
        private_ipv4: None,
        ..node("bare", "b1", NodeState::Deployed, None)
    });
    let direct = ZoneData::build(&zone, 7, 30, &nodes).unwrap();
    let model = desired_records(&zone, &nodes).unwrap();
    let via_model = ZoneData::from_desired(&zone, 7, 30, &model).unwrap();
    assert_eq!(direct.a, via_model.a);
    assert_eq!(direct.names, via_model.names);
    assert_eq!(direct.desired(), model);
    assert!(direct.a.len() > 8, "{:?}", direct.a.keys());
}

/// The shared model spells the wildcard out as a CNAME to the node, and
/// puts private addresses only under `internal`.
#[test]
fn desired_records_spell_out_the_wildcard() {
    let zone = Name::from_str("muster.test.").unwrap();
    let records = desired_records(
        &zone,
        &[
            node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 1])),
            node("web", "gone", NodeState::Terminated, Some([54, 0, 0, 3])),
        ],
    )
    .unwrap();
    let get = |name: &str| records.get(&Name::from_str(name).unwrap()).cloned();
    assert_eq!(
        get("*.n1.web.muster.test."),
        Some(RecordData::Cname("n1.web.muster.test.".into()))
    );
    assert_eq!(
        get("n1.web.muster.test."),
        Some(RecordData::a(vec![Ipv4Addr::new(54, 0, 0, 1)]))
    );
    assert_eq!(
        get("n1.web.internal.muster.test."),
        Some(RecordData::a(vec![Ipv4Addr::new(10, 0, 0, 2)]))
    );
    assert_eq!(
        get("web.muster.test."),
        Some(RecordData::a(vec![Ipv4Addr::new(54, 0, 0, 1)]))
    );
    assert_eq!(
        get("web.internal.muster.test."),
        Some(RecordData::a(vec![Ipv4Addr::new(10, 0, 0, 2)]))
    );
    assert_eq!(
        records.len(),
        5,
        "nothing for the terminated node: {records:?}"
    );
    assert!(
        records
            .iter()
            .filter(|(name, _)| !name.to_ascii().contains(".internal."))
            .all(|(_, data)| match data {
                RecordData::Addresses(ips) => ips.iter().all(|ip| match ip {
                    std::net::IpAddr::V4(v4) => !v4.is_private(),
                    std::net::IpAddr::V6(_) => true,
                }),
                RecordData::Cname(_) => true,
            }),
        "a private address outside internal: {records:?}"
    );
}

/// Unknown names are NXDOMAIN with the SOA; parents of names are NODATA;
/// names outside the zone are refused; the apex has SOA and NS.
#[test]
fn negative_answers() {
    let data = zone(&[node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 1]))]);
    let unknown = data.lookup(&q("nope.web.muster.test."), RecordType::A);
    assert_eq!(unknown.code, ResponseCode::NXDomain);
    assert_eq!(unknown.soa.len(), 1);
    let under_internal = data.lookup(&q("x.n1.web.internal.muster.test."), RecordType::A);
    assert_eq!(under_internal.code, ResponseCode::NXDomain);
    let parent = data.lookup(&q("internal.muster.test."), RecordType::A);
    assert_eq!(parent.code, ResponseCode::NoError);
    assert!(parent.answers.is_empty());
    let quiet = zone(&[node(
        "web",
        "n1",
        NodeState::Unreachable,
        Some([54, 0, 0, 1]),
    )]);
    let parent = quiet.lookup(&q("web.internal.muster.test."), RecordType::A);
    assert_eq!(
        parent.code,
        ResponseCode::NoError,
        "no deployed node: a parent only"
    );
    assert!(parent.answers.is_empty());
    let aaaa = data.lookup(&q("n1.web.muster.test."), RecordType::AAAA);
    assert_eq!(aaaa.code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    let outside = data.lookup(&q("example.com."), RecordType::A);
    assert_eq!(outside.code, ResponseCode::Refused);
    let soa = data.lookup(&q("muster.test."), RecordType::SOA);
    assert!(matches!(soa.answers[0].data(), RData::SOA(s) if s.serial() == 7));
    let ns = data.lookup(&q("muster.test."), RecordType::NS);
    assert_eq!(ns.answers.len(), 1);
}

/// Unhealthy nodes leave the round-robin but keep their own names;
/// terminated ones lose everything.
#[test]
fn states_decide_records() {
    let data = zone(&[
        node("web", "up", NodeState::Deployed, Some([54, 0, 0, 1])),
        node("web", "down", NodeState::Unreachable, Some([54, 0, 0, 2])),
        node("web", "gone", NodeState::Terminated, Some([54, 0, 0, 3])),
    ]);
    let round_robin = data.lookup(&q("web.muster.test."), RecordType::A);
    assert_eq!(a_of(&round_robin), vec![Ipv4Addr::new(54, 0, 0, 1)]);
    let down = data.lookup(&q("down.web.muster.test."), RecordType::A);
    assert_eq!(a_of(&down), vec![Ipv4Addr::new(54, 0, 0, 2)]);
    let gone = data.lookup(&q("gone.web.muster.test."), RecordType::A);
    assert_eq!(gone.code, ResponseCode::NXDomain);
}

/// Without a subscriber the desired set is not kept; the first
/// subscriber gets it rebuilt from the snapshot, equal to the model's,
/// and every publish after that.
#[test]
fn desired_set_is_kept_for_subscribers_only() {
    let zone = Zone::new("muster.test", 30).unwrap();
    let first = [
        node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 1])),
        node("web", "n22", NodeState::Deployed, None),
        node("db", "d1", NodeState::Unreachable, Some([54, 0, 0, 9])),
    ];
    zone.publish(&first);
    assert!(zone.desired.borrow().is_empty(), "not kept unasked");
    let mut subscriber = zone.subscribe();
    assert_eq!(
        **subscriber.borrow_and_update(),
        desired_records(zone.name(), &first).unwrap()
    );
    let second = [node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 2]))];
    zone.publish(&second);
    assert!(subscriber.has_changed().unwrap());
    assert_eq!(
        **subscriber.borrow_and_update(),
        desired_records(zone.name(), &second).unwrap()
    );
}

/// Publishing swaps the answers at once and raises the serial.
#[test]
fn publish_replaces_answers() {
    let zone = Zone::new("muster.test", 30).unwrap();
    let before = zone.snapshot();
    let name = q("n1.web.muster.test.");
    assert_eq!(
        before.lookup(&name, RecordType::A).code,
        ResponseCode::NXDomain
    );
    zone.publish(&[node("web", "n1", NodeState::Deployed, Some([54, 0, 0, 1]))]);
    let after = zone.snapshot();
    assert_eq!(
        a_of(&after.lookup(&name, RecordType::A)),
        vec![Ipv4Addr::new(54, 0, 0, 1)]
    );
    let serial = |d: &ZoneData| match d.soa.data() {
        RData::SOA(s) => s.serial(),
        _ => 0,
    };
    assert!(serial(&after) > serial(&before));
}

/// A round robin too big for a UDP answer is answered truncated from its
/// size alone; one that fits is not. The floor never truncates an answer
/// whose encoding would have fitted.
#[test]
fn big_round_robins_are_truncated_without_making_their_records() {
    use hickory_proto::op::{Message, Query};
    const LIMIT: usize = 1232;
    for count in [1usize, 10, 60, 70, 80, 2000] {
        let nodes: Vec<NodeRecordSource> = (0..count)
            .map(|i| {
                let mut n = node("web", &format!("n{i}"), NodeState::Deployed, None);
                n.public_ipv4 = Some(Ipv4Addr::from(0x0b00_0000 + i as u32));
                n
            })
            .collect();
        let zone = zone(&nodes);
        for name in ["web.muster.test.", "x.n0.web.muster.test."] {
            let full = zone.lookup(&q(name), RecordType::A);
            assert!(!full.truncated);
            let mut message = Message::new();
            message.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
            message.add_answers(full.answers.iter().cloned());
            message.add_name_servers(full.name_servers.iter().cloned());
            let encoded = message.to_vec().unwrap().len();
            let within = zone.lookup_within(&q(name), RecordType::A, LIMIT);
            if within.truncated {
                assert!(within.answers.is_empty());
                assert!(
                    encoded > LIMIT,
                    "{count} nodes, {name}: {encoded} bytes fit"
                );
            } else {
                assert_eq!(within, full, "{count} nodes, {name}");
            }
            if name.starts_with("web") {
                assert_eq!(
                    within.truncated,
                    count >= 80,
                    "{count} nodes: {encoded} bytes"
                );
            }
        }
    }
}
