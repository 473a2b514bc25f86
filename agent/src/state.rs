//! What the agent remembers between runs: `state.json` in the state dir.
//!
//! It holds the node credential and who this node is. It is written
//! atomically ([`write_durably`]: a temporary file in the same directory,
//! fsync, rename, fsync of the directory), readable by its owner only (file
//! 0600; a directory the agent creates is 0700). It is only a cache of the coordinator's view: the
//! coordinator keys nodes by node id (the instance id, or `m-` and the
//! machine id for a bring-your-own node), so losing the file never makes a
//! second node: the agent joins again with the join token as the same node.
//!
//! A state file that its group or others may read or write is refused: the
//! agent will not start on a credential others may have seen (or planted);
//! `chmod 600` it, or remove it to join afresh. Unless it is another
//! node's (an image baked with state, where modes are often lost): that
//! one is discarded, as below, before its mode is held against it.
//!
//! A state file bound to another node id than the one the agent finds (from
//! IMDS, or from the machine id) was copied from elsewhere (an image baked
//! with state, a state dir copied to another machine) and is discarded.

use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use muster_proto::fsutil::write_durably;
use muster_proto::token::TokenKind;
use serde::{Deserialize, Serialize};

/// The file name inside the state dir.
pub const STATE_FILE: &str = "state.json";

/// Failures reading or writing the state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state dir could not be created or restricted.
    #[error("cannot prepare the state directory {path}")]
    PrepareDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file exists but could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file is open to its group or to others.
    #[error(
        "{path} has mode {mode:04o}: its group or others may read or write the node credential; \
         `chmod 600` it (or remove it to join afresh)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The state file is not what this agent writes.
    #[error("cannot parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The state file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file could not be removed.
    #[error("cannot remove {path}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The contents of `state.json`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// The node this state belongs to: the EC2 instance id, or `m-` and
    /// the machine id for a bring-your-own node.
    pub instance_id: String,
    /// The cluster the node is in.
    pub cluster: String,
    /// The node's name.
    pub node: String,
    /// The node's public name.
    pub dns_name: String,
    /// The node's internal name.
    pub internal_dns_name: String,
    /// The node credential (`mnode_…`).
    pub credential: String,
    /// The coordinator that issued the credential; it is never sent
    /// anywhere else.
    pub coordinator_url: String,
}

impl fmt::Debug for StoredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredState")
            .field("instance_id", &self.instance_id)
            .field("cluster", &self.cluster)
            .field("node", &self.node)
            .field("dns_name", &self.dns_name)
            .field("internal_dns_name", &self.internal_dns_name)
            .field("credential", &"mnode_…")
            .field("coordinator_url", &self.coordinator_url)
            .finish()
    }
}

/// The path of the state file in `dir`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads the state file; `Ok(None)` if there is none.
pub fn load(dir: &Path) -> Result<Option<StoredState>, StateError> {
    let path = state_file(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let mode = fs::metadata(&path)
        .map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateError::Exposed { path, mode });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StateError::Parse { path, source })
}

/// The node the state file in `dir` belongs to, whatever its mode; `None`
/// if there is none or it cannot be read. Only for deciding whether a file
/// is another node's to discard: its credential is never used unchecked.
pub fn owner(dir: &Path) -> Option<String> {
    let bytes = fs::read(state_file(dir)).ok()?;
    serde_json::from_slice::<StoredState>(&bytes)
        .ok()
        .map(|state| state.instance_id)
}

/// Whether `dir` holds a state file with a usable node credential.
pub fn has_credential(dir: &Path) -> bool {
    matches!(
        load(dir),
        Ok(Some(state)) if TokenKind::of(&state.credential) == Some(TokenKind::Node)
    )
}

/// Writes the state file atomically, creating the dir (0700) if needed.
pub fn save(dir: &Path, state: &StoredState) -> Result<(), StateError> {
    prepare_dir(dir)?;
    let path = state_file(dir);
    let json = serde_json::to_vec_pretty(state).expect("the state serialises");
    write_durably(&path, &json, 0o600).map_err(|source| StateError::Write { path, source })
}

/// Removes the state file, if there is one.
pub fn discard(dir: &Path) -> Result<(), StateError> {
    let path = state_file(dir);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Remove { path, source }),
    }
}

fn prepare_dir(dir: &Path) -> Result<(), StateError> {
    let fail = |source| StateError::PrepareDir {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_dir() {
        // An existing directory keeps its mode: it may be shared (`/tmp`);
        // the file itself is 0600 either way.
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn sample() -> StoredState {
        StoredState {
            instance_id: "i-0123456789abcdef0".into(),
            cluster: "web".into(),
            node: "web-1".into(),
            dns_name: "web-1.web.muster.internal".into(),
            internal_dns_name: "web-1.web.internal.muster.internal".into(),
            credential: format!("mnode_{}", "ab".repeat(32)),
            coordinator_url: "https://127.0.0.1:7443".into(),
        }
    }

    /// A state file others may read is refused, not used; whose it is can
    /// still be read, to discard another node's.
    #[test]
    fn exposed_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("state");
        assert_eq!(owner(&dir), None);
        save(&dir, &sample()).unwrap();
        fs::set_permissions(state_file(&dir), Permissions::from_mode(0o644)).unwrap();
        assert_eq!(owner(&dir).as_deref(), Some("i-0123456789abcdef0"));
        let err = load(&dir).unwrap_err();
        assert!(
            matches!(err, StateError::Exposed { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(state_file(&dir), Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(sample()));
    }

    /// A saved state loads back unchanged, with owner-only permissions on
    /// the file and the directory, and no temporary file left behind.
    #[test]
    fn save_then_load() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        save(&dir, &sample()).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(sample()));
        let file_mode = fs::metadata(state_file(&dir)).unwrap().permissions().mode();
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(file_mode & 0o777, 0o600);
        assert_eq!(dir_mode & 0o777, 0o700);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
        assert!(has_credential(&dir));
    }

    /// Saving again replaces the old contents.
    #[test]
    fn save_replaces() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample()).unwrap();
        let mut next = sample();
        next.credential = format!("mnode_{}", "cd".repeat(32));
        save(dir.path(), &next).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(next));
    }

    /// No file is not an error; a damaged file is, and holds no credential.
    #[test]
    fn missing_and_damaged() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        assert!(!has_credential(dir.path()));
        fs::write(state_file(dir.path()), "{not json").unwrap();
        fs::set_permissions(state_file(dir.path()), Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(load(dir.path()), Err(StateError::Parse { .. })));
        assert!(!has_credential(dir.path()));
        discard(dir.path()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
    }

    /// The credential never shows in Debug output.
    #[test]
    fn debug_hides_credential() {
        let shown = format!("{:?}", sample());
        assert!(!shown.contains(&"ab".repeat(32)), "{shown}");
        assert!(shown.contains("web-1"));
    }
}
