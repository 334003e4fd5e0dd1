//! The schema of the `spans` table.
//!
//! Column names are part of Andon's external contract: users write SQL against them
//! and read the Parquet segments with Polars, DuckDB and pyarrow. Columns may be
//! added; none may be renamed.
//!
//! Ids are stored as lowercase hex strings rather than binary: SQL compares them with
//! hex literals directly, filters on them push down into Parquet statistics and bloom
//! filters, and zstd brings hex back close to the size of the raw bytes.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// Where a semantic-convention attribute is normally set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Resource,
    Span,
}

/// The SQL type of a dedicated attribute column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Utf8,
    Int64,
    Boolean,
}

/// A semantic-convention attribute with a column of its own.
#[derive(Debug, Clone, Copy)]
pub struct SemConv {
    pub attribute: &'static str,
    pub column: &'static str,
    pub ty: ColumnType,
    pub scope: Scope,
}

const fn sc(attribute: &'static str, column: &'static str, ty: ColumnType, scope: Scope) -> SemConv {
    SemConv { attribute, column, ty, scope }
}

/// The attributes listed in the contract's "semantic conventions consumed". Each is
/// looked up on the span first and then on its resource (browser SDKs put
/// `browser.mobile` on the resource, some servers put `cloud.region` on spans), and
/// is taken out of the generic attribute maps once it has a column.
pub const SEMCONV: &[SemConv] = &[
    sc("service.name", "service_name", ColumnType::Utf8, Scope::Resource),
    sc("service.version", "service_version", ColumnType::Utf8, Scope::Resource),
    sc("deployment.environment.name", "deployment_environment_name", ColumnType::Utf8, Scope::Resource),
    sc("vcs.ref.head.revision", "vcs_ref_head_revision", ColumnType::Utf8, Scope::Resource),
    sc("vcs.change.id", "vcs_change_id", ColumnType::Utf8, Scope::Resource),
    sc("vcs.repository.url.full", "vcs_repository_url_full", ColumnType::Utf8, Scope::Resource),
    sc("cloud.region", "cloud_region", ColumnType::Utf8, Scope::Resource),
    sc("os.type", "os_type", ColumnType::Utf8, Scope::Resource),
    sc("browser.mobile", "browser_mobile", ColumnType::Boolean, Scope::Resource),
    sc("device.model.identifier", "device_model_identifier", ColumnType::Utf8, Scope::Resource),
    sc("session.id", "session_id", ColumnType::Utf8, Scope::Span),
    sc("user.id", "user_id", ColumnType::Utf8, Scope::Span),
    sc("enduser.id", "enduser_id", ColumnType::Utf8, Scope::Span),
    sc("http.route", "http_route", ColumnType::Utf8, Scope::Span),
    sc("http.request.method", "http_request_method", ColumnType::Utf8, Scope::Span),
    sc("http.response.status_code", "http_response_status_code", ColumnType::Int64, Scope::Span),
    sc("url.path", "url_path", ColumnType::Utf8, Scope::Span),
    sc("http.request.resend_count", "http_request_resend_count", ColumnType::Int64, Scope::Span),
    sc("error.type", "error_type", ColumnType::Utf8, Scope::Span),
    sc("user_agent.original", "user_agent_original", ColumnType::Utf8, Scope::Span),
];

/// The fixed columns, in schema order. The semantic-convention columns follow
/// `SpanColumn::StatusMessage`, in `SEMCONV` order, then come `Tail` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanColumn {
    Tenant,
    TraceId,
    SpanId,
    ParentSpanId,
    TraceState,
    Name,
    Kind,
    StartTime,
    EndTime,
    DurationNs,
    StatusCode,
    StatusMessage,
}

/// Columns after the semantic-convention ones.
pub const TAIL_COLUMNS: &[&str] = &[
    "scope_name",
    "scope_version",
    "exception_type",
    "exception_message",
    "resource_attributes",
    "attributes",
    "events",
    "links",
];

pub const HEAD_COLUMNS: &[&str] = &[
    "tenant",
    "trace_id",
    "span_id",
    "parent_span_id",
    "trace_state",
    "name",
    "kind",
    "start_time",
    "end_time",
    "duration_ns",
    "status_code",
    "status_message",
];

impl SpanColumn {
    pub fn name(self) -> &'static str {
        HEAD_COLUMNS[self as usize]
    }
}

/// Span kinds as they appear in the `kind` column, indexed by the OTLP enum value.
pub const SPAN_KINDS: &[&str] = &["unspecified", "internal", "server", "client", "producer", "consumer"];

/// Status codes as they appear in the `status_code` column, indexed by the OTLP enum.
pub const STATUS_CODES: &[&str] = &["unset", "ok", "error"];

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// `Map<Utf8, Utf8>` with the field names Parquet round-trips unchanged, so the
/// in-memory batches and the segments read back have one schema.
pub fn string_map_type() -> DataType {
    let entries = Field::new(
        "key_value",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

pub fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("attributes", string_map_type(), false),
    ])
}

pub fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, false),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("attributes", string_map_type(), false),
    ])
}

pub fn list_of(fields: Fields) -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Struct(fields), true)))
}

fn build_schema() -> Schema {
    let mut fields = vec![
        Field::new("tenant", DataType::Utf8, false),
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, false),
        Field::new("parent_span_id", DataType::Utf8, true),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("start_time", timestamp_type(), false),
        Field::new("end_time", timestamp_type(), false),
        Field::new("duration_ns", DataType::Int64, false),
        Field::new("status_code", DataType::Utf8, false),
        Field::new("status_message", DataType::Utf8, true),
    ];
    for s in SEMCONV {
        let ty = match s.ty {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Boolean => DataType::Boolean,
        };
        // service.name is required by the resource semantic conventions; spans that
        // lack it get "unknown_service" as the SDKs do.
        fields.push(Field::new(s.column, ty, s.column != "service_name"));
    }
    fields.extend([
        Field::new("scope_name", DataType::Utf8, true),
        Field::new("scope_version", DataType::Utf8, true),
        Field::new("exception_type", DataType::Utf8, true),
        Field::new("exception_message", DataType::Utf8, true),
        Field::new("resource_attributes", string_map_type(), false),
        Field::new("attributes", string_map_type(), false),
        Field::new("events", list_of(event_fields()), false),
        Field::new("links", list_of(link_fields()), false),
    ]);
    Schema::new(fields)
}

/// The schema every span batch, WAL record and Parquet segment has.
pub fn span_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| Arc::new(build_schema())))
}

/// Index of the first semantic-convention column.
pub const SEMCONV_OFFSET: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_index_constants() {
        let schema = span_schema();
        for (i, name) in HEAD_COLUMNS.iter().enumerate() {
            assert_eq!(schema.field(i).name(), name);
        }
        for (i, s) in SEMCONV.iter().enumerate() {
            assert_eq!(schema.field(SEMCONV_OFFSET + i).name(), s.column);
            assert_eq!(s.column, s.attribute.replace('.', "_"), "contract: dots become underscores");
        }
        let tail = SEMCONV_OFFSET + SEMCONV.len();
        for (i, name) in TAIL_COLUMNS.iter().enumerate() {
            assert_eq!(schema.field(tail + i).name(), name);
        }
        assert_eq!(schema.fields().len(), tail + TAIL_COLUMNS.len());
        assert_eq!(SpanColumn::StartTime.name(), "start_time");
    }
}
