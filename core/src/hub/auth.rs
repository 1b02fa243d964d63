//! Who a session is: `hello`, line logins, the welcome sequence, the HTTP
//! account API, the failed-login limit, and the end of a session.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use super::encode::{presence, LineAck, Presence};
use super::pending::{AuthKind, Pending};
use super::state::{InboxRead, Online, Phase, SessionInfo};
use super::{unavailable, Hub};
use crate::ids::{is_valid_name, SessionId};
use crate::link::{ApiCall, ApiResponse, Auth, HubClose, Tag, ToShardInner};
use crate::reply::{ErrorCode, Failure, Reply, RoomMark};
use crate::store::{StoreError, StoreOp, StoreValue};
use crate::time::Now;

const LOGIN_WINDOW_MS: u64 = 60_000;

impl Hub {
    pub(super) fn hello(&mut self, now: Now, sid: SessionId, tag: Tag, auth: Auth, line: bool, peer: IpAddr) {
        let info = self.state.sessions.entry(sid).or_insert_with(|| {
            Box::new(SessionInfo {
                peer,
                line,
                phase: Phase::New,
                inbox: InboxRead::Done,
                held_echoes: Vec::new(),
                replaying: Vec::new(),
                queries: None,
            })
        });
        if info.phase != Phase::New {
            let f = Failure::new(ErrorCode::AlreadyAuthenticated, "this session has said hello already");
            return self.reply(sid, tag, Err(f));
        }
        match auth {
            Auth::Token(token) => {
                self.set_phase(sid, Phase::Welcoming);
                let op = StoreOp::CheckToken { token: token.clone(), now_ms: now.unix_ms };
                self.store(now, op, Pending::Authenticate { sid, tag, how: AuthKind::Token(token) });
            }
            Auth::Guest(name) => match self.guest_name_problem(&name) {
                Some(f) => self.reply(sid, tag, Err(f)),
                None => self.welcome_guest(sid, tag, name, None),
            },
            Auth::Resume { name, resume } => match self.guest_name_problem_for_resume(&name, &resume) {
                Err(f) => self.reply(sid, tag, Err(f)),
                Ok(key) => self.welcome_guest(sid, tag, name, key),
            },
            Auth::Password { user, password } => {
                if let Some(retry) = self.login_limited(now, peer) {
                    let f = Failure::new(ErrorCode::RateLimited, format!("too many failed logins; retry in {retry} s"));
                    return self.reply(sid, tag, Err(f));
                }
                self.set_phase(sid, Phase::Welcoming);
                let op = StoreOp::Verify { user: user.clone(), password };
                self.store(now, op, Pending::Authenticate { sid, tag, how: AuthKind::Password(user) });
            }
            Auth::Register { user, password } => {
                if let Some(f) = self.registration_problem(&user, &password) {
                    return self.reply(sid, tag, Err(f));
                }
                self.set_phase(sid, Phase::Welcoming);
                self.state.reserved.insert(user.clone());
                let op = StoreOp::Register { user: user.clone(), password };
                self.store(now, op, Pending::Authenticate { sid, tag, how: AuthKind::Register(user) });
            }
        }
    }

    fn set_phase(&mut self, sid: SessionId, phase: Phase) {
        if let Some(info) = self.state.sessions.get_mut(&sid) {
            info.phase = phase;
        }
    }

    pub(super) fn guest_name_problem(&self, name: &str) -> Option<Failure> {
        if self.config.no_guests {
            return Some(Failure::new(ErrorCode::GuestsDisabled, "this server does not accept guests; log in"));
        }
        if !is_valid_name(name) {
            return Some(Failure::new(ErrorCode::BadName, "names have 1 to 32 of A-Z a-z 0-9 _ - ."));
        }
        if self.name_in_use(name) {
            return Some(Failure::new(ErrorCode::NameTaken, format!("the name {name} is taken")));
        }
        None
    }

    fn name_in_use(&self, name: &str) -> bool {
        self.state.registered.contains(name)
            || self.state.reserved.contains(name)
            || self.state.online.contains_key(name)
    }

    fn registration_problem(&self, user: &str, password: &str) -> Option<Failure> {
        if !is_valid_name(user) {
            return Some(Failure::new(ErrorCode::BadName, "names have 1 to 32 of A-Z a-z 0-9 _ - ."));
        }
        if !(8..=1024).contains(&password.chars().count()) {
            return Some(Failure::new(ErrorCode::BadRequest, "a password has 8 to 1024 characters"));
        }
        if self.name_in_use(user) {
            return Some(Failure::new(ErrorCode::NameTaken, format!("the name {user} is taken")));
        }
        None
    }

    /// Marks the session welcomed; returns whether it is a line session.
    pub(super) fn set_welcomed(&mut self, sid: SessionId, user: &str, token: Option<String>) -> bool {
        match self.state.sessions.get_mut(&sid) {
            Some(info) => {
                info.phase = Phase::Welcomed { user: user.to_string(), token };
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
        if let AuthKind::Register(user) = &how {
            self.state.reserved.remove(user);
            if result == Ok(StoreValue::Registered) {
                self.state.registered.insert(user.clone());
            }
        }
        if !self.state.sessions.contains_key(&sid) {
            return;
        }
        let outcome = match (how, result) {
            (AuthKind::Token(token), Ok(StoreValue::TokenUser { user, expires_ms })) => {
                Ok((user, Some(token), Some(expires_ms)))
            }
            (AuthKind::Password(user), Ok(StoreValue::Verified))
            | (AuthKind::Register(user), Ok(StoreValue::Registered)) => Ok((user, None, None)),
            (AuthKind::Token(_), Ok(_)) => {
                Err(Failure::new(ErrorCode::InvalidToken, "the token is unknown, expired or revoked"))
            }
            (AuthKind::Password(_), Ok(_)) => {
                let peer = self.state.sessions[&sid].peer;
                self.login_failed(now, peer);
                Err(Failure::new(ErrorCode::InvalidCredentials, "wrong user name or password"))
            }
            (AuthKind::Register(user), Ok(_)) => {
                Err(Failure::new(ErrorCode::NameTaken, format!("the name {user} is taken")))
            }
            (_, Err(_)) => Err(unavailable()),
        };
        match outcome {
            Ok((user, token, expires_ms)) => {
                let op = StoreOp::ReadMarks { user: user.clone() };
                self.store(now, op, Pending::Welcome { sid, tag, user, token, expires_ms });
            }
            Err(f) => {
                if let Some(info) = self.state.sessions.get_mut(&sid) {
                    info.phase = Phase::New;
                }
                self.reply(sid, tag, Err(f));
            }
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
        let Some(info) = self.state.sessions.get_mut(&sid) else { return };
        let marks = match result {
            Ok(StoreValue::ReadMarks { marks }) => marks,
            _ => {
                info.phase = Phase::New;
                return self.reply(sid, tag, Err(unavailable()));
            }
        };
        if self.state.online.get(&user).is_some_and(|o| o.guest) {
            // A guest took the name while the account did not exist yet.
            info.phase = Phase::New;
            let f = Failure::new(ErrorCode::NameTaken, format!("a guest is online as {user}"));
            return self.reply(sid, tag, Err(f));
        }
        info.inbox = InboxRead::Reading;
        let line = self.set_welcomed(sid, &user, token);
        let online = self.state.add_online(&user, Online { key: user.clone(), guest: false, sessions: Vec::new() });
        let first = online.sessions.is_empty();
        online.sessions.push(sid);
        let rooms: Vec<String> = self.state.memberships.get(&user).cloned().unwrap_or_default();
        if first {
            for room in &rooms {
                let targets = self.room_sessions(room, Some(&user), false);
                self.deliver(&targets, &presence(room, &user, Presence::Online));
            }
        }
        let rooms = rooms
            .into_iter()
            .map(|room| {
                let read = marks.iter().find(|(r, _)| *r == room).map_or(0, |(_, n)| *n);
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
        self.read_inbox(now, sid, 0);
    }

    /// A line session wrote a private message: the store learns it was
    /// received, so it is not delivered again.
    pub(super) fn line_ack(&mut self, now: Now, sid: SessionId, ack: &LineAck) {
        let op = StoreOp::Ack { user: ack.user.clone(), with: ack.with.clone(), seq: ack.seq };
        self.store(now, op, Pending::Ack { sid, tag: None });
    }

    /// A session ended: presence for its user's last session, and a guest's
    /// memberships end with it.
    pub(super) fn closed(&mut self, sid: SessionId) {
        let Some(info) = self.state.sessions.remove(&sid) else { return };
        let Phase::Welcomed { user, .. } = info.phase else { return };
        self.count_session(info.line, -1);
        let Some(online) = self.state.online.get_mut(&user) else { return };
        online.sessions.retain(|s| *s != sid);
        if !online.sessions.is_empty() {
            return;
        }
        let guest = online.guest;
        self.state.remove_online(&user);
        let rooms: Vec<String> = self.state.memberships.get(&user).cloned().unwrap_or_default();
        for room in rooms {
            if guest {
                let targets = self.room_sessions(&room, Some(&user), false);
                self.deliver(&targets, &presence(&room, &user, Presence::Leave));
                self.state.remove_member(&user, &room);
            } else {
                let targets = self.room_sessions(&room, Some(&user), false);
                self.deliver(&targets, &presence(&room, &user, Presence::Offline));
            }
        }
        if guest {
            self.update_room_gauge();
        }
    }

    // ---- the HTTP account API ---------------------------------------------

    pub(super) fn api(&mut self, now: Now, sid: SessionId, call: ApiCall, peer: IpAddr) {
        match call {
            ApiCall::Register { user, password } => {
                if let Some(f) = self.registration_problem(&user, &password) {
                    let (status, code) = match f.code {
                        ErrorCode::NameTaken => (409, "name_taken"),
                        ErrorCode::BadName => (400, "bad_name"),
                        _ => (400, "bad_password"),
                    };
                    return self.api_error(sid, status, code, &f.message, None);
                }
                self.state.reserved.insert(user.clone());
                let op = StoreOp::Register { user: user.clone(), password };
                self.store(now, op, Pending::ApiRegister { sid, user });
            }
            ApiCall::Login { user, password } => {
                if let Some(retry) = self.login_limited(now, peer) {
                    let msg = format!("too many failed logins; retry in {retry} s");
                    return self.api_error(sid, 429, "rate_limited", &msg, Some(retry));
                }
                let ttl_ms = self.config.token_ttl.as_millis() as u64;
                let op = StoreOp::Login { user: user.clone(), password, now_ms: now.unix_ms, ttl_ms };
                self.store(now, op, Pending::ApiLogin { sid, peer, user });
            }
            ApiCall::Logout { token } => {
                self.store(now, StoreOp::Revoke { token: token.clone() }, Pending::ApiLogout { sid, token });
            }
        }
    }

    pub(super) fn complete_api(&mut self, now: Now, pending: Pending, result: Result<StoreValue, StoreError>) {
        match (pending, result) {
            (Pending::ApiRegister { sid, user }, result) => {
                self.state.reserved.remove(&user);
                match result {
                    Ok(StoreValue::Registered) => {
                        self.state.registered.insert(user.clone());
                        self.api_json(sid, 201, json!({ "user": user }));
                    }
                    Ok(_) => self.api_error(sid, 409, "name_taken", &format!("the name {user} is taken"), None),
                    Err(_) => self.api_unavailable(sid),
                }
            }
            (Pending::ApiLogin { sid, peer, user }, result) => match result {
                Ok(StoreValue::Token { token, expires_ms }) => {
                    self.api_json(sid, 200, json!({ "token": token, "user": user, "expires_ms": expires_ms }))
                }
                Ok(_) => {
                    self.login_failed(now, peer);
                    self.api_error(sid, 401, "invalid_credentials", "wrong user name or password", None);
                }
                Err(_) => self.api_unavailable(sid),
            },
            (Pending::ApiLogout { sid, token }, result) => match result {
                Ok(StoreValue::Revoked { user: Some(user) }) => {
                    for s in self.sessions_of(&user) {
                        let same = matches!(&self.state.sessions.get(&s).map(|i| &i.phase),
                            Some(Phase::Welcomed { token: Some(t), .. }) if *t == token);
                        if same {
                            self.push(s.shard(), ToShardInner::Close { sid: s, reason: HubClose::TokenRevoked });
                        }
                    }
                    self.push(
                        sid.shard(),
                        ToShardInner::Api {
                            sid,
                            response: ApiResponse { status: 204, body: Vec::new(), retry_after_s: None },
                        },
                    );
                }
                Ok(_) => self.api_error(sid, 401, "invalid_token", "the token is unknown", None),
                Err(_) => self.api_unavailable(sid),
            },
            _ => {}
        }
    }

    fn api_json(&mut self, sid: SessionId, status: u16, body: serde_json::Value) {
        let body = serde_json::to_vec(&body).unwrap_or_default();
        self.push(sid.shard(), ToShardInner::Api { sid, response: ApiResponse { status, body, retry_after_s: None } });
    }

    fn api_error(&mut self, sid: SessionId, status: u16, code: &str, message: &str, retry_after_s: Option<u64>) {
        let body = serde_json::to_vec(&json!({ "error": code, "message": message })).unwrap_or_default();
        self.push(sid.shard(), ToShardInner::Api { sid, response: ApiResponse { status, body, retry_after_s } });
    }

    pub(super) fn api_unavailable(&mut self, sid: SessionId) {
        self.api_error(sid, 503, "unavailable", "storage is unavailable; nothing was done", None);
    }

    // ---- failed-login limit -------------------------------------------------

    /// `Some(seconds to wait)` when `peer` used up its failed logins.
    fn login_limited(&self, now: Now, peer: IpAddr) -> Option<u64> {
        let &(start, count) = self.login_failures.get(&peer)?;
        let end = start + LOGIN_WINDOW_MS;
        (now.unix_ms < end && count >= self.config.login_rate).then(|| (end - now.unix_ms).div_ceil(1000).max(1))
    }

    fn login_failed(&mut self, now: Now, peer: IpAddr) {
        if self.login_failures.len() > 100_000 {
            // Bounded: forget windows that are over.
            self.login_failures.retain(|_, (start, _)| now.unix_ms < *start + LOGIN_WINDOW_MS);
        }
        let entry = self.login_failures.entry(peer).or_insert((now.unix_ms, 0));
        if now.unix_ms >= entry.0 + LOGIN_WINDOW_MS {
            *entry = (now.unix_ms, 0);
        }
        entry.1 += 1;
    }
}
