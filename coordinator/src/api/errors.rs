//! Error answers: every one is JSON `{"error": {"code", "message"}}`,
//! with the status its code maps to. Bad input is a 4xx; a 5xx is our
//! own fault or EC2 being unavailable, and is logged.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use muster_proto::{ErrorBody, ErrorDetail};

use crate::registry::RegistryError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let status = match &error {
            RegistryError::Invalid(_) => StatusCode::BAD_REQUEST,
            RegistryError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            RegistryError::CredentialMismatch { .. }
            | RegistryError::InstanceNotFound { .. }
            | RegistryError::ClusterTagMismatch { .. }
            | RegistryError::IdentityUnproven { .. } => StatusCode::FORBIDDEN,
            RegistryError::SourceMismatch { .. } => StatusCode::FORBIDDEN,
            RegistryError::InstanceNotRunning { .. }
            | RegistryError::AddressMismatch { .. }
            | RegistryError::InstanceInOtherCluster { .. }
            | RegistryError::NodeTerminated { .. }
            | RegistryError::ClusterExists(_)
            | RegistryError::NameTaken { .. }
            | RegistryError::ClusterNotActive { .. } => StatusCode::CONFLICT,
            RegistryError::Launch(e) if e.is_bad_request() => StatusCode::UNPROCESSABLE_ENTITY,
            RegistryError::Launch(_) => StatusCode::BAD_GATEWAY,
            RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
            RegistryError::Ec2(_) => StatusCode::SERVICE_UNAVAILABLE,
            RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RegistryError::Agent(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status.is_server_error() {
            tracing::error!(%error, "request failed on our side");
        }
        ApiError::new(status, error.code(), error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match &rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(b) if b.body_text().contains("length limit") => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid_json", rejection.body_text())
    }
}
