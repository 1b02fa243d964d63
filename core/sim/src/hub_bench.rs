//! A focused benchmark of the hub (issue 15): how much one routed room
//! message and one delivery cost the hub, and how much a delivery costs the
//! shard that receives it, so that the two give how many I/O threads one
//! hub can feed.
//!
//! It drives the real [`Hub`] and real [`Shard`]s the way the hub thread and
//! the I/O threads do, with no sockets, threads or storage: `S` shards'
//! worth of guest sessions in rooms, welcomed and joined through the wire,
//! then a stream of room sends (each the `ToHub` a shard made of a real
//! `send` frame) and their storage completions, a batch at a time as the
//! hub thread takes its mailbox. [`HubBench::route`] is the hub's side: it
//! ends with the `ToShard` mail the hub would post. [`HubBench::feed_shards`]
//! is the shards' side: each shard takes its mail and its sessions' outboxes
//! are "written" whole (the bytes counted, no syscall).
//!
//! Mail is opaque outside the core, so the sends are made by shards from
//! bytes; that is also why this lives beside the simulation, which already
//! speaks the wire (`natter-bench hub` runs it and times it).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use natter_core::store::{StoreDone, StoreOp, StoreRequest, StoreValue};
use natter_core::{
    Config, ConnKey, Hub, HubInput, HubOutput, Metrics, Now, Shard, ShardInput, ShardOutput, ToHub, ToShard, Transport,
};
use serde_json::json;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::wire;

/// The shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct HubBenchSpec {
    /// I/O threads, each a shard.
    pub shards: u16,
    /// Guest sessions in all, dealt to the shards in turn.
    pub sessions: usize,
    /// Members per room: sessions `0..room_size` form the first room, and so
    /// on, so each room has members on every shard.
    pub room_size: usize,
    /// Messages the hub takes per turn (a mailbox taken whole): this many
    /// sends, then their completions, then the mail is posted.
    pub batch: usize,
}

impl HubBenchSpec {
    /// Rooms (each with one sender: its first member).
    pub fn rooms(&self) -> usize {
        self.sessions / self.room_size
    }
}

/// What one call routed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Room messages stored and routed.
    pub messages: u64,
    /// Sessions the hub addressed a delivery to.
    pub deliveries: u64,
    /// `ToShard` batches posted (one per shard with mail, per turn).
    pub batches: u64,
}

/// The hub, its shards and their sessions, ready to route. See the module
/// docs.
pub struct HubBench {
    spec: HubBenchSpec,
    hub: Hub,
    shards: Vec<Shard>,
    metrics: Arc<Metrics>,
    /// Every session's connection, by session number.
    conns: Vec<(u16, ConnKey)>,
    /// One room send per room, from its first member.
    sends: Vec<ToHub>,
    next_send: usize,
    next_seq: u64,
    now: Now,
    /// Storage requests of the turn in progress, reused.
    requests: Vec<StoreRequest>,
}

impl std::fmt::Debug for HubBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBench").field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// A node's limits opened wide: the benchmark opens thousands of sessions
/// at one instant and sends as fast as the hub takes them.
fn open_config() -> Config {
    let many = 1_000_000_000;
    Config {
        rate: many,
        burst: many,
        max_connections: usize::MAX / 2,
        peer_session_rate: many,
        user_session_rate: many,
        name_probe_rate: many,
        max_queue: usize::MAX / 2,
        store_backlog: usize::MAX / 2,
        ..Config::default()
    }
}

/// A distinct address per session, so per-address limits never bind.
fn peer(i: usize) -> IpAddr {
    let i = i as u32;
    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8))
}

fn text_frame(value: serde_json::Value) -> Vec<u8> {
    wire::client_frame(OpCode::Data(Data::Text), true, value.to_string().as_bytes(), [1, 2, 3, 4])
}

impl HubBench {
    /// Opens, welcomes and joins every session. Panics if the node refuses
    /// any of it (the limits are open; a refusal is a bug here).
    pub fn new(spec: HubBenchSpec) -> HubBench {
        assert!(spec.shards >= 1 && spec.room_size >= 1 && spec.sessions >= spec.room_size && spec.batch >= 1);
        let config = Arc::new(open_config());
        let metrics = Arc::new(Metrics::default());
        let now = Now { instant: crate::epoch(), unix_ms: crate::START_UNIX_MS };
        let hub = Hub::new((*config).clone(), Arc::clone(&metrics), Vec::new(), Vec::new(), now);
        let shards = (0..spec.shards).map(|i| Shard::new(i, Arc::clone(&config), Arc::clone(&metrics))).collect();
        let mut bench = HubBench {
            spec,
            hub,
            shards,
            metrics,
            conns: Vec::new(),
            sends: Vec::new(),
            next_send: 0,
            next_seq: 0,
            now,
            requests: Vec::new(),
        };
        bench.open_sessions();
        bench.make_sends();
        bench
    }

    /// The spec it was built with.
    pub fn spec(&self) -> HubBenchSpec {
        self.spec
    }

    /// Events the shards have queued for their sessions so far (set-up's
    /// `join` presences included): `natter_messages_delivered_total`.
    pub fn delivered(&self) -> u64 {
        self.metrics.messages_delivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Deliveries each message makes: every member's session, the sender's
    /// included.
    pub fn deliveries_per_message(&self) -> u64 {
        self.spec.room_size as u64
    }

    fn open_sessions(&mut self) {
        let upgrade = wire::upgrade("/ws");
        for i in 0..self.spec.sessions {
            let shard = (i % usize::from(self.spec.shards)) as u16;
            let open = ShardInput::Open { transport: Transport::Http, peer: peer(i) };
            let key = self.shards[usize::from(shard)].handle_input(self.now, open).expect("open").expect("a key");
            self.conns.push((shard, key));
            self.receive(i, &upgrade);
        }
        self.settle();
        for i in 0..self.spec.sessions {
            self.receive(i, &text_frame(json!({"type":"hello","name":format!("g{i}")})));
        }
        self.settle();
        for i in 0..self.spec.sessions {
            let room = format!("r{}", i / self.spec.room_size);
            self.receive(i, &text_frame(json!({"type":"join","room":room})));
        }
        self.settle();
        let open: usize = self.shards.iter().map(Shard::len).sum();
        assert_eq!(open, self.spec.sessions, "every session still open");
    }

    fn receive(&mut self, i: usize, bytes: &[u8]) {
        let (shard, conn) = self.conns[i];
        let input = ShardInput::Received { conn, data: bytes.into() };
        self.shards[usize::from(shard)].handle_input(self.now, input).expect("the connection is open");
    }

    /// Passes mail between the shards and the hub until both are quiet,
    /// writing every outbox whole.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.shards.len() {
                while let Some(out) = self.shards[i].poll_output() {
                    match out {
                        ShardOutput::Write(conn) => {
                            write_all(&mut self.shards[i], self.now, conn);
                        }
                        ShardOutput::Close(conn) => panic!("shard {i} closed {conn:?} while setting up"),
                        ShardOutput::ToHub(batch) => {
                            moved = true;
                            for msg in batch {
                                self.hub.handle_input(self.now, HubInput::FromShard(msg));
                            }
                        }
                    }
                }
            }
            while let Some(out) = self.hub.poll_output() {
                moved = true;
                match out {
                    HubOutput::ToShard(i, mail) => {
                        self.shards[usize::from(i)].handle_input(self.now, ShardInput::FromHub(mail)).expect("mail");
                    }
                    HubOutput::Store(requests) => panic!("guests asked storage while setting up: {requests:?}"),
                    HubOutput::Bus(_) => panic!("a single node has no bus"),
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Each room's first member makes one `send`; its `ToHub` is kept.
    fn make_sends(&mut self) {
        for room in 0..self.spec.rooms() {
            let sender = room * self.spec.room_size;
            let text = "a message of about the size people write in a chat room";
            self.receive(sender, &text_frame(json!({"type":"send","room":format!("r{room}"),"text":text})));
            let (shard, _) = self.conns[sender];
            let mut mail = Vec::new();
            while let Some(out) = self.shards[usize::from(shard)].poll_output() {
                if let ShardOutput::ToHub(batch) = out {
                    mail.extend(batch);
                }
            }
            assert_eq!(mail.len(), 1, "one send makes one message for the hub");
            self.sends.extend(mail);
        }
    }

    /// Routes `messages` room messages, a turn of `batch` at a time, and
    /// returns the shards' mail as the hub posted it.
    #[inline(never)]
    pub fn route(&mut self, messages: usize, mail: &mut Vec<(u16, Vec<ToShard>)>) -> Routed {
        let mut routed = Routed::default();
        let mut left = messages;
        while left > 0 {
            let turn = left.min(self.spec.batch);
            left -= turn;
            for _ in 0..turn {
                let send = self.sends[self.next_send].clone();
                self.next_send = (self.next_send + 1) % self.sends.len();
                self.hub.handle_input(self.now, HubInput::FromShard(send));
            }
            self.drain_hub(mail, &mut routed);
            self.complete_appends();
            self.drain_hub(mail, &mut routed);
            routed.messages += turn as u64;
        }
        routed
    }

    /// Storage's side, at no cost: every request of the turn is an append,
    /// stored with the next `seq` (one counter for every room keeps each
    /// room's increasing, which is all the hub needs).
    fn complete_appends(&mut self) {
        for request in std::mem::take(&mut self.requests) {
            assert!(matches!(request.op, StoreOp::Append { .. }), "only appends: {:?}", request.op);
            self.next_seq += 1;
            let value = StoreValue::Appended { seq: self.next_seq, ts: self.now.unix_ms, duplicate: false };
            self.hub.handle_input(self.now, HubInput::Store(StoreDone { id: request.id, result: Ok(value) }));
        }
    }

    fn drain_hub(&mut self, mail: &mut Vec<(u16, Vec<ToShard>)>, routed: &mut Routed) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                HubOutput::ToShard(i, batch) => {
                    routed.batches += 1;
                    routed.deliveries += batch.iter().map(|m| m.deliveries() as u64).sum::<u64>();
                    mail.push((i, batch));
                }
                HubOutput::Store(requests) => self.requests.extend(requests),
                HubOutput::Bus(_) => panic!("a single node has no bus"),
            }
        }
    }

    /// Hands each shard its mail and writes every outbox whole; returns the
    /// bytes written. `mail` is left empty.
    #[inline(never)]
    pub fn feed_shards(&mut self, mail: &mut Vec<(u16, Vec<ToShard>)>) -> u64 {
        let mut bytes = 0;
        for (i, batch) in mail.drain(..) {
            let shard = &mut self.shards[usize::from(i)];
            shard.handle_input(self.now, ShardInput::FromHub(batch)).expect("mail from the hub");
            while let Some(out) = shard.poll_output() {
                match out {
                    ShardOutput::Write(conn) => bytes += write_all(shard, self.now, conn),
                    ShardOutput::Close(conn) => panic!("shard {i} closed {conn:?}: a slow consumer?"),
                    // The `ok`s to the senders make no mail for the hub.
                    ShardOutput::ToHub(batch) => panic!("shard {i} wrote to the hub: {batch:?}"),
                }
            }
        }
        bytes
    }
}

/// Writes everything queued for `conn`, as a socket that takes it all would.
fn write_all(shard: &mut Shard, now: Now, conn: ConnKey) -> u64 {
    let mut total = 0;
    loop {
        let mut bufs = [std::io::IoSlice::new(&[]); 64];
        let n = shard.outbox(conn, &mut bufs);
        let len: usize = bufs[..n].iter().map(|b| b.len()).sum();
        if len == 0 {
            return total;
        }
        shard.handle_input(now, ShardInput::Written { conn, n: len }).expect("the connection is open");
        total += len as u64;
    }
}
