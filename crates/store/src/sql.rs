//! The store on a SQL database ([`SqlStore`]): its pools, its dialect, its rules, and the
//! write path every change takes — begin a transaction as durable as the change must be, and
//! at commit write its events, then publish them and wake idle workers. The statements are
//! grouped by concern in the modules above this one (`submit`, `actions`, `search`,
//! `retention`, `stats`, `blobs`, `events`, ...); `face.rs` is the `Store` they make up.

use crate::dialect::{Dialect, Durability};
use crate::exec::Locks;
use crate::health::StorageWatch;
use crate::sqlite_round::Rounds;
use crate::transition;
use crate::tx::Write;
use crate::{Event, Job, Result};
use imgclass_core::policy::Rules;
use imgclass_core::JobStatus;
use sqlx::AnyPool;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Notify};

#[derive(Clone)]
pub(crate) struct SqlStore {
    /// Write transactions (on SQLite a single connection: one writer at a time anyway).
    pub(crate) writer: AnyPool,
    /// Reads that need no transaction (on PostgreSQL the same pool as `writer`).
    pub(crate) reader: AnyPool,
    pub(crate) dialect: Arc<dyn Dialect>,
    /// The queue's rules as configured: every decision the store asks of the policy uses them.
    pub(crate) rules: Rules,
    pub(crate) wakeups: Arc<Notify>,
    /// Whether the last failed write found the storage full (for readiness).
    pub(crate) storage: Arc<StorageWatch>,
    /// Where `create_jobs` hands its jobs to the group commit (`None` in the committer's own
    /// handle, which writes directly).
    pub(crate) submissions: Option<mpsc::Sender<Submission>>,
    /// On SQLite, the thread that runs a worker pool's whole round in one hand-off.
    pub(crate) rounds: Option<Arc<Rounds>>,
    /// Where new images go, and the stores older ones were recorded in.
    pub(crate) blobs: Arc<crate::objects::Blobs>,
    /// Images uploaded here and not claimed yet, for this process's workers.
    pub(crate) recent: Arc<crate::recent::RecentImages>,
}

/// A request waiting for the group commit, and where to send its answer.
pub(crate) struct Submission {
    pub(crate) part: crate::uploads::Part,
    pub(crate) reply: oneshot::Sender<Result<Vec<Job>>>,
}

impl SqlStore {
    pub(crate) async fn begin(&self, durability: Durability) -> Result<Write> {
        Write::begin(
            &self.writer,
            self.dialect.begin(durability),
            self.dialect.placeholders(),
            self.storage.clone(),
        )
        .await
    }

    /// The row-lock clauses of this database, and what else the worker round needs of it.
    pub(crate) fn locks(&self) -> Locks {
        Locks::of(self.dialect.as_ref())
    }

    /// Writes the transaction's events, commits, then publishes the events and wakes idle
    /// workers when a job became claimable.
    ///
    /// The events are published before the connection goes back to the pool: on SQLite, whose
    /// one writer connection orders every write, the next transaction cannot commit (and publish
    /// its own, later events) first. A subscriber that drops what it has already passed (an SSE
    /// stream resuming by sequence number) would otherwise lose the earlier ones.
    pub(crate) async fn commit(&self, mut w: Write) -> Result<()> {
        if !w.events.is_empty() {
            self.dialect.announce(&mut w.tx, &w.events).await?;
            transition::insert_events(&mut w.tx, &mut w.events, w.now).await?;
        }
        let events = w.commit_events().await?;
        self.publish(events);
        // Only now does the connection go back to the pool.
        drop(w);
        Ok(())
    }

    /// Notes what a write on SQLite's round thread came to, as every write's end is noted: on
    /// success the storage seen writable and the committed events published (the caller still
    /// holds the writer connection, so they go out before the next write's); on a full storage,
    /// that state remembered (for readiness).
    pub(crate) fn settle<T>(&self, result: Result<(T, Vec<Event>)>) -> Result<T> {
        match result {
            Ok((value, events)) => {
                self.storage.write_succeeded();
                self.publish(events);
                Ok(value)
            }
            Err(e) => {
                if let crate::StoreError::StorageFull(detail) = &e {
                    self.storage.full(detail.clone());
                }
                Err(e)
            }
        }
    }

    /// Publishes a committed transaction's events, and wakes idle workers when a job became
    /// claimable.
    pub(crate) fn publish(&self, events: Vec<Event>) {
        let wake = events.iter().any(|e| e.status == Some(JobStatus::Queued));
        self.dialect.committed(events);
        if wake {
            self.wakeups.notify_waiters();
        }
    }
}
