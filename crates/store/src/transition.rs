//! How the store applies a decision of `imgclass_core::policy` to a job, written once for every
//! transition and both ways of running statements ([`Exec`]): the job as the decision leaves it
//! (`next_state`), the guarded `UPDATE` that writes it only if the row is still in the state and
//! under the lease it was read with (`apply_all`), and the event and webhook call recorded with
//! each change that was written (`record`, `insert_events`). Nothing here decides anything.

use crate::exec::{values_list, Arg, Exec};
use crate::model::to_json;
use crate::outbox;
use crate::rows::{db_err, ms_to_time};
use crate::{AttemptError, Event, Job, JobError, Result};
use imgclass_core::policy::{Decision, ErrorChange, Finish, ResultChange};
use imgclass_core::{EventKind, JobId, JobResult, JobStatus};
use std::collections::HashSet;

/// A change to write: the job as read, as it becomes, and the event that announces it.
pub(crate) struct Change<'a> {
    pub(crate) job: &'a Job,
    pub(crate) next: Job,
    pub(crate) event: EventKind,
}

/// `job` as `decision` leaves it at `now`; `result` is the ended attempt's result, stored when
/// the decision says so.
pub(crate) fn next_state(
    job: &Job,
    decision: &Decision,
    result: Option<JobResult>,
    now: i64,
) -> Job {
    let at = ms_to_time(now);
    let mut next = job.clone();
    next.status = decision.to;
    next.attempts = decision.attempts.apply(job.attempts);
    next.run_attempts = decision.run_attempts.apply(job.run_attempts);
    next.stalls = decision.stalls.apply(job.stalls);
    if let Some(run_in) = decision.run_in {
        next.run_at = ms_to_time(now + run_in.as_millis() as i64);
    }
    match &decision.error {
        ErrorChange::Keep => {}
        ErrorChange::Clear => next.error = None,
        ErrorChange::Record { code, message } => {
            next.attempt_errors.push(AttemptError {
                attempt: next.attempts,
                code: *code,
                message: message.clone(),
                at,
            });
            next.error = Some(JobError {
                code: *code,
                message: message.clone(),
            });
        }
    }
    match decision.result {
        ResultChange::Keep => {}
        ResultChange::Clear => next.result = None,
        ResultChange::Store => next.result = result,
    }
    match decision.finished {
        Finish::Keep => {}
        Finish::Now => next.finished_at = Some(at),
        Finish::Clear => next.finished_at = None,
    }
    if decision.started {
        next.started_at = Some(at);
    }
    if next.status != JobStatus::Running {
        next.lease_owner = None;
        next.lease_until = None;
    }
    next.updated_at = at;
    next
}

/// The change `decision` makes to `job` (as read in this transaction).
pub(crate) fn change<'a>(
    job: &'a Job,
    decision: &Decision,
    result: Option<JobResult>,
    now: i64,
) -> Change<'a> {
    Change {
        job,
        next: next_state(job, decision, result, now),
        event: decision.event,
    }
}

/// Rows per guarded `UPDATE` of [`apply_sql`].
const APPLY_ROWS: usize = 100;

/// Writes `rows` jobs as they become, each only if it is still in the state and under the
/// lease it was read with; returns the ids written. Values: [`apply_args`] per row.
fn apply_sql(rows: usize) -> String {
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
fn apply_args(job: &Job, next: &Job, now: i64) -> Result<Vec<Arg>> {
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

/// Writes each change, guarded by the state and lease its job was read with (one statement per
/// hundred jobs), and records the events of those written, in order. Returns each job as
/// written, or `None` where the guard did not match (someone else changed it first).
pub(crate) async fn apply_all<E: Exec>(
    e: &mut E,
    changes: Vec<Change<'_>>,
    events: &mut Vec<Event>,
    now: i64,
) -> Result<Vec<Option<Job>>> {
    let mut written = Vec::with_capacity(changes.len());
    for chunk in changes.chunks(APPLY_ROWS) {
        let mut args = Vec::with_capacity(chunk.len() * 17);
        for c in chunk {
            args.extend(apply_args(c.job, &c.next, now)?);
        }
        let mut changed = HashSet::with_capacity(chunk.len());
        for row in e.fetch(&apply_sql(chunk.len()), &args).await? {
            changed.insert(crate::rows::Columns::text(&row, "id")?);
        }
        for c in chunk {
            if changed.contains(&c.job.id.to_string()) {
                record(
                    e,
                    events,
                    c.job.id,
                    c.event,
                    Some(c.next.clone()),
                    None,
                    now,
                )
                .await?;
                written.push(Some(c.next.clone()));
            } else {
                written.push(None);
            }
        }
    }
    Ok(written)
}

/// Records an event of the transaction, numbered when the events are inserted at commit, and
/// puts its webhook call in the outbox in the same transaction. `owner` names the owner of a
/// job that is gone (a delete); otherwise it is the job's.
pub(crate) async fn record<E: Exec>(
    e: &mut E,
    events: &mut Vec<Event>,
    job_id: JobId,
    kind: EventKind,
    job: Option<Job>,
    owner: Option<String>,
    now: i64,
) -> Result<()> {
    if let Some(job) = &job {
        if let Some(args) = outbox::delivery_args(job, kind, now)? {
            e.execute(outbox::DELIVERY_INSERT_SQL, &args).await?;
        }
    }
    let owner = owner.or_else(|| job.as_ref().and_then(|j| j.owner.clone()));
    events.push(Event {
        seq: 0,
        job_id,
        kind,
        status: job.as_ref().map(|j| j.status),
        at: ms_to_time(now),
        job,
        owner,
    });
    Ok(())
}

/// Rows per `INSERT` of [`events_sql`].
const EVENT_ROWS: usize = 400;

/// Inserts `rows` events, returning their `seq`s. Values: [`event_args`] per row.
fn events_sql(rows: usize) -> String {
    format!(
        "INSERT INTO events (job_id, kind, status, at, owner) VALUES {} RETURNING seq",
        values_list(rows, 5)
    )
}

fn event_args(e: &Event, now: i64) -> [Arg; 5] {
    [
        Arg::text(e.job_id.to_string()),
        Arg::text(e.kind.as_str()),
        Arg::Text(e.status.map(|s| s.as_str().to_string())),
        Arg::int(now),
        Arg::Text(e.owner.clone()),
    ]
}

/// Inserts the events a transaction recorded, a few hundred rows per statement, and gives each
/// its `seq` (drawn row by row in the order of the `VALUES` list, so in the order recorded).
pub(crate) async fn insert_events<E: Exec>(
    e: &mut E,
    events: &mut [Event],
    now: i64,
) -> Result<()> {
    for chunk in events.chunks_mut(EVENT_ROWS) {
        let args: Vec<Arg> = chunk.iter().flat_map(|ev| event_args(ev, now)).collect();
        let mut seqs = Vec::with_capacity(chunk.len());
        for row in e.fetch(&events_sql(chunk.len()), &args).await? {
            seqs.push(crate::rows::Columns::int(&row, "seq")?);
        }
        if seqs.len() != chunk.len() {
            return Err(db_err(format!(
                "inserting {} events returned {} ids",
                chunk.len(),
                seqs.len()
            )));
        }
        seqs.sort_unstable();
        for (ev, seq) in chunk.iter_mut().zip(seqs) {
            ev.seq = seq;
        }
    }
    Ok(())
}
