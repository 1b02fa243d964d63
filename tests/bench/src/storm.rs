//! The connection storm: sessions opened as fast as the server takes them,
//! as after a restart when every client reconnects at once. Each one is the
//! whole set-up a chat client goes through (TCP connect, HTTP upgrade,
//! `hello`, `join`), with a bound on how many are under way: the rate is
//! the server's, not the kernel's SYN back-off. Sessions stay open until
//! the end, so the later ones join rooms that are already busy.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fanout::OpenArgs;
use crate::fleet::{summary, Fleet, Hello, Plan, Rooms};
use crate::proc::{self, Usage, Window};
use crate::report::{col, mib, ratio, text, Cell, Col, Row};
use crate::stats::Histogram;
use crate::{name_prefix, sources_for, Target, Titled};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct StormArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) sessions: usize,
    #[arg(long, default_value_t = 100)]
    pub(crate) room_size: usize,
    /// A session not joined after this many seconds has failed.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) session_timeout: f64,
    #[command(flatten)]
    pub(crate) open: OpenArgs,
}

impl Titled for StormArgs {
    fn title(&self) -> String {
        format!(
            "storm: {} sessions (connect, upgrade, hello, join rooms of {}) with {} under way at once",
            self.sessions, self.room_size, self.open.in_flight
        )
    }
}

pub(crate) struct Report {
    pub(crate) ready: usize,
    pub(crate) failed: BTreeMap<String, usize>,
    pub(crate) elapsed_s: f64,
    /// Connect to join `ok`, per session.
    pub(crate) latency: Histogram,
    pub(crate) window: Window,
    pub(crate) rss_kib: Option<u64>,
    /// Connections the kernel dropped from a full listen queue meanwhile.
    pub(crate) listen_drops: Option<u64>,
}

impl Report {
    fn sessions_per_s(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.ready as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

impl Row for Report {
    fn columns() -> Vec<Col> {
        vec![
            ratio("sessions/s"),
            col("joined"),
            col("failed"),
            col("set-up p50 ms"),
            col("p99 ms"),
            col("max ms"),
            ratio("server CPU ms/session"),
            col("RSS MiB"),
            col("listen drops"),
            text("load gen CPU"),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        let l = self.latency.ms();
        let per_session = self.window.server_cpu_s.filter(|_| self.ready > 0).map(|c| c * 1000.0 / self.ready as f64);
        let gen = if self.window.generator_saturated() { " !" } else { "" };
        vec![
            Cell::num(self.sessions_per_s(), 0),
            Cell::num(self.ready as f64, 0),
            Cell::num(self.failed.values().sum::<usize>() as f64, 0),
            Cell::num(l.p50, 2),
            Cell::num(l.p99, 2),
            Cell::num(l.max, 2),
            Cell::opt(per_session, 3),
            mib(self.rss_kib),
            Cell::opt(self.listen_drops.map(|d| d as f64), 0),
            Cell::text(format!("{:.0}%{gen}", self.window.own_share() * 100.0)),
        ]
    }

    fn clean(&self) -> bool {
        self.failed.is_empty()
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.failed.is_empty() {
            notes.push(format!("failures: {}", summary(&self.failed)));
        }
        if self.listen_drops.is_some_and(|d| d > 0) {
            notes.push(format!(
                "the kernel dropped {} connection attempt(s) from a full listen queue (each waits a SYN \
                 retransmit, 1 s): the server's listen backlog is shorter than the storm",
                self.listen_drops.unwrap_or(0)
            ));
        }
        if self.window.generator_saturated() {
            notes.push("the load generator was near a whole core: it may be the bottleneck".into());
        }
        notes
    }
}

pub(crate) fn run(a: &StormArgs) -> Report {
    a.target.check();
    let prefix = name_prefix('s');
    let rooms = Rooms::new(a.room_size, format!("{prefix}r"), a.sessions);
    let plan = Plan {
        http: a.target.http,
        hello: Hello::Guest(&prefix),
        rooms: Some(&rooms),
        count: a.sessions,
        sources: sources_for(a.sessions, a.open.sources),
        local: None,
        second: None,
        in_flight: a.open.in_flight,
        session_timeout: Duration::from_secs_f64(a.session_timeout),
    };
    let drops = proc::listen_drops();
    let before = Usage::now(a.target.pid);
    let (fleet, opened) = Fleet::open(&plan);
    let window = before.until(&Usage::now(a.target.pid));
    let listen_drops = drops.zip(proc::listen_drops()).map(|(a, b)| b.saturating_sub(a));
    let rss_kib = a.target.pid.and_then(|p| proc::rss_kib(p).0);
    drop(fleet);
    Report {
        ready: opened.ready,
        failed: opened.failed,
        elapsed_s: opened.elapsed.as_secs_f64(),
        latency: opened.latency,
        window,
        rss_kib,
        listen_drops,
    }
}
