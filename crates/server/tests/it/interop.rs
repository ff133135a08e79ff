//! What generated clients need: values read as they write them, every route with filters reading
//! them the same way, and a document that describes everything they call or receive
//! (scripts/interop.sh runs the generators themselves).

use crate::helpers::{assert_error, fixture, TestApp};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booleans_and_enums_are_read_as_generated_clients_and_forms_write_them() {
    let app = TestApp::without_workers().await;
    // The first submission stores a result for the cache to find: none yet, so it is queued.
    for (cache, cached) in [
        ("True", false),
        ("FALSE", false),
        ("False", false),
        ("off", false),
        ("0", false),
        ("no", false),
    ] {
        let resp = app
            .upload_with(&[("c.png", fixture("coffee.png"))], &[("cache", cache)])
            .await;
        assert_eq!(resp.status(), 202, "cache={cache}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["jobs"][0]["cached"], cached, "cache={cache}");
    }
    for cache in ["maybe", "", "2", "truee"] {
        let resp = app
            .upload_with(&[("c.png", fixture("coffee.png"))], &[("cache", cache)])
            .await;
        let msg = assert_error(resp, 400, "bad_request").await;
        assert!(msg.contains("cache") && msg.contains("on/off"), "{msg}");
    }
    // The query of a raw body reads them the same way, and a priority with spaces or a `+`.
    let resp = app
        .client
        .post(app.url("/api/jobs?filename=raw.png&cache=TRUE&priority=%2B7"))
        .header("content-type", "image/png")
        .body(fixture("coffee.png"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jobs"][0]["priority"], 7);
    let resp = app
        .upload_with(
            &[("c.png", fixture("coffee.png"))],
            &[("priority", " 3 "), ("cache", "Yes")],
        )
        .await;
    assert_eq!(resp.status(), 202);
    // Statuses and formats in any case.
    let (status, list) = app.get("/api/jobs?status=Queued&limit=%2B5").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 5);
    let resp = app
        .client
        .get(app.url("/api/jobs/export?format=JSON&status=QUEUED"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_filters_refuses_a_bad_value_the_same_way() {
    let app = TestApp::without_workers().await;
    let routes = [
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/export"),
        ("POST", "/api/jobs/cancel-queued"),
        ("POST", "/api/jobs/delete-finished"),
        ("POST", "/api/jobs/retry-failed"),
        ("GET", "/api/stats"),
    ];
    for (method, path) in routes {
        for (query, code) in [
            ("status=bogus", "invalid_status"),
            ("error_code=nope", "invalid_query"),
            ("since=yesterday", "invalid_query"),
            ("until=2026-13-01", "invalid_query"),
            ("q=a%00b", "invalid_query"),
        ] {
            let resp = app
                .client
                .request(method.parse().unwrap(), app.url(&format!("{path}?{query}")))
                .send()
                .await
                .unwrap();
            let msg = assert_error(resp, 400, code).await;
            assert!(!msg.is_empty(), "{method} {path}?{query}");
        }
    }
    // A status a bulk action does not act on is refused, not matched against nothing.
    for (path, status) in [
        ("/api/jobs/cancel-queued", "failed"),
        ("/api/jobs/delete-finished", "queued"),
        ("/api/jobs/retry-failed", "canceled"),
    ] {
        let resp = app
            .client
            .post(app.url(&format!("{path}?status={status}")))
            .send()
            .await
            .unwrap();
        let msg = assert_error(resp, 400, "invalid_status").await;
        assert!(msg.contains(status), "{msg}");
    }
    // A filter a route cannot apply is refused rather than ignored.
    for (method, path, query) in [
        ("POST", "/api/jobs/retry-failed", "q=cat"),
        (
            "POST",
            "/api/jobs/retry-failed",
            "since=2026-01-01T00:00:00Z",
        ),
        ("GET", "/api/stats", "status=queued"),
        ("GET", "/api/stats", "label=cat"),
    ] {
        let resp = app
            .client
            .request(method.parse().unwrap(), app.url(&format!("{path}?{query}")))
            .send()
            .await
            .unwrap();
        let msg = assert_error(resp, 400, "invalid_query").await;
        assert!(msg.contains("does not filter"), "{msg}");
    }
    // The statuses they act on are accepted, in any case.
    let ids = app
        .submit(&[
            ("a.png", fixture("coffee.png")),
            ("b.png", fixture("coffee.png")),
        ])
        .await;
    let (status, body) = app.post("/api/jobs/cancel-queued?status=Queued").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(2)));
    let (status, body) = app.post("/api/jobs/retry-failed?status=failed").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)));
    let (status, body) = app.post("/api/jobs/delete-finished?status=succeeded").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)));
    let (status, body) = app.post("/api/jobs/delete-finished?status=canceled").await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(2)));
    let (status, _) = app.get(&format!("/api/jobs/{}", ids[0])).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_the_raw_upload_the_image_the_webhooks_and_the_public_routes() {
    let app = TestApp::without_workers().await;
    let (status, doc) = app.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["servers"][0]["url"], "/");

    // The raw body and its query.
    let submit = &doc["paths"]["/api/jobs"]["post"];
    let body = &submit["requestBody"]["content"];
    for media in ["multipart/form-data", "image/*", "application/octet-stream"] {
        assert!(body[media]["schema"].is_object(), "{media}");
    }
    let query: Vec<&str> = submit["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for name in ["filename", "priority", "webhook", "webhook_events", "cache"] {
        assert!(query.contains(&name), "{name} is not among {query:?}");
    }
    // No default in the query: a generated client would send it on every request.
    for p in submit["parameters"].as_array().unwrap() {
        assert!(p["schema"].get("default").is_none(), "{p}");
    }
    let binary = &doc["components"]["schemas"]["ImageFile"];
    assert_eq!(
        (&binary["type"], &binary["format"]),
        (&"string".into(), &"binary".into())
    );

    // The image's answer: bytes of each type the server sniffs.
    let image = &doc["paths"]["/api/jobs/{id}/image"]["get"]["responses"]["200"]["content"];
    for media in [
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/gif",
        "image/bmp",
        "image/tiff",
    ] {
        assert_eq!(
            image[media]["schema"]["$ref"], "#/components/schemas/ImageFile",
            "{media}"
        );
    }

    // The webhook call, as the deliverer sends it.
    let hook = &doc["webhooks"]["job"]["post"];
    let headers: Vec<&str> = hook["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        headers,
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
    assert_eq!(
        hook["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/WebhookPayload"
    );
    let payload = &doc["components"]["schemas"]["WebhookPayload"];
    assert_eq!(
        payload["required"],
        serde_json::json!(["type", "timestamp", "data"])
    );
    assert_eq!(
        payload["properties"]["data"]["$ref"],
        "#/components/schemas/JobView"
    );
    let kinds = &doc["components"]["schemas"]["WebhookEventType"]["enum"];
    assert_eq!(
        *kinds,
        serde_json::json!(["job.running", "job.succeeded", "job.failed", "job.canceled"])
    );
    for status in ["2XX", "410", "429", "503", "default"] {
        assert!(hook["responses"][status].is_object(), "{status}");
    }

    // The server-sent events' data is an EventView.
    assert_eq!(
        doc["components"]["schemas"]["StreamEvent"]["properties"]["data"]["contentSchema"]["$ref"],
        "#/components/schemas/EventView"
    );

    // Open routes say so; guarded ones take the optional bearer token.
    for (path, method) in [
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/api/openapi.json", "get"),
        ("/api/docs", "get"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["security"],
            serde_json::json!([]),
            "{path}"
        );
    }
    assert_eq!(
        doc["paths"]["/api/jobs"]["get"]["security"],
        serde_json::json!([{}, {"bearer": []}])
    );
}
