//! `Idempotency-Key` on `POST /api/jobs`, and the result cache.

use crate::helpers::{assert_error, fixture, model, multipart, Options, TestApp};
use imgclass_core::Scope;
use serde_json::Value;
use std::time::Duration;

/// Posts files (and plain fields) with an `Idempotency-Key`, as the holder of `token`.
async fn post_keyed(
    app: &TestApp,
    token: Option<&str>,
    key: &str,
    files: &[(&str, Vec<u8>)],
    fields: &[(&str, &str)],
) -> reqwest::Response {
    app.request(reqwest::Method::POST, "/api/jobs", token)
        .header("Idempotency-Key", key)
        .multipart(multipart(files, fields))
        .send()
        .await
        .unwrap()
}

fn ids(body: &Value) -> Vec<String> {
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

async fn job_count(app: &TestApp) -> usize {
    let (status, body) = app.get("/api/jobs?limit=200").await;
    assert_eq!(status, 200);
    body["jobs"].as_array().unwrap().len()
}

fn photos() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("coffee.png", fixture("coffee.png")),
        ("rocket.jpg", fixture("rocket.jpg")),
    ]
}

#[tokio::test]
async fn a_request_sent_again_with_its_key_gets_the_same_jobs() {
    let app = TestApp::without_workers().await;
    let first = post_keyed(&app, None, "order-1", &photos(), &[]).await;
    assert_eq!(first.status(), 202);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();

    // Sent again (a new multipart body, with a new boundary): the same jobs, nothing new.
    let again = post_keyed(&app, None, "order-1", &photos(), &[]).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let again: Value = again.json().await.unwrap();
    assert_eq!(ids(&again), ids(&first));
    assert_eq!(again["jobs"][0]["status"], "queued");

    // The key in its structured-field form is the same key.
    let quoted = post_keyed(&app, None, "\"order-1\"", &photos(), &[]).await;
    assert_eq!(quoted.headers()["idempotent-replayed"], "true");
    assert_eq!(job_count(&app).await, 2);

    // Without a key, or with another one, a request makes new jobs.
    assert_eq!(app.upload(&photos()).await.status(), 202);
    assert_eq!(
        post_keyed(&app, None, "order-2", &photos(), &[])
            .await
            .status(),
        202
    );
    assert_eq!(job_count(&app).await, 6);
}

#[tokio::test]
async fn a_key_used_for_another_request_is_refused() {
    let app = TestApp::without_workers().await;
    assert_eq!(
        post_keyed(&app, None, "k", &photos(), &[]).await.status(),
        202
    );
    // Other files.
    let other = post_keyed(
        &app,
        None,
        "k",
        &[("coffee.png", fixture("coffee.png"))],
        &[],
    )
    .await;
    let message = assert_error(other, 422, "idempotency_key_mismatch").await;
    assert!(message.contains("different request"), "{message}");
    // The same files under other names, or with other fields.
    let renamed = vec![
        ("a.png", fixture("coffee.png")),
        ("rocket.jpg", fixture("rocket.jpg")),
    ];
    assert_error(
        post_keyed(&app, None, "k", &renamed, &[]).await,
        422,
        "idempotency_key_mismatch",
    )
    .await;
    assert_error(
        post_keyed(&app, None, "k", &photos(), &[("priority", "5")]).await,
        422,
        "idempotency_key_mismatch",
    )
    .await;
    assert_eq!(job_count(&app).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_requests_make_one_set_of_jobs() {
    let app = std::sync::Arc::new(TestApp::without_workers().await);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let resp = post_keyed(&app, None, "burst", &photos(), &[]).await;
                let status = resp.status().as_u16();
                let retry_after = resp.headers().get("retry-after").cloned();
                let body: Value = resp.json().await.unwrap();
                (status, retry_after, body)
            })
        })
        .collect();
    let mut created: Vec<Vec<String>> = Vec::new();
    for t in tasks {
        let (status, retry_after, body) = t.await.unwrap();
        match status {
            202 => created.push(ids(&body)),
            409 => {
                assert_eq!(body["error"]["code"], "idempotency_key_in_use", "{body}");
                assert!(retry_after.is_some(), "409 without Retry-After");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(!created.is_empty());
    assert!(created.iter().all(|c| *c == created[0]), "{created:?}");
    assert_eq!(job_count(&app).await, 2, "exactly one set of jobs");
}

#[tokio::test]
async fn malformed_keys_are_refused_before_anything_is_stored() {
    let app = TestApp::without_workers().await;
    let long = "k".repeat(256);
    for key in ["", "\"unclosed", "two words", &long] {
        let resp = post_keyed(&app, None, key, &photos(), &[]).await;
        assert_error(resp, 400, "invalid_idempotency_key").await;
    }
    let twice = app
        .client
        .post(app.url("/api/jobs"))
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .multipart(multipart(&photos(), &[]))
        .send()
        .await
        .unwrap();
    assert_error(twice, 400, "invalid_idempotency_key").await;
    assert_eq!(job_count(&app).await, 0);
}

#[tokio::test]
async fn keys_belong_to_their_caller() {
    let app = TestApp::without_workers().await;
    let alice = app.token("alice", &Scope::DEFAULT).await;
    let bob = app.token("bob", &Scope::DEFAULT).await;
    let coffee = [("coffee.png", fixture("coffee.png"))];
    let resp = post_keyed(&app, Some(&alice), "mine", &photos(), &[]).await;
    assert_eq!(resp.status(), 202);
    // Bob's "mine" is his own key: another request is no mismatch, and he gets his own jobs.
    let resp = post_keyed(&app, Some(&bob), "mine", &coffee, &[]).await;
    assert_eq!(resp.status(), 202);
    assert!(!resp.headers().contains_key("idempotent-replayed"));
    let resp = post_keyed(&app, Some(&alice), "mine", &coffee, &[]).await;
    assert_error(resp, 422, "idempotency_key_mismatch").await;
}

#[tokio::test]
async fn a_key_expires_after_its_time_to_live() {
    let app = TestApp::with(Options {
        workers: 0,
        idempotency_ttl: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let first: Value = post_keyed(&app, None, "short", &photos(), &[])
        .await
        .json()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = post_keyed(&app, None, "short", &photos(), &[]).await;
    assert_eq!(resp.status(), 202);
    assert!(!resp.headers().contains_key("idempotent-replayed"));
    let second: Value = resp.json().await.unwrap();
    assert_ne!(ids(&first), ids(&second));
    assert_eq!(job_count(&app).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_classified_before_is_answered_from_the_cache() {
    let app = TestApp::with(Options {
        result_cache: Some(model().info().clone()),
        ..Options::default()
    })
    .await;
    let coffee = [("coffee.png", fixture("coffee.png"))];
    let waited = app
        .client
        .post(app.url("/api/jobs"))
        .header("Prefer", "wait=30")
        .multipart(multipart(&coffee, &[]))
        .send()
        .await
        .unwrap();
    let first: Value = waited.json().await.unwrap();
    let first = &first["jobs"][0];
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["cached"], false);

    // The same image again: answered at once, as a job of its own.
    let resp = app.upload(&[("again.png", fixture("coffee.png"))]).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let cached = &body["jobs"][0];
    assert_eq!(cached["status"], "succeeded", "{cached}");
    assert_eq!(cached["cached"], true);
    assert_ne!(cached["id"], first["id"]);
    assert_eq!(cached["file_name"], "again.png");
    assert_eq!(
        cached["result"]["predictions"],
        first["result"]["predictions"]
    );
    assert_eq!(cached["attempts"], 0);
    assert!(cached["finished_at"].is_string());
    let (_, read) = app
        .get(&format!("/api/jobs/{}", cached["id"].as_str().unwrap()))
        .await;
    assert_eq!(read["cached"], true);

    // `cache=false` (a form field, or the query of a raw body) classifies it again.
    let resp = app
        .upload_with(
            &[("fresh.png", fixture("coffee.png"))],
            &[("cache", "false")],
        )
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jobs"][0]["cached"], false);
    assert_ne!(body["jobs"][0]["status"], "succeeded");
    let raw = app
        .client
        .post(app.url("/api/jobs?filename=raw.png&cache=false"))
        .header("content-type", "image/png")
        .body(fixture("coffee.png"))
        .send()
        .await
        .unwrap();
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["jobs"][0]["cached"], false, "{body}");

    let resp = app
        .upload_with(&[("x.png", fixture("coffee.png"))], &[("cache", "maybe")])
        .await;
    assert_error(resp, 400, "bad_request").await;
}

#[tokio::test]
async fn without_the_cache_every_image_is_classified() {
    let app = TestApp::with(Options::default()).await;
    let coffee = [("coffee.png", fixture("coffee.png"))];
    let first: Value = app
        .client
        .post(app.url("/api/jobs"))
        .header("Prefer", "wait=30")
        .multipart(multipart(&coffee, &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["jobs"][0]["status"], "succeeded");
    let body: Value = app.upload(&coffee).await.json().await.unwrap();
    assert_eq!(body["jobs"][0]["cached"], false);
    assert_eq!(body["jobs"][0]["status"], "queued");
}
