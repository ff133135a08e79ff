//! The one error type of the HTTP API: a status, a stable code and a human message. Details of
//! server-side failures are logged here, once, and never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use imgclass_core::{Action, ErrorCode, TransitionError};
use imgclass_store::StoreError;
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

/// Every error response's body.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable: branch on this.
    pub code: ErrorCode,
    /// For people; its wording may change.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found() -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no job has this id",
        )
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "an internal error occurred; it has been logged",
        )
    }

    /// The HTTP status that goes with an error code.
    pub fn status_for(code: ErrorCode) -> StatusCode {
        match code {
            ErrorCode::BadRequest
            | ErrorCode::NoFiles
            | ErrorCode::InvalidStatus
            | ErrorCode::InvalidCursor => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::InvalidState => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ImageCorrupt | ErrorCode::ImageTooLarge | ErrorCode::InvalidWebhook => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited | ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::ClassificationFailed
            | ErrorCode::InjectedFailure
            | ErrorCode::Stalled
            | ErrorCode::Timeout
            | ErrorCode::ProviderAuth
            | ErrorCode::ProviderQuota
            | ErrorCode::ProviderProtocol
            | ErrorCode::ProviderRejected
            | ErrorCode::ProviderRateLimited
            | ErrorCode::ProviderUnavailable
            | ErrorCode::ProviderTimeout
            | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::new(Self::status_for(code), code, message)
    }
}

fn transition_message(e: &TransitionError) -> String {
    match e.action {
        Action::Retry => format!("only failed jobs can be retried; this job is {}", e.from),
        Action::Cancel => format!(
            "only queued or running jobs can be canceled; this job is {}",
            e.from
        ),
        _ => e.to_string(),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found(),
            StoreError::InvalidState(t) => {
                ApiError::from_code(ErrorCode::InvalidState, transition_message(&t))
            }
            StoreError::InvalidCursor => ApiError::from_code(
                ErrorCode::InvalidCursor,
                "the cursor is not one this server gave out",
            ),
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                ApiError::from_code(
                    ErrorCode::Unavailable,
                    "the database is unavailable; try again shortly",
                )
            }
            StoreError::StorageFull(detail) => {
                tracing::error!(error = %detail, "database storage full");
                ApiError::from_code(
                    ErrorCode::InsufficientStorage,
                    "the server's storage is full; nothing of this request was stored; try again \
                     once space is freed",
                )
            }
            other => ApiError::internal("database error", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_and_says_nothing_was_stored() {
        let e = ApiError::from(StoreError::StorageFull("database or disk is full".into()));
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.code, ErrorCode::InsufficientStorage);
        assert!(e.message.contains("nothing of this request was stored"));
        assert!(
            !e.message.contains("database or disk"),
            "internal detail leaked"
        );
    }
}
