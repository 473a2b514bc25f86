//! `check-credentials`: dry-runs an instance launch in every region with
//! the AWS credentials this process finds, as Tutum did.

use std::time::Duration;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::InstanceType;
use aws_sdk_ec2::Client;
use serde::{Deserialize, Serialize};

use crate::ec2::{describe_error, filter, Ec2Clients};

/// Regions `check-credentials` tries when none are named.
pub const DEFAULT_CHECK_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "eu-west-1",
    "eu-west-2",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "sa-east-1",
];

/// How long one region's check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// One region's answer to `check-credentials`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionCheck {
    /// The region.
    pub region: String,
    /// Whether a launch would have been allowed.
    pub ok: bool,
    /// EC2's answer, in words.
    pub detail: String,
}

/// Dry-runs an instance launch in every region, as Tutum did: the image
/// is `ami` if given, else any available x86_64 image Amazon owns in that
/// region.
pub async fn check_credentials(
    clients: &Ec2Clients,
    regions: &[String],
    ami: Option<&str>,
    instance_type: &str,
) -> Vec<RegionCheck> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, region) in regions.iter().enumerate() {
        let client = clients.client(region);
        let region = region.clone();
        let ami = ami.map(str::to_owned);
        let instance_type = instance_type.to_owned();
        tasks.spawn(async move {
            let check = tokio::time::timeout(
                CHECK_TIMEOUT,
                check_region(&client, ami.as_deref(), &instance_type),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())));
            let (ok, detail) = match check {
                Ok(detail) => (true, detail),
                Err(detail) => (false, detail),
            };
            (index, RegionCheck { region, ok, detail })
        });
    }
    let mut checks = Vec::with_capacity(regions.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(check) = joined {
            checks.push(check);
        }
    }
    checks.sort_by_key(|(index, _)| *index);
    checks.into_iter().map(|(_, check)| check).collect()
}

async fn check_region(
    client: &Client,
    ami: Option<&str>,
    instance_type: &str,
) -> Result<String, String> {
    let image = match ami {
        Some(ami) => ami.to_owned(),
        None => {
            let images = client
                .describe_images()
                .owners("amazon")
                .filters(filter("architecture", "x86_64"))
                .filters(filter("state", "available"))
                .max_results(5)
                .send()
                .await
                .map_err(|e| describe_error(&e))?;
            images
                .images()
                .iter()
                .find_map(|i| i.image_id())
                .ok_or(
                    "no x86_64 image owned by Amazon found to dry-run with; name one with --ami",
                )?
                .to_owned()
        }
    };
    let answer = client
        .run_instances()
        .dry_run(true)
        .image_id(&image)
        .instance_type(InstanceType::from(instance_type))
        .min_count(1)
        .max_count(1)
        .send()
        .await;
    match answer {
        Err(e) if e.code() == Some("DryRunOperation") => Ok(format!(
            "a launch of {instance_type} from {image} would succeed"
        )),
        Err(e) => Err(describe_error(&e)),
        Ok(_) => Err("EC2 launched an instance on a dry run".to_owned()),
    }
}
