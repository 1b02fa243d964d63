//! Hand-offs between threads: a batch queue the consumer takes whole once
//! per loop turn, which wakes its consumer only when it goes from empty to
//! non-empty, so a burst of messages costs one wake-up. A condition variable
//! is signalled only when a thread waits on it: signalling costs a futex call
//! even with nobody waiting, and an I/O thread (woken through its event
//! loop) or a producer that never fills the queue would pay it on every
//! hand-off.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

type Wake = Box<dyn Fn() + Send + Sync>;

/// A batch queue between threads. See the module docs.
pub struct Mailbox<T> {
    queue: Mutex<Queue<T>>,
    /// Signalled when items arrive (for consumers that block in `wait_take`).
    arrived: Condvar,
    /// Signalled when the consumer took everything (for bounded producers).
    drained: Condvar,
    /// The consumer's event-loop waker, when it has one.
    waker: OnceLock<Wake>,
}

/// The items, and who waits for them to change.
struct Queue<T> {
    items: Vec<T>,
    /// Consumers blocked in `wait_take`.
    consumers_waiting: usize,
    /// Producers blocked in a bounded push.
    producers_waiting: usize,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            queue: Mutex::new(Queue { items: Vec::new(), consumers_waiting: 0, producers_waiting: 0 }),
            arrived: Condvar::new(),
            drained: Condvar::new(),
            waker: OnceLock::new(),
        }
    }
}

impl<T> Mailbox<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A panic while holding this lock cannot leave the queue half-changed.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how to wake the consumer's event loop (once).
    pub fn set_waker(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.waker.set(Box::new(wake));
    }

    /// Adds an item, never blocking.
    pub fn push(&self, item: T) {
        self.push_within(item, usize::MAX);
    }

    /// Adds an item, first waiting while `bound` items are queued: the
    /// producer slows down to the consumer's pace.
    pub fn push_bounded(&self, item: T, bound: usize) {
        self.push_within(item, bound);
    }

    /// Adds an item unless `bound` items are queued already; never blocks.
    /// Returns whether it was added.
    pub fn push_unless_full(&self, item: T, bound: usize) -> bool {
        let queue = self.lock();
        if queue.items.len() >= bound {
            return false;
        }
        self.push_locked(queue, item);
        true
    }

    fn push_within(&self, item: T, bound: usize) {
        let mut queue = self.lock();
        while queue.items.len() >= bound {
            queue.producers_waiting += 1;
            queue = self.drained.wait(queue).unwrap_or_else(|e| e.into_inner());
            queue.producers_waiting -= 1;
        }
        self.push_locked(queue, item);
    }

    /// Adds `item` under the lock held, then, outside it, wakes the
    /// consumer if the queue was empty.
    fn push_locked(&self, mut queue: MutexGuard<'_, Queue<T>>, item: T) {
        let was_empty = queue.items.is_empty();
        queue.items.push(item);
        let blocked = queue.consumers_waiting > 0;
        drop(queue);
        if was_empty {
            if blocked {
                self.arrived.notify_one();
            }
            if let Some(wake) = self.waker.get() {
                wake();
            }
        }
    }

    /// Takes everything queued.
    pub fn take(&self) -> Vec<T> {
        let mut queue = self.lock();
        let items = std::mem::take(&mut queue.items);
        let blocked = queue.producers_waiting > 0;
        drop(queue);
        if blocked && !items.is_empty() {
            self.drained.notify_all();
        }
        items
    }

    /// Takes everything queued, first waiting until something is or until
    /// `deadline` passes.
    pub fn wait_take(&self, deadline: Option<Instant>) -> Vec<T> {
        let mut queue = self.lock();
        while queue.items.is_empty() {
            let wait = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
                    Some(left) => Some(left),
                    None => break,
                },
            };
            queue.consumers_waiting += 1;
            queue = match wait {
                None => self.arrived.wait(queue).unwrap_or_else(|e| e.into_inner()),
                Some(left) => self.arrived.wait_timeout(queue, left).unwrap_or_else(|e| e.into_inner()).0,
            };
            queue.consumers_waiting -= 1;
        }
        let out = std::mem::take(&mut queue.items);
        let blocked = queue.producers_waiting > 0;
        drop(queue);
        if blocked {
            self.drained.notify_all();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn wakes_once_per_batch() {
        let m = Mailbox::default();
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&wakes);
        m.set_waker(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        m.push(1);
        m.push(2);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(m.take(), vec![1, 2]);
        m.push(3);
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_consumer_blocked_in_wait_take_is_woken_by_a_push() {
        let m: Arc<Mailbox<u32>> = Arc::default();
        let consumer = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.wait_take(None))
        };
        // Whether the consumer blocked yet or not, the push reaches it.
        while m.lock().consumers_waiting == 0 && !consumer.is_finished() {
            std::thread::yield_now();
        }
        m.push(7);
        assert_eq!(consumer.join().unwrap(), vec![7]);
        assert_eq!(m.lock().consumers_waiting, 0);
    }

    #[test]
    fn push_unless_full_refuses_at_the_bound_without_waiting() {
        let m = Mailbox::default();
        assert!(m.push_unless_full(1, 2));
        assert!(m.push_unless_full(2, 2));
        assert!(!m.push_unless_full(3, 2));
        assert_eq!(m.take(), vec![1, 2]);
        assert!(m.push_unless_full(4, 2));
    }

    #[test]
    fn wait_take_honours_the_deadline_and_bounded_push_waits() {
        let m: Arc<Mailbox<u32>> = Arc::default();
        assert!(m.wait_take(Some(Instant::now() + Duration::from_millis(10))).is_empty());
        m.push_bounded(1, 1);
        let producer = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.push_bounded(2, 1))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(m.take(), vec![1]);
        producer.join().unwrap();
        assert_eq!(m.wait_take(None), vec![2]);
    }
}
