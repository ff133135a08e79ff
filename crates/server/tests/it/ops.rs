//! Running it for others: cross-origin access (closed unless an origin is listed) and readiness.

use crate::helpers::{assert_error, Options, TestApp};
use axum::http::HeaderValue;
use imgclass_server::ops::Readiness;
use imgclass_server::HttpConfig;
use reqwest::Method;
use std::sync::atomic::Ordering;

const ALLOWED: &str = "https://app.example.com";

async fn with_http(http: HttpConfig) -> TestApp {
    TestApp::with(Options {
        workers: 0,
        http,
        ..Options::default()
    })
    .await
}

async fn preflight(app: &TestApp, origin: &str, method: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, app.url("/api/jobs"))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_origin_passes_the_preflight_and_others_do_not() {
    let app = with_http(HttpConfig {
        cors_origins: vec![HeaderValue::from_static(ALLOWED)],
        ..HttpConfig::default()
    })
    .await;
    let token = app.token("web", &imgclass_core::Scope::DEFAULT).await;

    // Allowed: the preflight names the origin, the method and the headers the page sends,
    // and it needs no token (a browser never sends one with a preflight).
    let resp = preflight(&app, ALLOWED, "POST").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin"), Some(ALLOWED));
    let methods = header(&resp, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let headers = header(&resp, "access-control-allow-headers").unwrap();
    assert!(
        headers.contains("authorization") && headers.contains("content-type"),
        "{headers}"
    );
    // The actual request then carries the origin back, and shows the headers clients read.
    let resp = app
        .request(Method::GET, "/api/jobs", Some(&token))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin"), Some(ALLOWED));
    assert!(header(&resp, "access-control-expose-headers")
        .unwrap()
        .contains("retry-after"));

    // Refused: another origin gets no permission, on the preflight or the request.
    let resp = preflight(&app, "https://evil.example.net", "POST").await;
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    let resp = app
        .request(Method::GET, "/api/jobs", Some(&token))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_origin_access_is_closed_by_default() {
    let app = with_http(HttpConfig::default()).await;
    let resp = preflight(&app, ALLOWED, "POST").await;
    assert_ne!(resp.status(), 200);
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
    let resp = app
        .client
        .get(app.url("/api/jobs"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "same-origin use is unchanged");
    assert_eq!(header(&resp, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_model_and_the_database() {
    let (readiness, loaded) = Readiness::with_workers();
    let app = with_http(HttpConfig {
        readiness,
        ..HttpConfig::default()
    })
    .await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["reasons"][0], "the model is not loaded yet");
    // Liveness is another question: the process is alive.
    assert_eq!(app.get("/healthz").await.0, 200);

    loaded.store(true, Ordering::Release);
    let (status, body) = app.get("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));

    // A node without workers needs only the database.
    let api_only = with_http(HttpConfig::default()).await;
    assert_eq!(api_only.get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id() {
    let app = with_http(HttpConfig::default()).await;
    let id_of = |resp: &reqwest::Response| header(resp, "x-request-id").map(str::to_string);
    let resp = app
        .client
        .get(app.url("/api/jobs"))
        .header("x-request-id", "client-abc.1")
        .send()
        .await
        .unwrap();
    assert_eq!(id_of(&resp).as_deref(), Some("client-abc.1"));
    // None, or one that is not sensible: a new one.
    for sent in [None, Some("x".repeat(200)), Some("has space".to_string())] {
        let mut req = app.client.get(app.url("/healthz"));
        if let Some(s) = &sent {
            req = req.header("x-request-id", s.as_str());
        }
        let got = id_of(&req.send().await.unwrap()).expect("an id");
        assert_eq!(got.len(), 32, "{got}");
        assert!(got.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    // Errors too.
    let resp = app
        .client
        .get(app.url("/api/jobs/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(id_of(&resp).is_some());
}

/// A small tmpfs mounted for one test (root only); unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A PNG of noise (it does not compress): about `3 × side²` bytes.
fn noisy_png(side: u32, seed: u32) -> Vec<u8> {
    use image::ImageEncoder;
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let pixels: Vec<u8> = (0..side * side * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, side, side, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_full_disk_until_a_write_succeeds_again() {
    // A real full disk: a 4 MiB tmpfs holding the database, a third of it taken by a file
    // that is deleted later.
    let disk = match SmallDisk::mount(4 << 20) {
        Some(d) => d,
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must be able to mount a tmpfs for this test (it runs as root)")
        }
        None => {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root)");
            return;
        }
    };
    let filler = disk.path.join("filler");
    std::fs::write(&filler, vec![1u8; 1400 << 10]).unwrap();
    // No workers: nothing writes but the uploads of this test.
    let app = TestApp::with(Options {
        workers: 0,
        database_file: Some(disk.path.join("t.db")),
        ..Options::default()
    })
    .await;
    assert_eq!(app.get("/readyz").await.0, 200);

    // Upload ~200 KB images until the disk refuses one.
    let mut stored = 0;
    loop {
        let resp = app.upload(&[("big.png", noisy_png(260, stored + 1))]).await;
        if resp.status() == 202 {
            stored += 1;
            assert!(stored < 100, "the disk never filled");
            continue;
        }
        assert_error(resp, 507, "insufficient_storage").await;
        break;
    }
    assert!(stored > 0);

    // Not ready, saying why; alive all the same, and reads still work.
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    let reason = body["reasons"][0].as_str().unwrap();
    assert!(reason.contains("storage is full"), "{reason}");
    assert!(reason.contains("507"), "{reason}");
    assert_eq!(app.get("/healthz").await.0, 200);
    let (_, list) = app.get("/api/jobs?limit=200").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), stored as usize);
    // Still full: still not ready.
    assert_eq!(app.get("/readyz").await.0, 503);

    // Space returns; the next write succeeds, and the node is ready again.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(app.get("/readyz").await.0, 503, "until a write succeeds");
    assert_eq!(
        app.upload(&[("small.png", noisy_png(8, 9999))])
            .await
            .status(),
        202
    );
    let (status, body) = app.get("/readyz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ready")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_deleted_under_the_server_refuses_uploads_and_readyz_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("served.db");
    let app = TestApp::with(Options {
        workers: 0,
        database_file: Some(file.clone()),
        ..Options::default()
    })
    .await;
    assert_eq!(
        app.upload(&[("before.png", noisy_png(8, 1))])
            .await
            .status(),
        202
    );
    assert_eq!(app.get("/readyz").await.0, 200);

    for name in ["served.db", "served.db-wal", "served.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    // Uploads are refused (never 202 into a file no restart would find), saying when to retry.
    for (name, seed) in [("after.png", 2), ("again.png", 3)] {
        let resp = app.upload(&[(name, noisy_png(8, seed))]).await;
        assert_eq!(header(&resp, "retry-after"), Some("5"));
        let message = assert_error(resp, 503, "unavailable").await;
        assert!(message.contains("/readyz"), "{message}");
    }
    // Not ready, saying why; still alive.
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    let reasons = body["reasons"].to_string();
    assert!(reasons.contains("refuses writes"), "{reasons}");
    assert!(reasons.contains("was deleted"), "{reasons}");
    assert!(reasons.contains(&file.display().to_string()), "{reasons}");
    assert_eq!(app.get("/healthz").await.0, 200);
    // No empty database was made in its place by any connection.
    let _ = app.get("/api/jobs").await;
    assert!(
        !file.exists(),
        "a new file was created at {}",
        file.display()
    );
}
