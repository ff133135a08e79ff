//! `Prefer: wait=N` (RFC 7240) on `POST /api/jobs` and `GET /api/jobs/{id}`: the answer is held
//! until every job in it has finished or N seconds (at most 60) have passed. The wait follows the
//! store's event stream — the same one `/api/events` serves, fed on PostgreSQL by every node's
//! changes — so it never polls and sees a job finish whichever node ran it.

use axum::http::{header, HeaderValue};
use axum::response::Response;
use imgclass_core::JobId;
use imgclass_store::{Event, Job, Store, StoreError};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

/// The longest wait a client may ask for.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(60);

/// The wait a request prefers: the `wait` preference of its `Prefer` headers (the first one
/// wins, as RFC 7240 says), in whole seconds, capped at [`MAX_WAIT`]. Preferences this server
/// does not know, and a `wait` that is not a number, are ignored, as preferences may be.
pub(super) fn preferred(headers: &axum::http::HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| {
            // A preference is `token [= value] *( ";" parameter )`.
            let head = pref.split(';').next()?.trim();
            let (name, value) = head.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let secs: u64 = value.trim().trim_matches('"').parse().ok()?;
            Some(Duration::from_secs(secs).min(MAX_WAIT))
        })
}

/// The `Preference-Applied` value for a wait.
fn applied(wait: Duration) -> String {
    format!("wait={}", wait.as_secs())
}

/// Sets `Preference-Applied` on the answer to a request that waited.
pub(super) fn set_preference_applied(resp: &mut Response, wait: Duration) {
    if let Ok(v) = HeaderValue::from_str(&applied(wait)) {
        resp.headers_mut()
            .insert(header::HeaderName::from_static("preference-applied"), v);
    }
}

/// What became of the jobs after the wait.
pub(super) struct Waited {
    /// The jobs, in the order given, as last seen (a job deleted meanwhile keeps its last view).
    pub jobs: Vec<Job>,
    /// Jobs deleted during the wait.
    pub deleted: Vec<JobId>,
}

/// Waits until every job has finished or `wait` has passed. `live` must have been subscribed
/// before `jobs` were read, so that no change after that read can be missed.
pub(super) async fn until_finished(
    store: &dyn Store,
    mut live: broadcast::Receiver<Event>,
    jobs: Vec<Job>,
    wait: Duration,
) -> Result<Waited, StoreError> {
    let order: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let mut latest: HashMap<JobId, Job> = jobs.into_iter().map(|j| (j.id, j)).collect();
    let mut deleted = Vec::new();
    let pending = |latest: &HashMap<JobId, Job>, deleted: &[JobId]| {
        latest
            .values()
            .filter(|j| !j.status.is_finished() && !deleted.contains(&j.id))
            .count()
    };
    let deadline = tokio::time::Instant::now() + wait;
    while pending(&latest, &deleted) > 0 {
        let received = match tokio::time::timeout_at(deadline, live.recv()).await {
            Err(_) => break, // The time is up.
            Ok(r) => r,
        };
        match received {
            Ok(event) => {
                let Some(known) = latest.get(&event.job_id) else {
                    continue;
                };
                match event.job {
                    // Events can arrive out of step with reads: keep the newest state.
                    Some(job) if job.updated_at >= known.updated_at => {
                        latest.insert(job.id, job);
                    }
                    Some(_) => {}
                    None => deleted.push(event.job_id),
                }
            }
            Err(RecvError::Lagged(_)) => {
                // Some events were dropped for this receiver: read the jobs again.
                for id in &order {
                    match store.get_job(*id).await? {
                        Some(job) => {
                            latest.insert(*id, job);
                        }
                        None if !deleted.contains(id) => deleted.push(*id),
                        None => {}
                    }
                }
            }
            Err(RecvError::Closed) => break,
        }
    }
    let jobs = order
        .iter()
        .filter_map(|id| latest.remove(id))
        .collect::<Vec<_>>();
    Ok(Waited { jobs, deleted })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn prefer(values: &[&str]) -> Option<Duration> {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", HeaderValue::from_str(v).unwrap());
        }
        preferred(&h)
    }

    #[test]
    fn the_wait_preference_is_read_as_rfc_7240_writes_it() {
        assert_eq!(prefer(&["wait=5"]), Some(Duration::from_secs(5)));
        assert_eq!(prefer(&["WAIT = 7"]), Some(Duration::from_secs(7)));
        assert_eq!(
            prefer(&["respond-async, wait=3;x=1"]),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            prefer(&["handling=lenient", "wait=2"]),
            Some(Duration::from_secs(2))
        );
        assert_eq!(prefer(&["wait=\"4\""]), Some(Duration::from_secs(4)));
        // Capped at 60 s; the first wait wins.
        assert_eq!(prefer(&["wait=600"]), Some(MAX_WAIT));
        assert_eq!(prefer(&["wait=1, wait=9"]), Some(Duration::from_secs(1)));
        // Not a wait, or not a number: ignored.
        assert_eq!(prefer(&[]), None);
        assert_eq!(prefer(&["respond-async"]), None);
        assert_eq!(prefer(&["wait=soon"]), None);
        assert_eq!(prefer(&["wait=-1"]), None);
        assert_eq!(prefer(&["waiting=3"]), None);
    }
}
