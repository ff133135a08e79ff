//! The process-wide budget of decoder memory: before a decoder allocates pixel buffers, it takes
//! their size (in bytes) from one [`DecodeBudget`]; when the budget is spent, it waits until
//! another decode gives its share back (it does not fail). One decode may never take more than
//! the whole budget: an image that would needs more is refused as too large.

use crate::cancel::{Cancel, Canceled};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default size of the process-wide budget: room for two 100 MP RGB decodes at once.
pub const DEFAULT_DECODE_BUDGET: u64 = 640 << 20;

/// A semaphore counted in bytes.
#[derive(Debug)]
pub struct DecodeBudget {
    capacity: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// A share of the budget, given back when dropped.
#[derive(Debug)]
pub struct BudgetPermit<'a> {
    budget: &'a DecodeBudget,
    bytes: u64,
}

impl Drop for BudgetPermit<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
            *used -= self.bytes;
            self.budget.freed.notify_all();
        }
    }
}

impl BudgetPermit<'_> {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

static GLOBAL: OnceLock<DecodeBudget> = OnceLock::new();

impl DecodeBudget {
    pub fn new(capacity: u64) -> DecodeBudget {
        DecodeBudget {
            capacity: capacity.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// The budget every classifier of this process shares unless given another one. Its size is
    /// `IMGCLASS_DECODE_BUDGET` (bytes) if set when it is first used, else
    /// [`DEFAULT_DECODE_BUDGET`].
    pub fn global() -> &'static DecodeBudget {
        GLOBAL.get_or_init(|| {
            let capacity = std::env::var("IMGCLASS_DECODE_BUDGET")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(DEFAULT_DECODE_BUDGET);
            DecodeBudget::new(capacity)
        })
    }

    /// The most one decode may take.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes currently taken.
    pub fn in_use(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `bytes` (at most [`capacity`](Self::capacity); callers refuse larger needs first),
    /// waiting while the budget is spent, until `cancel` fires.
    pub fn acquire(&self, bytes: u64, cancel: &Cancel) -> Result<BudgetPermit<'_>, Canceled> {
        let bytes = bytes.min(self.capacity);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            cancel.check()?;
            if *used + bytes <= self.capacity {
                *used += bytes;
                return Ok(BudgetPermit {
                    budget: self,
                    bytes,
                });
            }
            // Wake up now and then to look at the flag; sooner at the deadline.
            let mut wait = Duration::from_millis(50);
            if let Some(d) = cancel.deadline() {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            used = self
                .freed
                .wait_timeout(used, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn waits_while_spent_and_wakes_when_given_back() {
        let budget = DecodeBudget::new(100);
        let a = budget.acquire(70, &Cancel::never()).unwrap();
        assert_eq!(budget.in_use(), 70);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let b = budget.acquire(50, &Cancel::never()).unwrap();
                tx.send(b.bytes()).unwrap();
            });
            // The second decode cannot start while the first holds 70 of 100.
            assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
            drop(a);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 50);
        });
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_waiting_decode_gives_up_at_its_deadline() {
        let budget = DecodeBudget::new(10);
        let _held = budget.acquire(10, &Cancel::never()).unwrap();
        let cancel = Cancel::after(Duration::from_millis(30));
        let err = budget.acquire(1, &cancel).unwrap_err();
        assert!(err.timed_out);
        // More than the capacity is capped at the capacity (the caller refuses such images).
        drop(_held);
        assert_eq!(budget.acquire(1000, &Cancel::never()).unwrap().bytes(), 10);
    }
}
