//! Idempotency keys (claimed, completed in the jobs' own transaction, replayed, refused,
//! released, expired, taken over) and the result cache's lookup.

use crate::common::*;
use imgclass_core::{EventKind, JobStatus};
use imgclass_store::{IdempotencyKey, KeyClaim, KeyHold, ListQuery, Outcome, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(24 * 3600);
const HOLD: Duration = Duration::from_secs(60);

fn key(name: &str, fingerprint: &str) -> IdempotencyKey {
    IdempotencyKey {
        scope: String::new(),
        key: name.into(),
        fingerprint: fingerprint.into(),
    }
}

async fn hold(store: &dyn Store, key: &IdempotencyKey, ttl: Duration, hold: Duration) -> KeyHold {
    match store.claim_idempotency_key(key, ttl, hold).await.unwrap() {
        KeyClaim::Held(h) => h,
        other => panic!("expected the key to be held, got {other:?}"),
    }
}

async fn job_count(store: &dyn Store) -> usize {
    store
        .list_jobs(&ListQuery {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs
        .len()
}

#[tokio::test]
async fn a_completed_key_replays_its_jobs_and_refuses_another_request() {
    let (store, _db) = fresh_store().await;
    let k = key("k1", "request-a");
    let h = hold(&*store, &k, DAY, HOLD).await;

    // While the first request holds it, the key is in use, whatever the request.
    assert!(matches!(
        store.claim_idempotency_key(&k, DAY, HOLD).await.unwrap(),
        KeyClaim::InUse { .. }
    ));

    let jobs = store
        .create_jobs_keyed(vec![new_job(1), new_job(2)], Some(h))
        .await
        .unwrap();
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(
        store.claim_idempotency_key(&k, DAY, HOLD).await.unwrap(),
        KeyClaim::Replay(ids)
    );
    assert_eq!(
        store
            .claim_idempotency_key(&key("k1", "request-b"), DAY, HOLD)
            .await
            .unwrap(),
        KeyClaim::Mismatch
    );
    // Keys are per scope: another caller's "k1" is a key of its own.
    let theirs = IdempotencyKey {
        scope: "token-2".into(),
        ..key("k1", "request-b")
    };
    hold(&*store, &theirs, DAY, HOLD).await;
    assert_eq!(job_count(&*store).await, 2);
}

#[tokio::test]
async fn a_released_key_can_be_used_again_at_once() {
    let (store, _db) = fresh_store().await;
    let k = key("k2", "request-a");
    let h = hold(&*store, &k, DAY, HOLD).await;
    store.release_idempotency_key(&h).await.unwrap();
    let again = hold(&*store, &k, DAY, HOLD).await;
    assert_ne!(again.holder, h.holder);
    // The first holder's completion is refused now: nothing of it is stored.
    let lost = store
        .create_jobs_keyed(vec![new_job(1)], Some(h))
        .await
        .unwrap_err();
    assert!(matches!(lost, StoreError::KeyLost), "{lost:?}");
    assert_eq!(job_count(&*store).await, 0);
    store
        .create_jobs_keyed(vec![new_job(1)], Some(again))
        .await
        .unwrap();
    assert_eq!(job_count(&*store).await, 1);
}

#[tokio::test]
async fn a_hold_whose_request_died_passes_to_its_retry() {
    let (store, _db) = fresh_store().await;
    let k = key("k3", "request-a");
    let dead = hold(&*store, &k, DAY, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A different request may not take a lapsed key over: it was the other request's.
    assert_eq!(
        store
            .claim_idempotency_key(&key("k3", "request-b"), DAY, HOLD)
            .await
            .unwrap(),
        KeyClaim::Mismatch
    );
    let retry = hold(&*store, &k, DAY, HOLD).await;
    assert!(matches!(
        store.create_jobs_keyed(vec![new_job(1)], Some(dead)).await,
        Err(StoreError::KeyLost)
    ));
    store
        .create_jobs_keyed(vec![new_job(1)], Some(retry))
        .await
        .unwrap();
    assert_eq!(job_count(&*store).await, 1);
}

#[tokio::test]
async fn an_expired_key_is_a_new_key_and_is_pruned() {
    let (store, _db) = fresh_store().await;
    let short = Duration::from_millis(1);
    let h = hold(&*store, &key("k4", "request-a"), short, HOLD).await;
    store
        .create_jobs_keyed(vec![new_job(1)], Some(h))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Expired: even a different request may use it.
    let h = hold(&*store, &key("k4", "request-b"), short, HOLD).await;
    store
        .create_jobs_keyed(vec![new_job(2)], Some(h))
        .await
        .unwrap();
    assert_eq!(job_count(&*store).await, 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    hold(&*store, &key("k5", "request-a"), DAY, HOLD).await;
    let pruned = store
        .prune_idempotency_keys(chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(pruned, 1, "only the expired key goes");
    assert!(matches!(
        store
            .claim_idempotency_key(&key("k5", "request-a"), DAY, HOLD)
            .await
            .unwrap(),
        KeyClaim::InUse { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_key_make_one_set_of_jobs() {
    let (store, _db) = fresh_store().await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store: Arc<dyn Store> = store.clone();
            tokio::spawn(async move {
                let k = key("same", "request-a");
                match store.claim_idempotency_key(&k, DAY, HOLD).await.unwrap() {
                    KeyClaim::Held(h) => {
                        store
                            .create_jobs_keyed(vec![new_job(7)], Some(h))
                            .await
                            .unwrap();
                        "created"
                    }
                    KeyClaim::Replay(_) => "replayed",
                    KeyClaim::InUse { .. } => "in use",
                    KeyClaim::Mismatch => "mismatch",
                }
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let outcome = t.await.unwrap();
        assert_ne!(outcome, "mismatch");
        created += usize::from(outcome == "created");
    }
    assert_eq!(created, 1);
    assert_eq!(job_count(&*store).await, 1);
}

/// A group commit in which one request's key was lost: that request alone fails, with nothing
/// of it stored; the others are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_key_fails_only_its_own_request_in_a_group() {
    let (store, _db) = fresh_store().await;
    let k = key("lost", "request-a");
    let stale = hold(&*store, &k, DAY, HOLD).await;
    store.release_idempotency_key(&stale).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..12u64 {
        let store = store.clone();
        let stale = stale.clone();
        tasks.push(tokio::spawn(async move {
            let key = (i == 5).then_some(stale);
            store
                .create_jobs_keyed(vec![new_job(100 + i)], key)
                .await
                .map(|_| ())
        }));
    }
    let mut failed = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(()) => assert_ne!(i, 5),
            Err(e) => {
                assert_eq!(i, 5);
                assert!(matches!(e, StoreError::KeyLost), "{e:?}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1);
    assert_eq!(job_count(&*store).await, 11);
}

#[tokio::test]
async fn cached_results_match_the_image_and_the_model() {
    let (store, _db) = fresh_store().await;
    let first = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w1", Duration::from_secs(30)).await;
    assert_eq!(claim.job.id, first.id);
    store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap();
    let model = sample_result().model;
    let images = vec![first.image_sha256.clone(), new_job(2).sha256];
    let found = store.cached_results(&images, &model).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[&first.image_sha256], sample_result());
    let other_model = imgclass_core::ModelInfo {
        version: "2.0".into(),
        ..model
    };
    assert!(store
        .cached_results(&images, &other_model)
        .await
        .unwrap()
        .is_empty());

    // A job created from the cache is finished at once, marked, and announced like any success.
    let mut live = store.subscribe();
    let cached = create(
        &*store,
        imgclass_store::NewJob {
            cached_result: Some(sample_result()),
            ..new_job(1)
        },
    )
    .await;
    assert_eq!(cached.status, JobStatus::Succeeded);
    assert!(cached.cached);
    let stored = get(&*store, cached.id).await;
    assert!(stored.cached);
    assert_eq!(stored.result, Some(sample_result()));
    assert!(stored.finished_at.is_some());
    let kinds: Vec<EventKind> = [live.recv().await.unwrap(), live.recv().await.unwrap()]
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [EventKind::Created, EventKind::Succeeded]);
    // Nothing for a worker to do.
    assert!(store
        .claim("w1", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
}
