//! Counters the receivers keep for the server's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::IngestError;

/// Why spans or requests were not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Individual spans failed validation (reported as a partial success).
    Invalid,
    /// Already stored: a client retry, counted once.
    Duplicate,
    Malformed,
    TooLarge,
    Overloaded,
    Unavailable,
    Tenant,
    /// No token, an unknown one, or one not allowed to export to the tenant.
    Unauthorized,
    /// The request's body came too slowly.
    Timeout,
    Internal,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::Invalid,
        RejectReason::Duplicate,
        RejectReason::Malformed,
        RejectReason::TooLarge,
        RejectReason::Overloaded,
        RejectReason::Unavailable,
        RejectReason::Tenant,
        RejectReason::Unauthorized,
        RejectReason::Timeout,
        RejectReason::Internal,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Invalid => "invalid",
            RejectReason::Duplicate => "duplicate",
            RejectReason::Malformed => "malformed",
            RejectReason::TooLarge => "too_large",
            RejectReason::Overloaded => "overloaded",
            RejectReason::Unavailable => "unavailable",
            RejectReason::Tenant => "tenant",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::Timeout => "timeout",
            RejectReason::Internal => "internal",
        }
    }

    pub fn from_error(e: &IngestError) -> Self {
        match e {
            IngestError::Malformed(_) | IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => {
                RejectReason::Malformed
            }
            IngestError::TooLarge { .. } | IngestError::Amplified(_) => RejectReason::TooLarge,
            IngestError::Tenant(_) | IngestError::Auth(andon_model::auth::AuthError::BadTenant(_)) => {
                RejectReason::Tenant
            }
            IngestError::Auth(_) => RejectReason::Unauthorized,
            IngestError::SlowBody { .. } => RejectReason::Timeout,
            IngestError::Overloaded { .. } => RejectReason::Overloaded,
            IngestError::Unavailable(_) => RejectReason::Unavailable,
            IngestError::Internal(_) => RejectReason::Internal,
        }
    }
}

#[derive(Debug, Default)]
pub struct IngestStats {
    spans_received: AtomicU64,
    spans_accepted: AtomicU64,
    spans_rejected: [AtomicU64; RejectReason::ALL.len()],
    requests_refused: [AtomicU64; RejectReason::ALL.len()],
    bytes_received: AtomicU64,
    requests: AtomicU64,
}

/// A point-in-time reading.
#[derive(Debug, Clone, Default)]
pub struct IngestSnapshot {
    pub spans_received: u64,
    pub spans_accepted: u64,
    /// Per [`RejectReason::ALL`] entry.
    pub spans_rejected: Vec<(RejectReason, u64)>,
    pub requests_refused: Vec<(RejectReason, u64)>,
    pub bytes_received: u64,
    pub requests: u64,
}

impl IngestStats {
    pub(crate) fn add_received(&self, n: u64) {
        self.spans_received.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_accepted(&self, n: u64) {
        self.spans_accepted.fetch_add(n, Relaxed);
    }
    pub(crate) fn add_rejected(&self, r: RejectReason, n: u64) {
        self.spans_rejected[r as usize].fetch_add(n, Relaxed);
    }
    pub(crate) fn add_refused_request(&self, r: RejectReason) {
        self.requests_refused[r as usize].fetch_add(1, Relaxed);
    }
    pub(crate) fn add_request(&self, bytes: u64) {
        self.requests.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes, Relaxed);
    }

    pub fn snapshot(&self) -> IngestSnapshot {
        IngestSnapshot {
            spans_received: self.spans_received.load(Relaxed),
            spans_accepted: self.spans_accepted.load(Relaxed),
            spans_rejected: RejectReason::ALL
                .iter()
                .map(|r| (*r, self.spans_rejected[*r as usize].load(Relaxed)))
                .collect(),
            requests_refused: RejectReason::ALL
                .iter()
                .map(|r| (*r, self.requests_refused[*r as usize].load(Relaxed)))
                .collect(),
            bytes_received: self.bytes_received.load(Relaxed),
            requests: self.requests.load(Relaxed),
        }
    }
}
