//! The HTTP/1 server around the router: the accept loop with its cap on concurrent connections,
//! and the per-connection limits that keep slow or hostile clients from holding the server
//! (request-head timeout, which is also the idle keep-alive timeout; body-read progress timeout;
//! request-head size). `imgclass serve` and the integration tests both serve through [`serve`].

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use imgclass_core::ErrorCode;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

/// Limits on connections and requests, the defaults being those of `imgclass serve`.
#[derive(Debug, Clone, Copy)]
pub struct HttpConfig {
    /// A client must send a whole request head within this time, counted from when the
    /// connection starts waiting for it; so it is also how long an idle keep-alive connection
    /// stays open.
    pub header_read_timeout: Duration,
    /// A request body that makes no progress (no bytes at all) for this long is abandoned:
    /// `408 request_timeout`, and the connection is closed.
    pub body_read_timeout: Duration,
    /// Connections served at once. Further clients wait in the listen backlog until a
    /// connection closes (stalled ones close after `header_read_timeout`).
    pub max_connections: usize,
    /// The largest request head (request line and headers) answered normally; a larger one is
    /// `431 headers_too_large`. Heads over 4 times this are cut off by the HTTP layer itself
    /// (a bare `431` and the connection closed), so that no connection buffers more than that.
    pub max_header_bytes: usize,
    /// The most header fields a request may have (more: `431 headers_too_large`).
    pub max_headers: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1000,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets each open
/// connection finish its current request, and returns once every connection has closed.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    config: HttpConfig,
    shutdown: F,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send,
{
    let app = app.layer(axum::middleware::from_fn_with_state(
        config,
        limit_request_head,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_headers(
            config
                .max_headers
                .saturating_mul(2)
                .max(config.max_headers + 1),
        )
        .max_header_size(config.max_header_bytes.saturating_mul(4));
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // Wait for a free slot before accepting: while the server is full, new clients wait in
        // the kernel's listen backlog instead of costing a file descriptor each.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: log, pause briefly, go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_timeout = config.body_read_timeout;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let request = request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
            app.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Middleware: a request head over the configured size or header count is answered
/// `431 headers_too_large` in the API's JSON shape.
async fn limit_request_head(
    State(config): State<HttpConfig>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    // Request line plus each "name: value\r\n".
    let size = request.method().as_str().len()
        + request.uri().to_string().len()
        + 12
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if headers.len() > config.max_headers {
        return ApiError::from_code(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request has {} header fields; at most {} are accepted",
                headers.len(),
                config.max_headers
            ),
        )
        .into_response();
    }
    if size > config.max_header_bytes {
        return ApiError::from_code(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request head is {size} bytes; at most {} are accepted",
                config.max_header_bytes
            ),
        )
        .into_response();
    }
    next.run(request).await
}
