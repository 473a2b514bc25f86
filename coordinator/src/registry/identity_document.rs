//! EC2 instance identity documents and their PKCS7 signatures: the
//! proof, beyond the join token and the EC2 lookup, that a register was
//! built on the instance it names.
//!
//! By default every EC2 register must carry the document IMDS serves at
//! `dynamic/instance-identity/document` and the signature at
//! `dynamic/instance-identity/pkcs7`, signed by one of AWS's certificates
//! that ship with muster or one `--identity-certs FILE` adds (GovCloud,
//! China, an emulator); `--insecure-no-identity-document` turns the check
//! off, and `serve` warns while it is. The check is
//! the one AWS documents (`openssl smime -verify -noverify -certfile …
//! -content document`), done with OpenSSL's `PKCS7_verify`:
//! - `NOINTERN`: the signer must be one of the configured certificates; a
//!   certificate carried inside the signature is never believed, or anyone
//!   could sign a document with a key of their own.
//! - `NOVERIFY`: no chain is built for the signer; the configured
//!   certificates are the trust anchors themselves (AWS's are self-signed).
//! - The signature covers exactly the document's bytes as the agent sent
//!   them, not a copy carried inside the signature.
//!
//! Then the signed document must name the instance, region, availability
//! zone and primary private address the register claims; EC2 checks the
//! claim itself as before ([`crate::registry`]). A document is the same
//! for the instance's whole run, so one copied off an instance proves
//! nothing more than that instance's existence: it never replaces the
//! join token or the node credential, it is checked beside them.

use std::net::Ipv4Addr;

use base64::Engine as _;
use muster_proto::SignedIdentity;
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use serde::Deserialize;

pub use crate::config::IdentityCerts;

/// Why a signed identity document was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The register carries none.
    #[error(
        "the register carries no signed identity document, and this coordinator requires one \
         (IMDS serves it at dynamic/instance-identity/document and /pkcs7)"
    )]
    Missing,
    /// The signature is not PKCS7, or does not verify against the
    /// configured certificates.
    #[error("the identity document's signature does not verify: {0}")]
    BadSignature(String),
    /// The signed document is not the JSON EC2 writes.
    #[error("the signed identity document is not an EC2 one: {0}")]
    BadDocument(String),
    /// The signed document names something else than the register.
    #[error("the signed identity document says {field}={signed:?}, the register {claimed:?}")]
    Mismatch {
        /// The document's field.
        field: &'static str,
        /// What the register claims.
        claimed: String,
        /// What the signed document says.
        signed: String,
    },
}

/// What the coordinator reads of a signed document (EC2 writes more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityDocument {
    /// The instance.
    pub instance_id: String,
    /// Its region.
    pub region: String,
    /// Its availability zone.
    pub availability_zone: String,
    /// Its primary private address.
    pub private_ip: Option<Ipv4Addr>,
    /// The account that owns it.
    #[serde(default)]
    pub account_id: Option<String>,
}

/// What a register claims, to be matched against the signed document.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The instance id.
    pub instance_id: &'a str,
    /// The region.
    pub region: &'a str,
    /// The availability zone.
    pub availability_zone: &'a str,
    /// The primary private address (none on an IPv6-only instance).
    pub private_ipv4: Option<Ipv4Addr>,
}

/// Checks `signed` against `certs`, and that it names what `claim` claims.
pub fn check(
    certs: &IdentityCerts,
    signed: Option<&SignedIdentity>,
    claim: Claim<'_>,
) -> Result<IdentityDocument, IdentityError> {
    let signed = signed.ok_or(IdentityError::Missing)?;
    let document = verify(certs, signed)?;
    let mismatch = |field, claimed: &str, signed: &str| {
        (claimed != signed).then(|| IdentityError::Mismatch {
            field,
            claimed: claimed.to_owned(),
            signed: signed.to_owned(),
        })
    };
    let private = document
        .private_ip
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let wrong = mismatch("instanceId", claim.instance_id, &document.instance_id)
        .or_else(|| mismatch("region", claim.region, &document.region))
        .or_else(|| {
            mismatch(
                "availabilityZone",
                claim.availability_zone,
                &document.availability_zone,
            )
        })
        .or_else(|| {
            let claimed = claim
                .private_ipv4
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            mismatch("privateIp", &claimed, &private)
        });
    match wrong {
        Some(error) => Err(error),
        None => Ok(document),
    }
}

/// Verifies that one of `certs` signed the document's bytes, and
/// decodes it.
pub fn verify(
    certs: &IdentityCerts,
    signed: &SignedIdentity,
) -> Result<IdentityDocument, IdentityError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| IdentityError::BadSignature(format!("{what}: {e}"));
    let text: String = signed
        .pkcs7
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| bad("not base64", &e))?;
    let pkcs7 = Pkcs7::from_der(&der).map_err(|e| bad("not PKCS7", &e))?;
    let mut signers = Stack::new().map_err(|e| bad("OpenSSL", &e))?;
    for cert in certs.certificates() {
        signers.push(cert.clone()).map_err(|e| bad("OpenSSL", &e))?;
    }
    // Empty: NOVERIFY builds no chain, and NOINTERN keeps the
    // signature's own certificates out.
    let store = X509StoreBuilder::new()
        .map_err(|e| bad("OpenSSL", &e))?
        .build();
    pkcs7
        .verify(
            &signers,
            &store,
            Some(signed.document.as_bytes()),
            None,
            Pkcs7Flags::NOINTERN | Pkcs7Flags::NOVERIFY,
        )
        .map_err(|e| {
            bad(
                "not signed by a trusted certificate (AWS's for the commercial regions \
                 ship with muster; a region opened since, GovCloud's or China's is added \
                 with --identity-certs)",
                &e,
            )
        })?;
    serde_json::from_str(&signed.document).map_err(|e| IdentityError::BadDocument(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use openssl::pkey::PKey;
    use openssl::x509::X509;

    /// A self-signed certificate and its key, as `openssl req -x509` makes.
    fn signer(name: &str) -> (X509, PKey<openssl::pkey::Private>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (
            X509::from_pem(cert.pem().as_bytes()).unwrap(),
            PKey::private_key_from_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
    }

    fn sign(
        (cert, key): &(X509, PKey<openssl::pkey::Private>),
        document: &str,
        flags: Pkcs7Flags,
    ) -> String {
        let none = Stack::new().unwrap();
        let pkcs7 = Pkcs7::sign(
            cert,
            key,
            &none,
            document.as_bytes(),
            flags | Pkcs7Flags::BINARY,
        )
        .unwrap();
        base64::engine::general_purpose::STANDARD.encode(pkcs7.to_der().unwrap())
    }

    const DOCUMENT: &str = "{\n  \"accountId\" : \"123456789012\",\n  \"availabilityZone\" : \
        \"us-east-1a\",\n  \"instanceId\" : \"i-0123456789abcdef0\",\n  \"privateIp\" : \
        \"10.0.0.5\",\n  \"region\" : \"us-east-1\",\n  \"version\" : \"2017-09-30\"\n}";

    fn claim() -> Claim<'static> {
        Claim {
            instance_id: "i-0123456789abcdef0",
            region: "us-east-1",
            availability_zone: "us-east-1a",
            private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
        }
    }

    fn certs_of(dir: &Path, certs: &[&X509]) -> IdentityCerts {
        let path = dir.join("aws.pem");
        let pem: Vec<u8> = certs.iter().flat_map(|c| c.to_pem().unwrap()).collect();
        std::fs::write(&path, pem).unwrap();
        IdentityCerts::with_file(&path).unwrap()
    }

    /// A document signed by a configured certificate passes, whether or
    /// not the signature carries the certificate; one signed by anyone
    /// else fails, even when it carries its own certificate; a changed
    /// byte fails; a document naming another instance is a mismatch.
    #[test]
    fn only_configured_signers_and_exact_bytes_pass() {
        let dir = tempfile::tempdir().unwrap();
        let aws = signer("aws");
        let other = signer("aws");
        let unrelated = signer("unrelated");
        let certs = certs_of(dir.path(), &[&unrelated.0, &aws.0]);
        let signed = |by, flags, document: &str| SignedIdentity {
            document: document.to_owned(),
            pkcs7: sign(by, document, flags),
        };

        for flags in [
            Pkcs7Flags::NOCERTS,
            Pkcs7Flags::empty(),
            Pkcs7Flags::DETACHED,
        ] {
            let good = signed(&aws, flags, DOCUMENT);
            let document = check(&certs, Some(&good), claim()).unwrap();
            assert_eq!(document.instance_id, "i-0123456789abcdef0");
            assert_eq!(document.account_id.as_deref(), Some("123456789012"));
        }

        // The attacker's own certificate rides inside the signature.
        let forged = signed(&other, Pkcs7Flags::empty(), DOCUMENT);
        let error = check(&certs, Some(&forged), claim()).unwrap_err();
        assert!(matches!(error, IdentityError::BadSignature(_)), "{error}");

        let mut tampered = signed(&aws, Pkcs7Flags::empty(), DOCUMENT);
        tampered.document = DOCUMENT.replace("10.0.0.5", "10.0.0.6");
        let error = check(&certs, Some(&tampered), claim()).unwrap_err();
        assert!(matches!(error, IdentityError::BadSignature(_)), "{error}");

        let elsewhere = DOCUMENT.replace("i-0123456789abcdef0", "i-0fedcba9876543210");
        let elsewhere = signed(&aws, Pkcs7Flags::NOCERTS, &elsewhere);
        let error = check(&certs, Some(&elsewhere), claim()).unwrap_err();
        assert_eq!(
            error,
            IdentityError::Mismatch {
                field: "instanceId",
                claimed: "i-0123456789abcdef0".into(),
                signed: "i-0fedcba9876543210".into(),
            }
        );
        let moved = Claim {
            private_ipv4: Some(Ipv4Addr::new(10, 0, 0, 9)),
            ..claim()
        };
        let good = signed(&aws, Pkcs7Flags::NOCERTS, DOCUMENT);
        let error = check(&certs, Some(&good), moved).unwrap_err();
        assert!(
            matches!(
                error,
                IdentityError::Mismatch {
                    field: "privateIp",
                    ..
                }
            ),
            "{error}"
        );

        assert_eq!(
            check(&certs, None, claim()).unwrap_err(),
            IdentityError::Missing
        );
        let garbage = SignedIdentity {
            document: DOCUMENT.into(),
            pkcs7: "bm90IGEgc2lnbmF0dXJl".into(),
        };
        let error = check(&certs, Some(&garbage), claim()).unwrap_err();
        assert!(error.to_string().contains("not PKCS7"), "{error}");
        let unsigned_json = signed(&aws, Pkcs7Flags::NOCERTS, "not json");
        let error = check(&certs, Some(&unsigned_json), claim()).unwrap_err();
        assert!(matches!(error, IdentityError::BadDocument(_)), "{error}");
    }

    /// A signature AWS made for a real instance in 2016 (published with
    /// the fullsailor/pkcs7 Go library's tests) and its document: the
    /// shipped certificates
    /// verify it, as `openssl smime -verify -noverify` does; a changed byte
    /// of the document does not.
    #[test]
    fn the_shipped_certificates_verify_a_real_aws_signature() {
        let pem = include_str!("testdata/aws-2016.pkcs7");
        let pkcs7: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        // What `openssl smime -verify` wrote out of the signature: the
        // document's bytes, as IMDS serves them at .../document.
        let document = include_str!("testdata/aws-2016.json").to_owned();
        let claim = Claim {
            instance_id: "i-f79fe56c",
            region: "us-east-1",
            availability_zone: "us-east-1a",
            private_ipv4: Some(Ipv4Addr::new(172, 30, 0, 252)),
        };
        let certs = IdentityCerts::shipped();
        let signed = SignedIdentity {
            document: document.clone(),
            pkcs7,
        };
        let read = check(&certs, Some(&signed), claim).unwrap();
        assert_eq!(read.account_id.as_deref(), Some("121659014334"));

        let tampered = SignedIdentity {
            document: document.replace("172.30.0.252", "172.30.0.253"),
            ..signed
        };
        let error = check(&certs, Some(&tampered), claim).unwrap_err();
        assert!(matches!(error, IdentityError::BadSignature(_)), "{error}");
    }
}
