//! Ownership: how muster marks the DNS records it writes, so that it never
//! changes a record it does not own (the convention of external-dns).
//!
//! Every name muster writes has an ownership TXT record
//! `"heritage=muster,muster/owner=<owner id>"` beside it. It cannot sit on
//! the name itself, because a CNAME (the node wildcard) admits no other
//! data, so it lives one label down:
//! - `X` → `_muster.X`;
//! - `*.Y` (the wildcard) → `_muster-wildcard.Y`.
//!
//! The owner id names this coordinator: made at random on first start and
//! kept in `D/dns-owner-id` (copy it with the data dir to keep ownership),
//! or given with `--dns-owner-id`. Names muster does not own are conflicts:
//! logged, listed on `GET /v1/dns/status` and counted in `/metrics`, and
//! never changed. That holds for deletes too: a name muster wrote that has
//! lost its ownership record is not deleted, and stays listed as a
//! conflict until it is desired again.

use std::path::Path;

use hickory_proto::rr::Name;
use muster_proto::fsutil::write_durably;

/// The file holding the owner id, in the data dir.
pub const OWNER_ID_FILE: &str = "dns-owner-id";

/// First label of the ownership name of an ordinary name.
pub const OWNER_LABEL: &str = "_muster";

/// First label of the ownership name of a wildcard.
pub const WILDCARD_OWNER_LABEL: &str = "_muster-wildcard";

/// The owner id file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("owner id file {path}: {source}")]
pub struct OwnerIdError {
    /// The file.
    pub path: String,
    /// The cause.
    pub source: std::io::Error,
}

/// The ownership TXT value of coordinator `owner`.
pub fn owner_value(owner: &str) -> String {
    format!("heritage=muster,muster/owner={owner}")
}

/// Where the ownership record of `name` lives.
pub fn ownership_name(name: &Name) -> Result<Name, hickory_proto::ProtoError> {
    if name.is_wildcard() {
        name.base_name().prepend_label(WILDCARD_OWNER_LABEL)
    } else {
        name.prepend_label(OWNER_LABEL)
    }
}

/// The owner id kept in `data_dir`, made (16 random hex digits) on first use.
pub fn ensure_owner_id(data_dir: &Path) -> Result<String, OwnerIdError> {
    let path = data_dir.join(OWNER_ID_FILE);
    let error = |source| OwnerIdError {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    write_owner_id(data_dir, &id)?;
    Ok(id)
}

/// Makes `id` the data dir's owner id (0600): on a shared store, the one
/// the store's coordinators write as.
pub fn write_owner_id(data_dir: &Path, id: &str) -> Result<(), OwnerIdError> {
    let path = data_dir.join(OWNER_ID_FILE);
    write_durably(&path, format!("{id}\n").as_bytes(), 0o600).map_err(|source| OwnerIdError {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// Ownership records sit one label below the name; a wildcard's beside it.
    #[test]
    fn ownership_names() {
        let plain = Name::from_str("n1.web.muster.test.").unwrap();
        assert_eq!(
            ownership_name(&plain).unwrap().to_ascii(),
            "_muster.n1.web.muster.test."
        );
        let wildcard = Name::from_str("*.n1.web.muster.test.").unwrap();
        assert_eq!(
            ownership_name(&wildcard).unwrap().to_ascii(),
            "_muster-wildcard.n1.web.muster.test."
        );
        assert_eq!(owner_value("ab"), "heritage=muster,muster/owner=ab");
    }

    /// The owner id is made once and kept.
    #[test]
    fn owner_id_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_owner_id(dir.path()).unwrap();
        assert_eq!(first.len(), 16);
        assert_eq!(ensure_owner_id(dir.path()).unwrap(), first);
    }
}
