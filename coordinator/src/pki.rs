//! The coordinator's TLS identity, admin token and viewer token.
//!
//! With no certificate configured, the first start makes a CA and a server
//! certificate signed by it (rcgen) in the data dir, and an admin token; later
//! starts reuse the same files. Agents pin `ca.pem` (user-data carries it), so
//! the server certificate can be re-issued by the same CA at any time: delete
//! `server.pem` and restart, e.g. after changing `--public-url`.
//!
//! Files, all in the data dir:
//! - `ca.pem` (0644), `ca-key.pem` (0600)
//! - `server.pem` (0644), `server-key.pem` (0600)
//! - `admin-token` (0600)
//! - `viewer-token.sha256` (0600): the hash of the viewer token, once one
//!   was issued (`admin viewer-token`); the token itself is shown once.
//!
//! On a shared store the CA and the tokens come from the store
//! ([`crate::credentials`]); these files are then its copies.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use muster_proto::fsutil::write_durably;
use muster_proto::token::TokenKind;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::secrets::new_secret;

/// CA certificate file name.
pub const CA_FILE: &str = "ca.pem";
/// CA key file name.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Server certificate file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// Server key file name.
pub const SERVER_KEY_FILE: &str = "server-key.pem";
/// Admin token file name.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The viewer token's hash, file name.
pub const VIEWER_TOKEN_HASH_FILE: &str = "viewer-token.sha256";

/// Errors setting up TLS or the admin token.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key could not be generated.
    #[error("generating {what}: {source}")]
    Generate {
        /// What.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path} holds no usable {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
    },
    /// rustls refused the certificate and key.
    #[error("loading the server certificate {cert} and key {key}: {source}")]
    Rustls {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
    /// The key that seals session tickets could not be drawn.
    #[error("making the key that seals TLS session tickets: {0}")]
    Ticketer(rustls::Error),
    /// The admin token file holds something else.
    #[error("{0} does not hold an admin token (madmin_ followed by 64 hex digits)")]
    BadAdminToken(PathBuf),
    /// The viewer token's hash file holds something else.
    #[error("{0} does not hold a SHA-256 hash (64 hex digits)")]
    BadViewerTokenHash(PathBuf),
    /// A certificate's expiry could not be read.
    #[error("reading the expiry of {path}: {source}")]
    Expiry {
        /// The certificate file.
        path: PathBuf,
        /// The cause.
        source: openssl::error::ErrorStack,
    },
}

/// Where the TLS identity lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA agents pin, if we made it.
    pub ca: Option<PathBuf>,
    /// Server certificate chain.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` to `path` with `mode`, durably
/// ([`muster_proto::fsutil::write_durably`]).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    write_durably(path, contents, mode).map_err(|source| PkiError::Write {
        path: path.to_owned(),
        source,
    })
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|source| PkiError::Generate {
            what: "CA parameters",
            source,
        })?;
    params
        .distinguished_name
        .push(DnType::CommonName, "muster coordinator CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn generate<T>(what: &'static str, result: Result<T, rcgen::Error>) -> Result<T, PkiError> {
    result.map_err(|source| PkiError::Generate { what, source })
}

/// Makes sure the data dir holds a CA and a server certificate for `names`
/// (DNS names or IP addresses), creating what is missing. Returns the files.
pub fn ensure_self_signed(data_dir: &Path, names: &[String]) -> Result<TlsFiles, PkiError> {
    let ca_path = data_dir.join(CA_FILE);
    let ca_key_path = data_dir.join(CA_KEY_FILE);
    let cert_path = data_dir.join(SERVER_CERT_FILE);
    let key_path = data_dir.join(SERVER_KEY_FILE);
    let files = TlsFiles {
        ca: Some(ca_path.clone()),
        cert: cert_path.clone(),
        key: key_path.clone(),
    };
    if ca_path.exists() && ca_key_path.exists() && cert_path.exists() && key_path.exists() {
        tracing::info!(ca = %ca_path.display(), cert = %cert_path.display(), "reusing the coordinator's CA and server certificate");
        return Ok(files);
    }
    let ca = match read_ca(data_dir)? {
        Some(ca) => ca,
        None => {
            let ca = new_ca()?;
            install_ca(data_dir, &ca)?;
            tracing::info!(ca = %ca_path.display(), "generated a CA for the coordinator; agents pin this file");
            ca
        }
    };
    let ca_key = generate("the CA key from its file", KeyPair::from_pem(&ca.key))?;
    // The issuer only lends its name and key to the signature; rebuilding it
    // from the same parameters and key signs leaves the stored CA validates.
    let issuer = generate("the CA issuer", ca_params()?.self_signed(&ca_key))?;
    let mut params = generate(
        "server certificate parameters",
        CertificateParams::new(Vec::<String>::new()),
    )?;
    params
        .distinguished_name
        .push(DnType::CommonName, "muster coordinator");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(generate("a server name", name.clone().try_into())?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    let key = generate("the server key", KeyPair::generate())?;
    let cert = generate(
        "the server certificate",
        params.signed_by(&key, &issuer, &ca_key),
    )?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    tracing::info!(cert = %cert_path.display(), names = ?names, "issued the coordinator's server certificate");
    Ok(files)
}

/// A CA's certificate and private key, in PEM.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaPem {
    /// The certificate agents pin.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem").finish_non_exhaustive()
    }
}

/// The CA in `data_dir`, if both its files are there.
pub fn read_ca(data_dir: &Path) -> Result<Option<CaPem>, PkiError> {
    let (cert, key) = (data_dir.join(CA_FILE), data_dir.join(CA_KEY_FILE));
    if !(cert.exists() && key.exists()) {
        return Ok(None);
    }
    let text = |path: &Path| read(path).map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(Some(CaPem {
        cert: text(&cert)?,
        key: text(&key)?,
    }))
}

/// A new CA, written nowhere yet.
pub fn new_ca() -> Result<CaPem, PkiError> {
    let key = generate("the CA key", KeyPair::generate())?;
    let ca = generate("the CA certificate", ca_params()?.self_signed(&key))?;
    Ok(CaPem {
        cert: ca.pem(),
        key: key.serialize_pem(),
    })
}

/// Makes `ca` the data dir's CA. A server certificate there was issued by
/// another CA, so it is removed, and [`ensure_self_signed`] issues one.
pub fn install_ca(data_dir: &Path, ca: &CaPem) -> Result<(), PkiError> {
    for stale in [SERVER_CERT_FILE, SERVER_KEY_FILE] {
        let path = data_dir.join(stale);
        match fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                return Err(PkiError::Write { path, source })
            }
            _ => {}
        }
    }
    write_file(&data_dir.join(CA_KEY_FILE), ca.key.as_bytes(), 0o600)?;
    write_file(&data_dir.join(CA_FILE), ca.cert.as_bytes(), 0o644)
}

/// A rustls server configuration for the certificate chain and key in `files`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let cert_pem = read(&files.cert)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(PkiError::Pem {
            path: files.cert.clone(),
            what: "certificate",
        });
    }
    let key_pem = read(&files.key)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| PkiError::Pem {
            path: files.key.clone(),
            what: "private key",
        })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| PkiError::Rustls {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(PkiError::Ticketer)?;
    config.send_tls13_tickets = TLS13_TICKETS;
    Ok(Arc::new(config))
}

/// Session tickets sent after each handshake. An agent keeps one
/// connection at a time, so one ticket is all its next reconnect needs.
///
/// The tickets are stateless: the session is sealed under a key the
/// coordinator rotates every six hours, so a reconnecting fleet resumes
/// (no certificate, no signature) whatever its size. rustls' default
/// without a ticketer keeps 256 sessions in memory, and a fleet past that
/// would pay a full handshake on nearly every reconnect. TLS 1.3
/// resumption still agrees a fresh ephemeral key (`psk_dhe_ke`), so
/// forward secrecy holds. A ticket from another replica, or from before a
/// restart, fails to open, and the client falls back to a full handshake.
const TLS13_TICKETS: usize = 1;

/// Reads the admin token from the data dir, creating it (0600) on first start.
pub fn ensure_admin_token(data_dir: &Path) -> Result<String, PkiError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        let token = String::from_utf8_lossy(&read(&path)?).trim().to_owned();
        if TokenKind::of(&token) != Some(TokenKind::Admin) {
            return Err(PkiError::BadAdminToken(path));
        }
        return Ok(token);
    }
    let token = new_secret(TokenKind::Admin);
    write_file(&path, format!("{token}\n").as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "generated the admin token");
    Ok(token)
}

/// Makes `token` the data dir's admin token (written atomically, 0600),
/// unless it is already.
pub fn keep_admin_token(data_dir: &Path, token: &str) -> Result<(), PkiError> {
    keep(&data_dir.join(ADMIN_TOKEN_FILE), token)
}

/// Writes `line` and a newline to `path` (atomically, 0600) unless the
/// file holds it already.
fn keep(path: &Path, line: &str) -> Result<(), PkiError> {
    let held = fs::read_to_string(path).unwrap_or_default();
    if held.trim() == line {
        return Ok(());
    }
    write_file(path, format!("{line}\n").as_bytes(), 0o600)
}

/// The viewer token's hash, if one was issued.
pub fn viewer_token_hash(data_dir: &Path) -> Result<Option<String>, PkiError> {
    let path = data_dir.join(VIEWER_TOKEN_HASH_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let hash = String::from_utf8_lossy(&read(&path)?).trim().to_owned();
    if crate::secrets::stored_digest(&hash).is_none() {
        return Err(PkiError::BadViewerTokenHash(path));
    }
    Ok(Some(hash))
}

/// Makes `hash` the data dir's viewer token hash (written atomically,
/// 0600), unless it is already.
pub fn keep_viewer_token_hash(data_dir: &Path, hash: &str) -> Result<(), PkiError> {
    keep(&data_dir.join(VIEWER_TOKEN_HASH_FILE), hash)
}

/// The SHA-256 fingerprint of the first certificate in the PEM file
/// `path` (of its DER bytes), in hex.
pub fn certificate_fingerprint(path: &Path) -> Result<String, PkiError> {
    let bad = |source| PkiError::Expiry {
        path: path.to_owned(),
        source,
    };
    let cert = openssl::x509::X509::from_pem(&read(path)?).map_err(bad)?;
    let digest = cert
        .digest(openssl::hash::MessageDigest::sha256())
        .map_err(bad)?;
    Ok(hex::encode(digest))
}

/// When the first certificate in the PEM file `path` expires, in Unix
/// seconds.
pub fn certificate_expiry(path: &Path) -> Result<i64, PkiError> {
    let expiry = |source| PkiError::Expiry {
        path: path.to_owned(),
        source,
    };
    let cert = openssl::x509::X509::from_pem(&read(path)?).map_err(expiry)?;
    let epoch = openssl::asn1::Asn1Time::from_unix(0).map_err(expiry)?;
    let diff = epoch.diff(cert.not_after()).map_err(expiry)?;
    Ok(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use std::os::unix::fs::PermissionsExt;

    /// The first call creates every file with the right modes; the second
    /// reuses them byte for byte.
    #[test]
    fn files_are_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        ensure_self_signed(dir.path(), &names).unwrap();
        let token = ensure_admin_token(dir.path()).unwrap();
        let mode = |f: &str| {
            fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(SERVER_KEY_FILE), 0o600);
        assert_eq!(mode(ADMIN_TOKEN_FILE), 0o600);
        assert_eq!(mode(CA_FILE), 0o644);
        let ca = fs::read(dir.path().join(CA_FILE)).unwrap();
        let cert = fs::read(dir.path().join(SERVER_CERT_FILE)).unwrap();
        let files = ensure_self_signed(dir.path(), &names).unwrap();
        assert_eq!(ensure_admin_token(dir.path()).unwrap(), token);
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), ca);
        assert_eq!(fs::read(dir.path().join(SERVER_CERT_FILE)).unwrap(), cert);
        let _ = rustls::crypto::ring::default_provider().install_default();
        server_config(&files).unwrap();
    }

    /// A deleted server certificate is re-issued by the same CA, which the
    /// new certificate still chains to.
    #[test]
    fn server_certificate_is_reissued_by_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned()];
        ensure_self_signed(dir.path(), &names).unwrap();
        let ca = fs::read(dir.path().join(CA_FILE)).unwrap();
        fs::remove_file(dir.path().join(SERVER_CERT_FILE)).unwrap();
        ensure_self_signed(dir.path(), &["other.example".to_owned()]).unwrap();
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), ca);
        // Verify the chain with rustls' own verifier.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let leaf_pem = fs::read(dir.path().join(SERVER_CERT_FILE)).unwrap();
        let leaf = rustls_pemfile::certs(&mut leaf_pem.as_slice())
            .next()
            .unwrap()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("other.example").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
    }

    /// A corrupted admin token file is reported, not silently replaced.
    #[test]
    fn bad_admin_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(ADMIN_TOKEN_FILE), "hunter2").unwrap();
        assert!(matches!(
            ensure_admin_token(dir.path()),
            Err(PkiError::BadAdminToken(_))
        ));
    }
}
