//! `GET /metrics` after real jobs, parsed with a Prometheus text parser; both of its formats
//! checked with Prometheus' own `promtool`; its series bounded whatever clients send.

use crate::events::SseReader;
use crate::helpers::{assert_error, fixture, Options, TestApp};
use imgclass_core::{JobStatus, Scope};
use imgclass_server::metrics::Metrics;
use imgclass_server::HttpConfig;
use imgclass_worker::WorkerConfig;
use prometheus_parse::{Scrape, Value};
use reqwest::Method;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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

/// `/metrics` with the `Accept` header `accept` (none when empty): its content type and body.
async fn fetch(app: &TestApp, accept: &str) -> (String, String) {
    let mut req = app.request(Method::GET, "/metrics", None);
    if !accept.is_empty() {
        req = req.header("accept", accept);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    (content_type, resp.text().await.unwrap())
}

async fn scrape(app: &TestApp, token: Option<&str>) -> Scrape {
    let resp = app
        .request(Method::GET, "/metrics", token)
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], OPENMETRICS);
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// The series of an exposition (its sample lines without their values), in either format.
fn series(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').map_or(l, |(series, _)| series))
        .collect()
}

/// The value of the sample `name` whose labels include `labels`.
/// A scrape taken once `imgclass_jobs_finished_total{labels}` has reached `count`: the workers
/// count an outcome once the store has stored it, the moment its event goes out, so the count
/// may trail the event a test waited for by a moment.
async fn scrape_once_counted(app: &TestApp, labels: &[(&str, &str)], count: f64) -> Scrape {
    let mut s = scrape(app, None).await;
    for _ in 0..500 {
        if value(&s, "imgclass_jobs_finished_total", labels) == Some(count) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        s = scrape(app, None).await;
    }
    s
}

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
    let finished = [("status", "succeeded"), ("error_code", "")];
    let s = scrape_once_counted(&app, &finished, 2.0).await;

    assert_eq!(
        value(&s, "imgclass_jobs", &[("status", "succeeded")]),
        Some(2.0)
    );
    // Each job's model is a label of the finished count and of the model's own timings.
    let model = ("model", "efficientnet-lite0");
    assert_eq!(
        value(
            &s,
            "imgclass_jobs_finished_total",
            &[finished[0], finished[1], model]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&s, "imgclass_job_inference_seconds", &[model]),
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
        value(&s, "imgclass_db_connections_max", &[("pool", "writer")]),
        Some(1.0)
    );
    let writer = |state| {
        value(
            &s,
            "imgclass_db_connections",
            &[("pool", "writer"), ("state", state)],
        )
    };
    let (idle, in_use) = (writer("idle").unwrap(), writer("in_use").unwrap());
    assert!((0.0..=1.0).contains(&(idle + in_use)), "{idle} + {in_use}");
    assert!(
        !s.samples
            .iter()
            .any(|x| x.metric == "imgclass_db_connections" && x.labels.get("state") == Some("max")),
        "the limit is a metric of its own"
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
    let s = scrape_once_counted(
        &app,
        &[("status", "failed"), ("error_code", "injected_failure")],
        2.0,
    )
    .await;
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

/// Sends `n` requests no route expects: made-up methods on a route, on a route with a parameter
/// and on paths that match nothing, and standard methods on random paths.
async fn flood(app: &TestApp, n: usize) {
    for i in 0..n {
        let made_up =
            Method::from_bytes(format!("M{}{i}", rand::random::<u32>()).as_bytes()).unwrap();
        let random_path = format!("/{}/{i}", uuid::Uuid::new_v4().simple());
        let job = format!("/api/jobs/{}", uuid::Uuid::new_v4());
        for (method, path) in [
            (made_up.clone(), "/healthz"),
            (made_up.clone(), job.as_str()),
            (made_up, random_path.as_str()),
            (Method::GET, random_path.as_str()),
            (Method::from_bytes(b"get").unwrap(), "/healthz"),
        ] {
            let resp = app.request(method, path, None).send().await.unwrap();
            assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
        }
    }
}

fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_series() {
    let (app, _) = app_with_metrics(WorkerConfig::default(), 3).await;
    // The scrape's own series first.
    fetch(&app, "").await;
    let (_, before) = fetch(&app, "").await;
    let before = series(&before).len();

    flood(&app, 20).await;
    let (_, text) = fetch(&app, "").await;
    let after_first = series(&text).len();
    // At most a few new label sets (method `other` on the routes above, route `unmatched`),
    // each a counter per status and a histogram (15 buckets, +Inf, sum, count).
    assert!(
        after_first <= before + 8 * 19,
        "{before} series before, {after_first} after 100 requests"
    );
    assert_eq!(
        line_value(
            &text,
            "imgclass_http_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"}"
        ),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        line_value(
            &text,
            "imgclass_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ),
        Some(20.0),
        "{text}"
    );
    assert!(
        line_value(
            &text,
            "imgclass_http_request_duration_seconds_count{method=\"other\",route=\"/healthz\"}"
        ) == Some(40.0),
        "{text}"
    );

    // More of the same adds nothing at all.
    flood(&app, 40).await;
    let (_, text) = fetch(&app, "").await;
    assert_eq!(series(&text).len(), after_first, "{text}");
    assert!(!text.contains("M1") && !text.contains("M2"), "{text}");
}

/// `promtool`, from Prometheus (Debian: `apt-get install prometheus`), or `None` when it is not
/// installed outside CI.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("promtool");
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("promtool is not installed; in CI the metrics must be checked with it");
    }
    eprintln!("SKIPPED: the promtool checks of /metrics (apt-get install prometheus to run them)");
    None
}

/// Runs promtool with `args` and `input` on its standard input: its exit status and output.
fn run_promtool(promtool: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_formats_pass_promtool() {
    let Some(promtool) = promtool() else { return };
    let config = WorkerConfig {
        inject_failure_rate: 1.0,
        ..WorkerConfig::default()
    };
    let (app, _) = app_with_metrics(config, 1).await;
    // Every family with samples: a job ended, a 404, a made-up method.
    let ids = app.submit(&[("coffee.png", fixture("coffee.png"))]).await;
    app.wait_for(ids[0], JobStatus::Failed).await;
    assert_eq!(app.get("/no/such/page").await.0, 404);
    let made_up = Method::from_bytes(b"M123").unwrap();
    app.request(made_up, "/healthz", None).send().await.unwrap();
    fetch(&app, "").await;

    // The text format 0.0.4: by default, for `*/*`, and for a client that prefers it.
    for accept in [
        "",
        "*/*",
        "text/plain",
        "text/plain;version=0.0.4",
        "application/openmetrics-text;version=1.0.0;q=0.2,text/plain;version=0.0.4;q=0.8",
        "application/json",
    ] {
        let (content_type, _) = fetch(&app, accept).await;
        assert_eq!(content_type, TEXT, "Accept: {accept}");
    }
    let (_, text) = fetch(&app, "text/plain;version=0.0.4").await;
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE imgclass_jobs_finished_total counter\n"),
        "{text}"
    );
    let (ok, problems) = run_promtool(promtool, &["check", "metrics"], &text);
    assert!(
        ok && problems.is_empty(),
        "promtool check metrics:\n{problems}\n{text}"
    );

    // OpenMetrics, for Prometheus and any client that prefers it.
    for accept in [
        PROMETHEUS_ACCEPT,
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0",
        "text/plain;version=0.0.4;q=0.3, application/openmetrics-text;version=1.0.0;q=0.4",
    ] {
        let (content_type, _) = fetch(&app, accept).await;
        assert_eq!(content_type, OPENMETRICS, "Accept: {accept}");
    }
    let (_, om) = fetch(&app, PROMETHEUS_ACCEPT).await;
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE imgclass_jobs_finished counter\n"),
        "{om}"
    );
    // The same series in both formats.
    let (_, text) = fetch(&app, "").await;
    assert_eq!(series(&om), series(&text));
    // `promtool check metrics` reads the 0.0.4 format only (it takes an OpenMetrics counter's
    // family for a metric without samples); promtool reads OpenMetrics with Prometheus' own
    // parser when it backfills, which wants a timestamp on every sample.
    let stamped: String = om
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("{l} 1700000000\n")
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("metrics.om");
    std::fs::write(&input, stamped).unwrap();
    let blocks = dir.path().join("blocks");
    let (ok, output) = run_promtool(
        promtool,
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            input.to_str().unwrap(),
            blocks.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        ok,
        "promtool tsdb create-blocks-from openmetrics:\n{output}\n{om}"
    );
    // Its table: BLOCK ULID, MIN TIME, MAX TIME, DURATION, NUM SAMPLES, NUM CHUNKS, NUM SERIES, SIZE.
    let read: usize = output
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(6)?.parse().ok())
        .unwrap_or_else(|| panic!("promtool's table: {output}"));
    assert_eq!(read, series(&om).len(), "{output}");
}
