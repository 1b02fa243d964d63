//! Several nodes as one server (issue 12): three nodes of each runtime
//! binary on one PostgreSQL database and one Redis, with clients on every
//! node. Needs the feature `cluster-tests` and the services tests/run
//! starts (see tests/src/cluster.rs).
#![cfg(feature = "cluster-tests")]

use std::collections::BTreeMap;

use natter_tests::*;

natter_tests::cases! {
    fn a_room_message_reaches_every_member_on_every_node_once_and_in_order(bin) {
        let c = Cluster::start(bin, 3, &[]);
        let room = uniq("across");
        let account = c.nodes[1].account("reg");
        let mut members = vec![
            WsClient::guest(&c.nodes[0], "g0"),
            WsClient::user(&c.nodes[1], &account),
            WsClient::guest(&c.nodes[2], "g2"),
        ];
        for m in &mut members {
            m.join(&room);
        }
        let mut line = LineClient::guest(&c.nodes[2], "l2");
        line.send_line(&format!("/join {room}"));
        line.wait_line(|l| l.starts_with(&format!("* you are in {room}")));
        const EACH: usize = 15;
        let mut acked = Vec::new();
        for i in 0..EACH {
            for (n, m) in members.iter_mut().enumerate() {
                acked.push(m.say(&room, &format!("n{n}-{i}")));
            }
        }
        acked.sort_unstable();
        let total = EACH * members.len();
        assert_eq!(acked, (1..=total as u64).collect::<Vec<_>>(), "seqs are gapless across nodes");
        for (n, m) in members.iter_mut().enumerate() {
            let got: Vec<u64> = m.collect(total, |v| is_message_in(v, &room)).iter().map(seq).collect();
            assert_eq!(got, (1..=total as u64).collect::<Vec<_>>(), "member on node {n}: once each, in order");
            m.expect_none(std::time::Duration::from_millis(300), |v| is_message_in(v, &room));
        }
        let lines: Vec<String> = line.recv_until_line(|l| l.ends_with(&format!("n2-{}", EACH - 1)));
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for l in lines.iter().filter(|l| l.starts_with(&format!("[{room}]"))) {
            *seen.entry(l.clone()).or_default() += 1;
        }
        assert_eq!(seen.len(), total, "the line client on node 2 read every message: {lines:?}");
        assert!(seen.values().all(|&n| n == 1), "no line twice");
    }

    fn a_private_message_reaches_its_user_on_another_node(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let (ann, bob) = (c.nodes[0].account("ann"), c.nodes[1].account("bob"));
        let mut a = WsClient::user(&c.nodes[0], &ann);
        let mut b = WsClient::user(&c.nodes[1], &bob);
        for i in 1..=10u64 {
            assert_eq!(a.tell(&bob.name, &format!("p{i}")), i);
        }
        let got: Vec<u64> = b.collect(10, |v| is_private_from(v, &ann.name)).iter().map(seq).collect();
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
    }

    fn without_redis_a_node_says_so_and_catches_up_once_it_is_back(bin) {
        let c = Cluster::start_alone(bin, 2, &[]);
        let room = uniq("outage");
        let mut a = WsClient::guest(&c.nodes[0], "a");
        let mut b = WsClient::guest(&c.nodes[1], "b");
        a.join(&room);
        b.join(&room);
        assert_eq!(a.say(&room, "before"), 1);
        assert_eq!(seq(&b.wait_for(|v| is_message_in(v, &room))), 1);
        let health = |n: usize| c.nodes[n].http("GET", "/healthz", &[], b"").status;
        assert_eq!((health(0), health(1)), (200, 200));
        c.stop_redis();
        eventually(std::time::Duration::from_secs(15), "both nodes report the bus down", || {
            (health(0) == 503 && health(1) == 503).then_some(())
        });
        // Each node goes on serving its own sessions, and storing.
        let during: Vec<u64> = (0..3).map(|i| a.say(&room, &format!("during {i}"))).collect();
        assert_eq!(during, [2, 3, 4]);
        c.start_redis();
        eventually(std::time::Duration::from_secs(20), "both nodes report the bus up", || {
            (health(0) == 200 && health(1) == 200).then_some(())
        });
        let got: Vec<u64> = b.collect(3, |v| is_message_in(v, &room)).iter().map(seq).collect();
        assert_eq!(got, [2, 3, 4], "what was stored meanwhile arrives once, in order");
        assert_eq!(a.say(&room, "after"), 5);
        assert_eq!(seq(&b.wait_for(|v| is_message_in(v, &room))), 5);
        b.expect_none(std::time::Duration::from_millis(300), |v| is_message_in(v, &room));
    }

    fn a_user_registered_on_one_node_logs_in_on_another_in_any_case_as_itself(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let name = uniq("Nina");
        assert_eq!(c.nodes[0].register(&name, PASSWORD).status, 201);
        // Node 1 started before the account existed, and is asked in lower case.
        let lower = name.to_lowercase();
        let res = c.nodes[1].try_login(&lower, PASSWORD);
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json()["user"], name.as_str(), "the registered spelling");
        let token = res.json()["token"].as_str().unwrap().to_string();
        let mut ws = WsClient::connect(&c.nodes[1]);
        let welcome = ws.hello_token(&token);
        assert_eq!(welcome["user"], name.as_str());
        let mut line = LineClient::connect(&c.nodes[1]);
        line.send_line(&format!("/login {} {PASSWORD}", name.to_uppercase()));
        line.wait_exact(&format!("* welcome {name}"));
        let wrong = c.nodes[1].try_login(&lower, "not-the-password");
        assert_eq!(wrong.status, 401, "{}", wrong.text());
        let nobody = c.nodes[1].try_login(&uniq("nobody"), PASSWORD);
        assert_eq!(nobody.status, 401, "{}", nobody.text());
    }

    fn a_send_retried_on_another_node_gets_its_first_seq(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let room = uniq("retry");
        let account = c.nodes[0].account("ret");
        let mut first = WsClient::user(&c.nodes[0], &account);
        first.join(&room);
        let ok = first.ok("send", json!({"room": room, "text": "once", "id": "c-1"}));
        first.disconnect();
        let mut again = WsClient::user(&c.nodes[1], &account);
        let retried = again.ok("send", json!({"room": room, "text": "once", "id": "c-1"}));
        assert_eq!(seq(&retried), seq(&ok), "the retry is the same message");
        let history = again.ok("history", json!({"room": room}));
        assert_eq!(history["messages"].as_array().map(Vec::len), Some(1), "{history}");
    }

    fn a_join_and_a_leave_on_one_node_are_presence_on_the_others_on_both_transports(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let room = uniq("pres");
        let mut ws = WsClient::guest(&c.nodes[0], "w0");
        ws.join(&room);
        let mut line = LineClient::guest(&c.nodes[0], "l0");
        line.send_line(&format!("/join {room}"));
        line.wait_line(|l| l.starts_with(&format!("* you are in {room}")));
        let account = c.nodes[1].account("joiner");
        let mut joiner = WsClient::user(&c.nodes[1], &account);
        joiner.join(&room);
        ws.wait_for(|v| is_presence(v, &room, &account.name, "join"));
        line.wait_exact(&format!("* {} joined {room}", account.name));
        joiner.leave(&room);
        ws.wait_for(|v| is_presence(v, &room, &account.name, "leave"));
        line.wait_exact(&format!("* {} left {room}", account.name));
        // A guest's memberships end with its session, on every node.
        let guest = uniq("g1");
        let mut g = WsClient::connect(&c.nodes[1]);
        assert_eq!(ty(&g.hello_guest(&guest)), "welcome");
        g.join(&room);
        ws.wait_for(|v| is_presence(v, &room, &guest, "join"));
        g.disconnect();
        ws.wait_for(|v| is_presence(v, &room, &guest, "leave"));
        line.wait_exact(&format!("* {guest} left {room}"));
    }

    fn typing_reaches_a_room_and_a_user_on_another_node(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let room = uniq("typ");
        let (ann, bob) = (c.nodes[0].account("ann"), c.nodes[1].account("bob"));
        let mut a = WsClient::user(&c.nodes[0], &ann);
        let mut b = WsClient::user(&c.nodes[1], &bob);
        a.join(&room);
        b.join(&room);
        // A subscription takes effect a moment after the `ok` that made
        // it, and `typing` is a hint nothing repairs: the typist goes on
        // typing until it shows.
        let shows = |from: &mut WsClient, to: &mut WsClient, typing: Value, pred: &dyn Fn(&Value) -> bool| {
            eventually(std::time::Duration::from_secs(10), "typing on the other node", || {
                from.ok("typing", typing.clone());
                let seen = to.drain(std::time::Duration::from_millis(200));
                seen.iter().any(pred).then_some(())
            })
        };
        let (a_name, b_name, r) = (ann.name.clone(), bob.name.clone(), room.clone());
        let in_room = move |v: &Value| ty(v) == "typing" && v["room"] == r.as_str() && v["user"] == a_name.as_str();
        shows(&mut a, &mut b, json!({"room": room}), &in_room);
        let a_name = ann.name.clone();
        let to_ann = move |v: &Value| ty(v) == "typing" && v["user"] == b_name.as_str() && v["to"] == a_name.as_str();
        shows(&mut b, &mut a, json!({"to": ann.name}), &to_ann);
    }

    fn a_logout_on_one_node_closes_the_tokens_session_on_another_with_4001(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let account = c.nodes[0].account("out");
        let other_token = c.nodes[1].login(&account.name, PASSWORD);
        let mut there = WsClient::user(&c.nodes[1], &account);
        let mut other = WsClient::connect(&c.nodes[1]);
        assert_eq!(ty(&other.hello_token(&other_token)), "welcome");
        let r = c.nodes[0].logout(&account.token);
        assert_eq!(r.status, 204, "logout: {}", r.text());
        // At once on the bus; or, if node 1's subscription was not in
        // effect yet, at its periodic check (every 3 s by default).
        assert_eq!(there.close_code_within(std::time::Duration::from_secs(10)), Some(4001));
        assert_eq!(ty(&other.request("ping", json!({}))), "pong", "another token's session goes on");
    }

    fn a_user_joining_on_one_node_gets_the_rooms_messages_on_its_session_on_another(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let room = uniq("follow");
        let account = c.nodes[0].account("both");
        let mut here = WsClient::user(&c.nodes[0], &account);
        let mut there = WsClient::user(&c.nodes[1], &account);
        let mut speaker = WsClient::guest(&c.nodes[1], "spk");
        speaker.join(&room);
        there.join(&room);
        // On the bus; or, when node 0's subscription to the user was not in
        // effect yet (it takes a moment after the welcome), at its periodic
        // check (every 3 s by default) a little later.
        wait_within(&mut here, 10, |v| is_presence(v, &room, &account.name, "join"));
        let n = speaker.say(&room, "for every session");
        let got = wait_within(&mut here, 10, |v| is_message_in(v, &room));
        assert_eq!((seq(&got), got["text"].as_str()), (n, Some("for every session")));
    }
}

/// The first message matching `pred` within `secs` seconds.
fn wait_within(c: &mut WsClient, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(std::time::Duration::from_secs(secs), "a matching message", || {
        c.try_recv_json(std::time::Duration::from_millis(100)).filter(|v| pred(v))
    })
}
