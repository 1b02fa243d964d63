//! Identifiers and the naming rule.

use std::fmt;

/// One connection's session, unique within a node for the node's lifetime.
///
/// Packs the shard (I/O thread) that owns it, so the hub can address replies
/// without a lookup, and a serial that is never reused, so a late message for
/// a closed session can never reach its successor in the same slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    const SHARD_BITS: u32 = 12;

    /// The id of the `serial`-th session of `shard`.
    pub fn new(shard: u16, serial: u64) -> SessionId {
        debug_assert!(u32::from(shard) < (1 << Self::SHARD_BITS));
        SessionId((serial << Self::SHARD_BITS) | u64::from(shard))
    }

    /// The shard that owns the session.
    pub fn shard(self) -> u16 {
        (self.0 & ((1 << Self::SHARD_BITS) - 1)) as u16
    }

    /// The raw value, for logs and the `session` field of `welcome`.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}.{}", self.shard(), self.0 >> Self::SHARD_BITS)
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
    fn session_id_round_trips_shard() {
        let id = SessionId::new(7, 123_456);
        assert_eq!(id.shard(), 7);
        assert_ne!(id, SessionId::new(7, 123_457));
        assert_ne!(id, SessionId::new(6, 123_456));
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
