//! `imgclass serve` with webhooks on: the flags reach the deliverer, and a receiver on loopback
//! gets a signed call for a job that named no webhook (`--webhook-default`). The signature is
//! checked here by hand, with the specification's algorithm.

use super::{bin, fixture, submit, Server};
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwK1vZ7yWmQ3s=";

/// The specification's check: HMAC-SHA256 over `id.timestamp.body` with the base64-decoded key,
/// compared to each `v1,` signature the header lists.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", get("webhook-id"), get("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    get("webhook-signature").split(' ').any(|s| s == expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_delivers_a_signed_webhook_to_the_default_url() {
    let got: Arc<Mutex<Vec<(bool, serde_json::Value)>>> = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (g, a) = (got.clone(), arrived.clone());
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let (got, arrived) = (g.clone(), a.clone());
            async move {
                let ok = verify(&headers, &body);
                got.lock()
                    .unwrap()
                    .push((ok, serde_json::from_slice(&body).unwrap()));
                arrived.notify_waiters();
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Server::start(
        &db,
        &[
            "--workers",
            "1",
            "--webhook-secret",
            SECRET,
            "--webhook-allow-private",
            "--webhook-default",
            &hook,
        ],
    );
    let id = submit(
        &server.base,
        "coffee.png",
        std::fs::read(fixture("coffee.png")).unwrap(),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let notified = arrived.notified();
            if !got.lock().unwrap().is_empty() {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("no webhook arrived");
    let (ok, body) = got.lock().unwrap()[0].clone();
    assert!(ok, "the signature does not verify");
    assert_eq!(body["type"], "job.succeeded");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["webhook"]["url"], hook.as_str());
}

#[test]
fn a_default_webhook_without_a_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-workers",
            "--database",
        ])
        .arg(format!("sqlite://{}/jobs.db", dir.path().display()))
        .args(["--webhook-default", "https://example.com/hook"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--webhook-secret"), "{err}");
}
