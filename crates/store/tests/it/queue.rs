//! Taking jobs from the queue.

use crate::common::*;
use chrono::Utc;
use imgclass_core::{ErrorCode, JobId, JobStatus};
use imgclass_store::Outcome;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_moves_a_queued_job_to_running_under_a_lease() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let before = to_millis(Utc::now());

    let claim = claim_one(&*store, "w1", Duration::from_secs(30)).await;
    assert_eq!(claim.job.id, job.id);
    assert_eq!(claim.lease.job_id, job.id);
    assert!(!claim.lease.token.is_empty());
    assert_eq!(claim.job.status, JobStatus::Running);
    assert_eq!(claim.job.attempts, 1);
    assert_eq!(claim.job.run_attempts, 1);
    let lease_until = claim.job.lease_until.expect("a running job has a lease");
    assert!(lease_until >= before + chrono::Duration::seconds(30));
    assert!(lease_until <= Utc::now() + chrono::Duration::seconds(30));
    assert!(claim.job.started_at.expect("started") >= before);

    let stored = get(&*store, job.id).await;
    assert_eq!(stored, claim.job);

    // Nothing else is due.
    assert!(store.claim("w2", 10, LONG_LEASE).await.unwrap().is_empty());
}

/// A small image comes with its claim (no second read); a larger one is left to `read_blob`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_carries_a_small_image_and_leaves_a_large_one_to_read_blob() {
    let (store, _dir) = fresh_store().await;
    let small = new_job(1);
    // 160×160 RGB, stored uncompressed: about 77 KB, above the inline limit.
    let large = job_for(png(160, 160, 2), 160, 160, "large.png");
    assert!(large.image.len() > imgclass_store::INLINE_IMAGE_MAX);
    let (small_bytes, large_bytes) = (small.image.clone(), large.image.clone());
    store.create_jobs(vec![small, large]).await.unwrap();

    let claims = store.claim("w", 2, LONG_LEASE).await.unwrap();
    assert_eq!(claims.len(), 2);
    assert_eq!(claims[0].image.as_deref(), Some(&small_bytes[..]));
    assert_eq!(claims[1].image, None);
    let read = store
        .read_blob(&claims[1].job.image_sha256)
        .await
        .unwrap()
        .expect("the large image is stored");
    assert_eq!(read, large_bytes);
}

/// Once the process claims jobs, a large image uploaded through the same store comes with its
/// claim from memory, for each job that uses it; another store handle (another node) reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_carries_a_large_image_uploaded_by_the_claiming_process() {
    let (store, db) = fresh_store().await;
    assert!(store.claim("w", 1, LONG_LEASE).await.unwrap().is_empty());
    let large = job_for(png(160, 160, 3), 160, 160, "large.png");
    let again = job_for(png(160, 160, 3), 160, 160, "again.png");
    let bytes = large.image.clone();
    store.create_jobs(vec![large, again]).await.unwrap();

    let claims = store.claim("w", 1, LONG_LEASE).await.unwrap();
    assert_eq!(claims[0].image.as_deref(), Some(&bytes[..]));
    let claims = store.claim("w", 1, LONG_LEASE).await.unwrap();
    assert_eq!(
        claims[0].image.as_deref(),
        Some(&bytes[..]),
        "kept for both jobs"
    );

    // Uploaded through this process, claimed by another: read from its store there.
    let third = job_for(png(160, 160, 4), 160, 160, "third.png");
    let third = store.create_jobs(vec![third]).await.unwrap().remove(0);
    let other = db.open().await;
    let claims = other.claim("w2", 1, LONG_LEASE).await.unwrap();
    assert_eq!(claims[0].job.id, third.id);
    assert_eq!(
        claims[0].image, None,
        "another process reads it from its store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_takes_at_most_limit_jobs_oldest_first() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs((0..5).map(new_job).collect())
        .await
        .unwrap();

    let first = store.claim("w", 2, LONG_LEASE).await.unwrap();
    assert_eq!(
        first.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![jobs[0].id, jobs[1].id]
    );
    let rest = store.claim("w", 10, LONG_LEASE).await.unwrap();
    assert_eq!(
        rest.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![jobs[2].id, jobs[3].id, jobs[4].id]
    );
    assert!(store.claim("w", 10, LONG_LEASE).await.unwrap().is_empty());
    // Every claim has a lease naming its own job.
    for c in first.iter().chain(&rest) {
        assert_eq!(c.lease.job_id, c.job.id);
        assert_eq!(c.job.status, JobStatus::Running);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_give_every_job_to_exactly_one_claimer() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs((0..20).map(new_job).collect())
        .await
        .unwrap();
    let expected: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();

    let start = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let mut mine = Vec::new();
                loop {
                    let claims = store
                        .claim(&format!("worker-{w}"), 3, LONG_LEASE)
                        .await
                        .expect("claim");
                    if claims.is_empty() {
                        break;
                    }
                    assert!(claims.len() <= 3);
                    mine.extend(claims);
                    tokio::task::yield_now().await;
                }
                mine
            })
        })
        .collect();

    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    assert_eq!(seen.len(), 20, "each job is claimed exactly once");
    let ids: HashSet<JobId> = seen.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, expected);
    for c in &seen {
        assert_eq!(c.job.attempts, 1, "no job was claimed twice");
        let stored = get(&*store, c.job.id).await;
        assert_eq!(stored.status, JobStatus::Running);
        assert_eq!(stored.attempts, 1);
        // The lease recorded is the one its claimer holds.
        assert!(store.heartbeat(&c.lease, LONG_LEASE).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_due_later_is_not_claimed() {
    let (store, _dir) = fresh_store().await;
    assert_eq!(store.next_due().await.unwrap(), None, "nothing queued");
    let job = create(&*store, new_job(1)).await;
    assert_eq!(store.next_due().await.unwrap(), Some(job.run_at));

    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!(store.next_due().await.unwrap(), None, "nothing queued");
    let earliest = Utc::now() + chrono::Duration::hours(1);
    let outcome = errored_asking(
        ErrorCode::ClassificationFailed,
        "try later",
        Duration::from_secs(3600),
    );
    assert!(store.finish(&claim.lease, outcome).await.unwrap());

    let queued = get(&*store, job.id).await;
    assert_eq!(queued.status, JobStatus::Queued);
    // The wait the attempt asked for, counted from when its outcome was stored.
    assert!(queued.run_at >= to_millis(earliest));
    assert!(queued.run_at <= Utc::now() + chrono::Duration::hours(1));
    let run_at = queued.run_at;
    assert!(store.claim("w", 10, LONG_LEASE).await.unwrap().is_empty());
    assert_eq!(store.next_due().await.unwrap(), Some(to_millis(run_at)));

    // A job due now is claimed before it, and next_due reports the earliest.
    let now_job = create(&*store, new_job(2)).await;
    assert_eq!(store.next_due().await.unwrap(), Some(now_job.run_at));
    let claims = store.claim("w", 10, LONG_LEASE).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].job.id, now_job.id);
    assert_eq!(store.next_due().await.unwrap(), Some(to_millis(run_at)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceled_and_finished_jobs_are_not_claimed() {
    let (store, _dir) = fresh_store().await;
    let a = create(&*store, new_job(1)).await;
    store.cancel(a.id).await.unwrap();
    assert!(store.claim("w", 10, LONG_LEASE).await.unwrap().is_empty());
    assert_eq!(store.next_due().await.unwrap(), None);

    let b = create(&*store, new_job(2)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!(claim.job.id, b.id);
    assert!(store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert!(store.claim("w", 10, LONG_LEASE).await.unwrap().is_empty());
}
