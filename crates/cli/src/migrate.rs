//! `imgclass migrate`: creates the database or brings it up to date; with `--from` and `--to`,
//! copies one installation's jobs, results and images into another database; with
//! `--blobs-to`, moves the images into another store.

use crate::args::MigrateArgs;
use crate::parse::redact_url;
use anyhow::{Context, Result};
use std::process::ExitCode;

pub async fn run(args: MigrateArgs) -> Result<ExitCode> {
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        // URLs are printed without their passwords.
        let (from_shown, to_shown) = (redact_url(from), redact_url(to));
        eprintln!("imgclass: copying from the database {from_shown} into {to_shown}");
        let source = imgclass_store::connect(from)
            .await
            .with_context(|| format!("cannot open {from_shown}"))?;
        source.migrate().await?;
        // Images go where --blob-store says (else into the target database).
        let url = args
            .db
            .blob_store
            .clone()
            .unwrap_or(imgclass_store::DATABASE.into());
        let blobs = imgclass_store::BlobStore::open(&url, None)
            .with_context(|| format!("cannot open the image store {url}"))?;
        let rules = imgclass_core::policy::Rules::default();
        let target = imgclass_store::open(to, rules, blobs, Default::default())
            .await
            .with_context(|| format!("cannot open {to_shown}"))?;
        target.migrate().await?;
        let (copied, skipped) = imgclass_store::copy_all(&*source, &*target).await?;
        tracing::info!(copied, skipped, "copied jobs, results and images");
        println!("copied {copied} jobs ({skipped} already there) from {from_shown} to {to_shown}");
        return Ok(ExitCode::SUCCESS);
    }
    let shown = args.db.shown();
    eprintln!("imgclass: using the database {shown}");
    let store = crate::node::open_store(&args.db).await?;
    tracing::info!(database = %shown, "migrations applied");
    if let Some(to) = &args.blobs_to {
        return move_images(&*store, to).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Moves every image into the store `to`, a batch at a time, printing the progress.
async fn move_images(store: &dyn imgclass_store::Store, to: &str) -> Result<ExitCode> {
    let target = imgclass_store::BlobStore::open(to, None)
        .with_context(|| format!("cannot open the image store {to}"))?;
    target
        .probe()
        .await
        .with_context(|| format!("the image store {} does not answer", target.url()))?;
    let mut moved = 0;
    loop {
        let step = store.move_images(&target, 100).await?;
        moved += step.moved;
        eprintln!(
            "imgclass: {moved} images moved to {}, {} to go",
            target.url(),
            step.remaining
        );
        if step.remaining == 0 {
            break;
        }
        if step.moved == 0 {
            anyhow::bail!(
                "{} images could not be moved (they changed while being moved); run again",
                step.remaining
            );
        }
    }
    println!("moved {moved} images to {}", target.url());
    Ok(ExitCode::SUCCESS)
}
