//! The sans-IO core of Natter: codecs, sessions and the routing hub, with no
//! sockets, threads, files or clocks. Runtimes feed it bytes and time and
//! carry out the actions it returns.
//!
//! # The machines and how to drive them
//! Three machines, each with one input enum and one output enum, in the
//! manner of str0m's `Rtc`: feed an input, drain the outputs until `None`,
//! then sleep no longer than `poll_timeout`. A recorded sequence of inputs
//! (with their [`Now`]) replays a run exactly.
//!
//! - A [`Shard`] holds the sessions of one I/O thread:
//!   [`Shard::handle_input`] with a [`ShardInput`], then
//!   [`Shard::poll_output`]:
//!   - [`ShardOutput::Write`]: the connection has bytes queued. Write
//!     [`Shard::outbox`] with one vectored write when the socket is writable
//!     and report the count with [`ShardInput::Written`].
//!   - [`ShardOutput::Close`]: drop the socket. The key is free again.
//!   - [`ShardOutput::ToHub`]: mail for the hub; gather it for the loop turn
//!     and hand it over as one batch.
//! - The [`Hub`], one per node, owns users, rooms and `seq`:
//!   [`Hub::handle_input`] with a [`HubInput`] (a shard's mail, a storage
//!   completion, a timeout), then [`Hub::poll_output`]: mail for shard `i`
//!   ([`ShardInput::FromHub`]) or requests for storage, whose completions
//!   come back as [`HubInput::Store`] in the order storage gives them.
//! - [`Local`] composes one shard with the hub for `--threads 1`: nothing
//!   crosses a thread, and its outputs are writes, closes and storage.
//!
//! Calls that do not fit a machine's state (a key that names no open
//! connection, say) return a typed error: they are runtime bugs.
//!
//! Time is always an argument ([`Now`]): the core never reads a clock.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod bus;
mod config;
mod hub;
mod ids;
mod link;
mod local;
pub mod metrics;
mod peers;
mod render;
mod session;
mod shard;
pub mod store;
mod time;
mod transport;

pub use config::{Config, GuestSecret, Secret};
pub use hub::{Encoded, Hub, HubInput, HubOutput};
pub use ids::{is_valid_name, SessionId};
pub use link::{ToHub, ToShard};
pub use local::{Local, LocalError, LocalInput, LocalOutput};
pub use metrics::Metrics;
pub use shard::{ConnKey, Shard, ShardError, ShardInput, ShardOutput, Transport};
pub use time::Now;

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
        // Idle memory per session is a headline figure (issue 15: at most
        // 1 KiB of RSS per idle WebSocket session). What every session pays
        // for in the core is pinned here, so a field that grows one shows
        // up as a failure, not as a figure in the next benchmark. malloc
        // rounds a box up to a multiple of 16 with 8 bytes of header: 264
        // bytes take 272, 265 would take 288.
        use std::mem::size_of;
        let sizes = [
            ("Session", size_of::<super::session::Session>(), 264),
            ("SessionInfo", size_of::<super::hub::state::SessionInfo>(), 112),
            ("Online", size_of::<super::hub::state::Online>(), 72),
            // Inline up to 24 bytes, no bigger than the `String` it replaced.
            ("Name", size_of::<super::hub::state::Name>(), 24),
        ];
        for (name, size, most) in sizes {
            eprintln!("{name} {size}");
            assert!(size <= most, "{name} is {size} bytes, more than {most}");
        }
    }
}
