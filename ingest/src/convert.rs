//! OTLP trace requests to Arrow span batches.
//!
//! This is the single validation and normalisation step every span passes through,
//! whether it came over gRPC, HTTP or `andon import`. Spans that cannot be stored
//! (malformed ids, impossible times, outside the configured age limits) are dropped
//! here and counted, so the receiver can report them as a partial success.

use std::fmt::Write as _;
use std::sync::Arc;

use andon_model::schema::{self, ColumnType, SEMCONV, SPAN_KINDS, STATUS_CODES, event_fields, link_fields};
use andon_model::{Tenant, span_schema};
use arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, ListArray, MapBuilder, MapFieldNames, StringBuilder, StructArray,
    TimestampNanosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;

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

fn check(span: &Span, now_ns: u64, limits: SpanLimits) -> Result<(), Reject> {
    let nonzero = |b: &[u8]| b.iter().any(|x| *x != 0);
    if span.trace_id.len() != 16 || !nonzero(&span.trace_id) {
        return Err(Reject::TraceId);
    }
    if span.span_id.len() != 8 || !nonzero(&span.span_id) {
        return Err(Reject::SpanId);
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(Reject::ParentSpanId);
    }
    if span.start_time_unix_nano == 0 || span.start_time_unix_nano > i64::MAX as u64 {
        return Err(Reject::StartTime);
    }
    if span.end_time_unix_nano < span.start_time_unix_nano || span.end_time_unix_nano > i64::MAX as u64 {
        return Err(Reject::EndBeforeStart);
    }
    if let Some(max_age) = limits.max_age_ns
        && span.start_time_unix_nano < now_ns.saturating_sub(max_age)
    {
        return Err(Reject::TooOld);
    }
    if let Some(max_future) = limits.max_future_ns
        && span.start_time_unix_nano > now_ns.saturating_add(max_future)
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

/// A semantic-convention value pulled out of the attributes, typed for its column.
#[derive(Clone, Debug)]
enum SemValue {
    Utf8(String),
    Int64(i64),
    Boolean(bool),
}

fn sem_value(ty: ColumnType, v: &AnyValue) -> Option<SemValue> {
    let val = v.value.as_ref()?;
    match (ty, val) {
        (ColumnType::Int64, Value::IntValue(i)) => Some(SemValue::Int64(*i)),
        (ColumnType::Int64, Value::StringValue(s)) => s.trim().parse().ok().map(SemValue::Int64),
        (ColumnType::Boolean, Value::BoolValue(b)) => Some(SemValue::Boolean(*b)),
        (ColumnType::Boolean, Value::StringValue(s)) => match s.as_str() {
            "true" | "1" => Some(SemValue::Boolean(true)),
            "false" | "0" => Some(SemValue::Boolean(false)),
            _ => None,
        },
        (ColumnType::Utf8, _) => any_value_string(v).map(SemValue::Utf8),
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

/// Splits attributes into semantic-convention values (by `SEMCONV` index) and the rest.
fn split_attributes(attrs: &[KeyValue], sem: &mut [Option<SemValue>]) -> Vec<(usize, Option<String>)> {
    let mut rest = Vec::new();
    let mut current = vec![false; sem.len()];
    for (i, kv) in attrs.iter().enumerate() {
        let typed = semconv_index(&kv.key)
            .and_then(|idx| kv.value.as_ref().and_then(|v| sem_value(SEMCONV[idx].ty, v)).map(|v| (idx, v)));
        match typed {
            Some((idx, v)) => {
                sem[idx] = Some(v);
                current[idx] = true;
            }
            None => {
                let legacy = LEGACY.iter().find(|(old, _)| *old == kv.key).and_then(|(_, new)| semconv_index(new));
                if let Some(idx) = legacy
                    && !current[idx]
                    && let Some(v) = kv.value.as_ref().and_then(|v| sem_value(SEMCONV[idx].ty, v))
                {
                    sem[idx] = Some(v);
                }
                rest.push((i, kv.value.as_ref().and_then(any_value_string)));
            }
        }
    }
    rest
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
        RecordBatch::try_new(span_schema(), cols)
    }
}

fn opt_str(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// Converts a request into one span batch for `tenant`.
pub fn convert_request(
    req: &ExportTraceServiceRequest,
    tenant: &Tenant,
    now_ns: u64,
    limits: SpanLimits,
) -> Result<Converted, ArrowError> {
    let total: usize = req.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
    let mut b = Builders::new(total);
    let mut rejected = [0u64; Reject::ALL.len()];
    let mut accepted = 0usize;
    let mut hex = [0u8; 32];

    for rs in &req.resource_spans {
        let empty = Vec::new();
        let res_attrs = rs.resource.as_ref().map_or(&empty, |r| &r.attributes);
        let mut res_sem: Vec<Option<SemValue>> = vec![None; SEMCONV.len()];
        let res_rest = split_attributes(res_attrs, &mut res_sem);

        for ss in &rs.scope_spans {
            let (scope_name, scope_version) =
                ss.scope.as_ref().map_or(("", ""), |s| (s.name.as_str(), s.version.as_str()));
            for span in &ss.spans {
                if let Err(r) = check(span, now_ns, limits) {
                    rejected[r as usize] += 1;
                    continue;
                }
                accepted += 1;
                b.tenant.append_value(tenant.as_str());
                b.trace_id.append_value(hex_into(&span.trace_id, &mut hex));
                b.span_id.append_value(hex_into(&span.span_id, &mut hex));
                if span.parent_span_id.iter().any(|x| *x != 0) {
                    b.parent_span_id.append_value(hex_into(&span.parent_span_id, &mut hex));
                } else {
                    b.parent_span_id.append_null();
                }
                b.trace_state.append_option(opt_str(&span.trace_state));
                b.name.append_value(&span.name);
                let kind = usize::try_from(span.kind).ok().and_then(|k| SPAN_KINDS.get(k));
                b.kind.append_value(kind.copied().unwrap_or("unspecified"));
                let start = span.start_time_unix_nano as i64;
                let end = span.end_time_unix_nano as i64;
                b.start.append_value(start);
                b.end.append_value(end);
                b.duration.append_value(end - start);
                let (code, message) = span.status.as_ref().map_or((0, ""), |s| (s.code, s.message.as_str()));
                let code = usize::try_from(code).ok().and_then(|c| STATUS_CODES.get(c));
                b.status_code.append_value(code.copied().unwrap_or("unset"));
                b.status_message.append_option(opt_str(message));

                let mut span_sem: Vec<Option<SemValue>> = vec![None; SEMCONV.len()];
                let span_rest = split_attributes(&span.attributes, &mut span_sem);
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
                append_map(
                    &mut b.resource_attributes,
                    res_rest.iter().map(|(i, v)| (res_attrs[*i].key.as_str(), v.as_deref())),
                )?;
                append_map(
                    &mut b.attributes,
                    span_rest.iter().map(|(i, v)| (span.attributes[*i].key.as_str(), v.as_deref())),
                )?;

                let mut exception: Option<(Option<String>, Option<String>)> = None;
                for ev in &span.events {
                    b.event_time.append_value(ev.time_unix_nano.min(i64::MAX as u64) as i64);
                    b.event_name.append_value(&ev.name);
                    append_map(
                        &mut b.event_attributes,
                        ev.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref().and_then(any_value_string))),
                    )?;
                    if exception.is_none() && ev.name == "exception" {
                        let get = |k: &str| {
                            ev.attributes
                                .iter()
                                .find(|kv| kv.key == k)
                                .and_then(|kv| kv.value.as_ref())
                                .and_then(any_value_string)
                        };
                        exception = Some((get("exception.type"), get("exception.message")));
                    }
                }
                let (et, em) = exception.unwrap_or_default();
                b.exception_type.append_option(et);
                b.exception_message.append_option(em);
                let next_event = b.event_offsets.last().copied().unwrap_or(0) + span.events.len() as i32;
                b.event_offsets.push(next_event);

                for link in &span.links {
                    b.link_trace_id.append_value(hex_into(&link.trace_id, &mut hex));
                    b.link_span_id.append_value(hex_into(&link.span_id, &mut hex));
                    b.link_trace_state.append_option(opt_str(&link.trace_state));
                    append_map(
                        &mut b.link_attributes,
                        link.attributes
                            .iter()
                            .map(|kv| (kv.key.as_str(), kv.value.as_ref().and_then(any_value_string))),
                    )?;
                }
                let next_link = b.link_offsets.last().copied().unwrap_or(0) + span.links.len() as i32;
                b.link_offsets.push(next_link);
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

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
}
