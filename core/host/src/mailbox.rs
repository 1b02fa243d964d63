//! Hand-offs between threads: a batch queue the consumer takes whole once
//! per loop turn, which wakes its consumer only when it goes from empty to
//! non-empty, so a burst of messages costs one wake-up.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

type Wake = Box<dyn Fn() + Send + Sync>;

/// A batch queue between threads. See the module docs.
pub struct Mailbox<T> {
    items: Mutex<Vec<T>>,
    /// Signalled when items arrive (for consumers that block in `wait_take`).
    arrived: Condvar,
    /// Signalled when the consumer took everything (for bounded producers).
    drained: Condvar,
    /// The consumer's event-loop waker, when it has one.
    waker: OnceLock<Wake>,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            items: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            drained: Condvar::new(),
            waker: OnceLock::new(),
        }
    }
}

impl<T> Mailbox<T> {
    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        // A panic while holding this lock cannot leave the Vec half-changed.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
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
        let items = self.lock();
        if items.len() >= bound {
            return false;
        }
        self.push_locked(items, item);
        true
    }

    fn push_within(&self, item: T, bound: usize) {
        let mut items = self.lock();
        while items.len() >= bound {
            items = self.drained.wait(items).unwrap_or_else(|e| e.into_inner());
        }
        self.push_locked(items, item);
    }

    /// Adds `item` under the lock held, then, outside it, wakes the
    /// consumer if the queue was empty.
    fn push_locked(&self, mut items: MutexGuard<'_, Vec<T>>, item: T) {
        let was_empty = items.is_empty();
        items.push(item);
        drop(items);
        if was_empty {
            self.arrived.notify_one();
            if let Some(wake) = self.waker.get() {
                wake();
            }
        }
    }

    /// Takes everything queued.
    pub fn take(&self) -> Vec<T> {
        let items = std::mem::take(&mut *self.lock());
        if !items.is_empty() {
            self.drained.notify_all();
        }
        items
    }

    /// Takes everything queued, first waiting until something is or until
    /// `deadline` passes.
    pub fn wait_take(&self, deadline: Option<Instant>) -> Vec<T> {
        let mut items = self.lock();
        while items.is_empty() {
            match deadline {
                None => items = self.arrived.wait(items).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if d <= now {
                        break;
                    }
                    items = self.arrived.wait_timeout(items, d - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
        }
        let out = std::mem::take(&mut *items);
        drop(items);
        self.drained.notify_all();
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
