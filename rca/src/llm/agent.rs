//! The investigation agent: a question about production answered by a model
//! that may only look through Andon's own tools (read-only SQL, a trace, the
//! findings, incidents and changes, an incident's RCA), in a loop bounded by
//! steps, tokens and time. Its answer is held to what the tools returned by
//! the same validator as the narratives: a number, id, service or causal
//! claim no tool result supports sends the answer back, and an answer that
//! stays unsupported is not given. The answer cites the results it rests on.
//! Every model turn, tool call and verdict is a step of the run in the flight
//! recorder, and [`replay`] re-executes the deterministic ones.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use andon_analysis::recorder::{
    Difference, RecordedStep, Recording, ReplayReport, StepRecord, check_integrity, same_content,
};
use andon_model::{Citation, Incident, InvestigationState, Violation};
use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Value, json};

use super::validate::{Evidence, evidence_json};
use super::{Llm, Message, Task, ToolCall, ToolSpec, messages_json};

/// What the agent may do: Andon's own functions, for one tenant.
#[async_trait]
pub trait Tools: Send + Sync {
    /// Read-only SQL; the result as `{columns, rows: [{column: value}], truncated}`.
    async fn sql(&self, sql: &str) -> Result<Value, String>;
    /// Every span of a trace.
    async fn trace(&self, trace_id: &str) -> Result<Value, String>;
    /// Findings, newest first (`state`: open or resolved).
    async fn findings(&self, state: Option<&str>) -> Result<Vec<Value>, String>;
    /// Incidents, newest first.
    async fn incidents(&self) -> Result<Vec<Value>, String>;
    /// Changes (deploys), newest first.
    async fn changes(&self, service: Option<&str>) -> Result<Vec<Value>, String>;
    /// Runs an RCA over the windows of `request` (`{start, end, service?,
    /// baseline_start?, baseline_end?}`). `keep` stores it as an incident;
    /// a replay passes `false`.
    async fn rca(&self, request: &Value, keep: bool) -> Result<Incident, String>;
}

/// The agent's bounds.
#[derive(Debug, Clone, Copy)]
pub struct AgentLimits {
    /// Model turns and tool calls together.
    pub max_steps: u32,
    pub max_tokens: u64,
    pub timeout: Duration,
    /// Answers the validator may reject before the agent gives up.
    pub max_attempts: u32,
}

/// What an investigation came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: InvestigationState,
    pub answer: Option<String>,
    pub citations: Vec<Citation>,
    pub reason: Option<String>,
    pub violations: Vec<Violation>,
    pub steps: u32,
    pub tokens: u64,
}

const RULES: &str = "You are Andon's investigator, answering a site reliability engineer's question \
about their production system. You can only see it through the tools: call them to look, as many times \
as you need, then answer in plain text (a short paragraph, no headings). Tables for `sql`: spans (one row \
per span: trace_id, span_id, parent_span_id, service_name, name, kind, start_time, duration_ns, \
status_code, http_route, http_request_method, http_response_status_code, session_id, service_version and \
more; run DESCRIBE spans to see them), findings, changes, runs; name a duration column with a _ms suffix \
when you convert to milliseconds. Every number, time, id, version, service and operation in your answer \
must come from a tool result; write services and operations in backticks. Claim a cause only as an RCA \
(`open_incident`) names it. If the tools cannot settle the question, answer starting with \
\"INCONCLUSIVE:\" and say what is missing.";

/// The tools offered to the model.
pub fn specs() -> Vec<ToolSpec> {
    let obj = |props: Value, required: &[&str]| json!({"type": "object", "properties": props, "required": required});
    vec![
        ToolSpec {
            name: "sql",
            description: "Run one read-only SQL statement (DataFusion dialect) over spans, findings, changes and \
                          runs; at most 50 rows come back.",
            parameters: obj(json!({"sql": {"type": "string"}}), &["sql"]),
        },
        ToolSpec {
            name: "get_trace",
            description: "Every span of one trace, by its 32-hex-digit id.",
            parameters: obj(json!({"trace_id": {"type": "string"}}), &["trace_id"]),
        },
        ToolSpec {
            name: "list_findings",
            description: "The findings detection reported, newest first.",
            parameters: obj(json!({"state": {"type": "string", "enum": ["open", "resolved"]}}), &[]),
        },
        ToolSpec {
            name: "list_incidents",
            description: "The incidents, newest first, with their suspects and linked changes.",
            parameters: obj(json!({}), &[]),
        },
        ToolSpec {
            name: "list_changes",
            description: "Deploys and their gates, newest first.",
            parameters: obj(json!({"service": {"type": "string"}}), &[]),
        },
        ToolSpec {
            name: "open_incident",
            description: "Open an incident over a time window (RFC 3339) and run its root-cause analysis: the \
                          onset, the culprit service and operation, the linked change and its gates.",
            parameters: obj(
                json!({
                    "start": {"type": "string"}, "end": {"type": "string"}, "service": {"type": "string"},
                    "baseline_start": {"type": "string"}, "baseline_end": {"type": "string"}
                }),
                &["start", "end"],
            ),
        },
    ]
}

/// Rows of a result sent to the model, and strings' length in it.
const MAX_ROWS: usize = 50;
const MAX_STRING: usize = 400;

/// `v` cut to what the model is shown: arrays to [`MAX_ROWS`] items, strings
/// to [`MAX_STRING`] characters. What is shown is what evidence is.
pub fn shown(v: &Value) -> Value {
    match v {
        Value::Array(a) => Value::Array(a.iter().take(MAX_ROWS).map(shown).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), shown(x))).collect()),
        Value::String(s) if s.chars().count() > MAX_STRING => {
            Value::String(format!("{}…", s.chars().take(MAX_STRING).collect::<String>()))
        }
        other => other.clone(),
    }
}

/// An incident as the model sees it: its report without the steps' SQL.
fn incident_view(inc: &Incident) -> Value {
    let mut v = evidence_json(inc);
    if let Value::Object(o) = &mut v {
        o.insert("id".into(), json!(inc.id));
        o.insert("narrative".into(), json!(inc.narrative));
    }
    v
}

/// One tool's answer: what the model is shown, and what may be cited.
struct ToolResult {
    shown: Value,
    /// What the flight recorder keeps: what was shown, or an RCA's whole incident.
    record: Value,
    citations: Vec<(Citation, Value)>,
    incident: Option<Incident>,
}

fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 240 { format!("{}…", s.chars().take(240).collect::<String>()) } else { s }
}

fn arg<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

/// Runs one tool call. `keep` is false on replay (no incident is stored).
async fn call(tools: &dyn Tools, name: &str, args: &Value, keep: bool) -> Result<ToolResult, String> {
    let items = |kind: &str, list: Vec<Value>, id_key: &str| {
        let list: Vec<Value> = list.into_iter().take(MAX_ROWS).map(|v| shown(&v)).collect();
        let citations = list
            .iter()
            .map(|v| {
                let id = v.get(id_key).and_then(Value::as_str).unwrap_or_default().to_owned();
                (Citation { kind: kind.to_owned(), reference: id, excerpt: excerpt(v) }, v.clone())
            })
            .collect();
        let shown = Value::Array(list);
        ToolResult { record: shown.clone(), shown, citations, incident: None }
    };
    match name {
        "sql" => {
            let sql = arg(args, "sql").ok_or("sql needs {\"sql\": \"...\"}")?;
            let out = shown(&tools.sql(sql).await?);
            let c = Citation { kind: "query".into(), reference: sql.to_owned(), excerpt: excerpt(&out["rows"]) };
            Ok(ToolResult { citations: vec![(c, out.clone())], record: out.clone(), shown: out, incident: None })
        }
        "get_trace" => {
            let id = arg(args, "trace_id").ok_or("get_trace needs {\"trace_id\": \"...\"}")?;
            let out = shown(&tools.trace(id).await?);
            let c = Citation { kind: "trace".into(), reference: id.to_ascii_lowercase(), excerpt: excerpt(&out) };
            Ok(ToolResult { citations: vec![(c, out.clone())], record: out.clone(), shown: out, incident: None })
        }
        "list_findings" => Ok(items("finding", tools.findings(arg(args, "state")).await?, "id")),
        "list_incidents" => Ok(items("incident", tools.incidents().await?, "id")),
        "list_changes" => Ok(items("change", tools.changes(arg(args, "service")).await?, "id")),
        "open_incident" => {
            let inc = tools.rca(args, keep).await?;
            let out = shown(&incident_view(&inc));
            let c = Citation {
                kind: "incident".into(),
                reference: inc.id.clone(),
                excerpt: excerpt(&json!(inc.narrative)),
            };
            let record = serde_json::to_value(&inc).unwrap_or(Value::Null);
            Ok(ToolResult { citations: vec![(c, out.clone())], record, shown: out, incident: Some(inc) })
        }
        other => Err(format!(
            "no tool {other:?}; the tools are sql, get_trace, list_findings, list_incidents, list_changes and open_incident"
        )),
    }
}

/// What a replay compares of a tool's output: the output without what
/// differs on every run (ids and times an RCA mints, timings).
fn stable(name: &str, v: &Value) -> Value {
    fn strip(v: &Value, keys: &[&str]) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .filter(|(k, _)| !keys.contains(&k.as_str()))
                    .map(|(k, x)| (k.clone(), strip(x, keys)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| strip(x, keys)).collect()),
            other => other.clone(),
        }
    }
    match name {
        "open_incident" => strip(
            v,
            &[
                "id",
                "created_at",
                "updated_at",
                "similar_incidents",
                "narrative",
                "narrative_source",
                "narrative_validation",
                "run_id",
                "steps",
            ],
        ),
        "sql" => strip(v, &["elapsed_ms"]),
        _ => v.clone(),
    }
}

/// The citations an answer rests on: those whose result names an id the
/// answer gives, or without which more of its claims would be unsupported.
fn cited(question: &str, answer: &str, candidates: &[(Citation, Value)]) -> Vec<Citation> {
    let base = {
        let mut e = Evidence::new();
        e.add_text(question);
        e.check(answer).len()
    };
    let mut out: Vec<Citation> = Vec::new();
    for (c, v) in candidates {
        let named = c.kind != "query" && !c.reference.is_empty() && answer.contains(&c.reference);
        let supports = || {
            let mut e = Evidence::new();
            e.add_text(question);
            e.add_json(v);
            e.check(answer).len() < base
        };
        if (named || supports()) && !out.iter().any(|o| o.kind == c.kind && o.reference == c.reference) {
            out.push(c.clone());
        }
    }
    out
}

fn feedback(violations: &[Violation]) -> String {
    let mut out = String::from(
        "No tool result supports these claims of your answer. Look them up with the tools, or answer \
         without them:\n",
    );
    for v in violations {
        out.push_str(&format!("- \"{}\": {}\n", v.text, v.reason));
    }
    out
}

/// Evidence from the question and the outputs of tool steps.
fn evidence_of(question: &str, results: &[(String, Value, Option<Incident>)]) -> Evidence {
    let mut e = Evidence::new();
    e.add_text(question);
    for (_, v, inc) in results {
        e.add_json(v);
        if let Some(inc) = inc {
            e.add_incident(inc);
        }
    }
    e
}

/// Answers `question`; every step goes to `rec`.
pub async fn investigate(
    llm: &Llm,
    tools: &dyn Tools,
    question: &str,
    limits: AgentLimits,
    rec: &Recording,
) -> Outcome {
    let started = Instant::now();
    let specs = specs();
    let q_step = rec.step(StepRecord {
        kind: "input",
        name: "question",
        parents: &[],
        started_at: Utc::now(),
        input: &json!({"question": question}),
        output: &json!({"question": question}),
        summary: "the question".into(),
    });
    let mut messages = vec![Message::System(RULES.to_owned()), Message::User(question.to_owned())];
    // Tool results so far: (step id, what the model was shown, the incident an RCA made).
    let mut results: Vec<(String, Value, Option<Incident>)> = Vec::new();
    let mut candidates: Vec<(Citation, Value)> = Vec::new();
    let mut last: Vec<String> = vec![q_step];
    let (mut steps, mut tokens, mut attempts) = (0u32, 0u64, 0u32);
    let mut violations = Vec::new();
    let end = |state, answer: Option<String>, citations, reason: Option<String>, violations, steps, tokens| {
        let o = Outcome { state, answer, citations, reason, violations, steps, tokens };
        rec.step(StepRecord {
            kind: "decision",
            name: "outcome",
            parents: &[],
            started_at: Utc::now(),
            input: &json!({}),
            output: &json!({"state": o.state.as_str(), "answer": o.answer, "reason": o.reason}),
            summary: format!("{}: {}", o.state.as_str(), o.reason.as_deref().unwrap_or("the answer is supported")),
        });
        rec.finish();
        o
    };
    loop {
        if steps >= limits.max_steps {
            let reason = format!("the agent used its {} steps without a supported answer", limits.max_steps);
            return end(InvestigationState::Inconclusive, None, Vec::new(), Some(reason), violations, steps, tokens);
        }
        if started.elapsed() >= limits.timeout {
            let reason = format!("the agent ran out of its {} s", limits.timeout.as_secs());
            return end(InvestigationState::Inconclusive, None, Vec::new(), Some(reason), violations, steps, tokens);
        }
        let t0 = Utc::now();
        let budget = limits.max_tokens.saturating_sub(tokens);
        let left = limits.timeout.saturating_sub(started.elapsed());
        let reply =
            match tokio::time::timeout(left, llm.chat_with_tools(Task::Investigate, &messages, &specs, budget)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    rec.step(StepRecord {
                        kind: "model",
                        name: llm.model_for(Task::Investigate),
                        parents: &last,
                        started_at: t0,
                        input: &messages_json(&messages),
                        output: &json!({"error": e.to_string()}),
                        summary: format!("no answer: {e}"),
                    });
                    let state = if steps == 0 { InvestigationState::Failed } else { InvestigationState::Inconclusive };
                    return end(state, None, Vec::new(), Some(e.to_string()), violations, steps, tokens);
                }
                Err(_) => {
                    let reason = format!("the agent ran out of its {} s", limits.timeout.as_secs());
                    return end(
                        InvestigationState::Inconclusive,
                        None,
                        Vec::new(),
                        Some(reason),
                        violations,
                        steps,
                        tokens,
                    );
                }
            };
        steps += 1;
        tokens += reply.tokens;
        let model_step = rec.step(StepRecord {
            kind: "model",
            name: &reply.model,
            parents: &last,
            started_at: t0,
            input: &messages_json(&messages),
            output: &json!({"text": reply.text, "tool_calls": reply.calls.iter().map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments})).collect::<Vec<_>>()}),
            summary: if reply.calls.is_empty() {
                format!("{} answered ({} tokens)", reply.model, reply.tokens)
            } else {
                format!(
                    "{} called {} ({} tokens)",
                    reply.model,
                    reply.calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
                    reply.tokens
                )
            },
        });
        if !reply.calls.is_empty() {
            messages.push(Message::Calls { text: reply.text.clone(), calls: reply.calls.clone() });
            last = Vec::new();
            for c in &reply.calls {
                let (step, content) = run_call(tools, c, &model_step, rec, &mut results, &mut candidates).await;
                steps += 1;
                last.push(step);
                messages.push(Message::Tool { call_id: c.id.clone(), content });
            }
            continue;
        }
        // An answer: hold it to the tool results.
        attempts += 1;
        let text = reply.text.trim().to_owned();
        let (inconclusive, body) = match text.strip_prefix("INCONCLUSIVE:") {
            Some(rest) => (true, rest.trim().to_owned()),
            None => (false, text.clone()),
        };
        let evidence = evidence_of(question, &results);
        violations = evidence.check(&body);
        let t1 = Utc::now();
        let verdict = rec.step(StepRecord {
            kind: "validate",
            name: "validator",
            parents: &[vec![model_step.clone()], results.iter().map(|(s, _, _)| s.clone()).collect()].concat(),
            started_at: t1,
            input: &json!({"question": question, "answer": body, "evidence_steps": results.iter().map(|(s, _, _)| s).collect::<Vec<_>>()}),
            output: &json!({"violations": violations}),
            summary: if violations.is_empty() {
                "every claim is supported".into()
            } else {
                format!("{} unsupported claims", violations.len())
            },
        });
        if violations.is_empty() {
            let citations = cited(question, &body, &candidates);
            let state = if inconclusive { InvestigationState::Inconclusive } else { InvestigationState::Answered };
            let reason = inconclusive.then(|| "the agent could not settle the question with its tools".to_owned());
            let _ = verdict;
            return end(state, Some(body), citations, reason, Vec::new(), steps, tokens);
        }
        if attempts >= limits.max_attempts {
            let reason =
                format!("every answer claimed what no tool returned ({} answers rejected by the validator)", attempts);
            return end(InvestigationState::Inconclusive, None, Vec::new(), Some(reason), violations, steps, tokens);
        }
        messages.push(Message::Assistant(text));
        messages.push(Message::User(feedback(&violations)));
        last = vec![verdict];
    }
}

/// Runs a tool call the model asked for, records it, and returns its step
/// and what goes back to the model.
async fn run_call(
    tools: &dyn Tools,
    c: &ToolCall,
    parent: &str,
    rec: &Recording,
    results: &mut Vec<(String, Value, Option<Incident>)>,
    candidates: &mut Vec<(Citation, Value)>,
) -> (String, String) {
    let t = Utc::now();
    let args: Result<Value, String> =
        serde_json::from_str(&c.arguments).map_err(|e| format!("the arguments are not JSON: {e}"));
    let out = match args.clone() {
        Ok(a) => call(tools, &c.name, &a, true).await,
        Err(e) => Err(e),
    };
    let input = json!({"tool": c.name, "arguments": args.clone().unwrap_or(Value::String(c.arguments.clone()))});
    // What is recorded, its summary, what the model reads, and what the
    // answer may rest on.
    let (record, summary, content, found) = match out {
        Ok(r) => {
            let n = match &r.shown {
                Value::Array(a) => format!("{} items", a.len()),
                v => v
                    .get("rows")
                    .and_then(Value::as_array)
                    .map(|r| format!("{} rows", r.len()))
                    .unwrap_or_else(|| "a result".into()),
            };
            let content = serde_json::to_string(&r.shown).unwrap_or_default();
            (r.record.clone(), n, content, Some(r))
        }
        Err(e) => (json!({"error": e}), format!("error: {e}"), json!({"error": e}).to_string(), None),
    };
    let step = rec.step(StepRecord {
        kind: "tool",
        name: &c.name,
        parents: &[parent.to_owned()],
        started_at: t,
        input: &input,
        output: &record,
        summary,
    });
    if let Some(r) = found {
        results.push((step.clone(), r.shown, r.incident));
        candidates.extend(r.citations);
    }
    (step, content)
}

/// Re-executes an investigation's tool calls and validator verdicts from
/// their recorded inputs, and takes its model turns from their recorded
/// responses; reports every step whose output differs.
pub async fn replay(tools: &dyn Tools, run_id: &str, steps: &[RecordedStep]) -> ReplayReport {
    let mut report = ReplayReport { run_id: run_id.to_owned(), ..Default::default() };
    check_integrity(steps, &mut report);
    // The recorded output of each tool step, as the model was shown it, with
    // the incident an RCA made: the validator's evidence.
    let mut recorded: BTreeMap<String, (Value, Option<Incident>)> = BTreeMap::new();
    let differ = |step: &RecordedStep, reason: String, report: &mut ReplayReport| {
        report.differences.push(Difference { step: step.step.id.clone(), name: step.step.name.clone(), reason });
    };
    for s in steps {
        match s.step.kind.as_str() {
            "model" | "input" | "decision" => report.from_recording += 1,
            "tool" => {
                report.replayed += 1;
                let Some(input) = &s.input else {
                    differ(s, "its input was over the recorder's size limit".into(), &mut report);
                    continue;
                };
                let (Some(name), Some(args)) = (input["tool"].as_str(), input.get("arguments")) else {
                    differ(s, "its recorded input is not a tool call".into(), &mut report);
                    continue;
                };
                let now = match call(tools, name, args, false).await {
                    Ok(r) => r.record,
                    Err(e) => json!({"error": e}),
                };
                let then = s.output.clone().unwrap_or(Value::Null);
                if !same_content(&stable(name, &now), &stable(name, &then)) {
                    differ(s, format!("{name} returned something else than recorded: {}", excerpt(&now)), &mut report);
                }
                let entry = if name == "open_incident" {
                    match serde_json::from_value::<Incident>(then.clone()) {
                        Ok(inc) => (shown(&incident_view(&inc)), Some(inc)),
                        Err(_) => (then, None),
                    }
                } else {
                    (then, None)
                };
                recorded.insert(s.step.id.clone(), entry);
            }
            "validate" => {
                report.replayed += 1;
                let Some(input) = &s.input else { continue };
                let question = input["question"].as_str().unwrap_or_default();
                let answer = input["answer"].as_str().unwrap_or_default();
                let results: Vec<(String, Value, Option<Incident>)> = input["evidence_steps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|id| recorded.get(id).map(|(v, inc)| (id.to_owned(), v.clone(), inc.clone())))
                    .collect();
                let violations = evidence_of(question, &results).check(answer);
                let now = json!({"violations": violations});
                if !s.output.as_ref().is_some_and(|then| same_content(&now, then)) {
                    differ(s, format!("the validator now finds {} unsupported claims", violations.len()), &mut report);
                }
            }
            _ => {}
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn incident() -> Incident {
        serde_json::from_str(include_str!("../../tests/fixtures/latency_incident.json")).unwrap()
    }

    #[test]
    fn a_cause_needs_an_rca_and_numbers_need_a_tool() {
        let q = "Why are quotes slow?";
        let rows =
            json!({"columns": ["service_name", "p95_ms"], "rows": [{"service_name": "pricing", "p95_ms": 89.51}]});
        let sql_only = vec![("s2".to_owned(), rows.clone(), None)];
        let with_rca =
            vec![("s2".to_owned(), rows, None), ("s4".to_owned(), incident_view(&incident()), Some(incident()))];
        let answer = "The p95 of `pricing` is 89.5 ms. The slowdown was caused by pricing 7.4.0.";
        let v = evidence_of(q, &sql_only).check(answer);
        assert!(v.iter().any(|v| v.text.contains("caused by")), "a cause no RCA named: {v:?}");
        assert!(evidence_of(q, &with_rca).check(answer).is_empty(), "{:?}", evidence_of(q, &with_rca).check(answer));
        let v = evidence_of(q, &with_rca).check("The p95 of `pricing` is 95 ms.");
        assert!(v.iter().any(|v| v.text.contains("95 ms")), "{v:?}");
        // A cause the RCA does not blame is refused even with its incident.
        let v = evidence_of(q, &with_rca).check("The slowdown was caused by `checkout`.");
        assert!(!v.is_empty(), "{v:?}");
    }

    #[test]
    fn an_answer_cites_what_it_rests_on() {
        let inc = incident();
        let p95 = json!({"rows": [{"p95_ms": 89.51}]});
        let count = json!({"rows": [{"spans": 48213}]});
        let candidates = vec![
            (Citation { kind: "query".into(), reference: "SELECT p95".into(), excerpt: String::new() }, p95),
            (Citation { kind: "query".into(), reference: "SELECT count".into(), excerpt: String::new() }, count),
            (
                Citation { kind: "incident".into(), reference: inc.id.clone(), excerpt: String::new() },
                incident_view(&inc),
            ),
            (
                Citation { kind: "incident".into(), reference: "inc-0000000000000000".into(), excerpt: String::new() },
                json!({}),
            ),
        ];
        let answer = format!("Incident {} puts the p95 at 89.5 ms.", inc.id);
        let refs: Vec<String> = cited("Why?", &answer, &candidates).into_iter().map(|c| c.reference).collect();
        assert!(refs.contains(&"SELECT p95".to_owned()) && refs.contains(&inc.id), "{refs:?}");
        assert!(!refs.contains(&"SELECT count".to_owned()), "a result the answer does not use is not cited: {refs:?}");
        assert!(!refs.contains(&"inc-0000000000000000".to_owned()), "{refs:?}");
    }

    #[test]
    fn what_is_shown_is_bounded_and_replays_ignore_minted_ids() {
        let long = json!({"rows": (0..80).map(|i| json!({"i": i, "s": "x".repeat(1000)})).collect::<Vec<_>>()});
        let s = shown(&long);
        assert_eq!(s["rows"].as_array().unwrap().len(), MAX_ROWS);
        assert!(s["rows"][0]["s"].as_str().unwrap().chars().count() <= MAX_STRING + 1);
        let a = json!({"id": "inc-1", "created_at": "t1", "suspects": [{"service": "pricing"}]});
        let b = json!({"id": "inc-2", "created_at": "t2", "suspects": [{"service": "pricing"}]});
        assert_eq!(stable("open_incident", &a), stable("open_incident", &b));
        let c = json!({"id": "inc-2", "created_at": "t2", "suspects": [{"service": "checkout"}]});
        assert_ne!(stable("open_incident", &a), stable("open_incident", &c));
    }
}
