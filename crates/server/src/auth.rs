//! The access layer: who is calling the API (a [`Caller`]), and what they may do. With no token
//! in the database the API is open (a single user on loopback); once a token exists, every
//! `/api/*` route needs `Authorization: Bearer TOKEN` with the route's scope, and a token without
//! `admin` sees only the jobs it created: another token's job answers `404`, exactly like a job
//! that does not exist.
//!
//! The rules of every API route are one table, [`API_RULES`]; a route missing from it is refused
//! (fail closed), so a new route cannot be reached before its rule is written.

// Also named here, where the access layer that establishes it lives.
pub use crate::caller::Caller;
use crate::error::ApiError;
use crate::quota::{self, Admission, QuotaConfig};
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use imgclass_core::{ErrorCode, JobId, Scope};
use imgclass_store::{NewToken, Store};
use rand::Rng;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How a route's jobs are reached, which decides where ownership is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jobs {
    /// The route creates jobs; they belong to the caller.
    Create,
    /// The route names one job (`{id}`): checked here, before the handler runs.
    One,
    /// The route reads or acts on many jobs: the handler passes [`Caller::only`] to the store.
    Own,
    /// The route reads no job (the models).
    None,
}

/// The access rule of one API route.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    pub path: &'static str,
    pub scope: Scope,
    pub jobs: Jobs,
}

const fn rule(method: &'static str, path: &'static str, scope: Scope, jobs: Jobs) -> Rule {
    Rule {
        method,
        path,
        scope,
        jobs,
    }
}

/// Every `/api/*` route with the scope it needs and how its jobs are reached.
pub const API_RULES: &[Rule] = &[
    rule("POST", "/api/jobs", Scope::Submit, Jobs::Create),
    rule("GET", "/api/jobs", Scope::Read, Jobs::Own),
    rule("POST", "/api/jobs/retry-failed", Scope::Manage, Jobs::Own),
    rule("POST", "/api/jobs/cancel-queued", Scope::Manage, Jobs::Own),
    rule(
        "POST",
        "/api/jobs/delete-finished",
        Scope::Manage,
        Jobs::Own,
    ),
    rule("GET", "/api/jobs/export", Scope::Read, Jobs::Own),
    rule("GET", "/api/stats", Scope::Read, Jobs::Own),
    rule("GET", "/api/models", Scope::Read, Jobs::None),
    rule("POST", "/api/models/reload", Scope::Admin, Jobs::None),
    rule("GET", "/api/events", Scope::Read, Jobs::Own),
    rule("GET", "/api/jobs/{id}", Scope::Read, Jobs::One),
    rule("DELETE", "/api/jobs/{id}", Scope::Manage, Jobs::One),
    rule("GET", "/api/jobs/{id}/image", Scope::Read, Jobs::One),
    rule("POST", "/api/jobs/{id}/retry", Scope::Manage, Jobs::One),
    rule("POST", "/api/jobs/{id}/cancel", Scope::Manage, Jobs::One),
    rule("GET", "/api/jobs/{id}/deliveries", Scope::Read, Jobs::One),
];

/// The rule for a request, by method and route pattern (`HEAD` follows `GET`).
pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    API_RULES
        .iter()
        .find(|r| r.method == method && r.path == path)
}

/// The prefix of every token, so that a leaked one is recognisable (secret scanners).
const PREFIX: &str = "imgc_";

/// A new token: what to show once (`imgc_ID_SECRET`) and what to store (the secret's hash).
pub fn issue(
    name: &str,
    scopes: &[Scope],
    expires_in: Option<Duration>,
) -> Result<(String, NewToken), String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err("a token's name is 1 to 64 printable characters".into());
    }
    let mut rng = rand::rng();
    let id: [u8; 6] = rng.random();
    let secret: [u8; 32] = rng.random();
    let (id, secret) = (hex::encode(id), hex::encode(secret));
    let expires_at = expires_in
        .map(|d| chrono::Duration::from_std(d).map(|d| Utc::now() + d))
        .transpose()
        .map_err(|_| "the expiry is too far away".to_string())?;
    let token = NewToken {
        id: id.clone(),
        name: name.to_string(),
        scopes: scopes.to_vec(),
        secret_sha256: hash(&secret),
        expires_at,
    };
    Ok((format!("{PREFIX}{id}_{secret}"), token))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `imgc_ID_SECRET`.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// The access check's state: the store, and whether tokens are in use.
#[derive(Clone)]
pub struct Access {
    store: Arc<dyn Store>,
    quotas: Arc<QuotaConfig>,
    /// Once a token exists the API stays closed; this flag never goes back.
    closed: Arc<AtomicBool>,
    /// While open: when the database was last asked (tokens made by `imgclass token create`
    /// on any node take effect within a second).
    checked: Arc<Mutex<Option<Instant>>>,
}

const OPEN_RECHECK: Duration = Duration::from_secs(1);

impl Access {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Access {
            store,
            quotas: Arc::default(),
            closed: Arc::new(AtomicBool::new(false)),
            checked: Arc::new(Mutex::new(None)),
        }
    }

    pub fn with_quotas(mut self, quotas: QuotaConfig) -> Self {
        self.quotas = Arc::new(quotas);
        self
    }

    /// Whether requests need a token.
    pub async fn closed(&self) -> Result<bool, ApiError> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(true);
        }
        let fresh = self
            .checked
            .lock()
            .map(|c| c.is_some_and(|t| t.elapsed() < OPEN_RECHECK))
            .unwrap_or(false);
        if fresh {
            return Ok(false);
        }
        let in_use = self.store.tokens_in_use().await?;
        if in_use {
            self.closed.store(true, Ordering::Release);
        } else if let Ok(mut c) = self.checked.lock() {
            *c = Some(Instant::now());
        }
        Ok(in_use)
    }

    /// The caller a request's credentials name; `401` when they name none that may be used now.
    pub async fn authenticate(&self, parts: &Parts) -> Result<Caller, Response> {
        if !self.closed().await.map_err(IntoResponse::into_response)? {
            return Ok(Caller::Open);
        }
        let Some(presented) = credentials(parts) else {
            return Err(unauthorized(
                "this server needs an API token: send the header Authorization: Bearer TOKEN",
            ));
        };
        let invalid = || unauthorized("the API token is not valid");
        let (id, secret) = parse(&presented).ok_or_else(invalid)?;
        let token = self
            .store
            .token(id)
            .await
            .map_err(|e| ApiError::from(e).into_response())?
            .ok_or_else(invalid)?;
        let matches: bool = hash(secret)
            .as_bytes()
            .ct_eq(token.secret_sha256.as_bytes())
            .into();
        if !matches {
            return Err(invalid());
        }
        if token.revoked_at.is_some() {
            return Err(unauthorized("the API token has been revoked"));
        }
        if let Some(at) = token.expires_at.filter(|at| *at <= Utc::now()) {
            return Err(unauthorized(&format!(
                "the API token expired at {}",
                at.to_rfc3339()
            )));
        }
        Ok(Caller::Token(Arc::new(token)))
    }
}

/// The token a request presents: `Authorization: Bearer`, or for `GET` (what a browser's
/// `EventSource` and `<img>` can send) the `access_token` query parameter of RFC 6750.
fn credentials(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    if parts.method == Method::GET || parts.method == Method::HEAD {
        let query = parts.uri.query()?;
        return query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "access_token").then(|| v.to_string())
        });
    }
    None
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::from_code(ErrorCode::Unauthorized, message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"imgclass\""),
    );
    resp
}

/// The path segment a route pattern's `{id}` stands for.
fn job_id_in(pattern: &str, path: &str) -> Option<String> {
    let at = pattern.split('/').position(|s| s == "{id}")?;
    path.split('/').nth(at).map(str::to_string)
}

/// Middleware of every API route: authenticates, checks the route's scope, and for a route that
/// names one job, that the caller may see it (`404` otherwise, as for a job that does not exist).
pub async fn require(State(access): State<Access>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let Some(pattern) = parts.extensions.get::<MatchedPath>().map(|m| m.as_str()) else {
        return ApiError::internal("access", "no matched route").into_response();
    };
    if !pattern.starts_with("/api/") {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let Some(rule) = rule_for(&parts.method, pattern) else {
        let allowed: Vec<&str> = API_RULES
            .iter()
            .filter(|r| r.path == pattern)
            .map(|r| r.method)
            .collect();
        if !allowed.is_empty() {
            // A method this route does not have: `405`, and no handler runs.
            let allowed = allowed.join(", ");
            let mut resp = ApiError::from_code(
                ErrorCode::MethodNotAllowed,
                format!(
                    "{} is not allowed on {pattern}; allowed: {allowed}",
                    parts.method
                ),
            )
            .into_response();
            if let Ok(v) = axum::http::HeaderValue::from_str(&allowed) {
                resp.headers_mut().insert(axum::http::header::ALLOW, v);
            }
            return resp;
        }
        // Fail closed: a route without a rule is a mistake to fix, not an open door.
        return ApiError::internal("access", format!("no access rule for {pattern}"))
            .into_response();
    };
    let caller = match access.authenticate(&parts).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let who = quota::who(&caller, &parts);
    let taken = match quota::take_request(&*access.store, &access.quotas, &who).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    if !caller.has(rule.scope) {
        return ApiError::from_code(
            ErrorCode::Forbidden,
            format!(
                "this API token lacks the {} scope that {} {} needs",
                rule.scope, rule.method, rule.path
            ),
        )
        .into_response();
    }
    if rule.jobs == Jobs::One {
        if let Some(me) = caller.only() {
            let id = job_id_in(pattern, parts.uri.path()).and_then(|s| s.parse::<JobId>().ok());
            let Some(id) = id else {
                return ApiError::not_found().into_response();
            };
            match access.store.job_owner(id).await {
                Ok(Some(owner)) if owner.as_deref() == Some(me.as_str()) => {}
                Ok(_) => return ApiError::not_found().into_response(),
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
    }
    if rule.jobs == Jobs::Create {
        parts.extensions.insert(Admission {
            store: access.store.clone(),
            config: access.quotas.clone(),
            who,
            caller: caller.clone(),
        });
    }
    parts.extensions.insert(caller);
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if let Some(take) = taken {
        quota::set_headers(resp.headers_mut(), &take);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_parse_and_hash_to_what_is_stored() {
        let (shown, stored) = issue("ci", &[Scope::Submit], None).unwrap();
        let (id, secret) = parse(&shown).unwrap();
        assert_eq!(id, stored.id);
        assert_eq!(hash(secret), stored.secret_sha256);
        assert_eq!(secret.len(), 64);
        let (other, _) = issue("ci", &[Scope::Submit], None).unwrap();
        assert_ne!(shown, other);
        assert!(issue(" ", &[Scope::Read], None).is_err());
        assert!(parse("imgc_abc").is_none());
        assert!(parse("Bearer x").is_none());
    }

    #[test]
    fn the_job_id_is_found_where_the_pattern_has_it() {
        assert_eq!(
            job_id_in("/api/jobs/{id}/retry", "/api/jobs/abc/retry").as_deref(),
            Some("abc")
        );
        assert_eq!(job_id_in("/api/jobs", "/api/jobs"), None);
    }

    #[test]
    fn every_rule_is_found_and_head_follows_get() {
        for r in API_RULES {
            let m = Method::from_bytes(r.method.as_bytes()).unwrap();
            assert!(rule_for(&m, r.path).is_some());
        }
        assert!(rule_for(&Method::HEAD, "/api/jobs/{id}/image").is_some());
        assert!(rule_for(&Method::PUT, "/api/jobs").is_none());
    }
}
