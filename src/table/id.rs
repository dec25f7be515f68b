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
    /// An output's rows (partials for windowed outputs).
    Output(usize),
}

impl TableId {
    /// The tables every job writes before its outputs, in commit order.
    pub const INGEST: [TableId; 3] = [TableId::Raw, TableId::Dlq, TableId::Late];
    /// Their names: the one list of them (outputs may not take these).
    pub const INGEST_NAMES: [&'static str; 3] = ["raw", "dlq", "late"];

    /// The name of an ingest table; `None` for outputs (named by the job).
    pub fn ingest_name(self) -> Option<&'static str> {
        match self {
            TableId::Raw => Some(Self::INGEST_NAMES[0]),
            TableId::Dlq => Some(Self::INGEST_NAMES[1]),
            TableId::Late => Some(Self::INGEST_NAMES[2]),
            TableId::Output(_) => None,
        }
    }

    /// The ingest table called `name`.
    pub fn ingest(name: &str) -> Option<TableId> {
        Self::INGEST
            .into_iter()
            .find(|t| t.ingest_name() == Some(name))
    }

    /// Where the table comes in a trigger's commits (and in the catalog).
    pub fn position(self) -> usize {
        match self {
            TableId::Raw => 0,
            TableId::Dlq => 1,
            TableId::Late => 2,
            TableId::Output(i) => Self::INGEST.len() + i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_commit_order() {
        let ids = [
            TableId::Raw,
            TableId::Dlq,
            TableId::Late,
            TableId::Output(0),
            TableId::Output(1),
        ];
        let positions: Vec<usize> = ids.iter().map(|t| t.position()).collect();
        assert_eq!(positions, [0, 1, 2, 3, 4]);
        assert_eq!(TableId::ingest("late"), Some(TableId::Late));
        assert_eq!(TableId::ingest("clicks"), None);
    }
}
