//! A byte-limited, least-recently-used cache of decoded chunks, shared by every reader thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `(level, chunk index)`.
pub type ChunkKey = (usize, u64);

pub struct ChunkCache {
    capacity_bytes: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: HashMap<ChunkKey, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    clock: u64,
}

impl ChunkCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity_bytes,
            state: Mutex::new(State::default()),
        }
    }

    pub fn get(&self, key: ChunkKey) -> Option<Arc<Vec<u8>>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.clock += 1;
        let now = state.clock;
        state.entries.get_mut(&key).map(|(chunk, used)| {
            *used = now;
            chunk.clone()
        })
    }

    /// Inserts a chunk, evicting the least recently used ones beyond the byte limit.
    pub fn insert(&self, key: ChunkKey, chunk: Arc<Vec<u8>>) {
        if chunk.len() > self.capacity_bytes {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.clock += 1;
        let now = state.clock;
        state.bytes += chunk.len();
        if let Some((old, _)) = state.entries.insert(key, (chunk, now)) {
            state.bytes -= old.len();
        }
        while state.bytes > self.capacity_bytes {
            let oldest = state
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| *key);
            let Some(oldest) = oldest else { break };
            if let Some((evicted, _)) = state.entries.remove(&oldest) {
                state.bytes -= evicted.len();
            }
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_beyond_the_byte_limit() {
        let cache = ChunkCache::new(300);
        for i in 0..3 {
            cache.insert((0, i), Arc::new(vec![0; 100]));
        }
        assert!(cache.get((0, 0)).is_some());
        cache.insert((0, 3), Arc::new(vec![0; 100]));
        assert!(
            cache.get((0, 1)).is_none(),
            "chunk 1 was the least recently used"
        );
        assert!(cache.get((0, 0)).is_some() && cache.get((0, 3)).is_some());
        assert_eq!(cache.bytes(), 300);
    }
}
