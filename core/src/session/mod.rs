//! One connection: codecs, `hello`, limits, rate, heartbeats, time-outs and
//! the outbound queue with its bound. Sessions live in a [`crate::Shard`] on
//! the I/O thread that owns the socket; everything about users and rooms is
//! asked of the hub through [`ToHubInner`] messages.

mod http;
mod line;
mod outbox;
pub(crate) mod rate;
mod timers;
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
use crate::time::Now;
use crate::transport::line::LineReader;
use crate::transport::ws::{close_frame, Decoder};

use crate::render::CloseReason;
use outbox::Outbox;
use rate::RateLimit;
use timers::{Timer, Timers};

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

/// Where a connection is. Each phase holds what only it needs, so a
/// WebSocket decoder cannot outlive the upgrade's failure, nor a line
/// reader the close.
#[derive(Debug)]
enum Phase {
    /// HTTP/1.1 requests, one at a time.
    Http {
        /// The request the hub is answering asked to close after.
        close_after_reply: bool,
    },
    /// A `GET /ws?token=` waiting for the hub's verdict on the token.
    Upgrading,
    Ws {
        decoder: Decoder,
        echo: bool,
        login: Login,
    },
    Line {
        reader: LineReader,
        current: Option<String>,
        login: Login,
    },
    /// The goodbye is queued and nothing more is read. What the session
    /// was still matters to the shard's gauges (`line`) and to counting
    /// deliveries (`welcomed`).
    Closing {
        line: bool,
        welcomed: bool,
    },
}

/// A WebSocket `hello`, or a line session's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    /// Nothing sent yet, or the last attempt was refused.
    Anonymous,
    /// With the hub.
    Pending,
    /// A line login got its `ok`: lines are commands now. The hub's
    /// `Welcomed` follows it.
    Answered,
    /// The hub welcomed the session: events reach it.
    Welcomed,
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
    /// Decoding waits for the hub's answer, so replies keep request order.
    /// Not part of `Phase`: it outlives the step from `Upgrading` to `Ws`,
    /// and HTTP, WebSocket and line sessions all pause.
    paused: bool,
    timers: Timers,
}

impl Session {
    pub(crate) fn new(ctx: &mut Ctx<'_>, id: SessionId, line: bool, peer: IpAddr) -> Session {
        let phase = if line {
            Phase::Line { reader: LineReader::default(), current: None, login: Login::Anonymous }
        } else {
            Phase::Http { close_after_reply: false }
        };
        let mut timers = Timers::default();
        timers.set(Timer::Handshake, ctx.now.instant + ctx.config.handshake_timeout);
        Session {
            id,
            peer,
            phase,
            rbuf: Vec::new(),
            outbox: Outbox::default(),
            line_acks: Vec::new(),
            rate: RateLimit::new(ctx.now.instant, ctx.config.burst),
            paused: false,
            timers,
        }
    }

    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    pub(crate) fn is_line(&self) -> bool {
        matches!(self.phase, Phase::Line { .. } | Phase::Closing { line: true, .. })
    }

    /// Whether the hub welcomed the session (events reach it).
    fn welcomed(&self) -> bool {
        match self.phase {
            Phase::Ws { login, .. } | Phase::Line { login, .. } => login == Login::Welcomed,
            Phase::Closing { welcomed, .. } => welcomed,
            Phase::Http { .. } | Phase::Upgrading => false,
        }
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
        if self.is_closing() {
            return;
        }
        self.touch(ctx);
        if self.rbuf.is_empty() {
            let used = self.process(ctx, data);
            if used < data.len() && !self.is_closing() {
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
            Phase::Http { .. } | Phase::Upgrading => {
                crate::transport::http::MAX_HEAD + crate::transport::http::MAX_BODY
            }
            Phase::Ws { .. } => config.max_frame + 14,
            Phase::Line { .. } => config.max_line + 2,
            // Nothing is buffered once closing.
            Phase::Closing { .. } => 0,
        };
        per_message + 64 * 1024
    }

    /// Silence timers restart on any input.
    fn touch(&mut self, ctx: &Ctx<'_>) {
        match self.phase {
            Phase::Ws { .. } => self.timers.set(Timer::Idle, ctx.now.instant + 2 * ctx.config.heartbeat),
            Phase::Line { login: Login::Welcomed, .. } => {
                self.timers.set(Timer::Idle, ctx.now.instant + ctx.config.line_idle)
            }
            _ => {}
        }
    }

    /// Decodes what it can of `buf`; returns the bytes used.
    fn process(&mut self, ctx: &mut Ctx<'_>, buf: &[u8]) -> usize {
        let mut used = 0;
        while used < buf.len() && !self.paused {
            let n = match self.phase {
                Phase::Http { .. } => self.process_http(ctx, &buf[used..]),
                Phase::Upgrading | Phase::Closing { .. } => 0,
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
        if !self.rbuf.is_empty() && !self.is_closing() {
            self.process_buffered(ctx);
        }
    }

    /// Decodes what it can of the buffered input and keeps the rest (none
    /// once the session is closing).
    fn process_buffered(&mut self, ctx: &mut Ctx<'_>) {
        let mut buf = std::mem::take(&mut self.rbuf);
        let used = self.process(ctx, &buf);
        buf.drain(..used);
        if !buf.is_empty() && !self.is_closing() {
            self.rbuf = buf;
        }
    }

    /// Queues bytes for the client, closing it as a slow consumer if they
    /// do not fit under `--max-queue`.
    fn send(&mut self, ctx: &mut Ctx<'_>, bytes: Bytes) {
        self.queue(ctx, bytes, false);
    }

    /// [`Session::send`], for a heartbeat when `heartbeat` (see
    /// [`Outbox::push_heartbeat`]).
    fn queue(&mut self, ctx: &mut Ctx<'_>, bytes: Bytes, heartbeat: bool) {
        if self.is_closing() {
            return;
        }
        let max = ctx.config.max_queue;
        let queued = if heartbeat { self.outbox.push_heartbeat(bytes, max) } else { self.outbox.push(bytes, max) };
        if queued.is_err() {
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
        match self.phase {
            Phase::Closing { .. } => return,
            Phase::Ws { .. } => {
                let (code, text) = reason.ws();
                self.outbox.push_unbounded(close_frame(code, text));
            }
            Phase::Line { .. } => self.outbox.push_unbounded(reason.line()),
            Phase::Http { .. } | Phase::Upgrading => {}
        }
        self.enter_closing(ctx);
    }

    /// Enters `Closing` once the goodbye is queued: the hub hears of it, input
    /// stops, and only the linger timer is left.
    fn enter_closing(&mut self, ctx: &mut Ctx<'_>) {
        self.phase = Phase::Closing { line: self.is_line(), welcomed: self.welcomed() };
        self.ended(ctx);
        self.rbuf = Vec::new();
        self.timers.stop_all();
        self.timers.set(Timer::Linger, ctx.now.instant + LINGER);
    }

    /// The session is over for routing: the hub hears it now, before the
    /// goodbye is written, so nothing the client does after reading its
    /// goodbye can reach the hub first.
    fn ended(&mut self, ctx: &mut Ctx<'_>) {
        ctx.to_hub.push(ToHubInner::Closed { sid: self.id });
    }

    /// Whether the session is closing (and the hub was told).
    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// An event from the hub's fan-out.
    pub(crate) fn deliver(&mut self, ctx: &mut Ctx<'_>, event: &Encoded) {
        if !self.welcomed() {
            return;
        }
        let line = self.is_line();
        let bytes = event.for_transport(line);
        if !bytes.is_empty() {
            ctx.metrics.messages_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.send(ctx, bytes.clone());
            if let (true, Some(ack), false) = (line, &event.ack, self.is_closing()) {
                self.line_acks.push((self.outbox.end(), Arc::clone(ack)));
            }
        }
    }

    pub(crate) fn handle_hub(&mut self, ctx: &mut Ctx<'_>, msg: ToShardInner) {
        if self.is_closing() {
            return self.handle_hub_closing(ctx, msg);
        }
        match msg {
            ToShardInner::Deliver { event, .. } => self.deliver(ctx, &event),
            ToShardInner::Reply { tag, result, .. } => match tag {
                Tag::Ws { reference, kind } => self.ws_hub_reply(ctx, reference.as_deref(), kind, &result),
                Tag::Upgrade { key } => self.upgrade_verdict(ctx, &key, result),
                Tag::Line(cmd) => self.line_reply(ctx, cmd, &result),
            },
            ToShardInner::Welcomed { expires_ms, .. } => self.welcome(ctx, expires_ms),
            ToShardInner::Api { response, .. } => {
                let close = match &mut self.phase {
                    Phase::Http { close_after_reply } => std::mem::take(close_after_reply),
                    _ => false,
                };
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

    /// The hub answering a session that already told it it ended: nothing
    /// reaches the client any more, but a delivery still counts (as it
    /// did before the close) once the session was welcomed.
    fn handle_hub_closing(&mut self, ctx: &mut Ctx<'_>, msg: ToShardInner) {
        match msg {
            ToShardInner::Deliver { event, .. } => self.deliver(ctx, &event),
            ToShardInner::Welcomed { .. } => {
                if let Phase::Closing { welcomed, .. } = &mut self.phase {
                    *welcomed = true;
                }
            }
            _ => {}
        }
    }

    /// The hub's `Welcomed`: events reach the session, the handshake is over,
    /// and a token's expiry is a deadline now.
    fn welcome(&mut self, ctx: &mut Ctx<'_>, expires_ms: Option<u64>) {
        if let Phase::Ws { login, .. } | Phase::Line { login, .. } = &mut self.phase {
            *login = Login::Welcomed;
        }
        self.timers.stop(Timer::Handshake);
        match expires_ms {
            Some(ms) => self.timers.set(Timer::Expiry, ctx.now.instant_at_unix_ms(ms).unwrap_or(ctx.now.instant)),
            None => self.timers.stop(Timer::Expiry),
        }
        self.touch(ctx);
    }

    /// Fires whatever timers are due; early calls do nothing.
    pub(crate) fn timeout(&mut self, ctx: &mut Ctx<'_>) {
        let now = ctx.now.instant;
        if self.is_closing() {
            return;
        }
        // No timer but the linger is set once closing, and `Welcomed` stops
        // the handshake timer for good: only HTTP sets it again.
        if self.timers.is_due(Timer::Handshake, now) {
            return self.close(ctx, CloseReason::HandshakeTimeout);
        }
        if self.timers.is_due(Timer::Expiry, now) {
            return self.close(ctx, CloseReason::TokenEnded);
        }
        if self.timers.is_due(Timer::Idle, now) {
            return self.close(ctx, CloseReason::Idle);
        }
        if self.timers.is_due(Timer::Ping, now) {
            self.timers.set(Timer::Ping, now + ctx.config.heartbeat);
            self.queue(ctx, ws::PING.clone(), true);
        }
    }

    /// The server is shutting down.
    pub(crate) fn shutdown(&mut self, ctx: &mut Ctx<'_>) {
        self.close(ctx, CloseReason::Shutdown);
    }

    /// The session is done and its connection can be dropped.
    pub(crate) fn wants_close(&self, now: Instant) -> bool {
        self.is_closing() && (self.outbox.is_empty() || self.timers.is_due(Timer::Linger, now))
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
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
