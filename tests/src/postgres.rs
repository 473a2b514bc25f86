//! A PostgreSQL server of a test's own, from Debian's packages: a fresh
//! cluster per [`Postgres::start`] in a temporary directory, on a free
//! loopback port, with a superuser named `muster` and trust authentication.
//! It is set up for tests (no fsync, 200 connections) and logs to a file in
//! that directory, whose tail is printed when a test fails.
//!
//! initdb refuses to run as root, so as root the tools and the server run as
//! the `postgres` system user, who owns the directory. The server can be
//! stopped, started again on the same port with the same data, and killed,
//! as an outage or a crash would. Reads "by hand" go through `psql`.
//!
//! Only `std` and `tempfile` are used: the coordinator's unit tests include
//! this file by path as well. Everything blocks; failures panic.

// Shared with the coordinator's unit tests, which use a part of it.
#![allow(dead_code)]

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The superuser initdb creates; trust authentication, no password.
pub const SUPERUSER: &str = "muster";

/// How long `pg_ctl` waits for the server to start or stop, in seconds.
const PG_CTL_TIMEOUT: &str = "60";

/// How many lines of the server's log a failing test prints.
const LOG_LINES: usize = 60;

/// A PostgreSQL server and its data directory, stopped by pid and removed
/// when dropped; if the test is failing, its log's tail is printed first.
#[derive(Debug)]
pub struct Postgres {
    dir: TempDir,
    port: u16,
    pg_ctl: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
    /// The `postgres` system user's uid and gid, when we are root.
    owner: Option<(u32, u32)>,
}

impl Postgres {
    /// Creates a cluster with `initdb` in a fresh temporary directory and
    /// starts it on a free loopback port; returns once it accepts
    /// connections. Panics if PostgreSQL is missing or will not start.
    pub fn start() -> Postgres {
        let initdb = tool("initdb");
        let dir = tempfile::Builder::new()
            .prefix("muster-pg-")
            .tempdir()
            .expect("creating a directory for PostgreSQL");
        let owner = (effective_uid() == 0).then(postgres_user);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("giving PostgreSQL's directory to the postgres user");
        }
        let mut pg = Postgres {
            dir,
            port: free_port(),
            pg_ctl: tool("pg_ctl"),
            postgres: tool("postgres"),
            psql: tool("psql"),
            owner,
        };
        let mut command = pg.command(&initdb);
        command.arg("-D").arg(pg.data_dir());
        command.args(["--auth=trust", "-U", SUPERUSER, "-E", "UTF8"]);
        command.args(["--locale=C", "--no-instructions"]);
        if let Err(e) = run(command) {
            panic!("initdb failed: {e}");
        }
        // The port was free a moment ago; another test may have taken it.
        for attempt in 1..=5 {
            let before = pg.log().len();
            let result = pg.try_start();
            let log = pg.log();
            let collided = log.get(before..).unwrap_or("").contains("could not bind");
            match result {
                Err(_) if collided && attempt < 5 => pg.port = free_port(),
                Err(e) => panic!("starting PostgreSQL failed: {e}"),
                Ok(()) => break,
            }
        }
        pg
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` for the superuser:
    /// `postgres://muster@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Creates the database `name`. Panics if it cannot.
    pub fn create_database(&self, name: &str) {
        let quoted = name.replace('"', "\"\"");
        self.psql("postgres", &format!("CREATE DATABASE \"{quoted}\""));
    }

    /// Runs `sql` in `database` with `psql` as the superuser, stopping at the
    /// first error, and returns its output (unaligned, tuples only: one row
    /// a line, columns separated by `|`), trimmed. Panics with psql's
    /// stderr if it fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(&self.psql)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "psql -d {database} -c {sql:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Turns TLS on with certificate `cert_pem` and its key `key_pem`
    /// (written into the data directory, the key 0600, owned by the
    /// server's user), or replaces the certificate it serves; plain
    /// connections are still taken. Returns once new connections get it.
    pub fn serve_tls(&self, cert_pem: &str, key_pem: &str) {
        // A new name each time: once a new session shows it, the server
        // has read its configuration again, and its certificate with it.
        let serial = std::fs::read_dir(self.data_dir())
            .expect("listing PostgreSQL's data directory")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".crt"))
            })
            .count();
        let (cert, key) = (
            format!("server-{serial}.crt"),
            format!("server-{serial}.key"),
        );
        for (file, pem) in [(&cert, cert_pem), (&key, key_pem)] {
            let path = self.data_dir().join(file);
            std::fs::write(&path, pem).expect("writing PostgreSQL's certificate");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("restricting PostgreSQL's key");
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .expect("giving PostgreSQL its key");
            }
        }
        self.psql(
            "postgres",
            &format!("ALTER SYSTEM SET ssl_cert_file = '{cert}'"),
        );
        self.psql(
            "postgres",
            &format!("ALTER SYSTEM SET ssl_key_file = '{key}'"),
        );
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.psql("postgres", "SELECT pg_reload_conf()");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.psql("postgres", "SHOW ssl_cert_file") != cert {
            assert!(Instant::now() < deadline, "PostgreSQL did not take {cert}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(self.psql("postgres", "SHOW ssl"), "on");
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`), as an operator
    /// would; the data stays.
    pub fn stop(&self) {
        let mut command = self.command(&self.pg_ctl);
        command.args(["stop", "-w", "-t", PG_CTL_TIMEOUT, "-m", "fast"]);
        command.arg("-D").arg(self.data_dir());
        if let Err(e) = run(command) {
            panic!("stopping PostgreSQL failed: {e}");
        }
    }

    /// Starts the stopped (or killed) server again on the same port with the
    /// same data; returns once it accepts connections.
    pub fn start_again(&self) {
        if let Err(e) = self.try_start() {
            panic!("starting PostgreSQL failed: {e}");
        }
    }

    /// Stops the server cleanly and starts it again.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Kills the server as a crash would: SIGKILL to the postmaster. Returns
    /// once it and its children are dead; [`Postgres::start_again`] then
    /// recovers from the write-ahead log.
    pub fn kill(&self) {
        let pid = self.pid().expect("killing PostgreSQL: it is not running");
        let children: Vec<u32> = std::fs::read_dir("/proc")
            .expect("listing /proc")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&child| parent_of(child) == Some(pid))
            .collect();
        let status = Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -9 {pid} failed ({status})");
        let deadline = Instant::now() + Duration::from_secs(30);
        while running(pid) || children.iter().any(|&child| running(child)) {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL outlived SIGKILL to {pid} by 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The dead postmaster may stay a zombie until init reaps it, and the
        // next server would take it for a live one: its lock files go.
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        let _ = std::fs::remove_file(self.dir.path().join(format!(".s.PGSQL.{}.lock", self.port)));
    }

    /// The postmaster's pid (first line of `postmaster.pid`) while it runs.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        running(pid).then_some(pid)
    }

    /// `pg_ctl start`, with the settings for tests on the command line.
    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='{}' \
             -c fsync=off -c max_connections=200 -c log_destination=stderr",
            self.port,
            self.dir.path().display()
        );
        let mut command = self.command(&self.pg_ctl);
        command.args(["start", "-w", "-t", PG_CTL_TIMEOUT]);
        command.arg("-D").arg(self.data_dir());
        command.arg("-l").arg(self.log_path());
        command.arg("-p").arg(&self.postgres);
        command.arg("-o").arg(options);
        run(command)
    }

    /// A command run in the directory, as its owner.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_LINES)..].join("\n")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log (last {LOG_LINES} lines) ---\n{}",
                self.log_tail()
            );
        }
        let Some(pid) = self.pid() else { return };
        let mut command = self.command(&self.pg_ctl);
        command.args(["stop", "-w", "-t", PG_CTL_TIMEOUT, "-m", "immediate"]);
        command.arg("-D").arg(self.data_dir());
        if run(command).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// Runs `command`; on failure, says what it was and what it printed.
fn run(mut command: Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// `name` on PATH, else in the newest `/usr/lib/postgresql/<version>/bin`.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(newest_debian_bin());
    let found = dirs.into_iter().map(|dir| dir.join(name)).find(|path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    let missing = || panic!("PostgreSQL is missing: run scripts/setup (no {name} found)");
    found.unwrap_or_else(missing)
}

/// The newest `/usr/lib/postgresql/<version>/bin`, where Debian puts them.
fn newest_debian_bin() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten();
    let versions = dirs.filter_map(|dir| {
        let name = dir.file_name().into_string().ok()?;
        let version: Option<Vec<u32>> = name.split('.').map(|n| n.parse().ok()).collect();
        Some((version?, dir.path()))
    });
    versions.max().map(|(_, dir)| dir.join("bin"))
}

/// This process's effective uid, from `/proc/self/status`.
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"));
    let euid = uids.and_then(|uids| uids.split_whitespace().nth(1)?.parse().ok());
    euid.expect("/proc/self/status has a Uid line")
}

/// The `postgres` system user's uid and gid, from `/etc/passwd`.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != "postgres" {
                return None;
            }
            let mut ids = fields.skip(1);
            Some((ids.next()?.parse().ok()?, ids.next()?.parse().ok()?))
        })
        .expect(
            "PostgreSQL is missing: run scripts/setup (as root, initdb needs the postgres user)",
        )
}

/// A loopback TCP port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 over TCP")
}

/// The parent of `pid` while it runs; `None` once it is gone or a zombie.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    (state != "Z" && state != "X").then_some(parent)
}

/// Whether `pid` runs (and is not a zombie).
fn running(pid: u32) -> bool {
    parent_of(pid).is_some()
}
