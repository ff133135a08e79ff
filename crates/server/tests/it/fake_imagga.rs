//! A fake Imagga API (v2) on loopback, port 0, for tests of the Imagga provider: it speaks the
//! protocol the real API speaks (HTTP Basic auth, `POST /v2/uploads` with the multipart field
//! `image`, `GET /v2/tags?image_upload_id=…&limit=…[&language=…][&threshold=…]`,
//! `DELETE /v2/uploads/{id}`, the `{"result": …, "status": {"type", "text"}}` envelope), checks
//! that the client does too (anything else is recorded as a violation), and can be told how to
//! answer each tags request: a 403 with a quota message, a 429 with `Retry-After`, a 500, late,
//! or with a body that does not follow the protocol. Wrong credentials get a 401 like the real
//! API's. Every upload and delete is recorded, so a test can check that nothing is left behind.

#![allow(dead_code)]

use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the fake answers one tags request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The tags, as the real API gives them.
    Tags,
    /// `403` with the message the real API gives when the monthly quota is used up.
    QuotaReached,
    /// `429 Too Many Requests` with `Retry-After: secs`.
    TooManyRequests { retry_after_s: u64 },
    /// `500` with an error envelope.
    ServerError,
    /// The tags, after this long.
    Late(Duration),
    /// `200` with a body that is not the protocol's.
    Malformed,
}

/// The tags every image gets: (English, German, confidence 0–100), most confident first.
pub const TAGS: [(&str, &str, f64); 6] = [
    ("espresso", "Espresso", 61.41),
    ("cup", "Tasse", 38.2),
    ("coffee", "Kaffee", 22.75),
    ("drink", "Getränk", 9.5),
    ("saucer", "Untertasse", 5.0),
    ("table", "Tisch", 1.25),
];

#[derive(Debug, Clone)]
pub struct Upload {
    pub id: String,
    pub bytes: Vec<u8>,
    pub at: Instant,
}

#[derive(Debug, Clone)]
pub struct TagsCall {
    pub params: HashMap<String, String>,
    pub at: Instant,
    /// When the answer was sent.
    pub answered_at: Instant,
    pub answer: String,
}

#[derive(Default)]
struct Inner {
    /// Answers for the next tags requests, in order; `Tags` once it is empty.
    script: Vec<Answer>,
    live: BTreeMap<String, Vec<u8>>,
    uploads: Vec<Upload>,
    deleted: Vec<String>,
    tags_calls: Vec<TagsCall>,
    unauthorized: usize,
    violations: Vec<String>,
    next_id: u64,
}

#[derive(Clone)]
pub struct FakeImagga {
    pub url: String,
    pub key: String,
    pub secret: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeImagga {
    /// Starts the fake with the account `key`/`secret`; its tags requests are answered as
    /// `script` says, then with tags.
    pub async fn start(key: &str, secret: &str, script: Vec<Answer>) -> FakeImagga {
        let inner = Arc::new(Mutex::new(Inner {
            script,
            ..Inner::default()
        }));
        let fake = FakeImagga {
            url: String::new(),
            key: key.into(),
            secret: secret.into(),
            inner,
        };
        let app = Router::new()
            .route("/v2/uploads", post(upload))
            .route("/v2/uploads/{id}", delete(remove))
            .route("/v2/tags", get(tags))
            .fallback(unknown)
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeImagga {
            url: format!("http://{addr}"),
            ..fake
        }
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.inner.lock().unwrap().uploads.clone()
    }

    pub fn deleted(&self) -> Vec<String> {
        self.inner.lock().unwrap().deleted.clone()
    }

    pub fn tags_calls(&self) -> Vec<TagsCall> {
        self.inner.lock().unwrap().tags_calls.clone()
    }

    pub fn unauthorized(&self) -> usize {
        self.inner.lock().unwrap().unauthorized
    }

    /// Asserts that the client followed the protocol and that every upload was deleted, once.
    pub fn assert_clean(&self) {
        let inner = self.inner.lock().unwrap();
        assert!(
            inner.violations.is_empty(),
            "protocol violations: {:?}",
            inner.violations
        );
        assert!(
            inner.live.is_empty(),
            "uploads left at Imagga: {:?}",
            inner.live.keys().collect::<Vec<_>>()
        );
        let mut uploaded: Vec<&str> = inner.uploads.iter().map(|u| u.id.as_str()).collect();
        let mut deleted: Vec<&str> = inner.deleted.iter().map(String::as_str).collect();
        uploaded.sort_unstable();
        deleted.sort_unstable();
        assert_eq!(uploaded, deleted, "every upload is deleted exactly once");
    }

    fn violation(&self, what: String) {
        self.inner.lock().unwrap().violations.push(what);
    }

    /// `None` when the request carries this account's Basic credentials.
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.key, self.secret))
        );
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given == Some(expected.as_str()) {
            return None;
        }
        self.inner.lock().unwrap().unauthorized += 1;
        Some(error(
            StatusCode::UNAUTHORIZED,
            "You are not authorized to access this resource. Please check your API key and secret.",
        ))
    }
}

fn error(status: StatusCode, text: &str) -> Response {
    (
        status,
        Json(json!({"status": {"text": text, "type": "error"}})),
    )
        .into_response()
}

fn success(result: Value) -> Response {
    Json(json!({"result": result, "status": {"text": "", "type": "success"}})).into_response()
}

async fn unknown(State(fake): State<FakeImagga>, req: axum::extract::Request) -> Response {
    fake.violation(format!("{} {}", req.method(), req.uri()));
    error(StatusCode::NOT_FOUND, "Not found")
}

async fn upload(
    State(fake): State<FakeImagga>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    if let Some(r) = fake.refuse(&headers) {
        return r;
    }
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            fake.violation(format!("upload is not multipart: {e}"));
            return error(StatusCode::BAD_REQUEST, "Expected multipart/form-data");
        }
    };
    let mut image = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        let name = field.name().unwrap_or_default().to_string();
        let has_file_name = field.file_name().is_some();
        let bytes = field.bytes().await.unwrap_or_default();
        if name != "image" {
            fake.violation(format!("upload has a field {name:?}"));
            continue;
        }
        if !has_file_name {
            fake.violation("the image field has no file name".into());
        }
        image = Some(bytes.to_vec());
    }
    let Some(bytes) = image.filter(|b| !b.is_empty()) else {
        fake.violation("upload without an image".into());
        return error(StatusCode::BAD_REQUEST, "No image was uploaded");
    };
    let mut inner = fake.inner.lock().unwrap();
    inner.next_id += 1;
    let id = format!("i{:08}fakeUpl0ad", inner.next_id);
    inner.live.insert(id.clone(), bytes.clone());
    inner.uploads.push(Upload {
        id: id.clone(),
        bytes,
        at: Instant::now(),
    });
    success(json!({ "upload_id": id }))
}

async fn remove(
    State(fake): State<FakeImagga>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = fake.refuse(&headers) {
        return r;
    }
    let mut inner = fake.inner.lock().unwrap();
    if inner.live.remove(&id).is_none() {
        inner
            .violations
            .push(format!("delete of an unknown upload {id:?}"));
        return error(StatusCode::NOT_FOUND, "Upload not found");
    }
    inner.deleted.push(id);
    Json(json!({"status": {"text": "", "type": "success"}})).into_response()
}

async fn tags(
    State(fake): State<FakeImagga>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let at = Instant::now();
    if let Some(r) = fake.refuse(&headers) {
        return r;
    }
    for key in params.keys() {
        if !["image_upload_id", "limit", "language", "threshold"].contains(&key.as_str()) {
            fake.violation(format!("tags with an unknown parameter {key:?}"));
        }
    }
    let known = params
        .get("image_upload_id")
        .is_some_and(|id| fake.inner.lock().unwrap().live.contains_key(id));
    if !known {
        fake.violation(format!("tags of an unknown upload: {params:?}"));
        return error(StatusCode::BAD_REQUEST, "Unknown image_upload_id");
    }
    let limit = params.get("limit").map(|l| l.parse::<usize>());
    let limit = match limit {
        Some(Ok(l)) if l > 0 => l,
        other => {
            fake.violation(format!("tags with the limit {other:?}"));
            return error(StatusCode::BAD_REQUEST, "Invalid limit");
        }
    };
    let threshold = match params.get("threshold").map(|t| t.parse::<f64>()) {
        None => 0.0,
        Some(Ok(t)) => t,
        Some(Err(_)) => {
            fake.violation(format!("tags with the threshold {:?}", params["threshold"]));
            return error(StatusCode::BAD_REQUEST, "Invalid threshold");
        }
    };
    let language = params
        .get("language")
        .cloned()
        .unwrap_or_else(|| "en".into());
    let answer = {
        let mut inner = fake.inner.lock().unwrap();
        if inner.script.is_empty() {
            Answer::Tags
        } else {
            inner.script.remove(0)
        }
    };
    if let Answer::Late(d) = answer {
        tokio::time::sleep(d).await;
    }
    let response = match &answer {
        Answer::Tags | Answer::Late(_) => {
            let list: Vec<Value> = TAGS
                .iter()
                .filter(|(_, _, c)| *c >= threshold)
                .take(limit)
                .map(|(en, de, c)| {
                    let label = match language.as_str() {
                        "de" => *de,
                        _ => *en,
                    };
                    json!({"confidence": c, "tag": { language.as_str(): label }})
                })
                .collect();
            success(json!({ "tags": list }))
        }
        Answer::QuotaReached => error(
            StatusCode::FORBIDDEN,
            "You have reached your monthly limits for this subscription plan.",
        ),
        Answer::TooManyRequests { retry_after_s } => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            r.headers_mut()
                .insert("retry-after", retry_after_s.to_string().parse().unwrap());
            r
        }
        Answer::ServerError => error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
        Answer::Malformed => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r#"{"result": {"tags": "espresso"}, "status": {"type": "success"}"#,
        )
            .into_response(),
    };
    fake.inner.lock().unwrap().tags_calls.push(TagsCall {
        params,
        at,
        answered_at: Instant::now(),
        answer: format!("{answer:?}"),
    });
    response
}
