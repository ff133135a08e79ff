//! Submission: the group commit (the uploads that wait at one moment stored in one transaction
//! with one fsync), new jobs as the policy creates them (queued, or answered from the result
//! cache), their images stored once per SHA-256 in chunks, and jobs imported from another
//! installation.

use crate::dialect::Durability;
use crate::exec::{values_list, Arg, Exec};
use crate::model::to_json;
use crate::rows::{db_err, ms, ms_to_time, Columns};
use crate::sql::{SqlStore, Submission};
use crate::tombstones::Blob;
use crate::transition::record;
use crate::tx::Write;
use crate::{Job, KeyHold, NewJob, Result, StoreError, CHUNK_SIZE};
use bytes::Bytes;
use imgclass_core::policy;
use imgclass_core::{JobId, JobStatus};
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

/// One request's part of a transaction: its jobs, the key they complete, and the images it
/// did not put into the object store because they were recorded already (`put_images`).
type Request<'a> = (&'a [NewJob], Option<&'a KeyHold>, &'a HashSet<String>);

impl Submission {
    fn request(&self) -> Request<'_> {
        (&self.jobs, self.key.as_ref(), &self.unput)
    }

    fn bytes(&self) -> usize {
        self.jobs.iter().map(|j| j.image.len()).sum()
    }
}

/// At most this many jobs, and about this many image bytes, share one commit.
const GROUP_MAX_JOBS: usize = 512;
const GROUP_MAX_BYTES: usize = 64 << 20;

/// The group commit: takes whatever uploads are waiting (at once, never waiting for more), stores
/// them in one transaction with one fsync, and answers each once it is committed. If that
/// transaction fails, each request is tried alone, so that one bad request cannot fail the others
/// and a failure that is everyone's (a full disk, a lost connection) answers each with its error;
/// either way nothing of a failed transaction is stored.
async fn group_commit(store: SqlStore, mut queue: mpsc::Receiver<Submission>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = first.jobs.len();
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while jobs < GROUP_MAX_JOBS && bytes < GROUP_MAX_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            jobs += next.jobs.len();
            bytes += next.bytes();
            batch.push(next);
        }
        if batch.len() > 1 {
            let requests: Vec<Request> = batch.iter().map(Submission::request).collect();
            if let Ok(created) = store.insert_jobs(&requests).await {
                for (submission, jobs) in batch.into_iter().zip(created) {
                    let _ = submission.reply.send(Ok(jobs));
                }
                continue;
            }
        }
        for submission in batch {
            let result = store
                .insert_jobs(&[submission.request()])
                .await
                .map(|mut c| c.remove(0));
            let _ = submission.reply.send(result);
        }
    }
}

/// Starts the group commit of `store` (on the current tokio runtime); the store handle it
/// returns hands its uploads to it. The committer ends when the last such handle is dropped.
pub(crate) fn start(mut store: SqlStore) -> SqlStore {
    let (submit, queue) = mpsc::channel(1024);
    tokio::spawn(group_commit(store.clone(), queue));
    store.submissions = Some(submit);
    store
}

impl SqlStore {
    /// Hands the jobs to the group commit and waits for its answer (`Store::create_jobs_keyed`).
    pub(crate) async fn create_jobs_keyed(
        &self,
        jobs: Vec<NewJob>,
        key: Option<KeyHold>,
    ) -> Result<Vec<Job>> {
        // The images are in their object store before any row names them.
        let (jobs, unput) = self.put_images(jobs).await?;
        let Some(submit) = &self.submissions else {
            let request = (&jobs[..], key.as_ref(), &unput);
            return Ok(self.insert_jobs(&[request]).await?.remove(0));
        };
        let stopped = || StoreError::Unavailable("the store is shutting down".into());
        let (reply, answer) = oneshot::channel();
        submit
            .send(Submission {
                jobs,
                key,
                unput,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stores each request's images and jobs and completes its idempotency key, all in one
    /// transaction and a few statements for the whole group; the jobs of each request come
    /// back in its order.
    pub(crate) async fn insert_jobs(&self, requests: &[Request<'_>]) -> Result<Vec<Vec<Job>>> {
        match self.insert_jobs_once(requests).await {
            // The collector deleted an image's row between our insert (which found it there)
            // and our job's: tried again, the image is recorded anew.
            Err(StoreError::Raced(_)) => self.insert_jobs_once(requests).await,
            done => done,
        }
    }

    async fn insert_jobs_once(&self, requests: &[Request<'_>]) -> Result<Vec<Vec<Job>>> {
        let mut w = self.begin(Durability::Durable).await?;
        let all: Vec<&NewJob> = requests.iter().flat_map(|(jobs, ..)| jobs.iter()).collect();
        let blobs: Vec<Blob> = all.iter().map(|j| Blob::of(j)).collect();
        let unput: HashSet<&str> = requests
            .iter()
            .flat_map(|(.., unput)| unput.iter().map(String::as_str))
            .collect();
        self.insert_blobs(&mut w, &blobs, &unput).await?;
        let mut jobs = Self::insert_job_rows(&mut w, &all).await?.into_iter();
        let mut created = Vec::with_capacity(requests.len());
        for (mine, key, _) in requests {
            let mine: Vec<Job> = jobs.by_ref().take(mine.len()).collect();
            for job in &mine {
                // A job answered from the cache is still announced as a success, like any job
                // that finishes.
                for kind in policy::create(job.cached).events {
                    let (id, job) = (job.id, Some(job.clone()));
                    record(&mut w.tx, &mut w.events, id, *kind, job, None, w.now).await?;
                }
            }
            if let Some(hold) = key {
                let ids: Vec<JobId> = mine.iter().map(|j| j.id).collect();
                crate::idempotency::complete(&mut w, hold, &ids).await?;
            }
            created.push(mine);
        }
        self.commit(w).await?;
        Ok(created)
    }

    /// Inserts the rows of new jobs (a few hundred per statement) and returns them as stored, in
    /// order. A job answered from the result cache is created finished, with the earlier result.
    async fn insert_job_rows(w: &mut Write, new: &[&NewJob]) -> Result<Vec<Job>> {
        const ROWS: usize = 200;
        const COLUMNS: usize = 17;
        let now = ms_to_time(w.now);
        let mut created = Vec::with_capacity(new.len());
        for chunk in new.chunks(ROWS) {
            let values = values_list(chunk.len(), COLUMNS);
            let sql = format!(
                "INSERT INTO jobs (id, status, image_sha256, file_name, max_attempts, priority, \
                 run_at, created_at, updated_at, owner, webhook_url, webhook_events, result, \
                 cached, started_at, finished_at, model) VALUES {values} RETURNING id, seq"
            );
            let mut args = Vec::with_capacity(chunk.len() * COLUMNS);
            let mut jobs = Vec::with_capacity(chunk.len());
            for new in chunk {
                let job = Self::new_job(new, now);
                let at = Arg::int(w.now);
                let finished = Arg::Int(job.finished_at.map(|_| w.now));
                args.extend([
                    Arg::text(job.id.to_string()),
                    Arg::text(job.status.as_str()),
                    Arg::text(job.image_sha256.clone()),
                    Arg::Text(job.file_name.clone()),
                    Arg::int(i64::from(job.max_attempts)),
                    Arg::int(i64::from(job.priority)),
                    at.clone(),
                    at.clone(),
                    at,
                    Arg::Text(job.owner.clone()),
                    Arg::Text(job.webhook.as_ref().map(|h| h.url.clone())),
                    Arg::Text(job.webhook.as_ref().map(crate::rows::webhook_events)),
                    Arg::Text(job.result.as_ref().map(to_json).transpose()?),
                    Arg::int(i64::from(job.cached)),
                    finished.clone(),
                    finished,
                    Arg::text(job.model.clone()),
                ]);
                jobs.push(job);
            }
            let mut seqs = std::collections::HashMap::with_capacity(chunk.len());
            for row in w.tx.fetch(&sql, &args).await? {
                seqs.insert(row.text("id")?, row.int("seq")?);
            }
            for mut job in jobs {
                job.seq = *seqs
                    .get(&job.id.to_string())
                    .ok_or_else(|| db_err(format!("job {} was not inserted", job.id)))?;
                created.push(job);
            }
        }
        Ok(created)
    }

    /// A new job as `policy::create` makes it, at `now`; a job answered from the result cache is
    /// created finished, with the earlier result.
    fn new_job(new: &NewJob, now: chrono::DateTime<chrono::Utc>) -> Job {
        let created = policy::create(new.cached_result.is_some());
        let finished_at = created.finished.then_some(now);
        Job {
            seq: 0,
            id: JobId::new(),
            status: created.status,
            image_size: new.image.len() as u64,
            image_sha256: new.sha256.clone(),
            content_type: new.content_type.clone(),
            width: new.width,
            height: new.height,
            file_name: new.file_name.clone(),
            attempts: 0,
            stalls: 0,
            run_attempts: 0,
            max_attempts: new.max_attempts.max(1),
            priority: new.priority,
            run_at: now,
            lease_owner: None,
            lease_until: None,
            error: None,
            attempt_errors: Vec::new(),
            result: new.cached_result.clone(),
            created_at: now,
            started_at: finished_at,
            finished_at,
            updated_at: now,
            owner: new.owner.clone(),
            webhook: new.webhook.clone(),
            cached: new.cached_result.is_some(),
            model: new.model.clone(),
        }
    }

    /// Puts each distinct image of `jobs` that is not recorded yet into the object store new
    /// images go to (a few at a time), before the transaction that records them; nothing when
    /// images go into the database. Each image is handed over without a copy and given back
    /// after. Also returns the images it did not put because a row had them: should that row be
    /// gone by the time the transaction records them, the transaction puts them itself.
    async fn put_images(&self, mut jobs: Vec<NewJob>) -> Result<(Vec<NewJob>, HashSet<String>)> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let store = &self.blobs.current;
        if store.is_database() {
            return Ok((jobs, HashSet::new()));
        }
        let mut seen = HashSet::new();
        let distinct: Vec<usize> = (0..jobs.len())
            .filter(|&i| store.holds(jobs[i].image.len()) && seen.insert(jobs[i].sha256.clone()))
            .collect();
        let shas: Vec<&str> = distinct.iter().map(|&i| jobs[i].sha256.as_str()).collect();
        let unput = crate::tombstones::recorded(&self.reader, &shas).await?;
        let distinct: Vec<usize> = distinct
            .into_iter()
            .filter(|&i| !unput.contains(&jobs[i].sha256))
            .collect();
        let taken: Vec<(usize, String, bytes::Bytes)> = distinct
            .into_iter()
            .map(|i| {
                let bytes = Bytes::from(std::mem::take(&mut jobs[i].image));
                (i, jobs[i].sha256.clone(), bytes)
            })
            .collect();
        let put = stream::iter(taken)
            .map(|(i, sha, bytes)| async move {
                store.put(&sha, bytes.clone()).await.map(|()| (i, bytes))
            })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        for (i, bytes) in put {
            jobs[i].image = Vec::from(bytes);
        }
        Ok((jobs, unput))
    }

    /// Records the images that are not recorded yet (once each, however many jobs share one):
    /// their bytes in chunks when images go into the database, else the object store that
    /// already holds them (`put_images`).
    async fn insert_blobs(
        &self,
        w: &mut Write,
        new: &[Blob<'_>],
        unput: &HashSet<&str>,
    ) -> Result<()> {
        const ROWS: usize = 200;
        let store = &self.blobs.current;
        let url = store.url().to_string();
        let mut seen = HashSet::with_capacity(new.len());
        let distinct: Vec<&Blob> = new.iter().filter(|b| seen.insert(b.sha256)).collect();
        for chunk in distinct.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO blobs (sha256, size, content_type, width, height, created_at, store) \
                 VALUES {} ON CONFLICT (sha256) DO NOTHING RETURNING sha256",
                values_list(chunk.len(), 7)
            );
            let mut args = Vec::with_capacity(chunk.len() * 7);
            for b in chunk {
                let external = store.holds(b.bytes.len()).then(|| url.clone());
                args.extend([
                    Arg::text(b.sha256),
                    Arg::int(b.bytes.len() as i64),
                    Arg::text(b.content_type),
                    Arg::int(i64::from(b.width)),
                    Arg::int(i64::from(b.height)),
                    Arg::int(w.now),
                    Arg::Text(external),
                ]);
            }
            let mut inserted = HashSet::with_capacity(chunk.len());
            for row in w.tx.fetch(&sql, &args).await? {
                inserted.insert(row.text("sha256")?);
            }
            let (outside, inside): (Vec<&Blob>, Vec<&Blob>) =
                chunk.iter().partition(|b| store.holds(b.bytes.len()));
            for b in inside.iter().filter(|b| inserted.contains(b.sha256)) {
                Self::insert_chunks(w, b.sha256, b.bytes).await?;
            }
            // Recorded anew although not put (the row that had it went meanwhile).
            for b in outside.iter().filter(|b| inserted.contains(b.sha256)) {
                if unput.contains(b.sha256) {
                    store.put(b.sha256, Bytes::copy_from_slice(b.bytes)).await?;
                }
            }
            crate::tombstones::revive(w, store, &url, &outside).await?;
        }
        Ok(())
    }

    /// A new image's bytes, in chunks of at most `CHUNK_SIZE`.
    pub(crate) async fn insert_chunks(w: &mut Write, sha256: &str, bytes: &[u8]) -> Result<()> {
        for (idx, chunk) in bytes.chunks(CHUNK_SIZE).enumerate() {
            sqlx::query("INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)")
                .bind(sha256)
                .bind(idx as i64)
                .bind(chunk)
                .execute(&mut *w.tx)
                .await?;
        }
        Ok(())
    }

    /// Copies a job and its image from another installation (`Store::import_job`).
    pub(crate) async fn import_job(&self, job: &Job, image: &[u8]) -> Result<bool> {
        if self.blobs.current.holds(image.len()) {
            let bytes = Bytes::copy_from_slice(image);
            self.blobs.current.put(&job.image_sha256, bytes).await?;
        }
        let mut w = self.begin(Durability::Durable).await?;
        w.now = ms(job.created_at);
        let blob = Blob {
            sha256: &job.image_sha256,
            bytes: image,
            content_type: &job.content_type,
            width: job.width,
            height: job.height,
        };
        self.insert_blobs(&mut w, &[blob], &HashSet::new()).await?;
        // A job that was running has no worker here: it is queued again.
        let status = if job.status == JobStatus::Running {
            JobStatus::Queued
        } else {
            job.status
        };
        let n = sqlx::query(
            "INSERT INTO jobs (id, status, image_sha256, file_name, attempts, stalls, run_attempts, \
             max_attempts, priority, run_at, error_code, error_message, attempt_errors, result, \
             created_at, started_at, finished_at, updated_at, owner, webhook_url, webhook_events, \
             cached, model) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21, $22, $23) ON CONFLICT (id) DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(status.as_str())
        .bind(&job.image_sha256)
        .bind(&job.file_name)
        .bind(i64::from(job.attempts))
        .bind(i64::from(job.stalls))
        .bind(i64::from(job.run_attempts))
        .bind(i64::from(job.max_attempts))
        .bind(i64::from(job.priority))
        .bind(ms(job.run_at))
        .bind(job.error.as_ref().map(|e| e.code.as_str()))
        .bind(job.error.as_ref().map(|e| e.message.clone()))
        .bind(to_json(&job.attempt_errors)?)
        .bind(job.result.as_ref().map(to_json).transpose()?)
        .bind(ms(job.created_at))
        .bind(job.started_at.map(ms))
        .bind(job.finished_at.map(ms))
        .bind(ms(job.updated_at))
        .bind(&job.owner)
        .bind(job.webhook.as_ref().map(|h| h.url.clone()))
        .bind(job.webhook.as_ref().map(crate::rows::webhook_events))
        .bind(i64::from(job.cached))
        .bind(&job.model)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit_plain().await?;
        Ok(n == 1)
    }
}
