//! What really differs between the databases, and nothing else: how a write transaction
//! begins and how durable its commit is, the row-lock clauses, how committed events reach
//! subscribers (in-process on SQLite, LISTEN/NOTIFY on PostgreSQL), reading into the stored
//! JSON, and migrations.

use crate::placeholders::Placeholders;
use crate::tx::Tx;
use crate::{Event, Result};
use async_trait::async_trait;
use sqlx::AnyPool;
use tokio::sync::broadcast;

/// How durable a write transaction's commit must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// What a client is told has happened (an accepted upload, a retry, a cancel, a delete):
    /// on disk before the answer.
    Durable,
    /// The workers' own transitions (claim, finish, release, rescue): they survive a crash of
    /// the process; an OS crash or power cut may lose the last ones, which only means a job
    /// runs again.
    Relaxed,
}

/// Which rows a SELECT locks until the transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// The jobs rows (table alias `j`) it reads, waiting for other writers.
    Jobs,
    /// The jobs rows it reads, skipping those another transaction holds.
    JobsSkipLocked,
    /// The single row of a one-table SELECT.
    Row,
    /// The rows of a one-table SELECT, skipping those another transaction holds.
    RowsSkipLocked,
}

#[async_trait]
pub(crate) trait Dialect: Send + Sync + 'static {
    /// The statement that opens a write transaction.
    fn begin(&self, durability: Durability) -> &'static str;

    /// How its driver takes the statements' numbered parameters.
    fn placeholders(&self) -> Placeholders {
        Placeholders::Dollar
    }

    /// The clause appended to a SELECT to take `lock` (empty where the database has no row
    /// locks because a write transaction already excludes every other writer).
    fn lock(&self, lock: Lock) -> &'static str;

    /// Whether an `UPDATE … RETURNING` can be the `WITH` of a SELECT that joins its rows
    /// (PostgreSQL's data-modifying `WITH`; SQLite's `RETURNING` ends its statement). Then a
    /// claim is one statement, one round trip, instead of an UPDATE and a SELECT.
    fn update_feeds_select(&self) -> bool {
        false
    }

    /// The SQL expression of a job's top label (its first prediction's `label`, read from the
    /// `result` JSON of the `jobs` row aliased `j`; NULL without a result).
    fn top_label(&self) -> &'static str;

    /// Runs in a transaction that recorded `events`, just before they are written and it
    /// commits.
    async fn announce(&self, tx: &mut Tx, events: &[Event]) -> Result<()>;

    /// Receives the events of a transaction once it has committed.
    fn committed(&self, events: Vec<Event>);

    /// Told after each claim (not held back by the rate limit) whether it found fewer due jobs
    /// than it asked for: the node's idle workers then wait for a wake-up from another node.
    fn claim_ended(&self, _short: bool) {}

    /// Every event, as it is committed by any node.
    fn subscribe(&self) -> broadcast::Receiver<Event>;

    async fn migrate(&self, pool: &AnyPool) -> Result<()>;
}
