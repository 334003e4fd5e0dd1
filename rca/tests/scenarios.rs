//! The RCA on the simulated shop, through the real ingest path and store: the
//! deploy-latency scenario blames the slow leaf (not its callers), names the
//! change and its PR and holds the perf gate's claim against production; the
//! error-rate scenario blames the service where failures start; a quiet run
//! blames nothing. The report's Markdown is a golden file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use andon_fixtures::{GroundTruth, generate};
use andon_ingest::{IngestConfig, Ingestor};
use andon_model::clock::SystemClock;
use andon_model::{Discrepancy, GateKind, Incident, SuspectCause, Tenant};
use andon_rca::{ChangesDb, Hints, IncidentsDb, OpenIncident, Rca, report};
use andon_store::{Durability, QueryEngine, QueryLimits, Store, StoreConfig};
use chrono::{DateTime, Duration, Utc};

struct Loaded {
    _dir: tempfile::TempDir,
    rca: Rca,
    truth: GroundTruth,
    rt: tokio::runtime::Runtime,
}

fn load(scenario: &str, post_changes: bool) -> Loaded {
    let end = DateTime::parse_from_rfc3339("2026-11-20T12:00:00Z").unwrap().with_timezone(&Utc);
    let g = generate(scenario, 7, 2.0, 1.0, end).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.durability = Durability::None;
    cfg.retention = None;
    let store = Store::open(cfg).unwrap();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tenant = Tenant::default_tenant();
    let mut requests = g.requests.into_iter().peekable();
    while requests.peek().is_some() {
        let chunk: Vec<_> = requests.by_ref().take(64).collect();
        rt.block_on(async {
            for req in chunk {
                ingestor.export(&tenant, req).await.unwrap();
            }
        });
        store.flush().unwrap();
    }
    let engine = QueryEngine::new(store, QueryLimits::default(), 2).unwrap();
    let changes = Arc::new(ChangesDb::open(&dir.path().join("andon.db")).unwrap());
    if post_changes {
        for c in &g.truth.changes {
            changes.add(&tenant, c.clone()).unwrap();
        }
    }
    let incidents = Arc::new(IncidentsDb::open(&dir.path().join("andon.db")).unwrap());
    Loaded { _dir: dir, rca: Rca::new(engine, changes, incidents), truth: g.truth, rt }
}

impl Loaded {
    fn at(&self, f: f64) -> DateTime<Utc> {
        let span = self.truth.end - self.truth.start;
        self.truth.start + Duration::milliseconds((span.num_milliseconds() as f64 * f) as i64)
    }

    /// An incident from before the fault to the end, against a quiet baseline.
    fn open(&self) -> Incident {
        let req = OpenIncident {
            start: self.at(0.5),
            end: self.truth.end,
            baseline_start: Some(self.at(0.1)),
            baseline_end: Some(self.at(0.45)),
            service: None,
            title: None,
        };
        self.rt.block_on(self.rca.open(&Tenant::default_tenant(), &req, Hints::default())).unwrap()
    }
}

fn describe(inc: &Incident) -> String {
    serde_json::to_string_pretty(inc).unwrap()
}

#[test]
fn a_slow_leaf_after_a_deploy_is_blamed_with_its_change_and_its_perf_gate() {
    let l = load("latency", true);
    let inc = l.open();
    let fault = &l.truth.faults[0];
    let top = &inc.suspects[0];
    // The leaf, not the callers waiting on it.
    assert_eq!((top.service.as_str(), top.operation.as_str()), ("pricing", "GET /v1/quote"), "{}", describe(&inc));
    assert_eq!(top.cause, SuspectCause::SelfTime);
    assert!(top.score >= 0.6, "{}", describe(&inc));
    for caller in ["checkout", "frontend", "cart"] {
        assert!(
            !inc.suspects.iter().any(|s| s.service == caller && s.score >= 0.1),
            "caller {caller} blamed: {}",
            describe(&inc)
        );
    }
    let waiting = inc.details["waiting_callers"].as_array().unwrap();
    assert!(waiting.iter().any(|c| c == "frontend"), "{waiting:?}");

    // The onset is the rollout start, within a few minutes.
    let sig = inc.signature.as_ref().unwrap();
    let onset = sig.onset.expect("an onset");
    assert!((onset - fault.onset).num_seconds().abs() <= 300, "onset {onset} against {}", fault.onset);
    assert!(sig.incident_value > sig.baseline_value * 2.0, "{sig:?}");

    // The change, its PR, and the perf gate against production.
    let change = inc.change.as_ref().expect("a change");
    let truth_change = fault.change.as_ref().unwrap();
    assert_eq!((change.event.service.as_str(), change.event.version.as_str()), ("pricing", "7.4.0"));
    assert_eq!(change.event.pr, Some(truth_change.pr));
    assert!(change.confidence >= 0.7, "{}", change.why);
    assert!(change.previous_version.is_some(), "{change:?}");
    let perf = inc.gate_analysis.iter().find(|g| g.kind == GateKind::Perf).expect("the perf gate");
    assert_eq!(perf.discrepancy, Discrepancy::EnvironmentOrPayload, "{perf:?}");
    assert!(perf.claimed.contains("+1.5%") && perf.claimed.contains("GET /v1/quote"), "{}", perf.claimed);
    assert!(perf.observed.contains("GET /v1/quote") && perf.observed.contains('%'), "{}", perf.observed);
    assert!(inc.remediation[0].starts_with("Roll back pricing from 7.4.0 to"), "{:?}", inc.remediation);
    assert!(inc.narrative.contains("PR #") && inc.narrative.contains("pricing 7.4.0"), "{}", inc.narrative);

    // Opened again, the first is similar; and its report is a golden file.
    let again = l.open();
    assert_eq!(again.similar_incidents.len(), 1);
    assert_eq!(again.similar_incidents[0].id, inc.id);
    let md = report::markdown(&stable(&inc));
    insta::assert_snapshot!("latency_report", md);
    let html = report::html(&inc);
    assert!(html.contains("<h2>Gate analysis</h2>") && html.contains("pricing"));
}

#[test]
fn a_deploy_inferred_from_spans_is_linked_without_a_posted_change() {
    let l = load("latency", false);
    let inc = l.open();
    let change = inc.change.as_ref().expect("a change from service.version");
    assert!(change.inferred);
    assert_eq!(change.event.version, "7.4.0");
    let truth_change = l.truth.faults[0].change.as_ref().unwrap();
    assert_eq!(change.event.commit.as_deref(), Some(truth_change.commit.as_str()));
    assert_eq!(change.event.pr, Some(truth_change.pr));
    // No gates were reported, so none could catch it.
    assert!(inc.gate_analysis.iter().any(|g| g.discrepancy == Discrepancy::NoSuchGate), "{:?}", inc.gate_analysis);
    // It is now in the lineage.
    let listed = l.rca.changes.list(Some(&Tenant::default_tenant()), &Default::default()).unwrap();
    assert!(listed.iter().any(|(_, c)| c.inferred && c.change.service == "pricing" && c.change.version == "7.4.0"));
}

#[test]
fn failures_are_blamed_where_they_start() {
    let l = load("errors", true);
    let inc = l.open();
    let top = inc.suspects.first().unwrap_or_else(|| panic!("{}", describe(&inc)));
    assert_eq!(
        (top.service.as_str(), top.operation.as_str()),
        ("inventory", "POST /v1/reservations"),
        "{}",
        describe(&inc)
    );
    assert_eq!(top.cause, SuspectCause::Errors);
    let change = inc.change.as_ref().expect("a change");
    assert_eq!((change.event.service.as_str(), change.event.version.as_str()), ("inventory", "2.8.0"));
    let sig = inc.signature.as_ref().unwrap();
    assert_eq!(sig.metric, "error_rate");
    // inventory has no perf or load gate; its tests passed without the failing case.
    assert!(inc.gate_analysis.iter().any(|g| g.discrepancy == Discrepancy::NoSuchGate));
    let tests = inc.gate_analysis.iter().find(|g| g.kind == GateKind::Tests).unwrap();
    assert_eq!(tests.discrepancy, Discrepancy::RouteNotExercised);
    assert!(tests.explanation.contains("OptimisticLockException"), "{}", tests.explanation);
}

#[test]
fn a_quiet_run_blames_nothing() {
    let l = load("clean", true);
    let inc = l.open();
    assert!(inc.change.is_none(), "{}", describe(&inc));
    assert!(inc.suspects.iter().all(|s| s.score < 0.5) || inc.suspects.is_empty(), "{}", describe(&inc));
}

/// The incident with what varies between runs (ids, clocks, timings) fixed,
/// for the golden file.
fn stable(inc: &Incident) -> Incident {
    let mut i = inc.clone();
    i.id = "inc-0000000000000000".into();
    let t = i.window.end;
    i.created_at = t;
    i.updated_at = t;
    for s in &mut i.steps {
        s.at = t;
        s.took_ms = 0;
    }
    for s in &mut i.similar_incidents {
        s.id = "inc-0000000000000000".into();
        s.opened_at = t;
    }
    i
}
