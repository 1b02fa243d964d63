//! A shard: the sessions of one I/O thread, and with `--threads 1` the hub
//! too. This is the machine runtimes drive; see the crate docs for the
//! contract.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::config::Config;
use crate::hub::{Hub, HubAction, HubInput};
use crate::ids::SessionId;
use crate::link::{ToHub, ToHubInner, ToShard, ToShardInner};
use crate::metrics::Metrics;
use crate::session::{Ctx, Refusal, Session};
use crate::store::{StoreDone, StoreRequest};
use crate::time::{earliest, Now};

/// A connection's handle within its shard, stable until [`ShardAction::Close`]
/// or [`Shard::closed`].
pub type ConnKey = usize;

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP and WebSocket.
    Http,
    /// The line protocol.
    Line,
}

/// What the runtime must do next.
#[derive(Debug)]
#[must_use]
pub enum ShardAction {
    /// The connection has bytes to write: call [`Shard::outbox`] when the
    /// socket is writable (once per loop turn is enough).
    Write(ConnKey),
    /// Drop the connection; its key is free again.
    Close(ConnKey),
    /// Submit these to storage and feed the completions back with
    /// [`Shard::handle_store`] (only when the hub is local).
    Store(Vec<StoreRequest>),
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
    hub: Option<Hub>,
    to_hub: Vec<ToHubInner>,
    actions: VecDeque<ShardAction>,
}

impl Shard {
    /// Shard number `index` of a node whose hub runs on another thread.
    pub fn new(index: u16, config: Arc<Config>, metrics: Arc<Metrics>) -> Shard {
        Shard {
            index,
            serial: 0,
            config,
            metrics,
            entries: Slab::new(),
            timers: BinaryHeap::new(),
            hub: None,
            to_hub: Vec::new(),
            actions: VecDeque::new(),
        }
    }

    /// The only shard of a node, with the hub in the same thread: no
    /// hand-off at all.
    pub fn with_hub(config: Arc<Config>, metrics: Arc<Metrics>, hub: Hub) -> Shard {
        Shard { hub: Some(hub), ..Shard::new(0, config, metrics) }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A connection was accepted.
    pub fn open(&mut self, now: Now, transport: Transport, peer: IpAddr) -> ConnKey {
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
        key
    }

    /// Bytes arrived on a connection.
    pub fn received(&mut self, now: Now, key: ConnKey, data: &[u8]) {
        self.with_session(now, key, |s, ctx| s.received(ctx, data));
    }

    /// `n` bytes of what [`Shard::outbox`] returned were written.
    pub fn written(&mut self, now: Now, key: ConnKey, n: usize) {
        self.with_session(now, key, |s, ctx| s.written(ctx, n));
        if let Some(e) = self.entries.get_mut(key) {
            if !e.session.wants_write() {
                e.write_hinted = false;
            }
        }
    }

    /// The peer closed the connection or it failed; the runtime drops it.
    pub fn closed(&mut self, now: Now, key: ConnKey) {
        if self.entries.contains(key) {
            self.remove(key);
            self.flush_to_hub(now);
        }
    }

    /// Messages from the hub thread, in order.
    pub fn handle_hub(&mut self, now: Now, messages: Vec<ToShard>) {
        for ToShard(msg) in messages {
            self.apply(now, msg);
        }
        self.flush_to_hub(now);
    }

    /// A storage completion for the local hub.
    pub fn handle_store(&mut self, now: Now, done: StoreDone) {
        if let Some(hub) = &mut self.hub {
            hub.handle_input(now, HubInput::Store(done));
            self.drain_hub(now);
            self.flush_to_hub(now);
        }
    }

    /// Fires every timer that is due; early or spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now.instant {
                break;
            }
            self.timers.pop();
            let Some(e) = self.entries.get_mut(key) else { continue };
            if e.scheduled != Some(at) {
                continue;
            }
            e.scheduled = None;
            self.with_session(now, key, |s, ctx| s.timeout(ctx));
        }
        if let Some(hub) = &mut self.hub {
            if hub.poll_timeout().is_some_and(|t| t <= now.instant) {
                hub.handle_input(now, HubInput::Timeout);
                self.drain_hub(now);
                self.flush_to_hub(now);
            }
        }
    }

    /// Closes every session the way a restart should: WebSocket clients
    /// get 1012 and reconnect.
    pub fn shutdown(&mut self, now: Now) {
        let keys: Vec<ConnKey> = self.entries.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.with_session(now, key, |s, ctx| s.shutdown(ctx));
        }
    }

    /// The next action, until `None`.
    pub fn poll_action(&mut self) -> Option<ShardAction> {
        self.actions.pop_front()
    }

    /// What this shard's sessions said to a remote hub since the last call:
    /// take it once per loop turn and hand it over as one batch.
    pub fn take_to_hub(&mut self) -> Vec<ToHub> {
        if self.hub.is_some() {
            return Vec::new();
        }
        std::mem::take(&mut self.to_hub).into_iter().map(ToHub).collect()
    }

    /// When to call [`Shard::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self.timers.peek().map(|Reverse((t, _))| *t);
        earliest(sessions, self.hub.as_ref().and_then(Hub::poll_timeout))
    }

    /// What to write next on a connection; returns how many slices are set.
    pub fn outbox<'a>(&'a self, key: ConnKey, bufs: &mut [IoSlice<'a>]) -> usize {
        self.entries.get(key).map_or(0, |e| e.session.outbox(bufs))
    }

    /// Whether a connection has bytes waiting.
    pub fn wants_write(&self, key: ConnKey) -> bool {
        self.entries.get(key).is_some_and(|e| e.session.wants_write())
    }

    /// Bytes queued for a connection.
    pub fn queued(&self, key: ConnKey) -> usize {
        self.entries.get(key).map_or(0, |e| e.session.queued())
    }

    /// The local hub, if this shard has it.
    pub fn hub(&self) -> Option<&Hub> {
        self.hub.as_ref()
    }

    // ---- internals ----------------------------------------------------------

    fn with_session(&mut self, now: Now, key: ConnKey, f: impl FnOnce(&mut Session, &mut Ctx<'_>)) {
        let Some(e) = self.entries.get_mut(key) else { return };
        let mut ctx = Ctx { now, config: &self.config, metrics: &self.metrics, to_hub: &mut self.to_hub };
        f(&mut e.session, &mut ctx);
        self.after(now, key);
        self.flush_to_hub(now);
    }

    fn apply(&mut self, now: Now, msg: ToShardInner) {
        match msg {
            ToShardInner::Deliver { sessions, event } => {
                for sid in sessions {
                    let Some(key) = self.key_of(sid) else { continue };
                    let e = &mut self.entries[key];
                    let mut ctx = Ctx { now, config: &self.config, metrics: &self.metrics, to_hub: &mut self.to_hub };
                    e.session.deliver(&mut ctx, &event);
                    self.after(now, key);
                }
            }
            msg => {
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
            self.actions.push_back(ShardAction::Close(key));
            return;
        }
        if e.session.wants_write() && !e.write_hinted {
            e.write_hinted = true;
            self.actions.push_back(ShardAction::Write(key));
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

    /// Hands what sessions said to the hub: at once when it is local (and
    /// routes its answers back), as one batch action when it is remote.
    fn flush_to_hub(&mut self, now: Now) {
        while !self.to_hub.is_empty() {
            let batch = std::mem::take(&mut self.to_hub);
            let Some(hub) = &mut self.hub else {
                // Remote hub: the batch grows until the runtime takes it at
                // the end of its loop turn.
                self.to_hub = batch;
                return;
            };
            for msg in batch {
                hub.handle_input(now, HubInput::FromShard(ToHub(msg)));
            }
            self.drain_hub(now);
        }
    }

    fn drain_hub(&mut self, now: Now) {
        loop {
            let Some(hub) = &mut self.hub else { return };
            let Some(action) = hub.poll_action() else { return };
            match action {
                HubAction::Store(requests) => self.actions.push_back(ShardAction::Store(requests)),
                HubAction::ToShard(_, messages) => {
                    for ToShard(msg) in messages {
                        self.apply(now, msg);
                    }
                }
            }
        }
    }
}
