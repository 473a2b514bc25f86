//! Writing a file durably: after a crash or a power cut the file holds
//! either its old contents or the new ones, whole, never a mix or nothing.
//!
//! Both binaries need this for what they must not lose (the agent's state
//! file and the fstab line of its data volume, the coordinator's keys and
//! DNS records), and `muster-proto` is the only crate they share, so the one
//! copy lives here. It is plain `std`: no runtime, callable from async code
//! through `spawn_blocking` or directly where a short blocking write is fine.
//!
//! The steps: a temporary file in the target's directory, created with the
//! final mode (never wider, even for a moment: the secrets written this way
//! must not be readable by others while they are being written), the bytes
//! written and synced, the file renamed over the target, and the directory
//! synced so that the rename itself is on disk. On failure the temporary
//! file is removed.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary files made by this process so far, so that two writes at
/// once never pick the same name.
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// How many names are tried before giving up on making a temporary file
/// (each one taken by a file left behind by a crash).
const NAME_TRIES: u32 = 64;

/// Replaces `path` with `bytes`, durably, the file ending with exactly the
/// permission bits `mode` (e.g. `0o600`), whatever the umask.
pub fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (temp, file) = create_temporary(dir, &name.to_string_lossy(), mode)?;
    if let Err(e) = fill(file, bytes, mode).and_then(|()| fs::rename(&temp, path)) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    // The rename is durable only once the directory is synced too.
    File::open(dir)?.sync_all()
}

/// Creates a new file `.<name>.<pid>.<n>.tmp` in `dir` with `mode` (less
/// what the umask takes away), never opening one that exists.
fn create_temporary(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    let mut tries = 0;
    loop {
        let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let temp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < NAME_TRIES => {
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sets the exact mode, writes `bytes` and syncs them.
fn fill(mut file: File, bytes: &[u8], mode: u32) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The file gets the bytes and exactly the mode asked for, and no
    /// temporary file stays beside it.
    #[test]
    fn writes_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        write_durably(&secret, b"s3cret", 0o600).unwrap();
        assert_eq!(fs::read(&secret).unwrap(), b"s3cret");
        assert_eq!(mode_of(&secret), 0o600);
        let public = dir.path().join("public");
        write_durably(&public, b"hello", 0o644).unwrap();
        assert_eq!(mode_of(&public), 0o644);
        assert_eq!(names_in(dir.path()), ["public", "secret"]);
    }

    /// An existing file is replaced whole, mode and all.
    #[test]
    fn replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "the old contents, longer than the new ones").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        write_durably(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(names_in(dir.path()), ["state.json"]);
    }

    /// A write that fails leaves no temporary file: not when the directory
    /// is missing, nor when the rename fails (the target is a directory).
    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing").join("file");
        assert!(write_durably(&missing, b"x", 0o600).is_err());
        assert!(names_in(dir.path()).is_empty());

        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();
        let error = write_durably(&target, b"x", 0o600).unwrap_err();
        assert_ne!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
        assert_eq!(names_in(dir.path()), ["taken"]);
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
    }

    /// A path that names no file is refused before anything is made.
    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let error = write_durably(Path::new("/"), b"x", 0o600).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    /// A temporary file left by a crash does not stop the next write.
    #[test]
    fn a_leftover_temporary_file_is_stepped_over() {
        let dir = tempfile::tempdir().unwrap();
        let next = TEMPORARIES.load(Ordering::Relaxed);
        for n in next..next + 4 {
            let leftover = format!(".file.{}.{n}.tmp", std::process::id());
            fs::write(dir.path().join(leftover), b"half").unwrap();
        }
        write_durably(&dir.path().join("file"), b"whole", 0o600).unwrap();
        assert_eq!(fs::read(dir.path().join("file")).unwrap(), b"whole");
    }
}
