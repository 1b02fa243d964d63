//! The HTTP side: health, metrics, the web page, the echo endpoint, and
//! garbage on both ports (PROTOCOL.md "Ports and transports").

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use natter_tests::raw_ws::{RawWs, OP_TEXT};
use natter_tests::{is_message_in, json, ty, uniq, Incoming, Server, WsClient};
use tungstenite::Message;

/// Deterministic pseudo-random bytes (xorshift).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Opens a connection to `addr`, writes `bytes` (ignoring write errors) and
/// returns the stream, still open.
fn spray(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = s.write_all(bytes);
    s
}

/// Writes `request` on a new connection and reads every response the
/// server sends before it closes (or goes quiet for two seconds).
fn responses_to(addr: SocketAddr, request: &[u8]) -> Vec<natter_tests::HttpResponse> {
    let mut stream = spray(addr, request);
    let mut out = Vec::new();
    while let Ok(r) = natter_tests::http::read_response(&mut stream, Duration::from_secs(2)) {
        out.push(r);
    }
    out
}

/// The sample names in a Prometheus text exposition, checking each sample
/// line has a well-formed name and a numeric value.
fn metric_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        let rest = if line[name_end..].starts_with('{') {
            let close = line.rfind('}').unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
            &line[close + 1..]
        } else {
            &line[name_end..]
        };
        let value = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value in {line:?}"));
        assert!(value.parse::<f64>().is_ok(), "value {value:?} is not a number in {line:?}");
        names.push(name.to_string());
    }
    names
}

natter_tests::cases! {
    fn healthz_answers_200(bin) {
        let s = Server::start(bin, &[]);
        let r = s.http("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    fn metrics_answer_prometheus_text_with_natter_names(bin) {
        let s = Server::start(bin, &[]);
        // Some activity first.
        let room = uniq("room");
        let mut a = s.guest("alice");
        a.join(&room);
        a.say(&room, "counted");
        let r = s.http("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let ct = r.header("content-type").unwrap_or("");
        assert!(ct.starts_with("text/plain"), "Content-Type {ct:?}");
        let names = metric_names(&r.text());
        assert!(
            names.iter().any(|n| n.starts_with("natter_")),
            "no natter_ metric in {:?}",
            r.text()
        );
    }

    fn metrics_with_a_token_answer_401_without_it(bin) {
        let s = Server::start_with_env(bin, &[], &[("NATTER_METRICS_TOKEN", "scrape-me-7")]);
        let r = s.http("GET", "/metrics", &[], b"");
        assert_eq!((r.status, r.error_code()), (401, "unauthorized".to_string()));
        assert!(!r.text().contains("natter_"), "{}", r.text());
        let r = s.http("GET", "/metrics", &[("Authorization", "Bearer scrape-me-8")], b"");
        assert_eq!(r.status, 401);
        let r = s.http("GET", "/metrics", &[("Authorization", "Bearer scrape-me-7")], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(metric_names(&r.text()).iter().any(|n| n == "natter_connections"));
        assert!(!s.log_tail(200).contains("scrape-me-7"), "the token is never logged");
    }

    fn the_root_serves_the_web_client(bin) {
        let s = Server::start(bin, &[]);
        let r = s.http("GET", "/", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let ct = r.header("content-type").unwrap_or("");
        assert!(ct.starts_with("text/html"), "Content-Type {ct:?}");
        let page = r.text().to_ascii_lowercase();
        assert!(page.contains("<!doctype html") || page.contains("<html"), "not an HTML page: {page:?}");
    }

    fn a_request_with_two_content_lengths_is_refused_and_nothing_after_it_is_read(bin) {
        let s = Server::start(bin, &[]);
        // Behind a proxy that reads the other length, the bytes after the
        // first body would be a second, smuggled request.
        let smuggle = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 35\r\n\r\n\
                        GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        let got = responses_to(s.http, smuggle);
        let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![400], "one 400 and the connection closed");
        assert_eq!(got[0].error_code(), "bad_request");
        let equal = b"GET /healthz HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(responses_to(s.http, equal).iter().map(|r| r.status).collect::<Vec<_>>(), vec![400]);
    }

    fn a_content_length_that_is_not_plain_digits_is_400(bin) {
        let s = Server::start(bin, &[]);
        // Each would be answered 200 if its length were read as 2.
        for value in ["+2", "0x2", "2 2", "-0", "2,2"] {
            let request = format!("GET /healthz HTTP/1.1\r\nContent-Length: {value}\r\n\r\n{{}}");
            let got = responses_to(s.http, request.as_bytes());
            assert_eq!(got.iter().map(|r| r.status).collect::<Vec<_>>(), vec![400], "Content-Length {value:?}");
        }
        let both = b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(responses_to(s.http, both).iter().map(|r| r.status).collect::<Vec<_>>(), vec![400]);
        // A plain one still works.
        let ok = b"GET /healthz HTTP/1.1\r\nContent-Length: 02\r\nConnection: close\r\n\r\n{}";
        assert_eq!(responses_to(s.http, ok).iter().map(|r| r.status).collect::<Vec<_>>(), vec![200]);
    }

    fn an_upgrade_from_an_origin_not_allowed_gets_403(bin) {
        let s = Server::start(bin, &["--allowed-origin", "https://chat.example,http://127.0.0.1:1"]);
        let upgrade = |extra: &str| {
            let req = format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n{extra}\r\n"
            );
            natter_tests::http_raw(s.http, req.as_bytes())
        };
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let r = upgrade(&format!("{key}Origin: https://evil.example\r\n"));
        assert_eq!((r.status, r.error_code()), (403, "forbidden".to_string()));
        assert_eq!(upgrade(&format!("{key}Origin: https://chat.example\r\n")).status, 101);
        assert_eq!(upgrade(key).status, 101, "no Origin: not a browser, let through");
        let metrics = s.http("GET", "/metrics", &[], b"").text();
        assert!(metrics.contains("natter_origin_refused_total 1\n"), "{metrics}");
        // A key that is not base64 of 16 bytes.
        for bad in ["c2hvcnQ=", "not a key at all", "dGhlIHNhbXBsZSBub25jZQ"] {
            let r = upgrade(&format!("Sec-WebSocket-Key: {bad}\r\n"));
            assert_eq!((r.status, r.error_code()), (400, "bad_request".to_string()), "key {bad:?}");
        }
    }

    fn the_page_has_a_content_security_policy_and_no_inline_script(bin) {
        let s = Server::start(bin, &[]);
        let r = s.http("GET", "/", &[], b"");
        assert_eq!(r.status, 200);
        let csp = r.header("content-security-policy").unwrap_or_else(|| panic!("no CSP: {:?}", r.headers));
        let directive = |name: &str| {
            csp.split(';').map(str::trim).find(|d| d.split_whitespace().next() == Some(name)).map(str::to_string)
        };
        assert_eq!(directive("default-src").as_deref(), Some("default-src 'none'"), "{csp}");
        assert_eq!(directive("script-src").as_deref(), Some("script-src 'self'"), "{csp}");
        assert_eq!(directive("frame-ancestors").as_deref(), Some("frame-ancestors 'none'"), "{csp}");
        let connect = directive("connect-src").unwrap_or_default();
        assert!(connect.contains(&format!("ws://{}", s.http)) && connect.contains("'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        // The page needs none of what the policy forbids: its script and
        // styles are files of their own.
        let page = r.text().to_ascii_lowercase();
        assert!(page.contains("<script type=\"module\" src=\"/app.js\"></script>"), "{page}");
        assert_eq!(page.matches("<script").count(), 1, "one script, by src");
        assert!(!page.contains("<style") && !page.contains(" style=") && !page.contains(" onclick="));
        let js = s.http("GET", "/app.js", &[], b"");
        assert_eq!((js.status, js.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
        assert!(js.text().contains("new WebSocket("));
        let css = s.http("GET", "/app.css", &[], b"");
        assert_eq!((css.status, css.header("content-type")), (200, Some("text/css; charset=utf-8")));
        // nosniff on every response, errors included.
        let bad = natter_tests::http_raw(s.http, b"BAD\r\n\r\n");
        for r in [r, js, css, s.http("GET", "/healthz", &[], b""), s.http("GET", "/nope", &[], b""), bad] {
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "HTTP {} {:?}", r.status, r.headers);
            assert_eq!(r.header("x-frame-options"), Some("DENY"), "HTTP {}", r.status);
        }
    }

    fn an_unknown_path_is_404(bin) {
        let s = Server::start(bin, &[]);
        let r = s.http("GET", "/no/such/page", &[], b"");
        assert_eq!(r.status, 404, "{}", r.text());
    }

    fn echo_serves_a_websocket_echo_with_the_flag(bin) {
        let s = Server::start(bin, &["--echo"]);
        let mut ws = WsClient::connect_path(s.http, "/echo");
        let deadline = || Instant::now() + Duration::from_secs(5);
        ws.send(Message::Text("héllo, echo".into())).unwrap();
        match ws.next_incoming(deadline()) {
            Incoming::Message(Message::Text(t)) => assert_eq!(t, "héllo, echo"),
            other => panic!("echo of a text message: {other:?}"),
        }
        ws.send(Message::Binary(vec![0, 1, 2, 255])).unwrap();
        match ws.next_incoming(deadline()) {
            Incoming::Message(Message::Binary(b)) => assert_eq!(b, vec![0, 1, 2, 255]),
            other => panic!("echo of a binary message: {other:?}"),
        }
        // Without the flag there is no echo endpoint.
        let plain = Server::start(bin, &[]);
        assert!(
            WsClient::try_connect_path(plain.http, "/echo").is_err(),
            "/echo upgraded without --echo"
        );
    }

    fn garbage_on_both_ports_does_not_hurt_a_chatting_pair(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut a = s.guest("alice");
        let mut b = s.guest("bob");
        a.join(&room);
        b.join(&room);
        a.say(&room, "before");
        b.wait_for(|v| is_message_in(v, &room));

        let mut kept_open = Vec::new();
        for (i, addr) in [s.http, s.line].into_iter().enumerate() {
            let seed = i as u64 * 1000;
            kept_open.push(spray(addr, &noise(seed + 1, 4096)));
            kept_open.push(spray(addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Unfinished: "));
            kept_open.push(spray(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"));
            kept_open.push(spray(addr, b"\xff\xfe\x00\n\n\n/join \xff\n/msg\n/\n\x00\x00\r\n"));
            drop(spray(addr, &noise(seed + 2, 100_000)));
            drop(spray(addr, b"POST /api/login HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{"));
        }
        // A WebSocket that sends a frame with a reserved opcode and noise.
        let mut raw = RawWs::connect(s.http, "/ws");
        let _ = raw.send_frame(true, 0x3, &noise(7, 50));
        let _ = raw.stream().write_all(&noise(8, 2000));
        // A WebSocket whose text is not JSON, then a huge length header.
        let mut raw2 = RawWs::connect(s.http, "/ws");
        let _ = raw2.send_frame(true, OP_TEXT, &noise(9, 100));
        let _ = raw2.stream().write_all(&[0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

        a.say(&room, "after");
        let m = b.wait_for(|v| is_message_in(v, &room));
        assert_eq!(m["text"], "after", "{m}");
        b.say(&room, "and back");
        let m = a.wait_for(|v| is_message_in(v, &room) && v["text"] == "and back");
        assert_eq!(m["from"], b.user.as_str());
        assert_eq!(s.http("GET", "/healthz", &[], b"").status, 200);
        let mut late = s.guest("late");
        assert_eq!(ty(&late.request("ping", json!({}))), "pong");
        drop(kept_open);
    }

    fn http_errors_carry_their_code_and_status(bin) {
        let s = Server::start(bin, &[]);
        let r = s.http("GET", "/no/such/path", &[], b"");
        assert_eq!((r.status, r.error_code()), (404, "not_found".to_string()));
        let r = s.http("DELETE", "/healthz", &[], b"");
        assert_eq!((r.status, r.error_code()), (405, "bad_request".to_string()));
        let r = s.http("GET", "/ws", &[], b"");
        assert_eq!((r.status, r.error_code()), (426, "bad_request".to_string()));
        let r = s.http("POST", "/api/logout", &[], b"");
        assert_eq!((r.status, r.error_code()), (401, "invalid_token".to_string()));
        let r = s.register(&uniq("pw"), "short");
        assert_eq!((r.status, r.error_code()), (400, "bad_password".to_string()));
        let r = s.http("GET", "/ws?token=nonsense", &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ], b"");
        assert_eq!((r.status, r.error_code()), (401, "invalid_token".to_string()));
    }
}
