//! A real `muster-coordinator serve` on free loopback ports, pointed at one
//! moto server, plus its admin CLI and a raw HTTPS client pinned to the CA
//! the coordinator made on first start.
//!
//! Its store is SQLite's file in its data dir; with `MUSTER_TEST_STORE=postgres`
//! in the environment, every coordinator a story starts keeps its store in
//! a PostgreSQL server of its own instead ([`STORE_ENV`]), so the same
//! stories run on both databases.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use muster_proto::{ClusterView, CreateClusterResponse, NodeDetail, NodeState, NodeView};
use serde::de::DeserializeOwned;
use tempfile::TempDir;

use crate::dns::Resolver;
use crate::moto::Moto;
use crate::postgres::Postgres;
use crate::procs::{bin_path, free_tcp_port, free_udp_tcp_port, loopback, tail, Process};

/// The DNS zone every test coordinator serves.
pub const ZONE: &str = "muster.test";

/// How long a coordinator gets to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many fresh port pairs are tried when a chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// The variable that puts every coordinator's store on PostgreSQL
/// (`postgres`); unset or `sqlite`, the store is SQLite's file.
pub const STORE_ENV: &str = "MUSTER_TEST_STORE";

/// A PostgreSQL server for a coordinator's store, when [`STORE_ENV`] asks
/// for one; `None` for SQLite. Any other value is a mistake, and panics.
fn store_server() -> Option<Postgres> {
    match std::env::var(STORE_ENV).as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => None,
        Ok("postgres") => {
            let server = Postgres::start();
            server.create_database("muster");
            Some(server)
        }
        Ok(other) => panic!("{STORE_ENV}={other:?}: expected sqlite or postgres"),
    }
}

/// Builds HTTPS clients that trust only `ca_pem`. Installs the ring crypto
/// provider for the process first (once).
pub fn https_client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    https_client_builder(ca_pem)
        .build()
        .expect("building an HTTPS client")
}

/// What [`https_client_trusting`] builds, before it is built: for a client
/// that differs, such as one that speaks only HTTP/1.1 as the agent does.
pub fn https_client_builder(ca_pem: &[u8]) -> reqwest::ClientBuilder {
    install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(ca_pem).expect("the coordinator's CA is PEM");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10))
}

/// Makes ring the process-wide rustls provider, once.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first; that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The store key's file in a data dir, on a shared store.
pub const STORE_KEY_FILE: &str = "store-key";

/// A fresh, empty data dir for a coordinator.
fn new_data_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("muster-coordinator-data-")
        .tempdir()
        .expect("creating a data dir")
}

/// Copies a coordinator's CA, certificate, keys and admin token from the
/// data dir `from` to `to`, as docs/operations.md says to for a restore.
fn copy_credentials(from: &Path, to: &Path) {
    for file in [
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "admin-token",
    ] {
        std::fs::copy(from.join(file), to.join(file))
            .unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
}

/// A running coordinator with its own data dir and ports.
#[derive(Debug)]
pub struct Coordinator {
    process: Option<Process>,
    earlier_logs: String,
    api_ip: Ipv4Addr,
    api_port: u16,
    dns_port: u16,
    data_dir: TempDir,
    moto_endpoint: String,
    extra_args: Vec<String>,
    /// The CA its certificate chains to, when not its own `D/ca.pem`.
    operator_ca: Option<PathBuf>,
    /// What `--public-url` says, when not [`Coordinator::url`].
    public_url: Option<String>,
    /// The soft and hard open files limits it runs under (via `prlimit`),
    /// when not the test's own.
    nofile: Option<(u64, u64)>,
    /// The PostgreSQL server its store is in, when [`STORE_ENV`] asks
    /// for one.
    store: Option<Postgres>,
}

impl Coordinator {
    /// Starts a coordinator against `moto`, serving zone [`ZONE`], and waits
    /// until `/healthz` answers 200 over HTTPS pinned to its own CA.
    pub async fn start(moto: &Moto) -> Coordinator {
        Coordinator::start_with(moto, &[]).await
    }

    /// Like [`Coordinator::start`], with extra `serve` flags (e.g. short
    /// `--grace` and `--sweep-interval` for lifecycle stories).
    pub async fn start_with(moto: &Moto, extra_args: &[&str]) -> Coordinator {
        Coordinator::start_at(&moto.endpoint(), extra_args).await
    }

    /// Like [`Coordinator::start_with`], asking EC2 at `endpoint` (e.g. an
    /// [`crate::Ec2Proxy`] in front of moto).
    pub async fn start_at(endpoint: &str, extra_args: &[&str]) -> Coordinator {
        Coordinator::start_on(endpoint, Ipv4Addr::LOCALHOST, extra_args).await
    }

    /// Like [`Coordinator::start_at`], with the API on `api_ip` (an address
    /// of a network namespace's veth, so agents inside reach it) and that
    /// address in its public URL and certificate.
    pub async fn start_on(endpoint: &str, api_ip: Ipv4Addr, extra_args: &[&str]) -> Coordinator {
        Coordinator::start_full(endpoint, api_ip, extra_args, None).await
    }

    /// Like [`Coordinator::start`], serving an operator's certificate
    /// (`--tls-cert`, `--tls-key`) that chains to `ca`, which the test's own
    /// clients then trust.
    pub async fn start_with_certificate(
        moto: &Moto,
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> Coordinator {
        let cert = cert.display().to_string();
        let key = key.display().to_string();
        Coordinator::start_full(
            &moto.endpoint(),
            Ipv4Addr::LOCALHOST,
            &["--tls-cert", &cert, "--tls-key", &key],
            Some(ca.to_owned()),
        )
        .await
    }

    /// Like [`Coordinator::start_with`], telling agents (in user data and
    /// its certificate) to reach it at `public_url`, an address that a
    /// forwarder relays to its loopback port: how guests in a network
    /// namespace reach it.
    pub async fn start_for_guests(
        moto: &Moto,
        public_url: &str,
        extra_args: &[&str],
    ) -> Coordinator {
        Coordinator::start_inner(
            &moto.endpoint(),
            Ipv4Addr::LOCALHOST,
            extra_args,
            None,
            Some(public_url.to_owned()),
        )
        .await
    }

    /// Like [`Coordinator::start_with`], run under the open files limits
    /// `soft` and `hard` (set by `prlimit`, as a unit's `LimitNOFILE` would).
    pub async fn start_with_nofile(
        moto: &Moto,
        (soft, hard): (u64, u64),
        extra_args: &[&str],
    ) -> Coordinator {
        Coordinator::start_configured(
            &moto.endpoint(),
            Ipv4Addr::LOCALHOST,
            extra_args,
            None,
            None,
            Some((soft, hard)),
        )
        .await
    }

    /// The loopback address its API listens on.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::from((self.api_ip, self.api_port))
    }

    async fn start_full(
        endpoint: &str,
        api_ip: Ipv4Addr,
        extra_args: &[&str],
        operator_ca: Option<PathBuf>,
    ) -> Coordinator {
        Coordinator::start_inner(endpoint, api_ip, extra_args, operator_ca, None).await
    }

    async fn start_inner(
        endpoint: &str,
        api_ip: Ipv4Addr,
        extra_args: &[&str],
        operator_ca: Option<PathBuf>,
        public_url: Option<String>,
    ) -> Coordinator {
        Coordinator::start_configured(endpoint, api_ip, extra_args, operator_ca, public_url, None)
            .await
    }

    /// A coordinator on `moto` started from `backup` (a file `muster-coordinator
    /// backup` wrote of `from`), restored by `muster-coordinator restore`
    /// into a new data dir beside a copy of `from`'s CA, certificate, keys
    /// and tokens, as docs/operations.md says to.
    pub async fn start_restored(
        moto: &Moto,
        from: &Coordinator,
        backup: &Path,
        extra_args: &[&str],
    ) -> Coordinator {
        let data_dir = new_data_dir();
        copy_credentials(from.data_dir(), data_dir.path());
        let restored = std::process::Command::new(bin_path("muster-coordinator"))
            .arg("restore")
            .arg(backup)
            .arg("--data-dir")
            .arg(data_dir.path())
            .output()
            .expect("running muster-coordinator restore");
        assert!(
            restored.status.success(),
            "restore failed: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
        let endpoint = moto.endpoint();
        let site = (endpoint.as_str(), Ipv4Addr::LOCALHOST);
        Coordinator::start_in(data_dir, site, extra_args, None, None, None).await
    }

    async fn start_configured(
        endpoint: &str,
        api_ip: Ipv4Addr,
        extra_args: &[&str],
        operator_ca: Option<PathBuf>,
        public_url: Option<String>,
        nofile: Option<(u64, u64)>,
    ) -> Coordinator {
        let site = (endpoint, api_ip);
        Coordinator::start_in(
            new_data_dir(),
            site,
            extra_args,
            operator_ca,
            public_url,
            nofile,
        )
        .await
    }

    /// Starts a coordinator on `data_dir`, asking EC2 at `site.0`, its API
    /// on `site.1`.
    async fn start_in(
        data_dir: TempDir,
        (endpoint, api_ip): (&str, Ipv4Addr),
        extra_args: &[&str],
        operator_ca: Option<PathBuf>,
        public_url: Option<String>,
        nofile: Option<(u64, u64)>,
    ) -> Coordinator {
        let mut coordinator = Coordinator {
            process: None,
            earlier_logs: String::new(),
            api_ip,
            api_port: 0,
            dns_port: 0,
            data_dir,
            moto_endpoint: endpoint.to_owned(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            operator_ca,
            public_url,
            nofile,
            store: None,
        };
        if !extra_args.contains(&"--store") {
            coordinator.store = store_server();
        }
        for attempt in 1..=PORT_ATTEMPTS {
            coordinator.api_port = free_tcp_port();
            coordinator.dns_port = free_udp_tcp_port();
            coordinator.spawn();
            match coordinator.wait_ready().await {
                Ok(()) => return coordinator,
                Err(why) if attempt < PORT_ATTEMPTS && why.contains("exited") => {
                    // Most likely a port was taken between choosing and
                    // binding; keep the logs and try fresh ports.
                    coordinator.retire_process();
                }
                Err(why) => panic!("{why}\n{}", tail(&coordinator.logs(), 32 * 1024)),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// A second coordinator on this one's shared store (PostgreSQL, by
    /// `--store` or [`STORE_ENV`]), with the same flags and a copy of its
    /// store key alone, as docs/operations.md's recipe says (it takes the
    /// CA and the tokens from the store); its API on this one's port when `same_api_port` (replicas of
    /// a shared store share a port, and the kernel spreads connections
    /// over them), else on its own; its DNS always on its own. Returns
    /// once it serves and stands by: it leads only when this one's lease
    /// runs out or is released.
    pub async fn start_standby(&self, same_api_port: bool) -> Coordinator {
        self.start_standby_at(same_api_port, None).await
    }

    /// [`Coordinator::start_standby`], reaching the store by `store_url`
    /// (the same database, as another PostgreSQL user) when given.
    pub async fn start_standby_at(
        &self,
        same_api_port: bool,
        store_url: Option<&str>,
    ) -> Coordinator {
        let data_dir = new_data_dir();
        std::fs::copy(
            self.data_dir().join(STORE_KEY_FILE),
            data_dir.path().join(STORE_KEY_FILE),
        )
        .expect("copying the store key");
        let mut extra_args = self.extra_args.clone();
        if let Some(server) = &self.store {
            extra_args.extend(["--store".to_owned(), server.url("muster")]);
        }
        if let Some(url) = store_url {
            let at = extra_args
                .iter()
                .position(|arg| arg == "--store")
                .expect("a coordinator on a shared store");
            extra_args[at + 1] = url.to_owned();
        }
        let api_port = if same_api_port {
            self.api_port
        } else {
            free_tcp_port()
        };
        let dns_port = free_udp_tcp_port();
        let mut standby = Coordinator {
            process: None,
            earlier_logs: String::new(),
            api_ip: self.api_ip,
            api_port,
            dns_port,
            data_dir,
            moto_endpoint: self.moto_endpoint.clone(),
            extra_args,
            operator_ca: self.operator_ca.clone(),
            public_url: self.public_url.clone(),
            nofile: self.nofile,
            store: None,
        };
        standby.spawn();
        standby
            .wait_for_log("standing by: another coordinator leads", "stand by")
            .await;
        standby
    }

    /// Waits until this coordinator (a standby) takes the lease over;
    /// panics with its logs if it does not in time.
    pub async fn wait_leading(&mut self) {
        self.wait_for_log("took the leader's lease: leading", "lead")
            .await;
    }

    /// Waits until the logs hold `line`; panics with them if the process
    /// exits first or does not `what` within [`READY_TIMEOUT`].
    async fn wait_for_log(&mut self, line: &str, what: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.logs().contains(line) {
            let process = self.process.as_mut().expect("spawned");
            if let Some(status) = process.try_exit() {
                panic!("the coordinator exited ({status})\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "it did not {what} within {READY_TIMEOUT:?}\n{}",
                tail(&self.logs(), 32 * 1024)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `patience` for the process to exit, and says how.
    pub async fn wait_exit(&mut self, patience: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + patience;
        loop {
            let process = self.process.as_mut().expect("spawned");
            if let Some(status) = process.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {patience:?}\n{}",
                tail(&self.logs(), 32 * 1024)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` to the process (SIGSTOP pauses it, SIGCONT resumes).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("sending a signal");
    }

    /// Kills the coordinator with SIGKILL, as a crash would: nothing of it
    /// runs after, and [`Coordinator::restart`] starts it again.
    pub fn kill(&self) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL");
    }

    /// Stops the coordinator (SIGTERM by pid, then SIGKILL).
    pub fn stop(&mut self) {
        self.retire_process();
    }

    /// Stops the coordinator and starts it again on the same data dir and
    /// ports; waits until it is healthy.
    pub async fn restart(&mut self) {
        self.retire_process();
        self.spawn();
        if let Err(why) = self.wait_ready().await {
            panic!("{why}\n{}", tail(&self.logs(), 32 * 1024));
        }
    }

    /// Stops the coordinator and starts it again on the same data dir and
    /// ports with `extra_args` in place of the flags it had; `Err` with
    /// why and its logs when it does not come up healthy.
    pub async fn try_restart_with(&mut self, extra_args: &[&str]) -> Result<(), String> {
        self.retire_process();
        self.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        self.spawn();
        self.wait_ready()
            .await
            .map_err(|why| format!("{why}\n{}", tail(&self.logs(), 32 * 1024)))
    }

    /// Stops the coordinator and starts it again on the same data dir and
    /// ports, asking EC2 (and STS) at `endpoint` from now on: another moto
    /// stands for a wrong endpoint or account.
    pub async fn restart_at(&mut self, endpoint: &str) {
        self.moto_endpoint = endpoint.to_owned();
        self.restart().await;
    }

    /// The pid of the running process.
    pub fn pid(&self) -> u32 {
        self.process
            .as_ref()
            .expect("the coordinator is running")
            .pid()
    }

    /// The PostgreSQL server its store is in, if it is not SQLite's.
    pub fn store_server(&self) -> Option<&Postgres> {
        self.store.as_ref()
    }

    /// Everything every run of this coordinator printed.
    pub fn logs(&self) -> String {
        let current = self.process.as_ref().map(Process::logs).unwrap_or_default();
        format!("{}{current}", self.earlier_logs)
    }

    /// `https://127.0.0.1:P1` (or the address given to
    /// [`Coordinator::start_on`]).
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.api_ip, self.api_port)
    }

    /// The embedded DNS server's address.
    pub fn dns_addr(&self) -> SocketAddr {
        loopback(self.dns_port)
    }

    /// A resolver that asks only this coordinator's DNS.
    pub fn resolver(&self) -> Resolver {
        Resolver::new(self.dns_addr())
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The CA its certificate chains to: `D/ca.pem`, written on first
    /// start, or the operator's CA it was started with.
    pub fn ca_file(&self) -> PathBuf {
        match &self.operator_ca {
            Some(ca) => ca.clone(),
            None => self.data_dir().join("ca.pem"),
        }
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        self.metrics_with(&self.https_client()).await
    }

    /// `GET /metrics` with `client` (one that keeps its connection, say).
    pub async fn metrics_with(&self, client: &reqwest::Client) -> String {
        client
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics are text")
    }

    /// The value of one sample in `/metrics` (`name` with its labels, e.g.
    /// `muster_sweeps_total` or `x_total{code="y"}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> u64 {
        metric_in(&self.metrics().await, sample)
    }

    /// [`Coordinator::metric`] read with `client`.
    pub async fn metric_with(&self, client: &reqwest::Client, sample: &str) -> u64 {
        metric_in(&self.metrics_with(client).await, sample)
    }

    /// The admin token from `D/admin-token`, trimmed.
    pub fn admin_token(&self) -> String {
        let path = self.data_dir().join("admin-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// An HTTPS client that trusts only this coordinator's CA.
    pub fn https_client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.ca_file())
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.ca_file().display()));
        https_client_trusting(&ca)
    }

    /// POSTs register `req` with `bearer`, as a plain client (no agent);
    /// the status and the body's text.
    pub async fn register_raw(
        &self,
        bearer: &str,
        req: &muster_proto::RegisterRequest,
    ) -> (reqwest::StatusCode, String) {
        let url = format!("{}{}", self.url(), muster_proto::paths::AGENT_REGISTER);
        let answer = self
            .https_client()
            .post(&url)
            .bearer_auth(bearer)
            .json(req)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = answer.status();
        (status, answer.text().await.unwrap_or_default())
    }

    /// Runs `muster-coordinator <args>` as an admin client of this
    /// coordinator (`MUSTER_ADDR`, `MUSTER_TOKEN`, `MUSTER_CACERT`).
    pub async fn admin(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(bin_path("muster-coordinator"))
            .args(args)
            .env("MUSTER_ADDR", self.url())
            .env("MUSTER_TOKEN", self.admin_token())
            .env("MUSTER_CACERT", self.ca_file())
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running muster-coordinator {args:?}: {e}"))
    }

    /// Runs `muster-coordinator <args> --json`, asserts it succeeded and
    /// parses what it printed.
    pub async fn admin_json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut args = args.to_vec();
        args.push("--json");
        let output = self.admin(&args).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "muster-coordinator {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("muster-coordinator {args:?} printed what is not the expected JSON ({e}):\n{stdout}")
        })
    }

    /// `cluster create NAME --json`.
    pub async fn create_cluster(&self, name: &str) -> CreateClusterResponse {
        self.admin_json(&["cluster", "create", name]).await
    }

    /// `cluster create NAME` launching `count` instances with `disk_gb` GiB
    /// data volumes ([`crate::ec2::create_args`]), then `extra`, `--json`.
    pub async fn launch_cluster(
        &self,
        name: &str,
        count: u32,
        disk_gb: u32,
        extra: &[&str],
    ) -> CreateClusterResponse {
        let args = crate::ec2::create_args(name, count, disk_gb, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.admin_json(&args).await
    }

    /// `cluster ls --json`.
    pub async fn clusters(&self) -> Vec<ClusterView> {
        self.admin_json(&["cluster", "ls"]).await
    }

    /// `node ls --cluster CLUSTER --json`.
    pub async fn nodes(&self, cluster: &str) -> Vec<NodeView> {
        self.admin_json(&["node", "ls", "--cluster", cluster]).await
    }

    /// `node show CLUSTER NAME --json`.
    pub async fn node(&self, cluster: &str, name: &str) -> NodeDetail {
        self.admin_json(&["node", "show", cluster, name]).await
    }

    /// Polls `node ls` of `cluster`, every [`crate::POLL`] for at most
    /// `patience`, until instance `id`'s node is in `state`; returns it.
    /// Panics, with the coordinator's log, if it never gets there.
    pub async fn wait_for_node(
        &self,
        cluster: &str,
        id: &str,
        state: NodeState,
        patience: Duration,
    ) -> NodeView {
        let nodes = crate::wait_until(
            patience,
            crate::POLL,
            || self.nodes(cluster),
            |nodes| {
                nodes
                    .iter()
                    .any(|n| n.instance_id == id && n.state == state)
            },
        )
        .await;
        let node = nodes
            .into_iter()
            .find(|n| n.instance_id == id)
            .unwrap_or_else(|| panic!("no node for {id}\n{}", self.logs()));
        assert_eq!(node.state, state, "{node:#?}\n{}", self.logs());
        node
    }

    fn spawn(&mut self) {
        let mut command = match self.nofile {
            // prlimit sets the limits on itself and execs the coordinator,
            // which keeps its pid.
            Some((soft, hard)) => {
                let mut command = Command::new("prlimit");
                command
                    .arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(bin_path("muster-coordinator"));
                command
            }
            None => Command::new(bin_path("muster-coordinator")),
        };
        command
            .arg("serve")
            .args(["--listen", &format!("{}:{}", self.api_ip, self.api_port)])
            .args(["--dns-listen", &loopback(self.dns_port).to_string()])
            .args(["--zone", ZONE])
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--public-url")
            .arg(self.public_url.clone().unwrap_or_else(|| self.url()))
            .args(["--advertise-url", &self.url()])
            // moto hands out Elastic IPs from 127/8, a range the coordinator
            // otherwise refuses as a public address.
            .args(["--public-ipv4-allow", "127.0.0.0/8"])
            .args(&self.extra_args);
        if let Some(server) = &self.store {
            command.args(["--store", &server.url("muster")]);
        }
        // The strict IMDS signs identity documents with a key of the test
        // process's, which the coordinator must trust beside AWS's.
        let identity = ["--identity-certs", "--insecure-no-identity-document"];
        if !self
            .extra_args
            .iter()
            .any(|a| identity.contains(&a.as_str()))
        {
            command
                .arg("--identity-certs")
                .arg(crate::imds::IdentitySigner::shared_certificate_file());
        }
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL_EC2",
            "AWS_ENDPOINT_URL_ROUTE_53",
        ] {
            command.env_remove(var);
        }
        command
            .env("AWS_ENDPOINT_URL", &self.moto_endpoint)
            .env("AWS_REGION", crate::ec2::TEST_REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info");
        self.process = Some(Process::spawn("muster-coordinator", command));
    }

    fn retire_process(&mut self) {
        if let Some(process) = self.process.take() {
            self.earlier_logs.push_str(&process.finish());
            self.earlier_logs.push('\n');
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/healthz", self.url());
        let mut last = String::from("no attempt yet");
        while Instant::now() < deadline {
            let process = self.process.as_mut().expect("spawned");
            if let Some(status) = process.try_exit() {
                return Err(format!(
                    "muster-coordinator exited before it was healthy ({status})"
                ));
            }
            if let Ok(ca) = std::fs::read(self.ca_file()) {
                match https_client_trusting(&ca).get(&url).send().await {
                    Ok(response) if response.status().is_success() => return Ok(()),
                    Ok(response) => last = format!("GET {url} answered {}", response.status()),
                    Err(error) => last = format!("GET {url}: {error}"),
                }
            } else {
                last = format!("{} not written yet", self.ca_file().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "muster-coordinator was not healthy within {READY_TIMEOUT:?}; last: {last}"
        ))
    }
}

/// The value of one sample in the Prometheus `text`, 0 when absent.
fn metric_in(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{sample} is {v:?}: {e}"))
        })
        .unwrap_or(0)
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.earlier_logs.is_empty() {
            eprintln!(
                "--- muster-coordinator, earlier runs ---\n{}",
                tail(&self.earlier_logs, 64 * 1024)
            );
        }
    }
}
