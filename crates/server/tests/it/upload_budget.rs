//! The upload budget over real HTTP: a request whose body would pass the bytes all uploads in
//! flight may hold waits for room, and one that waits longer than the budget's wait is answered
//! `503 busy` with `Retry-After`; one whose body does not come does not keep the others out. A
//! request is held at a known point by sending its body by hand: the test decides when it ends,
//! and watches the budget (not the clock) to know who waits.

use crate::helpers::{assert_error, Options, TestApp};
use image::ImageEncoder;
use imgclass_classifier::ImageLimits;
use imgclass_server::upload_budget::FIRST_SLICE;
use imgclass_server::UploadBudget;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far more than anything here needs, even on a loaded 2-core machine.
const GENEROUS: Duration = Duration::from_secs(60);

/// A PNG of noise, about `3 × side²` bytes (noise does not compress).
fn noisy_png(side: u32, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
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

async fn app_with(budget: &UploadBudget) -> TestApp {
    TestApp::with(Options {
        workers: 0,
        limits: ImageLimits {
            max_bytes: 1 << 20,
            ..ImageLimits::default()
        },
        upload_budget: Some(budget.clone()),
        ..Options::default()
    })
    .await
}

/// Waits (bounded) until `ready` holds.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    tokio::time::timeout(GENEROUS, async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never happened: {what}"));
}

/// A raw-image upload sent by hand: the head and the first `sent` bytes of the body go now,
/// the rest when `finish` is called.
struct HeldUpload {
    stream: TcpStream,
    body: Vec<u8>,
    sent: usize,
}

impl HeldUpload {
    async fn start(app: &TestApp, body: Vec<u8>, sent: usize) -> HeldUpload {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /api/jobs?filename=held.png HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            app.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body[..sent]).await.unwrap();
        HeldUpload { stream, body, sent }
    }

    /// Sends the rest of the body and returns the response's status line and body.
    async fn finish(mut self) -> (String, String) {
        self.stream
            .write_all(&self.body[self.sent..])
            .await
            .unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(GENEROUS, self.stream.read_to_end(&mut got))
            .await
            .expect("an answer")
            .unwrap();
        let text = String::from_utf8_lossy(&got).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }
}

async fn upload(app: &TestApp, body: Vec<u8>) -> reqwest::Response {
    app.client
        .post(app.url("/api/jobs?filename=b.png"))
        .header("content-type", "image/png")
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
async fn an_upload_waits_for_room_in_the_budget_and_then_goes_through() {
    let budget = UploadBudget::new(1 << 20, GENEROUS);
    let app = app_with(&budget).await;
    let first = noisy_png(400, 1); // ~480 KB
    let second = noisy_png(450, 2); // ~610 KB: together more than the 1 MiB budget
    assert!(first.len() + second.len() > 1 << 20);
    assert!(second.len() as u64 <= budget.capacity());

    // The first upload holds its whole declared length while the end of its body is still
    // coming (most of it came at once: at that pace it is not taken for a stalled one).
    let held = HeldUpload::start(&app, first.clone(), first.len() - 1000).await;
    let taken = first.len() as u64;
    until("the first upload holds its share", || {
        budget.available() <= budget.capacity() - taken
    })
    .await;

    // The second one does not fit: it waits (it is not refused).
    let second_upload = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/api/jobs?filename=second.png");
        async move {
            client
                .post(url)
                .header("content-type", "image/png")
                .body(second)
                .send()
                .await
                .unwrap()
        }
    });
    until("the second upload waits", || budget.waiting() == 1).await;
    assert!(!second_upload.is_finished());
    assert_eq!(job_count(&app).await, 0);

    // The first one ends: its share comes back, the second one goes through.
    let (status, body) = held.finish().await;
    assert!(status.contains(" 202 "), "{status} {body}");
    let resp = tokio::time::timeout(GENEROUS, second_upload)
        .await
        .expect("the second upload is answered")
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(job_count(&app).await, 2);
    until("every share is given back", || {
        budget.available() == budget.capacity()
    })
    .await;
    assert_eq!(budget.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_would_wait_too_long_is_503_busy_with_retry_after() {
    let budget = UploadBudget::new(1 << 20, Duration::from_millis(300));
    let app = app_with(&budget).await;
    let first = noisy_png(400, 3);
    let second = noisy_png(450, 4);
    let held = HeldUpload::start(&app, first.clone(), first.len() - 1000).await;
    let taken = first.len() as u64;
    until("the first upload holds its share", || {
        budget.available() <= budget.capacity() - taken
    })
    .await;

    // The budget stays spent for longer than the wait: busy, with when to try again.
    let resp = upload(&app, second.clone()).await;
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let message = assert_error(resp, 503, "busy").await;
    assert!(message.contains("try again"), "{message}");
    // A multipart upload is refused the same way.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(second.clone()).file_name("m.png"),
    );
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    assert_error(resp, 503, "busy").await;

    // The held upload was not disturbed, and once it is stored the budget is free again.
    let (status, body) = held.finish().await;
    assert!(status.contains(" 202 "), "{status} {body}");
    assert_eq!(job_count(&app).await, 1);
    until("every share is given back", || {
        budget.available() == budget.capacity()
    })
    .await;
    assert_eq!(upload(&app, second).await.status(), 202);
    assert_eq!(job_count(&app).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_unknown_length_takes_its_share_as_it_arrives() {
    let budget = UploadBudget::new(1 << 20, Duration::from_millis(300));
    let app = app_with(&budget).await;
    let first = noisy_png(400, 5);
    let held = HeldUpload::start(&app, first.clone(), first.len() - 1000).await;
    let taken = first.len() as u64;
    until("the first upload holds its share", || {
        budget.available() <= budget.capacity() - taken
    })
    .await;

    // A chunked body: no length to take up front; it takes its share in steps as it arrives,
    // and the steps do not fit next to the held upload, so it is refused as busy once it has
    // waited.
    let big = noisy_png(450, 6);
    let text = send_chunked(&app, &big).await;
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains(r#""code":"busy""#), "{text}");

    let (status, _) = held.finish().await;
    assert!(status.contains(" 202 "), "{status}");
    // With room, the same chunked body goes through, its share grown as it arrived.
    let text = send_chunked(&app, &big).await;
    assert!(text.starts_with("HTTP/1.1 202 "), "{text}");
    assert_eq!(job_count(&app).await, 2);
    until("every share is given back", || {
        budget.available() == budget.capacity()
    })
    .await;
}

/// A multipart upload that declares `declared` bytes and then sends one byte of its file every
/// `every`, until dropped.
struct Trickler {
    task: tokio::task::JoinHandle<()>,
}

impl Trickler {
    async fn start(app: &TestApp, declared: u64, every: Duration) -> Trickler {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /api/jobs HTTP/1.1\r\nHost: {}\r\nContent-Type: multipart/form-data; boundary=b\r\n\
             Content-Length: {declared}\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"slow.png\"\r\nContent-Type: image/png\r\n\r\n",
            app.addr
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if stream.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        Trickler { task }
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_trickle_do_not_keep_a_small_upload_waiting() {
    // The budget holds exactly one request of the largest size (5 MiB), and requests wait for
    // room as long as `imgclass serve` lets them by default.
    let budget = UploadBudget::new(5 << 20, UploadBudget::DEFAULT_WAIT);
    let app = app_with(&budget).await;
    // Two clients declare the largest body and send a byte now and then.
    let _first = Trickler::start(&app, 5 << 20, Duration::from_millis(500)).await;
    until("the first trickler holds the whole budget", || {
        budget.available() == 0
    })
    .await;
    let _second = Trickler::start(&app, 5 << 20, Duration::from_millis(500)).await;
    until("the second trickler waits", || budget.waiting() == 1).await;

    // A small upload is taken promptly: the tricklers' room for bytes they have not sent is
    // given back (after a second at their pace), not held for the budget's whole wait.
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(GENEROUS, upload(&app, noisy_png(60, 7)))
        .await
        .expect("an answer");
    let took = started.elapsed();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    assert!(
        took < Duration::from_secs(5),
        "the small upload waited {took:?} behind two tricklers"
    );
    assert_eq!(job_count(&app).await, 1);
    // The first trickler was left what it sent; the second, which found no room, waited only
    // for a first slice: the rest of the budget is free for others.
    assert!(
        budget.available() >= budget.capacity() - FIRST_SLICE - (64 << 10),
        "{} of {} bytes free",
        budget.available(),
        budget.capacity()
    );
}

/// Sends `body` as a raw image with chunked transfer encoding; returns the whole response.
async fn send_chunked(app: &TestApp, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/jobs?filename=c.png HTTP/1.1\r\nHost: {}\r\nContent-Type: image/png\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(64 * 1024) {
        let chunk = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(GENEROUS, stream.read_to_end(&mut got))
        .await
        .expect("an answer");
    String::from_utf8_lossy(&got).into_owned()
}
