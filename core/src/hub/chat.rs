//! Chat requests of welcomed sessions, and the storage completions that
//! finish them.

use super::pending::{Pending, PendingKind};
use super::state::{display_name, InboxRead};
use super::{unavailable, Encoded, Hub};
use crate::ids::{is_valid_name, SessionId};
use crate::link::Tag;
use crate::metrics::Metrics;
use crate::render::event::{presence, private_message, read_mark, room_message, typing_in_room, typing_to_user};
use crate::render::{ErrorCode, Failure, Presence, Recovery, Reply};
use crate::session::rate::RateLimit;
use crate::store::{
    is_guest_key, InboxBound, InboxLimit, InboxMessage, NewMessage, SeqRange, StoreError, StoreOp, StoreValue,
    StoredMessage, Target,
};
use crate::time::Now;
use crate::transport::request::{ClientRequest, Target as To};

/// Most messages one `since` replay sends; past it the newest are sent and
/// `recovered` is `false`, so the client fills the rest with `history`.
const REPLAY_LIMIT: u32 = 1000;

fn limit(given: Option<u64>, default: u64, max: u64) -> u32 {
    given.unwrap_or(default).min(max) as u32
}

fn not_member(room: &str) -> Failure {
    Failure::new(ErrorCode::NotMember, format!("you are not a member of {room}"))
}

fn bad_room() -> Failure {
    Failure::new(ErrorCode::BadName, "room names have 1 to 32 of A-Z a-z 0-9 _ - .")
}

fn inbox_full(to_key: &str, limit: InboxLimit) -> Failure {
    let to = display_name(to_key);
    let message = match limit {
        InboxLimit::PerSender => format!("{to} has too many unread messages from you; wait until they read them"),
        InboxLimit::PerRecipient => format!("{to} has too many unread messages; try again later"),
    };
    Failure::new(ErrorCode::InboxFull, message)
}

fn no_such_user(user: &str) -> Failure {
    Failure::new(ErrorCode::NoSuchUser, format!("no user {user} is registered or online"))
}

/// Who asked: the session, the tag its answer carries, and its user.
struct Asker {
    sid: SessionId,
    tag: Tag,
    user: String,
    /// The user's principal: its name, or a guest's name with its `#` suffix.
    key: String,
    guest: bool,
}

impl Hub {
    /// One request of a welcomed session: the rate of queries, then the
    /// request's own handler, which answers it now or once storage has.
    pub(super) fn chat(&mut self, now: Now, sid: SessionId, tag: Tag, user: String, request: ClientRequest) {
        if is_query(&request) && !self.query_allowed(now, sid) {
            let rate = self.config.query_rate;
            let f = Failure::new(ErrorCode::RateLimited, format!("at most {rate} listings and history reads a second"));
            return self.reply(sid, tag, Err(f));
        }
        let me = self.asker(sid, tag, user);
        match request {
            ClientRequest::Hello { .. } => {
                let f = Failure::new(ErrorCode::AlreadyAuthenticated, "this session has said hello already");
                self.answer(me, Err(f))
            }
            ClientRequest::Ping => self.answer(me, Ok(Reply::Pong)),
            ClientRequest::Join { room, since } => self.join(now, me, room, since),
            ClientRequest::Leave { room } => self.leave(now, me, room),
            ClientRequest::Send { to, text, id } => self.send(now, me, to, text, id),
            ClientRequest::History { of, before, limit } => self.history(now, me, of, before, limit),
            ClientRequest::Who { room, limit } => self.who(me, room, limit),
            ClientRequest::Rooms { limit } => self.rooms(me, limit),
            ClientRequest::Conversations { limit } => self.conversations(now, me, limit),
            ClientRequest::Read { of, seq } => self.read(now, me, of, seq),
            ClientRequest::Typing { to } => self.typing(me, to),
            ClientRequest::Ack { with, seq } => self.ack(now, me, with, seq),
        }
    }

    fn asker(&self, sid: SessionId, tag: Tag, user: String) -> Asker {
        let online = self.state.online.get(user.as_str());
        let key = online.map_or_else(|| user.clone(), |o| o.key.to_string());
        let guest = online.is_some_and(|o| o.guest);
        Asker { sid, tag, user, key, guest }
    }

    fn answer(&mut self, me: Asker, result: Result<Reply, Failure>) {
        self.reply(me.sid, me.tag, result);
    }

    fn join(&mut self, now: Now, me: Asker, room: String, since: Option<u64>) {
        if !is_valid_name(&room) {
            return self.answer(me, Err(bad_room()));
        }
        if self.state.is_member(&me.user, &room) {
            return self.joined(now, me.sid, me.tag, room, since);
        }
        if self.state.room_count(&me.user) >= self.config.max_rooms {
            let max = self.config.max_rooms;
            let f = Failure::new(ErrorCode::TooManyRooms, format!("a user may be in at most {max} rooms"));
            return self.answer(me, Err(f));
        }
        if me.guest && self.config.cluster && !self.serves_room(&room) {
            return self.read_members_then_join(now, me.sid, me.tag, me.user, room, since);
        }
        if me.guest {
            return self.apply_join(now, me.sid, me.tag, &me.user, room, since);
        }
        if since.is_some() {
            // Another session of the user may make it a member before this
            // join is stored: from now on this session's live messages of
            // the room wait for its replay, which the `ok` precedes.
            self.mark_replaying(me.sid, &room);
        }
        if self.config.cluster && !self.serves_room(&room) {
            // Read before the join is stored, so the `ok` counts the
            // members who joined on other nodes while this one did not
            // serve the room, and names the room's newest `seq`.
            self.read_members(now, std::slice::from_ref(&room));
        }
        let Asker { sid, tag, user, .. } = me;
        let op = StoreOp::Join { user: user.clone(), room: room.clone() };
        self.store(now, op, Pending::request(sid, tag, PendingKind::Join { user, room, since }));
    }

    fn leave(&mut self, now: Now, me: Asker, room: String) {
        if !self.state.is_member(&me.user, &room) {
            return self.answer(me, Err(not_member(&room)));
        }
        if me.guest {
            return self.apply_leave(me.sid, me.tag, &me.user, &room);
        }
        let Asker { sid, tag, user, .. } = me;
        let op = StoreOp::Leave { user: user.clone(), room: room.clone() };
        self.store(now, op, Pending::request(sid, tag, PendingKind::Leave { user, room }));
    }

    fn send(&mut self, now: Now, me: Asker, to: To, text: String, id: Option<String>) {
        if text.len() > self.config.max_text {
            let max = self.config.max_text;
            return self.answer(me, Err(Failure::new(ErrorCode::TooLong, format!("text is limited to {max} bytes"))));
        }
        let message = NewMessage {
            sender: me.key.clone(),
            from: me.user.clone(),
            to: None,
            text,
            client_id: id,
            ts: now.unix_ms,
            inbox: None,
        };
        match to {
            To::Room(room) => self.send_to_room(now, me, room, message),
            To::User(to) => self.send_to_user(now, me, to, message),
        }
    }

    fn send_to_room(&mut self, now: Now, me: Asker, room: String, message: NewMessage) {
        if !self.state.is_member(&me.user, &room) {
            return self.answer(me, Err(not_member(&room)));
        }
        let op = StoreOp::Append { target: Target::Room(room.clone()), message: message.clone() };
        self.store(now, op, Pending::request(me.sid, me.tag, PendingKind::SendRoom { room, message }));
    }

    fn send_to_user(&mut self, now: Now, me: Asker, to: String, message: NewMessage) {
        let Some(to_key) = self.state.key_of(&to) else { return self.answer(me, Err(no_such_user(&to))) };
        if me.guest && self.config.no_guest_private && !is_guest_key(&to_key) {
            let f = Failure::new(ErrorCode::Forbidden, "guests may not message registered users here");
            return self.answer(me, Err(f));
        }
        let inbox = (!is_guest_key(&to_key)).then(|| self.inbox_bound(&to));
        let message = NewMessage { to: Some(to), inbox, ..message };
        let target = Target::Conversation(me.key, to_key.clone());
        let op = StoreOp::Append { target, message: message.clone() };
        self.store(now, op, Pending::request(me.sid, me.tag, PendingKind::SendPrivate { to_key, message }));
    }

    fn history(&mut self, now: Now, me: Asker, of: To, before: Option<u64>, given: Option<u64>) {
        let range = SeqRange::Before { before, limit: limit(given, 50, 500) };
        let (target, room) = match of {
            To::Room(room) if !self.state.is_member(&me.user, &room) => {
                return self.answer(me, Err(not_member(&room)));
            }
            To::Room(room) => (Target::Room(room.clone()), Some(room)),
            To::User(with) => match self.state.key_of(&with) {
                None => return self.answer(me, Err(no_such_user(&with))),
                Some(key) => (Target::Conversation(me.key, key), None),
            },
        };
        let op = StoreOp::History { target, range };
        self.store(now, op, Pending::request(me.sid, me.tag, PendingKind::History { room }));
    }

    fn who(&mut self, me: Asker, room: Option<String>, given: Option<u64>) {
        let max = limit(given, 100, 1000) as usize;
        let users: Vec<(String, bool)> = match &room {
            Some(room) => self.state.rooms.get(room).map_or_else(Vec::new, |r| {
                r.members.iter().take(max).map(|u| (u.to_string(), self.online_in_cluster(u))).collect()
            }),
            None => self.online_names(max).into_iter().map(|u| (u, true)).collect(),
        };
        self.answer(me, Ok(Reply::Users(users)));
    }

    fn rooms(&mut self, me: Asker, given: Option<u64>) {
        let max = limit(given, 100, 1000) as usize;
        let rooms = self.state.by_size.iter().take(max).map(|(n, name)| (name.clone(), n.0)).collect();
        self.answer(me, Ok(Reply::Rooms(rooms)));
    }

    fn conversations(&mut self, now: Now, me: Asker, given: Option<u64>) {
        let op = StoreOp::Conversations { user: me.key, limit: limit(given, 100, 1000) };
        self.store(now, op, Pending::request(me.sid, me.tag, PendingKind::Conversations));
    }

    fn read(&mut self, now: Now, me: Asker, of: To, seq: u64) {
        let (target, room, with) = match of {
            To::Room(room) if !self.state.is_member(&me.user, &room) => {
                return self.answer(me, Err(not_member(&room)));
            }
            To::Room(room) => (Target::Room(room.clone()), Some(room), None),
            To::User(with) => match self.state.key_of(&with) {
                None => return self.answer(me, Err(no_such_user(&with))),
                Some(key) => (Target::Conversation(me.key.clone(), key), None, Some(with)),
            },
        };
        let Asker { sid, tag, user, key, .. } = me;
        let op = StoreOp::Read { user: key, target, seq };
        self.store(now, op, Pending::request(sid, tag, PendingKind::Read { user, room, with, seq }));
    }

    fn typing(&mut self, me: Asker, to: To) {
        match &to {
            To::Room(room) if !self.state.is_member(&me.user, room) => {
                return self.answer(me, Err(not_member(room)));
            }
            To::Room(room) => self.deliver_to_room(room, None, false, &typing_in_room(room, &me.user)),
            To::User(to) if self.state.key_of(to).is_none() => return self.answer(me, Err(no_such_user(to))),
            To::User(to) => {
                let targets = self.sessions_of(to);
                self.deliver(&targets, &typing_to_user(&me.user, to));
            }
        }
        if self.config.cluster {
            self.relay(relayed_typing(&me.user, to, &self.state));
        }
        self.answer(me, Ok(Reply::Done));
    }

    fn ack(&mut self, now: Now, me: Asker, with: String, seq: u64) {
        let Some(key) = self.state.key_of(&with) else { return self.answer(me, Err(no_such_user(&with))) };
        let op = StoreOp::Ack { user: me.key, with: key, seq };
        self.store(now, op, Pending::request(me.sid, me.tag, PendingKind::Ack));
    }

    /// A join of a room the user is in: `ok` at once, or the replay.
    fn joined(&mut self, now: Now, sid: SessionId, tag: Tag, room: String, since: Option<u64>) {
        match since {
            Some(since) => self.start_replay(now, sid, tag, room, since),
            None => {
                let reply = Reply::Joined {
                    seq: self.state.room_seq(&room),
                    members: self.state.members(&room),
                    room,
                    recovery: None,
                };
                self.reply(sid, tag, Ok(reply));
            }
        }
    }

    fn apply_join(&mut self, now: Now, sid: SessionId, tag: Tag, user: &str, room: String, since: Option<u64>) {
        if self.state.add_member(user, &room) {
            self.deliver_to_room(&room, None, false, &presence(&room, user, Presence::Join));
            self.update_room_gauge();
            let key = self.state.key_of(user).unwrap_or_else(|| user.to_string());
            self.relay_member(&room, user, key, true);
        }
        self.joined(now, sid, tag, room, since);
    }

    /// Only a session the hub knows replays (one that closed never will).
    fn mark_replaying(&mut self, sid: SessionId, room: &str) {
        if self.state.sessions.contains_key(&sid) {
            self.state.mark_replaying(sid, room);
        }
    }

    pub(super) fn unmark_replaying(&mut self, sid: SessionId, room: &str) {
        self.state.unmark_replaying(sid, room);
    }

    fn start_replay(&mut self, now: Now, sid: SessionId, tag: Tag, room: String, since: u64) {
        self.mark_replaying(sid, &room);
        let op = StoreOp::History {
            target: Target::Room(room.clone()),
            range: SeqRange::After { after: since, limit: REPLAY_LIMIT },
        };
        self.store(now, op, Pending::request(sid, tag, PendingKind::Replay { room, since }));
    }

    fn complete_replay(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        room: String,
        since: u64,
        result: Result<StoreValue, StoreError>,
    ) {
        self.unmark_replaying(sid, &room);
        let Some(info) = self.state.sessions.get(&sid) else { return };
        let user = info.user().map(str::to_owned);
        let Ok(StoreValue::Messages { mut messages, oldest }) = result else {
            return self.reply(sid, tag, Err(unavailable()));
        };
        // The user left (from another session) while the replay was read:
        // the room's messages are no longer this session's to see.
        if !user.is_some_and(|u| self.state.is_member(&u, &room)) {
            return self.reply(sid, tag, Err(not_member(&room)));
        }
        let seq = self.state.room_seq(&room);
        messages.retain(|m| m.seq <= seq);
        // Keep the replay within half the outbound bound, newest first, so a
        // long absence cannot make the session a slow consumer.
        keep_newest_within(&mut messages, self.config.max_queue / 2);
        let recovery = recovery(seq, since, &messages, oldest);
        let members = self.state.members(&room);
        self.reply(sid, tag, Ok(Reply::Joined { room: room.clone(), seq, members, recovery: Some(recovery) }));
        for m in &messages {
            self.deliver(&[sid], &room_message(&room, m));
        }
        let top = messages.last().map_or(since, |m| m.seq.max(since));
        self.replay_rest(now, sid, room, top);
    }

    /// In a cluster, the bus is not ordered with this node's storage queue:
    /// a message another node stored after the replay's read ran can have
    /// been delivered here (and skipped for this session) before the read
    /// completed. What was delivered past the replay is read once more,
    /// the session still replaying, until the replay reaches it.
    fn replay_rest(&mut self, now: Now, sid: SessionId, room: String, top: u64) {
        if !self.config.cluster || top >= self.state.room_seq(&room) {
            return;
        }
        self.mark_replaying(sid, &room);
        let range = SeqRange::After { after: top, limit: REPLAY_LIMIT };
        let op = StoreOp::History { target: Target::Room(room.clone()), range };
        self.store(now, op, Pending::untagged(sid, PendingKind::ReplayRest { room, after: top }));
    }

    pub(super) fn complete_replay_rest(
        &mut self,
        now: Now,
        sid: SessionId,
        room: String,
        after: u64,
        result: Result<StoreValue, StoreError>,
    ) {
        self.unmark_replaying(sid, &room);
        let Ok(StoreValue::Messages { mut messages, .. }) = result else { return };
        let user = self.state.sessions.get(&sid).and_then(|i| i.user()).map(str::to_owned);
        if !user.is_some_and(|u| self.state.is_member(&u, &room)) {
            return;
        }
        let seq = self.state.room_seq(&room);
        messages.retain(|m| m.seq > after && m.seq <= seq);
        for m in &messages {
            self.deliver(&[sid], &room_message(&room, m));
        }
        let top = messages.last().map_or(after, |m| m.seq);
        if top > after {
            self.replay_rest(now, sid, room, top);
        }
    }

    fn apply_leave(&mut self, sid: SessionId, tag: Tag, user: &str, room: &str) {
        if !self.state.is_member(user, room) {
            return self.reply(sid, tag, Err(not_member(room)));
        }
        self.remove_member_here(user, room);
        let key = self.state.key_of(user).unwrap_or_else(|| user.to_string());
        self.relay_member(room, user, key, false);
        self.reply(sid, tag, Ok(Reply::Done));
    }

    /// Delivers a room message `sid` stored (in a cluster, publishes it and
    /// delivers it in its turn); returns its `seq`, or the failure.
    pub(super) fn deliver_room_message(
        &mut self,
        now: Now,
        sid: SessionId,
        room: &str,
        message: NewMessage,
        value: StoreValue,
    ) -> Result<u64, Failure> {
        let StoreValue::Appended { seq, ts, duplicate } = value else { return Err(unavailable()) };
        if duplicate {
            return Ok(seq);
        }
        let stored = stored(message, seq, ts);
        if self.config.cluster {
            let message = crate::bus::BusMessage::Room { room: room.to_string(), message: stored };
            self.stored_here(now, message, sid);
            return Ok(seq);
        }
        let entry = self.state.rooms.entry(room.to_string()).or_default();
        entry.seq = entry.seq.max(seq);
        self.deliver_to_room(room, None, true, &room_message(room, &stored));
        Ok(seq)
    }

    fn deliver_private(
        &mut self,
        now: Now,
        sid: SessionId,
        to_key: String,
        message: NewMessage,
        value: StoreValue,
    ) -> Result<u64, Failure> {
        let (seq, ts) = match value {
            StoreValue::Appended { seq, duplicate: true, .. } => return Ok(seq),
            StoreValue::Appended { seq, ts, .. } => (seq, ts),
            StoreValue::InboxFull { limit } => {
                Metrics::add(&self.metrics.inbox_full, 1);
                return Err(inbox_full(&to_key, limit));
            }
            _ => return Err(unavailable()),
        };
        let stored = stored(message, seq, ts);
        if self.config.cluster {
            self.stored_here(now, crate::bus::BusMessage::Private { to_key, message: stored }, sid);
        } else {
            self.fan_out_private(Some(sid), &to_key, &stored);
        }
        Ok(seq)
    }

    /// Sends a stored private message to the sessions here of its recipient,
    /// and the echo to those of its sender but `origin` (which sent it).
    pub(super) fn fan_out_private(&mut self, origin: Option<SessionId>, to_key: &str, stored: &StoredMessage) {
        let from = stored.from.clone();
        let to = stored.to.clone().unwrap_or_default();
        // A guest's principal has a `#`: guests have no inbox to acknowledge.
        let registered = (!to_key.contains('#')).then_some(to_key);
        let (to_view, echo_view) = private_message(stored, registered);
        // Only the principal it was sent to: a later guest with the same
        // name is someone else.
        let same_principal = self.state.online.get(to.as_str()).is_some_and(|o| o.key == to_key);
        if same_principal {
            let cluster = self.config.cluster;
            let mut recipients = self.sessions_of(&to);
            recipients.retain(|s| match self.state.sessions.get_mut(s) {
                Some(info) if info.inbox.holds_live() => {
                    if cluster {
                        info.extra_mut().inbox_missed = true;
                    }
                    false
                }
                Some(_) => true,
                None => false,
            });
            recipients.retain(|s| self.private_fresh(*s, &stored.sender, stored.seq));
            self.deliver(&recipients, &to_view);
        }
        // The sender's other sessions still reading their inbox get the echo
        // with it, in order (see `SessionExtra::held_echoes`).
        let same_sender = self.state.online.get(from.as_str()).is_some_and(|o| o.key == stored.sender);
        let mut echoes = Vec::new();
        for s in self.sessions_of(&from).into_iter().filter(|s| Some(*s) != origin && same_sender) {
            match self.state.sessions.get_mut(&s) {
                Some(info) if info.inbox == InboxRead::Reading => info
                    .extra_mut()
                    .held_echoes
                    .push(InboxMessage { with: to_key.to_string(), message: stored.clone() }),
                _ if from != to => echoes.push(s),
                _ => {}
            }
        }
        echoes.retain(|s| self.private_fresh(*s, to_key, stored.seq));
        self.deliver(&echoes, &echo_view);
    }

    /// Whether `seq` of the conversation with `peer` is new to `sid`, which
    /// from now on has seen it. Always on a single node, where storage's
    /// order makes every delivery new.
    pub(super) fn private_fresh(&mut self, sid: SessionId, peer: &str, seq: u64) -> bool {
        if !self.config.cluster {
            return true;
        }
        let Some(info) = self.state.sessions.get_mut(&sid) else { return false };
        let marks = &mut info.extra_mut().private_seen;
        match marks.iter_mut().find(|(p, _)| p == peer) {
            Some((_, seen)) if *seen >= seq => false,
            Some((_, seen)) => {
                *seen = seq;
                true
            }
            None => {
                marks.push((peer.to_string(), seq));
                true
            }
        }
    }

    /// Finishes a request whose storage work is done.
    pub(super) fn complete(&mut self, now: Now, pending: Pending, result: Result<StoreValue, StoreError>) {
        let Pending { sid, tag, kind } = pending;
        match (kind, tag) {
            (PendingKind::Inbox { cursor, round }, _) => self.complete_inbox(now, sid, cursor, round, result),
            (PendingKind::Api(call), _) => self.complete_api(sid, call, result),
            (PendingKind::Ack, tag) => self.complete_ack(now, sid, tag, result),
            (PendingKind::ReplayRest { room, after }, _) => self.complete_replay_rest(now, sid, room, after, result),
            (PendingKind::Fill { key, after, covers }, _) => self.complete_fill(now, key, after, covers, result),
            (PendingKind::Check { users }, _) => self.complete_check(now, users, result),
            (PendingKind::LiveTokens { tokens }, _) => self.complete_live_tokens(tokens, result),
            (PendingKind::RoomMembers { rooms }, _) => self.complete_room_members(rooms, result),
            (PendingKind::UserRooms { user }, _) => self.complete_user_rooms(user, result),
            (PendingKind::FindLogin { name, password, peer }, tag) => {
                self.complete_find_login(now, sid, tag, name, password, peer, result)
            }
            (PendingKind::ReleaseGuest, _) => {}
            (kind, Some(tag)) => self.complete_request(now, sid, tag, kind, result),
            // Only the kinds above are stored untagged (`Pending::untagged`).
            (_, None) => {}
        }
    }

    /// Finishes a client request, answering it with `tag`.
    fn complete_request(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        kind: PendingKind,
        result: Result<StoreValue, StoreError>,
    ) {
        match kind {
            PendingKind::Authenticate(how) => self.complete_authenticate(now, sid, tag, how, result),
            PendingKind::FindUser { user, request } => self.complete_find_user(now, sid, tag, user, request, result),
            PendingKind::FindLogin { name, password, peer } => {
                self.complete_find_login(now, sid, Some(tag), name, password, peer, result)
            }
            PendingKind::ClaimGuest { name, key, peer } => self.complete_claim(now, sid, tag, name, key, peer, result),
            PendingKind::Welcome { user, token, expires_ms } => {
                self.complete_welcome(now, sid, tag, user, token, expires_ms, result)
            }
            PendingKind::Join { user, room, since } => match result {
                Ok(_) => self.apply_join(now, sid, tag, &user, room, since),
                Err(_) => {
                    self.unmark_replaying(sid, &room);
                    self.reply(sid, tag, Err(unavailable()))
                }
            },
            PendingKind::GuestJoin { user, room, since } => {
                self.complete_room_members(vec![room.clone()], result);
                // Its session may have ended while the members were read.
                if self.state.online.get(user.as_str()).is_some_and(|o| o.guest && o.sessions.contains(&sid)) {
                    self.apply_join(now, sid, tag, &user, room, since);
                }
            }
            PendingKind::Leave { user, room } => match result {
                Ok(_) => self.apply_leave(sid, tag, &user, &room),
                Err(_) => self.reply(sid, tag, Err(unavailable())),
            },
            PendingKind::Replay { room, since } => self.complete_replay(now, sid, tag, room, since, result),
            PendingKind::SendRoom { room, message } => {
                let sent = result
                    .map_err(|_| unavailable())
                    .and_then(|v| self.deliver_room_message(now, sid, &room, message, v));
                self.reply(sid, tag, sent.map(|seq| Reply::Sent { seq }));
            }
            PendingKind::SendPrivate { to_key, message } => {
                let sent =
                    result.map_err(|_| unavailable()).and_then(|v| self.deliver_private(now, sid, to_key, message, v));
                self.reply(sid, tag, sent.map(|seq| Reply::Sent { seq }));
            }
            PendingKind::History { room } => self.reply(sid, tag, history_reply(room, result)),
            PendingKind::Conversations => self.reply(sid, tag, conversations_reply(result)),
            PendingKind::Read { user, room, with, seq } => {
                let mark = read_mark(room.as_deref(), with.as_deref(), seq);
                self.complete_read(sid, tag, &user, &mark, result)
            }
            // Finished by `complete`, tagged or not.
            PendingKind::Inbox { .. }
            | PendingKind::Api(_)
            | PendingKind::Ack
            | PendingKind::Fill { .. }
            | PendingKind::ReplayRest { .. }
            | PendingKind::Check { .. }
            | PendingKind::ReleaseGuest
            | PendingKind::LiveTokens { .. }
            | PendingKind::RoomMembers { .. }
            | PendingKind::UserRooms { .. } => {}
        }
    }

    /// A read mark is stored: the user's other sessions learn it.
    fn complete_read(
        &mut self,
        sid: SessionId,
        tag: Tag,
        user: &str,
        mark: &Encoded,
        result: Result<StoreValue, StoreError>,
    ) {
        if result.is_err() {
            return self.reply(sid, tag, Err(unavailable()));
        }
        let others: Vec<SessionId> = self.sessions_of(user).into_iter().filter(|s| *s != sid).collect();
        self.deliver(&others, mark);
        self.reply(sid, tag, Ok(Reply::Done));
    }

    /// An ack is stored: a paused inbox goes on, and an `ack` request (not
    /// the hub's own for a line session) is answered.
    fn complete_ack(&mut self, now: Now, sid: SessionId, tag: Option<Tag>, result: Result<StoreValue, StoreError>) {
        if result.is_ok() {
            self.resume_inbox(now, sid);
        }
        if let Some(tag) = tag {
            self.reply(sid, tag, result.map(|_| Reply::Done).map_err(|_| unavailable()));
        }
    }
}

/// What other nodes hear of `from`'s `typing` (the target is known here).
fn relayed_typing(from: &str, to: To, state: &super::state::State) -> crate::bus::Relayed {
    match to {
        To::Room(room) => crate::bus::Relayed::TypingInRoom { room, from: from.to_string() },
        To::User(to) => {
            let to_key = state.key_of(&to).unwrap_or_else(|| to.clone());
            crate::bus::Relayed::TypingToUser { from: from.to_string(), to, to_key }
        }
    }
}

fn history_reply(room: Option<String>, result: Result<StoreValue, StoreError>) -> Result<Reply, Failure> {
    match result {
        Ok(StoreValue::Messages { messages, .. }) => Ok(Reply::History { room, messages }),
        _ => Err(unavailable()),
    }
}

fn conversations_reply(result: Result<StoreValue, StoreError>) -> Result<Reply, Failure> {
    match result {
        Ok(StoreValue::Conversations { conversations }) => Ok(Reply::Conversations(
            conversations.into_iter().map(|c| (display_name(&c.with).to_string(), c.seq, c.read)).collect(),
        )),
        _ => Err(unavailable()),
    }
}

impl Hub {
    /// How full `to`'s inbox may get. The bound protects a user who is away
    /// (its inbox only fills); one with a session reads as it goes, so its
    /// senders are not refused because its client acknowledges late or never.
    fn inbox_bound(&self, to: &str) -> InboxBound {
        let online = self.state.online.get(to).is_some_and(|o| !o.sessions.is_empty());
        if online {
            InboxBound::UNBOUNDED
        } else {
            self.config.inbox
        }
    }
}

/// Requests whose cost grows with the server's size or a history's: they
/// have a budget of their own (`--query-rate`), apart from the message rate.
fn is_query(request: &ClientRequest) -> bool {
    matches!(
        request,
        ClientRequest::Rooms { .. }
            | ClientRequest::Who { .. }
            | ClientRequest::History { .. }
            | ClientRequest::Conversations { .. }
    )
}

impl Hub {
    /// Takes one of `sid`'s query tokens, if it has one.
    fn query_allowed(&mut self, now: Now, sid: SessionId) -> bool {
        let (rate, burst) = (self.config.query_rate, self.config.query_rate.saturating_mul(4));
        let Some(info) = self.state.sessions.get_mut(&sid) else { return true };
        let bucket = info.extra_mut().queries.get_or_insert_with(|| RateLimit::new(now.instant, burst));
        let allowed = bucket.allow(now.instant, rate, burst);
        if !allowed {
            Metrics::add(&self.metrics.queries_limited, 1);
        }
        allowed
    }
}

/// Drops the oldest of `messages` (in `seq` order) until the rest fit in
/// `budget` bytes, counting each as its text and sender plus its framing.
fn keep_newest_within(messages: &mut Vec<StoredMessage>, budget: usize) {
    let mut bytes = 0;
    let keep_from = messages
        .iter()
        .rposition(|m| {
            bytes += m.text.len() + m.from.len() + 128;
            bytes > budget
        })
        .map_or(0, |i| i + 1);
    messages.drain(..keep_from);
}

/// Whether a replay of what came after `since` is whole, given the room's
/// `seq`, what it sends and the oldest message storage still holds.
fn recovery(seq: u64, since: u64, messages: &[StoredMessage], oldest: Option<u64>) -> Recovery {
    if seq <= since {
        return Recovery { recovered: true, oldest: None };
    }
    match messages.first() {
        Some(first) if first.seq == since + 1 => Recovery { recovered: true, oldest: None },
        Some(first) => Recovery { recovered: false, oldest: Some(first.seq) },
        None => Recovery { recovered: false, oldest },
    }
}

fn stored(message: NewMessage, seq: u64, ts: u64) -> StoredMessage {
    StoredMessage {
        seq,
        from: message.from,
        to: message.to,
        sender: message.sender,
        text: message.text,
        client_id: message.client_id,
        ts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, text: &str) -> StoredMessage {
        StoredMessage {
            seq,
            from: "ann".into(),
            to: None,
            sender: "ann".into(),
            text: text.into(),
            client_id: None,
            ts: 0,
        }
    }

    fn seqs(messages: &[StoredMessage]) -> Vec<u64> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_replay_keeps_its_newest_messages_within_the_budget() {
        // Each costs 128 + 3 + 10 = 141 bytes.
        let mut messages: Vec<StoredMessage> = (1..=5).map(|seq| message(seq, "0123456789")).collect();
        keep_newest_within(&mut messages, 3 * 141);
        assert_eq!(seqs(&messages), [3, 4, 5]);
        keep_newest_within(&mut messages, 3 * 141 - 1);
        assert_eq!(seqs(&messages), [4, 5]);
        keep_newest_within(&mut messages, 0);
        assert!(messages.is_empty());
    }

    #[test]
    fn a_replay_is_recovered_when_it_starts_right_after_since() {
        let whole = Recovery { recovered: true, oldest: None };
        assert_eq!(recovery(7, 7, &[], Some(1)), whole, "nothing new");
        assert_eq!(recovery(9, 7, &[message(8, ""), message(9, "")], Some(1)), whole);
        let gap = recovery(9, 5, &[message(8, ""), message(9, "")], Some(1));
        assert_eq!(gap, Recovery { recovered: false, oldest: Some(8) }, "6 and 7 were left out");
        let purged = recovery(9, 5, &[], Some(9));
        assert_eq!(purged, Recovery { recovered: false, oldest: Some(9) }, "storage holds no more");
    }
}
