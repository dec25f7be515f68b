//! The sink shared between the trigger loop and whoever must act between its
//! commits: the consumer's rebalance callback, dedup's seeding of a newly
//! assigned partition, a bounded run asking whether it has caught up.
//!
//! The trigger loop may hold the lock over several triggers in a row (it
//! stages the next one before the one before commits: see
//! `crate::ingest::pipeline`), so the lock counts who is waiting for it: the
//! loop lets go as soon as anyone is, and a revocation waits for at most the
//! triggers already staged.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, MutexGuard, TryLockError};

use super::Sink;

/// The [`Sink`] behind a lock that knows whether someone waits for it.
pub type SharedSink = Shared<Sink>;

/// A value behind a lock that knows whether someone waits for it.
pub struct Shared<T> {
    value: Mutex<T>,
    waiting: AtomicUsize,
}

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Self {
            value: Mutex::new(value),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Waits for the value, counted among those waiting until it has it (or
    /// gives up: the count is the waiter's, dropped with it).
    pub async fn lock(&self) -> MutexGuard<'_, T> {
        let _waiting = Waiting::on(&self.waiting);
        self.value.lock().await
    }

    /// The value, if no one holds it.
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, TryLockError> {
        self.value.try_lock()
    }

    /// Whether someone is waiting for the value: its holder should let go
    /// at the next point where its state is whole.
    pub fn wanted(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }
}

/// One waiter, counted while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_is_counted_until_it_holds_the_value_or_gives_up() {
        let shared = std::sync::Arc::new(Shared::new(0));
        let held = shared.lock().await;
        assert!(!shared.wanted(), "the holder is not waiting");
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { *shared.lock().await += 1 }
        });
        while !shared.wanted() {
            tokio::task::yield_now().await;
        }
        drop(held);
        waiter.await.unwrap();
        assert!(!shared.wanted());
        assert_eq!(*shared.try_lock().unwrap(), 1);

        let held = shared.lock().await;
        let gives_up = tokio::time::timeout(std::time::Duration::from_millis(10), shared.lock());
        assert!(gives_up.await.is_err());
        assert!(!shared.wanted(), "a waiter that gave up is not counted");
        drop(held);
    }
}
