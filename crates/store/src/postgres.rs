//! The PostgreSQL backend, for many API and worker nodes on one database: row locks
//! (`FOR UPDATE`, `SKIP LOCKED` for claims) and LISTEN/NOTIFY, so that every node sees every
//! event (and idle workers wake up) whichever node made the change.

use crate::dialect::{Dialect, Durability, Lock};
use crate::events::{last_event_seq, read_events};
use crate::tx::Tx;
use crate::{Event, Result, StoreError};
use async_trait::async_trait;
use imgclass_core::JobStatus;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::PgListener;
use sqlx::AnyPool;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// A pooled connection idle at least this long is pinged before it is used again.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(30);

/// The channel every committed change is announced on.
const EVENTS_CHANNEL: &str = "imgclass_events";

/// The advisory lock that orders the event log's numbers by commit (see `announce`); the
/// number is arbitrary, the same on every node.
const EVENTS_LOCK: i64 = 0x696d_6763_6c61_7373 & 0x7fff_ffff_ffff_ffff;

pub(crate) struct Postgres {
    events: broadcast::Sender<Event>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Connects to the database a `postgres://` URL names and starts following its events.
pub(crate) async fn open(url: &str, wakeups: Arc<Notify>) -> Result<(AnyPool, Postgres)> {
    let options = AnyConnectOptions::from_str(url).map_err(|e| StoreError::Config {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it hands out by default: a network round trip per
        // transaction. Only a connection that sat idle a while is checked (the server may have
        // closed it); a statement on a connection that broke since fails like any other
        // database error, and a transaction that fails closes its connection (`Tx`).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_CHECK_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await?;
    let (events, _) = broadcast::channel(4096);
    // Events from now on are broadcast; before migrations the table may not exist yet.
    let last_seen = last_event_seq(&pool).await.unwrap_or(0);
    let listener = tokio::spawn(listen(
        url.to_string(),
        pool.clone(),
        last_seen,
        wakeups,
        events.clone(),
    ));
    Ok((pool, Postgres { events, listener }))
}

#[async_trait]
impl Dialect for Postgres {
    fn begin(&self, durability: Durability) -> &'static str {
        match durability {
            Durability::Durable => "BEGIN",
            // As on SQLite: the workers' transitions need not wait for the WAL flush.
            Durability::Relaxed => "BEGIN; SET LOCAL synchronous_commit = off",
        }
    }

    fn lock(&self, lock: Lock) -> &'static str {
        match lock {
            Lock::Jobs => " FOR UPDATE OF j",
            Lock::JobsSkipLocked => " FOR UPDATE OF j SKIP LOCKED",
            Lock::Row => " FOR UPDATE",
            Lock::RowsSkipLocked => " FOR UPDATE SKIP LOCKED",
        }
    }

    fn top_label(&self) -> &'static str {
        "(CAST(j.result AS jsonb) -> 'predictions' -> 0 ->> 'label')"
    }

    /// Announces the transaction's events to every node (delivered when it commits); the
    /// listener of each node, this one included, reads them from the log and broadcasts them.
    ///
    /// The listeners read the log in `seq` order and must never pass an event that commits
    /// later with a smaller `seq`. So the transactions that write events take one lock, held
    /// until they commit, before they draw their numbers: numbers are then drawn in commit
    /// order, and a gap in the log is a transaction that rolled back, not one still running.
    /// The lock is held only for the events' insert and the commit itself.
    async fn announce(&self, tx: &mut Tx) -> Result<()> {
        sqlx::Executor::execute(
            &mut **tx,
            format!("SELECT pg_advisory_xact_lock({EVENTS_LOCK}); NOTIFY {EVENTS_CHANNEL}")
                .as_str(),
        )
        .await?;
        Ok(())
    }

    fn committed(&self, _events: Vec<Event>) {
        // The listener broadcasts them, in log order, with every other node's.
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn migrate(&self, pool: &AnyPool) -> Result<()> {
        // This node's event listener may be reading the log (events joined with jobs) while a
        // migration alters those tables; PostgreSQL then ends one of the two as a deadlock. A
        // migration is one transaction, so the one that lost is simply run again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match sqlx::migrate!("./migrations/postgres").run(pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 && is_deadlock(&e) => {
                    tracing::warn!(error = %e, "a migration met a deadlock; running it again");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Whether a migration failed because PostgreSQL broke a deadlock (SQLSTATE 40P01).
fn is_deadlock(e: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    let (MigrateError::Execute(inner) | MigrateError::ExecuteMigration(inner, _)) = e else {
        return false;
    };
    matches!(inner, sqlx::Error::Database(db) if db.code().as_deref() == Some("40P01"))
}

/// Events with seq above `last_seen` are read from the log in order and broadcast. Numbers are
/// drawn in commit order (see `announce`), so a gap is a transaction that rolled back after
/// drawing its numbers; it is still waited for up to two seconds (a node of an older version
/// may be writing without the lock), then skipped.
async fn catch_up(
    pool: &AnyPool,
    last_seen: &mut i64,
    gap_since: &mut Option<tokio::time::Instant>,
    wakeups: &Notify,
    events: &broadcast::Sender<Event>,
) -> Result<()> {
    let mut wake = false;
    let result = async {
        loop {
            let page = read_events(pool, *last_seen, 500).await?;
            let full = page.len() == 500;
            for e in page {
                if e.seq != *last_seen + 1 {
                    let since = *gap_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() < Duration::from_secs(2) {
                        return Ok(());
                    }
                }
                *gap_since = None;
                *last_seen = e.seq;
                wake |= e.status == Some(JobStatus::Queued);
                let _ = events.send(e);
            }
            if !full {
                return Ok(());
            }
        }
    }
    .await;
    if wake {
        wakeups.notify_waiters();
    }
    result
}

/// Follows the event channel for the life of the store, reconnecting when the connection drops.
async fn listen(
    url: String,
    pool: AnyPool,
    mut last_seen: i64,
    wakeups: Arc<Notify>,
    events: broadcast::Sender<Event>,
) {
    let mut gap_since = None;
    loop {
        let mut listener = match PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for events; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(EVENTS_CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for events; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Whatever happened while not listening is read from the log; idle workers look again.
        let _ = catch_up(&pool, &mut last_seen, &mut gap_since, &wakeups, &events).await;
        wakeups.notify_waiters();
        loop {
            let tick = if gap_since.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(5)
            };
            match tokio::time::timeout(tick, listener.try_recv()).await {
                Ok(Ok(Some(_))) | Err(_) => {}
                Ok(Ok(None)) => {
                    tracing::warn!("event listener lost its connection; reconnecting");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "event listener failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
            if let Err(e) = catch_up(&pool, &mut last_seen, &mut gap_since, &wakeups, &events).await
            {
                tracing::warn!(error = %e, "reading new events failed");
            }
        }
    }
}
