//! Search and filters of `GET /api/jobs` with `total`, the streamed export, the bulk actions and
//! the finished-per-minute figures, over real HTTP with the real model.

use crate::helpers::{assert_error, fixture, TestApp};
use imgclass_core::{ErrorCode, JobId, JobStatus};
use imgclass_store::{JobError, NewJob, Outcome};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Parses RFC 4180 CSV (quoted fields, doubled quotes, CRLF rows).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "the CSV ends with a line break"
    );
    rows
}

fn ids_of(body: &Value) -> Vec<String> {
    body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect()
}

/// Three real photos, classified.
async fn classified(app: &TestApp) -> (JobId, JobId, JobId) {
    // One at a time, so that each has a creation time of its own.
    let mut ids = Vec::new();
    for (name, file) in [
        ("coffee.png", "coffee.png"),
        ("chelsea.png", "chelsea.png"),
        ("Rocket Launch.jpg", "rocket.jpg"),
    ] {
        ids.extend(app.submit(&[(name, fixture(file))]).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for id in &ids {
        app.wait_for(*id, JobStatus::Succeeded).await;
    }
    (ids[0], ids[1], ids[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_by_name_label_and_time_and_counts_the_total() {
    let app = TestApp::spawn().await;
    let (coffee, chelsea, rocket) = classified(&app).await;

    let (status, all) = app.get("/api/jobs?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(all["total"], 3);
    assert_eq!(all["jobs"].as_array().unwrap().len(), 1);

    let (_, by_name) = app.get("/api/jobs?q=COFFEE").await;
    assert_eq!(ids_of(&by_name), vec![coffee.to_string()]);
    assert_eq!(by_name["total"], 1);
    let (_, spaced) = app.get("/api/jobs?q=rocket%20launch").await;
    assert_eq!(ids_of(&spaced), vec![rocket.to_string()]);

    let (_, espresso) = app.get("/api/jobs?label=espresso").await;
    assert_eq!(ids_of(&espresso), vec![coffee.to_string()]);
    let (_, cat) = app.get("/api/jobs?label=cat").await;
    assert_eq!(ids_of(&cat), vec![chelsea.to_string()]);
    let (_, none) = app.get("/api/jobs?label=espresso&q=chelsea").await;
    assert_eq!((none["total"].as_u64(), ids_of(&none).len()), (Some(0), 0));

    // since is inclusive, until exclusive.
    let job = app.store.get_job(chelsea).await.unwrap().unwrap();
    let at = job
        .created_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (_, since) = app
        .get(&format!("/api/jobs?since={}", at.replace('+', "%2B")))
        .await;
    assert_eq!(since["total"], 2, "{since}");
    let (_, until) = app.get(&format!("/api/jobs?until={at}")).await;
    assert_eq!(ids_of(&until), vec![coffee.to_string()]);

    // Filters and status together; empty texts filter nothing.
    let (_, queued) = app.get("/api/jobs?status=queued&q=coffee").await;
    assert_eq!(queued["total"], 0);
    let (_, empty) = app.get("/api/jobs?q=&label=").await;
    assert_eq!(empty["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_are_refused_with_invalid_query() {
    let app = TestApp::without_workers().await;
    let long = "x".repeat(201);
    for query in [
        "since=yesterday".to_string(),
        "until=2026-13-01T00:00:00Z".to_string(),
        "since=".to_string(),
        "error_code=nope".to_string(),
        "error_code=".to_string(),
        format!("q={long}"),
        format!("label={long}"),
        "q=a%00b".to_string(),
        "limit=0".to_string(),
    ] {
        for path in ["/api/jobs", "/api/jobs/export"] {
            if path.ends_with("export") && query.starts_with("limit") {
                continue; // the export has no pages
            }
            let resp = app
                .client
                .get(app.url(&format!("{path}?{query}")))
                .send()
                .await
                .unwrap();
            let message = assert_error(resp, 400, "invalid_query").await;
            if query.starts_with("since") {
                assert!(message.contains("RFC 3339"), "{message}");
            }
        }
        for path in ["/api/jobs/cancel-queued", "/api/jobs/delete-finished"] {
            if query.starts_with("limit") {
                continue;
            }
            let resp = app
                .client
                .post(app.url(&format!("{path}?{query}")))
                .send()
                .await
                .unwrap();
            assert_error(resp, 400, "invalid_query").await;
        }
    }
    let resp = app
        .client
        .get(app.url("/api/jobs/export?format=xml"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_query").await;
    let resp = app
        .client
        .get(app.url("/api/jobs/export?status=done"))
        .send()
        .await
        .unwrap();
    assert_error(resp, 400, "invalid_status").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_parses_back_as_csv_and_json() {
    let app = TestApp::spawn().await;
    let (coffee, chelsea, rocket) = classified(&app).await;

    let resp = app
        .client
        .get(app.url("/api/jobs/export?format=csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/csv; charset=utf-8"
    );
    let disposition = resp.headers()["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"imgclass-jobs-")
            && disposition.ends_with(".csv\""),
        "{disposition}"
    );
    let rows = parse_csv(&resp.text().await.unwrap());
    assert_eq!(
        rows[0],
        [
            "id",
            "file_name",
            "status",
            "top_label",
            "top_probability",
            "labels",
            "created_at",
            "started_at",
            "finished_at",
            "attempts",
            "error_code",
            "error_message"
        ]
    );
    // Newest first, as the list.
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        [rocket.to_string(), chelsea.to_string(), coffee.to_string()]
    );
    let coffee_row = &rows[3];
    let job = app.store.get_job(coffee).await.unwrap().unwrap();
    let top = &job.result.as_ref().unwrap().predictions[0];
    assert_eq!(coffee_row[1], "coffee.png");
    assert_eq!(coffee_row[2], "succeeded");
    assert_eq!(coffee_row[3], top.label);
    assert_eq!(coffee_row[3], "espresso");
    let p: f32 = coffee_row[4].parse().unwrap();
    assert!((p - top.probability).abs() < 1e-4);
    assert!(coffee_row[5].starts_with(&format!("espresso: {:.4}; ", top.probability)));
    let created: chrono::DateTime<chrono::Utc> = coffee_row[6].parse().unwrap();
    assert_eq!(created, job.created_at);
    assert_eq!(coffee_row[9], "1");

    // Filtered, as JSON: the jobs as the list shows them.
    let resp = app
        .client
        .get(app.url("/api/jobs/export?format=json&label=cat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let exported: Value = resp.json().await.unwrap();
    let (_, listed) = app.get("/api/jobs?label=cat").await;
    assert_eq!(exported, listed["jobs"]);
    assert_eq!(exported.as_array().unwrap().len(), 1);

    // Nothing matches: just the header, or an empty array.
    let resp = app
        .client
        .get(app.url("/api/jobs/export?q=nothing-like-this"))
        .send()
        .await
        .unwrap();
    assert_eq!(parse_csv(&resp.text().await.unwrap()).len(), 1);
    let resp = app
        .client
        .get(app.url("/api/jobs/export?format=json&q=nothing-like-this"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), serde_json::json!([]));
}

/// Stores `n` jobs straight into the store (the export does not care how they came).
async fn many_jobs(app: &TestApp, n: usize) {
    let image = fixture("coffee.png");
    let sha256 = hex::encode(Sha256::digest(&image));
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let jobs = chunk
            .iter()
            .map(|i| NewJob {
                image: image.clone().into(),
                sha256: sha256.clone(),
                content_type: "image/png".into(),
                width: 1,
                height: 1,
                file_name: Some(format!("bulk-{i:05},\"quoted\".png")),
                max_attempts: 1,
                ..NewJob::default()
            })
            .collect();
        app.store.create_jobs(jobs).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_is_streamed_page_by_page() {
    let app = TestApp::without_workers().await;
    many_jobs(&app, 1_234).await;
    let resp = app
        .client
        .get(app.url("/api/jobs/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Streamed: no length is known in advance.
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let rows = parse_csv(&resp.text().await.unwrap());
    assert_eq!(rows.len(), 1 + 1_234);
    let names: std::collections::HashSet<&str> = rows[1..].iter().map(|r| r[1].as_str()).collect();
    assert_eq!(names.len(), 1_234, "each job once");
    assert!(names.contains("bulk-00000,\"quoted\".png"));
    let resp = app
        .client
        .get(app.url("/api/jobs/export?format=json&q=bulk-001"))
        .send()
        .await
        .unwrap();
    let jobs: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(jobs.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_act_in_the_database_and_count() {
    let app = TestApp::without_workers().await;
    let ids = app
        .submit(&[
            ("keep.png", fixture("coffee.png")),
            ("a.png", fixture("coffee.png")),
            ("b.png", fixture("chelsea.png")),
        ])
        .await;
    // Fail the first, as a worker would.
    let claim = app
        .store
        .claim("test", 1, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claim.job.id, ids[0]);
    let error = JobError {
        code: ErrorCode::ImageCorrupt,
        message: "bad".into(),
    };
    assert!(app
        .store
        .finish(
            &claim.lease,
            Outcome::Errored {
                error,
                retry_after: None,
            }
        )
        .await
        .unwrap());

    // What will be canceled: the list's total with the same filters.
    let (_, would) = app.get("/api/jobs?status=queued&q=a.png").await;
    assert_eq!(would["total"], 1);
    let (status, body) = app.post("/api/jobs/cancel-queued?q=a.png").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(1)), "{body}");
    let status_of = |id: JobId| {
        let store = app.store.clone();
        async move { store.get_job(id).await.unwrap().map(|j| j.status) }
    };
    assert_eq!(status_of(ids[1]).await, Some(JobStatus::Canceled));
    assert_eq!(status_of(ids[2]).await, Some(JobStatus::Queued));

    let (_, stats) = app.get("/api/stats").await;
    let finished = ["succeeded", "failed", "canceled"]
        .iter()
        .map(|s| stats["counts"][s].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(finished, 2);
    assert_eq!(stats["finished_last_minute"], 2);
    assert_eq!(
        stats["finished_last_minute_by"],
        serde_json::json!({"succeeded": 0, "failed": 1, "canceled": 1})
    );
    assert_eq!(stats["finished_per_minute"].as_array().unwrap().len(), 10);
    assert_eq!(
        stats["finished_per_minute"][9],
        stats["finished_last_minute_by"]
    );

    let (status, body) = app.post("/api/jobs/delete-finished").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(2)), "{body}");
    assert_eq!(status_of(ids[0]).await, None);
    assert_eq!(status_of(ids[1]).await, None);
    assert_eq!(status_of(ids[2]).await, Some(JobStatus::Queued));
    let (_, body) = app.post("/api/jobs/delete-finished").await;
    assert_eq!(body["count"], 0);

    let (status, body) = app.post("/api/jobs/cancel-queued").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(1)));
    assert_eq!(status_of(ids[2]).await, Some(JobStatus::Canceled));
}
