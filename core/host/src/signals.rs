//! The shutdown flag, and SIGTERM and SIGINT, which raise it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The shutdown flag and the wakers of every loop that must notice it.
#[derive(Default)]
pub struct Shutdown {
    flag: AtomicBool,
    wakers: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl Shutdown {
    /// Whether shutdown has begun.
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Registers a waker to call when shutdown begins.
    pub fn on_signal(&self, wake: impl Fn() + Send + Sync + 'static) {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(wake));
        if self.is_set() {
            self.trigger();
        }
    }

    /// Begins shutdown and wakes every loop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        for wake in self.wakers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            wake();
        }
    }
}

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
