//! Submitting images, `POST /api/jobs`: the upload is read and every file checked before
//! anything is stored, then one job is created per file (or, under an `Idempotency-Key` already
//! used, the first request's jobs are the answer).

use super::extract::ApiQuery;
use super::submit_fields::SubmitFields;
use super::views::{ImageFile, JobView, JobsCreated};
use super::{idempotency, upload, wait};
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use imgclass_classifier::imageio;
use imgclass_core::ErrorCode;
use imgclass_store::NewJob;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The query of a submission: the file name of a raw image body, and the plain fields (for a raw
/// body, the only way to give them; with a form, read before the form's fields of the same names).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UploadParams {
    /// The file name of a raw image body, for display: its last path component is kept,
    /// without control characters, cut to 255 characters (as a multipart file's name is).
    filename: Option<String>,
    /// As the form field `priority`: higher runs first among due jobs (default 0).
    #[param(value_type = Option<i32>, minimum = -1000, maximum = 1000)]
    priority: Option<String>,
    /// As the form field `webhook`.
    webhook: Option<String>,
    /// As the form field `webhook_events`.
    webhook_events: Option<String>,
    /// As the form field `cache` (default true): `true`/`false`, `1`/`0`, `yes`/`no` or
    /// `on`/`off`, in any case.
    #[param(value_type = Option<bool>)]
    cache: Option<String>,
    /// As the form field `model`.
    model: Option<String>,
}

/// JPEG and PNG files up to this size are checked and hashed on the request's own task (tens of
/// microseconds); other files on the blocking pool.
const INLINE_CHECK_MAX: usize = 64 << 10;

/// The multipart form of a submission.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Only describes the form; `read_uploads` reads it.
struct SubmitForm {
    /// One or more image files (JPEG, PNG, WebP, GIF, BMP, TIFF; the format is sniffed from the
    /// bytes). Every part with a file name is an image, whatever its field name.
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1, max_items = 64)]
    file: Vec<Vec<u8>>,
    /// Higher runs first among due jobs (a whole number; surrounding spaces are ignored).
    #[schema(minimum = -1000, maximum = 1000, default = 0, required = false)]
    priority: i32,
    /// A URL to call (a signed POST) when the jobs change; needs a server with webhooks on
    /// (`--webhook-secret`), and a public address unless the server allows private ones.
    #[schema(required = false)]
    webhook: String,
    /// Which changes to call the webhook for, comma-separated (or in several fields):
    /// `running`, `succeeded`, `failed`, `canceled`, in any case (default: each job's end).
    #[schema(required = false)]
    webhook_events: String,
    /// `false`: classify every image, even one whose result the server already has for the same
    /// model (by default such an image is answered at once from that result, `cached: true`).
    /// Read as forms and generated clients write booleans: `true`/`false`, `1`/`0`, `yes`/`no`
    /// or `on`/`off`, in any case (`True` and `on` are true).
    #[schema(default = true, required = false)]
    cache: bool,
    /// The model that classifies the images (`GET /api/models` lists them; default: the
    /// server's default model). A name no node has served is refused with `unknown_model`; a
    /// model that no node serves right now is accepted and its jobs wait.
    #[schema(required = false)]
    model: String,
}

/// Submit images: one job per image file, all or nothing.
///
/// The images come as `multipart/form-data` file fields, or as one image that is the whole
/// request body (`Content-Type: image/*` or `application/octet-stream`), with its file name and
/// the plain fields in the query (`?filename=cat.jpg&priority=5`).
///
/// Every file is checked before anything is stored: its format is sniffed from the bytes, its
/// size and dimensions are checked against the limits (from the header, before decoding), and
/// it must be complete. One bad file refuses the whole request.
///
/// With `Prefer: wait=N` (N ≤ 60) the answer waits until every job has finished or N seconds
/// have passed, and then shows the jobs as they are (`Preference-Applied: wait=N`).
#[utoipa::path(post, path = "/api/jobs", tag = "jobs", operation_id = "create_jobs",
    params(UploadParams, ("Prefer" = Option<String>, Header, description = "`wait=N`: hold the answer until every job has finished, at most N seconds (N ≤ 60; larger values count as 60)."),
        ("Idempotency-Key" = Option<String>, Header, description = "A key of 1 to 255 visible ASCII characters (bare, or as a structured-field string `\"…\"`) that makes the request safe to send again: within `--idempotency-ttl` (24 h by default) the same key with the same files and fields answers with the first request's jobs (`Idempotent-Replayed: true`). Keys are per caller.", pattern = r#"^([!#-\[\]-~]{1,255}|"[!#-\[\]-~]{1,255}")$"#)),
    request_body(content((SubmitForm = "multipart/form-data"), (ImageFile = "image/*"), (ImageFile = "application/octet-stream"))),
    responses(
        (status = 202, description = "The jobs, in the order of the files: queued (or `succeeded` with `cached: true` when the result cache answered), or with `Prefer: wait`, as they are when they finished or the wait ended. A request sent again with its `Idempotency-Key` gets the first request's jobs as they are now.", body = JobsCreated,
            headers(("Location" = String, description = "The first job's URL."),
                ("Preference-Applied" = String, description = "`wait=N` when the answer waited."),
                ("Idempotent-Replayed" = String, description = "`true` when the jobs are those of an earlier request with the same `Idempotency-Key`."))),
        (status = 400, description = "`bad_request`: the body is not a readable multipart form, it has a field that is neither a file nor a known field, or `priority` or `cache` (a field or in the query) is not a value it takes. `no_files`: the form has no file. `invalid_idempotency_key`: the `Idempotency-Key` header is empty, too long, not visible ASCII, or sent twice.", body = ErrorBody),
        (status = 404, description = "`not_found`: the jobs that this request's `Idempotency-Key` created have been deleted.", body = ErrorBody),
        (status = 409, description = "`idempotency_key_in_use`: a request with the same `Idempotency-Key` is still being processed (`Retry-After`).", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds after which to send the request again."))),
        (status = 413, description = "`payload_too_large`: a file is over the size limit, the body over the request limit, or there are too many files.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a file is not an image of an accepted format, or the body is neither a multipart form nor an image.", body = ErrorBody),
        (status = 422, description = "`image_corrupt`: a file is truncated or damaged. `image_too_large`: an image is over the width, height or pixel limit. `invalid_webhook`: the webhook URL or events are not ones the server calls. `unknown_model`: `model` names a model no node has served (or is not a model's name). `idempotency_key_mismatch`: the `Idempotency-Key` was first used with other files or fields.", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller's submission quota is used up (`Retry-After`). `queue_full`: the caller has as many queued jobs as it may.", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds until a submission may be accepted again."))),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again. `busy`: the server holds as many uploaded bytes as its upload budget allows and no room was made within the budget's wait; try again after `Retry-After` seconds.", body = ErrorBody,
            headers(("Retry-After" = String, description = "With `busy`: seconds after which to try again."))),
    ))]
pub(super) async fn create_jobs(
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
        ("model", &params.model),
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
    let super::models::Chosen {
        name: model,
        known: models,
    } = super::models::chosen(&state, fields.model.as_deref()).await?;
    let mut new_jobs = Vec::with_capacity(uploads.len());
    for upload in uploads {
        // Hashing and the check (format, limits, completeness) read headers and scan the bytes
        // once, never decode. For a small JPEG or PNG (our own marker and chunk walks) they take
        // microseconds and run here: a hand-off to another thread would cost more. Anything
        // else runs on the blocking pool, bounded so that uploads cannot starve the workers of
        // cores.
        let limits = state.upload.limits;
        let check = move |upload: upload::Upload| {
            // Complete and within the limits, and its decode can fit the decode budget.
            let probed = imageio::check(&upload.bytes, &limits).and_then(|p| {
                imgclass_classifier::prepare::admits(&upload.bytes, &p, &limits).map(|()| p)
            });
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
            image: upload.bytes.into(),
            sha256,
            file_name: upload.file_name,
            max_attempts: state.max_attempts,
            priority: fields.priority,
            owner: caller.owner(),
            webhook: webhook.clone(),
            cached_result: None,
            model: model.clone(),
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
            cache_lookup(&state, &mut new_jobs, models).await;
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
/// `known`: the models as the submission's check read them, if it did.
async fn cache_lookup(
    state: &AppState,
    jobs: &mut [NewJob],
    known: Option<Vec<imgclass_store::ModelRecord>>,
) {
    let Some(own) = &state.result_cache else {
        return;
    };
    let mut models: Vec<String> = jobs.iter().map(|j| j.model.clone()).collect();
    models.sort();
    models.dedup();
    // The version of each other model, as its nodes last announced it.
    let announced = if let Some(known) = known {
        known
    } else if models.iter().any(|m| *m != own.name) {
        match state.store.models(super::models::LIVE).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "result cache unavailable; classifying every image");
                return;
            }
        }
    } else {
        Vec::new()
    };
    for name in models {
        // Only results of the model a job asks for, at its current version.
        let info = if name == own.name {
            own.clone()
        } else {
            let Some(r) = announced.iter().find(|r| r.entry.name == name) else {
                continue;
            };
            let provider = match r.entry.spec["provider"].as_str() {
                Some("imagga") => imgclass_core::Provider::Imagga,
                _ => imgclass_core::Provider::Builtin,
            };
            imgclass_core::ModelInfo {
                provider,
                name: name.clone(),
                version: r.entry.version.clone(),
            }
        };
        let images: Vec<String> = jobs
            .iter()
            .filter(|j| j.model == name)
            .map(|j| j.sha256.clone())
            .collect();
        match state.store.cached_results(&images, &info).await {
            Ok(found) => {
                for job in jobs.iter_mut().filter(|j| j.model == name) {
                    job.cached_result = found.get(&job.sha256).cloned();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "result cache unavailable; classifying every image");
                return;
            }
        }
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
        wait::set_preference_applied(&mut resp, wait);
    }
    Ok(resp)
}
