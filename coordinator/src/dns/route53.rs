//! The Route53 provider: the zone's records written to an Amazon Route53
//! hosted zone with ChangeResourceRecordSets, through aws-sdk-route53 and
//! the standard aws-config chain (`AWS_PROFILE`, instance roles, …;
//! `AWS_ENDPOINT_URL` or `AWS_ENDPOINT_URL_ROUTE_53` point it elsewhere).
//!
//! # Ownership
//! The same ownership TXT records as RFC 2136 ([`super::ownership`]), at the same names
//! (`_muster.X`, `_muster-wildcard.Y` for `*.Y`), with the value quoted as
//! Route53 wants TXT values: `"heritage=muster,muster/owner=<id>"`.
//! Route53 has no prerequisites, so ownership is decided from a listing of
//! the hosted zone (ListResourceRecordSets, every page):
//! - the ownership TXT is exactly ours: the name is ours; it is UPSERTed
//!   (a record of the other kind, A or CNAME, is DELETEd in the same
//!   request), or left alone when it already holds the wanted records;
//! - there is no ownership TXT and nothing at the name: both are CREATEd,
//!   which Route53 refuses if someone made either in the meantime;
//! - anything else (records without our TXT, or a TXT naming another
//!   owner): a conflict, reported and never changed, deletes included.
//!
//! A pass of a few changes (up to 25, e.g. a node that moved or went) reads
//! each name and its ownership name fresh, two requests a name. A larger
//! pass (a full reconcile, a storm) decides from a listing of the whole
//! zone, kept and updated with every change muster makes, and read again
//! after any refused request and once older than the full reconcile
//! interval; so a storm costs only its ChangeResourceRecordSets requests.
//! The listing is kept by [`name_key`], like the reconciler's maps.
//! A hand edit made after that listing is seen at the next one (and a
//! CREATE over it is refused by Route53 at once).
//!
//! # Route53's limits
//! - One request holds at most 1000 `ResourceRecord` elements and 32,000
//!   characters of values, an UPSERT's counted twice (as AWS documents);
//!   changes are packed into as few requests as that allows, a name and
//!   its ownership record always in the same request.
//! - A token bucket keeps every call (reads, writes, GetChange) to
//!   [`REQUESTS_PER_SECOND`] with bursts of [`BURST`].
//! - `Throttling`, `PriorRequestNotComplete` and other throttling answers,
//!   and HTTP 503, are retried (the SDK's own retries are off, so every
//!   attempt passes the bucket and is counted) with full jitter under
//!   ceilings of 0.2 s, 0.4 s, 0.8 s, 1.6 s, 3.2 s, then 5 s, eight attempts
//!   in all; then the pass fails and the reconcile loop's backoff takes
//!   over.
//! - Names come back with a trailing dot and with some characters as octal
//!   escapes (`*` as `\052`); [`decode_name`] undoes both before comparing.
//!   Names are sent without the trailing dot, which Route53 accepts.
//!
//! # Changes in flight
//! Every ChangeResourceRecordSets answers with a change id, `PENDING` until
//! Route53's servers all have it (`INSYNC`). The last one is kept and
//! shown on `GET /v1/dns/status` as `last_change`; GetChange refreshes it
//! beside the loop ([`super::reconcile::watch_last_change`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_route53::config::http::HttpResponse;
use aws_sdk_route53::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_route53::primitives::DateTimeFormat;
use aws_sdk_route53::types::{Change as Route53Change, ChangeBatch, ChangeInfo, RrType};
use aws_sdk_route53::Client;
use hickory_proto::rr::Name;
use rand::Rng;
use tokio::time::Instant;

use super::name_key;
use super::ownership::{owner_value, ownership_name};
use super::provider::{Applied, Change, DnsProvider, LastChange, Outcome, ProviderError};
use crate::config::Route53Zone;

mod limits;
mod plan;

use limits::slow_down;
pub use limits::{
    change_cost, pack, TokenBucket, BURST, MAX_CHANGES, MAX_RECORDS, MAX_VALUE_CHARS,
    REQUESTS_PER_SECOND,
};
use plan::{Effect, Listing, Plan, RrSet, Sets};

/// Record sets asked for per ListResourceRecordSets page (Route53's most).
const LIST_PAGE: i32 = 300;

/// Record sets asked for when reading one name.
const NAME_PAGE: i32 = 10;

/// Passes with at most this many changes read each name (two requests a
/// name) instead of the whole zone.
const FRESH_READ_CHANGES: usize = 25;

/// Attempts of one call when Route53 asks to slow down.
const ATTEMPTS: u32 = 8;

/// The first retry ceiling.
const RETRY_BASE: Duration = Duration::from_millis(200);

/// The last retry ceiling.
const RETRY_CAP: Duration = Duration::from_secs(5);

/// How long one call may take, retries aside.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors talking to Route53.
#[derive(Debug, thiserror::Error)]
pub enum Route53Error {
    /// The hosted zone could not be looked up.
    #[error("looking up {zone}: {message}")]
    FindZone {
        /// The zone as configured.
        zone: String,
        /// The SDK error with its causes.
        message: String,
        /// Whether asking again cannot help (the zone does not exist).
        definitive: bool,
    },
    /// No hosted zone has the configured name.
    #[error("no hosted zone is named {name}")]
    NoSuchZone {
        /// The name.
        name: String,
    },
    /// Several hosted zones have the configured name (public and private).
    #[error("{count} hosted zones are named {name} ({ids}): give --route53-zone one of these ids")]
    AmbiguousZone {
        /// The name.
        name: String,
        /// How many.
        count: usize,
        /// Their ids.
        ids: String,
    },
    /// The hosted zone does not hold the coordinator's zone.
    #[error("hosted zone {id} is {zone_name}, which does not hold the coordinator's zone {zone}")]
    WrongZone {
        /// The hosted zone's id.
        id: String,
        /// The hosted zone's name.
        zone_name: String,
        /// The coordinator's zone.
        zone: String,
    },
    /// ListResourceRecordSets failed.
    #[error("listing the records of hosted zone {zone_id}: {message}")]
    List {
        /// The hosted zone.
        zone_id: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// ChangeResourceRecordSets failed.
    #[error(
        "changing {changes} record sets in hosted zone {zone_id} (the first at {first}): {message}"
    )]
    Change {
        /// The hosted zone.
        zone_id: String,
        /// How many changes the request held.
        changes: usize,
        /// The first name in it.
        first: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// GetChange failed.
    #[error("asking about change {change_id}: {message}")]
    GetChange {
        /// The change.
        change_id: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// A name or request could not be formed.
    #[error("forming a Route53 request for {name}: {reason}")]
    Build {
        /// The name concerned.
        name: String,
        /// Why.
        reason: String,
    },
}

impl Route53Error {
    /// Whether the configuration is wrong, as opposed to Route53 being
    /// unreachable for now.
    pub fn is_definitive(&self) -> bool {
        match self {
            Route53Error::FindZone { definitive, .. } => *definitive,
            Route53Error::NoSuchZone { .. }
            | Route53Error::AmbiguousZone { .. }
            | Route53Error::WrongZone { .. } => true,
            _ => false,
        }
    }
}

/// A name as Route53 writes it (`\052.n1.web.example.com.`) made plain:
/// octal escapes decoded, lower case, one trailing dot.
pub fn decode_name(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len() + 1);
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte).to_ascii_lowercase());
                i += 4;
            }
            None => {
                out.push(char::from(bytes[i]).to_ascii_lowercase());
                i += 1;
            }
        }
    }
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// The resolved hosted zone.
#[derive(Debug, Clone)]
struct HostedZone {
    id: String,
}

/// Writes the zone's records to one Route53 hosted zone.
#[derive(Debug)]
pub struct Route53 {
    client: Client,
    zone: Route53Zone,
    coordinator_zone: Name,
    ttl: u32,
    owner_txt: String,
    bucket: TokenBucket,
    listing_max_age: Duration,
    hosted_zone: tokio::sync::OnceCell<HostedZone>,
    listing: tokio::sync::Mutex<Option<Listing>>,
    last_change: Mutex<Option<LastChange>>,
    throttled: AtomicU64,
    requests: AtomicU64,
}

impl Route53 {
    /// A client from the standard AWS configuration, for Route53: the SDK's
    /// retries are off (ours count and pace every attempt), and the region
    /// is `us-east-1` when none is configured (Route53 is global).
    pub async fn client_from_env() -> Client {
        let base = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Route53::client_from(&base)
    }

    /// A Route53 client from `base`, set up as [`Route53::client_from_env`].
    pub fn client_from(base: &aws_config::SdkConfig) -> Client {
        let mut config = aws_sdk_route53::config::Builder::from(base)
            .interceptor(crate::telemetry::AwsCallTimer)
            .retry_config(aws_sdk_route53::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_route53::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(crate::ec2::CONNECT_TIMEOUT)
                    .operation_attempt_timeout(CALL_TIMEOUT)
                    .build(),
            );
        if base.region().is_none() {
            config = config.region(aws_sdk_route53::config::Region::new("us-east-1"));
        }
        Client::from_conf(config.build())
    }

    /// A provider writing `coordinator_zone`'s records (TTL `ttl`) into
    /// `zone` through `client`, marked as owned by `owner`; the listing is
    /// read again once older than `listing_max_age`.
    pub fn new(
        client: Client,
        zone: Route53Zone,
        coordinator_zone: &str,
        owner: &str,
        ttl: u32,
        listing_max_age: Duration,
    ) -> Result<Route53, Route53Error> {
        let mut coordinator =
            Name::from_ascii(coordinator_zone).map_err(|e| Route53Error::Build {
                name: coordinator_zone.to_owned(),
                reason: e.to_string(),
            })?;
        coordinator.set_fqdn(true);
        Ok(Route53 {
            client,
            zone,
            coordinator_zone: coordinator,
            ttl,
            owner_txt: format!("\"{}\"", owner_value(owner)),
            bucket: TokenBucket::new(REQUESTS_PER_SECOND, BURST),
            listing_max_age,
            hosted_zone: tokio::sync::OnceCell::new(),
            listing: tokio::sync::Mutex::new(None),
            last_change: Mutex::new(None),
            throttled: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// Route53 calls made since start, retries included.
    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Finds the hosted zone (once) and checks that it holds the
    /// coordinator's zone. Returns its id.
    pub async fn resolve_zone(&self) -> Result<String, Route53Error> {
        self.hosted_zone
            .get_or_try_init(|| self.find_zone())
            .await
            .map(|zone| zone.id.clone())
    }

    async fn find_zone(&self) -> Result<HostedZone, Route53Error> {
        fn failed<E>(zone: &Route53Zone, error: &SdkError<E, HttpResponse>) -> Route53Error
        where
            E: ProvideErrorMetadata + std::error::Error + 'static,
        {
            let definitive = matches!(error.code(), Some("NoSuchHostedZone" | "InvalidInput"));
            Route53Error::FindZone {
                zone: zone.to_string(),
                message: DisplayErrorContext(error).to_string(),
                definitive,
            }
        }
        let (id, name) = match &self.zone {
            Route53Zone::Id(id) => {
                let answer = self
                    .call(|| self.client.get_hosted_zone().id(id).send())
                    .await
                    .map_err(|e| failed(&self.zone, &e))?;
                let name = answer
                    .hosted_zone()
                    .map(|z| decode_name(z.name()))
                    .unwrap_or_default();
                (id.clone(), name)
            }
            Route53Zone::Name(wanted) => {
                let wanted = decode_name(wanted);
                let answer = self
                    .call(|| {
                        self.client
                            .list_hosted_zones_by_name()
                            .dns_name(&wanted)
                            .max_items(100)
                            .send()
                    })
                    .await
                    .map_err(|e| failed(&self.zone, &e))?;
                let ids: Vec<String> = answer
                    .hosted_zones()
                    .iter()
                    .filter(|z| decode_name(z.name()) == wanted)
                    .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned())
                    .collect();
                match ids.as_slice() {
                    [] => return Err(Route53Error::NoSuchZone { name: wanted }),
                    [id] => (id.clone(), wanted),
                    _ => {
                        return Err(Route53Error::AmbiguousZone {
                            name: wanted,
                            count: ids.len(),
                            ids: ids.join(", "),
                        })
                    }
                }
            }
        };
        let holds = Name::from_ascii(&name)
            .is_ok_and(|zone_name| zone_name.zone_of(&self.coordinator_zone));
        if !holds {
            return Err(Route53Error::WrongZone {
                id,
                zone_name: name,
                zone: self.coordinator_zone.to_ascii(),
            });
        }
        tracing::debug!(zone_id = %id, zone = %name, "route53 hosted zone found");
        Ok(HostedZone { id })
    }

    /// Sends a call through the token bucket, retrying the answers that ask
    /// to slow down (schedule in the module doc).
    async fn call<T, E, F, Fut>(&self, mut send: F) -> Result<T, SdkError<E, HttpResponse>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata,
    {
        let mut attempt: u32 = 1;
        loop {
            self.bucket.acquire().await;
            self.requests.fetch_add(1, Ordering::Relaxed);
            match send().await {
                Ok(value) => return Ok(value),
                Err(error) if attempt < ATTEMPTS && slow_down(&error) => {
                    self.throttled.fetch_add(1, Ordering::Relaxed);
                    let ceiling = RETRY_BASE
                        .saturating_mul(1 << (attempt - 1).min(16))
                        .min(RETRY_CAP);
                    let wait = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
                    tracing::debug!(
                        code = error.code().unwrap_or("-"),
                        attempt,
                        ?wait,
                        "route53 asked to slow down; retrying"
                    );
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Every record set of the hosted zone, page by page.
    async fn list(&self, zone_id: &str) -> Result<Listing, Route53Error> {
        let taken = Instant::now();
        let mut sets = Sets::new();
        self.read(zone_id, None, &mut sets).await?;
        tracing::debug!(zone_id, names = sets.len(), "route53 hosted zone listed");
        Ok(Listing { taken, sets })
    }

    /// Reads record sets into `sets`, page by page: the whole zone, or with
    /// `only` the sets of that one name (starting there, stopping at the
    /// first other name).
    async fn read(
        &self,
        zone_id: &str,
        only: Option<&Name>,
        sets: &mut Sets,
    ) -> Result<(), Route53Error> {
        let mut next: Option<(String, Option<RrType>, Option<String>)> =
            only.map(|name| (name.to_ascii().trim_end_matches('.').to_owned(), None, None));
        let only = only.map(name_key);
        let page_size = if only.is_some() { NAME_PAGE } else { LIST_PAGE };
        loop {
            let start = next.clone();
            let page = self
                .call(|| {
                    let mut request = self
                        .client
                        .list_resource_record_sets()
                        .hosted_zone_id(zone_id)
                        .max_items(page_size);
                    if let Some((name, kind, identifier)) = &start {
                        request = request
                            .start_record_name(name)
                            .set_start_record_type(kind.clone())
                            .set_start_record_identifier(identifier.clone());
                    }
                    request.send()
                })
                .await
                .map_err(|e| Route53Error::List {
                    zone_id: zone_id.to_owned(),
                    message: DisplayErrorContext(&e).to_string(),
                })?;
            for set in page.resource_record_sets() {
                let Ok(name) = Name::from_ascii(decode_name(set.name())) else {
                    continue;
                };
                let key = name_key(&name);
                if only.as_ref().is_some_and(|wanted| *wanted != key) {
                    return Ok(());
                }
                let mut kind = set.r#type().as_str().to_owned();
                if let Some(identifier) = set.set_identifier() {
                    kind = format!("{kind}/{identifier}");
                }
                let simple = set.set_identifier().is_none()
                    && set.alias_target().is_none()
                    && set.traffic_policy_instance_id().is_none();
                sets.entry(key).or_default().insert(
                    kind,
                    RrSet {
                        ttl: set.ttl(),
                        values: set
                            .resource_records()
                            .iter()
                            .map(|r| r.value().to_owned())
                            .collect(),
                        simple,
                    },
                );
            }
            match (
                page.is_truncated(),
                page.next_record_name(),
                page.next_record_type(),
            ) {
                (true, Some(name), Some(kind)) => {
                    next = Some((
                        name.to_owned(),
                        Some(kind.clone()),
                        page.next_record_identifier().map(str::to_owned),
                    ));
                }
                _ => return Ok(()),
            }
        }
    }

    /// Sends one request; records its change id.
    async fn send(&self, zone_id: &str, changes: Vec<Route53Change>) -> Result<(), Route53Error> {
        let count = changes.len();
        let first = changes
            .first()
            .and_then(|c| c.resource_record_set())
            .map(|s| s.name().to_owned())
            .unwrap_or_default();
        let batch = ChangeBatch::builder()
            .set_changes(Some(changes))
            .build()
            .map_err(|e| Route53Error::Build {
                name: first.clone(),
                reason: e.to_string(),
            })?;
        let answer = self
            .call(|| {
                self.client
                    .change_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .change_batch(batch.clone())
                    .send()
            })
            .await
            .map_err(|e| Route53Error::Change {
                zone_id: zone_id.to_owned(),
                changes: count,
                first: first.clone(),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        if let Some(info) = answer.change_info() {
            self.remember(info);
        }
        Ok(())
    }

    fn remember(&self, info: &ChangeInfo) {
        let change = LastChange {
            id: info.id().trim_start_matches("/change/").to_owned(),
            status: info.status().as_str().to_owned(),
            submitted_at: info
                .submitted_at()
                .fmt(DateTimeFormat::DateTime)
                .unwrap_or_default(),
        };
        *self.last_change.lock().unwrap_or_else(|p| p.into_inner()) = Some(change);
    }

    async fn apply_all(
        &self,
        changes: &[Change],
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), Route53Error> {
        let zone_id = self.resolve_zone().await?;
        let mut listing = self.listing.lock().await;
        let mut scratch = Sets::new();
        let sets = if changes.len() <= FRESH_READ_CHANGES {
            // A few names: each one and its ownership name are read now.
            let sets = match listing.as_mut() {
                Some(listing) => &mut listing.sets,
                None => &mut scratch,
            };
            for change in changes {
                let (Change::Upsert { name, .. } | Change::Delete { name }) = change;
                let owner = ownership_name(name).map_err(|e| Route53Error::Build {
                    name: name.to_ascii(),
                    reason: e.to_string(),
                })?;
                for name in [name, &owner] {
                    sets.remove(&name_key(name));
                    self.read(&zone_id, Some(name), sets).await?;
                }
            }
            sets
        } else {
            if listing
                .as_ref()
                .is_none_or(|l| l.taken.elapsed() > self.listing_max_age)
            {
                *listing = Some(self.list(&zone_id).await?);
            }
            match listing.as_mut() {
                Some(listing) => &mut listing.sets,
                None => &mut scratch,
            }
        };
        let result = self.write(&zone_id, sets, changes, outcomes).await;
        if result.is_err() {
            // Someone may have changed the zone: read all of it next time.
            *listing = None;
        }
        result
    }

    /// Plans every change from `sets`, sends the requests in order and
    /// keeps `sets` up to date with what they did.
    async fn write(
        &self,
        zone_id: &str,
        sets: &mut Sets,
        changes: &[Change],
        outcomes: &mut Vec<Outcome>,
    ) -> Result<(), Route53Error> {
        let mut plans = Vec::with_capacity(changes.len());
        for change in changes {
            plans.push(self.plan(sets, change)?);
        }
        // Requests hold whole groups; outcomes are handed out in order as
        // the requests holding them succeed.
        let groups: Vec<(usize, usize, usize)> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Write(g) => Some((g.changes.len(), g.records, g.chars)),
                _ => None,
            })
            .collect();
        let requests = pack(&groups);
        let mut plans = plans.into_iter();
        for request in requests {
            let mut batch = Vec::new();
            let mut effects = Vec::new();
            let mut decided = Vec::new();
            let mut writes = 0;
            while writes < request.len() {
                let Some(plan) = plans.next() else {
                    break;
                };
                match plan {
                    Plan::Write(group) => {
                        batch.extend(group.changes);
                        effects.extend(group.effects);
                        decided.push(Outcome::Applied);
                        writes += 1;
                    }
                    Plan::Done => decided.push(Outcome::Applied),
                    Plan::Conflict(why) => decided.push(Outcome::Conflict(why)),
                }
            }
            self.send(zone_id, batch).await?;
            for effect in effects {
                match effect {
                    Effect::Put(key, kind, set) => {
                        sets.entry(key).or_default().insert(kind, set);
                    }
                    Effect::Remove(key, kind) => {
                        if let Some(types) = sets.get_mut(&key) {
                            types.remove(&kind);
                            if types.is_empty() {
                                sets.remove(&key);
                            }
                        }
                    }
                }
            }
            outcomes.extend(decided);
        }
        // What is left needs no request.
        for plan in plans {
            outcomes.push(match plan {
                Plan::Conflict(why) => Outcome::Conflict(why),
                _ => Outcome::Applied,
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl DnsProvider for Route53 {
    fn kind(&self) -> &'static str {
        "route53"
    }

    fn target(&self) -> String {
        self.zone.to_string()
    }

    async fn apply(&self, changes: &[Change]) -> Applied {
        let mut outcomes = Vec::with_capacity(changes.len());
        let result = self.apply_all(changes, &mut outcomes).await;
        Applied {
            outcomes,
            error: result.err().map(ProviderError::from),
        }
    }

    fn last_change(&self) -> Option<LastChange> {
        self.last_change
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn refresh_last_change(&self) -> Result<(), ProviderError> {
        let Some(change) = self.last_change() else {
            return Ok(());
        };
        let answer = self
            .call(|| self.client.get_change().id(&change.id).send())
            .await
            .map_err(|e| Route53Error::GetChange {
                change_id: change.id.clone(),
                message: DisplayErrorContext(&e).to_string(),
            })?;
        if let Some(info) = answer.change_info() {
            let mut last = self.last_change.lock().unwrap_or_else(|p| p.into_inner());
            // A newer change may have been submitted meanwhile.
            if last.as_ref().is_some_and(|l| l.id == change.id) {
                *last = Some(LastChange {
                    status: info.status().as_str().to_owned(),
                    ..change
                });
            }
        }
        Ok(())
    }

    fn throttled_total(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
