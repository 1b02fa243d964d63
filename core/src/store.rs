//! What the hub asks of storage, and what comes back. Types only: the workers
//! that do the I/O live in `natter-host`.
//!
//! The hub never waits. It emits [`StoreRequest`]s and later receives a
//! [`StoreDone`] with the same [`StoreReqId`]. A worker must complete the
//! requests of one queue in the order it received them (password hashing may
//! finish out of order, nothing else may): the hub relies on that order so
//! that a `since` replay read after a message was written sees that message.

use std::fmt;

/// Identifies one request until its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreReqId(pub u64);

/// A request to storage.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreRequest {
    /// Echoed in the completion.
    pub id: StoreReqId,
    /// What to do.
    pub op: StoreOp,
}

/// Set by the hub when the client that asked for a password operation is
/// gone: storage then skips whatever of it has not started (the lookup, the
/// hash, the write) and completes it as [`StoreError::Overloaded`]. Shared
/// with the store thread as a one-way flag, like a metric.
#[derive(Clone, Debug, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// Whether the client is gone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The client is gone.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A request is identified by its id; whether it was cancelled is not part
/// of what it asks.
impl PartialEq for Cancel {
    fn eq(&self, _: &Cancel) -> bool {
        true
    }
}

/// A stored principal: a registered user's name, or for a guest
/// `name#incarnation`, so that a later guest with the same name never sees an
/// earlier one's conversations. `#` is not allowed in names, so the two never
/// collide.
pub type UserKey = String;

/// Where a message lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A room, by name.
    Room(String),
    /// The conversation between two principals. Order does not matter: the
    /// store keys a conversation by the pair sorted.
    Conversation(UserKey, UserKey),
}

/// One operation. Each variant's doc says which [`StoreValue`] answers it.
#[allow(missing_docs)] // fields are named for what they hold; the variant docs say how they are used
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// Everything the hub keeps in memory, once at start-up:
    /// [`StoreValue::Snapshot`].
    LoadAll,
    /// Creates an account with an argon2id hash of `password`:
    /// [`StoreValue::Registered`], or [`StoreValue::NameTaken`].
    Register { user: String, password: String, cancel: Cancel },
    /// Checks a password and issues a token valid until `now_ms + ttl_ms`:
    /// [`StoreValue::Token`], or [`StoreValue::Rejected`] (unknown user or
    /// wrong password, indistinguishably).
    Login { user: String, password: String, now_ms: u64, ttl_ms: u64, cancel: Cancel },
    /// Checks a password without issuing a token (line-protocol `/login`):
    /// [`StoreValue::Verified`], or [`StoreValue::Rejected`].
    Verify { user: String, password: String, cancel: Cancel },
    /// [`StoreValue::TokenUser`] when the token exists, is not revoked and
    /// `now_ms` is before its expiry; else [`StoreValue::Rejected`].
    CheckToken { token: String, now_ms: u64 },
    /// Revokes a token: [`StoreValue::Revoked`] with its user, `None` if the
    /// token was unknown.
    Revoke { token: String },
    /// Stores a registered user's membership: [`StoreValue::Done`].
    Join { user: String, room: String },
    /// Ends it: [`StoreValue::Done`].
    Leave { user: String, room: String },
    /// Appends a message, assigning the target's next `seq` in the same
    /// transaction: [`StoreValue::Appended`]. A client id is scoped to its
    /// sender *and* target: when `(sender, target, client_id)` is remembered
    /// and the message it names has the same text, nothing is written and the
    /// first message's `seq` comes back with `duplicate: true`. Otherwise
    /// (a new id, or the same id with other text) the message is stored and
    /// the id now names it: a retry is recognised, a reused id is never
    /// acknowledged as someone else's message.
    ///
    /// A new conversation whose two display names already had a
    /// conversation (a guest's name taken again by someone else) starts its
    /// `seq` after that one's, so a client that knows the other side by name
    /// never sees two messages with the same `seq` (see [`display_pair`]).
    ///
    /// A private message to a registered user also enters the recipient's
    /// inbox, within [`NewMessage::inbox`]'s bounds; past them nothing is
    /// written and the answer is [`StoreValue::InboxFull`].
    Append { target: Target, message: NewMessage },
    /// Messages of a target, oldest first: [`StoreValue::Messages`].
    History { target: Target, range: SeqRange },
    /// One page of `user`'s inbox: the private messages to it that it has
    /// not acknowledged, in the order they were stored (so each
    /// conversation's in `seq` order), starting after `after` (a cursor from
    /// an earlier page; 0 for the first), at most `limit`:
    /// [`StoreValue::Inbox`]. A page costs the same whatever the inbox's
    /// size, so a huge inbox never holds the store's queue for long.
    Inbox { user: UserKey, after: u64, limit: u32 },
    /// Raises `user`'s ack of the conversation with `with` to `seq` (never
    /// lowers it), and takes what it acknowledges out of `user`'s inbox:
    /// [`StoreValue::Done`].
    Ack { user: UserKey, with: UserKey, seq: u64 },
    /// Raises `user`'s read mark on a room or a conversation (never lowers
    /// it): [`StoreValue::Done`]. For a conversation, the key of the pair that
    /// is not `user` is the other side.
    Read { user: UserKey, target: Target, seq: u64 },
    /// `user`'s conversations, most recent first, at most `limit`:
    /// [`StoreValue::Conversations`].
    Conversations { user: UserKey, limit: u32 },
    /// `user`'s read marks on its rooms: [`StoreValue::ReadMarks`].
    ReadMarks { user: String },
    /// The newest `seq` of each of `rooms` (0 for a room with no message)
    /// and of every conversation one of `users` has:
    /// [`StoreValue::LastSeqs`]. A node of a cluster asks it every few
    /// seconds for what it serves, to find messages the bus never brought.
    /// With `active_since`, only the conversations whose newest message has
    /// a `ts` at or after it (milliseconds): the periodic check reads what
    /// moved lately, not every conversation every served user ever had.
    LastSeqs { rooms: Vec<String>, users: Vec<UserKey>, active_since: Option<u64> },
    /// The registered user `name` names, ignoring case:
    /// [`StoreValue::FoundUser`]. A node of a cluster asks it for a name it
    /// does not know, which another node may have registered.
    FindUser { name: String },
    /// Claims the guest name `name` (ignoring case) for node `node`, so no
    /// two nodes of a cluster welcome a guest under one name: it succeeds
    /// when no node holds it, `node` holds it already, or `alive` is given
    /// and the holder is not in it (a dead node's claim is taken over; a
    /// node that cannot tell yet who is alive gives `None`). In one step,
    /// so two nodes claiming together cannot both win:
    /// [`StoreValue::Claimed`].
    ClaimGuest { name: String, node: u64, alive: Option<Vec<u64>> },
    /// Gives up `node`'s claim of `name`, if it still holds it:
    /// [`StoreValue::Done`].
    ReleaseGuest { name: String, node: u64 },
    /// Which of `tokens` are stored and not revoked (expiry aside: a
    /// session ends at its token's expiry by itself):
    /// [`StoreValue::LiveTokens`]. A node of a cluster asks it for the
    /// tokens its sessions were opened with after its bus link was down, when
    /// a revocation may have been lost; at most [`LIVE_TOKENS_PAGE`] a time.
    LiveTokens { tokens: Vec<String> },
    /// The newest `seq` and the registered members of each of `rooms`:
    /// [`StoreValue::RoomMembers`].
    /// A node of a cluster asks it when it starts serving a room, to learn
    /// who joined on other nodes while it did not; at most
    /// [`ROOM_MEMBERS_PAGE`] rooms a time.
    RoomMembers { rooms: Vec<String> },
}

impl StoreOp {
    /// Whether the operation writes: a batch holding one ends in a commit
    /// (with `--sync full`, an fsync). The password operations count as
    /// writes although their first step is a read.
    pub fn writes(&self) -> bool {
        match self {
            StoreOp::Join { .. }
            | StoreOp::Leave { .. }
            | StoreOp::Append { .. }
            | StoreOp::Ack { .. }
            | StoreOp::Read { .. }
            | StoreOp::Revoke { .. }
            | StoreOp::Register { .. }
            | StoreOp::Login { .. }
            | StoreOp::ClaimGuest { .. }
            | StoreOp::ReleaseGuest { .. } => true,
            StoreOp::LoadAll
            | StoreOp::Verify { .. }
            | StoreOp::CheckToken { .. }
            | StoreOp::History { .. }
            | StoreOp::Inbox { .. }
            | StoreOp::Conversations { .. }
            | StoreOp::ReadMarks { .. }
            | StoreOp::LastSeqs { .. }
            | StoreOp::FindUser { .. }
            | StoreOp::LiveTokens { .. }
            | StoreOp::RoomMembers { .. } => false,
        }
    }
}

/// Most rooms one [`StoreOp::RoomMembers`] asks about.
pub const ROOM_MEMBERS_PAGE: usize = 64;

/// Most tokens one [`StoreOp::LiveTokens`] asks about.
pub const LIVE_TOKENS_PAGE: usize = 256;

/// A message to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Principal of the sender (for the client-id dedup).
    pub sender: UserKey,
    /// Display name of the sender.
    pub from: String,
    /// Display name of the recipient, for a private message.
    pub to: Option<String>,
    /// The text.
    pub text: String,
    /// The client's message id, if it gave one.
    pub client_id: Option<String>,
    /// Server wall clock, ms since the Unix epoch.
    pub ts: u64,
    /// For a private message to a registered user: it enters the user's
    /// inbox, unless that already holds this many unacknowledged messages.
    /// `None` for room messages and messages to guests, which have no inbox.
    pub inbox: Option<InboxBound>,
}

/// How full a registered user's inbox (its unacknowledged private
/// messages) may get. A guest can open a new conversation with every new
/// session, so the bound per recipient is what protects the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxBound {
    /// Messages in one conversation since the recipient last acknowledged
    /// it: the sender's waiting ones, and the few the recipient sent since.
    pub per_sender: u32,
    /// Messages from everybody waiting unacknowledged.
    pub per_recipient: u32,
}

impl InboxBound {
    /// No bound: for a user who reads as it goes (see `Hub::inbox_bound`).
    pub const UNBOUNDED: InboxBound = InboxBound { per_sender: u32::MAX, per_recipient: u32::MAX };
}

/// Which bound of an inbox a message did not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxLimit {
    /// [`InboxBound::per_sender`].
    PerSender,
    /// [`InboxBound::per_recipient`].
    PerRecipient,
}

/// The scope a client id is remembered in: the room, or the conversation
/// (by its principals, in either order).
pub fn id_scope(target: &Target) -> String {
    match target {
        Target::Room(room) => format!("r:{room}"),
        Target::Conversation(a, b) => {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            format!("c:{lo} {hi}")
        }
    }
}

/// The display names of a conversation's two principals, lower-cased and
/// sorted: what a client calls the conversation. Two principals can share
/// it (a guest's name, taken again later by another guest).
pub fn display_pair(a: &str, b: &str) -> String {
    let name = |key: &str| key.split_once('#').map_or(key, |(name, _)| name).to_ascii_lowercase();
    let (a, b) = (name(a), name(b));
    if a <= b {
        format!("{a} {b}")
    } else {
        format!("{b} {a}")
    }
}

/// How a token is stored: the hex SHA-256 of its text. The core needs it
/// too: a revocation crosses the bus as the hash, never as the token.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether a principal is a guest's (`name#incarnation`): guests have no
/// inbox.
pub fn is_guest_key(key: &str) -> bool {
    key.contains('#')
}

/// Which messages of a target to read.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqRange {
    /// The `limit` newest with `seq < before` (`None`: no upper bound).
    Before { before: Option<u64>, limit: u32 },
    /// The `limit` newest with `seq > after`. Used by `since` replay: when more
    /// than `limit` qualify, the oldest are left out.
    After { after: u64, limit: u32 },
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sequence number within its target.
    pub seq: u64,
    /// Display name of the sender.
    pub from: String,
    /// Display name of the recipient (private messages only).
    pub to: Option<String>,
    /// Principal of the sender.
    pub sender: UserKey,
    /// The text.
    pub text: String,
    /// The client's message id, if any.
    pub client_id: Option<String>,
    /// Server wall clock at send, ms since the Unix epoch.
    pub ts: u64,
}

/// A private message waiting for its recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMessage {
    /// Principal of the other side of the conversation: the sender. (The
    /// user's own messages are never in its inbox.)
    pub with: UserKey,
    /// The message.
    pub message: StoredMessage,
}

/// A room as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoom {
    /// Name.
    pub name: String,
    /// Newest `seq` (0 when empty).
    pub seq: u64,
    /// Registered members.
    pub members: Vec<String>,
}

/// A conversation as listed to a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationSummary {
    /// Principal of the other side.
    pub with: UserKey,
    /// Newest `seq` of the conversation.
    pub seq: u64,
    /// The user's read mark (0 if none).
    pub read: u64,
}

/// The answer to a [`StoreOp`].
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq)]
pub enum StoreValue {
    /// For `Join`, `Leave`, `Ack`, `Read`.
    Done,
    /// For `LoadAll`.
    Snapshot { users: Vec<String>, rooms: Vec<StoredRoom> },
    /// For `Register`.
    Registered,
    /// For `Register`: the name exists.
    NameTaken,
    /// For `Login`.
    Token { token: String, expires_ms: u64 },
    /// For `Verify`.
    Verified,
    /// For `Login`, `Verify` and `CheckToken`.
    Rejected,
    /// For `CheckToken`.
    TokenUser { user: String, expires_ms: u64 },
    /// For `Revoke`.
    Revoked { user: Option<String> },
    /// For `Append`.
    Appended { seq: u64, ts: u64, duplicate: bool },
    /// For `Append` of a private message: the recipient's inbox is full;
    /// nothing was written.
    InboxFull { limit: InboxLimit },
    /// For `History`. `oldest` is the smallest `seq` still stored for the
    /// target (`None` when nothing is).
    Messages { messages: Vec<StoredMessage>, oldest: Option<u64> },
    /// For `Inbox`: a page, and the cursor after its last message (give it
    /// as `after` for the next page; equal to the `after` asked when the page
    /// is empty).
    Inbox { messages: Vec<InboxMessage>, cursor: u64 },
    /// For `Conversations`.
    Conversations { conversations: Vec<ConversationSummary> },
    /// For `ReadMarks`: `(room, read, seq)`: the user's read mark and the
    /// room's newest `seq`. A node of a cluster that has not served the room
    /// lately learns from it where the room stands before `welcome` says so.
    ReadMarks { marks: Vec<(String, u64, u64)> },
    /// For `LastSeqs`: `(room, seq)` for every room asked, in the order
    /// asked, and `(a, b, seq)` for each conversation of the users asked,
    /// its principals sorted (`a < b`), each conversation once.
    LastSeqs { rooms: Vec<(String, u64)>, conversations: Vec<(UserKey, UserKey, u64)> },
    /// For `FindUser`: the user's name as registered, if there is one.
    FoundUser(Option<String>),
    /// For `ClaimGuest`: whether the name is now the node's.
    Claimed(bool),
    /// For `LiveTokens`: the live ones of the tokens asked, in the order
    /// asked.
    LiveTokens { tokens: Vec<String> },
    /// For `RoomMembers`: each room asked, in the order asked, with its
    /// newest `seq` and its registered members sorted (0 and none for a
    /// room storage does not know).
    RoomMembers { rooms: Vec<(String, u64, Vec<String>)> },
}

/// Why a request failed. Every variant reaches clients as `unavailable`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed (disk full, read-only, corrupt, gone).
    #[error("storage failed: {0}")]
    Backend(StoreFailure),
    /// The worker is gone or its queue is full.
    #[error("storage is overloaded or shut down")]
    Overloaded,
    /// The request waited past its deadline.
    #[error("storage timed out")]
    TimedOut,
}

/// The kind of backend failure, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// The disk or file system refused the write.
    Io,
    /// The database is locked or busy past the retry budget.
    Busy,
    /// Anything else the backend reported.
    Other,
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreFailure::Io => "i/o",
            StoreFailure::Busy => "busy",
            StoreFailure::Other => "backend error",
        })
    }
}

/// A completed request.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreDone {
    /// The request's id.
    pub id: StoreReqId,
    /// Its outcome.
    pub result: Result<StoreValue, StoreError>,
}
