//! End-to-end harness for Natter: starts a runtime binary on port 0 with a
//! fresh data directory and talks to it the way users do, over WebSocket
//! (tungstenite), raw TCP lines and plain HTTP/1.1.
//!
//! Every case is a plain function taking the binary name; [`cases!`] turns
//! each one into one `#[test]` per runtime binary, so the test names read
//! `natter_mio::guest_hello_gets_welcome`.
//!
//! Build the binaries first (`cargo build --bins`); set `NATTER_PROFILE=release`
//! to test a release build, and `CARGO_TARGET_DIR` if the target dir is elsewhere.

pub mod cluster;
pub mod http;
pub mod line;
pub mod raw_ws;
pub mod server;
pub mod ws;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use cluster::{Cluster, PrivatePostgres, SlowLink};
pub use http::{http, http_raw, HttpResponse};
pub use line::LineClient;
pub use raw_ws::RawWs;
pub use serde_json::{json, Value};
pub use server::{run_to_exit, Account, Exited, Server};
pub use ws::{Incoming, WsClient};

/// A password that satisfies the 8..=1024 character rule.
pub const PASSWORD: &str = "correct-horse-7";

/// How long a client waits for something the server should send promptly.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh user or room name: `prefix` plus a process-wide counter, cut so
/// that the whole stays within the 32-character name rule. `prefix` must be
/// made of name characters (`A-Z a-z 0-9 _ - .`).
pub fn uniq(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let suffix = NEXT.fetch_add(1, Ordering::Relaxed).to_string();
    let keep = prefix.len().min(32 - 1 - suffix.len());
    format!("{}_{}", &prefix[..keep], suffix)
}

/// The `type` of a JSON message, or "" when it has none.
pub fn ty(v: &Value) -> &str {
    v["type"].as_str().unwrap_or("")
}

/// True for a room `message` event in `room`.
pub fn is_message_in(v: &Value, room: &str) -> bool {
    ty(v) == "message" && v["room"] == room
}

/// True for a `presence` event in `room` about `user` with `state`.
pub fn is_presence(v: &Value, room: &str, user: &str, state: &str) -> bool {
    ty(v) == "presence" && v["room"] == room && v["user"] == user && v["state"] == state
}

/// True for a `private` event from `from`.
pub fn is_private_from(v: &Value, from: &str) -> bool {
    ty(v) == "private" && v["from"] == from
}

/// The `seq` field as a number (panics with the message if it is missing).
pub fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no numeric seq in {v}"))
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return t;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Turns every case into one `#[test]` per runtime binary.
///
/// ```text
/// natter_tests::cases! {
///     fn guest_hello_gets_welcome(bin) { let server = Server::start(bin, &[]); /* ... */ }
/// }
/// ```
/// expands to the plain function `fn guest_hello_gets_welcome(bin: &str)` and
/// `mod natter_mio { #[test] fn guest_hello_gets_welcome() { super::guest_hello_gets_welcome("natter-mio") } }`.
#[macro_export]
macro_rules! cases {
    ($($(#[$attr:meta])* fn $name:ident($bin:ident) $body:block)*) => {
        $( $(#[$attr])* fn $name($bin: &str) $body )*

        $crate::__cases_for_binaries! {
            // The runtime binaries every case runs against, as (module, binary).
            // This is the one list to edit.
            [(natter_mio, "natter-mio"), (natter_tokio, "natter-tokio"), (natter_smol, "natter-smol")]
            $($name)*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cases_for_binaries {
    ([] $($name:ident)*) => {};
    ([($module:ident, $bin:literal) $(, $rest:tt)*] $($name:ident)*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name($bin)
                }
            )*
        }
        $crate::__cases_for_binaries! { [$($rest),*] $($name)* }
    };
}
