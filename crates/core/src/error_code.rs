//! Stable machine-readable error codes. Their text never changes once published.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Every error imgclass reports, on a job or in an API response, carries one of these codes.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Request errors.
    BadRequest,
    NoFiles,
    NotFound,
    InvalidState,
    InvalidStatus,
    InvalidCursor,
    PayloadTooLarge,
    UnsupportedMediaType,
    ImageCorrupt,
    ImageTooLarge,
    EmptyFile,
    InvalidQuery,
    MethodNotAllowed,
    RequestTimeout,
    HeadersTooLarge,
    Unauthorized,
    Forbidden,
    RateLimited,
    QueueFull,
    /// A submission's webhook URL is not one the server calls.
    InvalidWebhook,
    /// A submission names a model that no node has ever served.
    UnknownModel,
    /// The `Idempotency-Key` header is not a key the server accepts.
    InvalidIdempotencyKey,
    /// The `Idempotency-Key` was first used with a different request.
    IdempotencyKeyMismatch,
    /// A request with the same `Idempotency-Key` is still being processed.
    IdempotencyKeyInUse,
    // Job errors.
    ClassificationFailed,
    InjectedFailure,
    Stalled,
    Timeout,
    /// The classification provider refused the credentials.
    ProviderAuth,
    /// The classification provider's quota or plan limit is used up.
    ProviderQuota,
    /// The classification provider answered something that does not follow its protocol.
    ProviderProtocol,
    /// The classification provider refused this image or request.
    ProviderRejected,
    /// The classification provider asked us to slow down (HTTP 429).
    ProviderRateLimited,
    /// The classification provider could not be reached or failed on its side (network, 5xx).
    ProviderUnavailable,
    /// The classification provider did not answer within `--provider-timeout`.
    ProviderTimeout,
    // Server errors.
    Internal,
    Unavailable,
    InsufficientStorage,
    /// The server holds as many upload bytes as its budget allows, and the wait for room would
    /// be long (503 with `Retry-After`).
    Busy,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 39] = [
        ErrorCode::BadRequest,
        ErrorCode::NoFiles,
        ErrorCode::NotFound,
        ErrorCode::InvalidState,
        ErrorCode::InvalidStatus,
        ErrorCode::InvalidCursor,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::ImageCorrupt,
        ErrorCode::ImageTooLarge,
        ErrorCode::EmptyFile,
        ErrorCode::InvalidQuery,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RequestTimeout,
        ErrorCode::HeadersTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::QueueFull,
        ErrorCode::InvalidWebhook,
        ErrorCode::UnknownModel,
        ErrorCode::InvalidIdempotencyKey,
        ErrorCode::IdempotencyKeyMismatch,
        ErrorCode::IdempotencyKeyInUse,
        ErrorCode::ClassificationFailed,
        ErrorCode::InjectedFailure,
        ErrorCode::Stalled,
        ErrorCode::Timeout,
        ErrorCode::ProviderAuth,
        ErrorCode::ProviderQuota,
        ErrorCode::ProviderProtocol,
        ErrorCode::ProviderRejected,
        ErrorCode::ProviderRateLimited,
        ErrorCode::ProviderUnavailable,
        ErrorCode::ProviderTimeout,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::InsufficientStorage,
        ErrorCode::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NoFiles => "no_files",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::InvalidStatus => "invalid_status",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::ImageCorrupt => "image_corrupt",
            ErrorCode::ImageTooLarge => "image_too_large",
            ErrorCode::EmptyFile => "empty_file",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::InvalidWebhook => "invalid_webhook",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::InvalidIdempotencyKey => "invalid_idempotency_key",
            ErrorCode::IdempotencyKeyMismatch => "idempotency_key_mismatch",
            ErrorCode::IdempotencyKeyInUse => "idempotency_key_in_use",
            ErrorCode::ClassificationFailed => "classification_failed",
            ErrorCode::InjectedFailure => "injected_failure",
            ErrorCode::Stalled => "stalled",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ProviderAuth => "provider_auth",
            ErrorCode::ProviderQuota => "provider_quota",
            ErrorCode::ProviderProtocol => "provider_protocol",
            ErrorCode::ProviderRejected => "provider_rejected",
            ErrorCode::ProviderRateLimited => "provider_rate_limited",
            ErrorCode::ProviderUnavailable => "provider_unavailable",
            ErrorCode::ProviderTimeout => "provider_timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::Busy => "busy",
        }
    }

    /// Whether another attempt could succeed where this one failed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::ClassificationFailed
                | ErrorCode::InjectedFailure
                | ErrorCode::Timeout
                | ErrorCode::ProviderRateLimited
                | ErrorCode::ProviderUnavailable
                | ErrorCode::ProviderTimeout
                | ErrorCode::Internal
                | ErrorCode::Unavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown error code {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(c.as_str().parse::<ErrorCode>().unwrap(), c);
        }
    }

    #[test]
    fn bad_images_are_not_retried() {
        assert!(!ErrorCode::ImageCorrupt.is_retryable());
        assert!(!ErrorCode::UnsupportedMediaType.is_retryable());
        assert!(ErrorCode::InjectedFailure.is_retryable());
    }

    #[test]
    fn a_provider_that_refuses_us_is_not_asked_again() {
        for c in [
            ErrorCode::ProviderAuth,
            ErrorCode::ProviderQuota,
            ErrorCode::ProviderProtocol,
            ErrorCode::ProviderRejected,
        ] {
            assert!(!c.is_retryable(), "{c}");
        }
        for c in [
            ErrorCode::ProviderRateLimited,
            ErrorCode::ProviderUnavailable,
            ErrorCode::ProviderTimeout,
        ] {
            assert!(c.is_retryable(), "{c}");
        }
    }
}
