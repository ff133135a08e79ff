//! Reading jobs back: one job, a page of a search (the filters the list, the export and the
//! bulk actions share, turned into SQL once), a count, and the bulk actions over a filter
//! (cancel every queued job, delete every finished one).

use crate::dialect::Durability;
use crate::exec::{any_args, select_jobs, Arg};
use crate::model::{decode_cursor, encode_cursor};
use crate::rows::{job_from_row, ms, parse_id};
use crate::sql::SqlStore;
use crate::{Job, JobFilter, JobPage, ListQuery, Result, StoreError};
use imgclass_core::policy::Happened;
use imgclass_core::{JobId, JobStatus};
use sqlx::any::AnyArguments;
use sqlx::{Any, Row};

/// The statuses of finished jobs.
const FINISHED: [JobStatus; 3] = [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled];

/// The conditions of a [`JobFilter`] on `jobs j` (joined with nothing else, so that counts need
/// no join), and the values they bind from `$1` on.
struct Conditions {
    sql: Vec<String>,
    args: Vec<Arg>,
}

impl Conditions {
    /// Adds a condition on the next placeholder (`{}` in `template`).
    fn add(&mut self, template: &str, arg: Arg) {
        self.args.push(arg);
        let mark = format!("${}", self.args.len());
        self.sql.push(template.replace("{}", &mark));
    }

    /// Adds `column IN (...)`.
    fn any_of(&mut self, column: &str, values: &[&str]) {
        let mut marks = Vec::with_capacity(values.len());
        for v in values {
            self.args.push(Arg::text(*v));
            marks.push(format!("${}", self.args.len()));
        }
        self.sql.push(format!("{column} IN ({})", marks.join(", ")));
    }

    /// The next placeholder's number.
    fn next(&self) -> usize {
        self.args.len() + 1
    }

    /// `a AND b AND ...` (`1 = 1` without conditions).
    fn joined(&self) -> String {
        if self.sql.is_empty() {
            "1 = 1".into()
        } else {
            self.sql.join(" AND ")
        }
    }

    /// `sql` with the conditions' values bound (more can follow with `bind`).
    fn query<'q>(&'q self, sql: &'q str) -> Result<sqlx::query::Query<'q, Any, AnyArguments<'q>>> {
        Ok(sqlx::query_with(sql, any_args(&self.args)?))
    }
}

/// A `LIKE` pattern (with `ESCAPE '\'`) that matches any text containing `text`.
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl SqlStore {
    /// The conditions of `filter`, and, when `statuses` is not empty, that the job is in one of
    /// them.
    fn conditions(&self, filter: &JobFilter, statuses: &[JobStatus]) -> Conditions {
        let mut c = Conditions {
            sql: Vec::new(),
            args: Vec::new(),
        };
        if let Some(status) = filter.status {
            c.add("j.status = {}", Arg::text(status.as_str()));
        }
        if !statuses.is_empty() {
            let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
            c.any_of("j.status", &names);
        }
        if let Some(owner) = &filter.owner {
            c.add("j.owner = {}", Arg::text(owner.clone()));
        }
        if let Some(name) = &filter.name {
            c.add(
                "LOWER(j.file_name) LIKE LOWER({}) ESCAPE '\\'",
                Arg::text(contains_pattern(name)),
            );
        }
        if let Some(label) = &filter.label {
            c.add(
                &format!(
                    "LOWER({}) LIKE LOWER({{}}) ESCAPE '\\'",
                    self.dialect.top_label()
                ),
                Arg::text(contains_pattern(label)),
            );
        }
        if let Some(code) = filter.error_code {
            c.add("j.error_code = {}", Arg::text(code.as_str()));
        }
        if let Some(since) = filter.since {
            c.add("j.created_at >= {}", Arg::int(ms(since)));
        }
        if let Some(until) = filter.until {
            c.add("j.created_at < {}", Arg::int(ms(until)));
        }
        c
    }

    pub(crate) async fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        sqlx::query(&select_jobs("j.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(job_from_row)
            .transpose()
    }

    pub(crate) async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage> {
        let filter = JobFilter {
            status: query.status,
            owner: query.owner.clone(),
            ..JobFilter::default()
        };
        self.search_jobs(&filter, query.cursor.as_deref(), query.limit)
            .await
    }

    pub(crate) async fn search_jobs(
        &self,
        filter: &JobFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<JobPage> {
        let before = match cursor {
            Some(c) => decode_cursor(c).ok_or(StoreError::InvalidCursor)?,
            None => i64::MAX,
        };
        let limit = limit.clamp(1, 500);
        let mut c = self.conditions(filter, &[]);
        c.add("j.seq < {}", Arg::int(before));
        let sql = select_jobs(&format!(
            "{} ORDER BY j.seq DESC LIMIT ${}",
            c.joined(),
            c.next()
        ));
        let rows = c
            .query(&sql)?
            .bind(limit as i64 + 1)
            .fetch_all(&self.reader)
            .await?;
        let mut jobs = rows.iter().map(job_from_row).collect::<Result<Vec<_>>>()?;
        let next_cursor = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| encode_cursor(j.seq))
        } else {
            None
        };
        Ok(JobPage { jobs, next_cursor })
    }

    pub(crate) async fn count_jobs(&self, filter: &JobFilter) -> Result<u64> {
        let c = self.conditions(filter, &[]);
        let sql = format!("SELECT COUNT(*) AS n FROM jobs j WHERE {}", c.joined());
        let row = c.query(&sql)?.fetch_one(&self.reader).await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    pub(crate) async fn cancel_queued(&self, filter: &JobFilter) -> Result<u64> {
        let mut w = self.begin(Durability::Durable).await?;
        let c = self.conditions(filter, &[JobStatus::Queued]);
        let sql = select_jobs(&format!("{} ORDER BY j.seq", c.joined())) + self.locks().jobs;
        let rows = c.query(&sql)?.fetch_all(&mut *w.tx).await?;
        let mut canceled = 0;
        for row in &rows {
            let job = job_from_row(row)?;
            if self
                .decide_and_apply(&mut w, &job, Happened::CancelRequested)
                .await?
                .is_some()
            {
                canceled += 1;
            }
        }
        self.commit(w).await?;
        Ok(canceled)
    }

    pub(crate) async fn delete_finished(&self, filter: &JobFilter) -> Result<u64> {
        let mut w = self.begin(Durability::Durable).await?;
        let c = self.conditions(filter, &FINISHED);
        let sql = format!(
            "SELECT j.id FROM jobs j WHERE {} ORDER BY j.seq",
            c.joined()
        ) + self.locks().jobs;
        let ids: Vec<String> = c
            .query(&sql)?
            .fetch_all(&mut *w.tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        let mut images = std::collections::BTreeSet::new();
        let mut deleted = 0;
        for id in ids {
            let id = parse_id(&id)?;
            if let Some(sha) = crate::retention::delete_job(&mut w, id).await? {
                images.insert(sha);
                deleted += 1;
            }
        }
        for sha in &images {
            crate::retention::delete_blob_if_unused(&mut w, sha).await?;
        }
        self.commit(w).await?;
        Ok(deleted)
    }
}
