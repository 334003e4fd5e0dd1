//! A full detection pass over the simulated shop's traffic, against DuckDB
//! running the same detector SQL over the same Parquet segments, in one run.
//!
//! `cargo bench -p andon-analysis --bench detect -- [MILLION_SPANS] [RUNS]`
//! (defaults 10 and 3). Prints the median of the runs for: Andon's full pass
//! (SQL, statistics, trace sampling, evidence; the windows are whole minutes,
//! so the latency and error-rate tests read `span_metrics`), the same pass
//! reading spans only, Andon running only the detector SQL over spans, and
//! DuckDB (pip `duckdb`, installed when missing) running that SQL.
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

const HOURS: f64 = 6.0;

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
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let millions: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let end: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-20T20:00:00Z").unwrap().with_timezone(&Utc);

    // Spans per session, from a short run, sets the rate that gives the target.
    let probe = andon_fixtures::generate("all", 3, 0.2, 1.0, end).unwrap();
    let per_session = probe.spans as f64 / probe.sessions.max(1) as f64;
    let rate = millions * 1e6 / per_session / (HOURS * 3600.0);
    eprintln!("generating ~{millions}M spans: {HOURS} h at {rate:.2} sessions/s ({per_session:.0} spans per session)");

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.durability = Durability::None;
    cfg.max_buffer_bytes = 1 << 30;
    let store = Store::open(cfg).unwrap();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tenant = Tenant::default_tenant();
    let mut sim = Simulation::new(SimConfig::new(scenario("all").unwrap(), 3, rate, HOURS, end)).unwrap();
    let truth = sim.ground_truth().clone();
    let started = Instant::now();
    let mut spans = 0usize;
    let mut pending = 0usize;
    for batch in sim.by_ref() {
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
    let segments_dir = dir.path().join("segments");
    eprintln!("stored {spans} spans in {:.0} s", started.elapsed().as_secs_f64());

    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 2).unwrap();
    let config = AnalysisConfig { flows: vec![checkout_flow()], ..AnalysisConfig::default() };
    let analyzer = Analyzer::new(engine.clone(), config.clone()).unwrap();
    let from_spans = Analyzer::new(engine.clone(), config).unwrap().reading_spans_only();
    let span = truth.end - truth.start;
    let at = |f: f64| truth.start + Duration::milliseconds((span.num_milliseconds() as f64 * f) as i64);
    let windows = Windows { baseline_start: truth.start, baseline_end: at(0.35), split: at(0.8), end: truth.end };
    let queries = analyzer.detector_queries(windows);

    let mut full = Vec::new();
    let mut unrolled = Vec::new();
    let mut sql_only = Vec::new();
    let mut found = 0;
    let gist = |r: &andon_analysis::PassReport| {
        let mut v: Vec<String> =
            r.findings.iter().map(|f| format!("{} {} {} {:?}", f.kind, f.service, f.operation, f.segment)).collect();
        v.sort();
        v
    };
    let mut same = true;
    for _ in 0..runs {
        let t = Instant::now();
        let report = rt.block_on(analyzer.pass(&tenant, windows)).unwrap();
        full.push(t.elapsed().as_secs_f64());
        found = report.findings.len();
        let t = Instant::now();
        let spans_report = rt.block_on(from_spans.pass(&tenant, windows)).unwrap();
        unrolled.push(t.elapsed().as_secs_f64());
        same &= gist(&report) == gist(&spans_report);
        let t = Instant::now();
        for (_, q) in &queries {
            rt.block_on(engine.collect(Some(tenant.clone()), q)).unwrap();
        }
        sql_only.push(t.elapsed().as_secs_f64());
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
import glob, statistics, sys, time
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
# arithmetic; the view gives it the microsecond type its functions take.
con.execute("CREATE VIEW spans AS SELECT * REPLACE (CAST(start_time AS TIMESTAMPTZ) AS start_time, "
            "CAST(end_time AS TIMESTAMPTZ) AS end_time) FROM read_parquet('{segments}/**/*.parquet')")
queries = [open(p).read() for p in sorted(glob.glob('{dir}/*.sql'), key=lambda p: int(p.rsplit('/', 1)[1][:-4]))]
times = []
for _ in range({runs}):
    t = time.perf_counter()
    for q in queries:
        con.execute(q).fetchall()
    times.append(time.perf_counter() - t)
print(statistics.median(times))
"#,
        segments = segments_dir.display(),
        dir = script_dir.path().display(),
    )
    .unwrap();
    drop(f);
    let out = Command::new("python3").arg(&script).output().expect("python3 runs");
    let duck: Option<f64> = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    } else {
        eprintln!("duckdb failed: {}", String::from_utf8_lossy(&out.stderr));
        None
    };

    println!("spans: {spans}  findings: {found}  runs: {runs}");
    println!("andon full detection pass (median): {:.2} s", median(full.clone()));
    println!("andon full pass from spans only (median): {:.2} s  (same findings: {same})", median(unrolled.clone()));
    println!("andon detector SQL only   (median): {:.2} s", median(sql_only.clone()));
    match duck {
        Some(d) => println!(
            "duckdb detector SQL       (median): {d:.2} s  (andon full pass / duckdb = {:.2})",
            median(full) / d
        ),
        None => println!("duckdb: not measured"),
    }
}
