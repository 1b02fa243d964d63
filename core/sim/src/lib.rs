//! Deterministic simulation harness: the node's machines in the topology
//! that runs (N shards and a hub with shuffled mail, or one shard with the
//! hub beside it, see [`Topology`]), a [`FakeStore`], a fake clock and fake
//! clients, all in one thread. It uses only the core's public API.
//!
//! Nothing here reads a clock or sleeps. Time moves only when the test says
//! so ([`Sim::advance`]) or when it waits for something ([`Sim::step`],
//! [`Sim::run_until_idle`]), and then it jumps to the next deadline or
//! storage completion. One seed ([`Sim::seed`], set with the environment
//! variable `NATTER_SIM_SEED`) drives every random choice, and is printed
//! when a test fails with the harness in scope.
//!
//! ```
//! # use natter_core::Config;
//! # use natter_sim::Sim;
//! # use serde_json::json;
//! let mut sim = Sim::new(Config::default());
//! let alice = sim.guest("alice");
//! let ok = sim.req(alice, json!({"type":"join","room":"lobby"}));
//! assert_eq!(ok["type"], "ok");
//! ```
//!
//! The topology is [`Topology::Threads`] with two shards unless the test
//! picks one ([`Sim::build_with`]) or `NATTER_SIM_TOPOLOGY` says `local`
//! or a number of shards.

mod cluster;
pub mod hub_bench;
mod machines;
mod rng;
pub mod script;
mod store;
pub mod wire;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

pub use cluster::{BusFaults, Cluster, FakeBus, NodeClient};
pub use machines::{replay, Recorded, Topology};
pub use rng::Rng;
pub use store::{FailPredicate, FakeStore};
pub use wire::{Event, HttpResponse};

use machines::{Effect, Machines};
use natter_core::bus::{BusCommand, BusEvent};
use natter_core::store::{StoreOp, StoreValue, StoredRoom};
use natter_core::{Config, ConnKey, Hub, Metrics, Now, ShardInput, Transport};

/// The wall clock at the start of every simulation.
pub const START_UNIX_MS: u64 = 1_700_000_000_000;

/// The seed used when `NATTER_SIM_SEED` is not set.
pub const DEFAULT_SEED: u64 = 0x6e61_7474_6572;

/// The one real `Instant` the harness uses, as its epoch: every simulated
/// time is an offset from it, so runs do not depend on when they happen.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // The harness's only clock read; clippy.toml bans it in the core proper.
    #[allow(clippy::disallowed_methods)]
    *EPOCH.get_or_init(Instant::now)
}

/// The seed from `NATTER_SIM_SEED` (decimal or `0x` hex), if set. It wins
/// over every seed a test gives, so that a printed seed replays the run.
pub fn env_seed() -> Option<u64> {
    let s = std::env::var("NATTER_SIM_SEED").ok()?;
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The topology from `NATTER_SIM_TOPOLOGY` (`local`, or a number of
/// shards), if set.
pub fn env_topology() -> Option<Topology> {
    let s = std::env::var("NATTER_SIM_TOPOLOGY").ok()?;
    match s.trim() {
        "local" => Some(Topology::Local),
        n => n.parse().ok().map(Topology::Threads),
    }
}

/// A connection: its shard and its key there.
type Conn = (u16, ConnKey);

/// A fake client, by handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Client(pub usize);

/// How a client's socket takes the server's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Everything queued, at once.
    Full,
    /// At most this many bytes per write call (partial writes).
    Chunks(usize),
    /// Random-size writes between 1 byte and everything.
    Random,
    /// Nothing: the client stopped reading, its socket buffer is full.
    Stalled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// HTTP, until a 101.
    Http,
    Ws,
    Line,
}

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The server dropped the socket (`ShardAction::Close`).
    ByServer,
    /// The client hung up.
    ByClient,
}

#[derive(Debug)]
struct ClientState {
    kind: Kind,
    conn: Option<Conn>,
    rx: Vec<u8>,
    log: Vec<Event>,
    unread: VecDeque<Event>,
    mode: WriteMode,
    auto_pong: bool,
    ended: Option<Ended>,
    next_ref: u64,
}

/// The simulation. See the module docs.
pub struct Sim {
    machines: Machines,
    topology: Topology,
    /// What the node was built from, for [`Sim::replay`].
    boot: ((Vec<String>, Vec<StoredRoom>), Now),
    store: FakeStore,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    now: Now,
    seed: u64,
    rng: Rng,
    clients: Vec<ClientState>,
    by_conn: HashMap<Conn, usize>,
    /// Connections with a `Write` hint whose outbox is not empty yet.
    hinted: BTreeSet<Conn>,
    default_mode: WriteMode,
    default_peer: IpAddr,
    /// The most bytes ever queued for one connection.
    max_queued: usize,
    /// What the hub asked of the bus, for [`Cluster`] to carry.
    bus_out: Vec<BusCommand>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("topology", &self.topology)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let topology = match self.topology {
                Topology::Local => "local".to_string(),
                Topology::Threads(n) => n.to_string(),
            };
            eprintln!("simulation failed: rerun with NATTER_SIM_SEED={:#x} NATTER_SIM_TOPOLOGY={topology}", self.seed);
        }
    }
}

impl Sim {
    /// A node with `config`, an empty store, and the seed from the
    /// environment.
    pub fn new(config: Config) -> Sim {
        Sim::with_store(config, FakeStore::default())
    }

    /// A node whose store has accounts `(user, password)`.
    pub fn with_users(config: Config, users: &[(&str, &str)]) -> Sim {
        let mut store = FakeStore::default();
        for (user, password) in users {
            store.add_user(user, password);
        }
        Sim::with_store(config, store)
    }

    /// A node that starts from what `store` holds.
    pub fn with_store(config: Config, store: FakeStore) -> Sim {
        Sim::build(config, store, env_seed().unwrap_or(DEFAULT_SEED))
    }

    /// A node from `store` with an explicit seed (`NATTER_SIM_SEED` still
    /// wins, so a failure can be replayed).
    pub fn build(config: Config, store: FakeStore, seed: u64) -> Sim {
        Sim::build_with(env_topology().unwrap_or(Topology::Threads(2)), config, store, seed)
    }

    /// [`Sim::build`] in `topology`, whatever `NATTER_SIM_TOPOLOGY` says
    /// (`NATTER_SIM_SEED` still wins, so a failure can be replayed).
    pub fn build_with(topology: Topology, config: Config, mut store: FakeStore, seed: u64) -> Sim {
        let seed = env_seed().unwrap_or(seed);
        store.reseed(seed);
        let now = Now { instant: epoch(), unix_ms: START_UNIX_MS };
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let snapshot = Self::snapshot(&mut store);
        let machines = Machines::new(topology, &config, &metrics, snapshot.clone(), now);
        Sim {
            machines,
            topology,
            boot: (snapshot, now),
            store,
            config,
            metrics,
            now,
            seed,
            rng: Rng::new(seed),
            clients: Vec::new(),
            by_conn: HashMap::new(),
            hinted: BTreeSet::new(),
            default_mode: WriteMode::Full,
            default_peer: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            max_queued: 0,
            bus_out: Vec::new(),
        }
    }

    fn snapshot(store: &mut FakeStore) -> (Vec<String>, Vec<StoredRoom>) {
        let StoreValue::Snapshot { users, rooms } = store.execute(&StoreOp::LoadAll) else {
            panic!("the fake store failed LoadAll");
        };
        (users, rooms)
    }

    // ---- accessors ------------------------------------------------------

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current simulated time.
    pub fn now(&self) -> Now {
        self.now
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The topology the node runs in.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Open connections, on every shard.
    pub fn connections(&self) -> usize {
        (0..self.machines.shard_count()).map(|i| self.machines.shard(i).len()).sum()
    }

    /// The hub, for its queries.
    pub fn hub(&self) -> &Hub {
        self.machines.hub()
    }

    /// The earliest deadline of any machine.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.machines.poll_timeout()
    }

    /// From now on, record every input fed to a machine and every output
    /// it gave (see [`Sim::replay`]).
    pub fn record(&mut self) {
        self.machines.start_recording();
    }

    /// The inputs recorded since [`Sim::record`].
    pub fn recording(&self) -> &[Recorded] {
        self.machines.recording()
    }

    /// The outputs recorded since [`Sim::record`], rendered.
    pub fn trace(&self) -> &[String] {
        self.machines.trace()
    }

    /// Feeds the recording to fresh machines built as this node was
    /// (recording must have begun before the first input): returns their
    /// outputs, which equal [`Sim::trace`] if the machines are deterministic.
    pub fn replay(&self) -> Vec<String> {
        let (snapshot, start) = self.boot.clone();
        replay(self.topology, (*self.config).clone(), snapshot, start, self.recording())
    }

    /// The store.
    pub fn store(&self) -> &FakeStore {
        &self.store
    }

    /// The store, to change its knobs.
    pub fn store_mut(&mut self) -> &mut FakeStore {
        &mut self.store
    }

    /// The random generator every choice of the run comes from.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The most bytes that were ever queued for one connection.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// How new clients take bytes.
    pub fn set_default_write_mode(&mut self, mode: WriteMode) {
        self.default_mode = mode;
    }

    /// The address new clients connect from.
    pub fn set_default_peer(&mut self, peer: IpAddr) {
        self.default_peer = peer;
    }

    /// Every client handle so far.
    pub fn clients(&self) -> impl Iterator<Item = Client> {
        (0..self.clients.len()).map(Client)
    }

    // ---- connections ----------------------------------------------------

    /// A raw HTTP connection that has sent nothing yet.
    pub fn connect_http(&mut self) -> Client {
        self.connect(Transport::Http, Kind::Http)
    }

    /// A line-protocol connection that has sent nothing yet.
    pub fn line_client(&mut self) -> Client {
        self.connect(Transport::Line, Kind::Line)
    }

    fn connect(&mut self, transport: Transport, kind: Kind) -> Client {
        // The kernel hands a connection to whichever loop accepts first.
        let shard = self.rng.below(u64::from(self.machines.shard_count())) as u16;
        let open = ShardInput::Open { transport, peer: self.default_peer };
        let key = self.machines.feed(self.now, shard, open).expect("Open returns the new key");
        let conn = (shard, key);
        let id = self.clients.len();
        self.clients.push(ClientState {
            kind,
            conn: Some(conn),
            rx: Vec::new(),
            log: Vec::new(),
            unread: VecDeque::new(),
            mode: self.default_mode,
            auto_pong: true,
            ended: None,
            next_ref: 0,
        });
        let previous = self.by_conn.insert(conn, id);
        assert!(previous.is_none(), "shard {shard} handed out key {key} twice");
        self.settle();
        Client(id)
    }

    /// A WebSocket client on `/ws`, upgraded, before `hello`. Time does not
    /// move: a plain upgrade needs no storage.
    pub fn ws_client(&mut self) -> Client {
        let c = self.connect_http();
        self.send_raw(c, &wire::upgrade("/ws"));
        let res = self.take(c).into_iter().find_map(|e| match e {
            Event::Http(r) => Some(r),
            _ => None,
        });
        let res = res.expect("no response to the upgrade");
        assert_eq!(res.status, 101, "upgrade refused: {}", res.text());
        assert_eq!(res.header("sec-websocket-accept"), Some(wire::WS_ACCEPT));
        c
    }

    /// Sends an upgrade request for `path` on a new connection and runs
    /// until idle; the response (101 or an error) is the first event.
    pub fn ws_upgrade(&mut self, path: &str) -> Client {
        let c = self.connect_http();
        self.send_upgrade(c, path);
        c
    }

    /// Sends an upgrade request for `path` on an open HTTP connection and
    /// runs until idle; the response (101 or an error) is the next event.
    pub fn send_upgrade(&mut self, c: Client, path: &str) {
        self.send_raw(c, &wire::upgrade(path));
        self.run_until_idle();
    }

    /// A guest WebSocket session named `name`, welcomed.
    pub fn guest(&mut self, name: &str) -> Client {
        let c = self.ws_client();
        let welcome = self.req(c, json!({"type":"hello","name":name}));
        assert_eq!(welcome["type"], "welcome", "guest hello for {name}: {welcome}");
        c
    }

    /// A WebSocket session of registered `user` with a fresh token, welcomed.
    pub fn login(&mut self, user: &str) -> Client {
        let token = self.token(user);
        let c = self.ws_client();
        let welcome = self.req(c, json!({"type":"hello","token":token}));
        assert_eq!(welcome["type"], "welcome", "token hello for {user}: {welcome}");
        c
    }

    /// A token for `user` valid for the configured TTL from now, issued
    /// straight into the store.
    pub fn token(&mut self, user: &str) -> String {
        let expires = self.now.unix_ms + self.config.token_ttl.as_millis() as u64;
        self.store.issue_token(user, expires)
    }

    /// A line-protocol guest session, past `* welcome`.
    pub fn line_guest(&mut self, name: &str) -> Client {
        let c = self.line_client();
        self.send_line(c, name);
        self.run_until_idle();
        let lines = self.lines(c);
        assert!(lines.iter().any(|l| *l == format!("* welcome {name}")), "line login for {name}: {lines:?}");
        c
    }

    /// The client hangs up.
    pub fn disconnect(&mut self, c: Client) {
        let st = &mut self.clients[c.0];
        if let Some(conn) = st.conn.take() {
            st.ended = Some(Ended::ByClient);
            self.by_conn.remove(&conn);
            self.hinted.remove(&conn);
            self.machines.feed(self.now, conn.0, ShardInput::Closed { conn: conn.1 });
            self.settle();
        }
    }

    /// Whether the connection is still up.
    pub fn is_open(&self, c: Client) -> bool {
        self.clients[c.0].conn.is_some()
    }

    /// Who ended the connection, if it ended.
    pub fn ended(&self, c: Client) -> Option<Ended> {
        self.clients[c.0].ended
    }

    /// The connection's shard and key there, while it is open.
    pub fn conn(&self, c: Client) -> Option<(u16, ConnKey)> {
        self.clients[c.0].conn
    }

    /// Bytes the shard holds for the client.
    pub fn queued(&self, c: Client) -> usize {
        self.conn(c).map_or(0, |(i, k)| self.machines.shard(i).queued(k))
    }

    /// How the client's socket takes bytes from now on.
    pub fn set_write_mode(&mut self, c: Client, mode: WriteMode) {
        self.clients[c.0].mode = mode;
        if mode != WriteMode::Stalled {
            self.settle();
        }
    }

    /// Whether the client answers pings with pongs by itself (browsers do).
    pub fn set_auto_pong(&mut self, c: Client, on: bool) {
        self.clients[c.0].auto_pong = on;
    }

    // ---- sending --------------------------------------------------------

    /// Raw bytes from the client.
    pub fn send_raw(&mut self, c: Client, bytes: &[u8]) {
        if let Some((shard, conn)) = self.clients[c.0].conn {
            self.feed(shard, ShardInput::Received { conn, data: bytes.into() });
            self.settle();
        }
    }

    /// A masked WebSocket frame.
    pub fn send_frame(&mut self, c: Client, opcode: OpCode, fin: bool, payload: &[u8]) {
        let frame = wire::client_frame(opcode, fin, payload, self.mask());
        self.send_raw(c, &frame);
    }

    /// A text frame.
    pub fn send_text(&mut self, c: Client, text: &str) {
        self.send_frame(c, OpCode::Data(Data::Text), true, text.as_bytes());
    }

    /// A text frame holding `value`.
    pub fn send_json(&mut self, c: Client, value: Value) {
        self.send_text(c, &value.to_string());
    }

    /// A close frame with `code`.
    pub fn send_close(&mut self, c: Client, code: u16) {
        self.send_frame(c, OpCode::Control(Control::Close), true, &code.to_be_bytes());
    }

    /// A line (the `\n` is added).
    pub fn send_line(&mut self, c: Client, line: &str) {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.send_raw(c, &bytes);
    }

    fn mask(&mut self) -> [u8; 4] {
        (self.rng.next_u64() as u32).to_be_bytes()
    }

    /// Sends `request` (with a fresh `ref` unless it has one), runs until
    /// idle, and returns the one reply carrying that `ref`; the reply is
    /// removed from the unread events, everything else stays.
    pub fn req(&mut self, c: Client, mut request: Value) -> Value {
        let reference = match request.get("ref").and_then(Value::as_str) {
            Some(r) => r.to_string(),
            None => {
                let st = self.state(c);
                st.next_ref += 1;
                let r = format!("r{}", st.next_ref);
                request["ref"] = Value::String(r.clone());
                r
            }
        };
        self.send_json(c, request.clone());
        self.run_until_idle();
        self.take_reply(c, &reference).unwrap_or_else(|| {
            panic!("no reply to {request} (seed {:#x}); unread: {:?}", self.seed, self.clients[c.0].unread)
        })
    }

    /// Removes and returns the unread reply (`ok`, `error`, `pong` or
    /// `welcome`) with `ref`; panics if there are two.
    pub fn take_reply(&mut self, c: Client, reference: &str) -> Option<Value> {
        let unread = &mut self.clients[c.0].unread;
        let matches: Vec<usize> = unread
            .iter()
            .enumerate()
            .filter(|(_, e)| e.json().is_some_and(|v| v["ref"] == reference))
            .map(|(i, _)| i)
            .collect();
        assert!(matches.len() <= 1, "{} replies to ref {reference}: {unread:?}", matches.len());
        let i = *matches.first()?;
        unread.remove(i).and_then(|e| e.json().cloned())
    }

    /// One HTTP request on a fresh connection from the default address; the
    /// client hangs up after the response.
    pub fn http(&mut self, method: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let peer = self.default_peer;
        self.http_from(peer, method, path, body, headers)
    }

    /// [`Sim::http`] from `peer`.
    pub fn http_from(
        &mut self,
        peer: IpAddr,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let saved = std::mem::replace(&mut self.default_peer, peer);
        let c = self.connect_http();
        self.default_peer = saved;
        self.send_raw(c, &wire::request(method, path, body.as_bytes(), headers));
        self.run_until_idle();
        let res = self.take(c).into_iter().find_map(|e| match e {
            Event::Http(r) => Some(r),
            _ => None,
        });
        self.disconnect(c);
        res.unwrap_or_else(|| panic!("no response to {method} {path} (seed {:#x})", self.seed))
    }

    // ---- reading ----------------------------------------------------------

    /// Every event the client read, from the start.
    pub fn log(&self, c: Client) -> &[Event] {
        &self.clients[c.0].log
    }

    /// Events read since the last `take`.
    pub fn take(&mut self, c: Client) -> Vec<Event> {
        self.clients[c.0].unread.drain(..).collect()
    }

    /// JSON frames read since the last `take` (other events are dropped).
    pub fn take_json(&mut self, c: Client) -> Vec<Value> {
        self.take(c).into_iter().filter_map(|e| e.json().cloned()).collect()
    }

    /// JSON frames of type `kind` since the last `take` (everything else
    /// unread is dropped).
    pub fn take_kind(&mut self, c: Client, kind: &str) -> Vec<Value> {
        self.take_json(c).into_iter().filter(|v| v["type"] == kind).collect()
    }

    /// Lines read since the last `take`.
    pub fn lines(&mut self, c: Client) -> Vec<String> {
        self.take(c)
            .into_iter()
            .filter_map(|e| match e {
                Event::Line(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// The code of the close frame the client read, if any.
    pub fn close_code(&self, c: Client) -> Option<u16> {
        self.clients[c.0].log.iter().rev().find_map(|e| match e {
            Event::Close { code, .. } => Some(code.unwrap_or(1005)),
            _ => None,
        })
    }

    /// The reason of the close frame the client read, if any.
    pub fn close_reason(&self, c: Client) -> Option<String> {
        self.clients[c.0].log.iter().rev().find_map(|e| match e {
            Event::Close { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    }

    // ---- time -----------------------------------------------------------

    /// Processes everything that can happen without time moving.
    pub fn settle(&mut self) {
        for round in 0.. {
            assert!(round < 200_000, "livelock at {:?} (seed {:#x})", self.now, self.seed);
            let mut progress = self.drain_effects();
            progress |= self.flush_writes();
            if !progress {
                progress = self.deliver_or_complete();
            }
            if !progress {
                progress = self.machines.fire_timers(self.now);
            }
            if !progress {
                break;
            }
        }
    }

    /// Processes what is pending, then moves time to the next deadline or
    /// storage completion and processes that. `false`: nothing is scheduled.
    pub fn step(&mut self) -> bool {
        self.settle();
        match self.next_event() {
            Some(t) => {
                self.move_to(t);
                self.settle();
                true
            }
            None => false,
        }
    }

    /// Steps until no storage request is in flight.
    pub fn run_until_idle(&mut self) {
        self.settle();
        let mut steps = 0;
        while self.store.in_flight() > 0 || self.machines.mail_in_flight() {
            steps += 1;
            assert!(steps < 1_000_000, "storage never went idle (seed {:#x})", self.seed);
            if !self.step() {
                break;
            }
        }
    }

    /// Moves time forward by `d`, firing every deadline and completion in
    /// between at its own moment.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now.instant + d;
        loop {
            self.settle();
            match self.next_event() {
                Some(t) if t <= target => self.move_to(t),
                _ => break,
            }
        }
        self.move_to(target);
        self.settle();
    }

    pub(crate) fn mail_in_flight(&self) -> bool {
        self.machines.mail_in_flight()
    }

    /// Feeds an event of the cluster's bus to the hub.
    pub fn bus_event(&mut self, event: BusEvent) {
        self.machines.bus_event(self.now, event);
        self.drain_effects();
    }

    /// What the hub asked of the bus since the last call.
    pub fn take_bus_commands(&mut self) -> Vec<BusCommand> {
        std::mem::take(&mut self.bus_out)
    }

    pub(crate) fn next_event(&self) -> Option<Instant> {
        self.machines.poll_timeout().into_iter().chain(self.store.next_due()).min()
    }

    pub(crate) fn move_to(&mut self, t: Instant) {
        if t > self.now.instant {
            self.now = self.now.after(t - self.now.instant);
        }
    }

    /// Shuts the node down as on SIGTERM: every session is closed, and what
    /// can be flushed is.
    pub fn shutdown(&mut self) {
        for i in 0..self.machines.shard_count() {
            self.machines.feed(self.now, i, ShardInput::Shutdown);
        }
        self.settle();
    }

    /// A restart: shutdown, storage commits what it was given (completions
    /// are lost with the process), and a new node loads the store. Every
    /// client is disconnected.
    pub fn restart(&mut self) {
        self.shutdown();
        self.advance(Duration::from_secs(3));
        for i in 0..self.clients.len() {
            if let Some(conn) = self.clients[i].conn.take() {
                self.clients[i].ended = Some(Ended::ByServer);
                self.by_conn.remove(&conn);
            }
        }
        self.hinted.clear();
        self.store.run_abandoned();
        self.metrics = Arc::new(Metrics::default());
        let snapshot = Self::snapshot(&mut self.store);
        self.boot = (snapshot.clone(), self.now);
        self.machines = Machines::new(self.topology, &self.config, &self.metrics, snapshot, self.now);
    }

    // ---- the runtime's loop -------------------------------------------

    fn state(&mut self, c: Client) -> &mut ClientState {
        &mut self.clients[c.0]
    }

    /// Feeds a shard and carries out what it said at once, as a runtime
    /// does: a connection the shard closed is gone before the next input.
    fn feed(&mut self, shard: u16, input: ShardInput<'_>) {
        self.machines.feed(self.now, shard, input);
        self.drain_effects();
    }

    fn drain_effects(&mut self) -> bool {
        let mut any = false;
        while let Some(effect) = self.machines.take_effect() {
            any = true;
            match effect {
                Effect::Write(shard, key) => {
                    assert!(self.by_conn.contains_key(&(shard, key)), "Write for unknown key {key} on shard {shard}");
                    self.hinted.insert((shard, key));
                }
                Effect::Close(shard, key) => {
                    let id = self
                        .by_conn
                        .remove(&(shard, key))
                        .unwrap_or_else(|| panic!("Close for unknown key {key} on shard {shard}"));
                    self.hinted.remove(&(shard, key));
                    let st = &mut self.clients[id];
                    st.conn = None;
                    st.ended = Some(Ended::ByServer);
                }
                Effect::Store(requests) => self.store.submit(self.now.instant, requests),
                Effect::Bus(command) => self.bus_out.push(command),
            }
        }
        any
    }

    /// Delivers mail between threads or a storage completion, whichever
    /// the seed picks when both could happen now.
    fn deliver_or_complete(&mut self) -> bool {
        let store_first = self.machines.mail_in_flight() && self.rng.below(2) == 0;
        if store_first && self.complete_store() {
            return true;
        }
        self.machines.deliver_mail(self.now, &mut self.rng) || self.complete_store()
    }

    /// Writes to every hinted connection as its client's socket allows.
    fn flush_writes(&mut self) -> bool {
        let mut any = false;
        let conns: Vec<Conn> = self.hinted.iter().copied().collect();
        for conn in conns {
            let Some(&id) = self.by_conn.get(&conn) else {
                self.hinted.remove(&conn);
                continue;
            };
            let (shard, key) = conn;
            let queued = self.machines.shard(shard).queued(key);
            self.max_queued = self.max_queued.max(queued);
            let limit = match self.clients[id].mode {
                WriteMode::Stalled => continue,
                WriteMode::Full => usize::MAX,
                WriteMode::Chunks(n) => n.max(1),
                WriteMode::Random => 1 + self.rng.below(queued.max(1) as u64) as usize,
            };
            let mut bytes = Vec::new();
            {
                let mut slices = [IoSlice::new(&[]); 64];
                let n = self.machines.outbox(shard, key, &mut slices);
                for s in &slices[..n] {
                    let room = limit - bytes.len();
                    bytes.extend_from_slice(&s[..s.len().min(room)]);
                    if bytes.len() == limit {
                        break;
                    }
                }
            }
            if bytes.is_empty() {
                if !self.machines.shard(shard).wants_write(key) {
                    self.hinted.remove(&conn);
                }
                continue;
            }
            any = true;
            self.feed(shard, ShardInput::Written { conn: key, n: bytes.len() });
            if !self.machines.shard(shard).wants_write(key) {
                self.hinted.remove(&conn);
            }
            self.clients[id].rx.extend_from_slice(&bytes);
            self.parse(id);
        }
        any
    }

    /// Turns the client's received bytes into events, answering pings.
    fn parse(&mut self, id: usize) {
        let mut pongs = Vec::new();
        loop {
            let st = &mut self.clients[id];
            if st.rx.is_empty() {
                break;
            }
            let parsed = match st.kind {
                Kind::Http => match wire::parse_response(&st.rx) {
                    Ok(Some((res, used))) => {
                        // A 101 only ever answers an upgrade, whoever sent it.
                        if res.status == 101 {
                            st.kind = Kind::Ws;
                        }
                        Some((Event::Http(res), used))
                    }
                    Ok(None) => None,
                    Err(e) => panic!("{e} (seed {:#x}): {:?}", self.seed, String::from_utf8_lossy(&st.rx)),
                },
                Kind::Ws => match wire::parse_frame(&st.rx) {
                    Ok(Some((ev, used))) => Some((ev, used)),
                    Ok(None) => None,
                    Err(e) => panic!("{e} (seed {:#x})", self.seed),
                },
                Kind::Line => st.rx.iter().position(|&b| b == b'\n').map(|end| {
                    let line = String::from_utf8_lossy(&st.rx[..end]);
                    (Event::Line(line.trim_end_matches('\r').to_string()), end + 1)
                }),
            };
            let Some((event, used)) = parsed else { break };
            st.rx.drain(..used);
            if let (Event::Ping(payload), true) = (&event, st.auto_pong) {
                pongs.push(payload.clone());
            }
            st.log.push(event.clone());
            st.unread.push_back(event);
        }
        for payload in pongs {
            let frame = wire::client_frame(OpCode::Control(Control::Pong), true, &payload, self.mask());
            if let Some((shard, conn)) = self.clients[id].conn {
                self.feed(shard, ShardInput::Received { conn, data: frame.into() });
            }
        }
    }

    fn complete_store(&mut self) -> bool {
        match self.store.complete_next(self.now.instant) {
            Some(done) => {
                self.machines.store_done(self.now, done);
                true
            }
            None => false,
        }
    }
}
