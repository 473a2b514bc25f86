//! Route53 stories: the real coordinator, or the real provider, writes
//! records into a hosted zone in moto's Route53. What landed is read back
//! with the SDK's ListResourceRecordSets, page by page, never from the
//! coordinator; edits "by hand" go through the SDK as an operator's would.
//! Batching and throttling are watched by a proxy in front of moto.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use aws_sdk_ec2::Client as Ec2Client;
use aws_sdk_route53::Client;
use hickory_proto::rr::Name;
use muster_coordinator::config::Route53Zone;
use muster_coordinator::dns::provider::{Change, DnsProvider, Outcome};
use muster_coordinator::dns::route53::{Route53, MAX_RECORDS, MAX_VALUE_CHARS};
use muster_coordinator::dns::RecordData;
use muster_proto::{cluster_dns_name, node_dns_name, node_internal_dns_name};
use muster_tests::route53::{self as r53, RecordSet};
use muster_tests::{ec2, wait_until, Agent, Coordinator, Imds, Moto, Route53Proxy, POLL, ZONE};

/// The cluster every story uses.
const CLUSTER: &str = "web";

/// An address from TEST-NET-2 (RFC 5737) that EC2 never gives out.
const HAND_MADE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// How long a story waits for Route53 to show what it expects.
const PATIENCE: Duration = Duration::from_secs(40);

type Records = BTreeMap<(String, String), RecordSet>;

/// A coordinator on its own moto, writing to a hosted zone there.
struct Scene {
    // Dropped in this order: agents, coordinator, moto.
    agents: Vec<(Agent, Imds)>,
    coordinator: Coordinator,
    route53: Client,
    zone_id: String,
    ec2: Ec2Client,
    join_token: String,
    _moto: Moto,
}

impl Scene {
    /// The hosted zone is made (and `before` run against it) before the
    /// coordinator starts.
    async fn new(extra_args: &[&str], before: impl AsyncFnOnce(&Client, &str)) -> Scene {
        let moto = Moto::start().await;
        let ec2 = ec2::client(&moto.endpoint()).await;
        let route53 = r53::client(&moto.endpoint()).await;
        let zone_id = r53::create_zone(&route53, ZONE).await;
        before(&route53, &zone_id).await;
        let mut args = vec!["--dns-provider", "route53", "--route53-zone", &zone_id];
        args.extend_from_slice(extra_args);
        let coordinator = Coordinator::start_with(&moto, &args).await;
        let created = coordinator.create_cluster(CLUSTER).await;
        Scene {
            agents: Vec::new(),
            coordinator,
            route53,
            zone_id,
            ec2,
            join_token: created.join_token,
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

    async fn dns_status_until(
        &self,
        accept: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until(PATIENCE, POLL, || self.dns_status(), accept).await
    }

    async fn records_until(&self, done: impl Fn(&Records) -> bool) -> Records {
        r53::records_until(&self.route53, &self.zone_id, PATIENCE, done).await
    }
}

/// `(name with a trailing dot, type)`.
fn key(name: &str, kind: &str) -> (String, String) {
    (format!("{}.", name.trim_end_matches('.')), kind.to_owned())
}

fn values(records: &Records, name: &str, kind: &str) -> Vec<String> {
    records
        .get(&key(name, kind))
        .map(|set| set.values.clone())
        .unwrap_or_default()
}

/// The ownership TXT value of `owner`, quoted as Route53 keeps it.
fn owner_txt(owner: &str) -> String {
    format!("\"heritage=muster,muster/owner={owner}\"")
}

/// Registered nodes' A, internal, wildcard and round-robin records land in
/// the hosted zone, each name beside its ownership TXT; a round-robin name
/// made by hand without one is left alone through several full passes and
/// reported as a conflict; the last change's id and status are shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_ownership_land_in_route53() {
    let round_robin = cluster_dns_name(CLUSTER, ZONE);
    let hand_made = HAND_MADE.to_string();
    let mut scene = Scene::new(
        &["--dns-reconcile-interval", "2s"],
        async |client: &Client, zone_id: &str| {
            r53::put(client, zone_id, &round_robin, "A", &[hand_made.as_str()]).await;
        },
    )
    .await;
    let first = scene.add_node().await;
    let second = scene.add_node().await;
    let owner = std::fs::read_to_string(scene.coordinator.data_dir().join("dns-owner-id"))
        .expect("the owner id is kept in the data dir")
        .trim()
        .to_owned();
    let mut views = Vec::new();
    for id in [&first, &second] {
        views.push((id, ec2::describe(&scene.ec2, id).await));
    }
    let records = scene
        .records_until(|r| {
            views.iter().all(|(id, view)| {
                let public = view.public_ipv4.map(|ip| ip.to_string());
                values(r, &node_dns_name(id, CLUSTER, ZONE), "A") == Vec::from_iter(public)
                    && r.contains_key(&key(
                        &format!("*.{}", node_dns_name(id, CLUSTER, ZONE)),
                        "CNAME",
                    ))
                    && r.contains_key(&key(&node_internal_dns_name(id, CLUSTER, ZONE), "A"))
            })
        })
        .await;
    for (id, view) in &views {
        let name = node_dns_name(id, CLUSTER, ZONE);
        let public = view.public_ipv4.expect("moto maps a public address");
        let private = view.private_ipv4.expect("moto gives a private address");
        assert_eq!(values(&records, &name, "A"), [public.to_string()], "{name}");
        let internal = node_internal_dns_name(id, CLUSTER, ZONE);
        assert_eq!(
            values(&records, &internal, "A"),
            [private.to_string()],
            "{internal}"
        );
        let wildcard = format!("*.{name}");
        assert_eq!(
            values(&records, &wildcard, "CNAME"),
            [format!("{name}.")],
            "{wildcard} leads to the node"
        );
        for owned in [
            format!("_muster.{name}"),
            format!("_muster.{internal}"),
            format!("_muster-wildcard.{name}"),
        ] {
            assert_eq!(
                values(&records, &owned, "TXT"),
                [owner_txt(&owner)],
                "{owned} is muster's ownership record: {records:#?}"
            );
        }
        assert_eq!(
            records[&key(&name, "A")].ttl,
            Some(30),
            "the TTL is --dns-ttl"
        );
    }

    let status = scene
        .dns_status_until(|s| s["conflicts"].get(format!("{round_robin}.")).is_some())
        .await;
    assert_eq!(status["provider"], "route53", "{status}");
    let why = status["conflicts"][format!("{round_robin}.")]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("ownership"), "the conflict says why: {status}");
    assert_eq!(
        status["last_change"]["status"], "INSYNC",
        "the last change is shown with Route53's status: {status}"
    );
    assert!(
        status["last_change"]["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{status}"
    );
    assert!(
        status["last_change"]["submitted_at"].is_string(),
        "{status}"
    );

    // Several full passes later, the hand-made name is as it was made.
    let since = status["last_success_unix"].as_u64().unwrap_or_default();
    let later = scene
        .dns_status_until(|s| {
            s["last_full_reconcile_unix"]
                .as_u64()
                .is_some_and(|full| full > since + 2)
        })
        .await;
    assert!(later["last_full_reconcile_unix"].is_u64(), "{later}");
    let records = r53::records(&scene.route53, &scene.zone_id).await;
    assert_eq!(
        values(&records, &round_robin, "A"),
        [HAND_MADE.to_string()],
        "{round_robin} is left as it was made"
    );
    assert!(
        !records.contains_key(&key(&format!("_muster.{round_robin}"), "TXT")),
        "muster did not claim {round_robin}"
    );
}

/// With `--dns-owner-id` the records carry that id. A node's name whose
/// ownership record was deleted by hand is not deleted when the node goes:
/// it is reported as a conflict, while the node's other names go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_unowned_name_is_a_conflict() {
    let mut scene = Scene::new(
        &["--dns-owner-id", "coord-a", "--sweep-interval", "1s"],
        async |_: &Client, _: &str| {},
    )
    .await;
    let id = scene.add_node().await;
    let name = node_dns_name(&id, CLUSTER, ZONE);
    let internal = node_internal_dns_name(&id, CLUSTER, ZONE);
    let owned = format!("_muster.{name}");
    let records = scene
        .records_until(|r| {
            r.contains_key(&key(&name, "A"))
                && r.contains_key(&key(&internal, "A"))
                && r.contains_key(&key(&format!("*.{name}"), "CNAME"))
                && r.contains_key(&key(&owned, "TXT"))
        })
        .await;
    assert_eq!(
        values(&records, &owned, "TXT"),
        [owner_txt("coord-a")],
        "the ownership record names --dns-owner-id"
    );

    // An operator takes the name over: its ownership record goes.
    let txt = records[&key(&owned, "TXT")].clone();
    r53::delete(
        &scene.route53,
        &scene.zone_id,
        &owned,
        "TXT",
        txt.ttl.unwrap_or(30),
        &txt.values,
    )
    .await;
    let kept = values(&records, &name, "A");
    assert!(!kept.is_empty(), "{name} was written: {records:#?}");

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
    let records = scene
        .records_until(|r| !r.contains_key(&key(&internal, "A")))
        .await;
    assert!(
        !records.contains_key(&key(&internal, "A")),
        "the node's other names go: {records:#?}"
    );
    assert!(!records.contains_key(&key(&format!("*.{name}"), "CNAME")));
    assert_eq!(
        values(&records, &name, "A"),
        kept,
        "{name} is left as the operator has it"
    );
}

/// A provider writing to the hosted zone `zone_id` at `endpoint`.
async fn provider(endpoint: &str, zone_id: &str) -> Route53 {
    let base = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_route53::config::Region::new(ec2::TEST_REGION))
        .credentials_provider(aws_sdk_route53::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "muster-tests",
        ))
        .endpoint_url(endpoint)
        .load()
        .await;
    Route53::new(
        Route53::client_from(&base),
        Route53Zone::Id(zone_id.to_owned()),
        ZONE,
        "bulk",
        30,
        Duration::from_secs(300),
    )
    .expect("a provider")
}

fn upsert(name: &str, data: RecordData) -> Change {
    Change::Upsert {
        name: Name::from_ascii(format!("{name}.")).expect("a name"),
        data,
        owned: false,
    }
}

/// The `i`th address of a /16 starting at `base`.
fn address(base: [u8; 2], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(base[0], base[1], (i / 250) as u8, (i % 250 + 1) as u8)
}

/// A name holding IPv4 and IPv6 addresses lands as an A and an AAAA
/// record set; losing its IPv6 address deletes the AAAA set and leaves the
/// A set; a delete takes both, and the ownership record, away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_land_as_a_and_aaaa_sets() {
    let moto = Moto::start().await;
    let client = r53::client(&moto.endpoint()).await;
    let zone_id = r53::create_zone(&client, ZONE).await;
    let provider = provider(&moto.endpoint(), &zone_id).await;
    let name = format!("n1.bulk.{ZONE}");
    let v4 = std::net::IpAddr::V4(Ipv4Addr::new(54, 0, 0, 1));
    let v6: std::net::IpAddr = "2600:1f18:4f2:e100::5".parse().unwrap();
    let apply = async |changes: Vec<Change>| {
        let applied = provider.apply(&changes).await;
        assert!(applied.error.is_none(), "{:?}", applied.error);
        assert!(applied.outcomes.iter().all(|o| *o == Outcome::Applied));
    };

    apply(vec![upsert(&name, RecordData::Addresses(vec![v4, v6]))]).await;
    let records = r53::records(&client, &zone_id).await;
    assert_eq!(values(&records, &name, "A"), vec![v4.to_string()]);
    assert_eq!(values(&records, &name, "AAAA"), vec![v6.to_string()]);

    let owned = Change::Upsert {
        name: Name::from_ascii(format!("{name}.")).unwrap(),
        data: RecordData::Addresses(vec![v4]),
        owned: true,
    };
    apply(vec![owned]).await;
    let records = r53::records(&client, &zone_id).await;
    assert_eq!(values(&records, &name, "A"), vec![v4.to_string()]);
    assert!(!records.contains_key(&key(&name, "AAAA")), "{records:#?}");

    apply(vec![Change::Delete {
        name: Name::from_ascii(format!("{name}.")).unwrap(),
    }])
    .await;
    let records = r53::records(&client, &zone_id).await;
    assert!(
        records.keys().all(|(n, _)| !n.contains("n1.bulk")),
        "{records:#?}"
    );
}

/// 1,500 new names, then 1,500 moves, go out in as few requests as
/// Route53's limit of 1000 counted records allows (an UPSERT counts
/// twice); 300 long CNAMEs are cut by the 32,000-character limit instead.
/// Every request is within both limits, and everything is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_route53_limits() {
    let moto = Moto::start().await;
    let proxy = Route53Proxy::start(moto.endpoint(), 0).await;
    let client = r53::client(&moto.endpoint()).await;
    let zone_id = r53::create_zone(&client, ZONE).await;
    let provider = provider(&proxy.endpoint(), &zone_id).await;
    let names: Vec<String> = (0..1500).map(|i| format!("h{i}.bulk.{ZONE}")).collect();
    let apply = async |changes: Vec<Change>| {
        proxy.reset();
        let applied = provider.apply(&changes).await;
        assert!(applied.error.is_none(), "{:?}", applied.error);
        assert_eq!(applied.outcomes.len(), changes.len());
        assert!(applied.outcomes.iter().all(|o| *o == Outcome::Applied));
        let costs = proxy.change_costs();
        for cost in &costs {
            assert!(cost.records <= MAX_RECORDS, "{cost:?}");
            assert!(cost.chars <= MAX_VALUE_CHARS, "{cost:?}");
        }
        costs
    };

    // New names: a CREATE of the A record and of its ownership TXT, one
    // counted record each: 500 names a request.
    let created = apply(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| upsert(n, RecordData::a(vec![address([10, 1], i)])))
            .collect(),
    )
    .await;
    assert_eq!(created.len(), 3, "{created:?}");
    assert_eq!(created.iter().map(|c| c.changes).sum::<usize>(), 3000);

    // Moves: one UPSERT per name, counted twice: 500 names a request.
    let moved = apply(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| upsert(n, RecordData::a(vec![address([10, 2], i)])))
            .collect(),
    )
    .await;
    assert_eq!(moved.len(), 3, "{moved:?}");
    assert!(moved.iter().all(|c| c.records == 1000), "{moved:?}");

    let records = r53::records(&client, &zone_id).await;
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            values(&records, name, "A"),
            [address([10, 2], i).to_string()],
            "{name}"
        );
        assert_eq!(
            values(&records, &format!("_muster.{name}"), "TXT"),
            [owner_txt("bulk")]
        );
    }

    // Long CNAME targets: 2 × 201 counted characters an UPSERT, so the
    // character limit binds long before the record limit.
    let target = |i: usize, round: &str| {
        let label = "x".repeat(60);
        format!("{round}{i:04}.{label}.{label}.{label}.{ZONE}.")
    };
    let cnames: Vec<String> = (0..300).map(|i| format!("c{i}.bulk.{ZONE}")).collect();
    apply(
        cnames
            .iter()
            .enumerate()
            .map(|(i, n)| upsert(n, RecordData::Cname(target(i, "a"))))
            .collect(),
    )
    .await;
    let long = apply(
        cnames
            .iter()
            .enumerate()
            .map(|(i, n)| upsert(n, RecordData::Cname(target(i, "b"))))
            .collect(),
    )
    .await;
    let per_change = 2 * target(0, "b").len();
    assert_eq!(
        long.iter().map(|c| c.chars).sum::<usize>(),
        300 * per_change
    );
    assert_eq!(
        long.len(),
        300usize.div_ceil(MAX_VALUE_CHARS / per_change),
        "as few requests as the character limit allows: {long:?}"
    );
    assert!(long.iter().all(|c| c.records < MAX_RECORDS), "{long:?}");
    let records = r53::records(&client, &zone_id).await;
    for (i, name) in cnames.iter().enumerate() {
        assert_eq!(values(&records, name, "CNAME"), [target(i, "b")], "{name}");
    }
}

/// Route53 answers the first ChangeResourceRecordSets with `Throttling`:
/// the provider waits and tries again until the changes are in, and
/// counts what it was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried() {
    let moto = Moto::start().await;
    let proxy = Route53Proxy::start(moto.endpoint(), 0).await;
    let client = r53::client(&moto.endpoint()).await;
    let zone_id = r53::create_zone(&client, ZONE).await;
    let provider = provider(&proxy.endpoint(), &zone_id).await;
    proxy.throttle_next(4);
    let names: Vec<String> = (0..40).map(|i| format!("t{i}.bulk.{ZONE}")).collect();
    let changes: Vec<Change> = names
        .iter()
        .enumerate()
        .map(|(i, n)| upsert(n, RecordData::a(vec![address([10, 3], i)])))
        .collect();
    let applied = provider.apply(&changes).await;
    assert!(applied.error.is_none(), "{:?}", applied.error);
    assert!(applied.outcomes.iter().all(|o| *o == Outcome::Applied));
    assert_eq!(proxy.throttled(), 4, "the proxy throttled four requests");
    assert_eq!(
        proxy.calls().get("ChangeResourceRecordSets"),
        Some(&5),
        "four throttled, then one that went through: {:?}",
        proxy.calls()
    );
    assert_eq!(provider.throttled_total(), 4);
    let records = r53::records(&client, &zone_id).await;
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            values(&records, name, "A"),
            [address([10, 3], i).to_string()],
            "{name}"
        );
    }
}

/// A zone that already holds muster's records (put there beforehand
/// through a CloudFormation stack, as the benchmark seeds its big zone) is
/// taken over by a fresh provider with the same owner id without a write:
/// 60 names (A records, ownership TXTs, a wildcard CNAME) read as its own,
/// and only the one name whose address differs is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_holding_its_records_is_taken_over_without_a_write() {
    let moto = Moto::start().await;
    let proxy = Route53Proxy::start(moto.endpoint(), 0).await;
    let client = r53::client(&moto.endpoint()).await;
    let zone_id = r53::create_zone(&client, ZONE).await;
    let names: Vec<String> = (0..60).map(|i| format!("h{i}.bulk.{ZONE}.")).collect();
    let wildcard = format!("*.{}", names[0]);
    let mut sets: Vec<(String, String, Vec<String>)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        sets.push((
            format!("_muster.{name}"),
            "TXT".into(),
            vec![owner_txt("bulk")],
        ));
        sets.push((
            name.clone(),
            "A".into(),
            vec![address([10, 1], i).to_string()],
        ));
    }
    sets.push((
        format!("_muster-wildcard.{}", names[0]),
        "TXT".into(),
        vec![owner_txt("bulk")],
    ));
    sets.push((wildcard.clone(), "CNAME".into(), vec![names[0].clone()]));
    r53::seed(&moto.endpoint(), &zone_id, 30, &sets).await;

    // The seed itself, read back independently.
    let records = r53::records(&client, &zone_id).await;
    for (name, kind, values) in &sets {
        assert_eq!(
            records.get(&key(name, kind)),
            Some(&RecordSet {
                ttl: Some(30),
                values: values.clone()
            }),
            "{name} {kind}"
        );
    }

    let provider = provider(&proxy.endpoint(), &zone_id).await;
    let moved = address([10, 2], 7);
    let mut changes: Vec<Change> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let ip = if i == 7 { moved } else { address([10, 1], i) };
            upsert(n.trim_end_matches('.'), RecordData::a(vec![ip]))
        })
        .collect();
    changes.push(upsert(
        wildcard.trim_end_matches('.'),
        RecordData::Cname(names[0].clone()),
    ));
    proxy.reset();
    let applied = provider.apply(&changes).await;
    assert!(applied.error.is_none(), "{:?}", applied.error);
    assert!(
        applied.outcomes.iter().all(|o| *o == Outcome::Applied),
        "{:?}",
        applied.outcomes
    );
    let costs = proxy.change_costs();
    assert_eq!(costs.len(), 1, "one request, for the moved name: {costs:?}");
    assert_eq!(costs[0].changes, 1, "{costs:?}");
    let records = r53::records(&client, &zone_id).await;
    assert_eq!(values(&records, &names[7], "A"), [moved.to_string()]);
    assert_eq!(
        values(&records, &names[8], "A"),
        [address([10, 1], 8).to_string()]
    );
}
