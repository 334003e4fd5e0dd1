//! andon-store: where spans live once a receiver has them.
//!
//! Owns the write-ahead log, the in-memory Arrow buffers of recent spans, the Parquet
//! segments they are flushed to, retention, deduplication of retried spans, and the
//! DataFusion `spans` table over all of it. It knows nothing about OTLP or HTTP: spans
//! arrive as Arrow batches with the schema of [`andon_model::span_schema`] through the
//! [`SpanSink`] seam, and leave through SQL.
//!
//! Durability protocol, in order:
//! 1. an append is written to the WAL and synced (group commit), then put in the
//!    buffer, then acknowledged;
//! 2. a flush rotates the WAL, writes every buffered batch up to the rotation point as
//!    segments (tmp file, sync, rename), swaps buffer for segments atomically for
//!    readers, then records the rotation point in `checkpoint`;
//! 3. only then are the WAL files at or before the checkpoint deleted.
//!
//! On start, segments newer than the checkpoint are deleted and the WAL after it is
//! replayed, so a crash at any step loses nothing acknowledged and stores nothing twice.

mod arrivals;
mod change_log;
mod dedup;
mod error;
mod layout;
mod query;
mod remote;
mod rollup;
mod rows_table;
mod segment;
mod sessions;
pub mod sql;
mod stats;
mod table;
mod wal;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use andon_model::{AppendFuture, AppendOutcome, EncodedSpans, ReadyFuture, Reconvert, SinkError, SpanSink, Tenant};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use tracing::{info, warn};

pub use arrivals::{APPENDS_HORIZON_SECS, HORIZON_SECS as ARRIVALS_HORIZON_SECS};
pub use error::StoreError;
pub use query::{ExtraTable, QueryEngine, QueryLimits, QueryOutput};
pub use remote::parse_s3_url;
pub use rollup::{BUCKETS_PER_E, RollupSpec, latency_bucket};
pub use rows_table::RowsTable;
pub use segment::Segment;
pub use sessions::{MAX_OPEN_CALLS as MAX_OPEN_SESSION_CALLS, SessionSpec};
pub use stats::{StoreSnapshot, StoreStats};
pub use table::SpansTable;

use dedup::{DedupIndex, batch_keys};

/// Whether an append waits for the WAL to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` before acknowledging (the default).
    Fsync,
    /// Acknowledge once written to the OS; a power loss may lose recent spans.
    None,
}

/// Store settings, already validated by the server's config.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Flush buffered spans once the oldest is this old.
    pub flush_interval: Duration,
    /// Flush once the buffer holds this many bytes.
    pub flush_bytes: usize,
    /// Refuse appends (retryably) while the buffer holds more than this.
    pub max_buffer_bytes: usize,
    /// Delete segments whose hour ended longer ago than this.
    pub retention: Option<Duration>,
    /// How long a span's ids are remembered for deduplication.
    pub dedup_window: Duration,
    /// The most span ids remembered for deduplication.
    pub dedup_max_keys: usize,
    /// Merge a partition's segments once it has this many below `compact_small_bytes`.
    pub compact_min_segments: usize,
    /// The most segments one merge reads at once. A merge holds a reader per
    /// input and each reader a decompression context and pages per column (up
    /// to about 15 MB an input): this bounds compaction's memory. Fewer means
    /// merged segments still small, merged again: more rewriting.
    pub compact_max_segments: usize,
    pub compact_small_bytes: u64,
    /// Keep `span_metrics` and `sessions` at ingest. Off, both stay empty and
    /// detection reads raw spans.
    pub rollups: bool,
    /// The segment attributes `span_metrics` is rolled up by (the detectors').
    pub rollup_segments: Vec<String>,
    /// A session is finalized after this long without a span (the detectors').
    pub session_timeout_secs: u64,
    /// A call within this long of a failure of the same operation is a retry.
    pub retry_interval_secs: u64,
    /// The most server calls the open sessions hold: past it, a flush
    /// finalizes the least recently active sessions before their timeout.
    pub max_open_session_calls: usize,
    /// A flush writes the open sessions when the last write is this old (zero:
    /// at every flush). A start rebuilds what was noted after the last write
    /// from the segments flushed since.
    pub sessions_snapshot_interval: Duration,
    /// Keep segments in this S3 bucket (`s3://bucket/prefix`) rather than
    /// under `data_dir`; credentials, region and endpoint come from the `AWS_*`
    /// environment variables. `None`: local disk.
    pub object_store: Option<String>,
    /// With `object_store`, the most bytes of segments kept on local disk as
    /// a cache.
    pub object_cache_bytes: u64,
    /// Converts the requests the WAL logged ([`Store::append_encoded`]) again
    /// on replay: the receivers' converter. Without it a WAL holding any
    /// refuses to open.
    pub reconvert: Option<Arc<dyn Reconvert>>,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
            flush_interval: Duration::from_secs(60),
            flush_bytes: 16 << 20,
            max_buffer_bytes: 64 << 20,
            retention: Some(Duration::from_secs(7 * 24 * 3_600)),
            dedup_window: Duration::from_secs(600),
            dedup_max_keys: 4_000_000,
            compact_min_segments: 8,
            compact_max_segments: 16,
            compact_small_bytes: 32 << 20,
            rollups: true,
            rollup_segments: ["browser.mobile", "os.type", "cloud.region", "service.version"]
                .map(str::to_owned)
                .to_vec(),
            session_timeout_secs: 900,
            retry_interval_secs: 30,
            max_open_session_calls: sessions::MAX_OPEN_CALLS,
            sessions_snapshot_interval: Duration::from_secs(30),
            object_store: None,
            object_cache_bytes: 1 << 30,
            reconvert: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Buffered {
    seq: u64,
    tenant: Tenant,
    batch: RecordBatch,
    bytes: usize,
    at: Instant,
    /// The earliest `start_time` in the batch (Unix ns).
    min_start: i64,
}

/// The earliest `start_time` in `batch` (Unix ns); `i64::MIN` when it has none.
fn min_start(batch: &RecordBatch) -> i64 {
    use arrow::array::AsArray;
    batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<arrow::datatypes::TimestampNanosecondType>())
        .and_then(arrow::compute::min)
        .unwrap_or(i64::MIN)
}

/// What readers see: the buffer and the committed segments, swapped together.
#[derive(Debug, Default)]
struct State {
    buffer: VecDeque<Buffered>,
    buffer_bytes: usize,
    segments: BTreeMap<PathBuf, Segment>,
    /// The rollup of each segment that has one: its path and size.
    metrics: std::collections::HashMap<PathBuf, (PathBuf, u64)>,
    /// The files of finalized sessions.
    session_files: Vec<sessions::SessionFile>,
    /// Changes whenever what `span_metrics` shows may have
    /// ([`Store::metrics_version`]).
    metrics_version: u64,
    /// What each version may have changed ([`Store::metrics_changed_since`]).
    metrics_log: change_log::ChangeLog,
    /// When a flush last wrote a segment of each partition (tenant, hour)
    /// since the store opened: whether an hour still takes spans.
    last_flushed: std::collections::HashMap<(Tenant, i64), Instant>,
}

impl State {
    /// A new version of `span_metrics`, which may have changed the minutes
    /// from each tenant's start (every minute of every tenant: `None`).
    fn metrics_changed(&mut self, change: Option<BTreeMap<Tenant, i64>>) {
        self.metrics_version += 1;
        let v = self.metrics_version;
        self.metrics_log.note(v, change);
    }

    /// The earliest start buffered for each of `tenants`.
    fn earliest_buffered(&self, tenants: impl IntoIterator<Item = Tenant>) -> BTreeMap<Tenant, i64> {
        let mut out: BTreeMap<Tenant, i64> = tenants.into_iter().map(|t| (t, i64::MAX)).collect();
        for b in &self.buffer {
            if let Some(e) = out.get_mut(&b.tenant) {
                *e = (*e).min(b.min_start);
            }
        }
        out
    }
}

/// What a `span_metrics` query reads: rollup files with their sizes, and the
/// buffered batches of each tenant, to roll up at scan time.
pub(crate) type MetricsSnapshot = (Vec<(PathBuf, u64)>, Vec<(Tenant, Vec<RecordBatch>)>);

/// A consistent view for one query.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub batches: Vec<RecordBatch>,
    pub segments: Vec<Segment>,
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    state: Arc<RwLock<State>>,
    dedup: Mutex<DedupIndex>,
    /// Keys whose first copy is on its way to the WAL, and how that ends
    /// (`Some(true)` durable, `Some(false)` failed): a retry that carries them
    /// is acknowledged only once the first copy is durable.
    pending: Mutex<std::collections::HashMap<u64, tokio::sync::watch::Receiver<Option<bool>>>>,
    wal: wal::Wal,
    closed: AtomicBool,
    flush_lock: Mutex<()>,
    /// Held by a compaction for its whole run, so that two never merge the
    /// same inputs. A merge reads and writes without the flush lock and takes
    /// it only to swap its output in: flushes go on meanwhile.
    compact_lock: Mutex<()>,
    /// Woken when a flush frees buffer space, for exports waiting to be
    /// admitted ([`Store::wait_ready`]).
    room: tokio::sync::Notify,
    /// Compacted-away segment files, deleted after a grace period.
    graveyard: Mutex<Vec<(Instant, PathBuf)>>,
    /// When each recent trace last received a span.
    arrivals: Arc<arrivals::Arrivals>,
    appends: arrivals::Appends,
    /// What rolling a span up needs from the spans before it.
    rollups: Arc<rollup::RollupContext>,
    /// Every tenant's open sessions.
    sessions: Arc<sessions::SessionBook>,
    /// Sessions cover every stored span (false until a store whose segments
    /// predate them has rebuilt them).
    sessions_ready: AtomicBool,
    /// The last flush that wrote sessions files: their names hold it, so a
    /// flush that did not move past it (nothing new in the WAL) writes none.
    sessions_flushed: std::sync::atomic::AtomicU64,
    /// The flush whose open sessions were last written, and when (`None`:
    /// not since the start, so the next flush writes them).
    sessions_snapshot: Mutex<(u64, Option<Instant>)>,
    stats: Arc<StoreStats>,
    /// Where segments live when not on local disk.
    remote: Option<Arc<remote::Remote>>,
    _lock: File,
}

/// The span store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// The directory the store keeps its data in.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    fn segments_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("segments")
    }

    fn checkpoint_path(data_dir: &Path) -> PathBuf {
        data_dir.join("checkpoint")
    }

    /// Opens (or creates) the store, replaying the WAL. Blocking.
    pub fn open(config: StoreConfig) -> Result<Self, StoreError> {
        let dir = &config.data_dir;
        fs::create_dir_all(dir.join("wal"))?;
        fs::create_dir_all(Self::segments_dir(dir))?;
        let lock = File::create(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked(dir.display().to_string()));
        }
        let fsync = config.durability == Durability::Fsync;
        let remote = match &config.object_store {
            Some(url) => Some(Arc::new(remote::Remote::open(url, dir, config.object_cache_bytes)?)),
            None => None,
        };
        let mut checkpoint = read_checkpoint(&Self::checkpoint_path(dir))?;
        if let Some(r) = &remote
            && never_written(dir)?
            && let Some(newest) = newest_flush_in(r, dir)?
        {
            // A new data directory over a bucket that holds a store (a new
            // machine, a lost disk): the WAL that wrote the bucket's flushes is
            // gone, so they are all committed, and new flushes follow them.
            info!(bucket = r.shown(), checkpoint = newest, "empty data directory: serving the store in the bucket");
            write_checkpoint(dir, newest, fsync)?;
            checkpoint = newest;
        }
        // Spill files of queries that ran before a crash.
        let _ = fs::remove_dir_all(dir.join("spill"));
        let quarantine = dir.join("quarantine");
        let (segments, mut bad_segments) =
            segment::load_segments(&Self::segments_dir(dir), &quarantine.join("segments"), checkpoint)?;
        // With a bucket, when each segment was last written comes from its listing.
        let (segments, modified) = match &remote {
            Some(r) => {
                let (segments, unreadable, listed) = adopt_remote(r, dir, segments, checkpoint)?;
                bad_segments += unreadable;
                (segments, listed)
            }
            None => (segments, std::collections::HashMap::new()),
        };
        let stats = Arc::new(StoreStats::default());
        stats.add_quarantined(bad_segments);

        let mut dedup = DedupIndex::new(config.dedup_window, config.dedup_max_keys);
        let now = Instant::now();
        let recent = SystemTime::now() - config.dedup_window;
        for s in &segments {
            let modified = match modified.get(&s.path) {
                Some(m) => Ok(*m),
                None => fs::metadata(&s.path).and_then(|m| m.modified()),
            };
            if modified.is_ok_and(|m| m >= recent) {
                for b in read_segment(remote.as_deref(), s, true)? {
                    dedup.insert_new(&batch_keys(&b), now);
                }
            }
        }

        let spec = rollup::RollupSpec::new(&config.rollup_segments).map_err(StoreError::Refused)?;
        let book = Arc::new(sessions::SessionBook::with_max_open_calls(
            sessions::SessionSpec::new(&spec, config.session_timeout_secs, config.retry_interval_secs),
            config.max_open_session_calls,
        ));
        let rollups = Arc::new(rollup::RollupContext::new(spec));
        let mut listings = Vec::new();
        if let Some(r) = &remote {
            for d in remote::MIRRORED {
                let (restored, listed) = r.restore(d)?;
                if restored > 0 {
                    info!(files = restored, dir = d, "downloaded files missing on local disk from the object store");
                }
                listings.push((d, listed));
            }
        }
        let rolled = rollup::load_metrics(dir, &segments)?;
        let sessions::Loaded { files: session_files, kept: kept_sessions, snapshot } =
            sessions::load_sessions(dir, &book, checkpoint)?;
        if let Some(r) = &remote {
            // What the loads deleted (flushes never checkpointed, compacted
            // inputs) goes from the bucket; what predates the bucket goes up.
            for (d, listed) in listings {
                let (uploaded, deleted) = r.reconcile_listed(d, listed)?;
                if uploaded + deleted > 0 {
                    info!(uploaded, deleted, dir = d, "brought the object store's copies up to date");
                }
            }
        }
        let replay_time = wall_nanos();
        if config.rollups
            && let Some(snapshot) = snapshot
        {
            // The open sessions were written at `snapshot`: the spans of the
            // segments flushed since go into the book again (noting a span twice
            // counts it once), less the sessions those flushes finalized.
            // Compaction leaves these segments alone until a later write.
            let mut renoted = 0usize;
            for seg in segments.iter().filter(|s| s.flush_seq > snapshot) {
                for b in read_segment(remote.as_deref(), seg, false)? {
                    renoted += b.num_rows();
                    book.note(&seg.tenant, &b, replay_time);
                }
            }
            for f in session_files.iter().filter(|f| f.flush > snapshot) {
                book.forget_finalized(&f.tenant, &sessions::finalized_in(&f.path)?);
            }
            if renoted > 0 {
                info!(snapshot, spans = renoted, "noted the spans flushed after the open sessions were written");
            }
        }
        let sessions_ready = config.rollups && (kept_sessions || segments.is_empty());
        if sessions_ready {
            // A later start knows sessions were kept from the first span.
            fs::create_dir_all(dir.join("sessions"))?;
        }
        let metrics = rolled
            .into_iter()
            .filter_map(|seg| {
                let m = rollup::metrics_path(dir, &seg)?;
                let bytes = fs::metadata(&m).ok()?.len();
                Some((seg, (m, bytes)))
            })
            .collect();
        let mut state = State {
            segments: segments.into_iter().map(|s| (s.path.clone(), s)).collect(),
            metrics,
            session_files,
            ..State::default()
        };
        let mut replayed = 0usize;
        let (last_seq, bad_wal) =
            wal::replay(&dir.join("wal"), &quarantine.join("wal"), checkpoint, config.reconvert.as_deref(), |r| {
                for batch in r.batches {
                    // A record may repeat spans that reached a segment before a crash.
                    let mask = dedup.insert_new(&batch_keys(&batch), now);
                    let Ok(batch) = filter_record_batch(&batch, &mask) else {
                        continue;
                    };
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    replayed += batch.num_rows();
                    if config.rollups {
                        rollups.note(&r.tenant, &batch, replay_time);
                        book.note(&r.tenant, &batch, replay_time);
                    }
                    let bytes = batch.get_array_memory_size();
                    state.buffer_bytes += bytes;
                    let min_start = min_start(&batch);
                    state.buffer.push_back(Buffered {
                        seq: r.seq,
                        tenant: r.tenant.clone(),
                        batch,
                        bytes,
                        at: now,
                        min_start,
                    });
                }
            })?;
        stats.add_quarantined(bad_wal);
        info!(checkpoint, last_seq, replayed_spans = replayed, segments = state.segments.len(), "store opened");

        let state = Arc::new(RwLock::new(state));
        let on_durable = {
            let state = Arc::clone(&state);
            Box::new(move |records: Vec<(u64, Tenant, RecordBatch)>| {
                let now = Instant::now();
                let mut s = state.write();
                let mut tenants = std::collections::BTreeSet::new();
                for (seq, tenant, batch) in records {
                    let bytes = batch.get_array_memory_size();
                    s.buffer_bytes += bytes;
                    tenants.insert(tenant.clone());
                    let min_start = min_start(&batch);
                    s.buffer.push_back(Buffered { seq, tenant, batch, bytes, at: now, min_start });
                }
                // What arrived may change the cells of any buffered span of
                // its tenant (its session's values, a failed child).
                let change = s.earliest_buffered(tenants);
                s.metrics_changed(Some(change));
            })
        };
        let wal = wal::Wal::start(
            wal::WalOptions {
                dir: dir.join("wal"),
                fsync,
                segment_bytes: 256 << 20,
                next_seq: last_seq + 1,
                stats: Arc::clone(&stats),
            },
            on_durable,
        )?;
        let store = Self {
            inner: Arc::new(Inner {
                config,
                state,
                dedup: Mutex::new(dedup),
                pending: Mutex::default(),
                arrivals: Arc::default(),
                appends: arrivals::Appends::default(),
                rollups,
                sessions: book,
                sessions_ready: AtomicBool::new(sessions_ready),
                sessions_flushed: std::sync::atomic::AtomicU64::new(checkpoint),
                sessions_snapshot: Mutex::new((snapshot.unwrap_or(0), None)),
                wal,
                closed: AtomicBool::new(false),
                flush_lock: Mutex::new(()),
                compact_lock: Mutex::new(()),
                room: tokio::sync::Notify::new(),
                graveyard: Mutex::new(Vec::new()),
                stats,
                remote,
                _lock: lock,
            }),
        };
        // Replayed spans go to segments straight away, so the WAL does not grow
        // across repeated crashes.
        if replayed > 0 {
            store.flush()?;
        }
        Ok(store)
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.inner.stats
    }

    /// Stores a batch once it is durable; spans already stored are dropped.
    /// The WAL logs the batch's Arrow IPC.
    pub async fn append(&self, tenant: &Tenant, batch: RecordBatch) -> Result<AppendOutcome, SinkError> {
        self.append_logged(tenant, batch, None).await
    }

    /// Stores a batch converted from `encoded` once it is durable; spans
    /// already stored are dropped. The WAL logs the encoded request (and
    /// which of its spans were new), so the store must be opened with
    /// [`StoreConfig::reconvert`] to replay it.
    pub async fn append_encoded(
        &self,
        tenant: &Tenant,
        batch: RecordBatch,
        encoded: EncodedSpans,
    ) -> Result<AppendOutcome, SinkError> {
        self.append_logged(tenant, batch, Some(encoded)).await
    }

    async fn append_logged(
        &self,
        tenant: &Tenant,
        batch: RecordBatch,
        encoded: Option<EncodedSpans>,
    ) -> Result<AppendOutcome, SinkError> {
        let total = batch.num_rows();
        if total == 0 {
            return Ok(AppendOutcome::default());
        }
        // Not refused for a full buffer: receivers admit a request only while
        // the buffer has room ([`Store::wait_ready`]), before they read it, and
        // what they admit is taken. The buffer then holds at most its limit
        // and what the receivers' in-flight budget lets through at once.
        let keys = batch_keys(&batch);
        let (landed, landing) = tokio::sync::watch::channel(None::<bool>);
        // Under one lock: which keys are new, the appends still writing the
        // others (OTLP: a duplicate is acknowledged only once its first copy
        // is durable), and this append's new keys, now pending.
        let (mask, first_copies) = {
            let mut pending = self.inner.pending.lock();
            let mask = self.inner.dedup.lock().insert_new(&keys, Instant::now());
            let mut first_copies: Vec<tokio::sync::watch::Receiver<Option<bool>>> = Vec::new();
            for (k, new) in keys.iter().zip(mask.iter()) {
                if new == Some(true) {
                    pending.insert(*k, landing.clone());
                } else if let Some(rx) = pending.get(k)
                    && !first_copies.iter().any(|f| f.same_channel(rx))
                {
                    first_copies.push(rx.clone());
                }
            }
            (mask, first_copies)
        };
        let outcome = self.append_fresh(tenant, &batch, &keys, &mask, encoded).await;
        let _ = landed.send(Some(outcome.is_ok()));
        {
            let mut pending = self.inner.pending.lock();
            for (k, new) in keys.iter().zip(mask.iter()) {
                if new == Some(true) && pending.get(k).is_some_and(|rx| rx.same_channel(&landing)) {
                    pending.remove(k);
                }
            }
        }
        let outcome = outcome?;
        for mut first in first_copies {
            let durable = first.wait_for(|v| v.is_some()).await.map(|v| *v == Some(true)).unwrap_or(false);
            if !durable {
                // Not stored after all: the client must send it again.
                return Err(SinkError::Unavailable("the first copy of a retried span failed to be stored".into()));
            }
        }
        Ok(outcome)
    }

    /// Writes the spans of `batch` that `mask` marks new to the WAL: their
    /// IPC, or `encoded` with the mask.
    async fn append_fresh(
        &self,
        tenant: &Tenant,
        batch: &RecordBatch,
        keys: &[u64],
        mask: &arrow::array::BooleanArray,
        encoded: Option<EncodedSpans>,
    ) -> Result<AppendOutcome, SinkError> {
        let total = batch.num_rows();
        let forget = || self.inner.dedup.lock().remove(keys, mask);
        let fresh = match filter_record_batch(batch, mask) {
            Ok(b) => b,
            Err(e) => {
                forget();
                return Err(SinkError::Unavailable(e.to_string()));
            }
        };
        let stored = fresh.num_rows();
        let outcome = AppendOutcome { stored, duplicates: total - stored };
        if stored == 0 {
            self.inner.stats.add_stored(0, outcome.duplicates);
            return Ok(outcome);
        }
        let record = match &encoded {
            Some(e) => wal::encode_request(tenant, e, (stored < total).then_some(mask)),
            None => wal::encode_batch(tenant, &fresh),
        };
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                forget();
                return Err(SinkError::Unavailable(e.to_string()));
            }
        };
        match self.inner.wal.append(record, tenant.clone(), fresh.clone()).await {
            Ok(_) => {
                let now = wall_nanos();
                self.inner.arrivals.note(tenant, &fresh, now);
                self.inner.appends.note(tenant, &fresh, now);
                if self.inner.config.rollups {
                    self.inner.rollups.note(tenant, &fresh, now);
                    self.inner.sessions.note(tenant, &fresh, now);
                }
                self.inner.stats.add_stored(stored, outcome.duplicates);
                Ok(outcome)
            }
            Err(StoreError::Closed) => {
                forget();
                Err(SinkError::ShuttingDown)
            }
            Err(e) => {
                forget();
                Err(SinkError::Unavailable(e.to_string()))
            }
        }
    }

    /// When each recent trace last received a span (the `arriving_traces` table).
    pub(crate) fn arrivals(&self) -> &Arc<arrivals::Arrivals> {
        &self.inner.arrivals
    }

    /// The traces of `tenant` whose last span came after `after_ns` (Unix
    /// nanoseconds, this server's clock), within the last
    /// [`ARRIVALS_HORIZON_SECS`], with when it came, in no order. A reader
    /// that keeps a trace's spans across statements drops it once it shows
    /// here with an arrival after it read them.
    pub fn arrivals_after(&self, tenant: &Tenant, after_ns: i64) -> Vec<(u128, i64)> {
        self.inner.arrivals.after(tenant, after_ns)
    }

    /// The earliest `start_time` among the spans appended for `tenant` since
    /// `since_ns` (Unix ns, this server's clock; to the second, so perhaps from
    /// a little before): `Some(None)` when none was, `None` when the store
    /// cannot tell (more than [`APPENDS_HORIZON_SECS`] ago, or spans were
    /// removed since). A reader that keeps what it derived from a range of
    /// spans knows from it which part may have changed.
    pub fn earliest_appended_since(&self, tenant: &Tenant, since_ns: i64) -> Option<Option<i64>> {
        self.inner.appends.earliest_since(tenant, since_ns)
    }

    /// What rolls spans up into `span_metrics`.
    pub(crate) fn rollups(&self) -> &Arc<rollup::RollupContext> {
        &self.inner.rollups
    }

    /// The rollup files a `span_metrics` query of `tenant` over the hour range
    /// reads, and the buffered batches (by tenant) it rolls up itself.
    pub(crate) fn metrics_snapshot(&self, tenant: Option<&Tenant>, hours: (i64, i64)) -> MetricsSnapshot {
        let s = self.inner.state.read();
        let files = s
            .segments
            .values()
            .filter(|seg| tenant.is_none_or(|t| *t == seg.tenant))
            .filter(|seg| seg.hour >= hours.0 && seg.hour <= hours.1)
            .filter_map(|seg| s.metrics.get(&seg.path).cloned())
            .collect();
        let mut buffered: BTreeMap<Tenant, Vec<RecordBatch>> = BTreeMap::new();
        // With rollups off `span_metrics` stays empty, buffered spans included.
        let rolled = self.inner.config.rollups;
        for b in s.buffer.iter().filter(|b| rolled && tenant.is_none_or(|t| *t == b.tenant)) {
            buffered.entry(b.tenant.clone()).or_default().push(b.batch.clone());
        }
        (files, buffered.into_iter().collect())
    }

    /// Rolls up segments stored without a rollup (before rollups existed, or a
    /// compaction that crashed between its two files), at most `limit` of
    /// them. Returns how many were rolled up.
    pub fn roll_up_missing(&self, limit: usize) -> Result<usize, StoreError> {
        if !self.inner.config.rollups {
            return Ok(0);
        }
        let _guard = self.inner.flush_lock.lock();
        let missing: Vec<Segment> = {
            let s = self.inner.state.read();
            s.segments.values().filter(|seg| !s.metrics.contains_key(&seg.path)).take(limit).cloned().collect()
        };
        let fsync = self.inner.config.durability == Durability::Fsync;
        let dir = &self.inner.config.data_dir;
        for seg in &missing {
            let batches = read_segment(self.inner.remote.as_deref(), seg, false)?;
            let rolled = self.inner.rollups.roll_up_alone(&batches)?;
            let Some(path) = rollup::metrics_path(dir, &seg.path) else { continue };
            let bytes = rollup::write_small_parquet(&path, &rolled, fsync)?;
            self.mirror(&path)?;
            let mut s = self.inner.state.write();
            s.metrics.insert(seg.path.clone(), (path, bytes));
            s.metrics_changed(None);
        }
        Ok(missing.len())
    }

    /// Deletes every rollup, so that [`Self::roll_up_missing`] makes each again.
    pub fn drop_rollups(&self) -> Result<(), StoreError> {
        let _guard = self.inner.flush_lock.lock();
        {
            let mut s = self.inner.state.write();
            s.metrics.clear();
            s.metrics_changed(None);
        }
        match fs::remove_dir_all(self.inner.config.data_dir.join("metrics")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.reconcile_mirror("metrics")
    }

    /// Every tenant with spans whose start falls in the hour range: buffered or in
    /// a segment.
    pub fn tenants(&self, hours: (i64, i64)) -> Vec<Tenant> {
        let snap = self.snapshot(None, hours);
        let s = self.inner.state.read();
        let mut out: Vec<Tenant> = s.buffer.iter().map(|b| b.tenant.clone()).collect();
        out.extend(snap.segments.into_iter().map(|seg| seg.tenant));
        out.sort();
        out.dedup();
        out
    }

    /// The buffered batches and segments a query of `tenant` (all tenants when
    /// `None`) over hours `[min_hour, max_hour]` must read.
    pub fn snapshot(&self, tenant: Option<&Tenant>, hours: (i64, i64)) -> Snapshot {
        let s = self.inner.state.read();
        let batches =
            s.buffer.iter().filter(|b| tenant.is_none_or(|t| *t == b.tenant)).map(|b| b.batch.clone()).collect();
        let segments = s
            .segments
            .values()
            .filter(|seg| tenant.is_none_or(|t| *t == seg.tenant))
            .filter(|seg| seg.hour >= hours.0 && seg.hour <= hours.1)
            .cloned()
            .collect();
        Snapshot { batches, segments }
    }

    /// Whether appends are refused until a flush: the buffer holds more than
    /// `max_buffer_bytes`.
    pub fn buffer_full(&self) -> bool {
        self.inner.state.read().buffer_bytes > self.inner.config.max_buffer_bytes
    }

    /// Refuses, as retryable, while the buffer is full.
    pub fn ready(&self) -> Result<(), SinkError> {
        if self.buffer_full() {
            return Err(SinkError::Overloaded { retry_after: Duration::from_secs(5) });
        }
        Ok(())
    }

    /// Waits up to `patience` for the buffer to have room (a flush to free
    /// it), then answers as [`Store::ready`].
    pub async fn wait_ready(&self, patience: Duration) -> Result<(), SinkError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            // Registered before the check, so a flush between the two wakes it.
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if !self.buffer_full() || self.inner.closed.load(Ordering::Acquire) {
                return self.ready();
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return self.ready();
            }
        }
    }

    /// Whether a flush is due by size or age.
    fn flush_due(&self) -> bool {
        let s = self.inner.state.read();
        let cfg = &self.inner.config;
        s.buffer_bytes >= cfg.flush_bytes || s.buffer.front().is_some_and(|b| b.at.elapsed() >= cfg.flush_interval)
    }

    /// Writes every buffered span to segments and truncates the WAL. Blocking.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let _guard = self.inner.flush_lock.lock();
        let started = Instant::now();
        let through = self.inner.wal.rotate()?;
        let mut by_tenant: BTreeMap<Tenant, Vec<RecordBatch>> = BTreeMap::new();
        {
            let s = self.inner.state.read();
            for b in s.buffer.iter().take_while(|b| b.seq <= through) {
                by_tenant.entry(b.tenant.clone()).or_default().push(b.batch.clone());
            }
        }
        let fsync = self.inner.config.durability == Durability::Fsync;
        let root = Self::segments_dir(&self.inner.config.data_dir);
        let mut written: Vec<Segment> = Vec::new();
        let mut rolled: Vec<(PathBuf, (PathBuf, u64))> = Vec::new();
        let data_dir = &self.inner.config.data_dir;
        let result = (|| {
            if let Some(r) = &self.inner.remote {
                // Uploads of a failed attempt must be gone before any checkpoint.
                r.delete_orphans()?;
            }
            for (tenant, batches) in &by_tenant {
                let compact = batches.iter().all(layout::ids_fit);
                let sorted = segment::sort_by_hour(batches)?;
                for (n, (hour, rows)) in sorted.hours().enumerate() {
                    // The segment's rollup, from the same spans as they are
                    // written, before the checkpoint.
                    let mut rolling = self.inner.config.rollups.then(|| self.inner.rollups.rolling(tenant));
                    let slices = sorted.gather(n).map(|b| {
                        let b = b?;
                        if let Some(r) = rolling.as_mut() {
                            r.add(&b)?;
                        }
                        Ok(b)
                    });
                    let seg = segment::write_segment(&root, tenant, hour, through, n, rows, slices, fsync, compact)?;
                    written.push(seg.clone());
                    if let Some(r) = &self.inner.remote {
                        // In the bucket before anything counts it as stored.
                        r.upload(&seg.path)?;
                        r.admit(&seg.path, seg.bytes);
                    }
                    let Some(rolling) = rolling else { continue };
                    let metrics = rolling.finish()?;
                    let path = rollup::metrics_path(data_dir, &seg.path)
                        .ok_or_else(|| StoreError::Corrupt(format!("{} is outside the store", seg.path.display())))?;
                    let bytes = rollup::write_small_parquet(&path, &metrics, fsync)?;
                    self.mirror(&path)?;
                    rolled.push((seg.path, (path, bytes)));
                }
            }
            Ok::<_, StoreError>(())
        })();
        // Sessions quiet for the timeout, and the open ones, as of this flush.
        let rollups = self.inner.config.rollups;
        let quiet = if rollups && through > self.inner.sessions_flushed.load(Ordering::Acquire) {
            self.inner.sessions.take_quiet(wall_nanos())
        } else {
            sessions::Quiet::default()
        };
        // The rows the files written below add.
        let quiet_from = quiet.first_minutes();
        let mut session_files: Vec<sessions::SessionFile> = Vec::new();
        let mut open_written: Option<PathBuf> = None;
        // The open sessions are written every `sessions_snapshot_interval`, not
        // at every flush: each write holds every open session.
        let snapshot_due = rollups
            && self.inner.sessions_snapshot.lock().1.is_none_or(|at| {
                at.elapsed() >= self.inner.config.sessions_snapshot_interval
                    || self.inner.closed.load(Ordering::Acquire)
            });
        let result = result.and_then(|()| {
            if !rollups {
                return Ok(());
            }
            for (tenant, batch) in self.inner.sessions.rows_of(&quiet)? {
                let file = sessions::write_sessions(data_dir, &tenant, through, &batch, fsync)?;
                let path = file.path.clone();
                session_files.push(file);
                self.mirror(&path)?;
            }
            if snapshot_due {
                let path = sessions::write_open(data_dir, &self.inner.sessions, through, fsync)?;
                open_written = Some(path.clone());
                self.mirror(&path)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            // The spans stay buffered and in the WAL. Segments of this attempt must
            // go: the next flush checkpoints past `through`, which would make them
            // count as committed next to the segments written again.
            for p in session_files.iter().map(|f| &f.path).chain(&open_written) {
                self.discard_uncommitted(p);
            }
            self.inner.sessions.put_back(quiet);
            for seg in &written {
                self.discard_uncommitted(&seg.path);
                if let Some(m) = rollup::metrics_path(data_dir, &seg.path) {
                    self.discard_uncommitted(&m);
                }
            }
            return Err(e);
        }
        let rows: usize = written.iter().map(|s| s.rows as usize).sum();
        for seg in &written {
            self.inner.stats.add_segment(seg.bytes);
        }
        {
            let mut s = self.inner.state.write();
            // The flushed spans' cells are now as the flush rolled them up.
            let mut flushed: BTreeMap<Tenant, i64> = BTreeMap::new();
            while s.buffer.front().is_some_and(|b| b.seq <= through) {
                if let Some(b) = s.buffer.pop_front() {
                    s.buffer_bytes -= b.bytes;
                    let e = flushed.entry(b.tenant.clone()).or_insert(i64::MAX);
                    *e = (*e).min(b.min_start);
                }
            }
            let now = Instant::now();
            let quiet_after = self.inner.config.flush_interval;
            s.last_flushed.retain(|_, at| now.duration_since(*at) < quiet_after);
            for seg in written {
                s.last_flushed.insert((seg.tenant.clone(), seg.hour), now);
                s.segments.insert(seg.path.clone(), seg);
            }
            self.inner.room.notify_waiters();
            s.metrics.extend(rolled);
            s.metrics_changed(Some(flushed));
            if !session_files.is_empty() {
                self.inner.sessions_flushed.store(through, Ordering::Release);
            }
            let added = !session_files.is_empty();
            s.session_files.extend(session_files);
            if added {
                self.inner.sessions.changed(Some(quiet_from));
            }
        }
        write_checkpoint(&self.inner.config.data_dir, through, fsync)?;
        if snapshot_due {
            *self.inner.sessions_snapshot.lock() = (through, Some(Instant::now()));
            for old in sessions::forget_open_before(data_dir, through) {
                if let Some(r) = &self.inner.remote {
                    r.unmirror(&old);
                }
            }
        }
        wal::truncate_through(&self.inner.config.data_dir.join("wal"), through)?;
        if rows > 0 {
            self.inner.stats.flush_latency.observe(started.elapsed());
            info!(rows, through, elapsed_ms = started.elapsed().as_millis() as u64, "flushed spans to segments");
        }
        Ok(rows)
    }

    /// Picks, per partition, the runs of small segments consecutive in flush
    /// order worth merging: every run of at least `compact_min_segments`, cut
    /// into merges of at most `compact_max_segments`.
    ///
    /// In an hour still taking spans a run holds segments of one generation
    /// ([`same_generation`]): flushes merge with flushes, and merged segments
    /// with merged segments of like size. A merged segment that took flushes
    /// in with every merge would be rewritten each time a few more arrived:
    /// over four minutes at 5,000 spans a second, merges rewrote each span
    /// about four times so, and 1.2 times by generation (BENCHMARKS.md).
    fn compaction_candidates(&self) -> Vec<Vec<Segment>> {
        let cfg = &self.inner.config;
        let s = self.inner.state.read();
        let mut partitions: BTreeMap<(Tenant, i64), Vec<Segment>> = BTreeMap::new();
        // A start notes the spans of segments flushed after the open sessions
        // were last written into them again; those segments must still be
        // their flush's own, not merged with earlier ones.
        let written = if cfg.rollups { self.inner.sessions_snapshot.lock().0 } else { u64::MAX };
        for seg in s.segments.values().filter(|seg| seg.flush_seq <= written) {
            partitions.entry((seg.tenant.clone(), seg.hour)).or_default().push(seg.clone());
        }
        let min_open = cfg.compact_min_segments.max(2);
        let max = cfg.compact_max_segments.max(min_open);
        // An hour that ended a flush interval and more ago, and that no flush
        // wrote to for a flush interval, takes few spans more: its small
        // segments merge however few (flushes are written LZ4, merges zstd:
        // `segment::Codec`), so that the hour ends in as few files as its
        // size allows, compressed for keeping. An hour that ended but still
        // takes spans (history imported, late spans) merges as an open one.
        let now_secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let closed_before = (now_secs.saturating_sub(cfg.flush_interval.as_secs()) / 3_600) as i64;
        let small = |seg: &Segment| seg.bytes < cfg.compact_small_bytes;
        let mut out = Vec::new();
        for ((tenant, hour), mut segs) in partitions {
            let flushed_lately =
                s.last_flushed.get(&(tenant, hour)).is_some_and(|at| at.elapsed() < cfg.flush_interval);
            let open = hour >= closed_before || flushed_lately;
            let min = if open { min_open } else { 2 };
            segs.sort_by_key(|x| x.flush_seq);
            let mut run: Vec<Segment> = Vec::new();
            for seg in segs.into_iter().map(Some).chain([None]) {
                match seg {
                    Some(seg)
                        if small(&seg) && (!open || run.first().is_none_or(|first| same_generation(first, &seg))) =>
                    {
                        if run.len() == max {
                            out.push(std::mem::take(&mut run));
                        }
                        run.push(seg);
                    }
                    seg => {
                        if run.len() >= min {
                            out.push(std::mem::take(&mut run));
                        }
                        run.clear();
                        // A small segment of another generation starts the next run.
                        run.extend(seg.filter(small));
                    }
                }
            }
        }
        out
    }

    /// Merges runs of small segments into one sorted segment each: a slice of
    /// the hour at a time, a streaming merge of the inputs' rows of that slice
    /// (each input already sorted), under a fixed memory budget. Returns how
    /// many segments were replaced.
    ///
    /// A merge reads its inputs and writes its output without the flush lock,
    /// so flushes (and the exports waiting for the room they make) go on
    /// while it runs. It takes the lock only to merge the inputs' rollups and
    /// swap the output in; if retention or `close` took an input meanwhile,
    /// the output is deleted instead and nothing changes. A `close` stops a
    /// running merge at its next batch.
    pub fn compact(&self) -> Result<usize, StoreError> {
        let _merging = self.inner.compact_lock.lock();
        let fsync = self.inner.config.durability == Durability::Fsync;
        let mut replaced = 0;
        for inputs in self.compaction_candidates() {
            if self.inner.closed.load(Ordering::Acquire) {
                // `close` has buried the last inputs; nothing may add new ones.
                return Ok(replaced);
            }
            let started = Instant::now();
            // A merge stops at its next batch once the store closes: it could
            // not be swapped in any more.
            let closed = &self.inner.closed;
            let merge = |compact| {
                query::sorted_segments(self, inputs.clone()).and_then(|batches| {
                    let batches =
                        batches.map(|b| if closed.load(Ordering::Acquire) { Err(StoreError::Closed) } else { b });
                    segment::write_compacted(&inputs, batches, fsync, compact)
                })
            };
            // Ids that do not fit the compact layout (never from the receivers)
            // keep the table's: the merge runs again.
            let merged = match merge(true) {
                Err(StoreError::TextIds) => merge(false),
                other => other,
            };
            let merged = match merged {
                Ok(m) => m,
                Err(StoreError::Closed) => return Ok(replaced),
                // Retention deleted an input while it was read.
                Err(_) if !self.all_stored(&inputs) => continue,
                Err(e) => return Err(e),
            };
            if let Some(r) = &self.inner.remote {
                if let Err(e) = r.upload(&merged.path) {
                    r.abandon(&merged.path);
                    return Err(e);
                }
                r.admit(&merged.path, merged.bytes);
            }
            let _guard = self.inner.flush_lock.lock();
            if self.inner.closed.load(Ordering::Acquire) || !self.all_stored(&inputs) {
                self.discard_uncommitted(&merged.path);
                continue;
            }
            // The inputs' rollups merged, when every input has one; otherwise the
            // merged segment is rolled up afresh later.
            let input_metrics: Option<Vec<PathBuf>> = {
                let s = self.inner.state.read();
                inputs.iter().map(|seg| s.metrics.get(&seg.path).map(|m| m.0.clone())).collect()
            };
            let mut merged_metrics = None;
            if let Some(paths) = input_metrics
                && let Some(path) = rollup::metrics_path(&self.inner.config.data_dir, &merged.path)
            {
                let mut batches = Vec::new();
                for p in &paths {
                    batches.extend(rollup::read_small_parquet(p)?);
                }
                let m = self.inner.rollups.merge(&batches)?;
                let bytes = rollup::write_small_parquet(&path, &m, fsync)?;
                if let Err(e) = self.mirror(&path) {
                    self.discard_uncommitted(&path);
                    self.discard_uncommitted(&merged.path);
                    return Err(e);
                }
                merged_metrics = Some((path, bytes));
            }
            let swapped = {
                let mut s = self.inner.state.write();
                // Retention takes segments without the flush lock.
                let present = inputs.iter().all(|seg| s.segments.contains_key(&seg.path));
                if present {
                    for seg in &inputs {
                        s.segments.remove(&seg.path);
                        s.metrics.remove(&seg.path);
                    }
                    s.segments.insert(merged.path.clone(), merged.clone());
                    if let Some(m) = &merged_metrics {
                        s.metrics.insert(merged.path.clone(), m.clone());
                    }
                    // The hour's cells, merged (the same sums, added in another order).
                    let hour = merged.hour.saturating_mul(3_600_000_000_000);
                    s.metrics_changed(Some(BTreeMap::from([(merged.tenant.clone(), hour)])));
                }
                present
            };
            if !swapped {
                if let Some((path, _)) = &merged_metrics {
                    self.discard_uncommitted(path);
                }
                self.discard_uncommitted(&merged.path);
                continue;
            }
            // Queries that took their snapshot before the swap may still open the
            // inputs; they get a grace period before the files go.
            self.inner.graveyard.lock().extend(inputs.iter().map(|x| (Instant::now(), x.path.clone())));
            replaced += inputs.len();
            info!(
                inputs = inputs.len(),
                rows = merged.rows,
                bytes = merged.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted segments"
            );
        }
        let _guard = self.inner.flush_lock.lock();
        if self.inner.closed.load(Ordering::Acquire) {
            return Ok(replaced);
        }
        replaced += self.compact_sessions(fsync)?;
        Ok(replaced)
    }

    /// Whether every one of `inputs` is still among the stored segments.
    fn all_stored(&self, inputs: &[Segment]) -> bool {
        let s = self.inner.state.read();
        inputs.iter().all(|seg| s.segments.contains_key(&seg.path))
    }

    /// Merges each tenant's oldest run of small sessions files, once it has
    /// enough of them, at most `compact_max_segments` files a merge. The
    /// caller holds the flush lock.
    fn compact_sessions(&self, fsync: bool) -> Result<usize, StoreError> {
        let cfg = &self.inner.config;
        let min = cfg.compact_min_segments.max(2);
        let max = cfg.compact_max_segments.max(min);
        let runs: Vec<Vec<sessions::SessionFile>> = {
            let s = self.inner.state.read();
            let mut by_tenant: BTreeMap<Tenant, Vec<sessions::SessionFile>> = BTreeMap::new();
            for f in &s.session_files {
                by_tenant.entry(f.tenant.clone()).or_default().push(f.clone());
            }
            by_tenant
                .into_values()
                .flat_map(|mut files| {
                    files.sort_by_key(|f| f.flush);
                    let run: Vec<_> = files.into_iter().take_while(|f| f.bytes < cfg.compact_small_bytes).collect();
                    run.chunks(max).filter(|c| c.len() >= min).map(<[_]>::to_vec).collect::<Vec<_>>()
                })
                .collect()
        };
        let mut replaced = 0;
        for run in runs {
            let merged = sessions::compact_files(&cfg.data_dir, &run, self.inner.sessions.spec().schema(), fsync)?;
            if let Err(e) = self.mirror(&merged.path) {
                self.discard_uncommitted(&merged.path);
                return Err(e);
            }
            {
                let mut s = self.inner.state.write();
                s.session_files.retain(|f| !run.iter().any(|r| r.path == f.path));
                s.session_files.push(merged);
            }
            self.inner.graveyard.lock().extend(run.iter().map(|f| (Instant::now(), f.path.clone())));
            replaced += run.len();
        }
        Ok(replaced)
    }

    /// Deletes every session, finalized or open, so that `sessions` is empty
    /// until [`Self::rebuild_sessions`].
    pub fn drop_sessions(&self) -> Result<(), StoreError> {
        let _guard = self.inner.flush_lock.lock();
        self.inner.state.write().session_files.clear();
        self.inner.sessions.changed(None);
        sessions::clear(&self.inner.sessions);
        sessions::remove_all(&self.inner.config.data_dir)?;
        self.reconcile_mirror("sessions")
    }

    /// Whether `sessions` covers every stored span.
    pub fn sessions_ready(&self) -> bool {
        self.inner.sessions_ready.load(Ordering::Acquire)
    }

    /// A number that changes whenever what `sessions` shows may have: an open
    /// session noted, finalized or forgotten, a file of finalized sessions
    /// added or deleted (not one compacted). A reader that keeps rows of
    /// `sessions` across statements keeps them only while it stays the same.
    pub fn sessions_version(&self) -> u64 {
        self.inner.sessions.version()
    }

    /// A number that changes whenever what `span_metrics` shows may have:
    /// spans buffered, flushed, compacted or expired, a rollup made or
    /// dropped. A reader that keeps rows of `span_metrics` across statements
    /// keeps them only while it stays the same.
    pub fn metrics_version(&self) -> u64 {
        self.inner.state.read().metrics_version
    }

    /// The earliest first minute (Unix ns) of the sessions of `tenant` whose
    /// rows in `sessions` may show otherwise now than at sessions version
    /// `version` (a session's rows change together: they carry its segment
    /// values and when it was last seen): `Some(None)` when none may, `None`
    /// when the store cannot tell. A reader that keeps rows of `sessions` by
    /// minute reads again only the minutes from it.
    pub fn sessions_changed_since(&self, tenant: &Tenant, version: u64) -> Option<Option<i64>> {
        self.inner.sessions.changed_since(tenant, version)
    }

    /// The earliest `start_time` (Unix ns) whose minute of `tenant` in
    /// `span_metrics` may show otherwise now than at metrics version
    /// `version`: `Some(None)` when none may, `None` when the store cannot
    /// tell (every minute may; too many versions ago). A reader that keeps
    /// cells of `span_metrics` reads again only the minutes from it.
    pub fn metrics_changed_since(&self, tenant: &Tenant, version: u64) -> Option<Option<i64>> {
        let s = self.inner.state.read();
        s.metrics_log.since(tenant, version, s.metrics_version)
    }

    /// What keeps `sessions`.
    pub(crate) fn sessions(&self) -> &Arc<sessions::SessionBook> {
        &self.inner.sessions
    }

    /// The files of finalized sessions a `sessions` query of `tenant` over the
    /// hour range (of session starts) reads.
    pub(crate) fn session_files(&self, tenant: Option<&Tenant>, hours: (i64, i64)) -> Vec<(PathBuf, u64)> {
        let s = self.inner.state.read();
        s.session_files
            .iter()
            .filter(|f| tenant.is_none_or(|t| *t == f.tenant))
            .filter(|f| f.hours.1 >= hours.0 && f.hours.0 <= hours.1)
            .map(|f| (f.path.clone(), f.bytes))
            .collect()
    }

    /// Builds `sessions` again from every stored span: for a store whose
    /// segments predate sessions, or after `andon rollup --rebuild`. Spans
    /// that arrive meanwhile join the rebuilt sessions.
    pub fn rebuild_sessions(&self) -> Result<usize, StoreError> {
        let _guard = self.inner.flush_lock.lock();
        if !self.inner.config.rollups {
            return Err(StoreError::Refused("rollups are off ([storage] rollups = false)".into()));
        }
        let started = Instant::now();
        let cfg = &self.inner.config;
        let fsync = cfg.durability == Durability::Fsync;
        let (mut segs, buffered): (Vec<Segment>, Vec<(Tenant, RecordBatch)>) = {
            let s = self.inner.state.read();
            (
                s.segments.values().cloned().collect(),
                s.buffer.iter().map(|b| (b.tenant.clone(), b.batch.clone())).collect(),
            )
        };
        segs.sort_by_key(|s| (s.tenant.clone(), s.hour, s.first_seq));
        let book = sessions::SessionBook::with_max_open_calls(
            self.inner.sessions.spec().clone(),
            self.inner.sessions.max_open_calls(),
        );
        let wall = wall_nanos();
        let mut finalized: BTreeMap<Tenant, Vec<RecordBatch>> = BTreeMap::new();
        let mut take = |book: &sessions::SessionBook| -> Result<(), StoreError> {
            let quiet = book.take_quiet(wall);
            for (t, b) in book.rows_of(&quiet)? {
                finalized.entry(t).or_default().push(b);
            }
            Ok(())
        };
        for seg in &segs {
            for b in read_segment(self.inner.remote.as_deref(), seg, false)? {
                book.note(&seg.tenant, &b, wall);
            }
            take(&book)?;
        }
        for (t, b) in &buffered {
            book.note(t, b, wall);
        }
        take(&book)?;
        let checkpoint = read_checkpoint(&Self::checkpoint_path(&cfg.data_dir))?;
        sessions::remove_all(&cfg.data_dir)?;
        fs::create_dir_all(cfg.data_dir.join("sessions"))?;
        let mut files = Vec::new();
        let mut rows = 0;
        for (tenant, batches) in finalized {
            let schema = self.inner.sessions.spec().schema();
            let all = arrow::compute::concat_batches(&schema, &batches)?;
            rows += all.num_rows();
            if all.num_rows() > 0 {
                files.push(sessions::write_sessions(&cfg.data_dir, &tenant, checkpoint, &all, fsync)?);
            }
        }
        sessions::adopt(&self.inner.sessions, book);
        sessions::write_open(&cfg.data_dir, &self.inner.sessions, checkpoint, fsync)?;
        *self.inner.sessions_snapshot.lock() = (checkpoint, Some(Instant::now()));
        self.inner.state.write().session_files = files;
        self.inner.sessions.changed(None);
        self.inner.sessions_flushed.store(checkpoint, Ordering::Release);
        self.inner.sessions_ready.store(true, Ordering::Release);
        self.reconcile_mirror("sessions")?;
        info!(rows, elapsed_ms = started.elapsed().as_millis() as u64, "rebuilt sessions from the stored spans");
        Ok(rows)
    }

    /// Deletes a file the store no longer serves: a segment (its local copy,
    /// its object in the bucket and its rollup, with the rollup's copy) or a
    /// sessions file (with its copy).
    fn discard_segment(&self, path: &Path) {
        let data_dir = &self.inner.config.data_dir;
        let is_segment = path.starts_with(Self::segments_dir(data_dir));
        match &self.inner.remote {
            Some(r) if is_segment => {
                r.forget(path);
                if let Err(e) = r.delete(path) {
                    warn!(path = %path.display(), error = %e, "could not delete a segment from the object store");
                }
            }
            _ => {
                if let Err(e) = fs::remove_file(path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(path = %path.display(), error = %e, "could not delete a file the store no longer serves");
                }
                if let Some(r) = &self.inner.remote {
                    r.unmirror(path);
                }
            }
        }
        if is_segment {
            rollup::remove_metrics(data_dir, path);
            if let (Some(r), Some(m)) = (&self.inner.remote, rollup::metrics_path(data_dir, path)) {
                r.unmirror(&m);
            }
        }
    }

    /// Uploads a rollup or sessions file just written to its copy in the
    /// bucket, if the store has one.
    fn mirror(&self, path: &Path) -> Result<(), StoreError> {
        match &self.inner.remote {
            Some(r) => r.upload(path),
            None => Ok(()),
        }
    }

    /// Deletes a file no checkpoint committed, with its object in the bucket
    /// (retried before the next checkpoint if that fails).
    fn discard_uncommitted(&self, path: &Path) {
        match &self.inner.remote {
            Some(r) => r.abandon(path),
            None => {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Makes the bucket's copies under `dir` follow the local files.
    fn reconcile_mirror(&self, dir: &str) -> Result<(), StoreError> {
        if let Some(r) = &self.inner.remote {
            r.reconcile(dir)?;
        }
        Ok(())
    }

    /// Where segments are read from when not cached locally, if not local disk.
    pub(crate) fn remote(&self) -> Option<&remote::Remote> {
        self.inner.remote.as_deref()
    }

    /// Deletes compaction inputs whose grace period is over.
    fn bury(&self, grace: Duration) {
        let due: Vec<PathBuf> = {
            let mut g = self.inner.graveyard.lock();
            let (due, keep): (Vec<_>, Vec<_>) = g.drain(..).partition(|(t, _)| t.elapsed() >= grace);
            *g = keep;
            due.into_iter().map(|(_, p)| p).collect()
        };
        for p in due {
            self.discard_segment(&p);
        }
    }

    /// Deletes segments of hours that ended before `now - retention`.
    pub fn apply_retention(&self, now: SystemTime) -> Result<usize, StoreError> {
        let Some(retention) = self.inner.config.retention else {
            return Ok(0);
        };
        let cutoff = now
            .checked_sub(retention)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(i64::MIN, |d| d.as_secs() as i64 / 3_600);
        let expired: Vec<Segment> = {
            let mut s = self.inner.state.write();
            let paths: Vec<PathBuf> =
                s.segments.values().filter(|seg| seg.hour < cutoff).map(|seg| seg.path.clone()).collect();
            for p in &paths {
                s.metrics.remove(p);
            }
            if !paths.is_empty() {
                s.metrics_changed(None);
                self.inner.appends.removed(wall_nanos());
            }
            // Sessions go with the hour their last session started in.
            let (old, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut s.session_files).into_iter().partition(|f| f.hours.1 < cutoff);
            s.session_files = keep;
            if !old.is_empty() {
                self.inner.sessions.changed(None);
            }
            self.inner.graveyard.lock().extend(old.into_iter().map(|f| (Instant::now(), f.path)));
            paths.iter().filter_map(|p| s.segments.remove(p)).collect()
        };
        for seg in &expired {
            self.discard_segment(&seg.path);
            if let Some(dir) = seg.path.parent() {
                // Succeeds only once the hour directory is empty.
                let _ = fs::remove_dir(dir);
            }
        }
        if !expired.is_empty() {
            info!(segments = expired.len(), "retention deleted segments");
        }
        Ok(expired.len())
    }

    /// Runs flushes, compaction and retention in the background until the store is
    /// closed. Compaction has a thread of its own, so that a merge never holds
    /// up a flush; the returned handle ends after both threads.
    pub fn spawn_maintenance(&self) -> std::thread::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let compaction = Self::spawn_compaction(Arc::downgrade(&self.inner));
        std::thread::spawn(move || {
            let mut last_retention = Instant::now() - Duration::from_secs(3_600);
            let mut last_chores = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let Some(inner) = weak.upgrade().filter(|i| !i.closed.load(Ordering::Acquire)) else {
                    let _ = compaction.join();
                    return;
                };
                let store = Store { inner };
                if store.flush_due()
                    && let Err(e) = store.flush()
                {
                    warn!(error = %e, "flush failed, will retry");
                }
                if last_chores.elapsed() >= Duration::from_secs(10) {
                    last_chores = Instant::now();
                    store.bury(Duration::from_secs(120));
                    store.inner.arrivals.prune(wall_nanos());
                    store.inner.rollups.prune(wall_nanos());
                    if let Err(e) = store.roll_up_missing(4) {
                        warn!(error = %e, "rolling up stored segments failed, will retry");
                    }
                    if store.inner.config.rollups
                        && !store.sessions_ready()
                        && let Err(e) = store.rebuild_sessions()
                    {
                        warn!(error = %e, "rebuilding sessions failed, will retry");
                    }
                }
                if last_retention.elapsed() >= Duration::from_secs(60) {
                    last_retention = Instant::now();
                    if let Err(e) = store.apply_retention(SystemTime::now()) {
                        warn!(error = %e, "retention failed");
                    }
                }
            }
        })
    }

    /// Merges small segments every 10 s until the store is closed, on a thread
    /// named `andon-compact`.
    fn spawn_compaction(weak: std::sync::Weak<Inner>) -> std::thread::JoinHandle<()> {
        let named = std::thread::Builder::new().name("andon-compact".into());
        // Spawning fails only when the process is out of threads, as
        // `std::thread::spawn` would panic on.
        #[allow(clippy::expect_used)]
        named
            .spawn(move || {
                let mut last = Instant::now();
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    let Some(inner) = weak.upgrade().filter(|i| !i.closed.load(Ordering::Acquire)) else { return };
                    if last.elapsed() < Duration::from_secs(10) {
                        continue;
                    }
                    if let Err(e) = (Store { inner }).compact() {
                        warn!(error = %e, "compaction failed, will retry");
                    }
                    last = Instant::now();
                }
            })
            .expect("spawning the compaction thread")
    }

    /// Counters and sizes for `/metrics`.
    pub fn snapshot_stats(&self) -> StoreSnapshot {
        let mut out = StoreSnapshot::default();
        self.inner.stats.fill(&mut out);
        {
            let s = self.inner.state.read();
            out.segments = s.segments.len() as u64;
            out.segment_disk_bytes = s.segments.values().map(|x| x.bytes).sum();
            out.buffered_spans = s.buffer.iter().map(|b| b.batch.num_rows() as u64).sum();
            out.buffered_bytes = s.buffer_bytes as u64;
        }
        out.segment_cache_bytes = self.inner.remote.as_ref().map_or(0, |r| r.cached_bytes());
        out.dedup_keys = self.inner.dedup.lock().len() as u64;
        out.wal_disk_bytes = fs::read_dir(self.inner.config.data_dir.join("wal"))
            .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        out
    }

    /// Flushes everything, so nothing is left to replay, and stops maintenance.
    /// Appends still in flight finish; the WAL writer stops with the last handle.
    pub fn close(&self) -> Result<(), StoreError> {
        self.inner.closed.store(true, Ordering::Release);
        self.flush()?;
        self.bury(Duration::ZERO);
        Ok(())
    }
}

impl SpanSink for Store {
    fn append<'a>(&'a self, tenant: &'a Tenant, batch: RecordBatch) -> AppendFuture<'a> {
        Box::pin(Store::append(self, tenant, batch))
    }

    fn append_encoded<'a>(&'a self, tenant: &'a Tenant, batch: RecordBatch, encoded: EncodedSpans) -> AppendFuture<'a> {
        Box::pin(Store::append_encoded(self, tenant, batch, encoded))
    }

    fn ready(&self) -> Result<(), SinkError> {
        Store::ready(self)
    }

    fn wait_ready(&self, patience: Duration) -> ReadyFuture<'_> {
        Box::pin(Store::wait_ready(self, patience))
    }
}

/// The spans of `seg` (only its ids with `ids_only`): from the local file, or
/// from the bucket when it is not cached.
fn read_segment(
    remote: Option<&remote::Remote>,
    seg: &Segment,
    ids_only: bool,
) -> Result<Vec<RecordBatch>, StoreError> {
    match remote {
        Some(r) if !r.cached(&seg.path) => segment::read_batches(r.get(&seg.path)?, ids_only),
        _ => segment::read_batches(File::open(&seg.path)?, ids_only),
    }
}

/// What opening a store over a bucket serves: its segments, how many were
/// unreadable, and when each object was last written.
type Adopted = (Vec<Segment>, u64, std::collections::HashMap<PathBuf, SystemTime>);

/// The segments of a store kept in `r`, given the `local` ones `load_segments`
/// found (cached copies, or segments from before the store used the bucket),
/// and how many could not be read, with the time each was last written.
///
/// Objects of flushes after `checkpoint` are deleted (their spans are still in
/// the WAL), local segments missing from the bucket are uploaded, inputs of an
/// interrupted compaction are deleted, and the local copies of what is served
/// become the cache.
fn adopt_remote(
    r: &remote::Remote,
    data_dir: &Path,
    local: Vec<Segment>,
    checkpoint: u64,
) -> Result<Adopted, StoreError> {
    let root = Store::segments_dir(data_dir);
    let mut local: BTreeMap<PathBuf, Segment> = local.into_iter().map(|s| (s.path.clone(), s)).collect();
    let mut found = Vec::new();
    let mut modified = std::collections::HashMap::new();
    let mut unreadable = 0;
    for o in r.list("segments")? {
        let Some((tenant, hour, flush_seq, first_seq)) = segment::parse_location(&root, &o.path) else {
            continue;
        };
        if flush_seq > checkpoint {
            info!(path = %o.path.display(), "removing an uploaded segment of an unfinished flush");
            r.delete(&o.path)?;
            continue;
        }
        let rows = match local.remove(&o.path) {
            Some(copy) if copy.bytes == o.bytes => copy.rows,
            _ => match r.rows(&o.path, o.bytes) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(path = %o.path.display(), error = %e,
                        "unreadable segment in the object store: its spans are not served");
                    unreadable += 1;
                    continue;
                }
            },
        };
        modified.insert(o.path.clone(), o.modified);
        found.push(Segment { path: o.path, tenant, hour, flush_seq, first_seq, rows, bytes: o.bytes });
    }
    if !local.is_empty() {
        info!(segments = local.len(), bucket = r.shown(), "uploading local segments to the object store");
    }
    for (_, seg) in local {
        r.upload(&seg.path)?;
        found.push(seg);
    }
    let (mut keep, replaced) = segment::split_merged(found);
    for seg in replaced {
        info!(path = %seg.path.display(), "removing segment already merged by compaction");
        r.delete(&seg.path)?;
        let _ = fs::remove_file(&seg.path);
    }
    for seg in &keep {
        if seg.path.exists() {
            r.admit(&seg.path, seg.bytes);
        }
    }
    keep.sort_by(|a, b| (a.hour, a.flush_seq, &a.path).cmp(&(b.hour, b.flush_seq, &b.path)));
    Ok((keep, unreadable, modified))
}

/// Whether the data directory `dir` never stored anything: no checkpoint, and
/// not a file in its WAL.
fn never_written(dir: &Path) -> Result<bool, StoreError> {
    if Store::checkpoint_path(dir).exists() {
        return Ok(false);
    }
    Ok(fs::read_dir(dir.join("wal"))?.next().is_none())
}

/// The newest flush the bucket holds anything of: a segment, a file of
/// sessions or a snapshot of the open ones.
fn newest_flush_in(r: &remote::Remote, dir: &Path) -> Result<Option<u64>, StoreError> {
    let root = Store::segments_dir(dir);
    let segments = r.list("segments")?.into_iter().filter_map(|o| segment::parse_location(&root, &o.path));
    let mut newest = segments.map(|(_, _, flush, _)| flush).max();
    for o in r.list("sessions")? {
        if let Some(flush) = sessions::flush_of(&o.path) {
            newest = newest.max(Some(flush));
        }
    }
    Ok(newest)
}

fn read_checkpoint(path: &Path) -> Result<u64, StoreError> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| StoreError::Corrupt(format!("checkpoint file {}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Whether two small segments of an hour still taking spans belong to one
/// merge generation: both flushes, or both merged with sizes within
/// [`GENERATION_RATIO`] of each other. A flush's size follows the traffic's
/// rate, so flushes of any size are one generation.
fn same_generation(a: &Segment, b: &Segment) -> bool {
    let merged = |s: &Segment| s.first_seq != s.flush_seq;
    match (merged(a), merged(b)) {
        (false, false) => true,
        (true, true) => {
            let (lo, hi) = (a.rows.min(b.rows).max(1), a.rows.max(b.rows));
            hi < lo.saturating_mul(GENERATION_RATIO)
        }
        _ => false,
    }
}

/// How far apart in rows two merged segments of one generation may be (less
/// than this many times). An open hour's merge takes at least
/// `compact_min_segments` inputs (8 by default) of one generation, so the
/// next generation is that many times larger; merges cut at
/// `compact_max_segments` differ by at most 2x.
const GENERATION_RATIO: u64 = 4;

fn write_checkpoint(dir: &Path, seq: u64, fsync: bool) -> Result<(), StoreError> {
    let tmp = dir.join("checkpoint.tmp");
    fs::write(&tmp, format!("{seq}\n"))?;
    if fsync {
        File::open(&tmp)?.sync_all()?;
    }
    fs::rename(&tmp, Store::checkpoint_path(dir))?;
    if fsync {
        wal::sync_dir(dir)?;
    }
    Ok(())
}

/// The wall clock in Unix nanoseconds.
fn wall_nanos() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}
