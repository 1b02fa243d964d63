//! JSON requests from WebSocket clients (PROTOCOL.md, "Requests").
//!
//! One serde pass over the frame fills a flat set of slots, one per field any
//! request has (strings borrowed from the frame unless they hold escapes);
//! the request's type then reads the slots it needs, in the order its errors
//! are checked. No `serde_json::Value` tree is built. Not an internally
//! tagged enum: serde buffers all of such an enum's fields into a private
//! tree before it knows the variant, and its errors would name neither the
//! field nor keep `ref` and `type` for the reply.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Why a frame is not a request we can act on. The wire codes are in
/// `render::ErrorCode`; this says which.
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
/// the hub, which knows the limits. Owned: it travels to the hub's thread.
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

/// The `type` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Hello,
    Join,
    Leave,
    Send,
    History,
    Who,
    Rooms,
    Conversations,
    Read,
    Typing,
    Ack,
    Ping,
}

impl RequestKind {
    const ALL: [RequestKind; 12] = [
        Self::Hello,
        Self::Join,
        Self::Leave,
        Self::Send,
        Self::History,
        Self::Who,
        Self::Rooms,
        Self::Conversations,
        Self::Read,
        Self::Typing,
        Self::Ack,
        Self::Ping,
    ];

    /// The `type` on the wire (and the `request` of an `error` without `ref`).
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Send => "send",
            Self::History => "history",
            Self::Who => "who",
            Self::Rooms => "rooms",
            Self::Conversations => "conversations",
            Self::Read => "read",
            Self::Typing => "typing",
            Self::Ack => "ack",
            Self::Ping => "ping",
        }
    }

    fn from_wire(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl ClientRequest {
    pub(crate) fn kind(&self) -> RequestKind {
        match self {
            Self::Hello { .. } => RequestKind::Hello,
            Self::Join { .. } => RequestKind::Join,
            Self::Leave { .. } => RequestKind::Leave,
            Self::Send { .. } => RequestKind::Send,
            Self::History { .. } => RequestKind::History,
            Self::Who { .. } => RequestKind::Who,
            Self::Rooms { .. } => RequestKind::Rooms,
            Self::Conversations { .. } => RequestKind::Conversations,
            Self::Read { .. } => RequestKind::Read,
            Self::Typing { .. } => RequestKind::Typing,
            Self::Ack { .. } => RequestKind::Ack,
            Self::Ping => RequestKind::Ping,
        }
    }
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
pub(crate) struct Decoded<'a> {
    /// The client's `ref`, when it gave a valid one.
    pub(crate) reference: Option<String>,
    /// The `type` field, when it is a string (for the `request` field of an
    /// `error` without `ref`).
    pub(crate) kind: Option<Cow<'a, str>>,
    pub(crate) request: Result<ClientRequest, RequestError>,
}

/// Longest `ref` and `id` a client may choose.
pub(crate) const MAX_REF: usize = 64;

pub(crate) fn decode(text: &[u8]) -> Decoded<'_> {
    let Ok(mut fields) = serde_json::from_slice::<Fields<'_>>(text) else {
        return Decoded { reference: None, kind: None, request: Err(RequestError::BadJson) };
    };
    let kind = match fields.take(Field::Type) {
        Scalar::Str(kind) => Some(kind),
        _ => None,
    };
    let reference = fields.opt_bounded_text(Field::Ref);
    let request = match (&reference, &kind) {
        (Err(e), _) => Err(*e),
        (Ok(_), None) => Err(RequestError::BadField(Field::Type.name())),
        (Ok(_), Some(kind)) => match RequestKind::from_wire(kind) {
            Some(kind) => parse(kind, &mut fields),
            None => Err(RequestError::UnknownType),
        },
    };
    Decoded { reference: reference.ok().flatten(), kind, request }
}

fn parse(kind: RequestKind, f: &mut Fields<'_>) -> Result<ClientRequest, RequestError> {
    use Field::{Before, Id, Limit, Room, Seq, Since, Text, To, With};
    Ok(match kind {
        RequestKind::Hello => ClientRequest::Hello { auth: hello(f)? },
        RequestKind::Join => ClientRequest::Join { room: f.text(Room)?, since: f.opt_count(Since)? },
        RequestKind::Leave => ClientRequest::Leave { room: f.text(Room)? },
        RequestKind::Send => {
            ClientRequest::Send { to: f.target(Room, To)?, text: f.text(Text)?, id: f.opt_bounded_text(Id)? }
        }
        RequestKind::History => ClientRequest::History {
            of: f.target(Room, With)?,
            before: f.opt_count(Before)?,
            limit: f.opt_count(Limit)?,
        },
        RequestKind::Who => ClientRequest::Who { room: f.opt_text(Room)?, limit: f.opt_count(Limit)? },
        RequestKind::Rooms => ClientRequest::Rooms { limit: f.opt_count(Limit)? },
        RequestKind::Conversations => ClientRequest::Conversations { limit: f.opt_count(Limit)? },
        RequestKind::Read => ClientRequest::Read { of: f.target(Room, With)?, seq: f.count(Seq)? },
        RequestKind::Typing => ClientRequest::Typing { to: f.target(Room, To)? },
        RequestKind::Ack => ClientRequest::Ack { with: f.text(With)?, seq: f.count(Seq)? },
        RequestKind::Ping => ClientRequest::Ping,
    })
}

/// A token wins; else a name, with the `resume` secret if given. Both
/// `token` and `name` must be well-typed, whichever is used.
fn hello(f: &mut Fields<'_>) -> Result<HelloAuth, RequestError> {
    Ok(match (f.opt_text(Field::Token)?, f.opt_text(Field::Name)?) {
        (Some(token), _) => HelloAuth::Token(token),
        (None, Some(name)) => match f.opt_text(Field::Resume)? {
            Some(resume) => HelloAuth::Resume { name, resume },
            None => HelloAuth::Guest(name),
        },
        (None, None) => return Err(RequestError::BadField(Field::Token.name())),
    })
}

/// Every field a request may have. Other keys are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Type,
    Ref,
    Token,
    Name,
    Resume,
    Room,
    To,
    With,
    Text,
    Id,
    Since,
    Before,
    Limit,
    Seq,
    #[serde(other)]
    Other,
}

impl Field {
    /// Its key, for `bad_request`'s message.
    const fn name(self) -> &'static str {
        match self {
            Self::Type => "type",
            Self::Ref => "ref",
            Self::Token => "token",
            Self::Name => "name",
            Self::Resume => "resume",
            Self::Room => "room",
            Self::To => "to",
            Self::With => "with",
            Self::Text => "text",
            Self::Id => "id",
            Self::Since => "since",
            Self::Before => "before",
            Self::Limit => "limit",
            Self::Seq => "seq",
            Self::Other => "other",
        }
    }
}

/// A field's value as far as a request cares: `null` is the same as absent,
/// and a count is a JSON integer from 0 to `u64::MAX` (so `5.0` is not one).
#[derive(Debug, Default)]
enum Scalar<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Count(u64),
    /// Any other value: a field that holds one is ill-typed.
    Other,
}

/// The slots of one request object, indexed by `Field`.
#[derive(Debug, Default)]
struct Fields<'a>([Scalar<'a>; Field::Other as usize]);

impl<'a> Fields<'a> {
    fn take(&mut self, field: Field) -> Scalar<'a> {
        std::mem::take(&mut self.0[field as usize])
    }

    fn opt_str(&mut self, field: Field) -> Result<Option<Cow<'a, str>>, RequestError> {
        match self.take(field) {
            Scalar::Absent => Ok(None),
            Scalar::Str(s) => Ok(Some(s)),
            Scalar::Count(_) | Scalar::Other => Err(RequestError::BadField(field.name())),
        }
    }

    fn opt_text(&mut self, field: Field) -> Result<Option<String>, RequestError> {
        Ok(self.opt_str(field)?.map(Cow::into_owned))
    }

    fn text(&mut self, field: Field) -> Result<String, RequestError> {
        self.opt_text(field)?.ok_or(RequestError::BadField(field.name()))
    }

    /// A `ref` or `id`: at most `MAX_REF` characters.
    fn opt_bounded_text(&mut self, field: Field) -> Result<Option<String>, RequestError> {
        match self.opt_str(field)? {
            Some(s) if s.chars().count() > MAX_REF => Err(RequestError::BadField(field.name())),
            s => Ok(s.map(Cow::into_owned)),
        }
    }

    fn opt_count(&mut self, field: Field) -> Result<Option<u64>, RequestError> {
        match self.take(field) {
            Scalar::Absent => Ok(None),
            Scalar::Count(n) => Ok(Some(n)),
            Scalar::Str(_) | Scalar::Other => Err(RequestError::BadField(field.name())),
        }
    }

    fn count(&mut self, field: Field) -> Result<u64, RequestError> {
        self.opt_count(field)?.ok_or(RequestError::BadField(field.name()))
    }

    /// Exactly one of `room` and `user` names the target.
    fn target(&mut self, room: Field, user: Field) -> Result<Target, RequestError> {
        match (self.opt_text(room)?, self.opt_text(user)?) {
            (Some(room), None) => Ok(Target::Room(room)),
            (None, Some(user)) => Ok(Target::User(user)),
            (Some(_), Some(_)) => Err(RequestError::BadField(user.name())),
            (None, None) => Err(RequestError::BadField(room.name())),
        }
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a request object")
    }

    /// The last of repeated keys counts, as it did when requests were read
    /// into a `serde_json::Map` (the derived visitor would refuse them).
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Other => {
                    map.next_value::<Skip>()?;
                }
                field => fields.0[field as usize] = map.next_value()?,
            }
        }
        Ok(fields)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }

    /// A string with escapes, unescaped into serde_json's scratch buffer.
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Count(n))
    }

    /// serde_json gives only negative integers here.
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Scalar<'de>, E> {
        Ok(u64::try_from(n).map_or(Scalar::Other, Scalar::Count))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Absent)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar<'de>, A::Error> {
        SkipVisitor.visit_seq(seq).map(|Skip| Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar<'de>, A::Error> {
        SkipVisitor.visit_map(map).map(|Skip| Scalar::Other)
    }
}

/// A value no request reads, parsed and dropped. Not `IgnoredAny`: that
/// skims nested values without serde_json's depth bound or number checks,
/// so a frame the old `Value` decoding refused as `bad_json` would pass.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
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
        let frame = format!(r#"{{"type":"ping","ref":"{}"}}"#, "r".repeat(65));
        let d = decode(frame.as_bytes());
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
        let frame = format!(r#"{{"type":"send","room":"a","text":"x","id":"{at_bound}","ref":"{at_bound}"}}"#);
        let d = decode(frame.as_bytes());
        assert_eq!(d.reference.as_deref(), Some(at_bound.as_str()));
        assert_eq!(
            d.request,
            Ok(ClientRequest::Send { to: Target::Room("a".into()), text: "x".into(), id: Some(at_bound) })
        );
        let over = "é".repeat(MAX_REF + 1);
        assert_eq!(bad(&format!(r#"{{"type":"ping","ref":"{over}"}}"#)), Some("ref"));
        assert_eq!(bad(&format!(r#"{{"type":"send","room":"a","text":"x","id":"{over}"}}"#)), Some("id"));
    }

    #[test]
    fn field_and_kind_names_match_the_wire() {
        for (i, kind) in RequestKind::ALL.into_iter().enumerate() {
            assert_eq!(RequestKind::from_wire(kind.as_str()), Some(kind));
            let frame = format!(r#"{{"type":"{}"}}"#, kind.as_str());
            assert_eq!(decode(frame.as_bytes()).request.map(|r| r.kind()).unwrap_or(kind), kind, "{i}");
        }
        assert_eq!(ALL_FIELDS.len(), Field::Other as usize);
        for (i, named) in ALL_FIELDS.into_iter().enumerate() {
            let field: Field = serde_json::from_str(&format!(r#""{}""#, named.name())).unwrap();
            assert_eq!((field, field as usize), (named, i));
        }
        assert_eq!(serde_json::from_str::<Field>(r#""Type""#).unwrap(), Field::Other);
    }

    const ALL_FIELDS: [Field; 14] = [
        Field::Type,
        Field::Ref,
        Field::Token,
        Field::Name,
        Field::Resume,
        Field::Room,
        Field::To,
        Field::With,
        Field::Text,
        Field::Id,
        Field::Since,
        Field::Before,
        Field::Limit,
        Field::Seq,
    ];

    #[test]
    fn plain_strings_are_borrowed_from_the_frame() {
        let d = decode(br#"{"type":"dance"}"#);
        assert!(matches!(d.kind, Some(Cow::Borrowed("dance"))));
        let d = decode(br#"{"type":"d\u0061nce"}"#);
        assert!(matches!(d.kind, Some(Cow::Owned(ref k)) if k == "dance"));
    }

    /// The decoder this one replaced, over a `serde_json::Value` tree: the
    /// property below checks that both agree on every frame.
    mod by_value {
        use super::super::*;
        use serde_json::{Map, Value};

        pub(super) fn decode(text: &[u8]) -> (Option<String>, Option<String>, Result<ClientRequest, RequestError>) {
            let object = match serde_json::from_slice::<Value>(text) {
                Ok(Value::Object(o)) => o,
                _ => return (None, None, Err(RequestError::BadJson)),
            };
            let kind = object.get("type").and_then(Value::as_str).map(str::to_owned);
            let (reference, bad_ref) = match object.get("ref") {
                None | Some(Value::Null) => (None, false),
                Some(Value::String(s)) if s.chars().count() <= MAX_REF => (Some(s.clone()), false),
                Some(_) => (None, true),
            };
            let request = if bad_ref { Err(RequestError::BadField("ref")) } else { parse(&object) };
            (reference, kind, request)
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

        fn target(o: &Map<String, Value>, room: &'static str, user: &'static str) -> Result<Target, RequestError> {
            match (opt_str(o, room)?, opt_str(o, user)?) {
                (Some(room), None) => Ok(Target::Room(room)),
                (None, Some(user)) => Ok(Target::User(user)),
                (Some(_), Some(_)) => Err(RequestError::BadField(user)),
                (None, None) => Err(RequestError::BadField(room)),
            }
        }
    }

    fn agrees_with_the_value_decoder(frame: &[u8]) {
        let d = decode(frame);
        let old = by_value::decode(frame);
        assert_eq!((d.reference, d.kind.map(Cow::into_owned), d.request), old, "{}", String::from_utf8_lossy(frame));
    }

    #[test]
    fn the_fuzz_seeds_decode_as_before() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/json_request");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            agrees_with_the_value_decoder(&std::fs::read(entry.unwrap().path()).unwrap());
            seen += 1;
        }
        assert!(seen >= 10, "{seen} seeds");
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pick = |values: &[&str]| proptest::sample::select(values.iter().map(|v| v.to_string()).collect::<Vec<_>>());
        let kinds = RequestKind::ALL.map(|k| format!("\"{}\"", k.as_str()));
        let leaf = prop_oneof![
            proptest::sample::select(kinds.to_vec()),
            pick(&[r#""a""#, r#""b\u0062""#, r#""""#, r#""dance""#]),
            pick(&["0", "7", "-1", "-0", "1.5", "5.0", "5e0", "18446744073709551615", "18446744073709551616"]),
            pick(&["null", "true", "[]", "{}", r#"{"type":"ping"}"#]),
            (60usize..70).prop_map(|n| format!("\"{}\"", "é".repeat(n))),
        ];
        let nested = proptest::collection::vec(leaf.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(",")));
        prop_oneof![4 => leaf, 1 => nested]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]
        #[test]
        fn decodes_as_the_value_tree_did(
            kind in proptest::sample::select(RequestKind::ALL.to_vec()),
            entries in proptest::collection::vec(
                (proptest::sample::select(
                    ["type", "ref", "token", "name", "resume", "room", "to", "with", "text", "id", "since",
                     "before", "limit", "seq", "x", "t\\u0079pe"].to_vec()
                ), json_value()),
                0..6,
            ),
            cut in proptest::option::of(0usize..200),
        ) {
            let body: Vec<String> = entries.iter().map(|(k, v)| format!(",\"{k}\":{v}")).collect();
            let frame = format!(r#"{{"type":"{}"{}}}"#, kind.as_str(), body.concat());
            agrees_with_the_value_decoder(frame.as_bytes());
            if let Some(cut) = cut {
                agrees_with_the_value_decoder(&frame.as_bytes()[..cut.min(frame.len())]);
            }
        }
    }
}
