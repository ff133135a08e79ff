//! The `imgclass` binary as a user runs it: one-shot classification, `serve` processes killed
//! with SIGKILL that lose no accepted job, and the Imagga provider against a fake Imagga API.

mod blob_stores;
mod database_flag;
mod imagga;
mod models;
mod pg_cluster;
mod readme_example;
mod submit;
mod webhooks;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imgclass")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

#[test]
fn classify_prints_the_top_labels() {
    let out = Command::new(bin())
        .arg("classify")
        .args(["coffee.png", "chelsea.png", "rocket.jpg"].map(fixture))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let blocks: Vec<&str> = text.split("tests/fixtures/").skip(1).collect();
    assert_eq!(blocks.len(), 3, "{text}");
    let top = |b: &str| b.lines().nth(1).unwrap().to_string();
    assert!(top(blocks[0]).ends_with("espresso"), "{text}");
    let cat = top(blocks[1]);
    assert!(
        ["tiger cat", "Egyptian cat", "tabby"]
            .iter()
            .any(|l| cat.contains(l)),
        "{cat}"
    );
    assert!(top(blocks[2]).contains("missile"), "{text}");
    assert_eq!(blocks[0].lines().filter(|l| l.contains('%')).count(), 5);
}

#[test]
fn classify_reports_bad_files_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    let out = Command::new(bin())
        .arg("classify")
        .arg(&bad)
        .arg(fixture("coffee.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notes.png") && err.contains("not an image"),
        "{err}"
    );
    // The good file is still classified.
    assert!(String::from_utf8_lossy(&out.stdout).contains("espresso"));
}

/// A running `imgclass serve` (or `imgclass worker`, whose `base` is empty).
struct Server {
    child: Child,
    base: String,
    /// Every line the process has written to stdout so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    fn start(db: &str, extra: &[&str]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--database", db];
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    fn worker(db: &str, extra: &[&str]) -> Server {
        let mut args = vec!["worker", "--database", db];
        args.extend_from_slice(extra);
        Self::spawn(&args)
    }

    fn spawn(args: &[&str]) -> Server {
        Self::spawn_with(&[], args)
    }

    /// Like `spawn`, with arguments before the subcommand (`--log-format json`).
    fn spawn_with(global: &[&str], args: &[&str]) -> Server {
        Self::spawn_full(global, args, |_| {})
    }

    /// Like `spawn`, with the command's environment set by `env`.
    fn spawn_env(args: &[&str], env: impl FnOnce(&mut Command)) -> Server {
        Self::spawn_full(&[], args, env)
    }

    fn spawn_full(global: &[&str], args: &[&str], env: impl FnOnce(&mut Command)) -> Server {
        let mut cmd = Command::new(bin());
        env(&mut cmd);
        let mut child = cmd
            .args(global)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let base = loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(pos) = line.find("listening on http://") {
                let url = line[pos + "listening on ".len()..].trim();
                let url = url.split('"').next().unwrap_or(url);
                break url
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .to_string();
            }
            if line.contains("imgclass worker is running") {
                break String::new();
            }
        };
        // Keep reading the log so the child never blocks on a full pipe.
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        Server { child, base, log }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits one image as its own job. These tests are about the queue, so the job always runs:
/// the same image sent again is not answered from the result cache (`cache=false`).
async fn submit(base: &str, name: &str, bytes: Vec<u8>) -> String {
    let (status, body) = post_image(base, name, bytes, &[("cache", "false")]).await;
    assert_eq!(status, 202, "{body}");
    body["jobs"][0]["id"].as_str().unwrap().to_string()
}

/// POSTs one image with plain `fields` as a multipart form to `/api/jobs`: the status and the
/// JSON answer.
async fn post_image(
    base: &str,
    name: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let form = form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/jobs"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Reads the server-sent events from the start of the log until `job` has an event of `kind`.
async fn wait_for_event(base: &str, job: &str, kind: &str) {
    let mut resp = reqwest::Client::new()
        .get(format!("{base}/api/events"))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                if event.contains(&format!("event: {kind}\n"))
                    && event.contains(&format!("\"job_id\":\"{job}\""))
                {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {kind} event for {job}");
}

async fn job(base: &str, id: &str) -> Value {
    reqwest::get(format!("{base}/api/jobs/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_job_survives_sigkill_and_completes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let api = Server::start(&db, &["--no-workers"]);
    let id = submit(
        &api.base,
        "coffee.png",
        std::fs::read(fixture("coffee.png")).unwrap(),
    )
    .await;
    api.kill9();

    let server = Server::start(&db, &["--workers", "1"]);
    wait_for_event(&server.base, &id, "succeeded").await;
    let j = job(&server.base, &id).await;
    assert_eq!(j["status"], "succeeded");
    assert_eq!(j["attempts"], 1);
    assert_eq!(j["result"]["predictions"][0]["label"], "espresso");
}

/// A large photo, so that an attempt lasts long enough to be interrupted.
fn big_jpeg() -> Vec<u8> {
    let (w, h) = (6000u32, 4000u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&img)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_process_is_killed_mid_run_completes_once_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let first = Server::start(&db, &["--workers", "1", "--lease", "2s"]);
    let id = submit(&first.base, "big.jpg", big_jpeg()).await;
    wait_for_event(&first.base, &id, "running").await;
    first.kill9();

    // The second process finds the job still `running` under a lease nobody renews; once the
    // lease has expired, its sweeper queues the job again and a worker runs it.
    let second = Server::start(&db, &["--workers", "1", "--lease", "2s"]);
    wait_for_event(&second.base, &id, "succeeded").await;
    let j = job(&second.base, &id).await;
    assert_eq!(j["status"], "succeeded");
    assert_eq!(j["attempts"], 2, "{j}");
    assert_eq!(j["attempt_errors"][0]["code"], "stalled");

    // Exactly one success in the event log.
    let events = reqwest::Client::new()
        .get(format!("{}/api/events", second.base))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    drop(events);
    let list: Value = reqwest::get(format!("{}/api/jobs?status=succeeded", second.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_cleanly_and_leaves_no_job_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let mut server = Server::start(&db, &["--workers", "1", "--shutdown-grace", "0.2s"]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submit(&server.base, "big.jpg", big_jpeg()).await);
    }
    wait_for_event(&server.base, &ids[0], "running").await;
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");

    // Nothing is left running and nothing is lost: each job is queued again or done.
    let next = Server::start(&db, &["--no-workers"]);
    for id in &ids {
        let j = job(&next.base, id).await;
        assert!(
            ["queued", "succeeded"].contains(&j["status"].as_str().unwrap()),
            "{j}"
        );
    }
    let running: Value = reqwest::get(format!("{}/api/jobs?status=running", next.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(running["jobs"].as_array().unwrap().len(), 0);
}

#[test]
fn logs_written_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/colour.db", dir.path().display());
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-workers",
            "--database",
            &db,
        ])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("listening on http://");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("listening on")), "{seen:?}");
    assert!(!seen.iter().any(|l| l.contains('\u{1b}')), "{seen:?}");
}

/// Runs `imgclass token ...` on a database; returns (success, stdout, stderr).
fn token_cmd(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(["token", "--database", db])
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_on_the_command_line_close_the_api_and_revoke_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let (ok, shown, _) = token_cmd(&db, &["create", "--name", "ci", "--expires", "30d"]);
    assert!(ok);
    let token = shown.trim().to_string();
    assert!(token.starts_with("imgc_"), "{token}");
    let (ok, _, err) = token_cmd(&db, &["create", "--name", "ci"]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = token_cmd(&db, &["create", "--name", "x", "--scope", "read,owner"]);
    assert!(!ok && err.contains("unknown scope"), "{err}");
    let (ok, list, _) = token_cmd(&db, &["list"]);
    assert!(ok);
    assert!(list.contains("ci") && list.contains("submit,read,manage") && list.contains("active"));
    assert!(
        !list.contains(&token[5..]),
        "the secret is never shown again"
    );

    let api = Server::start(&db, &["--no-workers"]);
    let client = reqwest::Client::new();
    let jobs = format!("{}/api/jobs", api.base);
    assert_eq!(client.get(&jobs).send().await.unwrap().status(), 401);
    let ok = client.get(&jobs).bearer_auth(&token).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    let (ok, out, _) = token_cmd(&db, &["revoke", "ci"]);
    assert!(ok, "{out}");
    let resp = client.get(&jobs).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let (_, list, _) = token_cmd(&db, &["list"]);
    assert!(list.contains("revoked"), "{list}");
}

/// An upload burst cut by SIGKILL: `total` uploads (upload `i` sends `images[i % len]`) from
/// `clients` concurrent clients, `api` killed once `kill_after` of them were acknowledged. The
/// acknowledged jobs, as (id, index into `images`); asserts that the kill came before the end.
async fn burst_then_sigkill(
    api: Server,
    images: std::sync::Arc<Vec<Vec<u8>>>,
    total: usize,
    clients: usize,
    kill_after: usize,
) -> Vec<(String, usize)> {
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, usize)>::new()));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let (acked, images, client) = (acked.clone(), images.clone(), client.clone());
        let url = format!("{}/api/jobs", api.base);
        tasks.push(tokio::spawn(async move {
            for i in (t..total).step_by(clients) {
                let which = i % images.len();
                let form = reqwest::multipart::Form::new().part(
                    "file",
                    reqwest::multipart::Part::bytes(images[which].clone())
                        .file_name(format!("{i}.png")),
                );
                let Ok(resp) = client.post(&url).multipart(form).send().await else {
                    return;
                };
                if resp.status() != 202 {
                    return;
                }
                let Ok(body) = resp.json::<Value>().await else {
                    return;
                };
                let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
                acked.lock().unwrap().push((id, which));
            }
        }));
    }
    // Kill it in the middle of the burst.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < kill_after {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst did not get going"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    api.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < total, "killed too late to test anything");
    acked
}

/// Group commit under SIGKILL: uploads share commits, and every upload answered `202` before
/// the process died is in the database after a restart, its image readable; with the images
/// in the database, and as files (the default for a new data directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_upload_acknowledged_before_sigkill_survives_the_group_commit() {
    for store in [None, Some("database")] {
        acknowledged_uploads_survive_sigkill(store).await;
    }
}

async fn acknowledged_uploads_survive_sigkill(store: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let mut flags = vec!["--no-workers"];
    if let Some(store) = store {
        flags.extend(["--blob-store", store]);
    }
    let api = Server::start(&db, &flags);
    let image = std::fs::read(fixture("coffee.png")).unwrap();
    let acked = burst_then_sigkill(
        api,
        std::sync::Arc::new(vec![image.clone()]),
        32 * 40,
        32,
        200,
    )
    .await;

    let api = Server::start(&db, &flags);
    for (id, _) in &acked {
        let j = job(&api.base, id).await;
        assert_eq!(j["status"], "queued", "acknowledged job {id} lost: {j}");
    }
    let first = &acked[0].0;
    let resp = reqwest::get(format!("{}/api/jobs/{first}/image", api.base))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), image);
    assert_eq!(
        dir.path().join("images").is_dir(),
        store.is_none(),
        "large images are files by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request_the_job_and_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Server::spawn_with(
        &["--log-format", "json"],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--workers",
            "1",
        ],
    );
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(fixture("coffee.png")).unwrap())
            .file_name("coffee.png"),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/api/jobs", server.base))
        .header("X-Request-Id", "upload-7")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-request-id"], "upload-7");
    let body: Value = resp.json().await.unwrap();
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    wait_for_event(&server.base, &id, "succeeded").await;
    // Without an id of its own, a request gets one.
    let resp = reqwest::get(format!("{}/api/stats", server.base))
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32, "{generated}");

    // Every line is one JSON object; the lines about the job name it and the node, and the
    // request's line names the request.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (queued, succeeded) = loop {
        let lines: Vec<Value> = server
            .log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        let about_job = |message: &str| {
            lines.iter().find(|l| {
                l["fields"]["message"] == message
                    && (l["fields"]["job.id"] == id.as_str() || l["span"]["job.id"] == id.as_str())
            })
        };
        if let (Some(q), Some(s)) = (about_job("job queued"), about_job("job succeeded")) {
            break (q.clone(), s.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log lines about {id}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(queued["span"]["request.id"], "upload-7", "{queued}");
    let node = queued["span"]["node"].as_str().unwrap().to_string();
    assert!(!node.is_empty());
    assert_eq!(succeeded["span"]["job.id"], id.as_str(), "{succeeded}");
    assert_eq!(succeeded["span"]["node"], node.as_str(), "{succeeded}");
}
