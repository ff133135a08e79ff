//! The models the nodes serve, shared through the database ([`Models`]): each worker node
//! announces the models it holds at start and at every sweep (`announce_models`), so that any
//! API node knows every model name (a job naming another is refused), and which nodes serve
//! each one now (a queued job whose model no live node serves says so instead of waiting
//! silently).

use crate::dialect::Durability;
use crate::rows::{db_err, ms_to_time};
use crate::sql::SqlStore;
use crate::{ModelEntry, ModelNode, ModelRecord, Result};
use async_trait::async_trait;
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::Duration;

#[async_trait]
pub trait Models: Send + Sync {
    /// Records that `node` serves exactly `models` now (the models it announced before and no
    /// longer holds are forgotten for it).
    async fn announce_models(&self, node: &str, models: &[ModelEntry]) -> Result<()>;

    /// Every model any node has announced, by name, each with the nodes that announced it
    /// within `live` (the nodes that serve it now).
    async fn models(&self, live: Duration) -> Result<Vec<ModelRecord>>;
}

#[async_trait]
impl Models for SqlStore {
    async fn announce_models(&self, node: &str, models: &[ModelEntry]) -> Result<()> {
        let mut w = self.begin(Durability::Relaxed).await?;
        let now = w.now;
        sqlx::query("DELETE FROM model_nodes WHERE node = $1")
            .bind(node)
            .execute(&mut *w.tx)
            .await?;
        for m in models {
            let spec = serde_json::to_string(&m.spec).map_err(|e| db_err(e.to_string()))?;
            sqlx::query(
                "INSERT INTO models (name, version, spec, labels, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET \
                 version = excluded.version, spec = excluded.spec, labels = excluded.labels, \
                 updated_at = excluded.updated_at",
            )
            .bind(&m.name)
            .bind(&m.version)
            .bind(spec)
            .bind(i64::from(m.labels))
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
            sqlx::query(
                "INSERT INTO model_nodes (model, node, version, seen_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&m.name)
            .bind(node)
            .bind(&m.version)
            .bind(now)
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit_plain().await
    }

    async fn models(&self, live: Duration) -> Result<Vec<ModelRecord>> {
        let mut conn = self.reader.acquire().await?;
        let rows =
            sqlx::query("SELECT name, version, spec, labels, updated_at FROM models ORDER BY name")
                .fetch_all(&mut *conn)
                .await?;
        let mut records = BTreeMap::new();
        for row in rows {
            let name: String = row.try_get("name")?;
            let spec: String = row.try_get("spec")?;
            let record = ModelRecord {
                entry: ModelEntry {
                    name: name.clone(),
                    version: row.try_get("version")?,
                    spec: serde_json::from_str(&spec).map_err(|e| db_err(format!("spec: {e}")))?,
                    labels: row.try_get::<i64, _>("labels")?.max(0) as u32,
                },
                updated_at: ms_to_time(row.try_get("updated_at")?),
                nodes: Vec::new(),
            };
            records.insert(name, record);
        }
        let since = crate::rows::now_ms() - live.as_millis() as i64;
        let rows = sqlx::query(
            "SELECT model, node, version, seen_at FROM model_nodes WHERE seen_at >= $1 \
             ORDER BY model, node",
        )
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let model: String = row.try_get("model")?;
            if let Some(record) = records.get_mut(&model) {
                record.nodes.push(ModelNode {
                    node: row.try_get("node")?,
                    version: row.try_get("version")?,
                    seen_at: ms_to_time(row.try_get("seen_at")?),
                });
            }
        }
        Ok(records.into_values().collect())
    }
}
