//! Who is calling the API: the identity that the access layer ([`crate::auth`]) establishes for
//! a request and that quotas and handlers read.

use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use imgclass_core::Scope;
use imgclass_store::ApiToken;
use std::sync::Arc;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token is configured: everyone may do everything.
    Open,
    Token(Arc<ApiToken>),
}

impl Caller {
    /// The owner of the jobs this caller creates.
    pub fn owner(&self) -> Option<String> {
        match self {
            Caller::Open => None,
            Caller::Token(t) => Some(t.id.clone()),
        }
    }

    /// The owner whose jobs alone this caller may see (`None`: every job).
    pub fn only(&self) -> Option<String> {
        match self {
            Caller::Token(t) if !t.has(Scope::Admin) => Some(t.id.clone()),
            _ => None,
        }
    }

    /// Whether this caller may see a job (or event) of `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self.only() {
            None => true,
            Some(me) => owner == Some(me.as_str()),
        }
    }

    /// Whether the caller has `scope` (everyone has every scope while the API is open).
    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Caller::Open => true,
            Caller::Token(t) => t.has(scope),
        }
    }

    /// The token's id, for logs and quotas.
    pub fn token_id(&self) -> Option<&str> {
        match self {
            Caller::Open => None,
            Caller::Token(t) => Some(&t.id),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Set by `auth::require` on every API route; its absence is a wiring mistake, refused.
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal("access", "a handler asked for the caller outside the API")
        })
    }
}
