//! Write transactions, the bottom of the store: [`Tx`], a connection of its own that is closed
//! rather than pooled again when the transaction did not end cleanly, and [`Write`], a
//! transaction with the events it recorded and the time it read once it held its locks.

use crate::health::{self, StorageWatch};
use crate::placeholders::Placeholders;
use crate::rows::now_ms;
use crate::{Event, Result};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};
use std::sync::Arc;

/// A write transaction on a pool connection of its own, committed or rolled back explicitly.
/// If it is dropped unfinished (an error, a canceled request) or its `COMMIT`/`ROLLBACK`
/// fails, the connection is closed instead of going back to the pool: whatever happened (a
/// full disk, an I/O error, a dropped connection), the next transaction starts on a clean
/// connection, so one storage error never poisons the store.
pub(crate) struct Tx {
    conn: PoolConnection<Any>,
    open: bool,
    /// How its database takes the statements' parameters (`Exec` rewrites them).
    pub(crate) placeholders: Placeholders,
}

impl Tx {
    async fn begin(
        pool: &AnyPool,
        statement: &'static str,
        placeholders: Placeholders,
    ) -> Result<Tx> {
        let mut tx = Tx {
            conn: pool.acquire().await?,
            open: true,
            placeholders,
        };
        sqlx::Executor::execute(&mut *tx.conn, statement).await?;
        Ok(tx)
    }

    /// Commits; the connection stays with this value (and out of the pool) until it is dropped,
    /// so that whatever the committer does next happens before the next writer begins.
    pub(crate) async fn commit(&mut self) -> Result<()> {
        sqlx::Executor::execute(&mut *self.conn, "COMMIT").await?;
        self.open = false;
        Ok(())
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        sqlx::Executor::execute(&mut *self.conn, "ROLLBACK").await?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// A write transaction and the events it recorded.
pub(crate) struct Write {
    pub(crate) tx: Tx,
    /// Written at commit, which numbers them.
    pub(crate) events: Vec<Event>,
    pub(crate) now: i64,
    watch: WriteWatch,
}

impl Write {
    /// Begins a write transaction with `statement` (the dialect's `BEGIN` for its durability),
    /// its statements' parameters taken as `placeholders` says.
    pub(crate) async fn begin(
        pool: &AnyPool,
        statement: &'static str,
        placeholders: Placeholders,
        storage: Arc<StorageWatch>,
    ) -> Result<Write> {
        // A leftover from an error outside any write is not this write's.
        health::take_storage_full_seen();
        // Nothing is written into a database file that is no longer the one opened.
        storage.check_writable()?;
        let watch = WriteWatch {
            storage,
            committed: false,
        };
        let tx = Tx::begin(pool, statement, placeholders).await?;
        // `now` is read once the transaction holds its locks, so that times recorded by
        // transactions that waited for each other never go backwards.
        Ok(Write {
            tx,
            events: Vec::new(),
            now: now_ms(),
            watch,
        })
    }

    /// Commits (the events, if any, must have been written) and hands back the events. The
    /// connection stays with this value until it is dropped (see [`Tx::commit`]).
    pub(crate) async fn commit_events(&mut self) -> Result<Vec<Event>> {
        self.tx.commit().await?;
        self.watch.committed = true;
        Ok(std::mem::take(&mut self.events))
    }

    /// Commits a write that recorded no events (nothing to publish).
    pub(crate) async fn commit_plain(mut self) -> Result<()> {
        self.commit_events().await.map(drop)
    }
}

/// Tells the store when its write transaction ended: committed, or dropped by a full-storage
/// error (noted on this thread by the error's conversion, see `health`).
struct WriteWatch {
    storage: Arc<StorageWatch>,
    committed: bool,
}

impl Drop for WriteWatch {
    fn drop(&mut self) {
        if self.committed {
            self.storage.write_succeeded();
        } else if let Some(detail) = health::take_storage_full_seen() {
            self.storage.full(detail);
        }
    }
}
