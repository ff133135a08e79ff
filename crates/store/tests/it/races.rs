//! Races between two store handles on one database (two nodes, or an API node and a worker):
//! every transition is guarded by the state it comes from, so exactly one side of a race wins,
//! the other gets the right answer (409 or fenced), and the job's final status always agrees
//! with its last event.

use crate::common::*;
use imgclass_core::{ErrorCode, EventKind, JobId, JobStatus};
use imgclass_store::{Event, Outcome, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

const ROUNDS: u64 = 25;

/// Two handles on one fresh database.
async fn two_handles() -> (Arc<dyn Store>, Arc<dyn Store>, TestDb) {
    let db = TestDb::new().await;
    let a = db.open().await;
    let b = db.open().await;
    (a, b, db)
}

async fn events_of(store: &dyn Store, id: JobId) -> Vec<Event> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_since(after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page.into_iter().filter(|e| e.job_id == id));
    }
    all
}

fn is_invalid_state<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::InvalidState(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_a_finish_has_exactly_one_winner() {
    let (a, b, _db) = two_handles().await;
    for round in 0..ROUNDS {
        let job = create(&*a, new_job(round)).await;
        let claim = claim_one(&*a, "w", LONG_LEASE).await;
        let finisher = {
            let a = a.clone();
            tokio::spawn(async move {
                a.finish(&claim.lease, Outcome::Succeeded(sample_result()))
                    .await
            })
        };
        let canceler = {
            let b = b.clone();
            tokio::spawn(async move { b.cancel(job.id).await })
        };
        let finished = finisher.await.unwrap().unwrap();
        let canceled = canceler.await.unwrap();
        let final_status = get(&*a, job.id).await.status;
        let kinds: Vec<EventKind> = events_of(&*a, job.id)
            .await
            .iter()
            .map(|e| e.kind)
            .collect();
        if finished {
            assert!(
                is_invalid_state(&canceled),
                "round {round}: both won: {canceled:?}"
            );
            assert_eq!(final_status, JobStatus::Succeeded);
            assert_eq!(
                kinds.last(),
                Some(&EventKind::Succeeded),
                "round {round}: {kinds:?}"
            );
        } else {
            assert_eq!(
                canceled.unwrap().status,
                JobStatus::Canceled,
                "round {round}"
            );
            assert_eq!(final_status, JobStatus::Canceled);
            assert_eq!(
                kinds.last(),
                Some(&EventKind::Canceled),
                "round {round}: {kinds:?}"
            );
        }
        assert_eq!(
            kinds.len(),
            3,
            "round {round}: created, running and one ending: {kinds:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_asked_twice_at_once_happens_once() {
    let (a, b, _db) = two_handles().await;
    for round in 0..ROUNDS {
        let job = create(&*a, new_job(round)).await;
        let claim = claim_one(&*a, "w", LONG_LEASE).await;
        let error = job_error(ErrorCode::ImageCorrupt, "bad");
        assert!(a
            .finish(
                &claim.lease,
                Outcome::Errored {
                    error,
                    retry_after: None,
                }
            )
            .await
            .unwrap());
        let first = {
            let a = a.clone();
            tokio::spawn(async move { a.retry(job.id).await })
        };
        let second = {
            let b = b.clone();
            tokio::spawn(async move { b.retry(job.id).await })
        };
        let results = [first.await.unwrap(), second.await.unwrap()];
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {results:?}");
        assert!(
            results.iter().any(is_invalid_state),
            "round {round}: {results:?}"
        );
        let events = events_of(&*a, job.id).await;
        let retried = events
            .iter()
            .filter(|e| e.kind == EventKind::Retried)
            .count();
        assert_eq!(retried, 1, "round {round}");
        assert_eq!(get(&*a, job.id).await.status, JobStatus::Queued);
        // Leave nothing claimable for the next round.
        a.cancel(job.id).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_during_a_run_leaves_nothing_behind() {
    let (a, b, _db) = two_handles().await;
    for round in 0..ROUNDS {
        let job = create(&*a, new_job(round)).await;
        let claim = claim_one(&*a, "w", LONG_LEASE).await;
        let lease = claim.lease.clone();
        let finisher = {
            let a = a.clone();
            tokio::spawn(async move {
                a.finish(&claim.lease, Outcome::Succeeded(sample_result()))
                    .await
            })
        };
        let deleter = {
            let b = b.clone();
            tokio::spawn(async move { b.delete(job.id).await })
        };
        let finished = finisher.await.unwrap().unwrap();
        deleter.await.unwrap().unwrap();
        assert!(a.get_job(job.id).await.unwrap().is_none(), "round {round}");
        assert!(a.read_blob(&job.image_sha256).await.unwrap().is_none());
        assert!(!a.heartbeat(&lease, LONG_LEASE).await.unwrap());
        let kinds: Vec<EventKind> = events_of(&*a, job.id)
            .await
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds.last(),
            Some(&EventKind::Deleted),
            "round {round}: {kinds:?}"
        );
        let expected = if finished { 4 } else { 3 };
        assert_eq!(kinds.len(), expected, "round {round}: {kinds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_heartbeat_racing_a_rescue_has_exactly_one_winner() {
    let (a, b, _db) = two_handles().await;
    for round in 0..ROUNDS {
        let job = create(&*a, new_job(round)).await;
        let claim = claim_and_let_expire(&*a, "w").await;
        let beater = {
            let a = a.clone();
            let lease = claim.lease.clone();
            tokio::spawn(async move { a.heartbeat(&lease, LONG_LEASE).await })
        };
        let rescuer = {
            let b = b.clone();
            tokio::spawn(async move { b.rescue_expired().await })
        };
        let renewed = beater.await.unwrap().unwrap();
        let rescued = rescuer.await.unwrap().unwrap();
        assert!(
            renewed != (rescued == 1),
            "round {round}: renewed {renewed}, rescued {rescued}"
        );
        let now = get(&*a, job.id).await;
        let last = events_of(&*a, job.id).await.pop().unwrap();
        if renewed {
            assert_eq!(now.status, JobStatus::Running);
            assert_eq!(last.kind, EventKind::Running);
            assert!(now.lease_until.unwrap() > chrono::Utc::now() + Duration::from_secs(60));
            // The worker that kept its lease finishes the job.
            assert!(a
                .finish(&claim.lease, Outcome::Succeeded(sample_result()))
                .await
                .unwrap());
        } else {
            assert_eq!(now.status, JobStatus::Queued);
            assert_eq!(last.kind, EventKind::Requeued);
            assert!(!a
                .finish(&claim.lease, Outcome::Succeeded(sample_result()))
                .await
                .unwrap());
            a.cancel(job.id).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_take_higher_priority_first_then_the_oldest() {
    let (store, _db) = fresh_store().await;
    let mut ids = Vec::new();
    for (seed, priority) in [(1, 0), (2, 5), (3, -1), (4, 5)] {
        let mut new = new_job(seed);
        new.priority = priority;
        let job = create(&*store, new).await;
        assert_eq!(job.priority, priority);
        assert_eq!(get(&*store, job.id).await.priority, priority);
        ids.push(job.id);
    }
    let order: Vec<JobId> = store
        .claim("w", 10, LONG_LEASE)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.job.id)
        .collect();
    assert_eq!(order, vec![ids[1], ids[3], ids[0], ids[2]]);
}
