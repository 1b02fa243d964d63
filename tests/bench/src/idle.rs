//! Idle sessions: many guests in rooms that say nothing for a while. What
//! an idle session costs is the server's memory per session and its
//! heartbeat work, so the scenario reads the server's RSS before the first
//! connection and after the hold, answers the server's pings throughout
//! (run the server with a short `--heartbeat` so that they really happen),
//! and ends by sending one message per room to prove every session is
//! still open. [`hold`] is shared with the scale scenario, which is the
//! same measurement at the edge of the file-descriptor limit.

use std::time::{Duration, Instant};

use crate::fanout::OpenArgs;
use crate::fleet::{summary, Fleet, Hello, Plan, Rooms, Verified};
use crate::proc::{self, Usage};
use crate::report::{col, mib, ratio, text, Cell, Col, Row};
use crate::{name_prefix, sources_for, Target, Titled};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) sessions: usize,
    #[arg(long, default_value_t = 100)]
    pub(crate) room_size: usize,
    /// Seconds the sessions stay silent.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) hold: f64,
    #[command(flatten)]
    pub(crate) open: OpenArgs,
}

impl Titled for IdleArgs {
    fn title(&self) -> String {
        format!(
            "idle: {} guest sessions in rooms of {}, silent for {} s (answering heartbeats), then one message per room",
            self.sessions, self.room_size, self.hold
        )
    }
}

/// What holding sessions open measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) sessions: usize,
    pub(crate) opened: usize,
    pub(crate) open_failures: String,
    pub(crate) failed: usize,
    pub(crate) setup_s: f64,
    /// Server RSS before the first connection, after set-up, after the hold.
    pub(crate) baseline_kib: Option<u64>,
    pub(crate) setup_kib: Option<u64>,
    pub(crate) after_kib: Option<u64>,
    pub(crate) peak_kib: Option<u64>,
    pub(crate) pongs: u64,
    /// Sessions lost during the hold and the check.
    pub(crate) gone: usize,
    pub(crate) gone_reasons: String,
    pub(crate) open_at_end: usize,
    pub(crate) verified: Verified,
    pub(crate) hold_cpu_s: Option<f64>,
}

impl Report {
    /// (RSS after the hold − RSS before any connection) / sessions opened.
    pub(crate) fn kib_per_session(&self) -> Option<f64> {
        let (b, a) = (self.baseline_kib?, self.after_kib?);
        (self.opened > 0).then(|| (a as f64 - b as f64) / self.opened as f64)
    }
}

impl Row for Report {
    fn columns() -> Vec<Col> {
        vec![
            ratio("sessions held"),
            col("RSS before MiB"),
            ratio("RSS after MiB"),
            ratio("KiB/session"),
            col("pings answered"),
            text("message per room"),
            col("set-up s"),
            ratio("server CPU s in hold"),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        vec![
            Cell::num(self.open_at_end as f64, 0),
            mib(self.baseline_kib),
            mib(self.after_kib),
            Cell::opt(self.kib_per_session(), 1),
            Cell::num(self.pongs as f64, 0),
            Cell::text(self.verified.summary()),
            Cell::num(self.setup_s, 1),
            Cell::opt(self.hold_cpu_s, 2),
        ]
    }

    fn clean(&self) -> bool {
        self.failed == 0 && self.gone == 0 && self.verified.clean() && self.open_at_end == self.sessions
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.failed > 0 {
            notes.push(format!("{} of {} sessions failed to open: {}", self.failed, self.sessions, self.open_failures));
        }
        if self.gone > 0 {
            notes.push(format!("{} session(s) closed while idle: {}", self.gone, self.gone_reasons));
        }
        if self.verified.duplicated > 0 {
            notes.push(format!("{} duplicate(s) of the closing messages", self.verified.duplicated));
        }
        if let (Some(s), Some(p)) = (self.setup_kib, self.peak_kib) {
            notes.push(format!("RSS after set-up {:.1} MiB, peak {:.1} MiB", s as f64 / 1024.0, p as f64 / 1024.0));
        }
        notes
    }
}

/// Opens `sessions` guests in rooms of `room_size`, holds them silent for
/// `hold_s`, then checks each room with one message.
pub(crate) fn hold(target: &Target, sessions: usize, room_size: usize, hold_s: f64, open: &OpenArgs) -> Report {
    target.check();
    let pid = target.pid;
    let rss = || pid.and_then(|p| proc::rss_kib(p).0);
    let mut r = Report { sessions, baseline_kib: pid.and_then(proc::settled_rss_kib), ..Report::default() };
    let prefix = name_prefix('i');
    let rooms = Rooms::new(room_size, format!("{prefix}r"), sessions);
    let sources = sources_for(sessions, open.sources);
    let plan = Plan {
        http: target.http,
        hello: Hello::Guest(&prefix),
        rooms: Some(&rooms),
        count: sessions,
        sources,
        local: None,
        second: None,
        in_flight: open.in_flight,
        session_timeout: Duration::from_secs(30),
    };
    let (mut fleet, opened) = Fleet::open(&plan);
    r.opened = opened.ready;
    r.failed = opened.failures();
    r.open_failures = opened.failure_summary();
    r.setup_s = opened.elapsed.as_secs_f64();
    r.setup_kib = rss();
    eprintln!(
        "opened {} of {sessions} sessions from {sources} source address(es) in {:.1} s; holding {hold_s} s",
        opened.ready, r.setup_s
    );
    let usage = Usage::now(pid);
    let end = Instant::now() + Duration::from_secs_f64(hold_s);
    r.peak_kib = r.setup_kib;
    while Instant::now() < end {
        fleet.pump_until(end.min(Instant::now() + Duration::from_secs(1)), |_, _, _| {});
        r.peak_kib = r.peak_kib.max(rss());
    }
    r.hold_cpu_s = usage.until(&Usage::now(pid)).server_cpu_s;
    r.after_kib = rss();
    r.pongs = fleet.pongs();
    r.verified = fleet.verify_rooms(&rooms, Duration::from_secs(15));
    r.gone = fleet.gone_count();
    r.gone_reasons = summary(&fleet.gone);
    r.open_at_end = fleet.open_count();
    r
}

pub(crate) fn run(a: &IdleArgs) -> Report {
    hold(&a.target, a.sessions, a.room_size, a.hold, &a.open)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_session() {
        let r = Report { opened: 1000, baseline_kib: Some(10_000), after_kib: Some(30_480), ..Report::default() };
        assert_eq!(r.kib_per_session(), Some(20.48));
        assert_eq!(Report { after_kib: None, ..r }.kib_per_session(), None);
    }

    #[test]
    fn a_closed_session_or_a_missed_member_fails_the_run() {
        let verified = Verified { expected: 10, reached: 10, duplicated: 0 };
        let ok = Report { sessions: 10, opened: 10, open_at_end: 10, verified, ..Report::default() };
        assert!(ok.clean());
        assert!(!Report { gone: 1, ..ok }.clean());
        let missed = Verified { reached: 9, ..verified };
        let ok = Report { sessions: 10, opened: 10, open_at_end: 10, verified, ..Report::default() };
        assert!(!Report { verified: missed, ..ok }.clean());
    }
}
