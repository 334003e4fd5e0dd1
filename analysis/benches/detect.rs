//! One continuous detection pass over the simulated shop's traffic, against
//! DuckDB running the same detectors' raw-span SQL over the same Parquet
//! segments, in one run.
//!
//! `cargo bench -p andon-analysis --bench detect -- [MILLION_SPANS] [RUNS] [HOURS]`
//! (defaults 10, 3 and 6). Stores `MILLION_SPANS` of the `all` scenario spread
//! over `HOURS` through the real ingest path, then times the pass continuous
//! detection runs at the end of the data: the default windows, 30 minutes
//! against the 3 hours before. Holding the rate and tripling both figures
//! (`-- 30 3 18`) tells whether a pass's cost follows what is stored or what
//! it reads. Prints the median of the runs, with CPU-seconds and the peak RSS
//! of the passes, for: Andon's pass (the windows are whole minutes, so it
//! reads `span_metrics` and `sessions`), the same pass reading spans only,
//! Andon running only the detectors' raw-span SQL, and DuckDB (pip `duckdb`,
//! installed when missing) running that SQL with 2 threads.
//! `ANDON_BENCH_HISTORY_HOURS=H` stores `H` hours of the `clean` scenario at
//! the same rate before the run: the pass reads the same windows over a
//! larger store (`-- 6.3 5 6` with `H=23` stored 38M spans).
//! `ANDON_BENCH_STORE=DIR` keeps the stored spans in DIR, and a later run
//! with the same arguments reads them from there. `ANDON_BENCH_SQL=FILE`
//! times the statements in FILE (separated by lines holding only `;`) over
//! the stored run instead of the pass.
//! `ANDON_BENCH_SPANS_PASS=0` leaves out the pass reading spans only, and
//! `ANDON_BENCH_RAW_SQL=0` Andon's run of the raw-span SQL (which spills past
//! its memory budget at these sizes); DuckDB's run of it stays.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use andon_analysis::{AnalysisConfig, Analyzer, Flow, Windows};
use andon_fixtures::{SimConfig, Simulation, scenario};
use andon_ingest::{IngestConfig, Ingestor};
use andon_model::Tenant;
use andon_model::clock::SystemClock;
use andon_store::{Durability, QueryEngine, QueryLimits, Store, StoreConfig};
use chrono::{DateTime, Duration, Utc};

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The peak RSS since the last [`reset_peak_rss`], in MB.
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Starts the peak RSS afresh from the current RSS (Linux `clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Wall seconds, CPU-seconds and peak RSS of each run of one thing.
#[derive(Default)]
struct Timed {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    rss: f64,
}

impl Timed {
    fn run<T>(&mut self, f: impl FnOnce() -> T) -> T {
        reset_peak_rss();
        let (t, c) = (Instant::now(), cpu_seconds());
        let out = f();
        self.wall.push(t.elapsed().as_secs_f64());
        self.cpu.push(cpu_seconds() - c);
        self.rss = self.rss.max(peak_rss_mb());
        out
    }

    fn line(&self) -> String {
        format!(
            "{:.2} s, {:.2} CPU-s, peak RSS {:.0} MB",
            median(self.wall.clone()),
            median(self.cpu.clone()),
            self.rss
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn checkout_flow() -> Flow {
    Flow {
        name: "checkout".into(),
        steps: [
            "POST /cart/items",
            "GET /cart",
            "POST /checkout/address",
            "POST /checkout/shipping",
            "POST /checkout/payment",
            "POST /checkout/place-order",
            "GET /orders/{id}",
        ]
        .map(str::to_owned)
        .to_vec(),
    }
}

fn main() {
    // `RUST_LOG=andon_store::query=debug` prints every query with its time.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let millions: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let hours: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(6.0);
    // The same pass reading spans only takes minutes on large stores.
    let spans_only = std::env::var("ANDON_BENCH_SPANS_PASS").map_or(true, |v| v != "0");
    let raw_sql = std::env::var("ANDON_BENCH_RAW_SQL").map_or(true, |v| v != "0");
    let history_hours: f64 =
        std::env::var("ANDON_BENCH_HISTORY_HOURS").ok().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let end: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-20T20:00:00Z").unwrap().with_timezone(&Utc);

    // Spans per session, from a short run, sets the rate that gives the target.
    let probe = andon_fixtures::generate("all", 3, 0.2, 1.0, end).unwrap();
    let per_session = probe.spans as f64 / probe.sessions.max(1) as f64;
    let rate = millions * 1e6 / per_session / (hours * 3600.0);
    eprintln!(
        "generating ~{millions}M spans: {hours} h at {rate:.2} sessions/s ({per_session:.0} spans per session), \
         after {history_hours} h of clean history at that rate"
    );

    // `ANDON_BENCH_STORE=DIR` stores the run in DIR and keeps it; a later run
    // with the same arguments and DIR reads it instead of storing it again.
    let kept = std::env::var_os("ANDON_BENCH_STORE").map(std::path::PathBuf::from);
    let reuse = kept.as_ref().is_some_and(|d| d.join("segments").exists());
    let tmp = tempfile::tempdir().unwrap();
    let dir = kept.as_deref().unwrap_or(tmp.path());
    let mut cfg = StoreConfig::new(dir);
    // A store kept across runs replays what the receivers logged.
    cfg.reconvert = Some(std::sync::Arc::new(andon_ingest::OtlpReconvert));
    cfg.durability = Durability::None;
    cfg.max_buffer_bytes = 1 << 30;
    let store = Store::open(cfg).unwrap();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tenant = Tenant::default_tenant();
    // Clean history before the run, at its rate and with another seed (so no
    // trace id repeats): more stored, the pass's windows unchanged.
    let start = end - Duration::seconds((hours * 3600.0) as i64);
    let history = (history_hours > 0.0).then(|| {
        Simulation::new(SimConfig::new(scenario("clean").unwrap(), 1003, rate, history_hours, start)).unwrap()
    });
    let sim = Simulation::new(SimConfig::new(scenario("all").unwrap(), 3, rate, hours, end)).unwrap();
    let truth = sim.ground_truth().clone();
    let started = Instant::now();
    let mut spans = 0usize;
    let mut pending = 0usize;
    for batch in history.into_iter().flatten().chain(sim).take_while(|_| !reuse) {
        spans += batch.spans;
        pending += batch.spans;
        rt.block_on(ingestor.export(&tenant, batch.request)).unwrap();
        if pending > 500_000 {
            store.flush().unwrap();
            pending = 0;
        }
    }
    store.flush().unwrap();
    while store.compact().unwrap() > 0 {}
    let segments_dir = dir.join("segments");
    if reuse {
        eprintln!("read the stored run in {}", dir.display());
    } else {
        eprintln!("stored {spans} spans in {:.0} s", started.elapsed().as_secs_f64());
    }

    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 2).unwrap();
    if reuse {
        let out = rt.block_on(engine.collect(Some(tenant.clone()), "SELECT count(*) AS n FROM spans")).unwrap();
        spans = andon_store::sql::Rows::new(out.batches).iter().next().map_or(0, |r| r.u64("n") as usize);
    }
    // `ANDON_BENCH_SQL=FILE`: time the statements of FILE (separated by lines
    // holding only `;`) over the stored run, three times each, and stop.
    if let Some(file) = std::env::var_os("ANDON_BENCH_SQL") {
        let text = std::fs::read_to_string(file).unwrap();
        for q in text.split("\n;\n").map(str::trim).filter(|q| !q.is_empty()) {
            let mut times = Vec::new();
            let mut rows = 0;
            for _ in 0..3 {
                let t = Instant::now();
                let out = rt.block_on(engine.collect(Some(tenant.clone()), q));
                times.push(t.elapsed().as_secs_f64() * 1e3);
                rows = out.map(|o| o.batches.iter().map(|b| b.num_rows()).sum::<usize>()).unwrap_or(0);
            }
            println!("{:>9.1} ms  {rows:>8} rows  {}", median(times), q.lines().next().unwrap_or(""));
            if q.contains("EXPLAIN") {
                let out = rt.block_on(engine.collect(Some(tenant.clone()), q)).unwrap();
                println!("{}", arrow::util::pretty::pretty_format_batches(&out.batches).unwrap());
            }
        }
        return;
    }
    let config = AnalysisConfig { flows: vec![checkout_flow()], ..AnalysisConfig::default() };
    let analyzer = Analyzer::new(engine.clone(), config.clone()).unwrap();
    let from_spans = Analyzer::new(engine.clone(), config).unwrap().reading_spans_only();
    // The pass continuous detection runs at the end of the data.
    let windows = Windows::before(
        truth.end - Duration::seconds(analyzer.config().window_secs as i64),
        truth.end,
        analyzer.config().baseline_secs,
    );
    let queries = analyzer.detector_queries(windows);

    let (mut full, mut unrolled, mut sql_only) = (Timed::default(), Timed::default(), Timed::default());
    let mut found = 0;
    let gist = |r: &andon_analysis::PassReport| {
        let mut v: Vec<String> =
            r.findings.iter().map(|f| format!("{} {} {} {:?}", f.kind, f.service, f.operation, f.segment)).collect();
        v.sort();
        v
    };
    let mut same = true;
    let mut sql_failed = None;
    for _ in 0..runs {
        let report = full.run(|| rt.block_on(analyzer.pass(&tenant, windows)).unwrap());
        found = report.findings.len();
        if spans_only {
            let spans_report = unrolled.run(|| rt.block_on(from_spans.pass(&tenant, windows)).unwrap());
            same &= gist(&report) == gist(&spans_report);
        }
        if !raw_sql {
            continue;
        }
        sql_only.run(|| {
            for (label, q) in &queries {
                if let Err(e) = rt.block_on(engine.collect(Some(tenant.clone()), q)) {
                    // Past the query engine's limits: said, and the rest still timed.
                    sql_failed = Some(format!("{label}: {e}"));
                }
            }
        });
    }

    // DuckDB over the same files and statements.
    let script_dir = tempfile::tempdir().unwrap();
    for (i, (_, q)) in queries.iter().enumerate() {
        std::fs::write(script_dir.path().join(format!("{i}.sql")), q).unwrap();
    }
    let script = script_dir.path().join("duck.py");
    let mut f = std::fs::File::create(&script).unwrap();
    write!(
        f,
        r#"
import glob, resource, statistics, sys, time
try:
    import duckdb
except ImportError:
    import subprocess
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "duckdb"])
    import duckdb
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET threads = 2")
# DuckDB reads nanosecond timestamps as TIMESTAMP_NS, which has no interval
# arithmetic; the view gives it the microsecond type its functions take. The
# segments store span ids as 8 bytes and no end_time; the view shows them as
# the spans table does.
con.execute("CREATE VIEW spans AS SELECT * REPLACE (CAST(start_time AS TIMESTAMPTZ) AS start_time, "
            "lower(hex(span_id)) AS span_id, lower(hex(parent_span_id)) AS parent_span_id), "
            "CAST(start_time AS TIMESTAMPTZ) + to_microseconds(duration_ns // 1000) AS end_time "
            "FROM read_parquet('{segments}/**/*.parquet')")
# The one dialect difference: DataFusion casts a timestamp to its epoch
# nanoseconds, DuckDB has epoch_ns() for that.
import re
dialect = lambda q: re.sub(r"CAST\((last_seen|first_seen|first\d+|start_time|end_time) AS BIGINT\)", r"epoch_ns(\1)", q)
queries = [dialect(open(p).read()) for p in sorted(glob.glob('{dir}/*.sql'), key=lambda p: int(p.rsplit('/', 1)[1][:-4]))]
times, cpus = [], []
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
for _ in range({runs}):
    t, c = time.perf_counter(), cpu()
    for q in queries:
        con.execute(q).fetchall()
    times.append(time.perf_counter() - t)
    cpus.append(cpu() - c)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the bench process
# across exec, so it would report the bench's own peak.
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(statistics.median(times), statistics.median(cpus), hwm / 1024)
"#,
        segments = segments_dir.display(),
        dir = script_dir.path().display(),
    )
    .unwrap();
    drop(f);
    let out = Command::new("python3").arg(&script).output().expect("python3 runs");
    let duck: Option<Vec<f64>> = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(|v| v.parse().ok()).collect()
    } else {
        eprintln!("duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
        None
    };

    println!("spans: {spans}  findings: {found}  runs: {runs}  pass: {} to {}", windows.baseline_start, windows.end);
    println!("andon detection pass           (median): {}", full.line());
    if spans_only {
        println!("andon pass from spans only     (median): {}  (same findings: {same})", unrolled.line());
    }
    if raw_sql {
        println!("andon detector raw-span SQL    (median): {}", sql_only.line());
    }
    if let Some(e) = &sql_failed {
        println!("  (a statement failed, so this is not a full run: {e})");
    }
    match duck.as_deref() {
        Some([wall, cpu, rss]) => println!(
            "duckdb detector raw-span SQL   (median): {wall:.2} s, {cpu:.2} CPU-s, peak RSS {rss:.0} MB (process)  \
             (andon pass / duckdb = {:.2})",
            median(full.wall.clone()) / wall
        ),
        _ => println!("duckdb: not measured"),
    }
}
