//! Whether EC2's answers can be trusted: the AWS account the coordinator
//! acts in, and the rule that tells a read that cannot be right from one
//! that says instances are gone.
//!
//! Nothing the coordinator believes about the fleet changes on a read that
//! cannot be trusted:
//! - **The account.** At start the coordinator asks STS which account its
//!   credentials act in (GetCallerIdentity) and keeps the first answer in
//!   the store. Started later in another account (a leftover
//!   `AWS_ENDPOINT_URL`, an `AWS_PROFILE` swap), it serves the API and DNS
//!   from what it has but does not sweep, launch or remove, and says why
//!   in its log, on `/healthz` and in `muster_ec2_trusted`. Until STS has
//!   answered, the same holds: start-up waits up to
//!   [`ACCOUNT_FIRST_WAIT`] for it, then serves and asks again every
//!   [`ACCOUNT_RETRY`].
//! - **A region's answer.** A sweep whose DescribeInstances knows none of
//!   a region's tracked instances, or (with at least
//!   [`IMPLAUSIBLE_MIN_TRACKED`] of them) fewer than half, is a failed
//!   read: logged, counted in `muster_ec2_untrusted_reads_total`, and
//!   nothing moves. A fleet really losing half its instances at once shows
//!   them `shutting-down` or `terminated`, which EC2 keeps listing for an
//!   hour; only instances that vanish outright count as unknown. The cost:
//!   a region whose only instance vanished while the coordinator was away
//!   keeps its node until an operator removes it.
//! - **Absence is not final.** A node terminated only because EC2 did not
//!   know its instance comes back when its agent is heard again and EC2
//!   confirms the instance runs with its addresses, with an event saying
//!   so ([`super::lifecycle::Input::Reappeared`]).

use std::time::Duration;

use super::{Registry, RegistryError};
use crate::ec2::Ec2Clients;
use crate::store::META_ACCOUNT;

/// How long start-up waits for STS's first answer before serving without
/// it (asking again every [`ACCOUNT_RETRY`]).
pub const ACCOUNT_FIRST_WAIT: Duration = Duration::from_secs(10);

/// How often the account is asked again while it is unknown.
pub const ACCOUNT_RETRY: Duration = Duration::from_secs(30);

/// From this many tracked instances in a region on, EC2 knowing fewer than
/// half of them is implausible; below it, only knowing none is.
pub const IMPLAUSIBLE_MIN_TRACKED: usize = 4;

/// What the coordinator knows of the account EC2 answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ec2Account {
    /// Not checked (a registry built without EC2 credentials, in tests):
    /// trusted.
    Unchecked,
    /// STS has not answered yet; why.
    Unknown(String),
    /// The account the store was made in, and the credentials act in.
    Trusted(String),
    /// The credentials act in another account than the store's.
    Foreign {
        /// The store's account.
        expected: String,
        /// The credentials' account.
        actual: String,
    },
}

impl Ec2Account {
    /// Why EC2 is not trusted, or `None` if it is.
    pub fn untrusted_because(&self) -> Option<String> {
        match self {
            Ec2Account::Unchecked | Ec2Account::Trusted(_) => None,
            Ec2Account::Unknown(why) => Some(format!(
                "the AWS account the credentials act in is not known yet: {why}"
            )),
            Ec2Account::Foreign { expected, actual } => Some(format!(
                "the AWS credentials act in account {actual}, but this coordinator's nodes \
                 are in account {expected}; check AWS_PROFILE, AWS_ENDPOINT_URL and the \
                 credentials"
            )),
        }
    }
}

/// Whether a region's answer naming `known` of `tracked` instances cannot
/// be right (see the module doc).
pub fn implausible(tracked: usize, known: usize) -> bool {
    tracked > 0 && (known == 0 || (tracked >= IMPLAUSIBLE_MIN_TRACKED && known * 2 < tracked))
}

impl Registry {
    /// Asks STS which account the credentials act in, and compares it with
    /// the store's (keeping it if the store has none). Returns whether the
    /// account is known now; while it is not, call again later.
    pub async fn check_account(&self, clients: &Ec2Clients) -> Result<bool, RegistryError> {
        let view = match clients.account().await {
            Err(error) => Ec2Account::Unknown(error.to_string()),
            Ok(actual) => match self.store.meta(META_ACCOUNT)? {
                None => {
                    self.store.set_meta(META_ACCOUNT, &actual)?;
                    tracing::info!(account = %actual, "the coordinator acts in this AWS account");
                    Ec2Account::Trusted(actual)
                }
                Some(expected) if expected == actual => Ec2Account::Trusted(actual),
                Some(expected) => Ec2Account::Foreign { expected, actual },
            },
        };
        let known = !matches!(view, Ec2Account::Unknown(_));
        match view.untrusted_because() {
            Some(why) => {
                tracing::error!(%why, "EC2 is not trusted: no sweeps, launches or removals")
            }
            None => tracing::info!("EC2 account checked"),
        }
        *self.account.write().unwrap_or_else(|p| p.into_inner()) = view;
        Ok(known)
    }

    /// Marks the account as not known until [`Registry::check_account`]
    /// has STS's answer: nothing is swept, launched or removed before.
    pub fn await_account(&self) {
        *self.account.write().unwrap_or_else(|p| p.into_inner()) =
            Ec2Account::Unknown("STS has not answered yet".to_owned());
    }

    /// What the coordinator knows of the account EC2 answers for.
    pub fn ec2_account(&self) -> Ec2Account {
        self.account
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refuses what EC2 must be trusted for (sweeps, launches, removals)
    /// while it is not.
    pub(super) fn ec2_trusted(&self) -> Result<(), RegistryError> {
        match self.ec2_account().untrusted_because() {
            Some(reason) => Err(RegistryError::Ec2Untrusted(reason)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// None known is never plausible; fewer than half is not from four on.
    #[test]
    fn implausible_answers() {
        assert!(!implausible(0, 0));
        assert!(implausible(1, 0));
        assert!(!implausible(1, 1));
        assert!(
            !implausible(3, 1),
            "a small region may lose most of its nodes"
        );
        assert!(implausible(4, 1));
        assert!(!implausible(4, 2));
        assert!(implausible(100, 49));
        assert!(!implausible(100, 50));
    }
}
