//! Ingest benchmark: the simulated shop's traffic, pre-encoded by the fixtures'
//! load mode (500 spans a request, every span distinct), pushed at a running
//! `andon serve` with durability on, over OTLP/HTTP and then OTLP/gRPC.
//!
//! `cargo bench -p andon-tests --bench ingest [-- SECONDS [CONNECTIONS]]`
//!
//! Prints spans/s, spans per server CPU-second, export latency, the server's peak
//! RSS and Parquet bytes per span on disk.

use std::sync::Arc;
use std::time::Duration;

use andon_fixtures::export::Transport;
use andon_fixtures::load::{self, LoadConfig};
use andon_tests::Server;

const SPANS_PER_REQUEST: usize = 500;

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &std::path::Path, ext: &str) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p, ext);
            } else if p.extension().is_some_and(|x| x == ext) {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    // Enough for well over the fastest rate measured; the run says if it ran out.
    let pool_spans = (secs as usize * 150_000).clamp(100_000, 4_000_000);
    for (seed, transport) in [(1, Transport::Http), (2, Transport::Grpc)] {
        let pool = Arc::new(load::encode_pool(pool_spans, SPANS_PER_REQUEST, seed).expect("traffic encodes"));
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = Server::start(dir.path());
        let pid = server.pid();
        let endpoint = match transport {
            Transport::Http => server.http_url(""),
            Transport::Grpc => server.grpc_url(),
        };
        let cfg = LoadConfig {
            endpoint,
            transport,
            duration: Duration::from_secs(secs),
            connections: conns,
            pool_spans,
            spans_per_request: SPANS_PER_REQUEST,
            seed,
        };
        let cpu0 = cpu_seconds(pid);
        let report = rt.block_on(load::run(&cfg, pool)).expect("loopback load");
        let cpu = cpu_seconds(pid) - cpu0;
        let rss = peak_rss_mb(pid);
        server.stop();
        let parquet = dir_bytes(&dir.path().join("segments"), "parquet");
        println!(
            "{transport:?}: {:.0} spans/s, {:.0} spans per server CPU-second, p50 {:.1} ms, p99 {:.1} ms, peak RSS {rss:.0} MB, {:.1} Parquet bytes/span ({} spans, {:.0} bytes/span encoded, {conns} connections{})",
            report.spans as f64 / report.elapsed.as_secs_f64().max(1e-9),
            report.spans as f64 / cpu.max(1e-9),
            report.percentile(0.5).as_secs_f64() * 1e3,
            report.percentile(0.99).as_secs_f64() * 1e3,
            parquet as f64 / report.spans.max(1) as f64,
            report.spans,
            report.encoded_bytes_per_span,
            if report.pool_exhausted { ", pool ran out" } else { "" },
        );
    }
}
