//! The storage worker: runs the hub's [`StoreRequest`]s against a [`Backend`]
//! off the hub's thread and hands the [`StoreDone`]s to a sink.
//!
//! One batch thread owns the backend. It takes everything queued (up to
//! [`StoreConfig::max_batch`] requests), runs the ordinary operations of it
//! as one transaction, and calls the sink once with the batch's completions in
//! submission order. A batch that writes and is not full waits for more
//! requests until [`StoreConfig::commit_window`] after its first request was
//! submitted: at a steady trickle of messages, one commit (one fsync) then
//! carries several instead of one each. Batches run one after another, so
//! the completions of all ordinary operations come in exactly the order
//! they were submitted, and a read sees every write submitted before it.
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
mod postgres;
mod sqlite;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_core::metrics::Metrics;
use natter_core::store::{Cancel, StoreDone, StoreError, StoreFailure, StoreOp, StoreReqId, StoreRequest, StoreValue};

pub use password::{hash_password, new_token, random_node_id, random_secret, token_hash, verify_password};
pub use postgres::{
    failure_kind as postgres_failure_kind, PostgresBackend, PostgresOpenError, PostgresOptions, POSTGRES_SCHEMA_VERSION,
};
pub use sqlite::{failure_kind, OpenError, SqliteBackend, SqliteOptions, SyncMode, DB_FILE, SCHEMA_VERSION};

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
    fn create_token(&mut self, token_hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError>;

    /// Hands the backend the node's metrics, for what only it sees (whether
    /// its server answers, its connection pool). Called once, before the
    /// first operation. A backend without a server has nothing to report.
    fn attach_metrics(&mut self, _metrics: Arc<Metrics>) {}

    /// Called on the batch thread once it has had nothing to do for
    /// [`PROBE_IDLE`]: a cheap round trip to the server, so that
    /// `natter_database_up` (and `/healthz`) follow it without traffic.
    fn probe(&mut self) {}
}

/// A backend chosen at start-up: SQLite with `--data`, PostgreSQL with
/// `--database`.
impl Backend for Box<dyn Backend> {
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        (**self).execute(ops)
    }

    fn password_hash(&mut self, user: &str) -> Result<Option<String>, StoreError> {
        (**self).password_hash(user)
    }

    fn create_user(&mut self, user: &str, hash: &str, created_ms: u64) -> Result<bool, StoreError> {
        (**self).create_user(user, hash, created_ms)
    }

    fn create_token(&mut self, token_hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        (**self).create_token(token_hash, user, expires_ms)
    }

    fn attach_metrics(&mut self, metrics: Arc<Metrics>) {
        (**self).attach_metrics(metrics);
    }

    fn probe(&mut self) {
        (**self).probe();
    }
}

/// How long the batch thread waits idle before it calls [`Backend::probe`]
/// (and again after each probe while still idle). A load balancer polling
/// `/healthz` learns of an unreachable server within about this plus the
/// probe's own timeout.
pub const PROBE_IDLE: Duration = Duration::from_secs(1);

/// Password operations that may wait for a hashing thread, by default. An
/// argon2id hash takes some 50 ms on one core: 32 waiting for 2 threads is
/// under a second of wait. A deeper queue only makes every login behind a
/// flood slower; past it, refusing at once (503 with `Retry-After`) is kinder.
pub const DEFAULT_PASSWORD_QUEUE: usize = 32;

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
    /// How long after its first request was submitted a batch that writes
    /// may wait for more before it commits; zero commits at once.
    pub commit_window: Duration,
}

/// [`StoreConfig::commit_window`] by default. At the benchmark's fixed load
/// (200 room messages a second, 5 ms apart on average) 1 or 2 ms grouped
/// almost nothing, 5 ms cut the commits by a third and 10 ms by 60 %, each
/// adding up to its length to an `ok` (tests/bench/BENCHMARKS.md, "Issue 15:
/// storage"). Under a heavier load the batches fill before the window ends.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::from_millis(5);

impl StoreConfig {
    /// The defaults with a queue of `queue_bound`.
    pub fn new(queue_bound: usize) -> Self {
        StoreConfig {
            queue_bound,
            max_batch: 1024,
            password_threads: 2,
            password_queue: DEFAULT_PASSWORD_QUEUE,
            commit_window: DEFAULT_COMMIT_WINDOW,
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
    mut backend: B,
    sink: Sink,
    metrics: Arc<Metrics>,
    config: StoreConfig,
) -> std::io::Result<StoreHandle> {
    backend.attach_metrics(Arc::clone(&metrics));
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        sink,
        metrics,
        bound: config.queue_bound,
        stopping: AtomicBool::new(false),
    });
    let pool = PasswordPool::spawn(config.password_threads, config.password_queue, Arc::clone(&shared))?;
    let batch_shared = Arc::clone(&shared);
    let batching = Batching { max: config.max_batch.max(1), window: config.commit_window };
    let thread = std::thread::Builder::new()
        .name("natter-store".into())
        .spawn(move || run(backend, &batch_shared, pool, batching))?;
    Ok(StoreHandle { shared, thread: Some(thread) })
}

/// The hub's end of a worker. Dropping it is [`StoreHandle::shutdown`].
pub struct StoreHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle").field("bound", &self.shared.bound).finish_non_exhaustive()
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
            let room = if state.closed { 0 } else { self.shared.bound.saturating_sub(state.waiting) };
            let accepted = room.min(requests.len());
            if accepted > 0 {
                state.waiting += accepted;
                Metrics::gauge(&self.shared.metrics.store_queue_depth, accepted as i64);
            }
            let mut requests = requests.into_iter();
            state.jobs.extend(requests.by_ref().take(accepted).map(|request| Job::Request(request, now)));
            refused.extend(requests.map(|request| request.id));
            // A busy batch thread looks at the queue before it waits again:
            // waking it would only cost a futex call per submit.
            if accepted > 0 && state.asleep.wakes_for(state.jobs.len()) {
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
    /// (password operations not yet started complete as
    /// [`StoreError::Overloaded`] without hashing: shutdown waits for at most
    /// the hashes in progress), then joins its threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.stopping.store(true, Ordering::Relaxed);
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

/// What the batch thread does next.
enum Next {
    /// Runs these.
    Batch(Vec<Job>),
    /// Nothing came for a while: probes the server.
    Idle,
    /// Closed and drained: exits.
    Done,
}

/// What the batch thread takes from the queue.
enum Job {
    /// A request, with when it was submitted.
    Request(StoreRequest, Instant),
    /// The database step of a password operation, from the pool.
    Finish(Finish),
}

/// What the batch thread waits for, so that a submit wakes it only when it
/// would act.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Asleep {
    /// It is running a batch, or about to look at the queue.
    #[default]
    Awake,
    /// The queue was empty.
    ForWork,
    /// Filling a batch within the commit window: it needs this many jobs
    /// queued to fill it, and the window's end wakes it otherwise.
    ForFill(usize),
}

impl Asleep {
    /// Whether `queued` jobs are worth waking the batch thread for.
    fn wakes_for(self, queued: usize) -> bool {
        match self {
            Asleep::Awake => false,
            Asleep::ForWork => true,
            Asleep::ForFill(needed) => queued >= needed,
        }
    }
}

/// How the batch thread cuts the queue into transactions.
#[derive(Clone, Copy, Debug)]
struct Batching {
    /// Jobs per batch, at most.
    max: usize,
    /// [`StoreConfig::commit_window`].
    window: Duration,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// What the batch thread waits for (see [`StoreHandle::submit`]).
    asleep: Asleep,
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
    /// Shutdown began: password work not started is skipped.
    stopping: AtomicBool,
}

impl Shared {
    /// Whether a password operation should be dropped before its next step:
    /// its client is gone or the server is stopping.
    fn skip_password(&self, cancel: &Cancel) -> bool {
        let skip = cancel.is_cancelled() || self.stopping.load(Ordering::Relaxed);
        if skip {
            Metrics::add(&self.metrics.password_cancelled, 1);
        }
        skip
    }

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
            latency = latency.saturating_add(u64::try_from(submitted.elapsed().as_micros()).unwrap_or(u64::MAX));
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
        (self.sink)(ids.into_iter().map(|id| StoreDone { id, result: Err(StoreError::Overloaded) }).collect());
    }

    /// A password operation the pool answered itself.
    fn password_done(&self, id: StoreReqId, submitted: Instant, result: Result<StoreValue, StoreError>) {
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
            self.complete(vec![(StoreDone { id, result: Err(StoreError::Overloaded) }, submitted)]);
            return;
        }
        state.jobs.push_back(Job::Finish(finish));
        self.wake.notify_all();
    }

    /// The next batch, waiting for one at most `idle`.
    fn next_batch(&self, batching: Batching, idle: Duration) -> Next {
        let mut state = self.lock();
        loop {
            if !state.jobs.is_empty() {
                let mut batch = Vec::new();
                take_jobs(&mut state, &mut batch, batching.max);
                let state = self.fill(state, &mut batch, batching);
                drop(state);
                return Next::Batch(batch);
            }
            if state.closed && state.passwords == 0 {
                state.gone = true;
                return Next::Done;
            }
            state.asleep = Asleep::ForWork;
            let (next, waited) = self.wake.wait_timeout(state, idle).unwrap_or_else(|e| e.into_inner());
            state = next;
            state.asleep = Asleep::Awake;
            if waited.timed_out() && state.jobs.is_empty() && !state.closed {
                return Next::Idle;
            }
        }
    }

    /// Adds to `batch` what comes until the commit window of its first
    /// request ends, the batch is full, or shutdown begins. A batch that only
    /// reads does not wait: it has no commit to share, and waiting would
    /// only delay the reads.
    fn fill<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        batch: &mut Vec<Job>,
        batching: Batching,
    ) -> MutexGuard<'a, State> {
        let Some(first) = first_submitted(batch) else { return state };
        let Some(deadline) = first.checked_add(batching.window) else { return state };
        if batching.window.is_zero() || !batch.iter().any(Job::commits) {
            return state;
        }
        loop {
            take_jobs(&mut state, batch, batching.max);
            if batch.len() >= batching.max || state.closed {
                return state;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return state;
            }
            state.asleep = Asleep::ForFill(batching.max - batch.len());
            state = self.wake.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
            state.asleep = Asleep::Awake;
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
                (StoreDone { id, result: Err(StoreError::Overloaded) }, submitted)
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
            Finish::CreateUser { id, submitted, .. } | Finish::CreateToken { id, submitted, .. } => (*id, *submitted),
        }
    }
}

/// Moves jobs from the queue to `batch` until it holds `max`.
fn take_jobs(state: &mut State, batch: &mut Vec<Job>, max: usize) {
    let n = max.saturating_sub(batch.len()).min(state.jobs.len());
    let before = batch.len();
    batch.extend(state.jobs.drain(..n));
    state.waiting -= batch[before..].iter().filter(|j| matches!(j, Job::Request(..))).count();
}

/// When the first request of `batch` was submitted (the queue keeps the
/// order of submission, so no later one waited longer).
fn first_submitted(batch: &[Job]) -> Option<Instant> {
    batch.iter().find_map(|job| match job {
        Job::Request(_, submitted) => Some(*submitted),
        Job::Finish(_) => None,
    })
}

impl Job {
    /// Whether the job writes in the batch's transaction: an ordinary write,
    /// or the last step of a password operation. The first step of one only
    /// reads.
    fn commits(&self) -> bool {
        match self {
            Job::Request(request, _) => !is_password(&request.op) && request.op.writes(),
            Job::Finish(_) => true,
        }
    }
}

/// Whether `op` goes through the password pool.
fn is_password(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. })
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs `f`, turning a panic into a backend failure.
fn guarded<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tracing::error!("storage backend panicked");
        Err(StoreError::Backend(StoreFailure::Other))
    })
}

/// The batch thread.
fn run<B: Backend>(mut backend: B, shared: &Shared, pool: PasswordPool, batching: Batching) {
    let result = catch_unwind(AssertUnwindSafe(|| loop {
        match shared.next_batch(batching, PROBE_IDLE) {
            Next::Batch(batch) => process(&mut backend, shared, &pool, batch),
            Next::Idle => {
                let _ = guarded(|| {
                    backend.probe();
                    Ok(())
                });
            }
            Next::Done => break,
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
        let n = ops.len();
        let m = &shared.metrics;
        Metrics::add(&m.store_batches, 1);
        Metrics::add(&m.store_batched_ops, n as u64);
        if ops.iter().any(|op| op.writes()) {
            Metrics::add(&m.store_commits, 1);
        }
        match guarded(|| Ok(backend.execute(&ops))) {
            Ok(results) if results.len() == n => results,
            Ok(results) => {
                tracing::error!(expected = n, got = results.len(), "backend answered the wrong number of operations");
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
                let result = results.next().unwrap_or(Err(StoreError::Backend(StoreFailure::Other)));
                done.push((StoreDone { id: request.id, result }, submitted));
            }
            Job::Request(request, submitted) => {
                if let Some(result) = start_password(backend, shared, pool, request, submitted) {
                    done.push((result, submitted));
                }
            }
            Job::Finish(finish) => {
                shared.lock().passwords -= 1;
                let (id, submitted) = finish.request();
                let result = finish_password(backend, shared, finish);
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
        StoreOp::Register { cancel, .. } | StoreOp::Login { cancel, .. } | StoreOp::Verify { cancel, .. }
            if shared.skip_password(&cancel) =>
        {
            return answer(Err(StoreError::Overloaded));
        }
        StoreOp::Register { user, password, cancel } => match guarded(|| backend.password_hash(&user)) {
            Err(e) => return answer(Err(e)),
            Ok(Some(_)) => return answer(Ok(StoreValue::NameTaken)),
            Ok(None) => PasswordJob::Hash { id, submitted, user, password, cancel },
        },
        StoreOp::Login { user, password, now_ms, ttl_ms, cancel } => match guarded(|| backend.password_hash(&user)) {
            Err(e) => return answer(Err(e)),
            Ok(hash) => {
                let login = Some(LoginTerms { now_ms, ttl_ms });
                PasswordJob::Verify { id, submitted, user, password, hash, login, cancel }
            }
        },
        StoreOp::Verify { user, password, cancel } => match guarded(|| backend.password_hash(&user)) {
            Err(e) => return answer(Err(e)),
            Ok(hash) => PasswordJob::Verify { id, submitted, user, password, hash, login: None, cancel },
        },
        _ => return answer(Err(StoreError::Backend(StoreFailure::Other))),
    };
    shared.lock().passwords += 1;
    if pool.try_submit(job) {
        return None;
    }
    shared.lock().passwords -= 1;
    Metrics::add(&shared.metrics.password_refused, 1);
    tracing::debug!("password queue full");
    answer(Err(StoreError::Overloaded))
}

/// The last step of a password operation.
fn finish_password<B: Backend>(backend: &mut B, shared: &Shared, finish: Finish) -> Result<StoreValue, StoreError> {
    match finish {
        // Nobody would learn of the account: a retry must not find it taken.
        Finish::CreateUser { cancel, .. } if cancel.is_cancelled() => {
            Metrics::add(&shared.metrics.password_cancelled, 1);
            Err(StoreError::Overloaded)
        }
        Finish::CreateUser { user, hash, .. } => {
            guarded(|| backend.create_user(&user, &hash, now_ms())).map(|created| {
                if created {
                    StoreValue::Registered
                } else {
                    StoreValue::NameTaken
                }
            })
        }
        Finish::CreateToken { user, token, token_hash, expires_ms, .. } => {
            guarded(|| backend.create_token(&token_hash, &user, expires_ms))
                .map(|()| StoreValue::Token { token, expires_ms })
        }
    }
}

#[cfg(test)]
mod contract;
#[cfg(test)]
mod tests;
