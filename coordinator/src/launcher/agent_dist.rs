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

pub use muster_coordinator_config::agent_files::{
    beside_this_executable, check_deb, elf_arch, AgentFileError as AgentDistError, BINARY_NAME,
    DEB_NAME,
};

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
        let mut files = vec![BINARY_NAME];
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

#[cfg(test)]
mod tests {
    use super::*;

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
