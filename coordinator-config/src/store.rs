//! Where the store lives: `--store` (`MUSTER_STORE`, `store` in the file).
//! By default the SQLite file `muster.db` in the data dir; `sqlite:///PATH`
//! names another file, and `postgres://…` (or `postgresql://…`) a
//! PostgreSQL database, in libpq's URL form.
//!
//! On PostgreSQL several coordinators may share the database: one leads,
//! holding a lease it renews, and the others stand by until it runs out
//! ([`Lease`]: `--lease-time`, `--lease-renew-interval`,
//! `--lease-retry-interval`). The CA and the admin token are shared
//! through it, sealed with a key kept outside it (`--store-key-file`).
//! Each coordinator opens up to `--store-connections` connections to it
//! for the store's calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_proto::settings::Invalid;

use crate::duration;
use crate::sources::Given;

/// The most connections to PostgreSQL a coordinator's store calls use at
/// once, by default: reads go on beside a write, and the writes, which
/// the registry takes one at a time, need one.
pub const DEFAULT_STORE_CONNECTIONS: u32 = 4;

/// How long a leader's lease lasts unrenewed, by default.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(15);
/// How often the leader renews its lease, by default.
pub const DEFAULT_LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// How often a standby tries to take the lease, by default.
pub const DEFAULT_LEASE_RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// The leader's lease on a shared PostgreSQL store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// How long the lease lasts after each renewal: a leader that stops
    /// renewing is replaced this long after its last renewal (plus up to
    /// one retry interval).
    pub time: Duration,
    /// How often the leader renews it.
    pub renew_interval: Duration,
    /// How often a standby tries to take it.
    pub retry_interval: Duration,
}

impl Default for Lease {
    fn default() -> Lease {
        Lease {
            time: DEFAULT_LEASE_TIME,
            renew_interval: DEFAULT_LEASE_RENEW_INTERVAL,
            retry_interval: DEFAULT_LEASE_RETRY_INTERVAL,
        }
    }
}

/// Checks the lease's settings: each within bounds, and a renewal often
/// enough that two may fail before the lease runs out.
pub(crate) fn resolve_lease(given: &Given) -> Result<Lease, Invalid> {
    let time = duration(
        "lease_time",
        given.lease_time.clone(),
        DEFAULT_LEASE_TIME,
        (Duration::from_secs(2), Duration::from_secs(600)),
    )?;
    let renew_interval = duration(
        "lease_renew_interval",
        given.lease_renew_interval.clone(),
        DEFAULT_LEASE_RENEW_INTERVAL.min(time / 3),
        (Duration::from_millis(200), Duration::from_secs(200)),
    )?;
    if renew_interval * 3 > time {
        return Err(Invalid::whole(
            "lease_renew_interval",
            humantime::format_duration(renew_interval).to_string(),
            format!(
                "must be at most a third of the lease time ({}), so that two renewals may \
                 fail before it runs out",
                humantime::format_duration(time)
            ),
        ));
    }
    let retry_interval = duration(
        "lease_retry_interval",
        given.lease_retry_interval.clone(),
        DEFAULT_LEASE_RETRY_INTERVAL.min(time),
        (Duration::from_millis(200), time),
    )?;
    Ok(Lease {
        time,
        renew_interval,
        retry_interval,
    })
}

/// The store's file in the data dir, when the store is SQLite's.
pub const STORE_FILE: &str = "muster.db";

/// The key sealing the CA and admin token in a shared store, in the data
/// dir unless `--store-key-file` names another file.
pub const STORE_KEY_FILE: &str = "store-key";

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by its URL (which may carry a password:
    /// show it with [`redact`]).
    Postgres(String),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// Checks `--store`; without it, the SQLite file in `data_dir`.
pub(crate) fn resolve(given: Option<&str>, data_dir: &Path) -> Result<StoreLocation, Invalid> {
    let Some(text) = given else {
        return Ok(StoreLocation::Sqlite(data_dir.join(STORE_FILE)));
    };
    let invalid = |why: &str| Invalid::whole("store", redact(text), why);
    if let Some(path) = text.strip_prefix("sqlite://") {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(invalid(
                "sqlite:// takes an absolute path: sqlite:///var/lib/muster/muster.db",
            ));
        }
        return Ok(StoreLocation::Sqlite(path));
    }
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = text.strip_prefix(scheme) {
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host.is_empty() {
                return Err(invalid(
                    "names no database host: postgres://USER@HOST/DATABASE",
                ));
            }
            if text.chars().any(char::is_whitespace) {
                return Err(invalid("must not hold spaces"));
            }
            return Ok(StoreLocation::Postgres(text.to_owned()));
        }
    }
    Err(invalid(
        "expected sqlite:///PATH or postgres://USER@HOST/DATABASE",
    ))
}

/// A URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_file_in_the_data_dir() {
        assert_eq!(
            resolve(None, Path::new("/d")).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("/d/muster.db"))
        );
        assert_eq!(
            resolve(Some("sqlite:///srv/m.db"), Path::new("/d")).unwrap(),
            StoreLocation::Sqlite(PathBuf::from("/srv/m.db"))
        );
    }

    #[test]
    fn postgres_urls_are_kept_and_bad_ones_refused_without_their_password() {
        let url = "postgresql://muster:pw@db.internal:5432/muster?sslmode=require";
        assert_eq!(
            resolve(Some(url), Path::new("/d")).unwrap(),
            StoreLocation::Postgres(url.to_owned())
        );
        for bad in [
            "sqlite://relative.db",
            "postgres://muster:pw@/muster",
            "mysql://muster:pw@db/muster",
        ] {
            let error = resolve(Some(bad), Path::new("/d")).unwrap_err().to_string();
            assert!(error.contains("store"), "{error}");
            assert!(!error.contains("pw"), "{bad}: {error}");
        }
    }

    #[test]
    fn passwords_stay_out_of_what_is_shown() {
        assert_eq!(
            redact("postgres://muster:s3cret@db.internal:5432/muster?sslmode=require"),
            "postgres://muster:***@db.internal:5432/muster?sslmode=require"
        );
        assert_eq!(
            redact("postgres://muster@db/muster"),
            "postgres://muster@db/muster"
        );
        assert_eq!(
            StoreLocation::Postgres("postgres://u:p@h/d".into()).to_string(),
            "postgres://u:***@h/d"
        );
    }
}
