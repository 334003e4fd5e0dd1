//! Ingest benchmark: the simulated shop's traffic, pre-encoded by the fixtures'
//! load mode (500 spans a request, every span distinct), pushed at a running
//! `andon serve` with durability on, over OTLP/HTTP and then OTLP/gRPC.
//!
//! `cargo bench --workspace --bench ingest [-- SECONDS [CONNECTIONS [ROUNDS [RATE]]]]`
//!
//! With `ANDON_BENCH_S3=PYTHON` (an interpreter with `moto[server]`) it
//! compares segments on local disk with segments in an S3 bucket served by
//! moto on loopback (`[storage] object_store`), rollups on in both, instead of
//! rollups on and off.
//!
//! With `ANDON_BENCH_ROTEL=PATH` it compares Andon (durability and rollups
//! on, the defaults) with rotel, a Rust OpenTelemetry collector, run with its
//! blackhole exporter (it receives, decodes and drops; it stores nothing).
//! PATH is rotel's `rotel-agent` executable, or a Python interpreter with the
//! `rotel` package from PyPI (`pip install rotel`), whose bundled agent is
//! used. The same client pushes the same requests at both.
//!
//! With `ANDON_BENCH_BASELINE=PATH` (another build of `andon`, say one copied
//! from `target/release/andon` before a change) it runs that build beside this
//! one in every round, with the same settings, for a before-and-after figure
//! measured in one run; with `ANDON_BENCH_ROTEL` as well, rotel runs too.
//!
//! Without `RATE` the clients send as fast as the server accepts, so the
//! server runs saturated and refuses some requests (their decoding is CPU
//! spent on nothing stored). With `RATE` (spans a second, in all) both
//! settings get the same offered load, and spans per CPU-second is the cost of
//! a stored span.
//!
//! Prints spans/s, spans per server CPU-second (over the load, and until the
//! server fell idle after it: the merges a load leaves behind are part of
//! what its spans cost), export latency, the server's peak
//! RSS and Parquet bytes per span on disk, with the rollups and sessions kept at
//! ingest (the default) and without them (`[storage] rollups = false`),
//! alternating for `ROUNDS` rounds (default 1), then the medians of each.
//! Against the bucket it also prints moto's CPU-seconds, the bytes uploaded
//! and how long the final flush (upload included) took to stop the server.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use andon_fixtures::export::Transport;
use andon_fixtures::load::{self, LoadConfig};
use andon_tests::Server;
use andon_tests::moto::{Moto, free_port};

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

/// Waits at least 65 s (the default flush interval, after which buffered
/// spans are flushed and an hour that stopped taking spans merges what is
/// left of it, and a margin), then until the process `pid` uses under 2% of a
/// core for two seconds in a row (at most three minutes in all): the flushes
/// and merges a load leaves behind are part of what its spans cost. Returns
/// the seconds waited.
fn settle(pid: u32) -> f64 {
    let started = Instant::now();
    let mut quiet = 0;
    let mut last = cpu_seconds(pid);
    while (quiet < 2 || started.elapsed() < Duration::from_secs(65)) && started.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_seconds(pid);
        quiet = if now - last < 0.02 { quiet + 1 } else { 0 };
        last = now;
    }
    started.elapsed().as_secs_f64()
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
    /// Spans over the CPU used from the start until the server fell idle after
    /// the load: with the merges the load left behind.
    per_cpu_settled: f64,
    p99_ms: f64,
    rss: f64,
    stop_secs: f64,
}

/// What one run of a round changes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Rollups(bool),
    Storage(Store),
    /// Another build of `andon` (`ANDON_BENCH_BASELINE`), with the defaults.
    Baseline,
    Rotel,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Store {
    LocalDisk,
    S3,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Variant::Rollups(on) => write!(f, "rollups={on}"),
            Variant::Storage(Store::LocalDisk) => write!(f, "segments on local disk"),
            Variant::Storage(Store::S3) => write!(f, "segments in S3 (moto)"),
            Variant::Baseline => write!(f, "baseline build"),
            Variant::Rotel => write!(f, "rotel (blackhole exporter)"),
        }
    }
}

const BUCKET: &str = "andon-bench";

/// rotel's agent: `path` itself, or the one bundled with the `rotel` package
/// of the Python interpreter `path`.
fn rotel_agent(path: &str) -> String {
    let name = std::path::Path::new(path).file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.starts_with("python") {
        return path.to_owned();
    }
    let out = Command::new(path)
        .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{path} has no rotel package (pip install rotel)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What receives the load: Andon, or rotel.
enum Receiver {
    Andon(Server),
    Rotel { child: Child, grpc: String, http: String },
}

impl Receiver {
    fn start_rotel(agent: &str) -> Receiver {
        let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        let child = Command::new(agent)
            .args(["start", "--exporter", "blackhole", "--otlp-grpc-endpoint", &grpc, "--otlp-http-endpoint", &http])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{agent} starts: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&grpc).is_err() || TcpStream::connect(&http).is_err() {
            assert!(Instant::now() < deadline, "rotel listens within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Receiver::Rotel { child, grpc, http }
    }

    fn pid(&self) -> u32 {
        match self {
            Receiver::Andon(s) => s.pid(),
            Receiver::Rotel { child, .. } => child.id(),
        }
    }

    fn endpoint(&self, transport: Transport) -> String {
        match (self, transport) {
            (Receiver::Andon(s), Transport::Http) => s.http_url(""),
            (Receiver::Andon(s), Transport::Grpc) => s.grpc_url(),
            (Receiver::Rotel { http, .. }, Transport::Http) => format!("http://{http}"),
            (Receiver::Rotel { grpc, .. }, Transport::Grpc) => format!("http://{grpc}"),
        }
    }

    /// Bytes Andon wrote to its WAL so far (from `/metrics`).
    fn wal_bytes(&self) -> Option<u64> {
        let Receiver::Andon(s) = self else { return None };
        let resp = andon_tests::reqwest::blocking_client().get(s.api_url("/metrics")).send().ok()?;
        let text = String::from_utf8(resp.body).ok()?;
        text.lines().find_map(|l| l.strip_prefix("andon_wal_written_bytes_total ")).and_then(|v| v.trim().parse().ok())
    }

    /// SIGTERM, and waits for the exit.
    fn stop(&mut self) {
        match self {
            Receiver::Andon(s) => s.stop(),
            Receiver::Rotel { child, .. } => {
                let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
                let deadline = Instant::now() + Duration::from_secs(30);
                while child.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
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
    let s3_python = std::env::var("ANDON_BENCH_S3").ok();
    let rotel = std::env::var("ANDON_BENCH_ROTEL").ok().map(|p| rotel_agent(&p));
    let baseline = std::env::var_os("ANDON_BENCH_BASELINE").map(std::path::PathBuf::from);
    let mut variants: Vec<Variant> = if rotel.is_some() {
        vec![Variant::Rollups(true), Variant::Rotel]
    } else if baseline.is_some() {
        vec![Variant::Rollups(true)]
    } else if s3_python.is_some() {
        vec![Variant::Storage(Store::LocalDisk), Variant::Storage(Store::S3)]
    } else {
        vec![Variant::Rollups(true), Variant::Rollups(false)]
    };
    if baseline.is_some() {
        variants.insert(1, Variant::Baseline);
    }
    let mut runs: std::collections::BTreeMap<(String, Variant), Vec<Run>> = Default::default();
    for _ in 0..rounds {
        for (seed, transport) in [(1, Transport::Http), (2, Transport::Grpc)] {
            let pool = Arc::new(load::encode_pool(pool_spans, SPANS_PER_REQUEST, seed).expect("traffic encodes"));
            for &variant in &variants {
                let dir = tempfile::tempdir().expect("tempdir");
                // Ingest alone: no detection passes share the server's CPU.
                let mut env: Vec<(&str, String)> = vec![("ANDON_ANALYSIS_INTERVAL_SECS", "0".to_owned())];
                let mut moto = None;
                match variant {
                    Variant::Rollups(on) => env.push(("ANDON_STORAGE_ROLLUPS", on.to_string())),
                    Variant::Storage(Store::LocalDisk) | Variant::Rotel | Variant::Baseline => {}
                    Variant::Storage(Store::S3) => {
                        let m = Moto::start(s3_python.as_deref().unwrap_or("python3"), free_port());
                        m.create_bucket(BUCKET);
                        env.push(("ANDON_STORAGE_OBJECT_STORE", format!("s3://{BUCKET}/bench")));
                        env.extend(m.env());
                        moto = Some(m);
                    }
                }
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let mut server = match (variant, &rotel, &baseline) {
                    (Variant::Rotel, Some(agent), _) => Receiver::start_rotel(agent),
                    (Variant::Baseline, _, Some(bin)) => {
                        Receiver::Andon(Server::start_bin_with_env(bin, dir.path(), &env))
                    }
                    _ => Receiver::Andon(Server::start_with_env(dir.path(), &env)),
                };
                let pid = server.pid();
                let moto_cpu0 = moto.as_ref().map_or(0.0, |m| cpu_seconds(m.pid()));
                let cfg = LoadConfig {
                    endpoint: server.endpoint(transport),
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
                let settle = settle(pid);
                let cpu_settled = cpu_seconds(pid) - cpu0;
                let rss = peak_rss_mb(pid);
                let wal = server.wal_bytes();
                let stopping = std::time::Instant::now();
                server.stop();
                let stop_secs = stopping.elapsed().as_secs_f64();
                let parquet = match &moto {
                    Some(m) => m.list(BUCKET, "bench/segments/").iter().map(|(_, size)| size).sum(),
                    None => dir_bytes(&dir.path().join("segments"), "parquet"),
                };
                if let Some(m) = &moto {
                    println!(
                        "  moto: {:.1} CPU-seconds, {parquet} bytes of segments in the bucket",
                        cpu_seconds(m.pid()) - moto_cpu0
                    );
                }
                drop(moto);
                let run = Run {
                    rate: report.spans as f64 / report.elapsed.as_secs_f64().max(1e-9),
                    per_cpu: report.spans as f64 / cpu.max(1e-9),
                    per_cpu_settled: report.spans as f64 / cpu_settled.max(1e-9),
                    p99_ms: report.percentile(0.99).as_secs_f64() * 1e3,
                    rss,
                    stop_secs,
                };
                println!(
                    "{transport:?} {variant}: {:.0} spans/s, {:.0} spans per server CPU-second ({:.0} until idle {settle:.0} s later), p50 {:.1} ms, p99 {:.1} ms, peak RSS {rss:.0} MB, {:.1} Parquet bytes/span, {} WAL bytes/span, stopped in {stop_secs:.1} s ({} spans, {:.0} bytes/span encoded, {} refused, {conns} connections{})",
                    run.rate,
                    run.per_cpu,
                    run.per_cpu_settled,
                    report.percentile(0.5).as_secs_f64() * 1e3,
                    run.p99_ms,
                    parquet as f64 / report.spans.max(1) as f64,
                    wal.map_or("no".to_owned(), |w| format!("{:.1}", w as f64 / report.spans.max(1) as f64)),
                    report.spans,
                    report.encoded_bytes_per_span,
                    report.refused,
                    if report.pool_exhausted { ", pool ran out" } else { "" },
                );
                runs.entry((format!("{transport:?}"), variant)).or_default().push(run);
            }
        }
    }
    println!("medians of {rounds} round(s):");
    for ((transport, variant), v) in &runs {
        println!(
            "{transport} {variant}: {:.0} spans/s, {:.0} spans per server CPU-second ({:.0} until idle), p99 {:.1} ms, peak RSS {:.0} MB, stopped in {:.1} s",
            median(v.iter().map(|r| r.rate).collect()),
            median(v.iter().map(|r| r.per_cpu).collect()),
            median(v.iter().map(|r| r.per_cpu_settled).collect()),
            median(v.iter().map(|r| r.p99_ms).collect()),
            median(v.iter().map(|r| r.rss).collect()),
            median(v.iter().map(|r| r.stop_secs).collect()),
        );
    }
    for transport in ["Http", "Grpc"] {
        let per_cpu =
            |variant| runs.get(&(transport.to_owned(), variant)).map(|v| median(v.iter().map(|r| r.per_cpu).collect()));
        if let (Some(andon), Some(base)) = (per_cpu(Variant::Rollups(true)), per_cpu(Variant::Baseline)) {
            println!("{transport}: this build's spans per CPU-second are {:.2}x the baseline build's", andon / base);
        }
        if rotel.is_some() {
            for (variant, name) in [(Variant::Rollups(true), "Andon's"), (Variant::Baseline, "The baseline build's")] {
                if let (Some(andon), Some(rotel)) = (per_cpu(variant), per_cpu(Variant::Rotel)) {
                    println!("{transport}: {name} spans per CPU-second are {:.2}x rotel's", andon / rotel);
                }
            }
            continue;
        }
        if baseline.is_some() {
            continue;
        }
        let (with, without, what) = if s3_python.is_some() {
            (Variant::Storage(Store::S3), Variant::Storage(Store::LocalDisk), "segments in S3 cost")
        } else {
            (Variant::Rollups(true), Variant::Rollups(false), "rollups and sessions cost")
        };
        if let (Some(on), Some(off)) = (per_cpu(with), per_cpu(without)) {
            println!("{transport}: {what} {:.1}% of spans per CPU-second", (1.0 - on / off) * 100.0);
        }
    }
}
