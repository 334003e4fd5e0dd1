//! An RCA in the flight recorder: the request with detection's hints as the
//! run's input, then one step per stage (localize, onset, link, gates,
//! similar, narrate) with what it ran and what it concluded, each stage the
//! parent of those that used its result. [`Rca::replay`] runs the analysis
//! again from the recorded request and reports each stage whose conclusion
//! differs.

use std::sync::Arc;

use andon_analysis::localize::Channel;
use andon_analysis::recorder::{
    Difference, RecordedStep, Recording, ReplayReport, RunsDb, StepRecord, check_integrity, same_content,
};
use andon_model::{Incident, LoggedStep, ModelExchange, NarrativeSource, Tenant};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::run::{Hints, OpenIncident, Rca};

fn hints_json(h: &Hints) -> Value {
    json!({
        "opened_by": h.opened_by,
        "finding_ids": h.finding_ids,
        "channel": h.channel.map(|c| match c { Channel::Latency => "latency", Channel::Errors => "errors" }),
        "segment": h.segment,
        "operation": h.operation,
        "segment_filter": h.segment_filter,
        "group_key": h.group_key,
        "users_moved": h.users_moved,
    })
}

fn hints_from(v: &Value) -> Hints {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Hints {
        opened_by: text("opened_by").unwrap_or_default(),
        finding_ids: serde_json::from_value(v["finding_ids"].clone()).unwrap_or_default(),
        channel: match v["channel"].as_str() {
            Some("latency") => Some(Channel::Latency),
            Some("errors") => Some(Channel::Errors),
            _ => None,
        },
        segment: text("segment"),
        operation: text("operation"),
        segment_filter: serde_json::from_value(v["segment_filter"].clone()).unwrap_or_default(),
        group_key: text("group_key"),
        users_moved: v["users_moved"].as_bool().unwrap_or(false),
    }
}

/// What each stage concluded, by stage name.
fn conclusion(stage: &str, inc: &Incident) -> Value {
    match stage {
        "localize" => json!({"suspects": inc.suspects}),
        "onset" => json!({"signature": inc.signature}),
        "link" => json!({"change": inc.change, "confidence": inc.confidence}),
        "gates" => {
            json!({"gate_analysis": inc.gate_analysis, "why_missed": inc.why_missed, "remediation": inc.remediation})
        }
        "similar" => json!({"similar": inc.similar_incidents.iter().map(|s| &s.id).collect::<Vec<_>>()}),
        "narrate" => {
            json!({"narrative": inc.narrative, "source": inc.narrative_source, "validation": inc.narrative_validation})
        }
        _ => Value::Null,
    }
}

/// The stages whose results a stage used.
fn parents_of(stage: &str) -> &'static [&'static str] {
    match stage {
        "localize" => &["request"],
        "onset" => &["localize"],
        "link" => &["onset"],
        "gates" => &["link", "onset"],
        "similar" => &["onset"],
        "narrate" => &["localize", "onset", "link", "gates", "similar"],
        _ => &["request"],
    }
}

/// The step kind of a stage: a model wrote an `llm` narrative.
fn kind_of(stage: &str, inc: &Incident) -> &'static str {
    if stage == "narrate" && inc.narrative_source == NarrativeSource::Llm { "model" } else { "stage" }
}

/// Records an RCA that ran; returns its run id.
pub(crate) fn record(
    runs: &Arc<RunsDb>,
    tenant: &Tenant,
    req: &OpenIncident,
    hints: &Hints,
    inc: &Incident,
    exchanges: &[ModelExchange],
    started: DateTime<Utc>,
) -> String {
    let rec = runs.begin(tenant, "rca", &inc.id);
    let request = json!({"request": req, "hints": hints_json(hints)});
    let mut ids: Vec<(String, String)> = Vec::new();
    let first = rec.step(StepRecord {
        kind: "input",
        name: "request",
        parents: &[],
        started_at: started,
        input: &request,
        output: &request,
        summary: format!("incident {} over {} – {}", inc.id, inc.window.start, inc.window.end),
    });
    ids.push(("request".into(), first));
    for s in &inc.steps {
        let mut parents: Vec<String> = parents_of(&s.step)
            .iter()
            .filter_map(|p| ids.iter().rev().find(|(n, _)| n == p).map(|(_, id)| id.clone()))
            .collect();
        if s.step == "narrate" {
            // Each request to the model and its answer, in turn: the
            // narrative follows from the last.
            parents = record_exchanges(&rec, exchanges, parents, s.at - Duration::milliseconds(s.took_ms as i64));
        }
        let id = rec.step(StepRecord {
            kind: kind_of(&s.step, inc),
            name: &s.step,
            parents: &parents,
            started_at: s.at - Duration::milliseconds(s.took_ms as i64),
            input: &json!({"queries": s.queries}),
            output: &conclusion(&s.step, inc),
            summary: s.summary.clone(),
        });
        ids.push((s.step.clone(), id));
    }
    rec.finish();
    rec.id().to_owned()
}

/// A request to a model and its answer, as a step: what was sent, the
/// reply, and the validator's verdict on it (`n` counts the drafts from 1).
pub fn exchange_step(n: usize, x: &ModelExchange) -> LoggedStep {
    let verdict = match (&x.error, x.violations.len()) {
        (Some(e), _) => format!("no answer: {e}"),
        (None, 0) => "accepted by the validator".to_owned(),
        (None, k) => format!("rejected: {k} unsupported claims"),
    };
    let model = if x.model.is_empty() { "no model" } else { x.model.as_str() };
    LoggedStep {
        kind: "model".into(),
        name: "model request".into(),
        input: json!({"task": x.task, "messages": x.sent}),
        output: json!({
            "model": x.model, "reply": x.reply, "tokens": x.tokens, "violations": x.violations, "error": x.error,
        }),
        summary: format!("{} draft {n} ({model}): {verdict}", x.task),
    }
}

/// Records model requests one after another, the first after `parents`;
/// returns the last one's id as the parent of what follows (`parents` when
/// there were none).
fn record_exchanges(
    rec: &Recording,
    exchanges: &[ModelExchange],
    mut parents: Vec<String>,
    started: DateTime<Utc>,
) -> Vec<String> {
    for (i, x) in exchanges.iter().enumerate() {
        let step = exchange_step(i + 1, x);
        let id = rec.step(StepRecord {
            kind: "model",
            name: &step.name,
            parents: &parents,
            started_at: started,
            input: &step.input,
            output: &step.output,
            summary: step.summary,
        });
        parents = vec![id];
    }
    parents
}

impl Rca {
    /// Runs a recorded RCA again from its recorded request and compares each
    /// stage's conclusion with the recorded one. A narrative a model wrote is
    /// taken from the recording; similar incidents are looked up among
    /// incidents that keep arriving, so they are not compared.
    pub async fn replay(&self, tenant: &Tenant, run_id: &str, steps: &[RecordedStep]) -> ReplayReport {
        let mut report = ReplayReport { run_id: run_id.to_owned(), ..Default::default() };
        check_integrity(steps, &mut report);
        let differ = |s: &RecordedStep, reason: String, report: &mut ReplayReport| {
            report.differences.push(Difference { step: s.step.id.clone(), name: s.step.name.clone(), reason });
        };
        let Some(request) = steps.iter().find(|s| s.step.name == "request") else {
            report.differences.push(Difference {
                step: String::new(),
                name: "request".into(),
                reason: "the run recorded no request to replay".into(),
            });
            return report;
        };
        let Some(input) = &request.input else {
            differ(request, "its input was over the recorder's size limit".into(), &mut report);
            return report;
        };
        let req: Result<OpenIncident, _> = serde_json::from_value(input["request"].clone());
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                differ(request, format!("the recorded request does not read back: {e}"), &mut report);
                return report;
            }
        };
        let hints = hints_from(&input["hints"]);
        let inc = match self.dry_run(tenant, &req, &hints).await {
            Ok(i) => i,
            Err(e) => {
                differ(request, format!("the analysis failed on replay: {e}"), &mut report);
                return report;
            }
        };
        report.from_recording += 1;
        for s in steps.iter().filter(|s| s.step.kind == "stage" || s.step.kind == "model") {
            if s.step.kind == "model" || s.step.name == "similar" {
                report.from_recording += 1;
                continue;
            }
            report.replayed += 1;
            let now = conclusion(&s.step.name, &inc);
            let then = s.output.clone().unwrap_or(Value::Null);
            if !same_content(&now, &then) {
                let mut shown = now.to_string();
                if shown.len() > 300 {
                    shown = format!("{}…", shown.chars().take(300).collect::<String>());
                }
                differ(s, format!("{} now concludes {shown}", s.step.name), &mut report);
            }
        }
        report
    }
}
