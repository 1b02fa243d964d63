//! What every Natter runtime shares that is not pure: settings from flags,
//! environment and file; logging; storage workers; the hub thread; signals;
//! start-up and the orderly end. A runtime binary adds only its event loop.

#![deny(unsafe_code)]

pub mod config;
pub mod conns;
mod logging;
pub mod mailbox;
pub mod node;
mod signals;
/// Storage: the SQLite backend, the batching worker and the password pool.
pub mod store;

pub use conns::{Conns, Read, Socket, Turn, ACCEPT_PAUSE, READS_PER_TURN};
pub use node::{now, IoThread, Node, Seat, ShardMail, Shutdown, SHUTDOWN_GRACE};
