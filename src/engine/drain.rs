//! The drain signal of one proxy worker: when shutdown begins, every connection of the
//! worker learns it, idle keep-alive ones at once (they close), busy ones after their
//! response (they answer with `Connection: close`).
//!
//! A `tokio::sync::watch` receiver does the same, but each wait on it is a fresh
//! `Notified` (120 bytes in the connection's state, idle connections included) queued
//! and unqueued under a mutex on every keep-alive wait. Here a connection registers its
//! task's waker once, in a slot it keeps for its whole life (NGINX keeps its idle
//! connections on a list for the same reason), so an idle wait is one check of the slot
//! and a connection's state holds a slot number, not a waiter.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// One worker's drain signal and the wakers of the connections waiting for it.
#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Task wakers by slot; only [`Drain::begin`] reads them. Every lock is taken on the
    /// worker's own thread in practice (a worker's connections are its tasks), so it is
    /// never contended.
    waiters: Mutex<Slab<Waker>>,
}

/// A slot number no waiter has: not registered yet.
const UNREGISTERED: usize = usize::MAX;

impl Drain {
    pub fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    /// Starts the drain: every registered connection is woken, and every later look
    /// at the signal sees it.
    pub fn begin(&self) {
        let waiters = self.lock();
        // Set under the lock: a watch registering concurrently either sees the flag
        // or is in `waiters` before they are woken.
        self.draining.store(true, Ordering::Release);
        for (_, waker) in waiters.iter() {
            waker.wake_by_ref();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A view of the signal for one connection.
    pub fn watch(self: &Arc<Drain>) -> DrainWatch {
        DrainWatch {
            drain: self.clone(),
            slot: UNREGISTERED,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Waker>> {
        // Nothing panics while holding it; a poisoned slab is still consistent.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's view of its worker's [`Drain`]. Its waker stays registered from the
/// first wait until the watch is dropped: a connection waits again after every response,
/// always from the same task.
pub struct DrainWatch {
    drain: Arc<Drain>,
    slot: usize,
}

impl DrainWatch {
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Ready once the drain has begun; until then the task's waker is registered (once,
    /// replaced only if the watch is polled from another task).
    pub fn poll_draining(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.drain.is_draining() {
            return Poll::Ready(());
        }
        let mut waiters = self.drain.lock();
        // Checked again under the lock `begin` sets it under: no wake-up is missed.
        if self.drain.is_draining() {
            return Poll::Ready(());
        }
        match waiters.get_mut(self.slot) {
            Some(waker) if !waker.will_wake(cx.waker()) => *waker = cx.waker().clone(),
            Some(_) => {}
            None => self.slot = waiters.insert(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Completes once the drain has begun.
    pub fn draining(&mut self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| self.poll_draining(cx))
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if self.slot != UNREGISTERED {
            self.drain.lock().try_remove(self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    fn wakes(count: &Count) -> usize {
        count.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_waiting_watch_is_woken_by_begin_and_then_ready() {
        let drain = Drain::new();
        let mut watch = drain.watch();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        assert!(watch.poll_draining(&mut cx).is_pending());
        assert!(!watch.is_draining());
        drain.begin();
        assert_eq!(wakes(&count), 1);
        assert!(watch.is_draining());
        assert!(watch.poll_draining(&mut cx).is_ready());
    }

    #[test]
    fn waiting_again_keeps_one_slot() {
        let drain = Drain::new();
        let mut watch = drain.watch();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..5 {
            assert!(watch.poll_draining(&mut cx).is_pending());
        }
        assert_eq!(drain.lock().len(), 1);
        drain.begin();
        assert_eq!(wakes(&count), 1, "one registration, one wake-up");
    }

    #[test]
    fn a_watch_polled_from_another_task_wakes_that_task() {
        let drain = Drain::new();
        let mut watch = drain.watch();
        let (first, first_waker) = counter();
        let (second, second_waker) = counter();
        assert!(watch
            .poll_draining(&mut Context::from_waker(&first_waker))
            .is_pending());
        assert!(watch
            .poll_draining(&mut Context::from_waker(&second_waker))
            .is_pending());
        drain.begin();
        assert_eq!((wakes(&first), wakes(&second)), (0, 1));
    }

    #[test]
    fn a_dropped_watch_gives_its_slot_back_and_is_not_woken() {
        let drain = Drain::new();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let mut gone = drain.watch();
        assert!(gone.poll_draining(&mut cx).is_pending());
        let mut kept = drain.watch();
        assert!(kept.poll_draining(&mut cx).is_pending());
        drop(gone);
        assert_eq!(drain.lock().len(), 1);
        drain.begin();
        assert_eq!(wakes(&count), 1, "only the live watch is woken");
    }

    #[test]
    fn a_watch_made_or_polled_after_begin_is_ready_without_registering() {
        let drain = Drain::new();
        drain.begin();
        let mut watch = drain.watch();
        assert!(watch.is_draining());
        let (_, waker) = counter();
        assert!(watch
            .poll_draining(&mut Context::from_waker(&waker))
            .is_ready());
        assert_eq!(drain.lock().len(), 0);
    }

    #[test]
    fn the_watch_of_an_idle_connection_stays_small() {
        assert_eq!(std::mem::size_of::<DrainWatch>(), 16);
    }
}
