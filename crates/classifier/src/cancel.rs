//! Cancelling a classification: a deadline, a flag another thread can raise, or both. The
//! pre-processing checks it between stages and between rows, so an attempt its caller gave up on
//! (the worker's `--job-timeout`) stops soon instead of running to the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When to give up. Cheap to clone and to check; `Cancel::never()` never fires.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    deadline: Option<Instant>,
    flag: Option<Arc<AtomicBool>>,
}

/// Raises the flag of the [`Cancel`] it was made with.
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The work was given up: its deadline passed or it was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", if *.timed_out { "the deadline passed before the image was classified" } else { "the classification was cancelled" })]
pub struct Canceled {
    pub timed_out: bool,
}

impl Cancel {
    /// Never fires.
    pub fn never() -> Cancel {
        Cancel::default()
    }

    /// Fires at `deadline`.
    pub fn at(deadline: Instant) -> Cancel {
        Cancel {
            deadline: Some(deadline),
            flag: None,
        }
    }

    /// Fires `timeout` from now.
    pub fn after(timeout: Duration) -> Cancel {
        Cancel::at(Instant::now() + timeout)
    }

    /// Adds a flag to raise from another thread; returns the handle that raises it.
    pub fn with_flag(mut self) -> (Cancel, CancelHandle) {
        let flag = Arc::new(AtomicBool::new(false));
        self.flag = Some(flag.clone());
        (self, CancelHandle(flag))
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// `Err` once the deadline has passed or the flag is raised.
    pub fn check(&self) -> Result<(), Canceled> {
        if self
            .flag
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(Canceled { timed_out: false });
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Canceled { timed_out: true });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_on_deadline_or_flag() {
        assert!(Cancel::never().check().is_ok());
        assert!(Cancel::after(Duration::from_secs(3600)).check().is_ok());
        let past = Cancel::at(Instant::now() - Duration::from_millis(1));
        assert_eq!(past.check(), Err(Canceled { timed_out: true }));
        let (c, h) = Cancel::never().with_flag();
        assert!(c.check().is_ok());
        h.cancel();
        assert_eq!(c.check(), Err(Canceled { timed_out: false }));
        assert_eq!(c.clone().check(), Err(Canceled { timed_out: false }));
    }
}
