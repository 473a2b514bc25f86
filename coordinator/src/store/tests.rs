//! The store's schema, writes and reads. Each case of [`cases!`] runs
//! twice: on an in-memory SQLite database (`on_sqlite::…`), and on a fresh
//! database of a real PostgreSQL server ([`every_case_on_postgres`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use muster_proto::{EventSource, NodeState};

use super::pg_server::Postgres;
use super::*;
use lease::LeaseStore;
use sql::Fence;

/// Declares the cases that run on both databases.
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Store::open_in_memory().unwrap())
                }
            )*
        }

        /// Every case, by name.
        const CASES: &[(&str, fn(Store))] = &[$((stringify!($name), $name)),*];
    };
}

cases![
    rotation_retires_user_data_tokens,
    duplicate_cluster_is_refused,
    register_twice_is_one_node,
    failed_register_writes_nothing,
    transitions_are_conditional,
    events_page,
    address_change_is_recorded,
    unseen_is_marked_and_cleared,
    launch_jobs_count_their_nodes,
    coordinator_id_and_launch_regions_are_kept,
    prune_deletes_only_old_history,
    prune_takes_thousands_at_once,
    nodes_by_id_reads_those_that_exist,
    heard_is_shared_between_replicas,
];

/// Every case on PostgreSQL, each in a database of its own on one server.
#[test]
fn every_case_on_postgres() {
    let server = Postgres::start();
    for (name, case) in CASES {
        server.create_database(name);
        let store = Store::open_postgres(&server.url(name))
            .unwrap_or_else(|e| panic!("{name}: opening the store: {e}"));
        eprintln!("on PostgreSQL: {name}");
        case(store);
    }
}

/// Rotating the join token sets its hash and expiry and retires the
/// user data join tokens, keeping launch and bring-your-own ones.
fn rotation_retires_user_data_tokens(store: Store) {
    let cluster = store.create_cluster("web", "old", None).unwrap();
    for (purpose, hash) in [
        (TokenPurpose::Join, "j"),
        (TokenPurpose::Launch, "l"),
        (TokenPurpose::Byon, "b"),
    ] {
        store
            .add_cluster_token(cluster.id, purpose, hash, (Some(7), None))
            .unwrap();
    }
    store
        .rotate_join_token(cluster.id, "new", Some(42))
        .unwrap();
    let rotated = store.cluster("web").unwrap().unwrap();
    assert_eq!(rotated.join_token_hash, "new");
    assert_eq!(rotated.join_token_expires_at, Some(42));
    assert_eq!(store.cluster_token("j").unwrap(), None);
    assert_eq!(
        store.cluster_token("l").unwrap(),
        Some(ClusterToken {
            id: 2,
            cluster_id: cluster.id,
            purpose: TokenPurpose::Launch,
            expires_at: Some(7),
            max_nodes: None,
        })
    );
    assert_eq!(
        store.cluster_token("b").unwrap().map(|t| t.purpose),
        Some(TokenPurpose::Byon)
    );
}

fn registration<'a>(cluster_id: i64, credential_hash: &'a str) -> NodeRegistration<'a> {
    NodeRegistration {
        cluster_id,
        name: "i-0123456789abcdef0",
        instance_id: "i-0123456789abcdef0",
        availability_zone: "us-east-1a",
        region: "us-east-1",
        private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
        public_ipv4: Some(Ipv4Addr::new(54, 0, 0, 5)),
        credential_hash,
        byon: false,
        admitted_by: AdmittedBy::ClusterToken,
        ipv6: None,
    }
}

/// A fresh file is migrated to the newest schema, and reopening it is a no-op.
#[test]
fn migrations_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("muster.db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    store.create_cluster("web", "h", None).unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.clusters().unwrap().len(), 1);
}

/// A file from a newer build is refused rather than misread.
#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("muster.db");
    drop(Store::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    assert!(matches!(
        Store::open(&path),
        Err(StoreError::TooNew { found: 99, .. })
    ));
}

/// Cluster names are unique.
fn duplicate_cluster_is_refused(store: Store) {
    store.create_cluster("web", "h", None).unwrap();
    assert!(matches!(
        store.create_cluster("web", "h2", None),
        Err(StoreError::ClusterExists(_))
    ));
    assert_eq!(store.clusters().unwrap().len(), 1);
}

/// A second register of the same instance updates the same node and
/// rotates its credential; both registers are recorded as events.
fn register_twice_is_one_node(store: Store) {
    let cluster = store.create_cluster("web", "h", None).unwrap();
    let first = store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    let mut again = registration(cluster.id, "c2");
    again.public_ipv4 = Some(Ipv4Addr::new(54, 0, 0, 6));
    let second = store.register_node(&again, "re-registered").unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(second.credential_hash.as_deref(), Some("c2"));
    assert_eq!(second.public_ipv4, Some(Ipv4Addr::new(54, 0, 0, 6)));
    assert_eq!(store.nodes(None).unwrap().len(), 1);
    let events = store.events(first.id).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].from, None);
    assert_eq!(events[1].from, Some(NodeState::Deployed));
}

/// A register that breaks a constraint leaves no node and no event behind.
fn failed_register_writes_nothing(store: Store) {
    let cluster = store.create_cluster("web", "h", None).unwrap();
    store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    // Another instance with the same credential hash violates UNIQUE.
    let mut other = registration(cluster.id, "c1");
    other.instance_id = "i-0123456789abcdef1";
    other.name = "i-0123456789abcdef1";
    assert!(store.register_node(&other, "registered").is_err());
    assert_eq!(store.nodes(None).unwrap().len(), 1);
    assert!(store
        .node_by_instance("i-0123456789abcdef1")
        .unwrap()
        .is_none());
}

/// A transition from the state the node is in lands with its event; one
/// from a state it has left already writes nothing.
fn transitions_are_conditional(store: Store) {
    let cluster = store.create_cluster("web", "h", None).unwrap();
    let node = store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    assert!(store
        .transition(
            node.id,
            (NodeState::Deployed, NodeState::Unreachable),
            "silent",
            EventSource::Liveness,
            false,
        )
        .unwrap());
    assert!(!store
        .transition(
            node.id,
            (NodeState::Deployed, NodeState::Stopped),
            "stale",
            EventSource::Sweep,
            false,
        )
        .unwrap());
    let node = store.node("web", &node.name).unwrap().unwrap();
    assert_eq!(node.state, NodeState::Unreachable);
    let events = store.events(node.id).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].source, EventSource::Liveness);
    assert_eq!(events[1].to, NodeState::Unreachable);
}

/// Events page by sequence number, and the latest ones come oldest first.
fn events_page(store: Store) {
    let cluster = store.create_cluster("web", "h", None).unwrap();
    let node = store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    for i in 0..9 {
        store
            .update_addresses(
                node.id,
                NodeState::Deployed,
                (
                    Some(Ipv4Addr::new(10, 0, 0, 5)),
                    Some(Ipv4Addr::new(3, 3, 3, i)),
                    None,
                ),
                &format!("change {i}"),
                EventSource::Agent,
            )
            .unwrap();
    }
    assert_eq!(store.events_total(node.id).unwrap(), 10);
    let first = store.events_after(node.id, 0, 4).unwrap();
    assert_eq!(first.len(), 4);
    let second = store.events_after(node.id, first[3].seq, 4).unwrap();
    assert_eq!(second[0].reason, "change 3");
    assert!(second.iter().all(|e| e.seq > first[3].seq));
    let latest = store.latest_events(node.id, 3).unwrap();
    let reasons: Vec<_> = latest.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, vec!["change 6", "change 7", "change 8"]);
    assert_eq!(store.latest_events(node.id, 100).unwrap().len(), 10);
}

/// Address changes are stored and leave an event.
fn address_change_is_recorded(store: Store) {
    let cluster = store.create_cluster("web", "h", None).unwrap();
    let node = store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    store
        .update_addresses(
            node.id,
            NodeState::Deployed,
            (
                Some(Ipv4Addr::new(10, 0, 0, 5)),
                Some(Ipv4Addr::new(3, 3, 3, 3)),
                Some("2600:1f18::3".parse().unwrap()),
            ),
            "public address changed",
            EventSource::Agent,
        )
        .unwrap();
    let node = store.node("web", &node.name).unwrap().unwrap();
    assert_eq!(node.public_ipv4, Some(Ipv4Addr::new(3, 3, 3, 3)));
    assert_eq!(
        node.ipv6,
        Some("2600:1f18::3".parse().unwrap()),
        "stored and read back"
    );
    assert_eq!(store.events(node.id).unwrap().len(), 2);
    assert_eq!(store.nodes(Some("other")).unwrap().len(), 0);
}

/// A node terminated only because EC2 did not know it is marked so, and a
/// register clears the mark; the coordinator's own facts are kept.
fn unseen_is_marked_and_cleared(store: Store) {
    let cluster = store.create_cluster("web", "h", None).unwrap();
    let node = store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    assert!(!node.unseen);
    assert!(store
        .transition(
            node.id,
            (NodeState::Deployed, NodeState::Terminated),
            "EC2 has not known the instance for 3 sweeps in a row",
            EventSource::Sweep,
            true,
        )
        .unwrap());
    let gone = store.node("web", &node.name).unwrap().unwrap();
    assert_eq!((gone.state, gone.unseen), (NodeState::Terminated, true));
    let back = store
        .register_node(&registration(cluster.id, "c2"), "back")
        .unwrap();
    assert_eq!((back.state, back.unseen), (NodeState::Deployed, false));

    assert_eq!(store.meta(META_ACCOUNT).unwrap(), None);
    store.set_meta(META_ACCOUNT, "111111111111").unwrap();
    store.set_meta(META_ACCOUNT, "222222222222").unwrap();
    assert_eq!(
        store.meta(META_ACCOUNT).unwrap().as_deref(),
        Some("222222222222")
    );
}

/// An online copy restores as the same store; a restore never overwrites
/// a store, and refuses a file that is not one.
#[test]
fn backups_restore_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("muster.db")).unwrap();
    let cluster = store.create_cluster("web", "h", None).unwrap();
    store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    let copy = dir.path().join("copy.db");
    store.backup_to(&copy).unwrap();

    let restored_path = dir.path().join("restored.db");
    let restored = Store::restore(&copy, &restored_path).unwrap();
    assert_eq!(restored.clusters().unwrap(), store.clusters().unwrap());
    assert_eq!(restored.nodes(None).unwrap(), store.nodes(None).unwrap());

    let again = Store::restore(&copy, &restored_path);
    assert!(
        matches!(again, Err(StoreError::Restore { .. })),
        "{again:?}"
    );
    assert_eq!(restored.nodes(None).unwrap().len(), 1, "untouched");

    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a database").unwrap();
    let refused = Store::restore(&junk, &dir.path().join("other.db"));
    assert!(refused.is_err());
    assert!(!dir.path().join("other.db").exists(), "nothing written");
}

/// A launch job is unfinished until finished, counts the nodes stored
/// under it, and goes with an undone cluster.
fn launch_jobs_count_their_nodes(store: Store) {
    let cluster = store.create_cluster("web", "h", Some("{}")).unwrap();
    store.begin_launch_job("lj-1", cluster.id, 3).unwrap();
    let launched = |id: &str| LaunchedInstance {
        instance_id: id.to_owned(),
        subnet_id: "subnet-1".to_owned(),
        availability_zone: "us-east-1a".to_owned(),
        private_ipv4: None,
    };
    store
        .insert_launched(
            cluster.id,
            "us-east-1",
            &[launched("i-1"), launched("i-2")],
            Some("lj-1"),
            ("launched", EventSource::Operator),
        )
        .unwrap();
    store
        .insert_launched(
            cluster.id,
            "us-east-1",
            &[launched("i-3")],
            None,
            ("adopted", EventSource::Sweep),
        )
        .unwrap();
    let jobs = store.unfinished_launch_jobs().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].cluster.as_str(), jobs[0].count, jobs[0].launched),
        ("web", 3, 2)
    );
    store.finish_launch_job("lj-1").unwrap();
    assert!(store.unfinished_launch_jobs().unwrap().is_empty());

    let other = store.create_cluster("db", "h2", Some("{}")).unwrap();
    store.begin_launch_job("lj-2", other.id, 1).unwrap();
    assert!(store.delete_empty_cluster(other.id).unwrap());
    assert!(store.unfinished_launch_jobs().unwrap().is_empty());
}

/// The coordinator's id is minted once and kept; launch regions are a set.
fn coordinator_id_and_launch_regions_are_kept(store: Store) {
    let id = store.coordinator_id(|| "first".to_owned()).unwrap();
    assert_eq!(id, "first");
    assert_eq!(
        store.coordinator_id(|| "second".to_owned()).unwrap(),
        "first"
    );
    store.add_launch_region("us-west-2").unwrap();
    store.add_launch_region("us-east-1").unwrap();
    store.add_launch_region("us-west-2").unwrap();
    assert_eq!(store.launch_regions().unwrap(), ["us-east-1", "us-west-2"]);
}

/// Pruning deletes terminated nodes older than the cut with their events,
/// expired tokens and finished jobs, and nothing newer or still live.
fn prune_deletes_only_old_history(store: Store) {
    let cluster = store.create_cluster("web", "h", Some("{}")).unwrap();
    let launched = |id: &str| LaunchedInstance {
        instance_id: id.to_owned(),
        subnet_id: "subnet-1".to_owned(),
        availability_zone: "us-east-1a".to_owned(),
        private_ipv4: None,
    };
    let nodes = store
        .insert_launched(
            cluster.id,
            "us-east-1",
            &[launched("i-old"), launched("i-new"), launched("i-live")],
            None,
            ("launched", EventSource::Operator),
        )
        .unwrap();
    for sql in [
        "UPDATE nodes SET state = 'terminated', updated_at = 1000 WHERE instance_id = 'i-old'",
        "UPDATE nodes SET state = 'terminated', updated_at = 5000 WHERE instance_id = 'i-new'",
        "UPDATE nodes SET updated_at = 1000 WHERE instance_id = 'i-live'",
    ] {
        store.with(|db| Ok(db.execute(sql, &[])?)).unwrap();
    }
    store
        .add_cluster_token(
            cluster.id,
            TokenPurpose::Join,
            "expired",
            (Some(1000), None),
        )
        .unwrap();
    store
        .add_cluster_token(cluster.id, TokenPurpose::Join, "valid", (Some(9000), None))
        .unwrap();
    store
        .add_cluster_token(cluster.id, TokenPurpose::Launch, "forever", (None, None))
        .unwrap();
    store.begin_launch_job("lj-done", cluster.id, 1).unwrap();
    store.finish_launch_job("lj-done").unwrap();
    store.begin_launch_job("lj-open", cluster.id, 1).unwrap();

    // Finished just now, the job is newer than the cut at 2000.
    let pruned = store.prune(2000).unwrap();
    assert_eq!(pruned.nodes, vec![nodes[0].id]);
    assert_eq!((pruned.tokens, pruned.jobs), (1, 0));
    assert!(store.node_by_instance("i-old").unwrap().is_none());
    assert!(store.events(nodes[0].id).unwrap().is_empty());
    assert!(store.node_by_instance("i-new").unwrap().is_some());
    assert!(store.node_by_instance("i-live").unwrap().is_some());
    assert_eq!(store.cluster_token("expired").unwrap(), None);
    assert!(store.cluster_token("valid").unwrap().is_some());
    assert!(store.cluster_token("forever").unwrap().is_some());
    let jobs = store.prune(now_ms() + 1).unwrap().jobs;
    assert_eq!(jobs, 1, "the finished job goes, the open one stays");
    assert_eq!(store.unfinished_launch_jobs().unwrap().len(), 1);
}

/// `n` instances, as a launch reports them: `i-` and 17 hex digits.
fn launched_instances(n: usize) -> Vec<LaunchedInstance> {
    (0..n)
        .map(|i| LaunchedInstance {
            instance_id: format!("i-{i:017x}"),
            subnet_id: "subnet-1".to_owned(),
            availability_zone: "us-east-1a".to_owned(),
            private_ipv4: None,
        })
        .collect()
}

/// Thousands of terminated nodes older than the cut go in one prune, with
/// their events; the live node launched with them stays.
fn prune_takes_thousands_at_once(store: Store) {
    let cluster = store.create_cluster("web", "h", Some("{}")).unwrap();
    let instances = launched_instances(3001);
    let nodes = store
        .insert_launched(
            cluster.id,
            "us-east-1",
            &instances,
            None,
            ("launched", EventSource::Operator),
        )
        .unwrap();
    let live = &instances[3000].instance_id;
    store
        .with(|db| {
            Ok(db.execute(
                "UPDATE nodes SET state = 'terminated', updated_at = 1000 \
                 WHERE instance_id != ?1",
                sql::args![live],
            )?)
        })
        .unwrap();
    let pruned = store.prune(2000).unwrap();
    assert_eq!(pruned.nodes.len(), 3000);
    assert!(store.events(nodes[0].id).unwrap().is_empty());
    assert_eq!(store.nodes(Some("web")).unwrap().len(), 1);
    assert!(store.node_by_instance(live).unwrap().is_some());
}

/// Nodes read by id: those that exist, whatever else is asked for.
fn nodes_by_id_reads_those_that_exist(store: Store) {
    let cluster = store.create_cluster("web", "h", None).unwrap();
    let node = store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    let read = store.nodes_by_id(&[node.id, node.id + 1000]).unwrap();
    assert_eq!(read, vec![node]);
    assert!(store.nodes_by_id(&[]).unwrap().is_empty());
}

/// What a replica publishes it heard is read by the others, not by
/// itself, each node silent for at least what was published, and a new
/// publication replaces the last; on SQLite, where one coordinator hears
/// everything, nothing is kept.
fn heard_is_shared_between_replicas(store: Store) {
    store.publish_heard("a", &[(1, 200), (2, 0)]).unwrap();
    let by_b = store.heard_elsewhere("b", Duration::from_secs(60)).unwrap();
    if !store.is_postgres() {
        assert!(by_b.is_empty());
        return;
    }
    let ids: Vec<i64> = by_b.iter().map(|h| h.node_id).collect();
    assert_eq!(ids, [1, 2]);
    assert!(by_b[0].silent_for >= Duration::from_millis(200), "{by_b:?}");
    assert!(by_b[0].silent_for < Duration::from_secs(10), "{by_b:?}");
    assert!(store
        .heard_elsewhere("a", Duration::from_secs(60))
        .unwrap()
        .is_empty());
    store.publish_heard("a", &[(3, 5)]).unwrap();
    let again = store.heard_elsewhere("b", Duration::from_secs(60)).unwrap();
    assert_eq!(again.iter().map(|h| h.node_id).collect::<Vec<_>>(), [3]);
}

/// Every write to a row of `nodes` is announced with the row's id once
/// its transaction commits, by the server process of the store's own
/// connection: what the other replicas take in, and this one leaves out.
#[test]
fn postgres_announces_each_written_node() {
    use postgres::fallible_iterator::FallibleIterator;
    let server = Postgres::start();
    server.create_database("announce");
    let store = Store::open_postgres(&server.url("announce")).unwrap();
    let mut listener = store.listen(&[lease::NODES_CHANNEL]).unwrap().unwrap();
    let cluster = store.create_cluster("web", "h", None).unwrap();
    let node = store
        .register_node(&registration(cluster.id, "c1"), "registered")
        .unwrap();
    store.delete_node(node.id).unwrap();
    let mut notices = listener.notifications();
    let heard: Vec<(u32, String)> = notices
        .timeout_iter(Duration::from_secs(5))
        .take(2)
        .map(|n| Ok((n.process_id() as u32, n.payload().to_owned())))
        .collect()
        .unwrap();
    // Named by the store's own connections, which a replica leaves out.
    let own = store.own_sessions();
    let id = node.id.to_string();
    for (pid, payload) in heard {
        assert!(own.contains(&pid), "{pid} is one of {own:?}");
        assert_eq!(payload, id);
    }
}

/// A register on one coordinator meeting, on another, a `cluster rm` or
/// a `node rm` in flight waits for it, then sees it and writes nothing:
/// it never brings back a node the other is removing.
#[test]
fn postgres_register_waits_for_a_removal_in_flight() {
    let server = Postgres::start();
    server.create_database("inflight");
    let url = server.url("inflight");
    let store = Store::open_postgres(&url).unwrap();
    let web = store.create_cluster("web", "h", None).unwrap();
    let db = store.create_cluster("db", "h", None).unwrap();
    let node = store
        .register_node(&registration(db.id, "c1"), "registered")
        .unwrap();
    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let removals = [
        (
            "UPDATE clusters SET state = 'removing' WHERE id = $1",
            web.id,
        ),
        (
            "UPDATE nodes SET state = 'terminating' WHERE id = $1",
            node.id,
        ),
    ];
    for ((removal, id), cluster) in removals.into_iter().zip([web.id, db.id]) {
        let mut removing = other.transaction().unwrap();
        removing.execute(removal, &[&id]).unwrap();
        let registered = std::thread::scope(|scope| {
            let register =
                scope.spawn(|| store.register_node(&registration(cluster, "c2"), "registered"));
            std::thread::sleep(Duration::from_millis(300));
            assert!(!register.is_finished(), "{removal}: the register waits");
            removing.commit().unwrap();
            register.join().unwrap()
        });
        assert!(
            matches!(registered, Err(StoreError::Changed { .. })),
            "{removal}: {registered:?}"
        );
    }
    let nodes = store.nodes(None).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state, NodeState::Terminating);
}

/// The store's own server process is forgotten as soon as its connection
/// is found gone (the process id may be given to another coordinator's
/// connection next), and the next connection's is known in its stead.
#[test]
fn postgres_forgets_a_lost_session() {
    let server = Postgres::start();
    server.create_database("session");
    let store = Store::open_postgres(&server.url("session")).unwrap();
    store.create_cluster("web", "h", None).unwrap();
    let sessions = store.own_sessions();
    assert_eq!(
        sessions.len(),
        1,
        "calls one after another share one connection"
    );
    let first = *sessions.first().unwrap();
    server.psql("session", &format!("SELECT pg_terminate_backend({first})"));
    let lost = store.create_cluster("db", "h", None);
    assert!(
        matches!(&lost, Err(e) if e.is_unavailable()),
        "the call on the lost connection fails as unavailable: {lost:?}"
    );
    assert!(
        store.own_sessions().is_empty(),
        "the lost process is forgotten"
    );
    store.create_cluster("db", "h", None).unwrap();
    let sessions = store.own_sessions();
    assert_eq!(sessions.len(), 1, "a connection is open again");
    assert!(!sessions.contains(&first));
}

/// The store's calls use a pool: a read goes on while a write waits on a
/// row another connection holds, and no more connections are opened than
/// the pool's size, a call beyond them waiting for one to be given back.
#[test]
fn postgres_reads_pass_a_write_held_up() {
    let server = Postgres::start();
    server.create_database("pool");
    let url = server.url("pool");
    let store = Store::open_postgres_with(&url, 2).unwrap();
    let web = store.create_cluster("web", "h", None).unwrap();
    let db = store.create_cluster("db", "h", None).unwrap();
    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut holding = other.transaction().unwrap();
    holding
        .execute(
            "SELECT id FROM clusters WHERE id = ANY($1) FOR UPDATE",
            &[&vec![web.id, db.id]],
        )
        .unwrap();
    let sessions = |server: &Postgres| {
        server.psql(
            "pool",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'muster-coordinator'",
        )
    };
    std::thread::scope(|scope| {
        // Two registers wait on the clusters' rows, each on a connection.
        let registers: Vec<_> = [(web.id, "i-web"), (db.id, "i-db")]
            .into_iter()
            .map(|(cluster, instance)| {
                let store = &store;
                scope.spawn(move || {
                    let node = NodeRegistration {
                        name: instance,
                        instance_id: instance,
                        ..registration(cluster, instance)
                    };
                    store.register_node(&node, "registered")
                })
            })
            .collect();
        let waiting = "SELECT count(*) FROM pg_stat_activity \
                       WHERE application_name = 'muster-coordinator' AND wait_event_type = 'Lock'";
        let started = std::time::Instant::now();
        while server.psql("pool", waiting).trim() != "2" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "both registers wait on a row: {}",
                server.psql(
                    "pool",
                    "SELECT state, wait_event_type, query FROM pg_stat_activity"
                )
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(sessions(&server).trim(), "2");
        // A third call finds both connections busy: it waits, opening none.
        let read = scope.spawn(|| store.clusters());
        std::thread::sleep(Duration::from_millis(300));
        assert!(!read.is_finished(), "the read waits for a connection");
        assert_eq!(
            sessions(&server).trim(),
            "2",
            "no more than the pool's size"
        );
        holding.commit().unwrap();
        for register in registers {
            register.join().unwrap().unwrap();
        }
        assert_eq!(read.join().unwrap().unwrap().len(), 2);
    });
    // With one write held up, a read goes on beside it.
    let mut holding = other.transaction().unwrap();
    holding
        .execute(
            "SELECT id FROM clusters WHERE id = $1 FOR UPDATE",
            &[&web.id],
        )
        .unwrap();
    let late = NodeRegistration {
        name: "i-late",
        instance_id: "i-late",
        ..registration(web.id, "late")
    };
    std::thread::scope(|scope| {
        let register = scope.spawn(|| store.register_node(&late, "registered"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(!register.is_finished(), "the register waits on the row");
        assert_eq!(store.nodes(None).unwrap().len(), 2, "the read goes on");
        assert!(!register.is_finished());
        holding.commit().unwrap();
        register.join().unwrap().unwrap();
    });
    assert_eq!(store.nodes(None).unwrap().len(), 3);
}

/// Two coordinators starting at once on an empty database make the schema
/// once; both open it, and exactly one of them takes the leader's lease.
#[test]
fn postgres_migrates_once_and_leases_to_one() {
    let server = Postgres::start();
    server.create_database("race");
    let url = server.url("race");
    let terms: Vec<Option<i64>> = std::thread::scope(|scope| {
        let racers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let url = &url;
                scope.spawn(move || {
                    let store = Store::open_postgres(url).unwrap();
                    let lease = LeaseStore::open(url).unwrap();
                    let term = lease.try_acquire(name, Duration::from_secs(60)).unwrap();
                    drop(store);
                    term
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut terms: Vec<_> = terms.into_iter().flatten().collect();
    terms.sort();
    assert_eq!(terms, [1], "one coordinator leads");
    assert_eq!(
        server.psql("race", "SELECT count(*), max(version) FROM muster_schema"),
        format!("1|{}", MIGRATIONS.len())
    );
    let again = Store::open_postgres(&url).unwrap();
    assert_eq!(again.schema_version().unwrap(), MIGRATIONS.len() as i64);
}

/// The lease passes on only once its holder lets it run out or releases
/// it, each time with a higher term; from then on the old leader's writes
/// fail as unavailable and write nothing, one statement or a transaction,
/// and its renewal says it lost.
#[test]
fn postgres_lease_fences_the_old_leader() {
    let server = Postgres::start();
    server.create_database("lease");
    let url = server.url("lease");
    let (old, new) = (
        Store::open_postgres(&url).unwrap(),
        Store::open_postgres(&url).unwrap(),
    );
    let lease = LeaseStore::open(&url).unwrap();
    let short = Duration::from_millis(300);

    let first = lease
        .try_acquire("old", short)
        .unwrap()
        .expect("no one leads yet");
    old.fence_by(Fence {
        holder: "old".into(),
        term: first,
    });
    assert_eq!(
        lease.try_acquire("new", short).unwrap(),
        None,
        "old holds it"
    );
    let web = old.create_cluster("web", "h", None).unwrap();
    assert!(lease.renew("old", first, short).unwrap());

    std::thread::sleep(short * 2);
    let second = lease
        .try_acquire("new", short)
        .unwrap()
        .expect("old let it run out");
    assert_eq!(second, first + 1);
    new.fence_by(Fence {
        holder: "new".into(),
        term: second,
    });

    let error = old.create_cluster("db", "h", None).unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(error.to_string().contains("lease"), "{error}");
    let instances = launched_instances(3);
    let launched = ("launched", EventSource::Operator);
    let error = old
        .insert_launched(web.id, "us-east-1", &instances, None, launched)
        .unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert_eq!(
        server.psql(
            "lease",
            "SELECT (SELECT count(*) FROM clusters), (SELECT count(*) FROM nodes)"
        ),
        "1|0",
        "the old leader wrote nothing once the lease was taken over"
    );
    assert!(
        !lease.renew("old", first, short).unwrap(),
        "old learns it lost"
    );
    assert_eq!(old.clusters().unwrap().len(), 1, "reads go on");

    // The new leader writes; released, the lease passes on at once.
    new.insert_launched(web.id, "us-east-1", &instances, None, launched)
        .unwrap();
    lease.release("new", second).unwrap();
    assert_eq!(
        lease.try_acquire("old", Duration::from_secs(60)).unwrap(),
        Some(second + 1)
    );
    let row = lease.read().unwrap().unwrap();
    assert_eq!((row.holder.as_str(), row.term), ("old", second + 1));
    assert!(row.expires_at > row.now);
    // A holder restarted takes its own lease back at once, with a new term
    // (fencing whatever was left of it); nobody else can.
    assert_eq!(lease.try_acquire("new", short).unwrap(), None);
    assert_eq!(lease.try_acquire("old", short).unwrap(), Some(second + 2));
}

/// PostgreSQL stopped and started again: while it is away every call
/// fails as unavailable (never as a wrong answer); once it is back the
/// store reconnects by itself and has everything it acknowledged.
#[test]
fn postgres_away_is_unavailable_and_back_is_whole() {
    let server = Postgres::start();
    server.create_database("away");
    let store = Store::open_postgres(&server.url("away")).unwrap();
    store.create_cluster("web", "h", None).unwrap();

    server.stop();
    for _ in 0..3 {
        let error = store.clusters().unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        let error = store.create_cluster("db", "h", None).unwrap_err();
        assert!(error.is_unavailable(), "{error}");
    }

    server.start_again();
    let names: Vec<String> = store
        .clusters()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["web"]);
    store.create_cluster("db", "h", None).unwrap();
    assert_eq!(server.psql("away", "SELECT count(*) FROM clusters"), "2");

    // Killed outright, the server loses no committed write either.
    server.kill();
    assert!(store.clusters().unwrap_err().is_unavailable());
    server.start_again();
    assert_eq!(store.clusters().unwrap().len(), 2);
}

/// A CA, and a certificate it signed for `name`, with its key: PEMs.
fn certificates(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// With `sslrootcert`, the store speaks TLS to PostgreSQL and trusts only
/// a certificate that CA signed for the host it dialled; a server it
/// cannot check is refused before anything is sent.
#[test]
fn postgres_over_tls_checks_the_server() {
    let server = Postgres::start();
    let (ca, cert, key) = certificates("127.0.0.1");
    server.serve_tls(&cert, &key);
    server.create_database("tls");
    let dir = tempfile::tempdir().unwrap();
    let write = |file: &str, pem: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let url = |root: &str| {
        format!(
            "postgres://muster@127.0.0.1:{}/tls?sslrootcert={root}",
            server.port()
        )
    };

    let store = Store::open_postgres(&url(&write("ca.pem", &ca))).unwrap();
    store.create_cluster("web", "h", None).unwrap();
    assert_eq!(
        server.psql(
            "tls",
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'muster-coordinator'"
        ),
        "t",
        "the store's connection is encrypted"
    );
    drop(store);

    let (stranger, _, _) = certificates("127.0.0.1");
    let error = Store::open_postgres(&url(&write("stranger.pem", &stranger)))
        .unwrap_err()
        .to_string();
    assert!(error.contains("certificate"), "{error}");

    let (other_ca, other_cert, other_key) = certificates("db.internal");
    server.serve_tls(&other_cert, &other_key);
    let error = Store::open_postgres(&url(&write("other.pem", &other_ca)))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("certificate"),
        "a name it was not made for: {error}"
    );
    assert_eq!(server.psql("tls", "SELECT count(*) FROM clusters"), "1");
}
