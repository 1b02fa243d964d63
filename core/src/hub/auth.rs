//! Who a session is: `hello`, line logins, the welcome sequence, the HTTP
//! account API, the failed-login limit, and the end of a session.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use super::pending::{ApiKind, AuthKind, Pending, PendingKind};
use super::state::{InboxRead, Online, Phase, SessionInfo};
use super::{unavailable, Hub};
use crate::ids::{is_valid_name, SessionId};
use crate::link::{ApiCall, Auth, HubClose, Tag, ToShardInner};
use crate::metrics::Metrics;
use crate::render::event::presence;
use crate::render::{ApiResponse, ErrorCode, Failure, LineAck, Presence, Reply, RoomMark};
use crate::store::{Cancel, StoreError, StoreOp, StoreValue};
use crate::time::Now;

impl Hub {
    pub(super) fn hello(&mut self, now: Now, sid: SessionId, tag: Tag, auth: Auth, line: bool, peer: IpAddr) {
        let info = self.state.sessions.entry(sid).or_insert_with(|| {
            Box::new(SessionInfo { peer, line, phase: Phase::New, inbox: InboxRead::Done, extra: None })
        });
        if info.phase != Phase::New {
            let f = Failure::new(ErrorCode::AlreadyAuthenticated, "this session has said hello already");
            return self.reply(sid, tag, Err(f));
        }
        // Before any work: a client opening sessions in a loop costs us a
        // check, not a token lookup or a hash.
        if let Some(retry) = self.limits.open_limited(now.unix_ms, peer, None) {
            return self.refuse_open(sid, tag, retry);
        }
        match auth {
            Auth::Token(token) => {
                self.set_phase(sid, Phase::Welcoming);
                let op = StoreOp::CheckToken { token: token.clone(), now_ms: now.unix_ms };
                self.store(now, op, Pending::request(sid, tag, PendingKind::Authenticate(AuthKind::Token(token))));
            }
            Auth::Guest(name) => match self.guest_name_problem(now, peer, &name) {
                Some(f) => self.reply(sid, tag, Err(f)),
                None => self.claim_guest(now, sid, tag, peer, name, None),
            },
            Auth::Resume { name, resume } => match self.guest_name_problem_for_resume(now, peer, &name, &resume) {
                Err(f) => self.reply(sid, tag, Err(f)),
                Ok(key) => self.claim_guest(now, sid, tag, peer, name, key),
            },
            Auth::Password { user, password } => self.line_login(now, sid, tag, peer, user, password),
            Auth::Register { user, password } => self.line_register(now, sid, tag, peer, user, password),
        }
    }

    /// Line `/login USER PASSWORD`.
    pub(super) fn line_login(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        peer: IpAddr,
        user: String,
        password: String,
    ) {
        if self.login_name_unknown(&user) {
            return self.find_login(now, sid, Some(tag), peer, user, password);
        }
        self.line_login_as(now, sid, tag, peer, user, password);
    }

    /// A line login once the name is as known as it can be.
    pub(super) fn line_login_as(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        peer: IpAddr,
        user: String,
        password: String,
    ) {
        let user = self.state.canonical(user);
        if let Some(retry) = self.limits.open_limited(now.unix_ms, peer, Some(&user)) {
            return self.refuse_open(sid, tag, retry);
        }
        let ticket = match self.limits.reserve_login(now.unix_ms, peer, &user) {
            Ok(ticket) => ticket,
            Err(retry) => {
                Metrics::add(&self.metrics.limited_logins, 1);
                return self.reply(sid, tag, Err(too_many("failed logins", retry)));
            }
        };
        self.set_phase(sid, Phase::Welcoming);
        let cancel = self.cancel_for(sid);
        let op = StoreOp::Verify { user: user.clone(), password, cancel };
        self.store(now, op, Pending::request(sid, tag, PendingKind::Authenticate(AuthKind::Password(user, ticket))));
    }

    /// Line `/register USER PASSWORD`.
    fn line_register(&mut self, now: Now, sid: SessionId, tag: Tag, peer: IpAddr, user: String, password: String) {
        if let Err((f, _)) = self.registration_problem(now, peer, &user, &password) {
            return self.reply(sid, tag, Err(f));
        }
        if let Some(retry) = self.limits.open_limited(now.unix_ms, peer, Some(&user)) {
            return self.refuse_open(sid, tag, retry);
        }
        self.set_phase(sid, Phase::Welcoming);
        self.state.reserve(user.clone());
        let cancel = self.cancel_for(sid);
        let op = StoreOp::Register { user: user.clone(), password, cancel };
        self.store(now, op, Pending::request(sid, tag, PendingKind::Authenticate(AuthKind::Register(user))));
    }

    /// A cancel flag for `sid`'s password operation, raised if it closes.
    fn cancel_for(&mut self, sid: SessionId) -> Cancel {
        let cancel = Cancel::default();
        self.cancels.insert(sid, cancel.clone());
        cancel
    }

    /// Refuses a `hello` past the session-open limit and closes the session.
    pub(super) fn refuse_open(&mut self, sid: SessionId, tag: Tag, retry: u64) {
        Metrics::add(&self.metrics.limited_session_opens, 1);
        self.set_phase(sid, Phase::New);
        self.reply(sid, tag, Err(too_many("sessions opened", retry)));
        self.push(sid.shard(), ToShardInner::Close { sid, reason: HubClose::TooManySessions });
    }

    /// A `hello` of `sid` was answered `unavailable` before storage
    /// answered it: the session is back to before its `hello`, and a guest
    /// name it was claiming is free to be asked for again (the late answer
    /// is settled by `settle_claim`).
    pub(super) fn hello_abandoned(&mut self, sid: SessionId, claimed: Option<String>) {
        if self.state.sessions.get(&sid).is_some_and(|i| i.phase == Phase::Welcoming) {
            self.set_phase(sid, Phase::New);
        }
        if let Some(name) = claimed {
            self.state.unreserve(&name);
        }
    }

    pub(super) fn set_phase(&mut self, sid: SessionId, phase: Phase) {
        if let Some(info) = self.state.sessions.get_mut(&sid) {
            info.phase = phase;
        }
    }

    pub(super) fn guest_name_problem(&mut self, now: Now, peer: IpAddr, name: &str) -> Option<Failure> {
        if self.config.no_guests {
            return Some(Failure::new(ErrorCode::GuestsDisabled, "this server does not accept guests; log in"));
        }
        if !is_valid_name(name) {
            return Some(Failure::new(ErrorCode::BadName, "names have 1 to 32 of A-Z a-z 0-9 _ - ."));
        }
        // Past the limit every name is refused, free or not: otherwise the
        // answers would still tell which names are registered.
        if let Some(retry) = self.limits.probes_by_peer.limited(now.unix_ms, &peer) {
            Metrics::add(&self.metrics.limited_name_probes, 1);
            return Some(too_many("names refused as taken", retry));
        }
        if self.name_in_use(name) {
            self.limits.probes_by_peer.hit(now.unix_ms, &peer);
            return Some(Failure::new(ErrorCode::NameTaken, format!("the name {name} is taken")));
        }
        None
    }

    /// Whether `name` is registered, being registered or online, in any case.
    fn name_in_use(&self, name: &str) -> bool {
        self.state.resolve(name).is_some()
    }

    /// Why `user` cannot register now, with the seconds to wait when it is
    /// the rate. A well-formed attempt counts against the address's
    /// registration limit before the name is looked up, so registering is no
    /// faster a way to probe names than a guest `hello`, and nothing is hashed
    /// past the limit.
    fn registration_problem(
        &mut self,
        now: Now,
        peer: IpAddr,
        user: &str,
        password: &str,
    ) -> Result<(), (Failure, Option<u64>)> {
        if !is_valid_name(user) {
            return Err((Failure::new(ErrorCode::BadName, "names have 1 to 32 of A-Z a-z 0-9 _ - ."), None));
        }
        if !(8..=1024).contains(&password.chars().count()) {
            return Err((Failure::new(ErrorCode::BadPassword, "a password has 8 to 1024 characters"), None));
        }
        if let Err(retry) = self.limits.register_by_peer.take(now.unix_ms, &peer) {
            Metrics::add(&self.metrics.limited_registrations, 1);
            return Err((too_many("registrations", retry), Some(retry)));
        }
        if self.name_in_use(user) {
            return Err((Failure::new(ErrorCode::NameTaken, format!("the name {user} is taken")), None));
        }
        Ok(())
    }

    /// Marks the session welcomed; returns whether it is a line session.
    pub(super) fn set_welcomed(&mut self, sid: SessionId, user: &str, token: Option<String>) -> bool {
        match self.state.sessions.get_mut(&sid) {
            Some(info) => {
                info.phase = Phase::Welcomed { user: user.into(), token: token.map(String::into_boxed_str) };
                info.line
            }
            None => false,
        }
    }

    pub(super) fn count_session(&self, line: bool, delta: i64) {
        let gauge = if line { &self.metrics.sessions_line } else { &self.metrics.sessions_ws };
        gauge.fetch_add(delta, Relaxed);
    }

    pub(super) fn complete_authenticate(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        how: AuthKind,
        result: Result<StoreValue, StoreError>,
    ) {
        self.cancels.remove(&sid);
        self.settle_password(&how, &result);
        let Some(peer) = self.state.sessions.get(&sid).map(|i| i.peer) else { return };
        let outcome = match (how, result) {
            (AuthKind::Token(token), Ok(StoreValue::TokenUser { user, expires_ms })) => {
                Ok((user, Some(token), Some(expires_ms)))
            }
            (AuthKind::Password(user, _), Ok(StoreValue::Verified))
            | (AuthKind::Register(user), Ok(StoreValue::Registered)) => Ok((user, None, None)),
            (AuthKind::Token(_), Ok(_)) => {
                Err(Failure::new(ErrorCode::InvalidToken, "the token is unknown, expired or revoked"))
            }
            (AuthKind::Password(..), Ok(_)) => {
                Err(Failure::new(ErrorCode::InvalidCredentials, "wrong user name or password"))
            }
            (AuthKind::Register(user), Ok(_)) => {
                Err(Failure::new(ErrorCode::NameTaken, format!("the name {user} is taken")))
            }
            (_, Err(StoreError::Overloaded)) => Err(busy()),
            (_, Err(_)) => Err(unavailable()),
        };
        match outcome {
            Ok((user, token, expires_ms)) => match self.limits.open_limited(now.unix_ms, peer, Some(&user)) {
                Some(retry) => self.refuse_open(sid, tag, retry),
                None => {
                    let op = StoreOp::ReadMarks { user: user.clone() };
                    self.store(now, op, Pending::request(sid, tag, PendingKind::Welcome { user, token, expires_ms }));
                }
            },
            Err(f) => {
                self.set_phase(sid, Phase::New);
                self.reply(sid, tag, Err(f));
            }
        }
    }

    /// What a finished password operation changes whether or not its client
    /// is still there: the name reservation and the login count.
    pub(super) fn settle_password(&mut self, how: &AuthKind, result: &Result<StoreValue, StoreError>) {
        match (how, result) {
            (AuthKind::Register(user), result) => {
                self.state.unreserve(user);
                if *result == Ok(StoreValue::Registered) {
                    self.state.register(user.clone());
                }
            }
            // A wrong password keeps its count; a right one or one never
            // checked gives it back.
            (AuthKind::Password(_, _), Ok(StoreValue::Rejected)) => {}
            (AuthKind::Password(_, ticket), _) => self.limits.release_login(ticket),
            (AuthKind::Token(_), _) => {}
        }
    }

    /// The last step of a registered user's `welcome`: its read marks are in.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete_welcome(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        user: String,
        token: Option<String>,
        expires_ms: Option<u64>,
        result: Result<StoreValue, StoreError>,
    ) {
        if !self.state.sessions.contains_key(&sid) {
            return;
        }
        let marks = match result {
            Ok(StoreValue::ReadMarks { marks }) => marks,
            _ => {
                self.set_phase(sid, Phase::New);
                return self.reply(sid, tag, Err(unavailable()));
            }
        };
        let guest_twin =
            self.state.resolve(&user).and_then(|name| self.state.online.get(name)).is_some_and(|o| o.guest);
        if guest_twin {
            // A guest took the name while the account did not exist yet.
            self.set_phase(sid, Phase::New);
            let f = Failure::new(ErrorCode::NameTaken, format!("a guest is online as {user}"));
            return self.reply(sid, tag, Err(f));
        }
        if self.config.cluster {
            self.adopt_stored_rooms(&user, &marks);
        }
        let Some(info) = self.state.sessions.get_mut(&sid) else { return };
        info.inbox = InboxRead::Reading;
        let peer = info.peer;
        self.limits.opened(now.unix_ms, peer, &user);
        self.session_welcomed(now, sid);
        let line = self.set_welcomed(sid, &user, token);
        let first = self.add_registered_session(&user, sid);
        let rooms: Vec<String> = self.state.rooms_of(&user);
        if first {
            self.announce_online(&user, &user, false);
        }
        // Online elsewhere in the cluster: the members heard `online` then.
        if first && !self.online_elsewhere(&user) {
            for room in &rooms {
                self.deliver_to_room(room, Some(&user), false, &presence(room, &user, Presence::Online));
            }
        }
        let rooms = rooms
            .into_iter()
            .map(|room| {
                let read = marks.iter().find(|(r, ..)| *r == room).map_or(0, |(_, n, _)| *n);
                RoomMark { seq: self.state.room_seq(&room), room, read }
            })
            .collect();
        let welcome = Reply::Welcome {
            user: user.clone(),
            guest: false,
            session: sid.get().to_string(),
            heartbeat_s: self.config.heartbeat.as_secs(),
            rooms,
            resume: None,
        };
        self.reply(sid, tag, Ok(welcome));
        self.push(sid.shard(), ToShardInner::Welcomed { sid, expires_ms });
        self.count_session(line, 1);
        if self.config.cluster {
            // A principal new here is checked before its inbox is read, so
            // what the check counts as seen was committed before the inbox
            // read began, and the inbox read brings it.
            self.sync_subscriptions(now);
        }
        self.read_inbox(now, sid, 0);
    }

    /// In a cluster, another node may have stored a join or a leave of
    /// `user` since this node loaded its rooms: the rooms storage just named
    /// (`ReadMarks`, read after every membership this node stored for the
    /// user) are the user's rooms from now on. A room this node does not
    /// serve may have moved on meanwhile: it starts from storage's newest
    /// `seq`, which `welcome` names, rather than from what this node last
    /// saw, which would have it deliver the whole backlog as live messages.
    fn adopt_stored_rooms(&mut self, user: &str, marks: &[(String, u64, u64)]) {
        let known: Vec<String> = self.state.rooms_of(user);
        for room in known.iter().filter(|r| !marks.iter().any(|(m, ..)| m == *r)) {
            self.state.remove_member(user, room);
        }
        for (room, ..) in marks.iter().filter(|(r, ..)| !known.contains(r)) {
            self.state.add_member(user, room);
        }
        for (room, _, seq) in marks {
            self.catch_up_unserved(room, *seq);
        }
        self.update_room_gauge();
    }

    /// A line session wrote a private message: the store learns it was
    /// received, so it is not delivered again.
    pub(super) fn line_ack(&mut self, now: Now, sid: SessionId, ack: &LineAck) {
        let op = StoreOp::Ack { user: ack.user.clone(), with: ack.with.clone(), seq: ack.seq };
        self.store(now, op, Pending::untagged(sid, PendingKind::Ack));
    }

    /// Adds a session of registered `user`; returns whether it is the first
    /// (`online` is due). A session opening within the presence grace after
    /// the last one closed cancels the pending `offline`, and sends no
    /// `online` either: the user never stopped being online to others.
    fn add_registered_session(&mut self, user: &str, sid: SessionId) -> bool {
        if !self.state.online.contains_key(user) {
            let online = Online { key: user.into(), guest: false, sessions: smallvec::SmallVec::new(), gone: None };
            self.state.set_online(user.to_string(), online);
        }
        let Some(online) = self.state.online.get_mut(user) else { return false };
        let back = online.gone.take().is_some();
        let first = online.sessions.is_empty() && !back;
        self.state.add_session(user, sid);
        if back {
            Metrics::add(&self.metrics.presence_coalesced, 1);
        }
        first
    }

    /// A session ended: presence for its user's last session, and a guest's
    /// memberships end with it. A registered user's `offline` waits for the
    /// presence grace (see [`Hub::end_graces`]); until then it still counts
    /// as online, in `who` too, so presence and `who` agree.
    pub(super) fn closed(&mut self, now: Now, sid: SessionId) {
        if let Some(cancel) = self.cancels.remove(&sid) {
            cancel.cancel();
        }
        let Some(info) = self.state.remove_session_info(sid) else { return };
        let Phase::Welcomed { user, .. } = info.phase else { return };
        self.count_session(info.line, -1);
        if self.state.remove_session(&user, sid) > 0 {
            return;
        }
        let Some(online) = self.state.online.get_mut(&user) else { return };
        if online.guest {
            return self.guest_gone(now, &user);
        }
        if self.config.presence_grace.is_zero() {
            return self.registered_gone(now, &user);
        }
        let due = now.instant + self.config.presence_grace;
        online.gone = Some(due);
        self.grace.push_back((due, user.into()));
    }

    /// Sends the `offline`s whose grace is over.
    pub(super) fn end_graces(&mut self, now: Now) {
        while let Some((due, _)) = self.grace.front() {
            if *due > now.instant {
                break;
            }
            let Some((due, user)) = self.grace.pop_front() else { break };
            let still_gone =
                self.state.online.get(user.as_str()).is_some_and(|o| o.gone == Some(due) && o.sessions.is_empty());
            if still_gone {
                self.registered_gone(now, &user);
            }
        }
    }

    fn registered_gone(&mut self, now: Now, user: &str) {
        self.gone(now, user, Presence::Offline);
    }

    /// A guest's memberships end with its last session.
    fn guest_gone(&mut self, now: Now, user: &str) {
        self.gone(now, user, Presence::Leave);
        self.update_room_gauge();
    }

    /// `user` is offline now: its rooms hear `presence`, and on `Leave` it is
    /// no member of them any more.
    fn gone(&mut self, now: Now, user: &str, presence_now: Presence) {
        let key = self.state.remove_online(user).map_or_else(|| user.to_string(), |o| o.key.into_string());
        self.announce_offline(now, user, presence_now == Presence::Leave);
        // Still online elsewhere in the cluster: nothing changed for others.
        let elsewhere = self.online_elsewhere(user);
        let rooms: Vec<String> = self.state.rooms_of(user);
        for room in rooms {
            if !elsewhere {
                self.deliver_to_room(&room, Some(user), false, &presence(&room, user, presence_now));
            }
            if presence_now == Presence::Leave {
                self.state.remove_member(user, &room);
                self.relay_member(&room, user, key.clone(), false);
            }
        }
    }

    // ---- the HTTP account API ---------------------------------------------

    pub(super) fn api(&mut self, now: Now, sid: SessionId, call: ApiCall, peer: IpAddr) {
        match call {
            ApiCall::Register { user, password } => {
                if let Err((f, retry)) = self.registration_problem(now, peer, &user, &password) {
                    return self.api_error(sid, f.code, &f.message, retry);
                }
                self.state.reserve(user.clone());
                let cancel = self.cancel_for(sid);
                let op = StoreOp::Register { user: user.clone(), password, cancel };
                self.store(now, op, Pending::untagged(sid, PendingKind::Api(ApiKind::Register { user })));
            }
            ApiCall::Login { user, password } if self.login_name_unknown(&user) => {
                self.find_login(now, sid, None, peer, user, password)
            }
            ApiCall::Login { user, password } => self.api_login(now, sid, peer, user, password),
            ApiCall::Logout { token } => {
                let op = StoreOp::Revoke { token: token.clone() };
                self.store(now, op, Pending::untagged(sid, PendingKind::Api(ApiKind::Logout { token })));
            }
        }
    }

    /// `POST /api/login` once the name is as known as it can be.
    pub(super) fn api_login(&mut self, now: Now, sid: SessionId, peer: IpAddr, user: String, password: String) {
        let user = self.state.canonical(user);
        let ticket = match self.limits.reserve_login(now.unix_ms, peer, &user) {
            Ok(ticket) => ticket,
            Err(retry) => {
                Metrics::add(&self.metrics.limited_logins, 1);
                let msg = format!("too many failed logins; retry in {retry} s");
                return self.api_error(sid, ErrorCode::RateLimited, &msg, Some(retry));
            }
        };
        let ttl_ms = self.config.token_ttl.as_millis() as u64;
        let cancel = self.cancel_for(sid);
        let op = StoreOp::Login { user: user.clone(), password, now_ms: now.unix_ms, ttl_ms, cancel };
        self.store(now, op, Pending::untagged(sid, PendingKind::Api(ApiKind::Login { ticket, user })));
    }

    /// What a finished HTTP register or login changes whether or not its
    /// client is still there.
    pub(super) fn settle_api(&mut self, call: &ApiKind, result: &Result<StoreValue, StoreError>) {
        match call {
            ApiKind::Register { user } => self.settle_password(&AuthKind::Register(user.clone()), result),
            // A wrong password keeps its count (see `settle_password`).
            ApiKind::Login { .. } if matches!(result, Ok(StoreValue::Rejected)) => {}
            ApiKind::Login { ticket, .. } => self.limits.release_login(ticket),
            ApiKind::Logout { .. } => {}
        }
    }

    pub(super) fn complete_api(&mut self, sid: SessionId, call: ApiKind, result: Result<StoreValue, StoreError>) {
        if let ApiKind::Register { .. } | ApiKind::Login { .. } = &call {
            self.cancels.remove(&sid);
        }
        self.settle_api(&call, &result);
        match (call, result) {
            (ApiKind::Register { .. } | ApiKind::Login { .. }, Err(StoreError::Overloaded)) => {
                self.api_error(sid, ErrorCode::Unavailable, "the server is busy; retry shortly", Some(BUSY_RETRY_S));
            }
            (ApiKind::Register { user }, result) => match result {
                Ok(StoreValue::Registered) => self.api_respond(sid, ApiResponse::registered(&user)),
                Ok(_) => self.api_error(sid, ErrorCode::NameTaken, &format!("the name {user} is taken"), None),
                Err(_) => self.api_unavailable(sid),
            },
            (ApiKind::Login { user, .. }, result) => match result {
                Ok(StoreValue::Token { token, expires_ms }) => {
                    self.api_respond(sid, ApiResponse::logged_in(&token, &user, expires_ms))
                }
                Ok(_) => self.api_error(sid, ErrorCode::InvalidCredentials, "wrong user name or password", None),
                Err(_) => self.api_unavailable(sid),
            },
            (ApiKind::Logout { token }, result) => match result {
                Ok(StoreValue::Revoked { user: Some(user) }) => {
                    self.close_token_sessions(&user, |t| t == token);
                    let token_hash = crate::store::token_hash(&token);
                    self.relay(crate::bus::Relayed::Revoked { user, token_hash });
                    self.api_respond(sid, ApiResponse::logged_out());
                }
                Ok(_) => self.api_error(sid, ErrorCode::InvalidToken, "the token is unknown", None),
                Err(_) => self.api_unavailable(sid),
            },
        }
    }

    fn api_respond(&mut self, sid: SessionId, response: ApiResponse) {
        self.push(sid.shard(), ToShardInner::Api { sid, response });
    }

    fn api_error(&mut self, sid: SessionId, code: ErrorCode, message: &str, retry_after_s: Option<u64>) {
        self.api_respond(sid, ApiResponse::error(code, message, retry_after_s));
    }

    pub(super) fn api_unavailable(&mut self, sid: SessionId) {
        self.api_error(sid, ErrorCode::Unavailable, "storage is unavailable; nothing was done", None);
    }
}

/// `Retry-After` when the password queue is full, seconds.
const BUSY_RETRY_S: u64 = 1;

pub(super) fn busy() -> Failure {
    Failure::new(ErrorCode::Unavailable, "the server is busy; retry shortly")
}

fn too_many(what: &str, retry: u64) -> Failure {
    Failure::new(ErrorCode::RateLimited, format!("too many {what}; retry in {retry} s"))
}
