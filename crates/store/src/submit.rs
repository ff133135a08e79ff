//! Submission: the group commit (the uploads that wait at one moment stored in one transaction
//! with one fsync: on SQLite one hand-off to the round thread, else through sqlx), the images put
//! into their object store before it, and jobs imported from another installation. The
//! transaction's statements are `uploads.rs`.

use crate::dialect::Durability;
use crate::model::to_json;
use crate::rows::ms;
use crate::sql::{SqlStore, Submission};
use crate::sqlite_round::{Rounds, Submitted};
use crate::tombstones::Blob;
use crate::uploads::{insert_all, insert_blobs, put_all, Part};
use crate::{Job, NewJob, Result, StoreError, INLINE_IMAGE_MAX};
use bytes::Bytes;
use imgclass_core::JobStatus;
use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

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
        let mut jobs = first.part.jobs.len();
        let mut bytes = first.part.bytes();
        let mut batch = vec![first];
        while jobs < GROUP_MAX_JOBS && bytes < GROUP_MAX_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            jobs += next.part.jobs.len();
            bytes += next.part.bytes();
            batch.push(next);
        }
        let (parts, replies): (Vec<Part>, Vec<_>) =
            batch.into_iter().map(|s| (s.part, s.reply)).unzip();
        let parts = if parts.len() > 1 {
            match store.insert_jobs(parts).await {
                (_, Ok(created)) => {
                    for (reply, jobs) in replies.into_iter().zip(created) {
                        let _ = reply.send(Ok(jobs));
                    }
                    continue;
                }
                (parts, Err(_)) => parts,
            }
        } else {
            parts
        };
        for (part, reply) in parts.into_iter().zip(replies) {
            let (_, result) = store.insert_jobs(vec![part]).await;
            let _ = reply.send(result.map(|mut c| c.remove(0)));
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
        key: Option<crate::KeyHold>,
    ) -> Result<Vec<Job>> {
        // The images are in their object store before any row names them.
        let unput = self.put_images(&jobs).await?;
        let kept = self.keep_recent(&jobs);
        let part = Part { jobs, key, unput };
        let created = match &self.submissions {
            None => self
                .insert_jobs(vec![part])
                .await
                .1
                .map(|mut c| c.remove(0)),
            Some(submit) => {
                let stopped = || StoreError::Unavailable("the store is shutting down".into());
                let (reply, answer) = oneshot::channel();
                match submit.send(Submission { part, reply }).await {
                    Ok(()) => answer.await.unwrap_or_else(|_| Err(stopped())),
                    Err(_) => Err(stopped()),
                }
            }
        };
        if created.is_err() {
            for sha in &kept {
                self.recent.release(sha);
            }
        }
        created
    }

    /// Stores each part's images and jobs and completes its idempotency key, all in one
    /// transaction and a few statements for the whole group; the jobs of each part come back in
    /// its order, and the parts themselves (for the caller to try them again alone).
    pub(crate) async fn insert_jobs(&self, parts: Vec<Part>) -> (Vec<Part>, Result<Vec<Vec<Job>>>) {
        match self.insert_jobs_once(parts).await {
            // The collector deleted an image's row between our insert (which found it there)
            // and our job's: tried again, the image is recorded anew.
            (parts, Err(StoreError::Raced(_))) => self.insert_jobs_once(parts).await,
            done => done,
        }
    }

    /// On SQLite, the whole transaction in one hand-off to the round thread (sqlx would hand
    /// each statement to its connection's thread in turn); through sqlx when an image must be
    /// put into the object store inside the transaction, and on PostgreSQL.
    async fn insert_jobs_once(&self, parts: Vec<Part>) -> (Vec<Part>, Result<Vec<Vec<Job>>>) {
        let parts = match &self.rounds {
            Some(rounds) => match self.insert_on(rounds, parts).await {
                (parts, Some(done)) => return (parts, done),
                (parts, None) => parts,
            },
            None => parts,
        };
        let result = self.insert_jobs_sqlx(&parts).await;
        (parts, result)
    }

    /// The group's transaction on the round thread, the writer connection held meanwhile (it is
    /// the process's one writer); `None` when an image must be put into its object store inside
    /// the transaction, which was rolled back for the sqlx path to do it.
    async fn insert_on(
        &self,
        rounds: &Rounds,
        parts: Vec<Part>,
    ) -> (Vec<Part>, Option<Result<Vec<Vec<Job>>>>) {
        let _writer = match self.writer.acquire().await {
            Ok(w) => w,
            Err(e) => return (parts, Some(Err(e.into()))),
        };
        if let Err(e) = self.storage.check_writable() {
            return (parts, Some(Err(e)));
        }
        let (parts, result) = rounds.submit(parts, self.blobs.current.clone()).await;
        let done = match result {
            Ok(Submitted::Done(created, events)) => Ok((created, events)),
            Ok(Submitted::NeedsPuts) => return (parts, None),
            Err(e) => Err(e),
        };
        (parts, Some(self.settle(done)))
    }

    /// The group's transaction through sqlx; the images it must put go into their object store
    /// before it commits.
    async fn insert_jobs_sqlx(&self, parts: &[Part]) -> Result<Vec<Vec<Job>>> {
        let mut w = self.begin(Durability::Durable).await?;
        let store = &self.blobs.current;
        let stored = insert_all(&mut w.tx, &mut w.events, w.now, store, parts).await?;
        put_all(store, &stored.puts).await?;
        self.commit(w).await?;
        Ok(stored.created)
    }

    /// Puts each distinct image of `jobs` that is not recorded yet into the object store new
    /// images go to (a few at a time), before the transaction that records them; nothing when
    /// images go into the database. Also returns the images it did not put because a row had
    /// them: should that row be gone by the time the transaction records them, the transaction
    /// puts them itself.
    async fn put_images(&self, jobs: &[NewJob]) -> Result<HashSet<String>> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let store = &self.blobs.current;
        if store.is_database() {
            return Ok(HashSet::new());
        }
        let mut seen = HashSet::new();
        let distinct: Vec<&NewJob> = jobs
            .iter()
            .filter(|j| store.holds(j.image.len()) && seen.insert(j.sha256.as_str()))
            .collect();
        let shas: Vec<&str> = distinct.iter().map(|j| j.sha256.as_str()).collect();
        let unput = crate::tombstones::recorded(&self.reader, &shas).await?;
        let puts: Vec<(String, Bytes)> = distinct
            .into_iter()
            .filter(|j| !unput.contains(&j.sha256))
            .map(|j| (j.sha256.clone(), j.image.clone()))
            .collect();
        stream::iter(puts)
            .map(|(sha, bytes)| async move { store.put(&sha, bytes).await })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(unput)
    }

    /// Keeps the images of the queued jobs for this process's workers, unless their claim
    /// carries them anyway (small ones in the database); the images kept, for a failed
    /// upload to release.
    fn keep_recent(&self, jobs: &[NewJob]) -> Vec<String> {
        let store = &self.blobs.current;
        let carried = |j: &NewJob| !store.holds(j.image.len()) && j.image.len() <= INLINE_IMAGE_MAX;
        let mut kept = Vec::new();
        for job in jobs
            .iter()
            .filter(|j| j.cached_result.is_none() && !carried(j))
        {
            if self.recent.hold(&job.sha256, &job.image) {
                kept.push(job.sha256.clone());
            }
        }
        kept
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
        let store = &self.blobs.current;
        let puts = insert_blobs(&mut w.tx, store, &[blob], &HashSet::new(), w.now).await?;
        put_all(store, &puts).await?;
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
