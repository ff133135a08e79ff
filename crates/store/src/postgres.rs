//! The PostgreSQL backend, for many API and worker nodes on one database: row locks
//! (`FOR UPDATE`, `SKIP LOCKED` for claims) and LISTEN/NOTIFY, so that every node that follows
//! the event log sees every event, and idle workers wake up, whichever node made the change.
//!
//! What a node costs the database must not grow with the number of nodes: a node holds a small
//! pool ([`PgOptions::max_connections`]) and one listening connection; only the nodes that
//! follow the event log (API nodes, webhook deliverers) read each committed change, and a
//! worker-only node hears only that a job became claimable (its own channel). Behind a pooler in
//! transaction mode, where LISTEN does not work, a node polls instead ([`PgOptions::listen`]).

use crate::dialect::{Dialect, Durability, Lock};
use crate::events::{last_event_seq, read_events};
use crate::tx::Tx;
use crate::{Event, Result, StoreError};
use async_trait::async_trait;
use imgclass_core::JobStatus;
use rand::Rng;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::PgListener;
use sqlx::AnyPool;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

/// A pooled connection idle at least this long is pinged before it is used again.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(30);

/// The channel every committed change is announced on (heard by the nodes that follow the log).
const EVENTS_CHANNEL: &str = "imgclass_events";

/// The channel a change that made a job claimable is announced on (heard by worker-only nodes).
const QUEUED_CHANNEL: &str = "imgclass_queued";

/// How long a listening node waits for a notification before it looks anyway.
const LISTEN_TICK: Duration = Duration::from_secs(5);

/// The shortest time between two reads of the log by a following node.
const FOLLOW_GAP: Duration = Duration::from_millis(5);

/// The advisory lock that orders the event log's numbers by commit (see `announce`); the
/// number is arbitrary, the same on every node.
const EVENTS_LOCK: i64 = 0x696d_6763_6c61_7373 & 0x7fff_ffff_ffff_ffff;

/// How a node uses a PostgreSQL database: the size of its pool, whether it listens for changes
/// or polls, and whether it reads the event log.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Pooled connections at most; a listening node holds one more, its listener's.
    pub max_connections: u32,
    /// LISTEN/NOTIFY on a connection of its own. Off behind a pooler in transaction mode
    /// (PgBouncer's `pool_mode = transaction`), which does not pass it: the node then reads the
    /// log and looks for due jobs every `poll_interval`.
    pub listen: bool,
    /// Whether this node reads every committed change from the event log (for its event
    /// stream: SSE, `Prefer: wait`, the webhook deliverer's wake-ups). A worker-only node does
    /// not: it only needs to hear that a job became claimable.
    pub follow_events: bool,
    /// Without LISTEN, how often the log is read and idle workers look for jobs (with jitter).
    pub poll_interval: Duration,
}

impl PgOptions {
    /// The pool of a node that states none.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 4;
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            listen: true,
            follow_events: true,
            poll_interval: Duration::from_secs(1),
        }
    }
}

pub(crate) struct Postgres {
    events: broadcast::Sender<Event>,
    /// Signalled when this node committed events (a polling follower reads them at once).
    local: Arc<Notify>,
    idle: Arc<Idle>,
    listener: tokio::task::JoinHandle<()>,
}

/// Whether this node's idle workers wait for a wake-up: its last claim found fewer due jobs than
/// it asked for. Only then does a worker-only node listen: a node whose workers are all busy
/// would only be woken (and PostgreSQL signal its listening connection) by every change of every
/// other node for nothing.
#[derive(Default)]
struct Idle {
    waiting: AtomicBool,
    changed: Notify,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Connects to the database a `postgres://` URL names and starts following its changes as
/// `options` say.
pub(crate) async fn open_with(
    url: &str,
    wakeups: Arc<Notify>,
    options: &PgOptions,
) -> Result<(AnyPool, Postgres)> {
    let connect = AnyConnectOptions::from_str(url).map_err(|e| StoreError::Config {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    let pool = AnyPoolOptions::new()
        .max_connections(options.max_connections.max(1))
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
        .connect_with(connect)
        .await?;
    let (events, _) = broadcast::channel(4096);
    // Events from now on are broadcast; before migrations the table may not exist yet.
    let last_seen = if options.follow_events {
        last_event_seq(&pool).await.unwrap_or(0)
    } else {
        0
    };
    let local = Arc::new(Notify::new());
    let idle = Arc::new(Idle::default());
    let follower = Follower {
        url: url.to_string(),
        pool: pool.clone(),
        options: options.clone(),
        last_seen,
        gap_since: None,
        wakeups,
        events: events.clone(),
        local: local.clone(),
        idle: idle.clone(),
    };
    let listener = tokio::spawn(follower.run());
    Ok((
        pool,
        Postgres {
            events,
            local,
            idle,
            listener,
        },
    ))
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

    fn update_feeds_select(&self) -> bool {
        true
    }

    fn top_label(&self) -> &'static str {
        "(CAST(j.result AS jsonb) -> 'predictions' -> 0 ->> 'label')"
    }

    /// Announces the transaction's events to the nodes that follow the log, and to the
    /// worker-only nodes when a job became claimable (both delivered when it commits); the
    /// listener of each following node, this one included, reads them from the log and
    /// broadcasts them.
    ///
    /// The listeners read the log in `seq` order and must never pass an event that commits
    /// later with a smaller `seq`. So the transactions that write events take one lock, held
    /// until they commit, before they draw their numbers: numbers are then drawn in commit
    /// order, and a gap in the log is a transaction that rolled back, not one still running.
    /// The lock is held only for the events' insert and the commit itself.
    async fn announce(&self, tx: &mut Tx, events: &[Event]) -> Result<()> {
        let queued = if events.iter().any(|e| e.status == Some(JobStatus::Queued)) {
            format!("; NOTIFY {QUEUED_CHANNEL}")
        } else {
            String::new()
        };
        sqlx::Executor::execute(
            &mut **tx,
            format!("SELECT pg_advisory_xact_lock({EVENTS_LOCK}); NOTIFY {EVENTS_CHANNEL}{queued}")
                .as_str(),
        )
        .await?;
        Ok(())
    }

    fn committed(&self, _events: Vec<Event>) {
        // The follower broadcasts them, in log order, with every other node's; when it polls,
        // it reads them now.
        self.local.notify_one();
    }

    fn claim_ended(&self, short: bool) {
        if self.idle.waiting.swap(short, Ordering::Relaxed) != short {
            self.idle.changed.notify_one();
        }
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

/// The task that keeps a node up to date with the other nodes' changes, for the life of the
/// store: it broadcasts the log's events (when the node follows it) and wakes idle workers.
struct Follower {
    url: String,
    pool: AnyPool,
    options: PgOptions,
    /// The last event broadcast.
    last_seen: i64,
    /// Since when a gap in the log's numbers has been waited for.
    gap_since: Option<tokio::time::Instant>,
    wakeups: Arc<Notify>,
    events: broadcast::Sender<Event>,
    local: Arc<Notify>,
    idle: Arc<Idle>,
}

impl Follower {
    async fn run(mut self) {
        loop {
            let listener = if self.options.listen {
                match self.connect().await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot listen for changes; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            } else {
                None
            };
            // Whatever happened while not listening is read from the log; idle workers look
            // again.
            self.look().await;
            self.wakeups.notify_waiters();
            let result = match listener {
                Some(l) if self.options.follow_events => self.hear_all(l).await,
                Some(l) => self.hear_queued(l).await,
                None => self.poll().await,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "change listener failed; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// A connection for LISTEN; a node that follows the log listens to every change at once.
    async fn connect(&self) -> std::result::Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect(&self.url).await?;
        if self.options.follow_events {
            listener.listen(EVENTS_CHANNEL).await?;
        }
        Ok(listener)
    }

    /// The next tick: soon while a gap in the log is waited for.
    fn tick(&self, usual: Duration) -> Duration {
        if self.gap_since.is_some() {
            Duration::from_millis(50)
        } else {
            usual
        }
    }

    /// A following node: every change is read from the log; returns when the connection fails.
    async fn hear_all(&mut self, mut l: PgListener) -> std::result::Result<(), sqlx::Error> {
        let mut last_look = tokio::time::Instant::now();
        loop {
            match tokio::time::timeout(self.tick(LISTEN_TICK), l.try_recv()).await {
                Ok(Ok(Some(_))) => {
                    // Under a stream of changes the log is read at most every `FOLLOW_GAP`, so
                    // that one read takes many nodes' commits; a lone change is read at once.
                    tokio::time::sleep_until(last_look + FOLLOW_GAP).await;
                    // Many notifications may be waiting: one look answers them all.
                    while l.next_buffered().is_some() {}
                }
                Err(_) => {}
                Ok(Ok(None)) => return Err(sqlx::Error::PoolClosed),
                Ok(Err(e)) => return Err(e),
            }
            last_look = tokio::time::Instant::now();
            self.look().await;
        }
    }

    /// A worker-only node: it listens for claimable jobs only while its idle workers wait for
    /// one; returns when the connection fails.
    async fn hear_queued(&mut self, mut l: PgListener) -> std::result::Result<(), sqlx::Error> {
        let mut listening = false;
        loop {
            let waiting = self.idle.waiting.load(Ordering::Relaxed);
            if waiting != listening {
                if waiting {
                    l.listen(QUEUED_CHANNEL).await?;
                    // A job queued before LISTEN took effect was not heard: look once more.
                    self.wakeups.notify_waiters();
                } else {
                    l.unlisten(QUEUED_CHANNEL).await?;
                }
                listening = waiting;
            }
            if listening {
                match tokio::time::timeout(LISTEN_TICK, l.try_recv()).await {
                    Ok(Ok(Some(_))) | Err(_) => while l.next_buffered().is_some() {},
                    Ok(Ok(None)) => return Err(sqlx::Error::PoolClosed),
                    Ok(Err(e)) => return Err(e),
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(LISTEN_TICK) => {}
                    _ = self.idle.changed.notified() => continue,
                }
            }
            self.look().await;
        }
    }

    /// Without LISTEN: the log is read, and idle workers look for jobs, every poll interval
    /// (a follower reads at once what this node committed).
    async fn poll(&mut self) -> std::result::Result<(), sqlx::Error> {
        loop {
            // Polling nodes do not all look at the same moment.
            let every = self
                .options
                .poll_interval
                .mul_f64(rand::rng().random_range(0.75..=1.25));
            tokio::select! {
                _ = tokio::time::sleep(self.tick(every)) => {}
                _ = self.local.notified(), if self.options.follow_events => {}
            }
            self.look().await;
        }
    }

    /// Acts on a change (or a tick): a follower reads the log (and wakes idle workers when a
    /// job became claimable), a worker-only node wakes its idle workers.
    async fn look(&mut self) {
        if !self.options.follow_events {
            self.wakeups.notify_waiters();
            return;
        }
        if let Err(e) = self.catch_up().await {
            tracing::warn!(error = %e, "reading new events failed");
        }
    }

    /// Events with seq above `last_seen` are read from the log in order and broadcast. Numbers
    /// are drawn in commit order (see `announce`), so a gap is a transaction that rolled back
    /// after drawing its numbers; it is still waited for up to two seconds (a node of an older
    /// version may be writing without the lock), then skipped.
    async fn catch_up(&mut self) -> Result<()> {
        let mut wake = false;
        let result = async {
            loop {
                let page = read_events(&self.pool, self.last_seen, 500).await?;
                let full = page.len() == 500;
                for e in page {
                    if e.seq != self.last_seen + 1 {
                        let since = *self.gap_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() < Duration::from_secs(2) {
                            return Ok(());
                        }
                    }
                    self.gap_since = None;
                    self.last_seen = e.seq;
                    wake |= e.status == Some(JobStatus::Queued);
                    let _ = self.events.send(e);
                }
                if !full {
                    return Ok(());
                }
            }
        }
        .await;
        if wake {
            self.wakeups.notify_waiters();
        }
        result
    }
}
