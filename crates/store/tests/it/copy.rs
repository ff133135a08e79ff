//! Copying an installation into another database (`imgclass migrate --from --to`).

use crate::common::*;
use imgclass_core::{ErrorCode, JobStatus};
use imgclass_store::{copy_all, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_all_moves_jobs_results_and_images_once() {
    // The source is always an embedded SQLite installation; the target is the suite's backend.
    let source_db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", source_db.path().join("src.db").display());
    let source = imgclass_store::connect(&url).await.unwrap();
    source.migrate().await.unwrap();
    let (target, _db) = fresh_store().await;

    let done = create(&*source, new_job(1)).await;
    let c = claim_one(&*source, "w", LONG_LEASE).await;
    source
        .finish(&c.lease, Outcome::Succeeded(sample_result()))
        .await
        .unwrap();
    let failed = create(&*source, new_job(2)).await;
    let c = claim_one(&*source, "w", LONG_LEASE).await;
    source
        .finish(&c.lease, errored(ErrorCode::ImageCorrupt, "bad"))
        .await
        .unwrap();
    let running = create(&*source, new_job(3)).await;
    claim_one(&*source, "w", LONG_LEASE).await;
    // Shares the first image; has a webhook.
    let queued = create(
        &*source,
        imgclass_store::NewJob {
            webhook: Some(imgclass_store::Webhook {
                url: "https://hooks.example.com/x".into(),
                events: vec![imgclass_core::EventKind::Failed],
            }),
            ..new_job(1)
        },
    )
    .await;

    let (copied, skipped) = copy_all(&*source, &*target).await.unwrap();
    assert_eq!((copied, skipped), (4, 0));

    for id in [done.id, failed.id, running.id, queued.id] {
        let a = get(&*source, id).await;
        let b = get(&*target, id).await;
        assert_eq!(b.result, a.result);
        assert_eq!(b.error, a.error);
        assert_eq!(b.attempt_errors, a.attempt_errors);
        assert_eq!(b.attempts, a.attempts);
        assert_eq!(b.created_at, a.created_at);
        assert_eq!(b.finished_at, a.finished_at);
        assert_eq!(b.file_name, a.file_name);
        assert_eq!(b.webhook, a.webhook);
        let want = if a.status == JobStatus::Running {
            JobStatus::Queued
        } else {
            a.status
        };
        assert_eq!(b.status, want);
        assert_eq!(
            target.read_blob(&b.image_sha256).await.unwrap(),
            source.read_blob(&a.image_sha256).await.unwrap()
        );
    }
    // Same order: newest first.
    let listed = target
        .list_jobs(&imgclass_store::ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = listed.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, vec![queued.id, running.id, failed.id, done.id]);
    // A second run copies nothing again.
    assert_eq!(copy_all(&*source, &*target).await.unwrap(), (0, 4));
    // The copied queued jobs can be claimed in the target.
    let claims = target.claim("w", 10, LONG_LEASE).await.unwrap();
    assert_eq!(claims.len(), 2);
}
