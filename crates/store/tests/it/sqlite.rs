//! What only the SQLite backend does: files on disk.

use crate::common::*;
use imgclass_core::JobStatus;
use imgclass_store::StoreError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_database_keeps_its_jobs_and_images() {
    let dir = tempfile::tempdir().unwrap();
    // The directory of the file does not exist yet: it is created.
    let url = format!("sqlite://{}", dir.path().join("nested/dir/t.db").display());
    let store = imgclass_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let job = create(&*store, new_job(1)).await;
    let claim = claim_one(&*store, "w", LONG_LEASE).await;
    let image = store.read_blob(&job.image_sha256).await.unwrap().unwrap();
    let seq = store.last_event_seq().await.unwrap();
    drop(store);

    let store = imgclass_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap(); // applying migrations again is a no-op
    store.migrate().await.unwrap();
    let reopened = get(&*store, job.id).await;
    assert_eq!(reopened, claim.job);
    assert_eq!(reopened.status, JobStatus::Running);
    assert_eq!(
        store.read_blob(&job.image_sha256).await.unwrap().unwrap(),
        image
    );
    assert_eq!(store.last_event_seq().await.unwrap(), seq);
    // The lease survives the restart.
    assert!(store.heartbeat(&claim.lease, LONG_LEASE).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_url_scheme_is_a_config_error() {
    match imgclass_store::connect("mysql://localhost/imgclass").await {
        Err(StoreError::Config { url, .. }) => assert_eq!(url, "mysql://localhost/imgclass"),
        Err(other) => panic!("expected a config error, got {other}"),
        Ok(_) => panic!("expected a config error"),
    }
}
