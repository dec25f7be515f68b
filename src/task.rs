//! Tasks that end with whoever waits on them. A dropped tokio `JoinHandle`
//! detaches its task; when the owner unwinds from a panic, a detached task
//! that holds the pipeline keeps its Kafka consumer in the group, holding
//! partitions that no one reads.

use tokio::task::JoinHandle;

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
