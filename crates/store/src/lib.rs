//! The one place that knows SQL: jobs and the queue (claim, lease, heartbeat, complete, retry,
//! cancel), content-addressed image blobs (their bytes in the database or in an object store,
//! `objects`), and the event log, behind [`Store`]. One
//! implementation serves SQLite and PostgreSQL, in layers: write transactions (`tx`) and how
//! statements run (`exec`) at the bottom; a decision of the policy applied to a job
//! (`transition`) and the worker round (`round`) on them, written once for both databases;
//! the store's write path (`sql`); statements grouped by concern (`submit`, `actions`,
//! `search`, `retention`, `stats`, `blobs`, `collect` over `tombstones`, `events`, `tokens`,
//! `quotas`, `idempotency`, `webhooks`); and the thin face (`face`). `dialect.rs` names what differs and
//! `sqlite.rs`/`postgres.rs` (and SQLite's round thread, `sqlite_round.rs`) hold just that.

mod actions;
mod blobs;
mod collect;
mod dialect;
mod events;
mod exec;
mod face;
mod health;
mod idempotency;
mod model;
mod models;
mod objects;
mod outbox;
mod placeholders;
mod postgres;
mod quotas;
mod recent;
mod retention;
mod round;
mod rows;
mod search;
mod sql;
mod sqlite;
mod sqlite_round;
mod stats;
mod submit;
mod tokens;
mod tombstones;
mod transition;
mod tx;
mod uploads;
mod webhooks;

pub use collect::{Collected, Moved};
pub use health::{database_errors, DatabaseErrors, FullStorage, Health, PoolStatus};
pub use idempotency::Idempotency;
pub use model::*;
pub use models::Models;
pub use objects::{BlobObserver, BlobOp, BlobStore, Listed, DATABASE, SMALL_IMAGE_MAX};
pub use outbox::{Delivery, DeliveryAttempt, DeliveryNext, DeliveryStatus, Webhooks};
pub use postgres::PgOptions;
pub use quotas::{QuotaTake, Quotas};
pub use tokens::{ApiToken, NewToken, Tokens};

use async_trait::async_trait;
use imgclass_core::policy::Rules;
use imgclass_core::{JobId, JobStatus};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// Chunk size of stored images.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Images up to this size come with their claim, read by the claim's own statement (a worker
/// then makes no second round trip for them); larger ones are read by the worker outside the
/// claim's write transaction, which they would hold for longer.
pub const INLINE_IMAGE_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job not found")]
    NotFound,
    #[error(transparent)]
    InvalidState(#[from] imgclass_core::TransitionError),
    #[error("invalid cursor")]
    InvalidCursor,
    #[error("{0}")]
    Conflict(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The disk (or the database's space) is full; nothing of the failed write was stored.
    #[error("the database's storage is full: {0}")]
    StorageFull(String),
    #[error("database error: {0}")]
    Database(String),
    /// The request's hold on its `Idempotency-Key` lapsed and another request took the key over;
    /// nothing of this request was stored.
    #[error("the request no longer holds its idempotency key")]
    KeyLost,
    /// The object store that holds images (files, S3) failed or did not answer; the request
    /// may be tried again.
    #[error("the image store is unavailable: {0}")]
    ImagesUnavailable(String),
    /// A concurrent change made the write fail (a row it refers to was deleted meanwhile);
    /// nothing of it was stored, and trying again succeeds.
    #[error("a concurrent change got in the way: {0}")]
    Raced(String),
    #[error("invalid URL {url:?}: {message}")]
    Config { url: String, message: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let converted = Self::classify(e);
        health::count_error(matches!(converted, StoreError::Unavailable(_)));
        converted
    }
}

impl StoreError {
    fn classify(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolClosed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(ref db) if is_storage_full(db.as_ref()) => {
                let detail = e.to_string();
                // Claimed by the write transaction this error ends (see `health`).
                health::storage_full_seen(&detail);
                StoreError::StorageFull(detail)
            }
            sqlx::Error::Database(ref db) if is_connection_problem(db.as_ref()) => {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Database(ref db) if is_foreign_key_violation(db.as_ref()) => {
                StoreError::Raced(e.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

/// A full disk: SQLite's SQLITE_FULL (13), PostgreSQL's `disk_full` (53100).
fn is_storage_full(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(e) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        return sqlite_primary_code(e).map(SqliteClass::of) == Some(SqliteClass::Full);
    }
    db.code().as_deref() == Some("53100")
}

/// A foreign key refused the write: PostgreSQL's 23503, SQLite's SQLITE_CONSTRAINT_FOREIGNKEY
/// (787). The store's own writes break no foreign key unless a concurrent transaction deleted
/// the row they refer to.
fn is_foreign_key_violation(db: &dyn sqlx::error::DatabaseError) -> bool {
    matches!(db.code().as_deref(), Some("23503") | Some("787"))
}

/// Errors that mean "the database cannot serve us right now", not "the request is wrong".
/// SQLite: see [`SqliteClass`]. PostgreSQL SQLSTATEs: connection exceptions (08), operator
/// intervention such as a shutdown or restart (57P), insufficient resources (53), a database not
/// accepting connections (55000).
fn is_connection_problem(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(e) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        return sqlite_primary_code(e).map(SqliteClass::of) == Some(SqliteClass::Unavailable);
    }
    match db.code() {
        Some(c) => {
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "55000"
        }
        None => false,
    }
}

/// What a SQLite error means to the store, from its primary result code (the extended code's
/// low byte); the same for errors from sqlx and from the round thread's own connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqliteClass {
    /// SQLITE_FULL (13).
    Full,
    /// Busy or locked (5, 6), an I/O error (10), a file that cannot be opened (14).
    Unavailable,
    Other,
}

impl SqliteClass {
    pub(crate) fn of(primary: i32) -> SqliteClass {
        match primary & 0xff {
            13 => SqliteClass::Full,
            5 | 6 | 10 | 14 => SqliteClass::Unavailable,
            _ => SqliteClass::Other,
        }
    }
}

/// The primary result code of a SQLite error (its extended code's low byte).
fn sqlite_primary_code(e: &sqlx::sqlite::SqliteError) -> Option<i32> {
    let code = sqlx::error::DatabaseError::code(e)?;
    code.parse::<i32>().ok().map(|c| c & 0xff)
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Database(format!("migration failed: {e}"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the service needs from its database.
#[async_trait]
pub trait Store:
    Tokens + Quotas + Webhooks + Health + Idempotency + Models + Send + Sync + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<()>;

    /// Stores the images (deduplicated by content) and creates one queued job per image, all in
    /// one transaction.
    async fn create_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<Job>> {
        self.create_jobs_keyed(jobs, None).await
    }

    /// `create_jobs`, and when `key` is given, completes that `Idempotency-Key` with the jobs in
    /// the same transaction (`KeyLost` when the request no longer holds it: nothing is stored).
    async fn create_jobs_keyed(&self, jobs: Vec<NewJob>, key: Option<KeyHold>) -> Result<Vec<Job>>;

    async fn get_job(&self, id: JobId) -> Result<Option<Job>>;

    /// Jobs newest first.
    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage>;

    /// Jobs matching `filter`, newest first, one page of at most `limit` after `cursor` (the
    /// `next_cursor` of the previous page).
    async fn search_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage>;

    /// How many jobs match `filter`.
    async fn count_jobs(&self, filter: &JobFilter) -> Result<u64>;

    /// Cancels every queued job matching `filter`, in one transaction; how many were canceled.
    async fn cancel_queued(&self, filter: &JobFilter) -> Result<u64>;

    /// Deletes every finished (succeeded, failed or canceled) job matching `filter`, and the
    /// images no other job uses, in one transaction; how many jobs were deleted.
    async fn delete_finished(&self, filter: &JobFilter) -> Result<u64>;

    /// The stored image of a job.
    async fn job_image(&self, id: JobId) -> Result<Option<StoredImage>>;

    /// The bytes of a stored image.
    async fn read_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>>;

    /// The bytes of a stored image of `size` bytes from the object store `store` (as a claim
    /// named it), without reading its row; where that store no longer has it (the image has
    /// moved since), as [`read_blob`](Store::read_blob) finds it.
    async fn read_blob_from(&self, sha256: &str, store: &str, size: u64)
        -> Result<Option<Vec<u8>>>;

    /// Where new images go (`database`, a directory or an S3 bucket).
    fn blob_store(&self) -> BlobStore;

    /// Whether the object store new images go to answers (always, for the database's own).
    async fn check_images(&self) -> Result<()> {
        self.blob_store().probe().await
    }

    /// One pass of the image collector: deletes the images in object stores that no job refers
    /// to (their rows and objects), and with `orphans`, the objects in the current store that no
    /// row names and that are older than `grace` (an upload stopped between storing its image
    /// and committing its job). Safe to run on several nodes at once.
    async fn collect_images(&self, grace: Duration, orphans: bool) -> Result<Collected>;

    /// Moves up to `limit` images recorded in other stores into `to` (read, digest checked,
    /// stored, recorded, removed from where they were), one at a time; how many moved and how
    /// many remain elsewhere. Safe while the service runs.
    async fn move_images(&self, to: &BlobStore, limit: usize) -> Result<Moved>;

    /// Atomically moves up to `limit` due jobs from queued to running under a fresh lease: a
    /// round with no outcome to store.
    async fn claim(&self, worker: &str, limit: usize, lease: Duration) -> Result<Vec<Claim>> {
        Ok(self.claim_limited(worker, limit, lease, None).await?.claims)
    }

    /// Like `claim`, and takes the starts from the global rate limit in the same transaction.
    async fn claim_limited(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
    ) -> Result<ClaimBatch> {
        Ok(self
            .finish_and_claim(Vec::new(), worker, limit, lease, rate, None)
            .await?
            .1)
    }

    /// Gives a claimed job back to the queue without counting the attempt (the worker is
    /// shutting down). False when the lease is no longer this claim's.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// Extends a lease; false when the lease is no longer this claim's (fenced).
    async fn heartbeat(&self, lease: &Lease, duration: Duration) -> Result<bool>;

    /// Ends an attempt, as the queue's rules decide from its outcome: a round that claims
    /// nothing. False when the lease is no longer this claim's (fenced), in which case nothing
    /// is written.
    async fn finish(&self, lease: &Lease, outcome: Outcome) -> Result<bool> {
        let (stored, _) = self
            .finish_and_claim(
                vec![(lease.clone(), outcome)],
                "",
                0,
                Duration::ZERO,
                None,
                None,
            )
            .await?;
        Ok(stored.first().copied().flatten().is_some())
    }

    /// A worker pool's round in one transaction: ends the given attempts as the queue's rules
    /// decide (each fenced on its own lease), then claims up to `limit` due jobs like
    /// `claim_limited`, only of the `models` named when some are (the models the worker holds).
    /// For each outcome, the status it left its job in (`None`: fenced, not stored).
    async fn finish_and_claim(
        &self,
        finishes: Vec<(Lease, Outcome)>,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
        models: Option<&[String]>,
    ) -> Result<(Vec<Option<JobStatus>>, ClaimBatch)>;

    /// Puts a failed job back in the queue (manual retry).
    async fn retry(&self, id: JobId) -> Result<Job>;

    /// Cancels a queued or running job. A running job's worker finds out at its next heartbeat
    /// (its lease is gone) and drops its result.
    async fn cancel(&self, id: JobId) -> Result<Job>;

    /// Puts every failed job (matching the filter) back in the queue; returns them.
    async fn retry_failed(&self, filter: &RetryFilter) -> Result<Vec<Job>>;

    /// Deletes jobs that finished before `before`, the images no remaining job uses, and
    /// events older than `before`. Queued and running jobs are never touched.
    async fn prune(&self, before: chrono::DateTime<chrono::Utc>) -> Result<Pruned>;

    /// Counts per status and other queue figures.
    async fn stats(&self, rate: Option<RateLimit>) -> Result<QueueStats> {
        self.stats_of(None, rate).await
    }

    /// Like `stats`, counting only the jobs of `owner` when one is given.
    async fn stats_of(&self, owner: Option<&str>, rate: Option<RateLimit>) -> Result<QueueStats>;

    /// Deletes a job, and its image when no other job uses it.
    async fn delete(&self, id: JobId) -> Result<()>;

    /// Requeues running jobs whose lease has expired (their worker is gone); jobs that have
    /// used all their attempts, or whose worker was lost more than the rules' `max_stalls`
    /// times, fail as stalled. Returns how many jobs were touched.
    async fn rescue_expired(&self) -> Result<u64>;

    /// The queue's rules this store decides with.
    fn rules(&self) -> Rules;

    /// Copies a job and its image from another installation, keeping its id, state, result
    /// and times (a running job arrives queued). False when a job with this id already exists.
    async fn import_job(&self, job: &Job, image: &[u8]) -> Result<bool>;

    /// The earliest time a queued job becomes due, if any is queued.
    async fn next_due(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>>;

    /// Events after `after` (exclusive), oldest first, with each job's current state.
    async fn events_since(&self, after: i64, limit: usize) -> Result<Vec<Event>>;

    /// The sequence number of the newest event (0 when there is none).
    async fn last_event_seq(&self) -> Result<i64>;

    /// Signalled when a job may have become claimable.
    fn wakeups(&self) -> Arc<Notify>;

    /// Every event, as it is committed.
    fn subscribe(&self) -> broadcast::Receiver<Event>;
}

/// Copies every job and image of `from` into `to`, oldest first; jobs already in `to` are
/// skipped, so an interrupted copy can be run again. Returns (copied, skipped).
pub async fn copy_all(from: &dyn Store, to: &dyn Store) -> Result<(u64, u64)> {
    // Pages come newest first; collect the ids, then copy oldest first so `to` lists them in
    // the same order.
    let mut jobs = Vec::new();
    let mut cursor = None;
    loop {
        let page = from
            .list_jobs(&ListQuery {
                status: None,
                owner: None,
                cursor: cursor.clone(),
                limit: 500,
            })
            .await?;
        jobs.extend(page.jobs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let (mut copied, mut skipped) = (0, 0);
    for job in jobs.into_iter().rev() {
        let image = from
            .read_blob(&job.image_sha256)
            .await?
            .ok_or_else(|| StoreError::Database(format!("job {} has no image", job.id)))?;
        if to.import_job(&job, &image).await? {
            copied += 1;
        } else {
            skipped += 1;
        }
    }
    Ok((copied, skipped))
}

/// Opens the store a URL names (`sqlite://PATH` or `postgres://...`), deciding with the
/// default rules.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, Rules::default()).await
}

/// Opens the store a URL names, deciding every transition with `rules`, images in the database.
pub async fn connect_with(url: &str, rules: Rules) -> Result<Arc<dyn Store>> {
    open(url, rules, BlobStore::database(), PgOptions::default()).await
}

/// Opens the store a URL names (`sqlite://PATH` or `postgres://...`), deciding every
/// transition with `rules`, keeping new images in `blobs`, and on PostgreSQL with the pool and
/// wake-ups `options` say.
pub async fn open(
    url: &str,
    rules: Rules,
    blobs: BlobStore,
    options: PgOptions,
) -> Result<Arc<dyn Store>> {
    sqlx::any::install_default_drivers();
    let wakeups = Arc::new(Notify::new());
    let blobs = Arc::new(objects::Blobs::new(blobs));
    if url.starts_with("sqlite:") {
        let (writer, reader, dialect, path) = sqlite::open(url).await?;
        let locks = exec::Locks::of(&dialect);
        let file = dialect.file.clone();
        let store = sql::SqlStore::new(
            writer,
            reader,
            Arc::new(dialect),
            rules,
            wakeups,
            Some(sqlite_round::Rounds::start(path, locks, rules)?),
            blobs,
        );
        if let Some(file) = file {
            store.storage.watch_file(file);
        }
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let (pool, dialect) = postgres::open_with(url, wakeups.clone(), &options).await?;
        Ok(Arc::new(sql::SqlStore::new(
            pool.clone(),
            pool,
            Arc::new(dialect),
            rules,
            wakeups,
            None,
            blobs,
        )))
    } else {
        Err(StoreError::Config {
            url: url.to_string(),
            message: "expected sqlite://PATH or postgres://USER@HOST/DATABASE".into(),
        })
    }
}
