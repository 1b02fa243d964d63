//! Schema version 2: user names ignore case (PROTOCOL.md, "Accounts").
//!
//! Version 1 let `Carol` and `carol` be two accounts. Version 2 keeps
//! `users.name` unique case-insensitively (`users_name_nocase`). A version 1
//! database may hold such case twins; before the index is built, each set of
//! twins is settled by this rule:
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

use rusqlite::{params, Connection, OptionalExtension};

use natter_core::is_valid_name;

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
