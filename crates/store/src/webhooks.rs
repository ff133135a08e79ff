//! Webhook deliveries: the outbox. A job's change that its webhook asks for adds a delivery in
//! the same transaction as the change (`enqueue`, called where every event is recorded), so a
//! change is never announced without having happened, nor happens without being announced. Any
//! node's deliverer claims due deliveries under a lease (skipping rows another node is claiming,
//! on PostgreSQL) and records each attempt's outcome, fenced by that lease; a delivery whose
//! deliverer died is claimed again once its lease has expired.

use crate::dialect::{Durability, Lock};
use crate::model::to_json;
use crate::round::Arg;
use crate::rows::{db_err, ms_to_time};
use crate::sql::{SqlStore, Write};
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

const DELIVERY_COLUMNS: &str = "id, job_id, event, url, payload, status, attempts, \
     next_attempt_at, lease_owner, attempt_log, created_at, updated_at";

fn delivery_from_row(row: &sqlx::any::AnyRow) -> Result<Delivery> {
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

/// Adds the delivery of `kind` for `job` (as it is right after the change) when the job's
/// webhook asks for it; called inside the change's transaction.
pub(crate) async fn enqueue(w: &mut Write, job: &Job, kind: EventKind) -> Result<()> {
    let Some(args) = delivery_args(job, kind, w.now)? else {
        return Ok(());
    };
    sqlx::query_with(DELIVERY_INSERT_SQL, crate::sql::any_args(&args)?)
        .execute(&mut *w.tx)
        .await?;
    Ok(())
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

#[async_trait]
impl Webhooks for SqlStore {
    async fn claim_deliveries(
        &self,
        node: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>> {
        let mut w = self.begin(Durability::Relaxed).await?;
        let now = w.now;
        // The status is a literal so that PostgreSQL's partial index `webhook_deliveries_due`
        // serves this under a generic plan too (see `claim_sql` in round.rs).
        let sql = format!(
            "SELECT id FROM webhook_deliveries WHERE status = '{}' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) ORDER BY next_attempt_at, seq \
             LIMIT $2{}",
            DeliveryStatus::Pending.as_str(),
            self.dialect.lock(Lock::RowsSkipLocked)
        );
        let ids: Vec<String> = sqlx::query_scalar(&sql)
            .bind(now)
            .bind(limit.max(1) as i64)
            .fetch_all(&mut *w.tx)
            .await?;
        if ids.is_empty() {
            w.tx.rollback().await?;
            return Ok(Vec::new());
        }
        let token = format!("{node}-{}", uuid::Uuid::new_v4().simple());
        for id in &ids {
            sqlx::query(
                "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2, \
                 updated_at = $3 WHERE id = $4",
            )
            .bind(&token)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        }
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE lease_owner = $1 \
             ORDER BY next_attempt_at, seq"
        ))
        .bind(&token)
        .fetch_all(&mut *w.tx)
        .await?;
        let claimed = rows.iter().map(delivery_from_row).collect::<Result<_>>()?;
        w.commit_plain().await?;
        Ok(claimed)
    }

    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        attempt: DeliveryAttempt,
        next: DeliveryNext,
    ) -> Result<bool> {
        let Some(lease) = &delivery.lease else {
            return Ok(false);
        };
        let mut w = self.begin(Durability::Relaxed).await?;
        let mut log = delivery.attempt_log.clone();
        log.push(attempt);
        let (status, next_at) = match next {
            DeliveryNext::Delivered => (DeliveryStatus::Delivered, None),
            DeliveryNext::RetryAt(t) => (DeliveryStatus::Pending, Some(t.timestamp_millis())),
            DeliveryNext::GiveUp => (DeliveryStatus::Failed, None),
            DeliveryNext::Gone => (DeliveryStatus::Gone, None),
        };
        let changed = sqlx::query(
            "UPDATE webhook_deliveries SET status = $1, attempts = attempts + 1, \
             next_attempt_at = $2, lease_owner = NULL, lease_until = NULL, attempt_log = $3, \
             updated_at = $4 WHERE id = $5 AND lease_owner = $6",
        )
        .bind(status.as_str())
        .bind(next_at)
        .bind(to_json(&log)?)
        .bind(w.now)
        .bind(&delivery.id)
        .bind(lease)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if changed != 1 {
            w.tx.rollback().await?;
            return Ok(false);
        }
        if next == DeliveryNext::Gone {
            // The receiver is gone for this job: its other pending calls there stop too.
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $1, next_attempt_at = NULL, \
                 updated_at = $2 WHERE job_id = $3 AND url = $4 AND status = $5 \
                 AND (lease_until IS NULL OR lease_until < $2)",
            )
            .bind(DeliveryStatus::Gone.as_str())
            .bind(w.now)
            .bind(delivery.job_id.to_string())
            .bind(&delivery.url)
            .bind(DeliveryStatus::Pending.as_str())
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit_plain().await?;
        Ok(true)
    }

    async fn deliveries(&self, job: JobId) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE job_id = $1 ORDER BY seq"
        ))
        .bind(job.to_string())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    async fn next_delivery_due(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at \
             THEN lease_until ELSE next_attempt_at END) FROM webhook_deliveries \
             WHERE status = $1",
        )
        .bind(DeliveryStatus::Pending.as_str())
        .fetch_one(&self.reader)
        .await?;
        Ok(v.map(ms_to_time))
    }
}
