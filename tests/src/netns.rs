//! Network namespaces a test makes for its guests, and TCP forwarders from
//! inside one to the test's services on the host's loopback.
//!
//! A [`Netns`] holds only loopback, plus the addresses a story adds to it
//! (the IMDS at 169.254.169.254, the coordinator's public address). QEMU
//! runs inside it with user-mode networking, whose outbound connections
//! are made by the QEMU process itself: they land on those addresses and
//! nowhere else, so nothing a guest sends leaves the machine.
//!
//! A [`Forward`] listens on an address inside the namespace (its socket is
//! made on a thread that entered the namespace) and relays each
//! connection to a host address, connecting from the test's own
//! namespace. Needs root and `ip` (iproute2); without them creating a
//! namespace fails, and so does the test.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::CloneFlags;

/// A network namespace, `muster-boot-<pid>-<n>`, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with its loopback up; panics saying why when
    /// it cannot.
    pub fn create() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "muster-boot-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run_ip(&["netns", "add", &name]);
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args>` and insists that it succeeds.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all);
    }

    /// Adds `ip` (a /32) to the namespace's loopback.
    pub fn add_address(&self, ip: std::net::Ipv4Addr) {
        self.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
    }

    /// A command that runs `program` inside the namespace (`ip netns
    /// exec`, which execs it: the child's pid is the program's).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// A TCP listener on `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path)
                        .unwrap_or_else(|e| panic!("opening {path}: {e}"));
                    nix::sched::setns(file, CloneFlags::CLONE_NEWNET)
                        .unwrap_or_else(|e| panic!("entering {path}: {e}"));
                    TcpListener::bind(addr)
                        .unwrap_or_else(|e| panic!("binding {addr} in {path}: {e}"))
                })
                .join()
                .expect("the thread that binds inside the namespace")
        })
    }

    /// Relays connections to `addr` inside the namespace to `target` on
    /// the host, until the returned guard drops.
    pub fn forward(&self, addr: SocketAddr, target: SocketAddr) -> Forward {
        let listener = self.listen(addr);
        listener
            .set_nonblocking(true)
            .expect("a listener goes non-blocking");
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("tokio takes the listener");
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forward { task }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A running forwarder; dropping it stops accepting.
#[derive(Debug)]
pub struct Forward {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn run_ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running ip {}: {e} (scripts/setup installs iproute2)",
            args.join(" ")
        )
    });
    assert!(
        output.status.success(),
        "ip {} failed (network namespaces need root): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}
