-- Schema version 2 (see migrate.rs): guest names claimed by a node of the
-- cluster, so that two nodes never welcome a guest under one name. `lname`
-- is the name in lower case (names ignore case); `node` the claiming
-- node's id (a u64 stored bit for bit). A claim of a node the claimer does
-- not count alive is taken over, so a dead node's claims need no cleanup.

CREATE TABLE guest_claims (
    lname      TEXT COLLATE "C" PRIMARY KEY,
    node       BIGINT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
