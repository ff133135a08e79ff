//! `GET /metrics` after real jobs, parsed with a Prometheus text parser.

use crate::events::SseReader;
use crate::helpers::{assert_error, fixture, Options, TestApp};
use imgclass_core::{JobStatus, Scope};
use imgclass_server::metrics::Metrics;
use imgclass_server::HttpConfig;
use imgclass_worker::WorkerConfig;
use prometheus_parse::{Scrape, Value};
use reqwest::Method;
use std::sync::Arc;

async fn app_with_metrics(
    worker_config: WorkerConfig,
    max_attempts: u32,
) -> (TestApp, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let app = TestApp::with(Options {
        workers: 1,
        max_attempts,
        worker_config: WorkerConfig {
            metrics: Some(metrics.clone()),
            ..worker_config
        },
        http: HttpConfig {
            metrics: Some(metrics.clone()),
            metrics_on_api_port: true,
            ..HttpConfig::default()
        },
        ..Options::default()
    })
    .await;
    (app, metrics)
}

async fn scrape(app: &TestApp, token: Option<&str>) -> Scrape {
    let resp = app
        .request(Method::GET, "/metrics", token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_some_jobs_counts_them() {
    let (app, _) = app_with_metrics(WorkerConfig::default(), 3).await;
    let mut stream = SseReader::open_as(&app, None, None).await;
    let ids = app
        .submit(&[
            ("coffee.png", fixture("coffee.png")),
            ("rocket.jpg", fixture("rocket.jpg")),
        ])
        .await;
    for id in &ids {
        app.wait_for(*id, JobStatus::Succeeded).await;
    }
    stream.next().await;
    let s = scrape(&app, None).await;

    assert_eq!(
        value(&s, "imgclass_jobs", &[("status", "succeeded")]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "imgclass_jobs", &[("status", "queued")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "imgclass_jobs_finished_total",
            &[("status", "succeeded"), ("error_code", "")]
        ),
        Some(2.0)
    );
    for h in [
        "imgclass_job_queue_wait_seconds_count",
        "imgclass_job_decode_seconds_count",
        "imgclass_job_inference_seconds_count",
        "imgclass_job_end_to_end_seconds_count",
    ] {
        assert_eq!(value(&s, h, &[]), Some(2.0), "{h}");
    }
    let inference_sum = value(&s, "imgclass_job_inference_seconds_sum", &[]).unwrap();
    assert!(
        inference_sum > 0.0 && inference_sum < 60.0,
        "{inference_sum}"
    );
    let claims = value(&s, "imgclass_claim_batch_size_count", &[]).unwrap();
    assert!((1.0..=2.0).contains(&claims), "{claims}");
    assert_eq!(value(&s, "imgclass_claim_batch_size_sum", &[]), Some(2.0));
    assert_eq!(
        value(
            &s,
            "imgclass_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/api/jobs"),
                ("status", "202")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "imgclass_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/api/jobs")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "imgclass_sse_clients", &[]), Some(1.0));
    assert_eq!(
        value(
            &s,
            "imgclass_db_connections",
            &[("pool", "writer"), ("state", "max")]
        ),
        Some(1.0)
    );
    assert!(value(&s, "imgclass_db_errors_total", &[("kind", "unavailable")]).is_some());
    assert_eq!(value(&s, "imgclass_rate_limit_waits_total", &[]), Some(0.0));

    // A closed stream is no longer counted; a 404 is counted under its route pattern.
    drop(stream);
    let missing = format!("/api/jobs/{}", imgclass_core::JobId::new());
    assert_eq!(app.get(&missing).await.0, 404);
    loop {
        let s = scrape(&app, None).await;
        if value(&s, "imgclass_sse_clients", &[]) == Some(0.0) {
            break;
        }
        tokio::task::yield_now().await;
    }
    // (The parser drops samples whose label values hold braces, as route patterns do; this
    // one is read from the text.)
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "imgclass_http_requests_total{method=\"GET\",route=\"/api/jobs/{id}\",status=\"404\"} 1\n"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_error_code_and_rate_limit_waits_too() {
    let config = WorkerConfig {
        inject_failure_rate: 1.0,
        rate_limit: Some(imgclass_store::RateLimit {
            jobs: 1,
            per: std::time::Duration::from_millis(300),
        }),
        ..WorkerConfig::default()
    };
    let (app, _) = app_with_metrics(config, 1).await;
    let ids = app
        .submit(&[
            ("a.png", fixture("coffee.png")),
            ("b.png", fixture("coffee.png")),
        ])
        .await;
    for id in &ids {
        app.wait_for(*id, JobStatus::Failed).await;
    }
    let s = scrape(&app, None).await;
    assert_eq!(
        value(
            &s,
            "imgclass_jobs_finished_total",
            &[("status", "failed"), ("error_code", "injected_failure")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "imgclass_jobs", &[("status", "failed")]),
        Some(2.0)
    );
    let waits = value(&s, "imgclass_rate_limit_waits_total", &[]).unwrap();
    assert!(
        waits >= 1.0,
        "the second job waited for the rate limit: {waits}"
    );
    assert_eq!(
        value(&s, "imgclass_rate_limit_wait_seconds_count", &[]),
        Some(waits)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_metrics_need_admin_unless_on_their_own_port() {
    let (app, metrics) = app_with_metrics(WorkerConfig::default(), 3).await;
    let user = app.token("user", &Scope::DEFAULT).await;
    let admin = app.token("ops", &[Scope::Admin]).await;
    let resp = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();
    assert_error(resp, 401, "unauthorized").await;
    let resp = app
        .request(Method::GET, "/metrics", Some(&user))
        .send()
        .await
        .unwrap();
    assert_error(resp, 403, "forbidden").await;
    scrape(&app, Some(&admin)).await;

    // On a port of its own, no token is asked.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = imgclass_server::metrics_router(metrics, app.store.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("imgclass_jobs{status=\"queued\"}"), "{text}");
}
