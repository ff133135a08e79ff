//! API tokens and job ownership: tokens are stored by hash, revoked at once, and every read or
//! bulk action that takes an owner sees only that owner's jobs.

use crate::common::*;
use imgclass_core::{ErrorCode, EventKind, JobStatus, Scope};
use imgclass_store::{ListQuery, NewJob, NewToken, Outcome, RetryFilter, Store, StoreError};

fn token(id: &str, name: &str, scopes: &[Scope]) -> NewToken {
    NewToken {
        id: id.into(),
        name: name.into(),
        scopes: scopes.to_vec(),
        secret_sha256: sha256_hex(id.as_bytes()),
        expires_at: None,
    }
}

fn owned(seed: u64, owner: &str) -> NewJob {
    NewJob {
        owner: Some(owner.into()),
        ..new_job(seed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_and_revoked() {
    let (store, _db) = fresh_store().await;
    assert!(!store.tokens_in_use().await.unwrap());
    let expires = to_millis(chrono::Utc::now() + chrono::Duration::days(30));
    let a = store
        .create_token(&NewToken {
            expires_at: Some(expires),
            ..token("ta", "alice", &[Scope::Submit, Scope::Read])
        })
        .await
        .unwrap();
    assert_eq!(a.name, "alice");
    assert_eq!(a.scopes, vec![Scope::Submit, Scope::Read]);
    assert_eq!(a.expires_at, Some(expires));
    assert!(a.is_active(chrono::Utc::now()));
    assert!(!a.is_active(expires));
    assert!(a.has(Scope::Read) && !a.has(Scope::Manage));
    assert!(store.tokens_in_use().await.unwrap());

    // Names are unique.
    let again = store
        .create_token(&token("tx", "alice", &[Scope::Read]))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

    let b = store
        .create_token(&token("tb", "bob", &[Scope::Admin]))
        .await
        .unwrap();
    assert!(b.has(Scope::Manage), "admin implies every scope");
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    assert_eq!(store.token("ta").await.unwrap(), Some(a.clone()));
    assert_eq!(store.token("nope").await.unwrap(), None);

    // By name or by id; a second revoke keeps the first time.
    let revoked = store.revoke_token("alice").await.unwrap();
    let at = revoked.revoked_at.expect("revoked");
    assert!(!revoked.is_active(chrono::Utc::now()));
    let again = store.revoke_token("ta").await.unwrap();
    assert_eq!(again.revoked_at, Some(at));
    assert!(matches!(
        store.revoke_token("carol").await,
        Err(StoreError::NotFound)
    ));
    // Revoking every token never opens the API again.
    store.revoke_token("bob").await.unwrap();
    assert!(store.tokens_in_use().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_carry_their_owner_and_reads_filter_by_it() {
    let (store, _db) = fresh_store().await;
    let a1 = create(&*store, owned(1, "ta")).await;
    let b1 = create(&*store, owned(2, "tb")).await;
    let a2 = create(&*store, owned(3, "ta")).await;
    let open = create(&*store, new_job(4)).await;
    assert_eq!(a1.owner.as_deref(), Some("ta"));
    assert_eq!(get(&*store, b1.id).await.owner.as_deref(), Some("tb"));
    assert_eq!(
        store.job_owner(a1.id).await.unwrap(),
        Some(Some("ta".into()))
    );
    assert_eq!(store.job_owner(open.id).await.unwrap(), Some(None));
    assert_eq!(
        store.job_owner(imgclass_core::JobId::new()).await.unwrap(),
        None
    );

    let list = |owner: Option<&str>| {
        let store = store.clone();
        let owner = owner.map(str::to_string);
        async move {
            store
                .list_jobs(&ListQuery {
                    owner,
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
                .jobs
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(Some("ta")).await, vec![a2.id, a1.id]);
    assert_eq!(list(Some("tb")).await, vec![b1.id]);
    assert_eq!(list(Some("tc")).await, vec![]);
    assert_eq!(list(None).await.len(), 4);

    assert_eq!(store.queued_jobs_of("ta").await.unwrap(), 2);
    let stats = store.stats_of(Some("ta"), None).await.unwrap();
    assert_eq!((stats.queued, stats.running), (2, 0));
    assert_eq!(stats.oldest_queued_at, Some(a1.created_at));
    assert_eq!(store.stats(None).await.unwrap().queued, 4);

    // Events name the owner, also once the job is deleted (live and replayed).
    // (On PostgreSQL the earlier jobs' events may still be on their way from the listener.)
    let mut live = store.subscribe();
    store.delete(b1.id).await.unwrap();
    let deleted = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let e = live.recv().await.unwrap();
            if e.job_id == b1.id && e.kind == EventKind::Deleted {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(deleted.owner.as_deref(), Some("tb"));
    let log = store.events_since(0, 100).await.unwrap();
    let owners: Vec<_> = log
        .iter()
        .map(|e| (e.job_id, e.kind, e.owner.clone()))
        .collect();
    assert!(owners.contains(&(b1.id, EventKind::Created, Some("tb".into()))));
    assert!(owners.contains(&(b1.id, EventKind::Deleted, Some("tb".into()))));
    assert!(owners.contains(&(open.id, EventKind::Created, None)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_with_an_owner_takes_only_that_owners_jobs() {
    let (store, _db) = fresh_store().await;
    let mut failed = Vec::new();
    for (seed, owner) in [(1, "ta"), (2, "tb")] {
        let job = create(&*store, owned(seed, owner)).await;
        let claim = claim_one(&*store, "w", LONG_LEASE).await;
        assert_eq!(claim.job.id, job.id);
        let error = job_error(ErrorCode::ImageCorrupt, "no");
        assert!(store
            .finish(
                &claim.lease,
                Outcome::Errored {
                    error,
                    retry_after: None,
                }
            )
            .await
            .unwrap());
        failed.push(job.id);
    }
    let retried = store
        .retry_failed(&RetryFilter {
            owner: Some("tb".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        retried.iter().map(|j| j.id).collect::<Vec<_>>(),
        [failed[1]]
    );
    assert_eq!(get(&*store, failed[0]).await.status, JobStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_installation_keeps_job_owners() {
    let (from, _a) = fresh_store().await;
    let (to, _b) = fresh_store().await;
    let job = create(&*from, owned(1, "ta")).await;
    imgclass_store::copy_all(&*from, &*to).await.unwrap();
    assert_eq!(get(&*to, job.id).await.owner.as_deref(), Some("ta"));
    let _: &dyn Store = &*to;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_allows_its_limit_and_then_says_how_long_to_wait() {
    let (store, _db) = fresh_store().await;
    let per = std::time::Duration::from_secs(600);
    let first = store.take_quota("req:a", 2, 3, per).await.unwrap();
    assert!(first.allowed);
    assert_eq!((first.limit, first.remaining), (3, 1));
    assert!(first.reset <= per);
    assert!(store.take_quota("req:a", 1, 3, per).await.unwrap().allowed);
    let refused = store.take_quota("req:a", 1, 3, per).await.unwrap();
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    let wait = refused.retry_after.expect("a wait");
    assert!(
        wait > std::time::Duration::ZERO && wait <= 2 * per,
        "{wait:?}"
    );
    // More than is left is refused whole; other keys have their own budget.
    assert!(!store.take_quota("sub:a", 4, 3, per).await.unwrap().allowed);
    assert!(store.take_quota("sub:a", 3, 3, per).await.unwrap().allowed);
    assert!(store.take_quota("req:b", 3, 3, per).await.unwrap().allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takes_from_two_connections_never_overshoot() {
    let db = TestDb::new().await;
    let (one, two) = (db.open().await, db.open().await);
    let per = std::time::Duration::from_secs(600);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let store = if i % 2 == 0 { one.clone() } else { two.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .take_quota("req:shared", 1, 12, per)
                .await
                .unwrap()
                .allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 12);
}
