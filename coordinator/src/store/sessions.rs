//! The web console's sessions, kept in the store when several
//! coordinators share it, so that a browser signed in on one is signed in
//! on every one behind the same name ([`crate::api::console`]). Alone on
//! its store, a coordinator keeps them in memory instead.
//!
//! A row holds the digest of the session's id (never the id), the role
//! and generation of the token that opened it, and when it ends. Ended
//! rows go as the next session opens. There is no cap, unlike the
//! memory's: only the holder of a token can open a session.

use super::sql::args;
use super::{now_ms, query, Store, StoreError};

/// A session as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The role of the token that opened it (`admin` or `viewer`).
    pub role: String,
    /// The generation of that token when it did.
    pub generation: String,
}

impl Store {
    /// Records a session (by `digest`, hex) opened with `role`'s token of
    /// `generation`, ending at `expires_at` (Unix ms); drops those ended.
    pub fn open_console_session(
        &self,
        digest: &str,
        session: &StoredSession,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.transaction(|db| {
            db.execute(
                "DELETE FROM console_sessions WHERE expires_at <= ?1",
                args![now],
            )
            .map_err(query("dropping ended console sessions"))?;
            db.execute(
                "INSERT INTO console_sessions (digest, role, generation, expires_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                args![digest, &session.role, &session.generation, expires_at],
            )
            .map_err(query("opening a console session"))?;
            Ok(())
        })
    }

    /// The session `digest` names, unless it has ended.
    pub fn console_session(&self, digest: &str) -> Result<Option<StoredSession>, StoreError> {
        let now = now_ms();
        self.with(|db| {
            db.query_opt(
                "SELECT role, generation FROM console_sessions \
                 WHERE digest = ?1 AND expires_at > ?2",
                args![digest, now],
                |row| {
                    Ok(StoredSession {
                        role: row.get(0)?,
                        generation: row.get(1)?,
                    })
                },
            )
            .map_err(query("reading a console session"))
        })
    }

    /// Ends the session `digest` names, if there is one.
    pub fn close_console_session(&self, digest: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM console_sessions WHERE digest = ?1",
                args![digest],
            )
            .map(|_| ())
            .map_err(query("ending a console session"))
        })
    }
}
