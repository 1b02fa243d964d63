//! SIGTERM and SIGINT begin an orderly shutdown.

use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::node::Shutdown;

/// Starts a thread that triggers `shutdown` on the first signal; a second
/// one exits at once, for an operator who does not want to wait.
pub fn install(shutdown: Arc<Shutdown>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new().name("natter-signals".into()).spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            seen += 1;
            if seen > 1 {
                tracing::warn!(signal, "second signal: exiting now");
                std::process::exit(1);
            }
            tracing::info!(signal, "shutting down");
            shutdown.trigger();
        }
    })?;
    Ok(())
}
