//! One read of the baseline for a continuous pass's window and its last
//! minute.
//!
//! A continuous pass judges its window, then its last minute against the same
//! baseline ([`crate::engine::Analyzer::continuous`]). The detectors that
//! judge both ask for two statements that differ only in where the current
//! side starts, and the baseline (hours, against a window of 30 minutes) is
//! most of what each reads. The pass runs one statement for both instead, in
//! which the rows of the last minute are told apart, and sums its groups back
//! into the rows each of the two statements gives ([`regroup`]). The detectors
//! ask for their statements as before and are answered from these rows, so
//! their tests, findings and recorded SQL are the same.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use hashbrown::HashMap;

use crate::sql::Rows;

/// How one statement's rows are summed out of a shared statement's.
pub struct Regroup<'a> {
    /// The shared statement's side column.
    pub side: &'a str,
    /// This statement's side (its `cur`) for each value of `side`; `None`
    /// when such rows are not this statement's.
    pub map: fn(i64) -> Option<i64>,
    /// When set, only the rows where this column is 1 are this statement's.
    pub present: Option<&'a str>,
    /// The groups' other keys, copied as they are.
    pub keys: Vec<String>,
    /// `(shared column, this statement's column)`: summed over the shared
    /// groups that make one of this statement's (SQL's `sum`: null when
    /// every value is), typed as the shared statement types `this`.
    pub sums: Vec<(&'a str, &'a str)>,
}

fn column(b: &RecordBatch, name: &str) -> Result<ArrayRef, ArrowError> {
    b.column_by_name(name).cloned().ok_or_else(|| ArrowError::SchemaError(format!("no column {name}")))
}

/// The rows of one statement, summed out of a shared statement's `rows`: one
/// row per side (`cur`) and keys.
pub fn regroup(rows: &Rows, r: &Regroup<'_>) -> Result<Rows, ArrowError> {
    let batches = rows.batches();
    let Some(first) = batches.first() else { return Ok(Rows::new(Vec::new())) };
    let shared = first.schema();
    let key_fields: Vec<Field> = r.keys.iter().map(|k| shared.field_with_name(k).cloned()).collect::<Result<_, _>>()?;
    let converter = RowConverter::new(key_fields.iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
    // Every batch's keys in row format, so that groups are keyed by borrowed rows.
    let keys: Vec<arrow::row::Rows> = batches
        .iter()
        .map(|b| converter.convert_columns(&r.keys.iter().map(|k| column(b, k)).collect::<Result<Vec<_>, _>>()?))
        .collect::<Result<_, _>>()?;
    let mut groups: HashMap<(i64, arrow::row::Row<'_>), usize> = HashMap::new();
    // Per group: where its first row is, its side, and its sums.
    let mut firsts: Vec<(usize, usize)> = Vec::new();
    let mut sides: Vec<i64> = Vec::new();
    let mut sums: Vec<Vec<Option<i64>>> = vec![Vec::new(); r.sums.len()];
    for (bi, b) in batches.iter().enumerate() {
        let side = cast(&column(b, r.side)?, &DataType::Int64)?;
        let side = side.as_primitive::<Int64Type>();
        let present = r.present.map(|p| cast(&column(b, p)?, &DataType::Int64)).transpose()?;
        let present = present.as_ref().map(|p| p.as_primitive::<Int64Type>());
        let values =
            r.sums.iter().map(|(from, _)| cast(&column(b, from)?, &DataType::Int64)).collect::<Result<Vec<_>, _>>()?;
        for i in 0..b.num_rows() {
            if present.is_some_and(|p| p.is_null(i) || p.value(i) != 1) || side.is_null(i) {
                continue;
            }
            let Some(s) = (r.map)(side.value(i)) else { continue };
            let g = *groups.entry((s, keys[bi].row(i))).or_insert_with(|| {
                firsts.push((bi, i));
                sides.push(s);
                sums.iter_mut().for_each(|v| v.push(None));
                sides.len() - 1
            });
            for (v, out) in values.iter().zip(sums.iter_mut()) {
                let v = v.as_primitive::<Int64Type>();
                if !v.is_null(i) {
                    out[g] = Some(out[g].unwrap_or(0) + v.value(i));
                }
            }
        }
    }
    let mut fields = vec![Field::new("cur", DataType::Int64, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(sides))];
    for (k, f) in r.keys.iter().zip(key_fields) {
        let parts = batches.iter().map(|b| column(b, k)).collect::<Result<Vec<_>, _>>()?;
        let parts: Vec<&dyn Array> = parts.iter().map(AsRef::as_ref).collect();
        columns.push(interleave(&parts, &firsts)?);
        fields.push(f.with_nullable(true));
    }
    for ((from, to), values) in r.sums.iter().zip(sums) {
        let ty = shared.field_with_name(to).or_else(|_| shared.field_with_name(from))?.data_type().clone();
        columns.push(cast(&Int64Array::from(values), &ty)?);
        fields.push(Field::new(*to, ty, true));
    }
    Ok(Rows::new(vec![RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?]))
}

/// The window's side in a statement shared with its last minute: the last
/// minute (2) is part of the window (1).
pub fn window_side(side: i64) -> Option<i64> {
    Some(side.min(1))
}

/// The last minute's side in a statement shared with its window: the rest of
/// the window (1) is not read.
pub fn last_minute_side(side: i64) -> Option<i64> {
    match side {
        0 => Some(0),
        2 => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, UInt64Array};

    fn batch(rows: &[(i64, &str, u64)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("cur", DataType::Int64, false),
            Field::new("operation", DataType::Utf8, true),
            Field::new("n", DataType::UInt64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(UInt64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn sums(rows: &Rows) -> Vec<(i64, String, u64)> {
        let mut out: Vec<_> =
            rows.iter().map(|r| (r.i64("cur").unwrap(), r.str("operation").unwrap(), r.u64("n"))).collect();
        out.sort();
        out
    }

    #[test]
    fn a_shared_statement_sums_back_into_the_window_and_the_last_minute() {
        let shared = Rows::new(vec![
            batch(&[(0, "GET /a", 10), (1, "GET /a", 3), (2, "GET /a", 2)]),
            batch(&[(2, "GET /b", 7), (0, "GET /b", 1), (1, "GET /b", 4)]),
        ]);
        let keys = vec!["operation".to_owned()];
        let window =
            Regroup { side: "cur", map: window_side, present: None, keys: keys.clone(), sums: vec![("n", "n")] };
        let w = regroup(&shared, &window).unwrap();
        let last = Regroup { map: last_minute_side, ..window };
        assert_eq!(
            sums(&w),
            vec![(0, "GET /a".into(), 10), (0, "GET /b".into(), 1), (1, "GET /a".into(), 5), (1, "GET /b".into(), 11)]
        );
        let l = regroup(&shared, &last).unwrap();
        assert_eq!(
            sums(&l),
            vec![(0, "GET /a".into(), 10), (0, "GET /b".into(), 1), (1, "GET /a".into(), 2), (1, "GET /b".into(), 7)]
        );
        // The sums keep the shared statement's type.
        assert_eq!(l.batches()[0].schema().field_with_name("n").unwrap().data_type(), &DataType::UInt64);
    }
}
