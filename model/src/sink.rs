//! `SpanSink`: the seam between the receivers and the store.
//!
//! A sink resolves an append only once the spans are durable (or the operator opted
//! out of durability), so a receiver that awaits it can acknowledge the export.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::Tenant;

/// What became of an appended batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Spans stored for the first time.
    pub stored: usize,
    /// Spans already stored (a client retry), counted once and dropped.
    pub duplicates: usize,
}

/// Why a sink did not take a batch. Every variant is retryable by the client: the
/// receiver maps them to 503 / `UNAVAILABLE`, never to a 500.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("store is over its memory limit, retry after {retry_after:?}")]
    Overloaded { retry_after: Duration },
    #[error("write-ahead log unavailable: {0}")]
    Unavailable(String),
    #[error("store is shutting down")]
    ShuttingDown,
}

/// The bytes a batch was converted from, as the receiver holds them, and what
/// converting them again takes. A sink may log these instead of the batch:
/// they are already at hand, and smaller than the batch's Arrow IPC (a
/// request of the simulated shop is 388 B a span as OTLP protobuf, 857 B as
/// the Arrow IPC of its batch). The sink rebuilds the batch from them with a
/// [`Reconvert`] when it replays its log.
#[derive(Debug, Clone)]
pub struct EncodedSpans {
    /// The converter's parameters (its clock reading, its limits), opaque to
    /// the sink; at most `u16::MAX` bytes.
    pub recipe: Bytes,
    /// The encoded request.
    pub body: Bytes,
}

/// Converts [`EncodedSpans`] again, into the batch the receiver made of them.
pub trait Reconvert: Send + Sync + std::fmt::Debug + 'static {
    /// The batch `body` converts to under `recipe` (`None` when no span of it
    /// is accepted): the same rows, in the same order, as the first time.
    fn reconvert(&self, tenant: &Tenant, recipe: &[u8], body: &[u8]) -> Result<Option<RecordBatch>, String>;
}

pub type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<AppendOutcome, SinkError>> + Send + 'a>>;

pub type ReadyFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

pub trait SpanSink: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `batch` (with the span schema) for `tenant`.
    fn append<'a>(&'a self, tenant: &'a Tenant, batch: RecordBatch) -> AppendFuture<'a>;

    /// Stores `batch`, which was converted from `encoded`: a sink that logs
    /// may log those bytes instead of encoding the batch again.
    fn append_encoded<'a>(&'a self, tenant: &'a Tenant, batch: RecordBatch, encoded: EncodedSpans) -> AppendFuture<'a> {
        let _ = encoded;
        self.append(tenant, batch)
    }

    /// Whether an append would be taken now. Receivers ask (through
    /// [`SpanSink::wait_ready`]) before they read or decode a request, so a
    /// full sink costs a refused request nothing more.
    fn ready(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Waits up to `patience` for the sink to take appends, then answers as
    /// [`SpanSink::ready`] does: a receiver holds a request while the sink
    /// makes room (a flush) rather than refuse it at once, so clients slow to
    /// the rate the sink keeps up with.
    fn wait_ready(&self, patience: Duration) -> ReadyFuture<'_> {
        let _ = patience;
        Box::pin(std::future::ready(self.ready()))
    }
}
