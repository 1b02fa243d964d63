//! The timeline every load phase follows: senders on a fixed schedule, a
//! warm-up that is not measured (connections and caches settle, the
//! server's batching finds its stride), a measured window whose CPU and
//! memory readings are taken as it opens and closes, and a drain that ends
//! as soon as everything sent has arrived, or at its limit.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::proc::{self, ThreadTimes, Usage, Window};

/// Where a phase is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Warm-up or window: keep sending.
    Send,
    /// Waiting for what is on its way.
    Drain,
    Done,
}

/// Grace after everything arrived, for duplicates that would follow.
const GRACE: Duration = Duration::from_millis(100);

/// One phase's timeline and its window's readings.
pub struct Timeline {
    warm_end: Instant,
    measure_end: Instant,
    drain_end: Instant,
    pid: Option<u32>,
    /// Other servers whose CPU is counted with `pid`'s (a cluster's nodes).
    others: Vec<u32>,
    usage: (Option<Usage>, Option<Usage>),
    threads: (ThreadTimes, ThreadTimes),
    settled_at: Option<Instant>,
    /// The server's `(VmRSS, VmHWM)` as the window closed.
    pub rss_kib: (Option<u64>, Option<u64>),
}

impl Timeline {
    pub fn new(start: Instant, warmup: f64, measure: f64, drain: f64, pid: Option<u32>) -> Timeline {
        let warm_end = start + Duration::from_secs_f64(warmup);
        let measure_end = warm_end + Duration::from_secs_f64(measure);
        Timeline {
            warm_end,
            measure_end,
            drain_end: measure_end + Duration::from_secs_f64(drain),
            pid,
            others: Vec::new(),
            usage: (None, None),
            threads: (Vec::new(), Vec::new()),
            settled_at: None,
            rss_kib: (None, None),
        }
    }

    /// Counts the CPU of `others` too (the other nodes of a cluster); the
    /// memory and thread figures stay `pid`'s.
    pub fn with_others(mut self, others: &[u32]) -> Timeline {
        self.others = others.to_vec();
        self
    }

    fn usage_now(&self) -> Usage {
        let pids: Vec<u32> = self.pid.iter().chain(&self.others).copied().collect();
        Usage::now_of(&pids)
    }

    /// The window in microseconds since `t0`: sends due in it are measured.
    pub fn window_us(&self, t0: Instant) -> Range<u64> {
        let us = |t: Instant| t.duration_since(t0).as_micros() as u64;
        us(self.warm_end)..us(self.measure_end)
    }

    /// Takes the readings as the window opens and closes and says what to
    /// do now; `settled` is whether everything sent so far has arrived.
    pub fn turn(&mut self, now: Instant, settled: bool) -> Stage {
        if self.usage.0.is_none() && now >= self.warm_end {
            self.usage.0 = Some(self.usage_now());
            self.threads.0 = self.pid.map(proc::thread_cpu).unwrap_or_default();
        }
        if self.usage.1.is_none() && now >= self.measure_end {
            self.usage.1 = Some(self.usage_now());
            self.threads.1 = self.pid.map(proc::thread_cpu).unwrap_or_default();
            self.rss_kib = self.pid.map_or((None, None), proc::rss_kib);
        }
        if now < self.measure_end {
            return Stage::Send;
        }
        if settled {
            let at = *self.settled_at.get_or_insert(now);
            if now >= at + GRACE {
                return Stage::Done;
            }
        } else {
            self.settled_at = None;
        }
        if now >= self.drain_end {
            Stage::Done
        } else {
            Stage::Drain
        }
    }

    /// How long to poll for: until the next send is due, never long.
    pub fn wait(&self, now: Instant, next_send: Option<Instant>) -> Duration {
        let until = match next_send {
            Some(t) if now < self.measure_end => t.min(self.measure_end),
            _ => self.drain_end,
        };
        until.saturating_duration_since(now).min(Duration::from_millis(5))
    }

    /// The window's CPU figures, and which server threads used it.
    pub fn window(&self) -> (Window, String) {
        let (Some(a), Some(b)) = self.usage else { panic!("the phase ended before its window closed") };
        (a.until(&b), proc::thread_breakdown(&self.threads.0, &self.threads.1))
    }
}

/// When each of several senders sends next: a fixed rate each, spread over
/// the first interval so that they do not all send at once.
pub struct Schedule {
    next: Vec<Instant>,
    interval: Duration,
}

impl Schedule {
    pub fn new(start: Instant, senders: usize, rate: f64) -> Schedule {
        assert!(rate > 0.0, "the rate must be positive");
        let interval = Duration::from_secs_f64(1.0 / rate);
        let next = (0..senders).map(|k| start + interval.mul_f64(k as f64 / senders as f64)).collect();
        Schedule { next, interval }
    }

    /// If sender `k` is due at `now`: when it was due (latency counts from
    /// then, so a generator that falls behind shows as latency); call until
    /// `None`.
    pub fn due(&mut self, k: usize, now: Instant) -> Option<Instant> {
        let t = self.next[k];
        (t <= now).then(|| {
            self.next[k] += self.interval;
            t
        })
    }

    pub fn next(&self) -> Option<Instant> {
        self.next.iter().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_and_early_drain() {
        let start = Instant::now();
        let mut t = Timeline::new(start, 1.0, 2.0, 5.0, None);
        assert_eq!(t.turn(start, true), Stage::Send);
        let after = start + Duration::from_secs(3);
        assert_eq!(t.turn(after, false), Stage::Drain);
        // Settled: done after the grace, unless something is missing again.
        assert_eq!(t.turn(after, true), Stage::Drain);
        assert_eq!(t.turn(after + GRACE, true), Stage::Done);
        assert_eq!(t.turn(start + Duration::from_secs(9), false), Stage::Done);
        assert_eq!(t.window().0.server_cpu_s, None);
    }

    #[test]
    fn schedule_spreads_and_keeps_the_rate() {
        let start = Instant::now();
        let mut s = Schedule::new(start, 2, 10.0);
        assert_eq!(s.due(0, start), Some(start));
        assert_eq!(s.due(0, start), None);
        assert_eq!(s.due(1, start), None);
        let later = start + Duration::from_millis(200);
        // Sender 1 started half an interval late; both catch up in order.
        assert_eq!(s.due(1, later), Some(start + Duration::from_millis(50)));
        assert_eq!(s.due(1, later), Some(start + Duration::from_millis(150)));
        assert_eq!(s.due(1, later), None);
        // Sender 0 has been asked only at the start.
        assert_eq!(s.next(), Some(start + Duration::from_millis(100)));
    }
}
