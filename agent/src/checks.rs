//! The node's own health checks, run by the agent and reported on every
//! heartbeat.
//!
//! Each `[[check]]` table of the settings file becomes a [`Check`]
//! ([`crate::settings`] reads and checks them): an HTTP GET, a TCP connect
//! or a command. [`start`] runs each in a task of its own: at once, then
//! every `interval`, each run cut short after `timeout`. A check starts
//! not passing, as Consul's checks and Kubernetes' readiness probes do:
//! nothing is ready until shown to be. It passes after `successes`
//! successful runs in a row, and fails after `failures` failed runs in a
//! row. [`Running::reports`] follows every check's standing, in the order
//! of the settings, as the [`CheckReport`]s a heartbeat carries.
//!
//! - http: a GET that must answer 2xx or 3xx. Redirects are not followed,
//!   no proxy is used, and every run opens a new connection, so that a
//!   server that stopped taking connections is seen. An https URL must
//!   present a certificate the system's roots trust. With `expect_body`,
//!   the first 64 KiB of the body must hold that text.
//! - tcp: a connect to `host:port`, trying each address the host resolves
//!   to in turn.
//! - command: a program and its arguments, without a shell, run as the
//!   agent's own user from `/`, with nothing on its stdin and without the
//!   agent's `MUSTER_AGENT_*` and systemd variables (which may hold the
//!   join token or let it speak for the agent). Exit 0 passes. At the
//!   timeout it is killed, with every process it started in its process
//!   group.
//!
//! What a run said (a status line, an error, the command's output) is
//! reported with control characters other than newlines and tabs replaced
//! by U+FFFD, and cut to [`muster_proto::condition::MAX_TEXT`] bytes. A flip between
//! passing and failing is logged at info; single runs only at debug.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use muster_proto::condition::{fit, CheckKind, CheckReport};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info};

use crate::{error_chain, AbortOnDrop};

/// How often a check runs by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// How long a run may take by default (never longer than the interval).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest timeout accepted.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Failed runs in a row that make a check fail, by default.
pub const DEFAULT_FAILURES: u32 = 3;
/// Successful runs in a row that make a check pass, by default.
pub const DEFAULT_SUCCESSES: u32 = 1;
/// The most runs in a row a threshold may ask for.
pub const MAX_THRESHOLD: u32 = 100;
/// Most bytes read of an HTTP body, or of each of a command's stdout and
/// stderr; the rest is read and dropped.
pub const MAX_READ: usize = 64 * 1024;
/// The output of a check that has not finished a run yet.
pub const NOT_RUN_YET: &str = "not run yet";

/// Variables a command does not inherit from the agent, besides every
/// `MUSTER_AGENT_*` one: systemd's, which would let it speak for the agent.
const HIDDEN_VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC"];

/// One health check, as validated from the settings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name: a DNS label, unique among the node's checks.
    pub name: String,
    /// What it does.
    pub probe: Probe,
    /// How often it runs, counted from the start of one run to the next.
    pub interval: Duration,
    /// How long a run may take before it counts as failed.
    pub timeout: Duration,
    /// Failed runs in a row that make it fail.
    pub failures: u32,
    /// Successful runs in a row that make it pass.
    pub successes: u32,
}

impl Check {
    /// What kind of check it is.
    pub fn kind(&self) -> CheckKind {
        self.probe.kind()
    }
}

/// What a check does in one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A GET of `url` (http or https) that must answer 2xx or 3xx, with a
    /// body holding `expect_body` if that is set.
    Http {
        /// The URL asked.
        url: reqwest::Url,
        /// Text the body must hold.
        expect_body: Option<String>,
    },
    /// A TCP connect to `host` (a name or an IP address) on `port`.
    Tcp {
        /// The host: a DNS name, resolved at every run, or an IP address.
        host: String,
        /// The port.
        port: u16,
    },
    /// A program (an absolute path) and its arguments, run without a
    /// shell, that must exit 0.
    Command {
        /// The program, then its arguments.
        argv: Vec<String>,
    },
}

impl Probe {
    /// What kind of check it makes.
    pub fn kind(&self) -> CheckKind {
        match self {
            Probe::Http { .. } => CheckKind::Http,
            Probe::Tcp { .. } => CheckKind::Tcp,
            Probe::Command { .. } => CheckKind::Command,
        }
    }
}

/// The checks, running. Dropping it stops them.
#[derive(Debug)]
pub struct Running {
    /// Every check's report, in the order of the settings.
    reports: Arc<watch::Sender<Vec<CheckReport>>>,
    /// One task per check, aborted when this is dropped.
    _tasks: Vec<AbortOnDrop>,
}

impl Running {
    /// Follows the reports of every check, in the order of the settings.
    /// It changes only when a report does (a check flips, or a run says
    /// something new). With no checks it holds an empty list for as long
    /// as this lives.
    pub fn reports(&self) -> watch::Receiver<Vec<CheckReport>> {
        self.reports.subscribe()
    }
}

/// Starts running `checks`, each in a task of its own, all not passing
/// until they have shown they pass. Must be called within the tokio
/// runtime.
pub fn start(checks: Vec<Check>) -> Running {
    crate::install_crypto_provider();
    let initial = checks
        .iter()
        .map(|check| CheckReport {
            name: check.name.clone(),
            kind: check.kind(),
            passing: false,
            output: NOT_RUN_YET.to_owned(),
        })
        .collect();
    let reports = Arc::new(watch::Sender::new(initial));
    let tasks = checks
        .into_iter()
        .enumerate()
        .map(|(index, check)| AbortOnDrop(tokio::spawn(run(check, index, reports.clone()))))
        .collect();
    Running {
        reports,
        _tasks: tasks,
    }
}

/// Runs one check for ever, publishing its report at `index` after every
/// run.
async fn run(check: Check, index: usize, reports: Arc<watch::Sender<Vec<CheckReport>>>) {
    let prober = Prober::new(&check);
    // A zero period would make `interval` panic; settings never give one.
    let mut ticks = tokio::time::interval(check.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut standing = Standing::default();
    loop {
        ticks.tick().await;
        let Outcome { ok, output } = prober.run().await;
        debug!(check = %check.name, ok, output = %output, "health check ran");
        match standing.record(ok, check.successes, check.failures) {
            Some(true) => info!(check = %check.name, output = %output, "health check passing"),
            Some(false) => info!(check = %check.name, output = %output, "health check failing"),
            None => {}
        }
        let passing = standing.passing();
        reports.send_if_modified(|reports| {
            let Some(report) = reports.get_mut(index) else {
                return false;
            };
            if report.passing == passing && report.output == output {
                return false;
            }
            report.passing = passing;
            report.output = output;
            true
        });
    }
}

/// A check's standing: whether it has shown it passes or fails, and the
/// runs in a row that went one way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Standing {
    /// `None` until the check has reached a threshold, then whether it
    /// passes.
    settled: Option<bool>,
    /// Successful runs in a row (zero after a failed one).
    successes: u32,
    /// Failed runs in a row (zero after a successful one).
    failures: u32,
}

impl Standing {
    /// Whether the check counts as passing: only once shown to.
    fn passing(&self) -> bool {
        self.settled == Some(true)
    }

    /// Counts one run, against thresholds of `successes` and `failures`
    /// runs in a row. Returns the new standing when it flips: to passing,
    /// or to failing (also the first time, from not yet shown).
    fn record(&mut self, ok: bool, successes: u32, failures: u32) -> Option<bool> {
        let (streak, other, needed) = if ok {
            (&mut self.successes, &mut self.failures, successes)
        } else {
            (&mut self.failures, &mut self.successes, failures)
        };
        *other = 0;
        *streak = streak.saturating_add(1);
        if *streak >= needed.max(1) && self.settled != Some(ok) {
            self.settled = Some(ok);
            Some(ok)
        } else {
            None
        }
    }
}

/// What one run found.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// Whether the run succeeded.
    ok: bool,
    /// What it said, ready for a report.
    output: String,
}

impl Outcome {
    /// A successful run that said `output`.
    fn pass(output: impl AsRef<str>) -> Self {
        Outcome {
            ok: true,
            output: fit(output.as_ref()),
        }
    }

    /// A failed run that said `output`.
    fn fail(output: impl AsRef<str>) -> Self {
        Outcome {
            ok: false,
            output: fit(output.as_ref()),
        }
    }

    /// A run cut short after `timeout`.
    fn timed_out(timeout: Duration) -> Self {
        Outcome::fail(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        ))
    }
}

/// Runs one check's probe, with what it needs kept between runs.
#[derive(Debug)]
struct Prober {
    /// What the check does.
    probe: Probe,
    /// How long a run may take.
    timeout: Duration,
    /// The HTTP client of an http check, or why it could not be built.
    http: Option<Result<reqwest::Client, String>>,
}

impl Prober {
    /// Readies `check` to run; an http check gets its client here, once.
    fn new(check: &Check) -> Self {
        let http = match check.probe {
            Probe::Http { .. } => Some(
                http_client()
                    .map_err(|e| format!("cannot set up the HTTP client: {}", error_chain(&e))),
            ),
            Probe::Tcp { .. } | Probe::Command { .. } => None,
        };
        Prober {
            probe: check.probe.clone(),
            timeout: check.timeout,
            http,
        }
    }

    /// Runs the probe once, within the timeout.
    async fn run(&self) -> Outcome {
        match &self.probe {
            Probe::Http { url, expect_body } => {
                let client = match &self.http {
                    Some(Ok(client)) => client,
                    Some(Err(why)) => return Outcome::fail(why),
                    None => return Outcome::fail("no HTTP client was set up"),
                };
                let get = http_get(client, url, expect_body.as_deref());
                tokio::time::timeout(self.timeout, get)
                    .await
                    .unwrap_or_else(|_| Outcome::timed_out(self.timeout))
            }
            Probe::Tcp { host, port } => {
                tokio::time::timeout(self.timeout, tcp_connect(host, *port))
                    .await
                    .unwrap_or_else(|_| Outcome::timed_out(self.timeout))
            }
            Probe::Command { argv } => run_command(argv, self.timeout).await,
        }
    }
}

/// The client of an http check: the system's roots for https, no proxy,
/// no redirects followed, and no connection kept between runs.
fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(true)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .user_agent(concat!(
            "muster-agent/",
            env!("CARGO_PKG_VERSION"),
            " (health check)"
        ))
        .build()
}

/// One GET of an http check: `HTTP 200 OK` when it passes.
async fn http_get(
    client: &reqwest::Client,
    url: &reqwest::Url,
    expect_body: Option<&str>,
) -> Outcome {
    let response = match client.get(url.clone()).send().await {
        Ok(response) => response,
        Err(e) => return Outcome::fail(error_chain(&e)),
    };
    let status = response.status();
    let line = match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    };
    let ok = status.is_success() || status.is_redirection();
    if ok && expect_body.is_none() {
        return Outcome::pass(line);
    }
    let body = match crate::read_body_capped(response, MAX_READ).await {
        Ok(body) => body,
        Err(e) => {
            return Outcome::fail(format!(
                "{line}, but the body could not be read: {}",
                error_chain(&e)
            ))
        }
    };
    if !ok {
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        return Outcome::fail(if text.is_empty() {
            line
        } else {
            format!("{line}: {text}")
        });
    }
    match expect_body {
        Some(wanted) if !contains(&body, wanted.as_bytes()) => {
            Outcome::fail(format!("{line}: body does not contain {wanted:?}"))
        }
        _ => Outcome::pass(line),
    }
}

/// Whether `haystack` holds `needle` (an empty needle is everywhere).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// One connect of a tcp check: `connected to 127.0.0.1:5432` when it
/// passes. Each address the host resolves to is tried in turn.
async fn tcp_connect(host: &str, port: u16) -> Outcome {
    let addrs: Vec<_> = match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.collect(),
        Err(e) => return Outcome::fail(format!("cannot resolve {host}: {e}")),
    };
    let mut refused = Vec::new();
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(_) => return Outcome::pass(format!("connected to {addr}")),
            Err(e) => refused.push(format!("cannot connect to {addr}: {e}")),
        }
    }
    if refused.is_empty() {
        Outcome::fail(format!("{host} resolves to no address"))
    } else {
        Outcome::fail(refused.join("; "))
    }
}

/// One run of a command check: its output (stdout, then stderr) when it
/// exits 0, else `exit status N: ` and the output. At `timeout` it is
/// killed, with its whole process group.
async fn run_command(argv: &[String], timeout: Duration) -> Outcome {
    let Some((program, args)) = argv.split_first() else {
        return Outcome::fail("no program to run");
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(hidden_variable) {
            command.env_remove(key);
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::fail(format!("cannot run {program}: {e}")),
    };
    let pid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(timeout, async {
        tokio::join!(child.wait(), read_capped(stdout), read_capped(stderr))
    })
    .await;
    match finished {
        Ok((Ok(status), stdout, stderr)) => command_outcome(status, &stdout, &stderr),
        Ok((Err(e), _, _)) => Outcome::fail(format!("cannot wait for {program}: {e}")),
        Err(_) => {
            // The group first, while its leader is not yet reaped and the
            // group id cannot have been reused; the child itself is then
            // killed and reaped by the runtime when dropped.
            if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Outcome::timed_out(timeout)
        }
    }
}

/// Whether a command must not inherit the agent's variable `key`.
fn hidden_variable(key: &str) -> bool {
    key.starts_with("MUSTER_AGENT_") || HIDDEN_VARIABLES.contains(&key)
}

/// What a finished command says: its output, with how it ended first when
/// that was not exit 0.
fn command_outcome(status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> Outcome {
    let stdout = String::from_utf8_lossy(stdout);
    let stderr = String::from_utf8_lossy(stderr);
    let (stdout, stderr) = (stdout.trim(), stderr.trim());
    let output = match (stdout.is_empty(), stderr.is_empty()) {
        (false, false) => format!("{stdout}\n{stderr}"),
        (false, true) => stdout.to_owned(),
        (true, _) => stderr.to_owned(),
    };
    if status.success() {
        return Outcome::pass(output);
    }
    let ended = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match nix::sys::signal::Signal::try_from(signal) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => "ended without an exit status".to_owned(),
    };
    if output.is_empty() {
        Outcome::fail(ended)
    } else {
        Outcome::fail(format!("{ended}: {output}"))
    }
}

/// Reads `pipe` to its end, keeping the first [`MAX_READ`] bytes, so that
/// a talkative command never blocks on a full pipe. A read error ends it
/// with what was read.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_READ.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::condition;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    /// A check of `probe` with a 50 ms interval and a 1 s timeout, passing
    /// and failing at the first run.
    fn check(name: &str, probe: Probe) -> Check {
        Check {
            name: name.to_owned(),
            probe,
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(1),
            failures: 1,
            successes: 1,
        }
    }

    /// A command check of `argv`.
    fn command(argv: &[&str]) -> Probe {
        Probe::Command {
            argv: argv.iter().map(|arg| (*arg).to_owned()).collect(),
        }
    }

    /// An http check of `url`, wanting `expect_body` if given.
    fn http(url: &str, expect_body: Option<&str>) -> Probe {
        Probe::Http {
            url: reqwest::Url::parse(url).unwrap(),
            expect_body: expect_body.map(str::to_owned),
        }
    }

    /// Runs `check` once.
    async fn run_once(check: &Check) -> Outcome {
        Prober::new(check).run().await
    }

    /// A tiny HTTP server on loopback that answers every request with
    /// `status` and `body` and closes the connection; counts the requests.
    async fn serve(status: &str, extra_head: &str, body: &str) -> (SocketAddr, Arc<AtomicUsize>) {
        let response: Arc<str> = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{extra_head}\r\n{body}",
            body.len()
        )
        .into();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !contains(&request, b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (addr, requests)
    }

    /// A loopback port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Waits (at most 10 s) until the reports satisfy `ready`.
    async fn wait_for(
        rx: &mut watch::Receiver<Vec<CheckReport>>,
        ready: impl FnMut(&Vec<CheckReport>) -> bool,
    ) -> Vec<CheckReport> {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(ready))
            .await
            .expect("the reports never got there")
            .expect("the checks stopped")
            .clone()
    }

    /// 2xx and 3xx pass with their status line; a redirect is not
    /// followed.
    #[tokio::test]
    async fn http_success_and_redirect_pass() {
        let (addr, _) = serve("200 OK", "", "fine").await;
        let outcome = run_once(&check("web", http(&format!("http://{addr}/healthz"), None))).await;
        assert_eq!(outcome, Outcome::pass("HTTP 200 OK"));

        let (addr, requests) = serve("302 Found", "location: /elsewhere\r\n", "").await;
        let outcome = run_once(&check("web", http(&format!("http://{addr}/"), None))).await;
        assert_eq!(outcome, Outcome::pass("HTTP 302 Found"));
        assert_eq!(
            requests.load(Ordering::SeqCst),
            1,
            "the redirect was followed"
        );
    }

    /// Other statuses fail with their status line and the start of the
    /// body; a refused connection fails with the error.
    #[tokio::test]
    async fn http_error_fails() {
        let (addr, _) = serve("500 Internal Server Error", "", "boom\r\n").await;
        let outcome = run_once(&check("web", http(&format!("http://{addr}/"), None))).await;
        assert_eq!(
            outcome,
            Outcome::fail("HTTP 500 Internal Server Error: boom")
        );

        let (addr, _) = serve("404 Not Found", "", "").await;
        let outcome = run_once(&check("web", http(&format!("http://{addr}/"), None))).await;
        assert_eq!(outcome, Outcome::fail("HTTP 404 Not Found"));

        let port = closed_port().await;
        let outcome = run_once(&check(
            "web",
            http(&format!("http://127.0.0.1:{port}/"), None),
        ))
        .await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(outcome.output.contains("127.0.0.1"), "{outcome:?}");
    }

    /// With `expect_body`, a 200 passes only if the body holds the text.
    #[tokio::test]
    async fn http_expect_body() {
        let (addr, _) = serve("200 OK", "", "status: ok\n").await;
        let url = format!("http://{addr}/");
        let outcome = run_once(&check("web", http(&url, Some("ok")))).await;
        assert_eq!(outcome, Outcome::pass("HTTP 200 OK"));
        let outcome = run_once(&check("web", http(&url, Some("ready")))).await;
        assert_eq!(
            outcome,
            Outcome::fail("HTTP 200 OK: body does not contain \"ready\"")
        );
    }

    /// A server that never answers fails at the timeout.
    #[tokio::test]
    async fn http_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut streams = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                streams.push(stream);
            }
        });
        let mut silent = check("web", http(&format!("http://{addr}/"), None));
        silent.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let outcome = run_once(&silent).await;
        assert_eq!(outcome, Outcome::fail("timed out after 200ms"));
        assert!(started.elapsed() < Duration::from_secs(2));
        held.abort();
    }

    /// A port that listens passes, by address or by name; a closed one
    /// fails with the error.
    #[tokio::test]
    async fn tcp_connects_or_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tcp = |host: &str, port| Probe::Tcp {
            host: host.to_owned(),
            port,
        };
        let outcome = run_once(&check("db", tcp("127.0.0.1", port))).await;
        assert_eq!(
            outcome,
            Outcome::pass(format!("connected to 127.0.0.1:{port}"))
        );
        let outcome = run_once(&check("db", tcp("localhost", port))).await;
        assert_eq!(
            outcome,
            Outcome::pass(format!("connected to 127.0.0.1:{port}"))
        );

        let port = closed_port().await;
        let outcome = run_once(&check("db", tcp("127.0.0.1", port))).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(
            outcome
                .output
                .starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
            "{outcome:?}"
        );
    }

    /// Exit 0 passes; anything else fails, saying the exit status before
    /// the output (stdout, then stderr).
    #[tokio::test]
    async fn command_exit_status_decides() {
        let outcome = run_once(&check("c", command(&["/bin/true"]))).await;
        assert_eq!(outcome, Outcome::pass(""));
        let outcome = run_once(&check("c", command(&["/bin/false"]))).await;
        assert_eq!(outcome, Outcome::fail("exit status 1"));
        let outcome = run_once(&check(
            "c",
            command(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
        ))
        .await;
        assert_eq!(outcome, Outcome::fail("exit status 3: out\nerr"));
        let outcome = run_once(&check("c", command(&["/bin/sh", "-c", "echo fine"]))).await;
        assert_eq!(outcome, Outcome::pass("fine"));
        let outcome = run_once(&check("c", command(&["/nonexistent/check"]))).await;
        assert!(!outcome.ok, "{outcome:?}");
        assert!(
            outcome
                .output
                .starts_with("cannot run /nonexistent/check: "),
            "{outcome:?}"
        );
    }

    /// A command still running at the timeout is killed and fails.
    #[tokio::test]
    async fn command_times_out() {
        let mut slow = check("c", command(&["/bin/sleep", "5"]));
        slow.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let outcome = run_once(&slow).await;
        assert_eq!(outcome, Outcome::fail("timed out after 200ms"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// A command does not inherit the agent's own variables, nor
    /// systemd's.
    #[test]
    fn agent_variables_are_hidden() {
        assert!(hidden_variable("MUSTER_AGENT_JOIN_TOKEN"));
        assert!(hidden_variable("NOTIFY_SOCKET"));
        assert!(hidden_variable("WATCHDOG_USEC"));
        assert!(!hidden_variable("PATH"));
        assert!(!hidden_variable("MUSTER_HOME"));
    }

    /// Outputs are trimmed, lose control characters, and are cut to what
    /// a heartbeat may carry.
    #[tokio::test]
    async fn outputs_fit_a_report() {
        assert_eq!(fit(" a\u{1b}b\r\nc\td \n"), "a\u{FFFD}b\nc\td");
        let outcome = run_once(&check(
            "c",
            command(&[
                "/bin/sh",
                "-c",
                "printf 'x%.0s' $(seq 2000); printf '\\001'",
            ]),
        ))
        .await;
        assert!(outcome.ok, "{outcome:?}");
        assert!(
            outcome.output.len() <= condition::MAX_TEXT,
            "{}",
            outcome.output.len()
        );
        assert!(outcome.output.ends_with('…'), "{}", outcome.output);
        let report = CheckReport {
            name: "c".to_owned(),
            kind: CheckKind::Command,
            passing: true,
            output: outcome.output,
        };
        condition::validate(&[report], &[], None).unwrap();
        let report = CheckReport {
            name: "c".to_owned(),
            kind: CheckKind::Command,
            passing: true,
            output: fit("bell\u{7}"),
        };
        condition::validate(&[report], &[], None).unwrap();
    }

    /// Not passing until the successes threshold is met; with
    /// failures = 3 it takes three failures in a row to fail, and a
    /// success in between starts the count again.
    #[test]
    fn thresholds_count_runs_in_a_row() {
        let mut standing = Standing::default();
        assert!(!standing.passing());
        assert_eq!(standing.record(true, 2, 3), None);
        assert!(!standing.passing(), "passing after one of two successes");
        assert_eq!(standing.record(false, 2, 3), None);
        assert_eq!(standing.record(true, 2, 3), None);
        assert!(
            !standing.passing(),
            "a failure did not start the count again"
        );
        assert_eq!(standing.record(true, 2, 3), Some(true));
        assert!(standing.passing());
        assert_eq!(standing.record(true, 2, 3), None);

        assert_eq!(standing.record(false, 2, 3), None);
        assert_eq!(standing.record(false, 2, 3), None);
        assert_eq!(standing.record(true, 2, 3), None);
        assert!(standing.passing());
        assert_eq!(standing.record(false, 2, 3), None);
        assert_eq!(standing.record(false, 2, 3), None);
        assert!(standing.passing(), "failing before three in a row");
        assert_eq!(standing.record(false, 2, 3), Some(false));
        assert!(!standing.passing());
        assert_eq!(standing.record(false, 2, 3), None);
    }

    /// A check that has never passed does not pass, and is said to fail
    /// once its failures threshold is met.
    #[test]
    fn not_passing_before_the_first_success() {
        let mut standing = Standing::default();
        assert_eq!(standing.record(false, 1, 2), None);
        assert!(!standing.passing());
        assert_eq!(standing.record(false, 1, 2), Some(false));
        assert!(!standing.passing());
        assert_eq!(standing.record(true, 1, 2), Some(true));
        assert!(standing.passing());
    }

    /// With no checks, the reports are an empty list that never changes.
    #[tokio::test]
    async fn no_checks_report_nothing() {
        let running = start(Vec::new());
        let mut rx = running.reports();
        assert!(rx.borrow_and_update().is_empty());
        let changed = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
        assert!(changed.is_err(), "the empty reports changed");
        assert!(rx.borrow().is_empty());
    }

    /// Reports come in the order of the settings, all not passing before
    /// their first run, then each as its check goes.
    #[tokio::test]
    async fn reports_follow_the_settings() {
        let running = start(vec![
            check("second", command(&["/bin/false"])),
            check("first", command(&["/bin/sh", "-c", "echo ready"])),
        ]);
        let mut rx = running.reports();
        let names: Vec<_> = rx.borrow().iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["second", "first"]);
        let reports = wait_for(&mut rx, |reports| {
            reports.iter().all(|r| r.output != NOT_RUN_YET)
        })
        .await;
        assert_eq!(
            reports,
            [
                CheckReport {
                    name: "second".to_owned(),
                    kind: CheckKind::Command,
                    passing: false,
                    output: "exit status 1".to_owned(),
                },
                CheckReport {
                    name: "first".to_owned(),
                    kind: CheckKind::Command,
                    passing: true,
                    output: "ready".to_owned(),
                },
            ]
        );
    }

    /// Before its first run every report says it has not run and does
    /// not pass.
    #[tokio::test]
    async fn checks_start_not_passing() {
        let running = start(vec![check("c", command(&["/bin/true"]))]);
        let report = running.reports().borrow().clone();
        assert_eq!(
            report,
            [CheckReport {
                name: "c".to_owned(),
                kind: CheckKind::Command,
                passing: false,
                output: NOT_RUN_YET.to_owned(),
            }]
        );
    }

    /// A running check passes after `successes` runs, fails only after
    /// `failures` runs in a row, and does not wake anyone while nothing
    /// changes.
    #[tokio::test]
    async fn running_check_follows_its_thresholds() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("down");
        let script = format!("test ! -e {}", flag.display());
        let interval = Duration::from_millis(50);
        let mut probe = check("c", command(&["/bin/sh", "-c", &script]));
        probe.successes = 2;
        probe.failures = 3;
        probe.interval = interval;

        let started = Instant::now();
        let running = start(vec![probe]);
        let mut rx = running.reports();
        wait_for(&mut rx, |reports| reports[0].passing).await;
        assert!(started.elapsed() >= interval, "passed after one run");

        // Passing and silent: no change to report.
        rx.mark_unchanged();
        tokio::time::sleep(interval * 3).await;
        assert!(!rx.has_changed().unwrap(), "woken without a change");

        std::fs::write(&flag, "").unwrap();
        let failing_since = Instant::now();
        let reports = wait_for(&mut rx, |reports| !reports[0].passing).await;
        assert_eq!(reports[0].output, "exit status 1");
        assert!(
            failing_since.elapsed() >= interval * 2 - Duration::from_millis(20),
            "failed after fewer than three runs: {:?}",
            failing_since.elapsed()
        );
    }

    /// Dropping the running checks stops them.
    #[tokio::test]
    async fn dropping_stops_the_checks() {
        let running = start(vec![check("c", command(&["/bin/true"]))]);
        let mut rx = running.reports();
        drop(running);
        let stopped = tokio::time::timeout(Duration::from_secs(5), async {
            while rx.changed().await.is_ok() {}
        })
        .await;
        assert!(stopped.is_ok(), "the check kept running");
    }
}
