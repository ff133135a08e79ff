//! The OpenAPI document at `/api/openapi.json` and the reference page at `/api/docs`.

use crate::helpers::{fixture, TestApp};
use imgclass_core::ErrorCode;
use serde_json::Value;

/// Every operation of the API: (method, path, the error codes its handler documents). The
/// guarded ones (under `/api/`, except the description itself) also document what the access
/// layer answers: `ACCESS_CODES`.
const OPERATIONS: &[(&str, &str, &[&str])] = &[
    (
        "post",
        "/api/jobs",
        &[
            "bad_request",
            "no_files",
            "payload_too_large",
            "unsupported_media_type",
            "image_corrupt",
            "image_too_large",
            "invalid_webhook",
            "unknown_model",
            "queue_full",
            "busy",
        ],
    ),
    (
        "get",
        "/api/jobs",
        &["invalid_status", "invalid_cursor", "invalid_query"],
    ),
    (
        "get",
        "/api/jobs/export",
        &["invalid_query", "invalid_status"],
    ),
    (
        "post",
        "/api/jobs/cancel-queued",
        &["invalid_query", "invalid_status"],
    ),
    (
        "post",
        "/api/jobs/delete-finished",
        &["invalid_query", "invalid_status"],
    ),
    ("get", "/api/jobs/{id}", &["not_found"]),
    ("delete", "/api/jobs/{id}", &["not_found"]),
    ("get", "/api/jobs/{id}/image", &["not_found"]),
    ("get", "/api/jobs/{id}/deliveries", &["not_found"]),
    (
        "post",
        "/api/jobs/{id}/retry",
        &["not_found", "invalid_state"],
    ),
    (
        "post",
        "/api/jobs/{id}/cancel",
        &["not_found", "invalid_state"],
    ),
    (
        "post",
        "/api/jobs/retry-failed",
        &["invalid_query", "invalid_status"],
    ),
    ("get", "/api/stats", &["invalid_query", "invalid_status"]),
    ("get", "/api/models", &[]),
    ("post", "/api/models/reload", &["invalid_state"]),
    ("get", "/api/events", &["bad_request"]),
    ("get", "/healthz", &[]),
    ("get", "/readyz", &[]),
    ("get", "/api/openapi.json", &[]),
    ("get", "/api/docs", &[]),
];

/// What the access layer and the database can answer on every guarded route.
const ACCESS_CODES: &[&str] = &[
    "unauthorized",
    "forbidden",
    "rate_limited",
    "unavailable",
    "insufficient_storage",
];

fn guarded(path: &str) -> bool {
    path.starts_with("/api/") && path != "/api/openapi.json" && path != "/api/docs"
}

async fn document(app: &TestApp) -> Value {
    let resp = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_openapi_3_1_and_names_every_route_and_error() {
    let app = TestApp::without_workers().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "imgclass");

    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        documented += item.as_object().unwrap().len();
        assert!(
            OPERATIONS.iter().any(|(_, p, _)| p == path),
            "{path} is documented but not listed in this test"
        );
    }
    assert_eq!(documented, OPERATIONS.len(), "documented operations");

    let mut operation_ids = std::collections::HashSet::new();
    for (method, path, codes) in OPERATIONS {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        let id = op["operationId"].as_str().unwrap();
        assert!(operation_ids.insert(id.to_string()), "duplicate {id}");
        assert!(op["description"].is_string() || op["summary"].is_string());
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path} has no success response"
        );
        // Each error code the route can answer is named on the response of its status, and
        // every error response has the error body.
        let access: &[&str] = if guarded(path) { ACCESS_CODES } else { &[] };
        for code in codes.iter().chain(access) {
            let code: ErrorCode = code.parse().unwrap();
            let status = imgclass_server::error::ApiError::status_for(code).as_u16();
            let response = &responses[&status.to_string()];
            let description = response["description"].as_str().unwrap_or_default();
            assert!(
                description.contains(&format!("`{code}`")),
                "{method} {path}: {status} does not name {code}: {description:?}"
            );
        }
        for (status, response) in responses {
            if (status.starts_with('4') || status.starts_with('5')) && *path != "/readyz" {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }

    // The schemas the responses use are all there, and the error codes are the real ones.
    let schemas = &doc["components"]["schemas"];
    for name in [
        "JobView",
        "JobsCreated",
        "JobList",
        "ErrorBody",
        "ErrorCode",
        "JobStatus",
        "JobResult",
        "EventView",
        "StatsView",
    ] {
        assert!(schemas[name].is_object(), "schema {name} missing");
    }
    let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(codes, ErrorCode::ALL.map(|c| c.as_str()));
    let body = &doc["paths"]["/api/jobs"]["post"]["requestBody"]["content"];
    assert!(body["multipart/form-data"]["schema"].is_object());

    // Every reference resolves (a client generator or a fuzzer cannot follow one that does not).
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or(r);
        assert!(schemas[name].is_object(), "{r} does not resolve");
    }
}

/// Every documented operation is served by the router (none is documented but missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let app = TestApp::without_workers().await;
    let id = app.submit(&[("coffee.png", fixture("coffee.png"))]).await[0];
    let doc = document(&app).await;
    let mut operations: Vec<(&String, &Value, &String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.push((path, item, method));
        }
    }
    // The deletes last, so that the others find the job; the bulk delete (which takes it, once
    // canceled) after the delete of the job itself.
    operations.sort_by_key(|(path, _, method)| {
        if path.ends_with("/delete-finished") {
            2
        } else {
            u8::from(*method == "delete")
        }
    });
    for (path, item, method) in operations {
        {
            if path == "/api/events" {
                continue; // Never ends; tested in events.rs.
            }
            let url = app.url(&path.replace("{id}", &id.to_string()));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = app
                .client
                .request(method.clone(), &url)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            assert!(
                status != 404 && status != 405,
                "{method} {path} answered {status}"
            );
            let documented = &item[method.as_str().to_lowercase()]["responses"][status.to_string()];
            assert!(
                documented.is_object(),
                "{method} {path} answered {status}, which it does not document"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_page_is_served_from_the_binary_under_a_strict_policy() {
    let app = TestApp::without_workers().await;
    let resp = app.client.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, imgclass_server::web::CONTENT_SECURITY_POLICY);
    assert!(!csp.contains("unsafe") && csp.contains("script-src 'self'"));
    let html = resp.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("<style"));
    // Everything it loads comes from this server.
    for (attr, _) in html
        .match_indices("src=\"")
        .chain(html.match_indices("href=\""))
    {
        let rest = &html[attr..];
        let url = rest.split('"').nth(1).unwrap();
        assert!(
            url.starts_with('/') || url.starts_with('#') || url == "data:,",
            "{url} is not from this server"
        );
    }
    for (path, kind) in [
        ("/api/docs/docs.js", "text/javascript"),
        ("/api/docs/docs.css", "text/css"),
    ] {
        assert!(html.contains(path), "{path}");
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("innerHTML"),
            "{path} builds its DOM without innerHTML"
        );
        assert!(
            !text.contains("http://") && !text.contains("https://"),
            "{path}"
        );
    }
    let js = app
        .client
        .get(app.url("/api/docs/docs.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(js.contains("/api/openapi.json"));
}
