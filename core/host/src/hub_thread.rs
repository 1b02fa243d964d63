//! The hub on its own thread (`--threads` 2 and more): it takes its
//! mailbox whole, feeds every message to the hub, and posts what the hub
//! says to the shards' mailboxes and to storage.

use std::sync::Arc;
use std::thread::JoinHandle;

use natter_core::bus::BusEvent;
use natter_core::store::StoreDone;
use natter_core::{Hub, HubInput, HubOutput, ToHub, ToShard};

use crate::bus::{to_redis, Bus};

use crate::clock::now;
use crate::mailbox::Mailbox;
use crate::store::StoreHandle;

/// Batches a shard may have queued for the hub before it waits.
pub(crate) const HUB_INBOX_BOUND: usize = 1024;

/// What reaches a shard from other threads.
pub enum ShardMail {
    /// From the hub thread.
    Hub(Vec<ToShard>),
    /// Storage completions, when the hub is in this shard's thread.
    Store(Vec<StoreDone>),
    /// What the cluster's bus brought, when the hub is in this shard's thread.
    Bus(BusEvent),
}

/// What reaches the hub thread.
pub(crate) enum HubMail {
    /// One loop turn's mail of one shard.
    Shards(Vec<ToHub>),
    Store(Vec<StoreDone>),
    Bus(BusEvent),
    Stop,
}

/// Starts the hub thread; it ends on [`HubMail::Stop`].
pub(crate) fn spawn(
    mut hub: Hub,
    inbox: Arc<Mailbox<HubMail>>,
    shards: Vec<Arc<Mailbox<ShardMail>>>,
    store: Arc<StoreHandle>,
    bus: Option<Arc<Bus>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("natter-hub".into()).spawn(move || {
        let mut stop = false;
        while !stop {
            let mail = inbox.wait_take(hub.poll_timeout());
            let now = now();
            for m in mail {
                match m {
                    HubMail::Shards(batch) => {
                        for msg in batch {
                            hub.handle_input(now, HubInput::FromShard(msg));
                        }
                    }
                    HubMail::Store(done) => {
                        for d in done {
                            hub.handle_input(now, HubInput::Store(d));
                        }
                    }
                    HubMail::Bus(event) => hub.handle_input(now, HubInput::Bus(event)),
                    HubMail::Stop => stop = true,
                }
            }
            if hub.poll_timeout().is_some_and(|t| t <= now.instant) {
                hub.handle_input(now, HubInput::Timeout);
            }
            while let Some(output) = hub.poll_output() {
                match output {
                    HubOutput::Store(requests) => store.submit(requests),
                    // Only a node started with --redis emits these.
                    HubOutput::Bus(command) => {
                        if let Some(bus) = &bus {
                            bus.send(to_redis(command));
                        }
                    }
                    HubOutput::ToShard(i, messages) => {
                        if let Some(shard) = shards.get(usize::from(i)) {
                            shard.push(ShardMail::Hub(messages));
                        }
                    }
                }
            }
        }
    })
}
