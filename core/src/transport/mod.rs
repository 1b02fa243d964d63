//! Codecs: bytes in, typed values out, and back. Pure functions and small
//! per-connection state; no knowledge of users or rooms.

pub(crate) mod http;
pub(crate) mod line;
pub(crate) mod request;
pub(crate) mod ws;
