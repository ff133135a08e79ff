//! Several nodes on one PostgreSQL database, as `PgOptions` set them up: a worker-only node
//! (which does not follow the event log) is woken by another node's upload once its claim came
//! back short; without LISTEN (behind a transaction pooler) nodes see each other's changes by
//! polling. SQLite has one node per file, so these run on PostgreSQL only.

use crate::common::*;
use imgclass_store::{PgOptions, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// Less than the 5 s after which a listening node looks anyway: a wake-up within it was heard.
const HEARD: Duration = Duration::from_secs(2);

async fn open(db: &TestDb, options: PgOptions) -> Arc<dyn Store> {
    let store = imgclass_store::open(
        &db.url,
        test_rules(),
        imgclass_store::BlobStore::database(),
        options,
    )
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    store
}

/// Whether `store`'s idle workers are woken within `within` (the waiter is registered first).
async fn woken_while<Fut: std::future::Future<Output = ()>>(
    store: &Arc<dyn Store>,
    within: Duration,
    action: Fut,
) -> bool {
    let wakeups = store.wakeups();
    let notified = wakeups.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    action.await;
    timeout(within, notified).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_node_hears_another_nodes_upload_once_its_claim_came_back_short() {
    let db = TestDb::new().await;
    if !db.url.starts_with("postgres") {
        return;
    }
    let api = db.open().await;
    let worker = open(
        &db,
        PgOptions {
            follow_events: false,
            ..PgOptions::default()
        },
    )
    .await;
    let mut events = worker.subscribe();
    // Nothing is due: the claim comes back short, so the node starts listening, and looks once
    // more when it does.
    assert!(
        woken_while(&worker, HEARD, async {
            assert!(worker.claim("w", 1, LONG_LEASE).await.unwrap().is_empty());
        })
        .await
    );
    assert!(
        woken_while(&worker, HEARD, async {
            create(&*api, new_job(1)).await;
        })
        .await,
        "another node's upload wakes an idle worker node"
    );
    let claimed = worker.claim("w", 2, LONG_LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    // A worker-only node does not read the event log.
    assert!(events.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_listen_nodes_see_each_others_changes_by_polling() {
    let db = TestDb::new().await;
    if !db.url.starts_with("postgres") {
        return;
    }
    let polling = |follow_events| PgOptions {
        listen: false,
        follow_events,
        poll_interval: Duration::from_millis(100),
        ..PgOptions::default()
    };
    let api = open(&db, polling(true)).await;
    let worker = open(&db, polling(false)).await;
    let mut events = api.subscribe();
    // An upload on the API node: its idle workers elsewhere find it at their next poll.
    assert!(
        woken_while(&worker, HEARD, async {
            create(&*api, new_job(1)).await;
        })
        .await
    );
    let claim = claim_one(&*worker, "w", LONG_LEASE).await;
    // The API node reads its own event at once and the worker node's at its next poll.
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let e = timeout(HEARD, events.recv())
            .await
            .expect("an event")
            .unwrap();
        assert_eq!(e.job_id, claim.job.id);
        kinds.push(e.kind);
    }
    assert_eq!(
        kinds,
        [
            imgclass_core::EventKind::Created,
            imgclass_core::EventKind::Running
        ]
    );
}
