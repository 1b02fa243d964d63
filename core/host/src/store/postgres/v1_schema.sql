-- Schema version 1 of the PostgreSQL store (see migrate.rs). Several nodes
-- may share this database: every counter a client sees (a room's or a
-- conversation's `seq`, a user's inbox ids) is taken under the lock of the
-- row that holds it, inside the transaction that stores what it numbers, so
-- commit order is number order. Keys compare byte-wise (COLLATE "C"), as
-- the SQLite store and the hub do, whatever the database's locale.

CREATE TABLE users (
    name       TEXT COLLATE "C" PRIMARY KEY,
    hash       TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
-- User names ignore case (PROTOCOL.md, "Accounts").
CREATE UNIQUE INDEX users_name_lower ON users (lower(name));

CREATE TABLE tokens (
    hash       TEXT COLLATE "C" PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL REFERENCES users (name),
    expires_ms BIGINT NOT NULL,
    revoked    BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE rooms (
    name TEXT COLLATE "C" PRIMARY KEY,
    seq  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE members (
    room TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    name TEXT COLLATE "C" NOT NULL,
    read BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room, name)
);
CREATE INDEX members_by_name ON members (name, room);

CREATE TABLE room_messages (
    room      TEXT COLLATE "C" NOT NULL REFERENCES rooms (name),
    seq       BIGINT NOT NULL,
    sender    TEXT NOT NULL,
    from_name TEXT NOT NULL,
    text      TEXT NOT NULL,
    client_id TEXT,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
);

-- Orders conversations by when they last stored a message (the
-- conversation list), never to find messages.
CREATE SEQUENCE conversation_order;

CREATE TABLE conversations (
    lo         TEXT COLLATE "C" NOT NULL,
    hi         TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    last_ts    BIGINT NOT NULL,
    last_order BIGINT NOT NULL,
    -- `store::display_pair` of lo and hi: a new conversation continues the
    -- `seq` of an earlier one with the same names.
    names      TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (lo, hi)
);
CREATE INDEX conversations_by_hi ON conversations (hi, lo);
CREATE INDEX conversations_by_names ON conversations (names, seq);

CREATE TABLE private_messages (
    lo        TEXT COLLATE "C" NOT NULL,
    hi        TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL,
    sender    TEXT NOT NULL,
    from_name TEXT NOT NULL,
    to_name   TEXT,
    text      TEXT NOT NULL,
    client_id TEXT,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (lo, hi, seq),
    FOREIGN KEY (lo, hi) REFERENCES conversations (lo, hi)
);

CREATE TABLE conv_marks (
    owner TEXT COLLATE "C" NOT NULL,
    peer  TEXT COLLATE "C" NOT NULL,
    read  BIGINT NOT NULL DEFAULT 0,
    ack   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, peer)
);

-- A client id names a message within its sender and scope (the room, or the
-- conversation): see `StoreOp::Append`. The unique key is what makes a retry
-- on any node find the first message: the first to insert the key holds it
-- until its transaction ends. `id` only orders the purge.
CREATE TABLE client_ids (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender    TEXT COLLATE "C" NOT NULL,
    scope     TEXT COLLATE "C" NOT NULL,
    client_id TEXT COLLATE "C" NOT NULL,
    seq       BIGINT NOT NULL,
    ts        BIGINT NOT NULL,
    UNIQUE (sender, scope, client_id)
);

-- Each registered user's unacknowledged private messages. `id` is the
-- user's own counter (`inbox_sizes.last_id`), taken under its row lock, so
-- a page cursor never passes a message that commits later.
CREATE TABLE inbox (
    owner TEXT COLLATE "C" NOT NULL,
    id    BIGINT NOT NULL,
    lo    TEXT COLLATE "C" NOT NULL,
    hi    TEXT COLLATE "C" NOT NULL,
    seq   BIGINT NOT NULL,
    PRIMARY KEY (owner, id)
);
CREATE INDEX inbox_by_conversation ON inbox (owner, lo, hi, seq);
CREATE TABLE inbox_sizes (
    owner   TEXT COLLATE "C" PRIMARY KEY,
    pending BIGINT NOT NULL,
    last_id BIGINT NOT NULL
);
