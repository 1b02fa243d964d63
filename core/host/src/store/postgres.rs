//! The PostgreSQL [`Backend`]: a small pool of connections (`r2d2`), used by
//! the store's batch thread, with the behaviour of the SQLite backend for
//! every operation and the same rules for failures:
//!
//! - A batch runs in one transaction. An operation that fails on its own (a
//!   constraint, a bug: [`StoreFailure::Other`]) makes the batch run again
//!   with each operation in its own savepoint, so that it fails alone.
//! - A failure of the transaction (the connection lost, the server shutting
//!   down, a full disk) fails every write of the batch, commits nothing, and
//!   the reads are run again one by one outside a transaction until one of
//!   them fails for the same reason. A deadlock or lock timeout (several
//!   nodes share the database) rolls the whole batch back, so it is simply
//!   run again, a few times.
//! - While PostgreSQL is unreachable every operation fails with
//!   [`StoreError::Backend`] after at most the connect timeout; a broken
//!   connection is dropped by the pool and replaced, so service resumes by
//!   itself when the server is back.
//!
//! Several nodes may share the database. Every number a client sees is taken
//! under the lock of the row that holds it, inside the transaction that
//! stores what it numbers (a room's `seq` under its `rooms` row, a
//! conversation's under its `conversations` row, a user's inbox ids under its
//! `inbox_sizes` row), so commit order is number order. A client id is
//! claimed by inserting its unique key first, so a retry on another node
//! waits for the first attempt and then finds its `seq`. Nothing reads new
//! messages by a global id.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_core::metrics::Metrics;

use natter_core::store::{StoreError, StoreFailure, StoreOp, StoreValue, StoredRoom, Target};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use r2d2_postgres::PostgresConnectionManager;

mod cluster;
mod messages;
mod migrate;

pub use migrate::SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION;

use super::password::token_hash;
use super::Backend;

type PgError = postgres::Error;

/// Tuning of a [`PostgresBackend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections the pool keeps open, at most. The batch thread uses one
    /// at a time; the others stand by for when one breaks.
    pub pool_size: u32,
    /// How long connecting (and waiting for a pooled connection) may take
    /// before the operations fail.
    pub connect_timeout: Duration,
    /// Client ids younger than this are remembered (PROTOCOL.md: at least
    /// 24 hours)...
    pub id_retention: Duration,
    /// ...unless more than this many are stored: then the oldest go first.
    pub max_ids: u64,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            id_retention: Duration::from_secs(86_400),
            max_ids: 10_000_000,
        }
    }
}

/// Why the PostgreSQL store could not be opened. None of them shows the
/// URL's password.
#[derive(Debug, thiserror::Error)]
pub enum PostgresOpenError {
    /// The URL does not parse.
    #[error("invalid PostgreSQL URL: {0}")]
    Url(PgError),
    /// No connection could be made within the connect timeout.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        /// Hosts, ports and database, without credentials.
        target: String,
        /// The cause.
        source: r2d2::Error,
    },
    /// Creating or migrating the schema failed.
    #[error("cannot set up the schema in PostgreSQL at {target}: {source}")]
    Schema {
        /// Hosts, ports and database, without credentials.
        target: String,
        /// The cause.
        source: PgError,
    },
    /// The database was written by a newer build.
    #[error("the database at {target} has schema version {found}; this build knows versions up to {supported}")]
    TooNew {
        /// Hosts, ports and database, without credentials.
        target: String,
        /// Its `schema_version`.
        found: i64,
        /// [`POSTGRES_SCHEMA_VERSION`].
        supported: i64,
    },
}

/// A pooled connection with its prepared statements: a statement prepared
/// once per connection saves a round trip on every later use.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, PgError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }

    fn query(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, PgError> {
        let statement = self.statement(sql)?;
        self.client.query(&statement, params)
    }

    fn query_opt(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, PgError> {
        let statement = self.statement(sql)?;
        self.client.query_opt(&statement, params)
    }

    fn query_one(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, PgError> {
        let statement = self.statement(sql)?;
        self.client.query_one(&statement, params)
    }

    fn execute(&mut self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, PgError> {
        let statement = self.statement(sql)?;
        self.client.execute(&statement, params)
    }

    /// A statement without parameters or rows (`BEGIN`, `SAVEPOINT`...).
    fn simple(&mut self, sql: &str) -> Result<(), PgError> {
        self.client.batch_execute(sql)
    }
}

/// `r2d2_postgres`'s manager, giving [`Conn`]s.
pub(crate) struct Manager(PostgresConnectionManager<NoTls>);

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = PgError;

    fn connect(&self) -> Result<Conn, PgError> {
        Ok(Conn { client: self.0.connect()?, statements: HashMap::new() })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), PgError> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

/// Reports the pool's connection failures through `tracing` (at debug: while
/// the server is down, every batch reports its failure at warn already).
#[derive(Debug)]
struct PoolErrors;

impl r2d2::HandleError<PgError> for PoolErrors {
    fn handle_error(&self, error: PgError) {
        tracing::debug!(error = %error, "PostgreSQL connection failed");
    }
}

/// Storage in a PostgreSQL database, possibly shared with other nodes.
pub struct PostgresBackend {
    pool: r2d2::Pool<Manager>,
    target: String,
    options: PostgresOptions,
    /// When client ids were last purged.
    last_purge: Instant,
    /// Batches run again after a deadlock or a lock timeout.
    busy_retries: u64,
    /// Where reachability, the pool and busy retries are reported (the
    /// node's, once [`Backend::attach_metrics`] ran).
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend").field("target", &self.target).finish_non_exhaustive()
    }
}

/// Runs one batch again at most this many more times after a deadlock or a
/// lock timeout.
const BUSY_RETRIES: u32 = 2;

/// How long the idle probe waits for a connection: short, as a batch that
/// comes meanwhile waits for it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often client ids past their retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Most client ids one purge deletes.
const PURGE_BATCH: i64 = 20_000;

/// Server settings for every connection: a lock held by a stuck node does
/// not stall this one for ever, a session of ours stuck inside a
/// transaction does not hold its locks for ever, and notices ("relation
/// already exists, skipping") stay out of the log.
const SESSION_OPTIONS: &str =
    "-c lock_timeout=10s -c idle_in_transaction_session_timeout=60s -c client_min_messages=warning";

/// Where `config` points, without credentials: `host:port,.../dbname`.
fn describe(config: &postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = config.get_ports().get(i).or(config.get_ports().first()).copied().unwrap_or(5432);
            match host {
                postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or(""))
}

impl PostgresBackend {
    /// Connects to `url` (`postgres://user:password@host:port/database`, or
    /// the `key=value` form), fills the pool and creates or migrates the
    /// schema. Fails within about `options.connect_timeout` when the server
    /// cannot be reached.
    pub fn open_with(url: &str, options: PostgresOptions) -> Result<Self, PostgresOpenError> {
        let mut config: postgres::Config = url.parse().map_err(PostgresOpenError::Url)?;
        let target = describe(&config);
        let session = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{SESSION_OPTIONS} {given}"),
            _ => SESSION_OPTIONS.to_string(),
        };
        config
            .options(&session)
            .application_name("natter")
            .connect_timeout(options.connect_timeout)
            // A server that stops answering (a frozen host, a cut network)
            // is noticed within about half a minute, not hours.
            .tcp_user_timeout(Duration::from_secs(30))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let manager = Manager(PostgresConnectionManager::new(config, NoTls));
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .connection_timeout(options.connect_timeout)
            // One round trip per batch finds a connection that the server
            // closed while idle (it restarted) before a batch fails on it.
            .test_on_check_out(true)
            .error_handler(Box::new(PoolErrors))
            .build(manager)
            .map_err(|source| PostgresOpenError::Connect { target: target.clone(), source })?;
        let mut conn = pool.get().map_err(|source| PostgresOpenError::Connect { target: target.clone(), source })?;
        let schema = |source| PostgresOpenError::Schema { target: target.clone(), source };
        match migrate::migrate(&mut conn.client).map_err(schema)? {
            migrate::Migrated::TooNew { found } => {
                return Err(PostgresOpenError::TooNew { target, found, supported: migrate::SCHEMA_VERSION })
            }
            // A new database is created quietly, as SQLite's file is; an
            // upgrade is worth a line in the operator's log.
            migrate::Migrated::Done { from: 0 } => {
                tracing::debug!(target = %target, "created the PostgreSQL schema");
            }
            migrate::Migrated::Done { from } if from < migrate::SCHEMA_VERSION => {
                tracing::info!(from, to = migrate::SCHEMA_VERSION, target = %target, "upgraded the PostgreSQL schema");
            }
            migrate::Migrated::Done { .. } => {}
        }
        drop(conn);
        let metrics = Arc::new(Metrics::default());
        Ok(PostgresBackend { pool, target, options, last_purge: Instant::now(), busy_retries: 0, metrics })
    }

    /// Opens `url` with the default [`PostgresOptions`].
    pub fn open(url: &str) -> Result<Self, PostgresOpenError> {
        PostgresBackend::open_with(url, PostgresOptions::default())
    }

    /// Hosts, ports and database, without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How many times a batch was run again after a deadlock or a lock
    /// timeout (other nodes writing the same rows), since open.
    pub fn busy_retries(&self) -> u64 {
        self.busy_retries
    }

    /// A connection from the pool, or the failure every operation gets.
    fn conn(&self) -> Result<r2d2::PooledConnection<Manager>, StoreError> {
        let conn = self.pool.get().map_err(|e| {
            tracing::warn!(error = %e, target = %self.target, "no PostgreSQL connection");
            self.reached(false);
            StoreError::Backend(StoreFailure::Io)
        })?;
        self.report_pool();
        Ok(conn)
    }

    /// Records whether the server answered the last attempt, logging when
    /// that changes.
    fn reached(&self, up: bool) {
        let was_down = self.metrics.database_down.swap(!up, Relaxed);
        if up && was_down {
            tracing::info!(target = %self.target, "PostgreSQL answers again");
        }
    }

    /// Records whether the server answered, by what an attempt returned:
    /// only a failure of the connection or the server (`Io`) says it did
    /// not; a constraint or a lock is an answer.
    fn reached_unless_io<T>(&self, result: &Result<T, StoreError>) {
        self.reached(!matches!(result, Err(StoreError::Backend(StoreFailure::Io))));
    }

    /// Publishes the pool's connections, open and checked out.
    fn report_pool(&self) {
        let state = self.pool.state();
        self.metrics.database_pool_size.store(i64::from(state.connections), Relaxed);
        let in_use = state.connections.saturating_sub(state.idle_connections);
        self.metrics.database_pool_in_use.store(i64::from(in_use), Relaxed);
    }

    /// The batch's transaction, run again after a deadlock, and when it
    /// fails, its reads alone.
    fn execute_batch(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        let mut conn = match self.conn() {
            Ok(conn) => conn,
            Err(e) => return vec![Err(e); ops.len()],
        };
        let mut tries = 0;
        let e = loop {
            match run_batch(&mut conn, ops) {
                Ok(results) => return results,
                Err(e) if failure_kind(&e) == StoreFailure::Busy && tries < BUSY_RETRIES => {
                    tries += 1;
                    self.busy_retries += 1;
                    Metrics::add(&self.metrics.store_busy_retries, 1);
                    tracing::debug!(error = %e, tries, "storage transaction hit a lock, running it again");
                }
                Err(e) => break e,
            }
        };
        tracing::warn!(error = %e, ops = ops.len(), "storage transaction failed, rolled back");
        let err = StoreError::Backend(failure_kind(&e));
        let mut down: Option<StoreError> = None;
        ops.iter()
            .map(|op| {
                if op.writes() {
                    return Err(err.clone());
                }
                if let Some(down) = &down {
                    return Err(down.clone());
                }
                let result = read_alone(&mut conn, op);
                if let Err(e @ StoreError::Backend(StoreFailure::Io | StoreFailure::Busy)) = &result {
                    down = Some(e.clone());
                }
                result
            })
            .collect()
    }

    /// Runs [`purge_ids`] when it is due, in a transaction of its own.
    fn purge_when_due(&mut self) {
        if self.last_purge.elapsed() < PURGE_EVERY {
            return;
        }
        self.last_purge = Instant::now();
        let Ok(mut conn) = self.conn() else { return };
        let now_ms = int(super::now_ms());
        let result = conn.simple("BEGIN").and_then(|()| {
            let n = messages::purge_ids(&mut conn, now_ms, &self.options)?;
            conn.simple("COMMIT")?;
            Ok(n)
        });
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(ids = n, "forgot old client ids"),
            Err(e) => {
                let _ = conn.simple("ROLLBACK");
                tracing::warn!(error = %e, "purging client ids failed");
            }
        }
    }

    /// Runs `f` on a pooled connection outside a transaction.
    fn alone<T>(&self, what: &str, f: impl FnOnce(&mut Conn) -> Result<T, PgError>) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        let result = f(&mut conn).map_err(|e| {
            tracing::warn!(error = %e, "{what} failed");
            StoreError::Backend(failure_kind(&e))
        });
        drop(conn);
        self.reached_unless_io(&result);
        self.report_pool();
        result
    }
}

impl Backend for PostgresBackend {
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        if ops.is_empty() {
            return Vec::new();
        }
        let results = self.execute_batch(ops);
        let unreachable = results.iter().find(|r| matches!(r, Err(StoreError::Backend(StoreFailure::Io))));
        self.reached(unreachable.is_none());
        // While the server is unreachable, a purge would only wait for
        // another connect timeout before the completions go out.
        if unreachable.is_none() {
            self.purge_when_due();
        }
        self.report_pool();
        results
    }

    fn attach_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = metrics;
        self.report_pool();
    }

    /// `SELECT 1` on a pooled connection (checking it out already tests
    /// it), waiting at most [`PROBE_TIMEOUT`] for one.
    fn probe(&mut self) {
        let result = match self.pool.get_timeout(PROBE_TIMEOUT) {
            Ok(mut conn) => conn.simple("SELECT 1").map_err(|e| failure_kind(&e)),
            Err(_) => Err(StoreFailure::Io),
        };
        match result {
            Err(StoreFailure::Io) => {
                if !self.metrics.database_down.load(Relaxed) {
                    tracing::warn!(target = %self.target, "PostgreSQL does not answer");
                }
                self.reached(false);
            }
            _ => self.reached(true),
        }
        self.report_pool();
    }

    fn password_hash(&mut self, user: &str) -> Result<Option<String>, StoreError> {
        self.alone("password hash lookup", |conn| {
            let row = conn.query_opt("SELECT hash FROM users WHERE lower(name) = lower($1)", &[&user])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn create_user(&mut self, user: &str, hash: &str, created_ms: u64) -> Result<bool, StoreError> {
        self.alone("creating a user", |conn| {
            // No conflict target: a twin in another case hits the
            // `users_name_lower` index, and that is a taken name too.
            let inserted = conn.execute(
                "INSERT INTO users (name, hash, created_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&user, &hash, &int(created_ms)],
            )?;
            Ok(inserted == 1)
        })
    }

    fn create_token(&mut self, token_hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        self.alone("creating a token", |conn| {
            conn.execute(
                "INSERT INTO tokens (hash, name, expires_ms, revoked) VALUES ($1, $2, $3, FALSE)",
                &[&token_hash, &user, &int(expires_ms)],
            )
            .map(drop)
        })
    }
}

/// The kind of a PostgreSQL failure, by its SQLSTATE: the connection or the
/// server gone, out of disk or memory is `Io`; a deadlock, a serialization
/// failure, a lock or statement timeout is `Busy`; anything else (a
/// constraint, a bug) is `Other` and leaves the transaction usable after a
/// rollback to a savepoint.
pub fn failure_kind(e: &PgError) -> StoreFailure {
    let Some(db) = e.as_db_error() else {
        let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
        return if e.is_closed() || io { StoreFailure::Io } else { StoreFailure::Other };
    };
    let code = db.code().code();
    match code {
        "40001" | "40P01" | "55P03" | "57014" => StoreFailure::Busy,
        _ if ["08", "53", "57", "58"].iter().any(|class| code.starts_with(class)) => StoreFailure::Io,
        _ => StoreFailure::Other,
    }
}

/// Whether `op` belongs to the password pool and never runs in a batch.
fn is_password(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. })
}

/// Whether an operation's error leaves the transaction usable after a
/// rollback to its savepoint (see the module docs).
fn fails_alone(conn: &Conn, e: &PgError) -> bool {
    failure_kind(e) == StoreFailure::Other && !conn.client.is_closed()
}

/// Runs `ops` in one transaction. `Err` means the transaction failed and
/// nothing of it was committed.
fn run_batch(conn: &mut Conn, ops: &[&StoreOp]) -> Result<Vec<Result<StoreValue, StoreError>>, PgError> {
    let result = begin(conn, ops)
        .and_then(|()| run_without_savepoints(conn, ops))
        .and_then(|done| match done {
            Some(out) => Ok(out),
            None => {
                // One operation failed: start over with each in its own
                // savepoint, so that it fails alone.
                conn.simple("ROLLBACK")?;
                begin(conn, ops)?;
                run_in_savepoints(conn, ops)
            }
        })
        .and_then(|out| {
            conn.simple("COMMIT")?;
            Ok(out)
        });
    if result.is_err() && !conn.client.is_closed() {
        let _ = conn.simple("ROLLBACK");
    }
    result
}

/// Opens the batch's transaction and locks, in one order every node
/// follows, the existing rows its writes will lock one by one in the order
/// of its operations: the rooms and conversations it appends to, then the
/// inboxes it adds to or acknowledges. Without this, two nodes whose
/// batches write to the same two rooms in opposite orders would deadlock,
/// and one of them would wait a second for PostgreSQL to notice.
fn begin(conn: &mut Conn, ops: &[&StoreOp]) -> Result<(), PgError> {
    conn.simple("BEGIN")?;
    let mut rooms = BTreeSet::new();
    let mut conversations = BTreeSet::new();
    let mut inboxes = BTreeSet::new();
    for op in ops {
        match op {
            StoreOp::Append { target: Target::Room(room), .. } => {
                rooms.insert(room.as_str());
            }
            StoreOp::Append { target: Target::Conversation(a, b), message } => {
                let (lo, hi) = pair(a, b);
                conversations.insert((lo, hi));
                let recipient = if message.sender == lo { hi } else { lo };
                if message.inbox.is_some() && recipient != message.sender {
                    inboxes.insert(recipient);
                }
            }
            StoreOp::Ack { user, .. } => {
                inboxes.insert(user.as_str());
            }
            _ => {}
        }
    }
    if rooms.len() + conversations.len() + inboxes.len() < 2 {
        return Ok(());
    }
    if !rooms.is_empty() {
        let rooms: Vec<&str> = rooms.into_iter().collect();
        conn.execute(
            "SELECT 1 FROM (SELECT name FROM rooms WHERE name = ANY($1) ORDER BY name FOR UPDATE) AS locked",
            &[&rooms],
        )?;
    }
    if !conversations.is_empty() {
        let (lo, hi): (Vec<&str>, Vec<&str>) = conversations.into_iter().unzip();
        conn.execute(
            "SELECT 1 FROM (SELECT c.lo FROM conversations AS c
                            JOIN unnest($1::text[], $2::text[]) AS k (lo, hi) ON c.lo = k.lo AND c.hi = k.hi
                            ORDER BY c.lo, c.hi FOR UPDATE OF c) AS locked",
            &[&lo, &hi],
        )?;
    }
    if !inboxes.is_empty() {
        let inboxes: Vec<&str> = inboxes.into_iter().collect();
        conn.execute(
            "SELECT 1 FROM (SELECT owner FROM inbox_sizes WHERE owner = ANY($1) ORDER BY owner FOR UPDATE) AS locked",
            &[&inboxes],
        )?;
    }
    Ok(())
}

/// The body of a batch as it nearly always runs. `None` when an operation
/// failed on its own: the caller rolls back and runs [`run_in_savepoints`].
fn run_without_savepoints(
    conn: &mut Conn,
    ops: &[&StoreOp],
) -> Result<Option<Vec<Result<StoreValue, StoreError>>>, PgError> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        if is_password(op) {
            out.push(Err(StoreError::Backend(StoreFailure::Other)));
            continue;
        }
        match run_op(conn, op) {
            Ok(value) => out.push(Ok(value)),
            Err(e) if fails_alone(conn, &e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// The body of a batch with an operation that fails: each in a savepoint.
fn run_in_savepoints(conn: &mut Conn, ops: &[&StoreOp]) -> Result<Vec<Result<StoreValue, StoreError>>, PgError> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        if is_password(op) {
            out.push(Err(StoreError::Backend(StoreFailure::Other)));
            continue;
        }
        conn.simple("SAVEPOINT op")?;
        match run_op(conn, op) {
            Ok(value) => {
                conn.simple("RELEASE op")?;
                out.push(Ok(value));
            }
            Err(e) if fails_alone(conn, &e) => {
                tracing::warn!(error = %e, "storage operation failed, rolled back alone");
                conn.simple("ROLLBACK TO op; RELEASE op")?;
                out.push(Err(StoreError::Backend(StoreFailure::Other)));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Runs one read outside any transaction.
fn read_alone(conn: &mut Conn, op: &StoreOp) -> Result<StoreValue, StoreError> {
    if is_password(op) {
        return Err(StoreError::Backend(StoreFailure::Other));
    }
    run_op(conn, op).map_err(|e| {
        tracing::warn!(error = %e, "storage read failed");
        StoreError::Backend(failure_kind(&e))
    })
}

/// `u64` to PostgreSQL's `BIGINT` (values past `i64::MAX` never occur).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `BIGINT` back to `u64`.
fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A conversation's key: the pair sorted byte-wise.
fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Runs one operation (never a password operation).
fn run_op(conn: &mut Conn, op: &StoreOp) -> Result<StoreValue, PgError> {
    match op {
        StoreOp::LoadAll => load_all(conn),
        StoreOp::CheckToken { token, now_ms } => check_token(conn, token, *now_ms),
        StoreOp::Revoke { token } => {
            let row = conn
                .query_opt("UPDATE tokens SET revoked = TRUE WHERE hash = $1 RETURNING name", &[&token_hash(token)])?;
            Ok(StoreValue::Revoked { user: row.map(|r| r.get(0)) })
        }
        StoreOp::Join { user, room } => {
            conn.execute("INSERT INTO rooms (name, seq) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING", &[room])?;
            conn.execute(
                "INSERT INTO members (room, name, read) VALUES ($1, $2, 0) ON CONFLICT (room, name) DO NOTHING",
                &[room, user],
            )?;
            Ok(StoreValue::Done)
        }
        StoreOp::Leave { user, room } => {
            conn.execute("DELETE FROM members WHERE room = $1 AND name = $2", &[room, user])?;
            Ok(StoreValue::Done)
        }
        StoreOp::Append { target, message } => messages::append(conn, target, message),
        StoreOp::History { target, range } => messages::history(conn, target, *range),
        StoreOp::Inbox { user, after, limit } => messages::inbox(conn, user, *after, *limit),
        StoreOp::Ack { user, with, seq } => messages::ack(conn, user, with, *seq),
        StoreOp::Read { user, target, seq } => messages::read(conn, user, target, *seq),
        StoreOp::Conversations { user, limit } => messages::conversations(conn, user, *limit),
        StoreOp::ReadMarks { user } => {
            let rows = conn.query(
                "SELECT m.room, m.read, r.seq FROM members m JOIN rooms r ON r.name = m.room
                 WHERE m.name = $1 ORDER BY m.room",
                &[user],
            )?;
            let marks = rows.iter().map(|r| (r.get(0), uint(r.get(1)), uint(r.get(2)))).collect();
            Ok(StoreValue::ReadMarks { marks })
        }
        StoreOp::LastSeqs { rooms, users, active_since } => cluster::last_seqs(conn, rooms, users, *active_since),
        StoreOp::FindUser { name } => cluster::find_user(conn, name),
        StoreOp::ClaimGuest { name, node, alive } => cluster::claim_guest(conn, name, *node, alive),
        StoreOp::ReleaseGuest { name, node } => cluster::release_guest(conn, name, *node),
        StoreOp::LiveTokens { tokens } => cluster::live_tokens(conn, tokens),
        StoreOp::RoomMembers { rooms } => cluster::room_members(conn, rooms),
        StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. } => {
            unreachable!("password operations are answered before run_op")
        }
    }
}

fn check_token(conn: &mut Conn, token: &str, now_ms: u64) -> Result<StoreValue, PgError> {
    let row = conn.query_opt("SELECT name, expires_ms, revoked FROM tokens WHERE hash = $1", &[&token_hash(token)])?;
    Ok(match row.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, bool>(2))) {
        Some((user, expires, false)) if int(now_ms) < expires => {
            StoreValue::TokenUser { user, expires_ms: uint(expires) }
        }
        _ => StoreValue::Rejected,
    })
}

fn load_all(conn: &mut Conn) -> Result<StoreValue, PgError> {
    let users = conn.query("SELECT name FROM users ORDER BY name", &[])?.iter().map(|r| r.get(0)).collect();
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    for row in conn.query("SELECT room, name FROM members ORDER BY room, name", &[])? {
        members.entry(row.get(0)).or_default().push(row.get(1));
    }
    let rooms = conn
        .query(
            "SELECT name, seq FROM rooms AS r
             WHERE seq > 0
                OR EXISTS (SELECT 1 FROM members AS m WHERE m.room = r.name)
                OR EXISTS (SELECT 1 FROM room_messages AS x WHERE x.room = r.name)
             ORDER BY name",
            &[],
        )?
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let members = members.remove(&name).unwrap_or_default();
            StoredRoom { name, seq: uint(r.get(1)), members }
        })
        .collect();
    Ok(StoreValue::Snapshot { users, rooms })
}

#[cfg(all(test, feature = "postgres-tests"))]
mod tests;
