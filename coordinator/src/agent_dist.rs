//! The agent the coordinator hands to the nodes it boots: the
//! `muster-agent` binary, and its Debian package when there is one, served
//! at `/v1/agent/linux/{arch}/muster-agent` and `…/muster-agent.deb`.
//!
//! - Which files: `--agent-binary` (and `--agent-deb`), else a
//!   `muster-agent` next to the coordinator's own executable (where the
//!   packages put both). Without one, user data expects the agent on the
//!   image.
//! - The architecture is read from the binary's ELF header, so the URL
//!   names what it is, and a node of another architecture says so instead
//!   of installing what it cannot run.
//! - Downloads need no token. The binary is the public build anyone can
//!   make and holds no secret; a booting node has nothing but its join
//!   token, and sending that to one more endpoint would only spread it.
//!   What protects the node is the SHA-256 in its user data (which only
//!   the instance reads), checked before anything is installed, and TLS
//!   pinned to the coordinator's CA.
//! - The SHA-256 is computed when first asked for, not at start (a debug
//!   build weighs 150 MB), and again whenever the file's size or
//!   modification time changed since, so the hash handed out describes
//!   what is served now. A node holding an older hash refuses the new
//!   file: replacing the binary under a running coordinator fails safe.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The binary's file name, on disk and in the download URL.
pub const BINARY_NAME: &str = "muster-agent";
/// The package's file name in the download URL.
pub const DEB_NAME: &str = "muster-agent.deb";

/// Errors finding, reading or hashing the agent's files.
#[derive(Debug, thiserror::Error)]
pub enum AgentDistError {
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

/// What was hashed: the file as it was then, and its SHA-256.
#[derive(Debug, Clone)]
struct Digest {
    len: u64,
    modified: Option<SystemTime>,
    sha256: String,
}

/// One served file and its hash, kept while the file stays the same.
#[derive(Debug)]
pub struct AgentFile {
    path: PathBuf,
    digest: Mutex<Option<Digest>>,
}

impl AgentFile {
    fn new(path: PathBuf) -> AgentFile {
        AgentFile {
            path,
            digest: Mutex::new(None),
        }
    }

    /// The file on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its SHA-256, hex; hashed again if the file changed since last time.
    /// Blocking: reads the whole file when it has to.
    pub fn sha256_blocking(&self) -> Result<String, AgentDistError> {
        let read = |source| AgentDistError::Read {
            path: self.path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(&self.path).map_err(read)?;
        let (len, modified) = (meta.len(), meta.modified().ok());
        let mut digest = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = digest.as_ref() {
            if d.len == len && d.modified == modified && modified.is_some() {
                return Ok(d.sha256.clone());
            }
        }
        let sha256 = sha256_file(&self.path).map_err(read)?;
        tracing::info!(path = %self.path.display(), %sha256, bytes = len, "agent file hashed");
        *digest = Some(Digest {
            len,
            modified,
            sha256: sha256.clone(),
        });
        Ok(sha256)
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
    }
    Ok(hex::encode(context.finish()))
}

/// The agent files this coordinator serves.
#[derive(Debug, Clone)]
pub struct AgentDist {
    arch: &'static str,
    binary: Arc<AgentFile>,
    deb: Option<Arc<AgentFile>>,
}

impl AgentDist {
    /// Serves `binary` (its architecture read from its ELF header) and
    /// `deb`, if given (it must be a Debian package).
    pub fn new(binary: &Path, deb: Option<&Path>) -> Result<AgentDist, AgentDistError> {
        let arch = elf_arch(binary)?;
        if let Some(deb) = deb {
            check_deb(deb)?;
        }
        Ok(AgentDist {
            arch,
            binary: Arc::new(AgentFile::new(binary.to_path_buf())),
            deb: deb.map(|d| Arc::new(AgentFile::new(d.to_path_buf()))),
        })
    }

    /// The architecture, as `uname -m` prints it.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// The binary.
    pub fn binary(&self) -> &Arc<AgentFile> {
        &self.binary
    }

    /// The file served at `/v1/agent/{os}/{arch}/{name}`, if any.
    pub fn file(&self, os: &str, arch: &str, name: &str) -> Option<&Arc<AgentFile>> {
        if os != "linux" || arch != self.arch {
            return None;
        }
        match name {
            BINARY_NAME => Some(&self.binary),
            DEB_NAME => self.deb.as_ref(),
            _ => None,
        }
    }

    /// What is served, in words, for a 404.
    pub fn describe(&self) -> String {
        let mut files = vec![crate::agent_dist::BINARY_NAME];
        if self.deb.is_some() {
            files.push(DEB_NAME);
        }
        format!(
            "this coordinator serves {} for linux/{} only",
            files.join(" and "),
            self.arch
        )
    }

    /// The binary's download, for user data: URL under `coordinator_url`,
    /// architecture and SHA-256. Blocking (it may hash).
    pub fn download_blocking(
        &self,
        coordinator_url: &str,
    ) -> Result<muster_proto::AgentDownload, AgentDistError> {
        Ok(muster_proto::AgentDownload {
            url: format!(
                "{}{}",
                coordinator_url.trim_end_matches('/'),
                muster_proto::paths::agent_download(self.arch, BINARY_NAME)
            ),
            arch: self.arch.to_owned(),
            sha256: self.binary.sha256_blocking()?,
        })
    }

    /// [`AgentDist::download_blocking`] off the async threads.
    pub async fn download(
        &self,
        coordinator_url: &str,
    ) -> Result<muster_proto::AgentDownload, AgentDistError> {
        let dist = self.clone();
        let url = coordinator_url.to_owned();
        match tokio::task::spawn_blocking(move || dist.download_blocking(&url)).await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Where the coordinator looks for the agent when `--agent-binary` is not
/// given: next to its own executable.
pub fn beside_this_executable() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.join(BINARY_NAME);
    path.is_file().then_some(path)
}

/// The architecture of the ELF executable at `path`, as `uname -m` names
/// it: `x86_64` or `aarch64` (the EC2 ones).
pub fn elf_arch(path: &Path) -> Result<&'static str, AgentDistError> {
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| AgentDistError::Read {
            path: path.display().to_string(),
            source,
        })?;
    let not = |reason| AgentDistError::NotAgent {
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

/// Checks that `path` is a Debian package (an `ar` archive starting with
/// `debian-binary`).
pub fn check_deb(path: &Path) -> Result<(), AgentDistError> {
    let mut header = [0u8; 21];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|source| AgentDistError::Read {
            path: path.display().to_string(),
            source,
        })?;
    if &header[..8] != b"!<arch>\n" || &header[8..21] != b"debian-binary" {
        return Err(AgentDistError::NotAgent {
            path: path.display().to_string(),
            reason: "is not a Debian package",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test executable itself is an ELF binary of this machine.
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

    /// The hash is that of the file, and follows the file when it changes.
    #[test]
    fn the_hash_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("muster-agent");
        std::fs::write(&path, b"abc").unwrap();
        let file = AgentFile::new(path.clone());
        assert_eq!(
            file.sha256_blocking().unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::write(&path, b"abcd").unwrap();
        assert_eq!(
            file.sha256_blocking().unwrap(),
            "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
        );
    }

    /// Only the served architecture's files are found.
    #[test]
    fn files_by_path() {
        let exe = std::env::current_exe().unwrap();
        let dist = AgentDist::new(&exe, None).unwrap();
        let arch = std::env::consts::ARCH;
        assert!(dist.file("linux", arch, BINARY_NAME).is_some());
        assert!(dist.file("linux", arch, DEB_NAME).is_none());
        assert!(dist.file("linux", "riscv64", BINARY_NAME).is_none());
        assert!(dist.file("darwin", arch, BINARY_NAME).is_none());
        assert!(dist.describe().contains(arch));
    }
}
