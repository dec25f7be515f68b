//! Tasks that end with whoever waits on them, how many cores one process's
//! work may spread over, and a thread's CPU clock. A dropped tokio `JoinHandle`
//! detaches its task; when the owner unwinds from a panic, a detached task
//! that holds the pipeline keeps its Kafka consumer in the group, holding
//! partitions that no one reads.

use std::num::NonZeroUsize;
use std::time::Duration;

use tokio::task::JoinHandle;

/// The cores this process may run on (its CPU affinity and cgroup quota, as
/// `taskset` or a container sets them); one where the OS cannot say. What
/// the malloc arenas, a batch's decoding slices and a trigger's files are
/// sized by.
pub fn cores() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// CPU time the calling thread has used so far: what one thread costs per
/// event, where wall time would count its waits too (the poll thread is
/// the one whose CPU bounds a process on many cores).
pub fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec the call writes into; the clock id
    // is a constant every Linux and macOS kernel weir runs on supports.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut now) };
    if read != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or_default(),
        u32::try_from(now.tv_nsec).unwrap_or_default(),
    )
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// Spinning is counted however busy the machine is (the loop runs until
    /// the clock says so, within a generous wall-clock bound), sleeping not.
    #[test]
    fn thread_cpu_counts_work_and_not_sleep() {
        let start = super::thread_cpu();
        std::thread::sleep(Duration::from_millis(50));
        let slept = super::thread_cpu() - start;
        assert!(slept < Duration::from_millis(20), "{slept:?} while asleep");
        let spinning = Instant::now();
        let mut x = 0u64;
        let mut worked = Duration::ZERO;
        while worked < Duration::from_millis(30) && spinning.elapsed() < Duration::from_secs(30) {
            x = std::hint::black_box(x.wrapping_add(1));
            worked = super::thread_cpu() - start - slept;
        }
        assert!(
            worked >= Duration::from_millis(30),
            "{worked:?} counted in {:?} of spinning",
            spinning.elapsed()
        );
    }
}
