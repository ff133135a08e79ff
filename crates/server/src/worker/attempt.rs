//! One attempt of one job: read its image, classify it on an inference thread within the job
//! timeout while renewing the lease, and store the outcome the queue's rules decide.

use super::inference::InferenceError;
use super::runner::Worker;
use super::signalled;
use chrono::Utc;
use imgclass_core::policy::{self, Happened};
use imgclass_core::{ErrorCode, JobResult, JobStatus, Timings};
use imgclass_store::{Claim, Job, JobError, Lease, Outcome};
use rand::Rng;
use std::time::Duration;

/// A failed attempt: its error, and the wait the failing party asked for (`Retry-After`).
struct Failure {
    error: JobError,
    retry_after: Option<Duration>,
}

impl Worker {
    /// Runs one attempt; the outcome to store, or `None` when the attempt ends without one (the
    /// lease was lost, the job was given back, or its image could not be read: then its lease
    /// expires and it runs again).
    pub(super) async fn attempt(&self, claim: Claim) -> Option<(Lease, Outcome)> {
        let Claim { job, lease, image } = claim;
        let queue_wait = job
            .started_at
            .map(|s| (s - job.run_at).num_microseconds().unwrap_or(0) as f64 / 1e3)
            .unwrap_or(0.0)
            .max(0.0);
        let read = match image {
            Some(bytes) => Ok(Some(bytes)),
            None => self.store.read_blob(&job.image_sha256).await,
        };
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => {
                let error = JobError {
                    code: ErrorCode::Internal,
                    message: "the job's image is missing".into(),
                };
                return Some((lease, Outcome::Failed(error)));
            }
            Err(e) => {
                // The lease will expire and the job will be picked up again.
                tracing::warn!(error = %e, "cannot read the job's image");
                return None;
            }
        };
        let result = self.classify_leased(&lease, bytes).await?;
        let outcome = match result {
            Ok(c) => {
                tracing::info!(
                    top.label = %c.predictions.first().map(|p| p.label.as_str()).unwrap_or(""),
                    decode_ms = c.decode_ms,
                    inference_ms = c.inference_ms,
                    "job succeeded"
                );
                Outcome::Succeeded(JobResult {
                    predictions: c.predictions,
                    model: self.pool.info.clone(),
                    worker: Some(self.name.clone()),
                    timings: Timings {
                        queue_wait_ms: queue_wait,
                        decode_ms: c.decode_ms,
                        inference_ms: c.inference_ms,
                    },
                })
            }
            Err(failure) => self.after_error(&job, failure),
        };
        Some((lease, outcome))
    }

    /// Classifies on an inference thread within the job timeout, renewing the lease meanwhile
    /// (also while the image waits for a free thread).
    /// `None` when the attempt is to be dropped without an outcome: the lease was lost, or the
    /// worker is shutting down (the job was given back).
    async fn classify_leased(
        &self,
        lease: &Lease,
        bytes: Vec<u8>,
    ) -> Option<Result<imgclass_classifier::Classification, Failure>> {
        let timeout = self.config.job_timeout;
        let pool = &self.pool;
        let work = async {
            pool.classify(bytes, timeout).await.map_err(|e| match e {
                InferenceError::Classify(e) => Failure {
                    retry_after: e.retry_after(),
                    error: JobError {
                        code: e.code(),
                        message: e.to_string(),
                    },
                },
                InferenceError::TimedOut => Failure {
                    retry_after: None,
                    error: JobError {
                        code: ErrorCode::Timeout,
                        message: format!(
                            "the classification took longer than the job timeout ({} ms) and was abandoned",
                            timeout.as_millis()
                        ),
                    },
                },
            })
        };
        tokio::pin!(work);
        let mut beat = tokio::time::interval(self.config.lease / 3);
        beat.tick().await;
        let mut abort = self.abort.clone();
        loop {
            tokio::select! {
                r = &mut work => return Some(r),
                _ = beat.tick() => {
                    match self.store.heartbeat(lease, self.config.lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("lease lost (the job was canceled, deleted or taken over); dropping this attempt");
                            let _ = (&mut work).await;
                            return None;
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                }
                _ = signalled(&mut abort) => {
                    match self.store.release(lease).await {
                        Ok(_) => tracing::info!("shutting down: job given back to the queue"),
                        Err(e) => tracing::warn!(error = %e, "could not give the job back; its lease will expire"),
                    }
                    return None;
                }
            }
        }
    }

    /// What follows a failed attempt, as the queue's rules decide: another attempt after a
    /// backoff (or the longer wait the failing party asked for), or the end of the job.
    fn after_error(&self, job: &Job, failure: Failure) -> Outcome {
        let Failure { error, retry_after } = failure;
        let happened = Happened::Errored {
            code: error.code,
            retry_after,
        };
        let jitter = rand::rng().random_range(0.5..=1.0);
        let decision = policy::decide(&self.config.rules(), job.counters(), happened, jitter);
        match decision {
            Ok(d) if d.to == JobStatus::Queued => {
                let delay = d.run_in.unwrap_or_default();
                tracing::warn!(error = %error.message, attempt = job.run_attempts, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                Outcome::Retry {
                    error,
                    run_at: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                }
            }
            _ => {
                tracing::warn!(error = %error.message, attempt = job.run_attempts, "job failed");
                Outcome::Failed(error)
            }
        }
    }
}
