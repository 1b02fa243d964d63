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
    pub(crate) fn of(message: &BusMessage) -> StreamKey {
        match message {
            BusMessage::Room { room, .. } => StreamKey::Room(room.clone()),
            BusMessage::Private { to_key, message } => conversation(&message.sender, to_key),
            // Never sequenced: `Hub::handle_bus` takes node announcements
            // aside before the sequencer sees anything.
            BusMessage::Node { .. } => StreamKey::Room(String::new()),
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
