//! Private messages between pairs of registered users. Unlike a room
//! message, each one is stored before its `ok` (the store, not the fan-out,
//! sets the pace), and has one recipient: the figures are messages a
//! second and two latencies, send→`ok` (stored) and send→`private` at the
//! partner.
//!
//! Both directions of a conversation share its seq, so a receiver's seqs
//! only have to increase; completeness is checked on the sender's own
//! counter, carried in the text and the ref: at the end, the set of
//! counters each user received must equal the set its partner sent, less
//! those the server refused (`error`, e.g. `unavailable` when its store is
//! far behind: the protocol says nothing was done, so they must not arrive).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::fanout::OpenArgs;
use crate::fleet::{summary, Event, Fleet, Hello, Plan};
use crate::phase::{Schedule, Stage, Timeline};
use crate::proc::{self, Window};
use crate::report::{col, mib, ratio, text, Cell, Col, Row};
use crate::scan::{numbers, scan};
use crate::stats::{BitSet, Histogram, Integrity, SeqCheck};
use crate::{http, name_prefix, sources_for, Target, Titled};

/// Any password within the 8..=1024 rule.
const PASSWORD: &str = "bench-password-7";

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct PrivateArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Pairs of users; each user writes to its partner.
    #[arg(long, default_value_t = 100)]
    pub(crate) pairs: usize,
    /// Messages per second per user.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    pub(crate) measure: f64,
    /// Longest wait after the window for outstanding `ok`s and deliveries.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) drain: f64,
    /// HTTP connections registering and logging in users at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) register_parallel: usize,
    #[command(flatten)]
    pub(crate) open: OpenArgs,
}

impl Titled for PrivateArgs {
    fn title(&self) -> String {
        format!(
            "private: {} pairs of registered users, each sending {}/s to its partner ({:.0} msgs/s offered), {} s measured",
            self.pairs,
            self.rate,
            self.rate * 2.0 * self.pairs as f64,
            self.measure
        )
    }
}

/// One user's sending and receiving state; messages are known by the
/// sender's counter.
#[derive(Default)]
struct User {
    sent: u64,
    /// Sent messages answered `ok`, and answered `error`.
    acked: BitSet,
    refused: BitSet,
    /// The partner's messages received.
    received: BitSet,
    /// The highest partner counter received: they must come in order.
    last_received: Option<u64>,
    /// The conversation seq of what was received: increasing.
    conv: SeqCheck,
}

/// Checks what each user received against what its partner sent and had
/// accepted; returns the expected and delivered counts and the refused
/// messages that were delivered anyway.
fn reconcile(users: &[User]) -> (u64, u64, u64) {
    let (mut expected, mut delivered, mut refused_delivered) = (0, 0, 0);
    for (i, u) in users.iter().enumerate() {
        let partner = &users[i ^ 1];
        for k in 0..partner.sent {
            let got = u.received.contains(k);
            if partner.refused.contains(k) {
                refused_delivered += u64::from(got);
            } else {
                expected += 1;
                delivered += u64::from(got);
            }
        }
    }
    (expected, delivered, refused_delivered)
}

pub(crate) struct Report {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Sends answered with an `error`.
    pub(crate) refused: u64,
    /// Refused sends that were delivered all the same.
    pub(crate) refused_delivered: u64,
    /// Server RSS before the users registered, and after.
    pub(crate) rss_before_register_kib: Option<u64>,
    pub(crate) rss_after_register_kib: Option<u64>,
    /// `ok`s for messages sent in the window, per second of it.
    pub(crate) acked_per_s: f64,
    pub(crate) ack_latency: Histogram,
    pub(crate) delivery_latency: Histogram,
    pub(crate) integrity: Integrity,
    /// Received from someone other than the partner.
    pub(crate) misrouted: u64,
    pub(crate) errors: BTreeMap<String, usize>,
    pub(crate) window: Window,
    pub(crate) measure_s: f64,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) register_s: f64,
    pub(crate) gone: usize,
    pub(crate) gone_reasons: String,
    /// The server's threads' CPU in the window: what limits the rate.
    pub(crate) threads: String,
}

impl Report {
    /// Sends that got neither `ok` nor `error`.
    fn unanswered(&self) -> u64 {
        self.sent.saturating_sub(self.acked + self.refused)
    }
}

impl Row for Report {
    fn columns() -> Vec<Col> {
        vec![
            ratio("msgs/s acked"),
            col("ok p50 ms"),
            col("ok p99 ms"),
            col("ok max ms"),
            col("delivery p50 ms"),
            col("delivery p99 ms"),
            col("delivery max ms"),
            ratio("CPU s/M msgs"),
            col("RSS MiB"),
            text("lost/dup/order"),
            text("unanswered/refused"),
            text("load gen CPU"),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        let (ok, d) = (self.ack_latency.ms(), self.delivery_latency.ms());
        let gen = if self.window.generator_saturated() { " !" } else { "" };
        vec![
            Cell::num(self.acked_per_s, 0),
            Cell::num(ok.p50, 2),
            Cell::num(ok.p99, 2),
            Cell::num(ok.max, 2),
            Cell::num(d.p50, 2),
            Cell::num(d.p99, 2),
            Cell::num(d.max, 2),
            Cell::opt(self.window.server_per_million(self.acked_per_s * self.measure_s), 2),
            mib(self.rss_kib),
            Cell::text(self.integrity.summary()),
            Cell::text(format!("{}/{}", self.unanswered(), self.refused)),
            Cell::text(format!("{:.0}%{gen}", self.window.own_share() * 100.0)),
        ]
    }

    /// Refusals are the server's answer to overload, not a fault; losing an
    /// accepted message, delivering a refused one or not answering is.
    fn clean(&self) -> bool {
        self.integrity.clean() && self.misrouted == 0 && self.refused_delivered == 0 && self.unanswered() == 0
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!("registering and logging in the users took {:.1} s", self.register_s)];
        if let (Some(b), Some(a)) = (self.rss_before_register_kib, self.rss_after_register_kib) {
            notes.push(format!(
                "server RSS {:.1} MiB before registering, {:.1} MiB after",
                b as f64 / 1024.0,
                a as f64 / 1024.0
            ));
        }
        if !self.threads.is_empty() {
            notes.push(format!("server threads' CPU in the window: {}", self.threads));
        }
        if !self.errors.is_empty() {
            notes.push(format!("error replies: {}", summary(&self.errors)));
        }
        if self.refused_delivered > 0 {
            notes.push(format!("{} refused message(s) were delivered all the same", self.refused_delivered));
        }
        if self.misrouted > 0 {
            notes.push(format!("{} message(s) came from someone other than the partner", self.misrouted));
        }
        if self.gone > 0 {
            notes.push(format!("{} client(s) lost their connection: {}", self.gone, self.gone_reasons));
        }
        if self.window.generator_saturated() {
            notes.push("the load generator was near a whole core: it may be the bottleneck".into());
        }
        notes
    }
}

pub(crate) fn run(a: &PrivateArgs) -> Report {
    a.target.check();
    let n = a.pairs * 2;
    let prefix = name_prefix('p');
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let rss_before_register_kib = a.target.pid.and_then(proc::settled_rss_kib);
    let began = Instant::now();
    let tokens = http::accounts(a.target.http, &names, PASSWORD, a.register_parallel);
    let register_s = began.elapsed().as_secs_f64();
    let rss_after_register_kib = a.target.pid.and_then(|p| proc::rss_kib(p).0);
    eprintln!("registered and logged in {n} users in {register_s:.1} s");
    let plan = Plan {
        http: a.target.http,
        hello: Hello::Token(&tokens),
        rooms: None,
        count: n,
        sources: sources_for(n, a.open.sources),
        local: None,
        second: None,
        in_flight: a.open.in_flight,
        session_timeout: Duration::from_secs(30),
    };
    let (mut fleet, opened) = Fleet::open(&plan);
    opened.require_all("private set-up");

    let start = Instant::now();
    let t0 = fleet.t0;
    let mut timeline = Timeline::new(start, a.warmup, a.measure, a.drain, a.target.pid);
    let window = timeline.window_us(t0);
    let mut schedule = Schedule::new(start, n, a.rate);
    let mut users: Vec<User> = (0..n).map(|_| User::default()).collect();
    let mut received = 0u64;
    let mut r = Report {
        sent: 0,
        acked: 0,
        refused: 0,
        refused_delivered: 0,
        rss_before_register_kib,
        rss_after_register_kib,
        acked_per_s: 0.0,
        ack_latency: Histogram::default(),
        delivery_latency: Histogram::default(),
        integrity: Integrity::default(),
        misrouted: 0,
        errors: BTreeMap::new(),
        window: Window::default(),
        measure_s: a.measure,
        rss_kib: None,
        register_s,
        gone: 0,
        gone_reasons: String::new(),
        threads: String::new(),
    };
    let mut acked_in_window = 0u64;
    let mut msg: Vec<u8> = Vec::with_capacity(256);
    loop {
        let now = Instant::now();
        let settled = r.acked + r.refused >= r.sent && received + r.refused >= r.sent;
        match timeline.turn(now, settled) {
            Stage::Done => break,
            Stage::Drain => {}
            Stage::Send => {
                for (i, u) in users.iter_mut().enumerate() {
                    while let Some(due) = schedule.due(i, now) {
                        let (due, k) = (due.duration_since(t0).as_micros() as u64, u.sent);
                        msg.clear();
                        let _ = write!(
                            msg,
                            r#"{{"type":"send","to":"{}","text":"{i} {k} {due}","id":"{k}","ref":"{k} {due}"}}"#,
                            names[i ^ 1],
                        );
                        if fleet.send(i, &msg) {
                            u.sent += 1;
                            r.sent += 1;
                        }
                    }
                }
            }
        }
        fleet.pump(timeline.wait(now, schedule.next()), |i, ev, now_us| {
            let Event::Text(t) = ev else { return };
            let f = scan(t);
            match f.kind {
                b"ok" => {
                    let Some([k, due]) = f.reference.and_then(numbers::<2>) else { return };
                    if !users[i].acked.insert(k) {
                        return;
                    }
                    r.acked += 1;
                    if window.contains(&due) {
                        acked_in_window += 1;
                        r.ack_latency.record(now_us.saturating_sub(due));
                    }
                }
                b"private" => {
                    let (Some(seq), Some([from, count, due])) = (f.seq, f.text.and_then(numbers::<3>)) else {
                        return;
                    };
                    if from as usize != i ^ 1 {
                        r.misrouted += 1;
                        return;
                    }
                    let u = &mut users[i];
                    if !u.received.insert(count) {
                        r.integrity.duplicated += 1;
                        return;
                    }
                    received += 1;
                    let in_order = u.last_received.is_none_or(|l| count > l) && u.conv.observe_increasing(seq);
                    r.integrity.reordered += u64::from(!in_order);
                    u.last_received = u.last_received.max(Some(count));
                    if window.contains(&due) {
                        r.delivery_latency.record(now_us.saturating_sub(due));
                    }
                }
                b"error" => {
                    let code = String::from_utf8_lossy(f.code.unwrap_or(b"?")).into_owned();
                    *r.errors.entry(code).or_default() += 1;
                    if let Some([k, _]) = f.reference.and_then(numbers::<2>) {
                        if users[i].refused.insert(k) {
                            r.refused += 1;
                        }
                    }
                }
                _ => {}
            }
        });
    }
    (r.window, r.threads) = timeline.window();
    r.rss_kib = timeline.rss_kib.0;
    r.acked_per_s = acked_in_window as f64 / a.measure;
    (r.integrity.expected, r.integrity.delivered, r.refused_delivered) = reconcile(&users);
    r.gone = fleet.gone_count();
    r.gone_reasons = summary(&fleet.gone);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_must_equal_sent_less_refused() {
        let mut users: Vec<User> = (0..2).map(|_| User::default()).collect();
        // User 0 sent 4, the server refused #2, user 1 got #0, #1 and #3;
        // user 1 sent 2 and user 0 got only #1.
        users[0].sent = 4;
        users[0].refused.insert(2);
        for k in [0, 1, 3] {
            users[1].received.insert(k);
        }
        users[1].sent = 2;
        users[0].received.insert(1);
        assert_eq!(reconcile(&users), (5, 4, 0));
        // The refused #2 arriving is a fault of its own.
        users[1].received.insert(2);
        assert_eq!(reconcile(&users), (5, 4, 1));
    }
}
