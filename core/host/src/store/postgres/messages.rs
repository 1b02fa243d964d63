//! The PostgreSQL store's operations on messages: appending (with the
//! `seq` taken under the room's or conversation's row lock, and client ids
//! claimed by their unique key), reading history and inboxes, read marks and
//! acknowledgements, and the purge of old client ids.

use natter_core::store::{
    display_pair, id_scope, ConversationSummary, InboxBound, InboxLimit, InboxMessage, NewMessage, SeqRange,
    StoreValue, StoredMessage, Target,
};
use postgres::types::ToSql;
use postgres::Row;

use super::{int, pair, uint, Conn, PgError, PostgresOptions, PURGE_BATCH};

pub(super) fn read(conn: &mut Conn, user: &str, target: &Target, seq: u64) -> Result<StoreValue, PgError> {
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

pub(super) fn conversations(conn: &mut Conn, user: &str, limit: u32) -> Result<StoreValue, PgError> {
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

pub(super) fn append(conn: &mut Conn, target: &Target, m: &NewMessage) -> Result<StoreValue, PgError> {
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
    if inboxed {
        if let Some(seq) = append_to_inbox_at_once(conn, (lo, hi), m, recipient, ts)? {
            return Ok(Ok(seq));
        }
    }
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

/// A private message to a registered user in a conversation that exists
/// (nearly every one): the conversation's next `seq` under its row's lock,
/// the message, and the recipient's inbox entry under its row's lock, in
/// one round trip where they took two (each a query through the client's
/// runtime, the most of what a message cost the storage thread). `None`,
/// with nothing written, when the conversation is new.
fn append_to_inbox_at_once(
    conn: &mut Conn,
    (lo, hi): (&str, &str),
    m: &NewMessage,
    recipient: &str,
    ts: i64,
) -> Result<Option<i64>, PgError> {
    let row = conn.query_opt(
        "WITH c AS (UPDATE conversations
                    SET seq = seq + 1, last_ts = greatest(last_ts, $3), last_order = nextval('conversation_order')
                    WHERE lo = $1 AND hi = $2
                    RETURNING seq),
              m AS (INSERT INTO private_messages (lo, hi, seq, sender, from_name, to_name, text, client_id, ts)
                    SELECT $1, $2, c.seq, $4, $5, $6, $7, $8, $3 FROM c RETURNING seq),
              s AS (INSERT INTO inbox_sizes (owner, pending, last_id) SELECT $9, 1, 1 FROM m
                    ON CONFLICT (owner) DO UPDATE
                    SET pending = inbox_sizes.pending + 1, last_id = inbox_sizes.last_id + 1
                    RETURNING last_id)
         INSERT INTO inbox (owner, id, lo, hi, seq) SELECT $9, s.last_id, $1, $2, m.seq FROM s, m RETURNING seq",
        &[&lo, &hi, &ts, &m.sender, &m.from, &m.to, &m.text, &m.client_id, &recipient],
    )?;
    Ok(row.map(|r| r.get(0)))
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
pub(super) fn ack(conn: &mut Conn, user: &str, with: &str, seq: u64) -> Result<StoreValue, PgError> {
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
pub(super) fn purge_ids(conn: &mut Conn, now_ms: i64, options: &PostgresOptions) -> Result<u64, PgError> {
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

pub(super) fn history(conn: &mut Conn, target: &Target, range: SeqRange) -> Result<StoreValue, PgError> {
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

pub(super) fn inbox(conn: &mut Conn, user: &str, after: u64, limit: u32) -> Result<StoreValue, PgError> {
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
