//! Localization on real traces: the Nezha Online Boutique development set
//! (`../shared/data/nezha-ob/`), scored against its labels.
//!
//! Each fault's traces go into a fresh store through the real ingest path. An
//! incident is opened on the minutes after the injection, with the fault-free
//! minutes before it as baseline, and the ranked suspects' services are scored:
//! AC@k is the share of faults whose labelled service is among the first k
//! distinct suspect services, Avg@5 the mean of AC@1..AC@5. The labels are read
//! only to score, after the ranking is made, and nothing is tuned per fault.
//!
//! With `--user`, it is scored the way a user runs it: every fault in one
//! store, incidents of a fixed 180 s from the injection, and a fault-free
//! recording as baseline where less than 30 s precede the injection.
//!
//! `cargo bench -p andon-rca --bench nezha [-- [--user] DATA_DIR]`

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use andon_ingest::{IngestConfig, Ingestor};
use andon_model::clock::SystemClock;
use andon_model::{Tenant, TimeWindow};
use andon_rca::localize::{LocalizeLimits, Scope, localize};
use andon_store::{Durability, QueryEngine, QueryLimits, Store, StoreConfig};
use chrono::{DateTime, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Label {
    id: String,
    fault_type: String,
    root_cause_service: String,
    inject_time_utc: DateTime<Utc>,
    data_start_utc: DateTime<Utc>,
    data_end_utc: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct FaultFree {
    file: String,
    data_start_utc: DateTime<Utc>,
    data_end_utc: DateTime<Utc>,
}

/// Imports one OTLP JSON-lines file through the real ingest path.
fn import(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let tenant = Tenant::default_tenant();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(std::fs::File::open(path)?));
    rt.block_on(async {
        for line in reader.lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let req: ExportTraceServiceRequest = serde_json::from_str(&line)?;
            ingestor.export(&tenant, req).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    store.flush()?;
    Ok(())
}

fn open_store(dir: &std::path::Path) -> Result<Store, Box<dyn std::error::Error>> {
    let mut cfg = StoreConfig::new(dir);
    // A store kept across runs replays what the receivers logged.
    cfg.reconvert = Some(std::sync::Arc::new(andon_ingest::OtlpReconvert));
    cfg.durability = Durability::None;
    cfg.retention = None;
    Ok(Store::open(cfg)?)
}

/// The least data before an injection that serves as its baseline; with less,
/// a fault-free recording does.
const MIN_BASELINE_SECS: i64 = 30;
/// The incident window a user opens: from the alert (the injection), this long.
const INCIDENT_SECS: i64 = 180;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    // `--user`: the way a user runs it: every fault (and the fault-free
    // recording) in one store, fixed incident windows of INCIDENT_SECS from the
    // injection, the data before the injection as baseline when there is at
    // least MIN_BASELINE_SECS of it, else the fault-free recording of that day
    // (or the nearest day that has one).
    let user = std::env::args().any(|a| a == "--user");
    let dir = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nezha-ob"));
    let labels: Vec<Label> = serde_json::from_slice(&std::fs::read(dir.join("labels.json"))?)?;
    let fault_free: Vec<FaultFree> = serde_json::from_slice(&std::fs::read(dir.join("baselines.json"))?)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let tenant = Tenant::default_tenant();
    // (fault type) -> ranks (1-based) of the labelled service, None when absent.
    let mut ranks: BTreeMap<String, Vec<Option<usize>>> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut rca_ms = Vec::new();
    let shared_dir = tempfile::tempdir()?;
    let shared = if user {
        let store = open_store(shared_dir.path())?;
        for label in &labels {
            import(&rt, &store, &dir.join("traces").join(format!("{}.otlp.jsonl.gz", label.id)))?;
        }
        for f in &fault_free {
            import(&rt, &store, &dir.join(&f.file))?;
        }
        Some(QueryEngine::new(store, QueryLimits::default(), 2)?)
    } else {
        None
    };
    for label in &labels {
        let tmp = tempfile::tempdir()?;
        let engine = match &shared {
            Some(e) => e.clone(),
            None => {
                let store = open_store(tmp.path())?;
                import(&rt, &store, &dir.join("traces").join(format!("{}.otlp.jsonl.gz", label.id)))?;
                QueryEngine::new(store, QueryLimits::default(), 2)?
            }
        };
        let (baseline, incident) = if user {
            let before = (label.inject_time_utc - label.data_start_utc).num_seconds();
            let baseline = if before >= MIN_BASELINE_SECS {
                TimeWindow { start: label.data_start_utc, end: label.inject_time_utc }
            } else {
                let f = fault_free
                    .iter()
                    .min_by_key(|f| (f.data_start_utc - label.inject_time_utc).num_seconds().abs())
                    .ok_or("no fault-free recording")?;
                TimeWindow { start: f.data_start_utc, end: f.data_end_utc + chrono::Duration::seconds(1) }
            };
            let incident = TimeWindow {
                start: label.inject_time_utc,
                end: label.inject_time_utc + chrono::Duration::seconds(INCIDENT_SECS),
            };
            (baseline, incident)
        } else {
            // The incident is what an on-call engineer would open: from the
            // alert (the injection) to now, against the quiet minutes before it.
            (
                TimeWindow { start: label.data_start_utc, end: label.inject_time_utc },
                TimeWindow { start: label.inject_time_utc, end: label.data_end_utc + chrono::Duration::seconds(1) },
            )
        };
        let t = Instant::now();
        let (loc, _) = rt.block_on(localize(
            &engine,
            &tenant,
            &baseline,
            &incident,
            &Scope::default(),
            None,
            &LocalizeLimits::default(),
        ))?;
        rca_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let mut services: Vec<&str> = Vec::new();
        for s in &loc.suspects {
            if !services.contains(&s.service.as_str()) {
                services.push(&s.service);
            }
        }
        let rank = services.iter().position(|s| *s == label.root_cause_service).map(|i| i + 1);
        ranks.entry(label.fault_type.clone()).or_default().push(rank);
        let top = loc.suspects.first();
        rows.push(format!(
            "| {} | {} | {} | {} | {} | {} |",
            label.id,
            label.fault_type,
            label.root_cause_service,
            services.iter().take(3).copied().collect::<Vec<_>>().join(", "),
            rank.map_or("-".to_owned(), |r| r.to_string()),
            top.map(|s| format!("{:?} {:.2}", s.cause, s.score)).unwrap_or_default(),
        ));
        if std::env::var_os("NEZHA_VERBOSE").is_some() {
            for s in loc.suspects.iter().take(5) {
                eprintln!("  {} {} {:?} {:.2}: {}", s.service, s.operation, s.cause, s.score, s.reason);
            }
        }
    }
    println!("mode: {}\n", if user { "the user's way (one store, 180 s windows)" } else { "a fresh store per fault" });
    println!("| fault | type | labelled | top 3 suspect services | rank | top cause, score |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!("| fault type | faults | AC@1 | AC@3 | Avg@5 |");
    println!("|---|---|---|---|---|");
    let ac =
        |v: &[Option<usize>], k: usize| v.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / v.len() as f64;
    let avg5 = |v: &[Option<usize>]| (1..=5).map(|k| ac(v, k)).sum::<f64>() / 5.0;
    let mut groups: Vec<(String, Vec<Option<usize>>)> = ranks.clone().into_iter().collect();
    let latency: Vec<Option<usize>> = ["cpu_consumed", "cpu_contention", "network_delay"]
        .iter()
        .flat_map(|t| ranks.get(*t).cloned().unwrap_or_default())
        .collect();
    groups.push(("latency faults (cpu, network)".to_owned(), latency));
    groups.push(("all".to_owned(), ranks.values().flatten().copied().collect()));
    for (name, v) in &groups {
        println!("| {name} | {} | {:.2} | {:.2} | {:.2} |", v.len(), ac(v, 1), ac(v, 3), avg5(v));
    }
    rca_ms.sort_by(f64::total_cmp);
    println!(
        "\nlocalization time per fault: median {:.0} ms, max {:.0} ms",
        rca_ms[rca_ms.len() / 2],
        rca_ms[rca_ms.len() - 1]
    );
    Ok(())
}
