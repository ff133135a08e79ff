//! SQLite's pool round on a thread of its own. sqlx runs each statement as a separate hand-off
//! to its connection's thread, so a round of a worker pool (`Store::finish_and_claim`: read the
//! finished jobs, write their outcomes, claim, read the claimed jobs, insert the events, with
//! BEGIN and COMMIT around them) cost seven hand-offs, each a thread wake-up, often on the
//! other core. Here one thread owns a connection of its own to the same file and runs the whole
//! round, so a round is one hand-off there and one back.
//!
//! The statements are those of `round.rs`, the same that the sqlx path runs. The caller holds
//! the store's writer connection while a round runs, so the round is still the only writer of
//! the process (SQLite has one writer at a time), and publishes the round's events before
//! letting go of it, as `SqlStore::commit` does.

use crate::health;
use crate::model::to_json;
use crate::round::{self, Arg};
use crate::rows::{db_err, job_from_row, now_ms, window_starts};
use crate::SqliteClass;
use crate::{ClaimBatch, Event, Job, Lease, Outcome, RateLimit, Result, StoreError};
use imgclass_core::EventKind;
use rusqlite::{CachedStatement, Connection, OptionalExtension, TransactionBehavior};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

/// What a round wrote: for each outcome whether it was stored, the claims, and the events to
/// publish (numbered).
pub(crate) struct Round {
    pub(crate) stored: Vec<bool>,
    pub(crate) batch: ClaimBatch,
    pub(crate) events: Vec<Event>,
}

/// One round's work, as `Store::finish_and_claim` takes it.
pub(crate) struct Work {
    pub(crate) finishes: Vec<(Lease, Outcome)>,
    pub(crate) worker: String,
    pub(crate) limit: usize,
    pub(crate) lease: Duration,
    pub(crate) rate: Option<RateLimit>,
}

type Request = (Work, oneshot::Sender<Result<Round>>);

/// The round thread; it ends when this is dropped.
pub(crate) struct Rounds {
    tx: std::sync::mpsc::Sender<Request>,
}

impl Rounds {
    /// Starts the thread; its connection to the database file at `path` is opened at the first
    /// round (after migrations), and opened afresh after any failed round.
    pub(crate) fn start(path: PathBuf) -> Result<Rounds> {
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("imgclass-sqlite-rounds".into())
            .spawn(move || {
                let mut conn: Option<Connection> = None;
                while let Ok((work, reply)) = rx.recv() {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => conn.insert(open(&path)?),
                        };
                        run(c, work)
                    }))
                    .unwrap_or_else(|_| Err(db_err("the SQLite round panicked")));
                    if result.is_err() {
                        // Whatever failed (a full disk, an I/O error), the next round starts on
                        // a clean connection.
                        conn = None;
                    }
                    let _ = reply.send(result);
                }
            })
            .map_err(|e| db_err(format!("cannot start the SQLite round thread: {e}")))?;
        Ok(Rounds { tx })
    }

    /// Runs one round on the thread. The caller must hold the store's writer connection.
    pub(crate) async fn run(&self, work: Work) -> Result<Round> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((work, reply))
            .map_err(|_| db_err("the SQLite round thread is gone"))?;
        rx.await
            .map_err(|_| db_err("the SQLite round thread stopped"))?
    }
}

/// The round thread's connection: the store's pragmas, rounds committed like every relaxed
/// write (`synchronous = NORMAL`: they survive a crash of the process), statements kept
/// prepared.
fn open(path: &PathBuf) -> Result<Connection> {
    let conn = Connection::open(path).map_err(error)?;
    conn.execute_batch(crate::sqlite::PRAGMAS).map_err(error)?;
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .map_err(error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// A SQLite error as the store reports it (the same classes as sqlx's errors get, see
/// `StoreError::from`).
pub(crate) fn error(e: rusqlite::Error) -> StoreError {
    let class = match &e {
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

/// Binds `args` to the statement's numbered parameters (`$1` is `args[0]`; SQLite numbers named
/// parameters by first appearance, so they are matched by name).
fn bind(stmt: &mut CachedStatement<'_>, args: &[Arg]) -> Result<()> {
    for i in 1..=stmt.parameter_count() {
        let arg = stmt
            .parameter_name(i)
            .and_then(|n| n.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| args.get(n.checked_sub(1)?))
            .ok_or_else(|| db_err(format!("no value for parameter {i}")))?;
        match arg {
            Arg::Text(t) => stmt.raw_bind_parameter(i, t),
            Arg::Int(v) => stmt.raw_bind_parameter(i, v),
        }
        .map_err(error)?;
    }
    Ok(())
}

/// Runs `sql` with `args`, each result row through `each`.
fn query(
    tx: &Connection,
    sql: &str,
    args: &[Arg],
    mut each: impl FnMut(&rusqlite::Row<'_>) -> Result<()>,
) -> Result<()> {
    let mut stmt = tx.prepare_cached(sql).map_err(error)?;
    bind(&mut stmt, args)?;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(error)? {
        each(row)?;
    }
    Ok(())
}

/// Runs `sql` with `args`; the number of rows it changed.
fn execute(tx: &Connection, sql: &str, args: &[Arg]) -> Result<usize> {
    let mut stmt = tx.prepare_cached(sql).map_err(error)?;
    bind(&mut stmt, args)?;
    stmt.raw_execute().map_err(error)
}

/// Records an event of the round, with its webhook call in the outbox.
fn record(
    tx: &Connection,
    events: &mut Vec<Event>,
    job: Job,
    kind: EventKind,
    now: i64,
) -> Result<()> {
    if let Some(args) = crate::webhooks::delivery_args(&job, kind, now)? {
        execute(tx, crate::webhooks::DELIVERY_INSERT_SQL, &args)?;
    }
    let owner = job.owner.clone();
    events.push(round::event(job.id, kind, Some(job), owner, now));
    Ok(())
}

/// One round in one transaction: the same steps as `SqlStore::finish_and_claim`.
fn run(conn: &mut Connection, work: Work) -> Result<Round> {
    let Work {
        finishes,
        worker,
        limit,
        lease,
        rate,
    } = work;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(error)?;
    let now = now_ms();
    let mut events = Vec::new();
    let mut jobs = HashMap::with_capacity(finishes.len());
    if !finishes.is_empty() {
        let ids: Vec<Arg> = finishes
            .iter()
            .map(|(l, _)| Arg::text(l.job_id.to_string()))
            .collect();
        query(&tx, &round::leased_jobs_sql(ids.len(), ""), &ids, |row| {
            let job = job_from_row(row)?;
            jobs.insert(job.id, job);
            Ok(())
        })?;
    }
    let (leased, changes) = round::plan_finishes(finishes, &jobs, now)?;
    let mut written = Vec::with_capacity(changes.len());
    for chunk in changes.chunks(round::APPLY_ROWS) {
        let mut args = Vec::with_capacity(chunk.len() * 17);
        for (job, next, _) in chunk {
            args.extend(round::apply_args(job, next, now)?);
        }
        let mut changed = HashSet::new();
        query(&tx, &round::apply_sql(chunk.len()), &args, |row| {
            changed.insert(row.get::<_, String>(0).map_err(error)?);
            Ok(())
        })?;
        for (job, next, action) in chunk {
            if changed.contains(&job.id.to_string()) {
                record(&tx, &mut events, next.clone(), action.event(), now)?;
                written.push(Some(next.clone()));
            } else {
                written.push(None);
            }
        }
    }
    let stored = round::stored(leased, written);
    let batch = if limit > 0 {
        claim(&tx, &mut events, &worker, limit, lease, rate, now)?
    } else {
        ClaimBatch::default()
    };
    for chunk in events.chunks_mut(round::EVENT_ROWS) {
        let args: Vec<Arg> = chunk
            .iter()
            .flat_map(|e| round::event_args(e, now))
            .collect();
        let mut seqs = Vec::with_capacity(chunk.len());
        query(&tx, &round::events_sql(chunk.len()), &args, |row| {
            seqs.push(row.get::<_, i64>(0).map_err(error)?);
            Ok(())
        })?;
        round::number_events(chunk, seqs)?;
    }
    tx.commit().map_err(error)?;
    Ok(Round {
        stored,
        batch,
        events,
    })
}

/// Claims up to `limit` due jobs under one fresh lease token, as `SqlStore::claim_in` does.
fn claim(
    tx: &Connection,
    events: &mut Vec<Event>,
    worker: &str,
    limit: usize,
    lease: Duration,
    rate: Option<RateLimit>,
    now: i64,
) -> Result<ClaimBatch> {
    let token = round::claim_token(worker);
    let mut limit = limit as i64;
    let mut window = Vec::new();
    if let Some(rate) = rate {
        let starts: Option<String> = tx
            .query_row(&round::rate_read_sql(""), [], |r| r.get(0))
            .optional()
            .map_err(error)?;
        window = window_starts(starts, now, rate)?;
        match round::rate_allows(&window, now, rate) {
            Ok(allowed) => limit = limit.min(allowed),
            Err(limited) => return Ok(limited),
        }
    }
    let claimed = execute(
        tx,
        &round::claim_sql(""),
        &round::claim_args(&token, lease, now, limit)?,
    )?;
    if claimed == 0 {
        return Ok(ClaimBatch::default());
    }
    if rate.is_some() {
        window.extend(std::iter::repeat_n(now, claimed));
        execute(tx, round::RATE_WRITE_SQL, &[Arg::text(to_json(&window)?)])?;
    }
    let mut claimed_jobs = Vec::with_capacity(claimed);
    query(
        tx,
        &round::claimed_sql(),
        &round::claimed_args(&token),
        |row| {
            let image: Option<Vec<u8>> = row.get("inline_image").map_err(error)?;
            claimed_jobs.push((job_from_row(row)?, image));
            Ok(())
        },
    )?;
    let mut claims = Vec::with_capacity(claimed_jobs.len());
    for (job, image) in claimed_jobs {
        record(tx, events, job.clone(), EventKind::Running, now)?;
        claims.push(round::claim_of(job, image, &token));
    }
    Ok(ClaimBatch {
        claims,
        rate_limited_for: None,
    })
}
