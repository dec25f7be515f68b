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

/// A [`Sink`] behind a lock that knows whether someone waits for it.
pub struct SharedSink {
    sink: Mutex<Sink>,
    waiting: AtomicUsize,
}

impl SharedSink {
    pub fn new(sink: Sink) -> Self {
        Self {
            sink: Mutex::new(sink),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Waits for the sink, counted among those waiting until it has it (or
    /// gives up: the count is the waiter's, dropped with it).
    pub async fn lock(&self) -> MutexGuard<'_, Sink> {
        let _waiting = Waiting::on(&self.waiting);
        self.sink.lock().await
    }

    /// The sink, if no one holds it.
    pub fn try_lock(&self) -> Result<MutexGuard<'_, Sink>, TryLockError> {
        self.sink.try_lock()
    }

    /// Whether someone is waiting for the sink: its holder should let go at
    /// the next point where its state is whole.
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
