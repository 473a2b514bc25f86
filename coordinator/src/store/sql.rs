//! The two databases the store runs on, behind one small interface: SQLite
//! (one file, the default) and PostgreSQL (`--store postgres://…`).
//!
//! The store's statements are written once, in the SQL both understand,
//! with SQLite's numbered parameters (`?1`); on PostgreSQL they become
//! `$1`. Values cross as [`Value`] (integers, text, null) and come back
//! through [`Row::get`], so no statement knows which database runs it.
//!
//! # How calls run
//! Each store call takes a connection ([`Database::with`]) and runs one
//! statement or one transaction ([`Db::transaction`]) on it. SQLite has
//! one connection, so its calls keep one serial order; PostgreSQL's come
//! from a small pool ([`pg`]'s module doc), so a read need not wait behind
//! a write held up on a row lock. PostgreSQL's client blocks on its own
//! small runtime, so its calls step off the async runtime's worker first
//! ([`off_runtime`]). A connection PostgreSQL closed (a restart, a
//! failover) is dropped and another opened by the next call; while none
//! can be, calls fail as [`DbError::is_unavailable`], which the API
//! answers with 503.
//!
//! # Several coordinators on one database
//! PostgreSQL may be shared by several coordinators: the one that leads
//! fences its writes by its lease ([`pg`]'s module doc). The schema
//! is migrated under a transaction lock ([`MIGRATE_LOCK`]), so coordinators
//! starting at once on an empty database make one schema.

use std::borrow::Cow;
use std::sync::Mutex;

use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use rusqlite::types::{ToSqlOutput, ValueRef};

mod pg;

pub use pg::{Fence, PgConnection, Postgres, MIGRATE_LOCK};

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
    /// A write of a leader whose lease another coordinator has taken:
    /// nothing written.
    #[error("this coordinator's lease (term {term}) was taken over: it no longer leads")]
    Fenced {
        /// The term this coordinator led by.
        term: i64,
    },
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
            // This coordinator may not write, and another may.
            DbError::Unavailable(_) | DbError::Fenced { .. } => true,
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
            Db::Postgres(conn) => conn.fenced(sql, |conn| {
                let statement = conn.statement(sql)?;
                conn.run(|client| client.execute(&statement, &pg_args(args)))
            }),
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
            Db::Postgres(conn) => conn
                .fenced(sql, |conn| {
                    let statement = conn.statement(sql)?;
                    conn.run(|client| client.query(&statement, &pg_args(args)))
                })?
                .iter()
                .map(|row| read(&Row::Postgres(row)))
                .collect(),
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
                let rows = conn.fenced(sql, |conn| {
                    let statement = conn.statement(sql)?;
                    conn.run(|client| client.query(&statement, &pg_args(args)))
                })?;
                match rows.first() {
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
            // Inside a transaction already: part of it.
            Db::Postgres(conn) if conn.in_transaction => work(self),
            Db::Postgres(conn) => {
                conn.begin()?;
                let out = work(&mut Db::Postgres(conn));
                conn.end(out)
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
            // The connection goes back to the pool as the call ends, or
            // is closed if the call found it broken.
            Database::Postgres(pg) => off_runtime(|| {
                let mut conn = pg.connection()?;
                work(&mut Db::Postgres(&mut conn))
            }),
        }
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
}
