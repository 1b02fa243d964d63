//! Identifiers and the naming rule.

use std::fmt;

/// One connection's session, unique within a node for the node's lifetime.
///
/// Packs the shard (I/O thread) that owns it, so the hub can address replies
/// without a lookup; the session's slot in that shard, so the shard finds it
/// without one either (a delivery to a room of 100 is 100 of these); and a
/// serial, so a late message for a closed session can never reach the next
/// session in the same slot. Live sessions never share a slot, so the
/// serial only has to tell a slot's successive sessions apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    const SHARD_BITS: u32 = 12;
    const SLOT_BITS: u32 = 20;
    /// Slots a shard can address: more connections than that are refused.
    pub const SLOTS: usize = 1 << Self::SLOT_BITS;

    /// Stands for the hub itself in what it asks storage on its own
    /// account (cluster catch-up reads); names no session.
    pub(crate) const HUB: SessionId = SessionId(u64::MAX);

    /// The id of the `serial`-th session of `shard`, in slot `slot`.
    pub fn new(shard: u16, slot: usize, serial: u64) -> SessionId {
        debug_assert!(u32::from(shard) < (1 << Self::SHARD_BITS));
        debug_assert!(slot < Self::SLOTS);
        let low = ((slot as u64) << Self::SHARD_BITS) | u64::from(shard);
        SessionId((serial << (Self::SHARD_BITS + Self::SLOT_BITS)) | low)
    }

    /// The shard that owns the session.
    pub fn shard(self) -> u16 {
        (self.0 & ((1 << Self::SHARD_BITS) - 1)) as u16
    }

    /// The session's slot in its shard.
    pub fn slot(self) -> usize {
        ((self.0 >> Self::SHARD_BITS) & (Self::SLOTS as u64 - 1)) as usize
    }

    /// The raw value, for logs and the `session` field of `welcome`.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}.{}", self.shard(), self.slot(), self.0 >> (Self::SHARD_BITS + Self::SLOT_BITS))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// PROTOCOL.md: names of users and rooms are 1 to 32 characters of
/// `A-Z a-z 0-9 _ - .`, case-sensitive.
pub fn is_valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_round_trips_shard_and_slot() {
        let id = SessionId::new(7, 99_999, 123_456);
        assert_eq!((id.shard(), id.slot()), (7, 99_999));
        assert_ne!(id, SessionId::new(7, 99_999, 123_457), "the next session in the slot");
        assert_ne!(id, SessionId::new(6, 99_999, 123_456));
        let last = SessionId::new(4095, SessionId::SLOTS - 1, 1);
        assert_eq!((last.shard(), last.slot()), (4095, SessionId::SLOTS - 1));
    }

    #[test]
    fn names_follow_the_rule() {
        assert!(is_valid_name("alice"));
        assert!(is_valid_name("A.b-c_9"));
        assert!(is_valid_name(&"x".repeat(32)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"x".repeat(33)));
        assert!(!is_valid_name("al ice"));
        assert!(!is_valid_name("bob#1"));
        assert!(!is_valid_name("émile"));
    }
}
