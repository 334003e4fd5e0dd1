//! OTLP trace requests to Arrow span batches.
//!
//! This is the single validation and normalisation step every span passes through,
//! whether it came over gRPC, HTTP or `andon import`. Spans that cannot be stored
//! (malformed ids, impossible times, outside the configured age limits) are dropped
//! here and counted, so the receiver can report them as a partial success.
//!
//! A request is read in place from its protobuf bytes ([`crate::wire`]): ids,
//! names and string attributes go from the request's buffer straight into the
//! column builders, and a resource's attributes are read once for all its
//! spans. Only the rarer parts (events, links, attribute values other than
//! strings, integers and booleans) are decoded by prost on the way. OTLP/JSON
//! is decoded by serde and encoded to protobuf first.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use andon_model::schema::{self, ColumnType, SEMCONV, SPAN_KINDS, STATUS_CODES, event_fields, link_fields};
use andon_model::{Tenant, span_schema};
use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Int64Builder, ListArray, MapBuilder, MapFieldNames, StringBuilder, StructArray,
    TimestampNanosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use prost::Message;

use crate::wire::{Fields, Value as WireValue, WireError};

/// Optional bounds on span start times, relative to the receiver's clock.
#[derive(Debug, Clone, Copy)]
pub struct SpanLimits {
    /// Reject spans that started longer ago than this, in nanoseconds.
    pub max_age_ns: Option<u64>,
    /// Reject spans that start further in the future than this, in nanoseconds.
    pub max_future_ns: Option<u64>,
}

/// How far ahead of the receiver's clock a span may start by default: room
/// for skewed clocks, but no span dated years ahead (each hour of span time
/// is a partition of its own).
pub const DEFAULT_MAX_FUTURE_SECS: u64 = 3600;

impl SpanLimits {
    /// No bound either way.
    pub const NONE: SpanLimits = SpanLimits { max_age_ns: None, max_future_ns: None };
}

impl Default for SpanLimits {
    fn default() -> Self {
        Self { max_age_ns: None, max_future_ns: Some(DEFAULT_MAX_FUTURE_SECS * 1_000_000_000) }
    }
}

/// The result of converting one request.
#[derive(Debug)]
pub struct Converted {
    /// The accepted spans; `None` when there were none.
    pub batch: Option<RecordBatch>,
    pub rejected: u64,
    /// Why spans were rejected, for `partial_success.error_message`.
    pub error_message: Option<String>,
}

impl Converted {
    pub fn accepted(&self) -> usize {
        self.batch.as_ref().map_or(0, RecordBatch::num_rows)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    TraceId,
    SpanId,
    ParentSpanId,
    StartTime,
    EndBeforeStart,
    TooOld,
    TooNew,
}

impl Reject {
    const ALL: [Reject; 7] = [
        Reject::TraceId,
        Reject::SpanId,
        Reject::ParentSpanId,
        Reject::StartTime,
        Reject::EndBeforeStart,
        Reject::TooOld,
        Reject::TooNew,
    ];

    fn describe(self) -> &'static str {
        match self {
            Reject::TraceId => "trace_id is not 16 bytes or is all zero",
            Reject::SpanId => "span_id is not 8 bytes or is all zero",
            Reject::ParentSpanId => "parent_span_id is neither empty nor 8 bytes",
            Reject::StartTime => "start_time_unix_nano is missing or out of range",
            Reject::EndBeforeStart => "end_time_unix_nano is before start_time_unix_nano",
            Reject::TooOld => "span is older than the configured limit (otlp.max_span_age_secs, or the retention)",
            Reject::TooNew => "span starts further in the future than the configured limit",
        }
    }
}

fn check(span: &SpanView<'_>, now_ns: u64, limits: SpanLimits) -> Result<(), Reject> {
    let nonzero = |b: &[u8]| b.iter().any(|x| *x != 0);
    if span.trace_id.len() != 16 || !nonzero(span.trace_id) {
        return Err(Reject::TraceId);
    }
    if span.span_id.len() != 8 || !nonzero(span.span_id) {
        return Err(Reject::SpanId);
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(Reject::ParentSpanId);
    }
    if span.start == 0 || span.start > i64::MAX as u64 {
        return Err(Reject::StartTime);
    }
    if span.end < span.start || span.end > i64::MAX as u64 {
        return Err(Reject::EndBeforeStart);
    }
    if let Some(max_age) = limits.max_age_ns
        && span.start < now_ns.saturating_sub(max_age)
    {
        return Err(Reject::TooOld);
    }
    if let Some(max_future) = limits.max_future_ns
        && span.start > now_ns.saturating_add(max_future)
    {
        return Err(Reject::TooNew);
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into<'a>(bytes: &[u8], buf: &'a mut [u8; 32]) -> &'a str {
    for (i, b) in bytes.iter().take(16).enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    let n = 2 * bytes.len().min(16);
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

/// An attribute value as stored in the string maps: scalars in their natural text
/// form, bytes as hex, arrays and key-value lists as JSON.
pub fn any_value_string(v: &AnyValue) -> Option<String> {
    match v.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        other => Some(match any_value_json(other) {
            serde_json::Value::String(s) => s,
            j => j.to_string(),
        }),
    }
}

fn any_value_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::StringValue(s) => J::String(s.clone()),
        Value::BoolValue(b) => J::Bool(*b),
        Value::IntValue(i) => J::from(*i),
        Value::DoubleValue(d) => serde_json::Number::from_f64(*d).map_or_else(|| J::String(d.to_string()), J::Number),
        Value::BytesValue(b) => J::String(b.iter().fold(String::new(), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })),
        Value::ArrayValue(a) => {
            J::Array(a.values.iter().map(|x| x.value.as_ref().map_or(J::Null, any_value_json)).collect())
        }
        Value::KvlistValue(kv) => J::Object(
            kv.values
                .iter()
                .map(|e| {
                    (e.key.clone(), e.value.as_ref().and_then(|x| x.value.as_ref()).map_or(J::Null, any_value_json))
                })
                .collect(),
        ),
        // Any future variant is kept as its debug form rather than dropped.
        #[allow(unreachable_patterns)]
        _ => J::String(format!("{v:?}")),
    }
}

enum SemBuilder {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Boolean(BooleanBuilder),
}

/// An attribute's value, borrowed from the request where it can be.
#[derive(Clone, Debug)]
enum Val<'a> {
    /// No value (a `KeyValue` without one, or an empty `AnyValue`).
    Absent,
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    /// Any other kind, in its stored text form ([`any_value_string`]).
    Other(String),
}

impl<'a> Val<'a> {
    fn of(v: &AnyValue) -> Val<'a> {
        match &v.value {
            None => Val::Absent,
            Some(Value::StringValue(s)) => Val::Str(Cow::Owned(s.clone())),
            Some(Value::IntValue(i)) => Val::Int(*i),
            Some(Value::BoolValue(b)) => Val::Bool(*b),
            Some(_) => Val::Other(any_value_string(v).unwrap_or_default()),
        }
    }

    /// The text stored in the attribute maps.
    fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Val::Absent => None,
            Val::Str(s) => Some(Cow::Borrowed(s.as_ref())),
            Val::Int(i) => Some(Cow::Owned(i.to_string())),
            Val::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Val::Other(s) => Some(Cow::Borrowed(s)),
        }
    }
}

/// One attribute of the request.
#[derive(Clone, Debug)]
struct Kv<'a> {
    key: &'a str,
    value: Val<'a>,
}

/// A semantic-convention value pulled out of the attributes, typed for its column.
#[derive(Clone, Debug)]
enum SemValue<'a> {
    Utf8(Cow<'a, str>),
    Int64(i64),
    Boolean(bool),
}

fn sem_value<'a>(ty: ColumnType, v: &'a Val<'_>) -> Option<SemValue<'a>> {
    match (ty, v) {
        (_, Val::Absent) => None,
        (ColumnType::Int64, Val::Int(i)) => Some(SemValue::Int64(*i)),
        (ColumnType::Int64, Val::Str(s)) => s.trim().parse().ok().map(SemValue::Int64),
        (ColumnType::Boolean, Val::Bool(b)) => Some(SemValue::Boolean(*b)),
        (ColumnType::Boolean, Val::Str(s)) => match s.as_ref() {
            "true" | "1" => Some(SemValue::Boolean(true)),
            "false" | "0" => Some(SemValue::Boolean(false)),
            _ => None,
        },
        (ColumnType::Utf8, v) => v.text().map(SemValue::Utf8),
        _ => None,
    }
}

fn semconv_index(key: &str) -> Option<usize> {
    SEMCONV.iter().position(|s| s.attribute == key)
}

/// The names HTTP instrumentations used before the stable HTTP conventions
/// (semantic conventions 1.21), which many still emit (the Python Flask and
/// requests instrumentations, for one): each fills its column when the
/// current name is absent, and is kept in `attributes` under its own name.
const LEGACY: &[(&str, &str)] = &[
    ("http.method", "http.request.method"),
    ("http.status_code", "http.response.status_code"),
    ("http.user_agent", "user_agent.original"),
];

/// Splits attributes into semantic-convention values (by `SEMCONV` index) and
/// the rest, whose indices go to `rest`.
fn split_attributes<'a>(attrs: &'a [Kv<'_>], sem: &mut [Option<SemValue<'a>>], rest: &mut Vec<usize>) {
    rest.clear();
    // Which columns the attributes' current names set (SEMCONV has fewer than 64).
    let mut current = 0u64;
    for (i, kv) in attrs.iter().enumerate() {
        let typed = semconv_index(kv.key).and_then(|idx| sem_value(SEMCONV[idx].ty, &kv.value).map(|v| (idx, v)));
        match typed {
            Some((idx, v)) => {
                sem[idx] = Some(v);
                current |= 1 << idx;
            }
            None => {
                let legacy = LEGACY.iter().find(|(old, _)| *old == kv.key).and_then(|(_, new)| semconv_index(new));
                if let Some(idx) = legacy
                    && current & (1 << idx) == 0
                    && let Some(v) = sem_value(SEMCONV[idx].ty, &kv.value)
                {
                    sem[idx] = Some(v);
                }
                rest.push(i);
            }
        }
    }
}

fn map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    let names = MapFieldNames { entry: "key_value".into(), key: "key".into(), value: "value".into() };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

fn append_map(
    b: &mut MapBuilder<StringBuilder, StringBuilder>,
    entries: impl IntoIterator<Item = (impl AsRef<str>, Option<impl AsRef<str>>)>,
) -> Result<(), ArrowError> {
    for (k, v) in entries {
        b.keys().append_value(k);
        b.values().append_option(v);
    }
    b.append(true)
}

struct Builders {
    tenant: StringBuilder,
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    trace_state: StringBuilder,
    name: StringBuilder,
    kind: StringBuilder,
    start: TimestampNanosecondBuilder,
    end: TimestampNanosecondBuilder,
    duration: Int64Builder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    sem: Vec<SemBuilder>,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
    exception_type: StringBuilder,
    exception_message: StringBuilder,
    resource_attributes: MapBuilder<StringBuilder, StringBuilder>,
    attributes: MapBuilder<StringBuilder, StringBuilder>,
    event_offsets: Vec<i32>,
    event_time: TimestampNanosecondBuilder,
    event_name: StringBuilder,
    event_attributes: MapBuilder<StringBuilder, StringBuilder>,
    link_offsets: Vec<i32>,
    link_trace_id: StringBuilder,
    link_span_id: StringBuilder,
    link_trace_state: StringBuilder,
    link_attributes: MapBuilder<StringBuilder, StringBuilder>,
}

impl Builders {
    fn new(capacity: usize) -> Self {
        let s = || StringBuilder::with_capacity(capacity, capacity * 16);
        Self {
            tenant: s(),
            trace_id: StringBuilder::with_capacity(capacity, capacity * 32),
            span_id: StringBuilder::with_capacity(capacity, capacity * 16),
            parent_span_id: StringBuilder::with_capacity(capacity, capacity * 16),
            trace_state: s(),
            name: s(),
            kind: s(),
            start: TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            end: TimestampNanosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            duration: Int64Builder::with_capacity(capacity),
            status_code: s(),
            status_message: s(),
            sem: SEMCONV
                .iter()
                .map(|c| match c.ty {
                    ColumnType::Utf8 => SemBuilder::Utf8(s()),
                    ColumnType::Int64 => SemBuilder::Int64(Int64Builder::with_capacity(capacity)),
                    ColumnType::Boolean => SemBuilder::Boolean(BooleanBuilder::with_capacity(capacity)),
                })
                .collect(),
            scope_name: s(),
            scope_version: s(),
            exception_type: s(),
            exception_message: s(),
            resource_attributes: map_builder(),
            attributes: map_builder(),
            event_offsets: vec![0],
            event_time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            event_name: StringBuilder::new(),
            event_attributes: map_builder(),
            link_offsets: vec![0],
            link_trace_id: StringBuilder::new(),
            link_span_id: StringBuilder::new(),
            link_trace_state: StringBuilder::new(),
            link_attributes: map_builder(),
        }
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.tenant.finish()),
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.status_code.finish()),
            Arc::new(self.status_message.finish()),
        ];
        for b in &mut self.sem {
            cols.push(match b {
                SemBuilder::Utf8(b) => Arc::new(b.finish()),
                SemBuilder::Int64(b) => Arc::new(b.finish()),
                SemBuilder::Boolean(b) => Arc::new(b.finish()),
            });
        }
        let events = StructArray::try_new(
            event_fields(),
            vec![
                Arc::new(self.event_time.finish()),
                Arc::new(self.event_name.finish()),
                Arc::new(self.event_attributes.finish()),
            ],
            None,
        )?;
        let links = StructArray::try_new(
            link_fields(),
            vec![
                Arc::new(self.link_trace_id.finish()),
                Arc::new(self.link_span_id.finish()),
                Arc::new(self.link_trace_state.finish()),
                Arc::new(self.link_attributes.finish()),
            ],
            None,
        )?;
        let item = |f| Arc::new(Field::new("item", DataType::Struct(f), true));
        cols.extend([
            Arc::new(self.scope_name.finish()) as ArrayRef,
            Arc::new(self.scope_version.finish()),
            Arc::new(self.exception_type.finish()),
            Arc::new(self.exception_message.finish()),
            Arc::new(self.resource_attributes.finish()),
            Arc::new(self.attributes.finish()),
            Arc::new(ListArray::try_new(
                item(event_fields()),
                OffsetBuffer::new(self.event_offsets.into()),
                Arc::new(events),
                None,
            )?),
            Arc::new(ListArray::try_new(
                item(link_fields()),
                OffsetBuffer::new(self.link_offsets.into()),
                Arc::new(links),
                None,
            )?),
        ]);
        // The builders reserved room for every column of every span, most of
        // it unused by sparse columns; the batch waits in the store's buffer,
        // whose size decides when to flush, so it keeps only what it holds.
        for c in &mut cols {
            Array::shrink_to_fit(c);
        }
        RecordBatch::try_new(span_schema(), cols)
    }
}

fn opt_str(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Why a request could not be converted.
#[derive(Debug)]
pub enum ConvertError {
    /// The bytes are not an `ExportTraceServiceRequest`: the client's fault.
    Malformed(WireError),
    /// Building the batch failed: Andon's fault.
    Arrow(ArrowError),
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Malformed(e) => write!(f, "protobuf: {e}"),
            ConvertError::Arrow(e) => write!(f, "building the span batch: {e}"),
        }
    }
}

impl std::error::Error for ConvertError {}

impl From<WireError> for ConvertError {
    fn from(e: WireError) -> Self {
        ConvertError::Malformed(e)
    }
}

impl From<ArrowError> for ConvertError {
    fn from(e: ArrowError) -> Self {
        ConvertError::Arrow(e)
    }
}

fn prost_err(what: &str, e: prost::DecodeError) -> WireError {
    WireError(format!("{what}: {e}"))
}

/// Bytes of Arrow a converted span costs besides its attributes: ids,
/// times, names, status and the builders' offsets.
const ROW_OVERHEAD: usize = 160;

/// What converting a request builds, found without converting it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of Arrow the spans take: each row copies its resource's and its
    /// scope's attributes, so a small request can decode into far more memory
    /// than it took on the wire.
    pub cost: usize,
    pub spans: usize,
}

/// Walks a request's messages down to its spans, without reading them, for
/// what converting it would build.
pub fn scan(body: &[u8]) -> Result<Scanned, WireError> {
    let mut out = Scanned::default();
    let mut req = Fields::new(body);
    while let Some((n, v)) = req.next()? {
        if n != 1 {
            continue;
        }
        let rs = v.bytes("ResourceSpans")?;
        let mut resource = 0usize;
        let mut fields = Fields::new(rs);
        while let Some((n, v)) = fields.next()? {
            if n == 1 {
                resource += attributes_len(v.bytes("Resource")?, 1)?;
            }
        }
        let mut fields = Fields::new(rs);
        while let Some((n, v)) = fields.next()? {
            if n != 2 {
                continue;
            }
            let ss = v.bytes("ScopeSpans")?;
            let (mut scope, mut spans, mut span_bytes) = (0usize, 0usize, 0usize);
            let mut fields = Fields::new(ss);
            while let Some((n, v)) = fields.next()? {
                match n {
                    1 => {
                        let mut f = Fields::new(v.bytes("InstrumentationScope")?);
                        while let Some((n, v)) = f.next()? {
                            match n {
                                1 | 2 => scope += v.bytes("InstrumentationScope.name or version")?.len(),
                                3 => scope += v.bytes("InstrumentationScope.attributes")?.len(),
                                _ => {}
                            }
                        }
                    }
                    2 => {
                        spans += 1;
                        span_bytes = span_bytes.saturating_add(v.bytes("Span")?.len());
                    }
                    _ => {}
                }
            }
            let shared = resource + scope + ROW_OVERHEAD;
            out.cost = out.cost.saturating_add(span_bytes).saturating_add(shared.saturating_mul(spans));
            out.spans += spans;
        }
    }
    Ok(out)
}

/// The bytes of the attributes (field `tag`) of a message.
fn attributes_len(msg: &[u8], tag: u32) -> Result<usize, WireError> {
    let mut n = 0;
    let mut f = Fields::new(msg);
    while let Some((t, v)) = f.next()? {
        if t == tag {
            n += v.bytes("attributes")?.len();
        }
    }
    Ok(n)
}

/// Checks that the string fields `tags` of a message Andon does not read
/// are UTF-8, as a full decode would.
fn check_strings(msg: &[u8], what: &str, tags: &[u32]) -> Result<(), WireError> {
    let mut f = Fields::new(msg);
    while let Some((t, v)) = f.next()? {
        if tags.contains(&t) {
            v.str(what)?;
        }
    }
    Ok(())
}

/// An `AnyValue`: one string, integer or boolean is read in place; anything
/// else (other kinds, a value given in parts) is decoded whole.
#[inline]
fn any_value<'a>(parts: &[&'a [u8]]) -> Result<Val<'a>, WireError> {
    if let [one] = parts {
        let mut f = Fields::new(one);
        let first = f.next()?;
        if f.next()?.is_none() {
            match first {
                None => return Ok(Val::Absent),
                Some((1, v @ WireValue::Bytes(_))) => {
                    return Ok(Val::Str(Cow::Borrowed(v.str("AnyValue.string_value")?)));
                }
                Some((2, WireValue::Varint(b))) => return Ok(Val::Bool(b != 0)),
                Some((3, WireValue::Varint(i))) => return Ok(Val::Int(i as i64)),
                _ => {}
            }
        }
    }
    let decoded = match parts {
        [one] => AnyValue::decode(*one),
        _ => AnyValue::decode(parts.concat().as_slice()),
    };
    Ok(Val::of(&decoded.map_err(|e| prost_err("AnyValue", e))?))
}

/// A `KeyValue`.
#[inline]
fn key_value(msg: &[u8]) -> Result<Kv<'_>, WireError> {
    let mut key = "";
    let mut parts: [&[u8]; 1] = [&[]];
    let mut more: Vec<&[u8]> = Vec::new();
    let mut values = 0;
    let mut f = Fields::new(msg);
    while let Some((t, v)) = f.next()? {
        match t {
            1 => key = v.str("KeyValue.key")?,
            2 => {
                let b = v.bytes("KeyValue.value")?;
                if values == 0 {
                    parts[0] = b;
                } else {
                    if values == 1 {
                        more.push(parts[0]);
                    }
                    more.push(b);
                }
                values += 1;
            }
            3 => {
                v.int32("KeyValue.key_strindex")?;
            }
            _ => {}
        }
    }
    let value = match values {
        0 => Val::Absent,
        1 => any_value(&parts)?,
        _ => any_value(&more)?,
    };
    Ok(Kv { key, value })
}

/// The fields of a span Andon reads, borrowed from the request.
#[derive(Debug, Default)]
struct SpanView<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    parent_span_id: &'a [u8],
    trace_state: &'a str,
    name: &'a str,
    kind: i32,
    start: u64,
    end: u64,
    status_code: i32,
    status_message: &'a str,
}

/// Buffers reused from span to span.
#[derive(Default)]
struct Scratch<'a> {
    attrs: Vec<Kv<'a>>,
    events: Vec<Event>,
    links: Vec<Link>,
}

/// Reads one span into `view` and `scratch`.
fn read_span<'a>(msg: &'a [u8], view: &mut SpanView<'a>, scratch: &mut Scratch<'a>) -> Result<(), WireError> {
    *view = SpanView::default();
    scratch.attrs.clear();
    scratch.events.clear();
    scratch.links.clear();
    let mut f = Fields::new(msg);
    while let Some((t, v)) = f.next()? {
        match t {
            1 => view.trace_id = v.bytes("Span.trace_id")?,
            2 => view.span_id = v.bytes("Span.span_id")?,
            3 => view.trace_state = v.str("Span.trace_state")?,
            4 => view.parent_span_id = v.bytes("Span.parent_span_id")?,
            5 => view.name = v.str("Span.name")?,
            6 => view.kind = v.int32("Span.kind")?,
            7 => view.start = v.fixed64("Span.start_time_unix_nano")?,
            8 => view.end = v.fixed64("Span.end_time_unix_nano")?,
            9 => scratch.attrs.push(key_value(v.bytes("Span.attributes")?)?),
            10 | 12 | 14 => {
                v.varint("Span.dropped_count")?;
            }
            11 => scratch.events.push(Event::decode(v.bytes("Span.events")?).map_err(|e| prost_err("Span.events", e))?),
            13 => scratch.links.push(Link::decode(v.bytes("Span.links")?).map_err(|e| prost_err("Span.links", e))?),
            15 => {
                // Given twice, a message is merged: read each into the same fields.
                let mut s = Fields::new(v.bytes("Span.status")?);
                while let Some((t, v)) = s.next()? {
                    match t {
                        2 => view.status_message = v.str("Status.message")?,
                        3 => view.status_code = v.int32("Status.code")?,
                        _ => {}
                    }
                }
            }
            16 => {
                v.fixed32("Span.flags")?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Converts a decoded request into one span batch for `tenant`.
pub fn convert_request(
    req: &ExportTraceServiceRequest,
    tenant: &Tenant,
    now_ns: u64,
    limits: SpanLimits,
) -> Result<Converted, ConvertError> {
    convert_bytes(&req.encode_to_vec(), tenant, now_ns, limits)
}

/// Converts an encoded `ExportTraceServiceRequest` into one span batch for
/// `tenant`, reading the protobuf in place.
pub fn convert_bytes(body: &[u8], tenant: &Tenant, now_ns: u64, limits: SpanLimits) -> Result<Converted, ConvertError> {
    let spans = scan(body)?.spans;
    convert_scanned(body, spans, tenant, now_ns, limits)
}

/// [`convert_bytes`] for a request [`scan`] has already walked: `spans` is
/// its span count, the builders' capacity.
pub fn convert_scanned(
    body: &[u8],
    spans: usize,
    tenant: &Tenant,
    now_ns: u64,
    limits: SpanLimits,
) -> Result<Converted, ConvertError> {
    let mut b = Builders::new(spans);
    let mut rejected = [0u64; Reject::ALL.len()];
    let mut accepted = 0usize;
    let mut hex = [0u8; 32];
    let mut scratch = Scratch::default();
    let mut view = SpanView::default();
    let mut res_attrs: Vec<Kv<'_>> = Vec::new();
    let mut res_rest: Vec<usize> = Vec::new();
    let mut span_rest: Vec<usize> = Vec::new();

    let mut req = Fields::new(body);
    while let Some((n, v)) = req.next()? {
        if n != 1 {
            continue;
        }
        let rs = v.bytes("ExportTraceServiceRequest.resource_spans")?;
        // The resource may follow its spans on the wire: read it first.
        res_attrs.clear();
        let mut fields = Fields::new(rs);
        while let Some((n, v)) = fields.next()? {
            match n {
                1 => {
                    let mut f = Fields::new(v.bytes("ResourceSpans.resource")?);
                    while let Some((t, v)) = f.next()? {
                        match t {
                            1 => res_attrs.push(key_value(v.bytes("Resource.attributes")?)?),
                            2 => {
                                v.varint("Resource.dropped_attributes_count")?;
                            }
                            3 => check_strings(v.bytes("Resource.entity_refs")?, "EntityRef", &[1, 2, 3, 4])?,
                            _ => {}
                        }
                    }
                }
                3 => {
                    v.str("ResourceSpans.schema_url")?;
                }
                _ => {}
            }
        }
        let mut res_sem: Vec<Option<SemValue<'_>>> = vec![None; SEMCONV.len()];
        split_attributes(&res_attrs, &mut res_sem, &mut res_rest);

        let mut fields = Fields::new(rs);
        while let Some((n, v)) = fields.next()? {
            if n != 2 {
                continue;
            }
            let ss = v.bytes("ResourceSpans.scope_spans")?;
            let (mut scope_name, mut scope_version) = ("", "");
            let mut f = Fields::new(ss);
            while let Some((n, v)) = f.next()? {
                match n {
                    1 => {
                        let mut s = Fields::new(v.bytes("ScopeSpans.scope")?);
                        while let Some((t, v)) = s.next()? {
                            match t {
                                1 => scope_name = v.str("InstrumentationScope.name")?,
                                2 => scope_version = v.str("InstrumentationScope.version")?,
                                3 => {
                                    key_value(v.bytes("InstrumentationScope.attributes")?)?;
                                }
                                4 => {
                                    v.varint("InstrumentationScope.dropped_attributes_count")?;
                                }
                                _ => {}
                            }
                        }
                    }
                    3 => {
                        v.str("ScopeSpans.schema_url")?;
                    }
                    _ => {}
                }
            }
            let mut f = Fields::new(ss);
            while let Some((n, v)) = f.next()? {
                if n != 2 {
                    continue;
                }
                read_span(v.bytes("ScopeSpans.spans")?, &mut view, &mut scratch)?;
                if let Err(r) = check(&view, now_ns, limits) {
                    rejected[r as usize] += 1;
                    continue;
                }
                accepted += 1;
                append_span(
                    &mut b,
                    tenant,
                    &view,
                    &scratch,
                    &res_attrs,
                    &res_sem,
                    &res_rest,
                    (scope_name, scope_version),
                    &mut span_rest,
                    &mut hex,
                )?;
            }
        }
    }

    let rejected_total: u64 = rejected.iter().sum();
    let error_message = (rejected_total > 0).then(|| {
        let reasons: Vec<String> = Reject::ALL
            .iter()
            .zip(rejected)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{n} with {}", r.describe()))
            .collect();
        format!("{rejected_total} spans rejected: {}", reasons.join("; "))
    });
    let batch = if accepted > 0 { Some(b.finish()?) } else { None };
    Ok(Converted { batch, rejected: rejected_total, error_message })
}

/// Appends one accepted span's row.
#[allow(clippy::too_many_arguments)]
fn append_span<'a>(
    b: &mut Builders,
    tenant: &Tenant,
    span: &SpanView<'a>,
    scratch: &Scratch<'a>,
    res_attrs: &[Kv<'_>],
    res_sem: &[Option<SemValue<'_>>],
    res_rest: &[usize],
    (scope_name, scope_version): (&str, &str),
    span_rest: &mut Vec<usize>,
    hex: &mut [u8; 32],
) -> Result<(), ArrowError> {
    b.tenant.append_value(tenant.as_str());
    b.trace_id.append_value(hex_into(span.trace_id, hex));
    b.span_id.append_value(hex_into(span.span_id, hex));
    if span.parent_span_id.iter().any(|x| *x != 0) {
        b.parent_span_id.append_value(hex_into(span.parent_span_id, hex));
    } else {
        b.parent_span_id.append_null();
    }
    b.trace_state.append_option(opt_str(span.trace_state));
    b.name.append_value(span.name);
    let kind = usize::try_from(span.kind).ok().and_then(|k| SPAN_KINDS.get(k));
    b.kind.append_value(kind.copied().unwrap_or("unspecified"));
    let start = span.start as i64;
    let end = span.end as i64;
    b.start.append_value(start);
    b.end.append_value(end);
    b.duration.append_value(end - start);
    let code = usize::try_from(span.status_code).ok().and_then(|c| STATUS_CODES.get(c));
    b.status_code.append_value(code.copied().unwrap_or("unset"));
    b.status_message.append_option(opt_str(span.status_message));

    let mut span_sem: [Option<SemValue<'_>>; SEMCONV.len()] = [const { None }; SEMCONV.len()];
    split_attributes(&scratch.attrs, &mut span_sem, span_rest);
    for (i, builder) in b.sem.iter_mut().enumerate() {
        let v = span_sem[i].as_ref().or(res_sem[i].as_ref());
        match (builder, v) {
            (SemBuilder::Utf8(bb), Some(SemValue::Utf8(s))) => bb.append_value(s),
            (SemBuilder::Utf8(bb), None) if SEMCONV[i].column == schema::SEMCONV[0].column => {
                bb.append_value("unknown_service")
            }
            (SemBuilder::Utf8(bb), _) => bb.append_null(),
            (SemBuilder::Int64(bb), Some(SemValue::Int64(x))) => bb.append_value(*x),
            (SemBuilder::Int64(bb), _) => bb.append_null(),
            (SemBuilder::Boolean(bb), Some(SemValue::Boolean(x))) => bb.append_value(*x),
            (SemBuilder::Boolean(bb), _) => bb.append_null(),
        }
    }
    b.scope_name.append_option(opt_str(scope_name));
    b.scope_version.append_option(opt_str(scope_version));

    // A semantic-convention attribute set on the span overrides the resource's,
    // so the resource's copy stays in the resource map only when unused.
    append_map(&mut b.resource_attributes, res_rest.iter().map(|i| (res_attrs[*i].key, res_attrs[*i].value.text())))?;
    append_map(&mut b.attributes, span_rest.iter().map(|i| (scratch.attrs[*i].key, scratch.attrs[*i].value.text())))?;

    let mut exception: Option<(Option<String>, Option<String>)> = None;
    for ev in &scratch.events {
        b.event_time.append_value(ev.time_unix_nano.min(i64::MAX as u64) as i64);
        b.event_name.append_value(&ev.name);
        append_map(
            &mut b.event_attributes,
            ev.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref().and_then(any_value_string))),
        )?;
        if exception.is_none() && ev.name == "exception" {
            let get = |k: &str| {
                ev.attributes.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.as_ref()).and_then(any_value_string)
            };
            exception = Some((get("exception.type"), get("exception.message")));
        }
    }
    let (et, em) = exception.unwrap_or_default();
    b.exception_type.append_option(et);
    b.exception_message.append_option(em);
    let next_event = b.event_offsets.last().copied().unwrap_or(0) + scratch.events.len() as i32;
    b.event_offsets.push(next_event);

    for link in &scratch.links {
        b.link_trace_id.append_value(hex_into(&link.trace_id, hex));
        b.link_span_id.append_value(hex_into(&link.span_id, hex));
        b.link_trace_state.append_option(opt_str(&link.trace_state));
        append_map(
            &mut b.link_attributes,
            link.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref().and_then(any_value_string))),
        )?;
    }
    let next_link = b.link_offsets.last().copied().unwrap_or(0) + scratch.links.len() as i32;
    b.link_offsets.push(next_link);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(k: &str, v: Value) -> KeyValue {
        KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
    }

    fn span(id: u8) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: vec![id; 8],
            name: "GET /cart".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_250_000_000,
            attributes: vec![
                kv("http.route", Value::StringValue("/cart".into())),
                kv("http.response.status_code", Value::IntValue(503)),
                kv("browser.mobile", Value::BoolValue(true)),
                kv("custom.flag", Value::BoolValue(false)),
            ],
            status: Some(Status { code: 2, message: "boom".into() }),
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", Value::StringValue("cart".into())),
                        kv("browser.mobile", Value::BoolValue(false)),
                        kv("k8s.pod.name", Value::StringValue("cart-1".into())),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn columns_and_maps_are_filled() {
        let c = convert_request(&request(vec![span(2)]), &Tenant::default_tenant(), 0, SpanLimits::NONE).unwrap();
        let batch = c.batch.unwrap();
        let col = |n: &str| batch.column_by_name(n).unwrap().clone();
        assert_eq!(col("trace_id").as_string::<i32>().value(0), "01".repeat(16));
        assert!(col("parent_span_id").is_null(0));
        assert_eq!(col("kind").as_string::<i32>().value(0), "server");
        assert_eq!(col("status_code").as_string::<i32>().value(0), "error");
        assert_eq!(col("duration_ns").as_primitive::<Int64Type>().value(0), 250_000_000);
        assert_eq!(col("http_response_status_code").as_primitive::<Int64Type>().value(0), 503);
        assert!(col("browser_mobile").as_boolean().value(0), "the span's value wins over the resource's");
        let attrs = col("attributes");
        let attrs = attrs.as_map();
        let keys = attrs.keys().as_string::<i32>();
        assert_eq!(attrs.value_length(0), 1, "only custom.flag stays in the map");
        assert_eq!(keys.value(0), "custom.flag");
        assert_eq!(attrs.values().as_string::<i32>().value(0), "false");
        let res = col("resource_attributes");
        assert_eq!(res.as_map().keys().as_string::<i32>().value(0), "k8s.pod.name");
    }

    #[test]
    fn a_converted_batch_holds_its_contents_not_the_room_reserved_for_them() {
        let spans = (0..500).map(|i| span((i % 250) as u8)).collect();
        let c = convert_request(&request(spans), &Tenant::default_tenant(), 0, SpanLimits::NONE).unwrap();
        let batch = c.batch.unwrap();
        // The Arrow IPC stream holds each buffer's used bytes (padded to 8).
        let mut ipc = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema()).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        let held = batch.get_array_memory_size();
        assert!(
            (held as f64) < 1.1 * ipc.len() as f64,
            "the store counts {held} bytes against its flush size for {} bytes of spans",
            ipc.len()
        );
    }

    #[test]
    fn pre_stable_http_names_fill_the_columns_when_the_current_ones_are_absent() {
        let mut old = span(2);
        old.attributes = vec![
            kv("http.method", Value::StringValue("POST".into())),
            kv("http.status_code", Value::IntValue(502)),
            kv("http.route", Value::StringValue("/checkout/pay".into())),
        ];
        let mut both = span(3);
        both.attributes =
            vec![kv("http.response.status_code", Value::IntValue(200)), kv("http.status_code", Value::IntValue(500))];
        let c = convert_request(&request(vec![old, both]), &Tenant::default_tenant(), 0, SpanLimits::NONE).unwrap();
        let batch = c.batch.unwrap();
        let col = |n: &str| batch.column_by_name(n).unwrap().clone();
        assert_eq!(col("http_request_method").as_string::<i32>().value(0), "POST");
        assert_eq!(col("http_response_status_code").as_primitive::<Int64Type>().value(0), 502);
        assert_eq!(col("http_response_status_code").as_primitive::<Int64Type>().value(1), 200, "the current name wins");
        let attrs = col("attributes");
        let map = attrs.as_map();
        let entries = map.value(0);
        let keys: Vec<&str> = entries.column(0).as_string::<i32>().iter().flatten().collect();
        assert!(keys.contains(&"http.method"), "kept under its own name: {keys:?}");
    }

    #[test]
    fn invalid_spans_are_counted_not_stored() {
        let mut bad_trace = span(3);
        bad_trace.trace_id = vec![0; 16];
        let mut bad_span = span(4);
        bad_span.span_id = vec![1, 2, 3];
        let mut backwards = span(5);
        backwards.end_time_unix_nano = 1;
        let c = convert_request(
            &request(vec![span(2), bad_trace, bad_span, backwards]),
            &Tenant::default_tenant(),
            0,
            SpanLimits::NONE,
        )
        .unwrap();
        assert_eq!(c.accepted(), 1);
        assert_eq!(c.rejected, 3);
        let msg = c.error_message.unwrap();
        assert!(msg.starts_with("3 spans rejected"), "{msg}");
        assert!(msg.contains("trace_id"), "{msg}");
    }

    #[test]
    fn by_default_a_span_an_hour_ahead_is_kept_and_one_a_year_ahead_is_rejected() {
        let start = 1_700_000_000_000_000_000u64;
        let hour = 3_600 * 1_000_000_000u64;
        // span(2) starts at `start`; the receiver's clock is behind it.
        let ahead = |by: u64| {
            let c =
                convert_request(&request(vec![span(2)]), &Tenant::default_tenant(), start - by, SpanLimits::default())
                    .unwrap();
            (c.accepted(), c.rejected)
        };
        assert_eq!(ahead(hour - 1_000_000_000), (1, 0));
        assert_eq!(ahead(365 * 24 * hour), (0, 1));
    }

    #[test]
    fn age_limits_apply_only_when_set() {
        let now = 1_700_000_000_000_000_000 + 3_600 * 1_000_000_000;
        let limits = SpanLimits { max_age_ns: Some(60 * 1_000_000_000), max_future_ns: None };
        let c = convert_request(&request(vec![span(2)]), &Tenant::default_tenant(), now, limits).unwrap();
        assert_eq!((c.accepted(), c.rejected), (0, 1));
        assert!(c.batch.is_none());
    }

    /// A request with every kind of field the converter reads: two resources
    /// (one given after its spans), scopes, events with an exception, links,
    /// every kind of attribute value, legacy HTTP names and invalid spans.
    fn rich() -> ExportTraceServiceRequest {
        use opentelemetry_proto::tonic::common::v1::{ArrayValue, InstrumentationScope, KeyValueList};
        use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
        let mut a = span(2);
        a.parent_span_id = vec![9; 8];
        a.trace_state = "k=v".into();
        a.attributes.extend([
            kv("http.method", Value::StringValue("GET".into())),
            kv("http.request.resend_count", Value::StringValue(" 2 ".into())),
            kv("ratio", Value::DoubleValue(0.25)),
            kv("raw", Value::BytesValue(vec![0xde, 0xad])),
            kv("list", Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::IntValue(1)) }] })),
            kv("nested", Value::KvlistValue(KeyValueList { values: vec![kv("x", Value::BoolValue(true))] })),
            KeyValue { key: "empty".into(), value: None, ..Default::default() },
        ]);
        a.events = vec![
            Event { time_unix_nano: 5, name: "retry".into(), ..Default::default() },
            Event {
                time_unix_nano: 6,
                name: "exception".into(),
                attributes: vec![
                    kv("exception.type", Value::StringValue("Timeout".into())),
                    kv("exception.message", Value::StringValue("took too long".into())),
                ],
                ..Default::default()
            },
        ];
        a.links = vec![Link {
            trace_id: vec![3; 16],
            span_id: vec![4; 8],
            attributes: vec![kv("why", Value::StringValue("follows".into()))],
            ..Default::default()
        }];
        let mut b = span(3);
        b.kind = 3;
        b.status = None;
        b.attributes = vec![
            kv("session.id", Value::StringValue("s-1".into())),
            kv("browser.mobile", Value::StringValue("1".into())),
        ];
        let mut bad = span(4);
        bad.span_id = vec![0; 8];
        let mut req = request(vec![a, b, bad]);
        req.resource_spans[0].scope_spans[0].scope =
            Some(InstrumentationScope { name: "lib".into(), version: "1.2".into(), ..Default::default() });
        let mut other = request(vec![span(5)]);
        other.resource_spans[0].resource.as_mut().unwrap().attributes =
            vec![kv("service.name", Value::StringValue("pay".into())), kv("cloud.region", Value::IntValue(7))];
        req.resource_spans.extend(other.resource_spans);
        req
    }

    /// The resource of the second `ResourceSpans`, moved after its spans.
    fn reordered(req: &ExportTraceServiceRequest) -> Vec<u8> {
        let mut out = Vec::new();
        for rs in &req.resource_spans {
            let mut inner = Vec::new();
            for ss in &rs.scope_spans {
                prost::encoding::message::encode(2, ss, &mut inner);
            }
            if let Some(r) = &rs.resource {
                prost::encoding::message::encode(1, r, &mut inner);
            }
            prost::encoding::bytes::encode(1, &inner, &mut out);
        }
        out
    }

    #[test]
    fn fields_in_any_order_read_as_prost_reads_them() {
        let req = rich();
        let tenant = Tenant::default_tenant();
        let canonical = convert_request(&req, &tenant, 0, SpanLimits::NONE).unwrap();
        let bytes = reordered(&req);
        assert_eq!(ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap(), req);
        let moved = convert_bytes(&bytes, &tenant, 0, SpanLimits::NONE).unwrap();
        assert_eq!(canonical.batch, moved.batch);
        assert_eq!((canonical.accepted(), canonical.rejected), (3, 1));
        let batch = canonical.batch.unwrap();
        let col = |n: &str| batch.column_by_name(n).unwrap().clone();
        assert_eq!(col("service_name").as_string::<i32>().value(2), "pay");
        assert_eq!(col("cloud_region").as_string::<i32>().value(2), "7", "an integer in a string column");
        assert_eq!(col("http_request_method").as_string::<i32>().value(0), "GET");
        assert_eq!(col("http_request_resend_count").as_primitive::<Int64Type>().value(0), 2);
        assert!(col("browser_mobile").as_boolean().value(1), "\"1\" is true");
        assert_eq!(col("exception_type").as_string::<i32>().value(0), "Timeout");
        assert_eq!(col("scope_name").as_string::<i32>().value(0), "lib");
        let attrs = col("attributes");
        let map = attrs.as_map().value(0);
        let text: Vec<(String, Option<String>)> = (0..map.len())
            .map(|i| {
                let v = map.column(1).as_string::<i32>();
                (map.column(0).as_string::<i32>().value(i).to_owned(), v.is_valid(i).then(|| v.value(i).to_owned()))
            })
            .collect();
        for (k, v) in [
            ("ratio", Some("0.25")),
            ("raw", Some("dead")),
            ("list", Some("[1]")),
            ("nested", Some("{\"x\":true}")),
            ("empty", None),
            ("custom.flag", Some("false")),
        ] {
            assert!(text.contains(&(k.to_owned(), v.map(str::to_owned))), "{k}: {text:?}");
        }
    }

    /// Damaged requests: the converter accepts exactly those prost decodes,
    /// and reads each as prost does.
    #[test]
    fn damaged_requests_are_refused_or_read_exactly_as_prost_reads_them() {
        let tenant = Tenant::default_tenant();
        let base = rich().encode_to_vec();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..4_000 {
            let mut bytes = base.clone();
            for _ in 0..(1 + next() % 3) {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 4 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    2 => bytes.truncate(at),
                    _ => bytes.insert(at, next() as u8),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let theirs = ExportTraceServiceRequest::decode(bytes.as_slice());
            let ours = convert_bytes(&bytes, &tenant, 0, SpanLimits::NONE);
            match (theirs, ours) {
                (Ok(req), Ok(ours)) => {
                    let expected = convert_request(&req, &tenant, 0, SpanLimits::NONE).unwrap();
                    assert_eq!(expected.batch, ours.batch, "{bytes:?}");
                    assert_eq!(expected.rejected, ours.rejected, "{bytes:?}");
                    accepted += 1;
                }
                (Err(_), Err(ConvertError::Malformed(_))) => refused += 1,
                (theirs, ours) => panic!("prost: {theirs:?}\nours: {ours:?}\nbytes: {bytes:?}"),
            }
        }
        assert!(accepted > 100 && refused > 100, "both kinds seen: {accepted} read, {refused} refused");
    }

    #[test]
    fn the_scan_counts_what_conversion_builds() {
        let req = rich();
        let bytes = req.encode_to_vec();
        let s = scan(&bytes).unwrap();
        assert_eq!(s.spans, 4, "the rejected span is counted too");
        let span_bytes: usize = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(Message::encoded_len)
            .sum();
        assert!(s.cost >= span_bytes + 4 * ROW_OVERHEAD, "{s:?}");
        assert!(scan(&bytes[..bytes.len() - 1]).is_err());
    }
}
