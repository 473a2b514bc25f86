//! What makes a file the agent the coordinator may serve: an ELF
//! executable of an EC2 architecture, and a Debian package beside it.
//! Checked when the settings are loaded (`agent_binary`, `agent_deb`), and
//! again by `muster_coordinator::agent_dist` when it serves them.

use std::io::Read;
use std::path::{Path, PathBuf};

use muster_proto::settings::Invalid;

/// The binary's file name, on disk and in the download URL.
pub const BINARY_NAME: &str = "muster-agent";
/// The package's file name in the download URL.
pub const DEB_NAME: &str = "muster-agent.deb";

/// Errors reading or recognising an agent file.
#[derive(Debug, thiserror::Error)]
pub enum AgentFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("{path} {reason}")]
    NotAgent {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Where the coordinator looks for the agent when `--agent-binary` is not
/// given: next to its own executable.
pub fn beside_this_executable() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(BINARY_NAME);
    path.is_file().then_some(path)
}

/// The first `N` bytes of `path`.
fn header<const N: usize>(path: &Path) -> Result<[u8; N], AgentFileError> {
    let mut header = [0u8; N];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| AgentFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
    Ok(header)
}

/// The architecture of the ELF executable at `path`, as `uname -m` names
/// it: `x86_64` or `aarch64` (the EC2 ones).
pub fn elf_arch(path: &Path) -> Result<&'static str, AgentFileError> {
    let header = header::<20>(path)?;
    let not = |reason| AgentFileError::NotAgent {
        path: path.display().to_string(),
        reason,
    };
    if &header[..4] != b"\x7fELF" {
        return Err(not("is not an ELF executable"));
    }
    // 64-bit, little-endian; e_machine is the u16 at offset 18.
    if header[4] != 2 || header[5] != 1 {
        return Err(not("is not a 64-bit little-endian ELF executable"));
    }
    match u16::from_le_bytes([header[18], header[19]]) {
        62 => Ok("x86_64"),
        183 => Ok("aarch64"),
        _ => Err(not("is built for neither x86_64 nor aarch64")),
    }
}

/// The agent binaries served, one per architecture, and the package if
/// any.
pub type AgentFiles = (Vec<PathBuf>, Option<PathBuf>);

/// The agent files the settings name, checked: the binaries given (ELF
/// executables of EC2 architectures, at most one per architecture), else
/// `muster-agent` next to this executable if it is one; the package only
/// beside a binary of its architecture (the first binary's).
pub(crate) fn resolve(
    binaries: Vec<PathBuf>,
    deb: Option<PathBuf>,
) -> Result<Option<AgentFiles>, Invalid> {
    let binaries = if binaries.is_empty() {
        beside_this_executable()
            .filter(|path| elf_arch(path).is_ok())
            .into_iter()
            .collect()
    } else {
        let mut seen: Vec<&'static str> = Vec::new();
        for path in &binaries {
            let arch = elf_arch(path).map_err(|e| {
                Invalid::whole("agent_binary", path.display().to_string(), reason_of(&e))
            })?;
            if seen.contains(&arch) {
                return Err(Invalid::whole(
                    "agent_binary",
                    path.display().to_string(),
                    format!("is a second {arch} binary: give one per architecture"),
                ));
            }
            seen.push(arch);
        }
        binaries
    };
    if let Some(deb) = &deb {
        if binaries.is_empty() {
            return Err(Invalid::whole(
                "agent_deb",
                deb.display().to_string(),
                "is served only beside an agent binary: set agent_binary too",
            ));
        }
        check_deb(deb)
            .map_err(|e| Invalid::whole("agent_deb", deb.display().to_string(), reason_of(&e)))?;
    }
    Ok((!binaries.is_empty()).then_some((binaries, deb)))
}

/// What is wrong with an agent file, without repeating its path.
fn reason_of(error: &AgentFileError) -> String {
    match error {
        AgentFileError::Read { source, .. } => source.to_string(),
        AgentFileError::NotAgent { reason, .. } => (*reason).to_owned(),
    }
}

/// Checks that `path` is a Debian package (an `ar` archive starting with
/// `debian-binary`).
pub fn check_deb(path: &Path) -> Result<(), AgentFileError> {
    let header = header::<21>(path)?;
    if &header[..8] != b"!<arch>\n" || &header[8..21] != b"debian-binary" {
        return Err(AgentFileError::NotAgent {
            path: path.display().to_string(),
            reason: "is not a Debian package",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test executable itself is an ELF binary of this machine; a
    /// script is neither an executable nor a package.
    #[test]
    fn reads_the_architecture_of_an_elf_binary() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(elf_arch(&exe).unwrap(), std::env::consts::ARCH);
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, "#!/bin/sh\necho hello world\n").unwrap();
        let error = elf_arch(&text).unwrap_err();
        assert!(error.to_string().contains("not an ELF"), "{error}");
        assert!(check_deb(&text).is_err());
    }
}
