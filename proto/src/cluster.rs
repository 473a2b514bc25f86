//! Clusters as the admin API shows and changes them: the cluster view and
//! its states, creating one, its tokens (join, bring-your-own, admin), and
//! the user data it renders with the agent download that pins.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::launch;
use crate::validate::{self, ValidationError};
use crate::NodeState;

/// A cluster as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterView {
    /// Cluster name: a DNS label.
    pub name: String,
    /// `cluster.zone`, the round-robin name of its deployed nodes.
    pub dns_name: String,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// Nodes in any state.
    pub nodes: u64,
    /// Nodes in `deployed`.
    pub deployed: u64,
    /// Nodes by state; states with none are left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub states: BTreeMap<NodeState, u64>,
    /// `active`, or on its way out.
    pub state: ClusterState,
    /// How its nodes are launched; absent for a cluster agents join on
    /// their own.
    pub launch: Option<launch::LaunchView>,
    /// When its lifetime ends and it is removed, RFC 3339; absent for a
    /// cluster that lives until `cluster rm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// The life of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// In use.
    Active,
    /// `cluster rm` is terminating its instances and releasing what was
    /// made for it.
    Removing,
    /// Everything made for it is gone; its nodes are `terminated`. The name
    /// may be used again.
    Removed,
}

impl ClusterState {
    /// The lowercase name used on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Active => "active",
            ClusterState::Removing => "removing",
            ClusterState::Removed => "removed",
        }
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ClusterState {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ClusterState::Active,
            ClusterState::Removing,
            ClusterState::Removed,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
        .ok_or_else(|| ValidationError::new("state", s, "is not a cluster state"))
    }
}

/// `POST /v1/clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterRequest {
    /// Cluster name: a DNS label (RFC 1123), lowercase.
    pub name: String,
    /// Nodes for muster to launch; absent for a cluster agents join on
    /// their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<launch::LaunchSpec>,
    /// Also mint a bring-your-own token.
    #[serde(default)]
    pub byon: bool,
    /// The most nodes that bring-your-own token may create (default
    /// [`DEFAULT_BYON_MAX_NODES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byon_max_nodes: Option<u32>,
    /// Seconds the cluster lives (1 to ten years): then it is removed as by
    /// `cluster rm`, unless extended. Absent, it lives until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl CreateClusterRequest {
    /// Checks the name, the launch spec and the bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::cluster_name("name", &self.name)?;
        if let Some(spec) = &self.launch {
            spec.validate()?;
        }
        byon_max_nodes("byon_max_nodes", self.byon_max_nodes)?;
        lifetime("expires_in_secs", self.expires_in_secs)
    }
}

/// What `POST /v1/clusters/{name}/extend` takes: how much longer a cluster
/// with a lifetime lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendClusterRequest {
    /// Seconds added to its lifetime (1 to ten years).
    pub by_secs: u64,
}

impl ExtendClusterRequest {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        lifetime("by_secs", Some(self.by_secs))
    }
}

/// What `POST /v1/clusters` answers: the cluster and its join token, shown
/// this once (only a hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterResponse {
    /// The new cluster.
    pub cluster: ClusterView,
    /// The join token agents present to register.
    pub join_token: String,
    /// What was launched, for a launched cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<launch::LaunchReport>,
    /// The bring-your-own token, when asked for (shown this once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byon_token: Option<String>,
}

/// The most nodes a bring-your-own token creates unless told otherwise: a
/// leaked one cannot flood a cluster.
pub const DEFAULT_BYON_MAX_NODES: u32 = 10;

/// The most nodes one bring-your-own token may be allowed to create.
pub const MAX_BYON_MAX_NODES: u32 = 100_000;

/// Checks a bring-your-own token's cap: absent, or 1 to
/// [`MAX_BYON_MAX_NODES`].
fn byon_max_nodes(field: &str, max_nodes: Option<u32>) -> Result<(), ValidationError> {
    match max_nodes {
        Some(n) if !(1..=MAX_BYON_MAX_NODES).contains(&n) => Err(ValidationError::new(
            field,
            &n.to_string(),
            &format!("must be between 1 and {MAX_BYON_MAX_NODES}"),
        )),
        _ => Ok(()),
    }
}

/// What `POST /v1/clusters/{name}/byon-token` takes (`{}` for the
/// defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByonTokenRequest {
    /// The most nodes the token may create (default
    /// [`DEFAULT_BYON_MAX_NODES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes: Option<u32>,
}

impl ByonTokenRequest {
    /// Checks the cap.
    pub fn validate(&self) -> Result<(), ValidationError> {
        byon_max_nodes("max_nodes", self.max_nodes)
    }
}

/// One of a cluster's tokens, as `cluster tokens` lists it: never the
/// secret, which only its holder has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenView {
    /// What `cluster revoke-token` takes: `join` for the cluster's own
    /// join token, `t<N>` for the others.
    pub id: String,
    /// `join` (the cluster's own), `userdata` (minted by `userdata`),
    /// `launch` (one launch's) or `byon` (bring-your-own).
    pub kind: String,
    /// When it was minted (RFC 3339).
    pub created_at: String,
    /// When it stops working (RFC 3339); absent, never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Registers it admitted.
    pub uses: u64,
    /// Bring-your-own: the nodes it created, and the most it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
    /// Bring-your-own: the most nodes it may create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes: Option<u32>,
}

/// What `POST /v1/clusters/{name}/byon-token` answers: a fresh
/// bring-your-own token (shown this once; earlier ones stay valid).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByonTokenResponse {
    /// The cluster.
    pub cluster: String,
    /// The token a machine without IMDS joins with.
    pub byon_token: String,
}

/// The longest a join token (or a cluster) may be given to live: ten
/// years.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

/// What `POST /v1/clusters/{name}/rotate-token` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenRequest {
    /// Seconds the new join token is valid for (1 to ten years); absent,
    /// it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl RotateTokenRequest {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        token_lifetime(self.expires_in_secs)
    }
}

/// Checks a join token's lifetime: absent, or 1 second to ten years.
fn token_lifetime(expires_in_secs: Option<u64>) -> Result<(), ValidationError> {
    lifetime("expires_in_secs", expires_in_secs)
}

/// Checks a lifetime `field`: absent, or 1 second to ten years.
fn lifetime(field: &str, secs: Option<u64>) -> Result<(), ValidationError> {
    match secs {
        Some(secs) if !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&secs) => Err(ValidationError::new(
            field,
            &secs.to_string(),
            "must be between 1 second and ten years",
        )),
        _ => Ok(()),
    }
}

/// What `POST /v1/clusters/{name}/userdata` takes (`{}` for the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDataRequest {
    /// Seconds the join token minted for the user data is valid for (1 to
    /// ten years); absent, it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl UserDataRequest {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ValidationError> {
        token_lifetime(self.expires_in_secs)
    }
}

/// What `POST /v1/clusters/{name}/rotate-token` answers: the cluster's new
/// join token (shown this once). The old one stops working at once, and
/// so do join tokens minted for user data; launch and bring-your-own
/// tokens are not touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenResponse {
    /// The cluster.
    pub cluster: String,
    /// The new join token.
    pub join_token: String,
    /// When it stops working (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// What `POST /v1/admin/rotate-token` answers: the new admin token (also
/// written to the coordinator's `D/admin-token`); the old one stops
/// working at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenResponse {
    /// The new admin token.
    pub admin_token: String,
}

/// `POST /v1/clusters/{name}/userdata`: the `#cloud-config` the launcher
/// would pass to RunInstances, with a join token minted for it (shown this
/// once; it registers any instance EC2 confirms, like the cluster's join
/// token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserDataResponse {
    /// The cluster.
    pub cluster: String,
    /// The join token the user data carries.
    pub join_token: String,
    /// When that token stops working (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether the user data is gzipped (it did not fit EC2's 16 KiB as text).
    pub gzip: bool,
    /// Its size in bytes, as EC2 counts it (before base64).
    pub size_bytes: usize,
    /// The user data, base64: what RunInstances takes.
    pub user_data_base64: String,
    /// The user data as text, when it is not gzipped.
    pub user_data: Option<String>,
    /// The agent the user data installs, one per architecture served;
    /// empty when the coordinator serves none (the image carries it).
    #[serde(default)]
    pub agents: Vec<AgentDownload>,
}

/// An agent binary the coordinator serves to booting nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDownload {
    /// Where nodes fetch it.
    pub url: String,
    /// Its architecture, as `uname -m` prints it.
    pub arch: String,
    /// Its SHA-256, hex; nodes install it only if this matches.
    pub sha256: String,
}
