//! `imgclass migrate`: creates the database or brings it up to date; with `--from` and `--to`,
//! copies one installation's jobs, results and images into another database.

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
        let target = imgclass_store::connect(to)
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
    let store = imgclass_store::connect(&args.db.database)
        .await
        .with_context(|| format!("cannot open the database {shown}"))?;
    store.migrate().await?;
    tracing::info!(database = %shown, "migrations applied");
    Ok(ExitCode::SUCCESS)
}
