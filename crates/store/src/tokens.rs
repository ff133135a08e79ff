//! API tokens and job ownership: the tokens (only a hash of each secret is stored), the owner of
//! a job, and the per-owner figures the API's checks need.

use crate::dialect::Durability;
use crate::rows::{db_err, ms_to_time};
use crate::sql::SqlStore;
use crate::{Result, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use imgclass_core::{JobId, JobStatus, Scope};
use sqlx::Row;

/// A token to store. The caller makes the id and the secret; only the secret's SHA-256 (hex)
/// reaches the database.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub secret_sha256: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored token.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub secret_sha256: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiToken {
    /// Whether the token may be used at `now`: not revoked and not expired.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

const TOKEN_COLUMNS: &str = "id, name, secret_sha256, scopes, created_at, expires_at, revoked_at";

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<ApiToken> {
    let scopes: String = row.try_get("scopes")?;
    let opt_time = |name: &str| -> Result<Option<DateTime<Utc>>> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(ms_to_time))
    };
    Ok(ApiToken {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scopes: Scope::parse_list(&scopes).map_err(db_err)?,
        secret_sha256: row.try_get("secret_sha256")?,
        created_at: ms_to_time(row.try_get("created_at")?),
        expires_at: opt_time("expires_at")?,
        revoked_at: opt_time("revoked_at")?,
    })
}

/// API tokens and who owns which job.
#[async_trait]
pub trait Tokens: Send + Sync {
    /// Stores a new token; `Conflict` when its name is taken.
    async fn create_token(&self, token: &NewToken) -> Result<ApiToken>;

    /// The token with this id, whatever its state.
    async fn token(&self, id: &str) -> Result<Option<ApiToken>>;

    /// Every token, oldest first.
    async fn list_tokens(&self) -> Result<Vec<ApiToken>>;

    /// Revokes the token with this name or id (at once, for every node); `NotFound` when there
    /// is none. Revoking twice keeps the first time.
    async fn revoke_token(&self, name_or_id: &str) -> Result<ApiToken>;

    /// Whether any token was ever created: from then on the API asks for one (revoking every
    /// token never opens it again).
    async fn tokens_in_use(&self) -> Result<bool>;

    /// The owner of a job: `None` when there is no such job, `Some(None)` when it has no owner.
    async fn job_owner(&self, id: JobId) -> Result<Option<Option<String>>>;

    /// How many of `owner`'s jobs are queued.
    async fn queued_jobs_of(&self, owner: &str) -> Result<u64>;
}

#[async_trait]
impl Tokens for SqlStore {
    async fn create_token(&self, token: &NewToken) -> Result<ApiToken> {
        let mut w = self.begin(Durability::Durable).await?;
        let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_tokens WHERE name = $1")
            .bind(&token.name)
            .fetch_optional(&mut *w.tx)
            .await?;
        if taken.is_some() {
            w.tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "a token named {:?} exists already",
                token.name
            )));
        }
        let sql = format!(
            "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, NULL) \
             RETURNING {TOKEN_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&token.id)
            .bind(&token.name)
            .bind(&token.secret_sha256)
            .bind(Scope::join(&token.scopes))
            .bind(w.now)
            .bind(token.expires_at.map(|t| t.timestamp_millis()))
            .fetch_one(&mut *w.tx)
            .await?;
        let stored = token_from_row(&row)?;
        self.commit(w).await?;
        Ok(stored)
    }

    async fn token(&self, id: &str) -> Result<Option<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.reader)
            .await?
            .as_ref()
            .map(token_from_row)
            .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.reader).await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, name_or_id: &str) -> Result<ApiToken> {
        let mut w = self.begin(Durability::Durable).await?;
        let sql = format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE name = $2 OR id = $2 RETURNING {TOKEN_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(w.now)
            .bind(name_or_id)
            .fetch_optional(&mut *w.tx)
            .await?;
        let Some(row) = row else {
            w.tx.rollback().await?;
            return Err(StoreError::NotFound);
        };
        let token = token_from_row(&row)?;
        self.commit(w).await?;
        Ok(token)
    }

    async fn tokens_in_use(&self) -> Result<bool> {
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM api_tokens LIMIT 1")
            .fetch_optional(&self.reader)
            .await?;
        Ok(any.is_some())
    }

    async fn job_owner(&self, id: JobId) -> Result<Option<Option<String>>> {
        let owner: Option<(Option<String>,)> =
            sqlx::query_as("SELECT owner FROM jobs WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await?;
        Ok(owner.map(|(o,)| o))
    }

    async fn queued_jobs_of(&self, owner: &str) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status = $2")
                .bind(owner)
                .bind(JobStatus::Queued.as_str())
                .fetch_one(&self.reader)
                .await?;
        Ok(n as u64)
    }
}
