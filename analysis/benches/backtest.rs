//! A replayed backtest over a day of the simulated shop: every pass continuous
//! detection would have run (one a minute, each judging its 30 minutes
//! against the 3 hours before it, the default configuration), in process
//! against the real store.
//!
//! `cargo bench -p andon-analysis --bench backtest -- [SCENARIO] [HOURS] [SESSIONS_PER_S] [FIRST_PASS_HOURS]`
//! (defaults `clean`, 24, 1, and 3.5: the first pass with a full baseline
//! behind it). Prints the spans stored, the time the passes took, the peak
//! RSS, and each finding as the server records it (a problem seen again, or
//! in another account of the same people, stays one finding) with the end of
//! the pass that first reported it; on `clean` every finding is a false
//! alarm. For each injected fault it prints the delay from its onset to the
//! first pass that reported a finding of its kind on its service (or naming
//! it as the cause), which is the detection latency of continuous detection,
//! less the settle delay.
//! `ANDON_BENCH_ONSETS=MINUTES` runs only the passes ending within MINUTES
//! after an onset. `ANDON_BENCH_STORE=DIR` keeps the stored run in DIR, and a
//! later run with the same arguments reads it from there.
//! `ANDON_BENCH_LIVE=1` runs the passes while the traffic arrives, as a
//! server would: the spans up to the first pass are stored first, then before
//! each pass the export requests of the minute it adds go through the ingest
//! path, flushed to a segment but for their last 10 seconds, which stay
//! buffered, and small segments are compacted as the server's maintenance
//! compacts them.
//! Nothing is kept between runs in this mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use andon_analysis::{AnalysisConfig, Analyzer, FindingsDb, Windows};
use andon_fixtures::{SimConfig, Simulation, scenario};
use andon_ingest::{IngestConfig, Ingestor};
use andon_model::Tenant;
use andon_model::clock::SystemClock;
use andon_store::{Durability, QueryEngine, QueryLimits, Store, StoreConfig};
use chrono::{DateTime, Duration, Utc};

/// The allocator the `andon` binary runs backtests with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Peak resident memory of this process, from `/proc`.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU-seconds this process has used, user and system.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // `sysconf(_SC_CLK_TCK)`, 100 on Linux.
    Some(ticks / 100.0)
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
    let name = args.first().map_or("clean", String::as_str).to_owned();
    let hours: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(24.0);
    let rate: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let first_pass: Option<f64> = args.get(3).and_then(|a| a.parse().ok());
    let end: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-20T20:00:00Z").unwrap().with_timezone(&Utc);

    // `ANDON_BENCH_STORE=DIR` stores the run in DIR and keeps it; a later run
    // with the same arguments and DIR reads it instead of storing it again.
    let kept = std::env::var_os("ANDON_BENCH_STORE").map(std::path::PathBuf::from);
    let reuse = kept.as_ref().is_some_and(|d| d.join("wal").exists() || d.join("segments").exists());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(kept.as_deref().unwrap_or(dir.path()));
    // A store kept across runs replays what the receivers logged.
    cfg.reconvert = Some(std::sync::Arc::new(andon_ingest::OtlpReconvert));
    cfg.durability = Durability::None;
    // Every flush notes the open sessions, so that every segment can be
    // compacted at once, as a server's maintenance compacts them within the
    // interval: the stored layout does not depend on how fast it was stored.
    cfg.sessions_snapshot_interval = std::time::Duration::ZERO;
    let store = Store::open(cfg).unwrap();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tenant = Tenant::default_tenant();
    let sim = Simulation::new(SimConfig::new(scenario(&name).unwrap(), 11, rate, hours, end)).unwrap();
    let truth = sim.ground_truth().clone();
    let live = std::env::var_os("ANDON_BENCH_LIVE").is_some_and(|v| v != "0");
    assert!(!(live && reuse), "ANDON_BENCH_LIVE stores its traffic as the passes run: leave out ANDON_BENCH_STORE");
    let config = AnalysisConfig { replay_max_passes: 100_000, ..AnalysisConfig::default() };
    // By default the first pass has a full baseline behind it.
    let offset = first_pass.map_or((config.baseline_secs + config.window_secs) as f64, |h| h * 3600.0);
    let from = truth.start + Duration::seconds(offset as i64);
    let started = Instant::now();
    let (mut spans, mut pending) = (0usize, 0usize);
    let mut sim = sim.peekable();
    let first_end = Windows::replay(&config, from, truth.end, None).first().map(|w| w.end);
    while let Some(batch) = sim.next_if(|b| !reuse && (!live || first_end.is_none_or(|e| b.not_before <= e))) {
        spans += batch.spans;
        pending += batch.spans;
        rt.block_on(ingestor.export(&tenant, batch.request)).unwrap();
        if store.buffer_full() || pending > 500_000 {
            store.flush().unwrap();
            pending = 0;
        }
    }
    store.flush().unwrap();
    while store.compact().unwrap() > 0 {}
    if std::env::var_os("ANDON_BENCH_KEEP").is_some() {
        eprintln!("keeping the store in {}", dir.path().display());
        std::mem::forget(dir);
        std::process::exit(0);
    }
    eprintln!("{name}: stored {spans} spans over {hours} h in {:.0} s", started.elapsed().as_secs_f64());

    let engine = QueryEngine::new(store.clone(), QueryLimits::default(), 2).unwrap();
    let mut passes = Windows::replay(&config, from, truth.end, None);
    // `ANDON_BENCH_ONSETS=MINUTES` runs only the passes ending within MINUTES
    // after some fault's onset: enough to measure detection latency at a rate
    // whose every pass would take long.
    if let Some(m) = std::env::var("ANDON_BENCH_ONSETS").ok().and_then(|m| m.parse::<i64>().ok()) {
        passes.retain(|w| truth.faults.iter().any(|f| w.end >= f.onset && w.end <= f.onset + Duration::minutes(m)));
    }
    let analyzer = Analyzer::new(engine, config).unwrap();
    // Every pass's findings are recorded as the server records them: a
    // problem reported again, or in another account of the same people, stays
    // one finding (one ticket).
    let db = FindingsDb::open(&dir.path().join("findings.db")).unwrap();
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut times = Vec::with_capacity(passes.len());
    let mut accounts: BTreeSet<String> = BTreeSet::new();
    let mut reported: Vec<andon_model::Finding> = Vec::new();
    // Each (kind, service, operation) linked under a finding, and the end of
    // the first pass that did.
    let mut linked: std::collections::BTreeMap<(andon_model::FindingKind, String, String), DateTime<Utc>> =
        std::collections::BTreeMap::new();
    // `ANDON_BENCH_FINDINGS=FILE` keeps every new account whole, one JSON a line.
    let mut dump = std::env::var_os("ANDON_BENCH_FINDINGS").map(|p| std::fs::File::create(p).unwrap());
    let (mut arrived, mut arrived_cpu) = (Duration::zero(), 0.0);
    for (i, w) in passes.iter().enumerate() {
        if live {
            // The minute's traffic: stored, but for its last 10 seconds, which stay buffered.
            let (a, a_cpu) = (Instant::now(), cpu_seconds());
            let mut send = |upto: DateTime<Utc>| {
                while let Some(b) = sim.next_if(|b| b.not_before <= upto) {
                    spans += b.spans;
                    if store.buffer_full() {
                        store.flush().unwrap();
                    }
                    rt.block_on(ingestor.export(&tenant, b.request)).unwrap();
                }
            };
            send(w.end - Duration::seconds(10));
            store.flush().unwrap();
            // As the server's maintenance does every 10 s: a partition's
            // small segments merged once there are enough of them.
            while store.compact().unwrap() > 0 {}
            send(w.end);
            arrived += Duration::from_std(a.elapsed()).unwrap_or_default();
            arrived_cpu += cpu_seconds().zip(a_cpu).map_or(0.0, |(after, before)| after - before);
        }
        let t = Instant::now();
        let report = rt.block_on(analyzer.continuous(&tenant, *w, None)).unwrap();
        times.push(t.elapsed().as_secs_f64());
        for f in &report.findings {
            let key = format!("{} {} {} {:?}", f.kind, f.service, f.operation, f.segment);
            if accounts.insert(key)
                && let Some(out) = dump.as_mut()
            {
                use std::io::Write;
                writeln!(out, "{}", serde_json::to_string(f).unwrap()).unwrap();
            }
        }
        for l in report.findings.iter().flat_map(|f| &f.evidence.linked) {
            linked.entry((l.kind, l.service.clone(), l.operation.clone())).or_insert(w.end);
        }
        for f in db.record(&tenant, report.findings).unwrap() {
            let key = format!("{} {} {} {:?}", f.kind, f.service, f.operation, f.segment);
            match reported.iter_mut().find(|r| r.id == f.id) {
                Some(r) if r.segment != f.segment => {
                    eprintln!("  pass ending {} ({:.1} s): {} revised to {key}", w.end, times[i], r.id);
                    *r = f;
                }
                Some(r) => *r = f,
                None => {
                    eprintln!("  pass ending {} ({:.1} s): {} {key}", w.end, times[i], f.id);
                    reported.push(f);
                }
            }
        }
        if (i + 1) % 60 == 0 {
            eprintln!(
                "{} passes to {} in {:.0} s, {} findings",
                i + 1,
                w.end,
                started.elapsed().as_secs_f64(),
                reported.len()
            );
        }
    }
    let total = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_before).map(|(after, before)| after - before - arrived_cpu);
    if live {
        println!(
            "live: {:.1} s and {arrived_cpu:.1} CPU-s went to storing the traffic between passes (left out of the passes' figures below)",
            arrived.num_milliseconds() as f64 / 1e3
        );
    }
    let total = total - arrived.num_milliseconds() as f64 / 1e3;
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times.get(((times.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
    println!(
        "backtest {name}: {hours} h, {spans} spans, {} passes in {total:.1} s (per pass median {:.3} s, p95 {:.3} s, max {:.3} s; {:.3} CPU-s a pass on average), peak RSS {:.0} MB",
        times.len(),
        pick(0.5),
        pick(0.95),
        pick(1.0),
        cpu.unwrap_or(0.0) / times.len().max(1) as f64,
        peak_rss_mb().unwrap_or(0.0)
    );
    let (answered, read) = analyzer.sampled_traces();
    println!("sampled traces: {answered} answered from the previous passes' reads, {read} read from the store");
    let (answered, read) = analyzer.failing_traces();
    println!("failing traces: {answered} answered from the previous passes' reads, {read} read from the store");
    println!(
        "{} findings ({} distinct accounts: kind, service, operation and segment)",
        reported.len(),
        accounts.len()
    );
    for f in &reported {
        println!(
            "  {} {} {} {:?}  first seen in the pass ending {}, last {}",
            f.kind, f.service, f.operation, f.segment, f.first_seen, f.last_seen
        );
    }
    for fault in &truth.faults {
        let t = &fault.target;
        let hit = reported.iter().find(|f| {
            f.kind == t.kind
                && f.first_seen >= fault.onset
                && (f.service == t.service || f.evidence.cause.as_ref().is_some_and(|c| c.service == t.service))
        });
        // Any finding on where the fault starts (its cause, or its own
        // service): a drop-off's failing callee is reported before users are
        // known to have left.
        let origin = fault.cause.as_ref().map_or(t.service.as_str(), |c| c.service.as_str());
        let any = reported
            .iter()
            .filter(|f| f.first_seen >= fault.onset)
            .find(|f| f.service == origin || f.evidence.cause.as_ref().is_some_and(|c| c.service == origin));
        let after = |f: &andon_model::Finding| format!("{} s", (f.first_seen - fault.onset).num_seconds());
        // Reported as a symptom, linked under another finding (its cause's).
        let under = linked
            .get(&(t.kind, t.service.clone(), t.operation.clone()))
            .filter(|at| **at > fault.onset)
            .map_or("never".to_owned(), |at| format!("{} s", (*at - fault.onset).num_seconds()));
        println!(
            "  injected {} on {} {} at {}: first reported {} after its onset (linked under another finding: {under}); first finding on {origin}: {}",
            t.kind,
            t.service,
            t.operation,
            fault.onset,
            hit.map_or("never".to_owned(), after),
            any.map_or("none".to_owned(), |f| format!("{} {} {} after", f.kind, f.operation, after(f))),
        );
    }
}
