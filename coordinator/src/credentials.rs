//! Who the coordinator is to its clients, and who may use its admin API:
//! the CA agents pin, the admin and viewer tokens, and the DNS owner id.
//!
//! Alone on its store (SQLite), a coordinator keeps them in its data dir
//! ([`crate::pki`]). On a store several coordinators share, the store
//! holds them for every replica, so agents and admins may reach any of
//! them behind one name:
//! - the CA, certificate and key, sealed ([`crate::sealed`]) in
//!   [`SHARED_CA`], and its fingerprint in the clear beside it. Each
//!   replica issues its own server certificate from it, for its own names;
//!   agents pin the CA, so any of them will do.
//! - the admin token, sealed in [`SHARED_ADMIN_TOKEN`];
//! - the viewer token's hash, as it is (a hash), in [`SHARED_VIEWER_TOKEN`];
//! - the DNS owner id, in the clear (it is written in public TXT records).
//!
//! The data dir's files are then copies of the store's, written at start
//! and whenever the store's change, so the local CLI (which reads
//! `admin-token`) keeps working on every host.
//!
//! At start the first coordinator on an empty store publishes what it has
//! (or makes it). Those after it take the store's: what they lack, and
//! the tokens always, as the store's are the latest ones. A CA or owner id
//! of the data dir's own that differs from the store's is refused: agents
//! or records may depend on it. Two coordinators starting at once race on
//! "first writer wins" ([`Store::meta_first`]); the loser takes the
//! winner's if it had made its own just now.
//!
//! A token rotated on one replica is written to the store first, then
//! used; the store announces the write ([`crate::replica`]) and every
//! other replica reads it again ([`Credentials::reload`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use muster_proto::status::Role;
use muster_proto::token::TokenKind;

use crate::dns::ownership::{self, OwnerIdError, OWNER_ID_FILE};
use crate::pki::{self, CaPem, PkiError};
use crate::sealed::{SealError, StoreKey};
use crate::secrets::{hash_secret, new_secret, secret_matches, stored_digest};
use crate::store::{Store, StoreError};

/// The store's slot for the sealed CA (certificate and key, as JSON).
pub const SHARED_CA: &str = "shared_ca";
/// The store's slot for the CA's SHA-256 fingerprint, in the clear.
pub const SHARED_CA_FINGERPRINT: &str = "shared_ca_sha256";
/// The store's slot for the sealed admin token.
pub const SHARED_ADMIN_TOKEN: &str = "shared_admin_token";
/// The store's slot for the viewer token's hash.
pub const SHARED_VIEWER_TOKEN: &str = "shared_viewer_token_sha256";
/// The store's slot for the owner id in external DNS's ownership records.
pub const SHARED_DNS_OWNER: &str = "shared_dns_owner_id";

/// Errors reading, sharing or changing the credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file of the data dir.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The DNS owner id's file.
    #[error(transparent)]
    OwnerId(#[from] OwnerIdError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store key, or a value sealed with another.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The store holds sealed credentials, and this coordinator has no key.
    #[error(
        "the store holds the credentials of the coordinators that share it, sealed with a key \
         this one lacks: copy the store key to {key} from one of them \
         (docs/operations.md, \"A three-coordinator recipe\")"
    )]
    NoKey {
        /// Where the key was looked for.
        key: String,
    },
    /// The data dir holds its own value where the store holds another.
    #[error(
        "the data dir {data_dir} holds {what} {ours}, and the coordinators sharing the store \
         use {stored}: {fix} (docs/operations.md, \"A three-coordinator recipe\")"
    )]
    Differs {
        /// Which credential.
        what: &'static str,
        /// This coordinator's data dir.
        data_dir: String,
        /// This coordinator's.
        ours: String,
        /// The store's.
        stored: String,
        /// What to do.
        fix: &'static str,
    },
    /// A value in the store is not what its slot holds.
    #[error("the store's {0} is damaged")]
    Damaged(&'static str),
}

impl CredentialsError {
    /// Whether the store was away (the caller may try again).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CredentialsError::Store(e) if e.is_unavailable())
    }
}

/// The store and the key that seals what it keeps, on a shared store.
#[derive(Debug)]
pub struct Shared {
    store: Arc<Store>,
    key: StoreKey,
}

impl Shared {
    /// The store key in `key_file` for the shared `store`. The first
    /// coordinator on an empty store makes it if it is missing; once the
    /// store holds sealed credentials, one without it is refused.
    pub fn open(store: Arc<Store>, key_file: &Path) -> Result<Shared, CredentialsError> {
        let key = match StoreKey::read(key_file)? {
            Some(key) => key,
            None if store.meta(SHARED_CA)?.is_some()
                || store.meta(SHARED_ADMIN_TOKEN)?.is_some() =>
            {
                return Err(CredentialsError::NoKey {
                    key: key_file.display().to_string(),
                })
            }
            None => {
                let key = StoreKey::create(key_file)?;
                tracing::info!(
                    key = %key_file.display(),
                    "made the store key; every coordinator sharing the store needs a copy"
                );
                key
            }
        };
        Ok(Shared { store, key })
    }

    /// The store's value in `slot`, opened; `None` if it has none.
    fn opened(&self, slot: &'static str) -> Result<Option<Vec<u8>>, CredentialsError> {
        match self.store.meta(slot)? {
            Some(sealed) => Ok(Some(self.key.open(slot, &sealed)?)),
            None => Ok(None),
        }
    }

    /// Seals `plain` into `slot` unless the slot holds a value already;
    /// returns the slot's value, opened.
    fn first(&self, slot: &'static str, plain: &[u8]) -> Result<Vec<u8>, CredentialsError> {
        let stored = self.store.meta_first(slot, &self.key.seal(slot, plain)?)?;
        Ok(self.key.open(slot, &stored)?)
    }

    /// The CA every replica serves with, in `data_dir`: the store's, or
    /// this coordinator's (made if missing) published as the store's.
    pub fn share_ca(&self, data_dir: &Path) -> Result<(), CredentialsError> {
        let decode = |bytes: Vec<u8>| {
            serde_json::from_slice::<CaPem>(&bytes)
                .map_err(|_| CredentialsError::Damaged(SHARED_CA))
        };
        let local = pki::read_ca(data_dir)?;
        let fingerprint = self.store.meta(SHARED_CA_FINGERPRINT)?;
        let stored = match self.opened(SHARED_CA)? {
            Some(bytes) => decode(bytes)?,
            // Shared before the CA itself was: only its fingerprint.
            None if local.is_none() && fingerprint.is_some() => {
                return Err(CredentialsError::Differs {
                    what: "no CA",
                    data_dir: data_dir.display().to_string(),
                    ours: "(ca.pem)".into(),
                    stored: format!(
                        "the CA with the fingerprint {}",
                        fingerprint.unwrap_or_default()
                    ),
                    fix: "copy ca.pem and ca-key.pem from a coordinator that has it",
                });
            }
            None => {
                let ours = match &local {
                    Some(ca) => ca.clone(),
                    None => pki::new_ca()?,
                };
                let json = serde_json::to_vec(&ours).expect("a CA serialises");
                decode(self.first(SHARED_CA, &json)?)?
            }
        };
        match &local {
            Some(ours) if ours.cert != stored.cert => {
                return Err(CredentialsError::Differs {
                    what: "a CA ca.pem",
                    data_dir: data_dir.display().to_string(),
                    ours: "of its own".into(),
                    stored: "the store's".into(),
                    fix: "agents pin the store's; move ca.pem and ca-key.pem out of the data dir \
                          to take it (or, if agents pin this one, copy it to the others first)",
                });
            }
            Some(_) => {}
            None => {
                pki::install_ca(data_dir, &stored)?;
                tracing::info!(data_dir = %data_dir.display(), "took the CA the store's coordinators share");
            }
        }
        let ours = pki::certificate_fingerprint(&data_dir.join(pki::CA_FILE))?;
        let recorded = self.store.meta_first(SHARED_CA_FINGERPRINT, &ours)?;
        if recorded != ours {
            return Err(CredentialsError::Differs {
                what: "the CA ca.pem (sha256)",
                data_dir: data_dir.display().to_string(),
                ours,
                stored: recorded,
                fix: "copy ca.pem and ca-key.pem from a coordinator that serves with it",
            });
        }
        Ok(())
    }

    /// The DNS owner id: `given`, or the data dir's, or the store's; the
    /// store keeps the first and every replica must write as it.
    pub fn share_dns_owner(
        &self,
        data_dir: &Path,
        given: Option<&str>,
    ) -> Result<(), CredentialsError> {
        let file = data_dir.join(OWNER_ID_FILE);
        let local = match given {
            Some(id) => Some(id.to_owned()),
            None if file.exists() => Some(ownership::ensure_owner_id(data_dir)?),
            None => None,
        };
        let stored = self.store.meta(SHARED_DNS_OWNER)?;
        let ours = match (&local, stored) {
            (None, Some(stored)) => {
                ownership::write_owner_id(data_dir, &stored)?;
                return Ok(());
            }
            (Some(ours), _) => ours.clone(),
            (None, None) => ownership::ensure_owner_id(data_dir)?,
        };
        let recorded = self.store.meta_first(SHARED_DNS_OWNER, &ours)?;
        if recorded == ours {
            return Ok(());
        }
        if local.is_none() {
            // Another coordinator starting at once published first.
            ownership::write_owner_id(data_dir, &recorded)?;
            return Ok(());
        }
        Err(CredentialsError::Differs {
            what: "the DNS owner id",
            data_dir: data_dir.display().to_string(),
            ours,
            stored: recorded,
            fix: "the records written before would become another owner's; remove dns-owner-id \
                  (or --dns-owner-id) to take the store's",
        })
    }
}

/// Which tokens a [`Credentials::reload`] found changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    /// The admin token.
    pub admin: bool,
    /// The viewer token.
    pub viewer: bool,
}

/// The admin token's and viewer token's hashes, where they are kept, and
/// how they change.
#[derive(Debug)]
pub struct Credentials {
    data_dir: PathBuf,
    admin: RwLock<String>,
    viewer: RwLock<Option<String>>,
    shared: Option<Shared>,
}

impl Credentials {
    /// The tokens of the data dir `data_dir` (the admin token made on
    /// first start), or on a shared store the store's, copied to it.
    pub fn open(data_dir: &Path, shared: Option<Shared>) -> Result<Credentials, CredentialsError> {
        let Some(shared) = shared else {
            let admin = pki::ensure_admin_token(data_dir)?;
            return Ok(Credentials {
                data_dir: data_dir.to_owned(),
                admin: RwLock::new(hash_secret(&admin)),
                viewer: RwLock::new(pki::viewer_token_hash(data_dir)?),
                shared: None,
            });
        };
        // The first coordinator on the store publishes its own tokens;
        // from then on the store's are the ones, read as a reload reads
        // them.
        if shared.store.meta(SHARED_ADMIN_TOKEN)?.is_none() {
            let ours = pki::ensure_admin_token(data_dir)?;
            shared.first(SHARED_ADMIN_TOKEN, ours.as_bytes())?;
        }
        if shared.store.meta(SHARED_VIEWER_TOKEN)?.is_none() {
            if let Some(ours) = pki::viewer_token_hash(data_dir)? {
                shared.store.meta_first(SHARED_VIEWER_TOKEN, &ours)?;
            }
        }
        let credentials = Credentials {
            data_dir: data_dir.to_owned(),
            admin: RwLock::new(String::new()),
            viewer: RwLock::new(None),
            shared: Some(shared),
        };
        credentials.reload()?;
        Ok(credentials)
    }

    /// The role `token` gives: admin, viewer, or none.
    pub fn role(&self, token: &str) -> Option<Role> {
        let admin = self.admin.read().unwrap_or_else(|p| p.into_inner()).clone();
        if secret_matches(token, &admin) {
            return Some(Role::Admin);
        }
        let viewer = self
            .viewer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        viewer
            .filter(|hash| secret_matches(token, hash))
            .map(|_| Role::Viewer)
    }

    /// The generation of `role`'s token in force (`None`: no viewer token
    /// was ever issued): a fingerprint of its hash, which a console session
    /// records when it opens. A new token is a new generation, so the
    /// sessions the old one opened end on every replica at once.
    pub fn token_generation(&self, role: Role) -> Option<String> {
        let stored = match role {
            Role::Admin => Some(self.admin.read().unwrap_or_else(|p| p.into_inner()).clone()),
            Role::Viewer => self
                .viewer
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }?;
        let mut generation = hash_secret(&format!("muster console session: {stored}"));
        generation.truncate(32);
        Some(generation)
    }

    /// A new admin token, in force at once; the old one stops working.
    /// On a shared store the store takes it first (if it cannot, nothing
    /// changed anywhere), then this replica, then the data dir's copy.
    pub fn rotate_admin_token(&self) -> Result<String, CredentialsError> {
        let mut hash = self.admin.write().unwrap_or_else(|p| p.into_inner());
        let token = new_secret(TokenKind::Admin);
        match &self.shared {
            None => pki::keep_admin_token(&self.data_dir, &token)?,
            Some(shared) => {
                let sealed = shared.key.seal(SHARED_ADMIN_TOKEN, token.as_bytes())?;
                shared.store.set_meta(SHARED_ADMIN_TOKEN, &sealed)?;
                if let Err(error) = pki::keep_admin_token(&self.data_dir, &token) {
                    tracing::error!(%error, "the new admin token is in force, but its copy in the data dir is not");
                }
            }
        }
        *hash = hash_secret(&token);
        tracing::info!("admin token rotated");
        Ok(token)
    }

    /// A new viewer token, in force at once; the old one stops working.
    pub fn issue_viewer_token(&self) -> Result<String, CredentialsError> {
        let mut hash = self.viewer.write().unwrap_or_else(|p| p.into_inner());
        let token = new_secret(TokenKind::Viewer);
        let new_hash = hash_secret(&token);
        if let Some(shared) = &self.shared {
            shared.store.set_meta(SHARED_VIEWER_TOKEN, &new_hash)?;
        }
        pki::keep_viewer_token_hash(&self.data_dir, &new_hash)?;
        *hash = Some(new_hash);
        tracing::info!("viewer token issued");
        Ok(token)
    }

    /// Whether the store's `slot` is one of the tokens
    /// [`Credentials::reload`] reads.
    pub fn is_token_slot(slot: &str) -> bool {
        slot == SHARED_ADMIN_TOKEN || slot == SHARED_VIEWER_TOKEN
    }

    /// On a shared store, reads the tokens again: another replica may
    /// have changed them. Says which changed; their data dir copies are
    /// rewritten.
    pub fn reload(&self) -> Result<Changed, CredentialsError> {
        let Some(shared) = &self.shared else {
            return Ok(Changed::default());
        };
        let mut changed = Changed::default();
        if let Some(token) = shared.opened(SHARED_ADMIN_TOKEN)? {
            let token = admin_token(token)?;
            let mut hash = self.admin.write().unwrap_or_else(|p| p.into_inner());
            if !secret_matches(&token, &hash) {
                pki::keep_admin_token(&self.data_dir, &token)?;
                *hash = hash_secret(&token);
                changed.admin = true;
            }
        }
        if let Some(stored) = shared.store.meta(SHARED_VIEWER_TOKEN)? {
            viewer_hash(&stored)?;
            let mut hash = self.viewer.write().unwrap_or_else(|p| p.into_inner());
            if hash.as_deref() != Some(stored.as_str()) {
                pki::keep_viewer_token_hash(&self.data_dir, &stored)?;
                *hash = Some(stored);
                changed.viewer = true;
            }
        }
        Ok(changed)
    }
}

/// The admin token an opened slot holds.
fn admin_token(bytes: Vec<u8>) -> Result<String, CredentialsError> {
    String::from_utf8(bytes)
        .ok()
        .filter(|t| TokenKind::of(t) == Some(TokenKind::Admin))
        .ok_or(CredentialsError::Damaged(SHARED_ADMIN_TOKEN))
}

/// Checks the store's viewer token hash is one.
fn viewer_hash(hash: &str) -> Result<(), CredentialsError> {
    stored_digest(hash)
        .map(|_| ())
        .ok_or(CredentialsError::Damaged(SHARED_VIEWER_TOKEN))
}
