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
        .finish_and_claim(outcomes, "pool", 2, LONG_LEASE, None)
        .await
        .unwrap();
    assert_eq!(stored, vec![true, false, true]);
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
        .finish_and_claim(Vec::new(), "pool", 4, LONG_LEASE, None)
        .await
        .unwrap();
    assert!(stored.is_empty() && none.claims.is_empty());
    assert_eq!(store.last_event_seq().await.unwrap(), seq);
}
