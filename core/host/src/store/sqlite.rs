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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use natter_core::store::{
    ConversationSummary, InboxMessage, NewMessage, SeqRange, StoreError, StoreFailure, StoreOp, StoreValue,
    StoredMessage, StoredRoom, Target,
};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};

mod migrate;

use super::password::token_hash;
use super::Backend;

/// The schema version this build writes (`PRAGMA user_version`). Version 2:
/// user names are unique ignoring case (see `sqlite/migrate.rs`).
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
    PRIMARY KEY (lo, hi)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_by_hi ON conversations(hi, lo);
CREATE INDEX IF NOT EXISTS conversations_by_order ON conversations(last_order);

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

CREATE TABLE IF NOT EXISTS client_ids (
    sender    TEXT NOT NULL,
    client_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (sender, client_id)
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
    _checkpointer: Checkpointer,
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
    /// connection up and creates or checks the schema.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir { path: dir.to_owned(), source })?;
        let path = dir.join(DB_FILE);
        let sqlite = |source| OpenError::Sqlite { path: path.clone(), source };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(sqlite)?;
        configure(&conn).map_err(sqlite)?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(sqlite)?;
        if found > SCHEMA_VERSION {
            return Err(OpenError::TooNew { path, found, supported: SCHEMA_VERSION });
        }
        let tx = conn.unchecked_transaction().map_err(sqlite)?;
        tx.execute_batch(SCHEMA).map_err(sqlite)?;
        if found < 2 {
            migrate::settle_case_twins(&tx).map_err(sqlite)?;
        }
        tx.execute_batch(migrate::USERS_NOCASE_INDEX).map_err(sqlite)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        let checkpointer = Checkpointer::start(path.clone());
        Ok(SqliteBackend { path, conn: Some(conn), _checkpointer: checkpointer })
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
                configure(&conn)?;
                conn
            }
        };
        Ok(self.conn.insert(conn))
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
        let writes = ops.iter().any(|op| is_write(op));
        let conn = self.conn()?;
        if !conn.is_autocommit() {
            // Left open by an earlier panic: nothing of it was reported done.
            conn.execute_batch("ROLLBACK")?;
        }
        let begin = if writes { "BEGIN IMMEDIATE" } else { "BEGIN DEFERRED" };
        conn.prepare_cached(begin)?.execute([])?;
        let result = run_without_savepoints(conn, ops)
            .and_then(|done| match done {
                Some(out) => Ok(out),
                None => {
                    // One operation failed: start over with each in its own
                    // savepoint, so that it fails alone.
                    conn.prepare_cached("ROLLBACK")?.execute([])?;
                    conn.prepare_cached(begin)?.execute([])?;
                    run_in_transaction(conn, ops)
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
        let result = self.conn().and_then(|conn| run_op(conn, op));
        result.map_err(|e| {
            tracing::warn!(error = %e, "storage read failed");
            self.fail(&e)
        })
    }
}

impl Backend for SqliteBackend {
    fn execute(&mut self, ops: &[&StoreOp]) -> Vec<Result<StoreValue, StoreError>> {
        if ops.is_empty() {
            return Vec::new();
        }
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
                        if is_write(op) {
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
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite refused WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
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

/// Whether `op` writes.
fn is_write(op: &StoreOp) -> bool {
    match op {
        StoreOp::Join { .. }
        | StoreOp::Leave { .. }
        | StoreOp::Append { .. }
        | StoreOp::Ack { .. }
        | StoreOp::Read { .. }
        | StoreOp::Revoke { .. }
        | StoreOp::Register { .. }
        | StoreOp::Login { .. } => true,
        StoreOp::LoadAll
        | StoreOp::Verify { .. }
        | StoreOp::CheckToken { .. }
        | StoreOp::History { .. }
        | StoreOp::Inbox { .. }
        | StoreOp::Conversations { .. }
        | StoreOp::ReadMarks { .. } => false,
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
    ops: &[&StoreOp],
) -> rusqlite::Result<Option<Vec<Result<StoreValue, StoreError>>>> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        match run_op(conn, op) {
            Ok(value) => out.push(Ok(value)),
            Err(e) if fails_alone(conn, &e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// The body of a batch transaction with an operation that fails: each op
/// in a savepoint.
fn run_in_transaction(conn: &Connection, ops: &[&StoreOp]) -> rusqlite::Result<Vec<Result<StoreValue, StoreError>>> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        match run_op(conn, op) {
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
fn run_op(conn: &Connection, op: &StoreOp) -> rusqlite::Result<StoreValue> {
    match op {
        StoreOp::LoadAll => load_all(conn),
        StoreOp::CheckToken { token, now_ms } => {
            let row = conn
                .prepare_cached("SELECT user, expires_ms, revoked FROM tokens WHERE hash = ?1")?
                .query_row([token_hash(token)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, bool>(2)?))
                })
                .optional()?;
            Ok(match row {
                Some((user, expires, false)) if int(*now_ms) < expires => {
                    StoreValue::TokenUser { user, expires_ms: uint(expires) }
                }
                _ => StoreValue::Rejected,
            })
        }
        StoreOp::Revoke { token } => {
            let user = conn
                .prepare_cached("UPDATE tokens SET revoked = 1 WHERE hash = ?1 RETURNING user")?
                .query_row([token_hash(token)], |r| r.get(0))
                .optional()?;
            Ok(StoreValue::Revoked { user })
        }
        StoreOp::Join { user, room } => {
            conn.prepare_cached("INSERT INTO rooms (name, seq) VALUES (?1, 0) ON CONFLICT (name) DO NOTHING")?
                .execute([room])?;
            conn.prepare_cached(
                "INSERT INTO members (room, user, read) VALUES (?1, ?2, 0) ON CONFLICT (room, user) DO NOTHING",
            )?
            .execute([room, user])?;
            Ok(StoreValue::Done)
        }
        StoreOp::Leave { user, room } => {
            conn.prepare_cached("DELETE FROM members WHERE room = ?1 AND user = ?2")?.execute([room, user])?;
            Ok(StoreValue::Done)
        }
        StoreOp::Append { target, message } => append(conn, target, message),
        StoreOp::History { target, range } => history(conn, target, *range),
        StoreOp::Inbox { user, limit } => inbox(conn, user, *limit),
        StoreOp::Ack { user, with, seq } => {
            conn.prepare_cached(
                "INSERT INTO conv_marks (user, peer, read, ack) VALUES (?1, ?2, 0, ?3)
                 ON CONFLICT (user, peer) DO UPDATE SET ack = max(ack, excluded.ack)",
            )?
            .execute(params![user, with, int(*seq)])?;
            Ok(StoreValue::Done)
        }
        StoreOp::Read { user, target, seq } => {
            match target {
                Target::Room(room) => {
                    conn.prepare_cached("UPDATE members SET read = max(read, ?3) WHERE room = ?1 AND user = ?2")?
                        .execute(params![room, user, int(*seq)])?;
                }
                Target::Conversation(a, b) => {
                    // The contract puts `user` first; accept either order.
                    let peer = if a == user { b } else { a };
                    conn.prepare_cached(
                        "INSERT INTO conv_marks (user, peer, read, ack) VALUES (?1, ?2, ?3, 0)
                         ON CONFLICT (user, peer) DO UPDATE SET read = max(read, excluded.read)",
                    )?
                    .execute(params![user, peer, int(*seq)])?;
                }
            }
            Ok(StoreValue::Done)
        }
        StoreOp::Conversations { user, limit } => {
            let mut st = conn.prepare_cached(
                "SELECT p.peer, p.seq, coalesce(k.read, 0)
                 FROM (SELECT CASE WHEN lo = ?1 THEN hi ELSE lo END AS peer, seq, last_order
                       FROM conversations WHERE lo = ?1 OR hi = ?1) AS p
                 LEFT JOIN conv_marks AS k ON k.user = ?1 AND k.peer = p.peer
                 ORDER BY p.last_order DESC
                 LIMIT ?2",
            )?;
            let conversations = st
                .query_map(params![user, i64::from(*limit)], |r| {
                    Ok(ConversationSummary { with: r.get(0)?, seq: uint(r.get(1)?), read: uint(r.get(2)?) })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(StoreValue::Conversations { conversations })
        }
        StoreOp::ReadMarks { user } => {
            let mut st = conn.prepare_cached("SELECT room, read FROM members WHERE user = ?1 ORDER BY room")?;
            let marks = st.query_map([user], |r| Ok((r.get(0)?, uint(r.get(1)?))))?.collect::<rusqlite::Result<_>>()?;
            Ok(StoreValue::ReadMarks { marks })
        }
        StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. } => {
            Err(rusqlite::Error::InvalidParameterName("password operations do not run in a batch".into()))
        }
    }
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

fn append(conn: &Connection, target: &Target, m: &NewMessage) -> rusqlite::Result<StoreValue> {
    if let Some(client_id) = &m.client_id {
        let first = conn
            .prepare_cached("SELECT seq, ts FROM client_ids WHERE sender = ?1 AND client_id = ?2")?
            .query_row([m.dedup_key(), client_id.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        if let Some((seq, ts)) = first.filter(|&(_, ts)| m.repeats(uint(ts))) {
            return Ok(StoreValue::Appended { seq: uint(seq), ts: uint(ts), duplicate: true });
        }
    }
    let ts = int(m.ts);
    let seq: i64 = match target {
        Target::Room(room) => {
            let seq = conn
                .prepare_cached(
                    "INSERT INTO rooms (name, seq) VALUES (?1, 1)
                     ON CONFLICT (name) DO UPDATE SET seq = seq + 1 RETURNING seq",
                )?
                .query_row([room], |r| r.get(0))?;
            conn.prepare_cached(
                "INSERT INTO room_messages (room, seq, sender, from_name, text, client_id, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![room, seq, m.sender, m.from, m.text, m.client_id, ts])?;
            seq
        }
        Target::Conversation(a, b) => {
            let (lo, hi) = pair(a, b);
            let seq = conn
                .prepare_cached(
                    "INSERT INTO conversations (lo, hi, seq, last_ts, last_order)
                     VALUES (?1, ?2, 1, ?3, (SELECT coalesce(max(last_order), 0) + 1 FROM conversations))
                     ON CONFLICT (lo, hi) DO UPDATE SET seq = seq + 1, last_ts = max(last_ts, excluded.last_ts),
                         last_order = excluded.last_order
                     RETURNING seq",
                )?
                .query_row(params![lo, hi, ts], |r| r.get(0))?;
            conn.prepare_cached(
                "INSERT INTO private_messages (lo, hi, seq, sender, from_name, to_name, text, client_id, ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![lo, hi, seq, m.sender, m.from, m.to, m.text, m.client_id, ts])?;
            seq
        }
    };
    if let Some(client_id) = &m.client_id {
        conn.prepare_cached(
            // An id whose window passed now names this message.
            "INSERT OR REPLACE INTO client_ids (sender, client_id, seq, ts) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![m.dedup_key(), client_id, seq, ts])?;
    }
    Ok(StoreValue::Appended { seq: uint(seq), ts: m.ts, duplicate: false })
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

fn inbox(conn: &Connection, user: &str, limit: u32) -> rusqlite::Result<StoreValue> {
    // Messages to `user` above its ack, per conversation by seq; conversations
    // ordered by the timestamp of their oldest pending message.
    let mut st = conn.prepare_cached(
        "SELECT p.peer, m.seq, m.sender, m.from_name, m.to_name, m.text, m.client_id, m.ts,
                first_value(m.ts) OVER (PARTITION BY m.lo, m.hi ORDER BY m.seq) AS first_ts
         FROM (SELECT lo, hi, CASE WHEN lo = ?1 THEN hi ELSE lo END AS peer
               FROM conversations WHERE lo = ?1 OR hi = ?1) AS p
         LEFT JOIN conv_marks AS k ON k.user = ?1 AND k.peer = p.peer
         JOIN private_messages AS m ON m.lo = p.lo AND m.hi = p.hi AND m.seq > coalesce(k.ack, 0)
         WHERE m.sender <> ?1
         ORDER BY first_ts, m.lo, m.hi, m.seq
         LIMIT ?2",
    )?;
    let messages = st
        .query_map(params![user, i64::from(limit)], |r| Ok(InboxMessage { with: r.get(0)?, message: message(r, 1)? }))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(StoreValue::Inbox { messages })
}

#[cfg(test)]
mod tests;
