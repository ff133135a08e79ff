//! The queue's rules, in one place and free of IO: given a job's counters and what happened to
//! it (an attempt ended with a result or an error, its worker was lost, a person acted), which
//! [`Action`] applies, and so which state, event and `run_at` come next. The workers and the
//! store ask these functions; the store then writes what they decided, guarded by the state the
//! job was in.

use crate::{Action, ErrorCode, EventKind, JobStatus, TransitionError};
use std::time::Duration;

/// Settings of the rules (from the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Delay before the first automatic retry; it doubles with each attempt.
    pub backoff_base: Duration,
    /// The longest delay between automatic retries.
    pub backoff_max: Duration,
    /// How many times a job may lose its worker before it fails as stalled.
    pub max_stalls: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_stalls: 3,
        }
    }
}

/// The counters of a job that the rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub status: JobStatus,
    /// Attempts since the job was created or last retried by hand (this one included while it
    /// runs).
    pub run_attempts: u32,
    pub max_attempts: u32,
    /// Times the job's worker was lost so far.
    pub stalls: u32,
}

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happened {
    /// The running attempt produced a result.
    Succeeded,
    /// The running attempt failed with this error; `retry_after` is a delay the failing party
    /// asked for (e.g. an upstream's `Retry-After`), used instead of the backoff when longer.
    Errored {
        code: ErrorCode,
        retry_after: Option<Duration>,
    },
    /// The running attempt's lease expired: its worker is gone.
    LeaseExpired,
    /// The worker gives the job back unfinished (it is shutting down); the attempt does not count.
    Released,
    /// A person asked for the job to run again.
    RetryRequested,
    /// A person canceled the job.
    CancelRequested,
}

/// What the rules decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The state the job moves to.
    pub to: JobStatus,
    /// The event recorded with the change.
    pub event: EventKind,
    /// When the job runs next, counted from now (only when it goes back to the queue).
    pub run_in: Option<Duration>,
}

/// Decides what follows `happened` for a job with `counters`. `jitter` (0.5–1.0, drawn by the
/// caller so that tests are deterministic) scales the backoff of an automatic retry.
pub fn decide(
    rules: &Rules,
    counters: Counters,
    happened: Happened,
    jitter: f64,
) -> Result<Decision, TransitionError> {
    let attempts_left = counters.run_attempts < counters.max_attempts;
    let (action, run_in) = match happened {
        Happened::Succeeded => (Action::Succeed, None),
        Happened::Errored { code, retry_after } => {
            if code.is_retryable() && attempts_left {
                let delay = backoff(rules, counters.run_attempts, jitter);
                let delay = retry_after.map_or(delay, |asked| asked.max(delay));
                (Action::Requeue, Some(delay))
            } else {
                (Action::Fail, None)
            }
        }
        Happened::LeaseExpired => {
            if attempts_left && counters.stalls < rules.max_stalls {
                (Action::LeaseExpired, Some(Duration::ZERO))
            } else {
                (Action::Fail, None)
            }
        }
        Happened::Released => (Action::Release, Some(Duration::ZERO)),
        Happened::RetryRequested => (Action::Retry, Some(Duration::ZERO)),
        Happened::CancelRequested => (Action::Cancel, None),
    };
    let to = counters.status.apply(action)?;
    Ok(Decision {
        action,
        to,
        event: action.event(),
        run_in,
    })
}

/// Exponential backoff: `base × 2^(attempt−1)`, capped at `max`, then scaled by `jitter`
/// (clamped to 0.5–1.0).
pub fn backoff(rules: &Rules, attempt: u32, jitter: f64) -> Duration {
    let exp = rules
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    exp.min(rules.backoff_max).mul_f64(jitter.clamp(0.5, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(run_attempts: u32, max_attempts: u32, stalls: u32) -> Counters {
        Counters {
            status: JobStatus::Running,
            run_attempts,
            max_attempts,
            stalls,
        }
    }

    fn errored(code: ErrorCode) -> Happened {
        Happened::Errored {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn success_ends_the_job() {
        let d = decide(
            &Rules::default(),
            running(1, 3, 0),
            Happened::Succeeded,
            1.0,
        )
        .unwrap();
        assert_eq!(d.to, JobStatus::Succeeded);
        assert_eq!(d.event, EventKind::Succeeded);
        assert_eq!(d.run_in, None);
    }

    #[test]
    fn a_retryable_error_with_attempts_left_goes_back_with_backoff() {
        let rules = Rules::default();
        let d = decide(&rules, running(2, 3, 0), errored(ErrorCode::Timeout), 1.0).unwrap();
        assert_eq!(d.action, Action::Requeue);
        assert_eq!(d.to, JobStatus::Queued);
        assert_eq!(d.event, EventKind::Requeued);
        assert_eq!(d.run_in, Some(Duration::from_secs(2)));
    }

    #[test]
    fn the_last_attempt_or_a_bad_image_fails() {
        let rules = Rules::default();
        let last = decide(&rules, running(3, 3, 0), errored(ErrorCode::Timeout), 1.0).unwrap();
        assert_eq!(
            (last.to, last.event),
            (JobStatus::Failed, EventKind::Failed)
        );
        let bad = decide(
            &rules,
            running(1, 3, 0),
            errored(ErrorCode::ImageCorrupt),
            1.0,
        )
        .unwrap();
        assert_eq!(bad.to, JobStatus::Failed);
    }

    #[test]
    fn an_asked_for_delay_wins_when_longer() {
        let rules = Rules::default();
        let asked = Happened::Errored {
            code: ErrorCode::Unavailable,
            retry_after: Some(Duration::from_secs(30)),
        };
        let d = decide(&rules, running(1, 3, 0), asked, 1.0).unwrap();
        assert_eq!(d.run_in, Some(Duration::from_secs(30)));
        let short = Happened::Errored {
            code: ErrorCode::Unavailable,
            retry_after: Some(Duration::from_millis(1)),
        };
        let d = decide(&rules, running(1, 3, 0), short, 1.0).unwrap();
        assert_eq!(d.run_in, Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_lost_worker_requeues_until_attempts_or_stalls_run_out() {
        let rules = Rules {
            max_stalls: 2,
            ..Rules::default()
        };
        let d = decide(&rules, running(1, 3, 0), Happened::LeaseExpired, 1.0).unwrap();
        assert_eq!((d.to, d.event), (JobStatus::Queued, EventKind::Requeued));
        assert_eq!(d.run_in, Some(Duration::ZERO));
        let d = decide(&rules, running(1, 3, 2), Happened::LeaseExpired, 1.0).unwrap();
        assert_eq!((d.action, d.to), (Action::Fail, JobStatus::Failed));
        let d = decide(&rules, running(3, 3, 0), Happened::LeaseExpired, 1.0).unwrap();
        assert_eq!(d.to, JobStatus::Failed);
    }

    #[test]
    fn people_act_only_where_the_state_machine_allows() {
        let rules = Rules::default();
        let at = |status| Counters {
            status,
            run_attempts: 3,
            max_attempts: 3,
            stalls: 0,
        };
        for status in [JobStatus::Failed, JobStatus::Canceled] {
            let d = decide(&rules, at(status), Happened::RetryRequested, 1.0).unwrap();
            assert_eq!((d.to, d.event), (JobStatus::Queued, EventKind::Retried));
            assert_eq!(d.run_in, Some(Duration::ZERO));
        }
        assert!(decide(
            &rules,
            at(JobStatus::Succeeded),
            Happened::RetryRequested,
            1.0
        )
        .is_err());
        assert!(decide(&rules, at(JobStatus::Queued), Happened::RetryRequested, 1.0).is_err());
        for status in [JobStatus::Queued, JobStatus::Running] {
            let d = decide(&rules, at(status), Happened::CancelRequested, 1.0).unwrap();
            assert_eq!((d.to, d.event), (JobStatus::Canceled, EventKind::Canceled));
        }
        assert!(decide(
            &rules,
            at(JobStatus::Failed),
            Happened::CancelRequested,
            1.0
        )
        .is_err());
    }

    #[test]
    fn only_a_running_job_can_end_an_attempt() {
        let rules = Rules::default();
        for status in JobStatus::ALL
            .into_iter()
            .filter(|s| *s != JobStatus::Running)
        {
            let c = Counters {
                status,
                run_attempts: 1,
                max_attempts: 3,
                stalls: 0,
            };
            for h in [
                Happened::Succeeded,
                errored(ErrorCode::Timeout),
                Happened::LeaseExpired,
                Happened::Released,
            ] {
                assert!(decide(&rules, c, h, 1.0).is_err(), "{status:?} {h:?}");
            }
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let rules = Rules {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            max_stalls: 3,
        };
        assert_eq!(backoff(&rules, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&rules, 1, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(&rules, 3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(&rules, 9, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(&rules, 9, 0.0), Duration::from_secs(5));
        assert_eq!(backoff(&rules, 200, 1.0), Duration::from_secs(10));
    }
}
