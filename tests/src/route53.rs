//! The Route53 side of the stories: an SDK client for moto's Route53, a
//! hosted zone made for the test, and the test's own reads and hand edits
//! of its records (ListResourceRecordSets page by page, as an operator's
//! tools would), never the coordinator's view.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_route53::error::DisplayErrorContext;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use aws_sdk_route53::Client;

/// Records per page when the test lists a zone: small, so listings of
/// more than a handful of names take several pages.
const PAGE: i32 = 100;

/// A Route53 client for the emulator at `endpoint`
/// ([`crate::ec2::sdk_config`]).
pub async fn client(endpoint: &str) -> Client {
    Client::new(&crate::ec2::sdk_config(endpoint).await)
}

/// Creates a public hosted zone named `name`; returns its id (without
/// `/hostedzone/`).
pub async fn create_zone(client: &Client, name: &str) -> String {
    let answer = client
        .create_hosted_zone()
        .name(name)
        .caller_reference(format!("muster-tests-{}", rand::random::<u64>()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating hosted zone {name}: {}", DisplayErrorContext(&e)));
    answer
        .hosted_zone()
        .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned())
        .expect("CreateHostedZone answers with the zone")
}

/// One record set as the test reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// TTL, seconds.
    pub ttl: Option<i64>,
    /// Its values, as Route53 keeps them (TXT values quoted).
    pub values: Vec<String>,
}

/// Every record set of the zone, by (name, type); names lower case with a
/// trailing dot and `\052` read as `*`.
pub async fn records(client: &Client, zone_id: &str) -> BTreeMap<(String, String), RecordSet> {
    records_paged(client, zone_id, PAGE).await
}

/// Like [`records`], `page` record sets a request (300 at most).
pub async fn records_paged(
    client: &Client,
    zone_id: &str,
    page: i32,
) -> BTreeMap<(String, String), RecordSet> {
    let mut out = BTreeMap::new();
    let mut next: Option<(String, RrType)> = None;
    loop {
        let mut request = client
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .max_items(page);
        if let Some((name, kind)) = &next {
            request = request
                .start_record_name(name)
                .start_record_type(kind.clone());
        }
        let page = request.send().await.unwrap_or_else(|e| {
            panic!("listing hosted zone {zone_id}: {}", DisplayErrorContext(&e))
        });
        for set in page.resource_record_sets() {
            out.insert(
                (
                    muster_coordinator::dns::route53::decode_name(set.name()),
                    set.r#type().as_str().to_owned(),
                ),
                RecordSet {
                    ttl: set.ttl(),
                    values: set
                        .resource_records()
                        .iter()
                        .map(|r| r.value().to_owned())
                        .collect(),
                },
            );
        }
        match (
            page.is_truncated(),
            page.next_record_name(),
            page.next_record_type(),
        ) {
            (true, Some(name), Some(kind)) => next = Some((name.to_owned(), kind.clone())),
            _ => return out,
        }
    }
}

/// Polls the zone until `done` likes it (or [`crate::EVENTUALLY`] passes);
/// returns the last read.
pub async fn records_until(
    client: &Client,
    zone_id: &str,
    timeout: Duration,
    done: impl Fn(&BTreeMap<(String, String), RecordSet>) -> bool,
) -> BTreeMap<(String, String), RecordSet> {
    crate::wait_until(timeout, crate::POLL * 5, || records(client, zone_id), done).await
}

/// Makes `name` hold `values` of `kind` by hand (UPSERT), as an operator
/// would in the console.
pub async fn put(client: &Client, zone_id: &str, name: &str, kind: &str, values: &[&str]) {
    change(
        client,
        zone_id,
        ChangeAction::Upsert,
        name,
        kind,
        300,
        values,
    )
    .await;
}

/// Deletes a record set by hand; `ttl` and `values` must be what it holds.
pub async fn delete(
    client: &Client,
    zone_id: &str,
    name: &str,
    kind: &str,
    ttl: i64,
    values: &[String],
) {
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    change(
        client,
        zone_id,
        ChangeAction::Delete,
        name,
        kind,
        ttl,
        &values,
    )
    .await;
}

async fn change(
    client: &Client,
    zone_id: &str,
    action: ChangeAction,
    name: &str,
    kind: &str,
    ttl: i64,
    values: &[&str],
) {
    let records = values
        .iter()
        .map(|v| {
            ResourceRecord::builder()
                .value(*v)
                .build()
                .expect("a value")
        })
        .collect();
    let set = ResourceRecordSet::builder()
        .name(name.trim_end_matches('.'))
        .r#type(RrType::from(kind))
        .ttl(ttl)
        .set_resource_records(Some(records))
        .build()
        .expect("a record set");
    let batch = ChangeBatch::builder()
        .changes(
            Change::builder()
                .action(action.clone())
                .resource_record_set(set)
                .build()
                .expect("a change"),
        )
        .build()
        .expect("a change batch");
    client
        .change_resource_record_sets()
        .hosted_zone_id(zone_id)
        .change_batch(batch)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} {name} {kind} by hand: {}",
                action.as_str(),
                DisplayErrorContext(&e)
            )
        });
}

/// Puts `sets` (name with its trailing dot, type, values) into hosted zone
/// `zone_id` in that order, each with `ttl`, through one CloudFormation
/// stack holding an `AWS::Route53::RecordSetGroup`.
///
/// For big zones in moto only: its ChangeResourceRecordSets checks every
/// CREATE against the zone's whole change journal, so 30,000 record sets
/// written through it cost minutes of CPU, while a stack's record sets are
/// added as they come. (Real CloudFormation takes templates of 51,200
/// bytes at most; moto takes any.)
pub async fn seed(endpoint: &str, zone_id: &str, ttl: u32, sets: &[(String, String, Vec<String>)]) {
    use aws_sdk_cloudformation::types::StackStatus;
    let record_sets: Vec<serde_json::Value> = sets
        .iter()
        .map(|(name, kind, values)| {
            serde_json::json!({
                "Name": name,
                "Type": kind,
                "TTL": ttl,
                "ResourceRecords": values,
            })
        })
        .collect();
    let template = serde_json::json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {
            "Seed": {
                "Type": "AWS::Route53::RecordSetGroup",
                "Properties": { "HostedZoneId": zone_id, "RecordSets": record_sets },
            },
        },
    });
    let client = aws_sdk_cloudformation::Client::new(&crate::ec2::sdk_config(endpoint).await);
    let stack = format!("muster-seed-{}", rand::random::<u32>());
    client
        .create_stack()
        .stack_name(&stack)
        .template_body(template.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("creating stack {stack}: {}", DisplayErrorContext(&e)));
    let described = client
        .describe_stacks()
        .stack_name(&stack)
        .send()
        .await
        .unwrap_or_else(|e| panic!("describing stack {stack}: {}", DisplayErrorContext(&e)));
    let status = described
        .stacks()
        .first()
        .and_then(|s| s.stack_status())
        .cloned();
    assert_eq!(
        status,
        Some(StackStatus::CreateComplete),
        "stack {stack} seeding {zone_id}: {described:?}"
    );
}
