//! The tombstones that keep an image an upload needs from being lost to a concurrent delete
//! (see `collect` for the whole protocol): the delete records one in its transaction, and an
//! upload's transaction looks for them among the images it records and stores those again.
//! Also the image an upload records (`Blob`) and which images are recorded already.

use crate::exec::{marks, Arg, Exec};
use crate::rows::Columns;
use crate::tx::Write;
use crate::{NewJob, Result};
use std::collections::HashSet;

/// An image to store, with what the `blobs` row says of it.
#[derive(Clone, Copy)]
pub(crate) struct Blob<'a> {
    pub(crate) sha256: &'a str,
    pub(crate) bytes: &'a [u8],
    pub(crate) content_type: &'a str,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

impl<'a> Blob<'a> {
    pub(crate) fn of(job: &'a NewJob) -> Self {
        Blob {
            sha256: &job.sha256,
            bytes: &job.image,
            content_type: &job.content_type,
            width: job.width,
            height: job.height,
        }
    }
}

/// Which of `shas` have a row already (wherever their bytes are).
pub(crate) async fn recorded(reader: &sqlx::AnyPool, shas: &[&str]) -> Result<HashSet<String>> {
    let mut found = HashSet::new();
    for chunk in shas.chunks(200) {
        let sql = format!(
            "SELECT sha256 FROM blobs WHERE sha256 IN ({})",
            marks(chunk.len())
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for sha in chunk {
            q = q.bind(*sha);
        }
        found.extend(q.fetch_all(reader).await?);
    }
    Ok(found)
}

/// In an upload's transaction: which images of `blobs` the collector may have deleted from the
/// object store at `url` since the upload stored them (it left a tombstone); their tombstones are
/// cleared, and the transaction must store them again before it commits.
pub(crate) async fn revive<E: Exec>(
    e: &mut E,
    url: &str,
    blobs: &[&Blob<'_>],
) -> Result<Vec<String>> {
    if blobs.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT sha256 FROM blob_tombstones WHERE sha256 IN ({}) AND store = ${}",
        marks(blobs.len()),
        blobs.len() + 1
    );
    let mut args: Vec<Arg> = blobs.iter().map(|b| Arg::text(b.sha256)).collect();
    args.push(Arg::text(url));
    let mut dead = Vec::new();
    for row in e.fetch(&sql, &args).await? {
        dead.push(row.text("sha256")?);
    }
    for sha in &dead {
        let sql = "DELETE FROM blob_tombstones WHERE sha256 = $1 AND store = $2";
        e.execute(sql, &[Arg::text(sha.as_str()), Arg::text(url)])
            .await?;
    }
    Ok(dead)
}

/// Records that `sha256`'s object in `url` was deleted (in the deleting transaction).
pub(crate) async fn bury(w: &mut Write, sha256: &str, url: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO blob_tombstones (sha256, store, at) VALUES ($1, $2, $3) \
         ON CONFLICT (sha256, store) DO UPDATE SET at = excluded.at",
    )
    .bind(sha256)
    .bind(url)
    .bind(w.now)
    .execute(&mut *w.tx)
    .await?;
    Ok(())
}
