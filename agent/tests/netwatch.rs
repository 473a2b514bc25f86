//! The address watch against the real kernel: in a network namespace of
//! the test's own, add and remove addresses and see what the watch hears.
//! Skipped (and says so) where a namespace cannot be created.

mod netns;

use std::net::Ipv4Addr;
use std::time::Duration;

use muster_agent::netwatch::{AddressEvent, AddressWatch, LocalAddress};
use netns::Netns;

/// How long any awaited event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

async fn next(watch: &mut AddressWatch) -> AddressEvent {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("no address event")
        .expect("the watch failed")
}

/// An IPv4 address added and then removed is heard as such, with its
/// interface and prefix; an IPv6 address in between is not heard at all.
#[tokio::test]
async fn hears_ipv4_addresses_come_and_go() {
    let Some(ns) = Netns::create("hears_ipv4_addresses_come_and_go") else {
        return;
    };
    let runtime = tokio::runtime::Handle::current();
    let mut watch = ns.enter(|| {
        let _runtime = runtime.enter();
        AddressWatch::open().unwrap()
    });
    let address = LocalAddress {
        interface_index: 1,
        label: Some("lo".into()),
        address: Ipv4Addr::new(192, 0, 2, 10),
        prefix_len: 24,
    };

    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "lo"]);
    assert_eq!(next(&mut watch).await, AddressEvent::Added(address.clone()));

    ns.ip(&["-6", "addr", "add", "2001:db8::10/64", "dev", "lo"]);
    ns.ip(&["addr", "del", "192.0.2.10/24", "dev", "lo"]);
    assert_eq!(next(&mut watch).await, AddressEvent::Removed(address));
}

/// A watch opened in one namespace hears nothing of another: it follows
/// the agent's own addresses only.
#[tokio::test]
async fn hears_only_its_own_namespace() {
    let Some(ours) = Netns::create("hears_only_its_own_namespace") else {
        return;
    };
    let Some(theirs) = Netns::create("hears_only_its_own_namespace") else {
        return;
    };
    let runtime = tokio::runtime::Handle::current();
    let mut watch = ours.enter(|| {
        let _runtime = runtime.enter();
        AddressWatch::open().unwrap()
    });
    theirs.ip(&["addr", "add", "198.51.100.7/32", "dev", "lo"]);
    ours.ip(&["addr", "add", "192.0.2.20/32", "dev", "lo"]);
    let event = next(&mut watch).await;
    assert!(
        matches!(&event, AddressEvent::Added(a) if a.address == Ipv4Addr::new(192, 0, 2, 20)),
        "{event:?}"
    );
}
