//! The process's memory budget: the models a node serves (their files and ONNX Runtime sessions) and the
//! pixel buffers of the decodes in flight are both counted in one [`MemoryBudget`].
//!
//! - A loaded model holds the size of its ONNX file, and each of its sessions its measured size
//!   ([`Hold`]), for as long as they live; one that would leave the decoders less than
//!   [`MIN_DECODE_ROOM`] is refused, and its model is not served.
//! - Before a decoder allocates pixel buffers it takes their size (in bytes) with
//!   [`MemoryBudget::acquire`]; decodes share what the models leave, at most the decode budget.
//!   When that is spent, a decode waits until another gives its share back (it does not fail).
//!   One decode may never take more than the whole of it: an image that would need more is
//!   refused as too large.

use crate::cancel::{Cancel, Canceled};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default decode budget: room for two 100 MP RGB decodes at once.
pub const DEFAULT_DECODE_BUDGET: u64 = 640 << 20;

/// The least a default memory budget is, whatever the machine.
pub const MIN_MEMORY_BUDGET: u64 = 1 << 30;

/// What the models must leave the decoders (or the decode budget, when it is smaller): room
/// for a few photos' decodes at once.
pub const MIN_DECODE_ROOM: u64 = 256 << 20;

/// A semaphore counted in bytes, with long-lived holders (model files, sessions) and short-lived ones
/// (decodes).
#[derive(Debug)]
pub struct MemoryBudget {
    /// Sessions and decodes together.
    total: u64,
    /// The most the decodes may hold at once.
    decodes: u64,
    state: Mutex<Held>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct Held {
    decoding: u64,
    models: u64,
}

/// A decode's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct BudgetPermit<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl Drop for BudgetPermit<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut held = self.budget.lock();
            held.decoding -= self.bytes;
            self.budget.freed.notify_all();
        }
    }
}

impl BudgetPermit<'_> {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A long-lived share of the budget (a session's, a model file's), given back when dropped.
#[derive(Debug)]
pub struct Hold<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut held = self.budget.lock();
        held.models -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// A hold that does not fit what is left of the budget.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{what} needs {} MiB and the memory budget ({} MiB) has {} MiB left after the {} MiB that \
     models and their sessions hold and the {} MiB kept for decodes; raise --memory-budget \
     (IMGCLASS_MEMORY_BUDGET) or serve fewer models on this node",
    mib(*.needed), mib(*.total), mib(.total.saturating_sub(*.held + *.kept)), mib(*.held),
    mib(*.kept)
)]
pub struct NoRoom {
    /// What asked: "its ONNX Runtime session", "its model file".
    pub what: &'static str,
    pub needed: u64,
    pub total: u64,
    /// What the models and their sessions hold already.
    pub held: u64,
    pub kept: u64,
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

static GLOBAL: OnceLock<MemoryBudget> = OnceLock::new();

impl MemoryBudget {
    /// A budget of `capacity` bytes for decodes alone (models may hold none of it).
    pub fn new(capacity: u64) -> MemoryBudget {
        MemoryBudget::with_models(capacity, capacity)
    }

    /// A budget of `total` bytes for models and decodes, the decodes holding at most
    /// `decodes` of it at once.
    pub fn with_models(total: u64, decodes: u64) -> MemoryBudget {
        MemoryBudget {
            total: total.max(1),
            decodes: decodes.clamp(1, total.max(1)),
            state: Mutex::new(Held::default()),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the process's budget before anything uses it (`serve`, `worker`: from their
    /// `--memory-budget`). Once [`global`](Self::global) has been called, this changes nothing
    /// and returns `false`.
    pub fn init_global(total: u64, decodes: u64) -> bool {
        GLOBAL
            .set(MemoryBudget::with_models(total, decodes))
            .is_ok()
    }

    /// The budget every classifier of this process shares. Unless set by
    /// [`init_global`](Self::init_global): its total is `IMGCLASS_MEMORY_BUDGET` (bytes) if set,
    /// else [`default_total`]; its decode budget `IMGCLASS_DECODE_BUDGET` (bytes) if set, else
    /// [`DEFAULT_DECODE_BUDGET`].
    pub fn global() -> &'static MemoryBudget {
        GLOBAL.get_or_init(|| {
            let bytes = |name: &str| {
                std::env::var(name)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|v| *v > 0)
            };
            let decodes = bytes("IMGCLASS_DECODE_BUDGET").unwrap_or(DEFAULT_DECODE_BUDGET);
            let total = bytes("IMGCLASS_MEMORY_BUDGET").unwrap_or_else(default_total);
            MemoryBudget::with_models(total, decodes)
        })
    }

    /// Sessions and decodes together.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The most one decode may take now: the decode budget, or what the models and sessions
    /// leave when that is less.
    pub fn capacity(&self) -> u64 {
        let models = self.lock().models;
        self.decode_room(models)
    }

    fn decode_room(&self, models: u64) -> u64 {
        self.decodes.min(self.total.saturating_sub(models)).max(1)
    }

    /// Bytes the decodes hold now.
    pub fn in_use(&self) -> u64 {
        self.lock().decoding
    }

    /// Bytes the models and their sessions hold now.
    pub fn models(&self) -> u64 {
        self.lock().models
    }

    /// Takes `bytes` (at most [`capacity`](Self::capacity); callers refuse larger needs first),
    /// waiting while the decodes' room is spent, until `cancel` fires.
    pub fn acquire(&self, bytes: u64, cancel: &Cancel) -> Result<BudgetPermit<'_>, Canceled> {
        let mut held = self.lock();
        loop {
            cancel.check()?;
            let room = self.decode_room(held.models);
            let bytes = bytes.min(room);
            if held.decoding + bytes <= room {
                held.decoding += bytes;
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
            held = self
                .freed
                .wait_timeout(held, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Holds `bytes` for `what` (a model's file, a session), unless that would leave the
    /// decodes less than [`MIN_DECODE_ROOM`] (or the decode budget, when it is smaller). Does
    /// not wait: decodes in flight keep what they hold, and the next ones fit in what is left.
    pub fn hold(&self, what: &'static str, bytes: u64) -> Result<Hold<'_>, NoRoom> {
        let mut held = self.lock();
        let kept = MIN_DECODE_ROOM.min(self.decodes);
        if held.models + bytes + kept > self.total {
            return Err(NoRoom {
                what,
                needed: bytes,
                total: self.total,
                held: held.models,
                kept,
            });
        }
        held.models += bytes;
        Ok(Hold {
            budget: self,
            bytes,
        })
    }
}

/// The default memory budget: a quarter of the memory this process may use (its cgroup's
/// `memory.max` when one is set, else the machine's), at least [`MIN_MEMORY_BUDGET`].
pub fn default_total() -> u64 {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    let limit = match (cgroup, machine) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    };
    limit.map_or(MIN_MEMORY_BUDGET, |l| (l / 4).max(MIN_MEMORY_BUDGET))
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn waits_while_spent_and_wakes_when_given_back() {
        let budget = MemoryBudget::new(100);
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
        let budget = MemoryBudget::new(10);
        let _held = budget.acquire(10, &Cancel::never()).unwrap();
        let cancel = Cancel::after(Duration::from_millis(30));
        let err = budget.acquire(1, &cancel).unwrap_err();
        assert!(err.timed_out);
        // More than the capacity is capped at the capacity (the caller refuses such images).
        drop(_held);
        assert_eq!(budget.acquire(1000, &Cancel::never()).unwrap().bytes(), 10);
    }

    #[test]
    fn sessions_take_their_share_first_and_leave_the_decodes_room() {
        const MIB: u64 = 1 << 20;
        let budget = MemoryBudget::with_models(1024 * MIB, 640 * MIB);
        assert_eq!(budget.capacity(), 640 * MIB);
        let a = budget.hold("a session", 300 * MIB).unwrap();
        // 724 MiB left: the decode budget still fits.
        assert_eq!(budget.capacity(), 640 * MIB);
        let b = budget.hold("a session", 400 * MIB).unwrap();
        assert_eq!(budget.models(), 700 * MIB);
        assert_eq!(budget.capacity(), 324 * MIB);
        // A decode takes at most what the sessions leave.
        assert_eq!(
            budget.acquire(500 * MIB, &Cancel::never()).unwrap().bytes(),
            324 * MIB
        );
        // 100 more would leave the decodes less than MIN_DECODE_ROOM.
        let refused = budget.hold("a session", 100 * MIB).unwrap_err();
        assert_eq!((refused.needed, refused.held), (100 * MIB, 700 * MIB));
        assert!(
            refused.to_string().starts_with("a session needs 100 MiB"),
            "{refused}"
        );
        drop(a);
        let _c = budget.hold("a session", 100 * MIB).unwrap();
        drop(b);
        assert_eq!(budget.models(), 100 * MIB);
        assert_eq!(budget.capacity(), 640 * MIB);
    }
}
