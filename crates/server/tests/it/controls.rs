//! Queue controls through the service: automatic retries, fault injection, rate limit,
//! heartbeats, timeouts, cancellation of a running job, bulk retry, statistics, shutdown.

use crate::helpers::{fixture, slow_factory, Options, TestApp};
use imgclass_core::policy::Rules;
use imgclass_core::{ErrorCode, EventKind, JobStatus};
use imgclass_store::RateLimit;
use imgclass_worker::{ClassifierFactory, WorkerConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn fast_retries() -> Rules {
    Rules {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        ..Rules::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_failing_ends_failed_after_max_attempts() {
    let app = TestApp::with(Options {
        worker_config: WorkerConfig {
            inject_failure_rate: 1.0,
            ..WorkerConfig::default()
        },
        rules: fast_retries(),
        ..Options::default()
    })
    .await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    let job = app.wait_for(ids[0], JobStatus::Failed).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.error.as_ref().unwrap().code, ErrorCode::InjectedFailure);
    assert_eq!(job.attempt_errors.len(), 3);
    assert!(job
        .attempt_errors
        .iter()
        .all(|e| e.code == ErrorCode::InjectedFailure));
    // Each retry waited for its backoff: run_at moved forward between attempts.
    let events = app.store.events_since(0, 100).await.unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    use EventKind::*;
    assert_eq!(
        kinds,
        vec![Created, Running, Requeued, Running, Requeued, Running, Failed]
    );
    // The API shows the latest attempt's error first.
    let (_, view) = app.get(&format!("/api/jobs/{}", ids[0])).await;
    assert_eq!(view["attempt_errors"][0]["attempt"], 3);
    assert_eq!(view["attempt_errors"][2]["attempt"], 1);
    assert!(view["error"]["message"]
        .as_str()
        .unwrap()
        .contains("injected failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_failure_rate_retries_some_and_counts_every_attempt() {
    let app = TestApp::with(Options {
        worker_config: WorkerConfig {
            inject_failure_rate: 0.4,
            inject_failure_seed: Some(7),
            ..WorkerConfig::default()
        },
        rules: fast_retries(),
        ..Options::default()
    })
    .await;
    let files: Vec<(&str, Vec<u8>)> = (0..8).map(|_| ("c.png", fixture("coffee.png"))).collect();
    let ids = app.submit(&files).await;
    let mut retried = 0;
    for id in &ids {
        let job = loop {
            let j = app.store.get_job(*id).await.unwrap().unwrap();
            if j.status.is_finished() {
                break j;
            }
            app.wait_for_change(*id).await;
        };
        let failures = job.attempt_errors.len() as u32;
        match job.status {
            JobStatus::Succeeded => assert_eq!(job.attempts, failures + 1),
            JobStatus::Failed => assert_eq!(job.attempts, failures),
            other => panic!("unexpected {other}"),
        }
        assert!(job
            .attempt_errors
            .iter()
            .all(|e| e.code == ErrorCode::InjectedFailure));
        if job.attempts > 1 {
            retried += 1;
        }
    }
    assert!(retried > 0, "with a 40 % failure rate some job was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_workers() {
    let app = TestApp::with(Options {
        workers: 3,
        worker_config: WorkerConfig {
            rate_limit: Some(RateLimit {
                jobs: 2,
                per: Duration::from_secs(1),
            }),
            ..WorkerConfig::default()
        },
        ..Options::default()
    })
    .await;
    let files: Vec<(&str, Vec<u8>)> = (0..6).map(|_| ("c.png", fixture("coffee.png"))).collect();
    let ids = app.submit(&files).await;
    for id in &ids {
        app.wait_for(*id, JobStatus::Succeeded).await;
    }
    let mut starts: Vec<i64> = app
        .store
        .events_since(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == EventKind::Running)
        .map(|e| e.at.timestamp_millis())
        .collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), 6);
    for (i, t) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().filter(|s| **s < t + 1000).count();
        assert!(
            in_window <= 2,
            "{in_window} starts within 1 s of {t}: {starts:?}"
        );
    }
    let (_, stats) = app.get("/api/stats").await;
    assert_eq!(stats["counts"]["succeeded"], 6);
    assert_eq!(stats["rate_limit"]["jobs"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_one_inference_thread() {
    // One session, counted; every classification holds the thread for 1 s.
    let sessions = Arc::new(AtomicUsize::new(0));
    let slow = slow_factory(Duration::from_millis(1000), 3);
    let counted = sessions.clone();
    let factory: ClassifierFactory = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        slow()
    });
    let app = TestApp::with(Options {
        workers: 3,
        factory: Some(factory),
        worker_config: WorkerConfig {
            inference_threads: Some(1),
            ..WorkerConfig::default()
        },
        ..Options::default()
    })
    .await;
    let files: Vec<(&str, Vec<u8>)> = ["coffee.png", "chelsea.png", "rocket.jpg"]
        .iter()
        .map(|f| (*f, fixture(f)))
        .collect();
    let ids = app.submit(&files).await;
    // All three are running at once (three workers hold their leases) while the one thread
    // classifies them one after the other.
    for id in &ids {
        app.wait_for(*id, JobStatus::Running).await;
    }
    let (_, stats) = app.get("/api/stats").await;
    assert_eq!(stats["counts"]["running"], 3, "{stats}");
    let mut ends = Vec::new();
    for id in &ids {
        let job = app.wait_for(*id, JobStatus::Succeeded).await;
        assert_eq!((job.attempts, job.stalls), (1, 0));
        ends.push(job.finished_at.unwrap());
    }
    ends.sort();
    for pair in ends.windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(
            gap >= 900,
            "one thread: the classifications ran one after the other ({gap} ms apart)"
        );
    }
    assert_eq!(
        sessions.load(Ordering::SeqCst),
        1,
        "one session for three workers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_heartbeats_is_never_rescued() {
    let app = TestApp::with(Options {
        factory: Some(slow_factory(Duration::from_millis(1500), 1)),
        worker_config: WorkerConfig {
            lease: Duration::from_millis(300),
            sweep_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
        ..Options::default()
    })
    .await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    let job = app.wait_for(ids[0], JobStatus::Succeeded).await;
    assert_eq!(
        job.attempts, 1,
        "the job ran five leases long and was not taken away"
    );
    assert_eq!(job.stalls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_the_timeout_fails_and_the_worker_goes_on() {
    let app = TestApp::with(Options {
        // The timeout leaves a real classification (debug build, busy machine) ample time.
        factory: Some(slow_factory(Duration::from_millis(6000), 2)),
        max_attempts: 2,
        worker_config: WorkerConfig {
            job_timeout: Duration::from_millis(1500),
            ..WorkerConfig::default()
        },
        rules: fast_retries(),
        ..Options::default()
    })
    .await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    let job = app.wait_for(ids[0], JobStatus::Failed).await;
    assert_eq!(job.attempts, 2);
    assert_eq!(job.error.unwrap().code, ErrorCode::Timeout);
    // The worker is healthy: the next job succeeds on a fresh inference thread.
    let ids = app.submit(&[("c.png", fixture("chelsea.png"))]).await;
    app.wait_for(ids[0], JobStatus::Succeeded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_can_be_canceled() {
    let app = TestApp::with(Options {
        factory: Some(slow_factory(Duration::from_millis(1000), 1)),
        worker_config: WorkerConfig {
            lease: Duration::from_millis(300),
            ..WorkerConfig::default()
        },
        ..Options::default()
    })
    .await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    app.wait_for(ids[0], JobStatus::Running).await;
    let (status, job) = app.post(&format!("/api/jobs/{}/cancel", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(job["status"], "canceled");
    // The worker finds out, drops its result and takes the next job.
    let next = app.submit(&[("c.png", fixture("chelsea.png"))]).await;
    app.wait_for(next[0], JobStatus::Succeeded).await;
    let job = app.store.get_job(ids[0]).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Canceled);
    assert!(job.result.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_requeues_every_failed_job() {
    let app = TestApp::with(Options {
        max_attempts: 1,
        worker_config: WorkerConfig {
            inject_failure_rate: 1.0,
            ..WorkerConfig::default()
        },
        ..Options::default()
    })
    .await;
    let ids = app
        .submit(&[
            ("a.png", fixture("coffee.png")),
            ("b.png", fixture("chelsea.png")),
        ])
        .await;
    for id in &ids {
        app.wait_for(*id, JobStatus::Failed).await;
    }
    let (_, stats) = app.get("/api/stats").await;
    assert_eq!(stats["counts"]["failed"], 2);
    assert_eq!(stats["finished_last_minute"], 2);
    assert!(stats["rate_limit"].is_null());

    let mut events = app.store.subscribe();
    let (status, body) = app.post("/api/jobs/retry-failed").await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 2);
    let mut retried = 0;
    while retried < 2 {
        if events.recv().await.unwrap().kind == EventKind::Retried {
            retried += 1;
        }
    }
    let resp = app
        .client
        .post(app.url("/api/jobs/retry-failed?error_code=nope"))
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(resp, 400, "invalid_query").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_unfinished_jobs_back_to_the_queue() {
    let app = TestApp::without_workers().await;
    let ids = app.submit(&[("c.png", fixture("coffee.png"))]).await;
    let workers = imgclass_worker::Workers::start(
        app.store.clone(),
        slow_factory(Duration::from_millis(2000), 1),
        WorkerConfig::default(),
    )
    .await
    .unwrap();
    app.wait_for(ids[0], JobStatus::Running).await;
    workers.shutdown(Duration::from_millis(100)).await;
    let job = app.store.get_job(ids[0]).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.attempts, 0, "the interrupted attempt is not counted");
}
