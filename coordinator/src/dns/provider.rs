//! The DNS provider trait and its change vocabulary: what the reconcile
//! loop asks of a server it writes records to.
//!
//! A provider imports this module and the zone's [`RecordData`], and
//! nothing of its siblings; the trait names no provider. `serve` is the one
//! place that knows every provider and picks one from the settings.

use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

use super::RecordData;

/// What stopped a provider's batch (the rest stays pending): the
/// provider's own error, boxed, so the trait names no provider.
pub type ProviderError = Box<dyn std::error::Error + Send + Sync>;

/// One change to one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Make `name` hold `data`.
    Upsert {
        /// The name.
        name: Name,
        /// Its records.
        data: RecordData,
        /// Whether muster believes it owns the name already.
        owned: bool,
    },
    /// Remove `name`, if muster owns it.
    Delete {
        /// The name.
        name: Name,
    },
}

/// What became of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or, for a delete, nothing of ours is left).
    Applied,
    /// The name belongs to someone else and was left alone; why.
    Conflict(String),
}

/// What a provider did with a batch.
#[derive(Debug)]
pub struct Applied {
    /// One outcome for each of the first changes, in order; changes past
    /// them were not decided.
    pub outcomes: Vec<Outcome>,
    /// What stopped the batch, if anything did.
    pub error: Option<ProviderError>,
}

/// A change submitted to a server that applies it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastChange {
    /// The server's id of the change.
    pub id: String,
    /// `PENDING` or `INSYNC`, as last heard.
    pub status: String,
    /// When it was submitted (RFC 3339).
    pub submitted_at: String,
}

impl LastChange {
    /// Whether the server has not applied it everywhere yet.
    pub fn is_pending(&self) -> bool {
        self.status == "PENDING"
    }
}

/// A DNS server muster writes its records to.
#[async_trait::async_trait]
pub trait DnsProvider: Send + Sync + std::fmt::Debug {
    /// `rfc2136` or `route53`.
    fn kind(&self) -> &'static str;
    /// Where the records go, for humans (server and zone).
    fn target(&self) -> String;
    /// Applies `changes` in order, each guarded by ownership.
    async fn apply(&self, changes: &[Change]) -> Applied;
    /// The last change submitted, for servers that apply changes later.
    fn last_change(&self) -> Option<LastChange> {
        None
    }
    /// Asks the server how far the last change has got.
    async fn refresh_last_change(&self) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Answers that told muster to slow down (throttling), since start.
    fn throttled_total(&self) -> u64 {
        0
    }
}
