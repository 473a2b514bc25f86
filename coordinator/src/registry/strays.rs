//! Strays: what this coordinator launched or made in EC2 that its store
//! does not account for, settled after a restart and on every sweep.
//!
//! A coordinator killed in the middle of a launch (or of a create, or of a
//! removal) leaves behind instances, security groups and key pairs that are
//! tagged as its own (`muster:coordinator`, see
//! [`crate::launcher::owned`]) but that no node or cluster row names. Each
//! sweep, with EC2 trusted and no cluster create, scale or removal under
//! way in this process (they hold the clusters lock; a sweep that finds it
//! taken leaves strays to the next one), lists what is tagged as its own in
//! every region a launch was ever prepared in, and:
//!
//! - an instance no node names (in any state) is **adopted** as a
//!   `launching` node if its cluster is active and launches in that region
//!   (event: `adopted`; its agent's register then finds it), and
//!   **terminated** otherwise: its cluster is being removed, was removed,
//!   or never got stored (a log line and `muster_strays_terminated_total`;
//!   there is no node to hang an event on);
//! - a security group or key pair whose cluster is neither active nor being
//!   removed is deleted (a security group still in use, by instances being
//!   terminated, is tried again next sweep);
//! - a launch job left unfinished by an earlier run is **resumed**: once
//!   adoption has counted what it launched, it launches what it still owes
//!   into an active cluster, under the same job id, and is finished.
//!
//! Resuming waits [`RESUME_AFTER`] from when the job was started or last
//! resumed: EC2's listings lag RunInstances by a moment (eventual
//! consistency), and an instance launched but not listed yet would be
//! launched again. Only another coordinator's tag is never touched: two
//! coordinators in one account leave each other's instances alone.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use muster_proto::{ClusterState, EventSource};

use super::{cluster_launch, Registry, RegistryError};
use crate::launcher::owned::{OwnedInstance, OwnedResource};
use crate::store::{now_ms, Cluster, LaunchJob};

/// How long after a launch job was started or last resumed a restarted
/// coordinator waits before resuming it.
pub const RESUME_AFTER: Duration = Duration::from_secs(30);

/// What one pass over the strays did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StrayReport {
    /// Instances adopted as nodes.
    pub adopted: usize,
    /// Instances terminated.
    pub terminated: usize,
    /// Security groups and key pairs deleted.
    pub deleted: usize,
    /// Launch jobs resumed.
    pub resumed: usize,
}

impl Registry {
    /// Settles the strays, as the module doc says. Called by the sweep,
    /// with EC2 trusted.
    pub async fn settle_strays(&self) -> StrayReport {
        let mut report = StrayReport::default();
        let Some(context) = &self.launch else {
            return report;
        };
        let Ok(_clusters) = self.clusters.try_lock() else {
            tracing::debug!("a cluster operation is under way; strays wait for the next sweep");
            return report;
        };
        let regions = match self.launch_regions() {
            Ok(regions) => regions,
            Err(error) => {
                tracing::error!(%error, "could not read where launches were made");
                return report;
            }
        };
        for region in regions {
            match context.launcher.owned_instances(&region).await {
                Ok(instances) => {
                    if let Err(error) = self.settle_instances(&region, instances, &mut report).await
                    {
                        tracing::error!(%error, %region, "could not settle the stray instances");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, %region, "could not list this coordinator's instances")
                }
            }
            match context.launcher.owned_resources(&region).await {
                Ok(resources) => {
                    if let Err(error) = self.settle_resources(&region, resources, &mut report).await
                    {
                        tracing::error!(%error, %region, "could not settle the leftover resources");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, %region, "could not list this coordinator's security groups and key pairs")
                }
            }
        }
        match self.store.unfinished_launch_jobs() {
            Ok(jobs) => {
                for job in jobs {
                    if let Err(error) = self.resume_launch_job(&job, &mut report).await {
                        tracing::error!(%error, job = %job.id, cluster = %job.cluster, "could not resume the launch job");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "could not read the unfinished launch jobs"),
        }
        report
    }

    /// Every region a launch was prepared in, or a stored cluster
    /// launches in (one created before regions were recorded).
    fn launch_regions(&self) -> Result<BTreeSet<String>, RegistryError> {
        let mut regions: BTreeSet<String> = self.store.launch_regions()?.into_iter().collect();
        for cluster in self.store.clusters()? {
            if let Some(launch) = cluster_launch(&cluster)? {
                regions.insert(launch.spec.region);
            }
        }
        Ok(regions)
    }

    /// Adopts or terminates each of `instances` no node names.
    async fn settle_instances(
        &self,
        region: &str,
        instances: Vec<OwnedInstance>,
        report: &mut StrayReport,
    ) -> Result<(), RegistryError> {
        let tracked: HashSet<String> = self
            .live()
            .nodes
            .values()
            .map(|n| n.instance_id.clone())
            .collect();
        let mut doomed = Vec::new();
        let mut adopted = 0;
        for owned in instances {
            let id = &owned.instance.instance_id;
            if tracked.contains(id) || self.store.node_by_instance(id)?.is_some() {
                continue;
            }
            let cluster = match owned.facts.cluster_tag.as_deref() {
                Some(name) => self.store.cluster(name)?,
                None => None,
            };
            match cluster.filter(|c| launches_in(c, region)) {
                Some(cluster) => {
                    let reason = format!(
                        "adopted: launched by this coordinator{} but never recorded; EC2 says it is {}",
                        owned
                            .job
                            .as_deref()
                            .map(|j| format!(" (launch job {j})"))
                            .unwrap_or_default(),
                        owned.facts.state
                    );
                    self.store_launched(
                        &cluster,
                        region,
                        (std::slice::from_ref(&owned.instance), owned.job.as_deref()),
                        (&reason, EventSource::Sweep),
                    )
                    .await?;
                    tracing::warn!(instance_id = %id, cluster = %cluster.name, "adopted an instance launched but never recorded");
                    adopted += 1;
                }
                None => {
                    tracing::warn!(
                        instance_id = %id,
                        cluster = owned.facts.cluster_tag.as_deref().unwrap_or("-"),
                        %region,
                        "terminating an instance this coordinator launched for a cluster that is gone or being removed"
                    );
                    doomed.push(id.clone());
                }
            }
        }
        report.adopted += adopted;
        self.counters
            .strays_adopted
            .fetch_add(adopted as u64, Ordering::Relaxed);
        if !doomed.is_empty() {
            self.ec2.terminate_many(region, &doomed).await?;
            report.terminated += doomed.len();
        }
        self.counters
            .strays_terminated
            .fetch_add(doomed.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes each of `resources` whose cluster is neither active nor
    /// being removed.
    async fn settle_resources(
        &self,
        region: &str,
        resources: Vec<OwnedResource>,
        report: &mut StrayReport,
    ) -> Result<(), RegistryError> {
        let Some(context) = &self.launch else {
            return Ok(());
        };
        for resource in resources {
            let cluster = match resource.cluster() {
                Some(name) => self.store.cluster(name)?,
                None => None,
            };
            if cluster.is_some_and(|c| c.state != ClusterState::Removed) {
                continue;
            }
            match context.launcher.delete_owned(region, &resource).await {
                Ok(()) => {
                    tracing::warn!(%region, cluster = resource.cluster().unwrap_or("-"), "deleted {resource}, left behind by a cluster that is gone");
                    report.deleted += 1;
                    self.counters
                        .leftovers_deleted
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::info!(%error, %region, "{resource} is left behind, and cannot be deleted yet");
                }
            }
        }
        Ok(())
    }

    /// Resumes `job`, left unfinished by an earlier run, once
    /// [`RESUME_AFTER`] has passed.
    async fn resume_launch_job(
        &self,
        job: &LaunchJob,
        report: &mut StrayReport,
    ) -> Result<(), RegistryError> {
        if now_ms().saturating_sub(job.touched_at) < RESUME_AFTER.as_millis() as i64 {
            return Ok(());
        }
        let cluster = self
            .store
            .cluster(&job.cluster)?
            .filter(|c| c.state == ClusterState::Active);
        let owed = job.count.saturating_sub(job.launched);
        if let (Some(cluster), true) = (cluster, owed > 0) {
            if let Some(launch) = cluster_launch(&cluster)? {
                self.store.touch_launch_job(&job.id)?;
                tracing::info!(job = %job.id, cluster = %cluster.name, launched = job.launched, of = job.count, "resuming a launch job an earlier run left unfinished");
                report.resumed += 1;
                match self.run_launch_job(&cluster, &launch, &job.id, owed).await {
                    Ok(launched) => {
                        tracing::info!(job = %job.id, launched = launched.launched.len(), short = launched.short, "launch job resumed")
                    }
                    Err(error) => {
                        tracing::error!(job = %job.id, %error, "the resumed launch job failed")
                    }
                }
            }
        }
        self.store.finish_launch_job(&job.id)?;
        Ok(())
    }
}

/// Whether `cluster` is active and launches into `region`.
fn launches_in(cluster: &Cluster, region: &str) -> bool {
    cluster.state == ClusterState::Active
        && cluster_launch(cluster)
            .ok()
            .flatten()
            .is_some_and(|launch| launch.spec.region == region)
}
