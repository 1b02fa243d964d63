//! Several nodes sharing one store, with a bus between them that loses,
//! repeats and reorders: each rule of the hub's sequencer by name, then
//! property tests over random clients on random nodes.

use std::time::Duration;

use serde_json::{json, Value};

use natter_core::Config;
use natter_sim::{BusFaults, Cluster, FakeStore, NodeClient, Topology};

fn cluster(nodes: usize) -> Cluster {
    Cluster::of(nodes, Config::default(), FakeStore::with_accounts(&["ann", "bob", "cyd"]))
}

fn join(c: &mut Cluster, who: NodeClient, room: &str) -> Value {
    let ok = c.req(who, json!({"type":"join","room":room}));
    assert_eq!(ok["type"], "ok", "{ok}");
    ok
}

fn say(c: &mut Cluster, who: NodeClient, room: &str, text: &str) -> u64 {
    let ok = c.req(who, json!({"type":"send","room":room,"text":text}));
    assert_eq!(ok["type"], "ok", "{ok}");
    ok["seq"].as_u64().unwrap()
}

/// The `seq`s of the room messages `who` read since the last take.
fn room_seqs(c: &mut Cluster, who: NodeClient, room: &str) -> Vec<u64> {
    c.take_json(who)
        .into_iter()
        .filter(|v| v["type"] == "message" && v["room"] == room)
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

fn metric(c: &Cluster, node: usize, f: impl Fn(&natter_core::Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    f(c.node(node).metrics()).load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_room_message_reaches_members_on_every_node_once() {
    let mut c = cluster(3);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    let cyd = c.login(2, "cyd");
    for who in [ann, bob, cyd] {
        join(&mut c, who, "lobby");
    }
    for who in [ann, bob, cyd] {
        c.take_json(who);
    }
    assert_eq!(say(&mut c, ann, "lobby", "one"), 1);
    assert_eq!(say(&mut c, bob, "lobby", "two"), 2);
    for who in [ann, bob, cyd] {
        assert_eq!(room_seqs(&mut c, who, "lobby"), [1, 2], "{who:?}");
    }
}

#[test]
fn a_single_node_in_a_cluster_subscribes_only_where_it_has_sessions() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    join(&mut c, ann, "lobby");
    let subs: Vec<&String> = c.bus().subscriptions(0).iter().collect();
    assert_eq!(subs, ["natter.nodes", "natter.room.lobby", "natter.user.ann"]);
    let only_nodes: Vec<&String> = c.bus().subscriptions(1).iter().collect();
    assert_eq!(only_nodes, ["natter.nodes"], "every node hears the others from its start");
    c.disconnect(ann);
    c.run_until_idle();
    let left: Vec<&String> = c.bus().subscriptions(0).iter().collect();
    assert_eq!(left, ["natter.nodes"]);
}

#[test]
fn a_duplicate_from_the_bus_is_dropped() {
    let mut c = cluster(2);
    c.set_bus_faults(BusFaults { duplicate: 1000, ..BusFaults::default() });
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    c.take_json(bob);
    for text in ["a", "b", "c"] {
        say(&mut c, ann, "r", text);
    }
    assert_eq!(room_seqs(&mut c, bob, "r"), [1, 2, 3]);
    assert!(c.bus().duplicated >= 3);
    assert!(metric(&c, 1, |m| &m.bus_duplicates) >= 3, "each second copy is counted");
}

#[test]
fn a_gap_is_filled_from_storage_before_anything_later() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    c.take_json(bob);
    c.set_bus_faults(BusFaults { drop: 1000, ..BusFaults::default() });
    say(&mut c, ann, "r", "lost on the bus");
    assert!(room_seqs(&mut c, bob, "r").is_empty(), "the bus lost it");
    c.set_bus_faults(BusFaults::default());
    say(&mut c, ann, "r", "arrives");
    assert_eq!(room_seqs(&mut c, bob, "r"), [1, 2], "1 read from storage, then 2");
    assert!(metric(&c, 1, |m| &m.bus_gaps) >= 1);
    assert_eq!(metric(&c, 1, |m| &m.bus_filled), 1);
}

#[test]
fn messages_the_bus_reorders_are_delivered_in_seq_order() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    c.take_json(bob);
    c.set_bus_faults(BusFaults { max_delay: Duration::from_millis(200), ..BusFaults::default() });
    let refs: Vec<String> =
        (0..20).map(|i| c.send(ann, json!({"type":"send","room":"r","text":format!("m{i}")}))).collect();
    assert_eq!(refs.len(), 20);
    c.run_until_idle();
    assert_eq!(room_seqs(&mut c, bob, "r"), (1..=20).collect::<Vec<u64>>());
}

#[test]
fn after_the_link_comes_back_a_node_catches_up_from_storage() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    c.take_json(bob);
    c.link_down(1);
    for text in ["a", "b", "c"] {
        say(&mut c, ann, "r", text);
    }
    assert!(room_seqs(&mut c, bob, "r").is_empty());
    c.link_up(1);
    c.run_until_idle();
    assert_eq!(room_seqs(&mut c, bob, "r"), [1, 2, 3]);
    assert!(metric(&c, 1, |m| &m.bus_checks) >= 1);
}

#[test]
fn a_publish_lost_for_ever_is_found_by_the_periodic_check() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    c.take_json(bob);
    // As if node 0 died between commit and publish: nothing ever follows.
    c.set_bus_faults(BusFaults { drop: 1000, ..BusFaults::default() });
    say(&mut c, ann, "r", "only in storage");
    c.run_until_idle();
    assert!(room_seqs(&mut c, bob, "r").is_empty());
    c.advance(Config::default().cluster_check + Duration::from_secs(1));
    c.run_until_idle();
    assert_eq!(room_seqs(&mut c, bob, "r"), [1]);
}

#[test]
fn a_private_message_reaches_the_recipient_and_the_senders_other_sessions_across_nodes() {
    let mut c = cluster(3);
    let ann = c.login(0, "ann");
    let ann_elsewhere = c.login(2, "ann");
    let bob = c.login(1, "bob");
    for who in [ann, ann_elsewhere, bob] {
        c.take_json(who);
    }
    c.set_bus_faults(BusFaults { duplicate: 300, max_delay: Duration::from_millis(50), ..BusFaults::default() });
    for i in 0..5 {
        let ok = c.req(ann, json!({"type":"send","to":"bob","text":format!("p{i}")}));
        assert_eq!(ok["type"], "ok", "{ok}");
    }
    let ok = c.req(bob, json!({"type":"send","to":"ann","text":"back"}));
    assert_eq!(ok["seq"], 6);
    c.run_until_idle();
    let private = |c: &mut Cluster, who| -> Vec<u64> {
        c.take_json(who).into_iter().filter(|v| v["type"] == "private").map(|v| v["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(private(&mut c, bob), [1, 2, 3, 4, 5]);
    assert_eq!(private(&mut c, ann_elsewhere), [1, 2, 3, 4, 5, 6], "echoes, then bob's");
    assert_eq!(private(&mut c, ann), [6]);
}

#[test]
fn a_reconnect_to_another_node_with_since_loses_nothing() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    say(&mut c, ann, "r", "1");
    c.disconnect(bob);
    say(&mut c, ann, "r", "2");
    say(&mut c, ann, "r", "3");
    let bob = c.login(0, "bob");
    let ok = c.req(bob, json!({"type":"join","room":"r","since":1}));
    assert_eq!(ok["seq"], 3, "{ok}");
    assert_eq!(room_seqs(&mut c, bob, "r"), [2, 3]);
    say(&mut c, ann, "r", "4");
    assert_eq!(room_seqs(&mut c, bob, "r"), [4]);
}

#[test]
fn nodes_in_other_topologies_agree() {
    let topologies = [Topology::Local, Topology::Threads(3)];
    let mut c = Cluster::new(&topologies, Config::default(), FakeStore::with_accounts(&["ann", "bob"]), 7);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    c.take_json(ann);
    c.take_json(bob);
    say(&mut c, bob, "r", "x");
    say(&mut c, ann, "r", "y");
    assert_eq!(room_seqs(&mut c, ann, "r"), [1, 2]);
    assert_eq!(room_seqs(&mut c, bob, "r"), [1, 2]);
}

// ---- property tests ---------------------------------------------------------

mod props {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    use proptest::prelude::*;
    use proptest::test_runner::{FileFailurePersistence, TestRunner};
    use serde_json::{json, Value};

    use natter_core::Config;
    use natter_sim::{BusFaults, Cluster, Event, NodeClient, Topology};

    const USERS: [&str; 4] = ["ann", "bob", "cyd", "dan"];
    const ROOMS: [&str; 2] = ["r0", "r1"];

    #[derive(Debug, Clone)]
    pub(super) enum Op {
        Connect {
            user: usize,
            node: usize,
        },
        Join {
            client: usize,
            room: usize,
        },
        Say {
            client: usize,
            room: usize,
        },
        Tell {
            client: usize,
            to: usize,
        },
        /// Hang up, log in on `node`, and join again every room with
        /// `since` the last `seq` seen there.
        Reconnect {
            client: usize,
            node: usize,
        },
        Disconnect {
            client: usize,
        },
        Faults {
            drop: u64,
            duplicate: u64,
            delay_ms: u64,
        },
        LinkDown {
            node: usize,
        },
        LinkUp {
            node: usize,
        },
        Latency {
            ms: u64,
        },
        Advance {
            ms: u64,
        },
        Idle,
    }

    fn op(nodes: usize) -> impl Strategy<Value = Op> {
        let c = 0..8usize;
        prop_oneof![
            10 => (0..USERS.len(), 0..nodes).prop_map(|(user, node)| Op::Connect { user, node }),
            12 => (c.clone(), 0..ROOMS.len()).prop_map(|(client, room)| Op::Join { client, room }),
            30 => (c.clone(), 0..ROOMS.len()).prop_map(|(client, room)| Op::Say { client, room }),
            12 => (c.clone(), 0..USERS.len()).prop_map(|(client, to)| Op::Tell { client, to }),
            8 => (c.clone(), 0..nodes).prop_map(|(client, node)| Op::Reconnect { client, node }),
            3 => c.prop_map(|client| Op::Disconnect { client }),
            6 => (0..400u64, 0..400u64, 0..80u64).prop_map(|(drop, duplicate, delay_ms)| Op::Faults { drop, duplicate, delay_ms }),
            4 => (0..nodes).prop_map(|node| Op::LinkDown { node }),
            4 => (0..nodes).prop_map(|node| Op::LinkUp { node }),
            3 => (0..30u64).prop_map(|ms| Op::Latency { ms }),
            8 => prop_oneof![3 => 0..100u64, 1 => 0..5_000u64].prop_map(|ms| Op::Advance { ms }),
            8 => Just(Op::Idle),
        ]
    }

    /// A request in flight, by `ref`.
    #[derive(Debug, Clone)]
    enum Req {
        Join { room: String, since: Option<u64> },
        Say { room: String, text: String },
        Tell { to: String, text: String },
    }

    #[derive(Debug)]
    struct Session {
        c: NodeClient,
        user: &'static str,
        reqs: HashMap<String, Req>,
        /// Per other user, the conversation's `seq` when the session was
        /// welcomed: the user's own later messages must reach it as echoes
        /// (others' all must, from its inbox or live).
        pm_base: HashMap<&'static str, u64>,
    }

    pub(super) struct Driver {
        pub(super) cluster: Cluster,
        sessions: Vec<Session>,
        texts: u64,
    }

    impl Driver {
        pub(super) fn new(nodes: usize, seed: u64, early: bool) -> Driver {
            let mut store = natter_sim::FakeStore::default();
            store.set_run_at_submission(early);
            for user in USERS {
                store.add_user(user, "password");
            }
            let topologies: Vec<Topology> =
                (0..nodes).map(|i| if i % 2 == 0 { Topology::Threads(2) } else { Topology::Local }).collect();
            let cluster = Cluster::new(&topologies, Config::default(), store, seed);
            Driver { cluster, sessions: Vec::new(), texts: 0 }
        }

        fn live(&self, i: usize) -> Option<usize> {
            let live: Vec<usize> =
                (0..self.sessions.len()).filter(|&s| self.cluster.is_connected(self.sessions[s].c)).collect();
            (!live.is_empty()).then(|| live[i % live.len()])
        }

        fn text(&mut self) -> String {
            self.texts += 1;
            format!("t{}", self.texts)
        }

        fn request(&mut self, s: usize, body: Value, req: Req) {
            let r = self.cluster.send(self.sessions[s].c, body);
            self.sessions[s].reqs.insert(r, req);
        }

        fn connect(&mut self, user: usize, node: usize) -> usize {
            let user = USERS[user];
            let c = self.cluster.login(node, user);
            let pm_base = USERS
                .iter()
                .map(|&peer| (peer, self.cluster.store().conversation(user, peer).last().map_or(0, |m| m.seq)))
                .collect();
            self.sessions.push(Session { c, user, reqs: HashMap::new(), pm_base });
            self.sessions.len() - 1
        }

        pub(super) fn apply(&mut self, op: &Op) {
            match *op {
                Op::Connect { user, node } => {
                    self.connect(user, node);
                }
                Op::Join { client, room } => {
                    let Some(s) = self.live(client) else { return };
                    let room = ROOMS[room].to_string();
                    self.request(s, json!({"type":"join","room":room}), Req::Join { room, since: None });
                }
                Op::Say { client, room } => {
                    let Some(s) = self.live(client) else { return };
                    let (room, text) = (ROOMS[room].to_string(), self.text());
                    self.request(s, json!({"type":"send","room":room,"text":text}), Req::Say { room, text });
                }
                Op::Tell { client, to } => {
                    let Some(s) = self.live(client) else { return };
                    let (to, text) = (USERS[to].to_string(), self.text());
                    self.request(s, json!({"type":"send","to":to,"text":text}), Req::Tell { to, text });
                }
                Op::Reconnect { client, node } => self.reconnect(client, node),
                Op::Disconnect { client } => {
                    if let Some(s) = self.live(client) {
                        self.cluster.disconnect(self.sessions[s].c);
                    }
                }
                Op::Faults { drop, duplicate, delay_ms } => {
                    let max_delay = Duration::from_millis(delay_ms);
                    self.cluster.set_bus_faults(BusFaults { drop, duplicate, max_delay });
                }
                Op::LinkDown { node } => self.link(node, false),
                Op::LinkUp { node } => self.link(node, true),
                Op::Latency { ms } => {
                    self.cluster.store_mut().set_latency(Duration::from_millis(ms), Duration::from_millis(ms / 2))
                }
                Op::Advance { ms } => self.cluster.advance(Duration::from_millis(ms)),
                Op::Idle => self.cluster.run_until_idle(),
            }
        }

        fn link(&mut self, node: usize, up: bool) {
            if node >= self.cluster.len() {
                return;
            }
            if up {
                self.cluster.link_up(node);
            } else {
                self.cluster.link_down(node);
            }
        }

        fn reconnect(&mut self, client: usize, node: usize) {
            let Some(old) = self.live(client) else { return };
            let user = USERS.iter().position(|u| *u == self.sessions[old].user).unwrap_or(0);
            self.cluster.disconnect(self.sessions[old].c);
            let rooms = last_seen(self.cluster.log(self.sessions[old].c));
            let s = self.connect(user, node);
            for (room, seen) in rooms {
                let body = json!({"type":"join","room":room,"since":seen});
                self.request(s, body, Req::Join { room, since: Some(seen) });
            }
        }

        /// The bus heals, every link comes up, and the periodic check runs.
        pub(super) fn finish(&mut self) {
            self.cluster.set_bus_faults(BusFaults::default());
            for node in 0..self.cluster.len() {
                self.cluster.link_up(node);
            }
            self.cluster.run_until_idle();
            for _ in 0..2 {
                self.cluster.advance(Config::default().cluster_check + Duration::from_secs(1));
                self.cluster.run_until_idle();
            }
        }

        pub(super) fn check(&self) -> Vec<String> {
            let mut errors = Vec::new();
            for (i, s) in self.sessions.iter().enumerate() {
                let who = format!("session {i} ({} on node {})", s.user, s.c.node);
                let connected = self.cluster.is_connected(s.c);
                check_session(&self.cluster, s, connected, &mut |e| errors.push(format!("{who}: {e}")));
            }
            errors
        }
    }

    /// The rooms a session saw and the last room `seq` it read in each.
    fn last_seen(log: &[Event]) -> BTreeMap<String, u64> {
        let mut seen = BTreeMap::new();
        for v in log.iter().filter_map(Event::json) {
            match v["type"].as_str() {
                Some("welcome") => {
                    for r in v["rooms"].as_array().into_iter().flatten() {
                        seen.insert(r["room"].as_str().unwrap_or_default().to_string(), r["seq"].as_u64().unwrap_or(0));
                    }
                }
                Some("ok") if v["members"].is_u64() => {
                    let room = v["room"].as_str().unwrap_or_default().to_string();
                    seen.entry(room).or_insert(v["seq"].as_u64().unwrap_or(0));
                }
                Some("message") => {
                    seen.insert(v["room"].as_str().unwrap_or_default().to_string(), v["seq"].as_u64().unwrap_or(0));
                }
                _ => {}
            }
        }
        seen
    }

    /// Where a session stands in one room.
    #[derive(Debug, Default, Clone, Copy)]
    struct Track {
        /// Newest `seq` read (`None`: not tracked yet: the next message starts it).
        last: Option<u64>,
        /// A `since` replay: messages up to `.1` come after `.0`, in order.
        replay: Option<(u64, u64, bool)>,
    }

    fn check_session(cluster: &Cluster, s: &Session, connected: bool, fail: &mut dyn FnMut(String)) {
        let mut rooms: HashMap<String, Track> = HashMap::new();
        let mut private: HashMap<String, Vec<u64>> = HashMap::new();
        let mut acked: HashMap<String, Vec<u64>> = HashMap::new();
        for v in cluster.log(s.c).iter().filter_map(Event::json) {
            match v["type"].as_str() {
                Some("welcome") => {
                    for r in v["rooms"].as_array().into_iter().flatten() {
                        let room = r["room"].as_str().unwrap_or_default().to_string();
                        rooms.insert(room, Track { last: r["seq"].as_u64(), replay: None });
                    }
                }
                Some("message") => room_message(cluster, &mut rooms, v, fail),
                Some("private") => {
                    let peer = if v["from"] == s.user { &v["to"] } else { &v["from"] };
                    private
                        .entry(peer.as_str().unwrap_or_default().to_string())
                        .or_default()
                        .push(v["seq"].as_u64().unwrap_or(0));
                }
                Some("ok") | Some("error") => {
                    let Some(req) = v["ref"].as_str().and_then(|r| s.reqs.get(r)) else { continue };
                    reply(cluster, s, &mut rooms, &mut acked, req, v, fail);
                }
                _ => {}
            }
        }
        for (peer, seqs) in &private {
            if seqs.windows(2).any(|w| w[1] <= w[0]) {
                fail(format!("private messages with {peer} out of order or twice: {seqs:?}"));
            }
        }
        if !connected {
            return;
        }
        for (room, t) in &rooms {
            let stored = cluster.store().room_seq(room);
            if t.last.is_some_and(|l| l < stored) || (t.last.is_none() && stored > 0 && t.replay.is_some()) {
                fail(format!("room {room}: read up to {:?}, stored up to {stored}", t.last));
            }
        }
        for (&peer, &base) in &s.pm_base {
            let got: Vec<u64> =
                private.get(peer).into_iter().flatten().chain(acked.get(peer).into_iter().flatten()).copied().collect();
            for m in cluster.store().conversation(s.user, peer) {
                // Nobody acknowledges: the inbox at `welcome` brings every
                // message from others, and later echoes the user's own.
                let due = m.sender != s.user || m.seq > base;
                if due && !got.contains(&m.seq) {
                    fail(format!("private {} with {peer} never reached it (base {base}; got {got:?})", m.seq));
                }
            }
        }
    }

    fn room_message(cluster: &Cluster, rooms: &mut HashMap<String, Track>, v: &Value, fail: &mut dyn FnMut(String)) {
        let room = v["room"].as_str().unwrap_or_default().to_string();
        let seq = v["seq"].as_u64().unwrap_or(0);
        let stored = cluster.store().room_messages(&room).iter().find(|m| m.seq == seq);
        if stored.is_none_or(|m| m.text != v["text"]) {
            fail(format!("room {room} seq {seq}: {v} is not what was stored ({stored:?})"));
        }
        let t = rooms.entry(room.clone()).or_default();
        if let Some((after, upto, recovered)) = t.replay {
            if seq <= upto {
                let expected = after + 1;
                if (recovered && seq != expected) || seq < expected {
                    fail(format!("room {room}: replay gave {seq}, expected {expected}"));
                }
                t.replay = (seq < upto).then_some((seq, upto, true));
                t.last = Some(t.last.map_or(seq, |l| l.max(seq)));
                return;
            }
            t.replay = None;
        }
        match t.last {
            Some(last) if seq != last + 1 => fail(format!("room {room}: read {seq} after {last}")),
            _ => {}
        }
        t.last = Some(seq);
    }

    fn reply(
        cluster: &Cluster,
        s: &Session,
        rooms: &mut HashMap<String, Track>,
        acked: &mut HashMap<String, Vec<u64>>,
        req: &Req,
        v: &Value,
        fail: &mut dyn FnMut(String),
    ) {
        if v["type"] != "ok" {
            return;
        }
        let seq = v["seq"].as_u64().unwrap_or(0);
        match req {
            Req::Join { room, since } => {
                let t = rooms.entry(room.clone()).or_default();
                match since {
                    Some(since) => {
                        let recovered = v["recovered"].as_bool().unwrap_or(true);
                        // A node behind the client starts where it stands.
                        let from = (*since).min(seq);
                        t.replay = (seq > from).then_some((from, seq, recovered));
                        if seq <= from {
                            t.last = Some(t.last.map_or(seq, |l| l.max(seq)));
                        }
                    }
                    None if t.last.is_none() => t.last = Some(seq),
                    None => {}
                }
            }
            Req::Say { room, text } => {
                let found = cluster.store().room_messages(room).iter().any(|m| m.seq == seq && m.text == *text);
                if !found {
                    fail(format!("acknowledged room {room} seq {seq} ({text}) is not stored"));
                }
            }
            Req::Tell { to, text } => {
                let found = cluster.store().conversation(s.user, to).iter().any(|m| m.seq == seq && m.text == *text);
                if !found {
                    fail(format!("acknowledged private {seq} to {to} ({text}) is not stored"));
                }
                acked.entry(to.clone()).or_default().push(seq);
            }
        }
    }

    pub(super) fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(128)
    }

    pub(super) fn run(nodes: usize, seed: u64, early: bool, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut driver = Driver::new(nodes, seed, early);
        for op in ops {
            driver.apply(op);
        }
        driver.finish();
        let errors = driver.check();
        let seed = driver.cluster.seed();
        prop_assert!(errors.is_empty(), "{nodes} nodes, early {early}, seed {seed:#x}:\n{}", errors.join("\n"));
        Ok(())
    }

    /// Node count, seed, whether storage runs requests when submitted
    /// (else when completed), and the operations.
    pub(super) fn strategy() -> impl Strategy<Value = (usize, u64, bool, Vec<Op>)> {
        (2..=3usize)
            .prop_flat_map(|nodes| (Just(nodes), any::<u64>(), any::<bool>(), prop::collection::vec(op(nodes), 1..100)))
    }

    pub(super) fn runner() -> TestRunner {
        TestRunner::new(ProptestConfig {
            cases: cases(),
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/cluster.txt"))),
            ..ProptestConfig::default()
        })
    }

    pub(super) type Ran = RefCell<BTreeMap<(usize, bool), u32>>;
}

#[test]
fn every_member_gets_each_message_once_in_order_whatever_the_bus_does() {
    let mut runner = props::runner();
    let ran: props::Ran = Default::default();
    let result = runner.run(&props::strategy(), |(nodes, seed, early, mut ops)| {
        *ran.borrow_mut().entry((nodes, early)).or_default() += 1;
        // Every run starts with someone on each node, in one room.
        let mut all: Vec<props::Op> = (0..nodes).map(|node| props::Op::Connect { user: node, node }).collect();
        all.extend((0..nodes).map(|client| props::Op::Join { client, room: 0 }));
        all.append(&mut ops);
        props::run(nodes, seed, early, &all)
    });
    let ran = ran.into_inner();
    let summary = format!("{} cases by (nodes, storage runs at submission): {ran:?}", ran.values().sum::<u32>());
    eprintln!("every_member_gets_each_message_once_in_order_whatever_the_bus_does: {summary}");
    if let Err(e) = result {
        panic!("{e}\n(after {summary})");
    }
}

/// Bob's new session's inbox is read on a slow node; Ann's message is
/// stored on a fast one after that read ran, and the bus brings it before
/// the read's answer, while live private messages to that session wait for
/// its inbox. The first page cannot hold it: one more page is read.
#[test]
fn a_private_message_that_overtakes_an_inbox_read_is_not_lost() {
    let mut store = FakeStore::with_accounts(&["ann", "bob"]);
    store.set_run_at_submission(true);
    let mut c = Cluster::new(&[Topology::Local, Topology::Local], Config::default(), store, 1);
    c.store_mut().set_node_latency(1, Duration::from_millis(100), Duration::ZERO);
    let ann = c.login(0, "ann");
    // Node 1 already serves Bob: his new session's inbox is the only wait.
    let bob_before = c.login(1, "bob");
    let token = c.store_mut().issue_token("bob", natter_sim::START_UNIX_MS + 86_400_000);
    let bob = c.ws_client(1);
    c.send(bob, json!({"type":"hello","token":token}));
    while !c.log(bob).iter().any(|e| e.kind() == Some("welcome")) {
        assert!(c.step(), "no welcome");
    }
    let ok = c.req(ann, json!({"type":"send","to":"bob","text":"overtaking"}));
    assert_eq!(ok["seq"], 1, "{ok}");
    c.run_until_idle();
    let private: Vec<Value> = c.take_json(bob).into_iter().filter(|v| v["type"] == "private").collect();
    assert_eq!(private.len(), 1, "{private:?}");
    assert_eq!(private[0]["text"], "overtaking");
    let live: Vec<Value> = c.take_json(bob_before).into_iter().filter(|v| v["type"] == "private").collect();
    assert_eq!(live.len(), 1, "{live:?}");
}

#[test]
fn a_room_joined_on_one_node_is_the_users_on_another() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(0, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    say(&mut c, ann, "r", "before");
    // Node 1 loaded its rooms before Bob joined r on node 0.
    let bob_elsewhere = c.login(1, "bob");
    let welcome = c.log(bob_elsewhere).iter().find_map(|e| e.json().filter(|v| v["type"] == "welcome").cloned());
    let rooms = welcome.map(|w| w["rooms"].clone()).unwrap_or_default();
    assert_eq!(rooms, json!([{"room":"r","seq":1,"read":0}]), "node 1 learns the room and its seq at welcome");
    say(&mut c, ann, "r", "after");
    assert_eq!(room_seqs(&mut c, bob_elsewhere, "r"), [2], "from the welcome's seq on, not the backlog");
    let ok = c.req(bob_elsewhere, json!({"type":"send","room":"r","text":"from node 1"}));
    assert_eq!(ok["seq"], 3, "{ok}");
}

/// A node no session of which is in a room has not followed it: a join
/// there first reads where the room stands, so the `ok` names its newest
/// `seq` and only what follows is delivered, not the backlog.
#[test]
fn a_join_on_a_node_that_did_not_follow_the_room_starts_at_its_newest_seq() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    let gus = c.guest(1, "gus");
    join(&mut c, ann, "r");
    for i in 0..5 {
        say(&mut c, ann, "r", &format!("backlog {i}"));
    }
    for who in [bob, gus] {
        let ok = join(&mut c, who, "r");
        assert_eq!(ok["seq"], 5, "{ok}");
    }
    say(&mut c, ann, "r", "live");
    c.settle();
    assert_eq!(room_seqs(&mut c, bob, "r"), [6]);
    assert_eq!(room_seqs(&mut c, gus, "r"), [6]);
}
