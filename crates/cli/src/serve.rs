//! `imgclass serve`: the HTTP API and the web page, with this node's workers unless
//! `--no-workers`; the API listens at once while the workers load the model.

use crate::args::{ModelArgs, ProviderArg, ServeArgs};
use crate::node::{self, cores, node_name, Node};
use anyhow::{Context, Result};
use imgclass_classifier::{Classifier, ImaggaClassifier, Model, NoopClassifier};
use imgclass_server::{AppState, UploadConfig};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let Node {
        store,
        webhooks,
        metrics,
    } = Node::open(&args.db, &args.work, true).await?;
    // The node listens at once; `/readyz` says 503 until the workers have loaded the model.
    let (readiness, workers, mut workers_failed) = if args.no_workers {
        let (_, never) = tokio::sync::oneshot::channel();
        (imgclass_server::ops::Readiness::default(), None, never)
    } else {
        let (readiness, loaded) = imgclass_server::ops::Readiness::with_workers();
        let (failed_tx, failed) = tokio::sync::oneshot::channel();
        let slot: node::WorkerSlot = Arc::new(tokio::sync::Mutex::new(None));
        let errors = readiness.model_errors.clone();
        node::reload_on_hangup(slot.clone(), args.work.clone(), errors.clone());
        let (store, work, put) = (store.clone(), args.work.clone(), slot.clone());
        let metrics = metrics.clone();
        let starting = tokio::spawn(async move {
            let mut put = put.lock().await;
            match node::start_workers(store, &work, Some(metrics), &errors).await {
                Ok(w) => {
                    *put = Some(w);
                    loaded.store(true, std::sync::atomic::Ordering::Release);
                }
                Err(e) => {
                    let _ = failed_tx.send(e);
                }
            }
        });
        (readiness, Some((slot, starting)), failed)
    };

    let upload = UploadConfig::new(args.work.limits.limits(), cores());
    let request_limit = upload.request_limit() as u64;
    if args.http.upload_budget < request_limit {
        anyhow::bail!(
            "--upload-budget ({} bytes) must hold at least one request body of the largest size, \
             4 × --max-file-bytes + 1 MiB = {request_limit} bytes",
            args.http.upload_budget
        );
    }
    let upload = upload.with_budget(imgclass_server::UploadBudget::new(
        args.http.upload_budget,
        args.http.upload_wait,
    ));
    let node_model = cached_model(&args.work.model)?;
    let state = AppState {
        store,
        upload,
        max_attempts: args.max_attempts,
        rate_limit: args.work.rate_limit,
        webhooks: webhooks.clone().map(Arc::new),
        idempotency_ttl: args.idempotency_ttl,
        default_model: args
            .work
            .model
            .named_model()
            .map_or_else(|| node_model.name.clone(), str::to_string),
        result_cache: (!args.no_result_cache).then_some(node_model),
        reload: workers.as_ref().map(|(slot, _)| {
            node::reloader(
                slot.clone(),
                args.work.clone(),
                readiness.model_errors.clone(),
            )
        }),
    };
    let deliverer = node::start_deliverer(&state.store, &webhooks)?;
    node::start_collector(&state.store, args.blob_orphan_grace);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !store_has_tokens(&*state.store).await {
        tracing::warn!(
            "listening on {addr}, which is not a loopback address, without API tokens: anyone who \
             can reach it can read, change and delete every job (create one with `imgclass token \
             create`)"
        );
    }
    tracing::info!("imgclass is listening on http://{addr}");
    let (stopping, mut stop_rx) = tokio::sync::watch::channel(false);
    let http = imgclass_server::HttpConfig {
        cors_origins: args.cors_origins.clone(),
        readiness,
        quotas: imgclass_server::quota::QuotaConfig {
            requests: args.quota_requests,
            submissions: args.quota_submissions,
            max_queued_per_token: args.max_queued_per_token,
        },
        metrics: Some(metrics),
        metrics_on_api_port: args.work.metrics_listen.is_none(),
        node: node_name(),
    };
    let app = imgclass_server::router_with(state, http);
    // Our accept loop (connection cap, request-head, keep-alive and body timeouts); it gives
    // handlers the client's address (`ConnectInfo`) as `axum::serve` would.
    let server = imgclass_server::serve(listener, app, args.http.limits(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    // Open event streams never end by themselves: after the signal, connections get a short
    // while to close before the process moves on to stopping the workers.
    let close_connections = async {
        node::wait_for_shutdown().await;
        let _ = stopping.send(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = server => r?,
        _ = close_connections => {}
        Ok(e) = &mut workers_failed => return Err(e.context("cannot start the workers")),
    }
    if let Some((slot, starting)) = workers {
        if !starting.is_finished() {
            // Still loading the model: nothing has been claimed yet.
            starting.abort();
        }
        let _ = starting.await;
        if let Some(w) = slot.lock().await.take() {
            w.shutdown(args.work.shutdown_grace).await;
        }
    }
    node::finish_shutdown(deliverer).await;
    Ok(ExitCode::SUCCESS)
}

/// The model this node's workers would run (whose results the result cache reuses, and the
/// default model of jobs unless --default-model names another).
fn cached_model(args: &ModelArgs) -> Result<imgclass_core::ModelInfo> {
    Ok(match args.provider {
        ProviderArg::Noop => NoopClassifier::default().info().clone(),
        ProviderArg::Imagga => ImaggaClassifier::model_info(),
        ProviderArg::Builtin => Model::identify(&args.source())?,
    })
}

async fn store_has_tokens(store: &dyn imgclass_store::Store) -> bool {
    store.tokens_in_use().await.unwrap_or(false)
}
