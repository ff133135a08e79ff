//! Each job names its model: the API checks the name against the models the nodes have
//! announced, lists them with the nodes that serve them now, and a worker that serves some
//! models takes only their jobs.

use crate::helpers::{assert_error, fixture, TestApp};
use imgclass_classifier::{Classifier, NoopClassifier};
use imgclass_core::JobStatus;
use imgclass_store::ModelEntry;
use imgclass_worker::{ClassifierFactory, Served, ServedModel, WorkerConfig, Workers};
use std::sync::Arc;
use std::time::Duration;

fn entry(name: &str) -> ModelEntry {
    ModelEntry {
        name: name.into(),
        version: format!("{name}-v1"),
        spec: serde_json::json!({"input": {"size": [4, 6], "layout": "NHWC"}}),
        labels: 3,
    }
}

fn noop() -> ClassifierFactory {
    Arc::new(|| Ok(Box::new(NoopClassifier::default()) as Box<dyn Classifier>))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_models_are_listed_with_the_nodes_that_serve_them() {
    let app = TestApp::without_workers().await;
    let (status, body) = app.get("/api/models").await;
    assert_eq!(status, 200);
    assert_eq!(body["models"], serde_json::json!([]));
    assert_eq!(body["default_model"], "efficientnet-lite0");

    app.store
        .announce_models("node-a", &[entry("products"), entry("efficientnet-lite0")])
        .await
        .unwrap();
    let (_, body) = app.get("/api/models").await;
    let models = body["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["name"], "efficientnet-lite0");
    assert_eq!(models[0]["default"], true);
    let products = &models[1];
    assert_eq!(products["name"], "products");
    assert_eq!(products["version"], "products-v1");
    assert_eq!(products["labels"], 3);
    assert_eq!(products["spec"]["input"]["layout"], "NHWC");
    assert_eq!(products["default"], false);
    assert_eq!(products["nodes"][0]["node"], "node-a");

    // node-a stops serving products: it stays known, with no node, and a queued job of it
    // says why it waits (on its own and in the list); one of a served model says nothing.
    let products_job = {
        let resp = app
            .upload_with(
                &[("coffee.png", fixture("coffee.png"))],
                &[("model", "products")],
            )
            .await;
        let body: serde_json::Value = resp.json().await.unwrap();
        body["jobs"][0]["id"].as_str().unwrap().to_string()
    };
    let builtin_job = app.submit(&[("coffee.png", fixture("coffee.png"))]).await[0];
    app.store
        .announce_models("node-a", &[entry("efficientnet-lite0")])
        .await
        .unwrap();
    let (_, body) = app.get("/api/models").await;
    assert_eq!(body["models"][1]["nodes"], serde_json::json!([]));
    let (_, job) = app.get(&format!("/api/jobs/{products_job}")).await;
    assert_eq!(job["waiting"], "no worker serves the model products");
    let (_, job) = app.get(&format!("/api/jobs/{builtin_job}")).await;
    assert!(job.get("waiting").is_none(), "{job}");
    let (_, list) = app.get("/api/jobs?status=queued").await;
    let waiting: Vec<&serde_json::Value> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["waiting"])
        .collect();
    assert_eq!(
        waiting,
        [
            &serde_json::Value::Null,
            &serde_json::json!("no worker serves the model products")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_names_a_known_model_or_is_refused() {
    let app = TestApp::without_workers().await;
    app.store
        .announce_models("node-a", &[entry("products")])
        .await
        .unwrap();
    let coffee = || vec![("coffee.png", fixture("coffee.png"))];

    // By default: the default model.
    let ids = app.submit(&coffee()).await;
    let (_, job) = app.get(&format!("/api/jobs/{}", ids[0])).await;
    assert_eq!(job["model"], "efficientnet-lite0");

    // A multipart field, or the query of a raw body.
    let resp = app.upload_with(&coffee(), &[("model", "products")]).await;
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["jobs"][0]["model"], "products");
    let resp = app
        .request(reqwest::Method::POST, "/api/jobs?model=products", None)
        .header("content-type", "image/png")
        .body(fixture("coffee.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["jobs"][0]["model"], "products");

    // No node has served it: refused, nothing stored.
    let before = app.store.count_jobs(&Default::default()).await.unwrap();
    let resp = app.upload_with(&coffee(), &[("model", "faces")]).await;
    let message = assert_error(resp, 422, "unknown_model").await;
    assert!(
        message.contains("faces") && message.contains("products"),
        "{message}"
    );
    let resp = app
        .upload_with(&coffee(), &[("model", "no such/model")])
        .await;
    assert_error(resp, 422, "unknown_model").await;
    assert_eq!(
        app.store.count_jobs(&Default::default()).await.unwrap(),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_only_the_jobs_of_the_models_it_serves() {
    let app = TestApp::without_workers().await;
    let served = Served::Models(vec![ServedModel {
        entry: entry("products"),
        factory: noop(),
    }]);
    let workers = Workers::start_serving(
        app.store.clone(),
        served,
        WorkerConfig {
            workers: 2,
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
    )
    .await
    .unwrap();
    // The node announced what it serves at start.
    let (_, body) = app.get("/api/models").await;
    assert_eq!(body["models"][0]["name"], "products");
    assert_eq!(body["models"][0]["nodes"].as_array().unwrap().len(), 1);

    let coffee = || vec![("coffee.png", fixture("coffee.png"))];
    let resp = app.upload_with(&coffee(), &[("model", "products")]).await;
    let body: serde_json::Value = resp.json().await.unwrap();
    let products: imgclass_core::JobId = body["jobs"][0]["id"].as_str().unwrap().parse().unwrap();
    let builtin = app.submit(&coffee()).await[0];

    let done = app.wait_for(products, JobStatus::Succeeded).await;
    assert_eq!(done.model, "products");
    // The built-in model's job is not this node's: it waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = app.store.get_job(builtin).await.unwrap().unwrap();
    assert_eq!(waiting.status, JobStatus::Queued);
    workers.shutdown(Duration::from_secs(5)).await;
}

/// A classifier of model `name` at `version` that takes `delay` per image.
fn versioned(name: &str, version: &str, delay: Duration) -> ClassifierFactory {
    let info = imgclass_core::ModelInfo {
        provider: imgclass_core::Provider::Builtin,
        name: name.into(),
        version: version.into(),
    };
    Arc::new(move || {
        struct Slow(imgclass_core::ModelInfo, Duration);
        impl Classifier for Slow {
            fn classify(
                &mut self,
                _: &[u8],
            ) -> Result<imgclass_classifier::Classification, imgclass_classifier::ClassifyError>
            {
                std::thread::sleep(self.1);
                Ok(imgclass_classifier::Classification {
                    predictions: vec![imgclass_core::Prediction {
                        index: 0,
                        label: self.0.version.clone(),
                        probability: 1.0,
                    }],
                    decode_ms: 0.0,
                    inference_ms: 0.0,
                })
            }
            fn info(&self) -> &imgclass_core::ModelInfo {
                &self.0
            }
        }
        Ok(Box::new(Slow(info.clone(), delay)) as Box<dyn Classifier>)
    })
}

fn served(models: &[(&str, &str, Duration)]) -> Served {
    Served::Models(
        models
            .iter()
            .map(|(name, version, delay)| ServedModel {
                entry: ModelEntry {
                    version: (*version).into(),
                    ..entry(name)
                },
                factory: versioned(name, version, *delay),
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_models_without_losing_a_job() {
    let app = TestApp::without_workers().await;
    let slow = Duration::from_millis(400);
    let workers = Workers::start_serving(
        app.store.clone(),
        served(&[("products", "v1", slow)]),
        WorkerConfig {
            workers: 3,
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
    )
    .await
    .unwrap();
    let coffee = || vec![("coffee.png", fixture("coffee.png"))];
    let submit = |model: &'static str| {
        let app = &app;
        async move {
            let resp = app.upload_with(&coffee(), &[("model", model)]).await;
            assert_eq!(resp.status(), 202);
            let body: serde_json::Value = resp.json().await.unwrap();
            body["jobs"][0]["id"]
                .as_str()
                .unwrap()
                .parse::<imgclass_core::JobId>()
                .unwrap()
        }
    };
    // A job of v1 is running when the reload replaces products with v2 and adds defects.
    let first = submit("products").await;
    app.wait_for(first, JobStatus::Running).await;
    workers
        .reload(served(&[
            ("products", "v2", Duration::ZERO),
            ("defects", "d1", Duration::ZERO),
        ]))
        .await
        .unwrap();
    let done = app.wait_for(first, JobStatus::Succeeded).await;
    let result = done.result.unwrap();
    assert_eq!(
        result.model.version, "v1",
        "the attempt ends on the version it started with"
    );
    // Under load: jobs of both models submitted after the reload all succeed on the new set.
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(submit(if i % 2 == 0 { "products" } else { "defects" }).await);
    }
    for id in &ids {
        let job = app.wait_for(*id, JobStatus::Succeeded).await;
        let version = job.result.unwrap().model.version;
        assert!(version == "v2" || version == "d1", "{version}");
    }
    let (_, body) = app.get("/api/models").await;
    let live: Vec<(String, String)> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| !m["nodes"].as_array().unwrap().is_empty())
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["nodes"][0]["version"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        live,
        [
            ("defects".into(), "d1".into()),
            ("products".into(), "v2".into())
        ]
    );

    // products is removed: its new jobs wait, none fails.
    workers
        .reload(served(&[("defects", "d1", Duration::ZERO)]))
        .await
        .unwrap();
    let waiting = submit("products").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = app.store.get_job(waiting).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_cache_is_kept_per_model_and_version() {
    let app = TestApp::with(crate::helpers::Options {
        workers: 0,
        result_cache: Some(imgclass_core::ModelInfo {
            provider: imgclass_core::Provider::Builtin,
            name: "efficientnet-lite0".into(),
            version: "builtin".into(),
        }),
        ..Default::default()
    })
    .await;
    let workers = Workers::start_serving(
        app.store.clone(),
        served(&[("products", "v1", Duration::ZERO)]),
        WorkerConfig {
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
    )
    .await
    .unwrap();
    let post = |model: &'static str| {
        let app = &app;
        async move {
            let resp = app
                .upload_with(
                    &[("coffee.png", fixture("coffee.png"))],
                    &[("model", model)],
                )
                .await;
            assert_eq!(resp.status(), 202);
            let body: serde_json::Value = resp.json().await.unwrap();
            body["jobs"][0].clone()
        }
    };
    let first = post("products").await;
    assert_eq!(first["cached"], false);
    let id = first["id"].as_str().unwrap().parse().unwrap();
    app.wait_for(id, JobStatus::Succeeded).await;
    // The same image for the same model and version: answered from the cache.
    let again = post("products").await;
    assert_eq!(again["cached"], true);
    assert_eq!(again["status"], "succeeded");
    assert_eq!(again["result"]["model"]["version"], "v1");
    // A new version of the model: classified again.
    workers
        .reload(served(&[("products", "v2", Duration::ZERO)]))
        .await
        .unwrap();
    let after = post("products").await;
    assert_eq!(after["cached"], false);
    workers.shutdown(Duration::from_secs(5)).await;
}
