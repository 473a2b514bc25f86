//! A real BIND (`named`, Debian's `bind9`) on a free loopback port, primary
//! for one zone that takes RFC 2136 updates signed with a TSIG key of its
//! own. It runs in the foreground as a child, in a temporary directory that
//! holds `named.conf`, the zone file and its journal, and is stopped by pid.
//! Stopping and starting it again keeps the port and the zone (journal
//! included), as a server outage would.
//!
//! Edits "by hand" go through `nsupdate` with the same key, the way an
//! operator would make them. Reads go through [`crate::dns::Resolver`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tempfile::TempDir;

use crate::dns::Resolver;
use crate::procs::{free_udp_tcp_port, loopback, tail, Process};

/// Where Debian installs `named` (`scripts/setup` installs `bind9`).
pub const NAMED: &str = "/usr/sbin/named";

/// The name of the TSIG key the zone accepts updates with.
pub const KEY_NAME: &str = "muster-key";

/// The TSIG algorithm of that key.
pub const KEY_ALGORITHM: &str = "hmac-sha256";

/// How long `named` gets to answer for its zone.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running (or stopped) BIND.
#[derive(Debug)]
pub struct Bind {
    process: Option<Process>,
    earlier_logs: String,
    dir: TempDir,
    port: u16,
    zone: String,
    secret: String,
}

/// A fresh random TSIG secret, base64.
pub fn random_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

impl Bind {
    /// Starts `named` as primary for `zone` on a free loopback port with a
    /// fresh key, and waits until it answers the zone's SOA.
    pub async fn start(zone: &str) -> Bind {
        let dir = tempfile::Builder::new()
            .prefix("muster-bind-")
            .tempdir()
            .expect("creating a directory for named");
        let mut bind = Bind {
            process: None,
            earlier_logs: String::new(),
            dir,
            port: free_udp_tcp_port(),
            zone: zone.to_owned(),
            secret: random_secret(),
        };
        bind.write_config();
        bind.spawn();
        bind.wait_ready().await;
        bind
    }

    /// The server's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// A resolver that asks only this server.
    pub fn resolver(&self) -> Resolver {
        Resolver::new(self.addr())
    }

    /// The key's base64 secret.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Writes `secret` (base64) to a mode-0600 file in `dir` and returns its
    /// path, for `--tsig-secret-file`.
    pub fn write_secret_file(dir: &Path, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("tsig-{}.secret", rand::random::<u32>()));
        std::fs::write(&path, format!("{secret}\n")).expect("writing the TSIG secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("making the TSIG secret private");
        path
    }

    /// The `serve` flags that point a coordinator at this server with its
    /// key, whose secret is written to a file in `dir`.
    pub fn coordinator_args(&self, dir: &Path) -> Vec<String> {
        let secret = Bind::write_secret_file(dir, &self.secret);
        vec![
            "--dns-provider".into(),
            "rfc2136".into(),
            "--rfc2136-server".into(),
            self.addr().to_string(),
            "--tsig-key-name".into(),
            KEY_NAME.into(),
            "--tsig-algorithm".into(),
            KEY_ALGORITHM.into(),
            "--tsig-secret-file".into(),
            secret.display().to_string(),
        ]
    }

    /// Sends `commands` (nsupdate's `update …` lines) as one signed update.
    /// Panics if nsupdate fails.
    pub async fn nsupdate(&self, commands: &[&str]) {
        let mut script = format!("server 127.0.0.1 {}\nzone {}\n", self.port, self.zone);
        for command in commands {
            script.push_str(command);
            script.push('\n');
        }
        script.push_str("send\n");
        let script_path = self.dir.path().join("nsupdate.txt");
        std::fs::write(&script_path, &script).expect("writing the nsupdate script");
        let output = tokio::process::Command::new("nsupdate")
            .arg("-y")
            .arg(format!("{KEY_ALGORITHM}:{KEY_NAME}:{}", self.secret))
            .arg(&script_path)
            .kill_on_drop(true)
            .output()
            .await
            .expect("running nsupdate (scripts/setup installs bind9-dnsutils)");
        assert!(
            output.status.success(),
            "nsupdate failed ({}):\n{script}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Stops `named` by pid (an outage); the zone stays on disk.
    pub fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            self.earlier_logs.push_str(&process.finish());
            self.earlier_logs.push('\n');
        }
    }

    /// Freezes `named` (SIGSTOP): connections are still accepted by the
    /// kernel, and nothing is answered, so an update in flight hangs.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused `named` run again (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let process = self.process.as_ref().expect("named runs");
        let pid = nix::unistd::Pid::from_raw(process.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling named");
    }

    /// Starts `named` again on the same port and files; waits until it
    /// answers.
    pub async fn start_again(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }

    /// Everything every run printed.
    pub fn logs(&self) -> String {
        let current = self.process.as_ref().map(Process::logs).unwrap_or_default();
        format!("{}{current}", self.earlier_logs)
    }

    fn write_config(&self) {
        let dir = self.dir.path().display().to_string();
        let zone = &self.zone;
        let conf = format!(
            r#"options {{
    directory "{dir}";
    pid-file none;
    session-keyfile none;
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
}};
controls {{ }};
key "{KEY_NAME}" {{
    algorithm {KEY_ALGORITHM};
    secret "{secret}";
}};
zone "{zone}" {{
    type primary;
    file "{dir}/{zone}.zone";
    allow-update {{ key "{KEY_NAME}"; }};
}};
"#,
            port = self.port,
            secret = self.secret,
        );
        std::fs::write(self.dir.path().join("named.conf"), conf).expect("writing named.conf");
        let records = format!(
            "$TTL 30\n\
             @ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 30\n\
             @ IN NS ns.{zone}.\n\
             ns IN A 127.0.0.1\n"
        );
        std::fs::write(self.dir.path().join(format!("{zone}.zone")), records)
            .expect("writing the zone file");
    }

    fn spawn(&mut self) {
        assert!(
            Path::new(NAMED).is_file(),
            "{NAMED} not found: run scripts/setup (it installs bind9)"
        );
        let mut command = Command::new(NAMED);
        command
            .arg("-g")
            .arg("-4")
            .arg("-n")
            .arg("1")
            .arg("-c")
            .arg(self.dir.path().join("named.conf"));
        self.process = Some(Process::spawn("named", command));
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let resolver = self.resolver();
        let mut last = String::from("no attempt yet");
        while Instant::now() < deadline {
            if let Some(status) = self.process.as_mut().and_then(Process::try_exit) {
                panic!(
                    "named exited before it answered ({status})\n{}",
                    tail(&self.logs(), 32 * 1024)
                );
            }
            match resolver.query(&self.zone, RecordType::SOA).await {
                Ok(answer) if answer.rcode == ResponseCode::NoError && answer.authoritative => {
                    return
                }
                Ok(answer) => last = format!("{answer:?}"),
                Err(error) => last = format!("{error:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "named did not answer for {} within {READY_TIMEOUT:?}; last: {last}\n{}",
            self.zone,
            tail(&self.logs(), 32 * 1024)
        );
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.earlier_logs.is_empty() {
            eprintln!(
                "--- named, earlier runs ---\n{}",
                tail(&self.earlier_logs, 64 * 1024)
            );
        }
    }
}
