//! Jobs name their model; workers claim only the models they hold; nodes announce what they
//! serve.

use crate::common::*;
use imgclass_core::JobStatus;
use imgclass_store::{ModelEntry, NewJob};
use std::time::Duration;

fn for_model(seed: u64, model: &str) -> NewJob {
    NewJob {
        model: model.into(),
        ..new_job(seed)
    }
}

fn entry(name: &str, version: &str) -> ModelEntry {
    ModelEntry {
        name: name.into(),
        version: version.into(),
        spec: serde_json::json!({"input": {"size": [224, 224]}}),
        labels: 10,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_claims_only_the_models_it_holds() {
    let (store, _db) = fresh_store().await;
    let a = create(&*store, for_model(1, "products")).await;
    let b = create(&*store, for_model(2, "defects")).await;
    let c = create(&*store, for_model(3, "faces")).await;
    assert_eq!(a.model, "products");
    assert_eq!(get(&*store, b.id).await.model, "defects");

    let held = ["products".to_string(), "defects".to_string()];
    let (_, batch) = store
        .finish_and_claim(Vec::new(), "w", 10, LONG_LEASE, None, Some(&held))
        .await
        .unwrap();
    let mut claimed: Vec<_> = batch.claims.iter().map(|c| c.job.id).collect();
    claimed.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(claimed, want);
    // Nobody holds `faces`: it waits.
    let (_, batch) = store
        .finish_and_claim(Vec::new(), "w", 10, LONG_LEASE, None, Some(&held))
        .await
        .unwrap();
    assert!(batch.claims.is_empty());
    assert_eq!(get(&*store, c.id).await.status, JobStatus::Queued);
    // A worker that holds no model claims nothing; one that names none claims any.
    let (_, batch) = store
        .finish_and_claim(Vec::new(), "w", 10, LONG_LEASE, None, Some(&[]))
        .await
        .unwrap();
    assert!(batch.claims.is_empty());
    let any = store.claim("w", 10, LONG_LEASE).await.unwrap();
    assert_eq!(any.len(), 1);
    assert_eq!(any[0].job.id, c.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_announce_the_models_they_serve() {
    let (store, _db) = fresh_store().await;
    assert!(store
        .models(Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
    store
        .announce_models("n1", &[entry("products", "v1"), entry("defects", "d1")])
        .await
        .unwrap();
    store
        .announce_models("n2", &[entry("products", "v2")])
        .await
        .unwrap();
    let models = store.models(Duration::from_secs(60)).await.unwrap();
    let names: Vec<_> = models.iter().map(|m| m.entry.name.as_str()).collect();
    assert_eq!(names, ["defects", "products"]);
    let products = &models[1];
    assert_eq!(products.entry.version, "v2", "the last announcement wins");
    assert_eq!(products.entry.labels, 10);
    let nodes: Vec<_> = products
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.version.as_str()))
        .collect();
    assert_eq!(nodes, [("n1", "v1"), ("n2", "v2")]);

    // n1 no longer holds `defects`: the model stays known, served by nobody.
    store
        .announce_models("n1", &[entry("products", "v1")])
        .await
        .unwrap();
    let models = store.models(Duration::from_secs(60)).await.unwrap();
    assert_eq!(models[0].entry.name, "defects");
    assert!(models[0].nodes.is_empty());

    // A node that stopped announcing is not live any more.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let models = store.models(Duration::from_millis(10)).await.unwrap();
    assert!(models.iter().all(|m| m.nodes.is_empty()));
}
