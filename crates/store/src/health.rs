//! How the database connections are doing, for readiness and metrics: the pools' use and the
//! errors this process has seen.

use crate::sql::SqlStore;
use std::sync::atomic::{AtomicU64, Ordering};

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

pub trait Health: Send + Sync {
    /// The connection pools' use.
    fn pool_status(&self) -> Vec<PoolStatus>;
}

impl Health for SqlStore {
    fn pool_status(&self) -> Vec<PoolStatus> {
        let status = |name, pool: &sqlx::AnyPool| PoolStatus {
            name,
            size: pool.size(),
            idle: pool.num_idle() as u32,
            max: pool.options().get_max_connections(),
        };
        vec![
            status("writer", &self.writer),
            status("reader", &self.reader),
        ]
    }
}
