//! Open connections per client address, across both ports and every I/O
//! thread of a node: what `--max-connections-per-ip` is enforced against.
//!
//! One table shared by every shard (it lives in [`crate::Metrics`], which
//! every shard already shares, beside the gauges `--max-connections` is
//! checked against). A lock, not messages: a connection must be counted
//! before its first byte is answered, and a lock held for one map update
//! per accept and per close costs little next to the accept itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Open connections by address. The std hasher is kept on purpose: the keys
/// come from clients, and SipHash's random keys keep them from choosing
/// colliding ones.
#[derive(Debug, Default)]
pub(crate) struct PeerConns {
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl PeerConns {
    /// Counts a new connection from `peer`; returns whether the address had
    /// fewer than `limit` open before it. The connection is counted either
    /// way, so that every [`PeerConns::closed`] has its open.
    pub(crate) fn opened(&self, peer: IpAddr, limit: usize) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(address(peer)).or_insert(0);
        *n += 1;
        (*n as usize) <= limit
    }

    /// A connection from `peer` is gone.
    pub(crate) fn closed(&self, peer: IpAddr) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let key = address(peer);
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }

    /// Connections open from `peer`'s address.
    pub(crate) fn count(&self, peer: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&address(peer)).copied().unwrap_or(0)
    }
}

/// What one client is counted as: an IPv4 address (also when it arrives
/// IPv4-mapped on an IPv6 socket), or an IPv6 /64, since one host commonly
/// holds a whole /64 and could otherwise take a fresh address per connection.
fn address(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_up_to_the_limit_and_back() {
        let p = PeerConns::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(p.opened(a, 2) && p.opened(a, 2));
        assert!(!p.opened(a, 2), "the third is past the limit");
        assert!(p.opened(b, 2), "another address has its own count");
        assert_eq!(p.count(a), 3, "a refused connection is counted until it closes");
        p.closed(a);
        p.closed(a);
        assert!(p.opened(a, 2));
        for _ in 0..2 {
            p.closed(a);
        }
        p.closed(b);
        assert!(p.open.lock().unwrap().is_empty(), "no entry stays for an address with nothing open");
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_ipv4() {
        let p = PeerConns::default();
        assert!(p.opened("2001:db8::1".parse().unwrap(), 1));
        assert!(!p.opened("2001:db8::ffff:2".parse().unwrap(), 1));
        assert!(p.opened("2001:db8:0:1::1".parse().unwrap(), 1), "another /64");
        assert!(p.opened("::ffff:10.0.0.1".parse().unwrap(), 1));
        assert!(!p.opened("10.0.0.1".parse().unwrap(), 1));
    }
}
