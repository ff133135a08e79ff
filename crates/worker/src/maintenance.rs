//! Maintenance on a timer: the lease sweeper that puts back the jobs of workers that died,
//! retention, which deletes old finished jobs, and the announcement of the models this node
//! serves (so that the API nodes know which models are served now).

use crate::models::Serving;
use crate::{signalled, WorkerConfig};
use chrono::Utc;
use imgclass_store::{ModelEntry, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Rescues jobs whose worker is gone, announces the models served, deletes expired idempotency
/// keys and, when retention is on, prunes old finished jobs.
pub(super) async fn sweeper(
    store: Arc<dyn Store>,
    config: WorkerConfig,
    serving: Serving,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let prune_every = Duration::from_secs(60);
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signalled(&mut stop) => return,
        }
        match store.rescue_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "rescued jobs whose worker stopped"),
            Err(e) => tracing::warn!(error = %e, "lease sweep failed"),
        }
        announce(&*store, &config.node, &serving.now().entries).await;
        if last_prune.is_none_or(|t| t.elapsed() >= prune_every) {
            last_prune = Some(tokio::time::Instant::now());
            if let Some(retain) = config.retain {
                prune_once(&*store, retain).await;
            }
            // Expired idempotency keys go whatever the retention: they are dead already.
            if let Err(e) = store.prune_idempotency_keys(Utc::now()).await {
                tracing::warn!(error = %e, "pruning idempotency keys failed");
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

/// Tells the other nodes which models this node serves now (nothing for a node that takes any
/// model).
pub(super) async fn announce(store: &dyn Store, node: &str, models: &[ModelEntry]) {
    if models.is_empty() {
        return;
    }
    if let Err(e) = store.announce_models(node, models).await {
        tracing::warn!(error = %e, "could not announce the models this node serves");
    }
}
