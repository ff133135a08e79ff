//! Webhooks end to end: the real service and deliverer calling a receiver on loopback, port 0,
//! that verifies every signature with the `standardwebhooks` crate (the specification's own
//! implementation, independent of ours) and can fail N times, answer 410 or 429, hang, or go
//! away.

use crate::helpers::{assert_error, fixture, Options, TestApp};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use imgclass_core::{JobId, JobStatus};
use imgclass_server::api::views::JobView;
use imgclass_store::{Delivery, DeliveryStatus};
use imgclass_worker::webhooks::{Deliverer, WebhookConfig, WebhookSecret};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwK1vZ7yWmQ3s=";

/// How the receiver answers one call.
#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Call {
    id: String,
    timestamp: i64,
    body: Value,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    script: Vec<Reply>,
    calls: Vec<Call>,
    bad_signatures: Vec<String>,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    inner: Arc<Mutex<Inner>>,
    called: Arc<Notify>,
    server: Arc<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Answers as `script` says, then 200.
    async fn start(script: Vec<Reply>) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner {
            script,
            ..Inner::default()
        }));
        let called = Arc::new(Notify::new());
        let verifier = Arc::new(standardwebhooks::Webhook::new(SECRET).unwrap());
        let (i, c) = (inner.clone(), called.clone());
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (inner, called, verifier) = (i.clone(), c.clone(), verifier.clone());
                async move { receive(inner, called, verifier, headers, body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inner,
            called,
            server: Arc::new(server),
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Goes away: its port refuses connections from now on.
    fn stop(&self) {
        self.server.abort();
    }

    /// Waits until it has had `n` calls.
    async fn wait_calls(&self, n: usize) -> Vec<Call> {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let notified = self.called.notified();
                let calls = self.calls();
                if calls.len() >= n {
                    return calls;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the receiver did not get {n} calls: {:?}", self.calls()))
    }

    fn assert_all_signed(&self) {
        let bad = self.inner.lock().unwrap().bad_signatures.clone();
        assert!(bad.is_empty(), "calls whose signature failed: {bad:?}");
    }
}

async fn receive(
    inner: Arc<Mutex<Inner>>,
    called: Arc<Notify>,
    verifier: Arc<standardwebhooks::Webhook>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let reply = {
        let mut inner = inner.lock().unwrap();
        if let Err(e) = verifier.verify(&body, &headers) {
            inner
                .bad_signatures
                .push(format!("{}: {e:?}", header("webhook-id")));
        }
        inner.calls.push(Call {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp").parse().unwrap_or(0),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Instant::now(),
        });
        if inner.script.is_empty() {
            Reply::Status(200)
        } else {
            inner.script.remove(0)
        }
    };
    called.notify_waiters();
    match reply {
        Reply::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Reply::TooMany(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Reply::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
    }
}

/// Webhooks on, loopback allowed (the receiver is on loopback), the schedule 1000× faster.
fn config() -> WebhookConfig {
    let mut c = WebhookConfig::new(WebhookSecret::parse(SECRET).unwrap());
    c.allow_private = true;
    c.schedule_scale = 0.001;
    c.timeout = Duration::from_secs(5);
    c
}

async fn app_with(config: WebhookConfig) -> TestApp {
    TestApp::with(Options {
        webhooks: Some(config),
        ..Options::default()
    })
    .await
}

async fn submit_hooked(app: &TestApp, url: &str, events: Option<&str>) -> JobId {
    let mut fields = vec![("webhook", url)];
    if let Some(e) = events {
        fields.push(("webhook_events", e));
    }
    let resp = app
        .upload_with(&[("coffee.png", fixture("coffee.png"))], &fields)
        .await;
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let body: Value = resp.json().await.unwrap();
    body["jobs"][0]["id"].as_str().unwrap().parse().unwrap()
}

/// Waits until the job's deliveries satisfy `done` (the outcome is stored right after the
/// receiver answers; there is no event for it, so the store is looked at every 20 ms).
async fn wait_deliveries(
    app: &TestApp,
    job: JobId,
    done: impl Fn(&[Delivery]) -> bool,
) -> Vec<Delivery> {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let d = app.store.deliveries(job).await.unwrap();
            if done(&d) {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match waited {
        Ok(d) => d,
        Err(_) => panic!(
            "deliveries did not get there: {:?}",
            app.store.deliveries(job).await.unwrap()
        ),
    }
}

fn settled(d: &[Delivery]) -> bool {
    !d.is_empty() && d.iter().all(|d| d.status != DeliveryStatus::Pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_delivered_once_signed_with_its_view() {
    let rx = Receiver::start(vec![]).await;
    let app = app_with(config()).await;
    let id = submit_hooked(&app, &rx.url, None).await;
    app.wait_for(id, JobStatus::Succeeded).await;
    let calls = rx.wait_calls(1).await;
    let deliveries = wait_deliveries(&app, id, settled).await;
    rx.assert_all_signed();

    // Only the end is delivered by default (not running).
    assert_eq!(deliveries.len(), 1);
    assert_eq!(calls.len(), 1);
    let d = &deliveries[0];
    assert_eq!(d.status, DeliveryStatus::Delivered);
    assert_eq!(d.attempts, 1);
    assert_eq!(calls[0].id, d.id);
    let now = chrono::Utc::now().timestamp();
    assert!((now - calls[0].timestamp).abs() < 60);

    // The body is the job's public view, as GET /api/jobs/{id} shows it, and the event type.
    let (_, view) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(calls[0].body["type"], "job.succeeded");
    assert_eq!(calls[0].body["data"], view);
    assert_eq!(view["webhook"]["url"], rx.url);
    assert_eq!(
        view["webhook"]["events"],
        serde_json::json!(["succeeded", "failed", "canceled"])
    );

    // The attempts are visible.
    let (status, list) = app.get(&format!("/api/jobs/{id}/deliveries")).await;
    assert_eq!(status, 200);
    let only = &list["deliveries"][0];
    assert_eq!(only["id"], d.id.as_str());
    assert_eq!(only["status"], "delivered");
    assert_eq!(only["attempt_log"][0]["status_code"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_is_delivered_when_asked_for() {
    let rx = Receiver::start(vec![]).await;
    let app = app_with(config()).await;
    let id = submit_hooked(&app, &rx.url, Some("running,succeeded")).await;
    app.wait_for(id, JobStatus::Succeeded).await;
    let calls = rx.wait_calls(2).await;
    wait_deliveries(&app, id, |d| d.len() == 2 && settled(d)).await;
    rx.assert_all_signed();
    let mut types: Vec<String> = calls
        .iter()
        .map(|c| c.body["type"].as_str().unwrap().to_string())
        .collect();
    types.sort();
    assert_eq!(types, ["job.running", "job.succeeded"]);
    assert_ne!(calls[0].id, calls[1].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_on_the_schedule_with_the_same_id() {
    let rx = Receiver::start(vec![
        Reply::Status(500),
        Reply::Status(502),
        Reply::Status(500),
    ])
    .await;
    let app = app_with(config()).await;
    let id = submit_hooked(&app, &rx.url, None).await;
    let calls = rx.wait_calls(4).await;
    let d = wait_deliveries(&app, id, settled).await;
    rx.assert_all_signed();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].status, DeliveryStatus::Delivered);
    assert_eq!(d[0].attempts, 4);
    let codes: Vec<Option<u16>> = d[0].attempt_log.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(500), Some(502), Some(500), Some(200)]);
    // One message: the same webhook-id on every attempt, and one delivery.
    assert!(calls.iter().all(|c| c.id == d[0].id), "{calls:?}");
    assert_eq!(calls.len(), 4);
    // The schedule, 1000× faster: 5 ms, 5 min → 300 ms, 30 min → 1.8 s (jitter ±10 %).
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_micros(4500), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(270), "{gaps:?}");
    assert!(gaps[1] < Duration::from_millis(1500), "{gaps:?}");
    assert!(gaps[2] >= Duration::from_millis(1620), "{gaps:?}");
    assert!(gaps[2] < Duration::from_millis(4000), "{gaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_the_retries() {
    let rx = Receiver::start(vec![Reply::Status(410)]).await;
    let app = app_with(config()).await;
    let id = submit_hooked(&app, &rx.url, None).await;
    rx.wait_calls(1).await;
    let d = wait_deliveries(&app, id, settled).await;
    assert_eq!((d[0].status, d[0].attempts), (DeliveryStatus::Gone, 1));
    assert_eq!(app.store.next_delivery_due().await.unwrap(), None);
    assert_eq!(rx.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_capped() {
    let rx = Receiver::start(vec![Reply::Status(500); 10]).await;
    let app = app_with(WebhookConfig {
        max_attempts: 3,
        ..config()
    })
    .await;
    let id = submit_hooked(&app, &rx.url, None).await;
    let d = wait_deliveries(&app, id, settled).await;
    assert_eq!((d[0].status, d[0].attempts), (DeliveryStatus::Failed, 3));
    assert_eq!(rx.calls().len(), 3);
    rx.assert_all_signed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_of_a_429_is_waited_out() {
    let rx = Receiver::start(vec![Reply::TooMany(1)]).await;
    let app = app_with(config()).await;
    let id = submit_hooked(&app, &rx.url, None).await;
    let calls = rx.wait_calls(2).await;
    let d = wait_deliveries(&app, id, settled).await;
    assert_eq!(d[0].status, DeliveryStatus::Delivered);
    assert_eq!(d[0].attempt_log[0].status_code, Some(429));
    // The schedule alone would wait 5 ms.
    let gap = calls[1].at - calls[0].at;
    assert!(gap >= Duration::from_millis(990), "{gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_does_not_slow_jobs() {
    let rx = Receiver::start(vec![Reply::Hang; 20]).await;
    let app = app_with(WebhookConfig {
        timeout: Duration::from_secs(4),
        max_attempts: 1,
        ..config()
    })
    .await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit_hooked(&app, &rx.url, Some("running,succeeded")).await);
    }
    for id in &ids {
        app.wait_for(*id, JobStatus::Succeeded).await;
    }
    let jobs_done = started.elapsed();
    // Every job finished while its webhook calls were still hanging: none has an outcome yet.
    for id in &ids {
        let d = app.store.deliveries(*id).await.unwrap();
        assert!(d.iter().all(|d| d.attempts == 0), "{d:?}");
    }
    assert!(jobs_done < Duration::from_secs(4), "{jobs_done:?}");
    // The hanging calls end at the timeout, as failed attempts.
    for id in &ids {
        let d = wait_deliveries(&app, *id, |d| d.len() == 2 && settled(d)).await;
        for delivery in d {
            assert_eq!(delivery.status, DeliveryStatus::Failed);
            let error = delivery.attempt_log[0].error.clone().unwrap();
            assert!(error.contains("timeout"), "{error}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_went_away_is_retried_then_given_up() {
    let rx = Receiver::start(vec![]).await;
    rx.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let app = app_with(WebhookConfig {
        max_attempts: 2,
        ..config()
    })
    .await;
    let id = submit_hooked(&app, &rx.url, None).await;
    let d = wait_deliveries(&app, id, settled).await;
    assert_eq!((d[0].status, d[0].attempts), (DeliveryStatus::Failed, 2));
    for a in &d[0].attempt_log {
        assert_eq!(a.status_code, None);
        assert!(a.error.as_deref().unwrap().contains("connect"), "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_retry_resumes_the_delivery() {
    let rx = Receiver::start(vec![Reply::Status(503)]).await;
    // The retry comes 5 s × 0.2 = about a second later: time to stop this node first.
    let slow = WebhookConfig {
        schedule_scale: 0.2,
        ..config()
    };
    let mut app = app_with(slow.clone()).await;
    let id = submit_hooked(&app, &rx.url, None).await;
    rx.wait_calls(1).await;
    wait_deliveries(&app, id, |d| d.len() == 1 && d[0].attempts == 1).await;
    app.deliverer.take().unwrap().shutdown().await;

    // Another process on the same database takes over.
    let store = imgclass_store::connect(&app.db_url).await.unwrap();
    let other = Deliverer::start::<JobView>(
        store,
        WebhookConfig {
            node: "other-node".into(),
            ..slow
        },
    )
    .unwrap();
    let calls = rx.wait_calls(2).await;
    let d = wait_deliveries(&app, id, settled).await;
    assert_eq!((d[0].status, d[0].attempts), (DeliveryStatus::Delivered, 2));
    assert_eq!(calls[0].id, calls[1].id);
    assert_eq!(rx.calls().len(), 2);
    rx.assert_all_signed();
    other.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_and_bad_webhooks_are_refused_at_submission() {
    let app = app_with(WebhookConfig {
        allow_private: false,
        ..config()
    })
    .await;
    let image = || vec![("coffee.png", fixture("coffee.png"))];
    for (url, says) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "loopback"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://10.0.0.7/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("ftp://example.com/hook", "http"),
        ("not a url", "not a URL"),
    ] {
        let resp = app.upload_with(&image(), &[("webhook", url)]).await;
        let message = assert_error(resp, 422, "invalid_webhook").await;
        assert!(message.contains(says), "{url}: {message}");
    }
    let resp = app
        .upload_with(
            &image(),
            &[
                ("webhook", "https://93.184.215.14/hook"),
                ("webhook_events", "finished"),
            ],
        )
        .await;
    assert_error(resp, 422, "invalid_webhook").await;
    // Nothing was stored.
    let (_, list) = app.get("/api/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);

    // A server without a secret sends no webhooks and says so.
    let plain = TestApp::without_workers().await;
    let resp = plain
        .upload_with(&image(), &[("webhook", "https://93.184.215.14/hook")])
        .await;
    let message = assert_error(resp, 422, "invalid_webhook").await;
    assert!(message.contains("--webhook-secret"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_checked_again_when_connecting() {
    // The API accepted the name (as if it resolved to a public address then); by the time of
    // the call it resolves to loopback, which the deliverer refuses.
    let rx = Receiver::start(vec![]).await;
    let port = rx.url.rsplit(':').next().unwrap().to_string();
    let by_name = format!("http://localhost:{port}");
    let app = TestApp::with(Options {
        webhooks: Some(config()),
        deliverer: Some(Some(WebhookConfig {
            allow_private: false,
            max_attempts: 2,
            ..config()
        })),
        ..Options::default()
    })
    .await;
    let id = submit_hooked(&app, &by_name, None).await;
    let d = wait_deliveries(&app, id, settled).await;
    assert_eq!((d[0].status, d[0].attempts), (DeliveryStatus::Failed, 2));
    let error = d[0].attempt_log[0].error.clone().unwrap();
    assert!(
        error.contains("refused") && error.contains("loopback"),
        "{error}"
    );
    assert!(rx.calls().is_empty());

    // An IP literal never reaches a resolver; it is checked too.
    let literal = submit_hooked(&app, &rx.url, None).await;
    let d = wait_deliveries(&app, literal, settled).await;
    assert_eq!(d[0].status, DeliveryStatus::Failed);
    assert!(rx.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_webhook_serves_jobs_that_name_none() {
    let rx = Receiver::start(vec![]).await;
    let app = app_with(WebhookConfig {
        default_url: Some(rx.url.clone()),
        ..config()
    })
    .await;
    let id = app.submit(&[("coffee.png", fixture("coffee.png"))]).await[0];
    let calls = rx.wait_calls(1).await;
    assert_eq!(calls[0].body["data"]["id"], id.to_string());
    rx.assert_all_signed();
}
