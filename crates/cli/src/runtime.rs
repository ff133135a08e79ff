//! The set-up the server-side subcommands (`serve`, `worker`, `migrate`, `token`) run in: the
//! log output and the tokio runtime.

use crate::args::LogFormat;
use anyhow::Result;

/// Starts the log output, then builds the runtime.
pub fn start(format: LogFormat) -> Result<tokio::runtime::Runtime> {
    init_tracing(format);
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=warn,sqlx=warn,ort=warn"));
    // Colours only for a person at a terminal: not in files, pipes or journald (NO_COLOR too).
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => fmt.init(),
        // One object per line; the fields of every enclosing span (request.id, job.id, node)
        // come along in "spans", the innermost one's also in "span".
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
