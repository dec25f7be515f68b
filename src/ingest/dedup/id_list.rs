//! The IDs accepted in one slice of event time, kept to evict them together.
//!
//! A `Vec` that grows by doubling holds up to twice its length, and trimming
//! it when its slice of time has passed does not help: an event that arrives
//! a little out of order pushes onto a trimmed list and doubles it again (a
//! soak measured 20 bytes per ID where 16 are needed). Fixed-size chunks
//! waste at most one chunk per list, and never copy.

/// IDs per chunk: 16 KiB.
const CHUNK: usize = 1024;

#[derive(Debug, Default)]
pub struct IdList {
    chunks: Vec<Vec<u128>>,
}

impl IdList {
    pub fn push(&mut self, id: u128) {
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push(id),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(id);
                self.chunks.push(chunk);
            }
        }
    }

    /// The IDs, a chunk at a time (in the order pushed).
    pub fn chunks(&self) -> impl Iterator<Item = &[u128]> {
        self.chunks.iter().map(Vec::as_slice)
    }

    /// Bytes held by the chunks and the list of them.
    pub fn bytes(&self) -> usize {
        self.chunks.len() * CHUNK * size_of::<u128>()
            + self.chunks.capacity() * size_of::<Vec<u128>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_one_chunk_more_than_its_ids() {
        let mut list = IdList::default();
        (0..10_000u128).for_each(|id| list.push(id));
        let chunks = 10_000usize.div_ceil(CHUNK);
        let headers = list.chunks.capacity() * size_of::<Vec<u128>>();
        assert_eq!(list.bytes(), chunks * CHUNK * 16 + headers);
        assert!(list.chunks().flatten().copied().eq(0..10_000));
    }
}
