//! `Prefer: wait=N` on `POST /api/jobs` and `GET /api/jobs/{id}`.

use crate::helpers::{fixture, slow_factory, Options, TestApp};
use imgclass_core::JobStatus;
use serde_json::Value;
use std::time::{Duration, Instant};

fn form(files: &[(&str, Vec<u8>)]) -> reqwest::multipart::Form {
    crate::helpers::multipart(files, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_that_waits_gets_its_results() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .header("Prefer", "wait=30")
        .multipart(form(&[
            ("coffee.png", fixture("coffee.png")),
            ("rocket.jpg", fixture("rocket.jpg")),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["preference-applied"], "wait=30");
    assert!(resp.headers().contains_key("location"));
    let body: Value = resp.json().await.unwrap();
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for j in jobs {
        assert_eq!(j["status"], "succeeded", "{j}");
    }
    assert_eq!(jobs[0]["file_name"], "coffee.png");
    assert_eq!(jobs[0]["result"]["predictions"][0]["label"], "espresso");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_preference_the_answer_does_not_wait() {
    let app = TestApp::without_workers().await;
    let resp = app.upload(&[("coffee.png", fixture("coffee.png"))]).await;
    assert_eq!(resp.status(), 202);
    assert!(!resp.headers().contains_key("preference-applied"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jobs"][0]["status"], "queued");
    let id = body["jobs"][0]["id"].as_str().unwrap();
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("preference-applied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_ends_after_n_seconds_with_the_current_state() {
    let app = TestApp::without_workers().await;
    let id = app.submit(&[("coffee.png", fixture("coffee.png"))]).await[0];
    let started = Instant::now();
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{id}")))
        .header("Prefer", "wait=1")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["preference-applied"], "wait=1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "queued");

    // More than 60 s is 60 s.
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{id}")))
        .header("Prefer", "respond-async, wait=0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["preference-applied"], "wait=0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_read_answers_as_soon_as_the_job_finishes() {
    // The classifier takes at least 1.5 s for the first image, so the job is still unfinished
    // when the read arrives.
    let app = TestApp::with(Options {
        factory: Some(slow_factory(Duration::from_millis(1500), 1)),
        ..Options::default()
    })
    .await;
    let id = app.submit(&[("coffee.png", fixture("coffee.png"))]).await[0];
    let sent = chrono::Utc::now();
    let started = Instant::now();
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{id}")))
        .header("Prefer", "wait=600")
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["preference-applied"], "wait=60");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["result"]["predictions"][0]["label"], "espresso");
    // It finished after the read was sent: the answer waited for it.
    let finished: chrono::DateTime<chrono::Utc> =
        body["finished_at"].as_str().unwrap().parse().unwrap();
    assert!(finished > sent, "{finished} vs {sent}");
    assert_eq!(
        app.store.get_job(id).await.unwrap().unwrap().status,
        JobStatus::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_an_unknown_job_is_404_at_once() {
    let app = TestApp::without_workers().await;
    let started = Instant::now();
    let resp = app
        .client
        .get(app.url("/api/jobs/0190b3c2-0000-7000-8000-000000000000"))
        .header("Prefer", "wait=30")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(started.elapsed() < Duration::from_secs(30));
}
