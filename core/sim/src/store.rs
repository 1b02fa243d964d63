//! An in-memory store with the semantics `crate::store` documents, plus
//! the knobs a simulation needs: latency, failures, and the one reordering
//! the contract allows (password operations).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::rng::Rng;
use natter_core::store::{
    display_pair, id_scope, ConversationSummary, InboxBound, InboxLimit, InboxMessage, NewMessage, SeqRange, StoreDone,
    StoreError, StoreFailure, StoreOp, StoreRequest, StoreValue, StoredMessage, StoredRoom, Target,
};

/// Decides whether an operation fails (see [`FakeStore::fail_when`]).
pub type FailPredicate = Box<dyn FnMut(&StoreOp) -> bool + Send>;

#[derive(Debug, Default)]
struct Room {
    seq: u64,
    /// Member → its read mark.
    members: BTreeMap<String, u64>,
    /// Oldest first; [`FakeStore::prune`] drops a prefix.
    messages: Vec<StoredMessage>,
}

#[derive(Debug, Default)]
struct Conversation {
    seq: u64,
    last_ts: u64,
    messages: Vec<StoredMessage>,
}

#[derive(Debug, Clone)]
struct Token {
    user: String,
    expires_ms: u64,
    revoked: bool,
}

/// Everything stored.
#[derive(Debug, Default)]
struct Data {
    /// User → plain-text password (the fake does not hash).
    users: BTreeMap<String, String>,
    tokens: BTreeMap<String, Token>,
    rooms: BTreeMap<String, Room>,
    /// Keyed by the pair of principals, sorted.
    conversations: BTreeMap<(String, String), Conversation>,
    /// `(user, peer)` → `(read, ack)`.
    marks: HashMap<(String, String), (u64, u64)>,
    /// `(sender, scope, client id)` → the message's `(seq, ts)`.
    client_ids: HashMap<(String, String, String), (u64, u64)>,
    /// Newest `seq` per [`display_pair`], for new conversations to continue.
    names: HashMap<String, u64>,
    /// Unacknowledged private messages: `(cursor, user, conversation, seq)`,
    /// in order of arrival.
    inbox: Vec<(u64, String, (String, String), u64)>,
    inbox_cursor: u64,
    tokens_issued: u64,
    /// Case-folded guest name → the node that claimed it.
    guest_claims: HashMap<String, u64>,
}

/// A submitted request waiting for its completion time.
struct Queued {
    /// Submission order, to break ties between equal due times.
    order: u64,
    due: Instant,
    request: StoreRequest,
    /// The outcome, when the operation ran at submission.
    ran: Option<Result<StoreValue, StoreError>>,
}

/// An in-memory [`StoreOp`] executor with latency, failure injection and
/// completion in submission order (password operations excepted, as in the
/// real store). Operations run when they complete, so a test that inspects
/// the store sees exactly what completions have reported.
pub struct FakeStore {
    data: Data,
    /// The current node's queues (see [`FakeStore::set_node`]).
    queue: VecDeque<Queued>,
    passwords: Vec<Queued>,
    node: usize,
    /// Operations run when submitted, not when completed.
    run_early: bool,
    /// Latency and jitter of one node's queue, where it differs.
    node_latency: HashMap<usize, (Duration, Duration)>,
    /// Other nodes' queues, while another is current.
    parked: HashMap<usize, (VecDeque<Queued>, Vec<Queued>)>,
    submitted: u64,
    latency: Duration,
    jitter: Duration,
    password_latency: Duration,
    password_jitter: Duration,
    fail_next: u32,
    /// What an injected failure is.
    fail_as: StoreError,
    fail_when: Option<FailPredicate>,
    rng: Rng,
    log: Vec<StoreOp>,
    completed: u64,
}

impl fmt::Debug for FakeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeStore")
            .field("in_flight", &self.in_flight())
            .field("latency", &self.latency)
            .field("fail_next", &self.fail_next)
            .finish_non_exhaustive()
    }
}

impl Default for FakeStore {
    fn default() -> Self {
        FakeStore::new(0)
    }
}

impl FakeStore {
    /// An empty store; `seed` drives the latency jitter.
    pub fn new(seed: u64) -> FakeStore {
        FakeStore {
            data: Data::default(),
            queue: VecDeque::new(),
            passwords: Vec::new(),
            node: 0,
            run_early: false,
            node_latency: HashMap::new(),
            parked: HashMap::new(),
            submitted: 0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            password_latency: Duration::ZERO,
            password_jitter: Duration::ZERO,
            fail_next: 0,
            fail_as: StoreError::Backend(StoreFailure::Other),
            fail_when: None,
            rng: Rng::new(seed ^ 0x5709_e000),
            log: Vec::new(),
            completed: 0,
        }
    }

    /// Re-seeds the jitter.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed ^ 0x5709_e000);
    }

    // ---- knobs ----------------------------------------------------------

    /// Every request completes `latency` after submission, plus up to
    /// `jitter` more; still in submission order.
    pub fn set_latency(&mut self, latency: Duration, jitter: Duration) {
        self.latency = latency;
        self.jitter = jitter;
    }

    /// [`FakeStore::set_latency`] for the requests of one node of a
    /// cluster only (a node whose database connection is slow).
    pub fn set_node_latency(&mut self, node: usize, latency: Duration, jitter: Duration) {
        self.node_latency.insert(node, (latency, jitter));
    }

    /// Password operations (`Register`, `Login`, `Verify`) take `latency`
    /// plus up to `jitter`, and may overtake each other and other requests.
    pub fn set_password_latency(&mut self, latency: Duration, jitter: Duration) {
        self.password_latency = latency;
        self.password_jitter = jitter;
    }

    /// Operations run when they are submitted (`true`) or when they
    /// complete (`false`, the default). Both are allowed: a real store runs
    /// a request somewhere in between. Running early is what a shared
    /// database does to a cluster: another node's write can be read here
    /// before its own node hears it is done, and a read here can miss a
    /// write whose announcement arrives before the read's completion.
    pub fn set_run_at_submission(&mut self, early: bool) {
        self.run_early = early;
    }

    /// The next `n` operations to run fail with `StoreError::Backend`.
    pub fn fail_next(&mut self, n: u32) {
        self.fail_next = n;
    }

    /// Injected failures are `error` from now on (`Backend(Other)` by
    /// default).
    pub fn fail_as(&mut self, error: StoreError) {
        self.fail_as = error;
    }

    /// Every operation for which `predicate` says so fails with
    /// `StoreError::Backend`, until [`FakeStore::stop_failing`].
    pub fn fail_when(&mut self, predicate: impl FnMut(&StoreOp) -> bool + Send + 'static) {
        self.fail_when = Some(Box::new(predicate));
    }

    /// Ends every failure injection.
    pub fn stop_failing(&mut self) {
        self.fail_next = 0;
        self.fail_when = None;
    }

    // ---- seeding and inspection ----------------------------------------

    /// A store with an account for each of `names`, each with the password
    /// `password`.
    pub fn with_accounts(names: &[&str]) -> FakeStore {
        let mut store = FakeStore::default();
        for name in names {
            store.add_user(name, "password");
        }
        store
    }

    /// Creates an account directly (before the hub loads the store).
    pub fn add_user(&mut self, user: &str, password: &str) {
        self.data.users.insert(user.to_string(), password.to_string());
    }

    /// Issues a token for `user` valid until `expires_ms`, as `Login` would.
    pub fn issue_token(&mut self, user: &str, expires_ms: u64) -> String {
        self.data.tokens_issued += 1;
        let token = format!("tok{}-{user}", self.data.tokens_issued);
        self.data.tokens.insert(token.clone(), Token { user: user.to_string(), expires_ms, revoked: false });
        token
    }

    /// Stores `token` as it is given, as a real backend stores a token's
    /// hash: for a test adapter that runs the fake as a backend.
    pub fn add_token(&mut self, token: &str, user: &str, expires_ms: u64) {
        self.data.tokens.insert(token.to_string(), Token { user: user.to_string(), expires_ms, revoked: false });
    }

    /// What [`FakeStore::add_user`] stored as `user`'s password (the fake
    /// does not hash): for a test adapter that runs the fake as a backend.
    pub fn password_of(&self, user: &str) -> Option<&str> {
        self.data.users.get(user).map(String::as_str)
    }

    /// Stores a membership directly (before the hub loads the store).
    pub fn add_member(&mut self, user: &str, room: &str) {
        self.data.rooms.entry(room.to_string()).or_default().members.entry(user.to_string()).or_insert(0);
    }

    /// Forgets a room's messages below `keep_from`, as retention would.
    pub fn prune(&mut self, room: &str, keep_from: u64) {
        if let Some(r) = self.data.rooms.get_mut(room) {
            r.messages.retain(|m| m.seq >= keep_from);
        }
    }

    /// The node holding the claim of guest name `name`, if any.
    pub fn guest_claim(&self, name: &str) -> Option<u64> {
        self.data.guest_claims.get(&name.to_lowercase()).copied()
    }

    /// Whether `user` has an account.
    pub fn has_user(&self, user: &str) -> bool {
        self.data.users.contains_key(user)
    }

    /// A room's newest `seq` (0 for none).
    pub fn room_seq(&self, room: &str) -> u64 {
        self.data.rooms.get(room).map_or(0, |r| r.seq)
    }

    /// A room's stored messages, oldest first.
    pub fn room_messages(&self, room: &str) -> &[StoredMessage] {
        self.data.rooms.get(room).map_or(&[], |r| &r.messages)
    }

    /// Stored members of a room.
    pub fn members(&self, room: &str) -> Vec<String> {
        self.data.rooms.get(room).map_or_else(Vec::new, |r| r.members.keys().cloned().collect())
    }

    /// Names of rooms that have a stored record.
    pub fn rooms(&self) -> Vec<String> {
        self.data.rooms.keys().cloned().collect()
    }

    /// The messages between two principals, oldest first.
    pub fn conversation(&self, a: &str, b: &str) -> &[StoredMessage] {
        self.data.conversations.get(&pair(a, b)).map_or(&[], |c| &c.messages)
    }

    /// Every conversation: the pair of principals and its messages.
    pub fn conversations(&self) -> impl Iterator<Item = (&(String, String), &[StoredMessage])> {
        self.data.conversations.iter().map(|(k, c)| (k, c.messages.as_slice()))
    }

    /// `user`'s ack of the conversation with `peer`.
    pub fn ack(&self, user: &str, peer: &str) -> u64 {
        self.data.marks.get(&(user.to_string(), peer.to_string())).map_or(0, |m| m.1)
    }

    /// `user`'s read mark on a conversation with `peer`.
    pub fn conversation_read(&self, user: &str, peer: &str) -> u64 {
        self.data.marks.get(&(user.to_string(), peer.to_string())).map_or(0, |m| m.0)
    }

    /// `user`'s read mark on a room (0 if not a member).
    pub fn room_read(&self, user: &str, room: &str) -> u64 {
        self.data.rooms.get(room).and_then(|r| r.members.get(user)).copied().unwrap_or(0)
    }

    /// Whether a token is known and not revoked.
    pub fn token_live(&self, token: &str) -> bool {
        self.data.tokens.get(token).is_some_and(|t| !t.revoked)
    }

    /// Every operation submitted so far, in submission order.
    pub fn log(&self) -> &[StoreOp] {
        &self.log
    }

    /// Requests submitted by the current node and not completed.
    pub fn in_flight(&self) -> usize {
        self.queue.len() + self.passwords.len()
    }

    /// Requests submitted by any node and not completed.
    pub fn in_flight_all(&self) -> usize {
        self.in_flight() + self.parked.values().map(|(q, p)| q.len() + p.len()).sum::<usize>()
    }

    /// Makes `node` the one that submits and completes from now on. One
    /// store shared by the nodes of a cluster keeps a queue per node: each
    /// node's requests complete in its own submission order, as each node
    /// has its own storage thread and connection; nothing orders the
    /// queues of two nodes with each other.
    pub fn set_node(&mut self, node: usize) {
        if node == self.node {
            return;
        }
        let current = (std::mem::take(&mut self.queue), std::mem::take(&mut self.passwords));
        self.parked.insert(self.node, current);
        let (queue, passwords) = self.parked.remove(&node).unwrap_or_default();
        self.queue = queue;
        self.passwords = passwords;
        self.node = node;
    }

    /// The current node's requests are lost, unanswered (the node crashed).
    /// What they would have written is not written.
    pub fn drop_queue(&mut self) {
        self.queue.clear();
        self.passwords.clear();
    }

    /// Requests completed so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    // ---- the request path ---------------------------------------------------

    /// Accepts requests submitted at `now`.
    pub fn submit(&mut self, now: Instant, requests: Vec<StoreRequest>) {
        for request in requests {
            self.submitted += 1;
            self.log.push(request.op.clone());
            if is_password(&request.op) {
                let due = now + self.password_latency + self.rng.duration(self.password_jitter);
                let ran = self.run_early.then(|| self.run(&request.op));
                self.passwords.push(Queued { order: self.submitted, due, request, ran });
            } else {
                let earliest = self.queue.back().map_or(now, |q| q.due);
                let (latency, jitter) =
                    self.node_latency.get(&self.node).copied().unwrap_or((self.latency, self.jitter));
                let due = (now + latency + self.rng.duration(jitter)).max(earliest);
                let ran = self.run_early.then(|| self.run(&request.op));
                self.queue.push_back(Queued { order: self.submitted, due, request, ran });
            }
        }
    }

    /// When the next completion is due.
    pub fn next_due(&self) -> Option<Instant> {
        let q = self.queue.front().map(|q| q.due);
        let p = self.passwords.iter().map(|q| q.due).min();
        match (q, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs and completes the next request due at or before `now`, if any.
    pub fn complete_next(&mut self, now: Instant) -> Option<StoreDone> {
        let q = self.queue.front().filter(|q| q.due <= now).map(|q| (q.due, q.order));
        let p = self
            .passwords
            .iter()
            .enumerate()
            .filter(|(_, q)| q.due <= now)
            .min_by_key(|(_, q)| (q.due, q.order))
            .map(|(i, q)| (q.due, q.order, i));
        let queued = match (q, p) {
            (None, None) => return None,
            (Some(_), None) => self.queue.pop_front()?,
            (None, Some((_, _, i))) => self.passwords.remove(i),
            (Some(a), Some((due, order, i))) => {
                if (due, order) < a {
                    self.passwords.remove(i)
                } else {
                    self.queue.pop_front()?
                }
            }
        };
        self.completed += 1;
        let StoreRequest { id, op } = queued.request;
        let result = queued.ran.unwrap_or_else(|| self.run(&op));
        Some(StoreDone { id, result })
    }

    /// Runs every request still queued, without completions (a node that
    /// died after submitting: what storage committed stays).
    pub fn run_abandoned(&mut self) {
        let mut all: Vec<Queued> = self.queue.drain(..).chain(self.passwords.drain(..)).collect();
        all.sort_by_key(|q| q.order);
        for q in all.into_iter().filter(|q| q.ran.is_none()) {
            let _ = self.run(&q.request.op);
        }
    }

    /// Runs one operation now, outside the queue and the failure
    /// injection (used for `LoadAll` at start-up, and to seed tests).
    pub fn execute(&mut self, op: &StoreOp) -> StoreValue {
        self.data.apply(op)
    }

    fn run(&mut self, op: &StoreOp) -> Result<StoreValue, StoreError> {
        let fail = if self.fail_next > 0 {
            self.fail_next -= 1;
            true
        } else {
            self.fail_when.as_mut().is_some_and(|p| p(op))
        };
        if fail {
            return Err(self.fail_as.clone());
        }
        Ok(self.data.apply(op))
    }
}

impl Data {
    /// One function per operation, as the SQLite backend has.
    fn apply(&mut self, op: &StoreOp) -> StoreValue {
        match op {
            StoreOp::LoadAll => self.load_all(),
            StoreOp::Register { user, password, .. } => self.register(user, password),
            StoreOp::Login { user, password, now_ms, ttl_ms, .. } => self.login(user, password, now_ms + ttl_ms),
            StoreOp::Verify { user, password, .. } => match self.users.get(user) == Some(password) {
                true => StoreValue::Verified,
                false => StoreValue::Rejected,
            },
            StoreOp::CheckToken { token, now_ms } => self.check_token(token, *now_ms),
            StoreOp::Revoke { token } => self.revoke(token),
            StoreOp::Join { user, room } => {
                self.rooms.entry(room.clone()).or_default().members.entry(user.clone()).or_insert(0);
                StoreValue::Done
            }
            StoreOp::Leave { user, room } => {
                if let Some(r) = self.rooms.get_mut(room) {
                    r.members.remove(user);
                }
                StoreValue::Done
            }
            StoreOp::Append { target, message } => self.append(target, message),
            StoreOp::History { target, range } => self.history(target, *range),
            StoreOp::Inbox { user, after, limit } => self.inbox_page(user, *after, *limit),
            StoreOp::Ack { user, with, seq } => self.ack(user, with, *seq),
            StoreOp::Read { user, target, seq } => self.read(user, target, *seq),
            StoreOp::Conversations { user, limit } => self.conversation_list(user, *limit),
            StoreOp::LastSeqs { rooms, users, active_since } => self.last_seqs(rooms, users, *active_since),
            StoreOp::FindUser { name } => {
                let folded = name.to_lowercase();
                StoreValue::FoundUser(self.users.keys().find(|u| u.to_lowercase() == folded).cloned())
            }
            StoreOp::ClaimGuest { name, node, alive } => {
                let holder = self.guest_claims.get(&name.to_lowercase()).copied();
                let dead = |h: u64| alive.as_ref().is_some_and(|a| !a.contains(&h));
                let free = holder.is_none_or(|h| h == *node || dead(h));
                if free {
                    self.guest_claims.insert(name.to_lowercase(), *node);
                }
                StoreValue::Claimed(free)
            }
            StoreOp::ReleaseGuest { name, node } => {
                if self.guest_claims.get(&name.to_lowercase()) == Some(node) {
                    self.guest_claims.remove(&name.to_lowercase());
                }
                StoreValue::Done
            }
            StoreOp::LiveTokens { tokens } => {
                let live = |t: &&String| self.tokens.get(*t).is_some_and(|t| !t.revoked);
                StoreValue::LiveTokens { tokens: tokens.iter().filter(live).cloned().collect() }
            }
            StoreOp::RoomMembers { rooms } => {
                let members = |room: &String| self.rooms.get(room).map(|r| r.members.keys().cloned().collect());
                StoreValue::RoomMembers {
                    rooms: rooms
                        .iter()
                        .map(|room| {
                            (room.clone(), self.rooms.get(room).map_or(0, |r| r.seq), members(room).unwrap_or_default())
                        })
                        .collect(),
                }
            }
            StoreOp::ReadMarks { user } => {
                let marks = self
                    .rooms
                    .iter()
                    .filter_map(|(name, r)| r.members.get(user).map(|read| (name.clone(), *read, r.seq)))
                    .collect();
                StoreValue::ReadMarks { marks }
            }
        }
    }

    fn last_seqs(&self, rooms: &[String], users: &[String], active_since: Option<u64>) -> StoreValue {
        let rooms = rooms.iter().map(|r| (r.clone(), self.rooms.get(r).map_or(0, |r| r.seq))).collect();
        let conversations = self
            .conversations
            .iter()
            .filter(|((a, b), c)| users.iter().any(|u| u == a || u == b) && c.last_ts >= active_since.unwrap_or(0))
            .map(|((a, b), c)| (a.clone(), b.clone(), c.seq))
            .collect();
        StoreValue::LastSeqs { rooms, conversations }
    }

    fn load_all(&self) -> StoreValue {
        let users = self.users.keys().cloned().collect();
        let rooms = self
            .rooms
            .iter()
            .filter(|(_, r)| r.seq > 0 || !r.members.is_empty())
            .map(|(name, r)| StoredRoom {
                name: name.clone(),
                seq: r.seq,
                members: r.members.keys().cloned().collect(),
            })
            .collect();
        StoreValue::Snapshot { users, rooms }
    }

    fn register(&mut self, user: &str, password: &str) -> StoreValue {
        if self.users.contains_key(user) {
            return StoreValue::NameTaken;
        }
        self.users.insert(user.to_string(), password.to_string());
        StoreValue::Registered
    }

    fn login(&mut self, user: &str, password: &str, expires_ms: u64) -> StoreValue {
        if self.users.get(user).map(String::as_str) != Some(password) {
            return StoreValue::Rejected;
        }
        self.tokens_issued += 1;
        let token = format!("tok{}-{user}", self.tokens_issued);
        self.tokens.insert(token.clone(), Token { user: user.to_string(), expires_ms, revoked: false });
        StoreValue::Token { token, expires_ms }
    }

    fn check_token(&self, token: &str, now_ms: u64) -> StoreValue {
        match self.tokens.get(token) {
            Some(t) if !t.revoked && now_ms < t.expires_ms => {
                StoreValue::TokenUser { user: t.user.clone(), expires_ms: t.expires_ms }
            }
            _ => StoreValue::Rejected,
        }
    }

    fn revoke(&mut self, token: &str) -> StoreValue {
        match self.tokens.get_mut(token) {
            Some(t) => {
                t.revoked = true;
                StoreValue::Revoked { user: Some(t.user.clone()) }
            }
            None => StoreValue::Revoked { user: None },
        }
    }

    fn history(&self, target: &Target, range: SeqRange) -> StoreValue {
        let messages: &[StoredMessage] = match target {
            Target::Room(room) => self.rooms.get(room).map_or(&[], |r| &r.messages),
            Target::Conversation(a, b) => self.conversations.get(&pair(a, b)).map_or(&[], |c| &c.messages),
        };
        let oldest = messages.first().map(|m| m.seq);
        let (after, before, limit) = match range {
            SeqRange::Before { before, limit } => (0, before.unwrap_or(u64::MAX), limit),
            SeqRange::After { after, limit } => (after, u64::MAX, limit),
        };
        let window: Vec<&StoredMessage> = messages.iter().filter(|m| m.seq > after && m.seq < before).collect();
        let skip = window.len().saturating_sub(limit as usize);
        let messages = window[skip..].iter().map(|m| (*m).clone()).collect();
        StoreValue::Messages { messages, oldest }
    }

    fn inbox_page(&self, user: &str, after: u64, limit: u32) -> StoreValue {
        let mut cursor = after;
        let messages = self
            .inbox
            .iter()
            .filter(|(at, to, ..)| *at > after && to == user)
            .take(limit as usize)
            .filter_map(|(at, _, key, seq)| {
                cursor = *at;
                let message = self.conversations.get(key)?.messages.iter().find(|m| m.seq == *seq)?;
                let with = if key.0 == user { key.1.clone() } else { key.0.clone() };
                Some(InboxMessage { with, message: message.clone() })
            })
            .collect();
        StoreValue::Inbox { messages, cursor }
    }

    fn ack(&mut self, user: &str, with: &str, seq: u64) -> StoreValue {
        let mark = self.marks.entry((user.to_string(), with.to_string())).or_default();
        mark.1 = mark.1.max(seq);
        let key = pair(user, with);
        self.inbox.retain(|(_, to, k, s)| !(to == user && *k == key && *s <= seq));
        StoreValue::Done
    }

    fn read(&mut self, user: &str, target: &Target, seq: u64) -> StoreValue {
        match target {
            Target::Room(room) => {
                if let Some(read) = self.rooms.get_mut(room).and_then(|r| r.members.get_mut(user)) {
                    *read = (*read).max(seq);
                }
            }
            Target::Conversation(a, b) => {
                let peer = if a == user { b } else { a };
                let mark = self.marks.entry((user.to_string(), peer.clone())).or_default();
                mark.0 = mark.0.max(seq);
            }
        }
        StoreValue::Done
    }

    fn conversation_list(&self, user: &str, limit: u32) -> StoreValue {
        let mut list: Vec<(u64, ConversationSummary)> = self
            .conversations
            .iter()
            .filter_map(|((a, b), c)| {
                let peer = if a == user {
                    b
                } else if b == user {
                    a
                } else {
                    return None;
                };
                let read = self.marks.get(&(user.to_string(), peer.clone())).map_or(0, |m| m.0);
                Some((c.last_ts, ConversationSummary { with: peer.clone(), seq: c.seq, read }))
            })
            .collect();
        list.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.seq.cmp(&a.1.seq)).then(a.1.with.cmp(&b.1.with)));
        let conversations = list.into_iter().take(limit as usize).map(|(_, c)| c).collect();
        StoreValue::Conversations { conversations }
    }

    fn append(&mut self, target: &Target, m: &NewMessage) -> StoreValue {
        let scope = id_scope(target);
        if let Some(id) = &m.client_id {
            if let Some(&(seq, ts)) = self.client_ids.get(&(m.sender.clone(), scope.clone(), id.clone())) {
                if self.text_of(target, seq) == Some(m.text.as_str()) {
                    return StoreValue::Appended { seq, ts, duplicate: true };
                }
            }
        }
        let (seq, list) = match target {
            Target::Room(room) => {
                let r = self.rooms.entry(room.clone()).or_default();
                r.seq += 1;
                (r.seq, &mut r.messages)
            }
            Target::Conversation(a, b) => {
                let key = pair(a, b);
                let recipient = if m.sender == key.0 { key.1.clone() } else { key.0.clone() };
                let inboxed = m.inbox.filter(|_| recipient != m.sender);
                if let Some(limit) = inboxed.and_then(|bound| self.inbox_full(&recipient, &key, bound)) {
                    return StoreValue::InboxFull { limit };
                }
                let names = display_pair(a, b);
                let known = self.names.get(&names).copied().unwrap_or(0);
                let c = self
                    .conversations
                    .entry(key.clone())
                    .or_insert_with(|| Conversation { seq: known, ..Default::default() });
                c.seq += 1;
                c.last_ts = c.last_ts.max(m.ts);
                self.names.insert(names, c.seq);
                if inboxed.is_some() {
                    self.inbox_cursor += 1;
                    self.inbox.push((self.inbox_cursor, recipient, key, c.seq));
                }
                (c.seq, &mut c.messages)
            }
        };
        list.push(StoredMessage {
            seq,
            from: m.from.clone(),
            to: m.to.clone(),
            sender: m.sender.clone(),
            text: m.text.clone(),
            client_id: m.client_id.clone(),
            ts: m.ts,
        });
        if let Some(id) = &m.client_id {
            self.client_ids.insert((m.sender.clone(), scope, id.clone()), (seq, m.ts));
        }
        StoreValue::Appended { seq, ts: m.ts, duplicate: false }
    }

    fn text_of(&self, target: &Target, seq: u64) -> Option<&str> {
        let messages = match target {
            Target::Room(room) => &self.rooms.get(room)?.messages,
            Target::Conversation(a, b) => &self.conversations.get(&pair(a, b))?.messages,
        };
        messages.iter().find(|m| m.seq == seq).map(|m| m.text.as_str())
    }

    fn inbox_full(&self, user: &str, key: &(String, String), bound: InboxBound) -> Option<InboxLimit> {
        let mine = self.inbox.iter().filter(|(_, to, ..)| to == user);
        if mine.count() >= bound.per_recipient as usize {
            return Some(InboxLimit::PerRecipient);
        }
        // As the contract says: the conversation's messages since `user`
        // last acknowledged it.
        let seq = self.conversations.get(key).map_or(0, |c| c.seq);
        let peer = if key.0 == user { &key.1 } else { &key.0 };
        let ack = self.marks.get(&(user.to_string(), peer.clone())).map_or(0, |m| m.1);
        (seq.saturating_sub(ack) >= u64::from(bound.per_sender)).then_some(InboxLimit::PerSender)
    }
}

fn is_password(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Register { .. } | StoreOp::Login { .. } | StoreOp::Verify { .. })
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// Unit tests of the fake itself: it must hold to the contract the real
/// store is tested against, or the simulation proves nothing.
#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::store::StoreReqId;

    fn msg(sender: &str, to: Option<&str>, text: &str, id: Option<&str>, ts: u64) -> NewMessage {
        NewMessage {
            sender: sender.into(),
            from: sender.split('#').next().unwrap().into(),
            to: to.map(Into::into),
            text: text.into(),
            client_id: id.map(Into::into),
            ts,
            inbox: None,
        }
    }

    fn room_append(s: &mut FakeStore, room: &str, sender: &str, id: Option<&str>) -> StoreValue {
        let op = StoreOp::Append { target: Target::Room(room.into()), message: msg(sender, None, "t", id, 1) };
        s.run(&op).unwrap()
    }

    fn pm(s: &mut FakeStore, from: &str, to: &str, ts: u64) -> u64 {
        let op = StoreOp::Append {
            target: Target::Conversation(from.into(), to.into()),
            message: NewMessage {
                inbox: Some(InboxBound { per_sender: 100, per_recipient: 1000 }),
                ..msg(from, Some(to), &format!("{from}>{to}@{ts}"), None, ts)
            },
        };
        match s.run(&op).unwrap() {
            StoreValue::Appended { seq, .. } => seq,
            v => panic!("{v:?}"),
        }
    }

    fn seqs(v: StoreValue) -> Vec<u64> {
        match v {
            StoreValue::Messages { messages, .. } => messages.iter().map(|m| m.seq).collect(),
            StoreValue::Inbox { messages, .. } => messages.iter().map(|m| m.message.seq).collect(),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn appends_are_gapless_per_target_and_dedup_by_sender_and_id() {
        let mut s = FakeStore::default();
        assert_eq!(room_append(&mut s, "a", "x", None), StoreValue::Appended { seq: 1, ts: 1, duplicate: false });
        assert_eq!(room_append(&mut s, "b", "x", Some("c1")), StoreValue::Appended { seq: 1, ts: 1, duplicate: false });
        assert_eq!(room_append(&mut s, "a", "x", Some("c2")), StoreValue::Appended { seq: 2, ts: 1, duplicate: false });
        // The same id from the same sender to the same target: the first seq.
        assert_eq!(room_append(&mut s, "b", "x", Some("c1")), StoreValue::Appended { seq: 1, ts: 1, duplicate: true });
        // In another room it names another message.
        assert_eq!(room_append(&mut s, "a", "x", Some("c1")), StoreValue::Appended { seq: 3, ts: 1, duplicate: false });
        // Another sender may use the same id.
        assert_eq!(room_append(&mut s, "a", "y", Some("c1")), StoreValue::Appended { seq: 4, ts: 1, duplicate: false });
        assert_eq!(s.room_seq("a"), 4);
        assert_eq!(pm(&mut s, "x", "y", 5), 1);
        assert_eq!(pm(&mut s, "y", "x", 6), 2);
    }

    #[test]
    fn history_windows_take_the_newest_oldest_first() {
        let mut s = FakeStore::default();
        for _ in 0..10 {
            room_append(&mut s, "r", "x", None);
        }
        let h = |s: &mut FakeStore, range| {
            seqs(s.run(&StoreOp::History { target: Target::Room("r".into()), range }).unwrap())
        };
        assert_eq!(h(&mut s, SeqRange::Before { before: None, limit: 3 }), [8, 9, 10]);
        assert_eq!(h(&mut s, SeqRange::Before { before: Some(5), limit: 50 }), [1, 2, 3, 4]);
        assert_eq!(h(&mut s, SeqRange::After { after: 7, limit: 50 }), [8, 9, 10]);
        assert_eq!(h(&mut s, SeqRange::After { after: 2, limit: 3 }), [8, 9, 10]);
        s.prune("r", 6);
        let v = s.run(&StoreOp::History {
            target: Target::Room("r".into()),
            range: SeqRange::After { after: 2, limit: 50 },
        });
        assert!(matches!(v, Ok(StoreValue::Messages { ref messages, oldest: Some(6) }) if messages.len() == 5));
    }

    #[test]
    fn inbox_is_unacked_messages_to_the_user_in_arrival_order() {
        let mut s = FakeStore::default();
        pm(&mut s, "b", "a", 10); // (a,b) 1
        pm(&mut s, "c", "a", 5); // (a,c) 1
        pm(&mut s, "a", "b", 11); // (a,b) 2: a's own
        pm(&mut s, "b", "a", 12); // (a,b) 3
        pm(&mut s, "b", "c", 13); // not a's
        let inbox = |s: &mut FakeStore| s.run(&StoreOp::Inbox { user: "a".into(), after: 0, limit: 10 }).unwrap();
        let StoreValue::Inbox { messages, .. } = inbox(&mut s) else { panic!() };
        let got: Vec<(&str, u64)> = messages.iter().map(|m| (m.with.as_str(), m.message.seq)).collect();
        assert_eq!(got, [("b", 1), ("c", 1), ("b", 3)]);
        let StoreValue::Inbox { messages, cursor } =
            s.run(&StoreOp::Inbox { user: "a".into(), after: 0, limit: 2 }).unwrap()
        else {
            panic!()
        };
        assert_eq!(messages.len(), 2);
        let next = s.run(&StoreOp::Inbox { user: "a".into(), after: cursor, limit: 2 }).unwrap();
        assert_eq!(seqs(next), [3], "the next page starts after the cursor");
        s.run(&StoreOp::Ack { user: "a".into(), with: "b".into(), seq: 1 }).unwrap();
        s.run(&StoreOp::Ack { user: "a".into(), with: "b".into(), seq: 0 }).unwrap();
        assert_eq!(seqs(inbox(&mut s)), [1, 3]);
        assert_eq!(s.ack("a", "b"), 1, "an ack never goes down");
    }

    #[test]
    fn conversations_most_recent_first_with_read_marks() {
        let mut s = FakeStore::default();
        pm(&mut s, "a", "b", 10);
        pm(&mut s, "c", "a", 20);
        pm(&mut s, "b", "a", 30);
        let read = StoreOp::Read { user: "a".into(), target: Target::Conversation("b".into(), "a".into()), seq: 2 };
        s.run(&read).unwrap();
        let StoreValue::Conversations { conversations } =
            s.run(&StoreOp::Conversations { user: "a".into(), limit: 10 }).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            conversations,
            [
                ConversationSummary { with: "b".into(), seq: 2, read: 2 },
                ConversationSummary { with: "c".into(), seq: 1, read: 0 }
            ]
        );
    }

    #[test]
    fn accounts_tokens_and_memberships() {
        let mut s = FakeStore::default();
        let reg = StoreOp::Register { user: "a".into(), password: "password1".into(), cancel: Default::default() };
        assert_eq!(s.run(&reg), Ok(StoreValue::Registered));
        assert_eq!(s.run(&reg), Ok(StoreValue::NameTaken));
        let login = |pw: &str| StoreOp::Login {
            user: "a".into(),
            password: pw.into(),
            now_ms: 100,
            ttl_ms: 50,
            cancel: Default::default(),
        };
        assert_eq!(s.run(&login("nope")), Ok(StoreValue::Rejected));
        let Ok(StoreValue::Token { token, expires_ms: 150 }) = s.run(&login("password1")) else { panic!() };
        let check = |now_ms| StoreOp::CheckToken { token: token.clone(), now_ms };
        assert_eq!(s.run(&check(149)), Ok(StoreValue::TokenUser { user: "a".into(), expires_ms: 150 }));
        assert_eq!(s.run(&check(150)), Ok(StoreValue::Rejected));
        assert_eq!(
            s.run(&StoreOp::Revoke { token: token.clone() }),
            Ok(StoreValue::Revoked { user: Some("a".into()) })
        );
        assert_eq!(s.run(&check(100)), Ok(StoreValue::Rejected));
        assert_eq!(s.run(&StoreOp::Revoke { token: "x".into() }), Ok(StoreValue::Revoked { user: None }));
        assert_eq!(
            s.run(&StoreOp::Verify { user: "a".into(), password: "password1".into(), cancel: Default::default() }),
            Ok(StoreValue::Verified)
        );
        assert_eq!(
            s.run(&StoreOp::Verify { user: "b".into(), password: "password1".into(), cancel: Default::default() }),
            Ok(StoreValue::Rejected)
        );
        s.run(&StoreOp::Join { user: "a".into(), room: "r".into() }).unwrap();
        s.run(&StoreOp::Read { user: "a".into(), target: Target::Room("r".into()), seq: 4 }).unwrap();
        s.run(&StoreOp::Read { user: "a".into(), target: Target::Room("r".into()), seq: 2 }).unwrap();
        assert_eq!(
            s.run(&StoreOp::ReadMarks { user: "a".into() }),
            Ok(StoreValue::ReadMarks { marks: vec![("r".into(), 4, 0)] })
        );
        let Ok(StoreValue::Snapshot { users, rooms }) = s.run(&StoreOp::LoadAll) else { panic!() };
        assert_eq!(users, ["a"]);
        assert_eq!(rooms, [StoredRoom { name: "r".into(), seq: 0, members: vec!["a".into()] }]);
        s.run(&StoreOp::Leave { user: "a".into(), room: "r".into() }).unwrap();
        assert_eq!(s.run(&StoreOp::ReadMarks { user: "a".into() }), Ok(StoreValue::ReadMarks { marks: vec![] }));
    }

    #[test]
    fn completions_keep_submission_order_except_passwords() {
        let t0 = crate::epoch();
        let mut s = FakeStore::new(7);
        s.set_latency(Duration::from_millis(10), Duration::from_millis(30));
        s.set_password_latency(Duration::ZERO, Duration::from_millis(100));
        let mut reqs = Vec::new();
        for i in 0..40 {
            let op = if i % 5 == 0 {
                StoreOp::Verify { user: "a".into(), password: "p".into(), cancel: Default::default() }
            } else {
                StoreOp::Join { user: "a".into(), room: format!("r{i}") }
            };
            reqs.push(StoreRequest { id: StoreReqId(i), op });
        }
        s.submit(t0, reqs);
        let mut order = Vec::new();
        let mut t = t0;
        while let Some(due) = s.next_due() {
            t = t.max(due);
            while let Some(done) = s.complete_next(t) {
                order.push(done.id.0);
            }
        }
        let plain: Vec<u64> = order.iter().copied().filter(|i| i % 5 != 0).collect();
        let mut sorted = plain.clone();
        sorted.sort();
        assert_eq!(plain, sorted, "non-password requests complete in submission order");
        let passwords: Vec<u64> = order.iter().copied().filter(|i| i % 5 == 0).collect();
        assert_eq!(passwords.len(), 8);
        assert!(t >= t0 + Duration::from_millis(10));
    }

    #[test]
    fn failures_are_injected_and_stop() {
        let mut s = FakeStore::default();
        s.fail_next(2);
        let join = StoreOp::Join { user: "a".into(), room: "r".into() };
        assert!(s.run(&join).is_err());
        assert!(s.run(&join).is_err());
        assert!(s.run(&join).is_ok());
        s.fail_when(|op| matches!(op, StoreOp::Append { .. }));
        assert!(s.run(&join).is_ok());
        assert!(s
            .run(&StoreOp::Append { target: Target::Room("r".into()), message: msg("a", None, "x", None, 1) })
            .is_err());
        assert_eq!(s.room_seq("r"), 0, "a failed append stores nothing");
        s.stop_failing();
        assert!(s
            .run(&StoreOp::Append { target: Target::Room("r".into()), message: msg("a", None, "x", None, 1) })
            .is_ok());
    }
}
