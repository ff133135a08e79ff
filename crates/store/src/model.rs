//! The stored types: what the database holds, as opposed to what the API shows.

use chrono::{DateTime, Utc};
use imgclass_core::{ErrorCode, EventKind, JobId, JobResult, JobStatus};
use serde::{Deserialize, Serialize};

/// An image and its job, to be stored together.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub image: bytes::Bytes,
    pub sha256: String,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub file_name: Option<String>,
    pub max_attempts: u32,
    /// Higher runs first among the jobs that are due.
    pub priority: i32,
    /// The id of the API token that created the job (`None` when the API is open).
    pub owner: Option<String>,
    /// Where to announce the job's changes.
    pub webhook: Option<Webhook>,
    /// An earlier job's result for the same image and model: the job is created `succeeded`
    /// with it (`cached`), and never queued.
    pub cached_result: Option<JobResult>,
    /// The name of the model that classifies it.
    pub model: String,
}

impl Default for NewJob {
    /// An empty image for the built-in model, one attempt.
    fn default() -> Self {
        NewJob {
            image: bytes::Bytes::new(),
            sha256: String::new(),
            content_type: String::new(),
            width: 0,
            height: 0,
            file_name: None,
            max_attempts: 1,
            priority: 0,
            owner: None,
            webhook: None,
            cached_result: None,
            model: builtin_model(),
        }
    }
}

/// A job's webhook: the URL called, and for which of the job's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// Any of `running`, `succeeded`, `failed`, `canceled`.
    pub events: Vec<EventKind>,
}

impl Webhook {
    /// The events a webhook may be called for.
    pub const EVENTS: [EventKind; 4] = [
        EventKind::Running,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Canceled,
    ];

    /// The events called for when a submission names none: the job's end.
    pub const DEFAULT_EVENTS: [EventKind; 3] =
        [EventKind::Succeeded, EventKind::Failed, EventKind::Canceled];

    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }
}

/// An error recorded on a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

/// The error of one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: u32,
    pub code: ErrorCode,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// A job as stored (also the payload of its webhook deliveries, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub seq: i64,
    pub id: JobId,
    pub status: JobStatus,
    pub image_sha256: String,
    pub content_type: String,
    pub image_size: u64,
    pub width: u32,
    pub height: u32,
    pub file_name: Option<String>,
    pub attempts: u32,
    /// Times the job's worker was lost while running it.
    pub stalls: u32,
    /// Attempts since the job was created or last retried by hand; bounded by `max_attempts`.
    pub run_attempts: u32,
    pub max_attempts: u32,
    /// Higher runs first among the jobs that are due.
    pub priority: i32,
    pub run_at: DateTime<Utc>,
    /// The token of the lease a running job is under (its worker's right to finish it).
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub error: Option<JobError>,
    pub attempt_errors: Vec<AttemptError>,
    pub result: Option<JobResult>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The id of the API token that created the job.
    pub owner: Option<String>,
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// Answered from the result cache when it was created.
    #[serde(default)]
    pub cached: bool,
    /// The name of the model that classifies it (only workers that hold it claim it).
    #[serde(default = "builtin_model")]
    pub model: String,
}

fn builtin_model() -> String {
    imgclass_core::BUILTIN_MODEL.to_string()
}

/// A filter and page request for listing jobs.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    /// Only the jobs of this token.
    pub owner: Option<String>,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
    pub limit: usize,
}

/// Which jobs a search, a count, an export or a bulk action takes: every condition given must
/// hold (none given: every job).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    /// Only the jobs of this token.
    pub owner: Option<String>,
    /// The file name contains this text (case-insensitive).
    pub name: Option<String>,
    /// The top label (the most probable one) contains this text (case-insensitive).
    pub label: Option<String>,
    /// The job's error has this code.
    pub error_code: Option<ErrorCode>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Created before this time.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

/// A stored image.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub bytes: Vec<u8>,
    pub content_type: String,
    pub sha256: String,
}

/// The right to finish one attempt of one job: only the holder of the current lease may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub job_id: JobId,
    pub token: String,
}

/// A job taken from the queue.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: Job,
    pub lease: Lease,
    /// The image's bytes when the claim read them with the job (images of at most
    /// [`INLINE_IMAGE_MAX`](crate::INLINE_IMAGE_MAX) bytes); otherwise `None`, and the worker
    /// reads them: from `image_store` when it names one, else with
    /// [`Store::read_blob`](crate::Store::read_blob).
    pub image: Option<bytes::Bytes>,
    /// The object store that holds the image, as its row named it at the claim (`None`: the
    /// database): the worker reads it there without reading the row again
    /// ([`Store::read_blob_from`](crate::Store::read_blob_from)).
    pub image_store: Option<String>,
}

/// How an attempt ended, as its worker saw it; what follows is the policy's decision, taken
/// by the store when it stores the outcome.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded(JobResult),
    /// The attempt failed; `retry_after` is a wait the failing party asked for.
    Errored {
        error: JobError,
        retry_after: Option<std::time::Duration>,
    },
    /// The job's image is no longer stored.
    ImageMissing,
    /// The attempt could not start for a reason that is not the job's (its image store did not
    /// answer): the job waits `wait`, and the attempt does not count.
    Deferred {
        wait: std::time::Duration,
    },
}

/// At most `jobs` job starts in any window of `per`, across every worker on the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub jobs: u32,
    pub per: std::time::Duration,
}

/// What a claim under a rate limit got.
#[derive(Debug, Clone, Default)]
pub struct ClaimBatch {
    pub claims: Vec<Claim>,
    /// When no start was allowed: how long until the next one is.
    pub rate_limited_for: Option<std::time::Duration>,
}

/// Queue statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
    /// Creation time of the oldest queued job.
    pub oldest_queued_at: Option<DateTime<Utc>>,
    /// Jobs that ended (succeeded, failed or canceled) in the last minute.
    pub finished_last_minute: u64,
    /// The same jobs by how they ended.
    pub finished_last_minute_by: FinishedCounts,
    /// Jobs that ended in each of the last [`QueueStats::MINUTES`] minutes, oldest first (the
    /// last one is `finished_last_minute_by`).
    pub finished_per_minute: Vec<FinishedCounts>,
    /// Job starts the rate limit still allows in the current window (if a limit is given).
    pub rate_limit_remaining: Option<u32>,
    /// When none is left: when the rate limit allows the next start.
    pub rate_limit_next_start_at: Option<DateTime<Utc>>,
}

impl QueueStats {
    /// Minutes of `finished_per_minute`.
    pub const MINUTES: usize = 10;
}

/// The figures of an empty queue.
impl Default for QueueStats {
    fn default() -> Self {
        QueueStats {
            queued: 0,
            running: 0,
            succeeded: 0,
            failed: 0,
            canceled: 0,
            oldest_queued_at: None,
            finished_last_minute: 0,
            finished_last_minute_by: FinishedCounts::default(),
            finished_per_minute: vec![FinishedCounts::default(); Self::MINUTES],
            rate_limit_remaining: None,
            rate_limit_next_start_at: None,
        }
    }
}

/// Finished jobs by how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FinishedCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
}

impl FinishedCounts {
    pub fn total(&self) -> u64 {
        self.succeeded + self.failed + self.canceled
    }

    pub(crate) fn add(&mut self, status: JobStatus, n: u64) {
        match status {
            JobStatus::Succeeded => self.succeeded += n,
            JobStatus::Failed => self.failed += n,
            JobStatus::Canceled => self.canceled += n,
            JobStatus::Queued | JobStatus::Running => {}
        }
    }
}

/// Which jobs `retry_failed` takes.
#[derive(Debug, Clone, Default)]
pub struct RetryFilter {
    /// Only jobs whose last error has this code.
    pub error_code: Option<ErrorCode>,
    /// Only the jobs of this token.
    pub owner: Option<String>,
}

/// What `prune` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub blobs: u64,
    pub events: u64,
}

/// A recorded change of a job.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub job_id: JobId,
    pub kind: EventKind,
    pub status: Option<JobStatus>,
    pub at: DateTime<Utc>,
    /// The job as it was right after the change (`None` once deleted).
    pub job: Option<Job>,
    /// The job's owner (kept on the event, so that it is known after a delete too).
    pub owner: Option<String>,
}

impl Job {
    /// What the queue's rules look at.
    pub fn counters(&self) -> imgclass_core::policy::Counters {
        imgclass_core::policy::Counters {
            status: self.status,
            run_attempts: self.run_attempts,
            max_attempts: self.max_attempts,
            stalls: self.stalls,
        }
    }
}

/// Encodes a list cursor (the position after which the next page starts).
pub(crate) fn encode_cursor(seq: i64) -> String {
    format!("j{seq}")
}

/// Only what `encode_cursor` writes: `j` and a positive number without sign or leading zero.
pub(crate) fn decode_cursor(cursor: &str) -> Option<i64> {
    let digits = cursor.strip_prefix('j')?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|v| *v > 0)
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<String, crate::StoreError> {
    serde_json::to_string(v).map_err(|e| crate::StoreError::Database(e.to_string()))
}

/// An `Idempotency-Key` as one request uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Whose key it is: the API token's id, or empty when the API is open.
    pub scope: String,
    pub key: String,
    /// A digest of what the request asks for (its files and fields), to tell a retry of the
    /// same request from another request that reuses the key.
    pub fingerprint: String,
}

/// A key held by the request that is creating its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHold {
    pub key: IdempotencyKey,
    /// This request's mark on the key; only it may complete the key.
    pub holder: String,
}

/// What became of a request's claim on its `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is this request's: create the jobs with it (`create_jobs_keyed`), or give it
    /// back (`release_idempotency_key`).
    Held(KeyHold),
    /// The key's first request created these jobs: answer with them.
    Replay(Vec<JobId>),
    /// The key was first used with a different request.
    Mismatch,
    /// The key's first request is still being processed; its hold lapses at `until`.
    InUse { until: DateTime<Utc> },
}

/// What a node serves of a model, as it announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub name: String,
    /// A digest of the model's file.
    pub version: String,
    /// Its input and output, as JSON.
    pub spec: serde_json::Value,
    /// How many labels its output has.
    pub labels: u32,
}

/// A model some node has announced, and the nodes that serve it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub entry: ModelEntry,
    pub updated_at: DateTime<Utc>,
    /// The nodes that announced it within the liveness window, with the version each holds.
    pub nodes: Vec<ModelNode>,
}

/// A node that serves a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelNode {
    pub node: String,
    pub version: String,
    pub seen_at: DateTime<Utc>,
}
