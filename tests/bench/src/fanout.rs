//! The fan-out: guests in rooms, a few senders per room at a fixed rate, a
//! warm-up, a measured window and a drain. [`Load`] is one such phase over
//! clients that are already in their rooms, so that the ramp runs its steps
//! on the same connections; the step number travels in each text, so a
//! message that arrives after its step's drain is counted late, never as a
//! delivery of the next step.

use std::io::Write as _;
use std::time::{Duration, Instant};

use crate::fleet::{on_second, summary, Event, Fleet, Hello, Plan, Rooms};
use crate::phase::{Schedule, Stage, Timeline};
use crate::proc::Window;
use crate::report::{col, mib, ratio, text, Cell, Col, Row};
use crate::scan::{numbers, scan};
use crate::stats::{Histogram, Integrity, Order, SeqCheck};
use crate::{name_prefix, sources_for, Target, Titled};

#[derive(clap::Args, Clone, Debug)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    #[arg(long, default_value_t = 1000)]
    pub(crate) clients: usize,
    #[arg(long, default_value_t = 100)]
    pub(crate) room_size: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 1)]
    pub(crate) senders: usize,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) rate: f64,
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    pub(crate) measure: f64,
    /// Longest wait after the window for what is still on its way (it ends
    /// sooner once everything arrived).
    #[arg(long, default_value_t = 3.0)]
    pub(crate) drain: f64,
    #[command(flatten)]
    pub(crate) open: OpenArgs,
}

/// How sessions are opened, for the scenarios that open many.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct OpenArgs {
    /// Sessions being set up at once.
    #[arg(long, default_value_t = 500)]
    pub(crate) in_flight: usize,
    /// Loopback source addresses (127.0.0.2, ...); 0: one per 20,000 clients.
    #[arg(long, default_value_t = 0)]
    pub(crate) sources: usize,
}

impl Titled for FanoutArgs {
    fn title(&self) -> String {
        format!(
            "fan-out: {} clients, rooms of {}, {} sender(s) per room at {}/s, {} s measured",
            self.clients, self.room_size, self.senders, self.rate, self.measure
        )
    }
}

/// Guests in their rooms, ready for [`Load`] phases.
pub(crate) struct Rig {
    pub(crate) fleet: Fleet,
    pub(crate) rooms: Rooms,
    /// Per client, the room seq it has seen last.
    members: Vec<SeqCheck>,
    senders: Vec<usize>,
    pid: Option<u32>,
    /// The second node of a cluster, if the rooms are split over two.
    second: Option<Node>,
    step: u64,
}

/// A second node of the same cluster, for [`Rig::open_split`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Node {
    pub(crate) http: std::net::SocketAddr,
    pub(crate) pid: Option<u32>,
}

impl Rig {
    /// Opens `clients` guests in rooms of `room_size`, the first `senders`
    /// of each room sending; panics unless every session opened.
    pub(crate) fn open(target: &Target, clients: usize, room_size: usize, senders: usize, o: &OpenArgs) -> Rig {
        Rig::open_split(target, None, clients, room_size, senders, o)
    }

    /// As [`Rig::open`], with the second half of each room's members on
    /// `second`, another node of the same cluster (the senders, first in
    /// their rooms, stay on the target): half of every message's
    /// deliveries cross from one node to the other.
    pub(crate) fn open_split(
        target: &Target,
        second: Option<Node>,
        clients: usize,
        room_size: usize,
        senders: usize,
        o: &OpenArgs,
    ) -> Rig {
        target.check();
        if let Some(node) = &second {
            assert!(node.http.ip().is_loopback(), "{}: load goes to loopback addresses only", node.http);
        }
        let prefix = name_prefix('g');
        let rooms = Rooms::new(room_size, format!("{prefix}r"), clients);
        let plan = Plan {
            http: target.http,
            hello: Hello::Guest(&prefix),
            rooms: Some(&rooms),
            count: clients,
            sources: sources_for(clients, o.sources),
            local: None,
            second: second.map(|n| n.http),
            in_flight: o.in_flight,
            session_timeout: Duration::from_secs(30),
        };
        let (fleet, opened) = Fleet::open(&plan);
        opened.require_all("fan-out set-up");
        eprintln!("set-up of {clients} clients took {:.1} s", opened.elapsed.as_secs_f64());
        let members = opened.join_seq.iter().map(|&s| SeqCheck::from(s)).collect();
        let senders =
            (0..rooms.count()).flat_map(|r| rooms.members(r).take(senders.min(room_size))).collect::<Vec<_>>();
        Rig { fleet, rooms, members, senders, pid: target.pid, second, step: 0 }
    }

    /// Deliveries a second offered at `rate` per sender.
    pub(crate) fn offered(&self, rate: f64) -> f64 {
        self.senders.iter().map(|&i| self.rooms.members(self.rooms.of(i)).len() as f64).sum::<f64>() * rate
    }

    /// One phase: sends at `rate` per sender through warm-up and window,
    /// then waits up to `drain` for the rest.
    pub(crate) fn run(&mut self, rate: f64, warmup: f64, measure: f64, drain: f64) -> PhaseReport {
        self.step += 1;
        let step = self.step;
        let gone_before = self.fleet.gone_count();
        let start = Instant::now();
        let t0 = self.fleet.t0;
        let others: Vec<u32> = self.second.and_then(|n| n.pid).into_iter().collect();
        let mut timeline = Timeline::new(start, warmup, measure, drain, self.pid).with_others(&others);
        let split = self.second.is_some();
        let window = timeline.window_us(t0);
        let mut schedule = Schedule::new(start, self.senders.len(), rate);
        let room_names: Vec<String> = self.senders.iter().map(|&i| self.rooms.name(self.rooms.of(i))).collect();
        let room_sizes: Vec<u64> =
            self.senders.iter().map(|&i| self.rooms.members(self.rooms.of(i)).len() as u64).collect();
        let mut sent_count = vec![0u64; self.senders.len()];
        let mut r = PhaseReport { rate, measure_s: measure, offered: self.offered(rate), ..PhaseReport::default() };
        let mut in_window = 0u64;
        let mut msg: Vec<u8> = Vec::with_capacity(256);
        loop {
            let now = Instant::now();
            match timeline.turn(now, r.integrity.delivered >= r.integrity.expected) {
                Stage::Done => break,
                Stage::Drain => {}
                Stage::Send => {
                    for (k, &sender) in self.senders.iter().enumerate() {
                        while let Some(due) = schedule.due(k, now) {
                            let due_us = due.duration_since(t0).as_micros() as u64;
                            msg.clear();
                            let _ = write!(
                                msg,
                                r#"{{"type":"send","room":"{}","text":"{step} {k} {} {due_us}"}}"#,
                                room_names[k], sent_count[k]
                            );
                            if self.fleet.send(sender, &msg) {
                                sent_count[k] += 1;
                                r.sent += 1;
                                r.integrity.expected += room_sizes[k];
                            }
                        }
                    }
                }
            }
            let wait = timeline.wait(now, schedule.next());
            let (members, latency, cross, integrity, late) =
                (&mut self.members, &mut r.latency, &mut r.cross_latency, &mut r.integrity, &mut r.late);
            let rooms = &self.rooms;
            self.fleet.pump(wait, |i, ev, now_us| {
                let Event::Text(t) = ev else { return };
                let f = scan(t);
                if f.kind != b"message" {
                    return;
                }
                let (Some(seq), Some([s, _k, _n, sent_us])) = (f.seq, f.text.and_then(numbers::<4>)) else { return };
                let order = members[i].observe(seq);
                if s != step {
                    // From an earlier step, past its drain: not this step's delivery.
                    *late += 1;
                    match order {
                        Order::Duplicate => integrity.duplicated += 1,
                        Order::Gap => integrity.reordered += 1,
                        Order::Next => {}
                    }
                    return;
                }
                if integrity.count(order) && window.contains(&sent_us) {
                    in_window += 1;
                    latency.record(now_us.saturating_sub(sent_us));
                    if split && on_second(Some(rooms), i) {
                        cross.record(now_us.saturating_sub(sent_us));
                    }
                }
            });
        }
        (r.window, _) = timeline.window();
        (r.rss_kib, r.peak_rss_kib) = timeline.rss_kib;
        r.deliveries_per_s = in_window as f64 / measure;
        r.gone = self.fleet.gone_count() - gone_before;
        r.gone_reasons = summary(&self.fleet.gone);
        r
    }
}

/// What one phase measured.
#[derive(Debug, Default, Clone)]
pub(crate) struct PhaseReport {
    /// Messages per second per sender.
    pub(crate) rate: f64,
    /// Deliveries per second asked for.
    pub(crate) offered: f64,
    pub(crate) sent: u64,
    pub(crate) integrity: Integrity,
    /// Arrivals from an earlier phase.
    pub(crate) late: u64,
    /// Deliveries of messages sent in the window, per second of it.
    pub(crate) deliveries_per_s: f64,
    pub(crate) latency: Histogram,
    /// Of those, the deliveries to the second node of a split rig: each
    /// went through the bus.
    pub(crate) cross_latency: Histogram,
    pub(crate) window: Window,
    pub(crate) measure_s: f64,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) peak_rss_kib: Option<u64>,
    /// Clients lost during the phase.
    pub(crate) gone: usize,
    pub(crate) gone_reasons: String,
}

impl PhaseReport {
    pub(crate) fn cpu_per_million(&self) -> Option<f64> {
        self.window.server_per_million(self.deliveries_per_s * self.measure_s)
    }

    /// The generator's share of a core, in percent, flagged with `!` when
    /// it may have been the bottleneck.
    pub(crate) fn generator_cell(&self) -> Cell {
        let mark = if self.window.generator_saturated() { " !" } else { "" };
        Cell::text(format!("{:.0}%{mark}", self.window.own_share() * 100.0))
    }

    pub(crate) fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.window.generator_saturated() {
            notes.push(format!(
                "the load generator used {:.0}% of a core: it, not the server, may be the bottleneck",
                self.window.own_share() * 100.0
            ));
        }
        if self.gone > 0 {
            notes.push(format!("{} client(s) lost their connection: {}", self.gone, self.gone_reasons));
        }
        notes
    }
}

/// The fan-out scenario's report: one phase on freshly opened clients.
pub(crate) struct Report {
    pub(crate) phase: PhaseReport,
}

impl Row for Report {
    fn columns() -> Vec<Col> {
        vec![
            ratio("deliveries/s"),
            col("p50 ms"),
            col("p99 ms"),
            col("p99.9 ms"),
            col("max ms"),
            ratio("CPU s/M deliveries"),
            col("RSS MiB"),
            text("lost/dup/order"),
            text("load gen CPU"),
        ]
    }

    fn cells(&self) -> Vec<Cell> {
        let p = &self.phase;
        let l = p.latency.ms();
        vec![
            Cell::num(p.deliveries_per_s, 0),
            Cell::num(l.p50, 2),
            Cell::num(l.p99, 2),
            Cell::num(l.p999, 2),
            Cell::num(l.max, 2),
            Cell::opt(p.cpu_per_million(), 2),
            mib(p.rss_kib),
            Cell::text(p.integrity.summary()),
            p.generator_cell(),
        ]
    }

    fn clean(&self) -> bool {
        self.phase.integrity.clean()
    }

    fn notes(&self) -> Vec<String> {
        self.phase.notes()
    }
}

pub(crate) fn run(a: &FanoutArgs) -> Report {
    let mut rig = Rig::open(&a.target, a.clients, a.room_size, a.senders, &a.open);
    Report { phase: rig.run(a.rate, a.warmup, a.measure, a.drain) }
}
