//! The line protocol over TCP, and line users chatting with WebSocket users
//! (PROTOCOL.md "Line protocol (TCP)").

use std::time::Duration;

use natter_tests::{is_message_in, is_presence, json, ty, uniq, LineClient, Server, WsClient, PASSWORD};

const QUIET: Duration = Duration::from_millis(500);
const LOBBY: &str = "lobby";

/// A WebSocket guest that has joined `room`.
fn ws_in(s: &Server, prefix: &str, room: &str) -> WsClient {
    let mut ws = s.guest(prefix);
    ws.join(room);
    ws
}

natter_tests::cases! {
    fn a_nickname_gets_welcome_and_lands_in_the_lobby(bin) {
        let s = Server::start(bin, &[]);
        let mut w = ws_in(&s, "web", LOBBY);
        let mut line = LineClient::connect(&s);
        let name = uniq("telnet");
        line.send_line(&name);
        line.expect_welcome(&name);
        w.wait_for(|v| is_presence(v, LOBBY, &name, "join"));
        let who = w.ok("who", json!({"room": LOBBY}));
        let entry = who["users"].as_array().unwrap().iter().find(|u| u["user"] == name.as_str()).cloned();
        assert_eq!(entry.map(|e| e["online"].clone()), Some(json!(true)), "{who}");
    }

    fn crlf_line_endings_are_accepted(bin) {
        let s = Server::start(bin, &[]);
        let mut w = ws_in(&s, "web", LOBBY);
        let mut line = LineClient::connect(&s);
        let name = uniq("crlf");
        line.send_raw(format!("{name}\r\n").as_bytes());
        line.expect_welcome(&name);
        line.send_raw(b"windows line\r\n");
        let m = w.wait_for(|v| is_message_in(v, LOBBY));
        assert_eq!(m["text"], "windows line", "{m}");
    }

    fn line_text_reaches_websocket_members_of_the_lobby(bin) {
        let s = Server::start(bin, &[]);
        let mut w = ws_in(&s, "web", LOBBY);
        let mut line = s.line_guest("telnet");
        line.send_line("hello from a terminal");
        let m = w.wait_for(|v| is_message_in(v, LOBBY));
        assert_eq!(m["from"], line.name.as_str(), "{m}");
        assert_eq!(m["text"], "hello from a terminal", "{m}");
        assert!(m["seq"].as_u64().is_some(), "{m}");
    }

    fn websocket_messages_reach_the_line_client(bin) {
        let s = Server::start(bin, &[]);
        let mut w = ws_in(&s, "web", LOBBY);
        let mut line = s.line_guest("telnet");
        w.say(LOBBY, "hello terminal");
        line.wait_exact(&format!("[{LOBBY}] {}: hello terminal", w.user));
    }

    fn the_line_sender_sees_its_own_message(bin) {
        let s = Server::start(bin, &[]);
        let mut line = s.line_guest("telnet");
        line.send_line("echo me");
        line.wait_exact(&format!("[{LOBBY}] {}: echo me", line.name));
    }

    fn join_makes_the_room_current_and_leave_ends_membership(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut w = ws_in(&s, "web", &room);
        let mut lobby_watcher = ws_in(&s, "lobbyist", LOBBY);
        let mut line = s.line_guest("telnet");
        line.send_line(&format!("/join {room}"));
        w.wait_for(|v| is_presence(v, &room, &line.name, "join"));
        line.send_line("in the new room");
        let m = w.wait_for(|v| is_message_in(v, &room));
        assert_eq!(m["text"], "in the new room", "{m}");
        assert_eq!(m["from"], line.name.as_str(), "{m}");
        lobby_watcher.expect_none(QUIET, |v| is_message_in(v, LOBBY));
        // Messages of the room reach the line client.
        w.say(&room, "welcome here");
        line.wait_exact(&format!("[{room}] {}: welcome here", w.user));
        line.send_line(&format!("/leave {room}"));
        w.wait_for(|v| is_presence(v, &room, &line.name, "leave"));
        line.send_line(&format!("/leave {room}"));
        let err = line.wait_line(|l| l.starts_with("! "));
        assert!(err.starts_with("! not_member"), "{err:?}");
    }

    fn presence_shows_as_joined_and_left_lines(bin) {
        let s = Server::start(bin, &[]);
        let mut line = s.line_guest("telnet");
        let mut w = ws_in(&s, "web", LOBBY);
        line.wait_exact(&format!("* {} joined {LOBBY}", w.user));
        w.leave(LOBBY);
        line.wait_exact(&format!("* {} left {LOBBY}", w.user));
    }

    fn msg_sends_a_private_message_and_private_messages_arrive_as_pm_lines(bin) {
        let s = Server::start(bin, &[]);
        let mut w = s.guest("web");
        let mut line = s.line_guest("telnet");
        line.send_line(&format!("/msg {} psst, over here", w.user));
        let p = w.wait_for(|v| ty(v) == "private");
        assert_eq!(p["from"], line.name.as_str(), "{p}");
        assert_eq!(p["to"], w.user.as_str(), "{p}");
        assert_eq!(p["text"], "psst, over here", "{p}");
        w.tell(&line.name, "got it");
        line.wait_exact(&format!("[pm] {}: got it", w.user));
    }

    fn msg_to_an_unknown_user_is_no_such_user(bin) {
        let s = Server::start(bin, &[]);
        let mut line = s.line_guest("telnet");
        line.send_line(&format!("/msg {} hello?", uniq("nobody")));
        let err = line.wait_line(|l| l.starts_with("! "));
        assert!(err.starts_with("! no_such_user "), "{err:?}");
        // Still usable.
        let listing = line.who();
        assert!(listing.contains(&format!("* {} (online)", line.name)), "{listing:?}");
    }

    fn who_lists_the_current_rooms_members(bin) {
        // No presence grace: bob is offline as soon as his session ends.
        let s = Server::start(bin, &["--presence-grace", "0"]);
        let (bob, mut b) = s.user("bob");
        b.join(LOBBY);
        b.disconnect();
        let w = ws_in(&s, "web", LOBBY);
        let mut line = s.line_guest("telnet");
        let lines = line.who();
        for want in [
            format!("* {} (online)", line.name),
            format!("* {} (online)", w.user),
            format!("* {}", bob.name),
        ] {
            assert!(lines.contains(&want), "{want:?} missing from /who: {lines:?}");
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    fn rooms_lists_rooms_with_member_counts(bin) {
        let s = Server::start(bin, &[]);
        let (r1, r2) = (uniq("one"), uniq("two"));
        let mut w = s.guest("web");
        w.join(&r1);
        w.join(&r2);
        let mut line = s.line_guest("telnet");
        line.send_line(&format!("/join {r2}"));
        w.wait_for(|v| is_presence(v, &r2, &line.name, "join"));
        let lines = line.rooms();
        for want in [format!("* {r1} 1"), format!("* {r2} 2"), format!("* {LOBBY} 1")] {
            assert!(lines.contains(&want), "{want:?} missing from /rooms: {lines:?}");
        }
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    fn history_lists_the_current_rooms_last_messages(bin) {
        let s = Server::start(bin, &[]);
        let mut w = ws_in(&s, "web", LOBBY);
        for i in 1..=22 {
            w.say(LOBBY, &format!("m{i}"));
        }
        let mut line = s.line_guest("telnet");
        let last2 = line.history(Some(2));
        assert_eq!(
            last2,
            vec![format!("[{LOBBY}] {}: m21", w.user), format!("[{LOBBY}] {}: m22", w.user)]
        );
        let default = line.history(None);
        let want: Vec<String> = (3..=22).map(|i| format!("[{LOBBY}] {}: m{i}", w.user)).collect();
        assert_eq!(default, want, "/history shows the last 20, oldest first");
    }

    fn quit_says_bye_and_closes(bin) {
        let s = Server::start(bin, &[]);
        let mut w = ws_in(&s, "web", LOBBY);
        let mut line = s.line_guest("telnet");
        let name = line.name.clone();
        line.send_line("/quit");
        let rest = line.expect_closed(Duration::from_secs(5));
        assert_eq!(rest.last().map(String::as_str), Some("* bye"), "{rest:?}");
        // A guest's session ended: it left the lobby.
        w.wait_for(|v| is_presence(v, LOBBY, &name, "leave"));
    }

    fn register_creates_an_account_and_logs_in(bin) {
        let s = Server::start(bin, &[]);
        let name = uniq("reg");
        let mut line = LineClient::connect(&s);
        line.send_line(&format!("/register {name} {PASSWORD}"));
        line.expect_welcome(&name);
        // It is a real account.
        let token = s.login(&name, PASSWORD);
        assert!(!token.is_empty());
        let r = s.register(&name, PASSWORD);
        assert_eq!(r.status, 409, "{}", r.text());
        // And it is in the lobby, as a registered user: still there after quitting.
        line.send_line("/quit");
        line.expect_closed(Duration::from_secs(5));
        let mut ws = WsClient::connect(&s);
        let w = ws.hello_token(&token);
        let rooms = w["rooms"].as_array().unwrap();
        assert!(rooms.iter().any(|r| r["room"] == LOBBY), "{w}");
    }

    fn login_delivers_undelivered_private_messages_and_acknowledges_them(bin) {
        let s = Server::start(bin, &[]);
        let (alice, mut a) = s.user("alice");
        let bob = s.account("bob");
        a.tell(&bob.name, "while you were out");
        a.tell(&bob.name, "and this too");
        let mut line = LineClient::login(&s, &bob);
        line.wait_exact(&format!("[pm] {}: while you were out", alice.name));
        line.wait_exact(&format!("[pm] {}: and this too", alice.name));
        line.send_line("/quit");
        line.expect_closed(Duration::from_secs(5));
        // The line session acknowledged them: not delivered again.
        let mut b = s.session(&bob);
        b.expect_none(QUIET, |v| ty(v) == "private");
    }

    fn login_puts_a_registered_user_in_its_other_rooms(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let (bob, mut b) = s.user("bob");
        b.join(&room);
        b.disconnect();
        let mut w = ws_in(&s, "web", &room);
        let mut line = LineClient::login(&s, &bob);
        w.say(&room, "for bob");
        line.wait_exact(&format!("[{room}] {}: for bob", w.user));
    }

    fn login_with_a_wrong_password_is_an_error_line(bin) {
        let s = Server::start(bin, &[]);
        let bob = s.account("bob");
        let mut line = LineClient::connect(&s);
        line.send_line(&format!("/login {} wrong-password", bob.name));
        let l = line.wait_line(|l| l.starts_with("! ") || l.starts_with("* welcome"));
        assert!(l.starts_with("! "), "a wrong password is an error line: {l:?}");
    }

    fn a_nickname_of_a_registered_user_is_name_taken(bin) {
        let s = Server::start(bin, &[]);
        let bob = s.account("bob");
        let mut line = LineClient::connect(&s);
        line.send_line(&bob.name);
        let l = line.wait_line(|l| l.starts_with("! ") || l.starts_with("* welcome"));
        assert!(l.starts_with("! name_taken "), "{l:?}");
    }

    fn no_guests_refuses_nicknames(bin) {
        let s = Server::start(bin, &["--no-guests"]);
        let mut line = LineClient::connect(&s);
        line.send_line(&uniq("guest"));
        let l = line.wait_line(|l| l.starts_with("! ") || l.starts_with("* welcome"));
        assert!(l.starts_with("! guests_disabled "), "{l:?}");
        // Accounts still work.
        let bob = s.account("bob");
        LineClient::login(&s, &bob);
    }

    fn control_characters_from_users_reach_terminals_visibly_and_websockets_exactly(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("tty");
        let mut w = ws_in(&s, "web", &room);
        let mut line = s.line_guest("term");
        line.send_line(&format!("/join {room}"));
        // Its own room's line: the lobby's, from the login, may come first.
        let joined = format!("* you are in {room} ");
        line.wait_line(|l| l.starts_with(&joined));
        let mut sender = s.line_guest("sender");
        sender.send_line(&format!("/join {room}"));
        sender.wait_line(|l| l.starts_with(&joined));
        // From a WebSocket: erase the line, go back to its start, print a lie.
        let attack = "\u{1b}[2K\rfake";
        w.say(&room, attack);
        let shown = format!("[{room}] {}: ^[[2K^Mfake", w.user);
        line.wait_exact(&shown);
        // From the line port: a bell, C1's NEL and CSI, and U+2028.
        sender.send_line("bell\u{7} nel\u{85} csi\u{9b}31m sep\u{2028}end");
        let m = w.wait_for(|v| is_message_in(v, &room) && v["from"] == sender.name.as_str());
        assert_eq!(m["text"], "bell\u{7} nel\u{85} csi\u{9b}31m sep\u{2028}end", "WebSocket gets the text as sent");
        let shown2 = format!("[{room}] {}: bell^G nel\\u0085 csi\\u009b31m sep\\u2028end", sender.name);
        line.wait_exact(&shown2);
        // A private message, and the history on the line port.
        w.ok("send", json!({"to": line.name, "text": "\u{1b}]0;pwned\u{7}"}));
        line.wait_exact(&format!("[pm] {}: ^[]0;pwned^G", w.user));
        let history = line.history(Some(10));
        assert!(history.contains(&shown) && history.contains(&shown2), "{history:?}");
        let raw = w.ok("history", json!({"room": room}));
        let texts: Vec<&str> = raw["messages"].as_array().unwrap().iter().filter_map(|m| m["text"].as_str()).collect();
        assert!(texts.contains(&attack), "stored as sent: {raw}");
    }

    fn the_line_port_prints_its_own_error_codes_and_goodbyes(bin) {
        let s = Server::start(bin, &["--handshake-timeout", "1"]);
        // A short password is `bad_password` over HTTP, `bad_request` here.
        let mut line = LineClient::connect(&s);
        line.send_line(&format!("/register {} short", uniq("pw")));
        assert_eq!(line.recv_line(), "! bad_request a password has 8 to 1024 characters");
        // No login in time: the last line names the error, then the socket closes.
        let lines = line.expect_closed(Duration::from_secs(10));
        assert_eq!(lines, vec!["! timeout no login in time, bye".to_string()]);
        let mut quitter = s.line_guest("bye");
        quitter.send_line("/quit");
        assert!(quitter.expect_closed(Duration::from_secs(10)).contains(&"* bye".to_string()));
    }
}
