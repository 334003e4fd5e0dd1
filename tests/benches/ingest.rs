//! Ingest benchmark: the simulated shop's traffic, pre-encoded by the fixtures'
//! load mode (500 spans a request, every span distinct), pushed at a running
//! `andon serve` with durability on, over OTLP/HTTP and then OTLP/gRPC.
//!
//! `cargo bench --workspace --bench ingest [-- SECONDS [CONNECTIONS [ROUNDS [RATE]]]]`
//!
//! Without `RATE` the clients send as fast as the server accepts, so the
//! server runs saturated and refuses some requests (their decoding is CPU
//! spent on nothing stored). With `RATE` (spans a second, in all) both
//! settings get the same offered load, and spans per CPU-second is the cost of
//! a stored span.
//!
//! Prints spans/s, spans per server CPU-second, export latency, the server's peak
//! RSS and Parquet bytes per span on disk, with the rollups and sessions kept at
//! ingest (the default) and without them (`[storage] rollups = false`),
//! alternating for `ROUNDS` rounds (default 1), then the medians of each.

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

struct Run {
    rate: f64,
    per_cpu: f64,
    p99_ms: f64,
    rss: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(20);
    let conns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    // Spans a second offered; without it, as fast as the server accepts.
    let rate: Option<f64> = args.get(3).and_then(|s| s.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    // Enough for well over the fastest rate measured; the run says if it ran out.
    let pool_spans = (secs as usize * 150_000).clamp(100_000, 4_000_000);
    let mut runs: std::collections::BTreeMap<(String, bool), Vec<Run>> = Default::default();
    for _ in 0..rounds {
        for (seed, transport) in [(1, Transport::Http), (2, Transport::Grpc)] {
            let pool = Arc::new(load::encode_pool(pool_spans, SPANS_PER_REQUEST, seed).expect("traffic encodes"));
            for rollups in [true, false] {
                let dir = tempfile::tempdir().expect("tempdir");
                let flag = if rollups { "true" } else { "false" };
                // Ingest alone: no detection passes share the server's CPU.
                let env = [("ANDON_STORAGE_ROLLUPS", flag), ("ANDON_ANALYSIS_INTERVAL_SECS", "0")];
                let mut server = Server::start_with_env(dir.path(), &env);
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
                    rate,
                };
                let cpu0 = cpu_seconds(pid);
                let report = rt.block_on(load::run(&cfg, Arc::clone(&pool))).expect("loopback load");
                let cpu = cpu_seconds(pid) - cpu0;
                let rss = peak_rss_mb(pid);
                server.stop();
                let parquet = dir_bytes(&dir.path().join("segments"), "parquet");
                let run = Run {
                    rate: report.spans as f64 / report.elapsed.as_secs_f64().max(1e-9),
                    per_cpu: report.spans as f64 / cpu.max(1e-9),
                    p99_ms: report.percentile(0.99).as_secs_f64() * 1e3,
                    rss,
                };
                println!(
                    "{transport:?} rollups={rollups}: {:.0} spans/s, {:.0} spans per server CPU-second, p50 {:.1} ms, p99 {:.1} ms, peak RSS {rss:.0} MB, {:.1} Parquet bytes/span ({} spans, {:.0} bytes/span encoded, {conns} connections{})",
                    run.rate,
                    run.per_cpu,
                    report.percentile(0.5).as_secs_f64() * 1e3,
                    run.p99_ms,
                    parquet as f64 / report.spans.max(1) as f64,
                    report.spans,
                    report.encoded_bytes_per_span,
                    if report.pool_exhausted { ", pool ran out" } else { "" },
                );
                runs.entry((format!("{transport:?}"), rollups)).or_default().push(run);
            }
        }
    }
    println!("medians of {rounds} round(s):");
    for ((transport, rollups), v) in &runs {
        println!(
            "{transport} rollups={rollups}: {:.0} spans/s, {:.0} spans per server CPU-second, p99 {:.1} ms, peak RSS {:.0} MB",
            median(v.iter().map(|r| r.rate).collect()),
            median(v.iter().map(|r| r.per_cpu).collect()),
            median(v.iter().map(|r| r.p99_ms).collect()),
            median(v.iter().map(|r| r.rss).collect()),
        );
    }
    for transport in ["Http", "Grpc"] {
        let on = runs.get(&(transport.to_owned(), true));
        let off = runs.get(&(transport.to_owned(), false));
        if let (Some(on), Some(off)) = (on, off) {
            let on = median(on.iter().map(|r| r.per_cpu).collect());
            let off = median(off.iter().map(|r| r.per_cpu).collect());
            println!("{transport}: rollups and sessions cost {:.1}% of spans per CPU-second", (1.0 - on / off) * 100.0);
        }
    }
}
