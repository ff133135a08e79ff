//! `GET /metrics`: the queue as the database sees it (jobs by status, read at scrape time), what
//! this node's workers did (jobs finished by status and error code, queue wait, decode, inference
//! and end-to-end durations, claim batch sizes, rate-limit waits), its HTTP traffic (requests by
//! method, route and status, durations), open event streams, and its database connections and
//! errors.
//!
//! The format follows the request's `Accept` header as Prometheus' own client libraries do:
//! OpenMetrics 1.0 to a client that prefers it (Prometheus does), otherwise the Prometheus text
//! format 0.0.4 (also to a client that sends no `Accept`, or only `*/*`).
//!
//! Every label has a bounded set of values, whatever clients send: methods outside the standard
//! ones are counted as `other`, and requests that match no route under the route `unmatched`.
//!
//! With API tokens in use, `/metrics` on the API's port needs an `admin` token;
//! `--metrics-listen ADDR` serves it on a port of its own, without a token (keep that port
//! private).

use crate::auth::{Access, Caller};
use crate::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use imgclass_core::{ErrorCode, JobStatus, Scope};
use imgclass_store::Store;
use imgclass_worker::metrics::{AttemptEnded, WorkerMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    status: String,
    error_code: String,
    /// The job's model: only names some node serves (a job naming another is refused), so the
    /// models of the repositories bound it.
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

/// A histogram of seconds per model.
type PerModel = Family<ModelLabel, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlobLabels {
    op: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HolderLabel {
    holder: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 1 ms to about 16 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The metrics of one process.
pub struct Metrics {
    registry: Registry,
    jobs: Family<StatusLabel, Gauge>,
    finished: Family<FinishedLabels, Counter>,
    queue_wait: Histogram,
    decode: PerModel,
    inference: PerModel,
    end_to_end: Histogram,
    claim_batch: Histogram,
    rate_limit_waits: Counter,
    rate_limit_wait: Histogram,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    sse_clients: Gauge,
    db_connections: Family<PoolLabels, Gauge>,
    db_connections_max: Family<PoolLabel, Gauge>,
    db_errors: Family<KindLabel, Counter>,
    blob_ops: Family<BlobLabels, Counter>,
    blob_duration: HistogramFamily<OpLabel>,
    memory_budget: Gauge,
    memory_held: Family<HolderLabel, Gauge>,
    // Webhook deliveries by outcome are registered here by the webhook work
    // (`imgclass_webhook_deliveries_total{outcome}`), next to the job counters.
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("imgclass"),
            jobs: Family::default(),
            finished: Family::default(),
            queue_wait: seconds(),
            decode: PerModel::new_with_constructor(seconds),
            inference: PerModel::new_with_constructor(seconds),
            end_to_end: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            claim_batch: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            rate_limit_waits: Counter::default(),
            rate_limit_wait: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(seconds),
            sse_clients: Gauge::default(),
            db_connections: Family::default(),
            db_connections_max: Family::default(),
            db_errors: Family::default(),
            blob_ops: Family::default(),
            blob_duration: Family::new_with_constructor(seconds),
            memory_budget: Gauge::default(),
            memory_held: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "jobs",
            "Jobs in the database by status (read at scrape time)",
            m.jobs.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs this node's workers ended, by status and error code",
            m.finished.clone(),
        );
        r.register_with_unit(
            "job_queue_wait",
            "Time from due to claimed, per attempt",
            Unit::Seconds,
            m.queue_wait.clone(),
        );
        r.register_with_unit(
            "job_decode",
            "Image decode and pre-processing time",
            Unit::Seconds,
            m.decode.clone(),
        );
        r.register_with_unit(
            "job_inference",
            "Model inference time",
            Unit::Seconds,
            m.inference.clone(),
        );
        r.register_with_unit(
            "job_end_to_end",
            "Time from submission to the end of the job",
            Unit::Seconds,
            m.end_to_end.clone(),
        );
        r.register(
            "claim_batch_size",
            "Jobs taken by one claim",
            m.claim_batch.clone(),
        );
        r.register(
            "rate_limit_waits",
            "Times the workers waited for the global rate limit",
            m.rate_limit_waits.clone(),
        );
        r.register_with_unit(
            "rate_limit_wait",
            "How long the workers waited for the global rate limit",
            Unit::Seconds,
            m.rate_limit_wait.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by method, route and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP request durations by method and route (to the response's head)",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "sse_clients",
            "Open event streams (GET /api/events)",
            m.sse_clients.clone(),
        );
        r.register(
            "db_connections",
            "Open database connections by pool and state, idle or in_use (read at scrape time)",
            m.db_connections.clone(),
        );
        r.register(
            "db_connections_max",
            "The most connections each database pool opens",
            m.db_connections_max.clone(),
        );
        r.register(
            "db_errors",
            "Database errors seen by this process, by kind",
            m.db_errors.clone(),
        );
        r.register(
            "blob_operations",
            "Operations on the object store that holds images, by operation and result",
            m.blob_ops.clone(),
        );
        r.register_with_unit(
            "blob_operation_duration",
            "Durations of operations on the object store that holds images",
            Unit::Seconds,
            m.blob_duration.clone(),
        );
        r.register_with_unit(
            "memory_budget",
            "The process's memory budget: model sessions and image decodes together",
            Unit::Bytes,
            m.memory_budget.clone(),
        );
        r.register_with_unit(
            "memory_held",
            "Bytes of the memory budget held now: by the models (their files and ONNX Runtime sessions) and by decodes (read at scrape time)",
            Unit::Bytes,
            m.memory_held.clone(),
        );
        m
    }

    /// Counts an open event stream until the guard is dropped.
    pub fn sse_client(self: &Arc<Self>) -> SseGuard {
        self.sse_clients.inc();
        SseGuard(self.clone())
    }

    /// The exposition in `format`, after reading what is read at scrape time.
    pub async fn render(&self, store: &dyn Store, format: Format) -> String {
        let budget = imgclass_classifier::MemoryBudget::global();
        self.memory_budget.set(budget.total() as i64);
        for (holder, bytes) in [("models", budget.models()), ("decodes", budget.in_use())] {
            self.memory_held
                .get_or_create(&HolderLabel {
                    holder: holder.into(),
                })
                .set(bytes as i64);
        }
        match store.stats(None).await {
            Ok(s) => {
                for (status, n) in [
                    ("queued", s.queued),
                    ("running", s.running),
                    ("succeeded", s.succeeded),
                    ("failed", s.failed),
                    ("canceled", s.canceled),
                ] {
                    self.jobs
                        .get_or_create(&StatusLabel {
                            status: status.into(),
                        })
                        .set(n as i64);
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the job counts"),
        }
        for p in store.pool_status() {
            let idle = p.idle.min(p.size);
            for (state, n) in [("idle", idle), ("in_use", p.size - idle)] {
                self.db_connections
                    .get_or_create(&PoolLabels {
                        pool: p.name.into(),
                        state: state.into(),
                    })
                    .set(i64::from(n));
            }
            self.db_connections_max
                .get_or_create(&PoolLabel {
                    pool: p.name.into(),
                })
                .set(i64::from(p.max));
        }
        let errors = imgclass_store::database_errors();
        for (kind, n) in [("unavailable", errors.unavailable), ("other", errors.other)] {
            let c = self
                .db_errors
                .get_or_create(&KindLabel { kind: kind.into() });
            // The store counts; the counter follows it.
            c.inc_by(n.saturating_sub(c.get()));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        match format {
            Format::OpenMetrics => out,
            Format::Text => openmetrics_to_text(&out),
        }
    }
}

/// The two exposition formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 (text).
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format for a request's `Accept` header, as Prometheus' client libraries choose it:
    /// the acceptable media range with the highest `q` among OpenMetrics (`version` 1.0.0,
    /// 0.0.1 or none) and the text format (`version` 0.0.4 or none), the first one on a tie;
    /// the text format when none is named (no `Accept`, `*/*`, anything else).
    pub fn negotiate(headers: &HeaderMap) -> Format {
        let mut best: Option<(f32, Format)> = None;
        let ranges = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for range in ranges {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut version) = (1.0_f32, None);
            for param in parts {
                let Some((k, v)) = param.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "version" => version = Some(v),
                    _ => {}
                }
            }
            let format = match (media.as_str(), version) {
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    Format::OpenMetrics
                }
                ("text/plain", None | Some("0.0.4")) => Format::Text,
                _ => continue,
            };
            // (NaN is not acceptable either.)
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Text, |(_, f)| f)
    }
}

/// The Prometheus text format 0.0.4 from the OpenMetrics text prometheus-client writes: the same
/// samples; a counter's `# HELP` and `# TYPE` name its samples (`…_total`, which is the only
/// name the 0.0.4 format knows a counter by); no `# UNIT` and no `# EOF`; OpenMetrics types the
/// 0.0.4 format lacks are `untyped`. (No exemplars and no `_created` samples are written here.)
fn openmetrics_to_text(om: &str) -> String {
    let types: HashMap<&str, &str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        let (keyword, rest) = if let Some(rest) = line.strip_prefix("# HELP ") {
            ("HELP", rest)
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            ("TYPE", rest)
        } else if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let (suffix, kind) = match types.get(name).copied() {
            Some("counter") => ("_total", "counter"),
            Some(t @ ("gauge" | "histogram" | "summary")) => ("", t),
            Some("info") => ("_info", "untyped"),
            _ => ("", "untyped"),
        };
        let text = if keyword == "TYPE" { kind } else { text };
        let _ = writeln!(out, "# {keyword} {name}{suffix} {text}");
    }
    out
}

/// What this node's workers report.
impl imgclass_store::BlobObserver for Metrics {
    fn observe(&self, op: imgclass_store::BlobOp, ok: bool, elapsed: std::time::Duration) {
        let op = op.as_str().to_string();
        let result = if ok { "ok" } else { "error" }.to_string();
        self.blob_ops
            .get_or_create(&BlobLabels {
                op: op.clone(),
                result,
            })
            .inc();
        self.blob_duration
            .get_or_create(&OpLabel { op })
            .observe(elapsed.as_secs_f64());
    }
}

impl WorkerMetrics for Metrics {
    fn attempt_ended(&self, ended: &AttemptEnded, status: JobStatus) {
        if let Some(w) = ended.queue_wait.and_then(|w| w.to_std().ok()) {
            self.queue_wait.observe(w.as_secs_f64());
        }
        if let Some((decode, inference)) = ended.timings_ms {
            let model = ModelLabel {
                model: ended.model.clone(),
            };
            self.decode.get_or_create(&model).observe(decode / 1e3);
            self.inference
                .get_or_create(&model)
                .observe(inference / 1e3);
        }
        let code = ended.error.map(|c| c.to_string()).unwrap_or_default();
        let status = match status {
            // Not the end of the job: it runs again.
            JobStatus::Queued => "retried",
            other => other.as_str(),
        };
        if status != "retried" {
            let e2e = (chrono::Utc::now() - ended.created_at)
                .to_std()
                .unwrap_or_default();
            self.end_to_end.observe(e2e.as_secs_f64());
        }
        self.finished
            .get_or_create(&FinishedLabels {
                status: status.into(),
                error_code: code,
                model: ended.model.clone(),
            })
            .inc();
    }

    fn claimed(&self, n: usize) {
        self.claim_batch.observe(n as f64);
    }

    fn rate_limited(&self, wait: Duration) {
        self.rate_limit_waits.inc();
        self.rate_limit_wait.observe(wait.as_secs_f64());
    }
}

/// An open event stream, counted while it lives.
pub struct SseGuard(Arc<Metrics>);

impl Drop for SseGuard {
    fn drop(&mut self) {
        self.0.sse_clients.dec();
    }
}

/// A request method as a label: one of the standard methods, or `other` (any token is a method,
/// so a client could otherwise make up new series at will).
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// Middleware: counts and times every request by method, route pattern and status, and makes
/// the metrics reachable to handlers (the event stream counts its clients). A request that
/// matches no route (a 404 from the fallback) is counted under the route `unmatched`, never
/// under its path.
pub async fn track_http(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let method = method_label(req.method()).to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    req.extensions_mut().insert(metrics.clone());
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: resp.status().as_u16().to_string(),
        })
        .inc();
    resp
}

#[derive(Clone)]
struct MetricsState {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    /// On the API's port: who may read them. `None` on a port of its own.
    access: Option<Access>,
}

/// `GET /metrics`. With `access`, it is on the API's port: once tokens are in use it needs an
/// `admin` token.
pub fn routes(metrics: Arc<Metrics>, store: Arc<dyn Store>, access: Option<Access>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(MetricsState {
            metrics,
            store,
            access,
        })
}

async fn scrape(State(s): State<MetricsState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let format = Format::negotiate(&parts.headers);
    if let Some(access) = &s.access {
        match access.authenticate(&parts).await {
            Ok(caller @ Caller::Token(_)) if !caller.has(Scope::Admin) => {
                return ApiError::from_code(
                    ErrorCode::Forbidden,
                    "the metrics need a token with the admin scope",
                )
                .into_response()
            }
            Ok(_) => {}
            Err(resp) => return resp,
        }
    }
    let body = s.metrics.render(&*s.store, format).await;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Format {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        Format::negotiate(&headers)
    }

    #[test]
    fn the_format_follows_the_accept_header_by_q_value() {
        assert_eq!(Format::negotiate(&HeaderMap::new()), Format::Text);
        assert_eq!(accept("*/*"), Format::Text);
        assert_eq!(accept("application/openmetrics-text"), Format::OpenMetrics);
        assert_eq!(
            accept("Application/OpenMetrics-Text; Version=\"1.0.0\""),
            Format::OpenMetrics
        );
        assert_eq!(accept("application/openmetrics-text;q=0"), Format::Text);
        assert_eq!(accept("application/openmetrics-text;q=nan"), Format::Text);
        assert_eq!(
            accept("text/plain;q=0.4,application/openmetrics-text;q=0.5"),
            Format::OpenMetrics
        );
        // On a tie, the first.
        assert_eq!(
            accept("text/plain;q=0.5,application/openmetrics-text;q=0.5"),
            Format::Text
        );
        // A version not served is not chosen.
        assert_eq!(
            accept("application/openmetrics-text;version=2.0.0,text/plain;q=0.1"),
            Format::Text
        );
        assert_eq!(
            accept("text/plain;version=0.0.4;q=0.1,*/*;q=0.9"),
            Format::Text
        );
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let mut registry = Registry::with_prefix("x");
        let counter = Counter::<u64>::default();
        counter.inc();
        registry.register("requests", "Requests", counter);
        let histogram = Histogram::new([1.0]);
        registry.register_with_unit("wait", "Waits", Unit::Seconds, histogram);
        let gauge = Gauge::<i64>::default();
        registry.register("open", "Open", gauge);
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &registry).unwrap();
        assert_eq!(
            openmetrics_to_text(&om),
            "# HELP x_requests_total Requests.\n\
             # TYPE x_requests_total counter\n\
             x_requests_total 1\n\
             # HELP x_wait_seconds Waits.\n\
             # TYPE x_wait_seconds histogram\n\
             x_wait_seconds_sum 0.0\n\
             x_wait_seconds_count 0\n\
             x_wait_seconds_bucket{le=\"1.0\"} 0\n\
             x_wait_seconds_bucket{le=\"+Inf\"} 0\n\
             # HELP x_open Open.\n\
             # TYPE x_open gauge\n\
             x_open 0\n"
        );
    }
}
