//! The whole core: shards with their hub (in the shard, or on its own with
//! two shards), driven like a runtime drives them, by a sequence of
//! operations: connections opening (HTTP or line), bytes from clients (raw,
//! or well-formed upgrades, API calls, JSON requests in masked frames, lines),
//! partial writes, hang-ups, time moving, and storage completions delivered
//! in order, held, failed, or (password operations) early.
//!
//! Checked after every operation: nothing panicked; every connection's
//! outbox stays within `max_queue` plus one goodbye (a close frame or a bye
//! line); actions only name live connections; timers do not spin; and what
//! the server wrote parses as HTTP responses, unmasked unfragmented frames,
//! or lines.
#![no_main]

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter_core::sim::{epoch, wire, FakeStore, START_UNIX_MS};
use natter_core::store::{StoreDone, StoreError, StoreFailure, StoreOp, StoreRequest, StoreValue};
use natter_core::{Config, ConnKey, Hub, HubAction, HubInput, Metrics, Now, Shard, ShardAction, Transport};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Registered users (password `secret-NAME`) first, then guests and bad names.
const NAMES: [&str; 8] = ["ann", "bob", "cyd", "gus", "gil", "Ann", "", "no spaces#"];
const REGISTERED: usize = 3;
const ROOMS: [&str; 5] = ["lobby", "r1", "r2", "bad room", ""];
/// The largest goodbye pushed past the bound: a close frame with a reason
/// (4 + 123 bytes) is larger than any bye line.
const GOODBYE: usize = 127;

fn name(i: u8) -> &'static str {
    NAMES[usize::from(i) % NAMES.len()]
}

fn password(user: &str) -> String {
    format!("secret-{user}")
}

fn room(i: u8) -> &'static str {
    ROOMS[usize::from(i) % ROOMS.len()]
}

#[derive(Arbitrary, Debug)]
struct Input {
    knobs: Knobs,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Knobs {
    /// Two shards and a hub on its own, instead of one shard with the hub.
    remote_hub: bool,
    max_queue: u16,
    max_frame: u16,
    max_text: u8,
    max_line: u8,
    rate: u8,
    burst: u8,
    max_rooms: u8,
    max_connections: u8,
    no_guests: bool,
    token_ttl_s: u16,
}

impl Knobs {
    fn config(&self) -> Config {
        Config {
            heartbeat: Duration::from_secs(30),
            no_guests: self.no_guests,
            token_ttl: Duration::from_secs(1 + u64::from(self.token_ttl_s)),
            max_frame: 1 + usize::from(self.max_frame) % 4096,
            max_text: usize::from(self.max_text),
            max_line: 1 + usize::from(self.max_line),
            max_queue: 128 + usize::from(self.max_queue) % 8192,
            rate: 1 + u32::from(self.rate % 50),
            burst: 1 + u32::from(self.burst % 50),
            max_rooms: 1 + usize::from(self.max_rooms % 4),
            max_connections: 1 + usize::from(self.max_connections % 12),
            // Connections come from 4 addresses: from 1 to 6 each reaches
            // the per-address cap before, or after, the server's.
            max_connections_per_ip: 1 + usize::from(self.max_connections / 16 % 6),
            handshake_timeout: Duration::from_secs(10),
            line_idle: Duration::from_secs(120),
            echo: true,
            login_rate: 10,
            ..Config::default()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    OpenHttp {
        shard: bool,
    },
    OpenLine {
        shard: bool,
    },
    /// Raw bytes from a client.
    Raw {
        conn: u8,
        bytes: Blob,
    },
    /// A browser's upgrade request.
    Upgrade {
        conn: u8,
        to: UpgradeTo,
    },
    /// An API call or another plain request.
    Http {
        conn: u8,
        call: HttpCall,
        close: bool,
    },
    /// A JSON request in a masked text frame, in `fragments + 1` pieces.
    Request {
        conn: u8,
        req: Req,
        reference: Option<u8>,
        fragments: u8,
        mask: [u8; 4],
    },
    /// Another well-formed client frame.
    Frame {
        conn: u8,
        kind: FrameKind,
        fin: bool,
        payload: Blob,
        mask: [u8; 4],
    },
    /// A line, with `\n` or `\r\n`.
    Line {
        conn: u8,
        line: LineCmd,
        crlf: bool,
    },
    /// The client's socket takes up to `n` bytes (0: all of them).
    Write {
        conn: u8,
        n: u16,
    },
    /// The client hangs up.
    PeerClosed {
        conn: u8,
    },
    /// Time moves by `ms`.
    Advance {
        ms: u16,
    },
    /// Time moves by `s` seconds, firing every deadline on the way.
    AdvanceSecs {
        s: u8,
    },
    /// The next `n + 1` storage requests complete, in order.
    StoreDone {
        n: u8,
    },
    /// Every storage request completes, in order.
    StoreIdle,
    /// The next storage request fails.
    StoreFail {
        kind: Fail,
    },
    /// The oldest password operation completes ahead of the others (the one
    /// reordering the storage contract allows).
    StorePasswordFirst,
    /// SIGTERM.
    Shutdown,
}

/// Bytes whose length comes from the end of the input, as for a `String`
/// (a `Vec<u8>` spends a byte per element on "one more").
#[derive(Debug)]
struct Blob(Vec<u8>);

impl<'a> Arbitrary<'a> for Blob {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Blob(<&[u8]>::arbitrary(u)?.to_vec()))
    }
}

#[derive(Arbitrary, Debug)]
enum UpgradeTo {
    Ws,
    /// `/ws?token=`: index into the known tokens, past the end a bad one.
    WsToken(u8),
    Echo,
}

#[derive(Arbitrary, Debug)]
enum HttpCall {
    Register {
        user: u8,
        good_password: bool,
    },
    Login {
        user: u8,
        good_password: bool,
    },
    /// Index into the known tokens, past the end a bad one.
    Logout {
        token: u8,
    },
    Healthz,
    Metrics,
    NotFound,
}

#[derive(Arbitrary, Debug)]
enum Req {
    HelloGuest {
        name: u8,
    },
    HelloToken {
        token: u8,
    },
    Join {
        room: u8,
        since: Option<u8>,
    },
    Leave {
        room: u8,
    },
    SendRoom {
        room: u8,
        text: String,
        id: Option<u8>,
    },
    SendUser {
        to: u8,
        text: String,
        id: Option<u8>,
    },
    History {
        room: Option<u8>,
        with: u8,
        before: Option<u8>,
        limit: Option<u8>,
    },
    Who {
        room: Option<u8>,
        limit: Option<u8>,
    },
    Rooms {
        limit: Option<u8>,
    },
    Conversations {
        limit: Option<u8>,
    },
    Read {
        room: Option<u8>,
        with: u8,
        seq: u8,
    },
    Typing {
        room: Option<u8>,
        to: u8,
    },
    Ack {
        with: u8,
        seq: u8,
    },
    Ping,
    /// Anything else in a text frame.
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum FrameKind {
    Text,
    Binary,
    Continuation,
    Ping,
    Pong,
    Close { code: Option<u16> },
}

#[derive(Arbitrary, Debug)]
enum LineCmd {
    Login {
        name: u8,
    },
    /// `/login` (or `/register`) with the user's password, or a wrong one.
    Password {
        user: u8,
        register: bool,
        good_password: bool,
    },
    Join {
        room: u8,
    },
    Leave {
        room: Option<u8>,
    },
    Msg {
        to: u8,
        text: String,
    },
    Who,
    Rooms,
    History {
        n: Option<u8>,
    },
    Help,
    Quit,
    Say(String),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fail {
    Io,
    Busy,
    Other,
    Overloaded,
    TimedOut,
}

/// How the client side parses what the server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    Http,
    Ws,
    Line,
}

struct Client {
    shard: usize,
    key: Option<ConnKey>,
    reads: Reads,
    rx: Vec<u8>,
}

struct World {
    config: Arc<Config>,
    now: Now,
    store: FakeStore,
    /// Submitted and not completed, in submission order.
    pending: VecDeque<StoreRequest>,
    shards: Vec<Shard>,
    /// The hub when it runs on its own (`shards` has two then).
    hub: Option<Hub>,
    clients: Vec<Client>,
    tokens: Vec<String>,
}

/// With `NATTER_FUZZ_TRACE` set, prints what each client reads (to see
/// what a crashing input did: `cargo fuzz run core ARTIFACT`).
fn trace(client: usize, what: &dyn std::fmt::Debug) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("NATTER_FUZZ_TRACE").is_some()) {
        eprintln!("client {client} read {what:?}");
    }
}

fn key_of(clients: &[Client], shard: usize, key: ConnKey) -> Option<usize> {
    clients.iter().position(|c| c.shard == shard && c.key == Some(key))
}

impl World {
    fn new(knobs: &Knobs) -> World {
        let config = Arc::new(knobs.config());
        let metrics = Arc::new(Metrics::default());
        let now = Now { instant: epoch(), unix_ms: START_UNIX_MS };
        let mut store = FakeStore::default();
        let mut tokens = Vec::new();
        for user in &NAMES[..REGISTERED] {
            store.add_user(user, &password(user));
            tokens.push(store.issue_token(user, START_UNIX_MS + 3_600_000));
        }
        // One that has expired, and one that expires soon.
        tokens.push(store.issue_token(NAMES[0], START_UNIX_MS - 1));
        tokens.push(store.issue_token(NAMES[1], START_UNIX_MS + 5_000));
        store.add_member(NAMES[0], ROOMS[1]);
        let StoreValue::Snapshot { users, rooms } = store.execute(&StoreOp::LoadAll) else {
            panic!("the fake store failed LoadAll");
        };
        let hub = Hub::new((*config).clone(), Arc::clone(&metrics), users, rooms, now);
        let (shards, hub) = if knobs.remote_hub {
            let shards = (0..2).map(|i| Shard::new(i, Arc::clone(&config), Arc::clone(&metrics))).collect();
            (shards, Some(hub))
        } else {
            (vec![Shard::with_hub(Arc::clone(&config), Arc::clone(&metrics), hub)], None)
        };
        World { config, now, store, pending: VecDeque::new(), shards, hub, clients: Vec::new(), tokens }
    }

    /// The open client `conn` picks, if any.
    fn open_client(&self, conn: u8) -> Option<usize> {
        let open: Vec<usize> = (0..self.clients.len()).filter(|&i| self.clients[i].key.is_some()).collect();
        (!open.is_empty()).then(|| open[usize::from(conn) % open.len()])
    }

    fn open(&mut self, shard: bool, transport: Transport) {
        let shard = if self.shards.len() > 1 { usize::from(shard) } else { 0 };
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + self.clients.len() as u8 % 4));
        let key = self.shards[shard].open(self.now, transport, peer);
        assert!(key_of(&self.clients, shard, key).is_none(), "key {key} handed out twice");
        let reads = if transport == Transport::Line { Reads::Line } else { Reads::Http };
        self.clients.push(Client { shard, key: Some(key), reads, rx: Vec::new() });
    }

    fn send(&mut self, conn: u8, bytes: &[u8]) {
        let Some(i) = self.open_client(conn) else { return };
        let (shard, key) = (self.clients[i].shard, self.clients[i].key.unwrap());
        self.shards[shard].received(self.now, key, bytes);
    }

    fn token(&self, i: u8) -> String {
        self.tokens.get(usize::from(i)).cloned().unwrap_or_else(|| "no-such-token".into())
    }

    /// The client's socket takes up to `n` bytes of what is queued.
    fn write(&mut self, conn: u8, n: u16) {
        let Some(i) = self.open_client(conn) else { return };
        let (shard, key) = (self.clients[i].shard, self.clients[i].key.unwrap());
        let limit = if n == 0 { usize::MAX } else { usize::from(n) };
        let mut bytes = Vec::new();
        {
            let mut slices = [IoSlice::new(&[]); 64];
            let count = self.shards[shard].outbox(key, &mut slices);
            for s in &slices[..count] {
                let room = limit - bytes.len();
                bytes.extend_from_slice(&s[..s.len().min(room)]);
                if bytes.len() == limit {
                    break;
                }
            }
        }
        if bytes.is_empty() {
            return;
        }
        self.shards[shard].written(self.now, key, bytes.len());
        self.clients[i].rx.extend_from_slice(&bytes);
        self.parse(i);
    }

    /// What the client read must be well-formed for what it speaks.
    fn parse(&mut self, i: usize) {
        loop {
            let c = &mut self.clients[i];
            if c.rx.is_empty() {
                return;
            }
            let used = match c.reads {
                Reads::Http => match wire::parse_response(&c.rx) {
                    Ok(Some((res, used))) => {
                        trace(i, &res);
                        if res.status == 101 {
                            c.reads = Reads::Ws;
                        }
                        if let Some(t) = res.json().get("token").and_then(Value::as_str) {
                            if self.tokens.len() < 32 {
                                self.tokens.push(t.to_string());
                            }
                        }
                        used
                    }
                    Ok(None) => return,
                    Err(e) => panic!("{e}: {:?}", String::from_utf8_lossy(&c.rx)),
                },
                Reads::Ws => match wire::parse_frame(&c.rx) {
                    Ok(Some((event, used))) => {
                        trace(i, &event);
                        used
                    }
                    Ok(None) => return,
                    Err(e) => panic!("{e}"),
                },
                Reads::Line => match c.rx.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        trace(i, &String::from_utf8_lossy(&c.rx[..end]));
                        end + 1
                    }
                    None => return,
                },
            };
            c.rx.drain(..used);
        }
    }

    fn peer_closed(&mut self, conn: u8) {
        let Some(i) = self.open_client(conn) else { return };
        let (shard, key) = (self.clients[i].shard, self.clients[i].key.take().unwrap());
        self.shards[shard].closed(self.now, key);
    }

    fn complete(&mut self, done: StoreDone) {
        match &mut self.hub {
            Some(hub) => hub.handle_input(self.now, HubInput::Store(done)),
            None => self.shards[0].handle_store(self.now, done),
        }
    }

    fn store_done(&mut self, n: usize) {
        for _ in 0..n {
            let Some(req) = self.pending.pop_front() else { return };
            let result = Ok(self.store.execute(&req.op));
            self.complete(StoreDone { id: req.id, result });
            self.settle();
        }
    }

    fn store_fail(&mut self, kind: Fail) {
        let Some(req) = self.pending.pop_front() else { return };
        let error = match kind {
            Fail::Io => StoreError::Backend(StoreFailure::Io),
            Fail::Busy => StoreError::Backend(StoreFailure::Busy),
            Fail::Other => StoreError::Backend(StoreFailure::Other),
            Fail::Overloaded => StoreError::Overloaded,
            Fail::TimedOut => StoreError::TimedOut,
        };
        self.complete(StoreDone { id: req.id, result: Err(error) });
    }

    fn store_password_first(&mut self) {
        let password =
            |op: &StoreOp| matches!(op, StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. });
        let Some(at) = self.pending.iter().position(|r| password(&r.op)) else { return };
        let req = self.pending.remove(at).unwrap();
        let result = Ok(self.store.execute(&req.op));
        self.complete(StoreDone { id: req.id, result });
    }

    /// Moves time to `to`, firing every deadline on the way at its moment.
    fn advance_to(&mut self, to: std::time::Instant) {
        loop {
            self.settle();
            match self.poll_timeout() {
                Some(t) if t <= to => {
                    if t > self.now.instant {
                        self.now = self.now.after(t - self.now.instant);
                    }
                    self.fire();
                }
                _ => break,
            }
        }
        if to > self.now.instant {
            self.now = self.now.after(to - self.now.instant);
        }
        self.fire();
        self.settle();
    }

    fn poll_timeout(&self) -> Option<std::time::Instant> {
        let shards = self.shards.iter().filter_map(Shard::poll_timeout).min();
        let hub = self.hub.as_ref().and_then(Hub::poll_timeout);
        shards.into_iter().chain(hub).min()
    }

    fn fire(&mut self) {
        for shard in &mut self.shards {
            shard.handle_timeout(self.now);
        }
        if let Some(hub) = &mut self.hub {
            hub.handle_input(self.now, HubInput::Timeout);
        }
    }

    /// The runtime's loop with time standing still: actions, hand-offs
    /// between shards and hub, and due timers, until nothing moves.
    fn settle(&mut self) {
        for round in 0.. {
            assert!(round < 10_000, "the core spins at {:?}", self.now);
            let mut progress = false;
            for s in 0..self.shards.len() {
                while let Some(action) = self.shards[s].poll_action() {
                    progress = true;
                    match action {
                        ShardAction::Write(key) => {
                            assert!(key_of(&self.clients, s, key).is_some(), "Write for unknown key {key}");
                        }
                        ShardAction::Close(key) => {
                            let i =
                                key_of(&self.clients, s, key).unwrap_or_else(|| panic!("Close for unknown key {key}"));
                            self.clients[i].key = None;
                        }
                        ShardAction::Store(requests) => self.pending.extend(requests),
                    }
                }
                let batch = self.shards[s].take_to_hub();
                if !batch.is_empty() {
                    progress = true;
                    let hub = self.hub.as_mut().expect("a shard with its hub handed something over");
                    for msg in batch {
                        hub.handle_input(self.now, HubInput::FromShard(msg));
                    }
                }
            }
            if let Some(hub) = &mut self.hub {
                while let Some(action) = hub.poll_action() {
                    progress = true;
                    match action {
                        HubAction::Store(requests) => self.pending.extend(requests),
                        HubAction::ToShard(s, messages) => self.shards[usize::from(s)].handle_hub(self.now, messages),
                    }
                }
            }
            if !progress && self.poll_timeout().is_some_and(|t| t <= self.now.instant) {
                progress = true;
                self.fire();
            }
            if !progress {
                break;
            }
        }
    }

    fn check(&self) {
        let bound = self.config.max_queue + GOODBYE;
        for c in &self.clients {
            if let Some(key) = c.key {
                let queued = self.shards[c.shard].queued(key);
                assert!(queued <= bound, "{queued} bytes queued for key {key}, over {bound}");
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::OpenHttp { shard } => self.open(*shard, Transport::Http),
            Op::OpenLine { shard } => self.open(*shard, Transport::Line),
            Op::Raw { conn, bytes } => self.send(*conn, &bytes.0),
            Op::Upgrade { conn, to } => {
                let path = match to {
                    UpgradeTo::Ws => "/ws".to_string(),
                    UpgradeTo::WsToken(t) => format!("/ws?token={}", self.token(*t)),
                    UpgradeTo::Echo => "/echo".to_string(),
                };
                self.send(*conn, &wire::upgrade(&path));
            }
            Op::Http { conn, call, close } => {
                let close_header = [("Connection", "close")];
                let headers: &[(&str, &str)] = if *close { &close_header } else { &[] };
                let credentials = |user: u8, good: bool| {
                    let user = name(user);
                    let password = if good { password(user) } else { "wrong-password".into() };
                    json!({"user": user, "password": password}).to_string()
                };
                let bytes = match call {
                    HttpCall::Register { user, good_password } => {
                        wire::request("POST", "/api/register", credentials(*user, *good_password).as_bytes(), headers)
                    }
                    HttpCall::Login { user, good_password } => {
                        wire::request("POST", "/api/login", credentials(*user, *good_password).as_bytes(), headers)
                    }
                    HttpCall::Logout { token } => {
                        let auth = format!("Bearer {}", self.token(*token));
                        let mut h = headers.to_vec();
                        h.push(("Authorization", auth.as_str()));
                        wire::request("POST", "/api/logout", b"", &h)
                    }
                    HttpCall::Healthz => wire::request("GET", "/healthz", b"", headers),
                    HttpCall::Metrics => wire::request("GET", "/metrics", b"", headers),
                    HttpCall::NotFound => wire::request("GET", "/nowhere", b"", headers),
                };
                self.send(*conn, &bytes);
            }
            Op::Request { conn, req, reference, fragments, mask } => {
                let text = self.request_text(req, *reference);
                let bytes = text.as_bytes();
                let pieces = 1 + usize::from(*fragments % 4);
                let size = bytes.len().div_ceil(pieces).max(1);
                let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![bytes] } else { bytes.chunks(size).collect() };
                let mut out = Vec::new();
                for (n, chunk) in chunks.iter().enumerate() {
                    let opcode = if n == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
                    out.extend(wire::client_frame(opcode, n + 1 == chunks.len(), chunk, *mask));
                }
                self.send(*conn, &out);
            }
            Op::Frame { conn, kind, fin, payload: Blob(payload), mask } => {
                let (opcode, fin, payload) = match kind {
                    FrameKind::Text => (OpCode::Data(Data::Text), *fin, payload.clone()),
                    FrameKind::Binary => (OpCode::Data(Data::Binary), *fin, payload.clone()),
                    FrameKind::Continuation => (OpCode::Data(Data::Continue), *fin, payload.clone()),
                    FrameKind::Ping => {
                        (OpCode::Control(Control::Ping), true, payload[..payload.len().min(125)].to_vec())
                    }
                    FrameKind::Pong => {
                        (OpCode::Control(Control::Pong), true, payload[..payload.len().min(125)].to_vec())
                    }
                    FrameKind::Close { code } => {
                        let mut p = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                        if code.is_some() {
                            p.extend_from_slice(&payload[..payload.len().min(123)]);
                        }
                        (OpCode::Control(Control::Close), true, p)
                    }
                };
                self.send(*conn, &wire::client_frame(opcode, fin, &payload, *mask));
            }
            Op::Line { conn, line, crlf } => {
                let mut text = match line {
                    LineCmd::Login { name: n } => name(*n).to_string(),
                    LineCmd::Password { user, register, good_password } => {
                        let command = if *register { "/register" } else { "/login" };
                        let user = name(*user);
                        let password = if *good_password { password(user) } else { "wrong-password".into() };
                        format!("{command} {user} {password}")
                    }
                    LineCmd::Join { room: r } => format!("/join {}", room(*r)),
                    LineCmd::Leave { room: None } => "/leave".into(),
                    LineCmd::Leave { room: Some(r) } => format!("/leave {}", room(*r)),
                    LineCmd::Msg { to, text } => format!("/msg {} {text}", name(*to)),
                    LineCmd::Who => "/who".into(),
                    LineCmd::Rooms => "/rooms".into(),
                    LineCmd::History { n: None } => "/history".into(),
                    LineCmd::History { n: Some(n) } => format!("/history {n}"),
                    LineCmd::Help => "/help".into(),
                    LineCmd::Quit => "/quit".into(),
                    LineCmd::Say(text) => text.clone(),
                };
                text.push_str(if *crlf { "\r\n" } else { "\n" });
                self.send(*conn, text.as_bytes());
            }
            Op::Write { conn, n } => self.write(*conn, *n),
            Op::PeerClosed { conn } => self.peer_closed(*conn),
            Op::Advance { ms } => self.advance_to(self.now.instant + Duration::from_millis(u64::from(*ms))),
            Op::AdvanceSecs { s } => self.advance_to(self.now.instant + Duration::from_secs(u64::from(*s))),
            Op::StoreDone { n } => self.store_done(1 + usize::from(*n % 16)),
            Op::StoreIdle => {
                for _ in 0..1000 {
                    if self.pending.is_empty() {
                        break;
                    }
                    self.store_done(1);
                }
            }
            Op::StoreFail { kind } => self.store_fail(*kind),
            Op::StorePasswordFirst => self.store_password_first(),
            Op::Shutdown => {
                for shard in &mut self.shards {
                    shard.shutdown(self.now);
                }
            }
        }
    }

    fn request_text(&self, req: &Req, reference: Option<u8>) -> String {
        let target = |room_key: &str, room_i: Option<u8>, user_key: &str, user_i: u8| match room_i {
            Some(r) => json!({ room_key: room(r) }),
            None => json!({ user_key: name(user_i) }),
        };
        let mut v = match req {
            Req::HelloGuest { name: n } => json!({"type":"hello","name":name(*n)}),
            Req::HelloToken { token } => json!({"type":"hello","token":self.token(*token)}),
            Req::Join { room: r, since } => json!({"type":"join","room":room(*r),"since":since}),
            Req::Leave { room: r } => json!({"type":"leave","room":room(*r)}),
            Req::SendRoom { room: r, text, id } => {
                json!({"type":"send","room":room(*r),"text":text,"id":id.map(|i| format!("c{i}"))})
            }
            Req::SendUser { to, text, id } => {
                json!({"type":"send","to":name(*to),"text":text,"id":id.map(|i| format!("c{i}"))})
            }
            Req::History { room: r, with, before, limit } => {
                let mut v = target("room", *r, "with", *with);
                v["type"] = "history".into();
                v["before"] = json!(before);
                v["limit"] = json!(limit);
                v
            }
            Req::Who { room: r, limit } => json!({"type":"who","room":r.map(room),"limit":limit}),
            Req::Rooms { limit } => json!({"type":"rooms","limit":limit}),
            Req::Conversations { limit } => json!({"type":"conversations","limit":limit}),
            Req::Read { room: r, with, seq } => {
                let mut v = target("room", *r, "with", *with);
                v["type"] = "read".into();
                v["seq"] = json!(seq);
                v
            }
            Req::Typing { room: r, to } => {
                let mut v = target("room", *r, "to", *to);
                v["type"] = "typing".into();
                v
            }
            Req::Ack { with, seq } => json!({"type":"ack","with":name(*with),"seq":seq}),
            Req::Ping => json!({"type":"ping"}),
            Req::Text(t) => return t.clone(),
        };
        if let Some(r) = reference {
            v["ref"] = format!("r{r}").into();
        }
        v.to_string()
    }
}

fuzz_target!(|input: Input| {
    let mut world = World::new(&input.knobs);
    for op in input.ops.iter().take(256) {
        world.apply(op);
        world.settle();
        world.check();
    }
    world.advance_to(world.now.instant + Duration::from_secs(600));
    world.check();
});
