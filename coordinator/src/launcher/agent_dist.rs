//! The agent the coordinator hands to the nodes it boots: the
//! `muster-agent` binary, and its Debian package when there is one, served
//! at `/v1/agent/linux/{arch}/muster-agent` and `…/muster-agent.deb`.
//!
//! - Which files: `--agent-binary`, once per architecture (and
//!   `--agent-deb`, of the first binary's architecture), else a
//!   `muster-agent` next to the coordinator's own executable (where the
//!   packages put both). Without one, user data expects the agent on the
//!   image.
//! - Each binary's architecture is read from its ELF header, so its URL
//!   names what it is; the user data carries every architecture's URL and
//!   SHA-256 and installs the one `uname -m` names, and a node of an
//!   architecture with no agent says so instead of installing what it
//!   cannot run.
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
    /// One binary per architecture, in the order given.
    binaries: Vec<(&'static str, Arc<AgentFile>)>,
    /// The package, of the first binary's architecture.
    deb: Option<Arc<AgentFile>>,
}

impl AgentDist {
    /// Serves `binaries` (each one's architecture read from its ELF
    /// header, at most one per architecture) and `deb`, if given (it must
    /// be a Debian package; it is served beside the first binary).
    pub fn new(binaries: &[PathBuf], deb: Option<&Path>) -> Result<AgentDist, AgentDistError> {
        let mut served: Vec<(&'static str, Arc<AgentFile>)> = Vec::new();
        for binary in binaries {
            let arch = elf_arch(binary)?;
            if served.iter().any(|(a, _)| *a == arch) {
                return Err(AgentDistError::NotAgent {
                    path: binary.display().to_string(),
                    reason: "is a second binary of its architecture",
                });
            }
            served.push((arch, Arc::new(AgentFile::new(binary.clone()))));
        }
        if let Some(deb) = deb {
            check_deb(deb)?;
        }
        Ok(AgentDist {
            binaries: served,
            deb: deb.map(|d| Arc::new(AgentFile::new(d.to_path_buf()))),
        })
    }

    /// The architectures served, as `uname -m` prints them.
    pub fn arches(&self) -> Vec<&'static str> {
        self.binaries.iter().map(|(arch, _)| *arch).collect()
    }

    /// The file served at `/v1/agent/{os}/{arch}/{name}`, if any.
    pub fn file(&self, os: &str, arch: &str, name: &str) -> Option<&Arc<AgentFile>> {
        if os != "linux" {
            return None;
        }
        let index = self.binaries.iter().position(|(a, _)| *a == arch)?;
        match name {
            BINARY_NAME => Some(&self.binaries[index].1),
            DEB_NAME if index == 0 => self.deb.as_ref(),
            _ => None,
        }
    }

    /// What is served, in words, for a 404.
    pub fn describe(&self) -> String {
        let mut served: Vec<String> = self
            .binaries
            .iter()
            .map(|(arch, _)| format!("linux/{arch}/{BINARY_NAME}"))
            .collect();
        if let (Some(_), Some((arch, _))) = (&self.deb, self.binaries.first()) {
            served.push(format!("linux/{arch}/{DEB_NAME}"));
        }
        format!("this coordinator serves {} only", served.join(", "))
    }

    /// Each binary's download, for user data: URL under
    /// `coordinator_url`, architecture and SHA-256. Blocking (it may hash).
    pub fn downloads_blocking(
        &self,
        coordinator_url: &str,
    ) -> Result<Vec<muster_proto::AgentDownload>, AgentDistError> {
        self.binaries
            .iter()
            .map(|(arch, binary)| {
                Ok(muster_proto::AgentDownload {
                    url: format!(
                        "{}{}",
                        coordinator_url.trim_end_matches('/'),
                        muster_proto::paths::agent_download(arch, BINARY_NAME)
                    ),
                    arch: (*arch).to_owned(),
                    sha256: binary.sha256_blocking()?,
                })
            })
            .collect()
    }

    /// [`AgentDist::downloads_blocking`] off the async threads.
    pub async fn downloads(
        &self,
        coordinator_url: &str,
    ) -> Result<Vec<muster_proto::AgentDownload>, AgentDistError> {
        let dist = self.clone();
        let url = coordinator_url.to_owned();
        match tokio::task::spawn_blocking(move || dist.downloads_blocking(&url)).await {
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

    /// Only the served architectures' files are found: a binary for each,
    /// the package beside the first only; a second binary of one
    /// architecture is refused.
    #[test]
    fn files_by_path() {
        let exe = std::env::current_exe().unwrap();
        let arch = std::env::consts::ARCH;
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("muster-agent");
        let mut elf = std::fs::read(&exe).unwrap()[..64].to_vec();
        let (machine, other_arch) = if arch == "x86_64" {
            (183u16, "aarch64")
        } else {
            (62u16, "x86_64")
        };
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        std::fs::write(&other, &elf).unwrap();
        let deb = dir.path().join("muster-agent.deb");
        std::fs::write(&deb, b"!<arch>\ndebian-binary   1\n").unwrap();

        let dist = AgentDist::new(&[exe.clone(), other.clone()], Some(&deb)).unwrap();
        assert_eq!(dist.arches(), [arch, other_arch]);
        assert!(dist.file("linux", arch, BINARY_NAME).is_some());
        assert!(dist.file("linux", arch, DEB_NAME).is_some());
        assert_eq!(
            dist.file("linux", other_arch, BINARY_NAME).unwrap().path(),
            other
        );
        assert!(dist.file("linux", other_arch, DEB_NAME).is_none());
        assert!(dist.file("linux", "riscv64", BINARY_NAME).is_none());
        assert!(dist.file("darwin", arch, BINARY_NAME).is_none());
        assert!(dist.describe().contains(other_arch));
        let downloads = dist.downloads_blocking("https://c:7443/").unwrap();
        assert_eq!(downloads.len(), 2);
        assert_eq!(
            downloads[1].url,
            format!("https://c:7443/v1/agent/linux/{other_arch}/muster-agent")
        );
        assert!(AgentDist::new(&[exe.clone(), exe], None).is_err());
    }
}
