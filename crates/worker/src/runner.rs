//! The claim loop of a worker pool and its workers. One driver per process does the queue's
//! side in rounds, each round one transaction (`Store::finish_and_claim`): it stores the
//! outcomes the workers have handed back since the last round and claims as many due jobs as
//! there are idle workers (woken by the store's notification, with a slow poll as the
//! fallback), so a busy pool spends one commit on many jobs. The workers run attempts; a
//! worker is given a job only when it is idle, so nothing claimed waits in a buffer.

use crate::metrics::AttemptEnded;
use crate::models::Serving;
use crate::{signalled, WorkerConfig};
use chrono::Utc;
use imgclass_store::{Claim, Lease, Outcome, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// The longest a finished worker's outcome waits for other workers' to share its round.
const LINGER: Duration = Duration::from_millis(2);

/// The longest it waits while every inference thread is busy and an image waits for a thread
/// (`Pools::saturated`): then no thread can go idle before the next worker finishes.
const LINGER_SATURATED: Duration = Duration::from_millis(25);

pub(super) struct Worker {
    pub(super) name: String,
    pub(super) store: Arc<dyn Store>,
    /// What the node serves: the inference threads per model, shared by its workers.
    pub(super) serving: Serving,
    pub(super) config: WorkerConfig,
    /// Set when running jobs are to be given back to the queue at once.
    pub(super) abort: watch::Receiver<bool>,
}

/// A worker's report to the driver: it is idle again, with the outcome to store (none when
/// the attempt ended without one: lease lost, or the job given back) and what the metrics
/// count of it once it is stored.
struct Done {
    worker: usize,
    outcome: Option<(Lease, Outcome, AttemptEnded)>,
}

impl Worker {
    /// Runs the jobs the driver hands over until the driver stops.
    async fn run(self, index: usize, mut jobs: mpsc::Receiver<Claim>, done: mpsc::Sender<Done>) {
        while let Some(claim) = jobs.recv().await {
            let span = tracing::info_span!("job", job.id = %claim.job.id, worker = %self.name, node = %self.config.node);
            let (created_at, waited, model) = (
                claim.job.created_at,
                claim.job.started_at.map(|s| s - claim.job.run_at),
                claim.job.model.clone(),
            );
            let outcome = self
                .attempt(claim)
                .instrument(span)
                .await
                .map(|(lease, o)| {
                    let ended = AttemptEnded::of(created_at, waited, model, &o);
                    (lease, o, ended)
                });
            if done
                .send(Done {
                    worker: index,
                    outcome,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Starts the workers and the driver that feeds them; the returned task ends when `stop` is
/// set and every worker has handed back its last job.
pub(super) fn spawn_pool(
    store: Arc<dyn Store>,
    config: WorkerConfig,
    serving: Serving,
    workers: Vec<Worker>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (done_tx, done_rx) = mpsc::channel(workers.len().max(1) * 2);
    let mut tasks = Vec::new();
    let mut to_workers = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(1);
        to_workers.push(tx);
        tasks.push(tokio::spawn(w.run(i, rx, done_tx.clone())));
    }
    drop(done_tx);
    let driver = Driver {
        store,
        name: format!("{}-pool", config.node),
        config,
        serving,
        idle: (0..to_workers.len()).rev().collect(),
        to_workers,
        done: done_rx,
        finished: Vec::new(),
        ended: Vec::new(),
    };
    tasks.push(tokio::spawn(driver.run(stop)));
    tasks
}

struct Driver {
    store: Arc<dyn Store>,
    /// What the node serves: the models whose jobs it claims.
    serving: Serving,
    name: String,
    config: WorkerConfig,
    /// Workers with nothing to do.
    idle: Vec<usize>,
    to_workers: Vec<mpsc::Sender<Claim>>,
    done: mpsc::Receiver<Done>,
    /// Outcomes handed back and not stored yet, and what the metrics count of each.
    finished: Vec<(Lease, Outcome)>,
    ended: Vec<AttemptEnded>,
}

impl Driver {
    fn take(&mut self, d: Done) {
        self.idle.push(d.worker);
        if let Some((lease, outcome, ended)) = d.outcome {
            self.finished.push((lease, outcome));
            self.ended.push(ended);
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let wakeups = self.store.wakeups();
        // Registered at all times (re-armed each time it fires), so that a job created while a
        // round runs is not missed until the next poll.
        let mut notified = Box::pin(wakeups.notified());
        notified.as_mut().enable();
        // When the next claim may be tried (after an empty queue, a rate limit or an error).
        let mut next_claim = tokio::time::Instant::now();
        loop {
            while let Ok(d) = self.done.try_recv() {
                self.take(d);
            }
            let stopping = *stop.borrow();
            if stopping && self.idle.len() == self.to_workers.len() && self.finished.is_empty() {
                // Every worker handed back its last job: closing their channels ends them.
                return;
            }
            let may_claim = !stopping && !self.idle.is_empty();
            let claim_due = may_claim && tokio::time::Instant::now() >= next_claim;
            if self.finished.is_empty() && !claim_due {
                // Nothing to do until a worker reports, a job may have arrived, or time passes.
                tokio::select! {
                    d = self.done.recv() => match d {
                        Some(d) => {
                            self.take(d);
                            if !self.linger().await {
                                return;
                            }
                        }
                        None => return,
                    },
                    _ = notified.as_mut(), if may_claim => {
                        next_claim = tokio::time::Instant::now();
                        notified.set(wakeups.notified());
                        notified.as_mut().enable();
                    }
                    _ = tokio::time::sleep_until(next_claim), if may_claim => {}
                    _ = signalled(&mut stop), if !stopping => {}
                }
                continue;
            }
            let limit = if claim_due { self.idle.len() } else { 0 };
            let finishes = std::mem::take(&mut self.finished);
            let serving = self.serving.now();
            let ended = std::mem::take(&mut self.ended);
            let count = finishes.len();
            let round = self
                .store
                .finish_and_claim(
                    finishes,
                    &self.name,
                    limit,
                    self.config.lease,
                    self.config.rate_limit,
                    serving.names.as_deref(),
                )
                .await;
            match round {
                Ok((stored, batch)) => {
                    let fenced = stored.iter().filter(|s| s.is_none()).count();
                    if let Some(m) = &self.config.metrics {
                        for (status, ended) in stored.iter().zip(&ended) {
                            if let Some(status) = status {
                                m.attempt_ended(ended, *status);
                            }
                        }
                    }
                    if fenced > 0 {
                        tracing::warn!(
                            jobs = fenced,
                            "lease lost before the result was stored; result dropped"
                        );
                    }
                    if let (Some(m), true) = (&self.config.metrics, limit > 0) {
                        match batch.rate_limited_for {
                            Some(wait) => m.rate_limited(wait),
                            None if !batch.claims.is_empty() => m.claimed(batch.claims.len()),
                            None => {}
                        }
                    }
                    if let Some(wait) = batch.rate_limited_for {
                        // Jobs stay queued until the rate limit allows another start.
                        next_claim = tokio::time::Instant::now() + wait;
                    } else if limit > 0 && batch.claims.is_empty() {
                        // Nothing due: look again when woken, when the next delayed job is due,
                        // or at the next poll.
                        next_claim = tokio::time::Instant::now() + self.idle_wait().await;
                    }
                    for claim in batch.claims {
                        let Some(worker) = self.idle.pop() else { break };
                        if let Err(e) = self.to_workers[worker].send(claim).await {
                            // The worker is gone; its job's lease will expire.
                            tracing::error!(job.id = %e.0.job.id, "a worker stopped; its job will be rescued");
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = count, "could not store outcomes or claim; their leases will expire and they will run again");
                    next_claim = tokio::time::Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }

    /// Workers that finish close together report before the round, so that one transaction
    /// stores them all (and claims their next jobs): waits up to `LINGER` while other workers
    /// are still busy, and up to `LINGER_SATURATED` while every inference thread is busy and an
    /// image waits for one (a busy pool's rounds then store two or more jobs each, not one, and
    /// no thread waits for the round: the round runs once the last waiting image has a thread).
    /// Checked again at each report: a worker leaves the inference count before it reports.
    /// False when the workers are gone.
    async fn linger(&mut self) -> bool {
        let start = tokio::time::Instant::now();
        while self.idle.len() < self.to_workers.len() {
            let longest = if self.serving.now().saturated() {
                LINGER_SATURATED
            } else {
                LINGER
            };
            let until = start + longest;
            if tokio::time::Instant::now() >= until {
                break;
            }
            tokio::select! {
                d = self.done.recv() => match d {
                    Some(d) => self.take(d),
                    None => return false,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        true
    }

    /// How long to wait when the queue has nothing due: until the next delayed job is due, at
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
