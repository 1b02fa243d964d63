//! Session start and request handling (PROTOCOL.md "Session start",
//! "Requests", error codes).

use std::time::{Duration, Instant};

use natter_tests::ws::assert_error_shape;
use natter_tests::{eventually, is_message_in, json, ty, uniq, RawWs, Server, Value, WsClient};
use tungstenite::protocol::frame::coding::Data;
use tungstenite::Message;

const QUIET: Duration = Duration::from_millis(400);

/// The next message, which must be an `error` with `code`.
fn expect_error(ws: &mut WsClient, code: &str, what: &str) -> Value {
    let v = ws.recv_json();
    assert_error_shape(&v, what);
    assert_eq!(v["code"], code, "{what}: {v}");
    v
}

natter_tests::cases! {
    fn hello_with_a_token_gets_welcome(bin) {
        let s = Server::start(bin, &[]);
        let alice = s.account("alice");
        let mut ws = WsClient::connect(&s);
        let w = ws.hello_token(&alice.token);
        assert_eq!(ty(&w), "welcome", "{w}");
        assert_eq!(w["user"], alice.name.as_str(), "{w}");
        assert_eq!(w["guest"], false, "{w}");
        assert!(w["session"].as_str().is_some_and(|s| !s.is_empty()), "session id: {w}");
        assert_eq!(w["heartbeat_s"], 30, "default heartbeat: {w}");
        assert_eq!(w["rooms"], json!([]), "a new user is in no room: {w}");
        // A second session of the same user has its own id.
        let second = s.session(&alice);
        assert_ne!(second.welcome["session"], w["session"], "two sessions share an id");
    }

    fn guest_hello_gets_welcome(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("bob");
        let mut ws = WsClient::connect(&s);
        let w = ws.hello_guest(&name);
        assert_eq!(ty(&w), "welcome", "{w}");
        assert_eq!(w["user"], name.as_str(), "{w}");
        assert_eq!(w["guest"], true, "{w}");
        assert!(w["session"].as_str().is_some_and(|s| !s.is_empty()), "{w}");
        assert_eq!(w["heartbeat_s"], 30, "{w}");
        assert_eq!(w["rooms"], json!([]), "a guest starts in no room: {w}");
    }

    fn hello_ref_is_echoed_on_welcome_and_on_error(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = WsClient::connect(&s);
        ws.send_json(json!({"type": "hello", "name": "bad name", "ref": "h-1"}));
        let e = ws.recv_json();
        assert_eq!(ty(&e), "error", "{e}");
        assert_eq!(e["ref"], "h-1", "{e}");
        assert_eq!(e["code"], "bad_name", "{e}");
        let name = uniq("bob");
        ws.send_json(json!({"type": "hello", "name": name, "ref": "h-2"}));
        let w = ws.recv_json();
        assert_eq!(ty(&w), "welcome", "{w}");
        assert_eq!(w["ref"], "h-2", "{w}");
    }

    fn hello_without_ref_gets_welcome_without_ref(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = WsClient::connect(&s);
        ws.send_json(json!({"type": "hello", "name": uniq("bob")}));
        let w = ws.recv_json();
        assert_eq!(ty(&w), "welcome", "{w}");
        assert!(w.get("ref").is_none(), "{w}");
    }

    fn guest_name_of_a_registered_user_is_name_taken(bin) {
        let s = Server::start(bin, &[]);
        let alice = s.account("alice");
        // Offline...
        let mut ws = WsClient::connect(&s);
        assert_eq!(ws.error("hello", json!({"name": alice.name})), "name_taken");
        // ...and online.
        let _online = s.session(&alice);
        assert_eq!(ws.error("hello", json!({"name": alice.name})), "name_taken");
    }

    fn guest_name_of_a_user_online_now_is_name_taken(bin) {
        let s = Server::start(bin, &[]);
        let first = s.guest("bob");
        let name = first.user.clone();
        let mut second = WsClient::connect(&s);
        assert_eq!(second.error("hello", json!({"name": name})), "name_taken");
        // Once the first guest is gone, the name is free again.
        first.disconnect();
        eventually(Duration::from_secs(5), "the guest name to be free again", || {
            let reply = second.hello_guest(&name);
            match ty(&reply) {
                "welcome" => Some(()),
                _ => {
                    assert_eq!(reply["code"], "name_taken", "{reply}");
                    None
                }
            }
        });
    }

    fn guest_name_outside_the_rules_is_bad_name(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = WsClient::connect(&s);
        for name in ["", "has space", "a/b", "émile", &"x".repeat(33)] {
            assert_eq!(ws.error("hello", json!({"name": name})), "bad_name", "guest name {name:?}");
        }
        let w = ws.hello_guest(&"y".repeat(32));
        assert_eq!(ty(&w), "welcome", "32-character guest name: {w}");
    }

    fn no_guests_refuses_guest_hello(bin) {
        let s = Server::start(bin, &["--no-guests"]);
        let mut ws = WsClient::connect(&s);
        assert_eq!(ws.error("hello", json!({"name": uniq("bob")})), "guests_disabled");
        // Accounts still work, on the same connection.
        let alice = s.account("alice");
        let w = ws.hello_token(&alice.token);
        assert_eq!(ty(&w), "welcome", "{w}");
    }

    fn token_in_the_query_gets_welcome_at_once(bin) {
        let s = Server::start(bin, &[]);
        let alice = s.account("alice");
        let mut ws = WsClient::connect_with_token(&s, &alice.token);
        // Nothing sent: the welcome comes by itself.
        let w = ws.expect_welcome();
        assert_eq!(w["user"], alice.name.as_str(), "{w}");
        assert_eq!(w["guest"], false, "{w}");
        assert_eq!(ws.error("hello", json!({"token": alice.token})), "already_authenticated");
        assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
    }

    fn empty_or_bad_token_in_the_query_is_401_before_the_upgrade(bin) {
        let s = Server::start(bin, &[]);
        for path in ["/ws?token=", "/ws?token=not-a-token"] {
            match WsClient::try_connect_path(s.http, path) {
                Ok(_) => panic!("{path} was upgraded"),
                Err(refused) => assert_eq!(refused.status, 401, "{path}: {}", refused.body),
            }
        }
    }

    fn requests_before_hello_are_unauthenticated_and_nothing_is_delivered(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        alice.join(&room);
        let mut anon = WsClient::connect(&s);
        for (t, fields) in [
            ("join", json!({"room": room})),
            ("send", json!({"room": room, "text": "hi"})),
            ("send", json!({"to": alice.user, "text": "hi"})),
            ("history", json!({"room": room})),
            ("who", json!({})),
            ("rooms", json!({})),
            ("ping", json!({})),
        ] {
            assert_eq!(anon.error(t, fields), "unauthenticated", "{t} before hello");
        }
        // Nothing reaches the room from the unauthenticated connection...
        alice.expect_none(QUIET, |v| is_message_in(v, &room));
        // ...and nothing reaches the unauthenticated connection.
        alice.say(&room, "not for anon");
        anon.expect_no_message(QUIET);
        // A refused hello leaves it unauthenticated too.
        assert_eq!(anon.error("hello", json!({"name": alice.user})), "name_taken");
        assert_eq!(anon.error("join", json!({"room": room})), "unauthenticated");
        let w = anon.hello_guest(&uniq("late"));
        assert_eq!(ty(&w), "welcome", "{w}");
        anon.join(&room);
    }

    fn second_hello_is_already_authenticated(bin) {
        let s = Server::start(bin, &[]);
        let alice = s.account("alice");
        let mut guest = s.guest("bob");
        let mut user = s.session(&alice);
        for ws in [&mut guest, &mut user] {
            assert_eq!(ws.error("hello", json!({"name": uniq("again")})), "already_authenticated");
            assert_eq!(ws.error("hello", json!({"token": alice.token})), "already_authenticated");
            assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
        }
    }

    fn unparsable_frames_get_bad_json_and_the_connection_stays_open(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        ws.send_text("{\"type\":\"ping\"");
        expect_error(&mut ws, "bad_json", "invalid JSON");
        ws.send(Message::Binary(br#"{"type":"ping","ref":"b"}"#.to_vec())).unwrap();
        expect_error(&mut ws, "bad_json", "binary frame");
        for text in ["[1,2]", "\"ping\"", "42", "null", "true"] {
            ws.send_text(text);
            expect_error(&mut ws, "bad_json", &format!("JSON that is not an object: {text}"));
        }
        assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
    }

    fn a_text_frame_that_is_not_utf8_gets_bad_json_and_the_connection_stays_open(bin) {
        // PROTOCOL.md lists invalid UTF-8 under bad_json, connection open
        // (RFC 6455 section 8.1 would fail the connection with 1007 instead).
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        ws.send_frame(Data::Text, b"{\"type\":\"ping\",\"x\":\"\xff\xfe\"}".to_vec(), true)
            .unwrap();
        expect_error(&mut ws, "bad_json", "invalid UTF-8");
        assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
    }

    fn unparsable_frames_before_hello_get_bad_json(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = WsClient::connect(&s);
        ws.send_text("not json");
        expect_error(&mut ws, "bad_json", "invalid JSON before hello");
        let w = ws.hello_guest(&uniq("bob"));
        assert_eq!(ty(&w), "welcome", "{w}");
    }

    fn missing_or_ill_typed_fields_are_bad_request(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        let room = uniq("room");
        ws.join(&room);
        for (i, msg) in [
            json!({"type": "join"}),
            json!({"type": "join", "room": 5}),
            json!({"type": "leave"}),
            json!({"type": "send", "room": room}),
            json!({"type": "send", "text": "to nowhere"}),
            json!({"type": "send", "room": room, "text": 5}),
            json!({"type": "history"}),
            json!({"type": "read", "room": room}),
            json!({"type": "read", "room": room, "seq": "one"}),
            json!({"type": "ack", "seq": 1}),
            json!({"type": "typing"}),
            json!({"room": room}),
            json!({"type": 7}),
            json!({"type": null}),
        ]
        .into_iter()
        .enumerate()
        {
            let r = format!("bad-{i}");
            let mut msg = msg;
            msg["ref"] = json!(r);
            ws.send_json(msg.clone());
            let e = ws.reply_to(&r);
            assert_error_shape(&e, &msg.to_string());
            assert_eq!(e["code"], "bad_request", "{msg} -> {e}");
        }
        assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
    }

    fn unknown_type_is_unknown_type(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        assert_eq!(ws.error("dance", json!({"room": "x"})), "unknown_type");
        assert_eq!(ty(&ws.request("ping", json!({}))), "pong");
    }

    fn an_error_without_ref_names_the_request(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        let room = uniq("room");
        for (msg, code, request) in [
            (json!({"type": "leave", "room": room}), "not_member", "leave"),
            (json!({"type": "dance"}), "unknown_type", "dance"),
            (json!({"type": "join"}), "bad_request", "join"),
            (json!({"type": "send", "room": room, "text": "hi"}), "not_member", "send"),
        ] {
            ws.send_json(msg.clone());
            let e = ws.recv_json();
            assert_error_shape(&e, &msg.to_string());
            assert_eq!(e["code"], code, "{msg} -> {e}");
            assert_eq!(e["request"], request, "{msg} -> {e}");
            assert!(e.get("ref").is_none(), "{e}");
        }
        // Before hello too.
        let mut anon = WsClient::connect(&s);
        anon.send_json(json!({"type": "join", "room": room}));
        let e = anon.recv_json();
        assert_eq!(e["code"], "unauthenticated", "{e}");
        assert_eq!(e["request"], "join", "{e}");
    }

    fn a_ref_of_64_characters_is_echoed(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        let r = "R".repeat(64);
        ws.send_json(json!({"type": "ping", "ref": r}));
        let v = ws.recv_json();
        assert_eq!(ty(&v), "pong", "{v}");
        assert_eq!(v["ref"], r.as_str());
    }

    fn each_request_with_a_ref_is_answered_exactly_once(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        let room = uniq("room");
        let mut refs = Vec::new();
        for (t, fields) in [
            ("join", json!({"room": room})),
            ("send", json!({"room": room, "text": "hi"})),
            ("history", json!({"room": room})),
            ("who", json!({"room": room})),
            ("rooms", json!({})),
            ("typing", json!({"room": room})),
            ("read", json!({"room": room, "seq": 1})),
            ("leave", json!({"room": room})),
            ("leave", json!({"room": room})),
            ("ping", json!({})),
        ] {
            refs.push(ws.send_request(t, fields));
        }
        for r in &refs {
            let answer = ws.reply_to(r);
            assert!(
                ["ok", "error", "pong"].contains(&ty(&answer)),
                "ref {r} answered by {answer}"
            );
        }
        ws.expect_none(QUIET, |v| v.get("ref").is_some());
    }

    fn ping_is_answered_by_pong(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = s.guest("bob");
        ws.send_json(json!({"type": "ping", "ref": "p-1"}));
        let v = ws.recv_json();
        assert_eq!(ty(&v), "pong", "{v}");
        assert_eq!(v["ref"], "p-1", "{v}");
        ws.send_json(json!({"type": "ping"}));
        let v = ws.recv_json();
        assert_eq!(ty(&v), "pong", "{v}");
        assert!(v.get("ref").is_none(), "{v}");
    }

    fn websocket_ping_frames_get_pong_frames(bin) {
        let s = Server::start(bin, &[]);
        // Before hello and after.
        let mut anon = WsClient::connect(&s);
        let mut guest = s.guest("bob");
        for ws in [&mut anon, &mut guest] {
            ws.send(Message::Ping(b"natter-ping".to_vec())).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match ws.next_incoming(deadline) {
                    natter_tests::Incoming::Message(Message::Pong(p)) => {
                        assert_eq!(p, b"natter-ping", "pong payload");
                        break;
                    }
                    natter_tests::Incoming::Message(Message::Ping(_)) => {}
                    other => panic!("waiting for a pong frame, got {other:?}"),
                }
            }
        }
        guest.expect_no_message(QUIET);
    }

    fn the_handshake_timeout_counts_from_the_connect_not_from_a_late_upgrade(bin) {
        let s = Server::start(bin, &["--handshake-timeout", "2"]);
        let connected = Instant::now();
        let stream = std::net::TcpStream::connect(s.http).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let mut ws = RawWs::upgrade(stream, "/ws");
        let ending = ws.read_until_closed(Duration::from_secs(5));
        let after = connected.elapsed();
        assert_eq!(ending.close_code(), Some(1008), "{ending:?}");
        // Counted from the upgrade, the close would come 3.5 s after the connect.
        assert!(after < Duration::from_millis(3200), "closed {after:?} after the connect");
    }
}
