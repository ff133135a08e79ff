//! Searching jobs (file name, top label, error code, creation time), counting them, and the bulk
//! actions that take the same filter.

use crate::common::*;
use imgclass_core::{ErrorCode, EventKind, JobId, JobStatus, Prediction};
use imgclass_store::{Job, JobFilter, NewJob, Outcome, Store};

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// A result whose top label is `label`.
fn result_labelled(label: &str) -> imgclass_core::JobResult {
    let mut r = sample_result();
    r.predictions[0] = Prediction {
        index: 1,
        label: label.into(),
        probability: 0.9,
    };
    r
}

fn named(seed: u64, name: &str) -> NewJob {
    let mut job = new_job(seed);
    job.file_name = Some(name.into());
    job
}

/// Claims the only due job and ends it with `outcome`.
async fn finish_next(store: &dyn Store, outcome: Outcome) -> Job {
    let claim = claim_one(store, "w", LONG_LEASE).await;
    assert!(store.finish(&claim.lease, outcome).await.unwrap());
    get(store, claim.job.id).await
}

async fn search(store: &dyn Store, filter: &JobFilter) -> Vec<JobId> {
    let page = store.search_jobs(filter, None, 100).await.unwrap();
    assert_eq!(
        store.count_jobs(filter).await.unwrap(),
        page.jobs.len() as u64,
        "count agrees with the search for {filter:?}"
    );
    ids(&page.jobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_name_label_error_and_time() {
    let (store, _db) = fresh_store().await;
    let espresso = create(&*store, named(1, "Coffee-Morning.PNG")).await;
    let espresso = {
        let _ = espresso;
        finish_next(&*store, Outcome::Succeeded(result_labelled("espresso"))).await
    };
    create(&*store, named(2, "cat_100%.png")).await;
    let cat = finish_next(
        &*store,
        Outcome::Succeeded(result_labelled("tabby, tabby cat")),
    )
    .await;
    create(&*store, named(3, "broken.jpg")).await;
    let broken = finish_next(&*store, errored(ErrorCode::ImageCorrupt, "bad")).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let queued = create(&*store, named(4, "coffee-evening.png")).await;

    let by = |f: JobFilter| f;
    // File names: a case-insensitive substring; LIKE's wildcards are plain characters.
    let name = |n: &str| {
        by(JobFilter {
            name: Some(n.into()),
            ..Default::default()
        })
    };
    assert_eq!(
        search(&*store, &name("coffee")).await,
        vec![queued.id, espresso.id]
    );
    assert_eq!(search(&*store, &name("MORNING")).await, vec![espresso.id]);
    assert_eq!(search(&*store, &name("100%")).await, vec![cat.id]);
    assert_eq!(search(&*store, &name("_")).await, vec![cat.id]);
    assert_eq!(search(&*store, &name("%")).await, vec![cat.id]);
    assert_eq!(search(&*store, &name("nothing")).await, vec![]);
    assert_eq!(search(&*store, &name("")).await.len(), 4);

    // The top label: a case-insensitive substring; jobs without a result have none.
    let label = |l: &str| JobFilter {
        label: Some(l.into()),
        ..Default::default()
    };
    assert_eq!(search(&*store, &label("espresso")).await, vec![espresso.id]);
    assert_eq!(search(&*store, &label("Tabby Cat")).await, vec![cat.id]);
    // "Egyptian cat" is only the second label of the cat's result.
    assert_eq!(search(&*store, &label("egyptian")).await, vec![]);

    let code = JobFilter {
        error_code: Some(ErrorCode::ImageCorrupt),
        ..Default::default()
    };
    assert_eq!(search(&*store, &code).await, vec![broken.id]);

    // Creation time: since is inclusive, until exclusive.
    let window = JobFilter {
        since: Some(cat.created_at),
        until: Some(queued.created_at),
        ..Default::default()
    };
    assert_eq!(search(&*store, &window).await, vec![broken.id, cat.id]);
    let empty = JobFilter {
        since: Some(queued.created_at),
        until: Some(cat.created_at),
        ..Default::default()
    };
    assert_eq!(search(&*store, &empty).await, vec![]);

    // Conditions add up.
    let both = JobFilter {
        name: Some("coffee".into()),
        status: Some(JobStatus::Queued),
        ..Default::default()
    };
    assert_eq!(search(&*store, &both).await, vec![queued.id]);
    let mine = JobFilter {
        owner: Some("someone".into()),
        ..Default::default()
    };
    assert_eq!(search(&*store, &mine).await, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_pages_with_its_cursor() {
    let (store, _db) = fresh_store().await;
    let mut made = Vec::new();
    for i in 0..7 {
        let name = if i % 2 == 0 { "even" } else { "odd" };
        made.push(
            create(&*store, named(i, &format!("{name}-{i}.png")))
                .await
                .id,
        );
    }
    let filter = JobFilter {
        name: Some("even".into()),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .search_jobs(&filter, cursor.as_deref(), 2)
            .await
            .unwrap();
        seen.extend(ids(&page.jobs));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<JobId> = made.iter().rev().step_by(2).copied().collect();
    assert_eq!(seen, expected);
    assert_eq!(store.count_jobs(&filter).await.unwrap(), 4);
    assert!(store.search_jobs(&filter, Some("x"), 2).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_takes_only_queued_jobs_of_the_filter() {
    let (store, _db) = fresh_store().await;
    create(&*store, named(1, "a.png")).await;
    let running = claim_one(&*store, "w", LONG_LEASE).await.job;
    let a = create(&*store, named(2, "a.png")).await;
    let b = create(&*store, named(3, "b.png")).await;
    let seq = store.last_event_seq().await.unwrap();

    let only_a = JobFilter {
        name: Some("a.png".into()),
        ..Default::default()
    };
    assert_eq!(store.cancel_queued(&only_a).await.unwrap(), 1);
    assert_eq!(get(&*store, a.id).await.status, JobStatus::Canceled);
    assert_eq!(get(&*store, b.id).await.status, JobStatus::Queued);
    assert_eq!(get(&*store, running.id).await.status, JobStatus::Running);
    let events = store.events_since(seq, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].job_id, events[0].kind),
        (a.id, EventKind::Canceled)
    );

    assert_eq!(store.cancel_queued(&JobFilter::default()).await.unwrap(), 1);
    assert_eq!(get(&*store, b.id).await.status, JobStatus::Canceled);
    assert_eq!(store.cancel_queued(&JobFilter::default()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_finished_keeps_unfinished_jobs_and_shared_images() {
    let (store, _db) = fresh_store().await;
    let shared = new_job(1);
    create(&*store, shared.clone()).await;
    let done = finish_next(&*store, Outcome::Succeeded(sample_result())).await;
    create(&*store, new_job(2)).await;
    let failed = finish_next(&*store, errored(ErrorCode::ImageCorrupt, "bad")).await;
    let canceled = create(&*store, new_job(3)).await;
    store.cancel(canceled.id).await.unwrap();
    // The same image as the succeeded job, still queued.
    let queued = create(&*store, shared).await;
    let seq = store.last_event_seq().await.unwrap();

    let corrupt = JobFilter {
        error_code: Some(ErrorCode::ImageCorrupt),
        ..Default::default()
    };
    assert_eq!(store.delete_finished(&corrupt).await.unwrap(), 1);
    assert_eq!(store.get_job(failed.id).await.unwrap(), None);
    assert_eq!(store.read_blob(&failed.image_sha256).await.unwrap(), None);

    assert_eq!(
        store.delete_finished(&JobFilter::default()).await.unwrap(),
        2
    );
    for id in [done.id, canceled.id] {
        assert_eq!(store.get_job(id).await.unwrap(), None);
    }
    assert_eq!(get(&*store, queued.id).await.status, JobStatus::Queued);
    assert!(store.job_image(queued.id).await.unwrap().is_some());
    let deleted: Vec<(JobId, EventKind)> = store
        .events_since(seq, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.job_id, e.kind))
        .collect();
    assert_eq!(
        deleted,
        vec![
            (failed.id, EventKind::Deleted),
            (done.id, EventKind::Deleted),
            (canceled.id, EventKind::Deleted)
        ]
    );
    assert_eq!(
        store.delete_finished(&JobFilter::default()).await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_split_the_last_minute_by_outcome() {
    let (store, _db) = fresh_store().await;
    create(&*store, new_job(1)).await;
    finish_next(&*store, Outcome::Succeeded(sample_result())).await;
    create(&*store, new_job(2)).await;
    finish_next(&*store, errored(ErrorCode::ImageCorrupt, "bad")).await;
    let c = create(&*store, new_job(3)).await;
    store.cancel(c.id).await.unwrap();
    let stats = store.stats(None).await.unwrap();
    assert_eq!(stats.finished_last_minute, 3);
    let by = stats.finished_last_minute_by;
    assert_eq!((by.succeeded, by.failed, by.canceled), (1, 1, 1));
    assert_eq!(
        stats.finished_per_minute.len(),
        imgclass_store::QueueStats::MINUTES
    );
    assert_eq!(stats.finished_per_minute.last(), Some(&by));
    assert!(
        stats.finished_per_minute[..imgclass_store::QueueStats::MINUTES - 1]
            .iter()
            .all(|m| m.total() == 0)
    );
}
