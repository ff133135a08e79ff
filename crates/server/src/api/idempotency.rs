//! `Idempotency-Key` on `POST /api/jobs` (the IETF httpapi draft's semantics): a client that
//! sends a submission again with the same key (after a timeout, a dropped connection, a `5xx`)
//! gets the first request's jobs instead of new ones. The key is the caller's (two tokens may
//! use the same key), lives `--idempotency-ttl` from its first use, and is kept in the database,
//! so it holds across API nodes.
//!
//! - same key, same request, first one done: `202` with the same jobs as they are now,
//!   `Idempotent-Replayed: true`;
//! - same key, different files or fields: `422 idempotency_key_mismatch`;
//! - same key while the first request is still being processed: `409 idempotency_key_in_use`
//!   with `Retry-After`.
//!
//! "Same request" is judged by what it asks for — each file's name and SHA-256, and the plain
//! fields — not by its bytes, since a multipart body sent again has a new boundary.

use super::submit_fields::SubmitFields;
use crate::caller::Caller;
use crate::error::ApiError;
use crate::AppState;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use imgclass_core::ErrorCode;
use imgclass_store::{IdempotencyKey, Job, KeyClaim, KeyHold, NewJob};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The longest key accepted.
const MAX_KEY_LEN: usize = 255;

/// How long a request holds its key while it stores its jobs. A request whose process dies
/// leaves its key held this long; a retry after that takes the key over.
const HOLD: Duration = Duration::from_secs(120);

/// A request's key, before its files have been read.
pub(super) struct RequestKey {
    scope: String,
    key: String,
}

/// The request's `Idempotency-Key`, if it sent one: a string of 1 to 255 visible ASCII
/// characters, bare or as a structured-field string (`"…"`).
pub(super) fn key_of(headers: &HeaderMap, caller: &Caller) -> Result<Option<RequestKey>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        ApiError::from_code(
            ErrorCode::InvalidIdempotencyKey,
            format!("Idempotency-Key {why}; send one key of 1 to {MAX_KEY_LEN} visible ASCII characters (a UUID, say)"),
        )
    };
    if values.next().is_some() {
        return Err(invalid("was sent more than once"));
    }
    let text = value
        .to_str()
        .map_err(|_| invalid("has characters that are not visible ASCII"))?
        .trim();
    let text = match text.strip_prefix('"') {
        Some(rest) => rest
            .strip_suffix('"')
            .ok_or_else(|| invalid("opens a quoted string it does not close"))?,
        None => text,
    };
    if text.is_empty() || text.len() > MAX_KEY_LEN {
        return Err(invalid("is empty or too long"));
    }
    if !text
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return Err(invalid("has characters that are not visible ASCII"));
    }
    Ok(Some(RequestKey {
        scope: caller.owner().unwrap_or_default(),
        key: text.to_string(),
    }))
}

impl RequestKey {
    /// The key with the fingerprint of what the request asks for.
    pub(super) fn fingerprinted(self, fields: &SubmitFields, jobs: &[NewJob]) -> IdempotencyKey {
        let mut h = Sha256::new();
        let events = fields
            .webhook_events
            .as_ref()
            .map(|e| e.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(","));
        for (name, value) in [
            ("priority", Some(fields.priority.to_string())),
            ("cache", Some(fields.cache.to_string())),
            ("webhook", fields.webhook.clone()),
            ("webhook_events", events),
        ] {
            h.update(format!("{name}={value:?}\n"));
        }
        for job in jobs {
            h.update(format!("file={:?} {}\n", job.file_name, job.sha256));
        }
        IdempotencyKey {
            scope: self.scope,
            key: self.key,
            fingerprint: hex::encode(h.finalize()),
        }
    }
}

/// What a request does after claiming its key.
pub(super) enum Claimed {
    /// Go on: create the jobs under this hold.
    Held(KeyHold),
    /// Answer with the key's first request's jobs.
    Answer(Vec<Job>),
    /// Answer with this refusal.
    Refused(Response),
}

pub(super) async fn claim(state: &AppState, key: &IdempotencyKey) -> Result<Claimed, ApiError> {
    match state
        .store
        .claim_idempotency_key(key, state.idempotency_ttl, HOLD)
        .await?
    {
        KeyClaim::Held(hold) => Ok(Claimed::Held(hold)),
        KeyClaim::Replay(ids) => {
            let mut jobs = Vec::with_capacity(ids.len());
            for id in ids {
                // A job deleted since is left out.
                if let Some(job) = state.store.get_job(id).await? {
                    jobs.push(job);
                }
            }
            if jobs.is_empty() {
                return Err(ApiError::from_code(
                    ErrorCode::NotFound,
                    "the jobs this Idempotency-Key created have been deleted",
                ));
            }
            Ok(Claimed::Answer(jobs))
        }
        KeyClaim::Mismatch => Err(ApiError::from_code(
            ErrorCode::IdempotencyKeyMismatch,
            "this Idempotency-Key was used for a different request (other files or fields); \
             use a new key for a new request",
        )),
        KeyClaim::InUse { .. } => {
            let mut resp = ApiError::from_code(
                ErrorCode::IdempotencyKeyInUse,
                "a request with this Idempotency-Key is still being processed; try again shortly",
            )
            .into_response();
            // The first request is usually about to finish (a retry then gets its jobs).
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(Claimed::Refused(resp))
        }
    }
}
