//! The PostgreSQL store's operations for the nodes of a cluster: the newest
//! `seq`s of what a node serves, which tokens are still live, a room's
//! members, a name registered elsewhere, and guest name claims.

use std::collections::{HashMap, HashSet};

use natter_core::store::StoreValue;

use super::{int, token_hash, uint, Conn, PgError};

/// The newest `seq` of each room asked (0 when unknown), in the order asked,
/// and of every conversation of the users asked (active since `active_since`
/// when given), each pair once, sorted.
pub(super) fn last_seqs(
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
pub(super) fn live_tokens(conn: &mut Conn, tokens: &[String]) -> Result<StoreValue, PgError> {
    let hashes: Vec<String> = tokens.iter().map(|t| token_hash(t)).collect();
    let rows = conn.query("SELECT hash FROM tokens WHERE hash = ANY($1) AND NOT revoked", &[&hashes])?;
    let live: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let tokens = tokens.iter().zip(&hashes).filter(|(_, h)| live.contains(*h)).map(|(t, _)| t.clone()).collect();
    Ok(StoreValue::LiveTokens { tokens })
}

/// The registered name `name` names, ignoring case.
pub(super) fn find_user(conn: &mut Conn, name: &str) -> Result<StoreValue, PgError> {
    let row = conn.query_opt("SELECT name FROM users WHERE lower(name) = lower($1)", &[&name])?;
    Ok(StoreValue::FoundUser(row.map(|r| r.get(0))))
}

/// Claims guest name `name` for `node` (see `StoreOp::ClaimGuest`). One
/// statement: the row lock of the conflict makes two nodes claiming
/// together take turns, and the second sees the first's claim.
pub(super) fn claim_guest(
    conn: &mut Conn,
    name: &str,
    node: u64,
    alive: &Option<Vec<u64>>,
) -> Result<StoreValue, PgError> {
    let take_over = alive.is_some();
    let alive: Vec<i64> = alive.iter().flatten().map(|&n| n as i64).collect();
    let row = conn.query_opt(
        "INSERT INTO guest_claims (lname, node) VALUES (lower($1), $2)
         ON CONFLICT (lname) DO UPDATE SET node = excluded.node, claimed_at = now()
         WHERE guest_claims.node = excluded.node OR ($4 AND NOT (guest_claims.node = ANY($3)))
         RETURNING node",
        &[&name, &(node as i64), &alive, &take_over],
    )?;
    Ok(StoreValue::Claimed(row.is_some()))
}

/// Gives up `node`'s claim of guest name `name`, if it still holds it.
pub(super) fn release_guest(conn: &mut Conn, name: &str, node: u64) -> Result<StoreValue, PgError> {
    conn.execute("DELETE FROM guest_claims WHERE lname = lower($1) AND node = $2", &[&name, &(node as i64)])?;
    Ok(StoreValue::Done)
}

/// Each room asked, in the order asked, with its newest `seq` and its
/// registered members sorted.
pub(super) fn room_members(conn: &mut Conn, rooms: &[String]) -> Result<StoreValue, PgError> {
    let rows = conn.query("SELECT room, name FROM members WHERE room = ANY($1) ORDER BY room, name", &[&rooms])?;
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    for row in &rows {
        found.entry(row.get(0)).or_default().push(row.get(1));
    }
    let seqs = conn.query("SELECT name, seq FROM rooms WHERE name = ANY($1)", &[&rooms])?;
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
