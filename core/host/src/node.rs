//! Starting and stopping a node, the same for every runtime: settings,
//! logging, storage, the hub (in the only shard, or on its own thread),
//! the listeners, the listening line, signals, and the orderly end.

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;

use natter_core::bus::BusEvent;
use natter_core::store::{StoreDone, StoreOp, StoreValue};
use natter_core::{Hub, Local, Metrics, Shard};

use crate::bus::{from_redis, Bus};
use crate::clock::now;
use crate::config::{self, ConfigExit, Settings};
use crate::conns::Seat;
use crate::hub_thread::{HubMail, ShardMail};
use crate::mailbox::Mailbox;
use crate::signals::Shutdown;
use crate::store::{spawn_store_with, Backend, PostgresBackend, SqliteBackend, StoreConfig, StoreHandle};

/// Storage requests that may wait; more are refused as `unavailable`.
const STORE_QUEUE: usize = 65_536;

/// The event loop of one I/O thread: its seat, its clones of the HTTP and
/// line listeners (non-blocking), and the shutdown flag.
pub type IoThread = fn(Seat, TcpListener, TcpListener, &Shutdown) -> std::io::Result<()>;

/// A running node's shared parts.
pub struct Node {
    /// The resolved settings.
    pub settings: Settings,
    /// Shared counters.
    pub metrics: Arc<Metrics>,
    /// The HTTP listener (non-blocking); runtimes clone it per thread.
    pub http: TcpListener,
    /// The line listener (non-blocking).
    pub line: TcpListener,
    /// Set by SIGTERM or SIGINT.
    pub shutdown: Arc<Shutdown>,
    store: Arc<StoreHandle>,
    hub: Option<(Arc<Mailbox<HubMail>>, JoinHandle<()>)>,
    bus: Option<Arc<Bus>>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("natter: error: {message}");
    ExitCode::from(2)
}

impl Node {
    /// Parses the command line and environment, opens storage, binds both
    /// listeners and prints the listening line. On a bad flag, address,
    /// directory or URL: one line on standard error and exit status 2,
    /// before anything is bound.
    pub fn start(binary: &'static str) -> Result<(Node, Vec<Seat>), ExitCode> {
        let mut settings = match config::parse(binary, std::env::args_os(), |k| std::env::var(k).ok()) {
            Ok(s) => s,
            Err(ConfigExit::Info(text)) => {
                print!("{text}");
                return Err(ExitCode::SUCCESS);
            }
            Err(ConfigExit::Bad(line)) => return Err(fail(line)),
        };
        crate::logging::init(settings.log.as_deref());
        return_big_blocks_to_the_system();
        let mut backend = open_backend(&settings)?;
        let snapshot = backend.execute(&[&StoreOp::LoadAll]).pop();
        let Some(Ok(StoreValue::Snapshot { users, rooms })) = snapshot else {
            return Err(fail(format_args!("cannot read the database in {}", store_name(&settings))));
        };
        let bind = |addr, what| listen(addr).map_err(|e| fail(format_args!("cannot listen on --{what} {addr}: {e}")));
        let http = bind(settings.http, "http")?;
        let line = bind(settings.line, "line")?;
        let metrics = Arc::new(Metrics::default());
        settings.core.guest_secret = crate::store::random_secret();
        settings.core.cluster = settings.redis.is_some();
        settings.core.node = crate::store::random_node_id();
        let config = Arc::new(settings.core.clone());
        let hub = Hub::new(settings.core.clone(), Arc::clone(&metrics), users, rooms, now());
        let threads = settings.threads;
        let inboxes: Vec<Arc<Mailbox<ShardMail>>> = (0..threads).map(|_| Arc::default()).collect();
        let (store, seats, hub_thread, bus);
        let store_config = StoreConfig {
            password_queue: settings.password_queue,
            commit_window: settings.commit_window,
            ..StoreConfig::new(STORE_QUEUE)
        };
        if threads == 1 {
            let inbox = Arc::clone(&inboxes[0]);
            let sink = Arc::new(move |done: Vec<StoreDone>| inbox.push(ShardMail::Store(done)));
            store = Arc::new(spawn_store_with(backend, sink, Arc::clone(&metrics), store_config).map_err(fail)?);
            let inbox = Arc::clone(&inboxes[0]);
            bus = start_bus(&settings, &metrics, move |e, m: &Metrics| hand_over(&inbox, e, ShardMail::Bus, m))?;
            let shard = Shard::new(0, Arc::clone(&config), Arc::clone(&metrics));
            let local = Local::new(shard, hub);
            seats = vec![Seat::local(local, Arc::clone(&inboxes[0]), Arc::clone(&store), bus.clone())];
            hub_thread = None;
        } else {
            let hub_inbox: Arc<Mailbox<HubMail>> = Arc::default();
            let sink_inbox = Arc::clone(&hub_inbox);
            let sink = Arc::new(move |done: Vec<StoreDone>| sink_inbox.push(HubMail::Store(done)));
            store = Arc::new(spawn_store_with(backend, sink, Arc::clone(&metrics), store_config).map_err(fail)?);
            let bus_inbox = Arc::clone(&hub_inbox);
            bus = start_bus(&settings, &metrics, move |e, m: &Metrics| hand_over(&bus_inbox, e, HubMail::Bus, m))?;
            let thread =
                crate::hub_thread::spawn(hub, Arc::clone(&hub_inbox), inboxes.clone(), Arc::clone(&store), bus.clone())
                    .map_err(fail)?;
            seats = inboxes
                .iter()
                .enumerate()
                .map(|(i, inbox)| {
                    let shard = Shard::new(i as u16, Arc::clone(&config), Arc::clone(&metrics));
                    Seat::remote(shard, Arc::clone(inbox), Arc::clone(&hub_inbox))
                })
                .collect();
            hub_thread = Some((hub_inbox, thread));
        }
        let shutdown = Arc::new(Shutdown::default());
        crate::signals::install(Arc::clone(&shutdown)).map_err(fail)?;
        let (http_addr, line_addr) = (http.local_addr().map_err(fail)?, line.local_addr().map_err(fail)?);
        tracing::info!(%http_addr, %line_addr, threads, store = %store_name(&settings), runtime = binary, "listening");
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "natter listening http={http_addr} line={line_addr}");
            let _ = out.flush();
        }
        let node = Node { settings, metrics, http, line, shutdown, store, hub: hub_thread, bus };
        Ok((node, seats))
    }

    /// The whole life of a node whose runtime runs one event loop per I/O
    /// thread: [`Node::start`], then `io_thread` on one OS thread per seat
    /// (`natter-io-N`), each with its own clones of both listeners, then
    /// [`Node::finish`] once every thread has returned. A thread whose loop
    /// fails logs why and shuts the node down.
    pub fn run_threads(binary: &'static str, io_thread: IoThread) -> ExitCode {
        let (node, seats) = match Node::start(binary) {
            Ok(started) => started,
            Err(code) => return code,
        };
        let mut threads = Vec::new();
        for (i, seat) in seats.into_iter().enumerate() {
            let (Ok(http), Ok(line)) = (node.http.try_clone(), node.line.try_clone()) else {
                return fail(format_args!("cannot share the listeners with I/O thread {i}"));
            };
            let shutdown = Arc::clone(&node.shutdown);
            let spawned = std::thread::Builder::new().name(format!("natter-io-{i}")).spawn(move || {
                if let Err(e) = io_thread(seat, http, line, &shutdown) {
                    tracing::error!(error = %e, "I/O thread failed");
                    shutdown.trigger();
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => return fail(format_args!("cannot start I/O thread {i}: {e}")),
            }
        }
        for t in threads {
            let _ = t.join();
        }
        node.finish()
    }

    /// After every shard has stopped: stops the hub, lets storage finish
    /// what it was given, and returns the exit status.
    pub fn finish(self) -> ExitCode {
        if let Some((inbox, thread)) = self.hub {
            inbox.push(HubMail::Stop);
            let _ = thread.join();
        }
        if let Some(bus) = self.bus.and_then(|b| Arc::try_unwrap(b).ok()) {
            bus.stop();
        }
        match Arc::try_unwrap(self.store) {
            Ok(store) => store.shutdown(),
            Err(_) => tracing::warn!("storage still referenced at exit; queued writes may be lost"),
        }
        tracing::info!("stopped");
        ExitCode::SUCCESS
    }
}

/// Mail queued for the hub past which a message from the bus is dropped
/// rather than queued: the hub is behind, and its sequencer reads the gap
/// from storage, the truth the bus only hints at. Without it what the other
/// nodes send would queue without bound.
const BUS_BACKLOG: usize = 65_536;

/// Hands `event` to the mailbox of the thread that runs the hub. A message
/// finding it full is dropped and counted; `Up` and `Down` never are.
fn hand_over<M>(inbox: &Mailbox<M>, event: BusEvent, wrap: fn(BusEvent) -> M, metrics: &Metrics) {
    match event {
        BusEvent::Message(_) => {
            if !inbox.push_unless_full(wrap(event), BUS_BACKLOG) {
                Metrics::add(&metrics.bus_held_overflow, 1);
            }
        }
        BusEvent::Up | BusEvent::Down => inbox.push(wrap(event)),
    }
}

/// With `--redis`, the link to the other nodes, whose events (decoded)
/// go to `deliver`: the hub's mailbox, or the one seat's with one thread.
fn start_bus(
    settings: &Settings,
    metrics: &Arc<Metrics>,
    deliver: impl Fn(BusEvent, &Metrics) + Send + Sync + 'static,
) -> Result<Option<Arc<Bus>>, ExitCode> {
    let Some(url) = &settings.redis else { return Ok(None) };
    let node = format!("{:016x}", settings.core.node);
    let decoding = Arc::clone(metrics);
    let sink = Arc::new(move |event| {
        if let Some(event) = from_redis(event, &decoding) {
            deliver(event, &decoding);
        }
    });
    let bus = Bus::start(url, &node, sink, Arc::clone(metrics)).map_err(fail)?;
    tracing::info!(node, "in a cluster over Redis");
    Ok(Some(Arc::new(bus)))
}

/// The store the settings name: PostgreSQL with `--database`, else the
/// embedded SQLite in `--data`.
fn open_backend(settings: &Settings) -> Result<Box<dyn Backend>, ExitCode> {
    match &settings.database {
        Some(url) => PostgresBackend::open_with(url, settings.postgres)
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| fail(format_args!("cannot use --database: {e}"))),
        None => SqliteBackend::open_with(&settings.data, settings.sqlite)
            .map(|b| Box::new(b) as Box<dyn Backend>)
            .map_err(|e| fail(format_args!("cannot use --data {}: {e}", settings.data.display()))),
    }
}

/// Where the data is, for messages (never a password).
fn store_name(settings: &Settings) -> String {
    match settings.database {
        Some(_) => "--database".to_string(),
        None => settings.data.display().to_string(),
    }
}

/// Connections the kernel queues for `accept`: std's 128 drops SYNs in a
/// connection storm (a reconnect wave after a restart), and each drop costs
/// its client a one-second retransmit. The kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Each argon2 hash takes 19 MiB. glibc raises its mmap threshold to the
/// size of a freed mmapped block, so from the second hash on those blocks
/// come from the heap and stay resident: a few dozen logins left the
/// process at 270 MiB. A fixed threshold keeps big blocks mmapped, and
/// returned to the system when freed.
#[allow(unsafe_code)] // The one unsafe call of the crate.
fn return_big_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; any value is valid.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
