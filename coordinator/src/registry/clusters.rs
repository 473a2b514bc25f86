//! Clusters: create (launching nodes when asked), scale and remove.
//!
//! - **Create** validates everything first, so a bad request changes
//!   nothing. A launched cluster then gets its network, security group and
//!   key pair ([`crate::launcher::Launcher::prepare`]), is stored with them,
//!   and launches its nodes; each instance is stored as a `launching` node
//!   before the call returns, so its agent's register finds it. If nothing
//!   could be launched at all, the cluster, its security group and key pair
//!   are undone and the error is the answer.
//! - Each launch is a **launch job**, recorded before its first
//!   RunInstances and finished once its nodes are stored; one a dead
//!   coordinator left unfinished is resumed after a restart
//!   ([`super::strays`]). The API runs creates and scales detached from
//!   the request, so a dropped request does not cut a launch short.
//! - Each launch mints a fresh **launch token** for its user data. Only its
//!   hash is stored, and it registers only instances muster launched into
//!   that cluster.
//! - **Scale** compares the target with the nodes not on their way out
//!   (`terminating`, `terminated`): it launches the difference, or removes
//!   nodes as [`crate::launcher::placement::scale_down`] picks them (terminating
//!   their instances). Scaling never replaces nodes by itself: an
//!   unreachable node is not a dead one.
//! - **Remove** marks the cluster `removing` and returns; a task then
//!   terminates every instance, waits until EC2 says each is terminated
//!   (their nodes become `terminated` and leave DNS), deletes the security
//!   group and key pair muster made, and marks the cluster `removed`. The
//!   shared VPC stays. A coordinator that restarts picks unfinished
//!   removals up again.

use std::collections::BTreeMap;

use muster_proto::launch::{LaunchReport, ScaleClusterRequest, ScaleClusterResponse};
use muster_proto::token::TokenKind;
use muster_proto::{
    validate, ClusterState, ClusterView, CreateClusterRequest, CreateClusterResponse, NodeState,
};

use super::lifecycle::Input;
use super::{cluster_launch, launch_json, Registry, RegistryError};
use crate::dns::INTERNAL_LABEL;
use crate::launcher::userdata::{self, AgentBootstrap};
use crate::launcher::{ClusterLaunch, LaunchError, Wave};
use crate::secrets::{hash_secret, new_secret};
use crate::store::{Cluster, StoreError, TokenPurpose};
use muster_proto::{AgentDownload, EventSource, UserDataResponse, ValidationError};

impl Registry {
    /// Records a new cluster and returns it with its join token, its
    /// bring-your-own token if asked for, and, for a launched cluster, what
    /// was launched.
    pub async fn create_cluster(
        &self,
        req: &CreateClusterRequest,
    ) -> Result<CreateClusterResponse, RegistryError> {
        let (cluster, join_token, launch) = self.create_cluster_inner(req).await?;
        let byon_token = if req.byon {
            Some(self.mint_byon_token(&cluster.name, req.byon_max_nodes)?)
        } else {
            None
        };
        Ok(CreateClusterResponse {
            cluster,
            join_token,
            launch,
            byon_token,
        })
    }

    /// `userdata CLUSTER`: the user data the launcher would pass to
    /// RunInstances for an active cluster, carrying a join token minted
    /// for it (stored hashed, shown this once). Unlike a launch's token,
    /// it registers any instance EC2 confirms, as the cluster's join
    /// token does: it is for instances launched by other means.
    pub async fn user_data(
        &self,
        name: &str,
        req: &muster_proto::UserDataRequest,
    ) -> Result<UserDataResponse, RegistryError> {
        use base64::Engine as _;
        validate::dns_label("cluster", name)?;
        req.validate()?;
        let _clusters = self.clusters.lock().await;
        let cluster = self.active_cluster(name)?;
        let token = new_secret(TokenKind::Join);
        let (user_data, agents) = self.render_user_data_with(&cluster.name, &token).await?;
        let expires_at = expiry(req.expires_in_secs);
        self.store.add_cluster_token(
            cluster.id,
            TokenPurpose::Join,
            &hash_secret(&token),
            (expires_at, None),
        )?;
        tracing::info!(cluster = %name, gzip = user_data.gzip, bytes = user_data.bytes.len(), ?expires_at, "user data rendered with a fresh join token");
        Ok(UserDataResponse {
            cluster: cluster.name,
            join_token: token,
            expires_at: expires_at.map(super::rfc3339_ms),
            gzip: user_data.gzip,
            size_bytes: user_data.bytes.len(),
            user_data_base64: base64::engine::general_purpose::STANDARD.encode(&user_data.bytes),
            user_data: user_data.text().map(str::to_owned),
            agents,
        })
    }

    /// The user data for a node of `cluster` joining with `token`.
    pub(super) async fn render_user_data(
        &self,
        cluster: &str,
        token: &str,
    ) -> Result<userdata::UserData, RegistryError> {
        Ok(self.render_user_data_with(cluster, token).await?.0)
    }

    /// [`Registry::render_user_data`], with the agent downloads it carries.
    pub(super) async fn render_user_data_with(
        &self,
        cluster: &str,
        token: &str,
    ) -> Result<(userdata::UserData, Vec<AgentDownload>), RegistryError> {
        let context = self.launch.as_ref().ok_or_else(|| {
            ValidationError::new("cluster", cluster, "this coordinator launches no nodes")
        })?;
        let agents = match &context.agent {
            Some(dist) => dist.downloads(&context.coordinator_url).await?,
            None => Vec::new(),
        };
        let user_data = userdata::render(&AgentBootstrap {
            coordinator_url: &context.coordinator_url,
            ca_pem: context.ca_pem.as_deref(),
            cluster,
            join_token: token,
            agents: &agents,
            drain_wait_secs: self.zone.ttl(),
        })
        .map_err(|e| ValidationError::new("cluster", cluster, &e.to_string()))?;
        Ok((user_data, agents))
    }

    pub(super) async fn create_cluster_inner(
        &self,
        req: &CreateClusterRequest,
    ) -> Result<(ClusterView, String, Option<LaunchReport>), RegistryError> {
        req.validate()?;
        if req.launch.is_some() {
            self.ec2_trusted()?;
        }
        if req.name == INTERNAL_LABEL {
            return Err(ValidationError::new(
                "name",
                &req.name,
                "is reserved: internal names live under it",
            )
            .into());
        }
        validate::dns_name(
            "name",
            &muster_proto::node_internal_dns_name(
                &"n".repeat(validate::MAX_LABEL_LEN),
                &req.name,
                &self.zone_name,
            ),
        )
        .map_err(|_| {
            ValidationError::new(
                "name",
                &req.name,
                "is too long: node names under it would pass 253 characters",
            )
        })?;
        let _clusters = self.clusters.lock().await;
        if let Some(existing) = self.store.cluster(&req.name)? {
            if existing.state != ClusterState::Removed {
                return Err(RegistryError::ClusterExists(req.name.clone()));
            }
        }
        let token = new_secret(TokenKind::Join);
        let expires_at = expiry(req.expires_in_secs);
        let Some(spec) = &req.launch else {
            let cluster = self.store.create_cluster_expiring(
                &req.name,
                &hash_secret(&token),
                None,
                expires_at,
            )?;
            self.forget_removed(&req.name);
            tracing::info!(cluster = %cluster.name, "cluster created");
            return Ok((self.cluster_view(&cluster, &[]), token, None));
        };
        let context = self.launch.as_ref().ok_or_else(|| {
            ValidationError::new(
                "launch",
                &req.name,
                "this coordinator launches no nodes: it has no EC2 launcher",
            )
        })?;
        // Recorded first, so that what a killed create leaves behind in
        // the region is found and cleaned up ([`super::strays`]).
        self.store.add_launch_region(&spec.region)?;
        let launch = context.launcher.prepare(&req.name, spec).await?;
        let json = launch_json(&launch)?;
        let cluster = match self.store.create_cluster_expiring(
            &req.name,
            &hash_secret(&token),
            Some(&json),
            expires_at,
        ) {
            Ok(cluster) => cluster,
            Err(error) => {
                context.launcher.release(&launch).await.ok();
                return Err(error.into());
            }
        };
        self.forget_removed(&req.name);
        let report = match self.launch_nodes(&cluster, &launch, spec.count).await {
            Ok(report) => report,
            Err(error) => {
                tracing::error!(cluster = %cluster.name, %error, "launch failed; undoing the cluster");
                self.store.delete_empty_cluster(cluster.id)?;
                if let Err(release) = context.launcher.release(&launch).await {
                    tracing::error!(cluster = %cluster.name, error = %release, "could not release what was made for the cluster");
                }
                return Err(error);
            }
        };
        tracing::info!(
            cluster = %cluster.name,
            launched = report.launched.len(),
            short = report.short,
            "cluster created"
        );
        let nodes = self.store.nodes(Some(&cluster.name))?;
        Ok((self.cluster_view(&cluster, &nodes), token, Some(report)))
    }

    /// Launches `count` more nodes into `cluster` as a launch job and
    /// stores them as `launching`. The job is recorded before the first
    /// RunInstances and finished once its nodes are stored (or nothing more
    /// can come of it), so a coordinator that dies in between resumes it
    /// ([`super::strays`]). Fails only if nothing at all was launched when
    /// some were asked for.
    pub(super) async fn launch_nodes(
        &self,
        cluster: &Cluster,
        launch: &ClusterLaunch,
        count: u32,
    ) -> Result<LaunchReport, RegistryError> {
        if count == 0 {
            return Ok(LaunchReport::default());
        }
        self.ec2_trusted()?;
        let job = format!("lj-{}", hex::encode(rand::random::<[u8; 8]>()));
        self.store.begin_launch_job(&job, cluster.id, count)?;
        let report = self.run_launch_job(cluster, launch, &job, count).await;
        if let Err(error) = self.store.finish_launch_job(&job) {
            tracing::error!(%job, %error, "could not mark the launch job finished; a restart resumes it");
        }
        report
    }

    /// Launches `count` nodes into `cluster` for launch job `job`, and
    /// stores them.
    pub(super) async fn run_launch_job(
        &self,
        cluster: &Cluster,
        launch: &ClusterLaunch,
        job: &str,
        count: u32,
    ) -> Result<LaunchReport, RegistryError> {
        let context = self.launch.as_ref().ok_or_else(|| {
            ValidationError::new(
                "launch",
                &cluster.name,
                "this coordinator launches no nodes",
            )
        })?;
        let existing = self.nodes_by_subnet(cluster)?;
        let token = new_secret(TokenKind::Join);
        // Rendered first: user data that cannot be made stores no token.
        let user_data = self.render_user_data(&cluster.name, &token).await?;
        self.store.add_cluster_token(
            cluster.id,
            TokenPurpose::Launch,
            &hash_secret(&token),
            (None, None),
        )?;
        let wave: Wave = context
            .launcher
            .launch(
                (&cluster.name, job),
                launch,
                &existing,
                count,
                &user_data.bytes,
            )
            .await?;
        if wave.launched.is_empty() {
            return Err(LaunchError::no_usable_subnet(&launch.spec, &wave.refused).into());
        }
        let reason = format!(
            "launched as {} from {} with a {} GiB gp2 data volume",
            launch.spec.instance_type, launch.spec.ami, launch.spec.disk_gb
        );
        let stored = self
            .store_launched(
                cluster,
                &launch.spec.region,
                (&wave.launched, Some(job)),
                (&reason, EventSource::Operator),
            )
            .await;
        let ids: Vec<String> = wave
            .launched
            .iter()
            .map(|i| i.instance_id.clone())
            .collect();
        if let Err(error) = stored {
            // Instances nobody tracks would run forever: stop them.
            tracing::error!(%error, "could not store launched instances; terminating them");
            self.ec2
                .terminate_many(&launch.spec.region, &ids)
                .await
                .ok();
            return Err(error.into());
        }
        Ok(LaunchReport {
            launched: ids,
            refused: wave.refused,
            short: wave.short,
        })
    }

    /// How many of `cluster`'s nodes, not on their way out, each subnet
    /// holds.
    fn nodes_by_subnet(&self, cluster: &Cluster) -> Result<BTreeMap<String, usize>, RegistryError> {
        let mut existing: BTreeMap<String, usize> = BTreeMap::new();
        for node in self.store.nodes(Some(&cluster.name))? {
            if let (Some(subnet), false) = (
                node.subnet_id,
                matches!(node.state, NodeState::Terminating | NodeState::Terminated),
            ) {
                *existing.entry(subnet).or_default() += 1;
            }
        }
        Ok(existing)
    }

    /// Stores instances launched by `job` as `launching` nodes and mirrors
    /// them in memory.
    pub(super) async fn store_launched(
        &self,
        cluster: &Cluster,
        region: &str,
        (instances, job): (&[crate::store::LaunchedInstance], Option<&str>),
        why: (&str, EventSource),
    ) -> Result<(), StoreError> {
        let _write = self.write.lock().await;
        let nodes = self
            .store
            .insert_launched(cluster.id, region, instances, job, why)?;
        let mut live = self.live();
        for node in &nodes {
            let before = live.nodes.get(&node.id).map(|n| n.state);
            self.counters.transitioned(before, node.state);
            live.upsert(node);
        }
        Ok(())
    }

    /// Grows or shrinks a launched cluster to `req.count` nodes.
    pub async fn scale_cluster(
        &self,
        name: &str,
        req: &ScaleClusterRequest,
    ) -> Result<ScaleClusterResponse, RegistryError> {
        validate::dns_label("cluster", name)?;
        req.validate()?;
        self.ec2_trusted()?;
        let _clusters = self.clusters.lock().await;
        let cluster = self.active_cluster(name)?;
        let mut launch = cluster_launch(&cluster)?.ok_or_else(|| {
            ValidationError::new(
                "cluster",
                name,
                "launches no nodes: its agents join on their own",
            )
        })?;
        let nodes: Vec<_> = self
            .store
            .nodes(Some(name))?
            .into_iter()
            .filter(|n| {
                !n.byon && !matches!(n.state, NodeState::Terminating | NodeState::Terminated)
            })
            .collect();
        let current = nodes.len() as u32;
        let mut report = LaunchReport::default();
        let mut removing = Vec::new();
        if req.count > current {
            report = self
                .launch_nodes(&cluster, &launch, req.count - current)
                .await?;
        } else if req.count < current {
            let candidates: Vec<(String, String, i64)> = nodes
                .iter()
                .map(|n| {
                    (
                        n.subnet_id.clone().unwrap_or_default(),
                        n.name.clone(),
                        n.created_at,
                    )
                })
                .collect();
            removing =
                crate::launcher::placement::scale_down(&candidates, (current - req.count) as usize);
            let ids: Vec<String> = nodes
                .iter()
                .filter(|n| removing.contains(&n.name))
                .map(|n| n.instance_id.clone())
                .collect();
            self.ec2.terminate_many(&launch.spec.region, &ids).await?;
            for node in nodes.iter().filter(|n| removing.contains(&n.name)) {
                self.apply(node.id, Input::OperatorRemove, EventSource::Operator)
                    .await?;
            }
        }
        launch.spec.count = req.count;
        let json = launch_json(&launch)?;
        self.store.set_cluster_launch(cluster.id, &json)?;
        tracing::info!(
            cluster = %name,
            from = current,
            to = req.count,
            launched = report.launched.len(),
            removing = removing.len(),
            "cluster scaled"
        );
        let cluster = self.active_cluster(name)?;
        let nodes = self.store.nodes(Some(name))?;
        Ok(ScaleClusterResponse {
            cluster: self.cluster_view(&cluster, &nodes),
            launch: report,
            removing,
        })
    }

    pub(super) fn active_cluster(&self, name: &str) -> Result<Cluster, RegistryError> {
        let cluster = self
            .store
            .cluster(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("no cluster {name:?}")))?;
        if cluster.state != ClusterState::Active {
            return Err(RegistryError::ClusterNotActive {
                name: cluster.name,
                state: cluster.state,
            });
        }
        Ok(cluster)
    }
}

/// When a join token (or a cluster) living `expires_in_secs` from now
/// ends (unix ms); `None` never.
pub(super) fn expiry(expires_in_secs: Option<u64>) -> Option<i64> {
    expires_in_secs.map(|secs| {
        crate::store::now_ms()
            .saturating_add(i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000))
    })
}
