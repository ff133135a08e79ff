//! The one store implementation: every SQL statement of imgclass, written once in the SQL that
//! SQLite and PostgreSQL both accept and run through sqlx's `Any` driver. What really differs
//! between the databases (how a write transaction begins, row locks, how committed events reach
//! other nodes, migrations) is asked of the [`Dialect`].
//!
//! Every change of a job follows one path: read the job (locked where the database has row
//! locks), ask the state machine (and, for automatic decisions, `imgclass_core::policy`) what
//! comes next, write the new row with an `UPDATE` guarded by the state and lease it was read
//! in, and record the event only when that `UPDATE` changed the row.

use crate::dialect::{Dialect, Durability, Lock};
use crate::health::{self, StorageWatch};
use crate::model::{decode_cursor, encode_cursor, to_json};
use crate::rows::{db_err, job_from_row, ms_to_time, now_ms, window_starts, JOB_COLUMNS};
use crate::{
    AttemptError, Claim, ClaimBatch, Event, Job, JobError, JobPage, Lease, ListQuery, NewJob,
    Outcome, Pruned, QueueStats, RateLimit, Result, RetryFilter, Store, StoreError, StoredImage,
    CHUNK_SIZE,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::policy::{self, Happened, Rules};
use imgclass_core::{Action, ErrorCode, EventKind, JobId, JobStatus};
use sqlx::pool::PoolConnection;
use sqlx::AnyPool;
use sqlx::{Any, AnyConnection, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, Notify};

#[derive(Clone)]
pub(crate) struct SqlStore {
    /// Write transactions (on SQLite a single connection: one writer at a time anyway).
    pub(crate) writer: AnyPool,
    /// Reads that need no transaction (on PostgreSQL the same pool as `writer`).
    pub(crate) reader: AnyPool,
    pub(crate) dialect: Arc<dyn Dialect>,
    wakeups: Arc<Notify>,
    /// Whether the last failed write found the storage full (for readiness).
    pub(crate) storage: Arc<StorageWatch>,
    /// Where `create_jobs` hands its jobs to the group commit (`None` in the committer's own
    /// handle, which writes directly).
    submissions: Option<mpsc::Sender<Submission>>,
}

/// Jobs of one request waiting for the group commit, and where to send its answer.
type Submission = (Vec<NewJob>, oneshot::Sender<Result<Vec<Job>>>);

/// At most this many jobs, and about this many image bytes, share one commit.
const GROUP_MAX_JOBS: usize = 512;
const GROUP_MAX_BYTES: usize = 64 << 20;

/// The group commit: takes whatever uploads are waiting (at once, never waiting for more), stores
/// them in one transaction with one fsync, and answers each once it is committed. If that
/// transaction fails, each request is tried alone, so that one bad request cannot fail the others
/// and a failure that is everyone's (a full disk, a lost connection) answers each with its error;
/// either way nothing of a failed transaction is stored.
async fn group_commit(store: SqlStore, mut queue: mpsc::Receiver<Submission>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = first.0.len();
        let mut bytes: usize = first.0.iter().map(|j| j.image.len()).sum();
        let mut batch = vec![first];
        while jobs < GROUP_MAX_JOBS && bytes < GROUP_MAX_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            jobs += next.0.len();
            bytes += next.0.iter().map(|j| j.image.len()).sum::<usize>();
            batch.push(next);
        }
        if batch.len() > 1 {
            let requests: Vec<&[NewJob]> = batch.iter().map(|(jobs, _)| jobs.as_slice()).collect();
            if let Ok(created) = store.insert_jobs(&requests).await {
                for ((_, reply), jobs) in batch.into_iter().zip(created) {
                    let _ = reply.send(Ok(jobs));
                }
                continue;
            }
        }
        for (jobs, reply) in batch {
            let result = store.insert_jobs(&[&jobs]).await.map(|mut c| c.remove(0));
            let _ = reply.send(result);
        }
    }
}

/// A write transaction on a pool connection of its own, committed or rolled back explicitly.
/// If it is dropped unfinished (an error, a canceled request) or its `COMMIT`/`ROLLBACK`
/// fails, the connection is closed instead of going back to the pool: whatever happened (a
/// full disk, an I/O error, a dropped connection), the next transaction starts on a clean
/// connection, so one storage error never poisons the store.
pub(crate) struct Tx {
    conn: PoolConnection<Any>,
    open: bool,
}

impl Tx {
    async fn begin(pool: &AnyPool, statement: &'static str) -> Result<Tx> {
        let mut tx = Tx {
            conn: pool.acquire().await?,
            open: true,
        };
        sqlx::Executor::execute(&mut *tx.conn, statement).await?;
        Ok(tx)
    }

    pub(crate) async fn commit(mut self) -> Result<()> {
        sqlx::Executor::execute(&mut *self.conn, "COMMIT").await?;
        self.open = false;
        Ok(())
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        sqlx::Executor::execute(&mut *self.conn, "ROLLBACK").await?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// A write transaction and the events it recorded.
pub(crate) struct Write {
    pub(crate) tx: Tx,
    events: Vec<Event>,
    pub(crate) now: i64,
    watch: WriteWatch,
}

impl Write {
    /// Commits a write that recorded no events (nothing to publish).
    pub(crate) async fn commit_plain(mut self) -> Result<()> {
        self.tx.commit().await?;
        self.watch.committed = true;
        Ok(())
    }
}

/// Tells the store when its write transaction ended: committed, or dropped by a full-storage
/// error (noted on this thread by the error's conversion, see `health`).
struct WriteWatch {
    storage: Arc<StorageWatch>,
    committed: bool,
}

impl Drop for WriteWatch {
    fn drop(&mut self) {
        if self.committed {
            self.storage.write_succeeded();
        } else if let Some(detail) = health::take_storage_full_seen() {
            self.storage.full(detail);
        }
    }
}

/// The SELECT of whole jobs, followed by the given condition.
fn select_jobs(condition: &str) -> String {
    format!("SELECT {JOB_COLUMNS} FROM jobs j JOIN blobs b ON b.sha256 = j.image_sha256 WHERE {condition}")
}

fn parse_id(id: &str) -> Result<JobId> {
    id.parse()
        .map_err(|e: imgclass_core::ParseJobIdError| db_err(e.to_string()))
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl SqlStore {
    /// The store, with its group commit running (on the current tokio runtime).
    pub(crate) fn new(
        writer: AnyPool,
        reader: AnyPool,
        dialect: Arc<dyn Dialect>,
        wakeups: Arc<Notify>,
    ) -> Self {
        let mut store = SqlStore {
            writer,
            reader,
            dialect,
            wakeups,
            storage: Arc::default(),
            submissions: None,
        };
        let (submit, queue) = mpsc::channel(1024);
        // The committer ends when the last handle with `submit` is dropped.
        tokio::spawn(group_commit(store.clone(), queue));
        store.submissions = Some(submit);
        store
    }

    /// Stores each request's images and queued jobs, all in one transaction; the jobs of each
    /// request come back in its order.
    async fn insert_jobs(&self, requests: &[&[NewJob]]) -> Result<Vec<Vec<Job>>> {
        let mut w = self.begin(Durability::Durable).await?;
        let mut created = Vec::with_capacity(requests.len());
        for jobs in requests {
            let mut mine = Vec::with_capacity(jobs.len());
            for new in *jobs {
                mine.push(self.insert_job(&mut w, new).await?);
            }
            created.push(mine);
        }
        self.commit(w).await?;
        Ok(created)
    }

    async fn insert_job(&self, w: &mut Write, new: &NewJob) -> Result<Job> {
        Self::insert_blob(
            w,
            &new.sha256,
            &new.image,
            &new.content_type,
            (new.width, new.height),
        )
        .await?;
        let id = JobId::new();
        let max_attempts = new.max_attempts.max(1);
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (id, status, image_sha256, file_name, max_attempts, priority, \
             run_at, created_at, updated_at, owner, webhook_url, webhook_events) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8, $9, $10) RETURNING seq",
        )
        .bind(id.to_string())
        .bind(JobStatus::Queued.as_str())
        .bind(&new.sha256)
        .bind(&new.file_name)
        .bind(i64::from(max_attempts))
        .bind(i64::from(new.priority))
        .bind(w.now)
        .bind(&new.owner)
        .bind(new.webhook.as_ref().map(|h| h.url.clone()))
        .bind(new.webhook.as_ref().map(crate::rows::webhook_events))
        .fetch_one(&mut *w.tx)
        .await?;
        let now = ms_to_time(w.now);
        let job = Job {
            seq,
            id,
            status: JobStatus::Queued,
            image_size: new.image.len() as u64,
            image_sha256: new.sha256.clone(),
            content_type: new.content_type.clone(),
            width: new.width,
            height: new.height,
            file_name: new.file_name.clone(),
            attempts: 0,
            stalls: 0,
            run_attempts: 0,
            max_attempts,
            priority: new.priority,
            run_at: now,
            lease_owner: None,
            lease_until: None,
            error: None,
            attempt_errors: Vec::new(),
            result: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            owner: new.owner.clone(),
            webhook: new.webhook.clone(),
        };
        self.record(w, id, EventKind::Created, Some(job.clone()))
            .await?;
        Ok(job)
    }

    pub(crate) async fn begin(&self, durability: Durability) -> Result<Write> {
        // A leftover from an error outside any write is not this write's.
        health::take_storage_full_seen();
        let watch = WriteWatch {
            storage: self.storage.clone(),
            committed: false,
        };
        let tx = Tx::begin(&self.writer, self.dialect.begin(durability)).await?;
        // `now` is read once the transaction holds its locks, so that times recorded by
        // transactions that waited for each other never go backwards.
        Ok(Write {
            tx,
            events: Vec::new(),
            now: now_ms(),
            watch,
        })
    }

    /// Commits, then publishes the events and wakes idle workers when a job became claimable.
    pub(crate) async fn commit(&self, mut w: Write) -> Result<()> {
        if !w.events.is_empty() {
            self.dialect.announce(&mut w.tx).await?;
        }
        w.tx.commit().await?;
        w.watch.committed = true;
        let wake = w.events.iter().any(|e| e.status == Some(JobStatus::Queued));
        self.dialect.committed(w.events);
        if wake {
            self.wakeups.notify_waiters();
        }
        Ok(())
    }

    async fn record(
        &self,
        w: &mut Write,
        job_id: JobId,
        kind: EventKind,
        job: Option<Job>,
    ) -> Result<()> {
        let owner = job.as_ref().and_then(|j| j.owner.clone());
        self.record_owned(w, job_id, kind, job, owner).await
    }

    /// Records an event whose job may be gone (a delete), naming the job's owner.
    async fn record_owned(
        &self,
        w: &mut Write,
        job_id: JobId,
        kind: EventKind,
        job: Option<Job>,
        owner: Option<String>,
    ) -> Result<()> {
        let status = job.as_ref().map(|j| j.status);
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO events (job_id, kind, status, at, owner) VALUES ($1, $2, $3, $4, $5) \
             RETURNING seq",
        )
        .bind(job_id.to_string())
        .bind(kind.as_str())
        .bind(status.map(JobStatus::as_str))
        .bind(w.now)
        .bind(owner.clone())
        .fetch_one(&mut *w.tx)
        .await?;
        if let Some(job) = &job {
            // The webhook's call goes into the outbox with the change it announces.
            crate::webhooks::enqueue(w, job, kind).await?;
        }
        w.events.push(Event {
            seq,
            job_id,
            kind,
            status,
            at: ms_to_time(w.now),
            job,
            owner,
        });
        Ok(())
    }

    /// Reads a job inside a write transaction, locked against other writers until it ends.
    async fn locked_job(&self, w: &mut Write, id: JobId) -> Result<Option<Job>> {
        let sql = select_jobs("j.id = $1") + self.dialect.lock(Lock::Jobs);
        sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *w.tx)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    /// Applies `action` to `job` (as read in this transaction): the state machine gives the new
    /// status, `edit` the other columns. The row is written only if it is still in the state
    /// and under the lease it was read with; the event is recorded only then. Returns the job
    /// as written, or `None` when the guard did not match (someone else changed it first).
    async fn apply(
        &self,
        w: &mut Write,
        job: &Job,
        action: Action,
        edit: impl FnOnce(&mut Job, i64),
    ) -> Result<Option<Job>> {
        let mut next = job.clone();
        next.status = job.status.apply(action)?;
        edit(&mut next, w.now);
        if next.status != JobStatus::Running {
            next.lease_owner = None;
            next.lease_until = None;
        }
        next.updated_at = ms_to_time(w.now);
        let error = next.error.as_ref();
        let changed = sqlx::query(
            "UPDATE jobs SET status = $1, attempts = $2, stalls = $3, run_attempts = $4, \
             run_at = $5, lease_owner = $6, lease_until = $7, error_code = $8, \
             error_message = $9, attempt_errors = $10, result = $11, started_at = $12, \
             finished_at = $13, updated_at = $14 \
             WHERE id = $15 AND status = $16 AND COALESCE(lease_owner, '') = $17",
        )
        .bind(next.status.as_str())
        .bind(i64::from(next.attempts))
        .bind(i64::from(next.stalls))
        .bind(i64::from(next.run_attempts))
        .bind(ms(next.run_at))
        .bind(next.lease_owner.clone())
        .bind(next.lease_until.map(ms))
        .bind(error.map(|e| e.code.as_str()))
        .bind(error.map(|e| e.message.clone()))
        .bind(to_json(&next.attempt_errors)?)
        .bind(next.result.as_ref().map(to_json).transpose()?)
        .bind(next.started_at.map(ms))
        .bind(next.finished_at.map(ms))
        .bind(w.now)
        .bind(job.id.to_string())
        .bind(job.status.as_str())
        .bind(job.lease_owner.clone().unwrap_or_default())
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if changed != 1 {
            return Ok(None);
        }
        self.record(w, job.id, action.event(), Some(next.clone()))
            .await?;
        Ok(Some(next))
    }

    /// A person's action on one job: the rules decide from the job's current state.
    async fn act(&self, id: JobId, happened: Happened) -> Result<Job> {
        for _ in 0..5 {
            let mut w = self.begin(Durability::Durable).await?;
            let job = self
                .locked_job(&mut w, id)
                .await?
                .ok_or(StoreError::NotFound)?;
            let Some(next) = self.act_on(&mut w, &job, happened).await? else {
                // Changed between the read and the write (only possible without row locks):
                // look again.
                w.tx.rollback().await?;
                continue;
            };
            self.commit(w).await?;
            return Ok(next);
        }
        Err(db_err(format!(
            "job {id} kept changing under a {happened:?}"
        )))
    }

    async fn act_on(&self, w: &mut Write, job: &Job, happened: Happened) -> Result<Option<Job>> {
        let decision = policy::decide(&Rules::default(), job.counters(), happened, 1.0)?;
        self.apply(w, job, decision.action, |j, now| match decision.action {
            Action::Retry => {
                // A new round of attempts.
                j.run_at = ms_to_time(now);
                j.run_attempts = 0;
                j.stalls = 0;
                j.finished_at = None;
            }
            _ => j.finished_at = Some(ms_to_time(now)),
        })
        .await
    }

    /// Reads the running job a lease is for, locked; `None` when the lease is not current.
    async fn leased_job(&self, w: &mut Write, lease: &Lease) -> Result<Option<Job>> {
        Ok(self.locked_job(w, lease.job_id).await?.filter(|j| {
            j.status == JobStatus::Running && j.lease_owner.as_deref() == Some(&lease.token)
        }))
    }

    /// Ends a leased attempt with `action` in its own transaction; false (nothing written) when
    /// fenced.
    async fn end_attempt(
        &self,
        lease: &Lease,
        action: Action,
        edit: impl FnOnce(&mut Job, i64),
    ) -> Result<bool> {
        let mut w = self.begin(Durability::Relaxed).await?;
        if self.end_attempt_in(&mut w, lease, action, edit).await? {
            self.commit(w).await?;
            Ok(true)
        } else {
            w.tx.rollback().await?;
            Ok(false)
        }
    }

    /// Ends a leased attempt with `action` inside `w`; false (nothing written) when fenced.
    async fn end_attempt_in(
        &self,
        w: &mut Write,
        lease: &Lease,
        action: Action,
        edit: impl FnOnce(&mut Job, i64),
    ) -> Result<bool> {
        let Some(job) = self.leased_job(w, lease).await? else {
            return Ok(false);
        };
        Ok(self.apply(w, &job, action, edit).await?.is_some())
    }

    /// Ends a leased attempt with its outcome inside `w`; false when fenced.
    async fn finish_in(&self, w: &mut Write, lease: &Lease, outcome: Outcome) -> Result<bool> {
        let Some(job) = self.leased_job(w, lease).await? else {
            return Ok(false);
        };
        self.finish_job(w, &job, outcome).await
    }

    /// Ends the attempt of `job` (read under its lease in `w`) with its outcome; false when the
    /// guard did not match.
    async fn finish_job(&self, w: &mut Write, job: &Job, outcome: Outcome) -> Result<bool> {
        let (action, result, error, run_at) = match outcome {
            Outcome::Succeeded(result) => (Action::Succeed, Some(result), None, None),
            Outcome::Failed(error) => (Action::Fail, None, Some(error), None),
            Outcome::Retry { error, run_at } => (Action::Requeue, None, Some(error), Some(run_at)),
        };
        let written = self
            .apply(w, job, action, |j, now| {
                j.result = result;
                if let Some(error) = error {
                    j.attempt_errors.push(AttemptError {
                        attempt: j.attempts,
                        code: error.code,
                        message: error.message.clone(),
                        at: ms_to_time(now),
                    });
                    j.error = Some(error);
                } else {
                    j.error = None;
                }
                match run_at {
                    Some(t) => j.run_at = t,
                    None => j.finished_at = Some(ms_to_time(now)),
                }
            })
            .await?;
        Ok(written.is_some())
    }

    /// Claims up to `limit` due jobs inside `w` under one fresh lease token, taking their starts
    /// from the rate limit; writes nothing when none is claimed.
    async fn claim_in(
        &self,
        w: &mut Write,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
    ) -> Result<ClaimBatch> {
        let now = w.now;
        let token = format!("{worker}/{}", uuid::Uuid::new_v4());
        let mut limit = limit as i64;
        let mut window: Vec<i64> = Vec::new();
        if let Some(rate) = rate {
            // The rate-limit row is read under the write lock (and row lock), so concurrent
            // claimers on any node take starts one after the other.
            window = self.recent_starts(&mut *w.tx, now, rate).await?;
            let allowed = i64::from(rate.jobs) - window.len() as i64;
            if allowed <= 0 {
                let oldest = window.first().copied().unwrap_or(now);
                // On PostgreSQL `now` is read before the row lock is had, so a claimer that
                // waited for the lock can find a start a little after its own `now`: the wait is
                // never more than one window.
                let per = rate.per.as_millis() as i64;
                let wait = (oldest + per - now).clamp(1, per.max(1));
                return Ok(ClaimBatch {
                    claims: Vec::new(),
                    rate_limited_for: Some(Duration::from_millis(wait as u64)),
                });
            }
            limit = limit.min(allowed);
        }
        let sql = format!(
            "UPDATE jobs SET status = $1, attempts = attempts + 1, run_attempts = run_attempts + 1, \
             lease_owner = $2, lease_until = $3, started_at = $4, updated_at = $4 \
             WHERE seq IN (SELECT j.seq FROM jobs j WHERE j.status = $5 AND j.run_at <= $4 \
             ORDER BY j.priority DESC, j.run_at, j.seq LIMIT $6{})",
            self.dialect.lock(Lock::JobsSkipLocked)
        );
        let claimed = sqlx::query(&sql)
            .bind(JobStatus::Queued.apply(Action::Claim)?.as_str())
            .bind(&token)
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(JobStatus::Queued.as_str())
            .bind(limit)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            return Ok(ClaimBatch::default());
        }
        if rate.is_some() {
            window.extend(std::iter::repeat_n(now, claimed as usize));
            sqlx::query(
                "INSERT INTO rate_limits (name, starts) VALUES ('global', $1) \
                 ON CONFLICT (name) DO UPDATE SET starts = excluded.starts",
            )
            .bind(to_json(&window)?)
            .execute(&mut *w.tx)
            .await?;
        }
        // The lease token is new: it names exactly this batch. Claims come in queue order.
        let rows = sqlx::query(&select_jobs(
            "j.status = $1 AND j.lease_owner = $2 ORDER BY j.priority DESC, j.run_at, j.seq",
        ))
        .bind(JobStatus::Running.as_str())
        .bind(&token)
        .fetch_all(&mut *w.tx)
        .await?;
        let mut claims = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            self.record(w, job.id, EventKind::Running, Some(job.clone()))
                .await?;
            claims.push(Claim {
                lease: Lease {
                    job_id: job.id,
                    token: token.clone(),
                },
                job,
            });
        }
        Ok(ClaimBatch {
            claims,
            rate_limited_for: None,
        })
    }

    /// Inserts a blob and its chunks unless an identical one is stored.
    async fn insert_blob(
        w: &mut Write,
        sha256: &str,
        bytes: &[u8],
        content_type: &str,
        (width, height): (u32, u32),
    ) -> Result<()> {
        let inserted = sqlx::query(
            "INSERT INTO blobs (sha256, size, content_type, width, height, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(bytes.len() as i64)
        .bind(content_type)
        .bind(i64::from(width))
        .bind(i64::from(height))
        .bind(w.now)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            for (idx, chunk) in bytes.chunks(CHUNK_SIZE).enumerate() {
                sqlx::query("INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)")
                    .bind(sha256)
                    .bind(idx as i64)
                    .bind(chunk)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// The job starts of the current rate-limit window, oldest first.
    async fn recent_starts<'c, E>(&self, exec: E, now: i64, rate: RateLimit) -> Result<Vec<i64>>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let sql = format!(
            "SELECT starts FROM rate_limits WHERE name = 'global'{}",
            self.dialect.lock(Lock::Row)
        );
        let starts: Option<String> = sqlx::query_scalar(&sql).fetch_optional(exec).await?;
        window_starts(starts, now, rate)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<()> {
        self.dialect.migrate(&self.writer).await
    }

    async fn create_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        let Some(submit) = &self.submissions else {
            return Ok(self.insert_jobs(&[&jobs]).await?.remove(0));
        };
        let stopped = || StoreError::Unavailable("the store is shutting down".into());
        let (reply, answer) = oneshot::channel();
        submit.send((jobs, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        sqlx::query(&select_jobs("j.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let before = match &query.cursor {
            Some(c) => decode_cursor(c).ok_or(StoreError::InvalidCursor)?,
            None => i64::MAX,
        };
        let limit = query.limit.clamp(1, 500);
        let sql = select_jobs(
            "j.seq < $1 AND ($2 IS NULL OR j.status = $2) AND ($4 IS NULL OR j.owner = $4) \
             ORDER BY j.seq DESC LIMIT $3",
        );
        let rows = sqlx::query(&sql)
            .bind(before)
            .bind(query.status.map(JobStatus::as_str))
            .bind(limit as i64 + 1)
            .bind(query.owner.as_deref())
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
        // One statement, one snapshot: a concurrent delete is seen entirely or not at all.
        let rows: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT b.size, c.data FROM blobs b LEFT JOIN blob_chunks c ON c.sha256 = b.sha256 \
             WHERE b.sha256 = $1 ORDER BY c.idx",
        )
        .bind(sha256)
        .fetch_all(&self.reader)
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
        let mut w = self.begin(Durability::Relaxed).await?;
        let batch = self.claim_in(&mut w, worker, limit, lease, rate).await?;
        if batch.claims.is_empty() {
            w.tx.rollback().await?;
        } else {
            self.commit(w).await?;
        }
        Ok(batch)
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.end_attempt(lease, Action::Release, |j, now| {
            // The attempt does not count.
            j.attempts = j.attempts.saturating_sub(1);
            j.run_attempts = j.run_attempts.saturating_sub(1);
            j.run_at = ms_to_time(now);
        })
        .await
    }

    async fn heartbeat(&self, lease: &Lease, duration: Duration) -> Result<bool> {
        let until = now_ms() + duration.as_millis() as i64;
        let n = sqlx::query(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND status = $3 AND lease_owner = $4",
        )
        .bind(until)
        .bind(lease.job_id.to_string())
        .bind(JobStatus::Running.as_str())
        .bind(&lease.token)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<bool> {
        let mut w = self.begin(Durability::Relaxed).await?;
        if self.finish_in(&mut w, lease, outcome).await? {
            self.commit(w).await?;
            Ok(true)
        } else {
            w.tx.rollback().await?;
            Ok(false)
        }
    }

    async fn finish_and_claim(
        &self,
        finishes: Vec<(Lease, Outcome)>,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
    ) -> Result<(Vec<bool>, ClaimBatch)> {
        let mut w = self.begin(Durability::Relaxed).await?;
        // Every leased job of the round in one read (locked, in a stable order).
        let mut jobs = std::collections::HashMap::with_capacity(finishes.len());
        if !finishes.is_empty() {
            let marks: Vec<String> = (1..=finishes.len()).map(|i| format!("${i}")).collect();
            let sql = select_jobs(&format!("j.id IN ({}) ORDER BY j.seq", marks.join(", ")))
                + self.dialect.lock(Lock::Jobs);
            let mut q = sqlx::query(&sql);
            for (l, _) in &finishes {
                q = q.bind(l.job_id.to_string());
            }
            for row in q.fetch_all(&mut *w.tx).await? {
                let job = job_from_row(&row)?;
                jobs.insert(job.id, job);
            }
        }
        let mut stored = Vec::with_capacity(finishes.len());
        for (l, outcome) in finishes {
            let leased = jobs.get(&l.job_id).filter(|j| {
                j.status == JobStatus::Running && j.lease_owner.as_deref() == Some(&l.token)
            });
            stored.push(match leased {
                Some(job) => self.finish_job(&mut w, job, outcome).await?,
                None => false,
            });
        }
        let batch = if limit > 0 {
            self.claim_in(&mut w, worker, limit, lease, rate).await?
        } else {
            ClaimBatch::default()
        };
        self.commit(w).await?;
        Ok((stored, batch))
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        self.act(id, Happened::RetryRequested).await
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        self.act(id, Happened::CancelRequested).await
    }

    async fn delete(&self, id: JobId) -> Result<()> {
        let mut w = self.begin(Durability::Durable).await?;
        let deleted: Option<(String, Option<String>)> =
            sqlx::query_as("DELETE FROM jobs WHERE id = $1 RETURNING image_sha256, owner")
                .bind(id.to_string())
                .fetch_optional(&mut *w.tx)
                .await?;
        let Some((sha, owner)) = deleted else {
            w.tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        sqlx::query(
            "DELETE FROM blobs WHERE sha256 = $1 AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE image_sha256 = $1)",
        )
        .bind(&sha)
        .execute(&mut *w.tx)
        .await?;
        self.record_owned(&mut w, id, EventKind::Deleted, None, owner)
            .await?;
        self.commit(w).await
    }

    async fn rescue_expired_with(&self, max_stalls: u32) -> Result<u64> {
        let rules = Rules {
            max_stalls,
            ..Rules::default()
        };
        let message = "the worker running this job stopped renewing its lease";
        let mut w = self.begin(Durability::Relaxed).await?;
        let sql = select_jobs("j.status = $1 AND j.lease_until < $2 ORDER BY j.seq")
            + self.dialect.lock(Lock::JobsSkipLocked);
        let rows = sqlx::query(&sql)
            .bind(JobStatus::Running.as_str())
            .bind(w.now)
            .fetch_all(&mut *w.tx)
            .await?;
        let mut touched = 0;
        for row in &rows {
            let job = job_from_row(row)?;
            let decision = policy::decide(&rules, job.counters(), Happened::LeaseExpired, 1.0)?;
            let requeue = decision.to == JobStatus::Queued;
            let applied = self
                .apply(&mut w, &job, decision.action, |j, now| {
                    j.stalls += 1;
                    j.attempt_errors.push(AttemptError {
                        attempt: j.attempts,
                        code: ErrorCode::Stalled,
                        message: message.into(),
                        at: ms_to_time(now),
                    });
                    let detail = if requeue {
                        j.run_at = ms_to_time(now);
                        "; it was queued again".to_string()
                    } else {
                        j.finished_at = Some(ms_to_time(now));
                        format!(
                            ", and it cannot run again (no attempt left, or its worker was lost \
                             more than {max_stalls} times)"
                        )
                    };
                    j.error = Some(JobError {
                        code: ErrorCode::Stalled,
                        message: format!("{message}{detail}"),
                    });
                })
                .await?;
            touched += u64::from(applied.is_some());
        }
        self.commit(w).await?;
        Ok(touched)
    }

    async fn retry_failed(&self, filter: &RetryFilter) -> Result<Vec<Job>> {
        let mut w = self.begin(Durability::Durable).await?;
        let sql = select_jobs(
            "j.status = $1 AND ($2 IS NULL OR j.error_code = $2) AND ($3 IS NULL OR j.owner = $3) \
             ORDER BY j.seq",
        ) + self.dialect.lock(Lock::Jobs);
        let rows = sqlx::query(&sql)
            .bind(JobStatus::Failed.as_str())
            .bind(filter.error_code.map(|c| c.as_str()))
            .bind(filter.owner.as_deref())
            .fetch_all(&mut *w.tx)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            if let Some(next) = self.act_on(&mut w, &job, Happened::RetryRequested).await? {
                jobs.push(next);
            }
        }
        self.commit(w).await?;
        Ok(jobs)
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<Pruned> {
        let before = ms(before);
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
            "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE image_sha256 = blobs.sha256)",
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

    async fn stats_of(&self, owner: Option<&str>, rate: Option<RateLimit>) -> Result<QueueStats> {
        let now = now_ms();
        let mut conn = self.reader.acquire().await?;
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE ($1 IS NULL OR owner = $1) \
             GROUP BY status",
        )
        .bind(owner)
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
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(created_at) FROM jobs WHERE status = $1 AND ($2 IS NULL OR owner = $2)",
        )
        .bind(JobStatus::Queued.as_str())
        .bind(owner)
        .fetch_one(&mut *conn)
        .await?;
        stats.oldest_queued_at = oldest.map(ms_to_time);
        let finished: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE finished_at >= $1 AND ($2 IS NULL OR owner = $2)",
        )
        .bind(now - 60_000)
        .bind(owner)
        .fetch_one(&mut *conn)
        .await?;
        stats.finished_last_minute = finished as u64;
        if let Some(rate) = rate {
            // A plain read: statistics never wait for (or hold up) the claimers' row lock.
            let sql = "SELECT starts FROM rate_limits WHERE name = 'global'";
            let starts: Option<String> = sqlx::query_scalar(sql).fetch_optional(&mut *conn).await?;
            let used = window_starts(starts, now, rate)?.len() as u32;
            stats.rate_limit_remaining = Some(rate.jobs.saturating_sub(used));
        }
        Ok(stats)
    }

    async fn import_job(&self, job: &Job, image: &[u8]) -> Result<bool> {
        let mut w = self.begin(Durability::Durable).await?;
        w.now = ms(job.created_at);
        Self::insert_blob(
            &mut w,
            &job.image_sha256,
            image,
            &job.content_type,
            (job.width, job.height),
        )
        .await?;
        // A job that was running has no worker here: it is queued again.
        let status = if job.status == JobStatus::Running {
            JobStatus::Queued
        } else {
            job.status
        };
        let n = sqlx::query(
            "INSERT INTO jobs (id, status, image_sha256, file_name, attempts, stalls, run_attempts, \
             max_attempts, priority, run_at, error_code, error_message, attempt_errors, result, \
             created_at, started_at, finished_at, updated_at, owner, webhook_url, webhook_events) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21) ON CONFLICT (id) DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(status.as_str())
        .bind(&job.image_sha256)
        .bind(&job.file_name)
        .bind(i64::from(job.attempts))
        .bind(i64::from(job.stalls))
        .bind(i64::from(job.run_attempts))
        .bind(i64::from(job.max_attempts))
        .bind(i64::from(job.priority))
        .bind(ms(job.run_at))
        .bind(job.error.as_ref().map(|e| e.code.as_str()))
        .bind(job.error.as_ref().map(|e| e.message.clone()))
        .bind(to_json(&job.attempt_errors)?)
        .bind(job.result.as_ref().map(to_json).transpose()?)
        .bind(ms(job.created_at))
        .bind(job.started_at.map(ms))
        .bind(job.finished_at.map(ms))
        .bind(ms(job.updated_at))
        .bind(&job.owner)
        .bind(job.webhook.as_ref().map(|h| h.url.clone()))
        .bind(job.webhook.as_ref().map(crate::rows::webhook_events))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit_plain().await?;
        Ok(n == 1)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MIN(run_at) FROM jobs WHERE status = $1")
            .bind(JobStatus::Queued.as_str())
            .fetch_one(&self.reader)
            .await?;
        Ok(v.map(ms_to_time))
    }

    async fn events_since(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        read_events(&self.reader, after, limit).await
    }

    async fn last_event_seq(&self) -> Result<i64> {
        last_event_seq(&self.reader).await
    }

    fn wakeups(&self) -> Arc<Notify> {
        self.wakeups.clone()
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.dialect.subscribe()
    }
}

/// The sequence number of the newest event (0 when there is none).
pub(crate) async fn last_event_seq(pool: &AnyPool) -> Result<i64> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Events after `after`, oldest first, each with its job's current state (one query).
pub(crate) async fn read_events(pool: &AnyPool, after: i64, limit: usize) -> Result<Vec<Event>> {
    // Two statements, never one that locks events and jobs together: a migration altering both
    // (in its own order) must not deadlock with a reader (PostgreSQL's listener runs at start).
    let rows = sqlx::query(
        "SELECT seq, job_id, kind, status, at, owner FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    let mut ids: Vec<String> = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("job_id")?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut jobs = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(200) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = select_jobs(&format!("j.id IN ({})", marks.join(", ")));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(pool).await? {
            let job = job_from_row(&row)?;
            jobs.insert(job.id, job);
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let job_id = parse_id(&row.try_get::<String, _>("job_id")?)?;
        let kind: String = row.try_get("kind")?;
        let status: Option<String> = row.try_get("status")?;
        out.push(Event {
            seq: row.try_get("seq")?,
            job_id,
            kind: kind.parse().map_err(db_err)?,
            status: status.map(|s| s.parse()).transpose().map_err(db_err)?,
            at: ms_to_time(row.try_get("at")?),
            job: jobs.get(&job_id).cloned(),
            owner: row.try_get("owner")?,
        });
    }
    Ok(out)
}
