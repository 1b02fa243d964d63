//! Creates and upgrades the schema at open. The version lives in the table
//! `schema_version` (one row). `MIGRATIONS[v]` takes a database from version
//! `v` to `v + 1` (version 0 is an empty database), so a new version is one
//! more entry here and a higher [`SCHEMA_VERSION`]; a migration must never
//! change once released. All of it runs in one transaction under an advisory
//! lock, so that nodes starting together against one database migrate it
//! once, one after the other, and a failed migration leaves nothing behind.

use postgres::Client;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 2;

const MIGRATIONS: &[&str] = &[include_str!("v1_schema.sql"), include_str!("v2_guest_claims.sql")];

/// The advisory lock key that serialises migrations ("natter" in ASCII).
const MIGRATION_LOCK: i64 = 0x6e61_7474_6572;

/// What migrating found.
#[derive(Debug)]
pub(super) enum Migrated {
    /// The schema is at [`SCHEMA_VERSION`]; it was at `from` before.
    Done { from: i64 },
    /// The database was written by a newer build: nothing was changed.
    TooNew { found: i64 },
}

/// Brings the schema to [`SCHEMA_VERSION`].
pub(super) fn migrate(client: &mut Client) -> Result<Migrated, postgres::Error> {
    debug_assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
             version BIGINT NOT NULL
         )",
    )?;
    let found: i64 = tx.query_opt("SELECT version FROM schema_version", &[])?.map_or(0, |row| row.get(0));
    if found > SCHEMA_VERSION {
        return Ok(Migrated::TooNew { found });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        tracing::debug!(from = version, to = version + 1, "migrating the PostgreSQL schema");
        tx.batch_execute(sql)?;
    }
    tx.execute(
        "INSERT INTO schema_version (one, version) VALUES (TRUE, $1)
         ON CONFLICT (one) DO UPDATE SET version = excluded.version",
        &[&SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(Migrated::Done { from: found })
}
