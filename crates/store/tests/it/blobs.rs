//! Creating jobs and storing their images.

use crate::common::*;
use imgclass_core::{EventKind, JobId, JobStatus};
use imgclass_store::{ListQuery, CHUNK_SIZE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_jobs_stores_image_job_and_created_event() {
    let (store, _dir) = fresh_store().await;
    let new = new_job(1);
    let image = new.image.clone();
    let sha = new.sha256.clone();
    let before = chrono::Utc::now();

    let jobs = store.create_jobs(vec![new]).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let created = &jobs[0];
    assert_eq!(created.status, JobStatus::Queued);
    assert_eq!(created.attempts, 0);
    assert_eq!(created.run_attempts, 0);
    assert_eq!(created.max_attempts, 3);
    assert_eq!(created.image_sha256, sha);
    assert_eq!(created.content_type, "image/png");
    assert_eq!(created.image_size, image.len() as u64);
    assert_eq!((created.width, created.height), (4, 3));
    assert_eq!(created.file_name.as_deref(), Some("image-1.png"));
    assert_eq!(created.lease_until, None);
    assert_eq!(created.error, None);
    assert!(created.attempt_errors.is_empty());
    assert_eq!(created.result, None);
    assert_eq!(created.started_at, None);
    assert_eq!(created.finished_at, None);
    assert!(created.created_at >= to_millis(before));
    assert!(
        created.run_at <= chrono::Utc::now(),
        "a new job is due at once"
    );

    let fetched = get(&*store, created.id).await;
    assert_eq!(&fetched, created);

    let stored = store.job_image(created.id).await.unwrap().unwrap();
    assert_eq!(stored.bytes, image);
    assert_eq!(stored.sha256, sha);
    assert_eq!(stored.content_type, "image/png");
    assert_eq!(store.read_blob(&sha).await.unwrap().unwrap(), image);

    let events = store.events_since(0, 100).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Created);
    assert_eq!(events[0].job_id, created.id);
    assert_eq!(events[0].status, Some(JobStatus::Queued));
    assert_eq!(events[0].job.as_ref(), Some(created));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_jobs_creates_one_job_per_image_in_order() {
    let (store, _dir) = fresh_store().await;
    let news: Vec<_> = (0..5).map(new_job).collect();
    let shas: Vec<_> = news.iter().map(|n| n.sha256.clone()).collect();
    let jobs = store.create_jobs(news).await.unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| j.image_sha256.clone())
            .collect::<Vec<_>>(),
        shas
    );
    let mut ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "every job has its own id");
    assert!(jobs.windows(2).all(|w| w[0].seq < w[1].seq));
    let kinds: Vec<_> = store
        .events_since(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.job_id))
        .collect();
    assert_eq!(
        kinds,
        jobs.iter()
            .map(|j| (EventKind::Created, j.id))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_stores_nothing() {
    let (store, _dir) = fresh_store().await;
    let good = new_job(1);
    let good_sha = good.sha256.clone();
    let mut bad = new_job(2);
    bad.sha256 = "not-a-sha256".into(); // violates the blobs.sha256 check
    assert!(store.create_jobs(vec![good, bad]).await.is_err());

    let page = store
        .list_jobs(&ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.jobs.is_empty(), "the whole batch is rolled back");
    assert_eq!(store.read_blob(&good_sha).await.unwrap(), None);
    assert_eq!(store.last_event_seq().await.unwrap(), 0);
    assert!(store.events_since(0, 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_images_share_one_blob() {
    let (store, _dir) = fresh_store().await;
    let first = new_job(7);
    let image = first.image.clone();
    let mut second = first.clone();
    second.file_name = Some("copy.png".into());

    // Once in the same batch, and once more in a later one.
    let batch = store
        .create_jobs(vec![first.clone(), second])
        .await
        .unwrap();
    let later = create(&*store, first).await;

    let sha = sha256_hex(&image);
    for job in batch.iter().chain([&later]) {
        assert_eq!(job.image_sha256, sha);
        assert_eq!(job.image_size, image.len() as u64);
        assert_eq!(store.job_image(job.id).await.unwrap().unwrap().bytes, image);
    }
    assert_eq!(batch[1].file_name.as_deref(), Some("copy.png"));
    assert_ne!(batch[0].id, batch[1].id);
    assert_ne!(batch[0].id, later.id);
    assert_eq!(store.read_blob(&sha).await.unwrap().unwrap(), image);

    // A different image gets a different blob.
    let other = create(&*store, new_job(8)).await;
    assert_ne!(other.image_sha256, sha);
    assert_ne!(
        store.read_blob(&other.image_sha256).await.unwrap().unwrap(),
        image
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_image_round_trips_through_chunks() {
    let (store, _dir) = fresh_store().await;
    // A 1024 x 854 RGB PNG stored uncompressed: about 2.5 MiB, so three chunks.
    let image = png(1024, 854, 42);
    assert!(
        image.len() > 2 * CHUNK_SIZE + CHUNK_SIZE / 2,
        "{}",
        image.len()
    );
    let job = create(&*store, job_for(image.clone(), 1024, 854, "big.png")).await;
    assert_eq!(job.image_size, image.len() as u64);

    let blob = store.read_blob(&job.image_sha256).await.unwrap().unwrap();
    assert_eq!(blob.len(), image.len());
    assert!(blob == image, "the bytes come back exactly");
    let stored = store.job_image(job.id).await.unwrap().unwrap();
    assert!(stored.bytes == image);
    assert_eq!(sha256_hex(&stored.bytes), job.image_sha256);

    // Exactly CHUNK_SIZE and CHUNK_SIZE + 1 bytes: the boundaries.
    for len in [CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE] {
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i % 251) as u8 ^ (len % 7) as u8)
            .collect();
        let job = create(&*store, job_for(bytes.clone(), 1, 1, "edge.bin")).await;
        let back = store.read_blob(&job.image_sha256).await.unwrap().unwrap();
        assert!(back == bytes, "{len} bytes round-trip");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_jobs_and_blobs_are_none() {
    let (store, _dir) = fresh_store().await;
    create(&*store, new_job(1)).await;
    let id = JobId::new();
    assert_eq!(store.get_job(id).await.unwrap(), None);
    assert!(store.job_image(id).await.unwrap().is_none());
    assert_eq!(
        store.read_blob(&sha256_hex(b"nothing")).await.unwrap(),
        None
    );
}
