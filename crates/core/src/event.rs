//! Kinds of job change that are recorded and streamed to clients.

use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// What happened to a job.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Accepted and queued.
    Created,
    /// A worker started an attempt.
    Running,
    Succeeded,
    Failed,
    Canceled,
    /// A person asked a failed job to run again.
    Retried,
    /// Back in the queue on its own: a failed attempt with attempts left, or a lost worker.
    Requeued,
    Deleted,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Created,
        EventKind::Running,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::Canceled,
        EventKind::Retried,
        EventKind::Requeued,
        EventKind::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Running => "running",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::Canceled => "canceled",
            EventKind::Retried => "retried",
            EventKind::Requeued => "requeued",
            EventKind::Deleted => "deleted",
        }
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
        }
    }
}
