//! How the database connections are doing, for readiness and metrics: the pools' use, the
//! errors this process has seen, whether the store's last failed write found its storage full
//! (until a write succeeds again), and, on SQLite, whether the database file's path still names
//! the file the store opened (a file deleted or replaced under a running server would take
//! every later write with it: such writes are refused).

use crate::StoreError;
use chrono::{DateTime, Utc};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// One connection pool's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// `writer` or `reader` (on PostgreSQL both roles are served by one pool).
    pub name: &'static str,
    /// Connections open.
    pub size: u32,
    /// Of those, idle.
    pub idle: u32,
    pub max: u32,
}

/// Database errors seen by this process since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatabaseErrors {
    /// The database could not be reached or refused connections.
    pub unavailable: u64,
    /// Every other error a statement returned.
    pub other: u64,
}

static UNAVAILABLE: AtomicU64 = AtomicU64::new(0);
static OTHER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn count_error(unavailable: bool) {
    let c = if unavailable { &UNAVAILABLE } else { &OTHER };
    c.fetch_add(1, Ordering::Relaxed);
}

/// The database errors this process has seen.
pub fn database_errors() -> DatabaseErrors {
    DatabaseErrors {
        unavailable: UNAVAILABLE.load(Ordering::Relaxed),
        other: OTHER.load(Ordering::Relaxed),
    }
}

/// The store's storage was full at its last failed write, and no write has succeeded since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullStorage {
    /// When the write failed.
    pub since: DateTime<Utc>,
    /// What the database said.
    pub detail: String,
}

/// The database file a store opened: its path, and the device and inode it had then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    path: PathBuf,
    id: (u64, u64),
}

impl FileIdentity {
    /// The file `path` names now.
    pub(crate) fn of(path: &Path) -> std::io::Result<FileIdentity> {
        Ok(FileIdentity {
            path: path.to_path_buf(),
            id: file_id(&std::fs::metadata(path)?),
        })
    }

    /// `None` while the path still names this file; else what became of it. One `stat`.
    fn changed(&self) -> Option<String> {
        let path = self.path.display();
        match std::fs::metadata(&self.path) {
            Ok(m) if file_id(&m) == self.id => None,
            Ok(_) => Some(format!(
                "the database file {path} was replaced by another file while the server ran; \
                 writes are refused so that nothing is stored in a file no restart would find \
                 (restore the file, or restart the server)"
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                "the database file {path} was deleted while the server ran; writes are refused \
                 so that nothing is stored in a file no restart would find (restore the file, or \
                 restart the server)"
            )),
            Err(e) => Some(format!("the database file {path} cannot be examined: {e}")),
        }
    }
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Elsewhere only the file's existence is watched.
#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// One store's memory of a full disk: set when a write transaction fails because the storage is
/// full, cleared when a write transaction commits. On SQLite it also watches the database file.
#[derive(Debug, Default)]
pub(crate) struct StorageWatch {
    full: Mutex<Option<FullStorage>>,
    /// The database file opened (SQLite).
    file: OnceLock<FileIdentity>,
}

impl StorageWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FullStorage>> {
        self.full.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn full(&self, detail: String) {
        *self.lock() = Some(FullStorage {
            since: Utc::now(),
            detail,
        });
    }

    pub(crate) fn write_succeeded(&self) {
        let mut full = self.lock();
        if full.is_some() {
            *full = None;
        }
    }

    pub(crate) fn current(&self) -> Option<FullStorage> {
        self.lock().clone()
    }

    /// Watches the database file `file` from now on.
    pub(crate) fn watch_file(&self, file: FileIdentity) {
        let _ = self.file.set(file);
    }

    /// Why the store's storage cannot take writes, if it cannot: the database file's path no
    /// longer names the file opened.
    pub(crate) fn fault(&self) -> Option<String> {
        self.file.get().and_then(FileIdentity::changed)
    }

    /// Refuses a write (`Unavailable`) while [`fault`](Self::fault) has a reason; checked as
    /// every write transaction begins.
    pub(crate) fn check_writable(&self) -> Result<(), StoreError> {
        match self.fault() {
            None => Ok(()),
            Some(reason) => {
                count_error(true);
                Err(StoreError::Unavailable(reason))
            }
        }
    }
}

thread_local! {
    /// A full-storage error converted on this thread and not yet claimed by the write it ended.
    /// The conversion (`?` on a statement of a write transaction) and the drop of that
    /// transaction's [`crate::tx::Write`] happen in the same poll, with no `.await` between,
    /// so they run on the same thread one after the other: the write takes it in its `Drop` and
    /// tells its own store. A new write clears any leftover (an error outside a write).
    static FULL_SEEN: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Notes a full-storage error for the write transaction it is ending.
pub(crate) fn storage_full_seen(detail: &str) {
    FULL_SEEN.with(|f| *f.borrow_mut() = Some(detail.to_string()));
}

/// The full-storage error noted on this thread since the last call, if any.
pub(crate) fn take_storage_full_seen() -> Option<String> {
    FULL_SEEN.with(|f| f.borrow_mut().take())
}

pub trait Health: Send + Sync {
    /// The connection pools' use.
    fn pool_status(&self) -> Vec<PoolStatus>;

    /// `Some` when the last write that failed found the storage full (SQLite's "database or
    /// disk is full", PostgreSQL's `disk_full`) and no write has committed since.
    fn full_storage(&self) -> Option<FullStorage>;

    /// `Some(reason)` while the store refuses every write because its storage is not the one it
    /// opened (SQLite: the database file was deleted or replaced under the running process).
    fn storage_fault(&self) -> Option<String> {
        None
    }
}
