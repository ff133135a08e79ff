//! Request ids: a client's `X-Request-Id` (when it is a sensible one) or a new one, echoed in the
//! answer and carried by the request's span, so that every log line about the request (and the
//! jobs it creates) names it, together with the node.

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id a request goes by: the client's when it is 1–128 visible ASCII characters, else new.
fn id_of(req: &Request) -> String {
    req.headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_string)
}

/// Middleware: runs the request in a `request` span with its id and the node's name, and
/// answers with `X-Request-Id`.
pub async fn track(State(node): State<std::sync::Arc<str>>, req: Request, next: Next) -> Response {
    let id = id_of(&req);
    let span = tracing::info_span!(
        "request",
        request.id = %id,
        node = %node,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    resp
}
