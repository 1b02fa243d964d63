//! Every byte the server writes to a client, rendered in one place: room and
//! private events, replies to requests, close frames and goodbye lines, HTTP
//! responses, and the mapping from an error to its code and status.
//!
//! `hub` and `session` both import this module; it imports neither of them
//! (nor `link` or `shard`), only value types (`store`, `ids`) and the frame
//! encoders of `transport`, the layer below.

pub(crate) mod close;
pub(crate) mod error;
pub(crate) mod event;
pub(crate) mod http;
pub(crate) mod reply;

pub(crate) use close::CloseReason;
pub(crate) use error::{ErrorCode, Failure};
pub use event::Encoded;
pub(crate) use event::{LineAck, Presence};
pub(crate) use http::ApiResponse;
pub(crate) use reply::{Recovery, Reply, RoomMark};
