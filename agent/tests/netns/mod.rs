//! Network namespaces of a test's own, for what cannot be shown on the
//! host's own interfaces: adding and removing addresses.
//!
//! Needs root and `ip` (iproute2). Where either is missing, or the kernel
//! refuses a new namespace, [`Netns::create`] says why on stderr and gives
//! `None`, and the test skips. A namespace is deleted when dropped.

// Shared by several test files; each uses a part of it.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::CloneFlags;

/// A network namespace created for one test, named `muster-test-<pid>-<n>`.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

/// Whether this process runs as root, from the effective uid in
/// /proc/self/status (`Uid: real effective saved fs`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

impl Netns {
    /// Creates a namespace with its loopback up, or says why it cannot and
    /// gives `None`.
    pub fn create(test: &str) -> Option<Netns> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if !is_root() {
            eprintln!("SKIPPED {test}: needs root to create a network namespace");
            return None;
        }
        let name = format!(
            "muster-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        match Command::new("ip").args(["netns", "add", &name]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!(
                    "SKIPPED {test}: `ip netns add` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run `ip` (iproute2): {e}");
                return None;
            }
        }
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        Some(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>` and insists that it succeeds.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec`, which execs it: the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `f` on a thread that has entered the namespace, so that the
    /// sockets it opens belong to the namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(file, CloneFlags::CLONE_NEWNET).unwrap();
                    f()
                })
                .join()
                .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
