//! Who may speak for a node beyond its credentials: whether a request
//! must come from the node's own address, which proxies are believed about
//! the client's, which reserved ranges count as public, how many agent
//! requests one address may make, and whose signature an instance identity
//! document must carry.

use muster_proto::cidr::{InvalidCidr, Ipv4Cidr};
use muster_proto::settings::Invalid;

use crate::number;
use crate::sources::Given;
use crate::{IdentityCerts, DEFAULT_AGENT_RATE_LIMIT};

/// Who may speak for a node, beyond its credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// Refuse agent requests from a source address that is not one of the
    /// node's (after [`Trust::trusted_proxies`]).
    pub verify_source: bool,
    /// Peers whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<Ipv4Cidr>,
    /// Reserved ranges accepted as public addresses anyway.
    pub public_ipv4_allow: Vec<Ipv4Cidr>,
    /// Agent requests per second from one source; 0 is no limit.
    pub agent_rate_limit: u32,
    /// Signers of instance identity documents: every EC2 register must
    /// carry one they signed. Settings always give AWS's shipped
    /// certificates (plus `identity_certs`), and `None` only with
    /// `insecure_no_identity_document`; `Trust::default()`, for unit tests
    /// of the library, checks nothing.
    pub identity_certs: Option<IdentityCerts>,
}

/// Checks each, in the order of the fields.
pub(crate) fn resolve(given: &Given) -> Result<Trust, Invalid> {
    let verify_source = switch("verify_source", given.verify_source.clone())?;
    let trusted_proxies = cidrs("trusted_proxies", given.trusted_proxies.clone())?;
    let public_ipv4_allow = cidrs("public_ipv4_allow", given.public_ipv4_allow.clone())?;
    let agent_rate_limit = number(
        "agent_rate_limit",
        given.agent_rate_limit.clone(),
        DEFAULT_AGENT_RATE_LIMIT,
        0..=1_000_000,
        "must be between 0 (no limit) and 1000000 requests per second",
    )?;
    let insecure = switch(
        "insecure_no_identity_document",
        given.insecure_no_identity_document.clone(),
    )?;
    let identity_certs = match (insecure, given.identity_certs.clone()) {
        (true, Some(path)) => {
            return Err(Invalid::whole(
                "identity_certs",
                path.display().to_string(),
                "adds signers to a check that insecure_no_identity_document turns off",
            ))
        }
        (true, None) => None,
        (false, Some(path)) => Some(IdentityCerts::with_file(&path).map_err(|reason| {
            Invalid::whole("identity_certs", path.display().to_string(), reason)
        })?),
        (false, None) => Some(IdentityCerts::shipped()),
    };
    Ok(Trust {
        verify_source,
        trusted_proxies,
        public_ipv4_allow,
        agent_rate_limit,
        identity_certs,
    })
}

/// A yes-or-no setting; no when not set.
fn switch(name: &'static str, text: Option<String>) -> Result<bool, Invalid> {
    let Some(text) = text else {
        return Ok(false);
    };
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(Invalid::whole(name, &text, "must be true or false")),
    }
}

/// A comma-separated list of IPv4 CIDRs; empty when not set.
fn cidrs(name: &'static str, text: Option<String>) -> Result<Vec<Ipv4Cidr>, Invalid> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse()
                .map_err(|e: InvalidCidr| Invalid::whole(name, &text, e.reason()))
        })
        .collect()
}
