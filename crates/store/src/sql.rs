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
use crate::round::{self, Arg};
use crate::rows::{db_err, job_from_row, ms_to_time, now_ms, window_starts, JOB_COLUMNS};
use crate::sqlite_round::{Rounds, Work};
use crate::{
    AttemptError, ClaimBatch, Event, FinishedCounts, Job, JobError, JobFilter, JobPage, KeyHold,
    Lease, ListQuery, NewJob, Outcome, Pruned, QueueStats, RateLimit, Result, RetryFilter, Store,
    StoreError, StoredImage, CHUNK_SIZE,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::policy::{self, Happened, Rules};
use imgclass_core::{Action, ErrorCode, EventKind, JobId, JobStatus};
use sqlx::any::AnyArguments;
use sqlx::pool::PoolConnection;
use sqlx::AnyPool;
use sqlx::{Any, AnyConnection, Arguments, Row};
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
    /// On SQLite, the thread that runs a worker pool's whole round in one hand-off.
    rounds: Option<Arc<Rounds>>,
}

/// Jobs of one request waiting for the group commit, the idempotency key they complete, and
/// where to send its answer.
struct Submission {
    jobs: Vec<NewJob>,
    key: Option<KeyHold>,
    reply: oneshot::Sender<Result<Vec<Job>>>,
}

/// One request's part of a transaction: its jobs and the key they complete.
type Request<'a> = (&'a [NewJob], Option<&'a KeyHold>);

impl Submission {
    fn request(&self) -> Request<'_> {
        (&self.jobs, self.key.as_ref())
    }

    fn bytes(&self) -> usize {
        self.jobs.iter().map(|j| j.image.len()).sum()
    }
}

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
        let mut jobs = first.jobs.len();
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while jobs < GROUP_MAX_JOBS && bytes < GROUP_MAX_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            jobs += next.jobs.len();
            bytes += next.bytes();
            batch.push(next);
        }
        if batch.len() > 1 {
            let requests: Vec<Request> = batch.iter().map(Submission::request).collect();
            if let Ok(created) = store.insert_jobs(&requests).await {
                for (submission, jobs) in batch.into_iter().zip(created) {
                    let _ = submission.reply.send(Ok(jobs));
                }
                continue;
            }
        }
        for submission in batch {
            let result = store
                .insert_jobs(&[submission.request()])
                .await
                .map(|mut c| c.remove(0));
            let _ = submission.reply.send(result);
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

    /// Commits; the connection stays with this value (and out of the pool) until it is dropped,
    /// so that whatever the committer does next happens before the next writer begins.
    pub(crate) async fn commit(&mut self) -> Result<()> {
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

/// An image to store, with what the `blobs` row says of it.
struct Blob<'a> {
    sha256: &'a str,
    bytes: &'a [u8],
    content_type: &'a str,
    width: u32,
    height: u32,
}

impl<'a> Blob<'a> {
    fn of(job: &'a NewJob) -> Self {
        Blob {
            sha256: &job.sha256,
            bytes: &job.image,
            content_type: &job.content_type,
            width: job.width,
            height: job.height,
        }
    }
}

/// The placeholders of a multi-row `VALUES` list: `rows` tuples of `columns` numbered
/// parameters, `($1, $2), ($3, $4)`.
pub(crate) fn values_list(rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let marks: Vec<String> = (1..=columns)
            .map(|c| format!("${}", r * columns + c))
            .collect();
        format!("({})", marks.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// The job as `action` leaves it: the state machine's status, `edit`'s other columns, no lease
/// unless running.
fn next_state(
    job: &Job,
    action: Action,
    now: i64,
    edit: impl FnOnce(&mut Job, i64),
) -> Result<Job> {
    let mut next = job.clone();
    next.status = job.status.apply(action)?;
    edit(&mut next, now);
    if next.status != JobStatus::Running {
        next.lease_owner = None;
        next.lease_until = None;
    }
    next.updated_at = ms_to_time(now);
    Ok(next)
}

/// The job as a worker's `outcome` leaves it.
pub(crate) fn finished(job: &Job, outcome: Outcome, now: i64) -> Result<(Job, Action)> {
    let (action, result, error, run_at) = match outcome {
        Outcome::Succeeded(result) => (Action::Succeed, Some(result), None, None),
        Outcome::Failed(error) => (Action::Fail, None, Some(error), None),
        Outcome::Retry { error, run_at } => (Action::Requeue, None, Some(error), Some(run_at)),
    };
    let next = next_state(job, action, now, |j, now| {
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
    })?;
    Ok((next, action))
}

/// The SELECT of whole jobs, followed by the given condition.
pub(crate) fn select_jobs(condition: &str) -> String {
    format!("SELECT {JOB_COLUMNS} FROM jobs j JOIN blobs b ON b.sha256 = j.image_sha256 WHERE {condition}")
}

/// The conditions of a [`JobFilter`] on `jobs j` (joined with nothing else, so that counts need
/// no join), and the values they bind from `$1` on.
struct Conditions {
    sql: Vec<String>,
    args: Vec<Arg>,
}

impl Conditions {
    /// Adds a condition on the next placeholder (`{}` in `template`).
    fn add(&mut self, template: &str, arg: Arg) {
        self.args.push(arg);
        let mark = format!("${}", self.args.len());
        self.sql.push(template.replace("{}", &mark));
    }

    /// Adds `column IN (...)`.
    fn any_of(&mut self, column: &str, values: &[&str]) {
        let mut marks = Vec::with_capacity(values.len());
        for v in values {
            self.args.push(Arg::text(*v));
            marks.push(format!("${}", self.args.len()));
        }
        self.sql.push(format!("{column} IN ({})", marks.join(", ")));
    }

    /// The next placeholder's number.
    fn next(&self) -> usize {
        self.args.len() + 1
    }

    /// `a AND b AND ...` (`1 = 1` without conditions).
    fn joined(&self) -> String {
        if self.sql.is_empty() {
            "1 = 1".into()
        } else {
            self.sql.join(" AND ")
        }
    }

    /// `sql` with the conditions' values bound (more can follow with `bind`).
    fn query<'q>(&'q self, sql: &'q str) -> Result<sqlx::query::Query<'q, Any, AnyArguments<'q>>> {
        Ok(sqlx::query_with(sql, any_args(&self.args)?))
    }
}

/// A `LIKE` pattern (with `ESCAPE '\'`) that matches any text containing `text`.
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// The values of a statement built at run time, for sqlx.
pub(crate) fn any_args(args: &[Arg]) -> Result<AnyArguments<'_>> {
    let mut out = AnyArguments::default();
    for a in args {
        match a {
            Arg::Text(t) => out.add(t.as_deref()),
            Arg::Int(i) => out.add(*i),
        }
        .map_err(|e| db_err(format!("cannot bind a value: {e}")))?;
    }
    Ok(out)
}

/// Statuses written into SQL as literals (see `round::claim_sql`).
pub(crate) const QUEUED: &str = JobStatus::Queued.as_str();
pub(crate) const RUNNING: &str = JobStatus::Running.as_str();
/// The statuses of finished jobs.
const FINISHED: [JobStatus; 3] = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled];

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
        rounds: Option<Rounds>,
    ) -> Self {
        let mut store = SqlStore {
            writer,
            reader,
            dialect,
            wakeups,
            storage: Arc::default(),
            submissions: None,
            rounds: rounds.map(Arc::new),
        };
        let (submit, queue) = mpsc::channel(1024);
        // The committer ends when the last handle with `submit` is dropped.
        tokio::spawn(group_commit(store.clone(), queue));
        store.submissions = Some(submit);
        store
    }

    /// Stores each request's images and jobs and completes its idempotency key, all in one
    /// transaction and a few statements for the whole group; the jobs of each request come
    /// back in its order.
    async fn insert_jobs(&self, requests: &[Request<'_>]) -> Result<Vec<Vec<Job>>> {
        let mut w = self.begin(Durability::Durable).await?;
        let all: Vec<&NewJob> = requests.iter().flat_map(|(jobs, _)| jobs.iter()).collect();
        let blobs: Vec<Blob> = all.iter().map(|j| Blob::of(j)).collect();
        Self::insert_blobs(&mut w, &blobs).await?;
        let mut jobs = Self::insert_job_rows(&mut w, &all).await?.into_iter();
        let mut created = Vec::with_capacity(requests.len());
        for (mine, key) in requests {
            let mine: Vec<Job> = jobs.by_ref().take(mine.len()).collect();
            for job in &mine {
                self.record(&mut w, job.id, EventKind::Created, Some(job.clone()))
                    .await?;
                if job.cached {
                    // Still announced as a success, like any job that finishes.
                    self.record(&mut w, job.id, EventKind::Succeeded, Some(job.clone()))
                        .await?;
                }
            }
            if let Some(hold) = key {
                let ids: Vec<JobId> = mine.iter().map(|j| j.id).collect();
                crate::idempotency::complete(&mut w, hold, &ids).await?;
            }
            created.push(mine);
        }
        self.commit(w).await?;
        Ok(created)
    }

    /// Inserts the rows of new jobs (a few hundred per statement) and returns them as stored, in
    /// order. A job answered from the result cache is created finished, with the earlier result.
    async fn insert_job_rows(w: &mut Write, new: &[&NewJob]) -> Result<Vec<Job>> {
        const ROWS: usize = 200;
        const COLUMNS: usize = 16;
        let now = ms_to_time(w.now);
        let mut created = Vec::with_capacity(new.len());
        for chunk in new.chunks(ROWS) {
            let values = values_list(chunk.len(), COLUMNS);
            let sql = format!(
                "INSERT INTO jobs (id, status, image_sha256, file_name, max_attempts, priority, \
                 run_at, created_at, updated_at, owner, webhook_url, webhook_events, result, \
                 cached, started_at, finished_at) VALUES {values} RETURNING id, seq"
            );
            let mut q = sqlx::query(&sql);
            let mut jobs = Vec::with_capacity(chunk.len());
            for new in chunk {
                let (status, finished_at) = match new.cached_result {
                    Some(_) => (JobStatus::Succeeded, Some(now)),
                    None => (JobStatus::Queued, None),
                };
                let job = Job {
                    seq: 0,
                    id: JobId::new(),
                    status,
                    image_size: new.image.len() as u64,
                    image_sha256: new.sha256.clone(),
                    content_type: new.content_type.clone(),
                    width: new.width,
                    height: new.height,
                    file_name: new.file_name.clone(),
                    attempts: 0,
                    stalls: 0,
                    run_attempts: 0,
                    max_attempts: new.max_attempts.max(1),
                    priority: new.priority,
                    run_at: now,
                    lease_owner: None,
                    lease_until: None,
                    error: None,
                    attempt_errors: Vec::new(),
                    result: new.cached_result.clone(),
                    created_at: now,
                    started_at: finished_at,
                    finished_at,
                    updated_at: now,
                    owner: new.owner.clone(),
                    webhook: new.webhook.clone(),
                    cached: new.cached_result.is_some(),
                };
                q = q
                    .bind(job.id.to_string())
                    .bind(job.status.as_str())
                    .bind(job.image_sha256.clone())
                    .bind(job.file_name.clone())
                    .bind(i64::from(job.max_attempts))
                    .bind(i64::from(job.priority))
                    .bind(w.now)
                    .bind(w.now)
                    .bind(w.now)
                    .bind(job.owner.clone())
                    .bind(job.webhook.as_ref().map(|h| h.url.clone()))
                    .bind(job.webhook.as_ref().map(crate::rows::webhook_events))
                    .bind(job.result.as_ref().map(to_json).transpose()?)
                    .bind(i64::from(job.cached))
                    .bind(finished_at.map(|_| w.now))
                    .bind(finished_at.map(|_| w.now));
                jobs.push(job);
            }
            let mut seqs = std::collections::HashMap::with_capacity(chunk.len());
            for row in q.fetch_all(&mut *w.tx).await? {
                let id: String = row.try_get("id")?;
                seqs.insert(id, row.try_get::<i64, _>("seq")?);
            }
            for mut job in jobs {
                job.seq = *seqs
                    .get(&job.id.to_string())
                    .ok_or_else(|| db_err(format!("job {} was not inserted", job.id)))?;
                created.push(job);
            }
        }
        Ok(created)
    }

    /// Stores the images that are not stored yet (once each, however many jobs share one).
    async fn insert_blobs(w: &mut Write, new: &[Blob<'_>]) -> Result<()> {
        const ROWS: usize = 200;
        let mut seen = std::collections::HashSet::with_capacity(new.len());
        let distinct: Vec<&Blob> = new.iter().filter(|b| seen.insert(b.sha256)).collect();
        for chunk in distinct.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO blobs (sha256, size, content_type, width, height, created_at) \
                 VALUES {} ON CONFLICT (sha256) DO NOTHING RETURNING sha256",
                values_list(chunk.len(), 6)
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql);
            for b in chunk {
                q = q
                    .bind(b.sha256)
                    .bind(b.bytes.len() as i64)
                    .bind(b.content_type)
                    .bind(i64::from(b.width))
                    .bind(i64::from(b.height))
                    .bind(w.now);
            }
            let inserted: std::collections::HashSet<String> =
                q.fetch_all(&mut *w.tx).await?.into_iter().collect();
            for b in chunk.iter().filter(|b| inserted.contains(b.sha256)) {
                Self::insert_chunks(w, b.sha256, b.bytes).await?;
            }
        }
        Ok(())
    }

    /// The conditions of `filter`, and, when `statuses` is not empty, that the job is in one of
    /// them.
    fn conditions(&self, filter: &JobFilter, statuses: &[JobStatus]) -> Conditions {
        let mut c = Conditions {
            sql: Vec::new(),
            args: Vec::new(),
        };
        if let Some(status) = filter.status {
            c.add("j.status = {}", Arg::text(status.as_str()));
        }
        if !statuses.is_empty() {
            let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
            c.any_of("j.status", &names);
        }
        if let Some(owner) = &filter.owner {
            c.add("j.owner = {}", Arg::text(owner.clone()));
        }
        if let Some(name) = &filter.name {
            c.add(
                "LOWER(j.file_name) LIKE LOWER({}) ESCAPE '\\'",
                Arg::text(contains_pattern(name)),
            );
        }
        if let Some(label) = &filter.label {
            c.add(
                &format!(
                    "LOWER({}) LIKE LOWER({{}}) ESCAPE '\\'",
                    self.dialect.top_label()
                ),
                Arg::text(contains_pattern(label)),
            );
        }
        if let Some(code) = filter.error_code {
            c.add("j.error_code = {}", Arg::text(code.as_str()));
        }
        if let Some(since) = filter.since {
            c.add("j.created_at >= {}", Arg::int(ms(since)));
        }
        if let Some(until) = filter.until {
            c.add("j.created_at < {}", Arg::int(ms(until)));
        }
        c
    }

    /// Deletes a job's row; its image sha256 and owner, or `None` when there was no such job.
    async fn delete_row(w: &mut Write, id: JobId) -> Result<Option<(String, Option<String>)>> {
        Ok(
            sqlx::query_as("DELETE FROM jobs WHERE id = $1 RETURNING image_sha256, owner")
                .bind(id.to_string())
                .fetch_optional(&mut *w.tx)
                .await?,
        )
    }

    /// Deletes an image when no job refers to it any more.
    async fn delete_blob_if_unused(w: &mut Write, sha256: &str) -> Result<()> {
        sqlx::query(
            "DELETE FROM blobs WHERE sha256 = $1 AND NOT EXISTS \
             (SELECT 1 FROM jobs WHERE image_sha256 = $1)",
        )
        .bind(sha256)
        .execute(&mut *w.tx)
        .await?;
        Ok(())
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

    /// Writes the transaction's events, commits, then publishes the events and wakes idle
    /// workers when a job became claimable.
    ///
    /// The events are published before the connection goes back to the pool: on SQLite, whose
    /// one writer connection orders every write, the next transaction cannot commit (and publish
    /// its own, later events) first. A subscriber that drops what it has already passed (an SSE
    /// stream resuming by sequence number) would otherwise lose the earlier ones.
    pub(crate) async fn commit(&self, mut w: Write) -> Result<()> {
        if !w.events.is_empty() {
            self.dialect.announce(&mut w.tx).await?;
            Self::insert_events(&mut w).await?;
        }
        w.tx.commit().await?;
        w.watch.committed = true;
        self.publish(w.events);
        Ok(())
    }

    /// Publishes a committed transaction's events, and wakes idle workers when a job became
    /// claimable.
    fn publish(&self, events: Vec<Event>) {
        let wake = events.iter().any(|e| e.status == Some(JobStatus::Queued));
        self.dialect.committed(events);
        if wake {
            self.wakeups.notify_waiters();
        }
    }

    /// [`Store::finish_and_claim`] on SQLite's round thread. The writer connection is held
    /// meanwhile: the round is the process's one writer, and its events are published before
    /// the next write begins.
    async fn finish_and_claim_on(
        &self,
        rounds: &Rounds,
        finishes: Vec<(Lease, Outcome)>,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
    ) -> Result<(Vec<bool>, ClaimBatch)> {
        let _writer = self.writer.acquire().await?;
        let work = Work {
            finishes,
            worker: worker.to_string(),
            limit,
            lease,
            rate,
        };
        match rounds.run(work).await {
            Ok(round) => {
                self.storage.write_succeeded();
                self.publish(round.events);
                Ok((round.stored, round.batch))
            }
            Err(e) => {
                if let StoreError::StorageFull(detail) = &e {
                    self.storage.full(detail.clone());
                }
                Err(e)
            }
        }
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
        if let Some(job) = &job {
            // The webhook's call goes into the outbox with the change it announces.
            crate::webhooks::enqueue(w, job, kind).await?;
        }
        // Written with the transaction's other events at commit (`insert_events`), which gives
        // it its `seq`.
        w.events.push(round::event(job_id, kind, job, owner, w.now));
        Ok(())
    }

    /// Inserts the events a transaction recorded, a few hundred rows per statement, and gives
    /// each its `seq` (in the order they were recorded).
    async fn insert_events(w: &mut Write) -> Result<()> {
        let now = w.now;
        for events in w.events.chunks_mut(round::EVENT_ROWS) {
            let sql = round::events_sql(events.len());
            let args: Vec<Arg> = events
                .iter()
                .flat_map(|e| round::event_args(e, now))
                .collect();
            let seqs = sqlx::query_scalar_with::<_, i64, _>(&sql, any_args(&args)?)
                .fetch_all(&mut *w.tx)
                .await?;
            round::number_events(events, seqs)?;
        }
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
        let next = next_state(job, action, w.now, edit)?;
        Ok(self
            .apply_all(w, vec![(job, next, action)])
            .await?
            .pop()
            .flatten())
    }

    /// [`apply`](Self::apply) for many jobs at once: each `(job as read, job as it becomes,
    /// action)` is written with the same guard, in one statement per hundred jobs; the events
    /// of those written are recorded in order.
    async fn apply_all(
        &self,
        w: &mut Write,
        changes: Vec<(&Job, Job, Action)>,
    ) -> Result<Vec<Option<Job>>> {
        let mut written = Vec::with_capacity(changes.len());
        for chunk in changes.chunks(round::APPLY_ROWS) {
            let sql = round::apply_sql(chunk.len());
            let mut args = Vec::with_capacity(chunk.len() * 17);
            for (job, next, _) in chunk {
                args.extend(round::apply_args(job, next, w.now)?);
            }
            let q = sqlx::query_scalar_with::<_, String, _>(&sql, any_args(&args)?);
            let changed: std::collections::HashSet<String> =
                q.fetch_all(&mut *w.tx).await?.into_iter().collect();
            for (job, next, action) in chunk {
                if changed.contains(&job.id.to_string()) {
                    self.record(w, job.id, action.event(), Some(next.clone()))
                        .await?;
                    written.push(Some(next.clone()));
                } else {
                    written.push(None);
                }
            }
        }
        Ok(written)
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
        let (next, action) = finished(&job, outcome, w.now)?;
        Ok(self.apply_all(w, vec![(&job, next, action)]).await?[0].is_some())
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
        let token = round::claim_token(worker);
        let mut limit = limit as i64;
        let mut window: Vec<i64> = Vec::new();
        if let Some(rate) = rate {
            // The rate-limit row is read under the write lock (and row lock), so concurrent
            // claimers on any node take starts one after the other.
            window = self.recent_starts(&mut *w.tx, now, rate).await?;
            match round::rate_allows(&window, now, rate) {
                Ok(allowed) => limit = limit.min(allowed),
                Err(limited) => return Ok(limited),
            }
        }
        let sql = round::claim_sql(self.dialect.lock(Lock::JobsSkipLocked));
        let args = round::claim_args(&token, lease, now, limit)?;
        let claimed = sqlx::query_with(&sql, any_args(&args)?)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            return Ok(ClaimBatch::default());
        }
        if rate.is_some() {
            window.extend(std::iter::repeat_n(now, claimed as usize));
            sqlx::query(round::RATE_WRITE_SQL)
                .bind(to_json(&window)?)
                .execute(&mut *w.tx)
                .await?;
        }
        // The lease token is new: it names exactly this batch.
        let sql = round::claimed_sql();
        let args = round::claimed_args(&token);
        let rows = sqlx::query_with(&sql, any_args(&args)?)
            .fetch_all(&mut *w.tx)
            .await?;
        let mut claims = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            let image: Option<Vec<u8>> = row.try_get("inline_image")?;
            self.record(w, job.id, EventKind::Running, Some(job.clone()))
                .await?;
            claims.push(round::claim_of(job, image, &token));
        }
        Ok(ClaimBatch {
            claims,
            rate_limited_for: None,
        })
    }

    /// Inserts a blob and its chunks unless an identical one is stored.
    /// A new image's bytes, in chunks of at most `CHUNK_SIZE`.
    async fn insert_chunks(w: &mut Write, sha256: &str, bytes: &[u8]) -> Result<()> {
        for (idx, chunk) in bytes.chunks(CHUNK_SIZE).enumerate() {
            sqlx::query("INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)")
                .bind(sha256)
                .bind(idx as i64)
                .bind(chunk)
                .execute(&mut *w.tx)
                .await?;
        }
        Ok(())
    }

    /// The job starts of the current rate-limit window, oldest first.
    async fn recent_starts<'c, E>(&self, exec: E, now: i64, rate: RateLimit) -> Result<Vec<i64>>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let sql = round::rate_read_sql(self.dialect.lock(Lock::Row));
        let starts: Option<String> = sqlx::query_scalar(&sql).fetch_optional(exec).await?;
        window_starts(starts, now, rate)
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<()> {
        self.dialect.migrate(&self.writer).await
    }

    async fn create_jobs_keyed(&self, jobs: Vec<NewJob>, key: Option<KeyHold>) -> Result<Vec<Job>> {
        let Some(submit) = &self.submissions else {
            return Ok(self.insert_jobs(&[(&jobs, key.as_ref())]).await?.remove(0));
        };
        let stopped = || StoreError::Unavailable("the store is shutting down".into());
        let (reply, answer) = oneshot::channel();
        submit
            .send(Submission { jobs, key, reply })
            .await
            .map_err(|_| stopped())?;
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
        let filter = JobFilter {
            status: query.status,
            owner: query.owner.clone(),
            ..JobFilter::default()
        };
        self.search_jobs(&filter, query.cursor.as_deref(), query.limit)
            .await
    }

    async fn search_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage> {
        let before = match cursor {
            Some(c) => decode_cursor(c).ok_or(StoreError::InvalidCursor)?,
            None => i64::MAX,
        };
        let limit = limit.clamp(1, 500);
        let mut c = self.conditions(filter, &[]);
        c.add("j.seq < {}", Arg::int(before));
        let sql = select_jobs(&format!(
            "{} ORDER BY j.seq DESC LIMIT ${}",
            c.joined(),
            c.next()
        ));
        let rows = c
            .query(&sql)?
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
        if let Some(rounds) = &self.rounds {
            return self
                .finish_and_claim_on(rounds, finishes, worker, limit, lease, rate)
                .await;
        }
        let mut w = self.begin(Durability::Relaxed).await?;
        // Every leased job of the round in one read (locked, in a stable order).
        let mut jobs = std::collections::HashMap::with_capacity(finishes.len());
        if !finishes.is_empty() {
            let sql = round::leased_jobs_sql(finishes.len(), self.dialect.lock(Lock::Jobs));
            let ids: Vec<Arg> = finishes
                .iter()
                .map(|(l, _)| Arg::text(l.job_id.to_string()))
                .collect();
            for row in sqlx::query_with(&sql, any_args(&ids)?)
                .fetch_all(&mut *w.tx)
                .await?
            {
                let job = job_from_row(&row)?;
                jobs.insert(job.id, job);
            }
        }
        // The outcomes of jobs still under the lease they were finished with, all in one write.
        let (leased, changes) = round::plan_finishes(finishes, &jobs, w.now)?;
        let written = self.apply_all(&mut w, changes).await?;
        let stored = round::stored(leased, written);
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
        let Some((sha, owner)) = Self::delete_row(&mut w, id).await? else {
            w.tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        Self::delete_blob_if_unused(&mut w, &sha).await?;
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
        let sql = select_jobs(&format!(
            "j.status = '{RUNNING}' AND j.lease_until < $1 ORDER BY j.seq"
        )) + self.dialect.lock(Lock::JobsSkipLocked);
        let rows = sqlx::query(&sql).bind(w.now).fetch_all(&mut *w.tx).await?;
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

    async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
        let c = self.conditions(filter, &[]);
        let sql = format!("SELECT COUNT(*) AS n FROM jobs j WHERE {}", c.joined());
        let row = c.query(&sql)?.fetch_one(&self.reader).await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    async fn cancel_queued(&self, filter: &JobFilter) -> Result<u64> {
        let mut w = self.begin(Durability::Durable).await?;
        let c = self.conditions(filter, &[JobStatus::Queued]);
        let sql =
            select_jobs(&format!("{} ORDER BY j.seq", c.joined())) + self.dialect.lock(Lock::Jobs);
        let rows = c.query(&sql)?.fetch_all(&mut *w.tx).await?;
        let mut canceled = 0;
        for row in &rows {
            let job = job_from_row(row)?;
            if self
                .act_on(&mut w, &job, Happened::CancelRequested)
                .await?
                .is_some()
            {
                canceled += 1;
            }
        }
        self.commit(w).await?;
        Ok(canceled)
    }

    async fn delete_finished(&self, filter: &JobFilter) -> Result<u64> {
        let mut w = self.begin(Durability::Durable).await?;
        let c = self.conditions(filter, &FINISHED);
        let sql = format!(
            "SELECT j.id FROM jobs j WHERE {} ORDER BY j.seq",
            c.joined()
        ) + self.dialect.lock(Lock::Jobs);
        let ids: Vec<String> = c
            .query(&sql)?
            .fetch_all(&mut *w.tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        let mut images = std::collections::BTreeSet::new();
        let mut deleted = 0;
        for id in ids {
            let id = parse_id(&id)?;
            let Some((sha, owner)) = Self::delete_row(&mut w, id).await? else {
                continue;
            };
            images.insert(sha);
            self.record_owned(&mut w, id, EventKind::Deleted, None, owner)
                .await?;
            deleted += 1;
        }
        for sha in &images {
            Self::delete_blob_if_unused(&mut w, sha).await?;
        }
        self.commit(w).await?;
        Ok(deleted)
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
        // Finished jobs per minute and outcome; the last minute is the one ending now.
        let minutes = QueueStats::MINUTES as i64;
        let from = now - minutes * 60_000;
        let rows = sqlx::query(
            "SELECT status, (finished_at - $1) / 60000 AS m, COUNT(*) AS n FROM jobs \
             WHERE finished_at >= $1 AND ($2 IS NULL OR owner = $2) GROUP BY status, m",
        )
        .bind(from)
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
        stats.finished_per_minute = vec![FinishedCounts::default(); QueueStats::MINUTES];
        for row in rows {
            let status: String = row.try_get("status")?;
            let m = row.try_get::<i64, _>("m")?.clamp(0, minutes - 1) as usize;
            let n = row.try_get::<i64, _>("n")? as u64;
            stats.finished_per_minute[m].add(status.parse().map_err(db_err)?, n);
        }
        stats.finished_last_minute_by = stats.finished_per_minute[QueueStats::MINUTES - 1];
        stats.finished_last_minute = stats.finished_last_minute_by.total();
        if let Some(rate) = rate {
            // A plain read: statistics never wait for (or hold up) the claimers' row lock.
            let sql = "SELECT starts FROM rate_limits WHERE name = 'global'";
            let starts: Option<String> = sqlx::query_scalar(sql).fetch_optional(&mut *conn).await?;
            let window = window_starts(starts, now, rate)?;
            let used = window.len();
            stats.rate_limit_remaining = Some(rate.jobs.saturating_sub(used as u32));
            if rate.jobs > 0 && used >= rate.jobs as usize {
                // A start is allowed once enough of the window's starts have left it.
                let leaves = window[used - rate.jobs as usize];
                stats.rate_limit_next_start_at =
                    Some(ms_to_time(leaves + rate.per.as_millis() as i64));
            }
        }
        Ok(stats)
    }

    async fn import_job(&self, job: &Job, image: &[u8]) -> Result<bool> {
        let mut w = self.begin(Durability::Durable).await?;
        w.now = ms(job.created_at);
        let blob = Blob {
            sha256: &job.image_sha256,
            bytes: image,
            content_type: &job.content_type,
            width: job.width,
            height: job.height,
        };
        Self::insert_blobs(&mut w, &[blob]).await?;
        // A job that was running has no worker here: it is queued again.
        let status = if job.status == JobStatus::Running {
            JobStatus::Queued
        } else {
            job.status
        };
        let n = sqlx::query(
            "INSERT INTO jobs (id, status, image_sha256, file_name, attempts, stalls, run_attempts, \
             max_attempts, priority, run_at, error_code, error_message, attempt_errors, result, \
             created_at, started_at, finished_at, updated_at, owner, webhook_url, webhook_events, \
             cached) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21, $22) ON CONFLICT (id) DO NOTHING",
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
        .bind(i64::from(job.cached))
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit_plain().await?;
        Ok(n == 1)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let sql = format!("SELECT MIN(run_at) FROM jobs WHERE status = '{QUEUED}'");
        let v: Option<i64> = sqlx::query_scalar(&sql).fetch_one(&self.reader).await?;
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
