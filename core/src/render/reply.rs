//! Answers to requests, typed, and their two renderings: a JSON frame for
//! WebSocket, text lines for the line protocol.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::error::Failure;
use super::event::{message_json, message_line, one_line};
use crate::store::StoredMessage;

/// What `since` replay could do, carried by a join's `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovery {
    pub(crate) recovered: bool,
    pub(crate) oldest: Option<u64>,
}

/// A room in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomMark {
    pub(crate) room: String,
    pub(crate) seq: u64,
    pub(crate) read: u64,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Welcome {
        user: String,
        guest: bool,
        session: String,
        heartbeat_s: u64,
        rooms: Vec<RoomMark>,
        /// A guest's secret for coming back as itself (`hub/guest.rs`).
        resume: Option<String>,
    },
    Joined {
        room: String,
        seq: u64,
        members: usize,
        recovery: Option<Recovery>,
    },
    Sent {
        seq: u64,
    },
    /// Messages of a room (`room` set) or a conversation, oldest first.
    History {
        room: Option<String>,
        messages: Vec<StoredMessage>,
    },
    Users(Vec<(String, bool)>),
    Rooms(Vec<(String, usize)>),
    Conversations(Vec<(String, u64, u64)>),
    Pong,
    /// `leave`, `read`, `typing`, `ack`.
    Done,
}

/// A `send`'s `ok`, its keys in the order a JSON object writes them.
#[derive(serde::Serialize)]
struct SentJson<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    seq: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The WebSocket frame payload answering a request.
pub(crate) fn reply_json(reference: Option<&str>, kind: &str, result: &Result<Reply, Failure>) -> Vec<u8> {
    if let Ok(Reply::Sent { seq }) = result {
        // The one answer sent per message: straight to bytes, no tree.
        return serde_json::to_vec(&SentJson { reference, seq: *seq, kind: "ok" }).unwrap_or_default();
    }
    let mut o = Map::new();
    let reply = match result {
        Err(f) => {
            o.insert("type".into(), "error".into());
            if let Some(r) = reference {
                o.insert("ref".into(), r.into());
            } else {
                o.insert("request".into(), kind.into());
            }
            o.insert("code".into(), f.code.as_str().into());
            o.insert("message".into(), f.message.clone().into());
            return serde_json::to_vec(&Value::Object(o)).unwrap_or_default();
        }
        Ok(reply) => reply,
    };
    let kind = match reply {
        Reply::Welcome { .. } => "welcome",
        Reply::Pong => "pong",
        _ => "ok",
    };
    o.insert("type".into(), kind.into());
    if let Some(r) = reference {
        o.insert("ref".into(), r.into());
    }
    match reply {
        Reply::Welcome { user, guest, session, heartbeat_s, rooms, resume } => {
            o.insert("user".into(), user.clone().into());
            o.insert("guest".into(), (*guest).into());
            o.insert("session".into(), session.clone().into());
            o.insert("heartbeat_s".into(), (*heartbeat_s).into());
            let rooms: Vec<Value> =
                rooms.iter().map(|r| json!({"room": r.room, "seq": r.seq, "read": r.read})).collect();
            o.insert("rooms".into(), rooms.into());
            if let Some(resume) = resume {
                o.insert("resume".into(), resume.clone().into());
            }
        }
        Reply::Joined { room, seq, members, recovery } => {
            o.insert("room".into(), room.clone().into());
            o.insert("seq".into(), (*seq).into());
            o.insert("members".into(), (*members).into());
            if let Some(r) = recovery {
                o.insert("recovered".into(), r.recovered.into());
                if let Some(oldest) = r.oldest {
                    o.insert("oldest".into(), oldest.into());
                }
            }
        }
        Reply::Sent { seq } => {
            o.insert("seq".into(), (*seq).into());
        }
        Reply::History { room, messages } => {
            let list: Vec<Value> = messages.iter().map(|m| message_json(room.as_deref(), m)).collect();
            o.insert("messages".into(), list.into());
        }
        Reply::Users(users) => {
            let list: Vec<Value> = users.iter().map(|(u, on)| json!({"user": u, "online": on})).collect();
            o.insert("users".into(), list.into());
        }
        Reply::Rooms(rooms) => {
            let list: Vec<Value> = rooms.iter().map(|(r, n)| json!({"room": r, "members": n})).collect();
            o.insert("rooms".into(), list.into());
        }
        Reply::Conversations(list) => {
            let list: Vec<Value> = list.iter().map(|(w, s, r)| json!({"with": w, "seq": s, "read": r})).collect();
            o.insert("conversations".into(), list.into());
        }
        Reply::Pong | Reply::Done => {}
    }
    serde_json::to_vec(&Value::Object(o)).unwrap_or_default()
}

/// A line-protocol error line.
pub(crate) fn error_line(f: &Failure) -> Bytes {
    Bytes::from(format!("! {} {}\n", f.code.line_code(), one_line(&f.message)))
}

/// Lines answering a request on the line protocol (empty: nothing to say).
pub(crate) fn reply_lines(result: &Result<Reply, Failure>) -> Bytes {
    let reply = match result {
        Err(f) => return error_line(f),
        Ok(r) => r,
    };
    let mut out = String::new();
    match reply {
        Reply::Welcome { user, .. } => out.push_str(&format!("* welcome {user}\n")),
        Reply::Joined { room, members, .. } => out.push_str(&format!("* you are in {room} ({members} members)\n")),
        Reply::History { room, messages } => {
            for m in messages {
                out.push_str(&String::from_utf8_lossy(&message_line(room.as_deref(), m)));
            }
            out.push_str("* end\n");
        }
        Reply::Users(users) => {
            for (u, online) in users {
                if *online {
                    out.push_str(&format!("* {u} (online)\n"));
                } else {
                    out.push_str(&format!("* {u}\n"));
                }
            }
            out.push_str("* end\n");
        }
        Reply::Rooms(rooms) => {
            for (r, n) in rooms {
                out.push_str(&format!("* {r} {n}\n"));
            }
            out.push_str("* end\n");
        }
        Reply::Conversations(list) => {
            for (w, s, r) in list {
                out.push_str(&format!("* {w} {s} {r}\n"));
            }
            out.push_str("* end\n");
        }
        Reply::Pong => out.push_str("* pong\n"),
        Reply::Sent { .. } | Reply::Done => {}
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::error::ErrorCode;

    #[test]
    fn a_sends_ok_has_the_bytes_a_json_object_had() {
        let ok = Ok(Reply::Sent { seq: 7 });
        assert_eq!(reply_json(Some("r1"), "send", &ok), br#"{"ref":"r1","seq":7,"type":"ok"}"#);
        assert_eq!(reply_json(None, "send", &ok), br#"{"seq":7,"type":"ok"}"#);
    }

    #[test]
    fn errors_carry_ref_or_request() {
        let f = Err(Failure::new(ErrorCode::NotMember, "join first"));
        let with_ref: Value = serde_json::from_slice(&reply_json(Some("r1"), "send", &f)).unwrap();
        assert_eq!(with_ref, json!({"type":"error","ref":"r1","code":"not_member","message":"join first"}));
        let without: Value = serde_json::from_slice(&reply_json(None, "send", &f)).unwrap();
        assert_eq!(without, json!({"type":"error","request":"send","code":"not_member","message":"join first"}));
        assert_eq!(&error_line(&Failure::new(ErrorCode::TooLong, "a\nb"))[..], b"! too_long a b\n");
    }

    #[test]
    fn line_replies_show_control_characters_from_users() {
        // An error that quotes what the user typed.
        let f = Failure::new(ErrorCode::UnknownType, "unknown command /x\u{1b}[2J; try /help");
        assert_eq!(&error_line(&f)[..], b"! unknown_type unknown command /x^[[2J; try /help\n");
        let m = StoredMessage {
            seq: 1,
            from: "eve".into(),
            to: None,
            sender: "eve".into(),
            text: "\u{7}\u{85}\u{2029}".into(),
            client_id: None,
            ts: 0,
        };
        let history = reply_lines(&Ok(Reply::History { room: Some("r".into()), messages: vec![m] }));
        assert_eq!(&history[..], b"[r] eve: ^G\\u0085\\u2029\n* end\n");
    }

    #[test]
    fn ok_replies_render_their_fields() {
        let joined = Ok(Reply::Joined {
            room: "lobby".into(),
            seq: 4,
            members: 2,
            recovery: Some(Recovery { recovered: false, oldest: Some(2) }),
        });
        let v: Value = serde_json::from_slice(&reply_json(Some("j"), "join", &joined)).unwrap();
        assert_eq!(v, json!({"type":"ok","ref":"j","room":"lobby","seq":4,"members":2,"recovered":false,"oldest":2}));
        let pong: Value = serde_json::from_slice(&reply_json(None, "ping", &Ok(Reply::Pong))).unwrap();
        assert_eq!(pong, json!({"type":"pong"}));
        let users = Ok(Reply::Users(vec![("a".into(), true), ("b".into(), false)]));
        assert_eq!(&reply_lines(&users)[..], b"* a (online)\n* b\n* end\n");
        assert_eq!(&reply_lines(&Ok(Reply::Rooms(vec![("lobby".into(), 3)])))[..], b"* lobby 3\n* end\n");
    }

    #[test]
    fn a_line_error_prints_the_line_code() {
        // A short password: `bad_password` over HTTP, `bad_request` as the
        // line port's `/register` has always said.
        let f = Failure::new(ErrorCode::BadPassword, "a password has 8 to 1024 characters");
        assert_eq!(&error_line(&f)[..], b"! bad_request a password has 8 to 1024 characters\n");
        let v: Value = serde_json::from_slice(&reply_json(None, "hello", &Err(f))).unwrap();
        assert_eq!(v["code"], "bad_password");
    }
}
