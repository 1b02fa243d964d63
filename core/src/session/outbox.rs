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
    /// Bytes ever written (or discarded): with `len`, where any pushed
    /// byte stands in the stream, for acknowledging once written.
    written: u64,
}

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
        self.len += bytes.len();
        self.queue.push_back(bytes);
        Ok(())
    }

    /// Queues `bytes` whatever the bound (a close frame after a reset).
    pub(crate) fn push_unbounded(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.queue.push_back(bytes);
        }
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

    /// Drops everything queued (it counts as gone, not as written: callers
    /// forget what they were waiting for).
    pub(crate) fn clear(&mut self) {
        self.written += self.len as u64;
        self.queue = VecDeque::new();
        self.len = 0;
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
            } else {
                front.advance(n);
                n = 0;
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            // Let a burst's allocation go: idle sessions hold no buffers.
            self.queue = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
