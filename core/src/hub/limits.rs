//! Counters of what a client address or a user did in the last minute: the
//! limits that keep accounts, logins and presence hard to abuse.
//!
//! Each table counts per key over fixed one-minute windows. Tables are bounded
//! in time (a window ends a minute after its first hit) and in count (past
//! [`MAX_KEYS`], ended windows are dropped, then the oldest ones), so a client
//! that rotates addresses or names cannot grow them without end.

use std::hash::Hash;
use std::net::IpAddr;

use super::state::Name;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// The window every limit counts over.
pub(crate) const WINDOW_MS: u64 = 60_000;

/// Keys per table, at most.
pub(crate) const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    count: u32,
}

/// One limit: at most `limit` hits per key per window.
#[derive(Debug)]
pub(crate) struct Windows<K> {
    map: HashMap<K, Window>,
    limit: u32,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> Windows<K> {
    pub(crate) fn new(limit: u32) -> Self {
        Self::with_capacity(limit, MAX_KEYS)
    }

    pub(crate) fn with_capacity(limit: u32, max_keys: usize) -> Self {
        Windows { map: HashMap::default(), limit, max_keys: max_keys.max(1) }
    }

    /// `Some(seconds until the window ends)` when `key` used up its hits.
    pub(crate) fn limited(&self, now_ms: u64, key: &K) -> Option<u64> {
        let w = self.map.get(key)?;
        let end = w.start_ms.saturating_add(WINDOW_MS);
        (now_ms < end && w.count >= self.limit).then(|| (end - now_ms).div_ceil(1000).max(1))
    }

    /// Counts a hit for `key`, unless it is limited already: then
    /// `Err(seconds to wait)` and nothing is counted.
    pub(crate) fn take(&mut self, now_ms: u64, key: &K) -> Result<(), u64> {
        if let Some(retry) = self.limited(now_ms, key) {
            return Err(retry);
        }
        self.hit(now_ms, key);
        Ok(())
    }

    /// Counts a hit for `key`, limited or not.
    pub(crate) fn hit(&mut self, now_ms: u64, key: &K) {
        if !self.map.contains_key(key) && self.map.len() >= self.max_keys {
            self.make_room(now_ms);
        }
        let w = self.map.entry(key.clone()).or_insert(Window { start_ms: now_ms, count: 0 });
        if now_ms >= w.start_ms.saturating_add(WINDOW_MS) {
            *w = Window { start_ms: now_ms, count: 0 };
        }
        w.count = w.count.saturating_add(1);
    }

    /// Takes back a hit counted at `taken_ms` (a reservation that turned out
    /// not to count), if its window is still the current one.
    pub(crate) fn give_back(&mut self, taken_ms: u64, key: &K) {
        if let Some(w) = self.map.get_mut(key) {
            if w.start_ms <= taken_ms && taken_ms < w.start_ms.saturating_add(WINDOW_MS) {
                w.count = w.count.saturating_sub(1);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Drops ended windows; when every window is live, the older half.
    fn make_room(&mut self, now_ms: u64) {
        self.map.retain(|_, w| now_ms < w.start_ms.saturating_add(WINDOW_MS));
        if self.map.len() >= self.max_keys {
            let mut starts: Vec<u64> = self.map.values().map(|w| w.start_ms).collect();
            let (_, median, _) = starts.select_nth_unstable(self.map.len() / 2);
            let median = *median;
            self.map.retain(|_, w| w.start_ms > median);
        }
    }
}

/// A login attempt counted against its address and account before the
/// password is checked; given back when the password was right.
#[derive(Debug, Clone)]
pub(crate) struct LoginTicket {
    pub(crate) peer: IpAddr,
    /// The lower-case name.
    pub(crate) account: String,
    pub(crate) taken_ms: u64,
}

/// The hub's abuse limits, one table each.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Login attempts per client address, counted before the password is
    /// checked and given back when it was right.
    pub(crate) login_by_peer: Windows<IpAddr>,
    /// The same per account (the lower-case name).
    pub(crate) login_by_account: Windows<String>,
    /// Registrations per client address, counted before hashing.
    pub(crate) register_by_peer: Windows<IpAddr>,
    /// `name_taken` answers to guest names per client address.
    pub(crate) probes_by_peer: Windows<IpAddr>,
    /// Sessions opened (`welcome`s) per user (the lower-case name).
    /// Keyed by [`Name`]: a window outlives its session by up to a minute,
    /// and an idle session's user should cost no allocation here.
    pub(crate) opens_by_user: Windows<Name>,
    /// Sessions opened per client address.
    pub(crate) opens_by_peer: Windows<IpAddr>,
}

impl Limits {
    pub(crate) fn new(config: &crate::config::Config) -> Self {
        Limits {
            login_by_peer: Windows::new(config.login_rate),
            login_by_account: Windows::new(config.account_login_rate),
            register_by_peer: Windows::new(config.register_rate),
            probes_by_peer: Windows::new(config.name_probe_rate),
            opens_by_user: Windows::new(config.user_session_rate),
            opens_by_peer: Windows::new(config.peer_session_rate),
        }
    }
}

impl Limits {
    /// Counts a login attempt for `peer` and `user` before its password is
    /// checked: `Err(seconds to wait)` past either limit, and then nothing
    /// is counted.
    pub(crate) fn reserve_login(&mut self, now_ms: u64, peer: IpAddr, user: &str) -> Result<LoginTicket, u64> {
        let account = super::state::fold(user);
        self.login_by_peer.take(now_ms, &peer)?;
        if let Err(retry) = self.login_by_account.take(now_ms, &account) {
            self.login_by_peer.give_back(now_ms, &peer);
            return Err(retry);
        }
        Ok(LoginTicket { peer, account, taken_ms: now_ms })
    }

    /// The attempt does not count: the password was right, or it was never
    /// checked.
    pub(crate) fn release_login(&mut self, ticket: &LoginTicket) {
        self.login_by_peer.give_back(ticket.taken_ms, &ticket.peer);
        self.login_by_account.give_back(ticket.taken_ms, &ticket.account);
    }

    /// `Some(seconds to wait)` when `peer` or `user` opened too many
    /// sessions lately.
    pub(crate) fn open_limited(&self, now_ms: u64, peer: IpAddr, user: Option<&str>) -> Option<u64> {
        let by_user = user.and_then(|u| self.opens_by_user.limited(now_ms, &Name::from(super::state::fold(u))));
        by_user.or_else(|| self.opens_by_peer.limited(now_ms, &peer))
    }

    /// A session of `user` from `peer` was welcomed.
    pub(crate) fn opened(&mut self, now_ms: u64, peer: IpAddr, user: &str) {
        self.opens_by_user.hit(now_ms, &Name::from(super::state::fold(user)));
        self.opens_by_peer.hit(now_ms, &peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_the_limit_then_waits_for_the_window() {
        let mut w = Windows::new(2);
        assert_eq!(w.take(1_000, &"a"), Ok(()));
        assert_eq!(w.take(2_000, &"a"), Ok(()));
        assert_eq!(w.take(3_000, &"a"), Err(58));
        // Another key has its own count.
        assert_eq!(w.take(3_000, &"b"), Ok(()));
        // A minute after the first hit, a new window.
        assert_eq!(w.take(61_000, &"a"), Ok(()));
    }

    #[test]
    fn a_reservation_given_back_frees_its_slot() {
        let mut w = Windows::new(1);
        w.take(0, &"a").unwrap();
        assert!(w.limited(10, &"a").is_some());
        w.give_back(0, &"a");
        assert_eq!(w.limited(10, &"a"), None);
        // A hit of an ended window is not taken from the next one.
        w.take(100, &"a").unwrap();
        w.hit(70_000, &"a");
        w.give_back(100, &"a");
        assert!(w.limited(70_001, &"a").is_some());
    }

    #[test]
    fn the_table_stays_within_its_bound() {
        let mut w = Windows::with_capacity(5, 10);
        for i in 0..1_000u64 {
            w.hit(i, &i);
            assert!(w.len() <= 10, "{} keys", w.len());
        }
        // Ended windows go first.
        let mut w = Windows::with_capacity(5, 2);
        w.hit(0, &1);
        w.hit(1, &2);
        w.hit(70_000, &3);
        assert_eq!(w.len(), 1);
    }
}
