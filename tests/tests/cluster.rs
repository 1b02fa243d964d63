//! Several nodes as one server (issue 12): three nodes of each runtime
//! binary on one PostgreSQL database and one Redis, with clients on every
//! node. Needs the feature `cluster-tests` and the services tests/run
//! starts (see tests/src/cluster.rs). The cases that stop PostgreSQL run
//! on a [`PrivatePostgres`] of their own.
#![cfg(feature = "cluster-tests")]

use std::collections::BTreeMap;
use std::time::Duration;

use natter_tests::*;

/// How long a store batch waits for an unreachable PostgreSQL: short, so
/// that a refused send is answered well within a client's patience.
const DB_TIMEOUT: &[&str] = &["--database-timeout", "2"];

natter_tests::cases! {
    fn a_node_whose_database_is_stopped_answers_503_until_it_is_back(bin) {
        let pg = PrivatePostgres::start();
        let node = Server::start_on_database(bin, &pg.new_database(), DB_TIMEOUT);
        let room = uniq("dbdown");
        let mut a = WsClient::guest(&node, "a");
        a.join(&room);
        assert_eq!(a.say(&room, "before"), 1);
        let health = || node.http("GET", "/healthz", &[], b"");
        assert_eq!(health().status, 200);
        pg.stop();
        // Nobody sends: the storage thread's idle probe finds it out.
        let down = eventually(Duration::from_secs(10), "healthz reports the database down", || {
            Some(health()).filter(|r| r.status == 503)
        });
        assert_eq!(down.text(), r#"{"status":"unavailable","database":"down"}"#);
        assert!(node.http("GET", "/metrics", &[], b"").text().contains("natter_database_up 0\n"));
        assert_eq!(a.error("send", json!({"room": room, "text": "refused"})), "unavailable");
        pg.restart();
        eventually(Duration::from_secs(15), "healthz reports ok again", || (health().status == 200).then_some(()));
        assert!(node.http("GET", "/metrics", &[], b"").text().contains("natter_database_up 1\n"));
        assert_eq!(a.say(&room, "after"), 2, "the refused send took no seq");
    }

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
}
