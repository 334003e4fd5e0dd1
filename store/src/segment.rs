//! Parquet segments: immutable files of spans for one tenant and one hour.
//!
//! Layout: `segments/<tenant>/<YYYY-MM-DDTHH>/<flush seq>-<n>.parquet`. Each file is
//! written as `*.parquet.tmp`, synced, renamed and its directory synced, so a crash
//! never leaves half a segment under a real name. The flush sequence number in the
//! name ties a file to the WAL checkpoint: a file whose flush was never checkpointed
//! is an orphan, deleted on start while the WAL replays its spans.
//!
//! Compaction merges a run of small segments of one partition, consecutive in
//! flush order, into `<last flush seq>-c<first flush seq>.parquet`. The name says
//! which segments it replaces: any file of the same partition whose flush range
//! lies inside `[first, last]`. A crash after the merged file is renamed but before
//! its inputs are deleted is mended on start by deleting those inputs.
//!
//! Rows are sorted by [`SLICE_NS`] slice of the hour, then service, span name
//! and start time, and a row group holds one slice (or, for slices of few
//! rows, several consecutive ones). Almost every statement bounds
//! `start_time`, and most read a few minutes, so row-group statistics skip the
//! rest of the hour; inside a slice, the sort is what people and detectors
//! filter on, and neighbouring rows share attribute values, which dictionary
//! encoding and zstd turn into few bytes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use andon_model::{Tenant, span_schema};
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::{SortColumn, concat, interleave_record_batch, lexsort_to_indices};
use arrow::datatypes::{Schema, TimestampNanosecondType};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, FileReader};
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::schema::types::ColumnPath;

use crate::error::StoreError;
use crate::layout;
use crate::wal::sync_dir;

pub const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;

/// The span of start times one row group holds (a divisor of the hour). A
/// statement over a minute decodes one row group of the twelve in an hour
/// instead of the whole hour's, while a slice still holds long runs of one
/// service and operation to compress.
pub const SLICE_NS: i64 = 5 * 60 * 1_000_000_000;

/// The fewest rows a row group is closed with where the slice changes: below
/// it, the next slice joins the group. A sparse hour, or a flush of history
/// spread over many slices, would otherwise write row groups too small to
/// share dictionaries, and a small group is cheap to read whole.
const SLICE_GROUP_ROWS: usize = 16 * 1024;

/// The slice (of [`SLICE_NS`], counted from the epoch) a start time falls in.
pub fn slice_of(start_ns: i64) -> i64 {
    start_ns.div_euclid(SLICE_NS)
}

/// A committed segment file.
#[derive(Debug, Clone)]
pub struct Segment {
    pub path: PathBuf,
    pub tenant: Tenant,
    /// Hours since the epoch of every span's start time in the file.
    pub hour: i64,
    /// The last flush whose spans the file holds.
    pub flush_seq: u64,
    /// The first flush whose spans the file holds (`flush_seq` unless compacted).
    pub first_seq: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// `YYYY-MM-DDTHH` for an hour since the epoch (UTC, proleptic Gregorian).
pub fn hour_dir_name(hour: i64) -> String {
    let days = hour.div_euclid(24);
    let h = hour.rem_euclid(24);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{h:02}")
}

fn parse_hour_dir(name: &str) -> Option<i64> {
    let (date, h) = name.split_once('T')?;
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    let h: i64 = h.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(0..24).contains(&h) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 24 + h)
}

// Howard Hinnant's civil-calendar algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How a segment file's pages are compressed.
///
/// A flush writes LZ4: cheap to compress at the receivers' rate, and cheap to
/// read back, above all for compaction, which reads up to
/// `compact_max_segments` flushes at once, each leaf column of each through
/// its own decompression context: zstd's are about 160 KB each (78 MB at the
/// peak of a saturated run, under `heaptrack`), LZ4's hold nothing. A merge
/// writes zstd, smaller on disk, for the segments that stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// A flush's segment, soon merged.
    Flush,
    /// A merged segment.
    Kept,
}

fn writer_properties(schema: &Schema, rows: usize, codec: Codec) -> Result<WriterProperties, StoreError> {
    let idx = |n: &str| schema.index_of(n).map(|i| i as i32).unwrap_or(0);
    let col = |n: &str| ColumnPath::from(n);
    let compression = match codec {
        Codec::Flush => Compression::LZ4_RAW,
        Codec::Kept => Compression::ZSTD(ZstdLevel::try_new(3)?),
    };
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024))
        .set_sorting_columns(Some(vec![
            SortingColumn { column_idx: idx("service_name"), descending: false, nulls_first: false },
            SortingColumn { column_idx: idx("name"), descending: false, nulls_first: false },
            SortingColumn { column_idx: idx("start_time"), descending: false, nulls_first: false },
        ]))
        // Trace lookups (`WHERE trace_id = '…'`) skip row groups by bloom filter.
        .set_column_bloom_filter_enabled(col("trace_id"), true)
        .set_column_bloom_filter_max_ndv(col("trace_id"), rows.clamp(1_000, 256 * 1024) as u64)
        .set_column_bloom_filter_fpp(col("trace_id"), 0.01);
    // Random ids gain nothing from a dictionary. (A file in the compact layout
    // has no `end_time`; its settings below go unused.)
    for c in ["span_id", "parent_span_id"] {
        b = b.set_column_dictionary_enabled(col(c), false);
    }
    // Start times are plain: within a run of one operation they rise by
    // whatever the traffic's gaps are, so a block of deltas takes as many bits
    // as its widest gap, while zstd folds the high bytes the rows share (3.75
    // against 4.30 bytes a span as deltas on the shop's traffic, 4.16 against
    // 4.01 on the lodging system's recording: BENCHMARKS.md). Durations are
    // small numbers, cheapest as deltas.
    for (c, encoding) in
        [("start_time", Encoding::PLAIN), ("end_time", Encoding::PLAIN), ("duration_ns", Encoding::DELTA_BINARY_PACKED)]
    {
        b = b.set_column_dictionary_enabled(col(c), false).set_column_encoding(col(c), encoding);
    }
    Ok(b.build())
}

/// Rows gathered into one batch at a time while a flush writes its sorted
/// spans: the flush never holds a sorted copy of more than this beside the
/// buffer it writes from.
const GATHER_ROWS: usize = 16 * 1024;

/// One tenant's buffered batches in sorted order, split by hour, not yet
/// gathered: only the sort keys are concatenated, and the rows are gathered
/// from the batches in sorted order a slice at a time
/// ([`SortedByHour::gather`]), so no sorted or unsorted copy of the whole
/// buffer is made on the way.
pub struct SortedByHour<'a> {
    batches: Vec<&'a RecordBatch>,
    /// `(batch, row)` of each row, in sorted order.
    rows: Vec<(usize, usize)>,
    /// `(hour, first, end)` of each hour's run in `rows`.
    runs: Vec<(i64, usize, usize)>,
}

impl SortedByHour<'_> {
    /// Each hour with the number of its rows, in order.
    pub fn hours(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.runs.iter().map(|(hour, a, z)| (*hour, (z - a) as u64))
    }

    /// The rows of the `i`th hour, sorted, [`GATHER_ROWS`] at a time.
    pub fn gather(&self, i: usize) -> impl Iterator<Item = Result<RecordBatch, StoreError>> + '_ {
        let (a, z) = self.runs.get(i).map_or((0, 0), |r| (r.1, r.2));
        (a..z).step_by(GATHER_ROWS).map(move |from| {
            let rows = &self.rows[from..(from + GATHER_ROWS).min(z)];
            Ok(interleave_record_batch(&self.batches, rows)?)
        })
    }
}

/// Sorts the batches of one tenant by slice, service, span name and start
/// time, and splits them by hour.
pub fn sort_by_hour(batches: &[RecordBatch]) -> Result<SortedByHour<'_>, StoreError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(SortedByHour { batches, rows: Vec::new(), runs: Vec::new() });
    }
    let column = |n: &str| -> Result<ArrayRef, StoreError> {
        let parts = batches
            .iter()
            .map(|b| b.column_by_name(n).map(AsRef::as_ref))
            .collect::<Option<Vec<&dyn Array>>>()
            .ok_or_else(|| StoreError::Corrupt(format!("batch lacks column {n}")))?;
        Ok(concat(&parts)?)
    };
    let start = column("start_time")?;
    let slices: Int64Array = start.as_primitive::<TimestampNanosecondType>().iter().map(|t| t.map(slice_of)).collect();
    let sort = [
        SortColumn { values: Arc::new(slices.clone()), options: None },
        SortColumn { values: column("service_name")?, options: None },
        SortColumn { values: column("name")?, options: None },
        SortColumn { values: start, options: None },
    ];
    let indices = lexsort_to_indices(&sort, None)?;
    // Each batch's first row in the concatenation.
    let firsts: Vec<usize> = batches
        .iter()
        .scan(0, |next, b| {
            let first = *next;
            *next += b.num_rows();
            Some(first)
        })
        .collect();
    let rows: Vec<(usize, usize)> = indices
        .values()
        .iter()
        .map(|&i| {
            let i = i as usize;
            let b = firsts.partition_point(|&f| f <= i) - 1;
            (b, i - firsts[b])
        })
        .collect();
    let hour_at = |k: usize| (slices.value(indices.value(k) as usize) * SLICE_NS).div_euclid(NANOS_PER_HOUR);
    let mut runs = Vec::new();
    let mut run_start = 0;
    for i in 1..=rows.len() {
        if i == rows.len() || hour_at(i) != hour_at(run_start) {
            runs.push((hour_at(run_start), run_start, i));
            run_start = i;
        }
    }
    Ok(SortedByHour { batches, rows, runs })
}

pub fn tenant_dir(root: &Path, tenant: &Tenant) -> PathBuf {
    root.join(tenant.as_str())
}

/// Writes `batches` (`rows` rows in all, in slice order) to `dir/name` through a
/// temporary file that is synced, renamed and its directory synced, closing a
/// row group where the slice changes once it holds `group_rows`; a failure,
/// or a row count other than `rows`, leaves no file behind. With `compact`
/// the file has the compact layout ([`layout`]), and a batch whose ids do not
/// fit it fails the write with [`StoreError::TextIds`]. Returns the path and
/// the file's size.
pub(crate) fn write_file(
    dir: &Path,
    name: &str,
    rows: u64,
    batches: impl IntoIterator<Item = Result<RecordBatch, StoreError>>,
    fsync: bool,
    (group_rows, codec): (usize, Codec),
    compact: bool,
) -> Result<(PathBuf, u64), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let hint = usize::try_from(rows).unwrap_or(usize::MAX);
    let schema = if compact { layout::stored_schema() } else { span_schema() };
    let write = || -> Result<File, StoreError> {
        let props = writer_properties(&schema, hint, codec)?;
        let mut w = ArrowWriter::try_new(File::create(&tmp)?, Arc::clone(&schema), Some(props))?;
        let mut written = 0u64;
        let mut slice = None;
        for b in batches {
            // A query's schema may differ in nullability only; the file's must not.
            let b = RecordBatch::try_new(span_schema(), b?.columns().to_vec())?;
            let b = match compact {
                true => layout::to_stored(&b)?.ok_or(StoreError::TextIds)?,
                false => b,
            };
            written += b.num_rows() as u64;
            for (s, part) in by_slice(&b)? {
                if slice.is_some_and(|current| current != s) && w.in_progress_rows() >= group_rows {
                    w.flush()?;
                }
                slice = Some(s);
                w.write(&part)?;
            }
        }
        if written != rows {
            // Never put a file that lost or gained rows in place of its inputs.
            return Err(StoreError::Corrupt(format!("{name}: wrote {written} rows of {rows}")));
        }
        let file = w.into_inner()?;
        if fsync {
            file.sync_all()?;
        }
        Ok(file)
    };
    let file = write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    let bytes = file.metadata()?.len();
    drop(file);
    fs::rename(&tmp, &path)?;
    if fsync {
        sync_dir(dir)?;
    }
    Ok((path, bytes))
}

/// The runs of `batch` whose start times fall in one slice, with the slice.
fn by_slice(batch: &RecordBatch) -> Result<Vec<(i64, RecordBatch)>, StoreError> {
    let start = batch
        .column_by_name("start_time")
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
        .ok_or_else(|| StoreError::Corrupt("batch lacks start_time".into()))?;
    let mut out = Vec::new();
    let mut first = 0;
    for i in 1..=batch.num_rows() {
        if i == batch.num_rows() || slice_of(start.value(i)) != slice_of(start.value(first)) {
            out.push((slice_of(start.value(first)), batch.slice(first, i - first)));
            first = i;
        }
    }
    Ok(out)
}

/// Writes one hour's sorted spans (`rows` of them, in `batches`) as a
/// segment, durably, and returns it; in the compact layout when `compact`
/// (every id of `batches` fits it: [`layout::ids_fit`]).
#[allow(clippy::too_many_arguments)]
pub fn write_segment(
    root: &Path,
    tenant: &Tenant,
    hour: i64,
    flush_seq: u64,
    n: usize,
    rows: u64,
    batches: impl IntoIterator<Item = Result<RecordBatch, StoreError>>,
    fsync: bool,
    compact: bool,
) -> Result<Segment, StoreError> {
    let dir = tenant_dir(root, tenant).join(hour_dir_name(hour));
    let new_dir = !dir.exists();
    fs::create_dir_all(&dir)?;
    let name = format!("{flush_seq:020}-{n:04}.parquet");
    let (path, bytes) = write_file(&dir, &name, rows, batches, fsync, (SLICE_GROUP_ROWS, Codec::Flush), compact)?;
    if fsync && new_dir {
        // The hour and tenant directories must survive too.
        for d in dir.ancestors().skip(1).take(2) {
            sync_dir(d)?;
        }
    }
    Ok(Segment { path, tenant: tenant.clone(), hour, flush_seq, first_seq: flush_seq, rows, bytes })
}

/// Writes the sorted `batches` of a compaction of `inputs` (one partition, a run
/// consecutive in flush order) and returns the merged segment; in the compact
/// layout when `compact` (see [`write_file`]).
pub fn write_compacted(
    inputs: &[Segment],
    batches: impl IntoIterator<Item = Result<RecordBatch, StoreError>>,
    fsync: bool,
    compact: bool,
) -> Result<Segment, StoreError> {
    let (Some(first), Some(last)) =
        (inputs.iter().map(|s| s.first_seq).min(), inputs.iter().map(|s| s.flush_seq).max())
    else {
        return Err(StoreError::Corrupt("compaction without inputs".into()));
    };
    let dir = inputs[0].path.parent().map(Path::to_path_buf).unwrap_or_default();
    let rows: u64 = inputs.iter().map(|s| s.rows).sum();
    let name = format!("{last:020}-c{first:020}.parquet");
    let (path, bytes) = write_file(&dir, &name, rows, batches, fsync, (SLICE_GROUP_ROWS, Codec::Kept), compact)?;
    Ok(Segment {
        path,
        tenant: inputs[0].tenant.clone(),
        hour: inputs[0].hour,
        flush_seq: last,
        first_seq: first,
        rows,
        bytes,
    })
}

/// `(last, first)` flush sequence numbers from a segment file name.
fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let (last, rest) = name.strip_suffix(".parquet")?.split_once('-')?;
    let last = last.parse().ok()?;
    match rest.strip_prefix('c') {
        Some(first) => Some((last, first.parse().ok()?)),
        None => {
            rest.parse::<u32>().ok()?;
            Some((last, last))
        }
    }
}

/// Tenant, hour and `(last, first)` flush sequence numbers of the segment at
/// `root/<tenant>/<hour>/<name>`.
pub(crate) fn parse_location(root: &Path, path: &Path) -> Option<(Tenant, i64, u64, u64)> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = rel.iter().map(|p| p.to_str());
    let (Some(Some(tenant)), Some(Some(hour)), Some(Some(name)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (last, first) = parse_segment_name(name)?;
    Some((Tenant::new(tenant).ok()?, parse_hour_dir(hour)?, last, first))
}

/// Splits `found` into the segments to serve and those a compaction already
/// merged into another of them (inputs a crash left behind).
pub(crate) fn split_merged(found: Vec<Segment>) -> (Vec<Segment>, Vec<Segment>) {
    let merged: Vec<(&Tenant, i64, u64, u64, &PathBuf)> = found
        .iter()
        .filter(|s| s.first_seq != s.flush_seq)
        .map(|s| (&s.tenant, s.hour, s.first_seq, s.flush_seq, &s.path))
        .collect();
    let replaced: Vec<bool> = found
        .iter()
        .map(|seg| {
            merged.iter().any(|(t, h, first, last, p)| {
                **t == seg.tenant
                    && *h == seg.hour
                    && **p != seg.path
                    && *first <= seg.first_seq
                    && seg.flush_seq <= *last
            })
        })
        .collect();
    let (mut keep, mut gone) = (Vec::new(), Vec::new());
    for (seg, r) in found.into_iter().zip(replaced) {
        if r { gone.push(seg) } else { keep.push(seg) }
    }
    (keep, gone)
}

/// Every segment under `root`, and how many were quarantined. Temporary files
/// are deleted, and so are segments of flushes after `checkpoint`, whose spans
/// are still in the WAL. A segment whose footer cannot be read is moved under
/// `quarantine` (the same tenant/hour path) and reported, so that one bad
/// file never stops the store from opening.
pub fn load_segments(root: &Path, quarantine: &Path, checkpoint: u64) -> Result<(Vec<Segment>, u64), StoreError> {
    let mut found = Vec::new();
    let mut quarantined = 0;
    if !root.exists() {
        return Ok((found, quarantined));
    }
    for t in fs::read_dir(root)? {
        let t = t?;
        if !t.file_type()?.is_dir() {
            continue;
        }
        for h in fs::read_dir(t.path())? {
            let h = h?;
            if !h.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(h.path())? {
                let path = f?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                    continue;
                };
                if name.ends_with(".tmp") {
                    fs::remove_file(&path)?;
                    continue;
                }
                let Some((tenant, hour, flush_seq, first_seq)) = parse_location(root, &path) else {
                    continue;
                };
                if flush_seq > checkpoint {
                    tracing::info!(path = %path.display(), "removing segment of an unfinished flush");
                    fs::remove_file(&path)?;
                    continue;
                }
                let bytes = fs::metadata(&path)?.len();
                let reader = match SerializedFileReader::new(File::open(&path)?) {
                    Ok(r) => r,
                    Err(e) => {
                        let aside = quarantine.join(t.file_name()).join(h.file_name()).join(&name);
                        fs::create_dir_all(aside.parent().unwrap_or(quarantine))?;
                        fs::rename(&path, &aside)?;
                        tracing::error!(path = %path.display(), kept_in = %aside.display(), error = %e,
                            "unreadable segment quarantined: its spans are not served");
                        quarantined += 1;
                        continue;
                    }
                };
                let rows = reader.metadata().file_metadata().num_rows().max(0) as u64;
                found.push(Segment { path, tenant: tenant.clone(), hour, flush_seq, first_seq, rows, bytes });
            }
        }
    }
    // Inputs of a compaction that crashed before deleting them.
    let (mut out, replaced) = split_merged(found);
    for seg in replaced {
        tracing::info!(path = %seg.path.display(), "removing segment already merged by compaction");
        fs::remove_file(&seg.path)?;
    }
    out.sort_by(|a, b| (a.hour, a.flush_seq, &a.path).cmp(&(b.hour, b.flush_seq, &b.path)));
    Ok((out, quarantined))
}

/// Reads every span of a segment, or only the tenant and id columns (what
/// rebuilding the dedup index needs), from a file or the bytes of one, in
/// either layout, as the `spans` table shows them.
pub fn read_batches<R: ChunkReader + 'static>(reader: R, ids_only: bool) -> Result<Vec<RecordBatch>, StoreError> {
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(reader)?;
    if ids_only {
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["tenant", "trace_id", "span_id"]);
        builder = builder.with_projection(mask);
    }
    builder.build()?.map(|b| layout::to_table(b?, !ids_only)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_names_round_trip() {
        for hour in [0, 1, 24 * 365 * 56 + 13, 473_000] {
            assert_eq!(parse_hour_dir(&hour_dir_name(hour)), Some(hour));
        }
        // 2026-11-21T23:00:00Z
        assert_eq!(hour_dir_name(1_795_302_000 / 3_600), "2026-11-21T23");
        assert_eq!(parse_hour_dir("2026-13-01T00"), None);
    }

    #[test]
    fn segment_names_give_their_flush_range() {
        assert_eq!(parse_segment_name("00000000000000000042-0003.parquet"), Some((42, 42)));
        assert_eq!(parse_segment_name("00000000000000000042-c00000000000000000007.parquet"), Some((42, 7)));
        assert_eq!(parse_segment_name("00000000000000000042-0003.parquet.tmp"), None);
        assert_eq!(parse_segment_name("notes.txt"), None);
    }
}
