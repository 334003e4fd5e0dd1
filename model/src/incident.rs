//! Incidents and their root-cause analysis. The JSON shape is part of the API
//! contract (`GET /api/v1/incidents/{id}`); the RCA in `andon-rca` fills it, the
//! server serves it, and ticketing drafts an RCA ticket from it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ChangeEvent, FindingKind, GateKind, TimeWindow, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Resolved,
}

impl IncidentState {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Open => "open",
            IncidentState::Resolved => "resolved",
        }
    }
}

/// What went wrong, in one line of numbers: the metric of the culprit operation
/// before and during the incident, and when it changed. Past incidents with the
/// same kind, service and operation are "similar".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub kind: FindingKind,
    pub service: String,
    pub operation: String,
    /// `p95_ms` or `error_rate`.
    pub metric: String,
    pub baseline_value: f64,
    pub incident_value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<DateTime<Utc>>,
    /// Where the metric was measured, when not the culprit operation itself (the
    /// entry operation users call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
}

/// Which part of a suspect's behaviour changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuspectCause {
    /// Its own work (self time) grew.
    SelfTime,
    /// Failures start there (no failing callee beneath them).
    Errors,
    /// The hop to it grew: its callers wait longer than it works.
    Network,
    /// A version that served none of the baseline's traces serves the
    /// incident's, while neither time nor failures moved: a release whose
    /// effect shows in what users do (a wrong value, a changed page), not in
    /// the spans' durations and statuses.
    Release,
}

/// A (service, operation) the traces point at, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspect {
    pub service: String,
    pub operation: String,
    /// Share of the incident's extra time or extra failures explained here, 0 to 1.
    pub score: f64,
    /// Why, with numbers a person can check against the traces.
    pub reason: String,
    pub cause: SuspectCause,
    /// The version the incident's traces newly run, for a `release` suspect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The numbers behind the score, by name (`self_ms_baseline`, `errors_incident`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub numbers: BTreeMap<String, f64>,
    /// Traces that show it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exemplar_trace_ids: Vec<String>,
}

/// The change the incident is held against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImplicatedChange {
    /// The change's id in the lineage.
    pub id: String,
    #[serde(flatten)]
    pub event: ChangeEvent,
    /// 0 to 1: how sure the link is.
    pub confidence: f64,
    /// Why this change, in words with numbers.
    pub why: String,
    /// The version it replaced, the rollback target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// Seen first in spans (`service.version`, `vcs.*`) rather than posted.
    #[serde(default)]
    pub inferred: bool,
}

/// Why a gate let the change through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discrepancy {
    /// It measured the effect but its threshold allowed it.
    ThresholdTooLoose,
    /// It never exercised the operation that regressed.
    RouteNotExercised,
    /// It exercised the operation, but under conditions (environment, data,
    /// payload) that hide what production shows.
    EnvironmentOrPayload,
    /// No gate of the kind that could have caught it.
    NoSuchGate,
    /// The gate failed or was skipped, and the change shipped anyway.
    Overridden,
    /// Its kind of evidence does not bear on this failure.
    NotApplicable,
}

/// One gate's claim beside what production shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateAssessment {
    pub gate: String,
    pub kind: GateKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// What the gate said, e.g. "p95 +1.5% on GET /v1/quote in staging".
    pub claimed: String,
    /// What production shows, e.g. "p95 +640% on GET /v1/quote".
    pub observed: String,
    pub discrepancy: Discrepancy,
    /// Why the gate missed it, in a sentence.
    pub explanation: String,
    /// Which gate or threshold to change.
    pub recommendation: String,
}

/// A past incident with the same signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarIncident {
    pub id: String,
    pub title: String,
    pub opened_at: DateTime<Utc>,
    pub state: IncidentState,
    /// What the two have in common.
    pub matched: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NarrativeSource {
    Template,
    Llm,
}

/// One claim of a model's draft that the evidence does not support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// The words of the draft that make the claim.
    pub text: String,
    /// Why the evidence does not support them.
    pub reason: String,
}

/// The validator's verdict on a model's drafts of a narrative: accepted or
/// not, after how many drafts, and what the last rejected draft claimed
/// without support.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarrativeValidation {
    pub accepted: bool,
    pub attempts: u32,
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// Why no model's draft was used, when no draft was rejected (the model
    /// was down, slow or over budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One step of the analysis as it ran: what it looked at and what it concluded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RcaStep {
    pub step: String,
    pub at: DateTime<Utc>,
    pub took_ms: u64,
    pub summary: String,
    /// The SQL the step ran, when it ran any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<String>,
}

/// An incident and its RCA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub window: TimeWindow,
    pub baseline_window: TimeWindow,
    pub state: IncidentState,
    /// The service the opener pointed at, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `api`, `cli` or `detection`.
    pub opened_by: String,
    /// Findings grouped into this incident.
    #[serde(default)]
    pub finding_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    pub suspects: Vec<Suspect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ImplicatedChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gate_analysis: Vec<GateAssessment>,
    pub why_missed: String,
    pub remediation: Vec<String>,
    pub similar_incidents: Vec<SimilarIncident>,
    pub narrative: String,
    pub narrative_source: NarrativeSource,
    /// What the validator said of a model's drafts, when a model was asked
    /// (absent when the template wrote the narrative without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrative_validation: Option<NarrativeValidation>,
    /// 0 to 1: how sure the whole analysis is (the localization and the change link).
    pub confidence: f64,
    /// The analysis as it ran, step by step.
    #[serde(default)]
    pub steps: Vec<RcaStep>,
    /// The flight recorder's run of this analysis (`GET /api/v1/runs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Other numbers the analysis measured, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
