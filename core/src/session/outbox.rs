//! Bytes waiting to be written to one connection, with a bound.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};

/// Queued frames or lines, shared `Bytes` (a fan-out pushes the same buffer
/// onto many outboxes). Holds no allocation while empty.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Bytes>,
    len: usize,
    /// Bytes ever written: with `len`, where any pushed byte stands in the
    /// stream, for acknowledging once written.
    written: u64,
    /// The front chunk is partly written: the rest must follow.
    front_started: bool,
    /// Chunks at the front that must go out whatever is dropped (see
    /// [`Outbox::seal`]).
    sealed: usize,
    /// Something other than a heartbeat was queued since the last one.
    busy: bool,
    /// Only heartbeats were queued since the one before the last: the
    /// session is idle, and the queue's allocation goes back whenever it
    /// empties (an idle session then holds none between heartbeats, while
    /// one with traffic keeps its slots and allocates nothing per frame).
    release_when_empty: bool,
}

/// Queue slots kept while empty: what a connection needs that gets a frame
/// at a time, so steady traffic allocates nothing; more goes back at once.
const KEEP_CAPACITY: usize = 4;

/// The push would take the queue past its bound; nothing was queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

impl Outbox {
    /// Queues `bytes` unless that takes the total past `max`.
    pub(crate) fn push(&mut self, bytes: Bytes, max: usize) -> Result<(), Full> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.len + bytes.len() > max {
            return Err(Full);
        }
        self.enqueue(bytes);
        Ok(())
    }

    /// Queues `bytes` whatever the bound (a close frame after a reset).
    pub(crate) fn push_unbounded(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.enqueue(bytes);
        }
    }

    /// [`Outbox::push`] for a heartbeat: it does not count as traffic, so a
    /// session that gets nothing else lets its queue go once it is written.
    pub(crate) fn push_heartbeat(&mut self, bytes: Bytes, max: usize) -> Result<(), Full> {
        let idle = !self.busy;
        self.push(bytes, max)?;
        self.busy = false;
        self.release_when_empty = idle;
        Ok(())
    }

    fn enqueue(&mut self, bytes: Bytes) {
        self.busy = true;
        self.release_when_empty = false;
        if self.queue.capacity() == 0 {
            // One slot, not the four a first push would take: most idle
            // sessions only ever hold one frame at a time (a heartbeat).
            self.queue.reserve_exact(1);
        }
        self.len += bytes.len();
        self.queue.push_back(bytes);
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The stream position just past the last byte queued.
    pub(crate) fn end(&self) -> u64 {
        self.written + self.len as u64
    }

    /// The stream position up to which everything was written.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes what is queued now survive [`Outbox::drop_unstarted`]: the
    /// HTTP bytes up to a `101`, without which the frames after it mean
    /// nothing to the client.
    pub(crate) fn seal(&mut self) {
        self.sealed = self.queue.len();
    }

    /// Drops every queued chunk nothing of which was written, except sealed
    /// ones, so that what follows still lands on a frame or line boundary:
    /// the rest of a partly written chunk stays. Callers forget what they
    /// were waiting for: the stream position of later pushes moves back.
    pub(crate) fn drop_unstarted(&mut self) {
        let keep = self.sealed.max(usize::from(self.front_started));
        self.queue.truncate(keep);
        self.len = self.queue.iter().map(Bytes::len).sum();
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }

    /// Fills `bufs` with the front of the queue; returns how many are set.
    pub(crate) fn slices<'a>(&'a self, bufs: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in bufs.iter_mut().zip(self.queue.iter()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    /// Removes `n` written bytes from the front.
    pub(crate) fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        self.written += n as u64;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { break };
            if front.len() <= n {
                n -= front.len();
                self.queue.pop_front();
                self.front_started = false;
                self.sealed = self.sealed.saturating_sub(1);
            } else {
                front.advance(n);
                self.front_started = true;
                n = 0;
            }
        }
        if self.queue.is_empty() && (self.release_when_empty || self.queue.capacity() > KEEP_CAPACITY) {
            // Let a burst's allocation go: a session holds no more than a
            // steady one needs (a burst of presence as a room fills would
            // otherwise stay with every member for good), and an idle one
            // nothing.
            self.queue = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_outbox_keeps_one_slot_and_lets_a_burst_go() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"ping"), 1 << 20).unwrap();
        o.advance(4);
        assert_eq!(o.queue.capacity(), 1, "a frame at a time needs one slot");
        for _ in 0..100 {
            o.push(Bytes::from_static(b"presence"), 1 << 20).unwrap();
        }
        o.advance(800);
        assert!(o.is_empty());
        assert_eq!(o.queue.capacity(), 0, "the burst's slots went back");
    }

    #[test]
    fn a_session_with_only_heartbeats_holds_no_queue_between_them() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"welcome"), 1 << 20).unwrap();
        o.push(Bytes::from_static(b"presence"), 1 << 20).unwrap();
        o.advance(15);
        // The first heartbeat after traffic keeps the slot: it may go on.
        o.push_heartbeat(Bytes::from_static(b"ping"), 1 << 20).unwrap();
        o.advance(4);
        assert!(o.queue.capacity() > 0, "traffic since the last heartbeat");
        // A heartbeat with nothing else since the one before: idle.
        o.push_heartbeat(Bytes::from_static(b"ping"), 1 << 20).unwrap();
        o.advance(4);
        assert_eq!(o.queue.capacity(), 0, "an idle session holds no queue");
        // Traffic again: the slot stays between frames.
        o.push(Bytes::from_static(b"message"), 1 << 20).unwrap();
        o.advance(7);
        assert_eq!(o.queue.capacity(), 1, "a frame at a time allocates once");
    }

    #[test]
    fn bound_is_exact() {
        let mut o = Outbox::default();
        assert_eq!(o.push(Bytes::from_static(b"abcd"), 8), Ok(()));
        assert_eq!(o.push(Bytes::from_static(b"efgh"), 8), Ok(()));
        assert_eq!(o.push(Bytes::from_static(b"i"), 8), Err(Full));
        assert_eq!(o.len(), 8);
    }

    #[test]
    fn partial_writes_advance_across_chunks() {
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"abc"), 100).unwrap();
        o.push(Bytes::from_static(b"defg"), 100).unwrap();
        o.advance(4);
        let mut bufs = [IoSlice::new(&[]); 4];
        let n = o.slices(&mut bufs);
        assert_eq!(n, 1);
        assert_eq!(&*bufs[0], b"efg");
        o.advance(3);
        assert!(o.is_empty());
    }

    fn contents(o: &Outbox) -> Vec<u8> {
        let mut bufs = [IoSlice::new(&[]); 8];
        let n = o.slices(&mut bufs);
        let out: Vec<u8> = bufs[..n].iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(out.len(), o.len());
        out
    }

    #[test]
    fn dropping_keeps_a_partly_written_chunk_and_what_is_sealed() {
        // Found by fuzz/fuzz_targets/core.rs: a slow-consumer close dropped
        // the unsent `101` (and could drop the rest of a partly written
        // frame), so the client read a close frame where it expected HTTP.
        let mut o = Outbox::default();
        o.push(Bytes::from_static(b"HTTP/1.1 101\r\n\r\n"), 100).unwrap();
        o.seal();
        o.push(Bytes::from_static(b"frame1"), 100).unwrap();
        o.drop_unstarted();
        assert_eq!(contents(&o), b"HTTP/1.1 101\r\n\r\n");
        o.advance(o.len());
        o.push(Bytes::from_static(b"frame2"), 100).unwrap();
        o.push(Bytes::from_static(b"frame3"), 100).unwrap();
        o.advance(2);
        o.drop_unstarted();
        assert_eq!(contents(&o), b"ame2", "the rest of frame2 stays; the seal is spent");
        o.advance(4);
        o.push(Bytes::from_static(b"frame4"), 100).unwrap();
        o.drop_unstarted();
        assert!(o.is_empty());
    }
}
