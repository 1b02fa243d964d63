//! The link to Redis between cluster nodes: pub/sub as the core's bus.
//!
//! Two threads, so that a publish never waits behind a subscription read:
//! - `natter-bus-pub` takes publishes from its mailbox and sends each at
//!   once, on its own connection;
//! - `natter-bus-sub` holds the subscriptions, reads what arrives, and hands
//!   it to the sink. It also probes its own subscription: every
//!   [`PROBE_EVERY`] it publishes to the node's probe channel and expects to
//!   read it back within [`PROBE_PATIENCE`]. A subscription that stops
//!   delivering while publishes still succeed (the failure users of other
//!   chat servers meet most) is then found, reported and reconnected.
//!
//! Either thread that loses Redis reports [`BusEvent::Down`], reconnects
//! with backoff (capped at [`MAX_BACKOFF`]), and the subscriber, once every
//! subscription is restored, reports [`BusEvent::Up`]: the node then
//! catches up from the store whatever it missed. The bytes are opaque here;
//! the core encodes and decodes them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natter_core::metrics::Metrics;

use crate::mailbox::Mailbox;

/// How often the subscriber checks that its own publishes reach it.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a probe may take before the subscription counts as dead.
pub const PROBE_PATIENCE: Duration = Duration::from_secs(5);
/// The longest wait between two reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a read waits before the subscriber looks at its mailbox again:
/// the delay a new subscription can take.
const READ_SLICE: Duration = Duration::from_millis(20);
/// How long a `SUBSCRIBE` or `UNSUBSCRIBE` may wait for Redis's
/// confirmation. Not a [`READ_SLICE`]: on a busy machine a confirmation
/// takes longer than 20 ms, and the link is not lost for that.
const CONFIRM_PATIENCE: Duration = PROBE_PATIENCE;
/// Connecting gives up after this long, so a dead address is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Publishes queued for the publisher thread at most; past it they are
/// dropped and counted, as a failed publish is: the other nodes' check
/// finds what they carried. Without it a Redis outage would grow the queue
/// by every message sent meanwhile.
pub const PUBLISH_QUEUE: usize = 65_536;
/// How often the idle publisher looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(100);

/// What the node asks of the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusCommand {
    /// Send `payload` to everyone subscribed to `topic`.
    Publish { topic: String, payload: Vec<u8> },
    /// Receive what is published to `topic`.
    Subscribe(String),
    /// Stop receiving `topic`.
    Unsubscribe(String),
}

/// What the bus tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// Something published to a subscribed topic.
    Message { topic: String, payload: Vec<u8> },
    /// Connected (again), every subscription in place: catch up.
    Up,
    /// The link is down: what is published meanwhile is missed.
    Down,
}

/// Where bus events go (the hub's mailbox). Must not block for long.
pub type BusSink = Arc<dyn Fn(BusEvent) + Send + Sync>;

/// The core's command as Redis carries it: the topic's channel name and
/// the message's bytes.
pub fn to_redis(command: natter_core::bus::BusCommand) -> BusCommand {
    use natter_core::bus::BusCommand as Core;
    match command {
        Core::Publish { topic, bytes } => BusCommand::Publish { topic: topic.channel(), payload: bytes },
        Core::Subscribe(topic) => BusCommand::Subscribe(topic.channel()),
        Core::Unsubscribe(topic) => BusCommand::Unsubscribe(topic.channel()),
    }
}

/// What Redis brought, as the core reads it; `None` (counted, logged) for
/// bytes that are not a message this build knows: the periodic check of
/// the newest `seq`s fills what it carried.
pub fn from_redis(event: BusEvent, metrics: &Metrics) -> Option<natter_core::bus::BusEvent> {
    use natter_core::bus::{BusEvent as Core, BusMessage};
    match event {
        BusEvent::Up => Some(Core::Up),
        BusEvent::Down => Some(Core::Down),
        BusEvent::Message { topic, payload } => match BusMessage::decode(&payload) {
            Ok(message) => Some(Core::Message(message)),
            Err(e) => {
                Metrics::add(&metrics.bus_decode_errors, 1);
                tracing::warn!(error = ?e, %topic, "a bus message this build cannot read");
                None
            }
        },
    }
}

/// The running link; dropping it does not stop it, [`Bus::stop`] does.
pub struct Bus {
    pub_topics: Arc<Mailbox<(String, Vec<u8>)>>,
    subscriptions: Arc<Mailbox<BusCommand>>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    threads: Vec<JoinHandle<()>>,
}

impl Bus {
    /// Starts both threads against `url`. `node` names this node's probe
    /// channel. Connection failures are not errors: the threads retry.
    pub fn start(url: &str, node: &str, sink: BusSink, metrics: Arc<Metrics>) -> Result<Bus, String> {
        let client = redis::Client::open(url).map_err(|e| format!("bad --redis URL: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let pub_topics: Arc<Mailbox<(String, Vec<u8>)>> = Arc::default();
        let subscriptions: Arc<Mailbox<BusCommand>> = Arc::default();
        let probe = format!("natter:probe:{node}");
        let pub_metrics = Arc::clone(&metrics);
        let publisher = {
            let (client, queue, stop, metrics) =
                (client.clone(), Arc::clone(&pub_topics), Arc::clone(&stop), Arc::clone(&metrics));
            std::thread::Builder::new()
                .name("natter-bus-pub".into())
                .spawn(move || publish_loop(&client, &queue, &stop, &metrics))
                .map_err(|e| e.to_string())?
        };
        let subscriber = {
            let (queue, stop) = (Arc::clone(&subscriptions), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("natter-bus-sub".into())
                .spawn(move || Subscriber::new(client, probe, queue, sink, metrics).run(&stop))
                .map_err(|e| e.to_string())?
        };
        Ok(Bus { pub_topics, subscriptions, stop, metrics: pub_metrics, threads: vec![publisher, subscriber] })
    }

    /// Hands a command to the thread that carries it out.
    pub fn send(&self, command: BusCommand) {
        match command {
            BusCommand::Publish { topic, payload } => {
                if !self.pub_topics.push_unless_full((topic, payload), PUBLISH_QUEUE) {
                    Metrics::add(&self.metrics.bus_publish_errors, 1);
                }
            }
            other => self.subscriptions.push(other),
        }
    }

    /// Stops both threads and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    client.get_connection_with_timeout(CONNECT_TIMEOUT)
}

/// Subscribes to `add` and unsubscribes from `remove`, each waiting up to
/// [`CONFIRM_PATIENCE`] for its confirmation, then leaves the reads waiting
/// a [`READ_SLICE`] (nothing to change: nothing done, not even that).
fn change_subscriptions(pubsub: &mut redis::PubSub<'_>, add: &[String], remove: &[String]) -> redis::RedisResult<()> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    pubsub.set_read_timeout(Some(CONFIRM_PATIENCE))?;
    for topic in add {
        pubsub.subscribe(topic)?;
    }
    for topic in remove {
        pubsub.unsubscribe(topic)?;
    }
    pubsub.set_read_timeout(Some(READ_SLICE))
}

/// Doubles the wait after each failure, up to [`MAX_BACKOFF`].
fn backoff(current: &mut Duration) -> Duration {
    let wait = *current;
    *current = (*current * 2).min(MAX_BACKOFF);
    wait
}

/// Publishes what the hub asks, each batch in one pipelined round trip.
/// Best effort, as `BusCommand::Publish` says: a batch that cannot be sent
/// (Redis unreachable, or the pipeline failed) is dropped and counted, not
/// retried; the other nodes' check finds what it carried.
fn publish_loop(client: &redis::Client, queue: &Mailbox<(String, Vec<u8>)>, stop: &AtomicBool, metrics: &Metrics) {
    let mut connection: Option<redis::Connection> = None;
    let mut wait = Duration::from_millis(50);
    while !stop.load(Ordering::Acquire) {
        let batch = queue.wait_take(Some(std::time::Instant::now() + STOP_POLL));
        if batch.is_empty() {
            continue;
        }
        let conn = match connection.as_mut() {
            Some(c) => c,
            None => match connect(client) {
                Ok(c) => {
                    wait = Duration::from_millis(50);
                    connection.insert(c)
                }
                Err(e) => {
                    Metrics::add(&metrics.bus_publish_errors, batch.len() as u64);
                    tracing::warn!(error = %e, dropped = batch.len(), "cannot reach Redis to publish; retrying");
                    std::thread::sleep(backoff(&mut wait));
                    continue;
                }
            },
        };
        let mut pipe = redis::pipe();
        for (topic, payload) in &batch {
            pipe.cmd("PUBLISH").arg(topic).arg(payload).ignore();
        }
        if let Err(e) = pipe.query::<()>(conn) {
            Metrics::add(&metrics.bus_publish_errors, batch.len() as u64);
            tracing::warn!(error = %e, dropped = batch.len(), "publish failed");
            connection = None;
        }
    }
}

/// The subscriber thread's state.
struct Subscriber {
    client: redis::Client,
    probe: String,
    queue: Arc<Mailbox<BusCommand>>,
    sink: BusSink,
    metrics: Arc<Metrics>,
    /// Every topic the node wants, restored after each reconnection.
    topics: BTreeSet<String>,
    up: bool,
}

/// Why a connected session with Redis ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Subscriber {
    fn new(
        client: redis::Client,
        probe: String,
        queue: Arc<Mailbox<BusCommand>>,
        sink: BusSink,
        metrics: Arc<Metrics>,
    ) -> Subscriber {
        Subscriber { client, probe, queue, sink, metrics, topics: BTreeSet::new(), up: false }
    }

    fn run(mut self, stop: &AtomicBool) {
        let mut wait = Duration::from_millis(50);
        while !stop.load(Ordering::Acquire) {
            match self.session(stop) {
                Ended::Stopped => return,
                Ended::Lost(why) => {
                    self.take_commands();
                    if self.up {
                        self.up = false;
                        (self.sink)(BusEvent::Down);
                    }
                    tracing::warn!(error = %why, "Redis subscription lost; reconnecting");
                    std::thread::sleep(backoff(&mut wait));
                }
            }
        }
    }

    /// Applies queued subscription changes to the wanted set.
    fn take_commands(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for command in self.queue.take() {
            match command {
                BusCommand::Subscribe(t) => {
                    if self.topics.insert(t.clone()) {
                        add.push(t);
                    }
                }
                BusCommand::Unsubscribe(t) => {
                    if self.topics.remove(&t) {
                        remove.push(t);
                    }
                }
                BusCommand::Publish { .. } => {}
            }
        }
        (add, remove)
    }

    /// One connected stretch: subscribe to everything, report `Up`, then
    /// read, apply changes and probe until the link fails or stop is set.
    fn session(&mut self, stop: &AtomicBool) -> Ended {
        let mut sub = match connect(&self.client) {
            Ok(c) => c,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let mut probe_conn = match connect(&self.client) {
            Ok(c) => c,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let mut pubsub = sub.as_pubsub();
        self.take_commands();
        let mut all: Vec<String> = self.topics.iter().cloned().collect();
        all.push(self.probe.clone());
        if let Err(e) = change_subscriptions(&mut pubsub, &all, &[]) {
            return Ended::Lost(e.to_string());
        }
        self.up = true;
        (self.sink)(BusEvent::Up);
        let mut next_probe = Instant::now() + PROBE_EVERY;
        let mut probe_sent: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Acquire) {
                return Ended::Stopped;
            }
            let (add, remove) = self.take_commands();
            if let Err(e) = change_subscriptions(&mut pubsub, &add, &remove) {
                return Ended::Lost(e.to_string());
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    let topic = msg.get_channel_name().to_string();
                    if topic == self.probe {
                        probe_sent = None;
                        continue;
                    }
                    let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                    (self.sink)(BusEvent::Message { topic, payload });
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Ended::Lost(e.to_string()),
            }
            let now = Instant::now();
            if let Some(sent) = probe_sent {
                if now >= sent + PROBE_PATIENCE {
                    Metrics::add(&self.metrics.bus_probe_failures, 1);
                    return Ended::Lost("the subscription stopped delivering (probe not received)".into());
                }
            } else if now >= next_probe {
                next_probe = now + PROBE_EVERY;
                match redis::cmd("PUBLISH").arg(&self.probe).arg("probe").query::<i64>(&mut probe_conn) {
                    Ok(_) => probe_sent = Some(now),
                    Err(e) => return Ended::Lost(e.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With Redis unreachable, publishes are dropped and counted, never
    /// queued without bound and never blocking the caller (the hub).
    #[test]
    fn publishes_while_redis_is_unreachable_are_dropped_and_counted() {
        let metrics = Arc::new(Metrics::default());
        // Port 1 on loopback: nothing listens, so every connect is refused.
        let bus = Bus::start("redis://127.0.0.1:1", "test", Arc::new(|_| {}), Arc::clone(&metrics)).unwrap();
        let sent = PUBLISH_QUEUE as u64 + 100;
        for i in 0..sent {
            bus.send(BusCommand::Publish { topic: "natter.room.r".into(), payload: i.to_le_bytes().to_vec() });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metrics.bus_publish_errors.load(Ordering::Relaxed) < sent && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(metrics.bus_publish_errors.load(Ordering::Relaxed), sent, "each one dropped once, and counted");
        assert!(bus.pub_topics.take().is_empty(), "nothing left queued");
        bus.stop();
    }
}
