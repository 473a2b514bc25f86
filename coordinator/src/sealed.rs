//! Secrets sealed for a shared store.
//!
//! On a store several coordinators share, the CA's key and the admin
//! token are kept in the store, so every replica serves with them, but
//! sealed: AES-256-GCM under a key that never enters the database
//! ([`StoreKey`], a file on each coordinator's host: `--store-key-file`,
//! by default `store-key` in the data dir). Whoever can read the
//! database alone, or a backup of it, learns neither.
//!
//! A key file holds 64 hexadecimal digits (32 random bytes; `openssl rand
//! -hex 32` makes one); the first coordinator on an empty store makes it
//! if it is missing. A sealed value is `v1:` and the hex of a fresh
//! 96-bit nonce followed by the ciphertext and its tag. The name of the
//! value's slot is bound in as associated data, so a value cannot be
//! moved to another slot and still open.

use std::path::{Path, PathBuf};

use muster_proto::fsutil::write_durably;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of a sealed value: the format's version.
const VERSION: &str = "v1:";

/// Errors reading, making or using the store key.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file holds something else.
    #[error(
        "{0} does not hold a store key (64 hexadecimal digits; `openssl rand -hex 32` makes one)"
    )]
    BadKey(PathBuf),
    /// A sealed value does not open with this key.
    #[error(
        "the store's {slot} does not open with the key in {key}: it was sealed with another one"
    )]
    WrongKey {
        /// The value's slot.
        slot: String,
        /// The key file.
        key: PathBuf,
    },
    /// The random source failed.
    #[error("no random bytes for a nonce")]
    Random,
}

/// The key values are sealed with in a shared store, and its file.
pub struct StoreKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKey")
            .field("path", &self.path)
            .finish()
    }
}

impl StoreKey {
    /// The key in `path`, or `None` if there is no such file.
    pub fn read(path: &Path) -> Result<Option<StoreKey>, SealError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SealError::File {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| SealError::BadKey(path.to_owned()))?;
        Ok(Some(StoreKey::from_bytes(&bytes, path)))
    }

    /// A new random key, written to `path` (0600).
    pub fn create(path: &Path) -> Result<StoreKey, SealError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        let text = format!("{}\n", hex::encode(bytes));
        write_durably(path, text.as_bytes(), 0o600).map_err(|source| SealError::File {
            path: path.to_owned(),
            source,
        })?;
        Ok(StoreKey::from_bytes(&bytes, path))
    }

    fn from_bytes(bytes: &[u8; 32], path: &Path) -> StoreKey {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes make an AES-256 key");
        StoreKey {
            key: LessSafeKey::new(unbound),
            path: path.to_owned(),
        }
    }

    /// The file the key was read from or written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `plain`, sealed for the store's slot `slot`.
    pub fn seal(&self, slot: &str, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(slot.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.append(&mut sealed);
        Ok(format!("{VERSION}{}", hex::encode(out)))
    }

    /// What `sealed`, read from the store's slot `slot`, holds.
    pub fn open(&self, slot: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let wrong = || SealError::WrongKey {
            slot: slot.to_owned(),
            key: self.path.clone(),
        };
        let bytes = sealed
            .strip_prefix(VERSION)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(wrong)?;
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut buffer = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(slot.as_bytes()), &mut buffer)
            .map_err(|_| wrong())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value opens with the key and slot it was sealed for, and with no
    /// other key, slot or altered byte; the key file round-trips.
    #[test]
    fn sealed_values_open_only_with_their_key_and_slot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store-key");
        assert!(StoreKey::read(&path).unwrap().is_none());
        let key = StoreKey::create(&path).unwrap();
        let again = StoreKey::read(&path).unwrap().unwrap();
        let other = StoreKey::create(&dir.path().join("other")).unwrap();

        let sealed = key.seal("shared_admin_token", b"madmin_secret").unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("secret"));
        assert_ne!(
            sealed,
            key.seal("shared_admin_token", b"madmin_secret").unwrap()
        );
        assert_eq!(
            again.open("shared_admin_token", &sealed).unwrap(),
            b"madmin_secret"
        );
        assert!(matches!(
            other.open("shared_admin_token", &sealed),
            Err(SealError::WrongKey { .. })
        ));
        assert!(key.open("shared_ca", &sealed).is_err());
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(key
            .open("shared_admin_token", std::str::from_utf8(&flipped).unwrap())
            .is_err());
        assert!(key.open("shared_admin_token", "v1:00").is_err());
        assert!(key.open("shared_admin_token", "plain").is_err());

        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::fs::write(&path, "not hex\n").unwrap();
        assert!(matches!(StoreKey::read(&path), Err(SealError::BadKey(_))));
    }
}
