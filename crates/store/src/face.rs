//! The store as the rest of imgclass sees it: [`Store`] and [`Health`] for [`SqlStore`], each
//! method handing over to the module that owns its statements.

use crate::dialect::Dialect;
use crate::health::{FullStorage, Health, PoolStatus};
use crate::sql::{SqlStore, Submission};
use crate::sqlite_round::Rounds;
use crate::{
    BlobStore, ClaimBatch, Collected, Event, Job, JobFilter, JobPage, KeyHold, Lease, ListQuery,
    Moved, NewJob, Outcome, Pruned, QueueStats, RateLimit, Result, RetryFilter, Store, StoredImage,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::policy::{Happened, Rules};
use imgclass_core::{JobId, JobStatus};
use sqlx::AnyPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Notify};

impl SqlStore {
    /// The store, with its group commit running (on the current tokio runtime).
    pub(crate) fn new(
        writer: AnyPool,
        reader: AnyPool,
        dialect: Arc<dyn Dialect>,
        rules: Rules,
        wakeups: Arc<Notify>,
        rounds: Option<Rounds>,
        blobs: Arc<crate::objects::Blobs>,
    ) -> Self {
        crate::submit::start(SqlStore {
            writer,
            reader,
            dialect,
            rules,
            wakeups,
            storage: Arc::default(),
            submissions: None::<tokio::sync::mpsc::Sender<Submission>>,
            rounds: rounds.map(Arc::new),
            blobs,
            recent: Arc::default(),
        })
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<()> {
        self.dialect.migrate(&self.writer).await
    }

    async fn create_jobs_keyed(&self, jobs: Vec<NewJob>, key: Option<KeyHold>) -> Result<Vec<Job>> {
        SqlStore::create_jobs_keyed(self, jobs, key).await
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        SqlStore::get_job(self, id).await
    }

    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        SqlStore::list_jobs(self, query).await
    }

    async fn search_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage> {
        SqlStore::search_jobs(self, filter, cursor, limit).await
    }

    async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
        SqlStore::count_jobs(self, filter).await
    }

    async fn cancel_queued(&self, filter: &JobFilter) -> Result<u64> {
        SqlStore::cancel_queued(self, filter).await
    }

    async fn delete_finished(&self, filter: &JobFilter) -> Result<u64> {
        SqlStore::delete_finished(self, filter).await
    }

    async fn job_image(&self, id: JobId) -> Result<Option<StoredImage>> {
        SqlStore::job_image(self, id).await
    }

    async fn read_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        SqlStore::read_blob(self, sha256).await
    }

    async fn read_blob_from(
        &self,
        sha256: &str,
        store: &str,
        size: u64,
    ) -> Result<Option<Vec<u8>>> {
        SqlStore::read_blob_from(self, sha256, store, size).await
    }

    fn blob_store(&self) -> BlobStore {
        self.blobs.current.clone()
    }

    async fn collect_images(&self, grace: Duration, orphans: bool) -> Result<Collected> {
        SqlStore::collect_images(self, grace, orphans).await
    }

    async fn move_images(&self, to: &BlobStore, limit: usize) -> Result<Moved> {
        SqlStore::move_images(self, to, limit).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        SqlStore::release(self, lease).await
    }

    async fn heartbeat(&self, lease: &Lease, duration: Duration) -> Result<bool> {
        SqlStore::heartbeat(self, lease, duration).await
    }

    async fn finish_and_claim(
        &self,
        finishes: Vec<(Lease, Outcome)>,
        worker: &str,
        limit: usize,
        lease: Duration,
        rate: Option<RateLimit>,
        models: Option<&[String]>,
    ) -> Result<(Vec<Option<JobStatus>>, ClaimBatch)> {
        let models = models.map(<[String]>::to_vec);
        self.round(finishes, worker, limit, lease, rate, models)
            .await
    }

    async fn retry(&self, id: JobId) -> Result<Job> {
        self.act(id, Happened::RetryRequested).await
    }

    async fn cancel(&self, id: JobId) -> Result<Job> {
        self.act(id, Happened::CancelRequested).await
    }

    async fn retry_failed(&self, filter: &RetryFilter) -> Result<Vec<Job>> {
        SqlStore::retry_failed(self, filter).await
    }

    async fn prune(&self, before: DateTime<Utc>) -> Result<Pruned> {
        SqlStore::prune(self, before).await
    }

    async fn stats_of(&self, owner: Option<&str>, rate: Option<RateLimit>) -> Result<QueueStats> {
        SqlStore::stats_of(self, owner, rate).await
    }

    async fn delete(&self, id: JobId) -> Result<()> {
        SqlStore::delete(self, id).await
    }

    async fn rescue_expired(&self) -> Result<u64> {
        SqlStore::rescue_expired(self).await
    }

    fn rules(&self) -> Rules {
        self.rules
    }

    async fn import_job(&self, job: &Job, image: &[u8]) -> Result<bool> {
        SqlStore::import_job(self, job, image).await
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        SqlStore::next_due(self).await
    }

    async fn events_since(&self, after: i64, limit: usize) -> Result<Vec<Event>> {
        crate::events::read_events(&self.reader, after, limit).await
    }

    async fn last_event_seq(&self) -> Result<i64> {
        crate::events::last_event_seq(&self.reader).await
    }

    fn wakeups(&self) -> Arc<Notify> {
        self.wakeups.clone()
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.dialect.subscribe()
    }
}

impl Health for SqlStore {
    fn pool_status(&self) -> Vec<PoolStatus> {
        let status = |name, pool: &sqlx::AnyPool| PoolStatus {
            name,
            size: pool.size(),
            idle: pool.num_idle() as u32,
            max: pool.options().get_max_connections(),
        };
        vec![
            status("writer", &self.writer),
            status("reader", &self.reader),
        ]
    }

    fn full_storage(&self) -> Option<FullStorage> {
        self.storage.current()
    }

    fn storage_fault(&self) -> Option<String> {
        self.storage.fault()
    }
}
