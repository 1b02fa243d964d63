//! Presence across the nodes of a cluster (`hub/nodes.rs`): who is online
//! anywhere, what members on other nodes hear, what happens when a node
//! dies or is cut off, and guest names unique across the cluster. The
//! rules by name, then a property test over random clients on random
//! nodes with a lossy bus and a crash.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;

use natter_core::Config;
use natter_sim::{BusFaults, Cluster, FakeStore, NodeClient, Topology};

const BEAT: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(500);
const GRACE: Duration = Duration::from_millis(200);

fn config() -> Config {
    Config { node_beat: BEAT, node_timeout: TIMEOUT, presence_grace: GRACE, ..Config::default() }
}

/// Users ann, bob and cyd, all members of `lobby`: every node loads the
/// memberships at start, so each knows who belongs to `lobby` wherever they
/// connect.
fn store() -> FakeStore {
    let mut store = FakeStore::default();
    for name in ["ann", "bob", "cyd"] {
        store.add_user(name, "password");
        store.add_member(name, "lobby");
    }
    store
}

/// The guest `zed` on `node`, a member of `lobby` (its join reaches the
/// other nodes' member tables as a relayed event).
fn zed_in_lobby(c: &mut Cluster, node: usize) -> NodeClient {
    let zed = c.guest(node, "zed");
    let ok = c.req(zed, json!({"type":"join","room":"lobby"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    zed
}

fn cluster(nodes: usize) -> Cluster {
    Cluster::of(nodes, config(), store())
}

/// The `state`s of the `presence` events about `user` that `who` read
/// since the last take.
fn presence_of(c: &mut Cluster, who: NodeClient, user: &str) -> Vec<String> {
    c.take_json(who)
        .into_iter()
        .filter(|v| v["type"] == "presence" && v["user"] == user)
        .map(|v| v["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The names `who` (without a room) answers on `asker`'s node.
fn who(c: &mut Cluster, asker: NodeClient) -> Vec<String> {
    let ok = c.req(asker, json!({"type":"who"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    ok["users"].as_array().unwrap().iter().map(|u| u["user"].as_str().unwrap().to_string()).collect()
}

/// `(user, online)` of `who lobby` on `asker`'s node.
fn who_lobby(c: &mut Cluster, asker: NodeClient) -> Vec<(String, bool)> {
    let ok = c.req(asker, json!({"type":"who","room":"lobby"}));
    let users = ok["users"].as_array().unwrap_or_else(|| panic!("{ok}"));
    users.iter().map(|u| (u["user"].as_str().unwrap().to_string(), u["online"] == true)).collect()
}

/// Long enough for a last session's grace, the announcement and a beat.
fn settle_presence(c: &mut Cluster) {
    c.advance(GRACE + BEAT * 2);
}

#[test]
fn a_member_on_another_node_hears_online_and_offline() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    c.take_json(ann);
    let bob = c.login(1, "bob");
    c.run_until_idle();
    assert_eq!(presence_of(&mut c, ann, "bob"), ["online"]);
    c.disconnect(bob);
    settle_presence(&mut c);
    assert_eq!(presence_of(&mut c, ann, "bob"), ["offline"]);
}

#[test]
fn who_lists_the_users_of_every_node() {
    let mut c = cluster(3);
    let ann = c.login(0, "ann");
    let _bob = c.login(1, "bob");
    let _zed = zed_in_lobby(&mut c, 2);
    c.run_until_idle();
    assert_eq!(who(&mut c, ann), ["ann", "bob", "zed"]);
    let lobby = who_lobby(&mut c, ann);
    let expected = [("ann", true), ("bob", true), ("cyd", false), ("zed", true)];
    assert_eq!(lobby, expected.map(|(u, o)| (u.to_string(), o)));
    let limited = c.req(ann, json!({"type":"who","limit":2}));
    assert_eq!(limited["users"].as_array().unwrap().len(), 2, "{limited}");
}

#[test]
fn a_user_with_sessions_on_two_nodes_is_not_offline_while_one_remains() {
    let mut c = cluster(3);
    let ann = c.login(0, "ann");
    c.take_json(ann);
    let bob1 = c.login(1, "bob");
    let bob2 = c.login(2, "bob");
    c.run_until_idle();
    assert_eq!(presence_of(&mut c, ann, "bob"), ["online"], "once, though on two nodes");
    c.disconnect(bob1);
    settle_presence(&mut c);
    assert!(presence_of(&mut c, ann, "bob").is_empty(), "still online on node 2");
    assert!(who(&mut c, ann).contains(&"bob".to_string()));
    c.disconnect(bob2);
    settle_presence(&mut c);
    assert_eq!(presence_of(&mut c, ann, "bob"), ["offline"]);
    assert_eq!(who(&mut c, ann), ["ann"]);
}

#[test]
fn a_crashed_node_s_users_go_offline_and_its_guests_leave_within_the_timeout() {
    let mut c = cluster(3);
    let ann = c.login(0, "ann");
    let cyd = c.login(1, "cyd");
    let _bob = c.login(2, "bob");
    let _zed = zed_in_lobby(&mut c, 2);
    c.run_until_idle();
    c.take_json(ann);
    c.take_json(cyd);
    c.crash(2);
    c.advance(TIMEOUT + BEAT);
    for who in [ann, cyd] {
        assert_eq!(presence_of(&mut c, who, "bob"), ["offline"], "{who:?}");
    }
    let _ = c.take_json(ann);
    assert_eq!(who(&mut c, ann), ["ann", "cyd"]);
    let lobby: Vec<String> = who_lobby(&mut c, cyd).into_iter().map(|(u, _)| u).collect();
    assert!(!lobby.contains(&"zed".to_string()), "a dead node's guest is no member any more: {lobby:?}");
    let lost = c.node(0).metrics().cluster_peers_lost.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(lost, 1);
}

#[test]
fn a_crashed_node_s_guests_leave_their_rooms_for_the_members_elsewhere() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let _zed = zed_in_lobby(&mut c, 1);
    c.run_until_idle();
    c.take_json(ann);
    c.crash(1);
    c.advance(TIMEOUT + BEAT);
    assert_eq!(presence_of(&mut c, ann, "zed"), ["leave"]);
}

#[test]
fn a_guest_name_held_on_one_node_is_taken_on_another_until_that_node_dies() {
    let mut c = cluster(2);
    let _zed = c.guest(0, "zed");
    let other = c.ws_client(1);
    let taken = c.req(other, json!({"type":"hello","name":"ZED"}));
    assert_eq!(taken["code"], "name_taken", "{taken}");
    c.crash(0);
    c.advance(TIMEOUT + BEAT);
    let again = c.ws_client(1);
    let welcome = c.req(again, json!({"type":"hello","name":"zed"}));
    assert_eq!(welcome["type"], "welcome", "a dead node's claim is taken over: {welcome}");
    assert_eq!(c.store().guest_claim("zed"), Some(2));
}

#[test]
fn a_guest_name_is_free_again_when_its_guest_leaves() {
    let mut c = cluster(2);
    let zed = c.guest(0, "zed");
    c.disconnect(zed);
    c.run_until_idle();
    assert_eq!(c.store().guest_claim("zed"), None);
    let client = c.ws_client(1);
    let welcome = c.req(client, json!({"type":"hello","name":"zed"}));
    assert_eq!(welcome["type"], "welcome", "{welcome}");
}

#[test]
fn a_guest_hello_while_storage_is_down_is_unavailable() {
    let mut c = cluster(2);
    c.store_mut().fail_next(1);
    let client = c.ws_client(1);
    let refused = c.req(client, json!({"type":"hello","name":"zed"}));
    assert_eq!(refused["code"], "unavailable", "{refused}");
    let welcome = c.req(client, json!({"type":"hello","name":"zed"}));
    assert_eq!(welcome["type"], "welcome", "the session may try again: {welcome}");
}

#[test]
fn a_node_cut_off_past_the_timeout_comes_back_with_its_users() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    c.run_until_idle();
    c.take_json(ann);
    c.take_json(bob);
    c.link_down(1);
    c.advance(TIMEOUT * 3);
    assert_eq!(presence_of(&mut c, ann, "bob"), ["offline"], "node 1 looks dead from node 0");
    assert!(presence_of(&mut c, bob, "ann").is_empty(), "a node cut off declares nobody dead");
    c.link_up(1);
    c.advance(BEAT * 3);
    assert_eq!(presence_of(&mut c, ann, "bob"), ["online"], "back");
    assert_eq!(who(&mut c, ann), ["ann", "bob"]);
    assert_eq!(who(&mut c, bob), ["ann", "bob"]);
}

#[test]
fn a_snapshot_past_one_page_arrives_whole() {
    let many = Config { peer_session_rate: 10_000, max_connections_per_ip: 10_000, ..config() };
    let mut c = Cluster::of(2, many, store());
    let ann = c.login(0, "ann");
    let page = natter_core::bus::SNAPSHOT_PAGE;
    for i in 0..=page {
        c.guest(1, &format!("g{i:04}"));
    }
    c.run_until_idle();
    // Node 0 counts node 1 dead, then hears it again: node 1's users come
    // back only through its snapshot, which takes two pages.
    c.link_down(1);
    c.advance(TIMEOUT * 2);
    assert_eq!(who(&mut c, ann), ["ann"]);
    c.link_up(1);
    c.advance(BEAT * 3);
    let all = c.req(ann, json!({"type":"who","limit":1000}));
    assert_eq!(all["users"].as_array().unwrap().len(), page + 2, "ann and every guest of node 1");
}

// ---- the property ---------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Login { node: usize, user: usize },
    Guest { node: usize, name: usize },
    Disconnect { pick: usize },
    Faults { drop: u64, duplicate: u64 },
    LinkFlap { node: usize, long: bool },
    Crash { node: usize },
    Wait { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..3usize).prop_map(|(node, user)| Step::Login { node, user }),
        2 => (0..3usize, 0..3usize).prop_map(|(node, name)| Step::Guest { node, name }),
        3 => any::<usize>().prop_map(|pick| Step::Disconnect { pick }),
        1 => (0..300u64, 0..300u64).prop_map(|(drop, duplicate)| Step::Faults { drop, duplicate }),
        1 => (0..3usize, any::<bool>()).prop_map(|(node, long)| Step::LinkFlap { node, long }),
        1 => (0..3usize).prop_map(|node| Step::Crash { node }),
        2 => (0..400u64).prop_map(|ms| Step::Wait { ms }),
    ]
}

const USERS: [&str; 3] = ["ann", "bob", "cyd"];
const GUESTS: [&str; 3] = ["gus", "gil", "gia"];

/// Runs `steps`, then lets the cluster settle and checks the property.
fn run(steps: Vec<Step>) {
    let mut c = Cluster::new(&[Topology::Threads(2); 3], config(), store(), 0x9e5e);
    let mut clients: Vec<(NodeClient, String)> = Vec::new();
    let mut crashed = false;
    for step in steps {
        match step {
            Step::Login { node, user } if !c.is_crashed(node) => {
                clients.push((c.login(node, USERS[user]), USERS[user].to_string()));
            }
            Step::Guest { node, name } if !c.is_crashed(node) => {
                let client = c.ws_client(node);
                let reply = c.req(client, json!({"type":"hello","name":GUESTS[name]}));
                if reply["type"] == "welcome" {
                    clients.push((client, GUESTS[name].to_string()));
                }
            }
            Step::Disconnect { pick } if !clients.is_empty() => {
                let (client, _) = clients.remove(pick % clients.len());
                if !c.is_crashed(client.node) {
                    c.disconnect(client);
                }
            }
            Step::Faults { drop, duplicate } => {
                c.set_bus_faults(BusFaults { drop, duplicate, max_delay: Duration::from_millis(30) })
            }
            Step::LinkFlap { node, long } if !c.is_crashed(node) => {
                c.link_down(node);
                c.advance(if long { TIMEOUT * 2 } else { BEAT });
                c.link_up(node);
            }
            Step::Crash { node } if !crashed => {
                crashed = true;
                c.crash(node);
                clients.retain(|(client, _)| client.node != node);
            }
            Step::Wait { ms } => c.advance(Duration::from_millis(ms)),
            _ => {}
        }
    }
    c.set_bus_faults(BusFaults::default());
    c.advance(TIMEOUT * 4 + GRACE);
    let live: BTreeSet<String> = clients.iter().map(|(_, name)| name.clone()).collect();
    let live: Vec<String> = live.into_iter().collect();
    let survivors: Vec<usize> = (0..3).filter(|&n| !c.is_crashed(n)).collect();
    for node in survivors {
        let asker = c.guest(node, &format!("asker{node}"));
        let mut seen = who(&mut c, asker);
        seen.retain(|n| !n.starts_with("asker"));
        assert_eq!(seen, live, "who on node {node}");
    }
    for (client, _) in &clients {
        check_alternation(&c, *client);
    }
}

/// No member saw `online` twice in a row for a user without an `offline`
/// between (nor `offline` twice).
fn check_alternation(c: &Cluster, client: NodeClient) {
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for event in c.log(client) {
        let Some(v) = event.json() else { continue };
        if v["type"] != "presence" || !(v["state"] == "online" || v["state"] == "offline") {
            continue;
        }
        let (user, state) = (v["user"].as_str().unwrap().to_string(), v["state"].as_str().unwrap().to_string());
        let before = last.insert(user.clone(), state.clone());
        assert_ne!(before.as_deref(), Some(state.as_str()), "{client:?} heard {state} of {user} twice in a row");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn presence_converges_after_faults_and_a_crash(steps in prop::collection::vec(step(), 1..30)) {
        run(steps);
    }
}

/// A guest's memberships are stored nowhere: a node that starts serving a
/// room after a guest of another node joined it learns them from that
/// node's announcements, so its `join` counts the guest, `who` lists it,
/// and the guest's `leave` comes when its node dies.
#[test]
fn a_node_that_starts_a_room_late_knows_the_guests_of_other_nodes_in_it() {
    let mut c = cluster(2);
    let otto = c.guest(0, "otto");
    let ok = c.req(otto, json!({"type":"join","room":"plaza"}));
    assert_eq!(ok["members"], 1, "{ok}");
    c.run_until_idle();
    let ann = c.login(1, "ann");
    let ok = c.req(ann, json!({"type":"join","room":"plaza"}));
    assert_eq!(ok["members"], 2, "the guest of node 0 counts: {ok}");
    let who = c.req(ann, json!({"type":"who","room":"plaza"}));
    assert_eq!(who["users"], json!([{"user":"ann","online":true},{"user":"otto","online":true}]), "{who}");
    c.take_json(ann);
    c.crash(0);
    c.advance(TIMEOUT + BEAT);
    let left: Vec<String> = c
        .take_json(ann)
        .into_iter()
        .filter(|v| v["type"] == "presence" && v["room"] == "plaza" && v["user"] == "otto")
        .map(|v| v["state"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(left, ["leave"]);
}

/// A guest `hello` whose claim passed the storage deadline was answered
/// `unavailable`; said again on the same connection once storage answers,
/// it is welcomed, and the first claim's late answer does not give away
/// the name the second one holds.
#[test]
fn a_guest_hello_past_the_storage_deadline_can_be_said_again_and_keeps_its_name() {
    let config = Config { handshake_timeout: Duration::from_secs(300), ..config() };
    let mut c = Cluster::of(2, config, store());
    let zed = c.ws_client(0);
    c.store_mut().set_node_latency(0, Duration::from_secs(30), Duration::ZERO);
    c.send(zed, json!({"type":"hello","name":"zed","ref":"h1"}));
    c.advance(Duration::from_secs(21));
    let first: Vec<serde_json::Value> = c.take_json(zed);
    assert!(first.iter().any(|v| v["ref"] == "h1" && v["code"] == "unavailable"), "{first:?}");
    c.store_mut().set_node_latency(0, Duration::ZERO, Duration::ZERO);
    let again = c.req(zed, json!({"type":"hello","name":"zed"}));
    assert_eq!(again["type"], "welcome", "{again}");
    c.advance(Duration::from_secs(30));
    c.run_until_idle();
    assert_eq!(c.store().guest_claim("zed"), Some(1), "node 0 (id 1) still holds the name");
    let other = c.ws_client(1);
    let taken = c.req(other, json!({"type":"hello","name":"zed"}));
    assert_eq!(taken["code"], "name_taken", "{taken}");
}
