//! The HTTP API end to end: uploads, results, listing, errors.

use crate::helpers::{assert_error, fixture, Options, TestApp};
use image::ImageEncoder;
use imgclass_classifier::ImageLimits;
use imgclass_core::JobStatus;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_photos_are_classified() {
    let app = TestApp::spawn().await;
    let resp = app
        .upload(&[
            ("coffee.png", fixture("coffee.png")),
            ("rocket.jpg", fixture("rocket.jpg")),
        ])
        .await;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        location,
        format!("/api/jobs/{}", jobs[0]["id"].as_str().unwrap())
    );
    for j in jobs {
        assert!(["queued", "running"].contains(&j["status"].as_str().unwrap()));
        let id = j["id"].as_str().unwrap();
        assert_eq!(uuid_version(id), 7);
        assert_eq!(j["links"]["self"], format!("/api/jobs/{id}"));
    }
    assert_eq!(jobs[0]["file_name"], "coffee.png");
    assert_eq!(jobs[0]["image"]["content_type"], "image/png");
    assert_eq!(jobs[1]["image"]["content_type"], "image/jpeg");

    let coffee = jobs[0]["id"].as_str().unwrap().parse().unwrap();
    let rocket = jobs[1]["id"].as_str().unwrap().parse().unwrap();
    app.wait_for(coffee, JobStatus::Succeeded).await;
    app.wait_for(rocket, JobStatus::Succeeded).await;

    let (status, job) = app.get(&format!("/api/jobs/{coffee}")).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 1);
    let result = &job["result"];
    assert_eq!(result["predictions"].as_array().unwrap().len(), 5);
    assert_eq!(result["predictions"][0]["index"], 967);
    assert_eq!(result["predictions"][0]["label"], "espresso");
    assert!(result["predictions"][0]["probability"].as_f64().unwrap() > 0.9);
    assert_eq!(result["model"]["name"], "efficientnet-lite0");
    assert_eq!(result["model"]["provider"], "builtin");
    assert!(result["timings"]["inference_ms"].as_f64().unwrap() > 0.0);
    assert!(result["timings"]["decode_ms"].as_f64().unwrap() > 0.0);
    assert!(result["timings"]["queue_wait_ms"].as_f64().unwrap() >= 0.0);
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(job[field].is_string(), "{field}");
    }
    let (_, job) = app.get(&format!("/api/jobs/{rocket}")).await;
    let top = job["result"]["predictions"][0]["index"].as_u64().unwrap();
    assert!([657, 744].contains(&top), "{top}");
}

fn uuid_version(id: &str) -> u32 {
    id.chars().nth(14).unwrap().to_digit(16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_image_comes_back_with_its_sniffed_type() {
    let app = TestApp::without_workers().await;
    let bytes = fixture("grace_hopper.jpg");
    // The name says PNG; the bytes say JPEG; the bytes win.
    let ids = app.submit(&[("not-really.png", bytes.clone())]).await;
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{}/image", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_uploads_share_one_stored_copy() {
    let app = TestApp::without_workers().await;
    let ids = app
        .submit(&[
            ("a.png", fixture("chelsea.png")),
            ("b.png", fixture("chelsea.png")),
        ])
        .await;
    let (_, a) = app.get(&format!("/api/jobs/{}", ids[0])).await;
    let (_, b) = app.get(&format!("/api/jobs/{}", ids[1])).await;
    assert_ne!(a["id"], b["id"]);
    assert_eq!(a["image"]["sha256"], b["image"]["sha256"]);
    // Deleting one job keeps the image the other still uses.
    let resp = app
        .client
        .delete(app.url(&format!("/api/jobs/{}", ids[0])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, _) = app.get(&format!("/api/jobs/{}", ids[0])).await;
    assert_eq!(status, 404);
    let resp = app
        .client
        .get(app.url(&format!("/api/jobs/{}/image", ids[1])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Deleting the last user removes the image too.
    let sha = b["image"]["sha256"].as_str().unwrap().to_string();
    app.client
        .delete(app.url(&format!("/api/jobs/{}", ids[1])))
        .send()
        .await
        .unwrap();
    assert!(app.store.read_blob(&sha).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_image_is_415() {
    let app = TestApp::without_workers().await;
    let resp = app
        .upload(&[("notes.jpg", b"just some text, not a picture".to_vec())])
        .await;
    let msg = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(msg.contains("notes.jpg"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_image_is_422() {
    let app = TestApp::without_workers().await;
    for name in ["rocket.jpg", "chelsea.png"] {
        let bytes = fixture(name);
        let resp = app
            .upload(&[(name, bytes[..bytes.len() / 2].to_vec())])
            .await;
        assert_error(resp, 422, "image_corrupt").await;
    }
    // Nothing was stored for the rejected uploads.
    let (_, list) = app.get("/api/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_file_rejects_the_whole_request() {
    let app = TestApp::without_workers().await;
    let resp = app
        .upload(&[
            ("ok.png", fixture("coffee.png")),
            ("bad.txt", b"hello".to_vec()),
        ])
        .await;
    let msg = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(msg.contains("bad.txt"));
    let (_, list) = app.get("/api/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_byte_limit_is_413() {
    let app = TestApp::with(Options {
        workers: 0,
        limits: ImageLimits {
            max_bytes: 50_000,
            ..ImageLimits::default()
        },
        ..Options::default()
    })
    .await;
    let resp = app.upload(&[("coffee.png", fixture("coffee.png"))]).await;
    let msg = assert_error(resp, 413, "payload_too_large").await;
    assert!(msg.contains("coffee.png"), "{msg}");
    // A file within the limit in the same configuration is accepted.
    let resp = app
        .upload(&[("rocket.jpg", fixture("rocket.jpg")[..40_000].to_vec())])
        .await;
    assert_error(resp, 422, "image_corrupt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pixels_is_422() {
    let app = TestApp::with(Options {
        workers: 0,
        limits: ImageLimits {
            max_pixels: 100_000,
            ..ImageLimits::default()
        },
        ..Options::default()
    })
    .await;
    let resp = app.upload(&[("coffee.png", fixture("coffee.png"))]).await;
    let msg = assert_error(resp, 422, "image_too_large").await;
    assert!(msg.contains("600x400"), "{msg}");
    // The default side limit (12 000 px) is read from the header: a 13 000 x 1 PNG.
    let app = TestApp::without_workers().await;
    let resp = app.upload(&[("wide.png", png(13_000, 1))]).await;
    assert_error(resp, 422, "image_too_large").await;
}

/// A GIF whose frame covers a `w`×`h` canvas, with almost no pixel data: what decides whether
/// it can be decoded is its header.
fn gif_header_only(w: u16, h: u16) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend(w.to_le_bytes());
    g.extend(h.to_le_bytes());
    g.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]); // a two-colour global table
    g.push(0x2C); // the frame, at (0, 0), the canvas's size
    g.extend([0, 0, 0, 0]);
    g.extend(w.to_le_bytes());
    g.extend(h.to_le_bytes());
    g.extend([0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    g
}

/// A 100-megapixel GIF (within the default size limits) is decoded whole: its decode needs more
/// than the decode budget allows, so it is refused at upload instead of becoming a job sure to
/// fail; a smaller one is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_whose_decode_cannot_fit_the_budget_is_refused_at_upload() {
    let app = TestApp::without_workers().await;
    let resp = app
        .upload(&[("huge.gif", gif_header_only(10_000, 10_000))])
        .await;
    let msg = assert_error(resp, 422, "image_too_large").await;
    assert!(msg.contains("10000x10000") && msg.contains("MiB"), "{msg}");
    let (_, stats) = app.get("/api/stats").await;
    assert_eq!(stats["counts"]["queued"], 0, "{stats}");
    let resp = app
        .upload(&[("small.gif", gif_header_only(4_000, 3_000))])
        .await;
    assert_eq!(resp.status(), 202);
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            &vec![128u8; (w * h * 3) as usize],
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_files_is_400() {
    let app = TestApp::without_workers().await;
    let form = reqwest::multipart::Form::new().text("priority", "1");
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "no_files").await;
    // A field that is neither a file nor a known one is refused, not ignored.
    let form = reqwest::multipart::Form::new()
        .text("note", "no file here")
        .part(
            "file",
            reqwest::multipart::Part::bytes(fixture("coffee.png")).file_name("coffee.png"),
        );
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let message = assert_error(resp, 400, "bad_request").await;
    assert!(message.contains("note"), "{message}");
    // A body that is neither multipart nor an image (issue 15: 415, was 400 bad_request).
    let resp = app
        .client
        .post(app.url("/api/jobs"))
        .body("plain")
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 415, "unsupported_media_type").await;
    assert!(msg.contains("multipart/form-data"), "{msg}");
    // No body at all: no files.
    let resp = app.client.post(app.url("/api/jobs")).send().await.unwrap();
    assert_error(resp, 400, "no_files").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_404() {
    let app = TestApp::without_workers().await;
    let unknown = imgclass_core::JobId::new();
    for path in [
        format!("/api/jobs/{unknown}"),
        format!("/api/jobs/{unknown}/image"),
        "/api/jobs/not-a-uuid".to_string(),
    ] {
        let resp = app.client.get(app.url(&path)).send().await.unwrap();
        assert_error(resp, 404, "not_found").await;
    }
    for action in ["retry", "cancel"] {
        let resp = app
            .client
            .post(app.url(&format!("/api/jobs/{unknown}/{action}")))
            .send()
            .await
            .unwrap();
        assert_error(resp, 404, "not_found").await;
    }
    let resp = app
        .client
        .delete(app.url(&format!("/api/jobs/{unknown}")))
        .send()
        .await
        .unwrap();
    assert_error(resp, 404, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_cancel_from_the_wrong_state_are_409_and_a_canceled_job_can_be_retried() {
    let app = TestApp::without_workers().await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    let resp = app
        .client
        .post(app.url(&format!("/api/jobs/{}/retry", ids[0])))
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 409, "invalid_state").await;
    assert!(msg.contains("queued"), "{msg}");

    let (status, job) = app.post(&format!("/api/jobs/{}/cancel", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "canceled");
    let resp = app
        .client
        .post(app.url(&format!("/api/jobs/{}/cancel", ids[0])))
        .send()
        .await
        .unwrap();
    assert_error(resp, 409, "invalid_state").await;
    assert_eq!(
        job["links"]["retry"],
        format!("/api/jobs/{}/retry", ids[0]),
        "a canceled job offers a retry"
    );
    assert!(job["links"].get("cancel").is_none());

    // A canceled job can be retried: it is queued again with a new round of attempts.
    let (status, job) = app.post(&format!("/api/jobs/{}/retry", ids[0])).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "queued");
    assert!(job["links"].get("retry").is_none());
    assert!(job["links"]["cancel"].is_string());
    let resp = app
        .client
        .post(app.url(&format!("/api/jobs/{}/retry", ids[0])))
        .send()
        .await
        .unwrap();
    let msg = assert_error(resp, 409, "invalid_state").await;
    assert!(msg.contains("failed or canceled"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_newest_first_filtered_and_paged() {
    let app = TestApp::without_workers().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.extend(app.submit(&[("c.png", fixture("coffee.png"))]).await);
    }
    app.post(&format!("/api/jobs/{}/cancel", ids[1])).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/jobs?limit=2&cursor={c}"),
            None => "/api/jobs?limit=2".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200);
        for j in page["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let want: Vec<String> = ids.iter().rev().map(|i| i.to_string()).collect();
    assert_eq!(seen, want);

    let (_, canceled) = app.get("/api/jobs?status=canceled").await;
    let canceled = canceled["jobs"].as_array().unwrap();
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0]["id"], ids[1].to_string());

    let resp = app
        .client
        .get(app.url("/api/jobs?status=done"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_status").await;
    let resp = app
        .client
        .get(app.url("/api/jobs?cursor=zzz"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_cursor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_are_kept_as_text_only() {
    let app = TestApp::without_workers().await;
    let ids = app
        .submit(&[(
            "../../<img src=x onerror=alert(1)>.png",
            fixture("coffee.png"),
        )])
        .await;
    let (_, job) = app.get(&format!("/api/jobs/{}", ids[0])).await;
    assert_eq!(job["file_name"], "<img src=x onerror=alert(1)>.png");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health() {
    let app = TestApp::without_workers().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_priority_field_is_checked_and_stored() {
    let app = TestApp::without_workers().await;
    let send = |priority: &str| {
        let form = reqwest::multipart::Form::new()
            .text("priority", priority.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(fixture("coffee.png")).file_name("c.png"),
            );
        app.client.post(app.url("/api/jobs")).multipart(form).send()
    };
    let resp = send("7").await.unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jobs"][0]["priority"], 7);
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    let (_, job) = app.get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["priority"], 7);
    let (_, plain) = app.get("/api/jobs").await;
    assert_eq!(plain["jobs"][0]["priority"], 7);

    for bad in ["high", "1001", "-5000", ""] {
        let msg = assert_error(send(bad).await.unwrap(), 400, "bad_request").await;
        assert!(msg.contains("priority"), "{msg}");
    }
    // Nothing of the refused requests was stored.
    let (_, list) = app.get("/api/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}
