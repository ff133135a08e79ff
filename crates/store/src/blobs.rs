//! Reading stored images: a blob's bytes from its chunks (in one statement, so a concurrent
//! delete is seen entirely or not at all) or from the object store its row names, and a job's
//! image.

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
        // An image moved to another store between reading its row and reading the object
        // (`imgclass migrate --blobs-to`) is found by reading its row again.
        for _ in 0..3 {
            match self.read_blob_once(sha256).await? {
                Read::Bytes(b) => return Ok(Some(b)),
                Read::NoRow => return Ok(None),
                Read::NoObject => continue,
            }
        }
        // Its store answers that it has no such object: the image is lost.
        tracing::error!(sha256, "an image's object store does not have it");
        Ok(None)
    }

    /// The image from the object store a claim named, without reading its row (one statement
    /// less per job); read by its row where that store no longer has it.
    pub(crate) async fn read_blob_from(
        &self,
        sha256: &str,
        store: &str,
        size: u64,
    ) -> Result<Option<Vec<u8>>> {
        let Some(bytes) = self.blobs.at(store)?.get(sha256).await? else {
            return self.read_blob(sha256).await;
        };
        let bytes = Vec::from(bytes);
        complete(sha256, &bytes, size as i64)?;
        Ok(Some(bytes))
    }

    async fn read_blob_once(&self, sha256: &str) -> Result<Read> {
        // One statement, one snapshot: a concurrent delete is seen entirely or not at all.
        let rows: Vec<(i64, Option<String>, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT b.size, b.store, c.data FROM blobs b \
             LEFT JOIN blob_chunks c ON c.sha256 = b.sha256 WHERE b.sha256 = $1 ORDER BY c.idx",
        )
        .bind(sha256)
        .fetch_all(&self.reader)
        .await?;
        let Some((size, store)) = rows.first().map(|r| (r.0, r.1.clone())) else {
            return Ok(Read::NoRow);
        };
        let bytes = match store {
            Some(url) => match self.blobs.at(&url)?.get(sha256).await? {
                Some(b) => Vec::from(b),
                None => return Ok(Read::NoObject),
            },
            None => {
                let mut bytes = Vec::with_capacity(size as usize);
                for (_, _, chunk) in rows {
                    bytes.extend_from_slice(chunk.as_deref().unwrap_or_default());
                }
                bytes
            }
        };
        complete(sha256, &bytes, size)?;
        Ok(Read::Bytes(bytes))
    }
}

/// An error unless `bytes` are the `size` bytes of the image `sha256`'s row.
fn complete(sha256: &str, bytes: &[u8], size: i64) -> Result<()> {
    if bytes.len() as i64 != size {
        return Err(db_err(format!(
            "image {sha256} is incomplete: {} of {size} bytes",
            bytes.len()
        )));
    }
    Ok(())
}

/// What one look for an image found.
enum Read {
    Bytes(Vec<u8>),
    /// No such image.
    NoRow,
    /// The image's row names an object store that does not have it (it may have just moved).
    NoObject,
}
