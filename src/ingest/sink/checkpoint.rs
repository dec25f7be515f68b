//! Checkpoints made beside the ingest path.
//!
//! A checkpoint replays the whole log, which would stall the trigger; it only
//! speeds up reading the log, so it is made in a task of its own. Only the
//! newest one matters (a later checkpoint serves every reader an earlier one
//! would), so requests made while one is being written coalesce into one more
//! round, at the newest version asked for: a slow checkpoint never leaves a
//! backlog behind it, and a stop waits for at most the one being written and
//! that next round. One that fails leaves the log complete (and is made again
//! by `weir maintain`).

use std::sync::{Arc, Mutex};

use deltalake::kernel::Version;
use deltalake::logstore::LogStoreRef;
use prometheus::IntGauge;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};
use url::Url;

use crate::fault::Faults;
use crate::table::delta::write_checkpoint;

/// Which checkpoint comes next, shared by the trigger that asks and the
/// task that writes.
#[derive(Debug, Default)]
struct Rounds {
    /// The newest version asked for since the writer last took one.
    wanted: Option<Version>,
    /// Whether a writer task is running (it takes `wanted` until none is left).
    running: bool,
    /// The newest version asked for at all, and the newest written (the
    /// head when the table was opened, until this process writes one).
    asked: Version,
    written: Version,
}

impl Rounds {
    /// Records a request for `version`; `true` when no writer runs and one
    /// must be started.
    fn ask(&mut self, version: Version) -> bool {
        self.asked = self.asked.max(version);
        self.wanted = Some(self.wanted.map_or(version, |v| v.max(version)));
        !std::mem::replace(&mut self.running, true)
    }

    fn wrote(&mut self, version: Version) {
        self.written = self.written.max(version);
    }

    /// Versions asked for past the newest checkpoint written.
    fn lag(&self) -> i64 {
        self.asked.saturating_sub(self.written) as i64
    }

    /// The version the writer makes next; `None` ends the writer.
    fn next(&mut self) -> Option<Version> {
        let next = self.wanted.take();
        self.running = next.is_some();
        next
    }
}

/// One table's checkpoints.
pub(super) struct Checkpointer {
    table: String,
    url: Url,
    faults: Faults,
    rounds: Arc<Mutex<Rounds>>,
    writers: JoinSet<()>,
    /// Versions asked for past the newest checkpoint written: about the
    /// interval while checkpoints keep up, growing when they fall behind.
    lag: IntGauge,
}

impl Checkpointer {
    /// For a table whose log is at `head`.
    pub(super) fn new(
        table: &str,
        url: &Url,
        faults: Faults,
        head: Version,
        lag: IntGauge,
    ) -> Self {
        let rounds = Rounds {
            asked: head,
            written: head,
            ..Rounds::default()
        };
        Self {
            table: table.to_owned(),
            url: url.clone(),
            faults,
            rounds: Arc::new(Mutex::new(rounds)),
            writers: JoinSet::new(),
            lag,
        }
    }

    /// Asks for a checkpoint at `version` of the log in `log_store`.
    pub(super) fn request(&mut self, log_store: LogStoreRef, version: Version) {
        let mut rounds = self.rounds.lock().unwrap();
        let start = rounds.ask(version);
        self.lag.set(rounds.lag());
        drop(rounds);
        if !start {
            return;
        }
        while self.writers.try_join_next().is_some() {}
        let (table, url, faults) = (self.table.clone(), self.url.clone(), self.faults.clone());
        let (rounds, lag) = (self.rounds.clone(), self.lag.clone());
        self.writers.spawn(async move {
            // One table at a time: a job's tables reach the interval in the
            // same trigger, and six at once took both cores from it.
            static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);
            loop {
                let _turn = ONE_AT_A_TIME.acquire().await;
                let Some(version) = rounds.lock().unwrap().next() else {
                    return;
                };
                let made = match faults.check(&format!("sink.checkpoint.{table}")) {
                    Ok(()) => write_checkpoint(&log_store, version).await,
                    Err(e) => Err(deltalake::DeltaTableError::Generic(e.to_string())),
                };
                match made {
                    Ok(()) => {
                        let mut rounds = rounds.lock().unwrap();
                        rounds.wrote(version);
                        lag.set(rounds.lag());
                        debug!(table, version, "checkpoint written");
                    }
                    Err(error) => warn!(table, %url, version, %error, "checkpoint failed"),
                }
            }
        });
    }

    /// Waits for the checkpoint being written and the round after it. A stop
    /// calls it: a runtime shut down under one abandons it half-made, and
    /// delta-kernel's executor panics on the way out.
    pub(super) async fn settle(&mut self) {
        while self.writers.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_while_a_checkpoint_is_written_coalesce_into_the_newest() {
        let mut rounds = Rounds::default();
        assert!(rounds.ask(99), "the first request starts a writer");
        assert_eq!(rounds.next(), Some(99));
        assert!(!rounds.ask(199), "the writer is still running");
        assert!(!rounds.ask(399));
        assert!(!rounds.ask(299));
        assert_eq!(rounds.lag(), 399, "nothing written yet");
        rounds.wrote(99);
        assert_eq!(rounds.lag(), 300, "three intervals behind");
        assert_eq!(rounds.next(), Some(399), "one more round, at the newest");
        rounds.wrote(399);
        assert_eq!(rounds.lag(), 0);
        assert_eq!(rounds.next(), None, "nothing left: the writer ends");
        assert!(rounds.ask(499), "a later request starts a writer again");
    }
}
