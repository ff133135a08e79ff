//! `TestApp`: one service instance on loopback with its own database.

use imgclass_classifier::{Classifier, ImageLimits, Model, ModelSource};
use imgclass_core::{JobId, JobStatus};
use imgclass_server::api::views::JobView;
use imgclass_server::{AppState, ServeLimits, UploadBudget, UploadConfig};
use imgclass_store::{Job, Store};
use imgclass_worker::webhooks::{Deliverer, WebhookConfig};
use imgclass_worker::{ClassifierFactory, WorkerConfig, Workers};
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tempfile::TempDir;

pub fn model() -> Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL
        .get_or_init(|| Model::load(&ModelSource::BuiltIn).expect("built-in model"))
        .clone()
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn factory() -> ClassifierFactory {
    let model = model();
    Arc::new(move || Ok(Box::new(model.session(1, 5)?) as Box<dyn Classifier>))
}

pub struct Options {
    pub workers: usize,
    pub factory: Option<ClassifierFactory>,
    pub max_attempts: u32,
    pub limits: ImageLimits,
    pub worker_config: WorkerConfig,
    /// The queue's rules the store decides with.
    pub rules: imgclass_core::policy::Rules,
    pub http: imgclass_server::HttpConfig,
    pub serve_limits: ServeLimits,
    /// Webhook settings of the API (`None`: no webhooks).
    pub webhooks: Option<WebhookConfig>,
    /// The deliverer's settings when they differ from the API's; `Some(None)`: no deliverer.
    pub deliverer: Option<Option<WebhookConfig>>,
    pub idempotency_ttl: Duration,
    /// The model whose results the result cache reuses (`None`: no cache, as most tests want
    /// every job to run).
    pub result_cache: Option<imgclass_core::ModelInfo>,
    /// The SQLite file to use instead of one in a fresh temporary directory.
    pub database_file: Option<std::path::PathBuf>,
    /// The upload budget (bytes of request bodies held at once) instead of the default one.
    pub upload_budget: Option<UploadBudget>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            factory: None,
            max_attempts: 3,
            limits: ImageLimits::default(),
            worker_config: WorkerConfig::default(),
            rules: imgclass_core::policy::Rules::default(),
            http: imgclass_server::HttpConfig::default(),
            serve_limits: ServeLimits::default(),
            webhooks: None,
            deliverer: None,
            idempotency_ttl: imgclass_server::DEFAULT_IDEMPOTENCY_TTL,
            result_cache: None,
            database_file: None,
            upload_budget: None,
        }
    }
}

/// The real classifier, made to take at least `delay` for the first `slow_calls` images: a
/// named pause point for tests of timeouts, heartbeats and cancellation.
pub fn slow_factory(delay: Duration, slow_calls: usize) -> ClassifierFactory {
    let model = model();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Arc::new(move || {
        Ok(Box::new(Slow {
            inner: model.session(1, 5)?,
            delay,
            slow_calls,
            calls: calls.clone(),
        }) as Box<dyn Classifier>)
    })
}

struct Slow {
    inner: imgclass_classifier::OnnxClassifier,
    delay: Duration,
    slow_calls: usize,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Classifier for Slow {
    fn classify(
        &mut self,
        image: &[u8],
    ) -> Result<imgclass_classifier::Classification, imgclass_classifier::ClassifyError> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n < self.slow_calls {
            std::thread::sleep(self.delay);
        }
        self.inner.classify(image)
    }

    fn info(&self) -> &imgclass_core::ModelInfo {
        self.inner.info()
    }
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    _workers: Option<Workers>,
    pub deliverer: Option<Deliverer>,
    pub db_url: String,
    _dir: TempDir,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::with(Options::default()).await
    }

    pub async fn without_workers() -> TestApp {
        Self::with(Options {
            workers: 0,
            ..Options::default()
        })
        .await
    }

    pub async fn with(opts: Options) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let db_url = match &opts.database_file {
            Some(file) => format!("sqlite://{}", file.display()),
            None => format!("sqlite://{}/test.db", dir.path().display()),
        };
        let store = imgclass_store::connect_with(&db_url, opts.rules)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let workers = if opts.workers > 0 {
            let config = WorkerConfig {
                workers: opts.workers,
                ..opts.worker_config.clone()
            };
            let factory = opts.factory.clone().unwrap_or_else(factory);
            Some(
                Workers::start(store.clone(), factory, config)
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let state = AppState {
            store: store.clone(),
            upload: match opts.upload_budget.clone() {
                Some(budget) => UploadConfig::new(opts.limits, 2).with_budget(budget),
                None => UploadConfig::new(opts.limits, 2),
            },
            max_attempts: opts.max_attempts,
            rate_limit: opts.worker_config.rate_limit,
            webhooks: opts.webhooks.clone().map(Arc::new),
            idempotency_ttl: opts.idempotency_ttl,
            result_cache: opts.result_cache.clone(),
            default_model: imgclass_core::BUILTIN_MODEL.into(),
            reload: None,
        };
        let deliverer = opts
            .deliverer
            .clone()
            .unwrap_or_else(|| opts.webhooks.clone())
            .map(|c| Deliverer::start::<JobView>(store.clone(), c).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The same accept loop and connection limits as `imgclass serve`.
        let router = imgclass_server::router_with(state, opts.http.clone());
        let limits = opts.serve_limits;
        tokio::spawn(async move {
            imgclass_server::serve(listener, router, limits, std::future::pending())
                .await
                .unwrap();
        });
        TestApp {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            _workers: workers,
            deliverer,
            db_url,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates an API token (as `imgclass token create` does) and returns what it shows once.
    pub async fn token(&self, name: &str, scopes: &[imgclass_core::Scope]) -> String {
        self.token_expiring(name, scopes, None).await
    }

    pub async fn token_expiring(
        &self,
        name: &str,
        scopes: &[imgclass_core::Scope],
        expires_in: Option<Duration>,
    ) -> String {
        let (shown, new) = imgclass_server::auth::issue(name, scopes, expires_in).unwrap();
        self.store.create_token(&new).await.unwrap();
        shown
    }

    /// A request with `Authorization: Bearer TOKEN` (none when `token` is `None`).
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.client.request(method, self.url(path));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Uploads one file as the holder of `token`; returns the response.
    pub async fn upload_as(&self, token: &str, name: &str, bytes: Vec<u8>) -> reqwest::Response {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
        );
        self.request(reqwest::Method::POST, "/api/jobs", Some(token))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads one file as the holder of `token`; returns the job's id.
    pub async fn submit_as(&self, token: &str, name: &str, bytes: Vec<u8>) -> JobId {
        let resp = self.upload_as(token, name, bytes).await;
        assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
        let body: Value = resp.json().await.unwrap();
        body["jobs"][0]["id"].as_str().unwrap().parse().unwrap()
    }

    /// Uploads files as one multipart request.
    pub async fn upload(&self, files: &[(&str, Vec<u8>)]) -> reqwest::Response {
        self.upload_with(files, &[]).await
    }

    /// Uploads files with plain fields (`priority`, `webhook`, ...) as one multipart request.
    pub async fn upload_with(
        &self,
        files: &[(&str, Vec<u8>)],
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        self.client
            .post(self.url("/api/jobs"))
            .multipart(multipart(files, fields))
            .send()
            .await
            .unwrap()
    }

    /// Uploads and returns the created jobs' ids.
    pub async fn submit(&self, files: &[(&str, Vec<u8>)]) -> Vec<JobId> {
        let resp = self.upload(files).await;
        assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
        let body: Value = resp.json().await.unwrap();
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let resp = self.client.post(self.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Waits for the next event of a job (or 60 s).
    pub async fn wait_for_change(&self, id: JobId) {
        let mut events = self.store.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match events.recv().await {
                    Ok(e) if e.job_id == id => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }

    /// Waits, through the store's event stream (no polling), until the job is in `status`.
    pub async fn wait_for(&self, id: JobId, status: JobStatus) -> Job {
        let mut events = self.store.subscribe();
        let check = |job: Option<Job>| job.filter(|j| j.status == status);
        if let Some(j) = check(self.store.get_job(id).await.unwrap()) {
            return j;
        }
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match events.recv().await {
                    Ok(e) if e.job_id == id => {
                        if let Some(j) = check(e.job) {
                            return j;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        if let Some(j) = check(self.store.get_job(id).await.unwrap()) {
                            return j;
                        }
                    }
                }
            }
        })
        .await;
        match waited {
            Ok(j) => j,
            Err(_) => panic!(
                "job {id} did not reach {status}; it is {:?}",
                self.store
                    .get_job(id)
                    .await
                    .unwrap()
                    .map(|j| (j.status, j.attempt_errors))
            ),
        }
    }
}

/// A submission's multipart form: plain fields, then one `file` part per file.
pub fn multipart(files: &[(&str, Vec<u8>)], fields: &[(&str, &str)]) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    for (name, bytes) in files {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
        );
    }
    form
}

/// Asserts an error response's status and code.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(!message.is_empty());
    message
}
