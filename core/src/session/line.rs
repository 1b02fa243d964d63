//! The line protocol: a first line that logs in, then text and `/commands`.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use super::{Ctx, Login, Phase, Session};
use crate::link::{Auth, LineCommand, Tag, ToHubInner};
use crate::render::reply::{error_line, reply_lines};
use crate::render::CloseReason;
use crate::render::{ErrorCode, Failure, Reply};
use crate::transport::line::Line;
use crate::transport::request::{ClientRequest, Target};

const HELP: &str = "* commands: /join ROOM, /leave [ROOM], /msg USER text, /who, /rooms, /history [N], /quit; other lines go to the current room\n* end\n";
const LOBBY: &str = "lobby";

impl Session {
    pub(super) fn process_line(&mut self, ctx: &mut Ctx<'_>, buf: &[u8]) -> usize {
        let Phase::Line { reader, .. } = &mut self.phase else { return 0 };
        let (used, line) = reader.next_line(buf, ctx.config.max_line);
        match line {
            None => {}
            Some(Line::TooLong) => {
                let max = ctx.config.max_line;
                self.send_line_error(ctx, ErrorCode::TooLong, &format!("lines are limited to {max} bytes; dropped"));
            }
            Some(Line::Text(bytes)) => match std::str::from_utf8(bytes) {
                Ok(text) => {
                    let text = text.trim();
                    if !text.is_empty() {
                        let text = text.to_string();
                        self.line_command(ctx, &text);
                    }
                }
                Err(_) => self.send_line_error(ctx, ErrorCode::BadJson, "lines must be UTF-8 text"),
            },
        }
        used
    }

    fn send_line_error(&mut self, ctx: &mut Ctx<'_>, code: ErrorCode, message: &str) {
        self.send(ctx, error_line(&Failure::new(code, message)));
    }

    fn line_login(&self) -> Login {
        match self.phase {
            Phase::Line { login, .. } => login,
            _ => Login::Welcomed,
        }
    }

    /// Whether lines are commands: the login was answered `ok`.
    fn logged_in(&self) -> bool {
        matches!(self.line_login(), Login::Answered | Login::Welcomed)
    }

    fn set_line_login(&mut self, to: Login) {
        if let Phase::Line { login, .. } = &mut self.phase {
            *login = to;
        }
    }

    fn current_room(&mut self) -> &mut Option<String> {
        match &mut self.phase {
            Phase::Line { current, .. } => current,
            _ => unreachable!("line commands only run in the line phase"),
        }
    }

    fn line_command(&mut self, ctx: &mut Ctx<'_>, text: &str) {
        if !self.logged_in() {
            return self.first_line(ctx, text);
        }
        ctx.metrics.messages_received.fetch_add(1, Relaxed);
        if !self.rate.allow(ctx.now.instant, ctx.config.rate, ctx.config.burst) {
            ctx.metrics.rate_limited.fetch_add(1, Relaxed);
            let rate = ctx.config.rate;
            return self.send_line_error(
                ctx,
                ErrorCode::RateLimited,
                &format!("more than {rate} lines a second; dropped"),
            );
        }
        let Some((cmd, request)) = self.line_request(ctx, text) else { return };
        // `/join` and `/leave` may wait for storage: hold later lines until
        // they are answered, so that text goes to the room the user expects.
        if matches!(cmd, LineCommand::Join { .. } | LineCommand::Leave(_)) {
            self.paused = true;
        }
        ctx.to_hub.push(ToHubInner::Request { sid: self.id, tag: Tag::Line(cmd), request });
    }

    /// What a line asks of the hub; `None` when it was answered here.
    fn line_request(&mut self, ctx: &mut Ctx<'_>, text: &str) -> Option<(LineCommand, ClientRequest)> {
        let Some(command) = text.strip_prefix('/') else { return self.say(ctx, text) };
        let (command, rest) = command.split_once(' ').map_or((command, ""), |(c, r)| (c, r.trim()));
        let usage = |s: &str| error_line(&Failure::new(ErrorCode::BadRequest, format!("usage: {s}")));
        let answered = match command {
            "quit" => {
                self.close(ctx, CloseReason::Peer);
                return None;
            }
            "help" => Bytes::from_static(HELP.as_bytes()),
            "join" if !rest.is_empty() && !rest.contains(' ') => {
                let previous = self.current_room().replace(rest.to_string());
                let request = ClientRequest::Join { room: rest.to_string(), since: None };
                return Some((LineCommand::Join { room: rest.to_string(), previous }, request));
            }
            "join" => usage("/join ROOM"),
            "leave" => {
                let room = if rest.is_empty() { self.current_room().clone() } else { Some(rest.to_string()) };
                match room {
                    Some(room) => return Some((LineCommand::Leave(room.clone()), ClientRequest::Leave { room })),
                    None => usage("/leave ROOM"),
                }
            }
            "msg" => match rest.split_once(' ') {
                Some((user, text)) if !text.trim().is_empty() => {
                    let to = Target::User(user.to_string());
                    return Some((
                        LineCommand::Msg,
                        ClientRequest::Send { to, text: text.trim().to_string(), id: None },
                    ));
                }
                _ => usage("/msg USER text"),
            },
            "who" => {
                let room = self.current_room().clone();
                return Some((LineCommand::Who, ClientRequest::Who { room, limit: Some(1000) }));
            }
            "rooms" => return Some((LineCommand::Rooms, ClientRequest::Rooms { limit: None })),
            "history" => return self.history_request(ctx, rest),
            other => error_line(&Failure::new(ErrorCode::UnknownType, format!("unknown command /{other}; try /help"))),
        };
        self.send(ctx, answered);
        None
    }

    /// A line that is no command: text for the current room.
    fn say(&mut self, ctx: &mut Ctx<'_>, text: &str) -> Option<(LineCommand, ClientRequest)> {
        let Some(room) = self.current_room().clone() else {
            self.send_line_error(ctx, ErrorCode::NotMember, "you are in no room; /join ROOM first");
            return None;
        };
        Some((LineCommand::Say, ClientRequest::Send { to: Target::Room(room), text: text.to_string(), id: None }))
    }

    /// `/history [N]`, of the current room.
    fn history_request(&mut self, ctx: &mut Ctx<'_>, rest: &str) -> Option<(LineCommand, ClientRequest)> {
        let limit = if rest.is_empty() { Some(20) } else { rest.parse::<u64>().ok() };
        match (limit, self.current_room().clone()) {
            (None, _) => {
                let f = Failure::new(ErrorCode::BadRequest, "usage: /history [N]");
                self.send(ctx, error_line(&f));
                None
            }
            (_, None) => {
                self.send_line_error(ctx, ErrorCode::NotMember, "you are in no room; /join ROOM first");
                None
            }
            (Some(n), Some(room)) => {
                let request = ClientRequest::History { of: Target::Room(room), before: None, limit: Some(n) };
                Some((LineCommand::History, request))
            }
        }
    }

    /// `NICK`, `/login USER PASSWORD` or `/register USER PASSWORD`.
    fn first_line(&mut self, ctx: &mut Ctx<'_>, text: &str) {
        if self.line_login() == Login::Pending {
            return;
        }
        let mut words = text.split_whitespace();
        let auth = match (words.next(), words.next(), words.next(), words.next()) {
            (Some("/quit"), None, _, _) => return self.close(ctx, CloseReason::Peer),
            (Some("/login"), Some(user), Some(password), None) => {
                Auth::Password { user: user.to_string(), password: password.to_string() }
            }
            (Some("/register"), Some(user), Some(password), None) => {
                Auth::Register { user: user.to_string(), password: password.to_string() }
            }
            (Some(first), ..) if first.starts_with('/') => {
                let f = Failure::new(
                    ErrorCode::BadRequest,
                    "start with a nickname, /login USER PASSWORD or /register USER PASSWORD",
                );
                return self.send(ctx, error_line(&f));
            }
            (Some(nick), None, ..) => Auth::Guest(nick.to_string()),
            _ => {
                let f = Failure::new(ErrorCode::BadName, "a nickname is one word of A-Z a-z 0-9 _ - .");
                return self.send(ctx, error_line(&f));
            }
        };
        self.set_line_login(Login::Pending);
        self.paused = true;
        ctx.to_hub.push(ToHubInner::Hello {
            sid: self.id,
            tag: Tag::Line(LineCommand::Login),
            auth,
            line: true,
            peer: self.peer,
        });
    }

    pub(super) fn line_reply(&mut self, ctx: &mut Ctx<'_>, cmd: LineCommand, result: &Result<Reply, Failure>) {
        match (&cmd, result) {
            (LineCommand::Login, Ok(_)) => {
                // The hub's `Welcomed` follows this answer; it is never first.
                if self.line_login() != Login::Welcomed {
                    self.set_line_login(Login::Answered);
                }
                // PROTOCOL.md: the server makes the user a member of `lobby`
                // and makes it current. Lines wait until that is done. (The
                // room is taken before sending: a slow-consumer close would
                // end the line phase.)
                let previous = self.current_room().replace(LOBBY.to_string());
                self.send(ctx, reply_lines(result));
                let tag = Tag::Line(LineCommand::Join { room: LOBBY.to_string(), previous });
                let request = ClientRequest::Join { room: LOBBY.to_string(), since: None };
                ctx.to_hub.push(ToHubInner::Request { sid: self.id, tag, request });
                return;
            }
            (LineCommand::Login, Err(_)) => self.set_line_login(Login::Anonymous),
            (LineCommand::Join { room, previous }, Err(_)) => {
                let current = self.current_room();
                if current.as_deref() == Some(room.as_str()) {
                    *current = previous.clone();
                }
            }
            (LineCommand::Leave(room), Ok(_)) => {
                let current = self.current_room();
                if current.as_deref() == Some(room.as_str()) {
                    *current = None;
                }
            }
            _ => {}
        }
        self.send(ctx, reply_lines(result));
        // Only the answer that paused decoding resumes it: replies to
        // earlier lines may still arrive in between.
        let pausing = matches!(cmd, LineCommand::Login | LineCommand::Join { .. } | LineCommand::Leave(_));
        if self.paused && pausing {
            self.resume(ctx);
        }
    }
}
