//! The group commit: concurrent `create_jobs` calls share one transaction, and each caller is
//! answered only once its jobs are committed — or with an error, with nothing of it stored.

use crate::common::*;
use imgclass_store::{NewJob, Store};
use sqlx::Connection;
use std::sync::Arc;

/// Runs SQL on the test database over a connection of its own.
async fn exec_raw(db: &TestDb, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&db.url)
        .await
        .expect("connect");
    sqlx::raw_sql(sql).execute(&mut conn).await.expect(sql);
}

/// Makes every insert of a job fail, like a full disk would, on either backend.
async fn break_job_inserts(db: &TestDb) {
    if db.url.starts_with("postgres") {
        exec_raw(
            db,
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ \
             LANGUAGE plpgsql; CREATE TRIGGER refuse BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await;
    } else {
        exec_raw(
            db,
            "CREATE TRIGGER refuse BEFORE INSERT ON jobs BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .await;
    }
}

async fn count(store: &dyn Store) -> (usize, u64) {
    let page = store
        .list_jobs(&imgclass_store::ListQuery {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    let stats = store.stats(None).await.unwrap();
    (page.jobs.len(), stats.queued)
}

/// Sends each request from a task of its own, all at once.
async fn submit_all(
    store: &Arc<dyn Store>,
    requests: Vec<Vec<NewJob>>,
) -> Vec<Result<usize, String>> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|jobs| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .create_jobs(jobs)
                    .await
                    .map(|created| created.len())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_all_stored_and_answered_with_their_own_jobs() {
    let (store, _db) = fresh_store().await;
    let requests: Vec<Vec<NewJob>> = (0..40)
        .map(|i| (0..1 + i % 3).map(|k| new_job(i * 10 + k)).collect())
        .collect();
    let expected: Vec<usize> = requests.iter().map(Vec::len).collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|jobs| {
            let store = store.clone();
            let names: Vec<_> = jobs.iter().map(|j| j.file_name.clone()).collect();
            tokio::spawn(async move { (names, store.create_jobs(jobs).await.unwrap()) })
        })
        .collect();
    let mut total = 0;
    for (t, n) in tasks.into_iter().zip(expected) {
        let (names, created) = t.await.unwrap();
        assert_eq!(created.len(), n);
        // Each caller gets its own jobs, in its order, as stored.
        let got: Vec<_> = created.iter().map(|j| j.file_name.clone()).collect();
        assert_eq!(got, names);
        for job in &created {
            assert_eq!(&get(&*store, job.id).await, job);
        }
        total += n;
    }
    assert_eq!(count(&*store).await, (total, total as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_request_fails_alone() {
    let (store, _db) = fresh_store().await;
    let mut requests: Vec<Vec<NewJob>> = (0..20).map(|i| vec![new_job(i)]).collect();
    // A digest of the wrong length breaks a CHECK constraint: this request cannot be stored.
    let mut bad = new_job(100);
    bad.sha256 = "short".into();
    requests.insert(7, vec![new_job(101), bad]);
    let results = submit_all(&store, requests).await;
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert!(r.is_err(), "the bad request was stored: {r:?}");
        } else {
            assert_eq!(r, &Ok(1), "request {i}");
        }
    }
    // Nothing of the bad request was stored, not even its good first image.
    assert_eq!(count(&*store).await, (20, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_commit_answers_every_request_with_an_error_and_stores_nothing() {
    let (store, db) = fresh_store().await;
    break_job_inserts(&db).await;
    let results = submit_all(&store, (0..20).map(|i| vec![new_job(i)]).collect()).await;
    for r in &results {
        let e = r.as_ref().unwrap_err();
        assert!(e.contains("refused"), "{e}");
    }
    assert_eq!(count(&*store).await, (0, 0));
    // No image of the refused requests was kept either.
    let first = new_job(0);
    assert!(store.read_blob(&first.sha256).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_stores_each_outcome_under_its_own_lease_and_claims_the_next() {
    let (store, _db) = fresh_store().await;
    let first: Vec<_> = (0..3).map(new_job).collect();
    store.create_jobs(first).await.unwrap();
    let claims = store.claim("pool", 3, LONG_LEASE).await.unwrap();
    assert_eq!(claims.len(), 3);
    // One of the batch is canceled while it runs: its worker's outcome must be fenced.
    store.cancel(claims[1].job.id).await.unwrap();
    store
        .create_jobs((10..12).map(new_job).collect())
        .await
        .unwrap();
    let outcomes = claims
        .iter()
        .map(|c| {
            (
                c.lease.clone(),
                imgclass_store::Outcome::Succeeded(sample_result()),
            )
        })
        .collect();
    let (stored, next) = store
        .finish_and_claim(outcomes, "pool", 2, LONG_LEASE, None, None)
        .await
        .unwrap();
    let s = Some(imgclass_core::JobStatus::Succeeded);
    assert_eq!(stored, vec![s, None, s]);
    assert_eq!(next.claims.len(), 2);
    let status = |i: usize| claims[i].job.id;
    use imgclass_core::JobStatus::*;
    assert_eq!(get(&*store, status(0)).await.status, Succeeded);
    assert_eq!(get(&*store, status(1)).await.status, Canceled);
    assert_eq!(get(&*store, status(2)).await.status, Succeeded);
    for c in &next.claims {
        assert_eq!(get(&*store, c.job.id).await.status, Running);
    }
    // The fenced job got no succeeded event.
    let events = store.events_since(0, 100).await.unwrap();
    assert!(!events
        .iter()
        .any(|e| e.job_id == status(1) && e.kind == imgclass_core::EventKind::Succeeded));
    // A round with nothing to store and nothing due writes nothing and claims nothing.
    let seq = store.last_event_seq().await.unwrap();
    let (stored, none) = store
        .finish_and_claim(Vec::new(), "pool", 4, LONG_LEASE, None, None)
        .await
        .unwrap();
    assert!(stored.is_empty() && none.claims.is_empty());
    assert_eq!(store.last_event_seq().await.unwrap(), seq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_takes_starts_from_the_rate_limit_and_records_events_and_webhook_calls() {
    use imgclass_core::{ErrorCode, EventKind, JobStatus};
    use imgclass_store::{Outcome, RateLimit, Webhook};
    use std::time::Duration;
    let (store, _db) = fresh_store().await;
    let mut stream = store.subscribe();
    let hooked = NewJob {
        webhook: Some(Webhook {
            url: "https://hooks.example.com/imgclass".into(),
            events: vec![EventKind::Running, EventKind::Succeeded],
        }),
        ..new_job(1)
    };
    let small = hooked.image.clone();
    let jobs = store
        .create_jobs(vec![hooked, new_job(2), new_job(3)])
        .await
        .unwrap();
    let rate = RateLimit {
        jobs: 2,
        per: Duration::from_secs(3600),
    };
    let (_, first) = store
        .finish_and_claim(Vec::new(), "pool", 3, LONG_LEASE, Some(rate), None)
        .await
        .unwrap();
    // Two starts fit in the window: the two oldest jobs, the first with its (small) image.
    let claimed: Vec<_> = first.claims.iter().map(|c| c.job.id).collect();
    assert_eq!(claimed, [jobs[0].id, jobs[1].id]);
    assert_eq!(first.claims[0].image.as_deref(), Some(&small[..]));
    assert!(first.rate_limited_for.is_none());
    // One succeeds, one is to run again; the window is full, so nothing else is claimed and the
    // round says how long to wait.
    let outcomes = vec![
        (
            first.claims[0].lease.clone(),
            Outcome::Succeeded(sample_result()),
        ),
        (
            first.claims[1].lease.clone(),
            errored(ErrorCode::Internal, "try again"),
        ),
    ];
    let (stored, second) = store
        .finish_and_claim(outcomes, "pool", 3, LONG_LEASE, Some(rate), None)
        .await
        .unwrap();
    assert_eq!(
        stored,
        [Some(JobStatus::Succeeded), Some(JobStatus::Queued)]
    );
    assert!(second.claims.is_empty());
    let wait = second.rate_limited_for.expect("the rate limit holds");
    assert!(
        wait > Duration::from_secs(3000) && wait <= Duration::from_secs(3600),
        "{wait:?}"
    );
    assert_eq!(get(&*store, jobs[0].id).await.status, JobStatus::Succeeded);
    let again = get(&*store, jobs[1].id).await;
    assert_eq!(again.status, JobStatus::Queued);
    assert_eq!(again.attempt_errors.len(), 1);
    // The webhook's calls went into the outbox with the changes it asked for.
    let calls: Vec<EventKind> = store
        .deliveries(jobs[0].id)
        .await
        .unwrap()
        .iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(calls, [EventKind::Running, EventKind::Succeeded]);
    // Subscribers got every event, numbered in order, as the log stores them.
    let stored_log = store.events_since(0, 100).await.unwrap();
    let mut live = Vec::new();
    while live.len() < stored_log.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.recv())
            .await
            .expect("an event within 10 s")
            .unwrap();
        live.push((e.seq, e.job_id, e.kind));
    }
    let logged: Vec<_> = stored_log
        .iter()
        .map(|e| (e.seq, e.job_id, e.kind))
        .collect();
    assert_eq!(live, logged);
    let of_first: Vec<EventKind> = logged
        .iter()
        .filter(|e| e.1 == jobs[0].id)
        .map(|e| e.2)
        .collect();
    assert_eq!(
        of_first,
        [EventKind::Created, EventKind::Running, EventKind::Succeeded]
    );
    assert!(logged.windows(2).all(|w| w[0].0 < w[1].0));
}

/// Makes every insert of a `succeeded` event fail, on either backend.
async fn break_success_events(db: &TestDb) {
    if db.url.starts_with("postgres") {
        exec_raw(
            db,
            "CREATE FUNCTION refuse_success() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ \
             LANGUAGE plpgsql; CREATE TRIGGER refuse_success BEFORE INSERT ON events FOR EACH ROW \
             WHEN (NEW.kind = 'succeeded') EXECUTE FUNCTION refuse_success();",
        )
        .await;
    } else {
        exec_raw(
            db,
            "CREATE TRIGGER refuse_success BEFORE INSERT ON events WHEN NEW.kind = 'succeeded' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_round_stores_nothing_and_the_next_round_runs_normally() {
    use imgclass_core::JobStatus;
    use imgclass_store::Outcome;
    let (store, db) = fresh_store().await;
    let jobs = store
        .create_jobs((0..3).map(new_job).collect())
        .await
        .unwrap();
    let (_, first) = store
        .finish_and_claim(Vec::new(), "pool", 2, LONG_LEASE, None, None)
        .await
        .unwrap();
    assert_eq!(first.claims.len(), 2);
    let outcomes = || {
        first
            .claims
            .iter()
            .map(|c| (c.lease.clone(), Outcome::Succeeded(sample_result())))
            .collect::<Vec<_>>()
    };
    let seq = store.last_event_seq().await.unwrap();
    break_success_events(&db).await;
    let failed = store
        .finish_and_claim(outcomes(), "pool", 1, LONG_LEASE, None, None)
        .await;
    assert!(failed.unwrap_err().to_string().contains("refused"));
    // Nothing of the failed round is stored: both jobs still run under their leases, the third
    // is still queued, and no event was added.
    for c in &first.claims {
        let job = get(&*store, c.job.id).await;
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.lease_owner.as_deref(), Some(c.lease.token.as_str()));
    }
    assert_eq!(get(&*store, jobs[2].id).await.status, JobStatus::Queued);
    assert_eq!(store.last_event_seq().await.unwrap(), seq);
    // Once the cause is gone, the same outcomes are stored and the next job is claimed.
    if db.url.starts_with("postgres") {
        exec_raw(&db, "DROP TRIGGER refuse_success ON events").await;
    } else {
        exec_raw(&db, "DROP TRIGGER refuse_success").await;
    }
    let (stored, next) = store
        .finish_and_claim(outcomes(), "pool", 1, LONG_LEASE, None, None)
        .await
        .unwrap();
    assert_eq!(stored, [Some(JobStatus::Succeeded); 2]);
    assert_eq!(next.claims.len(), 1);
    assert_eq!(next.claims[0].job.id, jobs[2].id);
    for c in &first.claims {
        assert_eq!(get(&*store, c.job.id).await.status, JobStatus::Succeeded);
    }
}
