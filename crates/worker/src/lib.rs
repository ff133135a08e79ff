//! The background work of a node: the job workers and the webhook deliverer. Each worker
//! ([`runner`]) claims jobs from the queue on the async runtime and runs one attempt at a time
//! ([`attempt`]): decoding and inference happen on one of the process's inference threads
//! ([`inference`]), each owning one classifier session, while the attempt renews the job's
//! lease. [`maintenance`] puts back the jobs of workers that died and prunes old ones;
//! [`faults`] wraps the classifier to fail on purpose (`--inject-failure-rate`). What happens
//! after a failed attempt is decided by `imgclass_core::policy`. The workers count what they do
//! through [`metrics::WorkerMetrics`].
//!
//! [`webhooks`] is the deliverer, which any node runs beside its workers, and [`ssrf`] the guard
//! every webhook call goes through (also the check of a submission's webhook URL).

mod attempt;
mod faults;
mod inference;
mod maintenance;
pub mod metrics;
mod models;
mod runner;
pub mod ssrf;
pub mod webhooks;

pub use maintenance::prune_once;
pub use models::{Served, ServedModel};

use imgclass_classifier::Classifier;
use imgclass_store::{RateLimit, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Builds one classifier per inference thread (called on that thread).
pub type ClassifierFactory =
    Arc<dyn Fn() -> anyhow::Result<Box<dyn Classifier>> + Send + Sync + 'static>;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Number of workers in this process: how many jobs it runs at once.
    pub workers: usize,
    /// Number of inference threads (classifier sessions) the workers share; `None`: one per
    /// worker. Fewer threads than workers lets a worker store its outcome and read its next
    /// image while the threads classify other workers' images.
    pub inference_threads: Option<usize>,
    /// How long a claim is valid without a heartbeat.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub sweep_interval: Duration,
    /// The slowest the queue is polled when no wake-up arrives.
    pub poll_interval: Duration,
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
    /// Finished jobs older than this are deleted (with their unused images); `None` keeps them.
    pub retain: Option<Duration>,
    /// Where the workers count what they do (`/metrics`).
    pub metrics: Option<Arc<dyn metrics::WorkerMetrics>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            workers: 1,
            inference_threads: None,
            lease: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(5),
            node: format!("node-{}", std::process::id()),
            inject_failure_rate: 0.0,
            inject_failure_seed: None,
            rate_limit: None,
            job_timeout: Duration::from_secs(60),
            retain: None,
            metrics: None,
        }
    }
}

impl WorkerConfig {
    /// The number of inference threads: as configured, at most one per worker, at least one.
    pub fn threads(&self) -> usize {
        self.inference_threads
            .unwrap_or(self.workers)
            .clamp(1, self.workers.max(1))
    }
}

/// Running workers; dropping this does not stop them, `shutdown` does.
pub struct Workers {
    /// Stop claiming new jobs.
    stop: watch::Sender<bool>,
    /// Give running jobs back to the queue now.
    abort: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// What the workers serve now (replaced by `reload`).
    serving: models::Serving,
    store: Arc<dyn Store>,
    config: WorkerConfig,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl Workers {
    /// Starts workers that take the jobs of any model through `factory`.
    pub async fn start(
        store: Arc<dyn Store>,
        factory: ClassifierFactory,
        config: WorkerConfig,
    ) -> anyhow::Result<Workers> {
        Self::start_serving(store, Served::Any(factory), config).await
    }

    /// Starts the inference threads of every model served (loading one session each), the
    /// worker loops and the sweeper; announces the models to the other nodes.
    pub async fn start_serving(
        store: Arc<dyn Store>,
        served: Served,
        config: WorkerConfig,
    ) -> anyhow::Result<Workers> {
        let (stop, stop_rx) = watch::channel(false);
        let (abort, abort_rx) = watch::channel(false);
        // Put back what a previous run of this node (or a dead node) left running.
        if let Err(e) = store.rescue_expired().await {
            tracing::warn!(error = %e, "lease sweep failed");
        }
        let pools =
            models::Pools::start(served, config.threads(), |f| wrap(&config, f), None).await?;
        maintenance::announce(&*store, &config.node, &pools.entries).await;
        let serving = models::Serving::new(pools);
        let workers = (0..config.workers.max(1))
            .map(|i| runner::Worker {
                name: format!("{}-w{i}", config.node),
                store: store.clone(),
                serving: serving.clone(),
                config: config.clone(),
                abort: abort_rx.clone(),
            })
            .collect();
        let mut tasks = runner::spawn_pool(
            store.clone(),
            config.clone(),
            serving.clone(),
            workers,
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(maintenance::sweeper(
            store.clone(),
            config.clone(),
            serving.clone(),
            stop_rx.clone(),
        )));
        Ok(Workers {
            stop,
            abort,
            tasks,
            serving,
            store,
            config,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// Serves `served` from now on: the models whose name and version are already loaded keep
    /// their inference threads, new or changed ones are loaded, removed ones are let go once
    /// their running attempts end (an attempt finishes on the version it started with). The
    /// next claim takes the new set's jobs, and it is announced at once. Nothing changes when
    /// loading fails.
    pub async fn reload(&self, served: Served) -> anyhow::Result<()> {
        let _one = self.reloading.lock().await;
        let before = self.serving.now();
        let config = &self.config;
        let pools =
            models::Pools::start(served, config.threads(), |f| wrap(config, f), Some(&before))
                .await?;
        maintenance::announce(&*self.store, &config.node, &pools.entries).await;
        tracing::info!(models = ?pools.names, "models reloaded");
        self.serving.replace(pools);
        Ok(())
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

/// A classifier factory with the configured fault injection.
fn wrap(config: &WorkerConfig, factory: ClassifierFactory) -> ClassifierFactory {
    faults::wrap(
        factory,
        config.inject_failure_rate,
        config.inject_failure_seed,
    )
}

/// Resolves once the flag is set; never when its sender is gone without setting it.
async fn signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}
