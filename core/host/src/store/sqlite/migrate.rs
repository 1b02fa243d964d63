//! Upgrades a database written by an older build, inside the transaction
//! that then creates what is missing of the current schema. Each step is
//! keyed by the `user_version` it starts from.
//!
//! Version 1 to 2:
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

use natter_core::store::{display_pair, id_scope, Target};
use rusqlite::{params, Connection};

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
fn fill_inbox(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "INSERT INTO inbox (user, lo, hi, seq)
         SELECT p.recipient, p.lo, p.hi, p.seq
         FROM (SELECT m.lo, m.hi, m.seq, m.ts,
                      CASE WHEN m.sender = m.lo THEN m.hi ELSE m.lo END AS recipient
               FROM private_messages AS m) AS p
         JOIN users AS u ON u.name = p.recipient
         LEFT JOIN conv_marks AS k
                ON k.user = p.recipient AND k.peer = CASE WHEN p.recipient = p.lo THEN p.hi ELSE p.lo END
         WHERE p.lo <> p.hi AND p.seq > coalesce(k.ack, 0)
         ORDER BY p.ts, p.lo, p.hi, p.seq;
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
    let mut rooms = conn.prepare(
        "SELECT room, sender, client_id, seq, ts FROM room_messages
         WHERE client_id IS NOT NULL AND ts >= ?1 ORDER BY ts, room, seq",
    )?;
    let mut rows = rooms.query([since])?;
    while let Some(r) = rows.next()? {
        let scope = id_scope(&Target::Room(r.get(0)?));
        insert.execute(params![
            r.get::<_, String>(1)?,
            scope,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?
        ])?;
    }
    let mut private = conn.prepare(
        "SELECT lo, hi, sender, client_id, seq, ts FROM private_messages
         WHERE client_id IS NOT NULL AND ts >= ?1 ORDER BY ts, lo, hi, seq",
    )?;
    let mut rows = private.query([since])?;
    while let Some(r) = rows.next()? {
        let scope = id_scope(&Target::Conversation(r.get(0)?, r.get(1)?));
        insert.execute(params![
            r.get::<_, String>(2)?,
            scope,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?
        ])?;
    }
    Ok(())
}
