//! The service's own routes among the API's: liveness (`/healthz`) and the queue's figures
//! (`/api/stats`).

use super::extract::ApiQuery;
use super::search;
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
/// limit's remaining starts (a token without `admin` sees its own jobs' figures). The figures
/// take no filters: a query with the job list's filters is refused, not answered unfiltered.
#[utoipa::path(get, path = "/api/stats", tag = "service", operation_id = "stats",
    responses(
        (status = 200, description = "The figures.", body = StatsView),
        (status = 400, description = "`invalid_query`: the query has one of the job list's filters (`q`, `label`, `error_code`, `since`, `until`), which the figures do not apply, or a value of one that is not valid. `invalid_status`: `status` is not a job status (valid or not, the figures do not filter by it).", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filters): ApiQuery<search::Filters>,
) -> Result<Json<StatsView>, ApiError> {
    filters.parse(search::Scope::STATS, &caller)?;
    let only = caller.only();
    let s = state
        .store
        .stats_of(only.as_deref(), state.rate_limit)
        .await?;
    Ok(Json(StatsView::new(s, state.rate_limit)))
}
