//! Shutdown and restart (PROTOCOL.md "Limits and misbehaving clients",
//! close 1012, and "Running a server").

use std::time::{Duration, Instant};

use natter_tests::{is_message_in, is_private_from, json, seq, ty, uniq, Server, WsClient, PASSWORD};

natter_tests::cases! {
    fn sigterm_closes_websockets_with_1012_and_exits_0_within_10_s(bin) {
        let mut s = Server::start(bin, &[]);
        let room = uniq("room");
        let (_alice, mut a) = s.user("alice");
        let mut g = s.guest("guest");
        a.join(&room);
        g.join(&room);
        let mut line = s.line_guest("telnet");
        let mut anon = WsClient::connect(&s);
        let t0 = Instant::now();
        s.signal("TERM");
        assert_eq!(a.close_code_within(Duration::from_secs(10)), Some(1012), "registered user");
        assert_eq!(g.close_code_within(Duration::from_secs(10)), Some(1012), "guest");
        let _ = anon.close_code_within(Duration::from_secs(10));
        let status = s.wait_exit(Duration::from_secs(10).saturating_sub(t0.elapsed()) + Duration::from_millis(500));
        assert!(status.success(), "exit status {status} on SIGTERM");
        assert_eq!(status.code(), Some(0));
        assert!(t0.elapsed() <= Duration::from_secs(10), "took {:?} to exit", t0.elapsed());
        // The line client was disconnected too.
        line.expect_closed(Duration::from_secs(2));
    }

    fn sigint_also_shuts_down_cleanly(bin) {
        let mut s = Server::start(bin, &[]);
        let mut g = s.guest("guest");
        let t0 = Instant::now();
        s.signal("INT");
        assert_eq!(g.close_code_within(Duration::from_secs(10)), Some(1012));
        let status = s.wait_exit(Duration::from_secs(11));
        assert_eq!(status.code(), Some(0), "exit status {status} on SIGINT");
        assert!(t0.elapsed() <= Duration::from_secs(10), "took {:?} to exit", t0.elapsed());
    }

    fn the_listening_line_is_the_only_output(bin) {
        let mut s = Server::start(bin, &[]);
        let line = s.listening_line.clone();
        let want = format!("natter listening http={} line={}", s.http, s.line);
        assert_eq!(line, want);
        assert_eq!(s.http.ip().to_string(), "127.0.0.1", "{line}");
        assert_eq!(s.line.ip().to_string(), "127.0.0.1", "{line}");
        assert_ne!(s.http.port(), 0, "the real port, not 0: {line}");
        assert_ne!(s.line.port(), 0, "the real port, not 0: {line}");
        // The ports really answer.
        assert_eq!(s.http("GET", "/healthz", &[], b"").status, 200);
        let _ = s.line_guest("probe");
        let status = s.sigterm_and_wait();
        assert!(status.success(), "{status}");
        assert_eq!(s.stdout_after_listening(), "", "stdout after the listening line");
    }

    fn a_restart_loses_nothing_acknowledged(bin) {
        let mut s = Server::start(bin, &[]);
        let room = uniq("room");
        let (alice, mut a) = s.user("alice");
        let bob = s.account("bob");
        a.join(&room);
        let mut seqs = Vec::new();
        for i in 1..=20 {
            seqs.push(a.say(&room, &format!("m{i}")));
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
        a.tell(&bob.name, "stored for bob");
        a.ok("read", json!({"room": room, "seq": 15}));

        s.signal("TERM");
        assert_eq!(a.close_code_within(Duration::from_secs(10)), Some(1012));
        let status = s.wait_exit(Duration::from_secs(11));
        assert!(status.success(), "{status}");
        s.restart();

        // Accounts, memberships, read marks, messages and inboxes are all back.
        let token = s.login(&alice.name, PASSWORD);
        let mut a = WsClient::connect(&s);
        let w = a.hello_token(&token);
        assert_eq!(ty(&w), "welcome", "{w}");
        let rooms = w["rooms"].as_array().unwrap();
        assert_eq!(rooms.len(), 1, "{w}");
        assert_eq!(rooms[0]["room"], room.as_str(), "{w}");
        assert_eq!(rooms[0]["seq"], 20, "{w}");
        assert_eq!(rooms[0]["read"], 15, "{w}");
        let r = a.send_request("join", json!({"room": room, "since": 0}));
        let ok = a.reply_to(&r);
        assert_eq!(ok["recovered"], true, "{ok}");
        let replay = a.collect(20, |v| is_message_in(v, &room));
        let texts: Vec<&str> = replay.iter().map(|m| m["text"].as_str().unwrap()).collect();
        let want: Vec<String> = (1..=20).map(|i| format!("m{i}")).collect();
        assert_eq!(texts, want.iter().map(String::as_str).collect::<Vec<_>>());
        let bob_token = s.login(&bob.name, PASSWORD);
        let mut b = WsClient::connect(&s);
        assert_eq!(ty(&b.hello_token(&bob_token)), "welcome");
        let p = b.wait_for(|v| is_private_from(v, &alice.name));
        assert_eq!(p["text"], "stored for bob", "{p}");
        assert_eq!(seq(&p), 1);
        // Counters go on without a gap.
        assert_eq!(a.say(&room, "m21"), 21);
        assert_eq!(a.tell(&bob.name, "again"), 2);
    }

    fn tokens_outlive_a_restart(bin) {
        let mut s = Server::start(bin, &[]);
        let alice = s.account("alice");
        s.restart();
        // A client told 1012 reconnects with the token it has.
        let mut a = WsClient::connect(&s);
        let w = a.hello_token(&alice.token);
        assert_eq!(ty(&w), "welcome", "a token from before the restart: {w}");
    }
}
