//! Gate analysis: each gate of the implicated change, its claim set beside what
//! production shows, why it missed the fault and what to change.

use andon_model::format::ms;
use andon_model::{ChangeEvent, Discrepancy, FindingKind, Gate, GateAssessment, GateKind, Signature, Verdict};

/// What production shows, for the gates to be held against.
#[derive(Debug, Clone)]
pub struct Observed {
    pub signature: Signature,
    /// The segment the fault is confined to, in words (`browser.mobile=true`), if any.
    pub segment: Option<String>,
    /// The most common exception on the failing operation, if any.
    pub exception: Option<String>,
}

impl Observed {
    fn latency(&self) -> bool {
        self.signature.kind == FindingKind::LatencyRegression
    }

    /// A release that changed neither time nor failures: what it returns is wrong.
    fn release(&self) -> bool {
        self.signature.kind == crate::onset::RELEASE
    }

    /// The change in the metric as a percentage, for latency.
    pub fn delta_pct(&self) -> f64 {
        let s = &self.signature;
        if s.baseline_value > 0.0 { (s.incident_value / s.baseline_value - 1.0) * 100.0 } else { 0.0 }
    }

    pub fn describe(&self) -> String {
        let s = &self.signature;
        let scope = self.segment.as_deref().map(|g| format!(" for {g}")).unwrap_or_default();
        if s.kind == crate::onset::RELEASE {
            return format!(
                "the new version serves {:.0}% of {} in production{scope} (baseline {:.0}%), with no change in its \
                 latency or failures",
                s.incident_value * 100.0,
                s.operation,
                s.baseline_value * 100.0
            );
        }
        if self.latency() {
            format!(
                "p95 {:+.0}% on {} in production{scope} ({} → {})",
                self.delta_pct(),
                s.operation,
                ms(s.baseline_value),
                ms(s.incident_value)
            )
        } else {
            let exc = self.exception.as_deref().map(|e| format!(", mostly {e}")).unwrap_or_default();
            format!(
                "{:.1}% of {} fail in production{scope} (baseline {:.1}%){exc}",
                s.incident_value * 100.0,
                s.operation,
                s.baseline_value * 100.0
            )
        }
    }
}

/// The route part of an operation (`GET /v1/quote` → `/v1/quote`).
fn route(op: &str) -> &str {
    op.split_once(' ').map_or(op, |(_, r)| r)
}

/// Whether the gate says it exercised the operation: `Some(false)` when it names
/// routes but not this one, `None` when it names none.
fn exercised(gate: &Gate, op: &str) -> Option<bool> {
    let text = format!(
        "{} {}",
        gate.summary.as_deref().unwrap_or(""),
        gate.metrics.keys().cloned().collect::<Vec<_>>().join(" ")
    );
    if text.contains(op) || text.contains(route(op)) {
        return Some(true);
    }
    let names_routes = text.split_whitespace().any(|w| w.starts_with('/') && w.len() > 1);
    if names_routes { Some(false) } else { None }
}

fn metric(gate: &Gate, pred: impl Fn(&str) -> bool) -> Option<f64> {
    gate.metrics.iter().find(|(k, _)| pred(k)).map(|(_, v)| *v)
}

fn claimed(gate: &Gate) -> String {
    let summary = gate
        .summary
        .clone()
        .unwrap_or_else(|| gate.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "));
    let verdict = match gate.verdict {
        Verdict::Pass => "passed",
        Verdict::Fail => "failed",
        Verdict::Skipped => "skipped",
        Verdict::NotApplicable => "not applicable",
    };
    if summary.is_empty() { verdict.to_owned() } else { format!("{verdict}: {summary}") }
}

fn assess(gate: &Gate, change: &ChangeEvent, o: &Observed) -> GateAssessment {
    let op = &o.signature.operation;
    let observed = o.describe();
    let mut a = GateAssessment {
        gate: gate.name.clone(),
        kind: gate.kind,
        verdict: Some(gate.verdict),
        claimed: claimed(gate),
        observed,
        discrepancy: Discrepancy::NotApplicable,
        explanation: String::new(),
        recommendation: String::new(),
    };
    if o.release() {
        return assess_release(gate, change, a);
    }
    let relevant = match gate.kind {
        GateKind::Perf => true,
        GateKind::Tests => !o.latency(),
        _ => false,
    };
    if relevant && matches!(gate.verdict, Verdict::Fail | Verdict::Skipped) {
        a.discrepancy = Discrepancy::Overridden;
        a.explanation = format!("{} {} and {} shipped anyway", gate.name, claimed(gate), change.version);
        a.recommendation = format!("make {} blocking for {}", gate.name, change.service);
        return a;
    }
    match gate.kind {
        GateKind::Perf => {
            let delta = metric(gate, |k| k.contains("delta_pct") || k.contains("p95") || k.contains("p99"));
            let threshold = metric(gate, |k| k.contains("threshold") || k.contains("budget"));
            let conditions = gate
                .summary
                .as_deref()
                .and_then(|s| s.split_once('(').map(|(_, c)| c.trim_end_matches(')').to_owned()))
                .or_else(|| gate.summary.as_deref().filter(|s| s.contains("staging")).map(|_| "staging".to_owned()));
            let segment = o.segment.as_deref().map(|g| format!(" and only {g} is affected")).unwrap_or_default();
            match exercised(gate, op) {
                Some(false) => {
                    a.discrepancy = Discrepancy::RouteNotExercised;
                    a.explanation = format!("{} measured other routes; it never ran {op}", gate.name);
                    a.recommendation = format!("add {op} to {}'s scenarios", gate.name);
                }
                _ if !o.latency() => {
                    a.discrepancy = Discrepancy::EnvironmentOrPayload;
                    a.explanation = format!(
                        "{} measures latency; it drove {op} without reproducing the failures production shows",
                        gate.name
                    );
                    a.recommendation =
                        format!("have {} fail on an error-rate budget for {op}, not on latency alone", gate.name);
                }
                ran => {
                    let observed = o.delta_pct();
                    let close = delta.is_some_and(|d| d > 0.0 && observed / d < 3.0);
                    let where_ = if ran == Some(true) {
                        format!("ran {op}")
                    } else {
                        "does not say which routes it ran".to_owned()
                    };
                    if close {
                        a.discrepancy = Discrepancy::ThresholdTooLoose;
                        a.explanation = format!(
                            "{} {where_} and measured {:+.1}%, close to production's {:+.0}%, and passed{}",
                            gate.name,
                            delta.unwrap_or(0.0),
                            observed,
                            threshold.map(|t| format!(" under its {t:.0}% threshold")).unwrap_or_default()
                        );
                        a.recommendation = format!(
                            "tighten {}'s p95 threshold on {op} to below {:.1}%",
                            gate.name,
                            delta.unwrap_or(0.0)
                        );
                    } else {
                        a.discrepancy = Discrepancy::EnvironmentOrPayload;
                        a.explanation = format!(
                            "{} {where_} but measured only {} against production's {:+.0}%: its conditions{} do \
                             not reproduce production's{segment}",
                            gate.name,
                            delta.map_or("no change".to_owned(), |d| format!("{d:+.1}%")),
                            observed,
                            conditions.map(|c| format!(" ({c})")).unwrap_or_default(),
                        );
                        a.recommendation = format!(
                            "run {} on {op} with production-shaped data (replay the incident's exemplar requests{}) \
                             and fail it on a p95 budget",
                            gate.name,
                            o.segment.as_deref().map(|g| format!(", including {g}")).unwrap_or_default()
                        );
                    }
                }
            }
        }
        GateKind::Tests if !o.latency() => {
            a.discrepancy = Discrepancy::RouteNotExercised;
            let exc = o.exception.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            a.explanation = format!("every test passed, so none of them reproduces the failure production shows{exc}");
            a.recommendation = format!("add a test that reproduces the failure of {op}{exc} before fixing it");
        }
        GateKind::Tests => {
            a.explanation = "functional tests assert results, not latency".to_owned();
        }
        GateKind::Security => {
            a.explanation = "a dependency scan does not bear on latency or failure rates".to_owned();
        }
        GateKind::Review | GateKind::Agent => {
            a.explanation =
                format!("{} judges the code, not its cost or failure rate under production traffic", gate.name);
        }
    }
    a
}

/// A release whose spans neither slowed nor failed: only tests that check what
/// it returns could have caught it.
fn assess_release(gate: &Gate, change: &ChangeEvent, mut a: GateAssessment) -> GateAssessment {
    match gate.kind {
        GateKind::Tests if matches!(gate.verdict, Verdict::Fail | Verdict::Skipped) => {
            a.discrepancy = Discrepancy::Overridden;
            a.explanation = format!("{} {} and {} shipped anyway", gate.name, claimed(gate), change.version);
            a.recommendation = format!("make {} blocking for {}", gate.name, change.service);
        }
        GateKind::Tests => {
            a.discrepancy = Discrepancy::RouteNotExercised;
            a.explanation =
                "every test passed, so none of them checks the values it returns the way production's users see them"
                    .to_owned();
            a.recommendation = format!(
                "add a test to {}'s pipeline that checks the values its callers show users, with production-shaped data",
                change.service
            );
        }
        GateKind::Perf => {
            a.explanation = format!("{} measures time and failures, and neither changed", gate.name);
        }
        GateKind::Security => {
            a.explanation = "a dependency scan does not check the values a service returns".to_owned();
        }
        GateKind::Review | GateKind::Agent => {
            a.discrepancy = Discrepancy::RouteNotExercised;
            a.explanation = format!("{} approved a change to what {} returns", gate.name, change.service);
            a.recommendation =
                format!("have {} ask for a test of the values {} returns before approving", gate.name, change.service);
        }
    }
    a
}

/// Every gate of the change assessed, plus a `NoSuchGate` entry when no gate of
/// the kind that could have caught the fault ran.
pub fn analyze(change: &ChangeEvent, o: &Observed) -> Vec<GateAssessment> {
    let mut out: Vec<GateAssessment> = change.gates.iter().map(|g| assess(g, change, o)).collect();
    let op = &o.signature.operation;
    let has = |k: GateKind| change.gates.iter().any(|g| g.kind == k);
    if o.release() {
        if !has(GateKind::Tests) {
            let what = format!("no test gate ran on {} {}", change.service, change.version);
            out.push(GateAssessment {
                gate: "(none)".to_owned(),
                kind: GateKind::Tests,
                verdict: None,
                claimed: what.clone(),
                observed: o.describe(),
                discrepancy: Discrepancy::NoSuchGate,
                explanation: format!("{what}, so nothing checked what {op} returns before users saw it"),
                recommendation: format!(
                    "add a test gate to {}'s pipeline that checks the values {op} returns",
                    change.service
                ),
            });
        }
        return out;
    }
    if !has(GateKind::Perf) {
        let (what, rec) = if o.latency() {
            (
                format!("no perf gate ran on {} {}", change.service, change.version),
                format!("add a perf gate to {}'s pipeline that runs {op} with production-shaped data", change.service),
            )
        } else {
            (
                format!("no load gate ran on {} {}", change.service, change.version),
                format!(
                    "add a load gate to {}'s pipeline that drives {op} concurrently and fails on an error-rate budget",
                    change.service
                ),
            )
        };
        out.push(GateAssessment {
            gate: "(none)".to_owned(),
            kind: GateKind::Perf,
            verdict: None,
            claimed: what.clone(),
            observed: o.describe(),
            discrepancy: Discrepancy::NoSuchGate,
            explanation: format!("{what}, so nothing measured {op} under load before production did"),
            recommendation: rec,
        });
    }
    out
}

/// One paragraph: why the gates missed it.
pub fn why_missed(change: Option<&ChangeEvent>, assessments: &[GateAssessment]) -> String {
    let Some(c) = change else {
        return "No change was linked to the onset, so there is no gate evidence to hold against production."
            .to_owned();
    };
    let missed: Vec<String> = assessments
        .iter()
        .filter(|a| a.discrepancy != Discrepancy::NotApplicable)
        .map(|a| {
            let mut e = a.explanation.clone();
            if let Some(first) = e.get(..1) {
                e = first.to_uppercase() + &e[1..];
            }
            format!("{e}.")
        })
        .collect();
    if missed.is_empty() {
        return format!("No gate of {} {} could have caught this kind of fault.", c.service, c.version);
    }
    missed.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn change(gates: serde_json::Value) -> ChangeEvent {
        serde_json::from_value(serde_json::json!({
            "service": "pricing", "version": "7.4.0", "deployed_at": "2026-11-21T09:37:00Z", "gates": gates
        }))
        .unwrap()
    }

    fn latency(base: f64, cur: f64) -> Observed {
        Observed {
            signature: Signature {
                kind: FindingKind::LatencyRegression,
                service: "pricing".into(),
                operation: "GET /v1/quote".into(),
                metric: "p95_ms".into(),
                baseline_value: base,
                incident_value: cur,
                onset: None,
                observed_at: None,
            },
            segment: None,
            exception: None,
        }
    }

    #[test]
    fn a_release_that_returns_wrong_values_is_held_against_its_tests_not_its_perf_gate() {
        let o = Observed {
            signature: Signature {
                kind: crate::onset::RELEASE,
                metric: crate::onset::NEW_VERSION_SHARE.into(),
                baseline_value: 0.0,
                incident_value: 1.0,
                ..latency(0.0, 0.0).signature
            },
            segment: None,
            exception: None,
        };
        let gated = change(serde_json::json!([
            {"name": "unit", "kind": "tests", "verdict": "pass"},
            {"name": "perf-staging", "kind": "perf", "verdict": "pass", "summary": "p95 +1.0%"}
        ]));
        let a = analyze(&gated, &o);
        assert_eq!(a.len(), 2, "{a:#?}");
        assert_eq!(a[0].discrepancy, Discrepancy::RouteNotExercised);
        assert!(a[0].explanation.contains("checks the values"), "{}", a[0].explanation);
        assert_eq!(a[1].discrepancy, Discrepancy::NotApplicable, "a perf gate cannot see a wrong value");
        assert!(a[0].observed.contains("100% of GET /v1/quote"), "{}", a[0].observed);
        // With no tests at all, the missing gate is a test gate, not a load gate.
        let bare = analyze(&change(serde_json::json!([])), &o);
        assert_eq!(bare.len(), 1);
        assert_eq!((bare[0].kind, bare[0].discrepancy), (GateKind::Tests, Discrepancy::NoSuchGate));
    }

    #[test]
    fn each_way_a_perf_gate_misses_is_told_apart() {
        let perf = |summary: &str, delta: f64| {
            serde_json::json!([{"name": "perf-staging", "kind": "perf", "verdict": "pass", "summary": summary,
                                "metrics": {"p95_delta_pct": delta, "p95_threshold_pct": 10.0}}])
        };
        // Same route, tiny delta, huge production effect: conditions differ.
        let c = change(perf("p95 +1.5% on GET /v1/quote in staging (synthetic load, 2,000 requests)", 1.5));
        let a = analyze(&c, &latency(16.0, 112.0));
        assert_eq!(a[0].discrepancy, Discrepancy::EnvironmentOrPayload, "{a:?}");
        assert!(a[0].explanation.contains("synthetic load"), "{}", a[0].explanation);
        assert!(a[0].observed.contains("+600%"), "{}", a[0].observed);
        // It saw nearly what production shows and passed: the threshold is loose.
        let c = change(perf("p95 +8.0% on GET /v1/quote", 8.0));
        assert_eq!(analyze(&c, &latency(100.0, 112.0))[0].discrepancy, Discrepancy::ThresholdTooLoose);
        // It ran other routes only.
        let c = change(perf("p95 +0.2% on /v1/search and /v1/cart", 0.2));
        assert_eq!(analyze(&c, &latency(16.0, 112.0))[0].discrepancy, Discrepancy::RouteNotExercised);
        // No perf gate at all.
        let c = change(serde_json::json!([{"name": "unit", "kind": "tests", "verdict": "pass"}]));
        let a = analyze(&c, &latency(16.0, 112.0));
        assert_eq!(a[0].discrepancy, Discrepancy::NotApplicable);
        assert_eq!(a[1].discrepancy, Discrepancy::NoSuchGate);
        assert!(
            why_missed(Some(&c), &a).starts_with("No perf gate ran on pricing 7.4.0"),
            "{}",
            why_missed(Some(&c), &a)
        );
        // A failed gate that shipped anyway.
        let c = change(serde_json::json!([{"name": "perf", "kind": "perf", "verdict": "fail"}]));
        assert_eq!(analyze(&c, &latency(16.0, 112.0))[0].discrepancy, Discrepancy::Overridden);
    }
}
