//! The HTTP/1 server around the router: the accept loop with its cap on concurrent connections
//! (making room by closing the connection that waited longest for a request), and the
//! per-connection limits that keep slow or hostile clients from holding the server
//! (request-head timeout, keep-alive idle timeout, body-read progress timeout, request-head
//! size). `imgclass serve` and the integration tests both serve through [`serve`]. A request
//! whose declared body is larger than the application takes is refused before anything of the
//! body is read ([`refuse_oversized_bodies`]).

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify, Semaphore};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

/// Limits on connections and requests, the defaults being those of `imgclass serve`.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A client must send a whole request head within this time: on a new connection counted
    /// from the accept, on a kept-alive one from the request's first byte.
    pub header_read_timeout: Duration,
    /// A kept-alive connection that sends nothing for this long after a response is closed.
    pub keep_alive_timeout: Duration,
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

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
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
/// Each connection's watchdog closes it when it waits too long for a request (the header-read
/// and keep-alive timeouts; never while a request is in flight). When `max_connections` are
/// open and another client connects, the open connection that has waited longest for a request
/// (idle keep-alive, or a request head still arriving: a slow or hostile client) is closed to
/// make room; a connection with a request in flight (an upload being read, an event stream) is
/// never closed for this. Only when every connection has a request in flight does the new
/// client wait for a free slot.
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    config: ServeLimits,
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
    // The request-head and keep-alive deadlines are kept by each connection's watchdog below,
    // which tells an idle kept-alive connection from one whose next head is arriving.
    http.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(config.max_headers.saturating_mul(2).max(1))
        .max_header_size(config.max_header_bytes.saturating_mul(4));
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    let refusals = Arc::new(ParseRefusals::new(&config));
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
        let (id, conn, mut evicted) = registry.register();
        let service = {
            let app = app.clone();
            let conn = conn.clone();
            let body_timeout = config.body_read_timeout;
            hyper::service::service_fn(move |request: Request<Incoming>| {
                // Counted from the moment the head is complete until the response body is done.
                let guard = conn.request_started();
                let mut request =
                    request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
                // The client's address, as `axum::serve` gives it (`ConnectInfo`).
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
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
        let io = TokioIo::new(TrackedIo {
            inner: stream,
            conn: conn.clone(),
            refusals: refusals.clone(),
            replacing: None,
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        let registry = registry.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut evict_seen = false;
            // Neither the watchdog nor an eviction ever drops a connection with a request in
            // flight; and while this task is not polling `connection`, no request can start.
            let result = loop {
                let now = Instant::now();
                let check_at = conn
                    .deadline(&config)
                    .unwrap_or(now + config.header_read_timeout);
                tokio::select! {
                    result = &mut connection => break Some(result),
                    Ok(()) = &mut evicted, if !evict_seen => {
                        evict_seen = true;
                        if conn.in_flight() == 0 {
                            break None;
                        }
                    }
                    // The deadline moved (a head began, a response ended): compute it again.
                    () = conn.changed.notified() => {}
                    () = tokio::time::sleep_until(check_at.into()) => {
                        if conn.deadline(&config).is_some_and(|d| d <= Instant::now()) {
                            tracing::debug!(%peer, "closed a connection that waited too long for a request");
                            break None;
                        }
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

/// The open connections, for making room when the server is full.
#[derive(Default)]
struct Registry {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Registry {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self) -> (u64, Arc<Conn>, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let conn = Arc::new(Conn {
            times: Mutex::new(ConnTimes {
                in_flight: 0,
                served: 0,
                waiting_since: Instant::now(),
                head_started: None,
            }),
            evict: Mutex::new(Some(tx)),
            changed: Notify::new(),
        });
        self.conns().insert(id, conn.clone());
        (id, conn, rx)
    }

    fn remove(&self, id: u64) {
        self.conns().remove(&id);
    }

    /// Tells the connection without a request in flight that has waited longest to close.
    fn evict_longest_waiting(&self) -> bool {
        let victim = self
            .conns()
            .values()
            .filter_map(|c| {
                let times = c.times();
                (times.in_flight == 0).then(|| (times.waiting_since, c.clone()))
            })
            .filter(|(_, c)| c.evict_sender_present())
            .min_by_key(|(since, _)| *since)
            .map(|(_, c)| c);
        victim
            .and_then(|c| c.take_evict_sender())
            .is_some_and(|tx| tx.send(()).is_ok())
    }
}

/// One connection's state: requests in flight, and since when it waits for the next one.
struct Conn {
    times: Mutex<ConnTimes>,
    evict: Mutex<Option<oneshot::Sender<()>>>,
    /// Wakes the connection's watchdog when its deadline moves.
    changed: Notify,
}

struct ConnTimes {
    in_flight: usize,
    /// Requests answered on this connection.
    served: u64,
    /// When the connection last had no request in flight (accepted, or a response ended).
    waiting_since: Instant,
    /// When the first byte of the next request arrived, on a kept-alive connection.
    head_started: Option<Instant>,
}

impl Conn {
    fn times(&self) -> MutexGuard<'_, ConnTimes> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evict_sender_present(&self) -> bool {
        self.evict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn take_evict_sender(&self) -> Option<oneshot::Sender<()>> {
        self.evict.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn in_flight(&self) -> usize {
        self.times().in_flight
    }

    fn bytes_received(&self) {
        let mut t = self.times();
        if t.in_flight == 0 && t.head_started.is_none() {
            t.head_started = Some(Instant::now());
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut t = self.times();
        t.in_flight += 1;
        t.head_started = None;
        RequestGuard { conn: self.clone() }
    }

    /// When the connection has waited too long for a request; `None` while one is in flight.
    fn deadline(&self, config: &ServeLimits) -> Option<Instant> {
        let t = self.times();
        if t.in_flight > 0 {
            None
        } else if t.served == 0 {
            // A new connection's first head must be complete within the header-read timeout.
            Some(t.waiting_since + config.header_read_timeout)
        } else if let Some(started) = t.head_started {
            Some(started + config.header_read_timeout)
        } else {
            Some(t.waiting_since + config.keep_alive_timeout)
        }
    }
}

/// Marks a request as in flight on its connection until dropped (with the response body).
struct RequestGuard {
    conn: Arc<Conn>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut t = self.conn.times();
        t.in_flight = t.in_flight.saturating_sub(1);
        if t.in_flight == 0 {
            t.served += 1;
            t.waiting_since = Instant::now();
            t.head_started = None;
            self.conn.changed.notify_one();
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

/// The connection's socket, noting when the first byte of a request arrives, and giving the
/// answers hyper writes by itself for a request head it cannot parse (no handler ever sees
/// them) the API's JSON error body.
struct TrackedIo {
    inner: TcpStream,
    conn: Arc<Conn>,
    refusals: Arc<ParseRefusals>,
    /// A refusal being written in place of hyper's: its bytes, how many are written, and how
    /// many of hyper's bytes it stands for.
    replacing: Option<(Arc<[u8]>, usize, usize)>,
}

/// What is written instead of hyper's bare answers to request heads it refuses before any
/// routing: `431` (a head over 4 × `max_header_bytes`, or over 2 × `max_headers` fields) and
/// `400` (a head that is not HTTP/1). They are recognised by their status and their empty body:
/// every other response comes from the router, whose errors (`limit_request_head`, the
/// handlers, `json_errors`) always have a body.
struct ParseRefusals {
    too_large: Arc<[u8]>,
    malformed: Arc<[u8]>,
}

impl ParseRefusals {
    fn new(config: &ServeLimits) -> ParseRefusals {
        let too_large = ApiError::from_code(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request head is over {} bytes or {} header fields; it was not read, and the \
                 connection is closed",
                config.max_header_bytes.saturating_mul(4),
                config.max_headers.saturating_mul(2)
            ),
        );
        let malformed = ApiError::from_code(
            ErrorCode::BadRequest,
            "the request head is not valid HTTP/1.1; the connection is closed",
        );
        ParseRefusals {
            too_large: Self::response(too_large),
            malformed: Self::response(malformed),
        }
    }

    fn response(error: ApiError) -> Arc<[u8]> {
        let body = serde_json::json!({
            "error": { "code": error.code, "message": error.message }
        })
        .to_string();
        let status = error.status;
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
        .into()
    }

    /// When `buf` starts with one of hyper's own bare answers: its length and what to write
    /// instead.
    fn replacement(&self, buf: &[u8]) -> Option<(usize, Arc<[u8]>)> {
        let replacement = if buf.starts_with(b"HTTP/1.1 431 ") {
            &self.too_large
        } else if buf.starts_with(b"HTTP/1.1 400 ") {
            &self.malformed
        } else {
            return None;
        };
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let empty = head.contains("\r\ncontent-length: 0\r\n");
        empty.then(|| (end, replacement.clone()))
    }
}

impl TrackedIo {
    /// Writes the replacement under way; `Ready(Ok(n))` (`n`: the bytes of hyper's answer it
    /// stands for) once all of it is written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, written, stands_for)) = &mut self.replacing {
            if *written == bytes.len() {
                let n = *stands_for;
                self.replacing = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    self.replacing = None;
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => {
                    self.replacing = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }

    /// Starts replacing `buf` when it is one of hyper's bare answers: written while no
    /// request is in flight but a request head has begun to arrive (the one refused).
    fn replaces(&mut self, buf: &[u8]) -> bool {
        if self.replacing.is_some() {
            return true;
        }
        let Some((stands_for, bytes)) = self.refusals.replacement(buf) else {
            return false;
        };
        let refusing = {
            let t = self.conn.times();
            t.in_flight == 0 && t.head_started.is_some()
        };
        if refusing {
            self.replacing = Some((bytes, 0, stands_for));
        }
        refusing
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_received();
        }
        polled
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replaces(buf) {
            return self.poll_replacement(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if self.replaces(first) {
                return self.poll_replacement(cx);
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Middleware: a request head over the configured size or header count is answered
/// `431 headers_too_large` in the API's JSON shape.
async fn limit_request_head(
    State(config): State<ServeLimits>,
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

/// The largest request bodies the application takes, compared with a request's declared
/// `Content-Length` before anything of its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Any request body.
    pub request: u64,
    /// A raw image body of `POST /api/jobs` (one file: the per-file limit).
    pub raw_file: u64,
}

/// Middleware: a request that declares a body larger than the application takes is answered
/// `413 payload_too_large` at once, before its body is read, and the connection is closed
/// after it. A client that sent `Expect: 100-continue` is never invited to send the body: the
/// HTTP layer sends `100 Continue` only when the body is first read, which it never is then.
/// From a client that did not ask, and may be sending already, the body is read and discarded
/// meanwhile (at most the request limit, and only while it makes progress), so that it reads
/// the answer instead of a reset.
pub async fn refuse_oversized_bodies(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let Some(declared) = declared_length(request.headers()) else {
        return next.run(request).await;
    };
    let message = if declared > limits.request {
        format!(
            "the request declares a body of {declared} bytes; at most {} are accepted; it was \
             not read",
            limits.request
        )
    } else if declared > limits.raw_file && is_raw_upload(&request) {
        // Named as the upload's own checks name it: by its `?filename=`, cleaned for display.
        let label = request
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .find_map(|pair| pair.strip_prefix("filename="))
            .map(|v| {
                percent_encoding::percent_decode_str(&v.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .and_then(|name| crate::api::upload::clean_file_name(&name))
            .unwrap_or_else(|| "the request body".to_string());
        format!(
            "{label} declares {declared} bytes, more than the limit of {} bytes per file; it \
             was not read",
            limits.raw_file
        )
    } else {
        return next.run(request).await;
    };
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        let mut body = request.into_body().into_data_stream();
        let limit = limits.request;
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut seen = 0u64;
            while let Some(Ok(chunk)) = body.next().await {
                seen += chunk.len() as u64;
                if seen > limit {
                    break;
                }
            }
        });
    }
    let mut response = ApiError::from_code(ErrorCode::PayloadTooLarge, message).into_response();
    // The body stays unread: the connection cannot carry another request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The request's declared `Content-Length`, if it has a valid one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// An upload of one raw image (`POST /api/jobs` with an `image/*` or
/// `application/octet-stream` body), whose whole body is one file.
fn is_raw_upload(request: &Request) -> bool {
    if request.method() != Method::POST || request.uri().path() != "/api/jobs" {
        return false;
    }
    let Some(value) = request.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let essence = String::from_utf8_lossy(value.as_bytes());
    let essence = essence
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("image/") || essence == "application/octet-stream"
}
