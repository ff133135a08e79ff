//! Queue figures: jobs per status, the oldest queued job, finished jobs per minute, the rate
//! limit's window, and when the next queued job becomes due.

use crate::exec::QUEUED;
use crate::rows::{db_err, ms_to_time, now_ms, window_starts};
use crate::sql::SqlStore;
use crate::{FinishedCounts, QueueStats, RateLimit, Result};
use chrono::{DateTime, Utc};
use imgclass_core::JobStatus;
use sqlx::Row;

impl SqlStore {
    pub(crate) async fn stats_of(
        &self,
        owner: Option<&str>,
        rate: Option<RateLimit>,
    ) -> Result<QueueStats> {
        let now = now_ms();
        let mut conn = self.reader.acquire().await?;
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM jobs WHERE ($1 IS NULL OR owner = $1) \
             GROUP BY status",
        )
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
        let mut stats = QueueStats::default();
        for row in rows {
            let status: String = row.try_get("status")?;
            let n = row.try_get::<i64, _>("n")? as u64;
            match status.parse::<JobStatus>().map_err(db_err)? {
                JobStatus::Queued => stats.queued = n,
                JobStatus::Running => stats.running = n,
                JobStatus::Succeeded => stats.succeeded = n,
                JobStatus::Failed => stats.failed = n,
                JobStatus::Canceled => stats.canceled = n,
            }
        }
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(created_at) FROM jobs WHERE status = $1 AND ($2 IS NULL OR owner = $2)",
        )
        .bind(JobStatus::Queued.as_str())
        .bind(owner)
        .fetch_one(&mut *conn)
        .await?;
        stats.oldest_queued_at = oldest.map(ms_to_time);
        // Finished jobs per minute and outcome; the last minute is the one ending now.
        let minutes = QueueStats::MINUTES as i64;
        let from = now - minutes * 60_000;
        let rows = sqlx::query(
            "SELECT status, (finished_at - $1) / 60000 AS m, COUNT(*) AS n FROM jobs \
             WHERE finished_at >= $1 AND ($2 IS NULL OR owner = $2) GROUP BY status, m",
        )
        .bind(from)
        .bind(owner)
        .fetch_all(&mut *conn)
        .await?;
        stats.finished_per_minute = vec![FinishedCounts::default(); QueueStats::MINUTES];
        for row in rows {
            let status: String = row.try_get("status")?;
            let m = row.try_get::<i64, _>("m")?.clamp(0, minutes - 1) as usize;
            let n = row.try_get::<i64, _>("n")? as u64;
            stats.finished_per_minute[m].add(status.parse().map_err(db_err)?, n);
        }
        stats.finished_last_minute_by = stats.finished_per_minute[QueueStats::MINUTES - 1];
        stats.finished_last_minute = stats.finished_last_minute_by.total();
        if let Some(rate) = rate {
            // A plain read: statistics never wait for (or hold up) the claimers' row lock.
            let sql = "SELECT starts FROM rate_limits WHERE name = 'global'";
            let starts: Option<String> = sqlx::query_scalar(sql).fetch_optional(&mut *conn).await?;
            let window = window_starts(starts, now, rate)?;
            let used = window.len();
            stats.rate_limit_remaining = Some(rate.jobs.saturating_sub(used as u32));
            if rate.jobs > 0 && used >= rate.jobs as usize {
                // A start is allowed once enough of the window's starts have left it.
                let leaves = window[used - rate.jobs as usize];
                stats.rate_limit_next_start_at =
                    Some(ms_to_time(leaves + rate.per.as_millis() as i64));
            }
        }
        Ok(stats)
    }

    pub(crate) async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let sql = format!("SELECT MIN(run_at) FROM jobs WHERE status = '{QUEUED}'");
        let v: Option<i64> = sqlx::query_scalar(&sql).fetch_one(&self.reader).await?;
        Ok(v.map(ms_to_time))
    }
}
