//! `natter-smol`: Natter on smol's reactor, one driver future per I/O thread.
//!
//! Each of `--threads` OS threads runs its seat's driver future under
//! `smol::block_on`; the seat is the driver's own, so nothing is locked and
//! nothing of a seat runs on another thread. Like natter-mio, each thread accepts on its own clone of both
//! listeners, and the shard and socket logic is `natter_host::Conns`. How
//! this differs from natter-mio:
//! - Sleeping: the driver awaits a bounded(1) channel (the mailbox waker,
//!   socket wakers, the signal), a `Timer` at `poll_timeout`, or a
//!   listener's readiness, whichever is first, instead of `Poll::poll`.
//!   smol's one reactor serves every thread: whichever thread is idle polls
//!   it and wakes the others' tasks.
//! - Readiness: no task per connection. Each socket is polled
//!   (`poll_readable`, `poll_writable`) with a small waker that puts its key
//!   on the seat's `natter_host::ready::Ready` list and wakes the driver,
//!   which reads those connections into the thread's one 64 KiB buffer
//!   until `WouldBlock` and polls them again. An idle connection costs its
//!   socket, the reactor's `Source` and the waker; a task would add about
//!   300 bytes (the task, a slab of waiters, an `Rc`).
//! - Writing: the driver writes each hinted connection at the end of its
//!   turn, as in mio; a socket that would block is polled for writability
//!   with the same waker.

use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::{IpAddr, Shutdown as Half, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use natter_core::Transport;
use natter_host::ready::{poll_ready, Ready};
use natter_host::{Conns, Node, Seat, Shutdown, Socket, Turn, ACCEPT_PAUSE};
use smol::channel::Receiver;
use smol::{future, Async, Timer};

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
    // Socket wakers may fire on whichever thread polls smol's reactor.
    let ready = Ready::new(move || {
        let _ = wake.try_send(());
    });
    let listeners = [(Async::new(http)?, Transport::Http), (Async::new(line)?, Transport::Line)];
    let driver = Driver { conns: Conns::new(seat), ready, shutdown };
    smol::block_on(driver.run(woken, listeners));
    Ok(())
}

/// A connection's socket and the waker its readiness is polled with;
/// dropping it closes the socket and takes it out of smol's reactor.
struct Conn {
    stream: Async<TcpStream>,
    waker: Waker,
}

impl Conn {
    /// Asks to be woken once the socket takes bytes again; `true` when it
    /// does already.
    fn arm_write(&self) -> bool {
        poll_ready(&self.waker, |cx| self.stream.poll_writable(cx))
    }
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

    fn arm_read(&self) -> bool {
        poll_ready(&self.waker, |cx| self.stream.poll_readable(cx))
    }
}

/// A seat's loop: its connections, and the list their wakers fill.
struct Driver<'a> {
    conns: Conns<Conn>,
    ready: Arc<Ready>,
    shutdown: &'a Shutdown,
}

impl Driver<'_> {
    async fn run(mut self, woken: Receiver<()>, listeners: [(Async<TcpListener>, Transport); 2]) {
        let mut listeners = Some(listeners);
        let mut accept_paused: Option<Instant> = None;
        // Connections to read in the next turn without waiting.
        let mut to_read = Vec::new();
        loop {
            if to_read.is_empty() {
                self.sleep(&woken, listeners.as_ref(), accept_paused).await;
            } else {
                // Pending once, woken: `block_on` polls the reactor for the
                // other sockets' events before the next turn.
                future::yield_now().await;
            }
            let now = Instant::now();
            accept_paused = accept_paused.filter(|t| *t > now);
            for (listener, transport) in listeners.iter().flatten() {
                if accept_paused.is_none() && self.accept(listener, *transport).is_err() {
                    accept_paused = Some(now + ACCEPT_PAUSE);
                }
            }
            self.ready.take_into(&mut to_read);
            self.conns.read_woken(&mut to_read);
            let ready = &self.ready;
            let blocked = |key, conn: &mut Conn| {
                if conn.arm_write() {
                    ready.push(key);
                }
            };
            match self.conns.turn(self.shutdown, blocked) {
                Turn::Serving => {}
                Turn::Stopping => listeners = None,
                Turn::Done => return,
            }
        }
    }

    /// Waits for a wake-up (mail, a socket's waker, the signal), the seat's
    /// next deadline, or a connection to accept.
    async fn sleep(
        &self,
        woken: &Receiver<()>,
        listeners: Option<&[(Async<TcpListener>, Transport); 2]>,
        accept_paused: Option<Instant>,
    ) {
        let deadline = self.conns.deadline();
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
            match (listeners, accept_paused) {
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
    }

    /// Accepts until the listener has no more; an error other than
    /// `WouldBlock` comes back so that accepting pauses (the reactor would
    /// report the waiting connection again at once).
    fn accept(&mut self, listener: &Async<TcpListener>, transport: Transport) -> io::Result<()> {
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

    fn open(&mut self, stream: TcpStream, peer: IpAddr, transport: Transport) {
        let _ = stream.set_nodelay(true);
        let Ok(stream) = Async::new(stream) else {
            return;
        };
        let ready = &self.ready;
        self.conns.open(transport, peer, |key| {
            // Read at once: the client may have sent its request already.
            // The turn reads it, then arms the socket's waker.
            ready.push(key);
            Some(Conn { stream, waker: ready.waker(key) })
        });
    }
}
