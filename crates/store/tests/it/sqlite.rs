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

/// A small tmpfs mounted for one test (root only); unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { path, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_cleanly_and_service_resumes_when_space_returns() {
    // A real full disk: a 4 MiB tmpfs, a third of it taken by a file we can delete later.
    let disk = match SmallDisk::mount(4 << 20) {
        Some(d) => d,
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must be able to mount a tmpfs for this test (it runs as root)")
        }
        None => {
            eprintln!("SKIPPED: cannot mount a tmpfs here (not root)");
            return;
        }
    };
    let filler = disk.path.join("filler");
    std::fs::write(&filler, vec![1u8; 1400 << 10]).unwrap();
    let url = format!("sqlite://{}", disk.path.join("t.db").display());
    let store = imgclass_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.full_storage(), None);

    // Fill it: ~200 KB images until the disk refuses one.
    let mut stored = Vec::new();
    let refused = loop {
        let seed = stored.len() as u64;
        match store
            .create_jobs(vec![job_for(png(260, 260, seed), 260, 260, "big.png")])
            .await
        {
            Ok(mut jobs) => stored.push(jobs.remove(0)),
            Err(e) => break e,
        }
        assert!(stored.len() < 100, "the disk never filled");
    };
    assert!(matches!(refused, StoreError::StorageFull(_)), "{refused:?}");
    assert!(!stored.is_empty());
    // The store remembers it (for readiness) until a write succeeds.
    let full = store.full_storage().expect("a full disk is remembered");
    assert!(full.detail.contains("full"), "{full:?}");

    // Nothing half-written: exactly the acknowledged jobs exist, and the store still answers.
    let page = store
        .list_jobs(&imgclass_store::ListQuery {
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), stored.len());
    for job in &stored {
        assert_eq!(get(&*store, job.id).await.status, JobStatus::Queued);
    }
    // Every later write while full fails the same clean way (not a poisoned connection).
    for seed in 1000..1003 {
        let e = store
            .create_jobs(vec![job_for(png(260, 260, seed), 260, 260, "big.png")])
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::StorageFull(_)), "{e:?}");
    }
    assert!(store.full_storage().is_some(), "reads do not clear it");

    // Space returns: service resumes by itself, and the first write that succeeds clears it.
    std::fs::remove_file(&filler).unwrap();
    assert!(store.full_storage().is_some());
    let job = create(&*store, new_job(5000)).await;
    assert_eq!(store.full_storage(), None);
    let claims = store.claim("w", 100, LONG_LEASE).await.unwrap();
    assert_eq!(claims.len(), stored.len() + 1);
    assert!(claims.iter().any(|c| c.job.id == job.id));
    store.cancel(stored[0].id).await.unwrap();
    store.delete(job.id).await.unwrap();
}

/// A small SQLite database made without the store (so that no handle of it stays open).
fn plain_database(file: &std::path::Path) {
    let conn = rusqlite::Connection::open(file).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)")
        .unwrap();
}

/// Opening `url` fails at once with a configuration error; its message.
async fn refused_at_once(url: &str) -> String {
    let started = std::time::Instant::now();
    let opened = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        imgclass_store::connect(url),
    )
    .await
    .expect("connect answers (not after the pool's 30 s timeout)");
    let took = started.elapsed();
    let message = match opened {
        Err(StoreError::Config { message, .. }) => message,
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(_) => panic!("a database file this process cannot write was opened"),
    };
    assert!(
        took < std::time::Duration::from_secs(5),
        "refused after {took:?}"
    );
    eprintln!("refused in {took:?}: {message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_this_process_cannot_write_is_refused_at_once_naming_it() {
    // A file without write permission. Root writes it all the same (and so may the store);
    // anyone else is refused, with the file and its permissions named.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readonly.db");
    plain_database(&file);
    let _ = std::fs::remove_file(dir.path().join("readonly.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("readonly.db-shm"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let url = format!("sqlite://{}", file.display());
    let root = std::fs::OpenOptions::new().write(true).open(&file).is_ok();
    if root {
        eprintln!("running as root: file permissions do not stop writes; only a read-only file system is tried");
        let store = imgclass_store::connect(&url).await.unwrap();
        drop(store);
    } else {
        let message = refused_at_once(&url).await;
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains("mode 0444"), "{message}");
        assert!(
            message.contains("ermission denied") || message.contains("read-only"),
            "{message}"
        );
    }

    // A read-only file system stops everyone, root included.
    let Some(disk) = SmallDisk::mount(1 << 20) else {
        assert!(
            !root || std::env::var("CI").as_deref() != Ok("true"),
            "CI runs as root and can mount"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root)");
        return;
    };
    let file = disk.path.join("t.db");
    plain_database(&file);
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk.path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "remounting the tmpfs read-only");
    let message = refused_at_once(&format!("sqlite://{}", file.display())).await;
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("Read-only file system"), "{message}");
    // A file that does not exist yet and cannot be created there is named too.
    let missing = disk.path.join("new.db");
    let message = refused_at_once(&format!("sqlite://{}", missing.display())).await;
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_deleted_under_the_store_refuses_every_write_and_is_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.db");
    let store = imgclass_store::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let job = create(&*store, new_job(1)).await;
    assert_eq!(store.storage_fault(), None);

    for name in ["t.db", "t.db-wal", "t.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let fault = store.storage_fault().expect("a deleted file is noticed");
    assert!(fault.contains("deleted"), "{fault}");
    assert!(fault.contains(&file.display().to_string()), "{fault}");
    // Every write is refused as unavailable, the worker's round included; nothing is
    // acknowledged that a restart would not find.
    let refused = [
        store
            .create_jobs(vec![new_job(2)])
            .await
            .map(drop)
            .unwrap_err(),
        store.claim("w", 1, LONG_LEASE).await.map(drop).unwrap_err(),
        store.cancel(job.id).await.map(drop).unwrap_err(),
    ];
    for e in refused {
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("deleted")),
            "{e:?}"
        );
    }
    // No connection made an empty database in its place (a restart must not start afresh
    // silently either: it finds no file and makes a new one, knowingly).
    let _ = store.get_job(job.id).await;
    assert!(
        !file.exists(),
        "a new file was created at {}",
        file.display()
    );

    // A file put in its place is not the one opened: still refused.
    std::fs::write(&file, b"").unwrap();
    let fault = store.storage_fault().expect("a replaced file is noticed");
    assert!(fault.contains("replaced"), "{fault}");
    assert!(store.create_jobs(vec![new_job(3)]).await.is_err());
}
