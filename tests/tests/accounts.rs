//! Accounts: register, login, logout, tokens (PROTOCOL.md "Accounts" and
//! "Session start").

use std::time::Duration;

use natter_tests::{json, ty, uniq, Server, WsClient, PASSWORD};

/// A name of exactly `len` characters that no other test uses.
fn name_of_len(len: usize) -> String {
    let base = uniq("n");
    assert!(base.len() <= len);
    format!("{base}{}", "x".repeat(len - base.len()))
}

natter_tests::cases! {
    fn register_answers_201_and_the_account_can_log_in(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("alice");
        let r = s.register(&name, PASSWORD);
        assert_eq!(r.status, 201, "register: {}", r.text());
        s.login(&name, PASSWORD);
    }

    fn register_of_a_taken_name_is_409_name_taken(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("alice");
        assert_eq!(s.register(&name, PASSWORD).status, 201);
        for password in [PASSWORD, "another-password"] {
            let r = s.register(&name, password);
            assert_eq!(r.status, 409, "second register: {}", r.text());
            assert_eq!(r.error_code(), "name_taken");
        }
        // The first account is untouched.
        s.login(&name, PASSWORD);
    }

    fn register_accepts_names_within_the_rules(bin) {
        let s = Server::start(bin, &[]);
        let lower = uniq("case");
        let upper = lower.to_uppercase();
        for name in [
            // One character (each test has its own server and data dir).
            "Q".to_string(),
            name_of_len(32),
            format!("Az09_-.{}", uniq("")),
            lower.clone(),
        ] {
            let r = s.register(&name, PASSWORD);
            assert_eq!(r.status, 201, "register {name:?}: {}", r.text());
        }
        // User names ignore case: another spelling is the same, taken name.
        let r = s.register(&upper, PASSWORD);
        assert_eq!(r.status, 409, "register {upper:?}: {}", r.text());
    }

    fn register_with_a_bad_name_is_400_bad_name(bin) {
        let s = Server::start(bin, &[]);
        for name in [
            String::new(),
            name_of_len(33),
            "has space".to_string(),
            "émile".to_string(),
            "a/b".to_string(),
            "a@b".to_string(),
            "tab\there".to_string(),
            "new\nline".to_string(),
        ] {
            let r = s.register(&name, PASSWORD);
            assert_eq!(r.status, 400, "register {name:?}: {}", r.text());
            assert_eq!(r.error_code(), "bad_name", "register {name:?}");
        }
    }

    fn register_password_needs_8_to_1024_characters(bin) {
        let s = Server::start(bin, &[]);
        // Too short or too long: 400 bad_password.
        for password in [
            String::new(),
            "1234567".to_string(),
            "x".repeat(1025),
            // 7 characters in 14 bytes: the rule counts characters.
            "é".repeat(7),
        ] {
            let name = uniq("pw");
            let r = s.register(&name, &password);
            assert_eq!(r.status, 400, "password of {} chars: {}", password.chars().count(), r.text());
            assert_eq!(r.error_code(), "bad_password");
            // Nothing was created: the name is still free.
            assert_eq!(s.register(&name, PASSWORD).status, 201);
        }
        // At the bounds: 201, and the password works.
        for password in ["12345678".to_string(), "x".repeat(1024), "é".repeat(8)] {
            let name = uniq("pw");
            let r = s.register(&name, &password);
            assert_eq!(r.status, 201, "password of {} chars: {}", password.chars().count(), r.text());
            s.login(&name, &password);
        }
    }

    fn register_with_a_malformed_body_is_400(bin) {
        let s = Server::start(bin, &[]);
        for body in [
            "not json".to_string(),
            "[]".to_string(),
            json!({"user": uniq("nopw")}).to_string(),
            json!({"password": PASSWORD}).to_string(),
            json!({"user": 5, "password": PASSWORD}).to_string(),
        ] {
            let r = s.http("POST", "/api/register", &[("Content-Type", "application/json")], body.as_bytes());
            assert_eq!(r.status, 400, "register body {body}: {}", r.text());
            r.error_code();
        }
    }

    fn login_answers_200_with_token_and_user(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("alice");
        assert_eq!(s.register(&name, PASSWORD).status, 201);
        let r = s.try_login(&name, PASSWORD);
        assert_eq!(r.status, 200, "{}", r.text());
        let body = r.json();
        assert_eq!(body["user"], name.as_str(), "{body}");
        assert!(body["token"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
        // Each login is its own token, and each one opens a session.
        let t1 = s.login(&name, PASSWORD);
        let t2 = s.login(&name, PASSWORD);
        for t in [t1, t2] {
            let mut ws = WsClient::connect(&s);
            let w = ws.hello_token(&t);
            assert_eq!(ty(&w), "welcome", "{w}");
            assert_eq!(w["user"], name.as_str());
        }
    }

    fn failed_logins_are_401_and_do_not_say_which_part_was_wrong(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("alice");
        assert_eq!(s.register(&name, PASSWORD).status, 201);
        let wrong_password = s.try_login(&name, "wrong-password");
        let unknown_user = s.try_login(&uniq("nobody"), PASSWORD);
        for r in [&wrong_password, &unknown_user] {
            assert_eq!(r.status, 401, "{}", r.text());
            assert_eq!(r.error_code(), "invalid_credentials");
        }
        assert_eq!(
            wrong_password.json(),
            unknown_user.json(),
            "a wrong password and an unknown user must get the same answer"
        );
    }

    fn failed_logins_past_the_limit_get_429_with_retry_after(bin) {
        let s = Server::start(bin, &["--login-rate", "3"]);
        let name = uniq("alice");
        assert_eq!(s.register(&name, PASSWORD).status, 201);
        for i in 1..=3 {
            let r = s.try_login(&name, "wrong-password");
            assert_eq!(r.status, 401, "failed login {i}: {}", r.text());
        }
        let r = s.try_login(&name, "wrong-password");
        assert_eq!(r.status, 429, "failed login 4 with --login-rate 3: {}", r.text());
        assert_eq!(r.error_code(), "rate_limited");
        let retry = r
            .header("retry-after")
            .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers));
        let secs: u64 = retry
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is not a number of seconds: {retry:?}"));
        assert!((1..=60).contains(&secs), "Retry-After {secs} outside 1..=60 s");
    }

    fn logout_revokes_the_token_and_closes_its_sessions_with_4001(bin) {
        let s = Server::start(bin, &[]);
        let alice = s.account("alice");
        let other_token = s.login(&alice.name, PASSWORD);
        let mut by_hello = s.session(&alice);
        let mut by_query = WsClient::connect_with_token(&s, &alice.token);
        by_query.expect_welcome();
        let mut other = WsClient::connect(&s);
        assert_eq!(ty(&other.hello_token(&other_token)), "welcome");

        let r = s.logout(&alice.token);
        assert_eq!(r.status, 204, "logout: {}", r.text());

        assert_eq!(by_hello.close_code(), Some(4001), "session opened by hello");
        assert_eq!(by_query.close_code(), Some(4001), "session opened by ?token=");
        // A session of another token of the same user goes on.
        assert_eq!(ty(&other.request("ping", json!({}))), "pong");

        // The revoked token opens nothing any more.
        let mut again = WsClient::connect(&s);
        assert_eq!(again.error("hello", json!({"token": alice.token})), "invalid_token");
        let path = format!("/ws?token={}", natter_tests::http::percent_encode(&alice.token));
        match WsClient::try_connect_path(s.http, &path) {
            Ok(_) => panic!("a revoked token in the query was upgraded"),
            Err(refused) => assert_eq!(refused.status, 401, "{}", refused.body),
        }
    }

    fn expired_token_is_refused_and_its_session_closed_with_4001(bin) {
        let s = Server::start(bin, &["--token-ttl", "2"]);
        let alice = s.account("alice");
        let mut ws = s.session(&alice);
        // The token lives 2 s: the session is closed when it expires.
        assert_eq!(ws.close_code_within(Duration::from_secs(8)), Some(4001));
        let mut again = WsClient::connect(&s);
        assert_eq!(again.error("hello", json!({"token": alice.token})), "invalid_token");
        let path = format!("/ws?token={}", natter_tests::http::percent_encode(&alice.token));
        match WsClient::try_connect_path(s.http, &path) {
            Ok(_) => panic!("an expired token in the query was upgraded"),
            Err(refused) => assert_eq!(refused.status, 401, "{}", refused.body),
        }
        // Logging in again gives a fresh token that works.
        let token = s.login(&alice.name, PASSWORD);
        let mut fresh = WsClient::connect(&s);
        assert_eq!(ty(&fresh.hello_token(&token)), "welcome");
    }

    fn passwords_are_stored_only_as_argon2id_hashes(bin) {
        // The files under --data are SQLite's, whatever store the suite runs on.
        let mut s = Server::start_prepared(bin, &[], &[], |_| {});
        let password = "Plaintext-Canary-8472";
        let name = uniq("alice");
        assert_eq!(s.register(&name, password).status, 201);
        s.login(&name, password);
        let status = s.sigterm_and_wait();
        assert!(status.success(), "{status}");
        let mut files = vec![s.data_dir()];
        let mut all = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                for e in std::fs::read_dir(&p).unwrap() {
                    files.push(e.unwrap().path());
                }
            } else {
                all.extend(std::fs::read(&p).unwrap());
            }
        }
        let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(password.as_bytes()), "the password is stored in clear under --data");
        assert!(contains(b"$argon2id$"), "no argon2id hash under --data");
    }

    fn hello_with_a_bad_token_is_invalid_token(bin) {
        let s = Server::start(bin, &[]);
        let mut ws = WsClient::connect(&s);
        assert_eq!(ws.error("hello", json!({"token": "not-a-token"})), "invalid_token");
        assert_eq!(ws.error("hello", json!({"token": ""})), "invalid_token");
        // Still unauthenticated, still open.
        assert_eq!(ws.error("join", json!({"room": "lobby"})), "unauthenticated");
    }
}
