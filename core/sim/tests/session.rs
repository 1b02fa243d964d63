//! Sessions as a client sees them on the wire: HTTP, the WebSocket upgrade
//! and framing, the line protocol, and every limit at its bound. Driven
//! through the simulation harness (`natter_sim`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use natter_core::Config;
use natter_sim::{Ended, Event, Sim, WriteMode};

const TEXT: OpCode = OpCode::Data(Data::Text);
const CONT: OpCode = OpCode::Data(Data::Continue);
const MS: Duration = Duration::from_millis(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn users() -> [(&'static str, &'static str); 2] {
    [("alice", "alice-password"), ("bob", "bob-password")]
}

/// The error a request got: `(code, ref or request)`.
fn error_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["code"].as_str().unwrap()
}

fn http_json(sim: &mut Sim, method: &str, path: &str, body: Value) -> (u16, Value) {
    let res = sim.http(method, path, &body.to_string(), &[]);
    (res.status, res.json())
}

// ---- HTTP ---------------------------------------------------------------

#[test]
fn healthz_metrics_page_and_unknown_paths() {
    let mut sim = Sim::new(Config::default());
    let res = sim.http("GET", "/healthz", "", &[]);
    assert_eq!((res.status, res.json()), (200, json!({"status":"ok"})));
    let res = sim.http("GET", "/metrics", "", &[]);
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").unwrap().starts_with("text/plain"));
    assert!(res.text().contains("natter_connections{transport=\"http\"} 1\n"), "{}", res.text());
    let res = sim.http("GET", "/", "", &[]);
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").unwrap().starts_with("text/html"));
    let res = sim.http("GET", "/nope", "", &[]);
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["error"], "not_found");
    assert_eq!(sim.http("DELETE", "/healthz", "", &[]).status, 405);
    assert_eq!(sim.http("GET", "/echo", "", &[]).status, 404, "no /echo without --echo");
}

#[test]
fn healthz_says_the_database_is_down_while_the_store_cannot_reach_it() {
    let mut sim = Sim::new(Config::default());
    let down = |sim: &Sim, v: bool| sim.metrics().database_down.store(v, std::sync::atomic::Ordering::Relaxed);
    down(&sim, true);
    let res = sim.http("GET", "/healthz", "", &[]);
    assert_eq!(res.status, 503);
    assert_eq!(res.text(), r#"{"status":"unavailable","database":"down"}"#);
    assert!(sim.http("GET", "/metrics", "", &[]).text().contains("natter_database_up 0\n"));
    down(&sim, false);
    assert_eq!(sim.http("GET", "/healthz", "", &[]).status, 200);
}

#[test]
fn metrics_with_a_token_need_it_as_a_bearer() {
    let config = Config { metrics_token: Some(natter_core::Secret::new("m-token")), ..Config::default() };
    let mut sim = Sim::new(config);
    for auth in [None, Some("Bearer nope"), Some("Bearer m-toke"), Some("Basic m-token"), Some("m-token")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let res = sim.http("GET", "/metrics", "", &headers);
        assert_eq!((res.status, res.json()["error"].as_str()), (401, Some("unauthorized")), "{auth:?}");
        assert_eq!(res.header("www-authenticate"), Some("Bearer realm=\"metrics\""));
    }
    for auth in ["Bearer m-token", "bearer  m-token"] {
        let res = sim.http("GET", "/metrics", "", &[("Authorization", auth)]);
        assert_eq!(res.status, 200, "{auth}");
        assert!(res.text().contains("natter_connections"));
    }
    assert_eq!(sim.http("GET", "/healthz", "", &[]).status, 200, "only /metrics is locked");
}

#[test]
fn keep_alive_answers_pipelined_requests_in_order() {
    let mut sim = Sim::new(Config::default());
    let c = sim.connect_http();
    sim.send_raw(
        c,
        b"GET /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<u16> = sim
        .take(c)
        .into_iter()
        .map(|e| match e {
            Event::Http(r) => r.status,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(statuses, [200, 404, 200]);
    assert_eq!(sim.ended(c), Some(Ended::ByServer), "Connection: close is honoured");
}

#[test]
fn malformed_http_is_answered_and_closed() {
    let mut sim = Sim::new(Config::default());
    let c = sim.connect_http();
    sim.send_raw(c, b"\x00\x01 garbage\r\n\r\n");
    let Some(Event::Http(res)) = sim.take(c).into_iter().next() else { panic!() };
    assert_eq!(res.status, 400);
    assert_eq!(sim.ended(c), Some(Ended::ByServer));
}

#[test]
fn upgrade_needs_the_websocket_headers() {
    let mut sim = Sim::new(Config::default());
    assert_eq!(sim.http("GET", "/ws", "", &[]).status, 426);
    let old = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "x"),
        ("Sec-WebSocket-Version", "8"),
    ];
    let res = sim.http("GET", "/ws", "", &old);
    assert_eq!((res.status, res.header("sec-websocket-version")), (426, Some("13")));
    let keyless = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")];
    assert_eq!(sim.http("GET", "/ws", "", &keyless).status, 400);
    let short_key = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "c2hvcnQ="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let res = sim.http("GET", "/ws", "", &short_key);
    assert_eq!((res.status, res.json()["error"].as_str()), (400, Some("bad_request")));
}

#[test]
fn upgrades_from_an_origin_not_listed_get_403() {
    let config = Config { allowed_origins: vec!["https://chat.example".into()], ..Config::default() };
    let mut sim = Sim::new(config);
    let upgrade = |origin: Option<&'static str>| {
        let mut h = vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", natter_sim::wire::WS_KEY),
            ("Sec-WebSocket-Version", "13"),
        ];
        h.extend(origin.map(|o| ("Origin", o)));
        h
    };
    for (origin, status) in [
        (Some("https://evil.example"), 403),
        (Some("http://chat.example"), 403),
        (Some("https://chat.example.evil"), 403),
        (Some("null"), 403),
        (Some("https://chat.example"), 101),
        (Some("HTTPS://Chat.Example/"), 101),
        (None, 101),
    ] {
        let c = sim.connect_http();
        sim.send_raw(c, &natter_sim::wire::request("GET", "/ws", b"", &upgrade(origin)));
        let res = sim.take(c).into_iter().find_map(|e| match e {
            Event::Http(r) => Some(r),
            _ => None,
        });
        let res = res.expect("an answer");
        assert_eq!(res.status, status, "{origin:?}: {}", res.text());
        if status == 403 {
            assert_eq!(res.json()["error"], "forbidden");
            assert_eq!(sim.ended(c), Some(Ended::ByServer));
        }
    }
    // Without a list, any origin may connect.
    let mut open = Sim::new(Config::default());
    let c = open.connect_http();
    open.send_raw(c, &natter_sim::wire::request("GET", "/ws", b"", &upgrade(Some("https://evil.example"))));
    assert!(matches!(&open.take(c)[..], [Event::Http(r)] if r.status == 101));
}

// ---- accounts -------------------------------------------------------------

#[test]
fn register_answers_201_409_and_400() {
    let mut sim = Sim::new(Config::default());
    let (status, body) =
        http_json(&mut sim, "POST", "/api/register", json!({"user":"carol","password":"correct-horse"}));
    assert_eq!((status, body), (201, json!({"user":"carol"})));
    assert!(sim.store().has_user("carol"));
    let (status, body) = http_json(&mut sim, "POST", "/api/register", json!({"user":"carol","password":"other-horse"}));
    assert_eq!((status, &body["error"]), (409, &json!("name_taken")));
    let (status, _) = http_json(&mut sim, "POST", "/api/register", json!({"user":"ca rol","password":"correct-horse"}));
    assert_eq!(status, 400, "bad name");
    let (status, _) = http_json(&mut sim, "POST", "/api/register", json!({"user":"dave","password":"1234567"}));
    assert_eq!(status, 400, "7 characters is too short");
    let (status, _) = http_json(&mut sim, "POST", "/api/register", json!({"user":"dave","password":"12345678"}));
    assert_eq!(status, 201, "8 characters is enough");
    let (status, _) = http_json(&mut sim, "POST", "/api/register", json!({"user":"erin","password":"p".repeat(1025)}));
    assert_eq!(status, 400, "1025 characters is too long");
    let (status, _) = http_json(&mut sim, "POST", "/api/register", json!({"user":"erin","password":"p".repeat(1024)}));
    assert_eq!(status, 201, "1024 characters is allowed");
    let res = sim.http("POST", "/api/register", "not json", &[]);
    assert_eq!((res.status, res.json()["error"].clone()), (400, json!("bad_json")));
    let (status, body) = http_json(&mut sim, "POST", "/api/register", json!({"user":"erin"}));
    assert_eq!((status, &body["error"]), (400, &json!("bad_request")));
}

#[test]
fn login_gives_a_token_that_opens_a_session() {
    let mut sim = Sim::new(Config::default());
    http_json(&mut sim, "POST", "/api/register", json!({"user":"carol","password":"correct-horse"}));
    let (status, body) = http_json(&mut sim, "POST", "/api/login", json!({"user":"carol","password":"correct-horse"}));
    assert_eq!((status, &body["user"]), (200, &json!("carol")));
    let token = body["token"].as_str().unwrap().to_string();
    let c = sim.ws_client();
    let welcome = sim.req(c, json!({"type":"hello","token":token}));
    assert_eq!(
        (&welcome["type"], &welcome["user"], &welcome["guest"]),
        (&json!("welcome"), &json!("carol"), &json!(false))
    );
    // Wrong password and unknown user look the same.
    let (s1, b1) = http_json(&mut sim, "POST", "/api/login", json!({"user":"carol","password":"wrong-horse"}));
    let (s2, b2) = http_json(&mut sim, "POST", "/api/login", json!({"user":"nobody","password":"wrong-horse"}));
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(b1, b2);
}

#[test]
fn failed_logins_past_the_limit_get_429_with_retry_after() {
    let config = Config { login_rate: 3, ..Config::default() };
    let mut sim = Sim::with_users(config, &users());
    let bad = json!({"user":"alice","password":"guess-guess"}).to_string();
    let good = json!({"user":"alice","password":"alice-password"}).to_string();
    for _ in 0..3 {
        assert_eq!(sim.http("POST", "/api/login", &bad, &[]).status, 401);
    }
    let res = sim.http("POST", "/api/login", &good, &[]);
    assert_eq!(res.status, 429, "even the right password waits");
    assert_eq!(res.header("retry-after"), Some("60"));
    assert_eq!(res.json()["error"], "rate_limited");
    // Another address is not limited.
    let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    assert_eq!(sim.http_from(other, "POST", "/api/login", &good, &[]).status, 200);
    sim.advance(secs(30));
    let res = sim.http("POST", "/api/login", &good, &[]);
    assert_eq!((res.status, res.header("retry-after")), (429, Some("30")));
    sim.advance(secs(30));
    assert_eq!(sim.http("POST", "/api/login", &good, &[]).status, 200, "a minute later");
}

#[test]
fn logout_revokes_the_token_and_closes_its_sessions_with_4001() {
    let mut sim = Sim::with_users(Config::default(), &users());
    let t1 = sim.token("alice");
    let t2 = sim.token("alice");
    let s1 = sim.ws_client();
    sim.req(s1, json!({"type":"hello","token":t1}));
    let s1b = sim.ws_client();
    sim.req(s1b, json!({"type":"hello","token":t1}));
    let s2 = sim.ws_client();
    sim.req(s2, json!({"type":"hello","token":t2}));
    let res = sim.http("POST", "/api/logout", "", &[("Authorization", &format!("Bearer {t1}"))]);
    assert_eq!(res.status, 204);
    assert!(res.body.is_empty());
    for c in [s1, s1b] {
        assert_eq!(sim.close_code(c), Some(4001));
        assert_eq!(sim.ended(c), Some(Ended::ByServer));
    }
    assert!(sim.is_open(s2), "a session with another token stays");
    assert_eq!(sim.close_code(s2), None);
    let again = sim.ws_client();
    let err = sim.req(again, json!({"type":"hello","token":t1}));
    assert_eq!(error_code(&err), "invalid_token");
    let res = sim.http("POST", "/api/logout", "", &[("Authorization", "Bearer nonsense")]);
    assert_eq!(res.status, 401);
    assert_eq!(sim.http("POST", "/api/logout", "", &[]).status, 401);
}

#[test]
fn token_in_the_upgrade_url() {
    let mut sim = Sim::with_users(Config::default(), &users());
    let token = sim.token("alice");
    let c = sim.ws_upgrade(&format!("/ws?token={token}"));
    let events = sim.take(c);
    assert!(matches!(&events[0], Event::Http(r) if r.status == 101), "{events:?}");
    let welcome = events[1].json().unwrap();
    assert_eq!((&welcome["type"], &welcome["user"]), (&json!("welcome"), &json!("alice")));
    assert!(welcome.get("ref").is_none());
    let ok = sim.req(c, json!({"type":"join","room":"lobby"}));
    assert_eq!(ok["type"], "ok");
    let err = sim.req(c, json!({"type":"hello","token":token}));
    assert_eq!(error_code(&err), "already_authenticated");
    for path in ["/ws?token=bogus", "/ws?token="] {
        let c = sim.ws_upgrade(path);
        let events = sim.take(c);
        assert!(matches!(&events[..], [Event::Http(r)] if r.status == 401), "{path}: {events:?}");
        assert_eq!(sim.ended(c), Some(Ended::ByServer));
    }
}

#[test]
fn token_expiry_closes_the_session_with_4001() {
    let config = Config { token_ttl: secs(60), ..Config::default() };
    let mut sim = Sim::with_users(config, &users());
    let alice = sim.login("alice");
    sim.advance(secs(60) - MS);
    assert!(sim.is_open(alice));
    sim.advance(MS);
    assert_eq!(sim.close_code(alice), Some(4001));
    assert_eq!(sim.ended(alice), Some(Ended::ByServer));
    // An expired token no longer opens a session.
    let token = sim.store_mut().issue_token("alice", natter_sim::START_UNIX_MS + 1000);
    let c = sim.ws_client();
    assert_eq!(error_code(&sim.req(c, json!({"type":"hello","token":token}))), "invalid_token");
}

// ---- WebSocket framing and requests ------------------------------------------

#[test]
fn requests_before_hello_are_unauthenticated() {
    let mut sim = Sim::new(Config::default());
    let c = sim.ws_client();
    for req in [json!({"type":"join","room":"lobby"}), json!({"type":"ping"}), json!({"type":"who"})] {
        let err = sim.req(c, req);
        assert_eq!(error_code(&err), "unauthenticated");
    }
    sim.send_json(c, json!({"type":"rooms"}));
    let v = sim.take_json(c);
    assert_eq!(v, [json!({"type":"error","request":"rooms","code":"unauthenticated","message":"send hello first"})]);
    // Nothing is delivered before welcome: a room's traffic does not leak.
    let bob = sim.guest("bob");
    sim.req(bob, json!({"type":"join","room":"lobby"}));
    sim.req(bob, json!({"type":"send","room":"lobby","text":"hi"}));
    assert!(sim.take(c).is_empty());
}

#[test]
fn malformed_requests_get_errors_and_the_connection_stays() {
    let mut sim = Sim::new(Config::default());
    let c = sim.guest("alice");
    let cases: [(&[u8], Value); 6] = [
        (b"not json", json!({"type":"error","request":"","code":"bad_json"})),
        (b"[1,2]", json!({"type":"error","request":"","code":"bad_json"})),
        (br#"{"ref":"a"}"#, json!({"type":"error","ref":"a","code":"bad_request"})),
        (br#"{"type":"dance","ref":"b"}"#, json!({"type":"error","ref":"b","code":"unknown_type"})),
        (br#"{"type":"join","ref":"c"}"#, json!({"type":"error","ref":"c","code":"bad_request"})),
        (br#"{"type":"send","room":"r","text":7}"#, json!({"type":"error","request":"send","code":"bad_request"})),
    ];
    for (frame, want) in cases {
        sim.send_frame(c, TEXT, true, frame);
        let got = sim.take_json(c);
        assert_eq!(got.len(), 1, "{got:?}");
        let mut got = got[0].clone();
        assert!(got["message"].is_string());
        got.as_object_mut().unwrap().remove("message");
        assert_eq!(got, want, "for {}", String::from_utf8_lossy(frame));
    }
    sim.send_frame(c, OpCode::Data(Data::Binary), true, b"\x01\x02");
    assert_eq!(sim.take_json(c)[0]["code"], "bad_json");
    let long_ref = "r".repeat(65);
    sim.send_json(c, json!({"type":"ping","ref":long_ref}));
    assert_eq!(sim.take_json(c)[0]["code"], "bad_request", "a ref has at most 64 characters");
    let pong = sim.req(c, json!({"type":"ping","ref":"r".repeat(64)}));
    assert_eq!(pong["type"], "pong");
    assert!(sim.is_open(c));
}

#[test]
fn invalid_utf8_in_a_text_frame_is_bad_json_and_the_connection_stays() {
    let mut sim = Sim::new(Config::default());
    let c = sim.guest("alice");
    sim.send_frame(c, TEXT, true, b"{\"type\":\"ping\xff\"}");
    let got = sim.take_json(c);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((&got[0]["type"], &got[0]["code"]), (&json!("error"), &json!("bad_json")));
    assert!(sim.is_open(c));
    assert_eq!(sim.req(c, json!({"type":"ping"}))["type"], "pong");
}

#[test]
fn echo_keeps_rfc_6455_strictness_for_conformance_suites() {
    let config = Config { echo: true, ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.ws_upgrade("/echo");
    assert!(matches!(&sim.take(c)[..], [Event::Http(r)] if r.status == 101));
    sim.send_text(c, "anything, not JSON");
    sim.send_frame(c, OpCode::Data(Data::Binary), true, b"\x00\x01");
    assert_eq!(sim.take(c), [Event::Text("anything, not JSON".into()), Event::Binary(vec![0, 1])]);
    sim.send_frame(c, TEXT, true, b"\xff");
    assert_eq!(sim.close_code(c), Some(1007));
}

#[test]
fn echo_sessions_have_no_hello_deadline() {
    let config = Config { echo: true, handshake_timeout: secs(10), heartbeat: secs(600), ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.ws_upgrade("/echo");
    assert!(matches!(&sim.take(c)[..], [Event::Http(r)] if r.status == 101));
    sim.advance(secs(11));
    assert!(sim.is_open(c), "an echo never says hello");
    sim.send_text(c, "still here");
    assert_eq!(sim.take(c), [Event::Text("still here".into())]);
}

#[test]
fn ping_without_ref_and_websocket_pings() {
    let mut sim = Sim::new(Config::default());
    let c = sim.guest("alice");
    sim.send_json(c, json!({"type":"ping"}));
    assert_eq!(sim.take_json(c), [json!({"type":"pong"})]);
    sim.send_frame(c, OpCode::Control(Control::Ping), true, b"abc");
    assert_eq!(sim.take(c), [Event::Pong(b"abc".to_vec())]);
}

#[test]
fn fragmented_messages_are_one_request() {
    let mut sim = Sim::new(Config::default());
    let c = sim.guest("alice");
    sim.send_frame(c, TEXT, false, br#"{"type":"pi"#);
    sim.send_frame(c, OpCode::Control(Control::Ping), true, b"");
    sim.send_frame(c, CONT, false, br#"ng","re"#);
    sim.send_frame(c, CONT, true, br#"f":"x"}"#);
    assert_eq!(sim.take(c), [Event::Pong(vec![]), Event::Json(json!({"type":"pong","ref":"x"}))]);
}

#[test]
fn the_client_closing_handshake_is_echoed() {
    let mut sim = Sim::new(Config::default());
    let c = sim.guest("alice");
    sim.send_close(c, 1000);
    assert_eq!(sim.take(c), [Event::Close { code: Some(1000), reason: String::new() }]);
    assert_eq!(sim.ended(c), Some(Ended::ByServer));
}

#[test]
fn protocol_violations_close_with_1002() {
    let mut sim = Sim::new(Config::default());
    let c = sim.guest("alice");
    sim.send_raw(c, &[0x81, 0x02, b'h', b'i']); // unmasked
    assert_eq!(sim.close_code(c), Some(1002));
    assert_eq!(sim.ended(c), Some(Ended::ByServer));
}

#[test]
fn everything_arrives_through_one_byte_writes() {
    let mut sim = Sim::new(Config::default());
    sim.set_default_write_mode(WriteMode::Chunks(1));
    let a = sim.guest("alice");
    let b = sim.guest("bob");
    sim.req(a, json!({"type":"join","room":"r"}));
    sim.req(b, json!({"type":"join","room":"r"}));
    for i in 0..5 {
        sim.req(a, json!({"type":"send","room":"r","text":format!("m{i}")}));
    }
    let seqs: Vec<u64> = sim.take_kind(b, "message").iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let l = sim.line_client();
    sim.send_raw(l, b"ca");
    sim.send_raw(l, b"rol\r");
    sim.send_raw(l, b"\n");
    sim.run_until_idle();
    assert_eq!(sim.lines(l)[0], "* welcome carol");
}

// ---- limits ---------------------------------------------------------------

/// `{"type":"ping","ref":"p"}` padded with spaces to `len` bytes.
fn padded_ping(len: usize) -> Vec<u8> {
    let mut v = br#"{"type":"ping","ref":"p"}"#.to_vec();
    v.resize(len, b' ');
    v
}

#[test]
fn max_frame_is_fine_at_the_limit_and_closes_1009_past_it() {
    let config = Config { max_frame: 300, ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.guest("alice");
    sim.send_frame(c, TEXT, true, &padded_ping(300));
    assert_eq!(sim.take_json(c), [json!({"type":"pong","ref":"p"})]);
    // Fragments count together.
    let whole = padded_ping(300);
    sim.send_frame(c, TEXT, false, &whole[..200]);
    sim.send_frame(c, CONT, true, &whole[200..]);
    assert_eq!(sim.take_json(c), [json!({"type":"pong","ref":"p"})]);
    sim.send_frame(c, TEXT, true, &padded_ping(301));
    assert_eq!(sim.take(c), [Event::Close { code: Some(1009), reason: "message too big".into() }]);
    assert_eq!(sim.ended(c), Some(Ended::ByServer));

    let d = sim.guest("bob");
    let whole = padded_ping(301);
    sim.send_frame(d, TEXT, false, &whole[..200]);
    assert!(sim.is_open(d));
    sim.send_frame(d, CONT, true, &whole[200..]);
    assert_eq!(sim.close_code(d), Some(1009), "a fragmented message past the limit");
}

#[test]
fn max_text_is_fine_at_the_limit_and_too_long_past_it() {
    let config = Config { max_text: 10, ..Config::default() };
    let mut sim = Sim::new(config);
    let a = sim.guest("alice");
    let b = sim.guest("bob");
    sim.req(a, json!({"type":"join","room":"r"}));
    sim.req(b, json!({"type":"join","room":"r"}));
    sim.take(b);
    let ok = sim.req(a, json!({"type":"send","room":"r","text":"0123456789"}));
    assert_eq!(ok["seq"], 1);
    let err = sim.req(a, json!({"type":"send","room":"r","text":"0123456789a"}));
    assert_eq!(error_code(&err), "too_long");
    let err = sim.req(a, json!({"type":"send","to":"bob","text":"é".repeat(6)}));
    assert_eq!(error_code(&err), "too_long", "the limit is in bytes");
    let got = sim.take_kind(b, "message");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "0123456789");
}

#[test]
fn rate_limit_allows_the_burst_then_the_rate() {
    let config = Config { rate: 2, burst: 3, ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.ws_client();
    assert_eq!(sim.req(c, json!({"type":"hello","name":"alice"}))["type"], "welcome");
    assert_eq!(sim.req(c, json!({"type":"ping"}))["type"], "pong");
    assert_eq!(sim.req(c, json!({"type":"ping"}))["type"], "pong");
    let err = sim.req(c, json!({"type":"ping"}));
    assert_eq!(error_code(&err), "rate_limited");
    // Control frames do not count.
    for _ in 0..10 {
        sim.send_frame(c, OpCode::Control(Control::Ping), true, b"");
    }
    assert_eq!(sim.take(c).len(), 10);
    sim.advance(Duration::from_millis(499));
    assert_eq!(error_code(&sim.req(c, json!({"type":"ping"}))), "rate_limited");
    sim.advance(MS);
    assert_eq!(sim.req(c, json!({"type":"ping"}))["type"], "pong");
    assert_eq!(error_code(&sim.req(c, json!({"type":"ping"}))), "rate_limited");
    // A rate-limited send is dropped: nothing is stored or delivered.
    sim.advance(secs(10));
    sim.req(c, json!({"type":"join","room":"r"}));
    for i in 0..4 {
        sim.send_json(c, json!({"type":"send","room":"r","text":format!("m{i}")}));
    }
    sim.run_until_idle();
    let got = sim.take_json(c);
    assert_eq!(got.iter().filter(|v| v["type"] == "message").count(), 2, "{got:?}");
    assert_eq!(got.iter().filter(|v| v["code"] == "rate_limited").count(), 2, "{got:?}");
    assert_eq!(sim.store().room_seq("r"), 2);
}

#[test]
fn a_fragmented_message_counts_once_against_the_rate() {
    let config = Config { rate: 1, burst: 2, ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.guest("alice"); // one token
    sim.send_frame(c, TEXT, false, br#"{"type":"#);
    sim.send_frame(c, CONT, false, br#""ping","#);
    sim.send_frame(c, CONT, true, br#""ref":"f"}"#);
    assert_eq!(sim.take_json(c), [json!({"type":"pong","ref":"f"})]);
    assert_eq!(error_code(&sim.req(c, json!({"type":"ping"}))), "rate_limited");
}

#[test]
fn max_rooms_is_fine_at_the_limit_and_too_many_rooms_past_it() {
    let config = Config { max_rooms: 2, ..Config::default() };
    let mut sim = Sim::with_users(config, &users());
    for c in [sim.guest("gus"), sim.login("alice")] {
        assert_eq!(sim.req(c, json!({"type":"join","room":"a"}))["type"], "ok");
        assert_eq!(sim.req(c, json!({"type":"join","room":"b"}))["type"], "ok");
        assert_eq!(error_code(&sim.req(c, json!({"type":"join","room":"c"}))), "too_many_rooms");
        assert_eq!(sim.req(c, json!({"type":"join","room":"b"}))["type"], "ok", "a room it is in already");
        sim.req(c, json!({"type":"leave","room":"a"}));
        assert_eq!(sim.req(c, json!({"type":"join","room":"c"}))["type"], "ok");
    }
    assert_eq!(sim.store().members("c"), ["alice"]);
}

#[test]
fn heartbeat_pings_and_closes_a_silent_client_with_1001() {
    let config = Config { heartbeat: secs(10), ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.ws_client();
    let welcome = sim.req(c, json!({"type":"hello","name":"alice"}));
    assert_eq!(welcome["heartbeat_s"], 10);
    sim.set_auto_pong(c, false);
    sim.advance(secs(10) - MS);
    assert!(sim.take(c).is_empty());
    sim.advance(MS);
    assert_eq!(sim.take(c), [Event::Ping(vec![])]);
    sim.advance(secs(10) - MS);
    assert!(sim.is_open(c), "silence up to 2 x heartbeat is fine");
    sim.advance(MS);
    assert_eq!(sim.take(c), [Event::Close { code: Some(1001), reason: "idle".into() }]);
    assert_eq!(sim.ended(c), Some(Ended::ByServer));

    // A browser answers pings by itself and stays.
    let b = sim.guest("bob");
    sim.advance(secs(100));
    assert!(sim.is_open(b));
    assert_eq!(sim.take(b).iter().filter(|e| matches!(e, Event::Ping(_))).count(), 10);
    // Any frame resets the silence timer.
    sim.set_auto_pong(b, false);
    sim.advance(secs(15));
    sim.send_frame(b, OpCode::Control(Control::Pong), true, b"");
    sim.advance(secs(19));
    assert!(sim.is_open(b));
    sim.advance(secs(1));
    assert_eq!(sim.close_code(b), Some(1001));
}

#[test]
fn handshake_timeout_closes_1008_after_the_upgrade_and_plainly_before() {
    let config = Config { handshake_timeout: secs(10), ..Config::default() };
    let mut sim = Sim::new(config);
    let ws = sim.ws_client();
    let http = sim.connect_http();
    let line = sim.line_client();
    sim.advance(secs(10) - MS);
    assert!(sim.is_open(ws) && sim.is_open(http) && sim.is_open(line));
    sim.advance(MS);
    assert_eq!(sim.take(ws), [Event::Close { code: Some(1008), reason: "no hello in time".into() }]);
    assert_eq!(sim.ended(ws), Some(Ended::ByServer));
    assert!(sim.take(http).is_empty(), "nothing is written to a socket that never sent a request");
    assert_eq!(sim.ended(http), Some(Ended::ByServer));
    assert_eq!(sim.ended(line), Some(Ended::ByServer));
    // A welcomed session is not subject to it.
    let ok = sim.guest("alice");
    sim.advance(secs(11));
    assert!(sim.is_open(ok));
}

#[test]
fn the_handshake_budget_runs_from_the_connect_through_a_late_upgrade() {
    let config = Config { handshake_timeout: secs(3), ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.connect_http();
    sim.advance(Duration::from_millis(2400));
    sim.send_upgrade(c, "/ws");
    assert!(matches!(&sim.take(c)[..], [Event::Http(r)] if r.status == 101));
    sim.advance(Duration::from_millis(600) - MS);
    assert!(sim.is_open(c), "closed early");
    sim.advance(MS);
    assert_eq!(sim.take(c), [Event::Close { code: Some(1008), reason: "no hello in time".into() }]);
    assert_eq!(sim.ended(c), Some(Ended::ByServer));
    // A keep-alive request before the upgrade starts the budget again.
    let c = sim.connect_http();
    sim.advance(secs(2));
    sim.send_raw(c, &natter_sim::wire::request("GET", "/healthz", b"", &[]));
    sim.advance(secs(2));
    sim.send_upgrade(c, "/ws");
    sim.advance(secs(1) - MS);
    assert!(sim.is_open(c));
    sim.advance(MS);
    assert_eq!(sim.close_code(c), Some(1008));
}

#[test]
fn a_hello_that_fails_leaves_the_handshake_timer_running() {
    let config = Config { handshake_timeout: secs(10), ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.ws_client();
    assert_eq!(error_code(&sim.req(c, json!({"type":"hello","name":"bad name"}))), "bad_name");
    sim.advance(secs(10));
    assert_eq!(sim.close_code(c), Some(1008));
}

/// The bytes one room message takes in an outbox.
fn message_frame_len(text: &str) -> usize {
    let mut sim = Sim::new(Config::default());
    let a = sim.guest("alice");
    let b = sim.guest("bob");
    sim.req(a, json!({"type":"join","room":"r"}));
    sim.req(b, json!({"type":"join","room":"r"}));
    sim.set_write_mode(b, WriteMode::Stalled);
    sim.req(a, json!({"type":"send","room":"r","text":text}));
    sim.queued(b)
}

#[test]
fn max_queue_closes_a_slow_consumer_with_1008_and_others_get_everything() {
    let len = message_frame_len("xxxx");
    let config = Config { max_queue: 3 * len, ..Config::default() };
    let mut sim = Sim::new(config);
    let a = sim.guest("alice");
    let slow = sim.guest("slow");
    let fast = sim.guest("fast");
    for c in [a, slow, fast] {
        sim.req(c, json!({"type":"join","room":"r"}));
    }
    sim.take(slow);
    sim.take(fast);
    sim.set_write_mode(slow, WriteMode::Stalled);
    for _ in 0..3 {
        sim.req(a, json!({"type":"send","room":"r","text":"xxxx"}));
    }
    assert_eq!(sim.queued(slow), 3 * len, "exactly at the bound is fine");
    assert!(sim.is_open(slow));
    sim.req(a, json!({"type":"send","room":"r","text":"xxxx"}));
    assert!(sim.queued(slow) < len, "the queue was dropped for the close frame");
    for _ in 0..5 {
        sim.req(a, json!({"type":"send","room":"r","text":"xxxx"}));
    }
    sim.set_write_mode(slow, WriteMode::Full);
    assert_eq!(sim.take(slow), [Event::Close { code: Some(1008), reason: "slow consumer".into() }]);
    assert_eq!(sim.ended(slow), Some(Ended::ByServer));
    let seqs: Vec<u64> = sim.take_kind(fast, "message").iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=9).collect::<Vec<_>>());
    assert!(sim.max_queued() <= 3 * len);
    assert_eq!(sim.metrics().slow_consumer_closes.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_client_that_never_reads_is_dropped_after_the_linger() {
    let len = message_frame_len("xxxx");
    // Room for alice's own turn (her message, its ok, and the `leave` of
    // the dropped client, which the hub sends at once) but not for five
    // messages that are never written.
    let config = Config { max_queue: 3 * len, ..Config::default() };
    let mut sim = Sim::new(config);
    let a = sim.guest("alice");
    let slow = sim.guest("slow");
    sim.req(a, json!({"type":"join","room":"r"}));
    sim.req(slow, json!({"type":"join","room":"r"}));
    sim.set_write_mode(slow, WriteMode::Stalled);
    for _ in 0..5 {
        sim.req(a, json!({"type":"send","room":"r","text":"xxxx"}));
    }
    assert!(sim.is_open(slow));
    sim.advance(secs(2));
    assert_eq!(sim.ended(slow), Some(Ended::ByServer));
    assert_eq!(sim.connections(), 1);
}

#[test]
fn max_connections_refuses_with_503_and_a_line() {
    let config = Config { max_connections: 2, ..Config::default() };
    let mut sim = Sim::new(config);
    let a = sim.guest("alice");
    let b = sim.line_guest("bob");
    let res = sim.http("GET", "/healthz", "", &[]);
    assert_eq!(res.status, 503);
    assert_eq!(res.json()["error"], "unavailable");
    let l = sim.line_client();
    assert_eq!(sim.lines(l), ["! unavailable server full"]);
    assert_eq!(sim.ended(l), Some(Ended::ByServer));
    let w = sim.connect_http();
    assert!(matches!(&sim.take(w)[..], [Event::Http(r)] if r.status == 503));
    assert_eq!(sim.ended(w), Some(Ended::ByServer));
    assert!(sim.is_open(a) && sim.is_open(b), "the others are unharmed");
    sim.disconnect(b);
    assert_eq!(sim.http("GET", "/healthz", "", &[]).status, 200);
}

#[test]
fn max_connections_per_ip_refuses_that_address_only() {
    let config = Config { max_connections_per_ip: 3, ..Config::default() };
    let mut sim = Sim::new(config);
    let crowd: IpAddr = Ipv4Addr::new(10, 0, 0, 7).into();
    sim.set_default_peer(crowd);
    let a = sim.guest("alice");
    let b = sim.line_guest("bob");
    let c = sim.connect_http();
    let l = sim.line_client();
    assert_eq!(sim.lines(l), ["! unavailable too many connections from your address"]);
    assert_eq!(sim.ended(l), Some(Ended::ByServer));
    let res = sim.http("GET", "/healthz", "", &[]);
    assert_eq!((res.status, res.json()["error"].as_str()), (503, Some("unavailable")));
    assert_eq!(res.json()["message"], "too many connections from your address");
    assert_eq!(sim.metrics().connections_refused_per_address.load(std::sync::atomic::Ordering::Relaxed), 2);
    // Another address is served; the crowd's own connections are unharmed.
    let other: IpAddr = Ipv4Addr::new(10, 0, 0, 8).into();
    assert_eq!(sim.http_from(other, "GET", "/healthz", "", &[]).status, 200);
    assert!(sim.is_open(a) && sim.is_open(b) && sim.is_open(c));
    // A slot frees when one of them leaves.
    sim.disconnect(c);
    assert_eq!(sim.http("GET", "/healthz", "", &[]).status, 200);
    assert_eq!(sim.metrics().connections_from(crowd), 2, "refused and finished connections are uncounted");
}

#[test]
fn shutdown_closes_websockets_with_1012() {
    let mut sim = Sim::new(Config::default());
    let a = sim.guest("alice");
    let l = sim.line_guest("bob");
    let pre = sim.ws_client();
    sim.shutdown();
    assert_eq!(sim.take(a), [Event::Close { code: Some(1012), reason: "service restart".into() }]);
    assert_eq!(sim.close_code(pre), Some(1012));
    assert_eq!(sim.lines(l).last().map(String::as_str), Some("* server restarting, bye"));
    for c in [a, l, pre] {
        assert_eq!(sim.ended(c), Some(Ended::ByServer));
    }
}

#[path = "session/line.rs"]
mod line;
