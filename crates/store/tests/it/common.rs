//! Shared helpers: fresh stores, generated images, sample results and errors.

use chrono::{DateTime, Utc};
use imgclass_core::policy::Rules;
use imgclass_core::{ErrorCode, JobId, JobResult, ModelInfo, Prediction, Timings};
use imgclass_store::{Claim, Job, JobError, NewJob, Outcome, Store};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// A long lease: long enough that it never expires during a test.
pub const LONG_LEASE: Duration = Duration::from_secs(3600);

/// A fresh database for one test, on the backend `IMGCLASS_TEST_DATABASE` names: unset or
/// `sqlite` for a SQLite file in a temporary directory, or a `postgres://` URL, under which
/// each test gets a schema of its own that is dropped afterwards.
pub struct TestDb {
    pub url: String,
    _dir: Option<TempDir>,
    drop_schema: Option<(String, String)>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        match std::env::var("IMGCLASS_TEST_DATABASE") {
            Ok(admin) if admin.starts_with("postgres") => {
                let schema = format!("t_{}", uuid_like());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("connect to PostgreSQL (IMGCLASS_TEST_DATABASE)");
                sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {schema}").as_str())
                    .await
                    .expect("create schema");
                let sep = if admin.contains('?') { '&' } else { '?' };
                TestDb {
                    url: format!("{admin}{sep}options=-c%20search_path%3D{schema}"),
                    _dir: None,
                    drop_schema: Some((admin, schema)),
                }
            }
            _ => {
                let dir = tempfile::tempdir().expect("temp dir");
                TestDb {
                    url: format!("sqlite://{}", dir.path().join("t.db").display()),
                    _dir: Some(dir),
                    drop_schema: None,
                }
            }
        }
    }

    /// A store on this database, migrated, deciding with [`test_rules`].
    pub async fn open(&self) -> Arc<dyn Store> {
        self.open_with(test_rules()).await
    }

    /// A store on this database, migrated, deciding with `rules`.
    pub async fn open_with(&self, rules: Rules) -> Arc<dyn Store> {
        let store = imgclass_store::connect_with(&self.url, rules)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, schema)) = self.drop_schema.take() {
            // Drop runs outside any async context we could await in: use a thread of its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut conn) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                        let _ = sqlx::Executor::execute(&mut conn, sql.as_str()).await;
                    }
                });
            })
            .join();
        }
    }
}

pub fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh, migrated store (see [`TestDb`]); keep the `TestDb` alive for the test.
pub async fn fresh_store() -> (Arc<dyn Store>, TestDb) {
    fresh_store_with(test_rules()).await
}

/// [`fresh_store`] deciding with `rules`.
pub async fn fresh_store_with(rules: Rules) -> (Arc<dyn Store>, TestDb) {
    let db = TestDb::new().await;
    let store = db.open_with(rules).await;
    (store, db)
}

/// The rules of the tests' stores: the defaults, but an automatic retry is due at once, so
/// that a test can claim it again without waiting.
pub fn test_rules() -> Rules {
    Rules {
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        ..Rules::default()
    }
}

/// An attempt that failed with `code`: the store's rules decide what follows (a retryable
/// code with attempts left goes back to the queue, at once under [`test_rules`]).
pub fn errored(code: ErrorCode, message: &str) -> Outcome {
    Outcome::Errored {
        error: job_error(code, message),
        retry_after: None,
    }
}

/// An attempt that failed with a retryable `code` and asked to be run again no sooner than
/// `after`.
pub fn errored_asking(code: ErrorCode, message: &str, after: Duration) -> Outcome {
    Outcome::Errored {
        error: job_error(code, message),
        retry_after: Some(after),
    }
}

/// A small xorshift generator, so images are varied but reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u8
    }
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &d in data {
        a = (a + u32::from(d)) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// A valid RGB PNG of noise (uncompressed deflate, so its size is about `3 * width * height`).
/// Different seeds give different images.
pub fn png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut raw = Vec::with_capacity((width as usize * 3 + 1) * height as usize);
    for _ in 0..height {
        raw.push(0); // filter: none
        raw.extend((0..width * 3).map(|_| rng.next_byte()));
    }
    // zlib stream of stored deflate blocks.
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(0xFFFF).collect();
    for (i, block) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    z.extend_from_slice(&adler32(&raw).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A job for the given image bytes (the store does not decode images).
pub fn job_for(image: Vec<u8>, width: u32, height: u32, file_name: &str) -> NewJob {
    NewJob {
        sha256: sha256_hex(&image),
        image: image.into(),
        content_type: "image/png".into(),
        width,
        height,
        file_name: Some(file_name.into()),
        model: imgclass_core::BUILTIN_MODEL.into(),
        max_attempts: 3,
        priority: 0,
        owner: None,
        webhook: None,
        cached_result: None,
    }
}

/// A job for a small PNG; different seeds give different images.
pub fn new_job(seed: u64) -> NewJob {
    job_for(png(4, 3, seed), 4, 3, &format!("image-{seed}.png"))
}

/// Creates one job and returns it.
pub async fn create(store: &dyn Store, job: NewJob) -> Job {
    let mut jobs = store.create_jobs(vec![job]).await.expect("create_jobs");
    assert_eq!(jobs.len(), 1);
    jobs.remove(0)
}

/// Claims exactly one job (the only one due), failing the test otherwise.
pub async fn claim_one(store: &dyn Store, worker: &str, lease: Duration) -> Claim {
    let mut claims = store.claim(worker, 1, lease).await.expect("claim");
    assert_eq!(claims.len(), 1, "expected one claimable job");
    claims.remove(0)
}

/// Fetches a job that must exist.
pub async fn get(store: &dyn Store, id: JobId) -> Job {
    store
        .get_job(id)
        .await
        .expect("get_job")
        .expect("job exists")
}

/// Claims the only due job with a 1 ms lease and waits until that lease has expired.
pub async fn claim_and_let_expire(store: &dyn Store, worker: &str) -> Claim {
    let claim = claim_one(store, worker, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    claim
}

pub fn sample_result() -> JobResult {
    JobResult {
        predictions: vec![
            Prediction {
                index: 281,
                label: "tabby cat".into(),
                probability: 0.8125,
            },
            Prediction {
                index: 285,
                label: "Egyptian cat".into(),
                probability: 0.1,
            },
        ],
        model: ModelInfo {
            provider: imgclass_core::Provider::Imagga,
            name: "resnet".into(),
            version: "1.0".into(),
        },
        timings: Timings {
            queue_wait_ms: 1.5,
            decode_ms: 2.25,
            inference_ms: 10.0,
        },
        worker: None,
    }
}

pub fn job_error(code: ErrorCode, message: &str) -> JobError {
    JobError {
        code,
        message: message.into(),
    }
}

/// A time truncated to the millisecond precision the store keeps.
pub fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("valid time")
}
