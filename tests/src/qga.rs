//! A client of the QEMU guest agent (`qemu-guest-agent` in the guest),
//! reached through the UNIX socket QEMU exposes for its virtio-serial port:
//! how the boot stories run commands in a guest and put files into it,
//! with no network path and no login.
//!
//! Every call opens the socket afresh, synchronises with
//! `guest-sync-delimited` (the answer follows a 0xFF byte, which skips
//! whatever a previous connection left unread), sends one command and
//! reads its answer. Calls block; async code runs them through
//! [`tokio::task::spawn_blocking`], as [`crate::vm::Guest`] does.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine as _;
use serde_json::{json, Value};

/// How long one answer may take before the call fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest chunk written to a guest file in one `guest-file-write`.
const WRITE_CHUNK: usize = 48 * 1024;

/// How a command run in the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// Its exit code (`None` if a signal ended it).
    pub code: Option<i64>,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl Exec {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Exec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The guest agent behind one socket.
#[derive(Debug, Clone)]
pub struct Qga {
    socket: PathBuf,
}

impl Qga {
    /// A client of the agent behind `socket`.
    pub fn new(socket: PathBuf) -> Qga {
        Qga { socket }
    }

    /// Sends `command` with `arguments` and gives back its `return` value.
    pub fn call(&self, command: &str, arguments: Value) -> anyhow::Result<Value> {
        let stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let id: u32 = rand::random::<u32>() >> 1;
        writeln!(
            writer,
            "{}",
            json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
        )?;
        // Skip to the delimiter, then read the sync answer.
        let mut byte = [0u8; 1];
        loop {
            reader
                .read_exact(&mut byte)
                .context("waiting for the guest agent's sync")?;
            if byte[0] == 0xff {
                break;
            }
        }
        loop {
            let answer = read_answer(&mut reader)?;
            if answer["return"] == json!(id) {
                break;
            }
        }
        let mut request = json!({"execute": command});
        if !arguments.is_null() {
            request["arguments"] = arguments;
        }
        writeln!(writer, "{request}")?;
        let answer = read_answer(&mut reader)?;
        if let Some(error) = answer.get("error") {
            bail!("{command}: {}", error["desc"].as_str().unwrap_or("failed"));
        }
        Ok(answer["return"].clone())
    }

    /// Whether the agent answers a ping now.
    pub fn ping(&self) -> bool {
        self.call("guest-ping", Value::Null).is_ok()
    }

    /// Runs `program` with `args` in the guest and waits (up to `timeout`)
    /// for it to end.
    pub fn exec(&self, program: &str, args: &[&str], timeout: Duration) -> anyhow::Result<Exec> {
        let started = self.call(
            "guest-exec",
            json!({"path": program, "arg": args, "capture-output": true}),
        )?;
        let pid = started["pid"]
            .as_i64()
            .ok_or_else(|| anyhow!("guest-exec answered no pid: {started}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.call("guest-exec-status", json!({"pid": pid}))?;
            if status["exited"] == json!(true) {
                let text = |key: &str| -> anyhow::Result<String> {
                    let encoded = status[key].as_str().unwrap_or_default();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .with_context(|| format!("{key} is not base64"))?;
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                };
                return Ok(Exec {
                    code: status["exitcode"].as_i64(),
                    stdout: text("out-data")?,
                    stderr: text("err-data")?,
                });
            }
            if Instant::now() >= deadline {
                bail!("{program} {args:?} did not end within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Writes `bytes` to `path` in the guest (created or truncated).
    pub fn write_file(&self, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let handle = self.call("guest-file-open", json!({"path": path, "mode": "w"}))?;
        let result = bytes.chunks(WRITE_CHUNK).try_for_each(|chunk| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(chunk);
            self.call(
                "guest-file-write",
                json!({"handle": handle, "buf-b64": encoded}),
            )
            .map(drop)
        });
        self.call("guest-file-close", json!({"handle": handle}))?;
        result.with_context(|| format!("writing {path} in the guest"))
    }
}

/// One JSON answer, a line; events and blank lines are skipped.
fn read_answer(reader: &mut BufReader<UnixStream>) -> anyhow::Result<Value> {
    loop {
        let mut line = Vec::new();
        let read = reader
            .read_until(b'\n', &mut line)
            .context("reading the guest agent's answer")?;
        if read == 0 {
            bail!("the guest agent closed the connection");
        }
        // A late answer to an earlier connection's sync may still carry
        // its 0xFF delimiter.
        line.retain(|b| *b != 0xff);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(text).with_context(|| format!("the guest agent said {text:?}"))?;
        if value.get("event").is_none() {
            return Ok(value);
        }
    }
}
