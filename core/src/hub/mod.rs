//! The hub: one per node, owning users, rooms, presence, `seq`, inboxes and
//! history requests. It never waits: storage is asked through
//! [`HubOutput::Store`] and answers through [`HubInput::Store`].
//!
//! # Ordering
//! Storage completes requests in the order they were submitted (see
//! [`crate::store`]). The hub leans on that in two places. A `join` with
//! `since` and the inbox read at `welcome` both hold back live messages of the
//! same kind for that session until their read completes: every message whose
//! completion arrives before the read's was written before the read ran, so
//! the read returns it, and every later one is delivered live. Nothing is
//! missed and nothing is sent twice.
//!
//! A room's `seq` comes from the store's transaction. Completions of appends
//! arrive in `seq` order, so delivering each as it completes gives every
//! member a gapless, ordered stream.
//!
//! # Ordering in a cluster (`Config::cluster`)
//! Several nodes share one store, each with its own queue, and announce
//! what they stored on a bus ([`HubOutput::Bus`], [`HubInput::Bus`]) that
//! may lose, repeat and reorder. The argument above then no longer holds:
//! another node's append is not in this node's queue, and its announcement
//! is not ordered with this node's reads. It is replaced by these:
//!
//! - **One sequencer** (`cluster.rs`). Every stored message, whether this
//!   node's append completed, the bus brought it, or a storage read found
//!   it, goes through one per-room and per-conversation check against the
//!   newest `seq` delivered here: the next one is delivered, an older one is
//!   dropped, a later one waits while the gap is read from storage. Storage
//!   numbers each target's messages in commit order, so a message this node
//!   has seen committed proves every lower `seq` committed too: a read
//!   submitted after it returns the whole gap. Members get each message
//!   once, in `seq` order, whichever node stored it.
//! - **Nothing is lost for good.** A message the bus never brings is found
//!   by a later message's gap, or by the check of the newest `seq`s (every
//!   `Config::cluster_check`, after the link's `Up`, and when a room or a
//!   user starts being served here), then read like any gap.
//! - **`since` replays.** A session still skips live messages of the room
//!   while its replay is read, and the replay sends what it read up to the
//!   `seq` delivered here (the `ok`'s); later ones come live. What was
//!   delivered here but not read (another node stored it after the read
//!   ran, and the bus was faster than this node's storage queue) is read
//!   again, the session still replaying, until the replay reaches what was
//!   delivered (`PendingKind::ReplayRest`).
//! - **Inbox reads.** Live private messages still wait while the inbox is
//!   read; one held back while a page was read may have been stored after
//!   that page's read ran, so then one more page is read before live ones
//!   flow (`SessionExtra::inbox_missed`). A session never gets one private
//!   `seq` twice, or an older after a newer, from its inbox and live
//!   together (`SessionExtra::private_seen`).

mod pending;
pub(crate) mod state;
mod stream;

mod auth;
mod chat;
mod cluster;
mod guest;
mod inbox;
mod limits;
mod nodes;
mod relay;

use std::sync::Arc;
use std::time::Instant;

use crate::bus::{BusCommand, BusEvent};
use crate::config::Config;
use crate::ids::SessionId;
use crate::link::{Tag, ToHub, ToHubInner, ToShard, ToShardInner};
use crate::metrics::Metrics;
use crate::render::{ErrorCode, Failure, Reply};
use crate::store::{StoreDone, StoreError, StoreOp, StoreRequest, StoreValue, StoredRoom};
use crate::time::Now;

pub use crate::render::Encoded;
use pending::{Held, Pending, PendingKind, PendingTable};
use state::State;

/// An input to the hub.
#[derive(Debug, Clone)]
pub enum HubInput {
    /// A batch member from a shard.
    FromShard(ToHub),
    /// A storage completion.
    Store(StoreDone),
    /// The deadline from [`Hub::poll_timeout`] passed (early calls are harmless).
    Timeout,
    /// From the bus between the nodes of a cluster (ignored on a single
    /// node, which has none).
    Bus(BusEvent),
}

/// Something the hub wants done.
#[derive(Debug)]
#[must_use]
pub enum HubOutput {
    /// Hand these to shard number `.0`, in order.
    ToShard(u16, Vec<ToShard>),
    /// Submit these to storage, in order.
    Store(Vec<StoreRequest>),
    /// Carry this out on the bus (only with `Config::cluster`).
    Bus(BusCommand),
}

/// The routing state machine. See the module docs.
#[derive(Debug)]
pub struct Hub {
    config: Config,
    metrics: Arc<Metrics>,
    state: State,
    pending: PendingTable,
    /// Makes guest principals unique across restarts: the start time.
    incarnation: u64,
    guests: u64,
    limits: limits::Limits,
    /// The cancel flag of each session's password operation in flight
    /// (at most one per session: a hello, or one HTTP request at a time).
    cancels: std::collections::HashMap<SessionId, crate::store::Cancel>,
    /// Registered users whose last session closed, by when their `offline`
    /// is due, oldest first (the grace is constant, so this is sorted). A
    /// user may appear more than once; only an entry matching `Online::gone`
    /// counts.
    grace: std::collections::VecDeque<(Instant, String)>,
    out: Vec<Vec<ToShard>>,
    dirty: Vec<u16>,
    store_out: Vec<StoreRequest>,
    cluster: cluster::ClusterState,
    nodes: nodes::Nodes,
    /// What relayed events need remembered (`hub/relay.rs`).
    relay: relay::RelayState,
}

impl Hub {
    /// A hub over what storage holds (`StoreOp::LoadAll`'s snapshot).
    pub fn new(config: Config, metrics: Arc<Metrics>, users: Vec<String>, rooms: Vec<StoredRoom>, now: Now) -> Hub {
        let mut state = State::with_users(users);
        if config.cluster {
            state.track_touched();
        }
        for room in rooms {
            let entry = state.rooms.entry(room.name.clone()).or_default();
            entry.seq = room.seq;
            for member in room.members {
                state.add_member(&member, &room.name);
            }
        }
        metrics.rooms.store(state.live_rooms() as i64, std::sync::atomic::Ordering::Relaxed);
        let mut hub = Hub {
            limits: limits::Limits::new(&config),
            config,
            metrics,
            state,
            pending: PendingTable::default(),
            incarnation: now.unix_ms,
            guests: 0,
            cancels: Default::default(),
            grace: Default::default(),
            out: Vec::new(),
            dirty: Vec::new(),
            store_out: Vec::new(),
            cluster: Default::default(),
            nodes: Default::default(),
            relay: Default::default(),
        };
        if hub.config.cluster {
            hub.nodes_start(now);
        }
        hub
    }

    /// Feeds one input. Drain [`Hub::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Now, input: HubInput) {
        match input {
            HubInput::FromShard(ToHub(msg)) => self.handle_shard(now, msg),
            HubInput::Store(done) => self.handle_store(now, done),
            HubInput::Timeout => self.handle_timeout(now),
            HubInput::Bus(event) => self.handle_bus(now, event),
        }
        if self.config.cluster {
            self.sync_subscriptions(now);
        }
    }

    /// The next thing to do, until `None`.
    pub fn poll_output(&mut self) -> Option<HubOutput> {
        if !self.store_out.is_empty() {
            return Some(HubOutput::Store(std::mem::take(&mut self.store_out)));
        }
        if let Some(command) = self.cluster.out.pop_front() {
            return Some(HubOutput::Bus(command));
        }
        let shard = self.dirty.pop()?;
        let out = &mut self.out[usize::from(shard)];
        // The next batch for this shard starts as large as this one (within
        // a bound), instead of growing from nothing by reallocations: under
        // load a shard gets about as much mail every turn.
        let next = Vec::with_capacity(out.len().min(MAIL_RESERVE));
        Some(HubOutput::ToShard(shard, std::mem::replace(out, next)))
    }

    /// When to call with [`HubInput::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let grace = self.grace.front().map(|(at, _)| *at);
        let nodes = self.nodes_deadline();
        [self.pending.next_deadline(), grace, self.cluster.next_check(), nodes].into_iter().flatten().min()
    }

    /// Storage requests waiting for completion.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    fn handle_shard(&mut self, now: Now, msg: ToHubInner) {
        match msg {
            ToHubInner::Hello { sid, tag, auth, line, peer } => self.hello(now, sid, tag, auth, line, peer),
            ToHubInner::Request { sid, tag, request } => {
                let Some(user) = self.state.sessions.get(&sid).and_then(|s| s.user()).map(str::to_owned) else {
                    let f = Failure::new(ErrorCode::Unauthenticated, "send hello first");
                    return self.reply(sid, tag, Err(f));
                };
                let request = self.state.resolve_names(request);
                match self.unknown_user(&request) {
                    Some(name) => self.find_user(now, sid, tag, user, name, request),
                    None => self.chat(now, sid, tag, user, request),
                }
            }
            ToHubInner::Api { sid, call, peer } => self.api(now, sid, call, peer),
            ToHubInner::LineAck { sid, ack } => self.line_ack(now, sid, &ack),
            ToHubInner::Closed { sid } => self.closed(now, sid),
        }
    }

    fn handle_timeout(&mut self, now: Now) {
        self.end_graces(now);
        self.cluster_timeout(now);
        self.nodes_timeout(now);
        for id in self.pending.expire(now.instant) {
            let Some(p) = self.pending.get_expired(id) else { continue };
            if let PendingKind::Fill { key, .. } = &p.kind {
                let key = key.clone();
                self.fill_expired(&key);
                continue;
            }
            let (sid, tag, held, api) = (p.sid, p.tag.clone(), p.kind.held_back(), p.kind.is_api());
            if p.kind.is_hello() {
                // Answered `unavailable`, as if it had failed: the client may
                // say `hello` again; the late completion welcomes nobody.
                let claimed = match &p.kind {
                    PendingKind::ClaimGuest { name, .. } => Some(name.clone()),
                    _ => None,
                };
                self.hello_abandoned(sid, claimed);
            }
            self.release(sid, held);
            if let Some(tag) = tag {
                self.reply(sid, tag, Err(unavailable()));
            } else if api {
                self.api_unavailable(sid);
            }
        }
    }

    fn handle_store(&mut self, now: Now, done: StoreDone) {
        let Some((pending, expired)) = self.pending.take(done.id) else {
            // Storage answers each request once, and only what was asked.
            debug_assert!(false, "a completion for {:?}, which is not pending", done.id);
            return;
        };
        if expired {
            return self.complete_expired(now, pending, done.result);
        }
        self.complete(now, pending, done.result);
    }

    /// A completion after its client was told `unavailable`: only what keeps
    /// other clients' view whole is still applied, and what the hub holds for
    /// the request (a reserved name, a login count) is settled.
    fn complete_expired(&mut self, now: Now, pending: Pending, result: Result<StoreValue, StoreError>) {
        match (pending.kind, result) {
            (PendingKind::SendRoom { room, message }, Ok(value)) => {
                let _ = self.deliver_room_message(now, pending.sid, &room, message, value);
            }
            (PendingKind::Authenticate(how), result) => {
                self.cancels.remove(&pending.sid);
                self.settle_password(&how, &result);
            }
            (PendingKind::Api(call), result) => self.settle_api(&call, &result),
            (PendingKind::ClaimGuest { name, .. }, result) => self.settle_claim(now, &name, &result),
            // The hub's own reads (`hub/relay.rs`): what they found is as
            // true late as on time.
            (PendingKind::RoomMembers { rooms }, result) => self.complete_room_members(rooms, result),
            (PendingKind::GuestJoin { room, .. }, result) => self.complete_room_members(vec![room], result),
            (PendingKind::UserRooms { user }, result) => self.complete_user_rooms(user, result),
            (PendingKind::LiveTokens { tokens }, result) => self.complete_live_tokens(tokens, result),
            _ => {}
        }
    }

    // ---- output helpers -------------------------------------------------

    fn push(&mut self, shard: u16, msg: ToShardInner) {
        post(&mut self.out, &mut self.dirty, shard, msg);
    }

    fn store(&mut self, now: Now, op: StoreOp, pending: Pending) {
        if self.pending.len() >= self.config.store_backlog {
            // Storage is far behind: answer at once, through the same path
            // as a failed request, so every side effect is undone the same way.
            return self.complete(now, pending, Err(crate::store::StoreError::Overloaded));
        }
        let id = self.pending.insert(now.instant, pending);
        self.store_out.push(StoreRequest { id, op });
    }

    fn reply(&mut self, sid: SessionId, tag: Tag, result: Result<Reply, Failure>) {
        self.push(sid.shard(), ToShardInner::Reply { sid, tag, result });
    }

    /// Sends `event` to `sessions`, one `Deliver` per shard.
    fn deliver(&mut self, sessions: &[SessionId], event: &Encoded) {
        let mut by_shard: Vec<(u16, Vec<SessionId>)> = Vec::new();
        for &sid in sessions {
            match by_shard.iter_mut().find(|(s, _)| *s == sid.shard()) {
                Some((_, list)) => list.push(sid),
                None => by_shard.push((sid.shard(), vec![sid])),
            }
        }
        for (shard, sessions) in by_shard {
            self.push(shard, ToShardInner::Deliver { sessions: sessions.into(), event: event.clone() });
        }
    }

    /// Every session of `user`.
    fn sessions_of(&self, user: &str) -> Vec<SessionId> {
        self.state.online.get(user).map(|o| o.sessions.to_vec()).unwrap_or_default()
    }

    /// Sends `event` to every session of every member of `room`, except
    /// those of `except`, and for a message (`skip_replaying`) except those
    /// replaying the room: one `Deliver` per shard, each shard's run of the
    /// room's route shared as it is (no lookup per member, no copy).
    fn deliver_to_room(&mut self, room: &str, except: Option<&str>, skip_replaying: bool, event: &Encoded) {
        #[cfg(debug_assertions)]
        let expected = self.room_sessions_by_members(room, except, skip_replaying);
        let Hub { state, out, dirty, .. } = self;
        let Some(r) = state.rooms.get(room) else { return };
        let excluded = except.and_then(|u| state.online.get(u)).map_or(&[][..], |o| &o.sessions[..]);
        let replaying = if skip_replaying { state.replaying(room) } else { &[] };
        #[cfg(debug_assertions)]
        let mut routed = Vec::new();
        for (shard, run) in r.route() {
            let sessions: Arc<[SessionId]> = if excluded.is_empty() && replaying.is_empty() {
                Arc::clone(run)
            } else {
                let kept = |s: &SessionId| !excluded.contains(s) && replaying.binary_search(s).is_err();
                let kept: Vec<SessionId> = run.iter().copied().filter(kept).collect();
                if kept.is_empty() {
                    continue;
                }
                kept.into()
            };
            #[cfg(debug_assertions)]
            routed.extend_from_slice(&sessions);
            post(out, dirty, *shard, ToShardInner::Deliver { sessions, event: event.clone() });
        }
        #[cfg(debug_assertions)]
        {
            routed.sort_unstable();
            debug_assert_eq!(routed, expected, "the route of {room} is out of step with its members");
        }
    }

    /// What [`Hub::deliver_to_room`] must reach, computed the slow way from
    /// the members (sorted): every debug build checks the routes with it.
    #[cfg(debug_assertions)]
    fn room_sessions_by_members(&self, room: &str, except: Option<&str>, skip_replaying: bool) -> Vec<SessionId> {
        let Some(r) = self.state.rooms.get(room) else { return Vec::new() };
        let mut out = Vec::new();
        for member in r.members.iter().filter(|m| Some(m.as_str()) != except) {
            for &sid in self.state.online.get(member).iter().flat_map(|o| &o.sessions) {
                if !(skip_replaying && self.state.replaying(room).contains(&sid)) {
                    out.push(sid);
                }
            }
        }
        out.sort_unstable();
        out
    }

    fn update_room_gauge(&self) {
        self.metrics.rooms.store(self.state.live_rooms() as i64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The most mail a shard's next batch is made ready for (see
/// [`Hub::poll_output`]): at most 21 KiB a shard stays reserved.
const MAIL_RESERVE: usize = 128;

/// Appends `msg` to shard `shard`'s mail, noting the shard as having some.
fn post(out: &mut Vec<Vec<ToShard>>, dirty: &mut Vec<u16>, shard: u16, msg: ToShardInner) {
    let i = usize::from(shard);
    if out.len() <= i {
        out.resize_with(i + 1, Vec::new);
    }
    if out[i].is_empty() {
        dirty.push(shard);
    }
    out[i].push(ToShard(msg));
}

fn unavailable() -> Failure {
    Failure::new(ErrorCode::Unavailable, "storage is unavailable; nothing was done")
}

impl Hub {
    /// A request that held live messages back for `sid` expired: they flow
    /// again, or the session would wait for them for ever. (What an expired
    /// inbox page did not send comes at the next session.)
    fn release(&mut self, sid: SessionId, held: Held) {
        match held {
            Held::Nothing => {}
            Held::Room(room) => self.unmark_replaying(sid, &room),
            Held::Inbox => {
                if let Some(info) = self.state.sessions.get_mut(&sid) {
                    info.inbox = state::InboxRead::Done;
                }
                self.send_held_echoes(sid);
            }
        }
    }
}

#[cfg(test)]
mod tests;
