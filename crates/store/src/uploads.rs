//! An upload's transaction: the statements that store a group of uploads (each request's
//! [`Part`]) — their images recorded once per SHA-256 (bytes in chunks, or the object store that
//! already holds them), their jobs as `policy::create` makes them, their events, their
//! idempotency keys completed. Generic over [`Exec`], so the same statements run through sqlx
//! (PostgreSQL, and SQLite when an image must be put inside the transaction) and on SQLite's
//! round thread; the group commit that gathers the parts is `submit.rs`.

use crate::exec::{values_list, Arg, Exec};
use crate::model::to_json;
use crate::objects::BlobStore;
use crate::rows::{db_err, ms_to_time, Columns};
use crate::tombstones::Blob;
use crate::transition::record;
use crate::{Event, Job, KeyHold, NewJob, Result, StoreError, CHUNK_SIZE};
use bytes::Bytes;
use imgclass_core::policy;
use imgclass_core::JobId;
use std::collections::HashSet;

/// One request's part of a group commit: its jobs, the idempotency key they complete, and the
/// images `put_images` did not put because they were recorded already.
pub(crate) struct Part {
    pub(crate) jobs: Vec<NewJob>,
    pub(crate) key: Option<KeyHold>,
    pub(crate) unput: HashSet<String>,
}

impl Part {
    pub(crate) fn bytes(&self) -> usize {
        self.jobs.iter().map(|j| j.image.len()).sum()
    }
}
/// What a group's statements stored: each part's jobs, in its order, and the images that must
/// go into the object store before the transaction commits.
pub(crate) struct Stored<'p> {
    pub(crate) created: Vec<Vec<Job>>,
    /// Images recorded anew that are not in the object store: not put by their upload because
    /// a row had them, and that row went meanwhile; or put, and deleted since by the collector
    /// (it left a tombstone, which the statements cleared). Rare either way.
    pub(crate) puts: Vec<Blob<'p>>,
}

/// The statements of a group commit, in the caller's write transaction (an sqlx one, or the
/// SQLite round thread's): each part's images recorded (once each, however many jobs share one),
/// its jobs inserted, their events recorded into `events`, its idempotency key completed.
pub(crate) async fn insert_all<'p, E: Exec>(
    e: &mut E,
    events: &mut Vec<Event>,
    now: i64,
    store: &BlobStore,
    parts: &'p [Part],
) -> Result<Stored<'p>> {
    let all: Vec<&NewJob> = parts.iter().flat_map(|p| p.jobs.iter()).collect();
    let blobs: Vec<Blob> = all.iter().map(|j| Blob::of(j)).collect();
    let unput: HashSet<&str> = parts
        .iter()
        .flat_map(|p| p.unput.iter().map(String::as_str))
        .collect();
    let puts = insert_blobs(e, store, &blobs, &unput, now).await?;
    let mut jobs = insert_job_rows(e, &all, now).await?.into_iter();
    let mut created = Vec::with_capacity(parts.len());
    for part in parts {
        let mine: Vec<Job> = jobs.by_ref().take(part.jobs.len()).collect();
        for job in &mine {
            // A job answered from the cache is still announced as a success, like any job
            // that finishes.
            for kind in policy::create(job.cached).events {
                let (id, job) = (job.id, Some(job.clone()));
                record(e, events, id, *kind, job, None, now).await?;
            }
        }
        if let Some(hold) = &part.key {
            let ids: Vec<JobId> = mine.iter().map(|j| j.id).collect();
            complete(e, hold, &ids).await?;
        }
        created.push(mine);
    }
    Ok(Stored { created, puts })
}
/// Inserts the rows of new jobs (a few hundred per statement) and returns them as stored, in
/// order. A job answered from the result cache is created finished, with the earlier result.
async fn insert_job_rows<E: Exec>(e: &mut E, new: &[&NewJob], stamp: i64) -> Result<Vec<Job>> {
    const ROWS: usize = 200;
    const COLUMNS: usize = 17;
    let now = ms_to_time(stamp);
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
            let job = new_job(new, now);
            let at = Arg::int(stamp);
            let finished = Arg::Int(job.finished_at.map(|_| stamp));
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
        for row in e.fetch(&sql, &args).await? {
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
/// Records the images that are not recorded yet (once each, however many jobs share one): their
/// bytes in chunks when images go into the database, else the object store that already holds
/// them (`put_images`). Returns the images the transaction must put before it commits (see
/// [`Stored::puts`]).
pub(crate) async fn insert_blobs<'p, E: Exec>(
    e: &mut E,
    store: &BlobStore,
    new: &[Blob<'p>],
    unput: &HashSet<&str>,
    now: i64,
) -> Result<Vec<Blob<'p>>> {
    const ROWS: usize = 200;
    let url = store.url().to_string();
    let mut seen = HashSet::with_capacity(new.len());
    let distinct: Vec<&Blob> = new.iter().filter(|b| seen.insert(b.sha256)).collect();
    let mut puts = Vec::new();
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
                Arg::int(now),
                Arg::Text(external),
            ]);
        }
        let mut inserted = HashSet::with_capacity(chunk.len());
        for row in e.fetch(&sql, &args).await? {
            inserted.insert(row.text("sha256")?);
        }
        let (outside, inside): (Vec<&Blob>, Vec<&Blob>) =
            chunk.iter().partition(|b| store.holds(b.bytes.len()));
        for b in inside.iter().filter(|b| inserted.contains(b.sha256)) {
            insert_chunks(e, b.sha256, b.bytes).await?;
        }
        // Recorded anew although not put (the row that had it went meanwhile).
        let anew = outside
            .iter()
            .filter(|b| inserted.contains(b.sha256) && unput.contains(b.sha256));
        puts.extend(anew.map(|b| **b));
        for sha in crate::tombstones::revive(e, &url, &outside).await? {
            if !puts.iter().any(|p| p.sha256 == sha) {
                puts.extend(outside.iter().find(|b| b.sha256 == sha).map(|b| **b));
            }
        }
    }
    Ok(puts)
}

/// Puts the images a transaction found missing from `store` (see [`Stored::puts`]).
pub(crate) async fn put_all(store: &BlobStore, puts: &[Blob<'_>]) -> Result<()> {
    for b in puts {
        store.put(b.sha256, Bytes::copy_from_slice(b.bytes)).await?;
    }
    Ok(())
}

/// A new image's bytes, in chunks of at most `CHUNK_SIZE`.
pub(crate) async fn insert_chunks<E: Exec>(e: &mut E, sha256: &str, bytes: &[u8]) -> Result<()> {
    for (idx, chunk) in bytes.chunks(CHUNK_SIZE).enumerate() {
        let sql = "INSERT INTO blob_chunks (sha256, idx, data) VALUES ($1, $2, $3)";
        let args = [Arg::text(sha256), Arg::int(idx as i64)];
        e.execute_blob(sql, &args, chunk).await?;
    }
    Ok(())
}

/// Completes the key `hold` with the jobs its request created, in the transaction that stores
/// them. Fails (and so fails that transaction) when the request no longer holds the key.
pub(crate) async fn complete<E: Exec>(e: &mut E, hold: &KeyHold, jobs: &[JobId]) -> Result<()> {
    let ids: Vec<String> = jobs.iter().map(JobId::to_string).collect();
    let ids = serde_json::to_string(&ids).map_err(|e| db_err(e.to_string()))?;
    let sql = "UPDATE idempotency_keys SET state = 'done', job_ids = $1 \
               WHERE scope = $2 AND key = $3 AND holder = $4 AND state = 'processing'";
    let args = [
        Arg::text(ids),
        Arg::text(hold.key.scope.as_str()),
        Arg::text(hold.key.key.as_str()),
        Arg::text(hold.holder.as_str()),
    ];
    if e.execute(sql, &args).await? == 1 {
        Ok(())
    } else {
        Err(StoreError::KeyLost)
    }
}
