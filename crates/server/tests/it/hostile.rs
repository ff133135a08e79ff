//! Hostile and odd input over real HTTP on loopback: odd multipart parts, slow clients, error
//! bodies that must be JSON, empty files, raw image bodies. Timeouts are set short (1 s) and
//! every wait is bounded generously, so that a loaded machine makes these tests slower, never
//! wrong.

use crate::helpers::{assert_error, fixture, Options, TestApp};
use image::ImageEncoder;
use imgclass_classifier::ImageLimits;
use imgclass_server::ServeLimits;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far more than any timeout here needs, even on a loaded 2-core machine.
const GENEROUS: Duration = Duration::from_secs(30);

fn short_timeouts() -> ServeLimits {
    ServeLimits {
        header_read_timeout: Duration::from_secs(1),
        keep_alive_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..ServeLimits::default()
    }
}

fn tiny_png() -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&[200, 100, 50], 1, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A multipart body whose parts are given as raw header bytes and content.
fn multipart(parts: &[(&[u8], &[u8])]) -> (String, Vec<u8>) {
    let boundary = "hostile-boundary-7f3a";
    let mut body = Vec::new();
    for (headers, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        body.extend_from_slice(headers);
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn post_multipart(app: &TestApp, parts: &[(&[u8], &[u8])]) -> reqwest::Response {
    let (content_type, body) = multipart(parts);
    app.client
        .post(app.url("/api/jobs"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn job_count(app: &TestApp) -> usize {
    let (_, list) = app.get("/api/jobs").await;
    list["jobs"].as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_that_carries_a_file_is_a_file() {
    let app = TestApp::without_workers().await;
    let png = tiny_png();
    let resp = post_multipart(
        &app,
        &[
            (b"Content-Disposition: form-data; name=\"file\"; filename=\"plain.png\"", &png),
            (
                b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%E2%82%AC%20rates.png",
                &png,
            ),
            (
                b"Content-Disposition: form-data; name=\"file\"; filename=\"caf\xe9.png\"",
                &png,
            ),
            (
                b"Content-Disposition: form-data; name=\"photo\"\r\nContent-Type: image/png",
                &png,
            ),
            // A plain form field is not a file.
            (b"Content-Disposition: form-data; name=\"priority\"", b"1"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let names: Vec<Value> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["file_name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![
            Value::from("plain.png"),
            Value::from("\u{20ac} rates.png"),
            Value::from("caf\u{fffd}.png"),
            Value::Null,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_cannot_be_taken_refuses_the_request_and_is_named() {
    let app = TestApp::without_workers().await;
    let png = tiny_png();
    // A file content type without a file name: a file, and not an image.
    let resp = post_multipart(
        &app,
        &[
            (
                b"Content-Disposition: form-data; name=\"file\"; filename=\"ok.png\"",
                &png,
            ),
            (
                b"Content-Disposition: form-data; name=\"doc\"\r\nContent-Type: application/pdf",
                b"%PDF-1.4 not an image",
            ),
        ],
    )
    .await;
    let msg = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(msg.contains("part 2 (field \"doc\")"), "{msg}");

    // An RFC 5987 name that is not an image is refused under its decoded name.
    let resp = post_multipart(
        &app,
        &[(
            b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''notes%2Etxt",
            b"just text",
        )],
    )
    .await;
    let msg = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(msg.contains("notes.txt"), "{msg}");

    // A part whose headers are broken.
    let resp = post_multipart(
        &app,
        &[
            (
                b"Content-Disposition: form-data; name=\"file\"; filename=\"ok.png\"",
                &png,
            ),
            (b"this is not a header line", &png),
        ],
    )
    .await;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("part 2"),
        "{body}"
    );
    assert_eq!(job_count(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_parts_or_files_is_413() {
    let app = TestApp::without_workers().await;
    let field = b"Content-Disposition: form-data; name=\"priority\"".as_slice();
    let parts: Vec<(&[u8], &[u8])> = (0..129).map(|_| (field, b"1".as_slice())).collect();
    let msg = assert_error(post_multipart(&app, &parts).await, 413, "payload_too_large").await;
    assert!(msg.contains("part 129"), "{msg}");

    let png = tiny_png();
    let headers: Vec<Vec<u8>> = (0..65)
        .map(|i| {
            format!("Content-Disposition: form-data; name=\"file\"; filename=\"f{i}.png\"")
                .into_bytes()
        })
        .collect();
    let parts: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|h| (h.as_slice(), png.as_slice()))
        .collect();
    let msg = assert_error(post_multipart(&app, &parts).await, 413, "payload_too_large").await;
    assert!(msg.contains("f64.png"), "{msg}");
    assert_eq!(job_count(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_422() {
    let app = TestApp::without_workers().await;
    let resp = app
        .upload(&[("ok.png", tiny_png()), ("empty.png", Vec::new())])
        .await;
    let msg = assert_error(resp, 422, "empty_file").await;
    assert!(msg.contains("empty.png"), "{msg}");
    assert_eq!(job_count(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_image_body_is_one_file() {
    let app = TestApp::with(Options {
        workers: 0,
        limits: ImageLimits {
            max_bytes: 200_000,
            ..ImageLimits::default()
        },
        ..Options::default()
    })
    .await;
    let resp = app
        .client
        .post(app.url("/api/jobs?filename=rocket.jpg"))
        .header("content-type", "image/jpeg")
        .body(fixture("rocket.jpg"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["file_name"], "rocket.jpg");
    assert_eq!(jobs[0]["image"]["content_type"], "image/jpeg");

    // The type is still sniffed from the bytes, and the name is optional.
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .header("content-type", "image/png")
        .body(b"not a picture".to_vec())
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(msg.contains("the request body"), "{msg}");

    // Over the per-file limit.
    let resp = app
        .client
        .post(app.url("/api/jobs?filename=big.png"))
        .header("content-type", "image/png")
        .body(fixture("coffee.png"))
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 413, "payload_too_large").await;
    assert!(msg.contains("big.png"), "{msg}");

    // Empty.
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .header("content-type", "image/jpeg")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_error(resp, 422, "empty_file").await;

    // Neither multipart nor an image.
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(msg.contains("multipart"), "{msg}");
    assert_eq!(job_count(&app).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_error_is_json_with_a_stable_code() {
    let app = TestApp::without_workers().await;
    let id = imgclass_core::JobId::new();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("GET", "/api/jobs?limit=abc".into(), 400, "invalid_query"),
        ("GET", "/api/jobs?limit=-1".into(), 400, "invalid_query"),
        ("GET", "/api/jobs?limit=0".into(), 400, "invalid_query"),
        ("GET", "/api/jobs?limit=201".into(), 400, "invalid_query"),
        ("GET", "/api/events?after=abc".into(), 400, "invalid_query"),
        ("GET", "/api/jobs?status=done".into(), 400, "invalid_status"),
        ("GET", "/api/jobs/%FF%FE".into(), 400, "bad_request"),
        ("GET", "/api/nope".into(), 404, "not_found"),
        ("GET", "/api".into(), 404, "not_found"),
        ("POST", "/api/jobs/x/y/z".into(), 404, "not_found"),
        ("DELETE", "/api/jobs".into(), 405, "method_not_allowed"),
        (
            "GET",
            format!("/api/jobs/{id}/retry"),
            405,
            "method_not_allowed",
        ),
        ("PUT", "/api/stats".into(), 405, "method_not_allowed"),
    ];
    for (method, path, status, code) in cases {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{method} {path}"
        );
        if status == 405 {
            assert!(resp.headers().contains_key("allow"), "{method} {path}");
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{method} {path}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap().is_empty(),
            "{method} {path}"
        );
    }
    // Pages outside /api keep their plain 404.
    let resp = app.client.get(app.url("/nope.js")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_431_json() {
    let app = TestApp::without_workers().await;
    let resp = app
        .client
        .get(app.url("/api/jobs"))
        .header("x-big", "a".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_error(resp, 431, "headers_too_large").await;
    let mut req = app.client.get(app.url("/api/stats"));
    for i in 0..150 {
        req = req.header(format!("x-h{i}"), "1");
    }
    assert_error(req.send().await.unwrap(), 431, "headers_too_large").await;
}

/// Sends `head` on a new connection and returns the status, the headers (lowercased) and the
/// body of the answer, read until the server closes the connection.
async fn raw_exchange(app: &TestApp, head: &[u8]) -> (u16, String, Value) {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // The server may stop reading (and answer) before all of it is sent.
    let _ = stream.write_all(head).await;
    let got = read_until_closed(&mut stream).await.expect("closed");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let status = headers[9..12].parse().unwrap();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, headers.to_ascii_lowercase(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_the_http_layer_refuses_are_answered_in_json_too() {
    let app = TestApp::without_workers().await;
    let limits = ServeLimits::default();
    // Over 4 × --max-header-bytes: hyper stops reading it and answers by itself.
    let huge = format!(
        "GET /api/jobs HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(limits.max_header_bytes * 4 + 1024)
    );
    // Over twice the header-field limit.
    let mut many = "GET /api/stats HTTP/1.1\r\nHost: x\r\n".to_string();
    for i in 0..limits.max_headers * 2 + 10 {
        many.push_str(&format!("X-H{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    for head in [huge, many] {
        let (status, headers, body) = raw_exchange(&app, head.as_bytes()).await;
        assert_eq!(status, 431, "{headers}");
        assert!(
            headers.contains("content-type: application/json"),
            "{headers}"
        );
        assert!(headers.contains("connection: close"), "{headers}");
        assert_eq!(body["error"]["code"], "headers_too_large", "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&(limits.max_header_bytes * 4).to_string()));
    }
    // A head that is not HTTP at all.
    let (status, _, body) =
        raw_exchange(&app, b"GET /api/jobs HTTP/1.1\r\nBad Header\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    // The server goes on serving, and its own answers are untouched.
    let (status, _, body) = raw_exchange(
        &app,
        b"GET /api/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_request_limit_is_413_json() {
    let app = TestApp::with(Options {
        workers: 0,
        limits: ImageLimits {
            max_bytes: 50_000,
            ..ImageLimits::default()
        },
        ..Options::default()
    })
    .await;
    // Each file within the per-file limit, all of them over the request limit (4 files' worth
    // plus 1 MiB).
    let chunk = vec![b'x'; 45_000];
    let files: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("f{i}.png"), chunk.clone()))
        .collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    assert_error(app.upload(&files).await, 413, "payload_too_large").await;
}

/// Reads until the server closes the connection (or `GENEROUS` passes); returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(GENEROUS, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_disconnected_while_others_are_served() {
    let app = TestApp::with(Options {
        workers: 0,
        serve_limits: short_timeouts(),
        ..Options::default()
    })
    .await;
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Others are served meanwhile.
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let got = read_until_closed(&mut stalled)
        .await
        .expect("a stalled request head must be disconnected");
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{got:?}");

    // An idle keep-alive connection is closed too (after the keep-alive timeout).
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle)
        .await
        .expect("an idle keep-alive connection must be closed");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_abandoned_with_408() {
    let app = TestApp::with(Options {
        workers: 0,
        serve_limits: short_timeouts(),
        ..Options::default()
    })
    .await;
    for (content_type, start) in [
        (
            "multipart/form-data; boundary=b",
            &b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n\x89PNG"[..],
        ),
        ("image/png", &b"\x89PNG\r\n"[..]),
    ] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(start).await.unwrap();
        let got = read_until_closed(&mut stream)
            .await
            .expect("a stalled body must be given up");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{content_type}: {text}");
        assert!(text.contains("\"request_timeout\""), "{content_type}: {text}");
    }
    assert_eq!(job_count(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_beyond_the_cap_leave_the_server_usable() {
    // A header-read timeout far longer than the test waits: new clients are served because the
    // stalled connections make room, not because they time out.
    let app = TestApp::with(Options {
        workers: 0,
        serve_limits: ServeLimits {
            max_connections: 8,
            header_read_timeout: Duration::from_secs(600),
            ..ServeLimits::default()
        },
        ..Options::default()
    })
    .await;
    // An event stream (a request in flight) is never what makes room.
    let mut events = app.client.get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    // Three times the cap of clients that send half a request head and stall.
    let mut stalled = Vec::new();
    for _ in 0..24 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let _ = s.write_all(b"POST /api/jobs HTTP/1.1\r\nHost: x\r\n").await;
        stalled.push(s);
    }
    let client = reqwest::Client::builder()
        .timeout(GENEROUS)
        .build()
        .unwrap();
    let (status, body) = {
        let resp = client.get(app.url("/healthz")).send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
    let resp = client
        .post(app.url("/api/jobs?filename=tiny.png"))
        .header("content-type", "image/png")
        .body(tiny_png())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The oldest stalled connections were closed to make room.
    assert!(read_until_closed(&mut stalled[0]).await.is_some());
    // The event stream is still open and carries the new job.
    tokio::time::timeout(GENEROUS, async {
        let mut seen = String::new();
        while !seen.contains(&id) {
            let chunk = events.chunk().await.unwrap().expect("the stream ended");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the event stream survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_time_out() {
    let app = TestApp::with(Options {
        workers: 0,
        serve_limits: ServeLimits {
            max_connections: 8,
            ..short_timeouts()
        },
        ..Options::default()
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        stalled.push(s);
    }
    for mut s in stalled {
        assert!(read_until_closed(&mut s).await.is_some());
    }
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_the_connection_timeouts() {
    let app = TestApp::with(Options {
        workers: 0,
        serve_limits: short_timeouts(),
        ..Options::default()
    })
    .await;
    let mut events = app.client.get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(events.status(), 200);
    // Longer than the header-read and body-read timeouts (1 s each).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ids = app.submit(&[("tiny.png", tiny_png())]).await;
    let id = ids[0].to_string();
    tokio::time::timeout(GENEROUS, async {
        let mut seen = String::new();
        while !seen.contains(&id) {
            let chunk = events.chunk().await.unwrap().expect("the stream ended");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the event of the new job arrives on the open stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_timeout_and_the_keep_alive_timeout_are_separate() {
    // Short head timeout, long keep-alive: a stalled head is cut, an idle connection stays.
    let app = TestApp::with(Options {
        workers: 0,
        serve_limits: ServeLimits {
            header_read_timeout: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(600),
            ..ServeLimits::default()
        },
        ..Options::default()
    })
    .await;
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A new connection that stalls in its head is cut after the head timeout...
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut stalled).await.is_some());
    // ... and so is a kept-alive one whose next head stalls; meanwhile the idle one is still
    // open (it has been idle for longer than the head timeout) and serves a second request.
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(GENEROUS, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    idle.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    assert!(read_until_closed(&mut idle).await.is_some());

    // Long head timeout, short keep-alive: an idle kept-alive connection is closed.
    let app = TestApp::with(Options {
        workers: 0,
        serve_limits: ServeLimits {
            header_read_timeout: Duration::from_secs(600),
            keep_alive_timeout: Duration::from_secs(1),
            ..ServeLimits::default()
        },
        ..Options::default()
    })
    .await;
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle)
        .await
        .expect("closed when idle");
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

/// A JPEG of busy content (its scan data is large), encoded here.
fn busy_jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 37 % 256) as u8,
            (y * 91 % 256) as u8,
            ((x ^ y) * 13 % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_whose_scan_data_ends_early_fails_as_image_corrupt_not_grey() {
    let app = TestApp::spawn().await;
    let whole = busy_jpeg(640, 480);
    // Half of the scan data and the end marker put back: complete to the upload check (enough
    // bytes for its blocks, an end marker), short to the decoder.
    let sos = whole.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    let scan_start = sos + 2 + usize::from(u16::from_be_bytes([whole[sos + 2], whole[sos + 3]]));
    let mut cut = whole[..scan_start + (whole.len() - 2 - scan_start) / 2].to_vec();
    while cut.last() == Some(&0xFF) {
        cut.pop();
    }
    cut.extend_from_slice(&[0xFF, 0xD9]);

    let ids = app.submit(&[("cut.jpg", cut), ("whole.jpg", whole)]).await;
    let failed = app.wait_for(ids[0], imgclass_core::JobStatus::Failed).await;
    let error = failed.error.expect("an error");
    assert_eq!(error.code.as_str(), "image_corrupt", "{}", error.message);
    assert!(
        error.message.contains("does not cover"),
        "{}",
        error.message
    );
    assert_eq!(failed.attempts, 1, "a bad image is not retried");
    app.wait_for(ids[1], imgclass_core::JobStatus::Succeeded)
        .await;
}

/// Sends a request head (no body) and returns the answer (its head and its `Content-Length`
/// bytes of body) and how long it took to come.
async fn head_only_exchange(app: &TestApp, head: &str) -> (String, Duration) {
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let answer = tokio::time::timeout(GENEROUS, async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: ").map(str::to_string))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    return;
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    answer.expect("an answer");
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_is_refused_at_once_and_never_invited() {
    let limits = ImageLimits {
        max_bytes: 100_000,
        ..ImageLimits::default()
    };
    // The default body-read timeout (30 s): an answer that waited for the body would be late.
    let app = TestApp::with(Options {
        workers: 0,
        limits,
        ..Options::default()
    })
    .await;
    let request_limit = 4 * limits.max_bytes + (1 << 20);
    let heads = [
        // Any body over the request limit, with and without asking to be invited.
        ("multipart/form-data; boundary=b", 1u64 << 30, false),
        ("multipart/form-data; boundary=b", 1 << 30, true),
        ("multipart/form-data; boundary=b", request_limit + 1, true),
        // One raw image over the per-file limit (within the request limit).
        ("image/png", limits.max_bytes + 1, false),
        ("application/octet-stream", limits.max_bytes + 1, true),
    ];
    for (content_type, length, expect) in heads {
        let expect = if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        };
        let head = format!(
            "POST /api/jobs?filename=big.png HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
             Content-Length: {length}\r\n{expect}\r\n"
        );
        let (text, took) = head_only_exchange(&app, &head).await;
        let case = format!("{content_type} {length} {expect:?}: {text}");
        assert!(
            took < Duration::from_secs(5),
            "answered after {took:?}: {case}"
        );
        assert!(!text.contains("100 Continue"), "{case}");
        assert!(text.starts_with("HTTP/1.1 413 "), "{case}");
        let (headers, body) = text.split_once("\r\n\r\n").unwrap();
        let headers = headers.to_ascii_lowercase();
        assert!(headers.contains("content-type: application/json"), "{case}");
        assert!(headers.contains("connection: close"), "{case}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large", "{case}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&length.to_string()),
            "{case}"
        );
    }

    // A body within the limits is invited, read and taken.
    let png = tiny_png();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/jobs?filename=ok.png HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        png.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(GENEROUS, stream.read_exact(&mut interim))
        .await
        .expect("the body is invited")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(&png).await.unwrap();
    let got = read_until_closed(&mut stream).await.expect("an answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 202 "), "{text}");
}
