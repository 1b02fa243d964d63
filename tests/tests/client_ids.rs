//! Client message ids and who they belong to (PROTOCOL.md, `send`): an id is
//! scoped to its room or conversation, a retry must match the original, and a
//! guest's ids are its own, never a later guest's of the same name.

use std::time::Duration;

use natter_tests::{is_message_in, json, seq, ty, uniq, Server, Value, WsClient};

const QUIET: Duration = Duration::from_millis(400);

fn texts_in(msgs: &[Value], room: &str) -> Vec<String> {
    msgs.iter().filter(|m| is_message_in(m, room)).map(|m| m["text"].as_str().unwrap_or("").to_string()).collect()
}

natter_tests::cases! {
    fn the_same_id_in_two_rooms_is_two_messages(bin) {
        let s = Server::start(bin, &[]);
        let (_, mut a) = s.user("ann");
        let (_, mut b) = s.user("bob");
        let (lobby, design) = (uniq("lobby"), uniq("design"));
        for room in [&lobby, &design] {
            a.join(room);
            b.join(room);
        }
        // A client that numbers its ids per room, as the README does.
        let first = a.ok("send", json!({"room": lobby, "text": "in lobby", "id": "c-1"}));
        let second = a.ok("send", json!({"room": design, "text": "in design", "id": "c-1"}));
        assert_eq!(seq(&first), 1, "{first}");
        assert_eq!(seq(&second), 1, "design's own first seq, not lobby's: {second}");
        let got = b.collect(2, |v| ty(v) == "message");
        assert_eq!(texts_in(&got, &lobby), ["in lobby"]);
        assert_eq!(texts_in(&got, &design), ["in design"], "delivered, not swallowed as a repeat");
        let h = b.ok("history", json!({"room": design}));
        assert_eq!(h["messages"][0]["text"], "in design", "stored: {h}");
    }

    fn the_same_id_to_two_users_is_two_private_messages(bin) {
        let s = Server::start(bin, &[]);
        let (_, mut a) = s.user("ann");
        let (bob, mut b) = s.user("bob");
        let (cat, mut c) = s.user("cat");
        a.ok("send", json!({"to": bob.name, "text": "for bob", "id": "c-1"}));
        let ok = a.ok("send", json!({"to": cat.name, "text": "for cat", "id": "c-1"}));
        assert_eq!(seq(&ok), 1, "{ok}");
        assert_eq!(b.wait_for(|v| ty(v) == "private")["text"], "for bob");
        assert_eq!(c.wait_for(|v| ty(v) == "private")["text"], "for cat", "delivered to cat too");
    }

    fn a_retry_is_acknowledged_again_and_a_reused_id_is_a_new_message(bin) {
        let s = Server::start(bin, &[]);
        let (_, mut a) = s.user("ann");
        let (_, mut b) = s.user("bob");
        let room = uniq("r");
        a.join(&room);
        b.join(&room);
        let first = seq(&a.ok("send", json!({"room": room, "text": "hello", "id": "c-7"})));
        let retry = seq(&a.ok("send", json!({"room": room, "text": "hello", "id": "c-7"})));
        assert_eq!(retry, first, "the same message again: the first seq");
        // The id reused for other text (a client that numbered from 1 again
        // after a reload): not a repeat, never acked as the earlier message.
        let other = seq(&a.ok("send", json!({"room": room, "text": "something else", "id": "c-7"})));
        assert_eq!(other, first + 1);
        let got = b.collect(2, |v| is_message_in(v, &room));
        assert_eq!(texts_in(&got, &room), ["hello", "something else"]);
        b.expect_none(QUIET, |v| is_message_in(v, &room));
    }

    fn a_later_guest_with_the_same_name_inherits_no_ids(bin) {
        let s = Server::start(bin, &[]);
        let (mut b, room) = watcher(&s);
        let name = uniq("gwen");
        let mut g1 = WsClient::connect(&s);
        assert_eq!(ty(&g1.hello_guest(&name)), "welcome");
        let first = say_c1(&mut g1, &room);
        g1.disconnect();
        b.wait_for(|v| is_message_in(v, &room));
        // Someone else takes the name a moment later and numbers its ids
        // the same way.
        let mut g2 = WsClient::connect(&s);
        let w = eventually_welcome(&mut g2, &name);
        assert_eq!(w["guest"], true);
        let second = say_c1(&mut g2, &room);
        assert_ne!(second, first, "not acknowledged as the earlier guest's message");
        let m = b.wait_for(|v| is_message_in(v, &room));
        assert_eq!(m["seq"], second, "and delivered: {m}");
    }

    fn a_guest_who_comes_back_with_its_resume_secret_is_recognised(bin) {
        let s = Server::start(bin, &[]);
        let (mut b, room) = watcher(&s);
        let name = uniq("gwen");
        let mut g1 = WsClient::connect(&s);
        let w = g1.hello_guest(&name);
        let resume = w["resume"].as_str().expect("a guest's welcome carries resume").to_string();
        let first = say_c1(&mut g1, &room);
        g1.disconnect();
        // The page reloads: same name, its secret, and the unacknowledged
        // message resent.
        let mut g2 = WsClient::connect(&s);
        let w = g2.request("hello", json!({"name": name, "resume": resume}));
        assert_eq!(ty(&w), "welcome", "{w}");
        let again = say_c1(&mut g2, &room);
        assert_eq!(again, first, "recognised as the same guest's retry");
        b.collect(1, |v| is_message_in(v, &room));
        b.expect_none(QUIET, |v| is_message_in(v, &room));
    }

    fn a_registered_user_never_sees_two_messages_with_one_seq_from_guests_of_one_name(bin) {
        let s = Server::start(bin, &[]);
        let (bob, mut b) = s.user("bob");
        let name = uniq("gwen");
        let mut g1 = WsClient::connect(&s);
        g1.hello_guest(&name);
        assert_eq!(seq(&g1.ok("send", json!({"to": bob.name, "text": "first gwen"}))), 1);
        g1.disconnect();
        let mut g2 = WsClient::connect(&s);
        eventually_welcome(&mut g2, &name);
        let n = seq(&g2.ok("send", json!({"to": bob.name, "text": "second gwen"})));
        let got = b.collect(2, |v| ty(v) == "private");
        assert_eq!(got[0]["seq"], 1);
        assert_eq!(got[1]["seq"], n);
        assert_eq!(n, 2, "bob's conversation with {name} goes on");
        // The second gwen reads only its own conversation.
        let h = g2.ok("history", json!({"with": bob.name}));
        let texts: Vec<&Value> = h["messages"].as_array().unwrap().iter().map(|m| &m["text"]).collect();
        assert_eq!(texts, [&json!("second gwen")]);
    }
}

/// Bob, in a new room: the one who sees what is delivered.
fn watcher(s: &Server) -> (WsClient, String) {
    let (_, mut b) = s.user("bob");
    let room = uniq("r");
    b.join(&room);
    (b, room)
}

/// Joins `room` and sends "hi" with id `c-1`; returns its seq.
fn say_c1(c: &mut WsClient, room: &str) -> u64 {
    c.join(room);
    seq(&c.ok("send", json!({"room": room, "text": "hi", "id": "c-1"})))
}

/// A guest `hello` for `name`, retried while the previous holder's close is
/// still reaching the hub.
fn eventually_welcome(c: &mut WsClient, name: &str) -> Value {
    natter_tests::eventually(Duration::from_secs(5), "the name to be free", || {
        let w = c.hello_guest(name);
        (ty(&w) == "welcome").then_some(w)
    })
}
