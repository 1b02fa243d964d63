//! Scripted runs: a node in the simulation driven by a sequence of
//! operations, as a runtime and its clients would (connections opening,
//! bytes, well-formed upgrades, API calls, JSON requests in fragmented
//! frames, lines, partial writes, hang-ups, time, storage latency, failures
//! and reordering, shutdown). The `core` fuzz target generates these
//! (feature `arbitrary`), and a crash it finds becomes a named regression
//! test by pasting the input it prints (`cargo fuzz fmt core ARTIFACT`)
//! into `natter-sim`'s tests and calling [`run`].
//!
//! Checked after every operation, besides what [`Sim`] itself asserts (no
//! output for an unknown connection, no livelock, every byte the server
//! wrote parses as HTTP, frames or lines): nothing panicked, and every
//! outbox stayed within `max_queue` plus one goodbye.

use std::time::Duration;

use natter_core::store::{StoreError, StoreFailure};
use natter_core::Config;
use serde_json::json;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::{wire, Client, FakeStore, Sim, Topology, WriteMode, START_UNIX_MS};

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

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Input {
    pub knobs: Knobs,
    pub ops: Vec<Op>,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Knobs {
    /// Two shards and a hub on its own, instead of one shard with the hub.
    pub remote_hub: bool,
    pub max_queue: u16,
    pub max_frame: u16,
    pub max_text: u8,
    pub max_line: u8,
    pub rate: u8,
    pub burst: u8,
    pub max_rooms: u8,
    pub max_connections: u8,
    pub no_guests: bool,
    pub token_ttl_s: u16,
}

impl Knobs {
    /// The node's configuration these knobs make.
    pub fn config(&self) -> Config {
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

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
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
#[derive(Debug, Clone)]
pub struct Blob(pub Vec<u8>);

#[cfg(feature = "arbitrary")]
impl<'a> arbitrary::Arbitrary<'a> for Blob {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Blob(<&[u8] as arbitrary::Arbitrary>::arbitrary(u)?.to_vec()))
    }
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum UpgradeTo {
    Ws,
    /// `/ws?token=`: index into the known tokens, past the end a bad one.
    WsToken(u8),
    Echo,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum HttpCall {
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

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Req {
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

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum FrameKind {
    Text,
    Binary,
    Continuation,
    Ping,
    Pong,
    Close { code: Option<u16> },
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum LineCmd {
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

#[derive(Debug, Clone, Copy)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Fail {
    Io,
    Busy,
    Other,
    Overloaded,
    TimedOut,
}

/// What a script did, for tests that must know it did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ran {
    /// Events the clients read (responses, frames, lines).
    pub events: usize,
    /// Storage requests completed.
    pub stored: u64,
}

/// Runs `input` (at most 256 operations) and checks the node after each;
/// panics with the seed and topology on the first broken promise.
pub fn run(input: &Input) -> Ran {
    let mut script = Script::new(&input.knobs);
    for op in input.ops.iter().take(256) {
        script.apply(op);
        script.check();
    }
    script.sim.advance(Duration::from_secs(600));
    script.check();
    let sim = &script.sim;
    Ran { events: sim.clients().map(|c| sim.log(c).len()).sum(), stored: sim.store().completed() }
}

struct Script {
    sim: Sim,
    tokens: Vec<String>,
    bound: usize,
}

impl Script {
    fn new(knobs: &Knobs) -> Script {
        let config = knobs.config();
        let bound = config.max_queue + GOODBYE;
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
        // Storage answers only when time moves, so that operations land
        // while requests are in flight.
        store.set_latency(Duration::from_millis(5), Duration::from_millis(20));
        let topology = if knobs.remote_hub { Topology::Threads(2) } else { Topology::Local };
        let mut sim =
            Sim::build_with(topology, config, store, u64::from(knobs.max_queue) << 16 | u64::from(knobs.rate));
        // Clients read only when an operation says so.
        sim.set_default_write_mode(WriteMode::Stalled);
        Script { sim, tokens, bound }
    }

    /// Connections come from 4 addresses in turn, so that both the
    /// per-address cap and the server's are reached.
    fn next_peer(&mut self) {
        let n = self.sim.clients().count() as u8;
        self.sim.set_default_peer(std::net::IpAddr::from([192, 0, 2, 1 + n % 4]));
    }

    /// The open client `conn` picks, if any.
    fn client(&self, conn: u8) -> Option<Client> {
        let open: Vec<Client> = self.sim.clients().filter(|&c| self.sim.is_open(c)).collect();
        (!open.is_empty()).then(|| open[usize::from(conn) % open.len()])
    }

    fn send(&mut self, conn: u8, bytes: &[u8]) {
        if let Some(c) = self.client(conn) {
            self.sim.send_raw(c, bytes);
        }
    }

    fn token(&self, i: u8) -> String {
        self.tokens.get(usize::from(i)).cloned().unwrap_or_else(|| "no-such-token".into())
    }

    fn check(&self) {
        let queued = self.sim.max_queued();
        assert!(queued <= self.bound, "an outbox held {queued} bytes, over {} ({:?})", self.bound, self.sim);
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::OpenHttp { .. } => {
                self.next_peer();
                self.sim.connect_http();
            }
            Op::OpenLine { .. } => {
                self.next_peer();
                self.sim.line_client();
            }
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
                let bytes = self.http_request(call, *close);
                self.send(*conn, &bytes);
            }
            Op::Request { conn, req, reference, fragments, .. } => {
                let text = self.request_text(req, *reference);
                self.send_fragmented(*conn, text.as_bytes(), *fragments);
            }
            Op::Frame { conn, kind, fin, payload: Blob(payload), .. } => {
                let (opcode, fin, payload) = frame(kind, *fin, payload);
                if let Some(c) = self.client(*conn) {
                    self.sim.send_frame(c, opcode, fin, &payload);
                }
            }
            Op::Line { conn, line, crlf } => {
                let mut text = line_text(line);
                text.push_str(if *crlf { "\r\n" } else { "\n" });
                self.send(*conn, text.as_bytes());
            }
            Op::Write { conn, n } => {
                if let Some(c) = self.client(*conn) {
                    let mode = if *n == 0 { WriteMode::Full } else { WriteMode::Chunks(usize::from(*n)) };
                    self.sim.set_write_mode(c, mode);
                }
            }
            Op::PeerClosed { conn } => {
                if let Some(c) = self.client(*conn) {
                    self.sim.disconnect(c);
                }
            }
            Op::Advance { ms } => self.sim.advance(Duration::from_millis(u64::from(*ms))),
            Op::AdvanceSecs { s } => self.sim.advance(Duration::from_secs(u64::from(*s))),
            Op::StoreDone { n } => {
                for _ in 0..=(n % 16) {
                    self.sim.step();
                }
            }
            Op::StoreIdle => self.sim.run_until_idle(),
            Op::StoreFail { kind } => {
                let store = self.sim.store_mut();
                store.fail_as(kind.error());
                store.fail_next(1);
            }
            // Password operations overtake the rest from now on.
            Op::StorePasswordFirst => self.sim.store_mut().set_password_latency(Duration::ZERO, Duration::ZERO),
            Op::Shutdown => self.sim.shutdown(),
        }
    }

    fn send_fragmented(&mut self, conn: u8, bytes: &[u8], fragments: u8) {
        let Some(c) = self.client(conn) else { return };
        let pieces = 1 + usize::from(fragments % 4);
        let size = bytes.len().div_ceil(pieces).max(1);
        let chunks: Vec<&[u8]> = if bytes.is_empty() { vec![bytes] } else { bytes.chunks(size).collect() };
        for (n, chunk) in chunks.iter().enumerate() {
            let opcode = if n == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            self.sim.send_frame(c, opcode, n + 1 == chunks.len(), chunk);
        }
    }

    fn http_request(&self, call: &HttpCall, close: bool) -> Vec<u8> {
        let close_header = [("Connection", "close")];
        let headers: &[(&str, &str)] = if close { &close_header } else { &[] };
        let credentials = |user: u8, good: bool| {
            let user = name(user);
            let password = if good { password(user) } else { "wrong-password".into() };
            json!({"user": user, "password": password}).to_string()
        };
        match call {
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

impl Fail {
    fn error(self) -> StoreError {
        match self {
            Fail::Io => StoreError::Backend(StoreFailure::Io),
            Fail::Busy => StoreError::Backend(StoreFailure::Busy),
            Fail::Other => StoreError::Backend(StoreFailure::Other),
            Fail::Overloaded => StoreError::Overloaded,
            Fail::TimedOut => StoreError::TimedOut,
        }
    }
}

fn frame(kind: &FrameKind, fin: bool, payload: &[u8]) -> (OpCode, bool, Vec<u8>) {
    let control = |p: &[u8]| p[..p.len().min(125)].to_vec();
    match kind {
        FrameKind::Text => (OpCode::Data(Data::Text), fin, payload.to_vec()),
        FrameKind::Binary => (OpCode::Data(Data::Binary), fin, payload.to_vec()),
        FrameKind::Continuation => (OpCode::Data(Data::Continue), fin, payload.to_vec()),
        FrameKind::Ping => (OpCode::Control(Control::Ping), true, control(payload)),
        FrameKind::Pong => (OpCode::Control(Control::Pong), true, control(payload)),
        FrameKind::Close { code } => {
            let mut p = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
            if code.is_some() {
                p.extend_from_slice(&payload[..payload.len().min(123)]);
            }
            (OpCode::Control(Control::Close), true, p)
        }
    }
}

fn line_text(line: &LineCmd) -> String {
    match line {
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
    }
}
