//! Quotas over real HTTP: request and submission rates per token (per client address while the
//! API is open) answer 429 with Retry-After and RateLimit headers; queued jobs per token answer
//! 429 queue_full.

use crate::helpers::{assert_error, fixture, Options, TestApp};
use imgclass_core::Scope;
use imgclass_server::quota::QuotaConfig;
use imgclass_server::HttpConfig;
use imgclass_store::RateLimit;
use reqwest::Method;
use std::time::Duration;

fn per_hour(n: u32) -> Option<RateLimit> {
    Some(RateLimit {
        jobs: n,
        per: Duration::from_secs(3600),
    })
}

async fn with_quotas(quotas: QuotaConfig) -> TestApp {
    TestApp::with(Options {
        workers: 0,
        http: HttpConfig {
            quotas,
            ..HttpConfig::default()
        },
        ..Options::default()
    })
    .await
}

fn header(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_request_rate_gets_429_with_retry_after() {
    let app = with_quotas(QuotaConfig {
        requests: per_hour(3),
        ..QuotaConfig::default()
    })
    .await;
    let alice = app.token("alice", &Scope::DEFAULT).await;
    let bob = app.token("bob", &Scope::DEFAULT).await;
    for left in [2, 1, 0] {
        let resp = app
            .request(Method::GET, "/api/jobs", Some(&alice))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "ratelimit-limit"), Some(3));
        assert_eq!(header(&resp, "ratelimit-remaining"), Some(left));
        let reset = header(&resp, "ratelimit-reset").unwrap();
        assert!((1..=3600).contains(&reset), "{reset}");
        assert_eq!(header(&resp, "retry-after"), None);
    }
    let resp = app
        .request(Method::GET, "/api/stats", Some(&alice))
        .send()
        .await
        .unwrap();
    let retry_after = header(&resp, "retry-after").expect("Retry-After");
    assert!((1..=7200).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&resp, "ratelimit-remaining"), Some(0));
    let message = assert_error(resp, 429, "rate_limited").await;
    assert!(message.contains("try again"), "{message}");
    // Bob's budget is his own.
    let resp = app
        .request(Method::GET, "/api/jobs", Some(&bob))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The page and the probes are not the API: never limited.
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_the_client_address_has_the_quota() {
    let app = with_quotas(QuotaConfig {
        requests: per_hour(2),
        ..QuotaConfig::default()
    })
    .await;
    assert_eq!(app.get("/api/jobs").await.0, 200);
    assert_eq!(app.get("/api/jobs").await.0, 200);
    let resp = app.client.get(app.url("/api/jobs")).send().await.unwrap();
    assert!(header(&resp, "retry-after").is_some());
    assert_error(resp, 429, "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_count_images_and_queued_jobs_are_capped_per_token() {
    let app = with_quotas(QuotaConfig {
        submissions: per_hour(3),
        max_queued_per_token: Some(2),
        ..QuotaConfig::default()
    })
    .await;
    let alice = app.token("alice", &Scope::DEFAULT).await;
    let bob = app.token("bob", &Scope::DEFAULT).await;
    let first = app.submit_as(&alice, "a.png", fixture("coffee.png")).await;
    app.submit_as(&alice, "b.png", fixture("coffee.png")).await;
    // A third queued job would go over the cap.
    let resp = app.upload_as(&alice, "c.png", fixture("coffee.png")).await;
    let message = assert_error(resp, 429, "queue_full").await;
    assert!(message.contains("at most 2"), "{message}");
    // Bob's queue is his own.
    app.submit_as(&bob, "b.png", fixture("coffee.png")).await;
    // Once one of alice's jobs leaves the queue, she may submit again: her third image.
    let resp = app
        .request(
            Method::POST,
            &format!("/api/jobs/{first}/cancel"),
            Some(&alice),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.submit_as(&alice, "c.png", fixture("coffee.png")).await;
    // ... and a fourth is over the submission rate, whatever the queue.
    let resp = app
        .request(Method::DELETE, &format!("/api/jobs/{first}"), Some(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let ids: Vec<_> = app
        .store
        .list_jobs(&imgclass_store::ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs;
    for j in ids
        .iter()
        .filter(|j| j.file_name.as_deref() == Some("b.png"))
    {
        let _ = app.store.cancel(j.id).await;
    }
    let resp = app.upload_as(&alice, "d.png", fixture("coffee.png")).await;
    assert!(header(&resp, "retry-after").is_some());
    let message = assert_error(resp, 429, "rate_limited").await;
    assert!(message.contains("submitted images"), "{message}");
}
