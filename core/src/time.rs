//! Time as the core sees it: always passed in, never read.

use std::time::{Duration, Instant};

/// The moment an input happens, sampled once per loop turn by the runtime.
///
/// `instant` drives every timer; `unix_ms` only stamps messages (`ts`). Two
/// clocks because the wall clock can jump and a timer must not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall clock, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl Now {
    /// `self` moved forward by `d`, on both clocks (for tests and simulation).
    pub fn after(self, d: Duration) -> Now {
        Now { instant: self.instant + d, unix_ms: self.unix_ms + d.as_millis() as u64 }
    }

    /// The monotonic instant at which the wall clock reads `unix_ms`, assuming
    /// neither clock jumps in between; `None` if that moment has passed.
    pub fn instant_at_unix_ms(self, unix_ms: u64) -> Option<Instant> {
        unix_ms.checked_sub(self.unix_ms).map(|ms| self.instant + Duration::from_millis(ms))
    }
}

/// The earliest of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
