//! A session's deadlines, one slot per [`Timer`], so that `poll_timeout` is
//! a min over a fixed table (as quinn's `TimerTable`).

use std::time::Instant;

/// What a session waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// `welcome` must come within `--handshake-timeout` (for keep-alive
    /// HTTP, the next request).
    Handshake,
    /// Silence past twice the heartbeat (WebSocket) or `--line-idle` (line).
    Idle,
    /// The next heartbeat ping (WebSocket).
    Ping,
    /// The session's token expires.
    Expiry,
    /// A closing connection has had long enough to flush its goodbye.
    Linger,
}

impl Timer {
    const SLOTS: usize = 4;

    /// `Linger` shares `Handshake`'s slot: it is set only once closing, after
    /// every other timer was stopped, and nothing asks for the handshake
    /// then. One slot less is 16 bytes less in every session.
    fn slot(self) -> usize {
        match self {
            Timer::Handshake | Timer::Linger => 0,
            Timer::Idle => 1,
            Timer::Ping => 2,
            Timer::Expiry => 3,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    at: [Option<Instant>; Timer::SLOTS],
}

impl Timers {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.at[timer.slot()] = Some(at);
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.at[timer.slot()] = None;
    }

    pub(super) fn stop_all(&mut self) {
        self.at = [None; Timer::SLOTS];
    }

    pub(super) fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.at[timer.slot()].is_some_and(|t| t <= now)
    }

    /// The earliest deadline set.
    pub(super) fn next(&self) -> Option<Instant> {
        self.at.iter().flatten().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    #[allow(clippy::disallowed_methods)] // Any instant will do as the start.
    fn next_is_the_earliest_set_and_stopped_timers_are_not_due() {
        let t0 = std::time::Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::Idle, t0 + Duration::from_secs(60));
        timers.set(Timer::Ping, t0 + Duration::from_secs(30));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(30)));
        assert!(timers.is_due(Timer::Ping, t0 + Duration::from_secs(30)));
        assert!(!timers.is_due(Timer::Idle, t0 + Duration::from_secs(30)));
        timers.stop(Timer::Ping);
        assert!(!timers.is_due(Timer::Ping, t0 + Duration::from_secs(90)));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(60)));
        timers.stop_all();
        assert_eq!(timers.next(), None);
    }
}
