//! Error answers: every one is JSON `{"error": {"code", "message"}}`,
//! with the status its code maps to. Bad input is a 4xx; a 5xx is our
//! own fault or EC2 being unavailable, and is logged.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use muster_proto::{ErrorBody, ErrorCode, ErrorDetail};

use crate::registry::RegistryError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// An answer with `code`, sent with the code's status
    /// ([`ErrorCode::http_status`]: the one place codes meet statuses).
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
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
            error: ErrorDetail::new(self.code, self.message),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let answer = ApiError::new(error.code(), error.to_string());
        if answer.status.is_server_error() {
            tracing::error!(%error, "request failed on our side");
        }
        answer
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
        // invalid_json is the one code sent with more than its usual
        // status (see ErrorCode).
        ApiError {
            status,
            code: ErrorCode::InvalidJson,
            message: rejection.body_text(),
        }
    }
}
