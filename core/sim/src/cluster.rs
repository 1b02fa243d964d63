//! Several nodes as one: [`Cluster`] runs K nodes (each a [`Sim`], so each
//! in its own [`Topology`], with the same fake clients), ONE [`FakeStore`]
//! that they share (each node's requests complete in that node's submission
//! order; nothing orders two nodes' queues), and a [`FakeBus`] between
//! them that delays, drops, repeats and reorders what it carries and can
//! take a node's link down and up.
//!
//! The store is one value that the cluster hands to whichever node runs
//! (`with_node`), so every node's storage requests run against the same
//! data while the single-node [`Sim`] stays exactly what it was. All nodes
//! share one clock: time moves for all of them together.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use natter_core::bus::{BusCommand, BusEvent, BusMessage};
use natter_core::Config;
use serde_json::Value;

use crate::{env_seed, Client, Event, FakeStore, Rng, Sim, Topology, DEFAULT_SEED};

/// A client of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeClient {
    /// Which node it is connected to.
    pub node: usize,
    /// Its handle in that node's [`Sim`].
    pub client: Client,
}

/// How the bus misbehaves. Probabilities are per mille.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BusFaults {
    /// A delivery to one subscriber is lost.
    pub drop: u64,
    /// A delivery to one subscriber happens twice.
    pub duplicate: u64,
    /// Each delivery takes up to this long (so deliveries overtake).
    pub max_delay: Duration,
}

/// A delivery on its way.
#[derive(Debug)]
struct InFlight {
    due: Instant,
    order: u64,
    node: usize,
    bytes: Vec<u8>,
}

/// Pub/sub between the nodes, as Redis gives it: a publish reaches the
/// nodes subscribed at that moment (the publisher too, if it is), at most
/// once each when nothing goes wrong; here things go wrong on purpose.
#[derive(Debug)]
pub struct FakeBus {
    subscriptions: Vec<BTreeSet<String>>,
    up: Vec<bool>,
    in_flight: Vec<InFlight>,
    faults: BusFaults,
    rng: Rng,
    order: u64,
    /// Publishes lost because the publisher's link was down.
    pub lost_at_publish: u64,
    /// Deliveries dropped by [`BusFaults::drop`] or a receiver's link down.
    pub dropped: u64,
    /// Extra deliveries from [`BusFaults::duplicate`].
    pub duplicated: u64,
}

impl FakeBus {
    fn new(nodes: usize, seed: u64) -> FakeBus {
        FakeBus {
            subscriptions: vec![BTreeSet::new(); nodes],
            up: vec![true; nodes],
            in_flight: Vec::new(),
            faults: BusFaults::default(),
            rng: Rng::new(seed ^ 0xb05),
            order: 0,
            lost_at_publish: 0,
            dropped: 0,
            duplicated: 0,
        }
    }

    /// Whether `node`'s link is up.
    pub fn is_up(&self, node: usize) -> bool {
        self.up[node]
    }

    /// The channels `node` is subscribed to.
    pub fn subscriptions(&self, node: usize) -> &BTreeSet<String> {
        &self.subscriptions[node]
    }

    fn command(&mut self, now: Instant, node: usize, command: BusCommand) {
        match command {
            // Subscriptions outlive a link that is down: the host restores
            // them when it reconnects, before it reports `Up`.
            BusCommand::Subscribe(topic) => {
                self.subscriptions[node].insert(topic.channel());
            }
            BusCommand::Unsubscribe(topic) => {
                self.subscriptions[node].remove(&topic.channel());
            }
            BusCommand::Publish { topic, bytes } => self.publish(now, node, &topic.channel(), bytes),
        }
    }

    fn publish(&mut self, now: Instant, from: usize, channel: &str, bytes: Vec<u8>) {
        if !self.up[from] {
            self.lost_at_publish += 1;
            return;
        }
        for node in 0..self.subscriptions.len() {
            if !self.up[node] || !self.subscriptions[node].contains(channel) {
                continue;
            }
            if self.rng.below(1000) < self.faults.drop {
                self.dropped += 1;
                continue;
            }
            let copies = if self.rng.below(1000) < self.faults.duplicate { 2 } else { 1 };
            self.duplicated += copies - 1;
            for _ in 0..copies {
                let due = now + self.rng.duration(self.faults.max_delay);
                self.order += 1;
                self.in_flight.push(InFlight { due, order: self.order, node, bytes: bytes.clone() });
            }
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.in_flight.iter().map(|d| d.due).min()
    }

    /// The oldest delivery due at `now`, if any.
    fn take_due(&mut self, now: Instant) -> Option<(usize, Vec<u8>)> {
        let i = (0..self.in_flight.len())
            .filter(|&i| self.in_flight[i].due <= now)
            .min_by_key(|&i| (self.in_flight[i].due, self.in_flight[i].order))?;
        let d = self.in_flight.swap_remove(i);
        Some((d.node, d.bytes))
    }
}

/// K nodes, one shared store, a bus. See the module docs.
pub struct Cluster {
    nodes: Vec<Sim>,
    store: FakeStore,
    bus: FakeBus,
    seed: u64,
    next_ref: u64,
    /// Nodes stopped for good by [`Cluster::crash`].
    crashed: Vec<bool>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("nodes", &self.nodes.len()).field("seed", &self.seed).finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster simulation failed: rerun with NATTER_SIM_SEED={:#x}", self.seed);
        }
    }
}

impl Cluster {
    /// `topologies.len()` nodes over `store`, each with `config` set to be
    /// in a cluster, and every link up. `NATTER_SIM_SEED` wins over `seed`.
    pub fn new(topologies: &[Topology], config: Config, mut store: FakeStore, seed: u64) -> Cluster {
        let seed = env_seed().unwrap_or(seed);
        let config = Config { cluster: true, ..config };
        let mut nodes = Vec::new();
        for (i, &topology) in topologies.iter().enumerate() {
            store.set_node(i);
            let node_seed = seed.wrapping_add(i as u64 * 0x9e37_79b9);
            let config = Config { node: i as u64 + 1, ..config.clone() };
            let mut sim = Sim::build_with(topology, config, store, node_seed);
            store = std::mem::take(&mut sim.store);
            nodes.push(sim);
        }
        store.reseed(seed);
        let crashed = vec![false; nodes.len()];
        let mut cluster = Cluster { bus: FakeBus::new(nodes.len(), seed), nodes, store, seed, next_ref: 0, crashed };
        for i in 0..cluster.nodes.len() {
            cluster.with_node(i, |sim| sim.bus_event(BusEvent::Up));
        }
        cluster.settle();
        cluster
    }

    /// [`Cluster::new`] with the default seed.
    pub fn of(nodes: usize, config: Config, store: FakeStore) -> Cluster {
        Cluster::new(&vec![Topology::Threads(2); nodes], config, store, DEFAULT_SEED)
    }

    /// The seed of this run.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The shared store.
    pub fn store(&self) -> &FakeStore {
        &self.store
    }

    /// The shared store, to change its knobs.
    pub fn store_mut(&mut self) -> &mut FakeStore {
        &mut self.store
    }

    /// The bus.
    pub fn bus(&self) -> &FakeBus {
        &self.bus
    }

    /// How the bus misbehaves from now on.
    pub fn set_bus_faults(&mut self, faults: BusFaults) {
        self.bus.faults = faults;
    }

    /// A node, to read (its metrics, its clients' logs). Run it only
    /// through the cluster: alone it has no store.
    pub fn node(&self, i: usize) -> &Sim {
        &self.nodes[i]
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Runs `f` on node `i` with the shared store in its hands, then
    /// carries what its hub asked of the bus.
    fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Sim) -> R) -> R {
        assert!(!self.crashed[i], "node {i} crashed: it runs nothing any more");
        self.store.set_node(i);
        std::mem::swap(&mut self.store, &mut self.nodes[i].store);
        let r = f(&mut self.nodes[i]);
        std::mem::swap(&mut self.store, &mut self.nodes[i].store);
        let now = self.nodes[i].now().instant;
        for command in self.nodes[i].take_bus_commands() {
            self.bus.command(now, i, command);
        }
        r
    }

    // ---- links ------------------------------------------------------------

    /// Node `i`'s link to the bus goes down (it hears `Down`).
    pub fn link_down(&mut self, i: usize) {
        if self.bus.up[i] {
            self.bus.up[i] = false;
            self.bus.in_flight.retain(|d| d.node != i);
            self.with_node(i, |sim| sim.bus_event(BusEvent::Down));
        }
    }

    /// Node `i` stops for good, as a process killed: it runs nothing more,
    /// beats no more, hears nothing; its clients are gone with it (no
    /// other node is told), its storage requests in flight are lost, and
    /// what it stored (guest name claims too) stays.
    pub fn crash(&mut self, i: usize) {
        self.crashed[i] = true;
        self.bus.up[i] = false;
        self.bus.subscriptions[i].clear();
        self.bus.in_flight.retain(|d| d.node != i);
        self.store.set_node(i);
        self.store.drop_queue();
    }

    /// Whether node `i` crashed.
    pub fn is_crashed(&self, i: usize) -> bool {
        self.crashed[i]
    }

    /// Node `i`'s link comes back with its subscriptions (it hears `Up`).
    pub fn link_up(&mut self, i: usize) {
        if !self.bus.up[i] {
            self.bus.up[i] = true;
            self.with_node(i, |sim| sim.bus_event(BusEvent::Up));
        }
    }

    // ---- clients ------------------------------------------------------------

    /// A WebSocket session of registered `user` on `node`, welcomed.
    pub fn login(&mut self, node: usize, user: &str) -> NodeClient {
        let ttl = self.nodes[node].config().token_ttl.as_millis() as u64;
        let token = self.store.issue_token(user, self.now_ms() + ttl);
        let client = self.with_node(node, |sim| sim.ws_client());
        let c = NodeClient { node, client };
        let welcome = self.req(c, serde_json::json!({"type":"hello","token":token}));
        assert_eq!(welcome["type"], "welcome", "token hello for {user} on node {node}: {welcome}");
        c
    }

    /// A token for `user`, valid for the configured TTL from now, issued
    /// straight into the shared store.
    pub fn token(&mut self, user: &str) -> String {
        let ttl = self.nodes[0].config().token_ttl.as_millis() as u64;
        self.store.issue_token(user, self.now_ms() + ttl)
    }

    /// A WebSocket session on `node` opened with `token`, welcomed.
    pub fn login_with(&mut self, node: usize, token: &str) -> NodeClient {
        let client = self.with_node(node, |sim| sim.ws_client());
        let c = NodeClient { node, client };
        let welcome = self.req(c, serde_json::json!({"type":"hello","token":token}));
        assert_eq!(welcome["type"], "welcome", "token hello on node {node}: {welcome}");
        c
    }

    /// One HTTP request to `node` (see [`Sim::http`]).
    pub fn http(
        &mut self,
        node: usize,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> crate::HttpResponse {
        let res = self.with_node(node, |sim| sim.http(method, path, body, headers));
        self.run_until_idle();
        res
    }

    /// The code of the close frame the client read, if any.
    pub fn close_code(&self, c: NodeClient) -> Option<u16> {
        self.nodes[c.node].close_code(c.client)
    }

    /// A guest WebSocket session named `name` on `node`, welcomed.
    pub fn guest(&mut self, node: usize, name: &str) -> NodeClient {
        let client = self.with_node(node, |sim| sim.ws_client());
        let c = NodeClient { node, client };
        let welcome = self.req(c, serde_json::json!({"type":"hello","name":name}));
        assert_eq!(welcome["type"], "welcome", "guest hello for {name} on node {node}: {welcome}");
        c
    }

    /// A WebSocket client on `node`, upgraded, before `hello`.
    pub fn ws_client(&mut self, node: usize) -> NodeClient {
        let client = self.with_node(node, Sim::ws_client);
        NodeClient { node, client }
    }

    /// Sends `request` without waiting (a `ref` is added unless it has one);
    /// returns the `ref`.
    pub fn send(&mut self, c: NodeClient, mut request: Value) -> String {
        let reference = match request.get("ref").and_then(Value::as_str) {
            Some(r) => r.to_string(),
            None => {
                self.next_ref += 1;
                let r = format!("c{}", self.next_ref);
                request["ref"] = Value::String(r.clone());
                r
            }
        };
        self.with_node(c.node, |sim| sim.send_json(c.client, request));
        reference
    }

    /// Sends `request`, runs the cluster until idle, and returns the reply.
    pub fn req(&mut self, c: NodeClient, request: Value) -> Value {
        let reference = self.send(c, request.clone());
        self.run_until_idle();
        let seed = self.seed;
        self.nodes[c.node]
            .take_reply(c.client, &reference)
            .unwrap_or_else(|| panic!("no reply to {request} on node {} (seed {seed:#x})", c.node))
    }

    /// The client hangs up.
    pub fn disconnect(&mut self, c: NodeClient) {
        self.with_node(c.node, |sim| sim.disconnect(c.client));
    }

    /// Every event the client read, from the start.
    pub fn log(&self, c: NodeClient) -> &[Event] {
        self.nodes[c.node].log(c.client)
    }

    /// JSON frames read since the last take.
    pub fn take_json(&mut self, c: NodeClient) -> Vec<Value> {
        self.nodes[c.node].take_json(c.client)
    }

    /// Whether the client's connection is open.
    pub fn is_connected(&self, c: NodeClient) -> bool {
        self.nodes[c.node].ended(c.client).is_none()
    }

    // ---- time -------------------------------------------------------------

    /// A node whose clock still moves (a crashed node's stopped).
    fn clock(&self) -> &Sim {
        let i = self.crashed.iter().position(|c| !c).unwrap_or(0);
        &self.nodes[i]
    }

    fn now(&self) -> Instant {
        self.clock().now().instant
    }

    fn now_ms(&self) -> u64 {
        self.clock().now().unix_ms
    }

    /// Processes everything that can happen without time moving, on every
    /// node and on the bus.
    pub fn settle(&mut self) {
        for round in 0.. {
            assert!(round < 100_000, "livelock (seed {:#x})", self.seed);
            for i in self.live() {
                self.with_node(i, Sim::settle);
            }
            let Some((node, bytes)) = self.bus.take_due(self.now()) else { break };
            let message = BusMessage::decode(&bytes).expect("nodes publish what they can decode");
            self.with_node(node, |sim| sim.bus_event(BusEvent::Message(message)));
        }
    }

    fn next_event(&mut self) -> Option<Instant> {
        let mut next = self.bus.next_due();
        for i in self.live() {
            let t = self.with_node(i, |sim| sim.next_event());
            next = next.into_iter().chain(t).min();
        }
        next
    }

    fn move_to(&mut self, t: Instant) {
        for (sim, _) in self.nodes.iter_mut().zip(&self.crashed).filter(|(_, crashed)| !**crashed) {
            sim.move_to(t);
        }
    }

    /// The nodes that did not crash.
    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| !self.crashed[i]).collect()
    }

    /// Moves time to the next event anywhere and processes it; `false`
    /// when nothing is scheduled.
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

    /// Steps until no storage request, mail or bus delivery is in flight.
    pub fn run_until_idle(&mut self) {
        self.settle();
        for steps in 0.. {
            assert!(steps < 1_000_000, "the cluster never went idle (seed {:#x})", self.seed);
            let busy = self.store.in_flight_all() > 0
                || !self.bus.in_flight.is_empty()
                || self.live().into_iter().any(|i| self.nodes[i].mail_in_flight());
            if !busy || !self.step() {
                break;
            }
        }
    }

    /// Moves time forward by `d` on every node, firing what falls due.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now() + d;
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
}
