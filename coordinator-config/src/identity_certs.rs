//! `identity_certs`: AWS's public certificates for the instance identity
//! signature, read once when the settings load. What is checked with them
//! is in `muster_coordinator::identity_document`.

use std::path::{Path, PathBuf};

use openssl::x509::X509;

/// Largest certificate file read, in bytes: AWS publishes one certificate
/// per region, about 1 KiB each.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The certificates identity document signatures are checked against.
#[derive(Clone)]
pub struct IdentityCerts {
    path: PathBuf,
    certs: Vec<X509>,
    /// The certificates' DER, for equality.
    der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for IdentityCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCerts")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl PartialEq for IdentityCerts {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.der == other.der
    }
}

impl Eq for IdentityCerts {}

impl IdentityCerts {
    /// Reads the PEM certificates at `path`; at least one must be there.
    pub fn load(path: &Path) -> Result<IdentityCerts, String> {
        let pem = crate::sources::read_capped(path, MAX_FILE_BYTES)?;
        let certs = X509::stack_from_pem(&pem).map_err(|e| format!("is not PEM: {e}"))?;
        if certs.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        let der = certs
            .iter()
            .map(|c| c.to_der().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(IdentityCerts {
            path: path.to_owned(),
            certs,
            der,
        })
    }

    /// The file the certificates came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The certificates.
    pub fn certificates(&self) -> &[X509] {
        &self.certs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with no certificate, or none at all, is refused with a
    /// reason; one with two certificates gives both.
    #[test]
    fn loading_needs_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(IdentityCerts::load(&empty).is_err());
        assert!(IdentityCerts::load(&dir.path().join("absent.pem")).is_err());
        let two = dir.path().join("two.pem");
        let pem = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.self_signed(&key).unwrap().pem()
        };
        std::fs::write(&two, pem("a") + &pem("b")).unwrap();
        let certs = IdentityCerts::load(&two).unwrap();
        assert_eq!(certs.certificates().len(), 2);
        assert_eq!(certs.path(), two);
        assert_eq!(certs, IdentityCerts::load(&two).unwrap());
    }
}
