//! What both backends share: the job columns, row → `Job` mapping, and time helpers. Both
//! store times as unix milliseconds and JSON as text, so one mapping serves both.

use crate::{Job, JobError, RateLimit, Result, StoreError};
use chrono::{DateTime, Utc};
use imgclass_core::ErrorCode;
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::str::FromStr;

pub(crate) const JOB_COLUMNS: &str =
    "j.seq, j.id, j.status, j.image_sha256, b.content_type, b.size, b.width, \
     b.height, j.file_name, j.attempts, j.stalls, j.run_attempts, j.max_attempts, j.priority, j.run_at, j.lease_owner, j.lease_until, \
     j.error_code, j.error_message, j.attempt_errors, j.result, j.created_at, j.started_at, \
     j.finished_at, j.updated_at, j.owner, j.webhook_url, j.webhook_events, j.cached";

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn db_err(message: impl Into<String>) -> StoreError {
    StoreError::Database(message.into())
}

/// A `Job` from a row holding [`JOB_COLUMNS`], on either backend.
pub(crate) fn job_from_row<'r, R>(row: &'r R) -> Result<Job>
where
    R: Row,
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    let attempt_errors: String = row.try_get("attempt_errors")?;
    let result: Option<String> = row.try_get("result")?;
    let opt_time = |name: &'r str| -> Result<Option<DateTime<Utc>>> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(ms_to_time))
    };
    let error = match (error_code, error_message) {
        (Some(code), Some(message)) => Some(JobError {
            code: ErrorCode::from_str(&code).map_err(db_err)?,
            message,
        }),
        _ => None,
    };
    Ok(Job {
        seq: row.try_get("seq")?,
        id: id
            .parse()
            .map_err(|e: imgclass_core::ParseJobIdError| db_err(e.to_string()))?,
        status: status.parse().map_err(db_err)?,
        image_sha256: row.try_get("image_sha256")?,
        content_type: row.try_get("content_type")?,
        image_size: row.try_get::<i64, _>("size")? as u64,
        width: row.try_get::<i64, _>("width")? as u32,
        height: row.try_get::<i64, _>("height")? as u32,
        file_name: row.try_get("file_name")?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        stalls: row.try_get::<i64, _>("stalls")? as u32,
        run_attempts: row.try_get::<i64, _>("run_attempts")? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
        priority: row.try_get::<i64, _>("priority")? as i32,
        run_at: ms_to_time(row.try_get("run_at")?),
        lease_owner: row.try_get("lease_owner")?,
        lease_until: opt_time("lease_until")?,
        error,
        attempt_errors: serde_json::from_str(&attempt_errors)
            .map_err(|e| db_err(format!("attempt_errors: {e}")))?,
        result: result
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| db_err(format!("result: {e}")))?,
        created_at: ms_to_time(row.try_get("created_at")?),
        started_at: opt_time("started_at")?,
        finished_at: opt_time("finished_at")?,
        updated_at: ms_to_time(row.try_get("updated_at")?),
        owner: row.try_get("owner")?,
        webhook: webhook_from(row.try_get("webhook_url")?, row.try_get("webhook_events")?)?,
        cached: row.try_get::<i64, _>("cached")? != 0,
    })
}

/// The rate-limit window from its stored form (a JSON array of start times): the starts still
/// inside the window ending at `now`, oldest first.
pub(crate) fn window_starts(stored: Option<String>, now: i64, rate: RateLimit) -> Result<Vec<i64>> {
    let mut starts: Vec<i64> = match stored {
        Some(s) => serde_json::from_str(&s).map_err(|e| db_err(format!("rate_limits: {e}")))?,
        None => Vec::new(),
    };
    let window_start = now - rate.per.as_millis() as i64;
    starts.retain(|t| *t > window_start);
    starts.sort_unstable();
    Ok(starts)
}

/// A job's webhook from its two columns.
pub(crate) fn webhook_from(
    url: Option<String>,
    events: Option<String>,
) -> Result<Option<crate::Webhook>> {
    let Some(url) = url else { return Ok(None) };
    let events = events
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|e| e.parse().map_err(db_err))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(crate::Webhook { url, events }))
}

/// A webhook's events as stored: comma-separated names.
pub(crate) fn webhook_events(w: &crate::Webhook) -> String {
    w.events
        .iter()
        .map(|e| e.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
