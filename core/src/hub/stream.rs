//! A sequence of `seq`s the cluster's sequencer follows: a room's, or a
//! conversation's. Its own file because both the sequencer
//! (`cluster.rs`) and what waits for storage (`pending.rs`) name it.

use crate::bus::BusMessage;
use crate::store::{Target, UserKey};

/// A sequence of `seq`s: a room, or a conversation (principals sorted).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum StreamKey {
    Room(String),
    Conversation(UserKey, UserKey),
}

impl StreamKey {
    /// `None` for a relayed event or a node announcement: nothing numbers
    /// those.
    pub(crate) fn of(message: &BusMessage) -> Option<StreamKey> {
        match message {
            BusMessage::Room { room, .. } => Some(StreamKey::Room(room.clone())),
            BusMessage::Private { to_key, message } => Some(conversation(&message.sender, to_key)),
            BusMessage::Relayed { .. } | BusMessage::Node { .. } => None,
        }
    }

    pub(crate) fn target(&self) -> Target {
        match self {
            StreamKey::Room(room) => Target::Room(room.clone()),
            StreamKey::Conversation(a, b) => Target::Conversation(a.clone(), b.clone()),
        }
    }
}

pub(crate) fn conversation(a: &str, b: &str) -> StreamKey {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    StreamKey::Conversation(lo.to_string(), hi.to_string())
}
