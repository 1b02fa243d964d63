//! What is about PostgreSQL itself: the schema version, failures of the
//! server and its connections, and several nodes on one database. The
//! behaviour of the operations is the contract suite's (`store/contract.rs`).

use super::*;
use crate::store::contract::postgres::{server_url, FreshDatabase};
use crate::store::contract::{appended, history, msg, one, room, room_append, run, Fixture};
use natter_core::store::{SeqRange, StoreOp as Op};

fn admin() -> Client {
    Client::connect(&server_url(), NoTls).expect("connect to NATTER_TEST_POSTGRES")
}

fn quick() -> PostgresOptions {
    PostgresOptions { pool_size: 2, connect_timeout: Duration::from_secs(1), ..PostgresOptions::default() }
}

#[test]
fn open_creates_the_schema_once_and_refuses_a_newer_one() {
    let mut db = FreshDatabase::new();
    let mut client = Client::connect(&db.url, NoTls).unwrap();
    let version: i64 = client.query_one("SELECT version FROM schema_version", &[]).unwrap().get(0);
    assert_eq!(version, POSTGRES_SCHEMA_VERSION);
    // Opening again (another node, a restart) changes nothing.
    db.reopen();
    assert_eq!(appended(&run(db.backend(), vec![room_append("r", "a", "1", 1)])[0]), (1, false));
    db.backend = None;
    // A version 1 database (before guest name claims) is brought to 2.
    client.batch_execute("DROP TABLE guest_claims; UPDATE schema_version SET version = 1").unwrap();
    db.reopen();
    let claim = natter_core::store::StoreOp::ClaimGuest { name: "Zed".into(), node: 1, alive: None };
    assert_eq!(run(db.backend(), vec![claim])[0], Ok(natter_core::store::StoreValue::Claimed(true)));
    let version: i64 = client.query_one("SELECT version FROM schema_version", &[]).unwrap().get(0);
    assert_eq!(version, 2);
    db.backend = None;
    client.execute("UPDATE schema_version SET version = 99", &[]).unwrap();
    match PostgresBackend::open(&db.url) {
        Err(e @ PostgresOpenError::TooNew { found: 99, supported: POSTGRES_SCHEMA_VERSION, .. }) => {
            let line = e.to_string();
            assert!(line.contains("schema version 99") && line.contains("up to 2"), "{line}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_an_open_error_within_the_connect_timeout() {
    let started = Instant::now();
    // Port 1 on loopback: nothing listens, the connection is refused.
    match PostgresBackend::open_with("postgres://natter:secret@127.0.0.1:1/natter", quick()) {
        Err(e @ PostgresOpenError::Connect { .. }) => {
            let line = e.to_string();
            assert!(line.contains("127.0.0.1:1/natter"), "{line}");
            assert!(!line.contains("secret"), "the password is never shown: {line}");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(matches!(PostgresBackend::open("postgres://[nope"), Err(PostgresOpenError::Url(_))));
}

#[test]
fn a_failing_operation_fails_alone() {
    let mut db = FreshDatabase::new();
    let mut client = Client::connect(&db.url, NoTls).unwrap();
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON room_messages
                 FOR EACH ROW WHEN (NEW.text = 'bad') EXECUTE FUNCTION refuse();",
        )
        .unwrap();
    let b = db.backend();
    let out = run(
        b,
        vec![
            room_append("r", "a", "ok", 1),
            room_append("r", "a", "bad", 2),
            Op::Join { user: "a".into(), room: "r".into() },
            room_append("r", "a", "ok", 3),
        ],
    );
    assert_eq!(appended(&out[0]).0, 1);
    assert_eq!(out[1], Err(StoreError::Backend(StoreFailure::Other)));
    assert_eq!(out[2], Ok(StoreValue::Done));
    // The failed append's seq was rolled back with it: no gap.
    assert_eq!(appended(&out[3]).0, 2);
    assert_eq!(history(b, room("r"), SeqRange::After { after: 0, limit: 9 }).0, [1, 2]);
}

/// Ends every session of ours on `db` (not the server's own workers, such
/// as autovacuum), as a server restart does, and waits until they are gone
/// (a terminated backend exits a moment later).
fn terminate_sessions(db: &str) {
    let mut admin = admin();
    let pids: Vec<i32> = admin
        .query("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = current_user", &[&db])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // `false` for a session that ended by itself meanwhile.
    admin.execute("SELECT pg_terminate_backend(pid, 10000) FROM unnest($1::int[]) AS pid", &[&pids]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids])
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(Instant::now() < deadline, "the sessions on {db} did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_connection_the_server_closed_is_replaced_without_a_failure() {
    let mut db = FreshDatabase::new();
    assert_eq!(appended(&run(db.backend(), vec![room_append("r", "a", "1", 1)])[0]), (1, false));
    terminate_sessions(&db.name);
    let out = run(db.backend(), vec![room_append("r", "a", "2", 2), Op::LoadAll]);
    assert_eq!(appended(&out[0]), (2, false));
    assert!(out[1].is_ok(), "{out:?}");
}

#[test]
fn while_the_database_is_unreachable_everything_fails_then_service_resumes() {
    let mut db = FreshDatabase::new();
    db.backend = Some(PostgresBackend::open_with(&db.url, quick()).unwrap());
    let b = db.backend.as_mut().unwrap();
    let metrics = Arc::new(Metrics::default());
    b.attach_metrics(Arc::clone(&metrics));
    let down_now = || metrics.database_down.load(Relaxed);
    assert_eq!(appended(&run(b, vec![room_append("r", "a", "1", 1)])[0]), (1, false));
    assert!(!down_now());
    assert!(metrics.database_pool_size.load(Relaxed) >= 1);
    assert_eq!(metrics.database_pool_in_use.load(Relaxed), 0, "nothing is checked out between batches");
    let name = db.name.clone();
    admin().batch_execute(&format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")).unwrap();
    terminate_sessions(&name);
    let started = Instant::now();
    let out = run(
        b,
        vec![
            room_append("r", "a", "lost", 2),
            Op::History { target: room("r"), range: SeqRange::After { after: 0, limit: 9 } },
            Op::Join { user: "a".into(), room: "r".into() },
        ],
    );
    let down = StoreError::Backend(StoreFailure::Io);
    assert_eq!(out, [Err(down.clone()), Err(down.clone()), Err(down.clone())]);
    assert_eq!(b.password_hash("a"), Err(down.clone()));
    assert_eq!(b.create_user("a", "h", 1), Err(down));
    assert!(started.elapsed() < Duration::from_secs(10), "failing took {:?}", started.elapsed());
    assert!(down_now(), "a batch that could not reach the server says so");
    b.probe();
    assert!(down_now(), "so does the idle probe");
    admin().batch_execute(&format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")).unwrap();
    b.probe();
    assert!(!down_now(), "the idle probe finds the server back without traffic");
    // Back by itself, and the failed append took no seq.
    let out = run(b, vec![room_append("r", "a", "2", 3)]);
    assert_eq!(appended(&out[0]), (2, false));
    assert_eq!(history(b, room("r"), SeqRange::After { after: 0, limit: 9 }).0, [1, 2]);
}

#[test]
fn two_nodes_on_one_database_share_seqs_and_client_ids() {
    // Two backends on one database are two nodes. Each sends the same
    // messages with the same client ids (a client retrying everything on
    // another node) while a third stream without ids goes through both:
    // every message is stored once, every id answers with one seq on both,
    // and the room's seqs are gapless.
    let db = FreshDatabase::new();
    let url = db.url.clone();
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 5;
    let node = |name: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut b = PostgresBackend::open(&url).expect("open");
            let mut seen = Vec::new();
            for batch in 0..BATCHES {
                let mut ops: Vec<Op> = (0..PER_BATCH)
                    .map(|i| {
                        let n = batch * PER_BATCH + i;
                        Op::Append {
                            target: room("r"),
                            message: msg("ann", &format!("t{n}"), Some(&format!("m{n}")), n as u64),
                        }
                    })
                    .collect();
                ops.push(room_append("r", name, &format!("{name}{batch}"), 0));
                let out = run(&mut b, ops);
                for (i, result) in out[..PER_BATCH].iter().enumerate() {
                    seen.push((batch * PER_BATCH + i, appended(result)));
                }
                appended(&out[PER_BATCH]);
            }
            seen
        })
    };
    let (a, b) = (node("a"), node("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    for ((n, (seq_a, dup_a)), (m, (seq_b, dup_b))) in a.iter().zip(&b) {
        assert_eq!(n, m);
        assert_eq!(seq_a, seq_b, "message {n} has one seq on both nodes");
        assert!(dup_a != dup_b, "message {n} is stored by exactly one node");
    }
    let mut b = PostgresBackend::open(&url).unwrap();
    let total = (BATCHES * PER_BATCH + 2 * BATCHES) as u64;
    let (seqs, _) = history(&mut b, room("r"), SeqRange::After { after: 0, limit: 10_000 });
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let StoreValue::Snapshot { rooms, .. } = one(&mut b, Op::LoadAll) else { panic!("snapshot") };
    assert_eq!(rooms[0].seq, total);
}

#[test]
fn failure_kinds() {
    // Without a server answering: a refused connection is the database
    // being unreachable.
    let Err(e) = Client::connect("postgres://natter@127.0.0.1:1/natter?connect_timeout=1", NoTls) else {
        panic!("nothing listens on port 1")
    };
    assert_eq!(failure_kind(&e), StoreFailure::Io);
    let mut client = admin();
    let db_error = |client: &mut Client, sql: &str| client.batch_execute(sql).unwrap_err();
    let e = db_error(&mut client, "SELECT 1/0");
    assert_eq!(failure_kind(&e), StoreFailure::Other);
    let e = db_error(&mut client, "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$");
    assert_eq!(failure_kind(&e), StoreFailure::Busy);
    let e = db_error(&mut client, "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '53100'; END $$");
    assert_eq!(failure_kind(&e), StoreFailure::Io);
}

#[test]
fn two_nodes_writing_the_same_rows_in_opposite_orders_never_deadlock() {
    // Each node's batches append to three rooms, a conversation and an
    // inbox in an order the other node reverses: locked one by one, two such
    // transactions wait for each other. The rows exist before (a new row's
    // first insert is not covered).
    let db = FreshDatabase::new();
    let url = db.url.clone();
    let mut seed = PostgresBackend::open(&url).unwrap();
    let rooms = ["r1", "r2", "r3"];
    let mut ops: Vec<Op> = rooms.iter().map(|r| room_append(r, "x", "seed", 0)).collect();
    ops.push(crate::store::contract::pm("ann", "bob", "seed", 0));
    assert!(run(&mut seed, ops).iter().all(Result::is_ok));
    const BATCHES: usize = 30;
    let node = |reverse: bool| {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut b = PostgresBackend::open(&url).expect("open");
            for batch in 0..BATCHES {
                let mut ops: Vec<Op> = rooms.iter().map(|r| room_append(r, "x", &batch.to_string(), 0)).collect();
                ops.insert(1, crate::store::contract::pm("ann", "bob", &batch.to_string(), 0));
                ops.push(Op::Ack { user: "bob".into(), with: "ann".into(), seq: 1 });
                if reverse {
                    ops.reverse();
                }
                let out = run(&mut b, ops);
                assert!(out.iter().all(Result::is_ok), "{out:?}");
            }
            b.busy_retries()
        })
    };
    let (a, b) = (node(false), node(true));
    assert_eq!((a.join().unwrap(), b.join().unwrap()), (0, 0), "no batch had to run again");
    for r in rooms {
        let (seqs, _) = history(&mut seed, room(r), SeqRange::After { after: 0, limit: 1000 });
        assert_eq!(seqs, (1..=1 + 2 * BATCHES as u64).collect::<Vec<_>>());
    }
}
