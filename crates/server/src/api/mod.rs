//! The HTTP API: routes, uploads, job actions, server-sent events.

mod events;
pub mod views;

use crate::auth::{self, Access, Caller};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use imgclass_classifier::imageio;
use imgclass_core::{ErrorCode, EventKind, JobId, JobStatus};
use imgclass_store::{ListQuery, NewJob, Webhook};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use views::{JobList, JobView, JobsCreated, RetriedJobs, StatsView};

pub fn routes(state: AppState, access: Access) -> Router {
    let body_limit = state.upload.request_limit();
    Router::new()
        .route("/api/jobs", post(create_jobs).get(list_jobs))
        .route("/api/jobs/retry-failed", post(retry_failed))
        .route("/api/stats", get(stats))
        .route("/api/jobs/{id}", get(get_job).delete(delete_job))
        .route("/api/jobs/{id}/image", get(job_image))
        .route("/api/jobs/{id}/retry", post(retry_job))
        .route("/api/jobs/{id}/cancel", post(cancel_job))
        .route("/api/jobs/{id}/deliveries", get(job_deliveries))
        .route("/api/events", get(events::stream))
        .route("/healthz", get(healthz))
        .route_layer(axum::middleware::from_fn_with_state(access, auth::require))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found())
}

/// Keeps the last path component of a client's file name, without control characters, at most
/// 255 characters. It is only ever shown, never used as a path.
fn clean_file_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

struct Upload {
    file_name: Option<String>,
    bytes: Vec<u8>,
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::from_code(
            ErrorCode::PayloadTooLarge,
            "the request body is larger than the server accepts",
        )
    } else {
        ApiError::from_code(
            ErrorCode::BadRequest,
            format!("the multipart body could not be read: {}", e.body_text()),
        )
    }
}

/// Reads and discards the rest of a field of a refused upload (bounded by the request body
/// limit), so that the client, still sending, reads the error response instead of a reset.
async fn drain_rest(field: &mut axum::extract::multipart::Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

/// The plain (non-file) fields of a submission.
#[derive(Debug, Default)]
struct SubmitFields {
    /// Higher runs first among due jobs.
    priority: i32,
    /// The URL to call when the jobs change.
    webhook: Option<String>,
    /// Which changes to call it for (`None`: the jobs' end).
    webhook_events: Option<Vec<EventKind>>,
}

/// The range of `priority`.
const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

fn invalid_webhook(message: impl Into<String>) -> ApiError {
    ApiError::from_code(ErrorCode::InvalidWebhook, message)
}

impl SubmitFields {
    /// Takes a plain field; unknown ones are ignored.
    async fn take(&mut self, field: axum::extract::multipart::Field<'_>) -> Result<(), ApiError> {
        let name = field.name().unwrap_or_default().to_string();
        if !["priority", "webhook", "webhook_events"].contains(&name.as_str()) {
            return Ok(());
        }
        let text = field.text().await.map_err(multipart_error)?;
        match name.as_str() {
            "webhook" => self.webhook = Some(text.trim().to_string()),
            "webhook_events" => {
                let events = self.webhook_events.get_or_insert_with(Vec::new);
                for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let event = name
                        .parse::<EventKind>()
                        .ok()
                        .filter(|e| Webhook::EVENTS.contains(e))
                        .ok_or_else(|| {
                            invalid_webhook(format!(
                                "webhook_events are any of running, succeeded, failed, canceled; \
                                 not {:?}",
                                name.chars().take(32).collect::<String>()
                            ))
                        })?;
                    if !events.contains(&event) {
                        events.push(event);
                    }
                }
            }
            _ => {
                self.priority = text
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| PRIORITIES.contains(p))
                    .ok_or_else(|| {
                        ApiError::from_code(
                            ErrorCode::BadRequest,
                            format!(
                                "priority must be a whole number from {} to {}, not {:?}",
                                PRIORITIES.start(),
                                PRIORITIES.end(),
                                text.chars().take(32).collect::<String>()
                            ),
                        )
                    })?;
            }
        }
        Ok(())
    }

    /// The jobs' webhook: the one given (or the server's default), checked.
    async fn webhook(&self, state: &AppState) -> Result<Option<Webhook>, ApiError> {
        let config = state.webhooks.as_deref();
        let url = self
            .webhook
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| config.and_then(|c| c.default_url.clone()));
        let Some(url) = url else {
            if self.webhook_events.is_some() {
                return Err(invalid_webhook(
                    "webhook_events were given without a webhook",
                ));
            }
            return Ok(None);
        };
        let Some(config) = config else {
            return Err(invalid_webhook(
                "this server sends no webhooks (it runs without --webhook-secret)",
            ));
        };
        let url = crate::webhooks::check_url(&url, config.allow_private)
            .await
            .map_err(invalid_webhook)?;
        let events = match &self.webhook_events {
            Some(e) if e.is_empty() => {
                return Err(invalid_webhook("webhook_events names no event"));
            }
            Some(e) => e.clone(),
            None => Webhook::DEFAULT_EVENTS.to_vec(),
        };
        Ok(Some(Webhook {
            url: url.to_string(),
            events,
        }))
    }
}

async fn read_uploads(
    state: &AppState,
    mut multipart: Multipart,
) -> Result<(Vec<Upload>, SubmitFields), ApiError> {
    let max = state.upload.limits.max_bytes;
    let mut uploads = Vec::new();
    let mut fields = SubmitFields::default();
    loop {
        let field = multipart.next_field().await.map_err(multipart_error)?;
        let Some(mut field) = field else { break };
        let Some(raw_name) = field.file_name().map(str::to_owned) else {
            if let Err(e) = fields.take(field).await {
                // Read the rest, so that the client, still sending, reads the answer.
                while let Ok(Some(mut f)) = multipart.next_field().await {
                    drain_rest(&mut f).await;
                }
                return Err(e);
            }
            continue;
        };
        if uploads.len() >= state.upload.max_files {
            return Err(ApiError::from_code(
                ErrorCode::PayloadTooLarge,
                format!("at most {} files per request", state.upload.max_files),
            ));
        }
        let file_name = clean_file_name(&raw_name);
        let mut bytes = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if (bytes.len() + chunk.len()) as u64 > max {
                drain_rest(&mut field).await;
                while let Ok(Some(mut f)) = multipart.next_field().await {
                    drain_rest(&mut f).await;
                }
                return Err(ApiError::from_code(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "{} is larger than the limit of {max} bytes per file",
                        file_name.as_deref().unwrap_or("a file")
                    ),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        uploads.push(Upload { file_name, bytes });
    }
    Ok((uploads, fields))
}

/// `POST /api/jobs`: one job per uploaded image; all or nothing.
async fn create_jobs(
    State(state): State<AppState>,
    caller: Caller,
    admission: crate::quota::Admission,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let multipart = multipart.map_err(|e| {
        ApiError::from_code(
            ErrorCode::BadRequest,
            format!("send the images as multipart/form-data: {}", e.body_text()),
        )
    })?;
    let (uploads, fields) = read_uploads(&state, multipart).await?;
    if uploads.is_empty() {
        return Err(ApiError::from_code(
            ErrorCode::NoFiles,
            "the request has no image file; send them as multipart/form-data file fields",
        ));
    }
    let webhook = fields.webhook(&state).await?;
    if let Err(refused) = admission.admit(uploads.len()).await {
        return Ok(refused);
    }
    let mut new_jobs = Vec::with_capacity(uploads.len());
    for upload in uploads {
        // Hashing and the check (format, limits, completeness) run on the blocking pool,
        // bounded so that uploads cannot starve the workers of cores.
        let permit = state
            .upload
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::internal("upload permits closed", e))?;
        let limits = state.upload.limits;
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let probed = imageio::check(&upload.bytes, &limits);
            let sha256 = hex::encode(Sha256::digest(&upload.bytes));
            (upload, probed, sha256)
        })
        .await
        .map_err(|e| ApiError::internal("upload check panicked", e))?;
        let (upload, probed, sha256) = checked;
        let probed = probed.map_err(|e| {
            let name = upload.file_name.as_deref().unwrap_or("the file");
            ApiError::from_code(e.code(), format!("{name}: {e}"))
        })?;
        new_jobs.push(NewJob {
            content_type: probed.content_type().to_string(),
            width: probed.width,
            height: probed.height,
            image: upload.bytes,
            sha256,
            file_name: upload.file_name,
            max_attempts: state.max_attempts,
            priority: fields.priority,
            owner: caller.owner(),
            webhook: webhook.clone(),
        });
    }
    let jobs = state.store.create_jobs(new_jobs).await?;
    for j in &jobs {
        tracing::info!(job.id = %j.id, image.sha256 = %j.image_sha256, "job queued");
    }
    let location = format!("/api/jobs/{}", jobs[0].id);
    let body = JobsCreated {
        jobs: jobs.into_iter().map(JobView::from).collect(),
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<JobList>, ApiError> {
    let status = params
        .status
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<JobStatus>())
        .transpose()
        .map_err(|e| ApiError::from_code(ErrorCode::InvalidStatus, e))?;
    let page = state
        .store
        .list_jobs(&ListQuery {
            status,
            owner: caller.only(),
            cursor: params.cursor.filter(|c| !c.is_empty()),
            limit: params.limit.unwrap_or(50).clamp(1, 200),
        })
        .await?;
    Ok(Json(JobList {
        jobs: page.jobs.into_iter().map(JobView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state
        .store
        .get_job(parse_id(&id)?)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(job.into()))
}

async fn job_image(
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

async fn retry_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store.retry(parse_id(&id)?).await?;
    tracing::info!(job.id = %job.id, "job retried");
    Ok(Json(job.into()))
}

async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store.cancel(parse_id(&id)?).await?;
    tracing::info!(job.id = %job.id, "job canceled");
    Ok(Json(job.into()))
}

#[derive(Debug, Deserialize)]
struct RetryFailedParams {
    error_code: Option<String>,
}

/// `POST /api/jobs/retry-failed[?error_code=CODE]`: every failed job back to the queue.
async fn retry_failed(
    State(state): State<AppState>,
    caller: Caller,
    Query(params): Query<RetryFailedParams>,
) -> Result<Json<RetriedJobs>, ApiError> {
    let error_code = params
        .error_code
        .filter(|c| !c.is_empty())
        .map(|c| c.parse::<ErrorCode>())
        .transpose()
        .map_err(|e| ApiError::from_code(ErrorCode::BadRequest, e))?;
    let jobs = state
        .store
        .retry_failed(&imgclass_store::RetryFilter {
            error_code,
            owner: caller.only(),
        })
        .await?;
    tracing::info!(jobs = jobs.len(), "failed jobs retried");
    Ok(Json(RetriedJobs {
        count: jobs.len(),
        jobs: jobs.into_iter().map(JobView::from).collect(),
    }))
}

/// `GET /api/stats`: queue figures.
async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<StatsView>, ApiError> {
    let only = caller.only();
    let s = state
        .store
        .stats_of(only.as_deref(), state.rate_limit)
        .await?;
    Ok(Json(StatsView::new(s, state.rate_limit)))
}

/// `GET /api/jobs/{id}/deliveries`: the job's webhook calls and each attempt.
async fn job_deliveries(
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

async fn delete_job(
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
    use super::clean_file_name;

    #[test]
    fn file_names_are_reduced_to_a_harmless_base_name() {
        assert_eq!(clean_file_name("cat.png").as_deref(), Some("cat.png"));
        assert_eq!(
            clean_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(clean_file_name("C:\\x\\y.jpg").as_deref(), Some("y.jpg"));
        assert_eq!(
            clean_file_name("a\u{0}b\nc.png").as_deref(),
            Some("abc.png")
        );
        assert_eq!(clean_file_name("  "), None);
        assert_eq!(clean_file_name(&"x".repeat(1000)).unwrap().len(), 255);
        // Markup is kept as text; it is escaped wherever it is shown.
        assert_eq!(
            clean_file_name("<img src=x onerror=alert(1)>.png").as_deref(),
            Some("<img src=x onerror=alert(1)>.png")
        );
    }
}
