//! One moto server (the EC2 emulator from PyPI's `moto[server]`) per test, on
//! a free loopback port, so tests stay independent and run in parallel.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procs::{free_tcp_port, tail, Process};

/// How long moto gets to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many fresh ports are tried when the chosen one was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    process: Process,
    port: u16,
}

impl Moto {
    /// Starts `$MUSTER_VENV/bin/moto_server` (default venv
    /// `~/.cache/muster-venv`, made by `scripts/setup`) and waits until it
    /// answers HTTP.
    pub async fn start() -> Moto {
        Moto::start_as(None).await
    }

    /// Like [`Moto::start`], answering as AWS account `account` (moto's
    /// `MOTO_ACCOUNT_ID`) rather than moto's default, 123456789012.
    pub async fn start_in_account(account: &str) -> Moto {
        Moto::start_as(Some(account)).await
    }

    async fn start_as(account: Option<&str>) -> Moto {
        let program = moto_server_path();
        let mut last_logs = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_tcp_port();
            let mut command = Command::new(&program);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            match account {
                Some(account) => command.env("MOTO_ACCOUNT_ID", account),
                None => command.env_remove("MOTO_ACCOUNT_ID"),
            };
            let mut process = Process::spawn("moto", command);
            match wait_ready(&mut process, port).await {
                Ready::Up => return Moto { process, port },
                Ready::Exited => {
                    last_logs = process.logs();
                    if !last_logs.contains("in use") {
                        break;
                    }
                }
                Ready::TimedOut => {
                    process.stop();
                    panic!(
                        "moto_server did not answer on 127.0.0.1:{port} within {READY_TIMEOUT:?}\n{}",
                        tail(&process.logs(), 16 * 1024)
                    );
                }
            }
        }
        panic!(
            "moto_server exited before answering\n{}",
            tail(&last_logs, 16 * 1024)
        );
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL` and the SDK.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// moto's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

enum Ready {
    Up,
    Exited,
    TimedOut,
}

async fn wait_ready(process: &mut Process, port: u16) -> Ready {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("building a plain HTTP client");
    let url = format!("http://127.0.0.1:{port}/moto-api/");
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if process.try_exit().is_some() {
            return Ready::Exited;
        }
        // Any HTTP answer at all means the server is listening.
        if client.get(&url).send().await.is_ok() {
            return Ready::Up;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ready::TimedOut
}

/// `$MUSTER_VENV/bin/moto_server`, or a panic that says how to get it.
fn moto_server_path() -> PathBuf {
    let venv = std::env::var_os("MUSTER_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/muster-venv"))
        })
        .expect("neither MUSTER_VENV nor HOME is set");
    let path = venv.join("bin/moto_server");
    assert!(
        path.is_file(),
        "{} not found: run scripts/setup (it installs moto[server] into {})",
        path.display(),
        venv.display()
    );
    path
}
