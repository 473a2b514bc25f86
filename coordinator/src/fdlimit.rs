//! The file descriptor limit: every API connection, DNS TCP connection and
//! open file holds one. `serve` raises its soft limit to the hard limit at
//! start (the unit's `LimitNOFILE` sets both) and caps its connections to
//! fit what it got, keeping [`FD_HEADROOM`] for everything else.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// File descriptors kept for what is not an API connection: the store, the
/// DNS sockets and their TCP connections, EC2 and Route53 clients, logs.
pub const FD_HEADROOM: u64 = 256;

/// The soft and hard limits on open files, after the soft one was raised
/// as far as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl FdLimit {
    /// How many API connections fit: the soft limit less [`FD_HEADROOM`].
    pub fn connections(&self) -> u64 {
        self.soft.saturating_sub(FD_HEADROOM).max(16)
    }
}

/// Raises the soft limit on open files to the hard limit; logs both. A
/// refusal (a seccomp filter, say) is logged and the soft limit kept.
pub fn raise_nofile() -> FdLimit {
    let (was, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "the open files limit could not be read");
            return FdLimit {
                was: 1024,
                soft: 1024,
                hard: 1024,
            };
        }
    };
    let mut soft = was;
    if was < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => soft = hard,
            Err(error) => {
                tracing::warn!(%error, soft = was, hard, "the open files limit could not be raised")
            }
        }
    }
    tracing::info!(soft, hard, was, "open files limit");
    FdLimit { was, soft, hard }
}
