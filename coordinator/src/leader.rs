//! Who leads: the one coordinator that runs what must run once (the
//! sweep, liveness, launches, removals, the DNS provider's loop).
//!
//! On SQLite there is one coordinator, and it always leads
//! ([`Leadership::sole`]). On PostgreSQL several may share the store, and
//! every one of them serves the agent API, the admin API's reads and the
//! embedded DNS ([`crate::replica`]). Each stands by until it takes the
//! lease ([`Leadership::hold`]: when it runs out, or at once if it was
//! this coordinator's own before a restart); the new leader then fences
//! its writes by the lease's term ([`crate::store::sql::Fence`]), loads
//! the nodes afresh, and renews the lease every `--lease-renew-interval`.
//!
//! # When the lease is in doubt
//! The leader counts its lease from when it *sent* its last successful
//! renewal, by its monotonic clock: `--lease-time` after that the database
//! may have handed it to another, so [`Leadership::is_current`] turns false
//! and the leader-only loops skip their turns. It keeps serving from memory
//! (DNS, heartbeats, reads), and its writes either land while it still
//! holds the lease or are fenced. When a renewal finds the lease taken over
//! it steps down: `serve` exits with an error, and the service manager
//! starts it again as a standby of the new leader.
//!
//! What the fence cannot reach is an EC2 or DNS provider call already
//! under way when a leader is paused past its lease: it may land after the
//! takeover. The loops check [`Leadership::is_current`] before each turn,
//! which keeps that window to one call.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use muster_coordinator_config::Lease;
use muster_proto::status::{LeaseStatus, ReplicaStatus};

use crate::store::lease::{LeaseRow, LeaseStore, ReplicaRow};
use crate::store::sql::Fence;
use crate::store::{rfc3339_ms, StoreError};

/// Who leads, as this coordinator knows it.
#[derive(Debug)]
pub struct Leadership {
    /// The lease this coordinator holds or waits for, on a shared store;
    /// `None`: the sole coordinator.
    held: Option<Held>,
}

#[derive(Debug)]
struct Held {
    store: LeaseStore,
    /// This coordinator's name in the lease and replica rows.
    name: String,
    url: String,
    started_at: i64,
    settings: Lease,
    /// The term it holds; 0 while it stands by.
    term: AtomicI64,
    /// Until when, by this coordinator's monotonic clock, it knows it
    /// holds the lease; `None` while it stands by.
    confirmed_until: Mutex<Option<Instant>>,
    /// Another coordinator took the lease over.
    lost: AtomicBool,
    /// What the last renewal (or try) read: the lease and the replicas.
    seen: Mutex<(Option<LeaseRow>, Vec<ReplicaRow>)>,
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "another coordinator took over the lease (this one held term {term}; {holder} now holds \
     term {now}): stepping down"
)]
pub struct LeaseLost {
    /// The term this coordinator held.
    pub term: i64,
    /// Who holds it now, if the database said.
    pub holder: String,
    /// The term now.
    pub now: i64,
}

/// The coordinator that leads, as the last read of the lease said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its name among the replicas.
    pub name: String,
    /// Where it serves, if it said.
    pub url: Option<String>,
}

impl Leadership {
    /// The sole coordinator of a SQLite store: it always leads.
    pub fn sole() -> Leadership {
        Leadership { held: None }
    }

    /// A replica of the shared store `store_url`, standing by until
    /// [`Leadership::hold`] takes the lease. `url` is where it serves (for
    /// the replica list); its name is kept in `data_dir`.
    pub fn replica(
        store_url: &str,
        settings: Lease,
        url: &str,
        data_dir: &Path,
    ) -> Result<Leadership, StoreError> {
        let store = LeaseStore::open(store_url)?;
        Ok(Leadership {
            held: Some(Held {
                store,
                name: replica_name(data_dir),
                url: url.to_owned(),
                started_at: crate::store::now_ms(),
                settings,
                term: AtomicI64::new(0),
                confirmed_until: Mutex::new(None),
                lost: AtomicBool::new(false),
                seen: Mutex::new((None, Vec::new())),
            }),
        })
    }

    /// This coordinator's name among the replicas; `None` for the sole
    /// coordinator.
    pub fn name(&self) -> Option<&str> {
        self.held.as_ref().map(|held| held.name.as_str())
    }

    /// Leads, for as long as it can: the sole coordinator at once and for
    /// ever; a replica once it takes the lease (trying every retry
    /// interval, and saying who leads meanwhile in the log and to systemd),
    /// then renewing it every renew interval. `on_lead` runs once, when it
    /// starts to lead and before [`Leadership::is_current`] turns true,
    /// with the fence the leader's writes must carry from then on. Returns
    /// when another coordinator has taken the lease over.
    pub async fn hold<F, Fut>(&self, on_lead: F) -> LeaseLost
    where
        F: FnOnce(Option<Fence>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(held) = &self.held else {
            on_lead(None).await;
            return std::future::pending().await;
        };
        let (term, sent) = held.stand_by().await;
        held.term.store(term, Ordering::Relaxed);
        on_lead(Some(Fence {
            holder: held.name.clone(),
            term,
        }))
        .await;
        *held
            .confirmed_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(sent + held.settings.time);
        held.refresh_view();
        let status = format!("leading (term {term})");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
        held.renew_until_lost(term).await
    }

    /// Whether this coordinator may run what must run once now: always for
    /// the sole coordinator; for a replica, while it leads, its last
    /// renewal is recent enough and nobody took the lease over.
    pub fn is_current(&self) -> bool {
        match &self.held {
            None => true,
            Some(held) => {
                held.term.load(Ordering::Relaxed) > 0
                    && !held.lost.load(Ordering::Relaxed)
                    && held.confirmed().is_some_and(|until| Instant::now() < until)
            }
        }
    }

    /// Whether this coordinator is a replica that does not lead (yet):
    /// it serves, but what must run once is another's.
    pub fn stands_by(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|held| held.term.load(Ordering::Relaxed) == 0)
    }

    /// Who leads, as the last read of the lease said; `None` for the sole
    /// coordinator, or before the first read.
    pub fn leader(&self) -> Option<Leader> {
        let held = self.held.as_ref()?;
        let seen = held.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (lease, replicas) = &*seen;
        let lease = lease.as_ref()?;
        Some(Leader {
            name: lease.holder.clone(),
            url: replicas
                .iter()
                .find(|r| r.name == lease.holder)
                .map(|r| r.url.clone()),
        })
    }

    /// Ends the lease now (on shutdown), so a standby takes over at once.
    pub fn release(&self) {
        let Some(held) = &self.held else { return };
        let term = held.term.load(Ordering::Relaxed);
        if term == 0 || held.lost.load(Ordering::Relaxed) {
            return;
        }
        match held.store.release(&held.name, term) {
            Ok(()) => tracing::info!(term, "released the leader's lease"),
            Err(error) => tracing::warn!(%error, "could not release the lease; it runs out"),
        }
    }

    /// The lease as the last renewal (or try) saw it, for `/v1/status`;
    /// `None` for the sole coordinator.
    pub fn status(&self) -> Option<LeaseStatus> {
        let held = self.held.as_ref()?;
        let seen = held.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (lease, replicas) = &*seen;
        let leader = lease.as_ref().map(|l| l.holder.as_str());
        Some(LeaseStatus {
            holder: leader.unwrap_or_default().to_owned(),
            term: lease.as_ref().map_or(0, |l| l.term),
            expires_at: lease
                .as_ref()
                .map_or_else(String::new, |l| rfc3339_ms(l.expires_at)),
            lease_secs: held.settings.time.as_secs(),
            confirmed: self.is_current(),
            replicas: replicas
                .iter()
                .map(|r| ReplicaStatus {
                    name: r.name.clone(),
                    url: r.url.clone(),
                    role: if Some(r.name.as_str()) == leader {
                        "leader"
                    } else {
                        "standby"
                    }
                    .to_owned(),
                    seen_at: rfc3339_ms(r.seen_at),
                })
                .collect(),
        })
    }

    /// This leader's term, and seconds until its lease runs out by its own
    /// count (negative once past), for `/metrics`; `None` for the sole
    /// coordinator and a standby.
    pub fn lease_gauges(&self) -> Option<(i64, f64)> {
        let held = self.held.as_ref()?;
        let until = held.confirmed()?;
        let now = Instant::now();
        let left = if until >= now {
            (until - now).as_secs_f64()
        } else {
            -(now - until).as_secs_f64()
        };
        Some((held.term.load(Ordering::Relaxed), left))
    }
}

impl Held {
    fn confirmed(&self) -> Option<Instant> {
        *self
            .confirmed_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Tries to take the lease every retry interval until it does;
    /// returns the term and when the winning try was sent.
    async fn stand_by(&self) -> (i64, Instant) {
        let mut told: Option<(String, i64)> = None;
        loop {
            let sent = Instant::now();
            let attempt = self
                .store
                .seen(&self.name, &self.url, self.started_at)
                .and_then(|()| self.store.try_acquire(&self.name, self.settings.time));
            match attempt {
                Ok(Some(term)) => {
                    tracing::info!(name = %self.name, term, "took the leader's lease: leading");
                    return (term, sent);
                }
                Ok(None) => {
                    self.refresh_view();
                    let lease = self
                        .seen
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                        .clone();
                    match lease {
                        Some(lease)
                            if told.as_ref() != Some(&(lease.holder.clone(), lease.term)) =>
                        {
                            tracing::info!(
                                name = %self.name,
                                leader = %lease.holder,
                                term = lease.term,
                                "standing by: another coordinator leads"
                            );
                            let status = format!(
                                "standing by; {} leads (term {})",
                                lease.holder, lease.term
                            );
                            let _ = sd_notify::notify(
                                false,
                                &[sd_notify::NotifyState::Status(&status)],
                            );
                            told = Some((lease.holder, lease.term));
                        }
                        _ => {}
                    }
                }
                Err(error) => tracing::warn!(%error, "standing by: cannot reach the store"),
            }
            tokio::time::sleep(self.settings.retry_interval).await;
        }
    }

    /// Renews the lease of `term` every renew interval; returns when
    /// another coordinator has taken it over.
    async fn renew_until_lost(&self, term: i64) -> LeaseLost {
        let mut ticker = tokio::time::interval(self.settings.renew_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut doubted = false;
        loop {
            ticker.tick().await;
            let sent = Instant::now();
            match self.store.renew(&self.name, term, self.settings.time) {
                Ok(true) => {
                    *self
                        .confirmed_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(sent + self.settings.time);
                    if std::mem::take(&mut doubted) {
                        tracing::info!(term, "the lease is renewed again");
                    }
                    if let Err(error) = self.store.seen(&self.name, &self.url, self.started_at) {
                        tracing::debug!(%error, "could not say this coordinator is alive");
                    }
                    self.refresh_view();
                }
                Ok(false) => {
                    self.lost.store(true, Ordering::Relaxed);
                    let now = self.store.read().ok().flatten();
                    return LeaseLost {
                        term,
                        holder: now.as_ref().map(|l| l.holder.clone()).unwrap_or_default(),
                        now: now.map_or(0, |l| l.term),
                    };
                }
                Err(error) => {
                    if !doubted
                        && self
                            .confirmed()
                            .is_some_and(|until| Instant::now() >= until)
                    {
                        doubted = true;
                        tracing::warn!(
                            %error,
                            term,
                            "the lease could not be renewed in time: what must run once is \
                             paused until it is (or until another coordinator takes it over)"
                        );
                    } else {
                        tracing::warn!(%error, "could not renew the lease; trying again");
                    }
                }
            }
        }
    }

    /// Reads the lease and the replicas for [`Leadership::status`]; a
    /// failure keeps the last view.
    fn refresh_view(&self) {
        let within = self.settings.time * 3;
        let read = (|| Ok::<_, StoreError>((self.store.read()?, self.store.replicas(within)?)))();
        match read {
            Ok(view) => *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = view,
            Err(error) => tracing::debug!(%error, "could not read the replicas"),
        }
    }
}

/// The file in the data dir that keeps this coordinator's id among the
/// replicas across restarts.
pub const REPLICA_ID_FILE: &str = "replica-id";

/// This coordinator's name among the replicas: its host and the id kept
/// in its data dir (minted on first start). A coordinator restarted on
/// the same data dir has the same name, so it takes its own lease back at
/// once, with a new term, instead of waiting for it to run out.
fn replica_name(data_dir: &Path) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned());
    let path = data_dir.join(REPLICA_ID_FILE);
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => {
            let id = hex::encode(rand::random::<[u8; 4]>());
            if let Err(error) = std::fs::write(&path, format!("{id}\n")) {
                tracing::warn!(%error, path = %path.display(), "could not keep the replica id");
            }
            id
        }
    };
    format!("{host}/{id}")
}
