//! The detectors' SQL: templates from the `.sql` files beside each detector and
//! the segment expressions they share. The helpers for the `spans` table
//! itself (literals, times, operations, segment columns, reading results) are
//! the store's, re-exported here for the detectors.

use std::collections::BTreeMap;

pub(crate) use andon_store::sql::{OPERATION, Row, Rows, SegmentColumn, lit, segment_column, settled, ts};

/// A page request: a root server span, or a server span directly under a root
/// client span (what browser and mobile SDKs create).
pub const SHARED_CTES: &str = include_str!("detectors/shared.sql");

/// The pieces of SQL that put each request's segment values in `seg0..segN`.
#[derive(Debug, Clone)]
pub struct Segments {
    pub columns: Vec<SegmentColumn>,
}

impl Segments {
    pub fn new(attributes: &[String]) -> Result<Self, String> {
        Ok(Self { columns: attributes.iter().map(|a| segment_column(a)).collect::<Result<_, _>>()? })
    }

    /// Aggregates in the `sessions` CTE. A session's device, OS and region are
    /// the client's: taken from the spans that start its traces (the browser's
    /// or app's root spans), and only from other spans when no root carries
    /// them. A backend's own resource often says `os.type=linux` (the OS
    /// resource detectors of the OpenTelemetry SDKs add it), which describes
    /// the server, not the person using it.
    pub fn session_aggregates(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if c.per_session {
                let v = format!("CAST({} AS VARCHAR)", c.column);
                out.push_str(&format!(
                    ", coalesce(max(CASE WHEN parent_span_id IS NULL OR parent_span_id = '' THEN {v} END), max({v})) AS seg{i}"
                ));
            }
        }
        out
    }

    /// `seg0, seg1, ...` of a request: the session's values where it has them
    /// (see [`Self::session_aggregates`]), else the span's own.
    pub fn request_exprs(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            if c.per_session {
                out.push_str(&format!(", coalesce(ss.seg{i}, CAST(s.{} AS VARCHAR)) AS seg{i}", c.column));
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

    /// The names of the segment columns in a detector's rows.
    pub fn names(&self) -> Vec<String> {
        (0..self.columns.len()).map(|i| format!("seg{i}")).collect()
    }

    /// A WHERE condition restricting `seg` columns to a segment.
    pub fn condition(&self, segment: &BTreeMap<String, serde_json::Value>) -> String {
        self.values(segment).into_iter().map(|(col, text)| format!(" AND {col} = {}", lit(&text))).collect()
    }

    /// The `seg` columns of a segment with the text each must hold.
    pub fn values(&self, segment: &BTreeMap<String, serde_json::Value>) -> Vec<(String, String)> {
        segment
            .iter()
            .filter_map(|(attr, v)| {
                let i = self.columns.iter().position(|c| &c.attribute == attr)?;
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((format!("seg{i}"), text))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        assert_eq!(render("a {{x}} b {{x}}", &[("x", "1".into())]), "a 1 b 1");
    }
}
