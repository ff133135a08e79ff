//! The service: the axum router (API, events, web page), the worker pool and how they are
//! started together.

pub mod api;
pub mod auth;
pub mod error;
pub mod http;
pub mod web;
pub mod worker;

use axum::Router;
use imgclass_classifier::ImageLimits;
use imgclass_store::Store;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub use http::{serve, HttpConfig};
pub use worker::{ClassifierFactory, WorkerConfig, Workers};

/// Upload checking settings.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub limits: ImageLimits,
    /// Files accepted in one request.
    pub max_files: usize,
    /// Multipart parts (files and form fields) accepted in one request.
    pub max_parts: usize,
    /// Uploads checked (hashed and decoded) at the same time.
    pub permits: Arc<Semaphore>,
}

impl UploadConfig {
    pub fn new(limits: ImageLimits, checkers: usize) -> Self {
        UploadConfig {
            limits,
            max_files: 64,
            max_parts: 128,
            permits: Arc::new(Semaphore::new(checkers.max(1))),
        }
    }

    /// The largest request body accepted: a few full-size files plus form overhead.
    pub fn request_limit(&self) -> usize {
        let per_file = usize::try_from(self.limits.max_bytes).unwrap_or(usize::MAX);
        per_file.saturating_mul(4).saturating_add(1 << 20)
    }
}

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub upload: UploadConfig,
    /// Attempts a new job gets before it fails for good.
    pub max_attempts: u32,
    /// The global rate limit the workers obey (for statistics).
    pub rate_limit: Option<imgclass_store::RateLimit>,
}

/// The whole HTTP application. Every error under `/api` is JSON (`error::json_errors`).
pub fn router(state: AppState) -> Router {
    api::routes(state)
        .merge(web::routes())
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}
