//! How the store's shared statements are run: [`Exec`], a connection inside a write
//! transaction that runs a statement with its values and gives back its rows, implemented by an
//! sqlx transaction ([`Tx`], either database) and by the SQLite round thread's own connection.
//! The worker round and every job transition are written once over it. Also the pieces every
//! statement builder uses: typed values ([`Arg`]), `VALUES` lists, the whole-job `SELECT`, and
//! the statuses written into SQL as literals.

use crate::dialect::{Dialect, Lock};
use crate::rows::{db_err, Columns, JOB_COLUMNS};
use crate::tx::Tx;
use crate::Result;
use imgclass_core::JobStatus;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::Arguments;

/// A value bound to a statement built at run time, typed even when NULL (PostgreSQL needs the
/// type of every parameter).
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Arg {
    pub(crate) fn text(s: impl Into<String>) -> Arg {
        Arg::Text(Some(s.into()))
    }

    pub(crate) fn int(i: i64) -> Arg {
        Arg::Int(Some(i))
    }
}

/// A connection inside a write transaction. `$1` is `args[0]`.
pub(crate) trait Exec {
    type Row: Columns;

    /// Runs `sql`; its result rows.
    async fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<Self::Row>>;

    /// Runs `sql`; how many rows it changed.
    async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64>;

    /// Runs `sql` with `args` and then `blob` as its last parameter (bound without a copy of
    /// its bytes); how many rows it changed.
    async fn execute_blob(&mut self, sql: &str, args: &[Arg], blob: &[u8]) -> Result<u64>;
}

impl Exec for Tx {
    type Row = AnyRow;

    async fn fetch(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<AnyRow>> {
        let sql = self.placeholders.statement(sql);
        Ok(sqlx::query_with(&sql, any_args(args)?)
            .fetch_all(&mut **self)
            .await?)
    }

    async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64> {
        self.execute_values(sql, any_args(args)?).await
    }

    async fn execute_blob(&mut self, sql: &str, args: &[Arg], blob: &[u8]) -> Result<u64> {
        let mut values = any_args(args)?;
        values
            .add(blob)
            .map_err(|e| db_err(format!("cannot bind a value: {e}")))?;
        self.execute_values(sql, values).await
    }
}

impl Tx {
    /// Runs `sql` with its values bound; how many rows it changed.
    async fn execute_values(&mut self, sql: &str, values: AnyArguments<'_>) -> Result<u64> {
        let sql = self.placeholders.statement(sql);
        Ok(sqlx::query_with(&sql, values)
            .execute(&mut **self)
            .await?
            .rows_affected())
    }
}

/// The values of a statement built at run time, for sqlx.
pub(crate) fn any_args(args: &[Arg]) -> Result<AnyArguments<'_>> {
    let mut out = AnyArguments::default();
    for a in args {
        match a {
            Arg::Text(t) => out.add(t.as_deref()),
            Arg::Int(i) => out.add(*i),
        }
        .map_err(|e| db_err(format!("cannot bind a value: {e}")))?;
    }
    Ok(out)
}

/// The row-lock clauses the shared statements append, as the database names them, and what
/// else of the dialect the worker round needs to write its statements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Locks {
    /// The jobs rows (alias `j`) a SELECT reads, waiting for other writers.
    pub(crate) jobs: &'static str,
    /// The jobs rows it reads, skipping those another transaction holds.
    pub(crate) jobs_skip_locked: &'static str,
    /// The single row of a one-table SELECT.
    pub(crate) row: &'static str,
    /// Whether an `UPDATE … RETURNING` can be the `WITH` of a SELECT that joins its rows (see
    /// [`Dialect::update_feeds_select`]).
    pub(crate) update_feeds_select: bool,
}

impl Locks {
    pub(crate) fn of(dialect: &dyn Dialect) -> Locks {
        Locks {
            jobs: dialect.lock(Lock::Jobs),
            jobs_skip_locked: dialect.lock(Lock::JobsSkipLocked),
            row: dialect.lock(Lock::Row),
            update_feeds_select: dialect.update_feeds_select(),
        }
    }
}

/// The placeholders of a multi-row `VALUES` list: `rows` tuples of `columns` numbered
/// parameters, `($1, $2), ($3, $4)`. Written into one string: a round's lists hold hundreds of
/// parameters, and a string for each (then joined) cost its thread more than some statements.
pub(crate) fn values_list(rows: usize, columns: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 6 + rows * 4);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        push_marks(&mut out, r * columns + 1..=(r + 1) * columns);
        out.push(')');
    }
    out
}

/// `$1, $2, ... $count`.
pub(crate) fn marks(count: usize) -> String {
    let mut out = String::with_capacity(count * 6);
    push_marks(&mut out, 1..=count);
    out
}

/// Appends `$a, $a+1, ... $b` to `out`.
fn push_marks(out: &mut String, numbers: std::ops::RangeInclusive<usize>) {
    use std::fmt::Write;
    let first = *numbers.start();
    for n in numbers {
        if n > first {
            out.push_str(", ");
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "${n}");
    }
}

/// The SELECT of whole jobs, followed by the given condition.
pub(crate) fn select_jobs(condition: &str) -> String {
    format!("SELECT {JOB_COLUMNS} FROM jobs j JOIN blobs b ON b.sha256 = j.image_sha256 WHERE {condition}")
}

/// Statuses written into SQL as literals wherever a PostgreSQL partial index depends on them
/// (`jobs_ready`, `jobs_lease`): a generic plan of a prepared statement cannot prove that
/// `status = $n` matches the index's predicate and sorts the table.
pub(crate) const QUEUED: &str = JobStatus::Queued.as_str();
pub(crate) const RUNNING: &str = JobStatus::Running.as_str();

#[cfg(test)]
mod tests {
    use super::{marks, values_list};

    #[test]
    fn placeholder_lists_number_their_parameters_in_order() {
        assert_eq!(marks(0), "");
        assert_eq!(marks(3), "$1, $2, $3");
        assert_eq!(values_list(1, 1), "($1)");
        assert_eq!(values_list(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_list(0, 4), "");
    }
}
