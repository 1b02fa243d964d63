//! The limits and switches the core enforces, with PROTOCOL.md's defaults.
//! Parsing flags, environment and files into this is `natter-host`'s job.

use std::time::Duration;

use crate::store::InboxBound;

/// A 32-byte key, shown as `GuestSecret(..)` so that it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct GuestSecret(pub [u8; 32]);

impl std::fmt::Debug for GuestSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuestSecret(..)")
    }
}

/// What the core needs to know about how the server was started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `heartbeat_s` in `welcome`; silence past twice this closes a WebSocket.
    pub heartbeat: Duration,
    /// Refuse guest sessions.
    pub no_guests: bool,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Largest WebSocket frame or reassembled message, bytes.
    pub max_frame: usize,
    /// Largest `text`, bytes.
    pub max_text: usize,
    /// Largest line on the line port, bytes, without its line ending.
    pub max_line: usize,
    /// Unsent bytes allowed per connection before it is closed as a slow consumer.
    pub max_queue: usize,
    /// Data messages per second per connection.
    pub rate: u32,
    /// Burst allowance of the rate limit.
    pub burst: u32,
    /// Rooms per user.
    pub max_rooms: usize,
    /// TCP connections per server, both ports together.
    pub max_connections: usize,
    /// TCP connections from one client address (an IPv6 /64), both ports
    /// together.
    pub max_connections_per_ip: usize,
    /// Time allowed from connect to `welcome`.
    pub handshake_timeout: Duration,
    /// Silence that closes a line session.
    pub line_idle: Duration,
    /// Serve `GET /echo` (a conformance-suite aid).
    pub echo: bool,
    /// Login attempts per client address per minute that failed or are
    /// still being checked (counted before the password is hashed).
    pub login_rate: u32,
    /// How many private messages a registered user may have waiting
    /// unacknowledged, from one sender and from everybody; past either,
    /// a send is answered `inbox_full`.
    pub inbox: InboxBound,
    /// `rooms`, `who`, `history` and `conversations` per second per
    /// session (bursts of four times this); past it, `rate_limited`.
    pub query_rate: u32,
    /// Guests may not send private messages to registered users.
    pub no_guest_private: bool,
    /// Signs the `resume` secret a guest gets at `welcome`. Random per
    /// start (the host's job); never shown in `Debug`.
    pub guest_secret: GuestSecret,
    /// Origins (`scheme://host[:port]`, lower case, no trailing `/`) whose
    /// pages may open a WebSocket; empty: any. An upgrade without `Origin`
    /// (not a browser) is always let through.
    pub allowed_origins: Vec<String>,
    /// When set, `GET /metrics` needs `Authorization: Bearer` with it.
    pub metrics_token: Option<Secret>,
    /// The same per account.
    pub account_login_rate: u32,
    /// Registrations per client address per minute (counted before hashing).
    pub register_rate: u32,
    /// `name_taken` answers to guest names per client address per minute;
    /// past it every guest name from the address is `rate_limited`.
    pub name_probe_rate: u32,
    /// Sessions opened (`welcome`s) per user per minute.
    pub user_session_rate: u32,
    /// Sessions opened per client address per minute.
    pub peer_session_rate: u32,
    /// How long a registered user whose last session closed still counts as
    /// online: a session opening within it cancels the `offline`.
    pub presence_grace: Duration,
    /// Storage requests the hub lets wait for completion; past it, requests
    /// are answered `unavailable` at once. Not a flag: a safety bound.
    pub store_backlog: usize,
    /// This node is one of several sharing one store, with a bus between
    /// them (`hub/cluster.rs`). Off: the hub emits no bus output at all.
    pub cluster: bool,
    /// In a cluster, how often the hub asks storage for the newest `seq` of
    /// what it serves, to find messages the bus lost.
    pub cluster_check: Duration,
    /// In a cluster, this node's id: random per start (the host's job), so a
    /// node that restarts is a new node to the others, and a node tells its
    /// own announcements from theirs.
    pub node: u64,
    /// In a cluster, how often this node tells the others it is alive
    /// (`hub/nodes.rs`).
    pub node_beat: Duration,
    /// In a cluster, how long a node may be silent before the others count
    /// it dead and its users go offline.
    pub node_timeout: Duration,
}

/// A secret from the configuration: it never appears in `Debug` output (so
/// not in logs), and a candidate is compared with it in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// Whether `candidate` is the secret. The time taken depends only on the
    /// secret's length, never on how much of a guess was right.
    pub(crate) fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        let mut diff = secret.len() ^ candidate.len();
        for (i, &b) in secret.iter().enumerate() {
            diff |= usize::from(b ^ candidate.get(i).copied().unwrap_or(!b));
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Config {
    /// Whether a page from `origin` (an `Origin` header) may open a
    /// WebSocket. Scheme and host ignore case (RFC 6454 §6.1 serialises
    /// them in lower case; a client might not).
    pub(crate) fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim().trim_end_matches('/');
        self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat: Duration::from_secs(30),
            no_guests: false,
            token_ttl: Duration::from_secs(86_400),
            max_frame: 64 * 1024,
            max_text: 4 * 1024,
            max_line: 4 * 1024,
            max_queue: 4 * 1024 * 1024,
            rate: 20,
            burst: 40,
            max_rooms: 100,
            max_connections: 100_000,
            // Enough for a household or an office behind one NAT, with
            // several tabs each; far from what it takes to fill the server.
            // Loopback is not exempt: behind a local proxy every client is
            // 127.0.0.1, and that operator must raise it knowingly.
            max_connections_per_ip: 256,
            handshake_timeout: Duration::from_secs(10),
            line_idle: Duration::from_secs(600),
            echo: false,
            login_rate: 10,
            inbox: InboxBound { per_sender: 1_000, per_recipient: 10_000 },
            query_rate: 10,
            no_guest_private: false,
            guest_secret: GuestSecret([0; 32]),
            account_login_rate: 20,
            register_rate: 10,
            name_probe_rate: 20,
            user_session_rate: 30,
            peer_session_rate: 60,
            presence_grace: Duration::from_secs(2),
            store_backlog: 100_000,
            cluster: false,
            cluster_check: Duration::from_secs(3),
            node: 0,
            node_beat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            // Open: the usual scraper is a Prometheus on the same host or
            // network, and the counters say nothing about users. A public
            // server sets a token (README, "Running a server").
            metrics_token: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_only_itself_and_never_prints() {
        let s = Secret::new("s3cret-token");
        assert!(s.matches(b"s3cret-token"));
        for wrong in [&b""[..], b"s3cret-toke", b"s3cret-token2", b"S3cret-token", b"s3cret-tokem"] {
            assert!(!s.matches(wrong), "{wrong:?}");
        }
        assert!(!Secret::new("").matches(b"x"));
        assert_eq!(format!("{:?}", Some(s)), "Some(Secret(..))");
    }
}
