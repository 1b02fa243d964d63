//! Several nodes as one server (issue 12): three nodes of each runtime
//! binary on one PostgreSQL database and one Redis, with clients on every
//! node. Needs the feature `cluster-tests` and the services tests/run
//! starts (see tests/src/cluster.rs). The cases that stop PostgreSQL run
//! on a [`PrivatePostgres`] of their own.
#![cfg(feature = "cluster-tests")]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use natter_tests::*;

/// How long a store batch waits for an unreachable PostgreSQL: short, so
/// that a refused send is answered well within a client's patience.
const DB_TIMEOUT: &[&str] = &["--database-timeout", "2"];

/// How many messages each chatting sender sends in the failure cases.
const EACH: usize = 30;

/// A sender in a failure case: what it got acknowledged, and how many
/// times it had to move to another node.
struct Sent {
    acked: Vec<u64>,
    moved: usize,
}

/// Sends `EACH` messages to `room`, one at a time with a short pause, from a
/// new guest session on `nodes[0]`. When that node dies under it, the
/// message in flight is given up (it may or may not have been stored: the
/// members' checks allow either) and it goes on from a new session on the
/// next of `nodes`. Counts each acknowledgement in `progress`.
fn chat(nodes: &[&Server], room: &str, tag: &str, progress: &AtomicUsize) -> Sent {
    let start = |node: &Server| {
        let mut c = WsClient::guest(node, tag);
        c.join(room);
        c
    };
    let mut at = 0;
    let mut client = start(nodes[at]);
    let mut sent = Sent { acked: Vec::new(), moved: 0 };
    for i in 0..EACH {
        let text = format!("{tag}-{i}");
        match catch_unwind(AssertUnwindSafe(|| client.say(room, &text))) {
            Ok(seq) => {
                sent.acked.push(seq);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                at += 1;
                assert!(at < nodes.len(), "{tag}: no node left to move to");
                sent.moved += 1;
                client = start(nodes[at]);
            }
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    sent
}

/// The seqs of `client`'s messages in `room`, up to and including `last`
/// (buffered ones first).
fn seqs_until(client: &mut WsClient, room: &str, last: u64) -> Vec<u64> {
    client.timeout = Duration::from_secs(30);
    let got = client.recv_until(|v| is_message_in(v, room) && v["seq"].as_u64() >= Some(last));
    got.iter().filter(|v| is_message_in(v, room)).map(seq).collect()
}

/// What every member must have seen: every stored message once and in
/// order (`1..=last`: a send that failed in flight may have been stored
/// without its `ok`), which includes every acknowledged one.
fn assert_complete(who: &str, seen: &[u64], acked: &[u64], last: u64) {
    assert_eq!(seen, (1..=last).collect::<Vec<_>>(), "{who}: every message once, in order");
    assert!(acked.iter().all(|s| (1..=last).contains(s)), "{who}: acknowledged {acked:?} past {last}");
}

/// Every sender's acknowledged seqs, checked to be distinct, sorted.
fn all_acked(sent: &[Sent]) -> Vec<u64> {
    let mut acked: Vec<u64> = sent.iter().flat_map(|s| s.acked.iter().copied()).collect();
    acked.sort_unstable();
    let n = acked.len();
    acked.dedup();
    assert_eq!(acked.len(), n, "no seq acknowledged twice");
    acked
}

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

    fn a_node_whose_redis_answers_slowly_stays_up_and_delivers(bin) {
        let mut c = Cluster::start(bin, 1, &[]);
        // Every answer from Redis, subscription confirmations included,
        // comes 100 ms late to node 1: slower than a subscriber's read slice.
        let slow = SlowLink::start(&c.redis, Duration::from_millis(100));
        let n = c.add_node(bin, &slow.url, &[]);
        let health = || c.nodes[n].http("GET", "/healthz", &[], b"").status;
        eventually(Duration::from_secs(10), "the node behind the slow link reports its bus up", || {
            (health() == 200).then_some(())
        });
        let mut a = WsClient::guest(&c.nodes[0], "a");
        let mut b = WsClient::guest(&c.nodes[n], "b");
        for r in 0..3 {
            // Each new room is a new subscription on node 1.
            let room = uniq(&format!("slow{r}"));
            a.join(&room);
            b.join(&room);
            let acked: Vec<u64> = (0..3).map(|i| a.say(&room, &format!("m{i}"))).collect();
            let got: Vec<u64> = b.collect(3, |v| is_message_in(v, &room)).iter().map(seq).collect();
            assert_eq!(got, acked, "room {r}: once each, in order");
            assert_eq!(health(), 200, "the link was never taken for lost");
        }
        let log = c.nodes[n].log_tail(200);
        assert!(!log.contains("Redis subscription lost"), "{log}");
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
        let mut g = WsClient::guest(&c.nodes[1], "doomed");
        g.join(&room);
        let guest = g.user.clone();
        a.wait_for(|v| is_presence(v, &room, &guest, "join"));
        eventually(std::time::Duration::from_secs(5), "node 0 lists the guest of node 1", || {
            let who = a.ok("who", json!({}));
            who["users"].as_array().unwrap().iter().any(|u| u["user"] == guest.as_str()).then_some(())
        });
        c.nodes[1].kill();
        // The timeout (1 s) and a beat, well within this.
        a.timeout = std::time::Duration::from_secs(5);
        let (mut offline, mut left) = (false, false);
        while !(offline && left) {
            let v = a.wait_for(|v| is_presence(v, &room, &bob.name, "offline") || is_presence(v, &room, &guest, "leave"));
            offline |= v["user"] == bob.name.as_str();
            left |= v["user"] == guest.as_str();
        }
        let who = a.ok("who", json!({}));
        let names: Vec<&str> = who["users"].as_array().unwrap().iter().filter_map(|u| u["user"].as_str()).collect();
        // (Other cases' clusters share the test Redis, so their users are
        // listed too: one Redis serves one cluster.)
        assert!(names.contains(&ann.name.as_str()), "{who}");
        assert!(!names.contains(&bob.name.as_str()) && !names.contains(&guest.as_str()), "{who}");
        let _ = (b, g);
    }

    fn postgres_stopped_under_a_cluster_refuses_sends_then_resumes_and_nothing_is_lost(bin) {
        let c = Cluster::start_on_private_postgres(bin, 2, DB_TIMEOUT);
        let room = uniq("pgout");
        let mut a = WsClient::guest(&c.nodes[0], "a");
        let mut b = WsClient::guest(&c.nodes[1], "b");
        a.join(&room);
        b.join(&room);
        let mut acked = Vec::new();
        for i in 0..5 {
            acked.push(a.say(&room, &format!("a-before-{i}")));
            acked.push(b.say(&room, &format!("b-before-{i}")));
        }
        let health = |n: usize| c.nodes[n].http("GET", "/healthz", &[], b"");
        c.postgres().stop();
        eventually(Duration::from_secs(10), "both nodes report the database down", || {
            (health(0).json()["database"] == "down" && health(1).json()["database"] == "down").then_some(())
        });
        for (who, client) in [("a", &mut a), ("b", &mut b)] {
            for i in 0..2 {
                let reply = client.request("send", json!({"room": room, "text": format!("{who}-during-{i}")}));
                assert_eq!((ty(&reply), reply["code"].as_str()), ("error", Some("unavailable")), "{reply}");
            }
        }
        c.postgres().restart();
        // No node is restarted: each finds the server back by itself.
        eventually(Duration::from_secs(20), "both nodes report ok again", || {
            (health(0).status == 200 && health(1).status == 200).then_some(())
        });
        for i in 0..5 {
            acked.push(a.say(&room, &format!("a-after-{i}")));
            acked.push(b.say(&room, &format!("b-after-{i}")));
        }
        acked.sort_unstable();
        assert_eq!(acked, (1..=20).collect::<Vec<_>>(), "gapless: the refused sends took no seq");
        for (who, client) in [("a", &mut a), ("b", &mut b)] {
            let seen = seqs_until(client, &room, 20);
            assert_complete(who, &seen, &acked, 20);
            client.expect_none(Duration::from_millis(300), |v| is_message_in(v, &room));
        }
    }

    fn a_node_killed_mid_chat_loses_nothing_its_clients_resume_elsewhere(bin) {
        let c = Cluster::start(bin, 3, &[]);
        let room = uniq("kill");
        let mut members: Vec<WsClient> = (0..3).map(|n| WsClient::guest(&c.nodes[n], &format!("m{n}"))).collect();
        for m in &mut members {
            m.join(&room);
        }
        let progress = AtomicUsize::new(0);
        let (n0, n1, n2) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
        let sent: Vec<Sent> = std::thread::scope(|s| {
            let progress = &progress;
            let room = room.as_str();
            let senders = [
                s.spawn(move || chat(&[n0], room, "s0", progress)),
                s.spawn(move || chat(&[n1], room, "s1", progress)),
                s.spawn(move || chat(&[n2, n0], room, "s2", progress)),
            ];
            eventually(Duration::from_secs(30), "a third of the messages acknowledged", || {
                (progress.load(Ordering::Relaxed) >= EACH).then_some(())
            });
            n2.signal("KILL");
            senders.into_iter().map(|h| h.join().expect("a sender")).collect()
        });
        assert_eq!((sent[0].moved, sent[1].moved, sent[2].moved), (0, 0, 1), "only node 2's sender moved");
        let acked = all_acked(&sent);
        // The member on node 2 keeps what it saw, and resumes on node 1 from there.
        let mut seen2: Vec<u64> = members[2].drain(Duration::from_millis(500)).iter()
            .filter(|v| is_message_in(v, &room)).map(seq).collect();
        let mut resumed = WsClient::guest(&c.nodes[1], "m2again");
        let since = seen2.last().copied().unwrap_or(0);
        let joined = resumed.ok("join", json!({"room": room, "since": since}));
        assert_eq!(joined["recovered"], true, "{joined}");
        members[2] = resumed;
        let last = members[0].say(&room, "end");
        seen2.extend(seqs_until(&mut members[2], &room, last));
        assert_complete("the member from node 2", &seen2, &acked, last);
        for (n, m) in members.iter_mut().enumerate().take(2) {
            let seen = seqs_until(m, &room, last);
            assert_complete(&format!("the member on node {n}"), &seen, &acked, last);
        }
        for n in 0..2 {
            assert_eq!(c.nodes[n].http("GET", "/healthz", &[], b"").status, 200, "node {n} serves on");
        }
    }

    fn redis_restarted_mid_chat_with_senders_on_every_node_loses_nothing(bin) {
        let c = Cluster::start_alone(bin, 2, &[]);
        let room = uniq("busout");
        let mut members: Vec<WsClient> = (0..2).map(|n| WsClient::guest(&c.nodes[n], &format!("m{n}"))).collect();
        for m in &mut members {
            m.join(&room);
        }
        let progress = AtomicUsize::new(0);
        let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
        let sent: Vec<Sent> = std::thread::scope(|s| {
            let progress = &progress;
            let room = room.as_str();
            let senders = [
                s.spawn(move || chat(&[n0], room, "s0", progress)),
                s.spawn(move || chat(&[n1], room, "s1", progress)),
            ];
            eventually(Duration::from_secs(30), "some messages acknowledged", || {
                (progress.load(Ordering::Relaxed) >= EACH / 2).then_some(())
            });
            c.stop_redis();
            std::thread::sleep(Duration::from_millis(500));
            c.start_redis();
            senders.into_iter().map(|h| h.join().expect("a sender")).collect()
        });
        assert!(sent.iter().all(|s| s.moved == 0), "every sender was served throughout");
        let acked = all_acked(&sent);
        assert_eq!(acked, (1..=2 * EACH as u64).collect::<Vec<_>>(), "every send stored, seqs gapless");
        let health = |n: usize| c.nodes[n].http("GET", "/healthz", &[], b"").status;
        eventually(Duration::from_secs(20), "both nodes report the bus up", || {
            (health(0) == 200 && health(1) == 200).then_some(())
        });
        let last = members[0].say(&room, "end");
        for (n, m) in members.iter_mut().enumerate() {
            let seen = seqs_until(m, &room, last);
            assert_complete(&format!("the member on node {n}"), &seen, &acked, last);
            m.expect_none(Duration::from_millis(300), |v| is_message_in(v, &room));
        }
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
