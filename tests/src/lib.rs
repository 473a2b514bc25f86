//! End-to-end test harness for muster: it starts the real binaries against
//! real emulators on loopback and reads back what landed in EC2 and DNS with
//! its own clients, never taking the coordinator's word for it.
//!
//! A test tells a short story: start moto, start a coordinator, create a
//! cluster, launch an instance in moto, serve its metadata from the IMDS
//! emulator, start an agent; then change something (an Elastic IP, a
//! stop/start, a restart) and wait until EC2, DNS and the CLI agree.
//!
//! Every process is started on free ports of its own, so tests run in
//! parallel, and is stopped by pid when its guard drops. When a test fails,
//! the guards print the processes' logs.
//!
//! Prerequisites: `scripts/setup` (moto in `$MUSTER_VENV`, BIND; QEMU and
//! mmdebstrap for the boot stories) and
//! `cargo build --workspace --bins` (`scripts/test` does both).
//!
//! # Layout
//! - [`procs`]: binary paths, free ports, the [`procs::Process`] guard.
//! - [`moto`]: one moto server per test ([`moto::Moto`]).
//! - [`ec2`]: the SDK client and the EC2 calls the stories need; what moto
//!   does with public addresses.
//! - [`ec2proxy`]: a proxy in front of moto that counts EC2 calls and
//!   refuses chosen ones the way EC2 does (capacity, unsupported types).
//! - [`imds`]: a strict IMDSv2 emulator serving one instance's live data.
//! - [`coordinator`]: `muster-coordinator serve`, its admin CLI, an HTTPS
//!   client pinned to its CA.
//! - [`agent`]: `muster-agent run` and `muster-agent status`.
//! - [`dns`]: a resolver that asks only one DNS server (the coordinator's,
//!   or BIND).
//! - [`cloudinit`]: user data unpacked, checked with `cloud-init schema`,
//!   and applied to a temporary root as cloud-init would apply it.
//! - [`bind`]: a real BIND taking TSIG-signed RFC 2136 updates for one zone.
//! - [`postgres`]: a PostgreSQL server of a test's own, from Debian's
//!   packages ([`postgres::Postgres`]); the coordinator's unit tests include
//!   it too.
//! - [`route53`]: a hosted zone in moto's Route53, read and edited by hand
//!   through the SDK.
//! - [`route53proxy`]: a proxy in front of moto that counts Route53 calls,
//!   keeps every change batch, and throttles chosen ones.
//! - [`netns`]: network namespaces for guests, and forwarders into them.
//! - [`imds_tree`]: the metadata tree cloud-init crawls, from moto.
//! - [`qga`]: commands and files through a guest's `qemu-guest-agent`.
//! - [`vm`]: a Debian guest under QEMU that believes it is an EC2 instance.
//! - [`wait_until`]: polling for eventual conditions.

#![forbid(unsafe_code)]

pub mod agent;
pub mod bind;
pub mod cloudinit;
pub mod coordinator;
pub mod dns;
pub mod ec2;
pub mod ec2proxy;
pub mod imds;
pub mod imds_tree;
pub mod moto;
pub mod netns;
pub mod postgres;
pub mod procs;
pub mod qga;
pub mod route53;
pub mod route53proxy;
pub mod vm;

use std::future::Future;
use std::time::{Duration, Instant};

pub use agent::Agent;
pub use bind::Bind;
pub use coordinator::{Coordinator, ZONE};
pub use dns::{DnsAnswer, Resolver};
pub use ec2proxy::{Ec2Proxy, Hold, Refusal};
pub use imds::{IdentitySigner, Imds};
pub use moto::Moto;
pub use route53proxy::Route53Proxy;

/// How long a test waits for something that should happen "soon". Generous:
/// tests check outcomes, not timings.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// How often an eventual condition is probed.
pub const POLL: Duration = Duration::from_millis(100);

/// `serve` flags for the liveness stories: heartbeats every second,
/// unreachable after 3 s of silence, EC2 read every second, and an
/// instance EC2 has not known for two sweeps terminated.
pub const FAST_LIVENESS: &[&str] = &[
    "--heartbeat-interval",
    "1s",
    "--grace",
    "3s",
    "--sweep-interval",
    "1s",
    "--unknown-sweeps",
    "2",
];

/// `serve` flags for the failover stories on a shared store: a leader
/// silent for 3 s is replaced, renewing every second; a standby tries
/// twice a second.
pub const FAST_LEASE: &[&str] = &[
    "--lease-time",
    "3s",
    "--lease-renew-interval",
    "1s",
    "--lease-retry-interval",
    "500ms",
];

/// A register of a bring-your-own machine, as the agent sends it: machine
/// id `machine_id`, named `hostname`, in `cluster`, at `private` (and
/// `public`).
pub fn byon_register(
    cluster: &str,
    machine_id: &str,
    hostname: &str,
    private: std::net::Ipv4Addr,
    public: Option<std::net::Ipv4Addr>,
) -> muster_proto::RegisterRequest {
    muster_proto::RegisterRequest {
        protocol: muster_proto::PROTOCOL_VERSION,
        cluster: cluster.to_owned(),
        instance_id: muster_proto::byon_node_id(machine_id),
        availability_zone: String::new(),
        region: String::new(),
        private_ipv4: Some(private),
        public_ipv4: public,
        agent_version: "0.0.0-test".to_owned(),
        byon: Some(muster_proto::ByonIdentity {
            hostname: hostname.to_owned(),
            machine_id: machine_id.to_owned(),
        }),
        signed_identity: None,
        ipv6: None,
    }
}

/// Plausible host facts for a heartbeat a test sends by hand.
pub fn host_facts() -> muster_proto::HostFacts {
    muster_proto::HostFacts {
        cpus: 2,
        load_average: [0.1, 0.1, 0.1],
        memory_total_bytes: 1 << 30,
        memory_used_bytes: 1 << 29,
        disks: Vec::new(),
        uptime_secs: 60,
        os: "Debian GNU/Linux 12".to_owned(),
        kernel: "6.1.0".to_owned(),
    }
}

/// Probes until `done` accepts the value or `timeout` passes, sleeping `poll`
/// between probes, and returns the last value probed either way, so the
/// caller asserts on it and a failure shows what was seen.
pub async fn wait_until<T, F, Fut, D>(timeout: Duration, poll: Duration, mut probe: F, done: D) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    D: Fn(&T) -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe().await;
        if done(&value) || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A condition that becomes true is seen, and the accepted value returned.
    #[tokio::test]
    async fn wait_until_returns_the_accepted_value() {
        let mut n = 0;
        let value = wait_until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                std::future::ready(n)
            },
            |v| *v == 3,
        )
        .await;
        assert_eq!(value, 3);
    }

    /// A condition that never holds gives back the last value after the timeout.
    #[tokio::test]
    async fn wait_until_gives_up_with_the_last_value() {
        let value = wait_until(
            Duration::from_millis(20),
            Duration::from_millis(1),
            || std::future::ready(7),
            |v| *v == 8,
        )
        .await;
        assert_eq!(value, 7);
    }
}
