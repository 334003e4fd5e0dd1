//! Query results as JSON: `{"columns": [...], "rows": [[...]]}`, for the SQL
//! API and the UI's SQL console alike.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Value, json};

/// One cell as JSON: numbers as numbers, timestamps as RFC 3339 strings, lists,
/// structs and maps as JSON arrays and objects.
fn cell(array: &dyn Array, i: usize, fmt: &FormatOptions<'_>) -> Value {
    if array.is_null(i) {
        return Value::Null;
    }
    macro_rules! num {
        ($t:ty) => {
            json!(array.as_primitive::<$t>().value(i))
        };
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(i)),
        DataType::Int8 => num!(Int8Type),
        DataType::Int16 => num!(Int16Type),
        DataType::Int32 => num!(Int32Type),
        DataType::Int64 => num!(Int64Type),
        DataType::UInt8 => num!(UInt8Type),
        DataType::UInt16 => num!(UInt16Type),
        DataType::UInt32 => num!(UInt32Type),
        DataType::UInt64 => num!(UInt64Type),
        DataType::Float32 => serde_json::Number::from_f64(f64::from(array.as_primitive::<Float32Type>().value(i)))
            .map_or(Value::Null, Value::Number),
        DataType::Float64 => serde_json::Number::from_f64(array.as_primitive::<Float64Type>().value(i))
            .map_or(Value::Null, Value::Number),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(i).to_owned()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(i).to_owned()),
        DataType::Utf8View => Value::String(array.as_string_view().value(i).to_owned()),
        DataType::List(_) => {
            let v = array.as_list::<i32>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j, fmt)).collect())
        }
        DataType::LargeList(_) => {
            let v = array.as_list::<i64>().value(i);
            Value::Array((0..v.len()).map(|j| cell(v.as_ref(), j, fmt)).collect())
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            Value::Object(
                fields.iter().zip(s.columns()).map(|(f, c)| (f.name().clone(), cell(c.as_ref(), i, fmt))).collect(),
            )
        }
        DataType::Map(_, _) => {
            let m = array.as_map();
            let entries = m.value(i);
            let (keys, values) = (entries.column(0), entries.column(1));
            let key = |j| match cell(keys.as_ref(), j, fmt) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Value::Object((0..entries.len()).map(|j| (key(j), cell(values.as_ref(), j, fmt))).collect())
        }
        _ => match ArrayFormatter::try_new(array, fmt) {
            Ok(f) => Value::String(f.value(i).to_string()),
            Err(_) => Value::Null,
        },
    }
}

/// `{"columns": [...], "rows": [[...]]}` for a query result.
pub fn to_json(schema: &arrow::datatypes::Schema, batches: &[RecordBatch]) -> (Vec<String>, Vec<Vec<Value>>) {
    let fmt = FormatOptions::default().with_timestamp_tz_format(Some("%Y-%m-%dT%H:%M:%S%.fZ"));
    let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            rows.push(b.columns().iter().map(|c| cell(c.as_ref(), i, &fmt)).collect());
        }
    }
    (columns, rows)
}
