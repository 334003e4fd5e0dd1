//! How a segment file lays out the `spans` table, and how a scan sees the
//! file as that table again.
//!
//! The `spans` table (`andon_model::span_schema`) shows span ids as hex text
//! and both ends of a span. A segment written since this layout stores:
//!
//! - `span_id` and `parent_span_id` as 8-byte fixed-size binary: the 16 hex
//!   characters of a random id compress to about 9.6 bytes with their length
//!   prefix, the raw bytes take 8;
//! - no `end_time`, which is `start_time + duration_ns`: it cost as much as
//!   `start_time`, about 4.3 bytes a span.
//!
//! `trace_id` stays hex text: it is dictionary-encoded (a trace's spans share
//! it), and readers of the files filter on it as text.
//!
//! A flush or merge whose ids are not all 16 lowercase hex digits (never the
//! case for spans from the OTLP receivers, which refuse any other id) keeps
//! the table's own layout, and so do segments written before this one. Every
//! reader takes both: a scan through [`SpanFiles`], which rewrites each
//! file's column references per file, and [`to_table`] for whole batches.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use andon_model::span_schema;
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeBinaryArray, FixedSizeBinaryBuilder, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef, TimestampNanosecondType};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};

use crate::error::StoreError;

/// The id columns stored as binary in the compact layout.
pub(crate) const BINARY_IDS: [&str; 2] = ["span_id", "parent_span_id"];

/// Bytes of a span id.
const ID_BYTES: i32 = 8;

/// The schema of a segment in the compact layout: the table's, with the span
/// ids as 8-byte binary and without `end_time`.
pub(crate) fn stored_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        let fields: Vec<FieldRef> = span_schema()
            .fields()
            .iter()
            .filter(|f| f.name() != "end_time")
            .map(|f| {
                if BINARY_IDS.contains(&f.name().as_str()) {
                    Arc::new(Field::new(f.name(), DataType::FixedSizeBinary(ID_BYTES), f.is_nullable()))
                } else {
                    Arc::clone(f)
                }
            })
            .collect();
        Arc::new(Schema::new(fields))
    }))
}

/// `batch` (the table's schema) in the compact layout, or `None` when one of
/// its span ids is not 16 lowercase hex digits and so has no 8-byte form that
/// reads back as the same text.
pub(crate) fn to_stored(batch: &RecordBatch) -> Result<Option<RecordBatch>, StoreError> {
    let schema = stored_schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = batch
            .column_by_name(f.name())
            .ok_or_else(|| StoreError::Corrupt(format!("span batch lacks {}", f.name())))?;
        if BINARY_IDS.contains(&f.name().as_str()) {
            let Some(text) = c.as_string_opt::<i32>() else {
                return Ok(None);
            };
            match ids_to_binary(text) {
                Some(ids) => columns.push(Arc::new(ids) as ArrayRef),
                None => return Ok(None),
            }
        } else {
            columns.push(Arc::clone(c));
        }
    }
    Ok(Some(RecordBatch::try_new(schema, columns)?))
}

/// Whether every span id of `batch` (the table's schema) fits the compact
/// layout: 16 lowercase hex digits, or a null parent.
pub(crate) fn ids_fit(batch: &RecordBatch) -> bool {
    BINARY_IDS.iter().all(|name| {
        let Some(text) = batch.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()) else {
            return false;
        };
        text.iter().flatten().all(|s| id_bytes(s).is_some())
    })
}

/// Each byte's value as a lowercase hex digit; `INVALID` for any other byte.
const HEX_VALUES: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};
const INVALID: u8 = 0xff;

/// The bytes of one id, if it is exactly 16 lowercase hex digits.
fn id_bytes(text: &str) -> Option<[u8; ID_BYTES as usize]> {
    let text = text.as_bytes();
    if text.len() != 2 * ID_BYTES as usize {
        return None;
    }
    let mut id = [0u8; ID_BYTES as usize];
    // An invalid digit (`INVALID`) sets the high bits of `seen`: one test at the end.
    let mut seen = 0u8;
    for (byte, pair) in id.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (HEX_VALUES[usize::from(pair[0])], HEX_VALUES[usize::from(pair[1])]);
        seen |= hi | lo;
        *byte = hi << 4 | lo;
    }
    (seen & 0xf0 == 0).then_some(id)
}

/// Hex ids as their bytes; nulls stay null. `None` if any is not exactly 16
/// lowercase hex digits.
fn ids_to_binary(text: &StringArray) -> Option<FixedSizeBinaryArray> {
    let mut b = FixedSizeBinaryBuilder::with_capacity(text.len(), ID_BYTES);
    for v in text.iter() {
        match v {
            None => b.append_null(),
            Some(s) => b.append_value(id_bytes(s)?).ok()?,
        }
    }
    Some(b.finish())
}

/// 8-byte ids as 16 lowercase hex digits each; nulls stay null.
fn ids_to_hex(ids: &FixedSizeBinaryArray) -> StringArray {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let width = ids.value_length() as usize;
    let mut values = Vec::with_capacity(ids.len() * 2 * width);
    let mut offsets = Vec::with_capacity(ids.len() + 1);
    offsets.push(0i32);
    for i in 0..ids.len() {
        if ids.is_valid(i) {
            for b in ids.value(i) {
                values.push(DIGITS[usize::from(b >> 4)]);
                values.push(DIGITS[usize::from(b & 15)]);
            }
        }
        offsets.push(values.len() as i32);
    }
    let offsets = OffsetBuffer::new(offsets.into());
    // Every value is ASCII, so the text is valid UTF-8.
    StringArray::new(offsets, Buffer::from_vec(values), ids.nulls().cloned())
}

/// `start + duration`, each row; null where either is.
fn end_times(start: &ArrayRef, duration: &ArrayRef) -> Result<TimestampNanosecondArray, DataFusionError> {
    let (Some(start), Some(duration)) =
        (start.as_primitive_opt::<TimestampNanosecondType>(), duration.as_primitive_opt::<Int64Type>())
    else {
        return Err(DataFusionError::Internal("end_time needs start_time (ns) and duration_ns (int64)".into()));
    };
    let nulls = NullBuffer::union(start.nulls(), duration.nulls());
    let values: Vec<i64> =
        start.values().iter().zip(duration.values().iter()).map(|(s, d)| s.wrapping_add(*d)).collect();
    Ok(TimestampNanosecondArray::new(values.into(), nulls).with_timezone_opt(start.timezone()))
}

/// A batch read from a segment file (either layout, any projection) as the
/// table shows it: binary ids as hex text, and `end_time` computed when the
/// batch has `start_time` and `duration_ns` but not `end_time` and the
/// table's full set of columns is wanted (`whole`).
pub(crate) fn to_table(batch: RecordBatch, whole: bool) -> Result<RecordBatch, StoreError> {
    let convert = |c: &ArrayRef| -> ArrayRef {
        match c.as_fixed_size_binary_opt() {
            Some(ids) => Arc::new(ids_to_hex(ids)),
            None => Arc::clone(c),
        }
    };
    if whole {
        let table = span_schema();
        let mut columns = Vec::with_capacity(table.fields().len());
        for f in table.fields() {
            let c = match batch.column_by_name(f.name()) {
                Some(c) => convert(c),
                None if f.name() == "end_time" => {
                    let part = |n: &str| {
                        batch.column_by_name(n).ok_or_else(|| StoreError::Corrupt(format!("segment lacks {n}")))
                    };
                    Arc::new(end_times(part("start_time")?, part("duration_ns")?)?)
                }
                None => return Err(StoreError::Corrupt(format!("segment lacks {}", f.name()))),
            };
            columns.push(c);
        }
        return Ok(RecordBatch::try_new(table, columns)?);
    }
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::FixedSizeBinary(_) => Field::new(f.name(), DataType::Utf8, f.is_nullable()),
            _ => f.as_ref().clone(),
        })
        .collect();
    let columns = batch.columns().iter().map(convert).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Adapts a scan of segment files of either layout to the `spans` table: per
/// file, a reference to a binary id column becomes [`HexId`] of it, and one to
/// an `end_time` the file lacks becomes [`EndTime`] of the two columns it is
/// made of. Everything else is DataFusion's default adaptation.
#[derive(Debug)]
pub(crate) struct SpanFiles;

impl PhysicalExprAdapterFactory for SpanFiles {
    fn create(&self, logical: SchemaRef, physical: SchemaRef) -> Result<Arc<dyn PhysicalExprAdapter>> {
        // The default adapter then sees the binary columns as the file has them.
        let fields: Vec<FieldRef> = logical
            .fields()
            .iter()
            .map(|f| match physical.field_with_name(f.name()) {
                Ok(p) if matches!(p.data_type(), DataType::FixedSizeBinary(_)) => Arc::new(p.clone()),
                _ => Arc::clone(f),
            })
            .collect();
        let derived = physical.index_of("end_time").is_err()
            && physical.index_of("start_time").is_ok()
            && physical.index_of("duration_ns").is_ok();
        let inner = DefaultPhysicalExprAdapterFactory
            .create(Arc::new(Schema::new_with_metadata(fields, logical.metadata().clone())), Arc::clone(&physical))?;
        Ok(Arc::new(SpanFileAdapter { inner, physical, derived }))
    }
}

#[derive(Debug)]
struct SpanFileAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    physical: SchemaRef,
    /// The file has no `end_time`: it is derived.
    derived: bool,
}

impl PhysicalExprAdapter for SpanFileAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        let column = |name: &str| -> Result<Arc<dyn PhysicalExpr>> {
            Ok(Arc::new(Column::new_with_schema(name, &self.physical)?))
        };
        let ours = expr
            .transform_up(|e| {
                let Some(c) = e.downcast_ref::<Column>() else {
                    return Ok(Transformed::no(e));
                };
                if c.name() == "end_time" && self.derived {
                    let end = EndTime { start: column("start_time")?, duration: column("duration_ns")? };
                    return Ok(Transformed::yes(Arc::new(end) as Arc<dyn PhysicalExpr>));
                }
                match self.physical.field_with_name(c.name()) {
                    Ok(f) if matches!(f.data_type(), DataType::FixedSizeBinary(_)) => {
                        Ok(Transformed::yes(Arc::new(HexId { id: column(c.name())? }) as Arc<dyn PhysicalExpr>))
                    }
                    _ => Ok(Transformed::no(e)),
                }
            })
            .data()?;
        self.inner.rewrite(ours)
    }
}

/// A binary id column as the hex text the table shows.
#[derive(Debug, Eq)]
pub(crate) struct HexId {
    id: Arc<dyn PhysicalExpr>,
}

impl PartialEq for HexId {
    fn eq(&self, other: &Self) -> bool {
        self.id.as_ref() == other.id.as_ref()
    }
}

impl Hash for HexId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.as_ref().hash(state);
    }
}

impl fmt::Display for HexId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hex({})", self.id)
    }
}

impl PhysicalExpr for HexId {
    fn return_field(&self, input: &Schema) -> Result<FieldRef> {
        let f = self.id.return_field(input)?;
        Ok(Arc::new(Field::new(f.name(), DataType::Utf8, f.is_nullable())))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let ids = self.id.evaluate(batch)?.into_array(batch.num_rows())?;
        let ids = ids
            .as_fixed_size_binary_opt()
            .ok_or_else(|| DataFusionError::Internal(format!("{} is not binary", self.id)))?;
        Ok(ColumnarValue::Array(Arc::new(ids_to_hex(ids))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.id]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        let [id] =
            <[_; 1]>::try_from(children).map_err(|_| DataFusionError::Internal("hex of one id column".into()))?;
        Ok(Arc::new(HexId { id }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "encode(")?;
        self.id.fmt_sql(f)?;
        write!(f, ", 'hex')")
    }
}

/// `end_time` of a file that does not store it: `start_time + duration_ns`.
#[derive(Debug, Eq)]
pub(crate) struct EndTime {
    start: Arc<dyn PhysicalExpr>,
    duration: Arc<dyn PhysicalExpr>,
}

impl PartialEq for EndTime {
    fn eq(&self, other: &Self) -> bool {
        self.start.as_ref() == other.start.as_ref() && self.duration.as_ref() == other.duration.as_ref()
    }
}

impl Hash for EndTime {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.start.as_ref().hash(state);
        self.duration.as_ref().hash(state);
    }
}

impl fmt::Display for EndTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "end_time({} + {})", self.start, self.duration)
    }
}

impl PhysicalExpr for EndTime {
    fn return_field(&self, input: &Schema) -> Result<FieldRef> {
        let start = self.start.return_field(input)?;
        let nullable = start.is_nullable() || self.duration.nullable(input)?;
        Ok(Arc::new(Field::new("end_time", start.data_type().clone(), nullable)))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let start = self.start.evaluate(batch)?.into_array(batch.num_rows())?;
        let duration = self.duration.evaluate(batch)?.into_array(batch.num_rows())?;
        Ok(ColumnarValue::Array(Arc::new(end_times(&start, &duration)?)))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.start, &self.duration]
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        let [start, duration] = <[_; 2]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("end_time of start and duration".into()))?;
        Ok(Arc::new(EndTime { start, duration }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.start.fmt_sql(f)?;
        write!(f, " + ")?;
        self.duration.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_bytes_and_others_do_not_convert() {
        let text = StringArray::from(vec![Some("00ff10a0b1c2d3e4"), None, Some("ffffffffffffffff")]);
        let bin = ids_to_binary(&text).expect("valid ids");
        assert_eq!(bin.value(0), [0x00, 0xff, 0x10, 0xa0, 0xb1, 0xc2, 0xd3, 0xe4]);
        assert!(bin.is_null(1));
        assert_eq!(ids_to_hex(&bin), text);
        for bad in ["00FF10A0B1C2D3E4", "00ff10a0b1c2d3e", "00ff10a0b1c2d3e4a", "", "00ff10a0b1c2d3eg"] {
            assert!(ids_to_binary(&StringArray::from(vec![bad])).is_none(), "{bad:?} must keep the text layout");
        }
        // Every byte in every place: only 0-9 and a-f convert, to their value.
        for c in 0..=u8::MAX {
            let value = (c as char).to_digit(16).filter(|_| !c.is_ascii_uppercase());
            for at in 0..16 {
                let mut id = *b"0000000000000000";
                id[at] = c;
                let got = std::str::from_utf8(&id).ok().and_then(id_bytes);
                let want = value.map(|v| {
                    let mut b = [0u8; 8];
                    b[at / 2] = (v as u8) << (if at % 2 == 0 { 4 } else { 0 });
                    b
                });
                assert_eq!(got, want, "byte {c:#04x} at {at}");
            }
        }
    }
}
