//! How muster talks to EC2, and what EC2 says about an instance: the
//! judge of every identity and address claim an agent makes.
//!
//! This is the ground floor every EC2 caller stands on: one client per
//! region ([`Ec2Clients`]), the tag names on everything muster makes, the
//! SDK helpers ([`filter`], [`sdk_message`], [`settled`]), and the
//! instance lookups ([`InstanceLookup`]).
//!
//! [`Ec2Instances`] asks EC2 through aws-sdk-ec2 with the standard
//! aws-config credential chain; `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_EC2`
//! point it at an emulator. One client is kept per region, made on first use.
//! The [`InstanceLookup`] trait lets the registry's unit tests describe
//! instances without a network; the binaries use [`Ec2Instances`], or
//! [`CachedInstances`] (the [`cache`] module) when the operator turns the
//! EC2 cache on.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;
use rand::Rng;

pub mod cache;

pub use cache::{CacheStatus, CachedInstances};

/// How long connecting to an AWS endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt of an AWS call may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an AWS call may take, retries included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of an AWS call (the SDK's standard retry mode: exponential
/// backoff with jitter, throttling and transient errors retried).
pub const CALL_ATTEMPTS: u32 = 3;

/// The standard AWS configuration (credential chain, region, endpoint
/// overrides), with every call bounded: a hung endpoint costs
/// [`CALL_TIMEOUT`] at most, never a stuck loop.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(CALL_TIMEOUT)
                .build(),
        )
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(CALL_ATTEMPTS))
        .load()
        .await
}

/// Tag keys on everything muster launches.
pub const TAG_CLUSTER: &str = "muster:cluster";
/// `true` on everything muster made.
pub const TAG_MANAGED: &str = "muster:managed";
/// The id of the coordinator that made it ([`crate::store::META_COORDINATOR`]).
pub const TAG_COORDINATOR: &str = "muster:coordinator";
/// On instances: the launch job that launched it.
pub const TAG_LAUNCH: &str = "muster:launch";

/// What EC2 answers, for a little while, about a resource created moments
/// ago: the answers [`settled`] retries on.
const NOT_YET_VISIBLE: &[&str] = &[
    "InvalidVpcID.NotFound",
    "InvalidSubnetID.NotFound",
    "InvalidInternetGatewayID.NotFound",
    "InvalidRouteTableID.NotFound",
    "InvalidGatewayID.NotFound",
    "InvalidGroup.NotFound",
];

/// Waits between tries in [`settled`]: 0.25 s, 0.5 s, 1 s, 2 s, 4 s, each
/// cut by up to half at random (jitter); at most 7.75 s in all, then the
/// sixth answer stands.
const SETTLE_DELAYS_MS: [u64; 5] = [250, 500, 1000, 2000, 4000];

/// A filter on one value.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// An SDK error with all its causes, on one line.
pub fn sdk_message(error: &(impl std::error::Error + ?Sized)) -> String {
    DisplayErrorContext(error).to_string()
}

/// An SDK error as EC2's code and message (`Code: message`), or with all
/// its causes when EC2 sent no code.
pub fn describe_error<E>(error: &aws_sdk_ec2::error::SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error.code() {
        Some(code) => format!("{code}: {}", error.message().unwrap_or("no message")),
        None => sdk_message(error),
    }
}

/// Runs `call`, and runs it again after a short wait while EC2 answers
/// that a resource it names does not exist yet (see [`SETTLE_DELAYS_MS`]).
pub async fn settled<T, E, F, Fut>(call: F) -> Result<T, E>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry_not_yet_visible(&SETTLE_DELAYS_MS, call).await
}

/// [`settled`] with its waits (in milliseconds, before jitter) given.
async fn retry_not_yet_visible<T, E, F, Fut>(delays_ms: &[u64], mut call: F) -> Result<T, E>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    for &delay_ms in delays_ms {
        match call().await {
            Err(error) if error.code().is_some_and(|c| NOT_YET_VISIBLE.contains(&c)) => {
                let wait = rand::thread_rng().gen_range(delay_ms / 2..=delay_ms);
                tracing::debug!(
                    code = error.code().unwrap_or_default(),
                    wait_ms = wait,
                    "EC2 does not see a new resource yet; trying again"
                );
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            answer => return answer,
        }
    }
    call().await
}

/// EC2's view of one instance, as far as identity checks need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
    /// Primary private IPv4.
    pub private_ipv4: Option<Ipv4Addr>,
    /// Public IPv4 (an Elastic IP if one is associated).
    pub public_ipv4: Option<Ipv4Addr>,
    /// Every IPv6 address of its network interfaces, the primary
    /// interface's first.
    pub ipv6: Vec<Ipv6Addr>,
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
    /// STS did not say which account the credentials act in.
    #[error("asking STS which AWS account the credentials act in: {message}")]
    Account {
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
    /// Loads the standard AWS configuration once, with every call bounded
    /// ([`sdk_config`]).
    pub async fn from_env() -> Ec2Clients {
        Ec2Clients {
            base: sdk_config().await,
            clients: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The AWS account the credentials act in (STS GetCallerIdentity).
    pub async fn account(&self) -> Result<String, Ec2Error> {
        let error = |message| Ec2Error::Account { message };
        let config = aws_sdk_sts::config::Builder::from(&self.base)
            .interceptor(crate::telemetry::AwsCallTimer)
            .build();
        let answer = aws_sdk_sts::Client::from_conf(config)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| error(sdk_message(&e)))?;
        answer
            .account()
            .map(str::to_owned)
            .ok_or_else(|| error("the answer named no account".to_owned()))
    }

    /// The client for `region`.
    pub fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
                    .interceptor(crate::telemetry::AwsCallTimer)
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

/// Reads every page of a DescribeInstances with `filters` into `found`, by
/// instance id (real EC2 pages at MaxResults); `error` makes the error of
/// a failed page from the SDK's message.
async fn describe_pages(
    client: &Client,
    filters: Vec<aws_sdk_ec2::types::Filter>,
    found: &mut HashMap<String, InstanceFacts>,
    error: impl Fn(String) -> Ec2Error,
) -> Result<(), Ec2Error> {
    for_each_instance(client, filters, |instance| {
        if let Some(id) = instance.instance_id() {
            found.insert(id.to_owned(), facts_of(instance));
        }
    })
    .await
    .map_err(error)
}

/// Calls `each` with every instance the filters match, page by page (1000
/// a page), so that a big listing is never held whole; the error with its
/// causes.
pub async fn for_each_instance(
    client: &Client,
    filters: Vec<aws_sdk_ec2::types::Filter>,
    mut each: impl FnMut(&aws_sdk_ec2::types::Instance),
) -> Result<(), String> {
    let mut pages = client
        .describe_instances()
        .set_filters(Some(filters))
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| DisplayErrorContext(&e).to_string())?;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            each(instance);
        }
    }
    Ok(())
}

/// The value of tag `key` among `tags` (an instance's, a security
/// group's, a key pair's).
pub fn tag_value<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// Every IPv6 address of `i`: its primary one (`Ipv6Address`) if EC2
/// names it, then each interface's in the order of their device index.
fn ipv6_of(i: &aws_sdk_ec2::types::Instance) -> Vec<Ipv6Addr> {
    let mut interfaces: Vec<_> = i.network_interfaces().iter().collect();
    interfaces.sort_by_key(|n| {
        n.attachment()
            .and_then(|a| a.device_index())
            .unwrap_or(i32::MAX)
    });
    let mut all: Vec<Ipv6Addr> = i
        .ipv6_address()
        .into_iter()
        .chain(
            interfaces
                .iter()
                .flat_map(|n| n.ipv6_addresses())
                .filter_map(|a| a.ipv6_address()),
        )
        .filter_map(|text| text.parse().ok())
        .collect();
    let mut seen = std::collections::HashSet::new();
    all.retain(|ip| seen.insert(*ip));
    all
}

/// What an identity check needs of `i`.
pub fn facts_of(i: &aws_sdk_ec2::types::Instance) -> InstanceFacts {
    InstanceFacts {
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        private_ipv4: i.private_ip_address().and_then(|ip| ip.parse().ok()),
        public_ipv4: i.public_ip_address().and_then(|ip| ip.parse().ok()),
        ipv6: ipv6_of(i),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_owned),
        cluster_tag: tag_value(i.tags(), TAG_CLUSTER).map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retried call stops at the first answer that is not "not found yet".
    #[tokio::test]
    async fn settled_retries_only_not_yet_visible() {
        const DELAYS: [u64; 3] = [1, 1, 1];
        use aws_sdk_ec2::error::ErrorMetadata;
        let not_found = || {
            ErrorMetadata::builder()
                .code("InvalidSubnetID.NotFound")
                .build()
        };
        let mut calls = 0;
        let answer: Result<u8, ErrorMetadata> = retry_not_yet_visible(&DELAYS, || {
            calls += 1;
            let answer = if calls < 3 { Err(not_found()) } else { Ok(7) };
            std::future::ready(answer)
        })
        .await;
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(calls, 3);

        let mut calls = 0;
        let answer: Result<u8, ErrorMetadata> = retry_not_yet_visible(&DELAYS, || {
            calls += 1;
            std::future::ready(Err(ErrorMetadata::builder().code("Unsupported").build()))
        })
        .await;
        assert_eq!(answer.unwrap_err().code(), Some("Unsupported"));
        assert_eq!(calls, 1);

        let mut calls = 0;
        let answer: Result<u8, ErrorMetadata> = retry_not_yet_visible(&DELAYS, || {
            calls += 1;
            std::future::ready(Err(not_found()))
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(calls, DELAYS.len() + 1, "bounded");
    }
}
