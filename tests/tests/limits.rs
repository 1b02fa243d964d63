//! Limits and misbehaving clients, each at its bound with small flag values
//! (PROTOCOL.md "Limits and misbehaving clients").

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use natter_tests::raw_ws::{RawWs, OP_PING};
use natter_tests::{eventually, is_message_in, json, seq, ty, uniq, LineClient, Server, Value, WsClient};
use tungstenite::protocol::frame::coding::Data;
use tungstenite::Message;

const QUIET: Duration = Duration::from_millis(400);

/// A `send` request to `room` with `ref` whose JSON text is exactly `len` bytes.
fn send_of_len(room: &str, r: &str, len: usize) -> String {
    let empty = json!({"type": "send", "room": room, "ref": r, "text": ""}).to_string();
    assert!(empty.len() <= len, "{len} bytes is too short for a send");
    let text = json!({"type": "send", "room": room, "ref": r, "text": "x".repeat(len - empty.len())}).to_string();
    assert_eq!(text.len(), len);
    text
}

/// Waits until the server closes `stream` (EOF or reset); returns how long it took.
fn wait_tcp_closed(stream: &mut TcpStream, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            panic!("the server did not close the silent connection within {timeout:?}");
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return t0.elapsed(),
        }
    }
}

fn texts_in(msgs: &[Value], room: &str) -> Vec<String> {
    msgs.iter().filter(|v| is_message_in(v, room)).map(|v| v["text"].as_str().unwrap_or("").to_string()).collect()
}

/// Rate limit on WebSocket with `--rate 5 --burst 5`: the session opens with
/// `?token=` (no hello, so the count is plain), optionally sends ping frames
/// (which do not count), then pipelines `join` and nine `send`s.
fn websocket_burst(bin: &str, ping_frames_first: usize) {
    let s = Server::start(bin, &["--rate", "5", "--burst", "5"]);
    let room = uniq("room");
    let alice = s.account("alice");
    let mut watcher = s.guest("watcher");
    watcher.join(&room);
    let t0 = Instant::now();
    let mut a = WsClient::connect_with_token(&s, &alice.token);
    a.expect_welcome();
    for i in 0..ping_frames_first {
        a.send(Message::Ping(format!("p{i}").into_bytes())).unwrap();
    }
    // The join is data message 1; the sends go out once it is done.
    a.join(&room);
    let refs: Vec<String> =
        (1..=9).map(|i| a.send_request("send", json!({"room": room, "text": format!("r{i}")}))).collect();
    let quick = t0.elapsed() < Duration::from_millis(150);
    let replies: Vec<Value> = refs.iter().map(|r| a.reply_to(r)).collect();
    let mut delivered = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        match ty(reply) {
            "ok" => delivered.push(format!("r{}", i + 1)),
            "error" => assert_eq!(reply["code"], "rate_limited", "{reply}"),
            _ => panic!("unexpected answer {reply}"),
        }
    }
    assert!(replies[..4].iter().all(|r| ty(r) == "ok"), "the first five data messages pass: {replies:?}");
    assert!(
        replies.iter().any(|r| r["code"] == "rate_limited"),
        "ten quick messages with --burst 5 must hit the limit: {replies:?}"
    );
    if quick {
        assert_eq!(delivered.len(), 4, "exactly the 6th quick data message and later are limited: {replies:?}");
    }
    // Dropped messages reach nobody.
    let got = watcher.collect(delivered.len(), |v| is_message_in(v, &room));
    assert_eq!(texts_in(&got, &room), delivered);
    watcher.expect_none(QUIET, |v| is_message_in(v, &room));
    // The bucket refills at 5 a second.
    std::thread::sleep(Duration::from_millis(1100));
    a.say(&room, "later");
}

natter_tests::cases! {
    fn a_frame_at_max_frame_is_accepted_and_one_byte_more_closes_1009(bin) {
        let s = Server::start(bin, &["--max-frame", "1024"]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        let mut b = s.guest("bob");
        a.join(&room);
        b.join(&room);
        a.send_text(&send_of_len(&room, "at-limit", 1024));
        let ok = a.reply_to("at-limit");
        assert_eq!(ty(&ok), "ok", "a 1024-byte frame with --max-frame 1024: {ok}");
        b.wait_for(|v| is_message_in(v, &room));
        a.send_text(&send_of_len(&room, "too-big", 1025));
        assert_eq!(a.close_code(), Some(1009), "a 1025-byte frame with --max-frame 1024");
        // Not delivered, and the others go on.
        b.expect_none(QUIET, |v| is_message_in(v, &room));
        assert_eq!(ty(&b.request("ping", json!({}))), "pong");
    }

    fn a_fragmented_message_counts_whole_against_max_frame(bin) {
        let s = Server::start(bin, &["--max-frame", "1024"]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        a.join(&room);
        // Three fragments, 900 bytes in all: one message.
        let msg = send_of_len(&room, "fragmented", 900).into_bytes();
        a.send_frame(Data::Text, msg[..300].to_vec(), false).unwrap();
        a.send_frame(Data::Continue, msg[300..600].to_vec(), false).unwrap();
        a.send_frame(Data::Continue, msg[600..].to_vec(), true).unwrap();
        let ok = a.reply_to("fragmented");
        assert_eq!(ty(&ok), "ok", "{ok}");
        // Two fragments of 600 bytes: each frame fits, the message does not.
        let msg = send_of_len(&room, "too-big", 1200).into_bytes();
        let _ = a.send_frame(Data::Text, msg[..600].to_vec(), false);
        let _ = a.send_frame(Data::Continue, msg[600..].to_vec(), true);
        assert_eq!(a.close_code(), Some(1009), "a 1200-byte message in two frames");
    }

    fn text_at_max_text_is_sent_and_one_byte_more_is_too_long(bin) {
        let s = Server::start(bin, &["--max-text", "100"]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        let mut b = s.guest("bob");
        a.join(&room);
        b.join(&room);
        a.say(&room, &"x".repeat(100));
        assert_eq!(a.error("send", json!({"room": room, "text": "y".repeat(101)})), "too_long");
        assert_eq!(a.error("send", json!({"to": b.user, "text": "y".repeat(101)})), "too_long");
        // The limit is in bytes: 50 two-byte characters fit, 51 do not.
        a.say(&room, &"é".repeat(50));
        assert_eq!(a.error("send", json!({"room": room, "text": "é".repeat(51)})), "too_long");
        let got = b.drain(QUIET);
        assert_eq!(texts_in(&got, &room), vec!["x".repeat(100), "é".repeat(50)]);
        assert!(!got.iter().any(|v| ty(v) == "private"), "{got:?}");
        // The connection stays open.
        assert_eq!(a.say(&room, "short"), 3);
    }

    fn a_line_at_max_line_is_sent_and_one_byte_more_is_too_long(bin) {
        let s = Server::start(bin, &["--max-line", "100"]);
        let mut w = s.guest("web");
        w.join("lobby");
        let mut line = s.line_guest("telnet");
        line.send_line(&"y".repeat(100));
        let m = w.wait_for(|v| is_message_in(v, "lobby"));
        assert_eq!(m["text"], "y".repeat(100), "a 100-byte line with --max-line 100");
        line.send_line(&"z".repeat(101));
        let err = line.wait_line(|l| l.starts_with("! "));
        assert!(err.starts_with("! too_long"), "{err:?}");
        // A much longer line is dropped whole: nothing of it is sent.
        line.send_line(&"q".repeat(5000));
        let err = line.wait_line(|l| l.starts_with("! "));
        assert!(err.starts_with("! too_long"), "{err:?}");
        line.send_line("still here");
        let m = w.wait_for(|v| is_message_in(v, "lobby"));
        assert_eq!(m["text"], "still here", "the dropped lines sent nothing: {m}");
        w.expect_none(QUIET, |v| is_message_in(v, "lobby"));
        line.expect_no_line_matching(QUIET, |l| l.starts_with("! "));
    }

    fn data_messages_past_the_burst_are_rate_limited(bin) {
        websocket_burst(bin, 0);
    }

    fn websocket_control_frames_do_not_count_toward_the_rate(bin) {
        websocket_burst(bin, 20);
    }

    fn a_fragmented_message_counts_once_toward_the_rate(bin) {
        let s = Server::start(bin, &["--rate", "5", "--burst", "5"]);
        let room = uniq("room");
        let alice = s.account("alice");
        let mut a = WsClient::connect_with_token(&s, &alice.token);
        a.expect_welcome();
        a.join(&room);
        // Four more data messages, each in three frames: twelve frames, four messages.
        for i in 0..4 {
            let r = format!("frag-{i}");
            let msg = json!({"type": "send", "room": room, "text": format!("fragmented {i}"), "ref": r})
                .to_string()
                .into_bytes();
            let third = msg.len() / 3;
            a.send_frame(Data::Text, msg[..third].to_vec(), false).unwrap();
            a.send_frame(Data::Continue, msg[third..2 * third].to_vec(), false).unwrap();
            a.send_frame(Data::Continue, msg[2 * third..].to_vec(), true).unwrap();
            let ok = a.reply_to(&r);
            assert_eq!(ty(&ok), "ok", "fragmented message {i}: {ok}");
        }
    }

    fn line_messages_past_the_burst_are_rate_limited(bin) {
        let s = Server::start(bin, &["--rate", "5", "--burst", "5"]);
        let mut w = s.guest("web");
        w.join("lobby");
        let t0 = Instant::now();
        let mut line = s.line_guest("telnet");
        let burst: String = (1..=10).map(|i| format!("r{i}\n")).collect();
        line.send_raw(burst.as_bytes());
        let quick = t0.elapsed() < Duration::from_millis(150);
        let err = line.wait_line(|l| l.starts_with("! "));
        assert!(err.starts_with("! rate_limited"), "{err:?}");
        let got = texts_in(&w.drain(Duration::from_millis(700)), "lobby");
        let want: Vec<String> = (1..=got.len()).map(|i| format!("r{i}")).collect();
        assert_eq!(got, want, "the lines that pass are the first ones");
        assert!(got.len() >= 5, "the first five lines after welcome pass: {got:?}");
        if quick {
            assert_eq!(got.len(), 5, "exactly five quick lines pass with --burst 5: {got:?}");
        }
    }

    fn joining_past_max_rooms_is_too_many_rooms(bin) {
        let s = Server::start(bin, &["--max-rooms", "2"]);
        let (r1, r2, r3) = (uniq("r1"), uniq("r2"), uniq("r3"));
        let mut a = s.guest("alice");
        a.join(&r1);
        a.join(&r2);
        assert_eq!(a.error("join", json!({"room": r3})), "too_many_rooms");
        // Joining a room the user is in is not a new room.
        a.join(&r1);
        assert_eq!(a.error("send", json!({"room": r3, "text": "x"})), "not_member");
        a.leave(&r1);
        a.join(&r3);
    }

    fn heartbeat_s_follows_the_flag_and_a_silent_client_is_closed_1001(bin) {
        let s = Server::start(bin, &["--heartbeat", "1"]);
        let mut raw = RawWs::connect(s.http, "/ws");
        let w = raw.request(json!({"type": "hello", "name": uniq("silent"), "ref": "h"}));
        assert_eq!(ty(&w), "welcome", "{w}");
        assert_eq!(w["heartbeat_s"], 1, "{w}");
        // This client reads but never writes, not even a pong.
        let t0 = Instant::now();
        let end = raw.read_until_closed(Duration::from_secs(8));
        let took = t0.elapsed();
        assert!(end.ended(), "a silent client was not closed within 8 s with --heartbeat 1");
        assert_eq!(end.close_code(), Some(1001), "{end:?}");
        assert!(end.pings >= 1, "the server sends a ping every heartbeat_s: {end:?}");
        assert!(
            took >= Duration::from_millis(1500) && took <= Duration::from_millis(4500),
            "closed after {took:?}; the limit is 2 x heartbeat_s = 2 s"
        );
    }

    fn a_client_that_answers_pings_stays_connected(bin) {
        let s = Server::start(bin, &["--heartbeat", "1"]);
        // tungstenite answers each ping with a pong as it reads.
        let mut ws = s.guest("chatty");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(3500) {
            let _ = ws.drain(Duration::from_millis(300));
            assert!(!ws.is_closed(), "closed after {:?} although it answered pings", t0.elapsed());
        }
        assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
    }

    fn any_frame_from_the_client_resets_the_silence(bin) {
        let s = Server::start(bin, &["--heartbeat", "1"]);
        let mut raw = RawWs::connect(s.http, "/ws");
        let w = raw.request(json!({"type": "hello", "name": uniq("pinger"), "ref": "h"}));
        assert_eq!(ty(&w), "welcome", "{w}");
        // Never answers the server's pings, but sends its own every 500 ms.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(3500) {
            raw.send_frame(true, OP_PING, b"still here")
                .unwrap_or_else(|e| panic!("closed after {:?}: {e}", t0.elapsed()));
            std::thread::sleep(Duration::from_millis(500));
        }
        let pong = raw.request(json!({"type": "ping", "ref": "p"}));
        assert_eq!(ty(&pong), "pong", "{pong}");
    }

    fn handshake_timeout_closes_silent_connections_on_both_ports(bin) {
        let s = Server::start(bin, &["--handshake-timeout", "1"]);
        let mut http = TcpStream::connect(s.http).unwrap();
        let mut line = TcpStream::connect(s.line).unwrap();
        let took = wait_tcp_closed(&mut http, Duration::from_secs(5));
        assert!(took >= Duration::from_millis(500), "HTTP port closed after {took:?}");
        let took = wait_tcp_closed(&mut line, Duration::from_secs(5));
        assert!(took <= Duration::from_secs(5), "line port closed after {took:?}");
        // A line client that logs in in time stays.
        let mut ok = s.line_guest("quick");
        std::thread::sleep(Duration::from_millis(1500));
        let who = ok.who();
        assert!(who.contains(&format!("* {} (online)", ok.name)), "{who:?}");
    }

    fn handshake_timeout_closes_an_upgraded_websocket_without_hello_1008(bin) {
        let s = Server::start(bin, &["--handshake-timeout", "1"]);
        let mut raw = RawWs::connect(s.http, "/ws");
        let t0 = Instant::now();
        let end = raw.read_until_closed(Duration::from_secs(5));
        assert!(end.ended(), "no close within 5 s of an upgrade without hello");
        assert_eq!(end.close_code(), Some(1008), "{end:?}");
        assert!(t0.elapsed() >= Duration::from_millis(500), "closed after {:?}", t0.elapsed());
        // A session that said hello in time stays.
        let mut ws = s.guest("quick");
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
    }

    fn a_slow_consumer_is_closed_and_everyone_else_goes_on(bin) {
        const N: u64 = 2400;
        let s = Server::start(
            bin,
            &["--max-queue", "65536", "--rate", "100000", "--burst", "100000"],
        );
        let room = uniq("busy");
        // A client that stops reading after joining.
        let mut slow = RawWs::connect(s.http, "/ws");
        let w = slow.request(json!({"type": "hello", "name": uniq("slow"), "ref": "h"}));
        assert_eq!(ty(&w), "welcome", "{w}");
        let j = slow.request(json!({"type": "join", "room": room, "ref": "j"}));
        assert_eq!(ty(&j), "ok", "{j}");
        // A client that keeps up, on its own thread.
        let mut reader = s.guest("reader");
        reader.join(&room);
        reader.timeout = Duration::from_secs(90);
        let room2 = room.clone();
        let reader = std::thread::spawn(move || {
            let got = reader.collect(N as usize, |v| is_message_in(v, &room2));
            got.iter().map(seq).collect::<Vec<u64>>()
        });
        let mut sender = s.guest("sender");
        sender.join(&room);
        // About 8.4 MB for the room, far past the queue and the socket buffers.
        let text = "x".repeat(3500);
        let mut acked = Vec::new();
        let mut next_copy = 1;
        let check_copies = |buffered: Vec<Value>, next_copy: &mut u64| {
            for v in buffered.iter().filter(|v| is_message_in(v, &room)) {
                assert_eq!(seq(v), *next_copy, "the sender's own copies in order");
                *next_copy += 1;
            }
        };
        while (acked.len() as u64) < N {
            let refs: Vec<String> = (0..8)
                .map(|_| sender.send_request("send", json!({"room": room, "text": text})))
                .collect();
            for r in refs {
                let ok = sender.reply_to(&r);
                assert_eq!(ty(&ok), "ok", "{ok}");
                acked.push(seq(&ok));
            }
            check_copies(sender.take_buffered(), &mut next_copy);
        }
        while next_copy <= N {
            let v = sender.recv_json();
            check_copies(vec![v], &mut next_copy);
        }
        assert_eq!(acked, (1..=N).collect::<Vec<u64>>());
        let read = reader.join().expect("the reader thread");
        assert_eq!(read, (1..=N).collect::<Vec<u64>>(), "the reader that keeps up got everything");
        // The slow one was closed.
        let end = slow.read_until_closed(Duration::from_secs(15));
        assert!(
            end.ended(),
            "the slow consumer was not closed; it had {} messages waiting",
            end.texts.len()
        );
        assert!((end.texts.len() as u64) < N, "the slow consumer got everything: not closed");
        if let Some(close) = &end.close {
            assert_eq!(close.close_code(), Some(1008), "{close:?}");
            assert_eq!(close.close_reason(), "slow consumer");
        }
        // The server goes on.
        let mut late = s.guest("late");
        let ok = late.join(&room);
        assert_eq!(ok["seq"], N, "{ok}");
    }

    fn past_max_connections_http_gets_503(bin) {
        let s = Server::start(bin, &["--max-connections", "5"]);
        let _w1 = s.guest("w1");
        let _w2 = s.guest("w2");
        let _w3 = s.guest("w3");
        let _l1 = s.line_guest("l1");
        let mut l2 = s.line_guest("l2");
        let r = s.http("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 503, "the 6th connection with --max-connections 5: {}", r.text());
        // A line connection refused too (while all five stay).
        let mut refused = LineClient::connect(&s);
        let lines = refused.expect_closed(Duration::from_secs(5));
        assert!(lines.contains(&"! unavailable server full".to_string()), "{lines:?}");
        // Room again once one leaves.
        l2.send_line("/quit");
        l2.expect_closed(Duration::from_secs(5));
        eventually(Duration::from_secs(5), "a free connection slot", || {
            (s.http("GET", "/healthz", &[], b"").status == 200).then_some(())
        });
    }

    fn past_max_connections_per_ip_one_address_is_refused_on_both_ports(bin) {
        // Loopback is not exempt: every test client is 127.0.0.1.
        let s = Server::start(bin, &["--max-connections-per-ip", "5", "--threads", "2"]);
        let _w1 = s.guest("w1");
        let _w2 = s.guest("w2");
        let _l1 = s.line_guest("l1");
        let _l2 = s.line_guest("l2");
        let w5 = s.guest("w5");
        let r = s.http("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 503, "the 6th connection from one address: {}", r.text());
        assert_eq!(r.error_code(), "unavailable");
        assert_eq!(r.json()["message"], "too many connections from your address");
        let mut refused = LineClient::connect(&s);
        let lines = refused.expect_closed(Duration::from_secs(5));
        assert_eq!(lines, vec!["! unavailable too many connections from your address".to_string()]);
        // A slot frees when one leaves; the refusals were counted, the two
        // above and any poll here that came before the slot was free.
        w5.disconnect();
        let mut early_polls = 0;
        let metrics = eventually(Duration::from_secs(5), "a free connection slot", || {
            let r = s.http("GET", "/metrics", &[], b"");
            early_polls += u32::from(r.status == 503);
            (r.status == 200).then(|| r.text())
        });
        let want = format!("natter_connections_refused_per_address_total {}\n", 2 + early_polls);
        assert!(metrics.contains(&want), "{want}: {metrics}");
    }

    fn past_max_connections_a_line_client_gets_unavailable_server_full(bin) {
        let s = Server::start(bin, &["--max-connections", "5"]);
        let _l1 = s.line_guest("l1");
        let _l2 = s.line_guest("l2");
        let _l3 = s.line_guest("l3");
        let _w1 = s.guest("w1");
        let w2 = s.guest("w2");
        let mut refused = LineClient::connect(&s);
        let lines = refused.expect_closed(Duration::from_secs(5));
        assert_eq!(lines, vec!["! unavailable server full".to_string()]);
        w2.disconnect();
        eventually(Duration::from_secs(5), "a free connection slot", || {
            let mut c = LineClient::connect(&s);
            let nick = uniq("l4");
            c.send_line(&nick);
            let l = c.recv_until_line(|l| l.starts_with("! ") || l.starts_with("* welcome"));
            l.last().unwrap().starts_with("* welcome").then_some(())
        });
    }

    fn a_silent_line_session_is_closed_with_idle_bye(bin) {
        let s = Server::start(bin, &["--line-idle", "1"]);
        let mut idle = s.line_guest("idle");
        let mut busy = s.line_guest("busy");
        let t0 = Instant::now();
        // The busy one writes every 400 ms.
        let mut busy_lines = Vec::new();
        while t0.elapsed() < Duration::from_millis(2400) {
            busy.send_line(&format!("tick {}", busy_lines.len()));
            busy_lines.push(());
            std::thread::sleep(Duration::from_millis(400));
        }
        let lines = idle.expect_closed(Duration::from_secs(3));
        assert!(lines.contains(&"* idle, bye".to_string()), "{lines:?}");
        let listing = busy.who();
        assert!(listing.contains(&format!("* {} (online)", busy.name)), "{listing:?}");
        assert!(!listing.contains(&format!("* {} (online)", idle.name)), "{listing:?}");
    }
}
