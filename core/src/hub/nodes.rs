//! The other nodes of a cluster: whether they are alive, and who is online
//! there, so that presence and `who` answer for the whole cluster.
//!
//! Every node publishes announcements on one topic ([`BusTopic::Nodes`]),
//! each numbered `n` (+1 per announcement of this node run): a `Beat`
//! every `Config::node_beat`, `Online` when a user's first session here is
//! welcomed, `Offline` when its last one ended (a registered user's after
//! the presence grace), and a `Snapshot` of its online users, in pages,
//! when another node asks with `Sync`. Each node keeps a view of every
//! peer: when it last heard it, its last `n`, its users. A peer it never
//! heard of, or a gap in `n` (the bus lost something), makes the view of
//! that peer unsure until a snapshot replaces it; the node asks for one at
//! once, and again every beat while a peer stays unsure.
//!
//! A peer silent for `Config::node_timeout` is dead: it leaves the view and
//! each of its users is gone from it, as if it had announced `Offline`. The
//! bus is lossy, so liveness is decided here, not by the bus: no Redis key
//! expires (see ARCHITECTURE.md, "Several nodes"). While this node's own
//! link is down it hears nobody, so it declares nobody dead; at `Up` it
//! restarts every deadline and asks for snapshots.
//!
//! A registered user is online in the cluster when it is online here
//! (`State::online`, grace included) or at a live peer. This node's room
//! members hear `online` when a user becomes online in the cluster and
//! `offline` when it is online nowhere; a guest gone from the cluster gives
//! `leave` and leaves this node's member tables. The node that hosts the
//! sessions follows the same rule for its own users (`complete_welcome`,
//! `Hub::gone`), so each change of the cluster-wide state is told once per
//! member, by the member's own node.
//!
//! Guest names are claimed in storage (`StoreOp::ClaimGuest`) before a
//! guest is welcomed, so two nodes never welcome one name; a dead node's
//! claims are taken over by the next node that wants the name.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::pending::{Pending, PendingKind};
use super::state::Phase;
use super::{unavailable, Hub};
use crate::bus::{BusCommand, BusMessage, BusTopic, NodeNews, NodeUser, SNAPSHOT_PAGE};
use crate::ids::SessionId;
use crate::link::Tag;
use crate::metrics::Metrics;
use crate::render::event::presence;
use crate::render::{ErrorCode, Failure, Presence};
use crate::store::{StoreError, StoreOp, StoreValue};
use crate::time::Now;

/// What this node knows of another.
#[derive(Debug)]
struct Peer {
    heard: Instant,
    /// Its newest announcement number seen.
    n: u64,
    /// Its users, by name.
    users: HashMap<String, NodeUser>,
    /// False from the first word heard or a gap in `n` until a whole
    /// snapshot arrives: `users` may be missing something.
    synced: bool,
    /// A snapshot being received: the next page expected, and the users so far.
    incoming: Option<(u32, Vec<NodeUser>)>,
}

/// The view of the other nodes; empty and unused on a single node.
#[derive(Debug, Default)]
pub(crate) struct Nodes {
    /// This node's announcement counter.
    n: u64,
    up: bool,
    peers: HashMap<u64, Peer>,
    /// Name → how many live peers have the user online. Sorted, so `who`
    /// reads its first names without sorting everyone.
    remote: BTreeMap<String, usize>,
    next_beat: Option<Instant>,
    last_sync: Option<Instant>,
    /// Since when the link has been up without a break.
    up_since: Option<Instant>,
}

impl Hub {
    /// A cluster node listens to the others from its start, whatever its
    /// sessions, and beats at once.
    pub(super) fn nodes_start(&mut self, now: Now) {
        self.cluster.out.push_back(BusCommand::Subscribe(BusTopic::Nodes));
        self.nodes.next_beat = Some(now.instant);
    }

    /// When the next beat or a peer's deadline is due.
    pub(super) fn nodes_deadline(&self) -> Option<Instant> {
        let timeout = self.config.node_timeout;
        let deadlines = self.nodes.peers.values().filter(|_| self.nodes.up).map(|p| p.heard + timeout);
        self.nodes.next_beat.into_iter().chain(deadlines).min()
    }

    /// Beats, asks again for what is unsure, and counts silent peers dead.
    pub(super) fn nodes_timeout(&mut self, now: Now) {
        if !self.config.cluster {
            return;
        }
        if self.nodes.next_beat.is_some_and(|t| t <= now.instant) {
            self.nodes.next_beat = Some(now.instant + self.config.node_beat);
            self.announce(NodeNews::Beat);
            if self.nodes.peers.values().any(|p| !p.synced) {
                self.sync(now);
            }
        }
        if !self.nodes.up {
            return;
        }
        let timeout = self.config.node_timeout;
        let dead: Vec<u64> =
            self.nodes.peers.iter().filter(|(_, p)| p.heard + timeout <= now.instant).map(|(&id, _)| id).collect();
        for id in dead {
            let Some(peer) = self.nodes.peers.remove(&id) else { continue };
            Metrics::add(&self.metrics.cluster_peers_lost, 1);
            for user in peer.users.into_values() {
                self.peer_user_removed(&user);
            }
        }
        self.count_peers();
    }

    /// The link is back: what the others said meanwhile was lost, and they
    /// may have counted this node dead. Deadlines restart from now.
    pub(super) fn nodes_up(&mut self, now: Now) {
        self.nodes.up = true;
        self.nodes.up_since.get_or_insert(now.instant);
        for peer in self.nodes.peers.values_mut() {
            peer.heard = now.instant;
            peer.synced = false;
        }
        self.nodes.last_sync = None;
        self.sync(now);
    }

    pub(super) fn nodes_down(&mut self) {
        self.nodes.up = false;
        self.nodes.up_since = None;
    }

    /// Publishes `news` with this node's next number.
    fn announce(&mut self, news: NodeNews) {
        self.nodes.n += 1;
        let message = BusMessage::Node { node: self.config.node, n: self.nodes.n, news };
        self.cluster.out.push_back(BusCommand::Publish { topic: BusTopic::Nodes, bytes: message.encode() });
    }

    /// Asks every node for its snapshot, at most once per beat.
    fn sync(&mut self, now: Now) {
        if self.nodes.last_sync.is_some_and(|t| now.instant < t + self.config.node_beat) {
            return;
        }
        self.nodes.last_sync = Some(now.instant);
        Metrics::add(&self.metrics.cluster_syncs, 1);
        self.announce(NodeNews::Sync);
    }

    /// This node's users, in pages.
    fn send_snapshot(&mut self) {
        let users: Vec<NodeUser> =
            self.state.online.iter().map(|(name, o)| self.node_user(name, &o.key, o.guest)).collect();
        let pages = users.len().div_ceil(SNAPSHOT_PAGE).max(1);
        let mut chunks = users.chunks(SNAPSHOT_PAGE);
        for page in 0..pages {
            let users = chunks.next().map(<[NodeUser]>::to_vec).unwrap_or_default();
            self.announce(NodeNews::Snapshot { users, page: page as u32, last: page + 1 == pages });
        }
    }

    /// An announcement from the bus.
    pub(super) fn node_news(&mut self, now: Now, node: u64, n: u64, news: NodeNews) {
        if node == self.config.node {
            return;
        }
        let fresh = self.heard(now, node, n);
        if !fresh {
            // Older than what was applied (the bus reordered or repeated):
            // applying it would undo newer news.
            return;
        }
        match news {
            NodeNews::Beat => {}
            NodeNews::Sync => self.send_snapshot(),
            NodeNews::Online(user) => self.peer_user_set(node, user),
            NodeNews::Offline { user } => {
                let gone = self.nodes.peers.get_mut(&node).and_then(|p| p.users.remove(&user));
                if let Some(gone) = gone {
                    self.peer_user_removed(&gone);
                }
            }
            NodeNews::Snapshot { users, page, last } => self.snapshot_page(node, users, page, last),
        }
    }

    /// Notes that `node` spoke with number `n`; returns whether `n` is new.
    /// A node not known, or a number skipped, makes its view unsure.
    fn heard(&mut self, now: Now, node: u64, n: u64) -> bool {
        let unsure = match self.nodes.peers.get_mut(&node) {
            None => {
                let peer = Peer { heard: now.instant, n, users: HashMap::new(), synced: false, incoming: None };
                self.nodes.peers.insert(node, peer);
                self.count_peers();
                true
            }
            Some(peer) => {
                peer.heard = now.instant;
                if n <= peer.n {
                    return false;
                }
                let gap = n != peer.n + 1;
                peer.n = n;
                if gap {
                    peer.synced = false;
                }
                gap
            }
        };
        if unsure {
            self.sync(now);
        }
        true
    }

    fn snapshot_page(&mut self, node: u64, users: Vec<NodeUser>, page: u32, last: bool) {
        let Some(peer) = self.nodes.peers.get_mut(&node) else { return };
        let mut so_far = match (page, peer.incoming.take()) {
            (0, _) => Vec::new(),
            (p, Some((next, so_far))) if p == next => so_far,
            // A page of a snapshot whose start was lost: the gap in `n`
            // made the view unsure, and the next sync brings a whole one.
            _ => return,
        };
        so_far.extend(users);
        if !last {
            peer.incoming = Some((page + 1, so_far));
            return;
        }
        peer.synced = true;
        let new: HashMap<String, NodeUser> = so_far.into_iter().map(|u| (u.user.clone(), u)).collect();
        let old = std::mem::replace(&mut peer.users, new.clone());
        for (name, user) in &old {
            if !new.contains_key(name) {
                self.peer_user_removed(user);
            }
        }
        for (name, user) in &new {
            if !old.contains_key(name) {
                self.peer_user_added(user);
            }
            let before = old.get(name).map(|u| u.rooms.clone()).unwrap_or_default();
            self.guest_rooms_changed(before, user);
        }
    }

    /// `user` is online at `node` (again, or for the first time), a guest
    /// with the rooms given.
    fn peer_user_set(&mut self, node: u64, user: NodeUser) {
        let Some(peer) = self.nodes.peers.get_mut(&node) else { return };
        let before = peer.users.insert(user.user.clone(), user.clone());
        if before.is_none() {
            self.peer_user_added(&user);
        }
        self.guest_rooms_changed(before.map(|u| u.rooms).unwrap_or_default(), &user);
    }

    /// A peer's guest is in `user.rooms` now, and was in `before`: the
    /// member tables here follow, as for a relayed join or leave (which
    /// may have come first: then nothing changes twice).
    fn guest_rooms_changed(&mut self, before: Vec<String>, user: &NodeUser) {
        if !user.guest {
            return;
        }
        for room in before.iter().filter(|r| !user.rooms.contains(r)) {
            self.relayed_member(room, &user.user, &user.key, false);
        }
        for room in user.rooms.iter().filter(|r| !before.contains(r)) {
            self.relayed_member(room, &user.user, &user.key, true);
        }
    }

    /// `user` is online at one more peer.
    fn peer_user_added(&mut self, user: &NodeUser) {
        let count = self.nodes.remote.entry(user.user.clone()).or_default();
        *count += 1;
        if *count == 1 && !self.state.online.contains_key(user.user.as_str()) && !user.guest {
            self.tell_rooms(&user.user, Presence::Online);
        }
    }

    /// `user` is no longer online at one peer.
    fn peer_user_removed(&mut self, user: &NodeUser) {
        let Some(count) = self.nodes.remote.get_mut(&user.user) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        self.nodes.remote.remove(&user.user);
        if self.state.online.contains_key(user.user.as_str()) {
            return;
        }
        if user.guest {
            self.tell_rooms(&user.user, Presence::Leave);
            self.update_room_gauge();
        } else {
            self.tell_rooms(&user.user, Presence::Offline);
        }
    }

    /// This node's members of `user`'s rooms hear `what`; a `Leave` also
    /// ends the memberships here.
    fn tell_rooms(&mut self, user: &str, what: Presence) {
        let rooms: Vec<String> = self.state.rooms_of(user);
        for room in rooms {
            self.deliver_to_room(&room, Some(user), false, &presence(&room, user, what));
            if what == Presence::Leave {
                self.state.remove_member(user, &room);
            }
        }
    }

    fn count_peers(&self) {
        self.metrics.cluster_peers.store(self.nodes.peers.len() as i64, Relaxed);
    }

    // ---- hooks for this node's own sessions ---------------------------------

    /// Whether `user` is online at a live peer.
    pub(super) fn online_elsewhere(&self, user: &str) -> bool {
        self.config.cluster && self.nodes.remote.contains_key(user)
    }

    /// Whether `user` is online anywhere in the cluster (or here, alone).
    pub(super) fn online_in_cluster(&self, user: &str) -> bool {
        self.state.online.contains_key(user) || self.online_elsewhere(user)
    }

    /// The first `max` names online anywhere, sorted: this node's and the
    /// peers' sorted sets merged.
    pub(super) fn online_names(&self, max: usize) -> Vec<String> {
        let mut here = self.state.online_names.iter().peekable();
        let mut there = self.nodes.remote.keys().peekable();
        let mut out = Vec::new();
        while out.len() < max {
            let next = match (here.peek(), there.peek()) {
                (Some(a), Some(b)) if a.as_str() == b.as_str() => {
                    there.next();
                    here.next().map(|n| n.as_str())
                }
                (Some(a), Some(b)) if a.as_str() < b.as_str() => here.next().map(|n| n.as_str()),
                (Some(_), Some(_)) | (None, Some(_)) => there.next().map(String::as_str),
                (Some(_), None) => here.next().map(|n| n.as_str()),
                (None, None) => None,
            };
            let Some(name) = next else { break };
            out.push(name.to_string());
        }
        out
    }

    /// `user` as this node announces it: with its rooms if a guest.
    fn node_user(&self, user: &str, key: &str, guest: bool) -> NodeUser {
        let rooms = if guest { self.state.rooms_of(user) } else { Vec::new() };
        NodeUser { user: user.to_string(), key: key.to_string(), guest, rooms }
    }

    /// A user's first session here was welcomed.
    pub(super) fn announce_online(&mut self, user: &str, key: &str, guest: bool) {
        if self.config.cluster {
            let user = self.node_user(user, key, guest);
            self.announce(NodeNews::Online(user));
        }
    }

    /// A guest here joined or left a room: its rooms are announced again
    /// (`Online` of a user the peers know is an update).
    pub(super) fn announce_guest_rooms(&mut self, user: &str) {
        let Some(online) = self.state.online.get(user).filter(|o| o.guest && self.config.cluster) else { return };
        let user = self.node_user(user, &online.key.clone(), true);
        self.announce(NodeNews::Online(user));
    }

    /// A user is gone from this node (after the grace, for a registered
    /// one); a guest's name claim is given back.
    pub(super) fn announce_offline(&mut self, now: Now, user: &str, guest: bool) {
        if !self.config.cluster {
            return;
        }
        self.announce(NodeNews::Offline { user: user.to_string() });
        if guest {
            self.release_guest(now, user);
        }
    }

    // ---- guest names --------------------------------------------------------

    /// A guest `hello` whose name is free here: in a cluster the name is
    /// claimed in storage first (unless this guest is online here already,
    /// which means this node holds the claim).
    pub(super) fn claim_guest(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        peer: IpAddr,
        name: String,
        key: Option<String>,
    ) {
        if !self.config.cluster || self.state.online.get(name.as_str()).is_some_and(|o| o.guest) {
            return self.open_guest(now, sid, tag, peer, name, key);
        }
        self.set_phase(sid, Phase::Welcoming);
        // Held here while the claim runs, so a second hello for the name on
        // this node is refused rather than claiming it again.
        self.state.reserve(name.clone());
        let op = StoreOp::ClaimGuest { name: name.clone(), node: self.config.node, alive: self.alive_nodes(now) };
        self.store(now, op, Pending::request(sid, tag, PendingKind::ClaimGuest { name, key, peer }));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete_claim(
        &mut self,
        now: Now,
        sid: SessionId,
        tag: Tag,
        name: String,
        key: Option<String>,
        peer: IpAddr,
        result: Result<StoreValue, StoreError>,
    ) {
        self.state.unreserve(&name);
        if !self.state.sessions.contains_key(&sid) {
            if result == Ok(StoreValue::Claimed(true)) {
                self.release_guest(now, &name);
            }
            return;
        }
        self.set_phase(sid, Phase::New);
        match result {
            Ok(StoreValue::Claimed(true)) => {
                self.open_guest(now, sid, tag, peer, name.clone(), key);
                if !self.state.online.contains_key(name.as_str()) {
                    self.release_guest(now, &name);
                }
            }
            Ok(_) => {
                self.limits.probes_by_peer.hit(now.unix_ms, &peer);
                let f = Failure::new(ErrorCode::NameTaken, format!("the name {name} is taken"));
                self.reply(sid, tag, Err(f));
            }
            Err(StoreError::Overloaded) => self.reply(sid, tag, Err(super::auth::busy())),
            Err(_) => self.reply(sid, tag, Err(unavailable())),
        }
    }

    /// A claim whose client was told `unavailable` (its reservation ended
    /// then): the name is given back, unless a newer `hello` here is
    /// claiming it again or holds it (the claim is this node's for both).
    pub(super) fn settle_claim(&mut self, now: Now, name: &str, result: &Result<StoreValue, StoreError>) {
        let wanted = self.state.is_reserved(name) || self.state.online.contains_key(name);
        if *result == Ok(StoreValue::Claimed(true)) && !wanted {
            self.release_guest(now, name);
        }
    }

    /// The nodes alive, this one included, once this node has heard every
    /// live node: its link has been up for a whole `node_timeout`, in which
    /// each beat several times. Before that a node it has not heard yet
    /// could be alive, and its claims are left alone.
    fn alive_nodes(&self, now: Now) -> Option<Vec<u64>> {
        let settled = self.nodes.up_since.is_some_and(|t| t + self.config.node_timeout <= now.instant);
        settled.then(|| self.nodes.peers.keys().copied().chain([self.config.node]).collect())
    }

    fn release_guest(&mut self, now: Now, name: &str) {
        let op = StoreOp::ReleaseGuest { name: name.to_string(), node: self.config.node };
        self.store(now, op, Pending::untagged(SessionId::HUB, PendingKind::ReleaseGuest));
    }
}
