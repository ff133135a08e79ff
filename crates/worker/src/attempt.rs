//! One attempt of one job: read its image, classify it on an inference thread within the job
//! timeout while renewing the lease, and report what happened; the store decides what follows
//! with the queue's rules when it stores the outcome.

use crate::inference::{InferenceError, InferencePool};
use crate::runner::Worker;
use crate::signalled;
use bytes::Bytes;
use imgclass_core::{ErrorCode, JobResult, Timings};
use imgclass_store::{Claim, JobError, Lease, Outcome, StoreError};
use std::time::Duration;

/// How long a job waits when its image store does not answer.
const IMAGES_UNAVAILABLE_WAIT: Duration = Duration::from_secs(5);

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
        let Claim {
            job,
            lease,
            image,
            image_store,
        } = claim;
        // The pool as it is now: a reload meanwhile does not take it from this attempt.
        let Some(pool) = self.serving.now().of(&job.model).cloned() else {
            // Claims name only the models this node serves; a job of another can only come
            // from a change of the node's models under it: it goes back for another node.
            let error = JobError {
                code: ErrorCode::Unavailable,
                message: format!("this node does not serve the model {:?}", job.model),
            };
            return Some((
                lease,
                Outcome::Errored {
                    error,
                    retry_after: None,
                },
            ));
        };
        let queue_wait = job
            .started_at
            .map(|s| (s - job.run_at).num_microseconds().unwrap_or(0) as f64 / 1e3)
            .unwrap_or(0.0)
            .max(0.0);
        let read = match (image, image_store) {
            (Some(bytes), _) => Ok(Some(bytes)),
            (None, store) => {
                let sha256 = &job.image_sha256;
                let read = match store {
                    Some(store) => {
                        let size = job.image_size;
                        self.store.read_blob_from(sha256, &store, size).await
                    }
                    None => self.store.read_blob(sha256).await,
                };
                read.map(|b| b.map(Bytes::from))
            }
        };
        let bytes = match read {
            Ok(Some(b)) => b,
            Ok(None) => return Some((lease, Outcome::ImageMissing)),
            Err(e @ StoreError::ImagesUnavailable(_)) => {
                // Not the job's fault: it waits for the store, and the attempt does not count.
                tracing::warn!(error = %e, "cannot read the job's image; the job waits");
                let wait = IMAGES_UNAVAILABLE_WAIT;
                return Some((lease, Outcome::Deferred { wait }));
            }
            Err(e) => {
                // The lease will expire and the job will be picked up again.
                tracing::warn!(error = %e, "cannot read the job's image");
                return None;
            }
        };
        let result = self.classify_leased(&pool, &lease, bytes).await?;
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
                    model: pool.info.clone(),
                    worker: Some(self.name.clone()),
                    timings: Timings {
                        queue_wait_ms: queue_wait,
                        decode_ms: c.decode_ms,
                        inference_ms: c.inference_ms,
                    },
                })
            }
            Err(Failure { error, retry_after }) => {
                tracing::warn!(error = %error.message, attempt = job.run_attempts, "attempt failed");
                Outcome::Errored { error, retry_after }
            }
        };
        Some((lease, outcome))
    }

    /// Classifies on an inference thread within the job timeout, renewing the lease meanwhile
    /// (also while the image waits for a free thread).
    /// `None` when the attempt is to be dropped without an outcome: the lease was lost, or the
    /// worker is shutting down (the job was given back).
    async fn classify_leased(
        &self,
        pool: &InferencePool,
        lease: &Lease,
        bytes: Bytes,
    ) -> Option<Result<imgclass_classifier::Classification, Failure>> {
        let timeout = self.config.job_timeout;
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
}
