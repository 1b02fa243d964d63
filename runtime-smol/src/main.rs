//! `natter-smol`: Natter on smol, one `LocalExecutor` per I/O thread.
//!
//! Each of `--threads` OS threads runs its seat's driver future under
//! `smol::block_on(executor.run(..))`; the seat lives in an
//! `Rc<RefCell<..>>`, so nothing is locked and every task of a seat runs on
//! its thread. Like natter-mio, each thread accepts on its own clone of both
//! listeners, and the shard and socket logic is `natter_host::Conns`. How
//! this differs from natter-mio:
//! - Sleeping: the driver awaits a bounded(1) channel (the mailbox waker,
//!   readers, the signal), a `Timer` at `poll_timeout`, or a listener's
//!   readiness, whichever is first, instead of `Poll::poll`. smol's one
//!   reactor serves every thread: whichever thread is idle polls it and
//!   wakes the others' tasks.
//! - Reading: one task per connection awaits `readable()`, then borrows the
//!   seat and reads into the thread's one 64 KiB buffer; the driver's turn
//!   then writes and hands the hub its batch.
//! - Writing: the driver writes each hinted connection at the end of its
//!   turn, as in mio; a socket that would block gets a task awaiting
//!   `writable()` (mio's WRITABLE edge) that gives it back to the driver.
//!   Dropping a connection's entry drops its tasks, which cancels them.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::{IpAddr, Shutdown as Half, TcpListener, TcpStream};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use natter_core::{ConnKey, Transport};
use natter_host::{Conns, Node, Read, Seat, Shutdown, Socket, Turn, ACCEPT_PAUSE};
use smol::channel::{Receiver, Sender};
use smol::{future, Async, LocalExecutor, Task, Timer};

type Executor = LocalExecutor<'static>;
type Cell = Rc<RefCell<Conns<Conn>>>;

fn main() -> ExitCode {
    Node::run_threads("natter-smol", run)
}

fn run(seat: Seat, http: TcpListener, line: TcpListener, shutdown: &Shutdown) -> io::Result<()> {
    let (wake, woken) = smol::channel::bounded(1);
    let w = wake.clone();
    seat.set_waker(move || {
        let _ = w.try_send(());
    });
    let w = wake.clone();
    shutdown.on_signal(move || {
        let _ = w.try_send(());
    });
    let listeners = [(Async::new(http)?, Transport::Http), (Async::new(line)?, Transport::Line)];
    let cell = Rc::new(RefCell::new(Conns::new(seat)));
    // Declared after `cell`, so dropped first: that drops the tasks left,
    // and then the seat goes.
    let ex = Executor::new();
    let driver = Driver { ex: &ex, cell: &cell, wake, shutdown };
    smol::block_on(ex.run(driver.run(woken, listeners)));
    Ok(())
}

/// A connection's socket and the tasks that wait on it; dropping it cancels
/// them, and the last `Rc` closes the socket.
struct Conn {
    stream: Rc<Async<TcpStream>>,
    _reader: Task<()>,
    /// Waiting for the socket to take more bytes.
    writer: Option<Task<()>>,
}

impl Socket for Conn {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.get_ref().read(buf)
    }

    fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.stream.get_ref().write_vectored(bufs)
    }

    fn shutdown_write(&self) {
        let _ = self.stream.get_ref().shutdown(Half::Write);
    }
}

/// What the seat's driver future, and the tasks it spawns, need.
struct Driver<'a> {
    ex: &'a Executor,
    cell: &'a Cell,
    /// Wakes the driver; readers and writers get a clone.
    wake: Sender<()>,
    shutdown: &'a Shutdown,
}

impl Driver<'_> {
    async fn run(self, woken: Receiver<()>, listeners: [(Async<TcpListener>, Transport); 2]) {
        let mut listeners = Some(listeners);
        let mut accept_paused: Option<Instant> = None;
        loop {
            let deadline = self.cell.borrow().deadline();
            let mail = async {
                let _ = woken.recv().await;
            };
            let timer = async {
                match deadline {
                    Some(t) => {
                        Timer::at(t).await;
                    }
                    None => future::pending().await,
                }
            };
            let incoming = async {
                match (&listeners, accept_paused) {
                    (Some(_), Some(t)) => {
                        Timer::at(t).await;
                    }
                    (Some([(http, _), (line, _)]), None) => {
                        let _ = future::or(http.readable(), line.readable()).await;
                    }
                    (None, _) => future::pending().await,
                }
            };
            future::or(mail, future::or(timer, incoming)).await;
            let now = Instant::now();
            accept_paused = accept_paused.filter(|t| *t > now);
            for (listener, transport) in listeners.iter().flatten() {
                if accept_paused.is_none() && self.accept(listener, *transport).is_err() {
                    accept_paused = Some(now + ACCEPT_PAUSE);
                }
            }
            let blocked = |key, conn: &mut Conn| {
                if conn.writer.is_none() {
                    let waiter = await_writable(Rc::clone(self.cell), self.wake.clone(), key, Rc::clone(&conn.stream));
                    conn.writer = Some(self.ex.spawn(waiter));
                }
            };
            match self.cell.borrow_mut().turn(self.shutdown, blocked) {
                Turn::Serving => {}
                Turn::Stopping => listeners = None,
                Turn::Done => return,
            }
        }
    }

    /// Accepts until the listener has no more; an error other than
    /// `WouldBlock` comes back so that accepting pauses (the reactor would
    /// report the waiting connection again at once).
    fn accept(&self, listener: &Async<TcpListener>, transport: Transport) -> io::Result<()> {
        loop {
            match listener.get_ref().accept() {
                Ok((stream, peer)) => self.open(stream, peer.ip(), transport),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return Err(e);
                }
            }
        }
    }

    fn open(&self, stream: TcpStream, peer: IpAddr, transport: Transport) {
        let _ = stream.set_nodelay(true);
        let Ok(stream) = Async::new(stream) else {
            return;
        };
        let stream = Rc::new(stream);
        self.cell.borrow_mut().open(transport, peer, |key| {
            let reader = read(Rc::clone(self.cell), self.wake.clone(), key, Rc::clone(&stream));
            Some(Conn { _reader: self.ex.spawn(reader), stream, writer: None })
        });
    }
}

/// A connection's reader. It never outlives its entry (dropping the entry
/// cancels it), so the key it holds is always its own.
async fn read(cell: Cell, wake: Sender<()>, key: ConnKey, stream: Rc<Async<TcpStream>>) {
    loop {
        let ready = stream.readable().await;
        let read = {
            let mut conns = cell.borrow_mut();
            if ready.is_ok() {
                conns.read(key)
            } else {
                conns.closed(key)
            }
        };
        let _ = wake.try_send(());
        if read == Read::Gone {
            return;
        }
    }
}

async fn await_writable(cell: Cell, wake: Sender<()>, key: ConnKey, stream: Rc<Async<TcpStream>>) {
    let ready = stream.writable().await;
    let mut conns = cell.borrow_mut();
    // Our own entry, as for the reader: let this task finish on its own.
    if let Some(writer) = conns.get_mut(key).and_then(|c| c.writer.take()) {
        writer.detach();
    }
    match ready {
        Ok(()) => conns.writable(key),
        Err(_) => {
            conns.closed(key);
        }
    }
    let _ = wake.try_send(());
}
