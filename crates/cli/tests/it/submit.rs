//! `imgclass submit` against a real `imgclass serve`: a folder with images, a file that is not
//! an image and a subfolder, in both output modes; what it says when the server refuses it.

use super::{bin, fixture, job, Server};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// photos/{coffee.png, rocket.jpg, notes.txt, sub/chelsea.png}
fn photos(dir: &Path) -> std::path::PathBuf {
    let photos = dir.join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    for name in ["coffee.png", "rocket.jpg"] {
        std::fs::copy(fixture(name), photos.join(name)).unwrap();
    }
    std::fs::copy(fixture("chelsea.png"), photos.join("sub/chelsea.png")).unwrap();
    std::fs::write(photos.join("notes.txt"), "a shopping list, not a picture").unwrap();
    photos
}

fn submit(server: &Server, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("submit")
        .args(["--server", &server.base])
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_uploads_a_folder_and_prints_each_result() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Server::start(&db, &["--workers", "1"]);

    // Plain output (stdout is not a terminal): one line per result.
    let out = submit(&server, &["--wait", photos.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("skipping") && stderr.contains("notes.txt: not an image"),
        "{stderr}"
    );
    assert!(
        stderr.contains("skipping folder") && stderr.contains("sub"),
        "{stderr}"
    );
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].contains("coffee.png: espresso"), "{stdout}");
    assert!(
        lines[0].contains("[builtin efficientnet-lite0]"),
        "{stdout}"
    );
    assert!(
        lines[1].contains("rocket.jpg: ") && lines[1].contains("missile"),
        "{stdout}"
    );

    // JSON, with the subfolder: each line is the finished job exactly as the API shows it.
    let out = submit(
        &server,
        &["--wait", "--json", "--recursive", photos.to_str().unwrap()],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let jobs: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut names: Vec<&str> = jobs
        .iter()
        .map(|j| j["file_name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["chelsea.png", "coffee.png", "rocket.jpg"]);
    for j in &jobs {
        assert_eq!(j["status"], "succeeded", "{j}");
        assert!(j["result"]["predictions"].as_array().unwrap().len() == 5);
        let id = j["id"].as_str().unwrap();
        assert_eq!(&job(&server.base, id).await, j);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_without_wait_prints_the_queued_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let photos = photos(dir.path());
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Server::start(&db, &["--no-workers"]);

    let out = submit(&server, &["--json", "-r", photos.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let jobs: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 3, "{stdout}");
    for j in &jobs {
        assert_eq!(j["status"], "queued");
        assert_eq!(&job(&server.base, j["id"].as_str().unwrap()).await, j);
    }

    let out = submit(&server, &[photos.join("coffee.png").to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("coffee.png: queued "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_fails_when_a_job_fails_or_an_upload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let server = Server::start(
        &db,
        &[
            "--workers",
            "1",
            "--inject-failure-rate",
            "1",
            "--max-attempts",
            "1",
        ],
    );
    let out = submit(
        &server,
        &["--wait", fixture("coffee.png").to_str().unwrap()],
    );
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("coffee.png: failed (injected_failure)"),
        "{stdout}"
    );

    // A file that starts like a PNG but is cut short: the server refuses it.
    let bytes = std::fs::read(fixture("chelsea.png")).unwrap();
    let cut = dir.path().join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = submit(&server, &[cut.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cut.png: not uploaded: image_corrupt"),
        "{stderr}"
    );
}

#[test]
fn submit_with_nothing_to_upload_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "text").unwrap();
    let out = Command::new(bin())
        .args(["submit", "--server", "http://127.0.0.1:9"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no image files"),
        "{}",
        text(&out.stderr)
    );
}

/// A server on `127.0.0.1` that answers every request `200 OK` with a web page.
fn not_an_api() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\
                  Connection: close\r\n\r\nhello",
            );
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_says_clearly_why_it_cannot_follow_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    // The server has tokens: one that may submit but not read.
    let (ok, submit_only, err) =
        super::token_cmd(&db, &["create", "--name", "uploader", "--scope", "submit"]);
    assert!(ok, "{err}");
    let submit_only = submit_only.trim().to_string();
    let server = Server::start(&db, &["--workers", "1"]);
    let coffee = fixture("coffee.png");
    let coffee = coffee.to_str().unwrap();
    let run = |base: &str, args: &[&str]| {
        let started = std::time::Instant::now();
        let out = Command::new(bin())
            .args(["submit", "--server", base])
            .args(args)
            .env_remove("IMGCLASS_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}: {}", text(&out.stdout));
        // A refusal is not asked again and again.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{args:?}"
        );
        text(&out.stderr)
    };
    let hint = "(pass a token with --token or IMGCLASS_TOKEN)";
    let needs = "unauthorized: this server needs an API token";

    // Without a token: the upload's message, and the same with --wait.
    let plain = run(&server.base, &[coffee]);
    assert!(plain.contains(needs) && plain.contains(hint), "{plain}");
    let waited = run(&server.base, &["--wait", coffee]);
    assert!(waited.contains(needs) && waited.contains(hint), "{waited}");
    assert!(waited.contains("/api/events"), "{waited}");
    // No bare status code (the server's address, whose port may hold the digits, aside).
    assert!(
        !waited.replace(&server.base, "").contains("401"),
        "{waited}"
    );

    // A token the server does not know.
    let bad = run(
        &server.base,
        &["--wait", "--token", "imgc_000000000000_nope", coffee],
    );
    assert!(
        bad.contains("unauthorized: the API token is not valid")
            && bad.contains("(check the token given with --token or IMGCLASS_TOKEN)"),
        "{bad}"
    );

    // A token that may submit but not read: the events need `read`.
    let forbidden = run(&server.base, &["--wait", "--token", &submit_only, coffee]);
    assert!(
        forbidden.contains("forbidden: ") && forbidden.contains("read"),
        "{forbidden}"
    );
    assert!(
        !forbidden.replace(&server.base, "").contains("403"),
        "{forbidden}"
    );

    // No imgclass API there: a 404 of the path, and a web page that is no event stream.
    let missing = run(&format!("{}/nope", server.base), &["--wait", coffee]);
    assert!(
        missing.contains("404") && missing.contains("an imgclass server?"),
        "{missing}"
    );
    let page = run(&not_an_api(), &["--wait", coffee]);
    assert!(page.contains("text/html, not an event stream"), "{page}");
}
