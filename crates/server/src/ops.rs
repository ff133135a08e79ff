//! What operators ask of a node: `GET /readyz` (may it take traffic: the database answers and,
//! on a node with workers, the model is loaded). `/healthz` (in `api`) stays a liveness check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use imgclass_store::Store;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What readiness depends on besides the database.
#[derive(Clone, Default)]
pub struct Readiness {
    /// Set once this node's workers have loaded the model; `None` on a node without workers.
    pub model_loaded: Option<Arc<AtomicBool>>,
}

impl Readiness {
    /// Readiness of a node with workers, not loaded yet; set the flag once they are.
    pub fn with_workers() -> (Readiness, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (
            Readiness {
                model_loaded: Some(flag.clone()),
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

pub(crate) fn routes(store: Arc<dyn Store>, readiness: Readiness) -> Router {
    Router::new()
        .route("/readyz", get(readyz))
        .with_state(ReadyState { store, readiness })
}

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
    if problems.is_empty() {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "status": "ready" })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not_ready", "reasons": problems })),
        )
            .into_response()
    }
}
