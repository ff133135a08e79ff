//! Manual actions: retry (of failed and canceled jobs) and cancel, guarded by the state machine.

use crate::common::*;
use imgclass_core::{Action, ErrorCode, EventKind, JobId, JobStatus, TransitionError};
use imgclass_store::{Job, Outcome, Store, StoreError};

fn assert_invalid(result: Result<Job, StoreError>, from: JobStatus, action: Action) {
    match result {
        Err(StoreError::InvalidState(e)) => assert_eq!(e, TransitionError { from, action }),
        other => panic!("expected InvalidState from {from} on {action:?}, got {other:?}"),
    }
}

/// One job in each status: queued, running, succeeded, failed, canceled.
async fn one_of_each(store: &dyn Store) -> [Job; 5] {
    let failed = create(store, new_job(1)).await;
    let c = claim_one(store, "w", LONG_LEASE).await;
    store
        .finish(&c.lease, errored(ErrorCode::ImageCorrupt, "bad"))
        .await
        .unwrap();
    let succeeded = create(store, new_job(2)).await;
    let c = claim_one(store, "w", LONG_LEASE).await;
    store
        .finish(&c.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap();
    let running = create(store, new_job(3)).await;
    claim_one(store, "w", LONG_LEASE).await;
    let canceled = create(store, new_job(4)).await;
    store.cancel(canceled.id).await.unwrap();
    let queued = create(store, new_job(5)).await;

    let jobs = [
        get(store, queued.id).await,
        get(store, running.id).await,
        get(store, succeeded.id).await,
        get(store, failed.id).await,
        get(store, canceled.id).await,
    ];
    let statuses = jobs.each_ref().map(|j| j.status);
    assert_eq!(
        statuses,
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Canceled
        ]
    );
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_allowed_only_from_failed_and_canceled() {
    let (store, _dir) = fresh_store().await;
    let jobs = one_of_each(&*store).await;
    let seq = store.last_event_seq().await.unwrap();

    for job in jobs
        .iter()
        .filter(|j| !matches!(j.status, JobStatus::Failed | JobStatus::Canceled))
    {
        assert_invalid(store.retry(job.id).await, job.status, Action::Retry);
        assert_eq!(&get(&*store, job.id).await, job, "unchanged");
    }
    assert_eq!(store.last_event_seq().await.unwrap(), seq, "no event");

    let failed = &jobs[3];
    let retried = store.retry(failed.id).await.unwrap();
    assert_eq!(retried.status, JobStatus::Queued);
    assert_eq!(retried.id, failed.id);
    assert_eq!(retried.attempts, 1, "the attempt count is history");
    assert_eq!(retried.run_attempts, 0, "but the attempts start over");
    assert_eq!(retried.finished_at, None);
    assert_eq!(retried.attempt_errors, failed.attempt_errors);
    assert!(retried.run_at >= failed.finished_at.unwrap());
    assert_eq!(get(&*store, failed.id).await, retried);

    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Retried);
    assert_eq!(events[0].status, Some(JobStatus::Queued));

    // It is claimable again (along with the job that was queued all along).
    let claims = store.claim("w", 10, LONG_LEASE).await.unwrap();
    assert_eq!(claims.len(), 2);
    let claim = claims
        .iter()
        .find(|c| c.job.id == failed.id)
        .expect("the retried job is claimed");
    assert_eq!(claim.job.attempts, 2);
    assert_eq!(claim.job.run_attempts, 1);

    // A retried job is no longer failed, so it cannot be retried again.
    assert_invalid(
        store.retry(failed.id).await,
        JobStatus::Running,
        Action::Retry,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_allowed_only_from_queued_and_running() {
    let (store, _dir) = fresh_store().await;
    let jobs = one_of_each(&*store).await;
    let seq = store.last_event_seq().await.unwrap();

    for job in jobs
        .iter()
        .filter(|j| !matches!(j.status, JobStatus::Queued | JobStatus::Running))
    {
        assert_invalid(store.cancel(job.id).await, job.status, Action::Cancel);
        assert_eq!(&get(&*store, job.id).await, job, "unchanged");
    }
    assert_eq!(store.last_event_seq().await.unwrap(), seq, "no event");

    let queued = &jobs[0];
    let canceled = store.cancel(queued.id).await.unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert!(canceled.finished_at.is_some());
    assert_eq!(canceled.attempts, 0);
    assert_eq!(get(&*store, queued.id).await, canceled);
    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Canceled);
    assert_eq!(events[0].status, Some(JobStatus::Canceled));

    // A running job is canceled too; its lease is gone, so its worker cannot finish it.
    let running = &jobs[1];
    assert_eq!(running.status, JobStatus::Running);
    let canceled = store.cancel(running.id).await.unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert_eq!(canceled.lease_until, None);
    assert_eq!(store.events_since(seq, 10).await.unwrap().len(), 2);

    // Nothing is left to claim: the one queued job was canceled.
    assert!(store.claim("w", 10, LONG_LEASE).await.unwrap().is_empty());
    assert_invalid(
        store.cancel(queued.id).await,
        JobStatus::Canceled,
        Action::Cancel,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_job_can_be_retried_and_its_old_worker_cannot_finish_it() {
    let (store, _dir) = fresh_store().await;
    // A job canceled while it ran, after one failed attempt.
    let job = create(&*store, new_job(1)).await;
    let first = claim_one(&*store, "w1", LONG_LEASE).await;
    store
        .finish(&first.lease, errored(ErrorCode::Timeout, "slow"))
        .await
        .unwrap();
    let running = claim_one(&*store, "w1", LONG_LEASE).await;
    assert_eq!(running.job.run_attempts, 2);
    let canceled = store.cancel(job.id).await.unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled);
    let seq = store.last_event_seq().await.unwrap();

    let retried = store.retry(job.id).await.unwrap();
    assert_eq!(retried.status, JobStatus::Queued);
    assert_eq!(retried.attempts, 2, "the attempt count is history");
    assert_eq!(retried.run_attempts, 0, "a new round of attempts");
    assert_eq!(retried.stalls, 0);
    assert_eq!(retried.finished_at, None);
    assert_eq!(retried.lease_owner, None);
    assert_eq!(retried.attempt_errors, canceled.attempt_errors);
    assert!(retried.run_at >= canceled.finished_at.unwrap());
    assert_eq!(get(&*store, job.id).await, retried);
    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Retried);
    assert_eq!(events[0].status, Some(JobStatus::Queued));

    // The worker that ran it before the cancel still holds a lease that is no longer current:
    // its result is refused, and the job stays queued for a new claim.
    assert!(!store
        .finish(&running.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert_eq!(get(&*store, job.id).await.status, JobStatus::Queued);
    let again = claim_one(&*store, "w2", LONG_LEASE).await;
    assert_eq!(again.job.id, job.id);
    assert_eq!(again.job.attempts, 3);
    assert_eq!(again.job.run_attempts, 1);
    store
        .finish(&again.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap();
    let done = get(&*store, job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded);

    // Retried once, it is no longer canceled: a second retry is refused.
    assert_invalid(
        store.retry(job.id).await,
        JobStatus::Succeeded,
        Action::Retry,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    let (store, _dir) = fresh_store().await;
    create(&*store, new_job(1)).await;
    let id = JobId::new();
    assert!(matches!(store.retry(id).await, Err(StoreError::NotFound)));
    assert!(matches!(store.cancel(id).await, Err(StoreError::NotFound)));
    assert!(matches!(store.delete(id).await, Err(StoreError::NotFound)));
    assert_eq!(store.get_job(id).await.unwrap(), None);
    assert_eq!(
        store.last_event_seq().await.unwrap(),
        1,
        "only the created event"
    );
}
