//! Read-only SQL over the `spans` table, on a runtime of its own so a heavy query
//! never starves the receivers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use andon_model::Tenant;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use crate::{SpansTable, Store, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Rows returned at most; the rest are cut and the output marked truncated.
    pub max_rows: usize,
    /// Bytes of result (Arrow memory) returned at most, cut like rows.
    pub max_response_bytes: usize,
    pub timeout: Duration,
    /// Memory all running queries share: sorts, joins and aggregations spill
    /// to disk past it where DataFusion can, and fail cleanly where it cannot.
    pub memory_bytes: usize,
    /// Interactive queries (`/api/v1/query`, the CLI) running at once; more
    /// wait a moment for a slot, then get a busy answer.
    pub max_concurrent: usize,
    /// Disk all running queries may fill with spill files; past it the query
    /// that needs more fails, as for memory.
    pub spill_bytes: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_response_bytes: 32 << 20,
            timeout: Duration::from_secs(30),
            memory_bytes: 1 << 30,
            max_concurrent: 4,
            spill_bytes: 4 << 30,
        }
    }
}

/// How long an interactive query waits for a free slot.
const SLOT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
    pub elapsed: Duration,
}

/// Owns the query runtime; shut down without blocking when dropped.
#[derive(Debug)]
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A table served beside `spans` (`findings`, `changes`, `runs`), built for
/// each statement that names it.
pub trait ExtraTable: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// The table as `tenant` sees it (every tenant's rows when `None`).
    fn provider(&self, tenant: Option<&Tenant>) -> Result<Arc<dyn TableProvider>, StoreError>;
}

/// The tables one session serves, each built when the planner first asks for it.
#[derive(Debug)]
struct Tables {
    store: Store,
    tenant: Option<Tenant>,
    extra: Vec<Arc<dyn ExtraTable>>,
}

const BUILT_IN: [&str; 3] = ["spans", "span_metrics", "sessions"];

#[async_trait::async_trait]
impl SchemaProvider for Tables {
    fn table_names(&self) -> Vec<String> {
        BUILT_IN.iter().map(|n| n.to_string()).chain(self.extra.iter().map(|e| e.name().to_owned())).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let (store, tenant) = (self.store.clone(), self.tenant.clone());
        let table: Arc<dyn TableProvider> = match name {
            "spans" => Arc::new(match tenant {
                Some(t) => SpansTable::for_tenant(store, t),
                None => SpansTable::all_tenants(store),
            }),
            "span_metrics" => Arc::new(crate::rollup::MetricsTable { store, tenant }),
            "sessions" => Arc::new(crate::sessions::SessionsTable { store, tenant }),
            _ => match self.extra.iter().find(|e| e.name() == name) {
                Some(extra) => {
                    extra.provider(self.tenant.as_ref()).map_err(|e| DataFusionError::External(Box::new(e)))?
                }
                None => return Ok(None),
            },
        };
        Ok(Some(table))
    }

    fn table_exist(&self, name: &str) -> bool {
        BUILT_IN.contains(&name) || self.extra.iter().any(|e| e.name() == name)
    }
}

#[derive(Debug, Clone)]
pub struct QueryEngine {
    store: Store,
    extra: Arc<parking_lot::RwLock<Vec<Arc<dyn ExtraTable>>>>,
    /// Keeps the runtime alive as long as any clone of the engine.
    _runtime: Arc<QueryRuntime>,
    handle: tokio::runtime::Handle,
    limits: QueryLimits,
    /// The memory pool and spill files every session shares.
    env: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl QueryEngine {
    pub fn new(store: Store, limits: QueryLimits, threads: usize) -> Result<Self, StoreError> {
        use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
        use datafusion::execution::memory_pool::FairSpillPool;
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("andon-query")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        // Spill files go under the data directory, on the disk sized for data,
        // in a temporary directory of each engine's own.
        let spill = store.data_dir().join("spill");
        std::fs::create_dir_all(&spill)?;
        let env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_bytes.max(16 << 20))))
            .with_disk_manager_builder(
                DiskManagerBuilder::default()
                    .with_mode(DiskManagerMode::Directories(vec![spill]))
                    .with_max_temp_directory_size(limits.spill_bytes),
            )
            .build_arc()?;
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1)));
        let arriving: Arc<dyn ExtraTable> = Arc::new(crate::arrivals::ArrivingTraces(Arc::clone(store.arrivals())));
        Ok(Self {
            store,
            extra: Arc::new(parking_lot::RwLock::new(vec![arriving])),
            _runtime: Arc::new(QueryRuntime(Some(rt))),
            handle,
            limits,
            env,
            slots,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves `table` beside `spans` in every later statement.
    pub fn register(&self, table: Arc<dyn ExtraTable>) {
        self.extra.write().push(table);
    }

    /// A session whose `spans` table shows `tenant`'s spans (every tenant's if `None`).
    /// Its tables are built only when a statement names them: the planner asks
    /// [`Tables`] for each table it resolves, so a detector's query over `spans`
    /// never reads `findings`, `changes` or the recorded `runs`.
    pub fn session(&self, tenant: Option<Tenant>) -> Result<SessionContext, StoreError> {
        let mut config = SessionConfig::new().with_target_partitions(2).with_information_schema(false);
        let opts = config.options_mut();
        opts.execution.parquet.pushdown_filters = true;
        opts.execution.parquet.reorder_filters = true;
        opts.sql_parser.enable_ident_normalization = true;
        let default_catalog = opts.catalog.default_catalog.clone();
        let default_schema = opts.catalog.default_schema.clone();
        let ctx = SessionContext::new_with_config_rt(config, Arc::clone(&self.env));
        let tables = Tables { store: self.store.clone(), tenant, extra: self.extra.read().clone() };
        let catalog = ctx
            .catalog(&default_catalog)
            .ok_or_else(|| StoreError::Refused(format!("no catalog {default_catalog}")))?;
        catalog.register_schema(&default_schema, Arc::new(tables))?;
        Ok(ctx)
    }

    /// Runs one read-only statement. Anything that is not a query (DDL, DML, `SET`,
    /// `COPY`) is refused.
    pub async fn run(&self, tenant: Option<Tenant>, sql: &str) -> Result<QueryOutput, StoreError> {
        let slot = tokio::time::timeout(SLOT_WAIT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| StoreError::Busy(self.limits.max_concurrent))?
            .map_err(|_| StoreError::Closed)?;
        let out = self
            .run_capped(tenant, sql, self.limits.max_rows, self.limits.max_response_bytes, self.limits.timeout)
            .await;
        drop(slot);
        out
    }

    /// Runs one read-only statement and returns every row, for Andon's own readers
    /// (the detectors) whose queries aggregate and bound their output themselves.
    /// Their time limit is ten times the interactive one: a detection pass over
    /// hours of busy traffic reads far more than a person's query.
    pub async fn collect(&self, tenant: Option<Tenant>, sql: &str) -> Result<QueryOutput, StoreError> {
        self.run_capped(tenant, sql, usize::MAX, usize::MAX, self.limits.timeout * 10).await
    }

    async fn run_capped(
        &self,
        tenant: Option<Tenant>,
        sql: &str,
        max_rows: usize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<QueryOutput, StoreError> {
        let started = Instant::now();
        let ctx = self.session(tenant)?;
        let head = sql.chars().take(200).collect::<String>().split_whitespace().collect::<Vec<_>>().join(" ");
        // The whole statement at `trace`, to reproduce one (`EXPLAIN ANALYZE`).
        tracing::trace!(target: "andon_store::query", sql, "statement");
        let sql = sql.to_owned();
        let task = self.handle.spawn(async move {
            let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
            let df = ctx.sql_with_options(&sql, options).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df.execute_stream().await?;
            let mut batches = Vec::new();
            let (mut rows, mut bytes) = (0, 0);
            let mut truncated = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let size = batch.get_array_memory_size();
                if bytes + size > max_bytes {
                    // Keep the share of the batch that fits, by its average row size.
                    let per_row = (size / batch.num_rows().max(1)).max(1);
                    let fit = ((max_bytes - bytes) / per_row).min(max_rows - rows);
                    batches.push(batch.slice(0, fit));
                    truncated = true;
                    break;
                }
                if rows + batch.num_rows() > max_rows {
                    batches.push(batch.slice(0, max_rows - rows));
                    truncated = true;
                    break;
                }
                rows += batch.num_rows();
                bytes += size;
                batches.push(batch);
            }
            Ok::<_, StoreError>((schema, batches, truncated))
        });
        let abort = task.abort_handle();
        let result = match tokio::time::timeout(timeout, task).await {
            Ok(joined) => joined.map_err(|e| StoreError::Refused(format!("query task failed: {e}")))?.map_err(|e| {
                match e {
                    // Past the spill space, DataFusion's error comes wrapped as an I/O one.
                    StoreError::Query(e)
                        if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
                            || e.to_string().contains("disk space during the spilling") =>
                    {
                        StoreError::TooBig {
                            budget_mb: self.limits.memory_bytes >> 20,
                            detail: e.find_root().to_string(),
                        }
                    }
                    e => e,
                }
            }),
            Err(_) => {
                abort.abort();
                Err(StoreError::Timeout(timeout))
            }
        };
        let elapsed = started.elapsed();
        self.store.stats().query_latency.observe(elapsed);
        tracing::debug!(
            target: "andon_store::query",
            ms = elapsed.as_secs_f64() * 1e3,
            sql = head,
            "query"
        );
        match result {
            Ok((schema, batches, truncated)) => Ok(QueryOutput { schema, batches, truncated, elapsed }),
            Err(e) => {
                self.store.stats().add_query_failure();
                Err(e)
            }
        }
    }
}

/// Rows a compaction's input streams read at a time: the merge holds one batch
/// of every input at once.
const MERGE_BATCH_ROWS: usize = 2048;

/// How compaction reads its inputs: one slice of the hour at a time
/// ([`compaction_sql`]), each input file declared sorted, so the plan is a
/// streaming merge of the files (one batch of each held at a time), not a sort.
fn compaction_context(store: &Store, segments: Vec<crate::Segment>) -> Result<SessionContext, StoreError> {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;

    let runtime = RuntimeEnvBuilder::new().with_memory_limit(96 << 20, 1.0).build_arc()?;
    let mut config = SessionConfig::new().with_target_partitions(1).with_batch_size(MERGE_BATCH_ROWS);
    // Each slice's statement skips the other slices' row groups.
    config.options_mut().execution.parquet.pushdown_filters = true;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    ctx.register_table("input", Arc::new(SpansTable::segments(store.clone(), segments)))?;
    Ok(ctx)
}

/// The rows of one slice (`segment::SLICE_NS`, counted from the epoch) in the
/// segments' order. Inside a slice every input is sorted that way: a segment
/// holds each slice as its own row groups, and one written before slices is
/// sorted that way as a whole, which its rows of one slice still are.
fn compaction_sql(slice: i64) -> String {
    let at = |ns: i64| crate::sql::ts(chrono::DateTime::from_timestamp_nanos(ns));
    let order: Vec<String> = crate::table::SEGMENT_ORDER.iter().map(|c| format!("{c} ASC NULLS LAST")).collect();
    format!(
        "SELECT * FROM input WHERE start_time >= {} AND start_time < {} ORDER BY {}",
        at(slice * crate::segment::SLICE_NS),
        at((slice + 1) * crate::segment::SLICE_NS),
        order.join(", ")
    )
}

/// The rows of `segments` (one partition), sorted as segments are, slice
/// after slice, streamed under a memory budget.
pub(crate) fn sorted_segments(
    store: &Store,
    segments: Vec<crate::Segment>,
) -> Result<impl Iterator<Item = Result<RecordBatch, StoreError>>, StoreError> {
    use crate::segment::{NANOS_PER_HOUR, SLICE_NS};

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let first = segments.first().map_or(0, |s| s.hour) * NANOS_PER_HOUR / SLICE_NS;
    let mut slices = first..first + NANOS_PER_HOUR / SLICE_NS;
    let ctx = compaction_context(store, segments)?;
    let mut stream: Option<datafusion::execution::SendableRecordBatchStream> = None;
    Ok(std::iter::from_fn(move || {
        loop {
            if let Some(s) = stream.as_mut() {
                match rt.block_on(s.next()) {
                    Some(r) => return Some(r.map_err(StoreError::from)),
                    None => stream = None,
                }
            }
            let slice = slices.next()?;
            let started = rt.block_on(async { ctx.sql(&compaction_sql(slice)).await?.execute_stream().await });
            match started {
                Ok(s) => stream = Some(s),
                Err(e) => {
                    // Nothing after a failed slice: the merged file would lack its rows.
                    slices = 0..0;
                    return Some(Err(StoreError::from(e)));
                }
            }
        }
    }))
}

/// The rows of sessions files (each sorted by `order`, as a sessions file is
/// written) merged in that order, streamed: one batch of each file held at a
/// time, so a merge's memory grows with the number of files, not their size.
pub(crate) fn merged_small_files(
    files: Vec<(std::path::PathBuf, u64)>,
    schema: arrow::datatypes::SchemaRef,
    order: &'static [&'static str],
) -> Result<impl Iterator<Item = Result<RecordBatch, StoreError>>, StoreError> {
    use arrow::compute::SortOptions;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
    use datafusion::physical_plan::ExecutionPlan;
    use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let config = SessionConfig::new().with_target_partitions(1).with_batch_size(MERGE_BATCH_ROWS);
    let ctx = SessionContext::new_with_config(config);
    let mut stream = rt.block_on(async {
        let state = ctx.state();
        let scan =
            crate::table::files_and_memory(&state, Arc::clone(&schema), &files, &[], None, None, Some(order), None)
                .await?;
        // As `lexsort_to_indices` sorted them when the files were written.
        let ascending = SortOptions { descending: false, nulls_first: true };
        let exprs = order
            .iter()
            .map(|c| Ok(PhysicalSortExpr::new(Arc::new(Column::new_with_schema(c, &schema)?), ascending)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let ordering = LexOrdering::new(exprs)
            .ok_or_else(|| datafusion::error::DataFusionError::Internal("a merge without an order".into()))?;
        let merge = Arc::new(SortPreservingMergeExec::new(ordering, scan));
        merge.execute(0, ctx.task_ctx())
    })?;
    Ok(std::iter::from_fn(move || rt.block_on(stream.next()).map(|r| r.map_err(StoreError::from))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The physical plan compaction runs over `segments`, as text.
    pub(crate) fn compaction_plan(store: &Store, segments: Vec<crate::Segment>, slice: i64) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ctx = compaction_context(store, segments).unwrap();
        rt.block_on(async {
            let plan = ctx.sql(&compaction_sql(slice)).await.unwrap().create_physical_plan().await.unwrap();
            datafusion::physical_plan::displayable(plan.as_ref()).indent(true).to_string()
        })
    }

    /// One export of `service` with spans named `a` and `b`, starting at `starts` (Unix ns).
    fn export(service: &str, starts: &[u64], seed: u64) -> RecordBatch {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

        let spans = starts
            .iter()
            .enumerate()
            .map(|(i, &t)| Span {
                trace_id: [seed.to_be_bytes(), (i as u64 + 1).to_be_bytes()].concat(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: ["b", "a"][i % 2].into(),
                kind: 2,
                start_time_unix_nano: t,
                end_time_unix_nano: t + 1_000,
                ..Default::default()
            })
            .collect();
        let service = KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue { value: Some(Value::StringValue(service.into())) }),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![service], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        let tenant = Tenant::default_tenant();
        andon_ingest::convert_request(&req, &tenant, 0, andon_ingest::SpanLimits::NONE).unwrap().batch.unwrap()
    }

    #[test]
    fn a_segments_page_index_is_read_once_and_kept_with_its_footer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(crate::StoreConfig::new(dir.path())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tenant = Tenant::default_tenant();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let hour = now / 3_600_000_000_000 * 3_600_000_000_000 - 3_600_000_000_000;
        let starts: Vec<u64> = (0..60u64).map(|i| hour + i * 60_000_000_000).collect();
        rt.block_on(store.append(&tenant, export("checkout", &starts, 1))).unwrap();
        store.flush().unwrap();
        let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 1).unwrap();
        // A filter on the start time, which the page index narrows.
        let from = chrono::DateTime::from_timestamp_nanos((hour + 30 * 60_000_000_000) as i64);
        let sql = format!("SELECT count(*) AS n FROM spans WHERE start_time >= {}", crate::sql::ts(from));
        let cache = engine.env.cache_manager.get_file_metadata_cache();
        for read in 1..=3 {
            let out = rt.block_on(engine.collect(Some(tenant.clone()), &sql)).unwrap();
            let n = out.batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap().value(0);
            assert_eq!(n, 30, "read {read}: the spans of the last 30 minutes");
            let entries = cache.list_entries();
            assert_eq!(entries.len(), 1, "read {read}: one segment");
            for (path, e) in entries {
                let index = e.value.file_metadata.extra_info().get("page_index").cloned();
                assert_eq!(index.as_deref(), Some("true"), "read {read}: {path} cached with its page index");
                assert_eq!(e.hits, read - 1, "read {read}: {path} read once, then from the cache");
            }
        }
    }

    #[test]
    fn compaction_merges_its_sorted_inputs_slice_by_slice_without_sorting_them() {
        use crate::segment::slice_of;
        use arrow::array::AsArray;
        use arrow::datatypes::TimestampNanosecondType;

        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::StoreConfig::new(dir.path());
        config.flush_interval = Duration::from_secs(3_600);
        config.compact_min_segments = 2;
        config.sessions_snapshot_interval = Duration::ZERO;
        let store = Store::open(config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let tenant = Tenant::default_tenant();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let hour = now / 3_600_000_000_000 * 3_600_000_000_000;
        // Three flushes, each with three services whose spans interleave in time
        // with the other flushes', over every slice of the hour.
        for flush in 0..3u64 {
            for (k, service) in ["checkout", "api", "cart"].into_iter().enumerate() {
                let starts: Vec<u64> =
                    (0..20u64).map(|i| hour + (i * 9 + flush * 3 + k as u64) * 20_000_000_000).collect();
                rt.block_on(store.append(&tenant, export(service, &starts, flush * 10 + k as u64))).unwrap();
            }
            store.flush().unwrap();
        }
        let segments: Vec<crate::Segment> = store.inner.state.read().segments.values().cloned().collect();
        assert_eq!(segments.len(), 3);
        let first = slice_of(hour as i64);
        let plan = compaction_plan(&store, segments.clone(), first);
        assert!(plan.contains("SortPreservingMergeExec"), "{plan}");
        assert!(!plan.contains("SortExec"), "{plan}");
        assert!(plan.contains("pruning_predicate"), "each slice skips the others' row groups: {plan}");

        let key = |service: &str, name: &str, start: i64| (slice_of(start), service.to_owned(), name.to_owned(), start);
        let rows: Vec<(i64, String, String, i64)> = sorted_segments(&store, segments)
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                let s = |c: &str| b.column_by_name(c).unwrap().as_string::<i32>().clone();
                let (service, name) = (s("service_name"), s("name"));
                let start = b.column_by_name("start_time").unwrap().as_primitive::<TimestampNanosecondType>().clone();
                (0..b.num_rows()).map(|i| key(service.value(i), name.value(i), start.value(i))).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(rows.len(), 180);
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(rows, sorted);

        // Its slices hold fewer rows than a row group is closed with: one group.
        assert_eq!(store.compact().unwrap(), 3);
        let merged: Vec<crate::Segment> = store.inner.state.read().segments.values().cloned().collect();
        assert_eq!(merged.len(), 1);
        assert_eq!(row_group_slices(&merged[0].path), vec![(first, first + 11)]);
    }

    /// The first and last slice of each row group of the segment at `path`.
    fn row_group_slices(path: &std::path::Path) -> Vec<(i64, i64)> {
        use crate::segment::slice_of;
        use parquet::file::reader::FileReader;
        use parquet::file::statistics::Statistics;

        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let start = schema.columns().iter().position(|c| c.name() == "start_time").unwrap();
        reader
            .metadata()
            .row_groups()
            .iter()
            .map(|rg| match rg.column(start).statistics() {
                Some(Statistics::Int64(st)) => (slice_of(*st.min_opt().unwrap()), slice_of(*st.max_opt().unwrap())),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_segment_closes_a_row_group_where_the_slice_changes_once_it_holds_enough_rows() {
        use crate::segment::{SLICE_NS, slice_of, sort_by_hour, write_file};

        let dir = tempfile::tempdir().unwrap();
        let hour = 1_796_457_600_000_000_000u64;
        // Four slices of three spans each, sent out of order.
        let starts: Vec<u64> =
            [3u64, 0, 2, 1].iter().flat_map(|s| (0..3).map(move |i| hour + s * SLICE_NS as u64 + i)).collect();
        let batch = export("api", &starts, 1);
        let first = slice_of(hour as i64);
        for (group_rows, expected) in [
            (1, vec![(first, first), (first + 1, first + 1), (first + 2, first + 2), (first + 3, first + 3)]),
            (6, vec![(first, first + 1), (first + 2, first + 3)]),
            (100, vec![(first, first + 3)]),
        ] {
            let sorted = sort_by_hour(std::slice::from_ref(&batch)).unwrap();
            let name = format!("{group_rows}.parquet");
            let (path, _) = write_file(
                dir.path(),
                &name,
                12,
                sorted.gather(0),
                false,
                (group_rows, crate::segment::Codec::Kept),
                true,
            )
            .unwrap();
            assert_eq!(row_group_slices(&path), expected, "closed at {group_rows} rows");
        }
    }

    #[test]
    fn small_files_merge_in_their_order_a_batch_of_each_at_a_time() {
        use arrow::array::{AsArray, Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Int64Type, Schema};

        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("minute", DataType::Int64, false),
            Field::new("session_id", DataType::Utf8, false),
            Field::new("file", DataType::Int64, false),
        ]));
        // Three files, each sorted by (minute, session_id), interleaving; one
        // holds more rows than a merge reads of a file at once.
        let mut files = Vec::new();
        let mut expected: Vec<(i64, String)> = Vec::new();
        for f in 0..3i64 {
            let n = if f == 1 { 3 * MERGE_BATCH_ROWS as i64 } else { 50 };
            let mut rows: Vec<(i64, String)> =
                (0..n).map(|i| ((i * 7 + f) % 40, format!("s{:05}", i * 3 + f))).collect();
            rows.sort();
            expected.extend(rows.iter().cloned());
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.as_str()))),
                    Arc::new(Int64Array::from_iter_values(rows.iter().map(|_| f))),
                ],
            )
            .unwrap();
            let path = dir.path().join(format!("{f}.parquet"));
            let bytes = crate::rollup::write_small_parquet(&path, &batch, false).unwrap();
            files.push((path, bytes));
        }
        expected.sort();
        let merged = merged_small_files(files, Arc::clone(&schema), &["minute", "session_id"]).unwrap();
        let mut got: Vec<(i64, String)> = Vec::new();
        for b in merged {
            let b = b.unwrap();
            assert!(b.num_rows() <= MERGE_BATCH_ROWS);
            let minutes = b.column(0).as_primitive::<Int64Type>();
            let ids = b.column(1).as_string::<i32>();
            got.extend((0..b.num_rows()).map(|i| (minutes.value(i), ids.value(i).to_owned())));
        }
        assert_eq!(got.len(), expected.len());
        assert_eq!(got, expected, "every row once, in (minute, session_id) order");
    }

    #[test]
    fn a_small_file_written_before_a_column_existed_merges_with_it_as_null() {
        use arrow::array::{Array, AsArray, Int64Array};
        use arrow::datatypes::{DataType, Field, Int64Type, Schema};

        let dir = tempfile::tempdir().unwrap();
        let old = Arc::new(Schema::new(vec![Field::new("minute", DataType::Int64, false)]));
        let new = Arc::new(Schema::new(vec![
            Field::new("minute", DataType::Int64, false),
            Field::new("recovered_end", DataType::Int64, true),
        ]));
        let a = RecordBatch::try_new(Arc::clone(&old), vec![Arc::new(Int64Array::from(vec![1, 3]))]).unwrap();
        let b = RecordBatch::try_new(
            Arc::clone(&new),
            vec![Arc::new(Int64Array::from(vec![2, 4])), Arc::new(Int64Array::from(vec![20, 40]))],
        )
        .unwrap();
        let mut files = Vec::new();
        for (name, batch) in [("old.parquet", &a), ("new.parquet", &b)] {
            let path = dir.path().join(name);
            let bytes = crate::rollup::write_small_parquet(&path, batch, false).unwrap();
            files.push((path, bytes));
        }
        let mut got = Vec::new();
        for batch in merged_small_files(files, Arc::clone(&new), &["minute"]).unwrap() {
            let batch = batch.unwrap();
            assert_eq!(batch.schema().fields().len(), 2, "the newer column is kept");
            let (m, r) = (batch.column(0).as_primitive::<Int64Type>(), batch.column(1).as_primitive::<Int64Type>());
            got.extend((0..batch.num_rows()).map(|i| (m.value(i), r.is_valid(i).then(|| r.value(i)))));
        }
        assert_eq!(got, vec![(1, None), (2, Some(20)), (3, None), (4, Some(40))]);
    }
}
