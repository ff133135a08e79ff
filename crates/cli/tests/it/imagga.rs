//! `imgclass` with `--provider imagga`, as the original system ran it, against the fake Imagga
//! API: the job is answered by Imagga, and the secret appears in no log line, no API answer and
//! nowhere in the database.

#[path = "../../../server/tests/it/fake_imagga.rs"]
mod fake_imagga;

use super::{bin, fixture, job, submit, wait_for_event};
use base64::Engine;
use fake_imagga::{FakeImagga, TAGS};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

const KEY: &str = "acc_cli_key";
const SECRET: &str = "cli-secret-b9d1e7";

/// A running `imgclass serve` whose whole output (stdout and stderr) is kept.
struct Logged {
    child: Child,
    base: String,
    output: Arc<Mutex<String>>,
}

impl Logged {
    fn start(args: &[&str], secret: &str) -> Logged {
        let mut child = Command::new(bin())
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "debug")
            .env("IMGCLASS_IMAGGA_KEY", KEY)
            .env("IMGCLASS_IMAGGA_SECRET", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        for mut stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let started = std::time::Instant::now();
        let base = loop {
            let text = output.lock().unwrap().clone();
            if let Some(pos) = text.find("listening on http://") {
                let rest = &text[pos + "listening on ".len()..];
                let url = rest.split_whitespace().next().unwrap();
                break url
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .to_string();
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "serve did not start: {text}"
            );
            assert!(child.try_wait().unwrap().is_none(), "serve exited: {text}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        Logged {
            child,
            base,
            output,
        }
    }

    /// Stops the process and returns everything it wrote.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = self.output.lock().unwrap().clone();
        text
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every form the secret could leak in.
fn leaks(secret: &str) -> Vec<String> {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:{secret}"));
    vec![secret.to_string(), basic]
}

fn assert_absent(what: &str, haystack: &[u8], secret: &str) {
    for needle in leaks(secret) {
        assert!(
            !haystack
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "{what} contains the secret ({needle})"
        );
    }
}

/// Every file of the data directory (the database's main file and WAL, the images' folder).
fn database_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(database_bytes(&path));
        } else {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_systems_command_classifies_through_imagga_without_leaking_the_secret() {
    let fake = FakeImagga::start(KEY, SECRET, vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Logged::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--provider",
            "imagga",
            "--workers",
            "1",
            "--rate-limit",
            "1/10s",
            "--imagga-url",
            &fake.url,
        ],
        SECRET,
    );
    let bytes = std::fs::read(fixture("coffee.png")).unwrap();
    let id = submit(&server.base, "coffee.png", bytes.clone()).await;
    wait_for_event(&server.base, &id, "succeeded").await;
    let j = job(&server.base, &id).await;
    assert_eq!(j["result"]["model"]["provider"], "imagga", "{j}");
    assert_eq!(j["result"]["predictions"][0]["label"], TAGS[0].0);
    assert_eq!(fake.uploads()[0].bytes, bytes);
    fake.assert_clean();
    let page = reqwest::get(format!("{}/api/jobs", server.base))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_absent("the job list", &page, SECRET);
    let log = server.stop();
    assert!(log.contains("classifying with the Imagga API"), "{log}");
    assert_absent("the log", log.as_bytes(), SECRET);
    assert_absent("the database", &database_bytes(dir.path()), SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_the_job_and_the_log_names_the_code_but_not_the_secret() {
    let fake = FakeImagga::start(KEY, SECRET, vec![]).await;
    let wrong = "wrong-secret-5f3a";
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Logged::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db,
            "--provider",
            "imagga",
            "--workers",
            "1",
            "--imagga-url",
            &fake.url,
        ],
        wrong,
    );
    let id = submit(
        &server.base,
        "coffee.png",
        std::fs::read(fixture("coffee.png")).unwrap(),
    )
    .await;
    wait_for_event(&server.base, &id, "failed").await;
    let j = job(&server.base, &id).await;
    assert_eq!(j["error"]["code"], "provider_auth", "{j}");
    assert_eq!(j["attempts"], 1);
    let log = server.stop();
    assert!(log.contains("refused the API key and secret"), "{log}");
    assert_absent("the log", log.as_bytes(), wrong);
    assert_absent("the database", &database_bytes(dir.path()), wrong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_with_imagga_prints_its_tags_and_names_the_provider() {
    let fake = FakeImagga::start(KEY, SECRET, vec![]).await;
    let url = fake.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin())
            .args(["classify", "--provider", "imagga", "--imagga-url", &url])
            .arg(fixture("coffee.png"))
            .env("IMGCLASS_IMAGGA_KEY", KEY)
            .env("IMGCLASS_IMAGGA_SECRET", SECRET)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("61.41%  espresso"), "{text}");
    assert!(
        text.contains("provider imagga, model imagga-tags v2"),
        "{text}"
    );
    fake.assert_clean();
}
