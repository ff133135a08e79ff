//! Ending attempts: success, failure, and another try later.

use crate::common::*;
use chrono::Utc;
use imgclass_core::{ErrorCode, EventKind, JobStatus};
use imgclass_store::{JobError, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_stores_the_result_and_emits_an_event() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    let seq = store.last_event_seq().await.unwrap();

    assert!(store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());

    let done = get(&*store, job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(sample_result()));
    assert_eq!(done.error, None);
    assert_eq!(done.lease_until, None);
    assert_eq!(done.attempts, 1);
    let finished = done.finished_at.expect("finished_at is set");
    assert!(finished >= done.started_at.unwrap());
    assert!(done.updated_at >= finished);

    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Succeeded);
    assert_eq!(events[0].job_id, job.id);
    assert_eq!(events[0].status, Some(JobStatus::Succeeded));
    assert_eq!(events[0].job.as_ref(), Some(&done));

    // The attempt is over: its lease is worth nothing now.
    assert!(!store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert!(!store.heartbeat(&claim.lease, LONG_LEASE).await.unwrap());
    assert_eq!(get(&*store, job.id).await, done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_stores_the_error_and_the_attempt_error() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    let before = to_millis(Utc::now());
    let error = job_error(ErrorCode::ImageCorrupt, "the image cannot be decoded");

    assert!(store
        .finish(
            &claim.lease,
            Outcome::Errored {
                error: error.clone(),
                retry_after: None,
            }
        )
        .await
        .unwrap());

    let failed = get(&*store, job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error, Some(error.clone()));
    assert_eq!(failed.result, None);
    assert_eq!(failed.lease_until, None);
    assert!(failed.finished_at.is_some());
    assert_eq!(failed.attempt_errors.len(), 1);
    let ae = &failed.attempt_errors[0];
    assert_eq!(ae.attempt, 1);
    assert_eq!(ae.code, ErrorCode::ImageCorrupt);
    assert_eq!(ae.message, "the image cannot be decoded");
    assert!(ae.at >= before && ae.at <= Utc::now());

    let last = store.events_since(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Failed);
    assert_eq!(last.status, Some(JobStatus::Failed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_outcome_requeues_keeping_the_error() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let first = claim_one(&*store, "w", LONG_LEASE).await;
    let error = job_error(ErrorCode::InjectedFailure, "boom");
    let before = to_millis(Utc::now());

    assert!(store
        .finish(
            &first.lease,
            Outcome::Errored {
                error: error.clone(),
                retry_after: None,
            },
        )
        .await
        .unwrap());

    let queued = get(&*store, job.id).await;
    assert_eq!(queued.status, JobStatus::Queued);
    assert_eq!(queued.error, Some(error.clone()));
    assert_eq!(queued.attempt_errors.len(), 1);
    assert_eq!(queued.attempt_errors[0].attempt, 1);
    assert_eq!(queued.attempt_errors[0].code, ErrorCode::InjectedFailure);
    // Due again at once: the tests' rules have no backoff.
    assert!(queued.run_at >= before && queued.run_at <= to_millis(Utc::now()));
    assert_eq!(queued.lease_until, None);
    assert_eq!(queued.finished_at, None);
    assert_eq!(queued.attempts, 1);
    let last = store.events_since(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(last.kind, EventKind::Requeued);
    assert_eq!(last.status, Some(JobStatus::Queued));

    // The old lease is spent; the job runs again under a new one.
    assert!(!store.heartbeat(&first.lease, LONG_LEASE).await.unwrap());
    let second = claim_one(&*store, "w", LONG_LEASE).await;
    assert_ne!(second.lease, first.lease);
    assert_eq!(second.job.attempts, 2);
    assert_eq!(second.job.run_attempts, 2);
    assert_eq!(second.job.error, Some(error), "kept while running again");

    let second_error = JobError {
        code: ErrorCode::ImageCorrupt,
        message: "still broken".into(),
    };
    assert!(store
        .finish(
            &second.lease,
            Outcome::Errored {
                error: second_error.clone(),
                retry_after: None,
            }
        )
        .await
        .unwrap());
    let failed = get(&*store, job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error, Some(second_error));
    let attempts: Vec<_> = failed
        .attempt_errors
        .iter()
        .map(|e| (e.attempt, e.code))
        .collect();
    assert_eq!(
        attempts,
        vec![
            (1, ErrorCode::InjectedFailure),
            (2, ErrorCode::ImageCorrupt)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_after_a_retry_clears_the_error_but_keeps_the_history() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let first = claim_one(&*store, "w", LONG_LEASE).await;
    store
        .finish(&first.lease, errored(ErrorCode::Unavailable, "model busy"))
        .await
        .unwrap();
    let second = claim_one(&*store, "w", LONG_LEASE).await;
    assert!(store
        .finish(&second.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());

    let done = get(&*store, job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.error, None);
    assert_eq!(done.result, Some(sample_result()));
    assert_eq!(done.attempts, 2);
    assert_eq!(done.attempt_errors.len(), 1);
    assert_eq!(done.attempt_errors[0].code, ErrorCode::Unavailable);
}
