//! The embedded SQLite backend: one writer connection (SQLite has one writer at a time anyway,
//! so in-process writers queue here instead of spinning on SQLITE_BUSY) and a pool of readers,
//! WAL journal, and events broadcast in-process (one process owns the file). A file this process
//! cannot write is refused at once, with what stands in the way; once open, the file is watched
//! (see `health`), and no connection ever creates a new file in its place.

use crate::dialect::{Dialect, Durability, Lock};
use crate::health::FileIdentity;
use crate::placeholders::Placeholders;
use crate::tx::Tx;
use crate::{Event, Result, StoreError};
use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;
use sqlx::Executor;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::broadcast;

/// Set on every connection: WAL, foreign keys, and a generous wait for a busy file.
pub(crate) const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                       PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL";
/// How durable a transaction's commit is: `FULL` syncs the WAL at each commit (what every
/// durable write asks for, and what `PRAGMAS` leave a connection with), `NORMAL` at checkpoints
/// only (it survives a crash of the process, not of the machine).
pub(crate) const SYNCHRONOUS_FULL: &str = "PRAGMA synchronous = FULL";
pub(crate) const SYNCHRONOUS_NORMAL: &str = "PRAGMA synchronous = NORMAL";

pub(crate) struct Sqlite {
    events: broadcast::Sender<Event>,
    /// The database file opened, for the store to watch.
    pub(crate) file: Option<FileIdentity>,
}

/// Opens (creating if needed) the database file a `sqlite://PATH` URL names: the writer pool,
/// the reader pool, the dialect and the file's path.
pub(crate) async fn open(url: &str) -> Result<(AnyPool, AnyPool, Sqlite, std::path::PathBuf)> {
    let config = |message: String| StoreError::Config {
        url: url.to_string(),
        message,
    };
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| config(format!("cannot create {}: {e}", dir.display())))?;
        }
    }
    let with_mode = if url.contains("mode=") {
        url.to_string()
    } else {
        // Created (if need be) and found writable here; the pools' connections, opened now and
        // whenever one is replaced, never create a file: one deleted under the running server
        // is not replaced by an empty one.
        let file = std::path::PathBuf::from(path);
        tokio::task::spawn_blocking(move || check_writable(&file))
            .await
            .map_err(|e| config(format!("the check of the database file failed: {e}")))?
            .map_err(config)?;
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rw")
    };
    let options = AnyConnectOptions::from_str(&with_mode).map_err(|e| config(e.to_string()))?;
    let pool = |max: u32| {
        AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            // A file connection does not go stale; sqlx's default ping before every acquire
            // would cost a hop to the connection's thread per transaction and per read.
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(PRAGMAS).await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
    };
    let writer = pool(1).await?;
    let reader = pool(4).await?;
    let (events, _) = broadcast::channel(4096);
    let file = FileIdentity::of(Path::new(path)).ok();
    Ok((
        writer,
        reader,
        Sqlite { events, file },
        std::path::PathBuf::from(path),
    ))
}

/// Opens the database file (creating it if need be) the way the store will, and says what
/// stands in the way when this process cannot write it: SQLite itself opens such a file
/// read-only without a word, and then fails every write ("attempt to write a readonly
/// database"), which a pool would retry until its timeout.
fn check_writable(path: &Path) -> std::result::Result<(), String> {
    let shown = path.display();
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "the database file {shown} cannot be opened for writing: {e}{}",
                permissions(path)
            ))
        }
    }
    let conn = rusqlite::Connection::open(path).map_err(|e| {
        format!(
            "the database file {shown} cannot be opened: {e}{}",
            permissions(path)
        )
    })?;
    if conn
        .is_readonly(rusqlite::DatabaseName::Main)
        .unwrap_or(false)
    {
        return Err(format!(
            "the database file {shown} can only be opened read-only by this process{}",
            permissions(path)
        ));
    }
    conn.execute_batch(PRAGMAS).map_err(|e| {
        format!(
            "the database file {shown} cannot be written: {e}{}",
            permissions(path)
        )
    })?;
    Ok(())
}

/// The permissions that decide whether this process may write `path` and create the journal
/// files next to it, for error messages: " (file: mode 0444, owner uid 1000; directory: mode
/// 0755, owner uid 1000; this process: uid 33)".
#[cfg(unix)]
fn permissions(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let describe = |p: &Path| {
        std::fs::metadata(p).map(|m| {
            format!(
                "mode {:04o}, owner uid {}{}",
                m.mode() & 0o7777,
                m.uid(),
                if m.permissions().readonly() {
                    ", read-only"
                } else {
                    ""
                }
            )
        })
    };
    let mut parts = Vec::new();
    if let Ok(file) = describe(path) {
        parts.push(format!("file: {file}"));
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(dir) = describe(dir) {
        parts.push(format!("its directory: {dir}"));
    }
    // On Linux the owner of /proc/self is the process's user.
    if let Ok(me) = std::fs::metadata("/proc/self") {
        parts.push(format!("this process: uid {}", me.uid()));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

#[cfg(not(unix))]
fn permissions(_: &Path) -> String {
    String::new()
}

#[async_trait]
impl Dialect for Sqlite {
    fn begin(&self, durability: Durability) -> &'static str {
        // `BEGIN IMMEDIATE` takes the write lock first, so a transaction that reads before it
        // writes is never refused its upgrade by another process (SQLITE_BUSY). Durable commits
        // are fsync'd (FULL); relaxed ones (NORMAL under WAL) survive a crash of the process.
        match durability {
            Durability::Durable => "PRAGMA synchronous = FULL; BEGIN IMMEDIATE",
            Durability::Relaxed => "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE",
        }
    }

    fn placeholders(&self) -> Placeholders {
        Placeholders::Sqlite
    }

    fn lock(&self, _lock: Lock) -> &'static str {
        // The write transaction already excludes every other writer.
        ""
    }

    fn top_label(&self) -> &'static str {
        "json_extract(j.result, '$.predictions[0].label')"
    }

    async fn announce(&self, _tx: &mut Tx, _events: &[Event]) -> Result<()> {
        Ok(())
    }

    fn committed(&self, events: Vec<Event>) {
        for e in events {
            // No receiver is fine: nobody is listening.
            let _ = self.events.send(e);
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn migrate(&self, pool: &AnyPool) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite").run(pool).await?;
        Ok(())
    }
}
