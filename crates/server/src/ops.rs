//! What operators ask of a node: `GET /readyz` (may it take traffic: the database answers, its
//! storage was not found full by the last failed write, its file is still the one opened, and,
//! on a node with workers, the model is loaded). `/healthz` (in `api`) stays a liveness check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use imgclass_store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What readiness depends on besides the database.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Set once this node's workers have loaded the model; `None` on a node without workers.
    pub model_loaded: Option<Arc<AtomicBool>>,
    /// The folders of the model repository that could not be loaded, each with why (the node
    /// serves the others, and stays ready).
    pub model_errors: ModelErrors,
}

/// The model folders that could not be loaded at the last (re)load, each as `folder: error`.
pub type ModelErrors = Arc<std::sync::Mutex<Vec<String>>>;

impl Readiness {
    /// Readiness of a node with workers, not loaded yet; set the flag once they are.
    pub fn with_workers() -> (Readiness, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (
            Readiness {
                model_loaded: Some(flag.clone()),
                model_errors: ModelErrors::default(),
            },
            flag,
        )
    }
}

#[derive(Clone)]
struct ReadyState {
    store: Arc<dyn Store>,
    readiness: Readiness,
}

/// The operators' routes, registered with their OpenAPI description.
fn router() -> OpenApiRouter<ReadyState> {
    OpenApiRouter::new().routes(routes!(readyz))
}

pub(crate) fn routes(store: Arc<dyn Store>, readiness: Readiness) -> Router {
    let (router, _) = router().split_for_parts();
    router.with_state(ReadyState { store, readiness })
}

/// The operators' part of the OpenAPI document.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    router().into_openapi()
}

/// Whether the node may take traffic.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // Only describes the answer, which `readyz` writes.
struct ReadyView {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: String,
    /// Why not (only when not ready).
    reasons: Option<Vec<String>>,
    /// The model folders that could not be loaded (the node serves the other models and can be
    /// ready), each as `folder: error` naming the file and key.
    models_not_loaded: Option<Vec<String>>,
}

/// Readiness: the database answers, the object store that holds images (if any) answers, its
/// storage is not full (since the last write that found it
/// full, until a write succeeds again), the store takes writes (its database file was not
/// deleted or replaced under it) and, on a node with workers, the model is loaded.
#[utoipa::path(get, path = "/readyz", tag = "service", operation_id = "ready",
    responses(
        (status = 200, description = "Ready.", body = ReadyView),
        (status = 503, description = "Not ready; `reasons` says why.", body = ReadyView),
    ))]
async fn readyz(State(s): State<ReadyState>) -> Response {
    let mut problems = Vec::new();
    if let Some(flag) = &s.readiness.model_loaded {
        if !flag.load(Ordering::Acquire) {
            problems.push("the model is not loaded yet".to_string());
        }
    }
    let database =
        tokio::time::timeout(std::time::Duration::from_secs(2), s.store.last_event_seq()).await;
    match database {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            problems.push("the database does not answer".to_string());
        }
        Err(_) => problems.push("the database does not answer within 2 s".to_string()),
    }
    let images = tokio::time::timeout(std::time::Duration::from_secs(5), s.store.check_images());
    match images.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the image store does not answer");
            problems.push(format!("{e}; uploads answer 503 until it does"));
        }
        Err(_) => problems.push(format!(
            "the image store ({}) does not answer within 5 s; uploads answer 503 until it does",
            s.store.blob_store().url()
        )),
    }
    if let Some(full) = s.store.full_storage() {
        tracing::warn!(error = %full.detail, since = %full.since, "readiness: the database's storage is full");
        problems.push(format!(
            "the database's storage is full: a write failed at {}; writes answer 507 \
             insufficient_storage until space is freed and a write succeeds",
            full.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ));
    }
    if let Some(fault) = s.store.storage_fault() {
        tracing::error!(reason = %fault, "readiness: the database refuses writes");
        problems.push(format!(
            "the database refuses writes (503 unavailable): {fault}"
        ));
    }
    let (status, mut body) = if problems.is_empty() {
        (StatusCode::OK, serde_json::json!({ "status": "ready" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not_ready", "reasons": problems }),
        )
    };
    let not_loaded = s
        .readiness
        .model_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !not_loaded.is_empty() {
        body["models_not_loaded"] = serde_json::json!(not_loaded);
    }
    (status, Json(body)).into_response()
}
