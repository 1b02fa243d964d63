//! Property tests: random sequences of client actions, storage latency and
//! failures, partial writes and restarts against one shard with its hub,
//! then the invariants of PROTOCOL.md checked on what every client saw.
//!
//! Cases: 128 by default, `PROPTEST_CASES` to change. A failure prints the
//! operations (shrunk) and the seed; `NATTER_SIM_SEED` pins the seed.

use std::collections::HashMap;
use std::time::Duration;

use std::cell::RefCell;
use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestRunner};
use serde_json::{json, Value};

use natter_core::store::StoredMessage;
use natter_core::Config;
use natter_sim::{Client, Event, FakeStore, Sim, Topology, WriteMode};

/// The first three are registered; the others are guests.
const USERS: [&str; 5] = ["ann", "bob", "cyd", "gus", "gil"];
const REGISTERED: usize = 3;
const ROOMS: [&str; 3] = ["r0", "r1", "r2"];

fn password(user: &str) -> String {
    format!("{user}-password")
}

fn config() -> Config {
    Config { max_queue: 1536, max_text: 64, rate: 10, burst: 20, max_rooms: 2, ..Config::default() }
}

#[derive(Debug, Clone)]
enum Op {
    Connect {
        user: usize,
        line: bool,
    },
    Join {
        client: usize,
        room: usize,
        since: bool,
    },
    Leave {
        client: usize,
        room: usize,
    },
    Say {
        client: usize,
        room: usize,
        id: Option<u8>,
    },
    Tell {
        client: usize,
        to: usize,
        id: Option<u8>,
    },
    /// `n` sends at once, past the burst if `n` is large.
    Flood {
        client: usize,
        n: usize,
    },
    Ack {
        client: usize,
        with: usize,
    },
    Disconnect {
        client: usize,
    },
    /// Hang up, come back, wait for `welcome`, and rejoin every room with
    /// `since` the last `seq` seen.
    Reconnect {
        client: usize,
    },
    Advance {
        ms: u64,
    },
    Idle,
    Latency {
        ms: u64,
        jitter: u64,
    },
    FailNext {
        n: u32,
    },
    FailAppends(bool),
    Write {
        client: usize,
        mode: u8,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..8usize;
    prop_oneof![
        12 => (0..USERS.len(), prop::bool::weighted(0.3)).prop_map(|(user, line)| Op::Connect { user, line }),
        20 => (c.clone(), 0..ROOMS.len(), prop::bool::weighted(0.3)).prop_map(|(client, room, since)| Op::Join { client, room, since }),
        5 => (c.clone(), 0..ROOMS.len()).prop_map(|(client, room)| Op::Leave { client, room }),
        40 => (c.clone(), 0..ROOMS.len(), prop::option::weighted(0.4, 0..4u8)).prop_map(|(client, room, id)| Op::Say { client, room, id }),
        12 => (c.clone(), 0..USERS.len(), prop::option::weighted(0.4, 0..4u8)).prop_map(|(client, to, id)| Op::Tell { client, to, id }),
        3 => (c.clone(), 1..30usize).prop_map(|(client, n)| Op::Flood { client, n }),
        5 => (c.clone(), 0..REGISTERED).prop_map(|(client, with)| Op::Ack { client, with }),
        4 => c.clone().prop_map(|client| Op::Disconnect { client }),
        8 => c.clone().prop_map(|client| Op::Reconnect { client }),
        10 => prop_oneof![4 => 0..50u64, 4 => 0..3_000u64, 1 => 50_000..70_000u64].prop_map(|ms| Op::Advance { ms }),
        10 => Just(Op::Idle),
        5 => (0..40u64, 0..20u64).prop_map(|(ms, jitter)| Op::Latency { ms, jitter }),
        3 => (1..3u32).prop_map(|n| Op::FailNext { n }),
        3 => prop::bool::weighted(0.3).prop_map(Op::FailAppends),
        6 => (c, 0..4u8).prop_map(|(client, mode)| Op::Write { client, mode }),
        1 => Just(Op::Restart),
    ]
}

/// A request a WebSocket client made, by `ref`.
#[derive(Debug, Clone)]
enum Req {
    Hello,
    /// `newest`: the room's newest `seq` when a `since` join was sent, and
    /// `sent`: how many events the client had read by then.
    Join {
        room: String,
        since: Option<u64>,
        newest: u64,
        sent: usize,
    },
    Leave,
    Say {
        room: String,
        text: String,
        id: Option<String>,
    },
    Tell {
        to: String,
        text: String,
        id: Option<String>,
    },
    Ack,
}

struct Cl {
    c: Client,
    user: usize,
    line: bool,
    /// The client stopped reading at some point.
    stalled: bool,
    requests: HashMap<String, Req>,
    next_ref: u64,
}

struct Driver {
    sim: Sim,
    clients: Vec<Cl>,
    texts: u64,
}

impl Driver {
    fn new(topology: Topology, seed: u64) -> Driver {
        let mut store = FakeStore::default();
        for user in &USERS[..REGISTERED] {
            store.add_user(user, &password(user));
        }
        // Stored memberships, so that welcomes list rooms from the start.
        store.add_member("ann", "r0");
        store.add_member("bob", "r0");
        Driver { sim: Sim::build_with(topology, config(), store, seed), clients: Vec::new(), texts: 0 }
    }

    /// One of the open clients.
    fn pick(&self, client: usize) -> Option<usize> {
        let open: Vec<usize> = (0..self.clients.len()).filter(|&i| self.sim.is_open(self.clients[i].c)).collect();
        (!open.is_empty()).then(|| open[client % open.len()])
    }

    /// A unique text, of varying length (up to `max_text`).
    fn text(&mut self) -> String {
        self.texts += 1;
        let n = self.texts;
        format!("t{n}-{}", "x".repeat((n as usize * 7) % 50))
    }

    /// The room's newest `seq` for a `since` join sent now, or `u64::MAX`
    /// when the request waits in the session behind an unanswered `join` or
    /// `leave` (the server takes it up later, and what completes meanwhile
    /// is live).
    fn newest(&self, i: usize, room: &str) -> u64 {
        let cl = &self.clients[i];
        let answered: Vec<&str> = self.sim.log(cl.c).iter().filter_map(|e| e.json()?["ref"].as_str()).collect();
        let waiting = cl
            .requests
            .iter()
            .any(|(r, req)| matches!(req, Req::Join { .. } | Req::Leave) && !answered.contains(&r.as_str()));
        if waiting {
            u64::MAX
        } else {
            self.sim.store().room_seq(room)
        }
    }

    fn request(&mut self, i: usize, mut body: Value, req: Req) {
        let cl = &mut self.clients[i];
        cl.next_ref += 1;
        let reference = format!("q{}", cl.next_ref);
        body["ref"] = json!(reference);
        cl.requests.insert(reference, req);
        let c = cl.c;
        self.sim.send_json(c, body);
    }

    fn connect(&mut self, user: usize, line: bool) -> usize {
        let name = USERS[user];
        let c = if line { self.sim.line_client() } else { self.sim.ws_client() };
        self.clients.push(Cl { c, user, line, stalled: false, requests: HashMap::new(), next_ref: 0 });
        let i = self.clients.len() - 1;
        match (line, user < REGISTERED) {
            (true, true) => self.sim.send_line(c, &format!("/login {name} {}", password(name))),
            (true, false) => self.sim.send_line(c, name),
            (false, true) => {
                let token = self.sim.token(name);
                self.clients[i].requests.insert("h".into(), Req::Hello);
                self.sim.send_json(c, json!({"type":"hello","token":token,"ref":"h"}));
            }
            (false, false) => {
                self.clients[i].requests.insert("h".into(), Req::Hello);
                self.sim.send_json(c, json!({"type":"hello","name":name,"ref":"h"}));
            }
        }
        i
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Connect { user, line } => {
                self.connect(user, line);
            }
            Op::Join { client, room, since } => {
                let Some(i) = self.pick(client) else { return };
                let room = ROOMS[room];
                if self.clients[i].line {
                    self.sim.send_line(self.clients[i].c, &format!("/join {room}"));
                } else {
                    let since = since.then(|| last_seen(self.sim.log(self.clients[i].c), room));
                    let body = json!({"type":"join","room":room,"since":since});
                    let (newest, sent) = (self.newest(i, room), self.sim.log(self.clients[i].c).len());
                    self.request(i, body, Req::Join { room: room.into(), since, newest, sent });
                }
            }
            Op::Leave { client, room } => {
                let Some(i) = self.pick(client) else { return };
                let room = ROOMS[room];
                if self.clients[i].line {
                    self.sim.send_line(self.clients[i].c, &format!("/leave {room}"));
                } else {
                    self.request(i, json!({"type":"leave","room":room}), Req::Leave);
                }
            }
            Op::Say { client, room, id } => {
                let Some(i) = self.pick(client) else { return };
                let text = self.text();
                if self.clients[i].line {
                    self.sim.send_line(self.clients[i].c, &text);
                } else {
                    // Mostly a room the session is in: that is where the
                    // invariants have something to check.
                    let rooms = rooms_with_last_seen(self.sim.log(self.clients[i].c));
                    let room = match rooms.len() {
                        0 => ROOMS[room].to_string(),
                        n => rooms[room % n].0.clone(),
                    };
                    let id = id.map(|n| format!("i{n}"));
                    let body = json!({"type":"send","room":room,"text":text,"id":id});
                    self.request(i, body, Req::Say { room, text, id });
                }
            }
            Op::Tell { client, to, id } => {
                let Some(i) = self.pick(client) else { return };
                let text = self.text();
                let to = USERS[to];
                if self.clients[i].line {
                    self.sim.send_line(self.clients[i].c, &format!("/msg {to} {text}"));
                } else {
                    let id = id.map(|n| format!("p{n}"));
                    let body = json!({"type":"send","to":to,"text":text,"id":id});
                    self.request(i, body, Req::Tell { to: to.into(), text, id });
                }
            }
            Op::Flood { client, n } => {
                for _ in 0..n {
                    self.apply(&Op::Say { client, room: 0, id: None });
                }
            }
            Op::Ack { client, with } => {
                let Some(i) = self.pick(client) else { return };
                if self.clients[i].line {
                    return;
                }
                let with = USERS[with];
                let seq = self
                    .sim
                    .log(self.clients[i].c)
                    .iter()
                    .filter_map(Event::json)
                    .filter(|v| v["type"] == "private" && v["from"] == with)
                    .filter_map(|v| v["seq"].as_u64())
                    .max();
                if let Some(seq) = seq {
                    self.request(i, json!({"type":"ack","with":with,"seq":seq}), Req::Ack);
                }
            }
            Op::Disconnect { client } => {
                if let Some(i) = self.pick(client) {
                    self.sim.disconnect(self.clients[i].c);
                }
            }
            Op::Reconnect { client } => {
                let Some(i) = self.pick(client) else { return };
                let (old, user, line) = (self.clients[i].c, self.clients[i].user, self.clients[i].line);
                let rooms = rooms_with_last_seen(self.sim.log(old));
                self.sim.disconnect(old);
                let j = self.connect(user, line);
                if !line {
                    self.sim.run_until_idle();
                    for (room, since) in rooms {
                        let body = json!({"type":"join","room":room,"since":since});
                        let (newest, sent) = (self.newest(j, &room), self.sim.log(self.clients[j].c).len());
                        self.request(j, body, Req::Join { room, since: Some(since), newest, sent });
                    }
                }
            }
            Op::Advance { ms } => self.sim.advance(Duration::from_millis(ms)),
            Op::Idle => self.sim.run_until_idle(),
            Op::Latency { ms, jitter } => {
                let store = self.sim.store_mut();
                store.set_latency(Duration::from_millis(ms), Duration::from_millis(jitter));
                store.set_password_latency(Duration::from_millis(ms), Duration::from_millis(3 * jitter));
            }
            Op::FailNext { n } => self.sim.store_mut().fail_next(n),
            Op::FailAppends(on) => {
                if on {
                    self.sim.store_mut().fail_when(|op| matches!(op, natter_core::store::StoreOp::Append { .. }));
                } else {
                    self.sim.store_mut().stop_failing();
                }
            }
            Op::Write { client, mode } => {
                let Some(i) = self.pick(client) else { return };
                let mode = match mode {
                    0 => WriteMode::Full,
                    1 => WriteMode::Chunks(7),
                    2 => WriteMode::Random,
                    _ => WriteMode::Stalled,
                };
                self.clients[i].stalled |= mode == WriteMode::Stalled;
                self.sim.set_write_mode(self.clients[i].c, mode);
            }
            Op::Restart => self.sim.restart(),
        }
    }

    /// Storage recovers, every client reads again, and everything in
    /// flight lands.
    fn finish(&mut self) {
        let store = self.sim.store_mut();
        store.stop_failing();
        store.set_latency(Duration::ZERO, Duration::ZERO);
        store.set_password_latency(Duration::ZERO, Duration::ZERO);
        for cl in &self.clients {
            self.sim.set_write_mode(cl.c, WriteMode::Full);
        }
        self.sim.run_until_idle();
    }
}

/// The newest room `seq` a WebSocket session saw (0: none).
fn last_seen(log: &[Event], room: &str) -> u64 {
    log.iter()
        .filter_map(Event::json)
        .filter(|v| v["type"] == "message" && v["room"] == room)
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The rooms a WebSocket session was in at its end, with the last `seq`
/// it saw of each, from its own log.
fn rooms_with_last_seen(log: &[Event]) -> Vec<(String, u64)> {
    let me = log.iter().filter_map(Event::json).find(|v| v["type"] == "welcome").and_then(|v| v["user"].as_str());
    let Some(me) = me else { return Vec::new() };
    let mut rooms: Vec<String> = Vec::new();
    for v in log.iter().filter_map(Event::json) {
        match v["type"].as_str() {
            Some("welcome") => {
                rooms = v["rooms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["room"].as_str().map(String::from))
                    .collect()
            }
            Some("presence") if v["user"] == me => {
                let room = v["room"].as_str().unwrap_or_default().to_string();
                match v["state"].as_str() {
                    Some("join") if !rooms.contains(&room) => rooms.push(room),
                    Some("leave") => rooms.retain(|r| *r != room),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    rooms.into_iter().map(|r| (r.clone(), last_seen(log, &r))).collect()
}

/// What one session saw of one room.
#[derive(Default, Clone, Copy)]
struct Track {
    /// `Some(true)`: a member; `None`: not known (a registered line session's
    /// rooms other than the lobby).
    member: Option<bool>,
    /// The `seq` the next message must follow, when known.
    last: Option<u64>,
}

fn find_text<'a>(messages: &'a [StoredMessage], text: &str) -> Option<&'a StoredMessage> {
    messages.iter().find(|m| m.text == text)
}

/// Checks everything one session saw; returns what was acknowledged.
struct Checker<'a> {
    sim: &'a Sim,
    errors: Vec<String>,
    /// Acknowledged private messages between registered users:
    /// `(from, to, seq, text)`.
    told: Vec<(String, String, u64, String)>,
}

impl Checker<'_> {
    fn fail(&mut self, who: &str, what: String) {
        if self.errors.len() < 20 {
            self.errors.push(format!("{who}: {what}"));
        }
    }

    fn stored_room(&self, room: &str, seq: u64) -> Option<&StoredMessage> {
        self.sim.store().room_messages(room).iter().find(|m| m.seq == seq)
    }

    /// `known`: whether rooms not seen in `tracks` are known not to be
    /// the session's (everything but a registered line session's rooms).
    fn message(&mut self, who: &str, tracks: &mut HashMap<String, Track>, known: bool, room: &str, seq: u64) {
        let unseen = Track { member: known.then_some(false), last: None };
        let t = tracks.entry(room.to_string()).or_insert(unseen);
        let t_now = *t;
        if t_now.member == Some(false) {
            self.fail(who, format!("got {room} seq {seq} while not a member"));
        }
        if let Some(last) = t_now.last {
            if seq != last + 1 {
                self.fail(who, format!("{room}: seq {seq} after {last}"));
            }
        }
        tracks.get_mut(room).unwrap().last = Some(seq);
    }

    fn ws(&mut self, cl: &Cl) {
        let sim = self.sim;
        let me = USERS[cl.user];
        let who = format!("ws {me} {:?}", cl.c);
        let open = sim.is_open(cl.c);
        let mut tracks: HashMap<String, Track> = HashMap::new();
        let mut replies: HashMap<String, usize> = HashMap::new();
        let mut conv_last: HashMap<String, u64> = HashMap::new();
        let mut welcomed = false;
        let log = sim.log(cl.c);
        for (at, v) in log.iter().enumerate().filter_map(|(i, e)| e.json().map(|v| (i, v))) {
            if let Some(r) = v["ref"].as_str() {
                *replies.entry(r.to_string()).or_default() += 1;
                match cl.requests.get(r) {
                    None => self.fail(&who, format!("a reply to a ref never sent: {v}")),
                    Some(req) => {
                        if let Req::Join { room, since: Some(_), newest, sent } = req {
                            self.nothing_new_before_ok(&who, &log[*sent..at], room, *newest);
                        }
                        self.reply(&who, me, &mut tracks, req, v)
                    }
                }
            }
            match v["type"].as_str().unwrap_or_default() {
                "welcome" => {
                    welcomed = true;
                    for r in v["rooms"].as_array().into_iter().flatten() {
                        let t = Track { member: Some(true), last: r["seq"].as_u64() };
                        tracks.insert(r["room"].as_str().unwrap_or_default().to_string(), t);
                    }
                }
                "presence" if v["user"] == me => {
                    let room = v["room"].as_str().unwrap_or_default().to_string();
                    match v["state"].as_str().unwrap_or_default() {
                        "join" => {
                            tracks.insert(room, Track { member: Some(true), last: None });
                        }
                        "leave" => {
                            tracks.insert(room, Track { member: Some(false), last: None });
                        }
                        s => self.fail(&who, format!("presence {s} about itself")),
                    }
                }
                "message" | "private" | "presence" | "typing" | "read" if !welcomed => {
                    self.fail(&who, format!("delivered before welcome: {v}"));
                }
                "message" => {
                    let room = v["room"].as_str().unwrap_or_default();
                    let seq = v["seq"].as_u64().unwrap_or_default();
                    match self.stored_room(room, seq) {
                        Some(m) if v["text"] == m.text.as_str() && v["from"] == m.from.as_str() => {}
                        m => self.fail(&who, format!("delivered {v} but stored {m:?}")),
                    }
                    self.message(&who, &mut tracks, true, room, seq);
                }
                "private" => {
                    let (from, to) = (v["from"].as_str().unwrap_or_default(), v["to"].as_str().unwrap_or_default());
                    if from != me && to != me {
                        self.fail(&who, format!("someone else's private message: {v}"));
                    }
                    let other = if from == me { to } else { from };
                    let seq = v["seq"].as_u64().unwrap_or_default();
                    let registered = |u: &str| USERS[..REGISTERED].contains(&u);
                    if registered(me) && registered(other) {
                        let last = conv_last.entry(other.to_string()).or_default();
                        if seq <= *last {
                            self.fail(&who, format!("private with {other}: seq {seq} after {last}"));
                        }
                        *last = seq;
                        let stored = sim.store().conversation(me, other).iter().find(|m| m.seq == seq);
                        if stored.is_none_or(|m| v["text"] != m.text.as_str()) {
                            self.fail(&who, format!("delivered {v} but stored {stored:?}"));
                        }
                    }
                }
                _ => {}
            }
        }
        for (r, n) in &replies {
            if *n > 1 {
                self.fail(&who, format!("{n} replies to ref {r}"));
            }
        }
        if open {
            for r in cl.requests.keys() {
                if !replies.contains_key(r) {
                    self.fail(&who, format!("no reply to ref {r} ({:?})", cl.requests[r]));
                }
            }
            self.complete(&who, &tracks);
        }
    }

    /// PROTOCOL.md: with `since`, "the ok comes first, then the replay,
    /// then live messages". Between the request and its answer only
    /// messages that were already on their way (no newer than the room was
    /// when the request went out) may arrive.
    fn nothing_new_before_ok(&mut self, who: &str, between: &[Event], room: &str, newest: u64) {
        for v in between.iter().filter_map(Event::json) {
            if v["type"] == "message" && v["room"] == room && v["seq"].as_u64().is_some_and(|s| s > newest) {
                self.fail(who, format!("{room} seq {} arrived before the ok of a join with since", v["seq"]));
            }
        }
    }

    fn reply(&mut self, who: &str, me: &str, tracks: &mut HashMap<String, Track>, req: &Req, v: &Value) {
        let ok = v["type"] == "ok";
        match req {
            Req::Join { room, since, .. } => {
                let t = tracks.entry(room.clone()).or_default();
                if ok {
                    let seq = v["seq"].as_u64().unwrap_or_default();
                    // A plain join is answered at once: the user is in. A
                    // replay's answer comes later; membership is what the
                    // presence events said meanwhile.
                    if since.is_none() {
                        t.member = Some(true);
                    }
                    t.last = match (since, v["recovered"].as_bool()) {
                        (None, _) => Some(seq),
                        (Some(since), Some(true)) => Some((*since).min(seq)),
                        (Some(_), _) => v["oldest"].as_u64().map(|o| o - 1),
                    };
                } else if since.is_some() {
                    // A failed replay may have held back live messages;
                    // the client was told and joins again.
                    t.last = None;
                }
            }
            Req::Say { room, text, id } if ok => {
                let seq = v["seq"].as_u64().unwrap_or_default();
                let stored = match id {
                    None => self.stored_room(room, seq).is_some_and(|m| m.text == *text && m.from == me),
                    Some(id) => self.stored_anywhere(me, seq, id),
                };
                if !stored {
                    self.fail(
                        who,
                        format!("send to {room} acknowledged with seq {seq} but not stored ({text}, {id:?})"),
                    );
                }
            }
            Req::Tell { to, text, id } if ok => {
                let seq = v["seq"].as_u64().unwrap_or_default();
                let stored = match id {
                    None => {
                        let conv = self.sim.store().conversations().flat_map(|(_, msgs)| msgs.iter());
                        conv.into_iter().any(|m| m.seq == seq && m.text == *text && m.from == me)
                    }
                    Some(id) => self.stored_anywhere(me, seq, id),
                };
                if !stored {
                    self.fail(who, format!("private to {to} acknowledged with seq {seq} but not stored"));
                }
                let registered = |u: &str| USERS[..REGISTERED].contains(&u);
                if id.is_none() && registered(me) && registered(to) {
                    self.told.push((me.to_string(), to.clone(), seq, text.clone()));
                }
            }
            _ => {}
        }
    }

    /// A message from `me` with client id `id` and `seq`, in any target.
    fn stored_anywhere(&self, me: &str, seq: u64, id: &str) -> bool {
        let store = self.sim.store();
        let hit = |m: &StoredMessage| m.seq == seq && m.from == me && m.client_id.as_deref() == Some(id);
        store.rooms().iter().any(|r| store.room_messages(r).iter().any(hit))
            || store.conversations().any(|(_, msgs)| msgs.iter().any(hit))
    }

    /// An open session that is in a room has everything up to its newest.
    fn complete(&mut self, who: &str, tracks: &HashMap<String, Track>) {
        for (room, t) in tracks {
            if let (Some(true), Some(last)) = (t.member, t.last) {
                let newest = self.sim.store().room_seq(room);
                if last != newest {
                    self.fail(who, format!("{room}: saw up to {last}, stored up to {newest}"));
                }
            }
        }
    }

    fn line(&mut self, cl: &Cl) {
        let sim = self.sim;
        let who = format!("line {:?}", cl.c);
        // Who the session is: a failed first line makes the next line a
        // nickname, whatever the driver meant.
        let mut me = String::new();
        let mut tracks: HashMap<String, Track> = HashMap::new();
        for e in sim.log(cl.c) {
            let Event::Line(line) = e else {
                self.fail(&who, format!("a line session got {e:?}"));
                continue;
            };
            if let Some(name) = line.strip_prefix("* welcome ") {
                me = name.to_string();
                continue;
            }
            let me = me.as_str();
            if me.is_empty() {
                if line.starts_with('[') {
                    self.fail(&who, format!("delivered before welcome: {line}"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let Some((tag, rest)) = rest.split_once("] ") else {
                    continue;
                };
                let Some((from, text)) = rest.split_once(": ") else {
                    continue;
                };
                if tag == "pm" {
                    let to_me = sim
                        .store()
                        .conversations()
                        .flat_map(|(_, m)| m.iter())
                        .any(|m| m.text == text && m.from == from && m.to.as_deref() == Some(me));
                    if !to_me {
                        self.fail(&who, format!("a [pm] that is not to it: {line}"));
                    }
                } else if tag.starts_with("pm to ") {
                    if from != me {
                        self.fail(&who, format!("an echo of someone else's message: {line}"));
                    }
                } else {
                    match find_text(sim.store().room_messages(tag), text) {
                        Some(m) if m.from == from => {
                            let seq = m.seq;
                            let known = !USERS[..REGISTERED].contains(&me);
                            self.message(&who, &mut tracks, known, tag, seq);
                        }
                        m => self.fail(&who, format!("delivered {line:?} but stored {m:?}")),
                    }
                }
            } else if let Some(room) = line.strip_prefix(&format!("* {me} joined ")) {
                tracks.insert(room.to_string(), Track { member: Some(true), last: None });
            } else if let Some(room) = line.strip_prefix(&format!("* {me} left ")) {
                tracks.insert(room.to_string(), Track { member: Some(false), last: None });
            } else if let Some(rest) = line.strip_prefix("* you are in ") {
                let room = rest.split(' ').next().unwrap_or_default();
                tracks.entry(room.to_string()).or_default().member = Some(true);
            }
        }
        if sim.is_open(cl.c) {
            self.complete(&who, &tracks);
        }
    }

    /// Every acknowledged private message between registered users reached
    /// a session of its recipient or is still waiting in its inbox.
    ///
    /// Not checked for a recipient with a line session that stopped
    /// reading: the hub acknowledges for a line session when it queues the
    /// message, so bytes that are never written are lost (a known gap).
    fn private_delivery(&mut self, clients: &[Cl]) {
        for (from, to, seq, text) in std::mem::take(&mut self.told) {
            if clients.iter().any(|cl| USERS[cl.user] == to && cl.line && cl.stalled) {
                continue;
            }
            let delivered = clients.iter().filter(|cl| USERS[cl.user] == to).any(|cl| {
                self.sim.log(cl.c).iter().any(|e| match e {
                    Event::Json(v) => v["type"] == "private" && v["from"] == from.as_str() && v["seq"] == seq,
                    Event::Line(l) => *l == format!("[pm] {from}: {text}"),
                    _ => false,
                })
            });
            let waiting = seq > self.sim.store().ack(&to, &from);
            if !delivered && !waiting {
                self.fail("private", format!("{from} -> {to} seq {seq} acknowledged, acked by {to}, never delivered"));
            }
        }
    }
}

fn check(driver: &Driver) -> Vec<String> {
    let sim = &driver.sim;
    let mut checker = Checker { sim, errors: Vec::new(), told: Vec::new() };
    for cl in &driver.clients {
        if cl.line {
            checker.line(cl);
        } else {
            checker.ws(cl);
        }
    }
    checker.private_delivery(&driver.clients);
    let bound = sim.config().max_queue + 256;
    if sim.max_queued() > bound {
        checker.errors.push(format!("an outbox held {} bytes (bound {bound})", sim.max_queued()));
    }
    let pending = sim.hub().pending_requests();
    if pending != 0 {
        checker.errors.push(format!("{pending} storage requests still pending in the hub"));
    }
    checker.errors
}

fn run(topology: Topology, seed: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut driver = Driver::new(topology, seed);
    for op in ops {
        driver.apply(op);
    }
    driver.finish();
    let errors = check(&driver);
    prop_assert!(errors.is_empty(), "{topology:?}, seed {:#x}:\n{}", driver.sim.seed(), errors.join("\n"));
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(512)
}

/// The topologies a node runs in: one shard with the hub (`--threads 1`),
/// or one to four shards with the hub apart and their mail shuffled.
fn topology() -> impl Strategy<Value = Topology> {
    prop_oneof![Just(Topology::Local), (1..=4u16).prop_map(Topology::Threads)]
}

#[test]
fn clients_see_what_the_protocol_promises() {
    let config = ProptestConfig {
        cases: cases(),
        // Failing cases are saved here and run first next time; commit them.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/props.txt"))),
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = (topology(), any::<u64>(), (0..20u64, 0..10u64), prop::collection::vec(op(), 1..120));
    let ran: RefCell<BTreeMap<String, u32>> = RefCell::default();
    let result = runner.run(&strategy, |(topology, seed, latency, ops)| {
        *ran.borrow_mut().entry(format!("{topology:?}")).or_default() += 1;
        let mut all = vec![Op::Latency { ms: latency.0, jitter: latency.1 }];
        all.extend(ops);
        run(topology, seed, &all)
    });
    let ran = ran.into_inner();
    let summary = format!("{} cases by topology: {ran:?}", ran.values().sum::<u32>());
    eprintln!("clients_see_what_the_protocol_promises: {summary}");
    if let Err(e) = result {
        panic!("{e}\n(after {summary})");
    }
}

/// A fixed busy run, so that a plain `cargo test` always exercises the
/// checker on a long sequence whatever proptest draws.
#[test]
fn a_long_fixed_run_keeps_every_invariant() {
    let mut ops = Vec::new();
    for i in 0..5 {
        ops.push(Op::Connect { user: i, line: i == 2 || i == 4 });
    }
    ops.push(Op::Idle);
    ops.push(Op::Latency { ms: 15, jitter: 10 });
    for round in 0..30usize {
        ops.push(Op::Join { client: round, room: round % 3, since: round % 4 == 0 });
        ops.push(Op::Say { client: round + 1, room: (round + 1) % 3, id: (round % 5 == 0).then_some(1) });
        ops.push(Op::Tell { client: round + 2, to: round % 3, id: None });
        if round % 7 == 3 {
            ops.push(Op::Reconnect { client: round });
        }
        if round % 9 == 4 {
            ops.push(Op::Write { client: round, mode: (round % 4) as u8 });
        }
        if round % 6 == 5 {
            ops.push(Op::Ack { client: round, with: round % 3 });
        }
        ops.push(Op::Advance { ms: (round as u64 * 7) % 40 });
    }
    for topology in [Topology::Local, Topology::Threads(3)] {
        run(topology, natter_sim::env_seed().unwrap_or(0x5eed), &ops).unwrap();
    }
}

/// Guards the strategy itself: a change to the operations or weights that
/// stops exercising the checker (no messages, no replays, no store
/// failures) fails here instead of passing quietly.
#[test]
fn the_strategy_exercises_the_invariants() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (any::<u64>(), prop::collection::vec(op(), 1..120));
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..64 {
        let (seed, ops) = strategy.new_tree(&mut runner).unwrap().current();
        let mut d = Driver::new(Topology::Threads(2), seed);
        for op in &ops {
            d.apply(op);
        }
        d.finish();
        for cl in &d.clients {
            for e in d.sim.log(cl.c) {
                let key = match e {
                    Event::Json(v) if v.get("recovered").is_some() => "replay ok".to_string(),
                    Event::Json(v) if v["type"] == "error" => v["code"].as_str().unwrap_or_default().to_string(),
                    Event::Json(v) => v["type"].as_str().unwrap_or_default().to_string(),
                    Event::Line(l) if l.starts_with('[') => "line message".to_string(),
                    Event::Close { code, .. } => format!("close {}", code.unwrap_or(0)),
                    _ => continue,
                };
                *count.entry(key).or_default() += 1;
            }
        }
    }
    let at_least = [
        ("message", 300),
        ("private", 30),
        ("replay ok", 40),
        ("line message", 100),
        ("unavailable", 20),
        ("rate_limited", 20),
        ("close 1012", 10),
    ];
    for (what, n) in at_least {
        let got = count.get(what).copied().unwrap_or(0);
        assert!(got >= n, "only {got} {what} in 64 runs: {count:?}");
    }
}

/// A case proptest found (and shrank) where a room's message arrived
/// between a `join` with `since` and its `ok`.
#[test]
fn regression_a_message_before_the_ok_of_a_join_with_since() {
    let connect = |user| Op::Connect { user, line: false };
    let ops = [
        Op::Latency { ms: 0, jitter: 1 },
        connect(3),
        Op::Reconnect { client: 0 },
        connect(0),
        Op::Join { client: 2, room: 2, since: false },
        Op::Disconnect { client: 5 },
        connect(0),
        connect(2),
        connect(2),
        Op::Reconnect { client: 2 },
        Op::Reconnect { client: 2 },
        Op::Join { client: 3, room: 2, since: false },
        connect(0),
        Op::Say { client: 0, room: 0, id: None },
        Op::Join { client: 7, room: 2, since: true },
        Op::Advance { ms: 0 },
    ];
    run(Topology::Local, 0, &ops).unwrap();
}
