//! Listing jobs: order, filter and cursor pagination.

use crate::common::*;
use imgclass_core::{ErrorCode, JobId, JobStatus};
use imgclass_store::{Job, ListQuery, StoreError};

fn query(status: Option<JobStatus>, cursor: Option<String>, limit: usize) -> ListQuery {
    ListQuery {
        status,
        owner: None,
        cursor,
        limit,
    }
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_newest_first_and_filters_by_status() {
    let (store, _dir) = fresh_store().await;
    let empty = store.list_jobs(&query(None, None, 10)).await.unwrap();
    assert!(empty.jobs.is_empty());
    assert_eq!(empty.next_cursor, None);

    let a = create(&*store, new_job(1)).await;
    let b = create(&*store, new_job(2)).await;
    let batch = store
        .create_jobs(vec![new_job(3), new_job(4)])
        .await
        .unwrap();
    let (c, d) = (&batch[0], &batch[1]);

    let all = store.list_jobs(&query(None, None, 10)).await.unwrap();
    assert_eq!(ids(&all.jobs), vec![d.id, c.id, b.id, a.id]);
    assert_eq!(all.next_cursor, None);
    assert_eq!(all.jobs[3], a);

    // a runs and fails, b runs, c is canceled, d stays queued.
    let claims = store.claim("w", 2, LONG_LEASE).await.unwrap();
    assert_eq!(
        ids(&claims.iter().map(|c| c.job.clone()).collect::<Vec<_>>()),
        vec![a.id, b.id]
    );
    store
        .finish(&claims[0].lease, errored(ErrorCode::ImageCorrupt, "bad"))
        .await
        .unwrap();
    store.cancel(c.id).await.unwrap();

    let by = |status| {
        let store = store.clone();
        async move {
            let page = store
                .list_jobs(&query(Some(status), None, 10))
                .await
                .unwrap();
            assert!(page.jobs.iter().all(|j| j.status == status));
            assert_eq!(page.next_cursor, None);
            ids(&page.jobs)
        }
    };
    assert_eq!(by(JobStatus::Queued).await, vec![d.id]);
    assert_eq!(by(JobStatus::Running).await, vec![b.id]);
    assert_eq!(by(JobStatus::Failed).await, vec![a.id]);
    assert_eq!(by(JobStatus::Canceled).await, vec![c.id]);
    assert_eq!(by(JobStatus::Succeeded).await, Vec::<JobId>::new());

    // The list shows each job's current state.
    let all = store.list_jobs(&query(None, None, 10)).await.unwrap();
    for job in &all.jobs {
        assert_eq!(job, &get(&*store, job.id).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pagination_walks_every_job_once() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs((0..7).map(new_job).collect())
        .await
        .unwrap();
    let mut newest_first = ids(&jobs);
    newest_first.reverse();

    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_jobs(&query(None, cursor, 3)).await.unwrap();
        pages.push(ids(&page.jobs));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![3, 3, 1]
    );
    assert_eq!(pages.concat(), newest_first);

    // Exactly a page's worth: no dangling empty page.
    let page = store.list_jobs(&query(None, None, 7)).await.unwrap();
    assert_eq!(page.jobs.len(), 7);
    assert_eq!(page.next_cursor, None);
    let page = store.list_jobs(&query(None, None, 6)).await.unwrap();
    assert_eq!(page.jobs.len(), 6);
    let last = store
        .list_jobs(&query(None, page.next_cursor, 6))
        .await
        .unwrap();
    assert_eq!(ids(&last.jobs), vec![jobs[0].id]);
    assert_eq!(last.next_cursor, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pagination_with_a_status_filter() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs((0..7).map(new_job).collect())
        .await
        .unwrap();
    // Cancel the jobs with an odd index: 1, 3, 5 are canceled, 0, 2, 4, 6 stay queued.
    for job in jobs.iter().skip(1).step_by(2) {
        store.cancel(job.id).await.unwrap();
    }
    let first = store
        .list_jobs(&query(Some(JobStatus::Queued), None, 3))
        .await
        .unwrap();
    assert_eq!(ids(&first.jobs), vec![jobs[6].id, jobs[4].id, jobs[2].id]);
    let second = store
        .list_jobs(&query(Some(JobStatus::Queued), first.next_cursor, 3))
        .await
        .unwrap();
    assert_eq!(ids(&second.jobs), vec![jobs[0].id]);
    assert_eq!(second.next_cursor, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_jobs_do_not_shift_later_pages() {
    let (store, _dir) = fresh_store().await;
    let jobs = store
        .create_jobs((0..4).map(new_job).collect())
        .await
        .unwrap();
    let first = store.list_jobs(&query(None, None, 2)).await.unwrap();
    assert_eq!(ids(&first.jobs), vec![jobs[3].id, jobs[2].id]);
    create(&*store, new_job(100)).await;
    let second = store
        .list_jobs(&query(None, first.next_cursor, 2))
        .await
        .unwrap();
    assert_eq!(ids(&second.jobs), vec![jobs[1].id, jobs[0].id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cursor_is_rejected() {
    let (store, _dir) = fresh_store().await;
    store
        .create_jobs((0..3).map(new_job).collect())
        .await
        .unwrap();
    for bad in ["", "garbage", "j", "jabc", "j0", "j-5", "12", "j1.5", "J2"] {
        let result = store
            .list_jobs(&query(None, Some(bad.to_string()), 2))
            .await;
        assert!(
            matches!(result, Err(StoreError::InvalidCursor)),
            "{bad:?} gave {result:?}"
        );
    }
}
