//! What `serve` and `worker` share when a node starts and stops: this node's name, the database,
//! the webhook settings and deliverer, the metrics server, the classifier and its workers, and
//! the wait for SIGTERM/SIGINT.

use crate::args::{DatabaseArgs, ProviderArg, WebhookArgs, WorkArgs};
use anyhow::{Context, Result};
use imgclass_classifier::{
    Classifier, ImaggaClassifier, Model, ModelRepository, NoopClassifier, Resize,
};
use imgclass_core::policy::Rules;
use imgclass_server::api::views::JobView;
use imgclass_server::metrics::Metrics;
use imgclass_server::ops::ModelErrors;
use imgclass_store::Store;
use imgclass_store::{BlobObserver, BlobStore, ModelEntry, PgOptions};
use imgclass_worker::metrics::WorkerMetrics;
use imgclass_worker::webhooks::{Deliverer, WebhookConfig};
use imgclass_worker::{ClassifierFactory, Served, ServedModel, WorkerConfig, Workers};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// This process's name in lease tokens, metrics and logs.
pub fn node_name() -> String {
    format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into()),
        std::process::id()
    )
}

/// The cores this process may use (1 when that cannot be known).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The pool of an API node (`serve`) on PostgreSQL unless --db-max-connections says: its
/// requests read the database beside the group commit and the event log; a worker node
/// (`PgOptions::DEFAULT_MAX_CONNECTIONS`) needs fewer.
const API_NODE_CONNECTIONS: u32 = 8;

/// Opens the database and brings it up to date (a short-lived command: it does not follow the
/// event log).
pub async fn open_store(db: &DatabaseArgs) -> Result<Arc<dyn Store>> {
    let options = db.pg_options(PgOptions::DEFAULT_MAX_CONNECTIONS, false);
    open_store_with(db, Rules::default(), options, true, None).await
}

/// Opens the database, deciding with `rules`, with new images in the configured store (its
/// operations reported to `observer`), and brings it up to date when `migrate`.
async fn open_store_with(
    db: &DatabaseArgs,
    rules: Rules,
    options: PgOptions,
    migrate: bool,
    observer: Option<Arc<dyn BlobObserver>>,
) -> Result<Arc<dyn Store>> {
    let url = db.blob_store_url();
    let blobs = BlobStore::open(&url, observer)
        .with_context(|| format!("cannot open the image store {url}"))?;
    let store = imgclass_store::open(&db.database, rules, blobs, options)
        .await
        .with_context(|| format!("cannot open the database {}", db.shown()))?;
    if migrate {
        store.migrate().await?;
    }
    Ok(store)
}

/// What a node opens before it starts anything: the database, the webhook settings (checked)
/// and the metrics, served on their own address when `--metrics-listen` asks for it.
pub struct Node {
    pub store: Arc<dyn Store>,
    pub webhooks: Option<WebhookConfig>,
    pub metrics: Arc<Metrics>,
}

impl Node {
    /// Opens the node's database: `api` for a node that serves the HTTP API, which follows
    /// the event log (so does one that delivers webhooks); a worker-only node does not.
    pub async fn open(db: &DatabaseArgs, work: &WorkArgs, api: bool) -> Result<Node> {
        work.limits.init_memory_budget();
        let webhooks = webhook_config(&work.webhooks)?;
        let options = if api {
            db.pg_options(API_NODE_CONNECTIONS, true)
        } else {
            db.pg_options(PgOptions::DEFAULT_MAX_CONNECTIONS, webhooks.is_some())
        };
        let metrics = Arc::new(Metrics::new());
        let observer: Arc<dyn BlobObserver> = metrics.clone();
        // The store decides every transition with the queue's rules as configured.
        let migrate = !work.no_migrate;
        let store = open_store_with(db, work.rules(), options, migrate, Some(observer)).await?;
        tracing::info!(
            database = %db.shown(),
            images = %store.blob_store().url(),
            "database open"
        );
        if let Some(addr) = work.metrics_listen {
            serve_metrics(addr, metrics.clone(), store.clone()).await?;
        }
        Ok(Node {
            store,
            webhooks,
            metrics,
        })
    }
}

/// The webhook settings; `None` without a secret.
fn webhook_config(args: &WebhookArgs) -> Result<Option<WebhookConfig>> {
    let Some(secret) = args.webhook_secret.clone() else {
        if args.webhook_default.is_some() {
            anyhow::bail!("--webhook-default needs --webhook-secret to sign the webhooks");
        }
        return Ok(None);
    };
    if !(args.webhook_schedule_scale.is_finite() && args.webhook_schedule_scale >= 0.0) {
        anyhow::bail!("--webhook-schedule-scale must be a number from 0 up");
    }
    let mut config = WebhookConfig::new(secret);
    config.allow_private = args.webhook_allow_private;
    config.max_attempts = args.webhook_max_attempts;
    config.schedule_scale = args.webhook_schedule_scale;
    config.timeout = args.webhook_timeout;
    config.lease = (args.webhook_timeout * 3).max(Duration::from_secs(30));
    config.default_url = args.webhook_default.clone();
    config.node = node_name();
    Ok(Some(config))
}

/// Starts the image collector when images go to an object store: images of deleted jobs
/// are deleted within a minute, orphans once they are `grace` old (looked for every `grace`).
pub fn start_collector(store: &Arc<dyn Store>, grace: Duration) {
    if store.blob_store().is_database() {
        return;
    }
    let store = store.clone();
    let every = grace.clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut orphans_due = tokio::time::Instant::now() + grace;
        loop {
            tokio::time::sleep(every).await;
            let orphans = tokio::time::Instant::now() >= orphans_due;
            match store.collect_images(grace, orphans).await {
                Ok(c) => {
                    if orphans {
                        orphans_due = tokio::time::Instant::now() + grace;
                    }
                    if c.unreferenced + c.orphans > 0 {
                        tracing::info!(
                            unreferenced = c.unreferenced,
                            orphans = c.orphans,
                            "deleted images no job needs"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the image collector could not finish a pass"),
            }
        }
    });
}

/// Starts this process's webhook deliverer, when webhooks are on.
pub fn start_deliverer(
    store: &Arc<dyn Store>,
    config: &Option<WebhookConfig>,
) -> Result<Option<Deliverer>> {
    let Some(config) = config else {
        return Ok(None);
    };
    tracing::info!(
        max_attempts = config.max_attempts,
        allow_private = config.allow_private,
        "delivering webhooks"
    );
    Ok(Some(Deliverer::start::<JobView>(
        store.clone(),
        config.clone(),
    )?))
}

/// Serves `/metrics` alone on `addr` until the process ends.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    tracing::info!(
        "metrics are served on http://{}/metrics",
        listener.local_addr()?
    );
    let app = imgclass_server::metrics_router(metrics, store);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}

/// Workers of the no-op provider unless --workers says (the most it takes): its attempts take
/// no time, so each round of the queue carries as many jobs as there are workers, and the
/// rounds, not the workers, are the limit (bench/README.md, batched submissions, 10,000 jobs, 50
/// files per POST, SQLite: 1,144 jobs/s with the cores' 2 workers, 8,000-8,500 with 32, 10,000
/// with 64, 11,000-12,400 with 128, 12,100-13,200 with 256, where the jobs run as fast as they
/// are submitted; PostgreSQL: 4,400, 5,800-6,600 and 6,300-7,800 with 32, 128 and 256).
const NOOP_WORKERS: usize = 256;

/// How many workers and inference threads a node runs.
fn sizes(args: &WorkArgs) -> (usize, usize) {
    let count = args.workers.map_or_else(
        || match args.model.provider {
            ProviderArg::Builtin => 2 * cores(),
            ProviderArg::Imagga => cores(),
            ProviderArg::Noop => NOOP_WORKERS,
        },
        usize::from,
    );
    // A remote provider's calls mostly wait on the network: one thread per worker. The no-op
    // provider's take no time: the cores' count does, as for the built-in model (with 128
    // workers, 2 threads and 128 ran at the same rate).
    let threads = args
        .inference_threads
        .map_or_else(
            || match args.model.provider {
                ProviderArg::Builtin | ProviderArg::Noop => cores(),
                ProviderArg::Imagga => count,
            },
            usize::from,
        )
        .clamp(1, count);
    (count, threads)
}

/// Loads the classifier and starts this process's workers.
pub async fn start_workers(
    store: Arc<dyn Store>,
    args: &WorkArgs,
    metrics: Option<Arc<dyn WorkerMetrics>>,
    errors: &ModelErrors,
) -> Result<Workers> {
    let (count, threads) = sizes(args);
    let served = served(args, errors).await?;
    let config = WorkerConfig {
        workers: count,
        inference_threads: Some(threads),
        lease: args.lease,
        sweep_interval: (args.lease / 6).max(Duration::from_millis(100)),
        inject_failure_rate: args.inject_failure_rate,
        inject_failure_seed: args.inject_failure_seed,
        rate_limit: args.rate_limit,
        job_timeout: args.job_timeout,
        retain: args.retain.0,
        metrics,
        node: node_name(),
        ..WorkerConfig::default()
    };
    Workers::start_serving(store, served, config).await
}

/// A node's workers once they have started (`None` before, and after shutdown).
pub type WorkerSlot = Arc<tokio::sync::Mutex<Option<Workers>>>;

/// Loads the models again (the repository as it is now) and serves them: SIGHUP, or
/// `POST /api/models/reload`. The names served afterwards.
pub async fn reload(
    slot: &WorkerSlot,
    args: &WorkArgs,
    errors: &ModelErrors,
) -> Result<Vec<String>> {
    let served = served(args, errors).await?;
    let names = served.names().unwrap_or_default();
    let workers = slot.lock().await;
    let Some(workers) = workers.as_ref() else {
        anyhow::bail!("the workers have not started yet");
    };
    workers.reload(served).await?;
    Ok(names)
}

/// The reload of `POST /api/models/reload`.
pub fn reloader(slot: WorkerSlot, args: WorkArgs, errors: ModelErrors) -> imgclass_server::Reload {
    Arc::new(move || {
        let (slot, args, errors) = (slot.clone(), args.clone(), errors.clone());
        Box::pin(async move {
            reload(&slot, &args, &errors)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    })
}

/// Reloads the models at every SIGHUP, for as long as the process runs.
pub fn reload_on_hangup(slot: WorkerSlot, args: WorkArgs, errors: ModelErrors) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match reload(&slot, &args, &errors).await {
                Ok(models) => tracing::info!(?models, "SIGHUP: models reloaded"),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: the models were not reloaded; the node serves what it served before")
                }
            }
        }
    });
}

/// What the node's workers serve: the provider's model, or the in-process models.
async fn served(args: &WorkArgs, errors: &ModelErrors) -> Result<Served> {
    let (count, threads) = sizes(args);
    Ok(match args.model.provider {
        ProviderArg::Noop => {
            tracing::warn!(
                "provider noop: jobs of any model succeed without classification (benchmarks only)"
            );
            let factory: ClassifierFactory =
                Arc::new(|| Ok(Box::new(NoopClassifier::default()) as Box<dyn Classifier>));
            Served::Any(factory)
        }
        ProviderArg::Imagga => {
            let config = args.model.imagga()?;
            tracing::info!(provider = "imagga", url = %config.url, language = %config.language, timeout_ms = config.timeout.as_millis() as u64, workers = count, "classifying with the Imagga API");
            let info = ImaggaClassifier::model_info();
            let factory: ClassifierFactory = Arc::new(move || {
                Ok(Box::new(ImaggaClassifier::new(&config)?) as Box<dyn Classifier>)
            });
            let entry = ModelEntry {
                name: info.name,
                version: info.version,
                spec: serde_json::json!({"provider": "imagga"}),
                labels: 0,
            };
            Served::Models(vec![ServedModel { entry, factory }])
        }
        ProviderArg::Builtin => {
            let intra = args
                .intra_threads
                .map_or_else(|| (cores() / threads).max(1), usize::from);
            let top_k = usize::from(args.model.top_k);
            let limits = args.limits.limits();
            let models = load_models(&args.model, errors).await?;
            let served = models
                .into_iter()
                .map(|model| {
                    tracing::info!(provider = "builtin", model = %model.info().name, version = %model.info().version, workers = count, inference_threads = threads, intra_threads = intra, "model loaded");
                    let entry = model_entry(&model);
                    let factory: ClassifierFactory = Arc::new(move || {
                        let c = model.session(intra, top_k)?.with_limits(limits);
                        Ok(Box::new(c) as Box<dyn Classifier>)
                    });
                    ServedModel { entry, factory }
                })
                .collect();
            Served::Models(served)
        }
    })
}

/// Waits for SIGTERM or SIGINT, then says the node is shutting down.
pub async fn wait_for_shutdown() {
    shutdown_signal().await;
    tracing::info!("shutting down: no new jobs are started");
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The last step of a node's shutdown, after its workers: the webhook deliverer stops.
pub async fn finish_shutdown(deliverer: Option<Deliverer>) {
    if let Some(d) = deliverer {
        d.shutdown().await;
    }
    tracing::info!("stopped");
}

/// The in-process models a node serves: the built-in one (or the one of --model/--labels) and
/// those of the repository (--models) that load; a folder that cannot load is logged.
/// `errors` gets the folders that could not be loaded (for `/readyz`).
pub async fn load_models(
    args: &crate::args::ModelArgs,
    errors: &ModelErrors,
) -> Result<Vec<Model>> {
    let source = args.source();
    let dir = args.models.clone();
    let errors = errors.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<Model>> {
        let mut models = vec![Model::load(&source)?];
        if let Some(dir) = dir {
            let repo = ModelRepository::load(&dir)
                .with_context(|| format!("cannot read the model repository {}", dir.display()))?;
            for e in &repo.errors {
                tracing::error!(folder = %e.folder.display(), error = %e.error, "a model of the repository cannot be loaded; the node serves the others");
            }
            *errors.lock().unwrap_or_else(|e| e.into_inner()) = repo
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.folder.display(), e.error))
                .collect();
            for m in repo.models {
                if models.iter().any(|have| have.info().name == m.info().name) {
                    anyhow::bail!(
                        "{}: the model name {:?} is taken (the built-in model's)",
                        dir.join(&m.info().name).display(),
                        m.info().name
                    );
                }
                models.push(m);
            }
        }
        Ok(models)
    })
    .await?
}

/// What a node announces of a model: its name, version, pre-processing and output, labels.
fn model_entry(model: &Model) -> ModelEntry {
    let spec = model.spec();
    let input = &spec.input;
    let (resize, crop_fraction) = match input.resize {
        Resize::Crop { fraction } => ("crop", Some(fraction)),
        Resize::Stretch => ("stretch", None),
    };
    ModelEntry {
        name: model.info().name.clone(),
        version: model.info().version.clone(),
        spec: serde_json::json!({
            "input": {
                "layout": input.layout.to_string(),
                "size": input.size,
                "color": format!("{:?}", input.color).to_uppercase(),
                "mean": input.mean,
                "std": input.std,
                "resize": resize,
                "crop_fraction": crop_fraction,
            },
            "output": {"kind": format!("{:?}", spec.output.kind).to_lowercase()},
        }),
        labels: model.labels().len() as u32,
    }
}
