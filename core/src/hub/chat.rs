//! Chat requests of welcomed sessions, and the storage completions that
//! finish them.

use super::pending::Pending;
use super::state::{display_name, InboxRead};
use super::{unavailable, Hub};
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

impl Hub {
    pub(super) fn chat(&mut self, now: Now, sid: SessionId, tag: Tag, user: String, request: ClientRequest) {
        if is_query(&request) && !self.query_allowed(now, sid) {
            let rate = self.config.query_rate;
            let f = Failure::new(ErrorCode::RateLimited, format!("at most {rate} listings and history reads a second"));
            return self.reply(sid, tag, Err(f));
        }
        let my_key = self.state.online.get(&user).map(|o| o.key.clone()).unwrap_or_else(|| user.clone());
        let guest = self.state.online.get(&user).is_some_and(|o| o.guest);
        let result = match request {
            ClientRequest::Hello { .. } => {
                Err(Failure::new(ErrorCode::AlreadyAuthenticated, "this session has said hello already"))
            }
            ClientRequest::Ping => Ok(Reply::Pong),
            ClientRequest::Join { room, since } => {
                if !is_valid_name(&room) {
                    Err(bad_room())
                } else if self.state.is_member(&user, &room) {
                    return self.joined(now, sid, tag, room, since);
                } else if self.state.room_count(&user) >= self.config.max_rooms {
                    let max = self.config.max_rooms;
                    Err(Failure::new(ErrorCode::TooManyRooms, format!("a user may be in at most {max} rooms")))
                } else if guest {
                    return self.apply_join(now, sid, tag, &user, room, since);
                } else {
                    if since.is_some() {
                        // Another session of the user may make it a member
                        // before this join is stored: from now on this
                        // session's live messages of the room wait for its
                        // replay, which the `ok` precedes.
                        self.mark_replaying(sid, &room);
                    }
                    let op = StoreOp::Join { user: user.clone(), room: room.clone() };
                    return self.store(now, op, Pending::Join { sid, tag, user, room, since });
                }
            }
            ClientRequest::Leave { room } => {
                if !self.state.is_member(&user, &room) {
                    Err(not_member(&room))
                } else if guest {
                    return self.apply_leave(sid, tag, &user, &room);
                } else {
                    let op = StoreOp::Leave { user: user.clone(), room: room.clone() };
                    return self.store(now, op, Pending::Leave { sid, tag, user, room });
                }
            }
            ClientRequest::Send { to, text, id } => {
                if text.len() > self.config.max_text {
                    let max = self.config.max_text;
                    Err(Failure::new(ErrorCode::TooLong, format!("text is limited to {max} bytes")))
                } else {
                    let message = NewMessage {
                        sender: my_key.clone(),
                        from: user.clone(),
                        to: None,
                        text,
                        client_id: id,
                        ts: now.unix_ms,
                        inbox: None,
                    };
                    match to {
                        To::Room(room) if !self.state.is_member(&user, &room) => Err(not_member(&room)),
                        To::Room(room) => {
                            let op = StoreOp::Append { target: Target::Room(room.clone()), message: message.clone() };
                            return self.store(now, op, Pending::SendRoom { sid, tag, room, message });
                        }
                        To::User(to) => match self.state.key_of(&to) {
                            None => Err(no_such_user(&to)),
                            Some(to_key) if guest && self.config.no_guest_private && !is_guest_key(&to_key) => {
                                Err(Failure::new(ErrorCode::Forbidden, "guests may not message registered users here"))
                            }
                            Some(to_key) => {
                                let inbox = (!is_guest_key(&to_key)).then(|| self.inbox_bound(&to));
                                let message = NewMessage { to: Some(to), inbox, ..message };
                                let target = Target::Conversation(my_key, to_key.clone());
                                let op = StoreOp::Append { target, message: message.clone() };
                                return self.store(now, op, Pending::SendPrivate { sid, tag, to_key, message });
                            }
                        },
                    }
                }
            }
            ClientRequest::History { of, before, limit: given } => {
                let range = SeqRange::Before { before, limit: limit(given, 50, 500) };
                match of {
                    To::Room(room) if !self.state.is_member(&user, &room) => Err(not_member(&room)),
                    To::Room(room) => {
                        let op = StoreOp::History { target: Target::Room(room.clone()), range };
                        return self.store(now, op, Pending::History { sid, tag, room: Some(room) });
                    }
                    To::User(with) => match self.state.key_of(&with) {
                        None => Err(no_such_user(&with)),
                        Some(key) => {
                            let op = StoreOp::History { target: Target::Conversation(my_key, key), range };
                            return self.store(now, op, Pending::History { sid, tag, room: None });
                        }
                    },
                }
            }
            ClientRequest::Who { room, limit: given } => {
                let max = limit(given, 100, 1000) as usize;
                let users: Vec<(String, bool)> = match &room {
                    Some(room) => self.state.rooms.get(room).map_or_else(Vec::new, |r| {
                        r.members.iter().take(max).map(|u| (u.clone(), self.state.online.contains_key(u))).collect()
                    }),
                    None => self.state.online_names.iter().take(max).map(|u| (u.clone(), true)).collect(),
                };
                Ok(Reply::Users(users))
            }
            ClientRequest::Rooms { limit: given } => {
                let max = limit(given, 100, 1000) as usize;
                let rooms = self.state.by_size.iter().take(max).map(|(n, name)| (name.clone(), n.0)).collect();
                Ok(Reply::Rooms(rooms))
            }
            ClientRequest::Conversations { limit: given } => {
                let op = StoreOp::Conversations { user: my_key, limit: limit(given, 100, 1000) };
                return self.store(now, op, Pending::Conversations { sid, tag });
            }
            ClientRequest::Read { of, seq } => match of {
                To::Room(room) if !self.state.is_member(&user, &room) => Err(not_member(&room)),
                To::Room(room) => {
                    let op = StoreOp::Read { user: my_key, target: Target::Room(room.clone()), seq };
                    return self.store(now, op, Pending::Read { sid, tag, user, room: Some(room), with: None, seq });
                }
                To::User(with) => match self.state.key_of(&with) {
                    None => Err(no_such_user(&with)),
                    Some(key) => {
                        let op = StoreOp::Read { user: my_key.clone(), target: Target::Conversation(my_key, key), seq };
                        return self.store(
                            now,
                            op,
                            Pending::Read { sid, tag, user, room: None, with: Some(with), seq },
                        );
                    }
                },
            },
            ClientRequest::Typing { to } => match to {
                To::Room(room) if !self.state.is_member(&user, &room) => Err(not_member(&room)),
                To::Room(room) => {
                    let targets = self.room_sessions(&room, None, false);
                    self.deliver(&targets, &typing_in_room(&room, &user));
                    Ok(Reply::Done)
                }
                To::User(to) => {
                    if self.state.key_of(&to).is_none() {
                        Err(no_such_user(&to))
                    } else {
                        let targets = self.sessions_of(&to);
                        self.deliver(&targets, &typing_to_user(&user, &to));
                        Ok(Reply::Done)
                    }
                }
            },
            ClientRequest::Ack { with, seq } => match self.state.key_of(&with) {
                None => Err(no_such_user(&with)),
                Some(key) => {
                    let op = StoreOp::Ack { user: my_key, with: key, seq };
                    return self.store(now, op, Pending::Ack { sid, tag: Some(tag) });
                }
            },
        };
        self.reply(sid, tag, result);
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
            let targets = self.room_sessions(&room, None, false);
            self.deliver(&targets, &presence(&room, user, Presence::Join));
            self.update_room_gauge();
        }
        self.joined(now, sid, tag, room, since);
    }

    fn mark_replaying(&mut self, sid: SessionId, room: &str) {
        if let Some(info) = self.state.sessions.get_mut(&sid) {
            if !info.replaying.iter().any(|r| r == room) {
                info.replaying.push(room.to_string());
            }
        }
    }

    pub(super) fn unmark_replaying(&mut self, sid: SessionId, room: &str) {
        if let Some(info) = self.state.sessions.get_mut(&sid) {
            info.replaying.retain(|r| r != room);
        }
    }

    fn start_replay(&mut self, now: Now, sid: SessionId, tag: Tag, room: String, since: u64) {
        self.mark_replaying(sid, &room);
        let op = StoreOp::History {
            target: Target::Room(room.clone()),
            range: SeqRange::After { after: since, limit: REPLAY_LIMIT },
        };
        self.store(now, op, Pending::Replay { sid, tag, room, since });
    }

    fn complete_replay(
        &mut self,
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
        let budget = self.config.max_queue / 2;
        let mut bytes = 0;
        let keep_from = messages
            .iter()
            .rposition(|m| {
                bytes += m.text.len() + m.from.len() + 128;
                bytes > budget
            })
            .map_or(0, |i| i + 1);
        messages.drain(..keep_from);
        let recovery = if seq <= since {
            Recovery { recovered: true, oldest: None }
        } else {
            match messages.first() {
                Some(first) if first.seq == since + 1 => Recovery { recovered: true, oldest: None },
                Some(first) => Recovery { recovered: false, oldest: Some(first.seq) },
                None => Recovery { recovered: false, oldest },
            }
        };
        let members = self.state.members(&room);
        self.reply(sid, tag, Ok(Reply::Joined { room: room.clone(), seq, members, recovery: Some(recovery) }));
        for m in &messages {
            self.deliver(&[sid], &room_message(&room, m));
        }
    }

    fn apply_leave(&mut self, sid: SessionId, tag: Tag, user: &str, room: &str) {
        if !self.state.is_member(user, room) {
            return self.reply(sid, tag, Err(not_member(room)));
        }
        let targets = self.room_sessions(room, None, false);
        self.deliver(&targets, &presence(room, user, Presence::Leave));
        self.state.remove_member(user, room);
        for s in self.sessions_of(user) {
            if let Some(info) = self.state.sessions.get_mut(&s) {
                info.replaying.retain(|r| r != room);
            }
        }
        self.update_room_gauge();
        self.reply(sid, tag, Ok(Reply::Done));
    }

    /// Delivers a stored room message; returns its `seq`, or the failure.
    pub(super) fn deliver_room_message(
        &mut self,
        room: &str,
        message: NewMessage,
        value: StoreValue,
    ) -> Result<u64, Failure> {
        let StoreValue::Appended { seq, ts, duplicate } = value else { return Err(unavailable()) };
        if duplicate {
            return Ok(seq);
        }
        let entry = self.state.rooms.entry(room.to_string()).or_default();
        entry.seq = entry.seq.max(seq);
        let stored = stored(message, seq, ts);
        let targets = self.room_sessions(room, None, true);
        self.deliver(&targets, &room_message(room, &stored));
        Ok(seq)
    }

    fn deliver_private(
        &mut self,
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
        let from = message.from.clone();
        let to = message.to.clone().unwrap_or_default();
        let stored = stored(message, seq, ts);
        // A guest's principal has a `#`: guests have no inbox to acknowledge.
        let registered = (!to_key.contains('#')).then_some(to_key.as_str());
        let (to_view, echo_view) = private_message(&stored, registered);
        // Only the principal it was sent to: a later guest with the same
        // name is someone else.
        let same_principal = self.state.online.get(&to).is_some_and(|o| o.key == to_key);
        if same_principal {
            let recipients: Vec<SessionId> = self
                .sessions_of(&to)
                .into_iter()
                .filter(|s| self.state.sessions.get(s).is_some_and(|i| !i.inbox.holds_live()))
                .collect();
            self.deliver(&recipients, &to_view);
        }
        // The sender's other sessions still reading their inbox get the echo
        // with it, in order (see `SessionInfo::held_echoes`).
        let mut echoes = Vec::new();
        for s in self.sessions_of(&from).into_iter().filter(|s| *s != sid) {
            match self.state.sessions.get_mut(&s) {
                Some(info) if info.inbox == InboxRead::Reading => {
                    info.held_echoes.push(InboxMessage { with: to_key.clone(), message: stored.clone() })
                }
                _ if from != to => echoes.push(s),
                _ => {}
            }
        }
        self.deliver(&echoes, &echo_view);
        Ok(seq)
    }

    /// Finishes a request whose storage work is done.
    pub(super) fn complete(&mut self, now: Now, pending: Pending, result: Result<StoreValue, StoreError>) {
        match pending {
            Pending::Authenticate { sid, tag, how } => self.complete_authenticate(now, sid, tag, how, result),
            Pending::Welcome { sid, tag, user, token, expires_ms } => {
                self.complete_welcome(now, sid, tag, user, token, expires_ms, result)
            }
            Pending::Inbox { sid, cursor, round } => self.complete_inbox(now, sid, cursor, round, result),
            p @ (Pending::ApiRegister { .. } | Pending::ApiLogin { .. } | Pending::ApiLogout { .. }) => {
                self.complete_api(now, p, result)
            }
            Pending::Join { sid, tag, user, room, since } => match result {
                Ok(_) => self.apply_join(now, sid, tag, &user, room, since),
                Err(_) => {
                    self.unmark_replaying(sid, &room);
                    self.reply(sid, tag, Err(unavailable()))
                }
            },
            Pending::Leave { sid, tag, user, room } => match result {
                Ok(_) => self.apply_leave(sid, tag, &user, &room),
                Err(_) => self.reply(sid, tag, Err(unavailable())),
            },
            Pending::Replay { sid, tag, room, since } => self.complete_replay(sid, tag, room, since, result),
            Pending::SendRoom { sid, tag, room, message } => {
                let sent = result.map_err(|_| unavailable()).and_then(|v| self.deliver_room_message(&room, message, v));
                self.reply(sid, tag, sent.map(|seq| Reply::Sent { seq }));
            }
            Pending::SendPrivate { sid, tag, to_key, message } => {
                let sent =
                    result.map_err(|_| unavailable()).and_then(|v| self.deliver_private(sid, to_key, message, v));
                self.reply(sid, tag, sent.map(|seq| Reply::Sent { seq }));
            }
            Pending::History { sid, tag, room } => {
                let reply = match result {
                    Ok(StoreValue::Messages { messages, .. }) => Ok(Reply::History { room, messages }),
                    _ => Err(unavailable()),
                };
                self.reply(sid, tag, reply);
            }
            Pending::Conversations { sid, tag } => {
                let reply = match result {
                    Ok(StoreValue::Conversations { conversations }) => Ok(Reply::Conversations(
                        conversations.into_iter().map(|c| (display_name(&c.with).to_string(), c.seq, c.read)).collect(),
                    )),
                    _ => Err(unavailable()),
                };
                self.reply(sid, tag, reply);
            }
            Pending::Read { sid, tag, user, room, with, seq } => match result {
                Ok(_) => {
                    let others: Vec<SessionId> = self.sessions_of(&user).into_iter().filter(|s| *s != sid).collect();
                    self.deliver(&others, &read_mark(room.as_deref(), with.as_deref(), seq));
                    self.reply(sid, tag, Ok(Reply::Done));
                }
                Err(_) => self.reply(sid, tag, Err(unavailable())),
            },
            Pending::Ack { sid, tag } => {
                if result.is_ok() {
                    self.resume_inbox(now, sid);
                }
                if let Some(tag) = tag {
                    self.reply(sid, tag, result.map(|_| Reply::Done).map_err(|_| unavailable()));
                }
            }
        }
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
        let bucket = info.queries.get_or_insert_with(|| RateLimit::new(now.instant, burst));
        let allowed = bucket.allow(now.instant, rate, burst);
        if !allowed {
            Metrics::add(&self.metrics.queries_limited, 1);
        }
        allowed
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
