//! Following and acting on jobs once they exist: the job list, one job (its view, image and
//! webhook calls), retrying, canceling and deleting it, and retrying every failed job.

use super::extract::ApiQuery;
use super::views::{self, JobList, JobView, RetriedJobs};
use super::{params, search, wait};
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imgclass_core::{ErrorCode, JobId};
use serde::Deserialize;

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListParams {
    /// `next_cursor` of the previous page.
    #[param(pattern = "^j[1-9][0-9]{0,17}$")]
    cursor: Option<String>,
    /// Jobs per page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<String>,
}

/// Jobs per page of `GET /api/jobs`: the default and the largest accepted.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(l) => params::whole_number(l, 1..=MAX_PAGE).ok_or_else(|| {
                ApiError::from_code(
                    ErrorCode::InvalidQuery,
                    format!(
                        "limit must be a whole number from 1 to {MAX_PAGE} (default {DEFAULT_PAGE}); got {:?}",
                        params::shown(l)
                    ),
                )
            }),
    }
}

/// List jobs, newest first, one page at a time; with filters, only the jobs that match all of
/// them, and `total` counts those on every page.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", operation_id = "list_jobs", params(search::StatusParam, ListParams, search::FilterParams),
    responses(
        (status = 200, description = "A page of jobs; `next_cursor` is null on the last page; `total` is how many jobs match.", body = JobList),
        (status = 400, description = "`invalid_status`: `status` is not a job status. `invalid_cursor`: the cursor is not one this server gave out. `invalid_query`: the query cannot be read: `limit` is not a number from 1 to 200, `q` or `label` is over 200 characters or holds a NUL character, `error_code` is not an error code, or `since`/`until` is not an RFC 3339 time.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
    ApiQuery(filters): ApiQuery<search::Filters>,
) -> Result<Json<JobList>, ApiError> {
    let filter = filters.parse(search::Scope::LIST, &caller)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let page = state
        .store
        .search_jobs(&filter, params.cursor.as_deref(), limit)
        .await?;
    let total = state.store.count_jobs(&filter).await?;
    let mut jobs: Vec<JobView> = page.jobs.into_iter().map(JobView::from).collect();
    super::models::explain_waits(&state, &mut jobs).await;
    Ok(Json(JobList {
        jobs,
        next_cursor: page.next_cursor,
        total,
    }))
}

/// One job, with its result once it has one.
///
/// With `Prefer: wait=N` (N ≤ 60) the answer waits until the job has finished or N seconds
/// have passed (`Preference-Applied: wait=N`).
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, description = "The job's id.", format = Uuid),
        ("Prefer" = Option<String>, Header, description = "`wait=N`: hold the answer until the job has finished, at most N seconds (N ≤ 60; larger values count as 60).")),
    responses(
        (status = 200, description = "The job.", body = JobView,
            headers(("Preference-Applied" = String, description = "`wait=N` when the answer waited."))),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn get_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let wait = wait::preferred(&headers);
    // Subscribed before the read, so the wait cannot miss a change after it.
    let live = wait.map(|_| state.store.subscribe());
    let mut job = state
        .store
        .get_job(id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    if let (Some(wait), Some(live)) = (wait, live) {
        let waited = wait::until_finished(&*state.store, live, vec![job], wait).await?;
        if !waited.deleted.is_empty() {
            return Err(ApiError::not_found());
        }
        job = waited
            .jobs
            .into_iter()
            .next()
            .ok_or_else(ApiError::not_found)?;
    }
    let mut view = [JobView::from(job)];
    super::models::explain_waits(&state, &mut view).await;
    let [view] = view;
    let mut resp = Json(view).into_response();
    if let Some(wait) = wait {
        wait::set_preference_applied(&mut resp, wait);
    }
    Ok(resp)
}

/// The stored image of a job, as uploaded.
#[utoipa::path(get, path = "/api/jobs/{id}/image", tag = "jobs", operation_id = "get_job_image", params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 200, description = "The bytes, with the sniffed `Content-Type`.",
            content((views::ImageFile = "image/jpeg"), (views::ImageFile = "image/png"), (views::ImageFile = "image/webp"), (views::ImageFile = "image/gif"), (views::ImageFile = "image/bmp"), (views::ImageFile = "image/tiff")),
            headers(("ETag" = String, description = "The image's SHA-256."))),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn job_image(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let image = state
        .store
        .job_image(parse_id(&id)?)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let headers = [
        (header::CONTENT_TYPE, image.content_type),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        (
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable".to_string(),
        ),
        (header::ETAG, format!("\"{}\"", image.sha256)),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox".to_string(),
        ),
    ];
    Ok((headers, image.bytes).into_response())
}

/// Run a failed or canceled job again: it goes back to the queue with a new round of attempts.
#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "jobs", operation_id = "retry_job", params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 200, description = "The job, queued again.", body = JobView),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 409, description = "`invalid_state`: only failed or canceled jobs can be retried.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn retry_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store.retry(parse_id(&id)?).await?;
    tracing::info!(job.id = %job.id, "job retried");
    Ok(Json(job.into()))
}

/// Cancel a queued or running job (a running job's result is dropped).
#[utoipa::path(post, path = "/api/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job", params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 200, description = "The job, canceled.", body = JobView),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the job has already finished.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store.cancel(parse_id(&id)?).await?;
    tracing::info!(job.id = %job.id, "job canceled");
    Ok(Json(job.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only describes the query; `search::Filters` reads it.
pub(super) struct RetryFailedParams {
    /// `failed`, the only status this route acts on.
    #[param(value_type = Option<search::FailedStatus>, inline)]
    status: Option<String>,
    /// Only failed jobs whose error has this code.
    #[param(value_type = Option<ErrorCode>)]
    error_code: Option<String>,
}

/// Run every failed job (with this error code) again.
///
/// It reads the filters as `GET /api/jobs` does, and applies `status` (only `failed`) and
/// `error_code`; it refuses the others (`q`, `label`, `since`, `until`) rather than retry more
/// jobs than they would select.
#[utoipa::path(post, path = "/api/jobs/retry-failed", tag = "jobs", operation_id = "retry_failed_jobs", params(RetryFailedParams),
    responses(
        (status = 200, description = "The jobs put back in the queue.", body = RetriedJobs),
        (status = 400, description = "`invalid_query`: `error_code` is not an error code, or the query has a filter this route does not apply (`q`, `label`, `since`, `until`). `invalid_status`: `status` is not a job status, or not `failed`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn retry_failed(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filters): ApiQuery<search::Filters>,
) -> Result<Json<RetriedJobs>, ApiError> {
    let filter = filters.parse(search::Scope::RETRY_FAILED, &caller)?;
    let jobs = state
        .store
        .retry_failed(&imgclass_store::RetryFilter {
            error_code: filter.error_code,
            owner: filter.owner,
        })
        .await?;
    tracing::info!(jobs = jobs.len(), "failed jobs retried");
    Ok(Json(RetriedJobs {
        count: jobs.len(),
        jobs: jobs.into_iter().map(JobView::from).collect(),
    }))
}

/// The job's webhook calls, each with its attempts.
#[utoipa::path(get, path = "/api/jobs/{id}/deliveries", tag = "jobs", operation_id = "get_job_deliveries",
    params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 200, description = "The calls, oldest first.", body = views::DeliveryList),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn job_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<views::DeliveryList>, ApiError> {
    let id = parse_id(&id)?;
    state
        .store
        .get_job(id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let deliveries = state.store.deliveries(id).await?;
    Ok(Json(views::DeliveryList {
        deliveries: deliveries.into_iter().map(Into::into).collect(),
    }))
}

/// Delete a job (whatever its state), and its image when no other job uses it.
#[utoipa::path(delete, path = "/api/jobs/{id}", tag = "jobs", operation_id = "delete_job", params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn delete_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.store.delete(id).await?;
    tracing::info!(job.id = %id, "job deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_checked() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_PAGE);
        assert_eq!(parse_limit(Some("1")).unwrap(), 1);
        assert_eq!(parse_limit(Some("200")).unwrap(), 200);
        for bad in [
            "",
            " ",
            "0",
            "-1",
            "201",
            "abc",
            "1.5",
            "99999999999999999999999",
        ] {
            let e = parse_limit(Some(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidQuery, "{bad}");
        }
    }
}
