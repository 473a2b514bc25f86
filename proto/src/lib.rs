//! The muster wire protocol: what the agent and the coordinator say to each
//! other, and what the admin CLI reads back.
//!
//! This is the only crate both sides link. It does no network I/O and has
//! no runtime (no tokio): plain serde types, the API paths and protocol
//! version as constants, and the validation of everything that comes off the
//! wire, so that both ends refuse the same inputs for the same reasons.
//!
//! One helper touches the file system, on purpose: [`fsutil::write_durably`],
//! plain `std`, because both binaries write files that must survive a crash
//! whole and this is the one crate they share.
//!
//! # Layout
//! - [`paths`]: the HTTP API paths and the protocol version.
//! - [`validate`]: instance ids, IPv4 addresses, DNS labels (RFC 1123), sizes.
//! - [`cidr`]: IPv4 CIDR blocks ([`cidr::Ipv4Cidr`]), the one type for them.
//! - [`fsutil`]: [`fsutil::write_durably`], the one durable file write.
//! - [`settings`]: what both binaries' settings share: the
//!   `NAME="value" is not valid: why` error, its exit code, durations.
//! - [`token`]: the prefixed secrets (join token, node credential, admin
//!   token, viewer token).
//! - [`status`]: the coordinator's status, the fleet's last hour, and what
//!   a node's names answer: what the console draws.
//! - [`launch`]: launching nodes on EC2: the launch spec, provider options,
//!   scale and launch reports.
//! - the wire types at the crate root, from files of their own: the agent
//!   API (`agent_api.rs`: register, heartbeat, host facts), nodes
//!   (`node.rs`: states, views, events), clusters (`cluster.rs`: views,
//!   tokens, the rendered user data and the agent download it pins), and
//!   the JSON error body with [`ErrorCode`], every code the coordinator sends
//!   and its HTTP status (`error.rs`).

#![forbid(unsafe_code)]

mod agent_api;
pub mod cidr;
mod cluster;
pub mod condition;
mod error;
pub mod fsutil;
pub mod launch;
mod node;
pub mod paths;
pub mod settings;
pub mod status;
pub mod token;
pub mod validate;

pub use agent_api::{
    byon_node_id, ByonIdentity, DiskUsage, HeartbeatRequest, HeartbeatResponse, HostFacts,
    RegisterRequest, RegisterResponse, SignedIdentity, MAX_IDENTITY_BYTES,
};
pub use cluster::{
    AdminTokenResponse, AgentDownload, ByonTokenRequest, ByonTokenResponse, ClusterState,
    ClusterView, CreateClusterRequest, CreateClusterResponse, ExtendClusterRequest,
    RotateTokenRequest, RotateTokenResponse, TokenView, UserDataRequest, UserDataResponse,
    DEFAULT_BYON_MAX_NODES, MAX_BYON_MAX_NODES, MAX_TOKEN_LIFETIME_SECS,
};
pub use condition::{CheckKind, CheckReport, Ec2Notice, NoticeKind};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use node::{
    EventPage, EventSource, NodeDetail, NodeEvent, NodeState, NodeView, EVENTS_IN_DETAIL,
    MAX_EVENTS_PER_PAGE,
};
pub use validate::ValidationError;

/// The protocol version this build speaks. A register carries it; the
/// coordinator refuses versions it does not know.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request body either API accepts, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Most disks one heartbeat may report.
pub const MAX_DISKS: usize = 16;

/// Longest free-text field (OS name, kernel, mount path, agent version).
pub const MAX_TEXT_LEN: usize = 256;

/// The fully qualified names of a node, without the trailing dot.
pub fn node_dns_name(node: &str, cluster: &str, zone: &str) -> String {
    format!("{node}.{cluster}.{zone}")
}

/// The internal (private address) name of a node, without the trailing dot.
pub fn node_internal_dns_name(node: &str, cluster: &str, zone: &str) -> String {
    format!("{node}.{cluster}.internal.{zone}")
}

/// The round-robin name of a cluster, without the trailing dot.
pub fn cluster_dns_name(cluster: &str, zone: &str) -> String {
    format!("{cluster}.{zone}")
}
