//! Presence: join, leave, online, offline (PROTOCOL.md "Membership and presence").

use std::time::Duration;

use natter_tests::{is_presence, json, ty, uniq, Server, Value};

const QUIET: Duration = Duration::from_millis(500);

fn is_presence_about(v: &Value, user: &str) -> bool {
    ty(v) == "presence" && v["user"] == user
}

fn is_online_or_offline_about(v: &Value, user: &str) -> bool {
    is_presence_about(v, user) && (v["state"] == "online" || v["state"] == "offline")
}

natter_tests::cases! {
    fn members_get_join_and_leave(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut alice = s.guest("alice");
        let mut bob = s.guest("bob");
        let mut outsider = s.guest("outsider");
        alice.join(&room);
        bob.join(&room);
        let p = alice.wait_for(|v| is_presence(v, &room, &bob.user, "join"));
        assert_eq!(p["type"], "presence", "{p}");
        bob.leave(&room);
        alice.wait_for(|v| is_presence(v, &room, &bob.user, "leave"));
        // Presence about a room goes to its members only.
        outsider.expect_none(QUIET, |v| ty(v) == "presence");
    }

    fn a_users_own_sessions_get_its_join_and_leave(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        a1.join(&room);
        a2.wait_for(|v| is_presence(v, &room, &alice.name, "join"));
        a1.leave(&room);
        a2.wait_for(|v| is_presence(v, &room, &alice.name, "leave"));
    }

    fn online_and_offline_follow_the_first_and_last_session(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut watcher = s.guest("watcher");
        watcher.join(&room);
        let (bob, mut b1) = s.user("bob");
        b1.join(&room);
        watcher.wait_for(|v| is_presence(v, &room, &bob.name, "join"));

        // A second session is not "online" news...
        let b2 = s.session(&bob);
        watcher.expect_none(QUIET, |v| is_online_or_offline_about(v, &bob.name));
        // ...and closing one of two is not "offline" news.
        b1.disconnect();
        watcher.expect_none(QUIET, |v| is_online_or_offline_about(v, &bob.name));
        // Closing the last one is.
        b2.disconnect();
        watcher.wait_for(|v| is_presence(v, &room, &bob.name, "offline"));
        // An offline registered member is still a member: no leave.
        watcher.expect_none(QUIET, |v| is_presence(v, &room, &bob.name, "leave"));
        // The first session back is "online".
        let _b3 = s.session(&bob);
        watcher.wait_for(|v| is_presence(v, &room, &bob.name, "online"));
    }

    fn a_user_gets_no_online_or_offline_about_itself(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut watcher = s.guest("watcher");
        watcher.join(&room);
        let (bob, mut b1) = s.user("bob");
        b1.join(&room);
        b1.disconnect();
        watcher.wait_for(|v| is_presence(v, &room, &bob.name, "offline"));
        // Bob's first session opens: the watcher hears "online", bob does not.
        let mut b2 = s.session(&bob);
        watcher.wait_for(|v| is_presence(v, &room, &bob.name, "online"));
        b2.expect_none(QUIET, |v| is_online_or_offline_about(v, &bob.name));
        // A second session of bob opens and closes: nothing about bob to bob.
        let b3 = s.session(&bob);
        b3.disconnect();
        b2.expect_none(QUIET, |v| is_online_or_offline_about(v, &bob.name));
        // Other members' online/offline still reach bob.
        let (carol, mut c) = s.user("carol");
        c.join(&room);
        c.disconnect();
        b2.wait_for(|v| is_presence(v, &room, &carol.name, "offline"));
    }

    fn a_guests_last_session_closing_sends_leave_only(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let mut watcher = s.guest("watcher");
        watcher.join(&room);
        let mut guest = s.guest("guest");
        let name = guest.user.clone();
        guest.join(&room);
        watcher.wait_for(|v| is_presence(v, &room, &name, "join"));
        guest.disconnect();
        let seen = watcher.recv_until(|v| is_presence(v, &room, &name, "leave"));
        assert!(
            !seen.iter().any(|v| is_online_or_offline_about(v, &name)),
            "a guest going away sends leave only: {seen:?}"
        );
        watcher.expect_none(QUIET, |v| is_presence_about(v, &name));
    }

    fn presence_reaches_every_session_of_every_member(bin) {
        let s = Server::start(bin, &[]);
        let room = uniq("room");
        let alice = s.account("alice");
        let mut a1 = s.session(&alice);
        let mut a2 = s.session(&alice);
        a1.join(&room);
        let mut bob = s.guest("bob");
        bob.join(&room);
        for ws in [&mut a1, &mut a2] {
            ws.wait_for(|v| is_presence(v, &room, &bob.user, "join"));
        }
        let p = bob.request("who", json!({"room": room}));
        assert_eq!(ty(&p), "ok", "{p}");
    }
}
