//! Every fixtures scenario through the real store and the detectors: each injected
//! fault is found with the right kind, service, operation and segment, and nothing
//! else is reported on its own (consequences may only appear linked under the
//! fault's finding). The clean scenario gives no finding.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use andon_analysis::{AnalysisConfig, Analyzer, PassReport, Windows};
use andon_fixtures::{GroundTruth, generate};
use andon_ingest::{IngestConfig, Ingestor};
use andon_model::clock::SystemClock;
use andon_model::{Finding, Tenant};
use andon_store::{Durability, QueryEngine, QueryLimits, Store, StoreConfig};
use chrono::{DateTime, Duration, Utc};

const HOURS: f64 = 4.0;
const RATE: f64 = 1.0;
const SEED: u64 = 11;

fn end() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-20T20:00:00Z").unwrap().with_timezone(&Utc)
}

pub struct Loaded {
    _dir: tempfile::TempDir,
    pub engine: QueryEngine,
    pub truth: GroundTruth,
    pub rt: tokio::runtime::Runtime,
}

/// Generates a scenario and stores it through the real ingest path.
pub fn load(scenario: &str, hours: f64, rate: f64) -> Loaded {
    let g = generate(scenario, SEED, hours, rate, end()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.durability = Durability::None;
    let store = Store::open(cfg).unwrap();
    let ingestor = Ingestor::new(Arc::new(store.clone()), Arc::new(SystemClock), IngestConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tenant = Tenant::default_tenant();
    for (i, req) in g.requests.into_iter().enumerate() {
        // Denser traffic fills the buffer before 64 requests.
        if store.buffer_full() {
            store.flush().unwrap();
        }
        rt.block_on(ingestor.export(&tenant, req)).unwrap();
        if i % 64 == 63 {
            store.flush().unwrap();
        }
    }
    store.flush().unwrap();
    let engine = QueryEngine::new(store, QueryLimits::default(), 2).unwrap();
    Loaded { _dir: dir, engine, truth: g.truth, rt }
}

/// The windows every scenario is judged with: the first 35% of the run as the
/// baseline (every fault starts at 40% or later), the last 20% as current (every
/// fault has started and every rollout has finished by 80%).
fn windows(truth: &GroundTruth) -> Windows {
    let span = truth.end - truth.start;
    let at = |f: f64| truth.start + Duration::milliseconds((span.num_milliseconds() as f64 * f) as i64);
    Windows { baseline_start: truth.start, baseline_end: at(0.35), split: at(0.8), end: truth.end }
}

fn analyze(l: &Loaded, w: Windows) -> PassReport {
    let analyzer = Analyzer::new(l.engine.clone(), AnalysisConfig::default()).unwrap();
    l.rt.block_on(analyzer.pass(&Tenant::default_tenant(), w)).unwrap()
}

fn describe(f: &Finding) -> String {
    format!(
        "{} {} {} {:?} p={:.2e} effect={} linked={:?}\n    {}",
        f.kind,
        f.service,
        f.operation,
        f.segment,
        f.p_value,
        f.effect,
        f.evidence.linked.iter().map(|l| format!("{} {} {}", l.kind, l.service, l.operation)).collect::<Vec<_>>(),
        f.summary
    )
}

/// (true positives, false positives, false negatives) of one scenario, with
/// every mismatch explained.
fn score(truth: &GroundTruth, findings: &[Finding]) -> (usize, usize, usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut matched = vec![false; findings.len()];
    let mut tp = 0;
    for fault in &truth.faults {
        let t = &fault.target;
        let hit = findings.iter().position(|f| {
            f.kind == t.kind && f.service == t.service && f.operation == t.operation && f.segment == t.segment
        });
        match hit {
            Some(i) => {
                matched[i] = true;
                tp += 1;
            }
            None => problems.push(format!("missed {} {} {} {:?}", t.kind, t.service, t.operation, t.segment)),
        }
    }
    let fp = matched.iter().filter(|m| !**m).count();
    for (f, m) in findings.iter().zip(&matched) {
        if !m {
            problems.push(format!("unexpected {}", describe(f)));
        }
    }
    (tp, fp, truth.faults.len() - tp, problems)
}

fn check(scenario: &str) -> (Loaded, PassReport) {
    let l = load(scenario, HOURS, RATE);
    let report = analyze(&l, windows(&l.truth));
    let (_, _, _, problems) = score(&l.truth, &report.findings);
    let all: Vec<String> = report.findings.iter().map(describe).collect();
    assert!(problems.is_empty(), "{scenario}: {problems:#?}\nall findings:\n{}", all.join("\n"));
    (l, report)
}

fn finding<'a>(r: &'a PassReport, kind: &str) -> &'a Finding {
    r.findings.iter().find(|f| f.kind.as_str() == kind).unwrap()
}

#[test]
fn latency_is_blamed_on_the_slow_leaf_and_its_deploy() {
    let (l, r) = check("latency");
    let f = finding(&r, "latency_regression");
    let truth = &l.truth.faults[0];
    let change = f.change.as_ref().expect("attributed to the pricing deploy");
    let want = truth.change.as_ref().unwrap();
    assert_eq!((change.service.as_str(), change.version.as_str()), (want.service.as_str(), want.version.as_str()));
    assert_eq!(change.commit.as_deref(), Some(want.commit.as_str()));
    assert_eq!(change.pr, Some(want.pr));
    // The callers waiting on pricing are linked under it, not reported.
    assert!(f.evidence.linked.iter().any(|x| x.service == "frontend"), "{:?}", f.evidence.linked);
    assert!(f.effect > 4.0 && f.effect < 10.0, "the injected factor is 7: {}", f.effect);
    // The new version against the one it replaced says the same.
    let v = &f.evidence.details["version_comparison"];
    assert_eq!(v["new"], "7.4.0");
    assert!(v["effect"].as_f64().unwrap() > 4.0 && v["p_value"].as_f64().unwrap() < 1e-6, "{v}");
    let onset = f.evidence.onset.expect("an onset");
    assert!((onset - truth.onset).num_minutes().abs() <= 15, "onset {onset} vs {}", truth.onset);
    assert_eq!(f.evidence.exemplar_trace_ids.len(), 5);
    assert!(f.p_value < 1e-6);
}

#[test]
fn error_rate_regression_is_found_on_the_failing_service() {
    let (l, r) = check("errors");
    let f = finding(&r, "error_rate_regression");
    let rate = f.current["error_rate"].as_f64().unwrap();
    assert!((0.06..0.13).contains(&rate), "injected 9%: {rate}");
    assert_eq!(f.change.as_ref().map(|c| c.version.as_str()), Some("2.8.0"));
    assert!(l.truth.faults[0].symptoms.iter().any(|s| f.evidence.linked.iter().any(|x| x.service == s.service)));
}

#[test]
fn android_retries_are_found_in_the_android_segment() {
    let (_, r) = check("retry");
    let f = finding(&r, "retry");
    assert!(f.change.is_none(), "no deploy caused it: {:?}", f.change);
    assert!(f.evidence.details["automatic_share"].as_f64().unwrap() > 0.5);
}

#[test]
fn mobile_drop_off_is_found_at_the_payment_step() {
    let (_, r) = check("drop-off");
    let f = finding(&r, "drop_off");
    let cause = f.evidence.cause.as_ref().expect("the failures start in payments");
    assert_eq!((cause.service.as_str(), cause.operation.as_str()), ("payments", "POST /v1/payments/authorize"));
    assert_eq!(f.change.as_ref().map(|c| c.version.as_str()), Some("3.5.0"));
}

#[test]
fn silent_recovery_is_found_in_eu_west_1() {
    check("silent-recovery");
}

#[test]
fn mixed_faults_are_each_found_once() {
    check("mixed");
}

#[test]
fn all_five_faults_are_found_together() {
    check("all");
}

#[test]
fn a_clean_day_gives_no_finding() {
    let l = load("clean", 24.0, 0.25);
    let cfg = AnalysisConfig::default();
    // A backtest of the day, across both harmless deploys: the passes
    // continuous detection would have run, spaced out as `/api/v1/analyze`
    // spaces them (each judging its 30 minutes against the 3 hours before).
    let passes = Windows::replay(&cfg, l.truth.start + Duration::hours(3), l.truth.end, None);
    assert!(passes.len() >= 40, "{} passes", passes.len());
    let mut found = Vec::new();
    for w in passes {
        let r = analyze(&l, w);
        found.extend(r.findings.iter().map(|f| format!("{} (pass ending {})", describe(f), w.end)));
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The passes continuous detection runs once a minute (30-minute windows, a
/// 3-hour baseline), from four minutes before `fault`'s first minute to three
/// after: nothing is reported before its onset (asserted), and the first pass
/// that reports its kind on its service gives (pass end, finding, every
/// finding of that pass).
fn first_continuous_report(
    l: &Loaded,
    fault: &andon_fixtures::TruthFault,
) -> Option<(DateTime<Utc>, Finding, Vec<String>)> {
    let analyzer = Analyzer::new(l.engine.clone(), AnalysisConfig::default()).unwrap();
    let minute = Duration::minutes(1);
    let first = andon_analysis::floor_minute(fault.onset);
    for k in -4..=3 {
        let end = first + minute * k;
        let w = Windows::before(end - Duration::minutes(30), end, 3 * 3600);
        let r = l.rt.block_on(analyzer.continuous(&Tenant::default_tenant(), w, None)).unwrap();
        let all: Vec<String> = r.findings.iter().map(describe).collect();
        if end <= fault.onset {
            assert!(all.is_empty(), "nothing to find before the fault, pass ending {end}: {all:#?}");
            continue;
        }
        if let Some(f) = r.findings.iter().find(|f| f.kind == fault.target.kind && f.service == fault.target.service) {
            return Some((end, f.clone(), all));
        }
    }
    None
}

#[test]
fn a_slow_release_is_reported_by_the_first_continuous_pass_after_its_first_instance_switches() {
    // Two hours at 2 sessions/s: pricing 7.4.0 starts rolling out 72 minutes
    // in, one instance of six at a time over 12 minutes. A pass's last minute
    // is judged against the minutes before its baseline's end, 30 minutes
    // earlier: 42 of them here, past the 30 it needs.
    let l = load("latency", 2.0, 2.0);
    let fault = &l.truth.faults[0];
    let (end, f, all) = first_continuous_report(&l, fault).expect("reported within three minutes of the release");
    assert!(end - fault.onset <= Duration::seconds(120), "first reported by the pass ending {end}, {}", fault.onset);
    assert_eq!(f.operation, fault.target.operation, "{all:#?}");
    // Seen first in the release (or in the whole operation), it is the same
    // finding as the whole window's account once the release is rolled out.
    assert_eq!(f.fingerprint, Finding::fingerprint_of(f.kind, &f.service, &f.operation, &BTreeMap::new()), "{all:#?}");
    assert!(f.segment.keys().all(|k| k == "service.version"), "{:?}", f.segment);
    assert_eq!(f.window.end - f.window.start, Duration::minutes(1), "found in the pass's last minute");
    assert!(f.effect > 2.0, "the injected factor is 7: {}", f.effect);
    // Every caller of pricing waits on it: none is reported on its own.
    assert_eq!(all.len(), 1, "{all:#?}");
}

#[test]
fn a_retry_storm_is_reported_by_the_first_continuous_pass_after_it_starts() {
    // Two hours at 3 sessions/s: from 72 minutes in, a rate limiter rejects
    // 45% of Android's add-to-cart calls and the app resends them. The
    // pass's last minute is judged against the minutes before its baseline's
    // end (42 here): how much the share of sessions retrying moves from one
    // minute to the next.
    let l = load("retry", 2.0, 3.0);
    let fault = &l.truth.faults[0];
    let (end, f, all) = first_continuous_report(&l, fault).expect("reported within three minutes of the onset");
    eprintln!("retries first reported by the pass ending {}s after the onset", (end - fault.onset).num_seconds());
    assert!(end - fault.onset <= Duration::seconds(120), "first reported by the pass ending {end}, {}", fault.onset);
    assert_eq!(f.operation, fault.target.operation, "{all:#?}");
    // A minute says that the operation broke, not for whom: its account is of
    // the whole operation, which the whole window's Android account revises.
    assert!(f.segment.is_empty() || f.segment == fault.target.segment, "{:?}", f.segment);
    assert_eq!(f.window.end - f.window.start, Duration::minutes(1), "found in the pass's last minute");
    assert!(f.evidence.details.contains_key("windows_compared"), "judged against the minutes before: {f:?}");
    // The 503s behind the retries are the same problem, not a second finding:
    // the whole window's account of them (Android's error rate) is linked
    // under the retries.
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        f.evidence.linked.iter().any(|l| l.kind.as_str() == "error_rate_regression" && l.operation == f.operation),
        "{all:#?}"
    );
}

#[test]
fn a_mobile_drop_off_is_reported_by_a_last_minute_once_the_step_horizon_has_passed() {
    // Two hours at 3 sessions/s: payments 3.5.0 rolls out from 72 minutes
    // in and fails most mobile card authorizations; mobile sessions abandon
    // at the payment step. Sessions leaving are known only once they had the
    // step's horizon to go on (twice the baseline's 95th percentile from
    // payment to placing the order), so a pass's last minute holds the
    // sessions whose horizon ended in it, judged against the minutes before
    // the baseline's end and corrected for the minutes a day judges. The
    // 30-minute window alone needs more of the rollout (the pass after).
    let l = load("drop-off", 2.0, 3.0);
    let fault = l.truth.faults.iter().find(|f| f.target.kind.as_str() == "drop_off").unwrap();
    let analyzer = Analyzer::new(l.engine.clone(), AnalysisConfig::default()).unwrap();
    let tenant = Tenant::default_tenant();
    let target = (fault.target.service.as_str(), fault.target.operation.as_str());
    // The drop-off, reported on its own or linked under its cause's finding.
    let drop_off_in = |r: &PassReport| -> Option<String> {
        r.findings.iter().find_map(|f| {
            if f.kind.as_str() == "drop_off" && (f.service.as_str(), f.operation.as_str()) == target {
                return Some(describe(f));
            }
            let linked = f
                .evidence
                .linked
                .iter()
                .any(|l| l.kind.as_str() == "drop_off" && (l.service.as_str(), l.operation.as_str()) == target);
            linked.then(|| format!("linked under {}", describe(f)))
        })
    };
    let first = andon_analysis::floor_minute(fault.onset);
    let mut reported = None;
    for k in -2..=10 {
        let end = first + Duration::minutes(k);
        let w = Windows::before(end - Duration::minutes(30), end, 3 * 3600);
        let r = l.rt.block_on(analyzer.continuous(&tenant, w, None)).unwrap();
        let drop_offs: Vec<&Finding> = r.findings.iter().filter(|f| f.kind.as_str() == "drop_off").collect();
        if end <= fault.onset {
            assert!(drop_offs.is_empty(), "no drop-off before the fault, pass ending {end}: {drop_offs:#?}");
            continue;
        }
        if let Some(how) = drop_off_in(&r) {
            reported = Some((end, w, how));
            break;
        }
    }
    let (end, w, how) = reported.expect("a drop-off reported within ten minutes of the release");
    eprintln!(
        "drop-off first reported by the pass ending {}s after the onset: {how}",
        (end - fault.onset).num_seconds()
    );
    // The rollout takes 12 minutes: the pass's 30-minute window alone had not
    // seen enough of it. Its last minute had.
    let whole = l.rt.block_on(analyzer.pass(&tenant, w)).unwrap();
    assert_eq!(drop_off_in(&whole), None, "the whole window alone, pass ending {end}");
    assert!(end - fault.onset <= Duration::minutes(9), "first reported by the pass ending {end}, {}", fault.onset);
}

#[test]
fn continuous_passes_over_clean_traffic_report_nothing_from_their_last_minute_either() {
    use andon_analysis::recorder::{RecorderLimits, RunsDb};
    // Two hours of clean traffic at 3 sessions/s (the retry storm's rate),
    // with a harmless release 90 minutes in. Every third minute of the last
    // 48 (passes with at least the 30 minutes of history a last minute is
    // judged against): neither the whole window nor its last minute reports
    // anything, the release included.
    let l = load("clean", 2.0, 3.0);
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(RunsDb::open(&dir.path().join("runs.db"), RecorderLimits::default()).unwrap());
    let analyzer = Analyzer::new(l.engine.clone(), AnalysisConfig::default()).unwrap().recording(Arc::clone(&runs));
    let last = andon_analysis::floor_minute(l.truth.end);
    let (mut found, mut judged) = (Vec::new(), 0);
    for k in 0..16 {
        let end = last - Duration::minutes(3 * k);
        let w = Windows::before(end - Duration::minutes(30), end, 3 * 3600);
        let r = l.rt.block_on(analyzer.continuous(&Tenant::default_tenant(), w, None)).unwrap();
        found.extend(r.findings.iter().map(|f| format!("{} (pass ending {end})", describe(f))));
        // The pass's steps went to the recorder: its latest run.
        let (_, run) = runs.list(None, 1).unwrap().pop().unwrap();
        let (_, steps) = runs.recorded(None, &run.id).unwrap().unwrap();
        let tests = |name: &str| {
            steps.iter().find(|s| s.step.name == name).and_then(|s| s.output.as_ref()?["tests"].as_u64()).unwrap_or(0)
        };
        if tests("last minute: retry tests") > 0
            && tests("last minute: error_rate_regression tests") > 0
            && tests("last minute: drop_off tests") > 0
        {
            judged += 1;
        }
    }
    assert!(found.is_empty(), "{found:#?}");
    assert!(judged >= 12, "the last minute's retries and errors were tested in {judged} passes of 16");
    // Passes after the traffic stops (an exporter that has not sent yet, a
    // collector down, a replay of data that ends): sessions cut off where the
    // data ends had no time to go on that a pass could see, so they are no
    // drop-off, whatever the window and whenever the pass runs.
    let data_end = l.truth.end;
    for window in [10, 30] {
        for after in [20, 100, 200, 400] {
            let end = data_end + Duration::seconds(after);
            let w = Windows::before(end - Duration::minutes(window), end, 1800);
            let r = l.rt.block_on(analyzer.continuous(&Tenant::default_tenant(), w, Some(end))).unwrap();
            found.extend(
                r.findings.iter().map(|f| format!("{} ({window}-minute pass {after}s after the traffic)", describe(f))),
            );
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// Precision and recall over every scenario, printed for the issue note; run with
/// `cargo test -p andon-analysis --test accuracy -- --ignored --nocapture`.
#[test]
#[ignore]
fn precision_and_recall() {
    let mut totals = BTreeMap::new();
    for s in ["clean", "latency", "errors", "retry", "drop-off", "silent-recovery", "mixed", "all"] {
        let l = load(s, HOURS, RATE);
        let r = analyze(&l, windows(&l.truth));
        let (tp, fp, fn_, problems) = score(&l.truth, &r.findings);
        println!("{s}: tp={tp} fp={fp} fn={fn_} tests={} pass={:?} {problems:?}", r.tests, r.elapsed);
        let e = totals.entry("all").or_insert((0, 0, 0));
        e.0 += tp;
        e.1 += fp;
        e.2 += fn_;
    }
    let (tp, fp, fn_) = totals["all"];
    println!(
        "precision {:.3} recall {:.3} (tp {tp}, fp {fp}, fn {fn_})",
        tp as f64 / (tp + fp).max(1) as f64,
        tp as f64 / (tp + fn_).max(1) as f64
    );
}

/// A recorded pass keeps how it got to its findings, step by step: each
/// detector's queries, the candidates selected, where each one's trouble
/// starts, and how they were grouped. It replays without a difference; an
/// analyzer judging differently is caught at the step where it diverges; and
/// steps appended after the pass (its tickets) are not replayed.
#[test]
fn a_recorded_pass_keeps_its_steps_and_replays_them() {
    use andon_analysis::recorder::{RecorderLimits, RunsDb};
    let l = load("errors", HOURS, RATE);
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(RunsDb::open(&dir.path().join("runs.db"), RecorderLimits::default()).unwrap());
    let config = AnalysisConfig::default();
    let analyzer = Analyzer::new(l.engine.clone(), config.clone()).unwrap().recording(Arc::clone(&runs));
    let t = Tenant::default_tenant();
    let r = l.rt.block_on(analyzer.pass(&t, windows(&l.truth))).unwrap();
    assert!(r.steps.is_empty(), "the steps went to the recorder");
    let f = finding(&r, "error_rate_regression");
    let run = f.run_id.clone().expect("the finding names its run");
    let (_, steps) = runs.recorded(None, &run).unwrap().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.step.name.as_str()).collect();
    for want in [
        "windows",
        "error_rate_regression tests",
        "latency_regression tests",
        "select",
        "attribute",
        "cluster",
        "detect",
    ] {
        assert!(names.contains(&want), "no {want} step in {names:?}");
    }
    let step = |name: &str| steps.iter().find(|s| s.step.name == name).unwrap();
    // Each detector's step holds the SQL it ran and the rows it read.
    let errors = step("error_rate_regression tests");
    let sql = errors.input.as_ref().unwrap()["sql"].as_array().unwrap();
    assert!(!sql.is_empty() && sql.iter().all(|q| q.as_str().unwrap().to_ascii_uppercase().contains("SELECT")));
    assert_eq!(errors.output.as_ref().unwrap()["rows"].as_array().unwrap().len(), sql.len());
    assert_eq!(errors.step.parents, vec![step("windows").step.id.clone()]);
    // The fault's subject is among the candidates selected, and the
    // attribution says where its failures start.
    let target = &l.truth.faults[0].target;
    let chosen = &step("select").output.as_ref().unwrap()["candidates"];
    assert!(
        chosen.as_array().unwrap().iter().any(|c| c["kind"] == target.kind.as_str()
            && c["service"] == target.service.as_str()
            && c["operation"] == target.operation.as_str()),
        "{chosen:#}"
    );
    let attributed = &step("attribute").output.as_ref().unwrap()["candidates"];
    let cause = f
        .evidence
        .cause
        .as_ref()
        .map_or((f.service.as_str(), f.operation.as_str()), |c| (c.service.as_str(), c.operation.as_str()));
    assert!(
        attributed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["cause"]["service"] == cause.0 && c["cause"]["operation"] == cause.1),
        "{attributed:#}"
    );
    assert_eq!(step("attribute").step.parents, vec![step("select").step.id.clone()]);
    assert_eq!(step("detect").step.parents, vec![step("cluster").step.id.clone()]);

    // Replayed: every pass step again, with no difference.
    let pass_steps = steps.iter().filter(|s| s.step.name.ends_with(" tests")).count() + 3;
    let ticket = andon_model::LoggedStep {
        kind: "decision".into(),
        name: "ticket".into(),
        input: serde_json::json!({}),
        output: serde_json::json!({"ticket": "tk-1"}),
        summary: "drafted".into(),
    };
    runs.append(&t, &run, ticket).unwrap().expect("the run takes an appended step");
    let (_, steps) = runs.recorded(None, &run).unwrap().unwrap();
    assert_eq!(
        steps.last().unwrap().step.parents,
        vec![step("detect").step.id.clone()],
        "appended after its last step"
    );
    let replay = l.rt.block_on(analyzer.replay_recorded(&t, &run, &steps));
    assert!(replay.differences.is_empty(), "{:#?}", replay.differences);
    assert_eq!(replay.replayed, pass_steps + 1);

    // An analyzer with a stricter false-discovery rate diverges at the
    // selection, and the replay says so there.
    let strict = AnalysisConfig { fdr: config.fdr / 10.0, ..config };
    let strict = Analyzer::new(l.engine.clone(), strict).unwrap();
    let replay = l.rt.block_on(strict.replay_recorded(&t, &run, &steps));
    let select = replay.differences.iter().find(|d| d.name == "select").unwrap_or_else(|| panic!("{replay:#?}"));
    assert!(select.reason.contains("input.fdr"), "{select:?}");
}
