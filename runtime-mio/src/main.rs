//! `natter-mio`: Natter on a hand-rolled mio event loop, one per I/O thread.
//!
//! Each thread registers its own clone of both listeners; the kernel hands a
//! new connection to whichever loop accepts it first. A loop turn: wait for
//! readiness or the shard's next deadline, read every readable socket until
//! `WouldBlock`, take mail from other threads, fire timers, hand the turn's
//! messages to the hub as one batch, then write each connection that has
//! bytes queued with one vectored write.

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpListener as StdListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use natter_core::{ConnKey, ShardAction, Transport};
use natter_host::{now, Node, Seat, Shutdown, SHUTDOWN_GRACE};

const HTTP: Token = Token(0);
const LINE: Token = Token(1);
const WAKE: Token = Token(2);
const FIRST_CONN: usize = 3;
/// Reads per connection per turn: a client that sends without pause cannot
/// keep its loop from serving the others.
const READS_PER_TURN: usize = 16;
/// Slices per vectored write.
const IOV: usize = 64;

fn main() -> ExitCode {
    let (node, seats) = match Node::start("natter-mio") {
        Ok(started) => started,
        Err(code) => return code,
    };
    let mut threads = Vec::new();
    for (i, seat) in seats.into_iter().enumerate() {
        let listeners = (node.http.try_clone(), node.line.try_clone());
        let (Ok(http), Ok(line)) = listeners else {
            eprintln!("natter: error: cannot share the listeners with I/O thread {i}");
            return ExitCode::from(2);
        };
        let shutdown = Arc::clone(&node.shutdown);
        let spawned = std::thread::Builder::new()
            .name(format!("natter-io-{i}"))
            .spawn(move || {
                if let Err(e) = run(seat, http, line, &shutdown) {
                    tracing::error!(error = %e, "I/O thread failed");
                    shutdown.trigger();
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!("natter: error: cannot start I/O thread {i}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    node.finish()
}

struct Loop {
    poll: Poll,
    conns: Vec<Option<TcpStream>>,
    /// Connections with bytes queued, written at the end of the turn.
    to_write: Vec<ConnKey>,
    /// Connections that still had bytes to read when their budget ran out.
    to_read: Vec<ConnKey>,
}

fn run(mut seat: Seat, http: StdListener, line: StdListener, shutdown: &Shutdown) -> io::Result<()> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let w = Arc::clone(&waker);
    seat.inbox.set_waker(move || {
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
    let mut lp = Loop { poll, conns: Vec::new(), to_write: Vec::new(), to_read: Vec::new() };
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut stopping: Option<Instant> = None;
    loop {
        let timeout = if lp.to_read.is_empty() {
            seat.shard.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
        } else {
            Some(Duration::ZERO)
        };
        let timeout = match stopping {
            Some(deadline) => Some(timeout.unwrap_or(SHUTDOWN_GRACE).min(deadline.saturating_duration_since(Instant::now()))),
            None => timeout,
        };
        if let Err(e) = lp.poll.poll(&mut events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let now = now();
        for event in events.iter() {
            match event.token() {
                HTTP => accept(&mut lp, &mut seat, http.as_ref(), Transport::Http),
                LINE => accept(&mut lp, &mut seat, line.as_ref(), Transport::Line),
                WAKE => {}
                Token(t) => {
                    let key = t - FIRST_CONN;
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        lp.to_read.push(key);
                    }
                    if event.is_writable() {
                        lp.to_write.push(key);
                    }
                }
            }
        }
        for key in std::mem::take(&mut lp.to_read) {
            read(&mut lp, &mut seat, key, &mut buf);
        }
        seat.take_mail(now);
        drain(&mut lp, &mut seat);
        seat.shard.handle_timeout(now);
        drain(&mut lp, &mut seat);
        if shutdown.is_set() && stopping.is_none() {
            stopping = Some(Instant::now() + SHUTDOWN_GRACE);
            // Stop accepting: deregister and drop both listeners.
            for l in [http.take(), line.take()].into_iter().flatten() {
                let mut l = l;
                let _ = lp.poll.registry().deregister(&mut l);
            }
            seat.shard.shutdown(now);
            drain(&mut lp, &mut seat);
        }
        flush(&mut lp, &mut seat);
        seat.flush_to_hub();
        if let Some(deadline) = stopping {
            if seat.shard.is_empty() || Instant::now() >= deadline {
                return Ok(());
            }
        }
    }
}

fn accept(lp: &mut Loop, seat: &mut Seat, listener: Option<&TcpListener>, transport: Transport) {
    let Some(listener) = listener else { return };
    loop {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let key = seat.shard.open(now(), transport, peer.ip());
                if lp.conns.len() <= key {
                    lp.conns.resize_with(key + 1, || None);
                }
                let interest = Interest::READABLE | Interest::WRITABLE;
                if lp.poll.registry().register(&mut stream, Token(key + FIRST_CONN), interest).is_err() {
                    seat.shard.closed(now(), key);
                    continue;
                }
                lp.conns[key] = Some(stream);
                drain(lp, seat);
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

fn read(lp: &mut Loop, seat: &mut Seat, key: ConnKey, buf: &mut [u8]) {
    for _ in 0..READS_PER_TURN {
        let Some(stream) = lp.conns.get_mut(key).and_then(Option::as_mut) else { return };
        match stream.read(buf) {
            Ok(0) => return drop_conn(lp, seat, key),
            Ok(n) => {
                seat.shard.received(now(), key, &buf[..n]);
                drain(lp, seat);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return drop_conn(lp, seat, key),
        }
    }
    lp.to_read.push(key);
}

/// The peer went away: tell the shard and let the socket go.
fn drop_conn(lp: &mut Loop, seat: &mut Seat, key: ConnKey) {
    if let Some(mut stream) = lp.conns.get_mut(key).and_then(Option::take) {
        let _ = lp.poll.registry().deregister(&mut stream);
    }
    seat.shard.closed(now(), key);
    drain(lp, seat);
}

fn drain(lp: &mut Loop, seat: &mut Seat) {
    while let Some(action) = seat.shard.poll_action() {
        match action {
            ShardAction::Write(key) => lp.to_write.push(key),
            ShardAction::Close(key) => {
                if let Some(mut stream) = lp.conns.get_mut(key).and_then(Option::take) {
                    let _ = lp.poll.registry().deregister(&mut stream);
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                }
            }
            ShardAction::Store(requests) => seat.submit(requests),
        }
    }
}

/// One vectored write per connection per turn, carrying every queued frame
/// (up to `IOV` of them); repeated only while the kernel takes it all.
fn flush(lp: &mut Loop, seat: &mut Seat) {
    let mut keys = std::mem::take(&mut lp.to_write);
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        loop {
            if !seat.shard.wants_write(key) {
                break;
            }
            let Some(stream) = lp.conns.get_mut(key).and_then(Option::as_mut) else { break };
            let mut slices = [IoSlice::new(&[]); IOV];
            let n = seat.shard.outbox(key, &mut slices);
            match stream.write_vectored(&slices[..n]) {
                Ok(0) => break,
                Ok(written) => {
                    seat.shard.written(now(), key, written);
                    drain(lp, seat);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    drop_conn(lp, seat, key);
                    break;
                }
            }
        }
    }
}
