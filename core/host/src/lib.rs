//! What every Natter runtime shares that is not pure: settings from flags,
//! environment and file; logging; storage workers; the hub thread; signals;
//! start-up and the orderly end. A runtime binary adds only its event loop.

#![deny(unsafe_code)]

pub mod bus;
mod clock;
pub mod config;
pub mod conns;
mod hub_thread;
mod logging;
pub mod mailbox;
pub mod node;
pub mod ready;
mod signals;
/// Storage: the SQLite backend, the batching worker and the password pool.
pub mod store;

pub use clock::now;
pub use conns::{Conns, Read, Seat, Socket, Turn, ACCEPT_PAUSE, READS_PER_TURN, SHUTDOWN_GRACE};
pub use hub_thread::ShardMail;
pub use node::{IoThread, Node};
pub use signals::Shutdown;
