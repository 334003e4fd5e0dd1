//! The detectors' SQL: templates from the `.sql` files beside each detector, the
//! expressions they share, and reading their results.

use std::collections::BTreeMap;

use andon_model::schema::{ColumnType, SEMCONV};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, UInt64Type};
use chrono::{DateTime, SecondsFormat, Utc};

/// An operation: `METHOD route` for HTTP server spans, else the span name.
pub const OPERATION: &str = "CASE WHEN s.http_route IS NULL THEN s.name \
     WHEN s.http_request_method IS NULL THEN s.http_route \
     ELSE concat(s.http_request_method, ' ', s.http_route) END";

/// A page request: a root server span, or a server span directly under a root
/// client span (what browser and mobile SDKs create).
pub const SHARED_CTES: &str = include_str!("detectors/shared.sql");

/// A timestamp literal both DataFusion and DuckDB read.
pub fn ts(t: DateTime<Utc>) -> String {
    format!("TIMESTAMP '{}'", t.to_rfc3339_opts(SecondsFormat::Micros, true).trim_end_matches('Z'))
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

/// The pieces of SQL that put each request's segment values in `seg0..segN`.
#[derive(Debug, Clone)]
pub struct Segments {
    pub columns: Vec<SegmentColumn>,
}

impl Segments {
    pub fn new(attributes: &[String]) -> Result<Self, String> {
        Ok(Self { columns: attributes.iter().map(|a| segment_column(a)).collect::<Result<_, _>>()? })
    }

    /// Aggregates in the `sessions` CTE.
    pub fn session_aggregates(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if c.per_session {
                out.push_str(&format!(", max(CAST({} AS VARCHAR)) AS seg{i}", c.column));
            }
        }
        out
    }

    /// `seg0, seg1, ...` of a request.
    pub fn request_exprs(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if c.per_session {
                out.push_str(&format!(", coalesce(CAST(s.{} AS VARCHAR), ss.seg{i}) AS seg{i}", c.column));
            } else {
                out.push_str(&format!(", CAST(s.{} AS VARCHAR) AS seg{i}", c.column));
            }
        }
        out
    }

    /// `seg0, seg1, ...` of a request from the span alone, without the session.
    pub fn request_exprs_lean(&self) -> String {
        (0..self.columns.len()).map(|i| format!(", CAST(s.{} AS VARCHAR) AS seg{i}", self.columns[i].column)).collect()
    }

    /// `, seg0, seg1` for select lists and GROUP BY.
    pub fn list(&self) -> String {
        (0..self.columns.len()).map(|i| format!(", seg{i}")).collect()
    }

    /// A WHERE condition restricting `seg` columns to a segment.
    pub fn condition(&self, segment: &BTreeMap<String, serde_json::Value>) -> String {
        let mut out = String::new();
        for (attr, v) in segment {
            if let Some(i) = self.columns.iter().position(|c| &c.attribute == attr) {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!(" AND seg{i} = {}", lit(&text)));
            }
        }
        out
    }

    /// A segment's value as JSON: booleans as booleans.
    pub fn json_value(&self, i: usize, text: &str) -> serde_json::Value {
        if self.columns[i].boolean {
            match text {
                "true" => return serde_json::Value::Bool(true),
                "false" => return serde_json::Value::Bool(false),
                _ => {}
            }
        }
        serde_json::Value::String(text.to_owned())
    }
}

/// Fills `{{name}}` placeholders. An unknown placeholder is a bug in a template.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    debug_assert!(!out.contains("{{"), "unfilled placeholder in {out}");
    out
}

/// A query result read by column name.
#[derive(Debug)]
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

    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.batches.iter().flat_map(|b| (0..b.num_rows()).map(move |i| Row { batch: b, i }))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    batch: &'a RecordBatch,
    i: usize,
}

impl Row<'_> {
    fn column(&self, name: &str) -> Option<&dyn Array> {
        let idx = self.batch.schema().index_of(name).ok()?;
        Some(self.batch.column(idx).as_ref())
    }

    pub fn str(&self, name: &str) -> Option<String> {
        let a = self.column(name)?;
        if a.is_null(self.i) {
            return None;
        }
        Some(match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(self.i).to_owned(),
            DataType::LargeUtf8 => a.as_string::<i64>().value(self.i).to_owned(),
            DataType::Utf8View => a.as_string_view().value(self.i).to_owned(),
            DataType::Dictionary(_, _) => {
                let one = arrow::compute::cast(&a.slice(self.i, 1), &DataType::Utf8).ok()?;
                one.as_string::<i32>().value(0).to_owned()
            }
            _ => arrow::util::display::ArrayFormatter::try_new(a, &Default::default()).ok()?.value(self.i).to_string(),
        })
    }

    pub fn f64(&self, name: &str) -> Option<f64> {
        let a = self.column(name)?;
        if a.is_null(self.i) {
            return None;
        }
        match a.data_type() {
            DataType::Float64 => Some(a.as_primitive::<Float64Type>().value(self.i)),
            DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(self.i) as f64),
            DataType::Int32 => Some(f64::from(a.as_primitive::<Int32Type>().value(self.i))),
            DataType::UInt64 => Some(a.as_primitive::<UInt64Type>().value(self.i) as f64),
            DataType::Timestamp(_, _) => {
                Some(arrow::compute::cast(a, &DataType::Int64).ok()?.as_primitive::<Int64Type>().value(self.i) as f64)
            }
            _ => None,
        }
    }

    pub fn i64(&self, name: &str) -> Option<i64> {
        let a = self.column(name)?;
        if a.is_null(self.i) {
            return None;
        }
        match a.data_type() {
            DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(self.i)),
            DataType::Timestamp(_, _) => Some(
                arrow::compute::cast(&a.slice(self.i, 1), &DataType::Int64).ok()?.as_primitive::<Int64Type>().value(0),
            ),
            _ => self.f64(name).map(|v| v as i64),
        }
    }

    pub fn u64(&self, name: &str) -> u64 {
        self.i64(name).unwrap_or(0).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_escaped_and_placeholders_filled() {
        assert_eq!(lit("it's"), "'it''s'");
        assert_eq!(render("a {{x}} b {{x}}", &[("x", "1".into())]), "a 1 b 1");
        let t = DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(ts(t), "TIMESTAMP '2026-11-20T12:00:00.000000'");
    }

    #[test]
    fn only_columned_attributes_can_be_segments() {
        assert!(segment_column("os.type").unwrap().per_session);
        assert!(!segment_column("service.version").unwrap().per_session);
        assert!(segment_column("browser.mobile").unwrap().boolean);
        assert!(segment_column("app.tier").unwrap_err().contains("no column"));
    }
}
