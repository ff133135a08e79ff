//! Reading the event log: the newest event's number, and the events after a number with each
//! job's current state (SSE streams, PostgreSQL's listener).

use crate::exec::select_jobs;
use crate::rows::{db_err, job_from_row, ms_to_time, parse_id};
use crate::{Event, Result};
use sqlx::{AnyPool, Row};

/// The sequence number of the newest event (0 when there is none).
pub(crate) async fn last_event_seq(pool: &AnyPool) -> Result<i64> {
    let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(v.unwrap_or(0))
}

/// Events after `after`, oldest first, each with its job's current state (one query).
pub(crate) async fn read_events(pool: &AnyPool, after: i64, limit: usize) -> Result<Vec<Event>> {
    // Two statements, never one that locks events and jobs together: a migration altering both
    // (in its own order) must not deadlock with a reader (PostgreSQL's listener runs at start).
    let rows = sqlx::query(
        "SELECT seq, job_id, kind, status, at, owner FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    let mut ids: Vec<String> = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.try_get("job_id")?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut jobs = std::collections::HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(200) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = select_jobs(&format!("j.id IN ({})", marks.join(", ")));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(id);
        }
        for row in q.fetch_all(pool).await? {
            let job = job_from_row(&row)?;
            jobs.insert(job.id, job);
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let job_id = parse_id(&row.try_get::<String, _>("job_id")?)?;
        let kind: String = row.try_get("kind")?;
        let status: Option<String> = row.try_get("status")?;
        out.push(Event {
            seq: row.try_get("seq")?,
            job_id,
            kind: kind.parse().map_err(db_err)?,
            status: status.map(|s| s.parse()).transpose().map_err(db_err)?,
            at: ms_to_time(row.try_get("at")?),
            job: jobs.get(&job_id).cloned(),
            owner: row.try_get("owner")?,
        });
    }
    Ok(out)
}
