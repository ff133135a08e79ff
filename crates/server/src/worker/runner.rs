//! A worker's loop: claim a job when one is due (woken by the store's notification, with a slow
//! poll as the fallback), wait out the rate limit, and run the attempt.

use super::inference::InferenceThread;
use super::{signalled, ClassifierFactory, WorkerConfig};
use chrono::Utc;
use imgclass_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

pub(super) struct Worker {
    pub(super) name: String,
    pub(super) store: Arc<dyn Store>,
    pub(super) thread: InferenceThread,
    pub(super) factory: ClassifierFactory,
    pub(super) config: WorkerConfig,
    /// Set when running jobs are to be given back to the queue at once.
    pub(super) abort: watch::Receiver<bool>,
}

impl Worker {
    /// A worker with its inference thread started (its classifier loaded).
    pub(super) async fn start(
        name: String,
        thread_name: String,
        store: Arc<dyn Store>,
        factory: ClassifierFactory,
        config: WorkerConfig,
        abort: watch::Receiver<bool>,
    ) -> anyhow::Result<Worker> {
        let thread = InferenceThread::start(thread_name, factory.clone()).await?;
        Ok(Worker {
            name,
            store,
            thread,
            factory,
            config,
            abort,
        })
    }

    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let wakeups = self.store.wakeups();
        while !*stop.borrow() {
            // Register for the wake-up before looking, so that a job created in between is not
            // missed until the next poll.
            let notified = wakeups.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let batch = self
                .store
                .claim_limited(&self.name, 1, self.config.lease, self.config.rate_limit)
                .await;
            let claims = match batch {
                Ok(b) if b.claims.is_empty() && b.rate_limited_for.is_some() => {
                    // Jobs stay queued until the rate limit allows another start.
                    let wait = b.rate_limited_for.unwrap_or_default();
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = signalled(&mut stop) => {}
                    }
                    continue;
                }
                Ok(b) => b.claims,
                Err(e) => {
                    tracing::warn!(worker = %self.name, error = %e, "claim failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = signalled(&mut stop) => {}
                    }
                    continue;
                }
            };
            if claims.is_empty() {
                let wait = self.idle_wait().await;
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = signalled(&mut stop) => {}
                }
                continue;
            }
            for claim in claims {
                let span = tracing::info_span!("job", job.id = %claim.job.id, worker = %self.name);
                self.attempt(claim).instrument(span).await;
            }
        }
    }

    /// How long to sleep when the queue has nothing due: until the next delayed job is due, at
    /// most the poll interval.
    async fn idle_wait(&self) -> Duration {
        match self.store.next_due().await {
            Ok(Some(due)) => (due - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(5), self.config.poll_interval),
            _ => self.config.poll_interval,
        }
    }
}
