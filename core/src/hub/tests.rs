//! The hub alone, fed the mail of several shards and storage completions
//! by hand: where its answers go, and what it asks of storage. Whole-system
//! behaviour (clients on the wire) is in the `natter-sim` crate's tests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use crate::link::{Auth, Tag, ToHubInner, ToShardInner};
use crate::render::{ErrorCode, Reply};
use crate::store::{StoreDone, StoreError, StoreOp, StoreRequest, StoreValue};
use crate::transport::request::{ClientRequest, RequestKind, Target};
use crate::{Config, Hub, HubInput, HubOutput, Now, SessionId, ToHub, ToShard};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

/// A hub and what it said, in order.
struct Bench {
    hub: Hub,
    now: Now,
    mail: Vec<(u16, ToShardInner)>,
    store: Vec<StoreRequest>,
    bus: Vec<crate::bus::BusCommand>,
    serial: u64,
}

impl Bench {
    fn new() -> Bench {
        // The tests' only clock read: any instant will do as the start.
        #[allow(clippy::disallowed_methods)]
        let now = Now { instant: Instant::now(), unix_ms: 1_700_000_000_000 };
        let hub = Hub::new(Config::default(), Default::default(), Vec::new(), Vec::new(), now);
        Bench { hub, now, mail: Vec::new(), store: Vec::new(), bus: Vec::new(), serial: 0 }
    }

    /// A new session on `shard`.
    fn session(&mut self, shard: u16) -> SessionId {
        self.serial += 1;
        SessionId::new(shard, self.serial as usize, self.serial)
    }

    fn send(&mut self, msg: ToHubInner) {
        self.hub.handle_input(self.now, HubInput::FromShard(ToHub(msg)));
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(output) = self.hub.poll_output() {
            match output {
                HubOutput::ToShard(shard, batch) => self.mail.extend(batch.into_iter().map(|ToShard(m)| (shard, m))),
                HubOutput::Store(requests) => self.store.extend(requests),
                HubOutput::Bus(command) => self.bus.push(command),
            }
        }
    }

    /// Answers every storage request asked so far with `answer`.
    fn complete(&mut self, answer: impl Fn(&StoreOp) -> Result<StoreValue, StoreError>) {
        for request in std::mem::take(&mut self.store) {
            let done = StoreDone { id: request.id, result: answer(&request.op) };
            self.hub.handle_input(self.now, HubInput::Store(done));
            self.collect();
        }
    }

    fn take_mail(&mut self) -> Vec<(u16, ToShardInner)> {
        std::mem::take(&mut self.mail)
    }

    fn request(&mut self, sid: SessionId, kind: RequestKind, request: ClientRequest) {
        let tag = Tag::Ws { reference: Some(format!("{kind:?}")), kind };
        self.send(ToHubInner::Request { sid, tag, request });
    }

    /// A welcomed guest session on `shard`.
    fn guest(&mut self, shard: u16, name: &str) -> SessionId {
        let sid = self.session(shard);
        let tag = Tag::Ws { reference: None, kind: RequestKind::Hello };
        self.send(ToHubInner::Hello { sid, tag, auth: Auth::Guest(name.into()), line: false, peer: PEER });
        // In a cluster the name is claimed first.
        self.complete(|op| match op {
            StoreOp::ClaimGuest { .. } => Ok(StoreValue::Claimed(true)),
            _ => Ok(StoreValue::Done),
        });
        sid
    }

    /// A join, and what storage is asked for it answered: a room that has
    /// no message yet (in a cluster its `seq` is read first).
    fn join(&mut self, sid: SessionId, room: &str) {
        self.request(sid, RequestKind::Join, ClientRequest::Join { room: room.into(), since: None });
        while !self.store.is_empty() {
            self.complete(|op| match op {
                StoreOp::LastSeqs { rooms, .. } => Ok(StoreValue::LastSeqs {
                    rooms: rooms.iter().map(|r| (r.clone(), 0)).collect(),
                    conversations: Vec::new(),
                }),
                _ => Ok(StoreValue::Done),
            });
        }
    }
}

fn reply_of(mail: &[(u16, ToShardInner)], sid: SessionId) -> Vec<(u16, Result<Reply, ErrorCode>)> {
    mail.iter()
        .filter_map(|(shard, m)| match m {
            ToShardInner::Reply { sid: s, result, .. } if *s == sid => {
                Some((*shard, result.clone().map_err(|f| f.code)))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_welcome_goes_to_the_shard_of_its_session() {
    let mut b = Bench::new();
    let gus = b.guest(3, "gus");
    let mail = b.take_mail();
    assert!(mail.iter().all(|(shard, _)| *shard == 3), "{mail:?}");
    let replies = reply_of(&mail, gus);
    assert!(matches!(&replies[..], [(3, Ok(Reply::Welcome { user, guest: true, .. }))] if user == "gus"), "{mail:?}");
    assert!(mail.iter().any(|(_, m)| matches!(m, ToShardInner::Welcomed { sid, .. } if *sid == gus)));
}

#[test]
fn a_request_before_hello_is_refused_without_asking_storage() {
    let mut b = Bench::new();
    let sid = b.session(1);
    b.request(sid, RequestKind::Join, ClientRequest::Join { room: "r".into(), since: None });
    assert!(b.store.is_empty(), "{:?}", b.store);
    assert_eq!(reply_of(&b.take_mail(), sid), [(1, Err(ErrorCode::Unauthenticated))]);
}

#[test]
fn a_room_message_reaches_each_member_once_in_one_delivery_per_shard() {
    let mut b = Bench::new();
    let members = [b.guest(0, "ann"), b.guest(1, "bob"), b.guest(1, "cyd"), b.guest(2, "dan")];
    let outsider = b.guest(2, "eve");
    for sid in members {
        b.join(sid, "r");
    }
    b.take_mail();
    let text = "hello".to_string();
    b.request(members[0], RequestKind::Send, ClientRequest::Send { to: Target::Room("r".into()), text, id: None });
    assert!(matches!(&b.store[..], [StoreRequest { op: StoreOp::Append { .. }, .. }]), "{:?}", b.store);
    b.complete(|_| Ok(StoreValue::Appended { seq: 1, ts: 1, duplicate: false }));
    let mail = b.take_mail();
    assert!(matches!(&reply_of(&mail, members[0])[..], [(0, Ok(Reply::Sent { seq: 1 }))]), "{mail:?}");
    let mut deliveries: Vec<(u16, Vec<SessionId>)> = mail
        .into_iter()
        .filter_map(|(shard, m)| match m {
            ToShardInner::Deliver { sessions, .. } => Some((shard, sessions.to_vec())),
            _ => None,
        })
        .collect();
    deliveries.sort_by_key(|(shard, _)| *shard);
    let shards: Vec<u16> = deliveries.iter().map(|(s, _)| *s).collect();
    assert_eq!(shards.iter().filter(|&&s| s == 1).count(), 1, "one delivery per shard: {deliveries:?}");
    let reached: Vec<SessionId> = deliveries.into_iter().flat_map(|(_, s)| s).collect();
    for sid in &members[1..] {
        assert_eq!(reached.iter().filter(|s| *s == sid).count(), 1, "{sid:?} in {reached:?}");
    }
    assert!(!reached.contains(&outsider));
    assert!(b.bus.is_empty(), "a single node has no bus: {:?}", b.bus);
    b.hub.handle_input(b.now, HubInput::Bus(crate::bus::BusEvent::Up));
    b.collect();
    assert!(b.bus.is_empty() && b.store.is_empty(), "and ignores one: {:?} {:?}", b.bus, b.store);
}

#[test]
fn storage_past_its_deadline_is_unavailable_once_and_a_late_answer_is_dropped() {
    let mut b = Bench::new();
    let ann = b.guest(0, "ann");
    b.join(ann, "r");
    b.take_mail();
    let history = ClientRequest::History { of: Target::Room("r".into()), before: None, limit: None };
    b.request(ann, RequestKind::History, history);
    assert_eq!(b.store.len(), 1, "{:?}", b.store);
    let deadline = b.hub.poll_timeout().expect("a request in flight has a deadline");
    b.now = b.now.after(deadline - b.now.instant);
    b.hub.handle_input(b.now, HubInput::Timeout);
    b.collect();
    assert_eq!(reply_of(&b.take_mail(), ann), [(0, Err(ErrorCode::Unavailable))]);
    b.complete(|_| Ok(StoreValue::Messages { messages: Vec::new(), oldest: None }));
    assert!(reply_of(&b.take_mail(), ann).is_empty(), "the client heard already");
    assert_eq!(b.hub.pending_requests(), 0);
}

#[test]
fn a_closed_session_leaves_its_rooms_and_the_others_hear_it() {
    let mut b = Bench::new();
    let (ann, bob) = (b.guest(0, "ann"), b.guest(1, "bob"));
    b.join(ann, "r");
    b.join(bob, "r");
    b.take_mail();
    b.send(ToHubInner::Closed { sid: ann });
    b.complete(|_| Ok(StoreValue::Done));
    let mail = b.take_mail();
    let told_bob = mail.iter().any(|(shard, m)| {
        *shard == 1 && matches!(m, ToShardInner::Deliver { sessions, event } if sessions[..] == [bob] && event.ws.windows(5).any(|w| w == b"leave"))
    });
    assert!(told_bob, "{mail:?}");
    assert!(mail.iter().all(|(shard, _)| *shard != 0), "nothing for a closed session: {mail:?}");
}

mod cluster {
    use super::*;
    use crate::bus::{BusCommand, BusEvent, BusMessage};
    use crate::store::{SeqRange, StoredMessage};

    fn cluster_bench() -> Bench {
        let mut b = Bench::new();
        let config = Config { cluster: true, ..Config::default() };
        b.hub = Hub::new(config, Default::default(), Vec::new(), Vec::new(), b.now);
        b
    }

    fn stored(seq: u64) -> StoredMessage {
        StoredMessage {
            seq,
            from: "ann".into(),
            to: None,
            sender: "ann".into(),
            text: seq.to_string(),
            client_id: None,
            ts: 0,
        }
    }

    /// What storage holds: room `r` with messages 1..=`newest`.
    fn storage(newest: u64) -> impl Fn(&StoreOp) -> Result<StoreValue, StoreError> {
        move |op| match op {
            StoreOp::LastSeqs { rooms, .. } => Ok(StoreValue::LastSeqs {
                rooms: rooms.iter().map(|r| (r.clone(), 0)).collect(),
                conversations: Vec::new(),
            }),
            StoreOp::History { range: SeqRange::Before { before: Some(before), limit }, .. } => {
                let from = before.saturating_sub(u64::from(*limit)).max(1);
                let messages = (from..*before).filter(|s| *s <= newest).map(stored).collect();
                Ok(StoreValue::Messages { messages, oldest: Some(1) })
            }
            _ => Ok(StoreValue::Done),
        }
    }

    /// The `seq`s delivered to `sid`, in order.
    fn delivered(mail: &[(u16, ToShardInner)], sid: SessionId) -> Vec<u64> {
        mail.iter()
            .filter_map(|(_, m)| match m {
                ToShardInner::Deliver { sessions, event } if sessions.contains(&sid) => {
                    let start = event.ws.iter().position(|&b| b == b'{')?;
                    let v: serde_json::Value = serde_json::from_slice(&event.ws[start..]).ok()?;
                    (v["type"] == "message").then(|| v["seq"].as_u64().unwrap_or(0))
                }
                _ => None,
            })
            .collect()
    }

    fn bus(b: &mut Bench, seq: u64) {
        let message = BusMessage::Room { room: "r".into(), message: stored(seq) };
        b.hub.handle_input(b.now, HubInput::Bus(BusEvent::Message(message)));
        b.collect();
    }

    #[test]
    fn a_member_here_subscribes_the_room_and_its_user() {
        let mut b = cluster_bench();
        let ann = b.guest(0, "ann");
        b.join(ann, "r");
        let subscribed: Vec<&BusCommand> = b.bus.iter().filter(|c| matches!(c, BusCommand::Subscribe(_))).collect();
        assert_eq!(subscribed.len(), 3, "the nodes' topic, the room's, the user's: {:?}", b.bus);
        assert_eq!(subscribed[0], &BusCommand::Subscribe(crate::bus::BusTopic::Nodes), "from the start");
        assert!(b.hub.poll_timeout().is_some(), "the periodic check is due some time");
    }

    #[test]
    fn past_the_hold_bound_later_messages_are_read_from_storage_in_order() {
        let mut b = cluster_bench();
        let ann = b.guest(0, "ann");
        b.join(ann, "r");
        b.complete(storage(0));
        b.take_mail();
        let newest = crate::hub::cluster::HOLD as u64 + 6;
        // 1 is lost; 2.. arrive, more than can be held.
        for seq in 2..=newest {
            bus(&mut b, seq);
        }
        assert!(delivered(&b.take_mail(), ann).is_empty(), "nothing before 1");
        b.complete(storage(newest));
        b.complete(storage(newest));
        b.complete(storage(newest));
        assert_eq!(delivered(&b.take_mail(), ann), (1..=newest).collect::<Vec<u64>>());
        let metrics = std::sync::Arc::clone(&b.hub.metrics);
        assert_eq!(metrics.bus_held_overflow.load(std::sync::atomic::Ordering::Relaxed), 5);
        bus(&mut b, 3);
        assert!(delivered(&b.take_mail(), ann).is_empty(), "a duplicate is dropped");
        assert_eq!(metrics.bus_duplicates.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// The `active_since` of each `LastSeqs` asked since the last take.
    fn checks(b: &mut Bench) -> Vec<Option<u64>> {
        let asked = b.store.iter().filter_map(|r| match &r.op {
            StoreOp::LastSeqs { active_since, .. } => Some(*active_since),
            _ => None,
        });
        let asked = asked.collect();
        b.complete(storage(0));
        asked
    }

    /// The periodic check reads the conversations active shortly before
    /// the previous check, not every conversation of every served user;
    /// all of them on every twentieth check, and after the link came back.
    #[test]
    fn the_periodic_check_reads_recent_conversations_and_now_and_then_all() {
        let mut b = cluster_bench();
        let ann = b.guest(0, "ann");
        b.join(ann, "r");
        let step = Config::default().cluster_check;
        let mut seen = Vec::new();
        for _ in 0..21 {
            let before = b.now.unix_ms;
            b.now = b.now.after(step);
            b.hub.handle_input(b.now, HubInput::Timeout);
            b.collect();
            seen.push((before, checks(&mut b)));
        }
        let (first_at, first) = &seen[0];
        assert_eq!(first, &[None], "the first periodic check has no earlier one to start from");
        for (i, (at, asked)) in seen.iter().enumerate().skip(1) {
            let want = if (i + 1) % 20 == 0 { None } else { Some(at - 60_000) };
            assert_eq!(asked, &[want], "check {} (the first at {first_at})", i + 1);
        }
        b.hub.handle_input(b.now, HubInput::Bus(BusEvent::Up));
        b.collect();
        assert_eq!(checks(&mut b), [None], "after the link came back");
    }

    /// A private message to a name this node never heard of asks storage
    /// first: found, it is sent (under the registered spelling); not
    /// found, it is `no_such_user` as on one node.
    #[test]
    fn a_name_another_node_registered_is_looked_up_before_no_such_user() {
        let mut b = cluster_bench();
        let gus = b.guest(0, "gus");
        b.take_mail();
        b.store.clear();
        let send = |to: &str| ClientRequest::Send { to: Target::User(to.into()), text: "hi".into(), id: None };
        b.request(gus, RequestKind::Send, send("BOB"));
        assert!(matches!(&b.store[..], [StoreRequest { op: StoreOp::FindUser { name }, .. }] if name == "BOB"));
        b.complete(|_| Ok(StoreValue::FoundUser(Some("Bob".into()))));
        let append = b.store.iter().find_map(|r| match &r.op {
            StoreOp::Append { message, .. } => message.to.clone(),
            _ => None,
        });
        assert_eq!(append.as_deref(), Some("Bob"), "sent to the registered spelling: {:?}", b.store);
        b.store.clear();
        b.request(gus, RequestKind::Send, send("nobody"));
        b.complete(|_| Ok(StoreValue::FoundUser(None)));
        assert!(!b.store.iter().any(|r| matches!(r.op, StoreOp::Append { .. })), "{:?}", b.store);
        let replies = reply_of(&b.take_mail(), gus);
        assert!(replies.iter().any(|(_, r)| *r == Err(ErrorCode::NoSuchUser)), "{replies:?}");
    }
}
