//! Rooms: join, leave, send, sequence numbers, membership, who, rooms,
//! read marks, typing (PROTOCOL.md "Membership and presence", "Requests", "Events").

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natter_tests::{eventually, is_message_in, json, seq, ty, uniq, Server, Value, WsClient, PASSWORD};

const QUIET: Duration = Duration::from_millis(400);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `who` `room` as a map user -> online.
fn who_room(ws: &mut WsClient, room: &str) -> BTreeMap<String, bool> {
    let ok = ws.ok("who", json!({ "room": room }));
    users_of(&ok)
}

/// Asserts `rooms` (from `welcome`) is exactly one entry for `room` with `seq` and `read`.
fn assert_rooms(rooms: &Value, room: &str, seq: u64, read: u64) {
    let list = rooms.as_array().unwrap_or_else(|| panic!("rooms is not a list: {rooms}"));
    assert_eq!(list.len(), 1, "rooms {rooms}");
    assert_eq!(list[0]["room"], room, "rooms {rooms}");
    assert_eq!(list[0]["seq"], seq, "rooms {rooms}");
    assert_eq!(list[0]["read"], read, "rooms {rooms}");
}

fn users_of(ok: &Value) -> BTreeMap<String, bool> {
    ok["users"]
        .as_array()
        .unwrap_or_else(|| panic!("who without users: {ok}"))
        .iter()
        .map(|u| {
            (
                u["user"].as_str().unwrap_or_else(|| panic!("bad user entry {u}")).to_string(),
                u["online"].as_bool().unwrap_or_else(|| panic!("bad online flag {u}")),
            )
        })
        .collect()
}

natter_tests::cases! {
    fn listings_have_a_budget_of_their_own_and_messages_go_on(bin) {
        let s = Server::start(bin, &["--query-rate", "2"]);
        let (_, mut a) = s.user("ann");
        let room = uniq("r");
        a.join(&room);
        // Four times the rate in a burst, whatever the listing.
        for kind in ["rooms", "who", "conversations", "rooms", "who", "rooms", "who", "rooms"] {
            a.ok(kind, json!({}));
        }
        assert_eq!(a.error("rooms", json!({})), "rate_limited");
        assert_eq!(a.error("history", json!({"room": room})), "rate_limited");
        // Sending is not held back by it.
        a.say(&room, "still here");
        std::thread::sleep(Duration::from_millis(600));
        a.ok("rooms", json!({}));
        let metrics = s.http("GET", "/metrics", &[], b"").text();
        assert!(metrics.contains("natter_queries_limited_total 2"), "{metrics}");
    }

    fn join_answers_the_room_seq_and_member_count(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        let ok = alice.join(&room);
        assert_eq!(ok["seq"], 0, "a new room has no message yet: {ok}");
        assert_eq!(ok["members"], 1, "{ok}");
        alice.say(&room, "one");
        alice.say(&room, "two");
        let mut bob = s.guest("bob");
        let ok = bob.join(&room);
        assert_eq!(ok["seq"], 2, "{ok}");
        assert_eq!(ok["members"], 2, "{ok}");
    }

    fn joining_a_room_twice_is_not_an_error(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        alice.join(&room);
        let ok = alice.join(&room);
        assert_eq!(ok["members"], 1, "still one member: {ok}");
        // Still one copy of each message.
        alice.say(&room, "once");
        let got: Vec<Value> = alice
            .drain(QUIET)
            .into_iter()
            .filter(|v| is_message_in(v, &room))
            .collect();
        assert_eq!(got.len(), 1, "{got:?}");
    }

    fn join_of_a_bad_room_name_is_bad_name(bin) {
        let s = Server::start(bin, &[]);
        let mut alice = s.guest("alice");
        for room in ["", "has space", "a/b", "#general", "émile", &"r".repeat(33)] {
            assert_eq!(alice.error("join", json!({"room": room})), "bad_name", "room {room:?}");
        }
        alice.join(&"r".repeat(32));
        alice.join("Az09_-.");
    }

    fn room_message_reaches_every_session_of_every_member_including_the_sender(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        let mut bob = s.guest("bob");
        a1.join(&room);
        bob.join(&room);
        let before = now_ms();
        let ok = a1.ok("send", json!({"room": room, "text": "hello, room", "id": "c-17"}));
        let after = now_ms();
        assert_eq!(seq(&ok), 1, "{ok}");
        for ws in [&mut a1, &mut a2, &mut bob] {
            let m = ws.wait_for(|v| is_message_in(v, &room));
            assert_eq!(m["seq"], 1, "{m}");
            assert_eq!(m["from"], alice.name.as_str(), "{m}");
            assert_eq!(m["text"], "hello, room", "{m}");
            assert_eq!(m["id"], "c-17", "{m}");
            let ts = m["ts"].as_u64().unwrap_or_else(|| panic!("ts is not a number: {m}"));
            assert!(
                ts + 60_000 >= before && ts <= after + 60_000,
                "ts {ts} is not the server's clock in ms (test saw {before}..{after})"
            );
        }
        // No `id` given, none echoed.
        bob.ok("send", json!({"room": room, "text": "no id"}));
        let m = a2.wait_for(|v| is_message_in(v, &room));
        assert_eq!(m["seq"], 2, "{m}");
        assert_eq!(m["from"], bob.user.as_str(), "{m}");
        assert!(m.get("id").is_none(), "{m}");
    }

    fn room_seq_starts_at_1_and_grows_by_one_for_everyone(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        let mut bob = s.guest("bob");
        let mut carol = s.guest("carol");
        for ws in [&mut alice, &mut bob, &mut carol] {
            ws.join(&room);
        }
        // Alice and Bob send at the same time.
        let a_refs: Vec<String> = (0..10)
            .map(|i| alice.send_request("send", json!({"room": room, "text": format!("a{i}")})))
            .collect();
        let b_refs: Vec<String> = (0..10)
            .map(|i| bob.send_request("send", json!({"room": room, "text": format!("b{i}")})))
            .collect();
        let mut acked: Vec<u64> = Vec::new();
        for r in &a_refs {
            acked.push(seq(&alice.reply_to(r)));
        }
        for r in &b_refs {
            acked.push(seq(&bob.reply_to(r)));
        }
        acked.sort();
        assert_eq!(acked, (1..=20).collect::<Vec<u64>>(), "acknowledged seqs");
        // Every member sees 1..=20 in order, each text once, each sender's in its order.
        let mut views = Vec::new();
        for ws in [&mut alice, &mut bob, &mut carol] {
            let got = ws.collect(20, |v| is_message_in(v, &room));
            let seqs: Vec<u64> = got.iter().map(seq).collect();
            assert_eq!(seqs, (1..=20).collect::<Vec<u64>>(), "{} saw seqs {seqs:?}", ws.user);
            let texts: Vec<String> = got.iter().map(|m| m["text"].as_str().unwrap().to_string()).collect();
            let alices: Vec<String> = texts.iter().filter(|t| t.starts_with('a')).cloned().collect();
            let want: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
            assert_eq!(alices, want, "one sender's messages keep their order");
            views.push(texts);
        }
        assert!(views.windows(2).all(|w| w[0] == w[1]), "members saw different orders: {views:?}");
    }

    fn sending_to_a_room_without_being_a_member_is_not_member(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        let mut bob = s.guest("bob");
        alice.join(&room);
        assert_eq!(bob.error("send", json!({"room": room, "text": "let me in"})), "not_member");
        assert_eq!(bob.error("send", json!({"room": uniq("nowhere"), "text": "hi"})), "not_member");
        alice.expect_none(QUIET, |v| is_message_in(v, &room));
        // And no seq was used up.
        assert_eq!(alice.say(&room, "first"), 1);
    }

    fn leave_ends_the_membership(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        let mut bob = s.guest("bob");
        alice.join(&room);
        bob.join(&room);
        bob.leave(&room);
        alice.say(&room, "after bob left");
        bob.expect_none(QUIET, |v| is_message_in(v, &room));
        assert_eq!(bob.error("send", json!({"room": room, "text": "hi"})), "not_member");
        assert_eq!(bob.error("leave", json!({"room": room})), "not_member");
        assert_eq!(bob.error("leave", json!({"room": uniq("never")})), "not_member");
        let ok = bob.join(&room);
        assert_eq!(ok["members"], 2, "{ok}");
    }

    fn membership_belongs_to_the_user_not_the_session(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        let mut bob = s.guest("bob");
        bob.join(&room);
        // Joining in one session puts every session in.
        a1.join(&room);
        bob.say(&room, "to both sessions");
        for ws in [&mut a1, &mut a2] {
            let m = ws.wait_for(|v| is_message_in(v, &room));
            assert_eq!(m["text"], "to both sessions", "{m}");
        }
        // The other session may send without joining.
        assert_eq!(a2.say(&room, "from a2"), 2);
        // A session opened later is in the room too.
        let mut a3 = s.session(&alice);
        let rooms = a3.welcome["rooms"].as_array().unwrap().clone();
        assert!(rooms.iter().any(|r| r["room"] == room.as_str()), "welcome.rooms {rooms:?}");
        // Leaving in one session takes every session out.
        a2.leave(&room);
        bob.say(&room, "to nobody of alice");
        for ws in [&mut a1, &mut a2, &mut a3] {
            ws.expect_none(QUIET, |v| is_message_in(v, &room) && v["text"] == "to nobody of alice");
        }
        assert_eq!(a1.error("send", json!({"room": room, "text": "x"})), "not_member");
    }

    fn registered_memberships_survive_reconnects(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let (alice, mut a) = s.user("alice");
        let mut bob = s.guest("bob");
        a.join(&room);
        bob.join(&room);
        bob.say(&room, "one");
        bob.say(&room, "two");
        a.disconnect();
        // A message while alice is away.
        bob.say(&room, "three");
        let mut a = s.session(&alice);
        assert_rooms(&a.welcome["rooms"], &room, 3, 0);
        // History before seq + 1 fills what came before...
        let h = a.ok("history", json!({"room": room, "before": 4}));
        let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "{h}");
        // ...and live messages follow.
        bob.say(&room, "four");
        let m = a.wait_for(|v| is_message_in(v, &room));
        assert_eq!(m["seq"], 4, "{m}");
        // A fresh login (another token) sees the same memberships.
        let token = s.login(&alice.name, PASSWORD);
        let mut again = WsClient::connect(&s);
        let w = again.hello_token(&token);
        assert_eq!(w["rooms"][0]["room"], room.as_str(), "{w}");
    }

    fn a_guests_membership_ends_with_its_session(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        alice.join(&room);
        let mut guest = s.guest("guest");
        let name = guest.user.clone();
        guest.join(&room);
        assert!(who_room(&mut alice, &room).contains_key(&name));
        guest.disconnect();
        eventually(Duration::from_secs(5), "the guest to leave the room", || {
            (!who_room(&mut alice, &room).contains_key(&name)).then_some(())
        });
        let rooms = alice.ok("rooms", json!({}));
        let entry = rooms["rooms"].as_array().unwrap().iter().find(|r| r["room"] == room.as_str()).cloned();
        assert_eq!(entry.map(|e| e["members"].clone()), Some(json!(1)), "{rooms}");
        // A guest with the same name starts with no rooms.
        let mut back = WsClient::connect(&s);
        let w = back.hello_guest(&name);
        assert_eq!(w["rooms"], json!([]), "{w}");
    }

    fn a_repeated_message_id_is_acknowledged_with_the_first_seq_and_delivered_once(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        let mut bob = s.guest("bob");
        a1.join(&room);
        bob.join(&room);
        bob.say(&room, "warm-up");
        let first = a1.ok("send", json!({"room": room, "text": "only once", "id": "m-1"}));
        assert_eq!(seq(&first), 2);
        let again = a1.ok("send", json!({"room": room, "text": "only once", "id": "m-1"}));
        assert_eq!(seq(&again), 2, "repeat from the same session: {again}");
        let other_session = a2.ok("send", json!({"room": room, "text": "only once", "id": "m-1"}));
        assert_eq!(seq(&other_session), 2, "repeat from another session of the user: {other_session}");
        // The same id from another user is another message.
        let bobs = bob.ok("send", json!({"room": room, "text": "bob's", "id": "m-1"}));
        assert_eq!(seq(&bobs), 3, "{bobs}");
        let next = a1.ok("send", json!({"room": room, "text": "next"}));
        assert_eq!(seq(&next), 4, "no gap after a repeat: {next}");
        let got: Vec<Value> = bob
            .drain(Duration::from_millis(600))
            .into_iter()
            .filter(|v| is_message_in(v, &room))
            .collect();
        let seqs: Vec<u64> = got.iter().map(seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4], "bob saw {got:?}");
        let h = bob.ok("history", json!({"room": room}));
        assert_eq!(h["messages"].as_array().unwrap().len(), 4, "{h}");
    }

    fn who_lists_room_members_with_their_online_flag(bin) {
        // No presence grace: bob is offline as soon as his session ends.
        let s = Server::start(bin, &["--presence-grace", "0"]);
        let room = uniq("room");
        let (alice, mut a) = s.user("alice");
        let (bob, mut b) = s.user("bob");
        let mut guest = s.guest("guest");
        let mut outsider = s.guest("outsider");
        a.join(&room);
        b.join(&room);
        guest.join(&room);
        b.disconnect();
        let want: BTreeMap<String, bool> = [
            (alice.name.clone(), true),
            (bob.name.clone(), false),
            (guest.user.clone(), true),
        ]
        .into_iter()
        .collect();
        eventually(Duration::from_secs(5), "who to show bob offline", || {
            let got = who_room(&mut a, &room);
            (got == want).then_some(())
        });
        assert!(!who_room(&mut a, &room).contains_key(&outsider.user));
        outsider.expect_none(QUIET, |v| is_message_in(v, &room));
    }

    fn who_without_room_lists_the_users_online_now(bin) {
        // No presence grace: bob is offline as soon as his session ends.
        let s = Server::start(bin, &["--presence-grace", "0"]);
        let room = uniq("room");
        let (alice, mut a) = s.user("alice");
        let (bob, mut b) = s.user("bob");
        let guest = s.guest("guest");
        b.join(&room);
        b.disconnect();
        let want: BTreeMap<String, bool> =
            [(alice.name.clone(), true), (guest.user.clone(), true)].into_iter().collect();
        eventually(Duration::from_secs(5), "who to list exactly the online users", || {
            let got = users_of(&a.ok("who", json!({})));
            (got == want).then_some(())
        });
        assert!(!users_of(&a.ok("who", json!({}))).contains_key(&bob.name));
    }

    fn who_limit_caps_the_list_and_a_limit_above_the_maximum_is_the_maximum(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut a = s.guest("a");
        let mut b = s.guest("b");
        let mut c = s.guest("c");
        for ws in [&mut a, &mut b, &mut c] {
            ws.join(&room);
        }
        assert_eq!(users_of(&a.ok("who", json!({"room": room, "limit": 2}))).len(), 2);
        assert_eq!(users_of(&a.ok("who", json!({"limit": 2}))).len(), 2);
        assert_eq!(users_of(&a.ok("who", json!({"room": room, "limit": 1_000_000}))).len(), 3);
        assert_eq!(users_of(&a.ok("who", json!({"limit": 1_000_000}))).len(), 3);
    }

    fn rooms_lists_rooms_with_the_most_members_first(bin) {
        let s = Server::start(bin, &[]);
        let (big, mid, small) = (uniq("big"), uniq("mid"), uniq("small"));
        let mut a = s.guest("a");
        let mut b = s.guest("b");
        let mut c = s.guest("c");
        a.join(&small);
        a.join(&mid);
        b.join(&mid);
        for ws in [&mut a, &mut b, &mut c] {
            ws.join(&big);
        }
        let ok = c.ok("rooms", json!({}));
        let listed: Vec<(String, u64)> = ok["rooms"]
            .as_array()
            .unwrap_or_else(|| panic!("rooms without rooms: {ok}"))
            .iter()
            .map(|r| (r["room"].as_str().unwrap().to_string(), r["members"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            listed,
            vec![(big.clone(), 3), (mid.clone(), 2), (small.clone(), 1)],
            "{ok}"
        );
        let one = c.ok("rooms", json!({"limit": 1}));
        let one = one["rooms"].as_array().unwrap();
        assert_eq!(one.len(), 1, "{one:?}");
        assert_eq!(one[0]["room"], big.as_str(), "{one:?}");
        assert_eq!(one[0]["members"], 3, "{one:?}");
        let all = c.ok("rooms", json!({"limit": 1_000_000}));
        assert_eq!(all["rooms"].as_array().unwrap().len(), 3, "{all}");
    }

    fn read_mark_reaches_the_users_other_sessions_and_the_next_welcome(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        let mut bob = s.guest("bob");
        a1.join(&room);
        bob.join(&room);
        for t in ["one", "two", "three"] {
            bob.say(&room, t);
        }
        a1.ok("read", json!({"room": room, "seq": 2}));
        let r = a2.wait_for(|v| ty(v) == "read");
        assert_eq!(r["room"], room.as_str(), "{r}");
        assert_eq!(r["seq"], 2, "{r}");
        // Other users are not told.
        bob.expect_none(QUIET, |v| ty(v) == "read");
        let a3 = s.session(&alice);
        assert_rooms(&a3.welcome["rooms"], &room, 3, 2);
    }

    fn typing_in_a_room_reaches_its_members_and_is_not_stored(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        let mut bob = s.guest("bob");
        let mut outsider = s.guest("outsider");
        alice.join(&room);
        bob.join(&room);
        alice.ok("typing", json!({"room": room}));
        let t = bob.wait_for(|v| ty(v) == "typing");
        assert_eq!(t["room"], room.as_str(), "{t}");
        assert_eq!(t["user"], alice.user.as_str(), "{t}");
        outsider.expect_none(QUIET, |v| ty(v) == "typing");
        let h = bob.ok("history", json!({"room": room}));
        assert_eq!(h["messages"], json!([]), "typing is not stored: {h}");
        assert_eq!(bob.say(&room, "first message"), 1, "typing used no seq");
    }
}
