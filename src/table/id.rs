//! Which table of a job is meant, by what it holds rather than where it sits
//! in a list. A leaf: the job spec checks output names against
//! [`TableId::INGEST_NAMES`] without a cycle back to the catalog.

/// A job's table. The ingest tables come first in commit order, then one
/// table per output (`Output(i)` is the job's i-th output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableId {
    /// Accepted, on-time events. Committed first in every trigger: dedup, the
    /// watermark and reprocessing derive from it, and its txn versions settle
    /// which re-read events were late.
    Raw,
    /// Rejected messages with the reason.
    Dlq,
    /// Events behind the watermark.
    Late,
    /// Data-quality breaches (for a job with expectations).
    Quality,
    /// An output's rows (partials for windowed outputs).
    Output(usize),
}

impl TableId {
    /// The tables every job writes before its outputs, in commit order.
    pub const INGEST: [TableId; 3] = [TableId::Raw, TableId::Dlq, TableId::Late];
    /// Their names and `quality`'s: the one list of weir's own table names
    /// (outputs may not take these).
    pub const INGEST_NAMES: [&'static str; 4] = ["raw", "dlq", "late", "quality"];

    /// The name of an ingest table; `None` for outputs (named by the job).
    pub fn ingest_name(self) -> Option<&'static str> {
        match self {
            TableId::Raw => Some(Self::INGEST_NAMES[0]),
            TableId::Dlq => Some(Self::INGEST_NAMES[1]),
            TableId::Late => Some(Self::INGEST_NAMES[2]),
            TableId::Quality => Some(Self::INGEST_NAMES[3]),
            TableId::Output(_) => None,
        }
    }

    /// The ingest table called `name`.
    pub fn ingest(name: &str) -> Option<TableId> {
        Self::INGEST
            .into_iter()
            .chain([TableId::Quality])
            .find(|t| t.ingest_name() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_tables_are_found_by_name() {
        assert_eq!(TableId::ingest("late"), Some(TableId::Late));
        assert_eq!(TableId::ingest("quality"), Some(TableId::Quality));
        assert_eq!(TableId::ingest("clicks"), None);
    }
}
