//! Finding jobs: the filters that `GET /api/jobs`, the export and the bulk actions share; the
//! export, streamed page by page from the store (never the whole list in memory); and the bulk
//! actions on queued and finished jobs, each one request acting in the database.

use super::extract::ApiQuery;
use super::params::{self, shown};
use super::views::{BulkCount, JobView};
use crate::caller::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use imgclass_core::{ErrorCode, JobStatus};
use imgclass_store::{Job, JobFilter, Store};
use serde::Deserialize;
use std::sync::Arc;

/// The longest `q` or `label` accepted, in characters.
pub const MAX_SEARCH_CHARS: usize = 200;

/// Jobs read from the store per page of an export.
const EXPORT_PAGE: usize = 500;

/// The filters of the job list, the export, the bulk actions, `retry-failed` and the stats, as
/// every one of these routes reads them (one extractor, one parser): a value is checked the same
/// way on each, and a filter that a route cannot apply is refused rather than ignored.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    status: Option<String>,
    q: Option<String>,
    label: Option<String>,
    error_code: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// The filters besides `status` (whose values differ per route), as the document describes them
/// on the routes that take them all.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only describes the query; `Filters` reads it.
pub(super) struct FilterParams {
    /// Only jobs whose file name contains this text (case-insensitive; empty: any name).
    #[param(max_length = 200, pattern = "^[^\\x00]*$")]
    q: Option<String>,
    /// Only jobs whose top label (the most probable one) contains this text (case-insensitive;
    /// empty: any). Jobs without a result have no label.
    #[param(max_length = 200, pattern = "^[^\\x00]*$")]
    label: Option<String>,
    /// Only jobs whose error has this code (failed jobs, and queued ones waiting to retry).
    #[param(value_type = Option<ErrorCode>)]
    error_code: Option<String>,
    /// Only jobs created at or after this time (RFC 3339, with its offset).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only jobs created before this time (RFC 3339, with its offset).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
}

/// Which filters a route applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scope {
    /// The route, for error messages.
    route: &'static str,
    /// The statuses it acts on (`status` may narrow them to one); empty: every status.
    statuses: &'static [JobStatus],
    /// Whether `status` may be given.
    status: bool,
    /// Whether `q`, `label`, `since` and `until` may be given.
    search: bool,
    /// Whether `error_code` may be given.
    error_code: bool,
}

impl Scope {
    /// The job list and the export: every filter, every status.
    pub(super) const LIST: Scope = Scope {
        route: "the job list",
        statuses: &[],
        status: true,
        search: true,
        error_code: true,
    };
    pub(super) const CANCEL_QUEUED: Scope = Scope {
        route: "cancel-queued",
        statuses: &[JobStatus::Queued],
        status: true,
        search: true,
        error_code: true,
    };
    pub(super) const DELETE_FINISHED: Scope = Scope {
        route: "delete-finished",
        statuses: &[JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled],
        status: true,
        search: true,
        error_code: true,
    };
    /// The store retries failed jobs by error code (and owner) only.
    pub(super) const RETRY_FAILED: Scope = Scope {
        route: "retry-failed",
        statuses: &[JobStatus::Failed],
        status: true,
        search: false,
        error_code: true,
    };
    /// The stats count every job the caller may see: no filter.
    pub(super) const STATS: Scope = Scope {
        route: "the stats",
        statuses: &[],
        status: false,
        search: false,
        error_code: false,
    };
}

fn invalid(message: String) -> ApiError {
    ApiError::from_code(ErrorCode::InvalidQuery, message)
}

/// A search text: `None` when empty; refused when too long or holding a NUL character.
fn search_text(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.chars().count() > MAX_SEARCH_CHARS => Err(invalid(format!(
            "{name} is at most {MAX_SEARCH_CHARS} characters long"
        ))),
        Some(t) if t.contains('\0') => {
            Err(invalid(format!("{name} cannot contain a NUL character")))
        }
        Some(t) => Ok(Some(t)),
    }
}

fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|t| {
            DateTime::parse_from_rfc3339(t.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    invalid(format!(
                        "{name} must be an RFC 3339 time such as 2026-11-29T13:00:00Z; got {:?} ({e})",
                        shown(&t)
                    ))
                })
        })
        .transpose()
}

/// A `status` parameter: a job status (in any case).
fn status(value: &str) -> Result<JobStatus, ApiError> {
    params::enumerated(value, str::parse::<JobStatus>)
        .map_err(|e| ApiError::from_code(ErrorCode::InvalidStatus, e))
}

/// An `error_code` parameter: an error code (in any case).
fn error_code(value: &str) -> Result<ErrorCode, ApiError> {
    params::enumerated(value, str::parse::<ErrorCode>).map_err(|_| {
        invalid(format!(
            "error_code is not an error code: {:?}",
            shown(value)
        ))
    })
}

impl Filters {
    /// The store's filter for a route of `scope`: these conditions, and the caller's own jobs
    /// only when it may see no others. Every value is read first (a bad one is refused the same
    /// way on every route); then a filter the route cannot apply is refused.
    pub(super) fn parse(self, scope: Scope, caller: &Caller) -> Result<JobFilter, ApiError> {
        let filter = JobFilter {
            status: self.status.as_deref().map(status).transpose()?,
            owner: caller.only(),
            name: search_text("q", self.q)?,
            label: search_text("label", self.label)?,
            error_code: self.error_code.as_deref().map(error_code).transpose()?,
            since: time("since", self.since)?,
            until: time("until", self.until)?,
        };
        let not_applied =
            |name: &str| invalid(format!("{} does not filter by {name}", scope.route));
        if let Some(s) = filter.status {
            if !scope.status {
                return Err(not_applied("status"));
            }
            if !scope.statuses.is_empty() && !scope.statuses.contains(&s) {
                let names: Vec<&str> = scope.statuses.iter().map(|s| s.as_str()).collect();
                return Err(ApiError::from_code(
                    ErrorCode::InvalidStatus,
                    format!(
                        "{} acts on {} jobs only, not {s} ones",
                        scope.route,
                        names.join(", ")
                    ),
                ));
            }
        }
        let given = [
            ("q", filter.name.is_some() && !scope.search),
            ("label", filter.label.is_some() && !scope.search),
            ("since", filter.since.is_some() && !scope.search),
            ("until", filter.until.is_some() && !scope.search),
            (
                "error_code",
                filter.error_code.is_some() && !scope.error_code,
            ),
        ];
        if let Some((name, _)) = given.iter().find(|(_, refused)| *refused) {
            return Err(not_applied(name));
        }
        Ok(filter)
    }
}

/// The formats of an export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum ExportFormat {
    /// One row per job (RFC 4180, UTF-8, with a header row).
    #[default]
    Csv,
    /// A JSON array of jobs, each as `GET /api/jobs/{id}` shows it.
    Json,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ExportParams {
    /// `csv` (the default) or `json` (in any case).
    #[param(value_type = Option<ExportFormat>, inline)]
    format: Option<String>,
}

impl ExportFormat {
    /// A `format` parameter, in any case.
    fn parse(value: Option<&str>) -> Result<ExportFormat, ApiError> {
        let Some(value) = value else {
            return Ok(ExportFormat::default());
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "csv" => Ok(ExportFormat::Csv),
            "json" => Ok(ExportFormat::Json),
            _ => Err(invalid(format!(
                "format is csv or json, not {:?}",
                shown(value)
            ))),
        }
    }
}

/// `status` where every status may be given (the list and the export).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only describes the query; `Filters` reads it.
pub(super) struct StatusParam {
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
}

/// The statuses `delete-finished` acts on.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Only describes the query; `Filters` reads it.
enum FinishedStatus {
    Succeeded,
    Failed,
    Canceled,
}

/// The status `cancel-queued` acts on.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Only describes the query; `Filters` reads it.
enum QueuedStatus {
    Queued,
}

/// The status `retry-failed` acts on.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)] // Only describes the query; `Filters` reads it.
pub(super) enum FailedStatus {
    Failed,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only describes the query; `Filters` reads it.
pub(super) struct FinishedStatusParam {
    /// Only the finished jobs in this status (default: all three).
    #[param(value_type = Option<FinishedStatus>, inline)]
    status: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only describes the query; `Filters` reads it.
pub(super) struct QueuedStatusParam {
    /// `queued`, the only status this route acts on (accepted, so that the list's filters can
    /// be sent as they are).
    #[param(value_type = Option<QueuedStatus>, inline)]
    status: Option<String>,
}

/// The CSV columns of an export.
const CSV_HEADER: &str = "id,file_name,status,top_label,top_probability,labels,created_at,\
started_at,finished_at,attempts,error_code,error_message\r\n";

/// A CSV field: quoted when it holds a comma, a quote or a line break; text that a spreadsheet
/// would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) gets a
/// leading `'`.
fn csv_field(out: &mut String, text: &str, is_text: bool) {
    let formula = is_text && text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = formula || text.contains([',', '"', '\n', '\r']);
    if quote {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in text.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quote {
        out.push('"');
    }
}

fn rfc3339(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// One job as a CSV row.
fn csv_row(job: &Job, out: &mut String) {
    let predictions = job
        .result
        .as_ref()
        .map(|r| r.predictions.as_slice())
        .unwrap_or_default();
    let top = predictions.first();
    let labels = predictions
        .iter()
        .map(|p| format!("{}: {:.4}", p.label, p.probability))
        .collect::<Vec<_>>()
        .join("; ");
    let fields: [(String, bool); 12] = [
        (job.id.to_string(), false),
        (job.file_name.clone().unwrap_or_default(), true),
        (job.status.as_str().to_string(), false),
        (top.map(|p| p.label.clone()).unwrap_or_default(), true),
        (
            top.map(|p| format!("{:.4}", p.probability))
                .unwrap_or_default(),
            false,
        ),
        (labels, true),
        (rfc3339(Some(job.created_at)), false),
        (rfc3339(job.started_at), false),
        (rfc3339(job.finished_at), false),
        (job.attempts.to_string(), false),
        (
            job.error
                .as_ref()
                .map(|e| e.code.as_str().to_string())
                .unwrap_or_default(),
            false,
        ),
        (
            job.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
            true,
        ),
    ];
    for (i, (text, is_text)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, text, *is_text);
    }
    out.push_str("\r\n");
}

/// Where an export is: the next page's cursor (`None` when done) and how many jobs it wrote.
struct ExportState {
    store: Arc<dyn Store>,
    filter: JobFilter,
    format: ExportFormat,
    cursor: Option<String>,
    written: u64,
}

impl ExportState {
    /// One page of jobs as the export's bytes, with the opening before the first page and the
    /// closing after the last; `done` when no page follows.
    fn render(
        &mut self,
        page: imgclass_store::JobPage,
        first: bool,
    ) -> Result<Bytes, std::io::Error> {
        let mut out = String::new();
        if first {
            out.push_str(match self.format {
                ExportFormat::Csv => CSV_HEADER,
                ExportFormat::Json => "[",
            });
        }
        for job in page.jobs {
            match self.format {
                ExportFormat::Csv => csv_row(&job, &mut out),
                ExportFormat::Json => {
                    if self.written > 0 {
                        out.push(',');
                    }
                    out.push('\n');
                    let view = serde_json::to_string(&JobView::from(job))
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    out.push_str(&view);
                }
            }
            self.written += 1;
        }
        self.cursor = page.next_cursor;
        if self.cursor.is_none() && self.format == ExportFormat::Json {
            out.push_str("\n]\n");
        }
        Ok(Bytes::from(out))
    }
}

/// The export's next page, once the first is written; `None` after the last.
async fn next_piece(mut st: ExportState) -> Result<Option<(Bytes, ExportState)>, std::io::Error> {
    let Some(cursor) = st.cursor.take() else {
        return Ok(None);
    };
    let page = st
        .store
        .search_jobs(&st.filter, Some(&cursor), EXPORT_PAGE)
        .await
        .map_err(|e| {
            // The answer has begun: all that is left is to end it unfinished.
            tracing::error!(error = %e, "export stopped: the jobs could not be read");
            std::io::Error::other("the jobs could not be read")
        })?;
    let bytes = st.render(page, false)?;
    Ok(Some((bytes, st)))
}

/// Export the jobs that match the filters, newest first, as CSV or JSON.
///
/// The answer is streamed while the jobs are read, a page at a time, so any number of jobs can
/// be exported; jobs created after the export began are not in it. CSV columns: `id`,
/// `file_name`, `status`, `top_label`, `top_probability`, `labels` (every label with its
/// probability, `label: 0.9536; ...`), `created_at`, `started_at`, `finished_at`, `attempts`,
/// `error_code`, `error_message`. A text field that a spreadsheet would run as a formula (one
/// starting with `=`, `+`, `-` or `@`) starts with `'`.
#[utoipa::path(get, path = "/api/jobs/export", tag = "jobs", operation_id = "export_jobs",
    params(ExportParams, StatusParam, FilterParams),
    responses(
        (status = 200, description = "The jobs, as an attachment.",
            content((String = "text/csv"), (Vec<JobView> = "application/json")),
            headers(("Content-Disposition" = String, description = "`attachment` with a file name such as `imgclass-jobs-20261129T130000Z.csv`."))),
        (status = 400, description = "`invalid_query`: `format` is not `csv` or `json`, `q` or `label` is over 200 characters or holds a NUL character, `error_code` is not an error code, or `since`/`until` is not an RFC 3339 time. `invalid_status`: `status` is not a job status.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn export_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ExportParams>,
    ApiQuery(filters): ApiQuery<Filters>,
) -> Result<Response, ApiError> {
    let format = ExportFormat::parse(params.format.as_deref())?;
    let filter = filters.parse(Scope::LIST, &caller)?;
    // The first page is read before answering, so that a database that cannot be reached is
    // answered with an error rather than a broken download.
    let page = state.store.search_jobs(&filter, None, EXPORT_PAGE).await?;
    let mut st = ExportState {
        store: state.store.clone(),
        filter,
        format,
        cursor: None,
        written: 0,
    };
    let head = st
        .render(page, true)
        .map_err(|e| ApiError::internal("export", e))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(futures_util::stream::try_unfold(st, next_piece));
    let (content_type, ext) = match format {
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        ExportFormat::Json => ("application/json", "json"),
    };
    let file = format!(
        "attachment; filename=\"imgclass-jobs-{}.{ext}\"",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&file) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Cancel every queued job that matches the filters, in one transaction.
///
/// How many that will be: `total` of `GET /api/jobs?status=queued` with the same filters (which
/// it accepts as they are, `status=queued` included).
#[utoipa::path(post, path = "/api/jobs/cancel-queued", tag = "jobs", operation_id = "cancel_queued_jobs",
    params(QueuedStatusParam, FilterParams),
    responses(
        (status = 200, description = "How many jobs were canceled.", body = BulkCount),
        (status = 400, description = "`invalid_query`: `q` or `label` is over 200 characters or holds a NUL character, `error_code` is not an error code, or `since`/`until` is not an RFC 3339 time. `invalid_status`: `status` is not a job status, or not `queued`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn cancel_queued(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filters): ApiQuery<Filters>,
) -> Result<Json<BulkCount>, ApiError> {
    let filter = filters.parse(Scope::CANCEL_QUEUED, &caller)?;
    let count = state.store.cancel_queued(&filter).await?;
    tracing::info!(jobs = count, "queued jobs canceled");
    Ok(Json(BulkCount { count }))
}

/// Delete every finished (succeeded, failed or canceled) job that matches the filters, and the
/// images no other job uses, in one transaction.
///
/// `status` narrows it to one of these statuses. How many that will be: the sum of `total` of
/// `GET /api/jobs?status=succeeded`, `failed` and `canceled` with the same filters (without filters: those counts in `GET /api/stats`).
#[utoipa::path(post, path = "/api/jobs/delete-finished", tag = "jobs", operation_id = "delete_finished_jobs",
    params(FinishedStatusParam, FilterParams),
    responses(
        (status = 200, description = "How many jobs were deleted.", body = BulkCount),
        (status = 400, description = "`invalid_query`: `q` or `label` is over 200 characters or holds a NUL character, `error_code` is not an error code, or `since`/`until` is not an RFC 3339 time. `invalid_status`: `status` is not a job status, or not a finished one.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot be reached; try again.", body = ErrorBody),
    ))]
pub(super) async fn delete_finished(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filters): ApiQuery<Filters>,
) -> Result<Json<BulkCount>, ApiError> {
    let filter = filters.parse(Scope::DELETE_FINISHED, &caller)?;
    let count = state.store.delete_finished(&filter).await?;
    tracing::info!(jobs = count, "finished jobs deleted");
    Ok(Json(BulkCount { count }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str, is_text: bool) -> String {
        let mut s = String::new();
        csv_field(&mut s, text, is_text);
        s
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(field("plain", true), "plain");
        assert_eq!(field("tabby, tabby cat", true), "\"tabby, tabby cat\"");
        assert_eq!(field("say \"hi\"", true), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\nlines", true), "\"two\nlines\"");
        assert_eq!(field("=1+1", true), "\"'=1+1\"");
        assert_eq!(field("@SUM(A1)", true), "\"'@SUM(A1)\"");
        // Times and numbers are not text: a leading minus stays.
        assert_eq!(field("-1", false), "-1");
    }

    #[test]
    fn search_texts_are_checked() {
        assert_eq!(search_text("q", None).unwrap(), None);
        assert_eq!(search_text("q", Some(String::new())).unwrap(), None);
        assert_eq!(
            search_text("q", Some("cat".into())).unwrap(),
            Some("cat".into())
        );
        assert!(search_text("q", Some("a\0b".into())).is_err());
        assert!(search_text("q", Some("x".repeat(MAX_SEARCH_CHARS + 1))).is_err());
        assert!(search_text("q", Some("é".repeat(MAX_SEARCH_CHARS))).is_ok());
        assert!(time("since", Some("yesterday".into())).is_err());
        assert_eq!(
            time("since", Some("2026-11-29T13:00:00+01:00".into())).unwrap(),
            Some("2026-11-29T12:00:00Z".parse().unwrap())
        );
    }
}
