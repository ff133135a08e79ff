//! The API's view of jobs and events: separate from the stored types so that storage can change
//! without changing what clients see.

use chrono::{DateTime, Utc};
use imgclass_core::{Action, ErrorCode, EventKind, JobResult, JobStatus};
use imgclass_store::{Delivery, DeliveryAttempt, DeliveryStatus, Event, Job};
use serde::Serialize;
use utoipa::ToSchema;

/// A job: one uploaded image, its place in the queue, and once it has run, its result.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job's id (a UUID v7).
    #[schema(format = Uuid)]
    pub id: String,
    pub status: JobStatus,
    /// The uploaded file's name (its last path component), if the client sent one.
    pub file_name: Option<String>,
    pub image: ImageView,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts the job gets before it fails for good (per round; a manual retry starts a new
    /// round).
    pub max_attempts: u32,
    /// Higher runs first among the jobs that are due.
    pub priority: i32,
    pub error: Option<ErrorView>,
    /// The error of each failed attempt, latest first.
    pub attempt_errors: Vec<AttemptErrorView>,
    pub result: Option<JobResult>,
    /// The result was an earlier job's, for the same image and model (the result cache): the
    /// job was created `succeeded` and never ran.
    pub cached: bool,
    /// The model that classifies it (`GET /api/models`: a queued job whose model no node serves
    /// now waits until one does).
    #[schema(example = "efficientnet-lite0")]
    pub model: String,
    /// Why a queued job waits, when the API knows it: `no worker serves the model NAME` while
    /// no node serves its model (it runs once one does). Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    pub created_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// The job's webhook, if it has one.
    pub webhook: Option<WebhookView>,
    pub links: Links,
}

/// A job's webhook, in short; `GET /api/jobs/{id}/deliveries` has each call.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub url: String,
    pub events: Vec<EventKind>,
    pub deliveries: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
}

/// One webhook call of a job and its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` header of every attempt.
    pub id: String,
    pub event: EventKind,
    pub url: String,
    #[schema(value_type = DeliveryStatusSchema)]
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Each attempt, oldest first: its time, the receiver's status code or the error.
    #[schema(value_type = Vec<DeliveryAttemptSchema>)]
    pub attempt_log: Vec<DeliveryAttempt>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A webhook delivery's state (the schema of `imgclass_store::DeliveryStatus`).
#[derive(ToSchema)]
#[schema(as = DeliveryStatus)]
#[allow(dead_code)] // Only describes what the store's type serializes to.
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatusSchema {
    /// Not delivered yet; tried at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: every attempt failed.
    Failed,
    /// The receiver answered `410 Gone`: no more attempts.
    Gone,
}

/// One attempt of a webhook delivery (the schema of `imgclass_store::DeliveryAttempt`).
#[derive(ToSchema)]
#[schema(as = DeliveryAttempt)]
#[allow(dead_code)] // Only describes what the store's type serializes to.
pub struct DeliveryAttemptSchema {
    at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    status_code: Option<u16>,
    /// Why there was no (successful) answer.
    error: Option<String>,
    duration_ms: u64,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id,
            event: d.event,
            url: d.url,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            attempt_log: d.attempt_log,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// An image file's bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)] // Only describes bodies of bytes.
pub struct ImageFile(Vec<u8>);

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageView {
    /// Sniffed from the bytes.
    pub content_type: String,
    /// In bytes.
    pub size: u64,
    pub width: u32,
    pub height: u32,
    /// SHA-256 of the bytes, in hex.
    pub sha256: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorView {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptErrorView {
    pub attempt: u32,
    pub code: ErrorCode,
    pub message: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub image: String,
    /// Present only where a retry is allowed (failed and canceled jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// Present only where a cancel is allowed (queued and running jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        let id = j.id.to_string();
        // Links to the actions the state machine allows from this state, and no others.
        let allowed = |action: Action| j.status.apply(action).is_ok();
        JobView {
            links: Links {
                this: format!("/api/jobs/{id}"),
                image: format!("/api/jobs/{id}/image"),
                retry: allowed(Action::Retry).then(|| format!("/api/jobs/{id}/retry")),
                cancel: allowed(Action::Cancel).then(|| format!("/api/jobs/{id}/cancel")),
            },
            id,
            status: j.status,
            file_name: j.file_name,
            image: ImageView {
                content_type: j.content_type,
                size: j.image_size,
                width: j.width,
                height: j.height,
                sha256: j.image_sha256,
            },
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            priority: j.priority,
            error: j.error.map(|e| ErrorView {
                code: e.code,
                message: e.message,
            }),
            attempt_errors: j
                .attempt_errors
                .into_iter()
                .rev()
                .map(|e| AttemptErrorView {
                    attempt: e.attempt,
                    code: e.code,
                    message: e.message,
                    at: e.at,
                })
                .collect(),
            result: j.result,
            cached: j.cached,
            model: j.model.clone(),
            waiting: None,
            created_at: j.created_at,
            run_at: j.run_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            updated_at: j.updated_at,
            webhook: j.webhook.map(|w| WebhookView {
                url: w.url,
                events: w.events,
                deliveries: format!("/api/jobs/{}/deliveries", j.id),
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobsCreated {
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    pub next_cursor: Option<String>,
    /// How many jobs match the query's filters, on every page together.
    pub total: u64,
}

/// What a bulk action did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkCount {
    /// The jobs it changed (or deleted).
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RetriedJobs {
    pub count: usize,
    pub jobs: Vec<JobView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsView {
    pub counts: StatusCounts,
    /// Age of the oldest queued job, in seconds (null when nothing is queued).
    pub oldest_queued_age_s: Option<f64>,
    /// Jobs that ended in the last minute, however they ended: succeeded, failed or canceled
    /// (`finished_last_minute_by` splits it).
    pub finished_last_minute: u64,
    /// The jobs of `finished_last_minute` by how they ended.
    pub finished_last_minute_by: FinishedCounts,
    /// Jobs that ended in each of the last 10 minutes, oldest first; the last entry is the
    /// minute ending now (`finished_last_minute_by`).
    pub finished_per_minute: Vec<FinishedCounts>,
    pub rate_limit: Option<RateLimitView>,
}

/// Finished jobs by how they ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct FinishedCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
}

impl From<imgclass_store::FinishedCounts> for FinishedCounts {
    fn from(c: imgclass_store::FinishedCounts) -> Self {
        FinishedCounts {
            succeeded: c.succeeded,
            failed: c.failed,
            canceled: c.canceled,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusCounts {
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimitView {
    pub jobs: u32,
    pub per_s: f64,
    /// Starts still allowed in the current window.
    pub remaining: u32,
    /// When none is left: seconds until the next start is allowed (null while starts remain).
    pub next_start_in_s: Option<f64>,
}

impl StatsView {
    pub fn new(s: imgclass_store::QueueStats, rate: Option<imgclass_store::RateLimit>) -> Self {
        StatsView {
            counts: StatusCounts {
                queued: s.queued,
                running: s.running,
                succeeded: s.succeeded,
                failed: s.failed,
                canceled: s.canceled,
            },
            oldest_queued_age_s: s
                .oldest_queued_at
                .map(|t| ((Utc::now() - t).num_milliseconds().max(0) as f64) / 1e3),
            finished_last_minute: s.finished_last_minute,
            finished_last_minute_by: s.finished_last_minute_by.into(),
            finished_per_minute: s.finished_per_minute.into_iter().map(Into::into).collect(),
            rate_limit: rate.map(|r| RateLimitView {
                jobs: r.jobs,
                per_s: r.per.as_secs_f64(),
                remaining: s.rate_limit_remaining.unwrap_or(r.jobs),
                next_start_in_s: s
                    .rate_limit_next_start_at
                    .map(|t| ((t - Utc::now()).num_milliseconds().max(0) as f64) / 1e3),
            }),
        }
    }
}

/// One server-sent event's data.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub seq: i64,
    pub kind: EventKind,
    pub job_id: String,
    pub status: Option<JobStatus>,
    pub at: DateTime<Utc>,
    /// The job right after the change; absent once it is deleted.
    pub job: Option<JobView>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> Self {
        EventView {
            seq: e.seq,
            kind: e.kind,
            job_id: e.job_id.to_string(),
            status: e.status,
            at: e.at,
            job: e.job.map(JobView::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: JobStatus) -> Job {
        let now = Utc::now();
        Job {
            seq: 1,
            id: imgclass_core::JobId::new(),
            status,
            image_sha256: "0".repeat(64),
            content_type: "image/png".into(),
            image_size: 1,
            width: 1,
            height: 1,
            file_name: None,
            attempts: 0,
            stalls: 0,
            run_attempts: 0,
            max_attempts: 3,
            priority: 0,
            owner: None,
            webhook: None,
            cached: false,
            model: imgclass_core::BUILTIN_MODEL.into(),
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
        }
    }

    #[test]
    fn links_offer_only_the_actions_the_state_allows() {
        let links = |status| {
            let v = serde_json::to_value(JobView::from(job(status))).unwrap();
            let links = v["links"].as_object().unwrap().clone();
            (links.contains_key("retry"), links.contains_key("cancel"))
        };
        assert_eq!(links(JobStatus::Queued), (false, true));
        assert_eq!(links(JobStatus::Running), (false, true));
        assert_eq!(links(JobStatus::Succeeded), (false, false));
        assert_eq!(links(JobStatus::Failed), (true, false));
        assert_eq!(links(JobStatus::Canceled), (true, false));
    }
}
