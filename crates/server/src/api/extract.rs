//! The extractors that the API's handlers share.

use crate::error::ApiError;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use imgclass_core::ErrorCode;

/// `Query`, with rejections answered as `400 invalid_query` in the API's JSON error shape.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(e) => Err(ApiError::from_code(
                ErrorCode::InvalidQuery,
                format!("the query string is not valid: {}", e.body_text()),
            )),
        }
    }
}
