//! `identity_certs`: the signers an instance identity document must be
//! signed by. AWS's DSA certificates for the commercial partition ship
//! with muster (`certs/aws-identity-dsa.pem`, copied from AWS's
//! documentation; the file says where from and which regions) and are
//! always trusted unless the check is turned off; `--identity-certs FILE`
//! adds more: GovCloud's, China's, a region opened after that list, or an
//! emulator's. What is checked with them is in
//! `muster_coordinator::registry::identity_document`.

use std::path::{Path, PathBuf};

use openssl::x509::X509;

/// Largest certificate file read, in bytes: AWS publishes one certificate
/// per region, about 1 KiB each.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// AWS's public certificates for the PKCS7 signature, as shipped.
const SHIPPED_PEM: &str = include_str!("../certs/aws-identity-dsa.pem");

/// The certificates identity document signatures are checked against.
#[derive(Clone)]
pub struct IdentityCerts {
    /// The file whose certificates were added to the shipped ones.
    added: Option<PathBuf>,
    certs: Vec<X509>,
    /// The certificates' DER, for equality.
    der: Vec<Vec<u8>>,
}

impl std::fmt::Debug for IdentityCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityCerts")
            .field("added", &self.added)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl PartialEq for IdentityCerts {
    fn eq(&self, other: &Self) -> bool {
        self.added == other.added && self.der == other.der
    }
}

impl Eq for IdentityCerts {}

impl IdentityCerts {
    /// AWS's certificates that ship with muster.
    pub fn shipped() -> IdentityCerts {
        let certs = parse(SHIPPED_PEM.as_bytes()).expect("the shipped certificates parse");
        IdentityCerts::of(None, certs).expect("the shipped certificates encode")
    }

    /// The shipped certificates and the PEM certificates at `path`, of
    /// which there must be at least one.
    pub fn with_file(path: &Path) -> Result<IdentityCerts, String> {
        let pem = crate::sources::read_capped(path, MAX_FILE_BYTES)?;
        let mut certs = parse(SHIPPED_PEM.as_bytes()).expect("the shipped certificates parse");
        certs.extend(parse(&pem)?);
        IdentityCerts::of(Some(path.to_owned()), certs)
    }

    fn of(added: Option<PathBuf>, certs: Vec<X509>) -> Result<IdentityCerts, String> {
        let der = certs
            .iter()
            .map(|c| c.to_der().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        Ok(IdentityCerts { added, certs, der })
    }

    /// The file whose certificates were added to the shipped ones.
    pub fn added(&self) -> Option<&Path> {
        self.added.as_deref()
    }

    /// The certificates, shipped ones first.
    pub fn certificates(&self) -> &[X509] {
        &self.certs
    }
}

/// The PEM certificates in `pem`; at least one. Text around them (the
/// shipped file's comments) is skipped.
fn parse(pem: &[u8]) -> Result<Vec<X509>, String> {
    let certs = X509::stack_from_pem(pem).map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with no certificate, or none at all, is refused with a
    /// reason; one with two certificates adds both to the shipped ones.
    #[test]
    fn loading_needs_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        assert!(IdentityCerts::with_file(&empty).is_err());
        assert!(IdentityCerts::with_file(&dir.path().join("absent.pem")).is_err());
        let two = dir.path().join("two.pem");
        let pem = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.self_signed(&key).unwrap().pem()
        };
        std::fs::write(&two, pem("a") + &pem("b")).unwrap();
        let certs = IdentityCerts::with_file(&two).unwrap();
        let shipped = IdentityCerts::shipped().certificates().len();
        assert_eq!(certs.certificates().len(), shipped + 2);
        assert_eq!(certs.added(), Some(two.as_path()));
        assert_eq!(certs, IdentityCerts::with_file(&two).unwrap());
        assert_ne!(certs, IdentityCerts::shipped());
    }

    /// The shipped file holds one certificate per entry it lists, each
    /// AWS's (self-signed, Amazon Web Services LLC).
    #[test]
    fn the_shipped_certificates_are_awss() {
        let listed = SHIPPED_PEM
            .lines()
            .filter(|l| l.starts_with("# ") && l.contains(": "))
            .count();
        let certs = IdentityCerts::shipped();
        assert_eq!(certs.certificates().len(), 11);
        assert_eq!(listed, 11);
        assert_eq!(certs.added(), None);
        for cert in certs.certificates() {
            let org = cert
                .subject_name()
                .entries_by_nid(openssl::nid::Nid::ORGANIZATIONNAME)
                .next()
                .map(|e| e.data().to_string().expect("UTF-8"));
            assert_eq!(org.as_deref(), Some("Amazon Web Services LLC"));
            assert!(
                cert.verify(&cert.public_key().unwrap()).unwrap(),
                "self-signed"
            );
        }
    }
}
