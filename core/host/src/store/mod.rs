//! The storage worker: runs the hub's [`StoreRequest`]s against a [`Backend`]
//! off the hub's thread and hands the [`StoreDone`]s to a sink.
//!
//! One batch thread owns the backend. It takes everything queued (up to
//! [`StoreConfig::max_batch`] requests), runs the ordinary operations of it
//! as one transaction, and calls the sink once with the batch's completions in
//! submission order. Batches run one after another, so the completions of all
//! ordinary operations come in exactly the order they were submitted, and a
//! read sees every write submitted before it.
//!
//! `Register`, `Login` and `Verify` need argon2, which is slow on purpose:
//! their hashing runs on a password pool of its own (`password.rs`), and they
//! complete whenever it is done, possibly out of order with everything else
//! (the contract allows it). Their database steps still run on the batch
//! thread.
//!
//! The queue is bounded: [`StoreHandle::submit`] never blocks, and requests
//! past the bound complete at once with [`StoreError::Overloaded`].

mod password;
mod sqlite;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use natter_core::metrics::Metrics;
use natter_core::store::{
    StoreDone, StoreError, StoreFailure, StoreOp, StoreReqId, StoreRequest, StoreValue,
};

pub use password::{hash_password, new_token, token_hash, verify_password};
pub use sqlite::{failure_kind, OpenError, SqliteBackend, DB_FILE, SCHEMA_VERSION};

use password::{Finish, LoginTerms, PasswordJob, PasswordPool};

/// Where completions go. Called from the batch thread (once per batch), from
/// the password threads (once per password operation), and from
/// [`StoreHandle::submit`] itself for requests refused as overloaded, so it
/// must not call back into the store or block for long.
pub type Sink = Arc<dyn Fn(Vec<StoreDone>) + Send + Sync>;

/// A database.
///
/// `execute` gets the ordinary operations: never `Register`, `Login` or
/// `Verify`, whose database steps are the three other methods.
pub trait Backend: Send + 'static {
    /// Runs `ops` in one transaction where it can, and answers each, in
    /// order (the result has exactly `ops.len()` entries). When the
    /// transaction fails, every write of it fails with
    /// [`StoreError::Backend`] and nothing of it is committed.
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>>;

    /// The stored password hash of `user`, `None` when there is no such user.
    fn password_hash(&mut self, user: &str) -> Result<Option<String>, StoreError>;

    /// Creates `user`: `Ok(false)` (and nothing written) when the name is
    /// taken.
    fn create_user(&mut self, user: &str, hash: &str, created_ms: u64) -> Result<bool, StoreError>;

    /// Stores a token (as its [`token_hash`]) for `user`.
    fn create_token(
        &mut self,
        token_hash: &str,
        user: &str,
        expires_ms: u64,
    ) -> Result<(), StoreError>;
}

/// Tuning of the worker.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Requests that may wait in the queue; more complete as overloaded.
    pub queue_bound: usize,
    /// Requests per transaction, at most.
    pub max_batch: usize,
    /// Threads hashing passwords.
    pub password_threads: usize,
    /// Password operations that may wait for a hashing thread; more complete
    /// as overloaded.
    pub password_queue: usize,
}

impl StoreConfig {
    /// The defaults with a queue of `queue_bound`.
    pub fn new(queue_bound: usize) -> Self {
        StoreConfig {
            queue_bound,
            max_batch: 1024,
            password_threads: 2,
            password_queue: 256,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::new(65_536)
    }
}

/// Starts a worker on `backend` with [`StoreConfig::new`]`(queue_bound)`.
pub fn spawn_store<B: Backend>(
    backend: B,
    sink: Sink,
    metrics: Arc<Metrics>,
    queue_bound: usize,
) -> std::io::Result<StoreHandle> {
    spawn_store_with(backend, sink, metrics, StoreConfig::new(queue_bound))
}

/// Starts a worker on `backend`: the batch thread and the password pool.
pub fn spawn_store_with<B: Backend>(
    backend: B,
    sink: Sink,
    metrics: Arc<Metrics>,
    config: StoreConfig,
) -> std::io::Result<StoreHandle> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        sink,
        metrics,
        bound: config.queue_bound,
    });
    let pool = PasswordPool::spawn(
        config.password_threads,
        config.password_queue,
        Arc::clone(&shared),
    )?;
    let batch_shared = Arc::clone(&shared);
    let max_batch = config.max_batch.max(1);
    let thread = std::thread::Builder::new()
        .name("natter-store".into())
        .spawn(move || run(backend, &batch_shared, pool, max_batch))?;
    Ok(StoreHandle {
        shared,
        thread: Some(thread),
    })
}

/// The hub's end of a worker. Dropping it is [`StoreHandle::shutdown`].
pub struct StoreHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("bound", &self.shared.bound)
            .finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Queues `requests`, in order, without blocking. Those that do not fit
    /// in the queue (or come after shutdown began) complete at once, through
    /// the sink and on this thread, with [`StoreError::Overloaded`].
    pub fn submit(&self, requests: Vec<StoreRequest>) {
        if requests.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut refused = Vec::new();
        {
            let mut state = self.shared.lock();
            let room = if state.closed {
                0
            } else {
                self.shared.bound.saturating_sub(state.waiting)
            };
            let accepted = room.min(requests.len());
            if accepted > 0 {
                state.waiting += accepted;
                Metrics::gauge(&self.shared.metrics.store_queue_depth, accepted as i64);
            }
            let mut requests = requests.into_iter();
            state.jobs.extend(
                requests
                    .by_ref()
                    .take(accepted)
                    .map(|request| Job::Request(request, now)),
            );
            refused.extend(requests.map(|request| request.id));
            if accepted > 0 {
                self.shared.wake.notify_one();
            }
        }
        if !refused.is_empty() {
            tracing::debug!(refused = refused.len(), "storage queue full");
            self.shared.refuse(refused);
        }
    }

    /// Requests waiting in the queue (not those in progress).
    pub fn waiting(&self) -> usize {
        self.shared.lock().waiting
    }

    /// Refuses new requests, lets the worker complete everything queued
    /// (password operations included), then joins its threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.lock().closed = true;
            self.shared.wake.notify_all();
            if thread.join().is_err() {
                tracing::error!("storage thread panicked");
            }
        }
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the batch thread takes from the queue.
enum Job {
    /// A request, with when it was submitted.
    Request(StoreRequest, Instant),
    /// The database step of a password operation, from the pool.
    Finish(Finish),
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// `Job::Request`s in `jobs`.
    waiting: usize,
    /// Password operations handed to the pool and not completed.
    passwords: usize,
    /// No new requests.
    closed: bool,
    /// The batch thread is gone: nothing queued would ever run.
    gone: bool,
}

/// What the handle, the batch thread and the password pool share.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    sink: Sink,
    metrics: Arc<Metrics>,
    bound: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers completions of queued requests, updating the metrics.
    fn complete(&self, done: Vec<(StoreDone, Instant)>) {
        if done.is_empty() {
            return;
        }
        let m = &self.metrics;
        let mut failed = 0;
        let mut latency = 0u64;
        for (d, submitted) in &done {
            failed += u64::from(d.result.is_err());
            latency = latency
                .saturating_add(u64::try_from(submitted.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        Metrics::gauge(&m.store_queue_depth, -(done.len() as i64));
        Metrics::add(&m.store_completed, done.len() as u64);
        Metrics::add(&m.store_failed, failed);
        Metrics::add(&m.store_latency_us_sum, latency);
        (self.sink)(done.into_iter().map(|(d, _)| d).collect());
    }

    /// Completes requests that never entered the queue as overloaded.
    fn refuse(&self, ids: Vec<StoreReqId>) {
        let m = &self.metrics;
        Metrics::add(&m.store_completed, ids.len() as u64);
        Metrics::add(&m.store_failed, ids.len() as u64);
        (self.sink)(
            ids.into_iter()
                .map(|id| StoreDone {
                    id,
                    result: Err(StoreError::Overloaded),
                })
                .collect(),
        );
    }

    /// A password operation the pool answered itself.
    fn password_done(
        &self,
        id: StoreReqId,
        submitted: Instant,
        result: Result<StoreValue, StoreError>,
    ) {
        self.complete(vec![(StoreDone { id, result }, submitted)]);
        self.lock().passwords -= 1;
        self.wake.notify_all();
    }

    /// A password operation's database step, for the batch thread.
    fn password_finish(&self, finish: Finish) {
        let mut state = self.lock();
        if state.gone {
            state.passwords -= 1;
            drop(state);
            let (id, submitted) = finish.request();
            self.complete(vec![(
                StoreDone {
                    id,
                    result: Err(StoreError::Overloaded),
                },
                submitted,
            )]);
            return;
        }
        state.jobs.push_back(Job::Finish(finish));
        self.wake.notify_all();
    }

    /// The next batch, waiting for one; `None` once closed and drained.
    fn next_batch(&self, max: usize) -> Option<Vec<Job>> {
        let mut state = self.lock();
        loop {
            if !state.jobs.is_empty() {
                let n = max.min(state.jobs.len());
                let batch: Vec<Job> = state.jobs.drain(..n).collect();
                state.waiting -= batch
                    .iter()
                    .filter(|j| matches!(j, Job::Request(..)))
                    .count();
                return Some(batch);
            }
            if state.closed && state.passwords == 0 {
                state.gone = true;
                return None;
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// After the batch thread died: completes whatever is queued as
    /// overloaded, and refuses everything after.
    fn abandon(&self) {
        let jobs: Vec<Job> = {
            let mut state = self.lock();
            state.closed = true;
            state.gone = true;
            state.waiting = 0;
            let jobs: Vec<Job> = state.jobs.drain(..).collect();
            state.passwords -= jobs.iter().filter(|j| matches!(j, Job::Finish(_))).count();
            jobs
        };
        let done = jobs
            .into_iter()
            .map(|job| {
                let (id, submitted) = match job {
                    Job::Request(r, at) => (r.id, at),
                    Job::Finish(f) => f.request(),
                };
                (
                    StoreDone {
                        id,
                        result: Err(StoreError::Overloaded),
                    },
                    submitted,
                )
            })
            .collect();
        if catch_unwind(AssertUnwindSafe(|| self.complete(done))).is_err() {
            tracing::error!("storage sink panicked");
        }
    }
}

impl Finish {
    fn request(&self) -> (StoreReqId, Instant) {
        match self {
            Finish::CreateUser { id, submitted, .. }
            | Finish::CreateToken { id, submitted, .. } => (*id, *submitted),
        }
    }
}

/// Whether `op` goes through the password pool.
fn is_password(op: &StoreOp) -> bool {
    matches!(
        op,
        StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. }
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs `f`, turning a panic into a backend failure.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("storage backend panicked");
        Err(StoreError::Backend(StoreFailure::Other))
    })
}

/// The batch thread.
fn run<B: Backend>(mut backend: B, shared: &Shared, pool: PasswordPool, max_batch: usize) {
    let result = catch_unwind(AssertUnwindSafe(|| {
        while let Some(batch) = shared.next_batch(max_batch) {
            process(&mut backend, shared, &pool, batch);
        }
    }));
    if result.is_err() {
        tracing::error!("storage thread panicked; refusing everything from now on");
        shared.abandon();
    }
    // Joins the hashing threads; none has work left unless we panicked.
    drop(pool);
}

/// Runs one batch and delivers its completions, in order, in one sink call.
fn process<B: Backend>(backend: &mut B, shared: &Shared, pool: &PasswordPool, batch: Vec<Job>) {
    let ops: Vec<&StoreOp> = batch
        .iter()
        .filter_map(|job| match job {
            Job::Request(request, _) if !is_password(&request.op) => Some(&request.op),
            _ => None,
        })
        .collect();
    let mut results = if ops.is_empty() {
        Vec::new()
    } else {
        Metrics::add(&shared.metrics.store_batches, 1);
        let n = ops.len();
        match guarded(|| Ok(backend.execute(&ops))) {
            Ok(results) if results.len() == n => results,
            Ok(results) => {
                tracing::error!(
                    expected = n,
                    got = results.len(),
                    "backend answered the wrong number of operations"
                );
                vec![Err(StoreError::Backend(StoreFailure::Other)); n]
            }
            Err(e) => vec![Err(e); n],
        }
    }
    .into_iter();
    let mut done = Vec::with_capacity(batch.len());
    for job in batch {
        match job {
            Job::Request(request, submitted) if !is_password(&request.op) => {
                let result = results
                    .next()
                    .unwrap_or(Err(StoreError::Backend(StoreFailure::Other)));
                done.push((
                    StoreDone {
                        id: request.id,
                        result,
                    },
                    submitted,
                ));
            }
            Job::Request(request, submitted) => {
                if let Some(result) = start_password(backend, shared, pool, request, submitted) {
                    done.push((result, submitted));
                }
            }
            Job::Finish(finish) => {
                shared.lock().passwords -= 1;
                let (id, submitted) = finish.request();
                let result = finish_password(backend, finish);
                done.push((StoreDone { id, result }, submitted));
            }
        }
    }
    shared.complete(done);
}

/// The first step of a password operation: its database lookup, then the
/// pool. `Some` when it is answered already.
fn start_password<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    pool: &PasswordPool,
    request: StoreRequest,
    submitted: Instant,
) -> Option<StoreDone> {
    let id = request.id;
    let answer = |result| Some(StoreDone { id, result });
    let job = match request.op {
        StoreOp::Register { user, password } => match guarded(|| backend.password_hash(&user)) {
            Err(e) => return answer(Err(e)),
            Ok(Some(_)) => return answer(Ok(StoreValue::NameTaken)),
            Ok(None) => PasswordJob::Hash {
                id,
                submitted,
                user,
                password,
            },
        },
        StoreOp::Login {
            user,
            password,
            now_ms,
            ttl_ms,
        } => match guarded(|| backend.password_hash(&user)) {
            Err(e) => return answer(Err(e)),
            Ok(hash) => PasswordJob::Verify {
                id,
                submitted,
                user,
                password,
                hash,
                login: Some(LoginTerms { now_ms, ttl_ms }),
            },
        },
        StoreOp::Verify { user, password } => match guarded(|| backend.password_hash(&user)) {
            Err(e) => return answer(Err(e)),
            Ok(hash) => PasswordJob::Verify {
                id,
                submitted,
                user,
                password,
                hash,
                login: None,
            },
        },
        _ => return answer(Err(StoreError::Backend(StoreFailure::Other))),
    };
    shared.lock().passwords += 1;
    match pool.try_submit(job) {
        Ok(()) => None,
        Err(_) => {
            shared.lock().passwords -= 1;
            tracing::debug!("password queue full");
            answer(Err(StoreError::Overloaded))
        }
    }
}

/// The last step of a password operation.
fn finish_password<B: Backend>(backend: &mut B, finish: Finish) -> Result<StoreValue, StoreError> {
    match finish {
        Finish::CreateUser { user, hash, .. } => {
            guarded(|| backend.create_user(&user, &hash, now_ms())).map(|created| {
                if created {
                    StoreValue::Registered
                } else {
                    StoreValue::NameTaken
                }
            })
        }
        Finish::CreateToken {
            user,
            token,
            token_hash,
            expires_ms,
            ..
        } => guarded(|| backend.create_token(&token_hash, &user, expires_ms))
            .map(|()| StoreValue::Token { token, expires_ms }),
    }
}

#[cfg(test)]
mod tests {
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
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .expect("timed out waiting for completions");
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
                if let Some(d) = self
                    .calls()
                    .into_iter()
                    .flatten()
                    .find(|d| d.id == StoreReqId(id))
                {
                    return d.result;
                }
                assert!(Instant::now() < deadline, "no completion for {id}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    fn req(id: u64, op: StoreOp) -> StoreRequest {
        StoreRequest {
            id: StoreReqId(id),
            op,
        }
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
            },
        }
    }

    fn sqlite(dir: &tempfile::TempDir) -> SqliteBackend {
        SqliteBackend::open(dir.path()).unwrap()
    }

    #[test]
    fn completions_come_in_submission_order_and_reads_see_earlier_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let collector = Arc::new(Collector::default());
        let metrics = Arc::new(Metrics::default());
        let store =
            spawn_store(sqlite(&tmp), collector.sink(), Arc::clone(&metrics), 10_000).unwrap();
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
                        range: SeqRange::After {
                            after: 0,
                            limit: 1000,
                        },
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
                (
                    Ok(StoreValue::Appended {
                        seq,
                        duplicate: false,
                        ..
                    }),
                    false,
                ) => assert_eq!(seq, count),
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
        (
            Gate {
                started: started_tx,
                go: go_rx,
            },
            started,
            go,
        )
    }

    fn join(user: &str) -> StoreOp {
        StoreOp::Join {
            user: user.into(),
            room: "r".into(),
        }
    }

    #[test]
    fn a_full_queue_completes_the_overflow_as_overloaded_at_once() {
        let (backend, started, go) = gate();
        let collector = Arc::new(Collector::default());
        let metrics = Arc::new(Metrics::default());
        let store = spawn_store(backend, collector.sink(), Arc::clone(&metrics), 2).unwrap();
        store.submit(vec![req(0, join("a"))]);
        assert_eq!(started.recv().unwrap(), 1); // request 0 is in progress, the queue is empty
        store.submit(vec![
            req(1, join("b")),
            req(2, join("c")),
            req(3, join("d")),
        ]);
        store.submit(vec![req(4, join("e"))]);
        // Refused on the submitting thread, before the worker moves on.
        let refused = collector.calls();
        assert_eq!(
            refused,
            [
                vec![StoreDone {
                    id: StoreReqId(3),
                    result: Err(StoreError::Overloaded)
                }],
                vec![StoreDone {
                    id: StoreReqId(4),
                    result: Err(StoreError::Overloaded)
                }],
            ]
        );
        assert_eq!(store.waiting(), 2);
        assert_eq!(metrics.store_queue_depth.load(Relaxed), 3);
        go.send(()).unwrap();
        assert_eq!(started.recv().unwrap(), 2); // 1 and 2 in one batch
        go.send(()).unwrap();
        let all = collector.wait(5);
        let ok: Vec<u64> = all
            .iter()
            .filter(|d| d.result.is_ok())
            .map(|d| d.id.0)
            .collect();
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
        let store =
            spawn_store(backend, collector.sink(), Arc::new(Metrics::default()), 100).unwrap();
        store.submit(vec![req(0, StoreOp::LoadAll), req(1, join("a"))]);
        started.recv().unwrap();
        go.send(()).unwrap();
        assert_eq!(
            collector.wait(2),
            [
                StoreDone {
                    id: StoreReqId(0),
                    result: Err(StoreError::Backend(StoreFailure::Other))
                },
                StoreDone {
                    id: StoreReqId(1),
                    result: Err(StoreError::Backend(StoreFailure::Other))
                },
            ]
        );
        store.submit(vec![req(2, join("b"))]);
        started.recv().unwrap();
        go.send(()).unwrap();
        assert_eq!(collector.result(2), Ok(StoreValue::Done));
        drop(go);
        drop(store); // Drop shuts down too
    }

    #[test]
    fn dropping_the_handle_completes_everything_queued() {
        let tmp = tempfile::tempdir().unwrap();
        let collector = Arc::new(Collector::default());
        let store = spawn_store(
            sqlite(&tmp),
            collector.sink(),
            Arc::new(Metrics::default()),
            10_000,
        )
        .unwrap();
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
        let store =
            spawn_store(sqlite(&tmp), collector.sink(), Arc::clone(&metrics), 1000).unwrap();
        let register = |user: &str, password: &str| StoreOp::Register {
            user: user.into(),
            password: password.into(),
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
        };
        let verify = |user: &str, password: &str| StoreOp::Verify {
            user: user.into(),
            password: password.into(),
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
            Ok(StoreValue::Token {
                token,
                expires_ms: 1500,
            }) => token,
            other => panic!("{other:?}"),
        };
        assert_eq!(token.len(), 64);
        assert_eq!(collector.result(5), Ok(StoreValue::Rejected));
        assert_eq!(collector.result(6), Ok(StoreValue::Rejected));
        assert_eq!(collector.result(7), Ok(StoreValue::Verified));
        assert_eq!(collector.result(8), Ok(StoreValue::Rejected));
        assert_eq!(collector.result(9), Ok(StoreValue::Rejected));
        let check = |now_ms| StoreOp::CheckToken {
            token: token.clone(),
            now_ms,
        };
        store.submit(vec![
            req(10, check(1499)),
            req(11, check(1500)),
            req(
                12,
                StoreOp::Revoke {
                    token: token.clone(),
                },
            ),
            req(13, check(1200)),
        ]);
        assert_eq!(
            collector.result(10),
            Ok(StoreValue::TokenUser {
                user: "alice".into(),
                expires_ms: 1500
            })
        );
        assert_eq!(collector.result(11), Ok(StoreValue::Rejected));
        assert_eq!(
            collector.result(12),
            Ok(StoreValue::Revoked {
                user: Some("alice".into())
            })
        );
        assert_eq!(collector.result(13), Ok(StoreValue::Rejected));
        // Shutdown waits for password work in flight.
        store.submit(vec![
            req(14, register("bob", "password-b")),
            req(15, verify("alice", password)),
        ]);
        store.shutdown();
        let all = collector.calls().into_iter().flatten().collect::<Vec<_>>();
        assert_eq!(all.len(), 16);
        assert!(all.contains(&StoreDone {
            id: StoreReqId(14),
            result: Ok(StoreValue::Registered)
        }));
        assert!(all.contains(&StoreDone {
            id: StoreReqId(15),
            result: Ok(StoreValue::Verified)
        }));
        assert_eq!(metrics.store_completed.load(Relaxed), 16);
        assert_eq!(metrics.store_failed.load(Relaxed), 0);
        assert_eq!(metrics.store_queue_depth.load(Relaxed), 0);
        // Stored: bob and alice, with argon2id hashes.
        let mut b = sqlite(&tmp);
        let hash = b.password_hash("alice").unwrap().unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, password).unwrap());
        assert!(b.password_hash("bob").unwrap().is_some());
    }

    #[test]
    fn a_full_password_queue_completes_as_overloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let collector = Arc::new(Collector::default());
        let config = StoreConfig {
            password_threads: 1,
            password_queue: 1,
            ..StoreConfig::new(100)
        };
        let store = spawn_store_with(
            sqlite(&tmp),
            collector.sink(),
            Arc::new(Metrics::default()),
            config,
        )
        .unwrap();
        let verify = |i| {
            req(
                i,
                StoreOp::Verify {
                    user: "nobody".into(),
                    password: "password".into(),
                },
            )
        };
        store.submit((0..6).map(verify).collect());
        let all = collector.wait(6);
        store.shutdown();
        let count =
            |v: Result<StoreValue, StoreError>| all.iter().filter(|d| d.result == v).count();
        assert!(count(Ok(StoreValue::Rejected)) >= 1, "{all:?}");
        assert!(count(Err(StoreError::Overloaded)) >= 3, "{all:?}");
        assert_eq!(
            count(Ok(StoreValue::Rejected)) + count(Err(StoreError::Overloaded)),
            6
        );
    }
}
