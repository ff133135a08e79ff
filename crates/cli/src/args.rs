//! The command line: every subcommand's flags, their `IMGCLASS_*` environment variables and
//! help texts, and the checks that turn them into the libraries' settings.

use crate::parse::{
    parse_duration, parse_origin, parse_rate, parse_rate_limit, parse_retain, parse_scopes,
    parse_webhook_secret, redact_url, RetainArg, ScopeList,
};
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use imgclass_classifier::{
    imagga, ImageLimits, ImaggaClassifier, ImaggaConfig, ModelSource, Secret,
};
use imgclass_server::ServeLimits;
use imgclass_worker::webhooks::WebhookSecret;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "imgclass",
    version,
    about = "Asynchronous image classification: upload images, get labels."
)]
pub struct Cli {
    /// Log lines as readable text, or as one JSON object per line (with the span fields:
    /// request.id, job.id, node).
    #[arg(long, global = true, env = "IMGCLASS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// `--database` written before the subcommand (`imgclass --database URL migrate`): the
    /// subcommands that use a database define it (and show it in their help); this one only
    /// hands its value down to them, and `classify` and `submit` refuse it.
    #[arg(long, global = true, hide = true)]
    pub database: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
    Submit(SubmitArgs),
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand)]
pub enum TokenCommand {
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
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Copy every job, result and image from this database (e.g. sqlite://data/imgclass.db)...
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    /// ...into this one (e.g. postgres://user@host/imgclass), after migrating it.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Move every image of --database into this store (`database`, `file:///DIR` or
    /// `s3://BUCKET[/PREFIX]`), each checked against its SHA-256. Safe while the service runs;
    /// start the nodes with --blob-store set to the same store first, so that new images go
    /// there too. Interrupted, it resumes where it stopped when run again.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub blobs_to: Option<String>,
}

#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub work: WorkArgs,
}

#[derive(Args, Clone)]
pub struct DatabaseArgs {
    /// Database URL: sqlite://PATH (the file is created if missing) or
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/NAME. Accepted before or after the subcommand.
    // The help never shows the variable's value: it may hold a password.
    #[arg(
        long,
        global = true,
        env = "IMGCLASS_DATABASE",
        hide_env_values = true,
        default_value = "sqlite://data/imgclass.db"
    )]
    pub database: String,
    /// Where new images go: `database` (inside the database, in 1 MiB chunks), `file:///DIR`
    /// (one file per image, named by its SHA-256) or `s3://BUCKET[/PREFIX]` (any S3-compatible
    /// service, configured by AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL and AWS_ALLOW_HTTP). Images stored before stay readable where they are
    /// (`imgclass migrate --blobs-to` moves them). Default: on SQLite, images over 64 KiB as files in
    /// the folder `images` beside a new database file (or one that has that folder), small ones
    /// in the database; otherwise database.
    #[arg(long, global = true, env = "IMGCLASS_BLOB_STORE")]
    pub blob_store: Option<String>,
    /// PostgreSQL: connections this process keeps in its pool at most; a process that listens
    /// for changes holds one more. Default: 8 for `serve`, 4 for `worker` and the others.
    #[arg(long, env = "IMGCLASS_DB_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: Option<u32>,
    /// PostgreSQL: no LISTEN/NOTIFY; read new events and look for due jobs every
    /// --db-poll-interval instead. For a pooler in transaction mode (PgBouncer's
    /// pool_mode = transaction), which does not pass LISTEN.
    #[arg(long, env = "IMGCLASS_DB_NO_LISTEN")]
    pub db_no_listen: bool,
    /// PostgreSQL with --db-no-listen: how often (with jitter) a node reads new events and its
    /// idle workers look for jobs.
    #[arg(long, env = "IMGCLASS_DB_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub db_poll_interval: Duration,
}

impl DatabaseArgs {
    /// Where new images go, as configured or by default: on SQLite, the folder `images` beside
    /// the database file when the database is new or the folder is there (images over 64 KiB as
    /// files: bench/blob_stores.sh measured them faster end to end, and the small ones slower),
    /// else (an existing database without it, PostgreSQL) the database.
    pub fn blob_store_url(&self) -> String {
        if let Some(url) = &self.blob_store {
            return url.clone();
        }
        if let Some(file) = sqlite_file(&self.database) {
            let images = file
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("images");
            if images.is_dir() || !file.exists() {
                return format!("file://{}", images.display());
            }
        }
        imgclass_store::DATABASE.to_string()
    }

    /// The URL fit to print: without its password.
    pub fn shown(&self) -> String {
        redact_url(&self.database)
    }

    /// How this process uses a PostgreSQL database: its pool (`default_max` connections unless
    /// --db-max-connections says), LISTEN or polling, and whether it reads the event log.
    pub fn pg_options(&self, default_max: u32, follow_events: bool) -> imgclass_store::PgOptions {
        imgclass_store::PgOptions {
            max_connections: self.db_max_connections.unwrap_or(default_max),
            listen: !self.db_no_listen,
            follow_events,
            poll_interval: self.db_poll_interval,
        }
    }
}

/// The file a `sqlite:` URL names (`None` for an in-memory database).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// What classifies: `builtin` (the ONNX model, in-process), `imagga` (the Imagga tagging
    /// API; needs --imagga-key and --imagga-secret) or `noop` (answers at once without looking
    /// at the image; only for benchmarks of the queue).
    #[arg(long, env = "IMGCLASS_PROVIDER", value_enum, default_value_t = ProviderArg::Builtin)]
    pub provider: ProviderArg,
    /// With --labels: an ImageNet-style ONNX model file to use instead of the built-in
    /// EfficientNet-Lite0 (with its pre-processing). Without: the name of a model — the
    /// built-in one or one of --models — for `classify`, and the default model of jobs for
    /// `serve` (as --default-model).
    #[arg(long, env = "IMGCLASS_MODEL")]
    pub model: Option<String>,
    /// The labels of --model FILE, one per line, in output order.
    #[arg(long, env = "IMGCLASS_LABELS", requires = "model")]
    pub labels: Option<PathBuf>,
    /// How many labels a result holds.
    #[arg(long, env = "IMGCLASS_TOP_K", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top_k: u16,
    /// A model repository: each folder NAME/ holds model.onnx, labels.txt and model.toml (its
    /// pre-processing, see docs/models.md); its models are served beside the built-in one and
    /// jobs name them. A folder that cannot load is reported (logs, /readyz) and the node serves
    /// the others.
    #[arg(long, env = "IMGCLASS_MODELS")]
    pub models: Option<PathBuf>,
    /// The model of a job that names none [default: the built-in model, or the provider's].
    #[arg(long, env = "IMGCLASS_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    #[command(flatten)]
    pub imagga: ImaggaArgs,
}

/// The Imagga provider's settings.
#[derive(Args, Clone)]
pub struct ImaggaArgs {
    /// Imagga API key (HTTP Basic user name).
    #[arg(long, env = "IMGCLASS_IMAGGA_KEY", hide_env_values = true)]
    pub imagga_key: Option<String>,
    /// Imagga API secret (HTTP Basic password). Prefer the environment variable: a flag's value
    /// is visible to other users of the machine in the process list.
    #[arg(long, env = "IMGCLASS_IMAGGA_SECRET", hide_env_values = true)]
    pub imagga_secret: Option<String>,
    /// The Imagga API's base URL.
    #[arg(long, env = "IMGCLASS_IMAGGA_URL", default_value = imagga::DEFAULT_URL)]
    pub imagga_url: String,
    /// The language of Imagga's labels (a language code such as en, de, fr).
    #[arg(long, env = "IMGCLASS_IMAGGA_LANGUAGE", default_value = "en")]
    pub imagga_language: String,
    /// Leave out Imagga tags below this confidence (0–100).
    #[arg(long, env = "IMGCLASS_IMAGGA_THRESHOLD")]
    pub imagga_threshold: Option<f32>,
    /// The longest a request to a remote provider may take, from connecting to the last byte
    /// of its answer.
    #[arg(long, env = "IMGCLASS_PROVIDER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub provider_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderArg {
    /// The ONNX model, in-process (the built-in EfficientNet-Lite0, or --model).
    #[value(alias = "onnx")]
    Builtin,
    /// The Imagga tagging API.
    Imagga,
    /// Answers at once without looking at the image (queue benchmarks only).
    Noop,
}

impl ModelArgs {
    /// The model named with --default-model, or with --model NAME (without --labels).
    pub fn named_model(&self) -> Option<&str> {
        self.default_model.as_deref().or(match self.labels {
            None => self.model.as_deref(),
            Some(_) => None,
        })
    }

    pub fn source(&self) -> ModelSource {
        match (&self.model, &self.labels) {
            (Some(model), Some(labels)) => ModelSource::File {
                model: PathBuf::from(model),
                labels: labels.clone(),
            },
            _ => ModelSource::BuiltIn,
        }
    }

    /// The Imagga provider's settings, checked (a classifier is made once to check them).
    pub fn imagga(&self) -> Result<ImaggaConfig> {
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
pub struct LimitArgs {
    /// Largest accepted file, in bytes.
    #[arg(long, env = "IMGCLASS_MAX_FILE_BYTES", default_value_t = 25 * 1024 * 1024)]
    pub max_file_bytes: u64,
    /// Largest accepted width or height, in pixels.
    #[arg(long, env = "IMGCLASS_MAX_SIDE", default_value_t = 12_000)]
    pub max_side: u32,
    /// Largest accepted width × height.
    #[arg(long, env = "IMGCLASS_MAX_PIXELS", default_value_t = 100_000_000)]
    pub max_pixels: u64,
    /// The process's memory budget, in bytes: the ONNX Runtime sessions of the models it serves
    /// and the image decodes in flight, together. A model whose sessions would leave the decodes
    /// less than 256 MiB is not loaded. Default: a quarter of the memory the process may use
    /// (its cgroup's limit, else the machine's), at least 1 GiB.
    #[arg(long, env = "IMGCLASS_MEMORY_BUDGET", value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_budget: Option<u64>,
    /// The most the decodes in flight may hold at once, in bytes, within the memory budget; an
    /// image whose decode alone needs more is refused at upload (image_too_large).
    #[arg(long, env = "IMGCLASS_DECODE_BUDGET", default_value_t = imgclass_classifier::budget::DEFAULT_DECODE_BUDGET, value_parser = clap::value_parser!(u64).range(1..))]
    pub decode_budget: u64,
}

impl LimitArgs {
    /// Sets the process's memory budget from these options; before any model or image is
    /// loaded.
    pub fn init_memory_budget(&self) {
        let total = self
            .memory_budget
            .unwrap_or_else(imgclass_classifier::budget::default_total);
        if !imgclass_classifier::MemoryBudget::init_global(total, self.decode_budget) {
            tracing::warn!("the memory budget was already in use; --memory-budget and --decode-budget are not applied");
        }
        let budget = imgclass_classifier::MemoryBudget::global();
        tracing::info!(
            memory_budget_mib = budget.total() >> 20,
            decode_budget_mib = budget.capacity() >> 20,
            "memory budget"
        );
    }

    pub fn limits(&self) -> ImageLimits {
        ImageLimits {
            max_bytes: self.max_file_bytes,
            max_side: self.max_side,
            max_pixels: self.max_pixels,
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IMGCLASS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Run the API and page only; workers run elsewhere.
    #[arg(long, env = "IMGCLASS_NO_WORKERS")]
    pub no_workers: bool,
    /// Attempts a job gets before it fails for good.
    #[arg(long, env = "IMGCLASS_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// An origin (e.g. https://app.example.com) whose web pages may call the API from the
    /// browser; repeat for several (env: comma-separated). None by default.
    #[arg(long = "cors-origin", env = "IMGCLASS_CORS_ORIGIN", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// Requests to /api/* allowed per token (per client address while the API is open), as
    /// N/PERIOD, e.g. 600/min; shared by every API node on the database. Off by default.
    #[arg(long, env = "IMGCLASS_QUOTA_REQUESTS", value_parser = parse_rate_limit)]
    pub quota_requests: Option<imgclass_store::RateLimit>,
    /// Images submitted per token (per client address while the API is open), as N/PERIOD,
    /// e.g. 120/min. Off by default.
    #[arg(long, env = "IMGCLASS_QUOTA_SUBMISSIONS", value_parser = parse_rate_limit)]
    pub quota_submissions: Option<imgclass_store::RateLimit>,
    /// Queued jobs a token may have at once; more is refused with 429 queue_full.
    #[arg(long, env = "IMGCLASS_MAX_QUEUED_PER_TOKEN")]
    pub max_queued_per_token: Option<u64>,
    /// How long an Idempotency-Key is remembered after its first use (a submission sent again
    /// with it in that time gets the first one's jobs).
    #[arg(long, env = "IMGCLASS_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,
    /// Classify every image, even one this model has already classified (by default such an
    /// image is answered at once from the earlier result, marked cached).
    #[arg(long, env = "IMGCLASS_NO_RESULT_CACHE")]
    pub no_result_cache: bool,
    /// With images in an object store: an object that no job refers to (an upload stopped
    /// between storing its image and committing its job) is deleted once it is this old.
    /// Images of deleted jobs are deleted within a minute.
    #[arg(long, env = "IMGCLASS_BLOB_ORPHAN_GRACE", default_value = "1h", value_parser = parse_duration)]
    pub blob_orphan_grace: Duration,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub work: WorkArgs,
}

/// Limits that keep slow or hostile HTTP clients from holding the server.
#[derive(Args)]
pub struct HttpArgs {
    /// Time a client has to send a whole request head (on a new connection from the accept, on
    /// a kept-alive one from the request's first byte).
    #[arg(long, env = "IMGCLASS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may stay idle between requests.
    #[arg(long, env = "IMGCLASS_KEEP_ALIVE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub keep_alive_timeout: Duration,
    /// A request body that sends nothing for this long is abandoned (408).
    #[arg(long, env = "IMGCLASS_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Connections open at once; a client beyond it takes the place of the connection that has
    /// waited longest for a request. Keep it well below the open-file limit (`ulimit -n`).
    #[arg(long, env = "IMGCLASS_MAX_CONNECTIONS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Largest request head (request line and headers), in bytes.
    #[arg(long, env = "IMGCLASS_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_header_bytes: u32,
    /// Bytes of request bodies that uploads in flight may hold at once (the whole process);
    /// at least the largest request body (4 × --max-file-bytes + 1 MiB).
    #[arg(long, env = "IMGCLASS_UPLOAD_BUDGET", default_value_t = imgclass_server::UploadBudget::DEFAULT_BYTES)]
    pub upload_budget: u64,
    /// How long an upload waits for room in the upload budget before it is answered 503 busy.
    #[arg(long, env = "IMGCLASS_UPLOAD_WAIT", default_value = "10s", value_parser = parse_duration)]
    pub upload_wait: Duration,
}

impl HttpArgs {
    pub fn limits(&self) -> ServeLimits {
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

/// Webhook settings: any process with a secret delivers webhooks.
#[derive(Args, Clone)]
pub struct WebhookArgs {
    /// The secret webhooks are signed with (Standard Webhooks: whsec_ + base64 of 24–64 random
    /// bytes). Without it, no webhook is sent and submissions that ask for one are refused.
    /// Every node of one installation needs the same secret.
    #[arg(long, env = "IMGCLASS_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_webhook_secret)]
    pub webhook_secret: Option<WebhookSecret>,
    /// The webhook of every job whose submission names none.
    #[arg(long, env = "IMGCLASS_WEBHOOK_DEFAULT")]
    pub webhook_default: Option<String>,
    /// Also call loopback, private, link-local and other internal addresses (for tests and
    /// receivers on the same network).
    #[arg(long, env = "IMGCLASS_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Attempts per webhook call, the first included (Standard Webhooks schedule: at once, 5 s,
    /// 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ...).
    #[arg(long, env = "IMGCLASS_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_max_attempts: u32,
    /// Multiplies the schedule's waits (e.g. 0.001 turns 5 min into 0.3 s; for tests).
    #[arg(long, env = "IMGCLASS_WEBHOOK_SCHEDULE_SCALE", default_value_t = 1.0)]
    pub webhook_schedule_scale: f64,
    /// The longest one webhook call may take.
    #[arg(long, env = "IMGCLASS_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,
}

/// What a process that runs workers needs.
#[derive(Args, Clone)]
pub struct WorkArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Classification workers in this process: how many jobs it runs at once. Default: with
    /// the built-in model, twice the number of cores (each inference thread has the next image
    /// waiting while it classifies one: a worker stores its outcome and reads its next image
    /// meanwhile, so the cores do not wait for the queue, even when they all finish at once);
    /// with Imagga, the number of cores; with the no-op provider, 256.
    #[arg(long, env = "IMGCLASS_WORKERS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: Option<u16>,
    /// Inference threads (each with its own model session) that the workers share; at most
    /// one per worker. Default: with the built-in model and the no-op provider, the number of
    /// cores (or of workers if fewer); with Imagga, one per worker.
    #[arg(long, env = "IMGCLASS_INFERENCE_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub inference_threads: Option<u16>,
    /// ONNX Runtime threads per inference thread; default: cores / inference threads. Lower it
    /// when several processes share one machine's cores.
    #[arg(long, env = "IMGCLASS_INTRA_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub intra_threads: Option<u16>,
    /// Share of classification attempts (0.0–1.0) that fail on purpose, to see retries and
    /// failures at work.
    #[arg(long, env = "IMGCLASS_INJECT_FAILURE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub inject_failure_rate: f64,
    /// Seed for --inject-failure-rate, for reproducible runs.
    #[arg(long, env = "IMGCLASS_INJECT_FAILURE_SEED")]
    pub inject_failure_seed: Option<u64>,
    /// Global limit on job starts shared by all workers on the database, as JOBS/PERIOD
    /// (e.g. 1/10s: at most one job starts in any 10 seconds). Off by default.
    #[arg(long, env = "IMGCLASS_RATE_LIMIT", value_parser = parse_rate_limit)]
    pub rate_limit: Option<imgclass_store::RateLimit>,
    /// An attempt that runs longer than this is abandoned and counts as failed.
    #[arg(long, env = "IMGCLASS_JOB_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub job_timeout: Duration,
    /// Delay before the first automatic retry; it doubles with each attempt (with jitter).
    #[arg(long, env = "IMGCLASS_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest delay between automatic retries.
    #[arg(long, env = "IMGCLASS_BACKOFF_MAX", default_value = "60s", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Times a job may lose its worker (crash, kill) before it fails as stalled.
    #[arg(long, env = "IMGCLASS_MAX_STALLS", default_value_t = imgclass_core::policy::Rules::default().max_stalls)]
    pub max_stalls: u32,
    /// On SIGTERM/SIGINT, how long running jobs may take to finish before they are given back
    /// to the queue.
    #[arg(long, env = "IMGCLASS_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Finished jobs (and images no other job uses) older than this are deleted; 0 keeps
    /// everything.
    #[arg(long, env = "IMGCLASS_RETAIN", default_value = "7d", value_parser = parse_retain)]
    pub retain: RetainArg,
    /// Serve GET /metrics on this address instead of the API's port (the only way a worker
    /// node serves them). It asks for no token: keep it private.
    #[arg(long, env = "IMGCLASS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long a running job's lease lasts without a heartbeat (e.g. 30s).
    #[arg(long, env = "IMGCLASS_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Do not bring the database up to date at start: run `imgclass migrate` first. For nodes
    /// behind a pooler in transaction mode (PgBouncer), where the migrations' session lock
    /// does not hold.
    #[arg(long, env = "IMGCLASS_NO_MIGRATE")]
    pub no_migrate: bool,
}

impl WorkArgs {
    /// The queue's rules as configured (the longest backoff is never below the first).
    pub fn rules(&self) -> imgclass_core::policy::Rules {
        imgclass_core::policy::Rules {
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max.max(self.backoff_base),
            max_stalls: self.max_stalls,
        }
    }
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// Image files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args)]
pub struct SubmitArgs {
    /// Image files and folders (a folder's image files are uploaded; other files are skipped
    /// with a warning).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The imgclass server.
    #[arg(long, env = "IMGCLASS_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Wait for every job to finish, print each result as it arrives, and exit non-zero if any
    /// job failed.
    #[arg(long)]
    pub wait: bool,
    /// Print one JSON line per job: the job as `GET /api/jobs/{id}` shows it (finished, with
    /// --wait).
    #[arg(long)]
    pub json: bool,
    /// Also upload the images in subfolders.
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// An API token (needed once the server has tokens).
    #[arg(long, env = "IMGCLASS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Uploads in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// The model that classifies the images (the server's `GET /api/models` lists them; by
    /// default the server's default model).
    #[arg(long)]
    pub model: Option<String>,
}
