//! Reading stored images: a blob's bytes from its chunks (in one statement, so a concurrent
//! delete is seen entirely or not at all), and a job's image.

use crate::rows::db_err;
use crate::sql::SqlStore;
use crate::{Result, StoredImage};
use imgclass_core::JobId;

impl SqlStore {
    pub(crate) async fn job_image(&self, id: JobId) -> Result<Option<StoredImage>> {
        let Some(job) = self.get_job(id).await? else {
            return Ok(None);
        };
        let Some(bytes) = self.read_blob(&job.image_sha256).await? else {
            return Ok(None);
        };
        Ok(Some(StoredImage {
            bytes,
            content_type: job.content_type,
            sha256: job.image_sha256,
        }))
    }

    pub(crate) async fn read_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        // One statement, one snapshot: a concurrent delete is seen entirely or not at all.
        let rows: Vec<(i64, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT b.size, c.data FROM blobs b LEFT JOIN blob_chunks c ON c.sha256 = b.sha256 \
             WHERE b.sha256 = $1 ORDER BY c.idx",
        )
        .bind(sha256)
        .fetch_all(&self.reader)
        .await?;
        let Some(size) = rows.first().map(|r| r.0) else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(size as usize);
        for (_, chunk) in rows {
            bytes.extend_from_slice(chunk.as_deref().unwrap_or_default());
        }
        if bytes.len() as i64 != size {
            return Err(db_err(format!(
                "image {sha256} is incomplete: {} of {size} bytes",
                bytes.len()
            )));
        }
        Ok(Some(bytes))
    }
}
