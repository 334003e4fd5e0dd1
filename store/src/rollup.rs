//! `span_metrics`: spans rolled up per minute, as Tempo's metrics-generator and
//! the Collector's spanmetrics connector do, so that detection reads cells of
//! minutes instead of every span.
//!
//! A cell is one minute of one tenant's spans of one service, operation (the
//! detectors' definition: `METHOD route` for HTTP server spans, else the span
//! name), span kind and set of segment values. It holds the requests, the
//! failures, the failures that started in the span itself (no child of it
//! failed), and the log-spaced latency histogram of the requests that
//! succeeded (20 buckets per factor e, the latency detector's), with the sum
//! of their log latencies.
//!
//! Segment values that describe the person (device, OS, region) are the
//! session's, taken from the spans that start its traces (a browser's or an
//! app's root spans) and only from its other spans when no root carries them:
//! a backend's resource says `os.type=linux`, which describes the server.
//! Values that describe the process (`service.version`) are the span's own.
//!
//! Each segment file has its rollup, written at the same flush from the same
//! batches, under `metrics/` with the segment's own relative path. It is
//! written before the flush is checkpointed, so after a crash the WAL replay
//! writes segment and rollup again, and a rollup whose segment is gone is
//! deleted on start: a span is counted exactly once. Compaction merges the
//! rollups of its inputs, retention deletes a rollup with its segment, and a
//! segment without a rollup (stored before rollups existed) gets one in the
//! background. The buffered spans, not yet in any segment, are rolled up when
//! a query reads the table. With a bucket, a rollup is also uploaded before
//! the checkpoint (see `remote`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use andon_model::Tenant;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Builder, Int64Array, Int64Builder, ListBuilder,
    RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimestampNanosecondType};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::dedup::IdBuild;
use crate::error::StoreError;
use crate::sessions::span_key;
use crate::sql::SegmentColumn;
use crate::wal::sync_dir;
use crate::{Segment, Store};

/// Latency histogram buckets per factor e of duration: about 5% apart.
pub const BUCKETS_PER_E: f64 = 20.0;

const NANOS_PER_MINUTE: i64 = 60_000_000_000;

/// How long a session's values and a failed span's parent are remembered for
/// the spans that follow them.
const CONTEXT_HORIZON_NS: i64 = 3_600 * 1_000_000_000;

/// How many sessions and failed spans [`RollupContext`] remembers at most,
/// over every tenant. A client opening a new session (or failing a span)
/// with every span could otherwise grow it for [`CONTEXT_HORIZON_NS`] at
/// whatever rate the receivers take (a session with the default three
/// per-session segment columns takes about 150 bytes, a failed span 17).
/// Past it the older half is forgotten: their later spans are rolled up with
/// their own values only, and a failed span whose failed child was forgotten
/// counts as failing by itself.
pub const MAX_CONTEXT: usize = 1_000_000;

/// The log bucket of a duration, as the latency detector's SQL computes it:
/// `floor(ln(greatest(duration_ns, 1000)) * 20)`.
pub fn latency_bucket(duration_ns: i64) -> i32 {
    ((duration_ns.max(1_000) as f64).ln() * BUCKETS_PER_E).floor() as i32
}

/// The dimensions of the rollups: the configured segment attributes, with
/// `service.version` always among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupSpec {
    pub segments: Vec<SegmentColumn>,
}

impl RollupSpec {
    pub fn new(attributes: &[String]) -> Result<Self, String> {
        let mut segments: Vec<SegmentColumn> =
            attributes.iter().map(|a| crate::sql::segment_column(a)).collect::<Result<_, _>>()?;
        if !segments.iter().any(|s| s.attribute == "service.version") {
            segments.push(crate::sql::segment_column("service.version")?);
        }
        Ok(Self { segments })
    }

    /// The schema of `span_metrics`.
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("minute", andon_model::schema::timestamp_type(), false),
            Field::new("service_name", DataType::Utf8, false),
            Field::new("operation", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
        ];
        for s in &self.segments {
            let ty = if s.boolean { DataType::Boolean } else { DataType::Utf8 };
            fields.push(Field::new(s.column, ty, true));
        }
        fields.extend([
            Field::new("requests", DataType::Int64, false),
            Field::new("errors", DataType::Int64, false),
            Field::new("own_errors", DataType::Int64, false),
            Field::new("latency_buckets", DataType::List(Arc::new(Field::new("item", DataType::Int32, false))), false),
            Field::new("latency_counts", DataType::List(Arc::new(Field::new("item", DataType::Int64, false))), false),
            Field::new("log_latency_sum", DataType::Float64, false),
        ]);
        Arc::new(Schema::new(fields))
    }
}

/// What a span's cell needs from other spans: its session's values, and
/// whether a child of it failed. Sessions and spans are kept by a 64-bit
/// hash of their ids ([`session_key`], [`span_key`]) and values once each
/// ([`Interned`]): the context holds every session and failed span of the
/// last [`CONTEXT_HORIZON_NS`], so its entries must be small.
#[derive(Debug, Default)]
struct TenantContext {
    /// Per session: the largest value of each per-session segment column
    /// among its root spans and among all its spans, and when it was last
    /// noted.
    sessions: HashMap<u64, SessionValues, IdBuild>,
    /// Spans with a failed child, and when noted.
    failed_children: HashMap<u64, i64, IdBuild>,
    values: Interned,
}

impl TenantContext {
    fn len(&self) -> usize {
        self.sessions.len() + self.failed_children.len()
    }
}

/// A session's values: for each per-session segment column (in the spec's
/// order, [`PerSession`]), the largest among its root spans, then for each
/// the largest among all its spans.
#[derive(Debug)]
struct SessionValues {
    values: Box<[Option<Arc<str>>]>,
    seen: i64,
}

impl SessionValues {
    /// Per-session column `k` of `n`: its roots' value, else any span's.
    fn value(&self, k: usize, n: usize) -> Option<&str> {
        self.values[k].as_deref().or_else(|| self.values[n + k].as_deref())
    }
}

/// Where each segment column's value sits among a session's values: its
/// place among the per-session columns, `None` for the span's own.
struct PerSession {
    slot: Vec<Option<usize>>,
    count: usize,
}

impl PerSession {
    fn of(spec: &RollupSpec) -> Self {
        let mut count = 0;
        let slot = spec
            .segments
            .iter()
            .map(|s| {
                s.per_session.then(|| {
                    count += 1;
                    count - 1
                })
            })
            .collect();
        Self { slot, count }
    }
}

/// Segment values, each kept once: a session's holds a pointer, not a copy.
#[derive(Debug, Default)]
pub(crate) struct Interned(HashSet<Arc<str>>);

impl Interned {
    /// Past this many, the set starts again (the sessions keep theirs).
    const MOST: usize = 100_000;

    pub(crate) fn get(&mut self, v: &str) -> Arc<str> {
        if let Some(k) = self.0.get(v) {
            return Arc::clone(k);
        }
        if self.0.len() >= Self::MOST {
            self.0.clear();
        }
        let k: Arc<str> = Arc::from(v);
        self.0.insert(Arc::clone(&k));
        k
    }
}

/// The key a session is remembered by.
fn session_key(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// Keeps in `slot` the larger of it and `v`.
pub(crate) fn keep_max(slot: &mut Option<Arc<str>>, v: &str, values: &mut Interned) {
    if slot.as_deref().is_none_or(|cur| v > cur) {
        *slot = Some(values.get(v));
    }
}

/// Keeps in every tenant's context what was noted at a time `keep` keeps.
fn retain(by_tenant: &mut HashMap<Tenant, TenantContext>, keep: impl Fn(i64) -> bool) {
    by_tenant.retain(|_, c| {
        c.sessions.retain(|_, s| keep(s.seen));
        c.failed_children.retain(|_, at| keep(*at));
        c.len() > 0
    });
}

/// A column of `batch` as text (booleans as `true`/`false`), if it has it.
fn text_column(batch: &RecordBatch, name: &str) -> Option<ArrayRef> {
    let c = batch.column_by_name(name)?;
    arrow::compute::cast(c, &DataType::Utf8).ok()
}

/// The context of every tenant, kept as spans arrive.
#[derive(Debug)]
pub struct RollupContext {
    spec: RollupSpec,
    by_tenant: Mutex<HashMap<Tenant, TenantContext>>,
    max: usize,
}

impl RollupContext {
    pub fn new(spec: RollupSpec) -> Self {
        Self::with_max(spec, MAX_CONTEXT)
    }

    /// Remembering at most `max` sessions and failed spans over every tenant.
    pub fn with_max(spec: RollupSpec, max: usize) -> Self {
        Self { spec, by_tenant: Mutex::default(), max: max.max(2) }
    }

    pub fn spec(&self) -> &RollupSpec {
        &self.spec
    }

    /// Notes the session values and failed spans of `batch`.
    pub fn note(&self, tenant: &Tenant, batch: &RecordBatch, now_ns: i64) {
        let mut by_tenant = self.by_tenant.lock();
        note_into(&self.spec, by_tenant.entry(tenant.clone()).or_default(), batch, now_ns);
        let before: usize = by_tenant.values().map(TenantContext::len).sum();
        if before > self.max {
            let times: Vec<i64> = by_tenant
                .values()
                .flat_map(|c| c.sessions.values().map(|s| s.seen).chain(c.failed_children.values().copied()))
                .collect();
            let keep = crate::arrivals::older_half_forgotten(times, self.max);
            retain(&mut by_tenant, keep);
            let after: usize = by_tenant.values().map(TenantContext::len).sum();
            tracing::warn!(
                forgotten = before - after,
                kept = after,
                "more recent sessions and failed spans than the rollups' context keeps: the older ones are forgotten"
            );
        }
    }

    /// Forgets what was last noted longer than the horizon before `now_ns`.
    pub fn prune(&self, now_ns: i64) {
        let cutoff = now_ns - CONTEXT_HORIZON_NS;
        retain(&mut self.by_tenant.lock(), |at| at >= cutoff);
    }

    /// How many sessions and failed spans it remembers, over every tenant.
    #[cfg(test)]
    pub fn remembered(&self) -> usize {
        self.by_tenant.lock().values().map(TenantContext::len).sum()
    }

    /// The cells of `batches` (one tenant's), with the context noted so far.
    pub fn roll_up(&self, tenant: &Tenant, batches: &[RecordBatch]) -> Result<RecordBatch, StoreError> {
        let mut r = self.rolling(tenant);
        for b in batches {
            r.add(b)?;
        }
        r.finish()
    }

    /// Cells of one tenant's spans given a batch at a time ([`RollingUp::add`]),
    /// each with the context noted by then: a flush rolls up each slice of a
    /// segment as it writes it.
    pub fn rolling<'a>(&'a self, tenant: &'a Tenant) -> RollingUp<'a> {
        RollingUp { context: self, tenant, cells: Cells::default() }
    }

    /// The cells of spans read back from a segment, with only that segment's
    /// own spans as context (a segment stored before rollups existed).
    pub fn roll_up_alone(&self, batches: &[RecordBatch]) -> Result<RecordBatch, StoreError> {
        let mut ctx = TenantContext::default();
        for b in batches {
            note_into(&self.spec, &mut ctx, b, 0);
        }
        let mut cells = Cells::default();
        for b in batches {
            cells.add_spans(&self.spec, &ctx, b)?;
        }
        cells.finish(&self.spec)
    }

    /// Merges rollups (a compaction's inputs) into one.
    pub fn merge(&self, batches: &[RecordBatch]) -> Result<RecordBatch, StoreError> {
        let mut cells = Cells::default();
        for b in batches {
            cells.add_rows(&self.spec, b)?;
        }
        cells.finish(&self.spec)
    }
}

/// A rollup being built a batch at a time ([`RollupContext::rolling`]).
pub struct RollingUp<'a> {
    context: &'a RollupContext,
    tenant: &'a Tenant,
    cells: Cells,
}

impl RollingUp<'_> {
    /// Adds the cells of `batch`'s spans.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        let by_tenant = self.context.by_tenant.lock();
        let empty = TenantContext::default();
        let ctx = by_tenant.get(self.tenant).unwrap_or(&empty);
        self.cells.add_spans(&self.context.spec, ctx, batch)
    }

    /// The cells of every batch added.
    pub fn finish(self) -> Result<RecordBatch, StoreError> {
        self.cells.finish(&self.context.spec)
    }
}

fn note_into(spec: &RollupSpec, ctx: &mut TenantContext, batch: &RecordBatch, now_ns: i64) {
    let n = batch.num_rows();
    let sessions = text_column(batch, "session_id");
    let parents = text_column(batch, "parent_span_id");
    let traces = text_column(batch, "trace_id");
    let status = text_column(batch, "status_code");
    let slots = PerSession::of(spec);
    let per_session: Vec<(usize, Option<ArrayRef>)> = spec
        .segments
        .iter()
        .zip(&slots.slot)
        .filter_map(|(s, k)| Some(((*k)?, text_column(batch, s.column))))
        .collect();
    let width = slots.count;
    fn str_at(a: &Option<ArrayRef>, r: usize) -> Option<&str> {
        let a = a.as_ref()?;
        (!a.is_null(r)).then(|| a.as_string::<i32>().value(r))
    }
    let mut key_buf = String::new();
    let TenantContext { sessions: by_session, failed_children, values } = ctx;
    for r in 0..n {
        let parent = str_at(&parents, r).filter(|p| !p.is_empty());
        if let Some(sid) = str_at(&sessions, r) {
            let s = by_session
                .entry(session_key(sid))
                .or_insert_with(|| SessionValues { values: vec![None; 2 * width].into(), seen: now_ns });
            s.seen = s.seen.max(now_ns);
            for (k, col) in &per_session {
                let Some(col) = col else { continue };
                if col.is_null(r) {
                    continue;
                }
                let v = col.as_string::<i32>().value(r);
                keep_max(&mut s.values[width + k], v, values);
                if parent.is_none() {
                    keep_max(&mut s.values[*k], v, values);
                }
            }
        }
        if str_at(&status, r) == Some("error")
            && let (Some(p), Some(t)) = (parent, str_at(&traces, r))
        {
            failed_children.insert(span_key(&mut key_buf, t, p), now_ns);
        }
    }
}

type CellKey = (i64, String, String, String, Vec<Option<String>>);

/// A cell's key borrowed from a batch row, to find its cell without
/// allocating: it hashes as the [`CellKey`] it equals.
struct CellRef<'a> {
    minute: i64,
    service: &'a str,
    operation: &'a str,
    kind: &'a str,
    values: &'a [Option<&'a str>],
}

impl std::hash::Hash for CellRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the tuple `CellKey` hashes: each field in order, the values as a slice.
        self.minute.hash(state);
        self.service.hash(state);
        self.operation.hash(state);
        self.kind.hash(state);
        self.values.hash(state);
    }
}

impl hashbrown::Equivalent<CellKey> for CellRef<'_> {
    fn equivalent(&self, key: &CellKey) -> bool {
        self.minute == key.0
            && self.service == key.1
            && self.operation == key.2
            && self.kind == key.3
            && self.values.len() == key.4.len()
            && self.values.iter().zip(&key.4).all(|(a, b)| *a == b.as_deref())
    }
}

impl CellRef<'_> {
    fn to_owned(&self) -> CellKey {
        (
            self.minute,
            self.service.to_owned(),
            self.operation.to_owned(),
            self.kind.to_owned(),
            self.values.iter().map(|v| v.map(str::to_owned)).collect(),
        )
    }
}

#[derive(Debug, Default, Clone)]
struct Cell {
    requests: i64,
    errors: i64,
    own_errors: i64,
    latency: BTreeMap<i32, i64>,
    log_sum: f64,
}

/// Cells being summed.
#[derive(Debug, Default)]
struct Cells {
    cells: hashbrown::HashMap<CellKey, Cell>,
}

impl Cells {
    fn add_spans(&mut self, spec: &RollupSpec, ctx: &TenantContext, batch: &RecordBatch) -> Result<(), StoreError> {
        let need = |name: &str| {
            text_column(batch, name).ok_or_else(|| StoreError::Corrupt(format!("spans lack column {name}")))
        };
        let (service, name, kind, status) = (need("service_name")?, need("name")?, need("kind")?, need("status_code")?);
        let (trace, span) = (need("trace_id")?, need("span_id")?);
        let route = text_column(batch, "http_route");
        let method = text_column(batch, "http_request_method");
        let session = text_column(batch, "session_id");
        let segs: Vec<Option<ArrayRef>> = spec.segments.iter().map(|s| text_column(batch, s.column)).collect();
        let start = batch
            .column_by_name("start_time")
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .ok_or_else(|| StoreError::Corrupt("spans lack start_time".into()))?;
        let duration = batch
            .column_by_name("duration_ns")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| StoreError::Corrupt("spans lack duration_ns".into()))?;
        fn s(a: &ArrayRef, r: usize) -> Option<&str> {
            (!a.is_null(r)).then(|| a.as_string::<i32>().value(r))
        }
        let per_session = PerSession::of(spec);
        // Reused across rows: a cell already seen is found without allocating.
        let (mut composed, mut key_buf) = (String::new(), String::new());
        let mut values: Vec<Option<&str>> = Vec::with_capacity(spec.segments.len());
        for r in 0..batch.num_rows() {
            if start.is_null(r) {
                continue;
            }
            let minute = start.value(r).div_euclid(NANOS_PER_MINUTE) * NANOS_PER_MINUTE;
            let span_name = s(&name, r).unwrap_or_default();
            let operation = match (route.as_ref().and_then(|a| s(a, r)), method.as_ref().and_then(|a| s(a, r))) {
                (None, _) => span_name,
                (Some(route), None) => route,
                (Some(route), Some(method)) => {
                    composed.clear();
                    composed.push_str(method);
                    composed.push(' ');
                    composed.push_str(route);
                    composed.as_str()
                }
            };
            let sv = session.as_ref().and_then(|a| s(a, r)).and_then(|id| ctx.sessions.get(&session_key(id)));
            values.clear();
            values.extend(segs.iter().zip(&per_session.slot).map(|(col, slot)| {
                let from_session = slot.and_then(|k| sv.and_then(|v| v.value(k, per_session.count)));
                from_session.or_else(|| col.as_ref().and_then(|a| s(a, r)))
            }));
            let key = CellRef {
                minute,
                service: s(&service, r).unwrap_or("unknown_service"),
                operation,
                kind: s(&kind, r).unwrap_or_default(),
                values: &values,
            };
            let cell = match self.cells.get_mut(&key) {
                Some(cell) => cell,
                None => self.cells.entry(key.to_owned()).or_default(),
            };
            cell.requests += 1;
            if s(&status, r) == Some("error") {
                cell.errors += 1;
                let failed_child = match (s(&trace, r), s(&span, r)) {
                    (Some(t), Some(sp)) => ctx.failed_children.contains_key(&span_key(&mut key_buf, t, sp)),
                    _ => false,
                };
                if !failed_child {
                    cell.own_errors += 1;
                }
            } else {
                let d = if duration.is_null(r) { 0 } else { duration.value(r) };
                *cell.latency.entry(latency_bucket(d)).or_default() += 1;
                cell.log_sum += (d.max(1_000) as f64).ln();
            }
        }
        Ok(())
    }

    fn add_rows(&mut self, spec: &RollupSpec, batch: &RecordBatch) -> Result<(), StoreError> {
        let bad = |c: &str| StoreError::Corrupt(format!("span_metrics lack column {c}"));
        let int =
            |c: &str| batch.column_by_name(c).and_then(|a| a.as_primitive_opt::<Int64Type>()).ok_or_else(|| bad(c));
        let minute = batch
            .column_by_name("minute")
            .and_then(|a| a.as_primitive_opt::<TimestampNanosecondType>())
            .ok_or_else(|| bad("minute"))?;
        let text = |c: &str| text_column(batch, c).ok_or_else(|| bad(c));
        let (service, operation, kind) = (text("service_name")?, text("operation")?, text("kind")?);
        let segs: Vec<Option<ArrayRef>> = spec.segments.iter().map(|s| text_column(batch, s.column)).collect();
        let (requests, errors, own) = (int("requests")?, int("errors")?, int("own_errors")?);
        let buckets = batch
            .column_by_name("latency_buckets")
            .and_then(|a| a.as_list_opt::<i32>())
            .ok_or_else(|| bad("latency_buckets"))?;
        let counts = batch
            .column_by_name("latency_counts")
            .and_then(|a| a.as_list_opt::<i32>())
            .ok_or_else(|| bad("latency_counts"))?;
        let log_sum = batch
            .column_by_name("log_latency_sum")
            .and_then(|a| a.as_primitive_opt::<arrow::datatypes::Float64Type>())
            .ok_or_else(|| bad("log_latency_sum"))?;
        for r in 0..batch.num_rows() {
            let values = segs
                .iter()
                .map(|c| c.as_ref().filter(|a| !a.is_null(r)).map(|a| a.as_string::<i32>().value(r).to_owned()))
                .collect();
            let key = (
                minute.value(r),
                service.as_string::<i32>().value(r).to_owned(),
                operation.as_string::<i32>().value(r).to_owned(),
                kind.as_string::<i32>().value(r).to_owned(),
                values,
            );
            let cell = self.cells.entry(key).or_default();
            cell.requests += requests.value(r);
            cell.errors += errors.value(r);
            cell.own_errors += own.value(r);
            cell.log_sum += log_sum.value(r);
            let (b, c) = (buckets.value(r), counts.value(r));
            let (b, c) = (b.as_primitive::<Int32Type>(), c.as_primitive::<Int64Type>());
            for i in 0..b.len().min(c.len()) {
                *cell.latency.entry(b.value(i)).or_default() += c.value(i);
            }
        }
        Ok(())
    }

    fn finish(self, spec: &RollupSpec) -> Result<RecordBatch, StoreError> {
        let mut rows: Vec<(CellKey, Cell)> = self.cells.into_iter().collect();
        // Sorted as people and detectors filter: service, operation, time.
        rows.sort_by(|a, b| (&a.0.1, &a.0.2, a.0.0, &a.0.3, &a.0.4).cmp(&(&b.0.1, &b.0.2, b.0.0, &b.0.3, &b.0.4)));
        let schema = spec.schema();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampNanosecondArray::from(rows.iter().map(|r| r.0.0).collect::<Vec<_>>()).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(rows.iter().map(|r| r.0.1.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.0.2.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.0.3.as_str()).collect::<Vec<_>>())),
        ];
        for (i, s) in spec.segments.iter().enumerate() {
            let values = rows.iter().map(|r| r.0.4[i].as_deref());
            if s.boolean {
                columns
                    .push(Arc::new(values.map(|v| v.and_then(|v| v.parse::<bool>().ok())).collect::<BooleanArray>()));
            } else {
                columns.push(Arc::new(values.collect::<StringArray>()));
            }
        }
        columns.push(Arc::new(Int64Array::from(rows.iter().map(|r| r.1.requests).collect::<Vec<_>>())));
        columns.push(Arc::new(Int64Array::from(rows.iter().map(|r| r.1.errors).collect::<Vec<_>>())));
        columns.push(Arc::new(Int64Array::from(rows.iter().map(|r| r.1.own_errors).collect::<Vec<_>>())));
        let mut buckets = ListBuilder::new(Int32Builder::new()).with_field(Field::new("item", DataType::Int32, false));
        let mut counts = ListBuilder::new(Int64Builder::new()).with_field(Field::new("item", DataType::Int64, false));
        for (_, cell) in &rows {
            for (b, c) in &cell.latency {
                buckets.values().append_value(*b);
                counts.values().append_value(*c);
            }
            buckets.append(true);
            counts.append(true);
        }
        columns.push(Arc::new(buckets.finish()));
        columns.push(Arc::new(counts.finish()));
        columns.push(Arc::new(Float64Array::from(rows.iter().map(|r| r.1.log_sum).collect::<Vec<_>>())));
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// Where the rollup of the segment at `segment` lives: the same path under
/// `metrics/` instead of `segments/`.
pub fn metrics_path(data_dir: &Path, segment: &Path) -> Option<PathBuf> {
    let rel = segment.strip_prefix(data_dir.join("segments")).ok()?;
    Some(data_dir.join("metrics").join(rel))
}

/// Rows per row group of rollup and sessions files: small enough that a
/// query of a few of a file's hours skips the others' row groups.
const SMALL_ROW_GROUP: usize = 16_384;

/// Writes a rollup or a sessions file durably (temporary file, sync, rename,
/// directory sync, and the two directories above a new one).
pub fn write_small_parquet(path: &Path, batch: &RecordBatch, fsync: bool) -> Result<u64, StoreError> {
    write_small_parquet_batches(path, batch.schema(), [Ok(batch.clone())], fsync)
}

/// [`write_small_parquet`] of batches written as they come, none held after
/// it is written.
pub fn write_small_parquet_batches(
    path: &Path,
    schema: SchemaRef,
    batches: impl IntoIterator<Item = Result<RecordBatch, StoreError>>,
    fsync: bool,
) -> Result<u64, StoreError> {
    let dir = path.parent().ok_or_else(|| StoreError::Corrupt(format!("{} has no directory", path.display())))?;
    let new_dir = !dir.exists();
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("parquet.tmp");
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(SMALL_ROW_GROUP))
        .build();
    let write = || -> Result<File, StoreError> {
        let mut w = ArrowWriter::try_new(File::create(&tmp)?, schema, Some(props))?;
        for batch in batches {
            w.write(&batch?)?;
        }
        let file = w.into_inner()?;
        if fsync {
            file.sync_all()?;
        }
        Ok(file)
    };
    let file = write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    let bytes = file.metadata()?.len();
    drop(file);
    fs::rename(&tmp, path)?;
    if fsync {
        sync_dir(dir)?;
        if new_dir {
            for d in dir.ancestors().skip(1).take(2) {
                sync_dir(d)?;
            }
        }
    }
    Ok(bytes)
}

/// Reads a rollup or sessions file back.
pub fn read_small_parquet(path: &Path) -> Result<Vec<RecordBatch>, StoreError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?.build()?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// Every rollup file under `data_dir/metrics`; temporary files and rollups
/// whose segment is not among `segments` (a flush that was never checkpointed,
/// inputs of a finished compaction) are deleted. Returns the segments that
/// have their rollup.
pub fn load_metrics(data_dir: &Path, segments: &[Segment]) -> Result<HashSet<PathBuf>, StoreError> {
    let wanted: HashMap<PathBuf, PathBuf> =
        segments.iter().filter_map(|s| Some((metrics_path(data_dir, &s.path)?, s.path.clone()))).collect();
    let mut have = HashSet::new();
    let root = data_dir.join("metrics");
    if !root.exists() {
        return Ok(have);
    }
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir)? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            match wanted.get(&path) {
                Some(segment) if path.extension().is_some_and(|x| x == "parquet") => {
                    have.insert(segment.clone());
                }
                _ => {
                    tracing::info!(path = %path.display(), "removing a rollup without its segment");
                    fs::remove_file(&path)?;
                }
            }
        }
    }
    Ok(have)
}

/// Deletes the rollup of a segment, if it has one.
pub fn remove_metrics(data_dir: &Path, segment: &Path) {
    if let Some(p) = metrics_path(data_dir, segment) {
        match fs::remove_file(&p) {
            Ok(()) => {
                if let Some(dir) = p.parent() {
                    let _ = fs::remove_dir(dir);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %p.display(), error = %e, "could not delete a rollup"),
        }
    }
}

/// The SQL table `span_metrics` of one tenant (every tenant's for operators):
/// the rollups of the segments, and of the buffered spans at the time of the
/// scan.
#[derive(Debug)]
pub(crate) struct MetricsTable {
    pub(crate) store: Store,
    pub(crate) tenant: Option<Tenant>,
}

#[async_trait]
impl TableProvider for MetricsTable {
    fn schema(&self) -> SchemaRef {
        self.store.rollups().spec().schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let mut hours = (i64::MIN, i64::MAX);
        for f in filters {
            crate::table::narrow("minute", f, &mut hours);
        }
        let (files, buffered) = self.store.metrics_snapshot(self.tenant.as_ref(), hours);
        let mut rolled = Vec::new();
        for (tenant, batches) in buffered {
            let b = self
                .store
                .rollups()
                .roll_up(&tenant, &batches)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            if b.num_rows() > 0 {
                rolled.push(b);
            }
        }
        crate::table::files_and_memory(state, self.schema(), &files, &[rolled], projection, limit, None, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_detectors_sql() {
        // floor(ln(1e6) * 20) = floor(276.31) = 276
        assert_eq!(latency_bucket(1_000_000), 276);
        // Below a microsecond counts as one.
        assert_eq!(latency_bucket(10), latency_bucket(1_000));
    }

    fn spec() -> RollupSpec {
        RollupSpec::new(&["os.type".to_owned()]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A server span in minute 0: (session, trace, span, parent, os, failed).
    type Span<'a> = (&'a str, &'a str, &'a str, &'a str, Option<&'a str>, bool);

    /// Server spans; a root span is the browser's (`web`), the others the
    /// backend's (`shop`).
    fn spans(rows: &[Span<'_>]) -> RecordBatch {
        let text = |name: &str, v: Vec<Option<&str>>| -> (Field, ArrayRef) {
            (Field::new(name, DataType::Utf8, true), Arc::new(StringArray::from(v)))
        };
        let mut cols = vec![
            text("session_id", rows.iter().map(|r| Some(r.0)).collect()),
            text("trace_id", rows.iter().map(|r| Some(r.1)).collect()),
            text("span_id", rows.iter().map(|r| Some(r.2)).collect()),
            text("parent_span_id", rows.iter().map(|r| (!r.3.is_empty()).then_some(r.3)).collect()),
            text("os_type", rows.iter().map(|r| r.4).collect()),
            text("service_name", rows.iter().map(|r| Some(if r.3.is_empty() { "web" } else { "shop" })).collect()),
            text("name", vec![Some("op"); rows.len()]),
            text("kind", vec![Some("server"); rows.len()]),
            text("status_code", rows.iter().map(|r| Some(if r.5 { "error" } else { "ok" })).collect()),
            text("service_version", vec![Some("1.0"); rows.len()]),
        ];
        cols.push((
            Field::new("start_time", andon_model::schema::timestamp_type(), true),
            Arc::new(TimestampNanosecondArray::from(vec![0; rows.len()]).with_timezone("UTC")),
        ));
        cols.push((
            Field::new("duration_ns", DataType::Int64, true),
            Arc::new(Int64Array::from(vec![1_000_000; rows.len()])),
        ));
        let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = cols.into_iter().unzip();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Per rolled-up cell: (service, os, requests, errors, own errors).
    fn cells(batch: &RecordBatch) -> Vec<(String, Option<String>, i64, i64, i64)> {
        let col = |n: &str| batch.column_by_name(n).unwrap_or_else(|| panic!("no {n}"));
        let (service, os) = (col("service_name").as_string::<i32>(), col("os_type").as_string::<i32>());
        let int = |n: &str| col(n).as_primitive::<Int64Type>().clone();
        let (req, err, own) = (int("requests"), int("errors"), int("own_errors"));
        let mut out: Vec<_> = (0..batch.num_rows())
            .map(|r| {
                let os = (!os.is_null(r)).then(|| os.value(r).to_owned());
                (service.value(r).to_owned(), os, req.value(r), err.value(r), own.value(r))
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_backend_span_takes_its_session_s_values_and_a_failure_below_it_is_not_its_own() {
        let ctx = RollupContext::new(spec());
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        // The browser's root span says iOS; the backend's span, its child,
        // says nothing, fails, and has a failing child of its own.
        ctx.note(&t, &spans(&[("s1", "t1", "a", "", Some("ios"), true)]), 1);
        let backend = spans(&[("s1", "t1", "b", "a", None, true), ("s1", "t1", "c", "b", None, true)]);
        ctx.note(&t, &backend, 2);
        let rolled = ctx.roll_up(&t, &[backend]).unwrap_or_else(|e| panic!("{e}"));
        // Both backend spans are counted as iOS; `b` failed because `c` did.
        assert_eq!(cells(&rolled), vec![("shop".to_owned(), Some("ios".to_owned()), 2, 2, 1)]);
        // The browser's span failed because the backend did.
        let root =
            ctx.roll_up(&t, &[spans(&[("s1", "t1", "a", "", Some("ios"), true)])]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cells(&root), vec![("web".to_owned(), Some("ios".to_owned()), 1, 1, 0)]);
        // A session never noted has no values to lend.
        let other = ctx.roll_up(&t, &[spans(&[("s2", "t2", "b", "a", None, true)])]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cells(&other), vec![("shop".to_owned(), None, 1, 1, 1)]);
    }

    #[test]
    fn past_its_bound_the_context_forgets_the_sessions_noted_longest_ago() {
        let ctx = RollupContext::with_max(spec(), 10);
        let t = Tenant::new("default").unwrap_or_else(|e| panic!("{e}"));
        let session = |i: i64| format!("s{i}");
        for i in 0..25 {
            let id = session(i);
            ctx.note(&t, &spans(&[(&id, &format!("t{i}"), "a", "", Some("android"), false)]), i);
            assert!(ctx.remembered() <= 10, "{} remembered after {} sessions", ctx.remembered(), i + 1);
        }
        let os_of = |i: i64| {
            let id = session(i);
            let rolled = ctx
                .roll_up(&t, &[spans(&[(&id, &format!("t{i}"), "b", "a", None, false)])])
                .unwrap_or_else(|e| panic!("{e}"));
            cells(&rolled)[0].1.clone()
        };
        // The latest sessions still lend their values; the first are forgotten.
        assert_eq!(os_of(24), Some("android".to_owned()));
        assert_eq!(os_of(20), Some("android".to_owned()));
        assert_eq!(os_of(0), None);
        assert_eq!(os_of(9), None);
        // The horizon forgets the rest.
        ctx.prune(24 + CONTEXT_HORIZON_NS + 1);
        assert_eq!(ctx.remembered(), 0);
    }
}
