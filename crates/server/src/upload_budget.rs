//! The process-wide budget of request-body bytes held by uploads in flight. A request takes its
//! share before its body is read (its whole `Content-Length` at once; a body of unknown length
//! grows its share as it arrives) and gives it back once its jobs are stored or it is refused.
//! While the budget is spent, requests wait for their share in arrival order; one that has
//! waited the budget's longest wait is answered `503 busy` with `Retry-After`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in KiB (a semaphore permit each).
const UNIT: u64 = 1024;

/// Shared by every request of the process (cheap to clone).
#[derive(Clone, Debug)]
pub struct UploadBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    permits: Arc<Semaphore>,
    units: u64,
    wait: Duration,
    waiting: AtomicUsize,
}

/// Why a share was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The budget stayed spent for the whole wait.
    Busy { wait: Duration },
    /// More than the whole budget was asked for: it could never be given.
    TooLarge { wanted: u64, capacity: u64 },
}

impl UploadBudget {
    /// `imgclass serve`'s default: bytes held at once.
    pub const DEFAULT_BYTES: u64 = 128 << 20;
    /// `imgclass serve`'s default: the longest a request waits for its share.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

    /// A budget of `bytes` (rounded up to KiB), where a request waits at most `wait`.
    pub fn new(bytes: u64, wait: Duration) -> UploadBudget {
        let units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS as u64);
        UploadBudget {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(units as usize)),
                units,
                wait,
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// The whole budget, in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.units * UNIT
    }

    /// The part of the budget no request holds, in bytes.
    pub fn available(&self) -> u64 {
        self.inner.permits.available_permits() as u64 * UNIT
    }

    /// Requests waiting for their share now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// The longest a request waits for its share.
    pub fn wait(&self) -> Duration {
        self.inner.wait
    }

    /// Adds `bytes` to what `held` holds, waiting (at most the budget's wait) while the budget
    /// is spent.
    pub async fn take(&self, held: &mut Held, bytes: u64) -> Result<(), Refused> {
        let units = bytes.div_ceil(UNIT);
        if units == 0 {
            return Ok(());
        }
        if held.units() + units > self.inner.units {
            return Err(Refused::TooLarge {
                wanted: (held.units() + units) * UNIT,
                capacity: self.capacity(),
            });
        }
        // At most the budget's units, which fit in a u32 for any budget below 4 TiB.
        let n = u32::try_from(units).unwrap_or(u32::MAX);
        let permit = match self.inner.permits.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(_) => {
                self.inner.waiting.fetch_add(1, Ordering::Relaxed);
                let _waiting = Waiting(&self.inner.waiting);
                let acquire = self.inner.permits.clone().acquire_many_owned(n);
                match tokio::time::timeout(self.inner.wait, acquire).await {
                    Ok(Ok(permit)) => permit,
                    // The semaphore is never closed; a timeout is the budget staying spent.
                    Ok(Err(_)) | Err(_) => {
                        return Err(Refused::Busy {
                            wait: self.inner.wait,
                        })
                    }
                }
            }
        };
        match &mut held.permit {
            Some(mine) => mine.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }
}

/// Counts a request as waiting until dropped (also when its wait is abandoned).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's share of the budget, given back when dropped.
#[derive(Debug, Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    fn units(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64)
    }

    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.units() * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_add_up_and_come_back_when_dropped() {
        let budget = UploadBudget::new(10 * UNIT, Duration::from_secs(5));
        assert_eq!(budget.capacity(), 10 * UNIT);
        let mut a = Held::default();
        budget.take(&mut a, 1).await.unwrap();
        budget.take(&mut a, 3 * UNIT).await.unwrap();
        assert_eq!(a.bytes(), 4 * UNIT, "rounded up to whole KiB");
        assert_eq!(budget.available(), 6 * UNIT);
        budget.take(&mut a, 0).await.unwrap();
        assert_eq!(a.bytes(), 4 * UNIT);
        drop(a);
        assert_eq!(budget.available(), 10 * UNIT);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = UploadBudget::new(10 * UNIT, Duration::from_secs(3600));
        let mut a = Held::default();
        budget.take(&mut a, 8 * UNIT).await.unwrap();
        assert_eq!(
            budget.take(&mut a, 3 * UNIT).await,
            Err(Refused::TooLarge {
                wanted: 11 * UNIT,
                capacity: 10 * UNIT
            })
        );
        assert_eq!(a.bytes(), 8 * UNIT, "what it held is kept");
    }

    #[tokio::test]
    async fn a_wait_ends_with_the_share_or_busy_after_the_longest_wait() {
        let budget = UploadBudget::new(10 * UNIT, Duration::from_millis(200));
        let mut first = Held::default();
        budget.take(&mut first, 10 * UNIT).await.unwrap();

        // Given as soon as the holder lets go.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut held = Held::default();
                budget
                    .take(&mut held, 4 * UNIT)
                    .await
                    .map(|()| held.bytes())
            })
        };
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(4 * UNIT));
        assert_eq!(budget.waiting(), 0);

        // Never given (nothing lets go): busy once the wait is over.
        let mut all = Held::default();
        budget.take(&mut all, 10 * UNIT).await.unwrap();
        let mut late = Held::default();
        assert_eq!(
            budget.take(&mut late, UNIT).await,
            Err(Refused::Busy {
                wait: Duration::from_millis(200)
            })
        );
        assert_eq!(late.bytes(), 0);
        assert_eq!(budget.waiting(), 0);
    }
}
