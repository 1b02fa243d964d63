//! The limits and switches the core enforces, with PROTOCOL.md's defaults.
//! Parsing flags, environment and files into this is `natter-host`'s job.

use std::time::Duration;

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
    /// Time allowed from connect to `welcome`.
    pub handshake_timeout: Duration,
    /// Silence that closes a line session.
    pub line_idle: Duration,
    /// Serve `GET /echo` (a conformance-suite aid).
    pub echo: bool,
    /// Login attempts per client address per minute that failed or are
    /// still being checked (counted before the password is hashed).
    pub login_rate: u32,
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
            handshake_timeout: Duration::from_secs(10),
            line_idle: Duration::from_secs(600),
            echo: false,
            login_rate: 10,
            account_login_rate: 20,
            register_rate: 10,
            name_probe_rate: 20,
            user_session_rate: 30,
            peer_session_rate: 60,
            presence_grace: Duration::from_secs(2),
            store_backlog: 100_000,
        }
    }
}
