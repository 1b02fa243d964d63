//! Many client connections on one poll: opening them (connect, upgrade,
//! `hello`, `join`) and driving them afterwards. Every scenario opens its
//! sessions here and then runs its own phase on the same connections, so
//! that the ramp can reuse one set of clients for all its steps and the
//! storm measures exactly the set-up the other scenarios go through.
//!
//! Opening is bounded by `in_flight` sessions that have not finished their
//! set-up: thousands of simultaneous SYNs overflow the listen backlog and
//! turn into one-second SYN retransmits, which would measure the kernel's
//! back-off rather than the server.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::scan::scan;
use crate::stats::Histogram;
use crate::wsclient::{local_addr_for, Client, Frame, ReadError};

/// What the fleet reports about one client.
#[derive(Debug)]
pub enum Event<'a> {
    Text(&'a [u8]),
    /// The connection is gone, for this reason; the client is dropped.
    Gone(&'a str),
}

/// How clients are grouped into rooms: client `i` is in room `i / size`.
#[derive(Debug, Clone)]
pub struct Rooms {
    pub size: usize,
    pub prefix: String,
    /// Clients in all.
    pub clients: usize,
}

impl Rooms {
    pub fn new(size: usize, prefix: String, clients: usize) -> Rooms {
        assert!(size > 0, "rooms need at least one member");
        Rooms { size, prefix, clients }
    }

    pub fn count(&self) -> usize {
        self.clients.div_ceil(self.size)
    }

    pub fn of(&self, client: usize) -> usize {
        client / self.size
    }

    pub fn name(&self, room: usize) -> String {
        format!("{}{room}", self.prefix)
    }

    pub fn members(&self, room: usize) -> Range<usize> {
        room * self.size..self.clients.min((room + 1) * self.size)
    }
}

/// How each session says hello.
pub enum Hello<'a> {
    /// A guest named `prefix` + index, by a `hello` frame after the upgrade.
    Guest(&'a str),
    /// A registered user per client, by `GET /ws?token=`: `welcome` comes at once.
    Token(&'a [String]),
}

/// What to open.
pub struct Plan<'a> {
    pub http: SocketAddr,
    pub hello: Hello<'a>,
    /// Clients, and the room each joins; without rooms, `count` clients join none.
    pub rooms: Option<&'a Rooms>,
    pub count: usize,
    /// Loopback source addresses to spread over (1: the default address).
    pub sources: usize,
    /// Every client from this source address instead (`sources` is then unused).
    pub local: Option<IpAddr>,
    /// A second node of the same cluster: the second half of each room's
    /// members (every other client without rooms) connect there instead.
    pub second: Option<SocketAddr>,
    pub in_flight: usize,
    /// A session not through its set-up after this long has failed.
    pub session_timeout: Duration,
}

/// How the set-up went.
#[derive(Debug, Default)]
pub struct Opened {
    pub ready: usize,
    /// Failed sessions by reason.
    pub failed: BTreeMap<String, usize>,
    pub elapsed: Duration,
    /// From connect to the last answer (`welcome`, or the join's `ok`).
    pub latency: Histogram,
    /// Per client, the room's seq in the join `ok` (0 without a room).
    pub join_seq: Vec<u64>,
}

impl Opened {
    pub fn failures(&self) -> usize {
        self.failed.values().sum()
    }

    /// `reason xN, ...`, or "none".
    pub fn failure_summary(&self) -> String {
        summary(&self.failed)
    }

    /// For scenarios that need every session: panics with the reasons otherwise.
    pub fn require_all(&self, what: &str) {
        assert!(
            self.failed.is_empty(),
            "{what}: {} of {} sessions failed to open: {}",
            self.failures(),
            self.ready + self.failures(),
            self.failure_summary()
        );
    }
}

/// Whether client `i` is one [`Plan::second`] sends to the second node: the
/// second half of its room (so a room's first members, its senders, are on
/// the first node), or every other client without rooms.
pub fn on_second(rooms: Option<&Rooms>, i: usize) -> bool {
    match rooms {
        Some(r) => (i % r.size) * 2 >= r.size,
        None => i % 2 == 1,
    }
}

pub fn summary(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts.iter().map(|(r, n)| format!("{r} x{n}")).collect::<Vec<_>>().join(", ")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Welcome,
    Join,
    Ready,
    Failed,
}

/// Set-up bookkeeping of [`Fleet::open`].
struct Progress {
    stage: Vec<Stage>,
    started: Vec<Instant>,
    in_flight: usize,
    opened: Opened,
}

impl Progress {
    fn pending(&self, i: usize) -> bool {
        matches!(self.stage[i], Stage::Welcome | Stage::Join)
    }

    /// Marks session `i` finished, ready or failed (once).
    fn finish(&mut self, i: usize, outcome: Result<(), String>, now: Instant, fleet: &mut Fleet) {
        if !self.pending(i) {
            return;
        }
        self.in_flight -= 1;
        match outcome {
            Ok(()) => {
                self.stage[i] = Stage::Ready;
                self.opened.ready += 1;
                self.opened.latency.record(now.duration_since(self.started[i]).as_micros() as u64);
            }
            Err(reason) => {
                self.stage[i] = Stage::Failed;
                *self.opened.failed.entry(reason).or_default() += 1;
                fleet.drop_client(i);
            }
        }
    }
}

/// The clients and their poll.
pub struct Fleet {
    poll: Poll,
    events: Events,
    /// Index = token; `None` once a client failed or was never connected.
    clients: Vec<Option<Client>>,
    scratch: Vec<u8>,
    /// Connections lost since opening, by reason.
    pub gone: BTreeMap<String, usize>,
    /// The origin of the microsecond timestamps the scenarios put in texts.
    pub t0: Instant,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            poll: Poll::new().expect("cannot create a poll"),
            events: Events::with_capacity(4096),
            clients: Vec::new(),
            scratch: vec![0u8; 256 * 1024],
            gone: BTreeMap::new(),
            t0: Instant::now(),
        }
    }

    /// Opens `plan.count` sessions. Sessions that fail are counted in
    /// [`Opened::failed`] and dropped; the rest are ready.
    pub fn open(plan: &Plan<'_>) -> (Fleet, Opened) {
        let mut fleet = Fleet::new();
        let n = plan.count;
        let mut p = Progress {
            stage: Vec::with_capacity(n),
            started: Vec::with_capacity(n),
            in_flight: 0,
            opened: Opened { join_seq: vec![0; n], ..Opened::default() },
        };
        let mut pending: VecDeque<usize> = VecDeque::new();
        // What the callback saw, acted on after each pump.
        let mut welcomed: Vec<usize> = Vec::new();
        let mut joined: Vec<(usize, u64)> = Vec::new();
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut lost_ready: BTreeMap<String, usize> = BTreeMap::new();
        let begin = Instant::now();
        while fleet.clients.len() < n || p.in_flight > 0 {
            // Start sessions up to the bound.
            while p.in_flight < plan.in_flight && fleet.clients.len() < n {
                let i = fleet.clients.len();
                p.started.push(Instant::now());
                p.stage.push(Stage::Welcome);
                let node = match plan.second {
                    Some(second) if on_second(plan.rooms, i) => second,
                    _ => plan.http,
                };
                match Client::connect(node, plan.local.or_else(|| local_addr_for(i, plan.sources))) {
                    Ok(mut c) => {
                        fleet
                            .poll
                            .registry()
                            .register(&mut c.stream, Token(i), Interest::READABLE | Interest::WRITABLE)
                            .expect("cannot register a socket");
                        match plan.hello {
                            Hello::Guest(prefix) => {
                                c.queue_upgrade("/ws");
                                c.queue_text(format!(r#"{{"type":"hello","name":"{prefix}{i}"}}"#).as_bytes());
                            }
                            Hello::Token(tokens) => {
                                c.queue_upgrade(&format!("/ws?token={}", percent_encode(&tokens[i])))
                            }
                        }
                        fleet.clients.push(Some(c));
                        pending.push_back(i);
                        p.in_flight += 1;
                    }
                    Err(e) => {
                        fleet.clients.push(None);
                        p.stage[i] = Stage::Failed;
                        *p.opened.failed.entry(format!("connect: {e}")).or_default() += 1;
                    }
                }
            }
            let stage = &p.stage;
            fleet.pump(Duration::from_millis(20), |i, ev, _| match ev {
                Event::Text(t) if matches!(stage[i], Stage::Welcome | Stage::Join) => {
                    let f = scan(t);
                    match (stage[i], f.kind) {
                        (Stage::Welcome, b"welcome") => welcomed.push(i),
                        (Stage::Join, b"ok") => joined.push((i, f.seq.unwrap_or(0))),
                        (_, b"error") => {
                            failed.push((i, format!("error {}", String::from_utf8_lossy(f.code.unwrap_or(b"?")))))
                        }
                        _ => {}
                    }
                }
                Event::Gone(reason) if matches!(stage[i], Stage::Welcome | Stage::Join) => {
                    failed.push((i, reason.to_string()));
                }
                Event::Gone(reason) => *lost_ready.entry(reason.to_string()).or_default() += 1,
                _ => {}
            });
            let now = Instant::now();
            for i in welcomed.drain(..) {
                match plan.rooms {
                    Some(rooms) if p.stage[i] == Stage::Welcome => {
                        p.stage[i] = Stage::Join;
                        let msg = format!(r#"{{"type":"join","room":"{}","ref":"j"}}"#, rooms.name(rooms.of(i)));
                        if !fleet.send(i, msg.as_bytes()) {
                            p.finish(i, Err("write failed".into()), now, &mut fleet);
                        }
                    }
                    Some(_) => {}
                    None => p.finish(i, Ok(()), now, &mut fleet),
                }
            }
            for (i, seq) in joined.drain(..) {
                if p.stage[i] == Stage::Join {
                    p.opened.join_seq[i] = seq;
                    p.finish(i, Ok(()), now, &mut fleet);
                }
            }
            for (i, reason) in failed.drain(..) {
                p.finish(i, Err(reason), now, &mut fleet);
            }
            // Sessions start in order, so the oldest unfinished one is at the front.
            while let Some(&i) = pending.front() {
                if p.pending(i) {
                    if now.duration_since(p.started[i]) <= plan.session_timeout {
                        break;
                    }
                    p.finish(i, Err("timeout".into()), now, &mut fleet);
                }
                pending.pop_front();
            }
        }
        p.opened.elapsed = begin.elapsed();
        // Sessions that failed during set-up are in `opened.failed`; `gone`
        // keeps only the ready sessions lost since.
        fleet.gone = lost_ready;
        (fleet, p.opened)
    }

    /// Waits up to `timeout` for events and hands each client's frames and
    /// losses to `on`, with the time they were read (µs since [`Fleet::t0`]).
    /// Pings are answered inside.
    pub fn pump(&mut self, timeout: Duration, mut on: impl FnMut(usize, Event<'_>, u64)) {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            assert!(e.kind() == std::io::ErrorKind::Interrupted, "poll failed: {e}");
            return;
        }
        for ev in self.events.iter() {
            let i = ev.token().0;
            let Some(c) = self.clients.get_mut(i).and_then(Option::as_mut) else { continue };
            let hangup = ev.is_read_closed() || ev.is_error();
            let now_us = self.t0.elapsed().as_micros() as u64;
            let mut reason = None;
            if ev.is_writable() && c.wants_write() {
                if let Err(e) = c.flush() {
                    reason = Some(format!("write: {e}"));
                }
            }
            if reason.is_none() && (ev.is_readable() || hangup) {
                let mut close = None;
                let r = c.read(&mut self.scratch, hangup, |f| match f {
                    Frame::Text(t) => on(i, Event::Text(t), now_us),
                    Frame::Close(code) => close = Some(code),
                    Frame::Other => {}
                });
                reason = match (r, close) {
                    (Ok(()), _) => None,
                    (Err(_), Some(code)) => Some(format!("closed {code}")),
                    (Err(ReadError::Eof), None) => Some("closed without a close frame".into()),
                    (Err(e), None) => Some(e.to_string()),
                };
            }
            if let Some(reason) = reason {
                on(i, Event::Gone(&reason), now_us);
                *self.gone.entry(reason).or_default() += 1;
                if let Some(mut c) = self.clients[i].take() {
                    let _ = self.poll.registry().deregister(&mut c.stream);
                }
            }
        }
    }

    /// Pumps until `until`, handing frames to `on`.
    pub fn pump_until(&mut self, until: Instant, mut on: impl FnMut(usize, Event<'_>, u64)) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.pump(left.min(Duration::from_millis(100)), &mut on);
        }
    }

    /// Queues a text frame for client `i` and writes what it can; false if
    /// the client is gone or its connection failed.
    pub fn send(&mut self, i: usize, payload: &[u8]) -> bool {
        let Some(c) = self.clients.get_mut(i).and_then(Option::as_mut) else { return false };
        c.queue_text(payload);
        c.flush().is_ok()
    }

    pub fn is_open(&self, i: usize) -> bool {
        self.clients.get(i).and_then(Option::as_ref).is_some_and(|c| c.open)
    }

    pub fn open_count(&self) -> usize {
        self.clients.iter().flatten().filter(|c| c.open).count()
    }

    pub fn gone_count(&self) -> usize {
        self.gone.values().sum()
    }

    /// Pings answered so far, over all clients.
    pub fn pongs(&self) -> u64 {
        self.clients.iter().flatten().map(|c| c.pongs).sum()
    }

    fn drop_client(&mut self, i: usize) {
        if let Some(mut c) = self.clients[i].take() {
            c.give_up(self.poll.registry());
        }
    }

    /// Sends one message to each room from its first open member and waits
    /// until every open member has it: proof that the sessions still work.
    pub fn verify_rooms(&mut self, rooms: &Rooms, timeout: Duration) -> Verified {
        let mut got = vec![false; rooms.clients];
        let mut v = Verified::default();
        let tag = format!("verify {}", std::process::id());
        for r in 0..rooms.count() {
            let open: Vec<usize> = rooms.members(r).filter(|&i| self.is_open(i)).collect();
            let Some(&sender) = open.first() else { continue };
            let msg = format!(r#"{{"type":"send","room":"{}","text":"{tag} {r}"}}"#, rooms.name(r));
            if self.send(sender, msg.as_bytes()) {
                v.expected += open.len() as u64;
            }
        }
        let deadline = Instant::now() + timeout;
        while v.reached < v.expected && Instant::now() < deadline {
            self.pump(Duration::from_millis(50), |i, ev, _| {
                if let Event::Text(t) = ev {
                    let f = scan(t);
                    if f.kind == b"message" && f.text.is_some_and(|x| x.starts_with(tag.as_bytes())) {
                        if std::mem::replace(&mut got[i], true) {
                            v.duplicated += 1;
                        } else {
                            v.reached += 1;
                        }
                    }
                }
            });
        }
        v
    }
}

/// The outcome of [`Fleet::verify_rooms`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Verified {
    /// Open members when the messages were sent.
    pub expected: u64,
    pub reached: u64,
    pub duplicated: u64,
}

impl Verified {
    pub fn clean(&self) -> bool {
        self.reached == self.expected && self.duplicated == 0
    }

    pub fn summary(&self) -> String {
        format!("{}/{}", self.reached, self.expected)
    }
}

/// A query parameter's value, percent-encoded (tokens are opaque).
fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_percent_encoded() {
        assert_eq!(percent_encode("aZ9-_.~"), "aZ9-_.~");
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn room_layout() {
        let r = Rooms::new(100, "r".into(), 250);
        assert_eq!(r.count(), 3);
        assert_eq!(r.of(199), 1);
        assert_eq!(r.members(2), 200..250);
        assert_eq!(r.name(2), "r2");
    }

    #[test]
    fn a_split_puts_the_second_half_of_each_room_on_the_second_node() {
        let r = Rooms::new(4, "r".into(), 10);
        let second: Vec<usize> = (0..10).filter(|&i| on_second(Some(&r), i)).collect();
        assert_eq!(second, [2, 3, 6, 7], "a room's first members (its senders) stay on the first node");
        let one = Rooms::new(1, "r".into(), 3);
        assert!((0..3).all(|i| !on_second(Some(&one), i)), "a room of one is not split");
        assert!(!on_second(None, 0) && on_second(None, 1));
    }

    #[test]
    fn failure_summary() {
        let mut o = Opened::default();
        assert_eq!(o.failure_summary(), "none");
        o.failed.insert("timeout".into(), 2);
        o.failed.insert("error name_taken".into(), 1);
        assert_eq!(o.failures(), 3);
        assert_eq!(o.failure_summary(), "error name_taken x1, timeout x2");
    }
}
