//! The hub as clients see it on the wire: every request of PROTOCOL.md
//! with its replies, errors and events, presence, `since` replay, offline
//! delivery, and storage failures. Driven through `natter_sim`.

use std::time::Duration;

use serde_json::{json, Value};

use natter_core::store::{NewMessage, StoreOp, Target};
use natter_core::Config;
use natter_sim::{Client, FakeStore, Sim, START_UNIX_MS};

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
            inbox: None,
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
    let resume = w["resume"].as_str().expect("a guest gets a resume secret").to_string();
    assert!(resume.len() > 32, "{resume}");
    assert_eq!(
        w,
        json!({"type":"welcome","ref":"h1","user":"gus","guest":true,"session":session,"heartbeat_s":30,"rooms":[],
               "resume":resume})
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

/// A malformed `hello` is refused before decoding and changes nothing: the
/// first is still in flight, so the next is already authenticated too.
#[test]
fn a_malformed_hello_while_one_is_in_flight_lets_no_second_through() {
    let mut sim = sim();
    sim.store_mut().set_latency(Duration::from_millis(50), Duration::ZERO);
    let token = sim.token("alice");
    let c = sim.ws_client();
    sim.send_json(c, json!({"type":"hello","token":token,"ref":"1"}));
    sim.send_json(c, json!({"type":"hello","ref":"x"}));
    sim.send_json(c, json!({"type":"hello","name":"gus","ref":"2"}));
    sim.run_until_idle();
    let got: Vec<(Value, Value)> = sim.take_json(c).iter().map(|r| (r["ref"].clone(), r["code"].clone())).collect();
    assert_eq!(
        got,
        [(json!("x"), json!("bad_request")), (json!("2"), json!("already_authenticated")), (json!("1"), Value::Null)]
    );
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
    sim.advance(GRACE);
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
    assert!(sim.take_kind(b, "presence").is_empty(), "offline waits for the grace");
    sim.advance(GRACE);
    assert_eq!(sim.take_kind(b, "presence"), [json!({"type":"presence","room":"r","user":"alice","state":"offline"})]);
    let g = sim.guest("gus");
    join(&mut sim, g, "r");
    sim.take(b);
    sim.disconnect(g);
    assert_eq!(sim.take_kind(b, "presence"), [json!({"type":"presence","room":"r","user":"gus","state":"leave"})]);
}

/// The default presence grace.
const GRACE: Duration = Duration::from_secs(2);

#[test]
fn a_registered_user_back_within_the_grace_sends_neither_offline_nor_online() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    store.add_member("bob", "r");
    let mut sim = Sim::with_store(Config::default(), store);
    let b = sim.login("bob");
    let mut a = sim.login("alice");
    sim.take(b);
    let both_online = json!([{"user":"alice","online":true},{"user":"bob","online":true}]);
    for _ in 0..10 {
        sim.disconnect(a);
        sim.advance(GRACE / 4);
        // Within the grace alice still counts as online, in `who` too.
        assert_eq!(sim.req(b, json!({"type":"who","room":"r"}))["users"], both_online);
        a = sim.login("alice");
    }
    sim.advance(GRACE * 2);
    assert!(sim.take_kind(b, "presence").is_empty(), "flaps are not news");
    sim.disconnect(a);
    sim.advance(GRACE - Duration::from_millis(1));
    assert!(sim.take_kind(b, "presence").is_empty(), "not before the grace is over");
    sim.advance(Duration::from_millis(1));
    let offline = json!({"type":"presence","room":"r","user":"alice","state":"offline"});
    assert_eq!(sim.take_kind(b, "presence"), [offline]);
    let who = sim.req(b, json!({"type":"who","room":"r"}));
    assert_eq!(who["users"], json!([{"user":"alice","online":false},{"user":"bob","online":true}]));
    // After the grace, a new session is news again.
    sim.login("alice");
    assert_eq!(sim.take_kind(b, "presence"), [json!({"type":"presence","room":"r","user":"alice","state":"online"})]);
}

#[test]
fn with_no_grace_offline_is_at_once() {
    let mut store = store_with_users();
    store.add_member("alice", "r");
    store.add_member("bob", "r");
    let config = Config { presence_grace: Duration::ZERO, ..Config::default() };
    let mut sim = Sim::with_store(config, store);
    let b = sim.login("bob");
    let a = sim.login("alice");
    sim.take(b);
    sim.disconnect(a);
    assert_eq!(sim.take_kind(b, "presence"), [json!({"type":"presence","room":"r","user":"alice","state":"offline"})]);
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
    // A later guest with the same name is someone else: it sees none of
    // the first one's messages, and alice, who knows both as "gus", sees
    // the conversation's seq go on rather than start again.
    let g2 = sim.guest("gus");
    assert_eq!(sim.req(a1, json!({"type":"send","to":"gus","text":"new"}))["seq"], 2);
    let h = sim.req(g2, json!({"type":"history","with":"alice"}));
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(h["messages"][0]["seq"], 2);
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
            StoreOp::History { range: natter_core::store::SeqRange::Before { limit, .. }, .. } => Some(*limit),
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
    sim.advance(GRACE);
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

#[path = "hub/abuse.rs"]
mod abuse;
#[path = "hub/delivery.rs"]
mod delivery;

#[test]
fn listings_and_history_reads_have_a_budget_of_their_own() {
    let mut sim = Sim::new(Config { query_rate: 2, rate: 1000, burst: 1000, ..Config::default() });
    let a = sim.guest("ann");
    join(&mut sim, a, "r");
    // Bursts of four times the rate, whichever of the four kinds.
    let kinds = [
        json!({"type":"rooms"}),
        json!({"type":"who"}),
        json!({"type":"history","room":"r"}),
        json!({"type":"who","room":"r"}),
    ];
    for (i, kind) in kinds.iter().cycle().take(8).enumerate() {
        assert_eq!(sim.req(a, kind.clone())["type"], "ok", "query {i}");
    }
    assert_eq!(code(&sim.req(a, json!({"type":"rooms"}))), "rate_limited");
    // Messages are not held back by it.
    assert_eq!(sim.req(a, json!({"type":"send","room":"r","text":"hi"}))["type"], "ok");
    sim.advance(Duration::from_millis(600));
    assert_eq!(sim.req(a, json!({"type":"rooms"}))["type"], "ok", "the budget refills");
    // Another session has its own.
    let b = sim.guest("bob");
    assert_eq!(sim.req(b, json!({"type":"rooms"}))["type"], "ok");
}

#[test]
fn rooms_and_who_follow_membership_changes() {
    let mut sim = sim();
    let a = sim.guest("gus");
    let b = sim.guest("gil");
    join(&mut sim, a, "big");
    join(&mut sim, b, "big");
    join(&mut sim, a, "small");
    let rooms = |sim: &mut Sim, c| sim.req(c, json!({"type":"rooms"}))["rooms"].clone();
    assert_eq!(rooms(&mut sim, a), json!([{"room":"big","members":2},{"room":"small","members":1}]));
    sim.req(a, json!({"type":"leave","room":"big"}));
    sim.req(b, json!({"type":"join","room":"small"}));
    assert_eq!(rooms(&mut sim, a), json!([{"room":"small","members":2},{"room":"big","members":1}]));
    sim.disconnect(b);
    assert_eq!(rooms(&mut sim, a), json!([{"room":"small","members":1}]), "a guest's rooms end with it");
    assert_eq!(sim.req(a, json!({"type":"who"}))["users"], json!([{"user":"gus","online":true}]));
}
