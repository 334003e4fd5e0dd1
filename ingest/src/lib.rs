//! andon-ingest: the OTLP trace receivers.
//!
//! Owns OTLP/gRPC (`TraceService/Export`) and OTLP/HTTP (`POST /v1/traces`) in
//! protobuf and JSON, gzip or zstd, and the rules of the OTLP specification around
//! them: partial success, retryable versus permanent errors, size limits and
//! backpressure. Every request, whatever its transport, goes through one
//! [`Ingestor`], which bounds the memory held by requests in flight, validates and
//! converts spans to Arrow, and hands them to a [`SpanSink`]; the export is
//! acknowledged only when the sink says the spans are durable.
//!
//! It does not store anything, and knows nothing about Parquet or SQL.

pub mod convert;
mod error;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod rpc;
mod stats;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use andon_model::auth::{Permission, Verifier};
use andon_model::clock::Clock;
use andon_model::{EncodedSpans, Reconvert, SpanSink, Tenant};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use convert::{ConvertError, Converted, Scanned, SpanLimits, convert_bytes, convert_request, convert_scanned};
pub use error::IngestError;
pub use stats::{IngestSnapshot, IngestStats, RejectReason};

/// Receiver settings, validated by the server's config.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest OTLP/HTTP body, after decompression.
    pub max_request_bytes: usize,
    /// Largest OTLP/gRPC message.
    pub max_grpc_message_bytes: usize,
    /// Memory that requests in flight may hold in total; past it, clients are told
    /// to retry later.
    pub max_inflight_bytes: usize,
    /// Spans one request may carry.
    pub max_request_spans: usize,
    pub span_limits: SpanLimits,
    /// What `Retry-After` and `RetryInfo` suggest under overload.
    pub retry_after: Duration,
    /// How long a request waits for the store's buffer to have room (a flush)
    /// before it is refused as overloaded: clients slow to the rate the store
    /// keeps up with instead of being refused. Keep it well under exporters'
    /// timeouts (the Collector's default is 5 s).
    pub overload_wait: Duration,
    /// Who may export, and to which tenant; off (anyone, any tenant) by default.
    pub auth: Arc<Verifier>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 20 << 20,
            max_grpc_message_bytes: 4 << 20,
            max_inflight_bytes: 64 << 20,
            max_request_spans: 100_000,
            span_limits: SpanLimits::default(),
            retry_after: Duration::from_secs(2),
            overload_wait: Duration::from_secs(2),
            auth: Arc::default(),
        }
    }
}

/// The result of an accepted export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOutcome {
    pub stored: usize,
    pub duplicates: usize,
    pub rejected: u64,
    pub error_message: Option<String>,
}

/// Decoded spans held in memory are several times their encoded size; permits are
/// taken for that, not for the bytes on the wire.
const DECODED_EXPANSION: usize = 4;

/// The shared core of every receiver.
#[derive(Debug)]
pub struct Ingestor {
    sink: Arc<dyn SpanSink>,
    clock: Arc<dyn Clock>,
    config: IngestConfig,
    inflight: Arc<Semaphore>,
    stats: Arc<IngestStats>,
}

impl Ingestor {
    pub fn new(sink: Arc<dyn SpanSink>, clock: Arc<dyn Clock>, config: IngestConfig) -> Self {
        let permits = config.max_inflight_bytes.min(Semaphore::MAX_PERMITS);
        Self { sink, clock, inflight: Arc::new(Semaphore::new(permits)), config, stats: Arc::default() }
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// The tenant an export goes to, once its `Authorization` value shows a
    /// caller allowed to export there (`X-Scope-OrgID` names it; a pinned
    /// token's own tenant when absent). Checked before the body is read.
    pub fn tenant_for(&self, authorization: Option<&[u8]>, tenant: Option<&str>) -> Result<Tenant, IngestError> {
        let auth = &self.config.auth;
        let principal = auth.authenticate(authorization)?;
        Ok(auth.authorize(principal.as_ref(), Permission::Ingest, tenant)?)
    }

    /// Waits up to `overload_wait` while the sink's buffer is full, then
    /// refuses as overloaded if it still is. Receivers call it before they
    /// read a request's body.
    pub async fn admit(&self) -> Result<(), IngestError> {
        Ok(self.sink.wait_ready(self.config.overload_wait).await?)
    }

    /// Reserves in-flight memory for a request of `encoded_bytes`, or refuses
    /// it when that memory is taken. Whether the sink has room was settled
    /// once, by [`Ingestor::admit`] before the body was read: a request
    /// admitted is not refused halfway through its body because the buffer
    /// filled meanwhile.
    pub fn reserve(&self, encoded_bytes: usize) -> Result<OwnedSemaphorePermit, IngestError> {
        let want = encoded_bytes.saturating_mul(DECODED_EXPANSION).clamp(1, self.config.max_inflight_bytes.max(1));
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        Arc::clone(&self.inflight)
            .try_acquire_many_owned(want)
            .map_err(|_| IngestError::Overloaded { retry_after: self.config.retry_after })
    }

    /// In-flight units a permit of [`Ingestor::reserve`] for `encoded_bytes` holds.
    pub fn held_for(&self, encoded_bytes: usize) -> usize {
        encoded_bytes.saturating_mul(DECODED_EXPANSION).clamp(1, self.config.max_inflight_bytes.max(1))
    }

    /// Validates, converts and stores one request. Resolves once the spans are durable.
    pub async fn export(&self, tenant: &Tenant, req: ExportTraceServiceRequest) -> Result<ExportOutcome, IngestError> {
        self.export_bytes(tenant, req.encode_to_vec().into(), 0).await
    }

    /// Validates, converts and stores one protobuf-encoded request, for a
    /// receiver that already holds `held` bytes of in-flight memory for it:
    /// what converting builds beyond that is held too, and a request that
    /// would build more than the whole budget, or carries more than
    /// `max_request_spans`, is refused as too large. Resolves once the spans
    /// are durable.
    pub async fn export_bytes(&self, tenant: &Tenant, body: Bytes, held: usize) -> Result<ExportOutcome, IngestError> {
        let Scanned { cost, spans } =
            convert::scan(&body).map_err(|e| IngestError::Malformed(format!("protobuf: {e}")))?;
        if spans > self.config.max_request_spans {
            return Err(IngestError::Amplified(format!(
                "{spans} spans in one request, more than the limit of {}; send smaller batches",
                self.config.max_request_spans
            )));
        }
        if cost > self.config.max_inflight_bytes {
            return Err(IngestError::Amplified(format!(
                "the request's spans take {cost} bytes decoded (each copies its resource's attributes), more than \
                 the in-flight budget of {}; send smaller batches or smaller resource attributes",
                self.config.max_inflight_bytes
            )));
        }
        let _more = match cost.checked_sub(held).filter(|n| *n > 0) {
            Some(n) => Some(
                Arc::clone(&self.inflight)
                    .try_acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
                    .map_err(|_| IngestError::Overloaded { retry_after: self.config.retry_after })?,
            ),
            None => None,
        };
        let now = self.clock.now_ns();
        let limits = self.config.span_limits;
        let tenant_owned = tenant.clone();
        // The sink's WAL may log these bytes rather than encode the batch.
        let encoded = EncodedSpans { recipe: recipe(now, limits), body: body.clone() };
        let converted =
            tokio::task::spawn_blocking(move || convert::convert_scanned(&body, spans, &tenant_owned, now, limits))
                .await
                .map_err(|e| IngestError::Internal(e.to_string()))?
                .map_err(|e| match e {
                    ConvertError::Malformed(e) => IngestError::Malformed(format!("protobuf: {e}")),
                    ConvertError::Arrow(e) => IngestError::Internal(e.to_string()),
                })?;
        let received = converted.accepted() as u64 + converted.rejected;
        self.stats.add_received(received);
        self.stats.add_rejected(RejectReason::Invalid, converted.rejected);
        let Some(batch) = converted.batch else {
            return Ok(ExportOutcome {
                rejected: converted.rejected,
                error_message: converted.error_message,
                ..ExportOutcome::default()
            });
        };
        let rows = batch.num_rows() as u64;
        match self.sink.append_encoded(tenant, batch, encoded).await {
            Ok(out) => {
                self.stats.add_accepted(out.stored as u64);
                self.stats.add_rejected(RejectReason::Duplicate, out.duplicates as u64);
                Ok(ExportOutcome {
                    stored: out.stored,
                    duplicates: out.duplicates,
                    rejected: converted.rejected,
                    error_message: converted.error_message,
                })
            }
            Err(e) => {
                let e = IngestError::from(e);
                self.stats.add_rejected(RejectReason::from_error(&e), rows);
                Err(e)
            }
        }
    }

    /// Counts a request refused before its spans could be decoded.
    pub fn record_refused(&self, e: &IngestError) {
        self.stats.add_refused_request(RejectReason::from_error(e));
    }
}

/// The version of [`recipe`]'s layout.
const RECIPE_V1: u8 = 1;

/// What converting a request again needs besides its bytes: the clock reading
/// and the limits it was first converted under. `[1][now: u64][which limits:
/// u8][max age: u64][max future: u64]`, little-endian.
fn recipe(now_ns: u64, limits: SpanLimits) -> Bytes {
    let mut r = Vec::with_capacity(26);
    r.push(RECIPE_V1);
    r.extend_from_slice(&now_ns.to_le_bytes());
    r.push(u8::from(limits.max_age_ns.is_some()) | (u8::from(limits.max_future_ns.is_some()) << 1));
    r.extend_from_slice(&limits.max_age_ns.unwrap_or(0).to_le_bytes());
    r.extend_from_slice(&limits.max_future_ns.unwrap_or(0).to_le_bytes());
    r.into()
}

/// The receivers' conversion, for a store replaying the OTLP requests its WAL
/// logged ([`SpanSink::append_encoded`]): the same request, clock reading and
/// limits give the same batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct OtlpReconvert;

impl Reconvert for OtlpReconvert {
    fn reconvert(&self, tenant: &Tenant, recipe: &[u8], body: &[u8]) -> Result<Option<RecordBatch>, String> {
        let (&version, rest) = recipe.split_first().ok_or("an empty recipe")?;
        if version != RECIPE_V1 || rest.len() != 25 {
            return Err(format!("a recipe of version {version} and {} bytes", recipe.len()));
        }
        let u64_at = |i: usize| rest.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        let now = u64_at(0).ok_or("recipe")?;
        let which = rest[8];
        let limits = SpanLimits {
            max_age_ns: (which & 1 != 0).then(|| u64_at(9)).flatten(),
            max_future_ns: (which & 2 != 0).then(|| u64_at(17)).flatten(),
        };
        let converted = convert::convert_bytes(body, tenant, now, limits).map_err(|e| e.to_string())?;
        Ok(converted.batch)
    }
}
