//! The inbox (PROTOCOL.md "Offline delivery") under pressure: its bounds,
//! guests kept out of it by a flag, and a big inbox delivered in rounds.

use std::time::Duration;

use natter_tests::{is_private_from, json, seq, ty, LineClient, Server, Value, WsClient};

const QUIET: Duration = Duration::from_millis(500);

/// Sends `n` private messages `prefix0`, `prefix1`, ... from `c` to `to`,
/// pipelined, asserting each `ok`.
fn tell_many(c: &mut WsClient, to: &str, prefix: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let refs: Vec<String> =
            chunk.iter().map(|i| c.send_request("send", json!({"to": to, "text": format!("{prefix}{i}")}))).collect();
        for r in refs {
            let reply = c.reply_to(&r);
            assert_eq!(ty(&reply), "ok", "{reply}");
        }
    }
}

fn privates(c: &mut WsClient, n: usize) -> Vec<Value> {
    c.collect(n, |v| ty(v) == "private")
}

natter_tests::cases! {
    fn an_inbox_is_bounded_per_sender_and_per_recipient(bin) {
        let s = Server::start(bin, &["--inbox-per-sender", "3", "--inbox-per-recipient", "5"]);
        let bob = s.account("bob");
        let (ann_account, mut ann) = s.user("ann");
        let (_, mut cat) = s.user("cat");
        let (_, mut dan) = s.user("dan");
        for i in 0..3 {
            ann.tell(&bob.name, &format!("a{i}"));
        }
        // Bob is offline and reads nothing: the fourth from ann is refused,
        // with a clear answer, and is neither stored nor numbered.
        assert_eq!(ann.error("send", json!({"to": bob.name, "text": "a3"})), "inbox_full");
        cat.tell(&bob.name, "c0");
        cat.tell(&bob.name, "c1");
        assert_eq!(dan.error("send", json!({"to": bob.name, "text": "d0"})), "inbox_full");
        // Bob comes online and gets the five, then acknowledges ann's.
        let mut b = s.session(&bob);
        let got = privates(&mut b, 5);
        let texts: Vec<&str> = got.iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["a0", "a1", "a2", "c0", "c1"]);
        b.expect_none(QUIET, |v| ty(v) == "private");
        b.ok("ack", json!({"with": ann_account.name, "seq": 3}));
        assert_eq!(ann.tell(&bob.name, "a3"), 4, "room again once read");
        assert_eq!(dan.tell(&bob.name, "d0"), 1);
        let metrics = s.http("GET", "/metrics", &[], b"").text();
        assert!(metrics.contains("natter_inbox_full_total 2"), "{metrics}");
    }

    fn the_bound_is_for_users_who_are_away_not_for_slow_acknowledgers(bin) {
        let s = Server::start(bin, &["--inbox-per-sender", "3", "--inbox-per-recipient", "5"]);
        let (bob, mut b) = s.user("bob");
        let (_, mut ann) = s.user("ann");
        // Bob is online and reads, but his client never acknowledges.
        for i in 0..8 {
            assert_eq!(ann.tell(&bob.name, &format!("m{i}")), i + 1);
        }
        assert_eq!(privates(&mut b, 8).len(), 8);
        // Once he is away, what he left unacknowledged counts.
        b.disconnect();
        natter_tests::eventually(Duration::from_secs(5), "bob to be away", || {
            let reply = ann.request("send", json!({"to": bob.name, "text": "later"}));
            (reply["code"] == "inbox_full").then_some(())
        });
    }

    fn guests_can_be_kept_from_messaging_registered_users(bin) {
        let s = Server::start(bin, &["--no-guest-private"]);
        let (bob, mut b) = s.user("bob");
        let mut g = WsClient::guest(&s, "gus");
        let mut h = WsClient::guest(&s, "gil");
        assert_eq!(g.error("send", json!({"to": bob.name, "text": "spam"})), "forbidden");
        b.expect_none(QUIET, |v| ty(v) == "private");
        // Guests among themselves, and registered users to guests, still can.
        let gil = h.user.clone();
        g.ok("send", json!({"to": gil, "text": "hi gil"}));
        assert_eq!(h.wait_for(|v| ty(v) == "private")["text"], "hi gil");
        let gus = g.user.clone();
        b.ok("send", json!({"to": gus, "text": "hi gus"}));
        assert_eq!(g.wait_for(|v| is_private_from(v, &bob.name))["text"], "hi gus");
    }

    fn a_big_inbox_comes_in_rounds_that_follow_the_clients_acks(bin) {
        let s = Server::start(bin, &["--rate", "100000", "--burst", "100000", "--inbox-per-sender", "5000"]);
        let bob = s.account("bob");
        let (ann_account, mut ann) = s.user("ann");
        tell_many(&mut ann, &bob.name, "m", 1500);
        let mut b = s.session(&bob);
        // One round: the first thousand, in order, and then a pause.
        let first = privates(&mut b, 1000);
        let seqs: Vec<u64> = first.iter().map(seq).collect();
        assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
        b.expect_none(QUIET, |v| ty(v) == "private");
        // Live messages wait behind the rest of the inbox, in order.
        ann.tell(&bob.name, "live");
        b.expect_none(QUIET, |v| ty(v) == "private");
        b.ok("ack", json!({"with": ann_account.name, "seq": 1000}));
        let rest = privates(&mut b, 501);
        let seqs: Vec<u64> = rest.iter().map(seq).collect();
        assert_eq!(seqs, (1001..=1501).collect::<Vec<_>>());
        assert_eq!(rest[500]["text"], "live");
        // Once drained, live ones flow at once.
        ann.tell(&bob.name, "now");
        assert_eq!(b.wait_for(|v| ty(v) == "private")["text"], "now");
    }

    fn a_line_session_reads_a_big_inbox_to_the_end(bin) {
        let s = Server::start(bin, &["--rate", "100000", "--burst", "100000", "--inbox-per-sender", "5000"]);
        let bob = s.account("bob");
        let (_, mut ann) = s.user("ann");
        tell_many(&mut ann, &bob.name, "m", 1200);
        // A line session acknowledges what it is written, so the rounds
        // follow each other.
        let mut b = LineClient::login(&s, &bob);
        let lines = b.recv_until_line(|l| l.ends_with(": m1199"));
        let pms: Vec<&String> = lines.iter().filter(|l| l.starts_with("[pm]")).collect();
        assert_eq!(pms.len(), 1200);
        assert!(pms[0].ends_with(": m0") && pms[999].ends_with(": m999"), "{:?}", &pms[..2]);
    }
}
