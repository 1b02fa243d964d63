//! Offline delivery, `since` replay and storage failures: what the hub promises across time.

use super::*;
use natter_sim::{Event, Topology};

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
    // One shard: the hub must hear the leave before the join sent after it,
    // which threads promise only for sessions on the same one.
    let mut sim = Sim::build_with(Topology::Local, Config::default(), store, natter_sim::DEFAULT_SEED);
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
fn a_guest_who_comes_back_with_its_resume_secret_is_recognised_and_nobody_else_is() {
    let mut sim = sim();
    let b = sim.login("bob");
    join(&mut sim, b, "r");
    let a = sim.ws_client();
    let welcome = sim.req(a, json!({"type":"hello","name":"ann"}));
    let resume = welcome["resume"].as_str().unwrap().to_string();
    join(&mut sim, a, "r");
    let first = sim.req(a, json!({"type":"send","room":"r","text":"hi","id":"c-1"}));
    // The connection drops before the client saw its ok; it comes back with
    // its secret and resends with the same id.
    sim.disconnect(a);
    let a2 = sim.ws_client();
    let again = sim.req(a2, json!({"type":"hello","name":"ann","resume":resume}));
    assert_eq!(again["resume"], resume.as_str(), "the same guest");
    join(&mut sim, a2, "r");
    let repeat = sim.req(a2, json!({"type":"send","room":"r","text":"hi","id":"c-1"}));
    assert_eq!(repeat["seq"], first["seq"], "acknowledged again with the first seq");
    let texts: Vec<Value> = sim.take_kind(b, "message").iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, [json!("hi")], "delivered once");
    // A moment later someone else takes the name, numbering its ids the
    // same way: a new message, never acknowledged as ann's.
    sim.disconnect(a2);
    sim.take(b);
    let a3 = sim.guest("ann");
    join(&mut sim, a3, "r");
    let other = sim.req(a3, json!({"type":"send","room":"r","text":"hi","id":"c-1"}));
    assert_eq!(other["type"], "ok");
    assert_ne!(other["seq"], first["seq"]);
    let texts: Vec<Value> = sim.take_kind(b, "message").iter().map(|m| m["text"].clone()).collect();
    assert_eq!(texts, [json!("hi")], "delivered: it is a new message");
    // A secret made up, or another guest's, proves nothing.
    sim.disconnect(a3);
    let a4 = sim.ws_client();
    let forged = sim.req(a4, json!({"type":"hello","name":"ann","resume":"1.00112233445566778899aabbccddeeff"}));
    assert_eq!(forged["type"], "welcome");
    assert_ne!(forged["resume"], resume.as_str(), "welcomed as a new guest");
    let a5 = sim.ws_client();
    let stolen = sim.req(a5, json!({"type":"hello","name":"bea","resume":resume}));
    assert_eq!(stolen["type"], "welcome");
    assert_ne!(stolen["resume"], resume.as_str());
}

#[test]
fn a_returning_guest_can_open_a_second_session_while_the_first_lingers() {
    let mut sim = sim();
    let a = sim.ws_client();
    let resume = sim.req(a, json!({"type":"hello","name":"ann"}))["resume"].as_str().unwrap().to_string();
    join(&mut sim, a, "r");
    // The old connection is not known dead yet.
    let a2 = sim.ws_client();
    let w = sim.req(a2, json!({"type":"hello","name":"ann","resume":resume}));
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["rooms"][0]["room"], "r", "the guest's rooms are its own");
    // Without the secret the name is taken.
    let c = sim.ws_client();
    assert_eq!(code(&sim.req(c, json!({"type":"hello","name":"ann"}))), "name_taken");
}

#[test]
fn a_join_with_since_that_storage_never_answers_holds_nothing_back_for_ever() {
    let mut sim = sim();
    let a = sim.login("alice");
    let b = sim.login("bob");
    join(&mut sim, a, "r");
    join(&mut sim, b, "r");
    say(&mut sim, a, "r", "one");
    sim.take(b);
    // Storage stalls past the hub's deadline while bob's session replays.
    sim.store_mut().set_latency(Duration::from_secs(30), Duration::ZERO);
    let reply = sim.req(b, json!({"type":"join","room":"r","since":0}));
    assert_eq!(code(&reply), "unavailable", "{reply}");
    sim.store_mut().set_latency(Duration::ZERO, Duration::ZERO);
    sim.advance(Duration::from_secs(15));
    // Live messages reach bob's session again.
    say(&mut sim, a, "r", "two");
    let texts: Vec<Value> = sim.take_kind(b, "message").iter().map(|m| m["text"].clone()).collect();
    assert!(texts.contains(&json!("two")), "{texts:?}");
}

/// A `hello` whose storage read passed its deadline was answered
/// `unavailable`: the session is back where it was before it, so a second
/// `hello` on the same connection, once storage answers again, is welcomed
/// (not refused as one already under way). With the default handshake
/// timeout (10 s, under the storage deadline) the connection is closed
/// first; a server that allows a longer handshake keeps it.
#[test]
fn a_hello_past_the_storage_deadline_can_be_said_again() {
    let config = Config { handshake_timeout: Duration::from_secs(300), ..Config::default() };
    let mut sim = Sim::with_users(config, &super::USERS);
    let token = sim.token("alice");
    let a = sim.ws_client();
    sim.store_mut().set_latency(Duration::from_secs(60), Duration::ZERO);
    sim.send_json(a, json!({"type":"hello","token":token,"ref":"h1"}));
    sim.advance(Duration::from_secs(21));
    assert_eq!(code(&sim.take_reply(a, "h1").expect("unavailable at the deadline")), "unavailable");
    sim.store_mut().set_latency(Duration::ZERO, Duration::ZERO);
    sim.advance(Duration::from_secs(60));
    sim.run_until_idle();
    let again = sim.req(a, json!({"type":"hello","token":token}));
    assert_eq!(again["type"], "welcome", "{again}");
}
