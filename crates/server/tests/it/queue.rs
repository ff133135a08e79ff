//! The queue through the service: failures, manual retry, and recovery of a dead worker's job.

use crate::helpers::{fixture, Options, TestApp};
use imgclass_core::{EventKind, JobStatus};
use imgclass_store::{JobError, Outcome};
use imgclass_worker::{WorkerConfig, Workers};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_died_completes_exactly_once() {
    // A "worker" claims the job with a short lease and then dies (never heartbeats or finishes).
    let app = TestApp::without_workers().await;
    let ids = app.submit(&[("coffee.png", fixture("coffee.png"))]).await;
    let dead = app
        .store
        .claim("dead-worker", 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job.status, JobStatus::Running);

    // A live node starts; its sweeper puts the job back once the lease has expired.
    let workers = Workers::start(
        app.store.clone(),
        crate::helpers::factory(),
        WorkerConfig {
            workers: 1,
            sweep_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
    )
    .await
    .unwrap();
    let job = app.wait_for(ids[0], JobStatus::Succeeded).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(job.attempt_errors.len(), 1);
    assert_eq!(job.attempt_errors[0].code.as_str(), "stalled");

    // The dead worker coming back cannot overwrite the result (fencing).
    let stale = &dead[0].lease;
    assert!(!app
        .store
        .heartbeat(stale, Duration::from_secs(30))
        .await
        .unwrap());
    let overwrite = Outcome::Errored {
        error: JobError {
            code: imgclass_core::ErrorCode::ClassificationFailed,
            message: "late".into(),
        },
        retry_after: None,
    };
    assert!(!app.store.finish(stale, overwrite).await.unwrap());
    let job = app.store.get_job(ids[0]).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);

    let events = app.store.events_since(0, 100).await.unwrap();
    let kinds: Vec<EventKind> = events
        .iter()
        .filter(|e| e.job_id == ids[0])
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::Created,
            EventKind::Running,
            EventKind::Requeued,
            EventKind::Running,
            EventKind::Succeeded
        ]
    );
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_can_be_retried_by_hand() {
    let app = TestApp::spawn().await;
    let ids = app.submit(&[("coffee.png", fixture("coffee.png"))]).await;
    let job = app.wait_for(ids[0], JobStatus::Succeeded).await;
    assert_eq!(job.attempts, 1);
    // Fail a job on purpose: claim it directly and report a failure.
    let app2 = TestApp::without_workers().await;
    let ids = app2.submit(&[("coffee.png", fixture("coffee.png"))]).await;
    let claim = app2
        .store
        .claim("test", 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let error = JobError {
        code: imgclass_core::ErrorCode::ImageCorrupt,
        message: "the image cannot be decoded".into(),
    };
    assert!(app2
        .store
        .finish(
            &claim.lease,
            Outcome::Errored {
                error,
                retry_after: None,
            }
        )
        .await
        .unwrap());
    let (_, job) = app2.get(&format!("/api/jobs/{}", ids[0])).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "image_corrupt");
    assert_eq!(job["error"]["message"], "the image cannot be decoded");
    assert_eq!(job["attempt_errors"][0]["attempt"], 1);

    let (status, job) = app2.post(&format!("/api/jobs/{}/retry", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "queued");
    // Now a worker runs it to success.
    let workers = Workers::start(
        app2.store.clone(),
        crate::helpers::factory(),
        WorkerConfig::default(),
    )
    .await
    .unwrap();
    let job = app2.wait_for(ids[0], JobStatus::Succeeded).await;
    assert_eq!(job.attempts, 2);
    assert!(job.error.is_none());
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_found_by_the_worker_fail_at_once_with_a_clear_error() {
    // A stored image that the worker cannot decode fails without retries.
    let app = TestApp::with(Options {
        workers: 0,
        ..Options::default()
    })
    .await;
    let whole = fixture("chelsea.png");
    let bytes = whole[..whole.len() / 2].to_vec();
    let sha = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&bytes))
    };
    let jobs = app
        .store
        .create_jobs(vec![imgclass_store::NewJob {
            image: bytes.into(),
            sha256: sha,
            content_type: "image/png".into(),
            width: 1,
            height: 1,
            file_name: Some("x.png".into()),
            max_attempts: 3,
            priority: 0,
            owner: None,
            webhook: None,
            cached_result: None,
            model: imgclass_core::BUILTIN_MODEL.into(),
        }])
        .await
        .unwrap();
    let workers = Workers::start(
        app.store.clone(),
        crate::helpers::factory(),
        WorkerConfig::default(),
    )
    .await
    .unwrap();
    let job = app.wait_for(jobs[0].id, JobStatus::Failed).await;
    assert_eq!(job.attempts, 1);
    assert_eq!(job.error.unwrap().code.as_str(), "image_corrupt");
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_starts_a_new_job_without_waiting_for_a_poll() {
    // Poll interval of an hour: only the wake-up can start the job.
    let app = TestApp::with(Options {
        workers: 1,
        worker_config: WorkerConfig {
            poll_interval: Duration::from_secs(3600),
            ..WorkerConfig::default()
        },
        ..Options::default()
    })
    .await;
    // Let the worker go idle first.
    tokio::task::yield_now().await;
    let ids = app.submit(&[("coffee.png", fixture("coffee.png"))]).await;
    app.wait_for(ids[0], JobStatus::Succeeded).await;
}
