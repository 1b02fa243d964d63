//! Logs on standard error through `tracing`, one line per event.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Level from `--log` (or `NATTER_LOG`), else `RUST_LOG`, else `info`.
pub fn init(filter: Option<&str>) {
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
