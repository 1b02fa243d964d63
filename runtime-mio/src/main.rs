//! `natter-mio`: Natter on a hand-rolled mio event loop, one per I/O thread.
//!
//! Each thread registers its own clone of both listeners; the kernel hands a
//! new connection to whichever loop accepts it first. A loop turn: wait for
//! readiness or the shard's next deadline, read every readable socket until
//! `WouldBlock`, take mail from other threads, fire timers, hand the turn's
//! messages to the hub as one batch, then write each connection that has
//! bytes queued with one vectored write. What every runtime does with the
//! shard and its sockets is `natter_host::Conns`; this file is the waiting.

use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::TcpListener as StdListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use natter_core::Transport;
use natter_host::{Conns, Node, Read, Seat, Shutdown, Socket, Turn};

const HTTP: Token = Token(0);
const LINE: Token = Token(1);
const WAKE: Token = Token(2);
const FIRST_CONN: usize = 3;

fn main() -> ExitCode {
    Node::run_threads("natter-mio", run)
}

/// A connection. Dropping it closes the socket, which also takes it out of
/// the poll (it is never duplicated).
struct Conn(TcpStream);

impl Socket for Conn {
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.0).read(buf)
    }

    fn try_write(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.0).write_vectored(bufs)
    }

    fn shutdown_write(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Write);
    }
}

fn run(seat: Seat, http: StdListener, line: StdListener, shutdown: &Shutdown) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let w = Arc::clone(&waker);
    seat.set_waker(move || {
        let _ = w.wake();
    });
    shutdown.on_signal(move || {
        let _ = waker.wake();
    });
    let mut http = Some(TcpListener::from_std(http));
    let mut line = Some(TcpListener::from_std(line));
    if let Some(l) = http.as_mut() {
        poll.registry().register(l, HTTP, Interest::READABLE)?;
    }
    if let Some(l) = line.as_mut() {
        poll.registry().register(l, LINE, Interest::READABLE)?;
    }
    let mut conns = Conns::new(seat);
    // Connections that still had bytes to read when their budget ran out.
    let mut to_read = Vec::new();
    let mut events = Events::with_capacity(1024);
    loop {
        let timeout = if to_read.is_empty() {
            conns.deadline().map(|t| t.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
        } else {
            Some(Duration::ZERO)
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        for event in events.iter() {
            match event.token() {
                HTTP => accept(&poll, &mut conns, http.as_ref(), Transport::Http),
                LINE => accept(&poll, &mut conns, line.as_ref(), Transport::Line),
                WAKE => {}
                Token(t) => {
                    let key = t - FIRST_CONN;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        to_read.push(key);
                    }
                    if event.is_writable() {
                        conns.writable(key);
                    }
                }
            }
        }
        for key in std::mem::take(&mut to_read) {
            if conns.read(key) == Read::More {
                to_read.push(key);
            }
        }
        // A socket that would block gets a WRITABLE event when it drains.
        match conns.turn(shutdown, |_, _| {}) {
            Turn::Serving => {}
            Turn::Stopping => {
                // Stop accepting: deregister and drop both listeners.
                for mut l in [http.take(), line.take()].into_iter().flatten() {
                    let _ = poll.registry().deregister(&mut l);
                }
            }
            Turn::Done => return Ok(()),
        }
    }
}

fn accept(poll: &Poll, conns: &mut Conns<Conn>, listener: Option<&TcpListener>, transport: Transport) {
    let Some(listener) = listener else { return };
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nodelay(true);
                conns.open(transport, peer.ip(), |key| {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    poll.registry().register(&mut stream, Token(key + FIRST_CONN), interest).ok()?;
                    Some(Conn(stream))
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of file descriptors, mostly: try again on the next event.
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        }
    }
}
