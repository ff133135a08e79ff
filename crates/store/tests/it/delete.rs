//! Deleting jobs and, when no other job uses them, their images.

use crate::common::*;
use imgclass_core::{EventKind, JobStatus};
use imgclass_store::{ListQuery, Outcome, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_job_and_its_unshared_image() {
    let (store, _dir) = fresh_store().await;
    let job = create(&*store, new_job(1)).await;
    let other = create(&*store, new_job(2)).await;
    let seq = store.last_event_seq().await.unwrap();

    store.delete(job.id).await.unwrap();
    assert_eq!(store.get_job(job.id).await.unwrap(), None);
    assert!(store.job_image(job.id).await.unwrap().is_none());
    assert_eq!(store.read_blob(&job.image_sha256).await.unwrap(), None);

    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Deleted);
    assert_eq!(events[0].job_id, job.id);
    assert_eq!(events[0].status, None);
    assert!(events[0].job.is_none());

    // The other job is untouched.
    assert_eq!(get(&*store, other.id).await, other);
    assert!(store
        .read_blob(&other.image_sha256)
        .await
        .unwrap()
        .is_some());
    let page = store
        .list_jobs(&ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs, vec![other]);

    // Deleting again: it is gone.
    assert!(matches!(
        store.delete(job.id).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_image_stays_until_its_last_job_is_deleted() {
    let (store, _dir) = fresh_store().await;
    let new = new_job(1);
    let image = new.image.clone();
    let jobs = store
        .create_jobs(vec![new.clone(), new.clone(), new])
        .await
        .unwrap();
    let sha = jobs[0].image_sha256.clone();

    store.delete(jobs[0].id).await.unwrap();
    assert_eq!(store.read_blob(&sha).await.unwrap().unwrap(), image);
    store.delete(jobs[2].id).await.unwrap();
    assert_eq!(store.read_blob(&sha).await.unwrap().unwrap(), image);
    assert_eq!(
        store.job_image(jobs[1].id).await.unwrap().unwrap().bytes,
        image
    );
    store.delete(jobs[1].id).await.unwrap();
    assert_eq!(store.read_blob(&sha).await.unwrap(), None);

    // The same image uploaded again is stored afresh.
    let again = create(&*store, new_job(1)).await;
    assert_eq!(again.image_sha256, sha);
    assert_eq!(store.read_blob(&sha).await.unwrap().unwrap(), image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_image_is_deleted_with_all_its_chunks() {
    let (store, _dir) = fresh_store().await;
    let image = png(1024, 700, 3);
    let job = create(&*store, job_for(image.clone(), 1024, 700, "big.png")).await;
    store.delete(job.id).await.unwrap();
    assert_eq!(store.read_blob(&job.image_sha256).await.unwrap(), None);
    // Re-creating it must not collide with leftover chunks.
    let again = create(&*store, job_for(image.clone(), 1024, 700, "big.png")).await;
    assert!(store.read_blob(&again.image_sha256).await.unwrap().unwrap() == image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_and_running_jobs_can_be_deleted() {
    let (store, _dir) = fresh_store().await;
    let done = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap();
    store.delete(done.id).await.unwrap();
    assert_eq!(store.get_job(done.id).await.unwrap(), None);

    let running = create(&*store, new_job(2)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!(get(&*store, running.id).await.status, JobStatus::Running);
    store.delete(running.id).await.unwrap();
    // Its worker can no longer write anything.
    assert!(!store.heartbeat(&claim.lease, LONG_LEASE).await.unwrap());
    assert!(!store
        .finish(&claim.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap());
    assert_eq!(store.get_job(running.id).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_image_while_it_is_deleted_gives_all_or_nothing() {
    let (store, _dir) = fresh_store().await;
    let image = png(1024, 700, 9);
    for _ in 0..30 {
        let job = create(&*store, job_for(image.clone(), 1024, 700, "big.png")).await;
        let reader = {
            let store = store.clone();
            let sha = job.image_sha256.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..5 {
                    results.push(store.read_blob(&sha).await.map(|b| b.map(|b| b.len())));
                }
                results
            })
        };
        tokio::task::yield_now().await;
        store.delete(job.id).await.unwrap();
        for r in reader.await.unwrap() {
            match r {
                Ok(None) => {}
                Ok(Some(len)) => assert_eq!(len, image.len()),
                Err(e) => panic!("read_blob failed while the image was deleted: {e}"),
            }
        }
    }
}
