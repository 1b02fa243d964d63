//! The node's machines as the threads really run them: with
//! [`Topology::Local`] one shard and the hub composed by
//! [`natter_core::Local`] (`--threads 1`); with [`Topology::Threads`] N
//! shards and a hub apart, whose mail travels through per-thread queues
//! and is delivered in a seeded random order and in random batches, as
//! mailboxes taken once per loop turn deliver it. Each queue keeps its own
//! order (a mailbox is FIFO); nothing else is promised, so nothing else is.
//!
//! Every input fed to a machine can be recorded with its `Now`, and
//! [`replay`] feeds a recording to fresh machines: the same outputs come
//! out, which is what makes a failing run a regression test.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use natter_core::bus::{BusCommand, BusEvent};
use natter_core::store::{StoreDone, StoreRequest, StoredRoom};
use natter_core::{
    Config, ConnKey, Hub, HubInput, HubOutput, Local, LocalInput, LocalOutput, Metrics, Now, Shard, ShardInput,
    ShardOutput, ToHub, ToShard,
};

use crate::rng::Rng;

/// How many I/O threads the simulated node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `--threads 1`: one shard with the hub beside it.
    Local,
    /// `--threads N`: N shards and the hub on its own thread.
    Threads(u16),
}

impl Topology {
    /// How many shards take connections.
    pub fn shards(self) -> u16 {
        match self {
            Topology::Local => 1,
            Topology::Threads(n) => n.max(1),
        }
    }
}

/// An input as it was fed, to replay.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// To the one-thread node.
    Local(Now, LocalInput<'static>),
    /// To shard number `.0`.
    Shard(u16, Now, ShardInput<'static>),
    /// To the hub.
    Hub(Now, HubInput),
}

/// What a machine said the runtime must do, gathered by the harness.
#[derive(Debug)]
pub(crate) enum Effect {
    Write(u16, ConnKey),
    Close(u16, ConnKey),
    Store(Vec<StoreRequest>),
    Bus(BusCommand),
}

enum Kind {
    Local(Box<Local>),
    Threads {
        shards: Vec<Shard>,
        hub: Box<Hub>,
        /// Each shard's mail for the hub, oldest first.
        to_hub: Vec<VecDeque<ToHub>>,
        /// The hub's mail for each shard, oldest first.
        to_shard: Vec<VecDeque<ToShard>>,
    },
}

/// The machines of one node and the mail between them.
pub(crate) struct Machines {
    kind: Kind,
    effects: VecDeque<Effect>,
    recording: Option<Vec<Recorded>>,
    /// Every output, rendered, when recording (what a replay must match).
    trace: Vec<String>,
}

impl Machines {
    pub(crate) fn new(
        topology: Topology,
        config: &Arc<Config>,
        metrics: &Arc<Metrics>,
        snapshot: (Vec<String>, Vec<StoredRoom>),
        now: Now,
    ) -> Machines {
        let (users, rooms) = snapshot;
        let hub = Hub::new((**config).clone(), Arc::clone(metrics), users, rooms, now);
        let kind = match topology {
            Topology::Local => {
                Kind::Local(Box::new(Local::new(Shard::new(0, Arc::clone(config), Arc::clone(metrics)), hub)))
            }
            Topology::Threads(n) => {
                let n = n.max(1);
                Kind::Threads {
                    shards: (0..n).map(|i| Shard::new(i, Arc::clone(config), Arc::clone(metrics))).collect(),
                    hub: Box::new(hub),
                    to_hub: (0..n).map(|_| VecDeque::new()).collect(),
                    to_shard: (0..n).map(|_| VecDeque::new()).collect(),
                }
            }
        };
        Machines { kind, effects: VecDeque::new(), recording: None, trace: Vec::new() }
    }

    pub(crate) fn start_recording(&mut self) {
        self.recording.get_or_insert_with(Vec::new);
    }

    pub(crate) fn recording(&self) -> &[Recorded] {
        self.recording.as_deref().unwrap_or_default()
    }

    pub(crate) fn trace(&self) -> &[String] {
        &self.trace
    }

    pub(crate) fn take_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub(crate) fn shard(&self, i: u16) -> &Shard {
        match &self.kind {
            Kind::Local(local) => local.shard(),
            Kind::Threads { shards, .. } => &shards[usize::from(i)],
        }
    }

    pub(crate) fn shard_count(&self) -> u16 {
        match &self.kind {
            Kind::Local(_) => 1,
            Kind::Threads { shards, .. } => shards.len() as u16,
        }
    }

    pub(crate) fn hub(&self) -> &Hub {
        match &self.kind {
            Kind::Local(local) => local.hub(),
            Kind::Threads { hub, .. } => hub,
        }
    }

    pub(crate) fn outbox<'a>(&'a self, shard: u16, conn: ConnKey, bufs: &mut [IoSlice<'a>]) -> usize {
        self.shard(shard).outbox(conn, bufs)
    }

    /// Feeds a shard (the one-thread node's, with [`Topology::Local`]).
    /// A shard refusing an input is a harness bug: it panics.
    pub(crate) fn feed(&mut self, now: Now, shard: u16, input: ShardInput<'_>) -> Option<ConnKey> {
        if let Some(r) = &mut self.recording {
            r.push(match self.kind {
                Kind::Local(_) => Recorded::Local(now, LocalInput::Shard(input.clone().into_owned())),
                Kind::Threads { .. } => Recorded::Shard(shard, now, input.clone().into_owned()),
            });
        }
        let described = format!("{input:?}");
        let opened = match &mut self.kind {
            Kind::Local(local) => local.handle_input(now, LocalInput::Shard(input)).map_err(|e| e.to_string()),
            Kind::Threads { shards, .. } => {
                shards[usize::from(shard)].handle_input(now, input).map_err(|e| e.to_string())
            }
        };
        let opened = opened.unwrap_or_else(|e| panic!("shard {shard} refused {described}: {e}"));
        self.collect(shard);
        opened
    }

    /// A storage completion, to whichever machine holds the hub.
    pub(crate) fn store_done(&mut self, now: Now, done: StoreDone) {
        match &mut self.kind {
            Kind::Local(local) => {
                if let Some(r) = &mut self.recording {
                    r.push(Recorded::Local(now, LocalInput::Store(done.clone())));
                }
                local.handle_input(now, LocalInput::Store(done)).expect("a completion is always accepted");
                self.collect(0);
            }
            Kind::Threads { .. } => self.feed_hub(now, HubInput::Store(done)),
        }
    }

    /// An event of the cluster's bus, to whichever machine holds the hub.
    pub(crate) fn bus_event(&mut self, now: Now, event: BusEvent) {
        match &mut self.kind {
            Kind::Local(local) => {
                if let Some(r) = &mut self.recording {
                    r.push(Recorded::Local(now, LocalInput::Bus(event.clone())));
                }
                local.handle_input(now, LocalInput::Bus(event)).expect("a bus event is always accepted");
                self.collect(0);
            }
            Kind::Threads { .. } => self.feed_hub(now, HubInput::Bus(event)),
        }
    }

    /// When the next machine wants its timeout.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match &self.kind {
            Kind::Local(local) => local.poll_timeout(),
            Kind::Threads { shards, hub, .. } => {
                shards.iter().filter_map(Shard::poll_timeout).chain(hub.poll_timeout()).min()
            }
        }
    }

    /// Fires every machine whose deadline passed; `false` if none had.
    pub(crate) fn fire_timers(&mut self, now: Now) -> bool {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now.instant);
        let mut fired = false;
        for i in 0..self.shard_count() {
            if due(self.shard(i).poll_timeout()) || (i == 0 && due(self.hub_deadline_if_local())) {
                self.feed(now, i, ShardInput::Timeout);
                fired = true;
            }
        }
        if let Kind::Threads { hub, .. } = &self.kind {
            if due(hub.poll_timeout()) {
                self.feed_hub(now, HubInput::Timeout);
                fired = true;
            }
        }
        fired
    }

    fn hub_deadline_if_local(&self) -> Option<Instant> {
        match &self.kind {
            Kind::Local(local) => local.hub().poll_timeout(),
            Kind::Threads { .. } => None,
        }
    }

    /// Whether mail is on its way between threads.
    pub(crate) fn mail_in_flight(&self) -> bool {
        match &self.kind {
            Kind::Local(_) => false,
            Kind::Threads { to_hub, to_shard, .. } => {
                to_hub.iter().any(|q| !q.is_empty()) || to_shard.iter().any(|q| !q.is_empty())
            }
        }
    }

    /// Delivers one batch of mail: from a random non-empty queue, its
    /// oldest 1 to all messages. `false` when no mail is in flight.
    pub(crate) fn deliver_mail(&mut self, now: Now, rng: &mut Rng) -> bool {
        let Kind::Threads { to_hub, to_shard, .. } = &mut self.kind else { return false };
        let n = to_hub.len();
        let queues: Vec<usize> =
            (0..2 * n).filter(|&q| if q < n { !to_hub[q].is_empty() } else { !to_shard[q - n].is_empty() }).collect();
        if queues.is_empty() {
            return false;
        }
        let q = queues[rng.below(queues.len() as u64) as usize];
        if q < n {
            let len = to_hub[q].len();
            let take = 1 + rng.below(len as u64) as usize;
            let batch: Vec<ToHub> = to_hub[q].drain(..take).collect();
            for msg in batch {
                self.feed_hub(now, HubInput::FromShard(msg));
            }
        } else {
            let i = q - n;
            let len = to_shard[i].len();
            let take = 1 + rng.below(len as u64) as usize;
            let batch: Vec<ToShard> = to_shard[i].drain(..take).collect();
            self.feed(now, i as u16, ShardInput::FromHub(batch));
        }
        true
    }

    fn feed_hub(&mut self, now: Now, input: HubInput) {
        let Kind::Threads { hub, .. } = &mut self.kind else { unreachable!("only a threaded node has a hub apart") };
        if let Some(r) = &mut self.recording {
            r.push(Recorded::Hub(now, input.clone()));
        }
        hub.handle_input(now, input);
        self.collect_hub();
    }

    /// Gathers what shard `i` (or the one-thread node) wants done.
    fn collect(&mut self, i: u16) {
        let tracing = self.recording.is_some();
        match &mut self.kind {
            Kind::Local(local) => {
                while let Some(out) = local.poll_output() {
                    if tracing {
                        self.trace.push(format!("local {out:?}"));
                    }
                    self.effects.push_back(match out {
                        LocalOutput::Write(k) => Effect::Write(0, k),
                        LocalOutput::Close(k) => Effect::Close(0, k),
                        LocalOutput::Store(requests) => Effect::Store(requests),
                        LocalOutput::Bus(command) => Effect::Bus(command),
                    });
                }
            }
            Kind::Threads { shards, to_hub, .. } => {
                while let Some(out) = shards[usize::from(i)].poll_output() {
                    if tracing {
                        self.trace.push(format!("shard {i} {out:?}"));
                    }
                    match out {
                        ShardOutput::Write(k) => self.effects.push_back(Effect::Write(i, k)),
                        ShardOutput::Close(k) => self.effects.push_back(Effect::Close(i, k)),
                        ShardOutput::ToHub(batch) => to_hub[usize::from(i)].extend(batch),
                    }
                }
            }
        }
    }

    fn collect_hub(&mut self) {
        let tracing = self.recording.is_some();
        let Kind::Threads { hub, to_shard, .. } = &mut self.kind else { return };
        while let Some(out) = hub.poll_output() {
            if tracing {
                self.trace.push(format!("hub {out:?}"));
            }
            match out {
                HubOutput::Store(requests) => self.effects.push_back(Effect::Store(requests)),
                HubOutput::Bus(command) => self.effects.push_back(Effect::Bus(command)),
                HubOutput::ToShard(i, batch) => match to_shard.get_mut(usize::from(i)) {
                    Some(q) => q.extend(batch),
                    None => panic!("the hub wrote to shard {i}, which does not exist"),
                },
            }
        }
    }
}

/// Feeds `recording` to fresh machines of `topology` built over the same
/// snapshot, start time and configuration, and returns every output they
/// gave, rendered: for a run recorded with [`crate::Sim::record`], equal to
/// [`crate::Sim::trace`].
pub fn replay(
    topology: Topology,
    config: Config,
    snapshot: (Vec<String>, Vec<StoredRoom>),
    start: Now,
    recording: &[Recorded],
) -> Vec<String> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    let mut m = Machines::new(topology, &config, &metrics, snapshot, start);
    m.start_recording();
    for r in recording {
        match r.clone() {
            Recorded::Local(now, LocalInput::Shard(input)) | Recorded::Shard(0, now, input)
                if matches!(m.kind, Kind::Local(_)) =>
            {
                m.feed(now, 0, input);
            }
            Recorded::Local(now, LocalInput::Store(done)) => m.store_done(now, done),
            Recorded::Local(now, LocalInput::Bus(event)) => m.bus_event(now, event),
            Recorded::Shard(i, now, input) => {
                m.feed(now, i, input);
            }
            Recorded::Hub(now, input) => m.feed_hub(now, input),
            Recorded::Local(..) => panic!("a one-thread recording replayed on threads"),
        }
        // Mail is not re-delivered by itself: the recording holds its
        // deliveries as inputs. What the machines queue is dropped.
        if let Kind::Threads { to_hub, to_shard, .. } = &mut m.kind {
            to_hub.iter_mut().for_each(VecDeque::clear);
            to_shard.iter_mut().for_each(VecDeque::clear);
        }
    }
    m.trace
}
