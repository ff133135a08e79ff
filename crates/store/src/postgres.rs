//! The PostgreSQL backend, for many API and worker nodes on one database: claims with
//! `FOR UPDATE SKIP LOCKED`, the rate-limit window under a row lock, and LISTEN/NOTIFY so that
//! every node sees every event (and idle workers wake up) whichever node made the change.

use crate::model::{decode_cursor, encode_cursor};
use crate::rows::{db_err, job_from_row, ms_to_time, now_ms, window_starts, JOB_COLUMNS};
use crate::{
    Claim, ClaimBatch, Event, Job, JobPage, Lease, ListQuery, NewJob, Outcome, Pruned, QueueStats,
    RateLimit, Result, RetryFilter, Store, StoreError, StoredImage, CHUNK_SIZE,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::{Action, EventKind, JobId, JobStatus};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// The channel every committed change is announced on.
const EVENTS_CHANNEL: &str = "imgclass_events";

pub struct PgStore {
    pool: PgPool,
    wakeups: Arc<Notify>,
    events: broadcast::Sender<Event>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

async fn select_job<'c, E>(exec: E, id: &str) -> Result<Option<Job>>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs j JOIN blobs b ON b.sha256 = j.image_sha256 WHERE j.id = $1"
    );
    sqlx::query(&sql)
        .bind(id)
        .fetch_optional(exec)
        .await?
        .as_ref()
        .map(job_from_row)
        .transpose()
}

/// The job starts of the current rate-limit window, oldest first.
async fn recent_starts(
    tx: &mut Transaction<'_, Postgres>,
    now: i64,
    rate: RateLimit,
) -> Result<Vec<i64>> {
    let starts: Option<String> =
        sqlx::query_scalar("SELECT starts FROM rate_limits WHERE name = 'global' FOR UPDATE")
            .fetch_optional(&mut **tx)
            .await?;
    window_starts(starts, now, rate)
}

/// Records the events of one transaction. Nothing is kept in memory: every node's listener reads
/// them back from the log once the transaction has committed and announced them.
struct Pending(usize);

impl Pending {
    async fn record(
        &mut self,
        tx: &mut Transaction<'_, Postgres>,
        job_id: JobId,
        kind: EventKind,
        job: Option<Job>,
        at: i64,
    ) -> Result<()> {
        sqlx::query("INSERT INTO events (job_id, kind, status, at) VALUES ($1, $2, $3, $4)")
            .bind(job_id.to_string())
            .bind(kind.as_str())
            .bind(job.map(|j| j.status.as_str()))
            .bind(at)
            .execute(&mut **tx)
            .await?;
        self.0 += 1;
        Ok(())
    }
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Config {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let (events, _) = broadcast::channel(4096);
        let wakeups = Arc::new(Notify::new());
        // Events from now on are broadcast; before migrations the table may not exist yet.
        let last_seen: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap_or(None);
        let listener = tokio::spawn(listen(
            pool.clone(),
            last_seen.unwrap_or(0),
            wakeups.clone(),
            events.clone(),
        ));
        Ok(PgStore {
            pool,
            wakeups,
            events,
            listener,
        })
    }

    /// Announces the transaction's events to every node (delivered when it commits); the
    /// listener of each node, this one included, reads them from the log and broadcasts them.
    async fn finish_tx(&self, mut tx: Transaction<'_, Postgres>, pending: Pending) -> Result<()> {
        if pending.0 > 0 {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(EVENTS_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies a person's action (retry, cancel) to a job, guarded by the state machine.
    async fn transition(&self, id: JobId, action: Action) -> Result<Job> {
        // Reads before it writes: take the write lock first (see `claim_limited`).
        let mut tx = self.pool.begin().await?;
        let mut pending = Pending(0);
        let job = Self::transition_in(&mut tx, &mut pending, id, action).await?;
        self.finish_tx(tx, pending).await?;
        if job.status == JobStatus::Queued {
            self.wakeups.notify_waiters();
        }
        Ok(job)
    }

    async fn transition_in(
        tx: &mut Transaction<'_, Postgres>,
        pending: &mut Pending,
        id: JobId,
        action: Action,
    ) -> Result<Job> {
        let job = select_job(&mut **tx, &id.to_string())
            .await?
            .ok_or(StoreError::NotFound)?;
        let next = job.status.apply(action)?;
        let now = now_ms();
        let (sql, kind) = match action {
            Action::Retry => (
                "UPDATE jobs SET status = $1, run_at = $2, run_attempts = 0, stalls = 0, finished_at = NULL, \
                 updated_at = $3 WHERE id = $4 AND status = $5",
                EventKind::Retried,
            ),
            Action::Cancel => (
                "UPDATE jobs SET status = $1, finished_at = $2, updated_at = $3, lease_owner = NULL, \
                 lease_until = NULL WHERE id = $4 AND status = $5",
                EventKind::Canceled,
            ),
            other => return Err(db_err(format!("{} is not a manual action", other.as_str()))),
        };
        sqlx::query(sql)
            .bind(next.as_str())
            .bind(now)
            .bind(now)
            .bind(id.to_string())
            .bind(job.status.as_str())
            .execute(&mut **tx)
            .await?;
        let job = select_job(&mut **tx, &id.to_string())
            .await?
            .ok_or(StoreError::NotFound)?;
        pending.record(tx, id, kind, Some(job.clone()), now).await?;
        Ok(job)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        let mut tx = self.pool.begin().await?;
        let mut pending = Pending(0);
        let mut created = Vec::with_capacity(jobs.len());
        let now = now_ms();
        for new in jobs {
            let inserted = sqlx::query(
                "INSERT INTO blobs (sha256, size, content_type, width, height, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&new.sha256)
            .bind(new.image.len() as i64)
            .bind(&new.content_type)
            .bind(i64::from(new.width))
            .bind(i64::from(new.height))
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                for (idx, chunk) in new.image.chunks(CHUNK_SIZE).enumerate() {
                    sqlx::query("INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)")
                        .bind(&new.sha256)
                        .bind(idx as i64)
                        .bind(chunk)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let id = JobId::new();
            sqlx::query(
                "INSERT INTO jobs (id, status, image_sha256, file_name, max_attempts, run_at, \
                 created_at, updated_at) VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7)",
            )
            .bind(id.to_string())
            .bind(&new.sha256)
            .bind(&new.file_name)
            .bind(i64::from(new.max_attempts.max(1)))
            .bind(now)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let job = select_job(&mut *tx, &id.to_string())
                .await?
                .ok_or_else(|| db_err("inserted job vanished"))?;
            pending
                .record(&mut tx, id, EventKind::Created, Some(job.clone()), now)
                .await?;
            created.push(job);
        }
        self.finish_tx(tx, pending).await?;
        self.wakeups.notify_waiters();
        Ok(created)
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        select_job(&self.pool, &id.to_string()).await
    }

    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let before = match &query.cursor {
            Some(c) => decode_cursor(c).ok_or(StoreError::InvalidCursor)?,
            None => i64::MAX,
        };
        let limit = query.limit.clamp(1, 500);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN blobs b ON b.sha256 = j.image_sha256 \
             WHERE j.seq < $1 AND ($2::text IS NULL OR j.status = $3) ORDER BY j.seq DESC LIMIT $4"
        );
        let status = query.status.map(JobStatus::as_str);
        let rows = sqlx::query(&sql)
            .bind(before)
            .bind(status)
            .bind(status)
            .bind(limit as i64 + 1)
            .fetch_all(&self.pool)
            .await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        let next_cursor = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| encode_cursor(j.seq))
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    async fn job_image(&self, id: JobId) -> Result<Option<StoredImage>> {
        let Some(job) = self.get_job(id).await? else {
            return Ok(None);
        };
        let Some(bytes) = self.read_blob(&job.image_sha256).await? else {
            return Ok(None);
        };
        Ok(Some(StoredImage {
            bytes,
            content_type: job.content_type,
            sha256: job.image_sha256,
        }))
    }

    async fn read_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        // One statement, one snapshot: a concurrent delete is seen entirely or not at all.
        let rows: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT b.size, c.data FROM blobs b LEFT JOIN blob_chunks c ON c.sha256 = b.sha256 \
             WHERE b.sha256 = $1 ORDER BY c.idx",
        )
        .bind(sha256)
        .fetch_all(&self.pool)
        .await?;
        let Some(size) = rows.first().map(|r| r.0) else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(size as usize);
        for (_, chunk) in rows {
            bytes.extend_from_slice(chunk.as_deref().unwrap_or_default());
        }
        if bytes.len() as i64 != size {
            return Err(db_err(format!(
                "image {sha256} is incomplete: {} of {size} bytes",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }

    async fn claim_limited(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
    ) -> Result<ClaimBatch> {
        // The rate-limit row is locked (FOR UPDATE) before the window is read, and `now` is read
        // after, so concurrent claimers on any node take starts one after the other.
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let token = format!("{worker}/{}", uuid::Uuid::new_v4());
        let until = now + lease.as_millis() as i64;
        let mut limit = limit as i64;
        let mut window: Vec<i64> = Vec::new();
        if let Some(rate) = rate {
            window = recent_starts(&mut tx, now, rate).await?;
            let allowed = i64::from(rate.jobs) - window.len() as i64;
            if allowed <= 0 {
                tx.rollback().await?;
                let oldest = window.first().copied().unwrap_or(now);
                let wait = (oldest + rate.per.as_millis() as i64 - now).max(1);
                return Ok(ClaimBatch {
                    claims: Vec::new(),
                    rate_limited_for: Some(Duration::from_millis(wait as u64)),
                });
            }
            limit = limit.min(allowed);
        }
        let mut picked: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, \
             run_attempts = run_attempts + 1, lease_owner = $1, lease_until = $2, started_at = $3, \
             updated_at = $4 WHERE seq IN (SELECT seq FROM jobs WHERE status = 'queued' \
             AND run_at <= $5 ORDER BY priority DESC, run_at, seq LIMIT $6 FOR UPDATE SKIP LOCKED) \
             RETURNING id, priority, run_at, seq",
        )
        .bind(&token)
        .bind(until)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        // RETURNING gives no order: claims come out in queue order.
        picked.sort_by_key(|(_, priority, run_at, seq)| (-priority, *run_at, *seq));
        let ids: Vec<String> = picked.into_iter().map(|(id, ..)| id).collect();
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(ClaimBatch::default());
        }
        if rate.is_some() {
            window.extend(std::iter::repeat_n(now, ids.len()));
            sqlx::query(
                "INSERT INTO rate_limits (name, starts) VALUES ('global', $1) \
                 ON CONFLICT (name) DO UPDATE SET starts = excluded.starts",
            )
            .bind(serde_json::to_string(&window).map_err(|e| db_err(e.to_string()))?)
            .execute(&mut *tx)
            .await?;
        }
        let mut pending = Pending(0);
        let mut claims = Vec::with_capacity(ids.len());
        for id in ids {
            let job = select_job(&mut *tx, &id)
                .await?
                .ok_or_else(|| db_err("claimed job vanished"))?;
            pending
                .record(&mut tx, job.id, EventKind::Running, Some(job.clone()), now)
                .await?;
            claims.push(Claim {
                lease: Lease {
                    job_id: job.id,
                    token: token.clone(),
                },
                job,
            });
        }
        self.finish_tx(tx, pending).await?;
        Ok(ClaimBatch {
            claims,
            rate_limited_for: None,
        })
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let now = now_ms();
        let id = lease.job_id.to_string();
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_at = $1, attempts = GREATEST(attempts - 1, 0), \
             run_attempts = GREATEST(run_attempts - 1, 0), lease_owner = NULL, lease_until = NULL, \
             updated_at = $2 WHERE id = $3 AND status = 'running' AND lease_owner = $4",
        )
        .bind(now)
        .bind(now)
        .bind(&id)
        .bind(&lease.token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let job = select_job(&mut *tx, &id).await?;
        let mut pending = Pending(0);
        pending
            .record(&mut tx, lease.job_id, EventKind::Requeued, job, now)
            .await?;
        self.finish_tx(tx, pending).await?;
        self.wakeups.notify_waiters();
        Ok(true)
    }

    async fn heartbeat(&self, lease: &Lease, duration: Duration) -> Result<bool> {
        let until = now_ms() + duration.as_millis() as i64;
        let n = sqlx::query(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND status = 'running' AND lease_owner = $3",
        )
        .bind(until)
        .bind(lease.job_id.to_string())
        .bind(&lease.token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<bool> {
        let now = now_ms();
        let at = ms_to_time(now).to_rfc3339();
        let id = lease.job_id.to_string();
        let mut tx = self.pool.begin().await?;
        let (q, kind) = match &outcome {
            Outcome::Succeeded(result) => (
                sqlx::query(
                    "UPDATE jobs SET status = 'succeeded', result = $1, error_code = NULL, \
                     error_message = NULL, lease_owner = NULL, lease_until = NULL, \
                     finished_at = $2, updated_at = $3 \
                     WHERE id = $4 AND status = 'running' AND lease_owner = $5",
                )
                .bind(serde_json::to_string(result).map_err(|e| db_err(e.to_string()))?)
                .bind(now)
                .bind(now),
                EventKind::Succeeded,
            ),
            Outcome::Failed(error) => (
                sqlx::query(
                    "UPDATE jobs SET status = 'failed', error_code = $1, error_message = $2, \
                     attempt_errors = (attempt_errors::jsonb || jsonb_build_array(jsonb_build_object('attempt', \
                     attempts, 'code', $3::text, 'message', $4::text, 'at', $5::text)))::text, lease_owner = NULL, \
                     lease_until = NULL, finished_at = $6, updated_at = $7 \
                     WHERE id = $8 AND status = 'running' AND lease_owner = $9",
                )
                .bind(error.code.as_str())
                .bind(&error.message)
                .bind(error.code.as_str())
                .bind(&error.message)
                .bind(&at)
                .bind(now)
                .bind(now),
                EventKind::Failed,
            ),
            Outcome::Retry { error, run_at } => (
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', run_at = $1, error_code = $2, \
                     error_message = $3, attempt_errors = (attempt_errors::jsonb || jsonb_build_array( \
                     jsonb_build_object('attempt', attempts, 'code', $4::text, 'message', $5::text, 'at', $6::text)))::text, \
                     lease_owner = NULL, lease_until = NULL, updated_at = $7 \
                     WHERE id = $8 AND status = 'running' AND lease_owner = $9",
                )
                .bind(run_at.timestamp_millis())
                .bind(error.code.as_str())
                .bind(&error.message)
                .bind(error.code.as_str())
                .bind(&error.message)
                .bind(&at)
                .bind(now),
                EventKind::Requeued,
            ),
        };
        let n = q
            .bind(&id)
            .bind(&lease.token)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let job = select_job(&mut *tx, &id).await?;
        let mut pending = Pending(0);
        pending
            .record(&mut tx, lease.job_id, kind, job, now)
            .await?;
        self.finish_tx(tx, pending).await?;
        if kind == EventKind::Requeued {
            self.wakeups.notify_waiters();
        }
        Ok(true)
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        self.transition(id, Action::Retry).await
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        self.transition(id, Action::Cancel).await
    }

    async fn delete(&self, id: JobId) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let sha: Option<String> =
            sqlx::query_scalar("DELETE FROM jobs WHERE id = $1 RETURNING image_sha256")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(sha) = sha else {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        sqlx::query(
            "DELETE FROM blobs WHERE sha256 = $1 AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE image_sha256 = $2)",
        )
        .bind(&sha)
        .bind(&sha)
        .execute(&mut *tx)
        .await?;
        let mut pending = Pending(0);
        pending
            .record(&mut tx, id, EventKind::Deleted, None, now_ms())
            .await?;
        self.finish_tx(tx, pending).await
    }

    async fn rescue_expired_with(&self, max_stalls: u32) -> Result<u64> {
        let now = now_ms();
        let at = ms_to_time(now).to_rfc3339();
        let message = "the worker running this job stopped renewing its lease";
        let mut tx = self.pool.begin().await?;
        let failed: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET status = 'failed', error_code = 'stalled', error_message = $1, \
             attempt_errors = (attempt_errors::jsonb || jsonb_build_array(jsonb_build_object('attempt', attempts, \
             'code', 'stalled', 'message', $2::text, 'at', $3::text)))::text, lease_owner = NULL, lease_until = NULL, \
             stalls = stalls + 1, finished_at = $4, updated_at = $5 \
             WHERE status = 'running' AND lease_until < $6 \
             AND (run_attempts >= max_attempts OR stalls + 1 > $7) RETURNING id",
        )
        .bind(format!(
            "{message}, and it cannot run again (no attempt left, or its worker was lost more than {max_stalls} times)"
        ))
        .bind(message)
        .bind(&at)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(i64::from(max_stalls))
        .fetch_all(&mut *tx)
        .await?;
        let requeued: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET status = 'queued', run_at = $1, error_code = 'stalled', \
             error_message = $2, attempt_errors = (attempt_errors::jsonb || jsonb_build_array( \
             jsonb_build_object('attempt', attempts, 'code', 'stalled', 'message', $3::text, 'at', $4::text)))::text, \
             lease_owner = NULL, lease_until = NULL, stalls = stalls + 1, updated_at = $5 \
             WHERE status = 'running' AND lease_until < $6 RETURNING id",
        )
        .bind(now)
        .bind(format!("{message}; it was queued again"))
        .bind(message)
        .bind(&at)
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut pending = Pending(0);
        for (ids, kind) in [
            (&failed, EventKind::Failed),
            (&requeued, EventKind::Requeued),
        ] {
            for id in ids {
                let job = select_job(&mut *tx, id).await?;
                if let Some(job) = job {
                    pending
                        .record(&mut tx, job.id, kind, Some(job), now)
                        .await?;
                }
            }
        }
        let total = (failed.len() + requeued.len()) as u64;
        self.finish_tx(tx, pending).await?;
        if !requeued.is_empty() {
            self.wakeups.notify_waiters();
        }
        Ok(total)
    }

    async fn retry_failed(&self, filter: &RetryFilter) -> Result<Vec<Job>> {
        // Reads before it writes: take the write lock first (see `claim_limited`).
        let mut tx = self.pool.begin().await?;
        let code = filter.error_code.map(|c| c.as_str());
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status = 'failed' AND ($1::text IS NULL OR error_code = $2) ORDER BY seq",
        )
        .bind(code)
        .bind(code)
        .fetch_all(&mut *tx)
        .await?;
        let mut pending = Pending(0);
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            let id: JobId = id
                .parse()
                .map_err(|e: imgclass_core::ParseJobIdError| db_err(e.to_string()))?;
            jobs.push(Self::transition_in(&mut tx, &mut pending, id, Action::Retry).await?);
        }
        self.finish_tx(tx, pending).await?;
        if !jobs.is_empty() {
            self.wakeups.notify_waiters();
        }
        Ok(jobs)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<Pruned> {
        let before = before.timestamp_millis();
        let mut tx = self.pool.begin().await?;
        let jobs = sqlx::query(
            "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') \
             AND finished_at IS NOT NULL AND finished_at < $1",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let blobs = sqlx::query(
            "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE image_sha256 = blobs.sha256)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events = sqlx::query("DELETE FROM events WHERE at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Pruned {
            jobs,
            blobs,
            events,
        })
    }

    async fn stats(&self, rate: Option<RateLimit>) -> Result<QueueStats> {
        let now = now_ms();
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")
            .fetch_all(&mut *conn)
            .await?;
        let mut stats = QueueStats::default();
        for row in rows {
            let status: String = row.try_get("status")?;
            let n = row.try_get::<i64, _>("n")? as u64;
            match status.parse::<JobStatus>().map_err(db_err)? {
                JobStatus::Queued => stats.queued = n,
                JobStatus::Running => stats.running = n,
                JobStatus::Succeeded => stats.succeeded = n,
                JobStatus::Failed => stats.failed = n,
                JobStatus::Canceled => stats.canceled = n,
            }
        }
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT MIN(created_at) FROM jobs WHERE status = 'queued'")
                .fetch_one(&mut *conn)
                .await?;
        stats.oldest_queued_at = oldest.map(ms_to_time);
        let finished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE finished_at >= $1")
            .bind(now - 60_000)
            .fetch_one(&mut *conn)
            .await?;
        stats.finished_last_minute = finished as u64;
        if let Some(rate) = rate {
            drop(conn);
            let mut tx = self.pool.begin().await?;
            let used = recent_starts(&mut tx, now, rate).await?.len() as u32;
            tx.rollback().await?;
            stats.rate_limit_remaining = Some(rate.jobs.saturating_sub(used));
        }
        Ok(stats)
    }

    async fn import_job(&self, job: &Job, image: &[u8]) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO blobs (sha256, size, content_type, width, height, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(&job.image_sha256)
        .bind(image.len() as i64)
        .bind(&job.content_type)
        .bind(i64::from(job.width))
        .bind(i64::from(job.height))
        .bind(job.created_at.timestamp_millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            for (idx, chunk) in image.chunks(CHUNK_SIZE).enumerate() {
                sqlx::query("INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)")
                    .bind(&job.image_sha256)
                    .bind(idx as i64)
                    .bind(chunk)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // A job that was running has no worker here: it is queued again.
        let status = if job.status == JobStatus::Running {
            JobStatus::Queued
        } else {
            job.status
        };
        let n = sqlx::query(
            "INSERT INTO jobs (id, status, image_sha256, file_name, attempts, stalls, run_attempts, \
             max_attempts, run_at, error_code, error_message, attempt_errors, result, created_at, \
             started_at, finished_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) ON CONFLICT (id) DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(status.as_str())
        .bind(&job.image_sha256)
        .bind(&job.file_name)
        .bind(i64::from(job.attempts))
        .bind(i64::from(job.stalls))
        .bind(i64::from(job.run_attempts))
        .bind(i64::from(job.max_attempts))
        .bind(job.run_at.timestamp_millis())
        .bind(job.error.as_ref().map(|e| e.code.as_str()))
        .bind(job.error.as_ref().map(|e| e.message.clone()))
        .bind(crate::model::to_json(&job.attempt_errors)?)
        .bind(job.result.as_ref().map(crate::model::to_json).transpose()?)
        .bind(job.created_at.timestamp_millis())
        .bind(job.started_at.map(|t| t.timestamp_millis()))
        .bind(job.finished_at.map(|t| t.timestamp_millis()))
        .bind(job.updated_at.timestamp_millis())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE status = 'queued'")
                .fetch_one(&self.pool)
                .await?;
        Ok(v.map(ms_to_time))
    }

    async fn events_since(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        read_events(&self.pool, after, limit).await
    }

    async fn last_event_seq(&self) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    fn wakeups(&self) -> Arc<Notify> {
        self.wakeups.clone()
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Events after `after`, oldest first, each with its job's current state (one query).
async fn read_events(pool: &PgPool, after: i64, limit: usize) -> Result<Vec<Event>> {
    let sql = format!(
        "SELECT e.seq AS event_seq, e.job_id AS event_job_id, e.kind AS event_kind, \
         e.status AS event_status, e.at AS event_at, {JOB_COLUMNS} FROM events e \
         LEFT JOIN jobs j ON j.id = e.job_id LEFT JOIN blobs b ON b.sha256 = j.image_sha256 \
         WHERE e.seq > $1 ORDER BY e.seq LIMIT $2"
    );
    let rows = sqlx::query(&sql)
        .bind(after)
        .bind(limit as i64)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let job_id: String = row.try_get("event_job_id")?;
        let kind: String = row.try_get("event_kind")?;
        let status: Option<String> = row.try_get("event_status")?;
        let present: Option<String> = row.try_get("id")?;
        let job = match present {
            Some(_) => Some(job_from_row(&row)?),
            None => None,
        };
        out.push(Event {
            seq: row.try_get("event_seq")?,
            job_id: job_id
                .parse()
                .map_err(|e: imgclass_core::ParseJobIdError| db_err(e.to_string()))?,
            kind: kind.parse().map_err(db_err)?,
            status: status.map(|s| s.parse()).transpose().map_err(db_err)?,
            at: ms_to_time(row.try_get("event_at")?),
            job,
        });
    }
    Ok(out)
}

/// Events with seq above `last_seen` are read from the log in order and broadcast; a gap (a
/// transaction that took a sequence number but has not committed yet) is waited for up to two
/// seconds, then skipped (a rolled-back transaction leaves a gap for good).
async fn catch_up(
    pool: &PgPool,
    last_seen: &mut Option<i64>,
    gap_since: &mut Option<tokio::time::Instant>,
    wakeups: &Notify,
    events: &broadcast::Sender<Event>,
) -> Result<()> {
    let Some(mut seen) = *last_seen else {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(pool)
            .await?;
        *last_seen = Some(v.unwrap_or(0));
        return Ok(());
    };
    let mut wake = false;
    loop {
        let page = read_events(pool, seen, 500).await?;
        let full = page.len() == 500;
        for e in page {
            if e.seq != seen + 1 {
                let since = *gap_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < Duration::from_secs(2) {
                    *last_seen = Some(seen);
                    if wake {
                        wakeups.notify_waiters();
                    }
                    return Ok(());
                }
            }
            *gap_since = None;
            seen = e.seq;
            if matches!(
                e.kind,
                EventKind::Created | EventKind::Requeued | EventKind::Retried
            ) {
                wake = true;
            }
            let _ = events.send(e);
        }
        if !full {
            break;
        }
    }
    *last_seen = Some(seen);
    if wake {
        wakeups.notify_waiters();
    }
    Ok(())
}

/// Follows the event channel for the life of the store, reconnecting when the connection drops.
async fn listen(
    pool: PgPool,
    last_seen: i64,
    wakeups: Arc<Notify>,
    events: broadcast::Sender<Event>,
) {
    let mut last_seen = Some(last_seen);
    let mut gap_since = None;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for events; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(EVENTS_CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for events; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Whatever happened while not listening is read from the log; idle workers look again.
        let _ = catch_up(&pool, &mut last_seen, &mut gap_since, &wakeups, &events).await;
        wakeups.notify_waiters();
        loop {
            let tick = if gap_since.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(5)
            };
            match tokio::time::timeout(tick, listener.try_recv()).await {
                Ok(Ok(Some(_))) | Err(_) => {}
                Ok(Ok(None)) => {
                    tracing::warn!("event listener lost its connection; reconnecting");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "event listener failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
            if let Err(e) = catch_up(&pool, &mut last_seen, &mut gap_since, &wakeups, &events).await
            {
                tracing::warn!(error = %e, "reading new events failed");
            }
        }
    }
}
