//! Upgrades a database written by an older build, inside the transaction
//! that then creates what is missing of the current schema.
//!
//! # Version 1 to 2
//!
//! User names ignore case (PROTOCOL.md, "Accounts"). Version 1 let `Carol`
//! and `carol` be two accounts. Version 2 keeps `users.name` unique
//! case-insensitively (`users_name_nocase`). A version 1 database may hold
//! such case twins; before the index is built, each set of twins is settled
//! by this rule:
//!
//! - the oldest account of the set (smallest `created_ms`, then the smallest
//!   name byte-wise) keeps its name;
//! - every other one is renamed to the first free name `NAME-2`, `NAME-3`, …
//!   (`NAME` shortened so that the result has at most 32 characters), free
//!   meaning no account has it in any case;
//! - a renamed account keeps everything: password, tokens (none is revoked:
//!   a token names its account by the new name, so open sessions and clients
//!   with a token go on, shown under the new name), memberships, read marks,
//!   acknowledgements, message ids, and its messages, which show the new name.
//!
//! Each rename is logged at warn with both names, so an operator can tell
//! the user. The oldest account keeps the name because it is the one most
//! likely to be known by it; the others were the impersonation risk.
//!
//! Then, on the renamed data:
//! - `client_ids` was keyed by sender alone, so an id used in one room
//!   answered for another room's message. It is rebuilt scoped to the room or
//!   conversation, from the messages still inside the id retention (the
//!   messages carry their client id, so nothing a client could still retry is
//!   forgotten).
//! - `conversations` gains `names`, so that a guest's name taken again
//!   continues the `seq` a client already knows.
//! - the `inbox` (and `inbox_sizes`) tables are filled with what every
//!   registered user has not acknowledged yet.

use std::time::Duration;

use natter_core::is_valid_name;
use natter_core::store::{display_pair, id_scope, Target};
use rusqlite::{params, Connection, OptionalExtension};

/// Built after the twins are settled; also part of a new database.
pub(super) const USERS_NOCASE_INDEX: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS users_name_nocase ON users(name COLLATE NOCASE);";

/// Renames every case twin but the oldest of its set; returns the renames,
/// `(old, new)`. Runs inside the caller's transaction.
pub(super) fn settle_case_twins(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let twins: Vec<(String, String)> = conn
        .prepare(
            "SELECT name, lower(name) FROM users
             WHERE lower(name) IN (SELECT lower(name) FROM users GROUP BY lower(name) HAVING count(*) > 1)
             ORDER BY lower(name), created_ms, name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if twins.is_empty() {
        return Ok(Vec::new());
    }
    // Renaming rewrites keys that other rows point at; the references are
    // whole again at commit.
    conn.pragma_update(None, "defer_foreign_keys", true)?;
    let mut renames = Vec::new();
    let mut previous: Option<&str> = None;
    for (name, folded) in &twins {
        if previous == Some(folded.as_str()) {
            let new = free_name(conn, name)?;
            rename_user(conn, name, &new)?;
            tracing::warn!(old = %name, new = %new, "renamed an account whose name differs only by case from an older one");
            renames.push((name.clone(), new));
        }
        previous = Some(folded);
    }
    Ok(renames)
}

/// The first `NAME-n` (n ≥ 2) that no account has, in any case.
fn free_name(conn: &Connection, name: &str) -> rusqlite::Result<String> {
    for n in 2u32.. {
        let suffix = format!("-{n}");
        let keep = 32usize.saturating_sub(suffix.len()).min(name.len());
        let candidate = format!("{}{suffix}", &name[..keep]);
        debug_assert!(is_valid_name(&candidate));
        let taken: Option<i64> = conn
            .prepare_cached("SELECT 1 FROM users WHERE lower(name) = lower(?1)")?
            .query_row([&candidate], |r| r.get(0))
            .optional()?;
        if taken.is_none() {
            return Ok(candidate);
        }
    }
    unreachable!("u32 names run out only after every one of 4 billion is taken")
}

/// Every place a registered user's name is a key or a shown name.
fn rename_user(conn: &Connection, old: &str, new: &str) -> rusqlite::Result<()> {
    const STATEMENTS: &[&str] = &[
        "UPDATE users SET name = ?2 WHERE name = ?1",
        "UPDATE tokens SET user = ?2 WHERE user = ?1",
        "UPDATE members SET user = ?2 WHERE user = ?1",
        "UPDATE room_messages SET sender = ?2, from_name = ?2 WHERE sender = ?1",
        "UPDATE client_ids SET sender = ?2 WHERE sender = ?1",
        "UPDATE conv_marks SET user = ?2 WHERE user = ?1",
        "UPDATE conv_marks SET peer = ?2 WHERE peer = ?1",
        // A conversation's key is its pair sorted byte-wise (`pair`), so a
        // renamed side may move from `lo` to `hi`. A conversation with
        // oneself first, so the two updates after it cannot see it half done.
        "UPDATE conversations SET lo = ?2, hi = ?2 WHERE lo = ?1 AND hi = ?1",
        "UPDATE conversations SET lo = min(?2, hi), hi = max(?2, hi) WHERE lo = ?1",
        "UPDATE conversations SET lo = min(lo, ?2), hi = max(lo, ?2) WHERE hi = ?1",
        "UPDATE private_messages SET lo = ?2, hi = ?2 WHERE lo = ?1 AND hi = ?1",
        "UPDATE private_messages SET lo = min(?2, hi), hi = max(?2, hi) WHERE lo = ?1",
        "UPDATE private_messages SET lo = min(lo, ?2), hi = max(lo, ?2) WHERE hi = ?1",
        "UPDATE private_messages SET sender = ?2, from_name = ?2 WHERE sender = ?1",
        "UPDATE private_messages SET to_name = ?2 WHERE to_name = ?1",
    ];
    for sql in STATEMENTS {
        conn.execute(sql, params![old, new])?;
    }
    Ok(())
}

/// Before the current schema is created: what `CREATE ... IF NOT EXISTS`
/// cannot change.
pub(super) fn v1_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "DROP TABLE client_ids;
         ALTER TABLE conversations ADD COLUMN names TEXT NOT NULL DEFAULT '';",
    )
}

/// After it: the rows of the new tables and columns.
pub(super) fn v1_rows(conn: &Connection, id_retention: Duration) -> rusqlite::Result<()> {
    fill_names(conn)?;
    fill_inbox(conn)?;
    fill_client_ids(conn, id_retention)
}

fn fill_names(conn: &Connection) -> rusqlite::Result<()> {
    let pairs: Vec<(String, String)> = conn
        .prepare("SELECT lo, hi FROM conversations")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = conn.prepare("UPDATE conversations SET names = ?3 WHERE lo = ?1 AND hi = ?2")?;
    for (lo, hi) in pairs {
        let names = display_pair(&lo, &hi);
        update.execute(params![lo, hi, names])?;
    }
    Ok(())
}

/// Every private message to a registered user above its ack, oldest first.
/// They take the ids 1..=N, and every conversation's `last_order` moves up by
/// N, so that the messages after the upgrade come after them.
fn fill_inbox(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "INSERT INTO inbox (user, id, lo, hi, seq)
         SELECT p.recipient, row_number() OVER (ORDER BY p.ts, p.lo, p.hi, p.seq), p.lo, p.hi, p.seq
         FROM (SELECT m.lo, m.hi, m.seq, m.ts,
                      CASE WHEN m.sender = m.lo THEN m.hi ELSE m.lo END AS recipient
               FROM private_messages AS m) AS p
         JOIN users AS u ON u.name = p.recipient
         LEFT JOIN conv_marks AS k
                ON k.user = p.recipient AND k.peer = CASE WHEN p.recipient = p.lo THEN p.hi ELSE p.lo END
         WHERE p.lo <> p.hi AND p.seq > coalesce(k.ack, 0)
         ORDER BY p.ts, p.lo, p.hi, p.seq;
         UPDATE conversations SET last_order = last_order + (SELECT count(*) FROM inbox);
         INSERT INTO inbox_sizes (user, pending) SELECT user, count(*) FROM inbox GROUP BY user;",
    )
}

/// The client ids of messages stored within the retention, each in its
/// scope (the newest message wins where an id was used twice).
fn fill_client_ids(conn: &Connection, id_retention: Duration) -> rusqlite::Result<()> {
    let newest: Option<i64> = conn.query_row(
        "SELECT max(ts) FROM (SELECT max(ts) AS ts FROM room_messages UNION ALL
                              SELECT max(ts) FROM private_messages)",
        [],
        |r| r.get(0),
    )?;
    let Some(newest) = newest else { return Ok(()) };
    let since = newest.saturating_sub(i64::try_from(id_retention.as_millis()).unwrap_or(i64::MAX));
    let mut insert = conn.prepare(
        "INSERT INTO client_ids (sender, scope, client_id, seq, ts) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sender, scope, client_id) DO UPDATE SET seq = excluded.seq, ts = excluded.ts",
    )?;
    // A room message has no second key: `hi` is NULL.
    let mut messages = conn.prepare(
        "SELECT room, NULL, sender, client_id, seq, ts FROM room_messages WHERE client_id IS NOT NULL AND ts >= ?1
         UNION ALL
         SELECT lo, hi, sender, client_id, seq, ts FROM private_messages WHERE client_id IS NOT NULL AND ts >= ?1
         ORDER BY 6",
    )?;
    let mut rows = messages.query([since])?;
    while let Some(r) = rows.next()? {
        let target = match r.get::<_, Option<String>>(1)? {
            None => Target::Room(r.get(0)?),
            Some(hi) => Target::Conversation(r.get(0)?, hi),
        };
        let (sender, client_id, seq, ts): (String, String, i64, i64) = (r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?);
        insert.execute(params![sender, id_scope(&target), client_id, seq, ts])?;
    }
    Ok(())
}
