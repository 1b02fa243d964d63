//! Requests waiting for storage, each with what its completion needs, and a
//! deadline so that a stalled store turns into `unavailable`, not silence.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::limits::LoginTicket;
use crate::ids::SessionId;
use crate::link::Tag;
use crate::store::{NewMessage, StoreReqId};
use crate::transport::request::ClientRequest;

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

/// A request waiting for storage: the session it is for, the tag its
/// answer carries, and what its completion needs.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) sid: SessionId,
    /// `None` when no `reply` answers it: an inbox page, a line session's
    /// ack, an HTTP API call (answered with a response of its own).
    pub(crate) tag: Option<Tag>,
    pub(crate) kind: PendingKind,
}

impl Pending {
    /// Work for a client request, answered with `tag`.
    pub(crate) fn request(sid: SessionId, tag: Tag, kind: PendingKind) -> Pending {
        Pending { sid, tag: Some(tag), kind }
    }

    /// Work the session asked for without a tag to answer.
    pub(crate) fn untagged(sid: SessionId, kind: PendingKind) -> Pending {
        Pending { sid, tag: None, kind }
    }
}

#[derive(Debug)]
pub(crate) enum PendingKind {
    /// `CheckToken`, `Verify` or `Register` for a `hello` or a line login.
    Authenticate(AuthKind),
    /// `ReadMarks`, the last read before `welcome`.
    Welcome {
        user: String,
        token: Option<String>,
        expires_ms: Option<u64>,
    },
    Inbox {
        /// Where this page starts.
        cursor: u64,
        round: Round,
    },
    /// A call of the HTTP account API.
    Api(ApiKind),
    Join {
        user: String,
        room: String,
        since: Option<u64>,
    },
    Replay {
        room: String,
        since: u64,
    },
    /// In a cluster: what a `since` replay missed of what was delivered
    /// while it was read (see `Hub::replay_rest`), after `after`.
    ReplayRest {
        room: String,
        after: u64,
    },
    Leave {
        user: String,
        room: String,
    },
    SendRoom {
        room: String,
        message: NewMessage,
    },
    SendPrivate {
        to_key: String,
        message: NewMessage,
    },
    History {
        room: Option<String>,
    },
    Conversations,
    Read {
        user: String,
        room: Option<String>,
        with: Option<String>,
        seq: u64,
    },
    /// An `ack` request, or (untagged) the hub's ack for a line session.
    Ack,
    /// In a cluster: a read of `(after, after + FILL_PAGE]` of a room or
    /// conversation, to fill a gap; `covers` was known stored when it was
    /// asked (see `hub/cluster.rs`).
    Fill {
        key: super::stream::StreamKey,
        after: u64,
        covers: u64,
    },
    /// In a cluster: which of `tokens` (this node's sessions') are still
    /// live, after the bus link was down (see `hub/relay.rs`).
    LiveTokens {
        tokens: Vec<String>,
    },
    /// In a cluster: the members of rooms this node starts serving (see
    /// `hub/relay.rs`).
    RoomMembers {
        rooms: Vec<String>,
    },
    /// In a cluster: a guest's `join` of a room this node does not serve
    /// yet, once the room's members are read (see `hub/relay.rs`).
    GuestJoin {
        user: String,
        room: String,
        since: Option<u64>,
    },
    /// In a cluster: a registered user's rooms, read again after its
    /// session was welcomed (see `hub/relay.rs`).
    UserRooms {
        user: String,
    },
    /// In a cluster: the newest `seq`s of what the node serves; `users`
    /// asked.
    Check {
        users: Vec<String>,
    },
    /// In a cluster: a request that names a user this node does not know,
    /// waiting for storage to say whether another node registered it.
    FindUser {
        user: String,
        request: ClientRequest,
    },
    /// In a cluster: a login (HTTP, or the line port's `/login` when
    /// tagged) under a name this node does not know, waiting for storage to
    /// say how it was registered, so the session is the user's one spelling.
    FindLogin {
        name: String,
        password: String,
        peer: std::net::IpAddr,
    },
    /// In a cluster: a guest `hello` waiting for its name's claim
    /// (`hub/nodes.rs`); `key` is its principal when it resumes.
    ClaimGuest {
        name: String,
        key: Option<String>,
        peer: std::net::IpAddr,
    },
    /// In a cluster: a guest name given back.
    ReleaseGuest,
}

/// What an HTTP account API call is waiting for.
#[derive(Debug)]
pub(crate) enum ApiKind {
    Register { user: String },
    Login { ticket: LoginTicket, user: String },
    Logout { token: String },
}

/// Progress of one round of inbox pages, carried by [`PendingKind::Inbox`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Round {
    pub(crate) sent: u32,
    pub(crate) bytes: usize,
}

/// What a pending request holds back for its session until it completes.
pub(crate) enum Held {
    Nothing,
    /// Live messages of a room (a `join` with `since`, or its replay).
    Room(String),
    /// Live private messages (an inbox page).
    Inbox,
}

impl PendingKind {
    pub(crate) fn held_back(&self) -> Held {
        match self {
            Self::Join { room, since: Some(_), .. } | Self::Replay { room, .. } | Self::ReplayRest { room, .. } => {
                Held::Room(room.clone())
            }
            Self::Inbox { .. } => Held::Inbox,
            _ => Held::Nothing,
        }
    }

    /// Whether it answers with an HTTP response rather than a `reply`.
    pub(crate) fn is_api(&self) -> bool {
        matches!(self, Self::Api(_))
    }

    /// Whether it is a step of a `hello` (or a line login): the session is
    /// welcoming while it runs.
    pub(crate) fn is_hello(&self) -> bool {
        matches!(self, Self::Authenticate(_) | Self::Welcome { .. } | Self::ClaimGuest { .. } | Self::FindLogin { .. })
    }
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
