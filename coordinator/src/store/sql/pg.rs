//! PostgreSQL's side of [`super`]: the connection settings from a
//! `postgres://` URL (TLS as libpq reads it), the pool of connections the
//! store's calls run on, how a lost connection is noticed and opened
//! again, and the fence on a leader's writes.
//!
//! # The pool
//! Each call takes a connection for its whole run (one statement, or one
//! transaction) and gives it back. The pool opens connections as calls
//! need them, up to its size (`--store-connections`), and keeps them; a
//! call finding all of them busy waits up to [`CHECKOUT_WAIT`], then fails
//! as unavailable. The last one given back is the first taken again, so a
//! quiet coordinator works on one warm connection. One found broken is
//! dropped, and its server process forgotten.
//!
//! Writes need no more than one: the registry takes them one at a time,
//! so that the store, memory and DNS move together. The others let reads
//! (a follower taking in another coordinator's writes, the API's reads of
//! events and clusters) go on while a write waits on a row lock, which on
//! a shared store another coordinator may hold. The pool is written here
//! rather than taken from r2d2, as each connection carries this store's
//! state (its prepared statements, the fence, its server process) and
//! the pool is a mutex, a condition variable and a count.
//!
//! # The fence
//! Several coordinators may share one database; one leads, holding the
//! lease in `muster_lease` ([`crate::store::lease`]). Once it holds it, its
//! store carries a [`Fence`] (its name and the lease's term), and every
//! statement that writes first checks, in the same transaction, that the
//! lease row still names it with that term, and holds the row (`FOR
//! SHARE`) until the transaction ends. A new leader takes the lease by
//! updating that row, so it waits for a write in flight to commit, and
//! every later write of the old leader finds another term and fails as
//! [`DbError::Fenced`]: a leader paused past its lease, or cut off from
//! the database, writes nothing once another has taken over.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use muster_coordinator_config::redact;

use super::{off_runtime, pg_error_text, postgres_sql, DbError};

/// The advisory lock schema migrations run under ("muster", then 2).
pub const MIGRATE_LOCK: i64 = 0x6d75_7374_6572_0002;

/// How long opening a PostgreSQL connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may sit idle before a call asks whether it is
/// still there: calls in a burst (a fleet registering) go straight on.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// How long a call waits for a connection while all the pool's are busy.
pub const CHECKOUT_WAIT: Duration = Duration::from_secs(10);

/// How long a statement may run on PostgreSQL before the server cancels it.
const STATEMENT_TIMEOUT_MS: u32 = 10_000;

/// The check a fenced write makes first, holding the lease row until its
/// transaction ends.
const FENCE_CHECK: &str =
    "SELECT term FROM muster_lease WHERE name = 'leader' AND holder = ?1 AND term = ?2 FOR SHARE";

/// The lease a leader's writes are fenced by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader's name in the lease row.
    pub holder: String,
    /// The lease's term when it took it.
    pub term: i64,
}

/// A PostgreSQL connection with its prepared statements.
pub struct PgConnection {
    pub(super) client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    pub(super) in_transaction: bool,
    /// When a call last used it.
    used: std::time::Instant,
    /// A statement failed as if the server were gone: it is not used again.
    pub(super) broken: bool,
    /// Its server process, which the notifications its writes cause name.
    pid: u32,
    /// The lease this coordinator's writes must still hold.
    fence: Option<Fence>,
    /// The open transaction has checked the fence already.
    fence_checked: bool,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection")
            .field("statements", &self.statements.len())
            .field("in_transaction", &self.in_transaction)
            .finish_non_exhaustive()
    }
}

impl PgConnection {
    /// Runs one exchange with the server; an error that says the server
    /// is gone marks the connection broken, so the next call opens another.
    pub(super) fn run<T>(
        &mut self,
        exchange: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        exchange(&mut self.client).map_err(|error| {
            let error = DbError::Postgres(error);
            if error.is_unavailable() {
                self.broken = true;
            }
            error
        })
    }

    pub(super) fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let text = postgres_sql(sql);
        let statement = self.run(|client| client.prepare(&text))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Opens a transaction.
    pub(super) fn begin(&mut self) -> Result<(), DbError> {
        self.run(|client| client.batch_execute("BEGIN"))?;
        // A panic or an error leaves the transaction open; the next call's
        // ROLLBACK (in `ready`) ends it.
        self.in_transaction = true;
        self.fence_checked = false;
        Ok(())
    }

    /// Ends the open transaction: commits it when `out` is `Ok`, rolls it
    /// back otherwise.
    pub(super) fn end<R, E: From<DbError>>(&mut self, out: Result<R, E>) -> Result<R, E> {
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.run(|client| client.batch_execute(end));
        self.in_transaction = false;
        let out = out?;
        ended?;
        Ok(out)
    }

    /// Runs statement `sql` through `run`, fenced when it writes and this
    /// coordinator leads by a lease: inside the open transaction, or in
    /// one of its own.
    pub(super) fn fenced<T>(
        &mut self,
        sql: &str,
        run: impl FnOnce(&mut PgConnection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let Some(fence) = self.fence.clone().filter(|_| writes(sql)) else {
            return run(self);
        };
        if self.in_transaction {
            if !self.fence_checked {
                self.check_fence(&fence)?;
                self.fence_checked = true;
            }
            return run(self);
        }
        self.begin()?;
        let out = self.check_fence(&fence).and_then(|()| run(self));
        self.end(out)
    }

    /// Fails with [`DbError::Fenced`] unless the lease row still names
    /// `fence`'s holder and term; holds the row until the transaction ends.
    fn check_fence(&mut self, fence: &Fence) -> Result<(), DbError> {
        let statement = self.statement(FENCE_CHECK)?;
        let rows =
            self.run(|client| client.query(&statement, &[&fence.holder.as_str(), &fence.term]))?;
        if rows.is_empty() {
            return Err(DbError::Fenced { term: fence.term });
        }
        Ok(())
    }

    /// Makes it ready for a call: ends a transaction a panic left open,
    /// and asks the server whether it is still there when it sat idle (a
    /// server restarted meanwhile ended it, and its first statement would
    /// fail only to say so). Store calls are rare, so the question costs
    /// one round trip now and then.
    fn ready(&mut self) -> Result<(), DbError> {
        if self.in_transaction {
            self.client.batch_execute("ROLLBACK")?;
            self.in_transaction = false;
        } else if self.used.elapsed() > IDLE_CHECK {
            self.client.is_valid(CONNECT_TIMEOUT)?;
        }
        self.used = std::time::Instant::now();
        Ok(())
    }
}

/// A PostgreSQL store's connection settings and its pool.
pub struct Postgres {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    shown: String,
    /// The most connections open at once.
    size: usize,
    pool: Mutex<Pool>,
    /// Signalled when a connection is given back or closed.
    freed: Condvar,
    /// The lease this coordinator's writes are fenced by, once it leads.
    fence: Mutex<Option<Fence>>,
    /// The server processes of the open connections, which the
    /// notifications their writes cause name.
    sessions: Mutex<BTreeSet<u32>>,
}

/// The pool's connections.
#[derive(Default)]
struct Pool {
    /// Those no call holds, the last given back last.
    idle: Vec<PgConnection>,
    /// Those open, held, idle or being opened.
    open: usize,
}

/// A connection a call holds; given back to the pool when dropped, or
/// closed if it was found broken.
pub(super) struct Held<'p> {
    pg: &'p Postgres,
    conn: Option<PgConnection>,
}

impl std::ops::Deref for Held<'_> {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("held until dropped")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pg.give_back(conn);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The clients close their connections on their own small runtime,
        // which may not be entered from an async task: the store dropped
        // as the server stops is.
        let pool = self.pool.get_mut().unwrap_or_else(|p| p.into_inner());
        let idle = std::mem::take(&mut pool.idle);
        if !idle.is_empty() {
            off_runtime(move || drop(idle));
        }
    }
}

/// `mutex`'s guard, whatever a panic left in it: every value kept under
/// these locks is whole between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Settings from a `postgres://` URL. `sslrootcert=FILE` (libpq's name)
    /// turns on TLS, verifying the server's certificate against that CA
    /// and its name (libpq's `verify-full`, whatever `sslmode` says but
    /// `disable`); `sslmode=require`, `verify-ca` or `verify-full` without
    /// it is refused, as muster never trusts a certificate it cannot
    /// check. Without either, the connection is plain.
    /// The pool opens up to `connections` (at least one).
    pub fn new(url: &str, connections: usize) -> Result<Postgres, String> {
        let shown = redact(url);
        let (base, root) = take_param(url, "sslrootcert");
        let (base, mode) = take_param(&base, "sslmode");
        let mut config: postgres::Config = base.parse().map_err(|e| format!("{shown}: {e}"))?;
        let tls = match (mode.as_deref(), root) {
            (Some("disable"), _) => None,
            (_, Some(path)) => Some(rustls_connector(&path)?),
            (None | Some("prefer" | "allow"), None) => None,
            (Some(mode @ ("require" | "verify-ca" | "verify-full")), None) => {
                return Err(format!(
                    "{shown}: sslmode={mode} needs sslrootcert=FILE, the CA that signed the \
                     database's certificate"
                ))
            }
            (Some(other), None) => return Err(format!("{shown}: unknown sslmode={other}")),
        };
        config.ssl_mode(if tls.is_some() {
            postgres::config::SslMode::Require
        } else {
            postgres::config::SslMode::Disable
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.tcp_user_timeout(Duration::from_secs(15));
        config.application_name("muster-coordinator");
        let timeout = format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}");
        let options = match config.get_options() {
            Some(given) => format!("{given} {timeout}"),
            None => timeout,
        };
        config.options(&options);
        Ok(Postgres {
            config,
            tls,
            shown,
            size: connections.max(1),
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
            fence: Mutex::new(None),
            sessions: Mutex::new(BTreeSet::new()),
        })
    }

    /// The server processes of the open connections: the `process_id`
    /// of the notifications this store's writes cause.
    pub fn sessions(&self) -> BTreeSet<u32> {
        lock(&self.sessions).clone()
    }

    /// The URL without its password, for logs and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Fences every write from now on by `fence` (see the module doc).
    pub fn set_fence(&self, fence: Fence) {
        *lock(&self.fence) = Some(fence);
    }

    /// A connection for one call, ready under the current fence: an idle
    /// one, or one opened while fewer than the pool's size are open, or
    /// the first given back within [`CHECKOUT_WAIT`].
    pub(super) fn connection(&self) -> Result<Held<'_>, DbError> {
        let fence = lock(&self.fence).clone();
        let deadline = Instant::now() + CHECKOUT_WAIT;
        let mut pool = lock(&self.pool);
        let mut conn = loop {
            if let Some(mut conn) = pool.idle.pop() {
                drop(pool);
                if conn.ready().is_ok() {
                    break conn;
                }
                self.close(conn);
                pool = lock(&self.pool);
                continue;
            }
            if pool.open < self.size {
                pool.open += 1;
                drop(pool);
                match self.open() {
                    Ok(conn) => break conn,
                    Err(error) => {
                        self.closed();
                        return Err(error);
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DbError::Unavailable(format!(
                    "all {} connections to {} stayed busy for {}",
                    self.size,
                    self.shown,
                    humantime::format_duration(CHECKOUT_WAIT)
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        conn.fence = fence;
        Ok(Held {
            pg: self,
            conn: Some(conn),
        })
    }

    /// Takes back a connection a call held: kept for the next call, or
    /// closed if it was found broken.
    fn give_back(&self, conn: PgConnection) {
        if conn.broken || conn.client.is_closed() {
            self.close(conn);
        } else {
            lock(&self.pool).idle.push(conn);
            self.freed.notify_one();
        }
    }

    /// Closes `conn`, found broken, and forgets its server process:
    /// another connection (maybe another coordinator's) may be given the
    /// same process id once it is gone, and its writes must not be taken
    /// for this store's own.
    fn close(&self, conn: PgConnection) {
        lock(&self.sessions).remove(&conn.pid);
        drop(conn);
        self.closed();
    }

    /// Counts a connection closed, or one that failed to open.
    fn closed(&self) {
        let mut pool = lock(&self.pool);
        pool.open = pool.open.saturating_sub(1);
        self.freed.notify_one();
    }

    /// A new client, with this store's settings and TLS.
    pub fn open_client(&self) -> Result<postgres::Client, DbError> {
        let unavailable = |e: postgres::Error| {
            DbError::Unavailable(format!(
                "connecting to {}: {}",
                self.shown,
                pg_error_text(&e)
            ))
        };
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
        .map_err(unavailable)
    }

    fn open(&self) -> Result<PgConnection, DbError> {
        let mut client = self.open_client()?;
        let pid = client
            .query_one("SELECT pg_backend_pid()", &[])
            .and_then(|row| row.try_get::<_, i32>(0))
            .map_err(|e| DbError::Unavailable(format!("{}: {}", self.shown, pg_error_text(&e))))?;
        let pid = u32::try_from(pid).unwrap_or(0);
        lock(&self.sessions).insert(pid);
        Ok(PgConnection {
            client,
            statements: HashMap::new(),
            in_transaction: false,
            used: std::time::Instant::now(),
            broken: false,
            pid,
            fence: None,
            fence_checked: false,
        })
    }
}

/// Whether statement `sql` may write: anything but a plain `SELECT` (a
/// `SELECT … FOR UPDATE` writes nothing until the statement after it).
fn writes(sql: &str) -> bool {
    let head = sql.trim_start().get(..6).unwrap_or_default();
    !head.eq_ignore_ascii_case("SELECT")
}

/// A TLS connector trusting only the CA in `path`.
fn rustls_connector(path: &str) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {path}: no certificate in it"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS to PostgreSQL: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `url` without query parameter `name`, and its value.
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(v.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    if kept.is_empty() {
        (base.to_owned(), value)
    } else {
        (format!("{base}?{}", kept.join("&")), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_certificate_is_taken_out_of_the_url() {
        assert_eq!(
            take_param(
                "postgres://h/db?sslrootcert=/ca.pem&sslmode=require",
                "sslrootcert"
            ),
            (
                "postgres://h/db?sslmode=require".to_owned(),
                Some("/ca.pem".to_owned())
            )
        );
        assert_eq!(
            take_param("postgres://h/db", "sslrootcert"),
            ("postgres://h/db".to_owned(), None)
        );
    }

    #[test]
    fn tls_is_verified_or_refused() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let error =
                Postgres::new(&format!("postgres://u:pw@h/db?sslmode={mode}"), 1).unwrap_err();
            assert!(error.contains("sslrootcert"), "{error}");
            assert!(!error.contains("pw"), "{error}");
        }
        let error = Postgres::new("postgres://u@h/db?sslmode=sometimes", 1).unwrap_err();
        assert!(error.contains("sslmode"), "{error}");
        let root = "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
        let error = Postgres::new(root, 1).unwrap_err();
        assert!(
            error.contains("/nonexistent/ca.pem"),
            "the root is read: {error}"
        );
        for plain in [
            "postgres://u@h/db",
            "postgres://u@h/db?sslmode=disable",
            "postgres://u@h/db?sslmode=prefer",
        ] {
            assert!(Postgres::new(plain, 1).unwrap().tls.is_none(), "{plain}");
        }
    }
}
