//! `imgclass`: the one binary. `serve` runs the API, the web page and the workers; `worker` runs
//! workers only; `classify` classifies files locally; `migrate` prepares or copies a database;
//! `submit` uploads images to a server.
//!
//! This file is only the entry point: the allocator, the parse of the command line and the
//! hand-over to the subcommand's module.

mod args;
mod classify;
mod migrate;
mod node;
mod parse;
mod runtime;
mod serve;
mod submit;
mod token;
mod worker;

use args::{Cli, Command};
use clap::{CommandFactory, Parser};
use std::process::ExitCode;

/// jemalloc, with background threads that return freed memory to the system within seconds:
/// after a burst of big uploads the process goes back near its idle size, where glibc's malloc
/// keeps what it once held (measured in bench/README.md, "Uploads and memory").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    // `--database` is global (accepted before and after the subcommand), so clap hands it to
    // every subcommand: the ones without a database refuse it rather than ignore it.
    if let (Some(_), Command::Classify(_) | Command::Submit(_)) = (&cli.database, &cli.command) {
        let name = match cli.command {
            Command::Classify(_) => "classify",
            _ => "submit",
        };
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "`{name}` uses no database: --database is for serve, worker, migrate and token"
                ),
            )
            .exit();
    }
    let result = match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Serve(args) => {
            runtime::start(format).and_then(|rt| rt.block_on(serve::run(*args)))
        }
        Command::Worker(args) => {
            runtime::start(format).and_then(|rt| rt.block_on(worker::run(*args)))
        }
        Command::Migrate(args) => {
            runtime::start(format).and_then(|rt| rt.block_on(migrate::run(args)))
        }
        Command::Token(args) => runtime::start(format).and_then(|rt| rt.block_on(token::run(args))),
        Command::Submit(args) => submit::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imgclass: {e:#}");
            ExitCode::FAILURE
        }
    }
}
