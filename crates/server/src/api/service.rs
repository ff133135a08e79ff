//! The service's own routes among the API's: liveness (`/healthz`) and the queue's figures
//! (`/api/stats`).

use super::views::StatsView;
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::State;
use axum::Json;

/// `GET /healthz`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service", operation_id = "health",
    responses((status = 200, description = "The process is up.", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Queue figures: counts per status, the oldest queued job's age, recent throughput, the rate
/// limit's remaining starts (a token without `admin` sees its own jobs' figures).
#[utoipa::path(get, path = "/api/stats", tag = "service", operation_id = "stats",
    responses(
        (status = 200, description = "The figures.", body = StatsView),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<StatsView>, ApiError> {
    let only = caller.only();
    let s = state
        .store
        .stats_of(only.as_deref(), state.rate_limit)
        .await?;
    Ok(Json(StatsView::new(s, state.rate_limit)))
}
