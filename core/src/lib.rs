//! The sans-IO core of Natter: codecs, sessions and the routing hub, with no
//! sockets, threads, files or clocks. Runtimes feed it bytes and time and
//! carry out the actions it returns.
//!
//! # Driving a shard
//! A [`Shard`] holds the sessions of one I/O thread. After **every** call
//! that feeds it (`open`, `received`, `written`, `closed`, `handle_hub`,
//! `handle_store`, `handle_timeout`, `shutdown`), drain
//! [`Shard::poll_action`] until it returns `None`, then read
//! [`Shard::poll_timeout`] and sleep no longer than that:
//!
//! - [`ShardAction::Write`]: the connection has bytes queued. Write
//!   [`Shard::outbox`] with one vectored write when the socket is writable
//!   and report the count with [`Shard::written`].
//! - [`ShardAction::Close`]: drop the socket. The key is free again.
//! - [`ShardAction::Store`]: submit to storage; feed each completion back
//!   with [`Shard::handle_store`] in the order storage gives them.
//!
//! When the hub runs on its own thread ([`Shard::new`]), take
//! [`Shard::take_to_hub`] once per loop turn and give it to the hub thread
//! as one batch; give what the hub sends back to [`Shard::handle_hub`].
//! With one I/O thread, [`Shard::with_hub`] keeps the hub in the shard and
//! nothing crosses a thread.
//!
//! The [`Hub`] is driven the same way: `handle_input`, then drain
//! `poll_action`, then `poll_timeout`.
//!
//! Time is always an argument ([`Now`]): the core never reads a clock.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod config;
mod hub;
mod ids;
mod link;
pub mod metrics;
mod peers;
mod render;
mod session;
mod shard;
pub mod store;
mod time;
mod transport;

pub use config::{Config, GuestSecret, Secret};
pub use hub::{Encoded, Hub, HubAction, HubInput};
pub use ids::{is_valid_name, SessionId};
pub use link::{ToHub, ToShard};
pub use metrics::Metrics;
pub use shard::{ConnKey, Shard, ShardAction, Transport};
pub use time::Now;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

#[cfg(test)]
mod guards {
    #[test]
    fn machines_can_move_between_threads() {
        fn send<T: Send>() {}
        send::<super::Shard>();
        send::<super::Hub>();
        send::<super::ToHub>();
        send::<super::ToShard>();
    }

    #[test]
    fn an_idle_session_is_small() {
        // Idle memory per session is a headline figure (issue: ≤ 1 KiB RSS).
        assert!(
            std::mem::size_of::<super::session::Session>() <= 400,
            "{}",
            std::mem::size_of::<super::session::Session>()
        );
    }
}
