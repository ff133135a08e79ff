//! The workers: each claims jobs from the queue on the async runtime and hands decoding and
//! inference to its own dedicated OS thread (which owns one classifier session), renewing the
//! job's lease while the thread works. A sweeper puts back the jobs of workers that died.

use chrono::Utc;
use imgclass_classifier::{Cancel, Classification, Classifier, ClassifyError};
use imgclass_core::{ErrorCode, JobResult, Timings};
use imgclass_store::{Claim, JobError, Lease, Outcome, RateLimit, Store};
use rand::Rng;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Builds one classifier per worker thread (called on that thread).
pub type ClassifierFactory =
    Arc<dyn Fn() -> anyhow::Result<Box<dyn Classifier>> + Send + Sync + 'static>;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Number of workers (and inference threads) in this process.
    pub workers: usize,
    /// How long a claim is valid without a heartbeat.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub sweep_interval: Duration,
    /// The slowest the queue is polled when no wake-up arrives.
    pub poll_interval: Duration,
    /// Delay before the first automatic retry; doubles each attempt.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A name for this process in lease tokens and logs.
    pub node: String,
    /// Share (0.0–1.0) of attempts that fail on purpose, to exercise retries and failures.
    pub inject_failure_rate: f64,
    /// Seed for the fault injection's random choices (reproducible runs); random if unset.
    pub inject_failure_seed: Option<u64>,
    /// Global limit on job starts, shared by every worker on the database.
    pub rate_limit: Option<RateLimit>,
    /// An attempt running longer than this is abandoned and counted as failed.
    pub job_timeout: Duration,
    /// Times a job may lose its worker before it fails as stalled.
    pub max_stalls: u32,
    /// Finished jobs older than this are deleted (with their unused images); `None` keeps them.
    pub retain: Option<Duration>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: 1,
            lease: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(5),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            node: format!("node-{}", std::process::id()),
            inject_failure_rate: 0.0,
            inject_failure_seed: None,
            rate_limit: None,
            job_timeout: Duration::from_secs(60),
            max_stalls: imgclass_store::DEFAULT_MAX_STALLS,
            retain: None,
        }
    }
}

type Reply = oneshot::Sender<Result<Classification, ClassifyError>>;

struct InferenceThread {
    tx: std_mpsc::Sender<(Vec<u8>, Cancel, Reply)>,
    info: imgclass_core::ModelInfo,
}

impl InferenceThread {
    /// Starts the thread and waits until its classifier is ready.
    async fn start(name: String, factory: ClassifierFactory) -> anyhow::Result<Self> {
        let (tx, rx) = std_mpsc::channel::<(Vec<u8>, Cancel, Reply)>();
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new().name(name).spawn(move || {
            let mut classifier = match factory() {
                Ok(c) => {
                    let _ = ready_tx.send(Ok(c.info().clone()));
                    c
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok((bytes, cancel, reply)) = rx.recv() {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    classifier.classify_with(&bytes, &cancel)
                }))
                .unwrap_or_else(|_| Err(ClassifyError::Model("the classifier panicked".into())));
                let _ = reply.send(result);
            }
        })?;
        let info = ready_rx
            .await
            .map_err(|_| anyhow::anyhow!("the inference thread stopped while starting"))??;
        Ok(InferenceThread { tx, info })
    }

    /// Classifies on the thread; the thread gives up by itself once `timeout` has passed.
    async fn classify(
        &self,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Classification, ClassifyError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((bytes, Cancel::after(timeout), reply))
            .map_err(|_| ClassifyError::Model("the inference thread is gone".into()))?;
        rx.await
            .map_err(|_| ClassifyError::Model("the inference thread is gone".into()))?
    }
}

/// Running workers; dropping this does not stop them, `shutdown` does.
pub struct Workers {
    /// Stop claiming new jobs.
    stop: watch::Sender<bool>,
    /// Give running jobs back to the queue now.
    abort: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts the inference threads (loading one session each), the worker loops and the sweeper.
    pub async fn start(
        store: Arc<dyn Store>,
        factory: ClassifierFactory,
        config: WorkerConfig,
    ) -> anyhow::Result<Workers> {
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let injector = Arc::new(FaultInjector::new(
            config.inject_failure_rate,
            config.inject_failure_seed,
        ));
        // Put back what a previous run of this node (or a dead node) left running.
        if let Err(e) = store.rescue_expired_with(config.max_stalls).await {
            tracing::warn!(error = %e, "lease sweep failed");
        }
        for i in 0..config.workers.max(1) {
            let thread =
                InferenceThread::start(format!("imgclass-infer-{i}"), factory.clone()).await?;
            let worker = Worker {
                name: format!("{}-w{i}", config.node),
                store: store.clone(),
                thread,
                factory: factory.clone(),
                config: config.clone(),
                injector: injector.clone(),
                abort: abort_rx.clone(),
            };
            let stop_rx = stop_rx.clone();
            tasks.push(tokio::spawn(worker.run(stop_rx)));
        }
        tasks.push(tokio::spawn(sweeper(
            store.clone(),
            config,
            stop_rx.clone(),
        )));
        Ok(Workers { stop, abort, tasks })
    }

    /// Stops claiming, lets running jobs finish within `grace`, then gives the jobs still
    /// running back to the queue. Returns once every worker has stopped.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks;
        let all = futures_util::future::join_all(tasks.iter_mut());
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("shutdown grace period over; giving running jobs back to the queue");
            let _ = self.abort.send(true);
            for t in tasks.into_iter().filter(|t| !t.is_finished()) {
                let _ = t.await;
            }
        }
    }
}

/// Resolves once the flag is set; never when its sender is gone without setting it.
async fn signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Rescues jobs whose worker is gone and, when retention is on, prunes old finished jobs.
async fn sweeper(store: Arc<dyn Store>, config: WorkerConfig, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let prune_every = Duration::from_secs(60);
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signalled(&mut stop) => return,
        }
        match store.rescue_expired_with(config.max_stalls).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "rescued jobs whose worker stopped"),
            Err(e) => tracing::warn!(error = %e, "lease sweep failed"),
        }
        if let Some(retain) = config.retain {
            if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
                last_prune = Some(tokio::time::Instant::now());
                prune_once(&*store, retain).await;
            }
        }
    }
}

/// Deletes what is older than the retention period.
pub async fn prune_once(store: &dyn Store, retain: Duration) {
    let before = Utc::now() - chrono::Duration::from_std(retain).unwrap_or(chrono::Duration::MAX);
    match store.prune(before).await {
        Ok(p) if p.jobs + p.blobs > 0 => {
            tracing::info!(
                jobs = p.jobs,
                images = p.blobs,
                events = p.events,
                "pruned old jobs"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning failed"),
    }
}

/// Decides which attempts fail on purpose (`--inject-failure-rate`).
struct FaultInjector {
    rate: f64,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
}

impl FaultInjector {
    fn new(rate: f64, seed: Option<u64>) -> Self {
        use rand::SeedableRng;
        let rng = match seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        FaultInjector {
            rate: rate.clamp(0.0, 1.0),
            rng: std::sync::Mutex::new(rng),
        }
    }

    /// Whether this attempt is to fail.
    fn strikes(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let draw: f64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        draw < self.rate
    }
}

struct Worker {
    name: String,
    store: Arc<dyn Store>,
    thread: InferenceThread,
    factory: ClassifierFactory,
    config: WorkerConfig,
    injector: Arc<FaultInjector>,
    abort: watch::Receiver<bool>,
}

/// Why an attempt produced no classification.
enum Interrupted {
    Failed(ClassifyError),
    Injected,
    TimedOut,
}

impl Worker {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
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
                self.process(claim).instrument(span).await;
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

    async fn process(&mut self, claim: Claim) {
        let Claim { job, lease } = claim;
        let queue_wait = job
            .started_at
            .map(|s| (s - job.run_at).num_microseconds().unwrap_or(0) as f64 / 1e3)
            .unwrap_or(0.0)
            .max(0.0);
        let bytes = match self.store.read_blob(&job.image_sha256).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                let error = JobError {
                    code: ErrorCode::Internal,
                    message: "the job's image is missing".into(),
                };
                self.finish(&lease, Outcome::Failed(error)).await;
                return;
            }
            Err(e) => {
                // The lease will expire and the job will be picked up again.
                tracing::warn!(error = %e, "cannot read the job's image");
                return;
            }
        };
        let timeout = self.config.job_timeout;
        let result = {
            let injected = self.injector.strikes();
            let thread = &self.thread;
            let work = async {
                if injected {
                    return Err(Interrupted::Injected);
                }
                match tokio::time::timeout(timeout, thread.classify(bytes, timeout)).await {
                    Ok(r) => r.map_err(Interrupted::Failed),
                    Err(_) => Err(Interrupted::TimedOut),
                }
            };
            tokio::pin!(work);
            let mut beat = tokio::time::interval(self.config.lease / 3);
            beat.tick().await;
            let mut abort = self.abort.clone();
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = beat.tick() => {
                        match self.store.heartbeat(&lease, self.config.lease).await {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!("lease lost (the job was canceled, deleted or taken over); dropping this attempt");
                                let _ = (&mut work).await;
                                return;
                            }
                            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                        }
                    }
                    _ = signalled(&mut abort) => {
                        match self.store.release(&lease).await {
                            Ok(_) => tracing::info!("shutting down: job given back to the queue"),
                            Err(e) => tracing::warn!(error = %e, "could not give the job back; its lease will expire"),
                        }
                        return;
                    }
                }
            }
        };
        if matches!(result, Err(Interrupted::TimedOut)) {
            // The stuck thread finishes on its own and exits; this worker gets a fresh one.
            match InferenceThread::start(format!("{}-infer", self.name), self.factory.clone()).await
            {
                Ok(t) => self.thread = t,
                Err(e) => tracing::error!(error = %e, "cannot restart the inference thread"),
            }
        }
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
                    model: self.thread.info.clone(),
                    worker: Some(self.name.clone()),
                    timings: Timings {
                        queue_wait_ms: queue_wait,
                        decode_ms: c.decode_ms,
                        inference_ms: c.inference_ms,
                    },
                })
            }
            Err(e) => {
                let error = match e {
                    Interrupted::Failed(e) => JobError {
                        code: e.code(),
                        message: e.to_string(),
                    },
                    Interrupted::Injected => JobError {
                        code: ErrorCode::InjectedFailure,
                        message: format!(
                            "injected failure: this attempt failed on purpose (--inject-failure-rate {})",
                            self.injector.rate
                        ),
                    },
                    Interrupted::TimedOut => JobError {
                        code: ErrorCode::Timeout,
                        message: format!(
                            "the classification took longer than the job timeout ({} ms) and was abandoned",
                            timeout.as_millis()
                        ),
                    },
                };
                let (code, e) = (error.code, error.message.clone());
                if code.is_retryable() && job.run_attempts < job.max_attempts {
                    let delay = backoff(&self.config, job.run_attempts);
                    tracing::warn!(error = %e, attempt = job.run_attempts, retry_in_ms = delay.as_millis() as u64, "attempt failed; will retry");
                    Outcome::Retry {
                        error,
                        run_at: Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    }
                } else {
                    tracing::warn!(error = %e, attempt = job.run_attempts, "job failed");
                    Outcome::Failed(error)
                }
            }
        };
        self.finish(&lease, outcome).await;
    }

    async fn finish(&self, lease: &Lease, outcome: Outcome) {
        match self.store.finish(lease, outcome).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("lease lost before the result was stored; result dropped"),
            Err(e) => {
                tracing::error!(error = %e, "could not store the job's outcome; its lease will expire and it will run again")
            }
        }
    }
}

/// Exponential backoff with jitter: base * 2^(attempt-1), capped, then scaled by 0.5..1.0.
pub fn backoff(config: &WorkerConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(config.backoff_max);
    capped.mul_f64(rand::rng().random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = WorkerConfig {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            ..WorkerConfig::default()
        };
        for _ in 0..50 {
            let b1 = backoff(&c, 1);
            assert!(b1 >= Duration::from_millis(500) && b1 <= Duration::from_secs(1));
            let b3 = backoff(&c, 3);
            assert!(b3 >= Duration::from_secs(2) && b3 <= Duration::from_secs(4));
            let b9 = backoff(&c, 9);
            assert!(b9 >= Duration::from_secs(5) && b9 <= Duration::from_secs(10));
        }
    }
}
