//! SQL tables made from rows in memory, such as `findings` and `changes`
//! beside `spans`: one column at a time, each from a function of a row.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::{DateTime, Utc};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;

use crate::StoreError;

/// Builds a table over `rows`, column by column.
#[derive(Debug)]
pub struct RowsTable<'a, T> {
    rows: &'a [T],
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

impl<'a, T> RowsTable<'a, T> {
    pub fn new(rows: &'a [T]) -> Self {
        Self { rows, fields: Vec::new(), columns: Vec::new() }
    }

    fn push(mut self, name: &str, ty: DataType, nullable: bool, column: ArrayRef) -> Self {
        self.fields.push(Field::new(name, ty, nullable));
        self.columns.push(column);
        self
    }

    pub fn text(self, name: &str, f: impl Fn(&T) -> String) -> Self {
        let a = Arc::new(StringArray::from(self.rows.iter().map(f).collect::<Vec<_>>()));
        self.push(name, DataType::Utf8, false, a)
    }

    pub fn opt_text(self, name: &str, f: impl Fn(&T) -> Option<String>) -> Self {
        let a = Arc::new(StringArray::from(self.rows.iter().map(f).collect::<Vec<_>>()));
        self.push(name, DataType::Utf8, true, a)
    }

    pub fn float(self, name: &str, f: impl Fn(&T) -> f64) -> Self {
        let a = Arc::new(Float64Array::from(self.rows.iter().map(f).collect::<Vec<_>>()));
        self.push(name, DataType::Float64, false, a)
    }

    pub fn int(self, name: &str, f: impl Fn(&T) -> i64) -> Self {
        let a = Arc::new(Int64Array::from(self.rows.iter().map(f).collect::<Vec<_>>()));
        self.push(name, DataType::Int64, false, a)
    }

    pub fn opt_int(self, name: &str, f: impl Fn(&T) -> Option<i64>) -> Self {
        let a = Arc::new(Int64Array::from(self.rows.iter().map(f).collect::<Vec<_>>()));
        self.push(name, DataType::Int64, true, a)
    }

    pub fn boolean(self, name: &str, f: impl Fn(&T) -> bool) -> Self {
        let a = Arc::new(BooleanArray::from(self.rows.iter().map(f).collect::<Vec<_>>()));
        self.push(name, DataType::Boolean, false, a)
    }

    /// A UTC timestamp, typed as `spans`' times are.
    pub fn time(self, name: &str, f: impl Fn(&T) -> DateTime<Utc>) -> Self {
        let nanos = self.rows.iter().map(|r| f(r).timestamp_nanos_opt().unwrap_or(0)).collect::<Vec<_>>();
        let a = Arc::new(TimestampNanosecondArray::from(nanos).with_timezone("UTC"));
        self.push(name, andon_model::schema::timestamp_type(), false, a)
    }

    pub fn build(self) -> Result<Arc<dyn TableProvider>, StoreError> {
        let schema = Arc::new(Schema::new(self.fields));
        let batch = RecordBatch::try_new(Arc::clone(&schema), self.columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}
