//! The transitions of jobs: a worker pool's round (on SQLite on the round thread, elsewhere
//! through sqlx: the same `round::run`), a worker giving a job back, renewing a lease, a
//! person's retry or cancel, and the sweep of expired leases. Each reads the job (locked where
//! the database has row locks), asks `imgclass_core::policy` with the store's rules, and writes
//! the decision through `transition`.

use crate::dialect::Durability;
use crate::exec::{select_jobs, RUNNING};
use crate::round::{self, Work};
use crate::rows::{db_err, job_from_row, now_ms};
use crate::sql::SqlStore;
use crate::sqlite_round::Rounds;
use crate::transition;
use crate::tx::Write;
use crate::{ClaimBatch, Job, Lease, Outcome, RateLimit, Result, RetryFilter, StoreError};
use imgclass_core::policy::{self, Happened};
use imgclass_core::{JobId, JobStatus};
use std::time::Duration;

impl SqlStore {
    /// A worker pool's round in one transaction (`Store::finish_and_claim`).
    pub(crate) async fn round(
        &self,
        finishes: Vec<(Lease, Outcome)>,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
        models: Option<Vec<String>>,
    ) -> Result<(Vec<Option<JobStatus>>, ClaimBatch)> {
        let work = Work {
            finishes,
            worker: worker.to_string(),
            limit,
            lease,
            rate,
            models,
        };
        if limit > 0 {
            self.recent.claiming();
        }
        let (stored, mut batch) = match &self.rounds {
            Some(rounds) => self.round_on(rounds, work).await?,
            None => {
                let mut w = self.begin(Durability::Relaxed).await?;
                let round = round::run(&mut w.tx, &self.locks(), &self.rules, work, w.now).await?;
                w.events.extend(round.events);
                self.commit(w).await?;
                (round.stored, round.batch)
            }
        };
        // An image uploaded here comes with its claim, unless the claim carries it already.
        for claim in &mut batch.claims {
            let kept = self.recent.take(&claim.job.image_sha256);
            if claim.image.is_none() {
                claim.image = kept.filter(|b| b.len() as u64 == claim.job.image_size);
            }
        }
        if limit > 0 && batch.rate_limited_for.is_none() {
            self.dialect.claim_ended(batch.claims.len() < limit);
        }
        Ok((stored, batch))
    }

    /// The round on SQLite's round thread. The writer connection is held meanwhile: the round
    /// is the process's one writer, and its events are published before the next write begins.
    async fn round_on(
        &self,
        rounds: &Rounds,
        work: Work,
    ) -> Result<(Vec<Option<JobStatus>>, ClaimBatch)> {
        let _writer = self.writer.acquire().await?;
        self.storage.check_writable()?;
        let round = rounds.run(work).await;
        self.settle(round.map(|r| ((r.stored, r.batch), r.events)))
    }

    /// Reads a job inside a write transaction, locked against other writers until it ends.
    pub(crate) async fn locked_job(&self, w: &mut Write, id: JobId) -> Result<Option<Job>> {
        let sql = select_jobs("j.id = $1") + self.locks().jobs;
        sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *w.tx)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    /// Asks the rules what follows `happened` for `job` (as read in `w`) and writes it, guarded
    /// by the state and lease the job was read with; the job as written, or `None` when the
    /// guard did not match (someone else changed it first).
    pub(crate) async fn decide_and_apply(
        &self,
        w: &mut Write,
        job: &Job,
        happened: Happened,
    ) -> Result<Option<Job>> {
        let decision = policy::decide(&self.rules, job.counters(), happened, 1.0)?;
        let change = transition::change(job, &decision, None, w.now);
        let mut written =
            transition::apply_all(&mut w.tx, vec![change], &mut w.events, w.now).await?;
        Ok(written.pop().flatten())
    }

    /// A person's action on one job: the rules decide from the job's current state.
    pub(crate) async fn act(&self, id: JobId, happened: Happened) -> Result<Job> {
        for _ in 0..5 {
            let mut w = self.begin(Durability::Durable).await?;
            let job = self
                .locked_job(&mut w, id)
                .await?
                .ok_or(StoreError::NotFound)?;
            let Some(next) = self
                .decide_and_apply(&mut w, &job, happened.clone())
                .await?
            else {
                // Changed between the read and the write (only possible without row locks):
                // look again.
                w.tx.rollback().await?;
                continue;
            };
            self.commit(w).await?;
            return Ok(next);
        }
        Err(db_err(format!(
            "job {id} kept changing under a {happened:?}"
        )))
    }

    /// Gives a claimed job back to the queue (`Store::release`); false when fenced.
    pub(crate) async fn release(&self, lease: &Lease) -> Result<bool> {
        let mut w = self.begin(Durability::Relaxed).await?;
        let job = self
            .locked_job(&mut w, lease.job_id)
            .await?
            .filter(|j| round::lease_holds(j, lease));
        let released = match job {
            Some(job) => self
                .decide_and_apply(&mut w, &job, Happened::Released)
                .await?
                .is_some(),
            None => false,
        };
        if released {
            self.commit(w).await?;
        } else {
            w.tx.rollback().await?;
        }
        Ok(released)
    }

    /// Extends a lease (`Store::heartbeat`); false when fenced.
    pub(crate) async fn heartbeat(&self, lease: &Lease, duration: Duration) -> Result<bool> {
        let until = now_ms() + duration.as_millis() as i64;
        let n = sqlx::query(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND status = $3 AND lease_owner = $4",
        )
        .bind(until)
        .bind(lease.job_id.to_string())
        .bind(JobStatus::Running.as_str())
        .bind(&lease.token)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Requeues or fails the running jobs whose lease expired (`Store::rescue_expired`).
    pub(crate) async fn rescue_expired(&self) -> Result<u64> {
        let mut w = self.begin(Durability::Relaxed).await?;
        let sql = select_jobs(&format!(
            "j.status = '{RUNNING}' AND j.lease_until < $1 ORDER BY j.seq"
        )) + self.locks().jobs_skip_locked;
        let rows = sqlx::query(&sql).bind(w.now).fetch_all(&mut *w.tx).await?;
        let mut touched = 0;
        for row in &rows {
            let job = job_from_row(row)?;
            let applied = self
                .decide_and_apply(&mut w, &job, Happened::LeaseExpired)
                .await?;
            touched += u64::from(applied.is_some());
        }
        self.commit(w).await?;
        Ok(touched)
    }

    /// Puts every failed job matching the filter back in the queue (`Store::retry_failed`).
    pub(crate) async fn retry_failed(&self, filter: &RetryFilter) -> Result<Vec<Job>> {
        let mut w = self.begin(Durability::Durable).await?;
        let sql = select_jobs(
            "j.status = $1 AND ($2 IS NULL OR j.error_code = $2) AND ($3 IS NULL OR j.owner = $3) \
             ORDER BY j.seq",
        ) + self.locks().jobs;
        let rows = sqlx::query(&sql)
            .bind(JobStatus::Failed.as_str())
            .bind(filter.error_code.map(|c| c.as_str()))
            .bind(filter.owner.as_deref())
            .fetch_all(&mut *w.tx)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            if let Some(next) = self
                .decide_and_apply(&mut w, &job, Happened::RetryRequested)
                .await?
            {
                jobs.push(next);
            }
        }
        self.commit(w).await?;
        Ok(jobs)
    }
}
