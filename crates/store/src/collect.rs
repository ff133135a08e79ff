//! Images in object stores: the collector (objects no job needs any more, and orphans an
//! upload left when it stopped between storing its image and committing its job) and moving
//! images from one store to another (`imgclass migrate --blobs-to`).
//!
//! How a delete cannot lose an image a job needs, with several API nodes collecting at once:
//! - a `blobs` row is deleted only while no job refers to it, by a statement that holds the
//!   row; the foreign key from `jobs` makes a job that refers to it wait for that transaction
//!   and fail rather than refer to nothing (the upload is then tried again);
//! - the object is deleted while that transaction still holds the row, and the transaction
//!   leaves a tombstone (the image, the store, the time);
//! - an upload stores its object before its transaction, and in that transaction looks for a
//!   tombstone of each image it records: if one is there the object may have been deleted
//!   after the upload stored it, so it stores it again before it commits (`revive`);
//! - an object without a row (an orphan) is deleted only after the grace period, under a
//!   placeholder row that makes a concurrent upload of the same image wait, then find the
//!   tombstone.
//!
//! The one case this does not cover: the deleting transaction fails to commit after its object
//! was deleted (the database went away at that moment) while an upload of the same image waited
//! for it; the upload then records an image whose object is gone, and its job fails as
//! `image missing` (the upload stored the object before it waited, so this needs the commit
//! and the delete to race within one transaction's lifetime).

use crate::dialect::Durability;
use crate::exec::{any_args, Arg};
use crate::objects::{BlobStore, Listed};
use crate::rows::now_ms;
use crate::sql::SqlStore;
use crate::tombstones::{bury, revive, Blob};
use crate::{Result, StoreError};
use bytes::Bytes;
use std::time::Duration;

/// Tombstones are kept this long (far longer than any upload takes from storing its image to
/// committing its job).
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What one pass of the collector removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Images no job refers to any more (their rows and objects).
    pub unreferenced: u64,
    /// Objects no row named, older than the grace period.
    pub orphans: u64,
}

/// How far a move of images between stores got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub moved: u64,
    /// Images still recorded elsewhere (moved by the next call).
    pub remaining: u64,
}

impl SqlStore {
    /// One pass of the collector: deletes the images in object stores that no job refers to,
    /// then (when `orphans` is set) the objects of the current store that no row names and
    /// that are older than `grace`, and old tombstones.
    pub(crate) async fn collect_images(&self, grace: Duration, orphans: bool) -> Result<Collected> {
        let mut done = Collected::default();
        loop {
            let batch: Vec<(String, String)> = sqlx::query_as(
                "SELECT b.sha256, b.store FROM blobs b WHERE b.store IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.image_sha256 = b.sha256) LIMIT 100",
            )
            .fetch_all(&self.reader)
            .await?;
            if batch.is_empty() {
                break;
            }
            let mut progress = false;
            for (sha, url) in batch {
                if self.delete_unreferenced(&sha, &url).await? {
                    done.unreferenced += 1;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        if orphans && !self.blobs.current.is_database() {
            let cutoff = chrono::Utc::now()
                - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
            for listed in self.blobs.current.list().await? {
                if listed.last_modified <= cutoff && self.delete_orphan(&listed).await? {
                    done.orphans += 1;
                }
            }
        }
        sqlx::query("DELETE FROM blob_tombstones WHERE at < $1")
            .bind(now_ms() - TOMBSTONE_TTL.as_millis() as i64)
            .execute(&self.writer)
            .await?;
        Ok(done)
    }

    /// Deletes one image's row and object if no job refers to it (checked by the statement that
    /// deletes the row, which holds it until the object is gone).
    async fn delete_unreferenced(&self, sha256: &str, url: &str) -> Result<bool> {
        let store = self.blobs.at(url)?;
        let mut w = self.begin(Durability::Durable).await?;
        let gone = sqlx::query_scalar::<_, String>(
            "DELETE FROM blobs WHERE sha256 = $1 AND store = $2 \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE image_sha256 = $1) RETURNING sha256",
        )
        .bind(sha256)
        .bind(url)
        .fetch_optional(&mut *w.tx)
        .await
        .map_err(StoreError::from);
        // A job that refers to it committed meanwhile (the foreign key refused the delete).
        let gone = match gone {
            Err(StoreError::Raced(_)) => None,
            other => other?,
        };
        if gone.is_none() {
            w.tx.rollback().await?;
            return Ok(false);
        }
        bury(&mut w, sha256, url).await?;
        store.delete(sha256).await?;
        w.commit_plain().await?;
        Ok(true)
    }

    /// Deletes a listed object of the current store when no row names it as there.
    async fn delete_orphan(&self, listed: &Listed) -> Result<bool> {
        let store = &self.blobs.current;
        match &listed.sha256 {
            Some(sha) => self.delete_stray(store, sha).await,
            None => {
                // A temporary file left by a write that stopped.
                store.delete_key(&listed.key).await?;
                Ok(true)
            }
        }
    }

    /// Deletes `sha256`'s object in `store` unless its row names `store` as where it is. A
    /// placeholder row (deleted again in the same transaction) holds the image against a
    /// concurrent upload, which then finds the tombstone.
    async fn delete_stray(&self, store: &BlobStore, sha256: &str) -> Result<bool> {
        let url = store.url();
        let mut w = self.begin(Durability::Durable).await?;
        let placed: Option<String> = sqlx::query_scalar(
            "INSERT INTO blobs (sha256, size, content_type, width, height, created_at, store) \
             VALUES ($1, 1, '', 0, 0, $2, $3) ON CONFLICT (sha256) DO NOTHING RETURNING sha256",
        )
        .bind(sha256)
        .bind(w.now)
        .bind(url)
        .fetch_optional(&mut *w.tx)
        .await?;
        let stray = if placed.is_some() {
            true
        } else {
            let lock = self.locks().row;
            let held: Option<Option<String>> =
                sqlx::query_scalar(&format!("SELECT store FROM blobs WHERE sha256 = $1{lock}"))
                    .bind(sha256)
                    .fetch_optional(&mut *w.tx)
                    .await?;
            matches!(held, Some(s) if s.as_deref() != Some(url))
        };
        if !stray {
            w.tx.rollback().await?;
            return Ok(false);
        }
        bury(&mut w, sha256, url).await?;
        store.delete(sha256).await?;
        if placed.is_some() {
            sqlx::query("DELETE FROM blobs WHERE sha256 = $1")
                .bind(sha256)
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit_plain().await?;
        Ok(true)
    }

    /// Moves up to `limit` images that are not in `to` into it: each is read, its digest
    /// checked, stored in `to`, its row pointed at `to`, and then removed from where it was.
    /// Each image is moved on its own, so an interrupted move is resumed by running it again.
    pub(crate) async fn move_images(&self, to: &BlobStore, limit: usize) -> Result<Moved> {
        // Images the target keeps (a directory keeps only those over its small size) that are
        // somewhere else.
        let (condition, args) = if to.is_database() {
            ("store IS NOT NULL", vec![])
        } else {
            let min_size = Arg::int(to.min_size() as i64);
            let condition = "(store IS NULL OR store <> $1) AND size > $2";
            (condition, vec![Arg::text(to.url()), min_size])
        };
        let sql = format!(
            "SELECT sha256, store FROM blobs WHERE {condition} ORDER BY sha256 LIMIT {limit}"
        );
        let batch: Vec<(String, Option<String>)> = sqlx::query_as_with(&sql, any_args(&args)?)
            .fetch_all(&self.reader)
            .await?;
        let mut done = Moved::default();
        for (sha, from) in batch {
            if self.move_image(&sha, from.as_deref(), to).await? {
                done.moved += 1;
            }
        }
        let count = format!("SELECT COUNT(*) FROM blobs WHERE {condition}");
        let remaining: i64 = sqlx::query_scalar_with(&count, any_args(&args)?)
            .fetch_one(&self.reader)
            .await?;
        done.remaining = remaining as u64;
        Ok(done)
    }

    async fn move_image(&self, sha256: &str, from: Option<&str>, to: &BlobStore) -> Result<bool> {
        let Some(bytes) = self.read_blob(sha256).await? else {
            return Ok(false);
        };
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if digest != sha256 {
            return Err(StoreError::Database(format!(
                "the image {sha256} does not match its digest ({digest}); it was not moved"
            )));
        }
        let target: Option<&str> = (!to.is_database()).then(|| to.url());
        if !to.is_database() {
            to.put(sha256, Bytes::from(bytes.clone())).await?;
        }
        let mut w = self.begin(Durability::Durable).await?;
        let lock = self.locks().row;
        let now: Option<Option<String>> =
            sqlx::query_scalar(&format!("SELECT store FROM blobs WHERE sha256 = $1{lock}"))
                .bind(sha256)
                .fetch_optional(&mut *w.tx)
                .await?;
        if now.as_ref().map(|s| s.as_deref()) != Some(from) {
            // Deleted or moved meanwhile; what was put into `to` the collector removes.
            w.tx.rollback().await?;
            return Ok(false);
        }
        match target {
            Some(url) => {
                let blob = Blob {
                    sha256,
                    bytes: &bytes,
                    content_type: "",
                    width: 0,
                    height: 0,
                };
                // Deleted by the collector since the put above: put again.
                if !revive(&mut w.tx, url, &[&blob]).await?.is_empty() {
                    crate::uploads::put_all(to, &[blob]).await?;
                }
            }
            None => crate::uploads::insert_chunks(&mut w.tx, sha256, &bytes).await?,
        }
        sqlx::query("UPDATE blobs SET store = $1 WHERE sha256 = $2")
            .bind(target)
            .bind(sha256)
            .execute(&mut *w.tx)
            .await?;
        if from.is_none() {
            sqlx::query("DELETE FROM blob_chunks WHERE sha256 = $1")
                .bind(sha256)
                .execute(&mut *w.tx)
                .await?;
        }
        w.commit_plain().await?;
        if let Some(url) = from {
            // No longer where the row says: removed like an orphan (an upload may have stored
            // the same image there again meanwhile, and recorded it there).
            self.delete_stray(&self.blobs.at(url)?, sha256).await?;
        }
        Ok(true)
    }
}
