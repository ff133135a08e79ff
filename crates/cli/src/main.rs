//! `imgclass`: the one binary. `serve` runs the API, the web page and the workers; `worker` runs
//! workers only; `classify` classifies files locally; `migrate` prepares or copies a database;
//! `submit` uploads images to a server.

mod submit;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use imgclass_classifier::{
    imagga, Classifier, ImageLimits, ImaggaClassifier, ImaggaConfig, Model, ModelSource,
    NoopClassifier, Secret,
};
use imgclass_server::webhooks::{Deliverer, WebhookConfig, WebhookSecret};
use imgclass_server::{
    AppState, ClassifierFactory, ServeLimits, UploadConfig, WorkerConfig, Workers,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "imgclass",
    version,
    about = "Asynchronous image classification: upload images, get labels."
)]
struct Cli {
    /// Log lines as readable text, or as one JSON object per line (with the span fields:
    /// request.id, job.id, node).
    #[arg(long, global = true, env = "IMGCLASS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// This process's name in lease tokens, metrics and logs.
fn node_name() -> String {
    format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into()),
        std::process::id()
    )
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the web page and (unless --no-workers) the workers.
    Serve(Box<ServeArgs>),
    /// Classify image files locally and print the top labels (no server, no database).
    Classify(ClassifyArgs),
    /// Run workers only, no HTTP API: a scale-out node on a shared PostgreSQL database.
    Worker(Box<WorkerArgs>),
    /// Create the database or bring it up to date; with --from and --to, copy an installation.
    Migrate(MigrateArgs),
    /// API tokens: once one exists, every /api/* request needs one.
    Token(TokenArgs),
    /// Upload images (files and folders) to a server, with progress; --wait prints the results.
    Submit(submit::SubmitArgs),
}

#[derive(Args)]
struct TokenArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it (it is shown this once; only its hash is stored).
    Create {
        /// A name to know it by (unique).
        #[arg(long)]
        name: String,
        /// What it may do: submit, read, manage, admin (admin: everything, on every job).
        #[arg(long, default_value = "submit,read,manage", value_parser = parse_scopes)]
        scope: ScopeList,
        /// It stops working after this long (e.g. 30d, 12h); default: never.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token, by name or id, at once.
    Revoke {
        /// The token's name or id.
        name: String,
    },
}

#[derive(Args)]
struct MigrateArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Copy every job, result and image from this database (e.g. sqlite://data/imgclass.db)...
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// ...into this one (e.g. postgres://user@host/imgclass), after migrating it.
    #[arg(long, requires = "from")]
    to: Option<String>,
}

#[derive(Args)]
struct WorkerArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    #[command(flatten)]
    work: WorkArgs,
}

#[derive(Args, Clone)]
struct DatabaseArgs {
    /// Database URL.
    #[arg(
        long,
        env = "IMGCLASS_DATABASE",
        default_value = "sqlite://data/imgclass.db"
    )]
    database: String,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// What classifies: `builtin` (the ONNX model, in-process), `imagga` (the Imagga tagging
    /// API; needs --imagga-key and --imagga-secret) or `noop` (answers at once without looking
    /// at the image; only for benchmarks of the queue).
    #[arg(long, env = "IMGCLASS_PROVIDER", value_enum, default_value_t = ProviderArg::Builtin)]
    provider: ProviderArg,
    /// An ImageNet-style ONNX model to use instead of the built-in EfficientNet-Lite0.
    #[arg(long, env = "IMGCLASS_MODEL", requires = "labels")]
    model: Option<PathBuf>,
    /// The labels of --model, one per line, in output order.
    #[arg(long, env = "IMGCLASS_LABELS", requires = "model")]
    labels: Option<PathBuf>,
    /// How many labels a result holds.
    #[arg(long, env = "IMGCLASS_TOP_K", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    top_k: u16,
    #[command(flatten)]
    imagga: ImaggaArgs,
}

/// The Imagga provider's settings.
#[derive(Args, Clone)]
struct ImaggaArgs {
    /// Imagga API key (HTTP Basic user name).
    #[arg(long, env = "IMGCLASS_IMAGGA_KEY", hide_env_values = true)]
    imagga_key: Option<String>,
    /// Imagga API secret (HTTP Basic password). Prefer the environment variable: a flag's value
    /// is visible to other users of the machine in the process list.
    #[arg(long, env = "IMGCLASS_IMAGGA_SECRET", hide_env_values = true)]
    imagga_secret: Option<String>,
    /// The Imagga API's base URL.
    #[arg(long, env = "IMGCLASS_IMAGGA_URL", default_value = imagga::DEFAULT_URL)]
    imagga_url: String,
    /// The language of Imagga's labels (a language code such as en, de, fr).
    #[arg(long, env = "IMGCLASS_IMAGGA_LANGUAGE", default_value = "en")]
    imagga_language: String,
    /// Leave out Imagga tags below this confidence (0–100).
    #[arg(long, env = "IMGCLASS_IMAGGA_THRESHOLD")]
    imagga_threshold: Option<f32>,
    /// The longest a request to a remote provider may take, from connecting to the last byte
    /// of its answer.
    #[arg(long, env = "IMGCLASS_PROVIDER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    provider_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProviderArg {
    /// The ONNX model, in-process (the built-in EfficientNet-Lite0, or --model).
    #[value(alias = "onnx")]
    Builtin,
    /// The Imagga tagging API.
    Imagga,
    /// Answers at once without looking at the image (queue benchmarks only).
    Noop,
}

impl ModelArgs {
    fn source(&self) -> ModelSource {
        match (&self.model, &self.labels) {
            (Some(model), Some(labels)) => ModelSource::File {
                model: model.clone(),
                labels: labels.clone(),
            },
            _ => ModelSource::BuiltIn,
        }
    }

    /// The Imagga provider's settings, checked (a classifier is made once to check them).
    fn imagga(&self) -> Result<ImaggaConfig> {
        let a = &self.imagga;
        let (Some(key), Some(secret)) = (&a.imagga_key, &a.imagga_secret) else {
            anyhow::bail!(
                "--provider imagga needs --imagga-key and --imagga-secret \
                 (or IMGCLASS_IMAGGA_KEY and IMGCLASS_IMAGGA_SECRET)"
            );
        };
        let config = ImaggaConfig {
            url: a.imagga_url.clone(),
            key: key.clone(),
            secret: Secret::new(secret.clone()),
            top_k: usize::from(self.top_k),
            language: a.imagga_language.clone(),
            threshold: a.imagga_threshold,
            timeout: a.provider_timeout,
        };
        ImaggaClassifier::new(&config)?;
        Ok(config)
    }
}

#[derive(Args, Clone)]
struct LimitArgs {
    /// Largest accepted file, in bytes.
    #[arg(long, env = "IMGCLASS_MAX_FILE_BYTES", default_value_t = 25 * 1024 * 1024)]
    max_file_bytes: u64,
    /// Largest accepted width or height, in pixels.
    #[arg(long, env = "IMGCLASS_MAX_SIDE", default_value_t = 12_000)]
    max_side: u32,
    /// Largest accepted width × height.
    #[arg(long, env = "IMGCLASS_MAX_PIXELS", default_value_t = 100_000_000)]
    max_pixels: u64,
}

impl LimitArgs {
    fn limits(&self) -> ImageLimits {
        ImageLimits {
            max_bytes: self.max_file_bytes,
            max_side: self.max_side,
            max_pixels: self.max_pixels,
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IMGCLASS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DatabaseArgs,
    /// Run the API and page only; workers run elsewhere.
    #[arg(long, env = "IMGCLASS_NO_WORKERS")]
    no_workers: bool,
    /// Attempts a job gets before it fails for good.
    #[arg(long, env = "IMGCLASS_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// An origin (e.g. https://app.example.com) whose web pages may call the API from the
    /// browser; repeat for several (env: comma-separated). None by default.
    #[arg(long = "cors-origin", env = "IMGCLASS_CORS_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    cors_origins: Vec<axum::http::HeaderValue>,
    /// Requests to /api/* allowed per token (per client address while the API is open), as
    /// N/PERIOD, e.g. 600/min; shared by every API node on the database. Off by default.
    #[arg(long, env = "IMGCLASS_QUOTA_REQUESTS", value_parser = parse_rate_limit)]
    quota_requests: Option<imgclass_store::RateLimit>,
    /// Images submitted per token (per client address while the API is open), as N/PERIOD,
    /// e.g. 120/min. Off by default.
    #[arg(long, env = "IMGCLASS_QUOTA_SUBMISSIONS", value_parser = parse_rate_limit)]
    quota_submissions: Option<imgclass_store::RateLimit>,
    /// Queued jobs a token may have at once; more is refused with 429 queue_full.
    #[arg(long, env = "IMGCLASS_MAX_QUEUED_PER_TOKEN")]
    max_queued_per_token: Option<u64>,
    /// How long an Idempotency-Key is remembered after its first use (a submission sent again
    /// with it in that time gets the first one's jobs).
    #[arg(long, env = "IMGCLASS_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    idempotency_ttl: Duration,
    /// Classify every image, even one this model has already classified (by default such an
    /// image is answered at once from the earlier result, marked cached).
    #[arg(long, env = "IMGCLASS_NO_RESULT_CACHE")]
    no_result_cache: bool,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    work: WorkArgs,
}

/// Limits that keep slow or hostile HTTP clients from holding the server.
#[derive(Args)]
struct HttpArgs {
    /// Time a client has to send a whole request head (on a new connection from the accept, on
    /// a kept-alive one from the request's first byte).
    #[arg(long, env = "IMGCLASS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,
    /// How long a kept-alive connection may stay idle between requests.
    #[arg(long, env = "IMGCLASS_KEEP_ALIVE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    keep_alive_timeout: Duration,
    /// A request body that sends nothing for this long is abandoned (408).
    #[arg(long, env = "IMGCLASS_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    body_read_timeout: Duration,
    /// Connections open at once; a client beyond it takes the place of the connection that has
    /// waited longest for a request. Keep it well below the open-file limit (`ulimit -n`).
    #[arg(long, env = "IMGCLASS_MAX_CONNECTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Largest request head (request line and headers), in bytes.
    #[arg(long, env = "IMGCLASS_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    max_header_bytes: u32,
    /// Bytes of request bodies that uploads in flight may hold at once (the whole process);
    /// at least the largest request body (4 × --max-file-bytes + 1 MiB).
    #[arg(long, env = "IMGCLASS_UPLOAD_BUDGET", default_value_t = imgclass_server::UploadBudget::DEFAULT_BYTES)]
    upload_budget: u64,
    /// How long an upload waits for room in the upload budget before it is answered 503 busy.
    #[arg(long, env = "IMGCLASS_UPLOAD_WAIT", default_value = "10s", value_parser = parse_duration)]
    upload_wait: Duration,
}

impl HttpArgs {
    fn limits(&self) -> ServeLimits {
        ServeLimits {
            header_read_timeout: self.header_read_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: self.max_connections as usize,
            max_header_bytes: self.max_header_bytes as usize,
            ..ServeLimits::default()
        }
    }
}

fn parse_origin(s: &str) -> Result<axum::http::HeaderValue, String> {
    let s = s.trim().trim_end_matches('/');
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?}: write an origin like https://app.example.com"))?;
    if !["http", "https"].contains(&scheme) || rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "{s:?}: an origin is scheme://host[:port], e.g. https://app.example.com"
        ));
    }
    axum::http::HeaderValue::from_str(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Webhook settings: any process with a secret delivers webhooks.
#[derive(Args, Clone)]
struct WebhookArgs {
    /// The secret webhooks are signed with (Standard Webhooks: whsec_ + base64 of 24–64 random
    /// bytes). Without it, no webhook is sent and submissions that ask for one are refused.
    /// Every node of one installation needs the same secret.
    #[arg(long, env = "IMGCLASS_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_webhook_secret)]
    webhook_secret: Option<WebhookSecret>,
    /// The webhook of every job whose submission names none.
    #[arg(long, env = "IMGCLASS_WEBHOOK_DEFAULT")]
    webhook_default: Option<String>,
    /// Also call loopback, private, link-local and other internal addresses (for tests and
    /// receivers on the same network).
    #[arg(long, env = "IMGCLASS_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// Attempts per webhook call, the first included (Standard Webhooks schedule: at once, 5 s,
    /// 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ...).
    #[arg(long, env = "IMGCLASS_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    webhook_max_attempts: u32,
    /// Multiplies the schedule's waits (e.g. 0.001 turns 5 min into 0.3 s; for tests).
    #[arg(long, env = "IMGCLASS_WEBHOOK_SCHEDULE_SCALE", default_value_t = 1.0)]
    webhook_schedule_scale: f64,
    /// The longest one webhook call may take.
    #[arg(long, env = "IMGCLASS_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    webhook_timeout: Duration,
}

fn parse_webhook_secret(s: &str) -> Result<WebhookSecret, String> {
    WebhookSecret::parse(s)
}

impl WebhookArgs {
    /// The webhook settings; `None` without a secret.
    fn config(&self) -> Result<Option<WebhookConfig>> {
        let Some(secret) = self.webhook_secret.clone() else {
            if self.webhook_default.is_some() {
                anyhow::bail!("--webhook-default needs --webhook-secret to sign the webhooks");
            }
            return Ok(None);
        };
        if !(self.webhook_schedule_scale.is_finite() && self.webhook_schedule_scale >= 0.0) {
            anyhow::bail!("--webhook-schedule-scale must be a number from 0 up");
        }
        let mut config = WebhookConfig::new(secret);
        config.allow_private = self.webhook_allow_private;
        config.max_attempts = self.webhook_max_attempts;
        config.schedule_scale = self.webhook_schedule_scale;
        config.timeout = self.webhook_timeout;
        config.lease = (self.webhook_timeout * 3).max(Duration::from_secs(30));
        config.default_url = self.webhook_default.clone();
        config.node = node_name();
        Ok(Some(config))
    }
}

/// Starts this process's webhook deliverer, when webhooks are on.
fn start_deliverer(
    store: &Arc<dyn imgclass_store::Store>,
    config: &Option<WebhookConfig>,
) -> Result<Option<Deliverer>> {
    let Some(config) = config else {
        return Ok(None);
    };
    tracing::info!(
        max_attempts = config.max_attempts,
        allow_private = config.allow_private,
        "delivering webhooks"
    );
    Ok(Some(Deliverer::start(store.clone(), config.clone())?))
}

/// What a process that runs workers needs.
#[derive(Args, Clone)]
struct WorkArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    webhooks: WebhookArgs,
    #[command(flatten)]
    limits: LimitArgs,
    /// Classification workers in this process: how many jobs it runs at once. Default: with
    /// the built-in model, the number of cores plus one (the extra worker stores its outcome
    /// and reads its next image while the others' images are classified, so the cores do not
    /// wait for the queue); with another provider, the number of cores.
    #[arg(long, env = "IMGCLASS_WORKERS", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,
    /// Inference threads (each with its own model session) that the workers share; at most
    /// one per worker. Default: with the built-in model, the number of cores (or of workers if
    /// fewer); with another provider, one per worker.
    #[arg(long, env = "IMGCLASS_INFERENCE_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    inference_threads: Option<u16>,
    /// ONNX Runtime threads per inference thread; default: cores / inference threads. Lower it
    /// when several processes share one machine's cores.
    #[arg(long, env = "IMGCLASS_INTRA_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    intra_threads: Option<u16>,
    /// Share of classification attempts (0.0–1.0) that fail on purpose, to see retries and
    /// failures at work.
    #[arg(long, env = "IMGCLASS_INJECT_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    inject_failure_rate: f64,
    /// Seed for --inject-failure-rate, for reproducible runs.
    #[arg(long, env = "IMGCLASS_INJECT_FAILURE_SEED")]
    inject_failure_seed: Option<u64>,
    /// Global limit on job starts shared by all workers on the database, as JOBS/PERIOD
    /// (e.g. 1/10s: at most one job starts in any 10 seconds). Off by default.
    #[arg(long, env = "IMGCLASS_RATE_LIMIT", value_parser = parse_rate_limit)]
    rate_limit: Option<imgclass_store::RateLimit>,
    /// An attempt that runs longer than this is abandoned and counts as failed.
    #[arg(long, env = "IMGCLASS_JOB_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    job_timeout: Duration,
    /// Delay before the first automatic retry; it doubles with each attempt (with jitter).
    #[arg(long, env = "IMGCLASS_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Longest delay between automatic retries.
    #[arg(long, env = "IMGCLASS_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    backoff_max: Duration,
    /// Times a job may lose its worker (crash, kill) before it fails as stalled.
    #[arg(long, env = "IMGCLASS_MAX_STALLS", default_value_t = imgclass_store::DEFAULT_MAX_STALLS)]
    max_stalls: u32,
    /// On SIGTERM/SIGINT, how long running jobs may take to finish before they are given back
    /// to the queue.
    #[arg(long, env = "IMGCLASS_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    shutdown_grace: Duration,
    /// Finished jobs (and images no other job uses) older than this are deleted; 0 keeps
    /// everything.
    #[arg(long, env = "IMGCLASS_RETAIN", default_value = "7d", value_parser = parse_retain)]
    retain: RetainArg,
    /// Serve GET /metrics on this address instead of the API's port (the only way a worker
    /// node serves them). It asks for no token: keep it private.
    #[arg(long, env = "IMGCLASS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How long a running job's lease lasts without a heartbeat (e.g. 30s).
    #[arg(long, env = "IMGCLASS_LEASE", default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
}

#[derive(Args)]
struct ClassifyArgs {
    /// Image files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write durations like 500ms, 30s, 5m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// `--retain`: a duration, or 0 for "keep forever".
#[derive(Debug, Clone, Copy)]
struct RetainArg(Option<Duration>);

fn parse_retain(s: &str) -> Result<RetainArg, String> {
    if s.trim() == "0" {
        return Ok(RetainArg(None));
    }
    parse_duration(s).map(|d| RetainArg(Some(d)))
}

fn parse_rate_limit(s: &str) -> Result<imgclass_store::RateLimit, String> {
    let (jobs, per) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: write JOBS/PERIOD, e.g. 1/10s"))?;
    let jobs: u32 = jobs
        .trim()
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: JOBS must be a whole number above 0"))?;
    let per = per.trim();
    // "1/s" means one per second.
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
        per.to_string()
    } else {
        format!("1{per}")
    };
    Ok(imgclass_store::RateLimit {
        jobs,
        per: parse_duration(&per)?,
    })
}

/// `--scope submit,read`: one value holding a list (clap would take a bare `Vec` as repeats).
#[derive(Debug, Clone)]
struct ScopeList(Vec<imgclass_core::Scope>);

fn parse_scopes(s: &str) -> Result<ScopeList, String> {
    imgclass_core::Scope::parse_list(s).map(ScopeList)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err("must be between 0.0 and 1.0".into());
    }
    Ok(v)
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sqlx=warn,ort=warn"));
    // Colours only for a person at a terminal: not in files, pipes or journald (NO_COLOR too).
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => fmt.init(),
        // One object per line; the fields of every enclosing span (request.id, job.id, node)
        // come along in "spans", the innermost one's also in "span".
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// jemalloc, with background threads that return freed memory to the system within seconds:
/// after a burst of big uploads the process goes back near its idle size, where glibc's malloc
/// keeps what it once held (measured in bench/README.md, "Uploads and memory").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    let result = match cli.command {
        Command::Classify(args) => classify(args),
        Command::Serve(args) => runtime(format).and_then(|rt| rt.block_on(serve(*args))),
        Command::Worker(args) => runtime(format).and_then(|rt| rt.block_on(worker(*args))),
        Command::Migrate(args) => runtime(format).and_then(|rt| rt.block_on(migrate(args))),
        Command::Token(args) => runtime(format).and_then(|rt| rt.block_on(token(args))),
        Command::Submit(args) => submit::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgclass: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime(format: LogFormat) -> Result<tokio::runtime::Runtime> {
    init_tracing(format);
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn classify(args: ClassifyArgs) -> Result<std::process::ExitCode> {
    let mut classifier: Box<dyn Classifier> = match args.model.provider {
        ProviderArg::Builtin => {
            let model = Model::load(&args.model.source())?;
            Box::new(model.session(cores(), usize::from(args.model.top_k))?)
        }
        ProviderArg::Imagga => Box::new(ImaggaClassifier::new(&args.model.imagga()?)?),
        ProviderArg::Noop => Box::new(NoopClassifier::default()),
    };
    let mut failed = false;
    for path in &args.files {
        let result = std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| classifier.classify(&bytes).map_err(anyhow::Error::from));
        match result {
            Ok(c) => {
                println!("{}", path.display());
                for p in &c.predictions {
                    println!("  {:>6.2}%  {}", p.probability * 100.0, p.label);
                }
                let info = classifier.info();
                println!(
                    "  (decode {:.1} ms, inference {:.1} ms; provider {}, model {} {})",
                    c.decode_ms, c.inference_ms, info.provider, info.name, info.version
                );
            }
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", path.display());
            }
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

async fn migrate(args: MigrateArgs) -> Result<std::process::ExitCode> {
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        let source = imgclass_store::connect(from)
            .await
            .with_context(|| format!("cannot open {from}"))?;
        source.migrate().await?;
        let target = imgclass_store::connect(to)
            .await
            .with_context(|| format!("cannot open {to}"))?;
        target.migrate().await?;
        let (copied, skipped) = imgclass_store::copy_all(&*source, &*target).await?;
        tracing::info!(copied, skipped, "copied jobs, results and images");
        println!("copied {copied} jobs ({skipped} already there) from {from} to {to}");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let store = imgclass_store::connect(&args.db.database).await?;
    store.migrate().await?;
    tracing::info!(database = %args.db.database, "migrations applied");
    Ok(std::process::ExitCode::SUCCESS)
}

async fn token(args: TokenArgs) -> Result<std::process::ExitCode> {
    let store = imgclass_store::connect(&args.db.database)
        .await
        .with_context(|| format!("cannot open the database {}", args.db.database))?;
    store.migrate().await?;
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
    };
    match args.command {
        TokenCommand::Create {
            name,
            scope,
            expires,
        } => {
            let (shown, new) = imgclass_server::auth::issue(&name, &scope.0, expires)
                .map_err(anyhow::Error::msg)?;
            let stored = store.create_token(&new).await?;
            eprintln!(
                "token {:?} (id {}, scopes {}, expires {}); it is shown only now:",
                stored.name,
                stored.id,
                imgclass_core::Scope::join(&stored.scopes),
                time(stored.expires_at)
            );
            println!("{shown}");
        }
        TokenCommand::List => {
            let now = chrono::Utc::now();
            println!(
                "{:<12}  {:<24}  {:<26}  {:<16}  {:<16}  state",
                "id", "name", "scopes", "created", "expires"
            );
            for t in store.list_tokens().await? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else if t.is_active(now) {
                    "active"
                } else {
                    "expired"
                };
                println!(
                    "{:<12}  {:<24}  {:<26}  {:<16}  {:<16}  {state}",
                    t.id,
                    t.name,
                    imgclass_core::Scope::join(&t.scopes),
                    time(Some(t.created_at)),
                    time(t.expires_at)
                );
            }
        }
        TokenCommand::Revoke { name } => match store.revoke_token(&name).await {
            Ok(t) => println!("revoked {:?} (id {})", t.name, t.id),
            Err(imgclass_store::StoreError::NotFound) => {
                anyhow::bail!("no token has the name or id {name:?}")
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn worker(args: WorkerArgs) -> Result<std::process::ExitCode> {
    let store = imgclass_store::connect(&args.db.database)
        .await
        .with_context(|| format!("cannot open the database {}", args.db.database))?;
    store.migrate().await?;
    let webhooks = args.work.webhooks.config()?;
    let metrics = Arc::new(imgclass_server::metrics::Metrics::new());
    if let Some(addr) = args.work.metrics_listen {
        serve_metrics(addr, metrics.clone(), store.clone()).await?;
    }
    let workers = start_workers(store.clone(), &args.work, Some(metrics)).await?;
    let deliverer = start_deliverer(&store, &webhooks)?;
    tracing::info!("imgclass worker is running");
    shutdown_signal().await;
    tracing::info!("shutting down: no new jobs are started");
    workers.shutdown(args.work.shutdown_grace).await;
    if let Some(d) = deliverer {
        d.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

/// Loads the classifier and starts this process's workers.
/// Serves `/metrics` alone on `addr` until the process ends.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<imgclass_server::metrics::Metrics>,
    store: Arc<dyn imgclass_store::Store>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    tracing::info!(
        "metrics are served on http://{}/metrics",
        listener.local_addr()?
    );
    let app = imgclass_server::metrics_router(metrics, store);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}

/// The model whose results the result cache reuses: the one this node's workers would run.
fn cached_model(args: &ModelArgs) -> Result<imgclass_core::ModelInfo> {
    Ok(match args.provider {
        ProviderArg::Noop => NoopClassifier::default().info().clone(),
        ProviderArg::Imagga => ImaggaClassifier::model_info(),
        ProviderArg::Builtin => Model::identify(&args.source())?,
    })
}

async fn start_workers(
    store: Arc<dyn imgclass_store::Store>,
    args: &WorkArgs,
    metrics: Option<Arc<imgclass_server::metrics::Metrics>>,
) -> Result<Workers> {
    let builtin = matches!(args.model.provider, ProviderArg::Builtin);
    let count = args
        .workers
        .map_or_else(|| cores() + usize::from(builtin), usize::from);
    // A remote provider's calls mostly wait on the network: one thread per worker.
    let threads = args
        .inference_threads
        .map_or_else(|| if builtin { cores() } else { count }, usize::from)
        .clamp(1, count);
    let factory: ClassifierFactory = match args.model.provider {
        ProviderArg::Noop => {
            tracing::warn!("provider noop: jobs succeed without classification (benchmarks only)");
            Arc::new(|| Ok(Box::new(NoopClassifier::default()) as Box<dyn Classifier>))
        }
        ProviderArg::Imagga => {
            let config = args.model.imagga()?;
            tracing::info!(provider = "imagga", url = %config.url, language = %config.language, timeout_ms = config.timeout.as_millis() as u64, workers = count, "classifying with the Imagga API");
            Arc::new(move || Ok(Box::new(ImaggaClassifier::new(&config)?) as Box<dyn Classifier>))
        }
        ProviderArg::Builtin => {
            let source = args.model.source();
            let model = tokio::task::spawn_blocking(move || Model::load(&source)).await??;
            let intra = args
                .intra_threads
                .map_or_else(|| (cores() / threads).max(1), usize::from);
            let top_k = usize::from(args.model.top_k);
            let limits = args.limits.limits();
            tracing::info!(provider = "builtin", model = %model.info().name, version = %model.info().version, workers = count, inference_threads = threads, intra_threads = intra, "model loaded");
            Arc::new(move || {
                let c = model.session(intra, top_k)?.with_limits(limits);
                Ok(Box::new(c) as Box<dyn Classifier>)
            })
        }
    };
    let config = WorkerConfig {
        workers: count,
        inference_threads: Some(threads),
        lease: args.lease,
        sweep_interval: (args.lease / 6).max(Duration::from_millis(100)),
        inject_failure_rate: args.inject_failure_rate,
        inject_failure_seed: args.inject_failure_seed,
        rate_limit: args.rate_limit,
        job_timeout: args.job_timeout,
        backoff_base: args.backoff_base,
        backoff_max: args.backoff_max.max(args.backoff_base),
        max_stalls: args.max_stalls,
        retain: args.retain.0,
        metrics,
        node: node_name(),
        ..WorkerConfig::default()
    };
    Workers::start(store, factory, config).await
}

async fn store_has_tokens(store: &dyn imgclass_store::Store) -> bool {
    store.tokens_in_use().await.unwrap_or(false)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(args: ServeArgs) -> Result<std::process::ExitCode> {
    let store = imgclass_store::connect(&args.db.database)
        .await
        .with_context(|| format!("cannot open the database {}", args.db.database))?;
    store.migrate().await?;
    let webhooks = args.work.webhooks.config()?;

    let metrics = Arc::new(imgclass_server::metrics::Metrics::new());
    if let Some(addr) = args.work.metrics_listen {
        serve_metrics(addr, metrics.clone(), store.clone()).await?;
    }
    // The node listens at once; `/readyz` says 503 until the workers have loaded the model.
    let (readiness, workers, mut workers_failed) = if args.no_workers {
        let (_, never) = tokio::sync::oneshot::channel();
        (imgclass_server::ops::Readiness::default(), None, never)
    } else {
        let (readiness, loaded) = imgclass_server::ops::Readiness::with_workers();
        let (failed_tx, failed) = tokio::sync::oneshot::channel();
        let slot = Arc::new(tokio::sync::Mutex::new(None));
        let (store, work, put) = (store.clone(), args.work.clone(), slot.clone());
        let metrics = metrics.clone();
        let starting = tokio::spawn(async move {
            let mut put = put.lock().await;
            match start_workers(store, &work, Some(metrics)).await {
                Ok(w) => {
                    *put = Some(w);
                    loaded.store(true, std::sync::atomic::Ordering::Release);
                }
                Err(e) => {
                    let _ = failed_tx.send(e);
                }
            }
        });
        (readiness, Some((slot, starting)), failed)
    };

    let upload = UploadConfig::new(args.work.limits.limits(), cores());
    let request_limit = upload.request_limit() as u64;
    if args.http.upload_budget < request_limit {
        anyhow::bail!(
            "--upload-budget ({} bytes) must hold at least one request body of the largest size, \
             4 × --max-file-bytes + 1 MiB = {request_limit} bytes",
            args.http.upload_budget
        );
    }
    let upload = upload.with_budget(imgclass_server::UploadBudget::new(
        args.http.upload_budget,
        args.http.upload_wait,
    ));
    let state = AppState {
        store,
        upload,
        max_attempts: args.max_attempts,
        rate_limit: args.work.rate_limit,
        webhooks: webhooks.clone().map(Arc::new),
        idempotency_ttl: args.idempotency_ttl,
        result_cache: if args.no_result_cache {
            None
        } else {
            Some(cached_model(&args.work.model)?)
        },
    };
    let deliverer = start_deliverer(&state.store, &webhooks)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && !store_has_tokens(&*state.store).await {
        tracing::warn!(
            "listening on {addr}, which is not a loopback address, without API tokens: anyone who \
             can reach it can read, change and delete every job (create one with `imgclass token \
             create`)"
        );
    }
    tracing::info!("imgclass is listening on http://{addr}");
    let (stopping, mut stop_rx) = tokio::sync::watch::channel(false);
    let http = imgclass_server::HttpConfig {
        cors_origins: args.cors_origins.clone(),
        readiness,
        quotas: imgclass_server::quota::QuotaConfig {
            requests: args.quota_requests,
            submissions: args.quota_submissions,
            max_queued_per_token: args.max_queued_per_token,
        },
        metrics: Some(metrics),
        metrics_on_api_port: args.work.metrics_listen.is_none(),
        node: node_name(),
    };
    let app = imgclass_server::router_with(state, http);
    // Our accept loop (connection cap, request-head, keep-alive and body timeouts); it gives
    // handlers the client's address (`ConnectInfo`) as `axum::serve` would.
    let server = imgclass_server::serve(listener, app, args.http.limits(), async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    });
    // Open event streams never end by themselves: after the signal, connections get a short
    // while to close before the process moves on to stopping the workers.
    let close_connections = async {
        shutdown_signal().await;
        tracing::info!("shutting down: no new jobs are started");
        let _ = stopping.send(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::select! {
        r = server => r?,
        _ = close_connections => {}
        Ok(e) = &mut workers_failed => return Err(e.context("cannot start the workers")),
    }
    if let Some((slot, starting)) = workers {
        if !starting.is_finished() {
            // Still loading the model: nothing has been claimed yet.
            starting.abort();
        }
        let _ = starting.await;
        if let Some(w) = slot.lock().await.take() {
            w.shutdown(args.work.shutdown_grace).await;
        }
    }
    if let Some(d) = deliverer {
        d.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse() {
        let r = parse_rate_limit("1/10s").unwrap();
        assert_eq!((r.jobs, r.per), (1, Duration::from_secs(10)));
        let r = parse_rate_limit("5/m").unwrap();
        assert_eq!((r.jobs, r.per), (5, Duration::from_secs(60)));
        assert!(parse_rate_limit("0/1s").is_err());
        assert!(parse_rate_limit("10s").is_err());
        assert!(parse_rate_limit("1/0s").is_err());
    }

    #[test]
    fn retention_parses() {
        assert_eq!(parse_retain("0").unwrap().0, None);
        assert_eq!(
            parse_retain("7d").unwrap().0,
            Some(Duration::from_secs(7 * 86400))
        );
        assert!(parse_retain("-1").is_err());
    }

    #[test]
    fn failure_rates_are_shares() {
        assert_eq!(parse_rate("0.4").unwrap(), 0.4);
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("x").is_err());
    }
}
