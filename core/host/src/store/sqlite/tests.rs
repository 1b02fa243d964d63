use super::*;
use natter_core::store::StoreOp as Op;
use natter_core::store::StoreValue as V;

use crate::store::contract::{appended, conv, history, inbox, msg, one, room, room_append, run, s, send};

fn open(dir: &Path) -> SqliteBackend {
    SqliteBackend::open(dir).expect("open")
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
fn tokens_are_stored_as_their_hash_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = open(tmp.path());
    assert!(b.create_user("alice", "hash-a", 1).unwrap());
    let (t1, h1) = super::super::password::new_token();
    b.create_token(&h1, "alice", 1000).unwrap();
    let stored: Vec<String> = b
        .conn()
        .unwrap()
        .prepare("SELECT hash FROM tokens")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, [h1]);
    assert_ne!(stored[0], t1);
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
    assert_eq!(out[5], Ok(V::ReadMarks { marks: vec![("r".into(), 0, 1)] }));
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
