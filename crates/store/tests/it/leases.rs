//! Leases: heartbeats, expiry, rescue and fencing of stale workers.

use crate::common::*;
use chrono::Utc;
use imgclass_core::{ErrorCode, EventKind, JobStatus};
use imgclass_store::{Outcome, Store};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_fenced_after_the_job_is_taken_again() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let old = claim_and_let_expire(&*store, "old").await;

    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let rescued = get(&*store, job.id).await;
    assert_eq!(rescued.status, JobStatus::Queued);
    assert_eq!(rescued.lease_until, None);
    assert_eq!(
        rescued.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Stalled)
    );
    assert_eq!(rescued.attempt_errors.len(), 1);
    assert_eq!(rescued.attempt_errors[0].code, ErrorCode::Stalled);
    assert_eq!(rescued.attempt_errors[0].attempt, 1);
    let last = store.events_since(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Requeued);

    // While queued, the old lease is worth nothing either.
    assert!(!store.heartbeat(&old.lease, LONG_LEASE).await.unwrap());

    let new = claim_one(&*store, "new", LONG_LEASE).await;
    assert_eq!(new.job.id, job.id);
    assert_ne!(new.lease, old.lease);
    assert_eq!(new.job.attempts, 2);
    let running = get(&*store, job.id).await;
    let seq = store.last_event_seq().await.unwrap();

    // The old worker comes back: everything it tries is refused and changes nothing.
    assert!(!store.heartbeat(&old.lease, LONG_LEASE).await.unwrap());
    assert!(!store
        .finish(&old.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert!(!store
        .finish(&old.lease, errored(ErrorCode::Internal, "late"))
        .await
        .unwrap());
    assert!(!store
        .finish(&old.lease, errored(ErrorCode::Internal, "late"),)
        .await
        .unwrap());
    assert_eq!(get(&*store, job.id).await, running);
    assert_eq!(store.last_event_seq().await.unwrap(), seq, "no event");

    // The current holder still can.
    assert!(store.heartbeat(&new.lease, LONG_LEASE).await.unwrap());
    assert!(store
        .finish(&new.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    let done = get(&*store, job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(sample_result()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_one_claim_does_not_cover_another_job() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs(vec![new_job(1), new_job(2)])
        .await
        .unwrap();
    let a = claim_one(&*store, "w", LONG_LEASE).await;
    let b = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!((a.job.id, b.job.id), (jobs[0].id, jobs[1].id));
    // A's token with B's id.
    let forged = imgclass_store::Lease {
        job_id: b.job.id,
        token: a.lease.token.clone(),
    };
    assert!(!store.heartbeat(&forged, LONG_LEASE).await.unwrap());
    assert!(!store
        .finish(&forged, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert_eq!(get(&*store, b.job.id).await.status, JobStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_without_attempts_left_fails_as_stalled() {
    let (store, _dir) = fresh_store().await;
    let job = create(
        &*store,
        imgclass_store::NewJob {
            max_attempts: 2,
            priority: 0,
            ..new_job(1)
        },
    )
    .await;

    // First attempt lost: one attempt is left, so it is queued again.
    claim_and_let_expire(&*store, "a").await;
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    assert_eq!(get(&*store, job.id).await.status, JobStatus::Queued);

    // Second attempt lost: none is left.
    let second = claim_and_let_expire(&*store, "b").await;
    assert_eq!(second.job.run_attempts, 2);
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let failed = get(&*store, job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.as_ref().unwrap().code, ErrorCode::Stalled);
    assert!(failed.finished_at.is_some());
    assert_eq!(failed.lease_until, None);
    assert_eq!(
        failed
            .attempt_errors
            .iter()
            .map(|e| (e.attempt, e.code))
            .collect::<Vec<_>>(),
        vec![(1, ErrorCode::Stalled), (2, ErrorCode::Stalled)]
    );
    let last = store.events_since(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Failed);
    assert_eq!(last.status, Some(JobStatus::Failed));

    assert!(store.claim("c", 10, LONG_LEASE).await.unwrap().is_empty());
    assert_eq!(
        store.rescue_expired().await.unwrap(),
        0,
        "nothing left to rescue"
    );
    assert!(!store
        .finish(&second.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_attempt_job_fails_at_once_when_its_lease_expires() {
    let (store, _dir) = fresh_store().await;
    let job = create(
        &*store,
        imgclass_store::NewJob {
            max_attempts: 1,
            priority: 0,
            ..new_job(1)
        },
    )
    .await;
    claim_and_let_expire(&*store, "w").await;
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let failed = get(&*store, job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.unwrap().code, ErrorCode::Stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_retry_grants_fresh_attempts() {
    let (store, _dir) = fresh_store().await;
    let job = create(
        &*store,
        imgclass_store::NewJob {
            max_attempts: 1,
            priority: 0,
            ..new_job(1)
        },
    )
    .await;
    claim_and_let_expire(&*store, "w").await;
    store.rescue_expired().await.unwrap();
    let retried = store.retry(job.id).await.unwrap();
    assert_eq!(retried.status, JobStatus::Queued);
    assert_eq!(retried.run_attempts, 0);
    assert_eq!(retried.attempts, 1);

    // The retried job again gets max_attempts runs before it stalls for good.
    let again = claim_and_let_expire(&*store, "w").await;
    assert_eq!(again.job.attempts, 2);
    assert_eq!(again.job.run_attempts, 1);
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    assert_eq!(get(&*store, job.id).await.status, JobStatus::Failed);
}

/// Renews a lease for 2 s every 100 ms, checking each time that the job is not rescued.
async fn keep_alive(store: &dyn Store, lease: &imgclass_store::Lease, rounds: usize) {
    for _ in 0..rounds {
        assert!(store
            .heartbeat(lease, Duration::from_secs(2))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(store.rescue_expired().await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_live_worker_from_being_rescued() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", Duration::from_millis(500)).await;
    let first_until = claim.job.lease_until.unwrap();

    // Well past the original lease, kept alive by heartbeats all along.
    keep_alive(&*store, &claim.lease, 7).await;
    let running = get(&*store, job.id).await;
    assert_eq!(running.status, JobStatus::Running);
    assert!(running.lease_until.unwrap() > first_until);
    assert!(
        Utc::now() > first_until,
        "the first lease would have expired"
    );

    // A long heartbeat also outlives a short original lease.
    let short = create(&*store, new_job(2)).await;
    let short_claim = claim_one(&*store, "w", Duration::from_millis(1)).await;
    assert_eq!(short_claim.job.id, short.id);
    assert!(store
        .heartbeat(&short_claim.lease, LONG_LEASE)
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired().await.unwrap(), 0);

    // Once the heartbeats stop, the job is rescued.
    assert!(store
        .heartbeat(&claim.lease, Duration::from_millis(1))
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    assert_eq!(get(&*store, job.id).await.status, JobStatus::Queued);
    assert_eq!(get(&*store, short.id).await.status, JobStatus::Running);
    assert!(store
        .finish(&short_claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescue_leaves_live_leases_alone() {
    let (store, _dir) = fresh_store().await;
    create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!(store.rescue_expired().await.unwrap(), 0);
    assert_eq!(get(&*store, claim.job.id).await, claim.job);
}
