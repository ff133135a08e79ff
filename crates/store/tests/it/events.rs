//! The event log, its live broadcast, and wake-ups of the dispatcher.

use crate::common::*;
use imgclass_core::{ErrorCode, EventKind, JobId, JobStatus};
use imgclass_store::{Event, Outcome};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn kinds_of(events: &[Event], job: JobId) -> Vec<EventKind> {
    events
        .iter()
        .filter(|e| e.job_id == job)
        .map(|e| e.kind)
        .collect()
}

async fn recv(rx: &mut broadcast::Receiver<Event>) -> Event {
    timeout(WAIT, rx.recv())
        .await
        .expect("an event within the timeout")
        .expect("the channel is open and not lagging")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_since_replays_a_jobs_life_in_order() {
    let (store, _dir) = fresh_store().await;
    assert_eq!(store.last_event_seq().await.unwrap(), 0);
    assert!(store.events_since(0, 100).await.unwrap().is_empty());

    let job = create(&*store, new_job(1)).await;
    let other = create(&*store, new_job(2)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!(claim.job.id, job.id);
    store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap();

    let events = store.events_since(0, 100).await.unwrap();
    assert_eq!(
        kinds_of(&events, job.id),
        vec![EventKind::Created, EventKind::Running, EventKind::Succeeded]
    );
    assert_eq!(kinds_of(&events, other.id), vec![EventKind::Created]);
    assert_eq!(events.len(), 4);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
    let statuses: Vec<_> = events
        .iter()
        .filter(|e| e.job_id == job.id)
        .map(|e| e.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            Some(JobStatus::Queued),
            Some(JobStatus::Running),
            Some(JobStatus::Succeeded)
        ]
    );
    // Replayed events carry the job's current state.
    let current = get(&*store, job.id).await;
    for e in events.iter().filter(|e| e.job_id == job.id) {
        assert_eq!(e.job.as_ref(), Some(&current));
    }
    assert_eq!(
        store.last_event_seq().await.unwrap(),
        events.last().unwrap().seq
    );

    // `after` is exclusive, `limit` caps the page.
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let page: Vec<i64> = store
        .events_since(seqs[0], 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, seqs[1..3]);
    assert!(store
        .events_since(*seqs.last().unwrap(), 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_logged() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let c = claim_one(&*store, "w", LONG_LEASE).await;
    store
        .finish(&c.lease, errored(ErrorCode::InjectedFailure, "boom"))
        .await
        .unwrap();
    let c = claim_one(&*store, "w", LONG_LEASE).await;
    store
        .finish(&c.lease, errored(ErrorCode::ImageCorrupt, "no"))
        .await
        .unwrap();
    store.retry(job.id).await.unwrap();
    store.cancel(job.id).await.unwrap();
    store.delete(job.id).await.unwrap();

    let events = store.events_since(0, 100).await.unwrap();
    assert_eq!(
        kinds_of(&events, job.id),
        vec![
            EventKind::Created,
            EventKind::Running,
            EventKind::Requeued,
            EventKind::Running,
            EventKind::Failed,
            EventKind::Retried,
            EventKind::Canceled,
            EventKind::Deleted,
        ]
    );
    let statuses: Vec<_> = events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        vec![
            Some(JobStatus::Queued),
            Some(JobStatus::Running),
            Some(JobStatus::Queued),
            Some(JobStatus::Running),
            Some(JobStatus::Failed),
            Some(JobStatus::Queued),
            Some(JobStatus::Canceled),
            None,
        ]
    );
    // The job is gone, so replayed events have no job.
    assert!(events.iter().all(|e| e.job.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_receive_events_as_they_are_committed() {
    let (store, _dir) = fresh_store().await;
    let mut rx = store.subscribe();

    let jobs = store
        .create_jobs(vec![new_job(1), new_job(2)])
        .await
        .unwrap();
    for job in &jobs {
        let e = recv(&mut rx).await;
        assert_eq!((e.kind, e.job_id), (EventKind::Created, job.id));
        assert_eq!(e.status, Some(JobStatus::Queued));
        assert_eq!(e.job.as_ref(), Some(job));
    }

    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    let e = recv(&mut rx).await;
    assert_eq!((e.kind, e.job_id), (EventKind::Running, jobs[0].id));
    assert_eq!(e.job.as_ref(), Some(&claim.job));

    // A late subscriber sees only what comes after it subscribed.
    let mut late = store.subscribe();

    store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap();
    let done = get(&*store, jobs[0].id).await;
    for rx in [&mut rx, &mut late] {
        let e = recv(rx).await;
        assert_eq!((e.kind, e.job_id), (EventKind::Succeeded, jobs[0].id));
        assert_eq!(e.status, Some(JobStatus::Succeeded));
        assert_eq!(e.job.as_ref(), Some(&done));
        assert_eq!(e.seq, store.last_event_seq().await.unwrap());
    }

    store.delete(jobs[1].id).await.unwrap();
    let e = recv(&mut rx).await;
    assert_eq!((e.kind, e.job_id), (EventKind::Deleted, jobs[1].id));
    assert!(e.job.is_none());

    // A fenced finish writes nothing, so nothing is broadcast.
    assert!(!store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));

    // The broadcast and the log agree.
    let logged: Vec<_> = store
        .events_since(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind, e.job_id))
        .collect();
    assert_eq!(logged.len(), 5);
    assert_eq!(logged.last().unwrap().1, EventKind::Deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_sequence_numbers_match_the_log() {
    let (store, _dir) = fresh_store().await;
    let mut rx = store.subscribe();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..10 {
                store.create_jobs(vec![new_job(i)]).await.unwrap();
            }
            while !store.claim("w", 3, LONG_LEASE).await.unwrap().is_empty() {}
        })
    };
    writer.await.unwrap();
    let logged = store.events_since(0, 1000).await.unwrap();
    assert_eq!(logged.len(), 20);
    for expected in &logged {
        let got = recv(&mut rx).await;
        assert_eq!(
            (got.seq, got.kind, got.job_id),
            (expected.seq, expected.kind, expected.job_id)
        );
    }
    assert_eq!(store.last_event_seq().await.unwrap(), logged[19].seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_jobs_wakes_a_waiting_dispatcher() {
    let (store, _dir) = fresh_store().await;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let wakeups = store.wakeups();
            let notified = wakeups.notified();
            tokio::pin!(notified);
            // Register before saying we are ready, so the wake-up cannot be missed.
            notified.as_mut().enable();
            ready_tx.send(()).unwrap();
            notified.await;
        })
    };
    ready_rx.await.unwrap();
    create(&*store, new_job(1)).await;
    timeout(WAIT, waiter)
        .await
        .expect("create_jobs wakes the waiter")
        .unwrap();
}

/// Waits on `store.wakeups()` while `action` runs; true if the waiter was woken.
async fn wakes<F, Fut>(store: &std::sync::Arc<dyn imgclass_store::Store>, action: F) -> bool
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let wakeups = store.wakeups();
    let notified = wakeups.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    action().await;
    timeout(Duration::from_millis(200), notified).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeues_and_retries_wake_the_dispatcher() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;

    // An attempt that will run again.
    let c = claim_one(&*store, "w", LONG_LEASE).await;
    assert!(
        wakes(&store, || async {
            store
                .finish(&c.lease, errored(ErrorCode::InjectedFailure, "boom"))
                .await
                .unwrap();
        })
        .await
    );

    // A lost worker's job back in the queue.
    claim_and_let_expire(&*store, "w").await;
    assert!(
        wakes(&store, || async {
            assert_eq!(store.rescue_expired().await.unwrap(), 1);
        })
        .await
    );

    // A manual retry.
    let c = claim_one(&*store, "w", LONG_LEASE).await;
    store
        .finish(&c.lease, errored(ErrorCode::ImageCorrupt, "bad"))
        .await
        .unwrap();
    assert!(
        wakes(&store, || async {
            store.retry(job.id).await.unwrap();
        })
        .await
    );
}

/// Writers commit in any order, but a subscriber (on PostgreSQL: every node's listener, reading
/// the log) receives every event once, in the order of the log, with no number skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_reach_subscribers_complete_and_in_order() {
    let (store, _dir) = fresh_store().await;
    let mut rx = store.subscribe();
    let start = store.last_event_seq().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                store.create_jobs(vec![new_job(t * 100 + i)]).await.unwrap();
                // Claims and finishes commit beside the uploads of the other writers.
                if let Some(claim) = store
                    .claim(&format!("w{t}"), 1, LONG_LEASE)
                    .await
                    .unwrap()
                    .pop()
                {
                    store
                        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = store.last_event_seq().await.unwrap();
    // 320 created; each claim a running and a succeeded.
    assert!(end - start >= 320, "{start}..{end}");
    let mut expected = start + 1;
    while expected <= end {
        let e = recv(&mut rx).await;
        assert_eq!(e.seq, expected, "events arrive in log order, none skipped");
        expected += 1;
    }
}
