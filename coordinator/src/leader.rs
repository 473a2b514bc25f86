//! Who leads: the one coordinator that serves and runs what must run once
//! (the sweep, liveness, launches, removals, the DNS provider's loop).
//!
//! On SQLite there is one coordinator, and it always leads
//! ([`Leadership::sole`]). On PostgreSQL several may share the store: each
//! waits as a standby until it takes the lease ([`Leadership::take`]: when
//! it runs out, or at once if it was this coordinator's own before a
//! restart), then
//! loads the registry, fences its writes by the lease's term
//! ([`crate::store::sql::Fence`]), and serves, renewing the lease every
//! `--lease-renew-interval` ([`Leadership::hold`]). A standby serves
//! nothing: behind one name (a load balancer's health check on `/healthz`,
//! or a DNS name for all of them), clients reach whichever leads.
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

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The lease it holds, on a shared store; `None`: the sole coordinator.
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
    term: i64,
    /// Until when, by this coordinator's monotonic clock, it knows it
    /// holds the lease.
    confirmed_until: Mutex<Instant>,
    /// Another coordinator took the lease over.
    lost: AtomicBool,
    /// What the last renewal read: the lease and the replicas.
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

impl Leadership {
    /// The sole coordinator of a SQLite store: it always leads.
    pub fn sole() -> Leadership {
        Leadership { held: None }
    }

    /// Waits as a standby until this coordinator takes the lease of the
    /// shared store `url`, trying every retry interval; says who leads
    /// meanwhile in the log and to systemd. `url` is where this coordinator
    /// will serve (for the replica list).
    pub async fn take(
        store_url: &str,
        settings: Lease,
        url: &str,
        data_dir: &Path,
    ) -> Result<Leadership, StoreError> {
        let store = LeaseStore::open(store_url)?;
        let name = replica_name(data_dir);
        let started_at = crate::store::now_ms();
        let mut told: Option<(String, i64)> = None;
        loop {
            let sent = Instant::now();
            let attempt = store
                .seen(&name, url, started_at)
                .and_then(|()| store.try_acquire(&name, settings.time));
            match attempt {
                Ok(Some(term)) => {
                    tracing::info!(name = %name, term, "took the leader's lease: leading");
                    let status = format!("leading (term {term})");
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
                    let held = Held {
                        store,
                        name,
                        url: url.to_owned(),
                        started_at,
                        settings,
                        term,
                        confirmed_until: Mutex::new(sent + settings.time),
                        lost: AtomicBool::new(false),
                        seen: Mutex::new((None, Vec::new())),
                    };
                    held.refresh_view();
                    return Ok(Leadership { held: Some(held) });
                }
                Ok(None) => match store.read() {
                    Ok(Some(lease))
                        if told.as_ref() != Some(&(lease.holder.clone(), lease.term)) =>
                    {
                        tracing::info!(
                            name = %name,
                            leader = %lease.holder,
                            term = lease.term,
                            "standing by: another coordinator leads"
                        );
                        let status =
                            format!("standing by; {} leads (term {})", lease.holder, lease.term);
                        let _ = sd_notify::notify(
                            false,
                            &[
                                sd_notify::NotifyState::Ready,
                                sd_notify::NotifyState::Status(&status),
                            ],
                        );
                        told = Some((lease.holder, lease.term));
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "standing by: cannot read the lease"),
                },
                Err(error) => tracing::warn!(%error, "standing by: cannot reach the store"),
            }
            tokio::time::sleep(settings.retry_interval).await;
        }
    }

    /// The fence this leader's writes must carry; `None` for the sole
    /// coordinator.
    pub fn fence(&self) -> Option<Fence> {
        self.held.as_ref().map(|held| Fence {
            holder: held.name.clone(),
            term: held.term,
        })
    }

    /// Whether this coordinator may run what must run once now: always for
    /// the sole coordinator; for a leader, while its last renewal is
    /// recent enough and nobody took the lease over.
    pub fn is_current(&self) -> bool {
        match &self.held {
            None => true,
            Some(held) => !held.lost.load(Ordering::Relaxed) && Instant::now() < held.confirmed(),
        }
    }

    /// Renews the lease every renew interval for as long as it holds;
    /// returns when another coordinator has taken it over. The sole
    /// coordinator holds forever.
    pub async fn hold(&self) -> LeaseLost {
        let Some(held) = &self.held else {
            return std::future::pending().await;
        };
        let mut ticker = tokio::time::interval(held.settings.renew_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut doubted = false;
        loop {
            ticker.tick().await;
            let sent = Instant::now();
            match held.store.renew(&held.name, held.term, held.settings.time) {
                Ok(true) => {
                    *held
                        .confirmed_until
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = sent + held.settings.time;
                    if std::mem::take(&mut doubted) {
                        tracing::info!(term = held.term, "the lease is renewed again");
                    }
                    held.refresh_view();
                }
                Ok(false) => {
                    held.lost.store(true, Ordering::Relaxed);
                    let now = held.store.read().ok().flatten();
                    return LeaseLost {
                        term: held.term,
                        holder: now.as_ref().map(|l| l.holder.clone()).unwrap_or_default(),
                        now: now.map_or(0, |l| l.term),
                    };
                }
                Err(error) => {
                    if !doubted && Instant::now() >= held.confirmed() {
                        doubted = true;
                        tracing::warn!(
                            %error,
                            term = held.term,
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

    /// Ends the lease now (on shutdown), so a standby takes over at once.
    pub fn release(&self) {
        let Some(held) = &self.held else { return };
        if held.lost.load(Ordering::Relaxed) {
            return;
        }
        match held.store.release(&held.name, held.term) {
            Ok(()) => tracing::info!(term = held.term, "released the leader's lease"),
            Err(error) => tracing::warn!(%error, "could not release the lease; it runs out"),
        }
    }

    /// The lease as the last renewal saw it, for `/v1/status`; `None` for
    /// the sole coordinator.
    pub fn status(&self) -> Option<LeaseStatus> {
        let held = self.held.as_ref()?;
        let seen = held.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (lease, replicas) = &*seen;
        let leader = lease.as_ref().map(|l| l.holder.as_str());
        Some(LeaseStatus {
            holder: held.name.clone(),
            term: held.term,
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
    /// coordinator.
    pub fn lease_gauges(&self) -> Option<(i64, f64)> {
        let held = self.held.as_ref()?;
        let until = held.confirmed();
        let now = Instant::now();
        let left = if until >= now {
            (until - now).as_secs_f64()
        } else {
            -(now - until).as_secs_f64()
        };
        Some((held.term, left))
    }
}

impl Held {
    fn confirmed(&self) -> Instant {
        *self
            .confirmed_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Says this coordinator is alive, and reads the lease and the
    /// replicas for [`Leadership::status`]; a failure keeps the last view.
    fn refresh_view(&self) {
        let within = self.settings.time * 3;
        let read = self
            .store
            .seen(&self.name, &self.url, self.started_at)
            .and_then(|()| Ok((self.store.read()?, self.store.replicas(within)?)));
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
