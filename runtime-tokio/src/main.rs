//! `natter-tokio`: Natter on tokio's multi-threaded runtime.
//!
//! One runtime with `--threads` workers drives `--threads` seats, and any
//! worker may run any task. A seat's `Shard` (`Send`, not `Sync`) sits behind
//! a `std::sync::Mutex` that no task holds across an `.await`. Per seat, one
//! driver task; per connection, one reader task; one accept task serves both
//! listeners and deals connections to the seats in turn (mio: every thread
//! accepts on its own listener clones). The shard and socket logic is
//! `natter_host::Conns`, as in natter-mio. How this differs from natter-mio:
//! - Sleeping: instead of `Poll::poll` with the shard's deadline, the driver
//!   awaits a `Notify` (the mailbox waker, readers and the acceptor after
//!   they fed the shard, the signal) or `poll_timeout`, whichever is first.
//! - Reading: a reader awaits `readable()`, then locks its seat and
//!   `try_read`s into the seat's one 64 KiB buffer, so no bytes queue
//!   between tasks; the driver's turn then writes and hands the hub its batch.
//! - Writing: as in mio, the driver writes each hinted connection at the end
//!   of its turn with `try_write_vectored`; a socket that would block gets a
//!   small task awaiting `writable()` (mio's WRITABLE edge) that gives the
//!   connection back to the driver.

use std::io::{self, IoSlice};
use std::net::{IpAddr, Shutdown as Half};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use natter_core::{ConnKey, Transport};
use natter_host::{Conns, Node, Read, Seat, Shutdown, Socket, Turn, ACCEPT_PAUSE};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

fn main() -> ExitCode {
    let (node, seats) = match Node::start("natter-tokio") {
        Ok(started) => started,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(node.settings.threads)
        .thread_name("natter-io")
        .enable_io()
        .enable_time()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let listeners = {
        let _entered = runtime.enter();
        let tokio = |l: &std::net::TcpListener| l.try_clone().and_then(TcpListener::from_std);
        tokio(&node.http).and_then(|http| Ok((http, tokio(&node.line)?)))
    };
    let Ok((http, line)) = listeners else {
        eprintln!("natter: error: cannot hand the listeners to tokio");
        return ExitCode::from(2);
    };
    runtime.block_on(serve(seats, http, line, Arc::clone(&node.shutdown)));
    // Dropping the runtime drops the last tasks, and with them the seats,
    // which lets storage finish.
    drop(runtime);
    node.finish()
}

async fn serve(seats: Vec<Seat>, http: TcpListener, line: TcpListener, shutdown: Arc<Shutdown>) {
    let cells: Vec<Arc<Cell>> = seats.into_iter().map(Cell::new).collect();
    let stop_accepting = Arc::new(Notify::new());
    let wakes: Vec<Arc<Notify>> = cells.iter().map(|c| Arc::clone(&c.wake)).collect();
    let stop = Arc::clone(&stop_accepting);
    shutdown.on_signal(move || {
        stop.notify_one();
        wakes.iter().for_each(|w| w.notify_one());
    });
    let drivers: Vec<_> = cells.iter().map(|c| tokio::spawn(drive(Arc::clone(c), Arc::clone(&shutdown)))).collect();
    let acceptor = tokio::spawn(accept(cells, http, line, stop_accepting));
    for driver in drivers {
        let _ = driver.await;
    }
    acceptor.abort();
}

/// One seat and its connections, shared by the seat's tasks.
struct Cell {
    conns: Mutex<Conns<Conn>>,
    /// Wakes the driver.
    wake: Arc<Notify>,
}

impl Cell {
    fn new(seat: Seat) -> Arc<Cell> {
        let wake = Arc::new(Notify::new());
        let w = Arc::clone(&wake);
        seat.set_waker(move || w.notify_one());
        Arc::new(Cell { conns: Mutex::new(Conns::new(seat)), wake })
    }

    fn lock(&self) -> MutexGuard<'_, Conns<Conn>> {
        // A task that panicked holding the lock left the shard between two
        // calls, which the shard survives; keep serving the others.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's socket and the tasks that wait on it; dropping it ends
/// them, and the last `Arc` closes the socket.
struct Conn {
    stream: Arc<TcpStream>,
    reader: AbortHandle,
    /// Waiting for the socket to take more bytes.
    writer: Option<AbortHandle>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(writer) = &self.writer {
            writer.abort();
        }
    }
}

impl Socket for Conn {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.try_read(buf)
    }

    fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.try_write_vectored(bufs)
    }

    fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&*self.stream).shutdown(Half::Write);
    }
}

async fn accept(cells: Vec<Arc<Cell>>, http: TcpListener, line: TcpListener, stop: Arc<Notify>) {
    for next in 0.. {
        let (accepted, transport) = tokio::select! {
            accepted = http.accept() => (accepted, Transport::Http),
            accepted = line.accept() => (accepted, Transport::Line),
            () = stop.notified() => return,
        };
        match accepted {
            Ok((stream, peer)) => open(&cells[next % cells.len()], stream, peer.ip(), transport),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

fn open(cell: &Arc<Cell>, stream: TcpStream, peer: IpAddr, transport: Transport) {
    let _ = stream.set_nodelay(true);
    let stream = Arc::new(stream);
    cell.lock().open(transport, peer, |key| {
        // Spawned under the lock: the reader finds its entry in place.
        let reader = tokio::spawn(read(Arc::clone(cell), key, Arc::clone(&stream))).abort_handle();
        Some(Conn { stream, reader, writer: None })
    });
    cell.wake.notify_one();
}

/// Whether `key` is still the connection of `stream`: a task may wait for
/// the lock while its connection is closed and its key given to another.
fn owns(conns: &Conns<Conn>, key: ConnKey, stream: &Arc<TcpStream>) -> bool {
    conns.get(key).is_some_and(|c| Arc::ptr_eq(&c.stream, stream))
}

async fn read(cell: Arc<Cell>, key: ConnKey, stream: Arc<TcpStream>) {
    loop {
        let ready = stream.readable().await;
        let read = {
            let mut conns = cell.lock();
            if !owns(&conns, key, &stream) {
                return;
            }
            if ready.is_ok() {
                conns.read(key)
            } else {
                conns.closed(key)
            }
        };
        cell.wake.notify_one();
        match read {
            Read::Drained => {}
            Read::More => tokio::task::yield_now().await,
            Read::Gone => return,
        }
    }
}

async fn await_writable(cell: Arc<Cell>, key: ConnKey, stream: Arc<TcpStream>) {
    let ready = stream.writable().await;
    let mut conns = cell.lock();
    if !owns(&conns, key, &stream) {
        return;
    }
    if let Some(conn) = conns.get_mut(key) {
        conn.writer = None;
    }
    match ready {
        Ok(()) => conns.writable(key),
        Err(_) => {
            conns.closed(key);
        }
    }
    drop(conns);
    cell.wake.notify_one();
}

async fn drive(cell: Arc<Cell>, shutdown: Arc<Shutdown>) {
    loop {
        let deadline = cell.lock().deadline();
        match deadline {
            Some(t) => {
                let _ = tokio::time::timeout_at(t.into(), cell.wake.notified()).await;
            }
            None => cell.wake.notified().await,
        }
        let blocked = |key, conn: &mut Conn| {
            if conn.writer.is_none() {
                let waiter = await_writable(Arc::clone(&cell), key, Arc::clone(&conn.stream));
                conn.writer = Some(tokio::spawn(waiter).abort_handle());
            }
        };
        if cell.lock().turn(&shutdown, blocked) == Turn::Done {
            return;
        }
    }
}
