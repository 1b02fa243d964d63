//! What happens on one node reaches the others (`hub/relay.rs`): joins and
//! leaves, `typing`, revoked tokens, over a bus that may lose them.

use serde_json::{json, Value};

use natter_core::Config;
use natter_sim::{BusFaults, Cluster, FakeStore, NodeClient};

fn cluster(nodes: usize) -> Cluster {
    Cluster::of(nodes, Config::default(), FakeStore::with_accounts(&["ann", "bob", "cyd"]))
}

fn ok(c: &mut Cluster, who: NodeClient, request: Value) -> Value {
    let reply = c.req(who, request.clone());
    assert_eq!(reply["type"], "ok", "{request} -> {reply}");
    reply
}

fn join(c: &mut Cluster, who: NodeClient, room: &str) -> Value {
    ok(c, who, json!({"type":"join","room":room}))
}

fn say(c: &mut Cluster, who: NodeClient, room: &str, text: &str) {
    ok(c, who, json!({"type":"send","room":room,"text":text}));
}

/// `presence` and `message` events of `room` since the last take, as
/// `"join bob"`, `"leave bob"` or `"message TEXT"`.
fn room_events(c: &mut Cluster, who: NodeClient, room: &str) -> Vec<String> {
    c.take_json(who)
        .into_iter()
        .filter(|v| v["room"] == room)
        .filter_map(|v| match v["type"].as_str() {
            Some("presence") => Some(format!("{} {}", v["state"].as_str()?, v["user"].as_str()?)),
            Some("message") => Some(format!("message {}", v["text"].as_str()?)),
            _ => None,
        })
        .collect()
}

fn typing(c: &mut Cluster, who: NodeClient) -> Vec<Value> {
    c.take_json(who).into_iter().filter(|v| v["type"] == "typing").collect()
}

fn who_room(c: &mut Cluster, who: NodeClient, room: &str) -> Vec<String> {
    let users = ok(c, who, json!({"type":"who","room":room}));
    users["users"].as_array().unwrap().iter().map(|u| u["user"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_join_and_a_leave_on_another_node_reach_the_members_and_the_users_other_sessions() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob_here = c.login(0, "bob");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    for who in [ann, bob_here, bob] {
        c.take_json(who);
    }
    join(&mut c, bob, "r");
    say(&mut c, bob, "r", "hi");
    assert_eq!(room_events(&mut c, ann, "r"), ["join bob", "message hi"]);
    assert_eq!(room_events(&mut c, bob_here, "r"), ["join bob", "message hi"], "the user's own session follows");
    ok(&mut c, bob, json!({"type":"leave","room":"r"}));
    assert_eq!(room_events(&mut c, ann, "r"), ["leave bob"]);
    assert_eq!(room_events(&mut c, bob_here, "r"), ["leave bob"]);
    say(&mut c, ann, "r", "after");
    assert_eq!(room_events(&mut c, bob_here, "r"), Vec::<String>::new(), "no longer in the room");
    assert_eq!(room_events(&mut c, ann, "r"), ["message after"]);
    assert!(c.node(0).metrics().bus_relayed_received.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[test]
fn a_join_on_another_node_brings_the_room_to_the_users_session_here() {
    let mut c = cluster(2);
    let ann_here = c.login(0, "ann");
    let ann = c.login(1, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, bob, "r");
    for who in [ann_here, ann, bob] {
        c.take_json(who);
    }
    join(&mut c, ann, "r");
    say(&mut c, bob, "r", "welcome");
    assert_eq!(room_events(&mut c, ann_here, "r"), ["join ann", "message welcome"]);
    let subs: Vec<&String> = c.bus().subscriptions(0).iter().collect();
    assert!(subs.contains(&&"natter.room.r".to_string()), "node 0 serves the room now: {subs:?}");
}

#[test]
fn typing_reaches_other_nodes_in_a_room_and_in_private() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    join(&mut c, bob, "r");
    c.take_json(bob);
    c.take_json(ann);
    ok(&mut c, ann, json!({"type":"typing","room":"r"}));
    assert_eq!(typing(&mut c, bob), [json!({"type":"typing","room":"r","user":"ann"})]);
    assert_eq!(typing(&mut c, ann).len(), 1, "a node skips what it relayed itself");
    ok(&mut c, ann, json!({"type":"typing","to":"bob"}));
    assert_eq!(typing(&mut c, bob), [json!({"type":"typing","user":"ann","to":"bob"})]);
    ok(&mut c, bob, json!({"type":"typing","to":"ann"}));
    assert_eq!(typing(&mut c, ann), [json!({"type":"typing","user":"bob","to":"ann"})]);
}

#[test]
fn a_logout_on_one_node_closes_the_tokens_sessions_on_every_node_with_4001() {
    let mut c = cluster(3);
    let token = c.token("ann");
    let other = c.token("ann");
    let here = c.login_with(0, &token);
    let there = c.login_with(1, &token);
    let kept = c.login_with(2, &other);
    let res = c.http(0, "POST", "/api/logout", "", &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(res.status, 204);
    assert_eq!(c.close_code(here), Some(4001));
    assert_eq!(c.close_code(there), Some(4001), "closed on the other node too");
    assert!(c.is_connected(kept), "another token's session stays");
}

#[test]
fn a_revocation_the_bus_lost_closes_the_session_after_the_link_is_back() {
    let mut c = cluster(2);
    let token = c.token("ann");
    let there = c.login_with(1, &token);
    c.link_down(1);
    let res = c.http(0, "POST", "/api/logout", "", &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(res.status, 204);
    assert!(c.is_connected(there), "the link is down: nothing reached node 1");
    c.link_up(1);
    c.run_until_idle();
    assert_eq!(c.close_code(there), Some(4001));
    assert!(c.node(1).metrics().bus_token_checks.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn a_revocation_published_before_a_new_sessions_subscription_took_effect_is_found_by_the_periodic_check() {
    let mut c = cluster(2);
    let token = c.token("ann");
    let there = c.login_with(1, &token);
    // As if node 1's subscription to ann were not in effect yet.
    c.set_bus_faults(BusFaults { drop: 1000, ..BusFaults::default() });
    let res = c.http(0, "POST", "/api/logout", "", &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(res.status, 204);
    assert!(c.is_connected(there));
    c.advance(Config::default().cluster_check + std::time::Duration::from_secs(1));
    c.run_until_idle();
    assert_eq!(c.close_code(there), Some(4001));
}

#[test]
fn a_join_published_before_a_new_sessions_subscription_took_effect_is_applied_at_the_periodic_check() {
    let mut c = cluster(2);
    let ann_here = c.login(0, "ann");
    let ann = c.login(1, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, bob, "r");
    c.take_json(ann_here);
    // As if node 0's subscription to ann were not in effect yet.
    c.set_bus_faults(BusFaults { drop: 1000, ..BusFaults::default() });
    join(&mut c, ann, "r");
    c.set_bus_faults(BusFaults::default());
    assert_eq!(room_events(&mut c, ann_here, "r"), Vec::<String>::new());
    c.advance(Config::default().cluster_check * 2 + std::time::Duration::from_secs(1));
    c.run_until_idle();
    assert_eq!(room_events(&mut c, ann_here, "r"), ["join ann"]);
    say(&mut c, bob, "r", "now");
    assert_eq!(room_events(&mut c, ann_here, "r"), ["message now"]);
}

#[test]
fn only_the_tokens_of_sessions_welcomed_lately_are_asked_about_at_the_periodic_check() {
    let mut c = cluster(2);
    let token = c.token("ann");
    let there = c.login_with(1, &token);
    let checks = |c: &Cluster| c.node(1).metrics().bus_token_checks.load(std::sync::atomic::Ordering::Relaxed);
    let check = Config::default().cluster_check;
    c.advance(check * 3);
    c.run_until_idle();
    let after_three = checks(&c);
    assert_eq!(after_three, 1, "asked once, at a check at least cluster_check after the welcome");
    c.advance(check * 3);
    c.run_until_idle();
    assert_eq!(checks(&c), after_three, "not any more");
    assert!(c.is_connected(there));
}

#[test]
fn a_revocation_lost_on_the_bus_leaves_live_tokens_alone_after_up() {
    let mut c = cluster(2);
    let token = c.token("ann");
    let there = c.login_with(1, &token);
    c.link_down(1);
    c.link_up(1);
    c.run_until_idle();
    assert!(c.is_connected(there));
    assert_eq!(c.close_code(there), None);
}

#[test]
fn a_guests_session_end_on_one_node_is_a_leave_on_the_others() {
    let mut c = cluster(2);
    let ann = c.login(1, "ann");
    join(&mut c, ann, "r");
    c.take_json(ann);
    let guest = c.guest(0, "gus");
    join(&mut c, guest, "r");
    assert_eq!(room_events(&mut c, ann, "r"), ["join gus"]);
    assert_eq!(who_room(&mut c, ann, "r"), ["ann", "gus"]);
    c.disconnect(guest);
    c.run_until_idle();
    assert_eq!(room_events(&mut c, ann, "r"), ["leave gus"]);
    assert_eq!(who_room(&mut c, ann, "r"), ["ann"]);
}

#[test]
fn who_on_a_node_that_starts_serving_a_room_lists_members_who_joined_elsewhere() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    join(&mut c, ann, "r");
    c.disconnect(ann);
    let bob = c.login(0, "bob");
    join(&mut c, bob, "r");
    // Node 1 never served "r": it heard none of this.
    let cyd = c.login(1, "cyd");
    assert_eq!(join(&mut c, cyd, "r")["members"], 3, "the join's ok counts them");
    assert_eq!(who_room(&mut c, cyd, "r"), ["ann", "bob", "cyd"]);
}

#[test]
fn a_guests_join_on_a_node_that_starts_serving_the_room_counts_members_who_joined_elsewhere() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    join(&mut c, ann, "r");
    let gus = c.guest(1, "gus");
    assert_eq!(join(&mut c, gus, "r")["members"], 2);
    assert_eq!(who_room(&mut c, gus, "r"), ["ann", "gus"]);
}

#[test]
fn relayed_events_the_bus_repeats_change_nothing_twice() {
    let mut c = cluster(2);
    c.set_bus_faults(BusFaults { duplicate: 1000, ..BusFaults::default() });
    let ann = c.login(0, "ann");
    let bob = c.login(1, "bob");
    join(&mut c, ann, "r");
    c.take_json(ann);
    join(&mut c, bob, "r");
    ok(&mut c, bob, json!({"type":"leave","room":"r"}));
    assert_eq!(room_events(&mut c, ann, "r"), ["join bob", "leave bob"]);
}

/// Bob joins a busy room on node 0 while he also has a session on node 1,
/// which has never followed the room: that session gets what follows the
/// join, not the room's backlog (the relayed join names where the room
/// stood).
#[test]
fn a_join_on_another_node_brings_what_follows_not_the_backlog() {
    let mut c = cluster(2);
    let ann = c.login(0, "ann");
    let bob_here = c.login(0, "bob");
    let bob_there = c.login(1, "bob");
    join(&mut c, ann, "busy");
    for i in 0..5 {
        say(&mut c, ann, "busy", &format!("old {i}"));
    }
    c.take_json(bob_there);
    join(&mut c, bob_here, "busy");
    say(&mut c, ann, "busy", "new");
    c.settle();
    let events = room_events(&mut c, bob_there, "busy");
    assert_eq!(events, ["join bob", "message new"], "node 1 starts the room where the join's ok stood");
}

/// The read of live tokens after the link came back failed: the next
/// periodic check asks again, and the revoked token's session is closed
/// then, not at some later reconnection.
#[test]
fn a_failed_read_of_live_tokens_is_asked_again_at_the_next_check() {
    let mut c = cluster(2);
    let token = c.token("ann");
    let there = c.login_with(1, &token);
    c.run_until_idle();
    c.advance(Config::default().cluster_check * 2);
    c.link_down(1);
    let res = c.http(0, "POST", "/api/logout", "", &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(res.status, 204);
    let mut failed = false;
    c.store_mut().fail_when(move |op| {
        let first = matches!(op, natter_core::store::StoreOp::LiveTokens { .. }) && !failed;
        failed |= first;
        first
    });
    c.link_up(1);
    c.run_until_idle();
    assert!(c.is_connected(there), "the one read after Up failed");
    c.advance(Config::default().cluster_check + std::time::Duration::from_millis(10));
    c.run_until_idle();
    assert_eq!(c.close_code(there), Some(4001));
}

/// Bob joins a room on node 0 while node 1's link is down; node 1 serves
/// the room (Ann is there) but Bob has no session on node 1, so nothing
/// else would tell it: after the link is back it reads the room's members
/// again, and `who` there lists Bob.
#[test]
fn a_join_relayed_while_the_link_was_down_is_read_after_it_is_back() {
    let mut c = cluster(2);
    let ann = c.login(1, "ann");
    join(&mut c, ann, "r");
    let bob = c.login(0, "bob");
    c.run_until_idle();
    c.link_down(1);
    join(&mut c, bob, "r");
    c.run_until_idle();
    assert_eq!(who_room(&mut c, ann, "r"), ["ann"], "node 1 heard nothing");
    c.link_up(1);
    c.run_until_idle();
    assert_eq!(who_room(&mut c, ann, "r"), ["ann", "bob"]);
}
