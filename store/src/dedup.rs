//! Recently seen `(trace_id, span_id)` pairs, so a span a client sends again (a retry
//! after a lost acknowledgement, or a crash before one) is stored once.
//!
//! Keys are 64-bit hashes kept in generations: a lookup checks them all, inserts go to
//! the newest, and the oldest is dropped when it leaves the window or when the index
//! holds more keys than its cap. The cap bounds memory; OTLP clients retry within
//! seconds to minutes, well inside the default window.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, BooleanArray};
use arrow::record_batch::RecordBatch;

/// The keys are already uniformly distributed hashes; hashing them again is waste.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeySet = HashSet<u64, BuildHasherDefault<IdentityHasher>>;

pub struct DedupIndex {
    generations: VecDeque<(Instant, KeySet)>,
    generation_len: Duration,
    window: Duration,
    max_keys: usize,
    len: usize,
}

impl std::fmt::Debug for DedupIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupIndex").field("len", &self.len).field("window", &self.window).finish()
    }
}

/// The dedup key of every row of a span batch: (tenant, trace_id, span_id), so
/// one tenant's spans never hide another's that happen to share ids.
pub fn batch_keys(batch: &RecordBatch) -> Vec<u64> {
    let (Some(tenant), Some(t), Some(s)) =
        (batch.column_by_name("tenant"), batch.column_by_name("trace_id"), batch.column_by_name("span_id"))
    else {
        return Vec::new();
    };
    let (tenant, t, s) = (tenant.as_string::<i32>(), t.as_string::<i32>(), s.as_string::<i32>());
    (0..batch.num_rows())
        .map(|i| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(tenant.value(i).as_bytes());
            h.update(&[0]);
            h.update(t.value(i).as_bytes());
            h.update(s.value(i).as_bytes());
            h.digest()
        })
        .collect()
}

impl DedupIndex {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            generations: VecDeque::new(),
            generation_len: (window / 8).max(Duration::from_secs(1)),
            window,
            max_keys,
            len: 0,
        }
    }

    fn current(&mut self, now: Instant) -> &mut KeySet {
        let fresh = self.generations.back().is_none_or(|(t, _)| now.duration_since(*t) >= self.generation_len);
        if fresh {
            self.generations.push_back((now, KeySet::default()));
        }
        while let Some((t, set)) = self.generations.front() {
            let expired = now.duration_since(*t) > self.window + self.generation_len;
            let over = self.len > self.max_keys && self.generations.len() > 1;
            if !(expired || over) {
                break;
            }
            self.len -= set.len();
            self.generations.pop_front();
        }
        let Some((_, set)) = self.generations.back_mut() else { unreachable!("a generation was pushed above") };
        set
    }

    /// Marks the keys as seen and returns which rows are new (a key repeated within
    /// `keys` is new only the first time).
    pub fn insert_new(&mut self, keys: &[u64], now: Instant) -> BooleanArray {
        // Rotate and expire first, so expired keys are not found below.
        self.current(now);
        let mut fresh = Vec::with_capacity(keys.len());
        for k in keys {
            let seen = self.generations.iter().any(|(_, g)| g.contains(k));
            let inserted = !seen && self.generations.back_mut().is_some_and(|(_, g)| g.insert(*k));
            if inserted {
                self.len += 1;
            }
            fresh.push(inserted);
        }
        BooleanArray::from(fresh)
    }

    /// Forgets keys whose spans could not be stored, so the client's retry is not
    /// mistaken for a duplicate.
    pub fn remove(&mut self, keys: &[u64], mask: &BooleanArray) {
        for (k, new) in keys.iter().zip(mask.iter()) {
            if new == Some(true) {
                for (_, g) in &mut self.generations {
                    if g.remove(k) {
                        self.len -= 1;
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_not_new_within_the_window() {
        let mut d = DedupIndex::new(Duration::from_secs(80), 1_000);
        let t0 = Instant::now();
        let m = d.insert_new(&[1, 2, 2, 3], t0);
        assert_eq!(m, BooleanArray::from(vec![true, true, false, true]));
        let m = d.insert_new(&[3, 4], t0 + Duration::from_secs(30));
        assert_eq!(m, BooleanArray::from(vec![false, true]));
        assert_eq!(d.len(), 4);
        // Long after the window the first generation is gone.
        let m = d.insert_new(&[1], t0 + Duration::from_secs(200));
        assert_eq!(m, BooleanArray::from(vec![true]));
    }

    #[test]
    fn removed_keys_can_be_inserted_again() {
        let mut d = DedupIndex::new(Duration::from_secs(60), 1_000);
        let now = Instant::now();
        let m = d.insert_new(&[7, 8], now);
        d.remove(&[7, 8], &m);
        assert!(d.is_empty());
        assert_eq!(d.insert_new(&[7], now), BooleanArray::from(vec![true]));
    }

    #[test]
    fn the_cap_drops_old_generations() {
        let mut d = DedupIndex::new(Duration::from_secs(80), 3);
        let t0 = Instant::now();
        d.insert_new(&[1, 2, 3, 4], t0);
        d.insert_new(&[5], t0 + Duration::from_secs(11));
        assert_eq!(d.len(), 1, "the over-full first generation was dropped");
    }
}
