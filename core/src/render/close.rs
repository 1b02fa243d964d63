//! Why the server ends a connection, and what it tells the client: every
//! close code of PROTOCOL.md lives here and only here.

use tungstenite::protocol::frame::coding::CloseCode;

use crate::transport::ws::FrameError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Silence past twice the heartbeat (WebSocket) or `--line-idle` (line).
    Idle,
    /// No `welcome` within the handshake time-out.
    HandshakeTimeout,
    /// The outbound queue hit its bound.
    SlowConsumer,
    /// The peer broke the framing rules.
    Frame(FrameError),
    /// The server is shutting down.
    Shutdown,
    /// The token expired or was revoked.
    TokenEnded,
    /// The user or address opened too many sessions lately; the
    /// `rate_limited` error came first.
    TooManySessions,
    /// The peer closed, or asked to (`/quit`, a close frame).
    Peer,
    /// An HTTP exchange is over.
    Done,
}

impl CloseReason {
    /// The WebSocket close frame's code and reason.
    pub(crate) fn ws(self) -> (CloseCode, &'static str) {
        match self {
            CloseReason::Idle => (CloseCode::Away, "idle"),
            CloseReason::HandshakeTimeout => (CloseCode::Policy, "no hello in time"),
            CloseReason::SlowConsumer => (CloseCode::Policy, "slow consumer"),
            CloseReason::Frame(e) => (
                e.close_code(),
                match e {
                    FrameError::TooBig { .. } => "message too big",
                    FrameError::BadUtf8 => "invalid UTF-8",
                    FrameError::Protocol(_) => "protocol error",
                },
            ),
            CloseReason::Shutdown => (CloseCode::Restart, "service restart"),
            CloseReason::TokenEnded => (CloseCode::Library(4001), "token expired or revoked"),
            CloseReason::TooManySessions => (CloseCode::Policy, "too many sessions"),
            CloseReason::Peer | CloseReason::Done => (CloseCode::Normal, ""),
        }
    }

    /// The last line a line-protocol client reads, if any.
    pub(crate) fn line(self) -> &'static str {
        match self {
            CloseReason::Idle => "* idle, bye\n",
            CloseReason::HandshakeTimeout => "! timeout no login in time, bye\n",
            CloseReason::SlowConsumer => "! slow_consumer you are not reading, bye\n",
            CloseReason::Shutdown => "* server restarting, bye\n",
            CloseReason::TokenEnded => "! invalid_token session ended, bye\n",
            CloseReason::Peer => "* bye\n",
            CloseReason::Frame(_) | CloseReason::Done | CloseReason::TooManySessions => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_protocol() {
        let code = |r: CloseReason| u16::from(r.ws().0);
        assert_eq!(code(CloseReason::Idle), 1001);
        assert_eq!(code(CloseReason::SlowConsumer), 1008);
        assert_eq!(code(CloseReason::HandshakeTimeout), 1008);
        assert_eq!(code(CloseReason::TooManySessions), 1008);
        assert_eq!(code(CloseReason::Frame(FrameError::TooBig { limit: 1 })), 1009);
        assert_eq!(code(CloseReason::Frame(FrameError::BadUtf8)), 1007);
        assert_eq!(code(CloseReason::Frame(FrameError::Protocol("x"))), 1002);
        assert_eq!(code(CloseReason::Shutdown), 1012);
        assert_eq!(code(CloseReason::TokenEnded), 4001);
        assert_eq!(CloseReason::SlowConsumer.ws().1, "slow consumer");
        assert_eq!(CloseReason::Idle.line(), "* idle, bye\n");
    }
}
