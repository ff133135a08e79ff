//! The process-wide budget of request-body bytes held by uploads in flight. A request takes its
//! share before its body is read and gives it back once its jobs are stored or it is refused.
//! While the budget is spent, requests wait for their share in arrival order; one that has
//! waited the budget's longest wait is answered `503 busy` with `Retry-After`.
//!
//! A body of declared length is admitted with its whole `Content-Length` when that much is free
//! ([`UploadBudget::admit`]): uploads that arrive at a normal pace never stall half-read for want
//! of room. When it is not free, the request waits in line only for a first slice (at most
//! [`FIRST_SLICE`]) and takes the rest as its bytes arrive: a large body, perhaps a slow one,
//! never stands at the head of the line waiting for the whole budget while small uploads wait
//! behind it. And room held for bytes that are not arriving must not keep everyone else out:
//! while a request waits, a declared share that is more than a second old and, at the pace its
//! body has come so far, would not be complete within the budget's longest wait (a client that
//! trickles, or has stopped) gives back the part it has not received. From then on it grows as
//! its bytes arrive, like a body of unknown length ([`UploadBudget::grow`]), which holds what it
//! has received and at most as much again (at most [`STEP`]) ahead of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The budget is counted in KiB (a semaphore permit each).
const UNIT: u64 = 1024;

/// The most a growing share takes ahead of the bytes it has received.
pub const STEP: u64 = 256 << 10;

/// What a declared body waits in line for when its whole length is not free.
pub const FIRST_SLICE: u64 = 1 << 20;

/// A declared share is judged on its pace only once it is this old.
const JUDGED_AFTER: Duration = Duration::from_secs(1);

/// How often a waiting request looks for shares held for bytes that are not arriving.
const LOOK_EVERY: Duration = Duration::from_millis(100);

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
    /// Every share held now, so that a waiting request can find those held for bytes that are
    /// not arriving.
    shares: Mutex<HashMap<u64, Arc<Share>>>,
    next_share: AtomicU64,
}

impl Inner {
    fn shares(&self) -> MutexGuard<'_, HashMap<u64, Arc<Share>>> {
        self.shares.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's share.
#[derive(Debug)]
struct Share {
    id: u64,
    state: Mutex<ShareState>,
}

#[derive(Debug, Default)]
struct ShareState {
    permit: Option<OwnedSemaphorePermit>,
    /// The declared body length it was admitted with, and when; `None` for a share that grows
    /// as its bytes arrive.
    declared: Option<(u64, Instant)>,
    /// Body bytes received so far.
    received: u64,
}

impl Share {
    fn state(&self) -> MutexGuard<'_, ShareState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ShareState {
    fn units(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64)
    }

    /// Gives back the part of a declared share its body has not sent, when that body, at the
    /// pace it has come so far, would not be complete within `wait`. The share grows as its
    /// bytes arrive from then on.
    fn give_back_if_stalled(&mut self, now: Instant, wait: Duration) {
        let Some((declared, since)) = self.declared else {
            return;
        };
        let keep = self.received.div_ceil(UNIT);
        let units = self.units();
        let elapsed = now.saturating_duration_since(since);
        if units <= keep || elapsed < JUDGED_AFTER {
            return;
        }
        let remaining = declared.saturating_sub(self.received) as u128;
        // remaining / (received / elapsed) > wait, without dividing by zero.
        let stalled =
            remaining * elapsed.as_millis() > wait.as_millis() * u128::from(self.received);
        if !stalled {
            return;
        }
        let surplus = usize::try_from(units - keep).unwrap_or(usize::MAX);
        if let Some(permit) = &mut self.permit {
            drop(permit.split(surplus));
        }
        self.declared = None;
    }
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
                shares: Mutex::new(HashMap::new()),
                next_share: AtomicU64::new(0),
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

    /// Admits a body that declares `declared` bytes before it is read: all of them when they
    /// are free now, else a first slice (waiting like [`take`](Self::take)), the rest taken as
    /// the body arrives ([`grow`](Self::grow)); a declared length over the whole budget is
    /// refused at once. Its pace is watched from now on (see the module's description).
    pub async fn admit(&self, held: &mut Held, declared: u64) -> Result<(), Refused> {
        let units = declared.div_ceil(UNIT);
        if held.units() + units > self.inner.units {
            return Err(Refused::TooLarge {
                wanted: (held.units() + units) * UNIT,
                capacity: self.capacity(),
            });
        }
        let share = held.share(self);
        let n = u32::try_from(units).unwrap_or(u32::MAX);
        match self.inner.permits.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                let mut state = share.state();
                match &mut state.permit {
                    Some(mine) => mine.merge(permit),
                    None => state.permit = Some(permit),
                }
            }
            Err(_) => self.take(held, declared.min(FIRST_SLICE)).await?,
        }
        share.state().declared = Some((declared, Instant::now()));
        Ok(())
    }

    /// Notes that `received` body bytes have arrived in all, and grows the share when they pass
    /// what it holds: to what has arrived plus as much again (at most [`STEP`]) ahead, waiting
    /// like [`take`](Self::take) while the budget is spent.
    pub async fn grow(&self, held: &mut Held, received: u64) -> Result<(), Refused> {
        held.note_received(received);
        let have = held.bytes();
        if received <= have {
            return Ok(());
        }
        let want = (received + received.min(STEP))
            .min(self.capacity())
            .max(received);
        self.take(held, want - have).await?;
        held.note_received(received);
        Ok(())
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
        let share = held.share(self);
        // At most the budget's units, which fit in a u32 for any budget below 4 TiB.
        let n = u32::try_from(units).unwrap_or(u32::MAX);
        let permit = match self.inner.permits.clone().try_acquire_many_owned(n) {
            Ok(permit) => permit,
            Err(_) => self.wait_for(n, share.id).await?,
        };
        let mut state = share.state();
        match &mut state.permit {
            Some(mine) => mine.merge(permit),
            None => state.permit = Some(permit),
        }
        Ok(())
    }

    /// Waits in line for `n` units, at most the budget's wait, making room meanwhile from the
    /// shares of other requests held for bytes that are not arriving.
    async fn wait_for(&self, n: u32, own: u64) -> Result<OwnedSemaphorePermit, Refused> {
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.inner.waiting);
        let busy = Refused::Busy {
            wait: self.inner.wait,
        };
        let deadline = Instant::now() + self.inner.wait;
        let acquire = self.inner.permits.clone().acquire_many_owned(n);
        tokio::pin!(acquire);
        loop {
            self.give_back_stalled(own);
            let look_again = tokio::time::sleep_until(deadline.min(Instant::now() + LOOK_EVERY));
            tokio::select! {
                biased;
                // The semaphore is never closed.
                acquired = &mut acquire => return acquired.map_err(|_| busy),
                () = look_again => {
                    if Instant::now() >= deadline {
                        return Err(busy);
                    }
                }
            }
        }
    }

    /// Takes back what other requests hold for body bytes that are not arriving.
    fn give_back_stalled(&self, own: u64) {
        let shares: Vec<Arc<Share>> = self
            .inner
            .shares()
            .values()
            .filter(|s| s.id != own)
            .cloned()
            .collect();
        let now = Instant::now();
        for share in shares {
            share.state().give_back_if_stalled(now, self.inner.wait);
        }
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
    share: Option<Arc<Share>>,
    budget: Weak<Inner>,
}

impl Held {
    /// This request's share, registered with `budget` at its first take.
    fn share(&mut self, budget: &UploadBudget) -> Arc<Share> {
        self.share
            .get_or_insert_with(|| {
                let share = Arc::new(Share {
                    id: budget.inner.next_share.fetch_add(1, Ordering::Relaxed),
                    state: Mutex::new(ShareState::default()),
                });
                budget.inner.shares().insert(share.id, share.clone());
                self.budget = Arc::downgrade(&budget.inner);
                share
            })
            .clone()
    }

    fn note_received(&self, received: u64) {
        if let Some(share) = &self.share {
            let mut state = share.state();
            state.received = state.received.max(received);
        }
    }

    fn units(&self) -> u64 {
        self.share.as_ref().map_or(0, |s| s.state().units())
    }

    /// The bytes held.
    pub fn bytes(&self) -> u64 {
        self.units() * UNIT
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let (Some(share), Some(budget)) = (&self.share, self.budget.upgrade()) {
            budget.shares().remove(&share.id);
        }
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

    #[tokio::test]
    async fn a_declared_share_whose_bytes_do_not_come_makes_room_for_a_waiter() {
        let budget = UploadBudget::new(100 * UNIT, Duration::from_secs(10));
        // Admitted with its whole length, then nothing more arrives.
        let mut stalled = Held::default();
        budget.admit(&mut stalled, 90 * UNIT).await.unwrap();
        budget.grow(&mut stalled, 3 * UNIT).await.unwrap();
        assert_eq!(stalled.bytes(), 90 * UNIT);
        // A share that keeps pace keeps its room.
        let mut steady = Held::default();
        budget.admit(&mut steady, 10 * UNIT).await.unwrap();
        let feeder = {
            let budget = budget.clone();
            tokio::spawn(async move {
                for received in 1..=10 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    budget.grow(&mut steady, received * UNIT / 2).await.unwrap();
                }
                steady
            })
        };
        let started = Instant::now();
        let mut small = Held::default();
        budget.admit(&mut small, 20 * UNIT).await.unwrap();
        let took = started.elapsed();
        assert!(took >= JUDGED_AFTER, "{took:?}");
        assert!(took < JUDGED_AFTER + Duration::from_secs(2), "{took:?}");
        // The stalled share kept what it received; it grows as its bytes arrive from now on.
        assert_eq!(stalled.bytes(), 3 * UNIT);
        budget.grow(&mut stalled, 4 * UNIT).await.unwrap();
        assert_eq!(stalled.bytes(), 8 * UNIT, "what arrived and as much again");
        let steady = feeder.await.unwrap();
        assert_eq!(
            steady.bytes(),
            10 * UNIT,
            "a share that keeps pace is not touched"
        );
        drop((stalled, steady, small));
        assert_eq!(budget.available(), budget.capacity());
    }

    #[tokio::test]
    async fn a_growing_share_holds_what_arrived_and_at_most_a_step_ahead() {
        let budget = UploadBudget::new(8 * STEP, Duration::from_secs(5));
        let mut held = Held::default();
        budget.grow(&mut held, 1).await.unwrap();
        assert_eq!(held.bytes(), UNIT);
        budget.grow(&mut held, 3 * UNIT).await.unwrap();
        assert_eq!(held.bytes(), 6 * UNIT);
        budget.grow(&mut held, 2 * STEP + 1).await.unwrap();
        assert_eq!(held.bytes(), 3 * STEP + UNIT);
        // Never more than the budget; more than all of it is refused.
        budget.grow(&mut held, 8 * STEP).await.unwrap();
        assert_eq!(held.bytes(), 8 * STEP);
        assert!(matches!(
            budget.grow(&mut held, 8 * STEP + 1).await,
            Err(Refused::TooLarge { .. })
        ));
    }
}
