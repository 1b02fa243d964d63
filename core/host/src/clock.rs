//! The one place the host reads the clocks the core is given.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use natter_core::Now;

/// The clock, read once per loop turn.
pub fn now() -> Now {
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    Now { instant: Instant::now(), unix_ms }
}
