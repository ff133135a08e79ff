//! Images in an object store (an in-process one, and a directory): the database keeps only
//! their rows, every image reads back identical, the collector deletes what no job needs and
//! never what one does (with several collectors at once), and images move between stores.

use crate::common::*;
use imgclass_store::{BlobStore, Store, StoreError};
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;

/// A store on a fresh database whose new images go to a fresh in-process object store.
async fn with_objects() -> (Arc<dyn Store>, TestDb, BlobStore) {
    let db = TestDb::new().await;
    let url = format!("memory://{}", uuid_like());
    let blobs = BlobStore::open(&url, None).unwrap();
    let store = open_on(&db, blobs.clone()).await;
    (store, db, blobs)
}

/// A store on a fresh database whose new images go to a fresh directory (the large ones).
async fn with_a_directory() -> (Arc<dyn Store>, TestDb, BlobStore, tempfile::TempDir) {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let files = BlobStore::open(&format!("file://{}", dir.path().display()), None).unwrap();
    let store = open_on(&db, files.clone()).await;
    (store, db, files, dir)
}

async fn open_on(db: &TestDb, blobs: BlobStore) -> Arc<dyn Store> {
    let store = imgclass_store::open(&db.url, test_rules(), blobs, Default::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A count straight from the database.
async fn count(db: &TestDb, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_go_to_the_object_store_and_read_back_identical() {
    let (store, db, blobs) = with_objects().await;
    let small = new_job(1);
    let large = job_for(png(700, 500, 2), 700, 500, "large.png");
    let (small_bytes, large_bytes) = (small.image.clone(), large.image.clone());
    let jobs = store.create_jobs(vec![small, large]).await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM blob_chunks").await, 0);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM blobs WHERE store IS NULL").await,
        0
    );
    for (job, bytes) in jobs.iter().zip([&small_bytes, &large_bytes]) {
        let stored = blobs.get(&job.image_sha256).await.unwrap().unwrap();
        assert_eq!(&stored[..], &bytes[..]);
        let image = store.job_image(job.id).await.unwrap().unwrap();
        assert_eq!(&image.bytes, bytes);
    }
    // A claim carries no image from an object store: the worker reads it.
    let claims = store.claim("w", 10, LONG_LEASE).await.unwrap();
    assert!(claims.iter().all(|c| c.image.is_none()));
    for claim in claims {
        let read = store.read_blob(&claim.job.image_sha256).await.unwrap();
        assert!(read.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_deletes_an_image_only_when_no_job_needs_it() {
    let (store, db, blobs) = with_objects().await;
    let image = png(40, 30, 7);
    let a = create(&*store, job_for(image.clone(), 40, 30, "a.png")).await;
    let b = create(&*store, job_for(image.clone(), 40, 30, "b.png")).await;
    let sha = a.image_sha256.clone();
    store.delete(a.id).await.unwrap();
    let pass = store.collect_images(Duration::ZERO, true).await.unwrap();
    assert_eq!((pass.unreferenced, pass.orphans), (0, 0));
    assert!(blobs.get(&sha).await.unwrap().is_some(), "b still needs it");
    assert_eq!(
        store.read_blob(&sha).await.unwrap().as_deref(),
        Some(&image[..])
    );

    store.delete(b.id).await.unwrap();
    let pass = store.collect_images(Duration::ZERO, false).await.unwrap();
    assert_eq!(pass.unreferenced, 1);
    assert_eq!(blobs.get(&sha).await.unwrap(), None);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM blobs").await, 0);
    // Uploaded again, it is stored again.
    let c = create(&*store, job_for(image.clone(), 40, 30, "c.png")).await;
    assert_eq!(store.job_image(c.id).await.unwrap().unwrap().bytes, image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_is_deleted_after_the_grace_period_only() {
    let (store, db, blobs) = with_objects().await;
    // An upload that stored its image and stopped before its job was committed.
    let orphan = png(9, 9, 3);
    let sha = sha256_hex(&orphan);
    blobs.put(&sha, orphan.clone().into()).await.unwrap();
    let kept = create(&*store, new_job(4)).await;

    let pass = store
        .collect_images(Duration::from_secs(3600), true)
        .await
        .unwrap();
    assert_eq!(pass.orphans, 0, "younger than the grace period");
    assert!(blobs.get(&sha).await.unwrap().is_some());

    let pass = store.collect_images(Duration::ZERO, true).await.unwrap();
    assert_eq!(pass.orphans, 1);
    assert_eq!(blobs.get(&sha).await.unwrap(), None);
    assert!(store.job_image(kept.id).await.unwrap().is_some());
    assert_eq!(count(&db, "SELECT COUNT(*) FROM blobs").await, 1);
}

/// Two collectors (two API nodes) run while uploads of the same few images and deletes of
/// their jobs go on: every job left reads its image back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collectors_racing_uploads_and_deletes_never_lose_a_needed_image() {
    let (store, db, blobs) = with_objects().await;
    let second = open_on(&db, blobs.clone()).await;
    let images: Vec<Vec<u8>> = (0..3).map(|i| png(16, 16, 100 + i)).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut collectors = Vec::new();
    for s in [store.clone(), second.clone()] {
        let stop = stop.clone();
        collectors.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.collect_images(Duration::ZERO, true).await.unwrap();
            }
        }));
    }
    let mut kept = Vec::new();
    for round in 0..40 {
        let s = if round % 2 == 0 { &store } else { &second };
        let image = images[round % images.len()].clone();
        let job = create(&**s, job_for(image.clone(), 16, 16, "r.png")).await;
        if round % 3 == 0 {
            kept.push((job.id, image));
        } else {
            s.delete(job.id).await.unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in collectors {
        c.await.unwrap();
    }
    for (id, image) in kept {
        let read = store
            .job_image(id)
            .await
            .unwrap()
            .expect("the image is there");
        assert_eq!(read.bytes, image);
    }
}

/// An image uploaded again after the collector deleted it (which left a tombstone): the upload's
/// transaction finds the tombstone, stores the image again before it commits and clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_uploaded_again_after_the_collector_deleted_it_is_stored_and_its_tombstone_cleared(
) {
    let (store, db, blobs) = with_objects().await;
    let first = create(&*store, new_job(5)).await;
    store.delete(first.id).await.unwrap();
    store.collect_images(Duration::ZERO, true).await.unwrap();
    assert_eq!(blobs.get(&first.image_sha256).await.unwrap(), None);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM blob_tombstones").await, 1);

    let again = create(&*store, new_job(5)).await;
    assert_eq!(again.image_sha256, first.image_sha256);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM blob_tombstones").await, 0);
    let read = store.job_image(again.id).await.unwrap().expect("stored");
    assert_eq!(read.bytes, new_job(5).image);
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    assert_eq!(claim.job.id, again.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_move_between_the_database_and_object_stores_and_back() {
    let db = TestDb::new().await;
    let in_db = open_on(&db, BlobStore::database()).await;
    // Large enough to be kept as files (small images stay in the database).
    let jobs: Vec<_> = (0..5)
        .map(|i| job_for(png(300, 200, 40 + i), 300, 200, "big.png"))
        .collect();
    assert!(jobs
        .iter()
        .all(|j| j.image.len() > imgclass_store::SMALL_IMAGE_MAX));
    let images: Vec<Vec<u8>> = jobs.iter().map(|j| j.image.to_vec()).collect();
    let created = in_db.create_jobs(jobs).await.unwrap();
    assert!(count(&db, "SELECT COUNT(*) FROM blob_chunks").await > 0);

    let dir = tempfile::tempdir().unwrap();
    let files = BlobStore::open(&format!("file://{}", dir.path().display()), None).unwrap();
    // Two at a time, as an interrupted move would be resumed.
    let step = in_db.move_images(&files, 2).await.unwrap();
    assert_eq!((step.moved, step.remaining), (2, 3));
    let step = in_db.move_images(&files, 100).await.unwrap();
    assert_eq!((step.moved, step.remaining), (3, 0));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM blob_chunks").await, 0);
    for (job, image) in created.iter().zip(&images) {
        assert_eq!(
            &in_db.job_image(job.id).await.unwrap().unwrap().bytes,
            image
        );
    }
    // A node configured for the files reads them too, and they move back.
    let on_files = open_on(&db, files.clone()).await;
    let step = on_files
        .move_images(&BlobStore::database(), 100)
        .await
        .unwrap();
    assert_eq!((step.moved, step.remaining), (5, 0));
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM blobs WHERE store IS NOT NULL").await,
        0
    );
    for (job, image) in created.iter().zip(&images) {
        assert_eq!(
            &on_files.job_image(job.id).await.unwrap().unwrap().bytes,
            image
        );
        assert_eq!(files.get(&job.image_sha256).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_object_store_refuses_the_upload_and_stores_nothing() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "k");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "s");
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    let db = TestDb::new().await;
    let down = BlobStore::open("s3://images/here", None).unwrap();
    let store = open_on(&db, down).await;
    let err = store.create_jobs(vec![new_job(1)]).await.unwrap_err();
    assert!(matches!(err, StoreError::ImagesUnavailable(_)), "{err}");
    assert!(store.check_images().await.is_err());
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobs").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM blobs").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_attempt_waits_and_does_not_count() {
    let (store, _db, _blobs) = with_objects().await;
    let job = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    let wait = Duration::from_secs(30);
    let stored = store
        .finish(&claim.lease, imgclass_store::Outcome::Deferred { wait })
        .await
        .unwrap();
    assert!(stored);
    let after = get(&*store, job.id).await;
    assert_eq!(after.status, imgclass_core::JobStatus::Queued);
    assert_eq!((after.attempts, after.run_attempts), (0, 0));
    assert!(after.run_at > chrono::Utc::now() + chrono::Duration::seconds(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_keeps_large_images_and_the_database_small_ones() {
    let (store, db, files, _dir) = with_a_directory().await;
    let small = new_job(1);
    let large = job_for(png(300, 200, 9), 300, 200, "large.png");
    assert!(small.image.len() <= imgclass_store::SMALL_IMAGE_MAX);
    assert!(large.image.len() > imgclass_store::SMALL_IMAGE_MAX);
    let (small_bytes, large_bytes) = (small.image.clone(), large.image.clone());
    let jobs = store.create_jobs(vec![small, large]).await.unwrap();
    assert_eq!(files.get(&jobs[0].image_sha256).await.unwrap(), None);
    assert!(files.get(&jobs[1].image_sha256).await.unwrap().is_some());
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM blobs WHERE store IS NULL").await,
        1
    );
    assert_eq!(
        store.job_image(jobs[0].id).await.unwrap().unwrap().bytes,
        small_bytes
    );
    assert_eq!(
        store.job_image(jobs[1].id).await.unwrap().unwrap().bytes,
        large_bytes
    );
    // Nothing to move into the directory: the small image stays where it is.
    let step = store.move_images(&files, 100).await.unwrap();
    assert_eq!((step.moved, step.remaining), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_names_its_images_store_and_an_image_moved_since_is_still_read() {
    let (store, _db, files, _dir) = with_a_directory().await;
    let large = job_for(png(300, 200, 11), 300, 200, "large.png");
    let large_bytes = large.image.clone();
    store.create_jobs(vec![new_job(1), large]).await.unwrap();
    let claims = store.claim("w", 10, LONG_LEASE).await.unwrap();
    // The small image comes with its claim, from the database; the large one's claim names the
    // directory, where the worker reads it without reading its row.
    let (small, large): (Vec<_>, Vec<_>) = claims.into_iter().partition(|c| c.image.is_some());
    assert_eq!(small[0].image_store, None);
    let job = &large[0].job;
    let at = large[0].image_store.clone().expect("the directory");
    assert_eq!(at, files.url());
    let read = |at: String| {
        let store = store.clone();
        let (sha256, size) = (job.image_sha256.clone(), job.image_size);
        async move { store.read_blob_from(&sha256, &at, size).await.unwrap() }
    };
    assert_eq!(read(at.clone()).await.as_deref(), Some(&large_bytes[..]));
    // Moved into the database since the claim: the directory has it no more, its row says where.
    let step = store
        .move_images(&BlobStore::database(), 100)
        .await
        .unwrap();
    assert_eq!(step.moved, 1);
    assert_eq!(files.get(&job.image_sha256).await.unwrap(), None);
    assert_eq!(read(at).await.as_deref(), Some(&large_bytes[..]));
}

/// Counts the object store's puts.
#[derive(Default)]
struct Puts(std::sync::atomic::AtomicUsize);

impl imgclass_store::BlobObserver for Puts {
    fn observe(&self, op: imgclass_store::BlobOp, _ok: bool, _elapsed: Duration) {
        if op == imgclass_store::BlobOp::Put {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_recorded_already_is_not_stored_again() {
    let db = TestDb::new().await;
    // One image kept in the database, by a node of the old configuration.
    let old = open_on(&db, BlobStore::database()).await;
    let image = png(12, 12, 5);
    create(&*old, job_for(image.clone(), 12, 12, "old.png")).await;

    let puts = Arc::new(Puts::default());
    let url = format!("memory://{}", uuid_like());
    let blobs = BlobStore::open(&url, Some(puts.clone())).unwrap();
    let store = open_on(&db, blobs.clone()).await;
    let again = create(&*store, job_for(image.clone(), 12, 12, "again.png")).await;
    let fresh = create(&*store, new_job(6)).await;
    let third = create(&*store, new_job(6)).await;
    assert_eq!(puts.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(blobs.get(&again.image_sha256).await.unwrap(), None);
    for job in [&again, &fresh, &third] {
        assert!(store.job_image(job.id).await.unwrap().is_some());
    }
}
