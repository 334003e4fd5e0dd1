//! The `spans` table: a DataFusion `TableProvider` over the buffered batches and the
//! Parquet segments of one tenant (or of all tenants, for operators).
//!
//! Each scan takes one consistent snapshot from the store, so a span is seen exactly
//! once even while a flush moves it from the buffer into a segment. Segments are
//! pruned by hour from the `start_time` bounds in the query; inside a segment,
//! DataFusion prunes row groups and pages by statistics and bloom filters.

use std::sync::{Arc, LazyLock};

use andon_model::{Tenant, span_schema};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::{CachedParquetFileReaderFactory, ParquetFileReaderFactory};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_expr_adapter::PhysicalExprAdapterFactory;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::union::UnionExec;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};

use crate::Store;
use crate::layout::SpanFiles;
use crate::segment::NANOS_PER_HOUR;

#[derive(Debug, Clone)]
pub struct SpansTable {
    store: Store,
    tenant: Option<Tenant>,
    /// Read exactly these segments and no buffer (compaction's input).
    only: Option<Vec<crate::Segment>>,
}

impl SpansTable {
    /// The spans of one tenant.
    pub fn for_tenant(store: Store, tenant: Tenant) -> Self {
        Self { store, tenant: Some(tenant), only: None }
    }

    /// The spans of every tenant.
    pub fn all_tenants(store: Store) -> Self {
        Self { store, tenant: None, only: None }
    }

    /// Exactly `segments`, nothing buffered.
    pub(crate) fn segments(store: Store, segments: Vec<crate::Segment>) -> Self {
        Self { store, tenant: None, only: Some(segments) }
    }
}

fn timestamp_nanos(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(*t),
        ScalarValue::TimestampMicrosecond(Some(t), _) => t.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(t), _) => t.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn is_column(e: &Expr, name: &str) -> bool {
    match e {
        Expr::Column(c) => c.name == name,
        _ => false,
    }
}

/// Narrows `[lo, hi]` (hours) by one conjunct over the time column `time`.
pub(crate) fn narrow(time: &str, e: &Expr, hours: &mut (i64, i64)) {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e else {
        return;
    };
    if *op == Operator::And {
        narrow(time, left, hours);
        narrow(time, right, hours);
        return;
    }
    let (op, lit) = match (left.as_ref(), right.as_ref()) {
        (l, Expr::Literal(v, _)) if is_column(l, time) => (*op, v),
        (Expr::Literal(v, _), r) if is_column(r, time) => match op.swap() {
            Some(op) => (op, v),
            None => return,
        },
        _ => return,
    };
    let Some(t) = timestamp_nanos(lit) else {
        return;
    };
    let hour = t.div_euclid(NANOS_PER_HOUR);
    match op {
        Operator::Gt | Operator::GtEq => hours.0 = hours.0.max(hour),
        Operator::Lt | Operator::LtEq => hours.1 = hours.1.min(hour),
        Operator::Eq => {
            hours.0 = hours.0.max(hour);
            hours.1 = hours.1.min(hour);
        }
        _ => {}
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        span_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters are used for pruning and re-applied above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut hours = (i64::MIN, i64::MAX);
        for f in filters {
            narrow("start_time", f, &mut hours);
        }
        let snap = match &self.only {
            Some(segments) => crate::Snapshot { batches: Vec::new(), segments: segments.clone() },
            None => self.store.snapshot(self.tenant.as_ref(), hours),
        };
        // Segments kept in a bucket are read from their local copy when cached.
        let mut files: Vec<(std::path::PathBuf, u64)> = Vec::new();
        let mut remote_files: Vec<(String, u64)> = Vec::new();
        let remote = self.store.remote();
        for seg in &snap.segments {
            match remote {
                Some(r) if !r.cached(&seg.path) => {
                    let key = r.key(&seg.path).map_err(|e| DataFusionError::External(Box::new(e)))?;
                    remote_files.push((key.to_string(), seg.bytes));
                }
                _ => files.push((seg.path.clone(), seg.bytes)),
            }
        }
        // Two partitions keep both cores busy on the freshest data.
        let half = snap.batches.len().div_ceil(2).max(1);
        let parts: Vec<Vec<_>> = snap.batches.chunks(half).map(<[_]>::to_vec).collect();
        // Compaction's inputs are each sorted as a flush or a compaction wrote
        // them: one partition per file, declared sorted, so the merge is a
        // streaming merge of sorted files instead of a sort.
        let order = self.only.is_some().then_some(SEGMENT_ORDER);
        let mut plan =
            files_and_memory(state, span_schema(), &files, &parts, projection, limit, order, Some(&SPAN_FILES)).await?;
        if let Some(r) = remote.filter(|_| !remote_files.is_empty()) {
            r.register(state.runtime_env());
            let url = r.url().clone();
            let fetched =
                scan_parquet(state, span_schema(), url, &remote_files, projection, limit, order, Some(&SPAN_FILES))
                    .await?;
            plan = if files.is_empty() && parts.iter().all(Vec::is_empty) {
                fetched
            } else {
                UnionExec::try_new(vec![plan, fetched])?
            };
        }
        Ok(plan)
    }
}

/// Segment files of either layout, read as the `spans` table.
static SPAN_FILES: LazyLock<Arc<dyn PhysicalExprAdapterFactory>> = LazyLock::new(|| Arc::new(SpanFiles));

/// The order of the rows in every segment (`segment::sort_by_hour`, and
/// compaction's merge): by service, span name and start, ascending. The
/// columns are not nullable.
pub(crate) const SEGMENT_ORDER: &[&str] = &["service_name", "name", "start_time"];

/// The plan of a table served from Parquet files (spread over the session's
/// partitions, or with `sorted_by`, each file its own partition declared
/// sorted by those columns, ascending) and batches in memory (one partition
/// per inner list). `adapter` adapts each file to `schema` where they differ.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn files_and_memory(
    state: &dyn Session,
    schema: SchemaRef,
    files: &[(std::path::PathBuf, u64)],
    parts: &[Vec<arrow::array::RecordBatch>],
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
    sorted_by: Option<&[&str]>,
    adapter: Option<&Arc<dyn PhysicalExprAdapterFactory>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    if !files.is_empty() {
        let files: Vec<(String, u64)> = files.iter().map(|(p, b)| (p.to_string_lossy().into_owned(), *b)).collect();
        let url = ObjectStoreUrl::local_filesystem();
        inputs
            .push(scan_parquet(state, Arc::clone(&schema), url, &files, projection, limit, sorted_by, adapter).await?);
    }
    if parts.iter().any(|p| !p.is_empty()) {
        inputs.push(MemorySourceConfig::try_new_exec(parts, Arc::clone(&schema), projection.cloned())?);
    }
    if inputs.is_empty() {
        let projected = match projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema,
        };
        return Ok(Arc::new(EmptyExec::new(projected)));
    }
    UnionExec::try_new(inputs)
}

/// The plan of Parquet files at `files` (location, size) in the object store of
/// `url`, spread over the session's partitions; with `sorted_by`, one
/// partition per file, each declared sorted by those columns, ascending.
#[allow(clippy::too_many_arguments)]
async fn scan_parquet(
    state: &dyn Session,
    schema: SchemaRef,
    url: ObjectStoreUrl,
    files: &[(String, u64)],
    projection: Option<&Vec<usize>>,
    limit: Option<usize>,
    sorted_by: Option<&[&str]>,
    adapter: Option<&Arc<dyn PhysicalExprAdapterFactory>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let n = match sorted_by {
        Some(_) => files.len().max(1),
        None => state.config().target_partitions().max(1).min(files.len().max(1)),
    };
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n];
    for (i, (location, bytes)) in files.iter().enumerate() {
        groups[i % n].push(PartitionedFile::new(location.clone(), *bytes));
    }
    let options = state.table_options().parquet.clone();
    let readers = IndexedReaders(CachedParquetFileReaderFactory::new(
        state.runtime_env().object_store(&url)?,
        state.runtime_env().cache_manager.get_file_metadata_cache(),
    ));
    let mut source = ParquetSource::new(Arc::clone(&schema))
        .with_table_parquet_options(options.clone())
        .with_parquet_file_reader_factory(Arc::new(readers));
    if let Some(hint) = options.global.metadata_size_hint {
        source = source.with_metadata_size_hint(hint);
    }
    let mut config = FileScanConfigBuilder::new(url, Arc::new(source))
        .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
        .with_projection_indices(projection.cloned())?
        .with_limit(limit)
        .with_expr_adapter(adapter.cloned());
    if let Some(columns) = sorted_by {
        let ascending = SortOptions { descending: false, nulls_first: false };
        let exprs = columns
            .iter()
            .map(|c| Ok(PhysicalSortExpr::new(Arc::new(Column::new_with_schema(c, &schema)?), ascending)))
            .collect::<Result<Vec<_>>>()?;
        config = config.with_output_ordering(LexOrdering::new(exprs).into_iter().collect());
    }
    Ok(DataSourceExec::from_data_source(config.build()))
}

/// Readers of the store's Parquet files (segments, their rollups, sessions
/// files) whose metadata, page index included, comes from the runtime's
/// metadata cache. A scan first asks for the footer alone and then reads the
/// page index from the file whenever a filter can use it, every statement
/// again; a file is never changed once written (each is named by its flush),
/// so its page index is read and decoded once, cached with the footer.
#[derive(Debug)]
struct IndexedReaders(CachedParquetFileReaderFactory);

impl ParquetFileReaderFactory for IndexedReaders {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let inner = self.0.create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(IndexedReader { inner, options: None }))
    }
}

/// A file's reader that asks the cache for the page index with the footer.
struct IndexedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    /// The options of the last metadata request, with the page index asked for.
    options: Option<ArrowReaderOptions>,
}

impl AsyncFileReader for IndexedReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let asked = options.cloned().unwrap_or_default().with_page_index_policy(PageIndexPolicy::Optional);
        self.options = Some(asked);
        self.inner.get_metadata(self.options.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn ts(secs: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(Some(secs * 1_000_000_000), Some("UTC".into())))
    }

    #[test]
    fn start_time_bounds_narrow_the_hours() {
        let mut h = (i64::MIN, i64::MAX);
        narrow("start_time", &col("start_time").gt_eq(ts(7_200)).and(col("start_time").lt(ts(4 * 3_600 + 5))), &mut h);
        assert_eq!(h, (2, 4));
        let mut h = (i64::MIN, i64::MAX);
        narrow("start_time", &ts(3_600).lt_eq(col("start_time")), &mut h);
        assert_eq!(h, (1, i64::MAX));
        let mut h = (i64::MIN, i64::MAX);
        narrow("start_time", &col("end_time").gt(ts(7_200)), &mut h);
        assert_eq!(h, (i64::MIN, i64::MAX), "only start_time decides the partition");
    }
}
