//! The accepted-span counter sampled every few seconds over the last hour, for
//! the overview's ingest-rate chart.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// The accepted-span counter sampled every few seconds over the last hour, so
/// the overview can draw the ingest rate as it was received (span timestamps
/// say when work happened, not when it arrived).
#[derive(Debug, Default)]
pub struct IngestHistory {
    samples: Mutex<VecDeque<(DateTime<Utc>, u64, u64)>>,
}

pub type Points = Vec<(DateTime<Utc>, f64)>;

/// Samples kept: an hour at one every 10 seconds.
const SAMPLES: usize = 360;
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl IngestHistory {
    /// Records the counters (spans accepted, spans rejected) at `at`.
    pub fn record(&self, at: DateTime<Utc>, accepted: u64, rejected: u64) {
        let mut s = self.samples.lock();
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back((at, accepted, rejected));
    }

    /// Spans per second between consecutive samples: accepted and rejected.
    pub fn rates(&self) -> (Points, Points) {
        let s = self.samples.lock();
        let mut accepted = Vec::with_capacity(s.len());
        let mut rejected = Vec::with_capacity(s.len());
        for (a, b) in s.iter().zip(s.iter().skip(1)) {
            let secs = (b.0 - a.0).num_milliseconds().max(1) as f64 / 1e3;
            accepted.push((b.0, b.1.saturating_sub(a.1) as f64 / secs));
            rejected.push((b.0, b.2.saturating_sub(a.2) as f64 / secs));
        }
        (accepted, rejected)
    }
}
