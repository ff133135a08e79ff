//! Queue controls: the global rate limit, release, bulk retry, pruning, statistics, stalled
//! jobs and cancelling running jobs.

use crate::common::*;
use chrono::Utc;
use imgclass_core::policy::Rules;
use imgclass_core::{ErrorCode, EventKind, JobId, JobStatus};
use imgclass_store::{
    Claim, Job, Lease, NewJob, Outcome, Pruned, QueueStats, RateLimit, RetryFilter, Store,
};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

const RATE: RateLimit = RateLimit {
    jobs: 2,
    per: Duration::from_secs(1),
};

/// Creates a job, claims it (it must be the only one due) and fails it with `code`.
async fn failed_with(store: &dyn Store, job: NewJob, code: ErrorCode) -> Job {
    // One attempt, so that any error ends it.
    let job = create(
        store,
        NewJob {
            max_attempts: 1,
            ..job
        },
    )
    .await;
    let claim = claim_one(store, "w", LONG_LEASE).await;
    assert_eq!(claim.job.id, job.id);
    assert!(store
        .finish(&claim.lease, errored(code, "no"))
        .await
        .unwrap());
    get(store, job.id).await
}

/// Creates a job, claims it (it must be the only one due) and lets it succeed.
async fn succeeded(store: &dyn Store, job: NewJob) -> Job {
    let job = create(store, job).await;
    let claim = claim_one(store, "w", LONG_LEASE).await;
    assert_eq!(claim.job.id, job.id);
    assert!(store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    get(store, job.id).await
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

fn claimed(claims: &[Claim]) -> Vec<JobId> {
    claims.iter().map(|c| c.job.id).collect()
}

async fn remaining(store: &dyn Store, rate: RateLimit) -> Option<u32> {
    store.stats(Some(rate)).await.unwrap().rate_limit_remaining
}

// ---------------------------------------------------------------------------------------------
// Rate limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_caps_starts_and_says_how_long_to_wait() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs((0..6).map(new_job).collect())
        .await
        .unwrap();

    let first = store
        .claim_limited("w", 10, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert_eq!(claimed(&first.claims), ids(&jobs[..2]));
    assert_eq!(first.rate_limited_for, None);

    // The window is used up: nothing is claimed, and the store says how long to wait.
    let seq = store.last_event_seq().await.unwrap();
    let second = store
        .claim_limited("w", 10, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert!(second.claims.is_empty());
    let wait = second.rate_limited_for.expect("rate limited");
    assert!(wait > Duration::ZERO, "{wait:?}");
    assert!(wait <= RATE.per, "{wait:?}");
    assert_eq!(store.last_event_seq().await.unwrap(), seq, "no event");
    for job in &jobs[2..] {
        assert_eq!(get(&*store, job.id).await, *job, "untouched");
    }

    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    let third = store
        .claim_limited("w", 10, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert_eq!(third.rate_limited_for, None);
    assert_eq!(
        claimed(&third.claims),
        ids(&jobs[2..4]),
        "a new window allows two more"
    );
    let started = |c: &Claim| c.job.started_at.expect("started");
    assert!(started(&third.claims[0]) - started(&first.claims[0]) >= chrono::Duration::seconds(1));

    // And the window is full again.
    let fourth = store
        .claim_limited("w", 10, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert!(fourth.claims.is_empty());
    assert!(fourth.rate_limited_for.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_takes_only_what_the_window_allows() {
    let (store, _dir) = fresh_store().await;
    store
        .create_jobs((0..3).map(new_job).collect())
        .await
        .unwrap();
    let one = store
        .claim_limited("w", 1, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert_eq!(one.claims.len(), 1);
    // One start is left in the window, although more are asked for.
    let rest = store
        .claim_limited("w", 10, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert_eq!(rest.claims.len(), 1);
    assert_eq!(rest.rate_limited_for, None);
    assert_eq!(store.stats(None).await.unwrap().queued, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_share_one_rate_limit() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs((0..6).map(new_job).collect())
        .await
        .unwrap();
    let expected: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();

    let tasks: Vec<_> = (0..4)
        .map(|w| {
            tokio::spawn(claim_all_limited(
                store.clone(),
                format!("worker-{w}"),
                RATE,
            ))
        })
        .collect();

    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("the claimers finish")
                .unwrap(),
        );
    }
    assert_eq!(seen.len(), 6, "each job is claimed exactly once");
    assert_eq!(
        seen.iter().map(|c| c.job.id).collect::<HashSet<_>>(),
        expected
    );

    let mut starts = Vec::new();
    for c in &seen {
        let stored = get(&*store, c.job.id).await;
        assert_eq!(stored.status, JobStatus::Running);
        assert_eq!(stored.attempts, 1);
        assert_eq!(stored.started_at, c.job.started_at);
        starts.push(stored.started_at.expect("started"));
    }
    starts.sort();
    // At most two starts in any one-second window: any three consecutive starts span at least
    // a second.
    for w in starts.windows(3) {
        assert!(
            w[2] - w[0] >= chrono::Duration::seconds(1),
            "three starts within a second: {starts:?}"
        );
    }
}

/// Claims with the limit until nothing is left, sleeping while rate-limited; returns the claims.
async fn claim_all_limited(store: Arc<dyn Store>, worker: String, rate: RateLimit) -> Vec<Claim> {
    let mut mine = Vec::new();
    loop {
        let batch = store
            .claim_limited(&worker, 2, LONG_LEASE, Some(rate))
            .await
            .expect("claim_limited");
        if let Some(wait) = batch.rate_limited_for {
            assert!(batch.claims.is_empty());
            assert!(wait > Duration::ZERO && wait <= rate.per, "{wait:?}");
            tokio::time::sleep(wait).await;
            continue;
        }
        if batch.claims.is_empty() {
            return mine; // not limited, and nothing left
        }
        mine.extend(batch.claims);
        tokio::task::yield_now().await;
    }
}

/// Two stores on one database (as two processes would be) share the limit, and their
/// claims do not fail on each other's write lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_database_share_the_rate_limit() {
    let db = TestDb::new().await;
    let a = db.open().await;
    let b = db.open().await;
    let jobs = a.create_jobs((0..12).map(new_job).collect()).await.unwrap();
    let rate = RateLimit {
        jobs: 3,
        per: Duration::from_millis(200),
    };

    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(claim_all_limited(store, format!("worker-{w}"), rate))
        })
        .collect();
    let mut starts = Vec::new();
    let mut seen = HashSet::new();
    for t in tasks {
        let claims = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("the claimers finish")
            .unwrap();
        for c in claims {
            assert!(seen.insert(c.job.id), "claimed twice");
            starts.push(c.job.started_at.expect("started"));
        }
    }
    assert_eq!(seen, jobs.iter().map(|j| j.id).collect::<HashSet<_>>());
    starts.sort();
    for w in starts.windows(4) {
        assert!(
            w[3] - w[0] >= chrono::Duration::milliseconds(200),
            "four starts within 200 ms: {starts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_starts_left_in_the_window() {
    let (store, _dir) = fresh_store().await;
    store
        .create_jobs((0..3).map(new_job).collect())
        .await
        .unwrap();
    assert_eq!(remaining(&*store, RATE).await, Some(2), "no start yet");
    assert_eq!(store.stats(None).await.unwrap().rate_limit_remaining, None);

    let a = store
        .claim_limited("w", 1, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert_eq!(a.claims.len(), 1);
    assert_eq!(remaining(&*store, RATE).await, Some(1));
    let b = store
        .claim_limited("w", 1, LONG_LEASE, Some(RATE))
        .await
        .unwrap();
    assert_eq!(b.claims.len(), 1);
    assert_eq!(remaining(&*store, RATE).await, Some(0));
    // None left: the next start is allowed when the first start leaves the window.
    let stats = store.stats(Some(RATE)).await.unwrap();
    let first_start = a.claims[0].job.started_at.unwrap();
    assert_eq!(
        stats.rate_limit_next_start_at,
        Some(first_start + chrono::Duration::from_std(RATE.per).unwrap())
    );
    // Looking does not use any start up; a wider limit sees the same starts.
    assert_eq!(remaining(&*store, RATE).await, Some(0));
    let wider = RateLimit { jobs: 5, ..RATE };
    assert_eq!(remaining(&*store, wider).await, Some(3));
}

// ---------------------------------------------------------------------------------------------
// Release

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_gives_a_claimed_job_back_without_counting_the_attempt() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    // One earlier attempt, so the counts are not just zero.
    let first = claim_one(&*store, "w", LONG_LEASE).await;
    assert!(store
        .finish(
            &first.lease,
            errored(ErrorCode::ClassificationFailed, "again"),
        )
        .await
        .unwrap());
    let before = get(&*store, job.id).await;
    assert_eq!((before.attempts, before.run_attempts), (1, 1));

    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!((claim.job.attempts, claim.job.run_attempts), (2, 2));
    let seq = store.last_event_seq().await.unwrap();
    assert!(store.release(&claim.lease).await.unwrap());

    let released = get(&*store, job.id).await;
    assert_eq!(released.status, JobStatus::Queued);
    assert_eq!(released.attempts, before.attempts);
    assert_eq!(released.run_attempts, before.run_attempts);
    assert_eq!(released.stalls, 0);
    assert_eq!(released.lease_until, None);
    assert_eq!(released.finished_at, None);
    assert!(released.run_at <= Utc::now(), "due at once");
    assert_eq!(released.error, before.error, "the last error is kept");
    assert_eq!(released.attempt_errors, before.attempt_errors);
    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Requeued);
    assert_eq!(events[0].status, Some(JobStatus::Queued));
    assert_eq!(events[0].job.as_ref(), Some(&released));

    // The lease is spent.
    assert!(!store.release(&claim.lease).await.unwrap());
    assert!(!store.heartbeat(&claim.lease, LONG_LEASE).await.unwrap());
    assert!(!store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert_eq!(get(&*store, job.id).await, released);

    // Claimed again, the attempt counts from where it was.
    let again = claim_one(&*store, "v", LONG_LEASE).await;
    assert_eq!(again.job.id, job.id);
    assert_eq!((again.job.attempts, again.job.run_attempts), (2, 2));
    let seq = store.last_event_seq().await.unwrap();

    // Neither the stale lease nor a foreign one releases the new claim.
    assert!(!store.release(&claim.lease).await.unwrap());
    let foreign = Lease {
        job_id: job.id,
        token: "someone-else/00000000-0000-0000-0000-000000000000".into(),
    };
    assert!(!store.release(&foreign).await.unwrap());
    let other = create(&*store, new_job(2)).await;
    let other_claim = claim_one(&*store, "v", LONG_LEASE).await;
    assert_eq!(other_claim.job.id, other.id);
    let seq_after_other = store.last_event_seq().await.unwrap();
    assert!(seq_after_other > seq);
    let crossed = Lease {
        job_id: job.id,
        token: other_claim.lease.token.clone(),
    };
    assert!(!store.release(&crossed).await.unwrap());
    assert_eq!(get(&*store, job.id).await, again.job, "unchanged");
    assert_eq!(
        store.last_event_seq().await.unwrap(),
        seq_after_other,
        "no event"
    );
    assert!(store.heartbeat(&again.lease, LONG_LEASE).await.unwrap());
}

// ---------------------------------------------------------------------------------------------
// Bulk retry

/// Three failed jobs (two image_corrupt, one classification_failed), then a succeeded and a
/// queued one.
async fn failed_mix(store: &dyn Store) -> ([Job; 3], Job, Job) {
    let a = failed_with(store, new_job(1), ErrorCode::ImageCorrupt).await;
    let b = failed_with(store, new_job(2), ErrorCode::ClassificationFailed).await;
    let c = failed_with(store, new_job(3), ErrorCode::ImageCorrupt).await;
    let ok = succeeded(store, new_job(4)).await;
    let queued = create(store, new_job(5)).await;
    ([a, b, c], ok, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_requeues_every_failed_job() {
    let (store, _dir) = fresh_store().await;
    let (failed, ok, queued) = failed_mix(&*store).await;
    let seq = store.last_event_seq().await.unwrap();

    let retried = store.retry_failed(&RetryFilter::default()).await.unwrap();
    assert_eq!(ids(&retried), ids(&failed));
    for job in &retried {
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.run_attempts, 0);
        assert_eq!(job.attempts, 1);
        assert_eq!(job.finished_at, None);
        assert_eq!(&get(&*store, job.id).await, job);
    }
    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.job_id, e.kind, e.status))
            .collect::<Vec<_>>(),
        failed
            .iter()
            .map(|j| (j.id, EventKind::Retried, Some(JobStatus::Queued)))
            .collect::<Vec<_>>()
    );
    assert_eq!(get(&*store, ok.id).await, ok);
    assert_eq!(get(&*store, queued.id).await, queued);

    // Nothing failed is left.
    assert!(store
        .retry_failed(&RetryFilter::default())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.last_event_seq().await.unwrap(),
        events.last().unwrap().seq
    );

    // All four are claimable again.
    let claims = store.claim("w", 10, LONG_LEASE).await.unwrap();
    assert_eq!(claims.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_with_an_error_code_takes_only_those() {
    let (store, _dir) = fresh_store().await;
    let ([a, b, c], ok, queued) = failed_mix(&*store).await;
    let seq = store.last_event_seq().await.unwrap();

    let none = RetryFilter {
        error_code: Some(ErrorCode::Timeout),
        ..Default::default()
    };
    assert!(store.retry_failed(&none).await.unwrap().is_empty());
    assert_eq!(store.last_event_seq().await.unwrap(), seq);

    let corrupt = RetryFilter {
        error_code: Some(ErrorCode::ImageCorrupt),
        ..Default::default()
    };
    let retried = store.retry_failed(&corrupt).await.unwrap();
    assert_eq!(ids(&retried), vec![a.id, c.id]);
    assert!(retried.iter().all(|j| j.status == JobStatus::Queued));
    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.job_id, e.kind))
            .collect::<Vec<_>>(),
        vec![(a.id, EventKind::Retried), (c.id, EventKind::Retried)]
    );
    assert_eq!(get(&*store, b.id).await, b, "another code: still failed");
    assert_eq!(get(&*store, ok.id).await, ok);
    assert_eq!(get(&*store, queued.id).await, queued);

    // The retried jobs still carry their last error, but they are no longer failed.
    assert!(store.retry_failed(&corrupt).await.unwrap().is_empty());
    let other = RetryFilter {
        error_code: Some(ErrorCode::ClassificationFailed),
        ..Default::default()
    };
    assert_eq!(ids(&store.retry_failed(&other).await.unwrap()), vec![b.id]);
}

// ---------------------------------------------------------------------------------------------
// Prune

/// Jobs in every state, some sharing images:
/// - succeeded (image 1), failed (image 2): their images are used by nobody else;
/// - succeeded (image 5), sharing its image with a running job;
/// - failed then retried by hand (image 4): queued again although it once finished;
/// - canceled (image 3), sharing its image with a queued job.
struct PruneFixture {
    succeeded: Job,
    failed: Job,
    shared_succeeded: Job,
    running: Claim,
    retried: Job,
    canceled: Job,
    queued: Job,
}

async fn prune_fixture(store: &dyn Store) -> PruneFixture {
    let succeeded_job = succeeded(store, new_job(1)).await;
    let failed = failed_with(store, new_job(2), ErrorCode::ImageCorrupt).await;
    let shared_succeeded = succeeded(store, new_job(5)).await;
    create(store, new_job(5)).await;
    let running = claim_one(store, "w", LONG_LEASE).await;
    let retried = failed_with(store, new_job(4), ErrorCode::Timeout).await;
    let retried = store.retry(retried.id).await.unwrap();
    let canceled = create(store, new_job(3)).await;
    let canceled = store.cancel(canceled.id).await.unwrap();
    let queued = create(store, new_job(3)).await;
    assert_eq!(running.job.image_sha256, shared_succeeded.image_sha256);
    assert_eq!(queued.image_sha256, canceled.image_sha256);
    PruneFixture {
        succeeded: succeeded_job,
        failed,
        shared_succeeded,
        running,
        retried,
        canceled,
        queued,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_finished_jobs_their_unused_images_and_old_events() {
    let (store, _dir) = fresh_store().await;
    let f = prune_fixture(&*store).await;
    let events_before = store.events_since(0, 1000).await.unwrap().len() as u64;
    let last_seq = store.last_event_seq().await.unwrap();

    let pruned = store
        .prune(Utc::now() + chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        pruned,
        Pruned {
            jobs: 4,
            blobs: 2,
            events: events_before,
        }
    );

    for gone in [&f.succeeded, &f.failed, &f.shared_succeeded, &f.canceled] {
        assert_eq!(
            store.get_job(gone.id).await.unwrap(),
            None,
            "{:?}",
            gone.status
        );
    }
    assert_eq!(get(&*store, f.running.job.id).await, f.running.job);
    assert_eq!(get(&*store, f.retried.id).await, f.retried);
    assert_eq!(get(&*store, f.queued.id).await, f.queued);

    // Images only pruned jobs used are gone; shared ones stay.
    assert_eq!(
        store.read_blob(&f.succeeded.image_sha256).await.unwrap(),
        None
    );
    assert_eq!(store.read_blob(&f.failed.image_sha256).await.unwrap(), None);
    for (job, seed) in [(&f.running.job, 5), (&f.retried, 4), (&f.queued, 3)] {
        assert_eq!(
            store.read_blob(&job.image_sha256).await.unwrap(),
            Some(png(4, 3, seed))
        );
        assert!(store.job_image(job.id).await.unwrap().is_some());
    }

    assert!(store.events_since(0, 1000).await.unwrap().is_empty());
    let stats = store.stats(None).await.unwrap();
    assert_eq!(
        (
            stats.queued,
            stats.running,
            stats.succeeded,
            stats.failed,
            stats.canceled
        ),
        (2, 1, 0, 0, 0)
    );

    // The queue goes on: the running job finishes, and event numbers keep growing.
    assert!(store
        .finish(&f.running.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    let events = store.events_since(0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].seq > last_seq);

    // Pruning again takes the job that has just finished and its image, now unused.
    let pruned = store
        .prune(Utc::now() + chrono::Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(
        pruned,
        Pruned {
            jobs: 1,
            blobs: 1,
            events: 1,
        }
    );
    assert_eq!(
        store.read_blob(&f.running.job.image_sha256).await.unwrap(),
        None
    );
    assert_eq!(get(&*store, f.queued.id).await, f.queued);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_with_a_cutoff_in_the_past_removes_nothing() {
    let (store, _dir) = fresh_store().await;
    let f = prune_fixture(&*store).await;
    let events = store.events_since(0, 1000).await.unwrap().len();
    let page = store
        .list_jobs(&imgclass_store::ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 7);

    let pruned = store
        .prune(Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(pruned, Pruned::default());
    for job in &page.jobs {
        assert_eq!(&get(&*store, job.id).await, job);
        assert!(store.read_blob(&job.image_sha256).await.unwrap().is_some());
    }
    assert_eq!(store.events_since(0, 1000).await.unwrap().len(), events);
    assert_eq!(get(&*store, f.succeeded.id).await, f.succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_finished_after_the_cutoff() {
    let (store, _dir) = fresh_store().await;
    // Both created before the cutoff; one finished before it, the other after it.
    let jobs = store
        .create_jobs(vec![new_job(1), new_job(2)])
        .await
        .unwrap();
    let finish_next = || async {
        let claim = claim_one(&*store, "w", LONG_LEASE).await;
        assert!(store
            .finish(&claim.lease, Outcome::Succeeded(sample_result()))
            .await
            .unwrap());
        get(&*store, claim.job.id).await
    };
    let early = finish_next().await;
    assert_eq!(early.id, jobs[0].id);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let cutoff = Utc::now();
    let events_before_cutoff = store.events_since(0, 1000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let late = finish_next().await;
    assert_eq!(late.id, jobs[1].id);
    let events_after_cutoff =
        store.events_since(0, 1000).await.unwrap().len() - events_before_cutoff.len();

    let pruned = store.prune(cutoff).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            jobs: 1,
            blobs: 1,
            events: events_before_cutoff.len() as u64,
        }
    );
    assert_eq!(store.get_job(early.id).await.unwrap(), None);
    assert_eq!(get(&*store, late.id).await, late);
    let left = store.events_since(0, 1000).await.unwrap();
    assert_eq!(left.len(), events_after_cutoff);
    assert!(left.iter().all(|e| e.job_id == late.id && e.at >= cutoff));
}

// ---------------------------------------------------------------------------------------------
// Stats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_jobs_per_status() {
    let (store, _dir) = fresh_store().await;
    assert_eq!(store.stats(None).await.unwrap(), QueueStats::default());

    // The oldest queued job: created first, back in the queue but not due for an hour.
    let oldest = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert!(store
        .finish(
            &claim.lease,
            errored_asking(
                ErrorCode::ClassificationFailed,
                "later",
                Duration::from_secs(3600)
            ),
        )
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;

    succeeded(&*store, new_job(2)).await;
    succeeded(&*store, new_job(3)).await;
    failed_with(&*store, new_job(4), ErrorCode::ImageCorrupt).await;
    create(&*store, new_job(5)).await;
    claim_one(&*store, "w", LONG_LEASE).await;
    let canceled = create(&*store, new_job(6)).await;
    store.cancel(canceled.id).await.unwrap();
    let queued = store
        .create_jobs((7..10).map(new_job).collect())
        .await
        .unwrap();
    assert!(queued.iter().all(|j| j.created_at > oldest.created_at));

    // Every job ended within the last minute, the last of the per-minute figures.
    let by = imgclass_store::FinishedCounts {
        succeeded: 2,
        failed: 1,
        canceled: 1,
    };
    let mut per_minute = vec![imgclass_store::FinishedCounts::default(); QueueStats::MINUTES];
    per_minute[QueueStats::MINUTES - 1] = by;
    assert_eq!(
        store.stats(None).await.unwrap(),
        QueueStats {
            queued: 4,
            running: 1,
            succeeded: 2,
            failed: 1,
            canceled: 1,
            oldest_queued_at: Some(oldest.created_at),
            finished_last_minute: 4,
            finished_last_minute_by: by,
            finished_per_minute: per_minute,
            rate_limit_remaining: None,
            rate_limit_next_start_at: None,
        }
    );

    // Once the oldest is taken, the next oldest queued job counts.
    store.cancel(oldest.id).await.unwrap();
    let stats = store.stats(None).await.unwrap();
    assert_eq!(stats.oldest_queued_at, Some(queued[0].created_at));
    assert_eq!((stats.queued, stats.canceled), (3, 2));
    assert_eq!(stats.finished_last_minute, 5);
}

// ---------------------------------------------------------------------------------------------
// Stalls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_stalls_too_often_fails_with_attempts_left() {
    let (store, _dir) = fresh_store_with(Rules {
        max_stalls: 1,
        ..test_rules()
    })
    .await;
    let job = create(
        &*store,
        NewJob {
            max_attempts: 5,
            priority: 0,
            ..new_job(1)
        },
    )
    .await;
    assert_eq!(job.stalls, 0);

    // First lost worker: within the allowance, queued again.
    let first = claim_and_let_expire(&*store, "a").await;
    assert_eq!(first.job.stalls, 0);
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let requeued = get(&*store, job.id).await;
    assert_eq!(requeued.status, JobStatus::Queued);
    assert_eq!(requeued.stalls, 1);
    assert_eq!(requeued.run_attempts, 1);
    assert_eq!(
        requeued.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Stalled)
    );
    let last = store.events_since(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind, last.status),
        (EventKind::Requeued, Some(JobStatus::Queued))
    );

    // Second lost worker: more than one stall, so it fails although three attempts are left.
    let second = claim_and_let_expire(&*store, "b").await;
    assert_eq!(second.job.stalls, 1);
    assert_eq!(second.job.run_attempts, 2);
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let failed = get(&*store, job.id).await;
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.stalls, 2);
    assert!(failed.run_attempts < failed.max_attempts);
    assert_eq!(
        failed.error.as_ref().map(|e| e.code),
        Some(ErrorCode::Stalled)
    );
    assert_eq!(failed.lease_until, None);
    assert!(failed.finished_at.is_some());
    assert_eq!(
        failed
            .attempt_errors
            .iter()
            .map(|e| (e.attempt, e.code))
            .collect::<Vec<_>>(),
        vec![(1, ErrorCode::Stalled), (2, ErrorCode::Stalled)]
    );
    let last = store.events_since(0, 100).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.kind, last.status),
        (EventKind::Failed, Some(JobStatus::Failed))
    );

    assert!(store.claim("c", 10, LONG_LEASE).await.unwrap().is_empty());
    assert_eq!(store.rescue_expired().await.unwrap(), 0);
    assert!(!store
        .finish(&second.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_rescue_allows_three_stalls() {
    let (store, _dir) = fresh_store().await;
    let job = create(
        &*store,
        NewJob {
            max_attempts: 10,
            priority: 0,
            ..new_job(1)
        },
    )
    .await;
    for stalls in 1..=Rules::default().max_stalls {
        claim_and_let_expire(&*store, "w").await;
        assert_eq!(store.rescue_expired().await.unwrap(), 1);
        let j = get(&*store, job.id).await;
        assert_eq!((j.status, j.stalls), (JobStatus::Queued, stalls));
    }
    claim_and_let_expire(&*store, "w").await;
    assert_eq!(store.rescue_expired().await.unwrap(), 1);
    let j = get(&*store, job.id).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.stalls, Rules::default().max_stalls + 1);
}

// ---------------------------------------------------------------------------------------------
// Cancel while running

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_running_job_fences_its_worker() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    let seq = store.last_event_seq().await.unwrap();

    let canceled = store.cancel(job.id).await.unwrap();
    assert_eq!(canceled.status, JobStatus::Canceled);
    assert_eq!(canceled.lease_until, None);
    assert!(canceled.finished_at.is_some());
    assert_eq!(canceled.result, None);
    assert_eq!(canceled.attempts, 1);
    assert_eq!(get(&*store, job.id).await, canceled);
    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Canceled);
    assert_eq!(events[0].status, Some(JobStatus::Canceled));
    let seq = events[0].seq;

    // The worker finds out at its next heartbeat, and cannot write its result.
    assert!(!store.heartbeat(&claim.lease, LONG_LEASE).await.unwrap());
    assert!(!store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert!(!store
        .finish(&claim.lease, errored(ErrorCode::Internal, "late"))
        .await
        .unwrap());
    assert!(!store
        .finish(&claim.lease, errored(ErrorCode::Internal, "late"),)
        .await
        .unwrap());
    assert!(!store.release(&claim.lease).await.unwrap());
    assert_eq!(get(&*store, job.id).await, canceled, "unchanged");
    assert_eq!(store.last_event_seq().await.unwrap(), seq, "no event");

    // Nothing to rescue or claim.
    assert_eq!(store.rescue_expired().await.unwrap(), 0);
    assert!(store.claim("w", 10, LONG_LEASE).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_job_with_an_expired_lease_is_not_rescued() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", Duration::from_millis(1)).await;
    let canceled = store.cancel(job.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.rescue_expired().await.unwrap(), 0);
    assert_eq!(get(&*store, job.id).await, canceled);
    assert!(!store.heartbeat(&claim.lease, LONG_LEASE).await.unwrap());
}
