//! The normal user an attack must not hurt: a registered user in a room
//! with a second member (also registered, online, receiving), sending one
//! room message every 50 ms on its own thread and timing each `ok` from
//! when the message was due. Its figures are kept per phase (the baseline,
//! then each phase of the attack) by the phase current when a message was
//! due.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fleet::{Event, Fleet, Hello, Plan, Rooms};
use crate::scan::{number, scan};
use crate::stats::{BitSet, Histogram};
use crate::{http, name_prefix};

use super::PASSWORD;

/// One message every this long.
const INTERVAL: Duration = Duration::from_millis(50);
/// An `ok` later than this counts as none.
const DEADLINE: Duration = Duration::from_secs(5);

/// The bystander's figures over one phase.
#[derive(Debug, Default)]
pub(crate) struct Figures {
    pub(crate) phase: String,
    pub(crate) sent: u64,
    /// Due to `ok`, every `ok` (late ones included).
    pub(crate) latency: Histogram,
    /// Sends with no answer within [`DEADLINE`] of being due: an `ok` that
    /// came later (its latency is in the histogram too), or none at all.
    pub(crate) timeouts: u64,
    /// `error` answers by code, and lost connections.
    pub(crate) errors: BTreeMap<String, usize>,
}

/// The running bystander.
pub(crate) struct Bystander {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    phases: usize,
    thread: JoinHandle<Vec<Figures>>,
}

impl Bystander {
    /// Registers the two users, opens their sessions in a room and starts
    /// sending in phase 0, "baseline"; `attack_phases` name the later ones.
    pub(crate) fn start(http: SocketAddr, attack_phases: &[&str]) -> Bystander {
        let prefix = name_prefix('b');
        let names = [format!("{prefix}a"), format!("{prefix}b")];
        let tokens = http::accounts(http, &names, PASSWORD, 2);
        let rooms = Rooms::new(2, format!("{prefix}r"), 2);
        let plan = Plan {
            http,
            hello: Hello::Token(&tokens),
            rooms: Some(&rooms),
            count: 2,
            sources: 1,
            local: None,
            second: None,
            in_flight: 2,
            session_timeout: Duration::from_secs(10),
        };
        let (fleet, opened) = Fleet::open(&plan);
        opened.require_all("the bystander's set-up");
        let mut names = vec!["baseline".to_string()];
        names.extend(attack_phases.iter().map(|p| p.to_string()));
        let phases = names.len();
        let (phase, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s, room) = (phase.clone(), stop.clone(), rooms.name(0));
        let thread = std::thread::Builder::new()
            .name("bystander".into())
            .spawn(move || Sender::new(fleet, room, names).run(&p, &s))
            .expect("cannot start the bystander's thread");
        Bystander { phase, stop, phases, thread }
    }

    /// Moves to the next phase: messages due from now on count there.
    pub(crate) fn next_phase(&self) {
        let now = self.phase.load(Ordering::Relaxed);
        assert!(now + 1 < self.phases, "the bystander has no phase after {now}");
        self.phase.store(now + 1, Ordering::Relaxed);
    }

    /// Stops sending, waits up to [`DEADLINE`] for the last `ok`s; the
    /// figures of every phase.
    pub(crate) fn finish(self) -> Vec<Figures> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the bystander's thread panicked")
    }
}

/// The bystander thread's state.
struct Sender {
    fleet: Fleet,
    room: String,
    figures: Vec<Figures>,
    /// Per message: when it was due (µs since the fleet's `t0`) and its phase.
    due: Vec<(u64, usize)>,
    answered: BitSet,
    /// Messages answered, by `ok` or `error`.
    settled: u64,
}

impl Sender {
    fn new(fleet: Fleet, room: String, phases: Vec<String>) -> Sender {
        let figures = phases.into_iter().map(|phase| Figures { phase, ..Figures::default() }).collect();
        Sender { fleet, room, figures, due: Vec::new(), answered: BitSet::default(), settled: 0 }
    }

    fn run(mut self, phase: &AtomicUsize, stop: &AtomicBool) -> Vec<Figures> {
        let t0 = self.fleet.t0;
        let mut next = Instant::now();
        let mut stopped_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
                stopped_at = Some(now);
            }
            match stopped_at {
                Some(at) if self.settled == self.due.len() as u64 || now >= at + DEADLINE => break,
                Some(_) => {}
                None => {
                    // Every message due by now goes, late ones with their due time.
                    while next <= now {
                        self.send(next.duration_since(t0).as_micros() as u64, phase.load(Ordering::Relaxed));
                        next += INTERVAL;
                    }
                }
            }
            let wait = next.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), INTERVAL);
            self.pump(wait);
        }
        self.count_timeouts();
        self.figures
    }

    fn send(&mut self, due_us: u64, phase: usize) {
        let k = self.due.len();
        let msg = format!(r#"{{"type":"send","room":"{}","text":"bystander {k}","ref":"{k}"}}"#, self.room);
        if self.fleet.send(0, msg.as_bytes()) {
            self.due.push((due_us, phase));
            self.figures[phase].sent += 1;
        } else {
            *self.figures[phase].errors.entry("connection lost".into()).or_default() += 1;
        }
    }

    fn pump(&mut self, wait: Duration) {
        let Sender { fleet, figures, due, answered, settled, .. } = self;
        fleet.pump(wait, |i, ev, now_us| {
            let f = match ev {
                Event::Text(t) if i == 0 => scan(t),
                Event::Text(_) => return,
                Event::Gone(reason) => {
                    let last = figures.len() - 1;
                    *figures[last].errors.entry(format!("client {i}: {reason}")).or_default() += 1;
                    return;
                }
            };
            let Some(k) = f.reference.and_then(number) else { return };
            let Some(&(due_us, phase)) = due.get(k as usize) else { return };
            if !answered.insert(k) {
                return;
            }
            *settled += 1;
            match f.kind {
                b"ok" => {
                    let latency = now_us.saturating_sub(due_us);
                    figures[phase].latency.record(latency);
                    figures[phase].timeouts += u64::from(latency > DEADLINE.as_micros() as u64);
                }
                _ => {
                    let code = String::from_utf8_lossy(f.code.unwrap_or(f.kind)).into_owned();
                    *figures[phase].errors.entry(code).or_default() += 1;
                }
            }
        });
    }

    /// Adds the messages never answered to those whose `ok` came late.
    fn count_timeouts(&mut self) {
        for (k, &(_, phase)) in self.due.iter().enumerate() {
            if !self.answered.contains(k as u64) {
                self.figures[phase].timeouts += 1;
            }
        }
    }
}
