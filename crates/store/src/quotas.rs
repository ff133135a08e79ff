//! Request and submission quotas, counted in the database so that every API node on a shared
//! PostgreSQL takes from the same budget. A quota is a sliding window estimated from two fixed
//! windows (the current one's count plus the previous one's, weighted by how much of it still
//! overlaps the sliding window), so a burst at a window boundary cannot double the rate.

use crate::dialect::Durability;
use crate::sql::SqlStore;
use crate::Result;
use async_trait::async_trait;
use std::time::Duration;

/// What taking from a quota found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaTake {
    pub allowed: bool,
    /// The quota's size.
    pub limit: u32,
    /// What is left in the sliding window after this take (0 when refused).
    pub remaining: u32,
    /// Until the current fixed window ends.
    pub reset: Duration,
    /// When refused: how long until `n` would be allowed.
    pub retry_after: Option<Duration>,
}

#[async_trait]
pub trait Quotas: Send + Sync {
    /// Takes `n` from the quota `key` (at most `limit` per `per`), or nothing when that would go
    /// over it.
    async fn take_quota(&self, key: &str, n: u32, limit: u32, per: Duration) -> Result<QuotaTake>;
}

/// The sliding-window estimate at `elapsed` ms into the current window of `window` ms.
fn estimate(prev: u64, cur: u64, elapsed: u64, window: u64) -> u64 {
    let overlap = window.saturating_sub(elapsed);
    cur + (prev * overlap).div_ceil(window.max(1))
}

/// How long from `elapsed` until taking `n` fits, as the estimate decays (ms).
fn wait_for(prev: u64, cur: u64, n: u64, limit: u64, elapsed: u64, window: u64) -> u64 {
    if n > limit {
        // Never fits; the end of the next window is as honest an answer as any.
        return 2 * window - elapsed;
    }
    // In this window: prev * (window - t) / window + cur + n <= limit.
    if cur + n <= limit {
        let room = limit - cur - n;
        if prev == 0 || room >= prev {
            return 0;
        }
        let t = window - (room * window) / prev;
        return t.saturating_sub(elapsed).max(1);
    }
    // In the next window, where this window's count is the previous one.
    let room = limit - n;
    let t = if cur == 0 || room >= cur {
        0
    } else {
        window - (room * window) / cur
    };
    (window - elapsed) + t.max(1)
}

#[async_trait]
impl Quotas for SqlStore {
    async fn take_quota(&self, key: &str, n: u32, limit: u32, per: Duration) -> Result<QuotaTake> {
        let window = (per.as_millis() as u64).max(1);
        let mut w = self.begin(Durability::Relaxed).await?;
        let now = w.now.max(0) as u64;
        let start = now - now % window;
        let elapsed = now - start;
        let counts: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT window_start, count FROM quota_windows WHERE key = $1 AND window_start >= $2",
        )
        .bind(key)
        .bind((start - window.min(start)) as i64)
        .fetch_all(&mut *w.tx)
        .await?;
        let count_at = |s: u64| {
            counts
                .iter()
                .find(|(ws, _)| *ws as u64 == s)
                .map_or(0, |(_, c)| *c as u64)
        };
        let (prev, cur) = (count_at(start.wrapping_sub(window)), count_at(start));
        let (n64, limit64) = (u64::from(n), u64::from(limit));
        let reset = Duration::from_millis(window - elapsed);
        if estimate(prev, cur, elapsed, window) + n64 > limit64 {
            w.tx.rollback().await?;
            let used = estimate(prev, cur, elapsed, window);
            return Ok(QuotaTake {
                allowed: false,
                limit,
                remaining: limit64.saturating_sub(used) as u32,
                reset,
                retry_after: Some(Duration::from_millis(wait_for(
                    prev, cur, n64, limit64, elapsed, window,
                ))),
            });
        }
        // The row is written once, by one statement that every node runs the same way; the
        // guard re-checks the count under the row's lock, so concurrent nodes never overshoot.
        let budget = limit64 - estimate(prev, 0, elapsed, window);
        let taken: Option<i64> = sqlx::query_scalar(
            "INSERT INTO quota_windows (key, window_start, count) VALUES ($1, $2, $3) \
             ON CONFLICT (key, window_start) DO UPDATE SET count = quota_windows.count + $3 \
             WHERE quota_windows.count + $3 <= $4 RETURNING count",
        )
        .bind(key)
        .bind(start as i64)
        .bind(i64::from(n))
        .bind(budget as i64)
        .fetch_optional(&mut *w.tx)
        .await?;
        let Some(count) = taken else {
            // Another node took the rest in between.
            w.tx.rollback().await?;
            return Ok(QuotaTake {
                allowed: false,
                limit,
                remaining: 0,
                reset,
                retry_after: Some(Duration::from_millis(wait_for(
                    prev, budget, n64, limit64, elapsed, window,
                ))),
            });
        };
        if count as u64 == n64 {
            // The first take of a new window: windows before the previous one are done with.
            let kind = key.split(':').next().unwrap_or(key);
            sqlx::query("DELETE FROM quota_windows WHERE key LIKE $1 AND window_start < $2")
                .bind(format!("{kind}:%"))
                .bind((start - window.min(start)) as i64)
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit_plain().await?;
        let used = estimate(prev, count as u64, elapsed, window);
        Ok(QuotaTake {
            allowed: true,
            limit,
            remaining: limit64.saturating_sub(used) as u32,
            reset,
            retry_after: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_weighs_the_previous_window_by_its_overlap() {
        assert_eq!(estimate(10, 0, 0, 1000), 10);
        assert_eq!(estimate(10, 3, 500, 1000), 8);
        assert_eq!(estimate(10, 3, 1000, 1000), 3);
    }

    #[test]
    fn the_wait_is_until_the_take_fits() {
        // Room now.
        assert_eq!(wait_for(0, 1, 1, 5, 100, 1000), 0);
        // Full in this window: until the next one starts, and more while the count decays.
        assert_eq!(wait_for(0, 5, 1, 5, 200, 1000), 800 + 200);
        // The previous window's share must decay: prev 4, cur 0, limit 2, n 1 → t ≥ 750.
        assert_eq!(wait_for(4, 0, 1, 2, 250, 1000), 500);
        for (prev, cur, elapsed) in [(4u64, 0u64, 250u64), (0, 5, 200), (7, 2, 900)] {
            let w = wait_for(prev, cur, 1, 5, elapsed, 1000);
            let t = elapsed + w;
            let est = if t < 1000 {
                estimate(prev, cur, t, 1000)
            } else {
                estimate(cur, 0, t - 1000, 1000)
            };
            assert!(est < 5, "after {w} ms the estimate is {est}");
        }
    }
}
