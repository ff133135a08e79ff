//! The queue's rules, in one place and free of IO: given a job's counters and what happened to
//! it (it was claimed, an attempt ended with a result or an error, its image was gone, its
//! worker was lost or gave it back, a person acted), the [`Decision`]: every column the
//! transition changes — status, counters, the error to record, when it runs next, whether it is
//! finished — and the event. Also how a job is created (`create`) and what follows a webhook
//! delivery's attempt (`delivery`). The store applies decisions as they are, guarded by the
//! state the job was read in; it decides nothing itself.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// A worker took the queued job.
    Claimed,
    /// The running attempt produced a result.
    Succeeded,
    /// The running attempt failed with this error; `retry_after` is a delay the failing party
    /// asked for (e.g. an upstream's `Retry-After`), used instead of the backoff when longer.
    Errored {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The running job's image is no longer stored: no attempt can succeed.
    ImageMissing,
    /// The running attempt's lease expired: its worker is gone.
    LeaseExpired,
    /// The worker gives the job back unfinished (it is shutting down); the attempt does not count.
    Released,
    /// The worker could not start the attempt for a reason that is not the job's (its image
    /// store did not answer): the job waits `wait` and the attempt does not count.
    Deferred { wait: Duration },
    /// A person asked for the job to run again.
    RetryRequested,
    /// A person canceled the job.
    CancelRequested,
}

/// How a transition changes one of the job's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Keep,
    Add(u32),
    /// Down by this much, never below zero.
    Sub(u32),
    Reset,
}

impl Count {
    /// The counter's new value.
    pub fn apply(self, value: u32) -> u32 {
        match self {
            Count::Keep => value,
            Count::Add(n) => value.saturating_add(n),
            Count::Sub(n) => value.saturating_sub(n),
            Count::Reset => 0,
        }
    }
}

/// What a transition does to the job's error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorChange {
    Keep,
    /// The job no longer shows an error.
    Clear,
    /// The job's error becomes this one, and it is added to the attempts' history.
    Record {
        code: ErrorCode,
        message: String,
    },
}

/// What a transition does to the job's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultChange {
    Keep,
    /// The job holds no result.
    Clear,
    /// The result of the attempt that just ended is stored.
    Store,
}

/// What a transition does to the job's finish time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Keep,
    /// Finished now.
    Now,
    /// Not finished (it runs again).
    Clear,
}

/// What the rules decided: everything the transition changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The state the job moves to.
    pub to: JobStatus,
    /// The event recorded with the change.
    pub event: EventKind,
    /// When the job runs next, counted from now (`None`: `run_at` stays).
    pub run_in: Option<Duration>,
    pub attempts: Count,
    pub run_attempts: Count,
    pub stalls: Count,
    pub error: ErrorChange,
    pub result: ResultChange,
    pub finished: Finish,
    /// The start time becomes now (a claim).
    pub started: bool,
}

impl Decision {
    /// A transition by `action` from `from` that changes nothing but the status (and the
    /// lease, which only a running job holds); the rules below say what else changes.
    fn of(from: JobStatus, action: Action) -> Result<Decision, TransitionError> {
        Ok(Decision {
            action,
            to: from.apply(action)?,
            event: action.event(),
            run_in: None,
            attempts: Count::Keep,
            run_attempts: Count::Keep,
            stalls: Count::Keep,
            error: ErrorChange::Keep,
            result: ResultChange::Keep,
            finished: Finish::Keep,
            started: false,
        })
    }
}

/// What the job ran into when its worker was lost.
const STALLED: &str = "the worker running this job stopped renewing its lease";

/// Decides what follows `happened` for a job with `counters`. `jitter` (0.5–1.0, drawn by the
/// caller so that tests are deterministic) scales the backoff of an automatic retry.
pub fn decide(
    rules: &Rules,
    counters: Counters,
    happened: Happened,
    jitter: f64,
) -> Result<Decision, TransitionError> {
    let from = counters.status;
    let attempts_left = counters.run_attempts < counters.max_attempts;
    let d = match happened {
        Happened::Claimed => Decision {
            attempts: Count::Add(1),
            run_attempts: Count::Add(1),
            started: true,
            ..Decision::of(from, Action::Claim)?
        },
        Happened::Succeeded => Decision {
            error: ErrorChange::Clear,
            result: ResultChange::Store,
            finished: Finish::Now,
            ..Decision::of(from, Action::Succeed)?
        },
        Happened::Errored {
            code,
            message,
            retry_after,
        } => {
            let error = ErrorChange::Record { code, message };
            if code.is_retryable() && attempts_left {
                let delay = backoff(rules, counters.run_attempts, jitter);
                Decision {
                    run_in: Some(retry_after.map_or(delay, |asked| asked.max(delay))),
                    error,
                    result: ResultChange::Clear,
                    ..Decision::of(from, Action::Requeue)?
                }
            } else {
                Decision {
                    error,
                    result: ResultChange::Clear,
                    finished: Finish::Now,
                    ..Decision::of(from, Action::Fail)?
                }
            }
        }
        Happened::ImageMissing => Decision {
            error: ErrorChange::Record {
                code: ErrorCode::Internal,
                message: "the job's image is missing".into(),
            },
            result: ResultChange::Clear,
            finished: Finish::Now,
            ..Decision::of(from, Action::Fail)?
        },
        Happened::LeaseExpired => {
            let again = attempts_left && counters.stalls < rules.max_stalls;
            let (action, run_in, finished, detail) = if again {
                (
                    Action::LeaseExpired,
                    Some(Duration::ZERO),
                    Finish::Keep,
                    "; it was queued again".to_string(),
                )
            } else {
                (
                    Action::Fail,
                    None,
                    Finish::Now,
                    format!(
                        ", and it cannot run again (no attempt left, or its worker was lost \
                         more than {} times)",
                        rules.max_stalls
                    ),
                )
            };
            Decision {
                run_in,
                stalls: Count::Add(1),
                error: ErrorChange::Record {
                    code: ErrorCode::Stalled,
                    message: format!("{STALLED}{detail}"),
                },
                finished,
                ..Decision::of(from, action)?
            }
        }
        // The attempt does not count.
        Happened::Released => Decision {
            run_in: Some(Duration::ZERO),
            attempts: Count::Sub(1),
            run_attempts: Count::Sub(1),
            ..Decision::of(from, Action::Release)?
        },
        Happened::Deferred { wait } => Decision {
            run_in: Some(wait),
            attempts: Count::Sub(1),
            run_attempts: Count::Sub(1),
            ..Decision::of(from, Action::Release)?
        },
        // A new round of attempts.
        Happened::RetryRequested => Decision {
            run_in: Some(Duration::ZERO),
            run_attempts: Count::Reset,
            stalls: Count::Reset,
            finished: Finish::Clear,
            ..Decision::of(from, Action::Retry)?
        },
        Happened::CancelRequested => Decision {
            finished: Finish::Now,
            ..Decision::of(from, Action::Cancel)?
        },
    };
    Ok(d)
}

/// How a new job starts: queued, or — answered from the result cache — already succeeded
/// (started and finished when it was created), announced as created and then as succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creation {
    pub status: JobStatus,
    /// Started and finished at creation.
    pub finished: bool,
    /// The events recorded, in order.
    pub events: &'static [EventKind],
}

/// How a job is created; `cached`: an earlier job's result for the same image and model is
/// reused.
pub fn create(cached: bool) -> Creation {
    if cached {
        Creation {
            status: JobStatus::Succeeded,
            finished: true,
            events: &[EventKind::Created, EventKind::Succeeded],
        }
    } else {
        Creation {
            status: JobStatus::Queued,
            finished: false,
            events: &[EventKind::Created],
        }
    }
}

/// Exponential backoff: `base × 2^(attempt−1)`, capped at `max`, then scaled by `jitter`
/// (clamped to 0.5–1.0).
pub fn backoff(rules: &Rules, attempt: u32, jitter: f64) -> Duration {
    let exp = rules
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    exp.min(rules.backoff_max).mul_f64(jitter.clamp(0.5, 1.0))
}

/// The Standard Webhooks retry schedule: the wait before attempt 2, 3, …; the last repeats.
pub const DELIVERY_SCHEDULE: [Duration; 6] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
];

/// Settings of webhook deliveries (from the command line).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryRules {
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// The schedule's waits are multiplied by this (tests run it scaled down).
    pub schedule_scale: f64,
}

/// What follows a webhook delivery's attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryDecision {
    Delivered,
    /// Another attempt after this wait.
    RetryIn(Duration),
    /// No attempt is left.
    GiveUp,
    /// The receiver answered `410 Gone`: no more attempts to it for this job.
    Gone,
}

/// Decides what follows attempt number `attempt` (1 for the first) of a delivery that got
/// `status` (none: no answer) and asked for `retry_after`. `jitter` (0.9–1.1) scales the wait.
pub fn delivery(
    rules: &DeliveryRules,
    attempt: u32,
    status: Option<u16>,
    retry_after: Option<Duration>,
    jitter: f64,
) -> DeliveryDecision {
    match status {
        Some(s) if (200..300).contains(&s) => DeliveryDecision::Delivered,
        Some(410) => DeliveryDecision::Gone,
        _ if attempt >= rules.max_attempts => DeliveryDecision::GiveUp,
        _ => {
            let i = (attempt.max(1) as usize - 1).min(DELIVERY_SCHEDULE.len() - 1);
            let scaled = DELIVERY_SCHEDULE[i]
                .mul_f64((rules.schedule_scale * jitter.clamp(0.9, 1.1)).max(0.0));
            DeliveryDecision::RetryIn(scaled.max(retry_after.unwrap_or_default()))
        }
    }
}

#[cfg(test)]
mod tests;
