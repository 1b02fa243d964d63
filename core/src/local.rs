//! The whole node on one thread (`--threads 1`): one shard wired to the
//! hub, with nothing crossing a thread. It is only a composer: every rule
//! lives in [`Shard`] and [`Hub`], which it drives exactly as two threads
//! would, minus the mailboxes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Instant;

use crate::bus::{BusCommand, BusEvent};
use crate::hub::{Hub, HubInput, HubOutput};
use crate::shard::{ConnKey, Shard, ShardError, ShardInput, ShardOutput};
use crate::store::{StoreDone, StoreRequest};
use crate::time::{earliest, Now};

/// Everything that can happen to a one-thread node.
#[derive(Debug, Clone)]
pub enum LocalInput<'a> {
    /// An input for the shard (never [`ShardInput::FromHub`]: the hub is
    /// here).
    Shard(ShardInput<'a>),
    /// A storage completion, in the order storage gives them.
    Store(StoreDone),
    /// From the cluster's bus (see [`HubInput::Bus`]).
    Bus(BusEvent),
}

/// What the runtime must do next.
#[derive(Debug)]
#[must_use]
pub enum LocalOutput {
    /// As [`ShardOutput::Write`].
    Write(ConnKey),
    /// As [`ShardOutput::Close`].
    Close(ConnKey),
    /// Submit these to storage, in order, and feed each completion back
    /// as [`LocalInput::Store`].
    Store(Vec<StoreRequest>),
    /// As [`HubOutput::Bus`].
    Bus(BusCommand),
}

/// A caller mistake on a one-thread node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    /// See [`ShardError`].
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// Mail from a hub, but the hub is this node's own.
    #[error("a one-thread node has no other hub to hear from")]
    FromHub,
}

/// One shard and the hub. See the module docs.
#[derive(Debug)]
pub struct Local {
    shard: Shard,
    hub: Hub,
    outputs: VecDeque<LocalOutput>,
}

impl Local {
    /// Wires `shard` (which must be shard 0) to `hub`.
    pub fn new(shard: Shard, hub: Hub) -> Local {
        debug_assert_eq!(shard.index(), 0, "the hub sends a lone shard's mail to shard 0");
        Local { shard, hub, outputs: VecDeque::new() }
    }

    /// Feeds one input; `Some(key)` for an `Open`. Drain
    /// [`Local::poll_output`] afterwards.
    pub fn handle_input(&mut self, now: Now, input: LocalInput<'_>) -> Result<Option<ConnKey>, LocalError> {
        let opened = match input {
            LocalInput::Shard(ShardInput::FromHub(_)) => return Err(LocalError::FromHub),
            LocalInput::Shard(ShardInput::Timeout) => {
                self.shard.handle_input(now, ShardInput::Timeout)?;
                if self.hub.poll_timeout().is_some_and(|t| t <= now.instant) {
                    self.hub.handle_input(now, HubInput::Timeout);
                }
                None
            }
            LocalInput::Shard(input) => self.shard.handle_input(now, input)?,
            LocalInput::Store(done) => {
                self.hub.handle_input(now, HubInput::Store(done));
                None
            }
            LocalInput::Bus(event) => {
                self.hub.handle_input(now, HubInput::Bus(event));
                None
            }
        };
        self.settle(now);
        Ok(opened)
    }

    /// The next output, until `None`.
    pub fn poll_output(&mut self) -> Option<LocalOutput> {
        self.outputs.pop_front()
    }

    /// When to feed `LocalInput::Shard(ShardInput::Timeout)`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.shard.poll_timeout(), self.hub.poll_timeout())
    }

    /// The shard, for its queries (`outbox`, `queued`, ...).
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The hub, for its queries.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// What to write next on a connection (see [`Shard::outbox`]).
    pub fn outbox<'a>(&'a self, conn: ConnKey, bufs: &mut [IoSlice<'a>]) -> usize {
        self.shard.outbox(conn, bufs)
    }

    /// Passes messages between the two machines until both are quiet.
    fn settle(&mut self, now: Now) {
        loop {
            let mut moved = false;
            while let Some(out) = self.shard.poll_output() {
                match out {
                    ShardOutput::Write(key) => self.outputs.push_back(LocalOutput::Write(key)),
                    ShardOutput::Close(key) => self.outputs.push_back(LocalOutput::Close(key)),
                    ShardOutput::ToHub(batch) => {
                        moved = true;
                        for msg in batch {
                            self.hub.handle_input(now, HubInput::FromShard(msg));
                        }
                    }
                }
            }
            while let Some(out) = self.hub.poll_output() {
                match out {
                    HubOutput::Store(requests) => self.outputs.push_back(LocalOutput::Store(requests)),
                    HubOutput::Bus(command) => self.outputs.push_back(LocalOutput::Bus(command)),
                    HubOutput::ToShard(_, batch) => {
                        moved = true;
                        // Mail from our own hub cannot be refused.
                        let _ = self.shard.handle_input(now, ShardInput::FromHub(batch));
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}
