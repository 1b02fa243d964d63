//! `natter-tokio`: Natter on tokio's multi-threaded runtime.
//!
//! One runtime with `--threads` workers drives `--threads` seats, and any
//! worker may run any task. A seat's `Shard` (`Send`, not `Sync`) sits behind
//! a `std::sync::Mutex` that no task holds across an `.await`. Per seat, one
//! driver task; one accept task serves both listeners and deals connections
//! to the seats in turn (mio: every thread accepts on its own listener
//! clones). The shard and socket logic is `natter_host::Conns`, as in
//! natter-mio. How this differs from natter-mio:
//! - Sleeping: instead of `Poll::poll` with the shard's deadline, the driver
//!   awaits a `Notify` (the mailbox waker, socket wakers, the acceptor, the
//!   signal) or `poll_timeout`, whichever is first.
//! - Readiness: no task per connection. Each socket is polled
//!   (`poll_read_ready`, `poll_write_ready`) with a small waker that puts its
//!   key on the seat's `natter_host::ready::Ready` list and notifies the
//!   driver, which reads those connections into the seat's one 64 KiB buffer
//!   until `WouldBlock` and polls them again (mio's edge-triggered
//!   registration). An idle connection costs its socket, tokio's
//!   registration and the waker; a task would add 384 bytes.
//! - Writing: as in mio, the driver writes each hinted connection at the end
//!   of its turn with `try_write_vectored`; a socket that would block is
//!   polled for writability with the same waker.

use std::io::{self, IoSlice};
use std::net::{IpAddr, Shutdown as Half};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};

use std::task::Waker;

use natter_core::Transport;
use natter_host::ready::{poll_ready, Ready};
use natter_host::{Conns, Node, Seat, Shutdown, Socket, Turn, ACCEPT_PAUSE};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

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
    /// Connections whose sockets' wakers fired.
    ready: Arc<Ready>,
}

impl Cell {
    fn new(seat: Seat) -> Arc<Cell> {
        let wake = Arc::new(Notify::new());
        let w = Arc::clone(&wake);
        seat.set_waker(move || w.notify_one());
        let w = Arc::clone(&wake);
        let ready = Ready::new(move || w.notify_one());
        Arc::new(Cell { conns: Mutex::new(Conns::new(seat)), wake, ready })
    }

    fn lock(&self) -> MutexGuard<'_, Conns<Conn>> {
        // A task that panicked holding the lock left the shard between two
        // calls, which the shard survives; keep serving the others.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection's socket and the waker its readiness is polled with;
/// dropping it closes the socket and drops the waker from tokio's
/// registration.
struct Conn {
    stream: TcpStream,
    waker: Waker,
}

impl Conn {
    /// Asks to be woken once the socket takes bytes again; `true` when it
    /// does already.
    fn arm_write(&self) -> bool {
        poll_ready(&self.waker, |cx| self.stream.poll_write_ready(cx))
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
        let _ = socket2::SockRef::from(&self.stream).shutdown(Half::Write);
    }

    fn arm_read(&self) -> bool {
        poll_ready(&self.waker, |cx| self.stream.poll_read_ready(cx))
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
    cell.lock().open(transport, peer, |key| {
        // Read at once: the client may have sent its request already. The
        // driver reads it, then arms the socket's waker.
        cell.ready.push(key);
        Some(Conn { stream, waker: cell.ready.waker(key) })
    });
    cell.wake.notify_one();
}

async fn drive(cell: Arc<Cell>, shutdown: Arc<Shutdown>) {
    // Connections to read in the next turn without waiting.
    let mut to_read = Vec::new();
    loop {
        if to_read.is_empty() {
            let deadline = cell.lock().deadline();
            match deadline {
                Some(t) => {
                    let _ = tokio::time::timeout_at(t.into(), cell.wake.notified()).await;
                }
                None => cell.wake.notified().await,
            }
        } else {
            // Let the runtime's other tasks run between two budgets.
            tokio::task::yield_now().await;
        }
        let mut conns = cell.lock();
        cell.ready.take_into(&mut to_read);
        conns.read_woken(&mut to_read);
        let blocked = |key, conn: &mut Conn| {
            if conn.arm_write() {
                cell.ready.push(key);
            }
        };
        if conns.turn(&shutdown, blocked) == Turn::Done {
            return;
        }
    }
}
