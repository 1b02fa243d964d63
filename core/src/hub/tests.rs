//! The hub as clients see it on the wire: every request of PROTOCOL.md
//! with its replies, errors and events, presence, `since` replay, offline
//! delivery, and storage failures. Driven through `crate::sim`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::sim::{Client, Event, FakeStore, Sim, START_UNIX_MS};
use crate::store::{NewMessage, StoreOp, Target};

const USERS: [(&str, &str); 3] = [("alice", "alice-password"), ("bob", "bob-password"), ("carol", "carol-password")];

fn sim() -> Sim {
    Sim::with_users(Config::default(), &USERS)
}

fn store_with_users() -> FakeStore {
    let mut store = FakeStore::default();
    for (u, p) in USERS {
        store.add_user(u, p);
    }
    store
}

/// Appends `n` messages from `from` to `room` straight into the store.
fn seed_room(store: &mut FakeStore, room: &str, from: &str, n: u64) {
    for i in 0..n {
        let message = NewMessage {
            sender: from.into(),
            from: from.into(),
            to: None,
            text: format!("old{i}"),
            client_id: None,
            ts: START_UNIX_MS - 1000 + i,
            dedup_window_ms: None,
        };
        store.execute(&StoreOp::Append { target: Target::Room(room.into()), message });
    }
}

fn code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["code"].as_str().unwrap()
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

fn join(sim: &mut Sim, c: Client, room: &str) -> Value {
    let ok = sim.req(c, json!({"type":"join","room":room}));
    assert_eq!(ok["type"], "ok", "{ok}");
    ok
}

fn say(sim: &mut Sim, c: Client, room: &str, text: &str) -> u64 {
    let ok = sim.req(c, json!({"type":"send","room":room,"text":text}));
    assert_eq!(ok["type"], "ok", "{ok}");
    ok["seq"].as_u64().unwrap()
}

// ---- hello ------------------------------------------------------------------

#[test]
fn guest_hello_is_welcomed_with_every_field() {
    let mut sim = sim();
    let c = sim.ws_client();
    let w = sim.req(c, json!({"type":"hello","name":"gus","ref":"h1"}));
    let session = w["session"].as_str().expect("session id is a string").to_string();
    assert!(!session.is_empty());
    assert_eq!(
        w,
        json!({"type":"welcome","ref":"h1","user":"gus","guest":true,"session":session,"heartbeat_s":30,"rooms":[]})
    );
    // Without a ref the welcome has none.
    let d = sim.ws_client();
    sim.send_json(d, json!({"type":"hello","name":"gil"}));
    let w = sim.take_json(d);
    assert_eq!(w.len(), 1);
    assert!(w[0].get("ref").is_none());
    assert_ne!(w[0]["session"], json!(session), "sessions have distinct ids");
}

#[test]
fn token_hello_lists_stored_rooms_with_seq_and_read() {
    let mut store = store_with_users();
    store.add_member("alice", "lobby");
    store.add_member("alice", "den");
    seed_room(&mut store, "lobby", "bob", 42);
    store.execute(&StoreOp::Read { user: "alice".into(), target: Target::Room("lobby".into()), seq: 40 });
    let mut sim = Sim::with_store(Config::default(), store);
    let token = sim.token("alice");
    let c = sim.ws_client();
    let w = sim.req(c, json!({"type":"hello","token":token}));
    assert_eq!((&w["user"], &w["guest"]), (&json!("alice"), &json!(false)));
    assert_eq!(w["rooms"], json!([{"room":"den","seq":0,"read":0},{"room":"lobby","seq":42,"read":40}]));
    // `history` with `before: seq + 1` fills what came before.
    let h = sim.req(c, json!({"type":"history","room":"lobby","before":43,"limit":3}));
    assert_eq!(seqs(h["messages"].as_array().unwrap()), [40, 41, 42]);
}

#[test]
fn hello_errors() {
    let mut sim = sim();
    let c = sim.ws_client();
    let err = sim.req(c, json!({"type":"hello","name":"alice","ref":"x"}));
    assert_eq!((code(&err), &err["ref"]), ("name_taken", &json!("x")), "a registered name");
    for bad in ["", "two words", "bob#1", &"x".repeat(33)] {
        assert_eq!(code(&sim.req(c, json!({"type":"hello","name":bad}))), "bad_name", "{bad:?}");
    }
    assert_eq!(code(&sim.req(c, json!({"type":"hello","token":"nonsense"}))), "invalid_token");
    assert_eq!(code(&sim.req(c, json!({"type":"hello"}))), "bad_request");
    let _gus = sim.guest("gus");
    assert_eq!(code(&sim.req(c, json!({"type":"hello","name":"gus"}))), "name_taken", "a guest online now");
    // After the errors the session can still say hello.
    assert_eq!(sim.req(c, json!({"type":"hello","name":"x"}))["type"], "welcome");
    assert_eq!(code(&sim.req(c, json!({"type":"hello","name":"y"}))), "already_authenticated");
    assert_eq!(sim.req(c, json!({"type":"ping"}))["type"], "pong", "still the same session");
}

#[test]
fn a_guest_name_is_free_again_when_its_session_ends() {
    let mut sim = sim();
    let gus = sim.guest("gus");
    sim.disconnect(gus);
    let again = sim.guest("gus");
    assert_eq!(sim.req(again, json!({"type":"who"}))["users"], json!([{"user":"gus","online":true}]));
}

#[test]
fn a_name_a_guest_uses_cannot_be_registered() {
    let mut sim = sim();
    let _dave = sim.guest("dave");
    let res = sim.http("POST", "/api/register", &json!({"user":"dave","password":"long-enough"}).to_string(), &[]);
    assert_eq!(res.status, 409);
}

#[test]
fn guests_disabled() {
    let config = Config { no_guests: true, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    let c = sim.ws_client();
    assert_eq!(code(&sim.req(c, json!({"type":"hello","name":"gus"}))), "guests_disabled");
    let token = sim.token("alice");
    assert_eq!(sim.req(c, json!({"type":"hello","token":token}))["type"], "welcome");
}

#[test]
fn a_second_hello_while_the_first_is_in_flight_is_already_authenticated() {
    let mut sim = sim();
    sim.store_mut().set_latency(Duration::from_millis(50), Duration::ZERO);
    let token = sim.token("alice");
    let c = sim.ws_client();
    sim.send_json(c, json!({"type":"hello","token":token,"ref":"1"}));
    sim.send_json(c, json!({"type":"hello","name":"gus","ref":"2"}));
    sim.run_until_idle();
    let got = sim.take_json(c);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((&got[0]["ref"], &got[0]["code"]), (&json!("2"), &json!("already_authenticated")));
    assert_eq!((&got[1]["ref"], &got[1]["type"]), (&json!("1"), &json!("welcome")));
}

// ---- join and leave, presence ---------------------------------------------------

#[test]
fn join_answers_seq_and_members_and_tells_the_room() {
    let mut sim = sim();
    let a = sim.guest("gus");
    let b = sim.guest("gil");
    let ok = sim.req(a, json!({"type":"join","room":"r","ref":"j"}));
    assert_eq!(ok, json!({"type":"ok","ref":"j","room":"r","seq":0,"members":1}));
    assert_eq!(sim.take_json(a), [json!({"type":"presence","room":"r","user":"gus","state":"join"})]);
    say(&mut sim, a, "r", "one");
    let ok = join(&mut sim, b, "r");
    assert_eq!((&ok["seq"], &ok["members"]), (&json!(1), &json!(2)));
    let presence = json!({"type":"presence","room":"r","user":"gil","state":"join"});
    assert_eq!(sim.take_kind(a, "presence"), std::slice::from_ref(&presence));
    assert_eq!(sim.take_kind(b, "presence"), [presence]);
    // Joining again is not an error, and tells nobody.
    let ok = join(&mut sim, b, "r");
    assert_eq!(ok["members"], 2);
    assert!(sim.take(a).is_empty());
    assert_eq!(code(&sim.req(a, json!({"type":"join","room":"no good"}))), "bad_name");
    assert_eq!(code(&sim.req(a, json!({"type":"join","room":"x".repeat(33)}))), "bad_name");
}

#[test]
fn membership_belongs_to_the_user_not_the_session() {
    let mut sim = sim();
    let a1 = sim.login("alice");
    let a2 = sim.login("alice");
    let b = sim.guest("gus");
    join(&mut sim, b, "r");
    join(&mut sim, a1, "r");
    assert_eq!(sim.take_kind(a2, "presence"), [json!({"type":"presence","room":"r","user":"alice","state":"join"})]);
    assert!(sim.take_kind(a2, "ok").is_empty(), "the ok goes to the requesting session only");
    say(&mut sim, b, "r", "hi");
    assert_eq!(sim.take_kind(a1, "message").len(), 1);
    assert_eq!(sim.take_kind(a2, "message").len(), 1);
    sim.take(b);
    let ok = sim.req(a2, json!({"type":"leave","room":"r","ref":"l"}));
    assert_eq!(ok, json!({"type":"ok","ref":"l"}));
    let leave = json!({"type":"presence","room":"r","user":"alice","state":"leave"});
    assert_eq!(sim.take_kind(a1, "presence"), std::slice::from_ref(&leave));
    assert_eq!(sim.take_kind(a2, "presence"), std::slice::from_ref(&leave));
    assert_eq!(sim.take_kind(b, "presence"), [leave]);
    say(&mut sim, b, "r", "gone?");
    assert!(sim.take_kind(a1, "message").is_empty());
    assert!(sim.take_kind(a2, "message").is_empty());
    assert_eq!(code(&sim.req(a1, json!({"type":"leave","room":"r"}))), "not_member");
    assert_eq!(code(&sim.req(a1, json!({"type":"leave","room":"never"}))), "not_member");
    assert!(sim.store().members("r").is_empty(), "alice's leave is stored; gus is a guest");
}

#[test]
fn registered_memberships_last_across_sessions() {
    let mut sim = sim();
    let a = sim.login("alice");
    join(&mut sim, a, "r");
    say(&mut sim, a, "r", "one");
    sim.disconnect(a);
    let g = sim.guest("gus");
    join(&mut sim, g, "r");
    assert_eq!(
        sim.req(g, json!({"type":"who","room":"r"}))["users"],
        json!([{"user":"alice","online":false},{"user":"gus","online":true}])
    );
    say(&mut sim, g, "r", "two");
    let token = sim.token("alice");
    let a = sim.ws_client();
    let w = sim.req(a, json!({"type":"hello","token":token}));
    assert_eq!(w["rooms"], json!([{"room":"r","seq":2,"read":0}]));
    say(&mut sim, g, "r", "three");
    assert_eq!(seqs(&sim.take_kind(a, "message")), [3], "live messages follow welcome's seq");
}

#[test]
fn online_and_offline_for_registered_members_leave_for_guests() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    store.add_member("bob", "r");
    let mut sim = Sim::with_store(Config::default(), store);
    let b = sim.login("bob");
    let a1 = sim.login("alice");
    let online = json!({"type":"presence","room":"r","user":"alice","state":"online"});
    assert_eq!(sim.take_kind(b, "presence"), [online]);
    assert!(sim.take_kind(a1, "presence").is_empty(), "no online about oneself");
    let a2 = sim.login("alice");
    assert!(sim.take_kind(b, "presence").is_empty(), "only the first session");
    sim.disconnect(a1);
    assert!(sim.take_kind(b, "presence").is_empty(), "not the last session");
    sim.disconnect(a2);
    assert_eq!(sim.take_kind(b, "presence"), [json!({"type":"presence","room":"r","user":"alice","state":"offline"})]);
    let g = sim.guest("gus");
    join(&mut sim, g, "r");
    sim.take(b);
    sim.disconnect(g);
    assert_eq!(sim.take_kind(b, "presence"), [json!({"type":"presence","room":"r","user":"gus","state":"leave"})]);
}

// ---- send ---------------------------------------------------------------------

#[test]
fn room_messages_go_to_every_session_of_every_member_and_nobody_else() {
    let mut sim = sim();
    let a1 = sim.login("alice");
    let a2 = sim.login("alice");
    let b = sim.guest("gus");
    let outsider = sim.guest("out");
    join(&mut sim, a1, "lobby");
    join(&mut sim, b, "lobby");
    for c in [a1, a2, b, outsider] {
        sim.take(c);
    }
    let ok = sim.req(a1, json!({"type":"send","room":"lobby","text":"hi","id":"c-17","ref":"s"}));
    assert_eq!(ok, json!({"type":"ok","ref":"s","seq":1}));
    let want =
        json!({"type":"message","room":"lobby","seq":1,"from":"alice","text":"hi","ts":START_UNIX_MS,"id":"c-17"});
    for c in [a1, a2, b] {
        assert_eq!(sim.take_json(c), std::slice::from_ref(&want));
    }
    assert!(sim.take(outsider).is_empty());
    sim.advance(Duration::from_millis(5));
    let ok = sim.req(b, json!({"type":"send","room":"lobby","text":"yo"}));
    assert_eq!(ok["seq"], 2);
    let msg = &sim.take_kind(a2, "message")[0];
    assert_eq!(msg, &json!({"type":"message","room":"lobby","seq":2,"from":"gus","text":"yo","ts":START_UNIX_MS + 5}));
    assert_eq!(code(&sim.req(outsider, json!({"type":"send","room":"lobby","text":"let me in"}))), "not_member");
    assert_eq!(code(&sim.req(outsider, json!({"type":"send","room":"nowhere","text":"x"}))), "not_member");
    assert_eq!(sim.store().room_seq("lobby"), 2);
}

#[test]
fn a_repeated_id_is_acknowledged_again_and_never_delivered_twice() {
    let mut sim = sim();
    let a1 = sim.login("alice");
    let a2 = sim.login("alice");
    let b = sim.guest("gus");
    join(&mut sim, a1, "r");
    join(&mut sim, b, "r");
    sim.take(b);
    let first = sim.req(a1, json!({"type":"send","room":"r","text":"hi","id":"m1"}));
    say(&mut sim, b, "r", "between");
    let again = sim.req(a1, json!({"type":"send","room":"r","text":"hi","id":"m1"}));
    let other = sim.req(a2, json!({"type":"send","room":"r","text":"hi","id":"m1"}));
    assert_eq!((first["seq"].as_u64(), again["seq"].as_u64(), other["seq"].as_u64()), (Some(1), Some(1), Some(1)));
    // Another user may use the same id.
    assert_eq!(sim.req(b, json!({"type":"send","room":"r","text":"hi","id":"m1"}))["seq"], 3);
    assert_eq!(seqs(&sim.take_kind(b, "message")), [1, 2, 3]);
    // Also with the first send still in flight.
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::ZERO);
    sim.send_json(a1, json!({"type":"send","room":"r","text":"x","id":"m2","ref":"p"}));
    sim.send_json(a1, json!({"type":"send","room":"r","text":"x","id":"m2","ref":"q"}));
    sim.run_until_idle();
    let p = sim.take_reply(a1, "p").unwrap();
    let q = sim.take_reply(a1, "q").unwrap();
    assert_eq!((p["seq"].as_u64(), q["seq"].as_u64()), (Some(4), Some(4)));
    assert_eq!(seqs(&sim.take_kind(b, "message")), [4]);
}

#[test]
fn private_messages_go_to_every_session_of_to_and_echo_to_the_senders_others() {
    let mut sim = sim();
    let a1 = sim.login("alice");
    let a2 = sim.login("alice");
    let b1 = sim.login("bob");
    let b2 = sim.login("bob");
    let c = sim.login("carol");
    let ok = sim.req(a1, json!({"type":"send","to":"bob","text":"psst","id":"p1","ref":"s"}));
    assert_eq!(ok, json!({"type":"ok","ref":"s","seq":1}));
    let want = json!({"type":"private","seq":1,"from":"alice","to":"bob","text":"psst","ts":START_UNIX_MS,"id":"p1"});
    for s in [b1, b2, a2] {
        assert_eq!(sim.take_kind(s, "private"), std::slice::from_ref(&want));
    }
    assert!(sim.take_kind(a1, "private").is_empty(), "the sending session has its ok");
    assert!(sim.take(c).is_empty());
    // One counter per pair, in both directions.
    assert_eq!(sim.req(b2, json!({"type":"send","to":"alice","text":"hi"}))["seq"], 2);
    assert_eq!(sim.req(a1, json!({"type":"send","to":"carol","text":"hi"}))["seq"], 1);
    assert_eq!(code(&sim.req(a1, json!({"type":"send","to":"nobody","text":"hi"}))), "no_such_user");
    // A registered user offline still gets them (stored); a guest only online.
    sim.disconnect(c);
    assert_eq!(sim.req(a1, json!({"type":"send","to":"carol","text":"later"}))["seq"], 2);
    let g = sim.guest("gus");
    assert_eq!(sim.req(a1, json!({"type":"send","to":"gus","text":"hey"}))["seq"], 1);
    assert_eq!(sim.take_kind(g, "private")[0]["text"], "hey");
    sim.disconnect(g);
    assert_eq!(code(&sim.req(a1, json!({"type":"send","to":"gus","text":"hey"}))), "no_such_user");
    // A later guest with the same name is someone else.
    let g2 = sim.guest("gus");
    assert_eq!(sim.req(a1, json!({"type":"send","to":"gus","text":"new"}))["seq"], 1);
    let h = sim.req(g2, json!({"type":"history","with":"alice"}));
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn messages_to_oneself() {
    let mut sim = sim();
    let a1 = sim.login("alice");
    let a2 = sim.login("alice");
    assert_eq!(sim.req(a1, json!({"type":"send","to":"alice","text":"note"}))["seq"], 1);
    // Every session of `to`, the sending one included, and once each.
    assert_eq!(sim.take_kind(a2, "private").len(), 1);
    assert_eq!(sim.take_kind(a1, "private").len(), 1);
}

// ---- history, who, rooms, conversations ------------------------------------------

#[test]
fn history_of_rooms_and_conversations() {
    let mut store = store_with_users();
    seed_room(&mut store, "r", "bob", 5);
    store.add_member("bob", "r");
    let mut sim = Sim::with_store(Config::default(), store);
    let a = sim.login("alice");
    assert_eq!(code(&sim.req(a, json!({"type":"history","room":"r"}))), "not_member");
    join(&mut sim, a, "r");
    let h = sim.req(a, json!({"type":"history","room":"r","limit":2,"ref":"h"}));
    assert_eq!(h["ref"], "h");
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(seqs(msgs), [4, 5]);
    assert_eq!(
        msgs[0],
        json!({"type":"message","room":"r","seq":4,"from":"bob","text":"old3","ts":START_UNIX_MS - 1000 + 3})
    );
    let h = sim.req(a, json!({"type":"history","room":"r","before":4,"limit":2}));
    assert_eq!(seqs(h["messages"].as_array().unwrap()), [2, 3]);
    let h = sim.req(a, json!({"type":"history","room":"r"}));
    assert_eq!(seqs(h["messages"].as_array().unwrap()), [1, 2, 3, 4, 5]);
    sim.req(a, json!({"type":"history","room":"r","limit":100000}));
    let limits: Vec<u32> = sim
        .store()
        .log()
        .iter()
        .filter_map(|op| match op {
            StoreOp::History { range: crate::store::SeqRange::Before { limit, .. }, .. } => Some(*limit),
            _ => None,
        })
        .collect();
    assert_eq!(limits, [2, 2, 50, 500], "default 50, at most 500");

    sim.req(a, json!({"type":"send","to":"bob","text":"one"}));
    let b = sim.login("bob");
    sim.req(b, json!({"type":"send","to":"alice","text":"two"}));
    let h = sim.req(a, json!({"type":"history","with":"bob"}));
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(
        (&msgs[0]["type"], &msgs[0]["from"], &msgs[0]["to"]),
        (&json!("private"), &json!("alice"), &json!("bob"))
    );
    assert_eq!((&msgs[1]["seq"], &msgs[1]["text"]), (&json!(2), &json!("two")));
    assert_eq!(code(&sim.req(a, json!({"type":"history","with":"nobody"}))), "no_such_user");
    assert_eq!(code(&sim.req(a, json!({"type":"history"}))), "bad_request");
}

#[test]
fn who_lists_members_or_users_online() {
    let mut sim = sim();
    let a = sim.login("alice");
    let b = sim.login("bob");
    let g = sim.guest("gus");
    join(&mut sim, a, "r");
    join(&mut sim, b, "r");
    sim.disconnect(b);
    let who = sim.req(g, json!({"type":"who","room":"r"}));
    assert_eq!(who["users"], json!([{"user":"alice","online":true},{"user":"bob","online":false}]));
    let who = sim.req(g, json!({"type":"who"}));
    assert_eq!(who["users"], json!([{"user":"alice","online":true},{"user":"gus","online":true}]));
    let who = sim.req(g, json!({"type":"who","limit":1}));
    assert_eq!(who["users"].as_array().unwrap().len(), 1);
    let who = sim.req(g, json!({"type":"who","room":"nothing"}));
    assert_eq!(who["users"], json!([]));
}

#[test]
fn rooms_most_members_first() {
    let mut sim = sim();
    let a = sim.guest("a");
    let b = sim.guest("b");
    let c = sim.guest("c");
    for (who, room) in [(a, "small"), (a, "big"), (b, "big"), (c, "big"), (a, "mid"), (b, "mid")] {
        join(&mut sim, who, room);
    }
    let rooms = sim.req(a, json!({"type":"rooms"}));
    assert_eq!(
        rooms["rooms"],
        json!([{"room":"big","members":3},{"room":"mid","members":2},{"room":"small","members":1}])
    );
    let rooms = sim.req(a, json!({"type":"rooms","limit":2}));
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 2);
    sim.disconnect(a);
    let rooms = sim.req(b, json!({"type":"rooms"}));
    assert_eq!(rooms["rooms"], json!([{"room":"big","members":2},{"room":"mid","members":1}]));
}

#[test]
fn conversations_most_recent_first_with_read_marks() {
    let mut sim = sim();
    let a = sim.login("alice");
    let b = sim.login("bob");
    let g = sim.guest("gus");
    sim.req(a, json!({"type":"send","to":"bob","text":"1"}));
    sim.advance(Duration::from_millis(1));
    sim.req(g, json!({"type":"send","to":"alice","text":"2"}));
    sim.advance(Duration::from_millis(1));
    sim.req(b, json!({"type":"send","to":"alice","text":"3"}));
    let ok = sim.req(a, json!({"type":"read","with":"bob","seq":2,"ref":"r"}));
    assert_eq!(ok, json!({"type":"ok","ref":"r"}));
    let list = sim.req(a, json!({"type":"conversations"}));
    assert_eq!(list["conversations"], json!([{"with":"bob","seq":2,"read":2},{"with":"gus","seq":1,"read":0}]));
    let list = sim.req(a, json!({"type":"conversations","limit":1}));
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
}

// ---- read, typing, ack, ping --------------------------------------------------------

#[test]
fn read_marks_go_to_the_users_other_sessions() {
    let mut sim = sim();
    let a1 = sim.login("alice");
    let a2 = sim.login("alice");
    let b = sim.login("bob");
    join(&mut sim, a1, "r");
    join(&mut sim, b, "r");
    say(&mut sim, b, "r", "x");
    for c in [a1, a2, b] {
        sim.take(c);
    }
    assert_eq!(sim.req(a1, json!({"type":"read","room":"r","seq":1,"ref":"m"})), json!({"type":"ok","ref":"m"}));
    assert_eq!(sim.take_json(a2), [json!({"type":"read","room":"r","seq":1})]);
    assert!(sim.take(a1).is_empty() && sim.take(b).is_empty());
    assert_eq!(sim.store().room_read("alice", "r"), 1);
    sim.req(b, json!({"type":"send","to":"alice","text":"pm"}));
    sim.take(a1);
    sim.take(a2);
    sim.req(a2, json!({"type":"read","with":"bob","seq":1}));
    assert_eq!(sim.take_json(a1), [json!({"type":"read","with":"bob","seq":1})]);
    assert_eq!(sim.store().conversation_read("alice", "bob"), 1);
    // The mark shows up in the next welcome.
    let token = sim.token("alice");
    let a3 = sim.ws_client();
    assert_eq!(sim.req(a3, json!({"type":"hello","token":token}))["rooms"], json!([{"room":"r","seq":1,"read":1}]));
    assert_eq!(code(&sim.req(a1, json!({"type":"read","room":"other","seq":1}))), "not_member");
    assert_eq!(code(&sim.req(a1, json!({"type":"read","with":"nobody","seq":1}))), "no_such_user");
    assert_eq!(code(&sim.req(a1, json!({"type":"read","room":"r"}))), "bad_request");
}

#[test]
fn typing_goes_to_the_room_or_the_user_and_is_not_stored() {
    let mut sim = sim();
    let a = sim.guest("gus");
    let b = sim.guest("gil");
    let c = sim.guest("out");
    join(&mut sim, a, "r");
    join(&mut sim, b, "r");
    sim.take(a);
    sim.take(b);
    assert_eq!(sim.req(a, json!({"type":"typing","room":"r","ref":"t"})), json!({"type":"ok","ref":"t"}));
    assert_eq!(sim.take_json(b), [json!({"type":"typing","room":"r","user":"gus"})]);
    assert!(sim.take(c).is_empty());
    sim.take(a);
    sim.req(a, json!({"type":"typing","to":"out"}));
    assert_eq!(sim.take_json(c), [json!({"type":"typing","user":"gus","to":"out"})]);
    assert!(sim.take(b).is_empty());
    assert_eq!(code(&sim.req(c, json!({"type":"typing","room":"r"}))), "not_member");
    assert_eq!(code(&sim.req(c, json!({"type":"typing","to":"nobody"}))), "no_such_user");
    assert!(sim.store().log().iter().all(|op| !matches!(op, StoreOp::Append { .. })));
}

#[test]
fn ping_is_answered_by_pong() {
    let mut sim = sim();
    let a = sim.guest("gus");
    assert_eq!(sim.req(a, json!({"type":"ping","ref":"p"})), json!({"type":"pong","ref":"p"}));
}

// ---- offline delivery -------------------------------------------------------------

#[test]
fn inbox_at_welcome_until_acked() {
    let mut sim = sim();
    let a = sim.login("alice");
    for (i, text) in ["one", "two"].iter().enumerate() {
        assert_eq!(sim.req(a, json!({"type":"send","to":"bob","text":text}))["seq"], i as u64 + 1);
    }
    sim.req(a, json!({"type":"send","to":"carol","text":"for carol"}));
    let b = sim.login("bob");
    let got: Vec<Value> = sim.log(b).iter().filter_map(|e| e.json().cloned()).collect();
    assert_eq!(got[0]["type"], "welcome", "welcome comes first");
    let pms: Vec<&Value> = got.iter().filter(|v| v["type"] == "private").collect();
    assert_eq!(pms.iter().map(|v| v["text"].as_str().unwrap()).collect::<Vec<_>>(), ["one", "two"]);
    // Delivered but never acked: delivered again.
    sim.disconnect(b);
    let b = sim.login("bob");
    assert_eq!(seqs(&sim.take_kind(b, "private")), [1, 2]);
    assert_eq!(sim.req(b, json!({"type":"ack","with":"alice","seq":1,"ref":"k"})), json!({"type":"ok","ref":"k"}));
    sim.disconnect(b);
    let b = sim.login("bob");
    assert_eq!(seqs(&sim.take_kind(b, "private")), [2]);
    sim.req(b, json!({"type":"ack","with":"alice","seq":2}));
    sim.req(b, json!({"type":"ack","with":"alice","seq":1}));
    assert_eq!(sim.store().ack("bob", "alice"), 2, "an ack never goes down");
    sim.disconnect(b);
    let b = sim.login("bob");
    assert!(sim.take_kind(b, "private").is_empty());
    sim.req(a, json!({"type":"send","to":"bob","text":"live"}));
    assert_eq!(seqs(&sim.take_kind(b, "private")), [3]);
    assert_eq!(code(&sim.req(b, json!({"type":"ack","with":"nobody","seq":1}))), "no_such_user");
}

#[test]
fn inbox_and_live_messages_meet_without_a_gap_or_a_duplicate() {
    let mut sim = sim();
    let a = sim.login("alice");
    sim.req(a, json!({"type":"send","to":"bob","text":"before"}));
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::ZERO);
    let token = sim.token("bob");
    let b = sim.ws_client();
    sim.send_json(b, json!({"type":"hello","token":token}));
    // alice keeps sending while bob's welcome and inbox reads are in flight.
    for i in 0..12 {
        sim.send_json(a, json!({"type":"send","to":"bob","text":format!("m{i}")}));
        sim.advance(Duration::from_millis(3));
    }
    sim.run_until_idle();
    let got: Vec<Value> = sim.take_json(b);
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(
        seqs(&got.iter().filter(|v| v["type"] == "private").cloned().collect::<Vec<_>>()),
        (1..=13).collect::<Vec<_>>()
    );
}

#[test]
fn echoes_and_the_inbox_keep_a_conversation_in_order() {
    let mut sim = sim();
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::ZERO);
    let a1 = sim.login("alice");
    let b = sim.login("bob");
    // alice's second session: CheckToken, then ReadMarks, then the inbox.
    let token = sim.token("alice");
    let a2 = sim.ws_client();
    sim.send_json(a2, json!({"type":"hello","token":token}));
    sim.step(); // CheckToken done, ReadMarks in flight
                // Both complete after ReadMarks (alice's inbox then pending) and
                // before the inbox read.
    sim.send_json(b, json!({"type":"send","to":"alice","text":"from bob"}));
    sim.send_json(a1, json!({"type":"send","to":"bob","text":"from alice"}));
    sim.send_json(b, json!({"type":"send","to":"alice","text":"bob again"}));
    sim.run_until_idle();
    let got = sim.take_kind(a2, "private");
    assert_eq!(seqs(&got), [1, 2, 3], "{got:?}");
    assert_eq!(got[1]["from"], "alice", "the echo has its place");
}

#[test]
fn a_replay_is_kept_within_half_the_queue_bound() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    seed_room(&mut store, "r", "bob", 50);
    let config = Config { max_queue: 4000, ..Config::default() };
    let mut sim = Sim::with_store(config, store);
    let a = sim.login("alice");
    sim.take(a);
    sim.send_json(a, json!({"type":"join","room":"r","since":0,"ref":"j"}));
    sim.run_until_idle();
    let got = sim.take_json(a);
    assert!(sim.is_open(a), "the replay did not make it a slow consumer");
    assert_eq!(got[0]["recovered"], false);
    let oldest = got[0]["oldest"].as_u64().unwrap();
    assert!(oldest > 1);
    assert_eq!(seqs(&got[1..]), (oldest..=50).collect::<Vec<_>>());
}

// ---- since replay --------------------------------------------------------------------

#[test]
fn join_since_answers_ok_then_the_replay_then_live_messages() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    store.add_member("bob", "r");
    seed_room(&mut store, "r", "bob", 5);
    let mut sim = Sim::with_store(Config::default(), store);
    let b = sim.login("bob");
    let a = sim.login("alice");
    sim.take(a);
    sim.send_json(a, json!({"type":"join","room":"r","since":2,"ref":"j"}));
    sim.run_until_idle();
    say(&mut sim, b, "r", "live");
    let got = sim.take_json(a);
    assert_eq!(got[0], json!({"type":"ok","ref":"j","room":"r","seq":5,"members":2,"recovered":true}));
    assert_eq!(seqs(&got[1..]), [3, 4, 5, 6]);
    assert!(got[1..].iter().all(|m| m["type"] == "message"));
    // Nothing to replay.
    let got = sim.req(a, json!({"type":"join","room":"r","since":6}));
    assert_eq!((&got["recovered"], &got["seq"]), (&json!(true), &json!(6)));
    let got = sim.req(a, json!({"type":"join","room":"r","since":60}));
    assert_eq!(got["recovered"], true);
    assert!(sim.take_kind(a, "message").is_empty());
}

#[test]
fn join_since_with_messages_completing_while_the_replay_is_read() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    store.add_member("bob", "r");
    seed_room(&mut store, "r", "bob", 3);
    let mut sim = Sim::with_store(Config::default(), store);
    let b = sim.login("bob");
    let a = sim.login("alice");
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::from_millis(5));
    sim.take(a);
    // bob's sends are in flight before, around and after alice's replay read.
    for i in 0..3 {
        sim.send_json(b, json!({"type":"send","room":"r","text":format!("a{i}")}));
    }
    sim.send_json(a, json!({"type":"join","room":"r","since":1,"ref":"j"}));
    for i in 0..3 {
        sim.advance(Duration::from_millis(4));
        sim.send_json(b, json!({"type":"send","room":"r","text":format!("b{i}")}));
    }
    sim.run_until_idle();
    let got = sim.take_json(a);
    let ok = got.iter().position(|v| v["ref"] == "j").unwrap();
    assert_eq!(got[ok]["recovered"], true);
    let after: Vec<Value> = got[ok + 1..].iter().filter(|v| v["type"] == "message").cloned().collect();
    assert_eq!(seqs(&after), (2..=9).collect::<Vec<_>>(), "{got:?}");
    let before: Vec<u64> = seqs(&got[..ok].iter().filter(|v| v["type"] == "message").cloned().collect::<Vec<_>>());
    assert!(before.is_empty(), "live messages wait for the replay: {before:?}");
}

#[test]
fn join_since_by_a_new_member() {
    let mut store = store_with_users();
    seed_room(&mut store, "r", "bob", 4);
    store.add_member("bob", "r");
    let mut sim = Sim::with_store(Config::default(), store);
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::ZERO);
    let b = sim.login("bob");
    let a = sim.login("alice");
    sim.take(a);
    sim.send_json(b, json!({"type":"send","room":"r","text":"x"}));
    sim.send_json(a, json!({"type":"join","room":"r","since":2,"ref":"j"}));
    sim.send_json(b, json!({"type":"send","room":"r","text":"y"}));
    sim.run_until_idle();
    let got = sim.take_json(a);
    let ok = got.iter().position(|v| v["ref"] == "j").unwrap();
    assert_eq!(got[ok]["recovered"], true);
    let after: Vec<Value> = got[ok + 1..].iter().filter(|v| v["type"] == "message").cloned().collect();
    assert_eq!(seqs(&after), [3, 4, 5, 6], "{got:?}");
}

#[test]
fn a_leave_right_after_a_join_with_since_waits_for_the_replay() {
    let mut sim = sim();
    let g = sim.guest("gus");
    let h = sim.guest("gil");
    join(&mut sim, h, "r");
    say(&mut sim, h, "r", "before");
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::ZERO);
    sim.take(g);
    sim.send_json(g, json!({"type":"join","room":"r","since":0,"ref":"j"}));
    sim.send_json(g, json!({"type":"leave","room":"r","ref":"l"}));
    sim.send_json(g, json!({"type":"send","room":"r","text":"after","ref":"s"}));
    sim.run_until_idle();
    let got: Vec<String> = sim
        .take_json(g)
        .iter()
        .map(|v| format!("{} {}", v["type"].as_str().unwrap(), v["ref"].as_str().or(v["state"].as_str()).unwrap_or("")))
        .collect();
    assert_eq!(got, ["presence join", "ok j", "message ", "presence leave", "ok l", "error s"]);
}

#[test]
fn a_replay_read_after_the_user_left_elsewhere_delivers_nothing() {
    let mut store = store_with_users();
    store.add_member("bob", "lobby");
    store.add_member("bob", "r");
    seed_room(&mut store, "r", "alice", 2);
    let mut sim = Sim::with_store(Config::default(), store);
    let here = sim.login("bob");
    let there = sim.login("bob");
    sim.take(here);
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::ZERO);
    // The second join waits in the session behind the first; the leave from
    // bob's other session is stored before its replay is read.
    sim.send_json(here, json!({"type":"join","room":"lobby","since":0,"ref":"j1"}));
    sim.send_json(here, json!({"type":"join","room":"r","since":0,"ref":"j2"}));
    sim.send_json(there, json!({"type":"leave","room":"r","ref":"l"}));
    sim.run_until_idle();
    assert_eq!(sim.take_reply(there, "l").unwrap()["type"], "ok");
    let got = sim.take_json(here);
    let left = got.iter().position(|v| v["type"] == "presence" && v["state"] == "leave").expect("told of the leave");
    assert!(got[left..].iter().all(|v| v["type"] != "message"), "messages after leaving: {got:?}");
    let j2 = got.iter().find(|v| v["ref"] == "j2").unwrap();
    assert_eq!(j2["code"], "not_member", "{got:?}");
}

#[test]
fn join_since_past_what_is_stored_is_not_recovered() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    seed_room(&mut store, "r", "bob", 10);
    store.prune("r", 6);
    let mut sim = Sim::with_store(Config::default(), store);
    let a = sim.login("alice");
    sim.take(a);
    sim.send_json(a, json!({"type":"join","room":"r","since":2,"ref":"j"}));
    sim.run_until_idle();
    let got = sim.take_json(a);
    assert_eq!(got[0], json!({"type":"ok","ref":"j","room":"r","seq":10,"members":1,"recovered":false,"oldest":6}));
    assert_eq!(seqs(&got[1..]), [6, 7, 8, 9, 10]);
    // Since 5: everything after it is stored.
    let ok = sim.req(a, json!({"type":"join","room":"r","since":5}));
    assert_eq!(ok["recovered"], true);
}

#[test]
fn a_long_absence_replays_the_newest_and_says_so() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    seed_room(&mut store, "r", "bob", 1005);
    let mut sim = Sim::with_store(Config::default(), store);
    let a = sim.login("alice");
    sim.take(a);
    sim.send_json(a, json!({"type":"join","room":"r","since":0,"ref":"j"}));
    sim.run_until_idle();
    let got = sim.take_json(a);
    assert_eq!((&got[0]["recovered"], &got[0]["oldest"]), (&json!(false), &json!(6)));
    assert_eq!(seqs(&got[1..]), (6..=1005).collect::<Vec<_>>());
}

// ---- storage failures ------------------------------------------------------------------

fn fail_appends(sim: &mut Sim) {
    sim.store_mut().fail_when(|op| matches!(op, StoreOp::Append { .. }));
}

#[test]
fn a_failed_send_is_unavailable_and_delivers_nothing() {
    let mut sim = sim();
    let a = sim.login("alice");
    let b = sim.login("bob");
    join(&mut sim, a, "r");
    join(&mut sim, b, "r");
    sim.take(a);
    sim.take(b);
    fail_appends(&mut sim);
    let err = sim.req(a, json!({"type":"send","room":"r","text":"lost","ref":"s"}));
    assert_eq!((code(&err), &err["ref"]), ("unavailable", &json!("s")));
    let err = sim.req(a, json!({"type":"send","to":"bob","text":"lost"}));
    assert_eq!(code(&err), "unavailable");
    assert!(sim.take(a).is_empty() && sim.take(b).is_empty(), "no ok, nothing delivered");
    sim.store_mut().stop_failing();
    assert_eq!(say(&mut sim, a, "r", "works"), 1, "the failure used no seq");
    assert_eq!(seqs(&sim.take_kind(b, "message")), [1]);
}

#[test]
fn a_failed_join_or_leave_changes_nothing() {
    let mut sim = sim();
    let a = sim.login("alice");
    let b = sim.login("bob");
    join(&mut sim, b, "r");
    sim.take(b);
    sim.store_mut().fail_next(1);
    assert_eq!(code(&sim.req(a, json!({"type":"join","room":"r"}))), "unavailable");
    assert!(sim.take(a).is_empty() && sim.take(b).is_empty(), "no presence");
    assert_eq!(code(&sim.req(a, json!({"type":"send","room":"r","text":"x"}))), "not_member");
    join(&mut sim, a, "r");
    sim.take(b);
    sim.store_mut().fail_next(1);
    assert_eq!(code(&sim.req(a, json!({"type":"leave","room":"r"}))), "unavailable");
    assert!(sim.take(b).is_empty());
    assert_eq!(say(&mut sim, a, "r", "still in"), 1);
    assert_eq!(sim.store().members("r"), ["alice", "bob"]);
}

#[test]
fn reads_that_fail_are_unavailable() {
    let mut sim = sim();
    let a = sim.login("alice");
    join(&mut sim, a, "r");
    sim.store_mut().fail_when(|_| true);
    for req in [
        json!({"type":"history","room":"r"}),
        json!({"type":"conversations"}),
        json!({"type":"read","room":"r","seq":1}),
        json!({"type":"ack","with":"bob","seq":1}),
        json!({"type":"join","room":"r","since":0}),
    ] {
        assert_eq!(code(&sim.req(a, req.clone())), "unavailable", "{req}");
    }
    let token = sim.token("alice");
    let c = sim.ws_client();
    assert_eq!(code(&sim.req(c, json!({"type":"hello","token":token.clone()}))), "unavailable");
    let res = sim.http("POST", "/api/login", &json!({"user":"alice","password":"alice-password"}).to_string(), &[]);
    assert_eq!(res.status, 503);
    sim.store_mut().stop_failing();
    assert_eq!(sim.req(c, json!({"type":"hello","token":token}))["type"], "welcome", "hello works again");
    assert_eq!(sim.req(a, json!({"type":"history","room":"r"}))["type"], "ok");
}

#[test]
fn a_store_past_its_deadline_is_unavailable_once() {
    let mut sim = sim();
    let a = sim.login("alice");
    let b = sim.login("bob");
    join(&mut sim, a, "r");
    join(&mut sim, b, "r");
    sim.take(b);
    sim.store_mut().set_latency(Duration::from_secs(60), Duration::ZERO);
    sim.send_json(a, json!({"type":"history","room":"r","ref":"h"}));
    sim.advance(Duration::from_secs(20));
    assert!(sim.take_reply(a, "h").is_none());
    sim.advance(Duration::from_secs(1));
    assert_eq!(code(&sim.take_reply(a, "h").expect("unavailable at the deadline")), "unavailable");
    sim.run_until_idle();
    assert!(sim.take_reply(a, "h").is_none(), "the late completion is not a second reply");
}

#[test]
fn account_api_with_a_failing_store_is_503() {
    let mut sim = sim();
    sim.store_mut().fail_next(1);
    let res = sim.http("POST", "/api/register", &json!({"user":"dave","password":"long-enough"}).to_string(), &[]);
    assert_eq!(res.status, 503);
    let res = sim.http("POST", "/api/register", &json!({"user":"dave","password":"long-enough"}).to_string(), &[]);
    assert_eq!(res.status, 201, "the name was not left reserved");
}

#[test]
fn nothing_reaches_a_session_before_welcome() {
    let mut sim = sim();
    sim.store_mut().set_latency(Duration::from_millis(10), Duration::ZERO);
    let mut store_events = Vec::new();
    let b = sim.guest("gus");
    join(&mut sim, b, "r");
    let token = sim.token("alice");
    let a = sim.ws_client();
    sim.send_json(a, json!({"type":"hello","token":token}));
    sim.send_json(b, json!({"type":"send","to":"alice","text":"early"}));
    sim.run_until_idle();
    for e in sim.take(a) {
        store_events.push(e);
    }
    let kinds: Vec<&str> = store_events.iter().filter_map(Event::kind).collect();
    assert_eq!(kinds[0], "welcome", "{kinds:?}");
}

#[test]
fn past_the_storage_backlog_requests_are_unavailable_at_once() {
    let mut sim = Sim::new(Config { store_backlog: 2, rate: 1000, burst: 1000, ..Config::default() });
    let a = sim.guest("alice");
    join(&mut sim, a, "r");
    sim.take(a);
    // Storage answers after 50 ms: two sends wait, the third finds the
    // backlog full and is refused without being stored.
    sim.store_mut().set_latency(Duration::from_millis(50), Duration::ZERO);
    for i in 0..3 {
        sim.send_json(a, json!({"type":"send","room":"r","text":format!("m{i}"),"ref":format!("s{i}")}));
    }
    sim.run_until_idle();
    let replies = sim.take_json(a);
    let by_ref = |r: &str| replies.iter().find(|v| v["ref"] == r).cloned().unwrap_or_else(|| panic!("no reply to {r}"));
    assert_eq!(by_ref("s0")["type"], "ok");
    assert_eq!(by_ref("s1")["type"], "ok");
    assert_eq!(code(&by_ref("s2")), "unavailable");
    let delivered: Vec<Value> = replies.iter().filter(|v| v["type"] == "message").map(|v| v["text"].clone()).collect();
    assert_eq!(delivered, [json!("m0"), json!("m1")], "the refused message is neither stored nor delivered");
    sim.store_mut().set_latency(Duration::ZERO, Duration::ZERO);
    assert_eq!(say(&mut sim, a, "r", "again"), 3, "the refusal used no seq");
}

#[test]
fn a_guest_who_reconnects_and_resends_is_recognised_for_ten_minutes() {
    let mut sim = sim();
    let b = sim.login("bob");
    join(&mut sim, b, "r");
    let a = sim.guest("ann");
    join(&mut sim, a, "r");
    let first = sim.req(a, json!({"type":"send","room":"r","text":"hi","id":"c-1"}));
    // The connection drops before the client saw its ok; it reconnects as
    // the same guest and resends with the same id.
    sim.disconnect(a);
    let a2 = sim.guest("ann");
    join(&mut sim, a2, "r");
    let again = sim.req(a2, json!({"type":"send","room":"r","text":"hi","id":"c-1"}));
    assert_eq!(again["seq"], first["seq"], "acknowledged again with the first seq");
    let texts: Vec<Value> = sim.take_kind(b, "message").iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, [json!("hi")], "delivered once");
    // Much later another guest takes the name and numbers its ids the same
    // way: that is a new message, not a repeat.
    sim.disconnect(a2);
    sim.advance(Duration::from_secs(11 * 60));
    sim.take(b);
    let a3 = sim.guest("ann");
    join(&mut sim, a3, "r");
    let later = sim.req(a3, json!({"type":"send","room":"r","text":"new","id":"c-1"}));
    assert_eq!(later["type"], "ok");
    assert_ne!(later["seq"], first["seq"]);
    let texts: Vec<Value> = sim.take_kind(b, "message").iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, [json!("new")]);
}
