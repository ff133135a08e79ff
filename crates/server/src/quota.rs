//! Quotas: a request rate and a submission rate per token (per client address while the API is
//! open), counted in the database so that every API node shares them, and a limit on how many
//! of a token's jobs may wait in the queue. Over a rate: `429 rate_limited` with `Retry-After`;
//! every answer under a request quota carries `RateLimit-Limit`, `-Remaining` and `-Reset`.

use crate::caller::Caller;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use imgclass_core::ErrorCode;
use imgclass_store::{QuotaTake, RateLimit, Store};
use std::sync::Arc;

/// The quotas of `serve --quota-requests`, `--quota-submissions`, `--max-queued-per-token`.
#[derive(Debug, Clone, Default)]
pub struct QuotaConfig {
    /// Requests to `/api/*` per token (or client address).
    pub requests: Option<RateLimit>,
    /// Jobs submitted per token (or client address).
    pub submissions: Option<RateLimit>,
    /// Queued jobs a token may have; a submission that would go over is refused.
    pub max_queued_per_token: Option<u64>,
}

/// Whose quota a request takes from: its token, or its client's address.
pub(crate) fn who(caller: &Caller, parts: &Parts) -> String {
    match caller.token_id() {
        Some(id) => format!("t={id}"),
        None => {
            let addr = parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string());
            format!("ip={}", addr.unwrap_or_else(|| "unknown".into()))
        }
    }
}

fn secs_up(d: std::time::Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// The `RateLimit-*` headers (and `Retry-After` when refused) of a take.
pub(crate) fn set_headers(headers: &mut HeaderMap, take: &QuotaTake) {
    let mut put = |name: &'static str, v: u64| {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(v));
    };
    put("ratelimit-limit", u64::from(take.limit));
    put("ratelimit-remaining", u64::from(take.remaining));
    put("ratelimit-reset", secs_up(take.reset));
    if let Some(wait) = take.retry_after {
        put("retry-after", secs_up(wait));
    }
}

/// The `429 rate_limited` answer of a refused take.
pub(crate) fn refused(take: &QuotaTake, what: &str) -> Response {
    let wait = take.retry_after.map_or(1, secs_up);
    let mut resp = ApiError::from_code(
        ErrorCode::RateLimited,
        format!(
            "too many {what}: at most {} allowed; try again in {wait} s",
            take.limit
        ),
    )
    .into_response();
    set_headers(resp.headers_mut(), take);
    resp
}

/// Takes one request from the caller's request quota. `Ok(None)` when there is no quota.
pub(crate) async fn take_request(
    store: &dyn Store,
    config: &QuotaConfig,
    who: &str,
) -> Result<Option<QuotaTake>, Response> {
    let Some(rate) = config.requests else {
        return Ok(None);
    };
    let take = store
        .take_quota(&format!("req:{who}"), 1, rate.jobs, rate.per)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    if take.allowed {
        Ok(Some(take))
    } else {
        Err(refused(&take, "requests"))
    }
}

/// What `POST /api/jobs` asks before it stores anything: may this caller queue `n` more jobs?
#[derive(Clone)]
pub struct Admission {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Arc<QuotaConfig>,
    pub(crate) who: String,
    pub(crate) caller: Caller,
}

impl Admission {
    /// `Err` holds the answer to send instead: `429 queue_full` or `429 rate_limited`.
    pub async fn admit(&self, n: usize) -> Result<(), Response> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if let (Some(max), Some(owner)) = (self.config.max_queued_per_token, self.caller.owner()) {
            let queued = self
                .store
                .queued_jobs_of(&owner)
                .await
                .map_err(|e| ApiError::from(e).into_response())?;
            if queued + u64::from(n) > max {
                return Err(ApiError::from_code(
                    ErrorCode::QueueFull,
                    format!(
                        "this token has {queued} jobs queued and may have at most {max}; \
                         {n} more would go over. Wait for some to run"
                    ),
                )
                .into_response());
            }
        }
        if let Some(rate) = self.config.submissions {
            let take = self
                .store
                .take_quota(&format!("sub:{}", self.who), n, rate.jobs, rate.per)
                .await
                .map_err(|e| ApiError::from(e).into_response())?;
            if !take.allowed {
                return Err(refused(&take, "submitted images"));
            }
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Admission {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Admission>().cloned().ok_or_else(|| {
            ApiError::internal("quota", "a handler asked for admission outside the API")
        })
    }
}
