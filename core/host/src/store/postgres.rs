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

use natter_core::store::{
    display_pair, id_scope, ConversationSummary, InboxBound, InboxLimit, InboxMessage, NewMessage, SeqRange,
    StoreError, StoreFailure, StoreOp, StoreValue, StoredMessage, StoredRoom, Target,
};
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use r2d2_postgres::PostgresConnectionManager;

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
                if is_write(op) {
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
            let n = purge_ids(&mut conn, now_ms, &self.options)?;
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

/// Whether `op` writes.
fn is_write(op: &StoreOp) -> bool {
    !matches!(
        op,
        StoreOp::LoadAll
            | StoreOp::Verify { .. }
            | StoreOp::CheckToken { .. }
            | StoreOp::History { .. }
            | StoreOp::Inbox { .. }
            | StoreOp::Conversations { .. }
            | StoreOp::ReadMarks { .. }
            | StoreOp::LastSeqs { .. }
            | StoreOp::FindUser { .. }
            | StoreOp::LiveTokens { .. }
            | StoreOp::RoomMembers { .. }
    )
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
        StoreOp::Append { target, message } => append(conn, target, message),
        StoreOp::History { target, range } => history(conn, target, *range),
        StoreOp::Inbox { user, after, limit } => inbox(conn, user, *after, *limit),
        StoreOp::Ack { user, with, seq } => ack(conn, user, with, *seq),
        StoreOp::Read { user, target, seq } => read(conn, user, target, *seq),
        StoreOp::Conversations { user, limit } => conversations(conn, user, *limit),
        StoreOp::ReadMarks { user } => {
            let rows = conn.query(
                "SELECT m.room, m.read, r.seq FROM members m JOIN rooms r ON r.name = m.room
                 WHERE m.name = $1 ORDER BY m.room",
                &[user],
            )?;
            let marks = rows.iter().map(|r| (r.get(0), uint(r.get(1)), uint(r.get(2)))).collect();
            Ok(StoreValue::ReadMarks { marks })
        }
        StoreOp::LastSeqs { rooms, users, active_since } => last_seqs(conn, rooms, users, *active_since),
        StoreOp::FindUser { name } => {
            let row = conn.query_opt("SELECT name FROM users WHERE lower(name) = lower($1)", &[name])?;
            Ok(StoreValue::FoundUser(row.map(|r| r.get(0))))
        }
        StoreOp::ClaimGuest { name, node, alive } => {
            // One statement: the row lock of the conflict makes two nodes
            // claiming together take turns, and the second sees the first's.
            let take_over = alive.is_some();
            let alive: Vec<i64> = alive.iter().flatten().map(|&n| n as i64).collect();
            let row = conn.query_opt(
                "INSERT INTO guest_claims (lname, node) VALUES (lower($1), $2)
                 ON CONFLICT (lname) DO UPDATE SET node = excluded.node, claimed_at = now()
                 WHERE guest_claims.node = excluded.node OR ($4 AND NOT (guest_claims.node = ANY($3)))
                 RETURNING node",
                &[name, &(*node as i64), &alive, &take_over],
            )?;
            Ok(StoreValue::Claimed(row.is_some()))
        }
        StoreOp::ReleaseGuest { name, node } => {
            conn.execute("DELETE FROM guest_claims WHERE lname = lower($1) AND node = $2", &[name, &(*node as i64)])?;
            Ok(StoreValue::Done)
        }
        StoreOp::LiveTokens { tokens } => live_tokens(conn, tokens),
        StoreOp::RoomMembers { rooms } => {
            let rows =
                conn.query("SELECT room, name FROM members WHERE room = ANY($1) ORDER BY room, name", &[rooms])?;
            let mut found: HashMap<String, Vec<String>> = HashMap::new();
            for row in &rows {
                found.entry(row.get(0)).or_default().push(row.get(1));
            }
            let seqs = conn.query("SELECT name, seq FROM rooms WHERE name = ANY($1)", &[rooms])?;
            let seqs: HashMap<String, u64> = seqs.iter().map(|r| (r.get(0), uint(r.get(1)))).collect();
            let rooms = rooms
                .iter()
                .map(|room| {
                    let seq = seqs.get(room).copied().unwrap_or(0);
                    (room.clone(), seq, found.remove(room).unwrap_or_default())
                })
                .collect();
            Ok(StoreValue::RoomMembers { rooms })
        }
        StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. } => {
            unreachable!("password operations are answered before run_op")
        }
    }
}

/// The newest `seq` of each room asked (0 when unknown), in the order asked,
/// and of every conversation of the users asked (active since `active_since`
/// when given), each pair once, sorted.
fn last_seqs(
    conn: &mut Conn,
    rooms: &[String],
    users: &[String],
    active_since: Option<u64>,
) -> Result<StoreValue, PgError> {
    let found = conn.query("SELECT name, seq FROM rooms WHERE name = ANY($1)", &[&rooms])?;
    let seqs: HashMap<String, u64> = found.iter().map(|r| (r.get(0), uint(r.get(1)))).collect();
    let rooms = rooms.iter().map(|room| (room.clone(), seqs.get(room).copied().unwrap_or(0))).collect();
    let rows = conn.query(
        "SELECT lo, hi, seq FROM conversations WHERE lo = ANY($1) AND last_ts >= $2
         UNION SELECT lo, hi, seq FROM conversations WHERE hi = ANY($1) AND last_ts >= $2
         ORDER BY 1, 2",
        &[&users, &int(active_since.unwrap_or(0))],
    )?;
    let conversations = rows.iter().map(|r| (r.get(0), r.get(1), uint(r.get(2)))).collect();
    Ok(StoreValue::LastSeqs { rooms, conversations })
}

/// The tokens of `tokens` stored and not revoked, in the order asked.
fn live_tokens(conn: &mut Conn, tokens: &[String]) -> Result<StoreValue, PgError> {
    let hashes: Vec<String> = tokens.iter().map(|t| token_hash(t)).collect();
    let rows = conn.query("SELECT hash FROM tokens WHERE hash = ANY($1) AND NOT revoked", &[&hashes])?;
    let live: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let tokens = tokens.iter().zip(&hashes).filter(|(_, h)| live.contains(*h)).map(|(t, _)| t.clone()).collect();
    Ok(StoreValue::LiveTokens { tokens })
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

fn read(conn: &mut Conn, user: &str, target: &Target, seq: u64) -> Result<StoreValue, PgError> {
    match target {
        Target::Room(room) => {
            conn.execute(
                "UPDATE members SET read = greatest(read, $3) WHERE room = $1 AND name = $2",
                &[room, &user, &int(seq)],
            )?;
        }
        Target::Conversation(a, b) => {
            // The contract puts `user` first; accept either order.
            let peer = if a == user { b } else { a };
            conn.execute(
                "INSERT INTO conv_marks (owner, peer, read, ack) VALUES ($1, $2, $3, 0)
                 ON CONFLICT (owner, peer) DO UPDATE SET read = greatest(conv_marks.read, excluded.read)",
                &[&user, peer, &int(seq)],
            )?;
        }
    }
    Ok(StoreValue::Done)
}

fn conversations(conn: &mut Conn, user: &str, limit: u32) -> Result<StoreValue, PgError> {
    let rows = conn.query(
        "SELECT p.peer, p.seq, coalesce(k.read, 0)
         FROM (SELECT CASE WHEN lo = $1 THEN hi ELSE lo END AS peer, seq, last_order
               FROM conversations WHERE lo = $1 OR hi = $1) AS p
         LEFT JOIN conv_marks AS k ON k.owner = $1 AND k.peer = p.peer
         ORDER BY p.last_order DESC
         LIMIT $2",
        &[&user, &i64::from(limit)],
    )?;
    let conversations = rows
        .iter()
        .map(|r| ConversationSummary { with: r.get(0), seq: uint(r.get(1)), read: uint(r.get(2)) })
        .collect();
    Ok(StoreValue::Conversations { conversations })
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

fn append(conn: &mut Conn, target: &Target, m: &NewMessage) -> Result<StoreValue, PgError> {
    // Only a message with a client id needs its scope.
    let id = m.client_id.as_deref().map(|client_id| (client_id, id_scope(target)));
    let ts = int(m.ts);
    let mut claimed = false;
    if let Some((client_id, scope)) = &id {
        // Claiming the key first: a retry on another node now waits here
        // until this transaction ends, then finds the message.
        claimed = conn.execute(
            "INSERT INTO client_ids (sender, scope, client_id, seq, ts) VALUES ($1, $2, $3, 0, $4)
             ON CONFLICT (sender, scope, client_id) DO NOTHING",
            &[&m.sender, scope, client_id, &ts],
        )? == 1;
        if !claimed {
            if let Some((seq, ts)) = repeated(conn, target, scope, m, client_id)? {
                return Ok(StoreValue::Appended { seq, ts, duplicate: true });
            }
        }
    }
    let seq = match target {
        // The room's next seq, under its row's lock, and the message: one
        // round trip.
        Target::Room(room) => conn
            .query_one(
                "WITH r AS (INSERT INTO rooms (name, seq) VALUES ($1, 1)
                            ON CONFLICT (name) DO UPDATE SET seq = rooms.seq + 1 RETURNING seq)
                 INSERT INTO room_messages (room, seq, sender, from_name, text, client_id, ts)
                 SELECT $1, r.seq, $2, $3, $4, $5, $6 FROM r
                 RETURNING seq",
                &[room, &m.sender, &m.from, &m.text, &m.client_id, &ts],
            )?
            .get(0),
        Target::Conversation(a, b) => match append_private(conn, pair(a, b), m)? {
            Ok(seq) => seq,
            Err(limit) => {
                if let (true, Some((client_id, scope))) = (claimed, &id) {
                    conn.execute(
                        "DELETE FROM client_ids WHERE sender = $1 AND scope = $2 AND client_id = $3",
                        &[&m.sender, scope, client_id],
                    )?;
                }
                return Ok(StoreValue::InboxFull { limit });
            }
        },
    };
    if let Some((client_id, scope)) = &id {
        // A reused id (other text) now names this message.
        conn.execute(
            "UPDATE client_ids SET seq = $4, ts = $5 WHERE sender = $1 AND scope = $2 AND client_id = $3",
            &[&m.sender, scope, client_id, &seq, &ts],
        )?;
    }
    Ok(StoreValue::Appended { seq: uint(seq), ts: m.ts, duplicate: false })
}

/// Stores a private message: its `seq`, or the inbox bound it does not fit
/// (then nothing is written).
fn append_private(conn: &mut Conn, (lo, hi): (&str, &str), m: &NewMessage) -> Result<Result<i64, InboxLimit>, PgError> {
    let recipient = if m.sender == lo { hi } else { lo };
    let inboxed = m.inbox.is_some() && recipient != m.sender;
    if let Some(bound) = m.inbox.filter(|b| inboxed && *b != InboxBound::UNBOUNDED) {
        if let Some(limit) = inbox_full(conn, recipient, (lo, hi), bound)? {
            return Ok(Err(limit));
        }
    }
    let ts = int(m.ts);
    let seq = next_conversation_seq(conn, lo, hi, ts)?;
    let row = [&lo as &(dyn ToSql + Sync), &hi, &seq, &m.sender, &m.from, &m.to, &m.text, &m.client_id, &ts];
    if !inboxed {
        conn.execute(
            "INSERT INTO private_messages (lo, hi, seq, sender, from_name, to_name, text, client_id, ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &row,
        )?;
        return Ok(Ok(seq));
    }
    // The message, and the recipient's next inbox id under its row's lock
    // with the inbox entry: one round trip.
    let mut params = row.to_vec();
    params.push(&recipient);
    conn.execute(
        "WITH m AS (INSERT INTO private_messages (lo, hi, seq, sender, from_name, to_name, text, client_id, ts)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq),
              s AS (INSERT INTO inbox_sizes (owner, pending, last_id) VALUES ($10, 1, 1)
                    ON CONFLICT (owner) DO UPDATE
                    SET pending = inbox_sizes.pending + 1, last_id = inbox_sizes.last_id + 1
                    RETURNING last_id)
         INSERT INTO inbox (owner, id, lo, hi, seq) SELECT $10, s.last_id, $1, $2, m.seq FROM s, m",
        &params,
    )?;
    Ok(Ok(seq))
}

/// The `(seq, ts)` of the message `client_id` names in `scope`, when `m`
/// repeats it: same sender, same target, same text. Locks the id's row, so
/// that two attempts at once are answered one after the other.
fn repeated(
    conn: &mut Conn,
    target: &Target,
    scope: &str,
    m: &NewMessage,
    client_id: &str,
) -> Result<Option<(u64, u64)>, PgError> {
    let first = conn.query_opt(
        "SELECT seq, ts FROM client_ids WHERE sender = $1 AND scope = $2 AND client_id = $3 FOR UPDATE",
        &[&m.sender, &scope, &client_id],
    )?;
    let Some((seq, ts)) = first.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))) else { return Ok(None) };
    let text = match target {
        Target::Room(room) => {
            conn.query_opt("SELECT text FROM room_messages WHERE room = $1 AND seq = $2", &[room, &seq])?
        }
        Target::Conversation(a, b) => {
            let (lo, hi) = pair(a, b);
            conn.query_opt(
                "SELECT text FROM private_messages WHERE lo = $1 AND hi = $2 AND seq = $3",
                &[&lo, &hi, &seq],
            )?
        }
    }
    .map(|r| r.get::<_, String>(0));
    Ok((text.as_deref() == Some(m.text.as_str())).then(|| (uint(seq), uint(ts))))
}

/// The next `seq` of the conversation `(lo, hi)`, taken under its row's lock,
/// creating it when new. A new conversation continues after the newest one
/// between the same display names (see [`display_pair`]); nodes creating one
/// at once take turns by an advisory lock on those names.
fn next_conversation_seq(conn: &mut Conn, lo: &str, hi: &str, ts: i64) -> Result<i64, PgError> {
    let bumped = conn.query_opt(
        "UPDATE conversations
         SET seq = seq + 1, last_ts = greatest(last_ts, $3), last_order = nextval('conversation_order')
         WHERE lo = $1 AND hi = $2
         RETURNING seq",
        &[&lo, &hi, &ts],
    )?;
    if let Some(row) = bumped {
        return Ok(row.get(0));
    }
    let names = display_pair(lo, hi);
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&names])?;
    let row = conn.query_one(
        "INSERT INTO conversations (lo, hi, seq, last_ts, last_order, names)
         VALUES ($1, $2, (SELECT coalesce(max(seq), 0) + 1 FROM conversations WHERE names = $4),
                 $3, nextval('conversation_order'), $4)
         ON CONFLICT (lo, hi) DO UPDATE
         SET seq = conversations.seq + 1, last_ts = greatest(conversations.last_ts, excluded.last_ts),
             last_order = excluded.last_order
         RETURNING seq",
        &[&lo, &hi, &ts, &names],
    )?;
    Ok(row.get(0))
}

/// Which bound of `user`'s inbox one more message from the conversation
/// `(lo, hi)` would pass, if any. Locks the user's inbox row, so that nodes
/// storing messages to one user at once count one after the other.
fn inbox_full(
    conn: &mut Conn,
    user: &str,
    (lo, hi): (&str, &str),
    bound: InboxBound,
) -> Result<Option<InboxLimit>, PgError> {
    let pending: i64 = conn
        .query_opt("SELECT pending FROM inbox_sizes WHERE owner = $1 FOR UPDATE", &[&user])?
        .map_or(0, |r| r.get(0));
    if pending >= i64::from(bound.per_recipient) {
        return Ok(Some(InboxLimit::PerRecipient));
    }
    if pending < i64::from(bound.per_sender) {
        return Ok(None);
    }
    // The conversation's messages since `user` last acknowledged it (two key
    // lookups, where counting inbox rows would cost as many as there are).
    let peer = if user == lo { hi } else { lo };
    let seq: i64 =
        conn.query_opt("SELECT seq FROM conversations WHERE lo = $1 AND hi = $2", &[&lo, &hi])?.map_or(0, |r| r.get(0));
    let ack: i64 = conn
        .query_opt("SELECT ack FROM conv_marks WHERE owner = $1 AND peer = $2", &[&user, &peer])?
        .map_or(0, |r| r.get(0));
    Ok((seq - ack >= i64::from(bound.per_sender)).then_some(InboxLimit::PerSender))
}

/// Raises `user`'s ack of the conversation with `with`, and takes what it
/// acknowledges out of `user`'s inbox.
fn ack(conn: &mut Conn, user: &str, with: &str, seq: u64) -> Result<StoreValue, PgError> {
    let seq = int(seq);
    conn.execute(
        "INSERT INTO conv_marks (owner, peer, read, ack) VALUES ($1, $2, 0, $3)
         ON CONFLICT (owner, peer) DO UPDATE SET ack = greatest(conv_marks.ack, excluded.ack)",
        &[&user, &with, &seq],
    )?;
    let (lo, hi) = pair(user, with);
    let gone = conn.execute(
        "DELETE FROM inbox WHERE owner = $1 AND lo = $2 AND hi = $3 AND seq <= $4",
        &[&user, &lo, &hi, &seq],
    )?;
    if gone > 0 {
        conn.execute(
            "UPDATE inbox_sizes SET pending = greatest(pending - $2, 0) WHERE owner = $1",
            &[&user, &int(gone)],
        )?;
    }
    Ok(StoreValue::Done)
}

/// Forgets client ids past the retention, and the oldest past the count
/// bound, at most [`PURGE_BATCH`] at a time. Returns how many went.
fn purge_ids(conn: &mut Conn, now_ms: i64, options: &PostgresOptions) -> Result<u64, PgError> {
    let cutoff = now_ms.saturating_sub(int(options.id_retention.as_millis() as u64));
    let span = conn.query_one("SELECT min(id), max(id) FROM client_ids", &[])?;
    let (Some(oldest), Some(newest)) = (span.get::<_, Option<i64>>(0), span.get::<_, Option<i64>>(1)) else {
        return Ok(0);
    };
    let over = (newest - oldest + 1 - int(options.max_ids)).max(0);
    // Ids are numbered in order of arrival: walk from the oldest while they
    // are past the retention (or over the bound).
    let rows = conn.query("SELECT id, ts FROM client_ids ORDER BY id LIMIT $1", &[&PURGE_BATCH])?;
    let mut last = None;
    for (n, row) in rows.iter().enumerate() {
        let (id, ts): (i64, i64) = (row.get(0), row.get(1));
        if ts >= cutoff && n as i64 >= over {
            break;
        }
        last = Some(id);
    }
    let Some(last) = last else { return Ok(0) };
    conn.execute("DELETE FROM client_ids WHERE id <= $1", &[&last])
}

/// A message row: `seq, sender, from_name, to_name, text, client_id, ts`
/// starting at column `at`.
fn message(r: &Row, at: usize) -> StoredMessage {
    StoredMessage {
        seq: uint(r.get(at)),
        sender: r.get(at + 1),
        from: r.get(at + 2),
        to: r.get(at + 3),
        text: r.get(at + 4),
        client_id: r.get(at + 5),
        ts: uint(r.get(at + 6)),
    }
}

fn history(conn: &mut Conn, target: &Target, range: SeqRange) -> Result<StoreValue, PgError> {
    // Both ranges take the newest `limit` of the window, then turn them
    // oldest first.
    let (after, before, limit) = match range {
        SeqRange::Before { before, limit } => (0, before.map_or(i64::MAX, int), limit),
        SeqRange::After { after, limit } => (int(after), i64::MAX, limit),
    };
    let limit = i64::from(limit);
    let (rows, oldest) = match target {
        Target::Room(room) => {
            let rows = conn.query(
                "SELECT seq, sender, from_name, NULL::text, text, client_id, ts FROM room_messages
                 WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq DESC LIMIT $4",
                &[room, &after, &before, &limit],
            )?;
            let oldest = conn.query_one("SELECT min(seq) FROM room_messages WHERE room = $1", &[room])?;
            (rows, oldest.get::<_, Option<i64>>(0))
        }
        Target::Conversation(a, b) => {
            let (lo, hi) = pair(a, b);
            let rows = conn.query(
                "SELECT seq, sender, from_name, to_name, text, client_id, ts FROM private_messages
                 WHERE lo = $1 AND hi = $2 AND seq > $3 AND seq < $4 ORDER BY seq DESC LIMIT $5",
                &[&lo, &hi, &after, &before, &limit],
            )?;
            let oldest =
                conn.query_one("SELECT min(seq) FROM private_messages WHERE lo = $1 AND hi = $2", &[&lo, &hi])?;
            (rows, oldest.get::<_, Option<i64>>(0))
        }
    };
    let messages = rows.iter().rev().map(|r| message(r, 0)).collect();
    Ok(StoreValue::Messages { messages, oldest: oldest.map(uint) })
}

fn inbox(conn: &mut Conn, user: &str, after: u64, limit: u32) -> Result<StoreValue, PgError> {
    let rows = conn.query(
        "SELECT i.id, CASE WHEN i.lo = $1 THEN i.hi ELSE i.lo END,
                m.seq, m.sender, m.from_name, m.to_name, m.text, m.client_id, m.ts
         FROM inbox AS i
         JOIN private_messages AS m ON m.lo = i.lo AND m.hi = i.hi AND m.seq = i.seq
         WHERE i.owner = $1 AND i.id > $2
         ORDER BY i.id
         LIMIT $3",
        &[&user, &int(after), &i64::from(limit)],
    )?;
    let cursor = rows.last().map_or(after, |r| uint(r.get(0)));
    let messages = rows.iter().map(|r| InboxMessage { with: r.get(1), message: message(r, 2) }).collect();
    Ok(StoreValue::Inbox { messages, cursor })
}

#[cfg(all(test, feature = "postgres-tests"))]
mod tests;
