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

    fn presence_crosses_nodes_and_who_lists_every_node(bin) {
        let c = Cluster::start(bin, 2, &["--presence-grace", "200"]);
        let room = uniq("seen");
        let (ann, bob) = (c.nodes[0].account("ann"), c.nodes[0].account("bob"));
        // Bob joins through node 0 first, so node 0 has him as a member.
        let mut b0 = WsClient::user(&c.nodes[0], &bob);
        b0.join(&room);
        b0.disconnect();
        let mut a = WsClient::user(&c.nodes[0], &ann);
        a.join(&room);
        std::thread::sleep(std::time::Duration::from_millis(600));
        let _ = a.drain(std::time::Duration::from_millis(100));
        let mut b = WsClient::user(&c.nodes[1], &bob);
        a.wait_for(|v| is_presence(v, &room, &bob.name, "online"));
        let who = a.ok("who", json!({}));
        let names: Vec<&str> = who["users"].as_array().unwrap().iter().filter_map(|u| u["user"].as_str()).collect();
        assert!(names.contains(&bob.name.as_str()), "who on node 0 lists bob on node 1: {who}");
        let members = a.ok("who", json!({"room": room}));
        let bob_online = members["users"].as_array().unwrap().iter().any(|u| u["user"] == bob.name.as_str() && u["online"] == true);
        assert!(bob_online, "{members}");
        b.ok("who", json!({}));
        b.disconnect();
        a.wait_for(|v| is_presence(v, &room, &bob.name, "offline"));
    }

    fn a_guest_name_online_on_one_node_is_taken_on_another(bin) {
        let c = Cluster::start(bin, 2, &[]);
        let g = WsClient::guest(&c.nodes[0], "held");
        let name = g.user.clone();
        let mut ws = WsClient::connect(&c.nodes[1]);
        let e = ws.hello_guest(&name.to_uppercase());
        assert_eq!((ty(&e), e["code"].as_str()), ("error", Some("name_taken")), "{e}");
        let mut line = LineClient::connect(&c.nodes[1]);
        line.send_line(&name);
        let l = line.recv_line();
        assert!(l.starts_with("! name_taken"), "{l}");
        g.disconnect();
        let again = eventually(std::time::Duration::from_secs(5), "the name is free once its guest left", || {
            let mut ws = WsClient::connect(&c.nodes[1]);
            (ty(&ws.hello_guest(&name)) == "welcome").then_some(ws)
        });
        assert_eq!(again.user, name);
    }

    fn a_killed_node_s_users_go_offline_and_its_guests_leave_elsewhere(bin) {
        let mut c = Cluster::start(bin, 2, &["--node-timeout", "1000", "--presence-grace", "200"]);
        let room = uniq("dies");
        let (ann, bob) = (c.nodes[0].account("ann"), c.nodes[0].account("bob"));
        let mut b0 = WsClient::user(&c.nodes[0], &bob);
        b0.join(&room);
        b0.disconnect();
        // Past bob's presence grace on node 0: he is offline everywhere.
        std::thread::sleep(std::time::Duration::from_millis(600));
        let mut a = WsClient::user(&c.nodes[0], &ann);
        a.join(&room);
        let mut b = WsClient::user(&c.nodes[1], &bob);
        b.join(&room);
        a.wait_for(|v| is_presence(v, &room, &bob.name, "online"));
        let g = WsClient::guest(&c.nodes[1], "doomed");
        let guest = g.user.clone();
        eventually(std::time::Duration::from_secs(5), "node 0 lists the guest of node 1", || {
            let who = a.ok("who", json!({}));
            who["users"].as_array().unwrap().iter().any(|u| u["user"] == guest.as_str()).then_some(())
        });
        c.nodes[1].kill();
        // The timeout (1 s) and a beat, well within this.
        a.timeout = std::time::Duration::from_secs(5);
        a.wait_for(|v| is_presence(v, &room, &bob.name, "offline"));
        let who = a.ok("who", json!({}));
        let names: Vec<&str> = who["users"].as_array().unwrap().iter().filter_map(|u| u["user"].as_str()).collect();
        // (Other cases' clusters share the test Redis, so their users are
        // listed too: one Redis serves one cluster.)
        assert!(names.contains(&ann.name.as_str()), "{who}");
        assert!(!names.contains(&bob.name.as_str()) && !names.contains(&guest.as_str()), "{who}");
        let _ = (b, g);
    }
}
