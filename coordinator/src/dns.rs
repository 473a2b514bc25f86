//! DNS: the zone muster answers for, the embedded server that answers it,
//! and the loop that keeps an external DNS server at the same records.
//!
//! # Layout
//! - [`zone`]: the record model (docs/dns.md) and the live snapshot,
//!   rebuilt from the registry's nodes on every change.
//! - [`server`]: the embedded authoritative server (UDP and TCP), the
//!   default provider; its UDP answers capped in size and, by [`rrl`],
//!   in rate per source network; its TCP connections bounded by [`tcp`].
//! - [`provider`]: the trait an external server is written through, and
//!   its change vocabulary (`Change`, `Outcome`, `Applied`).
//! - [`ownership`]: the TXT records that mark muster's names, and the
//!   owner id.
//! - [`reconcile`]: the loop that drives a provider from the zone's
//!   desired records, with backoff, conflicts and a resumable state file.
//! - [`status`]: the board the loop posts its progress on, and the API
//!   reads.
//! - [`rfc2136`] and [`route53`]: the two external providers. Each depends
//!   on the zone model, the provider trait and the ownership conventions,
//!   never on its sibling; `serve` is the one place that picks one.

pub mod ownership;
pub mod provider;
pub mod reconcile;
pub mod rfc2136;
pub mod route53;
pub mod rrl;
pub mod server;
pub mod status;
pub mod tcp;
pub mod zone;

pub use server::serve;
pub use zone::{
    desired_records, name_key, DesiredRecords, NodeRecordSource, RecordData, Zone, ZoneData,
    INTERNAL_LABEL,
};

/// Errors of the DNS module.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The zone name is not a DNS name.
    #[error("zone {zone:?} is not a DNS name: {source}")]
    Zone {
        /// The zone.
        zone: String,
        /// The cause.
        source: hickory_proto::ProtoError,
    },
    /// A listening socket could not be bound.
    #[error("binding DNS {protocol} on {addr}: {source}")]
    Bind {
        /// "udp" or "tcp".
        protocol: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}
