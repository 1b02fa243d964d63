//! JSON requests from WebSocket clients (PROTOCOL.md, "Requests").

use serde_json::{Map, Value};

/// Why a frame is not a request we can act on. The wire codes are in
/// `reply::ErrorCode`; this says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// Invalid UTF-8 or JSON, a binary frame, or JSON that is not an object.
    #[error("not a JSON object")]
    BadJson,
    /// A missing or ill-typed field.
    #[error("missing or invalid field `{0}`")]
    BadField(&'static str),
    #[error("unknown type")]
    UnknownType,
}

/// Where a message or a typing note goes, or which history to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Room(String),
    User(String),
}

/// A request after decoding, fields typed; names and lengths are checked by
/// the hub, which knows the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientRequest {
    Hello { auth: HelloAuth },
    Join { room: String, since: Option<u64> },
    Leave { room: String },
    Send { to: Target, text: String, id: Option<String> },
    History { of: Target, before: Option<u64>, limit: Option<u64> },
    Who { room: Option<String>, limit: Option<u64> },
    Rooms { limit: Option<u64> },
    Conversations { limit: Option<u64> },
    Read { of: Target, seq: u64 },
    Typing { to: Target },
    Ack { with: String, seq: u64 },
    Ping,
}

/// How a session proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HelloAuth {
    Token(String),
    Guest(String),
    /// A guest who was here before, with the `resume` secret its `welcome`
    /// gave it.
    Resume {
        name: String,
        resume: String,
    },
}

/// A decoded frame: the request, or why not, with what is needed to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// The client's `ref`, when it gave a valid one.
    pub(crate) reference: Option<String>,
    /// The `type` field, when it is a string (for the `request` field of an
    /// `error` without `ref`).
    pub(crate) kind: Option<String>,
    pub(crate) request: Result<ClientRequest, RequestError>,
}

/// Longest `ref` and `id` a client may choose.
pub(crate) const MAX_REF: usize = 64;

pub(crate) fn decode(text: &[u8]) -> Decoded {
    let object = match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(o)) => o,
        _ => return Decoded { reference: None, kind: None, request: Err(RequestError::BadJson) },
    };
    let kind = object.get("type").and_then(Value::as_str).map(str::to_owned);
    let (reference, bad_ref) = match object.get("ref") {
        None | Some(Value::Null) => (None, false),
        Some(Value::String(s)) if s.chars().count() <= MAX_REF => (Some(s.clone()), false),
        Some(_) => (None, true),
    };
    let request = if bad_ref { Err(RequestError::BadField("ref")) } else { parse(&object) };
    Decoded { reference, kind, request }
}

fn parse(o: &Map<String, Value>) -> Result<ClientRequest, RequestError> {
    let kind = o.get("type").and_then(Value::as_str).ok_or(RequestError::BadField("type"))?;
    Ok(match kind {
        "hello" => match (opt_str(o, "token")?, opt_str(o, "name")?) {
            (Some(token), _) => ClientRequest::Hello { auth: HelloAuth::Token(token) },
            (None, Some(name)) => match opt_str(o, "resume")? {
                Some(resume) => ClientRequest::Hello { auth: HelloAuth::Resume { name, resume } },
                None => ClientRequest::Hello { auth: HelloAuth::Guest(name) },
            },
            (None, None) => return Err(RequestError::BadField("token")),
        },
        "join" => ClientRequest::Join { room: str_field(o, "room")?, since: opt_u64(o, "since")? },
        "leave" => ClientRequest::Leave { room: str_field(o, "room")? },
        "send" => ClientRequest::Send {
            to: target(o, "room", "to")?,
            text: str_field(o, "text")?,
            id: match opt_str(o, "id")? {
                Some(id) if id.chars().count() > MAX_REF => return Err(RequestError::BadField("id")),
                id => id,
            },
        },
        "history" => ClientRequest::History {
            of: target(o, "room", "with")?,
            before: opt_u64(o, "before")?,
            limit: opt_u64(o, "limit")?,
        },
        "who" => ClientRequest::Who { room: opt_str(o, "room")?, limit: opt_u64(o, "limit")? },
        "rooms" => ClientRequest::Rooms { limit: opt_u64(o, "limit")? },
        "conversations" => ClientRequest::Conversations { limit: opt_u64(o, "limit")? },
        "read" => ClientRequest::Read { of: target(o, "room", "with")?, seq: u64_field(o, "seq")? },
        "typing" => ClientRequest::Typing { to: target(o, "room", "to")? },
        "ack" => ClientRequest::Ack { with: str_field(o, "with")?, seq: u64_field(o, "seq")? },
        "ping" => ClientRequest::Ping,
        _ => return Err(RequestError::UnknownType),
    })
}

fn opt_str(o: &Map<String, Value>, key: &'static str) -> Result<Option<String>, RequestError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RequestError::BadField(key)),
    }
}

fn str_field(o: &Map<String, Value>, key: &'static str) -> Result<String, RequestError> {
    opt_str(o, key)?.ok_or(RequestError::BadField(key))
}

fn opt_u64(o: &Map<String, Value>, key: &'static str) -> Result<Option<u64>, RequestError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(RequestError::BadField(key)),
    }
}

fn u64_field(o: &Map<String, Value>, key: &'static str) -> Result<u64, RequestError> {
    opt_u64(o, key)?.ok_or(RequestError::BadField(key))
}

/// Exactly one of `room` and `user_key` names the target.
fn target(o: &Map<String, Value>, room_key: &'static str, user_key: &'static str) -> Result<Target, RequestError> {
    match (opt_str(o, room_key)?, opt_str(o, user_key)?) {
        (Some(room), None) => Ok(Target::Room(room)),
        (None, Some(user)) => Ok(Target::User(user)),
        (Some(_), Some(_)) => Err(RequestError::BadField(user_key)),
        (None, None) => Err(RequestError::BadField(room_key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<ClientRequest, RequestError> {
        decode(s.as_bytes()).request
    }

    #[test]
    fn decodes_every_request_type() {
        assert_eq!(
            req(r#"{"type":"hello","token":"t"}"#),
            Ok(ClientRequest::Hello { auth: HelloAuth::Token("t".into()) })
        );
        assert_eq!(
            req(r#"{"type":"hello","name":"bob"}"#),
            Ok(ClientRequest::Hello { auth: HelloAuth::Guest("bob".into()) })
        );
        assert_eq!(
            req(r#"{"type":"join","room":"a","since":3}"#),
            Ok(ClientRequest::Join { room: "a".into(), since: Some(3) })
        );
        assert_eq!(req(r#"{"type":"leave","room":"a"}"#), Ok(ClientRequest::Leave { room: "a".into() }));
        assert_eq!(
            req(r#"{"type":"send","to":"bob","text":"hi","id":"c1"}"#),
            Ok(ClientRequest::Send { to: Target::User("bob".into()), text: "hi".into(), id: Some("c1".into()) })
        );
        assert_eq!(
            req(r#"{"type":"history","with":"bob","before":9,"limit":2}"#),
            Ok(ClientRequest::History { of: Target::User("bob".into()), before: Some(9), limit: Some(2) })
        );
        assert_eq!(req(r#"{"type":"who"}"#), Ok(ClientRequest::Who { room: None, limit: None }));
        assert_eq!(req(r#"{"type":"rooms","limit":5}"#), Ok(ClientRequest::Rooms { limit: Some(5) }));
        assert_eq!(req(r#"{"type":"conversations"}"#), Ok(ClientRequest::Conversations { limit: None }));
        assert_eq!(
            req(r#"{"type":"read","room":"a","seq":4}"#),
            Ok(ClientRequest::Read { of: Target::Room("a".into()), seq: 4 })
        );
        assert_eq!(
            req(r#"{"type":"typing","to":"bob"}"#),
            Ok(ClientRequest::Typing { to: Target::User("bob".into()) })
        );
        assert_eq!(
            req(r#"{"type":"ack","with":"bob","seq":4}"#),
            Ok(ClientRequest::Ack { with: "bob".into(), seq: 4 })
        );
        assert_eq!(req(r#"{"type":"ping"}"#), Ok(ClientRequest::Ping));
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(req("not json"), Err(RequestError::BadJson));
        assert_eq!(req("[1,2]"), Err(RequestError::BadJson));
        assert_eq!(req(r#"{"no":"type"}"#), Err(RequestError::BadField("type")));
        assert_eq!(req(r#"{"type":7}"#), Err(RequestError::BadField("type")));
        assert_eq!(req(r#"{"type":"dance"}"#), Err(RequestError::UnknownType));
        assert_eq!(req(r#"{"type":"join"}"#), Err(RequestError::BadField("room")));
        assert_eq!(req(r#"{"type":"join","room":1}"#), Err(RequestError::BadField("room")));
        assert_eq!(req(r#"{"type":"join","room":"a","since":-1}"#), Err(RequestError::BadField("since")));
        assert_eq!(req(r#"{"type":"send","room":"a","to":"b","text":"x"}"#), Err(RequestError::BadField("to")));
        assert_eq!(req(r#"{"type":"hello"}"#), Err(RequestError::BadField("token")));
        let long = format!(r#"{{"type":"send","room":"a","text":"x","id":"{}"}}"#, "i".repeat(65));
        assert_eq!(req(&long), Err(RequestError::BadField("id")));
    }

    #[test]
    fn keeps_ref_and_type_for_the_reply() {
        let d = decode(br#"{"type":"dance","ref":"r1"}"#);
        assert_eq!(d.reference.as_deref(), Some("r1"));
        assert_eq!(d.kind.as_deref(), Some("dance"));
        let d = decode(format!(r#"{{"type":"ping","ref":"{}"}}"#, "r".repeat(65)).as_bytes());
        assert_eq!(d.request, Err(RequestError::BadField("ref")));
        assert_eq!(d.reference, None);
    }

    fn bad(s: &str) -> Option<&'static str> {
        match req(s) {
            Err(RequestError::BadField(f)) => Some(f),
            _ => None,
        }
    }

    #[test]
    fn names_each_missing_or_ill_typed_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"ref":"r"}"#, "type"),
            (r#"{"type":null}"#, "type"),
            (r#"{"type":["ping"]}"#, "type"),
            (r#"{"type":"ping","ref":7}"#, "ref"),
            (r#"{"type":"ping","ref":{"a":1}}"#, "ref"),
            (r#"{"type":7,"ref":7}"#, "ref"),
            (r#"{"type":"hello","token":1}"#, "token"),
            (r#"{"type":"hello","token":"t","name":1}"#, "name"),
            (r#"{"type":"hello","name":false}"#, "name"),
            (r#"{"type":"hello","name":"n","resume":1}"#, "resume"),
            (r#"{"type":"hello","resume":"s"}"#, "token"),
            (r#"{"type":"join","room":"a","since":1.5}"#, "since"),
            (r#"{"type":"join","room":"a","since":"3"}"#, "since"),
            (r#"{"type":"join","room":1,"since":-1}"#, "room"),
            (r#"{"type":"leave"}"#, "room"),
            (r#"{"type":"leave","room":[]}"#, "room"),
            (r#"{"type":"send","text":"x"}"#, "room"),
            (r#"{"type":"send","room":1,"text":"x"}"#, "room"),
            (r#"{"type":"send","to":1,"text":"x"}"#, "to"),
            (r#"{"type":"send","room":"a"}"#, "text"),
            (r#"{"type":"send","room":"a","text":1}"#, "text"),
            (r#"{"type":"send","room":"a","text":"x","id":1}"#, "id"),
            (r#"{"type":"history"}"#, "room"),
            (r#"{"type":"history","with":1}"#, "with"),
            (r#"{"type":"history","room":"a","with":"b"}"#, "with"),
            (r#"{"type":"history","room":"a","before":-1}"#, "before"),
            (r#"{"type":"history","room":"a","limit":"2"}"#, "limit"),
            (r#"{"type":"who","room":1}"#, "room"),
            (r#"{"type":"who","room":"lobby","limit":1.5}"#, "limit"),
            (r#"{"type":"rooms","limit":-1}"#, "limit"),
            (r#"{"type":"conversations","limit":true}"#, "limit"),
            (r#"{"type":"read","room":"a"}"#, "seq"),
            (r#"{"type":"read","seq":1}"#, "room"),
            (r#"{"type":"read","room":"a","with":"b","seq":1}"#, "with"),
            (r#"{"type":"read","with":"b","seq":5.0}"#, "seq"),
            (r#"{"type":"typing"}"#, "room"),
            (r#"{"type":"typing","room":"a","to":"b"}"#, "to"),
            (r#"{"type":"typing","to":{}}"#, "to"),
            (r#"{"type":"ack","seq":1}"#, "with"),
            (r#"{"type":"ack","with":1,"seq":1}"#, "with"),
            (r#"{"type":"ack","with":"b"}"#, "seq"),
            (r#"{"type":"ack","with":"b","seq":-1}"#, "seq"),
        ];
        for (json, field) in cases {
            assert_eq!(bad(json), Some(*field), "{json}");
        }
    }

    #[test]
    fn counts_are_non_negative_integers_and_floats_are_refused() {
        let since = |n: &str| req(&format!(r#"{{"type":"join","room":"a","since":{n}}}"#));
        let join = |since| Ok(ClientRequest::Join { room: "a".into(), since });
        assert_eq!(since("0"), join(Some(0)));
        assert_eq!(since("18446744073709551615"), join(Some(u64::MAX)));
        assert_eq!(since("null"), join(None));
        for refused in ["18446744073709551616", "5.0", "5e0", "-0", "-1", "1e400"] {
            let want = if refused == "1e400" { RequestError::BadJson } else { RequestError::BadField("since") };
            assert_eq!(since(refused), Err(want), "{refused}");
        }
    }

    #[test]
    fn guest_hello_with_resume_and_token_first() {
        assert_eq!(
            req(r#"{"type":"hello","name":"gus","resume":"s"}"#),
            Ok(ClientRequest::Hello { auth: HelloAuth::Resume { name: "gus".into(), resume: "s".into() } })
        );
        assert_eq!(
            req(r#"{"type":"hello","token":"t","name":"gus","resume":7}"#),
            Ok(ClientRequest::Hello { auth: HelloAuth::Token("t".into()) })
        );
        assert_eq!(
            req(r#"{"type":"hello","name":"gus","resume":null}"#),
            Ok(ClientRequest::Hello { auth: HelloAuth::Guest("gus".into()) })
        );
    }

    #[test]
    fn null_is_absent_and_other_types_ignore_unknown_fields() {
        assert_eq!(
            req(r#"{"type":"send","room":null,"to":"b","text":"x","id":null,"ref":null}"#),
            Ok(ClientRequest::Send { to: Target::User("b".into()), text: "x".into(), id: None })
        );
        assert_eq!(req(r#"{"type":"ping","room":1,"seq":-1,"x":[{"y":null}]}"#), Ok(ClientRequest::Ping));
        assert_eq!(req(r#"{"type":"leave","room":"a","since":"x"}"#), Ok(ClientRequest::Leave { room: "a".into() }));
    }

    #[test]
    fn the_last_of_repeated_keys_counts() {
        assert_eq!(req(r#"{"type":"ping","type":"leave","room":"a"}"#), Ok(ClientRequest::Leave { room: "a".into() }));
        assert_eq!(req(r#"{"type":"leave","room":1,"room":"b"}"#), Ok(ClientRequest::Leave { room: "b".into() }));
        assert_eq!(req(r#"{"type":"leave","room":"b","room":1}"#), Err(RequestError::BadField("room")));
        let d = decode(br#"{"type":"ping","ref":"a","ref":"b"}"#);
        assert_eq!(d.reference.as_deref(), Some("b"));
    }

    #[test]
    fn escapes_in_keys_and_strings_are_decoded() {
        assert_eq!(
            req(r#"{"t\u0079pe":"send","room":"a\"b","text":"\u00e9\n"}"#),
            Ok(ClientRequest::Send { to: Target::Room("a\"b".into()), text: "é\n".into(), id: None })
        );
    }

    #[test]
    fn anything_but_one_json_object_is_bad_json() {
        let frames: &[&[u8]] = &[
            b"",
            b"null",
            b"\"ping\"",
            b"3",
            b"[]",
            br#"["ping"]"#,
            br#"{"type":"ping"} x"#,
            br#"{"type":"ping"}{}"#,
            br#"{"type":"ping""#,
            b"{\"type\":\"p\xffng\"}",
            br#"{"type":"ping","x":"\ud800"}"#,
            br#"{"type":"ping",}"#,
        ];
        for frame in frames {
            let d = decode(frame);
            assert_eq!(d, Decoded { reference: None, kind: None, request: Err(RequestError::BadJson) }, "{frame:?}");
        }
        assert_eq!(req(" \n{\"type\":\"ping\"}\t "), Ok(ClientRequest::Ping));
    }

    #[test]
    fn nesting_is_bounded_even_in_ignored_fields() {
        let nested = |depth: usize| format!(r#"{{"type":"ping","x":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        assert_eq!(req(&nested(126)), Ok(ClientRequest::Ping));
        assert_eq!(req(&nested(127)), Err(RequestError::BadJson));
        let in_ref = format!(r#"{{"type":"ping","ref":{}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert_eq!(req(&in_ref), Err(RequestError::BadJson));
    }

    #[test]
    fn kind_and_ref_survive_a_bad_field() {
        let d = decode(br#"{"type":"join","ref":"r","room":1}"#);
        assert_eq!((d.reference.as_deref(), d.kind.as_deref()), (Some("r"), Some("join")));
        assert_eq!(d.request, Err(RequestError::BadField("room")));
        let d = decode(br#"{"ref":"r"}"#);
        assert_eq!((d.reference.as_deref(), d.kind), (Some("r"), None));
        let d = decode(br#"{"type":7,"ref":"r"}"#);
        assert_eq!((d.reference.as_deref(), d.kind), (Some("r"), None));
        let d = decode(br#"{"type":"join","ref":7}"#);
        assert_eq!((d.reference, d.kind.as_deref()), (None, Some("join")));
    }

    #[test]
    fn ref_and_id_are_bounded_in_characters() {
        let at_bound = "é".repeat(MAX_REF);
        let d = decode(
            format!(r#"{{"type":"send","room":"a","text":"x","id":"{at_bound}","ref":"{at_bound}"}}"#).as_bytes(),
        );
        assert_eq!(d.reference.as_deref(), Some(at_bound.as_str()));
        assert_eq!(
            d.request,
            Ok(ClientRequest::Send { to: Target::Room("a".into()), text: "x".into(), id: Some(at_bound) })
        );
        let over = "é".repeat(MAX_REF + 1);
        assert_eq!(bad(&format!(r#"{{"type":"ping","ref":"{over}"}}"#)), Some("ref"));
        assert_eq!(bad(&format!(r#"{{"type":"send","room":"a","text":"x","id":"{over}"}}"#)), Some("id"));
    }
}
