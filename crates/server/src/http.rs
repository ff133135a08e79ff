//! The HTTP/1 server around the router: the accept loop with its cap on concurrent connections
//! (evicting the connection that waited longest for a request when full), and the per-connection
//! limits that keep slow or hostile clients from holding the server
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
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
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
    /// Connections open at once. A client beyond it takes the place of the connection that has
    /// waited longest for a request; when every connection has a request in flight, it waits.
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
///
/// When `max_connections` are open and another client connects, the open connection that has
/// waited longest for a request (idle keep-alive, or a request head still arriving: a slow or
/// hostile client) is closed to make room; a connection with a request in flight (an upload
/// being read, an event stream) is never closed for this. Only when every connection has a
/// request in flight does the new client wait for a free slot.
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
        .max_headers(config.max_headers.saturating_mul(2).max(1))
        .max_header_size(config.max_header_bytes.saturating_mul(4));
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if registry.evict_longest_waiting() {
                    tracing::debug!(%peer, "server full: closed the connection that waited longest for a request");
                } else {
                    tracing::warn!(%peer, "server full: every connection has a request in flight; the new one waits");
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let (id, mut evicted) = registry.register();
        let service = {
            let app = app.clone();
            let registry = registry.clone();
            let body_timeout = config.body_read_timeout;
            hyper::service::service_fn(move |request: Request<Incoming>| {
                // Counted from the moment the head is complete until the response body is done.
                let guard = registry.request_started(id);
                let request = request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
                let response = app.clone().oneshot(request);
                async move {
                    let response = response.await?;
                    Ok::<_, std::convert::Infallible>(response.map(|inner| TrackedBody {
                        inner,
                        _guard: guard,
                    }))
                }
            })
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let registry = registry.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = &mut connection => Some(result),
                Ok(()) = &mut evicted => {
                    // The connection is not polled here, so no request can start meanwhile.
                    if registry.in_flight(id) == 0 {
                        None
                    } else {
                        Some(connection.await)
                    }
                }
            };
            if let Some(Err(e)) = result {
                tracing::debug!(error = %e, %peer, "connection closed with an error");
            }
            registry.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The open connections: which have a request in flight, and since when the others wait.
#[derive(Default)]
struct Registry {
    slots: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
}

struct Slot {
    in_flight: usize,
    /// When the connection last had no request in flight.
    waiting_since: Instant,
    evict: Option<oneshot::Sender<()>>,
}

impl Registry {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.slots().insert(
            id,
            Slot {
                in_flight: 0,
                waiting_since: Instant::now(),
                evict: Some(tx),
            },
        );
        (id, rx)
    }

    fn remove(&self, id: u64) {
        self.slots().remove(&id);
    }

    fn in_flight(&self, id: u64) -> usize {
        self.slots().get(&id).map_or(0, |s| s.in_flight)
    }

    fn request_started(self: &Arc<Self>, id: u64) -> RequestGuard {
        if let Some(slot) = self.slots().get_mut(&id) {
            slot.in_flight += 1;
        }
        RequestGuard {
            registry: self.clone(),
            id,
        }
    }

    /// Tells the connection without a request in flight that has waited longest to close.
    fn evict_longest_waiting(&self) -> bool {
        let mut slots = self.slots();
        let victim = slots
            .iter_mut()
            .filter(|(_, s)| s.in_flight == 0 && s.evict.is_some())
            .min_by_key(|(_, s)| s.waiting_since)
            .and_then(|(_, s)| s.evict.take());
        victim.is_some_and(|tx| tx.send(()).is_ok())
    }
}

/// Marks a request as in flight on its connection until dropped (with the response body).
struct RequestGuard {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.registry.slots().get_mut(&self.id) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if slot.in_flight == 0 {
                slot.waiting_since = Instant::now();
            }
        }
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct TrackedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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
