//! What the workers report to be counted ([`WorkerMetrics`], implemented by the service's
//! metrics), and what an attempt's end reports ([`AttemptEnded`]).

use imgclass_core::{ErrorCode, JobStatus};
use imgclass_store::Outcome;
use std::time::Duration;

/// Where the workers count what they do (`/metrics`).
pub trait WorkerMetrics: std::fmt::Debug + Send + Sync {
    /// An attempt's outcome was stored and left its job `status` (queued again: retried).
    fn attempt_ended(&self, ended: &AttemptEnded, status: JobStatus);
    /// A claim took `n` jobs.
    fn claimed(&self, n: usize);
    /// The workers wait `wait` for the global rate limit.
    fn rate_limited(&self, wait: Duration);
}

/// What the metrics count of an attempt, taken before its outcome goes to the store.
#[derive(Debug, Clone)]
pub struct AttemptEnded {
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// From when the job was due to when it started.
    pub queue_wait: Option<chrono::Duration>,
    /// Decode and inference time of a result.
    pub timings_ms: Option<(f64, f64)>,
    pub error: Option<ErrorCode>,
    /// The job's model.
    pub model: String,
}

impl AttemptEnded {
    pub fn of(
        created_at: chrono::DateTime<chrono::Utc>,
        queue_wait: Option<chrono::Duration>,
        model: String,
        outcome: &Outcome,
    ) -> Self {
        let (timings_ms, error) = match outcome {
            Outcome::Succeeded(r) => (Some((r.timings.decode_ms, r.timings.inference_ms)), None),
            Outcome::Errored { error, .. } => (None, Some(error.code)),
            Outcome::ImageMissing => (None, Some(ErrorCode::Internal)),
            Outcome::Deferred { .. } => (None, Some(ErrorCode::Unavailable)),
        };
        AttemptEnded {
            created_at,
            queue_wait,
            timings_ms,
            error,
            model,
        }
    }
}
