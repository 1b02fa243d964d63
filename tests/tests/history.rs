//! History and catching up with `join` `since` (PROTOCOL.md "Requests",
//! "Events").

use natter_tests::{is_message_in, json, seq, ty, uniq, Server, Value, WsClient};

fn messages(ok: &Value) -> Vec<Value> {
    ok["messages"].as_array().unwrap_or_else(|| panic!("history without messages: {ok}")).clone()
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(seq).collect()
}

fn history_seqs(ws: &mut WsClient, fields: Value) -> Vec<u64> {
    seqs(&messages(&ws.ok("history", fields)))
}

/// Sends `join` with `since` and reads until the replayed message `last`:
/// returns the `ok` and the room's messages that came, checking the `ok` came
/// before every one of them.
fn join_since(ws: &mut WsClient, room: &str, since: u64, last: u64) -> (Value, Vec<Value>) {
    let r = ws.send_request("join", json!({"room": room, "since": since}));
    let seen = ws.recv_until(|v| is_message_in(v, room) && v["seq"].as_u64() >= Some(last));
    let ok_at = seen
        .iter()
        .position(|v| v["ref"] == r.as_str())
        .unwrap_or_else(|| panic!("the replay came before the join ok: {seen:?}"));
    let ok = seen[ok_at].clone();
    assert_eq!(ty(&ok), "ok", "{ok}");
    assert!(!seen[..ok_at].iter().any(|v| is_message_in(v, room)), "replayed messages came before the ok: {seen:?}");
    let msgs = seen[ok_at + 1..].iter().filter(|v| is_message_in(v, room)).cloned().collect();
    (ok, msgs)
}

natter_tests::cases! {
    fn history_returns_stored_messages_oldest_first(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let (alice, mut a) = s.user("alice");
        let mut b = s.guest("bob");
        a.join(&room);
        b.join(&room);
        a.ok("send", json!({"room": room, "text": "m1", "id": "x-1"}));
        b.say(&room, "m2");
        a.say(&room, "m3");
        let h = messages(&b.ok("history", json!({"room": room})));
        assert_eq!(seqs(&h), vec![1, 2, 3], "{h:?}");
        let texts: Vec<&str> = h.iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(texts, vec!["m1", "m2", "m3"]);
        assert_eq!(h[0]["from"], alice.name.as_str());
        assert_eq!(h[1]["from"], b.user.as_str());
        assert_eq!(h[0]["id"], "x-1", "{}", h[0]);
        assert!(h[0]["ts"].as_u64().is_some(), "{}", h[0]);
    }

    fn history_before_and_limit_pick_the_newest_below_before(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        a.join(&room);
        for i in 1..=5 {
            a.say(&room, &format!("m{i}"));
        }
        assert_eq!(history_seqs(&mut a, json!({"room": room, "before": 4})), vec![1, 2, 3]);
        assert_eq!(history_seqs(&mut a, json!({"room": room, "limit": 2})), vec![4, 5]);
        assert_eq!(history_seqs(&mut a, json!({"room": room, "before": 4, "limit": 2})), vec![2, 3]);
        assert_eq!(history_seqs(&mut a, json!({"room": room, "before": 1})), Vec::<u64>::new());
        assert_eq!(history_seqs(&mut a, json!({"room": room, "before": 100})), vec![1, 2, 3, 4, 5]);
    }

    fn history_limit_defaults_to_50_and_is_capped_at_500(bin) {
        let s = Server::start(bin, &["--rate", "100000", "--burst", "100000"]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        a.join(&room);
        let texts: Vec<String> = (1..=505).map(|i| format!("m{i}")).collect();
        let acked = a.say_many(&room, &texts, 16);
        assert_eq!(acked, (1..=505).collect::<Vec<u64>>());
        let default = messages(&a.ok("history", json!({"room": room})));
        assert_eq!(seqs(&default), (456..=505).collect::<Vec<u64>>(), "default limit 50");
        assert_eq!(default[0]["text"], "m456");
        for limit in [500, 501, 1_000_000] {
            let got = history_seqs(&mut a, json!({"room": room, "limit": limit}));
            assert_eq!(got, (6..=505).collect::<Vec<u64>>(), "limit {limit}");
        }
    }

    fn history_of_a_room_needs_membership(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        let mut b = s.guest("bob");
        a.join(&room);
        a.say(&room, "members only");
        assert_eq!(b.error("history", json!({"room": room})), "not_member");
        b.join(&room);
        assert_eq!(history_seqs(&mut b, json!({"room": room})), vec![1]);
        b.leave(&room);
        assert_eq!(b.error("history", json!({"room": room})), "not_member");
    }

    fn history_with_a_user_returns_the_conversation(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let (bob, mut b) = s.user("bob");
        a.tell(&bob.name, "p1");
        b.tell(&alice.name, "p2");
        a.tell(&bob.name, "p3");
        b.tell(&alice.name, "p4");
        for (ws, other) in [(&mut a, &bob.name), (&mut b, &alice.name)] {
            let h = messages(&ws.ok("history", json!({"with": other})));
            assert_eq!(seqs(&h), vec![1, 2, 3, 4], "{h:?}");
            let from: Vec<&str> = h.iter().map(|m| m["from"].as_str().unwrap()).collect();
            let (an, bn) = (alice.name.as_str(), bob.name.as_str());
            assert_eq!(from, vec![an, bn, an, bn]);
            let texts: Vec<&str> = h.iter().map(|m| m["text"].as_str().unwrap()).collect();
            assert_eq!(texts, vec!["p1", "p2", "p3", "p4"]);
        }
        assert_eq!(history_seqs(&mut a, json!({"with": bob.name, "before": 4, "limit": 2})), vec![2, 3]);
        assert_eq!(history_seqs(&mut a, json!({"with": bob.name, "limit": 1})), vec![4]);
        let (_carol, mut c) = s.user("carol");
        assert_eq!(history_seqs(&mut c, json!({"with": alice.name})), Vec::<u64>::new());
    }

    fn join_since_answers_ok_then_replays_then_goes_live(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        a.join(&room);
        for i in 1..=5 {
            a.say(&room, &format!("m{i}"));
        }
        // A member that saw up to 2 catches up.
        let mut b = s.guest("bob");
        b.join(&room);
        let (ok, replay) = join_since(&mut b, &room, 2, 5);
        assert_eq!(ok["recovered"], true, "{ok}");
        assert_eq!(ok["seq"], 5, "{ok}");
        assert_eq!(seqs(&replay), vec![3, 4, 5], "{replay:?}");
        assert_eq!(replay[0]["text"], "m3");
        a.say(&room, "m6");
        let live = b.wait_for(|v| is_message_in(v, &room));
        assert_eq!(live["seq"], 6, "{live}");
        // A newcomer with since 0 gets everything.
        let mut c = s.guest("carol");
        let (ok, replay) = join_since(&mut c, &room, 0, 6);
        assert_eq!(ok["recovered"], true, "{ok}");
        assert_eq!(ok["members"], 3, "{ok}");
        assert_eq!(seqs(&replay), vec![1, 2, 3, 4, 5, 6], "{replay:?}");
        // since at the newest seq: ok, nothing replayed.
        let mut d = s.guest("dave");
        let r = d.send_request("join", json!({"room": room, "since": 6}));
        let ok = d.reply_to(&r);
        assert_eq!(ty(&ok), "ok", "{ok}");
        assert_eq!(ok["recovered"], true, "{ok}");
        d.expect_none(std::time::Duration::from_millis(400), |v| is_message_in(v, &room));
    }

    fn welcome_seq_and_history_before_it_leave_no_gap(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let (alice, mut a) = s.user("alice");
        let mut b = s.guest("bob");
        a.join(&room);
        b.join(&room);
        a.disconnect();
        for i in 1..=3 {
            b.say(&room, &format!("m{i}"));
        }
        let mut a = s.session(&alice);
        let entry = a.welcome["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == room.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("room missing from {}", a.welcome));
        let n = seq(&entry);
        assert_eq!(n, 3, "{entry}");
        assert_eq!(history_seqs(&mut a, json!({"room": room, "before": n + 1})), vec![1, 2, 3]);
        b.say(&room, "m4");
        let live = a.wait_for(|v| is_message_in(v, &room));
        assert!(seq(&live) > n, "{live}");
    }

    fn join_since_after_a_restart_loses_nothing_acknowledged(bin) {
        let mut s = Server::start(bin, &[]);
        let room = uniq("room");
        let (alice, mut a) = s.user("alice");
        a.join(&room);
        let texts: Vec<String> = (1..=10).map(|i| format!("m{i}")).collect();
        for t in &texts {
            a.say(&room, t);
        }
        s.restart();
        let token = s.login(&alice.name, natter_tests::PASSWORD);
        let mut a = WsClient::connect(&s);
        let w = a.hello_token(&token);
        assert_eq!(w["rooms"][0]["room"], room.as_str(), "{w}");
        assert_eq!(w["rooms"][0]["seq"], 10, "{w}");
        let (ok, replay) = join_since(&mut a, &room, 4, 10);
        assert_eq!(ok["recovered"], true, "{ok}");
        assert_eq!(seqs(&replay), vec![5, 6, 7, 8, 9, 10]);
        let mut b = s.guest("bob");
        let (_, all) = join_since(&mut b, &room, 0, 10);
        let got: Vec<&str> = all.iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(got, texts.iter().map(String::as_str).collect::<Vec<_>>());
        // The counter goes on without a gap.
        assert_eq!(b.say(&room, "m11"), 11);
    }
}
