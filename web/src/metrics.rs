//! `/metrics` in the Prometheus text format. Every metric Andon exposes is named
//! here and nowhere else.

use std::fmt::Write as _;

use andon_ingest::IngestSnapshot;
use andon_model::stats::HistogramSnapshot;
use andon_store::StoreSnapshot;

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

/// What the server reads to render `/metrics`.
#[derive(Debug)]
pub struct Readings<'a> {
    pub ingest: IngestSnapshot,
    pub store: StoreSnapshot,
    pub fsync: HistogramSnapshot,
    pub flush: HistogramSnapshot,
    pub query: HistogramSnapshot,
    pub uptime_secs: u64,
    pub version: &'a str,
    /// Continuous detection: passes, failed passes, findings reported, last pass ms.
    pub detection: [u64; 4],
}

pub fn render(r: &Readings<'_>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let _ = writeln!(
        out,
        "# HELP andon_build_info Build information.\n# TYPE andon_build_info gauge\nandon_build_info{{version=\"{}\"}} 1",
        r.version
    );
    gauge(&mut out, "andon_uptime_seconds", "Seconds since the server started.", r.uptime_secs);
    counter(&mut out, "andon_spans_received_total", "Spans received in decoded OTLP exports.", r.ingest.spans_received);
    counter(&mut out, "andon_spans_accepted_total", "Spans stored durably.", r.ingest.spans_accepted);
    let _ = writeln!(
        out,
        "# HELP andon_spans_rejected_total Spans not stored, by reason.\n# TYPE andon_spans_rejected_total counter"
    );
    for (reason, n) in &r.ingest.spans_rejected {
        let _ = writeln!(out, "andon_spans_rejected_total{{reason=\"{}\"}} {n}", reason.label());
    }
    let _ = writeln!(
        out,
        "# HELP andon_export_requests_refused_total Export requests refused whole, by reason.\n# TYPE andon_export_requests_refused_total counter"
    );
    for (reason, n) in &r.ingest.requests_refused {
        let _ = writeln!(out, "andon_export_requests_refused_total{{reason=\"{}\"}} {n}", reason.label());
    }
    counter(&mut out, "andon_export_requests_total", "Export requests whose body was read.", r.ingest.requests);
    counter(&mut out, "andon_received_bytes_total", "Bytes of export bodies as received.", r.ingest.bytes_received);
    counter(
        &mut out,
        "andon_wal_written_bytes_total",
        "Bytes written to the write-ahead log.",
        r.store.wal_bytes_written,
    );
    gauge(&mut out, "andon_wal_size_bytes", "Bytes of write-ahead log on disk.", r.store.wal_disk_bytes);
    histogram(&mut out, "andon_wal_fsync_seconds", "Latency of write-ahead log syncs.", &r.fsync);
    gauge(&mut out, "andon_buffered_spans", "Spans in memory not yet in a segment.", r.store.buffered_spans);
    gauge(&mut out, "andon_buffered_bytes", "Memory held by buffered spans.", r.store.buffered_bytes);
    counter(&mut out, "andon_segments_written_total", "Parquet segments written.", r.store.segments_written);
    counter(
        &mut out,
        "andon_segment_written_bytes_total",
        "Bytes of Parquet segments written.",
        r.store.segment_bytes_written,
    );
    gauge(&mut out, "andon_segments", "Parquet segments on disk.", r.store.segments);
    gauge(&mut out, "andon_segment_size_bytes", "Bytes of Parquet segments stored.", r.store.segment_disk_bytes);
    gauge(
        &mut out,
        "andon_segment_cache_bytes",
        "Bytes of local copies of segments kept in the object store.",
        r.store.segment_cache_bytes,
    );
    gauge(&mut out, "andon_dedup_keys", "Span ids remembered for deduplication.", r.store.dedup_keys);
    histogram(&mut out, "andon_flush_seconds", "Duration of flushes from memory to segments.", &r.flush);
    histogram(&mut out, "andon_query_seconds", "Latency of SQL queries.", &r.query);
    counter(&mut out, "andon_queries_failed_total", "SQL queries that failed or were refused.", r.store.queries_failed);
    counter(
        &mut out,
        "andon_quarantined_total",
        "Corrupt WAL tails and unreadable segments moved to data_dir/quarantine at open.",
        r.store.quarantined,
    );
    let [passes, failures, findings, last_ms] = r.detection;
    counter(&mut out, "andon_detection_passes_total", "Continuous detection passes completed.", passes);
    counter(&mut out, "andon_detection_failures_total", "Continuous detection passes that failed.", failures);
    counter(&mut out, "andon_detection_findings_total", "Findings reported by continuous passes.", findings);
    gauge(&mut out, "andon_detection_last_pass_milliseconds", "Duration of the last detection pass.", last_ms);
    out
}
