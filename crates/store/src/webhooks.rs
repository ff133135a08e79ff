//! The outbox on the database ([`Webhooks`] for the store): due deliveries claimed under a
//! lease (skipping rows another node is claiming, on PostgreSQL), each attempt recorded fenced
//! by that lease, a job's deliveries read back.

use crate::dialect::{Durability, Lock};
use crate::model::to_json;
use crate::outbox::{delivery_from_row, DELIVERY_COLUMNS};
use crate::rows::ms_to_time;
use crate::sql::SqlStore;
use crate::{Delivery, DeliveryAttempt, DeliveryNext, DeliveryStatus, Result, Webhooks};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::JobId;
use std::time::Duration;

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
