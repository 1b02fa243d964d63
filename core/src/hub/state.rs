//! What the hub knows: rooms with their members, users online with their
//! sessions, and each session's progress.

use std::cmp::Reverse;
use std::collections::BTreeSet;

/// The hub's tables are looked up per member for every message, with
/// SipHash's cost; foldhash is several times cheaper and still seeded at
/// random per table, so clients who choose names cannot aim collisions.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
use std::net::IpAddr;

use smallvec::SmallVec;

use crate::ids::SessionId;
use crate::session::rate::RateLimit;

/// A user or room name where the hub keeps one per session or membership:
/// inline up to 24 bytes (every name the rules allow but the longest), so
/// that the five or so copies an idle session's user and rooms leave in
/// the hub's tables cost no allocation each (32 bytes with malloc's header
/// for a 12-byte `String`). Looked up by `&str` like a `String`.
pub(crate) type Name = compact_str::CompactString;
use crate::store::InboxMessage;
use crate::transport::request::{ClientRequest, Target};

/// A room. Membership belongs to users, by name.
#[derive(Debug, Default)]
pub(crate) struct Room {
    /// Newest `seq` delivered: every later message has a greater one.
    pub(crate) seq: u64,
    pub(crate) members: BTreeSet<Name>,
}

/// A user with at least one session past `welcome`.
#[derive(Debug)]
pub(crate) struct Online {
    /// Stored principal: the name, or `name#n` for a guest.
    pub(crate) key: Name,
    pub(crate) guest: bool,
    /// Inline while there is one: most users have one session, and a
    /// `Vec` would cost each a 32-byte allocation for its 8-byte id.
    pub(crate) sessions: SmallVec<[SessionId; 1]>,
    /// A registered user whose last session closed: when its `offline` is
    /// due. Until then it still counts as online (see `Hub::closed`).
    pub(crate) gone: Option<std::time::Instant>,
}

/// A session the hub has heard from.
#[derive(Debug)]
pub(crate) struct SessionInfo {
    pub(crate) peer: IpAddr,
    pub(crate) line: bool,
    pub(crate) phase: Phase,
    /// Where it is in reading its inbox: until `Done`, live private
    /// messages to it are held back, because a later page returns them too
    /// (see `hub/inbox.rs`).
    pub(crate) inbox: InboxRead,
    /// Rooms whose `since` replay is being read; live messages of these
    /// rooms are skipped for this session, as the replay will carry them.
    pub(crate) replaying: Vec<String>,
    /// What few sessions need; made at first use, so that the others pay
    /// one pointer for it.
    pub(crate) extra: Option<Box<SessionExtra>>,
}

impl SessionInfo {
    pub(crate) fn extra_mut(&mut self) -> &mut SessionExtra {
        self.extra.get_or_insert_with(Default::default)
    }
}

/// What a session needs only once it queried, while it reads its inbox, or
/// in a cluster.
#[derive(Debug, Default)]
pub(crate) struct SessionExtra {
    /// Its budget for requests whose cost grows with the server
    /// (`rooms`, `who`, `history`, `conversations`): made at the first.
    pub(crate) queries: Option<RateLimit>,
    /// The user's own private messages that completed while an inbox page
    /// was read. The inbox holds only others' messages, so these are merged
    /// into it by `seq` and sent with it: each conversation arrives in
    /// order.
    pub(crate) held_echoes: Vec<InboxMessage>,
    /// In a cluster: the newest private `seq` sent to the session per other
    /// principal, so that a message that reaches it both from its inbox and
    /// live (the bus is not ordered with storage) is sent once.
    pub(crate) private_seen: Vec<(String, u64)>,
    /// In a cluster: a live private message was held back for the inbox
    /// while a page was read; the page may have been read before it was
    /// stored (another node stored it), so one more page is read.
    pub(crate) inbox_missed: bool,
}

/// A session's progress through its inbox (`hub/inbox.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboxRead {
    /// All sent (or the session has no inbox: a guest, or not welcomed yet).
    Done,
    /// A page is being read.
    Reading,
    /// A round was sent; the rest, after `cursor`, follows the next `ack`.
    Paused { cursor: u64 },
}

impl InboxRead {
    /// Whether live private messages to the session wait for a page.
    pub(crate) fn holds_live(self) -> bool {
        self != InboxRead::Done
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No `hello` yet (or it failed).
    New,
    /// Authentication or the welcome's reads are in flight.
    Welcoming,
    Welcomed {
        user: Name,
        /// Boxed, not a `String`: 8 bytes less in every session's record.
        token: Option<Box<str>>,
    },
}

impl SessionInfo {
    pub(crate) fn user(&self) -> Option<&str> {
        match &self.phase {
            Phase::Welcomed { user, .. } => Some(user),
            _ => None,
        }
    }
}

/// Users, rooms and sessions, with the queries handlers share.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) rooms: HashMap<String, Room>,
    /// User name → names of its rooms, sorted (registered users' from the
    /// store, guests' while they are online). A sorted vector, not a
    /// `BTreeSet`: most users have a few rooms, and a B-tree's first node
    /// alone would cost an idle session more than the rest of its state;
    /// the first room inline, as most users have one.
    pub(crate) memberships: HashMap<Name, SmallVec<[Name; 1]>>,
    /// Registered names, as spelled at registration. Private: every change
    /// goes through [`State::register`], which keeps `folded` whole.
    registered: HashSet<String>,
    /// Names with a registration in flight: not available to guests.
    reserved: HashSet<String>,
    /// Users with a session, and registered users within the presence grace
    /// after their last one (then with no sessions). Read freely; insert and
    /// remove only through [`State::set_online`] and [`State::remove_online`],
    /// which keep `folded` whole.
    pub(crate) online: HashMap<Name, Online>,
    /// Lower-case name → its spelling, for the registered, reserved and
    /// online names that have an upper-case letter (a lower-case one is its
    /// own key). User names ignore case (PROTOCOL.md), and this is where
    /// they are folded: see [`State::resolve`].
    folded: HashMap<String, String>,
    /// Boxed: the table keeps spare buckets, and an idle session should not
    /// pay for them at full size.
    pub(crate) sessions: HashMap<SessionId, Box<SessionInfo>>,
    /// Rooms with members, most members first, then by name: `rooms`
    /// reads its first `limit` entries instead of sorting every room.
    pub(crate) by_size: BTreeSet<(Reverse<usize>, String)>,
    /// Names online, sorted: `who` without a room reads its first `limit`.
    pub(crate) online_names: BTreeSet<Name>,
    /// In a cluster: users whose sessions or rooms changed since the hub
    /// last brought its subscriptions in line (`None` on a single node).
    touched: Option<Vec<String>>,
}

/// The case-folded form of a user name (names are ASCII by the rules).
pub(crate) fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl State {
    /// A state knowing `users` as registered.
    pub(crate) fn with_users(users: impl IntoIterator<Item = String>) -> State {
        let mut state = State::default();
        for user in users {
            state.register(user);
        }
        state
    }

    /// The spelling in use of the registered, reserved or online user `name`
    /// is, ignoring case; `None` when there is no such user. Every name a
    /// client gives for a user goes through this.
    pub(crate) fn resolve(&self, name: &str) -> Option<&str> {
        if let Some(found) = self.exact(name) {
            return Some(found);
        }
        let folded = fold(name);
        self.exact(&folded).or_else(|| self.folded.get(&folded).map(String::as_str))
    }

    fn exact(&self, name: &str) -> Option<&str> {
        if let Some((key, _)) = self.online.get_key_value(name) {
            return Some(key);
        }
        self.registered.get(name).or_else(|| self.reserved.get(name)).map(String::as_str)
    }

    /// `name`, or the spelling in use of the user it names.
    pub(crate) fn canonical(&self, name: String) -> String {
        match self.resolve(&name) {
            Some(found) if found != name => found.to_string(),
            _ => name,
        }
    }

    /// `request` with every user name in it (`to`, `with`) replaced by the
    /// spelling in use, so the handlers look users up by their one key.
    pub(crate) fn resolve_names(&self, request: ClientRequest) -> ClientRequest {
        let user = |t: Target| match t {
            Target::User(name) => Target::User(self.canonical(name)),
            room => room,
        };
        match request {
            ClientRequest::Send { to, text, id } => ClientRequest::Send { to: user(to), text, id },
            ClientRequest::History { of, before, limit } => ClientRequest::History { of: user(of), before, limit },
            ClientRequest::Read { of, seq } => ClientRequest::Read { of: user(of), seq },
            ClientRequest::Typing { to } => ClientRequest::Typing { to: user(to) },
            ClientRequest::Ack { with, seq } => ClientRequest::Ack { with: self.canonical(with), seq },
            other => other,
        }
    }

    /// Starts recording touched users (see [`State::touch`]).
    pub(crate) fn track_touched(&mut self) {
        self.touched.get_or_insert_with(Vec::new);
    }

    /// Records that `user`'s sessions or rooms changed, in a cluster.
    pub(crate) fn touch(&mut self, user: &str) {
        if let Some(t) = &mut self.touched {
            t.push(user.to_string());
        }
    }

    pub(crate) fn take_touched(&mut self) -> Vec<String> {
        self.touched.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub(crate) fn is_registered(&self, name: &str) -> bool {
        self.registered.contains(name)
    }

    pub(crate) fn register(&mut self, name: String) {
        self.index(&name);
        self.registered.insert(name);
    }

    pub(crate) fn reserve(&mut self, name: String) {
        self.index(&name);
        self.reserved.insert(name);
    }

    pub(crate) fn is_reserved(&self, name: &str) -> bool {
        self.reserved.contains(name)
    }

    pub(crate) fn unreserve(&mut self, name: &str) {
        self.reserved.remove(name);
        self.unindex(name);
    }

    pub(crate) fn set_online(&mut self, name: String, online: Online) {
        self.touch(&name);
        self.index(&name);
        let name = Name::from(name);
        self.online_names.insert(name.clone());
        self.online.insert(name, online);
    }

    pub(crate) fn remove_online(&mut self, name: &str) -> Option<Online> {
        self.touch(name);
        let online = self.online.remove(name);
        self.online_names.remove(name);
        self.unindex(name);
        online
    }

    fn index(&mut self, name: &str) {
        let folded = fold(name);
        if folded != name {
            self.folded.entry(folded).or_insert_with(|| name.to_string());
        }
    }

    fn unindex(&mut self, name: &str) {
        if self.exact(name).is_none() {
            let folded = fold(name);
            if self.folded.get(&folded).is_some_and(|n| n == name) {
                self.folded.remove(&folded);
            }
        }
    }

    pub(crate) fn is_member(&self, user: &str, room: &str) -> bool {
        self.memberships.get(user).is_some_and(|r| find_room(r, room).is_ok())
    }

    /// The names of `user`'s rooms, sorted.
    pub(crate) fn rooms_of(&self, user: &str) -> Vec<String> {
        self.memberships.get(user).map_or_else(Vec::new, |rooms| rooms.iter().map(Name::to_string).collect())
    }

    pub(crate) fn room_count(&self, user: &str) -> usize {
        self.memberships.get(user).map_or(0, |rooms| rooms.len())
    }

    pub(crate) fn room_seq(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(0, |r| r.seq)
    }

    pub(crate) fn members(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.members.len())
    }

    /// Adds a membership; returns whether it is new.
    pub(crate) fn add_member(&mut self, user: &str, room: &str) -> bool {
        self.touch(user);
        let rooms = self.memberships.entry(user.into()).or_default();
        let new = match find_room(rooms, room) {
            Ok(_) => false,
            Err(at) => {
                // Doubling from one slot, not from the four a first push
                // takes: most users are in a room or two, and every idle
                // session pays for its user's list.
                if rooms.len() == rooms.capacity() {
                    rooms.reserve_exact(rooms.len().max(1));
                }
                rooms.insert(at, room.into());
                true
            }
        };
        let r = self.rooms.entry(room.to_string()).or_default();
        let before = r.members.len();
        r.members.insert(user.into());
        let after = r.members.len();
        self.resize(room, before, after);
        new
    }

    /// Moves `room` in [`State::by_size`] from `before` members to `after`.
    fn resize(&mut self, room: &str, before: usize, after: usize) {
        if before == after {
            return;
        }
        if before > 0 {
            self.by_size.remove(&(Reverse(before), room.to_string()));
        }
        if after > 0 {
            self.by_size.insert((Reverse(after), room.to_string()));
        }
    }

    /// Removes a membership; returns whether there was one. An empty room is
    /// kept while its `seq` is not 0, so that `seq` keeps growing.
    pub(crate) fn remove_member(&mut self, user: &str, room: &str) -> bool {
        self.touch(user);
        let had = self.memberships.get_mut(user).is_some_and(|r| match find_room(r, room) {
            Ok(at) => {
                r.remove(at);
                true
            }
            Err(_) => false,
        });
        if let Some(r) = self.memberships.get(user) {
            if r.is_empty() {
                self.memberships.remove(user);
            }
        }
        if let Some(r) = self.rooms.get_mut(room) {
            let before = r.members.len();
            r.members.remove(user);
            let after = r.members.len();
            if r.members.is_empty() && r.seq == 0 {
                self.rooms.remove(room);
            }
            self.resize(room, before, after);
        }
        had
    }

    /// The stored principal of a user who is online or registered.
    pub(crate) fn key_of(&self, user: &str) -> Option<String> {
        match self.online.get(user) {
            Some(o) => Some(o.key.to_string()),
            None => self.is_registered(user).then(|| user.to_string()),
        }
    }

    /// Rooms with at least one member.
    pub(crate) fn live_rooms(&self) -> usize {
        self.by_size.len()
    }
}

/// Where `room` is in a user's sorted room list, or where it would go.
fn find_room(rooms: &[Name], room: &str) -> Result<usize, usize> {
    rooms.binary_search_by(|x| x.as_str().cmp(room))
}

/// The display name in a stored principal (`bob#7` → `bob`).
pub(crate) fn display_name(key: &str) -> &str {
    key.split_once('#').map_or(key, |(name, _)| name)
}
