//! Recently seen `(trace_id, span_id)` pairs, so a span a client sends again (a retry
//! after a lost acknowledgement, or a crash before one) is stored once.
//!
//! Keys are 64-bit hashes kept in generations: a lookup checks them all, inserts go to
//! the newest, and the oldest is dropped when it leaves the window or when the index
//! holds more keys than its cap. The cap bounds memory; OTLP clients retry within
//! seconds to minutes, well inside the default window.
//!
//! The newest generation is a hash set. Once it has been filled for an eighth of the
//! window, or holds an eighth of the cap, it is sealed: its keys sorted into one flat
//! table with a small directory by their leading bits ([`Sealed`]), a little over 8 bytes a
//! key against a hash set's 10 to 20 with its spare room, and never grown again. So
//! the index's memory follows the cap (about 33 MB at the default 4M keys, by their size; the
//! newest generation's set 9.4 MB in a measured run), with no table doubling at the receivers' full rate.

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

/// Hash tables keyed by a hash already uniform (`xxh3`): its bits are the
/// table's hash, not hashed again.
pub(crate) type IdBuild = BuildHasherDefault<IdentityHasher>;

type KeySet = HashSet<u64, IdBuild>;

/// Keys a sealed generation's directory has an entry for, about: each lookup
/// scans one entry's keys, a cache line or two.
const KEYS_PER_ENTRY: usize = 8;

/// A generation's keys, sorted, with the index of the first key of each value
/// of their leading bits. The keys are uniform hashes, so each entry covers
/// about [`KEYS_PER_ENTRY`] of them.
struct Sealed {
    keys: Box<[u64]>,
    /// `dir[b]..dir[b + 1]` holds the keys whose leading bits are `b`.
    dir: Box<[u32]>,
    /// How far a key is shifted right to leave its leading bits (64: none,
    /// one entry for every key).
    shift: u32,
}

impl Sealed {
    fn new(mut keys: Vec<u64>) -> Self {
        keys.sort_unstable();
        let bits = (keys.len() / KEYS_PER_ENTRY).max(1).ilog2();
        let shift = 64 - bits;
        let entries = 1usize << bits;
        let mut dir = Vec::with_capacity(entries + 1);
        let mut at = 0usize;
        for b in 0..entries {
            while at < keys.len() && Self::entry(keys[at], shift) < b {
                at += 1;
            }
            dir.push(at as u32);
        }
        dir.push(keys.len() as u32);
        Self { keys: keys.into_boxed_slice(), dir: dir.into_boxed_slice(), shift }
    }

    fn entry(key: u64, shift: u32) -> usize {
        key.checked_shr(shift).unwrap_or(0) as usize
    }

    fn contains(&self, key: u64) -> bool {
        let b = Self::entry(key, self.shift);
        let (lo, hi) = (self.dir[b] as usize, self.dir[b + 1] as usize);
        self.keys[lo..hi].contains(&key)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Drops `gone`'s keys; how many it held.
    fn remove(&mut self, gone: &KeySet) -> usize {
        let before = self.keys.len();
        let kept: Vec<u64> = self.keys.iter().copied().filter(|k| !gone.contains(k)).collect();
        if kept.len() < before {
            *self = Self::new(kept);
        }
        before - self.keys.len()
    }
}

pub struct DedupIndex {
    /// The generation keys are inserted into, and when it began.
    current: (Instant, KeySet),
    /// Older generations, oldest first, with when each began.
    sealed: VecDeque<(Instant, Sealed)>,
    generation_len: Duration,
    /// The most keys the current generation takes before it is sealed.
    generation_keys: usize,
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
        Self::starting(window, max_keys, Instant::now())
    }

    fn starting(window: Duration, max_keys: usize, now: Instant) -> Self {
        Self {
            current: (now, KeySet::default()),
            sealed: VecDeque::new(),
            generation_len: (window / 8).max(Duration::from_secs(1)),
            generation_keys: (max_keys / 8).max(1),
            window,
            max_keys,
            len: 0,
        }
    }

    /// Seals the current generation when it is old or full enough, and drops
    /// the sealed ones that left the window or do not fit under the cap.
    fn rotate(&mut self, now: Instant) {
        let (began, keys) = &self.current;
        if now.duration_since(*began) >= self.generation_len || keys.len() >= self.generation_keys {
            let (began, keys) = std::mem::replace(&mut self.current, (now, KeySet::default()));
            if !keys.is_empty() {
                self.sealed.push_back((began, Sealed::new(keys.into_iter().collect())));
            }
        }
        while let Some((t, g)) = self.sealed.front() {
            let expired = now.duration_since(*t) > self.window + self.generation_len;
            let over = self.len > self.max_keys;
            if !(expired || over) {
                break;
            }
            self.len -= g.len();
            self.sealed.pop_front();
        }
    }

    fn seen(&self, key: u64) -> bool {
        self.current.1.contains(&key) || self.sealed.iter().rev().any(|(_, g)| g.contains(key))
    }

    /// Marks the keys as seen and returns which rows are new (a key repeated within
    /// `keys` is new only the first time).
    pub fn insert_new(&mut self, keys: &[u64], now: Instant) -> BooleanArray {
        // Rotate and expire first, so expired keys are not found below.
        self.rotate(now);
        let mut fresh = Vec::with_capacity(keys.len());
        for &k in keys {
            let inserted = !self.seen(k) && self.current.1.insert(k);
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
        let gone: KeySet =
            keys.iter().zip(mask.iter()).filter(|(_, new)| *new == Some(true)).map(|(k, _)| *k).collect();
        if gone.is_empty() {
            return;
        }
        for k in &gone {
            if self.current.1.remove(k) {
                self.len -= 1;
            }
        }
        // Sealed in between only when a generation ended while the spans
        // were being written: rare, and then one pass over it.
        for (_, g) in &mut self.sealed {
            if gone.iter().any(|k| g.contains(*k)) {
                self.len -= g.remove(&gone);
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

    fn spread(i: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
    }

    #[test]
    fn sealed_generations_find_every_key_they_hold_and_no_other() {
        let mut d = DedupIndex::new(Duration::from_secs(800), 1_000_000);
        let t0 = Instant::now();
        // Three generations, sealed by time, of different sizes (the
        // directory's width follows each one's), and keys at the extremes.
        let sizes = [1usize, 9, 20_000];
        let mut start = 0u64;
        for (g, n) in sizes.iter().enumerate() {
            let keys: Vec<u64> = (start..start + *n as u64).map(spread).collect();
            let m = d.insert_new(&keys, t0 + Duration::from_secs(100 * g as u64));
            assert_eq!(m.true_count(), *n);
            start += *n as u64;
        }
        let m = d.insert_new(&[0, u64::MAX], t0 + Duration::from_secs(300));
        assert_eq!(m.true_count(), 2);
        let later = t0 + Duration::from_secs(400);
        d.insert_new(&[], later);
        assert_eq!(d.sealed.len(), 4, "every generation sealed");
        let all: Vec<u64> = (0..start).map(spread).chain([0, u64::MAX]).collect();
        assert_eq!(d.insert_new(&all, later).true_count(), 0, "every key held is found");
        let others: Vec<u64> = (start..start + 20_000).map(spread).collect();
        assert_eq!(d.insert_new(&others, later).true_count(), 20_000, "no other key is");
        assert_eq!(d.len(), start as usize + 2 + 20_000);
    }

    #[test]
    fn a_full_generation_is_sealed_before_its_time() {
        let mut d = DedupIndex::new(Duration::from_secs(800), 80);
        let t0 = Instant::now();
        d.insert_new(&(0..10).map(spread).collect::<Vec<_>>(), t0);
        d.insert_new(&[spread(10)], t0 + Duration::from_millis(1));
        assert_eq!((d.sealed.len(), d.current.1.len()), (1, 1), "ten keys fill a generation of a cap of 80");
        assert_eq!(d.insert_new(&[spread(3)], t0 + Duration::from_millis(2)).true_count(), 0);
    }

    #[test]
    fn keys_removed_after_their_generation_was_sealed_are_new_again() {
        let mut d = DedupIndex::new(Duration::from_secs(80), 1_000);
        let t0 = Instant::now();
        let keys: Vec<u64> = (0..100).map(spread).collect();
        let m = d.insert_new(&keys, t0);
        // A generation ends while the spans are being written.
        d.insert_new(&[spread(1_000)], t0 + Duration::from_secs(11));
        assert_eq!(d.sealed.len(), 1);
        d.remove(&keys, &m);
        assert_eq!(d.len(), 1);
        assert_eq!(d.insert_new(&keys, t0 + Duration::from_secs(12)).true_count(), 100);
    }
}
