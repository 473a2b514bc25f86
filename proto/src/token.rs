//! The bearer secrets on the wire, join token, node credential, admin
//! token and viewer token: what kind each is ([`TokenKind`]) and how one is written.
//!
//! Each carries a prefix that says what it is, so a token pasted in the
//! wrong place is refused with a clear message instead of a bare
//! "unauthorized", and a leaked one is easy to spot in logs and scans. The
//! random part is 32 bytes (256 bits), hex encoded. Only hashes of these
//! are ever stored; generating and hashing them is the coordinator's job.

use std::fmt;

/// Number of random bytes in every secret.
pub const SECRET_BYTES: usize = 32;

/// What a bearer secret is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Lets an agent join a cluster.
    Join,
    /// Lets one registered node speak for itself.
    Node,
    /// Lets an operator use the admin API.
    Admin,
    /// Lets someone read the admin API and the console, and write nothing.
    Viewer,
}

impl TokenKind {
    /// Every kind.
    pub const ALL: [TokenKind; 4] = [
        TokenKind::Join,
        TokenKind::Node,
        TokenKind::Admin,
        TokenKind::Viewer,
    ];

    /// The prefix of this kind of secret.
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::Join => "mjoin_",
            TokenKind::Node => "mnode_",
            TokenKind::Admin => "madmin_",
            TokenKind::Viewer => "mview_",
        }
    }

    /// Tells which kind a secret is, from its prefix and shape.
    pub fn of(secret: &str) -> Option<TokenKind> {
        TokenKind::ALL.into_iter().find(|kind| {
            secret.strip_prefix(kind.prefix()).is_some_and(|rest| {
                rest.len() == SECRET_BYTES * 2
                    && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
        })
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Join => "join token",
            TokenKind::Node => "node credential",
            TokenKind::Admin => "admin token",
            TokenKind::Viewer => "viewer token",
        })
    }
}

/// Builds a secret of `kind` from its random bytes.
pub fn format_secret(kind: TokenKind, random: &[u8; SECRET_BYTES]) -> String {
    let mut out = String::with_capacity(kind.prefix().len() + SECRET_BYTES * 2);
    out.push_str(kind.prefix());
    for byte in random {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A formatted secret is recognised as its own kind and no other.
    #[test]
    fn kinds_are_recognised() {
        for kind in TokenKind::ALL {
            let secret = format_secret(kind, &[0xab; SECRET_BYTES]);
            assert_eq!(TokenKind::of(&secret), Some(kind));
        }
        assert_eq!(TokenKind::of("mjoin_abc"), None);
        assert_eq!(TokenKind::of(""), None);
        let upper = format_secret(TokenKind::Join, &[0xab; SECRET_BYTES]).to_uppercase();
        assert_eq!(TokenKind::of(&upper), None);
    }
}
