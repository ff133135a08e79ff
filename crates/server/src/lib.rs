//! The service: the axum router (API, events, web page, metrics) and how it is served. The
//! workers and the webhook deliverer are `imgclass_worker`'s.

pub mod api;
pub mod auth;
pub mod caller;
pub mod error;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod quota;
pub mod request_id;
pub mod upload_budget;
pub mod web;

use axum::Router;
use imgclass_classifier::ImageLimits;
use imgclass_store::Store;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub use http::{serve, BodyLimits, ServeLimits};
pub use upload_budget::UploadBudget;

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
    /// Request-body bytes held at once by all uploads in flight.
    pub budget: UploadBudget,
}

impl UploadConfig {
    /// With the default upload budget ([`UploadBudget::DEFAULT_BYTES`], or the largest request
    /// body if that is more).
    pub fn new(limits: ImageLimits, checkers: usize) -> Self {
        let mut config = UploadConfig {
            limits,
            max_files: 64,
            max_parts: 128,
            permits: Arc::new(Semaphore::new(checkers.max(1))),
            budget: UploadBudget::new(0, UploadBudget::DEFAULT_WAIT),
        };
        config.budget = UploadBudget::new(
            UploadBudget::DEFAULT_BYTES.max(config.request_limit() as u64),
            UploadBudget::DEFAULT_WAIT,
        );
        config
    }

    /// The same settings with `budget` for the bytes of uploads in flight; it should hold at
    /// least one request body of the largest size (`request_limit`), or such a request is
    /// refused with `413 payload_too_large`.
    pub fn with_budget(mut self, budget: UploadBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The largest request body accepted: a few full-size files plus form overhead.
    pub fn request_limit(&self) -> usize {
        let per_file = usize::try_from(self.limits.max_bytes).unwrap_or(usize::MAX);
        per_file.saturating_mul(4).saturating_add(1 << 20)
    }

    /// The bodies refused from their declared length, before they are read.
    pub fn body_limits(&self) -> BodyLimits {
        BodyLimits {
            request: self.request_limit() as u64,
            raw_file: self.limits.max_bytes,
        }
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
    /// Webhook settings; `None`: this server sends no webhooks (no secret to sign them).
    pub webhooks: Option<Arc<imgclass_worker::webhooks::WebhookConfig>>,
    /// How long an `Idempotency-Key` is remembered after its first use.
    pub idempotency_ttl: std::time::Duration,
    /// The model whose earlier results may answer a new job for the same image (the result
    /// cache); `None`: every job is classified.
    pub result_cache: Option<imgclass_core::ModelInfo>,
    /// The model of a job that names none.
    pub default_model: String,
    /// Loads the models again and serves them (`POST /api/models/reload`); `None` on a node
    /// without workers.
    pub reload: Option<Reload>,
}

/// Loads a node's models again and serves them; the names served afterwards, or why not.
pub type Reload = Arc<
    dyn Fn() -> futures_util::future::BoxFuture<'static, Result<Vec<String>, String>> + Send + Sync,
>;

/// How long `Idempotency-Key`s are remembered by default.
pub const DEFAULT_IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// How the HTTP side is run for others: cross-origin access and readiness.
#[derive(Clone, Default)]
pub struct HttpConfig {
    /// Origins (`https://app.example.com`) whose pages may call the API; none by default.
    pub cors_origins: Vec<axum::http::HeaderValue>,
    pub readiness: ops::Readiness,
    pub quotas: quota::QuotaConfig,
    /// This process's metrics; `/metrics` is served on the API's port when
    /// `metrics_on_api_port` is set (otherwise on a port of its own, see [`metrics_router`]).
    pub metrics: Option<Arc<metrics::Metrics>>,
    pub metrics_on_api_port: bool,
    /// This node's name, on every request's log lines.
    pub node: String,
}

/// The whole HTTP application, with the default [`HttpConfig`].
pub fn router(state: AppState) -> Router {
    router_with(state, HttpConfig::default())
}

/// The whole HTTP application.
pub fn router_with(state: AppState, http: HttpConfig) -> Router {
    let store = state.store.clone();
    let access = auth::Access::new(store.clone()).with_quotas(http.quotas.clone());
    let body_limits = state.upload.body_limits();
    let mut app = api::routes(state, access.clone())
        .merge(ops::routes(store.clone(), http.readiness.clone()))
        .merge(web::routes())
        // A body declared larger than any route takes is refused before it is read.
        .layer(axum::middleware::from_fn_with_state(
            body_limits,
            http::refuse_oversized_bodies,
        ));
    // Before the metrics layer, so that a request no route matches is counted too.
    app = app.fallback(|| async { axum::http::StatusCode::NOT_FOUND });
    if let Some(m) = &http.metrics {
        if http.metrics_on_api_port {
            app = app.merge(metrics::routes(m.clone(), store, Some(access)));
        }
        app = app.layer(axum::middleware::from_fn_with_state(
            m.clone(),
            metrics::track_http,
        ));
    }
    let node: Arc<str> = if http.node.is_empty() {
        "node".into()
    } else {
        http.node.as_str().into()
    };
    let app = app
        // Every error under `/api` is JSON, whatever produced it.
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(axum::middleware::from_fn_with_state(
            node,
            request_id::track,
        ));
    match cors(&http.cors_origins) {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

/// `/metrics` alone, for `--metrics-listen` (no token asked: keep that port private).
pub fn metrics_router(metrics: Arc<metrics::Metrics>, store: Arc<dyn Store>) -> Router {
    metrics::routes(metrics, store, None)
}

/// Cross-origin access for the listed origins only (closed when there is none): preflights
/// are answered for the API's methods and the headers a client sends.
fn cors(origins: &[axum::http::HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
                HeaderName::from_static("x-request-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}
