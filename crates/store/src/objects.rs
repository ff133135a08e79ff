//! Where image bytes live. `database`: in the database's own `blob_chunks` (1 MiB chunks, the
//! original layout). Otherwise as content-addressed objects, one per SHA-256, through the
//! `object_store` crate: `file:///DIR` (a directory; each file written to a temporary name,
//! synced, renamed, and its directory synced) or `s3://BUCKET[/PREFIX]` (any S3-compatible
//! service, configured by the standard `AWS_*` environment variables). `memory://NAME` is an
//! in-process store for tests.
//!
//! The database records, per image, which store holds it (`blobs.store`: `NULL` for the
//! database, else the store's URL), so images written under one configuration stay readable
//! under another, and `imgclass migrate --blobs-to` can move them one at a time. Every object
//! operation is timed and reported to an optional [`BlobObserver`] (the metrics).

use crate::{Result, StoreError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The URL of the database's own chunks.
pub const DATABASE: &str = "database";

/// Images up to this size stay in the database with a `file://` store (as large as the images
/// a claim carries with it, `INLINE_IMAGE_MAX`).
pub const SMALL_IMAGE_MAX: usize = crate::INLINE_IMAGE_MAX;

/// An operation on an object store, as the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobOp {
    Put,
    Get,
    Delete,
    List,
    Probe,
}

impl BlobOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobOp::Put => "put",
            BlobOp::Get => "get",
            BlobOp::Delete => "delete",
            BlobOp::List => "list",
            BlobOp::Probe => "probe",
        }
    }
}

/// Told of every object operation: which, whether it succeeded, how long it took.
pub trait BlobObserver: Send + Sync {
    fn observe(&self, op: BlobOp, ok: bool, elapsed: Duration);
}

/// One object in a store, as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The image's SHA-256 when the name is one (else `None`: a left-over temporary file).
    pub sha256: Option<String>,
    pub key: String,
    pub last_modified: DateTime<Utc>,
}

/// A place image bytes are kept (cheap to clone).
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    kind: Kind,
    observer: Option<Arc<dyn BlobObserver>>,
}

enum Kind {
    Database,
    Objects(Objects),
}

struct Objects {
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjectPath>,
    /// For `file://`: the directory, written to by our own synced writes.
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.inner.url)
    }
}

impl Default for BlobStore {
    fn default() -> Self {
        BlobStore::database()
    }
}

fn config_err(url: &str, message: impl Into<String>) -> StoreError {
    StoreError::Config {
        url: url.to_string(),
        message: message.into(),
    }
}

/// In-process stores by name (`memory://NAME`), so that opening the same URL twice finds the
/// same objects, as it would for a directory or a bucket.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(object_store::memory::InMemory::new()))
        .clone()
}

impl BlobStore {
    /// The database's own chunks.
    pub fn database() -> BlobStore {
        BlobStore {
            inner: Arc::new(Inner {
                url: DATABASE.into(),
                kind: Kind::Database,
                observer: None,
            }),
        }
    }

    /// Opens the store a URL names: `database`, `file:///DIR` (created when missing),
    /// `s3://BUCKET[/PREFIX]` or `memory://NAME`. The URL it reports (and records on each
    /// image) is normalized: a directory's absolute path, no trailing slash.
    pub fn open(url: &str, observer: Option<Arc<dyn BlobObserver>>) -> Result<BlobStore> {
        let (url, kind) = if url == DATABASE {
            (DATABASE.to_string(), Kind::Database)
        } else if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(config_err(url, "expected file:///DIRECTORY"));
            }
            std::fs::create_dir_all(path)
                .map_err(|e| config_err(url, format!("cannot create the directory: {e}")))?;
            let dir = std::fs::canonicalize(path)
                .map_err(|e| config_err(url, format!("cannot open the directory: {e}")))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| config_err(url, e.to_string()))?;
            let url = format!("file://{}", dir.display());
            let kind = Kind::Objects(Objects {
                store: Arc::new(store),
                prefix: None,
                dir: Some(dir),
            });
            (url, kind)
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let rest = rest.trim_end_matches('/');
            let (bucket, prefix) = match rest.split_once('/') {
                Some((b, p)) => (b, Some(p)),
                None => (rest, None),
            };
            if bucket.is_empty() {
                return Err(config_err(url, "expected s3://BUCKET[/PREFIX]"));
            }
            let store = s3(bucket).map_err(|e| config_err(url, e.to_string()))?;
            let kind = Kind::Objects(Objects {
                store: Arc::new(store),
                prefix: prefix.map(ObjectPath::from),
                dir: None,
            });
            (format!("s3://{rest}"), kind)
        } else if let Some(name) = url.strip_prefix("memory://") {
            let kind = Kind::Objects(Objects {
                store: memory_store(name),
                prefix: None,
                dir: None,
            });
            (url.to_string(), kind)
        } else {
            return Err(config_err(
                url,
                "expected database, file:///DIRECTORY or s3://BUCKET[/PREFIX]",
            ));
        };
        Ok(BlobStore {
            inner: Arc::new(Inner {
                url,
                kind,
                observer,
            }),
        })
    }

    /// The store's normalized URL, as recorded on the images it holds.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Whether the bytes go into the database's own chunks.
    pub fn is_database(&self) -> bool {
        matches!(self.inner.kind, Kind::Database)
    }

    /// The size an image must exceed to be kept here rather than in the database: 0 for S3
    /// (it holds every image), `SMALL_IMAGE_MAX` for a directory, whose small images stay in
    /// the database (one file with its two fsyncs per tiny image made the queue 0.53-0.66x as
    /// fast; in the database they ride the group commit and come with their claim).
    pub fn min_size(&self) -> usize {
        match &self.inner.kind {
            Kind::Database => usize::MAX,
            Kind::Objects(o) if o.dir.is_some() => SMALL_IMAGE_MAX,
            Kind::Objects(_) => 0,
        }
    }

    /// Whether an image of `size` bytes is kept here (else in the database).
    pub fn holds(&self, size: usize) -> bool {
        size > self.min_size()
    }

    fn objects(&self) -> Result<&Objects> {
        match &self.inner.kind {
            Kind::Objects(o) => Ok(o),
            Kind::Database => Err(StoreError::Database(
                "the database's chunks are not an object store".into(),
            )),
        }
    }

    /// An image's object name: `[PREFIX/]ab/abcdef…` (its SHA-256, under its first two digits).
    fn key(&self, sha256: &str) -> Result<ObjectPath> {
        if !is_sha256(sha256) {
            return Err(StoreError::Database(format!("{sha256:?} is not a SHA-256")));
        }
        let name = format!("{}/{sha256}", &sha256[..2]);
        Ok(match &self.objects()?.prefix {
            Some(p) => ObjectPath::from(format!("{p}/{name}")),
            None => ObjectPath::from(name),
        })
    }

    fn observe(&self, op: BlobOp, ok: bool, started: Instant) {
        if let Some(o) = &self.inner.observer {
            o.observe(op, ok, started.elapsed());
        }
    }

    fn unavailable(&self, what: &str, e: Failure) -> StoreError {
        StoreError::ImagesUnavailable(format!("{what} in {}: {e}", self.inner.url))
    }

    /// Stores an image under its SHA-256 (overwriting an identical one), durably before it
    /// returns.
    pub async fn put(&self, sha256: &str, bytes: Bytes) -> Result<()> {
        let key = self.key(sha256)?;
        let Objects { store, dir, .. } = self.objects()?;
        let started = Instant::now();
        let result = match dir {
            Some(dir) => {
                let path = dir.join(key.as_ref());
                tokio::task::spawn_blocking(move || write_synced(&path, &bytes))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                    .map_err(|e| Failure::of(&e))
            }
            None => store
                .put(&key, PutPayload::from_bytes(bytes))
                .await
                .map(|_| ())
                .map_err(|e| Failure::of(&e)),
        };
        self.observe(BlobOp::Put, result.is_ok(), started);
        result.map_err(|e| self.unavailable(&format!("cannot store the image {sha256}"), e))
    }

    /// An image's bytes; `None` when the store has no such object.
    pub async fn get(&self, sha256: &str) -> Result<Option<Bytes>> {
        let key = self.key(sha256)?;
        let store = &self.objects()?.store;
        let started = Instant::now();
        let result = match store.get(&key).await {
            Ok(got) => got.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        };
        self.observe(BlobOp::Get, result.is_ok(), started);
        result.map_err(|e| {
            self.unavailable(&format!("cannot read the image {sha256}"), Failure::of(&e))
        })
    }

    /// Deletes an object by its key (as listed) or an image's SHA-256; deleting what is not
    /// there succeeds.
    pub async fn delete_key(&self, key: &str) -> Result<()> {
        let store = &self.objects()?.store;
        let started = Instant::now();
        let result = match store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        self.observe(BlobOp::Delete, result.is_ok(), started);
        result.map_err(|e| self.unavailable(&format!("cannot delete {key}"), Failure::of(&e)))
    }

    /// Deletes an image's object.
    pub async fn delete(&self, sha256: &str) -> Result<()> {
        let key = self.key(sha256)?;
        self.delete_key(key.as_ref()).await
    }

    /// Every object under the store's prefix.
    pub async fn list(&self) -> Result<Vec<Listed>> {
        let Objects { store, prefix, .. } = self.objects()?;
        let started = Instant::now();
        let mut stream = store.list(prefix.as_ref());
        let mut out = Vec::new();
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(meta) => {
                    let key = meta.location.to_string();
                    let name = meta.location.filename().unwrap_or_default();
                    let sha256 = is_sha256(name).then(|| name.to_string());
                    out.push(Listed {
                        sha256,
                        key,
                        last_modified: meta.last_modified,
                    });
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.observe(BlobOp::List, failed.is_none(), started);
        match failed {
            Some(e) => Err(self.unavailable("cannot list the images", Failure::of(&e))),
            None => Ok(out),
        }
    }

    /// Whether the store answers (an absent object is an answer); `Ok` for the database's
    /// chunks, which the database's own check covers.
    pub async fn probe(&self) -> Result<()> {
        let Kind::Objects(Objects { store, prefix, .. }) = &self.inner.kind else {
            return Ok(());
        };
        let key = match prefix {
            Some(p) => ObjectPath::from(format!("{p}/.probe")),
            None => ObjectPath::from(".probe"),
        };
        let started = Instant::now();
        let result = match store.head(&key).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        self.observe(BlobOp::Probe, result.is_ok(), started);
        result.map_err(|e| self.unavailable("the image store does not answer", Failure::of(&e)))
    }
}

/// Whether `s` is a SHA-256 in hex (an image's object name).
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An error with every cause it wraps (an HTTP client's "builder error" says little alone).
struct Failure(String);

impl Failure {
    fn of(e: &(dyn std::error::Error + 'static)) -> Failure {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            let more = cause.to_string();
            if !text.contains(&more) {
                text = format!("{text}: {more}");
            }
            source = cause.source();
        }
        Failure(text)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An S3-compatible store for `bucket`, from the standard `AWS_*` variables, failing fast: a
/// request is retried twice within 10 s at most (an outage answers uploads with 503 instead of
/// holding them for minutes).
fn s3(bucket: &str) -> object_store::Result<object_store::aws::AmazonS3> {
    let retry = object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    use object_store::aws::AmazonS3ConfigKey as Key;
    use object_store::ClientConfigKey as Client;
    let mut builder = object_store::aws::AmazonS3Builder::new()
        .with_config(Key::Client(Client::ConnectTimeout), "5s")
        .with_config(Key::Client(Client::Timeout), "60s");
    // The standard variables, as `AmazonS3Builder::from_env` reads them (after our defaults, so
    // that they may change them).
    for (key, value) in std::env::vars() {
        if key.starts_with("AWS_") {
            if let Ok(key) = key.to_ascii_lowercase().parse::<Key>() {
                builder = builder.with_config(key, value);
            }
        }
    }
    let mut builder = builder.with_bucket_name(bucket).with_retry(retry);
    // AWS_REGION or AWS_DEFAULT_REGION when set; S3-compatible services ignore it.
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    builder.build()
}

/// Writes `bytes` to `path` so that it is there whole after a crash, or not at all: a
/// temporary file beside it, synced, renamed into place, and the directory synced.
fn write_synced(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("an object path has a directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!("{name}.tmp-{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The stores images are read from: the one new images go to, and any other an image was
/// recorded in (opened on first use, reporting to the same observer).
pub(crate) struct Blobs {
    pub(crate) current: BlobStore,
    others: Mutex<HashMap<String, BlobStore>>,
}

impl Blobs {
    pub(crate) fn new(current: BlobStore) -> Blobs {
        Blobs {
            current,
            others: Mutex::new(HashMap::new()),
        }
    }

    /// The store recorded as `url` on an image. A directory that is no longer there is taken
    /// to have moved with the database to the current directory store (a data directory copied
    /// or restored elsewhere keeps its images).
    pub(crate) fn at(&self, url: &str) -> Result<BlobStore> {
        if url == self.current.url() {
            return Ok(self.current.clone());
        }
        if let Some(dir) = url.strip_prefix("file://") {
            let current_is_dir =
                matches!(&self.current.inner.kind, Kind::Objects(o) if o.dir.is_some());
            if current_is_dir && !std::path::Path::new(dir).is_dir() {
                return Ok(self.current.clone());
            }
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = others.get(url) {
            return Ok(s.clone());
        }
        let store = BlobStore::open(url, self.current.inner.observer.clone())?;
        others.insert(url.to_string(), store.clone());
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[tokio::test]
    async fn a_file_store_keeps_each_image_by_its_digest_and_lists_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/blobs", dir.path().display());
        let store = BlobStore::open(&url, None).unwrap();
        assert!(store.url().starts_with("file:///"));
        assert_eq!(store.get(SHA).await.unwrap(), None);
        store.put(SHA, Bytes::from_static(b"abc")).await.unwrap();
        assert!(dir.path().join("blobs/00").join(SHA).is_file());
        assert_eq!(store.get(SHA).await.unwrap().unwrap(), &b"abc"[..]);
        let listed = store.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].sha256.as_deref(), Some(SHA));
        store.delete(SHA).await.unwrap();
        store.delete(SHA).await.unwrap();
        assert_eq!(store.get(SHA).await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_stores_are_shared_by_name() {
        let a = BlobStore::open("memory://shared-by-name", None).unwrap();
        a.put(SHA, Bytes::from_static(b"x")).await.unwrap();
        let b = BlobStore::open("memory://shared-by-name", None).unwrap();
        assert_eq!(b.get(SHA).await.unwrap().unwrap(), &b"x"[..]);
        assert!(b.probe().await.is_ok());
    }

    #[test]
    fn bad_urls_and_keys_are_refused() {
        for url in ["", "file://", "s3://", "ftp://x", "databse"] {
            assert!(BlobStore::open(url, None).is_err(), "{url}");
        }
        let store = BlobStore::open("memory://keys", None).unwrap();
        assert!(store.key("../etc/passwd").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_s3_endpoint_is_unavailable_not_missing() {
        std::env::set_var("AWS_ACCESS_KEY_ID", "k");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "s");
        std::env::set_var("AWS_ALLOW_HTTP", "true");
        std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
        let store = BlobStore::open("s3://nowhere/images", None).unwrap();
        for e in [
            store.get(SHA).await.unwrap_err(),
            store.put(SHA, Bytes::new()).await.unwrap_err(),
            store.probe().await.unwrap_err(),
        ] {
            assert!(matches!(e, StoreError::ImagesUnavailable(_)), "{e}");
        }
    }
}
