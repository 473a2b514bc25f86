//! Logs: `tracing` with structured fields, to stderr.
//!
//! Under journald (`JOURNAL_STREAM` set) lines carry no timestamp, since the
//! journal stamps them itself, and no colours. `RUST_LOG` narrows or widens
//! what is shown (e.g. `RUST_LOG=muster_agent=debug`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber; `default` is the filter when `RUST_LOG` is not
/// set (e.g. `"info"`). A second call does nothing.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!under_journald && std::io::stderr().is_terminal());
    let _ = if under_journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}
