//! The reconcile loop: keeps an external DNS server (a [`DnsProvider`])
//! at the zone's desired records, and posts its progress on the
//! [`StatusBoard`].
//!
//! # Providers
//! `embedded` (the default) is the coordinator's own server
//! ([`super::server`]): it answers straight from the desired records, so it
//! is current by construction and needs no loop. `rfc2136` writes to
//! another server and `route53` to a Route53 hosted zone; both are driven
//! from here. With either, the embedded server keeps answering on
//! `--dns-listen` too: it is harmless, and handy to compare with.
//!
//! # The loop
//! Desired records come from [`Zone::subscribe`], which always
//! holds the latest set, so the last address wins and nothing is applied out
//! of order: every pass works from the newest set, never from a queue of
//! events.
//! - After a change the loop waits [`COALESCE`] and then applies the
//!   difference between the desired records and the applied ones, so a storm
//!   of changes becomes a few batches.
//! - Every `--dns-reconcile-interval` (default 5 min) a full pass rewrites
//!   every desired name (batched, guarded by ownership), which repairs drift
//!   such as a record deleted by hand, and retries names in conflict.
//! - What was applied is kept in `D/dns-applied.json`, written atomically
//!   after every pass that changed it, so a restart resumes with the
//!   difference instead of rewriting everything. The file names the provider
//!   and owner; if either changed, it is ignored and everything is written.
//! - What was applied, and the conflicts, are kept by [`name_key`] (the
//!   name's text in lower case), not by hickory's `Name`: a `Name`
//!   comparison builds every label anew, and a pass over ten thousand names
//!   looks each one up, so that comparison dominated a storm.
//! - When the server fails, the changes stay pending and the pass is retried
//!   with bounded exponential backoff with full jitter: ceilings of 0.25 s,
//!   0.5 s, 1 s, 2 s, 4 s, 8 s, then 10 s for ever; each wait drawn between
//!   zero and its ceiling. Changes arriving meanwhile join the next try.
//!
//! # Ownership
//! Every change is guarded by ownership ([`super::ownership`]): names
//! muster does not own are conflicts, reported and never changed.
//!
//! # Changes in flight
//! A provider whose server applies changes later (Route53: `PENDING`, then
//! `INSYNC`) reports its last change through [`DnsProvider::last_change`];
//! [`watch_last_change`] asks the server about it every
//! [`CHANGE_POLL`] while it is pending, beside the loop, never blocking it.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::rr::Name;
use muster_proto::fsutil::write_durably;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::provider::{Change, DnsProvider, Outcome, ProviderError};
use super::status::{ProviderStatus, StatusBoard};
use super::{name_key, DesiredRecords, RecordData, Zone};
use crate::leader::Leadership;

/// How long the loop waits after a change before applying it, so changes
/// arriving together go out together.
pub const COALESCE: Duration = Duration::from_millis(200);

/// The file holding what was applied, in the data dir.
pub const APPLIED_FILE: &str = "dns-applied.json";

/// How often a pending change is asked about.
pub const CHANGE_POLL: Duration = Duration::from_secs(2);

/// Most pending names listed on the status page.
const STATUS_NAMES: usize = 100;

/// How often a coordinator whose lease is in doubt looks again.
const NOT_LEADING_CHECK: Duration = Duration::from_secs(1);

/// The first retry ceiling.
const RETRY_BASE: Duration = Duration::from_millis(250);

/// The last retry ceiling.
const RETRY_CAP: Duration = Duration::from_secs(10);

/// The applied records on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AppliedFile {
    provider: String,
    owner: String,
    records: BTreeMap<String, RecordData>,
}

/// What was applied, by [`name_key`].
type AppliedRecords = BTreeMap<String, RecordData>;

/// Names muster wants but does not own, by [`name_key`], with the records
/// it wanted (`None` for a delete it refused) and why.
pub type Conflicts = BTreeMap<String, (Option<RecordData>, String)>;

/// The changes that bring `applied` to `desired`. An incremental pass
/// (`full == false`) skips names that are applied already, and names in
/// conflict whose desired records have not changed since; a full pass
/// rewrites every desired name. Deletes come last.
pub fn changes(
    desired: &DesiredRecords,
    applied: &AppliedRecords,
    conflicts: &Conflicts,
    full: bool,
) -> Vec<Change> {
    let mut out = Vec::new();
    let mut wanted = HashSet::with_capacity(desired.len());
    for (name, data) in desired {
        let key = name_key(name);
        let before = applied.get(&key);
        let current = before == Some(data);
        let stuck = conflicts
            .get(&key)
            .is_some_and(|(d, _)| d.as_ref() == Some(data));
        if full || (!current && !stuck) {
            out.push(Change::Upsert {
                name: name.clone(),
                data: data.clone(),
                owned: before.is_some(),
            });
        }
        wanted.insert(key);
    }
    for key in applied.keys() {
        if !wanted.contains(key) {
            // Keys are made from names (or checked on load): they parse.
            if let Ok(name) = Name::from_ascii(key) {
                out.push(Change::Delete { name });
            }
        }
    }
    out
}

/// The wait before retry number `failures` (from 1): a random time up to
/// `min(RETRY_CAP, RETRY_BASE * 2^(failures-1))`.
fn retry_delay(failures: u32) -> Duration {
    let ceiling = RETRY_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_CAP);
    rand::thread_rng().gen_range(Duration::ZERO..=ceiling)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Drives one provider from the zone's desired records.
#[derive(Debug)]
pub struct Reconciler {
    zone: Arc<Zone>,
    provider: Arc<dyn DnsProvider>,
    board: Arc<StatusBoard>,
    owner: String,
    state_path: PathBuf,
    interval: Duration,
    applied: AppliedRecords,
    conflicts: Conflicts,
    status: ProviderStatus,
    /// Passes run only while this coordinator leads.
    leadership: Arc<Leadership>,
}

impl Reconciler {
    /// A reconciler writing `zone`'s records through `provider` as `owner`,
    /// posting its progress on `board`, with its applied state in
    /// `data_dir` and a full pass every `interval`. Loads what an earlier
    /// run applied.
    pub fn new(
        zone: Arc<Zone>,
        provider: Arc<dyn DnsProvider>,
        board: Arc<StatusBoard>,
        owner: String,
        data_dir: &Path,
        interval: Duration,
    ) -> Reconciler {
        let state_path = data_dir.join(APPLIED_FILE);
        let target = format!("{} {}", provider.kind(), provider.target());
        let applied = load_applied(&state_path, &target, &owner);
        let status = ProviderStatus {
            provider: provider.kind().to_owned(),
            target: provider.target(),
            owner: owner.clone(),
            applied_names: applied.len(),
            ..ProviderStatus::default()
        };
        Reconciler {
            zone,
            provider,
            board,
            owner,
            state_path,
            interval,
            applied,
            conflicts: BTreeMap::new(),
            status,
            leadership: Arc::new(Leadership::sole()),
        }
    }

    /// Makes passes only while `leadership` says this coordinator leads.
    pub fn led_by(mut self, leadership: Arc<Leadership>) -> Reconciler {
        self.leadership = leadership;
        self
    }

    /// Runs until the zone is dropped.
    pub async fn run(mut self) {
        let mut desired = self.zone.subscribe();
        let mut next_full = Instant::now() + self.interval;
        let mut failures: u32 = 0;
        // One pass at start: the difference since the last run.
        let mut dirty = true;
        let mut full = false;
        loop {
            self.publish_status(&desired.borrow());
            if !self.leadership.is_current() {
                // Another coordinator may lead: its pass, not ours.
                tokio::time::sleep(NOT_LEADING_CHECK).await;
                continue;
            }
            if failures > 0 {
                tokio::time::sleep(retry_delay(failures)).await;
                full |= Instant::now() >= next_full;
            } else if !dirty && !full {
                tokio::select! {
                    changed = desired.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        tokio::time::sleep(COALESCE).await;
                    }
                    () = tokio::time::sleep_until(next_full) => full = true,
                }
            }
            let wanted = desired.borrow_and_update().clone();
            match self.pass(&wanted, full).await {
                Ok(()) => {
                    failures = 0;
                    dirty = false;
                    if full {
                        full = false;
                        next_full = Instant::now() + self.interval;
                        self.status.last_full_reconcile_unix = Some(unix_now());
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    dirty = true;
                    self.status.failures_total += 1;
                    tracing::warn!(
                        provider = self.provider.kind(),
                        %error,
                        failures,
                        "dns update failed; changes stay pending"
                    );
                    self.status.last_error = Some(error.to_string());
                }
            }
        }
    }

    /// One pass: applies the changes and records what became of them.
    async fn pass(&mut self, desired: &DesiredRecords, full: bool) -> Result<(), ProviderError> {
        let changes = changes(desired, &self.applied, &self.conflicts, full);
        if changes.is_empty() {
            return Ok(());
        }
        tracing::debug!(changes = changes.len(), full, "dns reconcile pass");
        let started = std::time::Instant::now();
        let result = self.provider.apply(&changes).await;
        crate::telemetry::dns_provider_calls().record(self.provider.kind(), started.elapsed());
        let mut touched = false;
        for (change, outcome) in changes.iter().zip(&result.outcomes) {
            let (Change::Upsert { name, .. } | Change::Delete { name }) = change;
            let key = name_key(name);
            match (change, outcome) {
                (Change::Upsert { data, .. }, Outcome::Applied) => {
                    self.conflicts.remove(&key);
                    touched |= self.applied.insert(key, data.clone()).as_ref() != Some(data);
                }
                (Change::Delete { .. }, Outcome::Applied) => {
                    self.conflicts.remove(&key);
                    touched |= self.applied.remove(&key).is_some();
                }
                (Change::Upsert { data, .. }, Outcome::Conflict(why)) => {
                    if self
                        .conflicts
                        .get(&key)
                        .is_none_or(|(d, _)| d.as_ref() != Some(data))
                    {
                        tracing::warn!(name = %name, why, "dns name not owned by muster; left alone");
                    }
                    touched |= self.applied.remove(&key).is_some();
                    self.conflicts
                        .insert(key, (Some(data.clone()), why.clone()));
                }
                (Change::Delete { .. }, Outcome::Conflict(why)) => {
                    tracing::warn!(name = %name, why, "dns name to delete is not owned by muster; left alone");
                    touched |= self.applied.remove(&key).is_some();
                    self.conflicts.insert(key, (None, why.clone()));
                }
            }
        }
        self.status.applied_total += result
            .outcomes
            .iter()
            .filter(|o| **o == Outcome::Applied)
            .count() as u64;
        // Names no longer desired are no longer conflicts, except refused
        // deletes: those stay reported until the name is desired again.
        if !self.conflicts.is_empty() {
            let wanted: HashSet<String> = desired.keys().map(name_key).collect();
            self.conflicts
                .retain(|key, (data, _)| data.is_none() || wanted.contains(key));
        }
        if touched {
            self.save();
        }
        match result.error {
            Some(error) => Err(error),
            None => {
                self.status.last_success_unix = Some(unix_now());
                self.status.last_error = None;
                Ok(())
            }
        }
    }

    fn save(&self) {
        let file = AppliedFile {
            provider: format!("{} {}", self.provider.kind(), self.provider.target()),
            owner: self.owner.clone(),
            records: self.applied.clone(),
        };
        let written = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_durably(&self.state_path, &bytes, 0o600));
        if let Err(error) = written {
            // The next pass writes it again; until then a restart rewrites
            // a little more than needed, which is harmless.
            tracing::warn!(path = %self.state_path.display(), %error, "could not record the applied dns records");
        }
    }

    fn publish_status(&mut self, desired: &DesiredRecords) {
        let pending = changes(desired, &self.applied, &self.conflicts, false);
        self.status.pending_changes = pending.len();
        self.status.pending = pending
            .iter()
            .take(STATUS_NAMES)
            .map(|c| match c {
                Change::Upsert { name, .. } | Change::Delete { name } => name.to_ascii(),
            })
            .collect();
        self.status.conflicts = self
            .conflicts
            .iter()
            .map(|(key, (_, why))| (key.clone(), why.clone()))
            .collect();
        self.status.applied_names = self.applied.len();
        self.status.throttled_total = self.provider.throttled_total();
        self.status.last_change = self.provider.last_change();
        self.board.set(self.status.clone());
    }
}

/// Asks `provider` about its last change every [`CHANGE_POLL`] while that
/// change is pending, and posts the answer on `board`. Runs until aborted.
pub async fn watch_last_change(board: Arc<StatusBoard>, provider: Arc<dyn DnsProvider>) {
    loop {
        tokio::time::sleep(CHANGE_POLL).await;
        if !provider.last_change().is_some_and(|c| c.is_pending()) {
            continue;
        }
        if let Err(error) = provider.refresh_last_change().await {
            tracing::debug!(%error, "could not ask about the last dns change");
            continue;
        }
        let last_change = provider.last_change();
        board.update(|status| status.last_change = last_change);
    }
}

/// What an earlier run applied to `target` as `owner`; empty if there is no
/// file, it cannot be read, or it was written for another target or owner.
fn load_applied(path: &Path, target: &str, owner: &str) -> AppliedRecords {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AppliedRecords::new(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not read the applied dns records; writing everything");
            return AppliedRecords::new();
        }
    };
    let file: AppliedFile = match serde_json::from_slice(&bytes) {
        Ok(file) => file,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "the applied dns records are not valid; writing everything");
            return AppliedRecords::new();
        }
    };
    if file.provider != target || file.owner != owner {
        tracing::info!(was = %file.provider, now = %target, "dns provider changed; writing everything");
        return AppliedRecords::new();
    }
    file.records
        .into_iter()
        .filter_map(|(name, data)| Name::from_ascii(&name).ok().map(|n| (name_key(&n), data)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::str::FromStr;
    use std::sync::Mutex;

    use muster_proto::NodeState;

    use crate::dns::provider::Applied;
    use crate::dns::NodeRecordSource;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn a(last: u8) -> RecordData {
        RecordData::a(vec![Ipv4Addr::new(192, 0, 2, last)])
    }

    /// Only differences go out in an incremental pass; a full pass rewrites
    /// every desired name; names no longer desired are deleted.
    #[test]
    fn changes_are_the_difference() {
        let desired: DesiredRecords = [(name("a.z."), a(1)), (name("b.z."), a(2))].into();
        let applied: AppliedRecords = [("a.z.".into(), a(1)), ("gone.z.".into(), a(9))].into();
        let incremental = changes(&desired, &applied, &BTreeMap::new(), false);
        assert_eq!(
            incremental,
            vec![
                Change::Upsert {
                    name: name("b.z."),
                    data: a(2),
                    owned: false
                },
                Change::Delete {
                    name: name("gone.z.")
                },
            ]
        );
        let full = changes(&desired, &applied, &BTreeMap::new(), true);
        assert_eq!(full.len(), 3);
        assert!(full.contains(&Change::Upsert {
            name: name("a.z."),
            data: a(1),
            owned: true
        }));
    }

    /// Keys ignore case as names do, and parse back to the name.
    #[test]
    fn keys_follow_names() {
        assert_eq!(name_key(&name("N1.Web.Z.")), "n1.web.z.");
        assert_eq!(name_key(&name("*.n1.web.z.")), "*.n1.web.z.");
        let odd = Name::from_labels(vec![b"a.b".to_vec(), b"Z".to_vec()]).unwrap();
        let key = name_key(&odd);
        assert_ne!(key, name_key(&name("a.b.z.")));
        assert_eq!(Name::from_ascii(&key).unwrap(), odd);
        // Applied under another case: current, not rewritten.
        let desired: DesiredRecords = [(name("A.Z."), a(1))].into();
        let applied: AppliedRecords = [(name_key(&name("a.z.")), a(1))].into();
        assert!(changes(&desired, &applied, &BTreeMap::new(), false).is_empty());
    }

    /// A conflict is not retried until its desired records change, or a
    /// full pass comes.
    #[test]
    fn conflicts_wait_for_a_change() {
        let desired: DesiredRecords = [(name("a.z."), a(1))].into();
        let conflicts = [("a.z.".into(), (Some(a(1)), "theirs".to_owned()))].into();
        assert!(changes(&desired, &BTreeMap::new(), &conflicts, false).is_empty());
        assert_eq!(
            changes(&desired, &BTreeMap::new(), &conflicts, true).len(),
            1
        );
        let moved: DesiredRecords = [(name("a.z."), a(2))].into();
        assert_eq!(
            changes(&moved, &BTreeMap::new(), &conflicts, false).len(),
            1
        );
    }

    /// Retry waits stay under their ceilings and the cap.
    #[test]
    fn retry_delays_are_bounded() {
        for failures in 1..40 {
            let ceiling = RETRY_BASE
                .saturating_mul(1 << (failures - 1).min(16))
                .min(RETRY_CAP);
            assert!(retry_delay(failures) <= ceiling);
            assert!(retry_delay(failures) <= RETRY_CAP);
        }
    }

    /// A provider that records batches and fails while `down`.
    #[derive(Debug, Default)]
    struct Fake {
        down: std::sync::atomic::AtomicBool,
        batches: Mutex<Vec<Vec<Change>>>,
        theirs: Vec<Name>,
    }

    #[async_trait::async_trait]
    impl DnsProvider for Fake {
        fn kind(&self) -> &'static str {
            "fake"
        }
        fn target(&self) -> String {
            "memory".into()
        }
        async fn apply(&self, changes: &[Change]) -> Applied {
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Applied {
                    outcomes: Vec::new(),
                    error: Some("the fake server timed out".into()),
                };
            }
            self.batches.lock().unwrap().push(changes.to_vec());
            let outcomes = changes
                .iter()
                .map(|c| match c {
                    Change::Upsert { name, .. } if self.theirs.contains(name) => {
                        Outcome::Conflict("theirs".into())
                    }
                    _ => Outcome::Applied,
                })
                .collect();
            Applied {
                outcomes,
                error: None,
            }
        }
    }

    fn node(name: &str, ip: u8) -> NodeRecordSource {
        NodeRecordSource {
            cluster: "web".into(),
            name: name.into(),
            state: NodeState::Deployed,
            private_ipv4: Some(Ipv4Addr::new(10, 0, 0, ip)),
            public_ipv4: Some(Ipv4Addr::new(54, 0, 0, ip)),
            ipv6: None,
        }
    }

    /// A reconciler of `zone` through `fake` as owner "me", posting on
    /// `board`, its state in `dir`; running.
    fn start(
        zone: &Arc<Zone>,
        fake: &Arc<Fake>,
        board: &Arc<StatusBoard>,
        dir: &Path,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(
            Reconciler::new(
                zone.clone(),
                fake.clone(),
                board.clone(),
                "me".into(),
                dir,
                Duration::from_secs(3600),
            )
            .run(),
        )
    }

    async fn status_until(
        board: &StatusBoard,
        ok: impl Fn(&ProviderStatus) -> bool,
    ) -> ProviderStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = board.get().unwrap_or_default();
            if ok(&status) || std::time::Instant::now() > deadline {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// While the provider is down changes stay pending; when it is back the
    /// newest records win; a restart on the same data dir sends nothing.
    #[tokio::test]
    async fn outage_keeps_changes_and_restart_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Arc::new(Zone::new("z", 30).unwrap());
        let board = Arc::new(StatusBoard::default());
        let fake = Arc::new(Fake::default());
        fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let task = start(&zone, &fake, &board, dir.path());
        zone.publish(&[node("n1", 1)]);
        zone.publish(&[node("n1", 2)]);
        let status =
            status_until(&board, |s| s.pending_changes > 0 && s.last_error.is_some()).await;
        // The node's name, wildcard and internal name; the round robins.
        assert_eq!(status.pending_changes, 5, "{status:?}");
        assert!(fake.batches.lock().unwrap().is_empty());
        fake.down.store(false, std::sync::atomic::Ordering::SeqCst);
        let status = status_until(&board, |s| s.pending_changes == 0 && s.applied_names == 5).await;
        assert_eq!(status.pending_changes, 0, "{status:?}");
        assert_eq!(status.last_error, None);
        let sent: Vec<Change> = fake.batches.lock().unwrap().concat();
        assert!(sent.contains(&Change::Upsert {
            name: name("n1.web.z."),
            data: RecordData::a(vec![Ipv4Addr::new(54, 0, 0, 2)]),
            owned: false
        }));
        assert!(sent.contains(&Change::Upsert {
            name: name("n1.web.internal.z."),
            data: RecordData::a(vec![Ipv4Addr::new(10, 0, 0, 2)]),
            owned: false
        }));
        let first = [Ipv4Addr::new(54, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 1)];
        assert!(!sent.iter().any(|c| matches!(c, Change::Upsert { data: RecordData::Addresses(ips), .. } if ips.iter().any(|ip| first.iter().any(|f| *ip == std::net::IpAddr::V4(*f))))));
        task.abort();

        let again = Arc::new(Zone::new("z", 30).unwrap());
        let board = Arc::new(StatusBoard::default());
        again.publish(&[node("n1", 2)]);
        let fresh = Arc::new(Fake::default());
        let task = start(&again, &fresh, &board, dir.path());
        let status = status_until(&board, |s| s.applied_names == 5).await;
        assert_eq!(status.pending_changes, 0);
        assert!(fresh.batches.lock().unwrap().is_empty());
        task.abort();
    }

    /// A name owned by someone else is reported, not applied.
    #[tokio::test]
    async fn conflicts_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let zone = Arc::new(Zone::new("z", 30).unwrap());
        let board = Arc::new(StatusBoard::default());
        let fake = Arc::new(Fake {
            theirs: vec![name("web.z.")],
            ..Fake::default()
        });
        let task = start(&zone, &fake, &board, dir.path());
        zone.publish(&[node("n1", 1)]);
        let status = status_until(&board, |s| !s.conflicts.is_empty()).await;
        assert_eq!(status.conflicts.keys().collect::<Vec<_>>(), vec!["web.z."]);
        assert_eq!(status.pending_changes, 0);
        task.abort();
    }
}
