//! `imgclass migrate`: creates the database or brings it up to date; with `--from` and `--to`,
//! copies one installation's jobs, results and images into another database.

use crate::args::MigrateArgs;
use anyhow::{Context, Result};
use std::process::ExitCode;

pub async fn run(args: MigrateArgs) -> Result<ExitCode> {
    if let (Some(from), Some(to)) = (&args.from, &args.to) {
        let source = imgclass_store::connect(from)
            .await
            .with_context(|| format!("cannot open {from}"))?;
        source.migrate().await?;
        let target = imgclass_store::connect(to)
            .await
            .with_context(|| format!("cannot open {to}"))?;
        target.migrate().await?;
        let (copied, skipped) = imgclass_store::copy_all(&*source, &*target).await?;
        tracing::info!(copied, skipped, "copied jobs, results and images");
        println!("copied {copied} jobs ({skipped} already there) from {from} to {to}");
        return Ok(ExitCode::SUCCESS);
    }
    let store = imgclass_store::connect(&args.db.database).await?;
    store.migrate().await?;
    tracing::info!(database = %args.db.database, "migrations applied");
    Ok(ExitCode::SUCCESS)
}
