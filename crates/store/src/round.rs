//! A worker pool's round, written once (`Store::finish_and_claim`): in one write transaction,
//! store the outcomes the workers handed back (each fenced on its own lease, decided by the
//! policy), then claim due jobs for the idle workers under one fresh lease, taking their starts
//! from the global rate limit. It runs over [`Exec`]: through sqlx on either database
//! (`actions.rs`), and on SQLite on the round thread's own connection (`sqlite_round.rs`).
//! The events it records are returned, for the caller to insert at commit.

use crate::exec::{marks, select_jobs, Arg, Exec, Locks, QUEUED, RUNNING};
use crate::model::to_json;
use crate::rows::{job_from_row, window_starts, Columns, JOB_COLUMNS};
use crate::transition::{self, Change};
use crate::{Claim, ClaimBatch, Event, Job, Lease, Outcome, RateLimit, Result};
use imgclass_core::policy::{self, Count, Counters, Happened, Rules};
use imgclass_core::{JobId, JobResult, JobStatus};
use rand::Rng;
use std::collections::HashMap;
use std::time::Duration;

/// One round's work, as `Store::finish_and_claim` takes it.
pub(crate) struct Work {
    pub(crate) finishes: Vec<(Lease, Outcome)>,
    pub(crate) worker: String,
    pub(crate) limit: usize,
    pub(crate) lease: Duration,
    pub(crate) rate: Option<RateLimit>,
    /// Claim only jobs of these models (`None`: of any).
    pub(crate) models: Option<Vec<String>>,
}

/// What a round wrote: for each outcome the status it left its job in (`None`: fenced, nothing
/// written), the claims, and the events to insert at commit.
pub(crate) struct Round {
    pub(crate) stored: Vec<Option<JobStatus>>,
    pub(crate) batch: ClaimBatch,
    pub(crate) events: Vec<Event>,
}

/// Runs the round inside the transaction `e` is in, at `now`.
pub(crate) async fn run<E: Exec>(
    e: &mut E,
    locks: &Locks,
    rules: &Rules,
    work: Work,
    now: i64,
) -> Result<Round> {
    let Work {
        finishes,
        worker,
        limit,
        lease,
        rate,
        models,
    } = work;
    let mut events = Vec::new();
    // Every leased job of the round in one read (locked, in a stable order).
    let mut jobs = HashMap::with_capacity(finishes.len());
    if !finishes.is_empty() {
        let ids: Vec<Arg> = finishes
            .iter()
            .map(|(l, _)| Arg::text(l.job_id.to_string()))
            .collect();
        let sql =
            select_jobs(&format!("j.id IN ({}) ORDER BY j.seq", marks(ids.len()))) + locks.jobs;
        for row in e.fetch(&sql, &ids).await? {
            let job = job_from_row(&row)?;
            jobs.insert(job.id, job);
        }
    }
    // The outcomes of jobs still under the lease they were finished with, as the rules decide.
    let mut leased = Vec::with_capacity(finishes.len());
    let mut changes = Vec::with_capacity(finishes.len());
    for (lease, outcome) in finishes {
        let job = jobs.get(&lease.job_id).filter(|j| lease_holds(j, &lease));
        leased.push(job.is_some());
        if let Some(job) = job {
            changes.push(decide_outcome(rules, job, outcome, now)?);
        }
    }
    let mut written = transition::apply_all(e, changes, &mut events, now)
        .await?
        .into_iter();
    let stored = leased
        .into_iter()
        .map(|l| {
            if l {
                written.next().flatten().map(|j| j.status)
            } else {
                None
            }
        })
        .collect();
    let batch = if limit > 0 {
        let claiming = Claiming {
            worker: &worker,
            limit,
            lease,
            rate,
            models: models.as_deref(),
        };
        claim(e, locks, &mut events, claiming, now).await?
    } else {
        ClaimBatch::default()
    };
    Ok(Round {
        stored,
        batch,
        events,
    })
}

/// Whether `job` (as read in the round's transaction) is still running under `lease`.
pub(crate) fn lease_holds(job: &Job, lease: &Lease) -> bool {
    job.status == JobStatus::Running && job.lease_owner.as_deref() == Some(&lease.token)
}

/// What happened, as the rules see an attempt's outcome; and the result it carries.
fn happened(outcome: Outcome) -> (Happened, Option<JobResult>) {
    match outcome {
        Outcome::Succeeded(result) => (Happened::Succeeded, Some(result)),
        Outcome::Errored { error, retry_after } => (
            Happened::Errored {
                code: error.code,
                message: error.message,
                retry_after,
            },
            None,
        ),
        Outcome::ImageMissing => (Happened::ImageMissing, None),
        Outcome::Deferred { wait } => (Happened::Deferred { wait }, None),
    }
}

/// The change an outcome makes to its job, as the rules decide (with a fresh jitter for the
/// backoff).
fn decide_outcome<'a>(
    rules: &Rules,
    job: &'a Job,
    outcome: Outcome,
    now: i64,
) -> Result<Change<'a>> {
    let (happened, result) = happened(outcome);
    let jitter = rand::rng().random_range(0.5..=1.0);
    let decision = policy::decide(rules, job.counters(), happened, jitter)?;
    Ok(transition::change(job, &decision, result, now))
}

/// A counter's new value in SQL, as a claim's decision changes it.
fn count_sql(column: &str, count: Count) -> String {
    match count {
        Count::Keep => column.to_string(),
        Count::Add(n) => format!("{column} + {n}"),
        Count::Sub(n) => format!("CASE WHEN {column} > {n} THEN {column} - {n} ELSE 0 END"),
        Count::Reset => "0".to_string(),
    }
}

/// The rules' decision for a claim (it does not depend on the job's counters).
fn claim_decision() -> Result<policy::Decision> {
    let queued = Counters {
        status: JobStatus::Queued,
        run_attempts: 0,
        max_attempts: 0,
        stalls: 0,
    };
    Ok(policy::decide(
        &Rules::default(),
        queued,
        Happened::Claimed,
        1.0,
    )?)
}

/// What a round claims: up to `limit` due jobs (of `models` when named) for `worker`, under a
/// lease of `lease`, within the rate limit.
struct Claiming<'a> {
    worker: &'a str,
    limit: usize,
    lease: Duration,
    rate: Option<RateLimit>,
    models: Option<&'a [String]>,
}

/// Claims due jobs under one fresh lease token, taking their starts from the rate limit; writes
/// nothing when none is claimed.
async fn claim<E: Exec>(
    e: &mut E,
    locks: &Locks,
    events: &mut Vec<Event>,
    claiming: Claiming<'_>,
    now: i64,
) -> Result<ClaimBatch> {
    let Claiming {
        worker,
        limit,
        lease,
        rate,
        models,
    } = claiming;
    if models.is_some_and(|m| m.is_empty()) {
        // A node that serves no model takes nothing (and no start from the rate limit).
        return Ok(ClaimBatch::default());
    }
    let token = format!("{worker}/{}", uuid::Uuid::new_v4());
    let mut limit = limit as i64;
    let mut window = Vec::new();
    if let Some(rate) = rate {
        // The rate-limit row is read under the write lock (and row lock), so concurrent
        // claimers on any node take starts one after the other.
        let sql = format!(
            "SELECT starts FROM rate_limits WHERE name = 'global'{}",
            locks.row
        );
        let starts = match e.fetch(&sql, &[]).await?.first() {
            Some(row) => row.opt_text("starts")?,
            None => None,
        };
        window = window_starts(starts, now, rate)?;
        match rate_allows(&window, now, rate) {
            Ok(allowed) => limit = limit.min(allowed),
            Err(limited) => return Ok(limited),
        }
    }
    let d = claim_decision()?;
    let mut args = vec![
        Arg::text(d.to.as_str()),
        Arg::text(token.clone()),
        Arg::int(now + lease.as_millis() as i64),
        Arg::int(now),
        Arg::int(limit),
    ];
    // Only the models the worker holds, when it names them.
    let of_models = match models {
        Some(models) => {
            let first = args.len() + 1;
            args.extend(models.iter().map(Arg::text));
            let marks: Vec<String> = (first..first + models.len())
                .map(|i| format!("${i}"))
                .collect();
            format!(" AND j.model IN ({})", marks.join(", "))
        }
        None => String::new(),
    };
    // The statuses are literals, not parameters (see `exec::QUEUED`).
    let update = format!(
        "UPDATE jobs SET status = $1, attempts = {}, run_attempts = {}, stalls = {}, \
         lease_owner = $2, lease_until = $3, started_at = $4, updated_at = $4 \
         WHERE seq IN (SELECT j.seq FROM jobs j WHERE j.status = '{QUEUED}' AND j.run_at <= $4\
         {of_models} ORDER BY j.priority DESC, j.run_at, j.seq LIMIT $5{})",
        count_sql("attempts", d.attempts),
        count_sql("run_attempts", d.run_attempts),
        count_sql("stalls", d.stalls),
        locks.jobs_skip_locked,
    );
    // The claimed jobs, each with its image when it is small (one chunk), so that the worker
    // need not read it, and the name of the store that keeps it otherwise.
    let joined = |from: &str, inline_max: usize, more: &str| {
        format!(
            "SELECT {JOB_COLUMNS}, c.data AS inline_image, b.store AS image_store FROM {from} j \
             JOIN blobs b ON b.sha256 = j.image_sha256 \
             LEFT JOIN blob_chunks c ON c.sha256 = j.image_sha256 AND c.idx = 0 \
             AND b.size <= ${inline_max}{more} ORDER BY j.priority DESC, j.run_at, j.seq"
        )
    };
    let rows = if locks.update_feeds_select {
        // One statement: the claim's UPDATE feeds the SELECT of what it claimed.
        args.push(Arg::int(crate::INLINE_IMAGE_MAX as i64));
        let select = joined("claimed", args.len(), "");
        let sql = format!("WITH claimed AS ({update} RETURNING *) {select}");
        e.fetch(&sql, &args).await?
    } else {
        if e.execute(&update, &args).await? == 0 {
            return Ok(ClaimBatch::default());
        }
        // The lease token is new: it names exactly this batch.
        let sql = joined(
            "jobs",
            2,
            &format!(" WHERE j.status = '{RUNNING}' AND j.lease_owner = $1"),
        );
        let args = [
            Arg::text(token.clone()),
            Arg::int(crate::INLINE_IMAGE_MAX as i64),
        ];
        e.fetch(&sql, &args).await?
    };
    if rows.is_empty() {
        return Ok(ClaimBatch::default());
    }
    if rate.is_some() {
        window.extend(std::iter::repeat_n(now, rows.len()));
        let sql = "INSERT INTO rate_limits (name, starts) VALUES ('global', $1) \
                   ON CONFLICT (name) DO UPDATE SET starts = excluded.starts";
        e.execute(sql, &[Arg::text(to_json(&window)?)]).await?;
    }
    let mut claims = Vec::with_capacity(rows.len());
    for row in &rows {
        let job = job_from_row(row)?;
        let image = row.opt_blob("inline_image")?;
        let image_store = row.opt_text("image_store")?;
        let job_id: JobId = job.id;
        transition::record(e, events, job_id, d.event, Some(job.clone()), None, now).await?;
        // A claimed job handed to a worker, with its image if the claim carried it whole.
        let image = image
            .filter(|b| b.len() as u64 == job.image_size)
            .map(bytes::Bytes::from);
        claims.push(Claim {
            lease: Lease {
                job_id,
                token: token.clone(),
            },
            job,
            image,
            image_store,
        });
    }
    Ok(ClaimBatch {
        claims,
        rate_limited_for: None,
    })
}

/// How many jobs may start now under `rate`, given the window's starts (oldest first); or, when
/// none may, the claim's answer: nothing claimed, and how long to wait before one may start.
fn rate_allows(window: &[i64], now: i64, rate: RateLimit) -> std::result::Result<i64, ClaimBatch> {
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
