//! HTTP API paths. Everything the coordinator serves lives under `/v1/`,
//! except the health and metrics endpoints, which follow their own
//! conventions.

/// Agent: register (join token or node credential).
pub const AGENT_REGISTER: &str = "/v1/agent/register";
/// Agent: heartbeat (node credential).
pub const AGENT_HEARTBEAT: &str = "/v1/agent/heartbeat";
/// Admin: list clusters (GET), create one (POST).
pub const CLUSTERS: &str = "/v1/clusters";
/// Admin: one cluster, `{name}`: read it (GET), remove it (DELETE).
pub const CLUSTER: &str = "/v1/clusters/{name}";
/// Admin: grow or shrink a launched cluster (POST).
pub const CLUSTER_SCALE: &str = "/v1/clusters/{name}/scale";
/// Admin: mint a bring-your-own token for a cluster (POST).
pub const CLUSTER_BYON_TOKEN: &str = "/v1/clusters/{name}/byon-token";
/// Admin: replace a cluster's join token, optionally with an expiry (POST).
pub const CLUSTER_ROTATE_TOKEN: &str = "/v1/clusters/{name}/rotate-token";
/// Admin: add to the lifetime of a cluster that has one (POST).
pub const CLUSTER_EXTEND: &str = "/v1/clusters/{name}/extend";
/// Admin: a cluster's tokens, never their secrets (GET).
pub const CLUSTER_TOKENS: &str = "/v1/clusters/{name}/tokens";
/// Admin: revoke one of a cluster's tokens at once (DELETE).
pub const CLUSTER_TOKEN: &str = "/v1/clusters/{name}/tokens/{id}";
/// Admin: let a bring-your-own machine removed by `node rm` join again
/// (DELETE: the ban goes).
pub const CLUSTER_BAN: &str = "/v1/clusters/{name}/bans/{machine}";
/// Admin: replace the admin token (POST).
pub const ADMIN_ROTATE_TOKEN: &str = "/v1/admin/rotate-token";
/// Admin: issue a new viewer token (POST), which reads the admin API and
/// the console and writes nothing; the one before it stops working.
pub const ADMIN_VIEWER_TOKEN: &str = "/v1/admin/viewer-token";
/// Admin: the coordinator's own status (GET): version, uptime, EC2's
/// standing, connections, who is asking.
pub const STATUS: &str = "/v1/status";
/// Admin: the fleet over the last hour (GET), as the coordinator sampled it
/// in memory: nodes by state and heartbeats per second.
pub const FLEET_HISTORY: &str = "/v1/fleet/history";
/// Admin: how far the external DNS provider has got (GET).
pub const DNS_STATUS: &str = "/v1/dns/status";
/// Admin: what a node's names answer on the embedded DNS right now (GET).
pub const NODE_DNS: &str = "/v1/nodes/{cluster}/{name}/dns";
/// Admin: render the user data launched nodes boot with, minting a fresh
/// join token for it (POST).
pub const CLUSTER_USERDATA: &str = "/v1/clusters/{name}/userdata";
/// Node bootstrap, unauthenticated: the agent binary (`muster-agent`) or
/// its Debian package (`muster-agent.deb`) for one OS and architecture,
/// e.g. `/v1/agent/linux/x86_64/muster-agent`.
pub const AGENT_DOWNLOAD: &str = "/v1/agent/{os}/{arch}/{file}";
/// Admin: list nodes; `?cluster=NAME` narrows to one cluster.
pub const NODES: &str = "/v1/nodes";
/// Admin: one node, by cluster and node name.
pub const NODE: &str = "/v1/nodes/{cluster}/{name}";
/// Admin: drain a node (POST): out of its cluster's round robin until
/// undrained.
pub const NODE_DRAIN: &str = "/v1/nodes/{cluster}/{name}/drain";
/// Admin: lift a node's drain (POST).
pub const NODE_UNDRAIN: &str = "/v1/nodes/{cluster}/{name}/undrain";
/// Admin: one node's events, paged (`?after=SEQ&limit=N`).
pub const NODE_EVENTS: &str = "/v1/nodes/{cluster}/{name}/events";
/// Admin: an online, consistent copy of the store (POST), as a SQLite
/// file; `muster-coordinator restore` brings it back.
pub const BACKUP: &str = "/v1/backup";
/// Liveness: 200 while the coordinator serves.
pub const HEALTHZ: &str = "/healthz";
/// Prometheus text metrics.
pub const METRICS: &str = "/metrics";

/// The path of one cluster.
pub fn cluster(name: &str) -> String {
    format!("{CLUSTERS}/{name}")
}

/// The path of one node.
pub fn node(cluster: &str, name: &str) -> String {
    format!("{NODES}/{cluster}/{name}")
}

/// The scale path of one cluster.
pub fn cluster_scale(name: &str) -> String {
    format!("{CLUSTERS}/{name}/scale")
}

/// The bring-your-own token path of one cluster.
pub fn cluster_byon_token(name: &str) -> String {
    format!("{CLUSTERS}/{name}/byon-token")
}

/// The tokens path of one cluster.
pub fn cluster_tokens(name: &str) -> String {
    format!("{CLUSTERS}/{name}/tokens")
}

/// The path of one of a cluster's tokens.
pub fn cluster_token(name: &str, id: &str) -> String {
    format!("{CLUSTERS}/{name}/tokens/{id}")
}

/// The path of a bring-your-own machine's ban from a cluster.
pub fn cluster_ban(name: &str, machine: &str) -> String {
    format!("{CLUSTERS}/{name}/bans/{machine}")
}

/// The join-token rotation path of one cluster.
pub fn cluster_rotate_token(name: &str) -> String {
    format!("{CLUSTERS}/{name}/rotate-token")
}

/// The lifetime extension path of one cluster.
pub fn cluster_extend(name: &str) -> String {
    format!("{CLUSTERS}/{name}/extend")
}

/// The user data path of one cluster.
pub fn cluster_userdata(name: &str) -> String {
    format!("{CLUSTERS}/{name}/userdata")
}

/// The download path of an agent file (`muster-agent`, `muster-agent.deb`)
/// for Linux on `arch` (`x86_64`, `aarch64`, as `uname -m` prints it).
pub fn agent_download(arch: &str, file: &str) -> String {
    format!("/v1/agent/linux/{arch}/{file}")
}
