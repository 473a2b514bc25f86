//! Error answers: the JSON body every API error carries,
//! `{"error": {"code", "message"}}`, and [`ErrorCode`], every code the
//! coordinator sends in it with the one HTTP status that goes with it.
//!
//! Codes are stable, snake_case, and what scripts and the agent match on;
//! messages are for people. A code this build does not know (a newer
//! coordinator's) still reads, as [`ErrorCode::Other`].

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A machine-readable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Stable, snake_case; scripts may match on it.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
}

impl ErrorDetail {
    /// The detail of an error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorDetail {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.error.message, self.error.code)
    }
}

/// Every code the coordinator answers an error with, and
/// [`ErrorCode::Other`] for one this build does not know.
///
/// Each code has one usual HTTP status, [`ErrorCode::http_status`]. One
/// code is sent with more than one: `invalid_json` is 400, but 413 when the
/// body is larger than [`crate::MAX_BODY_BYTES`] and 415 when it is not
/// sent as JSON; the API picks those two itself, and every other code is
/// always sent with its usual status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: a value in the request is not valid (it names itself in the
    /// message, `field="value" is not valid: why`).
    InvalidRequest,
    /// 400: the body is not the JSON asked for (413 when too large, 415
    /// when not sent as JSON).
    InvalidJson,
    /// 401: no token, or one that is not valid here.
    Unauthorized,
    /// 403: the node credential belongs to another node.
    CredentialMismatch,
    /// 403: a viewer token (or a console session) asked to change
    /// something; it reads and nothing more.
    Forbidden,
    /// 403: EC2 knows no such instance.
    InstanceNotFound,
    /// 403: the instance is not tagged with the cluster it claims.
    ClusterTagMismatch,
    /// 403: a register refused for its signed identity document (missing,
    /// badly signed, or naming another instance): the agent reads the
    /// document from IMDS again before its next try.
    IdentityUnproven,
    /// 403: the request came from an address that is not the node's.
    SourceMismatch,
    /// 404: no such cluster, node or path.
    NotFound,
    /// 405: the path does not take that method.
    MethodNotAllowed,
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 409: the instance is not running.
    InstanceNotRunning,
    /// 409: the instance does not have the addresses claimed (yet).
    AddressMismatch,
    /// 409: the instance is a node of another cluster.
    InstanceInOtherCluster,
    /// 409: the node is being or has been terminated; agents cannot bring
    /// it back (one terminated only for not being found comes back once EC2
    /// confirms it).
    NodeTerminated,
    /// 409: a cluster of that name exists.
    ClusterExists,
    /// 409: the cluster is being removed.
    ClusterNotActive,
    /// 409: another node of the cluster has that name.
    NameTaken,
    /// 409: the instance's node is live (heard within the grace) and the
    /// register proves nothing more than a join token: no signed identity
    /// document checked, no source checked. It is accepted once the node
    /// has been silent for the grace; the agent keeps trying.
    NodeLive,
    /// 409: another request changed or took, at the same time, what this
    /// one was decided from (a register meeting `node rm`, two machines
    /// taking one name); nothing was written. Try again.
    Conflict,
    /// 422: EC2 refused the launch as asked (bad AMI, type, subnet, …).
    LaunchRefused,
    /// 429: too many agent requests from one address.
    RateLimited,
    /// 500: something failed on the coordinator's side.
    Internal,
    /// 502: the launch failed in EC2.
    LaunchFailed,
    /// 503: EC2 could not be asked.
    Ec2Unavailable,
    /// 503: EC2 answers for another AWS account than the coordinator's
    /// nodes are in (or the account is not known yet), so nothing is
    /// launched, swept or removed.
    Ec2Untrusted,
    /// 503: the agent binary the coordinator serves cannot be read.
    AgentUnavailable,
    /// 421: this coordinator stands by while another leads, and the
    /// change asked for is made by the leader only, and could not be
    /// passed on to it (it came passed on already, from a coordinator
    /// that took this one for the leader); the message names the leader.
    /// Nothing was written.
    NotLeader,
    /// 503: this coordinator stands by, and the change asked for, made by
    /// the leader only, could not be passed on: no coordinator leads right
    /// now, or the leader did not answer. Nothing was written here; try
    /// again.
    LeaderUnavailable,
    /// 503: the store's database cannot be reached (PostgreSQL away):
    /// nothing was written; try again.
    StoreUnavailable,
    /// A code this build does not know, as sent (500 as far as this build
    /// can tell). The agent also keeps an answer not in the error shape
    /// (from a proxy) as `http_<status>`.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    /// Every code this build knows, in order of HTTP status.
    pub const KNOWN: [ErrorCode; 31] = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidJson,
        ErrorCode::Unauthorized,
        ErrorCode::CredentialMismatch,
        ErrorCode::Forbidden,
        ErrorCode::InstanceNotFound,
        ErrorCode::ClusterTagMismatch,
        ErrorCode::IdentityUnproven,
        ErrorCode::SourceMismatch,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::InstanceNotRunning,
        ErrorCode::AddressMismatch,
        ErrorCode::InstanceInOtherCluster,
        ErrorCode::NodeTerminated,
        ErrorCode::ClusterExists,
        ErrorCode::ClusterNotActive,
        ErrorCode::NameTaken,
        ErrorCode::NodeLive,
        ErrorCode::Conflict,
        ErrorCode::NotLeader,
        ErrorCode::LaunchRefused,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::LaunchFailed,
        ErrorCode::Ec2Unavailable,
        ErrorCode::Ec2Untrusted,
        ErrorCode::AgentUnavailable,
        ErrorCode::StoreUnavailable,
        ErrorCode::LeaderUnavailable,
    ];

    /// The snake_case name sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::CredentialMismatch => "credential_mismatch",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InstanceNotFound => "instance_not_found",
            ErrorCode::ClusterTagMismatch => "cluster_tag_mismatch",
            ErrorCode::IdentityUnproven => "identity_unproven",
            ErrorCode::SourceMismatch => "source_mismatch",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::InstanceNotRunning => "instance_not_running",
            ErrorCode::AddressMismatch => "address_mismatch",
            ErrorCode::InstanceInOtherCluster => "instance_in_other_cluster",
            ErrorCode::NodeTerminated => "node_terminated",
            ErrorCode::ClusterExists => "cluster_exists",
            ErrorCode::ClusterNotActive => "cluster_not_active",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::NodeLive => "node_live",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::LaunchRefused => "launch_refused",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::LaunchFailed => "launch_failed",
            ErrorCode::Ec2Unavailable => "ec2_unavailable",
            ErrorCode::Ec2Untrusted => "ec2_untrusted",
            ErrorCode::AgentUnavailable => "agent_unavailable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::LeaderUnavailable => "leader_unavailable",
            ErrorCode::Other(code) => code,
        }
    }

    /// The HTTP status this code is sent with (see the type's doc for the
    /// two other statuses `invalid_json` may come with).
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::InvalidJson => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::CredentialMismatch
            | ErrorCode::Forbidden
            | ErrorCode::InstanceNotFound
            | ErrorCode::ClusterTagMismatch
            | ErrorCode::IdentityUnproven
            | ErrorCode::SourceMismatch => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::InstanceNotRunning
            | ErrorCode::AddressMismatch
            | ErrorCode::InstanceInOtherCluster
            | ErrorCode::NodeTerminated
            | ErrorCode::ClusterExists
            | ErrorCode::ClusterNotActive
            | ErrorCode::NameTaken
            | ErrorCode::NodeLive
            | ErrorCode::Conflict => 409,
            ErrorCode::NotLeader => 421,
            ErrorCode::LaunchRefused => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal | ErrorCode::Other(_) => 500,
            ErrorCode::LaunchFailed => 502,
            ErrorCode::Ec2Unavailable
            | ErrorCode::Ec2Untrusted
            | ErrorCode::AgentUnavailable
            | ErrorCode::StoreUnavailable
            | ErrorCode::LeaderUnavailable => 503,
        }
    }
}

impl From<&str> for ErrorCode {
    /// The code named `code`; [`ErrorCode::Other`] only for a name this
    /// build does not know.
    fn from(code: &str) -> Self {
        ErrorCode::KNOWN
            .into_iter()
            .find(|known| known.as_str() == code)
            .unwrap_or_else(|| ErrorCode::Other(code.to_owned()))
    }
}

impl FromStr for ErrorCode {
    type Err = Infallible;

    fn from_str(code: &str) -> Result<Self, Infallible> {
        Ok(ErrorCode::from(code))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every known code goes through JSON as its snake_case name and comes
    /// back as itself; `as_str` is that same name.
    #[test]
    fn codes_round_trip_through_serde() {
        for code in ErrorCode::KNOWN {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()), "{code:?}");
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
            assert_eq!(ErrorCode::from(code.as_str()), code);
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    /// The names are distinct snake_case words, and each has a 4xx or 5xx
    /// status.
    #[test]
    fn codes_are_distinct_errors() {
        let mut names: Vec<&str> = ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        assert!(names.iter().all(|n| n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::KNOWN.len());
        for code in ErrorCode::KNOWN {
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
    }

    /// The statuses the coordinator has always sent for these codes.
    #[test]
    fn usual_statuses() {
        let status = |code: &str| ErrorCode::from(code).http_status();
        assert_eq!(status("invalid_json"), 400);
        assert_eq!(status("unauthorized"), 401);
        assert_eq!(status("identity_unproven"), 403);
        assert_eq!(status("address_mismatch"), 409);
        assert_eq!(status("launch_refused"), 422);
        assert_eq!(status("rate_limited"), 429);
        assert_eq!(status("launch_failed"), 502);
        assert_eq!(status("ec2_unavailable"), 503);
    }

    /// A code from a newer coordinator reads as `Other`, and is sent on
    /// as it came.
    #[test]
    fn unknown_codes_still_read() {
        let code: ErrorCode = serde_json::from_str("\"quota_exceeded\"").unwrap();
        assert_eq!(code, ErrorCode::Other("quota_exceeded".into()));
        assert_eq!(code, "quota_exceeded");
        assert_eq!(serde_json::to_string(&code).unwrap(), "\"quota_exceeded\"");
        let body: ErrorBody =
            serde_json::from_str(r#"{"error": {"code": "quota_exceeded", "message": "no"}}"#)
                .unwrap();
        assert_eq!(body.error.code, code);
    }

    /// The error body has exactly the documented shape.
    #[test]
    fn error_body_shape() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: "bad_request".into(),
                message: "no".into(),
            },
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "bad_request", "message": "no"}})
        );
    }

    /// A detail made from a code carries its name, and reads back as it.
    #[test]
    fn error_detail_from_a_code() {
        let body = ErrorBody {
            error: ErrorDetail::new(ErrorCode::InvalidRequest, "no"),
        };
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "invalid_request", "message": "no"}})
        );
        assert_eq!(body.error.code, ErrorCode::InvalidRequest);
        assert_eq!(body.to_string(), "no (invalid_request)");
    }
}
