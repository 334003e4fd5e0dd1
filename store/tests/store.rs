//! The store's durability protocol, exercised through its public API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, SystemTime};

use andon_ingest::{SpanLimits, convert_request};
use andon_model::Tenant;
use andon_store::{QueryEngine, QueryLimits, Store, StoreConfig};
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

const HOUR: u64 = 3_600 * 1_000_000_000;

fn batch(seed: u64, n: u64, start_ns: u64) -> RecordBatch {
    batch_for(&Tenant::default_tenant(), seed, n, start_ns)
}

fn batch_for(tenant: &Tenant, seed: u64, n: u64, start_ns: u64) -> RecordBatch {
    let spans = (0..n)
        .map(|i| Span {
            trace_id: [seed.to_be_bytes(), (i + 1).to_be_bytes()].concat(),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "op".into(),
            start_time_unix_nano: start_ns + i,
            end_time_unix_nano: start_ns + i + 10,
            ..Default::default()
        })
        .collect();
    service_spans(tenant, spans)
}

/// `spans` of the service `svc`, as the receivers convert them.
fn service_spans(tenant: &Tenant, spans: Vec<Span>) -> RecordBatch {
    convert_request(&request(spans), tenant, 0, SpanLimits::NONE).unwrap().batch.unwrap()
}

/// An export of `spans` from the service `svc`.
fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(Value::StringValue("svc".into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.flush_interval = Duration::from_secs(3_600);
    c
}

async fn count(store: &Store, sql: &str) -> i64 {
    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 1).unwrap();
    let out = engine.run(None, sql).await.unwrap();
    out.batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn unflushed_spans_are_replayed_from_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    {
        let store = Store::open(config(dir.path())).unwrap();
        rt.block_on(store.append(&t, batch(1, 100, now_ns()))).unwrap();
        rt.block_on(store.append(&t, batch(2, 50, now_ns()))).unwrap();
        // Dropped without close: as after a kill, only the WAL has the spans.
    }
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 150);
    // Replay flushed them, so a second restart reads them from segments.
    drop(store);
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(store.snapshot_stats().buffered_spans, 0);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 150);
}

#[test]
fn a_torn_wal_tail_is_cut_off_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    {
        let store = Store::open(config(dir.path())).unwrap();
        rt.block_on(store.append(&t, batch(1, 10, now_ns()))).unwrap();
    }
    let wal = std::fs::read_dir(dir.path().join("wal")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let clean_len = std::fs::metadata(&wal).unwrap().len();
    // Half a frame: a length promising more than follows.
    std::fs::OpenOptions::new().append(true).open(&wal).unwrap().write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 10);
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == clean_len);
}

/// OTLP: a retry is acknowledged only once its spans are durable. A retry
/// that arrives while the first copy is still being written waits for it.
#[test]
fn a_retry_of_spans_still_being_written_waits_until_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let store = Store::open(config(dir.path())).unwrap();
    let b = batch(7, 40, now_ns());
    rt.block_on(async {
        let first = store.append(&t, b.clone());
        let retry = async {
            tokio::task::yield_now().await;
            let out = store.append(&t, b.clone()).await.unwrap();
            // The first copy reached the WAL and the buffer before this answer.
            (out, store.snapshot_stats().buffered_spans)
        };
        let (first, (retry, durable_when_retry_answered)) = tokio::join!(first, retry);
        assert_eq!(first.unwrap().stored, 40);
        assert_eq!((retry.stored, retry.duplicates), (0, 40));
        assert_eq!(durable_when_retry_answered, 40);
    });
}

#[test]
fn a_corrupt_record_in_the_middle_of_the_wal_puts_what_follows_aside() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    {
        let store = Store::open(config(dir.path())).unwrap();
        for seed in 1..=3 {
            rt.block_on(store.append(&t, batch(seed, 10, now_ns()))).unwrap();
        }
    }
    let wal = std::fs::read_dir(dir.path().join("wal")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    // [magic: 8][len: 4][crc: 4][payload] ...: flip a byte inside the second payload.
    let first_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let second = 8 + 8 + first_len;
    let second_len = u32::from_le_bytes(bytes[second..second + 4].try_into().unwrap()) as usize;
    bytes[second + 8 + second_len / 2] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();

    let store = Store::open(config(dir.path())).unwrap();
    // The record before it is served; it and the acknowledged one after it are
    // not replayed, but kept aside whole for a person to recover, and counted.
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 10);
    let aside: Vec<_> = walk(&dir.path().join("quarantine").join("wal"));
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes[second..].to_vec());
    assert_eq!(store.snapshot_stats().quarantined, 1);
}

#[test]
fn an_unreadable_segment_is_quarantined_and_the_store_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    {
        let store = Store::open(config(dir.path())).unwrap();
        rt.block_on(store.append(&t, batch(1, 20, now_ns()))).unwrap();
        store.flush().unwrap();
        rt.block_on(store.append(&t, batch(2, 30, now_ns() + 2 * HOUR))).unwrap();
        store.flush().unwrap();
    }
    let segments = walk(&dir.path().join("segments"));
    assert_eq!(segments.len(), 2, "{segments:?}");
    // A disk error: the first segment loses its footer.
    let bad = segments.iter().min().unwrap().clone();
    let len = std::fs::metadata(&bad).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&bad).unwrap().set_len(len / 2).unwrap();

    let store = Store::open(config(dir.path())).unwrap();
    assert!(!bad.exists());
    assert_eq!(walk(&dir.path().join("quarantine").join("segments")).len(), 1);
    assert_eq!(store.snapshot_stats().quarantined, 1);
    // The other segment is served; the quarantined one is not.
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 30);
}

#[test]
fn segments_of_an_unfinished_flush_are_removed_and_replayed_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let stray;
    {
        let store = Store::open(config(dir.path())).unwrap();
        rt.block_on(store.append(&t, batch(1, 20, now_ns()))).unwrap();
        store.flush().unwrap();
        rt.block_on(store.append(&t, batch(2, 30, now_ns()))).unwrap();
        // Simulate a crash after a segment was renamed but before the checkpoint:
        // copy a real segment under the next flush's sequence number.
        let seg = walk(&dir.path().join("segments")).into_iter().next().unwrap();
        stray = seg.with_file_name("00000000000000009999-0000.parquet");
        std::fs::copy(&seg, &stray).unwrap();
    }
    let store = Store::open(config(dir.path())).unwrap();
    assert!(!stray.exists(), "the orphan segment is gone");
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 50);
    assert_eq!(rt.block_on(count(&store, "SELECT count(DISTINCT trace_id) FROM spans")), 50);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn retries_after_a_restart_are_still_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let b = batch(7, 40, now_ns());
    {
        let store = Store::open(config(dir.path())).unwrap();
        assert_eq!(rt.block_on(store.append(&t, b.clone())).unwrap().stored, 40);
        store.close().unwrap();
    }
    let store = Store::open(config(dir.path())).unwrap();
    let out = rt.block_on(store.append(&t, b)).unwrap();
    assert_eq!((out.stored, out.duplicates), (0, 40));
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 40);
}

/// Regression: dedup keys once left the tenant out, so a tenant replaying
/// another's traffic (a staging copy, an import) stored nothing.
#[test]
fn the_same_ids_in_two_tenants_are_both_stored() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(config(dir.path())).unwrap();
    let (a, b) = (Tenant::default_tenant(), Tenant::new("replay").unwrap());
    let now = now_ns();
    assert_eq!(rt.block_on(store.append(&a, batch_for(&a, 3, 25, now))).unwrap().stored, 25);
    let out = rt.block_on(store.append(&b, batch_for(&b, 3, 25, now))).unwrap();
    assert_eq!((out.stored, out.duplicates), (25, 0));
    let again = rt.block_on(store.append(&b, batch_for(&b, 3, 25, now))).unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 25), "within a tenant, retries are still duplicates");
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 50);
}

#[test]
fn retention_deletes_old_hours_only_and_time_filters_prune_hours() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns();
    let mut cfg = config(dir.path());
    cfg.retention = Some(Duration::from_secs(24 * 3_600));
    let store = Store::open(cfg).unwrap();
    rt.block_on(store.append(&t, batch(1, 10, now - 72 * HOUR))).unwrap();
    rt.block_on(store.append(&t, batch(2, 20, now - 2 * HOUR))).unwrap();
    rt.block_on(store.append(&t, batch(3, 30, now))).unwrap();
    store.flush().unwrap();
    assert_eq!(store.snapshot_stats().segments, 3, "one segment per hour");
    let since = format!("SELECT count(*) FROM spans WHERE start_time >= to_timestamp_nanos({})", now - 3 * HOUR);
    assert_eq!(rt.block_on(count(&store, &since)), 50);
    assert_eq!(store.apply_retention(SystemTime::now()).unwrap(), 1);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 50);
    assert_eq!(walk(&dir.path().join("segments")).len(), 2);
}

#[test]
fn a_second_process_cannot_open_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(config(dir.path())).unwrap();
    let err = Store::open(config(dir.path())).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn compaction_merges_small_segments_and_a_crash_midway_is_mended() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns();
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 4;
    // Compaction takes only segments flushed by the last write of the open
    // sessions: here every flush writes them.
    cfg.sessions_snapshot_interval = std::time::Duration::ZERO;
    let store = Store::open(cfg.clone()).unwrap();
    for i in 0..6 {
        rt.block_on(store.append(&t, batch(i, 100, now))).unwrap();
        store.flush().unwrap();
    }
    assert_eq!(store.snapshot_stats().segments, 6);
    let before = walk(&dir.path().join("segments"));
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> =
        before.iter().map(|p| (p.clone(), std::fs::read(p).unwrap())).collect();
    assert_eq!(store.compact().unwrap(), 6);
    assert_eq!(store.snapshot_stats().segments, 1);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 600);
    assert_eq!(rt.block_on(count(&store, "SELECT count(DISTINCT trace_id) FROM spans")), 600);
    store.close().unwrap();
    drop(store);
    let after = walk(&dir.path().join("segments"));
    assert_eq!(after.len(), 1, "inputs are deleted on close: {after:?}");
    assert!(after[0].file_name().unwrap().to_string_lossy().contains("-c"));

    // A crash after the merged file was renamed but before its inputs went.
    for (p, bytes) in &saved {
        std::fs::write(p, bytes).unwrap();
    }
    let store = Store::open(cfg).unwrap();
    assert_eq!(walk(&dir.path().join("segments")).len(), 1, "the merged inputs are removed on start");
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 600);
}

/// A store opened with `cfg` (every flush a merge candidate) holding 16
/// flushed segments of `spans` spans each, starting at `at`.
fn sixteen_segments(rt: &tokio::runtime::Runtime, mut cfg: StoreConfig, spans: u64, at: u64) -> (Store, StoreConfig) {
    cfg.compact_min_segments = 2;
    cfg.compact_max_segments = 16;
    cfg.sessions_snapshot_interval = Duration::ZERO;
    let store = Store::open(cfg.clone()).unwrap();
    for seed in 0..16 {
        rt.block_on(store.append(&Tenant::default_tenant(), batch(seed, spans, at))).unwrap();
        store.flush().unwrap();
    }
    (store, cfg)
}

#[test]
fn flushes_go_on_while_a_merge_runs_and_every_span_is_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns();
    let (store, cfg) = sixteen_segments(&rt, config(dir.path()), 5_000, now);
    let merging = {
        let store = store.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let replaced = store.compact().unwrap();
            (started, std::time::Instant::now(), replaced)
        })
    };
    // Exports keep arriving and flushing while the sixteen segments merge.
    let mut flushed_at = Vec::new();
    let mut seed = 100;
    while !merging.is_finished() {
        seed += 1;
        rt.block_on(store.append(&t, batch(seed, 10, now))).unwrap();
        store.flush().unwrap();
        flushed_at.push(std::time::Instant::now());
    }
    let (started, ended, replaced) = merging.join().unwrap();
    assert!(replaced >= 16, "{replaced}");
    let during = flushed_at.iter().filter(|at| **at > started && **at < ended).count();
    assert!(during >= 2, "{during} of {} flushes ended while the merge ran {:?}", flushed_at.len(), ended - started);
    let expected = 16 * 5_000 + 10 * (seed - 100) as i64;
    let check = |store: &Store| {
        assert_eq!(rt.block_on(count(store, "SELECT count(*) FROM spans")), expected);
        assert_eq!(rt.block_on(count(store, "SELECT count(DISTINCT trace_id) FROM spans")), expected);
        assert_eq!(rt.block_on(count(store, "SELECT sum(requests) FROM span_metrics")), expected);
    };
    check(&store);
    // The merged segment and the flushes beside it, read again after a restart.
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg).unwrap();
    check(&store);
    assert_eq!(walk(&dir.path().join("segments")).iter().filter(|p| p.to_string_lossy().contains("-c")).count(), 1);
}

/// A merge whose input retention deleted meanwhile is dropped whole: nothing
/// merged is served, the output file is gone, and what is left still reads.
#[test]
fn a_merge_whose_inputs_expired_meanwhile_leaves_no_file_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut cfg = config(dir.path());
    cfg.retention = Some(Duration::from_secs(3 * 3_600));
    let (store, _) = sixteen_segments(&rt, cfg, 20_000, now_ns() - 5 * HOUR);
    let merging = {
        let store = store.clone();
        std::thread::spawn(move || store.compact())
    };
    // Retention runs while the merge reads (a merge of this size takes over a
    // second in a debug build, the retention a few milliseconds): it never waits for the merge.
    std::thread::sleep(Duration::from_millis(200));
    let expired = store.apply_retention(SystemTime::now()).unwrap();
    assert_eq!(expired, 16);
    let replaced = merging.join().unwrap().unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 0);
    assert_eq!(store.snapshot_stats().segments, 0);
    store.close().unwrap();
    drop(store);
    let left: Vec<_> = walk(&dir.path().join("segments"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(left.is_empty(), "merged {replaced}, left {left:?}");
}

/// A store being closed stops a merge at its next batch: nothing merged is
/// left, the inputs are served after a restart, and the merge ends long
/// before a whole one would have.
#[test]
fn closing_stops_a_merge_midway_and_keeps_its_inputs() {
    let rt = rt();
    let now = now_ns();
    let filled = |dir: &std::path::Path| sixteen_segments(&rt, config(dir), 20_000, now);
    // How long the whole merge takes here.
    let whole = {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = filled(dir.path());
        let started = std::time::Instant::now();
        assert_eq!(store.compact().unwrap(), 16);
        started.elapsed()
    };
    let dir = tempfile::tempdir().unwrap();
    let (store, cfg) = filled(dir.path());
    let started = std::time::Instant::now();
    let merging = {
        let store = store.clone();
        std::thread::spawn(move || store.compact())
    };
    std::thread::sleep(whole / 5);
    store.close().unwrap();
    assert_eq!(merging.join().unwrap().unwrap(), 0);
    let took = started.elapsed();
    assert!(took < whole * 7 / 10, "the merge ran on for {took:?} of a whole one's {whole:?}");
    drop(store);
    let files = walk(&dir.path().join("segments"));
    assert!(files.iter().all(|p| !p.to_string_lossy().contains("-c")), "{files:?}");
    assert_eq!(files.len(), 16);
    let store = Store::open(cfg).unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 16 * 20_000);
}

/// The codec of a Parquet file's first column chunk.
fn codec_of(path: &std::path::Path) -> parquet::basic::Compression {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader.metadata().row_group(0).column(0).compression()
}

#[test]
fn flushes_are_lz4_merges_zstd_and_a_closed_hours_few_small_segments_merge() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns();
    let hour = 3_600 * 1_000_000_000;
    // The start of the hour three hours back, and of this one.
    let (old, current) = (now / hour * hour - 3 * hour, now / hour * hour);
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 4;
    cfg.sessions_snapshot_interval = std::time::Duration::ZERO;
    // An hour is quiet once no flush wrote to it for this long.
    cfg.flush_interval = Duration::from_millis(200);
    let store = Store::open(cfg).unwrap();
    for i in 0..3 {
        rt.block_on(store.append(&t, batch(i, 100, old + i * 1_000))).unwrap();
        store.flush().unwrap();
        rt.block_on(store.append(&t, batch(10 + i, 100, current + i * 1_000))).unwrap();
        store.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let flushed = walk(&dir.path().join("segments"));
    assert_eq!(flushed.len(), 6);
    for p in &flushed {
        assert_eq!(codec_of(p), parquet::basic::Compression::LZ4_RAW, "{}", p.display());
    }
    // Three small segments are under the four a merge wants, but the old
    // hour is closed and quiet: its three merge, the current hour's wait.
    assert_eq!(store.compact().unwrap(), 3);
    assert_eq!(store.snapshot_stats().segments, 4);
    store.close().unwrap();
    drop(store);
    let kept = walk(&dir.path().join("segments"));
    let merged: Vec<_> = kept.iter().filter(|p| p.file_name().unwrap().to_string_lossy().contains("-c")).collect();
    assert_eq!(merged.len(), 1, "{kept:?}");
    assert!(matches!(codec_of(merged[0]), parquet::basic::Compression::ZSTD(_)));
    let store = Store::open(config(dir.path())).unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 600);
    // Nothing more to merge: the closed hour holds one segment.
    assert_eq!(store.compact().unwrap(), 0);
}

#[test]
fn a_merge_reads_at_most_compact_max_segments_and_merges_one_generation_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns();
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 2;
    cfg.compact_max_segments = 3;
    cfg.sessions_snapshot_interval = std::time::Duration::ZERO;
    let store = Store::open(cfg).unwrap();
    for i in 0..7 {
        rt.block_on(store.append(&t, batch(i, 100, now))).unwrap();
        store.flush().unwrap();
    }
    assert_eq!(store.snapshot_stats().segments, 7);
    // Seven small segments in a row: two merges of three; the seventh waits
    // for a second one.
    assert_eq!(store.compact().unwrap(), 6);
    assert_eq!(store.snapshot_stats().segments, 3);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 700);
    // The hour still takes spans: the two merged segments merge with each
    // other, not with the seventh flush after them, which waits for flushes.
    assert_eq!(store.compact().unwrap(), 2);
    assert_eq!(store.snapshot_stats().segments, 2);
    assert_eq!(store.compact().unwrap(), 0, "a flush is not merged into a merged segment");
    rt.block_on(store.append(&t, batch(7, 100, now))).unwrap();
    store.flush().unwrap();
    // Two flushes merge (200 rows); then the two merged segments, 600 and
    // 200 rows, are one generation (within 4x) and merge.
    assert_eq!(store.compact().unwrap(), 2);
    assert_eq!(store.compact().unwrap(), 2);
    assert_eq!(store.snapshot_stats().segments, 1);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 800);
    assert_eq!(rt.block_on(count(&store, "SELECT count(DISTINCT trace_id) FROM spans")), 800);
    store.close().unwrap();
    drop(store);
    let store = Store::open({
        let mut c = config(dir.path());
        c.compact_max_segments = 3;
        c
    })
    .unwrap();
    let files = walk(&dir.path().join("segments"));
    assert_eq!(files.len(), 1, "one segment holds all eight flushes: {files:?}");
    assert!(files[0].file_name().unwrap().to_string_lossy().contains("-c"));
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 800);
}

#[test]
fn an_hour_taking_spans_merges_by_generation_and_a_quiet_closed_hour_merges_everything() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns();
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 4;
    cfg.compact_max_segments = 8;
    cfg.sessions_snapshot_interval = Duration::ZERO;
    // An hour is quiet once no flush wrote to it for this long.
    cfg.flush_interval = Duration::from_millis(200);
    let quiet = || std::thread::sleep(Duration::from_millis(300));
    let store = Store::open(cfg).unwrap();
    // This hour, and one two hours ago (closed, but taking spans, as history
    // being imported does), flushed together.
    let flush = |i: u64| {
        rt.block_on(store.append(&t, batch(i, 100, now))).unwrap();
        rt.block_on(store.append(&t, batch(1_000 + i, 50, now - 2 * HOUR))).unwrap();
        store.flush().unwrap();
    };
    for i in 0..4 {
        flush(i);
    }
    assert_eq!(store.snapshot_stats().segments, 8);
    // Each hour's four flushes merge.
    assert_eq!(store.compact().unwrap(), 8);
    assert_eq!(store.snapshot_stats().segments, 2);
    for i in 4..7 {
        flush(i);
    }
    // Both hours keep their merged segment apart from their three flushes,
    // too few to merge: a merged segment taking every few flushes in would
    // be rewritten with each.
    assert_eq!(store.compact().unwrap(), 0, "a flush is not merged into a merged segment");
    assert_eq!(store.snapshot_stats().segments, 8);
    // Once quiet, the closed hour merges everything it has; this hour waits.
    quiet();
    assert_eq!(store.compact().unwrap(), 4);
    assert_eq!(store.snapshot_stats().segments, 5);
    flush(7);
    // Four flushes of this hour merge; the closed hour takes spans again and
    // its new flush waits.
    assert_eq!(store.compact().unwrap(), 4);
    assert_eq!(store.snapshot_stats().segments, 4);
    quiet();
    assert_eq!(store.compact().unwrap(), 2);
    assert_eq!(store.snapshot_stats().segments, 3);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 8 * 150);
    let this_hour = format!("SELECT count(*) FROM spans WHERE start_time >= to_timestamp_nanos({})", now - HOUR / 2);
    assert_eq!(rt.block_on(count(&store, &this_hour)), 800);
}

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn text(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

/// One resource's spans: `(trace, span, parent, name, kind, error, duration ms, session, route)`.
type SpanSpec<'a> = (u64, u64, u64, &'a str, i32, bool, u64, &'a str, Option<&'a str>);

fn resource_batch(service: &str, os: &str, start_ns: u64, spans: &[SpanSpec<'_>]) -> RecordBatch {
    use opentelemetry_proto::tonic::trace::v1::Status;
    let spans = spans
        .iter()
        .map(|&(trace, span, parent, name, kind, error, ms, session, route)| {
            let mut attributes = vec![text("session.id", session)];
            if let Some(r) = route {
                attributes.push(text("http.route", r));
                attributes.push(text("http.request.method", "GET"));
            }
            Span {
                trace_id: [trace.to_be_bytes(), 1u64.to_be_bytes()].concat(),
                span_id: span.to_be_bytes().to_vec(),
                parent_span_id: if parent == 0 { Vec::new() } else { parent.to_be_bytes().to_vec() },
                name: name.into(),
                kind,
                start_time_unix_nano: start_ns,
                end_time_unix_nano: start_ns + ms * 1_000_000,
                attributes,
                status: error.then(|| Status { code: 2, ..Default::default() }),
                ..Default::default()
            }
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", service), text("service.version", "1.0"), text("os.type", os)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    };
    convert_request(&req, &Tenant::default_tenant(), 0, SpanLimits::NONE).unwrap().batch.unwrap()
}

/// `(requests, errors, own_errors)` of the server cells of `span_metrics`, by os_type.
async fn metrics_by_os(store: &Store) -> Vec<(String, i64, i64, i64)> {
    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 1).unwrap();
    let out = engine
        .run(
            None,
            "SELECT os_type, sum(requests), sum(errors), sum(own_errors) FROM span_metrics \
             WHERE kind = 'server' GROUP BY os_type ORDER BY os_type",
        )
        .await
        .unwrap();
    let b = arrow::compute::concat_batches(&out.schema, &out.batches).unwrap();
    (0..b.num_rows())
        .map(|r| {
            let i = |c: usize| b.column(c).as_primitive::<Int64Type>().value(r);
            (b.column(0).as_string::<i32>().value(r).to_owned(), i(1), i(2), i(3))
        })
        .collect()
}

#[test]
fn span_metrics_count_every_span_once_with_its_session_values_through_flush_compaction_and_crash() {
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns();
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 2;
    cfg.sessions_snapshot_interval = std::time::Duration::ZERO;
    let store = Store::open(cfg.clone()).unwrap();
    for i in 0..3u64 {
        // An android app's tap (a root client span) calls a Linux backend
        // whose handler fails because its database call failed.
        let trace = 100 + i;
        let app = resource_batch("app", "android", now, &[(trace, 1, 0, "tap", CLIENT, true, 50, "s-a", None)]);
        let backend = resource_batch(
            "api",
            "linux",
            now,
            &[
                (trace, 2, 1, "GET /cart", SERVER, true, 40, "s-a", Some("/cart")),
                (trace, 3, 2, "SELECT", CLIENT, true, 5, "s-a", None),
            ],
        );
        // A web session with no root span here: the backend's own value.
        let web = resource_batch(
            "api",
            "linux",
            now,
            &[(200 + i, 9, 8, "GET /cart", SERVER, false, 7, "s-w", Some("/cart"))],
        );
        for b in [app, backend, web] {
            rt.block_on(store.append(&t, b)).unwrap();
        }
        if i < 2 {
            store.flush().unwrap();
        }
    }
    let expect = vec![("android".to_owned(), 3, 3, 0), ("linux".to_owned(), 3, 0, 0)];
    assert_eq!(rt.block_on(metrics_by_os(&store)), expect, "buffered and flushed alike");
    assert_eq!(
        rt.block_on(count(&store, "SELECT sum(requests) FROM span_metrics")),
        rt.block_on(count(&store, "SELECT count(*) FROM spans"))
    );
    // The database call's failure is its own; the handler only passed it up.
    assert_eq!(rt.block_on(count(&store, "SELECT sum(own_errors) FROM span_metrics WHERE operation = 'SELECT'")), 3);
    // The latency histogram of the web requests: three in the bucket of 7 ms.
    assert_eq!(
        rt.block_on(count(
            &store,
            &format!(
                "SELECT sum(c) FROM (SELECT unnest(latency_buckets) AS b, unnest(latency_counts) AS c \
                 FROM span_metrics WHERE os_type = 'linux') WHERE b = {}",
                andon_store::latency_bucket(7_000_000)
            )
        )),
        3
    );
    store.flush().unwrap();
    assert!(store.compact().unwrap() >= 2);
    assert_eq!(rt.block_on(metrics_by_os(&store)), expect, "after compaction");
    store.close().unwrap();
    drop(store);
    assert_eq!(walk(&dir.path().join("metrics")).len(), walk(&dir.path().join("segments")).len());

    // A crash after a segment and its rollup were written but before the
    // checkpoint: both go on start, and the WAL (here empty) is the truth.
    let seg = walk(&dir.path().join("segments")).into_iter().next().unwrap();
    let stray = seg.with_file_name("00000000000000009999-0000.parquet");
    std::fs::copy(&seg, &stray).unwrap();
    let metrics = walk(&dir.path().join("metrics")).into_iter().next().unwrap();
    let stray_metrics = metrics.with_file_name("00000000000000009999-0000.parquet");
    std::fs::copy(&metrics, &stray_metrics).unwrap();
    // And a segment whose rollup was lost is rolled up again.
    std::fs::remove_file(&metrics).unwrap();
    let store = Store::open(cfg).unwrap();
    assert!(!stray.exists() && !stray_metrics.exists());
    assert_eq!(store.roll_up_missing(10).unwrap(), 1);
    assert_eq!(rt.block_on(metrics_by_os(&store)), expect, "after a crash and a lost rollup");
}

/// `(os_type, calls, errors, open sessions)` of `sessions`, by os_type (a row is
/// one session's calls of an operation in one minute).
async fn sessions_by_os(store: &Store) -> Vec<(String, i64, i64, i64)> {
    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 1).unwrap();
    let out = engine
        .run(
            None,
            "SELECT os_type, sum(calls), sum(errors), count(DISTINCT CASE WHEN open THEN session_id END) \
             FROM sessions GROUP BY os_type ORDER BY os_type",
        )
        .await
        .unwrap();
    let b = arrow::compute::concat_batches(&out.schema, &out.batches).unwrap();
    (0..b.num_rows())
        .map(|r| {
            (
                b.column(0).as_string::<i32>().value(r).to_owned(),
                b.column(1).as_primitive::<Int64Type>().value(r),
                b.column(2).as_primitive::<Int64Type>().value(r),
                b.column(3).as_primitive::<Int64Type>().value(r),
            )
        })
        .collect()
}

#[test]
fn sessions_count_every_call_once_through_flush_crash_finalization_and_compaction() {
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    const SECOND: u64 = 1_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns() - 3 * HOUR;
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 2;
    // An android app's taps (root client spans) call a Linux backend whose
    // GET /cart fails; a web session's calls come without a root span here.
    let session_a = |i: u64| {
        let at = now + i * SECOND;
        vec![
            resource_batch("app", "android", at, &[(100 + i, 1, 0, "tap", CLIENT, true, 50, "s-a", None)]),
            resource_batch("api", "linux", at, &[(100 + i, 2, 1, "GET /cart", SERVER, true, 40, "s-a", Some("/cart"))]),
            resource_batch("api", "linux", at, &[(200 + i, 9, 8, "GET /cart", SERVER, false, 7, "s-w", Some("/cart"))]),
        ]
    };
    {
        let store = Store::open(cfg.clone()).unwrap();
        for i in 0..3u64 {
            for b in session_a(i) {
                rt.block_on(store.append(&t, b)).unwrap();
            }
            if i < 2 {
                store.flush().unwrap();
            }
        }
        let open = vec![("android".to_owned(), 3, 3, 1), ("linux".to_owned(), 3, 0, 1)];
        assert_eq!(rt.block_on(sessions_by_os(&store)), open, "open sessions, flushed and buffered alike");
        // A crash: the last spans are only in the WAL, the open sessions as
        // of the last flush on disk; both come back, every call once.
        drop(store);
    }
    let store = Store::open(cfg.clone()).unwrap();
    let open = vec![("android".to_owned(), 3, 3, 1), ("linux".to_owned(), 3, 0, 1)];
    assert_eq!(rt.block_on(sessions_by_os(&store)), open, "after a crash");
    // A span of another session an hour later: both sessions have been quiet
    // longer than the timeout, so the next flush finalizes them.
    let late = |trace: u64, at: u64, session: &str| {
        resource_batch("api", "ios", at, &[(trace, 1, 0, "GET /home", SERVER, false, 5, session, Some("/home"))])
    };
    rt.block_on(store.append(&t, late(300, now + HOUR, "s-b"))).unwrap();
    store.flush().unwrap();
    assert_eq!(
        rt.block_on(sessions_by_os(&store)),
        vec![("android".to_owned(), 3, 3, 0), ("ios".to_owned(), 1, 0, 1), ("linux".to_owned(), 3, 0, 0)],
        "finalized, and the new one open"
    );
    rt.block_on(store.append(&t, late(301, now + 2 * HOUR, "s-c"))).unwrap();
    store.flush().unwrap();
    let files = |d: &std::path::Path| walk(&d.join("sessions").join("default"));
    assert_eq!(files(dir.path()).len(), 2);
    assert!(store.compact().unwrap() >= 2);
    let expect = vec![("android".to_owned(), 3, 3, 0), ("ios".to_owned(), 2, 0, 1), ("linux".to_owned(), 3, 0, 0)];
    assert_eq!(rt.block_on(sessions_by_os(&store)), expect, "after compaction");
    store.close().unwrap();
    drop(store);
    // The compaction's inputs are gone; a file of a flush after the
    // checkpoint (a crash before it) is deleted on start.
    let left = files(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    let stray = left[0].with_file_name("00000000000000099999-h1-h1.parquet");
    std::fs::copy(&left[0], &stray).unwrap();
    let store = Store::open(cfg).unwrap();
    assert!(!stray.exists());
    assert!(store.sessions_ready());
    assert_eq!(rt.block_on(sessions_by_os(&store)), expect, "after a restart");
}

#[test]
fn open_sessions_written_only_now_and_then_come_back_whole_after_a_crash() {
    const SERVER: i32 = 2;
    const SECOND: u64 = 1_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let now = now_ns() - 3 * HOUR;
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 2;
    // Only the first flush writes the open sessions.
    cfg.sessions_snapshot_interval = std::time::Duration::from_secs(3_600);
    let call = |trace: u64, at: u64, session: &str, os: &str, err: bool| {
        resource_batch("api", os, at, &[(trace, 1, 0, "GET /cart", SERVER, err, 40, session, Some("/cart"))])
    };
    {
        let store = Store::open(cfg.clone()).unwrap();
        rt.block_on(store.append(&t, call(1, now, "s-a", "android", true))).unwrap();
        store.flush().unwrap();
        // Noted after the write: in the next flushes' segments only.
        for i in 1..3u64 {
            rt.block_on(store.append(&t, call(1 + i, now + i * SECOND, "s-a", "android", false))).unwrap();
            store.flush().unwrap();
        }
        // An hour later s-a has been quiet past the timeout: this flush
        // finalizes it; s-b stays open, with a call in a second flush.
        rt.block_on(store.append(&t, call(10, now + HOUR, "s-b", "ios", false))).unwrap();
        store.flush().unwrap();
        rt.block_on(store.append(&t, call(11, now + HOUR + SECOND, "s-b", "ios", true))).unwrap();
        store.flush().unwrap();
        // The segments flushed after the write stay as they are.
        assert_eq!(store.compact().unwrap(), 0);
        let expect = vec![("android".to_owned(), 3, 1, 0), ("ios".to_owned(), 2, 1, 1)];
        assert_eq!(rt.block_on(sessions_by_os(&store)), expect, "before the crash");
        drop(store);
    }
    // The open sessions on disk are those of the first flush; the rest comes
    // from the segments, and s-a, finalized since, is not open again.
    let store = Store::open(cfg.clone()).unwrap();
    let expect = vec![("android".to_owned(), 3, 1, 0), ("ios".to_owned(), 2, 1, 1)];
    assert_eq!(rt.block_on(sessions_by_os(&store)), expect, "after the crash");
    // Finalizing s-b later counts each of its calls once.
    rt.block_on(store.append(&t, call(20, now + 2 * HOUR + 10 * SECOND, "s-c", "ios", false))).unwrap();
    store.flush().unwrap();
    let expect = vec![("android".to_owned(), 3, 1, 0), ("ios".to_owned(), 3, 1, 1)];
    assert_eq!(rt.block_on(sessions_by_os(&store)), expect, "s-b finalized after the restart");
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_eq!(rt.block_on(sessions_by_os(&store)), expect, "after a clean restart");
}

#[test]
fn with_rollups_off_spans_are_stored_and_no_rollups_or_sessions_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let mut cfg = config(dir.path());
    cfg.rollups = false;
    let store = Store::open(cfg.clone()).unwrap();
    rt.block_on(store.append(&t, batch(1, 100, now_ns()))).unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM span_metrics")), 0, "nothing rolled up while buffered");
    store.flush().unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 100);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM span_metrics")), 0);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM sessions")), 0);
    assert!(!store.sessions_ready(), "detection must not read sessions that were never kept");
    assert!(!dir.path().join("metrics").exists() && !dir.path().join("sessions").exists());
    assert_eq!(store.roll_up_missing(10).unwrap(), 0);
    drop(store);
    // Turned on later, the spans stored without rollups are rolled up.
    cfg.rollups = true;
    let store = Store::open(cfg).unwrap();
    while store.roll_up_missing(10).unwrap() > 0 {}
    assert_eq!(rt.block_on(count(&store, "SELECT sum(requests) FROM span_metrics")), 100);
}

#[test]
fn a_full_buffer_holds_the_next_export_until_a_flush_then_refuses_it_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_buffer_bytes = 4096;
    cfg.flush_bytes = 4096;
    let store = Store::open(cfg).unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let ingestor = andon_ingest::Ingestor::new(
        std::sync::Arc::new(store.clone()),
        std::sync::Arc::new(andon_model::clock::SystemClock),
        andon_ingest::IngestConfig::default(),
    );
    rt.block_on(ingestor.admit()).expect("an empty buffer takes exports");
    let mut seed = 0;
    while !store.buffer_full() {
        seed += 1;
        rt.block_on(store.append(&t, batch(seed, 50, now_ns()))).unwrap();
    }
    // Admission waits for room, then refuses as retryable when no flush made
    // any, before a byte of the request is held or decoded.
    let waited = std::time::Instant::now();
    let refused = rt.block_on(ingestor.admit()).unwrap_err();
    assert!(matches!(refused, andon_ingest::IngestError::Overloaded { .. }), "{refused}");
    assert!(refused.retry_after().is_some());
    assert!(waited.elapsed() >= andon_ingest::IngestConfig::default().overload_wait, "{:?}", waited.elapsed());
    // What was taken is kept, and a flush makes room again: an export waiting
    // for room is admitted as soon as it does.
    let flusher = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            store.flush().unwrap();
        })
    };
    let waited = std::time::Instant::now();
    rt.block_on(ingestor.admit()).expect("admitted once the flush made room");
    assert!(waited.elapsed() >= std::time::Duration::from_millis(250), "it waited for the flush");
    flusher.join().unwrap();
    rt.block_on(ingestor.admit()).expect("the flushed buffer takes exports again");
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 50 * seed as i64);
}

/// A table that counts how often a session builds it.
#[derive(Debug, Default)]
struct Counted(std::sync::atomic::AtomicUsize);

impl andon_store::ExtraTable for Counted {
    fn name(&self) -> &str {
        "counted"
    }

    fn provider(
        &self,
        _tenant: Option<&Tenant>,
    ) -> Result<std::sync::Arc<dyn datafusion::catalog::TableProvider>, andon_store::StoreError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![arrow::datatypes::Field::new(
            "n",
            arrow::datatypes::DataType::Int64,
            false,
        )]));
        let rows = RecordBatch::try_new(
            std::sync::Arc::clone(&schema),
            vec![std::sync::Arc::new(arrow::array::Int64Array::from(vec![7, 8]))],
        )
        .unwrap();
        Ok(std::sync::Arc::new(datafusion::datasource::MemTable::try_new(schema, vec![vec![rows]]).unwrap()))
    }
}

#[test]
fn an_extra_table_is_built_only_by_statements_that_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(config(dir.path())).unwrap();
    rt.block_on(store.append(&Tenant::default_tenant(), batch(1, 10, now_ns()))).unwrap();
    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 1).unwrap();
    let counted = std::sync::Arc::new(Counted::default());
    engine.register(std::sync::Arc::clone(&counted) as std::sync::Arc<dyn andon_store::ExtraTable>);
    let built = || counted.0.load(std::sync::atomic::Ordering::SeqCst);
    let first = |sql: &'static str| {
        let out = rt.block_on(engine.run(None, sql)).unwrap();
        out.batches[0].column(0).as_primitive::<Int64Type>().value(0)
    };
    assert_eq!(first("SELECT count(*) FROM spans"), 10);
    assert_eq!(first("SELECT count(*) FROM span_metrics JOIN sessions ON true"), 0);
    assert_eq!(built(), 0, "statements over spans, span_metrics and sessions must not build other tables");
    assert_eq!(first("SELECT sum(n) FROM counted"), 15);
    assert_eq!(built(), 1);
    assert_eq!(first("SELECT count(*) FROM spans s JOIN counted c ON c.n = 7"), 10);
    assert_eq!(built(), 2);
    let err = rt.block_on(engine.run(None, "SELECT * FROM nothing_here")).unwrap_err();
    assert!(err.to_string().contains("nothing_here"), "{err}");
}

/// `n` spans of one trace, each the child of the one before, `i` ms long.
fn chain(seed: u64, n: u64, start_ns: u64) -> RecordBatch {
    let id = |i: u64| (seed << 32 | (i + 1)).to_be_bytes().to_vec();
    let spans = (0..n)
        .map(|i| Span {
            trace_id: [seed.to_be_bytes(), 7u64.to_be_bytes()].concat(),
            span_id: id(i),
            parent_span_id: if i == 0 { Vec::new() } else { id(i - 1) },
            name: "op".into(),
            start_time_unix_nano: start_ns + i * 1_000,
            end_time_unix_nano: start_ns + i * 1_000 + (i + 1) * 1_000_000,
            ..Default::default()
        })
        .collect();
    service_spans(&Tenant::default_tenant(), spans)
}

/// Each row of `sql` as text, columns joined by `|`.
async fn rows(store: &Store, sql: &str) -> Vec<String> {
    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 1).unwrap();
    let out = engine.run(None, sql).await.unwrap();
    let mut rows = Vec::new();
    for b in &out.batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> =
                b.columns().iter().map(|c| arrow::util::display::array_value_to_string(c, i).unwrap()).collect();
            rows.push(cells.join("|"));
        }
    }
    rows
}

/// The Arrow type of each column of a segment file, by name.
fn file_columns(path: &std::path::Path) -> Vec<(String, arrow::datatypes::DataType)> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    reader.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
}

#[test]
fn span_ids_are_stored_as_bytes_without_end_time_and_read_back_as_the_table_shows_them() {
    use arrow::datatypes::DataType;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    // Whole seconds, early enough in this hour that the second trace, a
    // minute later, falls in the same hour: the two segments must merge.
    let now = now_ns() / 1_000_000_000 * 1_000_000_000;
    let now = now / HOUR * HOUR + (now % HOUR).min(HOUR - 10 * 60_000_000_000);
    let mut cfg = config(dir.path());
    cfg.compact_min_segments = 2;
    cfg.sessions_snapshot_interval = Duration::ZERO;
    let store = Store::open(cfg.clone()).unwrap();
    rt.block_on(store.append(&t, chain(1, 5, now))).unwrap();
    store.flush().unwrap();
    let files = walk(&dir.path().join("segments"));
    assert_eq!(files.len(), 1);
    let columns = file_columns(&files[0]);
    let kind = |name: &str| columns.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone());
    assert_eq!(kind("span_id"), Some(DataType::FixedSizeBinary(8)));
    assert_eq!(kind("parent_span_id"), Some(DataType::FixedSizeBinary(8)));
    assert_eq!(kind("end_time"), None, "end_time is start_time + duration_ns");
    assert_eq!(kind("trace_id"), Some(DataType::Utf8), "trace ids stay text in the files");

    // A segment in the table's own layout beside it: ids that have no
    // 8-byte form reading back as the same text (upper case).
    let upper = chain(0xab, 3, now + 60_000_000_000);
    let mut cols = upper.columns().to_vec();
    for name in ["span_id", "parent_span_id"] {
        let i = upper.schema().index_of(name).unwrap();
        let text = arrow::compute::kernels::cast::cast(&cols[i], &DataType::Utf8).unwrap();
        let up: arrow::array::StringArray = text.as_string::<i32>().iter().map(|v| v.map(str::to_uppercase)).collect();
        cols[i] = std::sync::Arc::new(up);
    }
    let upper = RecordBatch::try_new(upper.schema(), cols).unwrap();
    rt.block_on(store.append(&t, upper)).unwrap();
    store.flush().unwrap();
    let files = walk(&dir.path().join("segments"));
    let text_files = files.iter().filter(|f| file_columns(f).iter().any(|(n, _)| n == "end_time")).count();
    assert_eq!((files.len(), text_files), (2, 1));

    let expected: Vec<String> = (0..5u64)
        .map(|i| {
            let id = |i: u64| format!("{:016x}", 1u64 << 32 | (i + 1));
            let parent = if i == 0 { String::new() } else { id(i - 1) };
            format!("{}|{parent}|{}", id(i), (i + 1) * 1_000_000)
        })
        .chain((0..3u64).map(|i| {
            let id = |i: u64| format!("{:016X}", 0xabu64 << 32 | (i + 1));
            let parent = if i == 0 { String::new() } else { id(i - 1) };
            format!("{}|{parent}|{}", id(i), (i + 1) * 1_000_000)
        }))
        .collect();
    let all = "SELECT span_id, parent_span_id, CAST(end_time AS BIGINT) - CAST(start_time AS BIGINT) \
               FROM spans ORDER BY start_time";
    assert_eq!(rt.block_on(rows(&store, all)), expected);
    // Filters on the stored-as-bytes and derived columns, as text and times.
    let one = format!("SELECT duration_ns FROM spans WHERE span_id = '{:016x}'", 1u64 << 32 | 3);
    assert_eq!(rt.block_on(rows(&store, &one)), vec!["3000000"]);
    let children = format!("SELECT count(*) FROM spans WHERE parent_span_id = '{:016x}'", 1u64 << 32 | 3);
    assert_eq!(rt.block_on(count(&store, &children)), 1);
    let late = format!("SELECT count(*) FROM spans WHERE end_time >= to_timestamp_nanos({})", now + 3_000_000);
    assert_eq!(rt.block_on(count(&store, &late)), 3 + 3, "spans 3-5 of the first trace and all of the second");

    // Reopened, the ids read from the files still tell a retried span.
    store.close().unwrap();
    drop(store);
    let store = Store::open(cfg.clone()).unwrap();
    rt.block_on(store.append(&t, chain(1, 5, now))).unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 8);

    // Merged, the two keep every value; ids that do not fit keep the text layout.
    assert_eq!(store.compact().unwrap(), 2);
    assert_eq!(rt.block_on(rows(&store, all)), expected);
    store.close().unwrap();
    drop(store);
    let merged = walk(&dir.path().join("segments"));
    assert_eq!(merged.len(), 1);
    assert!(file_columns(&merged[0]).iter().any(|(n, t)| n == "span_id" && *t == DataType::Utf8));
}

/// Spans `from..to` of trace `seed`, starting at `start_ns`.
fn spans(seed: u64, ids: std::ops::Range<u64>, start_ns: u64) -> Vec<Span> {
    ids.map(|i| Span {
        trace_id: [seed.to_be_bytes(), 1u64.to_be_bytes()].concat(),
        span_id: (seed << 32 | (i + 1)).to_be_bytes().to_vec(),
        name: "op".into(),
        start_time_unix_nano: start_ns + i,
        end_time_unix_nano: start_ns + i + 10,
        ..Default::default()
    })
    .collect()
}

/// The receivers hand the store the request's own bytes, and the WAL logs
/// those (not the converted batch) with the rows that were new. Replayed,
/// a request converts again under its first clock reading and limits, and
/// keeps exactly the spans it stored, even when the spans it repeated are
/// no longer remembered as duplicates by then.
#[test]
fn requests_logged_as_received_replay_to_exactly_the_spans_they_stored() {
    use andon_ingest::{IngestConfig, Ingestor, OtlpReconvert};
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let t = Tenant::default_tenant();
    let mut cfg = config(dir.path());
    cfg.reconvert = Some(std::sync::Arc::new(OtlpReconvert));
    let now = now_ns();
    // The second request repeats 20 spans of the first and adds 30; the third
    // carries a span dated past the receiver's limit (an hour ahead), refused.
    let first = request(spans(1, 0..40, now));
    let second = request(spans(1, 20..70, now));
    let mut third_spans = spans(2, 0..25, now);
    third_spans[3].start_time_unix_nano = now + 2 * HOUR;
    third_spans[3].end_time_unix_nano = now + 2 * HOUR + 10;
    let third = request(third_spans);
    {
        let store = Store::open(cfg.clone()).unwrap();
        let ingestor = Ingestor::new(
            std::sync::Arc::new(store.clone()),
            std::sync::Arc::new(andon_model::clock::SystemClock),
            IngestConfig::default(),
        );
        assert_eq!(rt.block_on(ingestor.export(&t, first)).unwrap().stored, 40);
        // The first request reaches a segment; the WAL starts again.
        store.flush().unwrap();
        let out = rt.block_on(ingestor.export(&t, second.clone())).unwrap();
        assert_eq!((out.stored, out.duplicates), (30, 20));
        let out = rt.block_on(ingestor.export(&t, third.clone())).unwrap();
        assert_eq!((out.stored, out.rejected), (24, 1));
        // The log holds the requests as they were sent.
        let wal: Vec<u8> = std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        for req in [&second, &third] {
            let body = req.encode_to_vec();
            assert!(wal.windows(body.len()).any(|w| w == body), "the request's bytes are in the WAL");
        }
        // Dropped without close: as after a kill, only the WAL has the last two.
    }
    // Without the receivers' converter the log cannot be replayed: the store
    // refuses to open and leaves the log as it is.
    let mut without = cfg.clone();
    without.reconvert = None;
    let err = Store::open(without).unwrap_err().to_string();
    assert!(err.contains("converter"), "{err}");
    // Restarted once the first request's spans are no longer remembered as
    // recent (a restart long after the crash): the second request's repeats
    // stay out because the log says which of its spans were new.
    std::thread::sleep(Duration::from_millis(1_200));
    cfg.dedup_window = Duration::from_secs(1);
    let store = Store::open(cfg.clone()).unwrap();
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 40 + 30 + 24);
    assert_eq!(rt.block_on(count(&store, "SELECT count(DISTINCT span_id) FROM spans")), 40 + 30 + 24);
    assert_eq!(
        rt.block_on(count(&store, "SELECT count(*) FROM spans WHERE span_id = '0000000200000004'")),
        0,
        "the span refused at first is refused again"
    );
    // Replay flushed them: a second restart reads the same from segments.
    drop(store);
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.snapshot_stats().buffered_spans, 0);
    assert_eq!(rt.block_on(count(&store, "SELECT count(*) FROM spans")), 40 + 30 + 24);
}
