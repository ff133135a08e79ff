//! The webhook outbox: a delivery is written with the change it announces (only for the events
//! the job's webhook asks for), claimed by one deliverer at a time under a lease, fenced by that
//! lease, and claimed again when its deliverer died.

use crate::common::*;
use imgclass_core::{EventKind, JobStatus};
use imgclass_store::{
    DeliveryAttempt, DeliveryNext, DeliveryStatus, NewJob, Outcome, Store, Webhook,
};
use std::time::Duration;

fn hooked(seed: u64, events: &[EventKind]) -> NewJob {
    NewJob {
        webhook: Some(Webhook {
            url: "https://hooks.example.com/imgclass".into(),
            events: events.to_vec(),
        }),
        ..new_job(seed)
    }
}

fn attempt(status: u16) -> DeliveryAttempt {
    DeliveryAttempt {
        at: chrono::Utc::now(),
        status_code: Some(status),
        error: None,
        duration_ms: 3,
    }
}

async fn run_to_success(store: &dyn Store, job: imgclass_core::JobId) {
    let claim = claim_one(store, "w", Duration::from_secs(30)).await;
    assert_eq!(claim.job.id, job);
    assert!(store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_written_with_each_change_the_webhook_asks_for() {
    let (store, _db) = fresh_store().await;
    let job = create(&*store, hooked(1, &Webhook::DEFAULT_EVENTS)).await;
    assert_eq!(job.webhook.as_ref().unwrap().events.len(), 3);
    let plain = create(&*store, new_job(2)).await;
    // Created and running are not asked for.
    let claim = claim_one(&*store, "w", Duration::from_secs(30)).await;
    assert_eq!(claim.job.id, job.id);
    assert!(store.deliveries(job.id).await.unwrap().is_empty());
    assert!(store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    run_to_success(&*store, plain.id).await;

    let deliveries = store.deliveries(job.id).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    let d = &deliveries[0];
    assert!(d.id.starts_with("msg_"), "{}", d.id);
    assert_eq!(d.event, EventKind::Succeeded);
    assert_eq!(d.status, DeliveryStatus::Pending);
    // The payload is the job right after the change.
    assert_eq!(d.job.status, JobStatus::Succeeded);
    assert_eq!(d.job.result, Some(sample_result()));
    assert!(store.deliveries(plain.id).await.unwrap().is_empty());
    // Read back, the job still knows its webhook.
    assert_eq!(get(&*store, job.id).await.webhook, job.webhook);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_and_cancel_are_delivered_when_asked_for() {
    let (store, _db) = fresh_store().await;
    let job = create(
        &*store,
        hooked(1, &[EventKind::Running, EventKind::Canceled]),
    )
    .await;
    claim_one(&*store, "w", Duration::from_secs(30)).await;
    store.cancel(job.id).await.unwrap();
    let events: Vec<EventKind> = store
        .deliveries(job.id)
        .await
        .unwrap()
        .iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(events, [EventKind::Running, EventKind::Canceled]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_delivery_is_not_claimed_twice_and_its_outcome_is_fenced() {
    let (store, _db) = fresh_store().await;
    let job = create(&*store, hooked(1, &Webhook::DEFAULT_EVENTS)).await;
    run_to_success(&*store, job.id).await;
    let a = store
        .claim_deliveries("a", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert!(store
        .claim_deliveries("b", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    // A retry later: pending again, not due yet, so nobody claims it.
    let later = chrono::Utc::now() + chrono::Duration::seconds(60);
    assert!(store
        .finish_delivery(&a[0], attempt(500), DeliveryNext::RetryAt(later))
        .await
        .unwrap());
    // The same claim cannot record twice.
    assert!(!store
        .finish_delivery(&a[0], attempt(200), DeliveryNext::Delivered)
        .await
        .unwrap());
    assert!(store
        .claim_deliveries("b", 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    let d = &store.deliveries(job.id).await.unwrap()[0];
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.attempt_log[0].status_code, Some(500));
    assert_eq!(
        d.next_attempt_at.map(|t| t.timestamp_millis()),
        Some(later.timestamp_millis())
    );
    assert!(store.next_delivery_due().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_deliverers_delivery_is_claimed_again_with_the_same_id() {
    let (store, _db) = fresh_store().await;
    let job = create(&*store, hooked(1, &Webhook::DEFAULT_EVENTS)).await;
    run_to_success(&*store, job.id).await;
    let dead = store
        .claim_deliveries("dead", 10, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    let again = store
        .claim_deliveries("live", 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, dead[0].id);
    assert!(store
        .finish_delivery(&again[0], attempt(204), DeliveryNext::Delivered)
        .await
        .unwrap());
    // The dead one coming back is fenced.
    assert!(!store
        .finish_delivery(&dead[0], attempt(200), DeliveryNext::Delivered)
        .await
        .unwrap());
    let d = &store.deliveries(job.id).await.unwrap()[0];
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Delivered, 1));
    assert_eq!(store.next_delivery_due().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_the_jobs_other_pending_deliveries_to_that_url() {
    let (store, _db) = fresh_store().await;
    let job = create(
        &*store,
        hooked(1, &[EventKind::Running, EventKind::Succeeded]),
    )
    .await;
    run_to_success(&*store, job.id).await;
    let claimed = store
        .claim_deliveries("a", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed[0].event, EventKind::Running);
    assert!(store
        .finish_delivery(&claimed[0], attempt(410), DeliveryNext::Gone)
        .await
        .unwrap());
    let statuses: Vec<DeliveryStatus> = store
        .deliveries(job.id)
        .await
        .unwrap()
        .iter()
        .map(|d| d.status)
        .collect();
    assert_eq!(statuses, [DeliveryStatus::Gone, DeliveryStatus::Gone]);
}
