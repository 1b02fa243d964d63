//! Issue 10, "Hard to abuse": accounts, logins and presence (PROTOCOL.md
//! "Accounts", "Session start", "Membership and presence"). Every flood here
//! is bounded in count and time and aims at 127.0.0.1 only.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use natter_tests::http::read_response;
use natter_tests::{json, ty, uniq, HttpResponse, LineClient, Server, Value, WsClient, PASSWORD};

/// Runs `f(i)` for `i` in `0..n` on `n` threads released at once.
fn at_once<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f) = (Arc::clone(&barrier), Arc::clone(&f));
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("a client thread panicked")).collect()
}

/// `POST path` with a JSON body; `None` when the server closed without an
/// answer within `wait`.
fn try_post(addr: SocketAddr, path: &str, body: &Value, wait: Duration) -> Option<HttpResponse> {
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP port");
    let _ = stream.write_all(format!("{head}{body}").as_bytes());
    read_response(&mut stream, wait).ok()
}

fn account_body(user: &str, password: &str) -> Value {
    json!({"user": user, "password": password})
}

fn status_count(answers: &[HttpResponse], status: u16) -> usize {
    answers.iter().filter(|r| r.status == status).count()
}

fn retry_after(r: &HttpResponse) -> u64 {
    let v = r.header("retry-after").unwrap_or_else(|| panic!("{} without Retry-After: {:?}", r.status, r.headers));
    v.trim().parse().unwrap_or_else(|_| panic!("Retry-After is not seconds: {v:?}"))
}

natter_tests::cases! {
    // ---- 1. user names ignore case -------------------------------------------------

    fn a_name_in_another_case_is_the_same_user_everywhere(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("carol");
        let upper = name.to_uppercase();
        assert_eq!(s.register(&name, PASSWORD).status, 201);
        // A second registration in another case is the same, taken name.
        let r = s.register(&upper, PASSWORD);
        assert_eq!((r.status, r.error_code()), (409, "name_taken".to_string()), "{}", r.text());
        // A guest cannot take it in another case, on either port.
        let mut ws = WsClient::connect(&s);
        let e = ws.hello_guest(&upper);
        assert_eq!((ty(&e), e["code"].as_str()), ("error", Some("name_taken")), "{e}");
        let mut line = LineClient::connect(&s);
        line.send_line(&upper);
        let l = line.recv_line();
        assert!(l.starts_with("! name_taken"), "{l}");
        // Logging in in another case signs in the account, shown as registered.
        let r = s.try_login(&upper, PASSWORD);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["user"], name.as_str());
        let mut line = LineClient::connect(&s);
        line.send_line(&format!("/login {upper} {PASSWORD}"));
        line.expect_welcome(&name);
        // Names in requests ignore case too.
        let (_, mut other) = s.user("dave");
        let ok = other.ok("send", json!({"to": upper, "text": "hi carol"}));
        assert!(ok["seq"].is_u64(), "{ok}");
        let got = line.wait_line(|l| l.starts_with("[pm] "));
        assert!(got.ends_with(": hi carol"), "{got}");
        let h = other.ok("history", json!({"with": upper}));
        assert_eq!(h["messages"][0]["to"], name.as_str(), "{h}");
    }

    fn a_guest_name_blocks_registration_in_another_case(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("Reguser");
        let mut g = WsClient::connect(&s);
        assert_eq!(ty(&g.hello_guest(&name)), "welcome");
        let r = s.register(&name.to_lowercase(), PASSWORD);
        assert_eq!((r.status, r.error_code()), (409, "name_taken".to_string()), "{}", r.text());
    }

    // ---- 2. failed logins are counted before the hash ------------------------------

    fn concurrent_wrong_passwords_from_one_address_are_limited_before_hashing(bin) {
        let s = Server::start(bin, &["--login-rate", "3"]);
        let name = uniq("victim");
        assert_eq!(s.register(&name, PASSWORD).status, 201);
        let addr = s.http;
        let answers: Vec<HttpResponse> = at_once(30, move |_| {
            try_post(addr, "/api/login", &account_body(&name, "wrong-password"), Duration::from_secs(30))
                .expect("an answer")
        });
        assert_eq!(status_count(&answers, 401), 3, "only --login-rate attempts are checked: {:?}",
            answers.iter().map(|r| r.status).collect::<Vec<_>>());
        assert_eq!(status_count(&answers, 429), 27);
        for r in answers.iter().filter(|r| r.status == 429) {
            assert_eq!(r.error_code(), "rate_limited");
            assert!((1..=60).contains(&retry_after(r)));
        }
        // The line port shares the limit.
        let mut line = LineClient::connect(&s);
        line.send_line(&format!("/login {} {PASSWORD}", uniq("x")));
        let l = line.recv_line();
        assert!(l.starts_with("! rate_limited"), "{l}");
    }

    fn failed_logins_are_limited_per_account(bin) {
        let s = Server::start(bin, &["--account-login-rate", "2", "--login-rate", "100"]);
        let name = uniq("victim");
        assert_eq!(s.register(&name, PASSWORD).status, 201);
        for _ in 0..2 {
            assert_eq!(s.try_login(&name, "wrong-password").status, 401);
        }
        let r = s.try_login(&name.to_uppercase(), PASSWORD);
        assert_eq!(r.status, 429, "{}", r.text());
        retry_after(&r);
        // Another account from the same address is not limited.
        s.account("bystander");
    }

    // ---- 3. password hashing as a weapon -------------------------------------------

    fn registrations_are_limited_per_address_before_hashing(bin) {
        let s = Server::start(bin, &["--register-rate", "3"]);
        let addr = s.http;
        let prefix = uniq("reg");
        let answers: Vec<HttpResponse> = at_once(8, move |i| {
            try_post(addr, "/api/register", &account_body(&format!("{prefix}{i}"), PASSWORD), Duration::from_secs(30))
                .expect("an answer")
        });
        assert_eq!(status_count(&answers, 201), 3, "{:?}", answers.iter().map(|r| r.status).collect::<Vec<_>>());
        assert_eq!(status_count(&answers, 429), 5);
        for r in answers.iter().filter(|r| r.status == 429) {
            assert_eq!(r.error_code(), "rate_limited");
            retry_after(r);
        }
        let metrics = s.http("GET", "/metrics", &[], b"").text();
        assert!(metrics.contains("natter_abuse_limited_total{limit=\"register\"} 5"), "{metrics}");
    }

    fn a_full_hashing_queue_refuses_at_once_with_503_and_retry_after(bin) {
        let s = Server::start(bin, &["--password-queue", "2", "--register-rate", "1000", "--threads", "2"]);
        let addr = s.http;
        let prefix = uniq("q");
        let answers: Vec<(String, HttpResponse)> = at_once(40, move |i| {
            let name = format!("{prefix}{i}");
            let r = try_post(addr, "/api/register", &account_body(&name, PASSWORD), Duration::from_secs(60))
                .expect("an answer");
            (name, r)
        });
        let refused: Vec<&(String, HttpResponse)> = answers.iter().filter(|(_, r)| r.status == 503).collect();
        assert!(!refused.is_empty(), "40 at once with a queue of 2: some must be refused");
        for (name, r) in &refused {
            assert_eq!(r.error_code(), "unavailable");
            assert!(retry_after(r) >= 1);
            // Nothing was done: the name is free.
            assert_eq!(s.register(name, PASSWORD).status, 201, "{name} after 503");
        }
        for (name, r) in &answers {
            assert!(r.status == 201 || r.status == 503, "{name}: {}", r.text());
        }
    }

    fn shutdown_does_not_wait_for_queued_hashes(bin) {
        let mut s = Server::start(bin, &["--password-queue", "1000", "--register-rate", "100000"]);
        let addr = s.http;
        let prefix = uniq("sd");
        // 400 registrations queue up (several seconds of argon2 on two
        // threads); their answers do not matter, the shutdown does.
        let flood = std::thread::spawn(move || {
            at_once(400, move |i| {
                try_post(addr, "/api/register", &account_body(&format!("{prefix}{i}"), PASSWORD), Duration::from_secs(30))
                    .map(|r| r.status)
            })
        });
        natter_tests::eventually(Duration::from_secs(10), "the hashing queue to fill", || {
            let m = natter_tests::http(addr, "GET", "/metrics", &[], b"").text();
            m.lines()
                .find(|l| l.starts_with("natter_store_queue_depth "))
                .and_then(|l| l.split(' ').nth(1)?.parse::<f64>().ok())
                .filter(|depth| *depth >= 100.0)
        });
        let t0 = Instant::now();
        let status = s.sigterm_and_wait();
        assert!(status.success(), "{status:?}");
        assert!(t0.elapsed() < Duration::from_secs(10), "exit took {:?} with hashes queued", t0.elapsed());
        let _ = flood.join();
    }

    // ---- 4. no work for clients that are gone --------------------------------------

    fn registrations_whose_client_timed_out_are_not_done(bin) {
        let s = Server::start(
            bin,
            &["--handshake-timeout", "1", "--password-queue", "1000", "--register-rate", "100000"],
        );
        let addr = s.http;
        let prefix = uniq("late");
        let answers: Vec<(String, Option<u16>)> = at_once(120, move |i| {
            let name = format!("{prefix}{i}");
            let r = try_post(addr, "/api/register", &account_body(&name, PASSWORD), Duration::from_secs(30));
            (name, r.map(|r| r.status))
        });
        let dropped: Vec<&String> = answers.iter().filter(|(_, r)| r.is_none()).map(|(n, _)| n).collect();
        assert!(dropped.len() >= 10, "120 hashes cannot all finish within the 1 s handshake time-out");
        // Let whatever was in progress finish, then retry: nobody was told
        // the account exists, so it must not. The one exception is a write
        // that finished in the instant its client timed out (at most one per
        // hashing thread): it happened before the server could know.
        std::thread::sleep(Duration::from_secs(2));
        let mut taken = Vec::new();
        for name in &dropped {
            let r = s.register(name, PASSWORD);
            match r.status {
                201 => {}
                409 => taken.push(name.to_string()),
                other => panic!("{name}: {other} {}", r.text()),
            }
        }
        assert!(
            taken.len() <= 2,
            "{} of {} registrations dropped without an answer were done anyway: {taken:?}",
            taken.len(),
            dropped.len()
        );
    }

    // ---- 5. guest hello does not tell anyone at any speed which names exist ---------

    fn name_probes_past_the_limit_are_rate_limited(bin) {
        let s = Server::start(bin, &["--name-probe-rate", "3"]);
        let names: Vec<String> = (0..4).map(|_| s.account("known").name).collect();
        for name in &names[..3] {
            let mut c = WsClient::connect(&s);
            let e = c.hello_guest(name);
            assert_eq!(e["code"], "name_taken", "{e}");
        }
        // Past the limit a free name is refused as well: no answer tells.
        let mut c = WsClient::connect(&s);
        let e = c.hello_guest(&uniq("free"));
        assert_eq!(e["code"], "rate_limited", "{e}");
        let mut line = LineClient::connect(&s);
        line.send_line(&names[3]);
        let l = line.recv_line();
        assert!(l.starts_with("! rate_limited"), "{l}");
    }

    // ---- 6. presence amplification --------------------------------------------------

    fn a_session_flap_loop_sends_the_room_a_bounded_number_of_presence_events(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("flap");
        let (account, mut first) = s.user("flapper");
        first.ok("join", json!({"room": room}));
        let mut bystander = s.guest("bystander");
        bystander.ok("join", json!({"room": room}));
        first.disconnect();
        bystander.drain(Duration::from_secs(3));
        let about_flapper = |v: &Value| ty(v) == "presence" && v["user"] == account.name.as_str();
        let (mut welcomed, mut refused) = (0, 0);
        let t0 = Instant::now();
        for _ in 0..40 {
            let mut c = WsClient::connect(&s);
            let reply = c.hello_token(&account.token);
            match (ty(&reply), reply["code"].as_str()) {
                ("welcome", _) => welcomed += 1,
                ("error", Some("rate_limited")) => refused += 1,
                other => panic!("unexpected reply {other:?}: {reply}"),
            }
            c.disconnect();
            assert!(t0.elapsed() < Duration::from_secs(30), "the loop is bounded in time");
        }
        let seen: Vec<Value> = bystander.drain(Duration::from_secs(4)).into_iter().filter(about_flapper).collect();
        assert!(seen.len() <= 2, "{} presence events for one user's flap loop: {seen:?}", seen.len());
        // And presence stays truthful: the flapper ended offline.
        assert_eq!(seen.last().map(|v| v["state"].clone()), Some(json!("offline")), "{seen:?}");
        let who = bystander.ok("who", json!({"room": room}));
        let me = who["users"].as_array().unwrap().iter().find(|u| u["user"] == account.name.as_str()).cloned();
        assert_eq!(me.map(|u| u["online"].clone()), Some(json!(false)), "{who}");
        assert!(refused > 0, "40 session opens in a row must meet the per-user limit ({welcomed} welcomed)");
    }

    fn session_opens_past_the_limit_are_refused_and_closed(bin) {
        let s = Server::start(bin, &["--peer-session-rate", "3"]);
        for _ in 0..3 {
            let mut line = LineClient::connect(&s);
            let name = uniq("g");
            line.send_line(&name);
            line.expect_welcome(&name);
        }
        let mut line = LineClient::connect(&s);
        line.send_line(&uniq("g"));
        let l = line.recv_line();
        assert!(l.starts_with("! rate_limited"), "{l}");
        line.expect_closed(Duration::from_secs(5));
        let mut ws = WsClient::connect(&s);
        let e = ws.hello_guest(&uniq("g"));
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert_eq!(ws.close_code_within(Duration::from_secs(5)), Some(1008));
    }
}
