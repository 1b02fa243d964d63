//! The hub as one node of several (`Config::cluster`): subscriptions, the
//! bus's messages put back in `seq` order, and catch-up from storage.
//!
//! Storage assigns every `seq` (in the transaction that stores the message),
//! so storage, not the bus, is the truth: the bus only makes delivery fast.
//! Per room and per conversation the hub knows the newest `seq` it delivered
//! (`last`; a room's is `Room::seq`). A message at `last + 1` is delivered;
//! at or below `last` it is a duplicate and dropped; above `last + 1` it is
//! held (at most [`HOLD`] per stream) while the missing range is read from
//! storage, in pages from `last` upwards, and delivered first. Messages come
//! into this one sequencer from the bus, from this node's own appends and
//! from storage reads alike.
//!
//! What the bus lost for ever (a publisher that died between commit and
//! publish, a link that was down) is found by asking storage for the newest
//! `seq` of everything served: every `Config::cluster_check`, after every
//! [`BusEvent::Up`], and when a room or a user starts being served here.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::pending::{Pending, PendingKind};
use super::stream::{conversation, StreamKey};
use super::{unavailable, Hub};
use crate::bus::{BusCommand, BusEvent, BusMessage, BusTopic};
use crate::ids::{is_valid_name, SessionId};
use crate::link::Tag;
use crate::metrics::Metrics;
use crate::render::event::room_message;
use crate::store::{SeqRange, StoreError, StoreOp, StoreValue, StoredMessage, UserKey};
use crate::time::Now;
use crate::transport::request::{ClientRequest, Target as To};

/// Most messages held per room or conversation while a gap is filled;
/// past it, later messages are left for the fill to read from storage.
pub(crate) const HOLD: usize = 1024;

/// Messages per gap-filling read.
pub(crate) const FILL_PAGE: u32 = 200;

/// How far before the previous check a periodic check looks for active
/// conversations: a message's `ts` comes from the clock of the node that
/// sent it, which may be behind this one's, and it commits a little later.
const ACTIVE_SLACK_MS: u64 = 60_000;

/// Every this many periodic checks reads every conversation of the served
/// users, not only the active ones: a message that committed later than
/// the slack allows (storage stalled for longer) is found within a minute.
const FULL_CHECK_EVERY: u64 = 20;

/// A message waiting for its turn, and the session that sent it when it was
/// sent here (that session gets the `ok`, not an echo).
#[derive(Debug)]
pub(crate) struct Arrival {
    pub(crate) message: BusMessage,
    pub(crate) origin: Option<SessionId>,
}

/// What a stream has beyond `last`.
#[derive(Debug, Default)]
struct Stream {
    held: BTreeMap<u64, Arrival>,
    /// The newest `seq` known to be stored.
    want: u64,
    filling: bool,
}

/// What a user's sessions here make the node subscribe to.
#[derive(Debug)]
struct Served {
    key: UserKey,
    rooms: Vec<String>,
}

/// The hub's cluster state; empty and unused on a single node.
#[derive(Debug, Default)]
pub(crate) struct ClusterState {
    up: bool,
    /// By user name.
    served: HashMap<String, Served>,
    /// The principals of `served`.
    keys: HashSet<UserKey>,
    /// Room → users here who are members and have a session.
    room_refs: HashMap<String, usize>,
    /// Served principals whose conversations' `last` is not known yet.
    baseline: HashSet<UserKey>,
    /// Newest `seq` delivered per conversation of a served principal.
    conversations: HashMap<StreamKey, u64>,
    streams: HashMap<StreamKey, Stream>,
    /// Private messages of conversations whose `last` is not known yet.
    waiting: Vec<Arrival>,
    next_check: Option<Instant>,
    /// The wall clock of the last periodic check, and how many there were.
    checked_ms: Option<u64>,
    checks: u64,
    pub(crate) out: VecDeque<BusCommand>,
}

impl ClusterState {
    pub(crate) fn next_check(&self) -> Option<Instant> {
        self.next_check
    }
}

/// The hub's own "session" for storage reads nobody asked for.
const HUB_SID: SessionId = SessionId::HUB;

impl Hub {
    pub(super) fn handle_bus(&mut self, now: Now, event: BusEvent) {
        if !self.config.cluster {
            return;
        }
        match event {
            BusEvent::Message(BusMessage::Node { node, n, news }) => self.node_news(now, node, n, news),
            BusEvent::Message(BusMessage::Relayed { node, event }) => self.relayed(node, event),
            BusEvent::Message(message) => {
                Metrics::add(&self.metrics.bus_received, 1);
                self.arrive(now, Arrival { message, origin: None });
            }
            BusEvent::Up => {
                self.cluster.up = true;
                self.metrics.bus_up.store(1, std::sync::atomic::Ordering::Relaxed);
                self.check_all(now, true);
                self.nodes_up(now);
                self.check_tokens(now);
                // Joins and leaves relayed while the link was down are lost:
                // the members of every room served here are read again.
                let rooms: Vec<String> = self.cluster.room_refs.keys().cloned().collect();
                self.read_members(now, &rooms);
            }
            BusEvent::Down => {
                self.cluster.up = false;
                self.metrics.bus_up.store(0, std::sync::atomic::Ordering::Relaxed);
                self.nodes_down();
            }
        }
    }

    /// A message this node stored: published, then sequenced as any other.
    pub(super) fn stored_here(&mut self, now: Now, message: BusMessage, origin: SessionId) {
        let bytes = message.encode();
        for topic in message.topics() {
            Metrics::add(&self.metrics.bus_published, 1);
            self.cluster.out.push_back(BusCommand::Publish { topic, bytes: bytes.clone() });
        }
        self.arrive(now, Arrival { message, origin: Some(origin) });
    }

    /// The newest `seq` delivered on `key`; `None` while a conversation's
    /// is being learnt, or no one here takes part in it.
    fn last(&self, key: &StreamKey) -> Option<u64> {
        match key {
            StreamKey::Room(room) => Some(self.state.room_seq(room)),
            StreamKey::Conversation(a, b) => {
                if let Some(&last) = self.cluster.conversations.get(key) {
                    return Some(last);
                }
                let served = |k: &String| self.cluster.keys.contains(k);
                let learning = self.cluster.baseline.contains(a) || self.cluster.baseline.contains(b);
                (!learning && (served(a) || served(b))).then_some(0)
            }
        }
    }

    fn set_last(&mut self, key: &StreamKey, seq: u64) {
        match key {
            StreamKey::Room(room) => self.state.rooms.entry(room.clone()).or_default().seq = seq,
            StreamKey::Conversation(..) => {
                self.cluster.conversations.insert(key.clone(), seq);
            }
        }
    }

    /// One message into the sequencer (see the module docs).
    fn arrive(&mut self, now: Now, arrival: Arrival) {
        let Some(key) = StreamKey::of(&arrival.message) else { return };
        let seq = arrival.message.seq();
        let Some(last) = self.last(&key) else {
            if matches!(key, StreamKey::Conversation(..)) && self.cluster.waiting.len() < HOLD {
                self.cluster.waiting.push(arrival);
            }
            return;
        };
        if seq <= last {
            return Metrics::add(&self.metrics.bus_duplicates, 1);
        }
        let idle = self.cluster.streams.get(&key).is_none_or(|s| s.held.is_empty() && !s.filling);
        if seq == last + 1 && idle {
            self.set_last(&key, seq);
            return self.deliver_arrival(arrival);
        }
        let stream = self.cluster.streams.entry(key.clone()).or_default();
        stream.want = stream.want.max(seq);
        if stream.held.len() < HOLD {
            stream.held.insert(seq, arrival);
        } else {
            Metrics::add(&self.metrics.bus_held_overflow, 1);
        }
        self.drain(now, &key);
    }

    /// Delivers what is next on `key`, and reads storage for a gap.
    fn drain(&mut self, now: Now, key: &StreamKey) {
        let Some(mut last) = self.last(key) else { return };
        loop {
            let Some(stream) = self.cluster.streams.get_mut(key) else { return };
            if stream.filling {
                return;
            }
            let Some(entry) = stream.held.first_entry() else { break };
            let seq = *entry.key();
            if seq > last + 1 {
                break;
            }
            let arrival = entry.remove();
            if seq <= last {
                Metrics::add(&self.metrics.bus_duplicates, 1);
                continue;
            }
            last = seq;
            self.set_last(key, seq);
            self.deliver_arrival(arrival);
        }
        let Some(stream) = self.cluster.streams.get(key) else { return };
        if stream.want > last {
            Metrics::add(&self.metrics.bus_gaps, 1);
            self.start_fill(now, key, last);
        } else if stream.held.is_empty() {
            self.cluster.streams.remove(key);
        }
    }

    /// Reads `(last, last + FILL_PAGE]` of `key`. `Before` with a bound
    /// reads that window oldest first; `After` would take the newest page
    /// and skip the oldest of a long gap.
    fn start_fill(&mut self, now: Now, key: &StreamKey, last: u64) {
        let Some(stream) = self.cluster.streams.get_mut(key) else { return };
        stream.filling = true;
        let covers = stream.want;
        let range = SeqRange::Before { before: Some(last + 1 + u64::from(FILL_PAGE)), limit: FILL_PAGE };
        Metrics::add(&self.metrics.bus_fill_reads, 1);
        let op = StoreOp::History { target: key.target(), range };
        self.store(now, op, Pending::untagged(HUB_SID, PendingKind::Fill { key: key.clone(), after: last, covers }));
    }

    /// A fill read came back: its messages go out in order, held ones in
    /// their place. A short page means storage holds nothing more up to the
    /// page's end (or `covers`, all stored before the read): a range it no
    /// longer holds (retention) is passed over rather than waited for.
    pub(super) fn complete_fill(
        &mut self,
        now: Now,
        key: StreamKey,
        after: u64,
        covers: u64,
        result: Result<StoreValue, StoreError>,
    ) {
        let Some(stream) = self.cluster.streams.get_mut(&key) else { return };
        stream.filling = false;
        // A failed read is tried again at the next check, not at once.
        let Ok(StoreValue::Messages { messages, .. }) = result else { return };
        let full = messages.len() == FILL_PAGE as usize;
        let Some(mut last) = self.last(&key) else { return };
        for m in messages {
            if m.seq <= last {
                continue;
            }
            last = m.seq;
            self.set_last(&key, m.seq);
            let held = self.cluster.streams.get_mut(&key).and_then(|s| s.held.remove(&m.seq));
            let arrival = held.unwrap_or_else(|| {
                Metrics::add(&self.metrics.bus_filled, 1);
                Arrival { message: bus_message(&key, m), origin: None }
            });
            self.deliver_arrival(arrival);
        }
        if !full {
            let end = (after + u64::from(FILL_PAGE)).min(covers);
            if end > last {
                self.set_last(&key, end);
            }
        }
        self.drain(now, &key);
    }

    /// A fill's deadline passed: the next check tries again.
    pub(super) fn fill_expired(&mut self, key: &StreamKey) {
        if let Some(stream) = self.cluster.streams.get_mut(key) {
            stream.filling = false;
        }
    }

    fn deliver_arrival(&mut self, arrival: Arrival) {
        match arrival.message {
            BusMessage::Room { room, message } => {
                self.deliver_to_room(&room, None, true, &room_message(&room, &message));
            }
            BusMessage::Private { to_key, message } => self.fan_out_private(arrival.origin, &to_key, &message),
            BusMessage::Node { .. } => {}
            // Never sequenced: `handle_bus` hands them to `hub/relay.rs`.
            BusMessage::Relayed { .. } => {}
        }
    }

    // ---- checks -----------------------------------------------------------

    /// Asks storage for the newest `seq` of everything served: every room,
    /// and the served users' conversations, all of them when `full`, else
    /// those active since shortly before the previous check.
    fn check_all(&mut self, now: Now, full: bool) {
        self.cluster.next_check = Some(now.instant + self.config.cluster_check);
        self.cluster.checks += 1;
        // A principal still learning its conversations needs all of them.
        let full = full || !self.cluster.baseline.is_empty() || self.cluster.checks.is_multiple_of(FULL_CHECK_EVERY);
        let since = self.cluster.checked_ms.replace(now.unix_ms);
        let active_since = since.filter(|_| !full).map(|ms| ms.saturating_sub(ACTIVE_SLACK_MS));
        let rooms: Vec<String> = self.cluster.room_refs.keys().cloned().collect();
        let users: Vec<UserKey> = self.cluster.keys.iter().cloned().collect();
        if !rooms.is_empty() || !users.is_empty() {
            self.check(now, rooms, users, active_since);
        }
    }

    fn check(&mut self, now: Now, rooms: Vec<String>, users: Vec<UserKey>, active_since: Option<u64>) {
        Metrics::add(&self.metrics.bus_checks, 1);
        let op = StoreOp::LastSeqs { rooms, users: users.clone(), active_since };
        self.store(now, op, Pending::untagged(HUB_SID, PendingKind::Check { users }));
    }

    /// The periodic check, and fills a failed read left undone.
    pub(super) fn cluster_timeout(&mut self, now: Now) {
        if !self.config.cluster || self.cluster.next_check.is_none_or(|t| t > now.instant) {
            return;
        }
        self.check_all(now, false);
        self.recheck_fresh_sessions(now);
        let stalled: Vec<StreamKey> =
            self.cluster.streams.iter().filter(|(_, s)| !s.filling).map(|(k, _)| k.clone()).collect();
        for key in stalled {
            self.drain(now, &key);
        }
    }

    /// The newest `seq`s: what is behind becomes a gap to fill, and the
    /// conversations of principals just served learn where they stand.
    pub(super) fn complete_check(&mut self, now: Now, users: Vec<UserKey>, result: Result<StoreValue, StoreError>) {
        let Ok(StoreValue::LastSeqs { rooms, conversations }) = result else { return };
        let learnt: HashSet<UserKey> = users.into_iter().filter(|u| self.cluster.baseline.contains(u)).collect();
        let mut behind = Vec::new();
        for (room, seq) in rooms {
            if self.cluster.room_refs.contains_key(&room) {
                behind.push((StreamKey::Room(room), seq));
            }
        }
        for (a, b, seq) in conversations {
            let key = conversation(&a, &b);
            // Known here, explicitly or (at 0) through a principal whose
            // conversations this node learnt earlier.
            let tracked = |k: &String| self.cluster.keys.contains(k) && !self.cluster.baseline.contains(k);
            let known = self.cluster.conversations.contains_key(&key) || tracked(&a) || tracked(&b);
            if !known && (learnt.contains(&a) || learnt.contains(&b)) {
                // Where this node starts: anything still waiting here was
                // stored after the read began, or is delivered from it.
                let first_waiting = self.waiting_min(&key).map_or(seq, |w| w - 1);
                self.cluster.conversations.insert(key, seq.min(first_waiting));
            } else {
                // Known, or begun since this node learnt its principals
                // (then every message of it is new here).
                behind.push((key, seq));
            }
        }
        for user in &learnt {
            self.cluster.baseline.remove(user);
        }
        for (key, seq) in behind {
            if self.last(&key).is_some_and(|last| seq > last) {
                let stream = self.cluster.streams.entry(key.clone()).or_default();
                stream.want = stream.want.max(seq);
                self.drain(now, &key);
            }
        }
        for arrival in std::mem::take(&mut self.cluster.waiting) {
            self.arrive(now, arrival);
        }
    }

    fn waiting_min(&self, key: &StreamKey) -> Option<u64> {
        self.cluster
            .waiting
            .iter()
            .filter(|a| StreamKey::of(&a.message).as_ref() == Some(key))
            .map(|a| a.message.seq())
            .min()
    }

    // ---- subscriptions ------------------------------------------------------

    /// Storage says `room` is at `seq`: if no session here is in the room,
    /// nobody here has been told an older `seq` nor waits for the ones in
    /// between, so the room starts there.
    pub(super) fn catch_up_unserved(&mut self, room: &str, seq: u64) {
        if !self.cluster.room_refs.contains_key(room) && self.state.room_seq(room) < seq {
            self.set_last(&StreamKey::Room(room.to_string()), seq);
        }
    }

    /// Brings the subscriptions in line with the users touched since the
    /// last input: a room's topic while a member has a session here, a
    /// principal's while it has one.
    pub(super) fn sync_subscriptions(&mut self, now: Now) {
        let mut touched = self.state.take_touched();
        touched.sort();
        touched.dedup();
        let (mut new_rooms, mut new_users) = (Vec::new(), Vec::new());
        for user in touched {
            let wanted = self
                .state
                .online
                .get(user.as_str())
                .filter(|o| !o.sessions.is_empty())
                .map(|o| Served { key: o.key.to_string(), rooms: self.state.rooms_of(&user) });
            let had = self.cluster.served.remove(&user);
            let old_rooms = had.as_ref().map_or(&[][..], |s| &s.rooms[..]);
            let new = wanted.as_ref().map_or(&[][..], |s| &s.rooms[..]);
            for room in old_rooms.iter().filter(|r| !new.contains(r)) {
                self.unref_room(room);
            }
            for room in new.iter().filter(|r| !old_rooms.contains(r)) {
                let refs = self.cluster.room_refs.entry(room.clone()).or_default();
                *refs += 1;
                if *refs == 1 {
                    self.cluster.out.push_back(BusCommand::Subscribe(BusTopic::Room(room.clone())));
                    new_rooms.push(room.clone());
                }
            }
            let (old_key, new_key) = (had.map(|s| s.key), wanted.as_ref().map(|s| s.key.clone()));
            if old_key != new_key {
                if let Some(key) = old_key {
                    self.unserve_user(&key);
                }
                if let Some(key) = new_key {
                    self.cluster.out.push_back(BusCommand::Subscribe(BusTopic::User(key.clone())));
                    self.cluster.baseline.insert(key.clone());
                    self.cluster.keys.insert(key.clone());
                    new_users.push(key);
                }
            }
            if let Some(served) = wanted {
                self.cluster.served.insert(user, served);
            }
        }
        self.read_members(now, &new_rooms);
        if !new_rooms.is_empty() || !new_users.is_empty() {
            self.cluster.next_check.get_or_insert(now.instant + self.config.cluster_check);
            self.check(now, new_rooms, new_users, None);
        }
    }

    /// Whether a member session here makes this node serve `room`.
    pub(super) fn serves_room(&self, room: &str) -> bool {
        self.cluster.room_refs.contains_key(room)
    }

    fn unref_room(&mut self, room: &str) {
        let Some(refs) = self.cluster.room_refs.get_mut(room) else { return };
        *refs -= 1;
        if *refs == 0 {
            self.cluster.room_refs.remove(room);
            self.cluster.streams.remove(&StreamKey::Room(room.to_string()));
            self.cluster.out.push_back(BusCommand::Unsubscribe(BusTopic::Room(room.to_string())));
        }
    }

    /// `key` has no session here any more: its conversations are forgotten
    /// unless the other side still has one.
    fn unserve_user(&mut self, key: &str) {
        self.cluster.out.push_back(BusCommand::Unsubscribe(BusTopic::User(key.to_string())));
        self.cluster.baseline.remove(key);
        self.cluster.keys.remove(key);
        let served = &self.cluster.keys;
        let gone = |k: &StreamKey| match k {
            StreamKey::Conversation(a, b) => (a == key || b == key) && !served.contains(a) && !served.contains(b),
            StreamKey::Room(_) => false,
        };
        self.cluster.conversations.retain(|k, _| !gone(k));
        self.cluster.streams.retain(|k, _| !gone(k));
    }
}

fn bus_message(key: &StreamKey, message: StoredMessage) -> BusMessage {
    match key {
        StreamKey::Room(room) => BusMessage::Room { room: room.clone(), message },
        StreamKey::Conversation(a, b) => {
            let to_key = if message.sender == *a { b.clone() } else { a.clone() };
            BusMessage::Private { to_key, message }
        }
    }
}

impl Hub {
    /// In a cluster, the user a request names that this node does not know:
    /// another node may have registered it since this one loaded its users.
    pub(super) fn unknown_user(&self, request: &ClientRequest) -> Option<String> {
        if !self.config.cluster {
            return None;
        }
        let name = match request {
            ClientRequest::Send { to: To::User(name), .. }
            | ClientRequest::History { of: To::User(name), .. }
            | ClientRequest::Read { of: To::User(name), .. }
            | ClientRequest::Typing { to: To::User(name) }
            | ClientRequest::Ack { with: name, .. } => name,
            _ => return None,
        };
        (is_valid_name(name) && self.state.key_of(name).is_none()).then(|| name.clone())
    }

    /// Asks storage for `name` before running `request`.
    pub(super) fn find_user(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        user: String,
        name: String,
        request: ClientRequest,
    ) {
        let op = StoreOp::FindUser { name };
        self.store(now, op, Pending::request(sid, tag, PendingKind::FindUser { user, request }));
    }

    /// Learns the user storage found (if any) and runs the request: it then
    /// reaches that user, or answers `no_such_user` as on one node.
    pub(super) fn complete_find_user(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        user: String,
        request: ClientRequest,
        result: Result<StoreValue, StoreError>,
    ) {
        match result {
            Ok(StoreValue::FoundUser(found)) => {
                if let Some(name) = found {
                    self.state.register(name);
                }
                if !self.state.sessions.contains_key(&sid) {
                    return;
                }
                let request = self.state.resolve_names(request);
                self.chat(now, sid, tag, user, request);
            }
            _ => self.reply(sid, tag, Err(unavailable())),
        }
    }
}

impl Hub {
    /// In a cluster, whether a login names a user this node does not know
    /// (another node may have registered it, in another case).
    pub(super) fn login_name_unknown(&self, name: &str) -> bool {
        self.config.cluster && is_valid_name(name) && self.state.resolve(name).is_none()
    }

    /// Asks storage how `name` was registered before logging in with it.
    pub(super) fn find_login(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Option<Tag>,
        peer: std::net::IpAddr,
        name: String,
        password: String,
    ) {
        let op = StoreOp::FindUser { name: name.clone() };
        let kind = PendingKind::FindLogin { name, password, peer };
        let pending = match tag {
            Some(tag) => Pending::request(sid, tag, kind),
            None => Pending::untagged(sid, kind),
        };
        self.store(now, op, pending);
    }

    /// Logs in under the registered spelling storage found; a name nobody
    /// registered goes on as typed, and storage refuses it as on one node.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete_find_login(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Option<Tag>,
        name: String,
        password: String,
        peer: std::net::IpAddr,
        result: Result<StoreValue, StoreError>,
    ) {
        let found = match result {
            Ok(StoreValue::FoundUser(found)) => found,
            _ => {
                return match tag {
                    Some(tag) => self.reply(sid, tag, Err(unavailable())),
                    None => self.api_unavailable(sid),
                }
            }
        };
        if let Some(registered) = &found {
            self.state.register(registered.clone());
        }
        let name = found.unwrap_or(name);
        match tag {
            Some(tag) if self.state.sessions.contains_key(&sid) => {
                self.line_login_as(now, sid, tag, peer, name, password)
            }
            Some(_) => {}
            None => self.api_login(now, sid, peer, name, password),
        }
    }
}
