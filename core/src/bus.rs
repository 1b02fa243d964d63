//! What the nodes of a cluster tell each other, as values. The bus (Redis
//! pub/sub in the host) is an input and an output of the hub, exactly like
//! storage: the hub emits [`BusCommand`]s through `HubOutput::Bus` and
//! receives [`BusEvent`]s through `HubInput::Bus`. It never calls anything.
//!
//! Stored messages travel each with the `seq` storage gave it, so a
//! node that receives one can tell a duplicate (at or below what it
//! delivered) from a gap (above the next one), and fill a gap from storage.
//! The bus may lose, repeat or reorder what it carries; nothing here trusts
//! it for more than speed.
//!
//! Besides, [`BusMessage::Relayed`] carries what happened on one node that
//! members on the others see but storage does not number: a membership
//! change, `typing`, a revoked token ([`Relayed`]). These have no `seq`;
//! each is applied idempotently, and what matters of a lost one is repaired
//! from storage or not at all (see `hub/relay.rs`).
//!
//! The host carries bytes only: [`BusMessage::encode`] and
//! [`BusMessage::decode`]. The encoding starts with a version byte
//! ([`BUS_VERSION`]), then JSON; a node refuses a version it does not know
//! ([`BusError::Version`]) rather than guess, so a rolling upgrade that
//! changes the format shows up as counted decode errors, not as garbage.

use serde_json::{json, Value};

use crate::store::{StoredMessage, UserKey};

/// The first byte of every encoded [`BusMessage`].
pub const BUS_VERSION: u8 = 1;

/// A channel of the bus. A node subscribes to a room's topic while one of
/// its sessions is a member, and to a user's while the user has a session
/// there.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BusTopic {
    /// A room, by name.
    Room(String),
    /// A principal (a registered name, or a guest's `name#n`).
    User(UserKey),
    /// The nodes' announcements to each other ([`BusMessage::Node`]):
    /// every node of a cluster subscribes to it from its start.
    Nodes,
}

impl BusTopic {
    /// The channel name: `natter.room.NAME` or `natter.user.KEY`. The two
    /// prefixes keep a room and a principal with the same name apart.
    pub fn channel(&self) -> String {
        match self {
            BusTopic::Room(room) => format!("natter.room.{room}"),
            BusTopic::User(key) => format!("natter.user.{key}"),
            BusTopic::Nodes => "natter.nodes".to_string(),
        }
    }
}

/// A stored message, as one node announces it to the others after storage
/// committed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusMessage {
    /// A room message; `message.seq` is the room's.
    Room {
        /// The room.
        room: String,
        /// The message as stored.
        message: StoredMessage,
    },
    /// A private message; `message.seq` is the conversation's, and the
    /// conversation is `(message.sender, to_key)`.
    Private {
        /// The recipient's principal.
        to_key: UserKey,
        /// The message as stored.
        message: StoredMessage,
    },
    /// A node's announcement about itself (`hub/nodes.rs`), on
    /// [`BusTopic::Nodes`]. Not a stored message: it has no `seq`.
    Node {
        /// The announcing node (`Config::node`).
        node: u64,
        /// Its announcement counter, +1 per announcement of this node run:
        /// a receiver that sees one missing knows it missed something.
        n: u64,
        /// What it says.
        news: NodeNews,
    },
    /// An event of node `node` that other nodes relay to their sessions:
    /// never stored, no `seq`, never sequenced.
    Relayed {
        /// `Config::node` of the node it happened on, which skips its own.
        node: u64,
        /// What happened.
        event: Relayed,
    },
}

/// What one node tells the others happened there (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relayed {
    /// `user` (principal `key`) joined or left `room`; for a registered user
    /// after storage committed it, for a guest at once.
    Member {
        /// The room.
        room: String,
        /// The display name.
        user: String,
        /// The principal.
        key: UserKey,
        /// Joined, or left.
        joined: bool,
        /// For a join, the room's newest `seq` on the node where it was made
        /// (the one its `ok` named): a node that did not follow the room
        /// starts it there, so the user's sessions there get what follows,
        /// not the backlog. 0 for a leave.
        room_seq: u64,
    },
    /// `from` is typing in `room`.
    TypingInRoom {
        /// The room.
        room: String,
        /// The display name of who types.
        from: String,
    },
    /// `from` is typing to `to`, whose principal is `to_key`.
    TypingToUser {
        /// The display name of who types.
        from: String,
        /// The display name of who it types to.
        to: String,
        /// Its principal.
        to_key: UserKey,
    },
    /// A token of registered `user` was revoked: every session opened with
    /// it closes. The token's hash (`token_hash`), never the token.
    Revoked {
        /// The user.
        user: String,
        /// [`crate::store::token_hash`] of the token.
        token_hash: String,
    },
}

/// A user online at a node, as that node announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeUser {
    /// The display name.
    pub user: String,
    /// The principal.
    pub key: UserKey,
    /// Whether it is a guest.
    pub guest: bool,
    /// A guest's rooms, sorted; a registered user's memberships are stored,
    /// so empty. A guest's are nowhere else: a node that starts serving a
    /// room after the guest joined it learns them from here.
    pub rooms: Vec<String>,
}

/// What a node announces about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeNews {
    /// It is alive (every `Config::node_beat`).
    Beat,
    /// A user's first session there was welcomed.
    Online(NodeUser),
    /// A user's last session there ended (a registered user's once the
    /// presence grace is over).
    Offline {
        /// The display name.
        user: String,
    },
    /// It needs every other node's [`NodeNews::Snapshot`].
    Sync,
    /// One page of the users online there; the pages of one snapshot have
    /// consecutive `n`, from page 0 to the one with `last`.
    Snapshot {
        /// At most [`SNAPSHOT_PAGE`] users.
        users: Vec<NodeUser>,
        /// Its number, from 0.
        page: u32,
        /// Whether it is the snapshot's last page.
        last: bool,
    },
}

/// Most users in one [`NodeNews::Snapshot`] page.
pub const SNAPSHOT_PAGE: usize = 500;

/// Why bytes from the bus are not a [`BusMessage`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Nothing at all.
    #[error("an empty bus message")]
    Empty,
    /// A version this build does not know.
    #[error("bus message version {0}; this build knows {BUS_VERSION}")]
    Version(u8),
    /// The right version, but not what it promises.
    #[error("a malformed bus message: {0}")]
    Malformed(&'static str),
}

impl BusMessage {
    /// The `seq` it carries; 0 for a relayed event, which has none.
    pub fn seq(&self) -> u64 {
        match self {
            BusMessage::Room { message, .. } | BusMessage::Private { message, .. } => message.seq,
            BusMessage::Node { .. } => 0,
            BusMessage::Relayed { .. } => 0,
        }
    }

    /// The topics it is published on: its room's; or both principals' of a
    /// private message (the recipient's sessions, and the sender's other
    /// sessions for the echo), once if they are the same.
    pub fn topics(&self) -> Vec<BusTopic> {
        match self {
            BusMessage::Room { room, .. } => vec![BusTopic::Room(room.clone())],
            BusMessage::Private { to_key, message } if *to_key == message.sender => {
                vec![BusTopic::User(to_key.clone())]
            }
            BusMessage::Private { to_key, message } => {
                vec![BusTopic::User(to_key.clone()), BusTopic::User(message.sender.clone())]
            }
            BusMessage::Node { .. } => vec![BusTopic::Nodes],
            BusMessage::Relayed { event, .. } => event.topics(),
        }
    }

    /// The bytes the host publishes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, target, m) = match self {
            BusMessage::Room { room, message } => ("room", room, message),
            BusMessage::Private { to_key, message } => ("private", to_key, message),
            BusMessage::Node { node, n, news } => return with_version(&encode_node(*node, *n, news)),
            BusMessage::Relayed { node, event } => return with_version(&event.to_json(*node)),
        };
        let body = json!({
            "k": kind, "t": target, "seq": m.seq, "from": m.from, "to": m.to, "sender": m.sender,
            "text": m.text, "id": m.client_id, "ts": m.ts,
        });
        with_version(&body)
    }

    /// A message from bytes the host received.
    pub fn decode(bytes: &[u8]) -> Result<BusMessage, BusError> {
        let (&version, body) = bytes.split_first().ok_or(BusError::Empty)?;
        if version != BUS_VERSION {
            return Err(BusError::Version(version));
        }
        let v: Value = serde_json::from_slice(body).map_err(|_| BusError::Malformed("not JSON"))?;
        if v["k"] == "node" {
            return decode_node(&v);
        }
        if let Some(relayed) = Relayed::from_json(&v) {
            return relayed;
        }
        let text = |field: &'static str| v[field].as_str().map(str::to_owned).ok_or(BusError::Malformed(field));
        let number = |field: &'static str| v[field].as_u64().ok_or(BusError::Malformed(field));
        let optional = |field: &'static str| match &v[field] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(BusError::Malformed(field)),
        };
        let message = StoredMessage {
            seq: number("seq")?,
            from: text("from")?,
            to: optional("to")?,
            sender: text("sender")?,
            text: text("text")?,
            client_id: optional("id")?,
            ts: number("ts")?,
        };
        match v["k"].as_str() {
            Some("room") => Ok(BusMessage::Room { room: text("t")?, message }),
            Some("private") => Ok(BusMessage::Private { to_key: text("t")?, message }),
            _ => Err(BusError::Malformed("k")),
        }
    }
}

fn with_version(body: &Value) -> Vec<u8> {
    let mut out = vec![BUS_VERSION];
    out.extend_from_slice(body.to_string().as_bytes());
    out
}

fn user_json(u: &NodeUser) -> Value {
    json!([u.user, u.key, u.guest, u.rooms])
}

fn encode_node(node: u64, n: u64, news: &NodeNews) -> Value {
    let mut body = json!({"k": "node", "node": node, "n": n});
    match news {
        NodeNews::Beat => body["what"] = json!("beat"),
        NodeNews::Sync => body["what"] = json!("sync"),
        NodeNews::Online(u) => {
            body["what"] = json!("online");
            body["user"] = user_json(u);
        }
        NodeNews::Offline { user } => {
            body["what"] = json!("offline");
            body["user"] = json!(user);
        }
        NodeNews::Snapshot { users, page, last } => {
            body["what"] = json!("snapshot");
            body["users"] = Value::Array(users.iter().map(user_json).collect());
            body["page"] = json!(page);
            body["last"] = json!(last);
        }
    }
    body
}

fn decode_user(v: &Value) -> Result<NodeUser, BusError> {
    let bad = BusError::Malformed("user");
    let (Some(user), Some(key), Some(guest), Some(rooms)) =
        (v[0].as_str(), v[1].as_str(), v[2].as_bool(), v[3].as_array())
    else {
        return Err(bad);
    };
    let rooms: Result<Vec<String>, BusError> =
        rooms.iter().map(|r| r.as_str().map(str::to_string).ok_or(BusError::Malformed("rooms"))).collect();
    Ok(NodeUser { user: user.to_string(), key: key.to_string(), guest, rooms: rooms? })
}

fn decode_node(v: &Value) -> Result<BusMessage, BusError> {
    let number = |field: &'static str| v[field].as_u64().ok_or(BusError::Malformed(field));
    let news = match v["what"].as_str() {
        Some("beat") => NodeNews::Beat,
        Some("sync") => NodeNews::Sync,
        Some("online") => NodeNews::Online(decode_user(&v["user"])?),
        Some("offline") => {
            NodeNews::Offline { user: v["user"].as_str().ok_or(BusError::Malformed("user"))?.to_string() }
        }
        Some("snapshot") => NodeNews::Snapshot {
            users: v["users"]
                .as_array()
                .ok_or(BusError::Malformed("users"))?
                .iter()
                .map(decode_user)
                .collect::<Result<_, _>>()?,
            page: u32::try_from(number("page")?).map_err(|_| BusError::Malformed("page"))?,
            last: v["last"].as_bool().ok_or(BusError::Malformed("last"))?,
        },
        _ => return Err(BusError::Malformed("what")),
    };
    Ok(BusMessage::Node { node: number("node")?, n: number("n")?, news })
}

impl Relayed {
    /// Where it is published: a room's events on the room's topic (every
    /// node with a member session of it), a user's on the user's; a
    /// membership on both, so the user's sessions elsewhere follow it too.
    pub fn topics(&self) -> Vec<BusTopic> {
        match self {
            Relayed::Member { room, key, .. } => vec![BusTopic::Room(room.clone()), BusTopic::User(key.clone())],
            Relayed::TypingInRoom { room, .. } => vec![BusTopic::Room(room.clone())],
            Relayed::TypingToUser { to_key, .. } => vec![BusTopic::User(to_key.clone())],
            Relayed::Revoked { user, .. } => vec![BusTopic::User(user.clone())],
        }
    }

    fn to_json(&self, node: u64) -> Value {
        match self {
            Relayed::Member { room, user, key, joined, room_seq } => json!({
                "k": "member", "n": node, "room": room, "user": user, "key": key, "joined": joined, "seq": room_seq,
            }),
            Relayed::TypingInRoom { room, from } => json!({"k": "typing", "n": node, "room": room, "from": from}),
            Relayed::TypingToUser { from, to, to_key } => {
                json!({"k": "typing", "n": node, "from": from, "to": to, "key": to_key})
            }
            Relayed::Revoked { user, token_hash } => {
                json!({"k": "revoked", "n": node, "user": user, "hash": token_hash})
            }
        }
    }

    /// `None` when `v` is not a relayed event at all (its kind is another).
    fn from_json(v: &Value) -> Option<Result<BusMessage, BusError>> {
        let kind = v["k"].as_str()?;
        if !matches!(kind, "member" | "typing" | "revoked") {
            return None;
        }
        let text = |field: &'static str| v[field].as_str().map(str::to_owned).ok_or(BusError::Malformed(field));
        let event = || -> Result<Relayed, BusError> {
            Ok(match kind {
                "member" => Relayed::Member {
                    room: text("room")?,
                    user: text("user")?,
                    key: text("key")?,
                    joined: v["joined"].as_bool().ok_or(BusError::Malformed("joined"))?,
                    room_seq: v["seq"].as_u64().ok_or(BusError::Malformed("seq"))?,
                },
                "typing" if v["room"].is_string() => Relayed::TypingInRoom { room: text("room")?, from: text("from")? },
                "typing" => Relayed::TypingToUser { from: text("from")?, to: text("to")?, to_key: text("key")? },
                _ => Relayed::Revoked { user: text("user")?, token_hash: text("hash")? },
            })
        };
        let node = v["n"].as_u64().ok_or(BusError::Malformed("n"));
        Some(node.and_then(|node| Ok(BusMessage::Relayed { node, event: event()? })))
    }
}

/// What the hub asks of the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusCommand {
    /// Publish `bytes` (an encoded [`BusMessage`]) on `topic`. Best effort:
    /// a publish that fails is not retried; the receivers' periodic check
    /// finds what it carried.
    Publish {
        /// Where.
        topic: BusTopic,
        /// [`BusMessage::encode`]'s output.
        bytes: Vec<u8>,
    },
    /// Start receiving `topic`, and keep it across reconnections.
    Subscribe(BusTopic),
    /// Stop receiving `topic`.
    Unsubscribe(BusTopic),
}

/// What the bus tells the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// A message on a subscribed topic (the host decoded it).
    Message(BusMessage),
    /// The link is up: connected, or reconnected with every subscription
    /// restored. Messages may have been lost before it: the hub catches up
    /// from storage everything it serves.
    Up,
    /// The link is down: nothing arrives until the next `Up`.
    Down,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, id: Option<&str>, to: Option<&str>) -> StoredMessage {
        StoredMessage {
            seq,
            from: "Ann".into(),
            to: to.map(Into::into),
            sender: "Ann".into(),
            text: "hé \"quoted\"\n".into(),
            client_id: id.map(Into::into),
            ts: 1_700_000_000_123,
        }
    }

    fn relayed(event: Relayed) -> BusMessage {
        BusMessage::Relayed { node: u64::MAX, event }
    }

    #[test]
    fn messages_round_trip_through_bytes() {
        let all = [
            BusMessage::Room { room: "lobby".into(), message: message(42, Some("c-1"), None) },
            BusMessage::Room { room: "r.2".into(), message: message(1, None, None) },
            BusMessage::Private { to_key: "bob#17".into(), message: message(7, None, Some("bob")) },
            relayed(Relayed::Member {
                room: "r".into(),
                user: "g".into(),
                key: "g#1.2".into(),
                joined: true,
                room_seq: 7,
            }),
            relayed(Relayed::Member {
                room: "r".into(),
                user: "ann".into(),
                key: "ann".into(),
                joined: false,
                room_seq: 0,
            }),
            relayed(Relayed::TypingInRoom { room: "r".into(), from: "ann".into() }),
            relayed(Relayed::TypingToUser { from: "ann".into(), to: "Bob".into(), to_key: "Bob".into() }),
            relayed(Relayed::Revoked { user: "ann".into(), token_hash: "ab12".into() }),
        ];
        for m in all {
            let bytes = m.encode();
            assert_eq!(bytes[0], BUS_VERSION);
            assert_eq!(BusMessage::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn node_announcements_round_trip_through_bytes() {
        let ann = NodeUser { user: "ann".into(), key: "ann".into(), guest: false, rooms: vec![] };
        let zed =
            NodeUser { user: "zed".into(), key: "zed#1.2".into(), guest: true, rooms: vec!["a".into(), "b".into()] };
        let all = [
            NodeNews::Beat,
            NodeNews::Sync,
            NodeNews::Online(zed.clone()),
            NodeNews::Offline { user: "ann".into() },
            NodeNews::Snapshot { users: vec![ann, zed], page: 3, last: true },
            NodeNews::Snapshot { users: vec![], page: 0, last: false },
        ];
        for news in all {
            let m = BusMessage::Node { node: u64::MAX, n: 7, news };
            assert_eq!(m.topics(), [BusTopic::Nodes]);
            assert_eq!(BusMessage::decode(&m.encode()), Ok(m));
        }
        assert_eq!(BusTopic::Nodes.channel(), "natter.nodes");
        let bad = br#"{"k":"node","node":1,"n":1,"what":"online","user":["a"]}"#;
        let mut bytes = vec![BUS_VERSION];
        bytes.extend_from_slice(bad);
        assert_eq!(BusMessage::decode(&bytes), Err(BusError::Malformed("user")));
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        assert_eq!(BusMessage::decode(&[]), Err(BusError::Empty));
        let mut future = BusMessage::Room { room: "x".into(), message: message(1, None, None) }.encode();
        future[0] = 2;
        assert_eq!(BusMessage::decode(&future), Err(BusError::Version(2)));
        assert_eq!(BusMessage::decode(b"\x01{"), Err(BusError::Malformed("not JSON")));
        assert_eq!(BusMessage::decode(b"\x01{\"k\":\"room\"}"), Err(BusError::Malformed("seq")));
        let no_kind = br#"{"t":"x","seq":1,"from":"a","sender":"a","text":"","ts":0}"#;
        let mut bytes = vec![BUS_VERSION];
        bytes.extend_from_slice(no_kind);
        assert_eq!(BusMessage::decode(&bytes), Err(BusError::Malformed("k")));
        assert_eq!(BusMessage::decode(b"\x01{\"k\":\"member\",\"n\":1}"), Err(BusError::Malformed("room")));
        assert_eq!(BusMessage::decode(b"\x01{\"k\":\"revoked\",\"user\":\"a\"}"), Err(BusError::Malformed("n")));
    }

    #[test]
    fn a_membership_goes_to_the_room_and_to_the_user() {
        let member =
            Relayed::Member { room: "r".into(), user: "ann".into(), key: "ann".into(), joined: true, room_seq: 3 };
        assert_eq!(member.topics(), [BusTopic::Room("r".into()), BusTopic::User("ann".into())]);
        let typing = Relayed::TypingToUser { from: "ann".into(), to: "bob".into(), to_key: "bob#1.1".into() };
        assert_eq!(typing.topics(), [BusTopic::User("bob#1.1".into())]);
        assert_eq!(relayed(member).seq(), 0, "relayed events carry no seq");
    }

    #[test]
    fn a_private_message_goes_to_both_principals_once() {
        let to_bob = BusMessage::Private { to_key: "bob".into(), message: message(1, None, Some("bob")) };
        assert_eq!(to_bob.topics(), [BusTopic::User("bob".into()), BusTopic::User("Ann".into())]);
        let to_self = BusMessage::Private { to_key: "Ann".into(), message: message(1, None, Some("Ann")) };
        assert_eq!(to_self.topics(), [BusTopic::User("Ann".into())]);
        assert_eq!(BusTopic::Room("lobby".into()).channel(), "natter.room.lobby");
    }
}
