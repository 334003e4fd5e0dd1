//! Counters the store keeps for the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use andon_model::stats::Histogram;

#[derive(Debug)]
pub struct StoreStats {
    pub fsync_latency: Histogram,
    pub flush_latency: Histogram,
    pub query_latency: Histogram,
    wal_bytes_written: AtomicU64,
    spans_stored: AtomicU64,
    spans_duplicate: AtomicU64,
    segments_written: AtomicU64,
    segment_bytes_written: AtomicU64,
    queries_failed: AtomicU64,
    quarantined: AtomicU64,
}

impl Default for StoreStats {
    fn default() -> Self {
        Self {
            fsync_latency: Histogram::latency(),
            flush_latency: Histogram::latency(),
            query_latency: Histogram::latency(),
            wal_bytes_written: AtomicU64::new(0),
            spans_stored: AtomicU64::new(0),
            spans_duplicate: AtomicU64::new(0),
            segments_written: AtomicU64::new(0),
            segment_bytes_written: AtomicU64::new(0),
            queries_failed: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
        }
    }
}

/// A point-in-time reading of the store, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreSnapshot {
    pub wal_bytes_written: u64,
    pub wal_disk_bytes: u64,
    pub spans_stored: u64,
    pub spans_duplicate: u64,
    pub segments_written: u64,
    pub segment_bytes_written: u64,
    pub segments: u64,
    pub segment_disk_bytes: u64,
    /// With segments in an object store, the bytes of their local copies.
    pub segment_cache_bytes: u64,
    pub buffered_spans: u64,
    pub buffered_bytes: u64,
    pub queries_failed: u64,
    pub dedup_keys: u64,
    /// Corrupt WAL tails and unreadable segments moved aside since start.
    pub quarantined: u64,
}

impl StoreStats {
    pub(crate) fn add_wal_bytes(&self, n: u64) {
        self.wal_bytes_written.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_stored(&self, stored: usize, duplicates: usize) {
        self.spans_stored.fetch_add(stored as u64, Relaxed);
        self.spans_duplicate.fetch_add(duplicates as u64, Relaxed);
    }
    pub(crate) fn add_segment(&self, bytes: u64) {
        self.segments_written.fetch_add(1, Relaxed);
        self.segment_bytes_written.fetch_add(bytes, Relaxed);
    }
    pub(crate) fn add_quarantined(&self, n: u64) {
        self.quarantined.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_query_failure(&self) {
        self.queries_failed.fetch_add(1, Relaxed);
    }
    pub(crate) fn fill(&self, s: &mut StoreSnapshot) {
        s.wal_bytes_written = self.wal_bytes_written.load(Relaxed);
        s.spans_stored = self.spans_stored.load(Relaxed);
        s.spans_duplicate = self.spans_duplicate.load(Relaxed);
        s.segments_written = self.segments_written.load(Relaxed);
        s.segment_bytes_written = self.segment_bytes_written.load(Relaxed);
        s.queries_failed = self.queries_failed.load(Relaxed);
        s.quarantined = self.quarantined.load(Relaxed);
    }
}
