//! `imgclass worker`: a node that runs workers only, no HTTP API.

use crate::args::WorkerArgs;
use crate::node::{self, Node};
use anyhow::Result;
use std::process::ExitCode;

pub async fn run(args: WorkerArgs) -> Result<ExitCode> {
    let Node {
        store,
        webhooks,
        metrics,
    } = Node::open(&args.db, &args.work, false).await?;
    // A worker node has no /readyz: the folders that cannot load are logged.
    let errors = imgclass_server::ops::ModelErrors::default();
    let workers = node::start_workers(store.clone(), &args.work, Some(metrics), &errors).await?;
    let slot: node::WorkerSlot = std::sync::Arc::new(tokio::sync::Mutex::new(Some(workers)));
    node::reload_on_hangup(slot.clone(), args.work.clone(), errors);
    let deliverer = node::start_deliverer(&store, &webhooks)?;
    tracing::info!("imgclass worker is running");
    node::wait_for_shutdown().await;
    if let Some(workers) = slot.lock().await.take() {
        workers.shutdown(args.work.shutdown_grace).await;
    }
    node::finish_shutdown(deliverer).await;
    Ok(ExitCode::SUCCESS)
}
