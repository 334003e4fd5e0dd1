//! Root-cause localization on the Nezha Online Boutique development set
//! (`../shared/data/nezha-ob/`), scored the way a user runs it: the release
//! `andon serve`, every fault's traces and the fault-free recording imported
//! with `andon import` into that one server, and one incident per fault opened
//! through `POST /api/v1/incidents` from the injection to 180 s after it. The
//! baseline is the data before the injection when there is at least 30 s of
//! it, else the fault-free recording nearest in time. Nothing is set per fault.
//!
//! AC@k is the share of faults whose labelled service is among the first k
//! distinct services of the incident's `suspects[]`.
//!
//! `cargo bench -p andon-tests --bench nezha_api [-- DATA_DIR]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use andon_tests::{Server, andon_bin};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
struct Label {
    id: String,
    fault_type: String,
    root_cause_service: String,
    inject_time_utc: DateTime<Utc>,
    data_start_utc: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct FaultFree {
    file: String,
    data_start_utc: DateTime<Utc>,
    data_end_utc: DateTime<Utc>,
}

const INCIDENT_SECS: i64 = 180;
const MIN_BASELINE_SECS: i64 = 30;
const LATENCY: [&str; 3] = ["cpu_consumed", "cpu_contention", "network_delay"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let dir = args.first().map(PathBuf::from).unwrap_or_else(|| andon_tests::shared_dir().join("data/nezha-ob"));
    let labels: Vec<Label> = serde_json::from_slice(&std::fs::read(dir.join("labels.json")).unwrap()).unwrap();
    let fault_free: Vec<FaultFree> =
        serde_json::from_slice(&std::fs::read(dir.join("baselines.json")).unwrap()).unwrap();
    let data = tempfile::tempdir().unwrap();
    // Continuous detection off: only the incidents opened here run.
    let server = Server::start_with_env(
        data.path(),
        &[("ANDON_STORAGE_DURABILITY", "none"), ("ANDON_ANALYSIS_INTERVAL_SECS", "0")],
    );
    let mut files: Vec<PathBuf> =
        labels.iter().map(|l| dir.join("traces").join(format!("{}.otlp.jsonl.gz", l.id))).collect();
    files.extend(fault_free.iter().map(|f| dir.join(&f.file)));
    let out = Command::new(andon_bin())
        .arg("import")
        .args(&files)
        .args(["--endpoint", &format!("http://{}", server.http)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());

    let mut ranks: BTreeMap<String, Vec<Option<usize>>> = BTreeMap::new();
    println!("| fault | type | labelled | baseline | top 3 suspect services | rank |");
    println!("|---|---|---|---|---|---|");
    for l in &labels {
        let before = (l.inject_time_utc - l.data_start_utc).num_seconds();
        let (b0, b1, which) = if before >= MIN_BASELINE_SECS {
            (l.data_start_utc, l.inject_time_utc, format!("{before} s before"))
        } else {
            let f = fault_free
                .iter()
                .min_by_key(|f| (f.data_start_utc - l.inject_time_utc).num_seconds().abs())
                .expect("a fault-free recording");
            (f.data_start_utc, f.data_end_utc + Duration::seconds(1), "fault-free recording".to_owned())
        };
        let (status, inc) = server.post_json(
            "/api/v1/incidents",
            &json!({
                "start": l.inject_time_utc,
                "end": l.inject_time_utc + Duration::seconds(INCIDENT_SECS),
                "baseline_start": b0,
                "baseline_end": b1,
                "title": format!("nezha {}", l.id),
            }),
        );
        assert!(status < 300, "{status} {inc}");
        let mut services: Vec<String> = Vec::new();
        for s in inc["suspects"].as_array().into_iter().flatten() {
            let name = s["service"].as_str().unwrap_or_default().to_owned();
            if !services.contains(&name) {
                services.push(name);
            }
        }
        let rank = services.iter().position(|s| *s == l.root_cause_service).map(|i| i + 1);
        ranks.entry(l.fault_type.clone()).or_default().push(rank);
        println!(
            "| {} | {} | {} | {which} | {} | {} |",
            l.id,
            l.fault_type,
            l.root_cause_service,
            services.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
            rank.map_or("-".to_owned(), |r| r.to_string())
        );
    }
    let ac =
        |v: &[Option<usize>], k: usize| v.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / v.len() as f64;
    println!("\n| fault type | faults | AC@1 | AC@3 |\n|---|---|---|---|");
    let mut groups: Vec<(String, Vec<Option<usize>>)> = ranks.clone().into_iter().collect();
    groups.push((
        "latency faults (cpu, network)".into(),
        LATENCY.iter().flat_map(|t| ranks.get(*t).cloned().unwrap_or_default()).collect(),
    ));
    groups.push(("all".into(), ranks.values().flatten().copied().collect()));
    for (name, v) in &groups {
        println!("| {name} | {} | {:.2} | {:.2} |", v.len(), ac(v, 1), ac(v, 3));
    }
}
