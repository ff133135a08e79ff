//! `GET /api/events`: one event per transition, and a reconnect with `Last-Event-ID` gets what
//! it missed.

use crate::helpers::{fixture, TestApp};
use imgclass_core::JobStatus;
use serde_json::Value;
use std::time::Duration;

/// Reads server-sent events from an open response: (id, kind, data).
pub(crate) struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(app: &TestApp, last_event_id: Option<&str>) -> SseReader {
        Self::open_as(app, None, last_event_id).await
    }

    /// The stream as the holder of `token` sees it.
    pub(crate) async fn open_as(
        app: &TestApp,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> SseReader {
        let mut req = app.request(reqwest::Method::GET, "/api/events", token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    pub(crate) async fn next(&mut self) -> (i64, String, Value) {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..end + 2).collect();
                    let (mut id, mut kind, mut data) = (None, None, String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            id = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            kind = Some(v.to_string());
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            data.push_str(v);
                        }
                    }
                    if let (Some(id), Some(kind)) = (id, kind) {
                        return (id, kind, serde_json::from_str(&data).unwrap());
                    }
                    continue; // a keep-alive comment
                }
                let chunk = self.resp.chunk().await.unwrap().expect("stream open");
                self.buf.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .expect("an event within a minute")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_is_an_event_and_a_reconnect_replays_what_was_missed() {
    let app = TestApp::spawn().await;
    let mut live = SseReader::open(&app, None).await;
    let ids = app.submit(&[("coffee.png", fixture("coffee.png"))]).await;
    let id = ids[0].to_string();

    let (created_seq, kind, data) = live.next().await;
    assert_eq!(kind, "created");
    assert_eq!(data["job_id"], id);
    assert_eq!(data["status"], "queued");
    assert_eq!(data["job"]["file_name"], "coffee.png");
    let (_, kind, _) = live.next().await;
    assert_eq!(kind, "running");
    let (done_seq, kind, data) = live.next().await;
    assert_eq!(kind, "succeeded");
    assert_eq!(data["job"]["result"]["predictions"][0]["label"], "espresso");

    // A client that saw only `created` reconnects and gets the rest, in order.
    let mut again = SseReader::open(&app, Some(&created_seq.to_string())).await;
    let (seq, kind, _) = again.next().await;
    assert_eq!(kind, "running");
    assert!(seq > created_seq);
    let (seq, kind, _) = again.next().await;
    assert_eq!((seq, kind.as_str()), (done_seq, "succeeded"));

    // Deletion is an event too, without a job.
    app.client
        .delete(app.url(&format!("/api/jobs/{id}")))
        .send()
        .await
        .unwrap();
    let (_, kind, data) = live.next().await;
    assert_eq!(kind, "deleted");
    assert!(data["job"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_retry_are_events() {
    let app = TestApp::without_workers().await;
    let mut live = SseReader::open(&app, None).await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    assert_eq!(live.next().await.1, "created");
    app.post(&format!("/api/jobs/{}/cancel", ids[0])).await;
    let (_, kind, data) = live.next().await;
    assert_eq!(kind, "canceled");
    assert_eq!(data["status"], "canceled");

    // A failed job retried by hand: `failed` then `retried`.
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    assert_eq!(live.next().await.1, "created");
    let claim = app
        .store
        .claim("test", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(live.next().await.1, "running");
    let error = imgclass_store::JobError {
        code: imgclass_core::ErrorCode::ImageCorrupt,
        message: "boom".into(),
    };
    app.store
        .finish(
            &claim.lease,
            imgclass_store::Outcome::Errored {
                error,
                retry_after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(live.next().await.1, "failed");
    app.post(&format!("/api/jobs/{}/retry", ids[0])).await;
    let (_, kind, data) = live.next().await;
    assert_eq!(kind, "retried");
    assert_eq!(data["job"]["status"], JobStatus::Queued.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_also_works_as_a_query_parameter() {
    let app = TestApp::without_workers().await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    // A client that has seen nothing asks for everything after 0.
    let resp = app
        .client
        .get(app.url("/api/events?after=0"))
        .send()
        .await
        .unwrap();
    let mut r = SseReader {
        resp,
        buf: String::new(),
    };
    let (_, kind, data) = r.next().await;
    assert_eq!(kind, "created");
    assert_eq!(data["job_id"], ids[0].to_string());
}
