//! The EC2 cache (`--ec2-cache-refresh`): a recent listing of every
//! cluster member, region by region, that may confirm a claim without a
//! call but never refuse one.
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
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;

use super::{describe_pages, Ec2Clients, Ec2Error, Ec2Instances, InstanceFacts, InstanceLookup};

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
            .values(super::TAG_CLUSTER)
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
