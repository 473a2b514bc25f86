//! How the reconcile loop's progress is shown: the status board it writes
//! and the API (`GET /v1/dns/status`, `/metrics`) reads.
//!
//! The board is empty with the embedded server alone, which is current by
//! construction.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::provider::LastChange;

/// Progress of a provider, for `GET /v1/dns/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStatus {
    /// The provider kind.
    pub provider: String,
    /// Where the records go.
    pub target: String,
    /// This coordinator's owner id.
    pub owner: String,
    /// Names whose change is not applied yet.
    pub pending_changes: usize,
    /// The first of those names.
    pub pending: Vec<String>,
    /// Names muster wants but does not own, with why.
    pub conflicts: BTreeMap<String, String>,
    /// Names applied.
    pub applied_names: usize,
    /// Unix time of the last pass that reached the server without error.
    pub last_success_unix: Option<u64>,
    /// Unix time of the last full pass that succeeded.
    pub last_full_reconcile_unix: Option<u64>,
    /// The last error, until a pass succeeds.
    pub last_error: Option<String>,
    /// Passes that failed since start.
    pub failures_total: u64,
    /// Changes applied since start.
    pub applied_total: u64,
    /// Answers that told muster to slow down, since start (each retried).
    pub throttled_total: u64,
    /// The last change submitted, where the server applies changes later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<LastChange>,
}

/// Where the reconcile loop posts its [`ProviderStatus`] for the API.
#[derive(Debug, Default)]
pub struct StatusBoard {
    status: Mutex<Option<ProviderStatus>>,
}

impl StatusBoard {
    /// How far the external provider has got with the desired records;
    /// `None` with the embedded server alone, which is always current.
    pub fn get(&self) -> Option<ProviderStatus> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the provider's progress.
    pub fn set(&self, status: ProviderStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    /// Changes the recorded progress in place, if there is any.
    pub fn update(&self, change: impl FnOnce(&mut ProviderStatus)) {
        if let Some(status) = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            change(status);
        }
    }
}
