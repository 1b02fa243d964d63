//! Events, encoded once per transport. Every recipient gets a clone of the
//! same `Bytes`: a refcount bump, never a copy or a re-encoding.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use crate::store::StoredMessage;
use crate::transport::ws::text_frame;

/// One event in both wire forms. An empty `line` means line-protocol
/// sessions are not told (typing, read marks, online and offline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub(crate) ws: Bytes,
    pub(crate) line: Bytes,
    /// For a private message to a registered user: what a line session
    /// acknowledges once it has written the line (PROTOCOL.md: "a line
    /// session acknowledges what it was sent").
    pub(crate) ack: Option<Arc<LineAck>>,
}

/// An acknowledgement a line session owes the store for a private message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineAck {
    /// The recipient's principal.
    pub(crate) user: String,
    /// The sender's principal.
    pub(crate) with: String,
    pub(crate) seq: u64,
}

impl Encoded {
    fn new(json: &Value, line: String) -> Encoded {
        Encoded { ws: text_frame(&serde_json::to_vec(json).unwrap_or_default()), line: Bytes::from(line), ack: None }
    }

    /// The bytes for a session on the line port (`line`) or a WebSocket.
    pub(crate) fn for_transport(&self, line: bool) -> &Bytes {
        if line {
            &self.line
        } else {
            &self.ws
        }
    }
}

/// Text from users fit for one protocol line: line breaks become spaces and
/// control characters are shown, not sent (see `visible_line`).
pub(crate) fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    crate::transport::line::visible_line(s)
}

/// A room `message` or a `private` as a JSON object.
pub(crate) fn message_json(room: Option<&str>, m: &StoredMessage) -> Value {
    serde_json::to_value(MessageJson::of(room, m)).unwrap_or_default()
}

/// A message event as its frame carries it, serialised straight from the
/// stored message: a live message is rendered once per room and the frame
/// shared by every delivery, and building a `Value` tree first was half of
/// the hub's work per message. The fields are in the order a `Value`
/// object wrote them (alphabetical), so the bytes are the same as before.
#[derive(Serialize)]
struct MessageJson<'a> {
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    seq: u64,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    ts: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

impl<'a> MessageJson<'a> {
    fn of(room: Option<&'a str>, m: &'a StoredMessage) -> MessageJson<'a> {
        MessageJson {
            from: &m.from,
            id: m.client_id.as_deref(),
            room,
            seq: m.seq,
            text: &m.text,
            to: room.is_none().then(|| m.to.as_deref().unwrap_or_default()),
            ts: m.ts,
            kind: if room.is_some() { "message" } else { "private" },
        }
    }

    fn frame(&self) -> Bytes {
        text_frame(&serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A message as the line protocol shows it.
pub(crate) fn message_line(room: Option<&str>, m: &StoredMessage) -> Bytes {
    let text = one_line(&m.text);
    Bytes::from(match room {
        Some(room) => format!("[{room}] {}: {text}\n", m.from),
        None => format!("[pm] {}: {text}\n", m.from),
    })
}

pub(crate) fn room_message(room: &str, m: &StoredMessage) -> Encoded {
    let ws = MessageJson::of(Some(room), m).frame();
    Encoded { ws, line: message_line(Some(room), m), ack: None }
}

/// A private message, as its recipient sees it and as the sender's other
/// sessions see their own message (the line form names the recipient).
/// `recipient` is the recipient's principal when it is a registered user,
/// whose line sessions acknowledge the message once written.
pub(crate) fn private_message(m: &StoredMessage, recipient: Option<&str>) -> (Encoded, Encoded) {
    let ws = MessageJson::of(None, m).frame();
    let to = m.to.as_deref().unwrap_or_default();
    let echo_line = Bytes::from(format!("[pm to {to}] {}: {}\n", m.from, one_line(&m.text)));
    let ack = recipient.map(|user| Arc::new(LineAck { user: user.to_string(), with: m.sender.clone(), seq: m.seq }));
    (Encoded { ws: ws.clone(), line: message_line(None, m), ack }, Encoded { ws, line: echo_line, ack: None })
}

/// `presence` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    Join,
    Leave,
    Online,
    Offline,
}

pub(crate) fn presence(room: &str, user: &str, state: Presence) -> Encoded {
    let (word, line) = match state {
        Presence::Join => ("join", format!("* {user} joined {room}\n")),
        Presence::Leave => ("leave", format!("* {user} left {room}\n")),
        Presence::Online => ("online", String::new()),
        Presence::Offline => ("offline", String::new()),
    };
    Encoded::new(&json!({"type":"presence","room":room,"user":user,"state":word}), line)
}

pub(crate) fn typing_in_room(room: &str, user: &str) -> Encoded {
    Encoded::new(&json!({"type":"typing","room":room,"user":user}), String::new())
}

pub(crate) fn typing_to_user(user: &str, to: &str) -> Encoded {
    Encoded::new(&json!({"type":"typing","user":user,"to":to}), String::new())
}

/// A read mark set by another session of the same user.
pub(crate) fn read_mark(room: Option<&str>, with: Option<&str>, seq: u64) -> Encoded {
    let v = match (room, with) {
        (Some(room), _) => json!({"type":"read","room":room,"seq":seq}),
        (None, with) => json!({"type":"read","with":with.unwrap_or_default(),"seq":seq}),
    };
    Encoded::new(&v, String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> StoredMessage {
        StoredMessage {
            seq: 42,
            from: "alice".into(),
            to: None,
            sender: "alice".into(),
            text: "hi <b>\nthere".into(),
            client_id: Some("c-17".into()),
            ts: 1_763_836_800_123,
        }
    }

    #[test]
    fn a_message_frame_has_the_bytes_a_json_object_had() {
        let e = room_message("lobby", &msg());
        let text = r#"{"from":"alice","id":"c-17","room":"lobby","seq":42,"text":"hi <b>\nthere","ts":1763836800123,"type":"message"}"#;
        assert_eq!(&e.ws[2..], text.as_bytes());
        let mut m = msg();
        m.client_id = None;
        m.to = Some("bob".into());
        let (to, _) = private_message(&m, None);
        let text = r#"{"from":"alice","seq":42,"text":"hi <b>\nthere","to":"bob","ts":1763836800123,"type":"private"}"#;
        assert_eq!(&to.ws[2..], text.as_bytes());
        let listed = serde_json::to_vec(&message_json(None, &m)).unwrap();
        assert_eq!(&listed[..], text.as_bytes(), "history lists the same object");
    }

    #[test]
    fn room_message_matches_the_protocol() {
        let e = room_message("lobby", &msg());
        let v: Value = serde_json::from_slice(&e.ws[2..]).unwrap();
        assert_eq!(
            v,
            json!({"type":"message","room":"lobby","seq":42,"from":"alice","text":"hi <b>\nthere","ts":1_763_836_800_123u64,"id":"c-17"})
        );
        assert_eq!(&e.line[..], b"[lobby] alice: hi <b> there\n");
    }

    #[test]
    fn private_has_two_line_views_and_one_frame() {
        let mut m = msg();
        m.to = Some("bob".into());
        let (to, echo) = private_message(&m, Some("bob"));
        assert_eq!(to.ack.as_deref().map(|a| (a.user.as_str(), a.with.as_str(), a.seq)), Some(("bob", "alice", 42)));
        assert_eq!(echo.ack, None);
        assert_eq!(to.ws, echo.ws);
        assert_eq!(&to.line[..], b"[pm] alice: hi <b> there\n");
        assert_eq!(&echo.line[..], b"[pm to bob] alice: hi <b> there\n");
        let v: Value = serde_json::from_slice(&to.ws[2..]).unwrap();
        assert_eq!(v["type"], "private");
        assert_eq!(v["to"], "bob");
    }

    #[test]
    fn line_views_show_control_characters_and_the_frame_keeps_them() {
        let mut m = msg();
        m.text = "\u{1b}[2K\rfake\u{9b}".into();
        let e = room_message("lobby", &m);
        assert_eq!(&e.line[..], b"[lobby] alice: ^[[2K^Mfake\\u009b\n");
        let v: Value = serde_json::from_slice(&e.ws[2..]).unwrap();
        assert_eq!(v["text"], "\u{1b}[2K\rfake\u{9b}");
        m.to = Some("bob".into());
        let (to, echo) = private_message(&m, None);
        assert_eq!(&to.line[..], b"[pm] alice: ^[[2K^Mfake\\u009b\n");
        assert_eq!(&echo.line[..], b"[pm to bob] alice: ^[[2K^Mfake\\u009b\n");
    }

    #[test]
    fn presence_lines_only_for_join_and_leave() {
        assert_eq!(&presence("r", "u", Presence::Join).line[..], b"* u joined r\n");
        assert_eq!(&presence("r", "u", Presence::Leave).line[..], b"* u left r\n");
        assert!(presence("r", "u", Presence::Online).line.is_empty());
        assert!(typing_in_room("r", "u").line.is_empty());
    }
}
