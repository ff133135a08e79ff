//! The embedded SQLite backend: one writer connection (SQLite has one writer at a time anyway,
//! so in-process writers queue here instead of spinning on SQLITE_BUSY) and a pool of readers,
//! WAL journal, and events broadcast in-process (one process owns the file).

use crate::dialect::{Dialect, Durability, Lock};
use crate::tx::Tx;
use crate::{Event, Result, StoreError};
use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;
use sqlx::Executor;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::broadcast;

/// Set on every connection: WAL, foreign keys, and a generous wait for a busy file.
pub(crate) const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                       PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL";

pub(crate) struct Sqlite {
    events: broadcast::Sender<Event>,
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
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
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
    Ok((
        writer,
        reader,
        Sqlite { events },
        std::path::PathBuf::from(path),
    ))
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

    fn lock(&self, _lock: Lock) -> &'static str {
        // The write transaction already excludes every other writer.
        ""
    }

    fn top_label(&self) -> &'static str {
        "json_extract(j.result, '$.predictions[0].label')"
    }

    async fn announce(&self, _tx: &mut Tx) -> Result<()> {
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
