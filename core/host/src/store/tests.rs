use super::*;
use natter_core::store::{NewMessage, SeqRange, Target};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::Duration;

/// Records every sink call.
#[derive(Default)]
struct Collector {
    calls: Mutex<Vec<Vec<StoreDone>>>,
    changed: Condvar,
}

impl Collector {
    fn sink(self: &Arc<Self>) -> Sink {
        let me = Arc::clone(self);
        Arc::new(move |done| {
            me.calls.lock().unwrap().push(done);
            me.changed.notify_all();
        })
    }

    /// All completions so far, once there are at least `n`.
    fn wait(&self, n: usize) -> Vec<StoreDone> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut calls = self.calls.lock().unwrap();
        loop {
            let all: Vec<StoreDone> = calls.iter().flatten().cloned().collect();
            if all.len() >= n {
                return all;
            }
            let left = deadline.checked_duration_since(Instant::now()).expect("timed out waiting for completions");
            calls = self.changed.wait_timeout(calls, left).unwrap().0;
        }
    }

    fn calls(&self) -> Vec<Vec<StoreDone>> {
        self.calls.lock().unwrap().clone()
    }

    /// The result for `id`, waiting for it.
    fn result(&self, id: u64) -> Result<StoreValue, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(d) = self.calls().into_iter().flatten().find(|d| d.id == StoreReqId(id)) {
                return d.result;
            }
            assert!(Instant::now() < deadline, "no completion for {id}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn req(id: u64, op: StoreOp) -> StoreRequest {
    StoreRequest { id: StoreReqId(id), op }
}

fn append(room: &str, text: &str) -> StoreOp {
    StoreOp::Append {
        target: Target::Room(room.into()),
        message: NewMessage {
            sender: "u".into(),
            from: "u".into(),
            to: None,
            text: text.into(),
            client_id: None,
            ts: 1,
            inbox: None,
        },
    }
}

fn sqlite(dir: &tempfile::TempDir) -> SqliteBackend {
    SqliteBackend::open(dir.path()).unwrap()
}

#[test]
fn completions_come_in_submission_order_and_reads_see_earlier_writes() {
    submission_order_holds(DEFAULT_COMMIT_WINDOW);
}

#[test]
fn completions_come_in_submission_order_without_a_commit_window_and_with_a_long_one() {
    submission_order_holds(Duration::ZERO);
    submission_order_holds(Duration::from_millis(20));
}

fn submission_order_holds(window: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let metrics = Arc::new(Metrics::default());
    let config = StoreConfig { commit_window: window, ..StoreConfig::new(10_000) };
    let store = spawn_store_with(sqlite(&tmp), collector.sink(), Arc::clone(&metrics), config).unwrap();
    let rooms = ["a", "b", "c"];
    let mut expected = Vec::new(); // (is_history, room, count after)
    let mut counts = [0u64; 3];
    let mut id = 0;
    for chunk in 0..40 {
        let mut requests = Vec::new();
        for i in 0..25 {
            let r = (chunk + i) % 3;
            let op = if i % 4 == 3 {
                expected.push((true, r, counts[r]));
                StoreOp::History {
                    target: Target::Room(rooms[r].into()),
                    range: SeqRange::After { after: 0, limit: 1000 },
                }
            } else {
                counts[r] += 1;
                expected.push((false, r, counts[r]));
                append(rooms[r], &format!("{id}"))
            };
            requests.push(req(id, op));
            id += 1;
        }
        store.submit(requests);
        if chunk % 7 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    store.shutdown();
    let calls = collector.calls();
    let all: Vec<StoreDone> = calls.iter().flatten().cloned().collect();
    let ids: Vec<u64> = all.iter().map(|d| d.id.0).collect();
    assert_eq!(ids, (0..id).collect::<Vec<_>>());
    for (d, (history, _, count)) in all.iter().zip(&expected) {
        match (&d.result, history) {
            (Ok(StoreValue::Messages { messages, .. }), true) => {
                assert_eq!(messages.len() as u64, *count)
            }
            (Ok(StoreValue::Appended { seq, duplicate: false, .. }), false) => assert_eq!(seq, count),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(metrics.store_completed.load(Relaxed), id);
    assert_eq!(metrics.store_failed.load(Relaxed), 0);
    assert_eq!(metrics.store_queue_depth.load(Relaxed), 0);
    let batches = metrics.store_batches.load(Relaxed);
    assert_eq!(batches, calls.len() as u64);
    assert!((1..=40 * 25).contains(&batches));
    assert!(metrics.store_latency_us_sum.load(Relaxed) > 0);
}

#[test]
fn a_backend_chosen_at_start_up_runs_boxed() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let backend: Box<dyn Backend> = Box::new(sqlite(&tmp));
    let store = spawn_store(backend, collector.sink(), Arc::new(Metrics::default()), 100).unwrap();
    store.submit(vec![req(0, append("r", "one")), req(1, append("r", "two"))]);
    assert_eq!(collector.result(1), Ok(StoreValue::Appended { seq: 2, ts: 1, duplicate: false }));
}

/// Holds each batch until told to go on.
struct Gate {
    started: mpsc::Sender<usize>,
    go: mpsc::Receiver<()>,
}

impl Backend for Gate {
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        let _ = self.started.send(ops.len());
        let _ = self.go.recv();
        ops.iter()
            .map(|op| match op {
                StoreOp::LoadAll => panic!("backend bug"),
                _ => Ok(StoreValue::Done),
            })
            .collect()
    }

    fn password_hash(&mut self, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    fn create_user(&mut self, _: &str, _: &str, _: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn create_token(&mut self, _: &str, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

fn gate() -> (Gate, mpsc::Receiver<usize>, mpsc::Sender<()>) {
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel();
    (Gate { started: started_tx, go: go_rx }, started, go)
}

fn join(user: &str) -> StoreOp {
    StoreOp::Join { user: user.into(), room: "r".into() }
}

#[test]
fn a_full_queue_completes_the_overflow_as_overloaded_at_once() {
    let (backend, started, go) = gate();
    let collector = Arc::new(Collector::default());
    let metrics = Arc::new(Metrics::default());
    let store = spawn_store(backend, collector.sink(), Arc::clone(&metrics), 2).unwrap();
    store.submit(vec![req(0, join("a"))]);
    assert_eq!(started.recv().unwrap(), 1); // request 0 is in progress, the queue is empty
    store.submit(vec![req(1, join("b")), req(2, join("c")), req(3, join("d"))]);
    store.submit(vec![req(4, join("e"))]);
    // Refused on the submitting thread, before the worker moves on.
    let refused = collector.calls();
    assert_eq!(
        refused,
        [
            vec![StoreDone { id: StoreReqId(3), result: Err(StoreError::Overloaded) }],
            vec![StoreDone { id: StoreReqId(4), result: Err(StoreError::Overloaded) }],
        ]
    );
    assert_eq!(store.waiting(), 2);
    assert_eq!(metrics.store_queue_depth.load(Relaxed), 3);
    go.send(()).unwrap();
    assert_eq!(started.recv().unwrap(), 2); // 1 and 2 in one batch
    go.send(()).unwrap();
    let all = collector.wait(5);
    let ok: Vec<u64> = all.iter().filter(|d| d.result.is_ok()).map(|d| d.id.0).collect();
    assert_eq!(ok, [0, 1, 2]);
    // Room again once drained.
    store.submit(vec![req(5, join("f"))]);
    started.recv().unwrap();
    go.send(()).unwrap();
    assert_eq!(collector.result(5), Ok(StoreValue::Done));
    store.shutdown();
    assert_eq!(metrics.store_completed.load(Relaxed), 6);
    assert_eq!(metrics.store_failed.load(Relaxed), 2);
    assert_eq!(metrics.store_queue_depth.load(Relaxed), 0);
    assert_eq!(metrics.store_batches.load(Relaxed), 3);
}

#[test]
fn a_backend_panic_fails_its_batch_only() {
    let (backend, started, go) = gate();
    let collector = Arc::new(Collector::default());
    let store = spawn_store(backend, collector.sink(), Arc::new(Metrics::default()), 100).unwrap();
    store.submit(vec![req(0, StoreOp::LoadAll), req(1, join("a"))]);
    started.recv().unwrap();
    go.send(()).unwrap();
    assert_eq!(
        collector.wait(2),
        [
            StoreDone { id: StoreReqId(0), result: Err(StoreError::Backend(StoreFailure::Other)) },
            StoreDone { id: StoreReqId(1), result: Err(StoreError::Backend(StoreFailure::Other)) },
        ]
    );
    store.submit(vec![req(2, join("b"))]);
    started.recv().unwrap();
    go.send(()).unwrap();
    assert_eq!(collector.result(2), Ok(StoreValue::Done));
    drop(go);
    drop(store); // Drop shuts down too
}

/// Counts idle probes and reports them as the server's state.
struct Probed {
    probes: mpsc::Sender<()>,
    metrics: Option<Arc<Metrics>>,
}

impl Backend for Probed {
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        ops.iter().map(|_| Ok(StoreValue::Done)).collect()
    }

    fn password_hash(&mut self, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    fn create_user(&mut self, _: &str, _: &str, _: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn create_token(&mut self, _: &str, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn attach_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = Some(metrics);
    }

    fn probe(&mut self) {
        if let Some(m) = &self.metrics {
            m.database_down.store(true, Relaxed);
        }
        let _ = self.probes.send(());
    }
}

#[test]
fn an_idle_batch_thread_probes_the_backend_with_the_node_metrics() {
    let (probes, probed) = mpsc::channel();
    let metrics = Arc::new(Metrics::default());
    let backend = Probed { probes, metrics: None };
    let store = spawn_store(backend, Arc::new(Collector::default()).sink(), Arc::clone(&metrics), 10).unwrap();
    let started = Instant::now();
    probed.recv_timeout(PROBE_IDLE * 10).expect("a probe while idle");
    assert!(started.elapsed() >= PROBE_IDLE / 2, "not before it has been idle a while");
    assert!(metrics.database_down.load(Relaxed), "the probe reports on the node's metrics");
    probed.recv_timeout(PROBE_IDLE * 10).expect("and again while still idle");
    store.shutdown();
}

#[test]
fn dropping_the_handle_completes_everything_queued() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let store = spawn_store(sqlite(&tmp), collector.sink(), Arc::new(Metrics::default()), 10_000).unwrap();
    for i in 0..100 {
        store.submit(vec![req(i, append("r", "x"))]);
    }
    drop(store);
    let all: Vec<u64> = collector.calls().iter().flatten().map(|d| d.id.0).collect();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    // Everything committed.
    let mut b = sqlite(&tmp);
    match b.execute(&[&StoreOp::LoadAll]).pop() {
        Some(Ok(StoreValue::Snapshot { rooms, .. })) => assert_eq!(rooms[0].seq, 100),
        other => panic!("{other:?}"),
    }
}

#[test]
fn register_login_verify_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let metrics = Arc::new(Metrics::default());
    let store = spawn_store(sqlite(&tmp), collector.sink(), Arc::clone(&metrics), 1000).unwrap();
    let register = |user: &str, password: &str| StoreOp::Register {
        user: user.into(),
        password: password.into(),
        cancel: Default::default(),
    };
    // The same name twice at once: one wins, decided by the unique key.
    store.submit(vec![
        req(0, register("alice", "password-0")),
        req(1, register("alice", "password-1")),
        req(2, append("r", "between")),
    ]);
    let r0 = collector.result(0).unwrap();
    let r1 = collector.result(1).unwrap();
    let password = match (&r0, &r1) {
        (StoreValue::Registered, StoreValue::NameTaken) => "password-0",
        (StoreValue::NameTaken, StoreValue::Registered) => "password-1",
        other => panic!("{other:?}"),
    };
    // A taken name is refused without hashing.
    store.submit(vec![req(3, register("alice", "whatever1"))]);
    assert_eq!(collector.result(3), Ok(StoreValue::NameTaken));
    let login = |user: &str, password: &str| StoreOp::Login {
        user: user.into(),
        password: password.into(),
        now_ms: 1000,
        ttl_ms: 500,
        cancel: Default::default(),
    };
    let verify = |user: &str, password: &str| StoreOp::Verify {
        user: user.into(),
        password: password.into(),
        cancel: Default::default(),
    };
    store.submit(vec![
        req(4, login("alice", password)),
        req(5, login("alice", "wrong-password")),
        req(6, login("nobody", password)),
        req(7, verify("alice", password)),
        req(8, verify("alice", "wrong-password")),
        req(9, verify("nobody", password)),
    ]);
    let token = match collector.result(4) {
        Ok(StoreValue::Token { token, expires_ms: 1500 }) => token,
        other => panic!("{other:?}"),
    };
    assert_eq!(token.len(), 64);
    assert_eq!(collector.result(5), Ok(StoreValue::Rejected));
    assert_eq!(collector.result(6), Ok(StoreValue::Rejected));
    assert_eq!(collector.result(7), Ok(StoreValue::Verified));
    assert_eq!(collector.result(8), Ok(StoreValue::Rejected));
    assert_eq!(collector.result(9), Ok(StoreValue::Rejected));
    let check = |now_ms| StoreOp::CheckToken { token: token.clone(), now_ms };
    store.submit(vec![
        req(10, check(1499)),
        req(11, check(1500)),
        req(12, StoreOp::Revoke { token: token.clone() }),
        req(13, check(1200)),
    ]);
    assert_eq!(collector.result(10), Ok(StoreValue::TokenUser { user: "alice".into(), expires_ms: 1500 }));
    assert_eq!(collector.result(11), Ok(StoreValue::Rejected));
    assert_eq!(collector.result(12), Ok(StoreValue::Revoked { user: Some("alice".into()) }));
    assert_eq!(collector.result(13), Ok(StoreValue::Rejected));
    // Shutdown completes password work in flight, and what has not
    // started yet as overloaded without hashing it.
    store.submit(vec![req(14, register("bob", "password-b")), req(15, verify("alice", password))]);
    store.shutdown();
    let all = collector.calls().into_iter().flatten().collect::<Vec<_>>();
    assert_eq!(all.len(), 16);
    let result = |id| all.iter().find(|d| d.id == StoreReqId(id)).map(|d| d.result.clone()).unwrap();
    assert!(matches!(result(14), Ok(StoreValue::Registered) | Err(StoreError::Overloaded)), "{all:?}");
    assert!(matches!(result(15), Ok(StoreValue::Verified) | Err(StoreError::Overloaded)), "{all:?}");
    assert_eq!(metrics.store_completed.load(Relaxed), 16);
    assert_eq!(metrics.store_queue_depth.load(Relaxed), 0);
    // Stored: alice with an argon2id hash, and bob only if he was answered so.
    let mut b = sqlite(&tmp);
    let hash = b.password_hash("alice").unwrap().unwrap();
    assert!(hash.starts_with("$argon2id$"));
    assert!(verify_password(&hash, password).unwrap());
    assert_eq!(b.password_hash("bob").unwrap().is_some(), result(14) == Ok(StoreValue::Registered));
}

#[test]
fn a_full_password_queue_completes_as_overloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let config = StoreConfig { password_threads: 1, password_queue: 1, ..StoreConfig::new(100) };
    let store = spawn_store_with(sqlite(&tmp), collector.sink(), Arc::new(Metrics::default()), config).unwrap();
    let verify =
        |i| req(i, StoreOp::Verify { user: "nobody".into(), password: "password".into(), cancel: Default::default() });
    store.submit((0..6).map(verify).collect());
    let all = collector.wait(6);
    store.shutdown();
    let count = |v: Result<StoreValue, StoreError>| all.iter().filter(|d| d.result == v).count();
    assert!(count(Ok(StoreValue::Rejected)) >= 1, "{all:?}");
    assert!(count(Err(StoreError::Overloaded)) >= 3, "{all:?}");
    assert_eq!(count(Ok(StoreValue::Rejected)) + count(Err(StoreError::Overloaded)), 6);
}

#[test]
fn a_cancelled_registration_is_neither_hashed_nor_written() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let metrics = Arc::new(Metrics::default());
    let store = spawn_store(sqlite(&tmp), collector.sink(), Arc::clone(&metrics), 100).unwrap();
    let cancel = natter_core::store::Cancel::default();
    cancel.cancel();
    let op = StoreOp::Register { user: "gone".into(), password: "password-1".into(), cancel };
    store.submit(vec![req(0, op)]);
    assert_eq!(collector.result(0), Err(StoreError::Overloaded));
    store.shutdown();
    assert_eq!(metrics.password_cancelled.load(Relaxed), 1);
    assert_eq!(sqlite(&tmp).password_hash("gone"), Ok(None), "a retry must not find the name taken");
}

#[test]
fn shutdown_does_not_wait_for_queued_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let metrics = Arc::new(Metrics::default());
    let config = StoreConfig { password_threads: 1, password_queue: 200, ..StoreConfig::new(1000) };
    let store = spawn_store_with(sqlite(&tmp), collector.sink(), Arc::clone(&metrics), config).unwrap();
    let register = |i: u64| {
        let op = StoreOp::Register { user: format!("u{i}"), password: "password-1".into(), cancel: Default::default() };
        req(i, op)
    };
    store.submit((0..200).map(register).collect());
    // Let the batch thread hand them all to the pool.
    while store.waiting() > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    store.shutdown();
    // Every one completed; at most those in progress were hashed, the rest
    // are unavailable. 200 hashes on one thread would take seconds.
    let all = collector.wait(200);
    let done = all.iter().filter(|d| d.result == Ok(StoreValue::Registered)).count();
    assert!(done <= 5, "{done} hashed after shutdown began");
    assert!(metrics.password_cancelled.load(Relaxed) >= 195);
}

/// Answers everything and reports each batch as the texts of its appends
/// (`"read"` for a read).
struct Recorder {
    batches: mpsc::Sender<Vec<String>>,
}

impl Backend for Recorder {
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        let texts = ops
            .iter()
            .map(|op| match op {
                StoreOp::Append { message, .. } => message.text.clone(),
                _ => "read".into(),
            })
            .collect();
        let _ = self.batches.send(texts);
        ops.iter().map(|_| Ok(StoreValue::Done)).collect()
    }

    fn password_hash(&mut self, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    fn create_user(&mut self, _: &str, _: &str, _: u64) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn create_token(&mut self, _: &str, _: &str, _: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A worker on a [`Recorder`] with this window and batch bound.
fn recorded(window: Duration, max_batch: usize) -> (StoreHandle, mpsc::Receiver<Vec<String>>, Arc<Collector>) {
    let (tx, batches) = mpsc::channel();
    let collector = Arc::new(Collector::default());
    let config = StoreConfig { commit_window: window, max_batch, ..StoreConfig::new(1000) };
    let store = spawn_store_with(Recorder { batches: tx }, collector.sink(), Arc::new(Metrics::default()), config);
    (store.unwrap(), batches, collector)
}

/// Far longer than any test runs: a batch that waits for it never starts
/// unless something else cuts it.
const FOREVER: Duration = Duration::from_secs(3600);

/// A generous wait for what must happen without the window ending.
const SOON: Duration = Duration::from_secs(60);

fn history() -> StoreOp {
    StoreOp::History { target: Target::Room("r".into()), range: SeqRange::After { after: 0, limit: 10 } }
}

#[test]
fn writes_submitted_within_the_commit_window_share_one_transaction() {
    let (store, batches, collector) = recorded(Duration::from_secs(1), 1024);
    for i in 0..3 {
        store.submit(vec![req(i, append("r", &i.to_string()))]);
    }
    assert_eq!(batches.recv_timeout(SOON).unwrap(), ["0", "1", "2"]);
    let ids: Vec<u64> = collector.wait(3).iter().map(|d| d.id.0).collect();
    assert_eq!(ids, [0, 1, 2]);
    store.shutdown();
}

#[test]
fn without_a_commit_window_a_lone_write_runs_at_once() {
    let (store, batches, _) = recorded(Duration::ZERO, 1024);
    store.submit(vec![req(0, append("r", "alone"))]);
    // Nothing else comes and nothing cuts the batch: only no waiting runs it.
    assert_eq!(batches.recv_timeout(SOON).unwrap(), ["alone"]);
    store.shutdown();
}

#[test]
fn the_batch_bound_cuts_a_batch_inside_the_commit_window() {
    let (store, batches, collector) = recorded(FOREVER, 3);
    for i in 0..7 {
        store.submit(vec![req(i, append("r", &i.to_string()))]);
    }
    assert_eq!(batches.recv_timeout(SOON).unwrap(), ["0", "1", "2"]);
    assert_eq!(batches.recv_timeout(SOON).unwrap(), ["3", "4", "5"]);
    // The last one waits for its window, or for shutdown.
    store.shutdown();
    assert_eq!(batches.recv_timeout(SOON).unwrap(), ["6"]);
    let ids: Vec<u64> = collector.wait(7).iter().map(|d| d.id.0).collect();
    assert_eq!(ids, (0..7).collect::<Vec<_>>());
}

#[test]
fn a_batch_of_reads_does_not_wait_for_the_commit_window() {
    let (store, batches, collector) = recorded(FOREVER, 1024);
    store.submit(vec![req(0, history())]);
    assert_eq!(batches.recv_timeout(SOON).unwrap(), ["read"]);
    assert_eq!(collector.result(0), Ok(StoreValue::Done));
    store.shutdown();
}

#[test]
fn shutdown_does_not_wait_for_the_commit_window() {
    let (store, batches, collector) = recorded(FOREVER, 1024);
    store.submit(vec![req(0, history()), req(1, append("r", "a"))]);
    store.submit(vec![req(2, append("r", "b"))]);
    let (stopped_tx, stopped) = mpsc::channel();
    std::thread::spawn(move || {
        store.shutdown();
        let _ = stopped_tx.send(());
    });
    stopped.recv_timeout(SOON).expect("shutdown ends before the window does");
    assert_eq!(batches.recv().unwrap(), ["read", "a", "b"]);
    let ids: Vec<u64> = collector.wait(3).iter().map(|d| d.id.0).collect();
    assert_eq!(ids, [0, 1, 2]);
}

#[test]
fn the_commit_metrics_count_transactions_that_write_and_their_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Arc::new(Collector::default());
    let metrics = Arc::new(Metrics::default());
    let config = StoreConfig { commit_window: Duration::from_secs(1), ..StoreConfig::new(100) };
    let store = spawn_store_with(sqlite(&tmp), collector.sink(), Arc::clone(&metrics), config).unwrap();
    store.submit(vec![req(0, history())]);
    collector.wait(1);
    store.submit(vec![req(1, append("r", "a"))]);
    store.submit(vec![req(2, append("r", "b")), req(3, history())]);
    collector.wait(4);
    store.shutdown();
    assert_eq!(metrics.store_batches.load(Relaxed), 2);
    assert_eq!(metrics.store_commits.load(Relaxed), 1, "the reads alone commit nothing");
    assert_eq!(metrics.store_batched_ops.load(Relaxed), 4);
    let text = metrics.render();
    assert!(text.contains("natter_store_commits_total 1\n"), "{text}");
    assert!(text.contains("natter_store_batched_ops_total 4\n"), "{text}");
}
