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
use std::sync::Arc;

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
    /// Every session here of every member, in runs of one shard's sessions
    /// (ordered by shard, then id; at most [`MAX_RUN`] a run): a message of
    /// the room sends each run, shared, to its shard, with no lookup per
    /// member and no copy. Kept in step by [`State`]'s membership and
    /// session changes, which make a new run (members change far less often
    /// than messages flow; the bound keeps that cheap in a huge room).
    /// Members with no session here (offline, or on another node) have none.
    route: Vec<(u16, Arc<[SessionId]>)>,
}

/// The most sessions in one run of a room's route: a change copies one run.
const MAX_RUN: usize = 512;

impl Room {
    /// Every session here of every member, in runs of one shard's sessions
    /// (see the field).
    pub(crate) fn route(&self) -> &[(u16, Arc<[SessionId]>)] {
        &self.route
    }

    /// Where `sid` is or would go: the first run that does not end before it.
    fn run_of(&self, sid: SessionId) -> usize {
        let key = (sid.shard(), sid);
        self.route.partition_point(|(shard, run)| (*shard, run[run.len() - 1]) < key)
    }

    fn add_session(&mut self, sid: SessionId) {
        let i = self.run_of(sid);
        // Into the run that ends after it, or else onto the end of the
        // shard's run before, or else a run of its own.
        let i = match (self.route.get(i), i.checked_sub(1).and_then(|p| self.route.get(p))) {
            (Some((shard, _)), _) if *shard == sid.shard() => i,
            (_, Some((shard, _))) if *shard == sid.shard() => i - 1,
            _ => return self.route.insert(i, (sid.shard(), Arc::from([sid]))),
        };
        let run = &self.route[i].1;
        let Err(at) = run.binary_search(&sid) else { return };
        let new: Vec<SessionId> = run[..at].iter().chain([&sid]).chain(&run[at..]).copied().collect();
        if new.len() > MAX_RUN {
            let (low, high) = new.split_at(new.len() / 2);
            self.route[i].1 = low.into();
            self.route.insert(i + 1, (sid.shard(), high.into()));
        } else {
            self.route[i].1 = new.into();
        }
    }

    fn remove_session(&mut self, sid: SessionId) {
        let i = self.run_of(sid);
        let Some((_, run)) = self.route.get(i) else { return };
        let Ok(at) = run.binary_search(&sid) else { return };
        if run.len() == 1 {
            self.route.remove(i);
        } else {
            let new: Arc<[SessionId]> = run[..at].iter().chain(&run[at + 1..]).copied().collect();
            self.route[i].1 = new;
        }
    }
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
    /// Room → the sessions whose `since` replay of it is being read, sorted;
    /// live messages of the room skip them, as the replay will carry them.
    /// Usually empty; private: changed only through
    /// [`State::mark_replaying`], [`State::unmark_replaying`] and
    /// [`State::remove_session_info`].
    replaying: HashMap<String, Vec<SessionId>>,
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
        for &sid in &online.sessions {
            self.route_session(&name, sid, true);
        }
        self.online.insert(name, online);
    }

    pub(crate) fn remove_online(&mut self, name: &str) -> Option<Online> {
        self.touch(name);
        let online = self.online.remove(name);
        self.online_names.remove(name);
        self.unindex(name);
        for &sid in online.iter().flat_map(|o| &o.sessions) {
            self.route_session(name, sid, false);
        }
        online
    }

    /// Adds session `sid` to online `user` (and to its rooms' routes);
    /// `false` if the user is not online.
    pub(crate) fn add_session(&mut self, user: &str, sid: SessionId) -> bool {
        let Some(online) = self.online.get_mut(user) else { return false };
        if !online.sessions.contains(&sid) {
            online.sessions.push(sid);
        }
        self.touch(user);
        self.route_session(user, sid, true);
        true
    }

    /// Takes session `sid` from `user` (and from its rooms' routes); returns
    /// how many sessions the user has left here.
    pub(crate) fn remove_session(&mut self, user: &str, sid: SessionId) -> usize {
        self.touch(user);
        let Some(online) = self.online.get_mut(user) else { return 0 };
        online.sessions.retain(|s| *s != sid);
        let left = online.sessions.len();
        self.route_session(user, sid, false);
        left
    }

    /// Adds `sid` to (or takes it from) the routes of `user`'s rooms.
    fn route_session(&mut self, user: &str, sid: SessionId, add: bool) {
        let Some(rooms) = self.memberships.get(user) else { return };
        for room in rooms {
            if let Some(r) = self.rooms.get_mut(room.as_str()) {
                if add {
                    r.add_session(sid);
                } else {
                    r.remove_session(sid);
                }
            }
        }
    }

    /// The session's hub record ends (it closed): it replays nothing any
    /// more.
    pub(crate) fn remove_session_info(&mut self, sid: SessionId) -> Option<Box<SessionInfo>> {
        if !self.replaying.is_empty() {
            self.replaying.retain(|_, sessions| {
                sessions.retain(|s| *s != sid);
                !sessions.is_empty()
            });
        }
        self.sessions.remove(&sid)
    }

    /// From now until [`State::unmark_replaying`], live messages of `room`
    /// skip `sid`.
    pub(crate) fn mark_replaying(&mut self, sid: SessionId, room: &str) {
        let sessions = self.replaying.entry(room.to_string()).or_default();
        if let Err(at) = sessions.binary_search(&sid) {
            sessions.insert(at, sid);
        }
    }

    pub(crate) fn unmark_replaying(&mut self, sid: SessionId, room: &str) {
        let Some(sessions) = self.replaying.get_mut(room) else { return };
        if let Ok(at) = sessions.binary_search(&sid) {
            sessions.remove(at);
        }
        if sessions.is_empty() {
            self.replaying.remove(room);
        }
    }

    /// The sessions replaying `room`, sorted.
    pub(crate) fn replaying(&self, room: &str) -> &[SessionId] {
        if self.replaying.is_empty() {
            return &[];
        }
        self.replaying.get(room).map_or(&[], Vec::as_slice)
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
        if r.members.insert(user.into()) {
            for &sid in self.online.get(user).iter().flat_map(|o| &o.sessions) {
                r.add_session(sid);
            }
        }
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
            if r.members.remove(user) {
                for &sid in self.online.get(user).iter().flat_map(|o| &o.sessions) {
                    r.remove_session(sid);
                }
            }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sid(shard: u16, serial: u64) -> SessionId {
        SessionId::new(shard, serial as usize, serial)
    }

    fn online(sessions: Vec<SessionId>) -> Online {
        Online { key: Name::default(), guest: false, sessions: sessions.into(), gone: None }
    }

    /// Every session of every member, sorted: what the route must hold.
    fn by_members(state: &State, room: &str) -> Vec<SessionId> {
        let Some(r) = state.rooms.get(room) else { return Vec::new() };
        let mut out: Vec<SessionId> =
            r.members.iter().filter_map(|m| state.online.get(m)).flat_map(|o| o.sessions.iter().copied()).collect();
        out.sort_unstable();
        out
    }

    /// A room's route, flat.
    fn sessions(room: &Room) -> Vec<SessionId> {
        room.route().iter().flat_map(|(_, run)| run.iter().copied()).collect()
    }

    /// The route of every room agrees with its members, and is in
    /// non-empty runs of one shard each, at most `MAX_RUN` long, ordered by
    /// shard then id with no repeat (what finding a session's run relies on).
    fn check_routes(state: &State) {
        for (name, room) in &state.rooms {
            let route = room.route();
            for (shard, run) in route {
                assert!(!run.is_empty() && run.len() <= MAX_RUN, "{name}: {route:?}");
                assert!(run.iter().all(|s| s.shard() == *shard), "{name}: {route:?}");
            }
            let flat: Vec<(u16, SessionId)> = sessions(room).into_iter().map(|s| (s.shard(), s)).collect();
            assert!(flat.windows(2).all(|w| w[0] < w[1]), "{name}: {route:?}");
            let mut sorted = sessions(room);
            sorted.sort_unstable();
            assert_eq!(sorted, by_members(state, name), "the route of {name}");
        }
    }

    #[test]
    fn a_route_follows_joins_leaves_sessions_and_presence() {
        let mut state = State::default();
        state.add_member("ann", "r");
        assert!(sessions(&state.rooms["r"]).is_empty(), "a member offline has no session");
        state.set_online("ann".into(), online(vec![sid(1, 1)]));
        assert_eq!(sessions(&state.rooms["r"]), [sid(1, 1)]);
        state.add_session("ann", sid(0, 2));
        assert_eq!(sessions(&state.rooms["r"]), [sid(0, 2), sid(1, 1)], "by shard");
        state.set_online("bob".into(), online(vec![sid(1, 3)]));
        state.add_member("bob", "r");
        state.add_member("bob", "r");
        assert_eq!(sessions(&state.rooms["r"]), [sid(0, 2), sid(1, 1), sid(1, 3)]);
        assert_eq!(state.remove_session("ann", sid(1, 1)), 1);
        assert_eq!(sessions(&state.rooms["r"]), [sid(0, 2), sid(1, 3)]);
        state.remove_member("bob", "r");
        assert_eq!(sessions(&state.rooms["r"]), [sid(0, 2)]);
        state.remove_online("ann");
        assert!(sessions(&state.rooms["r"]).is_empty(), "offline");
        check_routes(&state);
    }

    #[test]
    fn replaying_is_per_room_and_ends_with_the_session() {
        let mut state = State::default();
        state.set_online("ann".into(), online(vec![sid(0, 1)]));
        state.sessions.insert(
            sid(0, 1),
            Box::new(SessionInfo {
                peer: IpAddr::from([127, 0, 0, 1]),
                line: false,
                phase: Phase::New,
                inbox: InboxRead::Done,
                extra: None,
            }),
        );
        state.mark_replaying(sid(0, 1), "r");
        state.mark_replaying(sid(0, 1), "r");
        state.mark_replaying(sid(0, 1), "s");
        assert_eq!(state.replaying("r"), [sid(0, 1)]);
        state.unmark_replaying(sid(0, 1), "r");
        assert!(state.replaying("r").is_empty());
        assert_eq!(state.replaying("s"), [sid(0, 1)]);
        assert!(state.remove_session_info(sid(0, 1)).is_some());
        assert!(state.replaying("s").is_empty(), "a closed session replays nothing");
        assert!(state.replaying.is_empty(), "nothing left behind");
    }

    #[test]
    fn a_huge_room_is_routed_in_bounded_runs() {
        let mut state = State::default();
        state.add_member("ann", "r");
        state.set_online("ann".into(), online(vec![]));
        // Opened in a scrambled order, so sessions land inside runs too.
        let n = 3 * MAX_RUN as u64;
        let order: Vec<u64> = (0..n).map(|i| (i * 7919) % n).collect();
        for (k, &i) in order.iter().enumerate() {
            state.add_session("ann", sid((i % 2) as u16, i + 1));
            if k % 97 == 0 {
                check_routes(&state);
            }
        }
        check_routes(&state);
        assert!(state.rooms["r"].route().len() >= 4, "split into runs: {}", state.rooms["r"].route().len());
        for &i in order.iter().step_by(3) {
            state.remove_session("ann", sid((i % 2) as u16, i + 1));
        }
        check_routes(&state);
        state.remove_online("ann");
        assert!(state.rooms["r"].route().is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A session of user `.0` is welcomed (on shard `.1`).
        Open(usize, u16),
        /// The `.1`-th session of user `.0` closes; the last one takes the
        /// user offline when `.2`.
        Close(usize, usize, bool),
        Join(usize, usize),
        Leave(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..5usize, 0..4u16).prop_map(|(u, s)| Op::Open(u, s)),
            (0..5usize, 0..3usize, any::<bool>()).prop_map(|(u, i, off)| Op::Close(u, i, off)),
            (0..5usize, 0..3usize).prop_map(|(u, r)| Op::Join(u, r)),
            (0..5usize, 0..3usize).prop_map(|(u, r)| Op::Leave(u, r)),
        ]
    }

    fn apply(state: &mut State, op: Op, serial: &mut u64) {
        let user = |u: usize| format!("u{u}");
        let room = |r: usize| format!("r{r}");
        match op {
            Op::Open(u, shard) => {
                *serial += 1;
                let s = sid(shard, *serial);
                if !state.add_session(&user(u), s) {
                    state.set_online(user(u), online(vec![s]));
                }
            }
            Op::Close(u, i, offline) => {
                let Some(s) = state.online.get(user(u).as_str()).and_then(|o| o.sessions.get(i).copied()) else {
                    return;
                };
                if state.remove_session(&user(u), s) == 0 && offline {
                    state.remove_online(&user(u));
                }
            }
            Op::Join(u, r) => {
                state.add_member(&user(u), &room(r));
            }
            Op::Leave(u, r) => {
                state.remove_member(&user(u), &room(r));
            }
        }
    }

    proptest! {
        /// Whatever the order of joins, leaves, opens and closes, each
        /// room's route is what the old per-member computation gives.
        #[test]
        fn routes_stay_in_step_with_members_and_sessions(ops in proptest::collection::vec(op(), 1..60)) {
            let mut state = State::default();
            let mut serial = 0;
            for op in ops {
                apply(&mut state, op, &mut serial);
                check_routes(&state);
            }
        }
    }
}
