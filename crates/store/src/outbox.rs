//! Webhook deliveries, the outbox: its types, its rows, and the row a change adds. A job's change that its webhook asks for adds a delivery in
//! the same transaction as the change (`delivery_args`, written where every event is recorded: `transition::record`), so a
//! change is never announced without having happened, nor happens without being announced. Any
//! node's deliverer claims due deliveries under a lease (skipping rows another node is claiming,
//! on PostgreSQL) and records each attempt's outcome, fenced by that lease; a delivery whose
//! deliverer died is claimed again once its lease has expired.

use crate::exec::Arg;
use crate::model::to_json;
use crate::rows::{db_err, ms_to_time};
use crate::{Job, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::{EventKind, JobId};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::str::FromStr;
use std::time::Duration;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; tried at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: every attempt failed.
    Failed,
    /// The receiver answered `410 Gone`: no more attempts.
    Gone,
}

impl DeliveryStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Gone => "gone",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Failed,
            DeliveryStatus::Gone,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
        .ok_or_else(|| format!("unknown delivery status {s:?}"))
    }
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why there was no (successful) answer.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One webhook call to make: one event of one job.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The `webhook-id` of every attempt (`msg_…`).
    pub id: String,
    pub job_id: JobId,
    pub event: EventKind,
    pub url: String,
    /// The job right after the change.
    pub job: Job,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Every attempt so far, oldest first.
    pub attempt_log: Vec<DeliveryAttempt>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The lease this copy was claimed under (only for claimed deliveries).
    pub lease: Option<String>,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// No attempt is left.
    GiveUp,
    /// `410 Gone`: this and the job's other pending deliveries to the URL stop.
    Gone,
}

/// The outbox of webhook deliveries.
#[async_trait]
pub trait Webhooks: Send + Sync {
    /// Takes up to `limit` due deliveries under a lease of `lease` for `node`.
    async fn claim_deliveries(
        &self,
        node: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>>;

    /// Records an attempt of a claimed delivery and what follows; false (nothing written) when
    /// its lease is no longer this claim's.
    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        attempt: DeliveryAttempt,
        next: DeliveryNext,
    ) -> Result<bool>;

    /// A job's deliveries, oldest first.
    async fn deliveries(&self, job: JobId) -> Result<Vec<Delivery>>;

    /// When the next pending delivery is due (or its lease expires), if any is pending.
    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>>;
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, job_id, event, url, payload, status, attempts, \
     next_attempt_at, lease_owner, attempt_log, created_at, updated_at";

pub(crate) fn delivery_from_row(row: &sqlx::any::AnyRow) -> Result<Delivery> {
    let job_id: String = row.try_get("job_id")?;
    let event: String = row.try_get("event")?;
    let status: String = row.try_get("status")?;
    let payload: String = row.try_get("payload")?;
    let log: String = row.try_get("attempt_log")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        job_id: job_id
            .parse()
            .map_err(|e: imgclass_core::ParseJobIdError| db_err(e.to_string()))?,
        event: event.parse().map_err(db_err)?,
        url: row.try_get("url")?,
        job: serde_json::from_str(&payload).map_err(|e| db_err(format!("payload: {e}")))?,
        status: status.parse().map_err(db_err)?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        next_attempt_at: row
            .try_get::<Option<i64>, _>("next_attempt_at")?
            .map(ms_to_time),
        attempt_log: serde_json::from_str(&log).map_err(|e| db_err(format!("attempt_log: {e}")))?,
        created_at: ms_to_time(row.try_get("created_at")?),
        updated_at: ms_to_time(row.try_get("updated_at")?),
        lease: row.try_get("lease_owner")?,
    })
}

/// Puts a webhook's call in the outbox. Values: [`delivery_args`].
pub(crate) const DELIVERY_INSERT_SQL: &str =
    "INSERT INTO webhook_deliveries (id, job_id, event, url, payload, status, \
     next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7)";

/// The outbox row announcing `kind` of `job` at `now`, if the job has a webhook that wants it.
pub(crate) fn delivery_args(job: &Job, kind: EventKind, now: i64) -> Result<Option<Vec<Arg>>> {
    let Some(hook) = job.webhook.as_ref().filter(|h| h.wants(kind)) else {
        return Ok(None);
    };
    Ok(Some(vec![
        Arg::text(format!("msg_{}", uuid::Uuid::now_v7().simple())),
        Arg::text(job.id.to_string()),
        Arg::text(kind.as_str()),
        Arg::text(hook.url.clone()),
        Arg::text(to_json(job)?),
        Arg::text(DeliveryStatus::Pending.as_str()),
        Arg::int(now),
    ]))
}
