//! Why the server ends a connection, and what it tells the client: every
//! close code of PROTOCOL.md lives here and only here.

use bytes::Bytes;
use tungstenite::protocol::frame::coding::CloseCode;

use super::error::ErrorCode;
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

    /// The last line a line-protocol client reads (empty: none).
    pub(crate) fn line(self) -> Bytes {
        match self {
            CloseReason::Idle => Bytes::from_static(b"* idle, bye\n"),
            CloseReason::HandshakeTimeout => error_bye(ErrorCode::Timeout, "no login in time"),
            CloseReason::SlowConsumer => error_bye(ErrorCode::SlowConsumer, "you are not reading"),
            CloseReason::Shutdown => Bytes::from_static(b"* server restarting, bye\n"),
            CloseReason::TokenEnded => error_bye(ErrorCode::InvalidToken, "session ended"),
            CloseReason::Peer => Bytes::from_static(b"* bye\n"),
            CloseReason::Frame(_) | CloseReason::Done | CloseReason::TooManySessions => Bytes::new(),
        }
    }
}

/// A goodbye that is an error line: `! CODE message, bye`.
fn error_bye(code: ErrorCode, message: &str) -> Bytes {
    Bytes::from(format!("! {} {message}, bye\n", code.line_code()))
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

    #[test]
    fn line_goodbyes_are_exact_and_errors_carry_their_code() {
        let line = |r: CloseReason| String::from_utf8(r.line().to_vec()).unwrap();
        assert_eq!(line(CloseReason::HandshakeTimeout), "! timeout no login in time, bye\n");
        assert_eq!(line(CloseReason::SlowConsumer), "! slow_consumer you are not reading, bye\n");
        assert_eq!(line(CloseReason::TokenEnded), "! invalid_token session ended, bye\n");
        assert_eq!(line(CloseReason::Shutdown), "* server restarting, bye\n");
        assert_eq!(line(CloseReason::Peer), "* bye\n");
        for quiet in [CloseReason::Done, CloseReason::TooManySessions, CloseReason::Frame(FrameError::BadUtf8)] {
            assert!(quiet.line().is_empty(), "{quiet:?}");
        }
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        // RFC 6455 §5.5: a control frame's payload is at most 125 bytes,
        // two of them the code.
        for r in [
            CloseReason::Idle,
            CloseReason::HandshakeTimeout,
            CloseReason::SlowConsumer,
            CloseReason::Frame(FrameError::TooBig { limit: 1 }),
            CloseReason::Shutdown,
            CloseReason::TokenEnded,
            CloseReason::TooManySessions,
        ] {
            assert!(r.ws().1.len() <= 123, "{r:?}");
        }
    }
}
