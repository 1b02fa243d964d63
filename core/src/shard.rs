//! A shard: the sessions of one I/O thread. This is the machine runtimes
//! drive; see the crate docs for the contract. It talks to the hub only
//! through [`ShardOutput::ToHub`] and [`ShardInput::FromHub`], whether the
//! hub runs on another thread or beside it ([`crate::Local`]).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::config::Config;
use crate::ids::SessionId;
use crate::link::{ToHub, ToHubInner, ToShard, ToShardInner};
use crate::metrics::Metrics;
use crate::session::{Ctx, Refusal, Session};
use crate::time::Now;

/// A connection's handle within its shard, stable until [`ShardOutput::Close`]
/// or [`ShardInput::Closed`].
pub type ConnKey = usize;

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP and WebSocket.
    Http,
    /// The line protocol.
    Line,
}

/// Everything that can happen to a shard. A recorded sequence of inputs
/// (with their `Now`) replays a run exactly.
#[derive(Debug, Clone)]
pub enum ShardInput<'a> {
    /// A connection was accepted; [`Shard::handle_input`] returns its key.
    Open {
        /// The listener it came from.
        transport: Transport,
        /// The peer's address.
        peer: IpAddr,
    },
    /// Bytes arrived on a connection.
    Received {
        /// The connection.
        conn: ConnKey,
        /// What was read (borrowed from the runtime's read buffer).
        data: Cow<'a, [u8]>,
    },
    /// `n` bytes of what [`Shard::outbox`] returned were written.
    Written {
        /// The connection.
        conn: ConnKey,
        /// How many bytes the socket took.
        n: usize,
    },
    /// The peer closed the connection or it failed; the runtime drops it.
    Closed {
        /// The connection.
        conn: ConnKey,
    },
    /// A batch from the hub, in the order the hub sent it.
    FromHub(Vec<ToShard>),
    /// The deadline from [`Shard::poll_timeout`] passed (early calls are
    /// harmless).
    Timeout,
    /// Close every session the way a restart should: WebSocket clients get
    /// 1012 and reconnect.
    Shutdown,
}

impl ShardInput<'_> {
    /// The same input owning its bytes, to keep in a recording.
    pub fn into_owned(self) -> ShardInput<'static> {
        match self {
            ShardInput::Received { conn, data } => ShardInput::Received { conn, data: Cow::Owned(data.into_owned()) },
            ShardInput::Open { transport, peer } => ShardInput::Open { transport, peer },
            ShardInput::Written { conn, n } => ShardInput::Written { conn, n },
            ShardInput::Closed { conn } => ShardInput::Closed { conn },
            ShardInput::FromHub(batch) => ShardInput::FromHub(batch),
            ShardInput::Timeout => ShardInput::Timeout,
            ShardInput::Shutdown => ShardInput::Shutdown,
        }
    }
}

/// What the runtime must do next.
#[derive(Debug)]
#[must_use]
pub enum ShardOutput {
    /// The connection has bytes to write: call [`Shard::outbox`] when the
    /// socket is writable (once per loop turn is enough).
    Write(ConnKey),
    /// Drop the connection; its key is free again.
    Close(ConnKey),
    /// Hand these to the hub, in order. A runtime with the hub on another
    /// thread gathers them for the whole loop turn and sends one batch.
    ToHub(Vec<ToHub>),
}

/// A call that does not fit the shard's state: a runtime bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The key names no open connection (it was never opened, or the shard
    /// closed it, or the runtime reported it closed already).
    #[error("no open connection has key {0}")]
    UnknownConnection(ConnKey),
    /// More bytes were reported written than were queued.
    #[error("connection {conn}: {n} bytes reported written, {queued} were queued")]
    WroteTooMuch {
        /// The connection.
        conn: ConnKey,
        /// The reported count.
        n: usize,
        /// What the outbox held.
        queued: usize,
    },
}

struct Entry {
    /// Boxed: the slab then holds small entries, so its spare capacity costs
    /// little, and an idle session costs only its own size.
    session: Box<Session>,
    /// The deadline this entry has in the timer heap, if any.
    scheduled: Option<Instant>,
    /// A `Write` was emitted and the outbox has not been emptied since.
    write_hinted: bool,
}

/// The sessions of one I/O thread. See the crate docs.
pub struct Shard {
    index: u16,
    serial: u64,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    entries: Slab<Entry>,
    timers: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    to_hub: Vec<ToHubInner>,
    outputs: VecDeque<ShardOutput>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("index", &self.index).field("connections", &self.entries.len()).finish()
    }
}

impl Shard {
    /// Shard number `index` of a node (its sessions' ids carry it, so the
    /// hub knows where to send their mail).
    pub fn new(index: u16, config: Arc<Config>, metrics: Arc<Metrics>) -> Shard {
        Shard {
            index,
            serial: 0,
            config,
            metrics,
            entries: Slab::new(),
            timers: BinaryHeap::new(),
            to_hub: Vec::new(),
            outputs: VecDeque::new(),
        }
    }

    /// This shard's number.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `conn` names an open connection.
    pub fn is_open(&self, conn: ConnKey) -> bool {
        self.entries.contains(conn)
    }

    /// Feeds one input; `Some(key)` for [`ShardInput::Open`]. Drain
    /// [`Shard::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Now, input: ShardInput<'_>) -> Result<Option<ConnKey>, ShardError> {
        match input {
            ShardInput::Open { transport, peer } => return Ok(Some(self.open(now, transport, peer))),
            ShardInput::Received { conn, data } => self.received(now, conn, &data)?,
            ShardInput::Written { conn, n } => self.written(now, conn, n)?,
            ShardInput::Closed { conn } => self.closed(conn)?,
            ShardInput::FromHub(batch) => self.hub_mail(now, batch),
            ShardInput::Timeout => self.timeout(now),
            ShardInput::Shutdown => self.shutdown(now),
        }
        self.flush_to_hub();
        Ok(None)
    }

    /// The next output, until `None`.
    pub fn poll_output(&mut self) -> Option<ShardOutput> {
        self.outputs.pop_front()
    }

    /// When to feed [`ShardInput::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// What to write next on a connection; returns how many slices are set.
    pub fn outbox<'a>(&'a self, conn: ConnKey, bufs: &mut [IoSlice<'a>]) -> usize {
        self.entries.get(conn).map_or(0, |e| e.session.outbox(bufs))
    }

    /// Whether a connection has bytes waiting.
    pub fn wants_write(&self, conn: ConnKey) -> bool {
        self.entries.get(conn).is_some_and(|e| e.session.wants_write())
    }

    /// Bytes queued for a connection.
    pub fn queued(&self, conn: ConnKey) -> usize {
        self.entries.get(conn).map_or(0, |e| e.session.queued())
    }

    // ---- one function per input ---------------------------------------------

    fn open(&mut self, now: Now, transport: Transport, peer: IpAddr) -> ConnKey {
        self.serial += 1;
        let slot = self.entries.vacant_key();
        let sid = SessionId::new(self.index, slot % SessionId::SLOTS, self.serial);
        let line = transport == Transport::Line;
        let gauge = if line { &self.metrics.connections_line } else { &self.metrics.connections_http };
        let open = self.metrics.connections_http.load(Relaxed) + self.metrics.connections_line.load(Relaxed);
        gauge.fetch_add(1, Relaxed);
        let mut ctx = Ctx { now, config: &self.config, metrics: &self.metrics, to_hub: &mut self.to_hub };
        let mut session = Session::new(&mut ctx, sid, line, peer);
        // Counted for its address even when refused, until `remove`.
        let address_ok = self.metrics.per_address.opened(peer, self.config.max_connections_per_ip);
        if open >= self.config.max_connections as i64 || slot >= SessionId::SLOTS {
            session.refuse(&mut ctx, Refusal::ServerFull);
        } else if !address_ok {
            session.refuse(&mut ctx, Refusal::PerAddress);
        }
        let key = self.entries.insert(Entry { session: Box::new(session), scheduled: None, write_hinted: false });
        self.after(now, key);
        self.flush_to_hub();
        key
    }

    fn received(&mut self, now: Now, conn: ConnKey, data: &[u8]) -> Result<(), ShardError> {
        self.with_session(now, conn, |s, ctx| s.received(ctx, data))
    }

    fn written(&mut self, now: Now, conn: ConnKey, n: usize) -> Result<(), ShardError> {
        let queued = self.queued(conn);
        if n > queued {
            return Err(ShardError::WroteTooMuch { conn, n, queued });
        }
        self.with_session(now, conn, |s, ctx| s.written(ctx, n))?;
        if let Some(e) = self.entries.get_mut(conn) {
            if !e.session.wants_write() {
                e.write_hinted = false;
            }
        }
        Ok(())
    }

    fn closed(&mut self, conn: ConnKey) -> Result<(), ShardError> {
        if !self.entries.contains(conn) {
            return Err(ShardError::UnknownConnection(conn));
        }
        self.remove(conn);
        Ok(())
    }

    fn hub_mail(&mut self, now: Now, batch: Vec<ToShard>) {
        for ToShard(msg) in batch {
            self.apply(now, msg);
        }
    }

    /// Fires every session timer that is due, each once: a session that
    /// left a deadline in the past (a bug) fires again at the next
    /// `Timeout`, so the shard never spins inside one input.
    fn timeout(&mut self, now: Now) {
        let mut due = Vec::new();
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now.instant {
                break;
            }
            self.timers.pop();
            if let Some(e) = self.entries.get_mut(key) {
                if e.scheduled == Some(at) {
                    e.scheduled = None;
                    due.push(key);
                }
            }
        }
        for key in due {
            let _ = self.with_session(now, key, |s, ctx| s.timeout(ctx));
        }
        self.trim_timers();
    }

    /// Lets the timer heap's spare capacity go once it is mostly unused: a
    /// session's superseded deadlines stay in the heap until they come due
    /// (a handshake time-out after the welcome, say), so opening many
    /// sessions at once doubles it, and idle sessions would keep paying for
    /// that for good (24 bytes a slot). A third spare is kept, so a steady
    /// load does not shrink and grow it in turn.
    fn trim_timers(&mut self) {
        let (len, capacity) = (self.timers.len(), self.timers.capacity());
        if capacity > 1024 && len * 2 < capacity {
            self.timers.shrink_to(len + len / 2);
        }
    }

    fn shutdown(&mut self, now: Now) {
        let keys: Vec<ConnKey> = self.entries.iter().map(|(k, _)| k).collect();
        for key in keys {
            let _ = self.with_session(now, key, |s, ctx| s.shutdown(ctx));
        }
    }

    // ---- internals ----------------------------------------------------------

    fn with_session(
        &mut self,
        now: Now,
        conn: ConnKey,
        f: impl FnOnce(&mut Session, &mut Ctx<'_>),
    ) -> Result<(), ShardError> {
        let e = self.entries.get_mut(conn).ok_or(ShardError::UnknownConnection(conn))?;
        let mut ctx = Ctx { now, config: &self.config, metrics: &self.metrics, to_hub: &mut self.to_hub };
        f(&mut e.session, &mut ctx);
        self.after(now, conn);
        Ok(())
    }

    fn apply(&mut self, now: Now, msg: ToShardInner) {
        match msg {
            ToShardInner::Deliver { sessions, event } => {
                for &sid in sessions.iter() {
                    let Some(key) = self.key_of(sid) else { continue };
                    let e = &mut self.entries[key];
                    let mut ctx = Ctx { now, config: &self.config, metrics: &self.metrics, to_hub: &mut self.to_hub };
                    e.session.deliver(&mut ctx, &event);
                    self.after(now, key);
                }
            }
            msg => {
                // The session may have ended while the hub's answer was on its way.
                let Some(key) = msg.sid().and_then(|sid| self.key_of(sid)) else { return };
                let e = &mut self.entries[key];
                let mut ctx = Ctx { now, config: &self.config, metrics: &self.metrics, to_hub: &mut self.to_hub };
                e.session.handle_hub(&mut ctx, msg);
                self.after(now, key);
            }
        }
    }

    /// After a session changed: hint a write, close it, or re-arm its timer.
    fn after(&mut self, now: Now, key: ConnKey) {
        let Some(e) = self.entries.get_mut(key) else { return };
        if e.session.wants_close(now.instant) {
            self.remove(key);
            self.outputs.push_back(ShardOutput::Close(key));
            return;
        }
        if e.session.wants_write() && !e.write_hinted {
            e.write_hinted = true;
            self.outputs.push_back(ShardOutput::Write(key));
        }
        if let Some(t) = e.session.poll_timeout() {
            if e.scheduled.is_none_or(|s| t < s) {
                e.scheduled = Some(t);
                self.timers.push(Reverse((t, key)));
            }
        }
    }

    /// The connection of a session that is still open.
    fn key_of(&self, sid: SessionId) -> Option<ConnKey> {
        let key = sid.slot();
        self.entries.get(key).is_some_and(|e| e.session.id() == sid).then_some(key)
    }

    fn remove(&mut self, key: ConnKey) {
        let e = self.entries.remove(key);
        let sid = e.session.id();
        let gauge = if e.session.is_line() { &self.metrics.connections_line } else { &self.metrics.connections_http };
        gauge.fetch_sub(1, Relaxed);
        self.metrics.per_address.closed(e.session.peer());
        // A session that closed itself told the hub when it began to.
        if !e.session.is_closing() {
            self.to_hub.push(ToHubInner::Closed { sid });
        }
    }

    /// What the sessions said to the hub during this input, as one output.
    fn flush_to_hub(&mut self) {
        if !self.to_hub.is_empty() {
            let batch = std::mem::take(&mut self.to_hub).into_iter().map(ToHub).collect();
            self.outputs.push_back(ShardOutput::ToHub(batch));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)] // Any instant will do.
    fn a_mostly_empty_timer_heap_lets_its_capacity_go() {
        let mut shard = Shard::new(0, Arc::new(Config::default()), Arc::new(Metrics::default()));
        let t0 = Instant::now();
        for key in 0..4096 {
            shard.timers.push(Reverse((t0, key)));
        }
        shard.trim_timers();
        assert!(shard.timers.capacity() >= 4096, "a full heap keeps its slots");
        for _ in 0..3000 {
            shard.timers.pop();
        }
        shard.trim_timers();
        assert_eq!(shard.timers.len(), 1096);
        assert!(shard.timers.capacity() < 2048, "{}", shard.timers.capacity());
    }
}
