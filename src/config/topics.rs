//! The topics a job reads, and the name of one partition among them.
//!
//! Everything exactly-once hangs on a partition: its txn version, its
//! watermark clock, the origin of each deduplicated ID. A job reading
//! several topics has several partition 0s, so weir names a partition by
//! [`SourcePartition`] (the topic's place in the job's list and the Kafka
//! partition number), never by a bare number. The topic's *name* is what the
//! tables store (`_topic`, the txn appId), so [`Topics`] turns one into the
//! other and writes the SQL that picks a partition's rows out of a table.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Which of the job's topics: its place in `source.topics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TopicIndex(u16);

impl TopicIndex {
    /// A topic stored in the tables that the job no longer reads.
    pub const OTHER: Self = Self(u16::MAX);
}

/// One partition of one of the job's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourcePartition {
    pub topic: TopicIndex,
    pub partition: i32,
}

impl SourcePartition {
    /// Partition `partition` of the job's first (or only) topic.
    pub const fn first(partition: i32) -> Self {
        Self {
            topic: TopicIndex(0),
            partition,
        }
    }
}

/// Per partition, an offset: where a table or a batch stands.
pub type Offsets = BTreeMap<SourcePartition, i64>;

/// The job's topics, in the order the spec lists them; never empty. Cheap
/// to clone: every micro-batch carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics(Arc<[String]>);

/// The most topics one job may read: [`TopicIndex`] is 16 bits, and far
/// fewer is already an unusual job.
pub const MAX_TOPICS: usize = 1024;

/// The column `raw`, `late` and the DLQ keep a row's topic in.
const TOPIC_COLUMN: &str = "_topic";

impl Topics {
    /// `None` when `names` is empty or longer than [`MAX_TOPICS`].
    pub fn new(names: Vec<String>) -> Option<Self> {
        (!names.is_empty() && names.len() <= MAX_TOPICS).then(|| Self(names.into()))
    }

    pub fn single(name: &str) -> Self {
        Self(Arc::from([name.to_owned()]))
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// The first topic: the only one of most jobs, and the one rows stored
    /// without a `_topic` (before the job read several) count as.
    pub fn first(&self) -> &str {
        &self.0[0]
    }

    /// Whether rows must say their topic to say their partition.
    pub fn several(&self) -> bool {
        self.0.len() > 1
    }

    pub fn name(&self, topic: TopicIndex) -> &str {
        self.0.get(usize::from(topic.0)).map_or("", String::as_str)
    }

    pub fn index(&self, name: &str) -> Option<TopicIndex> {
        let i = self.0.iter().position(|t| t == name)?;
        Some(TopicIndex(i as u16))
    }

    /// Where a row stored under topic `name` came from: `None` (no
    /// `_topic`) is the first topic; a topic the job no longer reads is one
    /// apart from all of them ([`TopicIndex::OTHER`]), so an ID accepted
    /// from it still counts as seen elsewhere.
    pub fn of_row(&self, name: Option<&str>) -> TopicIndex {
        match name {
            None => TopicIndex(0),
            Some(name) => self.index(name).unwrap_or(TopicIndex::OTHER),
        }
    }

    /// Partition `partition` of topic `name`, if the job reads that topic.
    pub fn partition(&self, name: &str, partition: i32) -> Option<SourcePartition> {
        let topic = self.index(name)?;
        Some(SourcePartition { topic, partition })
    }

    /// Every topic with its index.
    pub fn iter(&self) -> impl Iterator<Item = (TopicIndex, &str)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, name)| (TopicIndex(i as u16), name.as_str()))
    }

    /// How logs, metrics and errors name `p`: the bare number for a job of
    /// one topic (as always), `topic:number` otherwise.
    pub fn label(&self, p: SourcePartition) -> String {
        if self.several() {
            format!("{}:{}", self.name(p.topic), p.partition)
        } else {
            p.partition.to_string()
        }
    }

    /// `partitions` as logs and errors name them.
    pub fn labels<'p>(
        &self,
        partitions: impl IntoIterator<Item = &'p SourcePartition>,
    ) -> Vec<String> {
        partitions.into_iter().map(|&p| self.label(p)).collect()
    }

    /// `offsets` keyed as logs name partitions.
    pub fn labelled<T: Copy>(&self, offsets: &BTreeMap<SourcePartition, T>) -> BTreeMap<String, T> {
        offsets.iter().map(|(&p, &v)| (self.label(p), v)).collect()
    }

    /// The SQL expression of a row's topic in `raw` or `late`: rows stored
    /// while the job read one topic have no `_topic` and count as the first.
    pub fn sql_topic(&self) -> String {
        format!("COALESCE({TOPIC_COLUMN}, {})", quote(self.first()))
    }

    /// The SQL condition that holds for the rows of `p` in `raw` or `late`.
    /// The `_topic` column is only named for a job of several topics: one of
    /// one topic need not store it.
    pub fn sql_is(&self, p: SourcePartition, partition_column: &str) -> String {
        if self.several() {
            format!(
                "({} = {} AND {partition_column} = {})",
                self.sql_topic(),
                quote(self.name(p.topic)),
                p.partition
            )
        } else {
            format!("{partition_column} = {}", p.partition)
        }
    }
}

/// A SQL string literal. Topic names are Kafka's `[a-zA-Z0-9._-]`, but the
/// quote is doubled all the same.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl fmt::Display for Topics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Topics {
        Topics::new(vec!["orders".into(), "refunds".into()]).unwrap()
    }

    #[test]
    fn a_partition_is_named_by_its_topic_only_when_there_are_several() {
        let one = Topics::single("orders");
        let p = SourcePartition::first(3);
        assert_eq!(one.label(p), "3");
        assert_eq!(one.sql_is(p, "_partition"), "_partition = 3");
        let refunds = two().partition("refunds", 3).unwrap();
        assert_eq!(two().label(refunds), "refunds:3");
        assert_eq!(
            two().sql_is(refunds, "_partition"),
            "(COALESCE(_topic, 'orders') = 'refunds' AND _partition = 3)"
        );
        assert_eq!(two().partition("payments", 0), None);
        assert_eq!(two().of_row(None), TopicIndex::default());
        assert_eq!(two().of_row(Some("payments")), TopicIndex::OTHER);
        assert!(Topics::new(Vec::new()).is_none());
    }

    #[test]
    fn partitions_order_by_topic_then_number() {
        let t = two();
        let a = t.partition("orders", 7).unwrap();
        let b = t.partition("refunds", 0).unwrap();
        assert!(a < b);
        assert_eq!(t.name(b.topic), "refunds");
    }
}
