//! `imgclass submit`: a client of the HTTP API. Uploads image files and folders (several
//! requests in flight, each retried under its own `Idempotency-Key`), shows the progress of the
//! uploads and of the classifications (fed by `/api/events`), and with `--wait` prints each result
//! as it arrives.

use crate::args::SubmitArgs;
use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;

/// Attempts per upload: a failed attempt (no answer, or a 5xx, or the key still in use) is sent
/// again with the same `Idempotency-Key`, so the server creates its jobs once.
const UPLOAD_ATTEMPTS: u32 = 5;

pub fn run(args: SubmitArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(submit(args))
}

/// The image files the paths name, in order; what is skipped is said on stderr.
fn collect(paths: &[PathBuf], recursive: bool, warn: &dyn Fn(String)) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            walk(path, recursive, &mut files, warn)?;
        } else if is_image(path) {
            files.push(path.clone());
        } else {
            warn(format!("skipping {}: not an image", path.display()));
        }
    }
    Ok(files)
}

fn walk(
    dir: &Path,
    recursive: bool,
    files: &mut Vec<PathBuf>,
    warn: &dyn Fn(String),
) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if recursive {
                walk(&path, recursive, files, warn)?;
            } else {
                warn(format!(
                    "skipping folder {} (--recursive uploads subfolders)",
                    path.display()
                ));
            }
        } else if is_image(&path) {
            files.push(path);
        } else {
            warn(format!("skipping {}: not an image", path.display()));
        }
    }
    Ok(())
}

/// Whether a file starts like an image the server accepts (the server checks it fully).
fn is_image(path: &Path) -> bool {
    let mut head = Vec::with_capacity(64);
    let read = std::fs::File::open(path).and_then(|f| f.take(64).read_to_end(&mut head));
    read.is_ok() && imgclass_classifier::imageio::sniff_content_type(&head).is_some()
}

/// Progress: bars when stdout is a terminal, plain lines on stderr otherwise.
enum Progress {
    Bars {
        multi: MultiProgress,
        uploading: ProgressBar,
        classifying: Option<ProgressBar>,
    },
    Plain,
}

impl Progress {
    fn new(files: u64, wait: bool) -> Progress {
        if !std::io::stdout().is_terminal() {
            return Progress::Plain;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix:>11} [{bar:30}] {pos}/{len} {wide_msg}")
            .expect("template")
            .progress_chars("=> ");
        let uploading = multi.add(ProgressBar::new(files).with_style(style.clone()));
        uploading.set_prefix("uploading");
        let classifying = wait.then(|| {
            let bar = multi.add(ProgressBar::new(0).with_style(style));
            bar.set_prefix("classifying");
            bar
        });
        Progress::Bars {
            multi,
            uploading,
            classifying,
        }
    }

    /// A line of output (results on stdout, notes on stderr), above the bars if there are any.
    fn println(&self, line: &str, stderr: bool) {
        let print = || {
            if stderr {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        match self {
            Progress::Bars { multi, .. } => multi.suspend(print),
            Progress::Plain => print(),
        }
    }

    fn uploaded(&self, file: &str, done: u64, total: u64) {
        match self {
            Progress::Bars {
                uploading,
                classifying,
                ..
            } => {
                uploading.inc(1);
                uploading.set_message(file.to_string());
                if let Some(c) = classifying {
                    c.inc_length(1);
                }
            }
            Progress::Plain => eprintln!("uploaded {file} ({done}/{total})"),
        }
    }

    fn upload_failed(&self) {
        if let Progress::Bars { uploading, .. } = self {
            uploading.inc(1);
        }
    }

    fn classified(&self, file: &str) {
        if let Progress::Bars {
            classifying: Some(c),
            ..
        } = self
        {
            c.inc(1);
            c.set_message(file.to_string());
        }
    }

    fn finish(&self) {
        if let Progress::Bars {
            uploading,
            classifying,
            ..
        } = self
        {
            uploading.finish_and_clear();
            if let Some(c) = classifying {
                c.finish_and_clear();
            }
        }
    }
}

/// What the event stream reports.
enum Change {
    /// The stream is open (again): every change from now on is reported. After a reconnection,
    /// changes in between may be missing; the caller reads the jobs it waits for again.
    Opened,
    /// A job changed.
    Job {
        job_id: String,
        status: Option<String>,
    },
}

/// A refusal of the API, for people: its error's code and message (the status alone when the
/// answer is not an API error), and after a `401` what to do about the token.
fn api_error(status: StatusCode, body: &Value, token: bool) -> String {
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    let mut text = if code.is_empty() {
        format!("the server answered {status}")
    } else {
        format!("{code}: {message}")
    };
    if status == StatusCode::UNAUTHORIZED {
        text.push_str(if token {
            " (check the token given with --token or IMGCLASS_TOKEN)"
        } else {
            " (pass a token with --token or IMGCLASS_TOKEN)"
        });
    }
    text
}

/// Whether a refusal may go away if the same request is sent again.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// Follows `/api/events`, reconnecting (with `Last-Event-ID`) when the connection drops. A
/// refusal that sending again cannot change (`401`, `403`, `404`, ...) ends it at once, with the
/// server's error; `token` says whether the requests carry one.
fn follow_events(
    client: reqwest::Client,
    base: String,
    token: bool,
) -> mpsc::UnboundedReceiver<Result<Change>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let url = format!("{base}/api/events");
        let fail = |e: String| {
            let _ = tx.send(Err(anyhow::anyhow!(
                "cannot follow the job events at {url}: {e}"
            )));
        };
        let mut last: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let mut req = client.get(&url);
            if let Some(id) = &last {
                req = req.header("Last-Event-ID", id);
            }
            let error = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let kind = r
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    if !kind.starts_with("text/event-stream") {
                        let kind = if kind.is_empty() {
                            "no content type"
                        } else {
                            &kind
                        };
                        return fail(format!(
                            "the server answered {} with {kind}, not an event stream \
                             (is {base} an imgclass server?)",
                            r.status()
                        ));
                    }
                    Ok(r)
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.json::<Value>().await.unwrap_or(Value::Null);
                    let mut error = api_error(status, &body, token);
                    if !is_transient(status) {
                        if body["error"]["code"].is_null() {
                            error.push_str(&format!(" (is {base} an imgclass server?)"));
                        }
                        return fail(error);
                    }
                    Err(error)
                }
                Err(e) => Err(format!("no answer from {base}: {e}")),
            };
            let mut resp = match error {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    if failures >= 5 {
                        return fail(e);
                    }
                    tokio::time::sleep(Duration::from_millis(200 << failures)).await;
                    continue;
                }
            };
            failures = 0;
            if tx.send(Ok(Change::Opened)).is_err() {
                return;
            }
            let mut buf = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id:") {
                            last = Some(v.trim().to_string());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim_start());
                        }
                    }
                    let Ok(event) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    let change = Change::Job {
                        job_id: event["job_id"].as_str().unwrap_or_default().to_string(),
                        status: event["status"].as_str().map(str::to_string),
                    };
                    if tx.send(Ok(change)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// One upload: the file's jobs (one), retried under one `Idempotency-Key`.
async fn upload(
    client: &reqwest::Client,
    base: &str,
    path: &Path,
    model: Option<&str>,
    token: bool,
) -> Result<Value, String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let key = uuid::Uuid::new_v4().to_string();
    let mut last_error = String::new();
    for attempt in 0..UPLOAD_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        let mut form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
        );
        if let Some(model) = model {
            form = form.text("model", model.to_string());
        }
        let sent = client
            .post(format!("{base}/api/jobs"))
            .header("Idempotency-Key", &key)
            .multipart(form)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                last_error = format!("no answer from {base}: {e}");
                continue;
            }
        };
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return body["jobs"]
                .get(0)
                .cloned()
                .ok_or_else(|| format!("the server answered {status} without a job"));
        }
        let code = body["error"]["code"].as_str().unwrap_or_default();
        let again = status.is_server_error() || code == "idempotency_key_in_use";
        last_error = api_error(status, &body, token);
        if !again {
            break;
        }
    }
    Err(last_error)
}

/// The job as `GET /api/jobs/{id}` shows it: the exact text, and parsed.
async fn fetch_job(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    token: bool,
) -> Result<(String, Value)> {
    let resp = client
        .get(format!("{base}/api/jobs/{id}"))
        .send()
        .await
        .with_context(|| format!("no answer from {base}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        bail!("{}", api_error(status, &body, token));
    }
    let text = resp.text().await?;
    let value = serde_json::from_str(&text)?;
    Ok((text.trim().to_string(), value))
}

fn is_finished(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "canceled")
}

/// A finished job, for people: its top labels, or its error.
fn describe(file: &str, job: &Value) -> String {
    match job["status"].as_str().unwrap_or_default() {
        "succeeded" => {
            let labels: Vec<String> = job["result"]["predictions"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .take(3)
                        .map(|p| {
                            format!(
                                "{} {:.1}%",
                                p["label"].as_str().unwrap_or("?"),
                                p["probability"].as_f64().unwrap_or(0.0) * 100.0
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let cached = if job["cached"] == Value::Bool(true) {
                " (cached)"
            } else {
                ""
            };
            // Which provider and model answered.
            let model = &job["result"]["model"];
            let by = [&model["provider"], &model["name"]]
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let by = if by.is_empty() {
                String::new()
            } else {
                format!(" [{by}]")
            };
            format!("{file}: {}{by}{cached}", labels.join(", "))
        }
        status => format!(
            "{file}: {status}{}",
            job["error"]["code"]
                .as_str()
                .map(|c| format!(
                    " ({c}) {}",
                    job["error"]["message"].as_str().unwrap_or_default()
                ))
                .unwrap_or_default()
        ),
    }
}

async fn submit(args: SubmitArgs) -> Result<ExitCode> {
    let base = args.server.trim_end_matches('/').to_string();
    let files = collect(&args.paths, args.recursive, &|w| eprintln!("imgclass: {w}"))?;
    if files.is_empty() {
        bail!("no image files to upload");
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &args.token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("the token is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .default_headers(headers)
        .build()?;
    let token = args.token.is_some();
    let total = files.len() as u64;
    let progress = Progress::new(total, args.wait);

    // Follow the events before the first upload, so that no job's change can be missed.
    let mut events = if args.wait {
        let mut rx = follow_events(client.clone(), base.clone(), token);
        match rx.recv().await {
            Some(Ok(Change::Opened)) => Some(rx),
            Some(Ok(Change::Job { .. })) => unreachable!("the stream opens first"),
            Some(Err(e)) => return Err(e),
            None => bail!("the event stream closed"),
        }
    } else {
        None
    };

    let mut uploads = stream::iter(files.iter().cloned())
        .map(|path| {
            let client = client.clone();
            let base = base.clone();
            let model = args.model.clone();
            async move {
                let result = upload(&client, &base, &path, model.as_deref(), token).await;
                (path, result)
            }
        })
        .buffer_unordered(usize::from(args.concurrency));

    let mut failed = false;
    let mut uploaded = 0u64;
    // Jobs not yet finished: id → file name; finished ids seen before their upload answered.
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut finished_early: HashSet<String> = HashSet::new();
    let mut uploads_done = false;
    let mut to_report: Vec<(String, String)> = Vec::new();

    while !uploads_done || !pending.is_empty() {
        tokio::select! {
            next = uploads.next(), if !uploads_done => match next {
                None => uploads_done = true,
                Some((path, Ok(job))) => {
                    uploaded += 1;
                    let file = path.display().to_string();
                    progress.uploaded(&file, uploaded, total);
                    let id = job["id"].as_str().unwrap_or_default().to_string();
                    let status = job["status"].as_str().unwrap_or_default();
                    // Reported now: without --wait, or when the job has already finished
                    // (then or before its upload answered).
                    if !args.wait || is_finished(status) || finished_early.remove(&id) {
                        to_report.push((id, file));
                    } else {
                        pending.insert(id, file);
                    }
                }
                Some((path, Err(e))) => {
                    failed = true;
                    progress.upload_failed();
                    progress.println(&format!("{}: not uploaded: {e}", path.display()), true);
                }
            },
            change = async { events.as_mut()?.recv().await }, if events.is_some() => match change {
                Some(Ok(Change::Job { job_id, status })) => {
                    if status.as_deref().is_some_and(is_finished) {
                        match pending.remove(&job_id) {
                            Some(file) => to_report.push((job_id, file)),
                            None if !uploads_done => {
                                finished_early.insert(job_id);
                            }
                            None => {}
                        }
                    }
                }
                Some(Ok(Change::Opened)) => {
                    // Reconnected: whatever finished meanwhile is read from the jobs.
                    let ids: Vec<String> = pending.keys().cloned().collect();
                    for id in ids {
                        let (_, job) = fetch_job(&client, &base, &id, token)
                            .await
                            .with_context(|| format!("reading job {id}"))?;
                        if is_finished(job["status"].as_str().unwrap_or_default()) {
                            if let Some(file) = pending.remove(&id) {
                                to_report.push((id, file));
                            }
                        }
                    }
                }
                Some(Err(e)) => return Err(e),
                None => bail!("the event stream closed"),
            },
        }
        for (id, file) in to_report.drain(..) {
            let (text, job) = fetch_job(&client, &base, &id, token)
                .await
                .with_context(|| format!("reading job {id}"))?;
            if args.wait {
                progress.classified(&file);
                if job["status"] != "succeeded" {
                    failed = true;
                }
            }
            let line = if args.json {
                text
            } else if args.wait {
                describe(&file, &job)
            } else {
                format!("{file}: {} {id}", job["status"].as_str().unwrap_or("?"))
            };
            progress.println(&line, false);
        }
    }
    progress.finish();
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
