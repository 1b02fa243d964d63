//! The SQLite [`Backend`]: one connection, owned by the store's batch thread.
//!
//! A batch runs in one transaction, each operation inside its own savepoint.
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
use std::time::Duration;

use natter_core::store::{
    ConversationSummary, InboxMessage, NewMessage, SeqRange, StoreError, StoreFailure, StoreOp,
    StoreValue, StoredMessage, StoredRoom, Target,
};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};

use super::password::token_hash;
use super::Backend;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

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
    #[error(
        "database {path} has schema version {found}; this build knows versions up to {supported}"
    )]
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
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .field("open", &self.conn.is_some())
            .finish()
    }
}

impl SqliteBackend {
    /// Opens (creating if missing) `dir` and `dir/natter.sqlite3`, sets the
    /// connection up and creates or checks the schema.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let sqlite = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(sqlite)?;
        configure(&conn).map_err(sqlite)?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite)?;
        if found > SCHEMA_VERSION {
            return Err(OpenError::TooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // Migrations from older versions go here, keyed by `found`.
        let tx = conn.unchecked_transaction().map_err(sqlite)?;
        tx.execute_batch(SCHEMA).map_err(sqlite)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        Ok(SqliteBackend {
            path,
            conn: Some(conn),
        })
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
    fn run_batch(
        &mut self,
        ops: &[&StoreOp],
    ) -> rusqlite::Result<Vec<Result<StoreValue, StoreError>>> {
        let writes = ops.iter().any(|op| is_write(op));
        let conn = self.conn()?;
        if !conn.is_autocommit() {
            // Left open by an earlier panic: nothing of it was reported done.
            conn.execute_batch("ROLLBACK")?;
        }
        conn.prepare_cached(if writes {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN DEFERRED"
        })?
        .execute([])?;
        let result = run_in_transaction(conn, ops).and_then(|out| {
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
                        if let Err(e @ StoreError::Backend(StoreFailure::Io | StoreFailure::Busy)) =
                            &result
                        {
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
            conn.prepare_cached("SELECT hash FROM users WHERE name = ?1")?
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
                "INSERT INTO users (name, hash, created_ms) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
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

    fn create_token(
        &mut self,
        token_hash: &str,
        user: &str,
        expires_ms: u64,
    ) -> Result<(), StoreError> {
        let result = self.conn().and_then(|conn| {
            conn.prepare_cached(
                "INSERT INTO tokens (hash, user, expires_ms, revoked) VALUES (?1, ?2, ?3, 0)",
            )?
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

/// Connection settings, on every open.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(mode, "SQLite refused WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The kind of a SQLite failure.
pub fn failure_kind(e: &rusqlite::Error) -> StoreFailure {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DiskFull
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen,
        ) => StoreFailure::Io,
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

/// The body of a batch transaction: each op in a savepoint.
fn run_in_transaction(
    conn: &Connection,
    ops: &[&StoreOp],
) -> rusqlite::Result<Vec<Result<StoreValue, StoreError>>> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        match run_op(conn, op) {
            Ok(value) => {
                conn.prepare_cached("RELEASE op")?.execute([])?;
                out.push(Ok(value));
            }
            Err(e) if failure_kind(&e) == StoreFailure::Other && !conn.is_autocommit() => {
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
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                })
                .optional()?;
            Ok(match row {
                Some((user, expires, false)) if int(*now_ms) < expires => StoreValue::TokenUser {
                    user,
                    expires_ms: uint(expires),
                },
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
            conn.prepare_cached(
                "INSERT INTO rooms (name, seq) VALUES (?1, 0) ON CONFLICT (name) DO NOTHING",
            )?
            .execute([room])?;
            conn.prepare_cached(
                "INSERT INTO members (room, user, read) VALUES (?1, ?2, 0) ON CONFLICT (room, user) DO NOTHING",
            )?
            .execute([room, user])?;
            Ok(StoreValue::Done)
        }
        StoreOp::Leave { user, room } => {
            conn.prepare_cached("DELETE FROM members WHERE room = ?1 AND user = ?2")?
                .execute([room, user])?;
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
                    conn.prepare_cached(
                        "UPDATE members SET read = max(read, ?3) WHERE room = ?1 AND user = ?2",
                    )?
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
                    Ok(ConversationSummary {
                        with: r.get(0)?,
                        seq: uint(r.get(1)?),
                        read: uint(r.get(2)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(StoreValue::Conversations { conversations })
        }
        StoreOp::ReadMarks { user } => {
            let mut st = conn
                .prepare_cached("SELECT room, read FROM members WHERE user = ?1 ORDER BY room")?;
            let marks = st
                .query_map([user], |r| Ok((r.get(0)?, uint(r.get(1)?))))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(StoreValue::ReadMarks { marks })
        }
        StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. } => {
            Err(rusqlite::Error::InvalidParameterName(
                "password operations do not run in a batch".into(),
            ))
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
            .query_row([&m.sender, client_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .optional()?;
        if let Some((seq, ts)) = first {
            return Ok(StoreValue::Appended {
                seq: uint(seq),
                ts: uint(ts),
                duplicate: true,
            });
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
            .execute(params![
                room,
                seq,
                m.sender,
                m.from,
                m.text,
                m.client_id,
                ts
            ])?;
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
            "INSERT INTO client_ids (sender, client_id, seq, ts) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![m.sender, client_id, seq, ts])?;
    }
    Ok(StoreValue::Appended {
        seq: uint(seq),
        ts: m.ts,
        duplicate: false,
    })
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
    Ok(StoreValue::Messages {
        messages,
        oldest: oldest.map(uint),
    })
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
        .query_map(params![user, i64::from(limit)], |r| {
            Ok(InboxMessage {
                with: r.get(0)?,
                message: message(r, 1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(StoreValue::Inbox { messages })
}

#[cfg(test)]
mod tests {
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
        }
    }

    fn pm(sender: &str, to: &str, text: &str, ts: u64) -> Op {
        Op::Append {
            target: Target::Conversation(sender.into(), to.into()),
            message: NewMessage {
                to: Some(to.into()),
                ..msg(sender, text, None, ts)
            },
        }
    }

    fn room_append(room: &str, sender: &str, text: &str, ts: u64) -> Op {
        Op::Append {
            target: Target::Room(room.into()),
            message: msg(sender, text, None, ts),
        }
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
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: bool = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
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
            Err(OpenError::TooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn open_fails_cleanly_on_a_file_as_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            SqliteBackend::open(&file),
            Err(OpenError::Dir { .. })
        ));
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
        let seqs: Vec<u64> = run(
            &mut b,
            vec![room_append("a", "x", "4", 10), pm("y", "x", "4", 11)],
        )
        .iter()
        .map(|r| appended(r).0)
        .collect();
        assert_eq!(seqs, [4, 4]);
        assert_eq!(
            history(
                &mut b,
                room("a"),
                SeqRange::Before {
                    before: None,
                    limit: 50
                }
            )
            .0,
            [1, 2, 3, 4]
        );
        assert_eq!(
            history(
                &mut b,
                conv("x", "y"),
                SeqRange::Before {
                    before: None,
                    limit: 50
                }
            )
            .0,
            [1, 2, 3, 4]
        );
        assert_eq!(
            history(
                &mut b,
                conv("y", "x"),
                SeqRange::After {
                    after: 0,
                    limit: 50
                }
            )
            .0,
            [1, 2, 3, 4]
        );
        assert_eq!(
            history(
                &mut b,
                conv("z", "x"),
                SeqRange::After {
                    after: 0,
                    limit: 50
                }
            )
            .0,
            [1]
        );
    }

    #[test]
    fn duplicate_client_id_returns_the_first_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = open(tmp.path());
        let first = one(
            &mut b,
            Op::Append {
                target: room("r"),
                message: msg("alice", "hi", Some("c1"), 100),
            },
        );
        assert_eq!(
            first,
            V::Appended {
                seq: 1,
                ts: 100,
                duplicate: false
            }
        );
        let ops = vec![
            room_append("r", "bob", "other", 101),
            // Same (sender, id), another target and text: the first comes back.
            Op::Append {
                target: conv("alice", "bob"),
                message: msg("alice", "again", Some("c1"), 102),
            },
            Op::Append {
                target: room("r"),
                message: msg("alice", "again", Some("c1"), 103),
            },
            // Same id from another sender is a new message.
            Op::Append {
                target: room("r"),
                message: msg("bob", "mine", Some("c1"), 104),
            },
            // A duplicate within one batch.
            Op::Append {
                target: room("r"),
                message: msg("alice", "new", Some("c2"), 105),
            },
            Op::Append {
                target: room("r"),
                message: msg("alice", "new", Some("c2"), 106),
            },
        ];
        let out = run(&mut b, ops);
        assert_eq!(
            out[0],
            Ok(V::Appended {
                seq: 2,
                ts: 101,
                duplicate: false
            })
        );
        assert_eq!(
            out[1],
            Ok(V::Appended {
                seq: 1,
                ts: 100,
                duplicate: true
            })
        );
        assert_eq!(
            out[2],
            Ok(V::Appended {
                seq: 1,
                ts: 100,
                duplicate: true
            })
        );
        assert_eq!(
            out[3],
            Ok(V::Appended {
                seq: 3,
                ts: 104,
                duplicate: false
            })
        );
        assert_eq!(
            out[4],
            Ok(V::Appended {
                seq: 4,
                ts: 105,
                duplicate: false
            })
        );
        assert_eq!(
            out[5],
            Ok(V::Appended {
                seq: 4,
                ts: 105,
                duplicate: true
            })
        );
        match one(
            &mut b,
            Op::History {
                target: room("r"),
                range: SeqRange::Before {
                    before: None,
                    limit: 50,
                },
            },
        ) {
            V::Messages { messages, oldest } => {
                assert_eq!(oldest, Some(1));
                let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
                assert_eq!(texts, ["hi", "other", "mine", "new"]);
                assert_eq!(messages[0].client_id.as_deref(), Some("c1"));
                assert_eq!(messages[1].client_id, None);
            }
            other => panic!("{other:?}"),
        }
        let (seqs, oldest) = history(
            &mut b,
            conv("alice", "bob"),
            SeqRange::Before {
                before: None,
                limit: 50,
            },
        );
        assert!(seqs.is_empty());
        assert_eq!(oldest, None);
        assert_eq!(
            one(
                &mut b,
                Op::Conversations {
                    user: "alice".into(),
                    limit: 10
                }
            ),
            V::Conversations {
                conversations: vec![]
            }
        );
    }

    #[test]
    fn history_limits_and_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = open(tmp.path());
        run(
            &mut b,
            (1..=10)
                .map(|i| room_append("r", "a", &format!("m{i}"), 1000 + i))
                .collect(),
        );
        let h = |b: &mut SqliteBackend, range| history(b, room("r"), range);
        assert_eq!(
            h(
                &mut b,
                SeqRange::Before {
                    before: None,
                    limit: 3
                }
            ),
            (vec![8, 9, 10], Some(1))
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::Before {
                    before: Some(5),
                    limit: 3
                }
            )
            .0,
            [2, 3, 4]
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::Before {
                    before: Some(3),
                    limit: 10
                }
            )
            .0,
            [1, 2]
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::Before {
                    before: Some(1),
                    limit: 10
                }
            ),
            (vec![], Some(1))
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::Before {
                    before: Some(11),
                    limit: 500
                }
            )
            .0,
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::Before {
                    before: None,
                    limit: 0
                }
            )
            .0,
            Vec::<u64>::new()
        );
        // After: the newest `limit` above `after`, oldest first.
        assert_eq!(
            h(&mut b, SeqRange::After { after: 3, limit: 4 }).0,
            [7, 8, 9, 10]
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::After {
                    after: 8,
                    limit: 10
                }
            )
            .0,
            [9, 10]
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::After {
                    after: 0,
                    limit: 10
                }
            )
            .0,
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            h(
                &mut b,
                SeqRange::After {
                    after: 10,
                    limit: 5
                }
            ),
            (vec![], Some(1))
        );
        assert_eq!(
            history(
                &mut b,
                room("empty"),
                SeqRange::After { after: 0, limit: 5 }
            ),
            (vec![], None)
        );
        match one(
            &mut b,
            Op::History {
                target: room("r"),
                range: SeqRange::Before {
                    before: Some(2),
                    limit: 1,
                },
            },
        ) {
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
                },
            },
        );
        match one(
            &mut b,
            Op::History {
                target: conv("alice", "bob#2"),
                range: SeqRange::After { after: 0, limit: 9 },
            },
        ) {
            V::Messages {
                messages,
                oldest: Some(1),
            } => assert_eq!(
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
        match one(
            b,
            Op::Inbox {
                user: user.into(),
                limit,
            },
        ) {
            V::Inbox { messages } => messages
                .into_iter()
                .map(|m| (m.with, m.message.seq, m.message.text))
                .collect(),
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
        // Per conversation by seq; conversations by their oldest pending message.
        let all = vec![
            s("carol", 1, "c1"),
            s("carol", 2, "c2"),
            s("alice", 1, "a1"),
            s("alice", 2, "a2"),
            s("alice", 4, "a4"),
        ];
        assert_eq!(inbox(&mut b, "bob", 100), all);
        assert_eq!(inbox(&mut b, "bob", 2), all[..2]);
        assert_eq!(inbox(&mut b, "alice", 100), [s("bob", 3, "own")]);
        one(
            &mut b,
            Op::Ack {
                user: "bob".into(),
                with: "carol".into(),
                seq: 2,
            },
        );
        one(
            &mut b,
            Op::Ack {
                user: "bob".into(),
                with: "alice".into(),
                seq: 1,
            },
        );
        assert_eq!(
            inbox(&mut b, "bob", 100),
            [s("alice", 2, "a2"), s("alice", 4, "a4")]
        );
        // An ack never goes down.
        one(
            &mut b,
            Op::Ack {
                user: "bob".into(),
                with: "alice".into(),
                seq: 3,
            },
        );
        one(
            &mut b,
            Op::Ack {
                user: "bob".into(),
                with: "alice".into(),
                seq: 0,
            },
        );
        assert_eq!(inbox(&mut b, "bob", 100), [s("alice", 4, "a4")]);
        // Acks are per user: alice's view is unchanged.
        assert_eq!(inbox(&mut b, "alice", 100), [s("bob", 3, "own")]);
        assert_eq!(inbox(&mut b, "nobody", 100), []);
        // The inbox carries whole messages.
        match one(
            &mut b,
            Op::Inbox {
                user: "dave".into(),
                limit: 1,
            },
        ) {
            V::Inbox { messages } => assert_eq!(
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
        let summary = |with: &str, seq, read| ConversationSummary {
            with: with.into(),
            seq,
            read,
        };
        let list = |b: &mut SqliteBackend, limit| {
            one(
                b,
                Op::Conversations {
                    user: "alice".into(),
                    limit,
                },
            )
        };
        assert_eq!(
            list(&mut b, 10),
            V::Conversations {
                conversations: vec![
                    summary("bob", 2, 0),
                    summary("dave", 1, 0),
                    summary("carol", 1, 0)
                ]
            }
        );
        assert_eq!(
            list(&mut b, 1),
            V::Conversations {
                conversations: vec![summary("bob", 2, 0)]
            }
        );
        run(
            &mut b,
            vec![
                Op::Read {
                    user: "alice".into(),
                    target: conv("alice", "bob"),
                    seq: 2,
                },
                Op::Read {
                    user: "alice".into(),
                    target: conv("alice", "bob"),
                    seq: 1,
                },
                Op::Read {
                    user: "alice".into(),
                    target: conv("alice", "carol"),
                    seq: 1,
                },
                // The reader given second still works.
                Op::Read {
                    user: "alice".into(),
                    target: conv("dave", "alice"),
                    seq: 1,
                },
            ],
        );
        assert_eq!(
            list(&mut b, 10),
            V::Conversations {
                conversations: vec![
                    summary("bob", 2, 2),
                    summary("dave", 1, 1),
                    summary("carol", 1, 1)
                ]
            }
        );
        // Reading is not acking.
        assert_eq!(inbox(&mut b, "alice", 10).len(), 3);
        // Bob's marks are his own.
        assert_eq!(
            one(
                &mut b,
                Op::Conversations {
                    user: "bob".into(),
                    limit: 10
                }
            ),
            V::Conversations {
                conversations: vec![summary("carol", 1, 0), summary("alice", 2, 0)]
            }
        );
    }

    #[test]
    fn membership_room_read_marks_and_load_all() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = open(tmp.path());
        assert_eq!(
            one(&mut b, Op::LoadAll),
            V::Snapshot {
                users: vec![],
                rooms: vec![]
            }
        );
        assert!(b.create_user("bob", "h1", 1).unwrap());
        assert!(b.create_user("alice", "h2", 2).unwrap());
        let out = run(
            &mut b,
            vec![
                Op::Join {
                    user: "alice".into(),
                    room: "lobby".into(),
                },
                Op::Join {
                    user: "bob".into(),
                    room: "lobby".into(),
                },
                Op::Join {
                    user: "bob".into(),
                    room: "lobby".into(),
                },
                Op::Join {
                    user: "alice".into(),
                    room: "dev".into(),
                },
                Op::Join {
                    user: "alice".into(),
                    room: "gone".into(),
                },
                Op::Leave {
                    user: "alice".into(),
                    room: "gone".into(),
                },
                Op::Leave {
                    user: "alice".into(),
                    room: "never".into(),
                },
                room_append("lobby", "alice", "1", 1),
                room_append("lobby", "alice", "2", 2),
                room_append("quiet", "guest#1", "1", 3),
                Op::Read {
                    user: "alice".into(),
                    target: room("lobby"),
                    seq: 2,
                },
                Op::Read {
                    user: "alice".into(),
                    target: room("lobby"),
                    seq: 1,
                },
                Op::Read {
                    user: "bob".into(),
                    target: room("lobby"),
                    seq: 1,
                },
                // Not a member: nothing happens.
                Op::Read {
                    user: "alice".into(),
                    target: room("quiet"),
                    seq: 1,
                },
            ],
        );
        assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
        assert_eq!(out[0], Ok(V::Done));
        assert_eq!(
            one(
                &mut b,
                Op::ReadMarks {
                    user: "alice".into()
                }
            ),
            V::ReadMarks {
                marks: vec![("dev".into(), 0), ("lobby".into(), 2)]
            }
        );
        assert_eq!(
            one(&mut b, Op::ReadMarks { user: "bob".into() }),
            V::ReadMarks {
                marks: vec![("lobby".into(), 1)]
            }
        );
        assert_eq!(
            one(
                &mut b,
                Op::ReadMarks {
                    user: "carol".into()
                }
            ),
            V::ReadMarks { marks: vec![] }
        );
        let stored = |name: &str, seq, members: &[&str]| StoredRoom {
            name: name.into(),
            seq,
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        assert_eq!(
            one(&mut b, Op::LoadAll),
            V::Snapshot {
                users: vec!["alice".into(), "bob".into()],
                rooms: vec![
                    stored("dev", 0, &["alice"]),
                    stored("lobby", 2, &["alice", "bob"]),
                    stored("quiet", 1, &[])
                ],
            }
        );
        run(
            &mut b,
            vec![Op::Leave {
                user: "bob".into(),
                room: "lobby".into(),
            }],
        );
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
        let check = |b: &mut SqliteBackend, token: &str, now_ms| {
            one(
                b,
                Op::CheckToken {
                    token: token.into(),
                    now_ms,
                },
            )
        };
        assert_eq!(
            check(&mut b, &t1, 999),
            V::TokenUser {
                user: "alice".into(),
                expires_ms: 1000
            }
        );
        assert_eq!(check(&mut b, &t1, 1000), V::Rejected);
        assert_eq!(
            check(&mut b, &h1, 10),
            V::Rejected,
            "the stored hash is not a token"
        );
        assert_eq!(check(&mut b, "nope", 10), V::Rejected);
        assert_eq!(check(&mut b, "", 10), V::Rejected);
        assert_eq!(
            one(&mut b, Op::Revoke { token: t2.clone() }),
            V::Revoked {
                user: Some("alice".into())
            }
        );
        assert_eq!(check(&mut b, &t2, 10), V::Rejected);
        assert_eq!(
            one(&mut b, Op::Revoke { token: t2 }),
            V::Revoked {
                user: Some("alice".into())
            }
        );
        assert_eq!(
            one(
                &mut b,
                Op::Revoke {
                    token: "unknown".into()
                }
            ),
            V::Revoked { user: None }
        );
        assert_eq!(
            check(&mut b, &t1, 999),
            V::TokenUser {
                user: "alice".into(),
                expires_ms: 1000
            }
        );
    }

    #[test]
    fn password_ops_are_refused_in_a_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = open(tmp.path());
        let out = run(
            &mut b,
            vec![
                room_append("r", "a", "1", 1),
                Op::Verify {
                    user: "a".into(),
                    password: "p".into(),
                },
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
                Op::Join {
                    user: "a".into(),
                    room: "r".into(),
                },
                room_append("r", "a", "ok", 3),
            ],
        );
        assert_eq!(appended(&out[0]).0, 1);
        assert_eq!(out[1], Err(StoreError::Backend(StoreFailure::Other)));
        assert_eq!(out[2], Ok(V::Done));
        // The failed append's seq was rolled back with it: no gap.
        assert_eq!(appended(&out[3]).0, 2);
        assert_eq!(
            history(&mut b, room("r"), SeqRange::After { after: 0, limit: 9 }).0,
            [1, 2]
        );
    }

    #[test]
    fn a_failing_transaction_commits_nothing_and_the_backend_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = open(tmp.path());
        run(
            &mut b,
            vec![
                room_append("r", "a", "before", 1),
                Op::Join {
                    user: "a".into(),
                    room: "r".into(),
                },
            ],
        );
        // A full disk: the database may not grow.
        let conn = b.conn.as_ref().unwrap();
        let pages: i64 = conn
            .pragma_query_value(None, "page_count", |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let huge = "x".repeat(1 << 20);
        let out = run(
            &mut b,
            vec![
                room_append("r", "a", "small", 2),
                Op::Join {
                    user: "b".into(),
                    room: "r".into(),
                },
                Op::History {
                    target: room("r"),
                    range: SeqRange::After {
                        after: 0,
                        limit: 10,
                    },
                },
                room_append("r", "a", &huge, 3),
                Op::Read {
                    user: "a".into(),
                    target: room("r"),
                    seq: 1,
                },
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
        assert_eq!(
            out[5],
            Ok(V::ReadMarks {
                marks: vec![("r".into(), 0)]
            })
        );
        // The connection is reopened (without the limit) and works again; the
        // failed appends left no gap.
        let out = run(
            &mut b,
            vec![
                room_append("r", "a", "after", 4),
                room_append("r", "a", &huge, 5),
            ],
        );
        assert_eq!(appended(&out[0]).0, 2);
        assert_eq!(appended(&out[1]).0, 3);
        match one(&mut b, Op::LoadAll) {
            V::Snapshot { rooms, .. } => assert_eq!(
                rooms,
                [StoredRoom {
                    name: "r".into(),
                    seq: 3,
                    members: vec!["a".into()]
                }]
            ),
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
        assert_eq!(
            out,
            [
                Err(StoreError::Backend(StoreFailure::Io)),
                Err(StoreError::Backend(StoreFailure::Io))
            ]
        );
        assert!(!tmp.path().join(DB_FILE).exists());
        assert_eq!(
            b.password_hash("a"),
            Err(StoreError::Backend(StoreFailure::Io))
        );
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
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode | 0o100))
                .unwrap();
        };
        set_mode(0o444);
        if std::fs::OpenOptions::new()
            .append(true)
            .open(tmp.path().join(DB_FILE))
            .is_ok()
        {
            set_mode(0o644);
            eprintln!("running as root: permissions are not enforced, skipping");
            return;
        }
        let out = run(
            &mut b,
            vec![
                room_append("r", "a", "2", 2),
                Op::History {
                    target: room("r"),
                    range: SeqRange::After { after: 0, limit: 9 },
                },
            ],
        );
        set_mode(0o644);
        assert_eq!(
            out[0],
            Err(StoreError::Backend(StoreFailure::Io)),
            "{out:?}"
        );
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
                    Op::Join {
                        user: "alice".into(),
                        room: "lobby".into(),
                    },
                    room_append("lobby", "alice", "1", 1),
                    Op::Append {
                        target: room("lobby"),
                        message: msg("alice", "2", Some("id"), 2),
                    },
                    Op::Read {
                        user: "alice".into(),
                        target: room("lobby"),
                        seq: 2,
                    },
                    pm("bob", "alice", "hi", 3),
                    Op::Ack {
                        user: "alice".into(),
                        with: "bob".into(),
                        seq: 1,
                    },
                    Op::Read {
                        user: "alice".into(),
                        target: conv("alice", "bob"),
                        seq: 1,
                    },
                ],
            );
        }
        let mut b = open(tmp.path());
        assert_eq!(
            one(&mut b, Op::LoadAll),
            V::Snapshot {
                users: vec!["alice".into()],
                rooms: vec![StoredRoom {
                    name: "lobby".into(),
                    seq: 2,
                    members: vec!["alice".into()]
                }],
            }
        );
        assert_eq!(
            one(&mut b, Op::CheckToken { token, now_ms: 5 }),
            V::TokenUser {
                user: "alice".into(),
                expires_ms: 100
            }
        );
        assert_eq!(
            one(
                &mut b,
                Op::ReadMarks {
                    user: "alice".into()
                }
            ),
            V::ReadMarks {
                marks: vec![("lobby".into(), 2)]
            }
        );
        assert_eq!(inbox(&mut b, "alice", 10), []);
        assert_eq!(
            one(
                &mut b,
                Op::Conversations {
                    user: "alice".into(),
                    limit: 10
                }
            ),
            V::Conversations {
                conversations: vec![ConversationSummary {
                    with: "bob".into(),
                    seq: 1,
                    read: 1
                }]
            }
        );
        // The counters and the dedup go on where they were.
        let out = run(
            &mut b,
            vec![
                Op::Append {
                    target: room("lobby"),
                    message: msg("alice", "2", Some("id"), 9),
                },
                room_append("lobby", "alice", "3", 10),
                pm("alice", "bob", "back", 11),
            ],
        );
        assert_eq!(
            out[0],
            Ok(V::Appended {
                seq: 2,
                ts: 2,
                duplicate: true
            })
        );
        assert_eq!(appended(&out[1]), (3, false));
        assert_eq!(appended(&out[2]), (2, false));
    }

    #[test]
    fn failure_kinds() {
        let err = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert_eq!(
            failure_kind(&err(rusqlite::ffi::SQLITE_FULL)),
            StoreFailure::Io
        );
        assert_eq!(
            failure_kind(&err(rusqlite::ffi::SQLITE_READONLY)),
            StoreFailure::Io
        );
        assert_eq!(
            failure_kind(&err(rusqlite::ffi::SQLITE_IOERR)),
            StoreFailure::Io
        );
        assert_eq!(
            failure_kind(&err(rusqlite::ffi::SQLITE_CANTOPEN)),
            StoreFailure::Io
        );
        assert_eq!(
            failure_kind(&err(rusqlite::ffi::SQLITE_BUSY)),
            StoreFailure::Busy
        );
        assert_eq!(
            failure_kind(&err(rusqlite::ffi::SQLITE_LOCKED)),
            StoreFailure::Busy
        );
        assert_eq!(
            failure_kind(&err(rusqlite::ffi::SQLITE_CORRUPT)),
            StoreFailure::Other
        );
        assert_eq!(
            failure_kind(&rusqlite::Error::QueryReturnedNoRows),
            StoreFailure::Other
        );
    }
}
