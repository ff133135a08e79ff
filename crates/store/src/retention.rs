//! Deleting jobs: one job, and retention (finished jobs older than a time, with the images no
//! remaining job uses, old events and finished webhook deliveries). A blob is deleted only when
//! no job refers to it; images in an object store are removed by the collector (`collect`).

use crate::dialect::Durability;
use crate::sql::SqlStore;
use crate::transition::record;
use crate::tx::Write;
use crate::{Pruned, Result, StoreError};
use chrono::{DateTime, Utc};
use imgclass_core::{EventKind, JobId, JobStatus};

/// Deletes a job's row and records its `deleted` event (naming its owner); the sha256 of its
/// image, or `None` when there was no such job.
pub(crate) async fn delete_job(w: &mut Write, id: JobId) -> Result<Option<String>> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("DELETE FROM jobs WHERE id = $1 RETURNING image_sha256, owner")
            .bind(id.to_string())
            .fetch_optional(&mut *w.tx)
            .await?;
    let Some((sha, owner)) = row else {
        return Ok(None);
    };
    let (tx, events, now) = (&mut w.tx, &mut w.events, w.now);
    record(tx, events, id, EventKind::Deleted, None, owner, now).await?;
    Ok(Some(sha))
}

/// Deletes an image kept in the database when no job refers to it any more (one in an object
/// store is left to the collector, which deletes its object under its row: `collect`).
pub(crate) async fn delete_blob_if_unused(w: &mut Write, sha256: &str) -> Result<()> {
    sqlx::query(
        "DELETE FROM blobs WHERE sha256 = $1 AND store IS NULL AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE image_sha256 = $1)",
    )
    .bind(sha256)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}

impl SqlStore {
    pub(crate) async fn delete(&self, id: JobId) -> Result<()> {
        let mut w = self.begin(Durability::Durable).await?;
        let Some(sha) = delete_job(&mut w, id).await? else {
            w.tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        delete_blob_if_unused(&mut w, &sha).await?;
        self.commit(w).await
    }

    pub(crate) async fn prune(&self, before: DateTime<Utc>) -> Result<Pruned> {
        let before = before.timestamp_millis();
        let mut w = self.begin(Durability::Relaxed).await?;
        let jobs = sqlx::query(
            "DELETE FROM jobs WHERE status IN ($1, $2, $3) \
             AND finished_at IS NOT NULL AND finished_at < $4",
        )
        .bind(JobStatus::Succeeded.as_str())
        .bind(JobStatus::Failed.as_str())
        .bind(JobStatus::Canceled.as_str())
        .bind(before)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        let blobs = sqlx::query(
            "DELETE FROM blobs WHERE store IS NULL AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE image_sha256 = blobs.sha256)",
        )
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        let events = sqlx::query("DELETE FROM events WHERE at < $1")
            .bind(before)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        // Finished webhook deliveries go with the events; pending ones are still owed.
        sqlx::query("DELETE FROM webhook_deliveries WHERE status <> 'pending' AND updated_at < $1")
            .bind(before)
            .execute(&mut *w.tx)
            .await?;
        w.commit_plain().await?;
        Ok(Pruned {
            jobs,
            blobs,
            events,
        })
    }
}
