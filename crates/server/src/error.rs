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
    /// Sent as `Retry-After` (whole seconds, at least 1).
    pub retry_after: Option<std::time::Duration>,
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
            retry_after: None,
        }
    }

    /// The same error, telling the client when to try again.
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self
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
            | ErrorCode::InvalidCursor
            | ErrorCode::InvalidQuery
            | ErrorCode::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::InvalidState | ErrorCode::IdempotencyKeyInUse => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::ImageCorrupt
            | ErrorCode::ImageTooLarge
            | ErrorCode::EmptyFile
            | ErrorCode::InvalidWebhook
            | ErrorCode::UnknownModel
            | ErrorCode::IdempotencyKeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited | ErrorCode::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable | ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
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
        Action::Retry => format!(
            "only failed or canceled jobs can be retried; this job is {}",
            e.from
        ),
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
                    "the database is unavailable; try again after Retry-After seconds (GET /readyz \
                     says why)",
                )
                .with_retry_after(std::time::Duration::from_secs(5))
            }
            StoreError::ImagesUnavailable(detail) => {
                tracing::warn!(error = %detail, "image store unavailable");
                ApiError::from_code(
                    ErrorCode::Unavailable,
                    "the image store is unavailable; nothing of this request was stored; try \
                     again after Retry-After seconds (GET /readyz says why)",
                )
                .with_retry_after(std::time::Duration::from_secs(5))
            }
            StoreError::Raced(detail) => {
                tracing::warn!(error = %detail, "a write raced a concurrent change");
                ApiError::from_code(
                    ErrorCode::Unavailable,
                    "a concurrent change got in the way; nothing of this request was stored; try \
                     again",
                )
                .with_retry_after(std::time::Duration::from_secs(1))
            }
            StoreError::StorageFull(detail) => {
                tracing::error!(error = %detail, "database storage full");
                ApiError::from_code(
                    ErrorCode::InsufficientStorage,
                    "the server's storage is full; nothing of this request was stored; try again \
                     once space is freed",
                )
            }
            StoreError::KeyLost => ApiError::from_code(
                ErrorCode::IdempotencyKeyInUse,
                "another request with this Idempotency-Key took it over; nothing of this request \
                 was stored",
            ),
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
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        resp
    }
}

/// The stable code for an error status that something other than a handler produced (axum's
/// extractors and routing, tower layers).
fn code_for_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ErrorCode::HeadersTooLarge,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Middleware: every error response under `/api` is `{"error": {"code", "message"}}`, also
/// those that axum (unknown routes, wrong methods, extractor rejections) or a tower layer made
/// with a plain-text or empty body. Their status and headers (`Allow`, ...) are kept.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let is_api = path == "/api" || path.starts_with("/api/");
    if !is_api {
        return next.run(request).await;
    }
    let method = request.method().clone();
    let path: String = path.chars().take(200).collect();
    let resp = next.run(request).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let code = code_for_status(status);
    let text = if status.is_server_error() {
        // Never pass on what a server-side failure said.
        tracing::error!(status = status.as_u16(), %method, path, "error response without details");
        String::new()
    } else {
        axum::body::to_bytes(body, 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default()
    };
    let message = match code {
        ErrorCode::NotFound => format!("there is nothing at {method} {path}"),
        // axum adds the `Allow` header outside this middleware, so it is named, not copied.
        ErrorCode::MethodNotAllowed => format!(
            "{method} is not allowed on {path}; the Allow header lists the methods that are"
        ),
        ErrorCode::Internal => "an internal error occurred; it has been logged".to_string(),
        _ if !text.is_empty() => text,
        _ => status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_string(),
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    out
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
