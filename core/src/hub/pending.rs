//! Requests waiting for storage, each with what its completion needs, and a
//! deadline so that a stalled store turns into `unavailable`, not silence.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::inbox::Round;
use super::limits::LoginTicket;
use crate::ids::SessionId;
use crate::link::Tag;
use crate::store::{NewMessage, StoreReqId};

/// How long a storage request may take before its client is told
/// `unavailable`.
pub(crate) const STORE_DEADLINE: Duration = Duration::from_secs(20);

/// What an `Authenticate` entry is waiting for.
#[derive(Debug)]
pub(crate) enum AuthKind {
    Token(String),
    /// Line `/login`: the user whose password is being checked, and the
    /// attempt counted against the login limits.
    Password(String, LoginTicket),
    /// Line `/register`: the name reserved for it.
    Register(String),
}

#[derive(Debug)]
pub(crate) enum Pending {
    /// `CheckToken`, `Verify` or `Register` for a `hello` or a line login.
    Authenticate {
        sid: SessionId,
        tag: Tag,
        how: AuthKind,
    },
    /// `ReadMarks`, the last read before `welcome`.
    Welcome {
        sid: SessionId,
        tag: Tag,
        user: String,
        token: Option<String>,
        expires_ms: Option<u64>,
    },
    Inbox {
        sid: SessionId,
        /// Where this page starts.
        cursor: u64,
        round: Round,
    },
    ApiRegister {
        sid: SessionId,
        user: String,
    },
    ApiLogin {
        sid: SessionId,
        ticket: LoginTicket,
        user: String,
    },
    ApiLogout {
        sid: SessionId,
        token: String,
    },
    Join {
        sid: SessionId,
        tag: Tag,
        user: String,
        room: String,
        since: Option<u64>,
    },
    Replay {
        sid: SessionId,
        tag: Tag,
        room: String,
        since: u64,
    },
    Leave {
        sid: SessionId,
        tag: Tag,
        user: String,
        room: String,
    },
    SendRoom {
        sid: SessionId,
        tag: Tag,
        room: String,
        message: NewMessage,
    },
    SendPrivate {
        sid: SessionId,
        tag: Tag,
        to_key: String,
        message: NewMessage,
    },
    History {
        sid: SessionId,
        tag: Tag,
        room: Option<String>,
    },
    Conversations {
        sid: SessionId,
        tag: Tag,
    },
    Read {
        sid: SessionId,
        tag: Tag,
        user: String,
        room: Option<String>,
        with: Option<String>,
        seq: u64,
    },
    /// `tag` is `None` for the acks the hub sends for line sessions.
    Ack {
        sid: SessionId,
        tag: Option<Tag>,
    },
}

/// The pending table. Deadlines are all `STORE_DEADLINE` after submission,
/// so submission order is deadline order and a queue suffices.
#[derive(Debug, Default)]
pub(crate) struct PendingTable {
    next: u64,
    entries: HashMap<StoreReqId, Pending>,
    deadlines: VecDeque<(Instant, StoreReqId)>,
    /// Requests whose client was told `unavailable` at the deadline; their
    /// late completions are still applied where that keeps `seq` gapless.
    expired: HashMap<StoreReqId, Pending>,
}

impl PendingTable {
    pub(crate) fn insert(&mut self, now: Instant, pending: Pending) -> StoreReqId {
        self.next += 1;
        let id = StoreReqId(self.next);
        self.entries.insert(id, pending);
        self.deadlines.push_back((now + STORE_DEADLINE, id));
        id
    }

    /// The entry for a completion, and whether it had expired.
    pub(crate) fn take(&mut self, id: StoreReqId) -> Option<(Pending, bool)> {
        if let Some(p) = self.entries.remove(&id) {
            return Some((p, false));
        }
        self.expired.remove(&id).map(|p| (p, true))
    }

    /// Moves every entry past its deadline to the expired set and returns
    /// their ids, for the caller to answer.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<StoreReqId> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(p) = self.entries.remove(&id) {
                self.expired.insert(id, p);
                out.push(id);
            }
        }
        // Expired entries whose completion never comes are forgotten after a
        // second deadline, so the set stays bounded.
        if self.expired.len() > 100_000 {
            self.expired.clear();
        }
        out
    }

    pub(crate) fn get_expired(&self, id: StoreReqId) -> Option<&Pending> {
        self.expired.get(&id)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        // Entries already completed leave stale deadlines at the front. A
        // second of slack coalesces them into at most one wake-up a second
        // under load, instead of one per request.
        self.deadlines.front().map(|&(d, _)| d + Duration::from_secs(1))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
