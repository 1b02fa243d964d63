//! Messages between sessions (on the I/O threads) and the hub. Opaque to
//! adapters: they carry them between threads but cannot build or read them.

use std::net::IpAddr;
use std::sync::Arc;

use crate::ids::SessionId;
use crate::render::{ApiResponse, Encoded, Failure, LineAck, Reply};
use crate::transport::request::{ClientRequest, RequestKind};

/// From a session to the hub.
#[derive(Debug, Clone)]
pub struct ToHub(pub(crate) ToHubInner);

/// From the hub to the sessions of one shard.
#[derive(Debug, Clone)]
pub struct ToShard(pub(crate) ToShardInner);

impl ToShard {
    /// How many sessions this mail delivers an event to (0 for anything but
    /// a delivery): what a benchmark of the hub counts without a shard.
    pub fn deliveries(&self) -> usize {
        match &self.0 {
            ToShardInner::Deliver { sessions, .. } => sessions.len(),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ToHubInner {
    Hello {
        sid: SessionId,
        tag: Tag,
        auth: Auth,
        line: bool,
        peer: IpAddr,
    },
    Request {
        sid: SessionId,
        tag: Tag,
        request: ClientRequest,
    },
    Api {
        sid: SessionId,
        call: ApiCall,
        peer: IpAddr,
    },
    /// A line session wrote a private message to its client.
    LineAck {
        sid: SessionId,
        ack: Arc<LineAck>,
    },
    Closed {
        sid: SessionId,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum ToShardInner {
    Deliver {
        /// Shared: a room's run of sessions on one shard goes to every
        /// message of the room until its members change (`hub/state.rs`).
        sessions: Arc<[SessionId]>,
        event: Encoded,
    },
    Reply {
        sid: SessionId,
        tag: Tag,
        result: Result<Reply, Failure>,
    },
    /// The session is authenticated: start heartbeats, stop the handshake
    /// timer, and close with 4001 at `expires_ms` if set.
    Welcomed {
        sid: SessionId,
        expires_ms: Option<u64>,
    },
    Api {
        sid: SessionId,
        response: ApiResponse,
    },
    Close {
        sid: SessionId,
        reason: HubClose,
    },
}

impl ToShardInner {
    pub(crate) fn sid(&self) -> Option<SessionId> {
        match self {
            ToShardInner::Deliver { .. } => None,
            ToShardInner::Reply { sid, .. }
            | ToShardInner::Welcomed { sid, .. }
            | ToShardInner::Api { sid, .. }
            | ToShardInner::Close { sid, .. } => Some(*sid),
        }
    }
}

/// Why the hub ends a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HubClose {
    /// Its token was revoked (close 4001).
    TokenRevoked,
    /// Its `hello` was refused by the session-open limit (close 1008).
    TooManySessions,
}

/// What the session needs to render the answer to a request: the client's
/// `ref` and the request type on WebSocket, the command on the line port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tag {
    Ws {
        reference: Option<String>,
        kind: RequestKind,
    },
    /// The `?token=` upgrade waits for the hub before answering 101 or 401.
    Upgrade {
        key: String,
    },
    Line(LineCommand),
}

/// The line-protocol command a reply answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineCommand {
    Login,
    /// Join; the room became current at once, `previous` is restored if
    /// the join fails.
    Join {
        room: String,
        previous: Option<String>,
    },
    /// Leave; if it was current, the session has no current room.
    Leave(String),
    Say,
    Msg,
    Who,
    Rooms,
    History,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    Token(String),
    Guest(String),
    /// A guest's `hello` with the `resume` secret of an earlier session.
    Resume {
        name: String,
        resume: String,
    },
    /// Line `/login USER PASSWORD`.
    Password {
        user: String,
        password: String,
    },
    /// Line `/register USER PASSWORD`.
    Register {
        user: String,
        password: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiCall {
    Register { user: String, password: String },
    Login { user: String, password: String },
    Logout { token: String },
}
