//! Readiness by `Waker`, for runtimes whose reactor wakes one (tokio, smol):
//! each connection's socket is polled with a small waker that records its
//! key in the seat's [`Ready`] list and wakes the seat's loop, which then
//! reads it ([`crate::Conns::read_woken`]). mio's `Poll` hands out keys
//! itself and needs none of this.
//!
//! Why not a task per connection awaiting `readable()`: a task is the
//! future plus the executor's header (tokio aligns its cells to 128 bytes:
//! 384 bytes each here; smol's was 192, plus a slab of waiters per socket),
//! for every idle session. A waker is a key and a pointer.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use natter_core::ConnKey;

/// Keys of connections whose sockets became ready since the seat's loop
/// last took them, and how to wake that loop.
pub struct Ready {
    keys: Mutex<Vec<ConnKey>>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Ready {
    /// An empty list that calls `wake` whenever a key is added.
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Arc<Ready> {
        Arc::new(Ready { keys: Mutex::new(Vec::new()), wake: Box::new(wake) })
    }

    /// The waker for connection `key`'s socket.
    pub fn waker(self: &Arc<Self>, key: ConnKey) -> Waker {
        Waker::from(Arc::new(KeyWaker { ready: Arc::clone(self), key }))
    }

    /// Adds `key` and wakes the loop: a socket is ready now.
    pub fn push(&self, key: ConnKey) {
        self.lock().push(key);
        (self.wake)();
    }

    /// Moves the keys added since the last call onto `into`.
    pub fn take_into(&self, into: &mut Vec<ConnKey>) {
        into.append(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ConnKey>> {
        // A panic while pushing a key leaves a valid list.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct KeyWaker {
    ready: Arc<Ready>,
    key: ConnKey,
}

impl Wake for KeyWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.key);
    }
}

/// Polls a socket's readiness with its connection's waker: `true` when it
/// is ready now (or failed: the next read or write says how), `false` when
/// the waker will be called once it is.
pub fn poll_ready(waker: &Waker, poll: impl FnOnce(&mut Context<'_>) -> Poll<std::io::Result<()>>) -> bool {
    poll(&mut Context::from_waker(waker)).is_ready()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    #[test]
    fn a_woken_socket_leaves_its_key_and_wakes_the_loop() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&wakes);
        let ready = Ready::new(move || {
            w.fetch_add(1, Relaxed);
        });
        let waker = ready.waker(7);
        waker.wake_by_ref();
        // What tokio's and smol's reactors do with the clones they keep.
        let kept = waker.clone();
        kept.wake();
        let mut keys = vec![3];
        ready.take_into(&mut keys);
        assert_eq!((keys, wakes.load(Relaxed)), (vec![3, 7, 7], 2));
        let mut keys = Vec::new();
        ready.take_into(&mut keys);
        assert!(keys.is_empty(), "taken once");
    }
}
