//! The Imagga provider under the real worker, against the fake Imagga API: for each way the API
//! can answer, the job's final state, its attempts and error code, and that every upload was
//! deleted at Imagga.

use crate::fake_imagga::{Answer, FakeImagga, TAGS};
use crate::helpers::{fixture, Options, TestApp};
use imgclass_classifier::{Classifier, ImaggaClassifier, ImaggaConfig, Secret};
use imgclass_core::policy::Rules;
use imgclass_core::{ErrorCode, JobStatus, Provider};
use imgclass_store::Job;
use imgclass_worker::ClassifierFactory;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "acc_0123456789abcdef";
const SECRET: &str = "s3cr3t-0f-the-acc0unt";

fn config(fake: &FakeImagga) -> ImaggaConfig {
    ImaggaConfig {
        url: fake.url.clone(),
        key: KEY.into(),
        secret: Secret::new(SECRET),
        top_k: 5,
        language: "en".into(),
        threshold: None,
        timeout: Duration::from_secs(10),
    }
}

fn factory(config: ImaggaConfig) -> ClassifierFactory {
    Arc::new(move || Ok(Box::new(ImaggaClassifier::new(&config)?) as Box<dyn Classifier>))
}

/// The service with one worker classifying through `config`; retries come quickly (10 ms
/// backoff) unless the API asks for a longer wait.
async fn app(config: ImaggaConfig, max_attempts: u32) -> TestApp {
    TestApp::with(Options {
        factory: Some(factory(config)),
        max_attempts,
        rules: Rules {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..Rules::default()
        },
        ..Options::default()
    })
    .await
}

/// Submits the coffee photo and waits until its job has ended.
async fn run_one(app: &TestApp, end: JobStatus) -> Job {
    let id = app.submit(&[("coffee.png", fixture("coffee.png"))]).await[0];
    app.wait_for(id, end).await
}

fn codes(job: &Job) -> Vec<ErrorCode> {
    job.attempt_errors.iter().map(|e| e.code).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_become_a_result_and_the_upload_is_deleted() {
    let fake = FakeImagga::start(KEY, SECRET, vec![]).await;
    let app = app(config(&fake), 3).await;
    let job = run_one(&app, JobStatus::Succeeded).await;
    assert_eq!(job.attempts, 1);

    // The image Imagga got is the one that was submitted; limit = top-k, no other parameter.
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].bytes, fixture("coffee.png"));
    let calls = fake.tags_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].params["image_upload_id"], uploads[0].id);
    assert_eq!(calls[0].params["limit"], "5");
    assert_eq!(calls[0].params.len(), 2, "{:?}", calls[0].params);

    // Confidences 0–100 are stored as probabilities 0–1, in the built-in model's result shape.
    let (status, view) = app.get(&format!("/api/jobs/{}", job.id)).await;
    assert_eq!(status, 200);
    let result = &view["result"];
    assert_eq!(result["model"]["provider"], "imagga");
    assert_eq!(result["model"]["name"], "imagga-tags");
    assert_eq!(result["model"]["version"], "v2");
    let predictions = result["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 5);
    for (i, (p, (en, _, confidence))) in predictions.iter().zip(TAGS).enumerate() {
        assert_eq!(p["index"], i);
        assert_eq!(p["label"], en);
        let probability = p["probability"].as_f64().unwrap();
        assert!((probability - confidence / 100.0).abs() < 1e-6, "{p}");
    }
    assert!(result["timings"]["inference_ms"].as_f64().unwrap() > 0.0);
    let stored = job.result.unwrap();
    assert_eq!(stored.model.provider, Provider::Imagga);
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn language_and_threshold_are_asked_for() {
    let fake = FakeImagga::start(KEY, SECRET, vec![]).await;
    let app = app(
        ImaggaConfig {
            language: "de".into(),
            threshold: Some(20.0),
            top_k: 10,
            ..config(&fake)
        },
        3,
    )
    .await;
    let job = run_one(&app, JobStatus::Succeeded).await;
    let calls = fake.tags_calls();
    assert_eq!(calls[0].params["language"], "de");
    assert_eq!(calls[0].params["threshold"], "20");
    assert_eq!(calls[0].params["limit"], "10");
    let labels: Vec<String> = job
        .result
        .unwrap()
        .predictions
        .into_iter()
        .map(|p| p.label)
        .collect();
    assert_eq!(labels, ["Espresso", "Tasse", "Kaffee"]);
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_the_job_at_once_with_provider_auth() {
    let fake = FakeImagga::start(KEY, SECRET, vec![]).await;
    let app = app(
        ImaggaConfig {
            secret: Secret::new("not-the-secret"),
            ..config(&fake)
        },
        3,
    )
    .await;
    let job = run_one(&app, JobStatus::Failed).await;
    assert_eq!(job.attempts, 1, "not retried");
    let error = job.error.unwrap();
    assert_eq!(error.code, ErrorCode::ProviderAuth);
    assert!(error.message.contains("401"), "{}", error.message);
    assert!(!error.message.contains("not-the-secret"));
    assert_eq!(fake.unauthorized(), 1);
    assert!(fake.uploads().is_empty());
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_quota_fails_the_job_with_provider_quota_and_deletes_the_upload() {
    let fake = FakeImagga::start(KEY, SECRET, vec![Answer::QuotaReached]).await;
    let app = app(config(&fake), 3).await;
    let job = run_one(&app, JobStatus::Failed).await;
    assert_eq!(job.attempts, 1, "not retried");
    let error = job.error.unwrap();
    assert_eq!(error.code, ErrorCode::ProviderQuota);
    assert!(
        error.message.contains("monthly limits"),
        "{}",
        error.message
    );
    assert_eq!(fake.uploads().len(), 1);
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_waits_for_retry_after_then_succeeds() {
    let fake = FakeImagga::start(
        KEY,
        SECRET,
        vec![Answer::TooManyRequests { retry_after_s: 1 }],
    )
    .await;
    let app = app(config(&fake), 3).await;
    let job = run_one(&app, JobStatus::Succeeded).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(codes(&job), [ErrorCode::ProviderRateLimited]);
    // The backoff alone would retry after 10–20 ms; the API asked for a second.
    let refused = fake.tags_calls()[0].answered_at;
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 2);
    let waited = uploads[1].at - refused;
    assert!(waited >= Duration::from_millis(990), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_attempts_are_used_up() {
    let fake = FakeImagga::start(KEY, SECRET, vec![Answer::ServerError; 3]).await;
    let app = app(config(&fake), 3).await;
    let job = run_one(&app, JobStatus::Failed).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(codes(&job), [ErrorCode::ProviderUnavailable; 3]);
    assert_eq!(job.error.unwrap().code, ErrorCode::ProviderUnavailable);
    assert_eq!(fake.uploads().len(), 3);
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_then_success() {
    let fake = FakeImagga::start(KEY, SECRET, vec![Answer::ServerError]).await;
    let app = app(config(&fake), 3).await;
    let job = run_one(&app, JobStatus::Succeeded).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(codes(&job), [ErrorCode::ProviderUnavailable]);
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_times_out_and_is_retried() {
    let fake = FakeImagga::start(KEY, SECRET, vec![Answer::Late(Duration::from_secs(3))]).await;
    let app = app(
        ImaggaConfig {
            timeout: Duration::from_millis(500),
            ..config(&fake)
        },
        3,
    )
    .await;
    let job = run_one(&app, JobStatus::Succeeded).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(codes(&job), [ErrorCode::ProviderTimeout]);
    // The upload of the attempt that timed out was deleted too.
    assert_eq!(fake.uploads().len(), 2);
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_fails_the_job_with_provider_protocol() {
    let fake = FakeImagga::start(KEY, SECRET, vec![Answer::Malformed]).await;
    let app = app(config(&fake), 3).await;
    let job = run_one(&app, JobStatus::Failed).await;
    assert_eq!(job.attempts, 1, "not retried");
    assert_eq!(job.error.unwrap().code, ErrorCode::ProviderProtocol);
    assert_eq!(fake.uploads().len(), 1);
    fake.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_is_retried_as_provider_unavailable() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let fake = FakeImagga::start(KEY, SECRET, vec![]).await;
    let app = app(
        ImaggaConfig {
            url: format!("http://127.0.0.1:{port}"),
            ..config(&fake)
        },
        2,
    )
    .await;
    let job = run_one(&app, JobStatus::Failed).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(codes(&job), [ErrorCode::ProviderUnavailable; 2]);
}
