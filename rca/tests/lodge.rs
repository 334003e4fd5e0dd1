//! Localization on the lodging system (`fixtures/lodge/`): Flask services
//! instrumented by the official OpenTelemetry libraries, recorded under load
//! with faults injected for real (`fixtures/lodge/record.py`). Each fault is
//! opened as an incident from its start to its end, against the quiet minutes
//! before it, and the top suspect must be the faulty service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use andon_ingest::{IngestConfig, Ingestor};
use andon_model::clock::SystemClock;
use andon_model::{Tenant, TimeWindow};
use andon_rca::localize::{LocalizeLimits, Scope, localize};
use andon_store::{Durability, QueryEngine, QueryLimits, Store, StoreConfig};
use chrono::{DateTime, Duration, Utc};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Truth {
    faults: Vec<Fault>,
}

#[derive(Debug, Deserialize)]
struct Fault {
    kind: String,
    service: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

#[test]
fn every_fault_of_the_lodging_system_is_localized_to_its_service() {
    every_fault_is_localized_to_its_service("recording");
}

/// A release of `rates` whose quotes are wrong: no span slows or fails, and
/// the version new in the incident's traces is the suspect.
#[test]
fn a_release_that_returns_wrong_values_is_localized_to_its_service() {
    every_fault_is_localized_to_its_service("recording/release");
}

fn every_fault_is_localized_to_its_service(recording: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/lodge").join(recording);
    let truth: Truth = serde_json::from_slice(&std::fs::read(dir.join("truth.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path());
    cfg.durability = Durability::None;
    cfg.retention = None;
    let store = Store::open(cfg).unwrap();
    let tenant = Tenant::default_tenant();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let file = std::fs::File::open(dir.join("lodge.otlp.jsonl.gz")).unwrap();
    for (n, line) in std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines().enumerate() {
        let req: ExportTraceServiceRequest = serde_json::from_str(&line.unwrap()).unwrap();
        rt.block_on(ingestor.export(&tenant, req)).unwrap();
        if n % 50 == 49 {
            store.flush().unwrap();
        }
    }
    store.flush().unwrap();
    let engine = QueryEngine::new(store, QueryLimits::default(), 2).unwrap();
    let mut misses = Vec::new();
    for f in &truth.faults {
        let baseline = TimeWindow { start: f.start - Duration::seconds(100), end: f.start - Duration::seconds(5) };
        let incident = TimeWindow { start: f.start, end: f.end };
        let (loc, _) = rt
            .block_on(localize(
                &engine,
                &tenant,
                &baseline,
                &incident,
                &Scope::default(),
                None,
                &LocalizeLimits::default(),
            ))
            .unwrap();
        let top: Vec<String> = loc
            .suspects
            .iter()
            .take(3)
            .map(|s| format!("{} {} {:?} {:.2}", s.service, s.operation, s.cause, s.score))
            .collect();
        eprintln!("{} in {}: {top:?}", f.kind, f.service);
        if loc.suspects.first().map(|s| s.service.as_str()) != Some(f.service.as_str()) {
            misses.push(format!("{} in {}: {top:?}", f.kind, f.service));
        }
    }
    assert!(misses.is_empty(), "{misses:#?}");
}
