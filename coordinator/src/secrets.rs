//! Bearer secrets: minting, hashing and comparing them.
//!
//! Join tokens, node credentials and the admin token are 256-bit random
//! values ([`muster_proto::token`]). Only their SHA-256 is kept, in the
//! store as lower-case hex and in memory as the 32 bytes; a presented
//! secret is compared with a stored hash in constant time.

use muster_proto::token::{format_secret, TokenKind, SECRET_BYTES};
use rand::RngCore;
use subtle::ConstantTimeEq;

/// The SHA-256 of a secret.
pub type SecretDigest = [u8; 32];

/// SHA-256 of a secret. Every heartbeat hashes its credential: ring's
/// assembly keeps that cheap.
pub fn digest_secret(secret: &str) -> SecretDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 of a secret, hex encoded: what the store keeps. Memory keeps
/// the 32 bytes ([`stored_digest`]).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(digest_secret(secret))
}

/// The digest a stored hex hash names; `None` if it is not one.
pub fn stored_digest(hex_hash: &str) -> Option<SecretDigest> {
    let mut out = [0; 32];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

/// A fresh random secret of `kind`.
pub fn new_secret(kind: TokenKind) -> String {
    let mut random = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut random);
    format_secret(kind, &random)
}

/// Whether `secret` hashes to `stored_hash`, in constant time.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored hashes are SHA-256 in lower-case hex: the FIPS 180-2 "abc"
    /// vector, so a store written before keeps matching its credentials.
    #[test]
    fn secrets_hash_to_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            stored_digest(&hash_secret("abc")),
            Some(digest_secret("abc"))
        );
        assert_eq!(stored_digest("ba78"), None);
    }

    /// A minted secret matches its own hash and no other.
    #[test]
    fn minted_secrets_match_only_their_hash() {
        let a = new_secret(TokenKind::Node);
        let b = new_secret(TokenKind::Node);
        assert_ne!(a, b);
        assert!(secret_matches(&a, &hash_secret(&a)));
        assert!(!secret_matches(&b, &hash_secret(&a)));
        assert_eq!(TokenKind::of(&a), Some(TokenKind::Node));
    }
}
