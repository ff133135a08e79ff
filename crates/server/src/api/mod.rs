//! The HTTP API: routes, uploads, job actions, server-sent events.

mod events;
mod idempotency;
mod openapi;
mod search;
pub mod upload;
pub mod views;
mod wait;

use crate::auth::{self, Access, Caller};
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use imgclass_classifier::imageio;
use imgclass_core::{ErrorCode, EventKind, JobId, JobStatus};
use imgclass_store::{NewJob, Webhook};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use views::{JobList, JobView, JobsCreated, RetriedJobs, StatsView};

/// The API's routes that the access rules guard, each registered together with its OpenAPI
/// description (so the document cannot leave a route out).
fn guarded_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_jobs, list_jobs))
        .routes(routes!(retry_failed))
        .routes(routes!(search::export_jobs))
        .routes(routes!(search::cancel_queued))
        .routes(routes!(search::delete_finished))
        .routes(routes!(stats))
        .routes(routes!(get_job, delete_job))
        .routes(routes!(job_image))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_job))
        .routes(routes!(job_deliveries))
        .routes(routes!(events::stream))
}

/// Routes open to anyone: liveness and the API's description.
fn public_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::docs_page))
}

/// The OpenAPI document of the API, as served at `/api/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let guarded = guarded_router().into_openapi();
    let guarded_paths = guarded.paths.paths.keys().cloned().collect();
    let mut doc = openapi::ApiDoc::openapi();
    doc.merge(guarded);
    doc.merge(public_router().into_openapi());
    doc.merge(crate::ops::openapi());
    openapi::add_access_responses(&mut doc, &guarded_paths);
    doc
}

pub fn routes(state: AppState, access: Access) -> Router {
    let body_limit = state.upload.request_limit();
    let (guarded, _) = guarded_router().split_for_parts();
    let (public, _) = public_router().split_for_parts();
    guarded
        .route_layer(axum::middleware::from_fn_with_state(access, auth::require))
        .merge(public)
        .merge(openapi::asset_routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// `GET /healthz`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service", operation_id = "health",
    responses((status = 200, description = "The process is up.", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|_| ApiError::not_found())
}

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

#[derive(Debug, Deserialize)]
struct UploadParams {
    /// The file name of a raw image body.
    filename: Option<String>,
    /// The plain fields of a raw image body's jobs (as the multipart fields of that name).
    priority: Option<String>,
    webhook: Option<String>,
    webhook_events: Option<String>,
    cache: Option<String>,
}

/// The plain (non-file) fields of a submission.
#[derive(Debug)]
struct SubmitFields {
    /// Higher runs first among due jobs.
    priority: i32,
    /// Whether an earlier result for the same image may answer (the result cache).
    cache: bool,
    /// The URL to call when the jobs change.
    webhook: Option<String>,
    /// Which changes to call it for (`None`: the jobs' end).
    webhook_events: Option<Vec<EventKind>>,
}

/// The range of `priority`.
const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;
/// JPEG and PNG files up to this size are checked and hashed on the request's own task (tens of
/// microseconds); other files on the blocking pool.
const INLINE_CHECK_MAX: usize = 64 << 10;

fn invalid_webhook(message: impl Into<String>) -> ApiError {
    ApiError::from_code(ErrorCode::InvalidWebhook, message)
}

impl Default for SubmitFields {
    fn default() -> Self {
        SubmitFields {
            priority: 0,
            cache: true,
            webhook: None,
            webhook_events: None,
        }
    }
}

impl SubmitFields {
    /// The plain fields a submission reads (multipart fields, or the query of a raw body).
    const NAMES: [&'static str; 4] = ["priority", "webhook", "webhook_events", "cache"];

    /// Takes a plain field; the reader refuses unknown ones.
    fn take(&mut self, name: &str, text: &str) -> Result<(), ApiError> {
        match name {
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
            "cache" => {
                self.cache = match text.trim() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    other => {
                        return Err(ApiError::from_code(
                            ErrorCode::BadRequest,
                            format!(
                                "cache is true or false, not {:?}",
                                other.chars().take(32).collect::<String>()
                            ),
                        ))
                    }
                }
            }
            "priority" => {
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
            _ => {}
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

/// The multipart form of a submission.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only describes the form; `read_uploads` reads it.
struct SubmitForm {
    /// One or more image files (JPEG, PNG, WebP, GIF, BMP, TIFF; the format is sniffed from the
    /// bytes). Every part with a file name is an image, whatever its field name.
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1, max_items = 64)]
    file: Vec<Vec<u8>>,
    /// Higher runs first among due jobs.
    #[schema(minimum = -1000, maximum = 1000, default = 0, required = false)]
    priority: i32,
    /// A URL to call (a signed POST) when the jobs change; needs a server with webhooks on
    /// (`--webhook-secret`), and a public address unless the server allows private ones.
    #[schema(required = false)]
    webhook: String,
    /// Which changes to call the webhook for, comma-separated: `running`, `succeeded`,
    /// `failed`, `canceled` (default: each job's end).
    #[schema(required = false)]
    webhook_events: String,
    /// `false`: classify every image, even one whose result the server already has for the same
    /// model (by default such an image is answered at once from that result, `cached: true`).
    #[schema(default = true, required = false)]
    cache: bool,
}

/// Submit images: one job per image file, all or nothing.
///
/// Every file is checked before anything is stored: its format is sniffed from the bytes, its
/// size and dimensions are checked against the limits (from the header, before decoding), and
/// it must be complete. One bad file refuses the whole request.
///
/// With `Prefer: wait=N` (N ≤ 60) the answer waits until every job has finished or N seconds
/// have passed, and then shows the jobs as they are (`Preference-Applied: wait=N`).
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", operation_id = "create_jobs",
    params(("Prefer" = Option<String>, Header, description = "`wait=N`: hold the answer until every job has finished, at most N seconds (N ≤ 60; larger values count as 60)."),
        ("Idempotency-Key" = Option<String>, Header, description = "A key of 1 to 255 visible ASCII characters (bare, or as a structured-field string `\"…\"`) that makes the request safe to send again: within `--idempotency-ttl` (24 h by default) the same key with the same files and fields answers with the first request's jobs (`Idempotent-Replayed: true`). Keys are per caller.", pattern = r#"^([!#-\[\]-~]{1,255}|"[!#-\[\]-~]{1,255}")$"#)),
    request_body(content = SubmitForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "The jobs, in the order of the files: queued (or `succeeded` with `cached: true` when the result cache answered), or with `Prefer: wait`, as they are when they finished or the wait ended. A request sent again with its `Idempotency-Key` gets the first request's jobs as they are now.", body = JobsCreated,
            headers(("Location" = String, description = "The first job's URL."),
                ("Preference-Applied" = String, description = "`wait=N` when the answer waited."),
                ("Idempotent-Replayed" = String, description = "`true` when the jobs are those of an earlier request with the same `Idempotency-Key`."))),
        (status = 400, description = "`bad_request`: the body is not a readable multipart form, it has a field that is neither a file nor a known field, or `priority` or `cache` is out of range. `no_files`: the form has no file. `invalid_idempotency_key`: the `Idempotency-Key` header is empty, too long, not visible ASCII, or sent twice.", body = ErrorBody),
        (status = 404, description = "`not_found`: the jobs that this request's `Idempotency-Key` created have been deleted.", body = ErrorBody),
        (status = 409, description = "`idempotency_key_in_use`: a request with the same `Idempotency-Key` is still being processed (`Retry-After`).", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds after which to send the request again."))),
        (status = 413, description = "`payload_too_large`: a file is over the size limit, the body over the request limit, or there are too many files.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a file is not an image of an accepted format.", body = ErrorBody),
        (status = 422, description = "`image_corrupt`: a file is truncated or damaged. `image_too_large`: an image is over the width, height or pixel limit. `invalid_webhook`: the webhook URL or events are not ones the server calls. `idempotency_key_mismatch`: the `Idempotency-Key` was first used with other files or fields.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller's submission quota is used up (`Retry-After`). `queue_full`: the caller has as many queued jobs as it may.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds until a submission may be accepted again."))),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again. `busy`: the server holds as many uploaded bytes as its upload budget allows and no room was made within the budget's wait; try again after `Retry-After` seconds.", body = ErrorBody,
            headers(("Retry-After" = String, description = "With `busy`: seconds after which to try again."))),
    ))]
async fn create_jobs(
    State(state): State<AppState>,
    caller: Caller,
    admission: crate::quota::Admission,
    ApiQuery(params): ApiQuery<UploadParams>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    // Plain fields: from the query (how a raw image body gives them), then from the multipart
    // fields of the same names.
    let mut fields = SubmitFields::default();
    for (name, value) in [
        ("priority", &params.priority),
        ("webhook", &params.webhook),
        ("webhook_events", &params.webhook_events),
        ("cache", &params.cache),
    ] {
        if let Some(value) = value {
            fields.take(name, value)?;
        }
    }
    let submission = upload::read_request(
        &state.upload,
        &state,
        params.filename,
        &SubmitFields::NAMES,
        request,
    )
    .await?;
    for (name, text) in &submission.fields {
        fields.take(name, text)?;
    }
    let uploads = submission.uploads;
    // The request's share of the upload budget, given back once its bytes are stored.
    let held = submission.held;
    if let Some(empty) = uploads.iter().find(|u| u.bytes.is_empty()) {
        return Err(ApiError::from_code(
            ErrorCode::EmptyFile,
            format!("{} is empty", empty.label),
        ));
    }
    if uploads.is_empty() {
        return Err(ApiError::from_code(
            ErrorCode::NoFiles,
            "the request has no image file; send them as multipart/form-data file fields",
        ));
    }
    let key = idempotency::key_of(&headers, &caller)?;
    let webhook = fields.webhook(&state).await?;
    let mut new_jobs = Vec::with_capacity(uploads.len());
    for upload in uploads {
        // Hashing and the check (format, limits, completeness) read headers and scan the bytes
        // once, never decode. For a small JPEG or PNG (our own marker and chunk walks) they take
        // microseconds and run here: a hand-off to another thread would cost more. Anything
        // else runs on the blocking pool, bounded so that uploads cannot starve the workers of
        // cores.
        let limits = state.upload.limits;
        let check = move |upload: upload::Upload| {
            let probed = imageio::check(&upload.bytes, &limits);
            let sha256 = hex::encode(Sha256::digest(&upload.bytes));
            (upload, probed, sha256)
        };
        let inline = upload.bytes.len() <= INLINE_CHECK_MAX
            && matches!(
                imageio::sniff_content_type(&upload.bytes),
                Some("image/jpeg" | "image/png")
            );
        let (upload, probed, sha256) = if inline {
            // A panic answers 500 as it does from the blocking pool.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(upload)))
                .map_err(|_| ApiError::internal("upload check panicked", "panic"))?
        } else {
            let permit = state
                .upload
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| ApiError::internal("upload permits closed", e))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                check(upload)
            })
            .await
            .map_err(|e| ApiError::internal("upload check panicked", e))?
        };
        let probed =
            probed.map_err(|e| ApiError::from_code(e.code(), format!("{}: {e}", upload.label)))?;
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
            cached_result: None,
        });
    }
    let wait = wait::preferred(&headers);
    // Subscribed before the jobs exist (or are read again), so the wait cannot miss their
    // changes.
    let live = wait.map(|_| state.store.subscribe());
    let hold = match key {
        None => None,
        Some(key) => {
            let key = key.fingerprinted(&fields, &new_jobs);
            match idempotency::claim(&state, &key).await? {
                idempotency::Claimed::Held(hold) => Some(hold),
                idempotency::Claimed::Answer(jobs) => {
                    return answer_created(&state, jobs, wait, live, true).await;
                }
                idempotency::Claimed::Refused(resp) => return Ok(resp),
            }
        }
    };
    let created = async {
        if let Err(refused) = admission.admit(new_jobs.len()).await {
            return Ok(Err(refused));
        }
        if fields.cache {
            cache_lookup(&state, &mut new_jobs).await;
        }
        state
            .store
            .create_jobs_keyed(new_jobs, hold.clone())
            .await
            .map(Ok)
    }
    .await;
    let jobs = match created {
        Ok(Ok(jobs)) => jobs,
        refused_or_failed => {
            // Nothing was stored: the key is free for a retry at once.
            if let Some(hold) = &hold {
                if let Err(e) = state.store.release_idempotency_key(hold).await {
                    tracing::warn!(error = %e, "could not give back an idempotency key");
                }
            }
            return match refused_or_failed {
                Ok(Err(refused)) => Ok(refused),
                Err(e) => Err(e.into()),
                Ok(Ok(_)) => unreachable!(),
            };
        }
    };
    // The upload budget's share is given back once the jobs are stored.
    drop(held);
    for j in &jobs {
        if j.cached {
            tracing::info!(job.id = %j.id, image.sha256 = %j.image_sha256, "job answered from the result cache");
        } else {
            tracing::info!(job.id = %j.id, image.sha256 = %j.image_sha256, "job queued");
        }
    }
    answer_created(&state, jobs, wait, live, false).await
}

/// Fills in the cached results of the jobs whose image already has a result from the model the
/// cache serves. The cache only saves work: when it cannot be read, every job is classified.
async fn cache_lookup(state: &AppState, jobs: &mut [NewJob]) {
    let Some(model) = &state.result_cache else {
        return;
    };
    let images: Vec<String> = jobs.iter().map(|j| j.sha256.clone()).collect();
    match state.store.cached_results(&images, model).await {
        Ok(found) => {
            for job in jobs.iter_mut() {
                job.cached_result = found.get(&job.sha256).cloned();
            }
        }
        Err(e) => tracing::warn!(error = %e, "result cache unavailable; classifying every image"),
    }
}

/// The answer to a submission: its jobs (after the wait the client asked for), `202 Accepted`,
/// `Location` of the first, and `Idempotent-Replayed: true` when they are an earlier request's.
async fn answer_created(
    state: &AppState,
    mut jobs: Vec<imgclass_store::Job>,
    wait: Option<std::time::Duration>,
    live: Option<tokio::sync::broadcast::Receiver<imgclass_store::Event>>,
    replayed: bool,
) -> Result<Response, ApiError> {
    let location = format!("/api/jobs/{}", jobs[0].id);
    if let (Some(wait), Some(live)) = (wait, live) {
        jobs = wait::until_finished(&*state.store, live, jobs, wait)
            .await?
            .jobs;
    }
    let body = JobsCreated {
        jobs: jobs.into_iter().map(JobView::from).collect(),
    };
    let mut resp = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if replayed {
        resp.headers_mut().insert(
            header::HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
    }
    if let Some(wait) = wait {
        set_preference_applied(&mut resp, wait);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^j[1-9][0-9]{0,17}$")]
    cursor: Option<String>,
    /// Jobs per page.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200, default = 50)]
    limit: Option<String>,
}

/// Jobs per page of `GET /api/jobs`: the default and the largest accepted.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 200;

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit.map(str::trim) {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::from_code(
                    ErrorCode::InvalidQuery,
                    format!(
                        "limit must be a whole number from 1 to {MAX_PAGE} (default {DEFAULT_PAGE}); got {:?}",
                        l.chars().take(32).collect::<String>()
                    ),
                )
            }),
    }
}

/// List jobs, newest first, one page at a time; with filters, only the jobs that match all of
/// them, and `total` counts those on every page.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", operation_id = "list_jobs", params(ListParams, search::FilterParams),
    responses(
        (status = 200, description = "A page of jobs; `next_cursor` is null on the last page; `total` is how many jobs match.", body = JobList),
        (status = 400, description = "`invalid_status`: `status` is not a job status. `invalid_cursor`: the cursor is not one this server gave out. `invalid_query`: the query cannot be read: `limit` is not a number from 1 to 200, `q` or `label` is over 200 characters or holds a NUL character, `error_code` is not an error code, or `since`/`until` is not an RFC 3339 time.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
    ApiQuery(filters): ApiQuery<search::FilterParams>,
) -> Result<Json<JobList>, ApiError> {
    let limit = parse_limit(params.limit.as_deref())?;
    let filter = filters.filter(search::status(params.status)?, &caller)?;
    let page = state
        .store
        .search_jobs(&filter, params.cursor.as_deref(), limit)
        .await?;
    let total = state.store.count_jobs(&filter).await?;
    Ok(Json(JobList {
        jobs: page.jobs.into_iter().map(JobView::from).collect(),
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
async fn get_job(
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
    let mut resp = Json(JobView::from(job)).into_response();
    if let Some(wait) = wait {
        set_preference_applied(&mut resp, wait);
    }
    Ok(resp)
}

fn set_preference_applied(resp: &mut Response, wait: std::time::Duration) {
    if let Ok(v) = HeaderValue::from_str(&wait::applied(wait)) {
        resp.headers_mut()
            .insert(header::HeaderName::from_static("preference-applied"), v);
    }
}

/// The stored image of a job, as uploaded.
#[utoipa::path(get, path = "/api/jobs/{id}/image", tag = "jobs", operation_id = "get_job_image", params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 200, description = "The bytes, with the sniffed `Content-Type`.",
            content(("image/jpeg"), ("image/png"), ("image/webp"), ("image/gif"), ("image/bmp"), ("image/tiff")),
            headers(("ETag" = String, description = "The image's SHA-256."))),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
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

/// Run a failed or canceled job again: it goes back to the queue with a new round of attempts.
#[utoipa::path(post, path = "/api/jobs/{id}/retry", tag = "jobs", operation_id = "retry_job", params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 200, description = "The job, queued again.", body = JobView),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 409, description = "`invalid_state`: only failed or canceled jobs can be retried.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
async fn retry_job(
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
async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = state.store.cancel(parse_id(&id)?).await?;
    tracing::info!(job.id = %job.id, "job canceled");
    Ok(Json(job.into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RetryFailedParams {
    /// Only failed jobs whose error has this code.
    #[param(value_type = Option<ErrorCode>)]
    error_code: Option<String>,
}

/// Run every failed job (with this error code) again.
#[utoipa::path(post, path = "/api/jobs/retry-failed", tag = "jobs", operation_id = "retry_failed_jobs", params(RetryFailedParams),
    responses(
        (status = 200, description = "The jobs put back in the queue.", body = RetriedJobs),
        (status = 400, description = "`bad_request`: `error_code` is not an error code.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
async fn retry_failed(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<RetryFailedParams>,
) -> Result<Json<RetriedJobs>, ApiError> {
    let error_code = params
        .error_code
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

/// Queue figures: counts per status, the oldest queued job's age, recent throughput, the rate
/// limit's remaining starts (a token without `admin` sees its own jobs' figures).
#[utoipa::path(get, path = "/api/stats", tag = "service", operation_id = "stats",
    responses(
        (status = 200, description = "The figures.", body = StatsView),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<StatsView>, ApiError> {
    let only = caller.only();
    let s = state
        .store
        .stats_of(only.as_deref(), state.rate_limit)
        .await?;
    Ok(Json(StatsView::new(s, state.rate_limit)))
}

/// The job's webhook calls, each with its attempts.
#[utoipa::path(get, path = "/api/jobs/{id}/deliveries", tag = "jobs", operation_id = "get_job_deliveries",
    params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 200, description = "The calls, oldest first.", body = views::DeliveryList),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
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

/// Delete a job (whatever its state), and its image when no other job uses it.
#[utoipa::path(delete, path = "/api/jobs/{id}", tag = "jobs", operation_id = "delete_job", params(("id" = String, Path, description = "The job's id.", format = Uuid)),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`not_found`: no job has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
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
