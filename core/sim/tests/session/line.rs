//! The line protocol, end to end through a shard.

use super::*;

// ---- the line protocol ---------------------------------------------------------

fn line_sim() -> Sim {
    Sim::with_users(Config::default(), &users())
}

#[test]
fn line_nickname_welcomes_into_the_lobby() {
    let mut sim = line_sim();
    let c = sim.line_client();
    sim.send_line(c, "carol");
    assert_eq!(sim.lines(c), ["* welcome carol", "* carol joined lobby", "* you are in lobby (1 members)"]);
    let d = sim.line_client();
    sim.send_raw(d, b"dave\r\n");
    assert_eq!(sim.lines(d), ["* welcome dave", "* dave joined lobby", "* you are in lobby (2 members)"]);
    assert_eq!(sim.lines(c), ["* dave joined lobby"]);
    sim.send_line(c, "hello everyone");
    assert_eq!(sim.lines(c), ["[lobby] carol: hello everyone"]);
    assert_eq!(sim.lines(d), ["[lobby] carol: hello everyone"]);
}

#[test]
fn line_first_line_forms_and_their_errors() {
    let mut sim = line_sim();
    let c = sim.line_client();
    sim.send_line(c, "two words");
    assert!(sim.lines(c)[0].starts_with("! bad_name "));
    sim.send_line(c, "/dance");
    assert!(sim.lines(c)[0].starts_with("! bad_request "));
    sim.send_line(c, "alice");
    assert!(sim.lines(c)[0].starts_with("! name_taken "), "a registered name");
    sim.send_line(c, "/login alice wrong-password");
    assert!(sim.lines(c)[0].starts_with("! invalid_credentials "));
    sim.send_line(c, "/login alice alice-password");
    assert_eq!(sim.lines(c), ["* welcome alice", "* alice joined lobby", "* you are in lobby (1 members)"]);
    assert_eq!(sim.store().members("lobby"), ["alice"], "a registered user's lobby membership is stored");

    let r = sim.line_client();
    sim.send_line(r, "/register carol correct-horse");
    assert_eq!(sim.lines(r)[0], "* welcome carol");
    assert!(sim.store().has_user("carol"));
    let r2 = sim.line_client();
    sim.send_line(r2, "/register carol correct-horse");
    assert!(sim.lines(r2)[0].starts_with("! name_taken "));
    sim.send_line(r2, "/register erin short");
    assert!(sim.lines(r2)[0].starts_with("! bad_request "));

    let q = sim.line_client();
    sim.send_line(q, "/quit");
    assert_eq!(sim.lines(q), ["* bye"]);
    assert_eq!(sim.ended(q), Some(Ended::ByServer));
}

#[test]
fn line_input_right_after_login_waits_for_the_lobby() {
    let mut sim = line_sim();
    sim.store_mut().set_latency(Duration::from_millis(20), Duration::ZERO);
    sim.store_mut().set_password_latency(Duration::from_millis(50), Duration::ZERO);
    let c = sim.line_client();
    sim.send_raw(c, b"/login alice alice-password\nfirst words\n");
    sim.run_until_idle();
    assert_eq!(
        sim.lines(c),
        ["* welcome alice", "* alice joined lobby", "* you are in lobby (1 members)", "[lobby] alice: first words"]
    );
}

#[test]
fn line_text_right_after_join_goes_to_the_new_room() {
    let mut sim = line_sim();
    let c = sim.line_client();
    sim.send_line(c, "/login alice alice-password");
    sim.run_until_idle();
    sim.take(c);
    sim.store_mut().set_latency(Duration::from_millis(20), Duration::ZERO);
    sim.send_raw(c, b"/join den\nin the den\n");
    sim.run_until_idle();
    assert_eq!(sim.lines(c), ["* alice joined den", "* you are in den (1 members)", "[den] alice: in the den"]);
    sim.send_raw(c, b"/leave den\nafter leaving\n");
    sim.run_until_idle();
    let lines = sim.lines(c);
    assert_eq!(lines[0], "* alice left den");
    assert!(lines[1].starts_with("! not_member "), "{lines:?}");
    assert_eq!(sim.store().room_seq("den"), 1);
}

#[test]
fn line_guests_disabled() {
    let config = Config { no_guests: true, ..Config::default() };
    let mut sim = Sim::with_users(config, &users());
    let c = sim.line_client();
    sim.send_line(c, "carol");
    assert!(sim.lines(c)[0].starts_with("! guests_disabled "));
    sim.send_line(c, "/login bob bob-password");
    assert_eq!(sim.lines(c)[0], "* welcome bob");
}

#[test]
fn line_commands() {
    let mut sim = line_sim();
    let c = sim.line_guest("carol");
    let d = sim.line_guest("dave");
    let ws = sim.guest("erin");
    sim.req(ws, json!({"type":"join","room":"lobby"}));
    sim.take(c);
    sim.take(d);
    sim.take(ws);

    sim.send_line(c, "/join den");
    assert_eq!(sim.lines(c), ["* carol joined den", "* you are in den (1 members)"]);
    sim.send_line(c, "in the den");
    assert_eq!(sim.lines(c), ["[den] carol: in the den"]);
    assert!(sim.lines(d).is_empty(), "dave is not in den");
    sim.send_line(c, "/who");
    assert_eq!(sim.lines(c), ["* carol (online)", "* end"]);
    sim.send_line(c, "/rooms");
    assert_eq!(sim.lines(c), ["* lobby 3", "* den 1", "* end"]);
    sim.send_line(c, "/history");
    assert_eq!(sim.lines(c), ["[den] carol: in the den", "* end"]);
    sim.send_line(c, "/msg dave psst");
    assert_eq!(sim.lines(d), ["[pm] carol: psst"]);
    sim.send_line(c, "/msg erin hello browser");
    let pm = sim.take_kind(ws, "private");
    assert_eq!(
        (&pm[0]["from"], &pm[0]["to"], &pm[0]["text"]),
        (&json!("carol"), &json!("erin"), &json!("hello browser"))
    );
    sim.send_line(c, "/msg nobody hi");
    assert!(sim.lines(c)[0].starts_with("! no_such_user "));
    sim.send_line(c, "/msg dave");
    assert!(sim.lines(c)[0].starts_with("! bad_request usage"));
    sim.send_line(c, "/leave den");
    assert_eq!(sim.lines(c), ["* carol left den"]);
    sim.send_line(c, "where am i");
    assert!(sim.lines(c)[0].starts_with("! not_member "), "no current room after leaving it");
    sim.send_line(c, "/leave den");
    assert!(sim.lines(c)[0].starts_with("! not_member "));
    sim.send_line(c, "/join lobby");
    sim.take(c);
    sim.send_line(c, "back");
    assert_eq!(sim.lines(c), ["[lobby] carol: back"]);
    assert_eq!(sim.lines(d), ["[lobby] carol: back"]);
    assert_eq!(sim.take_kind(ws, "message")[0]["text"], "back");
    sim.req(ws, json!({"type":"send","room":"lobby","text":"from the browser"}));
    assert_eq!(sim.lines(c), ["[lobby] erin: from the browser"]);
    sim.send_line(c, "/history 1");
    assert_eq!(sim.lines(c), ["[lobby] erin: from the browser", "* end"]);
    sim.send_line(c, "/join bad!room");
    assert!(sim.lines(c)[0].starts_with("! bad_name "));
    sim.send_line(c, "still lobby");
    assert_eq!(sim.lines(c), ["[lobby] carol: still lobby"], "a failed join keeps the current room");
    sim.send_line(c, "/help");
    let help = sim.lines(c);
    assert!(help[0].starts_with("* ") && help.last().unwrap() == "* end", "{help:?}");
    sim.send_line(c, "/dance");
    assert!(sim.lines(c)[0].starts_with("! unknown_type "));
    sim.take(d);
    sim.send_line(c, "/quit");
    assert_eq!(sim.lines(c), ["* bye"]);
    assert_eq!(sim.ended(c), Some(Ended::ByServer));
    assert_eq!(sim.lines(d), ["* carol left lobby"], "a guest's membership ends with its session");
}

#[test]
fn line_who_marks_who_is_online() {
    let mut sim = line_sim();
    let a = sim.login("alice");
    sim.req(a, json!({"type":"join","room":"lobby"}));
    sim.disconnect(a);
    // A registered user is online until the presence grace is over.
    sim.advance(std::time::Duration::from_secs(2));
    let c = sim.line_guest("carol");
    sim.send_line(c, "/who");
    assert_eq!(sim.lines(c), ["* alice", "* carol (online)", "* end"]);
}

#[test]
fn line_too_long_is_dropped_at_max_line_plus_one() {
    let config = Config { max_line: 20, ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.line_guest("carol");
    let at_limit = "a".repeat(20);
    sim.send_line(c, &at_limit);
    assert_eq!(sim.lines(c), [format!("[lobby] carol: {at_limit}")]);
    sim.send_raw(c, format!("{at_limit}\r\n").as_bytes());
    assert_eq!(sim.lines(c).len(), 1, "\\r\\n does not count");
    sim.send_line(c, &"b".repeat(21));
    let lines = sim.lines(c);
    assert_eq!(lines.len(), 1);
    assert!(lines[0].starts_with("! too_long "), "{lines:?}");
    // Even arriving in pieces, a long line is reported once and skipped.
    sim.send_raw(c, "c".repeat(30).as_bytes());
    sim.send_raw(c, "c".repeat(30).as_bytes());
    sim.send_raw(c, b"c\nafter\n");
    let lines = sim.lines(c);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("! too_long "));
    assert_eq!(lines[1], "[lobby] carol: after");
    assert_eq!(sim.store().room_seq("lobby"), 3);
}

#[test]
fn line_rate_limit() {
    let config = Config { rate: 1, burst: 2, ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.line_guest("carol");
    sim.send_raw(c, b"one\ntwo\nthree\n");
    sim.run_until_idle();
    let mut lines = sim.lines(c);
    // The error is immediate; the messages wait for storage.
    assert!(lines[0].starts_with("! rate_limited "), "{lines:?}");
    lines.remove(0);
    assert_eq!(lines, ["[lobby] carol: one", "[lobby] carol: two"]);
    sim.advance(secs(1));
    sim.send_line(c, "four");
    assert_eq!(sim.lines(c), ["[lobby] carol: four"]);
}

#[test]
fn line_idle_says_bye() {
    let config = Config { line_idle: secs(60), ..Config::default() };
    let mut sim = Sim::new(config);
    let c = sim.line_guest("carol");
    sim.advance(secs(30));
    sim.send_line(c, "still here");
    sim.advance(secs(60) - MS);
    assert!(sim.is_open(c));
    sim.take(c);
    sim.advance(MS);
    assert_eq!(sim.lines(c), ["* idle, bye"]);
    assert_eq!(sim.ended(c), Some(Ended::ByServer));
}

#[test]
fn line_sessions_get_undelivered_private_messages_and_ack_them() {
    let mut sim = line_sim();
    let a = sim.login("alice");
    assert_eq!(sim.req(a, json!({"type":"send","to":"bob","text":"one"}))["seq"], 1);
    assert_eq!(sim.req(a, json!({"type":"send","to":"bob","text":"two"}))["seq"], 2);
    let b = sim.line_client();
    sim.send_line(b, "/login bob bob-password");
    sim.run_until_idle();
    let lines = sim.lines(b);
    assert_eq!(lines[0], "* welcome bob");
    let pms: Vec<&String> = lines.iter().filter(|l| l.starts_with("[pm]")).collect();
    assert_eq!(pms, ["[pm] alice: one", "[pm] alice: two"]);
    assert_eq!(sim.store().ack("bob", "alice"), 2, "a line session acknowledges what it was sent");
    sim.req(a, json!({"type":"send","to":"bob","text":"three"}));
    assert_eq!(sim.lines(b), ["[pm] alice: three"]);
    assert_eq!(sim.store().ack("bob", "alice"), 3);
    sim.disconnect(b);
    let b2 = sim.login("bob");
    assert!(sim.take_kind(b2, "private").is_empty(), "nothing is delivered twice");
}

#[test]
fn a_line_session_that_stops_reading_acknowledges_nothing_it_did_not_write() {
    let mut sim = line_sim();
    let a = sim.login("alice");
    let b = sim.line_client();
    sim.send_line(b, "/login bob bob-password");
    sim.run_until_idle();
    sim.lines(b);
    // Bob's client stops reading: the message is queued, never written.
    sim.set_write_mode(b, WriteMode::Stalled);
    assert_eq!(sim.req(a, json!({"type":"send","to":"bob","text":"unread"}))["seq"], 1);
    sim.run_until_idle();
    assert_eq!(sim.store().ack("bob", "alice"), 0, "queued is not received");
    sim.disconnect(b);
    // So the next session gets it.
    let b2 = sim.login("bob");
    let again = sim.take_kind(b2, "private");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["text"], "unread");
}

#[test]
fn peer_close_of_a_line_session_ends_it() {
    let mut sim = line_sim();
    let c = sim.line_guest("carol");
    let d = sim.line_guest("dave");
    sim.take(d);
    sim.disconnect(c);
    assert_eq!(sim.lines(d), ["* carol left lobby"]);
    assert_eq!(sim.connections(), 1);
}

#[test]
fn a_slow_consumer_close_keeps_the_101_it_follows() {
    // Found by fuzz/fuzz_targets/core.rs: the slow-consumer close dropped
    // everything queued, the unsent `101` too, so a client that had not read
    // it yet read a close frame where it expected an HTTP response.
    let mut sim = Sim::new(Config { max_queue: 200, ..Config::default() });
    sim.set_default_write_mode(WriteMode::Stalled);
    let c = sim.ws_upgrade("/ws");
    for _ in 0..3 {
        sim.send_frame(c, OpCode::Control(Control::Ping), true, &[b'p'; 50]);
    }
    sim.set_write_mode(c, WriteMode::Full);
    let events = sim.take(c);
    assert!(matches!(&events[0], Event::Http(r) if r.status == 101), "{events:?}");
    assert_eq!(events.last(), Some(&Event::Close { code: Some(1008), reason: "slow consumer".into() }));
}
