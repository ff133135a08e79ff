//! What both backends share: the job columns, row → `Job` mapping, and time helpers. Both
//! store times as unix milliseconds and JSON as text, so one mapping serves both.

use crate::{Job, JobError, RateLimit, Result, StoreError};
use chrono::{DateTime, Utc};
use imgclass_core::ErrorCode;
use sqlx::Row;
use std::str::FromStr;

pub(crate) const JOB_COLUMNS: &str =
    "j.seq, j.id, j.status, j.image_sha256, b.content_type, b.size, b.width, \
     b.height, j.file_name, j.attempts, j.stalls, j.run_attempts, j.max_attempts, j.priority, j.run_at, j.lease_owner, j.lease_until, \
     j.error_code, j.error_message, j.attempt_errors, j.result, j.created_at, j.started_at, \
     j.finished_at, j.updated_at, j.owner, j.webhook_url, j.webhook_events, j.cached, j.model";

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A time as stored: unix milliseconds.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn db_err(message: impl Into<String>) -> StoreError {
    StoreError::Database(message.into())
}

/// A job id read from the database.
pub(crate) fn parse_id(id: &str) -> Result<imgclass_core::JobId> {
    id.parse()
        .map_err(|e: imgclass_core::ParseJobIdError| db_err(e.to_string()))
}

/// The columns of a result row, read by name: an sqlx row (either database) or a row of the
/// SQLite round thread's own connection (`sqlite_round::OwnedRow`).
pub(crate) trait Columns {
    fn opt_text(&self, name: &str) -> Result<Option<String>>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>>;
    fn opt_blob(&self, name: &str) -> Result<Option<Vec<u8>>>;

    fn text(&self, name: &str) -> Result<String> {
        self.opt_text(name)?
            .ok_or_else(|| db_err(format!("column {name} is NULL")))
    }

    fn int(&self, name: &str) -> Result<i64> {
        self.opt_int(name)?
            .ok_or_else(|| db_err(format!("column {name} is NULL")))
    }
}

impl Columns for sqlx::any::AnyRow {
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        Ok(self.try_get(name)?)
    }

    fn opt_int(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.try_get(name)?)
    }

    fn opt_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(name)?)
    }
}

/// A `Job` from a row holding [`JOB_COLUMNS`], on either backend.
pub(crate) fn job_from_row(row: &impl Columns) -> Result<Job> {
    let error = match (row.opt_text("error_code")?, row.opt_text("error_message")?) {
        (Some(code), Some(message)) => Some(JobError {
            code: ErrorCode::from_str(&code).map_err(db_err)?,
            message,
        }),
        _ => None,
    };
    let opt_time =
        |name: &str| -> Result<Option<DateTime<Utc>>> { Ok(row.opt_int(name)?.map(ms_to_time)) };
    Ok(Job {
        seq: row.int("seq")?,
        id: parse_id(&row.text("id")?)?,
        status: row.text("status")?.parse().map_err(db_err)?,
        image_sha256: row.text("image_sha256")?,
        content_type: row.text("content_type")?,
        image_size: row.int("size")? as u64,
        width: row.int("width")? as u32,
        height: row.int("height")? as u32,
        file_name: row.opt_text("file_name")?,
        attempts: row.int("attempts")? as u32,
        stalls: row.int("stalls")? as u32,
        run_attempts: row.int("run_attempts")? as u32,
        max_attempts: row.int("max_attempts")? as u32,
        priority: row.int("priority")? as i32,
        run_at: ms_to_time(row.int("run_at")?),
        lease_owner: row.opt_text("lease_owner")?,
        lease_until: opt_time("lease_until")?,
        error,
        attempt_errors: serde_json::from_str(&row.text("attempt_errors")?)
            .map_err(|e| db_err(format!("attempt_errors: {e}")))?,
        result: row
            .opt_text("result")?
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| db_err(format!("result: {e}")))?,
        created_at: ms_to_time(row.int("created_at")?),
        started_at: opt_time("started_at")?,
        finished_at: opt_time("finished_at")?,
        updated_at: ms_to_time(row.int("updated_at")?),
        owner: row.opt_text("owner")?,
        webhook: webhook_from(
            row.opt_text("webhook_url")?,
            row.opt_text("webhook_events")?,
        )?,
        cached: row.int("cached")? != 0,
        model: row.text("model")?,
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
