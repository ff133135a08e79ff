//! Job identity, statuses and the state machine: which action may move a job from which state
//! to which. The rules that choose the action live in `policy`.

use crate::EventKind;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A job's id: a random, unguessable UUID v7 (time-ordered, 74 random bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh id.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a job id: {0:?}")]
pub struct ParseJobIdError(String);

impl FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(JobId)
            .map_err(|_| ParseJobIdError(s.chars().take(64).collect()))
    }
}

/// Where a job is in its life.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Finished jobs never change again by themselves (only a manual retry moves `failed` and
    /// `canceled` back to the queue).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled
        )
    }

    /// The state a job reaches when `action` is applied in this state, if that is allowed.
    pub fn apply(self, action: Action) -> Result<JobStatus, TransitionError> {
        use Action::*;
        use JobStatus::*;
        let next = match (self, action) {
            (Queued, Claim) => Running,
            (Queued, Cancel) => Canceled,
            (Running, Cancel) => Canceled,
            (Running, Succeed) => Succeeded,
            (Running, Fail) => Failed,
            (Running, Requeue) => Queued,
            (Running, LeaseExpired) => Queued,
            (Running, Release) => Queued,
            (Failed, Retry) => Queued,
            (Canceled, Retry) => Queued,
            (from, action) => return Err(TransitionError { from, action }),
        };
        Ok(next)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown status {s:?}; expected one of queued, running, succeeded, failed, canceled")
            })
    }
}

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A worker takes a queued job.
    Claim,
    /// The classification finished with a result.
    Succeed,
    /// The classification failed and no attempt is left (or it cannot be fixed by retrying).
    Fail,
    /// The classification failed and the job goes back to the queue for another attempt.
    Requeue,
    /// The worker running the job stopped renewing its lease.
    LeaseExpired,
    /// The worker gives the job back unfinished (it is shutting down).
    Release,
    /// A person asked for a failed or canceled job to run again.
    Retry,
    /// A person canceled a queued or running job.
    Cancel,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Claim => "claim",
            Action::Succeed => "succeed",
            Action::Fail => "fail",
            Action::Requeue => "requeue",
            Action::LeaseExpired => "lease_expired",
            Action::Release => "release",
            Action::Retry => "retry",
            Action::Cancel => "cancel",
        }
    }

    /// The event recorded when this action changes a job.
    pub fn event(self) -> EventKind {
        match self {
            Action::Claim => EventKind::Running,
            Action::Succeed => EventKind::Succeeded,
            Action::Fail => EventKind::Failed,
            Action::Requeue | Action::LeaseExpired | Action::Release => EventKind::Requeued,
            Action::Retry => EventKind::Retried,
            Action::Cancel => EventKind::Canceled,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {from} job cannot {}", action.as_str())]
pub struct TransitionError {
    pub from: JobStatus,
    pub action: Action,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_transitions() {
        use Action::*;
        use JobStatus::*;
        assert_eq!(Queued.apply(Claim), Ok(Running));
        assert_eq!(Queued.apply(Cancel), Ok(Canceled));
        assert_eq!(Running.apply(Cancel), Ok(Canceled));
        assert_eq!(Running.apply(Succeed), Ok(Succeeded));
        assert_eq!(Running.apply(Fail), Ok(Failed));
        assert_eq!(Running.apply(Requeue), Ok(Queued));
        assert_eq!(Running.apply(LeaseExpired), Ok(Queued));
        assert_eq!(Running.apply(Release), Ok(Queued));
        assert_eq!(Failed.apply(Retry), Ok(Queued));
        assert_eq!(Canceled.apply(Retry), Ok(Queued));
    }

    #[test]
    fn forbidden_transitions() {
        use Action::*;
        use JobStatus::*;
        let allowed = [
            (Queued, Claim),
            (Queued, Cancel),
            (Running, Cancel),
            (Running, Succeed),
            (Running, Fail),
            (Running, Requeue),
            (Running, LeaseExpired),
            (Running, Release),
            (Failed, Retry),
            (Canceled, Retry),
        ];
        let actions = [
            Claim,
            Succeed,
            Fail,
            Requeue,
            LeaseExpired,
            Release,
            Retry,
            Cancel,
        ];
        for from in JobStatus::ALL {
            for action in actions {
                if !allowed.contains(&(from, action)) {
                    let err = from.apply(action).unwrap_err();
                    assert_eq!(err, TransitionError { from, action });
                }
            }
        }
        assert_eq!(
            Succeeded.apply(Retry).unwrap_err().to_string(),
            "a succeeded job cannot retry"
        );
    }

    #[test]
    fn finished_states_have_no_automatic_exit() {
        for st in JobStatus::ALL.into_iter().filter(|s| s.is_finished()) {
            for action in [
                Action::Claim,
                Action::Succeed,
                Action::Requeue,
                Action::LeaseExpired,
                Action::Release,
            ] {
                assert!(st.apply(action).is_err());
            }
        }
    }

    #[test]
    fn status_round_trips_through_text() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>().unwrap(), st);
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn job_ids_parse_and_differ() {
        let a = JobId::new();
        let b = JobId::new();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
        assert!("../etc/passwd".parse::<JobId>().is_err());
    }
}
