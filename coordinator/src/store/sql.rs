//! The two databases the store runs on, behind one small interface: SQLite
//! (one file, the default) and PostgreSQL (`--store postgres://…`).
//!
//! The store's statements are written once, in the SQL both understand,
//! with SQLite's numbered parameters (`?1`); on PostgreSQL they become
//! `$1`. Values cross as [`Value`] (integers, text, null) and come back
//! through [`Row::get`], so no statement knows which database runs it.
//!
//! # How calls run
//! Each store call takes the one connection ([`Database::with`]) and runs
//! one statement or one transaction ([`Db::transaction`]) on it, as
//! SQLite's single connection always did: the calls keep one serial order
//! on both databases. PostgreSQL's client blocks on its own small runtime,
//! so its calls step off the async runtime's worker first
//! ([`off_runtime`]). A connection PostgreSQL closed (a restart, a
//! failover) is opened again on the next call; while it cannot be, calls
//! fail as [`DbError::is_unavailable`], which the API answers with 503.
//!
//! # One coordinator per database
//! The PostgreSQL connection holds a session lock ([`SERVE_LOCK`]) for as
//! long as it lives: a second coordinator on the same database is refused
//! at start, and a coordinator whose connection was lost serves again only
//! once it holds the lock again. The schema is migrated under a
//! transaction lock ([`MIGRATE_LOCK`]), so two coordinators starting at
//! once on an empty database make one schema.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use muster_coordinator_config::redact;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// The advisory lock a serving coordinator holds on its PostgreSQL
/// connection ("muster" in ASCII, then 1).
pub const SERVE_LOCK: i64 = 0x6d75_7374_6572_0001;

/// The advisory lock schema migrations run under ("muster", then 2).
pub const MIGRATE_LOCK: i64 = 0x6d75_7374_6572_0002;

/// How long opening a PostgreSQL connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may sit idle before a call asks whether it is
/// still there: calls in a burst (a fleet registering) go straight on.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// How long a statement may run on PostgreSQL before the server cancels it.
const STATEMENT_TIMEOUT_MS: u32 = 10_000;

/// A value bound to a statement's parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    /// An integer (PostgreSQL `BIGINT`; also `INTEGER` and `BOOLEAN`).
    Int(i64),
    /// Text.
    Text(Cow<'a, str>),
    /// SQL null.
    Null,
}

impl From<i64> for Value<'_> {
    fn from(value: i64) -> Self {
        Value::Int(value)
    }
}

impl From<u32> for Value<'_> {
    fn from(value: u32) -> Self {
        Value::Int(i64::from(value))
    }
}

impl From<bool> for Value<'_> {
    fn from(value: bool) -> Self {
        Value::Int(i64::from(value))
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::Text(Cow::Borrowed(value))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(value: &'a String) -> Self {
        Value::Text(Cow::Borrowed(value))
    }
}

impl From<String> for Value<'_> {
    fn from(value: String) -> Self {
        Value::Text(Cow::Owned(value))
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Value::Null, Into::into)
    }
}

/// The parameters of a statement, in order: `args![a, b]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($value)),*][..]
    };
}
pub(crate) use args;

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Int(value) => ValueRef::Integer(*value),
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
            Value::Null => ValueRef::Null,
        }))
    }
}

impl ToSql for Value<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (self, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Int(value), &Type::INT4) => i32::try_from(*value)?.to_sql(ty, out),
            (Value::Int(value), &Type::INT2) => i16::try_from(*value)?.to_sql(ty, out),
            (Value::Int(value), &Type::BOOL) => (*value != 0).to_sql(ty, out),
            (Value::Int(value), _) => value.to_sql(ty, out),
            (Value::Text(text), _) => text.as_ref().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL | Type::TEXT | Type::VARCHAR
        )
    }

    to_sql_checked!();
}

/// A column's value as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// An integer (or a boolean, as 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
    /// SQL null.
    Null,
}

/// A Rust value a column converts to.
pub trait FromColumn: Sized {
    /// Converts, or says why not.
    fn from_column(column: Column) -> Result<Self, String>;
}

impl FromColumn for i64 {
    fn from_column(column: Column) -> Result<Self, String> {
        match column {
            Column::Int(value) => Ok(value),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}

impl FromColumn for u64 {
    fn from_column(column: Column) -> Result<Self, String> {
        let value = i64::from_column(column)?;
        u64::try_from(value).map_err(|_| format!("expected a count, found {value}"))
    }
}

impl FromColumn for u32 {
    fn from_column(column: Column) -> Result<Self, String> {
        let value = i64::from_column(column)?;
        u32::try_from(value).map_err(|_| format!("expected a small count, found {value}"))
    }
}

impl FromColumn for bool {
    fn from_column(column: Column) -> Result<Self, String> {
        Ok(i64::from_column(column)? != 0)
    }
}

impl FromColumn for String {
    fn from_column(column: Column) -> Result<Self, String> {
        match column {
            Column::Text(text) => Ok(text),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}

impl<T: FromColumn> FromColumn for Option<T> {
    fn from_column(column: Column) -> Result<Self, String> {
        match column {
            Column::Null => Ok(None),
            other => T::from_column(other).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug)]
pub enum Row<'r> {
    /// A SQLite row.
    Sqlite(&'r rusqlite::Row<'r>),
    /// A PostgreSQL row.
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// Column `index` (from 0), converted.
    pub fn get<T: FromColumn>(&self, index: usize) -> Result<T, DbError> {
        let column = match self {
            Row::Sqlite(row) => match row.get_ref(index)? {
                ValueRef::Integer(value) => Column::Int(value),
                ValueRef::Text(text) => Column::Text(String::from_utf8_lossy(text).into_owned()),
                ValueRef::Null => Column::Null,
                other => {
                    return Err(DbError::Column {
                        index,
                        why: format!("unexpected {:?}", other.data_type()),
                    })
                }
            },
            Row::Postgres(row) => pg_column(row, index)?,
        };
        T::from_column(column).map_err(|why| DbError::Column { index, why })
    }
}

fn pg_column(row: &postgres::Row, index: usize) -> Result<Column, DbError> {
    let ty = row
        .columns()
        .get(index)
        .map(|c| c.type_().clone())
        .ok_or(DbError::Column {
            index,
            why: "no such column".to_owned(),
        })?;
    // A value that does not convert is a column's fault, not the
    // connection's: it must not read as the database being away.
    let bad = |e: postgres::Error| DbError::Column {
        index,
        why: e.to_string(),
    };
    let column = match ty {
        Type::INT8 => row
            .try_get::<_, Option<i64>>(index)
            .map_err(bad)?
            .map(Column::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)
            .map_err(bad)?
            .map(|v| Column::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)
            .map_err(bad)?
            .map(|v| Column::Int(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)
            .map_err(bad)?
            .map(|v| Column::Int(v.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => row
            .try_get::<_, Option<String>>(index)
            .map_err(bad)?
            .map(Column::Text),
        other => {
            return Err(DbError::Column {
                index,
                why: format!("unexpected type {other}"),
            })
        }
    };
    Ok(column.unwrap_or(Column::Null))
}

/// What went wrong in the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite's error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL's error (or its connection's).
    #[error("{}", pg_error_text(.0))]
    Postgres(#[from] postgres::Error),
    /// A statement that must return a row returned none.
    #[error("no row returned")]
    NoRow,
    /// A column held what its reader did not expect.
    #[error("column {index}: {why}")]
    Column {
        /// The column, from 0.
        index: usize,
        /// What was wrong.
        why: String,
    },
    /// No connection to the database could be had.
    #[error("{0}")]
    Unavailable(String),
}

/// PostgreSQL's message, with its detail when the server gave one.
fn pg_error_text(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        }
    }
}

impl DbError {
    /// A unique or primary key constraint refused the write; the name of
    /// the constraint or column when the database says it.
    pub fn unique_violation(&self) -> Option<String> {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, text))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Some(text.clone().unwrap_or_default())
            }
            DbError::Postgres(error)
                if error.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                Some(
                    error
                        .as_db_error()
                        .and_then(|db| db.constraint().map(str::to_owned))
                        .unwrap_or_default(),
                )
            }
            _ => None,
        }
    }

    /// The database could not be reached, or the connection was lost: the
    /// call may succeed later, and said nothing about the data.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Unavailable(_) => true,
            DbError::Postgres(error) => {
                // Not a server's answer: the socket, TLS, a timeout.
                let transport = error.as_db_error().is_none()
                    && std::error::Error::source(error).is_some_and(|cause| {
                        cause.is::<std::io::Error>() || cause.is::<rustls::Error>()
                    });
                error.is_closed()
                    || transport
                    || error.code().is_some_and(|code| {
                        // Class 08 (connection exceptions), 57P (the server
                        // shutting down) and a cancelled statement.
                        code.code().starts_with("08")
                            || code.code().starts_with("57P")
                            || *code == postgres::error::SqlState::QUERY_CANCELED
                    })
            }
            _ => false,
        }
    }
}

/// A connection, as the store's statements see it.
#[derive(Debug)]
pub enum Db<'c> {
    /// SQLite's connection (or a transaction on it).
    Sqlite(&'c rusqlite::Connection),
    /// A PostgreSQL connection.
    Postgres(&'c mut PgConnection),
}

impl Db<'_> {
    /// Runs a statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, args: &[Value<'_>]) -> Result<u64, DbError> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                Ok(statement.execute(rusqlite::params_from_iter(args))? as u64)
            }
            Db::Postgres(conn) => {
                let statement = conn.statement(sql)?;
                conn.run(|client| client.execute(&statement, &pg_args(args)))
            }
        }
    }

    /// Every row a query returns, each read by `read`.
    pub fn query<T>(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        mut read: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(args))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(read(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Db::Postgres(conn) => {
                let statement = conn.statement(sql)?;
                conn.run(|client| client.query(&statement, &pg_args(args)))?
                    .iter()
                    .map(|row| read(&Row::Postgres(row)))
                    .collect()
            }
        }
    }

    /// The first row a query returns, if any, read by `read`.
    pub fn query_opt<T>(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        read: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        match self {
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(args))?;
                match rows.next()? {
                    Some(row) => read(&Row::Sqlite(row)).map(Some),
                    None => Ok(None),
                }
            }
            Db::Postgres(conn) => {
                let statement = conn.statement(sql)?;
                match conn
                    .run(|client| client.query(&statement, &pg_args(args)))?
                    .first()
                {
                    Some(row) => read(&Row::Postgres(row)).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// The one row a query must return, read by `read`.
    pub fn query_one<T>(
        &mut self,
        sql: &str,
        args: &[Value<'_>],
        read: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_opt(sql, args, read)?.ok_or(DbError::NoRow)
    }

    /// Runs `work` in a transaction: committed if it returns `Ok`, rolled
    /// back otherwise (and on a panic).
    pub fn transaction<R, E: From<DbError>>(
        &mut self,
        work: impl FnOnce(&mut Db<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        match self {
            Db::Sqlite(conn) => {
                let tx = conn.unchecked_transaction().map_err(DbError::from)?;
                let out = work(&mut Db::Sqlite(&tx))?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
            Db::Postgres(conn) => {
                conn.run(|client| client.batch_execute("BEGIN"))?;
                // A panic or an error leaves the transaction open; the next
                // call's ROLLBACK (in `PgConnection::ready`) ends it.
                conn.in_transaction = true;
                let out = work(&mut Db::Postgres(conn));
                let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
                let ended = conn.run(|client| client.batch_execute(end));
                conn.in_transaction = false;
                let out = out?;
                ended?;
                Ok(out)
            }
        }
    }

    /// Runs several statements, with no parameters (schema steps).
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Db::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Db::Postgres(conn) => conn.run(|client| client.batch_execute(&postgres_ddl(sql))),
        }
    }

    /// Which database this is.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }
}

fn pg_args<'a>(args: &'a [Value<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// A statement in PostgreSQL's spelling: SQLite's `?N` parameters as `$N`
/// (outside quoted text).
pub fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

/// A schema step in PostgreSQL's types: SQLite's `INTEGER PRIMARY KEY`
/// (a row id) becomes an identity column, and every other `INTEGER` a
/// `BIGINT`, which is what SQLite's integers are.
pub fn postgres_ddl(sql: &str) -> String {
    sql.replace(
        "INTEGER PRIMARY KEY",
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .replace(" INTEGER", " BIGINT")
}

/// A PostgreSQL connection with its prepared statements.
pub struct PgConnection {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
    in_transaction: bool,
    /// When a call last used it.
    used: std::time::Instant,
    /// A statement failed as if the server were gone: it is not used again.
    broken: bool,
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
    fn run<T>(
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

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let text = postgres_sql(sql);
        let statement = self.run(|client| client.prepare(&text))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
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

/// Where the store lives.
#[derive(Debug)]
pub enum Database {
    /// A SQLite file (or memory).
    Sqlite(Mutex<rusqlite::Connection>),
    /// A PostgreSQL database.
    Postgres(Box<Postgres>),
}

impl Database {
    /// Runs `work` on the connection.
    pub fn with<R: Send, E: From<DbError> + Send>(
        &self,
        work: impl FnOnce(&mut Db<'_>) -> Result<R, E> + Send,
    ) -> Result<R, E> {
        match self {
            Database::Sqlite(conn) => {
                // A panic while holding the lock leaves SQLite itself
                // consistent (the transaction rolls back on drop), so the
                // poison is ignored.
                let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                work(&mut Db::Sqlite(&conn))
            }
            Database::Postgres(pg) => off_runtime(|| {
                let mut slot = pg.connection()?;
                let conn = slot.as_mut().ok_or_else(|| {
                    DbError::Unavailable("no connection to PostgreSQL".to_owned())
                })?;
                let out = work(&mut Db::Postgres(conn));
                if conn.broken || conn.client.is_closed() {
                    // Opened again by the next call.
                    *slot = None;
                }
                out
            }),
        }
    }
}

/// A PostgreSQL store's connection settings and its one connection.
pub struct Postgres {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    shown: String,
    conn: Mutex<Option<PgConnection>>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The client closes its connection on its own small runtime, which
        // may not be entered from an async task: the store dropped as the
        // server stops is.
        let conn = self
            .conn
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(conn) = conn {
            off_runtime(move || drop(conn));
        }
    }
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
    pub fn new(url: &str) -> Result<Postgres, String> {
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
            conn: Mutex::new(None),
        })
    }

    /// The URL without its password, for logs and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The connection, opened (with the serve lock) if there is none.
    fn connection(&self) -> Result<MutexGuard<'_, Option<PgConnection>>, DbError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = slot.as_mut() {
            if conn.ready().is_ok() {
                return Ok(slot);
            }
            *slot = None;
        }
        *slot = Some(self.open()?);
        Ok(slot)
    }

    fn open(&self) -> Result<PgConnection, DbError> {
        let unavailable = |e: postgres::Error| {
            DbError::Unavailable(format!(
                "connecting to {}: {}",
                self.shown,
                pg_error_text(&e)
            ))
        };
        let mut client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
        .map_err(unavailable)?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SERVE_LOCK])
            .map_err(unavailable)?
            .get(0);
        if !locked {
            return Err(DbError::Unavailable(format!(
                "another coordinator serves from {}: one coordinator per database",
                self.shown
            )));
        }
        Ok(PgConnection {
            client,
            statements: HashMap::new(),
            in_transaction: false,
            used: std::time::Instant::now(),
            broken: false,
        })
    }
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

/// Runs blocking `work` where blocking is allowed: beside the async
/// runtime's workers (a multi-threaded runtime hands this worker's tasks
/// to another), on a thread of its own under a single-threaded runtime,
/// or simply here outside any runtime.
pub fn off_runtime<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        Ok(_) => std::thread::scope(|scope| match scope.spawn(work).join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_renumbered_outside_quotes() {
        assert_eq!(
            postgres_sql("SELECT '?' FROM t WHERE a = ?1 AND b = ?12"),
            "SELECT '?' FROM t WHERE a = $1 AND b = $12"
        );
    }

    #[test]
    fn schema_steps_take_postgres_types() {
        assert_eq!(
            postgres_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"),
            "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
             n BIGINT NOT NULL)"
        );
    }

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
            let error = Postgres::new(&format!("postgres://u:pw@h/db?sslmode={mode}")).unwrap_err();
            assert!(error.contains("sslrootcert"), "{error}");
            assert!(!error.contains("pw"), "{error}");
        }
        let error = Postgres::new("postgres://u@h/db?sslmode=sometimes").unwrap_err();
        assert!(error.contains("sslmode"), "{error}");
        let root = "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem";
        let error = Postgres::new(root).unwrap_err();
        assert!(
            error.contains("/nonexistent/ca.pem"),
            "the root is read: {error}"
        );
        for plain in [
            "postgres://u@h/db",
            "postgres://u@h/db?sslmode=disable",
            "postgres://u@h/db?sslmode=prefer",
        ] {
            assert!(Postgres::new(plain).unwrap().tls.is_none(), "{plain}");
        }
    }
}
