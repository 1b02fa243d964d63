//! The storage contract (`natter_core::store`) as tests that run against
//! every [`Backend`]: SQLite, PostgreSQL (with the `postgres-tests` feature,
//! at the URL in `NATTER_TEST_POSTGRES`) and the simulation's fake store
//! (through [`FakeBackend`]), so that the simulation tests what the server
//! runs. Each test is a function of a [`Fixture`]; `contract_suite!` makes
//! one `#[test]` of it per backend. What is about one backend's files or
//! failure modes stays beside that backend.
//!
//! The fake diverges from the SQL backends on two points, so the tests of
//! those run on SQLite and PostgreSQL only (`sql_only` below): it treats user
//! names as case-sensitive (`Carol` and `carol` can both register), and it
//! orders the conversation list by the messages' clock readings instead of
//! the order they were stored in.

use super::password::new_token;
use super::Backend;
use natter_core::store::StoreOp as Op;
use natter_core::store::StoreValue as V;
use natter_core::store::{
    ConversationSummary, InboxBound, InboxLimit, InboxMessage, NewMessage, SeqRange, StoreError, StoreFailure,
    StoredMessage, StoredRoom, Target,
};

/// A backend on fresh, empty storage, cleaned up on drop.
pub(crate) trait Fixture {
    fn backend(&mut self) -> &mut dyn Backend;
    /// Closes the backend and opens it again on the same data.
    fn reopen(&mut self);
}

// ---- helpers, shared with the backends' own tests -----------------------------

pub(crate) fn run(b: &mut dyn Backend, ops: Vec<Op>) -> Vec<Result<V, StoreError>> {
    let refs: Vec<&Op> = ops.iter().collect();
    let out = b.execute(&refs);
    assert_eq!(out.len(), ops.len());
    out
}

pub(crate) fn one(b: &mut dyn Backend, op: Op) -> V {
    run(b, vec![op]).pop().unwrap().expect("op failed")
}

pub(crate) fn msg(sender: &str, text: &str, client_id: Option<&str>, ts: u64) -> NewMessage {
    NewMessage {
        sender: sender.into(),
        from: sender.into(),
        to: None,
        text: text.into(),
        client_id: client_id.map(Into::into),
        ts,
        inbox: None,
    }
}

pub(crate) const BOUND: InboxBound = InboxBound { per_sender: 1_000, per_recipient: 10_000 };

/// A private message to a registered user (it enters the inbox).
pub(crate) fn pm(sender: &str, to: &str, text: &str, ts: u64) -> Op {
    Op::Append {
        target: Target::Conversation(sender.into(), to.into()),
        message: NewMessage { to: Some(to.into()), inbox: Some(BOUND), ..msg(sender, text, None, ts) },
    }
}

pub(crate) fn room_append(room: &str, sender: &str, text: &str, ts: u64) -> Op {
    Op::Append { target: Target::Room(room.into()), message: msg(sender, text, None, ts) }
}

pub(crate) fn room(name: &str) -> Target {
    Target::Room(name.into())
}

pub(crate) fn conv(a: &str, b: &str) -> Target {
    Target::Conversation(a.into(), b.into())
}

pub(crate) fn history(b: &mut dyn Backend, target: Target, range: SeqRange) -> (Vec<u64>, Option<u64>) {
    match one(b, Op::History { target, range }) {
        V::Messages { messages, oldest } => (messages.iter().map(|m| m.seq).collect(), oldest),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn appended(r: &Result<V, StoreError>) -> (u64, bool) {
    match r {
        Ok(V::Appended { seq, duplicate, .. }) => (*seq, *duplicate),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn inbox(b: &mut dyn Backend, user: &str, limit: u32) -> Vec<(String, u64, String)> {
    match one(b, Op::Inbox { user: user.into(), after: 0, limit }) {
        V::Inbox { messages, .. } => messages.into_iter().map(|m| (m.with, m.message.seq, m.message.text)).collect(),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn s(with: &str, seq: u64, text: &str) -> (String, u64, String) {
    (with.into(), seq, text.into())
}

pub(crate) fn send(b: &mut dyn Backend, target: Target, sender: &str, text: &str, id: &str, ts: u64) -> V {
    one(b, Op::Append { target, message: msg(sender, text, Some(id), ts) })
}

// ---- the contract ----------------------------------------------------------------

pub(crate) fn seqs_are_gapless_per_target_within_one_batch(f: &mut dyn Fixture) {
    let b = f.backend();
    let ops = vec![
        room_append("a", "x", "1", 1),
        room_append("b", "x", "1", 2),
        pm("x", "y", "1", 3),
        room_append("a", "y", "2", 4),
        pm("y", "x", "2", 5),
        pm("x", "z", "1", 6),
        room_append("b", "x", "2", 7),
        room_append("a", "x", "3", 8),
        pm("x", "y", "3", 9),
    ];
    let seqs: Vec<u64> = run(b, ops).iter().map(|r| appended(r).0).collect();
    assert_eq!(seqs, [1, 1, 1, 2, 2, 1, 2, 3, 3]);
    // And across batches.
    let seqs: Vec<u64> =
        run(b, vec![room_append("a", "x", "4", 10), pm("y", "x", "4", 11)]).iter().map(|r| appended(r).0).collect();
    assert_eq!(seqs, [4, 4]);
    assert_eq!(history(b, room("a"), SeqRange::Before { before: None, limit: 50 }).0, [1, 2, 3, 4]);
    assert_eq!(history(b, conv("x", "y"), SeqRange::Before { before: None, limit: 50 }).0, [1, 2, 3, 4]);
    assert_eq!(history(b, conv("y", "x"), SeqRange::After { after: 0, limit: 50 }).0, [1, 2, 3, 4]);
    assert_eq!(history(b, conv("z", "x"), SeqRange::After { after: 0, limit: 50 }).0, [1]);
}

pub(crate) fn duplicate_client_id_returns_the_first_and_writes_nothing(f: &mut dyn Fixture) {
    let b = f.backend();
    let first = one(b, Op::Append { target: room("r"), message: msg("alice", "hi", Some("c1"), 100) });
    assert_eq!(first, V::Appended { seq: 1, ts: 100, duplicate: false });
    let ops = vec![
        room_append("r", "bob", "other", 101),
        // The same (sender, id, target, text): the first comes back.
        Op::Append { target: room("r"), message: msg("alice", "hi", Some("c1"), 102) },
        // Same id from another sender is a new message.
        Op::Append { target: room("r"), message: msg("bob", "mine", Some("c1"), 104) },
        // A duplicate within one batch.
        Op::Append { target: room("r"), message: msg("alice", "new", Some("c2"), 105) },
        Op::Append { target: room("r"), message: msg("alice", "new", Some("c2"), 106) },
    ];
    let out = run(b, ops);
    assert_eq!(out[0], Ok(V::Appended { seq: 2, ts: 101, duplicate: false }));
    assert_eq!(out[1], Ok(V::Appended { seq: 1, ts: 100, duplicate: true }));
    assert_eq!(out[2], Ok(V::Appended { seq: 3, ts: 104, duplicate: false }));
    assert_eq!(out[3], Ok(V::Appended { seq: 4, ts: 105, duplicate: false }));
    assert_eq!(out[4], Ok(V::Appended { seq: 4, ts: 105, duplicate: true }));
    match one(b, Op::History { target: room("r"), range: SeqRange::Before { before: None, limit: 50 } }) {
        V::Messages { messages, oldest } => {
            assert_eq!(oldest, Some(1));
            let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["hi", "other", "mine", "new"]);
            assert_eq!(messages[0].client_id.as_deref(), Some("c1"));
            assert_eq!(messages[1].client_id, None);
        }
        other => panic!("{other:?}"),
    }
}

pub(crate) fn history_limits_and_order(f: &mut dyn Fixture) {
    let b = f.backend();
    run(b, (1..=10).map(|i| room_append("r", "a", &format!("m{i}"), 1000 + i)).collect());
    let h = |b: &mut dyn Backend, range| history(b, room("r"), range);
    assert_eq!(h(b, SeqRange::Before { before: None, limit: 3 }), (vec![8, 9, 10], Some(1)));
    assert_eq!(h(b, SeqRange::Before { before: Some(5), limit: 3 }).0, [2, 3, 4]);
    assert_eq!(h(b, SeqRange::Before { before: Some(3), limit: 10 }).0, [1, 2]);
    assert_eq!(h(b, SeqRange::Before { before: Some(1), limit: 10 }), (vec![], Some(1)));
    assert_eq!(h(b, SeqRange::Before { before: Some(11), limit: 500 }).0, (1..=10).collect::<Vec<_>>());
    assert_eq!(h(b, SeqRange::Before { before: None, limit: 0 }).0, Vec::<u64>::new());
    // After: the newest `limit` above `after`, oldest first.
    assert_eq!(h(b, SeqRange::After { after: 3, limit: 4 }).0, [7, 8, 9, 10]);
    assert_eq!(h(b, SeqRange::After { after: 8, limit: 10 }).0, [9, 10]);
    assert_eq!(h(b, SeqRange::After { after: 0, limit: 10 }).0, (1..=10).collect::<Vec<_>>());
    assert_eq!(h(b, SeqRange::After { after: 10, limit: 5 }), (vec![], Some(1)));
    assert_eq!(history(b, room("empty"), SeqRange::After { after: 0, limit: 5 }), (vec![], None));
    match one(b, Op::History { target: room("r"), range: SeqRange::Before { before: Some(2), limit: 1 } }) {
        V::Messages { messages, .. } => assert_eq!(
            messages,
            [StoredMessage {
                seq: 1,
                from: "a".into(),
                to: None,
                sender: "a".into(),
                text: "m1".into(),
                client_id: None,
                ts: 1001,
            }]
        ),
        other => panic!("{other:?}"),
    }
    // A private message keeps its recipient's display name.
    one(
        b,
        Op::Append {
            target: conv("bob#2", "alice"),
            message: NewMessage {
                sender: "bob#2".into(),
                from: "bob".into(),
                to: Some("alice".into()),
                text: "yo".into(),
                client_id: Some("k".into()),
                ts: 5,
                inbox: None,
            },
        },
    );
    match one(b, Op::History { target: conv("alice", "bob#2"), range: SeqRange::After { after: 0, limit: 9 } }) {
        V::Messages { messages, oldest: Some(1) } => assert_eq!(
            messages,
            [StoredMessage {
                seq: 1,
                from: "bob".into(),
                to: Some("alice".into()),
                sender: "bob#2".into(),
                text: "yo".into(),
                client_id: Some("k".into()),
                ts: 5,
            }]
        ),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn inbox_respects_ack_and_excludes_own_messages(f: &mut dyn Fixture) {
    let b = f.backend();
    run(
        b,
        vec![
            pm("carol", "bob", "c1", 5),
            pm("alice", "bob", "a1", 10),
            pm("alice", "bob", "a2", 11),
            pm("bob", "alice", "own", 12),
            pm("alice", "bob", "a4", 13),
            pm("carol", "bob", "c2", 14),
            pm("alice", "dave", "elsewhere", 15),
        ],
    );
    // In order of arrival, so each conversation's by seq.
    let all =
        vec![s("carol", 1, "c1"), s("alice", 1, "a1"), s("alice", 2, "a2"), s("alice", 4, "a4"), s("carol", 2, "c2")];
    assert_eq!(inbox(b, "bob", 100), all);
    assert_eq!(inbox(b, "bob", 2), all[..2]);
    assert_eq!(inbox(b, "alice", 100), [s("bob", 3, "own")]);
    one(b, Op::Ack { user: "bob".into(), with: "carol".into(), seq: 2 });
    one(b, Op::Ack { user: "bob".into(), with: "alice".into(), seq: 1 });
    assert_eq!(inbox(b, "bob", 100), [s("alice", 2, "a2"), s("alice", 4, "a4")]);
    // An ack never goes down.
    one(b, Op::Ack { user: "bob".into(), with: "alice".into(), seq: 3 });
    one(b, Op::Ack { user: "bob".into(), with: "alice".into(), seq: 0 });
    assert_eq!(inbox(b, "bob", 100), [s("alice", 4, "a4")]);
    // Acks are per user: alice's view is unchanged.
    assert_eq!(inbox(b, "alice", 100), [s("bob", 3, "own")]);
    assert_eq!(inbox(b, "nobody", 100), []);
    // The inbox carries whole messages.
    match one(b, Op::Inbox { user: "dave".into(), after: 0, limit: 1 }) {
        V::Inbox { messages, .. } => assert_eq!(
            messages,
            [InboxMessage {
                with: "alice".into(),
                message: StoredMessage {
                    seq: 1,
                    from: "alice".into(),
                    to: Some("dave".into()),
                    sender: "alice".into(),
                    text: "elsewhere".into(),
                    client_id: None,
                    ts: 15,
                },
            }]
        ),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn conversations_and_read_marks(f: &mut dyn Fixture) {
    let b = f.backend();
    run(
        b,
        vec![
            pm("alice", "bob", "1", 10),
            pm("carol", "alice", "1", 20),
            pm("bob", "alice", "2", 30),
            pm("dave", "alice", "1", 25),
            pm("bob", "carol", "x", 40),
        ],
    );
    let summary = |with: &str, seq, read| ConversationSummary { with: with.into(), seq, read };
    let list = |b: &mut dyn Backend, limit| one(b, Op::Conversations { user: "alice".into(), limit });
    // Most recent first means most recently stored: dave's message was
    // stored last even though its clock reading (25) is older than bob's
    // (30), so a clock that steps back cannot reorder the list.
    assert_eq!(
        list(b, 10),
        V::Conversations { conversations: vec![summary("dave", 1, 0), summary("bob", 2, 0), summary("carol", 1, 0)] }
    );
    assert_eq!(list(b, 1), V::Conversations { conversations: vec![summary("dave", 1, 0)] });
    run(
        b,
        vec![
            Op::Read { user: "alice".into(), target: conv("alice", "bob"), seq: 2 },
            Op::Read { user: "alice".into(), target: conv("alice", "bob"), seq: 1 },
            Op::Read { user: "alice".into(), target: conv("alice", "carol"), seq: 1 },
            // The reader given second still works.
            Op::Read { user: "alice".into(), target: conv("dave", "alice"), seq: 1 },
        ],
    );
    assert_eq!(
        list(b, 10),
        V::Conversations { conversations: vec![summary("dave", 1, 1), summary("bob", 2, 2), summary("carol", 1, 1)] }
    );
    // Reading is not acking.
    assert_eq!(inbox(b, "alice", 10).len(), 3);
    // Bob's marks are his own.
    assert_eq!(
        one(b, Op::Conversations { user: "bob".into(), limit: 10 }),
        V::Conversations { conversations: vec![summary("carol", 1, 0), summary("alice", 2, 0)] }
    );
}

pub(crate) fn membership_room_read_marks_and_load_all(f: &mut dyn Fixture) {
    let b = f.backend();
    assert_eq!(one(b, Op::LoadAll), V::Snapshot { users: vec![], rooms: vec![] });
    assert!(b.create_user("bob", "h1", 1).unwrap());
    assert!(b.create_user("alice", "h2", 2).unwrap());
    let out = run(
        b,
        vec![
            Op::Join { user: "alice".into(), room: "lobby".into() },
            Op::Join { user: "bob".into(), room: "lobby".into() },
            Op::Join { user: "bob".into(), room: "lobby".into() },
            Op::Join { user: "alice".into(), room: "dev".into() },
            Op::Join { user: "alice".into(), room: "gone".into() },
            Op::Leave { user: "alice".into(), room: "gone".into() },
            Op::Leave { user: "alice".into(), room: "never".into() },
            room_append("lobby", "alice", "1", 1),
            room_append("lobby", "alice", "2", 2),
            room_append("quiet", "guest#1", "1", 3),
            Op::Read { user: "alice".into(), target: room("lobby"), seq: 2 },
            Op::Read { user: "alice".into(), target: room("lobby"), seq: 1 },
            Op::Read { user: "bob".into(), target: room("lobby"), seq: 1 },
            // Not a member: nothing happens.
            Op::Read { user: "alice".into(), target: room("quiet"), seq: 1 },
        ],
    );
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    assert_eq!(out[0], Ok(V::Done));
    assert_eq!(
        one(b, Op::ReadMarks { user: "alice".into() }),
        V::ReadMarks { marks: vec![("dev".into(), 0, 0), ("lobby".into(), 2, 2)] }
    );
    assert_eq!(one(b, Op::ReadMarks { user: "bob".into() }), V::ReadMarks { marks: vec![("lobby".into(), 1, 2)] });
    assert_eq!(one(b, Op::ReadMarks { user: "carol".into() }), V::ReadMarks { marks: vec![] });
    let stored = |name: &str, seq, members: &[&str]| StoredRoom {
        name: name.into(),
        seq,
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    assert_eq!(
        one(b, Op::LoadAll),
        V::Snapshot {
            users: vec!["alice".into(), "bob".into()],
            rooms: vec![stored("dev", 0, &["alice"]), stored("lobby", 2, &["alice", "bob"]), stored("quiet", 1, &[])],
        }
    );
    run(b, vec![Op::Leave { user: "bob".into(), room: "lobby".into() }]);
    match one(b, Op::LoadAll) {
        V::Snapshot { rooms, .. } => assert_eq!(rooms[1], stored("lobby", 2, &["alice"])),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn users_tokens_expiry_and_revocation(f: &mut dyn Fixture) {
    let b = f.backend();
    assert_eq!(b.password_hash("alice").unwrap(), None);
    assert!(b.create_user("alice", "hash-a", 1).unwrap());
    assert!(!b.create_user("alice", "hash-b", 2).unwrap());
    assert_eq!(b.password_hash("alice").unwrap().as_deref(), Some("hash-a"));
    let (t1, h1) = new_token();
    let (t2, h2) = new_token();
    b.create_token(&h1, "alice", 1000).unwrap();
    b.create_token(&h2, "alice", 5000).unwrap();
    let check = |b: &mut dyn Backend, token: &str, now_ms| one(b, Op::CheckToken { token: token.into(), now_ms });
    assert_eq!(check(b, &t1, 999), V::TokenUser { user: "alice".into(), expires_ms: 1000 });
    assert_eq!(check(b, &t1, 1000), V::Rejected);
    assert_eq!(check(b, &h1, 10), V::Rejected, "the stored hash is not a token");
    assert_eq!(check(b, "nope", 10), V::Rejected);
    assert_eq!(check(b, "", 10), V::Rejected);
    assert_eq!(one(b, Op::Revoke { token: t2.clone() }), V::Revoked { user: Some("alice".into()) });
    assert_eq!(check(b, &t2, 10), V::Rejected);
    assert_eq!(one(b, Op::Revoke { token: t2 }), V::Revoked { user: Some("alice".into()) });
    assert_eq!(one(b, Op::Revoke { token: "unknown".into() }), V::Revoked { user: None });
    assert_eq!(check(b, &t1, 999), V::TokenUser { user: "alice".into(), expires_ms: 1000 });
}

pub(crate) fn user_names_are_unique_ignoring_case(f: &mut dyn Fixture) {
    let b = f.backend();
    assert_eq!(b.create_user("Carol", "h1", 1), Ok(true));
    assert_eq!(b.create_user("carol", "h2", 2), Ok(false), "a twin in another case is a taken name");
    assert_eq!(b.create_user("CAROL", "h3", 3), Ok(false));
    assert_eq!(b.password_hash("cArOl"), Ok(Some("h1".to_string())));
}

pub(crate) fn password_ops_are_refused_in_a_batch(f: &mut dyn Fixture) {
    let b = f.backend();
    let out = run(
        b,
        vec![
            room_append("r", "a", "1", 1),
            Op::Verify { user: "a".into(), password: "p".into(), cancel: Default::default() },
            room_append("r", "a", "2", 2),
        ],
    );
    assert_eq!(appended(&out[0]).0, 1);
    assert_eq!(out[1], Err(StoreError::Backend(StoreFailure::Other)));
    assert_eq!(appended(&out[2]).0, 2);
}

pub(crate) fn client_ids_are_scoped_to_their_room_or_conversation(f: &mut dyn Fixture) {
    let b = f.backend();
    assert_eq!(send(b, room("lobby"), "ann", "hi", "c-1", 1), V::Appended { seq: 1, ts: 1, duplicate: false });
    // The same id in another room names another message.
    assert_eq!(send(b, room("design"), "ann", "yo", "c-1", 2), V::Appended { seq: 1, ts: 2, duplicate: false });
    // And in a conversation.
    assert_eq!(send(b, conv("ann", "bob"), "ann", "psst", "c-1", 3), V::Appended { seq: 1, ts: 3, duplicate: false });
    // A retry (same target, same text) is the first message.
    assert_eq!(send(b, room("design"), "ann", "yo", "c-1", 4), V::Appended { seq: 1, ts: 2, duplicate: true });
    assert_eq!(send(b, conv("bob", "ann"), "ann", "psst", "c-1", 5), V::Appended { seq: 1, ts: 3, duplicate: true });
    // The same id with other text is not a retry: stored, and the id names it now.
    assert_eq!(send(b, room("lobby"), "ann", "other", "c-1", 6), V::Appended { seq: 2, ts: 6, duplicate: false });
    assert_eq!(send(b, room("lobby"), "ann", "other", "c-1", 7), V::Appended { seq: 2, ts: 6, duplicate: true });
    let h = one(b, Op::History { target: room("lobby"), range: SeqRange::After { after: 0, limit: 9 } });
    assert!(matches!(h, V::Messages { ref messages, .. } if messages.len() == 2), "{h:?}");
}

pub(crate) fn a_guest_incarnation_never_inherits_another_ones_ids(f: &mut dyn Fixture) {
    let b = f.backend();
    assert_eq!(send(b, room("r"), "ann#1.1", "hi", "c-1", 1), V::Appended { seq: 1, ts: 1, duplicate: false });
    // A later guest called ann, moments later: someone else.
    assert_eq!(send(b, room("r"), "ann#1.2", "hi", "c-1", 2), V::Appended { seq: 2, ts: 2, duplicate: false });
    // The registered ann too.
    assert_eq!(send(b, room("r"), "ann", "hi", "c-1", 3), V::Appended { seq: 3, ts: 3, duplicate: false });
    // The first guest (resumed) is still recognised.
    assert_eq!(send(b, room("r"), "ann#1.1", "hi", "c-1", 4), V::Appended { seq: 1, ts: 1, duplicate: true });
}

pub(crate) fn a_guest_name_taken_again_continues_the_conversation_seq(f: &mut dyn Fixture) {
    let b = f.backend();
    let to_bob = |sender: &str, text: &str| Op::Append {
        target: conv(sender, "bob"),
        message: NewMessage { to: Some("bob".into()), inbox: Some(BOUND), ..msg(sender, text, None, 1) },
    };
    assert_eq!(appended(&run(b, vec![to_bob("gwen#1.1", "one")])[0]), (1, false));
    assert_eq!(appended(&run(b, vec![to_bob("gwen#1.1", "two")])[0]), (2, false));
    // Another guest gwen: bob knows this conversation as "gwen", so its seq
    // goes on rather than starting again at 1.
    assert_eq!(appended(&run(b, vec![to_bob("Gwen#1.7", "three")])[0]), (3, false));
    // Its history holds only its own messages.
    match one(b, Op::History { target: conv("bob", "Gwen#1.7"), range: SeqRange::After { after: 0, limit: 9 } }) {
        V::Messages { messages, .. } => assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]),
        other => panic!("{other:?}"),
    }
    // Unrelated pairs start at 1.
    assert_eq!(appended(&run(b, vec![to_bob("gwenda#1.2", "x")])[0]), (1, false));
}

pub(crate) fn inbox_bounds_per_sender_and_per_recipient(f: &mut dyn Fixture) {
    let b = f.backend();
    let bound = InboxBound { per_sender: 3, per_recipient: 5 };
    let to_bob = |sender: &str, n: u64| Op::Append {
        target: conv(sender, "bob"),
        message: NewMessage { to: Some("bob".into()), inbox: Some(bound), ..msg(sender, "x", Some(&n.to_string()), n) },
    };
    for n in 1..=3 {
        assert_eq!(appended(&run(b, vec![to_bob("ann", n)])[0]), (n, false));
    }
    assert_eq!(one(b, to_bob("ann", 4)), V::InboxFull { limit: InboxLimit::PerSender });
    for n in 1..=2 {
        assert_eq!(appended(&run(b, vec![to_bob("cat", n)])[0]), (n, false));
    }
    assert_eq!(one(b, to_bob("dan", 1)), V::InboxFull { limit: InboxLimit::PerRecipient });
    // Nothing of a refused message was stored.
    assert_eq!(inbox(b, "bob", 100).len(), 5);
    // Reading makes room; a refused message's client id was not kept.
    one(b, Op::Ack { user: "bob".into(), with: "ann".into(), seq: 2 });
    assert_eq!(appended(&run(b, vec![to_bob("dan", 1)])[0]), (1, false));
    assert_eq!(appended(&run(b, vec![to_bob("ann", 4)])[0]), (4, false));
    assert_eq!(one(b, to_bob("eve", 1)), V::InboxFull { limit: InboxLimit::PerRecipient });
}

pub(crate) fn the_inbox_reads_in_pages(f: &mut dyn Fixture) {
    let b = f.backend();
    run(b, (0..7).map(|n| pm(&format!("s{}", n % 3), "bob", &n.to_string(), n)).collect());
    let mut after = 0;
    let mut texts = Vec::new();
    loop {
        let V::Inbox { messages, cursor } = one(b, Op::Inbox { user: "bob".into(), after, limit: 3 }) else { panic!() };
        if messages.is_empty() {
            assert_eq!(cursor, after);
            break;
        }
        texts.extend(messages.into_iter().map(|m| m.message.text));
        after = cursor;
    }
    assert_eq!(texts, ["0", "1", "2", "3", "4", "5", "6"]);
}

pub(crate) fn data_survives_reopen(f: &mut dyn Fixture) {
    let (token, hash) = new_token();
    {
        let b = f.backend();
        b.create_user("alice", "h", 1).unwrap();
        b.create_token(&hash, "alice", 100).unwrap();
        run(
            b,
            vec![
                Op::Join { user: "alice".into(), room: "lobby".into() },
                room_append("lobby", "alice", "1", 1),
                Op::Append { target: room("lobby"), message: msg("alice", "2", Some("id"), 2) },
                Op::Read { user: "alice".into(), target: room("lobby"), seq: 2 },
                pm("bob", "alice", "hi", 3),
                Op::Ack { user: "alice".into(), with: "bob".into(), seq: 1 },
                Op::Read { user: "alice".into(), target: conv("alice", "bob"), seq: 1 },
            ],
        );
    }
    f.reopen();
    let b = f.backend();
    assert_eq!(
        one(b, Op::LoadAll),
        V::Snapshot {
            users: vec!["alice".into()],
            rooms: vec![StoredRoom { name: "lobby".into(), seq: 2, members: vec!["alice".into()] }],
        }
    );
    assert_eq!(one(b, Op::CheckToken { token, now_ms: 5 }), V::TokenUser { user: "alice".into(), expires_ms: 100 });
    assert_eq!(one(b, Op::ReadMarks { user: "alice".into() }), V::ReadMarks { marks: vec![("lobby".into(), 2, 2)] });
    assert_eq!(inbox(b, "alice", 10), []);
    assert_eq!(
        one(b, Op::Conversations { user: "alice".into(), limit: 10 }),
        V::Conversations { conversations: vec![ConversationSummary { with: "bob".into(), seq: 1, read: 1 }] }
    );
    // The counters and the dedup go on where they were.
    let out = run(
        b,
        vec![
            Op::Append { target: room("lobby"), message: msg("alice", "2", Some("id"), 9) },
            room_append("lobby", "alice", "3", 10),
            pm("alice", "bob", "back", 11),
        ],
    );
    assert_eq!(out[0], Ok(V::Appended { seq: 2, ts: 2, duplicate: true }));
    assert_eq!(appended(&out[1]), (3, false));
    assert_eq!(appended(&out[2]), (2, false));
}

/// `LastSeqs` names each room's newest `seq` in the order asked (0 when
/// unknown) and every conversation of the users asked, once, sorted: what a
/// cluster node's periodic check compares with what it delivered. With
/// `active_since`, only conversations with a message that recent.
pub(crate) fn last_seqs_names_the_newest_seq_of_rooms_and_conversations(f: &mut dyn Fixture) {
    let b = f.backend();
    let ops = vec![
        room_append("a", "x", "1", 1),
        room_append("a", "x", "2", 2),
        room_append("b", "x", "1", 3),
        pm("x", "y", "hi", 4),
        pm("y", "x", "hi", 5),
        pm("z", "x", "hi", 6),
    ];
    assert!(run(b, ops).iter().all(Result::is_ok));
    let users = vec!["x".to_string(), "y".to_string()];
    let ask =
        Op::LastSeqs { rooms: vec!["a".into(), "nope".into(), "b".into()], users: users.clone(), active_since: None };
    assert_eq!(
        one(b, ask),
        V::LastSeqs {
            rooms: vec![("a".into(), 2), ("nope".into(), 0), ("b".into(), 1)],
            conversations: vec![("x".into(), "y".into(), 2), ("x".into(), "z".into(), 1)],
        }
    );
    let recent = one(b, Op::LastSeqs { rooms: vec![], users, active_since: Some(6) });
    assert_eq!(recent, V::LastSeqs { rooms: vec![], conversations: vec![("x".into(), "z".into(), 1)] });
    let none = one(b, Op::LastSeqs { rooms: vec![], users: vec!["w".into()], active_since: None });
    assert_eq!(none, V::LastSeqs { rooms: vec![], conversations: vec![] });
}

/// `FindUser` answers a registered name as it was registered, whatever its
/// case, and nothing for a name nobody registered.
pub(crate) fn find_user_ignores_case_and_answers_the_registered_spelling(f: &mut dyn Fixture) {
    let b = f.backend();
    assert_eq!(b.create_user("Carol", "hash", 1), Ok(true));
    assert_eq!(one(b, Op::FindUser { name: "carol".into() }), V::FoundUser(Some("Carol".into())));
    assert_eq!(one(b, Op::FindUser { name: "Carol".into() }), V::FoundUser(Some("Carol".into())));
    assert_eq!(one(b, Op::FindUser { name: "dave".into() }), V::FoundUser(None));
}

/// A guest name is claimed for one node at a time, ignoring case; the
/// holder claims it again, a dead holder's claim (not in `alive`) is taken
/// over, and a release counts only from the holder.
pub(crate) fn a_guest_name_is_claimed_by_one_live_node(f: &mut dyn Fixture) {
    let b = f.backend();
    let claim =
        |name: &str, node: u64, alive: &[u64]| Op::ClaimGuest { name: name.into(), node, alive: Some(alive.to_vec()) };
    let big = u64::MAX - 1;
    assert_eq!(one(b, claim("Zed", big, &[big, 2])), V::Claimed(true));
    assert_eq!(one(b, claim("zED", 2, &[big, 2])), V::Claimed(false), "held by a live node");
    assert_eq!(one(b, claim("zed", big, &[big, 2])), V::Claimed(true), "the holder again");
    assert_eq!(one(b, Op::ReleaseGuest { name: "ZED".into(), node: 2 }), V::Done);
    assert_eq!(one(b, claim("zed", 2, &[big, 2])), V::Claimed(false), "only the holder's release counts");
    let unsure = Op::ClaimGuest { name: "zed".into(), node: 2, alive: None };
    assert_eq!(one(b, unsure), V::Claimed(false), "no claim is taken over without knowing who is alive");
    assert_eq!(one(b, claim("zed", 2, &[2])), V::Claimed(true), "a dead node's claim is taken over");
    let unsure = Op::ClaimGuest { name: "zed".into(), node: 2, alive: None };
    assert_eq!(one(b, unsure), V::Claimed(true), "the holder's own claim, all the same");
    assert_eq!(one(b, claim("Zed", big, &[big, 2])), V::Claimed(false));
    assert_eq!(one(b, Op::ReleaseGuest { name: "zed".into(), node: 2 }), V::Done);
    assert_eq!(one(b, claim("zed", big, &[big, 2])), V::Claimed(true), "free once released");
    let both = run(b, vec![claim("amy", 1, &[1, 2]), claim("AMY", 2, &[1, 2])]);
    assert_eq!(both, [Ok(V::Claimed(true)), Ok(V::Claimed(false))], "one batch, one winner");
    f.reopen();
    assert_eq!(one(f.backend(), claim("amy", 2, &[1, 2])), V::Claimed(false), "claims are stored");
}

/// `LiveTokens` names the tokens asked that are stored and not revoked, in
/// the order asked: what a cluster node asks after its bus link was down,
/// when a revocation may have been lost.
pub(crate) fn live_tokens_are_the_stored_unrevoked_ones(f: &mut dyn Fixture) {
    let b = f.backend();
    assert!(b.create_user("alice", "hash-a", 1).unwrap());
    let (t1, h1) = new_token();
    let (t2, h2) = new_token();
    let (t3, h3) = new_token();
    for h in [&h1, &h2, &h3] {
        b.create_token(h, "alice", 1000).unwrap();
    }
    assert_eq!(one(b, Op::Revoke { token: t2.clone() }), V::Revoked { user: Some("alice".into()) });
    let ask = Op::LiveTokens { tokens: vec![t3.clone(), t2, "unknown".into(), h1, t1.clone()] };
    assert_eq!(one(b, ask), V::LiveTokens { tokens: vec![t3, t1] }, "a stored hash is not a token");
    assert_eq!(one(b, Op::LiveTokens { tokens: vec![] }), V::LiveTokens { tokens: vec![] });
}

/// `RoomMembers` names each room asked, in the order asked, with its newest
/// `seq` and its registered members sorted: what a cluster node reads when
/// it starts serving a room.
pub(crate) fn room_members_are_read_per_room_in_the_order_asked(f: &mut dyn Fixture) {
    let b = f.backend();
    let join = |user: &str, room: &str| Op::Join { user: user.into(), room: room.into() };
    let ops =
        vec![join("zed", "b"), join("amy", "b"), join("amy", "a"), join("bo", "c"), room_append("b", "amy", "hi", 1)];
    assert!(run(b, ops).iter().all(Result::is_ok));
    run(b, vec![Op::Leave { user: "bo".into(), room: "c".into() }]);
    let ask = Op::RoomMembers { rooms: vec!["b".into(), "nope".into(), "a".into(), "c".into()] };
    assert_eq!(
        one(b, ask),
        V::RoomMembers {
            rooms: vec![
                ("b".into(), 1, vec!["amy".into(), "zed".into()]),
                ("nope".into(), 0, vec![]),
                ("a".into(), 0, vec!["amy".into()]),
                ("c".into(), 0, vec![]),
            ]
        }
    );
}

/// One `#[test]` per contract test, on the fixture `$make` builds. `sql_only`
/// lists the tests the fake store does not pass (see the module docs).
macro_rules! contract_suite {
    ($make:expr, sql_only: $sql:tt) => {
        contract_suite!(@tests $make;
            seqs_are_gapless_per_target_within_one_batch,
            duplicate_client_id_returns_the_first_and_writes_nothing,
            history_limits_and_order,
            inbox_respects_ack_and_excludes_own_messages,
            membership_room_read_marks_and_load_all,
            users_tokens_expiry_and_revocation,
            password_ops_are_refused_in_a_batch,
            client_ids_are_scoped_to_their_room_or_conversation,
            a_guest_incarnation_never_inherits_another_ones_ids,
            a_guest_name_taken_again_continues_the_conversation_seq,
            inbox_bounds_per_sender_and_per_recipient,
            the_inbox_reads_in_pages,
            data_survives_reopen,
            last_seqs_names_the_newest_seq_of_rooms_and_conversations,
            find_user_ignores_case_and_answers_the_registered_spelling,
            a_guest_name_is_claimed_by_one_live_node,
            live_tokens_are_the_stored_unrevoked_ones,
            room_members_are_read_per_room_in_the_order_asked
        );
        contract_suite!(@sql $sql, $make);
    };
    (@sql true, $make:expr) => {
        contract_suite!(@tests $make; user_names_are_unique_ignoring_case, conversations_and_read_marks);
    };
    (@sql false, $make:expr) => {};
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let mut fixture = $make;
                $crate::store::contract::$name(&mut fixture);
            }
        )*
    };
}
pub(crate) use contract_suite;

// ---- the fixtures ------------------------------------------------------------------

mod sqlite {
    use super::Fixture;
    use crate::store::{Backend, SqliteBackend};

    struct Sqlite {
        dir: tempfile::TempDir,
        backend: Option<SqliteBackend>,
    }

    impl Fixture for Sqlite {
        fn backend(&mut self) -> &mut dyn Backend {
            self.backend.as_mut().expect("open")
        }

        fn reopen(&mut self) {
            self.backend = None;
            self.backend = Some(SqliteBackend::open(self.dir.path()).expect("reopen"));
        }
    }

    fn fresh() -> Sqlite {
        let dir = tempfile::tempdir().unwrap();
        let backend = Some(SqliteBackend::open(dir.path()).expect("open"));
        Sqlite { dir, backend }
    }

    super::contract_suite!(fresh(), sql_only: true);
}

pub(crate) mod fake {
    use super::Fixture;
    use crate::store::{token_hash, Backend};
    use natter_core::store::{StoreError, StoreFailure, StoreOp, StoreValue};
    use natter_sim::FakeStore;

    /// The simulation's fake store as a [`Backend`]: operations run one by
    /// one (the fake has no transactions and never fails unless told to);
    /// tokens are stored by their hash, as the real backends store them.
    #[derive(Debug, Default)]
    pub(crate) struct FakeBackend(pub FakeStore);

    impl Backend for FakeBackend {
        fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
            ops.iter()
                .map(|op| match op {
                    StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. } => {
                        Err(StoreError::Backend(StoreFailure::Other))
                    }
                    StoreOp::CheckToken { token, now_ms } => {
                        Ok(self.0.execute(&StoreOp::CheckToken { token: token_hash(token), now_ms: *now_ms }))
                    }
                    StoreOp::Revoke { token } => Ok(self.0.execute(&StoreOp::Revoke { token: token_hash(token) })),
                    StoreOp::LiveTokens { tokens } => {
                        let hashes = tokens.iter().map(|t| token_hash(t)).collect();
                        match self.0.execute(&StoreOp::LiveTokens { tokens: hashes }) {
                            StoreValue::LiveTokens { tokens: live } => Ok(StoreValue::LiveTokens {
                                tokens: tokens.iter().filter(|t| live.contains(&token_hash(t))).cloned().collect(),
                            }),
                            other => Ok(other),
                        }
                    }
                    op => Ok(self.0.execute(op)),
                })
                .collect()
        }

        fn password_hash(&mut self, user: &str) -> Result<Option<String>, StoreError> {
            Ok(self.0.password_of(user).map(str::to_string))
        }

        fn create_user(&mut self, user: &str, hash: &str, _created_ms: u64) -> Result<bool, StoreError> {
            if self.0.has_user(user) {
                return Ok(false);
            }
            self.0.add_user(user, hash);
            Ok(true)
        }

        fn create_token(&mut self, token_hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
            self.0.add_token(token_hash, user, expires_ms);
            Ok(())
        }
    }

    /// The fake keeps its data in memory: reopening is keeping it.
    impl Fixture for FakeBackend {
        fn backend(&mut self) -> &mut dyn Backend {
            self
        }

        fn reopen(&mut self) {}
    }

    super::contract_suite!(FakeBackend::default(), sql_only: false);
}

#[cfg(feature = "postgres-tests")]
pub(crate) mod postgres {
    use super::Fixture;
    use crate::store::{Backend, PostgresBackend};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// The server the PostgreSQL tests use, from `NATTER_TEST_POSTGRES`
    /// (`tests/services/postgres start DIR` prints one). Missing, it is a
    /// failure: the feature asks for these tests to run.
    pub(crate) fn server_url() -> String {
        std::env::var("NATTER_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "the postgres-tests feature needs NATTER_TEST_POSTGRES=postgres://...: \
                 start a server with `tests/services/postgres start DIR` and pass the URL it prints"
            )
        })
    }

    /// A database of its own, created empty and dropped with the fixture.
    pub(crate) struct FreshDatabase {
        pub(crate) name: String,
        pub(crate) url: String,
        pub(crate) backend: Option<PostgresBackend>,
    }

    impl FreshDatabase {
        pub(crate) fn new() -> FreshDatabase {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let server = server_url();
            let name = format!("natter_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let mut admin =
                postgres::Client::connect(&server, postgres::NoTls).expect("connect to NATTER_TEST_POSTGRES");
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).unwrap();
            admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
            let (base, query) = server.split_once('?').map_or((server.as_str(), None), |(b, q)| (b, Some(q)));
            let base = base.rsplit_once('/').map_or(base, |(host, _)| host);
            let url = match query {
                Some(q) => format!("{base}/{name}?{q}"),
                None => format!("{base}/{name}"),
            };
            let backend = Some(PostgresBackend::open(&url).expect("open the fresh database"));
            FreshDatabase { name, url, backend }
        }
    }

    impl Drop for FreshDatabase {
        fn drop(&mut self) {
            self.backend = None;
            if let Ok(mut admin) = postgres::Client::connect(&server_url(), postgres::NoTls) {
                let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }

    impl Fixture for FreshDatabase {
        fn backend(&mut self) -> &mut dyn Backend {
            self.backend.as_mut().expect("open")
        }

        fn reopen(&mut self) {
            self.backend = None;
            self.backend = Some(PostgresBackend::open(&self.url).expect("reopen"));
        }
    }

    super::contract_suite!(FreshDatabase::new(), sql_only: true);
}
