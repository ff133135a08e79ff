//! Scale-out on PostgreSQL: real `imgclass serve --no-workers` and `imgclass worker` processes
//! on one database. Each test creates its own database and drops it.
//!
//! These tests need a PostgreSQL server: `IMGCLASS_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). `scripts/test.sh` runs them when the server
//! answers (always in CI) and reports them as skipped, with the reason, when it does not.

use super::{big_jpeg, fixture, job, submit, token_cmd, Server};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn admin_url() -> String {
    std::env::var("IMGCLASS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of its own, dropped at the end.
struct PgDb {
    name: String,
    url: String,
}

async fn admin_exec(sql: &str) {
    let out = tokio::process::Command::new("psql")
        .args([&admin_url(), "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
        .output()
        .await
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn admin_query(sql: &str) -> String {
    let out = tokio::process::Command::new("psql")
        .args([&admin_url(), "-qAtc", sql])
        .output()
        .await
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl PgDb {
    async fn new() -> PgDb {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "imgclass_it_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin_exec(&format!("CREATE DATABASE {name}")).await;
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        PgDb {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([
                &admin_url(),
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Every event of an API node from the start of the log, as (kind, job id, data).
fn follow_events(base: &str, from_start: bool) -> mpsc::UnboundedReceiver<(String, String, Value)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let url = format!("{base}/api/events");
    tokio::spawn(async move {
        let mut req = reqwest::Client::new().get(url);
        if from_start {
            req = req.header("Last-Event-ID", "0");
        }
        let mut resp = req.send().await.unwrap();
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut kind = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = k.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if kind.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                let id = v["job_id"].as_str().unwrap_or_default().to_string();
                if tx.send((kind, id, v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Waits until every job in `ids` has a `succeeded` event; returns the count per job.
async fn await_successes(
    events: &mut mpsc::UnboundedReceiver<(String, String, Value)>,
    ids: &[String],
    timeout: Duration,
) -> HashMap<String, usize> {
    let mut done: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while ids.iter().any(|id| !done.contains_key(id)) {
        let next = tokio::time::timeout_at(deadline, events.recv()).await;
        let (kind, id, _) = next
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} jobs succeeded in time",
                    done.len(),
                    ids.len()
                )
            })
            .expect("event stream ended");
        if kind == "succeeded" {
            *done.entry(id).or_default() += 1;
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_jobs_on_two_worker_processes_each_complete_once() {
    let db = PgDb::new().await;
    // Two photos, sent 25 times each: without the result cache, so that the workers classify
    // every one.
    let api = Server::start(&db.url, &["--no-workers", "--no-result-cache"]);
    let _w1 = Server::worker(&db.url, &["--workers", "1"]);
    let _w2 = Server::worker(&db.url, &["--workers", "1"]);
    let mut events = follow_events(&api.base, true);
    let photos = [fixture("coffee.png"), fixture("chelsea.png")].map(|p| std::fs::read(p).unwrap());
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(submit(&api.base, "photo.png", photos[i % 2].clone()).await);
    }
    let done = await_successes(&mut events, &ids, Duration::from_secs(180)).await;
    let elapsed = started.elapsed();
    println!(
        "50 jobs on 2 worker processes: {:.1} s, {:.1} images/s",
        elapsed.as_secs_f64(),
        50.0 / elapsed.as_secs_f64()
    );
    // Let any duplicate show up before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok((kind, id, _)) = events.try_recv() {
        assert_ne!(kind, "succeeded", "a second success for {id}");
    }
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        assert_eq!(done[id], 1, "{id} succeeded once");
        let j = job(&api.base, id).await;
        assert_eq!(j["status"], "succeeded");
        assert_eq!(j["attempts"], 1);
        let worker = j["result"]["worker"]
            .as_str()
            .unwrap()
            .rsplit_once('-')
            .unwrap()
            .0
            .to_string();
        *by_worker.entry(worker).or_default() += 1;
    }
    assert_eq!(
        by_worker.len(),
        2,
        "both worker processes took jobs: {by_worker:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing() {
    let db = PgDb::new().await;
    let api = Server::start(&db.url, &["--no-workers"]);
    let victim = Server::worker(&db.url, &["--workers", "1", "--lease", "2s"]);
    let _survivor = Server::worker(&db.url, &["--workers", "1", "--lease", "2s"]);
    let mut events = follow_events(&api.base, true);
    let big = big_jpeg();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&api.base, "big.jpg", big.clone()).await);
    }
    // Kill one worker as soon as two jobs are running (so both workers hold one).
    let two_running = async {
        let mut running = 0;
        while running < 2 {
            let (kind, _, _) = events.recv().await.expect("the event stream ended");
            if kind == "running" {
                running += 1;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), two_running)
        .await
        .expect("two jobs started within two minutes");
    victim.kill9();
    // Completion is read from the jobs themselves: this test is about the queue losing nothing,
    // not about the stream (the store suite checks its order and completeness).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let mut finished = 0;
        for id in &ids {
            if job(&api.base, id).await["status"] == "succeeded" {
                finished += 1;
            }
        }
        if finished == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {finished} of {} jobs succeeded in time",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // No job succeeded twice: at most one `succeeded` event each among those that arrived.
    let mut seen: HashMap<String, usize> = HashMap::new();
    while let Ok((kind, id, _)) = events.try_recv() {
        if kind == "succeeded" {
            *seen.entry(id).or_default() += 1;
        }
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    let mut rescued = 0;
    for id in &ids {
        let j = job(&api.base, id).await;
        assert_eq!(j["status"], "succeeded");
        if j["attempts"] == 2 {
            assert_eq!(j["attempt_errors"][0]["code"], "stalled");
            rescued += 1;
        }
    }
    assert!(rescued <= 1, "only the victim's job was run twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_worker_processes() {
    let db = PgDb::new().await;
    let api = Server::start(&db.url, &["--no-workers"]);
    let _w1 = Server::worker(&db.url, &["--workers", "2", "--rate-limit", "2/1s"]);
    let _w2 = Server::worker(&db.url, &["--workers", "2", "--rate-limit", "2/1s"]);
    let mut events = follow_events(&api.base, true);
    let photo = std::fs::read(fixture("coffee.png")).unwrap();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&api.base, "c.png", photo.clone()).await);
    }
    await_successes(&mut events, &ids, Duration::from_secs(60)).await;
    let mut starts = Vec::new();
    for id in &ids {
        let j = job(&api.base, id).await;
        let t = chrono_ms(j["started_at"].as_str().unwrap());
        starts.push(t);
    }
    starts.sort_unstable();
    for (i, t) in starts.iter().enumerate() {
        let n = starts[i..].iter().filter(|s| **s < t + 1000).count();
        assert!(n <= 2, "{n} starts within 1 s: {starts:?}");
    }
}

fn chrono_ms(rfc3339: &str) -> i64 {
    // "2026-11-28T21:59:57.123456Z" → ms since the epoch, without a date library.
    let out = std::process::Command::new("date")
        .args(["-d", rfc3339, "+%s%3N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_one_api_node_sees_a_job_submitted_through_another() {
    let db = PgDb::new().await;
    let a = Server::start(&db.url, &["--no-workers"]);
    let b = Server::start(&db.url, &["--no-workers"]);
    let _w = Server::worker(&db.url, &["--workers", "1"]);
    let mut on_a = follow_events(&a.base, false);
    // Give the live stream a moment to be established before submitting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let id = submit(
        &b.base,
        "c.png",
        std::fs::read(fixture("coffee.png")).unwrap(),
    )
    .await;
    let mut kinds = Vec::new();
    loop {
        let (kind, job_id, data) = tokio::time::timeout(Duration::from_secs(60), on_a.recv())
            .await
            .expect("node A saw the job finish")
            .unwrap();
        if job_id != id {
            continue;
        }
        kinds.push(kind.clone());
        if kind == "succeeded" {
            assert_eq!(data["job"]["result"]["predictions"][0]["label"], "espresso");
            break;
        }
    }
    println!(
        "submit on B to succeeded seen on A: {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(kinds, vec!["created", "running", "succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_recover_when_the_database_connections_drop() {
    let db = PgDb::new().await;
    let api = Server::start(&db.url, &["--no-workers"]);
    let _w = Server::worker(&db.url, &["--workers", "1"]);
    let mut events = follow_events(&api.base, false);
    let photo = std::fs::read(fixture("coffee.png")).unwrap();
    let first = submit(&api.base, "c.png", photo.clone()).await;
    await_successes(
        &mut events,
        std::slice::from_ref(&first),
        Duration::from_secs(60),
    )
    .await;

    // The outage: no connection allowed, every open one cut (as when the server restarts).
    admin_exec(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    ))
    .await;
    admin_query(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
        db.name
    ))
    .await;
    let resp = reqwest::get(format!("{}/api/jobs", api.base))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // Not ready while the database does not answer; still alive.
    let resp = reqwest::get(format!("{}/readyz", api.base)).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["reasons"][0].as_str().unwrap().contains("database"),
        "{body}"
    );
    let resp = reqwest::get(format!("{}/healthz", api.base)).await.unwrap();
    assert_eq!(resp.status(), 200);

    // The server is back: the nodes reconnect by themselves, events flow again.
    admin_exec(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS true",
        db.name
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(photo.clone()).file_name("c.png"),
        );
        let resp = reqwest::Client::new()
            .post(format!("{}/api/jobs", api.base))
            .multipart(form)
            .send()
            .await
            .unwrap();
        if resp.status() == 202 {
            let v: Value = resp.json().await.unwrap();
            break v["jobs"][0]["id"].as_str().unwrap().to_string();
        }
        assert_eq!(resp.status(), 503, "only 503 while reconnecting");
        assert!(Instant::now() < deadline, "the API node did not reconnect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut events = follow_events(&api.base, true);
    await_successes(&mut events, &[first, second], Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_shared_by_api_nodes() {
    let db = PgDb::new().await;
    let (ok, alice, err) = token_cmd(&db.url, &["create", "--name", "alice"]);
    assert!(ok, "{err}");
    let (ok, bob, err) = token_cmd(&db.url, &["create", "--name", "bob"]);
    assert!(ok, "{err}");
    let (alice, bob) = (alice.trim().to_string(), bob.trim().to_string());
    let flags = [
        "--no-workers",
        "--quota-requests",
        "6/1h",
        "--quota-submissions",
        "3/1h",
    ];
    let a = Server::start(&db.url, &flags);
    let b = Server::start(&db.url, &flags);
    let client = reqwest::Client::new();
    let get = |base: &str, token: &str| {
        client
            .get(format!("{base}/api/jobs"))
            .bearer_auth(token)
            .send()
    };
    // Six requests in all, alternating nodes: each node sees the other's.
    for i in 0..6 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let resp = get(base, &alice).await.unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(
            resp.headers()["ratelimit-remaining"],
            (5 - i).to_string().as_str()
        );
    }
    for base in [&a.base, &b.base] {
        let resp = get(base, &alice).await.unwrap();
        assert_eq!(resp.status(), 429);
        assert!(resp.headers().contains_key("retry-after"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    assert_eq!(get(&b.base, &bob).await.unwrap().status(), 200);

    // Submissions: 2 images on A and 1 on B use bob's 3; the next one on either is refused.
    let photo = std::fs::read(fixture("coffee.png")).unwrap();
    let upload = |base: String, files: usize| {
        let mut form = reqwest::multipart::Form::new();
        for i in 0..files {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(photo.clone()).file_name(format!("{i}.png")),
            );
        }
        client
            .post(format!("{base}/api/jobs"))
            .bearer_auth(&bob)
            .multipart(form)
            .send()
    };
    assert_eq!(upload(a.base.clone(), 2).await.unwrap().status(), 202);
    assert_eq!(upload(b.base.clone(), 1).await.unwrap().status(), 202);
    let resp = upload(a.base.clone(), 1).await.unwrap();
    assert_eq!(resp.status(), 429);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

/// `Prefer: wait` on one API node answers when a worker process finishes the job, whichever
/// node it was submitted through: the wait follows the shared event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_wait_on_one_api_node_sees_a_worker_elsewhere_finish() {
    let db = PgDb::new().await;
    let a = Server::start(&db.url, &["--no-workers"]);
    let b = Server::start(&db.url, &["--no-workers"]);
    let id = submit(
        &b.base,
        "c.png",
        std::fs::read(fixture("coffee.png")).unwrap(),
    )
    .await;
    // No worker yet: the wait on A starts while the job is queued.
    let waiting = tokio::spawn({
        let url = format!("{}/api/jobs/{id}", a.base);
        async move {
            reqwest::Client::new()
                .get(url)
                .header("Prefer", "wait=60")
                .send()
                .await
                .unwrap()
        }
    });
    assert_eq!(job(&a.base, &id).await["status"], "queued");
    let _w = Server::worker(&db.url, &["--workers", "1"]);
    let resp = tokio::time::timeout(Duration::from_secs(90), waiting)
        .await
        .expect("the wait ended")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["preference-applied"], "wait=60");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["result"]["predictions"][0]["label"], "espresso");

    // A submission through B that waits gets its finished jobs back.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(fixture("chelsea.png")).unwrap())
            .file_name("chelsea.png"),
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/api/jobs", b.base))
        .header("Prefer", "wait=60")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["preference-applied"], "wait=60");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jobs"][0]["status"], "succeeded", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_api_nodes() {
    let db = PgDb::new().await;
    let a = Server::start(&db.url, &["--no-workers"]);
    let b = Server::start(&db.url, &["--no-workers"]);
    let bytes = std::fs::read(fixture("coffee.png")).unwrap();
    let post = |base: String| {
        let bytes = bytes.clone();
        async move {
            let form = reqwest::multipart::Form::new().part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name("coffee.png"),
            );
            let resp = reqwest::Client::new()
                .post(format!("{base}/api/jobs"))
                .header("Idempotency-Key", "across-nodes")
                .multipart(form)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let body: Value = resp.json().await.unwrap();
            (status, replayed, body)
        }
    };
    // The same request, sent at once to both nodes, four times each.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let base = if i % 2 == 0 { &a.base } else { &b.base };
            tokio::spawn(post(base.clone()))
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        match status {
            202 => ids.push(body["jobs"][0]["id"].as_str().unwrap().to_string()),
            409 => assert_eq!(body["error"]["code"], "idempotency_key_in_use"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // Once done, either node replays the first answer.
    for base in [&a.base, &b.base] {
        let (status, replayed, body) = post(base.clone()).await;
        assert_eq!(status, 202);
        assert!(replayed);
        assert_eq!(body["jobs"][0]["id"], ids[0].as_str());
    }
    let list: Value = reqwest::get(format!("{}/api/jobs", b.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "one job in all");
}

/// Submits `bytes` for `model` through `base`; the job's id.
async fn submit_for(base: &str, model: &str, bytes: Vec<u8>) -> String {
    let (status, body) = super::post_image(base, "x.png", bytes, &[("model", model)]).await;
    assert_eq!(status, 202, "{body}");
    body["jobs"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_runs_only_on_the_node_that_holds_it() {
    use crate::models::{repository_with, solid};
    let db = PgDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (red, blue) = (
        repository_with(dir.path(), "red-node"),
        repository_with(dir.path(), "blue-node"),
    );
    let api = Server::start(&db.url, &["--no-workers", "--no-result-cache"]);
    let w_red = Server::worker(
        &db.url,
        &["--workers", "2", "--models", red.to_str().unwrap()],
    );
    let w_blue = Server::worker(
        &db.url,
        &["--workers", "2", "--models", blue.to_str().unwrap()],
    );
    let mut events = follow_events(&api.base, true);
    // Both nodes have announced their models.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m: Value = reqwest::get(format!("{}/api/models", api.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let names: Vec<&str> = m["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        if names.contains(&"red-node") && names.contains(&"blue-node") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the models were never announced: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids = Vec::new();
    for i in 0..10u8 {
        let model = if i % 2 == 0 { "red-node" } else { "blue-node" };
        let id = submit_for(&api.base, model, solid([i * 20, 50, 200])).await;
        ids.push((id, model));
    }
    let all: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    await_successes(&mut events, &all, Duration::from_secs(120)).await;
    let (red_pid, blue_pid) = (w_red.child.id(), w_blue.child.id());
    for (id, model) in &ids {
        let j = job(&api.base, id).await;
        assert_eq!(j["model"], *model);
        assert_eq!(j["result"]["model"]["name"], *model);
        let worker = j["result"]["worker"].as_str().unwrap();
        let pid = if *model == "red-node" {
            red_pid
        } else {
            blue_pid
        };
        assert!(
            worker.contains(&format!("-{pid}-")),
            "{model}'s job ran on {worker}, not on process {pid}"
        );
    }
}

/// Behind a transaction pooler (`--db-no-listen`), nodes poll instead of listening: every job
/// still succeeds exactly once, the API node's event stream shows the workers' changes, and no
/// node holds more connections than its pool and (when it listens) one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_listen_poll_and_hold_few_connections() {
    let db = PgDb::new().await;
    let polling = ["--db-no-listen", "--db-poll-interval", "100ms"];
    let api = Server::start(
        &db.url,
        &[&["--no-workers", "--provider", "noop"][..], &polling[..]].concat(),
    );
    let workers: Vec<Server> = (0..3)
        .map(|_| {
            Server::worker(
                &db.url,
                &[&["--provider", "noop", "--workers", "2"][..], &polling[..]].concat(),
            )
        })
        .collect();
    let mut events = follow_events(&api.base, true);
    let photo = std::fs::read(fixture("coffee.png")).unwrap();
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(submit(&api.base, "photo.png", photo.clone()).await);
    }
    let done = await_successes(&mut events, &ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(done[id], 1, "{id} succeeded once");
        assert_eq!(job(&api.base, id).await["attempts"], 1);
    }
    // Nobody listens; the API node's pool (8 by default) and each worker's (4) bound the rest.
    let name = &db.name;
    let listening: usize = admin_query(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}' AND query ILIKE 'LISTEN%'"
    ))
    .await
    .parse()
    .unwrap();
    assert_eq!(listening, 0);
    let connections: usize = admin_query(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await
    .parse()
    .unwrap();
    assert!(
        connections <= 8 + 3 * 4,
        "{connections} connections to the database"
    );
    drop(workers);
}
