//! One connection: codecs, `hello`, limits, rate, heartbeats, time-outs and
//! the outbound queue with its bound. Sessions live in a [`crate::Shard`] on
//! the I/O thread that owns the socket; everything about users and rooms is
//! asked of the hub through [`ToHubInner`] messages.

mod http;
mod line;
mod outbox;
pub(crate) mod rate;
mod ws;

use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::config::Config;
use crate::ids::SessionId;
use crate::link::{HubClose, Tag, ToHubInner, ToShardInner};
use crate::metrics::Metrics;
use crate::render::reply::error_line;
use crate::render::{Encoded, ErrorCode, Failure, LineAck};
use crate::time::{earliest, Now};
use crate::transport::line::LineReader;
use crate::transport::ws::{close_frame, Decoder};

use crate::render::CloseReason;
use outbox::Outbox;
use rate::RateLimit;

/// How long a closing connection may take to flush its goodbye.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What a session call needs besides the session: time, limits, metrics,
/// and where messages for the hub go.
pub(crate) struct Ctx<'a> {
    pub(crate) now: Now,
    pub(crate) config: &'a Config,
    pub(crate) metrics: &'a Metrics,
    pub(crate) to_hub: &'a mut Vec<ToHubInner>,
}

#[derive(Debug)]
enum Phase {
    /// HTTP/1.1 requests, one at a time.
    Http,
    /// A `GET /ws?token=` waiting for the hub's verdict on the token.
    Upgrading,
    Ws {
        decoder: Decoder,
        echo: bool,
    },
    Line {
        reader: LineReader,
        current: Option<String>,
        login: LineLogin,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineLogin {
    /// Waiting for the first line.
    Anonymous,
    /// The first line went to the hub.
    Pending,
    In,
}

/// Which cap refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `--max-connections`.
    ServerFull,
    /// `--max-connections-per-ip`.
    PerAddress,
}

/// One connection's protocol state.
#[derive(Debug)]
pub(crate) struct Session {
    id: SessionId,
    peer: IpAddr,
    phase: Phase,
    /// Bytes received but not yet decoded. Empty, and unallocated, between
    /// messages.
    rbuf: Vec<u8>,
    outbox: Outbox,
    /// Private messages queued on a line session, with the stream position
    /// their line ends at: acknowledged to the hub once written that far.
    line_acks: Vec<(u64, Arc<LineAck>)>,
    rate: RateLimit,
    welcomed: bool,
    /// A WebSocket `hello` is with the hub.
    hello_pending: bool,
    /// Decoding waits for the hub's answer, so replies keep request order.
    paused: bool,
    /// The HTTP request being answered by the hub asked to close after.
    close_after_reply: bool,
    closing: Option<CloseReason>,
    handshake_at: Option<Instant>,
    idle_at: Option<Instant>,
    ping_at: Option<Instant>,
    expires_at: Option<Instant>,
    linger_at: Option<Instant>,
}

impl Session {
    pub(crate) fn new(ctx: &mut Ctx<'_>, id: SessionId, line: bool, peer: IpAddr) -> Session {
        let phase = if line {
            Phase::Line { reader: LineReader::default(), current: None, login: LineLogin::Anonymous }
        } else {
            Phase::Http
        };
        Session {
            id,
            peer,
            phase,
            rbuf: Vec::new(),
            outbox: Outbox::default(),
            line_acks: Vec::new(),
            rate: RateLimit::new(ctx.now.instant, ctx.config.burst),
            welcomed: false,
            hello_pending: false,
            paused: false,
            close_after_reply: false,
            closing: None,
            handshake_at: Some(ctx.now.instant + ctx.config.handshake_timeout),
            idle_at: None,
            ping_at: None,
            expires_at: None,
            linger_at: None,
        }
    }

    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    pub(crate) fn is_line(&self) -> bool {
        matches!(self.phase, Phase::Line { .. })
    }

    /// A cap on connections is reached: say which and close.
    pub(crate) fn refuse(&mut self, ctx: &mut Ctx<'_>, why: Refusal) {
        let (counter, message) = match why {
            Refusal::ServerFull => (&ctx.metrics.connections_refused, "server full"),
            Refusal::PerAddress => {
                (&ctx.metrics.connections_refused_per_address, "too many connections from your address")
            }
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.is_line() {
            self.outbox.push_unbounded(error_line(&Failure::new(ErrorCode::Unavailable, message)));
        } else {
            self.respond_error(ctx, ErrorCode::Unavailable, message, true);
        }
        self.close(ctx, CloseReason::Done);
    }

    /// The client address the connection came from.
    pub(crate) fn peer(&self) -> IpAddr {
        self.peer
    }

    pub(crate) fn received(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) {
        ctx.metrics.bytes_in.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if self.closing.is_some() {
            return;
        }
        self.touch(ctx);
        if self.rbuf.is_empty() {
            let used = self.process(ctx, data);
            if used < data.len() && self.closing.is_none() {
                self.rbuf.extend_from_slice(&data[used..]);
            }
        } else {
            self.rbuf.extend_from_slice(data);
            self.process_buffered(ctx);
        }
        // While paused nothing is decoded, so a client that keeps sending
        // could grow the buffer: bound it by the largest message it may send.
        if self.rbuf.len() > self.max_buffered(ctx.config) {
            self.rbuf = Vec::new();
            self.close(
                ctx,
                CloseReason::Frame(crate::transport::ws::FrameError::TooBig { limit: ctx.config.max_frame }),
            );
        }
    }

    fn max_buffered(&self, config: &Config) -> usize {
        let per_message = match self.phase {
            Phase::Http | Phase::Upgrading => crate::transport::http::MAX_HEAD + crate::transport::http::MAX_BODY,
            Phase::Ws { .. } => config.max_frame + 14,
            Phase::Line { .. } => config.max_line + 2,
        };
        per_message + 64 * 1024
    }

    /// Silence timers restart on any input.
    fn touch(&mut self, ctx: &Ctx<'_>) {
        match self.phase {
            Phase::Ws { .. } => self.idle_at = Some(ctx.now.instant + 2 * ctx.config.heartbeat),
            Phase::Line { .. } if self.welcomed => self.idle_at = Some(ctx.now.instant + ctx.config.line_idle),
            _ => {}
        }
    }

    /// Decodes what it can of `buf`; returns the bytes used.
    fn process(&mut self, ctx: &mut Ctx<'_>, buf: &[u8]) -> usize {
        let mut used = 0;
        while used < buf.len() && !self.paused && self.closing.is_none() {
            let n = match self.phase {
                Phase::Http => self.process_http(ctx, &buf[used..]),
                Phase::Upgrading => 0,
                Phase::Ws { .. } => self.process_ws(ctx, &buf[used..]),
                Phase::Line { .. } => self.process_line(ctx, &buf[used..]),
            };
            if n == 0 {
                break;
            }
            used += n;
        }
        used
    }

    /// Continues decoding after the hub answered.
    fn resume(&mut self, ctx: &mut Ctx<'_>) {
        self.paused = false;
        if !self.rbuf.is_empty() && self.closing.is_none() {
            self.process_buffered(ctx);
        }
    }

    /// Decodes what it can of the buffered input and keeps the rest (none
    /// once the session is closing).
    fn process_buffered(&mut self, ctx: &mut Ctx<'_>) {
        let mut buf = std::mem::take(&mut self.rbuf);
        let used = self.process(ctx, &buf);
        buf.drain(..used);
        if !buf.is_empty() && self.closing.is_none() {
            self.rbuf = buf;
        }
    }

    /// Queues bytes for the client, closing it as a slow consumer if they
    /// do not fit under `--max-queue`.
    fn send(&mut self, ctx: &mut Ctx<'_>, bytes: Bytes) {
        if self.closing.is_some() {
            return;
        }
        if self.outbox.push(bytes, ctx.config.max_queue).is_err() {
            ctx.metrics.slow_consumer_closes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // What is queued will never be read in time; the close frame
            // goes first so the client learns why (after the rest of a
            // partly written frame, and the `101`). Nothing of it was
            // received, so nothing of it is acknowledged.
            self.outbox.drop_unstarted();
            self.line_acks = Vec::new();
            self.close(ctx, CloseReason::SlowConsumer);
        }
    }

    /// Starts closing: queues the goodbye and stops reading. The connection
    /// is dropped once the goodbye is written or `LINGER` has passed.
    pub(crate) fn close(&mut self, ctx: &mut Ctx<'_>, reason: CloseReason) {
        if self.closing.is_some() {
            return;
        }
        match self.phase {
            Phase::Ws { .. } => {
                let (code, text) = reason.ws();
                self.outbox.push_unbounded(close_frame(code, text));
            }
            Phase::Line { .. } => self.outbox.push_unbounded(reason.line()),
            Phase::Http | Phase::Upgrading => {}
        }
        self.closing = Some(reason);
        self.ended(ctx);
        self.rbuf = Vec::new();
        self.linger_at = Some(ctx.now.instant + LINGER);
    }

    /// The session is over for routing: the hub hears it now, before the
    /// goodbye is written, so nothing the client does after reading its
    /// goodbye can reach the hub first.
    fn ended(&mut self, ctx: &mut Ctx<'_>) {
        ctx.to_hub.push(ToHubInner::Closed { sid: self.id });
    }

    /// Whether the session is closing (and the hub was told).
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// An event from the hub's fan-out.
    pub(crate) fn deliver(&mut self, ctx: &mut Ctx<'_>, event: &Encoded) {
        if !self.welcomed {
            return;
        }
        let line = self.is_line();
        let bytes = event.for_transport(line);
        if !bytes.is_empty() {
            ctx.metrics.messages_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.send(ctx, bytes.clone());
            if let (true, Some(ack), None) = (line, &event.ack, self.closing) {
                self.line_acks.push((self.outbox.end(), Arc::clone(ack)));
            }
        }
    }

    pub(crate) fn handle_hub(&mut self, ctx: &mut Ctx<'_>, msg: ToShardInner) {
        match msg {
            ToShardInner::Deliver { event, .. } => self.deliver(ctx, &event),
            ToShardInner::Reply { tag, result, .. } => match tag {
                Tag::Ws { reference, kind } => self.ws_hub_reply(ctx, reference.as_deref(), kind, &result),
                Tag::Upgrade { key } => self.upgrade_verdict(ctx, &key, result),
                Tag::Line(cmd) => self.line_reply(ctx, cmd, &result),
            },
            ToShardInner::Welcomed { expires_ms, .. } => {
                self.welcomed = true;
                self.hello_pending = false;
                self.handshake_at = None;
                self.expires_at = expires_ms.map(|ms| ctx.now.instant_at_unix_ms(ms).unwrap_or(ctx.now.instant));
                self.touch(ctx);
            }
            ToShardInner::Api { response, .. } => {
                let close = std::mem::take(&mut self.close_after_reply);
                self.send(ctx, response.encode(close));
                if close {
                    self.close(ctx, CloseReason::Done);
                } else {
                    self.resume(ctx);
                }
            }
            ToShardInner::Close { reason: HubClose::TokenRevoked, .. } => self.close(ctx, CloseReason::TokenEnded),
            ToShardInner::Close { reason: HubClose::TooManySessions, .. } => {
                self.close(ctx, CloseReason::TooManySessions)
            }
        }
    }

    /// Fires whatever timers are due; early calls do nothing.
    pub(crate) fn timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now.instant;
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if self.closing.is_some() {
            return;
        }
        if due(self.handshake_at) && !self.welcomed {
            return self.close(ctx, CloseReason::HandshakeTimeout);
        }
        if due(self.expires_at) {
            return self.close(ctx, CloseReason::TokenEnded);
        }
        if due(self.idle_at) {
            return self.close(ctx, CloseReason::Idle);
        }
        if due(self.ping_at) {
            self.ping_at = Some(now + ctx.config.heartbeat);
            self.send(ctx, ws::PING.clone());
        }
    }

    /// The server is shutting down.
    pub(crate) fn shutdown(&mut self, ctx: &mut Ctx<'_>) {
        self.close(ctx, CloseReason::Shutdown);
    }

    /// The session is done and its connection can be dropped.
    pub(crate) fn wants_close(&self, now: Instant) -> bool {
        self.closing.is_some() && (self.outbox.is_empty() || self.linger_at.is_some_and(|t| t <= now))
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.closing.is_some() {
            return self.linger_at;
        }
        let t = earliest(self.handshake_at.filter(|_| !self.welcomed), self.idle_at);
        let t = earliest(t, self.ping_at);
        earliest(t, self.expires_at)
    }

    pub(crate) fn outbox<'a>(&'a self, bufs: &mut [IoSlice<'a>]) -> usize {
        self.outbox.slices(bufs)
    }

    pub(crate) fn wants_write(&self) -> bool {
        !self.outbox.is_empty()
    }

    pub(crate) fn queued(&self) -> usize {
        self.outbox.len()
    }

    pub(crate) fn written(&mut self, ctx: &mut Ctx<'_>, n: usize) {
        ctx.metrics.bytes_out.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.outbox.advance(n);
        let written = self.outbox.written();
        let done = self.line_acks.iter().take_while(|(end, _)| *end <= written).count();
        for (_, ack) in self.line_acks.drain(..done) {
            ctx.to_hub.push(ToHubInner::LineAck { sid: self.id, ack });
        }
    }
}
