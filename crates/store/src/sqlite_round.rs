//! SQLite's pool round on a thread of its own. sqlx runs each statement as a separate hand-off
//! to its connection's thread, so a round of a worker pool (read the finished jobs, write their
//! outcomes, claim, read the claimed jobs, insert the events, with BEGIN and COMMIT around them)
//! cost seven hand-offs, each a thread wake-up, often on the other core. Here one thread owns a
//! connection of its own to the same file and runs the whole round, so a round is one hand-off
//! there and one back.
//!
//! The group commit's uploads go the same way: their transaction (images, jobs, events, keys)
//! is one hand-off here instead of one per statement.
//!
//! The round itself is `round::run`, and an upload's statements `uploads::insert_all`, the same
//! code the sqlx path runs: this file only gives them a connection ([`Exec`] over rusqlite,
//! whose statements complete at once, so their future is driven to its end on this thread). The
//! caller holds the store's writer connection while a round or an upload runs, so it is still the
//! only writer of the process (SQLite has one writer at a time), and publishes its events before
//! letting go of it.

use crate::exec::{Arg, Exec, Locks};
use crate::health;
use crate::objects::BlobStore;
use crate::placeholders::sqlite_statement;
use crate::round::{self, Round, Work};
use crate::rows::{db_err, now_ms, Columns};
use crate::sqlite::{SYNCHRONOUS_FULL, SYNCHRONOUS_NORMAL};
use crate::transition;
use crate::uploads::{self, Part};
use crate::{Event, Job, Result, SqliteClass, StoreError};
use imgclass_core::policy::Rules;
use rusqlite::types::Value;
use rusqlite::{CachedStatement, Connection, Transaction, TransactionBehavior};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;

/// What the thread runs.
enum Task {
    /// A worker pool's round.
    Round(Work, oneshot::Sender<Result<Round>>),
    /// A group commit's uploads, into `BlobStore`'s images; the parts are handed back with the
    /// answer.
    Submit(
        Vec<Part>,
        BlobStore,
        oneshot::Sender<(Vec<Part>, Result<Submitted>)>,
    ),
}

/// What became of a group commit's uploads on the thread.
pub(crate) enum Submitted {
    /// Committed: each part's jobs, and the events to publish.
    Done(Vec<Vec<Job>>, Vec<Event>),
    /// Rolled back: an image must be put into the object store inside the transaction (rare,
    /// see `uploads::Stored::puts`), which the sqlx path does.
    NeedsPuts,
}

/// The round thread; it ends when this is dropped.
pub(crate) struct Rounds {
    tx: std::sync::mpsc::Sender<Task>,
}

impl Rounds {
    /// Starts the thread; its connection to the database file at `path` is opened at the first
    /// round (after migrations), and opened afresh after any failed round.
    pub(crate) fn start(path: PathBuf, locks: Locks, rules: Rules) -> Result<Rounds> {
        let (tx, rx) = std::sync::mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name("imgclass-sqlite-rounds".into())
            .spawn(move || {
                let mut conn: Option<Open> = None;
                while let Ok(task) = rx.recv() {
                    match task {
                        Task::Round(work, reply) => {
                            let result = on(&mut conn, &path, |c| run(c, &locks, &rules, work));
                            let _ = reply.send(result);
                        }
                        Task::Submit(parts, store, reply) => {
                            let result = on(&mut conn, &path, |c| submit(c, &store, &parts));
                            let _ = reply.send((parts, result));
                        }
                    }
                }
            })
            .map_err(|e| db_err(format!("cannot start the SQLite round thread: {e}")))?;
        Ok(Rounds { tx })
    }

    /// Runs one round on the thread. The caller must hold the store's writer connection.
    pub(crate) async fn run(&self, work: Work) -> Result<Round> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Task::Round(work, reply))
            .map_err(|_| db_err("the SQLite round thread is gone"))?;
        rx.await
            .map_err(|_| db_err("the SQLite round thread stopped"))?
    }

    /// Runs a group commit's transaction on the thread, its new images going to `store`; hands
    /// the parts back with the answer. The caller must hold the store's writer connection.
    pub(crate) async fn submit(
        &self,
        parts: Vec<Part>,
        store: BlobStore,
    ) -> (Vec<Part>, Result<Submitted>) {
        let (reply, rx) = oneshot::channel();
        if let Err(std::sync::mpsc::SendError(task)) =
            self.tx.send(Task::Submit(parts, store, reply))
        {
            let Task::Submit(parts, ..) = task else {
                unreachable!("the task sent was a submission")
            };
            return (parts, Err(db_err("the SQLite round thread is gone")));
        }
        match rx.await {
            Ok(answer) => answer,
            // The thread ended with the parts (it cannot: it answers every task it takes).
            Err(_) => (Vec::new(), Err(db_err("the SQLite round thread stopped"))),
        }
    }
}

/// Runs `f` on the thread's connection, opened first if need be. Whatever failed (a full disk,
/// an I/O error, a panic), the next task starts on a clean connection.
fn on<T>(
    conn: &mut Option<Open>,
    path: &PathBuf,
    f: impl FnOnce(&mut Open) -> Result<T>,
) -> Result<T> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => conn.insert(open(path)?),
        };
        f(c)
    }))
    .unwrap_or_else(|_| Err(db_err("the SQLite round thread's task panicked")));
    if result.is_err() {
        *conn = None;
    }
    result
}

/// The round thread's connection, and the `synchronous` it has now.
struct Open {
    conn: Connection,
    /// The last `PRAGMA synchronous` run on `conn`, so that it runs again only when a
    /// transaction asks for another (rounds and uploads alternate; a batch of rounds or of
    /// uploads does not set it each time). The pragma takes effect when it is prepared, so it
    /// cannot be kept as a prepared statement instead.
    synchronous: &'static str,
}

/// The round thread's connection: the store's pragmas, statements kept prepared, and temporary
/// data in memory. The last is the statement journal of a multi-row write, which spilled to a
/// new file in the temporary directory at 64 KiB (about one file created, written, unlinked and
/// closed per upload's transaction), and the temporary tables of `RETURNING` and `ORDER BY`.
/// Here they are as small as a round's or a group commit's rows; the other connections keep the
/// default, so that a statement over the whole table (a prune, a migration) can still spill.
fn open(path: &PathBuf) -> Result<Open> {
    let conn = Connection::open(path).map_err(error)?;
    conn.execute_batch(crate::sqlite::PRAGMAS).map_err(error)?;
    conn.execute_batch("PRAGMA temp_store = MEMORY")
        .map_err(error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(Open {
        conn,
        synchronous: SYNCHRONOUS_FULL,
    })
}

/// Begins a write transaction (`BEGIN IMMEDIATE`, the write lock first) after `synchronous`
/// (the pragma that sets how durable its commit is); also the time, read once the lock is held.
fn begin<'c>(open: &'c mut Open, synchronous: &'static str) -> Result<(Transaction<'c>, i64)> {
    if open.synchronous != synchronous {
        open.conn.execute_batch(synchronous).map_err(error)?;
        open.synchronous = synchronous;
    }
    let tx = open
        .conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(error)?;
    Ok((tx, now_ms()))
}

/// One round in one transaction, events inserted, committed like every relaxed write
/// (`synchronous = NORMAL`: it survives a crash of the process).
fn run(conn: &mut Open, locks: &Locks, rules: &Rules, work: Work) -> Result<Round> {
    let (tx, now) = begin(conn, SYNCHRONOUS_NORMAL)?;
    let mut exec = Sqlite(&tx);
    let round = futures_executor::block_on(async {
        let mut round = round::run(&mut exec, locks, rules, work, now).await?;
        transition::insert_events(&mut exec, &mut round.events, now).await?;
        Ok::<_, StoreError>(round)
    })?;
    tx.commit().map_err(error)?;
    Ok(round)
}

/// A group commit's uploads in one transaction, events inserted, committed durably (fsync'd,
/// `synchronous = FULL`, as the sqlx path's durable writes); rolled back when an image must be
/// put into the object store first.
fn submit(conn: &mut Open, store: &BlobStore, parts: &[Part]) -> Result<Submitted> {
    let (tx, now) = begin(conn, SYNCHRONOUS_FULL)?;
    let mut exec = Sqlite(&tx);
    let mut events = Vec::new();
    let created = futures_executor::block_on(async {
        let stored = uploads::insert_all(&mut exec, &mut events, now, store, parts).await?;
        if !stored.puts.is_empty() {
            return Ok::<_, StoreError>(None);
        }
        transition::insert_events(&mut exec, &mut events, now).await?;
        Ok(Some(stored.created))
    })?;
    match created {
        Some(created) => {
            tx.commit().map_err(error)?;
            Ok(Submitted::Done(created, events))
        }
        None => {
            tx.rollback().map_err(error)?;
            Ok(Submitted::NeedsPuts)
        }
    }
}

/// A SQLite error as the store reports it (the same classes as sqlx's errors get, see
/// `StoreError::from`).
fn error(e: rusqlite::Error) -> StoreError {
    let class = match &e {
        // A foreign key refused the write (SQLITE_CONSTRAINT_FOREIGNKEY): a concurrent delete
        // of the row it refers to, as for sqlx's errors.
        rusqlite::Error::SqliteFailure(f, _) if f.extended_code == 787 => {
            return StoreError::Raced(e.to_string());
        }
        rusqlite::Error::SqliteFailure(f, _) => SqliteClass::of(f.extended_code),
        _ => SqliteClass::Other,
    };
    let converted = match class {
        SqliteClass::Full => StoreError::StorageFull(e.to_string()),
        SqliteClass::Unavailable => StoreError::Unavailable(e.to_string()),
        SqliteClass::Other => StoreError::Database(e.to_string()),
    };
    health::count_error(matches!(converted, StoreError::Unavailable(_)));
    converted
}

/// The round thread's connection inside its transaction.
struct Sqlite<'c>(&'c Connection);

impl Sqlite<'_> {
    /// The statement, prepared once and kept, with `args` bound to its parameters (`$1` is
    /// `args[0]`), which `sqlite_statement` numbers so that they bind by position.
    fn prepare(&self, sql: &str, args: &[Arg], blob: Option<&[u8]>) -> Result<CachedStatement<'_>> {
        let mut stmt = self
            .0
            .prepare_cached(&sqlite_statement(sql))
            .map_err(error)?;
        let count = stmt.parameter_count();
        if let Some(blob) = blob {
            stmt.raw_bind_parameter(count, blob).map_err(error)?;
        }
        for i in 1..=count - usize::from(blob.is_some()) {
            let arg = args
                .get(i - 1)
                .ok_or_else(|| db_err(format!("no value for parameter {i}")))?;
            match arg {
                Arg::Text(t) => stmt.raw_bind_parameter(i, t),
                Arg::Int(v) => stmt.raw_bind_parameter(i, v),
            }
            .map_err(error)?;
        }
        Ok(stmt)
    }
}

impl Exec for Sqlite<'_> {
    type Row = OwnedRow;

    async fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<OwnedRow>> {
        let mut stmt = self.prepare(sql, args, None)?;
        let names: Arc<[String]> = stmt.column_names().iter().map(|n| n.to_string()).collect();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(error)? {
            let values = (0..names.len())
                .map(|i| row.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(error)?;
            out.push(OwnedRow {
                names: names.clone(),
                values,
            });
        }
        Ok(out)
    }

    async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64> {
        let mut stmt = self.prepare(sql, args, None)?;
        Ok(stmt.raw_execute().map_err(error)? as u64)
    }

    async fn execute_blob(&mut self, sql: &str, args: &[Arg], blob: &[u8]) -> Result<u64> {
        let mut stmt = self.prepare(sql, args, Some(blob))?;
        Ok(stmt.raw_execute().map_err(error)? as u64)
    }
}

/// A result row read off the round thread's connection.
pub(crate) struct OwnedRow {
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl OwnedRow {
    fn value(&self, name: &str) -> Result<&Value> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.values[i])
            .ok_or_else(|| db_err(format!("no column {name}")))
    }
}

impl Columns for OwnedRow {
    fn opt_text(&self, name: &str) -> Result<Option<String>> {
        match self.value(name)? {
            Value::Null => Ok(None),
            Value::Text(t) => Ok(Some(t.clone())),
            other => Err(db_err(format!("column {name} is {other:?}, not text"))),
        }
    }

    fn opt_int(&self, name: &str) -> Result<Option<i64>> {
        match self.value(name)? {
            Value::Null => Ok(None),
            Value::Integer(i) => Ok(Some(*i)),
            other => Err(db_err(format!(
                "column {name} is {other:?}, not an integer"
            ))),
        }
    }

    fn opt_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.value(name)? {
            Value::Null => Ok(None),
            Value::Blob(b) => Ok(Some(b.clone())),
            other => Err(db_err(format!("column {name} is {other:?}, not a blob"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(open: &Open) -> i64 {
        open.conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap()
    }

    /// Each transaction commits as durably as it asks, whatever the one before it asked: the
    /// pragma is skipped only when the connection has that setting already.
    #[test]
    fn each_transaction_gets_the_synchronous_it_asks_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut open = open(&dir.path().join("t.db")).unwrap();
        // As `PRAGMAS` leave it: FULL (2).
        assert_eq!(synchronous(&open), 2);
        for (asked, level) in [
            (SYNCHRONOUS_NORMAL, 1),
            (SYNCHRONOUS_NORMAL, 1),
            (SYNCHRONOUS_FULL, 2),
            (SYNCHRONOUS_FULL, 2),
            (SYNCHRONOUS_NORMAL, 1),
        ] {
            let (tx, _) = begin(&mut open, asked).unwrap();
            tx.commit().unwrap();
            assert_eq!(
                synchronous(&open),
                level,
                "after a transaction that asked {asked}"
            );
        }
    }
}
