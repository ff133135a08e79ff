//! The embedded SQLite backend: one writer connection (SQLite has one writer at a time anyway,
//! so in-process writers queue here instead of spinning on SQLITE_BUSY) and a pool of readers,
//! WAL journal, in-process wake-ups and event broadcast.

use crate::model::{decode_cursor, encode_cursor};
use crate::rows::{db_err, job_from_row, ms_to_time, now_ms, window_starts, JOB_COLUMNS};
use crate::{
    Claim, ClaimBatch, Event, Job, JobPage, Lease, ListQuery, NewJob, Outcome, Pruned, QueueStats,
    RateLimit, Result, RetryFilter, Store, StoreError, StoredImage, CHUNK_SIZE,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::{Action, EventKind, JobId, JobStatus};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// Opens a write transaction whose commit is fsync'd (`synchronous=FULL`): for what a client is
/// told has happened (an accepted upload, a retry, a cancel, a delete). `BEGIN IMMEDIATE` takes
/// the write lock first, so a transaction that reads before it writes is never refused its
/// upgrade by another process (SQLITE_BUSY).
const DURABLE: &str = "PRAGMA synchronous = FULL; BEGIN IMMEDIATE";
/// Opens a write transaction committed with `synchronous=NORMAL` (WAL): it survives a crash of
/// the process, and an OS crash or power cut can lose only the last such commits. Used for the
/// workers' own transitions (claim, finish, release, rescue), where a lost commit only means
/// the job runs again.
const RELAXED: &str = "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE";

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    wakeups: Arc<Notify>,
    events: broadcast::Sender<Event>,
}

async fn select_job<'c, E>(exec: E, id: &str) -> Result<Option<Job>>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs j JOIN blobs b ON b.sha256 = j.image_sha256 WHERE j.id = ?"
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
    tx: &mut Transaction<'_, Sqlite>,
    now: i64,
    rate: RateLimit,
) -> Result<Vec<i64>> {
    let starts: Option<String> =
        sqlx::query_scalar("SELECT starts FROM rate_limits WHERE name = 'global'")
            .fetch_optional(&mut **tx)
            .await?;
    window_starts(starts, now, rate)
}

/// Collects the events of one transaction, to be broadcast once it has committed.
struct Pending(Vec<Event>);

impl Pending {
    async fn record(
        &mut self,
        tx: &mut Transaction<'_, Sqlite>,
        job_id: JobId,
        kind: EventKind,
        job: Option<Job>,
        at: i64,
    ) -> Result<()> {
        let status = job.as_ref().map(|j| j.status);
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (job_id, kind, status, at) VALUES (?, ?, ?, ?) RETURNING seq",
        )
        .bind(job_id.to_string())
        .bind(kind.as_str())
        .bind(status.map(JobStatus::as_str))
        .bind(at)
        .fetch_one(&mut **tx)
        .await?;
        self.0.push(Event {
            seq,
            job_id,
            kind,
            status,
            at: ms_to_time(at),
            job,
        });
        Ok(())
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file a `sqlite://PATH` URL names.
    pub async fn connect(url: &str) -> Result<Self> {
        let config = |message: String| StoreError::Config {
            url: url.to_string(),
            message,
        };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| config(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| config(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        let (events, _) = broadcast::channel(4096);
        Ok(SqliteStore {
            writer,
            reader,
            wakeups: Arc::new(Notify::new()),
            events,
        })
    }

    fn publish(&self, pending: Pending) {
        for e in pending.0 {
            // No receiver is fine: nobody is listening.
            let _ = self.events.send(e);
        }
    }

    async fn finish_tx(&self, tx: Transaction<'_, Sqlite>, pending: Pending) -> Result<()> {
        tx.commit().await?;
        self.publish(pending);
        Ok(())
    }

    /// Applies a person's action (retry, cancel) to a job, guarded by the state machine.
    async fn transition(&self, id: JobId, action: Action) -> Result<Job> {
        // Reads before it writes: take the write lock first (see `claim_limited`).
        let mut tx = self.writer.begin_with(DURABLE).await?;
        let mut pending = Pending(Vec::new());
        let job = Self::transition_in(&mut tx, &mut pending, id, action).await?;
        self.finish_tx(tx, pending).await?;
        if job.status == JobStatus::Queued {
            self.wakeups.notify_waiters();
        }
        Ok(job)
    }

    async fn transition_in(
        tx: &mut Transaction<'_, Sqlite>,
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
                "UPDATE jobs SET status = ?, run_at = ?, run_attempts = 0, stalls = 0, finished_at = NULL, \
                 updated_at = ? WHERE id = ? AND status = ?",
                EventKind::Retried,
            ),
            Action::Cancel => (
                "UPDATE jobs SET status = ?, finished_at = ?, updated_at = ?, lease_owner = NULL, \
                 lease_until = NULL WHERE id = ? AND status = ?",
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
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.writer)
            .await?;
        Ok(())
    }

    async fn create_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        let mut tx = self.writer.begin_with(DURABLE).await?;
        let mut pending = Pending(Vec::new());
        let mut created = Vec::with_capacity(jobs.len());
        let now = now_ms();
        for new in jobs {
            let inserted = sqlx::query(
                "INSERT INTO blobs (sha256, size, content_type, width, height, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
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
                    sqlx::query("INSERT INTO blob_chunks (sha256, idx, data) VALUES (?, ?, ?)")
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
                 created_at, updated_at) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
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
        select_job(&self.reader, &id.to_string()).await
    }

    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let before = match &query.cursor {
            Some(c) => decode_cursor(c).ok_or(StoreError::InvalidCursor)?,
            None => i64::MAX,
        };
        let limit = query.limit.clamp(1, 500);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN blobs b ON b.sha256 = j.image_sha256 \
             WHERE j.seq < ? AND (? IS NULL OR j.status = ?) ORDER BY j.seq DESC LIMIT ?"
        );
        let status = query.status.map(JobStatus::as_str);
        let rows = sqlx::query(&sql)
            .bind(before)
            .bind(status)
            .bind(status)
            .bind(limit as i64 + 1)
            .fetch_all(&self.reader)
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
        // One read transaction, so both queries see the same snapshot: a concurrent delete
        // must not remove the chunks between reading the size and reading the data.
        let mut tx = self.reader.begin().await?;
        let size: Option<i64> = sqlx::query_scalar("SELECT size FROM blobs WHERE sha256 = ?")
            .bind(sha256)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(size) = size else { return Ok(None) };
        let chunks: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT data FROM blob_chunks WHERE sha256 = ? ORDER BY idx")
                .bind(sha256)
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut bytes = Vec::with_capacity(size as usize);
        for c in chunks {
            bytes.extend_from_slice(&c);
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
        // Take the write lock before reading the rate-limit window: a deferred transaction that
        // reads first cannot be upgraded once another process has written (SQLITE_BUSY), and
        // `now` must be read under the lock, or a claim that waited for it would record starts
        // older than ones already recorded and misjudge the window.
        let mut tx = self.writer.begin_with(RELAXED).await?;
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
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, \
             run_attempts = run_attempts + 1, lease_owner = ?, lease_until = ?, started_at = ?, \
             updated_at = ? WHERE seq IN (SELECT seq FROM jobs WHERE status = 'queued' \
             AND run_at <= ? ORDER BY priority DESC, run_at, seq LIMIT ?) RETURNING id",
        )
        .bind(&token)
        .bind(until)
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(ClaimBatch::default());
        }
        if rate.is_some() {
            window.extend(std::iter::repeat_n(now, ids.len()));
            sqlx::query(
                "INSERT INTO rate_limits (name, starts) VALUES ('global', ?) \
                 ON CONFLICT (name) DO UPDATE SET starts = excluded.starts",
            )
            .bind(serde_json::to_string(&window).map_err(|e| db_err(e.to_string()))?)
            .execute(&mut *tx)
            .await?;
        }
        let mut pending = Pending(Vec::new());
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
        let mut tx = self.writer.begin_with(RELAXED).await?;
        let n = sqlx::query(
            "UPDATE jobs SET status = 'queued', run_at = ?, attempts = max(attempts - 1, 0), \
             run_attempts = max(run_attempts - 1, 0), lease_owner = NULL, lease_until = NULL, \
             updated_at = ? WHERE id = ? AND status = 'running' AND lease_owner = ?",
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
        let mut pending = Pending(Vec::new());
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
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND status = 'running' AND lease_owner = ?",
        )
        .bind(until)
        .bind(lease.job_id.to_string())
        .bind(&lease.token)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<bool> {
        let now = now_ms();
        let at = ms_to_time(now).to_rfc3339();
        let id = lease.job_id.to_string();
        let mut tx = self.writer.begin_with(RELAXED).await?;
        let (q, kind) = match &outcome {
            Outcome::Succeeded(result) => (
                sqlx::query(
                    "UPDATE jobs SET status = 'succeeded', result = ?, error_code = NULL, \
                     error_message = NULL, lease_owner = NULL, lease_until = NULL, \
                     finished_at = ?, updated_at = ? \
                     WHERE id = ? AND status = 'running' AND lease_owner = ?",
                )
                .bind(serde_json::to_string(result).map_err(|e| db_err(e.to_string()))?)
                .bind(now)
                .bind(now),
                EventKind::Succeeded,
            ),
            Outcome::Failed(error) => (
                sqlx::query(
                    "UPDATE jobs SET status = 'failed', error_code = ?, error_message = ?, \
                     attempt_errors = json_insert(attempt_errors, '$[#]', json_object('attempt', \
                     attempts, 'code', ?, 'message', ?, 'at', ?)), lease_owner = NULL, \
                     lease_until = NULL, finished_at = ?, updated_at = ? \
                     WHERE id = ? AND status = 'running' AND lease_owner = ?",
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
                    "UPDATE jobs SET status = 'queued', run_at = ?, error_code = ?, \
                     error_message = ?, attempt_errors = json_insert(attempt_errors, '$[#]', \
                     json_object('attempt', attempts, 'code', ?, 'message', ?, 'at', ?)), \
                     lease_owner = NULL, lease_until = NULL, updated_at = ? \
                     WHERE id = ? AND status = 'running' AND lease_owner = ?",
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
        let mut pending = Pending(Vec::new());
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
        let mut tx = self.writer.begin_with(DURABLE).await?;
        let sha: Option<String> =
            sqlx::query_scalar("DELETE FROM jobs WHERE id = ? RETURNING image_sha256")
                .bind(id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(sha) = sha else {
            tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        sqlx::query(
            "DELETE FROM blobs WHERE sha256 = ? AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE image_sha256 = ?)",
        )
        .bind(&sha)
        .bind(&sha)
        .execute(&mut *tx)
        .await?;
        let mut pending = Pending(Vec::new());
        pending
            .record(&mut tx, id, EventKind::Deleted, None, now_ms())
            .await?;
        self.finish_tx(tx, pending).await
    }

    async fn rescue_expired_with(&self, max_stalls: u32) -> Result<u64> {
        let now = now_ms();
        let at = ms_to_time(now).to_rfc3339();
        let message = "the worker running this job stopped renewing its lease";
        let mut tx = self.writer.begin_with(RELAXED).await?;
        let failed: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET status = 'failed', error_code = 'stalled', error_message = ?, \
             attempt_errors = json_insert(attempt_errors, '$[#]', json_object('attempt', attempts, \
             'code', 'stalled', 'message', ?, 'at', ?)), lease_owner = NULL, lease_until = NULL, \
             stalls = stalls + 1, finished_at = ?, updated_at = ? \
             WHERE status = 'running' AND lease_until < ? \
             AND (run_attempts >= max_attempts OR stalls + 1 > ?) RETURNING id",
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
            "UPDATE jobs SET status = 'queued', run_at = ?, error_code = 'stalled', \
             error_message = ?, attempt_errors = json_insert(attempt_errors, '$[#]', \
             json_object('attempt', attempts, 'code', 'stalled', 'message', ?, 'at', ?)), \
             lease_owner = NULL, lease_until = NULL, stalls = stalls + 1, updated_at = ? \
             WHERE status = 'running' AND lease_until < ? RETURNING id",
        )
        .bind(now)
        .bind(format!("{message}; it was queued again"))
        .bind(message)
        .bind(&at)
        .bind(now)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut pending = Pending(Vec::new());
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
        let mut tx = self.writer.begin_with(DURABLE).await?;
        let code = filter.error_code.map(|c| c.as_str());
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status = 'failed' AND (? IS NULL OR error_code = ?) ORDER BY seq",
        )
        .bind(code)
        .bind(code)
        .fetch_all(&mut *tx)
        .await?;
        let mut pending = Pending(Vec::new());
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
        let mut tx = self.writer.begin_with(RELAXED).await?;
        let jobs = sqlx::query(
            "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') \
             AND finished_at IS NOT NULL AND finished_at < ?",
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
        let events = sqlx::query("DELETE FROM events WHERE at < ?")
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
        let mut conn = self.reader.acquire().await?;
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
        let finished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE finished_at >= ?")
            .bind(now - 60_000)
            .fetch_one(&mut *conn)
            .await?;
        stats.finished_last_minute = finished as u64;
        if let Some(rate) = rate {
            drop(conn);
            let mut tx = self.reader.begin().await?;
            let used = recent_starts(&mut tx, now, rate).await?.len() as u32;
            tx.rollback().await?;
            stats.rate_limit_remaining = Some(rate.jobs.saturating_sub(used));
        }
        Ok(stats)
    }

    async fn import_job(&self, job: &Job, image: &[u8]) -> Result<bool> {
        let mut tx = self.writer.begin_with(DURABLE).await?;
        let inserted = sqlx::query(
            "INSERT INTO blobs (sha256, size, content_type, width, height, created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING",
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
                sqlx::query("INSERT INTO blob_chunks (sha256, idx, data) VALUES (?, ?, ?)")
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
             started_at, finished_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
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
                .fetch_one(&self.reader)
                .await?;
        Ok(v.map(ms_to_time))
    }

    async fn events_since(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        let mut conn = self.reader.acquire().await?;
        let rows = sqlx::query(
            "SELECT seq, job_id, kind, status, at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let job_id: String = row.try_get("job_id")?;
            let kind: String = row.try_get("kind")?;
            let status: Option<String> = row.try_get("status")?;
            let job = select_job(&mut *conn, &job_id).await?;
            out.push(Event {
                seq: row.try_get("seq")?,
                job_id: job_id
                    .parse()
                    .map_err(|e: imgclass_core::ParseJobIdError| db_err(e.to_string()))?,
                kind: kind.parse().map_err(db_err)?,
                status: status.map(|s| s.parse()).transpose().map_err(db_err)?,
                at: ms_to_time(row.try_get("at")?),
                job,
            });
        }
        Ok(out)
    }

    async fn last_event_seq(&self) -> Result<i64> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
            .fetch_one(&self.reader)
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
