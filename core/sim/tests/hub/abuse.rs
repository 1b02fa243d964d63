//! Accounts that are hard to abuse: names that ignore case, and the limits
//! on logins, registrations, name probes and session opens.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn login_body(user: &str, password: &str) -> String {
    json!({"user":user,"password":password}).to_string()
}

fn peer(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
}

// ---- names ignore case ------------------------------------------------------------

#[test]
fn a_guest_cannot_take_a_registered_or_online_name_in_another_case() {
    let mut sim = sim();
    for name in ["ALICE", "Alice", "aLiCe"] {
        let c = sim.ws_client();
        let e = sim.req(c, json!({"type":"hello","name":name}));
        assert_eq!(code(&e), "name_taken", "{name}: {e}");
    }
    sim.guest("Gus");
    let c = sim.ws_client();
    assert_eq!(code(&sim.req(c, json!({"type":"hello","name":"gus"}))), "name_taken");
    let r = sim.http("POST", "/api/register", &login_body("GUS", "password-1"), &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    let r = sim.http("POST", "/api/register", &login_body("Bob", "password-1"), &[]);
    assert_eq!(r.status, 409, "{}", r.text());
}

#[test]
fn login_in_any_case_signs_in_the_registered_spelling() {
    let mut store = FakeStore::default();
    store.add_user("Alice", "alice-password");
    let mut sim = Sim::with_store(Config::default(), store);
    let r = sim.http("POST", "/api/login", &login_body("ALICE", "alice-password"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"], "Alice");
    let token = r.json()["token"].as_str().unwrap().to_string();
    let c = sim.ws_client();
    assert_eq!(sim.req(c, json!({"type":"hello","token":token}))["user"], "Alice");
    let l = sim.line_client();
    sim.send_line(l, "/login alice alice-password");
    assert_eq!(sim.lines(l)[0], "* welcome Alice");
}

#[test]
fn names_in_requests_ignore_case() {
    let mut sim = sim();
    let a = sim.login("alice");
    let b = sim.login("bob");
    let ok = sim.req(a, json!({"type":"send","to":"BOB","text":"hi"}));
    assert_eq!(ok["type"], "ok", "{ok}");
    let got = sim.take_kind(b, "private");
    assert_eq!((got[0]["from"].as_str(), got[0]["to"].as_str()), (Some("alice"), Some("bob")));
    let h = sim.req(b, json!({"type":"history","with":"Alice"}));
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(sim.req(b, json!({"type":"read","with":"ALICE","seq":1}))["type"], "ok");
    assert_eq!(sim.req(b, json!({"type":"ack","with":"aLICE","seq":1}))["type"], "ok");
    assert_eq!(sim.req(b, json!({"type":"typing","to":"ALICE"}))["type"], "ok");
    assert_eq!(sim.take_kind(a, "typing"), [json!({"type":"typing","user":"bob","to":"alice"})]);
    // Room names stay case-sensitive.
    join(&mut sim, a, "Lobby");
    assert_eq!(code(&sim.req(a, json!({"type":"send","room":"lobby","text":"x"}))), "not_member");
}

// ---- logins -------------------------------------------------------------------------

#[test]
fn a_right_password_does_not_use_up_the_login_limit() {
    let config = Config { login_rate: 2, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    for _ in 0..6 {
        let r = sim.http("POST", "/api/login", &login_body("alice", "alice-password"), &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn failed_logins_are_limited_per_account_across_addresses() {
    let config = Config { account_login_rate: 3, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    for i in 0..3 {
        let r = sim.http_from(peer(i), "POST", "/api/login", &login_body("alice", "wrong-password"), &[]);
        assert_eq!(r.status, 401, "{}", r.text());
    }
    // From a fresh address, in another case, even with the right password.
    let r = sim.http_from(peer(9), "POST", "/api/login", &login_body("ALICE", "alice-password"), &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("Retry-After").is_some());
    // Another account is not affected; a minute later alice is not either.
    assert_eq!(sim.http_from(peer(9), "POST", "/api/login", &login_body("bob", "bob-password"), &[]).status, 200);
    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.http_from(peer(9), "POST", "/api/login", &login_body("alice", "alice-password"), &[]).status, 200);
    assert_eq!(sim.metrics().limited_logins.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn line_logins_share_the_limits() {
    let config = Config { login_rate: 2, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    for _ in 0..2 {
        let l = sim.line_client();
        sim.send_line(l, "/login alice wrong-password");
        assert!(sim.lines(l)[0].starts_with("! invalid_credentials "));
    }
    let l = sim.line_client();
    sim.send_line(l, "/login alice alice-password");
    assert!(sim.lines(l)[0].starts_with("! rate_limited "));
    let r = sim.http("POST", "/api/login", &login_body("bob", "bob-password"), &[]);
    assert_eq!(r.status, 429, "the address is limited on both ports");
}

// ---- registrations ----------------------------------------------------------------

#[test]
fn registrations_are_limited_per_address_before_hashing() {
    let config = Config { register_rate: 3, ..Config::default() };
    let mut sim = Sim::new(config);
    for i in 0..3 {
        let r = sim.http("POST", "/api/register", &login_body(&format!("u{i}"), "password-1"), &[]);
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = sim.http("POST", "/api/register", &login_body("u9", "password-1"), &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.header("Retry-After").is_some());
    let hashed = sim.store().log().iter().filter(|op| matches!(op, StoreOp::Register { .. })).count();
    assert_eq!(hashed, 3, "the refused one never reached storage");
    assert_eq!(sim.http_from(peer(2), "POST", "/api/register", &login_body("u9", "password-1"), &[]).status, 201);
}

// ---- name probes --------------------------------------------------------------------

#[test]
fn name_probes_are_limited_per_address() {
    let config = Config { name_probe_rate: 3, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    for name in ["alice", "bob", "CAROL"] {
        let c = sim.ws_client();
        assert_eq!(code(&sim.req(c, json!({"type":"hello","name":name}))), "name_taken");
    }
    // Past the limit a free name is refused too, so answers tell nothing.
    let c = sim.ws_client();
    assert_eq!(code(&sim.req(c, json!({"type":"hello","name":"free-name"}))), "rate_limited");
    let l = sim.line_client();
    sim.send_line(l, "alice");
    assert!(sim.lines(l)[0].starts_with("! rate_limited "));
    // Free names do not count; other addresses are not limited.
    sim.set_default_peer(peer(7));
    sim.guest("gus");
    sim.advance(Duration::from_secs(60));
    sim.set_default_peer(peer(1));
    let c = sim.ws_client();
    assert_eq!(code(&sim.req(c, json!({"type":"hello","name":"alice"}))), "name_taken");
}

// ---- session opens --------------------------------------------------------------------

#[test]
fn session_opens_are_limited_per_user_then_closed() {
    let config = Config { user_session_rate: 5, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    for _ in 0..5 {
        let a = sim.login("alice");
        sim.disconnect(a);
    }
    let token = sim.token("alice");
    let c = sim.ws_client();
    let e = sim.req(c, json!({"type":"hello","token":token}));
    assert_eq!(code(&e), "rate_limited", "{e}");
    sim.run_until_idle();
    assert_eq!(sim.close_code(c), Some(1008));
    // Other users are not limited, and after a minute alice is not either.
    sim.login("bob");
    sim.advance(Duration::from_secs(60));
    sim.login("alice");
}

#[test]
fn session_opens_are_limited_per_address() {
    let config = Config { peer_session_rate: 4, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    for i in 0..4 {
        let g = sim.guest(&format!("g{i}"));
        sim.disconnect(g);
    }
    let l = sim.line_client();
    sim.send_line(l, "g9");
    assert!(sim.lines(l)[0].starts_with("! rate_limited "));
    sim.run_until_idle();
    assert!(!sim.is_open(l), "closed after the refusal");
    sim.set_default_peer(peer(3));
    sim.guest("g9");
}

#[test]
fn a_token_upgrade_past_the_session_limit_is_429_not_401() {
    let config = Config { user_session_rate: 1, ..Config::default() };
    let mut sim = Sim::with_users(config, &USERS);
    sim.login("alice");
    let token = sim.token("alice");
    let c = sim.ws_upgrade(&format!("/ws?token={token}"));
    sim.run_until_idle();
    let status = sim.take(c).into_iter().find_map(|e| match e {
        natter_sim::Event::Http(r) => Some(r.status),
        _ => None,
    });
    assert_eq!(status, Some(429));
}
