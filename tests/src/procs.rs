//! Child processes the tests start: where the binaries are, free loopback
//! ports, and a guard that captures a process's output to files and stops it
//! by pid (SIGTERM, then SIGKILL) when the test is done with it.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// How long a process gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Most bytes of one log printed when a test fails; the tail is kept.
const LOG_TAIL_BYTES: usize = 64 * 1024;

/// The path of the workspace binary `name` (`muster-agent`,
/// `muster-coordinator`).
///
/// `$MUSTER_BIN_DIR` wins when set; otherwise the binary is looked for next
/// to the test executable's own directory (`target/debug/deps/<test>` →
/// `target/debug/<name>`).
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("MUSTER_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test executable has a path");
            let deps = exe
                .parent()
                .expect("the test executable lives in a directory");
            let profile = if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent().expect("target/<profile>/deps has a parent")
            } else {
                deps
            };
            profile.to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` first \
         (or point MUSTER_BIN_DIR at the directory holding it)",
        path.display()
    );
    path
}

/// A loopback TCP port that was free a moment ago. Whoever binds it next may
/// still lose a race; callers that spawn servers retry on collision.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 over TCP")
}

/// A loopback port free for both UDP and TCP a moment ago (DNS serves both).
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding 127.0.0.1:0 over UDP");
        let port = udp
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("found no loopback port free for both UDP and TCP in 50 tries");
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A running child process whose stdout and stderr go to files in its own
/// temporary directory. Dropping it stops the process; if the test is failing
/// at that moment, the logs are printed so the failure explains itself.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    logs: TempDir,
    exit: Option<ExitStatus>,
    /// Whether dropping during a panic prints the logs (off once they were
    /// handed to someone else by [`Process::finish`]).
    print_on_panic: bool,
}

impl Process {
    /// Spawns `command` (program, args and env already set) under `name`,
    /// with stdin closed and output captured.
    pub fn spawn(name: &str, mut command: Command) -> Process {
        let logs = tempfile::Builder::new()
            .prefix(&format!("muster-{name}-logs-"))
            .tempdir()
            .expect("creating a log directory");
        let stdout = File::create(logs.path().join("stdout")).expect("creating the stdout log");
        let stderr = File::create(logs.path().join("stderr")).expect("creating the stderr log");
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({command:?}): {e}"));
        Process {
            name: name.to_owned(),
            child,
            logs,
            exit: None,
            print_on_panic: true,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process printed to stdout.
    pub fn stdout(&self) -> String {
        read_lossy(&self.logs.path().join("stdout"))
    }

    /// What the process printed to stderr.
    pub fn stderr(&self) -> String {
        read_lossy(&self.logs.path().join("stderr"))
    }

    /// Stdout and stderr, labelled.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} (pid {pid}) stdout ---\n{out}\n--- {name} (pid {pid}) stderr ---\n{err}",
            name = self.name,
            pid = self.pid(),
            out = self.stdout(),
            err = self.stderr(),
        )
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("polling a child process");
        }
        self.exit
    }

    /// Stops the process: SIGTERM by pid, wait up to [`STOP_GRACE`], then
    /// SIGKILL. Returns how it exited. Calling it again is harmless.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pids fit in i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let status = self.child.wait().expect("waiting for a killed child");
        self.exit = Some(status);
        status
    }

    /// Stops the process and hands back its logs; the caller keeps them, so
    /// the guard no longer prints them on a failing test.
    pub fn finish(mut self) -> String {
        self.stop();
        self.print_on_panic = false;
        self.logs()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if self.print_on_panic && std::thread::panicking() {
            eprintln!("{}", tail(&self.logs(), LOG_TAIL_BYTES));
        }
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Raises this process's soft limit on open files to its hard limit, and
/// returns that.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("reading the open files limit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raising the open files limit");
    }
    hard
}

/// User + system CPU time of a process so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which sits in parentheses.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // Linux reports in USER_HZ, 100 on every architecture we run on.
    Duration::from_millis(ticks * 10)
}

/// Resident set size of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The anonymous part of `pid`'s resident memory in KiB (heap, stacks;
/// not the pages of its executable and libraries), or 0 once it is gone.
pub fn rss_anon_kib(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:")
}

/// The KiB figure of `field` in `/proc/<pid>/status`, or 0.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The value at percentile `p` (0–100) of `sorted`, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process stops on SIGTERM by pid and its output stays readable.
    #[test]
    fn stop_by_pid_keeps_output() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo ready; echo oops >&2; exec sleep 30"]);
        let mut process = Process::spawn("sh", command);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.stdout().contains("ready") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = process.stop();
        assert!(!status.success(), "sleep was cut short, not finished");
        assert_eq!(process.stdout().trim(), "ready");
        assert_eq!(process.stderr().trim(), "oops");
        assert!(process.logs().contains("oops"));
    }

    /// The tail of a log is cut at a character boundary.
    #[test]
    fn tail_cuts_at_char_boundaries() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
    }

    /// Ports handed out are bindable right away.
    #[test]
    fn free_ports_bind() {
        let port = free_udp_tcp_port();
        UdpSocket::bind(loopback(port)).unwrap();
        TcpListener::bind(loopback(free_tcp_port())).unwrap();
    }
}
