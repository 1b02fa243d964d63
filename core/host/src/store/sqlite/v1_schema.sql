-- The schema of version 1, as an older build created it: the migration test starts from it.
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
