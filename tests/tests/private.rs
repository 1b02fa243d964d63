//! Private messages, offline delivery, acks, conversations, typing to a user
//! (PROTOCOL.md "Requests", "Events", "Offline delivery").

use std::time::Duration;

use natter_tests::{eventually, is_private_from, json, seq, ty, Server, Value, WsClient};

const QUIET: Duration = Duration::from_millis(500);

fn texts(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect()
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(seq).collect()
}

natter_tests::cases! {
    fn a_private_message_reaches_the_recipient_with_the_conversation_seq(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let (bob, mut b) = s.user("bob");
        let (carol, mut c) = s.user("carol");
        let ok = a.ok("send", json!({"to": bob.name, "text": "hi bob", "id": "c-18"}));
        assert_eq!(seq(&ok), 1, "{ok}");
        let p = b.wait_for(|v| ty(v) == "private");
        assert_eq!(p["seq"], 1, "{p}");
        assert_eq!(p["from"], alice.name.as_str(), "{p}");
        assert_eq!(p["to"], bob.name.as_str(), "{p}");
        assert_eq!(p["text"], "hi bob", "{p}");
        assert_eq!(p["id"], "c-18", "{p}");
        assert!(p["ts"].as_u64().is_some(), "ts: {p}");
        // The counter is the pair's, in either direction.
        assert_eq!(b.tell(&alice.name, "hi alice"), 2);
        let p = a.wait_for(|v| is_private_from(v, &bob.name));
        assert_eq!(p["seq"], 2, "{p}");
        assert_eq!(p["to"], alice.name.as_str(), "{p}");
        assert_eq!(a.tell(&bob.name, "again"), 3);
        // Another pair has its own counter.
        assert_eq!(a.tell(&carol.name, "hi carol"), 1);
        let p = c.wait_for(|v| ty(v) == "private");
        assert_eq!(p["seq"], 1, "{p}");
        // Nobody else gets them.
        c.expect_none(QUIET, |v| ty(v) == "private");
    }

    fn a_private_message_is_echoed_to_the_senders_other_sessions(bin) {
        let s = Server::start(bin, &[]);
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        let (bob, mut b) = s.user("bob");
        let n = a1.tell(&bob.name, "echo me");
        let echo = a2.wait_for(|v| ty(v) == "private");
        assert_eq!(echo["seq"], n, "{echo}");
        assert_eq!(echo["from"], alice.name.as_str(), "{echo}");
        assert_eq!(echo["to"], bob.name.as_str(), "{echo}");
        assert_eq!(echo["text"], "echo me", "{echo}");
        b.wait_for(|v| ty(v) == "private");
        // The sending session has its ok; it gets no copy.
        a1.expect_none(QUIET, |v| ty(v) == "private");
    }

    fn a_private_message_to_every_session_of_the_recipient(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let bob = s.account("bob");
        let mut b1 = s.session(&bob);
        let mut b2 = s.session(&bob);
        a.tell(&bob.name, "to both");
        for b in [&mut b1, &mut b2] {
            let p = b.wait_for(|v| is_private_from(v, &alice.name));
            assert_eq!(p["text"], "to both", "{p}");
        }
    }

    fn a_private_message_to_nobody_is_no_such_user(bin) {
        let s = Server::start(bin, &[]);
        let mut a = s.guest("alice");
        assert_eq!(
            a.error("send", json!({"to": natter_tests::uniq("nobody"), "text": "hello?"})),
            "no_such_user"
        );
        // A registered user who is offline: stored, so fine.
        let bob = s.account("bob");
        a.tell(&bob.name, "for later");
        // A guest online now: delivered.
        let mut g = s.guest("guest");
        a.tell(&g.user, "hi guest");
        let p = g.wait_for(|v| ty(v) == "private");
        assert_eq!(p["text"], "hi guest", "{p}");
    }

    fn private_messages_to_a_guest_are_delivered_only_while_it_is_online(bin) {
        let s = Server::start(bin, &[]);
        let (_alice, mut a) = s.user("alice");
        let g = s.guest("guest");
        let name = g.user.clone();
        a.tell(&name, "while online");
        g.disconnect();
        eventually(Duration::from_secs(5), "the gone guest to be no_such_user", || {
            let reply = a.request("send", json!({"to": name, "text": "gone?"}));
            match ty(&reply) {
                "error" => {
                    assert_eq!(reply["code"], "no_such_user", "{reply}");
                    Some(())
                }
                _ => None,
            }
        });
        // A new guest of that name gets nothing old.
        let mut back = WsClient::connect(&s);
        assert_eq!(ty(&back.hello_guest(&name)), "welcome");
        back.expect_none(QUIET, |v| ty(v) == "private");
    }

    fn stored_private_messages_come_after_welcome_oldest_first(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let bob = s.account("bob");
        for t in ["one", "two", "three"] {
            a.tell(&bob.name, t);
        }
        let mut b = WsClient::connect(&s);
        b.send_json(json!({"type": "hello", "token": bob.token, "ref": "h"}));
        let first = b.recv_json();
        assert_eq!(ty(&first), "welcome", "welcome comes first: {first}");
        let got = b.collect(3, |v| ty(v) == "private");
        assert_eq!(seqs(&got), vec![1, 2, 3], "{got:?}");
        assert_eq!(texts(&got), vec!["one", "two", "three"]);
        assert!(got.iter().all(|p| p["from"] == alice.name.as_str() && p["to"] == bob.name.as_str()));
        // Then live ones.
        a.tell(&bob.name, "four");
        let p = b.wait_for(|v| ty(v) == "private");
        assert_eq!(p["seq"], 4, "{p}");
    }

    fn unacknowledged_private_messages_are_delivered_again_and_acked_ones_are_not(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let bob = s.account("bob");
        for t in ["one", "two", "three"] {
            a.tell(&bob.name, t);
        }
        // Delivered but not acked: delivered again at the next session.
        let mut b = s.session(&bob);
        assert_eq!(seqs(&b.collect(3, |v| ty(v) == "private")), vec![1, 2, 3]);
        b.disconnect();
        let mut b = s.session(&bob);
        assert_eq!(seqs(&b.collect(3, |v| ty(v) == "private")), vec![1, 2, 3]);
        // Ack up to 2: only 3 comes back.
        b.ok("ack", json!({"with": alice.name, "seq": 2}));
        b.disconnect();
        let mut b = s.session(&bob);
        assert_eq!(seqs(&b.collect(1, |v| ty(v) == "private")), vec![3]);
        b.expect_none(QUIET, |v| ty(v) == "private");
        // A live message that is not acked comes back too.
        a.tell(&bob.name, "four");
        assert_eq!(seq(&b.wait_for(|v| ty(v) == "private")), 4);
        b.ok("ack", json!({"with": alice.name, "seq": 3}));
        b.disconnect();
        let mut b = s.session(&bob);
        assert_eq!(seqs(&b.collect(1, |v| ty(v) == "private")), vec![4]);
        // Everything acked: nothing at the next session.
        b.ok("ack", json!({"with": alice.name, "seq": 4}));
        b.disconnect();
        let mut b = s.session(&bob);
        b.expect_none(QUIET, |v| ty(v) == "private");
    }

    fn a_repeated_private_id_is_acknowledged_with_the_first_seq_and_delivered_once(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let (bob, mut b) = s.user("bob");
        let first = a.ok("send", json!({"to": bob.name, "text": "once", "id": "p-1"}));
        let again = a.ok("send", json!({"to": bob.name, "text": "once", "id": "p-1"}));
        assert_eq!(seq(&first), 1);
        assert_eq!(seq(&again), 1, "{again}");
        assert_eq!(a.tell(&bob.name, "next"), 2, "no gap after a repeat");
        let got: Vec<Value> = b
            .drain(QUIET)
            .into_iter()
            .filter(|v| is_private_from(v, &alice.name))
            .collect();
        assert_eq!(seqs(&got), vec![1, 2], "{got:?}");
    }

    fn typing_to_a_user_reaches_that_user_only(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let (bob, mut b) = s.user("bob");
        let (_carol, mut c) = s.user("carol");
        a.ok("typing", json!({"to": bob.name}));
        let t = b.wait_for(|v| ty(v) == "typing");
        assert_eq!(t["user"], alice.name.as_str(), "{t}");
        assert_eq!(t["to"], bob.name.as_str(), "{t}");
        c.expect_none(QUIET, |v| ty(v) == "typing");
        // Not stored.
        let h = b.ok("history", json!({"with": alice.name}));
        assert_eq!(h["messages"], json!([]), "{h}");
    }

    fn conversations_list_the_most_recent_first_with_seq_and_read(bin) {
        let s = Server::start(bin, &[]);
        let (_alice, mut a) = s.user("alice");
        let bob = s.account("bob");
        let carol = s.account("carol");
        a.tell(&bob.name, "b1");
        a.tell(&bob.name, "b2");
        a.tell(&carol.name, "c1");
        let ok = a.ok("conversations", json!({}));
        let list = ok["conversations"]
            .as_array()
            .unwrap_or_else(|| panic!("no conversations list: {ok}"))
            .clone();
        assert_eq!(list.len(), 2, "{ok}");
        assert_eq!(list[0]["with"], carol.name.as_str(), "most recent first: {ok}");
        assert_eq!(list[0]["seq"], 1, "{ok}");
        assert_eq!(list[0]["read"], 0, "{ok}");
        assert_eq!(list[1]["with"], bob.name.as_str(), "{ok}");
        assert_eq!(list[1]["seq"], 2, "{ok}");
        assert_eq!(list[1]["read"], 0, "{ok}");
        // Bob writes back: bob's conversation is the most recent again.
        let mut b = s.session(&bob);
        b.tell(&a.user, "b3");
        a.ok("read", json!({"with": bob.name, "seq": 3}));
        let ok = a.ok("conversations", json!({}));
        let list = ok["conversations"].as_array().unwrap();
        assert_eq!(list[0]["with"], bob.name.as_str(), "{ok}");
        assert_eq!(list[0]["seq"], 3, "{ok}");
        assert_eq!(list[0]["read"], 3, "{ok}");
        // The other side has the same list from its side.
        let theirs = b.ok("conversations", json!({}));
        assert_eq!(theirs["conversations"][0]["with"], a.user.as_str(), "{theirs}");
        assert_eq!(theirs["conversations"][0]["seq"], 3, "{theirs}");
        // limit
        let one = a.ok("conversations", json!({"limit": 1}));
        assert_eq!(one["conversations"].as_array().unwrap().len(), 1, "{one}");
        let all = a.ok("conversations", json!({"limit": 1_000_000}));
        assert_eq!(all["conversations"].as_array().unwrap().len(), 2, "{all}");
    }

    fn a_conversation_read_mark_reaches_the_users_other_sessions(bin) {
        let s = Server::start(bin, &[]);
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        let (bob, mut b) = s.user("bob");
        b.tell(&alice.name, "one");
        b.tell(&alice.name, "two");
        a1.ok("read", json!({"with": bob.name, "seq": 2}));
        let r = a2.wait_for(|v| ty(v) == "read");
        assert_eq!(r["with"], bob.name.as_str(), "{r}");
        assert_eq!(r["seq"], 2, "{r}");
        b.expect_none(QUIET, |v| ty(v) == "read");
    }
}
