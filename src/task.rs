//! Tasks that end with whoever waits on them, and how many cores one
//! process's work may spread over. A dropped tokio `JoinHandle`
//! detaches its task; when the owner unwinds from a panic, a detached task
//! that holds the pipeline keeps its Kafka consumer in the group, holding
//! partitions that no one reads.

use std::num::NonZeroUsize;

use tokio::task::JoinHandle;

/// The cores this process may run on (its CPU affinity and cgroup quota, as
/// `taskset` or a container sets them); one where the OS cannot say. What
/// the malloc arenas, a batch's decoding slices and a trigger's files are
/// sized by.
pub fn cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// A spawned task that is aborted when this handle is dropped.
pub struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub fn spawn<F>(future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        Self(tokio::spawn(future))
    }

    /// Stops the task now; [`AbortOnDrop::join`] then reports it cancelled.
    pub fn abort(&self) {
        self.0.abort();
    }

    /// The task's end, as `JoinHandle` gives it.
    pub async fn join(&mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
