//! The SQLite [`Backend`]: one connection, owned by the store's batch thread.
//!
//! A batch runs in one transaction; once an operation of it fails, it runs
//! again with each operation inside its own savepoint.
//! What fails where:
//!
//! - An operation that fails with an error that leaves the transaction intact
//!   (a constraint, a misuse: [`StoreFailure::Other`]) is rolled back to its
//!   savepoint and fails alone; the rest of the batch goes on and commits.
//! - An error that can end the transaction (disk full, I/O, read-only, busy,
//!   SQLite rolling back by itself) or a failed `COMMIT` fails the whole
//!   transaction: it is rolled back, every write of the batch fails with that
//!   error and nothing of it is committed. The reads of the batch are then run
//!   again one by one outside any transaction (they see what is committed, so
//!   they never show a write that was reported as failed); once one of them
//!   fails for I/O or a lock, the reads after it fail with that error without
//!   being tried, so that a locked database stalls a batch only once.
//!
//! After an I/O failure the connection is closed and reopened at the next
//! use (without creating the file: a database that vanished is reported as a
//! failure, never silently replaced by an empty one), so that a disk that
//! recovers, or a directory that becomes writable again, is used again.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use natter_core::store::{
    display_pair, id_scope, ConversationSummary, InboxBound, InboxLimit, InboxMessage, NewMessage, SeqRange,
    StoreError, StoreFailure, StoreOp, StoreValue, StoredMessage, StoredRoom, Target,
};
use rusqlite::{params, CachedStatement, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};

mod migrate;

use super::password::token_hash;
use super::Backend;

/// The schema version this build writes (`PRAGMA user_version`). Version 2:
/// user names unique ignoring case, client ids scoped to their room or
/// conversation, the inbox table (see `sqlite/migrate.rs`).
pub const SCHEMA_VERSION: i64 = 2;

/// The database file inside the data directory.
pub const DB_FILE: &str = "natter.sqlite3";

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS tokens (
    hash       TEXT PRIMARY KEY,
    user       TEXT NOT NULL REFERENCES users(name),
    expires_ms INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS members (
    room TEXT NOT NULL REFERENCES rooms(name),
    user TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room, user)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(user, room);

CREATE TABLE IF NOT EXISTS room_messages (
    room      TEXT NOT NULL REFERENCES rooms(name),
    seq       INTEGER NOT NULL,
    sender    TEXT NOT NULL,
    from_name TEXT NOT NULL,
    text      TEXT NOT NULL,
    client_id TEXT,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS conversations (
    lo      TEXT NOT NULL,
    hi      TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    -- Grows by one with every private message in any conversation: orders
    -- conversations by recency even within one millisecond.
    last_order INTEGER NOT NULL,
    -- `store::display_pair` of lo and hi: a new conversation continues the
    -- `seq` of an earlier one with the same names.
    names   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (lo, hi)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_by_hi ON conversations(hi, lo);
-- The order was the index's only use: `Orders` keeps the next one now.
DROP INDEX IF EXISTS conversations_by_order;
CREATE INDEX IF NOT EXISTS conversations_by_names ON conversations(names);

CREATE TABLE IF NOT EXISTS private_messages (
    lo        TEXT NOT NULL,
    hi        TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    sender    TEXT NOT NULL,
    from_name TEXT NOT NULL,
    to_name   TEXT,
    text      TEXT NOT NULL,
    client_id TEXT,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (lo, hi, seq),
    FOREIGN KEY (lo, hi) REFERENCES conversations(lo, hi)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS conv_marks (
    user TEXT NOT NULL,
    peer TEXT NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    ack  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user, peer)
) WITHOUT ROWID;

-- A client id names a message within its sender and scope (the room, or
-- the conversation): see `StoreOp::Append`. `id` is the order of arrival,
-- which the purge walks from the oldest.
CREATE TABLE IF NOT EXISTS client_ids (
    id        INTEGER PRIMARY KEY,
    sender    TEXT NOT NULL,
    scope     TEXT NOT NULL,
    client_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    UNIQUE (sender, scope, client_id)
);

-- Each registered user's unacknowledged private messages, in order of
-- arrival (`id`: the conversation's `last_order` when it arrived, which
-- grows with every private message; the page cursor), and how many there
-- are.
CREATE TABLE IF NOT EXISTS inbox (
    user TEXT NOT NULL,
    id   INTEGER NOT NULL,
    lo   TEXT NOT NULL,
    hi   TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox_sizes (
    user    TEXT PRIMARY KEY,
    pending INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS guest_claims (
    lname TEXT PRIMARY KEY,
    node  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// SQLite refused to open or set up the database.
    #[error("cannot open database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The database was written by a newer build.
    #[error("database {path} has schema version {found}; this build knows versions up to {supported}")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
        /// [`SCHEMA_VERSION`].
        supported: i64,
    },
}

/// Storage in one SQLite database file, `natter.sqlite3` in the data
/// directory.
pub struct SqliteBackend {
    path: PathBuf,
    /// `None` after an I/O failure, until the next use reopens it.
    conn: Option<Connection>,
    options: SqliteOptions,
    /// When client ids were last purged (see [`SqliteOptions`]).
    last_purge: Option<Instant>,
    orders: Orders,
    _checkpointer: Checkpointer,
}

/// The next `last_order` of a conversation, counted here instead of read
/// with `max(last_order)` in every private message's statement, which also
/// needed an index on it that every message moved an entry of. Only this
/// connection writes the database, so the newest order read once at open
/// stays ahead of every row. A transaction rolled back leaves a gap, which
/// the order does not mind: it only has to grow.
#[derive(Debug, Default)]
struct Orders(Cell<Option<i64>>);

impl Orders {
    fn next(&self, conn: &Connection) -> rusqlite::Result<i64> {
        let last = match self.0.get() {
            Some(last) => last,
            None => conn.query_row("SELECT coalesce(max(last_order), 0) FROM conversations", [], |r| r.get(0))?,
        };
        self.0.set(Some(last + 1));
        Ok(last + 1)
    }
}

/// How the database trades safety for speed, and how long it remembers
/// client ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// When a commit reaches the disk.
    pub sync: SyncMode,
    /// Client ids younger than this are remembered (PROTOCOL.md: at least
    /// 24 hours)...
    pub id_retention: Duration,
    /// ...unless more than this many are stored: then the oldest go first,
    /// so the table cannot grow without bound under a flood.
    pub max_ids: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { sync: SyncMode::Full, id_retention: Duration::from_secs(86_400), max_ids: 10_000_000 }
    }
}

/// SQLite's `synchronous` setting, as `--sync` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Every commit is on the disk before its `ok` goes out: an `ok`
    /// survives a power cut. One fsync per batch, not per message.
    Full,
    /// Commits reach the disk at checkpoints: an `ok` survives the process
    /// crashing, but the last commits can be lost if the machine goes down.
    Normal,
}

impl SyncMode {
    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        }
    }
}

/// How often client ids past their retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// Most client ids one purge deletes: it runs on the batch thread, between
/// batches, and must stay short.
const PURGE_BATCH: i64 = 20_000;

/// Creates `dir` (and its parents) if missing; a directory this creates is
/// the server user's only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates the database file, readable and writable by the server's user
/// only, or takes group and world access away from one that an older build
/// created with 0644 (with its WAL files: SQLite gives new ones the
/// database file's permissions).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => make_private(path),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        let Ok(meta) = std::fs::metadata(&file) else { continue };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::info!(path = %file.display(), "making the database file readable by this user only");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))?;
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn make_private(_: &Path) -> std::io::Result<()> {
    Ok(())
}

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies the WAL into the database file on its own thread and connection
/// (`PASSIVE`: it never blocks the writer), so that the batch thread does not
/// spend its time, and its callers' latency, on a checkpoint's writes and
/// fsync. The batch connection keeps a far larger automatic checkpoint as a
/// backstop. Stopped and joined on drop.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: PathBuf) -> Checkpointer {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("natter-checkpoint".into())
            .spawn(move || checkpoint_until_stopped(&path, &flag))
            .map_err(|e| tracing::warn!(error = %e, "no checkpoint thread: the batch thread checkpoints"))
            .ok();
        Checkpointer { stop, thread }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn checkpoint_until_stopped(path: &Path, stop: &(Mutex<bool>, Condvar)) {
    let (lock, wake) = stop;
    let mut conn: Option<Connection> = None;
    let mut stopped = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    while !*stopped {
        stopped = wake.wait_timeout(stopped, CHECKPOINT_EVERY).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        if *stopped {
            break;
        }
        drop(stopped);
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => {
                Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                    .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
            }
        }
        .and_then(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map(|()| c));
        match result {
            Ok(c) => conn = Some(c),
            // Reopened on the next round; the backstop covers a long failure.
            Err(e) => tracing::debug!(error = %e, "checkpoint failed"),
        }
        stopped = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend").field("path", &self.path).field("open", &self.conn.is_some()).finish()
    }
}

impl SqliteBackend {
    /// Opens (creating if missing) `dir` and `dir/natter.sqlite3`, sets the
    /// connection up and creates, migrates or checks the schema. What this
    /// creates is readable by the server's user only: the database holds
    /// password hashes and private messages.
    pub fn open_with(dir: &Path, options: SqliteOptions) -> Result<Self, OpenError> {
        create_private_dir(dir).map_err(|source| OpenError::Dir { path: dir.to_owned(), source })?;
        let path = dir.join(DB_FILE);
        create_private_file(&path).map_err(|source| OpenError::Dir { path: path.clone(), source })?;
        let sqlite = |source| OpenError::Sqlite { path: path.clone(), source };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(sqlite)?;
        configure(&conn, options.sync).map_err(sqlite)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sqlite)?;
        if found > SCHEMA_VERSION {
            return Err(OpenError::TooNew { path, found, supported: SCHEMA_VERSION });
        }
        let tx = conn.unchecked_transaction().map_err(sqlite)?;
        if found == 1 {
            migrate::settle_case_twins(&tx).map_err(sqlite)?;
            migrate::v1_tables(&tx).map_err(sqlite)?;
        }
        tx.execute_batch(SCHEMA).map_err(sqlite)?;
        if found == 1 {
            migrate::v1_rows(&tx, options.id_retention).map_err(sqlite)?;
        }
        tx.execute_batch(migrate::USERS_NOCASE_INDEX).map_err(sqlite)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        let checkpointer = Checkpointer::start(path.clone());
        // The first purge waits a round: start-up has enough to do.
        let last_purge = Some(Instant::now());
        let orders = Orders::default();
        Ok(SqliteBackend { path, conn: Some(conn), options, last_purge, orders, _checkpointer: checkpointer })
    }

    /// Opens `dir` with the default [`SqliteOptions`].
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        SqliteBackend::open_with(dir, SqliteOptions::default())
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open connection, reopening it after an I/O failure.
    fn conn(&mut self) -> rusqlite::Result<&Connection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                tracing::info!(path = %self.path.display(), "reopening the database");
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = Connection::open_with_flags(&self.path, flags)?;
                configure(&conn, self.options.sync)?;
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// The open connection (reopening it after an I/O failure) with the
    /// order counter, for [`run_op`].
    fn conn_and_orders(&mut self) -> rusqlite::Result<(&Connection, &Orders)> {
        self.conn()?;
        let conn = self.conn.as_ref().ok_or(rusqlite::Error::InvalidQuery)?;
        Ok((conn, &self.orders))
    }

    /// Maps `e`, and after an I/O failure drops the connection so that the
    /// next use reopens it.
    fn fail(&mut self, e: &rusqlite::Error) -> StoreError {
        let kind = failure_kind(e);
        if kind == StoreFailure::Io {
            if let Some(conn) = self.conn.take() {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
            }
        }
        StoreError::Backend(kind)
    }

    /// Runs `ops` in one transaction. `Err` means the transaction failed and
    /// nothing of it was committed.
    fn run_batch(&mut self, ops: &[&StoreOp]) -> rusqlite::Result<Vec<Result<StoreValue, StoreError>>> {
        let writes = ops.iter().any(|op| op.writes());
        let (conn, orders) = self.conn_and_orders()?;
        if !conn.is_autocommit() {
            // Left open by an earlier panic: nothing of it was reported done.
            conn.execute_batch("ROLLBACK")?;
        }
        let begin = if writes { "BEGIN IMMEDIATE" } else { "BEGIN DEFERRED" };
        conn.prepare_cached(begin)?.execute([])?;
        let result = run_without_savepoints(conn, orders, ops)
            .and_then(|done| match done {
                Some(out) => Ok(out),
                None => {
                    // One operation failed: start over with each in its own
                    // savepoint, so that it fails alone.
                    conn.prepare_cached("ROLLBACK")?.execute([])?;
                    conn.prepare_cached(begin)?.execute([])?;
                    run_in_transaction(conn, orders, ops)
                }
            })
            .and_then(|out| {
                conn.prepare_cached("COMMIT")?.execute([])?;
                Ok(out)
            });
        if result.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        result
    }

    /// Runs one read outside any transaction.
    fn read_alone(&mut self, op: &StoreOp) -> Result<StoreValue, StoreError> {
        let result = self.conn_and_orders().and_then(|(conn, orders)| run_op(&Batch::new(conn, orders), op));
        result.map_err(|e| {
            tracing::warn!(error = %e, "storage read failed");
            self.fail(&e)
        })
    }

    /// The batch's transaction, and when it fails, its reads alone.
    fn execute_batch(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        match self.run_batch(ops) {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(error = %e, ops = ops.len(), "storage transaction failed, rolled back");
                let err = self.fail(&e);
                // Reads again one by one, until one fails for I/O or a lock:
                // then the rest fail alike without waiting once more.
                let mut down: Option<StoreError> = None;
                ops.iter()
                    .map(|op| {
                        if op.writes() {
                            return Err(err.clone());
                        }
                        if let Some(down) = &down {
                            return Err(down.clone());
                        }
                        let result = self.read_alone(op);
                        if let Err(e @ StoreError::Backend(StoreFailure::Io | StoreFailure::Busy)) = &result {
                            down = Some(e.clone());
                        }
                        result
                    })
                    .collect()
            }
        }
    }

    /// Runs [`purge_ids`] when it is due, in a transaction of its own.
    fn purge_when_due(&mut self) {
        if self.last_purge.is_some_and(|at| at.elapsed() < PURGE_EVERY) {
            return;
        }
        self.last_purge = Some(Instant::now());
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| int(d.as_millis() as u64));
        let options = self.options;
        let result = self.conn().and_then(|conn| {
            let tx = conn.unchecked_transaction()?;
            let n = purge_ids(&tx, now_ms, &options)?;
            tx.commit()?;
            Ok(n)
        });
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(ids = n, "forgot old client ids"),
            Err(e) => tracing::warn!(error = %e, "purging client ids failed"),
        }
    }
}

impl Backend for SqliteBackend {
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        if ops.is_empty() {
            return Vec::new();
        }
        let results = self.execute_batch(ops);
        self.purge_when_due();
        results
    }

    fn password_hash(&mut self, user: &str) -> Result<Option<String>, StoreError> {
        let result = self.conn().and_then(|conn| {
            // The hub passes the registered spelling; ignoring case here too
            // keeps a login right if it ever does not.
            conn.prepare_cached("SELECT hash FROM users WHERE name = ?1 COLLATE NOCASE")?
                .query_row([user], |r| r.get(0))
                .optional()
        });
        result.map_err(|e| {
            tracing::warn!(error = %e, "password hash lookup failed");
            self.fail(&e)
        })
    }

    fn create_user(&mut self, user: &str, hash: &str, created_ms: u64) -> Result<bool, StoreError> {
        let result = self.conn().and_then(|conn| {
            conn.prepare_cached(
                // No conflict target: a twin in another case hits the
                // `users_name_nocase` index, and that is a taken name too.
                "INSERT INTO users (name, hash, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![user, hash, int(created_ms)])
        });
        match result {
            Ok(inserted) => Ok(inserted == 1),
            Err(e) => {
                tracing::warn!(error = %e, "creating a user failed");
                Err(self.fail(&e))
            }
        }
    }

    fn create_token(&mut self, token_hash: &str, user: &str, expires_ms: u64) -> Result<(), StoreError> {
        let result = self.conn().and_then(|conn| {
            conn.prepare_cached("INSERT INTO tokens (hash, user, expires_ms, revoked) VALUES (?1, ?2, ?3, 0)")?
                .execute(params![token_hash, user, int(expires_ms)])
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "creating a token failed");
                Err(self.fail(&e))
            }
        }
    }
}

/// The most SQLite's page cache may hold, KiB.
const CACHE_KIB: i64 = 64 * 1024;

/// WAL pages (4 KiB) after which a commit checkpoints by itself.
const CHECKPOINT_PAGES: i64 = 16 * 1024;

/// Connection settings, on every open.
fn configure(conn: &Connection, sync: SyncMode) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite refused WAL mode");
    }
    conn.pragma_update(None, "synchronous", sync.pragma())?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // SQLite's default page cache is 2 MiB: past that, the indexes every
    // message write walks come back through pread. This is a cap, not an
    // allocation.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    // The checkpointer thread does the work; this is the backstop. At the
    // default of 1,000 pages a busy batch thread spent a quarter of its time
    // checkpointing.
    conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The kind of a SQLite failure.
pub fn failure_kind(e: &rusqlite::Error) -> StoreFailure {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull | ErrorCode::ReadOnly | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            StoreFailure::Io
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreFailure::Busy,
        _ => StoreFailure::Other,
    }
}

/// Whether an operation's error leaves the transaction intact, so that the
/// operation can fail alone (see the module docs).
fn fails_alone(conn: &Connection, e: &rusqlite::Error) -> bool {
    failure_kind(e) == StoreFailure::Other && !conn.is_autocommit()
}

/// The body of a batch transaction as it nearly always runs: without a
/// savepoint per operation, which would be two more statements for each.
/// `None` when an operation failed on its own: the caller rolls back and
/// runs [`run_in_transaction`] instead.
fn run_without_savepoints(
    conn: &Connection,
    orders: &Orders,
    ops: &[&StoreOp],
) -> rusqlite::Result<Option<Vec<Result<StoreValue, StoreError>>>> {
    let batch = Batch::new(conn, orders);
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        match run_op(&batch, op) {
            Ok(value) => out.push(Ok(value)),
            Err(e) if fails_alone(conn, &e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// The body of a batch transaction with an operation that fails: each op
/// in a savepoint.
fn run_in_transaction(
    conn: &Connection,
    orders: &Orders,
    ops: &[&StoreOp],
) -> rusqlite::Result<Vec<Result<StoreValue, StoreError>>> {
    let batch = Batch::new(conn, orders);
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        match run_op(&batch, op) {
            Ok(value) => {
                conn.prepare_cached("RELEASE op")?.execute([])?;
                out.push(Ok(value));
            }
            Err(e) if fails_alone(conn, &e) => {
                tracing::warn!(error = %e, "storage operation failed, rolled back alone");
                conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
                conn.prepare_cached("RELEASE op")?.execute([])?;
                out.push(Err(StoreError::Backend(StoreFailure::Other)));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The statements every stored message runs.
#[derive(Clone, Copy, Debug)]
enum Hot {
    ClientIdLookup,
    RoomSeq,
    RoomMessage,
    ConversationSeq,
    PrivateMessage,
    Inbox,
    InboxSize,
    ClientId,
}

impl Hot {
    const COUNT: usize = 8;

    fn sql(self) -> &'static str {
        match self {
            Hot::ClientIdLookup => "SELECT seq, ts FROM client_ids WHERE sender = ?1 AND scope = ?2 AND client_id = ?3",
            Hot::RoomSeq => {
                "INSERT INTO rooms (name, seq) VALUES (?1, 1) ON CONFLICT (name) DO UPDATE SET seq = seq + 1 RETURNING seq"
            }
            Hot::RoomMessage => {
                "INSERT INTO room_messages (room, seq, sender, from_name, text, client_id, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            }
            Hot::ConversationSeq => {
                "UPDATE conversations SET seq = seq + 1, last_ts = max(last_ts, ?3), last_order = ?4
                 WHERE lo = ?1 AND hi = ?2
                 RETURNING seq, last_order"
            }
            Hot::PrivateMessage => {
                "INSERT INTO private_messages (lo, hi, seq, sender, from_name, to_name, text, client_id, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            }
            Hot::Inbox => "INSERT INTO inbox (user, id, lo, hi, seq) VALUES (?1, ?2, ?3, ?4, ?5)",
            Hot::InboxSize => {
                "INSERT INTO inbox_sizes (user, pending) VALUES (?1, 1)
                 ON CONFLICT (user) DO UPDATE SET pending = pending + 1"
            }
            Hot::ClientId => {
                "INSERT INTO client_ids (sender, scope, client_id, seq, ts) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sender, scope, client_id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts"
            }
        }
    }
}

/// What the operations of one batch share: the connection, the order
/// counter, and the [`Hot`] statements, taken from rusqlite's statement
/// cache once a batch instead of once a message: every take and return
/// hashes the statement's text, and doing it once a batch took 11 % off a
/// private message's instructions in the backend (callgrind).
struct Batch<'c> {
    conn: &'c Connection,
    orders: &'c Orders,
    hot: [RefCell<Option<CachedStatement<'c>>>; Hot::COUNT],
}

impl<'c> Batch<'c> {
    fn new(conn: &'c Connection, orders: &'c Orders) -> Self {
        Batch { conn, orders, hot: Default::default() }
    }

    /// The statement `which`, prepared (or taken from the cache) at its
    /// first use in the batch.
    fn sql(&self, which: Hot) -> rusqlite::Result<RefMut<'_, CachedStatement<'c>>> {
        let mut slot = self.hot[which as usize].borrow_mut();
        if slot.is_none() {
            *slot = Some(self.conn.prepare_cached(which.sql())?);
        }
        RefMut::filter_map(slot, Option::as_mut).map_err(|_| rusqlite::Error::InvalidQuery)
    }
}

/// `u64` to SQLite's `i64` (values past `i64::MAX` never occur: saturate).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// SQLite's `i64` back to `u64`.
fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A conversation's key: the pair sorted.
fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Runs one operation (never `Register`, `Login` or `Verify`: those go
/// through the password pool and the dedicated [`Backend`] methods).
fn run_op(b: &Batch<'_>, op: &StoreOp) -> rusqlite::Result<StoreValue> {
    let conn = b.conn;
    match op {
        StoreOp::LoadAll => load_all(conn),
        StoreOp::CheckToken { token, now_ms } => check_token(conn, token, *now_ms),
        StoreOp::Revoke { token } => {
            let user = conn
                .prepare_cached("UPDATE tokens SET revoked = 1 WHERE hash = ?1 RETURNING user")?
                .query_row([token_hash(token)], |r| r.get(0))
                .optional()?;
            Ok(StoreValue::Revoked { user })
        }
        StoreOp::Join { user, room } => join(conn, user, room),
        StoreOp::Leave { user, room } => {
            conn.prepare_cached("DELETE FROM members WHERE room = ?1 AND user = ?2")?.execute([room, user])?;
            Ok(StoreValue::Done)
        }
        StoreOp::Append { target, message } => append(b, target, message),
        StoreOp::History { target, range } => history(conn, target, *range),
        StoreOp::Inbox { user, after, limit } => inbox(conn, user, *after, *limit),
        StoreOp::Ack { user, with, seq } => ack(conn, user, with, *seq),
        StoreOp::Read { user, target, seq } => read(conn, user, target, *seq),
        StoreOp::Conversations { user, limit } => conversations(conn, user, *limit),
        StoreOp::ReadMarks { user } => {
            let mut st = conn.prepare_cached(
                "SELECT m.room, m.read, coalesce(r.seq, 0) FROM members m LEFT JOIN rooms r ON r.name = m.room
                 WHERE m.user = ?1 ORDER BY m.room",
            )?;
            let mark = |r: &rusqlite::Row| Ok((r.get(0)?, uint(r.get(1)?), uint(r.get(2)?)));
            let marks = st.query_map([user], mark)?.collect::<rusqlite::Result<_>>()?;
            Ok(StoreValue::ReadMarks { marks })
        }
        StoreOp::LastSeqs { rooms, users, active_since } => last_seqs(conn, rooms, users, *active_since),
        StoreOp::FindUser { name } => {
            let found = conn
                .prepare_cached("SELECT name FROM users WHERE name = ?1 COLLATE NOCASE")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            Ok(StoreValue::FoundUser(found))
        }
        StoreOp::ClaimGuest { name, node, alive } => claim_guest(conn, name, *node, alive),
        StoreOp::ReleaseGuest { name, node } => {
            let lname = name.to_ascii_lowercase();
            conn.prepare_cached("DELETE FROM guest_claims WHERE lname = ?1 AND node = ?2")?
                .execute(rusqlite::params![lname, *node as i64])?;
            Ok(StoreValue::Done)
        }
        StoreOp::LiveTokens { tokens } => live_tokens(conn, tokens),
        StoreOp::RoomMembers { rooms } => {
            let mut st = conn.prepare_cached("SELECT user FROM members WHERE room = ?1 ORDER BY user")?;
            let mut seq_of = conn.prepare_cached("SELECT seq FROM rooms WHERE name = ?1")?;
            let mut out = Vec::with_capacity(rooms.len());
            for room in rooms {
                let members = st.query_map([room], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
                let seq: Option<i64> = seq_of.query_row([room], |r| r.get(0)).optional()?;
                out.push((room.clone(), seq.map_or(0, uint), members));
            }
            Ok(StoreValue::RoomMembers { rooms: out })
        }
        StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. } => {
            Err(rusqlite::Error::InvalidParameterName("password operations do not run in a batch".into()))
        }
    }
}

/// `StoreOp::ClaimGuest`. One writer at a time holds the database, so
/// reading the claim and writing it in one transaction cannot race.
fn claim_guest(conn: &Connection, name: &str, node: u64, alive: &Option<Vec<u64>>) -> rusqlite::Result<StoreValue> {
    let lname = name.to_ascii_lowercase();
    let holder: Option<i64> = conn
        .prepare_cached("SELECT node FROM guest_claims WHERE lname = ?1")?
        .query_row([&lname], |r| r.get(0))
        .optional()?;
    let dead = |h: u64| alive.as_ref().is_some_and(|a| !a.contains(&h));
    let free = holder.is_none_or(|h| h as u64 == node || dead(h as u64));
    if free {
        conn.prepare_cached("INSERT OR REPLACE INTO guest_claims (lname, node) VALUES (?1, ?2)")?
            .execute(rusqlite::params![lname, node as i64])?;
    }
    Ok(StoreValue::Claimed(free))
}

fn check_token(conn: &Connection, token: &str, now_ms: u64) -> rusqlite::Result<StoreValue> {
    let row = conn
        .prepare_cached("SELECT user, expires_ms, revoked FROM tokens WHERE hash = ?1")?
        .query_row([token_hash(token)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, bool>(2)?)))
        .optional()?;
    Ok(match row {
        Some((user, expires, false)) if int(now_ms) < expires => {
            StoreValue::TokenUser { user, expires_ms: uint(expires) }
        }
        _ => StoreValue::Rejected,
    })
}

/// The tokens of `tokens` stored and not revoked: one indexed lookup each.
fn live_tokens(conn: &Connection, tokens: &[String]) -> rusqlite::Result<StoreValue> {
    let mut st = conn.prepare_cached("SELECT revoked FROM tokens WHERE hash = ?1")?;
    let mut live = Vec::new();
    for token in tokens {
        let revoked: Option<bool> = st.query_row([token_hash(token)], |r| r.get(0)).optional()?;
        if revoked == Some(false) {
            live.push(token.clone());
        }
    }
    Ok(StoreValue::LiveTokens { tokens: live })
}

fn join(conn: &Connection, user: &str, room: &str) -> rusqlite::Result<StoreValue> {
    conn.prepare_cached("INSERT INTO rooms (name, seq) VALUES (?1, 0) ON CONFLICT (name) DO NOTHING")?
        .execute([room])?;
    conn.prepare_cached(
        "INSERT INTO members (room, user, read) VALUES (?1, ?2, 0) ON CONFLICT (room, user) DO NOTHING",
    )?
    .execute([room, user])?;
    Ok(StoreValue::Done)
}

fn read(conn: &Connection, user: &str, target: &Target, seq: u64) -> rusqlite::Result<StoreValue> {
    match target {
        Target::Room(room) => {
            conn.prepare_cached("UPDATE members SET read = max(read, ?3) WHERE room = ?1 AND user = ?2")?
                .execute(params![room, user, int(seq)])?;
        }
        Target::Conversation(a, b) => {
            // The contract puts `user` first; accept either order.
            let peer = if a == user { b } else { a };
            conn.prepare_cached(
                "INSERT INTO conv_marks (user, peer, read, ack) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (user, peer) DO UPDATE SET read = max(read, excluded.read)",
            )?
            .execute(params![user, peer, int(seq)])?;
        }
    }
    Ok(StoreValue::Done)
}

fn conversations(conn: &Connection, user: &str, limit: u32) -> rusqlite::Result<StoreValue> {
    let mut st = conn.prepare_cached(
        "SELECT p.peer, p.seq, coalesce(k.read, 0)
         FROM (SELECT CASE WHEN lo = ?1 THEN hi ELSE lo END AS peer, seq, last_order
               FROM conversations WHERE lo = ?1 OR hi = ?1) AS p
         LEFT JOIN conv_marks AS k ON k.user = ?1 AND k.peer = p.peer
         ORDER BY p.last_order DESC
         LIMIT ?2",
    )?;
    let conversations = st
        .query_map(params![user, i64::from(limit)], |r| {
            Ok(ConversationSummary { with: r.get(0)?, seq: uint(r.get(1)?), read: uint(r.get(2)?) })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(StoreValue::Conversations { conversations })
}

/// The newest `seq` of `rooms` (0 for an unknown room) and of every
/// conversation of `users` (active since `active_since` when given): one
/// indexed lookup each.
fn last_seqs(
    conn: &Connection,
    rooms: &[String],
    users: &[String],
    active_since: Option<u64>,
) -> rusqlite::Result<StoreValue> {
    let mut room_seq = conn.prepare_cached("SELECT seq FROM rooms WHERE name = ?1")?;
    let mut out_rooms = Vec::with_capacity(rooms.len());
    for room in rooms {
        let seq: Option<i64> = room_seq.query_row([room], |r| r.get(0)).optional()?;
        out_rooms.push((room.clone(), seq.map_or(0, uint)));
    }
    let mut st = conn.prepare_cached(
        "SELECT lo, hi, seq FROM conversations WHERE lo = ?1 AND last_ts >= ?2
         UNION SELECT lo, hi, seq FROM conversations WHERE hi = ?1 AND last_ts >= ?2",
    )?;
    let since = int(active_since.unwrap_or(0));
    let mut seen = std::collections::BTreeMap::new();
    for user in users {
        let rows = st.query_map(rusqlite::params![user, since], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, uint(r.get(2)?)))
        })?;
        for row in rows {
            let (lo, hi, seq) = row?;
            seen.insert((lo, hi), seq);
        }
    }
    let conversations = seen.into_iter().map(|((lo, hi), seq)| (lo, hi, seq)).collect();
    Ok(StoreValue::LastSeqs { rooms: out_rooms, conversations })
}

fn load_all(conn: &Connection) -> rusqlite::Result<StoreValue> {
    let users = conn
        .prepare_cached("SELECT name FROM users ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    let mut st = conn.prepare_cached("SELECT room, user FROM members ORDER BY room, user")?;
    let mut rows = st.query([])?;
    while let Some(row) = rows.next()? {
        members.entry(row.get(0)?).or_default().push(row.get(1)?);
    }
    let rooms = conn
        .prepare_cached(
            "SELECT name, seq FROM rooms AS r
             WHERE seq > 0
                OR EXISTS (SELECT 1 FROM members AS m WHERE m.room = r.name)
                OR EXISTS (SELECT 1 FROM room_messages AS x WHERE x.room = r.name)
             ORDER BY name",
        )?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, uint(r.get(1)?))))?
        .map(|row| {
            row.map(|(name, seq)| {
                let members = members.remove(&name).unwrap_or_default();
                StoredRoom { name, seq, members }
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(StoreValue::Snapshot { users, rooms })
}

fn append(b: &Batch<'_>, target: &Target, m: &NewMessage) -> rusqlite::Result<StoreValue> {
    // Only a message with a client id needs its scope.
    let id = m.client_id.as_deref().map(|client_id| (client_id, id_scope(target)));
    if let Some((client_id, scope)) = &id {
        if let Some((seq, ts)) = repeated(b, target, scope, m, client_id)? {
            return Ok(StoreValue::Appended { seq, ts, duplicate: true });
        }
    }
    let ts = int(m.ts);
    let seq: i64 = match target {
        Target::Room(room) => {
            let seq = b.sql(Hot::RoomSeq)?.query_row([room], |r| r.get(0))?;
            b.sql(Hot::RoomMessage)?.execute(params![room, seq, m.sender, m.from, m.text, m.client_id, ts])?;
            seq
        }
        Target::Conversation(x, y) => {
            let (lo, hi) = pair(x, y);
            let recipient = if m.sender == lo { hi } else { lo };
            let bounded = m.inbox.filter(|bound| recipient != m.sender && *bound != InboxBound::UNBOUNDED);
            if let Some(bound) = bounded {
                if let Some(limit) = inbox_full(b.conn, recipient, (lo, hi), bound)? {
                    return Ok(StoreValue::InboxFull { limit });
                }
            }
            let (seq, order) = next_conversation_seq(b, lo, hi, ts, b.orders.next(b.conn)?)?;
            b.sql(Hot::PrivateMessage)?.execute(params![
                lo,
                hi,
                seq,
                m.sender,
                m.from,
                m.to,
                m.text,
                m.client_id,
                ts
            ])?;
            if m.inbox.is_some() && recipient != m.sender {
                into_inbox(b, recipient, order, (lo, hi), seq)?;
            }
            seq
        }
    };
    if let Some((client_id, scope)) = id {
        // A reused id (other text) now names this message.
        b.sql(Hot::ClientId)?.execute(params![m.sender, scope, client_id, seq, ts])?;
    }
    Ok(StoreValue::Appended { seq: uint(seq), ts: m.ts, duplicate: false })
}

/// The `(seq, ts)` of the message `client_id` names in `scope`, when `m`
/// repeats it: same sender, same target, same text.
fn repeated(
    b: &Batch<'_>,
    target: &Target,
    scope: &str,
    m: &NewMessage,
    client_id: &str,
) -> rusqlite::Result<Option<(u64, u64)>> {
    let conn = b.conn;
    let first = b
        .sql(Hot::ClientIdLookup)?
        .query_row([m.sender.as_str(), scope, client_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .optional()?;
    let Some((seq, ts)) = first else { return Ok(None) };
    let text: Option<String> = match target {
        Target::Room(room) => conn
            .prepare_cached("SELECT text FROM room_messages WHERE room = ?1 AND seq = ?2")?
            .query_row(params![room, seq], |r| r.get(0))
            .optional()?,
        Target::Conversation(x, y) => {
            let (lo, hi) = pair(x, y);
            conn.prepare_cached("SELECT text FROM private_messages WHERE lo = ?1 AND hi = ?2 AND seq = ?3")?
                .query_row(params![lo, hi, seq], |r| r.get(0))
                .optional()?
        }
    };
    Ok((text.as_deref() == Some(m.text.as_str())).then(|| (uint(seq), uint(ts))))
}

/// The next `seq` of the conversation `(lo, hi)`, and its new place in the
/// order of all private messages, creating it when new. A new conversation
/// continues after the newest one between the same display names (see
/// [`display_pair`]); an existing one, nearly every message, costs one
/// statement. `order` is the conversation's new `last_order`.
fn next_conversation_seq(b: &Batch<'_>, lo: &str, hi: &str, ts: i64, order: i64) -> rusqlite::Result<(i64, i64)> {
    let row = |r: &Row<'_>| Ok((r.get(0)?, r.get(1)?));
    let bumped = b.sql(Hot::ConversationSeq)?.query_row(params![lo, hi, ts, order], row).optional()?;
    if let Some(found) = bumped {
        return Ok(found);
    }
    b.conn
        .prepare_cached(
            "INSERT INTO conversations (lo, hi, seq, last_ts, last_order, names)
         VALUES (?1, ?2,
                 (SELECT coalesce(max(seq), 0) + 1 FROM conversations WHERE names = ?4),
                 ?3, ?5, ?4)
         RETURNING seq, last_order",
        )?
        .query_row(params![lo, hi, ts, display_pair(lo, hi), order], row)
}

/// Which bound of `user`'s inbox one more message from the conversation
/// `(lo, hi)` would pass, if any.
fn inbox_full(
    conn: &Connection,
    user: &str,
    (lo, hi): (&str, &str),
    bound: InboxBound,
) -> rusqlite::Result<Option<InboxLimit>> {
    let pending: i64 = conn
        .prepare_cached("SELECT pending FROM inbox_sizes WHERE user = ?1")?
        .query_row([user], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if pending >= i64::from(bound.per_recipient) {
        return Ok(Some(InboxLimit::PerRecipient));
    }
    if pending < i64::from(bound.per_sender) {
        return Ok(None);
    }
    // The conversation's messages since `user` last acknowledged it: the
    // sender's unacknowledged ones, and `user`'s own after its ack, which
    // are few. Two key lookups, where counting the inbox rows would cost
    // as many as there are, on every message of a flood.
    let peer = if user == lo { hi } else { lo };
    let seq: i64 = conn
        .prepare_cached("SELECT seq FROM conversations WHERE lo = ?1 AND hi = ?2")?
        .query_row([lo, hi], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let ack: i64 = conn
        .prepare_cached("SELECT ack FROM conv_marks WHERE user = ?1 AND peer = ?2")?
        .query_row([user, peer], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    Ok((seq - ack >= i64::from(bound.per_sender)).then_some(InboxLimit::PerSender))
}

fn into_inbox(b: &Batch<'_>, user: &str, id: i64, (lo, hi): (&str, &str), seq: i64) -> rusqlite::Result<()> {
    b.sql(Hot::Inbox)?.execute(params![user, id, lo, hi, seq])?;
    b.sql(Hot::InboxSize)?.execute([user])?;
    Ok(())
}

/// Raises `user`'s ack of the conversation with `with`, and takes what it
/// acknowledges out of `user`'s inbox.
fn ack(conn: &Connection, user: &str, with: &str, seq: u64) -> rusqlite::Result<StoreValue> {
    conn.prepare_cached(
        "INSERT INTO conv_marks (user, peer, read, ack) VALUES (?1, ?2, 0, ?3)
         ON CONFLICT (user, peer) DO UPDATE SET ack = max(ack, excluded.ack)",
    )?
    .execute(params![user, with, int(seq)])?;
    let (lo, hi) = pair(user, with);
    let gone = conn
        .prepare_cached("DELETE FROM inbox WHERE user = ?1 AND lo = ?2 AND hi = ?3 AND seq <= ?4")?
        .execute(params![user, lo, hi, int(seq)])?;
    if gone > 0 {
        conn.prepare_cached("UPDATE inbox_sizes SET pending = max(pending - ?2, 0) WHERE user = ?1")?
            .execute(params![user, gone as i64])?;
    }
    Ok(StoreValue::Done)
}

/// Forgets client ids past the retention, and the oldest past the count
/// bound, at most [`PURGE_BATCH`] at a time. Returns how many went.
fn purge_ids(conn: &Connection, now_ms: i64, options: &SqliteOptions) -> rusqlite::Result<usize> {
    let cutoff = now_ms.saturating_sub(int(options.id_retention.as_millis() as u64));
    // Ids are deleted oldest first, so the rows are about the span of ids
    // (a `count(*)` would read the whole table).
    let (oldest, newest): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT min(id), max(id) FROM client_ids")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(oldest), Some(newest)) = (oldest, newest) else { return Ok(0) };
    let over = (newest - oldest + 1 - int(options.max_ids)).max(0);
    // Ids arrive in time order, so the oldest have the lowest `id`: walk
    // from there while they are past the retention (or over the bound).
    let mut st = conn.prepare_cached("SELECT id, ts FROM client_ids ORDER BY id LIMIT ?1")?;
    let mut rows = st.query([PURGE_BATCH])?;
    let (mut last, mut n) = (None, 0);
    while let Some(row) = rows.next()? {
        let (id, ts): (i64, i64) = (row.get(0)?, row.get(1)?);
        if ts >= cutoff && n >= over {
            break;
        }
        last = Some(id);
        n += 1;
    }
    drop(rows);
    let Some(last) = last.filter(|&l| l <= newest) else { return Ok(0) };
    conn.prepare_cached("DELETE FROM client_ids WHERE id <= ?1")?.execute([last])
}

/// A message row: `seq, sender, from_name, to_name, text, client_id, ts`
/// starting at column `at`.
fn message(r: &Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        seq: uint(r.get(at)?),
        sender: r.get(at + 1)?,
        from: r.get(at + 2)?,
        to: r.get(at + 3)?,
        text: r.get(at + 4)?,
        client_id: r.get(at + 5)?,
        ts: uint(r.get(at + 6)?),
    })
}

fn history(conn: &Connection, target: &Target, range: SeqRange) -> rusqlite::Result<StoreValue> {
    // Both ranges take the newest `limit` of the window, then turn them
    // oldest first.
    let (after, before, limit) = match range {
        SeqRange::Before { before, limit } => (0, before.map_or(i64::MAX, int), limit),
        SeqRange::After { after, limit } => (int(after), i64::MAX, limit),
    };
    let limit = i64::from(limit);
    let (mut messages, oldest) = match target {
        Target::Room(room) => {
            let messages = conn
                .prepare_cached(
                    "SELECT seq, sender, from_name, NULL, text, client_id, ts FROM room_messages
                     WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4",
                )?
                .query_map(params![room, after, before, limit], |r| message(r, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let oldest: Option<i64> = conn
                .prepare_cached("SELECT min(seq) FROM room_messages WHERE room = ?1")?
                .query_row([room], |r| r.get(0))?;
            (messages, oldest)
        }
        Target::Conversation(a, b) => {
            let (lo, hi) = pair(a, b);
            let messages = conn
                .prepare_cached(
                    "SELECT seq, sender, from_name, to_name, text, client_id, ts FROM private_messages
                     WHERE lo = ?1 AND hi = ?2 AND seq > ?3 AND seq < ?4 ORDER BY seq DESC LIMIT ?5",
                )?
                .query_map(params![lo, hi, after, before, limit], |r| message(r, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let oldest: Option<i64> = conn
                .prepare_cached("SELECT min(seq) FROM private_messages WHERE lo = ?1 AND hi = ?2")?
                .query_row([lo, hi], |r| r.get(0))?;
            (messages, oldest)
        }
    };
    messages.reverse();
    Ok(StoreValue::Messages { messages, oldest: oldest.map(uint) })
}

fn inbox(conn: &Connection, user: &str, after: u64, limit: u32) -> rusqlite::Result<StoreValue> {
    let mut st = conn.prepare_cached(
        "SELECT i.id, CASE WHEN i.lo = ?1 THEN i.hi ELSE i.lo END,
                m.seq, m.sender, m.from_name, m.to_name, m.text, m.client_id, m.ts
         FROM inbox AS i
         JOIN private_messages AS m ON m.lo = i.lo AND m.hi = i.hi AND m.seq = i.seq
         WHERE i.user = ?1 AND i.id > ?2
         ORDER BY i.id
         LIMIT ?3",
    )?;
    let mut cursor = after;
    let messages = st
        .query_map(params![user, int(after), i64::from(limit)], |r| {
            Ok((uint(r.get(0)?), InboxMessage { with: r.get(1)?, message: message(r, 2)? }))
        })?
        .map(|row| {
            row.map(|(id, m)| {
                cursor = id;
                m
            })
        })
        .collect::<rusqlite::Result<_>>()?;
    Ok(StoreValue::Inbox { messages, cursor })
}

#[cfg(test)]
mod tests;
