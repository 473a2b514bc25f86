//! What EC2 says about an instance: the judge of every identity and address
//! claim an agent makes.
//!
//! [`Ec2Instances`] asks EC2 through aws-sdk-ec2 with the standard
//! aws-config credential chain; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2`
//! point it at an emulator. One client is kept per region, made on first use.
//! The [`InstanceLookup`] trait lets the registry's unit tests describe
//! instances without a network; the binaries use [`Ec2Instances`], or
//! [`CachedInstances`] when the operator turns the EC2 cache on.
//!
//! ## The EC2 cache (`--ec2-cache-refresh`)
//!
//! By default every register and every address change costs one
//! DescribeInstances. A fleet that boots at once (thousands of nodes after
//! an outage) turns that into a burst EC2 throttles. With the cache, the
//! coordinator lists every `pending` or `running` instance carrying a
//! `muster:cluster` tag, region by region, every refresh interval
//! (DescribeInstances with filters, 1000 a page), starting once EC2 has
//! confirmed an instance there (so a made-up region starts nothing). The
//! cache is only ever allowed to say yes:
//!
//! - a claim the listed facts confirm is accepted without a call;
//! - a claim they do not confirm (an instance launched since the listing,
//!   an Elastic IP just associated, anything else) is checked against
//!   EC2 as without the cache, and what EC2 answers replaces the entry;
//! - a listing older than twice the interval (EC2 unreachable since) is
//!   not used at all.
//!
//! So a refusal always rests on a fresh read, and the cost of the cache is
//! that an acceptance may rest on facts up to twice the interval old: an
//! Elastic IP moved to another instance within that window could still be
//! claimed by its old holder. The sweep and terminations never use it.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::Client;

/// EC2's view of one instance, as far as identity checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    /// Primary private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4 (an Elastic IP if one is associated).
    pub public_ipv4: Option<Ipv4Addr>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// The value of its `muster:cluster` tag: the cluster it may join.
    pub cluster_tag: Option<String>,
}

/// Errors asking EC2.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// DescribeInstances of many ids failed.
    #[error("describing {count} instances in {region}: {message}")]
    DescribeMany {
        /// How many ids were asked about.
        count: usize,
        /// The region asked.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// TerminateInstances failed.
    #[error("terminating instance {instance_id} in {region}: {message}")]
    Terminate {
        /// The instance.
        instance_id: String,
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// The EC2 cache's listing of a region failed.
    #[error("listing the cluster members of {region}: {message}")]
    List {
        /// The region.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
    /// DescribeInstances failed for another reason than "no such instance".
    #[error("describing instance {instance_id} in {region}: {message}")]
    Describe {
        /// The instance asked about.
        instance_id: String,
        /// The region asked.
        region: String,
        /// The SDK error with its causes.
        message: String,
    },
}

/// Most instance ids one DescribeInstances call filters on. EC2 takes up
/// to 1000 ids as `InstanceIds`, but an unknown id there fails the whole
/// call; as an `instance-id` filter an unknown id is simply absent, and
/// filters take at most 200 values.
pub const IDS_PER_CALL: usize = 200;

/// Looks instances up, and terminates them.
#[async_trait::async_trait]
pub trait InstanceLookup: Send + Sync + std::fmt::Debug {
    /// EC2's view of `instance_id` in `region`; `None` if EC2 does not know it.
    async fn describe(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceFacts>, Ec2Error>;

    /// EC2's view of many instances of one region, by id; ids EC2 does not
    /// know are absent from the map.
    async fn describe_many(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<HashMap<String, InstanceFacts>, Ec2Error>;

    /// Asks EC2 to terminate the instance.
    async fn terminate(&self, region: &str, instance_id: &str) -> Result<(), Ec2Error>;

    /// EC2's view of `instance_id` from a recent listing, if this lookup
    /// keeps one and it holds the instance. It may be stale (see the module
    /// doc): only a claim it confirms may rest on it; anything else must
    /// ask [`InstanceLookup::describe`].
    fn cached(&self, _region: &str, _instance_id: &str) -> Option<InstanceFacts> {
        None
    }

    /// What the cache holds, by region; empty without one.
    fn cache_status(&self) -> Vec<CacheStatus> {
        Vec::new()
    }

    /// Asks EC2 to terminate many instances of one region; ids EC2 no
    /// longer knows are skipped.
    async fn terminate_many(&self, region: &str, instance_ids: &[String]) -> Result<(), Ec2Error> {
        for id in instance_ids {
            self.terminate(region, id).await?;
        }
        Ok(())
    }
}

/// Instance ids one TerminateInstances takes.
const TERMINATE_BATCH: usize = 1000;

fn unknown_instance<E: ProvideErrorMetadata>(error: &E) -> bool {
    error
        .code()
        .is_some_and(|code| code.starts_with("InvalidInstanceID"))
}

/// EC2 clients, one per region, made on first use from one AWS
/// configuration (credential chain, endpoint overrides). Cheap to clone:
/// clones share the clients.
#[derive(Debug, Clone)]
pub struct Ec2Clients {
    base: aws_config::SdkConfig,
    clients: Arc<Mutex<HashMap<String, Client>>>,
}

impl Ec2Clients {
    /// Loads the standard AWS configuration once.
    pub async fn from_env() -> Ec2Clients {
        let base = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Ec2Clients {
            base,
            clients: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The client for `region`.
    pub fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
                    .build();
                Client::from_conf(config)
            })
            .clone()
    }
}

/// The real lookup, through aws-sdk-ec2.
#[derive(Debug)]
pub struct Ec2Instances {
    clients: Ec2Clients,
}

impl Ec2Instances {
    /// Asks EC2 through `clients`.
    pub fn new(clients: Ec2Clients) -> Ec2Instances {
        Ec2Instances { clients }
    }

    fn client(&self, region: &str) -> Client {
        self.clients.client(region)
    }
}

#[async_trait::async_trait]
impl InstanceLookup for Ec2Instances {
    async fn describe(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceFacts>, Ec2Error> {
        let result = self
            .client(region)
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(error) => {
                // EC2 answers an unknown id with an error, not an empty list.
                if unknown_instance(&error) {
                    return Ok(None);
                }
                return Err(Ec2Error::Describe {
                    instance_id: instance_id.to_owned(),
                    region: region.to_owned(),
                    message: DisplayErrorContext(&error).to_string(),
                });
            }
        };
        let instance = output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id));
        Ok(instance.map(facts_of))
    }

    async fn describe_many(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<HashMap<String, InstanceFacts>, Ec2Error> {
        let client = self.client(region);
        let mut found = HashMap::new();
        for chunk in instance_ids.chunks(IDS_PER_CALL) {
            let filter = aws_sdk_ec2::types::Filter::builder()
                .name("instance-id")
                .set_values(Some(chunk.to_vec()))
                .build();
            describe_pages(&client, vec![filter], &mut found, |message| {
                Ec2Error::DescribeMany {
                    count: chunk.len(),
                    region: region.to_owned(),
                    message,
                }
            })
            .await?;
        }
        Ok(found)
    }

    async fn terminate(&self, region: &str, instance_id: &str) -> Result<(), Ec2Error> {
        self.client(region)
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|error| Ec2Error::Terminate {
                instance_id: instance_id.to_owned(),
                region: region.to_owned(),
                message: DisplayErrorContext(&error).to_string(),
            })
    }

    async fn terminate_many(&self, region: &str, instance_ids: &[String]) -> Result<(), Ec2Error> {
        let client = self.client(region);
        for chunk in instance_ids.chunks(TERMINATE_BATCH) {
            match client
                .terminate_instances()
                .set_instance_ids(Some(chunk.to_vec()))
                .send()
                .await
            {
                Ok(_) => {}
                // One unknown id fails the whole call: go one by one.
                Err(error) if unknown_instance(&error) => {
                    for id in chunk {
                        match self.terminate(region, id).await {
                            Ok(()) => {}
                            Err(Ec2Error::Terminate { message, .. })
                                if message.contains("InvalidInstanceID") => {}
                            Err(error) => return Err(error),
                        }
                    }
                }
                Err(error) => {
                    return Err(Ec2Error::Terminate {
                        instance_id: format!("{} and {} more", chunk[0], chunk.len() - 1),
                        region: region.to_owned(),
                        message: DisplayErrorContext(&error).to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// The cache of one region, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStatus {
    /// The region.
    pub region: String,
    /// Instances the last listing held.
    pub instances: usize,
    /// Time since that listing was read; `None` before the first.
    pub age: Option<Duration>,
    /// Lookups the listing answered (the claim may still disagree with it).
    pub hits: u64,
    /// Lookups it could not: the instance not listed, or the listing too old.
    pub misses: u64,
}

/// A listing is used for at most this many refresh intervals after it was
/// read.
const CACHE_MAX_AGE_INTERVALS: u32 = 2;

/// One region's listing.
#[derive(Debug, Default)]
struct RegionCache {
    listing: RwLock<Option<(Instant, HashMap<String, InstanceFacts>)>>,
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl RegionCache {
    fn listing(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, Option<(Instant, HashMap<String, InstanceFacts>)>> {
        self.listing.read().unwrap_or_else(|p| p.into_inner())
    }

    fn listing_mut(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, Option<(Instant, HashMap<String, InstanceFacts>)>> {
        self.listing.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// [`Ec2Instances`] with the EC2 cache of the module doc in front of it.
#[derive(Debug)]
pub struct CachedInstances {
    inner: Ec2Instances,
    every: Duration,
    regions: Mutex<HashMap<String, Arc<RegionCache>>>,
}

impl CachedInstances {
    /// Asks EC2 through `clients`, listing each region every `every`.
    pub fn new(clients: Ec2Clients, every: Duration) -> CachedInstances {
        CachedInstances {
            inner: Ec2Instances::new(clients),
            every,
            regions: Mutex::new(HashMap::new()),
        }
    }

    /// The cache of `region`, if its listing was started.
    fn existing(&self, region: &str) -> Option<Arc<RegionCache>> {
        let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        regions.get(region).cloned()
    }

    /// The cache of `region`, its refresh started on first use.
    fn region(&self, region: &str) -> Arc<RegionCache> {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cache) = regions.get(region) {
            return cache.clone();
        }
        let cache = Arc::new(RegionCache::default());
        regions.insert(region.to_owned(), cache.clone());
        tokio::spawn(refresh_loop(
            self.inner.client(region),
            region.to_owned(),
            Arc::downgrade(&cache),
            self.every,
        ));
        cache
    }
}

/// Lists `region` every `every`, for as long as its cache lives.
async fn refresh_loop(client: Client, region: String, cache: Weak<RegionCache>, every: Duration) {
    loop {
        let started = Instant::now();
        let listed = list_members(&client, &region).await;
        let Some(cache) = cache.upgrade() else { return };
        match listed {
            Ok(instances) => {
                tracing::debug!(%region, instances = instances.len(), took = ?started.elapsed(), "ec2 cache refreshed");
                *cache.listing_mut() = Some((started, instances));
            }
            Err(error) => {
                tracing::warn!(%region, %error, "ec2 cache not refreshed; claims go to EC2")
            }
        }
        drop(cache);
        tokio::time::sleep(every).await;
    }
}

/// Every `pending` or `running` instance of `region` that carries a
/// `muster:cluster` tag, all pages.
async fn list_members(
    client: &Client,
    region: &str,
) -> Result<HashMap<String, InstanceFacts>, Ec2Error> {
    let mut found = HashMap::new();
    let filters = vec![
        aws_sdk_ec2::types::Filter::builder()
            .name("tag-key")
            .values(crate::launcher::TAG_CLUSTER)
            .build(),
        aws_sdk_ec2::types::Filter::builder()
            .name("instance-state-name")
            .values("pending")
            .values("running")
            .build(),
    ];
    describe_pages(client, filters, &mut found, |message| Ec2Error::List {
        region: region.to_owned(),
        message,
    })
    .await?;
    found.shrink_to_fit();
    Ok(found)
}

#[async_trait::async_trait]
impl InstanceLookup for CachedInstances {
    /// Always EC2; what it answers replaces the cached entry. A region's
    /// listing starts with the first instance EC2 knows there, so a claim
    /// naming a made-up region starts nothing.
    async fn describe(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceFacts>, Ec2Error> {
        let facts = self.inner.describe(region, instance_id).await?;
        let cache = match facts {
            Some(_) => Some(self.region(region)),
            None => self.existing(region),
        };
        let Some(cache) = cache else {
            return Ok(facts);
        };
        if let Some((_, instances)) = cache.listing_mut().as_mut() {
            match &facts {
                Some(f) if f.state == "pending" || f.state == "running" => {
                    instances.insert(instance_id.to_owned(), f.clone());
                }
                _ => {
                    instances.remove(instance_id);
                }
            }
        }
        Ok(facts)
    }

    async fn describe_many(
        &self,
        region: &str,
        instance_ids: &[String],
    ) -> Result<HashMap<String, InstanceFacts>, Ec2Error> {
        self.inner.describe_many(region, instance_ids).await
    }

    async fn terminate(&self, region: &str, instance_id: &str) -> Result<(), Ec2Error> {
        self.inner.terminate(region, instance_id).await
    }

    async fn terminate_many(&self, region: &str, instance_ids: &[String]) -> Result<(), Ec2Error> {
        self.inner.terminate_many(region, instance_ids).await
    }

    fn cached(&self, region: &str, instance_id: &str) -> Option<InstanceFacts> {
        use std::sync::atomic::Ordering::Relaxed;
        let cache = self.existing(region)?;
        let found = cache.listing().as_ref().and_then(|(read, instances)| {
            (read.elapsed() <= self.every * CACHE_MAX_AGE_INTERVALS)
                .then(|| instances.get(instance_id).cloned())
                .flatten()
        });
        match found {
            Some(_) => cache.hits.fetch_add(1, Relaxed),
            None => cache.misses.fetch_add(1, Relaxed),
        };
        found
    }

    fn cache_status(&self) -> Vec<CacheStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let mut status: Vec<CacheStatus> = regions
            .iter()
            .map(|(region, cache)| {
                let listing = cache.listing();
                CacheStatus {
                    region: region.clone(),
                    instances: listing.as_ref().map_or(0, |(_, i)| i.len()),
                    age: listing.as_ref().map(|(read, _)| read.elapsed()),
                    hits: cache.hits.load(Relaxed),
                    misses: cache.misses.load(Relaxed),
                }
            })
            .collect();
        status.sort_by(|a, b| a.region.cmp(&b.region));
        status
    }
}

/// Reads every page of a DescribeInstances with `filters` into `found`, by
/// instance id (real EC2 pages at MaxResults); `error` makes the error of
/// a failed page from the SDK's message.
async fn describe_pages(
    client: &Client,
    filters: Vec<aws_sdk_ec2::types::Filter>,
    found: &mut HashMap<String, InstanceFacts>,
    error: impl Fn(String) -> Ec2Error,
) -> Result<(), Ec2Error> {
    let mut pages = client
        .describe_instances()
        .set_filters(Some(filters))
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| error(DisplayErrorContext(&e).to_string()))?;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            if let Some(id) = instance.instance_id() {
                found.insert(id.to_owned(), facts_of(instance));
            }
        }
    }
    Ok(())
}

fn facts_of(i: &aws_sdk_ec2::types::Instance) -> InstanceFacts {
    InstanceFacts {
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        private_ipv4: i.private_ip_address().and_then(|ip| ip.parse().ok()),
        public_ipv4: i.public_ip_address().and_then(|ip| ip.parse().ok()),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_owned),
        cluster_tag: i
            .tags()
            .iter()
            .find(|t| t.key() == Some(crate::launcher::TAG_CLUSTER))
            .and_then(|t| t.value())
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim in a region whose listing never started (a made-up region
    /// above all) finds nothing in the cache and starts no listing: only
    /// an instance EC2 confirms does.
    #[tokio::test]
    async fn a_region_no_instance_confirmed_starts_no_listing() {
        let clients = Ec2Clients {
            base: aws_config::SdkConfig::builder().build(),
            clients: Arc::default(),
        };
        let cache = CachedInstances::new(clients, Duration::from_secs(60));
        assert_eq!(cache.cached("xx-nowhere-1", "i-0123456789abcdef0"), None);
        assert!(cache.cache_status().is_empty());
    }
}
