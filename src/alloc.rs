//! How the process's heap is set up, before any thread starts.
//!
//! glibc's malloc gives threads their own arenas, up to eight per core, and
//! serves a large block from an arena's heap (not a mapping of its own) once
//! a block of that size was freed: its mmap threshold rises to 32 MiB. Freed
//! heap memory goes back to the system only from the heap's top. weir's
//! triggers allocate and free a batch's worth of buffers on whichever of
//! tokio's and DataFusion's threads runs them, and merging a table's small
//! files a table's worth: with glibc's defaults, `weir run` at 12,000
//! events/s on two cores grew by about 110 MiB a minute with a flat dedup
//! index; with two arenas by about 60, and with large blocks mapped on their
//! own too by about 15 (benches/soak.py; benches/README.md, "Memory over a
//! long run"). Fewer arenas than cores costs throughput instead: on 16 cores
//! with two arenas, the poll thread waited on the arena locks that decoding
//! and writing threads held, and drained half of what one arena per core did
//! (benches/README.md, "Cores"). So: one arena per core the process may run on.

/// Blocks from this size up get a mapping of their own, unmapped when freed.
const MMAP_THRESHOLD: i32 = 1 << 20;

/// Caps glibc's malloc arenas at one per core (see the module doc) and fixes
/// its mmap threshold at 1 MiB, unless `MALLOC_ARENA_MAX` or
/// `MALLOC_MMAP_THRESHOLD_` set them (glibc has read those already).
/// Must run before any other thread is started: a thread takes its arena on
/// its first allocation. Elsewhere than glibc, does nothing.
pub fn set_up_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc parameters; called before any other
    // thread exists.
    unsafe {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, arenas());
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// One arena per core this process may run on (its affinity and cgroup
/// quota), two at least.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn arenas() -> i32 {
    i32::try_from(crate::task::cores().get())
        .unwrap_or(i32::MAX)
        .max(2)
}
