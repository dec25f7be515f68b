//! The remembered IDs and where each was read: a hash table that keeps its
//! size under churn.
//!
//! Dedup inserts every new ID and evicts old ones as fast as it inserts: the
//! live count stays level while the IDs turn over completely every horizon.
//! std's `HashMap` (hashbrown) leaves a tombstone for most removals, and once
//! the tombstones use up its spare room it rehashes in place only while at most
//! half its capacity is live; above that it doubles, although no more IDs are
//! live than before. A 40-minute soak showed that step after 25 minutes of
//! churn at a steady 2.1 M IDs (168 → 336 MiB). This table probes linearly and
//! removes by shifting the entries behind the hole back, so a removal leaves
//! the table exactly as if the ID had never been inserted: its size follows the
//! live count alone.

use std::hash::BuildHasher;
use std::num::NonZeroU128;

use foldhash::fast::RandomState;

use super::Origin;

/// One remembered ID. The ID's niche makes an empty slot cost nothing extra.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: NonZeroU128,
    origin: Origin,
}

/// Fewest slots a table that holds anything has.
const MIN_SLOTS: usize = 1024;

/// ID hashes mapped to the position each was accepted from.
#[derive(Debug, Default)]
pub struct IdMap {
    /// A power of two in length, or empty; at most 3/4 full.
    slots: Box<[Option<Slot>]>,
    /// Full slots.
    len: usize,
    /// The ID hash 0, which no slot can hold: an empty slot is its niche.
    zero: Option<Origin>,
    /// IDs are already hashes, but of the sender's choosing: a seeded hash
    /// picks the slot, so crafted IDs cannot pile up in one run of slots.
    state: RandomState,
}

impl IdMap {
    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    /// Bytes held by the table.
    pub fn bytes(&self) -> usize {
        size_of_val(&*self.slots)
    }

    /// Remembers `id` as read from `origin`, unless it is remembered already:
    /// returns where it was read before, `None` if it is new.
    pub fn remember(&mut self, id: u128, origin: Origin) -> Option<Origin> {
        let Some(id) = NonZeroU128::new(id) else {
            let before = self.zero;
            self.zero.get_or_insert(origin);
            return before;
        };
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.resize((self.slots.len() * 2).max(MIN_SLOTS));
        }
        match self.find(id) {
            (_, Some(slot)) => Some(slot.origin),
            (empty, None) => {
                self.slots[empty] = Some(Slot { id, origin });
                self.len += 1;
                None
            }
        }
    }

    /// Starts loading the slot where `id`'s search begins, without waiting.
    /// A long run's table is far larger than the CPU's caches, so each search
    /// waits on memory (a churn of 10,000 IDs through a table of 2 M took
    /// 2.3 ms: benches/dedup.rs); a search started [`AHEAD`] IDs early
    /// overlaps those waits. Only a hint: it changes no answer.
    pub fn prefetch(&self, id: u128) {
        if let Some(id) = NonZeroU128::new(id).filter(|_| !self.slots.is_empty()) {
            prefetch_read(&self.slots[self.home(id)]);
        }
    }

    pub fn remove(&mut self, id: u128) {
        let Some(id) = NonZeroU128::new(id) else {
            self.zero = None;
            return;
        };
        if let (at, Some(_)) = self.find(id) {
            self.shift_back(at);
            self.len -= 1;
        }
    }

    /// Halves the table while it is less than 1/8 full (but keeps
    /// [`MIN_SLOTS`]), so that memory follows a rate that falls.
    pub fn shrink(&mut self) {
        let mut slots = self.slots.len();
        while slots > MIN_SLOTS && self.len * 8 < slots {
            slots /= 2;
        }
        if slots < self.slots.len() {
            self.resize(slots);
        }
    }

    fn home(&self, id: NonZeroU128) -> usize {
        self.state.hash_one(id) as usize & (self.slots.len() - 1)
    }

    /// The slot holding `id` and its entry, or the empty slot where `id`
    /// belongs and `None` (slot 0 of an empty table).
    fn find(&self, id: NonZeroU128) -> (usize, Option<Slot>) {
        if self.slots.is_empty() {
            return (0, None);
        }
        let mask = self.slots.len() - 1;
        let mut at = self.home(id);
        loop {
            match self.slots[at] {
                Some(slot) if slot.id != id => at = (at + 1) & mask,
                found => return (at, found),
            }
        }
    }

    /// Empties slot `hole`, moving each entry after it in the run back into the
    /// hole when the hole lies between that entry's home and its slot: every
    /// entry stays reachable from its home without a gap.
    fn shift_back(&mut self, mut hole: usize) {
        let mask = self.slots.len() - 1;
        let mut next = (hole + 1) & mask;
        while let Some(slot) = self.slots[next] {
            let from_home = next.wrapping_sub(self.home(slot.id)) & mask;
            if from_home >= (next.wrapping_sub(hole) & mask) {
                self.slots[hole] = Some(slot);
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = None;
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.slots, vec![None; slots].into_boxed_slice());
        for slot in old.iter().flatten() {
            let (empty, _) = self.find(slot.id);
            self.slots[empty] = Some(*slot);
        }
    }
}

/// How many IDs ahead of the one searched for [`IdMap::prefetch`] is asked
/// for: enough to cover a load from memory (about 100 ns) with the searches
/// between, few enough that the slots stay cached until searched.
pub const AHEAD: usize = 8;

#[cfg(target_arch = "x86_64")]
fn prefetch_read<T>(value: &T) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: SSE is part of every x86_64 CPU, and a prefetch only hints at
    // an address (here a valid reference's): it reads nothing and cannot fault.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast()) };
}

/// Elsewhere the searches wait as they did.
#[cfg(not(target_arch = "x86_64"))]
fn prefetch_read<T>(_: &T) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourcePartition;
    use proptest::prelude::*;
    use std::collections::HashMap;

    impl IdMap {
        fn get(&self, id: u128) -> Option<Origin> {
            match NonZeroU128::new(id) {
                Some(id) => self.find(id).1.map(|slot| slot.origin),
                None => self.zero,
            }
        }
    }

    fn at(offset: i64) -> Origin {
        Origin {
            partition: SourcePartition::first(0),
            offset,
        }
    }

    #[test]
    fn churn_at_a_steady_count_keeps_the_table_its_size() {
        let mut map = IdMap::default();
        let live = 100_000u128;
        for id in 0..live {
            map.remember(id, at(0));
        }
        let size = map.bytes();
        // Turn the IDs over twenty times, one out for one in.
        for id in live..21 * live {
            map.remove(id - live);
            map.remember(id, at(0));
        }
        assert_eq!(map.len(), live as usize);
        assert_eq!(map.bytes(), size, "churn alone must not grow the table");
        assert_eq!(map.get(20 * live), Some(at(0)));
        assert_eq!(map.get(20 * live - 1), None);
    }

    #[test]
    fn a_falling_count_gives_memory_back() {
        let mut map = IdMap::default();
        for id in 0..100_000 {
            map.remember(id, at(0));
        }
        let full = map.bytes();
        for id in 0..99_000 {
            map.remove(id);
        }
        map.shrink();
        assert!(map.bytes() * 16 <= full, "{} of {full} bytes", map.bytes());
        assert!((99_000..100_000).all(|id| map.get(id) == Some(at(0))));
    }

    proptest! {
        /// Any interleaving of inserts, removals and shrinks answers as a
        /// std map does; IDs from a small range collide in their homes.
        #[test]
        fn answers_as_a_std_map_does(
            ops in prop::collection::vec((0u8..3, 0u128..3000, 0i64..100), 1..4000),
        ) {
            let (mut map, mut model) = (IdMap::default(), HashMap::new());
            for (op, id, offset) in ops {
                match op {
                    0 => {
                        let before = model.get(&id).copied();
                        model.entry(id).or_insert(at(offset));
                        prop_assert_eq!(map.remember(id, at(offset)), before);
                    }
                    1 => {
                        map.remove(id);
                        model.remove(&id);
                    }
                    _ => map.shrink(),
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert_eq!(map.get(id), model.get(&id).copied());
            }
            for (id, origin) in &model {
                prop_assert_eq!(map.get(*id), Some(*origin));
            }
        }
    }
}
