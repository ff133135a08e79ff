//! The statements of a worker pool's round (`Store::finish_and_claim`: store the outcomes
//! handed back, claim due jobs, record their events), written once for both ways of running
//! them: through sqlx on either database (`sql.rs`), and on SQLite by the thread that owns a
//! connection of its own and runs a whole round in one hand-off (`sqlite_round.rs`). Each
//! statement is a function of its row count giving its SQL, and a function giving its values
//! as [`Arg`]s, which either driver binds.

use crate::model::to_json;
use crate::rows::{db_err, ms_to_time};
use crate::sql::{finished, values_list, QUEUED, RUNNING};
use crate::{Claim, ClaimBatch, Event, Job, Lease, Outcome, RateLimit, Result};
use imgclass_core::{Action, EventKind, JobId, JobStatus};
use std::collections::HashMap;
use std::time::Duration;

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

/// The jobs of the round's finished leases, in a stable order; `lock` is the dialect's row
/// lock clause.
pub(crate) fn leased_jobs_sql(count: usize, lock: &str) -> String {
    let marks: Vec<String> = (1..=count).map(|i| format!("${i}")).collect();
    crate::sql::select_jobs(&format!("j.id IN ({}) ORDER BY j.seq", marks.join(", "))) + lock
}

/// Whether `job` (as read in the round's transaction) is still running under `lease`.
pub(crate) fn lease_holds(job: &Job, lease: &Lease) -> bool {
    job.status == JobStatus::Running && job.lease_owner.as_deref() == Some(&lease.token)
}

/// A change the round writes: the job as read, as it becomes, and the action between.
pub(crate) type Change<'a> = (&'a Job, Job, Action);

/// The outcomes whose lease still holds, as changes to write; and for each outcome, whether
/// its lease held (`false`: fenced, nothing is written).
pub(crate) fn plan_finishes(
    finishes: Vec<(Lease, Outcome)>,
    jobs: &HashMap<JobId, Job>,
    now: i64,
) -> Result<(Vec<bool>, Vec<Change<'_>>)> {
    let mut leased = Vec::with_capacity(finishes.len());
    let mut changes = Vec::with_capacity(finishes.len());
    for (lease, outcome) in finishes {
        let job = jobs.get(&lease.job_id).filter(|j| lease_holds(j, &lease));
        leased.push(job.is_some());
        if let Some(job) = job {
            let (next, action) = finished(job, outcome, now)?;
            changes.push((job, next, action));
        }
    }
    Ok((leased, changes))
}

/// Whether each outcome was stored: its lease held and its guarded `UPDATE` wrote the row.
pub(crate) fn stored(leased: Vec<bool>, written: Vec<Option<Job>>) -> Vec<bool> {
    let mut written = written.into_iter();
    leased
        .into_iter()
        .map(|l| l && written.next().flatten().is_some())
        .collect()
}

/// Rows per guarded `UPDATE` of [`apply_sql`].
pub(crate) const APPLY_ROWS: usize = 100;

/// Writes `rows` jobs as they become, each only if it is still in the state and under the
/// lease it was read with; returns the ids written. Values: [`apply_args`] per row.
pub(crate) fn apply_sql(rows: usize) -> String {
    let values = values_list(rows, 17);
    format!(
        "UPDATE jobs SET status = v.column2, attempts = v.column3, stalls = v.column4, \
         run_attempts = v.column5, run_at = v.column6, lease_owner = v.column7, \
         lease_until = v.column8, error_code = v.column9, error_message = v.column10, \
         attempt_errors = v.column11, result = v.column12, started_at = v.column13, \
         finished_at = v.column14, updated_at = v.column15 \
         FROM (VALUES {values}) AS v \
         WHERE jobs.id = v.column1 AND jobs.status = v.column16 \
         AND COALESCE(jobs.lease_owner, '') = v.column17 RETURNING id"
    )
}

/// One row of [`apply_sql`]: `job` as read becomes `next` at `now`.
pub(crate) fn apply_args(job: &Job, next: &Job, now: i64) -> Result<Vec<Arg>> {
    let error = next.error.as_ref();
    let ms = |t: chrono::DateTime<chrono::Utc>| t.timestamp_millis();
    Ok(vec![
        Arg::text(job.id.to_string()),
        Arg::text(next.status.as_str()),
        Arg::int(i64::from(next.attempts)),
        Arg::int(i64::from(next.stalls)),
        Arg::int(i64::from(next.run_attempts)),
        Arg::int(ms(next.run_at)),
        Arg::Text(next.lease_owner.clone()),
        Arg::Int(next.lease_until.map(ms)),
        Arg::Text(error.map(|e| e.code.as_str().to_string())),
        Arg::Text(error.map(|e| e.message.clone())),
        Arg::text(to_json(&next.attempt_errors)?),
        Arg::Text(next.result.as_ref().map(to_json).transpose()?),
        Arg::Int(next.started_at.map(ms)),
        Arg::Int(next.finished_at.map(ms)),
        Arg::int(now),
        Arg::text(job.status.as_str()),
        Arg::text(job.lease_owner.clone().unwrap_or_default()),
    ])
}

/// The rate-limit window's starts (`lock`: the dialect's row lock clause).
pub(crate) fn rate_read_sql(lock: &str) -> String {
    format!("SELECT starts FROM rate_limits WHERE name = 'global'{lock}")
}

/// Stores the rate-limit window's starts (`$1`, a JSON array).
pub(crate) const RATE_WRITE_SQL: &str = "INSERT INTO rate_limits (name, starts) \
     VALUES ('global', $1) ON CONFLICT (name) DO UPDATE SET starts = excluded.starts";

/// How many jobs may start now under `rate`, given the window's starts (oldest first); or, when
/// none may, the claim's answer: nothing claimed, and how long to wait before one may start.
pub(crate) fn rate_allows(
    window: &[i64],
    now: i64,
    rate: RateLimit,
) -> std::result::Result<i64, ClaimBatch> {
    let allowed = i64::from(rate.jobs) - window.len() as i64;
    if allowed > 0 {
        return Ok(allowed);
    }
    let oldest = window.first().copied().unwrap_or(now);
    // On PostgreSQL `now` is read before the row lock is had, so a claimer that waited for the
    // lock can find a start a little after its own `now`: the wait is never more than one
    // window.
    let per = rate.per.as_millis() as i64;
    let wait = (oldest + per - now).clamp(1, per.max(1));
    Err(ClaimBatch {
        claims: Vec::new(),
        rate_limited_for: Some(Duration::from_millis(wait as u64)),
    })
}

/// A fresh lease token for one claim batch of `worker`.
pub(crate) fn claim_token(worker: &str) -> String {
    format!("{worker}/{}", uuid::Uuid::new_v4())
}

/// Claims up to `$5` due jobs under the lease token `$2` until `$3`, at `$4`; `lock` is the
/// dialect's skip-locked clause. Values: [`claim_args`].
///
/// The statuses are literals, not parameters, wherever a partial index depends on them
/// (PostgreSQL's `jobs_ready`, `jobs_lease`): a generic plan of a prepared statement cannot
/// prove that `status = $n` matches the index's predicate and sorts the table.
pub(crate) fn claim_sql(lock: &str) -> String {
    format!(
        "UPDATE jobs SET status = $1, attempts = attempts + 1, run_attempts = run_attempts + 1, \
         lease_owner = $2, lease_until = $3, started_at = $4, updated_at = $4 \
         WHERE seq IN (SELECT j.seq FROM jobs j WHERE j.status = '{QUEUED}' AND j.run_at <= $4 \
         ORDER BY j.priority DESC, j.run_at, j.seq LIMIT $5{lock})"
    )
}

pub(crate) fn claim_args(token: &str, lease: Duration, now: i64, limit: i64) -> Result<Vec<Arg>> {
    Ok(vec![
        Arg::text(JobStatus::Queued.apply(Action::Claim)?.as_str()),
        Arg::text(token),
        Arg::int(now + lease.as_millis() as i64),
        Arg::int(now),
        Arg::int(limit),
    ])
}

/// The jobs a claim took (lease token `$1`) in queue order, each with its image when it is
/// small (at most `$2` bytes, one chunk), so that the worker need not read it.
pub(crate) fn claimed_sql() -> String {
    format!(
        "SELECT {}, c.data AS inline_image FROM jobs j \
         JOIN blobs b ON b.sha256 = j.image_sha256 \
         LEFT JOIN blob_chunks c ON c.sha256 = j.image_sha256 AND c.idx = 0 AND b.size <= $2 \
         WHERE j.status = '{RUNNING}' AND j.lease_owner = $1 \
         ORDER BY j.priority DESC, j.run_at, j.seq",
        crate::rows::JOB_COLUMNS
    )
}

pub(crate) fn claimed_args(token: &str) -> Vec<Arg> {
    vec![Arg::text(token), Arg::int(crate::INLINE_IMAGE_MAX as i64)]
}

/// A claimed job handed to a worker, with its image if the claim carried it whole (a blob of
/// one chunk); anything else is read by the worker.
pub(crate) fn claim_of(job: Job, image: Option<Vec<u8>>, token: &str) -> Claim {
    let image = image.filter(|b| b.len() as u64 == job.image_size);
    Claim {
        lease: Lease {
            job_id: job.id,
            token: token.to_string(),
        },
        job,
        image,
    }
}

/// An event of the transaction, numbered when the events are inserted at commit.
pub(crate) fn event(
    job_id: JobId,
    kind: EventKind,
    job: Option<Job>,
    owner: Option<String>,
    now: i64,
) -> Event {
    Event {
        seq: 0,
        job_id,
        kind,
        status: job.as_ref().map(|j| j.status),
        at: ms_to_time(now),
        job,
        owner,
    }
}

/// Rows per `INSERT` of [`events_sql`].
pub(crate) const EVENT_ROWS: usize = 400;

/// Inserts `rows` events, returning their `seq`s. Values: [`event_args`] per row.
pub(crate) fn events_sql(rows: usize) -> String {
    format!(
        "INSERT INTO events (job_id, kind, status, at, owner) VALUES {} RETURNING seq",
        values_list(rows, 5)
    )
}

pub(crate) fn event_args(e: &Event, now: i64) -> [Arg; 5] {
    [
        Arg::text(e.job_id.to_string()),
        Arg::text(e.kind.as_str()),
        Arg::Text(e.status.map(|s| s.as_str().to_string())),
        Arg::int(now),
        Arg::Text(e.owner.clone()),
    ]
}

/// Gives `events` the `seq`s an insert returned (drawn row by row, in the order of its VALUES
/// list).
pub(crate) fn number_events(events: &mut [Event], mut seqs: Vec<i64>) -> Result<()> {
    if seqs.len() != events.len() {
        return Err(db_err(format!(
            "inserting {} events returned {} ids",
            events.len(),
            seqs.len()
        )));
    }
    seqs.sort_unstable();
    for (e, seq) in events.iter_mut().zip(seqs) {
        e.seq = seq;
    }
    Ok(())
}
