//! Idempotent submission and the result cache.
//!
//! A request that carries an `Idempotency-Key` first claims the key ([`Idempotency::
//! claim_idempotency_key`]): a short transaction that either hands the key to this request
//! (`processing`, held for a while), or tells it what the key's first request became (replay its
//! jobs, a different request, still in progress). The request that holds the key completes it in
//! the same transaction that stores its jobs (`SqlStore::insert_jobs`), fenced by its `holder`
//! mark, so a key is `done` exactly when its jobs exist. A request that fails gives the key back;
//! one whose process dies leaves a hold that lapses by itself.

use crate::dialect::{Durability, Lock};
use crate::rows::{db_err, ms_to_time};
use crate::sql::SqlStore;
use crate::{IdempotencyKey, KeyClaim, KeyHold, Result};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::{JobId, JobResult, JobStatus, ModelInfo};
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

/// Recent results looked at per image when answering from the cache.
const CACHE_CANDIDATES: i64 = 8;

#[async_trait]
pub trait Idempotency: Send + Sync {
    /// Claims `key` for a request: see [`KeyClaim`]. A key lives `ttl` from its first use; a
    /// request holds it for at most `hold` (after that another request may take it over).
    async fn claim_idempotency_key(
        &self,
        key: &IdempotencyKey,
        ttl: Duration,
        hold: Duration,
    ) -> Result<KeyClaim>;

    /// Gives back a key this request holds and did not complete (its request failed), so that a
    /// retry can use it at once.
    async fn release_idempotency_key(&self, hold: &KeyHold) -> Result<()>;

    /// Deletes the keys that expired before `now`; returns how many.
    async fn prune_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64>;

    /// For each image (by SHA-256), the newest succeeded result that `model` produced, if any.
    async fn cached_results(
        &self,
        sha256: &[String],
        model: &ModelInfo,
    ) -> Result<HashMap<String, JobResult>>;
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Idempotency for SqlStore {
    async fn claim_idempotency_key(
        &self,
        key: &IdempotencyKey,
        ttl: Duration,
        hold: Duration,
    ) -> Result<KeyClaim> {
        let holder = uuid::Uuid::new_v4().to_string();
        let held = || {
            Ok(KeyClaim::Held(KeyHold {
                key: key.clone(),
                holder: holder.clone(),
            }))
        };
        // A claim that is lost in a crash created nothing: the jobs' own (durable) transaction
        // comes after it.
        let mut w = self.begin(Durability::Relaxed).await?;
        let now = w.now;
        let (held_until, expires_at) = (
            now.saturating_add(millis(hold)),
            now.saturating_add(millis(ttl)),
        );
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, state, holder, created_at, \
             held_until, expires_at) VALUES ($1, $2, $3, 'processing', $4, $5, $6, $7) \
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(&key.scope)
        .bind(&key.key)
        .bind(&key.fingerprint)
        .bind(&holder)
        .bind(now)
        .bind(held_until)
        .bind(expires_at)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            w.tx.commit().await?;
            return held();
        }
        let sql = format!(
            "SELECT fingerprint, state, holder, job_ids, held_until, expires_at \
             FROM idempotency_keys WHERE scope = $1 AND key = $2{}",
            self.dialect.lock(Lock::Row)
        );
        let row = sqlx::query(&sql)
            .bind(&key.scope)
            .bind(&key.key)
            .fetch_one(&mut *w.tx)
            .await?;
        let fingerprint: String = row.try_get("fingerprint")?;
        let state: String = row.try_get("state")?;
        let old_holder: String = row.try_get("holder")?;
        let job_ids: Option<String> = row.try_get("job_ids")?;
        let old_held_until: i64 = row.try_get("held_until")?;
        let old_expires_at: i64 = row.try_get("expires_at")?;
        let expired = old_expires_at <= now;
        let abandoned = state == "processing" && old_held_until <= now;
        if expired || (abandoned && fingerprint == key.fingerprint) {
            // An expired key is a new key; a hold whose request died passes to its retry.
            sqlx::query(
                "UPDATE idempotency_keys SET fingerprint = $1, state = 'processing', holder = $2, \
                 job_ids = NULL, created_at = $3, held_until = $4, expires_at = $5 \
                 WHERE scope = $6 AND key = $7 AND holder = $8",
            )
            .bind(&key.fingerprint)
            .bind(&holder)
            .bind(now)
            .bind(held_until)
            .bind(if expired { expires_at } else { old_expires_at })
            .bind(&key.scope)
            .bind(&key.key)
            .bind(&old_holder)
            .execute(&mut *w.tx)
            .await?;
            w.tx.commit().await?;
            return held();
        }
        w.tx.rollback().await?;
        if fingerprint != key.fingerprint {
            return Ok(KeyClaim::Mismatch);
        }
        match job_ids {
            Some(ids) => {
                let ids: Vec<String> = serde_json::from_str(&ids)
                    .map_err(|e| db_err(format!("idempotency_keys.job_ids: {e}")))?;
                let ids = ids
                    .iter()
                    .map(|id| id.parse::<JobId>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| db_err(e.to_string()))?;
                Ok(KeyClaim::Replay(ids))
            }
            None => Ok(KeyClaim::InUse {
                until: ms_to_time(old_held_until),
            }),
        }
    }

    async fn release_idempotency_key(&self, hold: &KeyHold) -> Result<()> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND holder = $3 \
             AND state = 'processing'",
        )
        .bind(&hold.key.scope)
        .bind(&hold.key.key)
        .bind(&hold.holder)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn prune_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
                .bind(now.timestamp_millis())
                .execute(&self.writer)
                .await?
                .rows_affected(),
        )
    }

    async fn cached_results(
        &self,
        sha256: &[String],
        model: &ModelInfo,
    ) -> Result<HashMap<String, JobResult>> {
        let mut found = HashMap::new();
        let mut conn = self.reader.acquire().await?;
        for sha in sha256 {
            if found.contains_key(sha) {
                continue;
            }
            let results: Vec<String> = sqlx::query_scalar(
                "SELECT result FROM jobs WHERE image_sha256 = $1 AND status = $2 \
                 AND result IS NOT NULL ORDER BY finished_at DESC LIMIT $3",
            )
            .bind(sha)
            .bind(JobStatus::Succeeded.as_str())
            .bind(CACHE_CANDIDATES)
            .fetch_all(&mut *conn)
            .await?;
            let hit = results
                .iter()
                .filter_map(|r| serde_json::from_str::<JobResult>(r).ok())
                .find(|r| r.model == *model);
            if let Some(result) = hit {
                found.insert(sha.clone(), result);
            }
        }
        Ok(found)
    }
}
