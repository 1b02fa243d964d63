//! A seat's connections as every runtime keeps them: its sockets by
//! `ConnKey`, the shard's outputs carried out on them, reads fed to the
//! shard, queued bytes written with vectored writes, and the rest of a loop
//! turn up to the orderly end. A runtime brings the sockets and the waiting
//! (readiness, timers, wake-ups); everything here is the same for all.
//!
//! A [`Seat`] is what one I/O thread drives: a shard whose hub is on its
//! own thread, or (`--threads 1`) the shard and the hub composed by
//! [`Local`]. Either way the runtime sees the same inputs and outputs.

use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_core::{ConnKey, Local, LocalInput, LocalOutput, Now, Shard, ShardInput, ShardOutput, ToHub, Transport};

use crate::bus::{to_redis, Bus};
use crate::clock::now;
use crate::hub_thread::{HubMail, ShardMail, HUB_INBOX_BOUND};
use crate::mailbox::Mailbox;
use crate::signals::Shutdown;
use crate::store::StoreHandle;

/// How long shutdown waits for clients to take their close frames.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What one I/O thread drives. Built by [`crate::Node::start`].
pub struct Seat {
    machine: Machine,
    /// What other threads send this seat.
    inbox: Arc<Mailbox<ShardMail>>,
    /// This loop turn's mail for a hub on its own thread.
    to_hub: Vec<ToHub>,
    /// Writes and closes, in the order the machine gave them.
    effects: std::collections::VecDeque<Effect>,
}

enum Machine {
    /// The hub is on its own thread.
    Shard { shard: Shard, hub: Arc<Mailbox<HubMail>> },
    /// The hub is here: storage and the bus are fed from this thread.
    Local { local: Box<Local>, store: Arc<StoreHandle>, bus: Option<Arc<Bus>> },
}

/// What a seat asks of the sockets.
enum Effect {
    Write(ConnKey),
    Close(ConnKey),
}

impl Seat {
    pub(crate) fn remote(shard: Shard, inbox: Arc<Mailbox<ShardMail>>, hub: Arc<Mailbox<HubMail>>) -> Seat {
        Seat::with(Machine::Shard { shard, hub }, inbox)
    }

    pub(crate) fn local(
        local: Local,
        inbox: Arc<Mailbox<ShardMail>>,
        store: Arc<StoreHandle>,
        bus: Option<Arc<Bus>>,
    ) -> Seat {
        Seat::with(Machine::Local { local: Box::new(local), store, bus }, inbox)
    }

    fn with(machine: Machine, inbox: Arc<Mailbox<ShardMail>>) -> Seat {
        Seat { machine, inbox, to_hub: Vec::new(), effects: Default::default() }
    }

    /// Sets how other threads wake this seat's event loop (once, first).
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        self.inbox.set_waker(wake);
    }

    fn shard(&self) -> &Shard {
        match &self.machine {
            Machine::Shard { shard, .. } => shard,
            Machine::Local { local, .. } => local.shard(),
        }
    }

    /// Feeds the shard. A refusal is a bug in this file (a key fed after
    /// its socket was dropped): logged, and fatal in debug builds.
    fn feed(&mut self, now: Now, input: ShardInput<'_>) -> Option<ConnKey> {
        let result = match &mut self.machine {
            Machine::Shard { shard, .. } => shard.handle_input(now, input).map_err(|e| e.to_string()),
            Machine::Local { local, .. } => {
                local.handle_input(now, LocalInput::Shard(input)).map_err(|e| e.to_string())
            }
        };
        let opened = result.unwrap_or_else(|e| {
            tracing::error!(error = %e, "the shard refused an input");
            debug_assert!(false, "the shard refused an input: {e}");
            None
        });
        self.collect();
        opened
    }

    /// Takes the machine's outputs: mail and storage go where they belong,
    /// writes and closes wait for [`Seat::next_effect`].
    fn collect(&mut self) {
        match &mut self.machine {
            Machine::Shard { shard, .. } => {
                while let Some(output) = shard.poll_output() {
                    match output {
                        ShardOutput::Write(k) => self.effects.push_back(Effect::Write(k)),
                        ShardOutput::Close(k) => self.effects.push_back(Effect::Close(k)),
                        ShardOutput::ToHub(batch) => self.to_hub.extend(batch),
                    }
                }
            }
            Machine::Local { local, store, bus } => {
                while let Some(output) = local.poll_output() {
                    match output {
                        LocalOutput::Write(k) => self.effects.push_back(Effect::Write(k)),
                        LocalOutput::Close(k) => self.effects.push_back(Effect::Close(k)),
                        LocalOutput::Store(requests) => store.submit(requests),
                        // Only a node started with --redis emits these.
                        LocalOutput::Bus(command) => {
                            if let Some(bus) = bus {
                                bus.send(to_redis(command));
                            }
                        }
                    }
                }
            }
        }
    }

    fn next_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Feeds what arrived from other threads.
    fn take_mail(&mut self, now: Now) {
        for mail in self.inbox.take() {
            match (mail, &mut self.machine) {
                (ShardMail::Hub(batch), _) => {
                    self.feed(now, ShardInput::FromHub(batch));
                }
                (ShardMail::Store(done), Machine::Local { local, .. }) => {
                    for d in done {
                        // A completion is always accepted.
                        let _ = local.handle_input(now, LocalInput::Store(d));
                    }
                    self.collect();
                }
                (ShardMail::Bus(event), Machine::Local { local, .. }) => {
                    // Bus events are always accepted.
                    let _ = local.handle_input(now, LocalInput::Bus(event));
                    self.collect();
                }
                (ShardMail::Store(_) | ShardMail::Bus(_), Machine::Shard { .. }) => {
                    debug_assert!(false, "storage and the bus answer the hub's thread, not a shard's");
                }
            }
        }
    }

    /// Hands this turn's mail for a remote hub over as one batch.
    fn flush_to_hub(&mut self) {
        if let Machine::Shard { hub, .. } = &self.machine {
            if !self.to_hub.is_empty() {
                hub.push_bounded(HubMail::Shards(std::mem::take(&mut self.to_hub)), HUB_INBOX_BOUND);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.machine {
            Machine::Shard { shard, .. } => shard.poll_timeout(),
            Machine::Local { local, .. } => local.poll_timeout(),
        }
    }
}

#[cfg(test)]
impl Seat {
    /// The only seat of a node with the hub in it and storage in `dir`, for
    /// tests that drive a seat without sockets.
    pub(crate) fn for_test(dir: &std::path::Path) -> Seat {
        use crate::store::{spawn_store_with, SqliteBackend, StoreConfig};
        use natter_core::store::StoreDone;
        use natter_core::{Config, Hub, Metrics};

        let config = Config::default();
        let metrics = Arc::new(Metrics::default());
        let inbox: Arc<Mailbox<ShardMail>> = Arc::default();
        let sink_inbox = Arc::clone(&inbox);
        let sink = Arc::new(move |done: Vec<StoreDone>| sink_inbox.push(ShardMail::Store(done)));
        let backend = SqliteBackend::open(dir).expect("a database in a temporary directory");
        let store =
            spawn_store_with(backend, sink, Arc::clone(&metrics), StoreConfig::new(1024)).expect("a store thread");
        let hub = Hub::new(config.clone(), Arc::clone(&metrics), Vec::new(), Vec::new(), now());
        let shard = Shard::new(0, Arc::new(config), metrics);
        Seat::local(Local::new(shard, hub), inbox, Arc::new(store), None)
    }
}

/// Reads per connection per turn: a client that sends without pause cannot
/// keep its loop from serving the others.
pub const READS_PER_TURN: usize = 16;
/// How long accepting pauses after an error other than `WouldBlock` (out of
/// file descriptors, mostly), for runtimes that would otherwise retry at once.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// Slices per vectored write.
const IOV: usize = 64;
/// The one read buffer of a seat.
const READ_BUF: usize = 64 * 1024;

/// A non-blocking TCP connection as a runtime holds it; dropping it closes
/// it (and ends whatever the runtime has waiting on it).
pub trait Socket {
    /// One read; `WouldBlock` when nothing is there.
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// One vectored write; `WouldBlock` when the kernel takes nothing.
    fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// The shard closed the connection: shut the write half down before the
    /// socket is dropped.
    fn shutdown_write(&self);
    /// For a socket that waits with a waker ([`crate::ready`]): after a read
    /// found nothing, asks to be woken once it is readable; `true` when it
    /// is already. A mio socket is always registered and needs nothing.
    fn arm_read(&self) -> bool {
        false
    }
}

/// How [`Conns::read`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Read until the socket had no more.
    Drained,
    /// The budget ran out first: read again after the others had their turn.
    More,
    /// The connection is gone: the peer closed it, it failed, or the shard
    /// closed it.
    Gone,
}

/// Where a seat's loop is after [`Conns::turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Serving as usual.
    Serving,
    /// Shutdown began: accept no more connections.
    Stopping,
    /// Every connection is gone or the grace period is over: end the loop.
    Done,
}

/// A seat and its sockets. See the module docs.
pub struct Conns<S> {
    /// The shard and its links.
    pub seat: Seat,
    /// Indexed by `ConnKey`.
    sockets: Vec<Option<S>>,
    /// Connections with bytes queued, written at the end of the turn.
    to_write: Vec<ConnKey>,
    buf: Box<[u8]>,
    /// When the grace period ends, once shutdown began.
    stopping: Option<Instant>,
    /// The clock as this loop turn read it: once per turn, not once per
    /// read and write (at the fan-out load that was 2 % of the I/O thread).
    clock: Option<Now>,
}

impl<S: Socket> Conns<S> {
    /// A seat with no connections yet.
    pub fn new(seat: Seat) -> Conns<S> {
        Conns {
            seat,
            sockets: Vec::new(),
            to_write: Vec::new(),
            buf: vec![0; READ_BUF].into(),
            stopping: None,
            clock: None,
        }
    }

    /// This turn's clock: read at its first use after the previous turn
    /// ended. A runtime whose readers run between turns (tokio, smol) reads
    /// it at the first of them, moments before the turn they wake.
    fn now(&mut self) -> Now {
        *self.clock.get_or_insert_with(now)
    }

    /// A connection was accepted: opens its session and keeps the socket
    /// `make` returns for its key (`None`: it could not be set up, and the
    /// session ends again). Once shutdown began, the connection is dropped.
    pub fn open(&mut self, transport: Transport, peer: IpAddr, make: impl FnOnce(ConnKey) -> Option<S>) {
        if self.stopping.is_some() {
            return;
        }
        let now = self.now();
        let Some(key) = self.seat.feed(now, ShardInput::Open { transport, peer }) else { return };
        match make(key) {
            Some(socket) => {
                if self.sockets.len() <= key {
                    self.sockets.resize_with(key + 1, || None);
                }
                self.sockets[key] = Some(socket);
            }
            None => {
                if self.seat.shard().is_open(key) {
                    self.seat.feed(now, ShardInput::Closed { conn: key });
                }
            }
        }
        self.drain();
    }

    /// The socket of a connection that is still open.
    pub fn get(&self, key: ConnKey) -> Option<&S> {
        self.sockets.get(key).and_then(Option::as_ref)
    }

    /// The same, mutable.
    pub fn get_mut(&mut self, key: ConnKey) -> Option<&mut S> {
        self.sockets.get_mut(key).and_then(Option::as_mut)
    }

    /// Reads a readable connection until it has no more or
    /// [`READS_PER_TURN`] reads are done, feeding the shard.
    pub fn read(&mut self, key: ConnKey) -> Read {
        for _ in 0..READS_PER_TURN {
            let Some(socket) = self.sockets.get(key).and_then(Option::as_ref) else {
                return Read::Gone;
            };
            match socket.try_read(&mut self.buf) {
                Ok(0) => return self.closed(key),
                Ok(n) => {
                    let now = self.now();
                    self.seat.feed(now, ShardInput::Received { conn: key, data: (&self.buf[..n]).into() });
                    self.drain();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.closed(key),
            }
        }
        if self.get(key).is_some() {
            Read::More
        } else {
            Read::Gone
        }
    }

    /// Reads the connections in `keys`, which their wakers reported
    /// ([`crate::ready`]), and writes them at the next flush (a waker also
    /// reports a socket that can take bytes again). Leaves in `keys` those
    /// to read again without waiting: their budget ran out, or they became
    /// readable again while being armed.
    pub fn read_woken(&mut self, keys: &mut Vec<ConnKey>) {
        let mut woken = std::mem::take(keys);
        woken.sort_unstable();
        woken.dedup();
        for key in woken {
            let again = match self.read(key) {
                Read::More => true,
                Read::Drained => self.get(key).is_some_and(Socket::arm_read),
                Read::Gone => false,
            };
            if again {
                keys.push(key);
            }
            self.to_write.push(key);
        }
    }

    /// The peer went away or the socket failed: tells the shard and drops
    /// the socket.
    pub fn closed(&mut self, key: ConnKey) -> Read {
        if self.sockets.get_mut(key).and_then(Option::take).is_some() {
            let now = self.now();
            self.seat.feed(now, ShardInput::Closed { conn: key });
            self.drain();
        }
        Read::Gone
    }

    /// The connection can take bytes again: write it at the next flush.
    pub fn writable(&mut self, key: ConnKey) {
        self.to_write.push(key);
    }

    /// Carries out the seat's writes and closes until it has none.
    pub fn drain(&mut self) {
        while let Some(effect) = self.seat.next_effect() {
            match effect {
                Effect::Write(key) => self.to_write.push(key),
                Effect::Close(key) => {
                    if let Some(socket) = self.sockets.get_mut(key).and_then(Option::take) {
                        socket.shutdown_write();
                    }
                }
            }
        }
    }

    /// Writes every connection with bytes queued: vectored writes carrying
    /// every queued frame (up to `IOV`), repeated while the kernel takes it
    /// all. `blocked` gets the sockets that would block, for the runtime to
    /// call [`Conns::writable`] when they can take more.
    pub fn flush(&mut self, mut blocked: impl FnMut(ConnKey, &mut S)) {
        // Writing can queue more (a failed socket's session ends, and with a
        // local hub its rooms hear of it at once): go on until nothing is left.
        while !self.to_write.is_empty() {
            let mut keys = std::mem::take(&mut self.to_write);
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                self.write(key, &mut blocked);
            }
        }
    }

    fn write(&mut self, key: ConnKey, blocked: &mut impl FnMut(ConnKey, &mut S)) {
        while self.seat.shard().wants_write(key) {
            let Some(socket) = self.sockets.get_mut(key).and_then(Option::as_mut) else {
                return;
            };
            let mut slices = [IoSlice::new(&[]); IOV];
            let n = self.seat.shard().outbox(key, &mut slices);
            match socket.try_write(&slices[..n]) {
                Ok(0) => return,
                Ok(written) => {
                    let now = self.now();
                    self.seat.feed(now, ShardInput::Written { conn: key, n: written });
                    self.drain();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return blocked(key, socket),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.closed(key);
                    return;
                }
            }
        }
    }

    /// The rest of a loop turn, after the reads: mail from other threads,
    /// due timers, the start of shutdown once it is signalled (WebSocket
    /// clients get 1012), the writes, and this turn's batch for the hub.
    pub fn turn(&mut self, shutdown: &Shutdown, blocked: impl FnMut(ConnKey, &mut S)) -> Turn {
        let now = self.now();
        self.seat.take_mail(now);
        self.drain();
        if self.seat.poll_timeout().is_some_and(|t| t <= now.instant) {
            self.seat.feed(now, ShardInput::Timeout);
            self.drain();
        }
        if shutdown.is_set() && self.stopping.is_none() {
            self.stopping = Some(now.instant + SHUTDOWN_GRACE);
            self.seat.feed(now, ShardInput::Shutdown);
            self.drain();
        }
        // The hub hears of this turn before clients read its writes (a
        // session's end, say, before its close frame), then of whatever the
        // writes themselves ended.
        self.seat.flush_to_hub();
        self.flush(blocked);
        self.seat.flush_to_hub();
        self.clock = None;
        match self.stopping {
            None => Turn::Serving,
            Some(end) if self.seat.shard().is_empty() || now.instant >= end => {
                self.sockets.clear();
                Turn::Done
            }
            Some(_) => Turn::Stopping,
        }
    }

    /// When the loop must take its next turn even if nothing happens: the
    /// shard's next deadline, or the end of the grace period.
    pub fn deadline(&self) -> Option<Instant> {
        let shard = self.seat.poll_timeout();
        match self.stopping {
            Some(end) => Some(shard.map_or(end, |t| t.min(end))),
            None => shard,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::*;

    /// An in-memory socket: bytes the peer sent, bytes the seat wrote, and
    /// how many bytes the "kernel" takes before it would block.
    #[derive(Clone, Default)]
    struct Fake {
        input: Rc<RefCell<Vec<u8>>>,
        peer_closed: Rc<Cell<bool>>,
        output: Rc<RefCell<Vec<u8>>>,
        room: Rc<Cell<usize>>,
        shut: Rc<Cell<bool>>,
    }

    impl Socket for Fake {
        fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
            let mut input = self.input.borrow_mut();
            if input.is_empty() {
                return if self.peer_closed.get() { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let n = input.len().min(buf.len());
            buf[..n].copy_from_slice(&input[..n]);
            input.drain(..n);
            Ok(n)
        }

        fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room.get() == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room.get());
                self.output.borrow_mut().extend_from_slice(&b[..take]);
                self.room.set(self.room.get() - take);
                n += take;
            }
            Ok(n)
        }

        fn shutdown_write(&self) {
            self.shut.set(true);
        }
    }

    fn text(fake: &Fake) -> String {
        String::from_utf8_lossy(&fake.output.borrow()).into_owned()
    }

    /// A seat with one line client that sent its nickname, read but not
    /// yet answered; its socket takes `room` bytes before it would block.
    struct Alice {
        _dir: tempfile::TempDir,
        conns: Conns<Fake>,
        shutdown: Shutdown,
        key: ConnKey,
        fake: Fake,
    }

    fn alice(room: usize) -> Alice {
        let dir = tempfile::tempdir().unwrap();
        let mut conns = Conns::new(Seat::for_test(dir.path()));
        let fake = Fake::default();
        fake.room.set(room);
        let mut opened = None;
        conns.open(Transport::Line, IpAddr::from([127, 0, 0, 1]), |key| {
            opened = Some(key);
            Some(fake.clone())
        });
        let key = opened.expect("open calls make");
        fake.input.borrow_mut().extend_from_slice(b"alice\n");
        assert_eq!(conns.read(key), Read::Drained);
        Alice { _dir: dir, conns, shutdown: Shutdown::default(), key, fake }
    }

    #[test]
    fn reads_feed_the_shard_and_the_turn_writes_the_answer() {
        let mut a = alice(usize::MAX);
        let turn = a.conns.turn(&a.shutdown, |_, _| panic!("nothing blocks"));
        assert_eq!(turn, Turn::Serving);
        assert!(text(&a.fake).starts_with("* welcome alice\n"), "{}", text(&a.fake));

        a.fake.peer_closed.set(true);
        assert_eq!(a.conns.read(a.key), Read::Gone);
        assert!(a.conns.get(a.key).is_none());
        assert!(a.conns.seat.shard().is_empty());
    }

    #[test]
    fn a_socket_that_would_block_is_written_again_once_writable() {
        let mut a = alice(4);
        let mut blocked = Vec::new();
        a.conns.turn(&a.shutdown, |k, _| blocked.push(k));
        assert_eq!((blocked, text(&a.fake)), (vec![a.key], "* we".to_string()));

        a.fake.room.set(usize::MAX);
        a.conns.writable(a.key);
        a.conns.turn(&a.shutdown, |_, _| panic!("the socket takes everything now"));
        assert!(text(&a.fake).starts_with("* welcome alice\n"), "{}", text(&a.fake));
    }

    #[test]
    fn shutdown_says_bye_closes_and_ends_the_loop() {
        let mut a = alice(usize::MAX);
        assert_eq!(a.conns.turn(&a.shutdown, |_, _| {}), Turn::Serving);

        a.shutdown.trigger();
        assert_eq!(a.conns.turn(&a.shutdown, |_, _| {}), Turn::Done);
        assert!(text(&a.fake).ends_with("bye\n"), "{}", text(&a.fake));
        assert!(a.fake.shut.get(), "the write half is shut before the socket goes");
        assert!(a.conns.get(a.key).is_none());
        assert!(a.conns.deadline().is_some(), "the grace period bounds the wait");
        let mut refused = true;
        a.conns.open(Transport::Line, IpAddr::from([127, 0, 0, 1]), |_| {
            refused = false;
            None
        });
        assert!(refused, "no connection is opened once shutdown began");
    }
}
