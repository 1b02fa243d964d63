use super::*;
use natter_core::store::StoreOp as Op;
use natter_core::store::StoreValue as V;

fn open(dir: &Path) -> SqliteBackend {
    SqliteBackend::open(dir).expect("open")
}

fn run(b: &mut SqliteBackend, ops: Vec<Op>) -> Vec<Result<V, StoreError>> {
    let refs: Vec<&Op> = ops.iter().collect();
    let out = b.execute(&refs);
    assert_eq!(out.len(), ops.len());
    out
}

fn one(b: &mut SqliteBackend, op: Op) -> V {
    run(b, vec![op]).pop().unwrap().expect("op failed")
}

fn msg(sender: &str, text: &str, client_id: Option<&str>, ts: u64) -> NewMessage {
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

const BOUND: InboxBound = InboxBound { per_sender: 1_000, per_recipient: 10_000 };

/// A private message to a registered user (it enters the inbox).
fn pm(sender: &str, to: &str, text: &str, ts: u64) -> Op {
    Op::Append {
        target: Target::Conversation(sender.into(), to.into()),
        message: NewMessage { to: Some(to.into()), inbox: Some(BOUND), ..msg(sender, text, None, ts) },
    }
}

fn room_append(room: &str, sender: &str, text: &str, ts: u64) -> Op {
    Op::Append { target: Target::Room(room.into()), message: msg(sender, text, None, ts) }
}

fn room(name: &str) -> Target {
    Target::Room(name.into())
}

fn conv(a: &str, b: &str) -> Target {
    Target::Conversation(a.into(), b.into())
}

fn history(b: &mut SqliteBackend, target: Target, range: SeqRange) -> (Vec<u64>, Option<u64>) {
    match one(b, Op::History { target, range }) {
        V::Messages { messages, oldest } => (messages.iter().map(|m| m.seq).collect(), oldest),
        other => panic!("{other:?}"),
    }
}

fn appended(r: &Result<V, StoreError>) -> (u64, bool) {
    match r {
        Ok(V::Appended { seq, duplicate, .. }) => (*seq, *duplicate),
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_creates_directory_and_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let b = open(&dir);
    assert!(dir.join(DB_FILE).is_file());
    let conn = b.conn.as_ref().unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let fk: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
    assert!(fk);
    drop(b);
    // Opening again is fine (schema creation is idempotent).
    open(&dir);
}

#[test]
fn newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    let conn = Connection::open(tmp.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    match SqliteBackend::open(tmp.path()) {
        Err(OpenError::TooNew { found: 99, supported: SCHEMA_VERSION, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn user_names_are_unique_ignoring_case() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    assert_eq!(b.create_user("Carol", "h1", 1), Ok(true));
    assert_eq!(b.create_user("carol", "h2", 2), Ok(false), "a twin in another case is a taken name");
    assert_eq!(b.create_user("CAROL", "h3", 3), Ok(false));
    assert_eq!(b.password_hash("cArOl"), Ok(Some("h1".to_string())));
}

/// A version 1 database whose users are `Carol` (oldest), `carol` and
/// `CAROL`, and `dave`; `carol` has a token, a membership, a conversation
/// with `dave` and a read mark in it.
fn version_1_database_with_case_twins(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    c.execute_batch(include_str!("v1_schema.sql")).unwrap();
    c.execute_batch(
        "INSERT INTO users VALUES ('dave', 'hd', 50), ('carol', 'h2', 200), ('Carol', 'h1', 100), ('CAROL', 'h3', 300);
         INSERT INTO rooms VALUES ('lobby', 0);
         INSERT INTO members VALUES ('lobby', 'carol', 0);
         INSERT INTO conversations VALUES ('carol', 'dave', 2, 2, 2), ('Carol', 'dave', 1, 3, 3);
         INSERT INTO private_messages VALUES
            ('carol', 'dave', 1, 'carol', 'carol', 'dave', 'hi dave', NULL, 1),
            ('carol', 'dave', 2, 'dave', 'dave', 'carol', 'hi carol', NULL, 2),
            ('Carol', 'dave', 1, 'Carol', 'Carol', 'dave', 'I am the other one', NULL, 3);
         INSERT INTO conv_marks VALUES ('carol', 'dave', 2, 0);
         PRAGMA user_version = 1;",
    )
    .unwrap();
    c.execute(
        "INSERT INTO tokens (hash, user, expires_ms, revoked) VALUES (?1, 'carol', 10000, 0)",
        [token_hash("carols-token")],
    )
    .unwrap();
}

#[test]
fn version_1_case_twins_are_renamed_keeping_their_data() {
    let tmp = tempfile::tempdir().unwrap();
    version_1_database_with_case_twins(tmp.path());
    let mut b = open(tmp.path());
    let version: i64 = b.conn().unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, 2);
    // The oldest keeps the name; the others get the first free NAME-n.
    let V::Snapshot { mut users, rooms } = one(&mut b, Op::LoadAll) else { panic!("snapshot") };
    users.sort();
    assert_eq!(users, ["CAROL-3", "Carol", "carol-2", "dave"]);
    assert_eq!(b.password_hash("Carol"), Ok(Some("h1".to_string())));
    assert_eq!(b.password_hash("carol-2"), Ok(Some("h2".to_string())));
    assert_eq!(b.password_hash("CAROL-3"), Ok(Some("h3".to_string())));
    // Nothing was revoked: the token now names the renamed account.
    match one(&mut b, Op::CheckToken { token: "carols-token".into(), now_ms: 1 }) {
        V::TokenUser { user, .. } => assert_eq!(user, "carol-2"),
        other => panic!("{other:?}"),
    }
    let lobby = rooms.iter().find(|r| r.name == "lobby").expect("lobby");
    assert_eq!(lobby.members, ["carol-2"]);
    // The conversation moved with its messages and read mark.
    let (seqs, _) = history(&mut b, conv("carol-2", "dave"), SeqRange::Before { before: None, limit: 10 });
    assert_eq!(seqs, [1, 2]);
    let (seqs, _) = history(&mut b, conv("Carol", "dave"), SeqRange::Before { before: None, limit: 10 });
    assert_eq!(seqs, [1]);
    match one(&mut b, Op::Conversations { user: "carol-2".into(), limit: 10 }) {
        V::Conversations { conversations } => {
            assert_eq!(conversations.len(), 1);
            assert_eq!((conversations[0].with.as_str(), conversations[0].read), ("dave", 2));
        }
        other => panic!("{other:?}"),
    }
    // And from now on the twins cannot come back.
    assert_eq!(b.create_user("CaRoL", "h4", 400), Ok(false));
    drop(b);
    open(tmp.path());
}

#[test]
fn open_fails_cleanly_on_a_file_as_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(SqliteBackend::open(&file), Err(OpenError::Dir { .. })));
}

#[test]
fn seqs_are_gapless_per_target_within_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
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
    let seqs: Vec<u64> = run(&mut b, ops).iter().map(|r| appended(r).0).collect();
    assert_eq!(seqs, [1, 1, 1, 2, 2, 1, 2, 3, 3]);
    // And across batches.
    let seqs: Vec<u64> = run(&mut b, vec![room_append("a", "x", "4", 10), pm("y", "x", "4", 11)])
        .iter()
        .map(|r| appended(r).0)
        .collect();
    assert_eq!(seqs, [4, 4]);
    assert_eq!(history(&mut b, room("a"), SeqRange::Before { before: None, limit: 50 }).0, [1, 2, 3, 4]);
    assert_eq!(history(&mut b, conv("x", "y"), SeqRange::Before { before: None, limit: 50 }).0, [1, 2, 3, 4]);
    assert_eq!(history(&mut b, conv("y", "x"), SeqRange::After { after: 0, limit: 50 }).0, [1, 2, 3, 4]);
    assert_eq!(history(&mut b, conv("z", "x"), SeqRange::After { after: 0, limit: 50 }).0, [1]);
}

#[test]
fn duplicate_client_id_returns_the_first_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    let first = one(&mut b, Op::Append { target: room("r"), message: msg("alice", "hi", Some("c1"), 100) });
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
    let out = run(&mut b, ops);
    assert_eq!(out[0], Ok(V::Appended { seq: 2, ts: 101, duplicate: false }));
    assert_eq!(out[1], Ok(V::Appended { seq: 1, ts: 100, duplicate: true }));
    assert_eq!(out[2], Ok(V::Appended { seq: 3, ts: 104, duplicate: false }));
    assert_eq!(out[3], Ok(V::Appended { seq: 4, ts: 105, duplicate: false }));
    assert_eq!(out[4], Ok(V::Appended { seq: 4, ts: 105, duplicate: true }));
    match one(&mut b, Op::History { target: room("r"), range: SeqRange::Before { before: None, limit: 50 } }) {
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

#[test]
fn history_limits_and_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    run(&mut b, (1..=10).map(|i| room_append("r", "a", &format!("m{i}"), 1000 + i)).collect());
    let h = |b: &mut SqliteBackend, range| history(b, room("r"), range);
    assert_eq!(h(&mut b, SeqRange::Before { before: None, limit: 3 }), (vec![8, 9, 10], Some(1)));
    assert_eq!(h(&mut b, SeqRange::Before { before: Some(5), limit: 3 }).0, [2, 3, 4]);
    assert_eq!(h(&mut b, SeqRange::Before { before: Some(3), limit: 10 }).0, [1, 2]);
    assert_eq!(h(&mut b, SeqRange::Before { before: Some(1), limit: 10 }), (vec![], Some(1)));
    assert_eq!(h(&mut b, SeqRange::Before { before: Some(11), limit: 500 }).0, (1..=10).collect::<Vec<_>>());
    assert_eq!(h(&mut b, SeqRange::Before { before: None, limit: 0 }).0, Vec::<u64>::new());
    // After: the newest `limit` above `after`, oldest first.
    assert_eq!(h(&mut b, SeqRange::After { after: 3, limit: 4 }).0, [7, 8, 9, 10]);
    assert_eq!(h(&mut b, SeqRange::After { after: 8, limit: 10 }).0, [9, 10]);
    assert_eq!(h(&mut b, SeqRange::After { after: 0, limit: 10 }).0, (1..=10).collect::<Vec<_>>());
    assert_eq!(h(&mut b, SeqRange::After { after: 10, limit: 5 }), (vec![], Some(1)));
    assert_eq!(history(&mut b, room("empty"), SeqRange::After { after: 0, limit: 5 }), (vec![], None));
    match one(&mut b, Op::History { target: room("r"), range: SeqRange::Before { before: Some(2), limit: 1 } }) {
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
        &mut b,
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
    match one(&mut b, Op::History { target: conv("alice", "bob#2"), range: SeqRange::After { after: 0, limit: 9 } }) {
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

fn inbox(b: &mut SqliteBackend, user: &str, limit: u32) -> Vec<(String, u64, String)> {
    match one(b, Op::Inbox { user: user.into(), after: 0, limit }) {
        V::Inbox { messages, .. } => messages.into_iter().map(|m| (m.with, m.message.seq, m.message.text)).collect(),
        other => panic!("{other:?}"),
    }
}

fn s(with: &str, seq: u64, text: &str) -> (String, u64, String) {
    (with.into(), seq, text.into())
}

#[test]
fn inbox_respects_ack_and_excludes_own_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    run(
        &mut b,
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
    assert_eq!(inbox(&mut b, "bob", 100), all);
    assert_eq!(inbox(&mut b, "bob", 2), all[..2]);
    assert_eq!(inbox(&mut b, "alice", 100), [s("bob", 3, "own")]);
    one(&mut b, Op::Ack { user: "bob".into(), with: "carol".into(), seq: 2 });
    one(&mut b, Op::Ack { user: "bob".into(), with: "alice".into(), seq: 1 });
    assert_eq!(inbox(&mut b, "bob", 100), [s("alice", 2, "a2"), s("alice", 4, "a4")]);
    // An ack never goes down.
    one(&mut b, Op::Ack { user: "bob".into(), with: "alice".into(), seq: 3 });
    one(&mut b, Op::Ack { user: "bob".into(), with: "alice".into(), seq: 0 });
    assert_eq!(inbox(&mut b, "bob", 100), [s("alice", 4, "a4")]);
    // Acks are per user: alice's view is unchanged.
    assert_eq!(inbox(&mut b, "alice", 100), [s("bob", 3, "own")]);
    assert_eq!(inbox(&mut b, "nobody", 100), []);
    // The inbox carries whole messages.
    match one(&mut b, Op::Inbox { user: "dave".into(), after: 0, limit: 1 }) {
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

#[test]
fn conversations_and_read_marks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    run(
        &mut b,
        vec![
            pm("alice", "bob", "1", 10),
            pm("carol", "alice", "1", 20),
            pm("bob", "alice", "2", 30),
            pm("dave", "alice", "1", 25),
            pm("bob", "carol", "x", 40),
        ],
    );
    let summary = |with: &str, seq, read| ConversationSummary { with: with.into(), seq, read };
    let list = |b: &mut SqliteBackend, limit| one(b, Op::Conversations { user: "alice".into(), limit });
    // Most recent first means most recently stored: dave's message was
    // stored last even though its clock reading (25) is older than bob's
    // (30), so a clock that steps back cannot reorder the list.
    assert_eq!(
        list(&mut b, 10),
        V::Conversations { conversations: vec![summary("dave", 1, 0), summary("bob", 2, 0), summary("carol", 1, 0)] }
    );
    assert_eq!(list(&mut b, 1), V::Conversations { conversations: vec![summary("dave", 1, 0)] });
    run(
        &mut b,
        vec![
            Op::Read { user: "alice".into(), target: conv("alice", "bob"), seq: 2 },
            Op::Read { user: "alice".into(), target: conv("alice", "bob"), seq: 1 },
            Op::Read { user: "alice".into(), target: conv("alice", "carol"), seq: 1 },
            // The reader given second still works.
            Op::Read { user: "alice".into(), target: conv("dave", "alice"), seq: 1 },
        ],
    );
    assert_eq!(
        list(&mut b, 10),
        V::Conversations { conversations: vec![summary("dave", 1, 1), summary("bob", 2, 2), summary("carol", 1, 1)] }
    );
    // Reading is not acking.
    assert_eq!(inbox(&mut b, "alice", 10).len(), 3);
    // Bob's marks are his own.
    assert_eq!(
        one(&mut b, Op::Conversations { user: "bob".into(), limit: 10 }),
        V::Conversations { conversations: vec![summary("carol", 1, 0), summary("alice", 2, 0)] }
    );
}

#[test]
fn membership_room_read_marks_and_load_all() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    assert_eq!(one(&mut b, Op::LoadAll), V::Snapshot { users: vec![], rooms: vec![] });
    assert!(b.create_user("bob", "h1", 1).unwrap());
    assert!(b.create_user("alice", "h2", 2).unwrap());
    let out = run(
        &mut b,
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
        one(&mut b, Op::ReadMarks { user: "alice".into() }),
        V::ReadMarks { marks: vec![("dev".into(), 0), ("lobby".into(), 2)] }
    );
    assert_eq!(one(&mut b, Op::ReadMarks { user: "bob".into() }), V::ReadMarks { marks: vec![("lobby".into(), 1)] });
    assert_eq!(one(&mut b, Op::ReadMarks { user: "carol".into() }), V::ReadMarks { marks: vec![] });
    let stored = |name: &str, seq, members: &[&str]| StoredRoom {
        name: name.into(),
        seq,
        members: members.iter().map(|m| m.to_string()).collect(),
    };
    assert_eq!(
        one(&mut b, Op::LoadAll),
        V::Snapshot {
            users: vec!["alice".into(), "bob".into()],
            rooms: vec![stored("dev", 0, &["alice"]), stored("lobby", 2, &["alice", "bob"]), stored("quiet", 1, &[])],
        }
    );
    run(&mut b, vec![Op::Leave { user: "bob".into(), room: "lobby".into() }]);
    match one(&mut b, Op::LoadAll) {
        V::Snapshot { rooms, .. } => assert_eq!(rooms[1], stored("lobby", 2, &["alice"])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn users_tokens_expiry_and_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    assert_eq!(b.password_hash("alice").unwrap(), None);
    assert!(b.create_user("alice", "hash-a", 1).unwrap());
    assert!(!b.create_user("alice", "hash-b", 2).unwrap());
    assert_eq!(b.password_hash("alice").unwrap().as_deref(), Some("hash-a"));
    let (t1, h1) = super::super::password::new_token();
    let (t2, h2) = super::super::password::new_token();
    b.create_token(&h1, "alice", 1000).unwrap();
    b.create_token(&h2, "alice", 5000).unwrap();
    // Only the hash is stored.
    let stored: Vec<String> = b
        .conn()
        .unwrap()
        .prepare("SELECT hash FROM tokens ORDER BY expires_ms")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, [h1.clone(), h2.clone()]);
    let check = |b: &mut SqliteBackend, token: &str, now_ms| one(b, Op::CheckToken { token: token.into(), now_ms });
    assert_eq!(check(&mut b, &t1, 999), V::TokenUser { user: "alice".into(), expires_ms: 1000 });
    assert_eq!(check(&mut b, &t1, 1000), V::Rejected);
    assert_eq!(check(&mut b, &h1, 10), V::Rejected, "the stored hash is not a token");
    assert_eq!(check(&mut b, "nope", 10), V::Rejected);
    assert_eq!(check(&mut b, "", 10), V::Rejected);
    assert_eq!(one(&mut b, Op::Revoke { token: t2.clone() }), V::Revoked { user: Some("alice".into()) });
    assert_eq!(check(&mut b, &t2, 10), V::Rejected);
    assert_eq!(one(&mut b, Op::Revoke { token: t2 }), V::Revoked { user: Some("alice".into()) });
    assert_eq!(one(&mut b, Op::Revoke { token: "unknown".into() }), V::Revoked { user: None });
    assert_eq!(check(&mut b, &t1, 999), V::TokenUser { user: "alice".into(), expires_ms: 1000 });
}

#[test]
fn password_ops_are_refused_in_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    let out = run(
        &mut b,
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

#[test]
fn a_failing_operation_fails_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    b.conn
        .as_ref()
        .unwrap()
        .execute_batch(
            "CREATE TEMP TRIGGER refuse BEFORE INSERT ON room_messages WHEN NEW.text = 'bad'
             BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .unwrap();
    let out = run(
        &mut b,
        vec![
            room_append("r", "a", "ok", 1),
            room_append("r", "a", "bad", 2),
            Op::Join { user: "a".into(), room: "r".into() },
            room_append("r", "a", "ok", 3),
        ],
    );
    assert_eq!(appended(&out[0]).0, 1);
    assert_eq!(out[1], Err(StoreError::Backend(StoreFailure::Other)));
    assert_eq!(out[2], Ok(V::Done));
    // The failed append's seq was rolled back with it: no gap.
    assert_eq!(appended(&out[3]).0, 2);
    assert_eq!(history(&mut b, room("r"), SeqRange::After { after: 0, limit: 9 }).0, [1, 2]);
}

#[test]
fn a_failing_transaction_commits_nothing_and_the_backend_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    run(&mut b, vec![room_append("r", "a", "before", 1), Op::Join { user: "a".into(), room: "r".into() }]);
    // A full disk: the database may not grow.
    let conn = b.conn.as_ref().unwrap();
    let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0)).unwrap();
    conn.pragma_update(None, "max_page_count", pages).unwrap();
    let huge = "x".repeat(1 << 20);
    let out = run(
        &mut b,
        vec![
            room_append("r", "a", "small", 2),
            Op::Join { user: "b".into(), room: "r".into() },
            Op::History { target: room("r"), range: SeqRange::After { after: 0, limit: 10 } },
            room_append("r", "a", &huge, 3),
            Op::Read { user: "a".into(), target: room("r"), seq: 1 },
            Op::ReadMarks { user: "a".into() },
        ],
    );
    let io = Err(StoreError::Backend(StoreFailure::Io));
    assert_eq!(out[0], io);
    assert_eq!(out[1], io);
    assert_eq!(out[3], io);
    assert_eq!(out[4], io);
    // Reads are run again alone and see only what is committed.
    match &out[2] {
        Ok(V::Messages { messages, .. }) => assert_eq!(messages.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(out[5], Ok(V::ReadMarks { marks: vec![("r".into(), 0)] }));
    // The connection is reopened (without the limit) and works again; the
    // failed appends left no gap.
    let out = run(&mut b, vec![room_append("r", "a", "after", 4), room_append("r", "a", &huge, 5)]);
    assert_eq!(appended(&out[0]).0, 2);
    assert_eq!(appended(&out[1]).0, 3);
    match one(&mut b, Op::LoadAll) {
        V::Snapshot { rooms, .. } => {
            assert_eq!(rooms, [StoredRoom { name: "r".into(), seq: 3, members: vec!["a".into()] }])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_vanished_database_is_not_recreated() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    run(&mut b, vec![room_append("r", "a", "1", 1)]);
    b.conn = None; // as after an I/O failure
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let out = run(&mut b, vec![room_append("r", "a", "2", 2), Op::LoadAll]);
    assert_eq!(out, [Err(StoreError::Backend(StoreFailure::Io)), Err(StoreError::Backend(StoreFailure::Io))]);
    assert!(!tmp.path().join(DB_FILE).exists());
    assert_eq!(b.password_hash("a"), Err(StoreError::Backend(StoreFailure::Io)));
}

#[cfg(unix)]
#[test]
fn a_read_only_database_recovers_when_writable_again() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    run(&mut b, vec![room_append("r", "a", "1", 1)]);
    b.conn = None; // closes it, so that the next use reopens
    let set_mode = |mode| {
        for entry in std::fs::read_dir(tmp.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode | 0o100)).unwrap();
    };
    set_mode(0o444);
    if std::fs::OpenOptions::new().append(true).open(tmp.path().join(DB_FILE)).is_ok() {
        set_mode(0o644);
        eprintln!("running as root: permissions are not enforced, skipping");
        return;
    }
    let out = run(
        &mut b,
        vec![
            room_append("r", "a", "2", 2),
            Op::History { target: room("r"), range: SeqRange::After { after: 0, limit: 9 } },
        ],
    );
    set_mode(0o644);
    assert_eq!(out[0], Err(StoreError::Backend(StoreFailure::Io)), "{out:?}");
    let out = run(&mut b, vec![room_append("r", "a", "3", 3)]);
    assert_eq!(appended(&out[0]).0, 2);
}

#[test]
fn data_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (token, hash) = super::super::password::new_token();
    {
        let mut b = open(tmp.path());
        b.create_user("alice", "h", 1).unwrap();
        b.create_token(&hash, "alice", 100).unwrap();
        run(
            &mut b,
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
    let mut b = open(tmp.path());
    assert_eq!(
        one(&mut b, Op::LoadAll),
        V::Snapshot {
            users: vec!["alice".into()],
            rooms: vec![StoredRoom { name: "lobby".into(), seq: 2, members: vec!["alice".into()] }],
        }
    );
    assert_eq!(
        one(&mut b, Op::CheckToken { token, now_ms: 5 }),
        V::TokenUser { user: "alice".into(), expires_ms: 100 }
    );
    assert_eq!(one(&mut b, Op::ReadMarks { user: "alice".into() }), V::ReadMarks { marks: vec![("lobby".into(), 2)] });
    assert_eq!(inbox(&mut b, "alice", 10), []);
    assert_eq!(
        one(&mut b, Op::Conversations { user: "alice".into(), limit: 10 }),
        V::Conversations { conversations: vec![ConversationSummary { with: "bob".into(), seq: 1, read: 1 }] }
    );
    // The counters and the dedup go on where they were.
    let out = run(
        &mut b,
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

#[test]
fn failure_kinds() {
    let err = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    assert_eq!(failure_kind(&err(rusqlite::ffi::SQLITE_FULL)), StoreFailure::Io);
    assert_eq!(failure_kind(&err(rusqlite::ffi::SQLITE_READONLY)), StoreFailure::Io);
    assert_eq!(failure_kind(&err(rusqlite::ffi::SQLITE_IOERR)), StoreFailure::Io);
    assert_eq!(failure_kind(&err(rusqlite::ffi::SQLITE_CANTOPEN)), StoreFailure::Io);
    assert_eq!(failure_kind(&err(rusqlite::ffi::SQLITE_BUSY)), StoreFailure::Busy);
    assert_eq!(failure_kind(&err(rusqlite::ffi::SQLITE_LOCKED)), StoreFailure::Busy);
    assert_eq!(failure_kind(&err(rusqlite::ffi::SQLITE_CORRUPT)), StoreFailure::Other);
    assert_eq!(failure_kind(&rusqlite::Error::QueryReturnedNoRows), StoreFailure::Other);
}

fn send(b: &mut SqliteBackend, target: Target, sender: &str, text: &str, id: &str, ts: u64) -> V {
    one(b, Op::Append { target, message: msg(sender, text, Some(id), ts) })
}

#[test]
fn client_ids_are_scoped_to_their_room_or_conversation() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    assert_eq!(send(&mut b, room("lobby"), "ann", "hi", "c-1", 1), V::Appended { seq: 1, ts: 1, duplicate: false });
    // The same id in another room names another message.
    assert_eq!(send(&mut b, room("design"), "ann", "yo", "c-1", 2), V::Appended { seq: 1, ts: 2, duplicate: false });
    // And in a conversation.
    assert_eq!(
        send(&mut b, conv("ann", "bob"), "ann", "psst", "c-1", 3),
        V::Appended { seq: 1, ts: 3, duplicate: false }
    );
    // A retry (same target, same text) is the first message.
    assert_eq!(send(&mut b, room("design"), "ann", "yo", "c-1", 4), V::Appended { seq: 1, ts: 2, duplicate: true });
    assert_eq!(
        send(&mut b, conv("bob", "ann"), "ann", "psst", "c-1", 5),
        V::Appended { seq: 1, ts: 3, duplicate: true }
    );
    // The same id with other text is not a retry: stored, and the id names it now.
    assert_eq!(send(&mut b, room("lobby"), "ann", "other", "c-1", 6), V::Appended { seq: 2, ts: 6, duplicate: false });
    assert_eq!(send(&mut b, room("lobby"), "ann", "other", "c-1", 7), V::Appended { seq: 2, ts: 6, duplicate: true });
    let h = one(&mut b, Op::History { target: room("lobby"), range: SeqRange::After { after: 0, limit: 9 } });
    assert!(matches!(h, V::Messages { ref messages, .. } if messages.len() == 2), "{h:?}");
}

#[test]
fn a_guest_incarnation_never_inherits_another_ones_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    assert_eq!(send(&mut b, room("r"), "ann#1.1", "hi", "c-1", 1), V::Appended { seq: 1, ts: 1, duplicate: false });
    // A later guest called ann, moments later: someone else.
    assert_eq!(send(&mut b, room("r"), "ann#1.2", "hi", "c-1", 2), V::Appended { seq: 2, ts: 2, duplicate: false });
    // The registered ann too.
    assert_eq!(send(&mut b, room("r"), "ann", "hi", "c-1", 3), V::Appended { seq: 3, ts: 3, duplicate: false });
    // The first guest (resumed) is still recognised.
    assert_eq!(send(&mut b, room("r"), "ann#1.1", "hi", "c-1", 4), V::Appended { seq: 1, ts: 1, duplicate: true });
}

#[test]
fn a_guest_name_taken_again_continues_the_conversation_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    let to_bob = |sender: &str, text: &str| Op::Append {
        target: conv(sender, "bob"),
        message: NewMessage { to: Some("bob".into()), inbox: Some(BOUND), ..msg(sender, text, None, 1) },
    };
    assert_eq!(appended(&run(&mut b, vec![to_bob("gwen#1.1", "one")])[0]), (1, false));
    assert_eq!(appended(&run(&mut b, vec![to_bob("gwen#1.1", "two")])[0]), (2, false));
    // Another guest gwen: bob knows this conversation as "gwen", so its seq
    // goes on rather than starting again at 1.
    assert_eq!(appended(&run(&mut b, vec![to_bob("Gwen#1.7", "three")])[0]), (3, false));
    // Its history holds only its own messages.
    match one(&mut b, Op::History { target: conv("bob", "Gwen#1.7"), range: SeqRange::After { after: 0, limit: 9 } }) {
        V::Messages { messages, .. } => assert_eq!(messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]),
        other => panic!("{other:?}"),
    }
    // Unrelated pairs start at 1.
    assert_eq!(appended(&run(&mut b, vec![to_bob("gwenda#1.2", "x")])[0]), (1, false));
}

#[test]
fn inbox_bounds_per_sender_and_per_recipient() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    let bound = InboxBound { per_sender: 3, per_recipient: 5 };
    let to_bob = |sender: &str, n: u64| Op::Append {
        target: conv(sender, "bob"),
        message: NewMessage { to: Some("bob".into()), inbox: Some(bound), ..msg(sender, "x", None, n) },
    };
    for n in 1..=3 {
        assert_eq!(appended(&run(&mut b, vec![to_bob("ann", n)])[0]), (n, false));
    }
    assert_eq!(one(&mut b, to_bob("ann", 4)), V::InboxFull { limit: InboxLimit::PerSender });
    for n in 1..=2 {
        assert_eq!(appended(&run(&mut b, vec![to_bob("cat", n)])[0]), (n, false));
    }
    assert_eq!(one(&mut b, to_bob("dan", 1)), V::InboxFull { limit: InboxLimit::PerRecipient });
    // Nothing of a refused message was stored.
    assert_eq!(inbox(&mut b, "bob", 100).len(), 5);
    // Reading makes room.
    one(&mut b, Op::Ack { user: "bob".into(), with: "ann".into(), seq: 2 });
    assert_eq!(appended(&run(&mut b, vec![to_bob("dan", 1)])[0]), (1, false));
    assert_eq!(appended(&run(&mut b, vec![to_bob("ann", 5)])[0]), (4, false));
    assert_eq!(one(&mut b, to_bob("eve", 1)), V::InboxFull { limit: InboxLimit::PerRecipient });
}

#[test]
fn the_inbox_reads_in_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    run(&mut b, (0..7).map(|n| pm(&format!("s{}", n % 3), "bob", &n.to_string(), n)).collect());
    let mut after = 0;
    let mut texts = Vec::new();
    loop {
        let V::Inbox { messages, cursor } = one(&mut b, Op::Inbox { user: "bob".into(), after, limit: 3 }) else {
            panic!()
        };
        if messages.is_empty() {
            assert_eq!(cursor, after);
            break;
        }
        texts.extend(messages.into_iter().map(|m| m.message.text));
        after = cursor;
    }
    assert_eq!(texts, ["0", "1", "2", "3", "4", "5", "6"]);
}

#[test]
fn old_client_ids_are_purged_by_age_and_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    for n in 0..10 {
        send(&mut b, room("r"), "ann", &n.to_string(), &format!("c-{n}"), n * 1_000);
    }
    let conn = b.conn().unwrap();
    let count = |c: &Connection| c.query_row("SELECT count(*) FROM client_ids", [], |r| r.get::<_, i64>(0)).unwrap();
    let options =
        SqliteOptions { id_retention: Duration::from_millis(4_500), max_ids: 100, ..SqliteOptions::default() };
    // At 9.5 s, ids from before 5 s are past the retention.
    assert_eq!(purge_ids(conn, 9_500, &options).unwrap(), 5);
    assert_eq!(count(conn), 5);
    let options = SqliteOptions { max_ids: 2, ..options };
    assert_eq!(purge_ids(conn, 9_500, &options).unwrap(), 3);
    assert_eq!(count(conn), 2);
    // The newest are kept: a retry of the last message is still recognised.
    assert_eq!(send(&mut b, room("r"), "ann", "9", "c-9", 20_000), V::Appended { seq: 10, ts: 9_000, duplicate: true });
}

#[cfg(unix)]
#[test]
fn the_database_is_readable_by_its_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = open(&dir);
    one(&mut b, room_append("r", "ann", "hi", 1));
    for file in [DB_FILE.to_string(), format!("{DB_FILE}-wal")] {
        let mode = std::fs::metadata(dir.join(&file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
    }
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o077, 0);
    // A file an older build made world-readable is tightened at open.
    drop(b);
    std::fs::set_permissions(dir.join(DB_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
    let _b = open(&dir);
    assert_eq!(std::fs::metadata(dir.join(DB_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_version_1_database_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(DB_FILE);
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(include_str!("v1_schema.sql")).unwrap();
        c.execute_batch(
            "INSERT INTO users VALUES ('bob', 'h', 1), ('ann', 'h', 1);
             INSERT INTO rooms VALUES ('lobby', 1);
             INSERT INTO room_messages VALUES ('lobby', 1, 'ann', 'ann', 'hi', 'c-1', 1000);
             INSERT INTO conversations VALUES ('ann', 'bob', 3, 1003, 1), ('bob', 'gwen#1.1', 1, 1004, 2);
             INSERT INTO private_messages VALUES
                ('ann', 'bob', 1, 'ann', 'ann', 'bob', 'one', 'c-1', 1001),
                ('ann', 'bob', 2, 'bob', 'bob', 'ann', 'two', NULL, 1002),
                ('ann', 'bob', 3, 'ann', 'ann', 'bob', 'three', NULL, 1003),
                ('bob', 'gwen#1.1', 1, 'gwen#1.1', 'gwen', 'bob', 'g', NULL, 1004);
             INSERT INTO conv_marks VALUES ('bob', 'ann', 0, 1);
             INSERT INTO client_ids VALUES ('ann', 'c-1', 1, 1001);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut b = open(tmp.path());
    // What bob has not acknowledged is his inbox, in order.
    assert_eq!(inbox(&mut b, "bob", 100), [s("ann", 3, "three"), s("gwen#1.1", 1, "g")]);
    assert_eq!(inbox(&mut b, "ann", 100), [s("bob", 2, "two")]);
    // Ids are now scoped: c-1 is known in lobby and in ann–bob, separately.
    assert_eq!(
        send(&mut b, room("lobby"), "ann", "hi", "c-1", 2000),
        V::Appended { seq: 1, ts: 1000, duplicate: true }
    );
    assert_eq!(
        send(&mut b, conv("ann", "bob"), "ann", "one", "c-1", 2001),
        V::Appended { seq: 1, ts: 1001, duplicate: true }
    );
    // A new guest gwen continues bob's conversation with "gwen".
    let next = one(
        &mut b,
        Op::Append {
            target: conv("gwen#2.1", "bob"),
            message: NewMessage { to: Some("bob".into()), ..msg("gwen#2.1", "again", None, 3000) },
        },
    );
    assert!(matches!(next, V::Appended { seq: 2, .. }), "{next:?}");
}
