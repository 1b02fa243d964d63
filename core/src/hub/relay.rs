//! What happens on one node of a cluster that members on the others see:
//! a join or a leave, `typing`, a revoked token. Each is published as a
//! [`Relayed`] event on the topics the nodes already subscribe to for their
//! sessions (`hub/cluster.rs`): a room's reaches every node with a member
//! session of the room, a user's every node with a session of the user.
//!
//! Relayed events are not stored and carry no `seq`: a receiving node
//! applies each idempotently (a repeat changes nothing, so it sends nothing)
//! and skips its own. What a lost one leaves wrong:
//! - a membership: the user's sessions on the node that missed it follow
//!   storage again at their next `welcome` (or at the recheck below); the
//!   room's members on it are read from storage when the node starts
//!   serving the room (before a local `join`, so its `ok` counts them), and
//!   nothing repairs them while it serves it;
//! - `typing`: nothing; it is a hint that expires anyway;
//! - a revocation: after every [`crate::bus::BusEvent::Up`] (the link was
//!   down: events may be lost), storage is asked which tokens this node's
//!   sessions were opened with are still live, and the others' sessions
//!   close as on the node that revoked them.
//!
//! A subscription takes effect a moment after the session that asked for
//! it was welcomed (the host's subscriber applies changes between reads),
//! and what is published meanwhile does not reach it. So each registered
//! session welcomed here is looked at once more, at the first periodic
//! check at least `Config::cluster_check` after its welcome: its token is
//! asked about (`StoreOp::LiveTokens`) and its user's rooms are read again
//! (`StoreOp::ReadMarks`); a join or leave it missed is then applied as if
//! relayed, `presence` included.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use super::pending::{Pending, PendingKind};
use super::state::{Name, Phase};
use super::Hub;
use crate::bus::{BusCommand, BusMessage, Relayed};
use crate::ids::{is_valid_name, SessionId};
use crate::link::{HubClose, ToShardInner};
use crate::metrics::Metrics;
use crate::render::event::{presence, typing_in_room, typing_to_user};
use crate::render::Presence;
use crate::store::{
    is_guest_key, token_hash, StoreError, StoreOp, StoreValue, UserKey, LIVE_TOKENS_PAGE, ROOM_MEMBERS_PAGE,
};
use crate::time::Now;

/// What relaying needs to remember, in the hub's cluster state.
#[derive(Debug, Default)]
pub(crate) struct RelayState {
    /// Rooms whose members are being read from storage
    /// (`StoreOp::RoomMembers`): how many reads each, and the users a
    /// relayed event named since the first began. The bus is not ordered
    /// with this node's storage queue, so such an event may be newer than
    /// the read, and the read does not undo it.
    members_reads: HashMap<String, (u32, HashSet<String>)>,
    /// Registered sessions welcomed lately, with when, oldest first: their
    /// user's subscription may not have been in effect yet when an event
    /// was published (see the module docs).
    fresh: VecDeque<(Instant, SessionId)>,
    /// Users whose rooms are being read again: how many reads each, and the
    /// rooms a relayed event named since the first began (as for
    /// `members_reads`).
    rooms_reads: HashMap<String, (u32, HashSet<String>)>,
    /// Tokens whose `LiveTokens` read failed: asked again at the next
    /// periodic check (a lost revocation would otherwise wait for the next
    /// reconnection).
    tokens_again: Vec<String>,
}

impl Hub {
    /// Publishes `event` on its topics; nothing on a single node.
    pub(super) fn relay(&mut self, event: Relayed) {
        if !self.config.cluster {
            return;
        }
        let message = BusMessage::Relayed { node: self.config.node, event };
        let bytes = message.encode();
        for topic in message.topics() {
            Metrics::add(&self.metrics.bus_relayed_sent, 1);
            self.cluster.out.push_back(BusCommand::Publish { topic, bytes: bytes.clone() });
        }
    }

    /// `user` (principal `key`) joined or left `room` here.
    pub(super) fn relay_member(&mut self, room: &str, user: &str, key: UserKey, joined: bool) {
        let room_seq = if joined { self.state.room_seq(room) } else { 0 };
        self.relay(Relayed::Member { room: room.to_string(), user: user.to_string(), key, joined, room_seq });
        self.announce_guest_rooms(user);
    }

    /// An event another node relayed (this node's own come back too, on
    /// the topics it subscribes to: those are skipped).
    pub(super) fn relayed(&mut self, node: u64, event: Relayed) {
        if node == self.config.node {
            return;
        }
        Metrics::add(&self.metrics.bus_relayed_received, 1);
        match event {
            Relayed::Member { room, user, key, joined, room_seq } => {
                if joined {
                    self.catch_up_unserved(&room, room_seq);
                }
                self.relayed_member(&room, &user, &key, joined);
            }
            Relayed::TypingInRoom { room, from } => {
                self.deliver_to_room(&room, None, false, &typing_in_room(&room, &from));
            }
            Relayed::TypingToUser { from, to, to_key } => {
                if self.state.online.get(to.as_str()).is_some_and(|o| o.key == to_key) {
                    let targets = self.sessions_of(&to);
                    self.deliver(&targets, &typing_to_user(&from, &to));
                }
            }
            Relayed::Revoked { user, token_hash: hash } => {
                self.close_token_sessions(&user, |token| token_hash(token) == hash);
            }
        }
    }

    /// Applies a membership another node stored (or, for a guest, made):
    /// the room's sessions here hear `presence` exactly as for a local one,
    /// the user's sessions here are in the room from now on (or no longer),
    /// and the subscriptions follow (`State::touch`).
    pub(super) fn relayed_member(&mut self, room: &str, user: &str, key: &str, joined: bool) {
        if !is_valid_name(room) || !is_valid_name(user) {
            return;
        }
        // Another principal under the same name here (a guest's name taken
        // on two nodes) is someone else.
        if self.state.online.get(user).is_some_and(|o| o.key != key) {
            return;
        }
        if !is_guest_key(key) && !self.state.is_registered(user) {
            // Registered on another node since this one loaded its users.
            self.state.register(user.to_string());
        }
        if let Some((_, news)) = self.relay.members_reads.get_mut(room) {
            news.insert(user.to_string());
        }
        if let Some((_, news)) = self.relay.rooms_reads.get_mut(user) {
            news.insert(room.to_string());
        }
        if joined {
            if self.state.add_member(user, room) {
                self.deliver_to_room(room, None, false, &presence(room, user, Presence::Join));
                self.update_room_gauge();
            }
        } else if self.state.is_member(user, room) {
            self.remove_member_here(user, room);
        }
    }

    /// Takes `user` out of `room` here: its members hear `leave` first (the
    /// user's own sessions too), and no session of the user replays it.
    pub(super) fn remove_member_here(&mut self, user: &str, room: &str) {
        self.deliver_to_room(room, None, false, &presence(room, user, Presence::Leave));
        self.state.remove_member(user, room);
        for s in self.sessions_of(user) {
            self.state.unmark_replaying(s, room);
        }
        self.update_room_gauge();
    }

    /// Closes with 4001 every session here of `user` opened with a token
    /// `revoked` names.
    pub(super) fn close_token_sessions(&mut self, user: &str, revoked: impl Fn(&str) -> bool) {
        for s in self.sessions_of(user) {
            let same = matches!(self.state.sessions.get(&s).map(|i| &i.phase),
                Some(Phase::Welcomed { token: Some(t), .. }) if revoked(t));
            if same {
                self.push(s.shard(), ToShardInner::Close { sid: s, reason: HubClose::TokenRevoked });
            }
        }
    }

    // ---- revocations the bus lost -----------------------------------------

    /// After the link was down: asks storage which tokens this node's
    /// sessions were opened with are still live, a page at a time.
    pub(super) fn check_tokens(&mut self, now: Now) {
        let mut tokens: Vec<String> = self
            .state
            .sessions
            .values()
            .filter_map(|info| match &info.phase {
                Phase::Welcomed { token: Some(token), .. } => Some(token.to_string()),
                _ => None,
            })
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        self.ask_live_tokens(now, &tokens);
    }

    /// A registered session was welcomed here.
    pub(super) fn session_welcomed(&mut self, now: Now, sid: SessionId) {
        if self.config.cluster {
            self.relay.fresh.push_back((now.instant, sid));
        }
    }

    /// At a periodic check: the sessions welcomed at least `cluster_check`
    /// ago and not looked at since have their token asked about and their
    /// user's rooms read again; tokens whose read failed are asked again.
    pub(super) fn recheck_fresh_sessions(&mut self, now: Now) {
        let (mut tokens, mut users) = (std::mem::take(&mut self.relay.tokens_again), Vec::new());
        while let Some(&(at, sid)) = self.relay.fresh.front() {
            if at + self.config.cluster_check > now.instant {
                break;
            }
            self.relay.fresh.pop_front();
            if let Some(Phase::Welcomed { user, token }) = self.state.sessions.get(&sid).map(|i| &i.phase) {
                tokens.extend(token.as_deref().map(str::to_string));
                users.push(user.to_string());
            }
        }
        tokens.sort_unstable();
        tokens.dedup();
        self.ask_live_tokens(now, &tokens);
        users.sort_unstable();
        users.dedup();
        for user in users {
            self.relay.rooms_reads.entry(user.clone()).or_default().0 += 1;
            let op = StoreOp::ReadMarks { user: user.clone() };
            self.store(now, op, Pending::untagged(SessionId::HUB, PendingKind::UserRooms { user }));
        }
    }

    /// A user's rooms as storage holds them: a join or a leave this node
    /// missed is applied now as if relayed, except in rooms a relayed event
    /// named while the read ran.
    pub(super) fn complete_user_rooms(&mut self, user: String, result: Result<StoreValue, StoreError>) {
        let news = match self.relay.rooms_reads.get_mut(&user) {
            Some((reads, rooms)) if *reads > 1 => {
                *reads -= 1;
                rooms.clone()
            }
            Some(_) => self.relay.rooms_reads.remove(&user).map(|(_, r)| r).unwrap_or_default(),
            None => HashSet::new(),
        };
        let Ok(StoreValue::ReadMarks { marks }) = result else { return };
        if self.state.online.get(user.as_str()).is_none_or(|o| o.guest) {
            return;
        }
        let stored: HashSet<String> = marks
            .into_iter()
            .map(|(room, _, seq)| {
                self.catch_up_unserved(&room, seq);
                room
            })
            .collect();
        let here: Vec<String> = self.state.rooms_of(&user);
        for room in here.iter().filter(|r| !stored.contains(*r) && !news.contains(*r)) {
            self.relayed_member(room, &user, &user, false);
        }
        for room in stored.iter().filter(|r| !here.contains(*r) && !news.contains(*r)) {
            self.relayed_member(room, &user, &user, true);
        }
    }

    fn ask_live_tokens(&mut self, now: Now, tokens: &[String]) {
        for page in tokens.chunks(LIVE_TOKENS_PAGE) {
            Metrics::add(&self.metrics.bus_token_checks, 1);
            let op = StoreOp::LiveTokens { tokens: page.to_vec() };
            self.store(now, op, Pending::untagged(SessionId::HUB, PendingKind::LiveTokens { tokens: page.to_vec() }));
        }
    }

    /// Closes the sessions of the tokens asked that are no longer live. A
    /// failed read closes nothing: the next periodic check asks again.
    pub(super) fn complete_live_tokens(&mut self, asked: Vec<String>, result: Result<StoreValue, StoreError>) {
        let Ok(StoreValue::LiveTokens { tokens: live }) = result else {
            return self.relay.tokens_again.extend(asked);
        };
        let live: HashSet<String> = live.into_iter().collect();
        let dead: HashSet<String> = asked.into_iter().filter(|t| !live.contains(t)).collect();
        if dead.is_empty() {
            return;
        }
        let closing: Vec<_> = self
            .state
            .sessions
            .iter()
            .filter(|(_, info)| matches!(&info.phase, Phase::Welcomed { token: Some(t), .. } if dead.contains(&**t)))
            .map(|(sid, _)| *sid)
            .collect();
        for sid in closing {
            self.push(sid.shard(), ToShardInner::Close { sid, reason: HubClose::TokenRevoked });
        }
    }
}

impl Hub {
    /// This node starts serving `rooms` (a first member session here): who
    /// joined or left them on other nodes while it did not is read from
    /// storage, a page of rooms at a time.
    pub(super) fn read_members(&mut self, now: Now, rooms: &[String]) {
        for page in rooms.chunks(ROOM_MEMBERS_PAGE) {
            for room in page {
                self.relay.members_reads.entry(room.clone()).or_default().0 += 1;
            }
            let op = StoreOp::RoomMembers { rooms: page.to_vec() };
            self.store(now, op, Pending::untagged(SessionId::HUB, PendingKind::RoomMembers { rooms: page.to_vec() }));
        }
    }

    /// A guest's `join` of a room this node does not serve yet: the room's
    /// members are read first, so the `ok` counts those who joined
    /// elsewhere (a registered user's `join` reads them before its own is
    /// stored, in the same queue).
    pub(super) fn read_members_then_join(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: crate::link::Tag,
        user: String,
        room: String,
        since: Option<u64>,
    ) {
        self.relay.members_reads.entry(room.clone()).or_default().0 += 1;
        let op = StoreOp::RoomMembers { rooms: vec![room.clone()] };
        self.store(now, op, Pending::request(sid, tag, PendingKind::GuestJoin { user, room, since }));
    }

    /// The registered members storage holds become this node's, quietly
    /// (they joined or left earlier, elsewhere: no `presence` now), except
    /// the users a relayed event named while the read ran. Guests are not
    /// stored and stay as they are.
    pub(super) fn complete_room_members(&mut self, asked: Vec<String>, result: Result<StoreValue, StoreError>) {
        let mut news = HashMap::new();
        for room in asked {
            let Some((reads, users)) = self.relay.members_reads.get_mut(&room) else { continue };
            *reads -= 1;
            let users = if *reads == 0 {
                self.relay.members_reads.remove(&room).map(|(_, u)| u).unwrap_or_default()
            } else {
                users.clone()
            };
            news.insert(room, users);
        }
        let Ok(StoreValue::RoomMembers { rooms }) = result else { return };
        for (room, seq, stored) in rooms {
            self.catch_up_unserved(&room, seq);
            let skip = news.remove(&room).unwrap_or_default();
            self.adopt_room_members(&room, &stored, &skip);
        }
        self.update_room_gauge();
    }

    fn adopt_room_members(&mut self, room: &str, stored: &[String], skip: &HashSet<String>) {
        let here: Vec<String> =
            self.state.rooms.get(room).map(|r| r.members.iter().map(Name::to_string).collect()).unwrap_or_default();
        let stored_set: HashSet<&str> = stored.iter().map(String::as_str).collect();
        for user in here.iter().filter(|u| !skip.contains(*u)) {
            if self.state.is_registered(user) && !stored_set.contains(user.as_str()) {
                self.state.remove_member(user, room);
            }
        }
        for user in stored.iter().filter(|u| !skip.contains(*u) && is_valid_name(u)) {
            if self.state.online.get(user.as_str()).is_some_and(|o| o.guest) {
                continue;
            }
            if !self.state.is_registered(user) {
                self.state.register(user.clone());
            }
            self.state.add_member(user, room);
        }
    }
}
