//! The per-connection message rate limit: a token bucket.

use std::time::Instant;

/// `rate` tokens a second, at most `burst` saved up; one per data message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    /// Thousandths of a token, so refill needs no floating point.
    milli_tokens: u64,
    last: Instant,
}

impl RateLimit {
    pub(crate) fn new(now: Instant, burst: u32) -> RateLimit {
        RateLimit { milli_tokens: u64::from(burst) * 1000, last: now }
    }

    /// Takes a token if there is one.
    pub(crate) fn allow(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        let elapsed_us = now.saturating_duration_since(self.last).as_micros() as u64;
        let refill = elapsed_us.saturating_mul(u64::from(rate)) / 1000;
        if refill > 0 {
            self.milli_tokens = (self.milli_tokens + refill).min(u64::from(burst) * 1000);
            self.last = now;
        }
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    #[allow(clippy::disallowed_methods)] // Any instant will do as the start.
    fn burst_then_rate() {
        let t0 = std::time::Instant::now();
        let mut r = RateLimit::new(t0, 5);
        assert_eq!((0..6).filter(|_| r.allow(t0, 2, 5)).count(), 5);
        assert!(!r.allow(t0 + Duration::from_millis(400), 2, 5));
        assert!(r.allow(t0 + Duration::from_millis(500), 2, 5));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| r.allow(later, 2, 5)).count(), 5);
    }
}
