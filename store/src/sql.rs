//! SQL helpers for the `spans` table: literals and times both DataFusion and
//! DuckDB read, the operation expression every detector and the RCA share, the
//! column each segment attribute lives in, and reading query results by
//! column name.

use std::borrow::Cow;

use andon_model::schema::{ColumnType, SEMCONV};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float64Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt64Type,
};
use chrono::{DateTime, SecondsFormat, Utc};

/// An operation: `METHOD route` for HTTP server spans, else the span name.
pub const OPERATION: &str = "CASE WHEN s.http_route IS NULL THEN s.name \
     WHEN s.http_request_method IS NULL THEN s.http_route \
     ELSE concat(s.http_request_method, ' ', s.http_route) END";

/// A timestamp literal both DataFusion and DuckDB read.
pub fn ts(t: DateTime<Utc>) -> String {
    format!("TIMESTAMP '{}'", t.to_rfc3339_opts(SecondsFormat::Micros, true).trim_end_matches('Z'))
}

/// A condition keeping the traces in `col` that have settled: none received a
/// span after `at` (the server's wall clock; `arriving_traces`).
pub fn settled(col: &str, at: DateTime<Utc>) -> String {
    format!("{col} NOT IN (SELECT trace_id FROM arriving_traces WHERE last_arrival > {})", ts(at))
}

/// A string literal.
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where a segment attribute's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentColumn {
    pub attribute: String,
    pub column: &'static str,
    /// Describes the session (os, device, region) rather than the serving process
    /// (version): filled from the rest of the session when a span lacks it, since
    /// a browser's resource carries `os.type` and a backend's `cloud.region`.
    pub per_session: bool,
    pub boolean: bool,
}

pub fn segment_column(attribute: &str) -> Result<SegmentColumn, String> {
    let sc = SEMCONV.iter().find(|s| s.attribute == attribute).ok_or_else(|| {
        format!(
            "segment attribute {attribute:?} has no column of its own; segments can be: {}",
            SEMCONV.iter().map(|s| s.attribute).collect::<Vec<_>>().join(", ")
        )
    })?;
    let span_level = ["service.", "deployment.", "vcs."].iter().any(|p| attribute.starts_with(p));
    Ok(SegmentColumn {
        attribute: attribute.to_owned(),
        column: sc.column,
        per_session: !span_level,
        boolean: sc.ty == ColumnType::Boolean,
    })
}

impl SegmentColumn {
    /// `s.<column> = <value>` for one of this attribute's values, or `None` for
    /// a value no span can hold (a list, an object).
    pub fn equals(&self, value: &serde_json::Value) -> Option<String> {
        let value = match value {
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(v) => lit(v),
            _ => return None,
        };
        Some(format!("s.{} = {value}", self.column))
    }
}

/// A query result read by column name.
#[derive(Debug, Clone)]
pub struct Rows {
    batches: Vec<RecordBatch>,
}

impl Rows {
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        Self { batches }
    }

    pub fn len(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn batches(&self) -> &[RecordBatch] {
        &self.batches
    }

    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.batches.iter().flat_map(|b| (0..b.num_rows()).map(move |i| Row { batch: b, i }))
    }

    /// The rows whose text columns hold the given values, as a `WHERE` of
    /// equalities on them would keep: each column found once per batch.
    pub fn rows_where<'a>(&'a self, equal: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = Row<'a>> {
        self.batches.iter().flat_map(move |b| {
            let columns: Option<Vec<(&dyn Array, &str)>> =
                equal.iter().map(|(n, v)| Some((b.column_by_name(n)?.as_ref(), *v))).collect();
            let n = if columns.is_some() { b.num_rows() } else { 0 };
            (0..n)
                .filter(move |&i| columns.iter().flatten().all(|(a, v)| text_at(*a, i).is_some_and(|t| t == *v)))
                .map(move |i| Row { batch: b, i })
        })
    }
}

/// Row `i` of column `a` as text, as [`Row::text`] reads it.
pub fn text_at(a: &dyn Array, i: usize) -> Option<Cow<'_, str>> {
    if a.is_null(i) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Utf8 => Cow::Borrowed(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Cow::Borrowed(a.as_string::<i64>().value(i)),
        DataType::Utf8View => Cow::Borrowed(a.as_string_view().value(i)),
        DataType::Dictionary(_, _) => {
            let one = arrow::compute::cast(&a.slice(i, 1), &DataType::Utf8).ok()?;
            Cow::Owned(one.as_string::<i32>().value(0).to_owned())
        }
        _ => {
            Cow::Owned(arrow::util::display::ArrayFormatter::try_new(a, &Default::default()).ok()?.value(i).to_string())
        }
    })
}

/// Row `i` of column `a` as an integer, as [`Row::i64`] reads it.
pub fn i64_at(a: &dyn Array, i: usize) -> Option<i64> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i)),
        DataType::Int32 => Some(i64::from(a.as_primitive::<Int32Type>().value(i))),
        DataType::UInt64 => Some(a.as_primitive::<UInt64Type>().value(i) as i64),
        DataType::Timestamp(unit, _) => Some(Row::timestamp(a, i, *unit)),
        _ => f64_at(a, i).map(|v| v as i64),
    }
}

/// Row `i` of column `a` as a float, as [`Row::f64`] reads it.
pub fn f64_at(a: &dyn Array, i: usize) -> Option<f64> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Float64 => Some(a.as_primitive::<Float64Type>().value(i)),
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i) as f64),
        DataType::Int32 => Some(f64::from(a.as_primitive::<Int32Type>().value(i))),
        DataType::UInt64 => Some(a.as_primitive::<UInt64Type>().value(i) as f64),
        DataType::Timestamp(unit, _) => Some(Row::timestamp(a, i, *unit) as f64),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    batch: &'a RecordBatch,
    i: usize,
}

impl<'a> Row<'a> {
    fn column(&self, name: &str) -> Option<&'a dyn Array> {
        // Not `index_of`, whose error for a missing column formats every field.
        let (idx, _) = self.batch.schema_ref().column_with_name(name)?;
        Some(self.batch.column(idx).as_ref())
    }

    /// A timestamp's value in its own unit, as a cast to `Int64` gives it.
    fn timestamp(a: &dyn Array, i: usize, unit: TimeUnit) -> i64 {
        match unit {
            TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(i),
            TimeUnit::Millisecond => a.as_primitive::<TimestampMillisecondType>().value(i),
            TimeUnit::Microsecond => a.as_primitive::<TimestampMicrosecondType>().value(i),
            TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(i),
        }
    }

    pub fn str(&self, name: &str) -> Option<String> {
        self.text(name).map(Cow::into_owned)
    }

    /// [`Self::str`] borrowed from the result where its column holds text,
    /// so that rows can be grouped without a copy of every key.
    pub fn text(&self, name: &str) -> Option<Cow<'a, str>> {
        text_at(self.column(name)?, self.i)
    }

    /// The batch this row is in, and its index there: for readers that find
    /// their columns once per batch ([`text_at`]).
    pub fn place(&self) -> (&'a RecordBatch, usize) {
        (self.batch, self.i)
    }

    pub fn f64(&self, name: &str) -> Option<f64> {
        f64_at(self.column(name)?, self.i)
    }

    pub fn i64(&self, name: &str) -> Option<i64> {
        i64_at(self.column(name)?, self.i)
    }

    pub fn u64(&self, name: &str) -> u64 {
        self.i64(name).unwrap_or(0).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped() {
        assert_eq!(lit("it's"), "'it''s'");
        let t = DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(ts(t), "TIMESTAMP '2026-11-20T12:00:00.000000'");
    }

    #[test]
    fn only_columned_attributes_can_be_segments() {
        assert!(segment_column("os.type").unwrap().per_session);
        assert!(!segment_column("service.version").unwrap().per_session);
        assert!(segment_column("browser.mobile").unwrap().boolean);
        assert!(segment_column("app.tier").unwrap_err().contains("no column"));
        let mobile = segment_column("browser.mobile").unwrap();
        assert_eq!(mobile.equals(&serde_json::json!(true)).unwrap(), "s.browser_mobile = true");
        assert_eq!(
            segment_column("os.type").unwrap().equals(&serde_json::json!("i'os")).unwrap(),
            "s.os_type = 'i''os'"
        );
    }
}
